//! End-to-end tests of the embedded DNS server without eBPF: a real network namespace per
//! task, the server's listeners opened inside it, real DNS messages sent from a thread that
//! joined the namespace, and a real upstream (dnsmasq) in the node's namespace. They need
//! root (CI runs them as root) and `dnsmasq` on the PATH.

use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use proto::{network_state_change::Change, network_state_message, EndpointMode};
use proto::{NetworkStateChange, NetworkStateMessage};

use super::testdata::*;
use super::*;
use crate::network::view::ViewHandle;

fn assert_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the embedded DNS end-to-end tests need root (network namespaces)"
    );
}

/// dnsmasq on 127.0.0.1:<port> in the node's namespace, answering `example.test`, `secret`
/// and `many.hosts` (60 addresses: truncated over UDP without EDNS) itself and NXDOMAIN for
/// everything else. Killed on drop.
struct Dnsmasq {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for both UDP and TCP on 127.0.0.1.
fn free_port() -> u16 {
    for _ in 0..50 {
        let t = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let port = t.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1");
}

fn start_dnsmasq() -> Dnsmasq {
    for _ in 0..5 {
        let dir = tempfile::tempdir().expect("tempdir");
        let hosts = dir.path().join("hosts");
        let many: String = (1..=60)
            .map(|i| format!("10.2.0.{i} many.hosts\n"))
            .collect();
        std::fs::write(&hosts, many).expect("hosts file");
        let port = free_port();
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--user=root",
                "--address=/example.test/192.0.2.7",
                "--address=/secret/10.9.9.9",
                "--address=/#/",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", hosts.display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting dnsmasq (apt-get install dnsmasq)");
        let mut d = Dnsmasq {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = d.child.try_wait() {
                break; // the port was taken meanwhile: try another
            }
            let q = query("example.test", RecordType::A, false);
            if let Ok(m) = udp_exchange(port, "127.0.0.1", &q, Duration::from_millis(200)) {
                if a_of(&m) == vec![Ipv4Addr::new(192, 0, 2, 7)] {
                    return d;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("dnsmasq did not start on 127.0.0.1 after 5 attempts");
}

fn query(name: &str, t: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = rand::random();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name).expect("name"), t));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m.to_vec().expect("encode")
}

fn udp_exchange(port: u16, ip: &str, q: &[u8], timeout: Duration) -> std::io::Result<Message> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.set_read_timeout(Some(timeout))?;
    s.connect((ip, port))?;
    s.send(q)?;
    let mut buf = vec![0u8; 65535];
    let n = s.recv(&mut buf)?;
    let m = Message::from_vec(&buf[..n]).map_err(std::io::Error::other)?;
    assert_eq!(m.metadata.id, u16::from_be_bytes([q[0], q[1]]), "answer id");
    Ok(m)
}

fn tcp_exchange(port: u16, q: &[u8]) -> std::io::Result<Message> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect((DNS_ADDR, port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(q);
    s.write_all(&framed)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf)?;
    let m = Message::from_vec(&buf).map_err(std::io::Error::other)?;
    assert_eq!(m.metadata.id, u16::from_be_bytes([q[0], q[1]]), "answer id");
    Ok(m)
}

/// Runs `f` on a new thread that joined the network namespace at `netns`.
fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let p = netns.to_path_buf();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(&p).expect("open netns");
        // SAFETY: setns on a valid namespace fd, on this thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("client thread")
}

/// A UDP question to the task's listener, from inside its namespace.
fn ask(netns: &Path, port: u16, name: &str, t: RecordType) -> Message {
    let q = query(name, t, false);
    let name = name.to_string();
    in_netns(netns, move || {
        udp_exchange(port, "127.0.0.11", &q, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("UDP question {name} {t}: {e}"))
    })
}

fn ask_tcp(netns: &Path, port: u16, name: &str, t: RecordType) -> Message {
    let q = query(name, t, false);
    let name = name.to_string();
    in_netns(netns, move || {
        tcp_exchange(port, &q).unwrap_or_else(|e| panic!("TCP question {name} {t}: {e}"))
    })
}

fn a_of(m: &Message) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn ips(v: &[&str]) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = v.iter().map(|s| s.parse().unwrap()).collect();
    out.sort();
    out
}

/// The sample view, plus `big` (dnsrr, 60 serving tasks on front: more than 512 bytes).
fn e2e_view() -> crate::network::view::NetworkView {
    let mut v = sample_view();
    let s = service("svc-big", "big", EndpointMode::Dnsrr, &[], &[FRONT]);
    v.services.insert(s.id.clone(), s);
    for i in 0..60 {
        let id = format!("b{i:02}xxxxxxxxxxxxxxxxxxxxxx");
        insert_endpoint(
            &mut v,
            endpoint(
                FRONT,
                &id,
                "big",
                &format!("big.{}.{id}", i + 1),
                &format!("10.0.1.{}", 100 + i),
                true,
            ),
        );
    }
    v
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    view: ViewHandle,
    server: DnsServer,
    _dnsmasq: Dnsmasq,
    netns_dir: tempfile::TempDir,
    _conf_dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        assert_root();
        let dnsmasq = start_dnsmasq();
        let conf_dir = tempfile::tempdir().unwrap();
        let resolv = conf_dir.path().join("resolv.conf");
        std::fs::write(&resolv, "search example.org\nnameserver 127.0.0.1\n").unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let view = ViewHandle::default();
        view.apply(NetworkStateMessage {
            r#type: network_state_message::Type::Complete as i32,
            changes: vec![],
            ..Default::default()
        });
        let v = e2e_view();
        view.apply(full_message(&v));
        let server = DnsServer::new(
            DnsConfig {
                forward: ForwardConfig {
                    resolv_conf: resolv,
                    port: dnsmasq.port,
                    ..Default::default()
                },
                ..Default::default()
            },
            &view,
        )
        .expect("server");
        Fixture {
            rt,
            view,
            server,
            _dnsmasq: dnsmasq,
            netns_dir: tempfile::tempdir().unwrap(),
            _conf_dir: conf_dir,
        }
    }

    fn task(&self, id: &str, nets: &[&str]) -> (PathBuf, TaskDns) {
        let p = crate::netns::create(self.netns_dir.path(), id).expect("netns");
        let t = self
            .rt
            .block_on(
                self.server
                    .serve_task(id, &p, nets.iter().map(|s| s.to_string()).collect()),
            )
            .expect("serve_task");
        assert_ne!(t.udp_port, 0);
        assert_ne!(t.tcp_port, 0);
        (p, t)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for id in crate::netns::list(self.netns_dir.path()) {
            let _ = crate::netns::remove(&self.netns_dir.path().join(id));
        }
    }
}

/// A COMPLETE message carrying all of `v`.
fn full_message(v: &crate::network::view::NetworkView) -> NetworkStateMessage {
    let mut changes = Vec::new();
    for n in v.networks.values() {
        changes.push(Change::Network(n.clone()));
    }
    for s in v.services.values() {
        changes.push(Change::Service(s.clone()));
    }
    for e in v.endpoints.values() {
        changes.push(Change::Endpoint(e.clone()));
    }
    NetworkStateMessage {
        r#type: network_state_message::Type::Complete as i32,
        changes: changes
            .into_iter()
            .map(|c| NetworkStateChange { change: Some(c) })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn dns_e2e_answers_in_the_task_namespace_over_udp_and_tcp() {
    let f = Fixture::new();
    let (ns, t) = f.task("e2e-task-a", &[FRONT, BACK]);

    // The listeners exist only inside the task's namespace.
    assert!(
        UdpSocket::bind((DNS_ADDR, t.udp_port)).is_ok(),
        "the node's namespace has no such socket"
    );

    let m = ask(&ns, t.udp_port, "web", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(a_of(&m), ips(&["10.0.1.2"]));
    assert!(m.answers.iter().all(|r| r.ttl == TTL));
    assert_eq!(m.answers[0].name.to_string(), "web.");

    let m = ask(&ns, t.udp_port, "TASKS.Web.", RecordType::A);
    assert_eq!(a_of(&m), ips(&["10.0.1.3", "10.0.1.4"]));
    let m = ask(&ns, t.udp_port, "db", RecordType::A);
    assert_eq!(a_of(&m), ips(&["10.0.2.3", "10.0.2.4"]));
    let m = ask(&ns, t.udp_port, "database", RecordType::A);
    assert_eq!(a_of(&m), ips(&["10.0.2.3", "10.0.2.4"]));
    let m = ask(&ns, t.udp_port, "www", RecordType::A);
    assert_eq!(a_of(&m), ips(&["10.0.1.2"]));
    let m = ask(&ns, t.udp_port, WEB1_NAME, RecordType::A);
    assert_eq!(a_of(&m), ips(&["10.0.1.3"]));
    let m = ask(&ns, t.udp_port, "multi.back", RecordType::A);
    assert_eq!(a_of(&m), ips(&["10.0.2.20"]));

    // dnsrr answers rotate between questions.
    let first: Vec<String> = (0..4)
        .map(|_| {
            let m = ask(&ns, t.udp_port, "db", RecordType::A);
            m.answers[0].data.to_string()
        })
        .collect();
    assert!(
        first.iter().any(|x| x != &first[0]),
        "same first answer every time: {first:?}"
    );

    // PTR of a task and of a VIP.
    let m = ask(&ns, t.udp_port, "3.1.0.10.in-addr.arpa", RecordType::PTR);
    let ptrs: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(ptrs, vec![format!("{WEB1_NAME}.front.")]);
    let m = ask(&ns, t.udp_port, "2.1.0.10.in-addr.arpa", RecordType::PTR);
    let ptrs: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(ptrs, vec!["web.front.".to_string()]);
    let m = ask(&ns, t.udp_port, "77.1.0.10.in-addr.arpa", RecordType::PTR);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    // SRV with the targets' addresses in the additional section.
    let m = ask(&ns, t.udp_port, "_http._tcp.web", RecordType::SRV);
    let mut srv: Vec<(u16, String)> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.port, s.target.to_string())),
            _ => None,
        })
        .collect();
    srv.sort();
    assert_eq!(
        srv,
        vec![(80, format!("{WEB1_NAME}.")), (80, format!("{WEB2_NAME}."))]
    );
    let mut add: Vec<(String, String)> = m
        .additionals
        .iter()
        .map(|r| (r.name.to_string(), r.data.to_string()))
        .collect();
    add.sort();
    assert_eq!(
        add,
        vec![
            (format!("{WEB1_NAME}."), "10.0.1.3".to_string()),
            (format!("{WEB2_NAME}."), "10.0.1.4".to_string())
        ]
    );

    // NODATA: a known name, a type we have nothing for.
    for ty in [RecordType::AAAA, RecordType::MX] {
        let m = ask(&ns, t.udp_port, "web", ty);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{ty}");
        assert!(m.answers.is_empty(), "{ty}");
    }

    // Scoping: `secret` is on a network the task is not on. Not answered from the index
    // (10.0.3.2): forwarded, and dnsmasq has its own answer for it.
    let m = ask(&ns, t.udp_port, "secret", RecordType::A);
    assert_eq!(a_of(&m), ips(&["10.9.9.9"]));

    // Forwarding to the node's resolver, over UDP and TCP; unknown names get its NXDOMAIN.
    let m = ask(&ns, t.udp_port, "www.example.test", RecordType::A);
    assert_eq!(a_of(&m), ips(&["192.0.2.7"]));
    let m = ask_tcp(&ns, t.tcp_port, "example.test", RecordType::A);
    assert_eq!(a_of(&m), ips(&["192.0.2.7"]));
    let m = ask(&ns, t.udp_port, "nowhere.invalid", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    // An upstream answer truncated over UDP: asked again over TCP, too big for the client's
    // 512 bytes, so the truncated one is relayed; the client's TCP retry gets it whole.
    let m = ask(&ns, t.udp_port, "many.hosts", RecordType::A);
    assert!(m.metadata.truncation, "TC of the upstream's answer lost");
    assert_eq!(m.answers.len(), 30);
    let m = ask_tcp(&ns, t.tcp_port, "many.hosts", RecordType::A);
    assert_eq!(m.answers.len(), 60);
    let q = query("many.hosts", RecordType::A, true);
    let port = t.udp_port;
    let m = in_netns(&ns, move || {
        udp_exchange(port, "127.0.0.11", &q, Duration::from_secs(5)).expect("EDNS question")
    });
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);

    // Local answers over TCP.
    let m = ask_tcp(&ns, t.tcp_port, "web", RecordType::A);
    assert_eq!(a_of(&m), ips(&["10.0.1.2"]));

    // 60 addresses do not fit in 512 bytes: truncated over UDP, whole over TCP.
    let m = ask(&ns, t.udp_port, "big", RecordType::A);
    assert!(m.metadata.truncation, "TC not set");
    assert!(m.answers.len() < 60 && !m.answers.is_empty());
    let m = ask_tcp(&ns, t.tcp_port, "big", RecordType::A);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
    // With EDNS the client takes up to 1232 bytes over UDP: everything fits.
    let q = query("big", RecordType::A, true);
    let port = t.udp_port;
    let m = in_netns(&ns, move || {
        udp_exchange(port, "127.0.0.11", &q, Duration::from_secs(5)).expect("EDNS question")
    });
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
    assert!(m.edns.is_some(), "no OPT in the answer to an EDNS question");

    let metrics = swarm_common::metrics::encode();
    for r in ["local", "nodata", "nxdomain", "forwarded"] {
        assert!(
            metrics.contains(&format!("swarm_dns_queries_total{{result=\"{r}\"}}")),
            "{r} missing from:\n{metrics}"
        );
    }
    assert!(metrics.contains("swarm_dns_forward_seconds_bucket"));
}

#[test]
fn dns_e2e_scope_follows_the_task_networks_and_the_view() {
    let f = Fixture::new();
    let (ns, t) = f.task("e2e-task-b", &[FRONT]);
    assert!(matches!(
        f.rt.block_on(f.server.serve_task("e2e-task-b", &ns, vec![])),
        Err(DnsError::AlreadyServed { .. })
    ));

    assert_eq!(
        a_of(&ask(&ns, t.udp_port, "secret", RecordType::A)),
        ips(&["10.9.9.9"]),
        "forwarded before the task joins the network"
    );
    assert!(f
        .server
        .update_task_networks("e2e-task-b", vec![FRONT.into(), OTHER.into()]));
    assert!(!f.server.update_task_networks("no-such-task", vec![]));
    assert_eq!(
        a_of(&ask(&ns, t.udp_port, "secret", RecordType::A)),
        ips(&["10.0.3.2"])
    );

    // An internal-only task gets no external names: NXDOMAIN, nothing forwarded.
    let (ns2, t2) = f.task("e2e-task-c", &[OTHER]);
    let m = ask(&ns2, t2.udp_port, "example.test", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.answers.is_empty());
    assert_eq!(
        a_of(&ask(&ns2, t2.udp_port, "secret", RecordType::A)),
        ips(&["10.0.3.2"])
    );
    assert_eq!(
        ask(&ns2, t2.udp_port, "web", RecordType::A)
            .metadata
            .response_code,
        ResponseCode::NXDomain,
        "web is on front, which the internal task is not on"
    );

    // A new serving task in the view shows up in tasks.web.
    f.view.apply(NetworkStateMessage {
        r#type: network_state_message::Type::Incremental as i32,
        changes: vec![NetworkStateChange {
            change: Some(Change::Endpoint(endpoint(
                FRONT,
                "w4zzzzzzzzzzzzzzzzzzzzzzz",
                "web",
                "web.4.w4zzzzzzzzzzzzzzzzzzzzzzz",
                "10.0.1.6",
                true,
            ))),
        }],
        ..Default::default()
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = a_of(&ask(&ns, t.udp_port, "tasks.web", RecordType::A));
        if got == ips(&["10.0.1.3", "10.0.1.4", "10.0.1.6"]) {
            break;
        }
        assert!(Instant::now() < deadline, "view change not seen: {got:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn dns_e2e_malformed_input_and_drop_of_the_listeners() {
    let f = Fixture::new();
    let (ns, t) = f.task("e2e-task-d", &[FRONT]);
    let port = t.udp_port;
    let tcp_port = t.tcp_port;
    let got = in_netns(&ns, move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s.connect((DNS_ADDR, port)).unwrap();
        let mut buf = [0u8; 4096];
        // Too short: no answer at all.
        s.send(&[1, 2, 3]).unwrap();
        assert!(s.recv(&mut buf).is_err(), "answered a 3-byte message");
        // A header with no question: FORMERR with the same id.
        s.send(&[0xbe, 0xef, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        let n = s.recv(&mut buf).expect("FORMERR");
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.metadata.id, 0xbeef);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // Garbage of every size.
        for i in 0..300usize {
            let g: Vec<u8> = (0..(i % 70)).map(|j| (i * 31 + j * 7) as u8).collect();
            s.send(&g).unwrap();
        }
        // TCP: a length prefix announcing more than is sent, then a hang-up.
        {
            use std::io::Write;
            let mut c = TcpStream::connect((DNS_ADDR, tcp_port)).unwrap();
            c.write_all(&[0x10, 0x00, 1, 2, 3]).unwrap();
        }
        // Still serving. The burst may have filled the socket's queue (the kernel then drops
        // datagrams): ask again as resolvers do.
        let q = query("web", RecordType::A, false);
        (0..10)
            .find_map(|_| udp_exchange(port, "127.0.0.11", &q, Duration::from_millis(500)).ok())
            .expect("no answer after the garbage")
    });
    assert_eq!(a_of(&got), ips(&["10.0.1.2"]));
    let m = ask_tcp(&ns, t.tcp_port, "web", RecordType::A);
    assert_eq!(a_of(&m), ips(&["10.0.1.2"]));

    // Dropping the TaskDns closes both listeners.
    drop(t);
    let closed = in_netns(&ns, move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let udp_gone = udp_exchange(
                port,
                "127.0.0.11",
                &query("web", RecordType::A, false),
                Duration::from_millis(200),
            )
            .is_err();
            let tcp_gone = TcpStream::connect((DNS_ADDR, tcp_port)).is_err();
            if udp_gone && tcp_gone {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert!(
        closed,
        "listeners still answer after the TaskDns was dropped"
    );
    // And the task can be served again.
    let t =
        f.rt.block_on(f.server.serve_task("e2e-task-d", &ns, vec![FRONT.into()]))
            .expect("serve again");
    assert_eq!(
        a_of(&ask(&ns, t.udp_port, "web", RecordType::A)),
        ips(&["10.0.1.2"])
    );
}

#[test]
fn dns_e2e_no_upstream_is_servfail_and_a_missing_namespace_an_error() {
    assert_root();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let conf = tempfile::tempdir().unwrap();
    let resolv = conf.path().join("resolv.conf");
    std::fs::write(&resolv, "# nothing\n").unwrap();
    let view = ViewHandle::default();
    view.apply(full_message(&sample_view()));
    // Made outside any runtime: the server has its own thread.
    let server = DnsServer::new(
        DnsConfig {
            forward: ForwardConfig {
                resolv_conf: resolv,
                ..Default::default()
            },
            ..Default::default()
        },
        &view,
    )
    .unwrap();
    assert!(server.upstreams().is_empty());
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let e = rt
        .block_on(server.serve_task("t-missing", &missing, vec![]))
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, DnsError::Netns { .. }), "{msg}");
    assert!(msg.contains("t-missing") && msg.contains("nope"), "{msg}");

    let ns = crate::netns::create(dir.path(), "t-none").unwrap();
    let t = rt
        .block_on(server.serve_task("t-none", &ns, vec![FRONT.into()]))
        .unwrap();
    let m = ask(&ns, t.udp_port, "example.test", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(
        a_of(&ask(&ns, t.udp_port, "web", RecordType::A)),
        ips(&["10.0.1.2"])
    );
    drop(t);
    crate::netns::remove(&ns).unwrap();
    drop(server);
}

#[test]
fn dns_e2e_a_burst_of_questions_is_not_dropped() {
    let f = Fixture::new();
    let (ns, t) = f.task("e2e-task-e", &[FRONT]);
    let port = t.udp_port;
    let answered = in_netns(&ns, move || {
        use std::os::fd::AsRawFd;
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Our own side must not be what drops the answers.
        let size: libc::c_int = 8 << 20;
        // SAFETY: setsockopt on a valid socket with a pointer to a c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
        s.connect((DNS_ADDR, port)).unwrap();
        // An application resolving 600 names at once.
        for _ in 0..600 {
            s.send(&query("tasks.web", RecordType::A, false)).unwrap();
        }
        s.set_read_timeout(Some(Duration::from_millis(1000)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let mut n = 0;
        while s.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    });
    assert_eq!(answered, 600, "questions of a burst were dropped");
}
