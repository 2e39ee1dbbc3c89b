//! End-to-end: overlay networks in the control plane, with `test-agent` processes (simulated
//! executor) driven by the real `swarm` CLI.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use tests::{json, table, wait_for, Cluster};

/// (network id, address) of every attachment of every task line of `service ps --format json`.
fn attachments(out: &str) -> Vec<(String, String, String)> {
    let mut v = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let t = json(line);
        let task = t["id"].as_str().unwrap_or_default().to_string();
        for a in t["networks"].as_array().into_iter().flatten() {
            for addr in a["addresses"].as_array().into_iter().flatten() {
                v.push((
                    task.clone(),
                    a["network_name"].as_str().unwrap_or_default().to_string(),
                    addr.as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    v
}

fn in_subnet(addr: &str, subnet: &str) -> bool {
    let ip: Ipv4Addr = addr.split('/').next().unwrap().parse().unwrap();
    let (base, len) = subnet.split_once('/').unwrap();
    let base: Ipv4Addr = base.parse().unwrap();
    let len: u32 = len.parse().unwrap();
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(base) & mask
}

#[test]
fn tasks_get_distinct_addresses_and_networks_in_use_cannot_go() {
    let c = Cluster::new(2, 26701).unwrap();
    c.form(1).unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let m = c.node(0);

    // `init` made the ingress network; it gets the first subnet of the pool.
    let ls = m.swarm_ok(&["network", "ls"]);
    assert_eq!(
        ls.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"],
        "{ls}"
    );
    let rows = table(&ls);
    assert!(
        rows.iter()
            .any(|r| r[1] == "ingress" && r[2] == "overlay" && r[3] == "swarm"),
        "{ls}"
    );
    wait_for(Duration::from_secs(10), || {
        let i = json(&m.swarm_ok(&["network", "inspect", "ingress"]));
        i[0]["allocation"]["subnet"] == "10.0.0.0/24"
    })
    .unwrap_or_else(|e| panic!("{e}: {}", m.swarm_ok(&["network", "inspect", "ingress"])));

    // A user network, allocated from the pool.
    let id = m.swarm_ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "-o",
        "com.docker.network.driver.mtu=1400",
        "front",
    ]);
    assert!(!id.trim().is_empty());
    let bad = m.swarm(&["network", "create", "-d", "bridge", "nope"]);
    assert!(
        !bad.ok() && bad.stderr.contains("overlay"),
        "{}",
        bad.stderr
    );
    let mut subnet = String::new();
    wait_for(Duration::from_secs(10), || {
        let i = json(&m.swarm_ok(&["network", "inspect", "front"]));
        subnet = i[0]["allocation"]["subnet"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        !subnet.is_empty()
    })
    .unwrap();
    assert_eq!(subnet, "10.0.1.0/24");
    let inspect = json(&m.swarm_ok(&["network", "inspect", "front"]));
    assert!(inspect[0]["allocation"]["vni"].as_u64().unwrap() >= 4096);
    assert_eq!(inspect[0]["allocation"]["gateway"], "10.0.1.1");

    // A service of 3 replicas on it: every task has a distinct address in the subnet.
    m.swarm_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--replicas",
        "3",
        "--network",
        "front",
        "sim/app",
    ]);
    let mut atts = Vec::new();
    wait_for(Duration::from_secs(30), || {
        let out = m.swarm_ok(&["service", "ps", "--format", "json", "web"]);
        atts = attachments(&out);
        atts.len() == 3
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            m.swarm_ok(&["service", "ps", "--format", "json", "web"])
        )
    });
    let addrs: BTreeSet<&str> = atts.iter().map(|(_, _, a)| a.as_str()).collect();
    assert_eq!(addrs.len(), 3, "distinct: {atts:?}");
    for (_, net, addr) in &atts {
        assert_eq!(net, "front");
        assert!(in_subnet(addr, &subnet), "{addr} in {subnet}");
        assert!(addr.ends_with("/24") && addr != "10.0.1.1/24", "{addr}");
    }
    wait_for(Duration::from_secs(30), || {
        tests::running(&m.tasks("web").unwrap()).len() == 3
    })
    .unwrap_or_else(|e| panic!("{e}: {}", m.swarm(&["service", "ps", "web"]).stdout));

    // In use: refused, with the service named.
    let rm = m.swarm(&["network", "rm", "front"]);
    assert!(!rm.ok());
    assert!(
        rm.stderr.contains("network front is in use by service web"),
        "{}",
        rm.stderr
    );

    // Once the service and its tasks are gone, it goes.
    m.swarm_ok(&["service", "rm", "web"]);
    wait_for(Duration::from_secs(30), || {
        m.swarm(&["network", "rm", "front"]).ok()
    })
    .unwrap_or_else(|e| panic!("{e}: {}", m.swarm(&["network", "rm", "front"]).stderr));
    let ls = m.swarm_ok(&["network", "ls"]);
    assert!(!ls.contains("front"), "{ls}");
}

#[test]
fn exhausted_networks_show_an_error_and_updates_add_networks() {
    let c = Cluster::new(1, 26711).unwrap();
    c.form(1).unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let m = c.node(0);
    // A /29: .1 is the gateway, .2-.6 are for the service's VIP and its tasks (5 addresses).
    m.swarm_ok(&[
        "network",
        "create",
        "--subnet",
        "10.99.0.0/29",
        "--gateway",
        "10.99.0.1",
        "tiny",
    ]);
    m.swarm_ok(&["network", "create", "back"]);
    m.swarm_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "big",
        "--replicas",
        "5",
        "--network",
        "tiny",
        "sim/app",
    ]);
    wait_for(Duration::from_secs(30), || {
        let out = m.swarm_ok(&["service", "ps", "--no-trunc", "big"]);
        out.contains("no available IP addresses on network tiny")
            && tests::running(&m.tasks("big").unwrap()).len() == 4
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            m.swarm_ok(&["service", "ps", "--no-trunc", "big"])
        )
    });
    // The VIP came first (before any task left NEW): the first host after the gateway.
    let inspect = json(&m.swarm_ok(&["service", "inspect", "big"]));
    let tiny_id = json(&m.swarm_ok(&["network", "inspect", "tiny"]))[0]["id"].clone();
    assert_eq!(
        inspect[0]["endpoint"]["virtual_ips"],
        serde_json::json!([{"network_id": tiny_id, "addr": "10.99.0.2/29"}]),
        "{inspect}"
    );
    let ps = m.swarm_ok(&["service", "ps", "--format", "json", "big"]);
    let stuck: Vec<serde_json::Value> = ps
        .lines()
        .map(json)
        .filter(|t| t["status"]["state"] == "TASK_STATE_NEW")
        .collect();
    assert_eq!(stuck.len(), 1, "{ps}");
    // Scaling down frees an address: the stuck task (or its replacement) gets it.
    m.swarm_ok(&["service", "scale", "-d", "big=4"]);
    wait_for(Duration::from_secs(30), || {
        let tasks = m.tasks("big").unwrap();
        tests::running(&tasks).len() == 4
            && !tasks.iter().any(|t| {
                t.desired_state == proto::TaskState::Running as i32
                    && t.state() == proto::TaskState::New
            })
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            m.swarm_ok(&["service", "ps", "--no-trunc", "big"])
        )
    });
    m.swarm_ok(&["service", "rm", "big"]);

    // `service update --network-add NAME`: new tasks are on both networks.
    m.swarm_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "two",
        "--replicas",
        "2",
        "--network",
        "tiny",
        "sim/app",
    ]);
    m.swarm_ok(&["service", "update", "-d", "--network-add", "back", "two"]);
    wait_for(Duration::from_secs(60), || {
        let out = m.swarm_ok(&["service", "ps", "--format", "json", "two"]);
        let live: Vec<serde_json::Value> = out
            .lines()
            .map(json)
            .filter(|t| t["desired_state"] == "TASK_STATE_RUNNING")
            .collect();
        live.len() == 2
            && live.iter().all(|t| {
                let nets: BTreeSet<&str> = t["networks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a["network_name"].as_str())
                    .collect();
                nets == BTreeSet::from(["tiny", "back"])
            })
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            m.swarm_ok(&["service", "ps", "--format", "json", "two"])
        )
    });
    let spec = json(&m.swarm_ok(&["service", "inspect", "two"]));
    assert_eq!(
        spec[0]["spec"]["task"]["networks"]
            .as_array()
            .map(|a| a.len()),
        Some(2),
        "{spec}"
    );
    // `--network-rm NAME` matches the id the spec stores.
    m.swarm_ok(&["service", "update", "-d", "--network-rm", "back", "two"]);
    let spec = json(&m.swarm_ok(&["service", "inspect", "two"]));
    assert_eq!(
        spec[0]["spec"]["task"]["networks"]
            .as_array()
            .map(|a| a.len()),
        Some(1),
        "{spec}"
    );
}
