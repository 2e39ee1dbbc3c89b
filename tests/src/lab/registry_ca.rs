//! The lab's registry CA: made once per lab (`<root>/registry-ca/`), trusted by every node's
//! agent (`--registry-ca`), and signing the certificates of the registries a test serves over
//! TLS (as a company CA signs its private registry's), so that nodes reach them over HTTPS as
//! they would reach a real one.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

fn dir(root: &Path) -> PathBuf {
    root.join("registry-ca")
}

/// The CA certificate (PEM) the lab's agents trust.
pub fn cert_path(root: &Path) -> PathBuf {
    dir(root).join("ca.pem")
}

fn key_path(root: &Path) -> PathBuf {
    dir(root).join("ca.key")
}

/// Makes the lab's CA unless it exists; returns its certificate's path.
pub fn ensure(root: &Path) -> anyhow::Result<PathBuf> {
    let cert = cert_path(root);
    if cert.is_file() && key_path(root).is_file() {
        return Ok(cert);
    }
    std::fs::create_dir_all(dir(root))
        .with_context(|| format!("creating {}", dir(root).display()))?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "swarm lab registry CA");
    let ca = params.self_signed(&key)?;
    std::fs::write(key_path(root), key.serialize_pem())
        .with_context(|| format!("writing {}", key_path(root).display()))?;
    std::fs::write(&cert, ca.pem()).with_context(|| format!("writing {}", cert.display()))?;
    Ok(cert)
}

/// A server certificate for `ip` signed by the lab's CA, written as `<out>/server.crt` and
/// `<out>/server.key`; returns (certificate, key).
pub fn issue(root: &Path, ip: &str, out: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let ca_pem = std::fs::read_to_string(cert_path(root))
        .with_context(|| format!("reading {}", cert_path(root).display()))?;
    let ca_key = KeyPair::from_pem(
        &std::fs::read_to_string(key_path(root))
            .with_context(|| format!("reading {}", key_path(root).display()))?,
    )?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec![ip.to_string()])?.signed_by(&key, &issuer)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (c, k) = (out.join("server.crt"), out.join("server.key"));
    std::fs::write(&c, cert.pem())?;
    std::fs::write(&k, key.serialize_pem())?;
    Ok((c, k))
}
