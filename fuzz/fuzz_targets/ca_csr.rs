//! Certificate signing requests as a joining or renewing node sends them (PEM), signed by
//! the root CA (`swarm_manager::ca::RootCa::sign_node_cert`). Checks: no panic; a signed
//! certificate is a node certificate of the root for the node id, role and cluster asked,
//! whatever the CSR's subject said.

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use swarm_manager::ca::{parse_node_cert_pem, RootCa};

fn root() -> &'static RootCa {
    static ROOT: OnceLock<RootCa> = OnceLock::new();
    ROOT.get_or_init(|| RootCa::generate().expect("a root CA"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(csr) = std::str::from_utf8(data) else {
        return;
    };
    let validity = Duration::from_secs(90 * 24 * 3600);
    let Ok(pem) = root().sign_node_cert(csr, "node1", proto::NodeRole::Worker, "c1", validity)
    else {
        return;
    };
    let id = parse_node_cert_pem(&pem).expect("a signed certificate parses");
    assert_eq!(id.node_id, "node1");
    assert_eq!(id.role, proto::NodeRole::Worker);
    assert_eq!(id.cluster_id, "c1");
});
