//! One node of the lab ([`LabNode`]): a network namespace with its containerd and its agent,
//! their directories, sockets and logs; commands and threads inside the namespace, in a
//! task's container or its namespace; what its containerd holds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use swarm_agent::containerd::testbed;

use super::config::{registry_addr, LabConfig, NODE_NET};
use super::daemon::{daemon_env, tail, Daemon, DAEMON_PATH};
use super::sys;
use crate::client::{AgentClient, CliOutput};

/// The containerd namespace the agents use.
pub const CONTAINERD_NAMESPACE: &str = "swarm";
/// The agent's metrics address inside each node's namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:9323";
/// The environment variable that gives the lab's agents a `--data-plane` (unset: auto).
pub const DATA_PLANE_ENV: &str = "SWARM_TEST_DATA_PLANE";
pub(super) const CTR: &str = "/usr/bin/ctr";
const AGENT_LOG_FILTER: &str = "info,openraft=warn,h2=warn,tower=warn,hyper=warn";

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
    pub(super) agent: Daemon,
    pub(super) containerd: Daemon,
}

impl LabNode {
    pub(super) fn new(cfg: &LabConfig, index: usize) -> LabNode {
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
                dir.join("agent.log"),
            ),
            containerd: Daemon::new(
                format!("containerd of {name}"),
                PathBuf::from(testbed::CONTAINERD),
                dir.join("containerd").join("containerd.pid"),
                dir.join("containerd").join("containerd.log"),
            ),
            dir,
            name,
        }
    }

    /// 1-based, as in the name `node<i>`.
    pub fn index(&self) -> usize {
        self.index
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
    /// The node's containerd gRPC socket.
    pub fn containerd_socket(&self) -> PathBuf {
        testbed::socket(&self.containerd_dir())
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
            .env("CONTAINERD_NAMESPACE", CONTAINERD_NAMESPACE)
            // The CLI pins images through the same plain-HTTP registry.
            .env("SWARM_INSECURE_REGISTRIES", &self.registry);
        Ok(())
    }

    /// Runs `args[0] args[1..]` in the node's namespace and collects its output.
    pub fn exec(&self, args: &[&str]) -> CliOutput {
        sys::exec(args, |prog| self.command(prog))
    }

    // ---- agent

    pub fn agent_running(&self) -> bool {
        self.agent.pid().is_some()
    }

    /// Starts the agent (when not running) and waits for its socket.
    pub fn start_agent(&self) -> anyhow::Result<()> {
        self.agent
            .ensure(|| self.spawn_agent().and_then(|()| self.wait_agent()))
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

    pub(super) fn spawn_agent(&self) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(self.socket());
        std::fs::create_dir_all(self.data_root())?;
        std::fs::create_dir_all(self.exec_root())?;
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
            // The lab's registry serves plain HTTP: listed insecure, as Docker's daemons must.
            .arg("--insecure-registry")
            .arg(&self.registry)
            .env("RUST_LOG", AGENT_LOG_FILTER);
        // `SWARM_TEST_TC_ATTACH=legacy` runs the lab's data planes with clsact filters (as on
        // kernels before 6.6), like swarm-agent's own data-plane tests.
        if let Ok(tc) = std::env::var(swarm_agent::network::testbed::TC_ATTACH_ENV) {
            if !tc.is_empty() {
                cmd.arg("--tc-attach").arg(tc);
            }
        }
        // `SWARM_TEST_DATA_PLANE=ipvs` runs them with `--data-plane ipvs` (the VM's IPVS lab).
        if let Ok(mode) = std::env::var(DATA_PLANE_ENV) {
            if !mode.is_empty() {
                cmd.arg("--data-plane").arg(mode);
            }
        }
        self.spawn_daemon(&self.agent, cmd)
    }

    pub(super) fn wait_agent(&self) -> anyhow::Result<()> {
        let promise = format!("open {}", self.socket().display());
        let ready = || self.socket().exists();
        self.agent
            .wait_started(&promise, Duration::from_millis(50), ready)
    }

    // ---- containerd

    /// Starts the node's containerd (when not running) and waits until it answers.
    pub fn start_containerd(&self) -> anyhow::Result<()> {
        self.containerd.ensure(|| {
            self.spawn_containerd()
                .and_then(|()| self.wait_containerd())
        })
    }

    /// SIGKILL the node's containerd (its shims and containers keep running).
    pub fn kill_containerd(&self) -> anyhow::Result<()> {
        self.containerd.stop(libc::SIGKILL, Duration::from_secs(10))
    }

    pub fn containerd_log_tail(&self) -> String {
        tail(&self.containerd_log(), 40)
    }

    pub(super) fn spawn_containerd(&self) -> anyhow::Result<()> {
        let cmd = testbed::command(&self.containerd_dir())?;
        self.spawn_daemon(&self.containerd, cmd)
    }

    pub(super) fn wait_containerd(&self) -> anyhow::Result<()> {
        let promise = format!("answer on {}", self.containerd_socket().display());
        let ready = || self.containerd_socket().exists() && self.ctr(&["version"]).is_ok();
        self.containerd
            .wait_started(&promise, Duration::from_millis(100), ready)
    }

    /// Starts one of the node's daemons in its namespace, with the daemons' environment.
    fn spawn_daemon(&self, daemon: &Daemon, mut cmd: Command) -> anyhow::Result<()> {
        daemon_env(&mut cmd);
        daemon.spawn_in(cmd, &self.netns_path())?;
        Ok(())
    }

    /// Kills and reaps this process's own children, the agent and containerd (no zombies
    /// left behind by a teardown).
    pub(super) fn kill_daemons(&self) {
        let _ = self.agent.stop(libc::SIGKILL, Duration::from_secs(5));
        let _ = self.containerd.stop(libc::SIGKILL, Duration::from_secs(5));
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
        CliOutput::of(cmd.output(), program)
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
        http_get_in(&self.netns_path(), addr, path)
    }

    /// The agent's Prometheus metrics.
    pub fn metrics(&self) -> anyhow::Result<String> {
        self.http_get(METRICS_ADDR, "/metrics")
    }
}

impl AgentClient for LabNode {
    fn name(&self) -> &str {
        &self.name
    }

    /// The agent's unix socket (what `swarm -H unix://…` talks to).
    fn socket(&self) -> PathBuf {
        self.dir.join("swarm.sock")
    }

    /// `swarm -H unix://<socket> ARGS…` in the node's namespace.
    fn swarm(&self, args: &[&str]) -> CliOutput {
        let mut all = vec!["swarm", "-H"];
        let host = format!("unix://{}", self.socket().display());
        all.push(&host);
        all.extend_from_slice(args);
        let swarm = self.bin_dir.join("swarm");
        all[0] = swarm.to_str().unwrap_or("swarm");
        self.exec(&all)
    }
}

/// An HTTP GET from inside any network namespace file (a task's, under the agent's
/// `<exec-root>/netns/<task id>`).
pub fn http_get_in(netns: &Path, addr: &str, path: &str) -> anyhow::Result<String> {
    let (addr, path) = (addr.to_string(), path.to_string());
    sys::on_netns_thread(netns, move || crate::helpers::http_get(&addr, &path))
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
