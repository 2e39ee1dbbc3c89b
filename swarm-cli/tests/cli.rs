//! Runs the `swarm` binary against a fake agent (LocalNode + Control over a unix socket,
//! in-memory objects) and checks what it prints and its exit status.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Output;
use std::sync::{Arc, Mutex};

use proto::control_server::{Control, ControlServer};
use proto::local_node_server::{LocalNode, LocalNodeServer};
use proto::*;
use swarm_manager::api::LocalCaller;
use swarm_manager::control::ControlApi;
use swarm_manager::router::Router;
use swarm_manager::store::Store;
use tonic::{Request, Response, Status};

const NOW_MS: i64 = 0; // replaced at startup with the real clock

#[derive(Default)]
struct State {
    nodes: Vec<Node>,
    services: Vec<Service>,
    tasks: Vec<Task>,
    cluster: Cluster,
    next: u64,
    in_swarm: bool,
    /// Service updates that will find the service written by someone else first (the way the
    /// allocator writes a new service's endpoint), one version bump each.
    concurrent_writes: usize,
}

/// The fake agent: services, tasks, nodes and the cluster in memory; networks served by the
/// managers' real Control API over an in-memory store (their validation and messages).
#[derive(Clone)]
struct Fake(Arc<Mutex<State>>, ControlApi);

impl Default for Fake {
    fn default() -> Self {
        Fake(
            Arc::default(),
            ControlApi::new(Store::memory(), Router::local()),
        )
    }
}

/// A request as the agent relays it from its local socket.
fn relayed<T>(r: Request<T>) -> Request<T> {
    let mut r = Request::new(r.into_inner());
    r.extensions_mut().insert(LocalCaller);
    r
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(NOW_MS)
}

fn meta(version: u64, created: i64) -> Option<Meta> {
    Some(Meta {
        version,
        created_at: created,
        updated_at: created,
    })
}

fn node(id: &str, host: &str, leader: bool) -> Node {
    Node {
        id: id.into(),
        meta: meta(1, now_ms() - 600_000),
        spec: Some(NodeSpec {
            labels: BTreeMap::new(),
            desired_role: NodeRole::Manager as i32,
            availability: NodeAvailability::Active as i32,
        }),
        description: Some(NodeDescription {
            hostname: host.into(),
            engine_version: "0.1.0".into(),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: NodeState::Ready as i32,
            message: String::new(),
            addr: "10.0.0.1".into(),
        }),
        manager_status: Some(ManagerStatus {
            raft_id: 1,
            addr: "10.0.0.1:2377".into(),
            leader,
            reachability: Reachability::Reachable as i32,
        }),
        role: NodeRole::Manager as i32,
        attachments: vec![],
        port_conflicts: vec![],
    }
}

impl State {
    fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{:0>22}", self.next)
    }

    fn find_service(&self, r: &str) -> Result<usize, Status> {
        self.services
            .iter()
            .position(|s| s.id == r || s.name() == r || (r.len() >= 3 && s.id.starts_with(r)))
            .ok_or_else(|| Status::not_found(format!("service {r} not found")))
    }

    /// The orchestrator, scheduler and agent in one step: every slot gets a running task.
    fn reconcile(&mut self, idx: usize) {
        let svc = self.services[idx].clone();
        let spec_task = svc.spec.as_ref().and_then(|s| s.task.clone());
        let slots: Vec<(u64, String)> = match svc.replicas() {
            Some(n) => (1..=n)
                .map(|i| (i, "node1id0000000000000000001".to_string()))
                .collect(),
            None => self.nodes.iter().map(|n| (0, n.id.clone())).collect(),
        };
        for t in self.tasks.iter_mut().filter(|t| t.service_id == svc.id) {
            let keep = slots
                .iter()
                .any(|(s, n)| *s == t.slot && (t.slot != 0 || *n == t.node_id))
                && t.spec == spec_task;
            if !keep && t.desired_state == TaskState::Running as i32 {
                t.desired_state = TaskState::Shutdown as i32;
                if let Some(st) = t.status.as_mut() {
                    st.state = TaskState::Shutdown as i32;
                }
            }
        }
        for (slot, node_id) in slots {
            let live = self.tasks.iter().any(|t| {
                t.service_id == svc.id
                    && t.slot == slot
                    && (slot != 0 || t.node_id == node_id)
                    && t.desired_state == TaskState::Running as i32
            });
            if !live {
                let id = self.id("task");
                self.tasks.push(Task {
                    id,
                    meta: meta(1, now_ms()),
                    service_id: svc.id.clone(),
                    slot,
                    node_id,
                    spec: spec_task.clone(),
                    spec_version: svc.spec_version,
                    service_name: svc.name().into(),
                    status: Some(TaskStatus {
                        timestamp: now_ms() - 125_000,
                        state: TaskState::Running as i32,
                        ..Default::default()
                    }),
                    desired_state: TaskState::Running as i32,
                    endpoint: None,
                    networks: Vec::new(),
                    started_at: 0,
                    job_iteration: 0,
                });
            }
        }
    }
}

#[tonic::async_trait]
impl LocalNode for Fake {
    async fn init(&self, r: Request<InitRequest>) -> Result<Response<InitResponse>, Status> {
        let r = r.into_inner();
        // The agent's own checks of the options.
        swarm_manager::control::validate_init_request(&r)?;
        let mut s = self.0.lock().unwrap();
        if s.in_swarm && !r.force_new_cluster {
            return Err(Status::failed_precondition(
                "This node is already part of a swarm. Use \"swarm leave\" to leave this swarm and join another one.",
            ));
        }
        // With --force-new-cluster the settings left at their defaults are not sent (the
        // forced cluster keeps the swarm's own).
        let defaults = if r.force_new_cluster {
            (0, 0, 0)
        } else {
            (5, 5000, 2160 * 3600 * 1000)
        };
        if (
            r.task_history_limit,
            r.dispatcher_heartbeat_ms,
            r.cert_expiry_ms,
        ) != defaults
        {
            return Err(Status::invalid_argument("unexpected defaults"));
        }
        s.in_swarm = true;
        Ok(Response::new(InitResponse {
            node_id: "node1id0000000000000000001".into(),
            worker_token: "SWMTKN-1-abc-worker".into(),
            manager_addr: "10.0.0.1:2377".into(),
            unlock_key: if r.autolock {
                "SWMKEY-1-init".into()
            } else {
                String::new()
            },
        }))
    }
    async fn join(
        &self,
        _r: Request<JoinSwarmRequest>,
    ) -> Result<Response<JoinSwarmResponse>, Status> {
        Ok(Response::new(JoinSwarmResponse {
            node_id: "x".into(),
            role: NodeRole::Worker as i32,
        }))
    }
    async fn leave(
        &self,
        r: Request<LeaveSwarmRequest>,
    ) -> Result<Response<LeaveSwarmResponse>, Status> {
        if !r.into_inner().force {
            return Err(Status::failed_precondition(
                "You are attempting to leave the swarm on a node that is participating as a manager. Use `--force` to ignore this message.",
            ));
        }
        Ok(Response::new(LeaveSwarmResponse {}))
    }
    async fn info(&self, _r: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            local_node_state: "active".into(),
            node_id: "node1id0000000000000000001".into(),
            cluster_id: "cluster1".into(),
            role: NodeRole::Manager as i32,
            control_available: true,
            managers: vec!["10.0.0.1:2377".into()],
            error: String::new(),
            node_addr: "10.0.0.1:2377".into(),
            raft_heartbeat_ms: 150,
            raft_election_timeout_min_ms: 500,
            raft_election_timeout_max_ms: 750,
        }))
    }
    async fn network_view(
        &self,
        _r: Request<NetworkViewRequest>,
    ) -> Result<Response<NetworkViewResponse>, Status> {
        Ok(Response::new(NetworkViewResponse::default()))
    }
    async fn unlock(&self, _r: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        Err(Status::unimplemented("the fake agent is never locked"))
    }
}

#[tonic::async_trait]
impl Control for Fake {
    async fn get_node(&self, r: Request<GetNodeRequest>) -> Result<Response<Node>, Status> {
        let id = r.into_inner().node_id;
        let s = self.0.lock().unwrap();
        s.nodes
            .iter()
            .find(|n| n.id == id || n.hostname() == id || n.id.starts_with(&id))
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("node {id} not found")))
    }
    async fn list_nodes(
        &self,
        _r: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        Ok(Response::new(ListNodesResponse {
            nodes: self.0.lock().unwrap().nodes.clone(),
        }))
    }
    async fn update_node(&self, r: Request<UpdateNodeRequest>) -> Result<Response<Node>, Status> {
        let r = r.into_inner();
        let mut s = self.0.lock().unwrap();
        let n = s
            .nodes
            .iter_mut()
            .find(|n| n.id == r.node_id)
            .ok_or_else(|| Status::not_found("node not found"))?;
        if n.meta.as_ref().map_or(0, |m| m.version) != r.node_version {
            return Err(proto::out_of_sequence::status(
                proto::out_of_sequence::PREFIX,
            ));
        }
        n.spec = r.spec;
        n.meta.as_mut().unwrap().version += 1;
        Ok(Response::new(n.clone()))
    }
    async fn remove_node(
        &self,
        r: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeResponse>, Status> {
        let r = r.into_inner();
        Err(Status::failed_precondition(format!(
            "node {} is not down and can't be removed",
            r.node_id
        )))
    }
    async fn create_service(
        &self,
        r: Request<CreateServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        let spec = r.into_inner().spec.unwrap_or_default();
        let mut s = self.0.lock().unwrap();
        let id = s.id("svc");
        let mut spec = spec;
        if spec.name.is_empty() {
            spec.name = format!("auto{}", s.next);
        }
        let ports = spec
            .endpoint
            .as_ref()
            .map(|e| {
                e.ports
                    .iter()
                    .map(|p| PortConfig {
                        published_port: if p.published_port == 0 {
                            30000
                        } else {
                            p.published_port
                        },
                        ..p.clone()
                    })
                    .collect()
            })
            .unwrap_or_default();
        let svc = Service {
            id,
            meta: meta(1, now_ms()),
            spec: Some(spec),
            previous_spec: None,
            endpoint: Some(Endpoint {
                spec: None,
                ports,
                ..Default::default()
            }),
            spec_version: 1,
            update_status: None,
            previous_spec_version: 0,
            job_status: None,
        };
        s.services.push(svc.clone());
        let idx = s.services.len() - 1;
        s.reconcile(idx);
        Ok(Response::new(svc))
    }
    async fn get_service(
        &self,
        r: Request<GetServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        let s = self.0.lock().unwrap();
        let i = s.find_service(&r.into_inner().service_id)?;
        Ok(Response::new(s.services[i].clone()))
    }
    async fn list_services(
        &self,
        r: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        let s = self.0.lock().unwrap();
        // The counts as the managers make them (every node of the fake is up).
        let statuses = if r.into_inner().status {
            s.services
                .iter()
                .map(|svc| svc.task_status(&s.tasks, |_| true))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(ListServicesResponse {
            services: s.services.clone(),
            statuses,
        }))
    }
    async fn update_service(
        &self,
        r: Request<UpdateServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        let r = r.into_inner();
        let mut s = self.0.lock().unwrap();
        let i = s.find_service(&r.service_id)?;
        if s.concurrent_writes > 0 {
            s.concurrent_writes -= 1;
            s.services[i].meta.as_mut().unwrap().version += 1;
        }
        let svc = &mut s.services[i];
        if svc.meta.as_ref().map_or(0, |m| m.version) != r.service_version {
            return Err(proto::out_of_sequence::status(
                proto::out_of_sequence::PREFIX,
            ));
        }
        if r.rollback {
            // The managers roll back with the spec they kept.
            let Some(previous) = svc.previous_spec.take() else {
                return Err(Status::failed_precondition(format!(
                    "service {} does not have a previous spec",
                    svc.id
                )));
            };
            svc.spec = Some(previous);
            svc.update_status = Some(UpdateStatus {
                state: UpdateState::RollbackStarted as i32,
                started_at: now_ms() - 125_000,
                completed_at: 0,
                message: "manually requested rollback".into(),
            });
        } else {
            svc.previous_spec = svc.spec.take();
            svc.spec = r.spec;
        }
        svc.spec_version += 1;
        svc.meta.as_mut().unwrap().version += 1;
        let out = svc.clone();
        s.reconcile(i);
        Ok(Response::new(out))
    }
    async fn remove_service(
        &self,
        r: Request<RemoveServiceRequest>,
    ) -> Result<Response<RemoveServiceResponse>, Status> {
        let mut s = self.0.lock().unwrap();
        let i = s.find_service(&r.into_inner().service_id)?;
        let svc = s.services.remove(i);
        s.tasks.retain(|t| t.service_id != svc.id);
        Ok(Response::new(RemoveServiceResponse {}))
    }
    async fn get_task(&self, _r: Request<GetTaskRequest>) -> Result<Response<Task>, Status> {
        Err(Status::unimplemented("get_task"))
    }
    async fn list_tasks(
        &self,
        r: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let r = r.into_inner();
        let s = self.0.lock().unwrap();
        let tasks = s
            .tasks
            .iter()
            .filter(|t| r.service_ids.is_empty() || r.service_ids.contains(&t.service_id))
            .filter(|t| r.node_ids.is_empty() || r.node_ids.contains(&t.node_id))
            .filter(|t| r.desired_states.is_empty() || r.desired_states.contains(&t.desired_state))
            .cloned()
            .collect();
        Ok(Response::new(ListTasksResponse { tasks }))
    }
    async fn create_network(
        &self,
        r: Request<CreateNetworkRequest>,
    ) -> Result<Response<Network>, Status> {
        self.1.create_network(relayed(r)).await
    }
    async fn get_network(
        &self,
        r: Request<GetNetworkRequest>,
    ) -> Result<Response<Network>, Status> {
        self.1.get_network(relayed(r)).await
    }
    async fn list_networks(
        &self,
        r: Request<ListNetworksRequest>,
    ) -> Result<Response<ListNetworksResponse>, Status> {
        self.1.list_networks(relayed(r)).await
    }
    async fn remove_network(
        &self,
        r: Request<RemoveNetworkRequest>,
    ) -> Result<Response<RemoveNetworkResponse>, Status> {
        self.1.remove_network(relayed(r)).await
    }
    async fn get_cluster(
        &self,
        _r: Request<GetClusterRequest>,
    ) -> Result<Response<Cluster>, Status> {
        Ok(Response::new(self.0.lock().unwrap().cluster.clone()))
    }
    // Secrets and configs are tested against the real Control API (swarm-manager) and in
    // the lab; the CLI's tables and parsing in its unit tests.
    async fn create_secret(
        &self,
        _r: Request<CreateSecretRequest>,
    ) -> Result<Response<proto::Secret>, Status> {
        Err(Status::unimplemented("the fake agent has no secrets"))
    }
    async fn get_secret(
        &self,
        _r: Request<GetSecretRequest>,
    ) -> Result<Response<proto::Secret>, Status> {
        Err(Status::unimplemented("the fake agent has no secrets"))
    }
    async fn list_secrets(
        &self,
        _r: Request<ListSecretsRequest>,
    ) -> Result<Response<ListSecretsResponse>, Status> {
        Err(Status::unimplemented("the fake agent has no secrets"))
    }
    async fn remove_secret(
        &self,
        _r: Request<RemoveSecretRequest>,
    ) -> Result<Response<RemoveSecretResponse>, Status> {
        Err(Status::unimplemented("the fake agent has no secrets"))
    }
    async fn create_config(
        &self,
        _r: Request<CreateConfigRequest>,
    ) -> Result<Response<proto::Config>, Status> {
        Err(Status::unimplemented("the fake agent has no configs"))
    }
    async fn get_config(
        &self,
        _r: Request<GetConfigRequest>,
    ) -> Result<Response<proto::Config>, Status> {
        Err(Status::unimplemented("the fake agent has no configs"))
    }
    async fn list_configs(
        &self,
        _r: Request<ListConfigsRequest>,
    ) -> Result<Response<ListConfigsResponse>, Status> {
        Err(Status::unimplemented("the fake agent has no configs"))
    }
    async fn remove_config(
        &self,
        _r: Request<RemoveConfigRequest>,
    ) -> Result<Response<RemoveConfigResponse>, Status> {
        Err(Status::unimplemented("the fake agent has no configs"))
    }
    async fn get_unlock_key(
        &self,
        _r: Request<GetUnlockKeyRequest>,
    ) -> Result<Response<GetUnlockKeyResponse>, Status> {
        Ok(Response::new(GetUnlockKeyResponse {
            unlock_key: self.0.lock().unwrap().cluster.unlock_key.clone(),
            version: 0,
        }))
    }
    async fn update_cluster(
        &self,
        r: Request<UpdateClusterRequest>,
    ) -> Result<Response<Cluster>, Status> {
        let r = r.into_inner();
        let mut s = self.0.lock().unwrap();
        if s.cluster.meta.as_ref().map_or(0, |m| m.version) != r.cluster_version {
            return Err(proto::out_of_sequence::status(
                proto::out_of_sequence::PREFIX,
            ));
        }
        let tokens = s
            .cluster
            .root_ca
            .as_mut()
            .and_then(|ca| ca.join_tokens.as_mut())
            .ok_or_else(|| Status::internal("no tokens"))?;
        if r.rotate_worker_token {
            tokens.worker = "SWMTKN-1-abc-worker2".into();
        }
        if r.rotate_manager_token {
            tokens.manager = "SWMTKN-1-abc-manager2".into();
        }
        if let Some(spec) = r.spec {
            s.cluster.spec = Some(spec);
        }
        let autolock = s
            .cluster
            .spec
            .as_ref()
            .and_then(|sp| sp.encryption_config.as_ref())
            .is_some_and(|e| e.auto_lock_managers);
        if !autolock {
            s.cluster.unlock_key.clear();
        } else if r.rotate_manager_unlock_key {
            s.cluster.unlock_key = "SWMKEY-1-rotated".into();
        } else if s.cluster.unlock_key.is_empty() {
            s.cluster.unlock_key = "SWMKEY-1-first".into();
        }
        s.cluster.meta.as_mut().unwrap().version += 1;
        Ok(Response::new(s.cluster.clone()))
    }
}

struct Agent {
    socket: PathBuf,
    fake: Fake,
    _rt: tokio::runtime::Runtime,
}

impl Agent {
    fn start(name: &str) -> Agent {
        let dir = std::env::temp_dir().join(format!("swarm-cli-it-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("swarm.sock");
        let fake = Fake::default();
        {
            let mut s = fake.0.lock().unwrap();
            let mut worker = node("node2id0000000000000000002", "node-2", false);
            worker.manager_status = None;
            worker.role = NodeRole::Worker as i32;
            worker.spec.as_mut().unwrap().desired_role = NodeRole::Worker as i32;
            s.nodes = vec![worker, node("node1id0000000000000000001", "node-1", true)];
            s.cluster = Cluster {
                id: "cluster1".into(),
                meta: meta(3, 0),
                spec: Some(ClusterSpec::default()),
                root_ca: Some(RootCa {
                    join_tokens: Some(JoinTokens {
                        worker: "SWMTKN-1-abc-worker".into(),
                        manager: "SWMTKN-1-abc-manager".into(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(async { tokio::net::UnixListener::bind(&socket) })
            .unwrap();
        let f = fake.clone();
        rt.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(LocalNodeServer::new(f.clone()))
                .add_service(ControlServer::new(f))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await
        });
        Agent {
            socket,
            fake,
            _rt: rt,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_swarm"))
            .args(args)
            .env("SWARM_HOST", format!("unix://{}", self.socket.display()))
            .env("SWARM_CONVERGE_MONITOR", "0s")
            .output()
            .unwrap()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn swarm_commands() {
    let a = Agent::start("swarm");
    let o = a.run(&["init"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "Swarm initialized: current node (node1id0000000000000000001) is now a manager.\n\n\
         To add a worker to this swarm, run the following command:\n\n    \
         swarm join --token SWMTKN-1-abc-worker 10.0.0.1:2377\n\n\
         To add a manager to this swarm, run 'swarm join-token manager' and follow the instructions.\n"
    );
    let o = a.run(&["init"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("Error response from daemon: This node is already part of a swarm.")
    );

    let o = a.run(&["join-token", "-q", "worker"]);
    assert_eq!(stdout(&o), "SWMTKN-1-abc-worker\n");
    let o = a.run(&["join-token", "manager"]);
    assert_eq!(
        stdout(&o),
        "To add a manager to this swarm, run the following command:\n\n    swarm join --token SWMTKN-1-abc-manager 10.0.0.1:2377\n\n"
    );
    let o = a.run(&["join-token", "--rotate", "worker"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("Successfully rotated worker join token.\n\nTo add a worker"));
    assert!(stdout(&o).contains("SWMTKN-1-abc-worker2"));
    let o = a.run(&["join-token", "admin"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "Error: unknown role admin\n");

    let o = a.run(&["join", "--token", "T", "10.0.0.1:2377"]);
    assert_eq!(stdout(&o), "This node joined a swarm as a worker.\n");
    let o = a.run(&["join", "--token", "T"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("swarm: 'swarm join' requires 1 argument"));

    let o = a.run(&["leave"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("Error response from daemon: You are attempting to leave"));
    let o = a.run(&["leave", "--force"]);
    assert_eq!(stdout(&o), "Node left the swarm.\n");

    let o = a.run(&["info"]);
    assert!(stdout(&o)
        .starts_with("Swarm: active\n NodeID: node1id0000000000000000001\n Is Manager: true\n"));
    let o = a.run(&["info", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["role"], "NODE_ROLE_MANAGER");
}

#[test]
fn autolock_commands_print_docker_texts() {
    let a = Agent::start("autolock");
    let key_text = |k: &str| {
        format!(
            "To unlock a swarm manager after it restarts, run the `swarm unlock`\n\
             command and provide the following key:\n\n    {k}\n\n\
             Please remember to store this key in a password manager, since without it you\n\
             will not be able to restart the manager.\n"
        )
    };
    let o = a.run(&["init", "--autolock"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).ends_with(&format!(
            "'swarm join-token manager' and follow the instructions.\n\n{}",
            key_text("SWMKEY-1-init")
        )),
        "{}",
        stdout(&o)
    );

    let o = a.run(&["unlock-key"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "Error: no unlock key is set\n");
    let o = a.run(&["unlock-key", "--rotate"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "Error: cannot rotate because autolock is not turned on\n"
    );

    let o = a.run(&["update", "--autolock=true"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!("Swarm updated.\n{}", key_text("SWMKEY-1-first"))
    );
    // Already on: no key shown.
    let o = a.run(&["update", "--autolock"]);
    assert_eq!(stdout(&o), "Swarm updated.\n");
    let o = a.run(&["unlock-key", "-q"]);
    assert_eq!(stdout(&o), "SWMKEY-1-first\n");
    let o = a.run(&["unlock-key"]);
    assert_eq!(stdout(&o), key_text("SWMKEY-1-first"));
    let o = a.run(&["unlock-key", "--rotate"]);
    assert_eq!(
        stdout(&o),
        format!(
            "Successfully rotated manager unlock key.\n\n{}",
            key_text("SWMKEY-1-rotated")
        )
    );
    let o = a.run(&["unlock-key", "--rotate", "-q"]);
    assert_eq!(stdout(&o), "SWMKEY-1-rotated\n");

    let o = a.run(&["update", "--autolock=false"]);
    assert_eq!(stdout(&o), "Swarm updated.\n");
    let o = a.run(&["unlock-key", "-q"]);
    assert_eq!(stderr(&o), "Error: no unlock key is set\n");
    let o = a.run(&["update", "--autolock=maybe"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));

    // Only a locked node asks for a key.
    let o = a.run(&["unlock"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "Error: swarm is not locked\n");
}

#[test]
fn force_new_cluster_reaches_the_agent_without_the_default_settings() {
    let a = Agent::start("force");
    // A setting with it is refused by the agent: the forced cluster keeps the swarm's own.
    let o = a.run(&["init", "--force-new-cluster", "--task-history-limit", "10"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "Error response from daemon: --task-history-limit cannot be used with --force-new-cluster: the new cluster keeps the settings of the swarm it is made from; run swarm init --force-new-cluster without --task-history-limit\n"
    );
    assert_eq!(stdout(&o), "");
    let o = a.run(&["init", "--force-new-cluster", "--data-path-port", "5000"]);
    assert!(stderr(&o).contains("--data-path-port cannot be used with --force-new-cluster"));

    // The defaults are not sent (the fake agent checks it), and the node answers as init.
    let o = a.run(&[
        "init",
        "--force-new-cluster",
        "--advertise-addr",
        "10.0.0.1",
    ]);
    assert_eq!(stderr(&o), "");
    assert!(stdout(&o).starts_with(
        "Swarm initialized: current node (node1id0000000000000000001) is now a manager.\n"
    ));
    // On a node in a swarm too (the agent rebuilds the swarm from this manager's state).
    let o = a.run(&["init", "--force-new-cluster"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = a.run(&["init"]);
    assert!(
        stderr(&o).contains("already part of a swarm"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn unsupported_options_are_refused_by_the_agent() {
    let a = Agent::start("refusals");
    for args in [
        &[
            "network",
            "create",
            "-d",
            "overlay",
            "-o",
            "encrypted",
            "secret",
        ][..],
        &["network", "create", "--opt", "encrypted=true", "secret"],
        &["network", "create", "-o", "encrypted=false", "secret"],
    ] {
        let o = a.run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert_eq!(
            stderr(&o),
            "Error response from daemon: network secret: encrypted overlay networks are not supported yet: traffic between nodes is not encrypted; create the network without -o encrypted\n",
            "{args:?}"
        );
    }
    let o = a.run(&[
        "network",
        "create",
        "-o",
        "com.docker.network.driver.overlay.vxlanid_list=4097",
        "vx",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "Error response from daemon: network vx: driver option \"com.docker.network.driver.overlay.vxlanid_list\" is not supported; the supported options are: com.docker.network.driver.mtu\n"
    );
    let o = a.run(&["network", "ls", "-q"]);
    assert_eq!(stdout(&o), "", "nothing was created");

    // One ingress network at a time, with Docker's words.
    let o = a.run(&["network", "create", "-d", "overlay", "--ingress", "ingress"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = a.run(&["network", "create", "--ingress", "another-ingress"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(") is already present: a swarm has one ingress network; remove it first (swarm network rm ingress) to replace it"),
        "{}",
        stderr(&o)
    );
    // Inspect: the endpoints this node's view holds (none here).
    let o = a.run(&["network", "inspect", "ingress"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v[0]["spec"]["ingress"], true);
    assert_eq!(v[0]["Containers"], serde_json::json!({}));
    let o = a.run(&["network", "rm", "--force", "ingress"]);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "ingress\n"),
        "{}",
        stderr(&o)
    );
    let o = a.run(&["network", "create", "--ingress", "new-ingress"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // Ports the data plane cannot carry are refused before anything is sent.
    for (p, want) in [
        ("9000:9000/sctp", "sctp ports cannot be published yet"),
        (
            "mode=host,target=80",
            "dynamic host ports are not supported yet",
        ),
        (
            "mode=host,published=8080,target=80,source-ip=preserve",
            "source-ip only applies to mode=ingress",
        ),
    ] {
        let o = a.run(&["service", "create", "-d", "-p", p, "nginx"]);
        assert_eq!(o.status.code(), Some(125), "{p}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{p}: {}", stderr(&o));
    }
    assert!(a.fake.0.lock().unwrap().services.is_empty());
}

#[test]
fn node_commands() {
    let a = Agent::start("node");
    let o = a.run(&["node", "ls"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "ID                             HOSTNAME   STATUS    AVAILABILITY   MANAGER STATUS   ENGINE VERSION\n\
         node1id0000000000000000001 *   node-1     Ready     Active         Leader           0.1.0\n\
         node2id0000000000000000002     node-2     Ready     Active                          0.1.0\n"
    );
    let o = a.run(&["node", "ls", "-q"]);
    assert_eq!(
        stdout(&o),
        "node1id0000000000000000001\nnode2id0000000000000000002\n"
    );

    let o = a.run(&[
        "node",
        "update",
        "--availability",
        "drain",
        "--label-add",
        "zone=a",
        "node-2",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "node-2\n");
    let o = a.run(&["node", "inspect", "node-2"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v[0]["spec"]["availability"], "NODE_AVAILABILITY_DRAIN");
    assert_eq!(v[0]["spec"]["labels"]["zone"], "a");
    let o = a.run(&["node", "inspect", "--pretty", "self"]);
    assert!(
        stdout(&o).starts_with("ID:\t\t\tnode1id0000000000000000001\nHostname:"),
        "{}",
        stdout(&o)
    );
    let o = a.run(&["node", "inspect", "ghost"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "Error: No such node: ghost\n");
    assert_eq!(stdout(&o), "[]\n");

    let o = a.run(&["node", "promote", "node-2"]);
    assert_eq!(
        stdout(&o),
        "Node node-2 promoted to a manager in the swarm.\n"
    );
    let o = a.run(&["node", "promote", "node-2"]);
    assert_eq!(stdout(&o), "Node node-2 is already a manager.\n");
    let o = a.run(&["node", "demote", "node-2"]);
    assert_eq!(stdout(&o), "Manager node-2 demoted in the swarm.\n");

    let o = a.run(&["node", "rm", "node-2"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "Error response from daemon: node node-2 is not down and can't be removed\n"
    );

    let o = a.run(&["node", "ps"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "ID        NAME      IMAGE     NODE      DESIRED STATE   CURRENT STATE   ERROR     PORTS\n"
    );
}

#[test]
fn service_commands() {
    let a = Agent::start("service");
    let o = a.run(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "-p",
        "8080:80",
        "nginx:1.25",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    let id = lines.next().unwrap().to_string();
    assert_eq!(id.len(), 25);
    let rest: Vec<&str> = lines.collect();
    assert!(
        rest.contains(&"overall progress: 2 out of 2 tasks"),
        "{out}"
    );
    assert!(rest.contains(&"1/2: running"), "{out}");
    assert_eq!(rest.last(), Some(&"verify: Service converged"), "{out}");

    let o = a.run(&[
        "service", "create", "-d", "--mode", "global", "--name", "agent", "busybox", "sleep", "1d",
    ]);
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));

    let o = a.run(&["service", "ls"]);
    assert_eq!(
        stdout(&o),
        format!(
            "ID             NAME      MODE         REPLICAS   IMAGE        PORTS\n\
             {}   agent     global       2/2        busybox      \n\
             {}   web       replicated   2/2        nginx:1.25   *:8080->80/tcp\n",
            &a.fake.0.lock().unwrap().services[1].id[..12],
            &id[..12]
        )
    );
    let o = a.run(&["service", "ls", "--format", "json"]);
    let first: serde_json::Value =
        serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
    assert_eq!(first["spec"]["name"], "agent");

    let o = a.run(&["service", "update", "--image", "nginx:1.26", "web"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("web\n"));
    assert!(stdout(&o).ends_with("verify: Service converged\n"));

    let o = a.run(&["service", "ps", "web"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(
        lines[0].starts_with("ID             NAME        IMAGE"),
        "{out}"
    );
    assert!(
        lines[1].contains(" web.1 ")
            && lines[1].contains("nginx:1.26")
            && lines[1].contains("Running 2 minutes ago"),
        "{out}"
    );
    assert!(
        lines[2].contains(" \\_ web.1 ")
            && lines[2].contains("nginx:1.25")
            && lines[2].contains("Shutdown"),
        "{out}"
    );
    assert!(lines[3].contains(" web.2 "), "{out}");
    let o = a.run(&[
        "service",
        "ps",
        "-q",
        "--filter",
        "desired-state=running",
        "web",
    ]);
    assert_eq!(stdout(&o).lines().count(), 2);

    let o = a.run(&["service", "scale", "web=3", "agent=2"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "web scaled to 3\n");
    assert_eq!(
        stderr(&o),
        "agent: scale can only be used with replicated or replicated-job mode\n"
    );
    let o = a.run(&["service", "scale", "-d", "web=1"]);
    assert_eq!(stdout(&o), "web scaled to 1\n");
    // Someone writes the service between the CLI's read and write: the change is made again
    // on a fresh read; a service that keeps moving is reported.
    a.fake.0.lock().unwrap().concurrent_writes = 2;
    let o = a.run(&["service", "scale", "-d", "web=2"]);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "web scaled to 2\n"),
        "{}",
        stderr(&o)
    );
    a.fake.0.lock().unwrap().concurrent_writes = 100;
    let o = a.run(&["service", "scale", "-d", "web=3"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("update out of sequence"),
        "{}",
        stderr(&o)
    );
    a.fake.0.lock().unwrap().concurrent_writes = 0;

    let o = a.run(&["service", "inspect", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "Error: No such service: nope\n");
    let o = a.run(&["service", "ps", "nope"]);
    assert_eq!(stderr(&o), "Error: No such service: nope\n");
    let o = a.run(&["service", "inspect", "--pretty", "web"]);
    assert!(
        stdout(&o).contains("ContainerSpec:\n Image:\t\tnginx:1.26\n"),
        "{}",
        stdout(&o)
    );

    let o = a.run(&[
        "service",
        "create",
        "--mode",
        "global",
        "--replicas",
        "2",
        "nginx",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "Error: replicas can only be used with replicated or replicated-job mode\n"
    );
    let o = a.run(&["service", "create", "--reserve-memory", "64X", "nginx"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("invalid size: '64X'"));

    let o = a.run(&["service", "rm", "web", "agent"]);
    assert_eq!(stdout(&o), "web\nagent\n");
    let o = a.run(&["service", "ls", "-q"]);
    assert_eq!(stdout(&o), "");
}

#[test]
fn update_policy_flags_and_rollback() {
    let a = Agent::start("policy");
    let o = a.run(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--replicas",
        "6",
        "--update-parallelism",
        "2",
        "--update-delay",
        "10s",
        "--update-failure-action",
        "rollback",
        "--update-order",
        "start-first",
        "--update-max-failure-ratio",
        "0.2",
        "--rollback-monitor",
        "20s",
        "nginx:1.25",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = a.run(&["service", "inspect", "--pretty", "web"]);
    let out = stdout(&o);
    assert!(
        out.contains(
            "UpdateConfig:\n Parallelism:\t2\n Delay:\t\t10s\n On failure:\trollback\n Monitoring Period: 5s\n Max failure ratio: 0.2\n Update order:      start-first\n"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "RollbackConfig:\n Parallelism:\t1\n On failure:\tpause\n Monitoring Period: 20s\n Max failure ratio: 0\n Rollback order:    stop-first\nContainerSpec:"
        ),
        "{out}"
    );

    // Bad input: Docker's errors, and nothing is written.
    let before = a.fake.0.lock().unwrap().services.clone();
    for (args, code, want) in [
        (
            vec!["--update-parallelism", "-1"],
            125,
            "strconv.ParseUint: parsing \"-1\": invalid syntax",
        ),
        (
            vec!["--update-failure-action", "explode"],
            1,
            "unrecognized update failure action explode",
        ),
        (
            vec!["--rollback-failure-action", "rollback"],
            1,
            "unrecognized rollback failure action rollback",
        ),
        (
            vec!["--update-order", "sideways"],
            1,
            "unrecognized update order sideways",
        ),
        (
            vec!["--update-max-failure-ratio", "lots"],
            125,
            "strconv.ParseFloat: parsing \"lots\": invalid syntax",
        ),
    ] {
        let mut cmd = vec!["service", "update", "-d"];
        cmd.extend(args.iter().copied());
        cmd.push("web");
        let o = a.run(&cmd);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
        assert_eq!(a.fake.0.lock().unwrap().services, before, "{args:?}");
    }

    // Nothing to roll back to yet: the managers' error.
    let o = a.run(&["service", "rollback", "-d", "web"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("does not have a previous spec"),
        "{}",
        stderr(&o)
    );
    let o = a.run(&["service", "update", "-d", "--image", "nginx:1.26", "web"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // `update --rollback` is done by the managers; other flags are not applied.
    let o = a.run(&[
        "service",
        "update",
        "-d",
        "--rollback",
        "--update-parallelism",
        "3",
        "web",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "web\n");
    let o = a.run(&["service", "inspect", "--pretty", "web"]);
    let out = stdout(&o);
    assert!(
        out.contains("ContainerSpec:\n Image:\t\tnginx:1.25"),
        "{out}"
    );
    assert!(out.contains(" Parallelism:\t2\n"), "{out}");
    assert!(
        out.contains(
            "UpdateStatus:\n State:\t\trollback_started\n Started:\t2 minutes ago\n Message:\tmanually requested rollback\nPlacement:"
        ),
        "{out}"
    );
    let o = a.run(&["service", "rollback", "-d", "web"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a rollback leaves no previous spec"
    );
}

#[test]
fn no_agent() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_swarm"))
        .args(["-H", "unix:///nonexistent/swarm.sock", "service", "ls"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "Cannot connect to the swarm agent at unix:///nonexistent/swarm.sock: is swarm-agent running?\n"
    );
}

#[test]
fn rollback_progress_follows_the_managers_rollback() {
    let a = Agent::start("rbprogress");
    let create: Vec<&str> = "service create -d --name web --replicas 2 nginx:1.25"
        .split(' ')
        .collect();
    let o = a.run(&create);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = a.run(&["service", "update", "-d", "--image", "nginx:1.26", "web"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = a.run(&["service", "rollback", "web"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..2],
        ["web", "rollback: manually requested rollback"],
        "{out}"
    );
    assert!(
        lines.contains(&"overall progress: rolling back update: 2 out of 2 tasks"),
        "{out}"
    );
    assert_eq!(lines.last(), Some(&"verify: Service converged"), "{out}");

    // -q: the name only, the wait still done.
    let o = a.run(&["service", "update", "-d", "--image", "nginx:1.27", "web"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = a.run(&["service", "update", "-q", "--rollback", "web"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "web\n");
}
