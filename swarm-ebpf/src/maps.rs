//! The maps. All are pinned by name under the agent's bpffs directory: an agent restart
//! reuses them, so forwarding never stops while the agent is away. (`SOCK_LB` is a BTF map,
//! which aya-ebpf cannot mark pinned: the agent pins it by path when it loads.)

use aya_ebpf::btf_maps::SkStorage;
use aya_ebpf::macros::{btf_map, map};
use aya_ebpf::maps::lpm_trie::LpmTrie;
use aya_ebpf::maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap};
use swarm_ebpf_common::{
    limits, BackendKey, CtEntry, CtRev, DnsPorts, Endpoint, EndpointKey, FlowKey, Iface, IngressCt,
    IngressRet, IngressRev, LbStats, LbStatsKey, NetStats, NetnsNet, NodeConfig, PortStats,
    Published, PublishedKey, Service, SnatIn, SnatOut, SockLb, SubnetValue,
};

#[map(name = "SWARM_NODE")]
pub static NODE: Array<NodeConfig> = Array::pinned(1, 0);

#[map(name = "SWARM_IFACES")]
pub static IFACES: HashMap<u32, Iface> = HashMap::pinned(limits::IFACES, 0);

#[map(name = "SWARM_ENDPOINTS")]
pub static ENDPOINTS: HashMap<EndpointKey, Endpoint> = HashMap::pinned(limits::ENDPOINTS, 0);

#[map(name = "SWARM_SUBNETS")]
pub static SUBNETS: LpmTrie<[u8; 4], SubnetValue> = LpmTrie::pinned(limits::SUBNETS, 0);

#[map(name = "SWARM_NET_STATS")]
pub static NET_STATS: PerCpuHashMap<u32, NetStats> = PerCpuHashMap::pinned(limits::NET_STATS, 0);

#[map(name = "SWARM_SNAT_OUT")]
pub static SNAT_OUT: LruHashMap<FlowKey, SnatOut> = LruHashMap::pinned(limits::SNAT, 0);

#[map(name = "SWARM_SNAT_IN")]
pub static SNAT_IN: LruHashMap<FlowKey, SnatIn> = LruHashMap::pinned(limits::SNAT, 0);

#[map(name = "SWARM_SERVICES")]
pub static SERVICES: HashMap<u32, Service> = HashMap::pinned(limits::SERVICES, 0);

/// A service's backends past its [`swarm_ebpf_common::INLINE_BACKENDS`] inline ones.
#[map(name = "SWARM_BACKENDS")]
pub static BACKENDS: HashMap<BackendKey, u32> = HashMap::pinned(limits::BACKENDS, 0);

#[map(name = "SWARM_NETNS_NETS")]
pub static NETNS_NETS: HashMap<NetnsNet, u32> = HashMap::pinned(limits::NETNS_NETS, 0);

#[map(name = "SWARM_DNS_PORTS")]
pub static DNS_PORTS: HashMap<u64, DnsPorts> = HashMap::pinned(limits::DNS_PORTS, 0);

/// Socket storage: the entry is part of its socket (found without hashing, freed with it),
/// so there is nothing to clean up and nothing to evict.
#[btf_map(name = "SWARM_SOCK_LB")]
pub static SOCK_LB: SkStorage<SockLb> = SkStorage::new();

#[map(name = "SWARM_CT")]
pub static CT: LruHashMap<FlowKey, CtEntry> = LruHashMap::pinned(limits::CT, 0);

#[map(name = "SWARM_CT_REV")]
pub static CT_REV: LruHashMap<FlowKey, CtRev> = LruHashMap::pinned(limits::CT, 0);

/// Per CPU, by service id: each load-balanced (service, network)'s totals. The agent zeroes
/// a slot when it gives its id to a new pair.
#[map(name = "SWARM_SVC_STATS")]
pub static SVC_STATS: PerCpuArray<LbStats> = PerCpuArray::pinned(limits::SERVICES, 0);

/// Per CPU and LRU: counters of backends long gone age out on their own.
#[map(name = "SWARM_LB_STATS")]
pub static LB_STATS: LruPerCpuHashMap<LbStatsKey, LbStats> =
    LruPerCpuHashMap::pinned(limits::LB_STATS, 0);

/// The routing mesh: the ports this node answers on.
#[map(name = "SWARM_PUBLISHED")]
pub static PUBLISHED: HashMap<PublishedKey, Published> = HashMap::pinned(limits::PUBLISHED, 0);

/// Per CPU, per published port (entries made by the agent with the port).
#[map(name = "SWARM_PORT_STATS")]
pub static PORT_STATS: PerCpuHashMap<PublishedKey, PortStats> =
    PerCpuHashMap::pinned(limits::PUBLISHED, 0);

/// The node's own IPv4 addresses: published ports answer on each of them.
#[map(name = "SWARM_HOST_ADDRS")]
pub static HOST_ADDRS: HashMap<u32, u32> = HashMap::pinned(limits::HOST_ADDRS, 0);

/// Data-path addresses of the other nodes: who may hand this node a mesh connection that
/// keeps its client's address.
#[map(name = "SWARM_PEERS")]
pub static PEERS: HashMap<u32, u32> = HashMap::pinned(limits::PEERS, 0);

#[map(name = "SWARM_ING_CT")]
pub static ING_CT: LruHashMap<FlowKey, IngressCt> = LruHashMap::pinned(limits::ING_CT, 0);

#[map(name = "SWARM_ING_REV")]
pub static ING_REV: LruHashMap<FlowKey, IngressRev> = LruHashMap::pinned(limits::ING_CT, 0);

#[map(name = "SWARM_ING_RET")]
pub static ING_RET: LruHashMap<FlowKey, IngressRet> = LruHashMap::pinned(limits::ING_CT, 0);

/// The node's configuration (zeroed until the agent wrote it).
#[inline(always)]
pub fn node() -> Option<&'static NodeConfig> {
    NODE.get(0).filter(|n| n.ready != 0)
}
