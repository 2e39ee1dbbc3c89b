//! What the agent and the in-process manager share as one process: the Prometheus
//! registry ([`metrics`]), object ids ([`id`]), the wall clock as the store records it
//! ([`clock`]), Go's duration syntax of the flags ([`duration`]), files written durably
//! ([`fs`]) and the volume names and drivers both accept ([`volume`]). Nothing here knows of the manager's or the agent's
//! internals. `id` and `metrics` are features (on by default), so that a user of the clock
//! alone pulls in nothing else.

pub mod clock;
pub mod duration;
pub mod fs;
#[cfg(feature = "id")]
pub mod id;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod volume;
