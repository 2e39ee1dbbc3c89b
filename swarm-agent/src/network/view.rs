//! The agent's view of the networks it has tasks on, as the managers stream it
//! (`Dispatcher.NetworkState`): networks, task endpoints on them (every node), and services
//! with their virtual IPs. The data plane and the DNS resolver read snapshots of it.
//!
//! A COMPLETE message replaces the whole view (a new session or a new leader); INCREMENTAL
//! messages upsert or remove single objects. Every applied message publishes a new
//! [`Arc<NetworkView>`] on a watch channel; `generation` counts them.

use std::collections::BTreeMap;
use std::sync::Arc;

use proto::{
    network_state_change::Change, network_state_message, EndpointInfo, NetworkInfo,
    NetworkStateMessage, ServiceInfo,
};
use tokio::sync::watch;

/// (task id, network id)
pub type EndpointId = (String, String);

#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetworkView {
    pub networks: BTreeMap<String, NetworkInfo>,
    pub endpoints: BTreeMap<EndpointId, EndpointInfo>,
    pub services: BTreeMap<String, ServiceInfo>,
    /// A COMPLETE message has been applied since the agent started: the view is the managers'
    /// (before that it is empty, and the data plane keeps what it had).
    pub complete: bool,
    /// Number of messages applied.
    pub generation: u64,
    /// The cluster's VXLAN UDP port (0 until a message said).
    pub vxlan_port: u32,
}

impl NetworkView {
    /// Applies one message of the stream.
    pub fn apply(&mut self, msg: NetworkStateMessage) {
        if msg.r#type == network_state_message::Type::Complete as i32 {
            self.networks.clear();
            self.endpoints.clear();
            self.services.clear();
            self.complete = true;
        }
        if msg.vxlan_port != 0 {
            self.vxlan_port = msg.vxlan_port;
        }
        for c in msg.changes.into_iter().filter_map(|c| c.change) {
            match c {
                Change::Network(n) => {
                    self.networks.insert(n.id.clone(), n);
                }
                Change::NetworkRemoved(id) => {
                    self.networks.remove(&id);
                }
                Change::Endpoint(e) => {
                    self.endpoints
                        .insert((e.task_id.clone(), e.network_id.clone()), e);
                }
                Change::EndpointRemoved(k) => {
                    self.endpoints.remove(&(k.task_id, k.network_id));
                }
                Change::Service(s) => {
                    self.services.insert(s.id.clone(), s);
                }
                Change::ServiceRemoved(id) => {
                    self.services.remove(&id);
                }
            }
        }
        self.generation += 1;
    }

    /// The endpoints on one network.
    pub fn endpoints_on<'a>(
        &'a self,
        network_id: &'a str,
    ) -> impl Iterator<Item = &'a EndpointInfo> {
        self.endpoints
            .values()
            .filter(move |e| e.network_id == network_id)
    }
}

/// Where the session loop publishes the view and consumers subscribe.
#[derive(Clone)]
pub struct ViewHandle {
    tx: Arc<watch::Sender<Arc<NetworkView>>>,
}

impl Default for ViewHandle {
    fn default() -> Self {
        ViewHandle {
            tx: Arc::new(watch::channel(Arc::new(NetworkView::default())).0),
        }
    }
}

impl ViewHandle {
    /// Applies `msg` and publishes the new view.
    pub fn apply(&self, msg: NetworkStateMessage) {
        self.tx.send_modify(|v| Arc::make_mut(v).apply(msg));
    }

    pub fn current(&self) -> Arc<NetworkView> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<NetworkView>> {
        self.tx.subscribe()
    }
}
