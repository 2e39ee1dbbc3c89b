//! The data plane this kernel gets, end to end: the agent's probe and choice as it reports them
//! (`node inspect`, `/metrics`), and a two-node cluster whose service answers a client on its
//! VIP, its DNS name and a published port. On this machine's kernel the agents attach with TCX
//! (or legacy tc with `SWARM_TEST_TC_ATTACH=legacy`); `cargo xtask vm-test` runs it in a VM on
//! Debian 12's 6.1 kernel, where the probe picks legacy tc. Needs what `cargo xtask test`
//! installs (containerd, runc, docker-registry, dnsmasq …).

use std::time::Duration;

use std::collections::BTreeSet;

use swarm_agent::network::{probe, testbed};
use tests::lab::node::DATA_PLANE_ENV;
use tests::lab::testing::{create, test_lab as lab, wait_running};
use tests::lab::Lab;
use tests::{hostname, wait_for, AgentClient};

#[test]
fn the_chosen_data_plane_is_reported_and_serves_a_vip_a_name_and_a_published_port() {
    let (_g, lab) = lab(1, 1);
    reported(&lab, "ebpf");
    serves_web(&lab);
}

/// The same through IPVS (`--data-plane ipvs`; `cargo xtask vm-test` runs it on 6.1 with
/// `SWARM_TEST_DATA_PLANE=ipvs`): reported as ipvs, the VIP, name and published port answer,
/// the client task's namespace holds the IPVS entries (`ipvsadm -Ln`, observation only), a
/// stopped task leaves the destinations and gets no new connections, and a service on a
/// network the client is not on does not answer.
#[test]
#[ignore = "needs the ip_vs module and SWARM_TEST_DATA_PLANE=ipvs: run by `cargo xtask vm-test` on 6.1"]
fn ipvs_serves_a_vip_a_name_and_a_published_port_and_drains_a_stopped_task() {
    assert_eq!(
        std::env::var(DATA_PLANE_ENV).as_deref(),
        Ok("ipvs"),
        "run with {DATA_PLANE_ENV}=ipvs (the lab's agents get --data-plane ipvs)"
    );
    let (_g, lab) = lab(1, 1);
    reported(&lab, "ipvs");
    let (client, web, vip) = serves_web(&lab);
    let m = lab.node(1);
    let node = lab.node_of(&client).unwrap();
    let ipvsadm = || {
        let out = node.in_task_netns(&client.id, "ipvsadm", &["-Ln"]);
        assert!(
            out.ok(),
            "ipvsadm -Ln in the client's namespace: {}",
            out.stderr
        );
        out.stdout
    };
    let dest = |t: &proto::Task| {
        let addr = t
            .networks
            .iter()
            .find(|a| a.network_name == "appnet")
            .and_then(|a| a.addresses.first())
            .map(|a| a.split('/').next().unwrap_or_default().to_string())
            .expect("the task's address on appnet");
        format!("-> {addr}:0")
    };
    let table = ipvsadm();
    assert!(table.contains("FWM  "), "{table}");
    for t in &web {
        let d = dest(t);
        let line = table.lines().find(|l| l.contains(&d));
        assert!(
            line.is_some_and(|l| l.contains("Masq    1")),
            "{d} weight 1 in:\n{table}"
        );
    }

    // A service on another network: its VIP does not answer the client.
    m.swarm_ok(&["network", "create", "-d", "overlay", "othernet"]);
    let whoami = format!("{}/whoami:latest", lab.registry());
    create(&lab, &["--name", "db", "--network", "othernet", &whoami]);
    wait_running(&lab, "db", 1);
    let db_vip = vip_of(lab.node(1), "db");
    let r = lab.task_exec(
        &client,
        &["/whoami", "get", &format!("http://{db_vip}/hostname")],
    );
    assert!(
        r.is_err(),
        "db's VIP {db_vip} on othernet answered the client: {r:?}"
    );

    // One replica stops: its destination leaves the client's table and every new connection
    // goes to the other.
    m.swarm_ok(&["service", "scale", "web=1"]);
    let left = wait_running(&lab, "web", 1).remove(0);
    let gone: Vec<_> = web.iter().filter(|t| t.id != left.id).collect();
    let mut last = String::new();
    let drained = wait_for(Duration::from_secs(60), || {
        last = ipvsadm();
        gone.iter().all(|t| !last.contains(&dest(t))) && last.contains(&dest(&left))
    });
    assert!(
        drained.is_ok(),
        "the stopped task is still a destination:\n{last}"
    );
    let out = lab
        .task_exec(
            &client,
            &[
                "/whoami",
                "get",
                &format!("http://{vip}/hostname"),
                "--count",
                "10",
            ],
        )
        .unwrap_or_else(|e| panic!("{vip}: {e:#}\n{}", lab.logs()));
    let seen: BTreeSet<String> = out.lines().map(|l| l.trim().to_string()).collect();
    assert_eq!(seen, BTreeSet::from([hostname(&left)]), "{out}");
}

/// The data plane every node reports (its description, JSON and `--pretty`, and /metrics):
/// `mode`, and the tc attach this kernel gets.
fn reported(lab: &Lab, mode: &str) {
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
        assert_eq!(dp.mode, mode, "{dp:?}");
        assert_eq!(dp.tc_attach, want.as_str(), "{dp:?}");
        assert_eq!(dp.kernel, probe::kernel_release(), "{dp:?}");
        let metrics = n.metrics().unwrap();
        let line = metrics
            .lines()
            .find(|l| l.starts_with("swarm_agent_data_plane_info{"))
            .unwrap_or_else(|| panic!("no data-plane info metric:\n{metrics}"));
        assert!(line.contains(&format!(r#"mode="{mode}""#)), "{line}");
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
            "Data Plane:\n Mode:\t\t\t{mode}\n TC Attach:\t\t{}\n",
            want.as_str()
        )),
        "{pretty}"
    );
}

/// A service with a replica on each node, published on 8080, and a client on node1: the DNS
/// name and the VIP answer from both replicas, the published port from the underlay. Returns
/// the client, the replicas and the VIP.
fn serves_web(lab: &Lab) -> (proto::Task, Vec<proto::Task>, String) {
    let m = lab.node(1);
    let whoami = format!("{}/whoami:latest", lab.registry());
    m.swarm_ok(&["network", "create", "-d", "overlay", "appnet"]);
    create(
        lab,
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
        lab,
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
    let web = wait_running(lab, "web", 2);
    let client = wait_running(lab, "client", 1).remove(0);
    let names: BTreeSet<String> = web.iter().map(hostname).collect();
    let vip = vip_of(m, "web");

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
        let seen: BTreeSet<String> = out.lines().map(|l| l.trim().to_string()).collect();
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
    (client, web, vip)
}

/// The VIP of the service `name` on its own network (not the ingress network).
fn vip_of(m: &tests::lab::LabNode, name: &str) -> String {
    m.services()
        .unwrap()
        .into_iter()
        .find(|s| s.spec.as_ref().is_some_and(|sp| sp.name == name))
        .and_then(|s| s.endpoint)
        .and_then(|e| {
            e.virtual_ips
                .iter()
                .find(|v| v.network_id != "ingress" && !v.addr.is_empty())
                .map(|v| v.addr.split('/').next().unwrap_or_default().to_string())
        })
        .unwrap_or_else(|| panic!("{name}'s VIP"))
}
