use std::time::{Duration, SystemTime};

use x509_parser::extensions::GeneralName;

use super::*;

fn sans(cert_pem: &str) -> Vec<String> {
    let der = digest::first_cert_der(cert_pem).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn sign_and_parse_round_trip() {
    let root = RootCa::generate().unwrap();
    let (_key, csr) = new_key_and_csr().unwrap();
    let validity = Duration::from_secs(90 * 24 * 3600);
    let before = SystemTime::now();
    let pem = root
        .sign_node_cert(
            &csr,
            "node1abc",
            proto::NodeRole::Manager,
            "cluster9",
            validity,
        )
        .unwrap();
    let id = parse_node_cert_pem(&pem).unwrap();
    assert_eq!(id.node_id, "node1abc");
    assert_eq!(id.role, proto::NodeRole::Manager);
    assert_eq!(id.cluster_id, "cluster9");
    assert!(id.not_before <= before);
    let expected_end = before + validity;
    let diff = match id.not_after.duration_since(expected_end) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    assert!(diff < Duration::from_secs(5), "not_after off by {diff:?}");
    assert_eq!(
        sans(&pem),
        vec![MANAGER_OU.to_string(), "node1abc".to_string()]
    );

    let worker = root
        .sign_node_cert(&csr, "w1", proto::NodeRole::Worker, "cluster9", validity)
        .unwrap();
    let wid = parse_node_cert_pem(&worker).unwrap();
    assert_eq!(wid.role, proto::NodeRole::Worker);
    assert_eq!(sans(&worker), vec![WORKER_OU.to_string(), "w1".to_string()]);
}

#[test]
fn root_ca_round_trip_and_digest() {
    let root = RootCa::generate().unwrap();
    let loaded = RootCa::from_pem(&root.cert_pem, &root.key_pem).unwrap();
    assert_eq!(loaded.digest(), root.digest());
    assert_eq!(root.digest().len(), 64);
    assert_eq!(cert_digest(&root.cert_pem).unwrap(), root.digest());
    let der = digest::first_cert_der(&root.cert_pem).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(cert.is_ca());
    assert_eq!(
        cert.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "swarm-ca"
    );
    let years = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!(years > 20 * 365 * 24 * 3600 - 24 * 3600);
    // The root is not a node certificate.
    assert!(matches!(
        parse_node_cert_pem(&root.cert_pem),
        Err(CaError::NotANodeCertificate(_))
    ));
}

#[test]
fn serials_are_random() {
    let root = RootCa::generate().unwrap();
    let (_k, csr) = new_key_and_csr().unwrap();
    let serial = |pem: &str| {
        let der = digest::first_cert_der(pem).unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        c.raw_serial().to_vec()
    };
    let d = Duration::from_secs(3600);
    let a = root
        .sign_node_cert(&csr, "n", proto::NodeRole::Worker, "c", d)
        .unwrap();
    let b = root
        .sign_node_cert(&csr, "n", proto::NodeRole::Worker, "c", d)
        .unwrap();
    assert_ne!(serial(&a), serial(&b));
}

#[test]
fn bad_inputs_are_errors() {
    let root = RootCa::generate().unwrap();
    let other = RootCa::generate().unwrap();
    assert!(matches!(
        RootCa::from_pem(&root.cert_pem, &other.key_pem),
        Err(CaError::InvalidKey(_))
    ));
    assert!(matches!(
        RootCa::from_pem("garbage", &root.key_pem),
        Err(CaError::InvalidCertificate(_))
    ));
    let (_k, csr) = new_key_and_csr().unwrap();
    let d = Duration::from_secs(3600);
    assert!(matches!(
        root.sign_node_cert("not a csr", "n", proto::NodeRole::Worker, "c", d),
        Err(CaError::InvalidCsr(_))
    ));
    assert!(matches!(
        root.sign_node_cert(&csr, "", proto::NodeRole::Worker, "c", d),
        Err(CaError::InvalidRequest(_))
    ));
    assert!(matches!(
        root.sign_node_cert(&csr, "Bad Id", proto::NodeRole::Worker, "c", d),
        Err(CaError::InvalidRequest(_))
    ));
    assert!(matches!(
        root.sign_node_cert(&csr, "n", proto::NodeRole::Worker, "c", Duration::ZERO),
        Err(CaError::InvalidRequest(_))
    ));
    assert!(parse_node_cert_der(b"\x30\x03\x02\x01").is_err());
    assert!(parse_node_cert_pem("").is_err());
    assert!(cert_digest("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n").is_err());
}

#[test]
fn token_generate_parse_and_digest() {
    let root = RootCa::generate().unwrap();
    let t1 = generate_join_token(&root.cert_pem).unwrap();
    let t2 = generate_join_token(&root.cert_pem).unwrap();
    assert!(t1.starts_with("SWMTKN-1-"));
    assert_eq!(t1.len(), "SWMTKN-1-".len() + 50 + 1 + 25);
    assert_ne!(t1, t2, "secrets differ");
    let p1 = parse_join_token(&t1).unwrap();
    let p2 = parse_join_token(&t2).unwrap();
    assert_eq!(p1.ca_digest_base36, p2.ca_digest_base36);
    assert_eq!(p1.ca_digest_base36.len(), 50);
    assert_eq!(p1.secret.len(), 25);
    assert!(token_matches_ca(&p1, &root.cert_pem));
    let other = RootCa::generate().unwrap();
    assert!(!token_matches_ca(&p1, &other.cert_pem));
    assert!(!token_matches_ca(&p1, "garbage"));
    assert!(tokens_equal(&t1, &t1.clone()));
    assert!(!tokens_equal(&t1, &t2));
}

#[test]
fn malformed_tokens_are_errors() {
    let root = RootCa::generate().unwrap();
    let good = generate_join_token(&root.cert_pem).unwrap();
    let digest = &good[9..59];
    let secret = &good[60..];
    let bad = [
        String::new(),
        "SWMTKN".into(),
        "SWMTKN-1".into(),
        "SWMTKN-1-abc-def".into(),
        format!("SWMTKN-2-{digest}-{secret}"),
        format!("XXXXXX-1-{digest}-{secret}"),
        format!("SWMTKN-1-{digest}-{secret}-extra"),
        format!("SWMTKN-1-{}-{secret}", &digest[1..]),
        format!("SWMTKN-1-{digest}-{}", secret.to_uppercase() + "x"),
        format!("SWMTKN-1-{digest}-{}é", &secret[..24]),
        "-".repeat(80),
    ];
    for t in bad {
        let err = parse_join_token(&t).unwrap_err();
        assert!(
            err.to_string().starts_with("invalid join token: "),
            "{t:?}: {err}"
        );
    }
}

#[test]
fn renewal_within_50_to_80_percent() {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let id = NodeIdentity {
        node_id: "n".into(),
        role: proto::NodeRole::Worker,
        cluster_id: "c".into(),
        not_before: start,
        not_after: start + Duration::from_secs(1000),
    };
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let t = renewal_time(&id).duration_since(start).unwrap();
        assert!(
            t >= Duration::from_secs(500) && t <= Duration::from_secs(800),
            "{t:?}"
        );
        seen.insert(t.as_secs());
    }
    assert!(seen.len() > 10, "renewal times are random");
    // An expired-at-birth certificate renews at once rather than panicking.
    let weird = NodeIdentity {
        not_after: start - Duration::from_secs(5),
        ..id
    };
    assert_eq!(renewal_time(&weird), start);
}

#[test]
fn new_cluster_root_ca_has_distinct_tokens() {
    let rc = new_cluster_root_ca().unwrap();
    let tokens = rc.join_tokens.unwrap();
    assert_ne!(tokens.worker, tokens.manager);
    for t in [&tokens.worker, &tokens.manager] {
        assert!(token_matches_ca(&parse_join_token(t).unwrap(), &rc.ca_cert));
    }
    assert_eq!(rc.ca_cert_hash, cert_digest(&rc.ca_cert).unwrap());
    RootCa::from_pem(&rc.ca_cert, &rc.ca_key).unwrap();
}

#[test]
fn a_validity_beyond_the_maximum_is_an_error_not_a_panic() {
    let root = RootCa::generate().unwrap();
    let (_key, csr) = new_key_and_csr().unwrap();
    let sign = |validity| root.sign_node_cert(&csr, "n1", proto::NodeRole::Worker, "c1", validity);
    // 10^9 hours: what `--cert-expiry 1000000000h` asks for.
    for huge in [
        Duration::from_secs(3600 * 1_000_000_000),
        Duration::MAX,
        MAX_NODE_CERT_VALIDITY + Duration::from_secs(1),
    ] {
        let e = sign(huge).unwrap_err();
        assert!(e.to_string().contains("longer than the maximum"), "{e}");
    }
    let pem = sign(MAX_NODE_CERT_VALIDITY).expect("the maximum itself");
    let id = parse_node_cert_pem(&pem).unwrap();
    assert!(id.not_after > SystemTime::now() + MAX_NODE_CERT_VALIDITY - Duration::from_secs(60));
}

/// A cluster root CA in its stored form.
fn stored_root() -> proto::RootCa {
    new_cluster_root_ca().unwrap()
}

fn leaf_under(root: &proto::RootCa, node: &str) -> String {
    let (signer, chain) = signing_root(root).unwrap();
    let (_key, csr) = new_key_and_csr().unwrap();
    let leaf = signer
        .sign_node_cert(
            &csr,
            node,
            proto::NodeRole::Worker,
            "cluster9",
            Duration::from_secs(3600),
        )
        .unwrap();
    format!("{leaf}{chain}")
}

#[test]
fn cross_signed_chain_verifies_under_the_old_and_the_new_root() {
    let mut root = stored_root();
    let old_cert = root.ca_cert.clone();
    let next = RootCa::generate().unwrap();
    root.root_rotation = Some(start_rotation(&root, &next).unwrap());

    let chain = leaf_under(&root, "w1");
    // leaf, then the cross-signed root.
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(chain_verifies(&chain, &old_cert).unwrap());
    assert!(chain_verifies(&chain, &next.cert_pem).unwrap());
    assert!(chain_verifies(&chain, &trust_bundle(&root)).unwrap());
    // Signed by the new key, not the old one.
    assert!(issued_by(&chain, &next.cert_pem).unwrap());
    assert!(!issued_by(&chain, &old_cert).unwrap());
    // Without the cross-signed certificate, a node trusting only the old root refuses it.
    let leaf_only = &chain[..chain.find("-----END CERTIFICATE-----").unwrap() + 25];
    assert!(!chain_verifies(leaf_only, &old_cert).unwrap());
    assert!(chain_verifies(leaf_only, &next.cert_pem).unwrap());

    // A certificate of the old root verifies under the bundle of the rotation, not under
    // the new root alone.
    let mut before = root.clone();
    before.root_rotation = None;
    let old_leaf = leaf_under(&before, "w2");
    assert!(chain_verifies(&old_leaf, &trust_bundle(&root)).unwrap());
    assert!(!chain_verifies(&old_leaf, &next.cert_pem).unwrap());
    // An unrelated root accepts neither.
    let other = RootCa::generate().unwrap();
    assert!(!chain_verifies(&chain, &other.cert_pem).unwrap());
}

#[test]
fn rotation_signs_with_the_new_root_and_finishes_on_it() {
    let mut root = stored_root();
    let old_tokens = root.join_tokens.clone().unwrap();
    assert_eq!(trust_bundle(&root), root.ca_cert);
    assert_eq!(
        desired_issuer(&root).unwrap(),
        issuer_info_of_ca(&root.ca_cert).unwrap()
    );
    let next = RootCa::generate().unwrap();
    root.root_rotation = Some(start_rotation(&root, &next).unwrap());
    assert_eq!(
        trust_bundle(&root).matches("BEGIN CERTIFICATE").count(),
        2,
        "both roots are trusted during the rotation"
    );
    assert_eq!(
        desired_issuer(&root).unwrap(),
        issuer_info_of_ca(&next.cert_pem).unwrap()
    );
    assert_ne!(
        desired_issuer(&root).unwrap().public_key,
        issuer_info_of_ca(&root.ca_cert).unwrap().public_key
    );

    let done = finish_rotation(&root).unwrap();
    assert_eq!(done.ca_cert, next.cert_pem);
    assert_eq!(done.ca_cert_hash, next.digest());
    assert!(done.root_rotation.is_none());
    assert_eq!(trust_bundle(&done), next.cert_pem);
    // New tokens name the new root's digest.
    let tokens = done.join_tokens.unwrap();
    assert!(token_matches_ca(
        &parse_join_token(&tokens.worker).unwrap(),
        &next.cert_pem
    ));
    assert!(token_matches_ca(
        &parse_join_token(&tokens.manager).unwrap(),
        &next.cert_pem
    ));
    assert!(!token_matches_ca(
        &parse_join_token(&old_tokens.worker).unwrap(),
        &next.cert_pem
    ));
}

#[test]
fn rotating_to_the_current_root_is_refused() {
    let root = stored_root();
    let same = RootCa::from_pem(&root.ca_cert, &root.ca_key).unwrap();
    let err = start_rotation(&root, &same).unwrap_err().to_string();
    assert!(err.contains("is the current one"), "{err}");
    assert!(finish_rotation(&root).is_err());
}
