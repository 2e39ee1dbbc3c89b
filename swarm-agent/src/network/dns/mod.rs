//! The embedded DNS server of the agent: Docker's `127.0.0.11` in every task.
//!
//! - [`records`]: the names of the swarm ([`Index`], built from a `NetworkView`) and the answer
//!   to one question for one task's networks. Pure; its module documentation lists every name
//!   and the decisions where we differ from Docker.
//! - [`wire`]: reading queries and writing answers (hickory-proto).
//! - [`forward`]: everything else goes to the node's resolvers.
//! - [`server`]: [`DnsServer`], the index kept up to date, per-task listeners opened inside the
//!   task's network namespace ([`DnsServer::serve_task`] → [`TaskDns`]).
//! - [`metrics`]: `swarm_dns_queries_total{result}`, `swarm_dns_forward_seconds{result}`.
//!
//! Answer codes, in one place:
//!
//! | question | answer |
//! |---|---|
//! | a name of ours (on one of the task's networks), records of that type | NOERROR, AA, TTL 600 |
//! | a name of ours, no record of that type (AAAA, MX, … or no serving task) | NOERROR, no records (NODATA) |
//! | a reverse name inside one of the task's subnets with no task or VIP | NXDOMAIN |
//! | any other name, a task with a way out | the upstream's answer, relayed |
//! | any other name, every network of the task internal | NXDOMAIN |
//! | no usable nameserver, none answered, or 1024 forwards in flight | SERVFAIL |
//! | malformed query / other opcode / EDNS version ≠ 0 | FORMERR / NOTIMP / BADVERS |
//! | too short for a header, or a response | no answer |

pub mod forward;
pub mod metrics;
pub mod records;
pub mod server;
pub mod wire;

#[cfg(any(test, feature = "testdata"))]
pub mod testdata;
#[cfg(test)]
mod tests;

pub use forward::{ForwardConfig, ForwardError, Transport};
pub use records::{Answer, Index, Rdata, Records, Scope, TTL};
pub use server::{DnsConfig, DnsError, DnsServer, TaskDns, DNS_ADDR};
