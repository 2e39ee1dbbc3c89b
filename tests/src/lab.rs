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
//! In agent-container mode ([`LabConfig::agent_container`]) each node's agent is instead the
//! agent image's container in the node's containerd (namespace `swarm-system`), started as the
//! README's `ctr run` line does, from an image the lab builds of its own binaries and pushes to
//! its registry; the lab root is then a shared mount, bound into those containers `rshared`.
//!
//! [`Lab::cleanup`] tears a lab down from its name and root alone (namespaces named
//! `<name>-ul`/`<name>-node<i>`, cgroups `<name>-node<i>` in every hierarchy, mounts under
//! root), so it works after a crash, from another process, and on a half-built lab.
//!
//! One room per job: [`config`] (what a lab is, its addresses), [`state`] (`lab.json`),
//! `daemon` (starting, finding and stopping its processes), [`node`] ([`LabNode`]),
//! [`underlay`] (the bridge, the registry and the upstream resolver), [`cleanup`] (teardown),
//! [`sys`] (host plumbing), and [`testing`] (what the lab's test files share). The private
//! containerd of each node is `swarm_agent::containerd::testbed`'s.

pub mod cleanup;
pub mod config;
mod daemon;
pub mod node;
pub mod registry_ca;
pub mod state;
pub mod sys;
pub mod testing;
pub mod underlay;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use swarm_agent::containerd::testbed;

pub use cleanup::Cleanup;
pub use config::{validate_name, LabConfig, AGENT_MODE_ENV, NODE_NET, REGISTRY_PORT, UNDERLAY_IP};
pub use daemon::START_TIMEOUT_ENV;
pub use node::{
    http_get_in, LabNode, AGENT_NAMESPACE, CONTAINERD_NAMESPACE, LAB_AGENT_TAG, METRICS_ADDR,
};
pub use state::STATE_FILE;
pub use underlay::{
    ExtraRegistry, Underlay, UPSTREAM_TEST_ADDR, UPSTREAM_TEST_NAME, UPSTREAM_TEST_ZONE,
};

use crate::client::AgentClient;
use crate::helpers::wait_for;
use crate::{agent_image, images};
use config::registry_addr;
use daemon::{pid_text, tail, DAEMON_PATH};

/// Set to keep a lab whose `up` failed (for a look at its logs; `lab down` removes it).
pub const KEEP_ON_FAILURE_ENV: &str = "SWARM_LAB_KEEP_ON_FAILURE";

/// How many times [`Lab::task_get`] runs an exec whose output came back empty.
pub const EXEC_ATTEMPTS: usize = 3;

// -------------------------------------------------------------------------------------- lab

/// A running lab. Dropping it tears it down (unless [`detach`](Lab::detach)ed or attached).
pub struct Lab {
    cfg: LabConfig,
    nodes: Vec<LabNode>,
    underlay: Underlay,
    down_on_drop: bool,
}

fn progress(name: &str, msg: &str) {
    println!("lab {name}: {msg}");
}

impl Lab {
    fn new(cfg: LabConfig, down_on_drop: bool) -> Lab {
        let nodes = (1..=cfg.nodes()).map(|i| LabNode::new(&cfg, i)).collect();
        Lab {
            underlay: Underlay::new(&cfg),
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
        state::write(&lab.cfg)?;
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
        Ok(Lab::new(state::read(root)?, false))
    }

    /// Tears down the temporary (test) labs under /tmp whose owner process is gone (a test
    /// run killed before its labs were dropped); returns what was removed or failed, by name.
    pub fn sweep_stale() -> Vec<(String, String)> {
        cleanup::sweep_stale()
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
        self.underlay.make_network(&self.nodes)?;
        progress(
            name,
            &format!("starting the registry on {}", registry_addr()),
        );
        self.underlay.start_registry()?;
        progress(
            name,
            &format!(
                "starting the upstream resolver on {UNDERLAY_IP}:53 (zone {UPSTREAM_TEST_ZONE})"
            ),
        );
        self.underlay.start_upstream_dns()?;
        progress(name, "pushing the whoami and busybox images");
        for r in self.underlay.push_images(&self.cfg.whoami)? {
            progress(name, &format!("  {r}"));
        }
        registry_ca::ensure(&self.cfg.root)?;
        if self.cfg.agent_container {
            // The agent's container binds the lab root with shared propagation: the task
            // namespaces and files it mounts there must reach this mount namespace.
            sys::make_shared_mount(&self.cfg.root)?;
            progress(
                name,
                "building and pushing the agent image (agent-container mode)",
            );
            let r = self.push_agent_image(node::LAB_AGENT_TAG, node::LAB_AGENT_TAG)?;
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
        let agents_started = std::time::Instant::now();
        for n in &self.nodes {
            n.spawn_agent()?;
        }
        for n in &self.nodes {
            n.wait_agent()?;
        }
        progress(
            name,
            &format!(
                "every swarm-agent answers ({:.1} s)",
                agents_started.elapsed().as_secs_f64()
            ),
        );
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
            let (role, token) = if n.is_manager() {
                ("manager", &manager_token)
            } else {
                ("worker", &worker_token)
            };
            progress(&self.cfg.name, &format!("{} joins as a {role}", n.name()));
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
            .with_context(|| format!("agent log of {}:\n{}", n.name(), n.agent_log_tail()))?;
        }
        self.wait_ready(Duration::from_secs(90))
    }

    /// Waits until node1 lists every node as Ready.
    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        self.node(1).wait_nodes_ready(self.nodes.len(), timeout)
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
    ///
    /// `whoami get` always prints a line (the body's first, or `error: …`), so an empty
    /// answer is not the GET's: `ctr task exec` can lose the output of a process that exits
    /// before it attached (seen under load in CI, once in a test that did not retry). An
    /// empty answer is therefore asked again, up to [`EXEC_ATTEMPTS`] times in all, and
    /// only then an error; a GET that failed says so in its line and is not retried.
    pub fn task_get(&self, task: &proto::Task, url: &str) -> anyhow::Result<String> {
        for _ in 0..EXEC_ATTEMPTS {
            let out = self.task_exec(task, &["/whoami", "get", url])?;
            let line = out.trim();
            if !line.is_empty() {
                return Ok(line.to_string());
            }
        }
        anyhow::bail!(
            "GET {url} in task {}: no output from the exec, {EXEC_ATTEMPTS} times",
            task.id
        )
    }

    /// [`Lab::task_get`] asked again until it answers, within `timeout`; the last error
    /// otherwise.
    ///
    /// For a first request to a service's VIP: the store says RUNNING before every node's
    /// data path has the task as a backend. The network state reaches the nodes after the
    /// dispatcher's batch window ([`swarm_manager::dispatcher::BATCH_WINDOW`]) and is then
    /// programmed, and until then a VIP without a serving backend refuses a connection at
    /// once (EPERM), as it must for a service that has none.
    pub fn task_get_once_served(
        &self,
        task: &proto::Task,
        url: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let mut last = None;
        wait_for(timeout, || match self.task_get(task, url) {
            Ok(body) => {
                last = Some(Ok(body));
                true
            }
            Err(e) => {
                eprintln!("GET {url} in task {}: {e:#}; asking again", task.id);
                last = Some(Err(e));
                false
            }
        })
        .ok();
        last.unwrap_or_else(|| Err(anyhow::anyhow!("GET {url} was never asked")))
            .with_context(|| format!("GET {url} in task {} within {timeout:?}", task.id))
    }

    /// The registry's `host:port` (reachable from every node; images are `<it>/whoami:latest`
    /// and `<it>/busybox:latest`).
    pub fn registry(&self) -> String {
        registry_addr()
    }

    /// Builds the agent image from this lab's binaries (stripped copies, with the libraries
    /// they load), labelled `version`, and pushes it to the lab registry as
    /// `swarm-agent:TAG`; returns `REGISTRY/swarm-agent:TAG@DIGEST`. A new version is a new
    /// image to upgrade the agents to ([`LabNode::replace_agent`]).
    pub fn push_agent_image(&self, tag: &str, version: &str) -> anyhow::Result<String> {
        let dir = self.cfg.root.join("agent-image");
        let agent = agent_image::stripped_copy(&self.cfg.bin_dir.join("swarm-agent"), &dir)?;
        let cli = agent_image::stripped_copy(&self.cfg.bin_dir.join("swarm"), &dir)?;
        let image = agent_image::agent_image(&agent, &cli, version)?;
        let (addr, tag) = (registry_addr(), tag.to_string());
        sys::on_netns_thread(&self.underlay.netns_path(), move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(agent_image::push(&addr, true, &image, &tag))
        })
    }

    /// The underlay: its namespace, the registry and the upstream resolver.
    pub fn underlay(&self) -> &Underlay {
        &self.underlay
    }

    /// `<name>-ul`: the namespace of the bridge and the registry.
    pub fn underlay_netns(&self) -> String {
        self.underlay.netns()
    }

    /// [`Underlay::in_underlay`]: a client outside every node.
    pub fn in_underlay<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        self.underlay.in_underlay(f)
    }

    /// [`Underlay::command`]: a command in the underlay namespace.
    pub fn underlay_command(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> anyhow::Result<std::process::Command> {
        self.underlay.command(program)
    }

    pub fn registry_running(&self) -> bool {
        self.underlay.registry_running()
    }

    /// [`Underlay::start_registry`].
    pub fn start_registry(&self) -> anyhow::Result<()> {
        self.underlay.start_registry()
    }

    /// [`Underlay::stop_registry`].
    pub fn stop_registry(&self) -> anyhow::Result<()> {
        self.underlay.stop_registry()
    }

    /// Nodes (with their processes), the registry, and `swarm node ls` from node1.
    pub fn status(&self) -> String {
        let mut s = format!(
            "lab {} (root {}), registry {} ({})\n",
            self.cfg.name,
            self.cfg.root.display(),
            registry_addr(),
            pid_text(self.underlay.registry_pid())
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
                n.name(),
                if n.is_manager() { "manager" } else { "worker" },
                netns,
                pid_text(n.containerd.pid()),
                pid_text(n.agent.pid()),
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
                        n.name(),
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
            n.kill_daemons();
        }
        self.underlay.kill_daemons();
        Lab::cleanup(&self.cfg.name, &self.cfg.root)
    }

    /// Tears down the lab `name` rooted at `root` from what can be found on the host (see
    /// [`cleanup::cleanup`]). Idempotent.
    pub fn cleanup(name: &str, root: &Path) -> anyhow::Result<Cleanup> {
        cleanup::cleanup(name, root)
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
        ("containerd", Some(testbed::CONTAINERD), "containerd"),
        ("ctr", Some(node::CTR), "containerd"),
        ("runc", None, "runc"),
        (
            "docker-registry",
            Some(underlay::DOCKER_REGISTRY),
            "docker-registry",
        ),
        ("busybox", Some(images::BUSYBOX), "busybox-static"),
        ("strip", None, "binutils"),
        ("ldd", None, "libc-bin"),
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
    use std::path::PathBuf;

    use super::*;

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
        state::write(&Lab::new(cfg, false).cfg).unwrap();
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
    fn containerd_config_keeps_everything_under_the_node_dir() {
        let c = testbed::config(Path::new("/tmp/swl-ab/node1/containerd"));
        assert!(
            c.contains("root = \"/tmp/swl-ab/node1/containerd/root\""),
            "{c}"
        );
        assert!(c.contains("address = \"/tmp/swl-ab/node1/containerd/containerd.sock\""));
        assert!(c.contains("io.containerd.grpc.v1.cri"));
        assert!(c.contains("path = \"/tmp/swl-ab/node1/containerd/opt\""));
        let r = underlay::registry_config(
            Path::new("/tmp/swl-ab/registry"),
            "10.77.0.254:5000",
            &swarm_oci::LocalSecurity::default(),
        );
        assert!(r.contains("addr: \"10.77.0.254:5000\""), "{r}");
        assert!(
            r.contains("rootdirectory: \"/tmp/swl-ab/registry/data\""),
            "{r}"
        );
        assert!(!r.contains("tls:") && !r.contains("htpasswd"), "{r}");
        // TLS keys go under `http`, the login at the top level.
        let secure = underlay::registry_config(
            Path::new("/tmp/swl-ab/sec"),
            "10.77.0.254:5443",
            &swarm_oci::LocalSecurity {
                tls: Some(("/c.pem".into(), "/k.pem".into())),
                htpasswd: Some("/h".into()),
            },
        );
        assert!(
            secure.contains("http:\n  addr: \"10.77.0.254:5443\"\n  secret: swarm-lab\n  tls:\n    certificate: \"/c.pem\""),
            "{secure}"
        );
        assert!(secure.contains("\nauth:\n  htpasswd:\n"), "{secure}");
    }
}
