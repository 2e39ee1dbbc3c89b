//! Harness for end-to-end tests, driven through the real `swarm` CLI:
//! - [`loopback`]: real `test-agent` processes (the daemon with the simulated executor) on
//!   loopback addresses 127.0.0.N ([`Cluster`], [`AgentProc`]);
//! - [`lab`]: the multi-node lab, network namespaces with a containerd and a `swarm-agent` each;
//! - [`client`]: what a test does with a node of either ([`AgentClient`]: the CLI and typed
//!   reads of the Control API over the node's socket);
//! - [`helpers`]: polling, the CLI's tables and JSON, task filters, a plain HTTP GET;
//! - [`images`]: the test images; [`agent_image`]: the agent's own image (`cargo xtask image
//!   agent`, and the lab's agent-container mode); [`sim_executor`]: the simulated executor of `test-agent`;
//! - [`sim_agents`]: many simulated agents (real agent sessions, an instant executor) in one
//!   process, for scale tests and `cargo xtask bench scale`.

pub mod agent_image;
pub mod client;
pub mod faults;
pub mod helpers;
pub mod images;
pub mod lab;
pub mod loopback;
pub mod sim_agents;
pub mod sim_executor;

pub use client::{bin_dir, swarm_bin, AgentClient, CliOutput};
pub use helpers::{
    hostname, http_get, in_subnet, json, per_node, read, running, table, task_addr, wait_for,
};
pub use loopback::{AgentProc, Cluster};
