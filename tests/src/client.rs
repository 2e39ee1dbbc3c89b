//! The client side of a node under test, one for the loopback harness and the lab: the `swarm`
//! CLI run against the daemon's unix socket ([`AgentClient::swarm`], [`CliOutput`]) and typed
//! reads of the Control API over that socket ([`AgentClient::tasks`] …).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use proto::{ListNetworksRequest, ListNodesRequest, ListServicesRequest, ListTasksRequest};

use crate::helpers::wait_for;

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

    /// The output of a process that ran, or, when it could not run, exit code -1 with the
    /// reason on stderr (`what` names it).
    pub fn of(out: std::io::Result<std::process::Output>, what: &str) -> CliOutput {
        match out {
            Ok(o) => o.into(),
            Err(e) => CliOutput {
                code: -1,
                stdout: String::new(),
                stderr: format!("could not run {what}: {e}"),
            },
        }
    }
}

impl From<std::process::Output> for CliOutput {
    fn from(o: std::process::Output) -> CliOutput {
        CliOutput {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
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

/// A swarm daemon driven from a test: the loopback harness's [`AgentProc`](crate::AgentProc)
/// and the lab's [`LabNode`](crate::lab::LabNode). Each says where its socket is and how the
/// CLI runs against it; the rest is the same for both.
pub trait AgentClient {
    /// The node's name (`node<i>`, also its hostname).
    fn name(&self) -> &str;

    /// The daemon's unix socket (what `swarm -H unix://…` talks to).
    fn socket(&self) -> PathBuf;

    /// Runs `swarm -H unix://<socket> ARGS…` and collects its output.
    fn swarm(&self, args: &[&str]) -> CliOutput;

    /// [`swarm`](Self::swarm) that fails unless the CLI exits 0; returns its stdout.
    fn try_swarm(&self, args: &[&str]) -> anyhow::Result<String> {
        let o = self.swarm(args);
        if !o.ok() {
            bail!(
                "`swarm {}` on {} failed ({}):\nstdout: {}\nstderr: {}",
                args.join(" "),
                self.name(),
                o.code,
                o.stdout,
                o.stderr
            );
        }
        Ok(o.stdout)
    }

    /// [`try_swarm`](Self::try_swarm) that panics on failure (for tests).
    fn swarm_ok(&self, args: &[&str]) -> String {
        self.try_swarm(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `swarm service create -d ARGS…`, which must succeed (for tests); its stdout.
    fn create_service(&self, args: &[&str]) -> String {
        let mut a = vec!["service", "create", "-d"];
        a.extend_from_slice(args);
        self.swarm_ok(&a)
    }

    /// Waits until `swarm node ls` here lists `count` nodes as Ready.
    fn wait_nodes_ready(&self, count: usize, timeout: Duration) -> anyhow::Result<()> {
        wait_for(timeout, || {
            let o = self.swarm(&["node", "ls"]);
            o.ok() && o.stdout.lines().filter(|l| l.contains(" Ready ")).count() == count
        })
        .with_context(|| {
            format!(
                "waiting for {count} Ready nodes:\n{}",
                self.swarm(&["node", "ls"]).stdout
            )
        })
    }

    fn services(&self) -> anyhow::Result<Vec<proto::Service>> {
        let r = control(self.socket(), async |mut c| {
            c.list_services(ListServicesRequest::default()).await
        })?;
        Ok(r.into_inner().services)
    }

    /// Tasks of a service (name or id; all states), read through this node's socket.
    fn tasks(&self, service: &str) -> anyhow::Result<Vec<proto::Task>> {
        let service = service.to_string();
        let services = self.services()?;
        let id = services
            .iter()
            .find(|s| s.id == service || s.spec.as_ref().is_some_and(|sp| sp.name == service))
            .map(|s| s.id.clone())
            .unwrap_or(service);
        let tasks = control(self.socket(), async move |mut c| {
            c.list_tasks(ListTasksRequest {
                service_ids: vec![id],
                ..Default::default()
            })
            .await
        })?;
        Ok(tasks.into_inner().tasks)
    }

    fn nodes(&self) -> anyhow::Result<Vec<proto::Node>> {
        let r = control(self.socket(), async |mut c| {
            c.list_nodes(ListNodesRequest {}).await
        })?;
        Ok(r.into_inner().nodes)
    }

    fn networks(&self) -> anyhow::Result<Vec<proto::Network>> {
        let r = control(self.socket(), async |mut c| {
            c.list_networks(ListNetworksRequest {}).await
        })?;
        Ok(r.into_inner().networks)
    }
}

// ------------------------------------------------------------------ typed reads over the socket

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub(crate) async fn socket_channel(path: PathBuf) -> anyhow::Result<tonic::transport::Channel> {
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

/// Runs `f` with a Control API client on the unix socket `path`.
fn control<T>(
    path: PathBuf,
    f: impl AsyncFnOnce(
        proto::control_client::ControlClient<tonic::transport::Channel>,
    ) -> Result<T, tonic::Status>,
) -> anyhow::Result<T> {
    runtime().block_on(async move {
        let ch = socket_channel(path).await?;
        f(proto::control_client::ControlClient::new(ch))
            .await
            .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
    })
}
