//! The data plane this kernel gets, end to end: the agent's probe and choice as it reports them
//! (`node inspect`, `/metrics`), and a two-node cluster whose service answers a client on its
//! VIP, its DNS name and a published port. On this machine's kernel the agents attach with TCX
//! (or legacy tc with `SWARM_TEST_TC_ATTACH=legacy`); `cargo xtask vm-test` runs it in a VM on
//! Debian 12's 6.1 kernel, where the probe picks legacy tc. Needs what `cargo xtask test`
//! installs (containerd, runc, docker-registry, dnsmasq …).

use std::time::Duration;

use std::collections::BTreeSet;

use swarm_agent::network::ipvs::marks;
use swarm_agent::network::{probe, testbed};
use tests::lab::node::DATA_PLANE_ENV;
use tests::lab::testing::{create, test_lab as lab, wait_running, SERVED};
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
/// the client task's namespace holds the IPVS entries (`ipvsadm -Ln`, observation only), and
/// so does each node's ingress sandbox for the published port (both tasks' ingress
/// addresses); an agent restart leaves both tables as they were (stable marks); a stopped
/// task leaves the destinations (the VIP's and the published port's) and gets no new
/// connections, through either node's published port (one of them then runs no task of the
/// service); a service on a network the client is not on does not answer.
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

    // The routing mesh: every node's ingress sandbox balances the published port (its own
    // mark) over both tasks' ingress addresses, NAT to the target port.
    let port = format!("FWM  {} rr", marks::port_mark(6, 8080));
    for n in lab.nodes() {
        let table = ingress_ipvsadm(n);
        assert!(table.contains(&port), "{port} in {}:\n{table}", n.name());
        for t in &web {
            let d = ingress_dest(t);
            let line = table.lines().find(|l| l.contains(&d));
            assert!(
                line.is_some_and(|l| l.contains("Masq    1")),
                "{d} weight 1 in {}'s ingress sandbox:\n{table}",
                n.name()
            );
        }
    }

    // An agent restart changes no mark: the tables read the same once it synced again.
    // (Services, destinations and weights; not the connection counters, which move.)
    let entries = |t: String| -> Vec<String> {
        t.lines()
            .map(|l| l.split_whitespace().take(4).collect::<Vec<_>>().join(" "))
            .collect()
    };
    let before = (entries(ingress_ipvsadm(node)), entries(ipvsadm()));
    let ready = || {
        std::fs::read_to_string(node.agent_log())
            .unwrap_or_default()
            .matches("ingress sandbox ready")
            .count()
    };
    let readied = ready();
    node.kill_agent().unwrap();
    node.start_agent().unwrap();
    let synced = wait_for(Duration::from_secs(60), || ready() > readied);
    assert!(
        synced.is_ok(),
        "no sync after the restart:\n{}",
        node.agent_log_tail()
    );
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(
            (entries(ingress_ipvsadm(node)), entries(ipvsadm())),
            before,
            "the IPVS tables changed across an agent restart"
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
    for n in lab.nodes() {
        let drained = wait_for(Duration::from_secs(60), || {
            last = ingress_ipvsadm(n);
            gone.iter().all(|t| !last.contains(&ingress_dest(t)))
                && last.contains(&ingress_dest(&left))
        });
        assert!(
            drained.is_ok(),
            "the stopped task is still a destination in {}'s ingress sandbox:\n{last}",
            n.name()
        );
    }
    // Both nodes' published port (one node has no web task now), from outside and from the
    // node itself (its address and 127.0.0.1): every connection reaches the task left.
    let idle = lab
        .nodes()
        .iter()
        .filter(|n| n.ip() != lab.node_of(&left).unwrap().ip())
        .count();
    assert_eq!(idle, 1, "one node runs no web task");
    for n in lab.nodes() {
        let addr = format!("{}:8080", n.ip());
        for i in 0..10 {
            let a = addr.clone();
            let h = lab
                .in_underlay(move || tests::http_get(&a, "/hostname"))
                .unwrap_or_else(|e| panic!("{addr} from the underlay: {e:#}\n{}", lab.logs()));
            assert_eq!(h.trim(), hostname(&left), "connection {i} to {addr}");
        }
        for local in [addr.as_str(), "127.0.0.1:8080"] {
            let h = n
                .http_get(local, "/hostname")
                .unwrap_or_else(|e| panic!("{local} on {}: {e:#}\n{}", n.name(), lab.logs()));
            assert_eq!(h.trim(), hostname(&left), "{local} on {}", n.name());
        }
    }
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

/// `ipvsadm -Ln` in the node's ingress sandbox (the IPVS routing mesh).
fn ingress_ipvsadm(n: &tests::lab::LabNode) -> String {
    let ns = n.exec_root().join(swarm_agent::network::INGRESS_SBOX);
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["ipvsadm", "-Ln"])
        .output()
        .unwrap_or_else(|e| panic!("nsenter ipvsadm: {e}"));
    assert!(
        out.status.success(),
        "ipvsadm -Ln in {}: {}",
        ns.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The ingress sandbox's destination of a task for the published port 8080 (target 80).
fn ingress_dest(t: &proto::Task) -> String {
    let addr = t
        .networks
        .iter()
        .find(|a| a.network_name == "ingress")
        .and_then(|a| a.addresses.first())
        .map(|a| a.split('/').next().unwrap_or_default().to_string())
        .expect("the task's address on the ingress network");
    format!("-> {addr}:80 ")
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
    // The store says RUNNING before node1's data path has the other node's replica as a
    // backend, so the 20 requests are asked again until both answered, within `SERVED`.
    for url in [
        "http://web/hostname".to_string(),
        format!("http://{vip}/hostname"),
    ] {
        let mut out = String::new();
        let mut seen = BTreeSet::new();
        let _ = wait_for(SERVED, || {
            out = lab
                .task_exec(&client, &["/whoami", "get", &url, "--count", "20"])
                .unwrap_or_else(|e| format!("{e:#}"));
            seen = out.lines().map(|l| l.trim().to_string()).collect();
            seen == names
        });
        assert_eq!(seen, names, "{url} answered by {out}\n{}", lab.logs());
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
