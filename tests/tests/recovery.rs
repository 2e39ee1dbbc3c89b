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
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
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
        assert!(avail < 64 * 1024, "the tmpfs is not full: {avail} bytes free");
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
    assert!(!o.ok(), "a manager whose Raft stopped still answers: {}", o.stdout);
    assert!(
        o.stderr.contains("Raft node stopped") && o.stderr.contains("storage"),
        "the refusal names the storage fault: {}\n(the failed write said: {failed})",
        o.stderr
    );

    // It exits non-zero, saying why.
    wait_for(Duration::from_secs(20), || c.nodes[0].try_exit().is_some_and(|s| !s.success()))
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
