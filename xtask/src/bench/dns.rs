//! `cargo xtask bench dns`: the agent's embedded DNS server against dnsmasq serving the same
//! names, measured with dnsperf in the same run (needs root, dnsmasq and dnsperf).
//!
//! One network namespace (made like a task's: `swarm_agent::netns`), with inside it:
//! - (a) the agent's resolver: `DnsServer::serve_task` on `127.0.0.11:<port>`, with a view of
//!   S services (VIP mode) with T serving tasks each on one network;
//! - (b) dnsmasq on `127.0.0.11:<port>`, with the same names in an addn-hosts file (`<VIP>
//!   <service>`, `<task IP> tasks.<service> <task name>`), `--no-resolv`, `--local-ttl=600`.
//!
//! dnsperf runs in the namespace too, with the same query file (every `<service>` and
//! `tasks.<service>` once, shuffled) against each server, alternating, for several rounds:
//! - throughput: one client thread, `-c 1 -q 100` outstanding, no rate limit, `--seconds`;
//! - latency: `-Q <rate>` with every answer's latency (`-v`), p50/p99 computed here; the rate
//!   is `--rate`, or half the lower of the two servers' throughput in the first round, so that
//!   neither server nor dnsperf is saturated and the latency is the server's, not a queue's.
//!
//! Medians over the rounds are reported, and the ratios agent / dnsmasq.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use proto::{
    network_state_change::Change, network_state_message, EndpointInfo, EndpointMode, NetworkInfo,
    NetworkStateChange, NetworkStateMessage, ServiceInfo, VirtualIp,
};
use swarm_agent::network::dns::{DnsConfig, DnsServer, ForwardConfig};
use swarm_agent::network::view::ViewHandle;

pub struct Options {
    pub services: usize,
    pub tasks: usize,
    pub rounds: usize,
    pub seconds: u64,
    pub rate: Option<u64>,
}

const NET_ID: &str = "net-bench";
const NET_NAME: &str = "bench";

fn which(prog: &str, package: &str) -> anyhow::Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false);
    if !found {
        bail!("{prog} is not installed: apt-get install -y {package}");
    }
    Ok(())
}

/// 10.10.0.0/16, from .2: service i gets a VIP, then its T task addresses.
fn addr(n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 10, 0, 2)) + n as u32)
}

struct Names {
    view: NetworkStateMessage,
    hosts: String,
    queries: String,
    /// (name, expected number of A records) for the check before measuring.
    checks: Vec<(String, usize)>,
}

fn names(services: usize, tasks: usize) -> anyhow::Result<Names> {
    if services * (tasks + 1) > 65_000 {
        bail!("{services} services × {tasks} tasks do not fit in the /16 of the benchmark network");
    }
    let mut changes = vec![Change::Network(NetworkInfo {
        id: NET_ID.into(),
        name: NET_NAME.into(),
        vni: 4096,
        subnet: "10.10.0.0/16".into(),
        gateway: "10.10.0.1".into(),
        ..Default::default()
    })];
    let mut hosts = String::new();
    let mut queries = Vec::new();
    let mut n = 0usize;
    for s in 0..services {
        let name = format!("svc{s:04}");
        let vip = addr(n);
        n += 1;
        changes.push(Change::Service(ServiceInfo {
            id: format!("id-{name}"),
            name: name.clone(),
            endpoint_mode: EndpointMode::Vip as i32,
            virtual_ips: vec![VirtualIp {
                network_id: NET_ID.into(),
                addr: format!("{vip}/16"),
            }],
            network_ids: vec![NET_ID.into()],
            ports: vec![],
        }));
        hosts.push_str(&format!("{vip} {name}\n"));
        for t in 0..tasks {
            let ip = addr(n);
            n += 1;
            let task_id = format!("t{s:04}x{t:03}{}", "z".repeat(16));
            let task_name = format!("{name}.{}.{task_id}", t + 1);
            changes.push(Change::Endpoint(EndpointInfo {
                task_id: task_id.clone(),
                network_id: NET_ID.into(),
                address: ip.to_string(),
                node_id: "node1".into(),
                node_addr: "192.168.0.1".into(),
                service_id: format!("id-{name}"),
                service_name: name.clone(),
                task_name: task_name.clone(),
                aliases: vec![],
                serving: true,
                node_ingress: false,
            }));
            hosts.push_str(&format!("{ip} tasks.{name} {task_name}\n"));
        }
        queries.push(format!("{name} A"));
        queries.push(format!("tasks.{name} A"));
    }
    // A fixed shuffle (xorshift), the same for both servers.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..queries.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        queries.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let checks = vec![
        ("svc0000".to_string(), 1),
        ("tasks.svc0000".to_string(), tasks),
        (format!("svc{:04}", services - 1), 1),
    ];
    Ok(Names {
        view: NetworkStateMessage {
            r#type: network_state_message::Type::Complete as i32,
            changes: changes
                .into_iter()
                .map(|c| NetworkStateChange { change: Some(c) })
                .collect(),
            ..Default::default()
        },
        hosts,
        queries: queries.join("\n") + "\n",
        checks,
    })
}

/// A bare A query for `name` (id 0x5353, RD).
fn a_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x53, 0x53, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Number of answers to an A query for `name` at 127.0.0.11:`port`, asked from inside the
/// namespace; TCP when the UDP answer is truncated.
fn count_answers(netns: &Path, port: u16, name: &str) -> anyhow::Result<usize> {
    let p = netns.to_path_buf();
    let q = a_query(name);
    std::thread::spawn(move || -> anyhow::Result<usize> {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(&p).with_context(|| format!("opening {}", p.display()))?;
        // SAFETY: setns on a valid namespace fd, on this short-lived thread only.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.send_to(&q, ("127.0.0.11", port))?;
        let mut buf = [0u8; 4096];
        let n = s.recv(&mut buf).context("no answer over UDP")?;
        if n < 12 {
            bail!("short answer");
        }
        if buf[2] & 0x02 == 0 {
            return Ok(u16::from_be_bytes([buf[6], buf[7]]) as usize);
        }
        let mut t = std::net::TcpStream::connect(("127.0.0.11", port))?;
        t.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        t.write_all(&framed)?;
        let mut len = [0u8; 2];
        t.read_exact(&mut len)?;
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        t.read_exact(&mut msg)?;
        Ok(u16::from_be_bytes([msg[6], msg[7]]) as usize)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("query thread panicked"))?
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_dnsmasq(netns: &Path, dir: &Path, port: u16, cache: usize) -> anyhow::Result<Killed> {
    let hosts = dir.join("hosts");
    let child = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args([
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--listen-address=127.0.0.11",
            "--bind-interfaces",
            "--user=root",
            "--local-ttl=600",
        ])
        .arg(format!("--addn-hosts={}", hosts.display()))
        .arg(format!("--cache-size={cache}"))
        .arg(format!("--port={port}"))
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting dnsmasq in the namespace")?;
    Ok(Killed(child))
}

#[derive(Clone, Copy, Debug, Default)]
struct Run {
    qps: f64,
    lost: u64,
    p50_us: f64,
    p99_us: f64,
    avg_us: f64,
}

/// Runs dnsperf in the namespace. Its output goes to a file, read afterwards: a pipe would
/// have this process (which also serves the agent's answers) read every verbose line during
/// the run.
fn dnsperf(netns: &Path, port: u16, file: &Path, args: &[String]) -> anyhow::Result<String> {
    let out_path = file.with_extension("out");
    let out_file = std::fs::File::create(&out_path)
        .with_context(|| format!("creating {}", out_path.display()))?;
    let status = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["dnsperf", "-s", "127.0.0.11", "-p", &port.to_string()])
        // One thread, one client socket, up to 100 questions outstanding: the same load
        // shape for both servers in every mode.
        .args(["-T", "1", "-c", "1", "-q", "100"])
        .arg("-d")
        .arg(file)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out_file)
        .stderr(Stdio::inherit())
        .status()
        .context("running dnsperf")?;
    let stdout = std::fs::read_to_string(&out_path)
        .with_context(|| format!("reading {}", out_path.display()))?;
    if !status.success() {
        bail!("dnsperf failed ({status}): {stdout}");
    }
    Ok(stdout)
}

fn field(out: &str, key: &str) -> Option<f64> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Saturation throughput.
fn throughput(netns: &Path, port: u16, file: &Path, seconds: u64) -> anyhow::Result<Run> {
    let out = dnsperf(netns, port, file, &["-l".into(), seconds.to_string()])?;
    let qps = field(&out, "Queries per second:").context("no queries/s in dnsperf's output")?;
    let lost = field(&out, "Queries lost:").unwrap_or(0.0) as u64;
    let avg = field(&out, "Average Latency (s):").unwrap_or(0.0);
    Ok(Run {
        qps,
        lost,
        avg_us: avg * 1e6,
        ..Default::default()
    })
}

/// Latency at a fixed rate, from every answer's latency.
fn latency(netns: &Path, port: u16, file: &Path, seconds: u64, rate: u64) -> anyhow::Result<Run> {
    let out = dnsperf(
        netns,
        port,
        file,
        &[
            "-Q".into(),
            rate.to_string(),
            "-l".into(),
            seconds.to_string(),
            "-v".into(),
        ],
    )?;
    // Verbose lines: "> NOERROR svc0001 A 0.000154"
    let mut lat: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    if lat.is_empty() {
        bail!("dnsperf -v printed no latencies:\n{out}");
    }
    let bad = out
        .lines()
        .filter(|l| l.starts_with("> ") && !l.starts_with("> NOERROR"))
        .count();
    if bad > 0 {
        bail!("{bad} answers were not NOERROR");
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] * 1e6;
    Ok(Run {
        qps: field(&out, "Queries per second:").unwrap_or(0.0),
        lost: field(&out, "Queries lost:").unwrap_or(0.0) as u64,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        avg_us: lat.iter().sum::<f64>() / lat.len() as f64 * 1e6,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(o: Options) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench dns needs root (network namespaces); run it as root");
    }
    which("dnsmasq", "dnsmasq-base")?;
    which("dnsperf", "dnsperf")?;
    which("nsenter", "util-linux")?;
    let (services, tasks) = (o.services.max(1), o.tasks.max(1));
    let rounds = o.rounds.max(1);

    let dir: PathBuf = std::env::temp_dir().join(format!("swarm-dns-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = run_in(&dir, &o, services, tasks, rounds);
    let ns = swarm_agent::netns::path(&dir.join("netns"), "bench");
    let _ = swarm_agent::netns::remove(&ns);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(
    dir: &Path,
    o: &Options,
    services: usize,
    tasks: usize,
    rounds: usize,
) -> anyhow::Result<()> {
    let names = names(services, tasks)?;
    std::fs::write(dir.join("hosts"), &names.hosts)?;
    let qfile = dir.join("queries");
    std::fs::write(&qfile, &names.queries)?;
    std::fs::write(
        dir.join("resolv.conf"),
        "# no upstream: every name is local\n",
    )?;
    let netns = swarm_agent::netns::create(&dir.join("netns"), "bench")
        .context("creating the benchmark's network namespace")?;

    // The runtime only drives serve_task: the server answers on its own `swarm-dns` thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let view = ViewHandle::default();
    let t0 = Instant::now();
    view.apply(names.view);
    let server = DnsServer::new(
        DnsConfig {
            forward: ForwardConfig {
                resolv_conf: dir.join("resolv.conf"),
                ..Default::default()
            },
            ..Default::default()
        },
        &view,
    )?;
    let built = t0.elapsed();
    let task = rt.block_on(server.serve_task("bench", &netns, vec![NET_ID.to_string()]))?;
    let agent_port = task.udp_port;

    let dnsmasq_port = 5353;
    let mut dnsmasq = start_dnsmasq(&netns, dir, dnsmasq_port, 10_000)?;
    // Wait for both to answer correctly.
    let deadline = Instant::now() + Duration::from_secs(10);
    for (what, port) in [("agent", agent_port), ("dnsmasq", dnsmasq_port)] {
        for (name, want) in &names.checks {
            loop {
                match count_answers(&netns, port, name) {
                    Ok(n) if n == *want => break,
                    Ok(n) => bail!("{what} answers {n} records for {name}, expected {want}"),
                    Err(e) if Instant::now() > deadline => {
                        if let Ok(Some(st)) = dnsmasq.0.try_wait() {
                            let mut err = String::new();
                            if let Some(mut e) = dnsmasq.0.stderr.take() {
                                use std::io::Read;
                                let _ = e.read_to_string(&mut err);
                            }
                            bail!("dnsmasq exited ({st}): {err}");
                        }
                        bail!("{what} does not answer {name}: {e:#}");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
    println!(
        "dns benchmark: {services} services (VIP) × {tasks} tasks on one network; {} names in the agent's index (built in {:.1} ms), {} query names; dnsperf -T 1 -c 1 -q 100, {} s per run, {rounds} round(s)",
        server.index().len(),
        built.as_secs_f64() * 1e3,
        services * 2,
        o.seconds,
    );

    let servers = [("agent", agent_port), ("dnsmasq", dnsmasq_port)];
    let mut tput: [Vec<Run>; 2] = [vec![], vec![]];
    let mut lat: [Vec<Run>; 2] = [vec![], vec![]];
    let mut rate = o.rate;
    for r in 0..rounds {
        // Alternate who goes first.
        let order: [usize; 2] = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for &i in &order {
            let (what, port) = servers[i];
            let t = throughput(&netns, port, &qfile, o.seconds)?;
            eprintln!(
                "  round {} {what:<8} throughput {:>9.0} q/s (avg {:.0} µs, lost {})",
                r + 1,
                t.qps,
                t.avg_us,
                t.lost
            );
            tput[i].push(t);
        }
        let rate = *rate.get_or_insert_with(|| {
            let low = tput[0][0].qps.min(tput[1][0].qps);
            ((low / 2.0 / 1000.0).floor() as u64).max(1) * 1000
        });
        for &i in &order {
            let (what, port) = servers[i];
            let l = latency(&netns, port, &qfile, o.seconds, rate)?;
            eprintln!(
                "  round {} {what:<8} at {rate} q/s: p50 {:.0} µs, p99 {:.0} µs (avg {:.0} µs, lost {})",
                r + 1,
                l.p50_us,
                l.p99_us,
                l.avg_us,
                l.lost
            );
            lat[i].push(l);
        }
    }
    drop(dnsmasq);
    drop(task);

    let rate = rate.unwrap_or(0);
    println!();
    println!(
        "{:<8} {:>12} {:>12} {:>12} {:>14} {:>10}",
        "SERVER", "QUERIES/s", "p50 µs", "p99 µs", "BEST p99 µs", "LOST"
    );
    let mut med = [(0.0, 0.0, 0.0); 2];
    for (i, (what, _)) in servers.iter().enumerate() {
        let q = median(tput[i].iter().map(|r| r.qps).collect());
        let p50 = median(lat[i].iter().map(|r| r.p50_us).collect());
        let p99 = median(lat[i].iter().map(|r| r.p99_us).collect());
        let best = lat[i]
            .iter()
            .map(|r| r.p99_us)
            .fold(f64::INFINITY, f64::min);
        let lost: u64 = tput[i].iter().chain(&lat[i]).map(|r| r.lost).sum();
        med[i] = (q, p50, p99);
        println!("{what:<8} {q:>12.0} {p50:>12.0} {p99:>12.0} {best:>14.0} {lost:>10}");
    }
    println!(
        "(queries/s: median at saturation; p50/p99: median at a fixed {rate} q/s; best p99: \
         the round least disturbed by other load on the machine)"
    );
    println!(
        "agent / dnsmasq: queries/s {:.2}x, p99 {:.2}x",
        med[0].0 / med[1].0.max(1e-9),
        med[0].2 / med[1].2.max(1e-9)
    );
    if cfg!(debug_assertions) {
        println!("(debug build: not representative)");
    }
    Ok(())
}
