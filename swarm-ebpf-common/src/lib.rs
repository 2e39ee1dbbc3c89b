//! Keys and values of the maps the node's eBPF programs (`swarm-ebpf`) share with the agent.
//!
//! Conventions: every address and port is kept as the packet carries it (network byte order),
//! in a native integer: `u32::from_ne_bytes(ip.octets())`, `u16::from_ne_bytes(port.to_be_bytes())`.
//! Layouts are `#[repr(C)]` with explicit padding, so that both sides agree byte for byte.
#![no_std]

/// Map names (pinned under the agent's bpffs directory, so they survive an agent restart).
pub mod maps {
    pub const NODE: &str = "SWARM_NODE";
    pub const IFACES: &str = "SWARM_IFACES";
    pub const ENDPOINTS: &str = "SWARM_ENDPOINTS";
    pub const SUBNETS: &str = "SWARM_SUBNETS";
    pub const NET_STATS: &str = "SWARM_NET_STATS";
    pub const SNAT_OUT: &str = "SWARM_SNAT_OUT";
    pub const SNAT_IN: &str = "SWARM_SNAT_IN";
    pub const SERVICES: &str = "SWARM_SERVICES";
    pub const BACKENDS: &str = "SWARM_BACKENDS";
    pub const NETNS_NETS: &str = "SWARM_NETNS_NETS";
    pub const DNS_PORTS: &str = "SWARM_DNS_PORTS";
    pub const SOCK_LB: &str = "SWARM_SOCK_LB";
    pub const CT: &str = "SWARM_CT";
    pub const CT_REV: &str = "SWARM_CT_REV";
    pub const LB_STATS: &str = "SWARM_LB_STATS";
    pub const SVC_STATS: &str = "SWARM_SVC_STATS";
    pub const PUBLISHED: &str = "SWARM_PUBLISHED";
    pub const PORT_STATS: &str = "SWARM_PORT_STATS";
    pub const HOST_ADDRS: &str = "SWARM_HOST_ADDRS";
    pub const PEERS: &str = "SWARM_PEERS";
    pub const ING_CT: &str = "SWARM_ING_CT";
    pub const ING_REV: &str = "SWARM_ING_REV";
    pub const ING_RET: &str = "SWARM_ING_RET";
}

/// Program names in the object file.
pub mod programs {
    /// tc ingress of a task's host-side veth: everything the task sends.
    pub const FROM_CONTAINER: &str = "from_container";
    /// tc ingress of the node's VXLAN device: everything other nodes send to local tasks.
    pub const FROM_OVERLAY: &str = "from_overlay";
    /// tc ingress of the node's underlay interface: published ports (the routing mesh) and
    /// replies to masqueraded egress traffic.
    pub const FROM_UPLINK: &str = "from_uplink";
    /// tc ingress of the node's loopback device: published ports reached by the node's own
    /// processes (its addresses and 127.0.0.1) and by its tasks, and the replies of those
    /// connections.
    pub const FROM_HOST: &str = "from_host";
    /// cgroup/connect4 on the node's container cgroup: TCP to a VIP goes to a backend,
    /// 127.0.0.11:53 to the task's resolver port.
    pub const CONNECT4: &str = "sock_connect4";
    /// cgroup/sendmsg4: unconnected UDP to 127.0.0.11:53.
    pub const SENDMSG4: &str = "sock_sendmsg4";
    /// cgroup/recvmsg4: the resolver's answers appear to come from port 53.
    pub const RECVMSG4: &str = "sock_recvmsg4";
    /// cgroup/getpeername4: a load-balanced socket's peer is the VIP.
    pub const GETPEERNAME4: &str = "sock_getpeername4";
    /// cgroup_skb/egress and ingress: packet and byte counters of load-balanced sockets.
    pub const SKB_EGRESS: &str = "skb_egress";
    pub const SKB_INGRESS: &str = "skb_ingress";
    /// The cgroup programs with their attach points, in attach order.
    pub const CGROUP: [&str; 6] = [
        CONNECT4,
        SENDMSG4,
        RECVMSG4,
        GETPEERNAME4,
        SKB_EGRESS,
        SKB_INGRESS,
    ];
}

/// Entries of the maps.
pub mod limits {
    pub const IFACES: u32 = 4096;
    pub const ENDPOINTS: u32 = 262_144;
    pub const SUBNETS: u32 = 4096;
    pub const NET_STATS: u32 = 4096;
    pub const SNAT: u32 = 131_072;
    pub const SERVICES: u32 = 65_536;
    pub const BACKENDS: u32 = 524_288;
    pub const NETNS_NETS: u32 = 16_384;
    pub const DNS_PORTS: u32 = 4096;
    pub const CT: u32 = 131_072;
    pub const LB_STATS: u32 = 262_144;
    pub const PUBLISHED: u32 = 16_384;
    pub const HOST_ADDRS: u32 = 256;
    pub const PEERS: u32 = 16_384;
    pub const ING_CT: u32 = 262_144;
}

/// 127.0.0.11, where tasks find their resolver.
pub const DNS_ADDR: u32 = u32::from_ne_bytes([127, 0, 0, 11]);
/// Port 53 as a packet carries it.
pub const DNS_PORT: u16 = 53u16.to_be();

/// The node, in `NODE[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// The node's data-path address: VXLAN source, and the address egress traffic is
    /// translated to.
    pub addr: u32,
    /// The node's VXLAN device (metadata mode).
    pub vxlan_ifindex: u32,
    /// The interface with `addr`: masqueraded traffic leaves through it.
    pub uplink_ifindex: u32,
    /// Source ports for masqueraded egress (network order not needed: host order here).
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// 1 once the agent has filled the maps in.
    pub ready: u32,
    /// The ingress network's VNI (0: the node sees no ingress network, no routing mesh).
    pub ingress_vni: u32,
    /// This node's own address on the ingress network (Docker's `ingress-sbox`): the source
    /// of mesh connections that do not preserve the client's address (0: none allocated).
    pub ingress_addr: u32,
    /// The loopback device (the node's own processes reach published ports through it).
    pub lo_ifindex: u32,
}

/// `IFACES[host-side veth ifindex]`: one task's attachment to one network.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Iface {
    pub vni: u32,
    /// The task's address on the network.
    pub addr: u32,
    /// `IFACE_*` flags.
    pub flags: u32,
    /// MAC of the task's side (`ethN` in the task).
    pub mac: [u8; 6],
    /// MAC of the host side (what the ARP responder answers with).
    pub host_mac: [u8; 6],
    /// Cookie of the task's network namespace (`SO_NETNS_COOKIE`): the socket hooks know a
    /// task by it.
    pub netns_cookie: u64,
}

/// The network is `--internal`: no traffic leaves the cluster.
pub const IFACE_INTERNAL: u32 = 1;

/// `ENDPOINTS[(vni, addr)]`: where a task address lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub vni: u32,
    pub addr: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Data-path address of the node the task runs on; 0 = this node.
    pub node_addr: u32,
    /// Local tasks: the host-side veth.
    pub ifindex: u32,
    /// Local tasks: MAC of the task's side.
    pub mac: [u8; 6],
    /// Local tasks: MAC of the host side.
    pub host_mac: [u8; 6],
    /// `ENDPOINT_*` flags.
    pub flags: u32,
}

/// The endpoint is this node's own address on the ingress network: replies of routing-mesh
/// connections, to be translated back and sent to their client.
pub const ENDPOINT_NODE_INGRESS: u32 = 1;

/// `SUBNETS` (LPM trie, key = prefix length + address): every overlay subnet the node
/// knows, to the VNI. Traffic into a subnet of another network is dropped, never sent out.
pub type SubnetValue = u32;

/// `NET_STATS[vni]` (per CPU): packet and byte counters of one network on this node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub c: [u64; stat::COUNT],
}

/// Indexes into [`NetStats::c`].
pub mod stat {
    /// Delivered from a local task to a local task.
    pub const LOCAL_PACKETS: usize = 0;
    pub const LOCAL_BYTES: usize = 1;
    /// Sent through the tunnel to another node.
    pub const TX_TUNNEL_PACKETS: usize = 2;
    pub const TX_TUNNEL_BYTES: usize = 3;
    /// Received through the tunnel and delivered to a local task.
    pub const RX_TUNNEL_PACKETS: usize = 4;
    pub const RX_TUNNEL_BYTES: usize = 5;
    /// Sent outside the cluster (masqueraded).
    pub const EGRESS_PACKETS: usize = 6;
    pub const EGRESS_BYTES: usize = 7;
    /// Replies from outside delivered back to a task.
    pub const INGRESS_PACKETS: usize = 8;
    pub const INGRESS_BYTES: usize = 9;
    /// Dropped: source address not the task's own.
    pub const DROP_SPOOFED: usize = 10;
    /// Dropped: no such endpoint on the network (or another network's subnet).
    pub const DROP_NO_ENDPOINT: usize = 11;
    /// Dropped: from the tunnel with a source the sending node does not host.
    pub const DROP_BAD_SOURCE: usize = 12;
    /// Dropped: an internal network's task tried to leave the cluster.
    pub const DROP_INTERNAL: usize = 13;
    /// Dropped: could not be masqueraded (no free port, fragment, no route).
    pub const DROP_EGRESS: usize = 14;
    pub const COUNT: usize = 15;
    /// Names for metrics, in index order.
    pub const NAMES: [&str; COUNT] = [
        "local_packets",
        "local_bytes",
        "tx_tunnel_packets",
        "tx_tunnel_bytes",
        "rx_tunnel_packets",
        "rx_tunnel_bytes",
        "egress_packets",
        "egress_bytes",
        "ingress_packets",
        "ingress_bytes",
        "drop_spoofed",
        "drop_no_endpoint",
        "drop_bad_source",
        "drop_internal",
        "drop_egress",
    ];
}

/// A flow: addresses and ports as the packet carries them, plus the IP protocol. ICMP echo
/// uses the identifier as both ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FlowKey {
    pub const fn new(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> FlowKey {
        FlowKey {
            saddr,
            daddr,
            sport,
            dport,
            proto,
            _pad: [0; 3],
        }
    }
}

/// `SNAT_OUT[task → world flow]`: the port the node translated it to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatOut {
    /// Network order.
    pub port: u16,
    pub _pad: [u8; 2],
}

/// `SNAT_IN[world → node flow]`: the task the reply goes back to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatIn {
    pub addr: u32,
    /// Network order.
    pub port: u16,
    pub _pad: [u8; 2],
    /// The task's host-side veth.
    pub ifindex: u32,
}

/// Backends a service's own `SERVICES` value holds: choosing one of them reads no other map
/// (one hash lookup per connect, the VIP's). A service's further backends are in `BACKENDS`.
pub const INLINE_BACKENDS: usize = 16;

/// `SERVICES[vip]`: one service on one network (endpoint mode vip).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Index of this (service, network) in BACKENDS, SVC_STATS and LB_STATS, chosen by the
    /// agent (below `limits::SERVICES`).
    pub id: u32,
    /// The network the VIP is on: only its tasks may use it.
    pub vni: u32,
    /// Backends to choose from: slots `0..count`, the first [`INLINE_BACKENDS`] in
    /// `backends`, the rest at `BACKENDS[(id, slot)]`. Stopping tasks are not among them
    /// (weight 0); 0 = none.
    pub count: u32,
    /// The round robin's position: the programs add one per choice (a plain add, not an
    /// atomic one: two CPUs choosing at the same instant may pick the same backend, as
    /// they could in IPVS's rr between its lock and its update, which costs nothing but
    /// evenness over those two). The agent starts it at a random slot on every write, so
    /// the nodes of a routing mesh do not all start at the same backend.
    pub rr: u32,
    /// Slots `0..min(count, INLINE_BACKENDS)`.
    pub backends: [u32; INLINE_BACKENDS],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub id: u32,
    pub slot: u32,
}

/// `NETNS_NETS[(netns cookie, vni)]` = the task's address there: which networks a task's
/// sockets may reach VIPs on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetnsNet {
    pub cookie: u64,
    pub vni: u32,
    pub _pad: u32,
}

/// `DNS_PORTS[netns cookie]`: where the agent's resolver listens inside the task (on
/// 127.0.0.11), per transport, in network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsPorts {
    pub udp: u16,
    pub tcp: u16,
}

/// `SOCK_LB`, socket storage: what connect4 did to a TCP socket it sent to a backend, and
/// the socket's counts not yet added to `LB_STATS` and `SVC_STATS`. The entry lives in the
/// socket itself and goes with it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockLb {
    pub vip: u32,
    pub backend: u32,
    pub id: u32,
    /// 1 until the connection itself was counted (with the socket's first flush: its SYN).
    pub connection: u32,
    /// What each direction carried since its last flush: `[egress, ingress]`.
    pub pending: [SockPending; 2],
}

/// Packets and bytes one direction of a load-balanced socket carried since its last flush.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockPending {
    pub packets: u64,
    pub bytes: u64,
}

/// A load-balanced socket's packets are added to the shared counters in batches while it is
/// ESTABLISHED: at most this many packets wait in the socket (a flush is also forced by
/// [`SOCK_FLUSH_BYTES`], by a FIN or RST, and by any other TCP state).
pub const SOCK_FLUSH_PACKETS: u64 = 32;

/// At most this many bytes wait in the socket before a flush.
pub const SOCK_FLUSH_BYTES: u64 = 256 * 1024;

/// `CT[task → VIP flow]`: the backend the tc program chose for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    pub backend: u32,
    pub id: u32,
}

/// `CT_REV[backend → task flow]`: the VIP the replies must appear to come from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtRev {
    pub vip: u32,
    pub id: u32,
}

/// `LB_STATS[(id, backend address)]` per CPU, and `SVC_STATS[id]` for the whole service:
/// connections (TCP connects, new UDP/tc flows), packets and bytes both ways.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LbStatsKey {
    pub id: u32,
    pub backend: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbStats {
    pub connections: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// `PUBLISHED[(port, protocol)]`: a port every node (ingress mode) or this node (host mode)
/// answers on, on every one of its addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublishedKey {
    /// Network order.
    pub port: u16,
    /// IP protocol (6 TCP, 17 UDP).
    pub proto: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// Ingress mode: the service's VIP on the ingress network (its `SERVICES` entry picks the
    /// backend). Host mode: 0.
    pub vip: u32,
    /// Host mode: the local task's address on the ingress network. Ingress mode: 0.
    pub backend: u32,
    /// The port the task listens on, network order.
    pub target_port: u16,
    /// `PUBLISHED_*` flags.
    pub flags: u16,
}

/// The task sees the client's own address (`source-ip=preserve`; host mode always).
pub const PUBLISHED_PRESERVE: u16 = 1;
/// Host mode: straight to the local task of `backend`.
pub const PUBLISHED_HOST: u16 = 2;

/// `PORT_STATS[(port, protocol)]` per CPU: counters of one published port on this node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    pub c: [u64; port_stat::COUNT],
}

/// Indexes into [`PortStats::c`].
pub mod port_stat {
    /// New connections (TCP SYNs, new UDP flows) sent to a task.
    pub const CONNECTIONS: usize = 0;
    /// Client → task.
    pub const PACKETS_IN: usize = 1;
    pub const BYTES_IN: usize = 2;
    /// Task → client.
    pub const PACKETS_OUT: usize = 3;
    pub const BYTES_OUT: usize = 4;
    /// Dropped: no running, healthy task serves the port.
    pub const DROP_NO_BACKEND: usize = 5;
    /// Dropped: the flow's task is gone and the packet cannot start a new connection.
    pub const DROP_STALE: usize = 6;
    /// Dropped: no free translation port, no ingress address, or the packet could not be
    /// rewritten.
    pub const DROP_NAT: usize = 7;
    pub const COUNT: usize = 8;
    /// The drop reasons: (index, metric label).
    pub const DROPS: [(usize, &str); 3] = [
        (DROP_NO_BACKEND, "no_backend"),
        (DROP_STALE, "stale_flow"),
        (DROP_NAT, "nat"),
    ];
}

/// `ING_CT[client → node:published flow]`: where the ingress node sends it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngressCt {
    /// The task's address on the ingress network.
    pub backend: u32,
    /// The source the task sees: the node's ingress address, or the client's own.
    pub nat_addr: u32,
    /// Network order: the source port the task sees, and the task's port.
    pub nat_port: u16,
    pub target_port: u16,
}

/// `ING_REV[task → nat_addr:nat_port flow]` on the ingress node: how a reply goes back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngressRev {
    pub client: u32,
    /// The node address the client connected to (the reply's source).
    pub node_addr: u32,
    /// Network order.
    pub client_port: u16,
    pub published_port: u16,
    /// Where the client came in: the uplink (replies leave there, next hop resolved by the
    /// kernel), or the loopback device (replies are handed back to the node's stack).
    pub ifindex: u32,
    /// `ORIGIN_*`.
    pub origin: u32,
    /// `FLOW_*` flags.
    pub flags: u32,
    /// `bpf_ktime_get_ns` of the flow's last packet (either way): a translation port of a
    /// flow that ended (or went idle) is given to a new flow after a while.
    pub last_ns: u64,
    /// Clients through the uplink: the MAC their packets came from (the client's, or the
    /// router's) and the one they went to (the uplink's): replies go straight back there,
    /// with no route or neighbour lookup. All zeros: look them up.
    pub peer_mac: [u8; 6],
    pub own_mac: [u8; 6],
    pub _pad: [u8; 4],
}

/// The flow saw a FIN or a RST: its translation port may go to another flow once it has
/// been quiet for [`FLOW_CLOSED_REUSE_NS`]. (A late packet of the old flow then finds its
/// port taken and is dropped, or reaches the new client out of its window.)
pub const FLOW_CLOSED: u32 = 1;
/// How long a closed TCP flow keeps its translation port after its last packet.
/// (Longer than the closing handshake's last round trip on most networks; the kernel's
/// conntrack keeps closed flows far longer, which at high connection rates to one task runs
/// out of ports, as kube-proxy's NodePorts do.)
pub const FLOW_CLOSED_REUSE_NS: u64 = 500_000_000;
/// How long an idle UDP flow keeps its translation port.
pub const FLOW_UDP_IDLE_NS: u64 = 30_000_000_000;
/// How long an idle TCP flow that never closed keeps its translation port.
pub const FLOW_TCP_IDLE_NS: u64 = 3_600_000_000_000;

/// The client reached the node through its uplink.
pub const ORIGIN_UPLINK: u32 = 0;
/// The client is a process of the node (or a task, masqueraded): through the loopback.
pub const ORIGIN_LOCAL: u32 = 1;

/// `ING_RET[task → client flow]` on the task's node, for connections that keep the client's
/// address and came through another node: that node's data-path address (the reply goes
/// back through the tunnel to the node the client knows).
pub type IngressRet = u32;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain `#[repr(C)]` integers and byte arrays without implicit padding.
    unsafe impl aya::Pod for NodeConfig {}
    unsafe impl aya::Pod for Iface {}
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for NetStats {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for SnatOut {}
    unsafe impl aya::Pod for SnatIn {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for BackendKey {}
    unsafe impl aya::Pod for NetnsNet {}
    unsafe impl aya::Pod for DnsPorts {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for CtRev {}
    unsafe impl aya::Pod for LbStatsKey {}
    unsafe impl aya::Pod for LbStats {}
    unsafe impl aya::Pod for PublishedKey {}
    unsafe impl aya::Pod for Published {}
    unsafe impl aya::Pod for PortStats {}
    unsafe impl aya::Pod for IngressCt {}
    unsafe impl aya::Pod for IngressRev {}
}
