//! [`ContainerdExecutor`]: one containerd container + task per swarm task.
//!
//! ACCEPTED → PREPARING (pull, unpack, spec, container, rootfs snapshot) → READY → STARTING
//! (Tasks.Create + Start) → RUNNING → COMPLETE / FAILED (Tasks.Wait), or SHUTDOWN when stopped
//! (stop signal, stop grace period, SIGKILL). Errors before STARTING are REJECTED, after FAILED.
//! With a health check the task stays STARTING until the check passes, and a task whose check
//! fails `retries` times in a row is stopped and FAILED ("unhealthy container").
//! Task, container, rootfs snapshot and network namespace are deleted when the task ends; the
//! task directory `<state_dir>/<task id>/` (logs, /etc files, anonymous volumes) stays until
//! the managers remove the task; named volumes ([`volumes`]) stay on the node. After an agent restart, [`Executor::adopt`] takes running containers over and
//! [`Executor::remove_orphans`] removes the ones no assignment covers.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetRequest, KillRequest, ListContainersRequest, StartRequest, WaitRequest,
};
use containerd_client::types::v1::Status as ProcStatus;
use containerd_client::types::Mount;
use futures::future::BoxFuture;
use proto::{Task, TaskState};
use tokio::sync::watch;

use super::client::{Containerd, ContainerdError};
use super::files;
use super::health::{self, HealthCheck, HealthState};
use super::image;
use super::metrics;
use super::spec::{self, SpecFiles, SpecOptions};
use super::volumes;
use crate::dependencies::TaskFiles;
use crate::executor::{host_resources, Executor, ExecutorDescription, TaskReporter};
use crate::network::Networking;

/// Default stop grace period (Docker's 10 s).
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// The runtime of every container.
pub const RUNTIME: &str = "io.containerd.runc.v2";
/// How long a task on a network keeps running after it was told to stop and before it gets
/// its stop signal: the managers mark it not serving at that moment, every node's load
/// balancer stops giving it new connections, and this is the time for that to reach them.
/// Docker has no such pause: connections that race with the stop fail there.
pub const LB_DRAIN: Duration = Duration::from_secs(1);

/// Runs tasks as containerd containers.
#[derive(Clone)]
pub struct ContainerdExecutor {
    inner: Arc<Inner>,
}

struct Inner {
    socket: PathBuf,
    namespace: String,
    cgroup_parent: String,
    snapshotter: String,
    state_dir: PathBuf,
    volumes_dir: PathBuf,
    netns_dir: PathBuf,
    /// Where each task with secrets or configs gets its tmpfs (`<dir>/<task id>`).
    files_dir: PathBuf,
    /// This executable: containerd's shim runs `<agent_exe> log-driver <task dir>`.
    agent_exe: PathBuf,
    client: std::sync::Mutex<Option<Containerd>>,
    /// One pull at a time per image reference: tasks of one service that start together on
    /// a node fetch the image once, the others wait and find it present.
    pulls: PullLocks,
    /// The node's data plane: gives tasks on networks their interfaces.
    network: Option<Arc<Networking>>,
    /// How images are pulled: insecure registries, registry CA.
    registries: image::RegistryAccess,
}

type PullLocks = std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

impl ContainerdExecutor {
    /// `socket`: containerd's gRPC socket; `namespace`: the containerd namespace of all objects
    /// (e.g. "swarm"); `cgroup_parent`: containers get the cgroup `/<cgroup_parent>/<task id>`.
    /// Snapshotter "overlayfs", task directories under `/var/lib/swarm/tasks`, network
    /// namespaces under `/run/swarm/netns`.
    pub fn new(socket: PathBuf, namespace: String, cgroup_parent: String) -> Self {
        std::sync::LazyLock::force(&metrics::METRICS);
        ContainerdExecutor {
            inner: Arc::new(Inner {
                socket,
                namespace,
                cgroup_parent,
                snapshotter: "overlayfs".into(),
                state_dir: PathBuf::from("/var/lib/swarm/tasks"),
                volumes_dir: PathBuf::from("/var/lib/swarm/volumes"),
                netns_dir: PathBuf::from("/run/swarm/netns"),
                files_dir: PathBuf::from("/run/swarm/files"),
                agent_exe: std::env::current_exe()
                    .unwrap_or_else(|_| PathBuf::from("/usr/bin/swarm-agent")),
                client: std::sync::Mutex::new(None),
                pulls: Default::default(),
                network: None,
                registries: Default::default(),
            }),
        }
    }

    /// Tasks attached to networks get their interfaces from `network`; without it such tasks
    /// are rejected.
    pub fn with_network(self, network: Arc<Networking>) -> Self {
        self.rebuild(|i| i.network = Some(network))
    }

    /// The executable containerd's shim runs as the log driver (`<exe> log-driver <dir>`);
    /// default: this process's own executable.
    pub fn with_log_driver(self, exe: PathBuf) -> Self {
        self.rebuild(|i| i.agent_exe = exe)
    }

    /// Where the tasks' network namespaces are bind-mounted (`<dir>/<task id>`).
    pub fn with_netns_dir(self, dir: PathBuf) -> Self {
        self.rebuild(|i| i.netns_dir = dir)
    }

    /// Where tasks' secret and config files are mounted (a tmpfs per task under it).
    pub fn with_files_dir(self, dir: PathBuf) -> Self {
        self.rebuild(|i| i.files_dir = dir)
    }

    /// Where the per-task directories with the `stdout`/`stderr` logs go.
    pub fn with_state_dir(self, dir: PathBuf) -> Self {
        self.rebuild(|i| i.state_dir = dir)
    }

    /// Where named volumes live (`<dir>/NAME/_data`, [`volumes`]).
    pub fn with_volumes_dir(self, dir: PathBuf) -> Self {
        self.rebuild(|i| i.volumes_dir = dir)
    }

    /// How registries are reached (insecure ones over plain HTTP, a registry CA).
    pub fn with_registries(self, registries: image::RegistryAccess) -> Self {
        self.rebuild(|i| i.registries = registries)
    }

    /// The containerd snapshotter ("overlayfs", "native" ...).
    pub fn with_snapshotter(self, snapshotter: &str) -> Self {
        self.rebuild(|i| i.snapshotter = snapshotter.to_string())
    }

    fn rebuild(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Inner {
            socket: self.inner.socket.clone(),
            namespace: self.inner.namespace.clone(),
            cgroup_parent: self.inner.cgroup_parent.clone(),
            snapshotter: self.inner.snapshotter.clone(),
            state_dir: self.inner.state_dir.clone(),
            volumes_dir: self.inner.volumes_dir.clone(),
            netns_dir: self.inner.netns_dir.clone(),
            files_dir: self.inner.files_dir.clone(),
            agent_exe: self.inner.agent_exe.clone(),
            client: std::sync::Mutex::new(None),
            pulls: Default::default(),
            network: self.inner.network.clone(),
            registries: self.inner.registries.clone(),
        };
        f(&mut inner);
        ContainerdExecutor {
            inner: Arc::new(inner),
        }
    }

    /// The log directory of a task.
    pub fn task_dir(&self, task_id: &str) -> PathBuf {
        self.inner.state_dir.join(task_id)
    }

    /// The shared (lazily connected) client.
    pub fn client(&self) -> Result<Containerd, ContainerdError> {
        let mut guard = self.inner.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = Containerd::lazy(&self.inner.socket, &self.inner.namespace)?;
        *guard = Some(c.clone());
        Ok(c)
    }
}

impl Executor for ContainerdExecutor {
    fn describe(&self) -> ExecutorDescription {
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("containerd.namespace".into(), self.inner.namespace.clone());
        ExecutorDescription {
            resources: host_resources(),
            engine_version: format!("swarm-agent {} (containerd)", env!("CARGO_PKG_VERSION")),
            engine_labels: labels,
        }
    }

    fn run(
        &self,
        task: Task,
        reporter: TaskReporter,
        stop: watch::Receiver<bool>,
    ) -> BoxFuture<'static, ()> {
        self.run_with(task, TaskFiles::default(), reporter, stop)
    }

    fn run_with(
        &self,
        task: Task,
        files: TaskFiles,
        reporter: TaskReporter,
        stop: watch::Receiver<bool>,
    ) -> BoxFuture<'static, ()> {
        let this = self.clone();
        Box::pin(async move { this.run_task(task, files, reporter, stop).await })
    }

    fn adopt(
        &self,
        task: Task,
        reporter: TaskReporter,
        stop: watch::Receiver<bool>,
    ) -> BoxFuture<'static, ()> {
        let this = self.clone();
        Box::pin(async move { this.adopt_task(task, reporter, stop).await })
    }

    fn remove_orphans(
        &self,
        keep: HashSet<String>,
        known: HashSet<String>,
    ) -> BoxFuture<'static, ()> {
        let this = self.clone();
        Box::pin(async move { this.remove_orphans_now(keep, known).await })
    }

    fn remove(&self, task_id: String) -> BoxFuture<'static, ()> {
        let this = self.clone();
        Box::pin(async move {
            if let Ok(cd) = this.client() {
                this.cleanup(&cd, &task_id).await;
            }
            let dir = this.task_dir(&task_id);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(task = %task_id, "removing {}: {e}", dir.display());
                }
            }
        })
    }
}

/// How a started task ended.
enum Ended {
    Exited(u32),
    Stopped,
    /// Its health check failed `retries` times in a row; it was stopped.
    Unhealthy(String),
}

/// What `prepare` made ready to start.
struct Prepared {
    mounts: Vec<Mount>,
    stop_signal: u32,
    health: Option<HealthCheck>,
}

/// Container label keeping the stop signal, for a restarted agent that adopts the container.
const STOP_SIGNAL_LABEL: &str = "io.swarm.stop-signal";

impl ContainerdExecutor {
    async fn run_task(
        &self,
        task: Task,
        files: TaskFiles,
        reporter: TaskReporter,
        mut stop: watch::Receiver<bool>,
    ) {
        reporter.report(TaskState::Accepted, "accepted");
        let cd = match self.client() {
            Ok(c) => c,
            Err(e) => return reporter.fail(TaskState::Rejected, &e.to_string(), 0),
        };
        if let Err(e) = cd.check().await {
            return reporter.fail(TaskState::Rejected, &e.to_string(), 0);
        }
        reporter.report(TaskState::Preparing, "preparing");
        let id = task.id.clone();
        let prepared = tokio::select! {
            r = self.prepare(&cd, &task, &files) => r,
            _ = wait_stop(&mut stop) => {
                self.cleanup(&cd, &id).await;
                return reporter.report(TaskState::Shutdown, "shutdown");
            }
        };
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.cleanup(&cd, &id).await;
                return reporter.fail(TaskState::Rejected, &e.to_string(), 0);
            }
        };
        reporter.report(TaskState::Ready, "ready");
        if *stop.borrow() {
            self.cleanup(&cd, &id).await;
            return reporter.report(TaskState::Shutdown, "shutdown");
        }
        reporter.report(TaskState::Starting, "starting");
        let grace = stop_grace(&task);
        let t0 = std::time::Instant::now();
        let ended = match self.start(&cd, &id, prepared.mounts).await {
            Ok(()) => {
                metrics::observe("start", t0.elapsed());
                let how = Supervision {
                    grace,
                    drain: self.drain(&task),
                    signal: prepared.stop_signal,
                    health: prepared.health,
                    running_reported: false,
                };
                self.supervise(&cd, &id, &mut stop, how, &reporter).await
            }
            Err(e) => Err(e),
        };
        self.cleanup(&cd, &id).await;
        report_end(&reporter, ended);
    }

    /// Takes over a container started by an earlier life of the agent.
    async fn adopt_task(
        &self,
        task: Task,
        reporter: TaskReporter,
        mut stop: watch::Receiver<bool>,
    ) {
        let id = task.id.clone();
        let lost = |why: &str| {
            reporter.fail(
                TaskState::Failed,
                &format!("the agent restarted and {why}"),
                -1,
            )
        };
        let cd = match self.client() {
            Ok(c) => c,
            Err(e) => return lost(&format!("cannot reach containerd: {e}")),
        };
        // containerd may be coming back at the same time as the agent.
        let mut reachable = cd.check().await;
        for _ in 0..60 {
            if reachable.is_ok() || *stop.borrow() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            reachable = cd.check().await;
        }
        if let Err(e) = reachable {
            return lost(&format!("cannot reach containerd: {e}"));
        }
        let status = match cd
            .tasks()
            .get(cd.req(GetRequest {
                container_id: id.clone(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(r) => r.into_inner().process,
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => {
                self.cleanup(&cd, &id).await;
                return lost(&format!("containerd Tasks.Get failed: {}", s.message()));
            }
        };
        let Some(process) = status else {
            self.cleanup(&cd, &id).await;
            return lost("its container is gone");
        };
        let ended = match ProcStatus::try_from(process.status) {
            Ok(ProcStatus::Running) | Ok(ProcStatus::Paused) | Ok(ProcStatus::Pausing) => {
                tracing::info!(task = %id, pid = process.pid, "adopted a running container");
                // Its interfaces are still there (and still forwarding): take them over.
                if let (Some(net), false) = (&self.inner.network, task.networks.is_empty()) {
                    let ns = crate::netns::path(&self.inner.netns_dir, &id);
                    if let Err(e) = net.attach(&task, &ns).await {
                        tracing::warn!(task = %id, "taking over the task's interfaces: {e}");
                    }
                }
                let how = Supervision {
                    grace: stop_grace(&task),
                    drain: self.drain(&task),
                    signal: self.adopted_stop_signal(&cd, &id).await,
                    health: HealthCheck::from_task(&task, &Default::default()),
                    running_reported: task.state() >= TaskState::Running,
                };
                self.supervise(&cd, &id, &mut stop, how, &reporter).await
            }
            Ok(ProcStatus::Stopped) => Ok(Ended::Exited(process.exit_status)),
            _ => {
                self.cleanup(&cd, &id).await;
                return lost("found its container not started");
            }
        };
        self.cleanup(&cd, &id).await;
        report_end(&reporter, ended);
    }

    /// Stops and deletes containers (and namespaces) of tasks not in `keep`; deletes the
    /// directories of tasks not in `known`.
    async fn remove_orphans_now(&self, keep: HashSet<String>, known: HashSet<String>) {
        let Ok(cd) = self.client() else { return };
        let containers = match cd
            .containers()
            .list(cd.req(ListContainersRequest { filters: vec![] }))
            .await
        {
            Ok(r) => r.into_inner().containers,
            Err(s) => {
                tracing::warn!("listing containers to remove orphans: {}", s.message());
                return;
            }
        };
        // Only containers the executor made: a container without the task label naming it
        // (the agent's own container, when it runs as one in this namespace) is not a task.
        let (tasks, foreign): (Vec<Container>, Vec<Container>) = containers
            .into_iter()
            .partition(|c| c.labels.get(spec::TASK_ID_LABEL) == Some(&c.id));
        for c in &foreign {
            tracing::debug!(container = %c.id, "not a task container: left alone");
        }
        let mut ids: HashSet<String> = tasks.into_iter().map(|c| c.id).collect();
        ids.extend(crate::netns::list(&self.inner.netns_dir));
        ids.extend(files::list(&self.inner.files_dir));
        let orphans: Vec<String> = ids.into_iter().filter(|id| !keep.contains(id)).collect();
        let stops = orphans.iter().map(|id| {
            let cd = cd.clone();
            async move {
                tracing::info!(task = %id, "removing a container no assignment covers");
                let signal = self.adopted_stop_signal(&cd, id).await;
                self.kill(&cd, id, signal).await;
                let wait = wait_exit(&cd, id);
                if tokio::time::timeout(DEFAULT_STOP_GRACE, wait)
                    .await
                    .is_err()
                {
                    self.kill(&cd, id, libc::SIGKILL as u32).await;
                    let _ = tokio::time::timeout(Duration::from_secs(10), wait_exit(&cd, id)).await;
                }
                self.cleanup(&cd, id).await;
            }
        });
        futures::future::join_all(stops).await;
        if let Ok(rd) = std::fs::read_dir(&self.inner.state_dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !known.contains(&name) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

impl ContainerdExecutor {
    /// [`LB_DRAIN`] for tasks on networks (their addresses may be load-balancing backends),
    /// nothing for the others.
    fn drain(&self, task: &Task) -> Duration {
        if self.inner.network.is_some() && !task.networks.is_empty() {
            LB_DRAIN
        } else {
            Duration::ZERO
        }
    }
}

fn stop_grace(task: &Task) -> Duration {
    task.spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .map(|c| c.stop_grace_period_ms)
        .filter(|ms| *ms > 0)
        .map_or(DEFAULT_STOP_GRACE, |ms| Duration::from_millis(ms as u64))
}

fn report_end(reporter: &TaskReporter, ended: Result<Ended, ContainerdError>) {
    match ended {
        Ok(Ended::Exited(0)) => reporter.report(TaskState::Complete, "finished"),
        Ok(Ended::Exited(code)) => reporter.fail(
            TaskState::Failed,
            &format!("task: non-zero exit ({code})"),
            code as i32,
        ),
        Ok(Ended::Stopped) => reporter.report(TaskState::Shutdown, "shutdown"),
        Ok(Ended::Unhealthy(output)) => {
            let output = output.trim();
            let err = if output.is_empty() {
                "unhealthy container".to_string()
            } else {
                format!("unhealthy container: {output}")
            };
            reporter.fail(TaskState::Failed, &err, 137)
        }
        Err(e) => reporter.fail(TaskState::Failed, &e.to_string(), 0),
    }
}

impl ContainerdExecutor {
    /// Pull, /etc files, spec, Containers.Create, Snapshots.Prepare → the rootfs mounts.
    async fn prepare(
        &self,
        cd: &Containerd,
        task: &Task,
        task_files: &TaskFiles,
    ) -> Result<Prepared, ContainerdError> {
        let container = task.spec.as_ref().and_then(|s| s.container.as_ref());
        let image_name = container.map(|c| c.image.clone()).unwrap_or_default();
        // The service's registry login (`--with-registry-auth`), for this pull only.
        let registries = self
            .inner
            .registries
            .with_registry_auth(
                container
                    .and_then(|c| c.pull_options.as_ref())
                    .map(|p| p.registry_auth.as_str()),
            )
            .map_err(|why| ContainerdError::Invalid(format!("task {}: {why}", task.id)))?;
        if image_name.is_empty() {
            return Err(ContainerdError::Invalid(format!(
                "task {} has no container image",
                task.id
            )));
        }
        let lock = {
            let mut locks = self.inner.pulls.lock().unwrap_or_else(|p| p.into_inner());
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(image_name.clone()).or_default().clone()
        };
        let guard = lock.lock().await;
        let t0 = std::time::Instant::now();
        let pulled = match image::pull(cd, &image_name, &self.inner.snapshotter, &registries).await
        {
            Ok(p) => {
                metrics::pulled(if p.fetched.is_empty() {
                    "present"
                } else {
                    "fetched"
                });
                metrics::observe("pull", t0.elapsed());
                p
            }
            Err(e) => {
                metrics::pulled("error");
                return Err(e);
            }
        };
        drop(guard);
        let t0 = std::time::Instant::now();
        let netns = crate::netns::create(&self.inner.netns_dir, &task.id)
            .map_err(|e| ContainerdError::Invalid(e.to_string()))?;
        if !task.networks.is_empty() {
            let Some(net) = &self.inner.network else {
                return Err(ContainerdError::Invalid(
                    "this node has no data plane for overlay networks (its swarm-agent runs without one): drain it, or constrain the service to other nodes".into(),
                ));
            };
            net.attach(task, &netns)
                .await
                .map_err(|e| ContainerdError::Invalid(format!("network attachment: {e}")))?;
        }
        let opts = SpecOptions {
            container_id: task.id.clone(),
            cgroup_parent: self.inner.cgroup_parent.clone(),
            netns_path: Some(netns.display().to_string()),
        };
        let dir = self.task_dir(&task.id);
        std::fs::create_dir_all(&dir).map_err(|e| ContainerdError::Io {
            what: format!("creating the task directory {}", dir.display()),
            source: e,
        })?;
        // The image's users and groups (for names, primary and supplementary groups).
        let etc = image::read_image_files(
            cd,
            &self.inner.snapshotter,
            &pulled.top_snapshot(),
            &["/etc/passwd", "/etc/group"],
        )
        .await?;
        let text = |b: &Option<Vec<u8>>| b.as_ref().map(|b| String::from_utf8_lossy(b).to_string());
        let etc_dir = dir.join("etc");
        let embedded_dns = self.inner.network.as_ref().is_some_and(|n| n.has_dns());
        spec::write_etc_files(&etc_dir, task, &spec::hostname(task), embedded_dns).map_err(
            |e| ContainerdError::Io {
                what: format!("writing /etc files in {}", etc_dir.display()),
                source: e,
            },
        )?;
        let mounts = container.map(|c| c.mounts.as_slice()).unwrap_or_default();
        let task_volumes = volumes::prepare(&self.inner.volumes_dir, &dir, mounts)?;
        if task_volumes.iter().any(|v| v.copy) && !pulled.top_snapshot().is_empty() {
            let vols = task_volumes.clone();
            image::in_image_view(
                cd,
                &self.inner.snapshotter,
                &pulled.top_snapshot(),
                move |root| volumes::copy_image_content(root, &vols),
            )
            .await?;
        }
        let files = SpecFiles {
            passwd: etc.first().and_then(text),
            group: etc.get(1).and_then(text),
            etc_dir: Some(etc_dir),
            volumes: volumes::by_target(&task_volumes),
        };
        let mut spec = spec::runtime_spec_with(task, &pulled.config, &opts, &files)?;
        let file_mounts = files::prepare(&self.inner.files_dir, &task.id, task_files)?;
        if let Some(m) = spec["mounts"].as_array_mut() {
            m.extend(file_mounts);
        }
        let spec_bytes = serde_json::to_vec(&spec)
            .map_err(|e| ContainerdError::Invalid(format!("encoding the runtime spec: {e}")))?;
        let stop_signal = spec::stop_signal(task, &pulled.config)? as u32;
        let mut labels = spec::container_labels(task);
        labels.insert(STOP_SIGNAL_LABEL.into(), stop_signal.to_string());
        let container = Container {
            id: task.id.clone(),
            labels,
            image: image_name.clone(),
            runtime: Some(Runtime {
                name: RUNTIME.into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: spec::SPEC_TYPE_URL.into(),
                value: spec_bytes,
            }),
            snapshotter: self.inner.snapshotter.clone(),
            snapshot_key: task.id.clone(),
            ..Default::default()
        };
        cd.containers()
            .create(cd.req(CreateContainerRequest {
                container: Some(container),
            }))
            .await
            .map_err(|s| ContainerdError::rpc(format!("Containers.Create {}", task.id), s))?;
        let mounts = cd
            .snapshots()
            .prepare(cd.req(PrepareSnapshotRequest {
                snapshotter: self.inner.snapshotter.clone(),
                key: task.id.clone(),
                parent: pulled.top_snapshot(),
                labels: HashMap::new(),
            }))
            .await
            .map_err(|s| ContainerdError::rpc(format!("Snapshots.Prepare {}", task.id), s))?
            .into_inner()
            .mounts;
        metrics::observe("create", t0.elapsed());
        Ok(Prepared {
            mounts,
            stop_signal,
            health: HealthCheck::from_task(task, &pulled.config),
        })
    }

    /// Tasks.Create + Start.
    async fn start(
        &self,
        cd: &Containerd,
        id: &str,
        mounts: Vec<Mount>,
    ) -> Result<(), ContainerdError> {
        let dir = self.task_dir(id);
        let log_uri = crate::logs::driver::stdio_uri(&self.inner.agent_exe, &dir);
        cd.tasks()
            .create(cd.req(CreateTaskRequest {
                container_id: id.to_string(),
                rootfs: mounts,
                stdin: String::new(),
                stdout: log_uri.clone(),
                stderr: log_uri,
                terminal: false,
                ..Default::default()
            }))
            .await
            .map_err(|s| ContainerdError::rpc(format!("Tasks.Create {id}"), s))?;
        cd.tasks()
            .start(cd.req(StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .map_err(|s| ContainerdError::rpc(format!("Tasks.Start {id}"), s))?;
        Ok(())
    }

    /// Reports RUNNING (at once, or once its health check passed), then waits for the
    /// container to exit; stops it (stop signal, grace period, SIGKILL) when `stop` turns true
    /// or its health check fails.
    async fn supervise(
        &self,
        cd: &Containerd,
        id: &str,
        stop: &mut watch::Receiver<bool>,
        how: Supervision,
        reporter: &TaskReporter,
    ) -> Result<Ended, ContainerdError> {
        let wait = wait_exit(cd, id);
        tokio::pin!(wait);
        let mut health = how.health.map(|check| {
            let (tx, rx) = watch::channel(HealthState::Starting);
            // Ends when `rx` is dropped (when this function returns).
            tokio::spawn(health::monitor(
                cd.clone(),
                id.to_string(),
                check,
                self.task_dir(id),
                tx,
            ));
            rx
        });
        let mut running_reported = how.running_reported;
        if health.is_none() && !running_reported {
            reporter.report(TaskState::Running, "started");
            running_reported = true;
        }
        let mut unhealthy = None;
        loop {
            tokio::select! {
                r = &mut wait => return r.map(Ended::Exited),
                _ = wait_stop(stop) => break,
                Some(state) = next_health(&mut health) => match state {
                    HealthState::Healthy if !running_reported => {
                        reporter.report(TaskState::Running, "started (healthy)");
                        running_reported = true;
                    }
                    HealthState::Unhealthy { output } => {
                        tracing::info!(task = id, "health check failed: stopping the container");
                        unhealthy = Some(output);
                        break;
                    }
                    _ => {}
                },
            }
        }
        drop(health);
        if unhealthy.is_none() && !how.drain.is_zero() {
            // Every node stops sending it new connections now (the managers said it is no
            // longer serving); give that a moment to arrive before the process hears of it.
            tokio::select! {
                r = &mut wait => return r.map(|_| Ended::Stopped),
                _ = tokio::time::sleep(how.drain) => {}
            }
        }
        let t0 = std::time::Instant::now();
        self.kill(cd, id, how.signal).await;
        if tokio::time::timeout(how.grace, &mut wait).await.is_err() {
            tracing::info!(task = id, "no exit within the stop grace period: SIGKILL");
            self.kill(cd, id, libc::SIGKILL as u32).await;
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut wait).await;
        }
        metrics::observe("stop", t0.elapsed());
        Ok(match unhealthy {
            Some(output) => Ended::Unhealthy(output),
            None => Ended::Stopped,
        })
    }

    /// The stop signal recorded on an adopted container (SIGTERM when missing).
    async fn adopted_stop_signal(&self, cd: &Containerd, id: &str) -> u32 {
        use containerd_client::services::v1::GetContainerRequest;
        cd.containers()
            .get(cd.req(GetContainerRequest { id: id.to_string() }))
            .await
            .ok()
            .and_then(|r| r.into_inner().container)
            .and_then(|c| c.labels.get(STOP_SIGNAL_LABEL).and_then(|v| v.parse().ok()))
            .unwrap_or(libc::SIGTERM as u32)
    }

    async fn kill(&self, cd: &Containerd, id: &str, signal: u32) {
        if let Err(s) = cd
            .tasks()
            .kill(cd.req(KillRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
                signal,
                all: false,
            }))
            .await
        {
            tracing::warn!(task = id, signal, "containerd Tasks.Kill: {}", s.message());
        }
    }

    /// Deletes the task, the container and its rootfs snapshot; missing ones are fine.
    pub async fn cleanup(&self, cd: &Containerd, id: &str) {
        let ok = |r: Result<(), tonic::Status>, what: &str| {
            if let Err(s) = r {
                if s.code() != tonic::Code::NotFound {
                    tracing::warn!(
                        task = id,
                        "containerd {what}: {:?}: {}",
                        s.code(),
                        s.message()
                    );
                }
            }
        };
        ok(
            cd.tasks()
                .delete(cd.req(DeleteTaskRequest {
                    container_id: id.to_string(),
                }))
                .await
                .map(|_| ()),
            "Tasks.Delete",
        );
        ok(
            cd.containers()
                .delete(cd.req(DeleteContainerRequest { id: id.to_string() }))
                .await
                .map(|_| ()),
            "Containers.Delete",
        );
        ok(
            cd.snapshots()
                .remove(cd.req(RemoveSnapshotRequest {
                    snapshotter: self.inner.snapshotter.clone(),
                    key: id.to_string(),
                }))
                .await
                .map(|_| ()),
            "Snapshots.Remove",
        );
        // Its endpoints leave the data plane before the managers hear it ended.
        if let Some(net) = &self.inner.network {
            net.detach(id).await;
        }
        let ns = crate::netns::path(&self.inner.netns_dir, id);
        if let Err(e) = crate::netns::remove(&ns) {
            tracing::warn!(task = id, "{e}");
        }
        files::remove(&self.inner.files_dir, id);
    }

    /// The snapshotter in use.
    pub fn snapshotter(&self) -> &str {
        &self.inner.snapshotter
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }
}

/// Tasks.Wait → exit status.
async fn wait_exit(cd: &Containerd, id: &str) -> Result<u32, ContainerdError> {
    let r = cd
        .tasks()
        .wait(cd.req(WaitRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        }))
        .await
        .map_err(|s| ContainerdError::rpc(format!("Tasks.Wait {id}"), s))?;
    Ok(r.into_inner().exit_status)
}

/// How `supervise` runs a started container.
struct Supervision {
    grace: Duration,
    /// Time between the order to stop and the stop signal (see [`LB_DRAIN`]).
    drain: Duration,
    signal: u32,
    health: Option<HealthCheck>,
    /// RUNNING was reported already (an adopted task).
    running_reported: bool,
}

/// The next health state change; never resolves without a health check (or once the
/// monitor is gone).
async fn next_health(rx: &mut Option<watch::Receiver<HealthState>>) -> Option<HealthState> {
    match rx {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(rx.borrow_and_update().clone()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Resolves when `stop` is (or turns) true; never when the sender is gone.
async fn wait_stop(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
