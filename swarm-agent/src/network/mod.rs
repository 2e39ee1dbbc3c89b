//! Networking of the node: the managers' view of the networks it has tasks on ([`view`]),
//! the eBPF data plane that implements it ([`dataplane`]), the interfaces of tasks and the
//! VXLAN device ([`plumbing`]), and [`Networking`], which ties them together:
//!
//! - `start`: once the node knows its data-path address, the VXLAN device (metadata mode)
//!   carries `from_overlay` and the underlay interface carries `from_uplink`;
//! - `attach`/`detach` (called by the executor): a veth per network attachment of a task,
//!   its `IFACES` entry and its `from_container` link;
//! - `run`: every view the managers send is written into the maps (`ENDPOINTS`, `SUBNETS`,
//!   `NET_STATS`): local endpoints come from `IFACES` (which outlives the agent, pinned),
//!   remote ones from the view. Until the first complete view after a start the maps are left
//!   as they are, so forwarding goes on across an agent restart.

pub mod dataplane;
pub mod dns;
pub mod ipvs;
pub mod metrics;
pub mod plumbing;
pub mod probe;
pub mod sockets;
pub mod stream;
#[cfg(any(test, feature = "testbed"))]
pub mod testbed;
pub mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::{NetworkInfo, Task};
use swarm_ebpf_common::{
    programs, Endpoint, EndpointKey, Iface, NetnsNet, NodeConfig, Published, PublishedKey, Service,
    ENDPOINT_NODE_INGRESS, IFACE_INTERNAL, PUBLISHED_HOST, PUBLISHED_PRESERVE,
};
use tokio::sync::watch;

use dataplane::{Dataplane, DataplaneError, ServiceEntry};
use plumbing::{AttachmentSpec, PlumbingError};
use view::{NetworkView, ViewHandle};

/// Default MTU inside containers (underlay 1500 − VXLAN 50).
pub const DEFAULT_MTU: u32 = 1450;
/// Docker's VXLAN port.
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// Source ports of masqueraded egress: above Linux's default ephemeral range (32768–60999),
/// so they never collide with the node's own connections.
pub const SNAT_PORTS: (u16, u16) = (61000, 65535);
/// How often the node's addresses (where published ports answer) are read again.
const HOST_ADDRS_PERIOD: Duration = Duration::from_secs(10);
/// How long a starting task waits for the managers to tell this node about its networks.
const VIEW_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Plumbing(#[from] PlumbingError),
    #[error("the data plane is not running on this node: {0}")]
    Unavailable(String),
    #[error(
        "network {0} is not known to this node yet (the managers did not send it within 30 s)"
    )]
    UnknownNetwork(String),
    #[error(transparent)]
    Dns(#[from] dns::DnsError),
    #[error("invalid address {addr:?} of task {task} on network {network}")]
    BadAddress {
        task: String,
        network: String,
        addr: String,
    },
}

/// See [`Networking::metric_names`].
#[derive(Debug, Default)]
pub struct MetricNames {
    pub networks: BTreeMap<u32, String>,
    pub lb: BTreeMap<u32, (String, String)>,
    /// Published port → the service publishing it.
    pub ports: BTreeMap<PublishedKey, String>,
    /// Published ports a process of the node listens on too (the mesh takes their packets).
    pub shadowed: BTreeSet<PublishedKey>,
}

#[derive(Clone, Debug)]
pub struct NetworkingConfig {
    /// bpffs directory for the pinned maps and links.
    pub bpf_dir: PathBuf,
    /// The cgroup v2 directory every task's cgroup is below: the socket hooks (service load
    /// balancing, DNS interception) attach there. None: no socket hooks (tc still translates
    /// VIP traffic, and tasks have no resolver at 127.0.0.11).
    pub cgroup_dir: Option<PathBuf>,
    /// Where the node's own resolvers are listed (what the embedded DNS forwards to).
    pub resolv_conf: PathBuf,
    /// How tc programs attach (TCX links, or clsact filters on kernels without TCX): what
    /// [`probe::choose`] picked.
    pub tc_attach: probe::TcAttach,
    /// What balances the tasks' connections to service VIPs and leads them to the resolver.
    pub lb: ServiceLb,
    /// IPVS mode: the directory where the ingress sandbox's namespace is mounted (the routing
    /// mesh, [`ipvs::ingress`]); `None`: published ports of ingress mode are not served in
    /// IPVS mode (an error is logged). Unused in eBPF mode.
    pub ingress_sbox_dir: Option<PathBuf>,
}

/// What balances service VIPs (the data-plane mode's part that differs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceLb {
    /// The socket hooks and the tc programs (SERVICES/BACKENDS maps).
    Ebpf,
    /// IPVS in each task's namespace with nftables marking and DNS rules
    /// ([`ipvs::sandbox`]), and published ports through the node's ingress sandbox
    /// ([`ipvs::ingress`]); SERVICES stays empty and PUBLISHED holds only host-mode ports.
    /// The overlay stays on the tc programs.
    Ipvs,
}

/// The cgroup v2 directory of the parent cgroup `parent` (created if needed): under the
/// unified hierarchy's mount point, wherever it is (`/sys/fs/cgroup` on a pure v2 host,
/// `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_dir(parent: &str) -> std::io::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mount = info
        .lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            post.starts_with("cgroup2 ")
                .then(|| pre.split(' ').nth(4).map(PathBuf::from))
                .flatten()
        })
        .ok_or_else(|| std::io::Error::other("no cgroup2 hierarchy is mounted"))?;
    let dir = mount.join(parent.trim_matches('/'));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The node's identity on the data path, known once it joined.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NodeIdentity {
    id: String,
    addr: Ipv4Addr,
}

/// One attachment this agent made for a task.
#[derive(Clone, Debug)]
struct LocalAttachment {
    host_name: String,
    ifindex: u32,
}

/// A local task's interfaces and namespace.
#[derive(Clone, Debug)]
struct TaskRecord {
    attachments: Vec<LocalAttachment>,
    netns: PathBuf,
    vnis: Vec<u32>,
    netns_cookie: u64,
    /// The task's resolver listeners (dropped: they close).
    dns: Option<Arc<dns::TaskDns>>,
    /// The ids of the networks the task is attached to.
    networks: BTreeSet<String>,
    /// What the IPVS data path last programmed in the task's namespace (None: nothing yet).
    ipvs_applied: Option<ipvs::table::Table>,
}

struct State {
    node: Option<NodeIdentity>,
    tasks: HashMap<String, TaskRecord>,
    lb_ids: LbIds,
    /// The ids of the pinned SERVICES map were taken over.
    lb_adopted: bool,
    /// Published ports a process of the node listens on too (already logged), each with the
    /// process holding it ("nginx (pid 812)", empty when not found).
    shadowed: BTreeMap<PublishedKey, String>,
    /// IPVS mode: the VIPs' firewall marks.
    vip_marks: ipvs::marks::VipMarks,
    /// IPVS mode: the ingress sandbox as made (its namespace and the node's ingress address
    /// it has), and the table last programmed there and on the node.
    ingress: Option<IngressSandbox>,
}

/// The ingress sandbox of the IPVS data path.
#[derive(Clone, Debug)]
struct IngressSandbox {
    netns: PathBuf,
    addr: Ipv4Addr,
    applied: Option<ipvs::ingress::IngressTable>,
}

/// The name of the ingress sandbox's namespace in [`NetworkingConfig::ingress_sbox_dir`].
pub const INGRESS_SBOX: &str = "ingress_sbox";

pub struct Networking {
    cfg: NetworkingConfig,
    /// The embedded resolver tasks reach at 127.0.0.11 (None without socket hooks).
    dns: Option<dns::DnsServer>,
    /// Set once the run loop and the start loop are going (see [`Networking::bring_up`]).
    up: Mutex<Option<NodeIdentity>>,
    dataplane: Result<Arc<Dataplane>, String>,
    view: ViewHandle,
    state: Mutex<State>,
    /// Poked after local changes so that `run` writes the maps again.
    changed: tokio::sync::Notify,
}

fn node_id_of(st: &State) -> Option<String> {
    st.node.as_ref().map(|n| n.id.clone())
}

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, l) = s.split_once('/')?;
    let len: u8 = l.parse().ok()?;
    (len <= 32).then_some(())?;
    Some((a.parse().ok()?, len))
}

fn be(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

/// What ENDPOINTS should hold: a local endpoint for every task interface of this node
/// (`IFACES`), and every endpoint of the view that lives on another node.
pub fn desired_endpoints(
    view: &NetworkView,
    self_id: &str,
    self_addr: Ipv4Addr,
    ifaces: &BTreeMap<u32, Iface>,
) -> BTreeMap<EndpointKey, Endpoint> {
    let mut out = BTreeMap::new();
    for e in view.endpoints.values() {
        if e.node_id == self_id {
            // The node's own ingress address: replies of the routing mesh come to it.
            if let (true, Some(net), Ok(addr)) = (
                e.node_ingress,
                view.networks.get(&e.network_id),
                e.address.parse::<Ipv4Addr>(),
            ) {
                out.insert(
                    EndpointKey {
                        vni: net.vni,
                        addr: be(addr),
                    },
                    Endpoint {
                        flags: ENDPOINT_NODE_INGRESS,
                        ..Default::default()
                    },
                );
            }
            continue;
        }
        let Some(net) = view.networks.get(&e.network_id) else {
            continue;
        };
        let (Ok(addr), Ok(node)) = (
            e.address.parse::<Ipv4Addr>(),
            e.node_addr.parse::<Ipv4Addr>(),
        ) else {
            continue;
        };
        if node == self_addr || node.is_unspecified() {
            continue;
        }
        out.insert(
            EndpointKey {
                vni: net.vni,
                addr: be(addr),
            },
            Endpoint {
                node_addr: be(node),
                ..Default::default()
            },
        );
    }
    for (&ifindex, i) in ifaces {
        out.insert(
            EndpointKey {
                vni: i.vni,
                addr: i.addr,
            },
            Endpoint {
                node_addr: 0,
                ifindex,
                mac: i.mac,
                host_mac: i.host_mac,
                flags: 0,
            },
        );
    }
    out
}

/// The ingress network, when the node sees one.
pub fn ingress_network(view: &NetworkView) -> Option<&NetworkInfo> {
    view.networks.values().find(|n| n.ingress)
}

/// This node's own address on the ingress network (its `node_ingress` endpoint).
pub fn ingress_addr(view: &NetworkView, self_id: &str) -> Option<Ipv4Addr> {
    let net = ingress_network(view)?;
    view.endpoints
        .values()
        .find(|e| e.node_ingress && e.node_id == self_id && e.network_id == net.id)
        .and_then(|e| e.address.parse().ok())
}

/// The IP protocol number of a published port's protocol (the data plane carries TCP and
/// UDP).
fn ip_proto(p: i32) -> Option<u8> {
    match proto::PortProtocol::try_from(p) {
        Ok(proto::PortProtocol::Tcp) => Some(6),
        Ok(proto::PortProtocol::Udp) => Some(17),
        _ => None,
    }
}

/// The key of a published port.
pub fn published_key(port: u16, ip_proto: u8) -> PublishedKey {
    PublishedKey {
        port: port.to_be(),
        proto: ip_proto,
        _pad: 0,
    }
}

/// One published port of ingress mode (the routing mesh's), as both data planes serve it.
pub(crate) struct IngressPort<'a> {
    pub service: &'a proto::ServiceInfo,
    /// The service's VIP on the ingress network.
    pub vip: Ipv4Addr,
    pub ip_proto: u8,
    pub port: u16,
    pub target: u16,
    pub config: &'a proto::PortConfig,
}

/// Every ingress-mode port (not 0, TCP or UDP) of every service the view holds with a VIP on
/// the ingress network `ingress`, in service id order.
pub(crate) fn ingress_ports<'a>(
    view: &'a NetworkView,
    ingress: &'a NetworkInfo,
) -> impl Iterator<Item = IngressPort<'a>> + 'a {
    let ingress_mode = proto::PublishMode::Ingress as i32;
    view.services.values().flat_map(move |s| {
        let vip = s
            .virtual_ips
            .iter()
            .find(|v| v.network_id == ingress.id)
            .and_then(|v| parse_cidr(&v.addr));
        s.ports
            .iter()
            .filter(move |p| p.publish_mode == ingress_mode)
            .filter_map(move |p| {
                let (Some(ip_proto), Ok(port), Ok(target), Some((vip, _))) = (
                    ip_proto(p.protocol),
                    u16::try_from(p.published_port),
                    u16::try_from(p.target_port),
                    vip,
                ) else {
                    return None;
                };
                (port != 0).then_some(IngressPort {
                    service: s,
                    vip,
                    ip_proto,
                    port,
                    target,
                    config: p,
                })
            })
    })
}

/// What PUBLISHED should hold, with the service publishing each port:
/// - every ingress-mode port of every service the node sees, through the service's VIP on
///   the ingress network (its serving tasks anywhere are the backends);
/// - every host-mode port of a service with a serving task on this node, straight to that
///   task's ingress address (the scheduler keeps two such tasks off one node; should two
///   ever meet, the first by task id wins). An ingress-mode port wins over a host-mode one.
pub fn desired_published(
    view: &NetworkView,
    self_id: &str,
) -> BTreeMap<PublishedKey, (Published, String)> {
    let mut out = BTreeMap::new();
    let Some(ingress) = ingress_network(view) else {
        return out;
    };
    let ingress_mode = proto::PublishMode::Ingress as i32;
    for p in ingress_ports(view, ingress) {
        out.insert(
            published_key(p.port, p.ip_proto),
            (
                Published {
                    vip: be(p.vip),
                    backend: 0,
                    target_port: p.target.to_be(),
                    flags: if p.config.preserve_source_ip {
                        PUBLISHED_PRESERVE
                    } else {
                        0
                    },
                },
                p.service.name.clone(),
            ),
        );
    }
    for e in view.endpoints.values() {
        if e.node_id != self_id || !e.serving || e.network_id != ingress.id || e.node_ingress {
            continue;
        }
        let (Some(s), Ok(addr)) = (view.services.get(&e.service_id), e.address.parse()) else {
            continue;
        };
        for p in s.ports.iter().filter(|p| p.publish_mode != ingress_mode) {
            let (Some(proto), Ok(port), Ok(target)) = (
                ip_proto(p.protocol),
                u16::try_from(p.published_port),
                u16::try_from(p.target_port),
            ) else {
                continue;
            };
            if port == 0 {
                continue;
            }
            out.entry(published_key(port, proto)).or_insert((
                Published {
                    vip: 0,
                    backend: be(addr),
                    target_port: target.to_be(),
                    flags: PUBLISHED_HOST | PUBLISHED_PRESERVE,
                },
                s.name.clone(),
            ));
        }
    }
    out
}

/// What PEERS should hold: the data-path addresses of the other nodes the view names.
pub fn desired_peers(view: &NetworkView, self_addr: Ipv4Addr) -> BTreeSet<u32> {
    view.endpoints
        .values()
        .filter_map(|e| e.node_addr.parse::<Ipv4Addr>().ok())
        .filter(|a| *a != self_addr && !a.is_unspecified())
        .map(be)
        .collect()
}

/// The ports processes of this namespace listen on (TCP) or are bound to (UDP), from
/// `/proc/net/{tcp,tcp6,udp,udp6}`, each with the inode of one socket holding it.
pub fn host_listeners() -> BTreeMap<PublishedKey, u64> {
    let mut out = BTreeMap::new();
    for (file, proto, listen) in [
        ("/proc/net/tcp", 6u8, Some("0A")),
        ("/proc/net/tcp6", 6, Some("0A")),
        ("/proc/net/udp", 17, None),
        ("/proc/net/udp6", 17, None),
    ] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for (k, inode) in parse_proc_net(&text, proto, listen) {
            out.entry(k).or_insert(inode);
        }
    }
    out
}

/// The local ports of the sockets of one `/proc/net/*` table (with state `listen` when
/// given), each with its socket's inode.
pub fn parse_proc_net(text: &str, proto: u8, listen: Option<&str>) -> Vec<(PublishedKey, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (local, state) = (f.get(1)?, f.get(3)?);
            if listen.is_some_and(|s| s != *state) {
                return None;
            }
            let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            let inode = f.get(9).and_then(|i| i.parse().ok()).unwrap_or(0);
            Some((published_key(port, proto), inode))
        })
        .collect()
}

/// The processes holding the given socket inodes, as "comm (pid N)", found through
/// `/proc/<pid>/fd`; an inode no process holds is left out.
pub fn socket_owners(inodes: &BTreeSet<u64>) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    if inodes.is_empty() {
        return out;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            if inodes.contains(&inode) && !out.contains_key(&inode) {
                let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                out.insert(inode, format!("{} (pid {pid})", comm.trim()));
            }
        }
        if out.len() == inodes.len() {
            break;
        }
    }
    out
}

/// What SUBNETS should hold: every network's subnet → its VNI.
pub fn desired_subnets(view: &NetworkView) -> BTreeMap<([u8; 4], u8), u32> {
    view.networks
        .values()
        .filter_map(|n| {
            let (a, len) = parse_cidr(&n.subnet)?;
            Some(((a.octets(), len), n.vni))
        })
        .collect()
}

/// What NETNS_NETS should hold: for every local task interface, its namespace may reach the
/// VIPs of that interface's network.
pub fn desired_netns_nets(ifaces: &BTreeMap<u32, Iface>) -> BTreeMap<NetnsNet, u32> {
    ifaces
        .values()
        .filter(|i| i.netns_cookie != 0)
        .map(|i| {
            (
                NetnsNet {
                    cookie: i.netns_cookie,
                    vni: i.vni,
                    _pad: 0,
                },
                i.addr,
            )
        })
        .collect()
}

/// Ids of the load-balanced (service, network) pairs: indexes into BACKENDS, RR and LB_STATS.
/// Stable for as long as the pair exists, across agent restarts too (taken over from the
/// pinned SERVICES map on the first complete view).
#[derive(Debug, Default)]
pub struct LbIds {
    by_key: BTreeMap<(String, String), u32>,
    /// The ids of `by_key`.
    used: BTreeSet<u32>,
    /// Every id below this one is used: the search for a free id starts here, so that
    /// giving ids to N new pairs costs O(N log N), not O(N²).
    free_from: u32,
}

impl LbIds {
    /// Takes over the ids an earlier agent gave the VIPs still in SERVICES.
    pub fn adopt(&mut self, view: &NetworkView, services: &BTreeMap<u32, ServiceEntry>) {
        for s in view.services.values() {
            for v in &s.virtual_ips {
                let Some((addr, _)) = parse_cidr(&v.addr) else {
                    continue;
                };
                if let Some((svc, _)) = services.get(&be(addr)) {
                    let key = (s.id.clone(), v.network_id.clone());
                    if self.used.contains(&svc.id) {
                        continue;
                    }
                    if let std::collections::btree_map::Entry::Vacant(e) = self.by_key.entry(key) {
                        e.insert(svc.id);
                        self.used.insert(svc.id);
                    }
                }
            }
        }
    }

    /// The id of `key`: the one it has, else the lowest free one.
    fn get(&mut self, key: (String, String)) -> Option<u32> {
        if let Some(id) = self.by_key.get(&key) {
            return Some(*id);
        }
        let id = (self.free_from.max(1)..swarm_ebpf_common::limits::SERVICES)
            .find(|i| !self.used.contains(i))?;
        self.by_key.insert(key, id);
        self.used.insert(id);
        self.free_from = id + 1;
        Some(id)
    }

    fn retain(&mut self, live: &BTreeSet<(String, String)>) {
        let (used, free_from) = (&mut self.used, &mut self.free_from);
        self.by_key.retain(|k, id| {
            let keep = live.contains(k);
            if !keep {
                used.remove(id);
                *free_from = (*free_from).min(*id);
            }
            keep
        });
    }
}

/// What SERVICES/BACKENDS should hold: each VIP of a vip-mode service the node sees, with the
/// addresses of the service's serving tasks on that VIP's network (in task id order).
pub fn desired_services(view: &NetworkView, ids: &mut LbIds) -> BTreeMap<u32, ServiceEntry> {
    let mut backends: BTreeMap<(&str, &str), Vec<(&str, u32)>> = BTreeMap::new();
    for e in view.endpoints.values().filter(|e| e.serving) {
        if let Ok(a) = e.address.parse::<Ipv4Addr>() {
            backends
                .entry((e.service_id.as_str(), e.network_id.as_str()))
                .or_default()
                .push((e.task_id.as_str(), be(a)));
        }
    }
    let mut out = BTreeMap::new();
    let mut live = BTreeSet::new();
    for s in view.services.values() {
        if s.endpoint_mode != proto::EndpointMode::Vip as i32 {
            continue;
        }
        for v in &s.virtual_ips {
            let (Some(net), Some((addr, _))) =
                (view.networks.get(&v.network_id), parse_cidr(&v.addr))
            else {
                continue;
            };
            let key = (s.id.clone(), v.network_id.clone());
            live.insert(key.clone());
            let Some(id) = ids.get(key) else {
                continue;
            };
            let mut list = backends
                .get(&(s.id.as_str(), v.network_id.as_str()))
                .cloned()
                .unwrap_or_default();
            list.sort();
            out.insert(
                be(addr),
                (
                    Service {
                        id,
                        vni: net.vni,
                        count: list.len() as u32,
                        ..Service::default()
                    },
                    list.into_iter().map(|(_, a)| a).collect(),
                ),
            );
        }
    }
    ids.retain(&live);
    out
}

/// The interfaces a task gets, in the order of its attachments.
pub fn attachment_specs(
    task: &Task,
    networks: &BTreeMap<String, NetworkInfo>,
) -> Result<Vec<(AttachmentSpec, NetworkInfo)>, NetworkError> {
    // The default route goes through the first network that is neither internal nor the
    // ingress network, else through the first one that is not internal.
    let nets: Vec<&NetworkInfo> = task
        .networks
        .iter()
        .map(|a| {
            networks
                .get(&a.network_id)
                .ok_or_else(|| NetworkError::UnknownNetwork(a.network_name.clone()))
        })
        .collect::<Result<_, _>>()?;
    let gw_index = nets
        .iter()
        .position(|n| !n.internal && !n.ingress)
        .or_else(|| nets.iter().position(|n| !n.internal));
    let mut out = Vec::new();
    for (i, (a, n)) in task.networks.iter().zip(nets).enumerate() {
        let bad = |addr: &str| NetworkError::BadAddress {
            task: task.id.clone(),
            network: a.network_name.clone(),
            addr: addr.to_string(),
        };
        let first = a.addresses.first().ok_or_else(|| bad(""))?;
        let (addr, prefix_len) = parse_cidr(first).ok_or_else(|| bad(first))?;
        let gateway = if Some(i) == gw_index {
            Some(n.gateway.parse::<Ipv4Addr>().map_err(|_| bad(&n.gateway))?)
        } else {
            None
        };
        out.push((
            AttachmentSpec {
                host_name: plumbing::host_name(&task.id, i),
                task_name: format!("eth{i}"),
                addr,
                prefix_len,
                mtu: if n.mtu == 0 { DEFAULT_MTU } else { n.mtu },
                gateway,
            },
            n.clone(),
        ));
    }
    Ok(out)
}

impl Networking {
    /// Loads the data plane (a failure is kept and reported to every task that needs a
    /// network; tasks without networks still run).
    pub fn new(cfg: NetworkingConfig, view: ViewHandle) -> Arc<Networking> {
        let loading = std::time::Instant::now();
        let dataplane = Dataplane::load(&cfg.bpf_dir, cfg.tc_attach)
            .map(Arc::new)
            .map_err(|e| e.to_string());
        match &dataplane {
            Ok(_) => tracing::info!(
                seconds = loading.elapsed().as_secs_f64(),
                "the eBPF data plane's programs are loaded and verified"
            ),
            Err(e) => tracing::error!("the eBPF data plane did not load: {e}"),
        }
        // The resolver at 127.0.0.11 needs the socket hooks that lead tasks to it.
        let leads_to_dns = cfg.cgroup_dir.is_some() || cfg.lb == ServiceLb::Ipvs;
        let dns = match &dataplane {
            Ok(_) if leads_to_dns => {
                let mut dc = dns::DnsConfig::default();
                dc.forward.resolv_conf = cfg.resolv_conf.clone();
                match dns::DnsServer::new(dc, &view) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        tracing::error!("the embedded DNS server did not start: {e}");
                        None
                    }
                }
            }
            _ => None,
        };
        let net = Arc::new(Networking {
            cfg,
            up: Mutex::new(None),
            dataplane,
            dns,
            view,
            state: Mutex::new(State {
                node: None,
                tasks: HashMap::new(),
                lb_ids: LbIds::default(),
                lb_adopted: false,
                shadowed: BTreeMap::new(),
                vip_marks: ipvs::marks::VipMarks::default(),
                ingress: None,
            }),
            changed: tokio::sync::Notify::new(),
        });
        swarm_common::metrics::register_collector(Box::new(metrics::DataplaneCollector {
            net: Arc::downgrade(&net),
        }));
        net
    }

    pub fn config(&self) -> &NetworkingConfig {
        &self.cfg
    }

    /// Whether tasks get the embedded resolver at 127.0.0.11 (their resolv.conf names it).
    pub fn has_dns(&self) -> bool {
        self.dns.is_some()
    }

    /// Names for the metrics: VNI → network name, LB id → (service, network) names.
    pub fn metric_names(&self) -> MetricNames {
        let view = self.view.current();
        let networks: BTreeMap<u32, String> = view
            .networks
            .values()
            .map(|n| (n.vni, n.name.clone()))
            .collect();
        let st = self.lock();
        let lb = st
            .lb_ids
            .by_key
            .iter()
            .map(|((svc, net), id)| {
                let s = view
                    .services
                    .get(svc)
                    .map_or(svc.clone(), |s| s.name.clone());
                let n = view
                    .networks
                    .get(net)
                    .map_or(net.clone(), |n| n.name.clone());
                (*id, (s, n))
            })
            .collect();
        let ports = node_id_of(&st)
            .map(|id| {
                desired_published(&view, &id)
                    .into_iter()
                    .map(|(k, (_, name))| (k, name))
                    .collect()
            })
            .unwrap_or_default();
        MetricNames {
            networks,
            lb,
            ports,
            shadowed: st.shadowed.keys().copied().collect(),
        }
    }

    /// The view the managers send, which this data plane implements.
    pub fn view(&self) -> ViewHandle {
        self.view.clone()
    }

    /// Called by the agent whenever its session is up: the first time (or when the node's
    /// identity changed) it starts the data path as soon as the managers' view arrived
    /// (retrying until it works), and the loop that keeps the maps in line with the view.
    pub fn bring_up(self: &Arc<Self>, node_id: &str, addr: Ipv4Addr) {
        let me = NodeIdentity {
            id: node_id.to_string(),
            addr,
        };
        {
            let mut up = self.up.lock().unwrap_or_else(|p| p.into_inner());
            if up.as_ref() == Some(&me) {
                return;
            }
            let first = up.is_none();
            *up = Some(me.clone());
            if first {
                tokio::spawn(self.clone().run());
            }
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut rx = this.view.subscribe();
            loop {
                if this.up.lock().unwrap_or_else(|p| p.into_inner()).as_ref() != Some(&me) {
                    return;
                }
                let port = {
                    let v = rx.borrow_and_update();
                    v.complete.then_some(v.vxlan_port)
                };
                if let Some(port) = port {
                    let port = u16::try_from(port)
                        .ok()
                        .filter(|p| *p != 0)
                        .unwrap_or(DEFAULT_VXLAN_PORT);
                    match this.start(&me.id, me.addr, port).await {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::error!("starting the data plane: {e}; retrying in 5 s");
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            continue;
                        }
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    pub fn dataplane(&self) -> Result<&Arc<Dataplane>, NetworkError> {
        self.dataplane
            .as_ref()
            .map_err(|e| NetworkError::Unavailable(e.clone()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node's data path: VXLAN device with `from_overlay`, the underlay interface (the
    /// one with `addr`) with `from_uplink`, and the node's entry in `NODE`. Idempotent.
    pub async fn start(
        &self,
        node_id: &str,
        addr: Ipv4Addr,
        vxlan_port: u16,
    ) -> Result<(), NetworkError> {
        let dp = self.dataplane()?.clone();
        let h = plumbing::handle()?;
        let (uplink, uplink_ifindex, mtu) = plumbing::interface_with(&h, addr).await?;
        let vxlan = plumbing::ensure_vxlan(&h, vxlan_port, mtu).await?;
        dp.attach_ingress(programs::FROM_OVERLAY, plumbing::VXLAN_DEVICE)?;
        dp.attach_ingress(programs::FROM_UPLINK, &uplink)?;
        let lo = plumbing::loopback_index(&h).await?;
        plumbing::accept_reinjected_on_loopback()?;
        dp.attach_ingress(programs::FROM_HOST, "lo")?;
        if let (Some(cg), ServiceLb::Ebpf) = (&self.cfg.cgroup_dir, self.cfg.lb) {
            dp.attach_cgroup(cg)?;
        }
        if self.cfg.lb == ServiceLb::Ebpf {
            // The tc programs serve published ports: no rules of an IPVS-mode agent may
            // take them first.
            ipvs::ingress::remove_host_rules();
        }
        // Published ports answer on every address of the node.
        let host_addrs: BTreeSet<u32> = plumbing::local_ipv4_addrs(&h)
            .await?
            .into_iter()
            .map(be)
            .collect();
        dp.sync_host_addrs(&host_addrs)?;
        // What the routing mesh knows of the ingress network stays until the view says
        // otherwise (a restarted agent keeps serving published ports).
        let old = dp.node();
        dp.set_node(NodeConfig {
            addr: be(addr),
            vxlan_ifindex: vxlan,
            uplink_ifindex,
            snat_port_min: SNAT_PORTS.0,
            snat_port_max: SNAT_PORTS.1,
            ready: 1,
            ingress_vni: old.ingress_vni,
            ingress_addr: old.ingress_addr,
            lo_ifindex: lo,
        })?;
        // Interfaces of tasks that are gone (their namespace was deleted while the agent was
        // away): their entries and pins go.
        for (ifindex, _) in dp.ifaces() {
            let mut links = h.link().get().match_index(ifindex).execute();
            if !matches!(
                futures::TryStreamExt::try_next(&mut links).await,
                Ok(Some(_))
            ) {
                dp.remove_iface(ifindex);
            }
        }
        for name in dp.pinned_links() {
            if plumbing::link_by_name(&h, &name).await?.is_none() {
                dp.detach_ingress(&name);
            }
        }
        self.lock().node = Some(NodeIdentity {
            id: node_id.to_string(),
            addr,
        });
        tracing::info!(%addr, uplink, vxlan_port, "data plane started");
        self.changed.notify_one();
        Ok(())
    }

    /// Gives the task its interfaces in `netns` (made, or found again after an agent
    /// restart). Waits for the managers' view to contain the task's networks.
    pub async fn attach(&self, task: &Task, netns: &Path) -> Result<(), NetworkError> {
        if task.networks.is_empty() {
            return Ok(());
        }
        let dp = self.dataplane()?.clone();
        let networks = self.wait_for_networks(task).await?;
        let specs = attachment_specs(task, &networks)?;
        let h = plumbing::handle()?;
        let cookie = plumbing::netns_cookie(netns).await?;
        let mut made = Vec::new();
        let result: Result<(), NetworkError> = async {
            for (spec, net) in &specs {
                let host = plumbing::attach(&h, netns, spec).await?;
                made.push(LocalAttachment {
                    host_name: spec.host_name.clone(),
                    ifindex: host.ifindex,
                });
                dp.set_iface(
                    host.ifindex,
                    Iface {
                        vni: net.vni,
                        addr: be(spec.addr),
                        flags: if net.internal { IFACE_INTERNAL } else { 0 },
                        mac: plumbing::task_mac(spec.addr),
                        host_mac: host.mac,
                        netns_cookie: cookie,
                    },
                )?;
                dp.attach_ingress(programs::FROM_CONTAINER, &spec.host_name)?;
            }
            Ok(())
        }
        .await;
        let result = match (result, &self.dns) {
            (Ok(()), Some(d)) => {
                let nets: Vec<String> =
                    task.networks.iter().map(|a| a.network_id.clone()).collect();
                match d.serve_task(&task.id, netns, nets).await {
                    // IPVS mode: nft rules in the namespace lead to it (see `sync_ipvs`).
                    Ok(t) if self.cfg.lb == ServiceLb::Ipvs => Ok(Some(Arc::new(t))),
                    Ok(t) => {
                        let ports = swarm_ebpf_common::DnsPorts {
                            udp: t.udp_port.to_be(),
                            tcp: t.tcp_port.to_be(),
                        };
                        dp.set_dns_ports(cookie, ports)
                            .map(|()| Some(Arc::new(t)))
                            .map_err(NetworkError::from)
                    }
                    Err(e) => Err(NetworkError::Dns(e)),
                }
            }
            (r, _) => r.map(|()| None),
        };
        let (result, task_dns) = match result {
            Ok(d) => (Ok(()), d),
            Err(e) => (Err(e), None),
        };
        self.lock().tasks.insert(
            task.id.clone(),
            TaskRecord {
                attachments: made,
                netns: netns.to_path_buf(),
                vnis: specs.iter().map(|(_, n)| n.vni).collect(),
                netns_cookie: cookie,
                dns: task_dns,
                networks: task.networks.iter().map(|a| a.network_id.clone()).collect(),
                ipvs_applied: None,
            },
        );
        if let Err(e) = result {
            self.detach(&task.id).await;
            return Err(e);
        }
        self.reconcile();
        if let Err(e) = self.sync_ipvs(Some(&task.id)).await {
            self.detach(&task.id).await;
            return Err(e);
        }
        Ok(())
    }

    /// IPVS mode: brings every local task's namespace to the table the view asks for (see
    /// [`ipvs::sandbox`]), where it changed since it was last programmed. An error for the
    /// task `must` is returned (its start fails); the others are logged and tried again at
    /// the next pass.
    async fn sync_ipvs(&self, must: Option<&str>) -> Result<(), NetworkError> {
        if self.cfg.lb != ServiceLb::Ipvs {
            return Ok(());
        }
        let view = self.view.current();
        if !view.complete {
            return Ok(());
        }
        let jobs: Vec<_> = {
            let mut st = self.lock();
            let State {
                tasks, vip_marks, ..
            } = &mut *st;
            tasks
                .iter()
                .filter_map(|(id, rec)| {
                    let want = ipvs::table::desired_table(&view, &rec.networks, vip_marks);
                    (rec.ipvs_applied.as_ref() != Some(&want)).then(|| {
                        let dns = rec.dns.as_ref().map(|d| ipvs::sandbox::DnsPorts {
                            udp: d.udp_port,
                            tcp: d.tcp_port,
                        });
                        let first = rec.ipvs_applied.is_none();
                        (id.clone(), rec.netns.clone(), want, dns, first)
                    })
                })
                .collect()
        };
        let mut out = Ok(());
        for (id, netns, want, dns, first) in jobs {
            match ipvs::sandbox::program(&netns, want.clone(), dns, first).await {
                Ok(r) => {
                    tracing::debug!(task = %id, ?r, "IPVS table synced");
                    if let Some(rec) = self.lock().tasks.get_mut(&id) {
                        rec.ipvs_applied = Some(want);
                    }
                }
                Err(e) if must == Some(id.as_str()) => out = Err(NetworkError::Plumbing(e)),
                Err(e) => tracing::warn!(task = %id, "programming IPVS: {e}"),
            }
        }
        out
    }

    /// IPVS mode: the routing mesh ([`ipvs::ingress`]). Makes the ingress sandbox once the
    /// view names the ingress network and this node's address on it, then programs the
    /// sandbox and the node whenever the published ports or their tasks changed. Failures are
    /// logged and tried again at the next pass.
    async fn sync_ingress(&self) {
        if self.cfg.lb != ServiceLb::Ipvs {
            return;
        }
        let Some(node) = self.lock().node.clone() else {
            return;
        };
        let view = self.view.current();
        if !view.complete {
            return;
        }
        let (Some(net), Some(addr)) = (
            ingress_network(&view).cloned(),
            ingress_addr(&view, &node.id),
        ) else {
            return;
        };
        let Some(dir) = self.cfg.ingress_sbox_dir.clone() else {
            tracing::error!("IPVS mode without an ingress sandbox directory: published ports of ingress mode are not served");
            return;
        };
        let table = ipvs::ingress::desired_ingress(&view);
        let made = self.lock().ingress.clone().filter(|s| s.addr == addr);
        let sbox = match made {
            Some(s) => s,
            None => match self.make_ingress_sandbox(&dir, &net, addr).await {
                Ok(netns) => {
                    tracing::info!(%addr, netns = %netns.display(), "ingress sandbox ready");
                    // Its interface is a local endpoint now.
                    self.changed.notify_one();
                    let s = IngressSandbox {
                        netns,
                        addr,
                        applied: None,
                    };
                    self.lock().ingress = Some(s.clone());
                    s
                }
                Err(e) => {
                    tracing::warn!("making the ingress sandbox: {e}");
                    return;
                }
            },
        };
        if sbox.applied.as_ref() == Some(&table) {
            return;
        }
        for e in table.values().filter(|e| e.preserve) {
            tracing::warn!(
                service = %e.service,
                port = e.port,
                "source-ip=preserve is not kept by the IPVS data path's routing mesh (it masquerades, as Docker's does): the tasks see the ingress sandbox's address"
            );
        }
        let first = sbox.applied.is_none();
        match ipvs::ingress::program_sandbox(&sbox.netns, table.clone(), first).await {
            Ok(r) => tracing::debug!(?r, "ingress sandbox's IPVS synced"),
            Err(e) => {
                tracing::warn!("programming the ingress sandbox: {e}");
                return;
            }
        }
        if let Err(e) = ipvs::ingress::program_host(&table) {
            tracing::warn!("programming the node's ingress rules: {e}");
            return;
        }
        if let Some(s) = self.lock().ingress.as_mut() {
            s.applied = Some(table);
        }
    }

    /// The ingress sandbox (made, or found again after an agent restart): its interface on
    /// the ingress network at `addr`, plugged like a task's, and its link to the node.
    async fn make_ingress_sandbox(
        &self,
        dir: &Path,
        net: &NetworkInfo,
        addr: Ipv4Addr,
    ) -> Result<PathBuf, NetworkError> {
        use ipvs::ingress as ing;
        let dp = self.dataplane()?.clone();
        let netns = crate::netns::create(dir, INGRESS_SBOX)
            .map_err(|e| NetworkError::Plumbing(PlumbingError::Other(e.to_string())))?;
        let prefix_len = parse_cidr(&net.subnet).map_or(24, |(_, l)| l);
        let h = plumbing::handle()?;
        let spec = AttachmentSpec {
            host_name: ing::HOST_INGRESS_IF.into(),
            task_name: ing::SBOX_INGRESS_IF.into(),
            addr,
            prefix_len,
            mtu: if net.mtu == 0 { DEFAULT_MTU } else { net.mtu },
            gateway: None,
        };
        let host = plumbing::attach(&h, &netns, &spec).await?;
        let cookie = plumbing::netns_cookie(&netns).await?;
        dp.set_iface(
            host.ifindex,
            Iface {
                vni: net.vni,
                addr: be(addr),
                flags: 0,
                mac: plumbing::task_mac(addr),
                host_mac: host.mac,
                netns_cookie: cookie,
            },
        )?;
        dp.attach_ingress(programs::FROM_CONTAINER, ing::HOST_INGRESS_IF)?;
        let link = AttachmentSpec {
            host_name: ing::HOST_LINK_IF.into(),
            task_name: ing::SBOX_LINK_IF.into(),
            addr: ing::SBOX_ADDR,
            prefix_len: ing::LINK_PREFIX,
            mtu: 1500,
            gateway: Some(ing::HOST_ADDR),
        };
        let host = plumbing::attach(&h, &netns, &link).await?;
        plumbing::ensure_addr(&h, host.ifindex, ing::HOST_ADDR, ing::LINK_PREFIX).await?;
        Ok(netns)
    }

    async fn wait_for_networks(
        &self,
        task: &Task,
    ) -> Result<BTreeMap<String, NetworkInfo>, NetworkError> {
        let mut rx = self.view.subscribe();
        let deadline = tokio::time::Instant::now() + VIEW_WAIT;
        loop {
            let missing = {
                let v = rx.borrow_and_update();
                let missing = task
                    .networks
                    .iter()
                    .find(|a| !v.networks.contains_key(&a.network_id))
                    .map(|a| a.network_name.clone());
                if missing.is_none() {
                    return Ok(v.networks.clone());
                }
                missing
            };
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(NetworkError::UnknownNetwork(missing.unwrap_or_default())),
            }
        }
    }

    /// Takes the task's interfaces away: its endpoints leave the maps at once; the veths are
    /// deleted (they go with the namespace too).
    pub async fn detach(&self, task_id: &str) {
        let rec = self.lock().tasks.remove(task_id);
        if let (Some(r), Ok(dp)) = (&rec, self.dataplane()) {
            if r.dns.is_some() {
                dp.remove_dns_ports(r.netns_cookie);
            }
        }
        let made = match rec {
            Some(rec) => rec.attachments,
            // Not attached by this agent (an earlier one did, and the task ended while it was
            // away): find its interfaces by name.
            None => self.find_attachments(task_id).await,
        };
        if made.is_empty() {
            return;
        }
        if let Ok(dp) = self.dataplane() {
            for a in &made {
                dp.remove_iface(a.ifindex);
                dp.detach_ingress(&a.host_name);
            }
        }
        let gone = self.reconcile();
        self.reset_flows(gone).await;
        let _ = self.sync_ipvs(None).await;
        if let Ok(h) = plumbing::handle() {
            for a in &made {
                if let Err(e) = plumbing::detach(&h, &a.host_name).await {
                    tracing::warn!(task = task_id, "{e}");
                }
            }
        }
    }

    /// The host-side interfaces of `task_id` that exist (by their names).
    async fn find_attachments(&self, task_id: &str) -> Vec<LocalAttachment> {
        let Ok(h) = plumbing::handle() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for n in 0..16 {
            let name = plumbing::host_name(task_id, n);
            if let Ok(Some(l)) = plumbing::link_by_name(&h, &name).await {
                out.push(LocalAttachment {
                    host_name: name,
                    ifindex: l.header.index,
                });
            }
        }
        out
    }

    /// Writes the maps from the current view and the local interfaces; returns the endpoints
    /// that left them.
    fn reconcile(&self) -> Vec<EndpointKey> {
        let Ok(dp) = self.dataplane() else {
            return Vec::new();
        };
        let Some(node) = self.lock().node.clone() else {
            return Vec::new();
        };
        let view = self.view.current();
        if !view.complete {
            return Vec::new();
        }
        let ifaces = dp.ifaces();
        let want = desired_endpoints(&view, &node.id, node.addr, &ifaces);
        let gone = match dp.sync_endpoints(&want) {
            Ok(gone) => gone,
            Err(e) => {
                tracing::warn!("updating the endpoint map: {e}");
                Vec::new()
            }
        };
        if let Err(e) = dp.sync_subnets(&desired_subnets(&view)) {
            tracing::warn!("updating the subnet map: {e}");
        }
        let vnis: BTreeSet<u32> = view.networks.values().map(|n| n.vni).collect();
        if let Err(e) = dp.sync_stats(&vnis) {
            tracing::warn!("updating the network counters: {e}");
        }
        if let Err(e) = dp.sync_netns_nets(&desired_netns_nets(&ifaces)) {
            tracing::warn!("updating the namespace scopes: {e}");
        }
        let services = {
            let mut st = self.lock();
            if !st.lb_adopted {
                st.lb_ids.adopt(&view, &dp.services());
                st.lb_adopted = true;
            }
            let mut services = desired_services(&view, &mut st.lb_ids);
            if self.cfg.lb == ServiceLb::Ipvs {
                // Tasks reach VIPs, and the ingress sandbox the published ports' tasks,
                // through IPVS.
                services.clear();
            }
            services
        };
        if let Err(e) = dp.sync_services(&services) {
            tracing::warn!("updating the service map: {e}");
        }
        self.reconcile_mesh(dp, &view, &node);
        gone
    }

    /// The routing mesh's part of the maps: the other nodes, the ingress network and this
    /// node's address on it, the published ports (written last: every map they lead to is
    /// in place by then). Warns once about published ports a process of the node listens
    /// on too: the mesh takes their packets.
    fn reconcile_mesh(&self, dp: &Dataplane, view: &NetworkView, node: &NodeIdentity) {
        if let Err(e) = dp.sync_peers(&desired_peers(view, node.addr)) {
            tracing::warn!("updating the peer map: {e}");
        }
        let mut cfg = dp.node();
        let vni = ingress_network(view).map_or(0, |n| n.vni);
        let addr = ingress_addr(view, &node.id).map_or(0, be);
        if cfg.ready != 0 && (cfg.ingress_vni != vni || cfg.ingress_addr != addr) {
            cfg.ingress_vni = vni;
            cfg.ingress_addr = addr;
            if let Err(e) = dp.set_node(cfg) {
                tracing::warn!("updating the node's ingress address: {e}");
            }
        }
        let mut published = desired_published(view, &node.id);
        if self.cfg.lb == ServiceLb::Ipvs {
            // Ingress-mode ports go through the ingress sandbox: the tc programs keep only
            // host-mode ones (no second path).
            published.retain(|_, (p, _)| p.flags & PUBLISHED_HOST != 0);
        }
        let want: BTreeMap<PublishedKey, Published> =
            published.iter().map(|(k, (p, _))| (*k, *p)).collect();
        let had = dp.published();
        if let Err(e) = dp.sync_published(&want) {
            tracing::warn!("updating the published ports: {e}");
        }
        // A port that is new here is checked at once; the rest every HOST_ADDRS_PERIOD.
        if want.keys().any(|k| !had.contains_key(k)) {
            self.check_shadowed(&published);
        }
    }

    /// Warns once about each published port a process of the node listens on too (the mesh
    /// takes its packets) and keeps them for the heartbeat (see [`Networking::port_conflicts`]).
    fn check_shadowed(&self, published: &BTreeMap<PublishedKey, (Published, String)>) {
        let listeners = host_listeners();
        let held: BTreeMap<PublishedKey, u64> = published
            .keys()
            .filter_map(|k| listeners.get(k).map(|i| (*k, *i)))
            .collect();
        let known = self.lock().shadowed.clone();
        // The owner is looked up once, when a port becomes shadowed (a walk of /proc).
        let fresh: BTreeSet<u64> = held
            .iter()
            .filter(|(k, _)| !known.contains_key(k))
            .map(|(_, i)| *i)
            .collect();
        let owners = socket_owners(&fresh);
        let shadowed: BTreeMap<PublishedKey, String> = held
            .iter()
            .map(|(k, i)| {
                let owner = known
                    .get(k)
                    .cloned()
                    .unwrap_or_else(|| owners.get(i).cloned().unwrap_or_default());
                (*k, owner)
            })
            .collect();
        for (k, owner) in shadowed.iter().filter(|(k, _)| !known.contains_key(k)) {
            let service = published.get(k).map_or("", |(_, n)| n.as_str());
            tracing::warn!(
                port = u16::from_be(k.port),
                protocol = if k.proto == 6 { "tcp" } else { "udp" },
                service,
                process = owner.as_str(),
                "a process of this node listens on a port the routing mesh publishes: the mesh answers it, the process gets none of its connections"
            );
        }
        self.lock().shadowed = shadowed;
    }

    /// The published ports a process of this node listens on too, for the managers
    /// (`Node.port_conflicts`, shown by `service ps`).
    pub fn port_conflicts(&self) -> Vec<proto::PortConflict> {
        self.lock()
            .shadowed
            .iter()
            .map(|(k, process)| proto::PortConflict {
                port: u32::from(u16::from_be(k.port)),
                protocol: if k.proto == 17 {
                    proto::PortProtocol::Udp as i32
                } else {
                    proto::PortProtocol::Tcp as i32
                },
                process: process.clone(),
            })
            .collect()
    }

    /// Resets the TCP connections local tasks still have to endpoints that are gone (see
    /// [`sockets`]).
    async fn reset_flows(&self, gone: Vec<EndpointKey>) {
        if gone.is_empty() {
            return;
        }
        let tasks: Vec<TaskRecord> = self.lock().tasks.values().cloned().collect();
        for t in tasks {
            let peers: BTreeSet<Ipv4Addr> = gone
                .iter()
                .filter(|k| t.vnis.contains(&k.vni))
                .map(|k| Ipv4Addr::from(k.addr.to_ne_bytes()))
                .collect();
            if peers.is_empty() {
                continue;
            }
            let r = plumbing::in_netns(&t.netns, move |_h| async move {
                sockets::reset_tcp_to(&peers).map_err(|e| PlumbingError::Io {
                    what: "resetting connections to ended tasks".into(),
                    source: e,
                })
            })
            .await;
            match r {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(netns = %t.netns.display(), n, "reset connections to ended tasks")
                }
                Err(e) => tracing::warn!(netns = %t.netns.display(), "{e}"),
            }
        }
    }

    /// Keeps the maps in line with the managers' view until the agent stops.
    pub async fn run(self: Arc<Self>) {
        let mut rx: watch::Receiver<Arc<NetworkView>> = self.view.subscribe();
        let mut addrs = tokio::time::interval(HOST_ADDRS_PERIOD);
        addrs.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let gone = self.reconcile();
            self.reset_flows(gone).await;
            let _ = self.sync_ipvs(None).await;
            self.sync_ingress().await;
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = self.changed.notified() => {}
                _ = addrs.tick() => self.refresh_host_addrs().await,
            }
        }
    }

    /// Published ports answer on the node's addresses as they are now (an address added or
    /// removed after the start is followed within [`HOST_ADDRS_PERIOD`]).
    async fn refresh_host_addrs(&self) {
        let (Ok(dp), Ok(h)) = (self.dataplane(), plumbing::handle()) else {
            return;
        };
        match plumbing::local_ipv4_addrs(&h).await {
            Ok(list) => {
                let want: BTreeSet<u32> = list.into_iter().map(be).collect();
                if let Err(e) = dp.sync_host_addrs(&want) {
                    tracing::warn!("updating the node's addresses: {e}");
                }
            }
            Err(e) => tracing::warn!("listing the node's addresses: {e}"),
        }
        let Some(id) = node_id_of(&self.lock()) else {
            return;
        };
        self.check_shadowed(&desired_published(&self.view.current(), &id));
    }
}

#[cfg(test)]
mod tests;
