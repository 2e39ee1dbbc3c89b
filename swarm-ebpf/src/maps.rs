//! The maps. All are pinned by name under the agent's bpffs directory: an agent restart
//! reuses them, so forwarding never stops while the agent is away.

use aya_ebpf::macros::map;
use aya_ebpf::maps::lpm_trie::LpmTrie;
use aya_ebpf::maps::{Array, HashMap, LruHashMap, PerCpuHashMap};
use swarm_ebpf_common::{
    limits, Endpoint, EndpointKey, FlowKey, Iface, NetStats, NodeConfig, SnatIn, SnatOut,
    SubnetValue,
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

/// The node's configuration (zeroed until the agent wrote it).
#[inline(always)]
pub fn node() -> Option<&'static NodeConfig> {
    NODE.get(0).filter(|n| n.ready != 0)
}
