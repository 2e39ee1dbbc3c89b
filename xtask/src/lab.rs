//! `cargo xtask lab …`: the multi-node lab on this machine (one network namespace, containerd
//! and swarm-agent per node, a registry with the test images); see `tests::lab`.
//!
//! - `lab` (no verb): `lab up --managers 3 --workers 2`, a demo service, then exit leaving it up;
//! - `lab up [--managers N] [--workers M] [--port P] [--agent-container]` (the agents as
//!   containers of the agent image, built from the debug binaries);
//! - `lab exec NODE -- CMD…`: CMD in the node's namespace (`swarm` talks to that node);
//! - `lab registry`: the registry's `host:port`;
//! - `lab status`;
//! - `lab down`: removes everything, also after a crash of `lab up`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use tests::images;
use tests::lab::{Lab, LabConfig};
use tests::AgentClient;

/// The lab's short name: namespaces `swl-ul`, `swl-node<i>`, cgroups `swl-node<i>`.
pub const NAME: &str = "swl";

const DEMO_REPLICAS: usize = 4;
const DEMO_NETWORK: &str = "demo-net";

/// The directory of the binaries this xtask was built with (target/debug).
fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the xtask executable")?;
    exe.parent()
        .map(Path::to_path_buf)
        .context("the xtask executable has no directory")
}

fn config(
    root: &Path,
    managers: usize,
    workers: usize,
    port: u16,
    agent_container: bool,
) -> anyhow::Result<LabConfig> {
    let bin = bin_dir()?;
    let mut cfg = LabConfig::new(NAME, managers, workers, root, &bin);
    cfg.port = port;
    cfg.agent_container = agent_container;
    cfg.whoami = images::whoami_path(
        bin.parent()
            .context("the binary directory has no parent (target)")?,
    );
    Ok(cfg)
}

/// Installs the missing packages, builds the daemon, the CLI and the whoami binary, removes a
/// previous lab, and starts one.
pub fn up(
    root: &Path,
    managers: usize,
    workers: usize,
    port: u16,
    agent_container: bool,
) -> anyhow::Result<Lab> {
    // containerd, runc, docker-registry, busybox-static …: installed when missing (as root).
    crate::setup::ensure()?;
    crate::workspace::cargo(&["build", "-p", "swarm-agent", "-p", "swarm-cli"])?;
    images::build_whoami()?;
    let cfg = config(root, managers, workers, port, agent_container)?;
    let previous = name_at(root);
    let c = Lab::cleanup(&previous, root)?;
    if !c.is_empty() {
        println!("removed the previous lab {previous}: {c}");
    }
    Lab::up(cfg)
}

/// The name of the lab at `root` (from its lab.json), else the default.
fn name_at(root: &Path) -> String {
    Lab::attach(root)
        .map(|l| l.name().to_string())
        .unwrap_or_else(|_| NAME.to_string())
}

fn attach(root: &Path) -> anyhow::Result<Lab> {
    Lab::attach(root).with_context(|| format!("no lab at {}", root.display()))
}

pub fn cmd_up(
    root: &Path,
    managers: usize,
    workers: usize,
    port: u16,
    agent_container: bool,
) -> anyhow::Result<()> {
    let lab = up(root, managers, workers, port, agent_container)?;
    println!(
        "\n$ swarm node ls\n{}",
        lab.node(1).try_swarm(&["node", "ls"])?
    );
    hints(&lab);
    lab.detach();
    Ok(())
}

/// `cargo xtask lab`: a five-node lab with the demo service on an overlay network and a
/// client task next to it, left running.
pub fn demo(root: &Path) -> anyhow::Result<()> {
    let lab = up(root, 3, 2, 2377, false)?;
    let m = lab.node(1);
    let image = format!("{}/whoami:latest", lab.registry());
    let replicas = DEMO_REPLICAS.to_string();
    let steps: [&[&str]; 3] = [
        &["network", "create", "-d", "overlay", DEMO_NETWORK],
        &[
            "service",
            "create",
            "--name",
            "demo",
            "--replicas",
            replicas.as_str(),
            "--network",
            DEMO_NETWORK,
            "--publish",
            "8080:80",
            image.as_str(),
        ],
        &[
            "service",
            "create",
            "--name",
            "client",
            "--network",
            DEMO_NETWORK,
            image.as_str(),
        ],
    ];
    for step in steps {
        println!("\n$ swarm {}", step.join(" "));
        print!("{}", m.try_swarm(step)?);
    }
    let client = lab
        .running_tasks("client", 1, Duration::from_secs(180))
        .and_then(|t| {
            lab.running_tasks("demo", DEMO_REPLICAS, Duration::from_secs(180))
                .map(|_| t)
        })
        .with_context(|| {
            format!(
                "the demo services did not start:\n{}\n{}",
                m.swarm(&["service", "ps", "demo"]).stdout,
                lab.logs()
            )
        })?
        .remove(0);
    println!("\n$ swarm node ls\n{}", m.try_swarm(&["node", "ls"])?);
    println!(
        "$ swarm service ps demo\n{}",
        m.try_swarm(&["service", "ps", "demo"])?
    );
    // What the client sees: the name, and requests spread over the replicas by the VIP.
    let get = ["/whoami", "get", "http://demo/hostname", "--count", "8"];
    println!(
        "from the client task (on {}): whoami get http://demo/hostname --count 8\n{}",
        lab.node_of(&client)?.name(),
        lab.task_exec(&client, &get)?
    );
    // The routing mesh: port 8080 answers on every node, from outside the cluster.
    println!("from the underlay (outside every node): GET http://<node>:8080/hostname");
    for n in lab.nodes() {
        let addr = format!("{}:8080", n.ip());
        let answer = lab
            .in_underlay(move || tests::http_get(&addr, "/hostname"))
            .unwrap_or_else(|e| format!("failed: {e:#}"));
        println!("  {} ({}:8080) → {}", n.name(), n.ip(), answer.trim());
    }
    hints(&lab);
    let node = lab.node_of(&client)?.name().to_string();
    let id = &client.id;
    println!("  cargo xtask lab exec {node} -- ctr task exec --exec-id try {id} /whoami get http://demo/");
    println!("  cargo xtask lab exec {node} -- ctr task exec --exec-id try {id} /whoami lookup tasks.demo");
    println!("  cargo xtask lab exec node1 -- swarm network inspect --verbose {DEMO_NETWORK}");
    println!("  cargo xtask lab exec node1 -- swarm network inspect ingress   # every node's ingress endpoint");
    println!(
        "  ip netns exec {} curl http://{}:8080/   # the routing mesh from outside the nodes",
        lab.underlay_netns(),
        lab.node(lab.nodes().len()).ip()
    );
    lab.detach();
    Ok(())
}

fn hints(lab: &Lab) {
    let reg = lab.registry();
    let last = lab.nodes().len();
    println!(
        "The lab is up (files, sockets and logs in {root}). Try:\n\
         \x20 cargo xtask lab exec node1 -- swarm node ls\n\
         \x20 cargo xtask lab exec node1 -- swarm service ls\n\
         \x20 cargo xtask lab exec node1 -- swarm service create --name web --replicas 3 {reg}/whoami:latest\n\
         \x20 cargo xtask lab exec node1 -- swarm service ps web\n\
         \x20 cargo xtask lab exec node1 -- swarm service scale web=6\n\
         \x20 cargo xtask lab exec node{last} -- ctr containers ls   (ctr talks to that node's containerd)\n\
         \x20 cargo xtask lab exec node2 -- ip addr\n\
         \x20 cargo xtask lab status\n\
         \x20 cargo xtask lab down",
        root = lab.root().display(),
    );
}

/// Runs `cmd` in the node's namespace with the terminal; exits with its status.
pub fn exec(root: &Path, node: &str, cmd: &[String]) -> anyhow::Result<()> {
    let lab = attach(root)?;
    let Some((prog, args)) = cmd.split_first() else {
        bail!("nothing to run: cargo xtask lab exec {node} -- COMMAND [ARGS…]");
    };
    let mut c = if node == "ul" || node == "underlay" {
        lab.underlay_command(prog)?
    } else {
        let Some(n) = lab.node_named(node) else {
            bail!(
                "no node {node} in the lab {} (nodes: node1..node{}, or `underlay`)",
                lab.name(),
                lab.nodes().len()
            );
        };
        n.command(prog)?
    };
    let status = c
        .args(args)
        .status()
        .with_context(|| format!("running {prog} in {node}"))?;
    std::process::exit(status.code().unwrap_or(128 + 9));
}

pub fn registry(root: &Path) -> anyhow::Result<()> {
    println!("{}", attach(root)?.registry());
    Ok(())
}

pub fn status(root: &Path) -> anyhow::Result<()> {
    print!("{}", attach(root)?.status());
    Ok(())
}

pub fn down(root: &Path) -> anyhow::Result<()> {
    let name = name_at(root);
    let c = Lab::cleanup(&name, root)?;
    if c.is_empty() {
        println!("no lab {name} at {}: nothing to remove", root.display());
    } else {
        println!("lab {name} removed: {c}");
    }
    Ok(())
}
