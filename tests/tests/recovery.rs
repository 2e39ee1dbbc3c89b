//! End-to-end recovery of the managers (real `test-agent` processes on 127.0.0.N): a
//! leader whose disk fills steps down and exits, and `swarm init --force-new-cluster`
//! rebuilds a swarm that lost the quorum of its managers.
//!
//! Root is needed (the disk fault is a small tmpfs mounted on a data root): the tests fail,
//! never skip, without it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tests::{running, wait_for, AgentClient, Cluster};

/// A tmpfs mounted on a directory; unmounted (lazily: processes may still hold files in
/// it) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs on {} failed (this test needs root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }

    /// Writes zeros into a file until the file system is full.
    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let _ = Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", filler.display()))
            .args(["bs=64k", "status=none"])
            .output()
            .expect("running dd");
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.0)
            .output()
            .unwrap();
        let avail = String::from_utf8_lossy(&out.stdout);
        let avail: u64 = avail.lines().nth(1).unwrap_or("0").trim().parse().unwrap();
        assert!(
            avail < 64 * 1024,
            "the tmpfs is not full: {avail} bytes free"
        );
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn node_names(c: &Cluster, via: usize) -> BTreeMap<String, String> {
    c.node(via)
        .nodes()
        .unwrap()
        .into_iter()
        .map(|n| (n.id, n.description.unwrap_or_default().hostname))
        .collect()
}

/// The `node ls` row of each node by hostname, through node `via`.
fn node_rows(c: &Cluster, via: usize) -> BTreeMap<String, String> {
    let out = c.node(via).swarm(&["node", "ls"]);
    let mut rows = BTreeMap::new();
    for l in out.stdout.lines().skip(1) {
        if let Some(name) = l.split_whitespace().find(|w| w.starts_with("node")) {
            rows.insert(name.to_string(), l.to_string());
        }
    }
    rows
}

/// Slots that have more than one task RUNNING on a node that is up (not Down).
fn slots_running_twice(c: &Cluster, via: usize, service: &str) -> Vec<u64> {
    let down: BTreeSet<String> = c
        .node(via)
        .nodes()
        .unwrap()
        .into_iter()
        .filter(|n| n.state() == proto::NodeState::Down)
        .map(|n| n.id)
        .collect();
    let mut per_slot: BTreeMap<u64, usize> = BTreeMap::new();
    for t in c.node(via).tasks(service).unwrap() {
        if t.state() == proto::TaskState::Running && !down.contains(&t.node_id) {
            *per_slot.entry(t.slot).or_default() += 1;
        }
    }
    per_slot
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(s, _)| s)
        .collect()
}

#[test]
fn a_leader_whose_disk_fills_steps_down_and_exits_and_another_manager_leads() {
    let mut c = Cluster::new(5, 27371).unwrap();
    // node1's data root (its Raft database) on a small tmpfs, mounted before it joins a swarm.
    let disk = Tmpfs::mount(&c.node(0).data_root.clone(), "24m");
    c.form(3).unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let names = node_names(&c, 0);
    c.node(0)
        .create_service(&["--name", "web", "--replicas", "6", "sim/app"]);
    wait_for(Duration::from_secs(60), || {
        running(&c.node(0).tasks("web").unwrap()).len() == 6
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let rows = node_rows(&c, 1);
    assert!(
        rows["node1"].contains("Leader"),
        "node1 leads (it initialized the swarm): {rows:#?}"
    );

    // Fill the disk, then write through the leader until its Raft log cannot grow.
    let filler = disk.fill();
    let big = "x".repeat(60 * 1024);
    let mut failed = None;
    for i in 0..400 {
        let label = format!("fill={big}");
        let name = format!("fill{i}");
        let o = c.node(0).swarm(&[
            "service",
            "create",
            "-d",
            "--replicas",
            "0",
            "--name",
            &name,
            "--label",
            &label,
            "sim/app",
        ]);
        if !o.ok() {
            failed = Some(o.stderr);
            break;
        }
    }
    let failed = failed.unwrap_or_else(|| panic!("400 writes on a full disk all succeeded"));
    // Until it exits, the sick manager refuses calls, naming the storage fault.
    let o = c.node(0).swarm(&["node", "ls"]);
    assert!(
        !o.ok(),
        "a manager whose Raft stopped still answers: {}",
        o.stdout
    );
    assert!(
        o.stderr.contains("Raft node stopped") && o.stderr.contains("storage"),
        "the refusal names the storage fault: {}\n(the failed write said: {failed})",
        o.stderr
    );

    // It exits non-zero, saying why.
    wait_for(Duration::from_secs(20), || {
        c.nodes[0].try_exit().is_some_and(|s| !s.success())
    })
    .unwrap_or_else(|e| panic!("node1 did not exit with an error: {e}\n{}", c.logs()));
    let log = std::fs::read_to_string(&c.node(0).log).unwrap();
    assert!(
        log.contains("the manager's Raft storage failed") && log.contains("No space left"),
        "{}",
        c.node(0).log_tail()
    );

    // Within a few election timeouts another manager leads; node ls through the survivors
    // shows node1 Down and every other node Ready.
    wait_for(Duration::from_secs(30), || {
        (1..3).all(|j| {
            let rows = node_rows(&c, j);
            rows.len() == 5
                && rows.values().filter(|r| r.contains("Leader")).count() == 1
                && !rows["node1"].contains("Leader")
                && rows["node1"].contains("Down")
                && (2..=5).all(|k| rows[&format!("node{k}")].contains(" Ready "))
        })
    })
    .unwrap_or_else(|e| {
        panic!(
            "the survivors do not show a new leader and node1 down: {e}\n{}\n{}",
            c.node(1).swarm(&["node", "ls"]).stdout,
            c.logs()
        )
    });

    // The service runs its 6 tasks on the nodes that are up, and no slot runs twice.
    wait_for(Duration::from_secs(60), || {
        let tasks = c.node(1).tasks("web").unwrap();
        let up: Vec<_> = running(&tasks)
            .into_iter()
            .filter(|t| names[&t.node_id] != "node1")
            .collect();
        up.len() == 6 && up.iter().map(|t| t.slot).collect::<BTreeSet<_>>().len() == 6
    })
    .unwrap_or_else(|e| {
        panic!(
            "web does not run its 6 tasks on the survivors: {e}\n{}",
            c.node(1).swarm(&["service", "ps", "web"]).stdout
        )
    });
    for _ in 0..5 {
        // Through the two surviving managers (workers cannot read the cluster's state).
        for j in 1..3 {
            let twice = slots_running_twice(&c, j, "web");
            assert!(
                twice.is_empty(),
                "slots {twice:?} run twice (through node{}):\n{}",
                j + 1,
                c.node(j).swarm(&["service", "ps", "web"]).stdout
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }

    // With the disk freed, the node starts again from its data root and follows the new
    // leader.
    std::fs::remove_file(&filler).unwrap();
    c.nodes[0].start().unwrap();
    wait_for(Duration::from_secs(30), || {
        let rows = node_rows(&c, 0);
        rows.len() == 5 && rows["node1"].contains(" Ready ") && !rows["node1"].contains("Leader")
    })
    .unwrap_or_else(|e| {
        panic!(
            "node1 does not come back as a follower: {e}\n{}\n{}",
            c.node(0).swarm(&["node", "ls"]).stdout,
            c.logs()
        )
    });
}

/// `swarm init --force-new-cluster` on node i, on its own address.
fn force_new_cluster(c: &Cluster, i: usize) -> tests::CliOutput {
    let addr = c.node(i).addr();
    c.node(i).swarm(&[
        "init",
        "--force-new-cluster",
        "--advertise-addr",
        &addr,
        "--listen-addr",
        &addr,
    ])
}

/// `swarm info --format json` of a node.
fn info(c: &Cluster, i: usize) -> serde_json::Value {
    tests::json(&c.node(i).swarm_ok(&["info", "--format", "json"]))
}

fn service_names(c: &Cluster, via: usize) -> BTreeSet<String> {
    c.node(via)
        .services()
        .unwrap()
        .into_iter()
        .map(|s| s.spec.unwrap_or_default().name)
        .collect()
}

#[test]
fn force_new_cluster_on_the_last_manager_brings_back_a_writable_swarm_that_new_managers_join() {
    let mut c = Cluster::formed(4, 27471, 3);
    // Acknowledged writes, through the leader and through a follower.
    c.node(0)
        .create_service(&["--name", "web", "--replicas", "3", "sim/app"]);
    c.node(1)
        .create_service(&["--name", "api", "--replicas", "2", "sim/app"]);
    c.node(2)
        .swarm_ok(&["network", "create", "-d", "overlay", "backend"]);
    wait_for(Duration::from_secs(60), || {
        running(&c.node(2).tasks("web").unwrap()).len() == 3
            && running(&c.node(2).tasks("api").unwrap()).len() == 2
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let before = info(&c, 2);
    let worker_token = c.token(2, "worker");
    let manager_token = c.token(2, "manager");
    let node3_id = before["node_id"].as_str().unwrap().to_string();

    // Two of the three managers are lost for good: node3 alone has no quorum.
    c.nodes[0].kill();
    c.nodes[1].kill();
    wait_for(Duration::from_secs(30), || {
        !c.node(2).swarm(&["service", "scale", "-d", "web=4"]).ok()
    })
    .unwrap();

    let o = force_new_cluster(&c, 2);
    assert!(
        o.ok(),
        "force-new-cluster failed: {}\n{}",
        o.stderr,
        c.logs()
    );
    assert!(
        o.stdout.starts_with(&format!(
            "Swarm initialized: current node ({node3_id}) is now a manager."
        )),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains(&worker_token), "{}", o.stdout);

    // The same swarm (cluster id, tokens, services, networks, nodes), writable again.
    wait_for(Duration::from_secs(30), || {
        c.node(2).swarm(&["service", "scale", "-d", "web=4"]).ok()
    })
    .unwrap_or_else(|e| panic!("the forced cluster does not take writes: {e}\n{}", c.logs()));
    let after = info(&c, 2);
    assert_eq!(after["cluster_id"], before["cluster_id"]);
    assert_eq!(after["node_id"], before["node_id"]);
    assert_eq!(c.token(2, "worker"), worker_token);
    assert_eq!(c.token(2, "manager"), manager_token);
    assert_eq!(
        service_names(&c, 2),
        BTreeSet::from(["web".to_string(), "api".to_string()])
    );
    let nets = c.node(2).swarm_ok(&["network", "ls"]);
    assert!(
        nets.contains("backend") && nets.contains("ingress"),
        "{nets}"
    );
    wait_for(Duration::from_secs(30), || {
        let rows = node_rows(&c, 2);
        rows.len() == 4
            && rows["node3"].contains("Leader")
            && rows["node3"].contains(" Ready ")
            && rows["node4"].contains(" Ready ")
            && ["node1", "node2"]
                .iter()
                .all(|n| rows[*n].contains("Down") && rows[*n].contains("Unreachable"))
    })
    .unwrap_or_else(|e| {
        panic!(
            "node ls after force-new-cluster: {e}\n{}",
            c.node(2).swarm(&["node", "ls"]).stdout
        )
    });
    wait_for(Duration::from_secs(60), || {
        running(&c.node(2).tasks("web").unwrap()).len() == 4
            && running(&c.node(2).tasks("api").unwrap()).len() == 2
    })
    .unwrap_or_else(|e| {
        panic!(
            "services do not run on the forced cluster: {e}\n{}",
            c.node(2).swarm(&["service", "ps", "web"]).stdout
        )
    });

    // Two new managers join with the manager token: three voters again.
    let n5 = c.add_node().unwrap();
    let n6 = c.add_node().unwrap();
    c.join(n5, 2, "manager")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    c.join(n6, 2, "manager")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    wait_for(Duration::from_secs(30), || {
        let rows = node_rows(&c, 2);
        rows.len() == 6
            && ["node5", "node6"]
                .iter()
                .all(|n| rows[*n].contains(" Ready ") && rows[*n].contains("Reachable"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.node(2).swarm(&["node", "ls"]).stdout));
    c.node(n5)
        .swarm_ok(&["service", "create", "-d", "--name", "after", "sim/app"]);

    // The quorum is three managers again: without node3, node5 and node6 elect a leader
    // and take writes, and every acknowledged write is there.
    c.nodes[2].kill();
    wait_for(Duration::from_secs(30), || {
        c.node(n6)
            .swarm(&["service", "create", "-d", "--name", "quorum", "sim/app"])
            .ok()
    })
    .unwrap_or_else(|e| panic!("node5 and node6 have no quorum: {e}\n{}", c.logs()));
    assert_eq!(
        service_names(&c, n5),
        ["web", "api", "after", "quorum"]
            .into_iter()
            .map(String::from)
            .collect::<BTreeSet<_>>()
    );
}

#[test]
fn force_new_cluster_on_a_healthy_swarm_keeps_its_state_and_leads_alone() {
    // Docker allows it on any manager: this one becomes the only manager of the swarm.
    let c = Cluster::formed(3, 27571, 3);
    c.node(0)
        .create_service(&["--name", "web", "--replicas", "2", "sim/app"]);
    let o = force_new_cluster(&c, 1);
    assert!(o.ok(), "{}\n{}", o.stderr, c.logs());
    // A write on the forced cluster; the old managers keep trying to reach node2 meanwhile.
    wait_for(Duration::from_secs(30), || {
        c.node(1)
            .swarm(&["service", "create", "-d", "--name", "forced", "sim/app"])
            .ok()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    std::thread::sleep(Duration::from_secs(5));
    let rows = node_rows(&c, 1);
    assert!(
        rows["node2"].contains("Leader"),
        "node2 leads its forced cluster: {rows:#?}\n{}",
        c.logs()
    );
    assert!(service_names(&c, 1).contains("forced"));
    assert!(
        service_names(&c, 1).contains("web"),
        "the forced cluster keeps the swarm's services"
    );
}
