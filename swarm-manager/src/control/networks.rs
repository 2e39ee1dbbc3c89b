//! CreateNetwork, GetNetwork, ListNetworks, RemoveNetwork.

use proto::{
    CreateNetworkRequest, GetNetworkRequest, ListNetworksRequest, ListNetworksResponse, Network,
    NetworkSpec, PublishMode, RemoveNetworkRequest, RemoveNetworkResponse, Task, TaskState,
};
use swarm_common::id::new_id;
use tonic::Status;

use super::linearize;
use super::lookup::find_network;
use super::validate::{validate_network_spec, DEFAULT_NETWORK_DRIVER};
use crate::api::propose_status;
use crate::ipam::Subnet;
use crate::store::{task_name, Kind, Object, Op, State, Store};

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
        check_subnets(&st, &spec)?;
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
                let name = ingress.spec.as_ref().map_or("", |s| s.name.as_str());
                return Err(Status::already_exists(format!(
                    "ingress network {name} ({}) is already present: a swarm has one ingress network; remove it first (swarm network rm {name}) to replace it",
                    ingress.id
                )));
            }
        }
    }
    let network = Network {
        id: new_id(),
        meta: None,
        spec: Some(spec),
        allocation: None,
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

/// Explicit subnets must be IPv4 (the overlay IPAM is IPv4 only), leave room for addresses
/// and overlap no other network's subnet (allocated, or asked for by a network not allocated
/// yet). Refused here so that the user sees it, rather than a network that never allocates.
fn check_subnets(st: &State, spec: &NetworkSpec) -> Result<(), Status> {
    if spec.ipam.len() > 1 {
        return Err(Status::invalid_argument(
            "only one --subnet per network is supported",
        ));
    }
    for cfg in spec.ipam.iter().filter(|c| !c.subnet.is_empty()) {
        let subnet: Subnet = cfg
            .subnet
            .parse()
            .map_err(|e: crate::ipam::IpamError| Status::invalid_argument(e.to_string()))?;
        if subnet.prefix_len() > 30 {
            return Err(Status::invalid_argument(format!(
                "subnet {} is too small for an overlay network: use a prefix length of 30 or less",
                cfg.subnet
            )));
        }
        if !cfg.gateway.is_empty() {
            let gw_ok = cfg.gateway.parse().is_ok_and(|gw| subnet.is_host(gw));
            if !gw_ok {
                return Err(Status::invalid_argument(format!(
                    "gateway {} is not a host address of subnet {subnet} (not the network or broadcast address)",
                    cfg.gateway
                )));
            }
        }
        for other in st.networks() {
            let taken = other.allocation.iter().map(|a| a.subnet.as_str()).chain(
                other
                    .spec
                    .iter()
                    .flat_map(|s| s.ipam.iter())
                    .map(|c| c.subnet.as_str()),
            );
            for o in taken {
                if let Ok(o) = o.parse::<Subnet>() {
                    if o.overlaps(&subnet) {
                        return Err(Status::invalid_argument(format!(
                            "subnet {subnet} overlaps subnet {o} of network {}: choose another --subnet",
                            other.spec.as_ref().map_or(other.id.as_str(), |s| s.name.as_str())
                        )));
                    }
                }
            }
        }
    }
    Ok(())
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

/// Services that publish ports in ingress mode (SwarmKit's `IsIngressNetworkNeeded`), by
/// name.
fn ingress_publishers(st: &State) -> Vec<&str> {
    let mut names: Vec<&str> = st
        .services()
        .filter(|s| {
            s.spec
                .as_ref()
                .and_then(|sp| sp.endpoint.as_ref())
                .is_some_and(|e| {
                    e.ports
                        .iter()
                        .any(|p| p.publish_mode == PublishMode::Ingress as i32)
                })
        })
        .map(|s| s.name())
        .collect();
    names.sort_unstable();
    names
}

/// Why the network cannot go: a service or a live task still uses it; the ingress network
/// while any service publishes ports in ingress mode.
fn check_unused(st: &State, net: &Network) -> Result<(), Status> {
    let name = net.spec.as_ref().map_or("", |s| s.name.as_str());
    let ingress = net.spec.as_ref().is_some_and(|s| s.ingress);
    if ingress {
        let users = ingress_publishers(st);
        if !users.is_empty() {
            let (noun, verb) = if users.len() == 1 {
                ("service", "depends")
            } else {
                ("services", "depend")
            };
            return Err(Status::failed_precondition(format!(
                "ingress network cannot be removed because {noun} {} {verb} on it: {name} carries their ports published in ingress mode; remove those services or their ingress ports (service update --publish-rm) first",
                users.join(", ")
            )));
        }
    }
    for s in st.services() {
        let spec = s.spec.as_ref();
        if attaches(spec.and_then(|sp| sp.task.as_ref()), net) {
            return Err(Status::failed_precondition(format!(
                "network {name} is in use by service {}; remove the service or detach it from the network first",
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

#[cfg(test)]
mod tests {
    use super::*;
    use proto::IpamConfig;

    fn req(name: &str, subnet: &str, gateway: &str) -> CreateNetworkRequest {
        CreateNetworkRequest {
            spec: Some(NetworkSpec {
                name: name.into(),
                driver: "overlay".into(),
                ipam: if subnet.is_empty() {
                    vec![]
                } else {
                    vec![IpamConfig {
                        subnet: subnet.into(),
                        gateway: gateway.into(),
                    }]
                },
                ..Default::default()
            }),
        }
    }

    #[tokio::test]
    async fn subnets_are_checked_against_other_networks() {
        let store = Store::memory();
        create(&store, req("a", "10.20.0.0/16", "")).await.unwrap();
        let e = create(&store, req("b", "10.20.5.0/24", ""))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message()
                .contains("overlaps subnet 10.20.0.0/16 of network a"),
            "{}",
            e.message()
        );
        let e = create(&store, req("c", "fd00::/64", "")).await.unwrap_err();
        assert!(e.message().contains("IPv4"), "{}", e.message());
        let e = create(&store, req("d", "10.30.0.0/24", "10.30.0.255"))
            .await
            .unwrap_err();
        assert!(
            e.message().contains("not a host address"),
            "{}",
            e.message()
        );
        let e = create(&store, req("e", "10.31.0.0/31", ""))
            .await
            .unwrap_err();
        assert!(e.message().contains("too small"), "{}", e.message());
        let n = create(&store, req("f", "10.30.0.0/24", "10.30.0.254"))
            .await
            .unwrap();
        assert!(n.allocation.is_none(), "the allocator allocates it");
    }

    #[tokio::test]
    async fn allocated_subnets_count_too() {
        let store = Store::memory();
        let mut n = create(&store, req("a", "", "")).await.unwrap();
        n.allocation = Some(proto::NetworkAllocation {
            vni: 4096,
            subnet: "10.0.0.0/24".into(),
            gateway: "10.0.0.1".into(),
        });
        store
            .write(vec![Op::Update {
                object: Object::Network(n),
                check_version: true,
            }])
            .await
            .unwrap();
        let e = create(&store, req("b", "10.0.0.128/25", ""))
            .await
            .unwrap_err();
        assert!(e.message().contains("network a"), "{}", e.message());
    }
}
