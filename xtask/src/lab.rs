//! `cargo xtask lab`: a local five-node swarm (3 managers, 2 workers) on 127.0.0.1–5 with a
//! demo service. Tasks run on the simulated executor until the containerd executor exists.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tests::{running, wait_for, Cluster};

pub fn run(exit: bool, port: u16) -> anyhow::Result<()> {
    crate::cargo(&["build", "-p", "swarm-cli", "-p", "tests", "--bins"])?;
    let root = PathBuf::from("target/lab");
    if root.exists() {
        std::fs::remove_dir_all(&root).context("cleaning target/lab")?;
    }
    println!("starting 5 agents on 127.0.0.1-5:{port} (data, sockets and logs in target/lab)");
    let c = Cluster::new_in(std::fs::canonicalize(".")?.join(&root), 5, port)?;
    c.form(3).with_context(|| c.logs())?;
    let m = c.node(0);
    println!("\n$ swarm node ls\n{}", m.swarm_ok(&["node", "ls"]));
    println!("$ swarm service create --name demo --replicas 6 sim/whoami");
    print!(
        "{}",
        m.swarm_ok(&[
            "service",
            "create",
            "--name",
            "demo",
            "--replicas",
            "6",
            "sim/whoami"
        ])
    );
    wait_for(Duration::from_secs(30), || {
        running(&m.tasks("demo").unwrap_or_default()).len() == 6
    })?;
    println!("\n$ swarm service ls\n{}", m.swarm_ok(&["service", "ls"]));
    println!(
        "$ swarm service ps demo\n{}",
        m.swarm_ok(&["service", "ps", "demo"])
    );
    println!("NOTE: tasks run on the simulated executor (no containers yet).");
    if exit {
        return Ok(());
    }
    println!(
        "The swarm is up. Try: ./target/debug/swarm -H unix://{}/node1.sock node ls\nCtrl-C stops it.",
        c.root.display()
    );
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
