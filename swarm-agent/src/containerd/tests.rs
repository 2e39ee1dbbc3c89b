//! Tests against a private containerd (its own root, state and socket; CRI disabled) and a
//! private `docker-registry` holding a busybox image built from /usr/bin/busybox. They need
//! root, containerd, runc, docker-registry and busybox-static, and fail (never skip) without.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proto::{ContainerSpec, Task, TaskSpec, TaskState, TaskStatus};
use swarm_oci::{BuiltImage, LocalRegistry};
use tokio::sync::{mpsc, watch};

use super::client::Containerd;
use super::image;
use super::run::ContainerdExecutor;
use super::testbed::{self, PrivateContainerd};
use crate::executor::{Executor, TaskReporter};

const NS: &str = "swarm-test";

/// The swarm-agent binary of this build, which containerd's shim runs as the log driver.
fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test binary>
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("swarm-agent"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: these tests need the agent binary as containerd's log driver \
         (`cargo build -p swarm-agent`, or run the tests with `cargo xtask test`)",
        bin.display()
    );
    bin
}

fn busybox_image() -> BuiltImage {
    testbed::require(testbed::BUSYBOX, "busybox-static");
    testbed::busybox(
        Path::new(testbed::BUSYBOX),
        &[
            "sh", "echo", "sleep", "cat", "true", "false", "id", "hostname",
        ],
    )
    .build()
    .expect("building the busybox image")
}

/// An executor on the private containerd with its task and namespace directories under `dir`
/// (a restarted agent's is another one on the same files).
fn executor(containerd: &PrivateContainerd, dir: &Path) -> ContainerdExecutor {
    ContainerdExecutor::new(
        containerd.socket().to_path_buf(),
        NS.to_string(),
        "swarm-test".to_string(),
    )
    .with_state_dir(dir.join("tasks"))
    .with_netns_dir(dir.join("netns"))
    .with_log_driver(agent_binary())
}

struct Env {
    _tmp: tempfile::TempDir,
    containerd: PrivateContainerd,
    registry: LocalRegistry,
    image: BuiltImage,
    exec: ContainerdExecutor,
}

impl Env {
    async fn start() -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("cd")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let containerd = PrivateContainerd::start(tmp.path(), NS).await;
        let image = busybox_image();
        let registry = testbed::registry_with(tmp.path(), &image).await;
        let exec = executor(&containerd, tmp.path());
        Env {
            _tmp: tmp,
            containerd,
            registry,
            image,
            exec,
        }
    }

    /// What the task wrote on stdout so far (through the log driver).
    fn output(&self, id: &str) -> String {
        crate::logs::reader::read_logs(&self.exec.task_dir(id), None, None)
            .into_iter()
            .filter(|l| l.stream == crate::logs::Stream::Stdout)
            .map(|l| String::from_utf8_lossy(&l.data).to_string())
            .collect()
    }

    /// The task's stdout once it equals `want` (the log driver writes asynchronously).
    async fn output_is(&self, id: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.output(id);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "stdout of {id}: {got:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the task's shell said `ready`: it says so once its trap is installed (before
    /// that, sh as PID 1 would ignore SIGTERM and only the grace-period SIGKILL would stop it).
    async fn trap_installed(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.output(id).contains("ready") {
            assert!(
                Instant::now() < deadline,
                "the shell never installed its trap"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn netns_dir(&self) -> PathBuf {
        self._tmp.path().join("netns")
    }

    fn image_ref(&self, tag: &str) -> String {
        format!("{}/busybox:{tag}", self.registry.host())
    }

    fn task(&self, id: &str, tag: &str, command: &[&str], grace_ms: i64) -> Task {
        Task {
            id: id.to_string(),
            service_id: "svc1".into(),
            service_name: "web".into(),
            node_id: "node1".into(),
            slot: 1,
            spec: Some(TaskSpec {
                container: Some(ContainerSpec {
                    image: self.image_ref(tag),
                    command: command.iter().map(|s| s.to_string()).collect(),
                    stop_grace_period_ms: grace_ms,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// What a supervised task gives the test: its statuses, its stop switch and its future.
type Supervised = (
    mpsc::UnboundedReceiver<(String, TaskStatus)>,
    watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
);

/// Supervises `task` with `how` (an executor's `run` or `adopt`) on a task of its own.
fn supervise(
    task: Task,
    how: impl FnOnce(
        Task,
        TaskReporter,
        watch::Receiver<bool>,
    ) -> futures::future::BoxFuture<'static, ()>,
) -> Supervised {
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let reporter = TaskReporter::new(task.id.clone(), tx);
    let h = tokio::spawn(how(task, reporter, stop_rx));
    (rx, stop_tx, h)
}

/// Runs a task; returns the status receiver, the stop sender and the run handle.
fn spawn(exec: &ContainerdExecutor, task: Task) -> Supervised {
    supervise(task, |t, r, s| exec.run(t, r, s))
}

/// Tells a supervised task to stop and waits for its end (`what` it ran: run or adopt),
/// within 30 s; how long it took.
async fn stop_within_30s(
    stop: &watch::Sender<bool>,
    h: tokio::task::JoinHandle<()>,
    what: &str,
) -> Duration {
    let t0 = Instant::now();
    stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(30), h)
        .await
        .expect("stopped within 30 s")
        .expect(what);
    t0.elapsed()
}

async fn next_status(rx: &mut mpsc::UnboundedReceiver<(String, TaskStatus)>) -> TaskStatus {
    match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
        Ok(Some((_, s))) => s,
        Ok(None) => panic!("the executor ended without a final status"),
        Err(_) => panic!("no status within 60 s"),
    }
}

async fn collect(mut rx: mpsc::UnboundedReceiver<(String, TaskStatus)>) -> Vec<TaskStatus> {
    let mut out = Vec::new();
    while let Some((_, s)) = rx.recv().await {
        out.push(s);
    }
    out
}

fn states(v: &[TaskStatus]) -> Vec<TaskState> {
    v.iter().map(|s| s.state()).collect()
}

async fn gone(cd: &Containerd, id: &str, snapshotter: &str) -> Vec<&'static str> {
    use containerd_client::services::v1::{GetContainerRequest, GetRequest};
    let mut left = Vec::new();
    if cd
        .tasks()
        .get(cd.req(GetRequest {
            container_id: id.into(),
            exec_id: String::new(),
        }))
        .await
        .is_ok()
    {
        left.push("task");
    }
    if cd
        .containers()
        .get(cd.req(GetContainerRequest { id: id.into() }))
        .await
        .is_ok()
    {
        left.push("container");
    }
    if image::snapshot_exists(cd, snapshotter, id)
        .await
        .unwrap_or(true)
    {
        left.push("snapshot");
    }
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_executor_end_to_end() {
    let env = Env::start().await;
    let cd = env.containerd.connect().await;

    // (4) pulling twice fetches the blobs only once.
    let name = env.image_ref("latest");
    let first = image::pull(&cd, &name, env.exec.snapshotter(), &Default::default())
        .await
        .unwrap_or_else(|e| panic!("pull: {e}\n{}", env.containerd.log()));
    assert_eq!(first.fetched.len(), 2, "layer + config fetched: {first:?}");
    assert_eq!(first.unpacked.len(), 1);
    assert_eq!(first.manifest_digest, env.image.manifest_digest);
    for d in [
        &env.image.config_digest,
        &env.image.manifest_digest,
        &env.image.layers[0].0.digest,
    ] {
        assert!(
            image::content_exists(&cd, d).await.unwrap(),
            "{d} in the content store"
        );
    }
    let second = image::pull(&cd, &name, env.exec.snapshotter(), &Default::default())
        .await
        .expect("second pull");
    assert!(
        second.fetched.is_empty(),
        "second pull fetched {:?}",
        second.fetched
    );
    assert!(
        second.unpacked.is_empty(),
        "second pull unpacked {:?}",
        second.unpacked
    );

    // (1) non-zero exit → FAILED with the exit code, output in the log file.
    let task = env.task(
        "exit3task0000000000000001",
        "latest",
        &["sh", "-c", "echo hello; exit 3"],
        0,
    );
    let (rx, _stop, h) = spawn(&env.exec, task.clone());
    h.await.expect("run");
    let st = collect(rx).await;
    let last = st.last().expect("statuses").clone();
    assert_eq!(
        states(&st),
        [
            TaskState::Accepted,
            TaskState::Preparing,
            TaskState::Ready,
            TaskState::Starting,
            TaskState::Running,
            TaskState::Failed
        ],
        "statuses {st:?}\n{}",
        env.containerd.log()
    );
    assert_eq!(last.err, "task: non-zero exit (3)");
    assert_eq!(last.container_status.as_ref().map(|c| c.exit_code), Some(3));
    env.output_is(&task.id, "hello\n").await;
    assert!(gone(&cd, &task.id, env.exec.snapshotter()).await.is_empty());

    // (2) stop → SIGTERM; sh ignores nothing, but `sleep` as pid 1 has no SIGTERM handler and
    // pid 1 ignores unhandled signals, so this also checks the SIGKILL after the grace period.
    let task = env.task(
        "sleeptask000000000000001",
        "latest",
        &["sleep", "1000"],
        2000,
    );
    let (mut rx, stop, h) = spawn(&env.exec, task.clone());
    until_running(&mut rx, &env).await;
    let took = stop_within_30s(&stop, h, "run").await;
    let st = collect(rx).await;
    assert_eq!(states(&st), [TaskState::Shutdown], "{st:?}");
    assert!(
        took < Duration::from_secs(2) + Duration::from_secs(5),
        "stop took {took:?} with a 2 s grace period"
    );
    let left = gone(&cd, &task.id, env.exec.snapshotter()).await;
    assert!(left.is_empty(), "left in containerd after stop: {left:?}");

    // (3) a missing tag → REJECTED with the registry's reason.
    let task = env.task("missingtag00000000000001", "nope", &["true"], 0);
    let (rx, _stop, h) = spawn(&env.exec, task);
    h.await.expect("run");
    let st = collect(rx).await;
    let last = st.last().expect("statuses");
    assert_eq!(last.state(), TaskState::Rejected, "{st:?}");
    assert!(last.err.contains("MANIFEST_UNKNOWN"), "{}", last.err);

    // (5) limits reach the cgroup (cgroup v1 hierarchies on this host), hostname = task ID
    // prefix, and the task's cgroup is gone afterwards.
    let mut task = env.task(
        "limitstask00000000000001",
        "latest",
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us; hostname",
        ],
        0,
    );
    task.spec.as_mut().expect("spec").resources = Some(proto::ResourceRequirements {
        limits: Some(proto::Resources {
            nano_cpus: 500_000_000,
            memory_bytes: 64 << 20,
        }),
        reservations: None,
    });
    let (rx, _stop, h) = spawn(&env.exec, task.clone());
    h.await.expect("run");
    let st = collect(rx).await;
    assert_eq!(
        st.last().map(|s| s.state()),
        Some(TaskState::Complete),
        "{st:?}"
    );
    env.output_is(&task.id, "67108864\n50000\nlimitstask00\n")
        .await;
    assert!(
        !Path::new("/sys/fs/cgroup/memory/swarm-test")
            .join(&task.id)
            .exists(),
        "the task's memory cgroup was not removed"
    );

    // (6) content writes are verified: a failing source or wrong bytes leave nothing behind.
    // The writes hold a lease, as a pull's do: unreferenced content is containerd's garbage,
    // which its collector may take between the write and the check (it did once in CI).
    let lease = format!("swarm-test-content-{:016x}", rand::random::<u64>());
    cd.leases()
        .create(cd.req(containerd_client::services::v1::CreateRequest {
            id: lease.clone(),
            labels: Default::default(),
        }))
        .await
        .expect("creating the content test's lease");
    let data = bytes::Bytes::from_static(b"some blob content");
    let desc = swarm_oci::Descriptor::of("application/octet-stream", &data);
    let failing = futures::stream::iter([
        Ok(data.slice(..4)),
        Err(super::ContainerdError::Invalid("source broke".into())),
    ]);
    let e = image::write_content(&cd, &lease, &desc, Default::default(), failing)
        .await
        .expect_err("a failing source must fail the write");
    assert!(e.to_string().contains("source broke"), "{e}");
    assert!(!image::content_exists(&cd, &desc.digest).await.unwrap());
    let wrong = futures::stream::iter([Ok(bytes::Bytes::from_static(b"other blob content"))]);
    let e = image::write_content(&cd, &lease, &desc, Default::default(), wrong)
        .await
        .expect_err("wrong bytes must be refused at commit");
    assert!(
        !image::content_exists(&cd, &desc.digest).await.unwrap(),
        "{e}"
    );
    let good = futures::stream::iter([Ok(data.clone())]);
    image::write_content(&cd, &lease, &desc, Default::default(), good)
        .await
        .expect("a correct write");
    assert!(image::content_exists(&cd, &desc.digest).await.unwrap());
    cd.leases()
        .delete(cd.req(containerd_client::services::v1::DeleteRequest {
            id: lease,
            sync: false,
        }))
        .await
        .expect("deleting the content test's lease");

    // (7) a task that handles SIGTERM stops at once, long before its 10 s grace period.
    let task = env.task(
        "trapterm0000000000000001",
        "latest",
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; echo ready; while true; do sleep 0.1; done",
        ],
        10_000,
    );
    let (mut rx, stop, h) = spawn(&env.exec, task.clone());
    until_running(&mut rx, &env).await;
    env.trap_installed(&task.id).await;
    let took = stop_within_30s(&stop, h, "run").await;
    assert_eq!(states(&collect(rx).await), [TaskState::Shutdown]);
    // Stopped by SIGTERM, not by the SIGKILL that ends the 10 s grace period.
    assert!(took < Duration::from_secs(8), "SIGTERM stop took {took:?}");
    assert!(gone(&cd, &task.id, env.exec.snapshotter()).await.is_empty());
}

/// Waits for RUNNING (panics on REJECTED/FAILED).
async fn until_running(rx: &mut mpsc::UnboundedReceiver<(String, TaskStatus)>, env: &Env) {
    loop {
        let s = next_status(rx).await;
        assert!(
            !matches!(s.state(), TaskState::Rejected | TaskState::Failed),
            "{s:?}\n{}",
            env.containerd.log()
        );
        if s.state() == TaskState::Running {
            return;
        }
    }
}

/// Adopts `task` (observed RUNNING) with a fresh executor, as a restarted agent does.
fn spawn_adopt(exec: &ContainerdExecutor, mut task: Task) -> Supervised {
    task.status = Some(TaskStatus {
        state: TaskState::Running as i32,
        ..Default::default()
    });
    supervise(task, |t, r, s| exec.adopt(t, r, s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_get_their_own_network_namespace() {
    let env = Env::start().await;
    let cd = env.containerd.connect().await;
    let task = env.task(
        "netnstask000000000000001",
        "latest",
        &["sh", "-c", "cat /proc/net/dev; sleep 1"],
        0,
    );
    let (mut rx, _stop, h) = spawn(&env.exec, task.clone());
    until_running(&mut rx, &env).await;
    let ns = env.netns_dir().join(&task.id);
    assert!(
        crate::netns::is_mounted(&ns),
        "the agent mounts the task's namespace at {}",
        ns.display()
    );
    h.await.expect("run");
    let st = collect(rx).await;
    assert_eq!(
        st.last().map(|s| s.state()),
        Some(TaskState::Complete),
        "{st:?}"
    );
    // Only loopback inside: the namespace is the agent's, not the host's.
    let out = env.output(&task.id);
    let ifaces: Vec<&str> = out
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"], "{out}");
    assert!(!ns.exists(), "the namespace file is removed with the task");
    assert!(gone(&cd, &task.id, env.exec.snapshotter()).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_adopts_its_containers_and_removes_orphans() {
    let env = Env::start().await;
    let cd = env.containerd.connect().await;

    // (a) a running container is taken over by a new executor and stopped through it.
    let running = env.task(
        "adoptrun0000000000000001",
        "latest",
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; echo ready; while true; do sleep 0.1; done",
        ],
        10_000,
    );
    // (b) one that exits (code 4) while no agent watches it.
    let exits = env.task(
        "adoptexit000000000000001",
        "latest",
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; echo ready; sleep 1; exit 4",
        ],
        10_000,
    );
    // (c) one that no assignment covers any more: an orphan.
    let orphan = env.task(
        "orphan000000000000000001",
        "latest",
        &["sleep", "1000"],
        1000,
    );
    for t in [&running, &exits, &orphan] {
        let (mut rx, _stop, h) = spawn(&env.exec, t.clone());
        until_running(&mut rx, &env).await;
        // The agent dies: its supervising future is gone, the container is not.
        h.abort();
        let _ = h.await;
    }
    env.trap_installed(&running.id).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let restarted = executor(&env.containerd, env._tmp.path());

    let (mut rx, stop, h) = spawn_adopt(&restarted, running.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        rx.try_recv().is_err(),
        "an adopted running task reports nothing new"
    );
    assert!(!h.is_finished(), "the adopted task is supervised");
    stop_within_30s(&stop, h, "adopt").await;
    assert_eq!(states(&collect(rx).await), [TaskState::Shutdown]);
    assert!(gone(&cd, &running.id, env.exec.snapshotter())
        .await
        .is_empty());

    let (rx, _stop, h) = spawn_adopt(&restarted, exits.clone());
    h.await.expect("adopt");
    let st = collect(rx).await;
    assert_eq!(states(&st), [TaskState::Failed], "{st:?}");
    assert_eq!(
        st[0].container_status.as_ref().map(|c| c.exit_code),
        Some(4)
    );
    assert!(gone(&cd, &exits.id, env.exec.snapshotter())
        .await
        .is_empty());

    let never = env.task("neverstarted000000000001", "latest", &["true"], 0);
    let (rx, _stop, h) = spawn_adopt(&restarted, never.clone());
    h.await.expect("adopt");
    let st = collect(rx).await;
    assert_eq!(states(&st), [TaskState::Failed], "{st:?}");
    assert!(st[0].err.contains("container is gone"), "{}", st[0].err);

    // A container the executor did not make (the agent's own, run in the same namespace):
    // no task label names it, so it is no orphan.
    let agent_container = containerd_client::services::v1::Container {
        id: "swarm-agent".into(),
        labels: std::collections::HashMap::from([("io.swarm.role".into(), "agent".into())]),
        runtime: Some(containerd_client::services::v1::container::Runtime {
            name: super::run::RUNTIME.into(),
            options: None,
        }),
        spec: Some(prost_types::Any {
            type_url: super::spec::SPEC_TYPE_URL.into(),
            value: b"{}".to_vec(),
        }),
        ..Default::default()
    };
    cd.containers()
        .create(
            cd.req(containerd_client::services::v1::CreateContainerRequest {
                container: Some(agent_container),
            }),
        )
        .await
        .expect("creating a container that is not a task");

    // The orphan's files are known (kept), its container is not (removed).
    let known = std::collections::HashSet::from([orphan.id.clone()]);
    restarted.remove_orphans(Default::default(), known).await;
    let left = gone(&cd, &orphan.id, env.exec.snapshotter()).await;
    assert!(left.is_empty(), "orphan left in containerd: {left:?}");
    assert_eq!(
        gone(&cd, "swarm-agent", env.exec.snapshotter()).await,
        ["container"],
        "the container that is not a task is left alone"
    );
    assert!(!env.netns_dir().join(&orphan.id).exists());
    assert!(env.exec.task_dir(&orphan.id).exists());
    restarted
        .remove_orphans(Default::default(), Default::default())
        .await;
    assert!(
        !env.exec.task_dir(&orphan.id).exists(),
        "files of tasks the managers forgot are removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_pinned_to_a_digest_starts_without_the_registry_once_present() {
    let mut env = Env::start().await;
    let cd = env.containerd.connect().await;
    let pinned = format!("{}@{}", env.image_ref("latest"), env.image.manifest_digest);
    let first = image::pull(&cd, &pinned, env.exec.snapshotter(), &Default::default())
        .await
        .expect("first pull of the pinned reference");
    assert_eq!(first.manifest_digest, env.image.manifest_digest);
    env.registry.stop();
    let again = image::pull(&cd, &pinned, env.exec.snapshotter(), &Default::default())
        .await
        .expect("a pinned image that is present needs no registry");
    assert!(again.fetched.is_empty() && again.unpacked.is_empty());
    assert_eq!(again.top_snapshot(), first.top_snapshot());
    // A tag must be resolved, so without the registry it fails, saying why.
    let e = image::pull(
        &cd,
        &env.image_ref("latest"),
        env.exec.snapshotter(),
        &Default::default(),
    )
    .await
    .expect_err("a tag needs the registry");
    assert!(e.to_string().contains("unreachable"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_only_once_healthy_and_fails_when_unhealthy() {
    let env = Env::start().await;
    let cd = env.containerd.connect().await;
    // Healthy from about 2 s on, unhealthy from about 5 s on.
    let mut task = env.task(
        "healthtask00000000000001",
        "latest",
        &[
            "sh",
            "-c",
            "sleep 2; echo > /tmp/ok; sleep 3; rm /tmp/ok; sleep 1000",
        ],
        1000,
    );
    task.spec
        .as_mut()
        .and_then(|s| s.container.as_mut())
        .expect("container")
        .healthcheck = Some(proto::HealthConfig {
        test: vec![
            "CMD-SHELL".into(),
            "test -f /tmp/ok || (echo missing; exit 1)".into(),
        ],
        interval_ms: 500,
        timeout_ms: 2000,
        retries: 2,
        // Failures while it starts up do not count (without this, two failed probes in the
        // first second would make it unhealthy before it ever was healthy).
        start_period_ms: 4000,
        start_interval_ms: 300,
    });
    let t0 = Instant::now();
    let (mut rx, _stop, h) = spawn(&env.exec, task.clone());
    let mut starting_at = None;
    let running_at = loop {
        let s = next_status(&mut rx).await;
        assert!(
            !matches!(s.state(), TaskState::Rejected | TaskState::Failed),
            "{s:?}"
        );
        if s.state() == TaskState::Starting {
            starting_at = Some(t0.elapsed());
        }
        if s.state() == TaskState::Running {
            break t0.elapsed();
        }
    };
    let starting_at = starting_at.expect("STARTING before RUNNING");
    assert!(
        running_at >= starting_at + Duration::from_millis(1500),
        "RUNNING only once the check passed: starting at {starting_at:?}, running at {running_at:?}"
    );
    tokio::time::timeout(Duration::from_secs(60), h)
        .await
        .expect("the unhealthy task ends")
        .expect("run");
    let st = collect(rx).await;
    let last = st.last().expect("final status");
    assert_eq!(last.state(), TaskState::Failed, "{st:?}");
    assert!(last.err.starts_with("unhealthy container"), "{}", last.err);
    assert!(
        last.err.contains("missing"),
        "the probe's output: {}",
        last.err
    );
    assert!(gone(&cd, &task.id, env.exec.snapshotter()).await.is_empty());
}
