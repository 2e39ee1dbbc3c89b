//! The network state one node's data plane needs (pure: store state in, view out), and the
//! changes between two such views. The dispatcher's `NetworkState` stream sends the first
//! view in full (COMPLETE) and then [`diff`]s (INCREMENTAL).
//!
//! What a node sees ([`node_view`]):
//! - **networks**: every allocated network that a task assigned to the node is attached to
//!   (`Task.networks`), for tasks that have not ended (observed ≤ RUNNING) or are still meant
//!   to run (desired ≤ RUNNING);
//! - **endpoints**: on those networks, every task of any node that has an address there, is
//!   assigned to a node that exists and is not DOWN, and whose observed state is ASSIGNED …
//!   RUNNING; `serving` when it is RUNNING, meant to run (desired RUNNING) and its node is
//!   READY;
//! - **services**: the services attached to those networks (`spec.task.networks`, by id or
//!   name, or a virtual IP there), with their VIPs and network ids restricted to the
//!   networks the node sees;
//! - **the routing mesh**: every node sees the ingress network (tasks there or not), with the
//!   services whose tasks are on it and its own ingress endpoint (`node_ingress`, keyed by the
//!   node id, when it holds an ingress address and is not DOWN); a node that runs a task on
//!   the ingress network sees every node's ingress endpoint, since its tasks reply to the
//!   ingress address of whichever node took the connection.
//!
//! Cost of one view: O(T_node + Σ over the node's networks of (T_net + S_net)) index
//! lookups, where T_node is the number of tasks on the node, T_net the number of tasks ever
//! attached to a network that the store still holds (history included) and S_net the
//! services attached to it, plus the number of nodes for a node that runs a task on the
//! ingress network; nothing else is proportional to the cluster's total number of tasks,
//! nodes or services. The indexes are the store's `tasks_by_node`, `tasks_by_network` and
//! `services_by_network`. [`diff`] is linear in the size of the two views.
//!
//! **Shared pieces.** A view's endpoints are kept in pieces ([`Endpoints`]): per network,
//! the tasks' endpoints and, on the ingress network, every node's ingress endpoint or the
//! node's own. The first two are the same for every node that sees the network, so the
//! dispatcher's streams take them from one [`Pieces`] cache: built once per version of the
//! network's tasks and of the nodes (the store keeps both), and the previous piece kept when
//! it did not change. [`diff`] skips a piece
//! that is the very one the node was last sent. A round in which a thousand nodes'
//! streams wake then costs one build of each changed piece, plus per node its tasks, the
//! services of its networks and the pieces that changed, instead of every endpoint of every
//! network the node sees, copied and compared (`cargo xtask bench scale` spent most of the
//! leader's CPU there).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use proto::{
    network_state_change::Change, EndpointInfo, EndpointKey, EndpointMode, Network,
    NetworkAllocation, NetworkInfo, NetworkStateChange, Node, NodeState, Service, ServiceInfo,
    Task, TaskState,
};

use crate::ipam::address_of;
use crate::store::State;

/// The network driver option that sets the MTU inside containers.
pub const MTU_OPTION: &str = "com.docker.network.driver.mtu";

/// (task id, network id)
pub type EndpointId = (String, String);

/// What one node is told about the networks it has tasks on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeNetworkView {
    pub networks: BTreeMap<String, NetworkInfo>,
    pub endpoints: Endpoints,
    pub services: BTreeMap<String, ServiceInfo>,
}

/// Which endpoints of one network a piece holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Piece {
    /// The tasks' endpoints (shared by every node that sees the network).
    Tasks,
    /// Every node's ingress endpoint (shared by the nodes that run an ingress task).
    Nodes,
    /// The node's own ingress endpoint alone.
    Own,
}

/// (network id, piece)
pub type PieceKey = (String, Piece);

/// Endpoints by (task id, network id), shared between views.
pub type EndpointSet = Arc<BTreeMap<EndpointId, EndpointInfo>>;

/// A view's endpoints, in pieces (see the module documentation). An endpoint id is in one
/// piece at most; equality is that of the endpoints, whatever the pieces.
#[derive(Clone, Debug, Default)]
pub struct Endpoints {
    pieces: BTreeMap<PieceKey, EndpointSet>,
}

impl Endpoints {
    fn add(&mut self, network_id: &str, piece: Piece, set: EndpointSet) {
        if !set.is_empty() {
            self.pieces.insert((network_id.to_string(), piece), set);
        }
    }

    /// The pieces of network `network_id`, in piece order.
    fn of_network<'a>(&'a self, network_id: &str) -> impl Iterator<Item = &'a EndpointSet> {
        let from = (network_id.to_string(), Piece::Tasks);
        let to = (network_id.to_string(), Piece::Own);
        self.pieces.range(from..=to).map(|(_, set)| set)
    }

    pub fn get(&self, key: &EndpointId) -> Option<&EndpointInfo> {
        self.of_network(&key.1).find_map(|set| set.get(key))
    }

    pub fn contains_key(&self, key: &EndpointId) -> bool {
        self.get(key).is_some()
    }

    /// Every endpoint, by network, then piece, then id.
    pub fn iter(&self) -> impl Iterator<Item = (&EndpointId, &EndpointInfo)> {
        self.pieces.values().flat_map(|set| set.iter())
    }

    pub fn keys(&self) -> impl Iterator<Item = &EndpointId> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &EndpointInfo> {
        self.iter().map(|(_, e)| e)
    }

    pub fn len(&self) -> usize {
        self.pieces.values().map(|set| set.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }
}

impl PartialEq for Endpoints {
    fn eq(&self, other: &Endpoints) -> bool {
        self.len() == other.len() && self.iter().all(|(k, e)| other.get(k) == Some(e))
    }
}

impl std::ops::Index<&EndpointId> for Endpoints {
    type Output = EndpointInfo;

    fn index(&self, key: &EndpointId) -> &EndpointInfo {
        self.get(key)
            .unwrap_or_else(|| panic!("no endpoint {key:?} in the view"))
    }
}

/// What a shared piece is built from, as versions of the state: the tasks attached to its
/// network ([`State::network_tasks_version`]; 0 for [`Piece::Nodes`]) and the nodes
/// ([`State::nodes_version`]). Equal sources give equal pieces.
type Sources = (u64, u64);

fn sources(st: &State, (network_id, piece): &PieceKey) -> Sources {
    let tasks = match piece {
        Piece::Tasks => st.network_tasks_version(network_id),
        Piece::Nodes | Piece::Own => 0,
    };
    (tasks, st.nodes_version())
}

/// The shared pieces of the views of one store ([`Piece::Tasks`], [`Piece::Nodes`]), each
/// built once per version of what it is built from ([`Sources`]): a write that touches
/// neither the network's tasks nor the nodes (most task status reports touch one network, or
/// none) leaves the piece as it is.
#[derive(Debug, Default)]
pub struct Pieces {
    cache: Mutex<HashMap<PieceKey, (Sources, EndpointSet)>>,
}

impl Pieces {
    /// Piece `key` of `st`: the cached one when it was built from the same sources; else
    /// built, and the cached one kept (same pointer) when its endpoints did not change. A
    /// piece built from older sources than the cached one's is not cached.
    fn get(
        &self,
        st: &State,
        key: PieceKey,
        build: impl FnOnce() -> BTreeMap<EndpointId, EndpointInfo>,
    ) -> EndpointSet {
        let src = sources(st, &key);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let cached = cache.get(&key);
        if let Some((_, set)) = cached.filter(|(s, _)| *s == src) {
            return set.clone();
        }
        let fresh = build();
        let set = match cached {
            Some((_, set)) if **set == fresh => set.clone(),
            _ => Arc::new(fresh),
        };
        if cached.is_none_or(|(s, _)| s.0 <= src.0 && s.1 <= src.1) {
            cache.insert(key, (src, set.clone()));
            // Forget the pieces of networks that are gone, once they are more than a few.
            let networks = st.networks().count();
            if cache.len() > 2 * networks + 8 {
                cache.retain(|(id, _), _| st.network(id).is_some());
            }
        }
        set
    }
}

/// The network is still needed by the node for this task: it has not ended, or it is still
/// meant to run.
fn keeps_network(t: &Task) -> bool {
    t.state() <= TaskState::Running || t.desired() <= TaskState::Running
}

/// The view of node `node_id` (see the module documentation for the rules and the cost),
/// its pieces built for it alone.
pub fn node_view(st: &State, node_id: &str) -> NodeNetworkView {
    node_view_with(st, node_id, &Pieces::default())
}

/// The view of node `node_id`, its shared pieces taken from `pieces`.
pub fn node_view_with(st: &State, node_id: &str, pieces: &Pieces) -> NodeNetworkView {
    let mut view = NodeNetworkView::default();
    let mut ids: BTreeSet<&str> = BTreeSet::new();
    for t in st.tasks_on_node(node_id).filter(|t| keeps_network(t)) {
        ids.extend(t.networks.iter().map(|a| a.network_id.as_str()));
    }
    // Every node serves the routing mesh: it sees the ingress network whether or not it
    // runs a task there.
    let ingress = st
        .networks()
        .find(|n| n.spec.as_ref().is_some_and(|s| s.ingress));
    // Whether a task of this node is on the ingress network (see below).
    let runs_ingress_task = ingress.is_some_and(|n| !ids.insert(n.id.as_str()));
    let mut nets: Vec<&Network> = Vec::new();
    for id in ids {
        let Some(n) = st.network(id) else { continue };
        let Some(alloc) = &n.allocation else { continue };
        view.networks.insert(n.id.clone(), network_info(n, alloc));
        nets.push(n);
    }
    for n in &nets {
        let tasks = pieces.get(st, (n.id.clone(), Piece::Tasks), || {
            st.tasks_on_network(&n.id)
                .filter_map(|t| endpoint_info(st, t, &n.id))
                .map(|e| ((e.task_id.clone(), e.network_id.clone()), e))
                .collect()
        });
        view.endpoints.add(&n.id, Piece::Tasks, tasks.clone());
        for s in st.services_on_network(n) {
            if !view.services.contains_key(&s.id) {
                let info = service_info(st, s, &view.networks);
                view.services.insert(s.id.clone(), info);
            }
        }
        if !n.spec.as_ref().is_some_and(|s| s.ingress) {
            continue;
        }
        // The ingress network: the services whose tasks are on it (host-mode publishers have
        // no VIP there), and every node's own endpoint.
        let publishers: BTreeSet<&str> = tasks.values().map(|e| e.service_id.as_str()).collect();
        for id in publishers {
            if let (false, Some(s)) = (view.services.contains_key(id), st.service(id)) {
                let info = service_info(st, s, &view.networks);
                view.services.insert(s.id.clone(), info);
            }
        }
        // Every node's own ingress address is needed only where a task on the ingress network
        // runs (its replies go back to the node that took the connection); a node without one
        // gets its own address alone, so the views of most nodes do not grow with the cluster.
        let keyed = |e: EndpointInfo| ((e.task_id.clone(), e.network_id.clone()), e);
        if runs_ingress_task {
            let all = pieces.get(st, (n.id.clone(), Piece::Nodes), || {
                st.nodes()
                    .filter_map(|node| node_ingress_endpoint(node, &n.id))
                    .map(keyed)
                    .collect()
            });
            view.endpoints.add(&n.id, Piece::Nodes, all);
        } else {
            let own = st
                .node(node_id)
                .and_then(|node| node_ingress_endpoint(node, &n.id))
                .map(keyed);
            view.endpoints
                .add(&n.id, Piece::Own, Arc::new(own.into_iter().collect()));
        }
    }
    view
}

/// What node `node_id`'s view `view` (built from `st`) is built from, as versions of the
/// state: the node's tasks (which networks it sees), the nodes, the services, networks and
/// cluster, and the tasks of the view's networks (its shared pieces). A change sets a version
/// to a generation newer than every version before it, so the largest of the last says
/// whether any of them moved. For a later state with the same sources the view is the same:
/// it need not be built again (the dispatcher's streams skip such rounds).
pub fn view_sources(
    st: &State,
    node_id: &str,
    view: Option<&NodeNetworkView>,
) -> (u64, u64, u64, u64) {
    let networks = view.map_or(0, |v| {
        v.networks
            .keys()
            .map(|id| st.network_tasks_version(id))
            .max()
            .unwrap_or(0)
    });
    (
        st.node_tasks_version(node_id),
        st.nodes_version(),
        st.services_networks_version(),
        networks,
    )
}

/// A node's own endpoint on the ingress network `network_id` (Docker's `ingress-sbox`), if
/// it holds an address there and is not DOWN. Keyed by the node id in place of a task id.
pub fn node_ingress_endpoint(node: &Node, network_id: &str) -> Option<EndpointInfo> {
    if node.state() == NodeState::Down {
        return None;
    }
    let att = node
        .attachments
        .iter()
        .find(|a| a.network_id == network_id && !a.addresses.is_empty())?;
    let address = address_of(&att.addresses[0])?.to_string();
    Some(EndpointInfo {
        task_id: node.id.clone(),
        network_id: network_id.to_string(),
        address,
        node_id: node.id.clone(),
        node_addr: node
            .status
            .as_ref()
            .map(|s| s.addr.clone())
            .unwrap_or_default(),
        task_name: "ingress-endpoint".into(),
        node_ingress: true,
        ..Default::default()
    })
}

/// A network as the data plane needs it; `mtu` is 0 when the driver option is unset (or
/// not a number).
pub fn network_info(n: &Network, alloc: &NetworkAllocation) -> NetworkInfo {
    let spec = n.spec.clone().unwrap_or_default();
    NetworkInfo {
        id: n.id.clone(),
        name: spec.name,
        vni: alloc.vni,
        subnet: alloc.subnet.clone(),
        gateway: alloc.gateway.clone(),
        internal: spec.internal,
        ingress: spec.ingress,
        attachable: spec.attachable,
        mtu: spec
            .driver_options
            .get(MTU_OPTION)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0),
    }
}

/// The endpoint of task `t` on network `network_id`, if the task is one (see the module
/// documentation).
pub fn endpoint_info(st: &State, t: &Task, network_id: &str) -> Option<EndpointInfo> {
    let state = t.state();
    if t.node_id.is_empty() || state < TaskState::Assigned || state > TaskState::Running {
        return None;
    }
    let node = st.node(&t.node_id)?;
    if node.state() == NodeState::Down {
        return None;
    }
    let att = t
        .networks
        .iter()
        .find(|a| a.network_id == network_id && !a.addresses.is_empty())?;
    let first = &att.addresses[0];
    let address = address_of(first).map_or_else(
        || first.split('/').next().unwrap_or_default().to_string(),
        |ip| ip.to_string(),
    );
    Some(EndpointInfo {
        task_id: t.id.clone(),
        network_id: network_id.to_string(),
        address,
        node_id: t.node_id.clone(),
        node_addr: node
            .status
            .as_ref()
            .map(|s| s.addr.clone())
            .unwrap_or_default(),
        service_id: t.service_id.clone(),
        service_name: t.service_name.clone(),
        task_name: crate::store::task_name(t),
        aliases: att.aliases.clone(),
        serving: state == TaskState::Running
            && t.desired() == TaskState::Running
            && node.state() == NodeState::Ready,
        node_ingress: false,
    })
}

/// The endpoint mode a service's VIPs follow: the allocated endpoint's, else the spec's.
fn endpoint_mode(s: &Service) -> i32 {
    s.endpoint
        .as_ref()
        .and_then(|e| e.spec.as_ref())
        .or_else(|| s.spec.as_ref().and_then(|sp| sp.endpoint.as_ref()))
        .map_or(EndpointMode::Vip as i32, |e| e.mode)
}

/// A service with its VIPs and networks restricted to `visible`.
pub fn service_info(
    st: &State,
    s: &Service,
    visible: &BTreeMap<String, NetworkInfo>,
) -> ServiceInfo {
    let mut network_ids: Vec<String> = Vec::new();
    let mut add = |id: &str| {
        if visible.contains_key(id) && !network_ids.iter().any(|x| x == id) {
            network_ids.push(id.to_string());
        }
    };
    for a in s
        .spec
        .iter()
        .filter_map(|sp| sp.task.as_ref())
        .flat_map(|t| t.networks.iter())
    {
        if let Some(n) = st
            .network(&a.target)
            .or_else(|| st.network_by_name(&a.target))
        {
            add(&n.id);
        }
    }
    let endpoint = s.endpoint.clone().unwrap_or_default();
    for v in &endpoint.virtual_ips {
        add(&v.network_id);
    }
    ServiceInfo {
        id: s.id.clone(),
        name: s.name().to_string(),
        endpoint_mode: endpoint_mode(s),
        virtual_ips: endpoint
            .virtual_ips
            .into_iter()
            .filter(|v| visible.contains_key(&v.network_id))
            .collect(),
        network_ids,
        ports: endpoint.ports,
    }
}

/// The endpoints `new` no longer holds and those it holds new or changed, against `old`,
/// piece by piece: a piece that is the very piece of `old` is skipped; two versions of one
/// piece are walked side by side (both are sorted by key); a key found on one side alone is
/// looked up in the other view's other pieces, so an endpoint that moves between pieces is
/// no change.
fn diff_endpoints<'a>(
    old: &'a Endpoints,
    new: &'a Endpoints,
) -> (Vec<&'a EndpointId>, Vec<&'a EndpointInfo>) {
    use std::cmp::Ordering;
    let (mut removed, mut upserted) = (Vec::new(), Vec::new());
    // `look`: the other view has another piece of the key's network, where the endpoint may
    // be; without one (most pieces, and every piece of a COMPLETE) nothing is looked up.
    let mut gone = |k: &'a EndpointId, look: bool| {
        if !(look && new.contains_key(k)) {
            removed.push(k);
        }
    };
    let mut came = |k: &EndpointId, e: &'a EndpointInfo, look: bool| {
        if !(look && old.get(k) == Some(e)) {
            upserted.push(e);
        }
    };
    let keys: BTreeSet<&PieceKey> = old.pieces.keys().chain(new.pieces.keys()).collect();
    for key in keys {
        let elsewhere = |v: &Endpoints| v.pieces.keys().any(|(n, p)| *n == key.0 && *p != key.1);
        let (in_new, in_old) = (elsewhere(new), elsewhere(old));
        match (old.pieces.get(key), new.pieces.get(key)) {
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) => {}
            (Some(a), Some(b)) => {
                let (mut a, mut b) = (a.iter().peekable(), b.iter().peekable());
                loop {
                    match (a.peek(), b.peek()) {
                        (None, None) => break,
                        (Some((ka, _)), None) => {
                            gone(ka, in_new);
                            a.next();
                        }
                        (None, Some((kb, eb))) => {
                            came(kb, eb, in_old);
                            b.next();
                        }
                        (Some((ka, ea)), Some((kb, eb))) => match ka.cmp(kb) {
                            Ordering::Less => {
                                gone(ka, in_new);
                                a.next();
                            }
                            Ordering::Greater => {
                                came(kb, eb, in_old);
                                b.next();
                            }
                            Ordering::Equal => {
                                if ea != eb {
                                    // In one piece at most: no other version of it in `old`.
                                    came(kb, eb, false);
                                }
                                a.next();
                                b.next();
                            }
                        },
                    }
                }
            }
            (Some(a), None) => a.keys().for_each(|k| gone(k, in_new)),
            (None, Some(b)) => b.iter().for_each(|(k, e)| came(k, e, in_old)),
            (None, None) => {}
        }
    }
    (removed, upserted)
}

fn change(c: Change) -> NetworkStateChange {
    NetworkStateChange { change: Some(c) }
}

/// Every object of the view as upserts (networks, then services, then endpoints): the
/// changes of a COMPLETE message.
pub fn full(view: &NodeNetworkView) -> Vec<NetworkStateChange> {
    diff(&NodeNetworkView::default(), view)
}

/// What turns `old` into `new`: removals first (endpoints, services, networks), then
/// upserts of what is new or changed (networks, services, endpoints). Applied in order,
/// an address given up and taken again in the same step is never held twice, and an
/// endpoint never arrives before its network.
///
/// A piece of `new` that is the very piece of `old` (the same shared [`Pieces`] entry) is
/// skipped: nothing in it changed. Two versions of a piece are compared side by side, in
/// one walk ([`diff_endpoints`]); an endpoint that moves between pieces is no change.
pub fn diff(old: &NodeNetworkView, new: &NodeNetworkView) -> Vec<NetworkStateChange> {
    let mut out = Vec::new();
    let (removed, upserted) = diff_endpoints(&old.endpoints, &new.endpoints);
    for (task_id, network_id) in removed {
        out.push(change(Change::EndpointRemoved(EndpointKey {
            task_id: task_id.clone(),
            network_id: network_id.clone(),
        })));
    }
    for id in old
        .services
        .keys()
        .filter(|id| !new.services.contains_key(*id))
    {
        out.push(change(Change::ServiceRemoved(id.clone())));
    }
    for id in old
        .networks
        .keys()
        .filter(|id| !new.networks.contains_key(*id))
    {
        out.push(change(Change::NetworkRemoved(id.clone())));
    }
    for (id, n) in &new.networks {
        if old.networks.get(id) != Some(n) {
            out.push(change(Change::Network(n.clone())));
        }
    }
    for (id, s) in &new.services {
        if old.services.get(id) != Some(s) {
            out.push(change(Change::Service(s.clone())));
        }
    }
    out.extend(
        upserted
            .into_iter()
            .map(|e| change(Change::Endpoint(e.clone()))),
    );
    out
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::testutil::{global, node, put, replicated, set_status, task};
    use crate::store::{Object, Op, Store};
    use proto::{
        EndpointSpec, NetworkAttachment, NetworkAttachmentConfig, NetworkSpec, NodeStatus,
        PortConfig, VirtualIp,
    };

    fn network(id: &str, name: &str, subnet: &str, vni: u32) -> Network {
        let mut opts = BTreeMap::new();
        if name == "front" {
            opts.insert(MTU_OPTION.to_string(), "1400".to_string());
        }
        Network {
            id: id.into(),
            spec: Some(NetworkSpec {
                name: name.into(),
                driver: "overlay".into(),
                driver_options: opts,
                attachable: name == "front",
                internal: name == "back",
                ..Default::default()
            }),
            allocation: (!subnet.is_empty()).then(|| NetworkAllocation {
                vni,
                subnet: subnet.into(),
                gateway: subnet.replace(".0/24", ".1"),
            }),
            ..Default::default()
        }
    }

    fn ready(id: &str, addr: &str) -> proto::Node {
        let mut n = node(id, NodeState::Ready);
        n.status = Some(NodeStatus {
            state: NodeState::Ready as i32,
            addr: addr.into(),
            ..Default::default()
        });
        n
    }

    /// A task of service `svc` on `node` with one address per (network id, address).
    fn attached(
        id: &str,
        svc: &str,
        slot: u64,
        node: &str,
        state: TaskState,
        desired: TaskState,
        nets: &[(&str, &str)],
    ) -> Task {
        let mut t = task(id, svc, slot, node, state, desired);
        t.networks = nets
            .iter()
            .map(|(n, a)| NetworkAttachment {
                network_id: n.to_string(),
                network_name: n.to_string(),
                addresses: vec![a.to_string()],
                aliases: vec![format!("{svc}-alias")],
            })
            .collect();
        t
    }

    fn on_networks(mut s: Service, targets: &[&str], vips: &[(&str, &str)]) -> Service {
        s.spec.as_mut().unwrap().task.as_mut().unwrap().networks = targets
            .iter()
            .map(|t| NetworkAttachmentConfig {
                target: t.to_string(),
                aliases: vec![],
            })
            .collect();
        s.endpoint = Some(proto::Endpoint {
            spec: Some(EndpointSpec::default()),
            ports: vec![PortConfig {
                target_port: 80,
                published_port: 30000,
                ..Default::default()
            }],
            virtual_ips: vips
                .iter()
                .map(|(n, a)| VirtualIp {
                    network_id: n.to_string(),
                    addr: a.to_string(),
                })
                .collect(),
        });
        s
    }

    /// Two nodes; "front" (a) and "back" (b) networks; service s on front (tasks on both
    /// nodes), service x on back (task on node 2 only), service g (global) on front by name.
    async fn cluster() -> Store {
        use TaskState::*;
        let store = Store::memory();
        put(
            &store,
            vec![
                ready("n1", "192.168.0.1").into(),
                ready("n2", "192.168.0.2").into(),
                network("a", "front", "10.0.1.0/24", 4097).into(),
                network("b", "back", "10.0.2.0/24", 4098).into(),
                network("u", "unallocated", "", 0).into(),
                on_networks(replicated("s", 2), &["a"], &[("a", "10.0.1.2/24")]).into(),
                on_networks(replicated("x", 1), &["b"], &[("b", "10.0.2.2/24")]).into(),
                on_networks(global("g"), &["front"], &[]).into(),
                attached(
                    "s1",
                    "s",
                    1,
                    "n1",
                    Running,
                    Running,
                    &[("a", "10.0.1.3/24")],
                )
                .into(),
                attached(
                    "s2",
                    "s",
                    2,
                    "n2",
                    Starting,
                    Running,
                    &[("a", "10.0.1.4/24")],
                )
                .into(),
                attached(
                    "x1",
                    "x",
                    1,
                    "n2",
                    Running,
                    Running,
                    &[("b", "10.0.2.3/24")],
                )
                .into(),
                attached(
                    "g1",
                    "g",
                    0,
                    "n2",
                    Running,
                    Running,
                    &[("a", "10.0.1.5/24")],
                )
                .into(),
                // Ended long ago: keeps no network and is no endpoint.
                attached(
                    "old",
                    "s",
                    1,
                    "n1",
                    Shutdown,
                    Shutdown,
                    &[("a", "10.0.1.9/24")],
                )
                .into(),
                // Not scheduled yet: no endpoint.
                attached("p", "s", 3, "", Pending, Running, &[("a", "10.0.1.8/24")]).into(),
                // On a network that is not allocated: not seen.
                attached(
                    "u1",
                    "x",
                    2,
                    "n1",
                    Running,
                    Running,
                    &[("u", "10.9.9.9/24")],
                )
                .into(),
            ],
        )
        .await;
        store
    }

    #[tokio::test]
    async fn every_node_sees_the_ingress_network_its_publishers_and_every_node_endpoint() {
        let store = Store::memory();
        let mut ing = network("ing", "ingress", "10.0.0.0/24", 4096);
        ing.spec.as_mut().unwrap().ingress = true;
        let with_ingress = |mut n: proto::Node, addr: &str| {
            n.attachments = vec![NetworkAttachment {
                network_id: "ing".into(),
                network_name: "ingress".into(),
                addresses: vec![addr.into()],
                aliases: vec![],
            }];
            n
        };
        let mut down = with_ingress(ready("n3", "192.168.0.3"), "10.0.0.4/24");
        down.status.as_mut().unwrap().state = NodeState::Down as i32;
        put(
            &store,
            vec![
                ing.into(),
                with_ingress(ready("n1", "192.168.0.1"), "10.0.0.2/24").into(),
                with_ingress(ready("n2", "192.168.0.2"), "10.0.0.3/24").into(),
                down.into(),
                on_networks(replicated("web", 1), &[], &[("ing", "10.0.0.9/24")]).into(),
                attached(
                    "t1",
                    "web",
                    1,
                    "n2",
                    TaskState::Running,
                    TaskState::Running,
                    &[("ing", "10.0.0.10/24")],
                )
                .into(),
            ],
        )
        .await;
        // n1 runs nothing, and still serves the mesh: it knows its own ingress address, and
        // not the other nodes' (only a node whose tasks reply through the mesh needs them).
        let v = node_view(&store.read(), "n1");
        assert!(v.networks["ing"].ingress);
        assert!(v.services.contains_key("web"), "{:?}", v.services.keys());
        assert!(v.endpoints.contains_key(&("t1".into(), "ing".into())));
        let mine = &v.endpoints[&("n1".to_string(), "ing".to_string())];
        assert!(mine.node_ingress && !mine.serving);
        assert_eq!(
            (mine.address.as_str(), mine.node_addr.as_str()),
            ("10.0.0.2", "192.168.0.1")
        );
        assert!(!v.endpoints.contains_key(&("n2".into(), "ing".into())));
        // n2 runs t1 on the ingress network: every node's ingress address that is not DOWN.
        let v2 = node_view(&store.read(), "n2");
        for (node, addr) in [("n1", "10.0.0.2"), ("n2", "10.0.0.3")] {
            let e = &v2.endpoints[&(node.to_string(), "ing".to_string())];
            assert!(e.node_ingress && e.address == addr, "{e:?}");
        }
        assert!(
            !v2.endpoints.contains_key(&("n3".into(), "ing".into())),
            "a DOWN node's ingress endpoint is left out"
        );
        assert!(v2.endpoints.contains_key(&("t1".into(), "ing".into())));
    }

    #[tokio::test]
    async fn a_node_sees_the_networks_of_its_tasks_and_every_endpoint_on_them() {
        let store = cluster().await;
        let v = node_view(&store.read(), "n1");
        assert_eq!(v.networks.keys().collect::<Vec<_>>(), ["a"]);
        let a = &v.networks["a"];
        assert_eq!(
            (
                a.name.as_str(),
                a.vni,
                a.subnet.as_str(),
                a.gateway.as_str()
            ),
            ("front", 4097, "10.0.1.0/24", "10.0.1.1")
        );
        assert!(a.attachable && !a.internal && !a.ingress);
        assert_eq!(a.mtu, 1400);

        let keys: Vec<&str> = v.endpoints.keys().map(|(t, _)| t.as_str()).collect();
        assert_eq!(keys, ["g1", "s1", "s2"], "both nodes, not ended, scheduled");
        let s1 = &v.endpoints[&("s1".to_string(), "a".to_string())];
        assert_eq!(s1.address, "10.0.1.3", "no prefix length");
        assert_eq!(s1.node_id, "n1");
        assert_eq!(s1.node_addr, "192.168.0.1");
        assert_eq!(s1.service_id, "s");
        assert_eq!(s1.service_name, "svc-s");
        assert_eq!(s1.task_name, "svc-s.1.s1");
        assert_eq!(s1.aliases, ["s-alias"]);
        assert!(s1.serving);
        let s2 = &v.endpoints[&("s2".to_string(), "a".to_string())];
        assert!(!s2.serving, "starting");
        assert_eq!(s2.node_addr, "192.168.0.2");
        let g1 = &v.endpoints[&("g1".to_string(), "a".to_string())];
        assert_eq!(
            g1.task_name, "svc-g.n2.g1",
            "global tasks are named by node"
        );

        assert_eq!(v.services.keys().collect::<Vec<_>>(), ["g", "s"]);
        let s = &v.services["s"];
        assert_eq!(s.name, "svc-s");
        assert_eq!(s.endpoint_mode, EndpointMode::Vip as i32);
        assert_eq!(s.network_ids, ["a"]);
        assert_eq!(s.virtual_ips.len(), 1);
        assert_eq!(s.virtual_ips[0].addr, "10.0.1.2/24");
        assert_eq!(s.ports[0].published_port, 30000);
        assert_eq!(
            v.services["g"].network_ids,
            ["a"],
            "attached by network name"
        );

        // Node 2 also sees back, its endpoint and service x.
        let v2 = node_view(&store.read(), "n2");
        assert_eq!(v2.networks.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(v2.networks["b"].internal);
        assert_eq!(v2.networks["b"].mtu, 0, "unset");
        assert!(v2
            .endpoints
            .contains_key(&("x1".to_string(), "b".to_string())));
        assert_eq!(v2.services.keys().collect::<Vec<_>>(), ["g", "s", "x"]);
        // Node 1 does not.
        assert!(!v.services.contains_key("x"));
        assert!(!v.endpoints.keys().any(|(_, n)| n == "b"));
        // A node without tasks sees nothing.
        assert_eq!(node_view(&store.read(), "n3"), NodeNetworkView::default());
    }

    #[tokio::test]
    async fn down_nodes_and_stopping_tasks_change_endpoints() {
        let store = cluster().await;
        // n2 goes down: its endpoints disappear for n1.
        store
            .write(vec![Op::SetNodeStatus {
                node_id: "n2".into(),
                status: NodeStatus {
                    state: NodeState::Down as i32,
                    addr: "192.168.0.2".into(),
                    ..Default::default()
                },
            }])
            .await
            .unwrap();
        let v = node_view(&store.read(), "n1");
        let keys: Vec<&str> = v.endpoints.keys().map(|(t, _)| t.as_str()).collect();
        assert_eq!(keys, ["s1"]);

        // s1 is told to stop: still an endpoint, not serving; once it ended, gone, and n1
        // (no task left there) no longer sees the network.
        store
            .write(vec![Op::SetTaskDesiredState {
                task_id: "s1".into(),
                desired: TaskState::Shutdown,
            }])
            .await
            .unwrap();
        let before = node_view(&store.read(), "n1");
        let e = &before.endpoints[&("s1".to_string(), "a".to_string())];
        assert!(!e.serving);
        assert!(before.networks.contains_key("a"), "the task has not ended");
        store
            .write(vec![Op::SetTaskStatus {
                task_id: "s1".into(),
                status: proto::TaskStatus {
                    state: TaskState::Shutdown as i32,
                    ..Default::default()
                },
            }])
            .await
            .unwrap();
        let after = node_view(&store.read(), "n1");
        assert_eq!(after, NodeNetworkView::default());
    }

    #[tokio::test]
    async fn views_share_unchanged_pieces_and_diff_skips_them() {
        let store = cluster().await;
        let pieces = Pieces::default();
        let key = ("a".to_string(), Piece::Tasks);
        let v1 = node_view_with(&store.read(), "n1", &pieces);
        let v2 = node_view_with(&store.read(), "n2", &pieces);
        assert!(
            Arc::ptr_eq(&v1.endpoints.pieces[&key], &v2.endpoints.pieces[&key]),
            "both nodes see network a: one piece"
        );
        assert_eq!(v1, node_view(&store.read(), "n1"), "the same view uncached");

        // A write that changes no endpoint on a: a new generation, the same piece.
        let g = store.read().generation();
        store
            .write(vec![Op::Create(Object::Network(network(
                "z",
                "zeta",
                "10.0.9.0/24",
                4200,
            )))])
            .await
            .unwrap();
        assert!(store.read().generation() > g);
        assert_eq!(
            sources(&store.read(), &key),
            sources(&store.read(), &key),
            "sources are a pure read"
        );
        let again = node_view_with(&store.read(), "n1", &pieces);
        assert!(Arc::ptr_eq(
            &v1.endpoints.pieces[&key],
            &again.endpoints.pieces[&key]
        ));
        assert!(diff(&v1, &again).is_empty());

        // s2 starts running: a new piece, and the diff carries s2 alone, as the uncached
        // views' diff does.
        store
            .write(vec![set_status("s2", TaskState::Running, 0)])
            .await
            .unwrap();
        let after = node_view_with(&store.read(), "n1", &pieces);
        assert!(!Arc::ptr_eq(
            &v1.endpoints.pieces[&key],
            &after.endpoints.pieces[&key]
        ));
        let changes = diff(&v1, &after);
        assert_eq!(changes, diff(&v1, &node_view(&store.read(), "n1")));
        let Some(Change::Endpoint(e)) = changes.first().and_then(|c| c.change.clone()) else {
            panic!("{changes:?}")
        };
        assert_eq!(
            (changes.len(), e.task_id.as_str(), e.serving),
            (1, "s2", true)
        );

        // n2 goes DOWN (a change to the nodes, not to the tasks): the piece is built again
        // and no longer holds n2's task.
        let src = sources(&store.read(), &key);
        store
            .write(vec![Op::SetNodeStatus {
                node_id: "n2".into(),
                status: proto::NodeStatus {
                    state: NodeState::Down as i32,
                    ..Default::default()
                },
            }])
            .await
            .unwrap();
        assert_eq!(sources(&store.read(), &key).0, src.0);
        assert!(sources(&store.read(), &key).1 > src.1);
        let down = node_view_with(&store.read(), "n1", &pieces);
        assert_eq!(down, node_view(&store.read(), "n1"));
        assert!(!down
            .endpoints
            .contains_key(&("s2".to_string(), "a".to_string())));
    }

    #[tokio::test]
    async fn diff_carries_only_changes_and_replays_to_the_new_view() {
        let store = cluster().await;
        let old = node_view(&store.read(), "n1");
        assert!(diff(&old, &old).is_empty());

        // One more task of s on n2, s2 becomes RUNNING, the VIP of s moves to dnsrr.
        let mut s = store.read().service("s").unwrap().clone();
        let ep = s.endpoint.as_mut().unwrap();
        ep.spec.as_mut().unwrap().mode = EndpointMode::Dnsrr as i32;
        ep.virtual_ips.clear();
        store
            .write(vec![
                Op::Create(Object::Task(attached(
                    "s3",
                    "s",
                    3,
                    "n2",
                    TaskState::Assigned,
                    TaskState::Running,
                    &[("a", "10.0.1.6/24")],
                ))),
                Op::SetTaskStatus {
                    task_id: "s2".into(),
                    status: proto::TaskStatus {
                        state: TaskState::Running as i32,
                        ..Default::default()
                    },
                },
                Op::Update {
                    object: Object::Service(s),
                    check_version: false,
                },
                Op::Delete {
                    kind: crate::store::Kind::Task,
                    id: "g1".into(),
                },
            ])
            .await
            .unwrap();
        let new = node_view(&store.read(), "n1");
        let changes = diff(&old, &new);
        let kinds: Vec<String> = changes
            .iter()
            .map(|c| match c.change.as_ref().unwrap() {
                Change::Network(n) => format!("net {}", n.id),
                Change::NetworkRemoved(id) => format!("-net {id}"),
                Change::Endpoint(e) => format!("ep {}", e.task_id),
                Change::EndpointRemoved(k) => format!("-ep {}", k.task_id),
                Change::Service(s) => format!("svc {}", s.id),
                Change::ServiceRemoved(id) => format!("-svc {id}"),
            })
            .collect();
        assert_eq!(kinds, ["-ep g1", "svc s", "ep s2", "ep s3"]);
        let Some(Change::Service(si)) = &changes[1].change else {
            unreachable!()
        };
        assert_eq!(si.endpoint_mode, EndpointMode::Dnsrr as i32);
        assert!(si.virtual_ips.is_empty());
        assert_eq!(si.network_ids, ["a"], "dnsrr services still resolve there");

        // Replaying COMPLETE(old) + diff gives the new view, as the agent's NetworkView does.
        let mut replay = NodeNetworkView::default();
        let mut replay_endpoints: BTreeMap<EndpointId, EndpointInfo> = BTreeMap::new();
        for c in full(&old).into_iter().chain(changes) {
            match c.change.unwrap() {
                Change::Network(n) => {
                    replay.networks.insert(n.id.clone(), n);
                }
                Change::NetworkRemoved(id) => {
                    replay.networks.remove(&id);
                }
                Change::Endpoint(e) => {
                    replay_endpoints.insert((e.task_id.clone(), e.network_id.clone()), e);
                }
                Change::EndpointRemoved(k) => {
                    replay_endpoints.remove(&(k.task_id, k.network_id));
                }
                Change::Service(s) => {
                    replay.services.insert(s.id.clone(), s);
                }
                Change::ServiceRemoved(id) => {
                    replay.services.remove(&id);
                }
            }
        }
        let mut by_network: BTreeMap<String, BTreeMap<EndpointId, EndpointInfo>> = BTreeMap::new();
        for (k, e) in replay_endpoints {
            by_network.entry(k.1.clone()).or_default().insert(k, e);
        }
        for (id, set) in by_network {
            replay.endpoints.add(&id, Piece::Tasks, Arc::new(set));
        }
        assert_eq!(replay, new);

        // Removing everything: removals in order endpoints, services, networks.
        let gone = diff(&new, &NodeNetworkView::default());
        let last = gone.last().unwrap().change.as_ref().unwrap();
        assert!(matches!(last, Change::NetworkRemoved(id) if id == "a"));
        assert!(matches!(
            gone[0].change.as_ref().unwrap(),
            Change::EndpointRemoved(_)
        ));
    }
}
