//! The loopback harness: real `test-agent` processes (the daemon with the simulated
//! executor) on loopback addresses 127.0.0.N, driven through the real `swarm` CLI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::client::{bin_dir, swarm_bin, AgentClient, CliOutput};
use crate::helpers::wait_for;

pub struct AgentProc {
    pub name: String,
    pub ip: String,
    pub port: u16,
    pub data_root: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    agent_bin: PathBuf,
    /// More daemon flags (e.g. `--containerd-socket`).
    pub extra_args: Vec<String>,
    /// The network namespace the daemon runs in (a [`FaultNet`](crate::faults::FaultNet)
    /// node's), or the host's when None.
    pub netns: Option<PathBuf>,
    child: Option<Child>,
}

impl AgentProc {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// The daemon's /metrics address: the manager port + 1 (tests space their ports by 100).
    pub fn metrics_addr(&self) -> String {
        format!("{}:{}", self.ip, self.port + 1)
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(&self.agent_bin);
        if let Some(ns) = &self.netns {
            crate::lab::sys::in_netns(&mut cmd, ns, false)?;
        }
        let child = cmd
            .arg("--data-root")
            .arg(&self.data_root)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--hostname")
            .arg(&self.name)
            .arg("--metrics-addr")
            .arg(self.metrics_addr())
            .args(&self.extra_args)
            .env(
                "RUST_LOG",
                "info,openraft=warn,h2=warn,tower=warn,hyper=warn",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.agent_bin.display()))?;
        self.child = Some(child);
        wait_for(Duration::from_secs(20), || self.socket.exists()).with_context(|| {
            format!(
                "{} did not open its socket; log:\n{}",
                self.name,
                self.log_tail()
            )
        })?;
        Ok(())
    }

    /// SIGKILL: the process dies without any cleanup.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: sending a signal to our own child process.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP / SIGCONT: freeze the process (a hung or partitioned node) and resume it.
    pub fn freeze(&self, frozen: bool) {
        if let Some(c) = &self.child {
            let sig = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: sending a signal to our own child process.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// The daemon's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The exit status once the process ended on its own (then it counts as stopped and
    /// `start` runs it again); None while it runs or when it was never started.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn cert_paths(&self) -> (PathBuf, PathBuf, PathBuf) {
        let d = self.data_root.join("certificates");
        (
            d.join("swarm-node.crt"),
            d.join("swarm-node.key"),
            d.join("swarm-root-ca.crt"),
        )
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}

impl AgentClient for AgentProc {
    fn name(&self) -> &str {
        &self.name
    }

    fn socket(&self) -> PathBuf {
        self.socket.clone()
    }

    /// Runs `swarm -H unix://<socket> ARGS...`.
    fn swarm(&self, args: &[&str]) -> CliOutput {
        Command::new(swarm_bin())
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running the swarm CLI")
            .into()
    }
}

/// Nodes named node1…nodeN on 127.0.0.1…127.0.0.N, all on `port`.
pub struct Cluster {
    /// Removed when the cluster is dropped (None: kept, as the lab does).
    _tmp: Option<tempfile::TempDir>,
    pub root: PathBuf,
    agent_bin: PathBuf,
    pub nodes: Vec<AgentProc>,
    pub port: u16,
    agent_args: Vec<String>,
    /// Where each node lives when not on 127.0.0.N: its address and network namespace.
    hosts: Vec<(String, PathBuf)>,
}

impl Cluster {
    /// A cluster of `test-agent` processes in a temporary directory, removed at the end.
    pub fn new(count: usize, port: u16) -> anyhow::Result<Cluster> {
        Self::of(&bin_dir().join("test-agent"), count, port)
    }

    /// A cluster of processes of the daemon binary `agent_bin` (the shipped `swarm-agent`
    /// or `test-agent`) in a temporary directory.
    pub fn of(agent_bin: &Path, count: usize, port: u16) -> anyhow::Result<Cluster> {
        Self::of_with_args(agent_bin, count, port, &[])
    }

    /// Like [`Cluster::of`], every daemon started with `args` too.
    pub fn of_with_args(
        agent_bin: &Path,
        count: usize,
        port: u16,
        args: &[&str],
    ) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("swarm-e2e-").tempdir()?;
        let root = dir.path().to_path_buf();
        let args = args.iter().map(|s| s.to_string()).collect();
        Self::build(Some(dir), root, agent_bin.to_path_buf(), count, port, args)
    }

    /// [`Cluster::new`] formed with [`form`](Cluster::form) (for tests: panics with the logs
    /// when it does not form).
    pub fn formed(count: usize, port: u16, managers: usize) -> Cluster {
        let c = Self::new(count, port).unwrap();
        c.form(managers)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
        c
    }

    /// A cluster of `count` `test-agent` processes, node i in `net`'s namespace i on its
    /// address there (so that the links between nodes can be cut), in a temporary directory.
    pub fn on_net(net: &crate::faults::FaultNet, port: u16) -> anyhow::Result<Cluster> {
        Self::on_net_with_args(net, port, &[])
    }

    /// Like [`Cluster::on_net`], every daemon started with `args` too.
    pub fn on_net_with_args(
        net: &crate::faults::FaultNet,
        port: u16,
        args: &[&str],
    ) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("swarm-faults-").tempdir()?;
        let root = dir.path().to_path_buf();
        let hosts = (0..net.len())
            .map(|i| (net.ip(i), net.netns_path(i)))
            .collect();
        Self::build_on(
            Some(dir),
            root,
            bin_dir().join("test-agent"),
            port,
            args.iter().map(|s| s.to_string()).collect(),
            hosts,
        )
    }

    /// A cluster whose data roots, sockets and logs stay in `root`.
    pub fn new_in(root: PathBuf, count: usize, port: u16) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(&root)?;
        Self::build(
            None,
            root,
            bin_dir().join("test-agent"),
            count,
            port,
            Vec::new(),
        )
    }

    fn build(
        tmp: Option<tempfile::TempDir>,
        root: PathBuf,
        agent_bin: PathBuf,
        count: usize,
        port: u16,
        agent_args: Vec<String>,
    ) -> anyhow::Result<Cluster> {
        let mut c = Self::build_on(tmp, root, agent_bin, port, agent_args, Vec::new())?;
        for _ in 0..count {
            c.add_node()?;
        }
        Ok(c)
    }

    /// An empty cluster; then nodes are added on `hosts` (when given) or 127.0.0.N.
    fn build_on(
        tmp: Option<tempfile::TempDir>,
        root: PathBuf,
        agent_bin: PathBuf,
        port: u16,
        agent_args: Vec<String>,
        hosts: Vec<(String, PathBuf)>,
    ) -> anyhow::Result<Cluster> {
        assert!(
            agent_bin.exists(),
            "{} is missing: build it first (`cargo build --workspace --bins`, or run the tests with `cargo xtask test`)",
            agent_bin.display()
        );
        let mut c = Cluster {
            _tmp: tmp,
            root,
            agent_bin,
            nodes: Vec::new(),
            port,
            agent_args,
            hosts,
        };
        for _ in 0..c.hosts.len() {
            c.add_node()?;
        }
        Ok(c)
    }

    /// Starts one more agent process (not yet in the swarm).
    pub fn add_node(&mut self) -> anyhow::Result<usize> {
        let i = self.nodes.len() + 1;
        let root = self.root.as_path();
        let (ip, netns) = match self.hosts.get(i - 1) {
            Some((ip, ns)) => (ip.clone(), Some(ns.clone())),
            None => (format!("127.0.0.{i}"), None),
        };
        let mut n = AgentProc {
            name: format!("node{i}"),
            ip,
            port: self.port,
            data_root: root.join(format!("node{i}")),
            socket: root.join(format!("node{i}.sock")),
            log: root.join(format!("node{i}.log")),
            agent_bin: self.agent_bin.clone(),
            extra_args: self.agent_args.clone(),
            netns,
            child: None,
        };
        n.start()?;
        self.nodes.push(n);
        Ok(i - 1)
    }

    pub fn node(&self, i: usize) -> &AgentProc {
        &self.nodes[i]
    }

    /// `swarm init` on node i with a short heartbeat so that failures show quickly.
    pub fn init(&self, i: usize) -> anyhow::Result<()> {
        let n = &self.nodes[i];
        let o = self.init_with(i, &["--dispatcher-heartbeat", "1s"]);
        if !o.ok() {
            bail!("init failed: {}\n{}\n{}", o.stderr, o.stdout, n.log_tail());
        }
        Ok(())
    }

    /// `swarm init` on node i on its own address, with more flags: the CLI's answer.
    pub fn init_with(&self, i: usize, flags: &[&str]) -> CliOutput {
        let addr = self.nodes[i].addr();
        let mut args = vec!["init", "--advertise-addr", &addr, "--listen-addr", &addr];
        args.extend_from_slice(flags);
        self.nodes[i].swarm(&args)
    }

    /// The join token for `role`, read through node `via`. Right after a manager joins, the
    /// two-voter cluster needs the new one's answer for every commit; a new manager still
    /// starting (on a slow disk, in a loaded VM) can miss one and the read is refused for want
    /// of a quorum, as Docker's would be. So the read is retried for up to 30 s, and the last
    /// refusal is the panic's message.
    pub fn token(&self, via: usize, role: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.nodes[via].try_swarm(&["join-token", "-q", role]) {
                Ok(t) => return t.trim().to_string(),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("join-token via node{} refused, retrying: {e:#}", via + 1);
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => panic!("{e:#}"),
            }
        }
    }

    pub fn join(&self, i: usize, via: usize, role: &str) -> anyhow::Result<()> {
        let token = self.token(via, role);
        let n = &self.nodes[i];
        let addr = n.addr();
        let remote = self.nodes[via].addr();
        let o = n.swarm(&[
            "join",
            "--token",
            &token,
            "--advertise-addr",
            &addr,
            "--listen-addr",
            &addr,
            &remote,
        ]);
        if !o.ok() {
            bail!(
                "{} join as {role} failed: {}\n{}\n{}",
                n.name,
                o.stderr,
                o.stdout,
                n.log_tail()
            );
        }
        Ok(())
    }

    /// init on node 0, then managers 1..managers, workers after.
    pub fn form(&self, managers: usize) -> anyhow::Result<()> {
        self.init(0)?;
        for i in 1..self.nodes.len() {
            let role = if i < managers { "manager" } else { "worker" };
            self.join(i, 0, role)?;
        }
        let total = self.nodes.len();
        self.wait_nodes_ready(0, total)?;
        Ok(())
    }

    pub fn wait_nodes_ready(&self, via: usize, count: usize) -> anyhow::Result<()> {
        self.nodes[via].wait_nodes_ready(count, Duration::from_secs(60))
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("==== {} ====\n{}", n.name, n.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
