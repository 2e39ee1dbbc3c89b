//! `cargo xtask bench ingress`: connections through a published port (the routing mesh) from
//! a client outside the nodes, at 1 and 1 000 published ports (`--ports`), in one run.
//!
//! One `testbed::Topology` (nodes `n1`, `n2` on an underlay bridge) with two hosts added on
//! the same bridge: the client `cl` (.10) and the peer's node `k` (.3). Every address used
//! is inside these namespaces.
//!
//! Ours: `Networking` on `n1` and `n2` (`start` attaches `from_uplink` to each node's
//! underlay interface), both given the same hand-made view: the ingress network
//! (10.255.0.0/16, `ingress`), each node's own ingress endpoint (`node_ingress`: n1
//! 10.255.0.2, n2 10.255.0.3), and 2 × N services in endpoint mode vip, one TCP port each,
//! published in ingress mode with the client address not preserved:
//!
//! - `local`: N services (ports 20000 + i) whose one task is on n1 (task `tl`, 10.255.0.10,
//!   attached on n1): the ingress node serves the connection itself;
//! - `remote`: N services (ports 40000 + i) whose one task is on n2 (task `tr`, 10.255.0.11,
//!   attached on n2): the ingress node sends it across the VXLAN overlay.
//!
//! Both sets are in the view at once, so a node holds 2 × N published ports against the
//! peer's N (if anything, that is against us). The client connects to `<n1 underlay>:port`.
//!
//! - `task`, the limit the targets use ("connecting straight to the task"): the same server
//!   in a namespace of its own behind a veth on n1 (10.246.0.2), which the client reaches
//!   through a route via n1: n1's kernel forwards, no translation, no netfilter rule (n1 has
//!   none). That is a task reached without any routing mesh: a namespace crossing and a
//!   forward on its node, no more.
//! - `direct`, a stricter reference: the same server listening on n1's own underlay address (port 8080,
//!   in n1's namespace), the client connecting straight to it: no translation, no second
//!   namespace, only the node's kernel (and `from_uplink` letting the packet through, as it
//!   does for anything not published). A routing mesh can at best equal that. The task's
//!   address itself is no honest limit: from outside the cluster it is reachable only
//!   through our data plane (a node has no route to its tasks, `from_container` redirects
//!   into them, and a task's answer to an address outside the cluster would leave through
//!   the egress masquerade), so routing the task subnet via n1 would measure a path that
//!   does not exist, or not work at all.
//! - `nft`, the peer: kube-proxy's nftables mode on `k` for N NodePort services (ports
//!   20000 + i, the same numbers as ours; kube's default range 30000–32767 would not hold
//!   10 000), loaded with `nft -f`, in the shape kube-proxy writes (`table ip kube-proxy`:
//!   the `services` chain looks `ip daddr @nodeport-ips` up in the verdict map
//!   `service-nodeports` (`inet_proto . inet_service`), which jumps to the service's
//!   `external-…` chain (mark for masquerade, then its `service-…` chain: `numgen random`
//!   over the endpoint chains, `dnat to` the pod), the filter chains on `ct state new`, and
//!   `masquerade fully-random` in postrouting for marked connections: DNAT + SNAT +
//!   conntrack). The backend is a pod namespace behind a veth (10.244.0.2, k's side
//!   10.244.0.1, routed as a point-to-point CNI does), with the same server; its connections
//!   come from k's pod-side address, as ours come from n1's ingress address. k forwards
//!   (`ip_forward`), and conntrack keeps closed connections 1 s there, as in `bench lb`
//!   (with the defaults its table would fill at these rates).
//!
//! Each (scale, round) runs the modes in an order that rotates every round, each for
//! `--secs`, with the load generator of `bench lb` (`load_generator`: sequential connect →
//! request → response → close, the port drawn uniformly among all N for every connection) in
//! `cl`, each connect bounded by 2 s (a connection not answered by then counts as an error).
//! The server is the same [`Responder`] everywhere. Before the rounds of a scale every
//! target of every mode is probed once (connect within 1 s, answer within 2 s): a mode that
//! does not answer stops the run with the reason (`--modes` leaves modes out).
//!
//! Targets: ours-local ≥ 0.9 × task (and, stricter, × direct); ours (local: the backend on
//! the node the client connects to, as the peer's pod) ≥ 1.5 × nft at 1 000 ports.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use proto::NetworkStateMessage;
use swarm_agent::network::testbed::{
    self, complete, endpoint_info, ingress_network, node_ingress_endpoint, published_service, task,
    Topology,
};
use swarm_agent::network::view::ViewHandle;
use swarm_agent::network::{Networking, NetworkingConfig, DEFAULT_VXLAN_PORT};

use super::connections::ClientRun;
use super::cpu::Cpu;
use super::load_generator::{self, ClientResult};
use super::modes::BenchMode;
use super::process::{conntrack_count, output_in};
use super::report::{self, human, ratio, show, verdict, Samples};
use super::responder::Responder;

const NET: &str = "ingress";
const VNI: u32 = 4096;
const SUBNET: &str = "10.255.0.0/16";
const NODE1: &str = "n1";
const NODE2: &str = "n2";
const N1_INGRESS: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);
const N2_INGRESS: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 3);
/// The task of the `local` services (on n1) and of the `remote` ones (on n2).
const TL: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 10);
const TR: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 11);
/// Where every server listens (the tasks, n1 for `direct`, the peer's pod).
const TARGET_PORT: u16 = 8080;
const LOCAL_BASE: u16 = 20_000;
const REMOTE_BASE: u16 = 40_000;
/// Published ports per set (20000–29999 and 40000–49999).
pub const MAX_PORTS: usize = 10_000;
/// Addresses per /24 used for VIPs and cluster IPs (x.y.z.1 – x.y.z.250).
const PER_BLOCK: usize = 250;
/// Underlay host bytes of the added hosts.
const K_HOST: u8 = 3;
const CLIENT_HOST: u8 = 10;
/// The peer's pod network: k's side of the veth and the pod.
const POD_GW: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
/// The `task` mode's namespace behind a veth on n1 (n1's side, the namespace), routed by n1.
const ROUTED_GW: Ipv4Addr = Ipv4Addr::new(10, 246, 0, 1);
const ROUTED: Ipv4Addr = Ipv4Addr::new(10, 246, 0, 2);
/// kube-proxy's cluster CIDR (its local-traffic detector) and service CIDR.
const CLUSTER_CIDR: &str = "10.244.0.0/16";
const SERVICE_CIDR: &str = "172.30.0.0/16";
/// Conntrack timeouts (seconds) of closed connections on `k` (see `bench lb`: with the
/// defaults the table fills at these rates).
const CT_CLOSED_SECS: u32 = 1;
const PROBE_CONNECT: Duration = Duration::from_secs(1);
/// Each connection of the load generator (same in every mode): a connect that is not answered
/// within it counts as an error, so that a path that stops answering ends the run in time.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const PROBE_READ: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Local,
    Remote,
    Task,
    Direct,
    Nft,
}

impl BenchMode for Mode {
    const ALL: &'static [Mode] = &[
        Mode::Local,
        Mode::Remote,
        Mode::Task,
        Mode::Direct,
        Mode::Nft,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Local => "local",
            Mode::Remote => "remote",
            Mode::Task => "task",
            Mode::Direct => "direct",
            Mode::Nft => "nft",
        }
    }
}

impl Mode {
    fn ours(self) -> bool {
        matches!(self, Mode::Local | Mode::Remote)
    }
}

fn block_addr(a: u8, b: u8, first_block: usize, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        a,
        b,
        (first_block + i / PER_BLOCK) as u8,
        (1 + i % PER_BLOCK) as u8,
    )
}

/// VIP of the i-th `local` service (10.255.1.1 …) and `remote` one (10.255.101.1 …).
fn vip(mode: Mode, i: usize) -> Ipv4Addr {
    block_addr(10, 255, if mode == Mode::Remote { 101 } else { 1 }, i)
}

/// Cluster IP of the peer's i-th service (172.30.0.1 …).
fn cluster_ip(i: usize) -> Ipv4Addr {
    block_addr(172, 30, 0, i)
}

/// Published port (and the peer's NodePort) of the i-th service.
fn port(mode: Mode, i: usize) -> u16 {
    let base = if mode == Mode::Remote {
        REMOTE_BASE
    } else {
        LOCAL_BASE
    };
    base + i as u16
}

/// The view both nodes get: N services on each side.
fn view_msg(n: usize, n1: Ipv4Addr, n2: Ipv4Addr) -> NetworkStateMessage {
    let (a1, a2) = (n1.to_string(), n2.to_string());
    let mut eps = vec![
        node_ingress_endpoint(NODE1, NET, &N1_INGRESS.to_string(), &a1),
        node_ingress_endpoint(NODE2, NET, &N2_INGRESS.to_string(), &a2),
        endpoint_info("tl", NET, &TL.to_string(), NODE1, &a1),
        endpoint_info("tr", NET, &TR.to_string(), NODE2, &a2),
    ];
    let mut services = Vec::with_capacity(2 * n);
    for (mode, t, addr, node, node_addr) in [
        (Mode::Local, "tl", TL, NODE1, &a1),
        (Mode::Remote, "tr", TR, NODE2, &a2),
    ] {
        for i in 0..n {
            let (id, name) = (format!("svc-{}-{i}", mode.name()), format!("{t}{i}"));
            let mut e = endpoint_info(&format!("{t}-{i}"), NET, &addr.to_string(), node, node_addr);
            e.service_id = id.clone();
            e.service_name = name.clone();
            eps.push(e);
            services.push(published_service(
                &id,
                &name,
                NET,
                &format!("{}/16", vip(mode, i)),
                &[(u32::from(TARGET_PORT), u32::from(port(mode, i)))],
            ));
        }
    }
    complete(vec![ingress_network(NET, VNI, SUBNET)], eps, services)
}

/// kube-proxy's base table (sets, maps, base chains and their rules) in the form it writes
/// it, replaced at once: created if missing, deleted and made again in one transaction.
/// `@SERVICE_CIDR@` and `@NODE@` are filled in.
const NFT_BASE: &str = r#"add table ip kube-proxy
delete table ip kube-proxy
add table ip kube-proxy { comment "rules for kube-proxy" ; }
add set ip kube-proxy cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }
add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }
add map ip kube-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }
add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; }
add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; }
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }
add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }
add chain ip kube-proxy cluster-ips-check
add chain ip kube-proxy filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }
add chain ip kube-proxy filter-output-pre-dnat { type filter hook output priority -110 ; }
add chain ip kube-proxy filter-forward { type filter hook forward priority 0 ; }
add chain ip kube-proxy filter-input { type filter hook input priority 0 ; }
add chain ip kube-proxy filter-output { type filter hook output priority 0 ; }
add chain ip kube-proxy firewall-check
add chain ip kube-proxy mark-for-masquerade
add chain ip kube-proxy masquerading
add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }
add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add chain ip kube-proxy nodeport-endpoints-check
add chain ip kube-proxy reject-chain
add chain ip kube-proxy services
add chain ip kube-proxy service-endpoints-check
add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject
add rule ip kube-proxy cluster-ips-check ip daddr { @SERVICE_CIDR@ } drop
add rule ip kube-proxy filter-prerouting-pre-dnat ct state new jump firewall-check
add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check
add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check
add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check
add rule ip kube-proxy filter-input ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output-pre-dnat ct state new jump firewall-check
add rule ip kube-proxy filter-output ct state new jump cluster-ips-check
add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000
add rule ip kube-proxy masquerading mark and 0x4000 == 0 return
add rule ip kube-proxy masquerading mark set mark xor 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add rule ip kube-proxy nat-output jump services
add rule ip kube-proxy nat-postrouting jump masquerading
add rule ip kube-proxy nat-prerouting jump services
add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add rule ip kube-proxy reject-chain reject
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add element ip kube-proxy nodeport-ips { @NODE@ }
"#;

/// kube-proxy's nftables mode for `n` NodePort services (externalTrafficPolicy Cluster, one
/// endpoint each: the pod) on the node `node`, as `nft -f` input.
fn nft_rules(n: usize, node: Ipv4Addr) -> String {
    const T: &str = "ip kube-proxy";
    let mut s = String::with_capacity(1200 * n + NFT_BASE.len());
    s.push_str(
        &NFT_BASE
            .replace("@SERVICE_CIDR@", SERVICE_CIDR)
            .replace("@NODE@", &node.to_string()),
    );
    for i in 0..n {
        // kube-proxy's chain names: a hash, then namespace/service/protocol/port name.
        let svc = format!("{i:08X}-bench/s{i}/tcp/http");
        let (service, external) = (format!("service-{svc}"), format!("external-{svc}"));
        let endpoint = format!("endpoint-{svc}__{POD}/{TARGET_PORT}");
        let cip = cluster_ip(i);
        let node_port = port(Mode::Nft, i);
        s.push_str(&format!(
            "add chain {T} {service}\n\
             add chain {T} {external}\n\
             add chain {T} {endpoint}\n\
             add rule {T} {service} ip daddr {cip} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade\n\
             add rule {T} {service} numgen random mod 1 vmap {{ 0 : goto {endpoint} }}\n\
             add rule {T} {external} jump mark-for-masquerade\n\
             add rule {T} {external} goto {service}\n\
             add rule {T} {endpoint} ip saddr {POD} jump mark-for-masquerade\n\
             add rule {T} {endpoint} meta l4proto tcp dnat to {POD}:{TARGET_PORT}\n\
             add element {T} cluster-ips {{ {cip} }}\n\
             add element {T} service-ips {{ {cip} . tcp . 80 : goto {service} }}\n\
             add element {T} service-nodeports {{ tcp . {node_port} : goto {external} }}\n"
        ));
    }
    s
}

fn run_in(ns: &Path, args: &[&str]) -> anyhow::Result<()> {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    output_in(cmd, ns, None, b"", Duration::from_secs(10))
        .with_context(|| format!("{} in {}", args.join(" "), ns.display()))?;
    Ok(())
}

/// The kube-proxy table of the peer's node; deleted on drop.
struct Nft {
    ns: PathBuf,
}

impl Nft {
    fn load(&self, rules: &str) -> anyhow::Result<Duration> {
        let mut cmd = Command::new("nft");
        cmd.args(["-f", "-"]);
        let t0 = Instant::now();
        output_in(
            cmd,
            &self.ns,
            None,
            rules.as_bytes(),
            Duration::from_secs(300),
        )
        .with_context(|| format!("nft -f in {}", self.ns.display()))?;
        Ok(t0.elapsed())
    }
}

impl Drop for Nft {
    fn drop(&mut self) {
        let _ = self.load("add table ip kube-proxy\ndelete table ip kube-proxy\n");
    }
}

/// `Networking::run` of one node, on a thread inside the node's namespace; stopped on drop.
struct NodeLoop {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NodeLoop {
    fn start(net: Arc<Networking>, ns: &Path) -> anyhow::Result<NodeLoop> {
        let file = std::fs::File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with a descriptor we own.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = ready_tx.send(Err(std::io::Error::last_os_error()));
                return;
            }
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            rt.block_on(async move {
                tokio::select! {
                    _ = net.run() => {}
                    _ = rx => {}
                }
            })
        });
        let mut me = NodeLoop {
            stop: Some(tx),
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(me),
            Ok(Err(e)) => {
                me.stop = None;
                bail!("the run loop in {}: {e}", ns.display())
            }
            Err(_) => bail!("the run loop in {} did not start", ns.display()),
        }
    }
}

impl Drop for NodeLoop {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Everything of one run, dropped in this order: the run loops, the servers, the peer's
/// table, our data planes, the namespaces and pins.
struct Bed {
    _loops: Vec<NodeLoop>,
    _servers: Vec<Responder>,
    nft: Nft,
    nodes: Vec<(Arc<Networking>, ViewHandle)>,
    n1: Ipv4Addr,
    n2: Ipv4Addr,
    k: Ipv4Addr,
    client_ns: PathBuf,
    k_ns: PathBuf,
    _topo: Topology,
}

fn setup(cpu: Cpu) -> anyhow::Result<Bed> {
    let mut topo = Topology::new("swbi")?;
    let (n1, n2, k) = (
        topo.underlay_ip(1),
        topo.underlay_ip(2),
        topo.underlay_ip(K_HOST),
    );
    let client_ns = topo.add_host("cl", CLIENT_HOST)?;
    let k_ns = topo.add_host("k", K_HOST)?;
    let view = view_msg(0, n1, n2);

    // Ours: a data plane per node, the service's task attached on its node.
    let tl_ns = topo.task_netns("tl")?;
    let tr_ns = topo.task_netns("tr")?;
    let mut nodes = Vec::new();
    let mut loops = Vec::new();
    for (id, ns_name, addr, t, t_ns, t_addr) in [
        (NODE1, "n1", n1, "tl", &tl_ns, TL),
        (NODE2, "n2", n2, "tr", &tr_ns, TR),
    ] {
        let dir = topo.bpf_dir(ns_name);
        let handle = ViewHandle::default();
        handle.apply(view.clone());
        let v = handle.clone();
        let task = task(t, &[(NET, &format!("{t_addr}/16"))]);
        let t_ns = t_ns.clone();
        let tc_attach = testbed::tc_attach()?;
        let ns = topo.ns_path(ns_name);
        let net = testbed::in_ns(&ns, move || async move {
            let n = Networking::new(
                NetworkingConfig {
                    bpf_dir: dir,
                    cgroup_dir: None,
                    resolv_conf: "/etc/resolv.conf".into(),
                    tc_attach,
                    lb: swarm_agent::network::ServiceLb::Ebpf,
                    ingress_sbox_dir: None,
                },
                v,
            );
            n.start(id, addr, DEFAULT_VXLAN_PORT).await?;
            n.attach(&task, &t_ns).await?;
            Ok::<_, swarm_agent::network::NetworkError>(n)
        })?
        .with_context(|| format!("our data plane on {ns_name}"))?;
        loops.push(NodeLoop::start(net.clone(), &ns)?);
        nodes.push((net, handle));
    }

    // The peer: k forwards to a pod behind a veth, with conntrack's timeouts of `bench lb`.
    let pod_ns = topo.task_netns("kpod")?;
    let k_name = topo.ns("k");
    let pod_path = pod_ns.display().to_string();
    testbed::run(&[
        "ip", "-n", &k_name, "link", "add", "kv0", "type", "veth", "peer", "name", "eth0", "netns",
        &pod_path,
    ])?;
    testbed::run(&[
        "ip",
        "-n",
        &k_name,
        "addr",
        "add",
        &format!("{POD_GW}/24"),
        "dev",
        "kv0",
    ])?;
    testbed::run(&["ip", "-n", &k_name, "link", "set", "kv0", "up"])?;
    run_in(
        &pod_ns,
        &["ip", "addr", "add", &format!("{POD}/24"), "dev", "eth0"],
    )?;
    run_in(&pod_ns, &["ip", "link", "set", "eth0", "up"])?;
    run_in(
        &pod_ns,
        &["ip", "route", "add", "default", "via", &POD_GW.to_string()],
    )?;
    run_in(
        &k_ns,
        &[
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
            &format!("net.netfilter.nf_conntrack_tcp_timeout_close={CT_CLOSED_SECS}"),
            &format!("net.netfilter.nf_conntrack_tcp_timeout_time_wait={CT_CLOSED_SECS}"),
        ],
    )
    .context("forwarding and conntrack's timeouts on the peer's node")?;

    // `task`: a namespace behind a veth on n1, routed by n1's kernel (the client has a route
    // to it via n1): a task reached straight, without any translation.
    let routed_ns = topo.task_netns("routed")?;
    let n1_name = topo.ns("n1");
    let routed_path = routed_ns.display().to_string();
    testbed::run(&[
        "ip",
        "-n",
        &n1_name,
        "link",
        "add",
        "rv0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &routed_path,
    ])?;
    testbed::run(&[
        "ip",
        "-n",
        &n1_name,
        "addr",
        "add",
        &format!("{ROUTED_GW}/24"),
        "dev",
        "rv0",
    ])?;
    testbed::run(&["ip", "-n", &n1_name, "link", "set", "rv0", "up"])?;
    run_in(
        &routed_ns,
        &["ip", "addr", "add", &format!("{ROUTED}/24"), "dev", "eth0"],
    )?;
    run_in(&routed_ns, &["ip", "link", "set", "eth0", "up"])?;
    run_in(
        &routed_ns,
        &[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &ROUTED_GW.to_string(),
        ],
    )?;
    run_in(
        &topo.ns_path("n1"),
        &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
    )
    .context("forwarding on n1 (the task mode)")?;
    run_in(
        &client_ns,
        &[
            "ip",
            "route",
            "add",
            "10.246.0.0/24",
            "via",
            &n1.to_string(),
        ],
    )?;

    let node_ns = topo.ns_path("n1");
    let servers = vec![
        Responder::start(&routed_ns, SocketAddr::new(ROUTED.into(), TARGET_PORT), cpu)?,
        Responder::start(&tl_ns, SocketAddr::new(TL.into(), TARGET_PORT), cpu)?,
        Responder::start(&tr_ns, SocketAddr::new(TR.into(), TARGET_PORT), cpu)?,
        Responder::start(&node_ns, SocketAddr::new(n1.into(), TARGET_PORT), cpu)?,
        Responder::start(&pod_ns, SocketAddr::new(POD.into(), TARGET_PORT), cpu)?,
    ];
    Ok(Bed {
        _loops: loops,
        _servers: servers,
        nft: Nft { ns: k_ns.clone() },
        nodes,
        n1,
        n2,
        k,
        client_ns,
        k_ns,
        _topo: topo,
    })
}

/// Gives both nodes the view with `n` services per side: the time until both data planes
/// hold all 2 × N VIPs (None if they do not within a minute: the probes will tell).
fn sync(bed: &Bed, n: usize) -> anyhow::Result<Option<Duration>> {
    let msg = view_msg(n, bed.n1, bed.n2);
    let t0 = Instant::now();
    for (_, view) in &bed.nodes {
        view.apply(msg.clone());
    }
    let deadline = t0 + Duration::from_secs(60);
    for (net, _) in &bed.nodes {
        let dp = net.dataplane()?;
        while dp.service_count() != 2 * n {
            if Instant::now() > deadline {
                eprintln!(
                    "  warning: a node's data plane holds {} VIPs after 60 s, expected {}",
                    dp.service_count(),
                    2 * n
                );
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(Some(t0.elapsed()))
}

fn targets(bed: &Bed, mode: Mode, n: usize) -> Vec<SocketAddr> {
    match mode {
        Mode::Local | Mode::Remote => (0..n)
            .map(|i| SocketAddr::new(bed.n1.into(), port(mode, i)))
            .collect(),
        Mode::Task => vec![SocketAddr::new(ROUTED.into(), TARGET_PORT)],
        Mode::Direct => vec![SocketAddr::new(bed.n1.into(), TARGET_PORT)],
        Mode::Nft => (0..n)
            .map(|i| SocketAddr::new(bed.k.into(), port(mode, i)))
            .collect(),
    }
}

/// One probe connection: connect (bounded), request, the responder's answer (bounded).
fn probe_one(to: &SocketAddr, buf: &mut [u8]) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(to, PROBE_CONNECT).map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut => format!("no answer to connect within {PROBE_CONNECT:?}"),
        _ => format!("connect: {e}"),
    })?;
    let mut got = 0;
    let read = (|| -> std::io::Result<()> {
        s.set_read_timeout(Some(PROBE_READ))?;
        s.write_all(super::responder::REQUEST)?;
        while got < buf.len() {
            match s.read(&mut buf[got..])? {
                0 => break,
                n => got += n,
            }
        }
        load_generator::reset_on_close(&s)
    })();
    match read {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(format!("connected, but no answer within {PROBE_READ:?}"))
        }
        Err(e) => Err(format!("connected, then {e}")),
        Ok(()) if buf[..got] != *super::responder::RESPONSE => Err(format!(
            "answered {:?}, not the responder's answer",
            String::from_utf8_lossy(&buf[..got.min(60)])
        )),
        Ok(()) => Ok(()),
    }
}

/// Probes every target from the client's namespace, one at a time; the first that fails.
fn probe(ns: &Path, targets: Vec<SocketAddr>) -> anyhow::Result<Option<String>> {
    let file = std::fs::File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
    std::thread::spawn(move || -> anyhow::Result<Option<String>> {
        // SAFETY: setns on this thread only, with a descriptor we own.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "entering the client's namespace: {}",
                std::io::Error::last_os_error()
            );
        }
        let mut buf = [0u8; 512];
        for t in &targets {
            if let Err(e) = probe_one(t, &mut buf) {
                return Ok(Some(format!("{t}: {e}")));
            }
        }
        Ok(None)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
}

fn check_mode(bed: &Bed, mode: Mode, n: usize) -> anyhow::Result<()> {
    let Some(failure) = probe(&bed.client_ns, targets(bed, mode, n))? else {
        return Ok(());
    };
    if mode.ours() {
        let task_node = if mode == Mode::Remote {
            format!("n2 ({})", bed.n2)
        } else {
            format!("n1 ({})", bed.n1)
        };
        bail!(
            "mode {}: {failure}: nothing answers through the published ports of n1 ({}), whose \
             services' task is on {task_node}. This mode needs our routing mesh (published ports \
             handled from `from_uplink`) in the data plane; `--modes direct,nft` measures the others",
            mode.name(),
            bed.n1
        );
    }
    bail!(
        "mode {}: {failure}: the testbed does not work (this mode does not involve our data plane)",
        mode.name()
    )
}

fn measure(
    bed: &Bed,
    mode: Mode,
    n: usize,
    secs: f64,
    seed: u64,
    cpu: Cpu,
) -> anyhow::Result<ClientResult> {
    let list: String = targets(bed, mode, n)
        .iter()
        .map(|t| format!("{t}\n"))
        .collect();
    ClientRun {
        ns: &bed.client_ns,
        cgroup: None,
        targets: &list,
        secs,
        seed,
        connect_timeout: Some(CONNECT_TIMEOUT),
        requests: 1,
        cpu,
    }
    .run(&format!("mode {}, {n} ports", mode.name()))
}

/// The routing mesh's drops on both nodes, by reason, summed over every published port.
fn mesh_drops(bed: &Bed) -> Vec<(&'static str, u64)> {
    use swarm_agent::network::dataplane::port_stat;
    port_stat::DROPS
        .iter()
        .map(|&(i, name)| {
            let sum = bed
                .nodes
                .iter()
                .filter_map(|(net, _)| net.dataplane().ok())
                .flat_map(|dp| dp.port_stats().into_values())
                .map(|c| c[i])
                .sum();
            (name, sum)
        })
        .collect()
}

struct Scale {
    n: usize,
    sync: Option<Duration>,
    nft_load: Duration,
    samples: Samples<Mode>,
}

pub fn run(
    rounds: usize,
    secs: f64,
    scales: &[usize],
    cpu: Cpu,
    modes: &[String],
) -> anyhow::Result<()> {
    super::process::require_root()?;
    super::cpu::check_cpu(cpu)?;
    super::process::require_tools(&["nft", "ip", "sysctl"])?;
    let rounds = rounds.max(1);
    if !(secs > 0.0 && secs.is_finite()) {
        bail!("--secs must be positive");
    }
    let modes: Vec<Mode> = super::modes::parse_modes(modes)?;
    if scales.is_empty() || scales.iter().any(|n| *n == 0 || *n > MAX_PORTS) {
        bail!("--ports: counts between 1 and {MAX_PORTS}");
    }
    println!(
        "ingress benchmark: {rounds} rounds × {secs} s per mode and scale; from a client outside the nodes, sequential connect → {} B request → {} B response → close; each connection to a port drawn uniformly among all N",
        super::responder::REQUEST.len(),
        super::responder::RESPONSE.len()
    );
    println!(
        "  local/remote: our published ports on n1, the task on n1/n2; direct: the server on n1's own address; nft: kube-proxy-style nftables NodePorts (DNAT + masquerade + conntrack) on another node; {}",
        super::cpu::cpu_note(cpu)
    );
    let bed = setup(cpu).context("setting up the ingress testbed")?;
    let mut results: Vec<Scale> = Vec::new();
    let mut seed = 0x1a9e_5eed_u64;
    for &n in scales {
        let sync = sync(&bed, n).with_context(|| format!("giving the nodes {n} ports"))?;
        let nft_load = bed
            .nft
            .load(&nft_rules(n, bed.k))
            .with_context(|| format!("loading {n} kube-proxy NodePorts"))?;
        eprintln!(
            "  {n} ports: {} VIPs in both nodes' maps after {}; nft -f took {:.1} ms",
            2 * n,
            sync.map_or("-".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3)),
            nft_load.as_secs_f64() * 1e3
        );
        for &m in &modes {
            check_mode(&bed, m, n)?;
        }
        let samples = super::connections::run_rounds(
            rounds,
            &modes,
            &mut seed,
            &format!("{n} ports"),
            |mode, seed| {
                let before = mesh_drops(&bed);
                let res = measure(&bed, mode, n, secs, seed, cpu)?;
                let extra = if mode == Mode::Nft {
                    format!(", conntrack entries {}", conntrack_count(&bed.k_ns))
                } else {
                    let after = mesh_drops(&bed);
                    let d: Vec<String> = after
                        .iter()
                        .zip(before.iter())
                        .map(|((name, a), (_, b))| format!("{name} {}", a - b))
                        .collect();
                    format!(", mesh drops: {}", d.join(", "))
                };
                Ok((res, extra))
            },
        )?;
        results.push(Scale {
            n,
            sync,
            nft_load,
            samples,
        });
    }
    report(&results);
    Ok(())
}

fn report(results: &[Scale]) {
    use Mode::{Direct, Local, Nft, Remote, Task};
    report::modes_table("PORTS", 6, results.iter().map(|s| (s.n, &s.samples)));
    println!();
    println!(
        "{:>6}  {:>12} {:>11} {:>11} {:>12} {:>13} {:>14} {:>10} {:>11}",
        "PORTS",
        "OUR SYNC ms",
        "NFT LOAD ms",
        "LOCAL/TASK",
        "REMOTE/TASK",
        "LOCAL/DIRECT",
        "REMOTE/DIRECT",
        "LOCAL/NFT",
        "REMOTE/NFT"
    );
    for s in results {
        println!(
            "{:>6}  {:>12} {:>11.1} {:>11} {:>12} {:>13} {:>14} {:>10} {:>11}",
            human(s.n),
            s.sync
                .map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3)),
            s.nft_load.as_secs_f64() * 1e3,
            show(ratio(s.samples.rate(Local), s.samples.rate(Task)), 3),
            show(ratio(s.samples.rate(Remote), s.samples.rate(Task)), 3),
            show(ratio(s.samples.rate(Local), s.samples.rate(Direct)), 3),
            show(ratio(s.samples.rate(Remote), s.samples.rate(Direct)), 3),
            show(ratio(s.samples.rate(Local), s.samples.rate(Nft)), 2),
            show(ratio(s.samples.rate(Remote), s.samples.rate(Nft)), 2),
        );
    }
    println!("(ratios of median conn/s; OUR SYNC: from handing both nodes the view until all 2 × N VIPs are in their maps)");
    println!();
    println!("targets:");
    for s in results
        .iter()
        .filter(|s| s.samples.measured(Local) && s.samples.measured(Task))
    {
        let r = ratio(s.samples.rate(Local), s.samples.rate(Task));
        println!(
            "  {:>6} ports: ours-local ≥ 0.9 × straight to a task: {r:.3}: {}",
            human(s.n),
            verdict(r >= 0.9)
        );
    }
    for s in results
        .iter()
        .filter(|s| s.samples.measured(Local) && s.samples.measured(Direct))
    {
        let r = ratio(s.samples.rate(Local), s.samples.rate(Direct));
        println!(
            "  {:>6} ports: (stricter) ours-local ≥ 0.9 × a server on the node itself: {r:.3}: {}",
            human(s.n),
            verdict(r >= 0.9)
        );
    }
    let biggest = results.iter().max_by_key(|s| s.n);
    if let Some(s) = biggest.filter(|s| s.samples.measured(Local) && s.samples.measured(Nft)) {
        let r = ratio(s.samples.rate(Local), s.samples.rate(Nft));
        println!(
            "  {:>6} ports: ours-local ≥ 1.5 × nft (the target is at 1 000): {r:.2}: {}",
            human(s.n),
            verdict(r >= 1.5)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_ports_and_rules() {
        assert_eq!(vip(Mode::Local, 0), Ipv4Addr::new(10, 255, 1, 1));
        assert_eq!(vip(Mode::Remote, 0), Ipv4Addr::new(10, 255, 101, 1));
        assert_eq!(
            vip(Mode::Remote, MAX_PORTS - 1),
            Ipv4Addr::new(10, 255, 140, 250)
        );
        assert_eq!(cluster_ip(999), Ipv4Addr::new(172, 30, 3, 250));
        assert_eq!(port(Mode::Local, 0), 20_000);
        assert_eq!(port(Mode::Remote, MAX_PORTS - 1), 49_999);
        assert_eq!(port(Mode::Nft, 7), port(Mode::Local, 7));
        let r = nft_rules(2, Ipv4Addr::new(10, 99, 1, 3));
        assert!(r.contains("add element ip kube-proxy nodeport-ips { 10.99.1.3 }\n"));
        assert!(r.contains(
            "add element ip kube-proxy service-nodeports { tcp . 20001 : goto external-00000001-bench/s1/tcp/http }\n"
        ));
        assert_eq!(r.matches("dnat to 10.244.0.2:8080").count(), 2);
        let m = view_msg(3, Ipv4Addr::new(10, 99, 1, 1), Ipv4Addr::new(10, 99, 1, 2));
        let mut v = swarm_agent::network::view::NetworkView::default();
        v.apply(m);
        assert_eq!(v.services.len(), 6);
        assert_eq!(v.endpoints.len(), 4 + 6);
        assert!(v.networks.values().all(|n| n.ingress));
        assert_eq!(v.endpoints.values().filter(|e| e.node_ingress).count(), 2);
        assert!(v
            .services
            .values()
            .all(|s| s.ports.len() == 1 && s.ports[0].target_port == 8080));
    }
}
