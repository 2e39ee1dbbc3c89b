//! Protobuf messages and gRPC services of swarm (package `swarm.v1`).
//!
//! The cluster objects (`Node`, `Service`, `Task`, `Network`, `Cluster`) are the one object
//! model of the project: stored in Raft, returned by the Control API, printed by the CLI.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("swarm.v1");
}

pub use v1::*;

/// The API's answer to a write based on an object version that is no longer current, shared by
/// the managers (which send it) and the CLI (which makes its change again on a fresh read).
pub mod out_of_sequence {
    /// How the message starts (Docker's and SwarmKit's wording).
    pub const PREFIX: &str = "update out of sequence";

    /// The status the managers answer with: FAILED_PRECONDITION, with `message` (which starts
    /// with [`PREFIX`]).
    pub fn status(message: impl Into<String>) -> tonic::Status {
        tonic::Status::failed_precondition(message)
    }

    /// Whether `s` says the write lost a race with another writer, so that a change made as a
    /// delta on a fresh read may be tried again.
    pub fn is(s: &tonic::Status) -> bool {
        s.code() == tonic::Code::FailedPrecondition && s.message().starts_with(PREFIX)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn what_the_managers_send_is_what_the_cli_retries() {
            let s = super::status(format!("{} : node x is at version 3", super::PREFIX));
            assert!(super::is(&s));
            assert!(!super::is(&tonic::Status::aborted(super::PREFIX)));
            assert!(!super::is(&tonic::Status::failed_precondition("in use")));
        }
    }
}

impl TaskState {
    /// Docker's lower-case state name, as `service ps` prints it.
    pub fn display_name(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Ready => "ready",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
        }
    }

    /// States after RUNNING: the task will not run (again).
    pub fn is_terminal(self) -> bool {
        self > TaskState::Running
    }
}

impl Task {
    pub fn state(&self) -> TaskState {
        self.status
            .as_ref()
            .and_then(|s| TaskState::try_from(s.state).ok())
            .unwrap_or(TaskState::New)
    }

    pub fn desired(&self) -> TaskState {
        TaskState::try_from(self.desired_state).unwrap_or(TaskState::New)
    }

    pub fn version(&self) -> u64 {
        self.meta.as_ref().map_or(0, |m| m.version)
    }
}

impl Node {
    pub fn hostname(&self) -> &str {
        self.description
            .as_ref()
            .map_or("", |d| d.hostname.as_str())
    }

    pub fn state(&self) -> NodeState {
        self.status
            .as_ref()
            .and_then(|s| NodeState::try_from(s.state).ok())
            .unwrap_or(NodeState::Unknown)
    }

    pub fn availability(&self) -> NodeAvailability {
        self.spec
            .as_ref()
            .and_then(|s| NodeAvailability::try_from(s.availability).ok())
            .unwrap_or(NodeAvailability::Active)
    }

    pub fn role_enum(&self) -> NodeRole {
        NodeRole::try_from(self.role).unwrap_or(NodeRole::Worker)
    }

    pub fn desired_role(&self) -> NodeRole {
        self.spec
            .as_ref()
            .and_then(|s| NodeRole::try_from(s.desired_role).ok())
            .unwrap_or(NodeRole::Worker)
    }
}

impl Service {
    pub fn name(&self) -> &str {
        self.spec.as_ref().map_or("", |s| s.name.as_str())
    }

    pub fn is_global(&self) -> bool {
        matches!(
            self.spec.as_ref().and_then(|s| s.mode.as_ref()),
            Some(service_spec::Mode::Global(_))
        )
    }

    /// The image of the service's container spec ("" when it has none).
    pub fn image(&self) -> &str {
        self.spec
            .as_ref()
            .and_then(|s| s.task.as_ref())
            .and_then(|t| t.container.as_ref())
            .map_or("", |c| c.image.as_str())
    }

    /// Desired replicas of a replicated service (None for global services and jobs).
    pub fn replicas(&self) -> Option<u64> {
        match self.spec.as_ref().and_then(|s| s.mode.as_ref()) {
            Some(service_spec::Mode::Replicated(r)) => Some(r.replicas),
            Some(service_spec::Mode::Global(_))
            | Some(service_spec::Mode::ReplicatedJob(_))
            | Some(service_spec::Mode::GlobalJob(_)) => None,
            None => Some(1),
        }
    }

    /// A replicated service (the default mode), not a job.
    pub fn is_replicated(&self) -> bool {
        matches!(
            self.spec.as_ref().and_then(|s| s.mode.as_ref()),
            Some(service_spec::Mode::Replicated(_)) | None
        )
    }

    /// A job: `replicated-job` or `global-job`.
    pub fn is_job(&self) -> bool {
        self.spec.as_ref().is_some_and(ServiceSpec::is_job)
    }

    /// The replicated job's counts (None for other modes).
    pub fn replicated_job(&self) -> Option<&ReplicatedJob> {
        match self.spec.as_ref().and_then(|s| s.mode.as_ref()) {
            Some(service_spec::Mode::ReplicatedJob(j)) => Some(j),
            _ => None,
        }
    }

    /// The job iteration tasks of a job run for now (0 when the job has no status yet).
    pub fn job_iteration(&self) -> u64 {
        self.job_status.as_ref().map_or(0, |j| j.job_iteration)
    }

    /// The counts of `service ls`'s REPLICAS column over `tasks` (tasks of other services are
    /// skipped), as Docker counts them; `node_up` says whether a node is not DOWN.
    /// - running: RUNNING and still desired running, on a node that is up;
    /// - desired: a replicated service's replicas; a global service's tasks desired running;
    ///   a replicated job's tasks that may run at once (at most its remaining completions); a
    ///   global job's tasks desired running and not complete;
    /// - completed (jobs only): COMPLETE on a node that is up.
    ///
    /// A job counts only the tasks of its current iteration.
    pub fn task_status<'a>(
        &self,
        tasks: impl IntoIterator<Item = &'a Task>,
        node_up: impl Fn(&str) -> bool,
    ) -> ServiceStatus {
        let job = self.is_job();
        let iteration = self.job_iteration();
        let (mut running, mut completed, mut wanted) = (0u64, 0u64, 0u64);
        for t in tasks.into_iter().filter(|t| t.service_id == self.id) {
            if job && t.job_iteration != iteration {
                continue;
            }
            let (state, desired) = (t.state(), t.desired());
            let up = node_up(&t.node_id);
            if up && state == TaskState::Running && desired <= TaskState::Running {
                running += 1;
            }
            if job && up && state == TaskState::Complete {
                completed += 1;
            }
            if desired <= TaskState::Running && !(job && state == TaskState::Complete) {
                wanted += 1;
            }
        }
        let desired_tasks = match (self.replicated_job(), self.replicas()) {
            (Some(j), _) => j
                .max_concurrent
                .min(j.total_completions.saturating_sub(completed)),
            (None, Some(n)) if !job => n,
            _ => wanted,
        };
        ServiceStatus {
            running_tasks: running,
            desired_tasks,
            completed_tasks: completed,
        }
    }
}

/// Docker's restart delay when none is given.
pub const DEFAULT_RESTART_DELAY_MS: i64 = 5_000;
/// Docker's stop grace period when none is given.
pub const DEFAULT_STOP_GRACE_MS: i64 = 10_000;

impl ServiceSpec {
    /// A job: `replicated-job` or `global-job`.
    pub fn is_job(&self) -> bool {
        matches!(
            self.mode,
            Some(service_spec::Mode::ReplicatedJob(_)) | Some(service_spec::Mode::GlobalJob(_))
        )
    }

    /// Fills what Docker fills when the user gives nothing: one replica, restart on any exit
    /// after 5 s, 10 s stop grace period, VIP endpoint. Jobs: restart on failure only, no
    /// update or rollback policy; a replicated job runs one task at a time unless told
    /// (Docker's API: `MaxConcurrent` 1, `TotalCompletions` = `MaxConcurrent`). The managers
    /// store specs so; `stack deploy` compares with them so.
    pub fn apply_docker_defaults(&mut self) {
        if self.mode.is_none() {
            self.mode = Some(service_spec::Mode::Replicated(ReplicatedService {
                replicas: 1,
            }));
        }
        if let Some(service_spec::Mode::ReplicatedJob(j)) = self.mode.as_mut() {
            if j.max_concurrent == 0 {
                j.max_concurrent = 1;
            }
            if j.total_completions == 0 {
                j.total_completions = j.max_concurrent;
            }
        }
        let job = self.is_job();
        if self.endpoint.is_none() {
            self.endpoint = Some(Default::default());
        }
        if self.update.is_none() && !job {
            self.update = Some(UpdateConfig::docker_default());
        }
        if self.rollback.is_none() && !job {
            self.rollback = Some(UpdateConfig::docker_default());
        }
        let task = self.task.get_or_insert_with(Default::default);
        if task.restart.is_none() {
            task.restart = Some(RestartPolicy {
                condition: if job {
                    RestartCondition::OnFailure
                } else {
                    RestartCondition::Any
                } as i32,
                delay_ms: DEFAULT_RESTART_DELAY_MS,
                max_attempts: 0,
                window_ms: 0,
            });
        }
        if let Some(c) = task.container.as_mut() {
            if c.stop_grace_period_ms == 0 {
                c.stop_grace_period_ms = DEFAULT_STOP_GRACE_MS;
            }
        }
    }

    /// Docker's name of the mode, as `service ls` shows it: `replicated`, `global`,
    /// `replicated job`, `global job`.
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            None | Some(service_spec::Mode::Replicated(_)) => "replicated",
            Some(service_spec::Mode::Global(_)) => "global",
            Some(service_spec::Mode::ReplicatedJob(_)) => "replicated job",
            Some(service_spec::Mode::GlobalJob(_)) => "global job",
        }
    }
}

impl UpdateConfig {
    /// Docker's update and rollback policy when none is given: one task at a time, no delay,
    /// pause on failure, 5 s monitor, no failure tolerated, stop-first.
    pub fn docker_default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            failure_action: UpdateFailureAction::Pause as i32,
            monitor_ms: 5_000,
            max_failure_ratio: 0.0,
            order: UpdateOrder::StopFirst as i32,
        }
    }
}

impl UpdateState {
    /// Docker's lower-case name (`service inspect`).
    pub fn docker_name(self) -> &'static str {
        match self {
            UpdateState::Unknown => "unknown",
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }
}
