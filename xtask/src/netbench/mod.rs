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
//! All need root and a release build (they re-run themselves as one). No timed
//! assertions: the targets are printed next to the figures.

pub mod client;
pub mod ingress;
pub mod lb;
pub mod overlay;

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
}
