//! The routing mesh for real, in the lab: ports a service publishes answer on every node's
//! underlay address, reached from a client outside every node (a thread in the lab's underlay
//! namespace, 10.77.0.254, as a machine on the nodes' LAN), from the nodes themselves and from
//! tasks on other overlay networks; the address the task sees (the ingress node's ingress
//! address, or the client's own with `source-ip=preserve`); host-mode ports on the task's node
//! only; published ports allocated, refused when taken and freed by `service rm`; no request
//! lost while the service scales and an agent dies; no NAT rule in iptables or nftables; the
//! per-port counters on `/metrics`. Needs what `cargo xtask test` installs, plus `nft` and
//! `iptables` (the NAT check fails when they are missing). One lab at a time.
//!
//! Every answer names its task: whoami's `/` page has `Hostname:` (the first 12 characters of
//! the task id) and `RemoteAddr:` (the client address the task saw); its UDP side answers
//! `HOSTNAME: TEXT`, and `HOSTNAME: RemoteAddr: IP:PORT` to the datagram `remoteaddr`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use tests::lab::testing::{create, node_of, test_lab as lab, wait_running, LONG};
use tests::lab::{Lab, LabNode, UNDERLAY_IP};
use tests::{hostname, in_subnet, wait_for, AgentClient};

/// The data plane of every node following a change of the cluster.
const CONVERGE: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const UDP_TIMEOUT: Duration = Duration::from_secs(2);

// ------------------------------------------------------------------------------- clients

/// One HTTP request to whoami's `/` page: who answered and what it saw.
#[derive(Debug, Clone)]
struct Answer {
    /// The task's hostname (the first 12 characters of its id).
    hostname: String,
    /// The client address the task saw (`RemoteAddr:`).
    remote: SocketAddr,
    /// The client socket's own address.
    local: SocketAddr,
    /// When the connection was opened (just before connect).
    opened: SystemTime,
}

/// A GET of `/` on a new connection to `addr`, in the calling thread's namespace. No retry:
/// a failure is an error.
fn http_whoami(addr: SocketAddr) -> anyhow::Result<Answer> {
    let opened = SystemTime::now();
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .with_context(|| format!("connect {addr}"))?;
    let local = s.local_addr()?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("send to {addr}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("read from {addr} (got {} bytes)", raw.len()))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{addr}: no response head in {text:?}"))?;
    if !head.starts_with("HTTP/1.1 200 ") {
        bail!("{addr}: {head}");
    }
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse::<usize>().ok());
    if len != Some(body.len()) {
        bail!(
            "{addr}: a body of {} bytes, Content-Length {len:?}",
            body.len()
        );
    }
    let field = |key: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .with_context(|| format!("{addr}: no {key:?} in {body:?}"))
    };
    Ok(Answer {
        hostname: field("Hostname: ")?.to_string(),
        remote: field("RemoteAddr: ")?
            .parse()
            .with_context(|| format!("{addr}: RemoteAddr in {body:?}"))?,
        local,
        opened,
    })
}

/// One UDP exchange: what answered.
#[derive(Debug, Clone)]
struct Datagram {
    hostname: String,
    /// The rest of the answer: the echoed text, or `RemoteAddr: IP:PORT`.
    text: String,
    /// The client socket's own address.
    local: SocketAddr,
}

impl Datagram {
    /// The client address the task saw (the answer to `remoteaddr`).
    fn remote(&self) -> anyhow::Result<SocketAddr> {
        self.text
            .strip_prefix("RemoteAddr: ")
            .with_context(|| format!("not an answer to remoteaddr: {:?}", self.text))?
            .parse()
            .with_context(|| format!("RemoteAddr in {:?}", self.text))
    }
}

/// One datagram from a new connected socket (a new flow) to `addr`, one answer awaited.
/// The socket is connected: only an answer from `addr` itself is received.
fn udp_ask(addr: SocketAddr, text: &str) -> anyhow::Result<Datagram> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(addr)?;
    let local = s.local_addr()?;
    s.set_read_timeout(Some(UDP_TIMEOUT))?;
    s.send(text.as_bytes())
        .with_context(|| format!("UDP send to {addr}"))?;
    let mut buf = [0u8; 2048];
    let n = s
        .recv(&mut buf)
        .with_context(|| format!("no UDP answer from {addr}"))?;
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    let (hostname, text) = answer
        .split_once(": ")
        .with_context(|| format!("{addr}: UDP answer {answer:?}"))?;
    Ok(Datagram {
        hostname: hostname.to_string(),
        text: text.to_string(),
        local,
    })
}

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("an IPv4 address"), port)
}

// ------------------------------------------------------------------------------- helpers

fn hostnames(tasks: &[proto::Task]) -> BTreeSet<String> {
    tasks.iter().map(hostname).collect()
}

/// Polls `f` (every 200 ms, within [`CONVERGE`]) until it succeeds; panics with the last
/// error and the lab's logs.
fn converge<T>(lab: &Lab, what: &str, mut f: impl FnMut() -> anyhow::Result<T>) -> T {
    let deadline = Instant::now() + CONVERGE;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => {
                panic!("{what}: not within {CONVERGE:?}: {e:#}\n{}", lab.logs())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A check that holds at once (no waiting): panics with the error and the lab's logs.
fn must<T>(lab: &Lab, what: &str, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", lab.logs()))
}

/// An HTTP answer from the underlay through `node`:`port`, by one of `names`.
fn http_from_underlay(
    lab: &Lab,
    ip: &str,
    port: u16,
    names: &BTreeSet<String>,
) -> anyhow::Result<Answer> {
    let addr = sock(ip, port);
    let a = lab.in_underlay(move || http_whoami(addr))?;
    if !names.contains(&a.hostname) {
        bail!("{addr} answered by {} (not one of {names:?})", a.hostname);
    }
    Ok(a)
}

/// A UDP answer from the underlay through `ip`:`port`, by one of `names`.
fn udp_from_underlay(
    lab: &Lab,
    ip: &str,
    port: u16,
    text: &str,
    names: &BTreeSet<String>,
) -> anyhow::Result<Datagram> {
    let addr = sock(ip, port);
    let t = text.to_string();
    let d = lab.in_underlay(move || udp_ask(addr, &t))?;
    if !names.contains(&d.hostname) {
        bail!("{addr} answered by {} (not one of {names:?})", d.hostname);
    }
    Ok(d)
}

/// Each of `tasks` got between half and twice its share of `counts` (which holds only them).
fn assert_spread(lab: &Lab, what: &str, counts: &BTreeMap<String, usize>, tasks: &[proto::Task]) {
    let total: usize = counts.values().sum();
    let share = total / tasks.len();
    for t in tasks {
        let n = counts.get(&hostname(t)).copied().unwrap_or(0);
        assert!(
            (share / 2..=share * 2).contains(&n),
            "{what}: {} got {n} of {total} (its share is {share}): {counts:?}\n{}",
            hostname(t),
            lab.logs()
        );
    }
    let known = hostnames(tasks);
    let strangers: Vec<&String> = counts.keys().filter(|h| !known.contains(*h)).collect();
    assert!(
        strangers.is_empty(),
        "{what}: answers from {strangers:?}, not from {known:?}"
    );
}

/// The ingress network's subnet (address, prefix length).
fn ingress_subnet(lab: &Lab) -> (Ipv4Addr, u32) {
    let nets = must(lab, "listing networks", lab.node(1).networks());
    let ingress = nets
        .iter()
        .find(|n| n.spec.as_ref().is_some_and(|s| s.ingress))
        .unwrap_or_else(|| panic!("no ingress network among {nets:?}"));
    let subnet = ingress
        .allocation
        .as_ref()
        .map(|a| a.subnet.clone())
        .unwrap_or_default();
    let (ip, len) = subnet
        .split_once('/')
        .unwrap_or_else(|| panic!("the ingress network has no subnet: {ingress:?}"));
    (ip.parse().unwrap(), len.parse().unwrap())
}

/// Every node's address on the ingress network (`Node.attachments`), by node name, once
/// every node has one.
fn ingress_addrs(lab: &Lab) -> BTreeMap<String, Ipv4Addr> {
    let subnet = ingress_subnet(lab);
    let mut got = BTreeMap::new();
    let mut last = Vec::new();
    wait_for(CONVERGE, || {
        let Ok(nodes) = lab.node(1).nodes() else {
            return false;
        };
        got.clear();
        for n in &nodes {
            let name = n
                .description
                .as_ref()
                .map(|d| d.hostname.clone())
                .unwrap_or_default();
            let addr = n
                .attachments
                .iter()
                .find(|a| a.network_name == "ingress")
                .and_then(|a| a.addresses.first())
                .and_then(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok());
            if let Some(a) = addr {
                got.insert(name, a);
            }
        }
        last = nodes;
        got.len() == lab.nodes().len()
    })
    .unwrap_or_else(|_| {
        panic!(
            "not every node has an address on the ingress network: {got:?}\n{:#?}",
            last.iter()
                .map(|n| (&n.description, &n.attachments))
                .collect::<Vec<_>>()
        )
    });
    for (node, a) in &got {
        assert!(
            in_subnet(*a, subnet),
            "{node}'s ingress address {a} is outside {subnet:?}"
        );
    }
    let distinct: BTreeSet<&Ipv4Addr> = got.values().collect();
    assert_eq!(
        distinct.len(),
        got.len(),
        "shared ingress addresses: {got:?}"
    );
    got
}

/// The sum of the samples of the counter `name` whose labels contain all of `labels`
/// (`port="8080"` …) on the node's `/metrics`.
fn metric_sum(lab: &Lab, node: &LabNode, name: &str, labels: &[&str]) -> f64 {
    let text = must(lab, &format!("/metrics of {}", node.name()), node.metrics());
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

/// The path of a program the NAT check needs; missing is a failure, not a skip.
fn tool(name: &str, package: &str) -> String {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed: the routing mesh tests check every node for NAT rules with it (apt-get install {package}; xtask's setup must install it)"
            )
        })
        .to_string_lossy()
        .into_owned()
}

/// No NAT rule in nftables or iptables (nat table, DNAT/SNAT/MASQUERADE/REDIRECT) in any
/// node's namespace: the routing mesh is eBPF only.
fn assert_no_nat_rules(lab: &Lab) {
    let nft = tool("nft", "nftables");
    let iptables = tool("iptables", "iptables");
    let iptables_save = tool("iptables-save", "iptables");
    let nat_words = ["dnat", "snat", "masquerade", "redirect"];
    for n in lab.nodes() {
        let o = n.exec(&[&nft, "list", "ruleset"]);
        assert!(o.ok(), "nft list ruleset on {}: {}", n.name(), o.stderr);
        let bad: Vec<&str> = o
            .stdout
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("type nat")
                    || nat_words
                        .iter()
                        .any(|w| l.split_whitespace().any(|t| t == *w))
            })
            .collect();
        assert!(
            bad.is_empty(),
            "NAT in nftables on {}: {bad:?}\n{}",
            n.name(),
            o.stdout
        );

        let o = n.exec(&[&iptables_save]);
        assert!(o.ok(), "iptables-save on {}: {}", n.name(), o.stderr);
        let mut table = String::new();
        let mut bad = Vec::new();
        for l in o.stdout.lines() {
            if let Some(t) = l.strip_prefix('*') {
                table = t.trim().to_string();
            }
            let target = ["DNAT", "SNAT", "MASQUERADE", "REDIRECT"]
                .iter()
                .any(|j| l.contains(&format!("-j {j}")));
            if (l.starts_with("-A") && table == "nat") || target {
                bad.push(l.to_string());
            }
        }
        assert!(
            bad.is_empty(),
            "NAT rules in iptables on {}: {bad:?}\n{}",
            n.name(),
            o.stdout
        );

        let o = n.exec(&[&iptables, "-t", "nat", "-S"]);
        assert!(o.ok(), "iptables -t nat -S on {}: {}", n.name(), o.stderr);
        let rules: Vec<&str> = o.stdout.lines().filter(|l| l.starts_with("-A")).collect();
        assert!(
            rules.is_empty(),
            "NAT rules in iptables on {}: {rules:?}",
            n.name()
        );
    }
}

// --------------------------------------------------------------------------------- tests

#[test]
fn published_ports_answer_on_every_node_from_outside_the_nodes_and_other_networks() {
    let (_g, lab) = lab(1, 2);
    let whoami = format!("{}/whoami:latest", lab.registry());
    let m = lab.node(1);
    // Three replicas on node1 and node2: node3 has none.
    create(
        &lab,
        &[
            "--name",
            "web",
            "--replicas",
            "3",
            "-p",
            "8080:80",
            "-p",
            "8081:80/udp",
            "--constraint",
            "node.hostname!=node3",
            &whoami,
        ],
    );
    let web = wait_running(&lab, "web", 3);
    let names = hostnames(&web);
    assert!(
        web.iter().all(|t| node_of(&lab, t).name() != "node3"),
        "a web task on node3"
    );

    // From outside every node: each node answers, TCP and UDP, those without a replica too.
    for n in lab.nodes() {
        converge(
            &lab,
            &format!("HTTP on {}:8080 from the underlay", n.name()),
            || http_from_underlay(&lab, &n.ip(), 8080, &names),
        );
        converge(
            &lab,
            &format!("UDP on {}:8081 from the underlay", n.name()),
            || udp_from_underlay(&lab, &n.ip(), 8081, "hello", &names),
        );
        for _ in 0..5 {
            must(
                &lab,
                &format!("HTTP on {}:8080", n.name()),
                http_from_underlay(&lab, &n.ip(), 8080, &names),
            );
            let d = must(
                &lab,
                &format!("UDP on {}:8081", n.name()),
                udp_from_underlay(&lab, &n.ip(), 8081, "hello", &names),
            );
            assert_eq!(d.text, "hello", "UDP echo through {}", n.name());
        }
    }

    // The managers saw every task RUNNING; node3's data plane learns it a stream round later.
    // The spread below is about the mesh once it has every replica: wait until node3 answers
    // from each of them.
    let n3 = lab.node(3);
    converge(&lab, "node3 reaches every web replica", || {
        let seen: BTreeSet<String> = (0..12)
            .map(|_| http_from_underlay(&lab, &n3.ip(), 8080, &names).map(|a| a.hostname))
            .collect::<anyhow::Result<_>>()?;
        if seen != names {
            bail!("12 requests through node3 reached {seen:?} of {names:?}");
        }
        Ok(())
    });

    // 60 connections and 60 new UDP flows through node3 (no replica there) spread over every
    // replica (node3's counters are checked further down: the mesh first).
    let tcp_labels = ["port=\"8080\"", "protocol=\"tcp\"", "service=\"web\""];
    let udp_labels = ["port=\"8081\"", "protocol=\"udp\"", "service=\"web\""];
    let conns_before = metric_sum(&lab, n3, "swarm_ingress_connections_total", &tcp_labels);
    let packets_before = metric_sum(&lab, n3, "swarm_ingress_packets_total", &udp_labels);
    let bytes_before = metric_sum(&lab, n3, "swarm_ingress_bytes_total", &tcp_labels);
    let target = sock(&n3.ip(), 8080);
    let answers = lab
        .in_underlay(move || Ok((0..60).map(|_| http_whoami(target)).collect::<Vec<_>>()))
        .unwrap();
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for a in answers {
        let a = must(&lab, "HTTP through node3", a);
        *per.entry(a.hostname).or_default() += 1;
    }
    assert_spread(&lab, "60 HTTP requests through node3", &per, &web);
    let target = sock(&n3.ip(), 8081);
    let datagrams = lab
        .in_underlay(move || {
            Ok((0..60)
                .map(|i| udp_ask(target, &format!("n{i}")))
                .collect::<Vec<_>>())
        })
        .unwrap();
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for (i, d) in datagrams.into_iter().enumerate() {
        let d = must(&lab, "UDP through node3", d);
        assert_eq!(d.text, format!("n{i}"));
        *per.entry(d.hostname).or_default() += 1;
    }
    assert_spread(&lab, "60 UDP flows through node3", &per, &web);

    // From a task of another service on another overlay network (on node3, no replica
    // there): through its own node's address and another node's.
    m.swarm_ok(&["network", "create", "-d", "overlay", "other"]);
    create(
        &lab,
        &[
            "--name",
            "client",
            "--network",
            "other",
            "--constraint",
            "node.hostname==node3",
            &whoami,
        ],
    );
    let client = wait_running(&lab, "client", 1).remove(0);
    for ip in [lab.node(3).ip(), lab.node(1).ip()] {
        let what = format!("HTTP to {ip}:8080 from a task on another network");
        let got = converge(&lab, &what, || {
            lab.task_get(&client, &format!("http://{ip}:8080/hostname"))
        });
        assert!(names.contains(&got), "{what}: answered by {got:?}");
        let out = must(
            &lab,
            &what,
            lab.task_exec(
                &client,
                &[
                    "/whoami",
                    "get",
                    &format!("http://{ip}:8080/hostname"),
                    "--count",
                    "6",
                ],
            ),
        );
        assert_eq!(out.lines().count(), 6, "{what}: {out}");
        assert!(
            out.lines().all(|l| names.contains(l.trim())),
            "{what}: {out}"
        );
        let what = format!("UDP to {ip}:8081 from a task on another network");
        let out = converge(&lab, &what, || {
            let o = lab.task_exec(&client, &["/whoami", "udp", &format!("{ip}:8081"), "hi"])?;
            let o = o.trim().to_string();
            if o == "timeout" || o.starts_with("error") {
                bail!("{o}");
            }
            Ok(o)
        });
        let (h, text) = out
            .split_once(": ")
            .unwrap_or_else(|| panic!("{what}: {out}"));
        assert!(names.contains(h) && text == "hi", "{what}: {out}");
    }

    // A port another service publishes is refused (TCP and UDP alike), with Docker's message.
    for (p, port) in [("8080:80", "8080"), ("8081:80/udp", "8081")] {
        let o = m.swarm(&[
            "service", "create", "-d", "--name", "web2", "-p", p, &whoami,
        ]);
        let want = format!("port '{port}' is already in use by service 'web'");
        assert!(
            !o.ok() && o.stderr.contains(&want),
            "publishing {p} again: exit {}, stderr {:?} (want {want:?}), stdout {:?}",
            o.code,
            o.stderr,
            o.stdout
        );
    }
    assert!(
        !m.swarm(&["service", "ls"]).stdout.contains("web2"),
        "a refused service was created"
    );

    // From a process on each node itself: its own address and 127.0.0.1, and another node's.
    for n in lab.nodes() {
        let other = lab.node(n.index() % lab.nodes().len() + 1).ip();
        for ip in [n.ip(), "127.0.0.1".to_string(), other] {
            let what = format!("HTTP to {ip}:8080 from {} itself", n.name());
            let (tcp, udp) = (sock(&ip, 8080), sock(&ip, 8081));
            let first = converge(&lab, &what, || n.in_netns(move || http_whoami(tcp)));
            assert!(names.contains(&first.hostname), "{what}: {first:?}");
            for _ in 0..3 {
                let a = must(&lab, &what, n.in_netns(move || http_whoami(tcp)));
                assert!(names.contains(&a.hostname), "{what}: {a:?}");
            }
            let what = format!("UDP to {ip}:8081 from {} itself", n.name());
            let d = converge(&lab, &what, || n.in_netns(move || udp_ask(udp, "local")));
            assert!(
                names.contains(&d.hostname) && d.text == "local",
                "{what}: {d:?}"
            );
        }
    }

    // node3's counters of its published ports saw (at least) the 60 connections and the 60
    // datagrams above.
    let conns = metric_sum(&lab, n3, "swarm_ingress_connections_total", &tcp_labels);
    assert!(
        conns >= conns_before + 60.0,
        "swarm_ingress_connections_total{{port=\"8080\",protocol=\"tcp\",service=\"web\"}} on node3 went from {conns_before} to {conns} after 60 connections:\n{}",
        n3.metrics().unwrap_or_default()
    );
    let packets = metric_sum(&lab, n3, "swarm_ingress_packets_total", &udp_labels);
    assert!(
        packets >= packets_before + 60.0,
        "swarm_ingress_packets_total{{port=\"8081\",protocol=\"udp\",service=\"web\"}} on node3 went from {packets_before} to {packets} after 60 datagrams:\n{}",
        n3.metrics().unwrap_or_default()
    );
    let bytes = metric_sum(&lab, n3, "swarm_ingress_bytes_total", &tcp_labels);
    assert!(
        bytes > bytes_before,
        "swarm_ingress_bytes_total{{port=\"8080\",protocol=\"tcp\",service=\"web\"}} on node3 did not rise ({bytes_before} → {bytes}):\n{}",
        n3.metrics().unwrap_or_default()
    );

    // A process of node3 listening on 8080 loses to the mesh (it never accepts: answers
    // still come from the tasks), and it is visible: the node's metric, and `service ps`
    // names the port, the process and the node on the service's tasks, until it closes.
    let listener = must(
        &lab,
        "a listener on 8080 in node3",
        n3.in_netns(|| Ok(std::net::TcpListener::bind("0.0.0.0:8080")?)),
    );
    let shadow = format!(
        "port 8080/tcp shadows {} (pid {}) on ",
        std::fs::read_to_string("/proc/self/comm")
            .unwrap_or_default()
            .trim(),
        std::process::id()
    );
    let ps = converge(&lab, "service ps showing the shadowed port", || {
        let ps = m.swarm(&["service", "ps", "--no-trunc", "web"]).stdout;
        anyhow::ensure!(ps.contains(&shadow), "want {shadow:?} in:\n{ps}");
        Ok(ps)
    });
    let rows: Vec<&str> = ps.lines().filter(|l| l.contains(" Running ")).collect();
    assert!(
        rows.len() == web.len() && rows.iter().all(|l| l.contains(&shadow)),
        "every running task of web shows {shadow:?}:\n{ps}"
    );
    assert_eq!(
        metric_sum(&lab, n3, "swarm_ingress_port_shadowed", &tcp_labels),
        1.0,
        "swarm_ingress_port_shadowed on node3:\n{}",
        n3.metrics().unwrap_or_default()
    );
    for _ in 0..5 {
        must(
            &lab,
            "HTTP through node3 while a process of node3 listens on 8080",
            http_from_underlay(&lab, &n3.ip(), 8080, &names),
        );
    }
    drop(listener);
    converge(&lab, "service ps without the shadowed port", || {
        let ps = m.swarm(&["service", "ps", "--no-trunc", "web"]).stdout;
        anyhow::ensure!(!ps.contains("shadows"), "still shadowed:\n{ps}");
        Ok(())
    });

    // `service rm` frees the ports: a new service publishing them is accepted at once and
    // answers on every node (only it: the removed service's tasks leave the mesh).
    m.swarm_ok(&["service", "rm", "web"]);
    create(
        &lab,
        &[
            "--name",
            "web2",
            "-p",
            "8080:80",
            "-p",
            "8081:80/udp",
            &whoami,
        ],
    );
    let web2 = wait_running(&lab, "web2", 1);
    let names2 = hostnames(&web2);
    for n in lab.nodes() {
        converge(&lab, &format!("web2 on {}:8080", n.name()), || {
            // Every one of a few answers must come from web2 (no removed web task left).
            for _ in 0..6 {
                http_from_underlay(&lab, &n.ip(), 8080, &names2)?;
            }
            Ok(())
        });
        converge(&lab, &format!("web2 on {}:8081/udp", n.name()), || {
            udp_from_underlay(&lab, &n.ip(), 8081, "again", &names2)
        });
    }

    assert_no_nat_rules(&lab);
}

#[test]
fn the_task_sees_the_client_or_the_ingress_address_and_host_mode_ports_stay_on_the_tasks_node() {
    let (_g, lab) = lab(1, 2);
    let whoami = format!("{}/whoami:latest", lab.registry());
    let m = lab.node(1);
    // keep and hide run on node2: node1 and node3 forward to it.
    create(
        &lab,
        &[
            "--name",
            "keep",
            "--constraint",
            "node.hostname==node2",
            "--publish",
            "published=8090,target=80,source-ip=preserve",
            "--publish",
            "published=8090,target=80,protocol=udp,source-ip=preserve",
            &whoami,
        ],
    );
    create(
        &lab,
        &[
            "--name",
            "hide",
            "--constraint",
            "node.hostname==node2",
            "-p",
            "8091:80",
            "-p",
            "8091:80/udp",
            &whoami,
        ],
    );
    create(&lab, &["--name", "dyn", "-p", "80", &whoami]);
    create(
        &lab,
        &[
            "--name",
            "hostp",
            "--constraint",
            "node.hostname!=node2",
            "--publish",
            "mode=host,published=8095,target=80",
            "--publish",
            "mode=host,published=8095,target=80,protocol=udp",
            &whoami,
        ],
    );
    let keep = hostnames(&wait_running(&lab, "keep", 1));
    let hide = hostnames(&wait_running(&lab, "hide", 1));
    let dyn_names = hostnames(&wait_running(&lab, "dyn", 1));
    let hostp = wait_running(&lab, "hostp", 1).remove(0);
    let ingress = ingress_addrs(&lab);
    let subnet = ingress_subnet(&lab);
    let underlay: IpAddr = UNDERLAY_IP.parse().unwrap();
    eprintln!("ingress subnet {subnet:?}, node addresses {ingress:?}");

    // source-ip=preserve: the task sees the client's own address and port, through the node
    // with the task (node2) and through those without. Otherwise: the ingress address of the
    // node the request came through.
    for n in lab.nodes() {
        let what = format!("keep through {}", n.name());
        let a = converge(&lab, &what, || {
            http_from_underlay(&lab, &n.ip(), 8090, &keep)
        });
        eprintln!("{what}: {a:?}");
        assert_eq!(a.local.ip(), underlay);
        assert_eq!(
            a.remote, a.local,
            "{what}: the task saw {} for the client {}",
            a.remote, a.local
        );
        let d = converge(&lab, &format!("{what} (UDP)"), || {
            udp_from_underlay(&lab, &n.ip(), 8090, "remoteaddr", &keep)
        });
        let seen = must(&lab, &what, d.remote());
        assert_eq!(
            seen, d.local,
            "{what} (UDP): the task saw {seen} for the client {}",
            d.local
        );

        let what = format!("hide through {}", n.name());
        let want = IpAddr::V4(ingress[n.name()]);
        let a = converge(&lab, &what, || {
            http_from_underlay(&lab, &n.ip(), 8091, &hide)
        });
        eprintln!("{what}: {a:?}");
        assert_eq!(
            a.remote.ip(),
            want,
            "{what}: the task saw {} (ingress addresses {ingress:?})",
            a.remote
        );
        let IpAddr::V4(v4) = a.remote.ip() else {
            panic!("{what}: {a:?}")
        };
        assert!(
            in_subnet(v4, subnet),
            "{what}: {v4} is outside the ingress subnet {subnet:?}"
        );
        let d = converge(&lab, &format!("{what} (UDP)"), || {
            udp_from_underlay(&lab, &n.ip(), 8091, "remoteaddr", &hide)
        });
        let seen = must(&lab, &what, d.remote());
        assert_eq!(
            seen.ip(),
            want,
            "{what} (UDP): the task saw {seen} (ingress addresses {ingress:?})"
        );
    }

    // `-p 80` gets a port of 30000–32767, shown by `service inspect`, and it answers.
    let v = tests::json(&m.swarm_ok(&["service", "inspect", "dyn"]));
    let ports = v[0]["endpoint"]["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let published = ports
        .iter()
        .find(|p| p["target_port"] == 80)
        .and_then(|p| p["published_port"].as_u64())
        .unwrap_or_else(|| panic!("no published port for target 80 in {v:#}"));
    eprintln!("dyn publishes {published}");
    assert!(
        (30000..=32767).contains(&published),
        "dyn got the published port {published}"
    );
    for n in lab.nodes() {
        converge(&lab, &format!("dyn on {}:{published}", n.name()), || {
            http_from_underlay(&lab, &n.ip(), published as u16, &dyn_names)
        });
    }

    // Host mode: the port answers on the task's node only (the task sees the client itself),
    // and follows the task when its node is drained.
    let mut at = node_of(&lab, &hostp);
    let mut names = hostnames(std::slice::from_ref(&hostp));
    for round in 0..2 {
        let what = format!("host-mode port on {} (round {round})", at.name());
        let a = converge(&lab, &what, || {
            http_from_underlay(&lab, &at.ip(), 8095, &names)
        });
        eprintln!("{what}: {a:?}");
        assert_eq!(
            a.remote, a.local,
            "{what}: the task saw {} for the client {}",
            a.remote, a.local
        );
        let d = converge(&lab, &format!("{what} (UDP)"), || {
            udp_from_underlay(&lab, &at.ip(), 8095, "host", &names)
        });
        assert_eq!(d.text, "host");
        for n in lab.nodes().iter().filter(|n| n.index() != at.index()) {
            let what = format!(
                "host-mode port on {}, which has no hostp task (round {round})",
                n.name()
            );
            // After a move, the old node's port closes (within the convergence time); then it
            // stays closed.
            converge(&lab, &what, || {
                match http_from_underlay(&lab, &n.ip(), 8095, &BTreeSet::new()) {
                    Ok(a) => bail!("answered: {a:?}"),
                    Err(_) => Ok(()),
                }
            });
            let r = http_from_underlay(&lab, &n.ip(), 8095, &BTreeSet::new());
            assert!(r.is_err(), "{what}: {r:?}");
            let r = udp_from_underlay(&lab, &n.ip(), 8095, "host", &BTreeSet::new());
            assert!(r.is_err(), "{what} (UDP): {r:?}");
        }
        if round == 0 {
            let drained = at.name().to_string();
            m.swarm_ok(&["node", "update", "--availability", "drain", &drained]);
            let mut now = Vec::new();
            wait_for(LONG, || {
                now = tests::running(&m.tasks("hostp").unwrap_or_default())
                    .into_iter()
                    .cloned()
                    .collect();
                now.len() == 1 && node_of(&lab, &now[0]).name() != drained
            })
            .unwrap_or_else(|_| {
                panic!(
                    "hostp did not leave the drained {drained}:\n{}\n{}",
                    m.swarm(&["service", "ps", "hostp"]).stdout,
                    lab.logs()
                )
            });
            at = node_of(&lab, &now[0]);
            names = hostnames(&now);
            assert_ne!(at.name(), "node2", "hostp ignored its constraint");
        }
    }

    assert_no_nat_rules(&lab);
}

/// What the load loop saw: every answer, every failure (with its time).
struct Load {
    answers: Vec<Answer>,
    errors: Vec<(SystemTime, String)>,
}

/// Requests to `addr` one after another (each a new connection, no retry) until `stop`,
/// at most `max` of them and for at most `limit`.
fn load(addr: SocketAddr, stop: Arc<AtomicBool>, max: usize, limit: Duration) -> Load {
    let end = Instant::now() + limit;
    let mut out = Load {
        answers: Vec::new(),
        errors: Vec::new(),
    };
    for _ in 0..max {
        if stop.load(Ordering::SeqCst) || Instant::now() > end {
            break;
        }
        let at = SystemTime::now();
        match http_whoami(addr) {
            Ok(a) => out.answers.push(a),
            Err(e) => out.errors.push((at, format!("{e:#}"))),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    out
}

#[test]
fn scaling_and_a_dead_agent_under_load_fail_no_request_through_the_mesh() {
    let (_g, lab) = lab(1, 2);
    let whoami = format!("{}/whoami:latest", lab.registry());
    let m = lab.node(1);
    create(
        &lab,
        &["--name", "web", "--replicas", "3", "-p", "8080:80", &whoami],
    );
    let first = wait_running(&lab, "web", 3);
    let entry = lab.node(3);
    for n in lab.nodes() {
        converge(&lab, &format!("web on {}:8080", n.name()), || {
            http_from_underlay(&lab, &n.ip(), 8080, &hostnames(&first))
        });
    }

    // Requests through node3 from outside every node, one at a time (~40/s), while the
    // service goes 3 → 1 → 3 and node3's agent is killed and started again.
    let stop = Arc::new(AtomicBool::new(false));
    let lab_ref = &lab;
    let addr = sock(&entry.ip(), 8080);
    let (result, (stopped, (killed, restarted))) = std::thread::scope(|s| {
        let flag = stop.clone();
        let loader = s.spawn(move || {
            lab_ref.in_underlay(move || Ok(load(addr, flag, 6000, Duration::from_secs(150))))
        });
        let steps = || -> (Vec<(String, SystemTime)>, (SystemTime, SystemTime)) {
            std::thread::sleep(Duration::from_secs(2));
            let before: Vec<String> = wait_running(lab_ref, "web", 3)
                .iter()
                .map(|t| t.id.clone())
                .collect();
            m.swarm_ok(&["service", "scale", "web=1"]);
            // When each removed task was asked to stop: its desired state left RUNNING.
            let mut stopped: BTreeMap<String, SystemTime> = BTreeMap::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while stopped.len() < 2 && Instant::now() < deadline {
                for t in m.tasks("web").unwrap_or_default() {
                    if before.contains(&t.id)
                        && t.desired_state > proto::TaskState::Running as i32
                        && !stopped.contains_key(&t.id)
                    {
                        stopped.insert(t.id.clone(), SystemTime::now());
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            assert_eq!(
                stopped.len(),
                2,
                "scaling to 1 did not stop two tasks: {stopped:?}"
            );
            wait_running(lab_ref, "web", 1);
            std::thread::sleep(Duration::from_secs(2));
            m.swarm_ok(&["service", "scale", "web=3"]);
            wait_running(lab_ref, "web", 3);
            std::thread::sleep(Duration::from_secs(2));
            // node3's agent dies (its programs and maps stay pinned), then comes back and
            // takes over.
            entry.kill_agent().unwrap();
            let killed = SystemTime::now();
            std::thread::sleep(Duration::from_secs(3));
            let restarted = SystemTime::now();
            entry
                .start_agent()
                .unwrap_or_else(|e| panic!("{e:#}\n{}", lab_ref.logs()));
            lab_ref
                .wait_ready(LONG)
                .unwrap_or_else(|e| panic!("{e:#}\n{}", lab_ref.logs()));
            std::thread::sleep(Duration::from_secs(3));
            (stopped.into_iter().collect(), (killed, restarted))
        };
        let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(steps));
        stop.store(true, Ordering::SeqCst);
        let result = loader.join().expect("the load thread panicked");
        match stopped {
            Ok(s) => (result, s),
            Err(p) => std::panic::resume_unwind(p),
        }
    });
    let result = result.unwrap_or_else(|e| panic!("the load did not run: {e:#}"));

    // No request failed: not one error (no retry hides one).
    assert!(
        result.errors.is_empty(),
        "{} of {} requests through node3 failed: {:?}\n{}",
        result.errors.len(),
        result.errors.len() + result.answers.len(),
        result.errors.iter().take(20).collect::<Vec<_>>(),
        lab.logs()
    );
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &result.answers {
        *per.entry(a.hostname.as_str()).or_default() += 1;
    }
    eprintln!(
        "{} requests through node3, by task: {per:?}; asked to stop: {stopped:?}",
        result.answers.len()
    );
    assert!(
        result.answers.len() >= 300,
        "only {} requests ran",
        result.answers.len()
    );
    // Requests went through node3 while its agent was dead.
    let while_dead = result
        .answers
        .iter()
        .filter(|a| a.opened > killed && a.opened < restarted)
        .count();
    assert!(
        while_dead >= 20,
        "only {while_dead} requests ran while node3's agent was dead"
    );

    // Every answer came from a task of web; the removed ones took no connection opened after
    // they started stopping (their stop signal comes LB_DRAIN after the desired state changed).
    let all = m.tasks("web").unwrap();
    let known: BTreeSet<String> = hostnames(&all);
    let strangers: BTreeSet<&String> = result
        .answers
        .iter()
        .map(|a| &a.hostname)
        .filter(|h| !known.contains(*h))
        .collect();
    assert!(
        strangers.is_empty(),
        "answers from {strangers:?}, not web's tasks"
    );
    for (id, at) in &stopped {
        let h = id[..12].to_string();
        let cutoff = *at + swarm_agent::containerd::run::LB_DRAIN;
        let late: Vec<&Answer> = result
            .answers
            .iter()
            .filter(|a| a.hostname == h && a.opened > cutoff)
            .collect();
        assert!(
            late.is_empty(),
            "{h} took {} connections opened after it started stopping (first {:?})",
            late.len(),
            late.first()
        );
        // It was among the backends until then (else the check above proves nothing).
        assert!(
            result
                .answers
                .iter()
                .any(|a| a.hostname == h && a.opened < *at),
            "{h} took no connection before it was asked to stop"
        );
    }
    // The replicas of the scale-up took connections too.
    let last = wait_running(&lab, "web", 3);
    for t in &last {
        assert!(
            result.answers.iter().any(|a| a.hostname == hostname(t)),
            "{} (running after the scale-up) never answered",
            hostname(t)
        );
    }

    assert_no_nat_rules(&lab);
}
