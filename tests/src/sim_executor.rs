//! A simulated executor for tests and the lab: it runs no container, it walks each task
//! through the states an executor reports. It lives in test code only; the shipped
//! `swarm-agent` rejects tasks it cannot run.
//!
//! The image name chooses the behaviour:
//! - `sim/fail`: runs for 300 ms, then FAILED with exit code 1;
//! - `sim/complete`: runs for 300 ms, then COMPLETE with exit code 0;
//! - `sim/reject`: REJECTED before starting ("image not found");
//! - anything else: RUNNING until told to stop, then SHUTDOWN.
//!
//! Running state: while a task is RUNNING, the file `<data root>/sim-running/<task id>`
//! holds its service id (removed when it stops, ends, or the agent drops it), so a test sees
//! what the executors actually run, not only what the managers believe ([`running_tasks`]).
//!
//! Logs: when the task's env has `SIM_LOG=<text>` (stdout) or `SIM_LOG_ERR=<text>`
//! (stderr), the task writes that line to `<data root>/tasks/<task id>/container.log` in
//! the log driver's format once RUNNING (the data root is the process's `--data-root`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use proto::{Task, TaskState};
use swarm_agent::executor::{host_resources, ExecutorDescription};
use swarm_agent::{Executor, TaskReporter};
use tokio::sync::watch;

pub struct SimExecutor;

/// `--data-root` of this process (the test agent's flag), or its default.
fn data_root() -> PathBuf {
    let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    for (i, a) in args.iter().enumerate() {
        if let Some(v) = a.strip_prefix("--data-root=") {
            return PathBuf::from(v);
        }
        if a == "--data-root" {
            if let Some(v) = args.get(i + 1) {
                return PathBuf::from(v);
            }
        }
    }
    PathBuf::from("/var/lib/swarm")
}

/// Writes the task's `SIM_LOG`/`SIM_LOG_ERR` lines as the log driver would.
fn write_sim_logs(task: &Task) {
    let env = task
        .spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .map(|c| c.env.clone())
        .unwrap_or_default();
    let mut out = String::new();
    for e in &env {
        let (stream, text) = match e.split_once('=') {
            Some(("SIM_LOG", t)) => ("stdout", t),
            Some(("SIM_LOG_ERR", t)) => ("stderr", t),
            _ => continue,
        };
        let entry = serde_json::json!({
            "log": format!("{text}\n"),
            "stream": stream,
            "time": swarm_agent::logs::format_rfc3339_nano(SystemTime::now()),
        });
        out.push_str(&format!("{entry}\n"));
    }
    if out.is_empty() {
        return;
    }
    let dir = data_root().join("tasks").join(&task.id);
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // The log driver's mode (Docker's json-file mode).
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(dir.join(swarm_agent::logs::LOG_FILE))?
            .write_all(out.as_bytes())
    });
    if let Err(e) = written {
        eprintln!("sim executor: writing the logs of task {}: {e}", task.id);
    }
}

/// The directory of the running markers under a data root.
pub const RUNNING_DIR: &str = "sim-running";

/// The tasks the simulated executor of the daemon with data root `data_root` runs right now:
/// (task id, service id).
pub fn running_tasks(data_root: &std::path::Path) -> Vec<(String, String)> {
    let Ok(dir) = std::fs::read_dir(data_root.join(RUNNING_DIR)) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let service = std::fs::read_to_string(e.path()).ok()?;
        Some((e.file_name().to_string_lossy().into_owned(), service))
    })
    .collect()
}

/// A task's running marker: made when it starts running, removed when dropped (however
/// the run ends, including the agent dropping it).
struct RunningMarker(PathBuf);

impl RunningMarker {
    fn new(task: &Task) -> RunningMarker {
        let dir = data_root().join(RUNNING_DIR);
        let path = dir.join(&task.id);
        let made = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&path, task.service_id.as_bytes()));
        if let Err(e) = made {
            eprintln!(
                "sim executor: writing the running marker of task {}: {e}",
                task.id
            );
        }
        RunningMarker(path)
    }
}

impl Drop for RunningMarker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn step(reporter: &TaskReporter, state: TaskState, msg: &str) {
    reporter.report(state, msg);
    tokio::time::sleep(Duration::from_millis(20)).await;
}

impl Executor for SimExecutor {
    fn describe(&self) -> ExecutorDescription {
        ExecutorDescription {
            resources: host_resources(),
            engine_version: "sim".into(),
            engine_labels: BTreeMap::from([("executor".to_string(), "sim".to_string())]),
        }
    }

    fn run(
        &self,
        task: Task,
        reporter: TaskReporter,
        mut stop: watch::Receiver<bool>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let image = task
                .spec
                .as_ref()
                .and_then(|s| s.container.as_ref())
                .map(|c| c.image.clone())
                .unwrap_or_default();
            step(&reporter, TaskState::Accepted, "accepted").await;
            step(&reporter, TaskState::Preparing, "preparing").await;
            if image.starts_with("sim/reject") {
                reporter.fail(TaskState::Rejected, "image not found: sim/reject", 0);
                return;
            }
            step(&reporter, TaskState::Ready, "prepared").await;
            step(&reporter, TaskState::Starting, "starting").await;
            let marker = RunningMarker::new(&task);
            reporter.report(TaskState::Running, "started");
            write_sim_logs(&task);
            let ends = if image.starts_with("sim/fail") {
                Some((TaskState::Failed, 1))
            } else if image.starts_with("sim/complete") {
                Some((TaskState::Complete, 0))
            } else {
                None
            };
            let wait_stop = async {
                while !*stop.borrow_and_update() {
                    if stop.changed().await.is_err() {
                        // The agent dropped the task: treat as a stop.
                        break;
                    }
                }
            };
            match ends {
                Some((state, code)) => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(300)) => {
                            if state == TaskState::Failed {
                                reporter.fail(state, &format!("task: non-zero exit ({code})"), code);
                            } else {
                                reporter.report(state, "finished");
                            }
                        }
                        _ = wait_stop => reporter.report(TaskState::Shutdown, "shutdown"),
                    }
                }
                None => {
                    wait_stop.await;
                    drop(marker);
                    reporter.report(TaskState::Shutdown, "shutdown");
                    return;
                }
            }
            drop(marker);
        })
    }
}
