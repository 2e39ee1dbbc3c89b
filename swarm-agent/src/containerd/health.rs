//! Container health checks with Docker's semantics, run as containerd exec processes.
//!
//! - [`HealthCheck::from_task`]: the task's `healthcheck` with Docker's defaults (interval
//!   30 s, timeout 30 s, start period 0, start interval 5 s, retries 3); `["NONE"]` disables.
//! - [`run_probe`]: one probe: Tasks.Exec (the container's process with the probe's args),
//!   Start, Wait with the timeout (SIGKILL on timeout), DeleteProcess always; stdout and stderr
//!   go to one file whose first 4 KiB are the output (Docker keeps 4096 bytes too).
//! - [`monitor`]: probes until the receiver is dropped and publishes [`HealthState`].
//!
//! Timing follows Docker 25+ (`daemon/health.go`): the first probe runs one interval after the
//! start; while the container is still `Starting` inside its start period, probes run every
//! start interval (default 5 s) instead of every interval, so a container with a start period
//! gets healthy quickly; failures inside the start period do not count; `retries` consecutive
//! failures make it unhealthy; one success makes it healthy and resets the count. Without a
//! start period (Docker's default) the first probe runs after one full interval, as in Docker.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_client::services::v1::{
    DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, KillRequest, StartRequest,
    WaitRequest,
};
use proto::Task;
use swarm_oci::ImageConfig;
use tokio::sync::watch;

use super::client::{Containerd, ContainerdError};

/// `type_url` of an exec process spec.
pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// Docker's defaults.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_RETRIES: u32 = 3;
/// Bytes of probe output kept (Docker's `maxOutputLen`).
pub const MAX_OUTPUT: usize = 4096;

/// What a probe runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// `["CMD", arg...]`: the arguments as they are.
    Cmd(Vec<String>),
    /// `["CMD-SHELL", command...]`: `/bin/sh -c command...`.
    Shell(Vec<String>),
}

impl Probe {
    /// The exec process's arguments.
    pub fn args(&self) -> Vec<String> {
        match self {
            Probe::Cmd(a) => a.clone(),
            Probe::Shell(a) => ["/bin/sh".to_string(), "-c".to_string()]
                .into_iter()
                .chain(a.iter().cloned())
                .collect(),
        }
    }
}

/// A task's health check with the defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub test: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub start_interval: Duration,
    pub retries: u32,
}

fn ms_or(ms: i64, default: Duration) -> Duration {
    if ms > 0 {
        Duration::from_millis(ms as u64)
    } else {
        default
    }
}

impl HealthCheck {
    /// The task's health check, or `None` (no check, `["NONE"]`, or an unknown test kind,
    /// which Docker also ignores with a warning). The image's `Healthcheck` would be the
    /// fallback for an empty test, but swarm-oci's `ImageConfig` does not carry it yet, so an
    /// empty test means no check.
    pub fn from_task(task: &Task, image_config: &ImageConfig) -> Option<HealthCheck> {
        let _ = image_config;
        let h = task
            .spec
            .as_ref()
            .and_then(|s| s.container.as_ref())
            .and_then(|c| c.healthcheck.as_ref())?;
        let (kind, rest) = h.test.split_first()?;
        let test = match kind.as_str() {
            "NONE" => return None,
            "CMD" => Probe::Cmd(rest.to_vec()),
            "CMD-SHELL" => Probe::Shell(rest.to_vec()),
            other => {
                tracing::warn!(
                    task = task.id,
                    "broken health check: unknown test {other:?}; the container runs unchecked"
                );
                return None;
            }
        };
        Some(HealthCheck {
            test,
            interval: ms_or(h.interval_ms, DEFAULT_INTERVAL),
            timeout: ms_or(h.timeout_ms, DEFAULT_TIMEOUT),
            start_period: ms_or(h.start_period_ms, Duration::ZERO),
            start_interval: ms_or(h.start_interval_ms, DEFAULT_START_INTERVAL),
            retries: if h.retries > 0 {
                h.retries as u32
            } else {
                DEFAULT_RETRIES
            },
        })
    }
}

/// The outcome of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    /// The exit code; `None` when the probe could not run or timed out.
    pub exit_code: Option<i32>,
    /// The first 4 KiB of stdout and stderr, or why the probe could not run.
    pub output: String,
    pub timed_out: bool,
}

impl ProbeResult {
    pub fn healthy(&self) -> bool {
        self.exit_code == Some(0)
    }

    fn error(output: String) -> ProbeResult {
        ProbeResult {
            exit_code: None,
            output,
            timed_out: false,
        }
    }
}

/// Go's `time.Duration` formatting for the usual probe timeouts ("30s", "1m30s", "500ms").
fn go_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    if d < Duration::from_secs(1) {
        let us = d.as_micros();
        return if us.is_multiple_of(1000) {
            format!("{}ms", us / 1000)
        } else {
            format!("{}µs", us)
        };
    }
    let total = d.as_secs_f64();
    let h = (total / 3600.0).floor() as u64;
    let m = ((total - h as f64 * 3600.0) / 60.0).floor() as u64;
    let s = total - h as f64 * 3600.0 - m as f64 * 60.0;
    let secs = if s.fract() == 0.0 {
        format!("{}s", s as u64)
    } else {
        format!("{}s", format!("{s:.9}").trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

/// The container's process spec (from its runtime spec) with `args` replaced.
async fn exec_process(
    cd: &Containerd,
    container_id: &str,
    args: Vec<String>,
) -> Result<serde_json::Value, ContainerdError> {
    let container = cd
        .containers()
        .get(cd.req(GetContainerRequest {
            id: container_id.to_string(),
        }))
        .await
        .map_err(|s| ContainerdError::rpc(format!("Containers.Get {container_id}"), s))?
        .into_inner()
        .container
        .ok_or_else(|| {
            ContainerdError::Invalid(format!("containerd returned no container {container_id}"))
        })?;
    let spec = container.spec.ok_or_else(|| {
        ContainerdError::Invalid(format!("container {container_id} has no runtime spec"))
    })?;
    let spec: serde_json::Value = serde_json::from_slice(&spec.value).map_err(|e| {
        ContainerdError::Invalid(format!(
            "the runtime spec of container {container_id} is not JSON: {e}"
        ))
    })?;
    let mut process = spec
        .get("process")
        .cloned()
        .filter(|p| p.is_object())
        .ok_or_else(|| {
            ContainerdError::Invalid(format!(
                "the runtime spec of container {container_id} has no process"
            ))
        })?;
    process["args"] = serde_json::json!(args);
    process["terminal"] = serde_json::json!(false);
    if let Some(p) = process.as_object_mut() {
        p.remove("consoleSize");
    }
    Ok(process)
}

/// The probe's combined stdout and stderr, read from a FIFO both streams write to.
///
/// A FIFO, not a file: for `file://` URIs containerd 1.6's shim writes both streams to the
/// stdout file through one shared writer that the stdout copy closes when it ends; when the
/// probe exits before the shim has set up the stderr copy, that copy finds the file closed
/// and the probe's stderr is lost ("error copying stderr"). With a FIFO each stream gets its
/// own writer. The FIFO is opened read-write, so it never reports end-of-file and the shim can
/// open its writers whenever it likes; the output is complete once DeleteProcess returned
/// (it waits for the copies).
struct ProbeOutput {
    path: PathBuf,
    rx: tokio::net::unix::pipe::Receiver,
    buf: Vec<u8>,
}

impl ProbeOutput {
    fn create(path: PathBuf) -> std::io::Result<ProbeOutput> {
        let _ = std::fs::remove_file(&path);
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: mkfifo with a valid NUL-terminated path.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let rx = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&path)
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&path);
            })?;
        Ok(ProbeOutput {
            path,
            rx,
            buf: Vec::new(),
        })
    }

    /// Takes what is in the FIFO now; keeps the first [`MAX_OUTPUT`] bytes, drops the rest
    /// (so that a chatty probe never blocks on a full pipe).
    fn take_available(&mut self) {
        let mut chunk = [0u8; 4096];
        loop {
            match self.rx.try_read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => {
                    let room = MAX_OUTPUT.saturating_sub(self.buf.len());
                    self.buf.extend_from_slice(&chunk[..n.min(room)]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Reads until cancelled.
    async fn keep_reading(&mut self) {
        loop {
            if self.rx.readable().await.is_err() {
                // Nothing more to read here; finish() takes what is left.
                return std::future::pending().await;
            }
            self.take_available();
        }
    }

    fn finish(mut self) -> String {
        self.take_available();
        let _ = std::fs::remove_file(&self.path);
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}

/// Runs one probe in the running container `container_id`; `dir` holds the probe's output
/// FIFO while it runs (created if needed; removed afterwards). Never fails: problems are a
/// failed probe whose output says what went wrong.
pub async fn run_probe(
    cd: &Containerd,
    container_id: &str,
    probe: &Probe,
    timeout: Duration,
    dir: &Path,
) -> ProbeResult {
    let args = probe.args();
    if args.is_empty() {
        return ProbeResult::error("health check has no command".into());
    }
    let process = match exec_process(cd, container_id, args).await {
        Ok(p) => p,
        Err(e) => return ProbeResult::error(e.to_string()),
    };
    let value = match serde_json::to_vec(&process) {
        Ok(v) => v,
        Err(e) => return ProbeResult::error(format!("encoding the probe process: {e}")),
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        return ProbeResult::error(format!("creating {}: {e}", dir.display()));
    }
    let exec_id = format!("health-{:016x}", rand::random::<u64>());
    let fifo = dir.join(format!("{exec_id}.out"));
    let mut output = match ProbeOutput::create(fifo.clone()) {
        Ok(o) => o,
        Err(e) => {
            return ProbeResult::error(format!(
                "creating the probe output FIFO {}: {e}",
                fifo.display()
            ))
        }
    };
    let run = async {
        let exec = cd
            .tasks()
            .exec(cd.req(ExecProcessRequest {
                container_id: container_id.to_string(),
                stdin: String::new(),
                stdout: fifo.display().to_string(),
                stderr: fifo.display().to_string(),
                terminal: false,
                spec: Some(prost_types::Any {
                    type_url: PROCESS_TYPE_URL.into(),
                    value,
                }),
                exec_id: exec_id.clone(),
            }))
            .await;
        if let Err(s) = exec {
            return ProbeResult::error(
                ContainerdError::rpc(format!("Tasks.Exec {container_id}/{exec_id}"), s).to_string(),
            );
        }
        let r = start_and_wait(cd, container_id, &exec_id, timeout).await;
        // DeleteProcess waits for the shim's output copies (up to 2 s) before it returns.
        if let Err(s) = cd
            .tasks()
            .delete_process(cd.req(DeleteProcessRequest {
                container_id: container_id.to_string(),
                exec_id: exec_id.clone(),
            }))
            .await
        {
            if s.code() != tonic::Code::NotFound {
                tracing::warn!(
                    container = container_id,
                    exec_id,
                    "containerd Tasks.DeleteProcess: {}",
                    s.message()
                );
            }
        }
        r
    };
    let mut result = tokio::select! {
        r = run => r,
        () = output.keep_reading() => ProbeResult::error("the probe output reader stopped".into()),
    };
    let text = output.finish();
    if result.exit_code.is_some() {
        result.output = text;
    }
    result
}

async fn start_and_wait(
    cd: &Containerd,
    container_id: &str,
    exec_id: &str,
    timeout: Duration,
) -> ProbeResult {
    if let Err(s) = cd
        .tasks()
        .start(cd.req(StartRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
        }))
        .await
    {
        // Docker reports the runtime's error as the probe output (e.g. "executable file not
        // found in $PATH").
        return ProbeResult::error(
            ContainerdError::rpc(format!("Tasks.Start {container_id}/{exec_id}"), s).to_string(),
        );
    }
    let wait = async {
        cd.tasks()
            .wait(cd.req(WaitRequest {
                container_id: container_id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await
    };
    tokio::pin!(wait);
    match tokio::time::timeout(timeout, &mut wait).await {
        Ok(Ok(r)) => ProbeResult {
            exit_code: Some(r.into_inner().exit_status as i32),
            output: String::new(),
            timed_out: false,
        },
        Ok(Err(s)) => ProbeResult::error(
            ContainerdError::rpc(format!("Tasks.Wait {container_id}/{exec_id}"), s).to_string(),
        ),
        Err(_) => {
            if let Err(s) = cd
                .tasks()
                .kill(cd.req(KillRequest {
                    container_id: container_id.to_string(),
                    exec_id: exec_id.to_string(),
                    signal: libc::SIGKILL as u32,
                    all: false,
                }))
                .await
            {
                tracing::warn!(
                    container = container_id,
                    exec_id,
                    "containerd Tasks.Kill of a timed-out probe: {}",
                    s.message()
                );
            }
            // DeleteProcess refuses a running process: give the kill a moment to land.
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut wait).await;
            ProbeResult {
                exit_code: None,
                output: format!("Health check exceeded timeout ({})", go_duration(timeout)),
                timed_out: true,
            }
        }
    }
}

/// A container's health, as Docker reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthState {
    Starting,
    Healthy,
    /// `output` is the last failed probe's output.
    Unhealthy {
        output: String,
    },
}

/// The health state machine without the timers (Docker's `handleProbeResult`).
#[derive(Clone, Debug)]
pub struct HealthTracker {
    retries: u32,
    start_period: Duration,
    state: HealthState,
    failing_streak: u32,
}

impl HealthTracker {
    pub fn new(check: &HealthCheck) -> HealthTracker {
        HealthTracker {
            retries: check.retries.max(1),
            start_period: check.start_period,
            state: HealthState::Starting,
            failing_streak: 0,
        }
    }

    pub fn state(&self) -> &HealthState {
        &self.state
    }

    pub fn failing_streak(&self) -> u32 {
        self.failing_streak
    }

    /// Records a probe that started `since_start` after the container started.
    pub fn record(&mut self, result: &ProbeResult, since_start: Duration) -> &HealthState {
        if result.healthy() {
            self.failing_streak = 0;
            self.state = HealthState::Healthy;
        } else {
            let in_start_period =
                self.state == HealthState::Starting && since_start < self.start_period;
            if !in_start_period {
                self.failing_streak += 1;
                if self.failing_streak >= self.retries {
                    self.state = HealthState::Unhealthy {
                        output: result.output.clone(),
                    };
                }
            }
        }
        &self.state
    }

    /// The wait before the next probe (Docker's `getInterval`).
    pub fn next_interval(&self, check: &HealthCheck, since_start: Duration) -> Duration {
        if since_start >= check.start_period || self.state != HealthState::Starting {
            check.interval
        } else {
            check.start_interval
        }
    }
}

/// Probes `container_id` (which must be running; the caller starts this right after
/// Tasks.Start) until `tx`'s receivers are all dropped, publishing every change of state.
/// `tx` starts as (or is reset to) [`HealthState::Starting`]. Probe output files go to `dir`.
pub async fn monitor(
    cd: Containerd,
    container_id: String,
    check: HealthCheck,
    dir: PathBuf,
    tx: watch::Sender<HealthState>,
) {
    let started = Instant::now();
    let mut tracker = HealthTracker::new(&check);
    tx.send_if_modified(|s| {
        let changed = *s != HealthState::Starting;
        *s = HealthState::Starting;
        changed
    });
    loop {
        let wait = tracker.next_interval(&check, started.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tx.closed() => return,
        }
        let since_start = started.elapsed();
        // A probe is not cancelled half-way (that would leave its exec process behind); it
        // is bounded by its timeout.
        let result = run_probe(&cd, &container_id, &check.test, check.timeout, &dir).await;
        if tx.is_closed() {
            return;
        }
        if !result.healthy() {
            tracing::debug!(
                container = container_id,
                exit_code = ?result.exit_code,
                timed_out = result.timed_out,
                "health probe failed: {}",
                result.output.trim_end()
            );
        }
        let state = tracker.record(&result, since_start).clone();
        tx.send_if_modified(|s| {
            if *s == state {
                return false;
            }
            tracing::info!(container = container_id, "health: {state:?}");
            *s = state;
            true
        });
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use proto::{ContainerSpec, HealthConfig, TaskSpec};

    fn task(h: Option<HealthConfig>) -> Task {
        Task {
            id: "t1".into(),
            spec: Some(TaskSpec {
                container: Some(ContainerSpec {
                    healthcheck: h,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn hc(test: &[&str]) -> HealthConfig {
        HealthConfig {
            test: test.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn from_task_applies_docker_defaults() {
        let img = ImageConfig::default();
        assert_eq!(HealthCheck::from_task(&task(None), &img), None);
        assert_eq!(
            HealthCheck::from_task(&task(Some(hc(&["NONE"]))), &img),
            None
        );
        assert_eq!(HealthCheck::from_task(&task(Some(hc(&[]))), &img), None);
        assert_eq!(
            HealthCheck::from_task(&task(Some(hc(&["BOGUS"]))), &img),
            None
        );
        let c = HealthCheck::from_task(&task(Some(hc(&["CMD-SHELL", "curl -f x"]))), &img)
            .expect("check");
        assert_eq!(
            c,
            HealthCheck {
                test: Probe::Shell(vec!["curl -f x".into()]),
                interval: Duration::from_secs(30),
                timeout: Duration::from_secs(30),
                start_period: Duration::ZERO,
                start_interval: Duration::from_secs(5),
                retries: 3,
            }
        );
        assert_eq!(c.test.args(), ["/bin/sh", "-c", "curl -f x"]);
        let mut h = hc(&["CMD", "/bin/check", "-q"]);
        h.interval_ms = 1000;
        h.timeout_ms = 200;
        h.start_period_ms = 5000;
        h.start_interval_ms = 100;
        h.retries = 7;
        let c = HealthCheck::from_task(&task(Some(h)), &img).expect("check");
        assert_eq!(c.test.args(), ["/bin/check", "-q"]);
        assert_eq!(
            (
                c.interval,
                c.timeout,
                c.start_period,
                c.start_interval,
                c.retries
            ),
            (
                Duration::from_secs(1),
                Duration::from_millis(200),
                Duration::from_secs(5),
                Duration::from_millis(100),
                7
            )
        );
    }

    fn result(code: i32) -> ProbeResult {
        ProbeResult {
            exit_code: Some(code),
            output: format!("exit {code}"),
            timed_out: false,
        }
    }

    #[test]
    fn tracker_follows_docker() {
        let check = HealthCheck {
            test: Probe::Cmd(vec!["x".into()]),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            start_period: Duration::from_secs(30),
            start_interval: Duration::from_secs(2),
            retries: 2,
        };
        let s = Duration::from_secs;
        let mut t = HealthTracker::new(&check);
        // Start period: fast probes, failures ignored.
        assert_eq!(t.next_interval(&check, s(0)), s(2));
        t.record(&result(1), s(2));
        t.record(&result(1), s(4));
        assert_eq!((t.state(), t.failing_streak()), (&HealthState::Starting, 0));
        // A success ends the start period's fast probing.
        t.record(&result(0), s(6));
        assert_eq!(t.state(), &HealthState::Healthy);
        assert_eq!(t.next_interval(&check, s(6)), s(10));
        // Healthy: failures count even inside the start period; retries → unhealthy.
        t.record(&result(1), s(16));
        assert_eq!((t.state(), t.failing_streak()), (&HealthState::Healthy, 1));
        t.record(&result(0), s(26));
        assert_eq!(t.failing_streak(), 0);
        t.record(&result(1), s(36));
        t.record(&result(2), s(46));
        assert_eq!(
            t.state(),
            &HealthState::Unhealthy {
                output: "exit 2".into()
            }
        );
        // Unhealthy → healthy again on a success.
        t.record(&result(0), s(56));
        assert_eq!(t.state(), &HealthState::Healthy);

        // Never healthy: after the start period, failures count.
        let mut t = HealthTracker::new(&check);
        t.record(&result(1), s(29));
        assert_eq!(t.failing_streak(), 0);
        assert_eq!(t.next_interval(&check, s(31)), s(10));
        t.record(&result(1), s(31));
        t.record(&result(1), s(41));
        assert!(matches!(t.state(), HealthState::Unhealthy { .. }));
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_secs(30)), "30s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(60)), "1m0s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
    }
}

/// Against a private containerd (own root, state and socket; CRI disabled) and a private
/// `docker-registry` with a busybox image that has /etc/passwd and /etc/group: health probes,
/// the monitor, and the spec features (named user, groups, read-only root, bind and tmpfs
/// mounts, /etc files) in a real runc container, plus `read_image_files` on bind (one layer)
/// and overlay (two layers) views. Needs root, containerd, runc, docker-registry and
/// busybox-static; fails (never skips) without them.
#[cfg(test)]
mod containerd_tests {
    use std::collections::HashMap;
    use std::path::Path;
    use std::process::Command;
    use std::time::{Duration, Instant};

    use containerd_client::services::v1::container::Runtime;
    use containerd_client::services::v1::snapshots::{
        CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
    };
    use containerd_client::services::v1::{
        Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
        DeleteTaskRequest, KillRequest, ListPidsRequest, StartRequest, WaitRequest,
    };
    use proto::{ContainerSpec, MountType, Task, TaskSpec};
    use tokio::sync::watch;

    use super::super::client::Containerd;
    use super::super::image;
    use super::super::spec::{self, SpecFiles, SpecOptions};
    use super::super::testbed::{self, PrivateContainerd};
    use super::*;

    const NS: &str = "swarm-health-test";
    const SNAPSHOTTER: &str = "overlayfs";
    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\nwheel:x:10:root,app\nstaff:x:50:\napp:x:1000:\ndocker:x:999:app\n";

    fn busybox_image() -> swarm_oci::BuiltImage {
        testbed::require(testbed::BUSYBOX, "busybox-static");
        testbed::busybox(
            Path::new(testbed::BUSYBOX),
            &["sh", "echo", "sleep", "cat", "id", "true", "false"],
        )
        .file("/etc/passwd", PASSWD.as_bytes(), 0o644)
        .file("/etc/group", GROUP.as_bytes(), 0o644)
        .symlink("/etc/passwd-link", "/etc/passwd")
        .build()
        .expect("building the busybox image")
    }

    /// A running container made straight from a runtime spec; removed by `stop`.
    struct Running {
        id: String,
    }

    async fn run(
        cd: &Containerd,
        id: &str,
        spec: serde_json::Value,
        parent: &str,
        dir: &Path,
    ) -> Running {
        let spec_bytes = serde_json::to_vec(&spec).expect("spec JSON");
        cd.containers()
            .create(cd.req(CreateContainerRequest {
                container: Some(Container {
                    id: id.into(),
                    runtime: Some(Runtime {
                        name: "io.containerd.runc.v2".into(),
                        options: None,
                    }),
                    spec: Some(prost_types::Any {
                        type_url: spec::SPEC_TYPE_URL.into(),
                        value: spec_bytes,
                    }),
                    snapshotter: SNAPSHOTTER.into(),
                    snapshot_key: id.into(),
                    ..Default::default()
                }),
            }))
            .await
            .expect("Containers.Create");
        let mounts = cd
            .snapshots()
            .prepare(cd.req(PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: id.into(),
                parent: parent.into(),
                labels: HashMap::new(),
            }))
            .await
            .expect("Snapshots.Prepare")
            .into_inner()
            .mounts;
        let log = |n: &str| format!("file://{}", dir.join(format!("{id}.{n}")).display());
        cd.tasks()
            .create(cd.req(CreateTaskRequest {
                container_id: id.into(),
                rootfs: mounts,
                stdout: log("stdout"),
                stderr: log("stderr"),
                ..Default::default()
            }))
            .await
            .unwrap_or_else(|s| panic!("Tasks.Create {id}: {}", s.message()));
        cd.tasks()
            .start(cd.req(StartRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
            .expect("Tasks.Start");
        Running { id: id.into() }
    }

    impl Running {
        async fn stop(self, cd: &Containerd) {
            let id = self.id;
            let _ = cd
                .tasks()
                .kill(cd.req(KillRequest {
                    container_id: id.clone(),
                    exec_id: String::new(),
                    signal: libc::SIGKILL as u32,
                    all: true,
                }))
                .await;
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                cd.tasks().wait(cd.req(WaitRequest {
                    container_id: id.clone(),
                    exec_id: String::new(),
                })),
            )
            .await;
            let _ = cd
                .tasks()
                .delete(cd.req(DeleteTaskRequest {
                    container_id: id.clone(),
                }))
                .await;
            let _ = cd
                .containers()
                .delete(cd.req(DeleteContainerRequest { id: id.clone() }))
                .await;
            let _ = cd
                .snapshots()
                .remove(cd.req(RemoveSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: id,
                }))
                .await;
        }

        async fn pids(&self, cd: &Containerd) -> usize {
            cd.tasks()
                .list_pids(cd.req(ListPidsRequest {
                    container_id: self.id.clone(),
                }))
                .await
                .expect("Tasks.ListPids")
                .into_inner()
                .processes
                .len()
        }
    }

    async fn wait_file(path: &Path, what: &str, log: &dyn Fn() -> String) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(s) = std::fs::read_to_string(path) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{what} never appeared\n{}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_state(
        rx: &mut watch::Receiver<HealthState>,
        within: Duration,
        pred: impl Fn(&HealthState) -> bool,
    ) -> HealthState {
        let r = tokio::time::timeout(within, async {
            loop {
                let s = rx.borrow_and_update().clone();
                if pred(&s) {
                    return s;
                }
                if rx.changed().await.is_err() {
                    panic!("the monitor ended");
                }
            }
        })
        .await;
        match r {
            Ok(s) => s,
            Err(_) => panic!(
                "state not reached within {within:?}; now {:?}",
                *rx.borrow()
            ),
        }
    }

    fn gc_root() -> HashMap<String, String> {
        HashMap::from([("containerd.io/gc.root".to_string(), "yes".to_string())])
    }

    fn no_view_mounts() -> bool {
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .contains("swarm-image-view-")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_probes_and_spec_features_in_real_containers() {
        let tmp = tempfile::Builder::new()
            .prefix("hc")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let ctd = PrivateContainerd::start(tmp.path(), NS).await;
        let log = || ctd.log();
        let registry = testbed::registry_with(tmp.path(), &busybox_image()).await;
        let cd = ctd.connect().await;
        let name = format!("{}/busybox:latest", registry.host());
        let pulled = image::pull(&cd, &name, SNAPSHOTTER, &Default::default())
            .await
            .unwrap_or_else(|e| panic!("pull: {e}\n{}", log()));
        let top = pulled.top_snapshot();

        // read_image_files: one layer (bind view), symlink inside the image, missing file.
        let files = image::read_image_files(
            &cd,
            SNAPSHOTTER,
            &top,
            &[
                "/etc/passwd",
                "/etc/group",
                "/etc/passwd-link",
                "/etc/shadow",
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("read_image_files: {e}\n{}", log()));
        assert_eq!(files[0].as_deref(), Some(PASSWD.as_bytes()));
        assert_eq!(files[1].as_deref(), Some(GROUP.as_bytes()));
        assert_eq!(files[2].as_deref(), Some(PASSWD.as_bytes()));
        assert_eq!(files[3], None);
        assert!(no_view_mounts(), "a view mount was left behind");
        let leases = cd
            .leases()
            .list(cd.req(containerd_client::services::v1::ListRequest { filters: vec![] }))
            .await
            .expect("Leases.List")
            .into_inner()
            .leases;
        assert!(
            leases.iter().all(|l| !l.id.starts_with("swarm-view-")),
            "leases left: {leases:?}"
        );
        assert_eq!(
            image::read_image_file(&cd, SNAPSHOTTER, "", "/etc/passwd")
                .await
                .unwrap(),
            None,
            "an image without layers has no files"
        );
        assert!(
            image::read_image_file(&cd, SNAPSHOTTER, "sha256:nope", "/etc/passwd")
                .await
                .is_err()
        );

        // Two layers (overlay view): a second layer that replaces /etc/group.
        let mounts = cd
            .snapshots()
            .prepare(cd.req(PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: "layer2-active".into(),
                parent: top.clone(),
                // Unreferenced snapshots are garbage collected (the view's lease deletion
                // triggers a collection).
                labels: gc_root(),
            }))
            .await
            .expect("Prepare layer2")
            .into_inner()
            .mounts;
        let mnt = tmp.path().join("layer2");
        std::fs::create_dir_all(&mnt).unwrap();
        let m = &mounts[0];
        let st = Command::new("mount")
            .arg("-t")
            .arg(&m.r#type)
            .arg("-o")
            .arg(m.options.join(","))
            .arg(&m.source)
            .arg(&mnt)
            .status()
            .expect("mount");
        assert!(st.success(), "mounting the layer2 snapshot {m:?}");
        std::fs::write(mnt.join("etc/group"), "root:x:0:\nlayer2:x:7:\n").unwrap();
        assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
        cd.snapshots()
            .commit(cd.req(CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                name: "layer2".into(),
                key: "layer2-active".into(),
                labels: gc_root(),
            }))
            .await
            .expect("Commit layer2");
        let files =
            image::read_image_files(&cd, SNAPSHOTTER, "layer2", &["/etc/group", "/etc/passwd"])
                .await
                .unwrap_or_else(|e| panic!("read_image_files on two layers: {e}\n{}", log()));
        assert_eq!(files[0].as_deref(), Some(&b"root:x:0:\nlayer2:x:7:\n"[..]));
        assert_eq!(files[1].as_deref(), Some(PASSWD.as_bytes()));
        assert!(no_view_mounts());

        // A container with a named user, --group, read-only root, bind and tmpfs mounts and
        // the /etc files.
        let host = tmp.path().join("host");
        let (data, out) = (host.join("data"), host.join("out"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        for d in [&data, &out] {
            Command::new("chmod").arg("0777").arg(d).status().unwrap();
        }
        std::fs::write(data.join("in"), "from the host\n").unwrap();
        let bind = |src: &Path, target: &str, ro: bool| proto::Mount {
            r#type: MountType::Bind as i32,
            source: src.display().to_string(),
            target: target.into(),
            read_only: ro,
            ..Default::default()
        };
        let id = &format!("hcapp{:016x}", rand::random::<u64>());
        let task = Task {
            id: id.into(),
            spec: Some(TaskSpec {
                container: Some(ContainerSpec {
                    image: name.clone(),
                    user: "app".into(),
                    groups: vec!["staff".into()],
                    read_only: true,
                    hostname: "hc-host".into(),
                    mounts: vec![
                        bind(&data, "/data", true),
                        bind(&out, "/out", false),
                        proto::Mount {
                            r#type: MountType::Tmpfs as i32,
                            target: "/scratch".into(),
                            tmpfs_mode: 0o1777,
                            tmpfs_size_bytes: 1 << 20,
                            ..Default::default()
                        },
                    ],
                    command: vec![
                        "sh".into(),
                        "-c".into(),
                        "id > /out/id; cat /etc/hostname > /out/hostname; cat /etc/hosts > /out/hosts; \
                         cat /data/in > /out/data; (echo x > /data/y) 2> /out/data_err; \
                         (echo x > /tmp/t) 2> /out/root_err; echo ok > /scratch/z && cat /scratch/z > /out/scratch; \
                         echo ready > /out/ready; exec sleep 1000"
                            .into(),
                    ],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let etc = tmp.path().join("etc-files");
        spec::write_etc_files(&etc, &task, &spec::hostname(&task), false).expect("etc files");
        let files = SpecFiles {
            passwd: Some(PASSWD.into()),
            group: Some(GROUP.into()),
            etc_dir: Some(etc),
            ..Default::default()
        };
        let opts = SpecOptions {
            container_id: id.into(),
            cgroup_parent: NS.into(),
            netns_path: None,
        };
        let rs = spec::runtime_spec_with(&task, &pulled.config, &opts, &files).expect("spec");
        let logs = tmp.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let c = run(&cd, id, rs, &top, &logs).await;
        wait_file(&out.join("ready"), "/out/ready", &|| {
            format!(
                "{}\n{}",
                std::fs::read_to_string(logs.join(format!("{id}.stderr"))).unwrap_or_default(),
                log()
            )
        })
        .await;
        let read = |n: &str| std::fs::read_to_string(out.join(n)).unwrap_or_default();
        assert_eq!(
            read("id"),
            // (the kernel sorts the supplementary groups)
            "uid=1000(app) gid=1000(app) groups=10(wheel),50(staff),999(docker),1000(app)\n"
        );
        assert_eq!(read("hostname"), "hc-host\n");
        assert!(
            read("hosts").starts_with("127.0.0.1\tlocalhost\n"),
            "{}",
            read("hosts")
        );
        assert_eq!(read("data"), "from the host\n");
        assert!(
            read("data_err").contains("Read-only file system"),
            "{}",
            read("data_err")
        );
        assert!(
            read("root_err").contains("Read-only file system"),
            "{}",
            read("root_err")
        );
        assert_eq!(read("scratch"), "ok\n");
        assert!(!data.join("y").exists());

        // Probes: success, failure (stderr captured), output limit, a missing command,
        // timeout (the probe process is killed and removed).
        let probe_dir = tmp.path().join("probes");
        let sh = |s: &str| Probe::Shell(vec![s.to_string()]);
        let t = Duration::from_secs(10);
        let r = run_probe(&cd, id, &sh("echo ok; id -u"), t, &probe_dir).await;
        assert_eq!(
            r,
            ProbeResult {
                exit_code: Some(0),
                output: "ok\n1000\n".into(),
                timed_out: false
            },
            "{}",
            log()
        );
        let r = run_probe(&cd, id, &sh("echo bad >&2; exit 3"), t, &probe_dir).await;
        assert_eq!((r.exit_code, r.output.as_str()), (Some(3), "bad\n"));
        let r = run_probe(
            &cd,
            id,
            &sh("i=0; while [ $i -lt 600 ]; do echo 0123456789; i=$((i+1)); done"),
            t,
            &probe_dir,
        )
        .await;
        assert_eq!(r.exit_code, Some(0));
        assert_eq!(r.output.len(), MAX_OUTPUT);
        let r = run_probe(&cd, id, &Probe::Cmd(vec!["/nope".into()]), t, &probe_dir).await;
        assert_eq!(r.exit_code, None);
        assert!(!r.healthy());
        assert!(r.output.contains("/nope"), "{}", r.output);
        let t0 = Instant::now();
        let r = run_probe(
            &cd,
            id,
            &sh("sleep 30"),
            Duration::from_millis(500),
            &probe_dir,
        )
        .await;
        assert!(
            t0.elapsed() < Duration::from_secs(6),
            "timeout took {:?}",
            t0.elapsed()
        );
        assert_eq!(
            r,
            ProbeResult {
                exit_code: None,
                output: "Health check exceeded timeout (500ms)".into(),
                timed_out: true
            }
        );
        assert_eq!(
            c.pids(&cd).await,
            1,
            "probe processes left in the container"
        );
        let left: Vec<_> = std::fs::read_dir(&probe_dir).unwrap().collect();
        assert!(left.is_empty(), "probe output files left: {left:?}");

        // Monitor: unhealthy after `retries` failures, healthy after a success.
        let check = HealthCheck {
            test: sh("cat /scratch/healthy"),
            interval: Duration::from_millis(200),
            timeout: Duration::from_secs(5),
            start_period: Duration::ZERO,
            start_interval: DEFAULT_START_INTERVAL,
            retries: 2,
        };
        let (tx, mut rx) = watch::channel(HealthState::Starting);
        let h = tokio::spawn(monitor(cd.clone(), id.into(), check, probe_dir.clone(), tx));
        let s = wait_state(&mut rx, Duration::from_secs(20), |s| {
            matches!(s, HealthState::Unhealthy { .. })
        })
        .await;
        assert!(
            matches!(&s, HealthState::Unhealthy { output } if output.contains("No such file")),
            "{s:?}\n{}",
            log()
        );
        let r = run_probe(&cd, id, &sh("echo > /scratch/healthy"), t, &probe_dir).await;
        assert!(r.healthy(), "{r:?}");
        wait_state(&mut rx, Duration::from_secs(20), |s| {
            *s == HealthState::Healthy
        })
        .await;
        drop(rx);
        tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .expect("the monitor ends once the receiver is dropped")
            .expect("monitor task");

        // Start period: fast probes whose failures do not count, then unhealthy.
        let check = HealthCheck {
            test: sh("cat /scratch/never"),
            interval: Duration::from_millis(300),
            timeout: Duration::from_secs(5),
            start_period: Duration::from_secs(3),
            start_interval: Duration::from_millis(100),
            retries: 1,
        };
        let (tx, mut rx) = watch::channel(HealthState::Starting);
        let started = Instant::now();
        let h = tokio::spawn(monitor(cd.clone(), id.into(), check, probe_dir.clone(), tx));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            *rx.borrow(),
            HealthState::Starting,
            "failures in the start period count"
        );
        wait_state(&mut rx, Duration::from_secs(20), |s| {
            matches!(s, HealthState::Unhealthy { .. })
        })
        .await;
        assert!(started.elapsed() >= Duration::from_secs(3));
        drop(rx);
        tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .expect("monitor ends")
            .expect("monitor task");
        assert_eq!(
            c.pids(&cd).await,
            1,
            "probe processes left in the container"
        );

        c.stop(&cd).await;

        // A user name the image does not know is refused with Docker's words.
        let mut bad = task.clone();
        if let Some(cs) = bad.spec.as_mut().and_then(|s| s.container.as_mut()) {
            cs.user = "nobody".into();
        }
        let e = spec::runtime_spec_with(&bad, &pulled.config, &opts, &files).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unable to find user nobody: no matching entries in passwd file"
        );
        drop(registry);
    }
}
