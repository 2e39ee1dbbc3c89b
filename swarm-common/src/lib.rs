//! What the agent and the in-process manager share as one process: the Prometheus
//! registry ([`metrics`]), object ids ([`id`]) and the wall clock as the store records it
//! ([`clock`]). Nothing here knows of the manager's or the agent's internals.

pub mod clock;
pub mod id;
pub mod metrics;
