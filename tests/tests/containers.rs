//! Tasks as real containers: every test brings up a lab (a network namespace, a containerd
//! and a swarm-agent per node, a registry with the project's images) and checks what ran in
//! the nodes' containerd, not only what `service ps` says. Needs root, containerd, runc,
//! docker-registry, busybox-static and the static whoami binary: `cargo xtask test` installs
//! and builds them. Labs are heavy on two cores, so the tests of this file run one at a time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proto::TaskState;
use tests::lab::testing::{node_of, test_lab as lab, LONG};
use tests::lab::{Lab, LabNode};
use tests::{running, wait_for, AgentClient};

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
            let node = node_of(lab, t);
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
    let ns = node.task_netns(task_id);
    let mut last = None;
    // RUNNING is reported when the process started; give the server a moment to listen.
    for _ in 0..50 {
        match tests::lab::http_get_in(&ns, "127.0.0.1:80", path) {
            Ok(body) => return body,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("GET {path} in task {task_id}: {last:?}");
}

#[test]
fn replicas_run_in_containerd_scale_drain_and_leave_nothing_when_removed() {
    let (_g, lab) = lab(1, 2);
    let m = lab.node(1);
    let image = format!("{}/whoami:latest", lab.registry());
    m.create_service(&["--name", "web", "--replicas", "4", &image]);
    let tasks = wait_running_in_containerd(&lab, "web", 4);

    // The image was pinned to its digest by the CLI.
    let svc = m.swarm_ok(&["service", "inspect", "web"]);
    assert!(svc.contains(&format!("{image}@sha256:")), "{svc}");
    // Each container really serves, in a namespace of its own, with the task's hostname.
    for t in &tasks {
        let node = node_of(&lab, t);
        let body = get_in_task(node, &t.id, "/hostname");
        assert_eq!(body.trim(), &t.id[..12], "hostname of task {}", t.id);
    }

    m.swarm_ok(&["service", "scale", "-d", "web=6"]);
    wait_running_in_containerd(&lab, "web", 6);
    m.swarm_ok(&["service", "scale", "-d", "web=2"]);
    wait_running_in_containerd(&lab, "web", 2);

    // Drain a node that runs a task: its containers go, the tasks run elsewhere.
    let tasks = wait_running_in_containerd(&lab, "web", 2);
    let drained = node_of(&lab, &tasks[0]).name().to_string();
    m.swarm_ok(&["node", "update", "--availability", "drain", &drained]);
    wait_for(LONG, || {
        lab.node_named(&drained)
            .is_some_and(|n| n.containerd_containers().is_ok_and(|c| c.is_empty()))
    })
    .unwrap_or_else(|e| panic!("{e}: {} still has containers", drained));
    let moved = wait_running_in_containerd(&lab, "web", 2);
    assert!(moved.iter().all(|t| node_of(&lab, t).name() != drained));
    m.swarm_ok(&["node", "update", "--availability", "active", &drained]);

    // Removing the service leaves no container, task, snapshot or namespace behind.
    let id = m
        .services()
        .expect("services")
        .into_iter()
        .find(|s| s.spec.as_ref().is_some_and(|sp| sp.name == "web"))
        .expect("web")
        .id;
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
        let tasks = m.tasks(&id).unwrap_or_default();
        if !tasks.is_empty() {
            left += &format!("tasks in the store: {tasks:?}\n");
        }
        left.is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}: left behind:\n{left}"));
    assert_eq!(containerd_total(&lab), 0);
}

#[test]
fn agents_adopt_their_containers_and_a_dead_node_comes_back_clean() {
    let (_g, lab) = lab(1, 2);
    let m = lab.node(1);
    let image = format!("{}/whoami:latest", lab.registry());
    m.create_service(&["--name", "web", "--replicas", "6", &image]);
    let before = wait_running_in_containerd(&lab, "web", 6);
    let all_before = m.tasks("web").expect("tasks").len();
    let w = lab.node(2);
    let on_w: Vec<String> = before
        .iter()
        .filter(|t| node_of(&lab, t).name() == w.name())
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
        all_before,
        "no task was replaced: {}",
        m.swarm(&["service", "ps", "--no-trunc", "web"]).stdout
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
        run.len() == 6 && run.iter().all(|t| node_of(&lab, t).name() != dead.name())
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
    m.create_service(&[
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
    m.create_service(&["--name", "back", &image, "sleep", "100"]);
    wait_running_in_containerd(&lab, "back", 1);
}

#[test]
fn exits_follow_the_restart_policy_and_unhealthy_tasks_are_replaced() {
    let (_g, lab) = lab(1, 1);
    let m = lab.node(1);
    let image = format!("{}/busybox:latest", lab.registry());
    let failed_with = |service: &str, err: &str| {
        m.tasks(service)
            .unwrap_or_default()
            .iter()
            .filter(|t| {
                t.state() == TaskState::Failed
                    && t.status.as_ref().is_some_and(|s| s.err.contains(err))
            })
            .count()
    };
    // Non-zero exit, default policy (any): restarted again and again.
    m.create_service(&[
        "--name",
        "crash",
        "--restart-delay",
        "500ms",
        &image,
        "sh",
        "-c",
        "echo boom; exit 3",
    ]);
    // Non-zero exit with restart condition none: stays FAILED, never restarted.
    m.create_service(&[
        "--name",
        "once",
        "--restart-condition",
        "none",
        &image,
        "sh",
        "-c",
        "exit 3",
    ]);
    wait_for(LONG, || {
        failed_with("crash", "task: non-zero exit (3)") >= 3
    })
    .unwrap_or_else(|e| panic!("{e}: {}", m.swarm(&["service", "ps", "crash"]).stdout));
    assert_eq!(failed_with("once", "task: non-zero exit (3)"), 1);
    std::thread::sleep(Duration::from_secs(3));
    let once = m.tasks("once").expect("tasks");
    assert_eq!(once.len(), 1, "restart condition none: {once:?}");
    assert_eq!(once[0].state(), TaskState::Failed);

    // Healthy after ~3 s (RUNNING only then), unhealthy ~6 s later: the task fails and a
    // new one replaces it.
    m.create_service(&[
        "--name",
        "hc",
        "--health-cmd",
        "test -f /tmp/ok || (echo not ok; exit 1)",
        "--health-interval",
        "1s",
        "--health-retries",
        "2",
        "--health-start-period",
        "10s",
        "--health-start-interval",
        "500ms",
        &image,
        "sh",
        "-c",
        "sleep 3; echo > /tmp/ok; sleep 6; rm /tmp/ok; sleep 1000",
    ]);
    let t0 = Instant::now();
    let mut starting_seen = None;
    let running_seen = loop {
        let tasks = m.tasks("hc").unwrap_or_default();
        if let Some(t) = tasks.first() {
            match t.state() {
                TaskState::Starting if starting_seen.is_none() => {
                    starting_seen = Some(t0.elapsed())
                }
                TaskState::Running => break t0.elapsed(),
                TaskState::Failed | TaskState::Rejected => {
                    panic!("hc failed before it was healthy: {:?}", t.status)
                }
                _ => {}
            }
        }
        assert!(t0.elapsed() < LONG, "hc never ran: {tasks:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        starting_seen.is_some() && running_seen >= Duration::from_secs(2),
        "RUNNING only once healthy: STARTING seen at {starting_seen:?}, RUNNING at {running_seen:?}"
    );
    wait_for(LONG, || {
        let tasks = m.tasks("hc").unwrap_or_default();
        failed_with("hc", "unhealthy container") >= 1 && running(&tasks).len() == 1
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            m.swarm(&["service", "ps", "--no-trunc", "hc"]).stdout
        )
    });
    let ps = m.swarm_ok(&["service", "ps", "--no-trunc", "hc"]);
    assert!(ps.contains("unhealthy container: not ok"), "{ps}");
}

#[test]
fn service_logs_show_every_replica_with_its_prefix_and_follow() {
    let (_g, lab) = lab(1, 1);
    let m = lab.node(1);
    let image = format!("{}/busybox:latest", lab.registry());
    m.create_service(&["--name",
        "talk",
        "--replicas",
        "2",
        &image,
        "sh",
        "-c",
        "echo hello from $(hostname); echo oops >&2; i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done",
    ]);
    let tasks = wait_running_in_containerd(&lab, "talk", 2);
    let nodes = m.nodes().expect("nodes");
    let host_of = |id: &str| {
        nodes
            .iter()
            .find(|n| n.id == id)
            .and_then(|n| n.description.as_ref())
            .map(|d| d.hostname.clone())
            .unwrap_or_default()
    };
    let mut out = String::new();
    wait_for(Duration::from_secs(30), || {
        let o = m.swarm(&["service", "logs", "talk"]);
        out = format!("{}{}", o.stdout, o.stderr);
        tasks
            .iter()
            .all(|t| out.contains(&format!("hello from {}", &t.id[..12])))
    })
    .unwrap_or_else(|e| panic!("{e}: {out}"));
    let o = m.swarm(&["service", "logs", "talk"]);
    assert!(o.ok(), "{o:?}");
    for t in &tasks {
        let prefix = format!("talk.{}.{}@{}", t.slot, &t.id[..12], host_of(&t.node_id));
        let line = o
            .stdout
            .lines()
            .find(|l| l.contains(&format!("hello from {}", &t.id[..12])))
            .unwrap_or_else(|| panic!("no hello line of {}: {}", t.id, o.stdout));
        assert!(line.starts_with(&prefix), "prefix {prefix:?} in {line:?}");
        assert!(line.contains("| hello from"), "{line:?}");
        // stderr lines go to the CLI's stderr.
        assert!(
            o.stderr
                .lines()
                .any(|l| l.starts_with(&prefix) && l.ends_with("| oops")),
            "stderr of {}: {}",
            t.id,
            o.stderr
        );
    }
    // --tail 1 gives one line per replica (stdout and stderr together).
    let tail = m.swarm(&["service", "logs", "--tail", "1", "talk"]);
    let n = tail.stdout.lines().count() + tail.stderr.lines().count();
    assert_eq!(n, 2, "{tail:?}");
    // -t adds a timestamp.
    let ts = m.swarm_ok(&["service", "logs", "-t", "--tail", "1", "talk"]);
    assert!(
        ts.lines().all(|l| l.starts_with("20") && l.contains('T')),
        "{ts}"
    );

    // -f follows: new ticks arrive while it runs.
    let mut child = m
        .command(lab.config().bin_dir.join("swarm"))
        .expect("command")
        .args(["service", "logs", "-f", "--tail", "0", "talk"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("swarm service logs -f");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut ticks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ticks.len() < 4 && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
            if l.contains("| tick ") {
                ticks.push(l);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(ticks.len() >= 4, "followed lines: {ticks:?}");
}
