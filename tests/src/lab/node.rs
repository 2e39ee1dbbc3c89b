//! One node of the lab ([`LabNode`]): a network namespace with its containerd and its agent,
//! their directories, sockets and logs; commands and threads inside the namespace, in a
//! task's container or its namespace; what its containerd holds.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use swarm_agent::containerd::testbed;

use super::config::{registry_addr, LabConfig, NODE_NET};
use super::daemon::{daemon_env, tail, Daemon, DAEMON_PATH};
use super::sys;
use crate::agent_image;
use crate::client::{AgentClient, CliOutput};

/// The containerd namespace the agents use.
pub const CONTAINERD_NAMESPACE: &str = "swarm";
/// The containerd namespace of the agent's own container (agent-container mode): not the
/// tasks' namespace.
pub const AGENT_NAMESPACE: &str = "swarm-system";
/// The label of the agent's container naming the image it runs.
pub const AGENT_IMAGE_LABEL: &str = "io.swarm.agent.image";
/// The label that keeps containerd's garbage collector off the agent's mounted root.
const GC_ROOT_LABEL: &str = "containerd.io/gc.root=swarm-agent";
/// The tag of the agent image the lab builds from the test build.
pub const LAB_AGENT_TAG: &str = "lab";
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
    registry_ca: PathBuf,
    /// Agent-container mode: the agent image the node's agent container runs (else None).
    agent_image: Option<Mutex<String>>,
    /// The lab's root (bound into the agent's container at the same path).
    root: PathBuf,
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
            registry_ca: super::registry_ca::cert_path(&cfg.root),
            agent_image: cfg.agent_container.then(|| {
                Mutex::new(format!(
                    "{}/{}:{LAB_AGENT_TAG}",
                    registry_addr(),
                    agent_image::REPOSITORY
                ))
            }),
            root: cfg.root.clone(),
            agent: Daemon::new(
                format!("swarm-agent of {name}"),
                if cfg.agent_container {
                    // The process of the container: its executable as the container sees it.
                    PathBuf::from(agent_image::AGENT_PATH)
                } else {
                    cfg.bin_dir.join("swarm-agent")
                },
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

    /// `swarm ARGS…` in the node's namespace with `env` added and `input` on its stdin.
    pub fn swarm_with_input(
        &self,
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
        input: &[u8],
    ) -> CliOutput {
        use std::io::Write as _;
        let run = || -> anyhow::Result<CliOutput> {
            let mut cmd = self.command(self.bin_dir.join("swarm"))?;
            cmd.args(args)
                .envs(env.iter().copied())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = cmd.spawn()?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(input)?;
            }
            let out = child.wait_with_output()?;
            Ok(CliOutput {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        };
        run().unwrap_or_else(|e| CliOutput {
            code: -1,
            stdout: String::new(),
            stderr: format!("running swarm {args:?} in {}: {e:#}", self.name),
        })
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
        if let Some(image) = self.agent_image() {
            return self.run_agent_container(&image);
        }
        let mut cmd = Command::new(self.bin_dir.join("swarm-agent"));
        cmd.args(self.agent_args())
            .env("RUST_LOG", AGENT_LOG_FILTER);
        self.spawn_daemon(&self.agent, cmd)
    }

    /// The agent's flags (the same on the host and in a container: every path is the host's).
    fn agent_args(&self) -> Vec<OsString> {
        let mut cmd = Command::new("swarm-agent");
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
            // Registries a test serves over TLS have certificates from the lab's CA.
            .arg("--registry-ca")
            .arg(&self.registry_ca);
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
        cmd.get_args().map(OsString::from).collect()
    }

    // ---- the agent as a container (agent-container mode)

    /// The agent image this node's agent container runs; None when the agent is a process.
    pub fn agent_image(&self) -> Option<String> {
        self.agent_image
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// The id of the node's agent container (in containerd namespace [`AGENT_NAMESPACE`]):
    /// unique per lab and node, as runc's state directory is shared by every containerd.
    pub fn agent_container_id(&self) -> String {
        format!("swarm-agent-{}", self.netns())
    }

    /// The cgroup of the agent's container: beside the tasks' (`--cgroup-parent`), not in it.
    pub fn agent_cgroup(&self) -> String {
        format!("{}-agent", self.netns())
    }

    /// `ctr --address <node containerd> -n swarm-system ARGS…` in the node's namespace.
    fn ctr_agent(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.command(CTR)?;
        daemon_env(&mut cmd);
        cmd.arg("--address")
            .arg(self.containerd_socket())
            .args(["-n", AGENT_NAMESPACE])
            .args(args);
        sys::run(&mut cmd).with_context(|| format!("ctr -n {AGENT_NAMESPACE} on {}", self.name))
    }

    /// Pulls an agent image into the node's containerd (from the lab registry, plain HTTP).
    pub fn pull_agent_image(&self, image: &str) -> anyhow::Result<()> {
        self.ctr_agent(&["images", "pull", "--plain-http", image])
            .map(drop)
    }

    /// The image of the node's agent container, as its label [`AGENT_IMAGE_LABEL`] records
    /// it (a container made from a runtime spec has no image of its own in containerd).
    pub fn running_agent_image(&self) -> anyhow::Result<String> {
        let info = self.ctr_agent(&["containers", "info", &self.agent_container_id()])?;
        let v: serde_json::Value = serde_json::from_str(&info)
            .with_context(|| format!("parsing `ctr containers info`: {info}"))?;
        v.get("Labels")
            .and_then(|l| l.get(AGENT_IMAGE_LABEL))
            .and_then(|i| i.as_str())
            .map(str::to_string)
            .with_context(|| format!("no label {AGENT_IMAGE_LABEL} in {info}"))
    }

    /// Where the node's agent image is mounted as its container's root (`ctr images mount`).
    pub fn agent_rootfs(&self) -> PathBuf {
        self.dir.join("agent-rootfs")
    }

    /// The agent's container as README shows it: the image mounted writable at
    /// [`Self::agent_rootfs`] (`ctr images mount --rw`, its snapshot labelled a GC root), the
    /// runtime spec of [`agent_image::AgentContainer`] (privileged, no network or PID namespace
    /// entry: the node's network, containerd's, and the host's PIDs) run by `ctr run
    /// --config`. The lab root (data root, exec root, sockets, resolv.conf) is bound at the
    /// same path with shared propagation (the task namespaces and secret tmpfs the agent
    /// mounts reach the host). Its output goes to the agent's log, its pid to the agent's pid
    /// file.
    fn run_agent_container(&self, image: &str) -> anyhow::Result<()> {
        let id = self.agent_container_id();
        // A container of an earlier agent (killed, or stopped) goes first, with its root.
        let _ = self.ctr_agent(&["tasks", "delete", "--force", &id]);
        let _ = self.ctr_agent(&["containers", "delete", &id]);
        let rootfs = self.agent_rootfs();
        let r = rootfs.to_string_lossy().to_string();
        if sys::mounts_under(&rootfs).contains(&rootfs) {
            self.ctr_agent(&["images", "unmount", "--rm", &r])?;
        } else {
            // A snapshot left by an earlier mount that is gone.
            let _ = self.ctr_agent(&["images", "unmount", "--rm", &r]);
        }
        self.pull_agent_image(image)?;
        std::fs::create_dir_all(&rootfs)?;
        self.ctr_agent(&["images", "mount", "--rw", image, &r])?;
        self.ctr_agent(&["snapshots", "label", &r, GC_ROOT_LABEL])?;
        let spec = agent_image::AgentContainer {
            rootfs,
            args: std::iter::once(agent_image::AGENT_PATH.into())
                .chain(
                    self.agent_args()
                        .into_iter()
                        .map(|a| a.to_string_lossy().into_owned()),
                )
                .collect(),
            env: vec![
                "PATH=/usr/local/bin:/usr/bin:/bin".into(),
                format!("RUST_LOG={AGENT_LOG_FILTER}"),
            ],
            shared_binds: vec![self.root.clone()],
            binds: Vec::new(),
            read_only: Vec::new(),
            cgroup: format!("/{}", self.agent_cgroup()),
            capabilities: agent_image::bounding_capabilities()?,
        }
        .runtime_spec();
        let spec_path = self.dir.join("agent-spec.json");
        std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec)?)
            .with_context(|| format!("writing {}", spec_path.display()))?;
        let mut cmd = self.command(CTR)?;
        daemon_env(&mut cmd);
        cmd.arg("--address")
            .arg(self.containerd_socket())
            .args(["-n", AGENT_NAMESPACE, "run", "--detach", "--config"])
            .arg(&spec_path)
            .arg("--log-uri")
            .arg(format!("file://{}", self.agent_log().display()))
            .arg("--pid-file")
            .arg(self.agent.pidfile())
            .args(["--label", "io.swarm.role=agent"])
            .arg("--label")
            .arg(format!("{AGENT_IMAGE_LABEL}={image}"))
            .arg(&id);
        sys::run(&mut cmd)
            .with_context(|| format!("starting the agent container of {}", self.name))?;
        Ok(())
    }

    /// Replaces the node's agent container with one of `image` (an upgrade): the image is
    /// pulled first, then the agent gets SIGTERM and its container is replaced. Its tasks and
    /// its data plane are left as they are, for the new agent to adopt.
    pub fn replace_agent(&self, image: &str) -> anyhow::Result<()> {
        let Some(current) = &self.agent_image else {
            anyhow::bail!(
                "{}'s agent is a process, not a container: start the lab in agent-container mode",
                self.name
            );
        };
        self.pull_agent_image(image)?;
        self.stop_agent()?;
        *current.lock().unwrap_or_else(|p| p.into_inner()) = image.to_string();
        self.start_agent()
    }

    pub(super) fn wait_agent(&self) -> anyhow::Result<()> {
        let promise = format!("open {}", self.socket().display());
        // Accepting, not only present: a connect proves the agent listens.
        let ready = || std::os::unix::net::UnixStream::connect(self.socket()).is_ok();
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

    /// The host pid of a task's container process (`ctr tasks ls`): `/proc/PID/root` is the
    /// container's root as the container sees it, mounts included.
    pub fn task_pid(&self, task_id: &str) -> anyhow::Result<i32> {
        let out = self.ctr(&["tasks", "ls"])?;
        out.lines()
            .skip(1)
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(task_id)).then(|| w.next()?.parse().ok())?
            })
            .with_context(|| format!("task {task_id} is not running on {}:\n{out}", self.name))
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
