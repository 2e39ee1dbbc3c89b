//! A simulated executor for tests and the lab: it runs no container, it walks each task
//! through the states an executor reports. It lives in test code only; the shipped
//! `swarm-agent` rejects tasks it cannot run.
//!
//! The image name chooses the behaviour:
//! - `sim/fail`: runs for 300 ms, then FAILED with exit code 1;
//! - `sim/complete`: runs for 300 ms, then COMPLETE with exit code 0;
//! - `sim/reject`: REJECTED before starting ("image not found");
//! - anything else: RUNNING until told to stop, then SHUTDOWN.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use proto::{Task, TaskState};
use swarm_agent::executor::{host_resources, ExecutorDescription};
use swarm_agent::{Executor, TaskReporter};
use tokio::sync::watch;

pub struct SimExecutor;

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
            reporter.report(TaskState::Running, "started");
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
                    reporter.report(TaskState::Shutdown, "shutdown");
                }
            }
        })
    }
}
