//! Certificate digests: the DER of the first certificate of a PEM, and its sha256 (join
//! tokens carry it in base 36, `RootCa::digest` and `Cluster.root_ca.ca_cert_hash` in hex).

use rustls::pki_types::{pem::PemObject, CertificateDer};
use sha2::{Digest, Sha256};

use super::CaError;

/// sha256 of the DER of the (first) certificate in `cert_pem`, lower-case hex.
pub fn cert_digest(cert_pem: &str) -> Result<String, CaError> {
    Ok(hex(&cert_digest_raw(cert_pem)?))
}

/// sha256 of the DER of the (first) certificate in `cert_pem`.
pub(crate) fn cert_digest_raw(cert_pem: &str) -> Result<[u8; 32], CaError> {
    let der = first_cert_der(cert_pem)?;
    Ok(Sha256::digest(der.as_ref()).into())
}

pub(crate) fn first_cert_der(cert_pem: &str) -> Result<CertificateDer<'static>, CaError> {
    match CertificateDer::pem_slice_iter(cert_pem.as_bytes()).next() {
        Some(Ok(der)) => Ok(der),
        Some(Err(e)) => Err(CaError::InvalidCertificate(format!("bad PEM: {e}"))),
        None => Err(CaError::InvalidCertificate(
            "no PEM CERTIFICATE block found".into(),
        )),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
