//! The node's eBPF data plane, userspace side: loads the programs of `swarm-ebpf`, owns their
//! maps and attaches the programs to interfaces.
//!
//! Everything that must outlive the agent is pinned under one bpffs directory (`--bpf-root`):
//! the maps under `maps/` (the loader reuses them by name) and the TCX links under `links/`.
//! A restarted agent finds both: packets keep flowing while it is away, and on start it
//! atomically swaps its freshly loaded programs into the pinned links (`bpf_link_update`).
//!
//! Without TCX (kernels before 6.6, or `--tc-attach legacy`) the same programs are cls_bpf
//! filters on the interface's clsact qdisc, always at priority [`LEGACY_PRIORITY`] and handle
//! [`LEGACY_HANDLE`]. Such a filter holds its program without any process, so it keeps
//! forwarding while the agent is away; a restarted agent sends the filter again at the same
//! priority and handle without `NLM_F_CREATE`, which cls_bpf takes as a change of the filter in
//! place (the new program replaces the old one atomically, the filter is never absent). An
//! empty directory `links/tc-legacy-<iface>` marks each such filter (bpffs holds no files).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuHashMap, PerCpuValues};
use aya::programs::cgroup_skb::CgroupSkbAttachType;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{CgroupAttachMode, LinkOrder, ProgramError, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use swarm_ebpf_common::{
    maps, programs, stat, BackendKey, DnsPorts, Endpoint, EndpointKey, Iface, LbStats, LbStatsKey,
    NetStats, NetnsNet, NodeConfig, PortStats, Published, PublishedKey, Service, INLINE_BACKENDS,
};

/// Indexes of the per-published-port counters ([`Dataplane::port_stats`]).
pub use swarm_ebpf_common::port_stat;

pub use super::probe::TcAttach;

/// The priority of the agent's cls_bpf filters (`--tc-attach legacy`).
pub const LEGACY_PRIORITY: u16 = 1;
/// The handle of the agent's cls_bpf filters at [`LEGACY_PRIORITY`].
pub const LEGACY_HANDLE: TcHandle = TcHandle::new(0, 1);

/// The programs, built by build.rs (empty when built with AYA_BUILD_SKIP=1).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/swarm-ebpf"));

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("this swarm-agent was built without its eBPF programs (AYA_BUILD_SKIP): rebuild it without AYA_BUILD_SKIP to run tasks on networks")]
    NoPrograms,
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("loading the eBPF programs (pinned maps under {dir}): {}; if the maps were pinned by an incompatible agent version, remove {dir} (tasks lose connectivity until their agent re-adds them)", chain(.source.as_ref()))]
    Load {
        dir: PathBuf,
        source: Box<aya::EbpfError>,
    },
    #[error("eBPF program {name}: {}", chain(.source))]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error(
        "eBPF object has no {0}: the agent and its programs do not match; rebuild swarm-agent"
    )]
    Missing(&'static str),
    #[error("eBPF map {name}: {}", chain(.source))]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("attaching {program} to {iface}: {reason}")]
    Attach {
        program: &'static str,
        iface: String,
        reason: String,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DataplaneError + 'a {
    move |source| DataplaneError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// An error with its sources, for messages.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

struct Maps {
    node: Array<MapData, NodeConfig>,
    ifaces: BpfHashMap<MapData, u32, Iface>,
    endpoints: BpfHashMap<MapData, EndpointKey, Endpoint>,
    subnets: LpmTrie<MapData, [u8; 4], u32>,
    stats: PerCpuHashMap<MapData, u32, NetStats>,
    services: BpfHashMap<MapData, u32, Service>,
    backends: BpfHashMap<MapData, BackendKey, u32>,
    netns_nets: BpfHashMap<MapData, NetnsNet, u32>,
    dns_ports: BpfHashMap<MapData, u64, DnsPorts>,
    lb_stats: PerCpuHashMap<MapData, LbStatsKey, LbStats>,
    svc_stats: aya::maps::PerCpuArray<MapData, LbStats>,
    published: BpfHashMap<MapData, PublishedKey, Published>,
    port_stats: PerCpuHashMap<MapData, PublishedKey, PortStats>,
    host_addrs: BpfHashMap<MapData, u32, u32>,
    peers: BpfHashMap<MapData, u32, u32>,
}

/// What this agent last wrote into the maps it alone writes, so that updates are diffs
/// against memory instead of walks over the maps. Read from the maps once at load.
#[derive(Default)]
struct Shadow {
    endpoints: BTreeMap<EndpointKey, Endpoint>,
    /// vip → (service, its backends in slot order)
    services: BTreeMap<u32, (Service, Vec<u32>)>,
    netns_nets: BTreeMap<NetnsNet, u32>,
    published: BTreeMap<PublishedKey, Published>,
}

/// One load-balanced VIP as the agent wants it.
pub type ServiceEntry = (Service, Vec<u32>);

struct Inner {
    ebpf: Ebpf,
    maps: Maps,
    shadow: Shadow,
}

/// The loaded data plane. Cheap calls, all synchronous (map updates are system calls).
pub struct Dataplane {
    dir: PathBuf,
    attach: TcAttach,
    inner: Mutex<Inner>,
}

/// The loaded tc program `program`.
fn tc_program<'a>(
    inner: &'a mut Inner,
    program: &'static str,
) -> Result<&'a mut SchedClassifier, DataplaneError> {
    inner
        .ebpf
        .program_mut(program)
        .ok_or(DataplaneError::Missing(program))?
        .try_into()
        .map_err(|source| DataplaneError::Program {
            name: program,
            source,
        })
}

/// Whether `path` is on a bpffs.
fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs with a valid NUL-terminated path and a zeroed out-struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Makes sure `dir` is on a bpffs: mounts one at /sys/fs/bpf when nothing is mounted there
/// (as Cilium does), then creates `dir`.
fn ensure_bpffs(dir: &Path) -> Result<(), DataplaneError> {
    let root = Path::new("/sys/fs/bpf");
    if dir.starts_with(root) && !is_bpffs(root) {
        std::fs::create_dir_all(root).map_err(io_err("creating", root))?;
        // SAFETY: valid NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(DataplaneError::Io {
                what: "mounting bpffs at",
                path: root.to_path_buf(),
                source: io::Error::last_os_error(),
            });
        }
    }
    std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    if !is_bpffs(dir) {
        return Err(DataplaneError::Io {
            what: "not on a bpffs (mount one with `mount -t bpf bpf /sys/fs/bpf`, or pick a --bpf-root under it):",
            path: dir.to_path_buf(),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        });
    }
    Ok(())
}

impl Dataplane {
    /// Loads the programs, reusing the maps pinned under `dir/maps` (creating them the first
    /// time); tc programs will attach as `attach` says.
    pub fn load(dir: &Path, attach: TcAttach) -> Result<Dataplane, DataplaneError> {
        if OBJECT.is_empty() {
            return Err(DataplaneError::NoPrograms);
        }
        let maps_dir = dir.join("maps");
        let links_dir = dir.join("links");
        ensure_bpffs(dir)?;
        std::fs::create_dir_all(&maps_dir).map_err(io_err("creating", &maps_dir))?;
        std::fs::create_dir_all(&links_dir).map_err(io_err("creating", &links_dir))?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            // A BTF map, which the object cannot mark pinned: pinned here like the others,
            // so a restarted agent keeps the entries of the sockets already open.
            .map_pin_path(maps::SOCK_LB, maps_dir.join(maps::SOCK_LB))
            .load(OBJECT)
            .map_err(|source| DataplaneError::Load {
                dir: maps_dir.clone(),
                source: Box::new(source),
            })?;
        for name in [
            programs::FROM_CONTAINER,
            programs::FROM_OVERLAY,
            programs::FROM_UPLINK,
            programs::FROM_HOST,
        ] {
            let p: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::Missing(name))?
                .try_into()
                .map_err(|source| DataplaneError::Program { name, source })?;
            p.load()
                .map_err(|source| DataplaneError::Program { name, source })?;
        }
        for name in programs::CGROUP {
            let prog = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::Missing(name))?;
            let loaded = match prog {
                aya::programs::Program::CgroupSockAddr(p) => p.load(),
                aya::programs::Program::CgroupSkb(p) => p.load(),
                aya::programs::Program::CgroupSock(p) => p.load(),
                _ => return Err(DataplaneError::Missing(name)),
            };
            loaded.map_err(|source| DataplaneError::Program { name, source })?;
        }
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(DataplaneError::Missing(name));
        let node = take(maps::NODE)?;
        let ifaces = take(maps::IFACES)?;
        let endpoints = take(maps::ENDPOINTS)?;
        let subnets = take(maps::SUBNETS)?;
        let stats = take(maps::NET_STATS)?;
        let services = take(maps::SERVICES)?;
        let backends = take(maps::BACKENDS)?;
        let netns_nets = take(maps::NETNS_NETS)?;
        let dns_ports = take(maps::DNS_PORTS)?;
        let lb_stats = take(maps::LB_STATS)?;
        let svc_stats = take(maps::SVC_STATS)?;
        let published = take(maps::PUBLISHED)?;
        let port_stats = take(maps::PORT_STATS)?;
        let host_addrs = take(maps::HOST_ADDRS)?;
        let peers = take(maps::PEERS)?;
        let maps = Maps {
            node: Array::try_from(node).map_err(map_err(maps::NODE))?,
            ifaces: BpfHashMap::try_from(ifaces).map_err(map_err(maps::IFACES))?,
            endpoints: BpfHashMap::try_from(endpoints).map_err(map_err(maps::ENDPOINTS))?,
            subnets: LpmTrie::try_from(subnets).map_err(map_err(maps::SUBNETS))?,
            stats: PerCpuHashMap::try_from(stats).map_err(map_err(maps::NET_STATS))?,
            services: BpfHashMap::try_from(services).map_err(map_err(maps::SERVICES))?,
            backends: BpfHashMap::try_from(backends).map_err(map_err(maps::BACKENDS))?,
            netns_nets: BpfHashMap::try_from(netns_nets).map_err(map_err(maps::NETNS_NETS))?,
            dns_ports: BpfHashMap::try_from(dns_ports).map_err(map_err(maps::DNS_PORTS))?,
            lb_stats: PerCpuHashMap::try_from(lb_stats).map_err(map_err(maps::LB_STATS))?,
            svc_stats: aya::maps::PerCpuArray::try_from(svc_stats)
                .map_err(map_err(maps::SVC_STATS))?,
            published: BpfHashMap::try_from(published).map_err(map_err(maps::PUBLISHED))?,
            port_stats: PerCpuHashMap::try_from(port_stats).map_err(map_err(maps::PORT_STATS))?,
            host_addrs: BpfHashMap::try_from(host_addrs).map_err(map_err(maps::HOST_ADDRS))?,
            peers: BpfHashMap::try_from(peers).map_err(map_err(maps::PEERS))?,
        };
        // What an earlier agent left in the maps.
        let backends_now: BTreeMap<BackendKey, u32> = maps.backends.iter().flatten().collect();
        let shadow = Shadow {
            endpoints: maps.endpoints.iter().flatten().collect(),
            services: maps
                .services
                .iter()
                .flatten()
                .map(|(vip, svc)| {
                    let list = (0..svc.count)
                        .filter_map(|slot| match svc.backends.get(slot as usize) {
                            Some(addr) => Some(*addr),
                            None => backends_now.get(&BackendKey { id: svc.id, slot }).copied(),
                        })
                        .collect();
                    (vip, (svc, list))
                })
                .collect(),
            netns_nets: maps.netns_nets.iter().flatten().collect(),
            published: maps.published.iter().flatten().collect(),
        };
        Ok(Dataplane {
            dir: dir.to_path_buf(),
            attach,
            inner: Mutex::new(Inner { ebpf, maps, shadow }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bpffs directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How tc programs attach.
    pub fn tc_attach(&self) -> TcAttach {
        self.attach
    }

    fn link_pin(&self, iface: &str) -> PathBuf {
        self.dir.join("links").join(format!("tc-ingress-{iface}"))
    }

    fn legacy_mark(&self, iface: &str) -> PathBuf {
        self.dir.join("links").join(format!("tc-legacy-{iface}"))
    }

    /// Attaches `program` to the tc ingress of `iface` (in the agent's network namespace):
    /// a pinned TCX link, or a clsact filter with `--tc-attach legacy`. What an earlier agent
    /// attached is taken over and its program swapped atomically: no packet goes unhandled.
    /// An attachment of the other kind left by an earlier agent (the mode changed) is removed
    /// once the new one is in place.
    pub fn attach_ingress(&self, program: &'static str, iface: &str) -> Result<(), DataplaneError> {
        match self.attach {
            TcAttach::Tcx => {
                self.attach_tcx(program, iface)?;
                self.remove_legacy_filter(iface);
            }
            TcAttach::Legacy => {
                self.attach_legacy(program, iface)?;
                self.unpin_tcx(iface);
            }
        }
        Ok(())
    }

    /// The clsact filter of `program` on `iface`, replaced in place when one is there.
    fn attach_legacy(&self, program: &'static str, iface: &str) -> Result<(), DataplaneError> {
        let attach_err = |reason: String| DataplaneError::Attach {
            program,
            iface: iface.to_string(),
            reason,
        };
        let mut inner = self.lock();
        let prog = tc_program(&mut inner, program)?;
        // Already there on an interface of an earlier agent (EEXIST): fine.
        let _ = aya::programs::tc::qdisc_add_clsact(iface);
        let existing = SchedClassifierLink::attached(
            iface,
            TcAttachType::Ingress,
            LEGACY_PRIORITY,
            LEGACY_HANDLE,
            None,
        )
        .map_err(|e| attach_err(format!("no such interface: {e}")))?;
        let id = match prog.attach_to_link(existing) {
            Ok(id) => id,
            // No filter there yet (ENOENT without NLM_F_CREATE): a new one.
            Err(_) => prog
                .attach_with_options(
                    iface,
                    TcAttachType::Ingress,
                    TcAttachOptions::Netlink(NlOptions {
                        priority: LEGACY_PRIORITY,
                        handle: LEGACY_HANDLE,
                        ..Default::default()
                    }),
                )
                .map_err(|e| {
                    attach_err(format!(
                        "{} (a clsact qdisc and cls_bpf are needed: `tc qdisc add dev {iface} clsact`)",
                        chain(&e)
                    ))
                })?,
        };
        let link = prog.take_link(id).map_err(|e| attach_err(chain(&e)))?;
        // The filter outlives this agent: dropping the link would delete it.
        std::mem::forget(link);
        let mark = self.legacy_mark(iface);
        std::fs::create_dir_all(&mark).map_err(io_err("marking a tc filter at", &mark))?;
        Ok(())
    }

    /// Deletes the agent's clsact filter on `iface`, if it has one.
    fn remove_legacy_filter(&self, iface: &str) {
        let mark = self.legacy_mark(iface);
        if !mark.exists() {
            return;
        }
        if let Ok(link) = SchedClassifierLink::attached(
            iface,
            TcAttachType::Ingress,
            LEGACY_PRIORITY,
            LEGACY_HANDLE,
            None,
        ) {
            // Dropping the link deletes the filter.
            drop(link);
        }
        let _ = std::fs::remove_dir(&mark);
    }

    /// Releases the agent's pinned TCX link on `iface`, if it has one.
    fn unpin_tcx(&self, iface: &str) {
        let pin = self.link_pin(iface);
        if let Ok(p) = PinnedLink::from_pin(&pin) {
            let _ = p.unpin();
        }
        let _ = std::fs::remove_file(&pin);
    }

    /// The pinned TCX link of `program` on `iface`.
    fn attach_tcx(&self, program: &'static str, iface: &str) -> Result<(), DataplaneError> {
        let attach_err = |reason: String| DataplaneError::Attach {
            program,
            iface: iface.to_string(),
            reason,
        };
        let pin = self.link_pin(iface);
        let mut inner = self.lock();
        let prog = tc_program(&mut inner, program)?;
        let old = match PinnedLink::from_pin(&pin) {
            Ok(p) => p.unpin().ok(),
            Err(_) => None,
        };
        let id = match old {
            Some(fd) => {
                let link = SchedClassifierLink::try_from(fd)
                    .map_err(|e| attach_err(format!("the pinned link is not a tc link: {e}")))?;
                match prog.attach_to_link(link) {
                    Ok(id) => id,
                    // The interface the old link was on is gone (same name, new device).
                    Err(_) => prog
                        .attach_with_options(
                            iface,
                            TcAttachType::Ingress,
                            TcAttachOptions::TcxOrder(LinkOrder::first()),
                        )
                        .map_err(|e| attach_err(chain(&e)))?,
                }
            }
            None => prog
                .attach_with_options(
                    iface,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::first()),
                )
                .map_err(|e| attach_err(chain(&e)))?,
        };
        let link = prog.take_link(id).map_err(|e| attach_err(chain(&e)))?;
        let fd: FdLink = link
            .try_into()
            .map_err(|e: aya::programs::links::LinkError| attach_err(chain(&e)))?;
        let _ = std::fs::remove_file(&pin);
        fd.pin(&pin)
            .map_err(|e| attach_err(format!("pinning the link at {}: {e}", pin.display())))?;
        Ok(())
    }

    /// Detaches whatever this agent attached to `iface` (removing the pin releases the link;
    /// a clsact filter is deleted).
    pub fn detach_ingress(&self, iface: &str) {
        self.unpin_tcx(iface);
        self.remove_legacy_filter(iface);
    }

    /// Names of the interfaces with a pinned link or a marked clsact filter.
    pub fn pinned_links(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.dir.join("links"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name().to_str().and_then(|n| {
                    n.strip_prefix("tc-ingress-")
                        .or_else(|| n.strip_prefix("tc-legacy-"))
                        .map(str::to_string)
                })
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    pub fn node(&self) -> NodeConfig {
        self.lock().maps.node.get(&0, 0).unwrap_or_default()
    }

    pub fn set_node(&self, cfg: NodeConfig) -> Result<(), DataplaneError> {
        self.lock()
            .maps
            .node
            .set(0, cfg, 0)
            .map_err(map_err(maps::NODE))
    }

    pub fn ifaces(&self) -> BTreeMap<u32, Iface> {
        let inner = self.lock();
        inner.maps.ifaces.iter().flatten().collect()
    }

    pub fn set_iface(&self, ifindex: u32, iface: Iface) -> Result<(), DataplaneError> {
        self.lock()
            .maps
            .ifaces
            .insert(ifindex, iface, 0)
            .map_err(map_err(maps::IFACES))
    }

    pub fn remove_iface(&self, ifindex: u32) {
        let _ = self.lock().maps.ifaces.remove(&ifindex);
    }

    /// What ENDPOINTS holds (as this agent wrote it).
    pub fn endpoints(&self) -> BTreeMap<EndpointKey, Endpoint> {
        self.lock().shadow.endpoints.clone()
    }

    /// Brings ENDPOINTS to `want`: inserts what is missing or different, removes the rest.
    /// Returns the keys removed.
    pub fn sync_endpoints(
        &self,
        want: &BTreeMap<EndpointKey, Endpoint>,
    ) -> Result<Vec<EndpointKey>, DataplaneError> {
        let inner = &mut *self.lock();
        for (k, v) in want {
            if inner.shadow.endpoints.get(k) != Some(v) {
                inner
                    .maps
                    .endpoints
                    .insert(k, v, 0)
                    .map_err(map_err(maps::ENDPOINTS))?;
                inner.shadow.endpoints.insert(*k, *v);
            }
        }
        let gone: Vec<EndpointKey> = inner
            .shadow
            .endpoints
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        for k in &gone {
            let _ = inner.maps.endpoints.remove(k);
            inner.shadow.endpoints.remove(k);
        }
        Ok(gone)
    }

    /// The load-balanced VIPs as this agent last wrote them (vip → service, backends).
    pub fn services(&self) -> BTreeMap<u32, ServiceEntry> {
        self.lock().shadow.services.clone()
    }

    /// How many load-balanced VIPs the maps hold (as this agent wrote them).
    pub fn service_count(&self) -> usize {
        self.lock().shadow.services.len()
    }

    /// Brings SERVICES and BACKENDS to `want` (each entry's `id` and `vni`, and its
    /// backends in slot order). A VIP's value, with its first [`INLINE_BACKENDS`] backends
    /// and its count, is replaced whole; the backends past those (in BACKENDS) are written
    /// before it and removed only after it, so a connect in between always finds a valid
    /// backend.
    pub fn sync_services(&self, want: &BTreeMap<u32, ServiceEntry>) -> Result<(), DataplaneError> {
        let inner = &mut *self.lock();
        let cpus = aya::util::nr_cpus().unwrap_or(1);
        for (vip, (svc, list)) in want {
            let old = inner.shadow.services.get(vip).cloned();
            let same_service = |o: &Service| o.id == svc.id && o.vni == svc.vni;
            if old
                .as_ref()
                .is_some_and(|(o, l)| same_service(o) && l == list)
            {
                continue;
            }
            if old.as_ref().is_none_or(|(o, _)| o.id != svc.id) {
                // A new owner of this id: its totals start at zero.
                if let Ok(zero) = PerCpuValues::try_from(vec![LbStats::default(); cpus]) {
                    let _ = inner.maps.svc_stats.set(svc.id, zero, 0);
                }
            }
            for (slot, addr) in list.iter().enumerate().skip(INLINE_BACKENDS) {
                let key = BackendKey {
                    id: svc.id,
                    slot: slot as u32,
                };
                let unchanged = old
                    .as_ref()
                    .is_some_and(|(o, l)| o.id == svc.id && l.get(slot) == Some(addr));
                if !unchanged {
                    inner
                        .maps
                        .backends
                        .insert(key, addr, 0)
                        .map_err(map_err(maps::BACKENDS))?;
                }
            }
            let mut entry = Service {
                id: svc.id,
                vni: svc.vni,
                count: list.len() as u32,
                // Each node starts its round robin at a random backend: with every position
                // at 0, the first connection through every node (the routing mesh: one
                // client's connections spread over the nodes) went to the same task.
                rr: rand::random::<u32>(),
                backends: [0; INLINE_BACKENDS],
            };
            for (b, addr) in entry.backends.iter_mut().zip(list) {
                *b = *addr;
            }
            inner
                .maps
                .services
                .insert(vip, entry, 0)
                .map_err(map_err(maps::SERVICES))?;
            if let Some((o, l)) = &old {
                let from = if o.id == svc.id { list.len() } else { 0 };
                for slot in from.max(INLINE_BACKENDS)..l.len() {
                    let _ = inner.maps.backends.remove(&BackendKey {
                        id: o.id,
                        slot: slot as u32,
                    });
                }
            }
            inner.shadow.services.insert(*vip, (entry, list.clone()));
        }
        let gone: Vec<u32> = inner
            .shadow
            .services
            .keys()
            .filter(|v| !want.contains_key(v))
            .copied()
            .collect();
        for vip in gone {
            let _ = inner.maps.services.remove(&vip);
            if let Some((o, l)) = inner.shadow.services.remove(&vip) {
                for slot in INLINE_BACKENDS..l.len() {
                    let _ = inner.maps.backends.remove(&BackendKey {
                        id: o.id,
                        slot: slot as u32,
                    });
                }
            }
        }
        Ok(())
    }

    /// Brings NETNS_NETS (which networks each local task's namespace may reach VIPs on) to
    /// `want`.
    pub fn sync_netns_nets(&self, want: &BTreeMap<NetnsNet, u32>) -> Result<(), DataplaneError> {
        let inner = &mut *self.lock();
        for (k, v) in want {
            if inner.shadow.netns_nets.get(k) != Some(v) {
                inner
                    .maps
                    .netns_nets
                    .insert(k, v, 0)
                    .map_err(map_err(maps::NETNS_NETS))?;
                inner.shadow.netns_nets.insert(*k, *v);
            }
        }
        let gone: Vec<NetnsNet> = inner
            .shadow
            .netns_nets
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        for k in gone {
            let _ = inner.maps.netns_nets.remove(&k);
            inner.shadow.netns_nets.remove(&k);
        }
        Ok(())
    }

    /// Where the resolver of the task with namespace `cookie` listens.
    pub fn set_dns_ports(&self, cookie: u64, ports: DnsPorts) -> Result<(), DataplaneError> {
        self.lock()
            .maps
            .dns_ports
            .insert(cookie, ports, 0)
            .map_err(map_err(maps::DNS_PORTS))
    }

    pub fn remove_dns_ports(&self, cookie: u64) {
        let _ = self.lock().maps.dns_ports.remove(&cookie);
    }

    /// The load-balancing counters, summed over the CPUs.
    /// Per backend `(id, backend address)`, and per service `(id, 0)` for the ids in use.
    pub fn lb_stats(&self) -> BTreeMap<LbStatsKey, LbStats> {
        let inner = self.lock();
        let sum = |per_cpu: &PerCpuValues<LbStats>| {
            let mut sum = LbStats::default();
            for s in per_cpu.iter() {
                sum.connections += s.connections;
                sum.packets += s.packets;
                sum.bytes += s.bytes;
            }
            sum
        };
        let mut out: BTreeMap<LbStatsKey, LbStats> = inner
            .maps
            .lb_stats
            .iter()
            .flatten()
            .map(|(k, per_cpu)| (k, sum(&per_cpu)))
            .collect();
        for (svc, _) in inner.shadow.services.values() {
            if let Ok(v) = inner.maps.svc_stats.get(&svc.id, 0) {
                out.insert(
                    LbStatsKey {
                        id: svc.id,
                        backend: 0,
                    },
                    sum(&v),
                );
            }
        }
        out
    }

    /// Attaches the socket hooks and counters to the cgroup directory `cgroup` (cgroup v2;
    /// every task's cgroup is below it) through pinned links (link attachments always allow
    /// several programs; the mode flag must be 0 for them, hence `Single`). Links of an
    /// earlier agent are replaced only after the new ones are in place, so no connect goes
    /// untranslated.
    pub fn attach_cgroup(&self, cgroup: &Path) -> Result<(), DataplaneError> {
        let dir = std::fs::File::open(cgroup).map_err(io_err("opening the cgroup", cgroup))?;
        let inner = &mut *self.lock();
        for name in programs::CGROUP {
            let pin = self.dir.join("links").join(format!("cgroup-{name}"));
            let old: Option<FdLink> = PinnedLink::from_pin(&pin).ok().and_then(|p| p.unpin().ok());
            let attach_err = |reason: String| DataplaneError::Attach {
                program: name,
                iface: cgroup.display().to_string(),
                reason,
            };
            let prog = inner
                .ebpf
                .program_mut(name)
                .ok_or(DataplaneError::Missing(name))?;
            // Attach, then take the link out of the program to pin it (the same three steps
            // for every cgroup program type; only the attach call differs).
            macro_rules! linked {
                ($p:expr, $attach:expr) => {{
                    let id = $attach.map_err(|e| attach_err(chain(&e)))?;
                    $p.take_link(id)
                        .map_err(|e| attach_err(chain(&e)))?
                        .try_into()
                        .map_err(|e: aya::programs::links::LinkError| attach_err(chain(&e)))?
                }};
            }
            let link: FdLink = match prog {
                aya::programs::Program::CgroupSockAddr(p) => {
                    linked!(p, p.attach(&dir, CgroupAttachMode::Single))
                }
                aya::programs::Program::CgroupSkb(p) => {
                    let kind = if name == programs::SKB_EGRESS {
                        CgroupSkbAttachType::Egress
                    } else {
                        CgroupSkbAttachType::Ingress
                    };
                    linked!(p, p.attach(&dir, kind, CgroupAttachMode::Single))
                }
                aya::programs::Program::CgroupSock(p) => {
                    linked!(p, p.attach(&dir, CgroupAttachMode::Single))
                }
                _ => return Err(DataplaneError::Missing(name)),
            };
            let _ = std::fs::remove_file(&pin);
            link.pin(&pin)
                .map_err(|e| attach_err(format!("pinning the link at {}: {e}", pin.display())))?;
            // Dropping the old link detaches the old program, now that the new one runs.
            drop(old);
        }
        Ok(())
    }

    /// The published ports as this agent last wrote them.
    pub fn published(&self) -> BTreeMap<PublishedKey, Published> {
        self.lock().shadow.published.clone()
    }

    /// Brings PUBLISHED to `want`; a port that appears gets its counters (from zero), one
    /// that goes loses them, so a port freed on the managers is closed here at once.
    pub fn sync_published(
        &self,
        want: &BTreeMap<PublishedKey, Published>,
    ) -> Result<(), DataplaneError> {
        let inner = &mut *self.lock();
        let cpus = aya::util::nr_cpus().unwrap_or(1);
        for (k, v) in want {
            let old = inner.shadow.published.get(k).copied();
            if old == Some(*v) {
                continue;
            }
            if old.is_none() {
                if let Ok(zero) = PerCpuValues::try_from(vec![PortStats::default(); cpus]) {
                    let _ = inner.maps.port_stats.insert(k, zero, 0);
                }
            }
            inner
                .maps
                .published
                .insert(k, v, 0)
                .map_err(map_err(maps::PUBLISHED))?;
            inner.shadow.published.insert(*k, *v);
        }
        let gone: Vec<PublishedKey> = inner
            .shadow
            .published
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        for k in gone {
            let _ = inner.maps.published.remove(&k);
            let _ = inner.maps.port_stats.remove(&k);
            inner.shadow.published.remove(&k);
        }
        Ok(())
    }

    /// The counters of every published port, summed over the CPUs.
    pub fn port_stats(&self) -> BTreeMap<PublishedKey, [u64; port_stat::COUNT]> {
        let inner = self.lock();
        inner
            .maps
            .port_stats
            .iter()
            .flatten()
            .map(|(k, per_cpu)| {
                let mut sum = [0u64; port_stat::COUNT];
                for s in per_cpu.iter() {
                    for (i, v) in s.c.iter().enumerate() {
                        sum[i] += v;
                    }
                }
                (k, sum)
            })
            .collect()
    }

    /// Brings a set-like map (address → 1) to `want`.
    fn sync_set(
        map: &mut BpfHashMap<MapData, u32, u32>,
        name: &'static str,
        want: &std::collections::BTreeSet<u32>,
    ) -> Result<(), DataplaneError> {
        let have: Vec<u32> = map.keys().flatten().collect();
        for a in want.iter().filter(|a| !have.contains(a)) {
            map.insert(a, 1, 0).map_err(map_err(name))?;
        }
        for a in have.iter().filter(|a| !want.contains(a)) {
            let _ = map.remove(a);
        }
        Ok(())
    }

    /// Brings HOST_ADDRS (the node's own addresses, where published ports answer) to `want`.
    pub fn sync_host_addrs(
        &self,
        want: &std::collections::BTreeSet<u32>,
    ) -> Result<(), DataplaneError> {
        Self::sync_set(&mut self.lock().maps.host_addrs, maps::HOST_ADDRS, want)
    }

    /// Brings PEERS (the other nodes' data-path addresses) to `want`.
    pub fn sync_peers(&self, want: &std::collections::BTreeSet<u32>) -> Result<(), DataplaneError> {
        Self::sync_set(&mut self.lock().maps.peers, maps::PEERS, want)
    }

    /// Brings SUBNETS to `want` (subnet address, prefix length → VNI).
    pub fn sync_subnets(&self, want: &BTreeMap<([u8; 4], u8), u32>) -> Result<(), DataplaneError> {
        let mut inner = self.lock();
        let have: BTreeMap<([u8; 4], u8), u32> = inner
            .maps
            .subnets
            .iter()
            .flatten()
            .map(|(k, v)| ((k.data(), k.prefix_len() as u8), v))
            .collect();
        for (&(addr, len), vni) in want {
            if have.get(&(addr, len)) != Some(vni) {
                inner
                    .maps
                    .subnets
                    .insert(&LpmKey::new(len as u32, addr), vni, 0)
                    .map_err(map_err(maps::SUBNETS))?;
            }
        }
        for &(addr, len) in have.keys().filter(|k| !want.contains_key(k)) {
            let _ = inner.maps.subnets.remove(&LpmKey::new(len as u32, addr));
        }
        Ok(())
    }

    /// Brings the set of counted networks to `vnis` (new ones start at zero).
    pub fn sync_stats(&self, vnis: &std::collections::BTreeSet<u32>) -> Result<(), DataplaneError> {
        let mut inner = self.lock();
        let have: Vec<u32> = inner.maps.stats.keys().flatten().collect();
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| DataplaneError::Io {
            what: "counting CPUs:",
            path: PathBuf::from(what),
            source: e,
        })?;
        for vni in vnis.iter().filter(|v| !have.contains(v)) {
            let zero = PerCpuValues::try_from(vec![NetStats::default(); cpus]).map_err(|e| {
                DataplaneError::Io {
                    what: "per-CPU values for",
                    path: PathBuf::from(maps::NET_STATS),
                    source: e,
                }
            })?;
            inner
                .maps
                .stats
                .insert(vni, zero, 0)
                .map_err(map_err(maps::NET_STATS))?;
        }
        for vni in have.iter().filter(|v| !vnis.contains(v)) {
            let _ = inner.maps.stats.remove(vni);
        }
        Ok(())
    }

    /// The counters of every counted network, summed over the CPUs.
    pub fn stats(&self) -> BTreeMap<u32, [u64; stat::COUNT]> {
        let inner = self.lock();
        inner
            .maps
            .stats
            .iter()
            .flatten()
            .map(|(vni, per_cpu)| {
                let mut sum = [0u64; stat::COUNT];
                for s in per_cpu.iter() {
                    for (i, v) in s.c.iter().enumerate() {
                        sum[i] += v;
                    }
                }
                (vni, sum)
            })
            .collect()
    }
}

/// Removes everything an agent pinned under `dir` (links first: unpinning them detaches the
/// programs). Used by `lab down` and tests; a running agent must not be using `dir`.
pub fn remove_pins(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    std::fs::remove_dir_all(dir)
}
