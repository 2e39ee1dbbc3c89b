//! The processes a data-plane benchmark starts in the testbed's namespaces (and cgroups):
//! what it needs first (root, the tools), servers killed on drop ([`Proc`]), commands run to
//! completion ([`output_in`]), and what they tell about a namespace (a listening port, the
//! conntrack table).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
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
