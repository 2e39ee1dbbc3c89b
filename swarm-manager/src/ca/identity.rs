//! What a node certificate says about its holder, and when to renew it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use x509_parser::certificate::X509Certificate;

use super::digest::first_cert_der;
use super::{CaError, MANAGER_OU, WORKER_OU};

/// Renewal happens at a random point in this fraction of the certificate's life.
const RENEW_FROM: f64 = 0.5;
const RENEW_TO: f64 = 0.8;

/// The node a certificate was issued to.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeIdentity {
    pub node_id: String,
    pub role: proto::NodeRole,
    pub cluster_id: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl NodeIdentity {
    pub fn is_manager(&self) -> bool {
        self.role == proto::NodeRole::Manager
    }
}

/// Reads CN/OU/O and the validity of a PEM node certificate (no signature check: use
/// it on certificates that TLS already verified, or on the node's own certificate).
pub fn parse_node_cert_pem(cert_pem: &str) -> Result<NodeIdentity, CaError> {
    let der = first_cert_der(cert_pem)?;
    parse_node_cert_der(&der)
}

/// Like [`parse_node_cert_pem`] for a DER certificate.
pub fn parse_node_cert_der(der: &[u8]) -> Result<NodeIdentity, CaError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CaError::InvalidCertificate(e.to_string()))?;
    let node_id = single_attr(&cert, "CN", |c| c.subject().iter_common_name())?;
    let ou = single_attr(&cert, "OU", |c| c.subject().iter_organizational_unit())?;
    let cluster_id = single_attr(&cert, "O", |c| c.subject().iter_organization())?;
    let role = match ou.as_str() {
        MANAGER_OU => proto::NodeRole::Manager,
        WORKER_OU => proto::NodeRole::Worker,
        other => {
            return Err(CaError::NotANodeCertificate(format!(
                "unknown OU {other:?}"
            )))
        }
    };
    let validity = cert.validity();
    Ok(NodeIdentity {
        node_id,
        role,
        cluster_id,
        not_before: to_system_time(validity.not_before.timestamp()),
        not_after: to_system_time(validity.not_after.timestamp()),
    })
}

/// When to renew: a random point between 50 % and 80 % of the certificate's life.
pub fn renewal_time(id: &NodeIdentity) -> SystemTime {
    let life = id
        .not_after
        .duration_since(id.not_before)
        .unwrap_or(Duration::ZERO);
    let frac = rand::rng().random_range(RENEW_FROM..=RENEW_TO);
    id.not_before + life.mul_f64(frac)
}

fn single_attr<'a, I>(
    cert: &'a X509Certificate<'a>,
    what: &str,
    iter: impl FnOnce(&'a X509Certificate<'a>) -> I,
) -> Result<String, CaError>
where
    I: Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
{
    let mut values = iter(cert);
    let first = values
        .next()
        .ok_or_else(|| CaError::NotANodeCertificate(format!("the subject has no {what}")))?;
    if values.next().is_some() {
        return Err(CaError::NotANodeCertificate(format!(
            "the subject has more than one {what}"
        )));
    }
    let value = first
        .as_str()
        .map_err(|e| CaError::NotANodeCertificate(format!("{what} is not a string: {e}")))?;
    if value.is_empty() {
        return Err(CaError::NotANodeCertificate(format!("{what} is empty")));
    }
    Ok(value.to_string())
}

fn to_system_time(unix_secs: i64) -> SystemTime {
    if unix_secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix_secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(unix_secs.unsigned_abs())
    }
}
