//! A multi-node lab on one machine: every node is a network namespace with its own address,
//! its own containerd (own root, state and socket) and its own `swarm-agent`, joined by veth
//! pairs to a bridge in an underlay namespace of its own, which also runs a real OCI registry
//! (Debian's `docker-registry`) holding the test images.
//!
//! ```text
//!   <name>-ul            br0 10.77.0.254/24, docker-registry on 10.77.0.254:5000
//!    ├─ veth1 ── eth0    <name>-node1  10.77.0.1   containerd + swarm-agent (manager, init)
//!    ├─ veth2 ── eth0    <name>-node2  10.77.0.2   …
//!    └─ vethN ── eth0    <name>-nodeN  10.77.0.N   (managers first, then workers)
//! ```
//!
//! Everything lives under `root` (`<root>/lab.json` describes the lab, `<root>/node<i>/` holds a
//! node's containerd, agent data, sockets, pid files and logs; `<root>/registry/` the registry).
//! Processes enter only the node's network namespace: they share the host's mount namespace,
//! so the agent's bind mounts of task namespaces are visible to containerd and runc.
//!
//! [`Lab::cleanup`] tears a lab down from its name and root alone (namespaces named
//! `<name>-ul`/`<name>-node<i>`, cgroups `<name>-node<i>` in every hierarchy, mounts under
//! root), so it works after a crash, from another process, and on a half-built lab.

pub mod sys;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{images, wait_for, CliOutput};

/// The underlay bridge's address (and the registry's).
pub const UNDERLAY_IP: &str = "10.77.0.254";
/// The registry's port on [`UNDERLAY_IP`].
pub const REGISTRY_PORT: u16 = 5000;
/// Node i has the address `10.77.0.<i>`.
pub const NODE_NET: &str = "10.77.0";
/// The containerd namespace the agents use.
pub const CONTAINERD_NAMESPACE: &str = "swarm";
/// The agent's metrics address inside each node's namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:9323";
/// The lab's description under its root.
pub const STATE_FILE: &str = "lab.json";
/// Set to keep a lab whose `up` failed (for a look at its logs; `lab down` removes it).
pub const KEEP_ON_FAILURE_ENV: &str = "SWARM_LAB_KEEP_ON_FAILURE";

const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";
const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";
const DNSMASQ: &str = "/usr/sbin/dnsmasq";
/// The zone the lab's upstream resolver (dnsmasq in the underlay) serves, with one name in
/// it and its address. The agents forward what they do not know there.
pub const UPSTREAM_TEST_ZONE: &str = "example.test";
pub const UPSTREAM_TEST_NAME: &str = "www.example.test";
pub const UPSTREAM_TEST_ADDR: &str = "192.0.2.7";
const DAEMON_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const PROXY_VARS: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
];
const AGENT_LOG_FILTER: &str = "info,openraft=warn,h2=warn,tower=warn,hyper=warn";
const MAX_NODES: usize = 253;
/// Unix socket paths must fit in sun_path (108 bytes).
const MAX_SOCKET_PATH: usize = 100;

// ------------------------------------------------------------------------------ configuration

#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Short prefix of the namespaces and cgroups (`[a-z][a-z0-9]{0,7}`), e.g. "swl".
    pub name: String,
    pub managers: usize,
    pub workers: usize,
    /// Directory of everything the lab writes (created; removed by `down`).
    pub root: PathBuf,
    /// Where `swarm-agent` and `swarm` are.
    pub bin_dir: PathBuf,
    /// Manager port on every node.
    pub port: u16,
    /// The static whoami binary the `whoami` image is made of.
    pub whoami: PathBuf,
    /// A lab that lives only as long as the process that made it (tests): once that process
    /// is gone, [`Lab::sweep_stale`] removes it.
    pub temporary: bool,
}

impl LabConfig {
    pub fn new(
        name: &str,
        managers: usize,
        workers: usize,
        root: impl Into<PathBuf>,
        bin_dir: impl Into<PathBuf>,
    ) -> LabConfig {
        let bin_dir = bin_dir.into();
        LabConfig {
            name: name.to_string(),
            managers,
            workers,
            root: root.into(),
            whoami: default_whoami(&bin_dir),
            bin_dir,
            port: 2377,
            temporary: false,
        }
    }

    /// A temporary lab with a random 4-letter name, rooted in `/tmp/swl-<name>`, using the
    /// binaries of this test build (target/debug). Removes the labs of test processes that
    /// died without tearing theirs down first.
    pub fn for_tests(managers: usize, workers: usize) -> LabConfig {
        for (name, e) in Lab::sweep_stale() {
            eprintln!("removing the stale test lab {name}: {e}");
        }
        let name = loop {
            let n = random_name();
            if sys::lab_netns(&n).is_empty() && !test_root(&n).exists() {
                break n;
            }
        };
        let mut cfg = LabConfig::new(&name, managers, workers, test_root(&name), crate::bin_dir());
        cfg.temporary = true;
        cfg
    }

    pub fn nodes(&self) -> usize {
        self.managers + self.workers
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        validate_name(&self.name)?;
        if self.managers == 0 {
            bail!("a lab needs at least one manager (managers = 0)");
        }
        if self.nodes() > MAX_NODES {
            bail!(
                "{} nodes do not fit in {NODE_NET}.0/24: at most {MAX_NODES}",
                self.nodes()
            );
        }
        if !self.root.is_absolute() {
            bail!(
                "the lab root {} must be an absolute path",
                self.root.display()
            );
        }
        let longest = self.root.join(format!(
            "node{}/containerd/containerd.sock.ttrpc",
            self.nodes()
        ));
        if longest.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "the lab root {} is too long: socket paths like {} exceed {MAX_SOCKET_PATH} bytes; use a short root such as /tmp/swl",
                self.root.display(),
                longest.display()
            );
        }
        Ok(())
    }
}

fn test_root(name: &str) -> PathBuf {
    PathBuf::from("/tmp").join(format!("swl-{name}"))
}

/// `<target>/x86_64-unknown-linux-musl/release/whoami` next to `bin_dir` (`<target>/debug`).
fn default_whoami(bin_dir: &Path) -> PathBuf {
    let from_bin = bin_dir.parent().map(images::whoami_path);
    match from_bin {
        Some(p) if p.is_file() => p,
        _ => images::whoami_path(&images::workspace_root().join("target")),
    }
}

fn random_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    let mut v = h.finish();
    (0..4)
        .map(|_| {
            let c = (b'a' + (v % 26) as u8) as char;
            v /= 26;
            c
        })
        .collect()
}

pub fn validate_name(name: &str) -> anyhow::Result<()> {
    let ok = (1..=8).contains(&name.len())
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !ok {
        bail!("invalid lab name {name:?}: use 1 to 8 lowercase letters or digits, starting with a letter");
    }
    Ok(())
}

// ------------------------------------------------------------------------------- processes

/// A daemon of the lab, found through its pid file (so that a later process can stop it);
/// the [`Child`] is kept when this process started it, to reap it.
struct Daemon {
    what: String,
    exe: PathBuf,
    pidfile: PathBuf,
    child: Mutex<Option<Child>>,
}

impl Daemon {
    fn new(what: String, exe: PathBuf, pidfile: PathBuf) -> Daemon {
        Daemon {
            what,
            exe,
            pidfile,
            child: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pid when the process runs (and is the program we started: pids get reused).
    fn pid(&self) -> Option<i32> {
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
    fn stop(&self, signal: i32, timeout: Duration) -> anyhow::Result<()> {
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
}

/// Like [`wait_for`] with a short period (daemons die within milliseconds).
fn wait_for_quick(timeout: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_file(path: &Path) -> anyhow::Result<(Stdio, Stdio)> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok((f.try_clone()?.into(), f.into()))
}

fn tail(path: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn output(out: std::io::Result<std::process::Output>, what: &str) -> CliOutput {
    match out {
        Ok(o) => CliOutput {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        },
        Err(e) => CliOutput {
            code: -1,
            stdout: String::new(),
            stderr: format!("could not run {what}: {e}"),
        },
    }
}

// ------------------------------------------------------------------------------------ nodes

/// One node: a network namespace with its containerd and its agent.
pub struct LabNode {
    index: usize,
    name: String,
    manager: bool,
    lab: String,
    dir: PathBuf,
    port: u16,
    bin_dir: PathBuf,
    registry: String,
    agent: Daemon,
    containerd: Daemon,
}

impl LabNode {
    fn new(cfg: &LabConfig, index: usize) -> LabNode {
        let name = format!("node{index}");
        let dir = cfg.root.join(&name);
        LabNode {
            index,
            manager: index <= cfg.managers,
            lab: cfg.name.clone(),
            port: cfg.port,
            bin_dir: cfg.bin_dir.clone(),
            registry: registry_addr(),
            agent: Daemon::new(
                format!("swarm-agent of {name}"),
                cfg.bin_dir.join("swarm-agent"),
                dir.join("agent.pid"),
            ),
            containerd: Daemon::new(
                format!("containerd of {name}"),
                PathBuf::from(CONTAINERD),
                dir.join("containerd").join("containerd.pid"),
            ),
            dir,
            name,
        }
    }

    /// 1-based, as in the name `node<i>`.
    pub fn index(&self) -> usize {
        self.index
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Whether it was made a manager when the lab formed.
    pub fn is_manager(&self) -> bool {
        self.manager
    }
    /// `10.77.0.<i>`.
    pub fn ip(&self) -> String {
        format!("{NODE_NET}.{}", self.index)
    }
    /// `10.77.0.<i>:<port>`: the node's manager address.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip(), self.port)
    }
    /// The network namespace's name (`<lab>-node<i>`).
    pub fn netns(&self) -> String {
        format!("{}-{}", self.lab, self.name)
    }
    pub fn netns_path(&self) -> PathBuf {
        sys::netns_path(&self.netns())
    }
    /// `<root>/node<i>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn data_root(&self) -> PathBuf {
        self.dir.join("data")
    }
    /// The agent's `--exec-root` (task namespaces are mounted under `<it>/netns`).
    pub fn exec_root(&self) -> PathBuf {
        self.dir.join("run")
    }
    /// The agent's unix socket (what `swarm -H unix://…` talks to).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("swarm.sock")
    }
    /// The node's containerd gRPC socket.
    pub fn containerd_socket(&self) -> PathBuf {
        self.containerd_dir().join("containerd.sock")
    }
    fn containerd_dir(&self) -> PathBuf {
        self.dir.join("containerd")
    }
    /// The agent's `--cgroup-parent`: containers get `/<it>/<task id>` in every hierarchy.
    pub fn cgroup_parent(&self) -> String {
        self.netns()
    }
    /// The agent's `--resolv-conf`: the lab's upstream resolver (dnsmasq in the underlay).
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.parent().map_or_else(
            || PathBuf::from("/etc/resolv.conf"),
            |root| root.join("dns").join("resolv.conf"),
        )
    }

    /// The agent's `--bpf-root`: its data plane's pinned maps and links.
    pub fn bpf_root(&self) -> PathBuf {
        Path::new(sys::BPF_ROOT).join(self.netns())
    }
    pub fn agent_log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }
    pub fn containerd_log(&self) -> PathBuf {
        self.containerd_dir().join("containerd.log")
    }
    /// The lab registry's `host:port`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// A command that runs in this node's network namespace (only: the mount namespace is the
    /// host's), with `SWARM_HOST` set to this node's agent, the `swarm` CLI first on PATH, and
    /// `CONTAINERD_ADDRESS`/`CONTAINERD_NAMESPACE` set for `ctr`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        let mut cmd = Command::new(program);
        self.prepare(&mut cmd, false)?;
        Ok(cmd)
    }

    fn prepare(&self, cmd: &mut Command, detach: bool) -> anyhow::Result<()> {
        sys::in_netns(cmd, &self.netns_path(), detach)?;
        let path = std::env::var_os("PATH").unwrap_or_else(|| DAEMON_PATH.into());
        let mut dirs = vec![self.bin_dir.clone()];
        dirs.extend(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(dirs)?)
            .env("SWARM_HOST", format!("unix://{}", self.socket().display()))
            .env("CONTAINERD_ADDRESS", self.containerd_socket())
            .env("CONTAINERD_NAMESPACE", CONTAINERD_NAMESPACE);
        Ok(())
    }

    /// Runs `args[0] args[1..]` in the node's namespace and collects its output.
    pub fn exec(&self, args: &[&str]) -> CliOutput {
        let Some((prog, rest)) = args.split_first() else {
            return output(
                Err(std::io::Error::other("empty command")),
                "an empty command",
            );
        };
        match self.command(prog) {
            Ok(mut cmd) => output(
                cmd.args(rest).stdin(Stdio::null()).output(),
                &args.join(" "),
            ),
            Err(e) => output(Err(std::io::Error::other(format!("{e:#}"))), prog),
        }
    }

    /// `swarm -H unix://<socket> ARGS…` in the node's namespace.
    pub fn swarm(&self, args: &[&str]) -> CliOutput {
        let mut all = vec!["swarm", "-H"];
        let host = format!("unix://{}", self.socket().display());
        all.push(&host);
        all.extend_from_slice(args);
        let swarm = self.bin_dir.join("swarm");
        all[0] = swarm.to_str().unwrap_or("swarm");
        self.exec(&all)
    }

    /// [`swarm`](Self::swarm) that fails unless the CLI exits 0; returns its stdout.
    pub fn try_swarm(&self, args: &[&str]) -> anyhow::Result<String> {
        let o = self.swarm(args);
        if !o.ok() {
            bail!(
                "`swarm {}` on {} failed ({}):\nstdout: {}\nstderr: {}",
                args.join(" "),
                self.name,
                o.code,
                o.stdout,
                o.stderr
            );
        }
        Ok(o.stdout)
    }

    /// [`try_swarm`](Self::try_swarm) that panics on failure (for tests).
    pub fn swarm_ok(&self, args: &[&str]) -> String {
        self.try_swarm(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    // ---- agent

    pub fn agent_pid(&self) -> Option<i32> {
        self.agent.pid()
    }
    pub fn agent_running(&self) -> bool {
        self.agent.pid().is_some()
    }

    /// Starts the agent (when not running) and waits for its socket.
    pub fn start_agent(&self) -> anyhow::Result<()> {
        if self.agent_running() {
            return Ok(());
        }
        self.spawn_agent()?;
        self.wait_agent()
    }

    fn spawn_agent(&self) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(self.socket());
        std::fs::create_dir_all(self.data_root())?;
        std::fs::create_dir_all(self.exec_root())?;
        let (out, err) = log_file(&self.agent_log())?;
        let mut cmd = Command::new(self.bin_dir.join("swarm-agent"));
        cmd.arg("--data-root")
            .arg(self.data_root())
            .arg("--socket")
            .arg(self.socket())
            .arg("--hostname")
            .arg(&self.name)
            .arg("--containerd-socket")
            .arg(self.containerd_socket())
            .arg("--containerd-namespace")
            .arg(CONTAINERD_NAMESPACE)
            .arg("--cgroup-parent")
            .arg(self.cgroup_parent())
            .arg("--bpf-root")
            .arg(self.bpf_root())
            .arg("--resolv-conf")
            .arg(self.resolv_conf())
            .arg("--exec-root")
            .arg(self.exec_root())
            .arg("--metrics-addr")
            .arg(METRICS_ADDR)
            .env("RUST_LOG", AGENT_LOG_FILTER)
            .env("PATH", DAEMON_PATH)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        sys::in_netns(&mut cmd, &self.netns_path(), true)?;
        self.agent.spawn(cmd)?;
        Ok(())
    }

    fn wait_agent(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.socket().exists() {
                return Ok(());
            }
            if !self.agent_running() {
                bail!(
                    "the swarm-agent of {} exited; log {}:\n{}",
                    self.name,
                    self.agent_log().display(),
                    self.agent_log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the swarm-agent of {} did not open {} within 30 s; log:\n{}",
                    self.name,
                    self.socket().display(),
                    self.agent_log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: the agent dies without any cleanup (its containers keep running).
    pub fn kill_agent(&self) -> anyhow::Result<()> {
        self.agent.stop(libc::SIGKILL, Duration::from_secs(10))
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop_agent(&self) -> anyhow::Result<()> {
        self.agent.stop(libc::SIGTERM, Duration::from_secs(10))
    }

    /// The last 40 lines of the agent's log.
    pub fn agent_log_tail(&self) -> String {
        tail(&self.agent_log(), 40)
    }

    // ---- containerd

    pub fn containerd_pid(&self) -> Option<i32> {
        self.containerd.pid()
    }
    pub fn containerd_running(&self) -> bool {
        self.containerd.pid().is_some()
    }

    /// Starts the node's containerd (when not running) and waits until it answers.
    pub fn start_containerd(&self) -> anyhow::Result<()> {
        if self.containerd_running() {
            return Ok(());
        }
        self.spawn_containerd()?;
        self.wait_containerd()
    }

    fn spawn_containerd(&self) -> anyhow::Result<()> {
        let dir = self.containerd_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cfg = dir.join("config.toml");
        std::fs::write(&cfg, containerd_config(&dir))
            .with_context(|| format!("writing {}", cfg.display()))?;
        let _ = std::fs::remove_file(self.containerd_socket());
        let (out, err) = log_file(&self.containerd_log())?;
        let mut cmd = Command::new(CONTAINERD);
        cmd.arg("--config")
            .arg(&cfg)
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--state")
            .arg(dir.join("state"))
            .arg("--address")
            .arg(self.containerd_socket())
            .env("PATH", DAEMON_PATH)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        sys::in_netns(&mut cmd, &self.netns_path(), true)?;
        self.containerd.spawn(cmd)?;
        Ok(())
    }

    fn wait_containerd(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.containerd_socket().exists() && self.ctr(&["version"]).is_ok() {
                return Ok(());
            }
            if !self.containerd_running() {
                bail!(
                    "the containerd of {} exited; log {}:\n{}",
                    self.name,
                    self.containerd_log().display(),
                    self.containerd_log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the containerd of {} did not answer on {} within 30 s; log:\n{}",
                    self.name,
                    self.containerd_socket().display(),
                    self.containerd_log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL the node's containerd (its shims and containers keep running).
    pub fn kill_containerd(&self) -> anyhow::Result<()> {
        self.containerd.stop(libc::SIGKILL, Duration::from_secs(10))
    }

    pub fn containerd_log_tail(&self) -> String {
        tail(&self.containerd_log(), 40)
    }

    /// `ctr --address <node containerd> -n swarm ARGS…`; its stdout.
    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        sys::run(
            Command::new(CTR)
                .arg("--address")
                .arg(self.containerd_socket())
                .args(["-n", CONTAINERD_NAMESPACE])
                .args(args),
        )
        .with_context(|| format!("asking the containerd of {}", self.name))
    }

    /// The network namespace of a task running on this node.
    pub fn task_netns(&self, task_id: &str) -> PathBuf {
        self.exec_root().join("netns").join(task_id)
    }

    /// Runs `cmd` inside a task's container (its namespaces, cgroup and root filesystem, as
    /// `docker exec` does) through the node's containerd; its stdout, or an error with its
    /// stderr when it fails.
    pub fn task_exec(&self, task_id: &str, cmd: &[&str]) -> anyhow::Result<String> {
        let exec_id = format!("t{:08x}", rand_u32());
        let mut args = vec!["task", "exec", "--exec-id", &exec_id, task_id];
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// Runs a host program (ping, python3 …) in a task's network namespace only.
    pub fn in_task_netns(&self, task_id: &str, program: &str, args: &[&str]) -> CliOutput {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.task_netns(task_id).display()))
            .arg(program)
            .args(args);
        output(cmd.output(), program)
    }

    /// Ids of the containers in containerd namespace "swarm".
    pub fn containerd_containers(&self) -> anyhow::Result<Vec<String>> {
        Ok(lines(&self.ctr(&["containers", "ls", "-q"])?))
    }

    /// Ids of the running/created tasks (containers with a process) in namespace "swarm".
    pub fn containerd_tasks(&self) -> anyhow::Result<Vec<String>> {
        Ok(lines(&self.ctr(&["tasks", "ls", "-q"])?))
    }

    /// Keys of the snapshots (overlayfs) in namespace "swarm".
    pub fn containerd_snapshots(&self) -> anyhow::Result<Vec<String>> {
        let out = self.ctr(&["snapshots", "ls"])?;
        Ok(out
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect())
    }

    /// Image references in namespace "swarm".
    pub fn containerd_images(&self) -> anyhow::Result<Vec<String>> {
        Ok(lines(&self.ctr(&["images", "ls", "-q"])?))
    }

    // ---- typed reads over the agent socket

    fn control<T>(
        &self,
        f: impl AsyncFnOnce(
            proto::control_client::ControlClient<tonic::transport::Channel>,
        ) -> Result<T, tonic::Status>,
    ) -> anyhow::Result<T> {
        let path = self.socket();
        crate::runtime().block_on(async move {
            let ch = crate::socket_channel(path).await?;
            f(proto::control_client::ControlClient::new(ch))
                .await
                .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
        })
    }

    /// Tasks of a service (name or id; all states).
    pub fn tasks(&self, service: &str) -> anyhow::Result<Vec<proto::Task>> {
        let service = service.to_string();
        let services = self.services()?;
        let id = services
            .iter()
            .find(|s| s.id == service || s.spec.as_ref().is_some_and(|sp| sp.name == service))
            .map(|s| s.id.clone())
            .unwrap_or(service);
        self.control(async move |mut c| {
            Ok(c.list_tasks(proto::ListTasksRequest {
                service_ids: vec![id],
                ..Default::default()
            })
            .await?
            .into_inner()
            .tasks)
        })
    }

    pub fn nodes(&self) -> anyhow::Result<Vec<proto::Node>> {
        self.control(async move |mut c| {
            Ok(c.list_nodes(proto::ListNodesRequest {})
                .await?
                .into_inner()
                .nodes)
        })
    }

    pub fn services(&self) -> anyhow::Result<Vec<proto::Service>> {
        self.control(async move |mut c| {
            Ok(c.list_services(proto::ListServicesRequest {})
                .await?
                .into_inner()
                .services)
        })
    }

    pub fn networks(&self) -> anyhow::Result<Vec<proto::Network>> {
        self.control(async move |mut c| {
            Ok(c.list_networks(proto::ListNetworksRequest {})
                .await?
                .into_inner()
                .networks)
        })
    }

    /// Runs `f` on a thread inside the node's network namespace (a process on the node
    /// itself: its sockets see the node's addresses and loopback).
    pub fn in_netns<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        sys::on_netns_thread(&self.netns_path(), f)
    }

    /// An HTTP GET from inside the node's namespace (`addr` e.g. `10.77.0.2:8080`).
    pub fn http_get(&self, addr: &str, path: &str) -> anyhow::Result<String> {
        let (addr, path) = (addr.to_string(), path.to_string());
        sys::on_netns_thread(&self.netns_path(), move || crate::http_get(&addr, &path))
    }

    /// The agent's Prometheus metrics.
    pub fn metrics(&self) -> anyhow::Result<String> {
        self.http_get(METRICS_ADDR, "/metrics")
    }
}

/// An HTTP GET from inside any network namespace file (a task's, under the agent's
/// `<exec-root>/netns/<task id>`).
pub fn http_get_in(netns: &Path, addr: &str, path: &str) -> anyhow::Result<String> {
    let (addr, path) = (addr.to_string(), path.to_string());
    sys::on_netns_thread(netns, move || crate::http_get(&addr, &path))
}

/// The task's address on the network named `network` (without prefix length).
pub fn task_addr(task: &proto::Task, network: &str) -> Option<String> {
    task.networks
        .iter()
        .find(|a| a.network_name == network)
        .and_then(|a| a.addresses.first())
        .and_then(|a| a.split('/').next())
        .map(str::to_string)
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    u32::from_ne_bytes(b) ^ std::process::id()
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn toml_str(p: &Path) -> String {
    // A JSON string is a valid TOML basic string.
    serde_json::to_string(&p.to_string_lossy()).unwrap_or_else(|_| format!("{p:?}"))
}

/// A private containerd: own root, state, sockets and opt dir under `dir`; CRI disabled.
fn containerd_config(dir: &Path) -> String {
    let sock = dir.join("containerd.sock");
    format!(
        "version = 2\n\
         root = {root}\n\
         state = {state}\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
         [grpc]\n  address = {sock}\n\
         [ttrpc]\n  address = {ttrpc}\n\
         [debug]\n  address = {dbg}\n\
         [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt}\n",
        root = toml_str(&dir.join("root")),
        state = toml_str(&dir.join("state")),
        sock = toml_str(&sock),
        ttrpc = toml_str(&dir.join("containerd.sock.ttrpc")),
        dbg = toml_str(&dir.join("debug.sock")),
        opt = toml_str(&dir.join("opt")),
    )
}

fn registry_addr() -> String {
    format!("{UNDERLAY_IP}:{REGISTRY_PORT}")
}

fn registry_config(dir: &Path) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"));
    format!(
        "version: 0.1\n\
         log:\n  level: info\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: {}\n  secret: swarm-lab\n\
         health:\n  storagedriver:\n    enabled: false\n",
        q(&dir.join("data").to_string_lossy()),
        q(&registry_addr()),
    )
}

// -------------------------------------------------------------------------------------- lab

/// A running lab. Dropping it tears it down (unless [`detach`](Lab::detach)ed or attached).
pub struct Lab {
    cfg: LabConfig,
    nodes: Vec<LabNode>,
    registry: Daemon,
    upstream_dns: Daemon,
    down_on_drop: bool,
}

/// What a teardown removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cleanup {
    pub processes: usize,
    pub cgroups: usize,
    pub mounts: usize,
    pub namespaces: usize,
    /// Shim sockets and runc state left in /run/containerd by killed shims.
    pub runtime_files: usize,
    /// The agents' bpffs directories (pinned maps and links: removing them detaches and
    /// unloads the programs).
    pub bpf_dirs: usize,
    pub root_removed: bool,
}

impl Cleanup {
    /// Whether there was nothing to remove.
    pub fn is_empty(&self) -> bool {
        *self == Cleanup::default()
    }
}

impl fmt::Display for Cleanup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "killed {} processes; removed {} cgroups, {} mounts, {} namespaces, {} runtime files, {} bpffs directories{}",
            self.processes,
            self.cgroups,
            self.mounts,
            self.namespaces,
            self.runtime_files,
            self.bpf_dirs,
            if self.root_removed {
                " and the lab directory"
            } else {
                ""
            }
        )
    }
}

fn progress(name: &str, msg: &str) {
    println!("lab {name}: {msg}");
}

/// Labs are heavy on two cores: the tests of one binary take theirs one at a time.
static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A test lab of `managers` + `workers` nodes, once no other test of this binary holds one;
/// keep the guard as long as the lab.
pub fn test_lab(managers: usize, workers: usize) -> (std::sync::MutexGuard<'static, ()>, Lab) {
    let guard = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::up(LabConfig::for_tests(managers, workers)).unwrap_or_else(|e| panic!("{e:#}"));
    (guard, lab)
}

impl Lab {
    fn new(cfg: LabConfig, down_on_drop: bool) -> Lab {
        let nodes = (1..=cfg.nodes()).map(|i| LabNode::new(&cfg, i)).collect();
        let reg_dir = cfg.root.join("registry");
        Lab {
            registry: Daemon::new(
                "registry".into(),
                PathBuf::from(DOCKER_REGISTRY),
                reg_dir.join("registry.pid"),
            ),
            upstream_dns: Daemon::new(
                "upstream dns".into(),
                PathBuf::from(DNSMASQ),
                cfg.root.join("dns").join("dnsmasq.pid"),
            ),
            nodes,
            cfg,
            down_on_drop,
        }
    }

    /// Builds the whole lab: namespaces, registry with the test images, containerd and agent
    /// per node, then `swarm init` on node1 and joins (managers first) until all are Ready.
    /// On failure everything made so far is removed (set `SWARM_LAB_KEEP_ON_FAILURE=1` to keep
    /// it) and the error carries the logs.
    pub fn up(mut cfg: LabConfig) -> anyhow::Result<Lab> {
        cfg.validate()?;
        preflight(&cfg)?;
        if cfg.root.join(STATE_FILE).exists() || !sys::lab_netns(&cfg.name).is_empty() {
            bail!(
                "a lab named {} already exists (root {}): tear it down first (`cargo xtask lab down`, or Lab::cleanup)",
                cfg.name,
                cfg.root.display()
            );
        }
        std::fs::create_dir_all(&cfg.root)
            .with_context(|| format!("creating the lab directory {}", cfg.root.display()))?;
        cfg.root = std::fs::canonicalize(&cfg.root)?;
        let mut lab = Lab::new(cfg, true);
        lab.write_state()?;
        match lab.build() {
            Ok(()) => Ok(lab),
            Err(e) => {
                let logs = lab.logs();
                if std::env::var_os(KEEP_ON_FAILURE_ENV).is_some() {
                    lab.down_on_drop = false;
                    eprintln!(
                        "lab {}: kept after the failure ({KEEP_ON_FAILURE_ENV}); remove it with `cargo xtask lab down`",
                        lab.cfg.name
                    );
                }
                Err(e.context(format!(
                    "bringing up the lab {} failed; logs:\n{logs}",
                    lab.cfg.name
                )))
            }
        }
    }

    /// Re-opens a lab from `<root>/lab.json` (from a later process). Dropping it leaves the
    /// lab running; [`down`](Lab::down) removes it.
    pub fn attach(root: &Path) -> anyhow::Result<Lab> {
        let path = root.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is a lab up there? start one with `cargo xtask lab up`)",
                path.display()
            )
        })?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let field = |k: &str| {
            v.get(k)
                .ok_or_else(|| anyhow::anyhow!("{} has no {k:?}", path.display()))
        };
        let s = |k: &str| -> anyhow::Result<String> {
            Ok(field(k)?
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("{k:?} in {} is not a string", path.display()))?
                .to_string())
        };
        let n = |k: &str| -> anyhow::Result<u64> {
            field(k)?
                .as_u64()
                .ok_or_else(|| anyhow::anyhow!("{k:?} in {} is not a number", path.display()))
        };
        let mut cfg = LabConfig::new(
            &s("name")?,
            n("managers")? as usize,
            n("workers")? as usize,
            s("root")?,
            s("bin_dir")?,
        );
        cfg.port = u16::try_from(n("port")?).context("port in lab.json")?;
        cfg.whoami = PathBuf::from(s("whoami")?);
        cfg.temporary = v.get("temporary").and_then(|t| t.as_bool()) == Some(true);
        validate_name(&cfg.name)?;
        Ok(Lab::new(cfg, false))
    }

    /// Tears down the temporary (test) labs under /tmp whose owner process is gone (a test
    /// run killed before its labs were dropped); returns what was removed or failed, by name.
    pub fn sweep_stale() -> Vec<(String, String)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/tmp").into_iter().flatten().flatten() {
            let root = e.path();
            let is_test_root = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("swl-"))
                .is_some_and(|n| validate_name(n).is_ok());
            if !is_test_root {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(root.join(STATE_FILE)) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            let temporary = v.get("temporary").and_then(|t| t.as_bool()) == Some(true);
            let owner = v.get("owner_pid").and_then(|p| p.as_i64()).unwrap_or(0) as i32;
            let Some(name) = v.get("name").and_then(|n| n.as_str()) else {
                continue;
            };
            if !temporary || owner <= 0 || sys::process_alive(owner) {
                continue;
            }
            let result = match Lab::cleanup(name, &root) {
                Ok(c) => c.to_string(),
                Err(e) => format!("{e:#}"),
            };
            out.push((name.to_string(), result));
        }
        out
    }

    fn write_state(&self) -> anyhow::Result<()> {
        let c = &self.cfg;
        let v = serde_json::json!({
            "name": c.name,
            "managers": c.managers,
            "workers": c.workers,
            "root": c.root.to_string_lossy(),
            "bin_dir": c.bin_dir.to_string_lossy(),
            "port": c.port,
            "whoami": c.whoami.to_string_lossy(),
            "registry": registry_addr(),
            "temporary": c.temporary,
            "owner_pid": std::process::id(),
        });
        let path = c.root.join(STATE_FILE);
        std::fs::write(&path, format!("{v:#}\n"))
            .with_context(|| format!("writing {}", path.display()))
    }

    fn build(&self) -> anyhow::Result<()> {
        let name = &self.cfg.name;
        progress(
            name,
            &format!(
                "creating the underlay and {} node namespaces ({NODE_NET}.0/24)",
                self.nodes.len()
            ),
        );
        self.make_network()?;
        progress(
            name,
            &format!("starting the registry on {}", registry_addr()),
        );
        self.start_registry()?;
        progress(
            name,
            &format!(
                "starting the upstream resolver on {UNDERLAY_IP}:53 (zone {UPSTREAM_TEST_ZONE})"
            ),
        );
        self.start_upstream_dns()?;
        progress(name, "pushing the whoami and busybox images");
        for r in self.push_images()? {
            progress(name, &format!("  {r}"));
        }
        progress(name, "starting one containerd per node");
        for n in &self.nodes {
            n.spawn_containerd()?;
        }
        for n in &self.nodes {
            n.wait_containerd()?;
        }
        progress(name, "starting swarm-agent on every node");
        for n in &self.nodes {
            n.spawn_agent()?;
        }
        for n in &self.nodes {
            n.wait_agent()?;
        }
        self.form()?;
        progress(
            name,
            &format!(
                "up: {} managers, {} workers, registry {}",
                self.cfg.managers,
                self.cfg.workers,
                registry_addr()
            ),
        );
        Ok(())
    }

    fn make_network(&self) -> anyhow::Result<()> {
        let ul = self.underlay_netns();
        sys::ip(&["netns", "add", &ul])?;
        sys::ip(&["-n", &ul, "link", "set", "lo", "up"])?;
        sys::ip(&["-n", &ul, "link", "add", "br0", "type", "bridge"])?;
        sys::ip(&[
            "-n",
            &ul,
            "addr",
            "add",
            &format!("{UNDERLAY_IP}/24"),
            "dev",
            "br0",
        ])?;
        sys::ip(&["-n", &ul, "link", "set", "br0", "up"])?;
        for n in &self.nodes {
            let ns = n.netns();
            let veth = format!("veth{}", n.index);
            sys::ip(&["netns", "add", &ns])?;
            sys::ip(&[
                "-n", &ul, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            sys::ip(&["-n", &ul, "link", "set", &veth, "master", "br0", "up"])?;
            sys::ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            sys::ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", n.ip()),
                "dev",
                "eth0",
            ])?;
            sys::ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    fn form(&self) -> anyhow::Result<()> {
        let first = self.node(1);
        progress(
            &self.cfg.name,
            &format!("swarm init on node1 ({})", first.addr()),
        );
        first.try_swarm(&[
            "init",
            "--advertise-addr",
            &first.addr(),
            "--listen-addr",
            &first.addr(),
        ])?;
        let manager_token = first
            .try_swarm(&["join-token", "-q", "manager"])?
            .trim()
            .to_string();
        let worker_token = first
            .try_swarm(&["join-token", "-q", "worker"])?
            .trim()
            .to_string();
        for n in &self.nodes[1..] {
            let (role, token) = if n.manager {
                ("manager", &manager_token)
            } else {
                ("worker", &worker_token)
            };
            progress(&self.cfg.name, &format!("{} joins as a {role}", n.name));
            n.try_swarm(&[
                "join",
                "--token",
                token,
                "--advertise-addr",
                &n.addr(),
                "--listen-addr",
                &n.addr(),
                &first.addr(),
            ])
            .with_context(|| format!("agent log of {}:\n{}", n.name, n.agent_log_tail()))?;
        }
        self.wait_ready(Duration::from_secs(90))
    }

    /// Waits until node1 lists every node as Ready.
    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let total = self.nodes.len();
        wait_for(timeout, || {
            let o = self.node(1).swarm(&["node", "ls"]);
            o.ok() && o.stdout.lines().filter(|l| l.contains(" Ready ")).count() == total
        })
        .with_context(|| {
            format!(
                "waiting for {total} Ready nodes:\n{}",
                self.node(1).swarm(&["node", "ls"]).stdout
            )
        })
    }

    pub fn config(&self) -> &LabConfig {
        &self.cfg
    }
    pub fn name(&self) -> &str {
        &self.cfg.name
    }
    pub fn root(&self) -> &Path {
        &self.cfg.root
    }
    /// Node `i`, 1-based as in its name (`lab.node(1)` is node1, the first manager).
    /// Panics when there is no such node.
    pub fn node(&self, i: usize) -> &LabNode {
        match i.checked_sub(1).and_then(|k| self.nodes.get(k)) {
            Some(n) => n,
            None => panic!(
                "lab {} has nodes node1..node{}, not node{i}",
                self.cfg.name,
                self.nodes.len()
            ),
        }
    }
    /// A node by its name (`node3`), or by its number (`3`).
    pub fn node_named(&self, name: &str) -> Option<&LabNode> {
        let i: usize = name.strip_prefix("node").unwrap_or(name).parse().ok()?;
        i.checked_sub(1).and_then(|k| self.nodes.get(k))
    }
    pub fn nodes(&self) -> &[LabNode] {
        &self.nodes
    }

    /// The lab node a task runs on.
    pub fn node_of(&self, task: &proto::Task) -> anyhow::Result<&LabNode> {
        let nodes = self.node(1).nodes()?;
        let host = nodes
            .iter()
            .find(|n| n.id == task.node_id)
            .and_then(|n| n.description.as_ref())
            .map(|d| d.hostname.clone())
            .with_context(|| format!("task {} is on an unknown node {}", task.id, task.node_id))?;
        self.node_named(&host)
            .with_context(|| format!("no lab node named {host}"))
    }

    /// The running tasks of `service` once there are exactly `n` of them (within `timeout`).
    pub fn running_tasks(
        &self,
        service: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<proto::Task>> {
        let m = self.node(1);
        let mut last = String::new();
        wait_for(timeout, || {
            let tasks = m.tasks(service).unwrap_or_default();
            let ok = crate::running(&tasks).len() == n;
            if !ok {
                last = m.swarm(&["service", "ps", service]).stdout;
            }
            ok
        })
        .with_context(|| format!("{service} never had {n} running tasks:\n{last}"))?;
        Ok(crate::running(&m.tasks(service)?)
            .into_iter()
            .cloned()
            .collect())
    }

    /// Runs `cmd` inside the task's container, on its node.
    pub fn task_exec(&self, task: &proto::Task, cmd: &[&str]) -> anyhow::Result<String> {
        self.node_of(task)?.task_exec(&task.id, cmd)
    }

    /// An HTTP GET from inside the task's container (whoami's client mode: a process of the
    /// container like any other, resolving names through the container's resolv.conf);
    /// the first line of the body.
    pub fn task_get(&self, task: &proto::Task, url: &str) -> anyhow::Result<String> {
        Ok(self
            .task_exec(task, &["/whoami", "get", url])?
            .trim()
            .to_string())
    }

    /// The registry's `host:port` (reachable from every node; images are `<it>/whoami:latest`
    /// and `<it>/busybox:latest`).
    pub fn registry(&self) -> String {
        registry_addr()
    }
    /// `<name>-ul`: the namespace of the bridge and the registry.
    pub fn underlay_netns(&self) -> String {
        format!("{}-ul", self.cfg.name)
    }

    pub fn underlay_netns_path(&self) -> PathBuf {
        sys::netns_path(&self.underlay_netns())
    }

    /// Runs `f` on a thread inside the underlay namespace: a client outside every node (its
    /// address is [`UNDERLAY_IP`]), as a machine on the nodes' LAN would be.
    pub fn in_underlay<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        sys::on_netns_thread(&self.underlay_netns_path(), f)
    }

    /// A command in the underlay namespace (for `tc qdisc … dev veth<i>`, `ip link set veth<i>
    /// down` …: node i's cable is `veth<i>` there).
    pub fn underlay_command(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> anyhow::Result<Command> {
        let mut cmd = Command::new(program);
        sys::in_netns(&mut cmd, &sys::netns_path(&self.underlay_netns()), false)?;
        Ok(cmd)
    }

    /// Runs a command in the underlay namespace.
    pub fn underlay_exec(&self, args: &[&str]) -> CliOutput {
        let Some((prog, rest)) = args.split_first() else {
            return output(Err(std::io::Error::other("empty command")), "");
        };
        match self.underlay_command(prog) {
            Ok(mut c) => output(c.args(rest).stdin(Stdio::null()).output(), prog),
            Err(e) => output(Err(std::io::Error::other(format!("{e:#}"))), prog),
        }
    }

    pub fn registry_running(&self) -> bool {
        self.registry.pid().is_some()
    }

    /// Starts the registry (when not running) and waits until `GET /v2/` answers.
    /// The node's resolvers as the agents see them (`--resolv-conf`): the lab's upstream.
    pub fn resolv_conf(&self) -> PathBuf {
        self.cfg.root.join("dns").join("resolv.conf")
    }

    /// dnsmasq in the underlay on port 53, serving the zone [`UPSTREAM_TEST_ZONE`]
    /// ([`UPSTREAM_TEST_NAME`] → [`UPSTREAM_TEST_ADDR`]): what the agents forward to.
    pub fn start_upstream_dns(&self) -> anyhow::Result<()> {
        if self.upstream_dns.pid().is_some() {
            return Ok(());
        }
        let dir = self.cfg.root.join("dns");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(self.resolv_conf(), format!("nameserver {UNDERLAY_IP}\n"))?;
        let log = dir.join("dnsmasq.log");
        let (out, err) = log_file(&log)?;
        let mut cmd = Command::new(DNSMASQ);
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={UNDERLAY_IP}"),
            "--port=53",
            // The zone is local: its name has an A record (AAAA questions get NODATA, other
            // names NXDOMAIN); anything outside it is refused (no upstream of its own).
            &format!("--local=/{UPSTREAM_TEST_ZONE}/"),
            &format!("--host-record={UPSTREAM_TEST_NAME},{UPSTREAM_TEST_ADDR}"),
            "--user=root",
            "--pid-file=",
            "--log-facility=-",
        ])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
        sys::in_netns(&mut cmd, &sys::netns_path(&self.underlay_netns()), true)?;
        self.upstream_dns.spawn(cmd)?;
        wait_for_quick(Duration::from_secs(10), || {
            let addr = format!("{UNDERLAY_IP}:53");
            sys::on_netns_thread(&sys::netns_path(&self.underlay_netns()), move || {
                Ok(std::net::TcpStream::connect_timeout(
                    &addr.parse()?,
                    Duration::from_millis(200),
                )?)
            })
            .is_ok()
        })
        .with_context(|| {
            format!(
                "dnsmasq did not listen on {UNDERLAY_IP}:53; log:\n{}",
                tail(&log, 20)
            )
        })
    }

    pub fn start_registry(&self) -> anyhow::Result<()> {
        if self.registry_running() {
            return Ok(());
        }
        let dir = self.cfg.root.join("registry");
        std::fs::create_dir_all(dir.join("data"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let cfg = dir.join("config.yml");
        std::fs::write(&cfg, registry_config(&dir))
            .with_context(|| format!("writing {}", cfg.display()))?;
        let log = dir.join("registry.log");
        let (out, err) = log_file(&log)?;
        let mut cmd = Command::new(DOCKER_REGISTRY);
        cmd.arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        sys::in_netns(&mut cmd, &sys::netns_path(&self.underlay_netns()), true)?;
        self.registry.spawn(cmd)?;
        let addr = registry_addr();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let a = addr.clone();
            let ping = sys::on_netns_thread(&sys::netns_path(&self.underlay_netns()), move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    let c = swarm_oci::Registry::with_options(
                        &a,
                        swarm_oci::RegistryOptions {
                            attempts: 1,
                            connect_timeout: Duration::from_millis(500),
                            request_timeout: Duration::from_secs(2),
                            ..Default::default()
                        },
                    )?;
                    c.ping().await?;
                    anyhow::Ok(())
                })
            });
            match ping {
                Ok(()) => return Ok(()),
                Err(e) => {
                    if !self.registry_running() {
                        bail!(
                            "{DOCKER_REGISTRY} exited; log {}:\n{}",
                            log.display(),
                            tail(&log, 20)
                        );
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "the registry did not answer on {addr} within 20 s ({e:#}); log {}:\n{}",
                            log.display(),
                            tail(&log, 20)
                        );
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// SIGKILL the registry (pulls fail until [`start_registry`](Self::start_registry)).
    pub fn stop_registry(&self) -> anyhow::Result<()> {
        self.registry.stop(libc::SIGKILL, Duration::from_secs(10))
    }

    /// Builds the test images and pushes them to the lab registry (from the underlay
    /// namespace); returns `REGISTRY/NAME:latest@DIGEST` lines.
    pub fn push_images(&self) -> anyhow::Result<Vec<String>> {
        let whoami = images::whoami_image(&self.cfg.whoami)?;
        let busybox = images::busybox_image(Path::new(images::BUSYBOX))?;
        let addr = registry_addr();
        sys::on_netns_thread(&sys::netns_path(&self.underlay_netns()), move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(images::push_images(&addr, &whoami, &busybox))
        })
    }

    /// Nodes (with their processes), the registry, and `swarm node ls` from node1.
    pub fn status(&self) -> String {
        let mut s = format!(
            "lab {} (root {}), registry {} ({})\n",
            self.cfg.name,
            self.cfg.root.display(),
            registry_addr(),
            pid_text(self.registry.pid())
        );
        s.push_str(&format!(
            "{:<8} {:<8} {:<12} {:<20} {:<20}\n",
            "NODE", "ROLE", "ADDRESS", "CONTAINERD", "SWARM-AGENT"
        ));
        for n in &self.nodes {
            let netns = if n.netns_path().exists() {
                n.ip()
            } else {
                "(no netns)".into()
            };
            s.push_str(&format!(
                "{:<8} {:<8} {:<12} {:<20} {:<20}\n",
                n.name,
                if n.manager { "manager" } else { "worker" },
                netns,
                pid_text(n.containerd_pid()),
                pid_text(n.agent_pid()),
            ));
        }
        match self.nodes.first() {
            Some(n) => {
                let o = n.swarm(&["node", "ls"]);
                s.push_str("\n$ swarm node ls   (on node1)\n");
                s.push_str(if o.ok() { &o.stdout } else { &o.stderr });
            }
            None => s.push_str("(no nodes)\n"),
        }
        s
    }

    /// Log tails of every daemon (for failure messages).
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            for (what, path) in [
                ("containerd", n.containerd_log()),
                ("swarm-agent", n.agent_log()),
            ] {
                let t = tail(&path, 15);
                if !t.is_empty() {
                    s.push_str(&format!(
                        "==== {} {what} ({}) ====\n{t}\n",
                        n.name,
                        path.display()
                    ));
                }
            }
        }
        let reg = self.cfg.root.join("registry/registry.log");
        let t = tail(&reg, 10);
        if !t.is_empty() {
            s.push_str(&format!("==== registry ({}) ====\n{t}\n", reg.display()));
        }
        s
    }

    /// Leaves the lab running when this handle goes away.
    pub fn detach(mut self) {
        self.down_on_drop = false;
    }

    /// Removes everything the lab made (see [`Lab::cleanup`]). Idempotent.
    pub fn down(&mut self) -> anyhow::Result<Cleanup> {
        self.down_on_drop = false;
        // Our own children: kill and reap them first (no zombies left behind).
        for n in &self.nodes {
            let _ = n.agent.stop(libc::SIGKILL, Duration::from_secs(5));
            let _ = n.containerd.stop(libc::SIGKILL, Duration::from_secs(5));
        }
        let _ = self.registry.stop(libc::SIGKILL, Duration::from_secs(5));
        Lab::cleanup(&self.cfg.name, &self.cfg.root)
    }

    /// Tears down the lab `name` rooted at `root` from what can be found on the host, whoever
    /// made it and however far it got: kills every process in its namespaces and cgroups,
    /// removes the cgroups (deepest first), unmounts everything under `root`, deletes the
    /// namespaces, the shim sockets and runc state its containers left in /run/containerd,
    /// and `root` itself (only when it holds this lab's lab.json, or is empty). Idempotent.
    pub fn cleanup(name: &str, root: &Path) -> anyhow::Result<Cleanup> {
        validate_name(name)?;
        let mut c = Cleanup::default();
        let mut errors: Vec<String> = Vec::new();
        let netns = sys::lab_netns(name);
        let cgroups = sys::lab_cgroups(name);
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());

        // What killed shims leave behind, found while they still run.
        let mut shim_sockets = BTreeSet::new();
        for ns in &netns {
            if let Some(pid) = sys::pids_in_netns(&sys::netns_path(ns)).first() {
                shim_sockets.extend(
                    sys::unix_socket_paths(*pid)
                        .into_iter()
                        .filter(|p| Path::new(p).starts_with(sys::SHIM_SOCKET_DIR)),
                );
            }
        }
        let mut container_ids = BTreeSet::new();
        for cg in &cgroups {
            for d in sys::cgroup_tree(cg) {
                if &d != cg {
                    if let Some(n) = d.file_name().and_then(|n| n.to_str()) {
                        container_ids.insert(n.to_string());
                    }
                }
            }
        }
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let task_dir = e
                .path()
                .join("containerd/state/io.containerd.runtime.v2.task");
            for ns in std::fs::read_dir(&task_dir).into_iter().flatten().flatten() {
                for ctr in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                    if let Some(id) = ctr.file_name().to_str() {
                        container_ids.insert(id.to_string());
                    }
                }
            }
        }

        // Kill until nothing is left (new processes may appear while parents die).
        let mut killed = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut pids = BTreeSet::new();
            for ns in &netns {
                pids.extend(sys::pids_in_netns(&sys::netns_path(ns)));
            }
            for cg in &cgroups {
                sys::thaw(cg);
                pids.extend(sys::cgroup_pids(cg));
            }
            pids.remove(&(std::process::id() as i32));
            if pids.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                errors.push(format!("processes that do not die: {pids:?}"));
                break;
            }
            for &pid in &pids {
                sys::kill(pid, libc::SIGKILL);
                killed.insert(pid);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        c.processes = killed.len();

        for cg in &cgroups {
            for d in sys::cgroup_tree(cg) {
                let mut last = None;
                for _ in 0..40 {
                    match std::fs::remove_dir(&d) {
                        Ok(()) => {
                            c.cgroups += 1;
                            last = None;
                            break;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            last = None;
                            break;
                        }
                        Err(e) => {
                            last = Some(e);
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
                if let Some(e) = last {
                    errors.push(format!("removing the cgroup {}: {e}", d.display()));
                }
            }
        }

        for _ in 0..5 {
            let mounts = sys::mounts_under(&root);
            if mounts.is_empty() {
                break;
            }
            for m in mounts {
                match sys::unmount(&m) {
                    Ok(()) => c.mounts += 1,
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => errors.push(format!("unmounting {}: {e}", m.display())),
                }
            }
        }
        let left = sys::mounts_under(&root);
        if !left.is_empty() {
            errors.push(format!("mounts left under {}: {left:?}", root.display()));
        }

        for ns in &netns {
            if sys::ip(&["netns", "del", ns]).is_ok() {
                c.namespaces += 1;
                continue;
            }
            let p = sys::netns_path(ns);
            let _ = sys::unmount(&p);
            match std::fs::remove_file(&p) {
                Ok(()) => c.namespaces += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("deleting the namespace {ns}: {e}")),
            }
        }

        for s in &shim_sockets {
            if std::fs::remove_file(s).is_ok() {
                c.runtime_files += 1;
            }
        }
        // After the agents are dead: the pins are what keeps their programs attached.
        for d in sys::lab_bpf_dirs(name) {
            match std::fs::remove_dir_all(&d) {
                Ok(()) => c.bpf_dirs += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("removing {}: {e}", d.display())),
            }
        }
        for id in &container_ids {
            // Ids are containerd's (task ids): never a path.
            if id.is_empty() || id.contains('/') || id.starts_with('.') {
                continue;
            }
            let d = Path::new(sys::RUNC_ROOT)
                .join(CONTAINERD_NAMESPACE)
                .join(id);
            if d.is_dir() && std::fs::remove_dir_all(&d).is_ok() {
                c.runtime_files += 1;
            }
        }

        if root.exists() && left.is_empty() {
            let state = std::fs::read_to_string(root.join(STATE_FILE))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
            let ours = state
                .as_ref()
                .and_then(|v| v.get("name"))
                .and_then(|v| v.as_str())
                == Some(name);
            let empty = std::fs::read_dir(&root).is_ok_and(|mut d| d.next().is_none());
            if ours || empty {
                match std::fs::remove_dir_all(&root) {
                    Ok(()) => c.root_removed = true,
                    Err(e) => errors.push(format!("removing {}: {e}", root.display())),
                }
            } else {
                errors.push(format!(
                    "not removing {}: it holds no {STATE_FILE} of the lab {name}",
                    root.display()
                ));
            }
        }

        if !errors.is_empty() {
            bail!(
                "tearing down the lab {name} left things behind ({c}):\n  {}",
                errors.join("\n  ")
            );
        }
        Ok(c)
    }
}

fn pid_text(pid: Option<i32>) -> String {
    match pid {
        Some(p) => format!("running (pid {p})"),
        None => "not running".into(),
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.down_on_drop {
            if let Err(e) = self.down() {
                eprintln!("lab {}: {e:#}", self.cfg.name);
            }
        }
    }
}

/// Whether a program is on PATH (or in the sbin directories root's PATH usually has).
fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(std::env::split_paths(DAEMON_PATH))
        .any(|d| d.join(program).is_file())
}

/// Says what is missing and how to get it.
fn preflight(cfg: &LabConfig) -> anyhow::Result<()> {
    if !sys::is_root() {
        bail!("not root: the lab creates network namespaces, cgroups and mounts and runs containerd; run it as root");
    }
    let mut missing = Vec::new();
    for (prog, path, pkg) in [
        ("ip", None, "iproute2"),
        ("containerd", Some(CONTAINERD), "containerd"),
        ("ctr", Some(CTR), "containerd"),
        ("runc", None, "runc"),
        ("docker-registry", Some(DOCKER_REGISTRY), "docker-registry"),
        ("busybox", Some(images::BUSYBOX), "busybox-static"),
    ] {
        let found = match path {
            Some(p) => Path::new(p).is_file(),
            None => on_path(prog),
        };
        if !found {
            missing.push((prog, pkg));
        }
    }
    if !missing.is_empty() {
        let pkgs: BTreeSet<&str> = missing.iter().map(|(_, p)| *p).collect();
        bail!(
            "missing {}: apt-get install -y {}",
            missing
                .iter()
                .map(|(p, _)| *p)
                .collect::<Vec<_>>()
                .join(", "),
            pkgs.into_iter().collect::<Vec<_>>().join(" ")
        );
    }
    for bin in ["swarm-agent", "swarm"] {
        let p = cfg.bin_dir.join(bin);
        if !p.is_file() {
            bail!(
                "{} is missing: build it with `cargo build -p swarm-agent -p swarm-cli` (or run the tests with `cargo xtask test`)",
                p.display()
            );
        }
    }
    if !cfg.whoami.is_file() {
        bail!(
            "the whoami binary {} is missing: {}",
            cfg.whoami.display(),
            images::whoami_build_hint()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_lowercase_and_start_with_a_letter() {
        for ok in ["swl", "a", "abcd1234", "t9"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "1ab", "Abc", "a-b", "abcdefghi", "a/b", "a b"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        for _ in 0..20 {
            let n = random_name();
            assert_eq!(n.len(), 4);
            validate_name(&n).unwrap();
        }
    }

    #[test]
    fn configs_refuse_long_roots_no_managers_and_too_many_nodes() {
        let ok = LabConfig::new("swl", 3, 2, "/run/swarm-lab", "/x/target/debug");
        ok.validate().unwrap();
        assert_eq!(ok.port, 2377);
        assert_eq!(
            ok.whoami,
            images::whoami_path(&images::workspace_root().join("target"))
        );
        let mut c = ok.clone();
        c.managers = 0;
        assert!(format!("{:#}", c.validate().unwrap_err()).contains("manager"));
        let mut c = ok.clone();
        c.workers = 300;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.root = PathBuf::from(format!("/tmp/{}", "x".repeat(80)));
        assert!(format!("{:#}", c.validate().unwrap_err()).contains("too long"));
        let mut c = ok;
        c.root = PathBuf::from("relative");
        assert!(c.validate().is_err());
    }

    #[test]
    fn nodes_are_named_and_addressed_by_index_managers_first() {
        let cfg = LabConfig::new("ab", 2, 1, "/tmp/swl-ab", "/b");
        let lab = Lab::new(cfg, false);
        assert_eq!(lab.nodes().len(), 3);
        let n3 = lab.node(3);
        assert_eq!(n3.name(), "node3");
        assert!(!n3.is_manager());
        assert!(lab.node(2).is_manager());
        assert_eq!(n3.ip(), "10.77.0.3");
        assert_eq!(n3.addr(), "10.77.0.3:2377");
        assert_eq!(n3.netns(), "ab-node3");
        assert_eq!(n3.cgroup_parent(), "ab-node3");
        assert_eq!(
            n3.containerd_socket(),
            PathBuf::from("/tmp/swl-ab/node3/containerd/containerd.sock")
        );
        assert_eq!(n3.socket(), PathBuf::from("/tmp/swl-ab/node3/swarm.sock"));
        assert_eq!(lab.underlay_netns(), "ab-ul");
        assert_eq!(lab.registry(), "10.77.0.254:5000");
        assert_eq!(lab.node_named("node2").map(|n| n.index()), Some(2));
        assert_eq!(lab.node_named("3").map(|n| n.index()), Some(3));
        assert!(lab.node_named("node4").is_none());
        assert!(lab.node_named("node0").is_none());
    }

    #[test]
    fn the_state_file_round_trips_through_attach() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = LabConfig::new("rt", 1, 2, dir.path(), "/b/target/debug");
        cfg.port = 4000;
        Lab::new(cfg, false).write_state().unwrap();
        let lab = Lab::attach(dir.path()).unwrap();
        assert_eq!(lab.name(), "rt");
        assert_eq!(lab.nodes().len(), 3);
        assert_eq!(lab.config().port, 4000);
        assert_eq!(lab.config().bin_dir, PathBuf::from("/b/target/debug"));
        assert!(!lab.node(1).agent_running());
        let Err(err) = Lab::attach(&dir.path().join("nothing")) else {
            panic!("attached to nothing");
        };
        assert!(format!("{err:#}").contains("cargo xtask lab up"));
    }

    #[test]
    fn cleanup_of_a_lab_that_never_existed_removes_nothing_and_keeps_foreign_dirs() {
        let dir = tempfile::tempdir().unwrap();
        // An empty root is the lab's (a crash right after mkdir): removed.
        let root = dir.path().join("empty");
        std::fs::create_dir(&root).unwrap();
        let c = Lab::cleanup("zzqx", &root).unwrap();
        assert!(c.root_removed);
        assert!(!root.exists());
        // A root with foreign content and no lab.json is kept, and said so.
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("keep"), "x").unwrap();
        let err = Lab::cleanup("zzqx", &other).unwrap_err();
        assert!(format!("{err:#}").contains("not removing"), "{err:#}");
        assert!(other.join("keep").exists());
        // Nothing at all: nothing to do, twice.
        assert!(Lab::cleanup("zzqx", &dir.path().join("gone"))
            .unwrap()
            .is_empty());
        assert!(Lab::cleanup("zzqx", &dir.path().join("gone"))
            .unwrap()
            .is_empty());
        assert!(Lab::cleanup("../x", &root).is_err());
    }

    #[test]
    fn stale_test_labs_are_swept_and_live_ones_kept() {
        let dead = {
            let mut c = Command::new("true").spawn().unwrap();
            let pid = c.id();
            c.wait().unwrap();
            pid
        };
        let write = |name: &str, owner: u32, temporary: bool| {
            let root = test_root(name);
            std::fs::create_dir_all(root.join("node1")).unwrap();
            let v = serde_json::json!({"name": name, "temporary": temporary, "owner_pid": owner});
            std::fs::write(root.join(STATE_FILE), v.to_string()).unwrap();
            root
        };
        let stale = write(&random_name(), dead, true);
        let live = write(&random_name(), std::process::id(), true);
        let kept = write(&random_name(), dead, false);
        let swept = Lab::sweep_stale();
        assert!(!stale.exists(), "{swept:?}");
        assert!(live.exists() && kept.exists(), "{swept:?}");
        for r in [live, kept] {
            std::fs::remove_dir_all(r).unwrap();
        }
    }

    #[test]
    fn containerd_config_keeps_everything_under_the_node_dir() {
        let c = containerd_config(Path::new("/tmp/swl-ab/node1/containerd"));
        assert!(
            c.contains("root = \"/tmp/swl-ab/node1/containerd/root\""),
            "{c}"
        );
        assert!(c.contains("address = \"/tmp/swl-ab/node1/containerd/containerd.sock\""));
        assert!(c.contains("io.containerd.grpc.v1.cri"));
        assert!(c.contains("path = \"/tmp/swl-ab/node1/containerd/opt\""));
        let r = registry_config(Path::new("/tmp/swl-ab/registry"));
        assert!(r.contains("addr: \"10.77.0.254:5000\""), "{r}");
        assert!(
            r.contains("rootdirectory: \"/tmp/swl-ab/registry/data\""),
            "{r}"
        );
    }
}
