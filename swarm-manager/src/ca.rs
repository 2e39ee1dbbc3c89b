//! The cluster certificate authority (SwarmKit semantics).
//!
//! - [`RootCa`]: the ECDSA P-256 root ("swarm-ca", 20 years) whose key lives in the Raft
//!   store (`Cluster.root_ca`), so that any manager can sign.
//! - Node certificates: CN = node id, OU = [`MANAGER_OU`] / [`WORKER_OU`], O = cluster id,
//!   DNS SANs = the OU and the node id, EKU serverAuth + clientAuth.
//! - Root rotation ([`start_rotation`], [`finish_rotation`]): a new root, cross-signed by
//!   the old one, that node certificates move to before it replaces the old root.
//! - Join tokens `SWMTKN-1-<ca digest>-<secret>` ([`generate_join_token`], [`parse_join_token`]).
//!
//! The `CA` and `NodeCA` gRPC services that hand them out are `crate::ca_service`.

mod digest;
mod identity;
mod root;
mod rotation;
mod token;

pub use digest::cert_digest;
pub use identity::{parse_node_cert_der, parse_node_cert_pem, renewal_time, NodeIdentity};
pub use root::{new_cluster_root_ca, new_key_and_csr, RootCa};
pub use rotation::{
    chain_verifies, desired_issuer, finish_rotation, issued_by, issuer_info_of_ca, signing_root,
    start_rotation, trust_bundle, IssuerInfo,
};
pub use token::{generate_join_token, parse_join_token, token_matches_ca, tokens_equal, JoinToken};

/// OU (and DNS SAN) of manager certificates; the TLS server name managers answer to.
pub const MANAGER_OU: &str = "swarm-manager";
/// OU (and DNS SAN) of worker certificates.
pub const WORKER_OU: &str = "swarm-worker";

/// Default node certificate validity (SwarmKit: 90 days).
pub const DEFAULT_NODE_CERT_VALIDITY: std::time::Duration =
    std::time::Duration::from_secs(90 * 24 * 3600);

/// The longest node certificate validity accepted (`--cert-expiry`): 10 years. Docker sets
/// no bound (its minimum is 1 hour); ours keeps every expiry far inside what X.509 dates
/// and date arithmetic can hold, and a removed node's certificate within a sane life.
pub const MAX_NODE_CERT_VALIDITY: std::time::Duration =
    std::time::Duration::from_secs(10 * 365 * 24 * 3600);

/// The OU a role's certificates carry.
pub fn role_ou(role: proto::NodeRole) -> &'static str {
    match role {
        proto::NodeRole::Manager => MANAGER_OU,
        proto::NodeRole::Worker => WORKER_OU,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("invalid certificate: {0}; pass a PEM-encoded X.509 certificate issued by the swarm's root CA")]
    InvalidCertificate(String),
    #[error("invalid private key: {0}; pass the PEM (PKCS#8) key that belongs to the certificate")]
    InvalidKey(String),
    #[error("invalid certificate signing request: {0}; generate one with a fresh key (ca::new_key_and_csr)")]
    InvalidCsr(String),
    #[error("not a swarm node certificate: {0}; node certificates carry CN = node id, OU = {MANAGER_OU} or {WORKER_OU} and O = cluster id")]
    NotANodeCertificate(String),
    #[error("invalid node certificate request: {0}")]
    InvalidRequest(String),
    #[error("invalid join token: {0}; get a valid token with `swarm join-token worker` or `swarm join-token manager` on a manager")]
    InvalidJoinToken(String),
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

#[cfg(test)]
mod tests;
