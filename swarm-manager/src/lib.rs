//! The swarm manager: Raft store, CA, allocator, orchestrators, scheduler, dispatcher
//! and the Control API. See ARCHITECTURE.md for the map.

pub mod allocator;
pub mod api;
pub mod ca;
pub mod ca_reconciler;
pub mod ca_service;
pub mod control;
pub mod dispatcher;
pub mod ipam;
pub mod logbroker;
pub mod manager;
pub mod membership;
pub mod metrics;
pub mod netstate;
pub mod orchestrator;
pub mod raft;
pub mod router;
pub mod scheduler;
pub mod stall;
pub mod store;
pub mod tls;
