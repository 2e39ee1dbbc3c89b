//! Networking of the node: the managers' view of the networks it has tasks on, and (later
//! modules) the data plane that implements it.

pub mod dns;
pub mod view;
