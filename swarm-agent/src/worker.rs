//! The node's task runner: applies the dispatcher's assignments (start tasks whose desired
//! state is RUNNING, stop those whose desired state moved past it) and collects the status
//! each task reports, to be sent to the managers in batches.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use proto::{
    assignment_change, assignments_message, AssignmentsMessage, Task, TaskState, TaskStatus,
    TaskStatusUpdate,
};
use tokio::sync::{mpsc, watch, Notify};

use crate::executor::{Executor, TaskReporter};

struct Running {
    stop: watch::Sender<bool>,
}

pub struct Worker {
    executor: Arc<dyn Executor>,
    running: Mutex<HashMap<String, Running>>,
    /// Latest unsent status per task.
    pending: Mutex<HashMap<String, TaskStatus>>,
    /// Last state reported per task, so that assignments do not restart finished tasks.
    finished: Mutex<HashSet<String>>,
    pub notify: Notify,
    tx: mpsc::UnboundedSender<(String, TaskStatus)>,
}

impl Worker {
    pub fn new(executor: Arc<dyn Executor>) -> Arc<Worker> {
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, TaskStatus)>();
        let w = Arc::new(Worker {
            executor,
            running: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            finished: Mutex::new(HashSet::new()),
            notify: Notify::new(),
            tx,
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
                lock(&w.pending).insert(id, status);
                w.notify.notify_one();
            }
        });
        w
    }

    pub fn executor(&self) -> &Arc<dyn Executor> {
        &self.executor
    }

    /// Statuses to send now (taken out; give them back with `requeue` if sending fails).
    pub fn take_pending(&self) -> Vec<TaskStatusUpdate> {
        lock(&self.pending)
            .drain()
            .map(|(task_id, status)| TaskStatusUpdate {
                task_id,
                status: Some(status),
            })
            .collect()
    }

    pub fn requeue(&self, updates: Vec<TaskStatusUpdate>) {
        let mut p = lock(&self.pending);
        for u in updates {
            if let Some(s) = u.status {
                // A newer status may have arrived meanwhile: keep the newest.
                p.entry(u.task_id).or_insert(s);
            }
        }
    }

    pub fn apply(&self, msg: AssignmentsMessage) {
        let complete = msg.r#type == assignments_message::Type::Complete as i32;
        let mut seen = HashSet::new();
        for change in msg.changes {
            let Some(task) = change.task else { continue };
            if change.action == assignment_change::Action::Remove as i32 {
                self.stop(&task.id);
                lock(&self.finished).remove(&task.id);
                continue;
            }
            seen.insert(task.id.clone());
            self.update(task);
        }
        if complete {
            // Tasks this node runs that the managers no longer assign to it.
            let stale: Vec<String> = lock(&self.running)
                .keys()
                .filter(|id| !seen.contains(*id))
                .cloned()
                .collect();
            for id in stale {
                self.stop(&id);
            }
        }
    }

    fn update(&self, task: Task) {
        let desired = task.desired();
        let observed = task.state();
        let known = lock(&self.running).contains_key(&task.id);
        let finished = lock(&self.finished).contains(&task.id);
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
        if observed > TaskState::Assigned {
            // The managers think it runs here, but this agent has no record of it (the agent
            // restarted): report it failed so that the restart policy replaces it.
            TaskReporter::new(task.id.clone(), self.tx.clone()).fail(
                TaskState::Failed,
                "the agent restarted and lost track of this task",
                -1,
            );
            return;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        lock(&self.running).insert(task.id.clone(), Running { stop: stop_tx });
        let reporter = TaskReporter::new(task.id.clone(), self.tx.clone());
        tracing::info!(task = %task.id, service = %task.service_name, "starting task");
        let fut = self.executor.run(task, reporter, stop_rx);
        tokio::spawn(fut);
    }

    fn stop(&self, id: &str) {
        if let Some(r) = lock(&self.running).get(id) {
            tracing::info!(task = %id, "stopping task");
            let _ = r.stop.send(true);
        }
    }

    /// Stops every task (leaving the swarm).
    pub fn stop_all(&self) {
        for r in lock(&self.running).values() {
            let _ = r.stop.send(true);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
