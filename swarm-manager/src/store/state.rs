//! The in-memory cluster state every manager holds, and the deterministic `apply` that
//! turns a committed Raft entry into changes of it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proto::{Cluster, Config, Meta, Network, Node, Secret, Service, Task, TaskState};
use serde::{Deserialize, Serialize};

use super::object::{Kind, Object};
use super::ops::{Op, OpOutcome, Request, Response, StoreError};

/// Every object, with the secondary indexes the components query.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    clusters: BTreeMap<String, Cluster>,
    nodes: BTreeMap<String, Node>,
    services: BTreeMap<String, Service>,
    /// Boxed: a task is about a kilobyte, so the table's empty slots and its growth copies
    /// would cost as much as the tasks themselves (same encoding in snapshots).
    tasks: HashMap<String, Box<Task>>,
    networks: BTreeMap<String, Network>,
    /// Secrets and configs, few and small: looked up by name with a scan.
    secrets: BTreeMap<String, Secret>,
    configs: BTreeMap<String, Config>,
    #[serde(skip)]
    index: Indexes,
    /// Which contents these are, unique in the process (see [`State::generation`]).
    #[serde(skip)]
    generation: u64,
    /// The generation these contents were read at by [`from_bytes`](State::from_bytes): no
    /// part of them is older ([`State::network_tasks_version`]).
    #[serde(skip)]
    base_generation: u64,
}

/// The last generation given out (0 is an empty, default state's).
static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn next_generation() -> u64 {
    GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
}

/// Where a node stands ([`State::standing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Its node object is gone and its id is on the cluster's removed-nodes list.
    Removed,
    /// Neither a node nor removed: not of this swarm, or not known to this store yet.
    Unknown,
    /// A node of the swarm with this current role (`Node.role`).
    Member(proto::NodeRole),
}

/// What an atomic batch restores on failure: (kind, id, previous object or None). Boxed,
/// so that a batch of creates (None each) costs a few bytes per op, not a whole object.
type Undo = Vec<(Kind, String, Option<Box<Object>>)>;

#[derive(Clone, Debug, Default)]
struct Indexes {
    service_names: HashMap<String, String>,
    network_names: HashMap<String, String>,
    tasks_by_service: HashMap<String, BTreeSet<String>>,
    tasks_by_node: HashMap<String, BTreeSet<String>>,
    /// Tasks by observed state, for the allocator (NEW) and scheduler (PENDING).
    tasks_by_state: HashMap<i32, BTreeSet<String>>,
    /// Tasks by the network ids of their attachments (`Task.networks`), for the network
    /// state the dispatcher streams.
    tasks_by_network: HashMap<String, BTreeSet<String>>,
    /// Services by the networks they name (`spec.task.networks` targets, ids or names as
    /// written) and the network ids of their virtual IPs.
    services_by_network: HashMap<String, BTreeSet<String>>,
    /// Per network id: the generation that last changed, added or removed a task attached to
    /// it ([`State::network_tasks_version`]).
    network_tasks_changed: HashMap<String, u64>,
    /// The generation that last changed, added or removed a node ([`State::nodes_version`]).
    nodes_changed: u64,
    /// Per node id: the generation that last changed, added or removed a task assigned to
    /// it ([`State::node_tasks_version`]).
    node_tasks_changed: HashMap<String, u64>,
    /// The generation that last changed, added or removed a secret or a config.
    dependencies_changed: u64,
    /// The generation that last changed, added or removed a service, a network or the
    /// cluster object.
    services_networks_changed: u64,
}

/// The keys a service is indexed under in `services_by_network`.
fn service_network_keys(s: &Service) -> BTreeSet<String> {
    let mut keys: BTreeSet<String> = s
        .spec
        .iter()
        .filter_map(|sp| sp.task.as_ref())
        .flat_map(|t| t.networks.iter().map(|a| a.target.clone()))
        .collect();
    keys.extend(
        s.endpoint
            .iter()
            .flat_map(|e| e.virtual_ips.iter().map(|v| v.network_id.clone())),
    );
    keys
}

impl State {
    /// Names these contents: every [`apply`](State::apply) and every
    /// [`from_bytes`](State::from_bytes) gives a generation no other state of this process had,
    /// and a clone keeps its source's until one of them changes; a larger one is newer. The
    /// versions of parts of the state (`network_tasks_version` and the others) are such
    /// generations; what is derived from a part is cached under its version, not this.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The generation that last changed the tasks attached to network `network_id` (added,
    /// removed, or any field of one): two states of this process with the same value hold
    /// the same such tasks. Values derived from those tasks alone may be cached under it.
    pub fn network_tasks_version(&self, network_id: &str) -> u64 {
        let changed = self.index.network_tasks_changed.get(network_id).copied();
        changed.unwrap_or(0).max(self.base_generation)
    }

    /// The generation that last changed the nodes (added, removed, or any field of one), in
    /// the sense of [`network_tasks_version`](State::network_tasks_version).
    pub fn nodes_version(&self) -> u64 {
        self.index.nodes_changed.max(self.base_generation)
    }

    /// The generation that last changed the tasks assigned to node `node_id`, in the sense of
    /// [`network_tasks_version`](State::network_tasks_version).
    pub fn node_tasks_version(&self, node_id: &str) -> u64 {
        let changed = self.index.node_tasks_changed.get(node_id).copied();
        changed.unwrap_or(0).max(self.base_generation)
    }

    /// The generation that last changed the secrets or the configs, in the sense of
    /// [`network_tasks_version`](State::network_tasks_version).
    pub fn dependencies_version(&self) -> u64 {
        self.index.dependencies_changed.max(self.base_generation)
    }

    /// The generation that last changed the services, the networks or the cluster object, in
    /// the sense of [`network_tasks_version`](State::network_tasks_version).
    pub fn services_networks_version(&self) -> u64 {
        self.index
            .services_networks_changed
            .max(self.base_generation)
    }

    // ------------------------------------------------------------ reads

    pub fn cluster(&self) -> Option<&Cluster> {
        self.clusters.values().next()
    }
    pub fn clusters(&self) -> impl Iterator<Item = &Cluster> {
        self.clusters.values()
    }
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.get(id)
    }
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }
    /// Where a node stands in the swarm: removed (refused for good), unknown here, or a
    /// member with its current role. What every authenticated call is checked against.
    /// The removed list wins over a node object: `swarm init --force-new-cluster` puts the
    /// old managers there while their node objects stay ([`State::remove_old_managers`]).
    pub fn standing(&self, node_id: &str) -> Standing {
        let removed = self
            .cluster()
            .is_some_and(|c| c.removed_nodes.iter().any(|r| r.node_id == node_id));
        if removed {
            return Standing::Removed;
        }
        match self.nodes.get(node_id) {
            Some(n) => Standing::Member(n.role_enum()),
            None => Standing::Unknown,
        }
    }

    /// `swarm init --force-new-cluster` (the offline rewrite, not a Raft entry): the
    /// managers of the old Raft membership (`old_voters`, Raft ids) other than `keep` go on
    /// the cluster's removed list, so the forced cluster refuses their certificates, their
    /// Raft calls above all (a vote request of a higher term would depose its lone leader).
    /// Their node objects stay, shown down and unreachable until `node rm`; a node that
    /// comes back leaves and joins again, as a new node. Returns the node ids removed.
    pub fn remove_old_managers(
        &mut self,
        index: u64,
        now: i64,
        old_voters: &std::collections::BTreeSet<u64>,
        keep: u64,
    ) -> Vec<String> {
        let old: Vec<String> = self
            .nodes
            .values()
            .filter(|n| {
                n.manager_status
                    .as_ref()
                    .is_some_and(|m| m.raft_id != keep && old_voters.contains(&m.raft_id))
            })
            .map(|n| n.id.clone())
            .collect();
        for id in &old {
            self.record_removed_node(index, now, id, None);
        }
        old
    }
    pub fn service(&self, id: &str) -> Option<&Service> {
        self.services.get(id)
    }
    pub fn service_by_name(&self, name: &str) -> Option<&Service> {
        self.index
            .service_names
            .get(name)
            .and_then(|id| self.services.get(id))
    }
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }
    pub fn task(&self, id: &str) -> Option<&Task> {
        self.tasks.get(id).map(Box::as_ref)
    }
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values().map(Box::as_ref)
    }
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }
    pub fn tasks_of_service<'a>(&'a self, service_id: &str) -> impl Iterator<Item = &'a Task> {
        self.index
            .tasks_by_service
            .get(service_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.task(id))
    }
    pub fn tasks_on_node<'a>(&'a self, node_id: &str) -> impl Iterator<Item = &'a Task> {
        self.index
            .tasks_by_node
            .get(node_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.task(id))
    }
    /// Tasks with an attachment to the network (`Task.networks`), whatever their state.
    pub fn tasks_on_network<'a>(&'a self, network_id: &str) -> impl Iterator<Item = &'a Task> {
        self.index
            .tasks_by_network
            .get(network_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.task(id))
    }
    /// Services attached to the network: named in `spec.task.networks` by id or by name,
    /// or holding a virtual IP on it. Each service once.
    pub fn services_on_network(&self, network: &Network) -> Vec<&Service> {
        let name = network.spec.as_ref().map(|s| s.name.as_str());
        let mut ids: BTreeSet<&String> = BTreeSet::new();
        for key in std::iter::once(network.id.as_str()).chain(name) {
            if let Some(set) = self.index.services_by_network.get(key) {
                ids.extend(set.iter());
            }
        }
        ids.into_iter()
            .filter_map(|id| self.services.get(id))
            .collect()
    }
    pub fn tasks_in_state(&self, state: TaskState) -> impl Iterator<Item = &Task> {
        self.index
            .tasks_by_state
            .get(&(state as i32))
            .into_iter()
            .flatten()
            .filter_map(|id| self.task(id))
    }
    pub fn count_in_state(&self, state: TaskState) -> usize {
        self.index
            .tasks_by_state
            .get(&(state as i32))
            .map_or(0, |s| s.len())
    }
    pub fn network(&self, id: &str) -> Option<&Network> {
        self.networks.get(id)
    }
    pub fn network_by_name(&self, name: &str) -> Option<&Network> {
        self.index
            .network_names
            .get(name)
            .and_then(|id| self.networks.get(id))
    }
    pub fn networks(&self) -> impl Iterator<Item = &Network> {
        self.networks.values()
    }

    pub fn secret(&self, id: &str) -> Option<&Secret> {
        self.secrets.get(id)
    }
    pub fn secrets(&self) -> impl Iterator<Item = &Secret> {
        self.secrets.values()
    }
    pub fn secret_by_name(&self, name: &str) -> Option<&Secret> {
        self.secrets
            .values()
            .find(|o| o.spec.as_ref().is_some_and(|s| s.name == name))
    }
    pub fn config(&self, id: &str) -> Option<&Config> {
        self.configs.get(id)
    }
    pub fn configs(&self) -> impl Iterator<Item = &Config> {
        self.configs.values()
    }
    pub fn config_by_name(&self, name: &str) -> Option<&Config> {
        self.configs
            .values()
            .find(|o| o.spec.as_ref().is_some_and(|s| s.name == name))
    }

    pub fn get(&self, kind: Kind, id: &str) -> Option<Object> {
        match kind {
            Kind::Cluster => self.clusters.get(id).cloned().map(Object::Cluster),
            Kind::Node => self.nodes.get(id).cloned().map(Object::Node),
            Kind::Service => self.services.get(id).cloned().map(Object::Service),
            Kind::Task => self.task(id).cloned().map(Object::Task),
            Kind::Network => self.networks.get(id).cloned().map(Object::Network),
            Kind::Secret => self.secrets.get(id).cloned().map(Object::Secret),
            Kind::Config => self.configs.get(id).cloned().map(Object::Config),
        }
    }

    /// Whether an object of that kind and id exists (without copying it, as `get` does).
    pub fn contains(&self, kind: Kind, id: &str) -> bool {
        match kind {
            Kind::Cluster => self.clusters.contains_key(id),
            Kind::Node => self.nodes.contains_key(id),
            Kind::Service => self.services.contains_key(id),
            Kind::Task => self.tasks.contains_key(id),
            Kind::Network => self.networks.contains_key(id),
            Kind::Secret => self.secrets.contains_key(id),
            Kind::Config => self.configs.contains_key(id),
        }
    }

    // ------------------------------------------------------------ snapshots

    pub fn to_bytes(&self) -> Vec<u8> {
        bincode::serialize(self).expect("state serializes")
    }

    /// Restores a state from `to_bytes` output, rebuilding the indexes.
    pub fn from_bytes(bytes: &[u8]) -> Result<State, bincode::Error> {
        let mut s: State = bincode::deserialize(bytes)?;
        s.rebuild_indexes();
        s.generation = next_generation();
        s.base_generation = s.generation;
        Ok(s)
    }

    fn rebuild_indexes(&mut self) {
        self.index = Indexes::default();
        for s in self.services.values() {
            if let Some(spec) = &s.spec {
                self.index
                    .service_names
                    .insert(spec.name.clone(), s.id.clone());
            }
            for key in service_network_keys(s) {
                self.index
                    .services_by_network
                    .entry(key)
                    .or_default()
                    .insert(s.id.clone());
            }
        }
        for n in self.networks.values() {
            if let Some(spec) = &n.spec {
                self.index
                    .network_names
                    .insert(spec.name.clone(), n.id.clone());
            }
        }
        let tasks: Vec<Task> = self.tasks().cloned().collect();
        for t in &tasks {
            self.index_task(t);
        }
    }

    // ------------------------------------------------------------ writes

    /// Applies a committed request at log index `index`. Deterministic: the same state and
    /// request give the same result on every manager. The request's objects move into the
    /// state (no copy); an atomic batch answers with a copy of each object stored, a
    /// best-effort batch only with whether each op applied (its callers read nothing more,
    /// and a copy of every task of a large batch cost as much as storing it).
    pub fn apply(&mut self, index: u64, req: Request) -> Response {
        self.generation = next_generation();
        let now = req.now_ms;
        if req.atomic {
            let mut undo: Undo = Vec::new();
            let mut out = Vec::with_capacity(req.ops.len());
            for op in req.ops {
                match self.apply_op(index, now, op, Some(&mut undo)) {
                    Ok(o) => out.push(OpOutcome::Applied(o)),
                    Err(e) => {
                        for (kind, id, prev) in undo.into_iter().rev() {
                            self.restore(kind, &id, prev.map(|b| *b));
                        }
                        return Response {
                            result: Some(Err(e)),
                        };
                    }
                }
            }
            Response {
                result: Some(Ok(out)),
            }
        } else {
            // Each op stands alone: nothing to roll back, so nothing is copied for it.
            let out = req
                .ops
                .into_iter()
                .map(|op| match self.apply_op(index, now, op, None) {
                    Ok(_) => OpOutcome::Applied(None),
                    Err(e) => OpOutcome::Skipped(e),
                })
                .collect();
            Response {
                result: Some(Ok(out)),
            }
        }
    }

    /// Applies one op. In an atomic batch (`undo` given) a whole object stored is answered
    /// with a copy of it.
    fn apply_op(
        &mut self,
        index: u64,
        now: i64,
        op: Op,
        mut undo: Option<&mut Undo>,
    ) -> Result<Option<Object>, StoreError> {
        let answer = undo.is_some();
        match op {
            Op::Create(mut obj) => {
                let kind = obj.kind();
                let id = obj.id().to_string();
                if id.is_empty() {
                    return Err(StoreError::Invalid(format!("{kind} without an id")));
                }
                if self.contains(kind, &id) {
                    return Err(StoreError::Exists { kind, id });
                }
                self.check_name(&obj, None)?;
                let meta = obj.meta_mut();
                meta.version = index;
                meta.created_at = now;
                meta.updated_at = now;
                if let Some(u) = undo.as_deref_mut() {
                    u.push((kind, id, None));
                }
                let out = answer.then(|| obj.clone());
                self.put(obj);
                Ok(out)
            }
            Op::Update {
                object: mut obj,
                check_version,
            } => {
                let kind = obj.kind();
                let id = obj.id().to_string();
                let Some(prev) = self.get(kind, &id) else {
                    return Err(StoreError::NotFound { kind, id });
                };
                if check_version && prev.version() != obj.version() {
                    return Err(StoreError::VersionMismatch {
                        kind,
                        id,
                        expected: obj.version(),
                        actual: prev.version(),
                    });
                }
                self.check_name(&obj, Some(&id))?;
                // The removed-nodes list is the store's own: an update never changes it.
                if let (Object::Cluster(c), Object::Cluster(stored)) = (&mut obj, &prev) {
                    c.removed_nodes.clone_from(&stored.removed_nodes);
                }
                let created = prev.meta().map_or(now, |m| m.created_at);
                *obj.meta_mut() = Meta {
                    version: index,
                    created_at: created,
                    updated_at: now,
                };
                if let Some(u) = undo.as_deref_mut() {
                    u.push((kind, id, Some(Box::new(prev))));
                }
                let out = answer.then(|| obj.clone());
                self.put(obj);
                Ok(out)
            }
            Op::Delete { ref kind, ref id } => {
                let Some(prev) = self.get(*kind, id) else {
                    return Err(StoreError::NotFound {
                        kind: *kind,
                        id: id.clone(),
                    });
                };
                if let Some(u) = undo.as_deref_mut() {
                    u.push((*kind, id.clone(), Some(Box::new(prev))));
                }
                self.remove(*kind, id);
                if *kind == Kind::Node {
                    self.record_removed_node(index, now, id, undo);
                }
                Ok(None)
            }
            Op::SetTaskStatus {
                ref task_id,
                ref status,
            } => {
                self.change_task(index, now, task_id, undo, |t| {
                    if status.state < t.state() as i32 {
                        // Observed state never moves backwards: a late report is dropped.
                        return Ok(false);
                    }
                    let mut status = status.clone();
                    if status.timestamp == 0 {
                        status.timestamp = now;
                    }
                    if status.state == TaskState::Running as i32 && t.started_at == 0 {
                        t.started_at = status.timestamp;
                    }
                    t.status = Some(status);
                    Ok(true)
                })
            }
            Op::AssignTask {
                ref task_id,
                ref node_id,
            } => {
                if !self.nodes.contains_key(node_id) {
                    return Err(StoreError::NotFound {
                        kind: Kind::Node,
                        id: node_id.clone(),
                    });
                }
                self.change_task(index, now, task_id, undo, |t| {
                    // Global tasks come with their node already chosen by the orchestrator.
                    if t.state() != TaskState::Pending
                        || !(t.node_id.is_empty() || t.node_id == *node_id)
                    {
                        return Err(StoreError::Invalid(format!(
                            "task {task_id} is {} and cannot be assigned",
                            t.state().display_name()
                        )));
                    }
                    t.node_id.clone_from(node_id);
                    let st = t.status.get_or_insert_with(Default::default);
                    st.state = TaskState::Assigned as i32;
                    st.timestamp = now;
                    st.message = "scheduler assigned task to node".into();
                    st.err.clear();
                    Ok(true)
                })
            }
            Op::SetTaskSchedulingError {
                ref task_id,
                ref err,
            } => self.change_task(index, now, task_id, undo, |t| {
                if t.state() != TaskState::Pending {
                    return Ok(false);
                }
                let st = t.status.get_or_insert_with(Default::default);
                if st.err == *err {
                    return Ok(false);
                }
                st.err.clone_from(err);
                Ok(true)
            }),
            Op::SetTaskDesiredState {
                ref task_id,
                ref desired,
            } => self.change_task(index, now, task_id, undo, |t| {
                if (*desired as i32) <= t.desired_state {
                    return Ok(false);
                }
                t.desired_state = *desired as i32;
                Ok(true)
            }),
            Op::SetNodeStatus {
                ref node_id,
                ref status,
            } => self.change_node(index, now, node_id, undo, |n| {
                n.status = Some(status.clone())
            }),
            Op::SetNodeAttachments {
                ref node_id,
                ref attachments,
            } => self.change_node(index, now, node_id, undo, |n| {
                n.attachments = attachments.clone()
            }),
        }
    }

    /// A deleted node goes on the cluster's removed-nodes list, so that its certificate
    /// (valid until it expires) is refused everywhere even though its node object is gone.
    fn record_removed_node(
        &mut self,
        index: u64,
        now: i64,
        node_id: &str,
        undo: Option<&mut Undo>,
    ) {
        let Some(c) = self.clusters.values_mut().next() else {
            return;
        };
        if c.removed_nodes.iter().any(|r| r.node_id == node_id) {
            return;
        }
        if let Some(u) = undo {
            u.push((
                Kind::Cluster,
                c.id.clone(),
                Some(Box::new(Object::Cluster(c.clone()))),
            ));
        }
        c.removed_nodes.push(proto::RemovedNode {
            node_id: node_id.to_string(),
            removed_at: now,
        });
        let m = c.meta.get_or_insert_with(Meta::default);
        m.version = index;
        m.updated_at = now;
    }

    /// Changes a node in place (the small `SetNode*` ops): a new version, the previous node
    /// kept for rollback in atomic batches.
    fn change_node(
        &mut self,
        index: u64,
        now: i64,
        node_id: &str,
        undo: Option<&mut Undo>,
        f: impl FnOnce(&mut Node),
    ) -> Result<Option<Object>, StoreError> {
        let Some(prev) = self.nodes.get(node_id).cloned() else {
            return Err(StoreError::NotFound {
                kind: Kind::Node,
                id: node_id.to_string(),
            });
        };
        let mut n = prev.clone();
        f(&mut n);
        let m = n.meta.get_or_insert_with(Meta::default);
        m.version = index;
        m.updated_at = now;
        if let Some(u) = undo {
            u.push((
                Kind::Node,
                node_id.to_string(),
                Some(Box::new(Object::Node(prev))),
            ));
        }
        self.nodes.insert(node_id.to_string(), n.clone());
        self.index.nodes_changed = self.generation;
        Ok(Some(Object::Node(n)))
    }

    /// Changes a task in place: `f` validates (without changing anything on error) and
    /// returns whether it changed the task. Small ops return no object; only atomic
    /// batches keep a copy of the previous task for rollback. Indexes move only when the
    /// state or the node changed.
    fn change_task(
        &mut self,
        index: u64,
        now: i64,
        id: &str,
        undo: Option<&mut Undo>,
        f: impl FnOnce(&mut Task) -> Result<bool, StoreError>,
    ) -> Result<Option<Object>, StoreError> {
        let Some(t) = self.tasks.get_mut(id) else {
            return Err(StoreError::NotFound {
                kind: Kind::Task,
                id: id.to_string(),
            });
        };
        let before = undo.is_some().then(|| Task::clone(t));
        let old_state = t.state() as i32;
        let old_node = t.node_id.clone();
        if !f(t)? {
            return Ok(None);
        }
        let m = t.meta.get_or_insert_with(Meta::default);
        m.version = index;
        m.updated_at = now;
        let new_state = t.state() as i32;
        // The ops that change a task in place never change its networks.
        for a in &t.networks {
            changed_at(
                &mut self.index.network_tasks_changed,
                &a.network_id,
                self.generation,
            );
        }
        for n in [&old_node, &t.node_id] {
            if !n.is_empty() {
                changed_at(&mut self.index.node_tasks_changed, n, self.generation);
            }
        }
        let node_moved = t.node_id != old_node;
        let new_node = if node_moved {
            t.node_id.clone()
        } else {
            String::new()
        };
        if let (Some(u), Some(prev)) = (undo, before) {
            u.push((
                Kind::Task,
                id.to_string(),
                Some(Box::new(Object::Task(prev))),
            ));
        }
        let ix = &mut self.index;
        if new_state != old_state {
            if let Some(set) = ix.tasks_by_state.get_mut(&old_state) {
                set.remove(id);
            }
            ix.tasks_by_state
                .entry(new_state)
                .or_default()
                .insert(id.to_string());
        }
        if node_moved {
            if let Some(set) = ix.tasks_by_node.get_mut(&old_node) {
                set.remove(id);
            }
            if !new_node.is_empty() {
                add_to(&mut ix.tasks_by_node, &new_node, id);
            }
        }
        Ok(None)
    }

    fn check_name(&self, obj: &Object, self_id: Option<&str>) -> Result<(), StoreError> {
        let Some(name) = obj.unique_name() else {
            return Ok(());
        };
        let taken = match obj.kind() {
            Kind::Service => self.index.service_names.get(name),
            Kind::Network => self.index.network_names.get(name),
            Kind::Secret => self.secret_by_name(name).map(|o| &o.id),
            Kind::Config => self.config_by_name(name).map(|o| &o.id),
            _ => return Ok(()),
        };
        match taken {
            Some(id) if Some(id.as_str()) != self_id => Err(StoreError::NameConflict {
                kind: obj.kind(),
                name: name.to_string(),
            }),
            _ => Ok(()),
        }
    }

    fn restore(&mut self, kind: Kind, id: &str, prev: Option<Object>) {
        match prev {
            Some(o) => self.put(o),
            None => self.remove(kind, id),
        }
    }

    fn put(&mut self, obj: Object) {
        if matches!(obj.kind(), Kind::Service | Kind::Network | Kind::Cluster) {
            self.index.services_networks_changed = self.generation;
        }
        match obj {
            Object::Cluster(c) => {
                self.clusters.insert(c.id.clone(), c);
            }
            Object::Node(n) => {
                self.nodes.insert(n.id.clone(), n);
                self.index.nodes_changed = self.generation;
            }
            Object::Service(s) => {
                if let Some(old) = self.services.remove(&s.id) {
                    self.unindex_service(&old);
                }
                self.index
                    .service_names
                    .insert(s.name().to_string(), s.id.clone());
                for key in service_network_keys(&s) {
                    self.index
                        .services_by_network
                        .entry(key)
                        .or_default()
                        .insert(s.id.clone());
                }
                self.services.insert(s.id.clone(), s);
            }
            Object::Task(t) => self.put_task(t),
            Object::Network(n) => {
                if let Some(old) = self.networks.get(&n.id) {
                    if let Some(spec) = &old.spec {
                        let old_name = spec.name.clone();
                        self.index.network_names.remove(&old_name);
                    }
                }
                if let Some(spec) = &n.spec {
                    self.index
                        .network_names
                        .insert(spec.name.clone(), n.id.clone());
                }
                self.networks.insert(n.id.clone(), n);
            }
            Object::Secret(o) => {
                self.secrets.insert(o.id.clone(), o);
                self.index.dependencies_changed = self.generation;
            }
            Object::Config(o) => {
                self.configs.insert(o.id.clone(), o);
                self.index.dependencies_changed = self.generation;
            }
        }
    }

    fn remove(&mut self, kind: Kind, id: &str) {
        if matches!(kind, Kind::Service | Kind::Network | Kind::Cluster) {
            self.index.services_networks_changed = self.generation;
        }
        match kind {
            Kind::Cluster => {
                self.clusters.remove(id);
            }
            Kind::Node => {
                self.nodes.remove(id);
                self.index.nodes_changed = self.generation;
            }
            Kind::Service => {
                if let Some(s) = self.services.remove(id) {
                    self.unindex_service(&s);
                }
            }
            Kind::Task => {
                if let Some(t) = self.tasks.remove(id) {
                    self.unindex_task(&t);
                }
            }
            Kind::Network => {
                if let Some(n) = self.networks.remove(id) {
                    if let Some(spec) = n.spec {
                        self.index.network_names.remove(&spec.name);
                    }
                }
            }
            Kind::Secret => {
                self.secrets.remove(id);
                self.index.dependencies_changed = self.generation;
            }
            Kind::Config => {
                self.configs.remove(id);
                self.index.dependencies_changed = self.generation;
            }
        }
    }

    fn unindex_service(&mut self, s: &Service) {
        let ix = &mut self.index;
        // Only the name's own entry: a rename of another service may have taken it over.
        if ix.service_names.get(s.name()) == Some(&s.id) {
            ix.service_names.remove(s.name());
        }
        for key in service_network_keys(s) {
            drop_from(&mut ix.services_by_network, &key, &s.id);
        }
    }

    fn put_task(&mut self, t: Task) {
        if let Some(old) = self.tasks.remove(&t.id) {
            self.unindex_task(&old);
        }
        self.index_task(&t);
        self.tasks.insert(t.id.clone(), Box::new(t));
    }

    fn index_task(&mut self, t: &Task) {
        let ix = &mut self.index;
        add_to(&mut ix.tasks_by_service, &t.service_id, &t.id);
        if !t.node_id.is_empty() {
            add_to(&mut ix.tasks_by_node, &t.node_id, &t.id);
            changed_at(&mut ix.node_tasks_changed, &t.node_id, self.generation);
        }
        ix.tasks_by_state
            .entry(t.state() as i32)
            .or_default()
            .insert(t.id.clone());
        for a in &t.networks {
            add_to(&mut ix.tasks_by_network, &a.network_id, &t.id);
            changed_at(
                &mut ix.network_tasks_changed,
                &a.network_id,
                self.generation,
            );
        }
    }

    fn unindex_task(&mut self, t: &Task) {
        let ix = &mut self.index;
        drop_from(&mut ix.tasks_by_service, &t.service_id, &t.id);
        if !t.node_id.is_empty() {
            drop_from(&mut ix.tasks_by_node, &t.node_id, &t.id);
            changed_at(&mut ix.node_tasks_changed, &t.node_id, self.generation);
        }
        for a in &t.networks {
            drop_from(&mut ix.tasks_by_network, &a.network_id, &t.id);
            changed_at(
                &mut ix.network_tasks_changed,
                &a.network_id,
                self.generation,
            );
        }
        if let Some(set) = ix.tasks_by_state.get_mut(&(t.state() as i32)) {
            set.remove(&t.id);
        }
    }
}

/// Records that what is under `key` changed at `generation`, copying the key only when new.
fn changed_at(map: &mut HashMap<String, u64>, key: &str, generation: u64) {
    match map.get_mut(key) {
        Some(g) => *g = generation,
        None => {
            map.insert(key.to_string(), generation);
        }
    }
}

/// Adds `id` to the set under `key`, copying the key only for a new set.
fn add_to(map: &mut HashMap<String, BTreeSet<String>>, key: &str, id: &str) {
    match map.get_mut(key) {
        Some(set) => {
            set.insert(id.to_string());
        }
        None => {
            map.insert(key.to_string(), BTreeSet::from([id.to_string()]));
        }
    }
}

fn drop_from(map: &mut HashMap<String, BTreeSet<String>>, key: &str, id: &str) {
    if let Some(set) = map.get_mut(key) {
        set.remove(id);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{ServiceSpec, TaskStatus};

    fn service(id: &str, name: &str) -> Object {
        Object::Service(Service {
            id: id.into(),
            spec: Some(ServiceSpec {
                name: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn task(id: &str, svc: &str, state: TaskState) -> Object {
        Object::Task(Task {
            id: id.into(),
            service_id: svc.into(),
            status: Some(TaskStatus {
                state: state as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn atomic_batch_rolls_back_on_conflict() {
        let mut s = State::default();
        s.apply(1, Request::atomic(vec![Op::Create(service("a", "web"))]));
        let r = s.apply(
            2,
            Request::atomic(vec![
                Op::Create(task("t1", "a", TaskState::New)),
                Op::Create(service("b", "web")),
            ]),
        );
        assert!(matches!(
            r.result,
            Some(Err(StoreError::NameConflict { .. }))
        ));
        assert!(s.task("t1").is_none(), "the first op was rolled back");
        assert_eq!(s.tasks_of_service("a").count(), 0);
        assert_eq!(s.count_in_state(TaskState::New), 0);
    }

    #[test]
    fn versions_are_checked_and_state_never_goes_back() {
        let mut s = State::default();
        s.apply(1, Request::atomic(vec![Op::Create(service("a", "web"))]));
        s.apply(
            2,
            Request::atomic(vec![Op::Create(task("t1", "a", TaskState::Pending))]),
        );
        let stale = s.get(Kind::Service, "a").unwrap();
        let ok = s.apply(
            3,
            Request::atomic(vec![Op::Update {
                object: stale.clone(),
                check_version: true,
            }]),
        );
        assert!(matches!(ok.result, Some(Ok(_))));
        let again = s.apply(
            4,
            Request::atomic(vec![Op::Update {
                object: stale,
                check_version: true,
            }]),
        );
        assert!(matches!(
            again.result,
            Some(Err(StoreError::VersionMismatch { .. }))
        ));

        s.apply(
            5,
            Request::atomic(vec![Op::AssignTask {
                task_id: "t1".into(),
                node_id: "n1".into(),
            }]),
        );
        assert_eq!(
            s.task("t1").unwrap().state(),
            TaskState::Pending,
            "unknown node"
        );

        let running = TaskStatus {
            state: TaskState::Running as i32,
            ..Default::default()
        };
        let late = TaskStatus {
            state: TaskState::Starting as i32,
            ..Default::default()
        };
        s.apply(
            6,
            Request::best_effort(vec![
                Op::SetTaskStatus {
                    task_id: "t1".into(),
                    status: running,
                },
                Op::SetTaskStatus {
                    task_id: "t1".into(),
                    status: late,
                },
            ]),
        );
        assert_eq!(s.task("t1").unwrap().state(), TaskState::Running);
        assert_eq!(s.count_in_state(TaskState::Pending), 0);
        assert_eq!(s.tasks_in_state(TaskState::Running).count(), 1);
    }

    #[test]
    fn snapshot_round_trip_rebuilds_indexes() {
        let mut s = State::default();
        s.apply(1, Request::atomic(vec![Op::Create(service("a", "web"))]));
        s.apply(
            2,
            Request::atomic(vec![Op::Create(task("t1", "a", TaskState::New))]),
        );
        let back = State::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(back.service_by_name("web").unwrap().id, "a");
        assert_eq!(back.tasks_of_service("a").count(), 1);
        assert_eq!(back.count_in_state(TaskState::New), 1);
    }

    #[test]
    fn secrets_and_configs_have_unique_names_per_kind_and_survive_snapshots() {
        use proto::{Config, ConfigSpec, Secret, SecretSpec};
        let secret = |id: &str| {
            Object::Secret(Secret {
                id: id.into(),
                meta: None,
                spec: Some(SecretSpec {
                    name: "db_pw".into(),
                    data: b"pw".to_vec(),
                    ..Default::default()
                }),
            })
        };
        let mut s = State::default();
        let r = s.apply(1, Request::atomic(vec![Op::Create(secret("s1"))]));
        assert!(r.into_objects().is_ok());
        let r = s.apply(2, Request::atomic(vec![Op::Create(secret("s2"))]));
        assert!(matches!(
            r.into_objects(),
            Err(StoreError::NameConflict {
                kind: Kind::Secret,
                ..
            })
        ));
        let config = Object::Config(Config {
            id: "c1".into(),
            meta: None,
            spec: Some(ConfigSpec {
                name: "db_pw".into(),
                data: b"x".to_vec(),
                ..Default::default()
            }),
        });
        assert!(s
            .apply(3, Request::atomic(vec![Op::Create(config)]))
            .into_objects()
            .is_ok());
        let back = State::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(back.secret_by_name("db_pw").unwrap().id, "s1");
        assert_eq!(back.config("c1").unwrap().spec.as_ref().unwrap().data, b"x");
        let mut back = back;
        back.apply(
            4,
            Request::atomic(vec![Op::Delete {
                kind: Kind::Secret,
                id: "s1".into(),
            }]),
        );
        assert!(back.secret("s1").is_none() && back.secrets().next().is_none());
    }

    #[test]
    fn versions_of_a_networks_tasks_and_of_the_nodes_move_with_their_changes_only() {
        use proto::NetworkAttachment;
        let on = |id: &str, nets: &[&str]| {
            let Object::Task(mut t) = task(id, "s", TaskState::Pending) else {
                unreachable!()
            };
            t.networks = nets
                .iter()
                .map(|n| NetworkAttachment {
                    network_id: n.to_string(),
                    ..Default::default()
                })
                .collect();
            Object::Task(t)
        };
        let node = |id: &str| {
            Object::Node(Node {
                id: id.into(),
                ..Default::default()
            })
        };
        let mut s = State::default();
        let versions = |s: &State| {
            (
                s.network_tasks_version("a"),
                s.network_tasks_version("b"),
                s.nodes_version(),
            )
        };
        s.apply(
            1,
            Request::atomic(vec![
                Op::Create(node("n1")),
                Op::Create(on("t1", &["a"])),
                Op::Create(on("t2", &["b"])),
                Op::Create(on("t3", &[])),
            ]),
        );
        let v0 = versions(&s);
        assert!(v0.0 > 0 && v0.1 > 0 && v0.2 > 0, "{v0:?}");
        // A task off every network: nothing moves but the generation, and the version of
        // the tasks of the node it goes to.
        let (n1_tasks, deps, specs) = (
            s.node_tasks_version("n1"),
            s.dependencies_version(),
            s.services_networks_version(),
        );
        s.apply(
            2,
            Request::atomic(vec![Op::AssignTask {
                task_id: "t3".into(),
                node_id: "n1".into(),
            }]),
        );
        assert_eq!(versions(&s), v0);
        assert!(s.node_tasks_version("n1") > n1_tasks);
        assert_eq!(s.node_tasks_version("n2"), 0, "no task was ever on n2");
        assert_eq!(
            (s.dependencies_version(), s.services_networks_version()),
            (deps, specs)
        );
        // A task on a: a's version alone.
        s.apply(
            3,
            Request::atomic(vec![Op::AssignTask {
                task_id: "t1".into(),
                node_id: "n1".into(),
            }]),
        );
        let v1 = versions(&s);
        assert!(v1.0 > v0.0);
        assert_eq!((v1.1, v1.2), (v0.1, v0.2));
        // A report that changes nothing (older than the stored state) moves nothing.
        s.apply(
            4,
            Request::best_effort(vec![Op::SetTaskStatus {
                task_id: "t1".into(),
                status: TaskStatus {
                    state: TaskState::New as i32,
                    ..Default::default()
                },
            }]),
        );
        assert_eq!(versions(&s), v1);
        // A node's change: the nodes' version alone.
        s.apply(
            5,
            Request::atomic(vec![Op::SetNodeStatus {
                node_id: "n1".into(),
                status: Default::default(),
            }]),
        );
        let v2 = versions(&s);
        assert!(v2.2 > v1.2);
        assert_eq!((v2.0, v2.1), (v1.0, v1.1));
        // A removed task moves its network's version; a rolled-back batch may move more,
        // never less.
        s.apply(
            6,
            Request::atomic(vec![Op::Delete {
                kind: Kind::Task,
                id: "t2".into(),
            }]),
        );
        let v3 = versions(&s);
        assert!(v3.1 > v2.1);
        assert_eq!((v3.0, v3.2), (v2.0, v2.2));
        // A state read from bytes is newer than everything before it, in every part.
        let r = State::from_bytes(&s.to_bytes()).unwrap();
        let vr = versions(&r);
        assert!(vr.0 > v3.0 && vr.1 > v3.1 && vr.2 > v3.2, "{vr:?}");
        assert_eq!(vr.0, r.generation());
    }

    #[test]
    fn network_indexes_follow_tasks_and_services() {
        use proto::{
            Endpoint, NetworkAttachment, NetworkAttachmentConfig, NetworkSpec, TaskSpec, VirtualIp,
        };
        let net = Network {
            id: "n1".into(),
            spec: Some(NetworkSpec {
                name: "front".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let by_name = Object::Service(Service {
            id: "a".into(),
            spec: Some(ServiceSpec {
                name: "web".into(),
                task: Some(TaskSpec {
                    networks: vec![NetworkAttachmentConfig {
                        target: "front".into(),
                        aliases: vec![],
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let mut with_vip = Service {
            id: "b".into(),
            spec: Some(ServiceSpec {
                name: "db".into(),
                ..Default::default()
            }),
            endpoint: Some(Endpoint {
                virtual_ips: vec![VirtualIp {
                    network_id: "n1".into(),
                    addr: "10.0.1.2/24".into(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut t = match task("t1", "a", TaskState::Running) {
            Object::Task(t) => t,
            _ => unreachable!(),
        };
        t.networks = vec![NetworkAttachment {
            network_id: "n1".into(),
            ..Default::default()
        }];
        let mut s = State::default();
        s.apply(
            1,
            Request::atomic(vec![
                Op::Create(Object::Network(net.clone())),
                Op::Create(by_name),
                Op::Create(Object::Service(with_vip.clone())),
                Op::Create(Object::Task(t)),
            ]),
        );
        let ids = |s: &State| -> Vec<String> {
            s.services_on_network(&net)
                .iter()
                .map(|s| s.id.clone())
                .collect()
        };
        assert_eq!(ids(&s), ["a", "b"], "by name and by VIP");
        assert_eq!(s.tasks_on_network("n1").count(), 1);
        let back = State::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(ids(&back), ["a", "b"]);
        assert_eq!(back.tasks_on_network("n1").count(), 1);

        // The VIP goes (dnsrr): b leaves the index; the task is deleted: gone too.
        with_vip.endpoint = None;
        s.apply(
            2,
            Request::atomic(vec![
                Op::Update {
                    object: Object::Service(with_vip),
                    check_version: false,
                },
                Op::Delete {
                    kind: Kind::Task,
                    id: "t1".into(),
                },
            ]),
        );
        assert_eq!(ids(&s), ["a"]);
        assert_eq!(s.tasks_on_network("n1").count(), 0);
        s.apply(
            3,
            Request::atomic(vec![Op::Delete {
                kind: Kind::Service,
                id: "a".into(),
            }]),
        );
        assert!(ids(&s).is_empty());
        assert!(s.service_by_name("web").is_none());
    }

    #[test]
    fn a_deleted_node_stays_on_the_removed_list_and_cluster_updates_keep_it() {
        let node = |id: &str, role: proto::NodeRole| {
            Object::Node(Node {
                id: id.into(),
                role: role as i32,
                ..Default::default()
            })
        };
        let mut s = State::default();
        s.apply(
            1,
            Request::atomic(vec![
                Op::Create(Object::Cluster(Cluster {
                    id: "c".into(),
                    ..Default::default()
                })),
                Op::Create(node("m", proto::NodeRole::Manager)),
                Op::Create(node("w", proto::NodeRole::Worker)),
            ]),
        );
        assert_eq!(s.standing("m"), Standing::Member(proto::NodeRole::Manager));
        assert_eq!(s.standing("w"), Standing::Member(proto::NodeRole::Worker));
        assert_eq!(s.standing("x"), Standing::Unknown);
        let stale = s.cluster().unwrap().clone();

        // A failed atomic batch leaves no trace on the list.
        let r = s.apply(
            2,
            Request::atomic(vec![
                Op::Delete {
                    kind: Kind::Node,
                    id: "w".into(),
                },
                Op::Delete {
                    kind: Kind::Node,
                    id: "nosuch".into(),
                },
            ]),
        );
        assert!(r.into_objects().is_err());
        assert_eq!(s.standing("w"), Standing::Member(proto::NodeRole::Worker));
        assert!(s.cluster().unwrap().removed_nodes.is_empty());

        s.apply(
            3,
            Request::atomic(vec![Op::Delete {
                kind: Kind::Node,
                id: "w".into(),
            }]),
        );
        assert_eq!(s.standing("w"), Standing::Removed);
        let c = s.cluster().unwrap();
        assert_eq!(c.meta.as_ref().unwrap().version, 3, "the cluster changed");
        assert_eq!(c.removed_nodes.len(), 1);

        // An update written from an older read keeps the list; so does a snapshot.
        s.apply(
            4,
            Request::atomic(vec![Op::Update {
                object: Object::Cluster(stale),
                check_version: false,
            }]),
        );
        assert_eq!(s.standing("w"), Standing::Removed);
        let back = State::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(back.standing("w"), Standing::Removed);
    }
}
