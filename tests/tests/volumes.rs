//! Volumes of the local driver, in the lab: a named volume keeps what a task wrote for the
//! next task on the same node (`service update --force`) and stays when the service is
//! removed; a new, empty volume starts with the image's content at its target (owners and
//! modes kept) unless `volume-nocopy` is set; a read-only volume refuses writes; an
//! anonymous volume goes with its task. Every service is constrained to the worker, so that
//! its tasks and volumes are on one node the test reads from.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tests::images::{SEED_DIR, SEED_HELLO};
use tests::lab::testing::{node_of, test_lab as lab, wait_running, LONG};
use tests::{wait_for, AgentClient};

const ON_WORKER: &str = "node.role==worker";

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

#[test]
fn named_volumes_persist_get_the_images_content_and_anonymous_ones_go_with_their_task() {
    let (_g, lab) = lab(1, 1);
    let m = lab.node(1);
    let busybox = format!("{}/busybox:latest", lab.registry());
    let seed_target = SEED_DIR.to_string();
    let keep = "type=volume,source=keep,target=/data,volume-label=purpose=test";
    let seeded = format!("type=volume,source=seeded,target={seed_target},readonly");
    let bare = format!("type=volume,source=bare,target={seed_target},volume-nocopy");
    // `sleep` as PID 1 ignores SIGTERM: a short grace period keeps replacements quick.
    let common = ["--constraint", ON_WORKER, "--stop-grace-period", "1s"];
    for (name, mount, script) in [
        ("keep", keep, "hostname >> /data/log; exec sleep 100000"),
        ("seeded", seeded.as_str(), "exec sleep 100000"),
        ("bare", bare.as_str(), "exec sleep 100000"),
        (
            "anon",
            "type=volume,target=/scratch",
            "echo x > /scratch/f; exec sleep 100000",
        ),
    ] {
        let mut args = vec!["--name", name, "--mount", mount];
        args.extend_from_slice(&common);
        args.extend_from_slice(&[busybox.as_str(), "sh", "-c", script]);
        m.create_service(&args);
    }
    let keep1 = wait_running(&lab, "keep", 1).remove(0);
    let seeded_t = wait_running(&lab, "seeded", 1).remove(0);
    let bare_t = wait_running(&lab, "bare", 1).remove(0);
    let anon_t = wait_running(&lab, "anon", 1).remove(0);
    let node = node_of(&lab, &keep1);
    assert!(!node.is_manager(), "constrained to the worker");
    let volumes = node.data_root().join("volumes");

    // The image's content in the new volume, seen by the task and on the node, with the
    // image's modes (0750 directory, 0640 file); the volume is read-only in the task.
    let exec = |t: &proto::Task, cmd: &[&str]| lab.task_exec(t, cmd);
    let hello = exec(&seeded_t, &["cat", &format!("{seed_target}/hello")]).unwrap();
    assert_eq!(hello, SEED_HELLO);
    let data = volumes.join("seeded/_data");
    assert_eq!(mode(&data.join("hello")), 0o640);
    assert_eq!(mode(&data), 0o750);
    let write = exec(
        &seeded_t,
        &["sh", "-c", &format!("echo x > {seed_target}/new")],
    );
    assert!(write.is_err(), "a read-only volume took a write: {write:?}");
    assert!(!data.join("new").exists());
    // volume-nocopy: the same target stays empty.
    let listed = exec(&bare_t, &["ls", "-A", &seed_target]).unwrap();
    assert_eq!(listed.trim(), "", "volume-nocopy volume has content");
    assert_eq!(
        std::fs::read_dir(volumes.join("bare/_data"))
            .unwrap()
            .count(),
        0
    );

    // The named volume's labels beside it; the task's write is kept for the next task on
    // this node, which appends its own line to the same file.
    let labels = std::fs::read_to_string(volumes.join("keep/labels.json")).unwrap();
    assert!(labels.contains("\"purpose\": \"test\""), "{labels}");
    m.swarm_ok(&["service", "update", "-d", "--force", "keep"]);
    let mut keep2 = None;
    wait_for(LONG, || {
        keep2 = m
            .tasks("keep")
            .unwrap_or_default()
            .into_iter()
            .find(|t| t.id != keep1.id && t.state() == proto::TaskState::Running);
        keep2.is_some()
    })
    .unwrap_or_else(|e| panic!("{e}: no new keep task\n{}", lab.logs()));
    let keep2 = keep2.unwrap();
    assert_eq!(keep2.node_id, keep1.node_id);
    let log = exec(&keep2, &["cat", "/data/log"]).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines,
        [tests::hostname(&keep1), tests::hostname(&keep2)],
        "the first task's line, then the second's"
    );

    // An anonymous volume lives with its task and goes when the task is removed; named
    // volumes stay when their services go.
    let anon_dir = node
        .data_root()
        .join("tasks")
        .join(&anon_t.id)
        .join("volumes/0/_data");
    assert_eq!(std::fs::read_to_string(anon_dir.join("f")).unwrap(), "x\n");
    for s in ["anon", "keep"] {
        m.swarm_ok(&["service", "rm", s]);
    }
    wait_for(LONG, || !anon_dir.exists())
        .unwrap_or_else(|e| panic!("{e}: {} is still there", anon_dir.display()));
    assert!(
        !volumes.join(&anon_t.id).exists(),
        "no named volume for an anonymous one"
    );
    let kept = std::fs::read_to_string(volumes.join("keep/_data/log")).unwrap();
    assert_eq!(kept, log, "the named volume outlives its service");
}
