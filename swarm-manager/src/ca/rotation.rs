//! Root rotation (SwarmKit's `RootRotation`): the new root, its cross-signed copy (the new
//! root's subject and key signed by the old root's key), which root signs node certificates
//! and which roots nodes trust while the cluster moves, and what the cluster's root CA
//! becomes when every node has moved.
//!
//! A node certificate issued during a rotation is `leaf (signed by the new key)` followed by
//! the cross-signed certificate: a peer that trusts only the old root builds
//! leaf → cross-signed → old root, a peer that trusts the new root verifies the leaf directly.

use std::sync::Arc;

use std::time::Duration;

use rcgen::{Issuer, KeyPair};
use rustls::pki_types::{pem::PemObject, CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use super::digest::first_cert_der;
use super::root::{root_params, RootCa};
use super::{token, CaError};

/// Which CA key signed a certificate: the issuer's subject and public key, both DER
/// (Docker's `TLSInfo.CertIssuerSubject` / `CertIssuerPublicKey`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerInfo {
    pub subject: Vec<u8>,
    pub public_key: Vec<u8>,
}

/// The subject and public key of a CA certificate: the issuer of what it signs.
pub fn issuer_info_of_ca(ca_cert_pem: &str) -> Result<IssuerInfo, CaError> {
    let der = first_cert_der(ca_cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| CaError::InvalidCertificate(format!("CA certificate: {e}")))?;
    Ok(IssuerInfo {
        subject: cert.subject().as_raw().to_vec(),
        public_key: cert.public_key().raw.to_vec(),
    })
}

impl RootCa {
    /// `next`'s certificate (its subject and key) signed by this root's key: the
    /// intermediate that lets nodes trusting this root accept certificates `next` issues.
    pub fn cross_sign(&self, next: &RootCa) -> Result<String, CaError> {
        let key =
            KeyPair::from_pem(&self.key_pem).map_err(|e| CaError::InvalidKey(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &key)
            .map_err(|e| CaError::InvalidCertificate(format!("current root CA: {e}")))?;
        let next_key =
            KeyPair::from_pem(&next.key_pem).map_err(|e| CaError::InvalidKey(e.to_string()))?;
        let next_der = first_cert_der(&next.cert_pem)?;
        let (_, next_cert) = x509_parser::parse_x509_certificate(&next_der)
            .map_err(|e| CaError::InvalidCertificate(format!("new root CA: {e}")))?;
        let mut params = root_params();
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let secs = |t: i64| Duration::from_secs(u64::try_from(t).unwrap_or(0));
        params.not_before = epoch + secs(next_cert.validity().not_before.timestamp());
        params.not_after = epoch + secs(next_cert.validity().not_after.timestamp());
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&next_key, &issuer)
            .map_err(|e| CaError::Generate(format!("cross-signed root certificate: {e}")))?;
        // Chains are built by matching names byte for byte.
        let (_, cross) = x509_parser::parse_x509_certificate(cert.der())
            .map_err(|e| CaError::Generate(format!("cross-signed root certificate: {e}")))?;
        if cross.subject().as_raw() != next_cert.subject().as_raw() {
            return Err(CaError::InvalidCertificate(
                "the new root CA's subject is not one this CA can cross-sign (it must be CN=swarm-ca)".into(),
            ));
        }
        Ok(cert.pem())
    }
}

/// The rotation from the cluster's current root to `next`. A rotation already in progress
/// is replaced (the new root is cross-signed by the current root, never by the abandoned one).
pub fn start_rotation(
    current: &proto::RootCa,
    next: &RootCa,
) -> Result<proto::RootRotation, CaError> {
    let old = RootCa::from_pem(&current.ca_cert, &current.ca_key)?;
    if old.digest() == next.digest() {
        return Err(CaError::InvalidRequest(
            "the new root CA certificate is the current one; pass a different certificate or let --rotate generate one".into(),
        ));
    }
    Ok(proto::RootRotation {
        cross_signed_ca_cert: old.cross_sign(next)?,
        ca_cert: next.cert_pem.clone(),
        ca_key: next.key_pem.clone(),
    })
}

/// The roots nodes trust: the current root, and the new one while a rotation runs.
pub fn trust_bundle(root: &proto::RootCa) -> String {
    let mut pem = root.ca_cert.clone();
    if let Some(r) = root
        .root_rotation
        .as_ref()
        .filter(|r| !r.ca_cert.is_empty())
    {
        if !pem.ends_with('\n') {
            pem.push('\n');
        }
        pem.push_str(&r.ca_cert);
    }
    pem
}

/// The root that signs node certificates now (the new one during a rotation) and the
/// certificates that follow the leaf (the cross-signed root during a rotation).
pub fn signing_root(root: &proto::RootCa) -> Result<(RootCa, String), CaError> {
    match root.root_rotation.as_ref() {
        Some(r) => Ok((
            RootCa::from_pem(&r.ca_cert, &r.ca_key)?,
            r.cross_signed_ca_cert.clone(),
        )),
        None => Ok((
            RootCa::from_pem(&root.ca_cert, &root.ca_key)?,
            String::new(),
        )),
    }
}

/// The issuer every node certificate should have: the rotation's new root, else the root.
pub fn desired_issuer(root: &proto::RootCa) -> Result<IssuerInfo, CaError> {
    match root.root_rotation.as_ref() {
        Some(r) => issuer_info_of_ca(&r.ca_cert),
        None => issuer_info_of_ca(&root.ca_cert),
    }
}

/// The root CA once the rotation is over: the new root alone, and new join tokens (a token
/// names the root's digest, which a joining node checks).
pub fn finish_rotation(root: &proto::RootCa) -> Result<proto::RootCa, CaError> {
    let r = root
        .root_rotation
        .as_ref()
        .ok_or_else(|| CaError::InvalidRequest("no root rotation in progress".into()))?;
    let next = RootCa::from_pem(&r.ca_cert, &r.ca_key)?;
    Ok(proto::RootCa {
        ca_cert_hash: next.digest(),
        join_tokens: Some(proto::JoinTokens {
            worker: token::generate_join_token(&next.cert_pem)?,
            manager: token::generate_join_token(&next.cert_pem)?,
        }),
        ca_key: next.key_pem,
        ca_cert: next.cert_pem,
        root_rotation: None,
        last_forced_rotation: root.last_forced_rotation,
    })
}

/// Whether the certificate chain `chain_pem` (leaf first, then intermediates) verifies as a
/// client certificate under the roots in `roots_pem`, now.
pub fn chain_verifies(chain_pem: &str, roots_pem: &str) -> Result<bool, CaError> {
    let certs = pem_certs(chain_pem)?;
    let (leaf, intermediates) = certs
        .split_first()
        .ok_or_else(|| CaError::InvalidCertificate("no PEM CERTIFICATE block found".into()))?;
    verifies(leaf, intermediates, roots_pem)
}

/// Whether the leaf of `chain_pem` was signed by the key of the CA certificate `ca_pem`
/// (the intermediates of the chain are ignored).
pub fn issued_by(chain_pem: &str, ca_pem: &str) -> Result<bool, CaError> {
    verifies(&first_cert_der(chain_pem)?, &[], ca_pem)
}

fn verifies(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots_pem: &str,
) -> Result<bool, CaError> {
    let mut store = RootCertStore::empty();
    for root in pem_certs(roots_pem)? {
        store
            .add(root)
            .map_err(|e| CaError::InvalidCertificate(format!("root certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .map_err(|e| CaError::InvalidCertificate(format!("root certificates: {e}")))?;
    Ok(verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .is_ok())
}

fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::InvalidCertificate(format!("bad PEM: {e}")))
}
