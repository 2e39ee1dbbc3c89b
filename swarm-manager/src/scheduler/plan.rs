//! One scheduling pass as a pure function of the state: which PENDING task goes where, and
//! why the others cannot be placed.
//!
//! Cost model: tasks of one service and spec version share every filter input, so they form
//! a group; per group the static filters run once per node, then the group is placed with
//! a heap keyed (tasks of this service, tasks overall, node id) — O(nodes + tasks · log nodes)
//! per group instead of SwarmKit's per-task work. Node usage (reservations, host ports,
//! task counts) is computed once per pass from a single scan of the tasks.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use proto::{Node, NodeAvailability, NodeState, PublishMode, Task, TaskState};

use super::constraint::{node_matches, parse_constraints, Constraint};

/// Why a node cannot take a task, in SwarmKit's filter order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    NotReady = 0,
    Resources = 1,
    Constraints = 2,
    HostPort = 3,
    MaxReplicas = 4,
}

const REASONS: [Reason; 5] = [
    Reason::NotReady,
    Reason::Resources,
    Reason::Constraints,
    Reason::HostPort,
    Reason::MaxReplicas,
];

impl Reason {
    /// SwarmKit's filter explanations, word for word.
    fn explain(self, nodes: usize) -> String {
        let n = if nodes == 1 {
            "1 node".to_string()
        } else {
            format!("{nodes} nodes")
        };
        match self {
            Reason::NotReady => format!("{n} not available for new tasks"),
            Reason::Resources => format!("insufficient resources on {n}"),
            Reason::Constraints => format!("scheduling constraints not satisfied on {n}"),
            Reason::HostPort => format!("host-mode port already in use on {n}"),
            Reason::MaxReplicas => "max replicas per node limit exceed".to_string(),
        }
    }
}

/// Failure counts per filter over the nodes tried for one task (or group).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Failures([usize; 5]);

impl Failures {
    fn add(&mut self, r: Reason) {
        self.0[r as usize] += 1;
    }

    /// Like SwarmKit's pipeline: filters with failures, most failures first (ties in filter
    /// order), joined with "; ".
    pub(crate) fn explain(&self) -> String {
        let mut v: Vec<(Reason, usize)> = REASONS
            .iter()
            .map(|r| (*r, self.0[*r as usize]))
            .filter(|(_, n)| *n > 0)
            .collect();
        v.sort_by_key(|(_, n)| Reverse(*n));
        v.iter()
            .map(|(r, n)| r.explain(*n))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The error a task left PENDING carries.
    pub(crate) fn no_suitable_node(&self) -> String {
        let e = self.explain();
        if e.is_empty() {
            "no suitable node".to_string()
        } else {
            format!("no suitable node ({e})")
        }
    }
}

type Port = (i32, u32);

/// Host-mode published ports a task holds (allocated ports and spec ports).
fn host_ports(t: &Task, out: &mut Vec<Port>) {
    let Some(ep) = &t.endpoint else { return };
    let spec_ports = ep.spec.iter().flat_map(|s| s.ports.iter());
    for p in ep.ports.iter().chain(spec_ports) {
        if p.publish_mode == PublishMode::Host as i32 && p.published_port != 0 {
            let k = (p.protocol, p.published_port);
            if !out.contains(&k) {
                out.push(k);
            }
        }
    }
}

fn reservations(t: &Task) -> (i64, i64) {
    t.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.reservations.as_ref())
        .map_or((0, 0), |r| (r.nano_cpus.max(0), r.memory_bytes.max(0)))
}

fn observed(t: &Task) -> i32 {
    t.status.as_ref().map_or(0, |s| s.state)
}

const RUNNING: i32 = TaskState::Running as i32;

/// What the pass knows about one node.
struct NodeInfo<'a> {
    node: &'a Node,
    ready: bool,
    /// Available = described resources minus the reservations of tasks on the node.
    cpu: i64,
    mem: i64,
    /// Tasks on the node with desired state ≤ RUNNING.
    total: u32,
    /// Host-mode ports held by tasks on the node.
    ports: Vec<Port>,
}

/// The filter inputs shared by every task of a group.
struct Needs {
    cpu: i64,
    mem: i64,
    constraints: Vec<Constraint>,
    ports: Vec<Port>,
    max_replicas: u64,
    /// Label keys of `spread` preferences, outermost first.
    spread: Vec<SpreadKey>,
}

enum SpreadKey {
    NodeLabel(String),
    EngineLabel(String),
}

impl SpreadKey {
    fn parse(descriptor: &str) -> Option<SpreadKey> {
        let d = descriptor.trim();
        let d = d.strip_prefix("spread=").unwrap_or(d);
        let lower = d.to_ascii_lowercase();
        if lower.starts_with("node.labels.") && d.len() > "node.labels.".len() {
            Some(SpreadKey::NodeLabel(d["node.labels.".len()..].to_string()))
        } else if lower.starts_with("engine.labels.") && d.len() > "engine.labels.".len() {
            Some(SpreadKey::EngineLabel(
                d["engine.labels.".len()..].to_string(),
            ))
        } else {
            None
        }
    }

    fn value<'a>(&self, n: &'a Node) -> &'a str {
        match self {
            SpreadKey::NodeLabel(k) => n
                .spec
                .as_ref()
                .and_then(|s| s.labels.get(k))
                .map_or("", |v| v.as_str()),
            SpreadKey::EngineLabel(k) => n
                .description
                .as_ref()
                .and_then(|d| d.engine_labels.get(k))
                .map_or("", |v| v.as_str()),
        }
    }
}

impl Needs {
    fn of(t: &Task) -> Needs {
        let (cpu, mem) = reservations(t);
        let placement = t.spec.as_ref().and_then(|s| s.placement.as_ref());
        let constraints = match placement {
            Some(p) if !p.constraints.is_empty() => match parse_constraints(&p.constraints) {
                Ok(c) => c,
                Err(e) => {
                    // Validated by the Control API; like SwarmKit, a bad one disables the filter.
                    tracing::warn!(task = %t.id, error = %e, "ignoring invalid placement constraints");
                    Vec::new()
                }
            },
            _ => Vec::new(),
        };
        let mut ports = Vec::new();
        host_ports(t, &mut ports);
        Needs {
            cpu,
            mem,
            constraints,
            ports,
            max_replicas: placement.map_or(0, |p| p.max_replicas),
            spread: placement
                .map(|p| {
                    p.preferences
                        .iter()
                        .filter_map(|pr| SpreadKey::parse(&pr.spread_descriptor))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    fn fits_resources(&self, n: &NodeInfo) -> bool {
        (self.cpu == 0 && self.mem == 0) || (self.cpu <= n.cpu && self.mem <= n.mem)
    }

    fn ports_free(&self, n: &NodeInfo) -> bool {
        self.ports.iter().all(|p| !n.ports.contains(p))
    }

    fn under_max(&self, svc_count: u32) -> bool {
        self.max_replicas == 0 || (svc_count as u64) < self.max_replicas
    }

    /// The filters that do not change while a group is placed.
    fn static_check(&self, n: &NodeInfo) -> Result<(), Reason> {
        if !n.ready {
            return Err(Reason::NotReady);
        }
        if !self.fits_resources(n) {
            return Err(Reason::Resources);
        }
        if !node_matches(&self.constraints, n.node) {
            return Err(Reason::Constraints);
        }
        Ok(())
    }

    /// The filters that change as tasks are placed.
    fn dynamic_check(&self, n: &NodeInfo, svc_count: u32) -> Result<(), Reason> {
        if !self.fits_resources(n) {
            return Err(Reason::Resources);
        }
        if !self.ports_free(n) {
            return Err(Reason::HostPort);
        }
        if !self.under_max(svc_count) {
            return Err(Reason::MaxReplicas);
        }
        Ok(())
    }

    fn check(&self, n: &NodeInfo, svc_count: u32) -> Result<(), Reason> {
        self.static_check(n)?;
        self.dynamic_check(n, svc_count)
    }
}

/// The outcome of planning one pass.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// (task id, node id)
    pub assign: Vec<(String, String)>,
    /// (task id, error) for tasks whose error text changes.
    pub errors: Vec<(String, String)>,
    /// Tasks left PENDING that the scheduler tried to place.
    pub unschedulable: usize,
    /// Tasks left PENDING in total after this plan (unschedulable plus those not for the
    /// scheduler, e.g. desired state past RUNNING).
    pub left_pending: usize,
}

struct Group<'a> {
    rep: &'a Task,
    tasks: Vec<&'a Task>,
}

/// Heap entry of a node: (tasks of this service, tasks overall, node index). Node indexes
/// follow node id order, so ties go to the smallest id.
type NodeKey = (u32, u32, u32);

enum Tree {
    Leaf(BinaryHeap<Reverse<NodeKey>>),
    /// (tasks of this service in the branch, child index)
    Branch(BinaryHeap<Reverse<(u64, u32)>>, Vec<Tree>),
}

fn build_tree(entries: Vec<(Vec<&str>, NodeKey)>, level: usize, depth: usize) -> Tree {
    if level >= depth {
        return Tree::Leaf(entries.into_iter().map(|(_, k)| Reverse(k)).collect());
    }
    let mut by_value: BTreeMap<&str, Vec<(Vec<&str>, NodeKey)>> = BTreeMap::new();
    for e in entries {
        by_value.entry(e.0[level]).or_default().push(e);
    }
    let mut heap = BinaryHeap::with_capacity(by_value.len());
    let mut children = Vec::with_capacity(by_value.len());
    for (i, (_, es)) in by_value.into_iter().enumerate() {
        let count: u64 = es.iter().map(|(_, k)| k.0 as u64).sum();
        heap.push(Reverse((count, i as u32)));
        children.push(build_tree(es, level + 1, depth));
    }
    Tree::Branch(heap, children)
}

/// Per-pass mutable view used while placing.
struct Placer<'s, 'a> {
    nodes: &'s mut [NodeInfo<'a>],
    /// Tasks (desired ≤ RUNNING) of each service of interest, per node index.
    svc_counts: &'s mut HashMap<&'a str, HashMap<u32, u32>>,
}

impl<'a> Placer<'_, 'a> {
    fn svc_count(&self, service: &str, node: u32) -> u32 {
        self.svc_counts
            .get(service)
            .and_then(|m| m.get(&node))
            .copied()
            .unwrap_or(0)
    }

    fn commit(&mut self, service: &'a str, needs: &Needs, node: u32) {
        let n = &mut self.nodes[node as usize];
        n.cpu -= needs.cpu;
        n.mem -= needs.mem;
        n.total += 1;
        n.ports.extend_from_slice(&needs.ports);
        *self
            .svc_counts
            .entry(service)
            .or_default()
            .entry(node)
            .or_insert(0) += 1;
    }

    /// Picks a node in `tree` for one task of the group and records it; None when every
    /// node of the tree has been ruled out (each counted once in `fails`).
    fn place(
        &mut self,
        tree: &mut Tree,
        service: &'a str,
        needs: &Needs,
        fails: &mut Failures,
    ) -> Option<u32> {
        match tree {
            Tree::Leaf(heap) => {
                while let Some(Reverse((svc, total, i))) = heap.pop() {
                    match needs.dynamic_check(&self.nodes[i as usize], svc) {
                        Ok(()) => {
                            self.commit(service, needs, i);
                            heap.push(Reverse((svc + 1, total + 1, i)));
                            return Some(i);
                        }
                        // Resources and ports only shrink and counts only grow while a
                        // group is placed: the node is out for the rest of the group.
                        Err(r) => fails.add(r),
                    }
                }
                None
            }
            Tree::Branch(heap, children) => {
                while let Some(Reverse((count, c))) = heap.pop() {
                    if let Some(i) = self.place(&mut children[c as usize], service, needs, fails) {
                        heap.push(Reverse((count + 1, c)));
                        return Some(i);
                    }
                }
                None
            }
        }
    }
}

pub(crate) fn plan(state: &crate::store::State) -> Plan {
    let mut out = Plan::default();

    // Pending tasks: pre-assigned ones alone, the others grouped by service and spec.
    let mut pre: Vec<&Task> = Vec::new();
    let mut groups: Vec<Group> = Vec::new();
    let mut group_ix: HashMap<(&str, u64), Vec<usize>> = HashMap::new();
    for t in state.tasks_in_state(TaskState::Pending) {
        if t.desired_state > RUNNING {
            out.left_pending += 1;
            continue;
        }
        if !t.node_id.is_empty() {
            pre.push(t);
            continue;
        }
        let cands = group_ix
            .entry((t.service_id.as_str(), t.spec_version))
            .or_default();
        match cands
            .iter()
            .find(|&&g| groups[g].rep.spec == t.spec && groups[g].rep.endpoint == t.endpoint)
        {
            Some(&g) => groups[g].tasks.push(t),
            None => {
                cands.push(groups.len());
                groups.push(Group {
                    rep: t,
                    tasks: vec![t],
                });
            }
        }
    }
    if pre.is_empty() && groups.is_empty() {
        return out;
    }
    // Groups in a stable order: by service, then spec version.
    groups.sort_by(|a, b| {
        (a.rep.service_id.as_str(), a.rep.spec_version)
            .cmp(&(b.rep.service_id.as_str(), b.rep.spec_version))
    });

    // Nodes (id order) and what runs on them.
    let mut nodes: Vec<NodeInfo> = state
        .nodes()
        .map(|n| {
            let res = n.description.as_ref().and_then(|d| d.resources.as_ref());
            NodeInfo {
                node: n,
                ready: n.state() == NodeState::Ready
                    && n.availability() == NodeAvailability::Active,
                cpu: res.map_or(0, |r| r.nano_cpus),
                mem: res.map_or(0, |r| r.memory_bytes),
                total: 0,
                ports: Vec::new(),
            }
        })
        .collect();
    let node_ix: HashMap<&str, u32> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.node.id.as_str(), i as u32))
        .collect();
    let mut svc_counts: HashMap<&str, HashMap<u32, u32>> = HashMap::new();
    for g in &groups {
        svc_counts.entry(g.rep.service_id.as_str()).or_default();
    }
    for t in &pre {
        svc_counts.entry(t.service_id.as_str()).or_default();
    }
    for t in state.tasks() {
        if t.node_id.is_empty() {
            continue;
        }
        let s = observed(t);
        // Tasks hold their resources and ports until they actually stop (as SwarmKit).
        if s < TaskState::Assigned as i32 || s > RUNNING {
            continue;
        }
        let Some(&i) = node_ix.get(t.node_id.as_str()) else {
            continue;
        };
        let n = &mut nodes[i as usize];
        let (cpu, mem) = reservations(t);
        n.cpu -= cpu;
        n.mem -= mem;
        host_ports(t, &mut n.ports);
        if t.desired_state <= RUNNING {
            n.total += 1;
            if let Some(m) = svc_counts.get_mut(t.service_id.as_str()) {
                *m.entry(i).or_insert(0) += 1;
            }
        }
    }

    let mut placer = Placer {
        nodes: &mut nodes,
        svc_counts: &mut svc_counts,
    };

    let set_error = |out: &mut Plan, t: &Task, err: String| {
        out.unschedulable += 1;
        out.left_pending += 1;
        if t.status.as_ref().map_or("", |s| s.err.as_str()) != err {
            out.errors.push((t.id.clone(), err));
        }
    };

    // Pre-assigned (global) tasks: only their node is checked.
    for t in pre {
        let Some(&i) = node_ix.get(t.node_id.as_str()) else {
            // The node is gone; the global orchestrator deals with its tasks.
            tracing::debug!(task = %t.id, node = %t.node_id, "pre-assigned node not found");
            out.unschedulable += 1;
            out.left_pending += 1;
            continue;
        };
        let needs = Needs::of(t);
        let svc = placer.svc_count(&t.service_id, i);
        match needs.check(&placer.nodes[i as usize], svc) {
            Ok(()) => {
                placer.commit(t.service_id.as_str(), &needs, i);
                out.assign.push((t.id.clone(), t.node_id.clone()));
            }
            Err(r) => {
                let mut f = Failures::default();
                f.add(r);
                // SwarmKit gives pre-assigned tasks the bare explanation.
                set_error(&mut out, t, f.explain());
            }
        }
    }

    // Groups.
    for g in &groups {
        let needs = Needs::of(g.rep);
        let service = g.rep.service_id.as_str();
        let mut fails = Failures::default();
        let depth = needs.spread.len();
        let mut entries: Vec<(Vec<&str>, NodeKey)> = Vec::new();
        let mut leaf: Vec<Reverse<NodeKey>> = Vec::new();
        let counts = placer.svc_counts.get(service);
        for (i, n) in placer.nodes.iter().enumerate() {
            let i = i as u32;
            if let Err(r) = needs.static_check(n) {
                fails.add(r);
                continue;
            }
            let svc = counts.and_then(|m| m.get(&i)).copied().unwrap_or(0);
            let key = (svc, n.total, i);
            if depth == 0 {
                leaf.push(Reverse(key));
            } else {
                let path = needs.spread.iter().map(|k| k.value(n.node)).collect();
                entries.push((path, key));
            }
        }
        let mut tree = if depth == 0 {
            Tree::Leaf(BinaryHeap::from(leaf))
        } else {
            build_tree(entries, 0, depth)
        };
        let mut placed = 0;
        for t in &g.tasks {
            match placer.place(&mut tree, service, &needs, &mut fails) {
                Some(i) => {
                    placed += 1;
                    out.assign
                        .push((t.id.clone(), placer.nodes[i as usize].node.id.clone()));
                }
                None => break,
            }
        }
        if placed < g.tasks.len() {
            let err = fails.no_suitable_node();
            tracing::debug!(
                service,
                unplaced = g.tasks.len() - placed,
                error = %err,
                "tasks left pending"
            );
            for t in &g.tasks[placed..] {
                set_error(&mut out, t, err.clone());
            }
        }
    }
    out
}
