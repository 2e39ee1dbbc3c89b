//! Runs swarm tasks as containerd containers (containerd 1.6 API through `containerd-client`).
//!
//! - [`client`]: the gRPC connection and the namespace/lease request headers;
//! - [`image`]: pull through the swarm-oci registry client into the content store, create the
//!   image record and unpack the layers with Snapshots + Diff (1.6 has no Transfer service);
//! - [`spec`]: the OCI runtime spec of a task;
//! - [`files`]: a task's secret and config files on a tmpfs of its own, bind-mounted read-only;
//! - [`volumes`]: the local volume driver: named volumes kept on the node, anonymous ones in
//!   the task's directory, the image's content copied into a new empty volume;
//! - [`run`]: [`ContainerdExecutor`], the container and task lifecycle;
//! - `testbed` (the tests, and feature `testbed`): a private containerd, its busybox image and
//!   registry, for the tests here and the lab of the `tests` crate.

pub mod client;
pub mod files;
pub mod health;
pub mod image;
pub mod metrics;
pub mod run;
pub mod spec;
#[cfg(any(test, feature = "testbed"))]
pub mod testbed;
pub mod volumes;

#[cfg(test)]
mod tests;

pub use client::{Containerd, ContainerdError};
pub use image::RegistryAccess;
pub use run::ContainerdExecutor;
