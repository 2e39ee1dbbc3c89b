//! Task status reports on their way to the managers: the latest unsent status of each task,
//! sent in batches on the dispatcher session (a failed batch waits for the next session).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use proto::dispatcher_client::DispatcherClient;
use proto::{TaskStatus, TaskStatusUpdate, UpdateTaskStatusRequest};
use tokio::sync::Notify;
use tonic::transport::Channel;
use tonic::Status;

#[derive(Default)]
pub struct StatusReports {
    /// Latest unsent status per task.
    pending: Mutex<HashMap<String, TaskStatus>>,
    notify: Notify,
}

impl StatusReports {
    /// Keeps `status` as the task's latest unsent one and wakes the sender.
    pub fn record(&self, task_id: String, status: TaskStatus) {
        self.lock().insert(task_id, status);
        self.notify.notify_one();
    }

    /// Statuses to send now (taken out; give them back with `requeue` if sending fails).
    pub fn take_pending(&self) -> Vec<TaskStatusUpdate> {
        self.lock()
            .drain()
            .map(|(task_id, status)| TaskStatusUpdate {
                task_id,
                status: Some(status),
            })
            .collect()
    }

    pub fn requeue(&self, updates: Vec<TaskStatusUpdate>) {
        let mut p = self.lock();
        for u in updates {
            if let Some(s) = u.status {
                // A newer status may have arrived meanwhile: keep the newest.
                p.entry(u.task_id).or_insert(s);
            }
        }
    }

    /// Sends the statuses on the session `session_id` as they arrive (looking at least every
    /// 500 ms) until sending fails; the failed batch is kept for the next session.
    pub async fn send(&self, mut client: DispatcherClient<Channel>, session_id: String) -> Status {
        loop {
            let updates = self.take_pending();
            if !updates.is_empty() {
                let req = UpdateTaskStatusRequest {
                    session_id: session_id.clone(),
                    updates: updates.clone(),
                };
                if let Err(s) = client.update_task_status(req).await {
                    self.requeue(updates);
                    return s;
                }
            }
            tokio::select! {
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TaskStatus>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::TaskState;

    fn status(state: TaskState) -> TaskStatus {
        TaskStatus {
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn a_requeued_batch_does_not_overwrite_a_newer_status() {
        let reports = StatusReports::default();
        reports.record("a".into(), status(TaskState::Running));
        reports.record("b".into(), status(TaskState::Running));
        let batch = reports.take_pending();
        assert_eq!(batch.len(), 2);
        assert!(reports.take_pending().is_empty());
        reports.record("a".into(), status(TaskState::Complete));
        reports.requeue(batch);
        let mut again = reports.take_pending();
        again.sort_by(|x, y| x.task_id.cmp(&y.task_id));
        let states: Vec<(String, i32)> = again
            .into_iter()
            .map(|u| (u.task_id, u.status.unwrap().state))
            .collect();
        assert_eq!(
            states,
            vec![
                ("a".into(), TaskState::Complete as i32),
                ("b".into(), TaskState::Running as i32)
            ]
        );
    }
}
