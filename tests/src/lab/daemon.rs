//! The lab's daemons (containerd, swarm-agent, the registry, dnsmasq): started in a network
//! namespace with their output in a log file, found again through their pid files by a later
//! process, waited for and stopped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::sys;

/// PATH of the daemons (and the sbin directories root's PATH usually has).
pub(super) const DAEMON_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const PROXY_VARS: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
];

/// A node's daemons run with [`DAEMON_PATH`] and without the proxy variables of our
/// environment (the lab's registry is reached straight).
pub(super) fn daemon_env(cmd: &mut Command) {
    cmd.env("PATH", DAEMON_PATH);
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
}

/// A daemon of the lab, found through its pid file (so that a later process can stop it);
/// the [`Child`] is kept when this process started it, to reap it. Its output goes to `log`.
pub(super) struct Daemon {
    what: String,
    exe: PathBuf,
    pidfile: PathBuf,
    log: PathBuf,
    child: Mutex<Option<Child>>,
}

impl Daemon {
    pub(super) fn new(what: String, exe: PathBuf, pidfile: PathBuf, log: PathBuf) -> Daemon {
        Daemon {
            what,
            exe,
            pidfile,
            log,
            child: Mutex::new(None),
        }
    }

    /// Where the pid is kept (a program that starts the process elsewhere writes it there).
    pub(super) fn pidfile(&self) -> &Path {
        &self.pidfile
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pid when the process runs (and is the program we started: pids get reused).
    pub(super) fn pid(&self) -> Option<i32> {
        {
            let mut child = self.lock();
            if let Some(c) = child.as_mut() {
                if !matches!(c.try_wait(), Ok(None)) {
                    *child = None;
                    return None;
                }
            }
        }
        let pid: i32 = std::fs::read_to_string(&self.pidfile)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        if !sys::process_alive(pid) {
            return None;
        }
        let want = std::fs::canonicalize(&self.exe).unwrap_or_else(|_| self.exe.clone());
        (sys::process_exe(pid)? == want).then_some(pid)
    }

    fn spawn(&self, mut cmd: Command) -> anyhow::Result<i32> {
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the {} ({})", self.what, self.exe.display()))?;
        let pid = child.id() as i32;
        *self.lock() = Some(child);
        std::fs::write(&self.pidfile, format!("{pid}\n"))
            .with_context(|| format!("writing {}", self.pidfile.display()))?;
        Ok(pid)
    }

    /// Sends `signal`, waits up to `timeout` for the end, then SIGKILL. Fine when not running.
    pub(super) fn stop(&self, signal: i32, timeout: Duration) -> anyhow::Result<()> {
        if let Some(pid) = self.pid() {
            sys::kill(pid, signal);
            if wait_for_quick(timeout, || self.pid().is_none()).is_err() {
                sys::kill(pid, libc::SIGKILL);
                wait_for_quick(Duration::from_secs(10), || self.pid().is_none())
                    .with_context(|| format!("the {} (pid {pid}) does not die", self.what))?;
            }
        }
        // A child we hold that is gone already: reap it.
        if let Some(mut c) = self.lock().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.pidfile);
        Ok(())
    }

    /// Runs `start` (which spawns the process and waits for it) unless the process runs.
    pub(super) fn ensure(&self, start: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
        match self.pid() {
            Some(_) => Ok(()),
            None => start(),
        }
    }

    /// Starts `cmd` in a session of its own inside the network namespace at `netns` (so that
    /// it outlives us and ignores the terminal's Ctrl-C), its output appended to its log.
    pub(super) fn spawn_in(&self, mut cmd: Command, netns: &Path) -> anyhow::Result<i32> {
        let (out, err) = log_file(&self.log)?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        sys::in_netns(&mut cmd, netns, true)?;
        self.spawn(cmd)
    }

    /// Waits up to [`start_timeout`] (30 s unless [`START_TIMEOUT_ENV`] says otherwise), every
    /// `period`, until `ready`; fails with the end of its log when the process exits first, or
    /// when it does not `promise` (`open <socket>` …) in time.
    pub(super) fn wait_started(
        &self,
        promise: &str,
        period: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let timeout = start_timeout()?;
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            if self.pid().is_none() {
                bail!(
                    "the {} exited; log {}:\n{}",
                    self.what,
                    self.log.display(),
                    tail(&self.log, 40)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the {} did not {promise} within {} s (it runs: a slower machine may need a longer {START_TIMEOUT_ENV}); log:\n{}",
                    self.what,
                    timeout.as_secs(),
                    tail(&self.log, 40)
                );
            }
            std::thread::sleep(period);
        }
    }
}

/// Seconds a lab daemon may take from its start to answering (default 30). The older-kernel
/// VM sets it higher: its programs run about ten times slower without KVM, and loading the
/// eBPF data plane is most of an agent's start there.
pub const START_TIMEOUT_ENV: &str = "SWARM_LAB_START_SECS";

fn start_timeout() -> anyhow::Result<Duration> {
    match std::env::var(START_TIMEOUT_ENV) {
        Err(_) => Ok(Duration::from_secs(30)),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(s) if s > 0 => Ok(Duration::from_secs(s)),
            _ => bail!("{START_TIMEOUT_ENV}={v:?}: give a whole number of seconds above 0"),
        },
    }
}

/// Like [`wait_for`](crate::wait_for) with a short period (daemons die within milliseconds).
pub(super) fn wait_for_quick(timeout: Duration, f: impl FnMut() -> bool) -> anyhow::Result<()> {
    crate::helpers::poll(timeout, Duration::from_millis(20), f)
}

fn log_file(path: &Path) -> anyhow::Result<(Stdio, Stdio)> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok((f.try_clone()?.into(), f.into()))
}

pub(super) fn tail(path: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(super) fn pid_text(pid: Option<i32>) -> String {
    match pid {
        Some(p) => format!("running (pid {p})"),
        None => "not running".into(),
    }
}
