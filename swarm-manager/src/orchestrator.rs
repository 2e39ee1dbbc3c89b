//! Orchestrators (leader only): they turn services into tasks.
//!
//! - [`replicated::ReplicatedOrchestrator`]: `replicas` slots per replicated service, scale up
//!   and down, replace tasks of unusable nodes.
//! - [`update::UpdateOrchestrator`]: rolling updates and rollbacks of replicated and global
//!   services with the service's update policy, `UpdateStatus`, the failure action.
//! - [`global::GlobalOrchestrator`]: one task per eligible node for global services.
//! - [`jobs::JobOrchestrator`]: runs the tasks of replicated and global jobs to completion,
//!   `max_concurrent` at a time, once per iteration of the job.
//! - [`restart::RestartSupervisor`]: applies the restart policy to tasks that ended while
//!   still wanted, and starts delayed replacements when their restart delay has passed.
//! - [`taskreaper::TaskReaper`]: keeps the task history bounded and removes leftovers.
//!
//! Each is a reconciler: it waits for the store to change, reads the state, computes a
//! [`reconciler::Plan`] in a pure function and proposes it (`reconciler::run_reconciler`).
//! Nothing that matters is kept outside the store, so a new leader simply starts them again.
//! What they share about tasks (creating one, the lifecycle predicates, slots) is in [`task`].
//!
//! Task lifecycle conventions shared by all of them (see ARCHITECTURE.md):
//! - a task is *active* (it occupies its slot) while its desired state is ≤ COMPLETE;
//!   desired COMPLETE means "ended and must not be restarted";
//! - a task is *dead* when it is still wanted (desired ≤ RUNNING) but its observed state is
//!   terminal: only the restart supervisor acts on dead tasks;
//! - desired READY marks a restart replacement waiting for its restart delay; agents start
//!   only tasks whose desired state is RUNNING.
//!
//! Two components never both replace the same task: a replacement retires the old task with
//! a version-checked update in the same atomic batch as the create, so the store rejects the
//! second of two concurrent decisions.

pub mod global;
pub mod jobs;
pub mod reconciler;
pub mod replicated;
pub mod restart;
pub mod task;
pub mod taskreaper;
pub mod update;

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests;
