//! The node's task runner: applies the dispatcher's assignments (start tasks whose desired
//! state is RUNNING, stop those whose desired state moved past it) and hands the status each
//! task reports to its `StatusReports`, which the session sends to the managers in batches.
//!
//! An assignment also carries the task's status as the managers have it. When that is
//! behind the last status the task reported here, the report is sent again (SwarmKit's
//! agent does the same): a report the managers acknowledged but did not record (a leader
//! that answered from a state older than this agent's) is not lost for good.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use proto::{
    assignment_change, assignments_message, AssignmentsMessage, Task, TaskState, TaskStatus,
};
use tokio::sync::{mpsc, watch};

use crate::dependencies::Dependencies;
use crate::executor::{Executor, TaskReporter};
use crate::reporter::StatusReports;

struct Running {
    stop: watch::Sender<bool>,
}

pub struct Worker {
    executor: Arc<dyn Executor>,
    running: Arc<Mutex<HashMap<String, Running>>>,
    /// The statuses tasks reported, until the session sends them.
    reports: StatusReports,
    /// Last state reported per task, so that assignments do not restart finished tasks.
    finished: Mutex<HashSet<String>>,
    /// The last status each task reported here, until the managers remove the task.
    last: Mutex<HashMap<String, TaskStatus>>,
    tx: mpsc::UnboundedSender<(String, TaskStatus)>,
    /// The secrets and configs of this node's tasks, in memory only.
    dependencies: Dependencies,
}

impl Worker {
    pub fn new(executor: Arc<dyn Executor>) -> Arc<Worker> {
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, TaskStatus)>();
        let w = Arc::new(Worker {
            executor,
            running: Arc::new(Mutex::new(HashMap::new())),
            reports: StatusReports::default(),
            finished: Mutex::new(HashSet::new()),
            last: Mutex::new(HashMap::new()),
            tx,
            dependencies: Dependencies::default(),
        });
        let weak = Arc::downgrade(&w);
        tokio::spawn(async move {
            while let Some((id, status)) = rx.recv().await {
                let Some(w) = weak.upgrade() else { return };
                let terminal = TaskState::try_from(status.state).is_ok_and(|s| s.is_terminal());
                if terminal {
                    lock(&w.running).remove(&id);
                    lock(&w.finished).insert(id.clone());
                }
                lock(&w.last).insert(id.clone(), status.clone());
                w.reports.record(id, status);
            }
        });
        w
    }

    pub fn executor(&self) -> &Arc<dyn Executor> {
        &self.executor
    }

    /// The statuses tasks reported, to be sent to the managers.
    pub fn reports(&self) -> &StatusReports {
        &self.reports
    }

    /// The secrets and configs the managers sent this node.
    pub fn dependencies(&self) -> &Dependencies {
        &self.dependencies
    }

    pub fn apply(&self, msg: AssignmentsMessage) {
        let complete = msg.r#type == assignments_message::Type::Complete as i32;
        // Secrets and configs first: the tasks of the same message use them.
        self.dependencies.apply(complete, &msg.changes);
        let mut seen = HashSet::new();
        let mut may_run = HashSet::new();
        for change in msg.changes {
            let Some(task) = change.task else { continue };
            if change.action == assignment_change::Action::Remove as i32 {
                self.stop(&task.id);
                lock(&self.finished).remove(&task.id);
                lock(&self.last).remove(&task.id);
                self.remove_later(task.id.clone());
                continue;
            }
            seen.insert(task.id.clone());
            if task.desired() <= TaskState::Running {
                may_run.insert(task.id.clone());
            }
            self.update(task);
        }
        if complete {
            // What the managers no longer assign and this node no longer runs is forgotten:
            // a task reaped while this agent was away never got its removal here.
            let running: HashSet<String> = lock(&self.running).keys().cloned().collect();
            let keep = |id: &String| seen.contains(id) || running.contains(id);
            lock(&self.finished).retain(|id| keep(id));
            lock(&self.last).retain(|id, _| keep(id));
            // Tasks this node runs that the managers no longer assign to it.
            let stale: Vec<String> = running
                .iter()
                .filter(|id| !seen.contains(*id))
                .cloned()
                .collect();
            for id in stale {
                self.stop(&id);
            }
            // Containers of an earlier life of this agent that no assignment covers.
            let mut keep = may_run;
            keep.extend(lock(&self.running).keys().cloned());
            let mut known = seen;
            known.extend(keep.iter().cloned());
            tokio::spawn(self.executor.remove_orphans(keep, known));
        }
    }

    /// Deletes a removed task's files once it no longer runs here.
    fn remove_later(&self, id: String) {
        let executor = self.executor.clone();
        let running = self.running.clone();
        tokio::spawn(async move {
            // The stop above makes it end within its grace period (plus the kill).
            for _ in 0..600 {
                if !lock(&running).contains_key(&id) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            executor.remove(id).await;
        });
    }

    fn update(&self, task: Task) {
        let desired = task.desired();
        let observed = task.state();
        let known = lock(&self.running).contains_key(&task.id);
        let finished = lock(&self.finished).contains(&task.id);
        if known || finished {
            self.report_again_if_behind(&task);
        }
        if desired > TaskState::Running {
            if known {
                self.stop(&task.id);
            } else if !observed.is_terminal() && !finished {
                // Never started here (or lost): it is shut down as far as this node knows.
                TaskReporter::new(task.id.clone(), self.tx.clone())
                    .report(TaskState::Shutdown, "shutdown before the task started");
            }
            return;
        }
        if desired != TaskState::Running || known || finished || observed.is_terminal() {
            return;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        lock(&self.running).insert(task.id.clone(), Running { stop: stop_tx });
        let reporter = TaskReporter::for_task(&task, self.tx.clone());
        let fut = if observed > TaskState::Assigned {
            // The managers think it runs here but this agent has no record of it: the agent
            // restarted. The executor takes the task over, or reports what became of it.
            tracing::info!(task = %task.id, service = %task.service_name, "adopting task");
            self.executor.adopt(task, reporter, stop_rx)
        } else {
            let files = match self.dependencies.files_for(&task) {
                Ok(f) => f,
                Err(e) => {
                    lock(&self.running).remove(&task.id);
                    return reporter.fail(TaskState::Rejected, &e, 0);
                }
            };
            tracing::info!(task = %task.id, service = %task.service_name, "starting task");
            self.executor.run_with(task, files, reporter, stop_rx)
        };
        tokio::spawn(fut);
    }

    /// Sends this task's last status again if the managers' copy of the task has an
    /// earlier state.
    fn report_again_if_behind(&self, task: &Task) {
        let last = lock(&self.last).get(&task.id).cloned();
        if let Some(last) = last.filter(|l| l.state > task.state() as i32) {
            tracing::debug!(task = %task.id, "the managers are behind this task's status; reporting it again");
            self.reports.record(task.id.clone(), last);
        }
    }

    fn stop(&self, id: &str) {
        if let Some(r) = lock(&self.running).get(id) {
            tracing::info!(task = %id, "stopping task");
            let _ = r.stop.send(true);
        }
    }

    /// Stops every task (leaving the swarm).
    pub fn stop_all(&self) {
        self.dependencies.clear();
        for r in lock(&self.running).values() {
            let _ = r.stop.send(true);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::ExecutorDescription;
    use futures::future::BoxFuture;
    use proto::AssignmentChange;
    use std::time::Duration;

    /// RUNNING at once, SHUTDOWN when stopped.
    struct Instant;

    impl Executor for Instant {
        fn describe(&self) -> ExecutorDescription {
            ExecutorDescription {
                resources: Default::default(),
                engine_version: "test".into(),
                engine_labels: Default::default(),
            }
        }

        fn run(
            &self,
            _task: Task,
            reporter: TaskReporter,
            mut stop: watch::Receiver<bool>,
        ) -> BoxFuture<'static, ()> {
            Box::pin(async move {
                reporter.report(TaskState::Running, "started");
                let _ = stop.wait_for(|s| *s).await;
                reporter.report(TaskState::Shutdown, "shutdown");
            })
        }
    }

    fn assignment(state: TaskState) -> AssignmentsMessage {
        AssignmentsMessage {
            r#type: assignments_message::Type::Incremental as i32,
            changes: vec![AssignmentChange {
                action: assignment_change::Action::Update as i32,
                task: Some(Task {
                    id: "t".into(),
                    desired_state: TaskState::Running as i32,
                    status: Some(TaskStatus {
                        state: state as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        }
    }

    /// The reports waiting to be sent, as (task, state), after the worker caught up.
    async fn pending(w: &Worker) -> Vec<(String, i32)> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        w.reports()
            .take_pending()
            .into_iter()
            .map(|u| (u.task_id, u.status.map_or(0, |s| s.state)))
            .collect()
    }

    #[tokio::test]
    async fn a_status_the_managers_did_not_record_is_reported_again() {
        let w = Worker::new(Arc::new(Instant));
        let running = vec![("t".to_string(), TaskState::Running as i32)];
        w.apply(assignment(TaskState::Assigned));
        assert_eq!(pending(&w).await, running, "started and reported");
        // The report was sent, but the managers still say ASSIGNED: send it again.
        w.apply(assignment(TaskState::Assigned));
        assert_eq!(pending(&w).await, running);
        // Once they have it, nothing more is sent.
        w.apply(assignment(TaskState::Running));
        assert_eq!(pending(&w).await, vec![]);
        assert_eq!(lock(&w.running).len(), 1, "started once");
    }

    #[tokio::test]
    async fn tasks_a_complete_set_no_longer_names_are_forgotten() {
        let w = Worker::new(Arc::new(Instant));
        w.apply(assignment(TaskState::Assigned));
        pending(&w).await;
        // The managers reaped the task while this agent was away: the next complete set
        // does not name it, and no removal ever comes.
        let none = || AssignmentsMessage {
            r#type: assignments_message::Type::Complete as i32,
            changes: vec![],
        };
        w.apply(none());
        assert_eq!(
            pending(&w).await,
            vec![("t".to_string(), TaskState::Shutdown as i32)],
            "stopped"
        );
        // Its final status was kept when it ended; the next complete set lets it go.
        assert!(lock(&w.last).contains_key("t"));
        w.apply(none());
        pending(&w).await;
        assert!(lock(&w.finished).is_empty(), "finished kept");
        assert!(lock(&w.last).is_empty(), "last status kept");
    }
}
