//! Task execution goes through the [`Executor`] trait. The daemon runs the containerd
//! executor (`crate::containerd`); [`UnsupportedExecutor`] (`--executor none`) rejects every
//! task with an error that says why, so that nothing pretends to run.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use proto::{ContainerStatus, PortConfig, PublishMode, Resources, Task, TaskState, TaskStatus};
use tokio::sync::{mpsc, watch};

use crate::dependencies::TaskFiles;

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
    /// The task's host-mode ports: its `port_status` while it runs.
    host_ports: Vec<PortConfig>,
}

/// The ports a task publishes in host mode (its allocated endpoint's), which it holds on
/// this node while it runs: what `service ps` shows in PORTS (`*:8080->80/tcp`).
pub fn host_ports(task: &Task) -> Vec<PortConfig> {
    task.endpoint
        .iter()
        .flat_map(|e| e.ports.iter())
        .filter(|p| p.publish_mode == PublishMode::Host as i32 && p.published_port != 0)
        .cloned()
        .collect()
}

impl TaskReporter {
    pub fn new(task_id: String, tx: mpsc::UnboundedSender<(String, TaskStatus)>) -> Self {
        TaskReporter {
            task_id,
            tx,
            host_ports: Vec::new(),
        }
    }

    /// A reporter for `task` whose RUNNING statuses carry the task's host-mode ports
    /// (Docker reports them as the task's `PortStatus` while its container runs).
    pub fn for_task(task: &Task, tx: mpsc::UnboundedSender<(String, TaskStatus)>) -> Self {
        TaskReporter {
            host_ports: host_ports(task),
            ..TaskReporter::new(task.id.clone(), tx)
        }
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
            status.timestamp = swarm_common::clock::now_ms();
        }
        if status.state == TaskState::Running as i32 && status.port_status.is_empty() {
            status.port_status = self.host_ports.clone();
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

    /// [`Executor::run`] for a task with secrets and configs: `files` are what its container
    /// must see. An executor that cannot deliver them rejects such a task (never runs it
    /// without them).
    fn run_with(
        &self,
        task: Task,
        files: TaskFiles,
        reporter: TaskReporter,
        stop: watch::Receiver<bool>,
    ) -> BoxFuture<'static, ()> {
        if files.is_empty() {
            return self.run(task, reporter, stop);
        }
        Box::pin(async move {
            reporter.fail(
                TaskState::Rejected,
                "this node's executor cannot give tasks secrets or configs: constrain the service to other nodes",
                0,
            );
        })
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Endpoint, PortProtocol};

    fn port(published: u32, target: u32, mode: PublishMode) -> PortConfig {
        PortConfig {
            published_port: published,
            target_port: target,
            protocol: PortProtocol::Tcp as i32,
            publish_mode: mode as i32,
            ..Default::default()
        }
    }

    fn task() -> Task {
        Task {
            id: "t1".into(),
            endpoint: Some(Endpoint {
                ports: vec![
                    port(30000, 80, PublishMode::Ingress),
                    port(8080, 8080, PublishMode::Host),
                    port(0, 81, PublishMode::Host),
                ],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn host_ports_are_the_endpoints_host_mode_ports() {
        assert_eq!(
            host_ports(&task()),
            vec![port(8080, 8080, PublishMode::Host)]
        );
        assert!(host_ports(&Task::default()).is_empty());
    }

    #[tokio::test]
    async fn running_statuses_carry_the_host_ports() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let r = TaskReporter::for_task(&task(), tx);
        r.report(TaskState::Starting, "starting");
        r.report(TaskState::Running, "started");
        r.report(TaskState::Shutdown, "shutdown");
        let (id, starting) = rx.recv().await.unwrap();
        assert_eq!(id, "t1");
        assert!(starting.port_status.is_empty());
        let (_, running) = rx.recv().await.unwrap();
        assert_eq!(
            running.port_status,
            vec![port(8080, 8080, PublishMode::Host)]
        );
        let (_, shutdown) = rx.recv().await.unwrap();
        assert!(shutdown.port_status.is_empty(), "released once it stops");
    }
}
