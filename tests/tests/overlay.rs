//! Overlay networks for real: a lab (a network namespace, containerd and swarm-agent per node,
//! the eBPF data plane loaded in each), tasks in containers attached to overlay networks, and
//! traffic between them checked from inside the containers. Needs root, containerd, runc,
//! docker-registry, busybox-static, iputils-ping, python3 and the static whoami binary:
//! `cargo xtask test` installs and builds them. Labs are heavy on two cores: one at a time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tests::lab::testing::{node_of, test_lab as lab, wait_running, LONG};
use tests::lab::{Lab, LabNode};
use tests::{hostname, running, task_addr, wait_for, AgentClient};

fn addr_on(task: &proto::Task, network: &str) -> String {
    task_addr(task, network).unwrap_or_else(|| {
        panic!(
            "task {} has no address on {network}: {:?}",
            task.id, task.networks
        )
    })
}

/// `ping` from the task's namespace: whether an answer came back.
fn ping(lab: &Lab, from: &proto::Task, to: &str, size: usize) -> bool {
    node_of(lab, from)
        .in_task_netns(
            &from.id,
            "ping",
            &[
                "-c",
                "1",
                "-W",
                "2",
                "-M",
                "do",
                "-s",
                &size.to_string(),
                to,
            ],
        )
        .ok()
}

fn get(lab: &Lab, from: &proto::Task, url: &str) -> anyhow::Result<String> {
    lab.task_get(from, url)
}

/// A UDP datagram from inside the task's container to `to`:80; the answer.
fn udp(lab: &Lab, from: &proto::Task, to: &str, payload: &str) -> String {
    node_of(lab, from)
        .task_exec(&from.id, &["/whoami", "udp", &format!("{to}:80"), payload])
        .unwrap_or_else(|e| panic!("UDP to {to}: {e:#}"))
        .trim()
        .to_string()
}

#[test]
fn tasks_reach_each_other_across_nodes_networks_stay_apart_and_moved_tasks_follow() {
    let (_g, lab) = lab(1, 2);
    let m = lab.node(1);
    let whoami = format!("{}/whoami:latest", lab.registry());
    m.swarm_ok(&["network", "create", "-d", "overlay", "front"]);
    m.swarm_ok(&["network", "create", "-d", "overlay", "back"]);
    m.create_service(&[
        "--name",
        "web",
        "--replicas",
        "2",
        "--network",
        "front",
        "--constraint",
        "node.hostname!=node3",
        &whoami,
    ]);
    m.create_service(&[
        "--name",
        "client",
        "--network",
        "front",
        "--constraint",
        "node.hostname==node3",
        &whoami,
    ]);
    m.create_service(&[
        "--name",
        "other",
        "--network",
        "back",
        "--constraint",
        "node.hostname==node1",
        &whoami,
    ]);
    m.create_service(&[
        "--name",
        "both",
        "--network",
        "front",
        "--network",
        "back",
        "--constraint",
        "node.hostname==node2",
        &whoami,
    ]);
    let web = wait_running(&lab, "web", 2);
    let client = wait_running(&lab, "client", 1).remove(0);
    let other = wait_running(&lab, "other", 1).remove(0);
    let both = wait_running(&lab, "both", 1).remove(0);
    let mut web_nodes: Vec<&str> = web.iter().map(|t| node_of(&lab, t).name()).collect();
    web_nodes.sort();
    assert_eq!(
        web_nodes,
        ["node1", "node2"],
        "spread over the two allowed nodes"
    );

    // The client on node3 reaches both replicas: ICMP, full-size packets (1450 bytes with DF
    // set, nothing larger fits), TCP (HTTP) and UDP.
    for w in &web {
        let ip = addr_on(w, "front");
        assert!(ping(&lab, &client, &ip, 56), "ping {ip}\n{}", lab.logs());
        assert!(ping(&lab, &client, &ip, 1450 - 28), "full-size ping {ip}");
        assert!(
            !ping(&lab, &client, &ip, 1451 - 28),
            "a 1451-byte packet went out with DF"
        );
        let body = get(&lab, &client, &format!("http://{ip}/hostname")).unwrap();
        assert_eq!(body, hostname(w), "HTTP to {ip}");
        let echo = udp(&lab, &client, &ip, "hello");
        assert!(
            echo.contains(&hostname(w)) && echo.ends_with("hello"),
            "UDP echo: {echo}"
        );
    }

    // 64 MiB across nodes, checked byte for byte inside the client.
    let size = 64 << 20;
    let w = &web[0];
    let ip = addr_on(w, "front");
    let t0 = Instant::now();
    let got = node_of(&lab, &client)
        .task_exec(
            &client.id,
            &[
                "/whoami",
                "get",
                &format!("http://{ip}/data?size={size}"),
                "--check-data",
            ],
        )
        .unwrap();
    eprintln!(
        "64 MiB from {} in {:?}",
        node_of(&lab, w).name(),
        t0.elapsed()
    );
    assert_eq!(got.trim(), format!("ok {size}"));

    // Networks stay apart: the client (front) reaches nothing on back, not even through the
    // node other runs on; other (back) cannot reach the web task next to it on node1.
    let other_ip = addr_on(&other, "back");
    assert!(!ping(&lab, &client, &other_ip, 56), "front reached back");
    assert!(
        get(&lab, &client, &format!("http://{other_ip}/")).is_err(),
        "front reached back over TCP"
    );
    let web_on_1 = web
        .iter()
        .find(|t| node_of(&lab, t).name() == "node1")
        .unwrap();
    assert!(
        !ping(&lab, &other, &addr_on(web_on_1, "front"), 56),
        "back reached front on the same node"
    );
    // A task on both networks reaches both.
    assert!(ping(&lab, &both, &other_ip, 56), "both → back");
    assert!(
        ping(&lab, &both, &addr_on(web_on_1, "front"), 56),
        "both → front"
    );
    let body = get(&lab, &both, &format!("http://{other_ip}/hostname")).unwrap();
    assert_eq!(body, hostname(&other));

    // Out of the cluster: the registry in the underlay answers the client.
    let reg = get(&lab, &client, &format!("http://{}/v2/", lab.registry()));
    assert!(reg.is_ok(), "egress to the underlay: {reg:?}");

    // A task moved to another node: drain node2; its web task comes back on node1 with a new
    // address; the old address goes quiet, the new one answers, and the client (never
    // restarted) reaches both replicas.
    let moved = web
        .iter()
        .find(|t| node_of(&lab, t).name() == "node2")
        .unwrap();
    let old_ip = addr_on(moved, "front");
    m.swarm_ok(&["node", "update", "--availability", "drain", "node2"]);
    let mut now = Vec::new();
    wait_for(LONG, || {
        now = running(&m.tasks("web").unwrap())
            .into_iter()
            .cloned()
            .collect::<Vec<_>>();
        now.len() == 2 && now.iter().all(|t| node_of(&lab, t).name() == "node1")
    })
    .unwrap_or_else(|e| {
        panic!(
            "web did not move: {e}\n{}",
            m.swarm(&["service", "ps", "web"]).stdout
        )
    });
    let new = now.iter().find(|t| t.id != web_on_1.id).unwrap();
    let new_ip = addr_on(new, "front");
    wait_for(Duration::from_secs(20), || {
        !ping(&lab, &client, &old_ip, 56) || old_ip == new_ip
    })
    .unwrap_or_else(|_| panic!("the moved task's old address {old_ip} still answers"));
    for t in &now {
        let ip = addr_on(t, "front");
        let body = get(&lab, &client, &format!("http://{ip}/hostname")).unwrap();
        assert_eq!(body, hostname(t), "after the move, {ip}");
    }
    let still = wait_running(&lab, "client", 1).remove(0);
    assert_eq!(still.id, client.id, "the client was restarted");
}

/// Counters of the agent's data plane (`/metrics`), by their name and labels.
fn metric(node: &LabNode, name: &str, labels: &str) -> Option<f64> {
    let text = node.metrics().ok()?;
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn forwarding_goes_on_while_agents_restart_and_they_reconcile_on_start() {
    let (_g, mut lab) = lab(1, 2);
    let m = lab.node(1);
    let whoami = format!("{}/whoami:latest", lab.registry());
    m.swarm_ok(&["network", "create", "-d", "overlay", "front"]);
    m.create_service(&[
        "--name",
        "web",
        "--network",
        "front",
        "--constraint",
        "node.hostname==node2",
        &whoami,
    ]);
    m.create_service(&[
        "--name",
        "client",
        "--network",
        "front",
        "--constraint",
        "node.hostname==node3",
        &whoami,
    ]);
    let web = wait_running(&lab, "web", 1).remove(0);
    let client = wait_running(&lab, "client", 1).remove(0);
    let ip = addr_on(&web, "front");
    assert!(ping(&lab, &client, &ip, 56));

    // Kill both agents on the path (node2 runs web, node3 the client): traffic between the
    // two tasks goes on, over the programs and maps the dead agents left pinned.
    lab.node(2).kill_agent().unwrap();
    lab.node(3).kill_agent().unwrap();
    for _ in 0..5 {
        let body = get(&lab, &client, &format!("http://{ip}/hostname"))
            .unwrap_or_else(|e| panic!("no forwarding without the agents: {e:#}"));
        assert_eq!(body, hostname(&web));
        assert!(ping(&lab, &client, &ip, 1450 - 28));
        std::thread::sleep(Duration::from_millis(300));
    }

    // Meanwhile the cluster changes: a new service on front (on node1), and a removed one.
    m.create_service(&[
        "--name",
        "late",
        "--network",
        "front",
        "--constraint",
        "node.hostname==node1",
        &whoami,
    ]);
    let late = wait_running(&lab, "late", 1).remove(0);
    let late_ip = addr_on(&late, "front");

    // The agents come back: they adopt their tasks, and node3's maps learn of `late`.
    lab.node(2).start_agent().unwrap();
    lab.node(3).start_agent().unwrap();
    wait_for(LONG, || {
        get(&lab, &client, &format!("http://{late_ip}/hostname")).is_ok()
    })
    .unwrap_or_else(|e| panic!("node3 never learnt of the new task: {e}\n{}", lab.logs()));
    assert_eq!(
        get(&lab, &client, &format!("http://{ip}/hostname")).unwrap(),
        hostname(&web)
    );
    // Same tasks, not replaced.
    assert_eq!(wait_running(&lab, "web", 1)[0].id, web.id);
    assert_eq!(wait_running(&lab, "client", 1)[0].id, client.id);

    // Every endpoint of front is in node3's map once (client, web, late), nothing stale:
    // remove `late` and the map shrinks back. node3's own ingress address is there too (the
    // routing mesh: every node sees the ingress network), and no other node's: node3 runs no
    // task on the ingress network, so no reply of its goes to another node's ingress address.
    let n3 = lab.node(3);
    let ingress = 1.0;
    wait_for(Duration::from_secs(30), || {
        metric(n3, "swarm_dataplane_endpoints", "") == Some(3.0 + ingress)
    })
    .unwrap_or_else(|_| {
        panic!(
            "endpoints on node3: {:?}",
            metric(n3, "swarm_dataplane_endpoints", "")
        )
    });
    m.swarm_ok(&["service", "rm", "late"]);
    wait_for(Duration::from_secs(30), || {
        metric(n3, "swarm_dataplane_endpoints", "") == Some(2.0 + ingress)
    })
    .unwrap_or_else(|_| {
        panic!(
            "endpoints on node3: {:?}",
            metric(n3, "swarm_dataplane_endpoints", "")
        )
    });
    // Counters per network moved on the client's node.
    let tx = metric(
        n3,
        "swarm_network_packets_total",
        "network=\"front\",path=\"tunnel_tx\"",
    )
    .unwrap_or(0.0);
    assert!(tx > 0.0, "{}", n3.metrics().unwrap_or_default());

    // `lab down` leaves no pinned map or link, no namespace, and none of our programs loaded.
    let name = lab.name().to_string();
    let cleanup = lab.down().unwrap();
    assert!(cleanup.bpf_dirs >= 3, "{cleanup}");
    assert!(tests::lab::sys::lab_bpf_dirs(&name).is_empty());
    assert!(tests::lab::sys::lab_netns(&name).is_empty());
    // The kernel frees a deleted namespace's devices, and with them their links and
    // programs, asynchronously: give it a moment.
    let ours = || -> BTreeMap<String, usize> {
        loaded_program_names()
            .into_iter()
            .filter(|n| n.starts_with("from_") || n.starts_with("sock_") || n.starts_with("skb_"))
            .fold(BTreeMap::new(), |mut m, n| {
                *m.entry(n).or_default() += 1;
                m
            })
    };
    wait_for(Duration::from_secs(30), || ours().is_empty())
        .unwrap_or_else(|_| panic!("programs left loaded: {:?}", ours()));
}

/// Names of every eBPF program loaded in the kernel.
fn loaded_program_names() -> Vec<String> {
    aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .filter_map(|p| p.name_as_str().map(str::to_string))
        .collect()
}
