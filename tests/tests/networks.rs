//! End-to-end: overlay networks in the control plane, with `test-agent` processes (simulated
//! executor) driven by the real `swarm` CLI.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use tests::{json, table, wait_for, AgentClient, Cluster};

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
    tests::in_subnet(ip, (base.parse().unwrap(), len.parse().unwrap()))
}

#[test]
fn tasks_get_distinct_addresses_and_networks_in_use_cannot_go() {
    let c = Cluster::formed(2, 26701, 1);
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
    m.create_service(&[
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
    let c = Cluster::formed(1, 26711, 1);
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
    m.create_service(&[
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
    m.create_service(&[
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

/// One task as `network inspect --verbose` shows it: (Name, EndpointIP, Host IP, Serving).
type ViewTask = (String, String, String, bool);

/// The `Services` section of `network inspect --verbose NET` on node `n`.
fn services_seen(n: &tests::AgentProc, net: &str) -> serde_json::Value {
    let out = n.swarm(&["network", "inspect", "--verbose", net]);
    if !out.ok() {
        return serde_json::Value::Null;
    }
    json(&out.stdout)[0]["Services"].clone()
}

fn tasks_seen(services: &serde_json::Value, service: &str) -> BTreeSet<ViewTask> {
    services[service]["Tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["Name"].as_str().unwrap_or_default().to_string(),
                t["EndpointIP"].as_str().unwrap_or_default().to_string(),
                t["Info"]["Host IP"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                t["Serving"].as_bool().unwrap_or_default(),
            )
        })
        .collect()
}

/// What the managers say the endpoints of `service` on network `net` (a name) are once it
/// converged: its running tasks on nodes that are up, serving, at their node's address.
fn expected_tasks(via: &tests::AgentProc, service: &str, net: &str) -> BTreeSet<ViewTask> {
    let (Ok(tasks), Ok(nodes)) = (via.tasks(service), via.nodes()) else {
        return BTreeSet::new();
    };
    let node = |id: &str| nodes.iter().find(|n| n.id == id);
    tests::running(&tasks)
        .into_iter()
        .filter_map(|t| {
            let n = node(&t.node_id)?;
            if n.state() != proto::NodeState::Ready {
                return None;
            }
            let a = t.networks.iter().find(|a| a.network_name == net)?;
            let ip = a.addresses.first()?.split('/').next()?.to_string();
            Some((
                format!("{}.{}.{}", t.service_name, t.slot, t.id),
                ip,
                n.status.as_ref()?.addr.clone(),
                true,
            ))
        })
        .collect()
}

fn hosts(tasks: &BTreeSet<ViewTask>) -> BTreeSet<&str> {
    tasks.iter().map(|t| t.2.as_str()).collect()
}

fn leader(c: &Cluster, alive: &[usize]) -> Option<usize> {
    for &j in alive {
        let out = c.node(j).swarm(&["node", "ls"]);
        if !out.ok() {
            continue;
        }
        let row = out.stdout.lines().find(|l| l.contains("Leader"))?;
        return alive
            .iter()
            .copied()
            .find(|k| row.contains(&format!("node{}", k + 1)));
    }
    None
}

/// Waits until the worker's view of web on alpha is what the managers (asked through node
/// `via`) say, `count` tasks on at least `min_hosts` nodes; returns it.
fn converge(
    c: &Cluster,
    via: usize,
    worker: usize,
    count: usize,
    min_hosts: usize,
    what: &str,
) -> BTreeSet<ViewTask> {
    let mut seen = BTreeSet::new();
    let mut want = BTreeSet::new();
    wait_for(Duration::from_secs(60), || {
        want = expected_tasks(c.node(via), "web", "alpha");
        seen = tasks_seen(&services_seen(c.node(worker), "alpha"), "web");
        want.len() == count && seen == want && hosts(&seen).len() >= min_hosts
    })
    .unwrap_or_else(|e| {
        panic!(
            "{what}: {e}\nworker sees {seen:?}\nmanagers say {want:?}\n{}",
            c.logs()
        )
    });
    seen
}

#[test]
fn a_worker_sees_the_endpoints_of_its_networks_and_follows_changes_and_failover() {
    let mut c = Cluster::formed(4, 26721, 3);
    let worker = 3;
    let w = c.node(worker);
    let m = c.node(0);
    m.swarm_ok(&["network", "create", "alpha"]);
    m.swarm_ok(&["network", "create", "beta"]);

    // web: on alpha, on node1 and the worker (node4), with an ingress port.
    m.create_service(&[
        "--name",
        "web",
        "--replicas",
        "2",
        "--network",
        "name=alpha,alias=www",
        "--constraint",
        "node.hostname!=node2",
        "--constraint",
        "node.hostname!=node3",
        "-p",
        "8080:80",
        "sim/app",
    ]);
    // hidden: on beta, only on node2; the worker has no task on beta.
    m.create_service(&[
        "--name",
        "hidden",
        "--network",
        "beta",
        "--constraint",
        "node.hostname==node2",
        "sim/app",
    ]);

    // The worker sees web's endpoints on both nodes, serving, with the node addresses.
    let seen = converge(&c, 0, worker, 2, 2, "initial view");
    assert_eq!(
        hosts(&seen),
        BTreeSet::from(["127.0.0.1", "127.0.0.4"]),
        "{seen:?}"
    );
    let services = services_seen(w, "alpha");
    let inspect = json(&m.swarm_ok(&["service", "inspect", "web"]));
    let alpha_id = json(&m.swarm_ok(&["network", "inspect", "alpha"]))[0]["id"].clone();
    let vip = inspect[0]["endpoint"]["virtual_ips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["network_id"] == alpha_id)
        .unwrap_or_else(|| panic!("web has a VIP on alpha: {inspect}"))["addr"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        services["web"]["VIP"],
        vip.split('/').next().unwrap(),
        "{services}"
    );
    assert_eq!(
        services["web"]["Ports"],
        serde_json::json!(["Target: 80, Publish: 8080"])
    );
    // The worker shows the network itself from its view (it cannot ask the managers).
    let net = json(&w.swarm_ok(&["network", "inspect", "alpha"]));
    assert_eq!(net[0]["id"], alpha_id);
    assert_eq!(net[0]["allocation"]["subnet"], "10.0.1.0/24");

    // hidden (beta) is visible on node2, which runs it, and not on the worker.
    wait_for(Duration::from_secs(60), || {
        tasks_seen(&services_seen(c.node(1), "beta"), "hidden").len() == 1
    })
    .unwrap_or_else(|e| panic!("node2 sees hidden: {e}\n{}", c.logs()));
    let services = services_seen(w, "alpha");
    assert!(services.get("hidden").is_none(), "{services}");
    let beta = w.swarm(&["network", "inspect", "--verbose", "beta"]);
    assert!(
        !beta.ok() && beta.stderr.contains("No such network: beta"),
        "the worker has no task on beta: {} {}",
        beta.stdout,
        beta.stderr
    );

    // A dnsrr service on alpha: seen without a VIP; removed: gone with its tasks.
    m.create_service(&[
        "--name",
        "db",
        "--endpoint-mode",
        "dnsrr",
        "--network",
        "alpha",
        "--constraint",
        "node.hostname==node1",
        "sim/app",
    ]);
    wait_for(Duration::from_secs(60), || {
        let s = services_seen(w, "alpha");
        s["db"]["VIP"] == "" && tasks_seen(&s, "db").iter().any(|t| t.3)
    })
    .unwrap_or_else(|e| panic!("db on the worker: {e}: {}", services_seen(w, "alpha")));
    m.swarm_ok(&["service", "rm", "db"]);
    wait_for(Duration::from_secs(60), || {
        services_seen(w, "alpha").get("db").is_none()
    })
    .unwrap_or_else(|e| panic!("db gone: {e}: {}", services_seen(w, "alpha")));

    // Scaled up: the new endpoints show; scaled down: the removed tasks disappear.
    m.swarm_ok(&["service", "scale", "-d", "web=4"]);
    converge(&c, 0, worker, 4, 2, "scaled up");
    m.swarm_ok(&["service", "scale", "-d", "web=2"]);
    converge(&c, 0, worker, 2, 1, "scaled down");

    // The leader dies: the worker reconnects to the new leader and its view converges
    // (without the dead node's endpoints, once it is down), and follows changes again.
    let l = leader(&c, &[0, 1, 2]).unwrap_or_else(|| panic!("no leader\n{}", c.logs()));
    c.nodes[l].kill();
    let alive: Vec<usize> = (0..3).filter(|j| *j != l).collect();
    wait_for(Duration::from_secs(30), || {
        leader(&c, &alive).is_some_and(|n| n != l)
    })
    .unwrap_or_else(|e| panic!("no new leader: {e}\n{}", c.logs()));
    let via = alive[0];
    let dead_host = format!("127.0.0.{}", l + 1);
    let dead_name = format!("node{}", l + 1);
    wait_for(Duration::from_secs(60), || {
        c.node(via).nodes().is_ok_and(|ns| {
            ns.iter()
                .any(|n| n.hostname() == dead_name && n.state() == proto::NodeState::Down)
        })
    })
    .unwrap_or_else(|e| panic!("the dead leader is not down: {e}\n{}", c.logs()));
    let after = converge(&c, via, worker, 2, 1, "after failover");
    assert!(!hosts(&after).contains(dead_host.as_str()), "{after:?}");
    c.node(via).swarm_ok(&["service", "scale", "-d", "web=3"]);
    converge(&c, via, worker, 3, 1, "scaled after failover");
}
