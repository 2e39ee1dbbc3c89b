//! `cargo xtask bench lb`: connection rate and per-connection latency to a service, at 1,
//! 1 000 and 10 000 services (`--services`), in one run.
//!
//! One node (`n1` of a `testbed::Topology`) runs our data plane with the socket hooks on a
//! cgroup of its own; four tasks on one network (10.200.0.0/16) are attached to it: the
//! client `c`, the backends `w1` and `w2` (a minimal HTTP/1.0 server each, port 8080), and
//! `k`, the client of the iptables peer. Every service has one VIP (10.200.1.1, .2, …) and
//! the same two backends (endpoints of their own in the view, with w1's and w2's addresses).
//! Each (scale, round) runs three modes, in an order that rotates every round, each for
//! `--secs`, with the load generator (`load_generator`: sequential connect → request →
//! response → close, the target drawn uniformly among all N services for every connection):
//!
//! - `vip`: from `c`, in a cgroup below the one the hooks are attached to, to the VIPs;
//! - `direct`: the same client to w1's and w2's addresses (no VIP, no translation);
//! - `iptables`: from `k` (not in that cgroup), whose `nat` OUTPUT chain jumps to
//!   KUBE-SERVICES with one rule per service VIP (10.96.0.1, …) jumping to a per-service
//!   chain of `-m statistic --mode random` DNAT rules to w1 and w2, as kube-proxy's iptables
//!   mode writes them (loaded with iptables-restore; without the KUBE-SEP/masquerade chains,
//!   which only the chosen service's traversal would see).
//!
//! Before each scale the view is emptied and then given N services at once; the time until
//! the run loop (`Networking::run`) has written them all into the maps is reported as the
//! sync time.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use proto::NetworkStateMessage;
use swarm_agent::network::testbed::{
    self, complete, endpoint_info, network_info, task, vip_service, Cgroup, Topology,
};
use swarm_agent::network::view::ViewHandle;
use swarm_agent::network::{Networking, NetworkingConfig, DEFAULT_VXLAN_PORT};

use super::connections::ClientRun;
use super::cpu::Cpu;
use super::load_generator::ClientResult;
use super::modes::BenchMode;
use super::process::{conntrack_count, output_in};
use super::report::{self, human, ratio, show, verdict, Samples};
use super::responder::Responder;
use super::IptablesVariant;

/// The project's target for connections through a VIP against straight to the task, at
/// every service count.
const VIP_TARGET: f64 = 0.97;

const NET: &str = "lb";
const VNI: u32 = 4200;
const SUBNET: &str = "10.200.0.0/16";
const C: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 10);
const W1: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 11);
const W2: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 12);
const K: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 13);
const PORT: u16 = 8080;
/// Addresses per /24 used for VIPs (x.y.z.1 – x.y.z.250).
const PER_BLOCK: usize = 250;
/// 10.200.1.0 – 10.200.200.255 for our VIPs, 10.96.0.0 – 10.96.199.255 for kube's.
pub const MAX_SERVICES: usize = 200 * PER_BLOCK;
/// Conntrack timeouts (seconds) of closed connections in the iptables client's namespace:
/// connections end every few tens of µs, and with the defaults (10 s after a reset, 120 s in
/// TIME_WAIT) the table would reach nf_conntrack_max. Shorter only means fewer entries.
const CT_CLOSED_SECS: u32 = 1;

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        10,
        200,
        (1 + i / PER_BLOCK) as u8,
        (1 + i % PER_BLOCK) as u8,
    )
}

fn kube_vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (i / PER_BLOCK) as u8, (1 + i % PER_BLOCK) as u8)
}

/// The network state of node A with `n` services.
fn view_msg(n: usize, node: Ipv4Addr) -> NetworkStateMessage {
    let node = node.to_string();
    let mut eps = vec![
        endpoint_info("c", NET, &C.to_string(), "A", &node),
        endpoint_info("w1", NET, &W1.to_string(), "A", &node),
        endpoint_info("w2", NET, &W2.to_string(), "A", &node),
        endpoint_info("k", NET, &K.to_string(), "A", &node),
    ];
    let mut services = Vec::with_capacity(n);
    for i in 0..n {
        let (id, name) = (format!("svc-{i}"), format!("s{i}"));
        for (t, a) in [("w1", W1), ("w2", W2)] {
            let mut e = endpoint_info(&format!("{t}-{i}"), NET, &a.to_string(), "A", &node);
            e.service_id = id.clone();
            e.service_name = name.clone();
            eps.push(e);
        }
        services.push(vip_service(&id, &name, NET, &format!("{}/16", vip(i))));
    }
    complete(vec![network_info(NET, VNI, SUBNET, false)], eps, services)
}

/// kube-proxy's iptables mode for `n` services, as iptables-restore input (nat table).
fn kube_rules(n: usize) -> String {
    let mut s = String::with_capacity(200 * n + 200);
    s.push_str("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n");
    for i in 0..n {
        s.push_str(&format!(":KUBE-SVC-{i} - [0:0]\n"));
    }
    s.push_str("-A OUTPUT -j KUBE-SERVICES\n");
    for i in 0..n {
        s.push_str(&format!(
            "-A KUBE-SERVICES -d {}/32 -p tcp -m tcp --dport {PORT} -j KUBE-SVC-{i}\n",
            kube_vip(i)
        ));
    }
    for i in 0..n {
        s.push_str(&format!(
            "-A KUBE-SVC-{i} -p tcp -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination {W1}:{PORT}\n\
             -A KUBE-SVC-{i} -p tcp -j DNAT --to-destination {W2}:{PORT}\n"
        ));
    }
    s.push_str("COMMIT\n");
    s
}

/// The nat table of the iptables client's namespace; emptied on drop.
struct Iptables {
    ns: PathBuf,
    variant: IptablesVariant,
}

impl Iptables {
    fn load(&self, rules: &str) -> anyhow::Result<Duration> {
        let mut cmd = Command::new(self.variant.restore());
        cmd.args(["-w", "10"]);
        let t0 = Instant::now();
        output_in(
            cmd,
            &self.ns,
            None,
            rules.as_bytes(),
            Duration::from_secs(300),
        )
        .with_context(|| format!("{} in {}", self.variant.restore(), self.ns.display()))?;
        Ok(t0.elapsed())
    }
}

impl Drop for Iptables {
    fn drop(&mut self) {
        let _ = self.load("*nat\nCOMMIT\n");
    }
}

/// `Networking::run` on a thread of its own, stopped on drop.
struct RunLoop {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunLoop {
    fn start(net: Arc<Networking>) -> anyhow::Result<RunLoop> {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a runtime for the run loop")?;
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                tokio::select! {
                    _ = net.run() => {}
                    _ = rx => {}
                }
            })
        });
        Ok(RunLoop {
            stop: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for RunLoop {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Everything of one run, dropped in this order: the run loop, the servers, the data plane,
/// the iptables rules, the cgroup, the namespaces and pins.
struct Bed {
    _run_loop: RunLoop,
    _servers: Vec<Responder>,
    net: Arc<Networking>,
    view: ViewHandle,
    node: Ipv4Addr,
    iptables: Iptables,
    c_ns: PathBuf,
    k_ns: PathBuf,
    client_cg: PathBuf,
    _cg: Cgroup,
    _topo: Topology,
}

fn setup(variant: IptablesVariant, cpu: Cpu) -> anyhow::Result<Bed> {
    let mut topo = Topology::new("swbl")?;
    let dir = topo.bpf_dir("a");
    let node = topo.underlay_ip(1);
    let cg = Cgroup::new(&format!("{}-a", topo.prefix()))?;
    let client_cg = cg.child("c")?;
    let view = ViewHandle::default();
    view.apply(view_msg(0, node));
    let mut tasks = Vec::new();
    for (id, a) in [("c", C), ("w1", W1), ("w2", W2), ("k", K)] {
        let ns = topo.task_netns(id)?;
        tasks.push((task(id, &[(NET, &format!("{a}/16"))]), ns));
    }
    let ns_of = |id: &str| {
        tasks
            .iter()
            .find(|(t, _)| t.id == id)
            .map(|(_, ns)| ns.clone())
            .unwrap_or_default()
    };
    let (c_ns, w1_ns, w2_ns, k_ns) = (ns_of("c"), ns_of("w1"), ns_of("w2"), ns_of("k"));
    let cfg = NetworkingConfig {
        bpf_dir: dir,
        cgroup_dir: Some(cg.path().to_path_buf()),
        resolv_conf: "/etc/resolv.conf".into(),
        tc_attach: testbed::tc_attach()?,
        lb: swarm_agent::network::ServiceLb::Ebpf,
        ingress_sbox_dir: None,
    };
    let v = view.clone();
    let net = testbed::in_ns(&topo.ns_path("n1"), move || async move {
        let n = Networking::new(cfg, v);
        n.start("A", node, DEFAULT_VXLAN_PORT).await?;
        for (t, ns) in &tasks {
            n.attach(t, ns).await?;
        }
        Ok::<_, swarm_agent::network::NetworkError>(n)
    })?
    .context("our data plane on node A")?;
    let run_loop = RunLoop::start(net.clone())?;
    let servers = vec![
        Responder::start(&w1_ns, SocketAddr::new(W1.into(), PORT), cpu)?,
        Responder::start(&w2_ns, SocketAddr::new(W2.into(), PORT), cpu)?,
    ];
    let mut sysctl = Command::new("sysctl");
    sysctl.args([
        "-q",
        "-w",
        &format!("net.netfilter.nf_conntrack_tcp_timeout_close={CT_CLOSED_SECS}"),
        &format!("net.netfilter.nf_conntrack_tcp_timeout_time_wait={CT_CLOSED_SECS}"),
    ]);
    output_in(sysctl, &k_ns, None, b"", Duration::from_secs(10))
        .context("setting conntrack's timeouts in the iptables client's namespace")?;
    Ok(Bed {
        _run_loop: run_loop,
        _servers: servers,
        net,
        view,
        node,
        iptables: Iptables {
            ns: k_ns.clone(),
            variant,
        },
        c_ns,
        k_ns,
        client_cg,
        _cg: cg,
        _topo: topo,
    })
}

/// Waits until the data plane holds exactly `n` load-balanced VIPs.
fn wait_services(bed: &Bed, n: usize, limit: Duration) -> anyhow::Result<()> {
    let dp = bed.net.dataplane()?;
    let deadline = Instant::now() + limit;
    loop {
        let have = dp.service_count();
        if have == n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the data plane holds {have} services after {limit:?}, expected {n}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Empties the view, then gives it `n` services at once: the time the view took to apply,
/// and the time until every VIP was in the maps.
fn sync(bed: &Bed, n: usize) -> anyhow::Result<(Duration, Duration)> {
    bed.view.apply(view_msg(0, bed.node));
    wait_services(bed, 0, Duration::from_secs(300))?;
    let msg = view_msg(n, bed.node);
    let t0 = Instant::now();
    bed.view.apply(msg);
    let applied = t0.elapsed();
    wait_services(bed, n, Duration::from_secs(600))?;
    Ok((applied, t0.elapsed()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Vip,
    Direct,
    Iptables,
}

impl BenchMode for Mode {
    const ALL: &'static [Mode] = &[Mode::Vip, Mode::Direct, Mode::Iptables];

    fn name(self) -> &'static str {
        match self {
            Mode::Vip => "vip",
            Mode::Direct => "direct",
            Mode::Iptables => "iptables",
        }
    }
}

fn targets(mode: Mode, n: usize) -> String {
    let list: Vec<Ipv4Addr> = match mode {
        Mode::Vip => (0..n).map(vip).collect(),
        Mode::Direct => vec![W1, W2],
        Mode::Iptables => (0..n).map(kube_vip).collect(),
    };
    list.iter().map(|a| format!("{a}:{PORT}\n")).collect()
}

fn measure(
    bed: &Bed,
    mode: Mode,
    n: usize,
    secs: f64,
    seed: u64,
    cpu: Cpu,
    requests: u32,
) -> anyhow::Result<ClientResult> {
    let (ns, cgroup): (&Path, Option<&Path>) = match mode {
        Mode::Vip | Mode::Direct => (&bed.c_ns, Some(&bed.client_cg)),
        Mode::Iptables => (&bed.k_ns, None),
    };
    ClientRun {
        ns,
        cgroup,
        targets: &targets(mode, n),
        secs,
        seed,
        connect_timeout: None,
        requests,
        cpu,
    }
    .run(&format!("mode {}, {n} services", mode.name()))
}

struct Scale {
    n: usize,
    apply: Duration,
    sync: Duration,
    ipt_load: Duration,
    samples: Samples<Mode>,
}

pub fn run(
    rounds: usize,
    secs: f64,
    scales: &[usize],
    variant: IptablesVariant,
    cpu: Cpu,
    modes: &[String],
    requests: u32,
) -> anyhow::Result<()> {
    super::process::require_root()?;
    super::cpu::check_cpu(cpu)?;
    super::process::require_tools(&[variant.restore(), "ip", "sysctl"])?;
    let rounds = rounds.max(1);
    if !(secs > 0.0 && secs.is_finite()) {
        bail!("--secs must be positive");
    }
    let modes: Vec<Mode> = super::modes::parse_modes(modes)?;
    if scales.is_empty() || scales.iter().any(|n| *n == 0 || *n > MAX_SERVICES) {
        bail!("--services: counts between 1 and {MAX_SERVICES}");
    }
    println!(
        "lb benchmark: {rounds} rounds × {secs} s per mode and scale; sequential connect → {requests} × ({} B request → {} B response) → close; each connection to a service drawn uniformly among all N",
        super::responder::REQUEST.len(),
        super::responder::RESPONSE.len()
    );
    println!(
        "  vip: our socket load balancer (client in the hooks' cgroup); direct: same client to the two task addresses; iptables: kube-proxy-style DNAT chains ({}); {}",
        variant.restore().trim_end_matches("-restore"),
        super::cpu::cpu_note(cpu)
    );
    let bed = setup(variant, cpu).context("setting up the lb testbed")?;
    let mut results: Vec<Scale> = Vec::new();
    let mut seed = 0x5eed_u64;
    for &n in scales {
        let (apply, sync) = sync(&bed, n).with_context(|| format!("syncing {n} services"))?;
        let ipt_load = bed
            .iptables
            .load(&kube_rules(n))
            .with_context(|| format!("loading {n} kube-proxy services"))?;
        eprintln!(
            "  {n} services: view applied in {:.1} ms, in our maps after {:.1} ms; iptables-restore took {:.1} ms",
            apply.as_secs_f64() * 1e3,
            sync.as_secs_f64() * 1e3,
            ipt_load.as_secs_f64() * 1e3
        );
        let samples = super::connections::run_rounds(
            rounds,
            &modes,
            &mut seed,
            &format!("{n} services"),
            |mode, seed| {
                let res = measure(&bed, mode, n, secs, seed, cpu, requests)?;
                let extra = if mode == Mode::Iptables {
                    format!(", conntrack entries {}", conntrack_count(&bed.k_ns))
                } else {
                    String::new()
                };
                Ok((res, extra))
            },
        )?;
        results.push(Scale {
            n,
            apply,
            sync,
            ipt_load,
            samples,
        });
    }
    report(&results);
    Ok(())
}

fn report(results: &[Scale]) {
    use Mode::{Direct, Iptables, Vip};
    report::modes_table("SERVICES", 8, results.iter().map(|s| (s.n, &s.samples)));
    println!();
    println!(
        "{:>8}  {:>12} {:>12} {:>11} {:>13} {:>15}",
        "SERVICES", "OUR SYNC ms", "IPT LOAD ms", "VIP/DIRECT", "VIP/IPTABLES", "VIP p50 vs 1st"
    );
    let first = results.first();
    for s in results {
        let vs_first = first.map_or(f64::NAN, |f| ratio(s.samples.p50(Vip), f.samples.p50(Vip)));
        println!(
            "{:>8}  {:>12.1} {:>12.1} {:>11} {:>13} {:>15}",
            human(s.n),
            s.sync.as_secs_f64() * 1e3,
            s.ipt_load.as_secs_f64() * 1e3,
            show(ratio(s.samples.rate(Vip), s.samples.rate(Direct)), 3),
            show(ratio(s.samples.rate(Vip), s.samples.rate(Iptables)), 2),
            show(vs_first, 3),
        );
    }
    println!(
        "(ratios of median conn/s; OUR SYNC: from handing the view N services until all N VIPs are in the maps, of which {} ms applying the view)",
        results
            .iter()
            .map(|s| format!("{:.1}", s.apply.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    println!();
    println!("targets:");
    for s in results
        .iter()
        .filter(|s| s.samples.measured(Vip) && s.samples.measured(Direct))
    {
        let r = ratio(s.samples.rate(Vip), s.samples.rate(Direct));
        println!(
            "  {:>6} services: VIP ≥ {VIP_TARGET} × direct: {r:.3}: {}",
            human(s.n),
            verdict(r >= VIP_TARGET)
        );
    }
    let biggest = results.iter().max_by_key(|s| s.n);
    if let Some(s) = biggest.filter(|s| s.samples.measured(Vip) && s.samples.measured(Iptables)) {
        let r = ratio(s.samples.rate(Vip), s.samples.rate(Iptables));
        println!(
            "  {:>6} services: ours ≥ 5 × iptables (the target is at 10 000): {r:.2}: {}",
            human(s.n),
            verdict(r >= 5.0)
        );
    }
    let (a, b) = (results.iter().min_by_key(|s| s.n), biggest);
    if let (Some(a), Some(b)) = (a, b) {
        if a.n != b.n && a.samples.measured(Vip) && b.samples.measured(Vip) {
            let (pa, pb) = (a.samples.p50(Vip), b.samples.p50(Vip));
            let (qa, qb) = (a.samples.p99(Vip), b.samples.p99(Vip));
            println!(
                "  VIP latency flat from {} to {} services: p50 {pa:.1} → {pb:.1} µs ({:+.1}%), p99 {qa:.1} → {qb:.1} µs ({:+.1}%)",
                human(a.n),
                human(b.n),
                (pb / pa - 1.0) * 100.0,
                (qb / qa - 1.0) * 100.0
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_rules() {
        assert_eq!(vip(0), Ipv4Addr::new(10, 200, 1, 1));
        assert_eq!(vip(9_999), Ipv4Addr::new(10, 200, 40, 250));
        assert_eq!(vip(MAX_SERVICES - 1), Ipv4Addr::new(10, 200, 200, 250));
        assert_eq!(kube_vip(0), Ipv4Addr::new(10, 96, 0, 1));
        let r = kube_rules(2);
        assert!(r.contains(
            "-A KUBE-SERVICES -d 10.96.0.2/32 -p tcp -m tcp --dport 8080 -j KUBE-SVC-1\n"
        ));
        assert_eq!(r.matches("-j DNAT").count(), 4);
        assert!(r.ends_with("COMMIT\n"));
        let m = view_msg(3, Ipv4Addr::new(10, 99, 1, 1));
        let mut v = swarm_agent::network::view::NetworkView::default();
        v.apply(m);
        assert_eq!(v.services.len(), 3);
        assert_eq!(v.endpoints.len(), 4 + 6);
        assert_eq!(targets(Mode::Direct, 5).lines().count(), 2);
        assert_eq!(targets(Mode::Vip, 5).lines().count(), 5);
    }
}
