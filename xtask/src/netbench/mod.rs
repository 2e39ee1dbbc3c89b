//! Data-plane benchmarks on namespace topologies (`swarm_agent::network::testbed`), each
//! measuring ours and a peer in the same run, alternately, on the same kind of topology:
//!
//! - [`overlay`]: task → task across two nodes (iperf3 throughput, sockperf TCP ping-pong),
//!   ours (the real eBPF programs, metadata-mode VXLAN) against Docker's layout (a Linux
//!   bridge and a static kernel VXLAN device per node);
//! - [`lb`]: connections to a service at 1, 1 000 and 10 000 services: through our VIP (the
//!   socket load balancer), straight to a task's address, and through a kube-proxy-style
//!   iptables DNAT chain with as many services;
//! - [`ingress`]: connections through a published port (the routing mesh) from a client
//!   outside the nodes, at 1 and 1 000 ports: the task on the ingress node, the task on
//!   another node, the server on the node itself (the limit), and kube-proxy-style nftables
//!   NodePorts (DNAT + masquerade + conntrack) with as many ports.
//!
//! `lb` and `ingress` share their load generator ([`client`], run by [`ClientRun`]), the
//! rounds of a scale ([`run_rounds`], over the modes of a [`BenchMode`]) and the table that
//! opens their report ([`report`]).
//!
//! All need root and a release build (they re-run themselves as one). No timed
//! assertions: the targets are printed next to the figures.

pub mod client;
pub mod ingress;
pub mod lb;
pub mod overlay;
pub mod report;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use swarm_agent::network::testbed;

use client::ClientResult;
use report::Samples;

pub fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this benchmark builds network namespaces and loads eBPF programs: run it as root");
    }
    Ok(())
}

pub fn require_tools(tools: &[&str]) -> anyhow::Result<()> {
    for t in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false);
        if !found {
            bail!("{t} is not installed (apt-get install -y {t})");
        }
    }
    Ok(())
}

/// Where the measured processes and servers run: one CPU for all of them (`Some`), so that
/// every request crosses the whole path on that CPU and no round trip waits for another
/// (virtual) CPU to wake up, which on a shared 2-CPU machine makes latencies jump between
/// two modes from round to round; or wherever the scheduler puts them (`None`).
pub type Cpu = Option<usize>;

/// The default `--cpu`: the last one.
pub fn default_cpu() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() - 1)
        .unwrap_or(0)
}

fn cpu_set(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: Cpu) -> std::io::Result<()> {
    let Some(cpu) = cpu else {
        return Ok(());
    };
    let set = cpu_set(cpu);
    // SAFETY: sched_setaffinity on the calling thread with a valid set and its size.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `cmd` will run pinned to `cpu`.
pub fn pinned(mut cmd: Command, cpu: Cpu) -> Command {
    if let Some(cpu) = cpu {
        let set = cpu_set(cpu);
        // SAFETY: only sched_setaffinity (a system call) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

/// Checks `--cpu`.
pub fn check_cpu(cpu: Cpu) -> anyhow::Result<()> {
    if let Some(c) = cpu {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        if c >= n {
            bail!("--cpu {c}: this machine has CPUs 0 to {}", n - 1);
        }
    }
    Ok(())
}

/// How the placement reads in the output.
pub fn cpu_note(cpu: Cpu) -> String {
    match cpu {
        Some(c) => format!("clients and servers pinned to CPU {c}"),
        None => "placement left to the scheduler".into(),
    }
}

/// A process this benchmark started: killed (by its own handle) and reaped on drop.
pub struct Proc {
    child: Option<Child>,
}

impl Proc {
    /// Starts `cmd` in the namespace `ns` (and the cgroup directory `cgroup`), with its
    /// output discarded.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        ns: &Path,
        cgroup: Option<&Path>,
    ) -> anyhow::Result<Proc> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = testbed::spawn_in(&mut cmd, ns, cgroup).with_context(|| name.to_string())?;
        Ok(Proc { child: Some(child) })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `cmd` to completion in `ns` (and `cgroup`), feeding it `stdin`; its stdout, or an
/// error with its stderr. A run longer than `limit` is killed.
pub fn output_in(
    mut cmd: Command,
    ns: &Path,
    cgroup: Option<&Path>,
    stdin: &[u8],
    limit: Duration,
) -> anyhow::Result<String> {
    let what = format!("{:?}", cmd.get_program());
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = testbed::spawn_in(&mut cmd, ns, cgroup)?;
    // Fed from a thread, so that a child that does not read cannot block us.
    let feeder = child.stdin.take().map(|mut w| {
        let data = stdin.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&data);
        })
    });
    let mut out = child.stdout.take().context("child stdout")?;
    let mut err = child.stderr.take().context("child stderr")?;
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let _ = tx.send(());
        s
    });
    let timed_out = rx.recv_timeout(limit).is_err();
    if timed_out {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if let Some(f) = feeder {
        let _ = f.join();
    }
    if timed_out {
        bail!("{what} did not finish within {limit:?} (killed)");
    }
    if !status.success() {
        bail!(
            "{what} failed ({status}): {}{}",
            stderr.trim(),
            stdout.trim()
        );
    }
    Ok(stdout)
}

/// Waits until something listens on TCP `port` in `ns` (asks `ss` there).
pub fn wait_listening(ns: &Path, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let needle = format!(":{port} ");
    loop {
        let mut cmd = Command::new("ss");
        cmd.args(["-Hltn"]);
        let out = output_in(cmd, ns, None, b"", Duration::from_secs(5))?;
        if out.lines().any(|l| l.contains(&needle)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "nothing listens on port {port} in {} after 10 s",
                ns.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The number of conntrack entries in `ns` ("?" if it cannot be read).
pub fn conntrack_count(ns: &Path) -> String {
    let mut cmd = Command::new("sysctl");
    cmd.args(["-n", "net.netfilter.nf_conntrack_count"]);
    output_in(cmd, ns, None, b"", Duration::from_secs(10))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A mode of a connection benchmark (`lb`, `ingress`): one way to the servers, measured by
/// runs of the load generator of its own.
pub trait BenchMode: Copy + Eq + 'static {
    /// Every mode, in the order of the tables.
    const ALL: &'static [Self];

    /// As `--modes` takes it and the output shows it.
    fn name(self) -> &'static str;
}

/// The modes `--modes` names (each trimmed), in its order: at least one.
pub fn parse_modes<M: BenchMode>(names: &[String]) -> anyhow::Result<Vec<M>> {
    let all = M::ALL
        .iter()
        .map(|m| m.name())
        .collect::<Vec<_>>()
        .join(", ");
    let modes = names
        .iter()
        .map(|s| {
            let s = s.trim();
            M::ALL
                .iter()
                .copied()
                .find(|m| m.name() == s)
                .with_context(|| format!("--modes: {s:?} is none of {all}"))
        })
        .collect::<anyhow::Result<Vec<M>>>()?;
    if modes.is_empty() {
        bail!("--modes: at least one of {all}");
    }
    Ok(modes)
}

/// A run of the load generator of the connection benchmarks (`bench-lb-client`, [`client`]).
pub struct ClientRun<'a> {
    /// Where it runs: a namespace, and a cgroup (none: this process's).
    pub ns: &'a Path,
    pub cgroup: Option<&'a Path>,
    /// `ip:port` lines: each connection goes to one of them, drawn uniformly.
    pub targets: &'a str,
    pub secs: f64,
    pub seed: u64,
    /// Bounds each connect (none: a connect waits for the kernel's SYN retries).
    pub connect_timeout: Option<Duration>,
    pub cpu: Cpu,
}

impl ClientRun<'_> {
    /// Runs it to its end (killed a minute after `secs`). `what` names the run in the messages
    /// ("mode vip, 1000 services"): an error when no connection succeeded, a line on stderr
    /// when some failed.
    pub fn run(&self, what: &str) -> anyhow::Result<ClientResult> {
        let exe = std::env::current_exe().context("locating the xtask binary")?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "bench-lb-client",
            "--secs",
            &self.secs.to_string(),
            "--seed",
            &self.seed.to_string(),
        ]);
        if let Some(t) = self.connect_timeout {
            cmd.args(["--connect-timeout-ms", &t.as_millis().to_string()]);
        }
        let out = output_in(
            pinned(cmd, self.cpu),
            self.ns,
            self.cgroup,
            self.targets.as_bytes(),
            Duration::from_secs_f64(self.secs + 60.0),
        )
        .with_context(|| format!("load generator, {what}"))?;
        let (r, first_error) = client::parse(&out)?;
        if r.conns_per_sec == 0.0 {
            bail!("{what}: no connection succeeded ({first_error})");
        }
        if r.errors > 0 {
            eprintln!(
                "  {what}: {} failed connections, the first: {first_error}",
                r.errors
            );
        }
        Ok(r)
    }
}

/// The rounds of one scale of a connection benchmark: each round runs every mode of `modes`
/// once, in an order that rotates every round, as `measure(mode, seed)` with the next `seed`
/// (a sequence that goes on across scales), which gives the result and what to print after
/// its figures. A line a run on stderr (`scale` names the scale: "1000 services"), and the
/// load average after each round.
pub fn run_rounds<M: BenchMode>(
    rounds: usize,
    modes: &[M],
    seed: &mut u64,
    scale: &str,
    mut measure: impl FnMut(M, u64) -> anyhow::Result<(ClientResult, String)>,
) -> anyhow::Result<Samples<M>> {
    let w = report::name_width::<M>();
    let mut samples = Samples::default();
    for r in 0..rounds {
        for k in 0..modes.len() {
            let mode = modes[(k + r) % modes.len()];
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (res, extra) = measure(mode, *seed)?;
            eprintln!(
                "  {scale}, round {}: {:<w$} {:>8.0} conn/s, mean {:>7.1} µs, p50 {:>7.1}, p90 {:>7.1}, p99 {:>7.1}, p99.9 {:>8.1} µs{extra}",
                r + 1,
                mode.name(),
                res.conns_per_sec,
                res.mean_us,
                res.p50_us,
                res.p90_us,
                res.p99_us,
                res.p999_us
            );
            samples.push(mode, res);
        }
        eprintln!("  load average: {}", loadavg());
    }
    Ok(samples)
}

/// The request the load generator sends and the servers expect (its end).
pub const REQUEST: &[u8] = b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n";
pub const RESPONSE: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// A minimal HTTP/1.0 server on a thread inside a task's namespace: reads a request,
/// answers, closes (the server closes first, so the client keeps no TIME_WAIT). Stopped on
/// drop.
pub struct Responder {
    stop: Arc<AtomicBool>,
    fd: i32,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Responder {
    pub fn start(ns: &Path, addr: SocketAddr, cpu: Cpu) -> anyhow::Result<Responder> {
        let file = std::fs::File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with a descriptor we own.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = tx.send(Err(std::io::Error::last_os_error()));
                return;
            }
            if let Err(e) = pin_current_thread(cpu) {
                let _ = tx.send(Err(e));
                return;
            }
            let l = match TcpListener::bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(l.as_raw_fd()));
            let mut buf = [0u8; 1024];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = l.accept() else {
                    continue;
                };
                let mut got = 0;
                while got < buf.len() {
                    match s.read(&mut buf[got..]) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            got += n;
                            if buf[..got].ends_with(b"\r\n\r\n") {
                                break;
                            }
                        }
                    }
                }
                let _ = s.write_all(RESPONSE);
            }
        });
        let fd = match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(fd)) => fd,
            Ok(Err(e)) => bail!("server on {addr} in {}: {e}", ns.display()),
            Err(_) => bail!("server on {addr} in {} did not start", ns.display()),
        };
        Ok(Responder {
            stop,
            fd,
            thread: Some(thread),
        })
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // SAFETY: the listener is still open (its thread owns it until it returns); shutting
        // it down wakes the blocked accept with an error.
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RDWR);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The median of `v` (0 for none).
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return 0.0;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// How far the rounds spread: (max − min) / median, in percent.
pub fn spread(v: &[f64]) -> f64 {
    let m = median(v);
    if m == 0.0 || v.is_empty() {
        return 0.0;
    }
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    (hi - lo) / m * 100.0
}

/// `a / b`, or NaN when `b` is 0.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        f64::NAN
    } else {
        a / b
    }
}

/// "met" / "MISSED" for a target.
pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// The load average, to show how busy the machine was.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_spreads() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(spread(&[1.0, 2.0, 3.0]), 100.0);
        assert!(ratio(1.0, 0.0).is_nan());
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum M {
        A,
        B,
    }

    impl BenchMode for M {
        const ALL: &'static [M] = &[M::A, M::B];

        fn name(self) -> &'static str {
            match self {
                M::A => "a",
                M::B => "b",
            }
        }
    }

    #[test]
    fn modes_from_the_command_line() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_modes::<M>(&names(&["b", " a"])).unwrap(),
            [M::B, M::A]
        );
        let e = parse_modes::<M>(&names(&["c"])).unwrap_err().to_string();
        assert_eq!(e, "--modes: \"c\" is none of a, b");
        let e = parse_modes::<M>(&[]).unwrap_err().to_string();
        assert_eq!(e, "--modes: at least one of a, b");
    }
}
