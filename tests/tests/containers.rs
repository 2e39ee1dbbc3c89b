//! Tasks as real containers: every test brings up a lab (a network namespace, a containerd
//! and a swarm-agent per node, a registry with the project's images) and checks what ran in
//! the nodes' containerd, not only what `service ps` says. Needs root, containerd, runc,
//! docker-registry, busybox-static and the static whoami binary: `cargo xtask test` installs
//! and builds them. Labs are heavy on two cores, so the tests of this file run one at a time.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proto::TaskState;
use tests::lab::{Lab, LabConfig, LabNode};
use tests::{running, wait_for};

static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

fn lab(managers: usize, workers: usize) -> (std::sync::MutexGuard<'static, ()>, Lab) {
    let guard = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::up(LabConfig::for_tests(managers, workers)).unwrap_or_else(|e| panic!("{e:#}"));
    (guard, lab)
}

const LONG: Duration = Duration::from_secs(90);

/// The lab node a task runs on (by the node's hostname).
fn node_of<'a>(lab: &'a Lab, m: &LabNode, task: &proto::Task) -> &'a LabNode {
    let nodes = m.nodes().expect("node ls");
    let host = nodes
        .iter()
        .find(|n| n.id == task.node_id)
        .and_then(|n| n.description.as_ref())
        .map(|d| d.hostname.clone())
        .unwrap_or_else(|| panic!("task {} is on an unknown node {}", task.id, task.node_id));
    lab.node_named(&host)
        .unwrap_or_else(|| panic!("no lab node named {host}"))
}

/// Container ids with a running process, per lab node name.
fn containerd_tasks(lab: &Lab) -> BTreeMap<String, Vec<String>> {
    (1..=lab.config().nodes())
        .map(|i| {
            let n = lab.node(i);
            let mut t = n.containerd_tasks().unwrap_or_else(|e| panic!("{e:#}"));
            t.sort();
            (n.name().to_string(), t)
        })
        .collect()
}

fn containerd_total(lab: &Lab) -> usize {
    (1..=lab.config().nodes())
        .map(|i| {
            lab.node(i)
                .containerd_containers()
                .unwrap_or_else(|e| panic!("{e:#}"))
                .len()
        })
        .sum()
}

/// Running tasks of `service` once there are exactly `n`, each one backed by a running
/// container in the containerd of the node it is assigned to.
fn wait_running_in_containerd(lab: &Lab, service: &str, n: usize) -> Vec<proto::Task> {
    let m = lab.node(1);
    let mut last = String::new();
    let ok = wait_for(LONG, || {
        let tasks = m.tasks(service).unwrap_or_default();
        let run: Vec<&proto::Task> = running(&tasks);
        if run.len() != n {
            last = format!(
                "{} running: {:?}",
                run.len(),
                m.swarm(&["service", "ps", service])
            );
            return false;
        }
        let in_cd = containerd_tasks(lab);
        // Containers of this service's tasks (any state) across the nodes: exactly the
        // running ones, none left over from earlier tasks.
        let ours: usize = in_cd
            .values()
            .flatten()
            .filter(|id| tasks.iter().any(|t| &t.id == *id))
            .count();
        let backed = run.iter().all(|t| {
            let node = node_of(lab, m, t);
            in_cd[node.name()].contains(&t.id)
        });
        last = format!("containerd: {in_cd:?}");
        backed && ours == n
    });
    ok.unwrap_or_else(|e| panic!("{e}: {last}\n{}", lab.logs()));
    running(&m.tasks(service).expect("tasks"))
        .into_iter()
        .cloned()
        .collect()
}

/// GET `path` from inside the task's own network namespace (where only the task lives).
fn get_in_task(node: &LabNode, task_id: &str, path: &str) -> String {
    let ns = node.exec_root().join("netns").join(task_id);
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["busybox", "wget", "-q", "-T", "5", "-O", "-"])
        .arg(format!("http://127.0.0.1{path}"))
        .output()
        .expect("running nsenter");
    assert!(
        out.status.success(),
        "GET {path} in task {task_id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn replicas_run_in_containerd_scale_drain_and_leave_nothing_when_removed() {
    let (_g, lab) = lab(1, 2);
    let m = lab.node(1);
    let image = format!("{}/whoami:latest", lab.registry());
    m.swarm_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--replicas",
        "4",
        &image,
    ]);
    let tasks = wait_running_in_containerd(&lab, "web", 4);

    // The image was pinned to its digest by the CLI.
    let svc = m.swarm_ok(&["service", "inspect", "web", "--format", "{{json .}}"]);
    assert!(svc.contains(&format!("{image}@sha256:")), "{svc}");
    // Each container really serves, in a namespace of its own, with the task's hostname.
    for t in &tasks {
        let node = node_of(&lab, m, t);
        let body = get_in_task(node, &t.id, "/hostname");
        assert_eq!(body.trim(), &t.id[..12], "hostname of task {}", t.id);
    }

    m.swarm_ok(&["service", "scale", "-d", "web=6"]);
    wait_running_in_containerd(&lab, "web", 6);
    m.swarm_ok(&["service", "scale", "-d", "web=2"]);
    wait_running_in_containerd(&lab, "web", 2);

    // Drain a node that runs a task: its containers go, the tasks run elsewhere.
    let tasks = wait_running_in_containerd(&lab, "web", 2);
    let drained = node_of(&lab, m, &tasks[0]).name().to_string();
    m.swarm_ok(&["node", "update", "--availability", "drain", &drained]);
    wait_for(LONG, || {
        lab.node_named(&drained)
            .is_some_and(|n| n.containerd_containers().is_ok_and(|c| c.is_empty()))
    })
    .unwrap_or_else(|e| panic!("{e}: {} still has containers", drained));
    let moved = wait_running_in_containerd(&lab, "web", 2);
    assert!(moved.iter().all(|t| node_of(&lab, m, t).name() != drained));
    m.swarm_ok(&["node", "update", "--availability", "active", &drained]);

    // Removing the service leaves no container, task, snapshot or namespace behind.
    m.swarm_ok(&["service", "rm", "web"]);
    let mut left = String::new();
    wait_for(LONG, || {
        left.clear();
        for i in 1..=lab.config().nodes() {
            let n = lab.node(i);
            let containers = n.containerd_containers().unwrap_or_default();
            let tasks = n.containerd_tasks().unwrap_or_default();
            // Image layers stay (committed snapshots named by chain id); task rootfs go.
            let snaps: Vec<String> = n
                .containerd_snapshots()
                .unwrap_or_default()
                .into_iter()
                .filter(|s| !s.starts_with("sha256:"))
                .collect();
            let netns: Vec<String> = std::fs::read_dir(n.exec_root().join("netns"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect();
            if !(containers.is_empty() && tasks.is_empty() && snaps.is_empty() && netns.is_empty())
            {
                left += &format!(
                    "{}: containers {containers:?} tasks {tasks:?} snapshots {snaps:?} netns {netns:?}\n",
                    n.name()
                );
            }
        }
        left.is_empty() && m.tasks("web").is_ok_and(|t| t.is_empty())
    })
    .unwrap_or_else(|e| panic!("{e}: left behind:\n{left}"));
    assert_eq!(containerd_total(&lab), 0);
}

#[test]
fn agents_adopt_their_containers_and_a_dead_node_comes_back_clean() {
    let (_g, lab) = lab(1, 2);
    let m = lab.node(1);
    let image = format!("{}/whoami:latest", lab.registry());
    m.swarm_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--replicas",
        "6",
        &image,
    ]);
    let before = wait_running_in_containerd(&lab, "web", 6);
    let w = lab.node(2);
    let on_w: Vec<String> = before
        .iter()
        .filter(|t| node_of(&lab, m, t).name() == w.name())
        .map(|t| t.id.clone())
        .collect();
    assert!(!on_w.is_empty(), "spread puts tasks on node2: {before:?}");

    // The agent alone restarts: its containers keep running and are taken over, not
    // replaced (same tasks, same containers, no new task).
    w.kill_agent().expect("kill agent");
    w.start_agent().expect("start agent");
    std::thread::sleep(Duration::from_secs(5));
    let after = wait_running_in_containerd(&lab, "web", 6);
    let ids = |v: &[proto::Task]| {
        let mut v: Vec<String> = v.iter().map(|t| t.id.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(
        ids(&after),
        ids(&before),
        "the same tasks run after the agent restart"
    );
    assert_eq!(
        m.tasks("web").expect("tasks").len(),
        6,
        "no task was replaced"
    );
    for id in &on_w {
        assert!(
            w.containerd_tasks().expect("ctr").contains(id),
            "{id} adopted"
        );
    }

    // Agent and containerd die: the node goes down and its tasks run elsewhere. Its
    // containers live on meanwhile (the shims survive containerd).
    let dead = lab.node(3);
    dead.kill_agent().expect("kill agent");
    dead.kill_containerd().expect("kill containerd");
    let t0 = Instant::now();
    wait_for(LONG, || {
        let tasks = m.tasks("web").unwrap_or_default();
        let run = running(&tasks);
        run.len() == 6
            && run
                .iter()
                .all(|t| node_of(&lab, m, t).name() != dead.name())
    })
    .unwrap_or_else(|e| panic!("{e}: {}", m.swarm(&["service", "ps", "web"]).stdout));
    eprintln!("rescheduled away from the dead node in {:?}", t0.elapsed());

    // Back again: READY, and its stale containers are removed, not run twice.
    dead.start_containerd().expect("start containerd");
    dead.start_agent().expect("start agent");
    wait_for(LONG, || {
        m.nodes().is_ok_and(|ns| {
            ns.iter().all(|n| {
                n.status
                    .as_ref()
                    .is_some_and(|s| s.state == proto::NodeState::Ready as i32)
            })
        })
    })
    .unwrap_or_else(|e| panic!("{e}: {}", m.swarm(&["node", "ls"]).stdout));
    wait_running_in_containerd(&lab, "web", 6);
    assert_eq!(containerd_total(&lab), 6, "{:?}", containerd_tasks(&lab));
}

#[test]
fn bad_images_are_rejected_with_the_registrys_reason_and_leave_nothing() {
    let (_g, lab) = lab(1, 0);
    let m = lab.node(1);
    let missing = format!("{}/nosuchimage:latest", lab.registry());
    let out = m.swarm(&[
        "service",
        "create",
        "-d",
        "--name",
        "ghost",
        "--restart-condition",
        "none",
        &missing,
    ]);
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stderr.contains("could not be accessed on a registry"),
        "Docker's warning: {}",
        out.stderr
    );
    wait_for(LONG, || {
        m.tasks("ghost")
            .unwrap_or_default()
            .iter()
            .any(|t| t.state() == TaskState::Rejected)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", m.swarm(&["service", "ps", "ghost"]).stdout));
    let ps = m.swarm_ok(&["service", "ps", "--no-trunc", "ghost"]);
    assert!(ps.contains("Rejected"), "{ps}");
    assert!(
        ps.contains("MANIFEST_UNKNOWN") || ps.contains("manifest unknown"),
        "the registry's reason: {ps}"
    );

    // The registry is down: the agent retries, then rejects the task saying so; nothing
    // half-written stays in containerd.
    lab.stop_registry().expect("stop registry");
    let image = format!("{}/busybox:latest", lab.registry());
    m.swarm_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "away",
        "--restart-condition",
        "none",
        &image,
        "sleep",
        "100",
    ]);
    wait_for(LONG, || {
        m.tasks("away")
            .unwrap_or_default()
            .iter()
            .any(|t| t.state() == TaskState::Rejected)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", m.swarm(&["service", "ps", "away"]).stdout));
    let ps = m.swarm_ok(&["service", "ps", "--no-trunc", "away"]);
    assert!(ps.contains("unreachable"), "{ps}");
    let active = m.ctr(&["content", "active"]).expect("ctr content active");
    assert!(active.lines().count() <= 1, "ingests left: {active}");
    let images = m.containerd_images().expect("images");
    assert!(images.is_empty(), "image records left: {images:?}");
    let leases = m.ctr(&["leases", "ls"]).expect("leases");
    assert!(!leases.contains("swarm-pull"), "pull leases left: {leases}");
    assert_eq!(containerd_total(&lab), 0);

    // Back up: the same image runs.
    lab.start_registry().expect("start registry");
    m.swarm_ok(&[
        "service", "create", "-d", "--name", "back", &image, "sleep", "100",
    ]);
    wait_running_in_containerd(&lab, "back", 1);
}
