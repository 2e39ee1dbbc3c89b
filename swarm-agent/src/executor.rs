//! Task execution goes through the [`Executor`] trait. The containerd executor is the next
//! step; until it exists the shipped daemon uses [`UnsupportedExecutor`], which rejects
//! every task with an error that says why, so that nothing pretends to run.

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
}

/// The executor of this build: it cannot run containers and says so.
pub struct UnsupportedExecutor;

pub const UNSUPPORTED: &str = "this swarm-agent cannot run tasks yet: no container executor is built in (the containerd executor is not implemented)";

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
