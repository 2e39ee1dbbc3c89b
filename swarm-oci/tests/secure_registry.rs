//! Against a real `docker-registry` serving TLS with a test CA and requiring a login
//! (htpasswd, bcrypt entries from apache2-utils' `htpasswd`). FAILS (never skips) when
//! `docker-registry` or `htpasswd` is missing.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use swarm_oci::local::{htpasswd_entry, DEFAULT_BINARY};
use swarm_oci::{
    Credentials, ImageBuilder, LocalRegistry, LocalSecurity, OciError, Reference, Registry,
    RegistryOptions,
};

/// A CA and a certificate for 127.0.0.1 signed by it, written under `dir`; the CA's PEM.
fn make_tls(dir: &Path) -> (Vec<u8>, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::from_ca_cert_pem(&ca_cert.pem(), &ca_key).expect("issuer");
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    let cert_path = dir.join("registry.crt");
    let key_path = dir.join("registry.key");
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    (ca_cert.pem().into_bytes(), cert_path, key_path)
}

#[tokio::test]
async fn tls_and_login_are_required_and_enough() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_pem, cert, key) = make_tls(dir.path());
    let htpasswd = dir.path().join("htpasswd");
    let entry = htpasswd_entry("lab", "s3cret").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&htpasswd, entry).expect("htpasswd");
    let reg = LocalRegistry::start_secured(
        Path::new(DEFAULT_BINARY),
        &dir.path().join("reg"),
        LocalSecurity {
            tls: Some((cert, key)),
            htpasswd: Some(htpasswd),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("cannot start the test registry: {e}"));
    let host = reg.host();
    let with = |creds: Option<Credentials>, ca: Option<Vec<u8>>, insecure: bool| {
        Registry::with_options(
            &host,
            RegistryOptions {
                credentials: creds,
                ca_pem: ca,
                insecure,
                attempts: 1,
                ..RegistryOptions::default()
            },
        )
        .expect("client")
    };
    let login = Some(Credentials::new("lab", "s3cret"));

    // With the CA and the login: push, then resolve.
    let good = with(login.clone(), Some(ca_pem.clone()), false);
    let img = ImageBuilder::new()
        .file("/etc/motd", b"secure\n", 0o644)
        .build()
        .expect("build");
    good.push(&img, "swarm/secure", "v1")
        .await
        .expect("push with login");
    let r = Reference::parse(&format!("{host}/swarm/secure:v1")).expect("ref");
    let resolved = good.resolve(&r).await.expect("resolve with login");
    assert_eq!(resolved.digest(), &img.manifest_digest);

    // Without a login: refused, and the error says what to do.
    let err = with(None, Some(ca_pem.clone()), false)
        .resolve(&r)
        .await
        .expect_err("no login");
    assert_eq!(err.http_status(), Some(401), "{err}");
    assert!(err.to_string().contains("swarm login"), "{err}");

    // A wrong password: refused as such.
    let err = with(
        Some(Credentials::new("lab", "wrong")),
        Some(ca_pem.clone()),
        false,
    )
    .resolve(&r)
    .await
    .expect_err("wrong password");
    assert!(err.to_string().contains("refused the credentials"), "{err}");

    // Without the CA: the certificate is not trusted.
    let err = with(login.clone(), None, false)
        .resolve(&r)
        .await
        .expect_err("untrusted certificate");
    assert!(matches!(err, OciError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // Plain HTTP to a TLS registry fails: insecure only works where the registry is plain.
    let err = with(login, None, true)
        .resolve(&r)
        .await
        .expect_err("plain HTTP to TLS");
    assert_eq!(err.http_status(), Some(400), "{err}");
}
