//! The agent's unix socket: `LocalNode` (init, join, leave, info, unlock, the node's network view)
//! and the Control API, relayed to the in-process manager. The socket is protected by file
//! permissions, so relayed calls are marked as local callers.

use std::sync::Arc;
use std::time::Duration;

use proto::control_server::Control;
use proto::local_node_server::LocalNode;
use proto::*;
use swarm_manager::api::{LocalCaller, WORKER_DENIED};
use swarm_manager::control::ControlApi;
use tonic::{Request, Response, Status};

use crate::agent::{role_name, Agent, InitOptions, JoinOptions};

const NOT_IN_SWARM: &str = "This node is not a swarm manager. Use \"swarm init\" or \"swarm join\" to connect this node to swarm and try again.";

#[derive(Clone)]
pub struct LocalApi {
    agent: Arc<Agent>,
}

impl LocalApi {
    pub fn new(agent: Arc<Agent>) -> Self {
        LocalApi { agent }
    }

    fn control(&self) -> Result<ControlApi, Status> {
        if let Some(c) = self.agent.control() {
            return Ok(c);
        }
        let snap = self.agent.snapshot();
        if snap.locked {
            return Err(Status::failed_precondition(
                swarm_manager::manager::SWARM_LOCKED,
            ));
        }
        match snap.state {
            None => Err(Status::failed_precondition(NOT_IN_SWARM)),
            Some(_) => Err(Status::failed_precondition(WORKER_DENIED)),
        }
    }
}

fn ms(v: i64, default: Duration) -> Duration {
    if v > 0 {
        Duration::from_millis(v as u64)
    } else {
        default
    }
}

fn err(e: anyhow::Error) -> Status {
    Status::failed_precondition(format!("{e:#}"))
}

#[tonic::async_trait]
impl LocalNode for LocalApi {
    async fn init(&self, req: Request<InitRequest>) -> Result<Response<InitResponse>, Status> {
        let r = req.into_inner();
        swarm_manager::control::validate_init_request(&r)?;
        let (node_id, worker_token, addr, unlock_key) = self
            .agent
            .init(InitOptions {
                advertise_addr: r.advertise_addr,
                listen_addr: r.listen_addr,
                task_history_limit: if r.task_history_limit == 0 {
                    5
                } else {
                    r.task_history_limit
                },
                dispatcher_heartbeat: ms(r.dispatcher_heartbeat_ms, Duration::from_secs(5)),
                cert_expiry: ms(r.cert_expiry_ms, crate::agent::DEFAULT_CERT_EXPIRY),
                availability: NodeAvailability::try_from(r.availability)
                    .unwrap_or(NodeAvailability::Active),
                default_addr_pool: r.default_addr_pool,
                subnet_size: r.default_addr_pool_mask_length,
                vxlan_udp_port: r.data_path_port,
                force_new_cluster: r.force_new_cluster,
                autolock: r.autolock,
            })
            .await
            .map_err(err)?;
        Ok(Response::new(InitResponse {
            node_id,
            worker_token,
            manager_addr: addr,
            unlock_key,
        }))
    }

    async fn join(
        &self,
        req: Request<JoinSwarmRequest>,
    ) -> Result<Response<JoinSwarmResponse>, Status> {
        let r = req.into_inner();
        if r.remote_addr.is_empty() {
            return Err(Status::invalid_argument(
                "join needs the address of a manager (HOST:PORT)",
            ));
        }
        let (node_id, role) = self
            .agent
            .join(JoinOptions {
                remote: r.remote_addr,
                token: r.token,
                advertise_addr: r.advertise_addr,
                listen_addr: r.listen_addr,
                availability: NodeAvailability::try_from(r.availability)
                    .unwrap_or(NodeAvailability::Active),
            })
            .await
            .map_err(err)?;
        Ok(Response::new(JoinSwarmResponse {
            node_id,
            role: role as i32,
        }))
    }

    async fn leave(
        &self,
        req: Request<LeaveSwarmRequest>,
    ) -> Result<Response<LeaveSwarmResponse>, Status> {
        self.agent
            .leave(req.into_inner().force)
            .await
            .map_err(err)?;
        Ok(Response::new(LeaveSwarmResponse {}))
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        self.agent
            .unlock(&req.into_inner().unlock_key)
            .await
            .map_err(err)?;
        Ok(Response::new(UnlockResponse {}))
    }

    async fn info(&self, _req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let snap = self.agent.snapshot();
        let control = self.agent.control().is_some();
        Ok(Response::new(match snap.state {
            None => InfoResponse {
                local_node_state: "inactive".into(),
                error: snap.error,
                ..Default::default()
            },
            Some(s) => {
                let manager = s.role == role_name(NodeRole::Manager);
                let timing = &self.agent.cfg.raft_timing;
                let ms = |d: std::time::Duration| if manager { d.as_millis() as u64 } else { 0 };
                InfoResponse {
                    local_node_state: if snap.locked { "locked" } else { "active" }.into(),
                    node_id: s.node_id,
                    cluster_id: s.cluster_id,
                    role: if manager {
                        NodeRole::Manager as i32
                    } else {
                        NodeRole::Worker as i32
                    },
                    control_available: control,
                    managers: s.managers,
                    error: snap.error,
                    node_addr: s.advertise_addr,
                    raft_heartbeat_ms: ms(timing.heartbeat()),
                    raft_election_timeout_min_ms: ms(timing.election_timeout_min()),
                    raft_election_timeout_max_ms: ms(timing.election_timeout_max()),
                }
            }
        }))
    }

    async fn network_view(
        &self,
        _req: Request<NetworkViewRequest>,
    ) -> Result<Response<NetworkViewResponse>, Status> {
        // Answered on workers too: it is this node's own view, not cluster state.
        let v = self.agent.network_view().current();
        Ok(Response::new(NetworkViewResponse {
            complete: v.complete,
            generation: v.generation,
            networks: v.networks.values().cloned().collect(),
            endpoints: v.endpoints.values().cloned().collect(),
            services: v.services.values().cloned().collect(),
        }))
    }
}

/// `swarm service logs`: relayed to the in-process manager's log broker (which forwards
/// to the leader when this manager follows).
#[tonic::async_trait]
impl proto::logs_server::Logs for LocalApi {
    type SubscribeLogsStream =
        <swarm_manager::logbroker::LogBroker as proto::logs_server::Logs>::SubscribeLogsStream;

    async fn subscribe_logs(
        &self,
        mut req: Request<SubscribeLogsRequest>,
    ) -> Result<Response<Self::SubscribeLogsStream>, Status> {
        self.control()?;
        let broker = self
            .agent
            .log_broker()
            .await
            .ok_or_else(|| Status::failed_precondition(WORKER_DENIED))?;
        req.extensions_mut().insert(LocalCaller);
        proto::logs_server::Logs::subscribe_logs(&broker, req).await
    }
}

/// One relayed Control method.
macro_rules! relay {
    ($($name:ident($req:ty) -> $resp:ty;)*) => {
        #[tonic::async_trait]
        impl Control for LocalApi {
            $(
                async fn $name(&self, mut req: Request<$req>) -> Result<Response<$resp>, Status> {
                    let api = self.control()?;
                    req.extensions_mut().insert(LocalCaller);
                    api.$name(req).await
                }
            )*
        }
    };
}

relay! {
    get_node(GetNodeRequest) -> Node;
    list_nodes(ListNodesRequest) -> ListNodesResponse;
    update_node(UpdateNodeRequest) -> Node;
    remove_node(RemoveNodeRequest) -> RemoveNodeResponse;
    create_service(CreateServiceRequest) -> Service;
    get_service(GetServiceRequest) -> Service;
    list_services(ListServicesRequest) -> ListServicesResponse;
    update_service(UpdateServiceRequest) -> Service;
    remove_service(RemoveServiceRequest) -> RemoveServiceResponse;
    get_task(GetTaskRequest) -> Task;
    list_tasks(ListTasksRequest) -> ListTasksResponse;
    create_network(CreateNetworkRequest) -> Network;
    get_network(GetNetworkRequest) -> Network;
    list_networks(ListNetworksRequest) -> ListNetworksResponse;
    remove_network(RemoveNetworkRequest) -> RemoveNetworkResponse;
    get_cluster(GetClusterRequest) -> Cluster;
    update_cluster(UpdateClusterRequest) -> Cluster;
    get_unlock_key(GetUnlockKeyRequest) -> GetUnlockKeyResponse;
    create_secret(CreateSecretRequest) -> Secret;
    get_secret(GetSecretRequest) -> Secret;
    list_secrets(ListSecretsRequest) -> ListSecretsResponse;
    remove_secret(RemoveSecretRequest) -> RemoveSecretResponse;
    create_config(CreateConfigRequest) -> Config;
    get_config(GetConfigRequest) -> Config;
    list_configs(ListConfigsRequest) -> ListConfigsResponse;
    remove_config(RemoveConfigRequest) -> RemoveConfigResponse;
}
