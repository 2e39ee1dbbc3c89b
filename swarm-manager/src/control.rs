//! The Control API (`proto::control_server::Control`): the cluster API the CLI talks to.
//!
//! Every call is
//! 1. authorized (`crate::api`): calls relayed by the agent's local unix socket carry
//!    [`LocalCaller`](crate::api::LocalCaller) (the socket's file permissions already
//!    authorized them); other callers need a manager certificate issued by the swarm CA
//!    (workers are refused with Docker's text);
//! 2. routed: served here when this manager leads, forwarded unchanged to the leader
//!    otherwise (with the caller's identity attached), refused while there is no leader;
//! 3. served with Docker/SwarmKit semantics: linearizable reads, lookups by id, name or
//!    unique id prefix, validation that changes nothing on bad input, optimistic
//!    concurrency on updates;
//! 4. counted in `api_requests{method,code}` and timed in `api_request_seconds{method}`.

mod cluster;
mod lookup;
mod networks;
mod nodes;
mod secrets;
mod services;
mod tasks;
mod validate;

#[cfg(test)]
mod tests;

/// Secret and config limits and name rule (the CLI's fake agent checks with them too).
pub use secrets::{validate_name as validate_secret_name, MAX_CONFIG_SIZE, MAX_SECRET_SIZE};
/// `swarm init`'s options as the agent checks them (also the CLI tests' fake agent).
pub use validate::validate_init_request;

use std::future::Future;
use std::time::Instant;

use proto::control_client::ControlClient;
use proto::control_server::Control;
use proto::{
    Cluster, Config, CreateConfigRequest, CreateNetworkRequest, CreateSecretRequest,
    CreateServiceRequest, GetClusterRequest, GetConfigRequest, GetNetworkRequest, GetNodeRequest,
    GetSecretRequest, GetServiceRequest, GetTaskRequest, GetUnlockKeyRequest, GetUnlockKeyResponse,
    ListConfigsRequest, ListConfigsResponse, ListNetworksRequest, ListNetworksResponse,
    ListNodesRequest, ListNodesResponse, ListSecretsRequest, ListSecretsResponse,
    ListServicesRequest, ListServicesResponse, ListTasksRequest, ListTasksResponse, Network, Node,
    RemoveConfigRequest, RemoveConfigResponse, RemoveNetworkRequest, RemoveNetworkResponse,
    RemoveNodeRequest, RemoveNodeResponse, RemoveSecretRequest, RemoveSecretResponse,
    RemoveServiceRequest, RemoveServiceResponse, Secret, Service, Task, UpdateClusterRequest,
    UpdateNodeRequest, UpdateServiceRequest,
};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::api::{authorize, forwarded, propose_status};
use crate::metrics::{Method, MethodCode, METRICS};
use crate::router::{Route, Router};
use crate::store::Store;

/// The Control API service of one manager.
#[derive(Clone)]
pub struct ControlApi {
    store: Store,
    router: Router,
}

impl ControlApi {
    pub fn new(store: Store, router: Router) -> Self {
        ControlApi { store, router }
    }

    /// Authorizes, routes, serves (or forwards) and records one call.
    ///
    /// `forward` sends the copied request to the leader; `local` serves it from the store.
    async fn call<Req, Resp, Fwd, FwdFut, Loc, LocFut>(
        &self,
        method: &'static str,
        req: Request<Req>,
        forward: Fwd,
        local: Loc,
    ) -> Result<Response<Resp>, Status>
    where
        Fwd: FnOnce(ControlClient<Channel>, Request<Req>) -> FwdFut,
        FwdFut: Future<Output = Result<Response<Resp>, Status>>,
        Loc: FnOnce(Store, Req) -> LocFut,
        LocFut: Future<Output = Result<Resp, Status>>,
    {
        let start = Instant::now();
        let result = self.serve(method, req, forward, local).await;
        record(method, start, &result);
        result
    }

    async fn serve<Req, Resp, Fwd, FwdFut, Loc, LocFut>(
        &self,
        method: &'static str,
        req: Request<Req>,
        forward: Fwd,
        local: Loc,
    ) -> Result<Response<Resp>, Status>
    where
        Fwd: FnOnce(ControlClient<Channel>, Request<Req>) -> FwdFut,
        FwdFut: Future<Output = Result<Response<Resp>, Status>>,
        Loc: FnOnce(Store, Req) -> LocFut,
        LocFut: Future<Output = Result<Resp, Status>>,
    {
        let caller = authorize(&req, &self.store.read())?;
        // Taken before routing: a leader change after it ends a forwarded call (below).
        let leader = self.router.leader_watch();
        match self.router.route() {
            Route::Local => {
                let msg = req.into_inner();
                local(self.store.clone(), msg).await.map(Response::new)
            }
            Route::Leader(ch) => {
                tracing::debug!(method, "forwarding Control call to the leader");
                // A leader cut off from this manager and the others never answers; once they
                // elect another, the call ends here instead of at its deadline.
                tokio::select! {
                    r = forward(ControlClient::new(ch), forwarded(req, caller.as_ref())) => r,
                    () = leader.changed() => {
                        tracing::debug!(method, "the leader changed while the call was forwarded");
                        Err(crate::router::leader_changed())
                    }
                }
            }
            Route::NoLeader => Err(crate::router::no_leader()),
            Route::Stopped(reason) => Err(crate::router::raft_stopped(&reason)),
        }
    }
}

fn record<T>(method: &'static str, start: Instant, result: &Result<T, Status>) {
    let code = match result {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    };
    METRICS
        .api_requests
        .get_or_create(&MethodCode {
            method: method.to_string(),
            code: format!("{code:?}"),
        })
        .inc();
    METRICS
        .api_seconds
        .get_or_create(&Method {
            method: method.to_string(),
        })
        .observe(start.elapsed().as_secs_f64());
    if let Err(s) = result {
        if matches!(
            s.code(),
            tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss
        ) {
            tracing::warn!(method, code = ?s.code(), message = s.message(), "Control call failed");
        } else {
            tracing::debug!(method, code = ?s.code(), message = s.message(), "Control call refused");
        }
    }
}

/// Waits for a linearizable read point (reads then see every write committed before).
async fn linearize(store: &Store) -> Result<(), Status> {
    store.linearize().await.map_err(propose_status)
}

/// One Control method: forwarded through the matching client method, served by
/// `$local(&Store, Req)`.
macro_rules! rpc {
    ($self:ident, $req:ident, $method:literal, $client:ident, $local:path) => {
        $self
            .call(
                $method,
                $req,
                |mut c, r| async move { c.$client(r).await },
                |store, r| async move { $local(&store, r).await },
            )
            .await
    };
}

#[tonic::async_trait]
impl Control for ControlApi {
    async fn get_node(&self, req: Request<GetNodeRequest>) -> Result<Response<Node>, Status> {
        rpc!(self, req, "GetNode", get_node, nodes::get)
    }

    async fn list_nodes(
        &self,
        req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        rpc!(self, req, "ListNodes", list_nodes, nodes::list)
    }

    async fn update_node(&self, req: Request<UpdateNodeRequest>) -> Result<Response<Node>, Status> {
        rpc!(self, req, "UpdateNode", update_node, nodes::update)
    }

    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeResponse>, Status> {
        rpc!(self, req, "RemoveNode", remove_node, nodes::remove)
    }

    async fn create_service(
        &self,
        req: Request<CreateServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        rpc!(self, req, "CreateService", create_service, services::create)
    }

    async fn get_service(
        &self,
        req: Request<GetServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        rpc!(self, req, "GetService", get_service, services::get)
    }

    async fn list_services(
        &self,
        req: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        rpc!(self, req, "ListServices", list_services, services::list)
    }

    async fn update_service(
        &self,
        req: Request<UpdateServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        rpc!(self, req, "UpdateService", update_service, services::update)
    }

    async fn remove_service(
        &self,
        req: Request<RemoveServiceRequest>,
    ) -> Result<Response<RemoveServiceResponse>, Status> {
        rpc!(self, req, "RemoveService", remove_service, services::remove)
    }

    async fn get_task(&self, req: Request<GetTaskRequest>) -> Result<Response<Task>, Status> {
        rpc!(self, req, "GetTask", get_task, tasks::get)
    }

    async fn list_tasks(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        rpc!(self, req, "ListTasks", list_tasks, tasks::list)
    }

    async fn create_network(
        &self,
        req: Request<CreateNetworkRequest>,
    ) -> Result<Response<Network>, Status> {
        rpc!(self, req, "CreateNetwork", create_network, networks::create)
    }

    async fn get_network(
        &self,
        req: Request<GetNetworkRequest>,
    ) -> Result<Response<Network>, Status> {
        rpc!(self, req, "GetNetwork", get_network, networks::get)
    }

    async fn list_networks(
        &self,
        req: Request<ListNetworksRequest>,
    ) -> Result<Response<ListNetworksResponse>, Status> {
        rpc!(self, req, "ListNetworks", list_networks, networks::list)
    }

    async fn remove_network(
        &self,
        req: Request<RemoveNetworkRequest>,
    ) -> Result<Response<RemoveNetworkResponse>, Status> {
        rpc!(self, req, "RemoveNetwork", remove_network, networks::remove)
    }

    async fn get_cluster(
        &self,
        req: Request<GetClusterRequest>,
    ) -> Result<Response<Cluster>, Status> {
        rpc!(self, req, "GetCluster", get_cluster, cluster::get)
    }

    async fn update_cluster(
        &self,
        req: Request<UpdateClusterRequest>,
    ) -> Result<Response<Cluster>, Status> {
        rpc!(self, req, "UpdateCluster", update_cluster, cluster::update)
    }

    async fn get_unlock_key(
        &self,
        req: Request<GetUnlockKeyRequest>,
    ) -> Result<Response<GetUnlockKeyResponse>, Status> {
        rpc!(
            self,
            req,
            "GetUnlockKey",
            get_unlock_key,
            cluster::get_unlock_key
        )
    }

    async fn create_secret(
        &self,
        req: Request<CreateSecretRequest>,
    ) -> Result<Response<Secret>, Status> {
        rpc!(
            self,
            req,
            "CreateSecret",
            create_secret,
            secrets::create_secret
        )
    }

    async fn get_secret(&self, req: Request<GetSecretRequest>) -> Result<Response<Secret>, Status> {
        rpc!(self, req, "GetSecret", get_secret, secrets::get_secret)
    }

    async fn list_secrets(
        &self,
        req: Request<ListSecretsRequest>,
    ) -> Result<Response<ListSecretsResponse>, Status> {
        rpc!(
            self,
            req,
            "ListSecrets",
            list_secrets,
            secrets::list_secrets
        )
    }

    async fn remove_secret(
        &self,
        req: Request<RemoveSecretRequest>,
    ) -> Result<Response<RemoveSecretResponse>, Status> {
        rpc!(
            self,
            req,
            "RemoveSecret",
            remove_secret,
            secrets::remove_secret
        )
    }

    async fn create_config(
        &self,
        req: Request<CreateConfigRequest>,
    ) -> Result<Response<Config>, Status> {
        rpc!(
            self,
            req,
            "CreateConfig",
            create_config,
            secrets::create_config
        )
    }

    async fn get_config(&self, req: Request<GetConfigRequest>) -> Result<Response<Config>, Status> {
        rpc!(self, req, "GetConfig", get_config, secrets::get_config)
    }

    async fn list_configs(
        &self,
        req: Request<ListConfigsRequest>,
    ) -> Result<Response<ListConfigsResponse>, Status> {
        rpc!(
            self,
            req,
            "ListConfigs",
            list_configs,
            secrets::list_configs
        )
    }

    async fn remove_config(
        &self,
        req: Request<RemoveConfigRequest>,
    ) -> Result<Response<RemoveConfigResponse>, Status> {
        rpc!(
            self,
            req,
            "RemoveConfig",
            remove_config,
            secrets::remove_config
        )
    }
}
