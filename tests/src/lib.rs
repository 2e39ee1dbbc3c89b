//! Harness for end-to-end tests: real `test-agent` processes (the daemon with the simulated
//! executor) on loopback addresses 127.0.0.N, driven through the real `swarm` CLI.

pub mod images;
pub mod lab;
pub mod sim_executor;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Output of one `swarm` CLI run.
#[derive(Debug, Clone)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

/// The directory holding the workspace's built binaries (target/debug or target/release).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
    let mut dir = exe.parent().expect("deps dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

pub fn swarm_bin() -> PathBuf {
    let p = bin_dir().join("swarm");
    assert!(
        p.exists(),
        "{} is missing: build the CLI first (`cargo build -p swarm-cli`, or run the tests with `cargo xtask test`)",
        p.display()
    );
    p
}

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
        let child = Command::new(&self.agent_bin)
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

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Runs `swarm -H unix://<socket> ARGS...`.
    pub fn swarm(&self, args: &[&str]) -> CliOutput {
        let out = Command::new(swarm_bin())
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running the swarm CLI");
        CliOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs the CLI and fails with its output unless it exits 0.
    pub fn swarm_ok(&self, args: &[&str]) -> String {
        let o = self.swarm(args);
        assert!(
            o.ok(),
            "`swarm {}` on {} failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            self.name,
            o.code,
            o.stdout,
            o.stderr
        );
        o.stdout
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

/// Nodes named node1…nodeN on 127.0.0.1…127.0.0.N, all on `port`.
pub struct Cluster {
    /// Removed when the cluster is dropped (None: kept, as the lab does).
    _tmp: Option<tempfile::TempDir>,
    pub root: PathBuf,
    agent_bin: PathBuf,
    pub nodes: Vec<AgentProc>,
    pub port: u16,
    agent_args: Vec<String>,
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
        };
        for _ in 0..count {
            c.add_node()?;
        }
        Ok(c)
    }

    /// Starts one more agent process (not yet in the swarm).
    pub fn add_node(&mut self) -> anyhow::Result<usize> {
        let i = self.nodes.len() + 1;
        let root = self.root.as_path();
        let mut n = AgentProc {
            name: format!("node{i}"),
            ip: format!("127.0.0.{i}"),
            port: self.port,
            data_root: root.join(format!("node{i}")),
            socket: root.join(format!("node{i}.sock")),
            log: root.join(format!("node{i}.log")),
            agent_bin: self.agent_bin.clone(),
            extra_args: self.agent_args.clone(),
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
        let addr = n.addr();
        let o = n.swarm(&[
            "init",
            "--advertise-addr",
            &addr,
            "--listen-addr",
            &addr,
            "--dispatcher-heartbeat",
            "1s",
        ]);
        if !o.ok() {
            bail!("init failed: {}\n{}\n{}", o.stderr, o.stdout, n.log_tail());
        }
        Ok(())
    }

    pub fn token(&self, via: usize, role: &str) -> String {
        self.nodes[via]
            .swarm_ok(&["join-token", "-q", role])
            .trim()
            .to_string()
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
        wait_for(Duration::from_secs(60), || {
            let o = self.nodes[via].swarm(&["node", "ls"]);
            o.ok() && o.stdout.lines().filter(|l| l.contains(" Ready ")).count() == count
        })
        .with_context(|| {
            format!(
                "waiting for {count} Ready nodes:\n{}",
                self.nodes[via].swarm(&["node", "ls"]).stdout
            )
        })
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("==== {} ====\n{}", n.name, n.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Polls `f` every 200 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Parses a table printed by the CLI into rows of columns split on runs of 2+ spaces.
pub fn table(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// The JSON the CLI prints with `--format json`.
pub fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("CLI printed invalid JSON ({e}):\n{out}"))
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

// ------------------------------------------------------------------ typed reads over the socket

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn socket_channel(path: PathBuf) -> anyhow::Result<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower_service(path))
        .await?;
    Ok(ch)
}

fn tower_service(
    path: PathBuf,
) -> impl tower::Service<
    http::Uri,
    Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |_: http::Uri| {
        let p = path.clone();
        async move {
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                tokio::net::UnixStream::connect(p).await?,
            ))
        }
    })
}

impl AgentProc {
    fn control<T>(
        &self,
        f: impl AsyncFnOnce(
            proto::control_client::ControlClient<tonic::transport::Channel>,
        ) -> Result<T, tonic::Status>,
    ) -> anyhow::Result<T> {
        let path = self.socket.clone();
        runtime().block_on(async move {
            let ch = socket_channel(path).await?;
            f(proto::control_client::ControlClient::new(ch))
                .await
                .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
        })
    }

    /// Tasks of a service (all states), read through this node's socket.
    pub fn tasks(&self, service: &str) -> anyhow::Result<Vec<proto::Task>> {
        let service = service.to_string();
        self.control(async move |mut c| {
            Ok(c.list_tasks(proto::ListTasksRequest {
                service_ids: vec![service],
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
}

/// Tasks that should run and do: desired RUNNING and observed RUNNING.
pub fn running(tasks: &[proto::Task]) -> Vec<&proto::Task> {
    tasks
        .iter()
        .filter(|t| {
            t.desired() == proto::TaskState::Running && t.state() == proto::TaskState::Running
        })
        .collect()
}

/// Running tasks per node id.
pub fn per_node(tasks: &[proto::Task]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for t in running(tasks) {
        *m.entry(t.node_id.clone()).or_insert(0) += 1;
    }
    m
}

/// A plain HTTP/1.0 GET (for /metrics), returning the body.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path} on {addr}: {head}");
    }
    Ok(body.to_string())
}
