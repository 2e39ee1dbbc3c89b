//! The allocator (leader only): gives services their endpoint (published ports) and moves new
//! tasks from NEW to PENDING once everything they need is allocated.
//!
//! Endpoints: a service whose `endpoint` is missing while its spec publishes ports or needs
//! virtual IPs, whose allocated `endpoint.spec` differs from `spec.endpoint`, or whose VIPs
//! are not those it needs, gets `Service.endpoint = Endpoint { spec, ports, virtual_ips }`
//! written back with a version check:
//! - ingress ports with `published_port` 0 get a free port from 30000–32767 (free: not
//!   published in ingress mode by another service, for the same protocol); a port allocated
//!   before for the same target and protocol is kept across updates;
//! - explicit ingress ports must not be published by another service (same protocol), nor
//!   twice in the same spec; if they are, the endpoint stays unallocated and a warning is
//!   logged (the Control API is expected to reject such specs up front);
//! - host-mode ports are copied as they are (the node picks dynamic host ports);
//! - in endpoint mode vip (the default), one virtual IP per network the service is attached
//!   to (its spec's networks, in spec order, then the ingress network when it publishes ports
//!   in ingress mode), from that network's subnet, once the network is allocated. A VIP the
//!   service already holds on a network it stays on is kept (updates that do not change the
//!   networks keep every address). In dnsrr mode there are none. VIPs are derived state like
//!   task addresses: a service switched to dnsrr, detached from a network or removed simply
//!   no longer holds them, and [`Ipam::from_state`] counts only what services hold.
//!
//! A service whose endpoint cannot be allocated (no free VIP on a network, a published port
//! taken) keeps its tasks NEW with the reason in `status.err` ("virtual IP of service web:
//! no available IP addresses on network front: …"), shown by `service ps`.
//!
//! Tasks: observed NEW and desired ≤ RUNNING → PENDING ("pending task scheduling"), with the
//! service's current endpoint (ports and VIPs) copied into the task, once that endpoint is
//! allocated: a task never leaves NEW before its service's VIPs exist.
//!
//! Networks: a network without `allocation` gets a VNI, its `--subnet` (else the lowest free
//! subnet of the cluster's address pools) and its `--gateway` (else the subnet's first host)
//! from [`crate::ipam`]; the ingress network first, then by creation time. If that fails
//! (pool exhausted, overlapping subnet) the network stays unallocated and a warning is logged.
//!
//! Task addresses: a NEW task attached to networks (its spec's networks, plus the ingress
//! network when its service publishes ports in ingress mode) gets one address per network
//! (`Task.networks`) in the same write that moves it to PENDING. If a network has no free
//! address left the task stays NEW with `status.err` "no available IP addresses on network
//! NAME: …", shown by `service ps`. An address is free again as soon as the task holding it
//! reaches a terminal state or is deleted: the IPAM state is derived from the store on every
//! round that needs it (no hidden state, nothing to release explicitly). The only memory
//! between rounds ([`Memory`]) skips work that cannot succeed: nodes waiting for an
//! address on a full ingress network are tried again when one can have freed, or after 30 s.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proto::{
    Endpoint, EndpointMode, EndpointSpec, Network, NetworkAttachment, Node, PortConfig,
    PortProtocol, PublishMode, Service, Task, TaskState, TaskStatus, VirtualIp,
};

use crate::ipam::{net_name, Ipam};
use crate::orchestrator::reconciler::{run_reconciler, Plan};
use crate::store::{Object, Op, State, Store};

/// Range of dynamically published ports (Docker's).
pub const DYNAMIC_PORT_START: u32 = 30000;
pub const DYNAMIC_PORT_END: u32 = 32767;

pub const PENDING_MESSAGE: &str = "pending task scheduling";

pub struct Allocator {
    store: Store,
}

impl Allocator {
    pub fn new(store: Store) -> Self {
        Allocator { store }
    }

    pub async fn run(self) {
        // Each problem is logged once per service version.
        let mut warned: HashSet<(String, u64)> = HashSet::new();
        let mut memory = Memory::default();
        run_reconciler(
            self.store,
            "allocator",
            Duration::from_millis(10),
            move |state, now| {
                let (plan, problems) = reconcile_remembering(state, now, &mut memory);
                for p in problems {
                    if warned.insert((p.object_id.clone(), p.version)) {
                        tracing::warn!("{} {} not allocated: {}", p.kind, p.name, p.message);
                    }
                }
                if warned.len() > 10_000 {
                    warned.clear();
                }
                plan
            },
        )
        .await
    }
}

/// Why a service's endpoint or a network could not be allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// "service" (its endpoint) or "network".
    pub kind: &'static str,
    pub object_id: String,
    pub name: String,
    /// The object's version when the problem was seen.
    pub version: u64,
    pub message: String,
}

/// The endpoint spec the service asks for.
fn wanted_spec(svc: &Service) -> EndpointSpec {
    svc.spec
        .as_ref()
        .and_then(|s| s.endpoint.clone())
        .unwrap_or_default()
}

/// The ingress network (`swarm init` makes it), if there is one.
fn ingress_network(state: &State) -> Option<&Network> {
    state
        .networks()
        .find(|n| n.spec.as_ref().is_some_and(|s| s.ingress))
}

/// The allocated networks a service needs a VIP on, by id: none in dnsrr mode; else its
/// spec's networks (ids or names, spec order), then the ingress network when `want`
/// publishes ports in ingress mode. Networks not allocated yet are left out (the service
/// gets its VIP there once they are, before its tasks, which wait for the network too);
/// unknown networks are left out too (their tasks report them).
fn vip_networks(state: &State, svc: &Service, want: &EndpointSpec) -> Vec<String> {
    if want.mode == EndpointMode::Dnsrr as i32 {
        return Vec::new();
    }
    let mut out: Vec<String> = Vec::new();
    let mut add = |n: &Network| {
        if n.allocation.is_some() && !out.contains(&n.id) {
            out.push(n.id.clone());
        }
    };
    for a in svc
        .spec
        .iter()
        .filter_map(|s| s.task.as_ref())
        .flat_map(|t| t.networks.iter())
    {
        if let Some(n) = state
            .network(&a.target)
            .or_else(|| state.network_by_name(&a.target))
        {
            add(n);
        }
    }
    if want.ports.iter().any(is_ingress) {
        if let Some(n) = ingress_network(state) {
            add(n);
        }
    }
    out
}

/// The service's endpoint matches its spec and holds the VIPs it needs (nothing to
/// allocate).
pub fn endpoint_ready(state: &State, svc: &Service) -> bool {
    let want = wanted_spec(svc);
    let vips = vip_networks(state, svc, &want);
    match &svc.endpoint {
        None => want.ports.is_empty() && vips.is_empty(),
        Some(e) => {
            e.spec.clone().unwrap_or_default() == want
                && e.virtual_ips.iter().map(|v| &v.network_id).eq(vips.iter())
        }
    }
}

/// One VIP per network of `nets`: the one the service holds there when it has one, else a
/// new address. All or nothing: on failure what this call took is given back.
fn allocate_vips(
    svc: &Service,
    nets: &[String],
    ipam: &mut Ipam,
) -> Result<Vec<VirtualIp>, String> {
    let held = svc
        .endpoint
        .iter()
        .flat_map(|e| e.virtual_ips.iter())
        .filter(|v| !v.addr.is_empty());
    let mut out = Vec::new();
    let mut taken: Vec<(String, String)> = Vec::new();
    for id in nets {
        if let Some(v) = held.clone().find(|v| v.network_id == *id) {
            out.push(v.clone());
            continue;
        }
        match ipam.allocate_address(id) {
            Ok(addr) => {
                taken.push((id.clone(), addr.clone()));
                out.push(VirtualIp {
                    network_id: id.clone(),
                    addr,
                });
            }
            Err(e) => {
                for (net, addr) in &taken {
                    ipam.release_address(net, addr);
                }
                return Err(format!("virtual IP of service {}: {e}", svc.name()));
            }
        }
    }
    Ok(out)
}

fn is_ingress(p: &PortConfig) -> bool {
    p.publish_mode == PublishMode::Ingress as i32
}

fn proto_name(p: i32) -> &'static str {
    match PortProtocol::try_from(p) {
        Ok(PortProtocol::Udp) => "udp",
        Ok(PortProtocol::Sctp) => "sctp",
        _ => "tcp",
    }
}

/// (protocol, published port) → owning service id.
type PortMap = HashMap<(i32, u32), String>;

/// The addresses in use, rebuilt from the store (a pass over every task: counted in
/// `swarm_allocator_ipam_rebuilds` and [`Memory::view_builds`]).
fn address_view(state: &State, view_builds: &mut u64) -> Ipam {
    crate::metrics::METRICS.allocator_ipam_rebuilds.inc();
    *view_builds += 1;
    Ipam::from_state(state)
}

/// What the allocator carries from one round to the next (only to skip work that cannot
/// succeed; every round still derives what it writes from the store alone).
#[derive(Debug, Default)]
pub struct Memory {
    /// The ingress network had no address left for a node at these versions.
    ingress_full: Option<IngressFull>,
    /// Rounds that rebuilt the address view from the store.
    pub view_builds: u64,
}

/// When a node could not get an address on the ingress network: what could free one (a
/// task on the network ending or removed, a node holding an address removed, the network
/// replaced) changes these. Until then, or [`INGRESS_RETRY_MS`], the nodes waiting for an
/// address are not tried again: a try rebuilds the address view from every task in the
/// store, and with more nodes than the ingress subnet holds (253 in Docker's default /24)
/// that happened on every applied entry.
#[derive(Debug, PartialEq, Eq)]
struct IngressFull {
    network_id: String,
    network_version: u64,
    tasks_version: u64,
    /// Nodes holding an address on it once the round's writes are applied.
    held: usize,
    at_ms: i64,
    /// The error the last try got.
    error: String,
}

/// How long a full ingress network goes untried when nothing seems to have changed.
const INGRESS_RETRY_MS: i64 = 30_000;

impl IngressFull {
    fn new(state: &State, ingress: &Network, held: usize, now_ms: i64, error: String) -> Self {
        IngressFull {
            network_id: ingress.id.clone(),
            network_version: ingress.meta.as_ref().map_or(0, |m| m.version),
            tasks_version: state.network_tasks_version(&ingress.id),
            held,
            at_ms: now_ms,
            error,
        }
    }

    /// Nothing that could free an address changed since, and the retry time is not up.
    fn still(&self, state: &State, ingress: &Network, held: usize, now_ms: i64) -> bool {
        let now = IngressFull::new(state, ingress, held, self.at_ms, self.error.clone());
        *self == now && (self.at_ms..self.at_ms.saturating_add(INGRESS_RETRY_MS)).contains(&now_ms)
    }
}

/// What the allocator wants written for the current state, and the services it could not
/// allocate (one round, remembering nothing).
pub fn reconcile(state: &State, now_ms: i64) -> (Plan, Vec<Problem>) {
    reconcile_remembering(state, now_ms, &mut Memory::default())
}

/// [`reconcile`], skipping what `memory` says cannot succeed until the store changes.
pub fn reconcile_remembering(
    state: &State,
    now_ms: i64,
    memory: &mut Memory,
) -> (Plan, Vec<Problem>) {
    let mut plan = Plan::default();
    let mut problems = Vec::new();

    // Ingress ports in use (allocated endpoints) and explicitly requested (specs).
    let mut used: PortMap = HashMap::new();
    let mut requested: PortMap = HashMap::new();
    for svc in state.services() {
        for p in svc.endpoint.iter().flat_map(|e| e.ports.iter()) {
            if is_ingress(p) && p.published_port != 0 {
                used.insert((p.protocol, p.published_port), svc.id.clone());
            }
        }
        for p in wanted_spec(svc).ports.iter() {
            if is_ingress(p) && p.published_port != 0 {
                requested
                    .entry((p.protocol, p.published_port))
                    .or_insert_with(|| svc.id.clone());
            }
        }
    }

    // The overlay's own VXLAN port is never handed out (it may lie in the dynamic range when
    // the cluster was made with --data-path-port).
    let vxlan = state
        .cluster()
        .map(|c| c.vxlan_udp_port)
        .filter(|p| *p != 0)
        .unwrap_or(crate::ipam::DEFAULT_VXLAN_PORT);
    used.insert(
        (PortProtocol::Udp as i32, vxlan),
        "(the overlay's VXLAN port)".into(),
    );

    // The IPAM view is rebuilt from the store only when a round needs it.
    let mut ipam: Option<Ipam> = None;
    // Why a service's endpoint could not be allocated, by service id: shown on its tasks.
    let mut endpoint_errors: HashMap<String, String> = HashMap::new();
    for svc in state.services() {
        if endpoint_ready(state, svc) {
            continue;
        }
        let want = wanted_spec(svc);
        let nets = vip_networks(state, svc, &want);
        let allocated = allocate_ports(svc, &want, &used, &requested).and_then(|ports| {
            let vips = if nets.is_empty() {
                Vec::new()
            } else {
                let ipam = ipam.get_or_insert_with(|| address_view(state, &mut memory.view_builds));
                allocate_vips(svc, &nets, ipam)?
            };
            Ok((ports, vips))
        });
        match allocated {
            Ok((ports, virtual_ips)) => {
                used.retain(|_, owner| *owner != svc.id);
                for p in ports.iter().filter(|p| is_ingress(p)) {
                    used.insert((p.protocol, p.published_port), svc.id.clone());
                }
                let mut s = svc.clone();
                s.endpoint = Some(Endpoint {
                    spec: Some(want),
                    ports,
                    virtual_ips,
                });
                plan.ops.push(Op::Update {
                    object: Object::Service(s),
                    check_version: true,
                });
            }
            Err(message) => {
                endpoint_errors.insert(svc.id.clone(), message.clone());
                problems.push(Problem {
                    kind: "service",
                    object_id: svc.id.clone(),
                    name: svc.name().to_string(),
                    version: svc.meta.as_ref().map_or(0, |m| m.version),
                    message,
                })
            }
        }
    }

    // Tasks to move on, with the networks they attach to.
    let mut candidates: Vec<(&Task, &Service, Vec<String>)> = Vec::new();
    for t in state.tasks_in_state(TaskState::New) {
        if t.desired_state > TaskState::Running as i32 {
            continue; // never to run: the task reaper removes it
        }
        let Some(svc) = state.service(&t.service_id) else {
            continue; // service deleted: the task reaper removes it
        };
        if let Some(err) = endpoint_errors.get(&svc.id) {
            // Not a silent stall: the task says why it does not move on.
            if let Some(op) = new_task_error(t, err, "allocating the service endpoint", now_ms) {
                plan.ops.push(op);
            }
            continue;
        }
        if !endpoint_ready(state, svc) {
            continue; // allocated in this round: the task moves on in the next one
        }
        candidates.push((t, svc, wanted_networks(state, t, svc)));
    }

    // Networks and task addresses. The IPAM view is rebuilt only when there is work for it.
    let unallocated: Vec<&Network> = {
        let mut v: Vec<&Network> = state
            .networks()
            .filter(|n| n.allocation.is_none())
            .collect();
        v.sort_by_key(|n| {
            (
                !n.spec.as_ref().is_some_and(|s| s.ingress),
                n.meta.as_ref().map_or(0, |m| m.created_at),
                n.id.clone(),
            )
        });
        v
    };
    let needs_ipam =
        !unallocated.is_empty() || candidates.iter().any(|(_, _, nets)| !nets.is_empty());
    if needs_ipam && ipam.is_none() {
        ipam = Some(address_view(state, &mut memory.view_builds));
    }
    // Networks allocated (empty) or not allocatable (why) in this round, by id.
    let mut network_errors: HashMap<String, String> = HashMap::new();
    if let Some(ipam) = ipam.as_mut() {
        for n in unallocated {
            match ipam.allocate_network(n) {
                Ok(a) => {
                    // Its tasks wait until the allocation is in the store.
                    network_errors.insert(n.id.clone(), String::new());
                    let mut n = n.clone();
                    n.allocation = Some(a);
                    plan.ops.push(Op::Update {
                        object: Object::Network(n),
                        check_version: true,
                    });
                }
                Err(e) => {
                    network_errors.insert(n.id.clone(), e.to_string());
                    problems.push(Problem {
                        kind: "network",
                        object_id: n.id.clone(),
                        name: n.spec.as_ref().map_or("", |s| s.name.as_str()).to_string(),
                        version: n.meta.as_ref().map_or(0, |m| m.version),
                        message: e.to_string(),
                    });
                }
            }
        }
    }

    // Every node's own address on the ingress network (Docker's `ingress-sbox`): the source
    // of routing-mesh connections that do not keep their client's address.
    let ingress = ingress_network(state)
        .filter(|n| n.allocation.is_some() && !network_errors.contains_key(&n.id));
    // Nodes holding an ingress address, counted in the same pass.
    let mut held_before = 0usize;
    let nodes: Vec<(&Node, Option<&NetworkAttachment>)> = state
        .nodes()
        .filter_map(|n| {
            let held = ingress.and_then(|i| node_ingress_attachment(n, &i.id));
            held_before += usize::from(held.is_some());
            let keep = usize::from(held.is_some());
            (n.attachments.len() != keep || (ingress.is_some() && held.is_none()))
                .then_some((n, held))
        })
        .collect();
    // Nodes still waiting for an ingress address when the last try found none left, and
    // nothing that could free one changed since: not tried this round.
    let still_full: Option<String> = ingress.and_then(|i| {
        let f = memory.ingress_full.as_ref()?;
        f.still(state, i, held_before, now_ms)
            .then(|| f.error.clone())
    });
    let waiting = nodes.iter().filter(|(_, held)| held.is_none()).count();
    let mut unaddressed = 0usize;
    let mut added = 0usize;
    let mut full_error: Option<String> = None;
    if ingress.is_some() && still_full.is_none() && waiting > 0 && ipam.is_none() {
        ipam = Some(address_view(state, &mut memory.view_builds));
    }
    for (n, held) in nodes {
        let attachments = match (ingress, held) {
            (None, _) => Vec::new(),
            (Some(_), Some(a)) => vec![a.clone()],
            (Some(i), None) => {
                let addr = match (&full_error, ipam.as_mut()) {
                    (None, Some(ipam)) => ipam.allocate_address(&i.id).map_err(|e| e.to_string()),
                    // No address left: the other nodes would fail the same way.
                    (Some(e), _) => Err(e.clone()),
                    // Not tried: still full (the view is built for nodes only otherwise).
                    (None, None) => Err(still_full.clone().unwrap_or_default()),
                };
                match addr {
                    Ok(addr) => {
                        added += 1;
                        vec![NetworkAttachment {
                            network_id: i.id.clone(),
                            network_name: net_name(i).into(),
                            addresses: vec![addr],
                            aliases: Vec::new(),
                        }]
                    }
                    Err(e) => {
                        full_error.get_or_insert(e);
                        unaddressed += 1;
                        continue;
                    }
                }
            }
        };
        plan.ops.push(Op::SetNodeAttachments {
            node_id: n.id.clone(),
            attachments,
        });
    }
    crate::metrics::METRICS
        .allocator_nodes_without_ingress_address
        .set(unaddressed as i64);
    memory.ingress_full = match (ingress, full_error) {
        (Some(i), Some(error)) => {
            problems.push(Problem {
                kind: "network",
                object_id: i.id.clone(),
                name: net_name(i).to_string(),
                version: i.meta.as_ref().map_or(0, |m| m.version),
                message: format!(
                    "{unaddressed} node(s) have no address on the ingress network ({error}), so the routing mesh cannot carry connections from those nodes to tasks on other nodes; give it a larger subnet: with no service publishing ports in ingress mode, `swarm network rm {name}` and `swarm network create --driver overlay --ingress --subnet 10.0.0.0/16 {name}`, or start the swarm with `swarm init --default-addr-pool-mask-length 16`",
                    name = net_name(i),
                ),
            });
            Some(IngressFull::new(
                state,
                i,
                held_before + added,
                now_ms,
                error,
            ))
        }
        _ => None,
    };

    for (t, svc, nets) in candidates {
        let attachments = if nets.is_empty() {
            Vec::new()
        } else {
            let Some(ipam) = ipam.as_mut() else { continue };
            match attach(state, ipam, t, &nets, &network_errors) {
                Attach::Ready(a) => a,
                Attach::Wait => continue,
                Attach::Failed(err) => {
                    if let Some(op) =
                        new_task_error(t, &err, "allocating network addresses", now_ms)
                    {
                        plan.ops.push(op);
                    }
                    continue;
                }
            }
        };
        let status = TaskStatus {
            timestamp: now_ms,
            state: TaskState::Pending as i32,
            message: PENDING_MESSAGE.into(),
            ..Default::default()
        };
        if t.endpoint == svc.endpoint && t.networks == attachments {
            plan.ops.push(Op::SetTaskStatus {
                task_id: t.id.clone(),
                status,
            });
        } else {
            // Created before the endpoint was (re)allocated: give it the current one, and
            // its network addresses.
            let mut t = t.clone();
            t.endpoint = svc.endpoint.clone();
            t.networks = attachments;
            t.status = Some(status);
            plan.ops.push(Op::Update {
                object: Object::Task(t),
                check_version: true,
            });
        }
    }
    (plan, problems)
}

/// The op that records why a NEW task does not move on, unless it already says so.
fn new_task_error(t: &Task, err: &str, message: &str, now_ms: i64) -> Option<Op> {
    let cur = t.status.as_ref().map_or("", |s| s.err.as_str());
    (cur != err).then(|| Op::SetTaskStatus {
        task_id: t.id.clone(),
        status: TaskStatus {
            timestamp: now_ms,
            state: TaskState::New as i32,
            message: message.into(),
            err: err.to_string(),
            ..Default::default()
        },
    })
}

/// The node's address on the ingress network `ingress_id`, when it holds one.
fn node_ingress_attachment<'a>(n: &'a Node, ingress_id: &str) -> Option<&'a NetworkAttachment> {
    n.attachments
        .iter()
        .find(|a| a.network_id == ingress_id && !a.addresses.is_empty())
}

/// The ids of the networks a task attaches to: its spec's (ids or names), then the ingress
/// network if its service publishes ports (in ingress mode, the mesh reaches the task there;
/// in host mode the node's published port leads to the task's address there). Unknown
/// targets are kept as they are (reported when attaching).
fn wanted_networks(state: &State, t: &Task, svc: &Service) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in t.spec.iter().flat_map(|s| s.networks.iter()) {
        let id = state
            .network(&a.target)
            .or_else(|| state.network_by_name(&a.target))
            .map_or_else(|| a.target.clone(), |n| n.id.clone());
        if !out.contains(&id) {
            out.push(id);
        }
    }
    let publishes = svc
        .endpoint
        .iter()
        .flat_map(|e| e.ports.iter())
        .any(|p| p.published_port != 0 || is_ingress(p));
    if publishes {
        if let Some(ingress) = ingress_network(state) {
            if !out.contains(&ingress.id) {
                out.push(ingress.id.clone());
            }
        }
    }
    out
}

enum Attach {
    Ready(Vec<NetworkAttachment>),
    /// A network is not allocated in the store yet (it will be in a later round).
    Wait,
    Failed(String),
}

/// Addresses for a task on `nets`: the ones it already holds when they are still valid, else
/// new ones. All or nothing: on failure what this call took is given back.
fn attach(
    state: &State,
    ipam: &mut Ipam,
    t: &Task,
    nets: &[String],
    network_errors: &HashMap<String, String>,
) -> Attach {
    let mut out: Vec<NetworkAttachment> = Vec::new();
    let mut taken: Vec<(String, String)> = Vec::new();
    let give_back = |ipam: &mut Ipam, taken: &[(String, String)]| {
        for (net, addr) in taken {
            ipam.release_address(net, addr);
        }
    };
    for id in nets {
        let Some(n) = state.network(id) else {
            give_back(ipam, &taken);
            return Attach::Failed(format!(
                "network {id} not found: create it with `swarm network create -d overlay {id}` or detach the service from it"
            ));
        };
        let name = n.spec.as_ref().map_or("", |s| s.name.as_str()).to_string();
        let allocated_now = network_errors.get(id);
        if !ipam.is_allocated(id) || allocated_now.is_some() {
            give_back(ipam, &taken);
            return match allocated_now.filter(|e| !e.is_empty()) {
                Some(e) => Attach::Failed(format!("network {name} is not allocated: {e}")),
                None => Attach::Wait,
            };
        }
        let aliases = t
            .spec
            .iter()
            .flat_map(|s| s.networks.iter())
            .find(|a| a.target == *id || a.target == name)
            .map(|a| a.aliases.clone())
            .unwrap_or_default();
        // Addresses the task already holds on this network (an earlier write that did not
        // move it on) are kept: from_state counted them as used.
        let held: Vec<String> = t
            .networks
            .iter()
            .filter(|a| a.network_id == *id)
            .flat_map(|a| a.addresses.iter().cloned())
            .collect();
        let addresses = if held.is_empty() {
            match ipam.allocate_address(id) {
                Ok(a) => {
                    taken.push((id.clone(), a.clone()));
                    vec![a]
                }
                Err(e) => {
                    give_back(ipam, &taken);
                    return Attach::Failed(e.to_string());
                }
            }
        } else {
            held
        };
        out.push(NetworkAttachment {
            network_id: id.clone(),
            network_name: name,
            addresses,
            aliases,
        });
    }
    Attach::Ready(out)
}

/// The allocated ports of `want`, in spec order.
fn allocate_ports(
    svc: &Service,
    want: &EndpointSpec,
    used: &PortMap,
    requested: &PortMap,
) -> Result<Vec<PortConfig>, String> {
    let taken_by_other = |key: &(i32, u32)| {
        used.get(key).is_some_and(|o| *o != svc.id)
            || requested.get(key).is_some_and(|o| *o != svc.id)
    };
    let mut mine: HashSet<(i32, u32)> = HashSet::new();
    for p in want
        .ports
        .iter()
        .filter(|p| is_ingress(p) && p.published_port != 0)
    {
        let key = (p.protocol, p.published_port);
        if let Some(owner) = used.get(&key).filter(|o| **o != svc.id) {
            return Err(format!(
                "published port {}/{} is already in use by service {owner}",
                p.published_port,
                proto_name(p.protocol)
            ));
        }
        if !mine.insert(key) {
            return Err(format!(
                "published port {}/{} is listed more than once",
                p.published_port,
                proto_name(p.protocol)
            ));
        }
    }

    // Dynamic ports this service had before, for the same target and protocol.
    let explicit_before: HashSet<(i32, u32)> = svc
        .endpoint
        .as_ref()
        .and_then(|e| e.spec.as_ref())
        .into_iter()
        .flat_map(|s| s.ports.iter())
        .filter(|p| is_ingress(p) && p.published_port != 0)
        .map(|p| (p.protocol, p.published_port))
        .collect();
    let mut previous: Vec<&PortConfig> = svc
        .endpoint
        .iter()
        .flat_map(|e| e.ports.iter())
        .filter(|p| {
            is_ingress(p)
                && (DYNAMIC_PORT_START..=DYNAMIC_PORT_END).contains(&p.published_port)
                && !explicit_before.contains(&(p.protocol, p.published_port))
        })
        .collect();

    let mut out: Vec<PortConfig> = want.ports.clone();
    let dynamic = |p: &PortConfig| is_ingress(p) && p.published_port == 0;
    // First keep previous ports, so that new ports cannot take them.
    let mut pending = Vec::new();
    for (i, p) in out.iter_mut().enumerate().filter(|(_, p)| dynamic(p)) {
        let reuse = previous.iter().position(|old| {
            let key = (old.protocol, old.published_port);
            old.target_port == p.target_port
                && old.protocol == p.protocol
                && !mine.contains(&key)
                && !taken_by_other(&key)
        });
        match reuse {
            Some(j) => {
                p.published_port = previous.remove(j).published_port;
                mine.insert((p.protocol, p.published_port));
            }
            None => pending.push(i),
        }
    }
    for i in pending {
        let p = &mut out[i];
        let free = (DYNAMIC_PORT_START..=DYNAMIC_PORT_END).find(|port| {
            let key = (p.protocol, *port);
            !mine.contains(&key) && !taken_by_other(&key)
        });
        let Some(port) = free else {
            return Err(format!(
                "no free published port left in {DYNAMIC_PORT_START}-{DYNAMIC_PORT_END}/{}",
                proto_name(p.protocol)
            ));
        };
        mine.insert((p.protocol, port));
        p.published_port = port;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::testutil::*;
    use proto::NodeState;

    fn port(target: u32, published: u32, mode: PublishMode) -> PortConfig {
        PortConfig {
            target_port: target,
            published_port: published,
            publish_mode: mode as i32,
            ..Default::default()
        }
    }

    fn with_ports(mut s: Service, ports: Vec<PortConfig>) -> Service {
        s.spec.as_mut().unwrap().endpoint = Some(EndpointSpec {
            ports,
            ..Default::default()
        });
        s
    }

    async fn round(store: &Store) -> Vec<Problem> {
        let (plan, problems) = reconcile(&store.read(), 1_000);
        apply(store, plan).await;
        problems
    }

    fn published(store: &Store, id: &str) -> Vec<u32> {
        store
            .read()
            .service(id)
            .unwrap()
            .endpoint
            .as_ref()
            .map(|e| e.ports.iter().map(|p| p.published_port).collect())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn new_tasks_become_pending() {
        let store = Store::memory();
        use TaskState::*;
        put(
            &store,
            vec![
                replicated("s", 2).into(),
                node("a", NodeState::Ready).into(),
                task("t1", "s", 1, "", New, Running).into(),
                task("t2", "s", 2, "", New, Ready).into(),
                task("t3", "s", 3, "", New, Shutdown).into(),
                task("t4", "gone", 1, "", New, Running).into(),
            ],
        )
        .await;
        assert!(round(&store).await.is_empty());
        let st = store.read();
        for id in ["t1", "t2"] {
            let t = st.task(id).unwrap();
            assert_eq!(t.state(), Pending, "{id}");
            assert_eq!(t.status.as_ref().unwrap().message, PENDING_MESSAGE);
        }
        assert_eq!(st.task("t3").unwrap().state(), New, "not wanted");
        assert_eq!(st.task("t4").unwrap().state(), New, "service gone");
        assert!(
            st.service("s").unwrap().endpoint.is_none(),
            "no ports, nothing to write"
        );
    }

    #[tokio::test]
    async fn dynamic_ports_come_from_the_range_and_tasks_wait_for_them() {
        let store = Store::memory();
        use TaskState::*;
        put(
            &store,
            vec![
                with_ports(
                    replicated("a", 1),
                    vec![
                        port(80, 0, PublishMode::Ingress),
                        port(443, 0, PublishMode::Ingress),
                    ],
                )
                .into(),
                with_ports(
                    replicated("b", 1),
                    vec![port(80, 30001, PublishMode::Ingress)],
                )
                .into(),
                with_ports(replicated("c", 1), vec![port(8080, 0, PublishMode::Host)]).into(),
                task("t1", "a", 1, "", New, Running).into(),
            ],
        )
        .await;
        let (plan, problems) = reconcile(&store.read(), 1_000);
        assert!(problems.is_empty());
        // The task waits: its service's endpoint is not allocated yet in this state.
        assert!(!plan
            .ops
            .iter()
            .any(|op| matches!(op, Op::SetTaskStatus { .. })));
        apply(&store, plan).await;
        // 30001 is requested by b explicitly, so a gets 30000 and 30002.
        assert_eq!(published(&store, "a"), vec![30000, 30002]);
        assert_eq!(published(&store, "b"), vec![30001]);
        assert_eq!(
            published(&store, "c"),
            vec![0],
            "host mode: left to the node"
        );

        round(&store).await;
        {
            let st = store.read();
            let t = st.task("t1").unwrap();
            assert_eq!(t.state(), Pending);
            assert_eq!(
                t.endpoint,
                st.service("a").unwrap().endpoint,
                "endpoint copied"
            );
        }
        assert!(reconcile(&store.read(), 2_000).0.is_empty(), "converged");

        // An update that adds a port keeps the existing dynamic ones.
        let mut a = store.read().service("a").unwrap().clone();
        a = with_ports(
            a,
            vec![
                port(9090, 0, PublishMode::Ingress),
                port(80, 0, PublishMode::Ingress),
                port(443, 0, PublishMode::Ingress),
            ],
        );
        store
            .write(vec![Op::Update {
                object: a.into(),
                check_version: true,
            }])
            .await
            .unwrap();
        round(&store).await;
        assert_eq!(published(&store, "a"), vec![30003, 30000, 30002]);
        for p in published(&store, "a") {
            assert!((DYNAMIC_PORT_START..=DYNAMIC_PORT_END).contains(&p));
        }
    }

    #[tokio::test]
    async fn explicit_port_clash_leaves_the_endpoint_unallocated() {
        let store = Store::memory();
        use TaskState::*;
        put(
            &store,
            vec![
                with_ports(
                    replicated("a", 1),
                    vec![port(80, 8080, PublishMode::Ingress)],
                )
                .into(),
                task("ta", "a", 1, "", New, Running).into(),
            ],
        )
        .await;
        round(&store).await;
        round(&store).await;
        assert_eq!(store.read().task("ta").unwrap().state(), Pending);
        put(
            &store,
            vec![
                with_ports(
                    replicated("b", 1),
                    vec![port(81, 8080, PublishMode::Ingress)],
                )
                .into(),
                task("tb", "b", 1, "", New, Running).into(),
            ],
        )
        .await;
        let problems = round(&store).await;
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].object_id, "b");
        assert_eq!(problems[0].kind, "service");
        assert!(
            problems[0].message.contains("8080/tcp"),
            "{}",
            problems[0].message
        );
        assert!(store.read().service("b").unwrap().endpoint.is_none());
        {
            let st = store.read();
            let tb = st.task("tb").unwrap();
            assert_eq!(tb.state(), New);
            let err = &tb.status.as_ref().unwrap().err;
            assert!(err.contains("8080/tcp is already in use"), "shown: {err}");
        }

        // The same port over UDP does not clash.
        let mut b = store.read().service("b").unwrap().clone();
        let mut p = port(81, 8080, PublishMode::Ingress);
        p.protocol = PortProtocol::Udp as i32;
        b = with_ports(b, vec![p]);
        store
            .write(vec![Op::Update {
                object: b.into(),
                check_version: true,
            }])
            .await
            .unwrap();
        assert!(round(&store).await.is_empty());
        assert_eq!(published(&store, "b"), vec![8080]);
    }

    #[test]
    fn range_exhaustion_is_reported() {
        let svc = with_ports(replicated("x", 1), vec![port(80, 0, PublishMode::Ingress)]);
        let used: PortMap = (DYNAMIC_PORT_START..=DYNAMIC_PORT_END)
            .map(|p| ((PortProtocol::Tcp as i32, p), "other".to_string()))
            .collect();
        let err = allocate_ports(&svc, &wanted_spec(&svc), &used, &HashMap::new()).unwrap_err();
        assert!(err.contains("30000-32767/tcp"), "{err}");
    }

    fn network(id: &str, name: &str, subnet: &str) -> proto::Network {
        proto::Network {
            id: id.into(),
            spec: Some(proto::NetworkSpec {
                name: name.into(),
                driver: "overlay".into(),
                ipam: if subnet.is_empty() {
                    vec![]
                } else {
                    vec![proto::IpamConfig {
                        subnet: subnet.into(),
                        gateway: String::new(),
                    }]
                },
                ingress: name == "ingress",
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn on_network(mut t: proto::Task, target: &str) -> proto::Task {
        t.spec
            .get_or_insert_with(Default::default)
            .networks
            .push(proto::NetworkAttachmentConfig {
                target: target.into(),
                aliases: vec!["web".into()],
            });
        t
    }

    fn addresses(store: &Store, id: &str) -> Vec<String> {
        store
            .read()
            .task(id)
            .unwrap()
            .networks
            .iter()
            .flat_map(|a| a.addresses.iter().cloned())
            .collect()
    }

    /// More nodes than the ingress subnet holds: one problem for the network (not one per
    /// node), and no rebuild of the address view on later rounds until something that
    /// could free an address changes; then a waiting node gets the freed address.
    #[tokio::test]
    async fn a_full_ingress_subnet_is_one_problem_retried_only_when_an_address_can_free() {
        let store = Store::memory();
        let mut objects: Vec<Object> = vec![network("ing", "ingress", "10.0.0.0/29").into()];
        for i in 0..8 {
            objects.push(node(&format!("n{i}"), NodeState::Ready).into());
        }
        put(&store, objects).await;
        let mut memory = Memory::default();
        async fn remembering(store: &Store, memory: &mut Memory) -> (usize, Vec<Problem>) {
            at(store, memory, 1_000).await
        }
        async fn at(store: &Store, memory: &mut Memory, now_ms: i64) -> (usize, Vec<Problem>) {
            let (plan, problems) = reconcile_remembering(&store.read(), now_ms, memory);
            let ops = plan.ops.len();
            apply(store, plan).await;
            (ops, problems)
        }
        let addressed = |store: &Store| -> Vec<String> {
            store
                .read()
                .nodes()
                .filter(|n| node_ingress_attachment(n, "ing").is_some())
                .map(|n| n.id.clone())
                .collect()
        };
        remembering(&store, &mut memory).await; // the network
        let (_, problems) = remembering(&store, &mut memory).await; // the nodes
        let held = addressed(&store);
        let k = held.len();
        assert!(k > 0 && k < 8, "a /29 holds some of 8 nodes: {held:?}");
        assert_eq!(problems.len(), 1, "{problems:?}");
        let p = &problems[0];
        assert_eq!((p.kind, p.name.as_str()), ("network", "ingress"));
        assert!(
            p.message
                .starts_with(&format!("{} node(s) have no address", 8 - k))
                && p.message.contains("10.0.0.0/29")
                && p.message.contains("--subnet"),
            "{}",
            p.message
        );

        // Nothing changed: not tried again, still reported.
        let builds = memory.view_builds;
        let (ops, problems) = remembering(&store, &mut memory).await;
        assert_eq!(ops, 0);
        assert_eq!(memory.view_builds, builds, "the address view was rebuilt");
        assert_eq!(problems.len(), 1);
        assert_eq!(addressed(&store), held);
        // Tried again after a while all the same.
        at(&store, &mut memory, 1_000 + INGRESS_RETRY_MS).await;
        assert_eq!(memory.view_builds, builds + 1);
        let builds = memory.view_builds;

        // A node with an address leaves: a waiting node gets its address.
        let gone = held[0].clone();
        let freed = store.read().node(&gone).unwrap().attachments[0]
            .addresses
            .clone();
        store
            .write(vec![Op::Delete {
                kind: crate::store::Kind::Node,
                id: gone.clone(),
            }])
            .await
            .unwrap();
        let (_, problems) = remembering(&store, &mut memory).await;
        assert!(memory.view_builds > builds);
        let now = addressed(&store);
        assert_eq!(now.len(), k, "{now:?}");
        let newcomer = now
            .iter()
            .find(|id| !held.contains(id))
            .expect("a new node");
        assert_eq!(
            store.read().node(newcomer).unwrap().attachments[0].addresses,
            freed
        );
        assert!(problems[0]
            .message
            .starts_with(&format!("{} node(s) have no address", 7 - k)));
    }

    #[tokio::test]
    async fn every_node_gets_an_ingress_address_kept_freed_and_moved_with_the_network() {
        let store = Store::memory();
        put(
            &store,
            vec![
                network("ing", "ingress", "").into(),
                node("a", NodeState::Ready).into(),
                node("b", NodeState::Down).into(),
            ],
        )
        .await;
        round(&store).await; // the network
        round(&store).await; // the nodes
        let held = |id: &str| -> Vec<String> {
            store
                .read()
                .node(id)
                .unwrap()
                .attachments
                .iter()
                .filter(|a| a.network_id == "ing")
                .flat_map(|a| a.addresses.clone())
                .collect()
        };
        let (a, b) = (held("a"), held("b"));
        assert_eq!((a.len(), b.len()), (1, 1), "{a:?} {b:?}");
        assert_ne!(a, b);
        assert!(
            a[0].starts_with("10.0.0.") && a[0].ends_with("/24"),
            "{a:?}"
        );
        assert_eq!(
            store.read().node("a").unwrap().attachments[0].network_name,
            "ingress"
        );
        // Kept across rounds; a task's address never lands on a node's.
        put(
            &store,
            vec![
                with_ports(
                    replicated("s", 1),
                    vec![port(80, 8080, PublishMode::Ingress)],
                )
                .into(),
                task("t1", "s", 1, "", TaskState::New, TaskState::Running).into(),
            ],
        )
        .await;
        for _ in 0..3 {
            round(&store).await;
        }
        assert_eq!(held("a"), a);
        let t = addresses(&store, "t1");
        assert_eq!(t.len(), 1);
        assert!(!a.contains(&t[0]) && !b.contains(&t[0]), "{t:?}");
        // Without an ingress network, nodes hold no ingress address.
        store
            .write(vec![Op::Delete {
                kind: crate::store::Kind::Network,
                id: "ing".into(),
            }])
            .await
            .unwrap();
        round(&store).await;
        assert!(store.read().node("a").unwrap().attachments.is_empty());
    }

    #[tokio::test]
    async fn networks_get_vni_subnet_and_tasks_get_addresses() {
        let store = Store::memory();
        use TaskState::*;
        put(
            &store,
            vec![
                network("ing", "ingress", "").into(),
                network("n1", "front", "").into(),
                network("n2", "back", "192.168.5.0/24").into(),
                replicated("s", 3).into(),
                on_network(task("t1", "s", 1, "", New, Running), "front").into(),
                on_network(task("t2", "s", 2, "", New, Running), "n1").into(),
                on_network(on_network(task("t3", "s", 3, "", New, Running), "n1"), "n2").into(),
            ],
        )
        .await;
        // Round 1 allocates the networks; the tasks wait for them.
        assert!(round(&store).await.is_empty());
        {
            let st = store.read();
            let a = |id: &str| st.network(id).unwrap().allocation.clone().unwrap();
            assert_eq!(
                a("ing").subnet,
                "10.0.0.0/24",
                "ingress gets the first subnet"
            );
            assert_eq!(a("ing").vni, crate::ipam::VNI_START);
            assert_eq!(a("n1").subnet, "10.0.1.0/24");
            assert_eq!(a("n1").gateway, "10.0.1.1");
            assert_eq!(a("n2").subnet, "192.168.5.0/24");
            assert_eq!(a("n2").gateway, "192.168.5.1");
            let vnis: HashSet<u32> = ["ing", "n1", "n2"].iter().map(|n| a(n).vni).collect();
            assert_eq!(vnis.len(), 3);
            assert_eq!(st.task("t1").unwrap().state(), New);
        }
        round(&store).await;
        let mut all = HashSet::new();
        for id in ["t1", "t2", "t3"] {
            let t = store.read().task(id).unwrap().clone();
            assert_eq!(t.state(), Pending, "{id}");
            assert_eq!(t.networks[0].network_id, "n1");
            assert_eq!(t.networks[0].network_name, "front");
            assert_eq!(t.networks[0].aliases, vec!["web".to_string()]);
            let addr = &t.networks[0].addresses[0];
            assert!(
                addr.starts_with("10.0.1.") && addr.ends_with("/24"),
                "{addr}"
            );
            assert_ne!(addr, "10.0.1.1/24", "not the gateway");
            assert!(all.insert(addr.clone()), "distinct: {addr}");
        }
        assert_eq!(addresses(&store, "t3")[1], "192.168.5.2/24");
        assert!(reconcile(&store.read(), 2_000).0.is_empty(), "converged");
    }

    #[tokio::test]
    async fn exhaustion_shows_on_the_task_and_ended_tasks_free_addresses() {
        let store = Store::memory();
        use TaskState::*;
        // A /30 has two hosts: the gateway and one task address.
        put(
            &store,
            vec![
                network("n", "tiny", "10.50.0.0/30").into(),
                replicated("s", 2).into(),
                on_network(task("t1", "s", 1, "", New, Running), "n").into(),
            ],
        )
        .await;
        round(&store).await;
        round(&store).await;
        assert_eq!(addresses(&store, "t1"), vec!["10.50.0.2/30".to_string()]);
        put(
            &store,
            vec![on_network(task("t2", "s", 2, "", New, Running), "n").into()],
        )
        .await;
        round(&store).await;
        {
            let st = store.read();
            let t2 = st.task("t2").unwrap();
            assert_eq!(t2.state(), New, "not silently pending");
            let err = &t2.status.as_ref().unwrap().err;
            assert!(
                err.starts_with("no available IP addresses on network tiny:"),
                "{err}"
            );
        }
        assert!(
            reconcile(&store.read(), 2_000).0.is_empty(),
            "the error is written once"
        );
        // t1 ends: its address goes to t2.
        store
            .write(vec![Op::SetTaskStatus {
                task_id: "t1".into(),
                status: TaskStatus {
                    state: Shutdown as i32,
                    ..Default::default()
                },
            }])
            .await
            .unwrap();
        round(&store).await;
        let st = store.read();
        let t2 = st.task("t2").unwrap();
        assert_eq!(t2.state(), Pending);
        assert!(t2.status.as_ref().unwrap().err.is_empty());
        assert_eq!(t2.networks[0].addresses, vec!["10.50.0.2/30".to_string()]);
    }

    #[tokio::test]
    async fn ingress_publishers_join_the_ingress_network_and_missing_networks_are_reported() {
        let store = Store::memory();
        use TaskState::*;
        put(
            &store,
            vec![
                network("ing", "ingress", "").into(),
                with_ports(replicated("a", 1), vec![port(80, 0, PublishMode::Ingress)]).into(),
                task("ta", "a", 1, "", New, Running).into(),
                replicated("b", 1).into(),
                on_network(task("tb", "b", 1, "", New, Running), "nope").into(),
            ],
        )
        .await;
        for _ in 0..3 {
            round(&store).await;
        }
        let st = store.read();
        let ta = st.task("ta").unwrap();
        assert_eq!(ta.state(), Pending);
        assert_eq!(ta.networks.len(), 1);
        assert_eq!(ta.networks[0].network_name, "ingress");
        // The service's VIP on ingress came first.
        let vips = &st
            .service("a")
            .unwrap()
            .endpoint
            .as_ref()
            .unwrap()
            .virtual_ips;
        assert_eq!(
            vips,
            &vec![VirtualIp {
                network_id: "ing".into(),
                addr: "10.0.0.2/24".into()
            }]
        );
        assert_eq!(ta.networks[0].addresses, vec!["10.0.0.3/24".to_string()]);
        let tb = st.task("tb").unwrap();
        assert_eq!(tb.state(), New);
        let err = &tb.status.as_ref().unwrap().err;
        assert!(err.contains("network nope not found"), "{err}");
    }

    #[tokio::test]
    async fn pool_exhaustion_is_a_network_problem_and_shows_on_its_tasks() {
        let store = Store::memory();
        use TaskState::*;
        put(
            &store,
            vec![
                proto::Cluster {
                    id: "c".into(),
                    default_addr_pool: vec!["10.9.0.0/24".into()],
                    subnet_size: 24,
                    ..Default::default()
                }
                .into(),
                network("n1", "one", "").into(),
                replicated("s", 1).into(),
            ],
        )
        .await;
        round(&store).await;
        put(
            &store,
            vec![
                network("n2", "two", "").into(),
                on_network(task("t", "s", 1, "", New, Running), "two").into(),
            ],
        )
        .await;
        let problems = round(&store).await;
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].kind, "network");
        assert_eq!(problems[0].name, "two");
        let st = store.read();
        assert!(st.network("n2").unwrap().allocation.is_none());
        let err = &st.task("t").unwrap().status.as_ref().unwrap().err;
        assert!(
            err.contains("network two is not allocated") && err.contains("10.9.0.0/24"),
            "{err}"
        );
    }

    /// The service attached to networks through its spec (as the Control API stores it).
    fn service_on(mut s: Service, targets: &[&str]) -> Service {
        s.spec.as_mut().unwrap().task.as_mut().unwrap().networks = targets
            .iter()
            .map(|t| proto::NetworkAttachmentConfig {
                target: t.to_string(),
                aliases: vec![],
            })
            .collect();
        s
    }

    /// A task created from the service's spec (it carries the spec's networks).
    fn task_of(svc: &Service, id: &str, slot: u64) -> Task {
        let mut t = task(id, &svc.id, slot, "", TaskState::New, TaskState::Running);
        t.spec = svc.spec.as_ref().and_then(|s| s.task.clone());
        t
    }

    fn vips(store: &Store, id: &str) -> Vec<(String, String)> {
        store
            .read()
            .service(id)
            .unwrap()
            .endpoint
            .iter()
            .flat_map(|e| e.virtual_ips.iter())
            .map(|v| (v.network_id.clone(), v.addr.clone()))
            .collect()
    }

    async fn update_service(store: &Store, id: &str, f: impl FnOnce(&mut Service)) {
        let mut s = store.read().service(id).unwrap().clone();
        f(&mut s);
        store
            .write(vec![Op::Update {
                object: s.into(),
                check_version: true,
            }])
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn vip_services_get_one_vip_per_network_before_their_tasks_move_on() {
        let store = Store::memory();
        use TaskState::*;
        let mut net_a = network("a", "front", "10.20.0.0/24");
        net_a.allocation = Some(proto::NetworkAllocation {
            vni: 4097,
            subnet: "10.20.0.0/24".into(),
            gateway: "10.20.0.1".into(),
        });
        let svc = service_on(replicated("s", 2), &["front"]);
        put(
            &store,
            vec![
                net_a.into(),
                network("b", "back", "10.30.0.0/24").into(),
                svc.clone().into(),
                task_of(&svc, "t1", 1).into(),
                task_of(&svc, "t2", 2).into(),
            ],
        )
        .await;
        // Round 1: the VIP on front (allocated); back is allocated; tasks wait for the VIP.
        let (plan, _) = reconcile(&store.read(), 1_000);
        assert!(!plan
            .ops
            .iter()
            .any(|op| matches!(op, Op::SetTaskStatus { .. })));
        apply(&store, plan).await;
        assert_eq!(vips(&store, "s"), [("a".into(), "10.20.0.2/24".into())]);
        assert_eq!(store.read().task("t1").unwrap().state(), New);
        round(&store).await;
        {
            let st = store.read();
            let t1 = st.task("t1").unwrap();
            assert_eq!(t1.state(), Pending);
            assert_eq!(
                t1.endpoint.as_ref().unwrap().virtual_ips[0].addr,
                "10.20.0.2/24",
                "the endpoint copied into the task carries the VIP"
            );
            let mut addrs = addresses(&store, "t1");
            addrs.extend(addresses(&store, "t2"));
            assert_eq!(addrs, ["10.20.0.3/24", "10.20.0.4/24"], "not the VIP");
        }
        assert!(reconcile(&store.read(), 2_000).0.is_empty(), "converged");

        // An update that does not change networks keeps the VIP.
        update_service(&store, "s", |s| {
            s.spec_version += 1;
            s.spec.as_mut().unwrap().endpoint = Some(EndpointSpec {
                ports: vec![port(80, 0, PublishMode::Host)],
                ..Default::default()
            });
        })
        .await;
        round(&store).await;
        assert_eq!(vips(&store, "s"), [("a".into(), "10.20.0.2/24".into())]);

        // Adding a network keeps the first VIP and adds one on the new network.
        update_service(&store, "s", |s| {
            s.spec
                .as_mut()
                .unwrap()
                .task
                .as_mut()
                .unwrap()
                .networks
                .push(proto::NetworkAttachmentConfig {
                    target: "b".into(),
                    aliases: vec![],
                })
        })
        .await;
        round(&store).await;
        assert_eq!(
            vips(&store, "s"),
            [
                ("a".into(), "10.20.0.2/24".into()),
                ("b".into(), "10.30.0.2/24".into())
            ]
        );

        // dnsrr: no VIPs, and their addresses are free again.
        update_service(&store, "s", |s| {
            s.spec.as_mut().unwrap().endpoint.as_mut().unwrap().mode = EndpointMode::Dnsrr as i32;
        })
        .await;
        round(&store).await;
        assert!(vips(&store, "s").is_empty());
        assert!(reconcile(&store.read(), 3_000).0.is_empty(), "converged");
        let mut ipam = Ipam::from_state(&store.read());
        assert_eq!(ipam.used_count("b"), 1, "only the gateway");
        assert_eq!(ipam.allocate_address("b").unwrap(), "10.30.0.2/24");
    }

    #[tokio::test]
    async fn detached_or_removed_services_give_their_vips_back() {
        let store = Store::memory();
        let svc = service_on(replicated("s", 1), &["a", "b"]);
        put(
            &store,
            vec![
                network("a", "front", "10.20.0.0/24").into(),
                network("b", "back", "10.30.0.0/24").into(),
                svc.into(),
            ],
        )
        .await;
        round(&store).await;
        round(&store).await;
        assert_eq!(vips(&store, "s").len(), 2);
        update_service(&store, "s", |s| {
            s.spec
                .as_mut()
                .unwrap()
                .task
                .as_mut()
                .unwrap()
                .networks
                .remove(0);
        })
        .await;
        round(&store).await;
        assert_eq!(vips(&store, "s"), [("b".into(), "10.30.0.2/24".into())]);
        assert_eq!(Ipam::from_state(&store.read()).used_count("a"), 1);
        store
            .write(vec![Op::Delete {
                kind: crate::store::Kind::Service,
                id: "s".into(),
            }])
            .await
            .unwrap();
        assert_eq!(Ipam::from_state(&store.read()).used_count("b"), 1);
    }

    #[tokio::test]
    async fn vip_exhaustion_shows_on_the_tasks() {
        let store = Store::memory();
        use TaskState::*;
        // A /30: the gateway and one address, taken by a dnsrr service's task.
        let mut dnsrr = service_on(replicated("d", 1), &["tiny"]);
        dnsrr.spec.as_mut().unwrap().endpoint = Some(EndpointSpec {
            mode: EndpointMode::Dnsrr as i32,
            ..Default::default()
        });
        put(
            &store,
            vec![
                network("n", "tiny", "10.50.0.0/30").into(),
                dnsrr.clone().into(),
                task_of(&dnsrr, "d1", 1).into(),
            ],
        )
        .await;
        round(&store).await;
        round(&store).await;
        assert_eq!(addresses(&store, "d1"), ["10.50.0.2/30"]);
        assert!(vips(&store, "d").is_empty(), "dnsrr");

        let v = service_on(replicated("v", 1), &["tiny"]);
        put(&store, vec![v.clone().into(), task_of(&v, "v1", 1).into()]).await;
        let problems = round(&store).await;
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].kind, "service");
        {
            let st = store.read();
            let t = st.task("v1").unwrap();
            assert_eq!(t.state(), New, "not silently pending");
            let err = &t.status.as_ref().unwrap().err;
            assert!(
                err.starts_with(
                    "virtual IP of service svc-v: no available IP addresses on network tiny:"
                ),
                "{err}"
            );
        }
        assert!(
            reconcile(&store.read(), 2_000).0.is_empty(),
            "the error is written once"
        );
        // The dnsrr task ends: the VIP takes its address; the task waits for another one.
        store
            .write(vec![set_status("d1", Shutdown, 3_000)])
            .await
            .unwrap();
        round(&store).await;
        assert_eq!(vips(&store, "v"), [("n".into(), "10.50.0.2/30".into())]);
        round(&store).await;
        let st = store.read();
        let err = &st.task("v1").unwrap().status.as_ref().unwrap().err;
        assert!(
            err.starts_with("no available IP addresses on network tiny:"),
            "now the task's own address: {err}"
        );
    }
}
