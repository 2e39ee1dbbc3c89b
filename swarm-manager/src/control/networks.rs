//! CreateNetwork, GetNetwork, ListNetworks, RemoveNetwork.

use proto::{
    CreateNetworkRequest, GetNetworkRequest, ListNetworksRequest, ListNetworksResponse, Network,
    PublishMode, RemoveNetworkRequest, RemoveNetworkResponse, Task, TaskState,
};
use tonic::Status;

use super::lookup::{find_network, task_name};
use super::validate::{validate_network_spec, DEFAULT_NETWORK_DRIVER};
use super::{linearize, propose_status};
use crate::store::{new_id, Kind, Object, Op, State, Store};

pub(super) async fn create(store: &Store, req: CreateNetworkRequest) -> Result<Network, Status> {
    let mut spec = req.spec.ok_or_else(|| {
        Status::invalid_argument("CreateNetwork needs a network spec (name, driver ...)")
    })?;
    if spec.driver.is_empty() {
        spec.driver = DEFAULT_NETWORK_DRIVER.to_string();
    }
    validate_network_spec(&spec)?;
    {
        let st = store.read();
        if let Some(existing) = st.network_by_name(&spec.name) {
            return Err(Status::already_exists(format!(
                "network with name {} already exists ({}); choose another name",
                spec.name, existing.id
            )));
        }
        if spec.ingress {
            if let Some(ingress) = st
                .networks()
                .find(|n| n.spec.as_ref().is_some_and(|s| s.ingress))
            {
                return Err(Status::already_exists(format!(
                    "ingress network already present: {} ({}); remove it first to replace it",
                    ingress.spec.as_ref().map_or("", |s| s.name.as_str()),
                    ingress.id
                )));
            }
        }
    }
    let network = Network {
        id: new_id(),
        meta: None,
        spec: Some(spec),
    };
    tracing::info!(network = %network.id, "creating network");
    let objs = store
        .write(vec![Op::Create(Object::Network(network))])
        .await
        .map_err(propose_status)?;
    match objs.into_iter().next().flatten() {
        Some(Object::Network(n)) => Ok(n),
        _ => Err(Status::internal(
            "the store did not return the written network",
        )),
    }
}

pub(super) async fn get(store: &Store, req: GetNetworkRequest) -> Result<Network, Status> {
    linearize(store).await?;
    let st = store.read();
    find_network(&st, &req.network_id).cloned()
}

pub(super) async fn list(
    store: &Store,
    _req: ListNetworksRequest,
) -> Result<ListNetworksResponse, Status> {
    linearize(store).await?;
    let st = store.read();
    Ok(ListNetworksResponse {
        networks: st.networks().cloned().collect(),
    })
}

fn attaches(task: Option<&proto::TaskSpec>, net: &Network) -> bool {
    let name = net.spec.as_ref().map_or("", |s| s.name.as_str());
    task.is_some_and(|t| {
        t.networks
            .iter()
            .any(|a| a.target == net.id || (!name.is_empty() && a.target == name))
    })
}

fn task_is_live(t: &Task) -> bool {
    t.desired() <= TaskState::Running && !t.state().is_terminal()
}

/// Why the network cannot go: a service or a live task still uses it.
fn check_unused(st: &State, net: &Network) -> Result<(), Status> {
    let name = net.spec.as_ref().map_or("", |s| s.name.as_str());
    let ingress = net.spec.as_ref().is_some_and(|s| s.ingress);
    for s in st.services() {
        let spec = s.spec.as_ref();
        if attaches(spec.and_then(|sp| sp.task.as_ref()), net) {
            return Err(Status::failed_precondition(format!(
                "network {name} is in use by service {}; remove the service or detach it from the network first",
                s.name()
            )));
        }
        let publishes_ingress = spec.and_then(|sp| sp.endpoint.as_ref()).is_some_and(|e| {
            e.ports
                .iter()
                .any(|p| p.publish_mode == PublishMode::Ingress as i32)
        });
        if ingress && publishes_ingress {
            return Err(Status::failed_precondition(format!(
                "ingress network {name} cannot be removed because service {} depends on it (it publishes ports in ingress mode)",
                s.name()
            )));
        }
    }
    if let Some(t) = st
        .tasks()
        .find(|t| task_is_live(t) && attaches(t.spec.as_ref(), net))
    {
        return Err(Status::failed_precondition(format!(
            "network {name} is in use by task {}; wait for it to shut down",
            task_name(t)
        )));
    }
    Ok(())
}

pub(super) async fn remove(
    store: &Store,
    req: RemoveNetworkRequest,
) -> Result<RemoveNetworkResponse, Status> {
    let id = {
        let st = store.read();
        let net = find_network(&st, &req.network_id)?;
        check_unused(&st, net)?;
        net.id.clone()
    };
    tracing::info!(network = %id, "removing network");
    store
        .write(vec![Op::Delete {
            kind: Kind::Network,
            id,
        }])
        .await
        .map_err(propose_status)?;
    Ok(RemoveNetworkResponse {})
}
