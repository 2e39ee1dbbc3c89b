//! OCI images for swarm: build single-layer images from files, and push/pull them through a
//! registry's distribution v2 HTTP API.
//!
//! - [`Digest`], [`DigestVerifier`]: `sha256:<hex>` digests and streaming verification.
//! - [`Reference`]: `[HOST[:PORT]/]NAME[:TAG][@DIGEST]`, normalized as Docker does (`nginx` →
//!   `docker.io/library/nginx`).
//! - [`Credentials`], [`auth`]: Basic and Bearer-token registry authentication.
//! - [`ImageBuilder`] → [`BuiltImage`]: one deterministic gzip layer + config + manifest.
//! - [`Registry`]: distribution v2 client (push, resolve, verified blob downloads).
//! - [`LocalRegistry`]: a `docker-registry` process for tests and the lab.
//! - [`spec`]: OCI (and Docker schema 2) manifest, index and config types.

pub mod auth;
pub mod build;
pub mod digest;
pub mod error;
pub mod local;
pub mod reference;
pub mod registry;
pub mod spec;

pub use auth::{Credentials, RegistryAuth};
pub use build::{BuiltImage, FileSource, ImageBuilder};
pub use digest::{Digest, DigestVerifier};
pub use error::{OciError, Result};
pub use local::{LocalRegistry, LocalSecurity};
pub use reference::Reference;
pub use registry::{BlobStream, FetchedManifest, PushReport, Registry, RegistryOptions, Resolved};
pub use spec::{Descriptor, ImageConfig, ImageIndex, ImageManifest, Platform};
