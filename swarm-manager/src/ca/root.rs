//! The root CA: generation, loading from the store, signing node certificates.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};

use super::digest::{cert_digest, first_cert_der};
use super::{role_ou, token, CaError};

/// CN of the root certificate.
pub const ROOT_CN: &str = "swarm-ca";
/// Root CA validity (SwarmKit: 20 years).
const ROOT_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600 + 5 * 24 * 3600);
/// How far `not_before` is set in the past to tolerate clock skew between nodes
/// (capped at a tenth of the validity so short test certificates stay sensible).
const BACKDATE: Duration = Duration::from_secs(3600);

/// The cluster root CA, both PEMs. The key is kept in the Raft store.
#[derive(Clone)]
pub struct RootCa {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCa")
            .field("digest", &self.digest())
            .finish_non_exhaustive()
    }
}

impl RootCa {
    /// A new self-signed ECDSA P-256 root, CN "swarm-ca", valid 20 years.
    pub fn generate() -> Result<RootCa, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Generate(format!("root CA key: {e}")))?;
        let mut params = root_params();
        set_validity(&mut params, ROOT_VALIDITY);
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Generate(format!("root CA certificate: {e}")))?;
        Ok(RootCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Loads a root from its PEMs, checking that the certificate is a CA and the key is its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<RootCa, CaError> {
        let der = first_cert_der(cert_pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| CaError::InvalidCertificate(format!("root CA certificate: {e}")))?;
        if !cert.is_ca() {
            return Err(CaError::InvalidCertificate(
                "the root certificate is not a CA certificate (basicConstraints CA:TRUE missing)"
                    .into(),
            ));
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::InvalidKey(e.to_string()))?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(CaError::InvalidKey(
                "the root CA key does not match the root CA certificate".into(),
            ));
        }
        Ok(RootCa {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    /// sha256 of the certificate DER, lower-case hex.
    pub fn digest(&self) -> String {
        cert_digest(&self.cert_pem).unwrap_or_default()
    }

    /// Signs a node certificate from a PEM CSR (its subject is ignored, only its public key is used).
    pub fn sign_node_cert(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: proto::NodeRole,
        cluster_id: &str,
        validity: Duration,
    ) -> Result<String, CaError> {
        validate_name("node id", node_id)?;
        validate_name("cluster id", cluster_id)?;
        if validity.is_zero() {
            return Err(CaError::InvalidRequest(
                "the certificate validity must be positive".into(),
            ));
        }
        if validity > super::MAX_NODE_CERT_VALIDITY {
            return Err(CaError::InvalidRequest(format!(
                "the certificate validity {validity:?} is longer than the maximum of {:?} (10 years); lower the cluster's --cert-expiry",
                super::MAX_NODE_CERT_VALIDITY
            )));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::InvalidCsr(e.to_string()))?;
        let ca_key =
            KeyPair::from_pem(&self.key_pem).map_err(|e| CaError::InvalidKey(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &ca_key)
            .map_err(|e| CaError::InvalidCertificate(format!("root CA certificate: {e}")))?;

        let ou = role_ou(role);
        let mut params = CertificateParams::new(vec![ou.to_string(), node_id.to_string()])
            .map_err(|e| CaError::InvalidRequest(format!("subject alternative names: {e}")))?;
        params.distinguished_name = dn(&[
            (DnType::CommonName, node_id),
            (DnType::OrganizationalUnitName, ou),
            (DnType::OrganizationName, cluster_id),
        ]);
        set_validity(&mut params, validity);
        params.serial_number = Some(random_serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&csr.public_key, &issuer)
            .map_err(|e| CaError::Generate(format!("node certificate for {node_id}: {e}")))?;
        Ok(cert.pem())
    }
}

/// What a root certificate says (and its cross-signed copy): CN "swarm-ca", a CA with
/// path length 0, a random serial; the validity is the caller's.
pub(super) fn root_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&[(DnType::CommonName, ROOT_CN)]);
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A fresh root CA and join tokens, as stored in `Cluster.root_ca` (swarm init).
pub fn new_cluster_root_ca() -> Result<proto::RootCa, CaError> {
    let root = RootCa::generate()?;
    Ok(proto::RootCa {
        ca_cert_hash: root.digest(),
        join_tokens: Some(proto::JoinTokens {
            worker: token::generate_join_token(&root.cert_pem)?,
            manager: token::generate_join_token(&root.cert_pem)?,
        }),
        ca_key: root.key_pem,
        ca_cert: root.cert_pem,
        root_rotation: None,
        last_forced_rotation: 0,
    })
}

/// A new ECDSA P-256 key and a CSR for it: (key PEM, CSR PEM).
pub fn new_key_and_csr() -> Result<(String, String), CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CaError::Generate(format!("node key: {e}")))?;
    let mut params = CertificateParams::default();
    // The CA ignores the subject; a neutral one keeps the request well-formed.
    params.distinguished_name = dn(&[(DnType::CommonName, "swarm-node")]);
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| CaError::Generate(format!("certificate signing request: {e}")))?;
    Ok((key.serialize_pem(), csr))
}

fn dn(entries: &[(DnType, &str)]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (ty, value) in entries {
        dn.push(ty.clone(), *value);
    }
    dn
}

/// not_before = now - backdate, not_after = now + validity.
fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let backdate = BACKDATE.min(validity / 10);
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + now.saturating_sub(backdate);
    params.not_after = epoch + now.saturating_add(validity);
}

/// 20 random bytes, positive and without a leading zero byte (RFC 5280: at most 20 octets).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 20] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Node and cluster ids go into DNS SANs and the subject: lower-case letters, digits, '-'.
fn validate_name(what: &str, value: &str) -> Result<(), CaError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(CaError::InvalidRequest(format!(
            "{what} {value:?} must be 1-63 lower-case letters, digits or '-'"
        )))
    }
}
