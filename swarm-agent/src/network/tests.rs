//! The data plane against real packets: two "nodes" (network namespaces joined by a bridge in
//! a third), tasks in namespaces of their own made the way the executor makes them, the real
//! programs loaded into the kernel with their maps pinned on bpffs. Needs root (CI runs it).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use proto::{
    network_state_change::Change, network_state_message, EndpointInfo, NetworkInfo,
    NetworkStateChange, NetworkStateMessage, Task,
};
use swarm_ebpf_common::{stat, LbStats, LbStatsKey};

use super::testbed::{
    complete as complete_with, endpoint_info as ep, network_info as net, task, Cgroup, Topology,
};
use super::view::ViewHandle;
use super::*;

// ---- pure parts

fn complete(nets: Vec<NetworkInfo>, eps: Vec<EndpointInfo>) -> NetworkStateMessage {
    complete_with(nets, eps, vec![])
}

#[test]
fn endpoints_are_local_from_ifaces_and_remote_from_the_view() {
    let mut v = NetworkView::default();
    v.apply(complete(
        vec![net("n1", 4096, "10.0.1.0/24", false)],
        vec![
            ep("a", "n1", "10.0.1.2", "me", "10.99.0.1"),
            ep("b", "n1", "10.0.1.3", "other", "10.99.0.2"),
            // Unknown network, bad address: ignored.
            ep("c", "nope", "10.0.9.3", "other", "10.99.0.2"),
            ep("d", "n1", "bogus", "other", "10.99.0.2"),
        ],
    ));
    let mut ifaces = BTreeMap::new();
    ifaces.insert(
        7,
        Iface {
            vni: 4096,
            addr: be("10.0.1.2".parse().unwrap()),
            flags: 0,
            mac: [2, 0x42, 10, 0, 1, 2],
            host_mac: [1; 6],
            netns_cookie: 0,
        },
    );
    let want = desired_endpoints(&v, "me", "10.99.0.1".parse().unwrap(), &ifaces);
    assert_eq!(want.len(), 2, "{want:?}");
    let local = want[&EndpointKey {
        vni: 4096,
        addr: be("10.0.1.2".parse().unwrap()),
    }];
    assert_eq!((local.node_addr, local.ifindex), (0, 7));
    let remote = want[&EndpointKey {
        vni: 4096,
        addr: be("10.0.1.3".parse().unwrap()),
    }];
    assert_eq!(remote.node_addr, be("10.99.0.2".parse().unwrap()));
    assert_eq!(
        desired_subnets(&v),
        BTreeMap::from([(([10, 0, 1, 0], 24), 4096)])
    );
}

#[test]
fn the_default_route_takes_the_first_external_network() {
    let mut nets = BTreeMap::new();
    nets.insert("i".to_string(), net("i", 4097, "10.0.2.0/24", true));
    nets.insert("e".to_string(), net("e", 4096, "10.0.1.0/24", false));
    let t = task(
        "abcdefghijklmnop",
        &[("i", "10.0.2.5/24"), ("e", "10.0.1.5/24")],
    );
    let specs = attachment_specs(&t, &nets).unwrap();
    assert_eq!(specs.len(), 2);
    assert_eq!(specs[0].0.task_name, "eth0");
    assert_eq!(specs[0].0.gateway, None);
    assert_eq!(specs[1].0.gateway, Some("10.0.1.1".parse().unwrap()));
    assert_eq!(specs[1].0.host_name, "swabcdefghij1");
    assert!(specs[1].0.host_name.len() <= 15);
    assert_eq!(specs[0].0.mtu, DEFAULT_MTU);
    let missing = task("x", &[("zz", "10.0.3.5/24")]);
    assert!(matches!(
        attachment_specs(&missing, &nets),
        Err(NetworkError::UnknownNetwork(_))
    ));
    let bad = task("x", &[("e", "10.0.1.5")]);
    assert!(matches!(
        attachment_specs(&bad, &nets),
        Err(NetworkError::BadAddress { .. })
    ));
}

#[test]
fn lb_ids_are_the_lowest_free_ones_and_stay_with_their_pair() {
    let key = |i: usize| (format!("svc-{i}"), "net".to_string());
    let mut ids = LbIds::default();
    for i in 0..20_000 {
        assert_eq!(ids.get(key(i)), Some(i as u32 + 1));
    }
    assert_eq!(ids.get(key(7)), Some(8), "a pair keeps its id");
    // Pairs that went free their ids; new pairs get the lowest free ones first.
    let live: BTreeSet<(String, String)> = (0..20_000)
        .filter(|i| ![3, 10, 500].contains(i))
        .map(key)
        .collect();
    ids.retain(&live);
    assert_eq!(ids.get(key(100_000)), Some(4));
    assert_eq!(ids.get(key(100_001)), Some(11));
    assert_eq!(ids.get(key(100_002)), Some(501));
    assert_eq!(ids.get(key(100_003)), Some(20_001));
    assert_eq!(ids.get(key(9)), Some(10), "kept pairs kept their ids");
    // Ids taken over from the maps are never given to another pair.
    let mut v = NetworkView::default();
    v.apply(complete_with(
        vec![net("net", 4096, "10.0.0.0/16", false)],
        vec![],
        vec![super::testbed::vip_service(
            "old",
            "old",
            "net",
            "10.0.9.9/16",
        )],
    ));
    let mut adopted = LbIds::default();
    let services = BTreeMap::from([(
        be("10.0.9.9".parse().unwrap()),
        (
            Service {
                id: 2,
                vni: 4096,
                count: 0,
                ..Service::default()
            },
            vec![],
        ),
    )]);
    adopted.adopt(&v, &services);
    assert_eq!(adopted.get(("old".into(), "net".into())), Some(2));
    assert_eq!(adopted.get(key(0)), Some(1));
    assert_eq!(adopted.get(key(1)), Some(3));
}

// ---- the real thing

fn sh(args: &[&str]) -> String {
    super::testbed::run(args).unwrap_or_else(|e| panic!("{e}"))
}

fn new_topology() -> Topology {
    Topology::new("swt").unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `f` on a thread inside the namespace at `ns`, with a runtime of its own there.
fn in_ns<T: Send + 'static, F, Fut>(ns: &Path, f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    super::testbed::in_ns(ns, f).unwrap_or_else(|e| panic!("{e}"))
}

/// A TCP echo server in `ns` on `addr`; returns once it listens. Serves `n` connections.
fn echo_server(ns: &Path, addr: SocketAddr, n: usize) -> std::thread::JoinHandle<Vec<SocketAddr>> {
    let ns = std::fs::File::open(ns).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        // SAFETY: setns on this thread only.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let l = TcpListener::bind(addr).unwrap();
        tx.send(()).unwrap();
        let mut peers = Vec::new();
        for _ in 0..n {
            let (mut s, peer) = l.accept().unwrap();
            peers.push(peer);
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => {
                        if s.write_all(&buf[..k]).is_err() {
                            break;
                        }
                    }
                }
            }
        }
        peers
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    h
}

/// Connects from `ns` to `to`, sends `len` bytes and reads them back; the result says what
/// went wrong.
fn echo_through(ns: &Path, to: SocketAddr, len: usize) -> Result<(), String> {
    let ns = std::fs::File::open(ns).unwrap();
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let writer = {
            let mut w = s.try_clone().unwrap();
            let data = data.clone();
            std::thread::spawn(move || {
                let _ = w.write_all(&data);
                let _ = w.shutdown(std::net::Shutdown::Write);
            })
        };
        let mut back = Vec::with_capacity(len);
        s.read_to_end(&mut back).map_err(|e| format!("read: {e}"))?;
        writer.join().unwrap();
        if back != data {
            return Err(format!(
                "got {} bytes back of {len}, or different ones",
                back.len()
            ));
        }
        Ok(())
    })
    .join()
    .unwrap()
}

fn ping(ns: &Path, to: &str, size: usize) -> bool {
    std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args([
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            &size.to_string(),
            to,
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A namespace for each task (made the way the executor makes them), by task id.
fn task_namespaces<'a>(
    netns_dir: &Path,
    tasks: impl IntoIterator<Item = &'a Task>,
) -> BTreeMap<String, PathBuf> {
    tasks
        .into_iter()
        .map(|t| {
            (
                t.id.clone(),
                crate::netns::create(netns_dir, &t.id).unwrap(),
            )
        })
        .collect()
}

/// The tasks with their namespaces, as `start_node` attaches them.
fn with_namespaces(ns: &BTreeMap<String, PathBuf>, tasks: &[Task]) -> Vec<(Task, PathBuf)> {
    tasks
        .iter()
        .map(|t| (t.clone(), ns[&t.id].clone()))
        .collect()
}

/// A node's data plane as the agent runs it: loaded and started inside the node namespace
/// `node_ns` (id `id`, data-path address `addr`), with `tasks` attached in their namespaces.
fn start_node(
    node_ns: &Path,
    id: &'static str,
    addr: Ipv4Addr,
    bpf_dir: PathBuf,
    cgroup_dir: Option<PathBuf>,
    view: ViewHandle,
    tasks: Vec<(Task, PathBuf)>,
) -> Arc<Networking> {
    let tc_attach = super::testbed::tc_attach().expect("tc attach");
    let n = in_ns(node_ns, move || async move {
        let n = Networking::new(
            NetworkingConfig {
                bpf_dir,
                cgroup_dir,
                resolv_conf: "/etc/resolv.conf".into(),
                tc_attach,
                lb: ServiceLb::Ebpf,
                ingress_sbox_dir: None,
            },
            view,
        );
        n.start(id, addr, DEFAULT_VXLAN_PORT)
            .await
            .unwrap_or_else(|e| panic!("start {id}: {e}"));
        for (t, ns) in &tasks {
            n.attach(t, ns).await.expect("attach");
        }
        n
    });
    // The programs are attached the way the probe (or SWARM_TEST_TC_ATTACH) said: as a
    // clsact filter, which `tc` lists, or as a TCX link, which it does not.
    let filters = vxlan_filters(node_ns);
    match tc_attach {
        probe::TcAttach::Legacy => assert_eq!(filters.len(), 1, "legacy tc: {filters:?}"),
        probe::TcAttach::Tcx => assert!(filters.is_empty(), "TCX: {filters:?}"),
    }
    n
}

/// The cls_bpf filters on the tc ingress of the node's VXLAN device, as (priority, handle,
/// program id).
fn vxlan_filters(node_ns: &Path) -> Vec<(String, String, String)> {
    let out = sh(&[
        "nsenter",
        &format!("--net={}", node_ns.display()),
        "tc",
        "filter",
        "show",
        "dev",
        plumbing::VXLAN_DEVICE,
        "ingress",
    ]);
    // "filter protocol all pref 1 bpf chain 0 handle 0x1 from_overlay direct-action not_in_hw id 42 tag …"
    out.lines()
        .filter(|l| l.contains(" handle "))
        .map(|l| {
            let after = |key: &str| {
                l.split_whitespace()
                    .skip_while(|w| *w != key)
                    .nth(1)
                    .unwrap_or_default()
                    .to_string()
            };
            (after("pref"), after("handle"), after("id"))
        })
        .collect()
}

/// A restarted agent (the programs loaded again, the node started again) takes over what the
/// one before attached: a ping every 5 ms across the nodes, through the restart of the
/// receiving node's data plane, loses nothing. With legacy tc the node's filter is the same
/// one (priority, handle) running the new program.
#[test]
fn a_restarted_agent_replaces_its_tc_programs_without_a_gap() {
    let mut topo = new_topology();
    let a_dir = topo.bpf_dir("a");
    let b_dir = topo.bpf_dir("b");
    let (a_ip, b_ip) = (topo.underlay_ip(1), topo.underlay_ip(2));
    let netns_dir = topo.netns_dir();
    let red = net("red", 4096, "10.0.1.0/24", false);
    let eps = vec![
        ep("a1", "red", "10.0.1.2", "A", &a_ip.to_string()),
        ep("b1", "red", "10.0.1.4", "B", &b_ip.to_string()),
    ];
    let view = ViewHandle::default();
    view.apply(complete(vec![red], eps));
    let tasks_a = vec![task("a1", &[("red", "10.0.1.2/24")])];
    let tasks_b = vec![task("b1", &[("red", "10.0.1.4/24")])];
    let task_ns = task_namespaces(&netns_dir, tasks_a.iter().chain(&tasks_b));
    let (n1, n2) = (topo.ns_path("n1"), topo.ns_path("n2"));
    let a = start_node(
        &n1,
        "A",
        a_ip,
        a_dir,
        None,
        view.clone(),
        with_namespaces(&task_ns, &tasks_a),
    );
    let b = start_node(
        &n2,
        "B",
        b_ip,
        b_dir.clone(),
        None,
        view.clone(),
        with_namespaces(&task_ns, &tasks_b),
    );
    assert!(ping(&task_ns["a1"], "10.0.1.4", 56), "before the restart");
    let before = vxlan_filters(&n2);

    let count = 600;
    let pinger = std::process::Command::new("nsenter")
        .arg(format!("--net={}", task_ns["a1"].display()))
        .args([
            "ping",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.005",
            "-W",
            "2",
        ])
        .arg("10.0.1.4")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ping");
    std::thread::sleep(Duration::from_millis(500));
    // B's agent goes away (its attachments stay) and a new one starts on the same pins.
    drop(b);
    let b = start_node(&n2, "B", b_ip, b_dir, None, view.clone(), vec![]);
    let out = output_of(pinger);
    assert!(
        out.contains(&format!("{count} packets transmitted, {count} received")),
        "packets were lost across the restart: {out}"
    );
    let after = vxlan_filters(&n2);
    if super::testbed::tc_attach().expect("tc attach") == probe::TcAttach::Legacy {
        assert_eq!(before.len(), 1, "{before:?}");
        assert_eq!(after.len(), 1, "one filter after the restart: {after:?}");
        assert_eq!(
            (&before[0].0, &before[0].1),
            (&after[0].0, &after[0].1),
            "the same priority and handle"
        );
        assert_ne!(
            before[0].2, after[0].2,
            "the new program runs in the filter"
        );
    }
    assert!(ping(&task_ns["a1"], "10.0.1.4", 56), "after the restart");
    drop((a, b));
}

#[test]
fn overlay_delivers_locally_and_across_nodes_isolates_networks_and_masquerades() {
    let mut topo = new_topology();
    let a_dir = topo.bpf_dir("a");
    let b_dir = topo.bpf_dir("b");
    let (a_ip, b_ip) = (topo.underlay_ip(1), topo.underlay_ip(2));
    let world = topo.underlay_ip(254);
    let netns_dir = topo.netns_dir();

    let red = net("red", 4096, "10.0.1.0/24", false);
    let blue = net("blue", 4097, "10.0.2.0/24", true);
    let eps = vec![
        ep("a1", "red", "10.0.1.2", "A", &a_ip.to_string()),
        ep("a2", "red", "10.0.1.3", "A", &a_ip.to_string()),
        ep("b1", "red", "10.0.1.4", "B", &b_ip.to_string()),
        ep("b1", "blue", "10.0.2.4", "B", &b_ip.to_string()),
        ep("a3", "blue", "10.0.2.3", "A", &a_ip.to_string()),
    ];
    let msg = complete(vec![red.clone(), blue.clone()], eps);
    let a_view = ViewHandle::default();
    a_view.apply(msg.clone());
    let b_view = ViewHandle::default();
    b_view.apply(msg);

    let tasks_a = vec![
        task("a1", &[("red", "10.0.1.2/24")]),
        task("a2", &[("red", "10.0.1.3/24")]),
        task("a3", &[("blue", "10.0.2.3/24")]),
    ];
    let tasks_b = vec![task(
        "b1",
        &[("red", "10.0.1.4/24"), ("blue", "10.0.2.4/24")],
    )];
    let task_ns = task_namespaces(&netns_dir, tasks_a.iter().chain(&tasks_b));
    let with_ns = |tasks: &[Task]| with_namespaces(&task_ns, tasks);
    let a = start_node(
        &topo.ns_path("n1"),
        "A",
        a_ip,
        a_dir.clone(),
        None,
        a_view.clone(),
        with_ns(&tasks_a),
    );
    let b = start_node(
        &topo.ns_path("n2"),
        "B",
        b_ip,
        b_dir.clone(),
        None,
        b_view.clone(),
        with_ns(&tasks_b),
    );

    // Same node, same network: TCP and ICMP.
    let srv = echo_server(&task_ns["a2"], "10.0.1.3:7000".parse().unwrap(), 1);
    echo_through(&task_ns["a1"], "10.0.1.3:7000".parse().unwrap(), 100_000).expect("local TCP");
    srv.join().unwrap();
    assert!(ping(&task_ns["a1"], "10.0.1.3", 56), "local ping");

    // Across nodes: a 16 MiB transfer, and full-size packets (1450 bytes, DF set) both ways.
    let srv = echo_server(&task_ns["b1"], "10.0.1.4:7001".parse().unwrap(), 1);
    echo_through(&task_ns["a1"], "10.0.1.4:7001".parse().unwrap(), 16 << 20).expect("remote TCP");
    let peers = srv.join().unwrap();
    assert_eq!(
        peers[0].ip().to_string(),
        "10.0.1.2",
        "the peer sees the task's own address"
    );
    assert!(
        ping(&task_ns["a1"], "10.0.1.4", 1450 - 28),
        "full-size ping across nodes"
    );
    assert!(
        !ping(&task_ns["a1"], "10.0.1.4", 1451 - 28),
        "oversized DF ping must not pass"
    );

    // Networks are apart: a1 (red only) cannot reach blue's tasks, local or remote; b1 is on
    // both and reaches a3 on blue.
    assert!(
        !ping(&task_ns["a1"], "10.0.2.3", 56),
        "red reached blue (local)"
    );
    assert!(
        !ping(&task_ns["a1"], "10.0.2.4", 56),
        "red reached blue (remote)"
    );
    assert!(
        ping(&task_ns["b1"], "10.0.2.3", 56),
        "a task on both networks reaches blue"
    );
    assert!(ping(&task_ns["b1"], "10.0.1.2", 56), "and red");

    // Leaving the cluster: red is not internal, the world sees node A's address.
    let ul = topo.ns_path("ul");
    let srv = echo_server(&ul, SocketAddr::new(world.into(), 7002), 1);
    echo_through(&task_ns["a1"], SocketAddr::new(world.into(), 7002), 1000).expect("egress TCP");
    let peers = srv.join().unwrap();
    assert_eq!(
        peers[0].ip(),
        std::net::IpAddr::V4(a_ip),
        "masqueraded to the node's address"
    );
    assert!(ping(&task_ns["a1"], &world.to_string(), 56), "egress ping");
    // blue is internal: a3 has no default route, and one it adds itself does not help.
    assert!(
        !ping(&task_ns["a3"], &world.to_string(), 56),
        "an internal network reached the world"
    );
    sh(&[
        "nsenter",
        &format!("--net={}", task_ns["a3"].display()),
        "ip",
        "route",
        "add",
        "default",
        "dev",
        "eth0",
    ]);
    assert!(
        !ping(&task_ns["a3"], &world.to_string(), 56),
        "an internal network reached the world"
    );

    // A task that goes away stops answering at once, and its peers notice nothing else.
    in_ns(&topo.ns_path("n1"), {
        let a = a.clone();
        move || async move { a.detach("a2").await }
    });
    assert!(
        !ping(&task_ns["a1"], "10.0.1.3", 56),
        "a detached task still answers"
    );
    assert!(ping(&task_ns["a1"], "10.0.1.4", 56));

    // Counters moved.
    let stats = a.dataplane().unwrap().stats();
    let red_a = stats[&4096];
    assert!(red_a[stat::LOCAL_PACKETS] > 0, "{red_a:?}");
    assert!(red_a[stat::TX_TUNNEL_PACKETS] > 0, "{red_a:?}");
    assert!(red_a[stat::EGRESS_PACKETS] > 0, "{red_a:?}");
    assert!(red_a[stat::DROP_NO_ENDPOINT] > 0, "{red_a:?}");
    let blue_a = stats[&4097];
    assert!(blue_a[stat::DROP_INTERNAL] > 0, "{blue_a:?}");
    let red_b = b.dataplane().unwrap().stats()[&4096];
    assert!(red_b[stat::RX_TUNNEL_PACKETS] > 0, "{red_b:?}");
    drop((a, b));
}

#[test]
fn a_spoofed_source_is_dropped() {
    let mut topo = new_topology();
    let dir = topo.bpf_dir("a");
    let a_ip = topo.underlay_ip(1);
    let red = net("red", 4096, "10.0.1.0/24", false);
    let view = ViewHandle::default();
    view.apply(complete(
        vec![red],
        vec![
            ep("s1", "red", "10.0.1.2", "A", &a_ip.to_string()),
            ep("s2", "red", "10.0.1.3", "A", &a_ip.to_string()),
        ],
    ));
    let netns_dir = topo.netns_dir();
    let t1 = task("s1", &[("red", "10.0.1.2/24")]);
    let t2 = task("s2", &[("red", "10.0.1.3/24")]);
    let ns1 = crate::netns::create(&netns_dir, "s1").unwrap();
    let ns2 = crate::netns::create(&netns_dir, "s2").unwrap();
    let n = start_node(
        &topo.ns_path("n1"),
        "A",
        a_ip,
        dir,
        None,
        view,
        vec![(t1, ns1.clone()), (t2, ns2.clone())],
    );
    assert!(ping(&ns1, "10.0.1.3", 56));
    // A second address on s1's interface that is not the task's: its packets are dropped.
    sh(&[
        "nsenter",
        &format!("--net={}", ns1.display()),
        "ip",
        "addr",
        "add",
        "10.0.1.99/24",
        "dev",
        "eth0",
    ]);
    let ok = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns1.display()))
        .args(["ping", "-c", "1", "-W", "1", "-I", "10.0.1.99", "10.0.1.3"])
        .output()
        .unwrap()
        .status
        .success();
    assert!(!ok, "a spoofed source got through");
    let s = n.dataplane().unwrap().stats()[&4096];
    assert!(s[stat::DROP_SPOOFED] > 0, "{s:?}");
}

/// Starts `python3 -c script` inside the network namespace `ns` and the cgroup `cg`, the way
/// a task's process runs: its sockets meet the socket hooks.
fn task_process(ns: &Path, cg: &Path, script: &str) -> std::process::Child {
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-u", "-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    super::testbed::spawn_in(&mut cmd, ns, Some(cg)).unwrap_or_else(|e| panic!("{e}"))
}

fn output_of(child: std::process::Child) -> String {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "task process failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A server in `ns` answering every TCP connection on `port` with `name` (then closing) and
/// every UDP datagram on `port` with `name:<datagram>`; runs until the namespace goes.
fn name_server(ns: &Path, port: u16, name: &'static str) {
    let ns = std::fs::File::open(ns).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let tcp = TcpListener::bind(("0.0.0.0", port)).unwrap();
        let udp = std::net::UdpSocket::bind(("0.0.0.0", port)).unwrap();
        tx.send(()).unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                let mut reply = format!("{name}:").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = udp.send_to(&reply, from);
            }
        });
        for s in tcp.incoming() {
            match s {
                Ok(mut s) => {
                    let _ = s.write_all(name.as_bytes());
                }
                Err(_) => return,
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

/// A TCP server in `ns` that accepts connections on `port` and keeps them open.
fn hold_server(ns: &Path, port: u16) {
    let ns = std::fs::File::open(ns).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let tcp = TcpListener::bind(("0.0.0.0", port)).unwrap();
        tx.send(()).unwrap();
        let mut open = Vec::new();
        for s in tcp.incoming().flatten() {
            open.push(s);
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

/// The service total (backend 0) of service `id` in `stats`.
fn service_total(stats: &BTreeMap<LbStatsKey, LbStats>, id: u32) -> LbStats {
    stats
        .get(&LbStatsKey { id, backend: 0 })
        .copied()
        .unwrap_or_default()
}

#[test]
fn vips_balance_tcp_round_robin_follow_udp_to_live_backends_scope_and_intercept_dns() {
    let mut topo = new_topology();
    let a_dir = topo.bpf_dir("a");
    let b_dir = topo.bpf_dir("b");
    let (a_ip, b_ip) = (topo.underlay_ip(1), topo.underlay_ip(2));
    let cg = Cgroup::new(&format!("{}-a", topo.prefix())).unwrap();
    let client_cg = cg.child("c").unwrap();
    let netns_dir = topo.netns_dir();

    let red = net("red", 4096, "10.0.1.0/24", false);
    let blue = net("blue", 4097, "10.0.2.0/24", false);
    let backend = |t: &str, a: &str, node: &str, addr: &Ipv4Addr| EndpointInfo {
        service_id: "svc-web".into(),
        service_name: "web".into(),
        ..ep(t, "red", a, node, &addr.to_string())
    };
    let eps = vec![
        ep("c", "red", "10.0.1.10", "A", &a_ip.to_string()),
        backend("w1", "10.0.1.11", "A", &a_ip),
        backend("w2", "10.0.1.12", "B", &b_ip),
        ep("x", "blue", "10.0.2.10", "A", &a_ip.to_string()),
    ];
    // `many`: more backends than a service's value holds inline (the rest are read from
    // BACKENDS). They are w1 and w2 nine times each (tasks of their own with the same
    // addresses), so every slot answers; slots m00–m08 are w1 and m09–m17 w2.
    let many_backends = 2 * 9;
    assert!(many_backends > swarm_ebpf_common::INLINE_BACKENDS);
    let mut eps = eps;
    for i in 0..many_backends {
        let (addr, node, node_ip) = if i < 9 {
            ("10.0.1.11", "A", &a_ip)
        } else {
            ("10.0.1.12", "B", &b_ip)
        };
        eps.push(EndpointInfo {
            service_id: "svc-many".into(),
            service_name: "many".into(),
            ..ep(&format!("m{i:02}"), "red", addr, node, &node_ip.to_string())
        });
    }
    let many = super::testbed::vip_service("svc-many", "many", "red", "10.0.1.101/24");
    let web = super::testbed::vip_service("svc-web", "web", "red", "10.0.1.100/24");
    let mut msg = complete(vec![red, blue], eps.clone());
    for svc in [web, many] {
        msg.changes.push(NetworkStateChange {
            change: Some(Change::Service(svc)),
        });
    }
    let a_view = ViewHandle::default();
    a_view.apply(msg.clone());
    let b_view = ViewHandle::default();
    b_view.apply(msg);

    let tasks_a = vec![
        task("c", &[("red", "10.0.1.10/24")]),
        task("w1", &[("red", "10.0.1.11/24")]),
        task("x", &[("blue", "10.0.2.10/24")]),
    ];
    let tasks_b = vec![task("w2", &[("red", "10.0.1.12/24")])];
    let task_ns = task_namespaces(&netns_dir, tasks_a.iter().chain(&tasks_b));
    let with_ns = |tasks: &[Task]| with_namespaces(&task_ns, tasks);
    let a = start_node(
        &topo.ns_path("n1"),
        "A",
        a_ip,
        a_dir,
        Some(cg.path().to_path_buf()),
        a_view.clone(),
        with_ns(&tasks_a),
    );
    let b = start_node(
        &topo.ns_path("n2"),
        "B",
        b_ip,
        b_dir,
        None,
        b_view.clone(),
        with_ns(&tasks_b),
    );
    name_server(&task_ns["w1"], 7100, "w1");
    name_server(&task_ns["w2"], 7100, "w2");
    hold_server(&task_ns["w1"], 7300);
    hold_server(&task_ns["w2"], 7300);
    // One ping-pong connection below, to whichever backend the round robin gives.
    for w in ["w1", "w2"] {
        drop(echo_server(&task_ns[w], "0.0.0.0:7200".parse().unwrap(), 1));
    }

    // TCP through the VIP: connect4 picks the backends in turn; the socket's peer reads as
    // the VIP. (The node starts each service's round robin at a random backend.)
    let tcp_to = |vip: &str, n: usize| {
        format!(
            r#"
import socket
out = []
for i in range({n}):
    s = socket.create_connection(("{vip}", 7100), timeout=3)
    peer = s.getpeername()[0]
    data = b""
    while True:
        d = s.recv(100)
        if not d:
            break
        data += d
    out.append(data.decode() + "@" + peer)
    s.close()
print(" ".join(out))
"#
        )
    };
    let got = output_of(task_process(
        &task_ns["c"],
        &client_cg,
        &tcp_to("10.0.1.100", 10),
    ));
    let answers: Vec<&str> = got.split(' ').collect();
    assert_eq!(answers.len(), 10, "{got}");
    assert_eq!(
        answers.iter().filter(|a| a.starts_with("w1@")).count(),
        5,
        "{got}"
    );
    assert_eq!(
        answers.iter().filter(|a| a.starts_with("w2@")).count(),
        5,
        "{got}"
    );
    assert!(answers.iter().all(|a| a.ends_with("@10.0.1.100")), "{got}");
    // Past the inline backends: one round visits every slot once, those in BACKENDS too (a
    // slot that could not be read would refuse its connect).
    let got = output_of(task_process(
        &task_ns["c"],
        &client_cg,
        &tcp_to("10.0.1.101", many_backends),
    ));
    let answers: Vec<&str> = got.split(' ').collect();
    assert_eq!(answers.len(), many_backends, "{got}");
    for (w, n) in [("w1@", 9), ("w2@", 9)] {
        assert_eq!(
            answers.iter().filter(|a| a.starts_with(w)).count(),
            n,
            "{got}"
        );
    }
    assert!(answers.iter().all(|a| a.ends_with("@10.0.1.101")), "{got}");

    // A load-balanced socket's packets wait in the socket and reach the counters in batches:
    // checked against the kernel's own count of the socket's segments (TCP_INFO's segs_out
    // and segs_in; one packet per segment here: 100-byte writes with TCP_NODELAY, one at a
    // time). While the connection is open, at most a batch per direction waits; once it
    // closed, every packet is counted, the close's too.
    let many_id = a.dataplane().unwrap().services()[&be("10.0.1.101".parse().unwrap())]
        .0
        .id;
    let before_all = a.dataplane().unwrap().lb_stats();
    let before = service_total(&before_all, many_id);
    let ping_pong = r#"
import socket, struct, sys
s = socket.create_connection(("10.0.1.101", 7200), timeout=3)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for i in range(100):
    s.sendall(b"x" * 100)
    got = b""
    while len(got) < 100:
        got += s.recv(100 - len(got))
info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
segs_out, segs_in = struct.unpack_from("II", info, 136)
print(segs_out + segs_in)
sys.stdin.readline()
s.close()
"#;
    let mut pinger = task_process(&task_ns["c"], &client_cg, ping_pong);
    let mut ping_out = std::io::BufReader::new(pinger.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut ping_out, &mut line).unwrap();
    let segs: u64 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("TCP_INFO: {line:?}"));
    let open = service_total(&a.dataplane().unwrap().lb_stats(), many_id);
    writeln!(pinger.stdin.take().unwrap()).unwrap();
    let status = pinger.wait().unwrap();
    assert!(status.success(), "the ping-pong client failed");
    // The close's packets (FIN out, the peer's ACK and FIN, the last ACK) are sent and
    // counted by the time the client's close returns, give or take the peer's reply.
    std::thread::sleep(Duration::from_millis(300));
    let closed_all = a.dataplane().unwrap().lb_stats();
    let closed = service_total(&closed_all, many_id);
    // Which of `many`'s backends the ping-pong went to: 1 for w1 (checked below), or 0.
    let on_w1 = |m: &BTreeMap<LbStatsKey, LbStats>| {
        m.get(&LbStatsKey {
            id: many_id,
            backend: be("10.0.1.11".parse().unwrap()),
        })
        .map_or(0, |s| s.connections)
    };
    let ping_on_w1 = on_w1(&closed_all) - on_w1(&before_all);
    let batch = 2 * (swarm_ebpf_common::SOCK_FLUSH_PACKETS - 1);
    let counted_open = open.packets - before.packets;
    let counted = closed.packets - before.packets;
    assert!(
        segs >= 200,
        "the kernel counted {segs} segments for 200 writes"
    );
    // A delayed ACK of the last echo may leave after TCP_INFO was read: one more.
    assert!(
        counted_open <= segs + 1 && counted_open + batch >= segs,
        "open: counted {counted_open} packets, the socket had {segs} segments"
    );
    assert!(
        (segs + 2..=segs + 6).contains(&counted),
        "closed: counted {counted} packets, the socket had {segs} segments before its close"
    );
    assert_eq!(closed.connections - before.connections, 1, "{closed:?}");
    // Every packet is at least an IP and a TCP header with timestamps (52 bytes), and 200
    // carried 100 bytes of payload.
    let bytes = closed.bytes - before.bytes;
    assert!(bytes >= counted * 52 + 200 * 100, "{bytes} bytes");

    // A task on another network: no translation, and its packets to the VIP are dropped.
    let denied = r#"
import socket
try:
    socket.create_connection(("10.0.1.100", 7100), timeout=2)
    print("connected")
except OSError as e:
    print("refused", e)
"#;
    let got = output_of(task_process(&task_ns["x"], &client_cg, denied));
    assert!(got.starts_with("refused"), "{got}");

    // Long-lived TCP connections to both backends, to see what happens to them when one goes.
    let hold = r#"
import socket, sys
a = socket.create_connection(("10.0.1.11", 7300), timeout=3)
b = socket.create_connection(("10.0.1.12", 7300), timeout=3)
print("connected")
sys.stdin.readline()
res = []
for s in (a, b):
    s.settimeout(2)
    try:
        d = s.recv(10)
        res.append("eof" if d == b"" else "data")
    except socket.timeout:
        res.append("open")
    except OSError as e:
        res.append("reset:" + str(e.errno))
print(" ".join(res))
"#;
    // Waited for below (a failing assertion before that kills the whole test process).
    let mut holder = task_process(&task_ns["c"], &client_cg, hold);
    let mut hold_out = std::io::BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut hold_out, &mut line).unwrap();
    assert_eq!(line.trim(), "connected");

    // Connected UDP to the VIP follows a live backend when its backend goes away.
    let udp = r#"
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(1)
u.connect(("10.0.1.100", 7100))
u.send(b"one")
print(u.recv(100).decode())
sys.stdin.readline()
for i in range(10):
    u.send(b"two")
    try:
        print(u.recv(100).decode())
        break
    except socket.timeout:
        pass
"#;
    let mut child = task_process(&task_ns["c"], &client_cg, udp);
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    let first = first.trim().to_string();
    assert!(first == "w1:one" || first == "w2:one", "{first}");
    let (gone, other) = if first.starts_with("w1") {
        ("w1", "w2")
    } else {
        ("w2", "w1")
    };
    // The managers say the backend's task ended: it leaves the view everywhere, and its
    // node takes its interface away. (`many`'s tasks, which share its address, go too.)
    let many_tasks = (0..many_backends).map(|i| format!("m{i:02}"));
    let remove = NetworkStateMessage {
        r#type: network_state_message::Type::Incremental as i32,
        changes: std::iter::once(gone.to_string())
            .chain(many_tasks)
            .map(|task_id| NetworkStateChange {
                change: Some(Change::EndpointRemoved(proto::EndpointKey {
                    task_id,
                    network_id: "red".into(),
                })),
            })
            .collect(),
        ..Default::default()
    };
    a_view.apply(remove.clone());
    b_view.apply(remove);
    let (owner, owner_ns) = if gone == "w1" {
        (a.clone(), "n1")
    } else {
        (b.clone(), "n2")
    };
    in_ns(&topo.ns_path(owner_ns), move || async move {
        owner.detach(gone).await
    });
    // The other node learns of it through its view; the client's node resets what its tasks
    // still had open to the gone task.
    let other_node = if gone == "w1" { b.clone() } else { a.clone() };
    let from_other = other_node.reconcile();
    // The client's node is A: when the gone task was B's, A's own reconcile above found it.
    let gone_keys = if gone == "w1" {
        a.reconcile()
    } else {
        from_other
    };
    in_ns(&topo.ns_path("n1"), {
        let a = a.clone();
        move || async move { a.reset_flows(gone_keys).await }
    });
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let mut second = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut second).unwrap();
    assert_eq!(
        second.trim(),
        format!("{other}:two"),
        "the UDP socket was not re-pointed"
    );
    child.wait().unwrap();

    // Of the long-lived connections, the one to the gone backend was reset, the other one is
    // still open.
    holder.stdin.take().unwrap().write_all(b"\n").unwrap();
    let mut held = String::new();
    std::io::BufRead::read_line(&mut hold_out, &mut held).unwrap();
    holder.wait().unwrap();
    let (to_w1, to_w2) = held.trim().split_once(' ').unwrap_or_default();
    let (to_gone, to_other) = if gone == "w1" {
        (to_w1, to_w2)
    } else {
        (to_w2, to_w1)
    };
    assert!(to_gone.starts_with("reset:"), "{held}");
    assert_eq!(to_other, "open", "{held}");

    // DNS interception: 127.0.0.11:53 reaches the resolver port of this task (a fake resolver
    // here) over UDP and TCP, and the answers come from port 53.
    let cookie = a
        .dataplane()
        .unwrap()
        .ifaces()
        .values()
        .find(|i| i.addr == be("10.0.1.10".parse().unwrap()))
        .map(|i| i.netns_cookie)
        .unwrap();
    assert_ne!(cookie, 0);
    let resolver = {
        let ns = std::fs::File::open(&task_ns["c"]).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            // SAFETY: setns on this thread only.
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            let u = std::net::UdpSocket::bind("127.0.0.11:0").unwrap();
            let t = TcpListener::bind("127.0.0.11:0").unwrap();
            tx.send((
                u.local_addr().unwrap().port(),
                t.local_addr().unwrap().port(),
            ))
            .unwrap();
            let mut buf = [0u8; 512];
            let (n, from) = u.recv_from(&mut buf).unwrap();
            u.send_to(&[b"answer:", &buf[..n]].concat(), from).unwrap();
            let (mut s, _) = t.accept().unwrap();
            s.write_all(b"tcp-answer").unwrap();
        });
        let ports = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        (h, ports)
    };
    let (resolver, (udp_port, tcp_port)) = resolver;
    a.dataplane()
        .unwrap()
        .set_dns_ports(
            cookie,
            swarm_ebpf_common::DnsPorts {
                udp: udp_port.to_be(),
                tcp: tcp_port.to_be(),
            },
        )
        .unwrap();
    let dns = r#"
import socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(3)
u.sendto(b"q", ("127.0.0.11", 53))
data, src = u.recvfrom(100)
t = socket.create_connection(("127.0.0.11", 53), timeout=3)
print(data.decode(), src[0], src[1], t.getpeername()[1], t.recv(100).decode())
# A process of the task may still bind port 53 itself.
own = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
own.bind(("0.0.0.0", 53))
print("bound")
"#;
    let got = output_of(task_process(&task_ns["c"], &client_cg, dns));
    assert_eq!(got, "answer:q 127.0.0.11 53 53 tcp-answer\nbound", "{got}");
    resolver.join().unwrap();

    // Counters: the service and each backend saw connections, packets and bytes.
    let stats = a.dataplane().unwrap().lb_stats();
    let total: u64 = stats
        .iter()
        .filter(|(k, _)| k.backend == 0)
        .map(|(_, s)| s.connections)
        .sum();
    assert!(total >= 11, "{stats:?}");
    let w1 = be("10.0.1.11".parse().unwrap());
    assert!(
        stats
            .iter()
            .any(|(k, s)| k.backend == w1 && s.connections >= 5 && s.bytes > 0),
        "{stats:?}"
    );
    // `many` had TCP only: its packets were counted by the cgroup_skb programs, through
    // the sockets' own SOCK_LB entries.
    let many_w1 = stats
        .iter()
        .find(|(k, _)| k.id == many_id && k.backend == w1)
        .map(|(_, s)| *s)
        .unwrap_or_default();
    assert_eq!(many_w1.connections, 9 + ping_on_w1, "{stats:?}");
    assert!(many_w1.packets >= 9 * 3 && many_w1.bytes > 0, "{stats:?}");
    drop(cg);
}

// ---- the routing mesh

#[test]
fn published_ports_are_desired_from_the_view() {
    use super::testbed::{ingress_network, node_ingress_endpoint, published_service};
    let mut v = NetworkView::default();
    let mut keep = published_service("keep", "keep", "ing", "10.255.0.5/16", &[(80, 30081)]);
    keep.ports[0].preserve_source_ip = true;
    let mut host = published_service("h", "hostly", "ing", "10.255.0.6/16", &[(80, 8000)]);
    host.ports[0].publish_mode = proto::PublishMode::Host as i32;
    host.virtual_ips.clear();
    let mut udp = published_service("u", "udp", "ing", "10.255.0.7/16", &[(53, 5353)]);
    udp.ports[0].protocol = proto::PortProtocol::Udp as i32;
    v.apply(complete_with(
        vec![ingress_network("ing", 4300, "10.255.0.0/16")],
        vec![
            node_ingress_endpoint("me", "ing", "10.255.0.2", "10.99.0.1"),
            node_ingress_endpoint("other", "ing", "10.255.0.3", "10.99.0.2"),
            EndpointInfo {
                service_id: "h".into(),
                ..ep("t1", "ing", "10.255.0.20", "me", "10.99.0.1")
            },
            EndpointInfo {
                service_id: "h".into(),
                ..ep("t2", "ing", "10.255.0.21", "other", "10.99.0.2")
            },
        ],
        vec![
            published_service("web", "web", "ing", "10.255.0.4/16", &[(80, 30080)]),
            keep,
            host,
            udp,
        ],
    ));
    assert_eq!(ingress_addr(&v, "me"), Some("10.255.0.2".parse().unwrap()));
    let want = desired_published(&v, "me");
    let get = |port: u16, proto: u8| want.get(&published_key(port, proto)).map(|(p, _)| *p);
    let web = get(30080, 6).expect("web's port");
    assert_eq!(
        (
            web.vip,
            web.backend,
            u16::from_be(web.target_port),
            web.flags
        ),
        (be("10.255.0.4".parse().unwrap()), 0, 80, 0)
    );
    assert_eq!(get(30081, 6).unwrap().flags, PUBLISHED_PRESERVE);
    assert!(get(30081, 17).is_none(), "TCP only");
    assert_eq!(
        get(5353, 17).unwrap().vip,
        be("10.255.0.7".parse().unwrap())
    );
    // Host mode: the local task only.
    let h = get(8000, 6).expect("host-mode port of the local task");
    assert_eq!(
        (h.vip, h.backend, h.flags),
        (
            0,
            be("10.255.0.20".parse().unwrap()),
            PUBLISHED_HOST | PUBLISHED_PRESERVE
        )
    );
    assert!(
        !desired_published(&v, "other").contains_key(&published_key(8000, 6))
            || desired_published(&v, "other")[&published_key(8000, 6)]
                .0
                .backend
                == be("10.255.0.21".parse().unwrap()),
        "the other node's host port leads to its own task"
    );
    assert!(
        !desired_published(&v, "third").contains_key(&published_key(8000, 6)),
        "a node without a task of the service does not open its host port"
    );
    // This node's ingress address is a local endpoint flagged as such; the other's is remote.
    let eps = desired_endpoints(&v, "me", "10.99.0.1".parse().unwrap(), &BTreeMap::new());
    let mine = eps[&EndpointKey {
        vni: 4300,
        addr: be("10.255.0.2".parse().unwrap()),
    }];
    assert_eq!((mine.node_addr, mine.flags), (0, ENDPOINT_NODE_INGRESS));
    let theirs = eps[&EndpointKey {
        vni: 4300,
        addr: be("10.255.0.3".parse().unwrap()),
    }];
    assert_eq!(theirs.node_addr, be("10.99.0.2".parse().unwrap()));
    assert_eq!(
        desired_peers(&v, "10.99.0.1".parse().unwrap()),
        BTreeSet::from([be("10.99.0.2".parse().unwrap())])
    );
}

#[test]
fn proc_net_tables_give_listening_ports() {
    let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0\n";
    assert_eq!(
        parse_proc_net(tcp, 6, Some("0A")),
        vec![(published_key(8080, 6), 1)]
    );
    assert_eq!(parse_proc_net(tcp, 17, None).len(), 2);
}

#[test]
fn a_listening_socket_is_found_with_its_process() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let listeners = host_listeners();
    let inode = *listeners
        .get(&published_key(port, 6))
        .unwrap_or_else(|| panic!("port {port} not among the listeners {listeners:?}"));
    assert_ne!(inode, 0);
    let owners = socket_owners(&BTreeSet::from([inode]));
    let owner = owners
        .get(&inode)
        .expect("the test process holds the socket");
    assert!(
        owner.ends_with(&format!("(pid {})", std::process::id())),
        "{owner}"
    );
    // An inode nobody holds is left out.
    assert!(socket_owners(&BTreeSet::from([u64::MAX])).is_empty());
}

/// A UDP echo server in `ns` on `addr` answering `n` datagrams with the sender's address.
fn udp_echo(ns: &Path, addr: SocketAddr, n: usize) -> std::thread::JoinHandle<()> {
    let ns = std::fs::File::open(ns).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        // SAFETY: setns on this thread only.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let s = std::net::UdpSocket::bind(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 1500];
        for _ in 0..n {
            let Ok((_, peer)) = s.recv_from(&mut buf) else {
                return;
            };
            let _ = s.send_to(peer.to_string().as_bytes(), peer);
        }
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    h
}

/// Sends one datagram from `ns` to `to`; the answer (the address the server saw), if any.
fn udp_ask(ns: &Path, to: SocketAddr) -> Option<String> {
    let ns = std::fs::File::open(ns).unwrap();
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.send_to(b"hi", to).ok()?;
        let mut buf = [0u8; 256];
        let (k, _) = s.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..k]).into_owned())
    })
    .join()
    .unwrap()
}

#[test]
fn published_ports_answer_on_every_node_snat_or_keep_the_client_and_reach_local_processes() {
    use super::testbed::{ingress_network, node_ingress_endpoint, published_service};
    let mut topo = new_topology();
    let client_ns = topo.add_host("c", 10).unwrap_or_else(|e| panic!("{e}"));
    let client_ip = topo.underlay_ip(10);
    let a_dir = topo.bpf_dir("a");
    let b_dir = topo.bpf_dir("b");
    let (a_ip, b_ip) = (topo.underlay_ip(1), topo.underlay_ip(2));
    let (sa, sb) = (a_ip.to_string(), b_ip.to_string());
    let netns_dir = topo.netns_dir();

    let ing = ingress_network("ing", 4300, "10.255.0.0/16");
    let svc_ep = |t: &str, svc: &str, addr: &str, node: &str, node_addr: &str| EndpointInfo {
        service_id: svc.into(),
        ..ep(t, "ing", addr, node, node_addr)
    };
    let mut keep = published_service("keep", "keep", "ing", "10.255.0.5/16", &[(7000, 30081)]);
    keep.ports[0].preserve_source_ip = true;
    let mut udp = published_service("u", "udp", "ing", "10.255.0.7/16", &[(7000, 30083)]);
    udp.ports[0].protocol = proto::PortProtocol::Udp as i32;
    let red = net("red", 4096, "10.0.1.0/24", false);
    let msg = complete_with(
        vec![ing, red],
        vec![
            ep("x", "red", "10.0.1.2", "A", &sa),
            node_ingress_endpoint("A", "ing", "10.255.0.2", &sa),
            node_ingress_endpoint("B", "ing", "10.255.0.3", &sb),
            // web on B only, keep on B only, loc on A only, udp on B.
            svc_ep("w", "web", "10.255.0.10", "B", &sb),
            svc_ep("k", "keep", "10.255.0.11", "B", &sb),
            svc_ep("l", "loc", "10.255.0.12", "A", &sa),
            svc_ep("u", "u", "10.255.0.13", "B", &sb),
        ],
        vec![
            published_service("web", "web", "ing", "10.255.0.4/16", &[(7000, 30080)]),
            keep,
            published_service("loc", "loc", "ing", "10.255.0.6/16", &[(7000, 30082)]),
            udp,
        ],
    );
    let a_view = ViewHandle::default();
    a_view.apply(msg.clone());
    let b_view = ViewHandle::default();
    b_view.apply(msg);
    let tasks_a = vec![
        task("l", &[("ing", "10.255.0.12/16")]),
        task("x", &[("red", "10.0.1.2/24")]),
    ];
    let tasks_b = vec![
        task("w", &[("ing", "10.255.0.10/16")]),
        task("k", &[("ing", "10.255.0.11/16")]),
        task("u", &[("ing", "10.255.0.13/16")]),
    ];
    let task_ns = task_namespaces(&netns_dir, tasks_a.iter().chain(&tasks_b));
    let with_ns = |tasks: &[Task]| with_namespaces(&task_ns, tasks);
    let a = start_node(
        &topo.ns_path("n1"),
        "A",
        a_ip,
        a_dir,
        None,
        a_view,
        with_ns(&tasks_a),
    );
    let b = start_node(
        &topo.ns_path("n2"),
        "B",
        b_ip,
        b_dir,
        None,
        b_view,
        with_ns(&tasks_b),
    );
    // The run loops write the maps.
    let (ra, rb) = (a.clone(), b.clone());
    in_ns(&topo.ns_path("n1"), move || async move { ra.reconcile() });
    in_ns(&topo.ns_path("n2"), move || async move { rb.reconcile() });

    let to = |ip: Ipv4Addr, port: u16| SocketAddr::new(ip.into(), port);
    // SNAT: through A (the task is on B, across the tunnel) and through B (local task).
    let srv = echo_server(&task_ns["w"], "0.0.0.0:7000".parse().unwrap(), 2);
    echo_through(&client_ns, to(a_ip, 30080), 1 << 20).expect("client → A:30080 → task on B");
    echo_through(&client_ns, to(b_ip, 30080), 1 << 20).expect("client → B:30080 → task on B");
    let peers = srv.join().unwrap();
    assert_eq!(
        peers[0].ip().to_string(),
        "10.255.0.2",
        "SNAT to A's ingress address"
    );
    assert_eq!(
        peers[1].ip().to_string(),
        "10.255.0.3",
        "SNAT to B's ingress address"
    );

    // A task on the ingress node itself.
    let srv = echo_server(&task_ns["l"], "0.0.0.0:7000".parse().unwrap(), 2);
    echo_through(&client_ns, to(a_ip, 30082), 100_000).expect("client → A:30082 → task on A");
    echo_through(&client_ns, to(b_ip, 30082), 100_000).expect("client → B:30082 → task on A");
    let peers = srv.join().unwrap();
    assert_eq!(peers[0].ip().to_string(), "10.255.0.2");
    assert_eq!(peers[1].ip().to_string(), "10.255.0.3");

    // The client's address kept, through the task's node and through another one.
    let srv = echo_server(&task_ns["k"], "0.0.0.0:7000".parse().unwrap(), 2);
    echo_through(&client_ns, to(b_ip, 30081), 100_000).expect("preserve, local task");
    echo_through(&client_ns, to(a_ip, 30081), 100_000).expect("preserve, task on another node");
    let peers = srv.join().unwrap();
    assert_eq!(peers[0].ip(), std::net::IpAddr::from(client_ip));
    assert_eq!(peers[1].ip(), std::net::IpAddr::from(client_ip));

    // The node's own processes: its address and 127.0.0.1 (SNAT, even when preserving).
    let srv = echo_server(&task_ns["w"], "0.0.0.0:7000".parse().unwrap(), 2);
    let n1 = topo.ns_path("n1");
    echo_through(&n1, to(a_ip, 30080), 100_000).expect("A's process → A's address");
    echo_through(&n1, to(Ipv4Addr::LOCALHOST, 30080), 100_000).expect("A's process → 127.0.0.1");
    let peers = srv.join().unwrap();
    assert!(
        peers.iter().all(|p| p.ip().to_string() == "10.255.0.2"),
        "{peers:?}"
    );

    // A task of another network: to its own node's address (masqueraded into the node's
    // stack, then the mesh) and to the other node's (masqueraded out of the uplink).
    let srv = echo_server(&task_ns["w"], "0.0.0.0:7000".parse().unwrap(), 2);
    echo_through(&task_ns["x"], to(a_ip, 30080), 100_000).expect("task on A → A:30080");
    echo_through(&task_ns["x"], to(b_ip, 30080), 100_000).expect("task on A → B:30080");
    let peers = srv.join().unwrap();
    assert_eq!(peers[0].ip().to_string(), "10.255.0.2");
    assert_eq!(peers[1].ip().to_string(), "10.255.0.3");

    // UDP through both nodes.
    let srv = udp_echo(&task_ns["u"], "0.0.0.0:7000".parse().unwrap(), 2);
    let seen_a = udp_ask(&client_ns, to(a_ip, 30083)).expect("UDP through A");
    let seen_b = udp_ask(&client_ns, to(b_ip, 30083)).expect("UDP through B");
    srv.join().unwrap();
    assert!(seen_a.starts_with("10.255.0.2:"), "{seen_a}");
    assert!(seen_b.starts_with("10.255.0.3:"), "{seen_b}");

    // A port nobody publishes: the node's stack refuses it.
    let err = echo_through(&client_ns, to(a_ip, 30099), 10).unwrap_err();
    assert!(err.contains("refused"), "{err}");

    // Counters per published port.
    let stats = a.dataplane().unwrap().port_stats();
    let web = stats[&published_key(30080, 6)];
    assert!(
        web[swarm_ebpf_common::port_stat::CONNECTIONS] >= 3,
        "{web:?}"
    );
    assert!(
        web[swarm_ebpf_common::port_stat::PACKETS_OUT] > 0,
        "{web:?}"
    );

    // The task leaves: new connections through either node find no backend.
    let gone = NetworkStateMessage {
        r#type: network_state_message::Type::Incremental as i32,
        changes: vec![NetworkStateChange {
            change: Some(Change::EndpointRemoved(proto::EndpointKey {
                task_id: "w".into(),
                network_id: "ing".into(),
            })),
        }],
        vxlan_port: 0,
    };
    a.view().apply(gone.clone());
    b.view().apply(gone);
    let (ra, rb) = (a.clone(), b.clone());
    in_ns(&topo.ns_path("n1"), move || async move { ra.reconcile() });
    in_ns(&topo.ns_path("n2"), move || async move { rb.reconcile() });
    assert!(echo_through(&client_ns, to(a_ip, 30080), 10).is_err());
    let stats = a.dataplane().unwrap().port_stats();
    assert!(stats[&published_key(30080, 6)][swarm_ebpf_common::port_stat::DROP_NO_BACKEND] > 0);
}
