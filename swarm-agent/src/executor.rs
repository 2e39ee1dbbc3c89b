//! Task execution goes through the [`Executor`] trait. The daemon runs the containerd
//! executor (`crate::containerd`); [`UnsupportedExecutor`] (`--executor none`) rejects every
//! task with an error that says why, so that nothing pretends to run.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use proto::{ContainerStatus, Resources, Task, TaskState, TaskStatus};
use tokio::sync::{mpsc, watch};

/// What the executor tells the managers about the node.
#[derive(Clone, Debug, Default)]
pub struct ExecutorDescription {
    pub resources: Resources,
    pub engine_version: String,
    pub engine_labels: BTreeMap<String, String>,
}

/// Reports the observed state of one task to the managers.
#[derive(Clone)]
pub struct TaskReporter {
    task_id: String,
    tx: mpsc::UnboundedSender<(String, TaskStatus)>,
}

impl TaskReporter {
    pub fn new(task_id: String, tx: mpsc::UnboundedSender<(String, TaskStatus)>) -> Self {
        TaskReporter { task_id, tx }
    }

    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    pub fn report(&self, state: TaskState, message: &str) {
        self.report_status(TaskStatus {
            state: state as i32,
            message: message.to_string(),
            ..Default::default()
        });
    }

    pub fn fail(&self, state: TaskState, err: &str, exit_code: i32) {
        self.report_status(TaskStatus {
            state: state as i32,
            message: state.display_name().to_string(),
            err: err.to_string(),
            container_status: Some(ContainerStatus {
                exit_code,
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    pub fn report_status(&self, mut status: TaskStatus) {
        if status.timestamp == 0 {
            status.timestamp = swarm_manager::store::now_ms();
        }
        // The receiver lives as long as the agent; a send error means it is shutting down.
        let _ = self.tx.send((self.task_id.clone(), status));
    }
}

/// Runs tasks on this node.
pub trait Executor: Send + Sync + 'static {
    fn describe(&self) -> ExecutorDescription;

    /// Runs `task` until it ends or `stop` turns true, reporting every state change from
    /// ACCEPTED on. When stopped it must shut the task down and report SHUTDOWN. A fatal
    /// error before STARTING is REJECTED, at or after STARTING it is FAILED.
    fn run(
        &self,
        task: Task,
        reporter: TaskReporter,
        stop: watch::Receiver<bool>,
    ) -> BoxFuture<'static, ()>;

    /// Takes over a task this node started before the agent restarted (its observed state is
    /// past ASSIGNED): supervise it if it still runs, report how it ended if it ended, or
    /// report it FAILED if nothing of it is left. Same contract as [`Executor::run`] after that.
    fn adopt(
        &self,
        _task: Task,
        reporter: TaskReporter,
        _stop: watch::Receiver<bool>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            reporter.fail(
                TaskState::Failed,
                "the agent restarted and lost track of this task",
                -1,
            );
        })
    }

    /// Stops and removes the containers of tasks that are not in `keep` (tasks that may run
    /// here), left behind by an agent that died; also deletes the files of tasks that are not
    /// in `known` (every task the managers still have for this node).
    fn remove_orphans(
        &self,
        _keep: std::collections::HashSet<String>,
        _known: std::collections::HashSet<String>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }

    /// Deletes what is left of an ended task (its logs and files) once the managers
    /// removed it.
    fn remove(&self, _task_id: String) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// The executor of a node started with `--executor none`: it runs nothing and says so.
pub struct UnsupportedExecutor;

pub const UNSUPPORTED: &str = "this node runs no tasks: its swarm-agent was started with --executor none (drain it, or restart it with --executor containerd)";

impl Executor for UnsupportedExecutor {
    fn describe(&self) -> ExecutorDescription {
        ExecutorDescription {
            resources: host_resources(),
            engine_version: format!("swarm-agent {}", env!("CARGO_PKG_VERSION")),
            engine_labels: BTreeMap::new(),
        }
    }

    fn run(
        &self,
        _task: Task,
        reporter: TaskReporter,
        _stop: watch::Receiver<bool>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            reporter.fail(TaskState::Rejected, UNSUPPORTED, 0);
        })
    }
}

/// CPUs and memory of this host.
pub fn host_resources() -> Resources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<i64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    Resources {
        nano_cpus: cpus * 1_000_000_000,
        memory_bytes: mem,
    }
}
