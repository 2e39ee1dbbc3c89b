//! The data plane this kernel gets, end to end: the agent's probe and choice as it reports them
//! (`node inspect`, `/metrics`), and a two-node cluster whose service answers a client on its
//! VIP, its DNS name and a published port. On this machine's kernel the agents attach with TCX
//! (or legacy tc with `SWARM_TEST_TC_ATTACH=legacy`); `cargo xtask vm-test` runs it in a VM on
//! Debian 12's 6.1 kernel, where the probe picks legacy tc. Needs what `cargo xtask test`
//! installs (containerd, runc, docker-registry, dnsmasq …).

use std::time::Duration;

use swarm_agent::network::{probe, testbed};
use tests::lab::testing::{create, test_lab as lab, wait_running};
use tests::{hostname, wait_for, AgentClient};

#[test]
fn the_chosen_data_plane_is_reported_and_serves_a_vip_a_name_and_a_published_port() {
    let (_g, lab) = lab(1, 1);
    let want = testbed::tc_attach().unwrap_or_else(|e| panic!("{e}"));
    let m = lab.node(1);

    // Reported: the node description (JSON and --pretty) and /metrics, on every node.
    for n in lab.nodes() {
        let node = m
            .nodes()
            .unwrap()
            .into_iter()
            .find(|x| {
                x.description
                    .as_ref()
                    .is_some_and(|d| d.hostname == n.name())
            })
            .unwrap_or_else(|| panic!("no node {}", n.name()));
        let dp = node
            .description
            .and_then(|d| d.data_plane)
            .expect("the node's data plane in its description");
        assert_eq!(dp.mode, "ebpf", "{dp:?}");
        assert_eq!(dp.tc_attach, want.as_str(), "{dp:?}");
        assert_eq!(dp.kernel, probe::kernel_release(), "{dp:?}");
        let metrics = n.metrics().unwrap();
        let line = metrics
            .lines()
            .find(|l| l.starts_with("swarm_agent_data_plane_info{"))
            .unwrap_or_else(|| panic!("no data-plane info metric:\n{metrics}"));
        assert!(line.contains(r#"mode="ebpf""#), "{line}");
        assert!(
            line.contains(&format!(r#"attach="{}""#, want.as_str())),
            "{line}"
        );
        assert!(line.ends_with(" 1"), "{line}");
    }
    let json = m.swarm_ok(&["node", "inspect", "self"]);
    assert!(
        json.contains(&format!(r#""tc_attach": "{}""#, want.as_str())),
        "{json}"
    );
    let pretty = m.swarm_ok(&["node", "inspect", "--pretty", "self"]);
    assert!(
        pretty.contains(&format!(
            "Data Plane:\n Mode:\t\t\tebpf\n TC Attach:\t\t{}\n",
            want.as_str()
        )),
        "{pretty}"
    );

    // A service with a replica on each node, published on 8080, and a client on node1.
    let whoami = format!("{}/whoami:latest", lab.registry());
    m.swarm_ok(&["network", "create", "-d", "overlay", "appnet"]);
    create(
        &lab,
        &[
            "--name",
            "web",
            "--replicas",
            "2",
            "--network",
            "appnet",
            "-p",
            "8080:80",
            &whoami,
        ],
    );
    create(
        &lab,
        &[
            "--name",
            "client",
            "--network",
            "appnet",
            "--constraint",
            "node.hostname==node1",
            &whoami,
        ],
    );
    let web = wait_running(&lab, "web", 2);
    let client = wait_running(&lab, "client", 1).remove(0);
    let names: std::collections::BTreeSet<String> = web.iter().map(hostname).collect();
    let vip = m
        .services()
        .unwrap()
        .into_iter()
        .find(|s| s.spec.as_ref().is_some_and(|sp| sp.name == "web"))
        .and_then(|s| s.endpoint)
        .and_then(|e| {
            e.virtual_ips
                .iter()
                .find(|v| v.network_id != "ingress" && !v.addr.is_empty())
                .map(|v| v.addr.split('/').next().unwrap_or_default().to_string())
        })
        .expect("web's VIP");

    // The DNS name (127.0.0.11 in the task) gives a VIP, and both the name and the VIP answer
    // from both replicas (one of them on the other node).
    let looked_up = lab
        .task_exec(&client, &["/whoami", "lookup", "web"])
        .unwrap_or_else(|e| panic!("lookup web: {e:#}\n{}", lab.logs()));
    assert_eq!(looked_up.trim(), vip, "web resolves to its VIP");
    for url in [
        "http://web/hostname".to_string(),
        format!("http://{vip}/hostname"),
    ] {
        let out = lab
            .task_exec(&client, &["/whoami", "get", &url, "--count", "20"])
            .unwrap_or_else(|e| panic!("{url}: {e:#}\n{}", lab.logs()));
        let seen: std::collections::BTreeSet<String> =
            out.lines().map(|l| l.trim().to_string()).collect();
        assert_eq!(seen, names, "{url} answered by {out}");
    }

    // The published port answers on each node's address from the underlay (outside the nodes).
    for n in lab.nodes() {
        let addr = format!("{}:8080", n.ip());
        let mut last = String::new();
        let answered = wait_for(Duration::from_secs(60), || {
            let a = addr.clone();
            match lab.in_underlay(move || tests::http_get(&a, "/hostname")) {
                Ok(h) if names.contains(h.trim()) => true,
                Ok(h) => {
                    last = format!("answered by {h}");
                    false
                }
                Err(e) => {
                    last = format!("{e:#}");
                    false
                }
            }
        });
        assert!(
            answered.is_ok(),
            "{addr} from the underlay: {last}\n{}",
            lab.logs()
        );
    }
}
