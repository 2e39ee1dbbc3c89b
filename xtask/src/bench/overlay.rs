//! `cargo xtask bench overlay`: a task on node A talking to a task on node B.
//!
//! Two topologies of the same shape (`testbed::Topology`: two node namespaces on an underlay
//! bridge, MTU 1500; a task namespace per node, eth0 MTU 1450, 10.0.1.2 on A and 10.0.1.3 on
//! B), built side by side and measured alternately (the order flips every round):
//!
//! - ours: `Networking` on each node (the real eBPF programs: `from_container` on the task's
//!   host-side veth, the metadata-mode VXLAN device on UDP 4789 with `from_overlay`);
//! - peer, Docker's overlay layout: per node a Linux bridge `br0`, a kernel VXLAN device
//!   (`vxlan id 4096 dstport 4790 local <node> nolearning proxy`, MTU 1450) on it, the task's
//!   veth on it, and the remote task programmed statically as Docker's overlay driver does
//!   (an fdb entry: its MAC → the remote node; a neighbour entry answered by the VXLAN
//!   device's ARP proxy).
//!
//! Per round and data plane: iperf3, one TCP stream B ← A for `--secs` (the first second
//! omitted: slow start), and sockperf TCP ping-pong with 64-byte messages for `--secs`
//! (full round trips, p50 and p99).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use swarm_agent::network::testbed::{self, endpoint_info, network_info, task, Topology};
use swarm_agent::network::view::ViewHandle;
use swarm_agent::network::{Networking, NetworkingConfig, DEFAULT_MTU, DEFAULT_VXLAN_PORT};

use super::cpu::{pinned, Cpu};
use super::process::{output_in, wait_listening, Proc};
use super::report::{median, ratio, spread, verdict};

const VNI: u32 = 4096;
const SUBNET: &str = "10.0.1.0/24";
const A_TASK: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const B_TASK: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 3);
/// The peer's VXLAN port (ours is Docker's 4789): nothing is shared between the two.
const PEER_VXLAN_PORT: u16 = 4790;
const IPERF_PORT: u16 = 5201;
const SOCKPERF_PORT: u16 = 11111;

/// One side of the comparison: two task namespaces that reach each other, and the servers
/// running in B's.
struct Bed {
    name: &'static str,
    a_task: PathBuf,
    b_task: PathBuf,
    _servers: Vec<Proc>,
    /// Dropped before the topology (their programs and maps go with its pins).
    _nodes: Vec<Arc<Networking>>,
    _topo: Topology,
}

fn mac(a: Ipv4Addr) -> String {
    let o = a.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

fn run_in(ns: &Path, args: &[&str]) -> anyhow::Result<()> {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    output_in(cmd, ns, None, b"", Duration::from_secs(10))
        .with_context(|| format!("{} in {}", args.join(" "), ns.display()))?;
    Ok(())
}

fn start_servers(b_task: &Path, cpu: Cpu) -> anyhow::Result<Vec<Proc>> {
    let b = B_TASK.to_string();
    let mut iperf = Command::new("iperf3");
    iperf.args(["-s", "-B", &b, "-p", &IPERF_PORT.to_string()]);
    let mut sockperf = Command::new("sockperf");
    sockperf.args([
        "server",
        "--tcp",
        "-i",
        &b,
        "-p",
        &SOCKPERF_PORT.to_string(),
    ]);
    let servers = vec![
        Proc::spawn("iperf3 -s", pinned(iperf, cpu), b_task, None)?,
        Proc::spawn("sockperf server", pinned(sockperf, cpu), b_task, None)?,
    ];
    wait_listening(b_task, IPERF_PORT)?;
    wait_listening(b_task, SOCKPERF_PORT)?;
    Ok(servers)
}

fn ours(cpu: Cpu) -> anyhow::Result<Bed> {
    let mut topo = Topology::new("swbo")?;
    let (a_dir, b_dir) = (topo.bpf_dir("a"), topo.bpf_dir("b"));
    let (a_ip, b_ip) = (topo.underlay_ip(1), topo.underlay_ip(2));
    let msg = testbed::complete(
        vec![network_info("ov", VNI, SUBNET, false)],
        vec![
            endpoint_info("ta", "ov", &A_TASK.to_string(), "A", &a_ip.to_string()),
            endpoint_info("tb", "ov", &B_TASK.to_string(), "B", &b_ip.to_string()),
        ],
        vec![],
    );
    let a_task = topo.task_netns("ta")?;
    let b_task = topo.task_netns("tb")?;
    let mut nodes = Vec::new();
    for (id, ns, dir, addr, t, t_ns, cidr) in [
        ("A", "n1", a_dir, a_ip, "ta", &a_task, A_TASK),
        ("B", "n2", b_dir, b_ip, "tb", &b_task, B_TASK),
    ] {
        let view = ViewHandle::default();
        view.apply(msg.clone());
        let task = task(t, &[("ov", &format!("{cidr}/24"))]);
        let tc_attach = testbed::tc_attach()?;
        let t_ns = t_ns.clone();
        let n = testbed::in_ns(&topo.ns_path(ns), move || async move {
            let n = Networking::new(
                NetworkingConfig {
                    bpf_dir: dir,
                    cgroup_dir: None,
                    resolv_conf: "/etc/resolv.conf".into(),
                    tc_attach,
                    lb: swarm_agent::network::ServiceLb::Ebpf,
                    ingress_sbox_dir: None,
                },
                view,
            );
            n.start(id, addr, DEFAULT_VXLAN_PORT).await?;
            n.attach(&task, &t_ns).await?;
            Ok::<_, swarm_agent::network::NetworkError>(n)
        })?
        .with_context(|| format!("our data plane on node {id}"))?;
        nodes.push(n);
    }
    let servers = start_servers(&b_task, cpu)?;
    Ok(Bed {
        name: "ours",
        a_task,
        b_task,
        _servers: servers,
        _nodes: nodes,
        _topo: topo,
    })
}

/// One node of Docker's overlay layout in the node namespace `node`.
fn docker_node(
    node: &str,
    local: Ipv4Addr,
    task_ns: &Path,
    task_ip: Ipv4Addr,
    remote: Ipv4Addr,
    remote_task: Ipv4Addr,
) -> anyhow::Result<()> {
    let mtu = DEFAULT_MTU.to_string();
    let ip = |args: &[&str]| -> anyhow::Result<()> {
        let mut all = vec!["ip", "-n", node];
        all.extend_from_slice(args);
        testbed::run(&all)?;
        Ok(())
    };
    ip(&["link", "add", "br0", "type", "bridge"])?;
    ip(&[
        "link",
        "add",
        "vx0",
        "mtu",
        &mtu,
        "type",
        "vxlan",
        "id",
        &VNI.to_string(),
        "dstport",
        &PEER_VXLAN_PORT.to_string(),
        "local",
        &local.to_string(),
        "nolearning",
        "proxy",
    ])?;
    ip(&["link", "set", "vx0", "master", "br0", "up"])?;
    let task_path = task_ns.display().to_string();
    ip(&[
        "link", "add", "vt0", "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "netns",
        &task_path,
    ])?;
    ip(&["link", "set", "vt0", "master", "br0", "up"])?;
    ip(&["link", "set", "br0", "up"])?;
    // The remote task, as Docker's overlay driver programs a peer: its MAC behind the remote
    // node's VTEP, and its address for the VXLAN device's ARP proxy.
    testbed::run(&[
        "bridge",
        "-n",
        node,
        "fdb",
        "add",
        &mac(remote_task),
        "dev",
        "vx0",
        "dst",
        &remote.to_string(),
        "self",
        "permanent",
    ])?;
    ip(&[
        "neigh",
        "add",
        &remote_task.to_string(),
        "lladdr",
        &mac(remote_task),
        "dev",
        "vx0",
        "nud",
        "permanent",
    ])?;
    // The task side, as our plumbing makes it (Docker's MAC, no IPv6).
    run_in(
        task_ns,
        &["ip", "link", "set", "eth0", "address", &mac(task_ip)],
    )?;
    run_in(
        task_ns,
        &["sysctl", "-q", "-w", "net.ipv6.conf.eth0.disable_ipv6=1"],
    )?;
    run_in(
        task_ns,
        &["ip", "addr", "add", &format!("{task_ip}/24"), "dev", "eth0"],
    )?;
    run_in(task_ns, &["ip", "link", "set", "eth0", "up"])?;
    Ok(())
}

fn peer(cpu: Cpu) -> anyhow::Result<Bed> {
    let topo = Topology::new("swbp")?;
    let (a_ip, b_ip) = (topo.underlay_ip(1), topo.underlay_ip(2));
    let a_task = topo.task_netns("ta")?;
    let b_task = topo.task_netns("tb")?;
    docker_node(&topo.ns("n1"), a_ip, &a_task, A_TASK, b_ip, B_TASK)
        .context("Docker's layout on node A")?;
    docker_node(&topo.ns("n2"), b_ip, &b_task, B_TASK, a_ip, A_TASK)
        .context("Docker's layout on node B")?;
    let servers = start_servers(&b_task, cpu)?;
    Ok(Bed {
        name: "peer",
        a_task,
        b_task,
        _servers: servers,
        _nodes: Vec::new(),
        _topo: topo,
    })
}

/// Both sides reach each other (a few pings, so that ARP is done before measuring).
fn check(bed: &Bed) -> anyhow::Result<()> {
    for (from, to) in [(&bed.a_task, B_TASK), (&bed.b_task, A_TASK)] {
        let mut cmd = Command::new("ping");
        cmd.args(["-c", "3", "-i", "0.2", "-W", "2", "-M", "do", "-s", "1422"])
            .arg(to.to_string());
        output_in(cmd, from, None, b"", Duration::from_secs(10))
            .with_context(|| format!("{}: a full-size ping to {to} did not come back", bed.name))?;
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    gbps: f64,
    retransmits: f64,
    p50_us: f64,
    p99_us: f64,
}

fn json_number(v: &serde_json::Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

fn iperf(bed: &Bed, secs: u64, cpu: Cpu) -> anyhow::Result<(f64, f64)> {
    let mut cmd = Command::new("iperf3");
    cmd.args([
        "-c",
        &B_TASK.to_string(),
        "-p",
        &IPERF_PORT.to_string(),
        "-t",
        &secs.to_string(),
        "-O",
        "1",
        "-J",
    ]);
    let out = output_in(
        pinned(cmd, cpu),
        &bed.a_task,
        None,
        b"",
        Duration::from_secs(secs + 30),
    )
    .with_context(|| format!("{}: iperf3", bed.name))?;
    let v: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("{}: iperf3 -J output", bed.name))?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("{}: iperf3: {e}", bed.name);
    }
    let bps = json_number(&v, &["end", "sum_received", "bits_per_second"])
        .with_context(|| format!("{}: no end.sum_received in iperf3's output", bed.name))?;
    let retr = json_number(&v, &["end", "sum_sent", "retransmits"]).unwrap_or(0.0);
    Ok((bps / 1e9, retr))
}

/// sockperf's figure after `label` (`percentile 50.000 =`), colours stripped.
fn sockperf_value(out: &str, label: &str) -> Option<f64> {
    out.lines().find_map(|l| {
        let i = l.find(label)?;
        let rest: String = l[i + label.len()..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ' ')
            .collect();
        rest.trim().parse().ok()
    })
}

fn sockperf(bed: &Bed, secs: u64, cpu: Cpu) -> anyhow::Result<(f64, f64)> {
    let mut cmd = Command::new("sockperf");
    cmd.args([
        "ping-pong",
        "--tcp",
        "-i",
        &B_TASK.to_string(),
        "-p",
        &SOCKPERF_PORT.to_string(),
        "-t",
        &secs.to_string(),
        "-m",
        "64",
        "--full-rtt",
    ]);
    let out = output_in(
        pinned(cmd, cpu),
        &bed.a_task,
        None,
        b"",
        Duration::from_secs(secs + 30),
    )
    .with_context(|| format!("{}: sockperf", bed.name))?;
    let p50 = sockperf_value(&out, "percentile 50.000 =");
    let p99 = sockperf_value(&out, "percentile 99.000 =");
    match (p50, p99) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => bail!("{}: no percentiles in sockperf's output:\n{out}", bed.name),
    }
}

pub fn run(rounds: usize, secs: u64, cpu: Cpu) -> anyhow::Result<()> {
    super::process::require_root()?;
    super::cpu::check_cpu(cpu)?;
    super::process::require_tools(&["iperf3", "sockperf", "ip", "bridge", "ss", "ping", "sysctl"])?;
    let rounds = rounds.max(1);
    let secs = secs.max(2);
    println!(
        "overlay benchmark: task on node A → task on node B, {rounds} rounds, alternating ours and the peer"
    );
    println!(
        "  iperf3: 1 TCP stream, {secs} s (+1 s omitted); sockperf: TCP ping-pong, 64 B, {secs} s, full round trips; {}",
        super::cpu::cpu_note(cpu)
    );
    let ours = ours(cpu).context("setting up our data plane")?;
    let peer = peer(cpu).context("setting up Docker's layout (bridge + kernel VXLAN)")?;
    check(&ours)?;
    check(&peer)?;
    eprintln!("  load average before: {}", super::report::loadavg());
    let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
    for r in 0..rounds {
        let order: [usize; 2] = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        let beds = [&ours, &peer];
        let mut s = [Sample::default(); 2];
        for &i in &order {
            let (g, retr) = iperf(beds[i], secs, cpu)?;
            s[i].gbps = g;
            s[i].retransmits = retr;
        }
        for &i in &order {
            let (p50, p99) = sockperf(beds[i], secs, cpu)?;
            s[i].p50_us = p50;
            s[i].p99_us = p99;
        }
        for i in 0..2 {
            eprintln!(
                "  round {}: {:<4} {:>7.2} Gbit/s ({:>5} retransmits), RR p50 {:>7.2} µs, p99 {:>7.2} µs",
                r + 1,
                beds[i].name,
                s[i].gbps,
                s[i].retransmits,
                s[i].p50_us,
                s[i].p99_us
            );
            samples[i].push(s[i]);
        }
        eprintln!("  load average: {}", super::report::loadavg());
    }

    let col = |i: usize, f: fn(&Sample) -> f64| -> Vec<f64> { samples[i].iter().map(f).collect() };
    type Metric = (&'static str, fn(&Sample) -> f64, bool, f64);
    let metrics: [Metric; 3] = [
        ("throughput Gbit/s", |s| s.gbps, true, 1.0),
        ("RR latency p50 µs", |s| s.p50_us, false, 1.0),
        ("RR latency p99 µs", |s| s.p99_us, false, 1.0),
    ];
    println!();
    println!(
        "{:<20} {:>10} {:>8} {:>10} {:>8} {:>10}  TARGET",
        "MEDIAN", "OURS", "SPREAD", "PEER", "SPREAD", "OURS/PEER"
    );
    for (name, f, higher_better, target) in metrics {
        let (o, p) = (col(0, f), col(1, f));
        let r = ratio(median(&o), median(&p));
        let ok = if higher_better {
            r >= target
        } else {
            r <= target
        };
        println!(
            "{:<20} {:>10.2} {:>7.0}% {:>10.2} {:>7.0}% {:>10.3}  {} {:.2}: {}",
            name,
            median(&o),
            spread(&o),
            median(&p),
            spread(&p),
            r,
            if higher_better { "≥" } else { "≤" },
            target,
            verdict(ok)
        );
    }
    let retr = |i: usize| median(&col(i, |s| s.retransmits));
    println!(
        "(spread = (max − min) / median over the rounds; iperf3 retransmits, median: ours {:.0}, peer {:.0}; peer = Linux bridge + kernel VXLAN, Docker's overlay layout)",
        retr(0),
        retr(1)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sockperf_percentiles() {
        let out = "sockperf: ---> percentile 99.000 =    5.766\n\
                   sockperf: ---> percentile 50.000 =    4.681\n";
        assert_eq!(sockperf_value(out, "percentile 50.000 ="), Some(4.681));
        assert_eq!(sockperf_value(out, "percentile 99.000 ="), Some(5.766));
        assert_eq!(sockperf_value(out, "percentile 75.000 ="), None);
        assert_eq!(mac(A_TASK), "02:42:0a:00:01:02");
    }
}
