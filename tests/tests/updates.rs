//! Rolling updates and rollbacks for real, in the lab: the update policy seen from the task
//! states over time, the failure actions with an image that exits at once, a leader killed
//! in the middle of an update, and clients looping through the VIP during start-first and
//! stop-first updates. Needs what `cargo xtask test` installs (containerd, runc,
//! docker-registry, busybox-static, the static whoami binary). One lab at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use proto::{TaskState, UpdateState};
use tests::lab::testing::{test_lab as lab, wait_running as running, LONG, SERVED};
use tests::lab::{Lab, LabNode};
use tests::{wait_for, AgentClient};

fn service(m: &LabNode, name: &str) -> proto::Service {
    m.services()
        .unwrap()
        .into_iter()
        .find(|s| s.name() == name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

fn update_state(s: &proto::Service) -> UpdateState {
    s.update_status
        .as_ref()
        .map_or(UpdateState::Unknown, |u| u.state())
}

fn task_image(t: &proto::Task) -> String {
    t.spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .map_or(String::new(), |c| c.image.clone())
}

fn created_at(t: &proto::Task) -> i64 {
    t.meta.as_ref().map_or(0, |m| m.created_at)
}

/// Waits until the service's update reaches `want`; panics with the service's tasks and the
/// lab's logs otherwise.
fn wait_update_state(lab: &Lab, m: &LabNode, name: &str, want: UpdateState, timeout: Duration) {
    let mut last = UpdateState::Unknown;
    let ok = wait_for(timeout, || {
        last = m
            .services()
            .ok()
            .and_then(|v| v.into_iter().find(|s| s.name() == name))
            .map_or(UpdateState::Unknown, |s| update_state(&s));
        last == want
    });
    if ok.is_err() {
        panic!(
            "{name}: update state {} instead of {}\n{}\n{}",
            last.docker_name(),
            want.docker_name(),
            m.swarm(&["service", "ps", name]).stdout,
            lab.logs()
        );
    }
}

/// The tasks of `version` grouped by creation time (one atomic write = one batch), in order.
fn batches(tasks: &[proto::Task], version: u64) -> Vec<(i64, usize)> {
    let mut by_time: BTreeMap<i64, usize> = BTreeMap::new();
    for t in tasks.iter().filter(|t| t.spec_version == version) {
        *by_time.entry(created_at(t)).or_default() += 1;
    }
    by_time.into_iter().collect()
}

/// Every batch has at most `parallelism` tasks and starts at least `delay` after the
/// previous one.
fn assert_batches(batches: &[(i64, usize)], parallelism: usize, delay_ms: i64, min: usize) {
    assert!(batches.len() >= min, "{batches:?}");
    for (_, n) in batches {
        assert!(
            *n <= parallelism,
            "batch larger than {parallelism}: {batches:?}"
        );
    }
    for w in batches.windows(2) {
        assert!(
            w[1].0 - w[0].0 >= delay_ms,
            "batches less than {delay_ms} ms apart: {batches:?}"
        );
    }
}

#[test]
fn parallelism_and_delay_shape_the_update_and_bad_input_changes_nothing() {
    let (_g, lab) = lab(1, 2);
    let whoami = format!("{}/whoami:latest", lab.registry());
    let m = lab.node(1);
    m.create_service(&[
        "--name",
        "web",
        "--replicas",
        "6",
        "--update-parallelism",
        "2",
        "--update-delay",
        "2s",
        &whoami,
    ]);
    running(&lab, "web", 6);

    // Bad input: Docker's errors, and the service stays as it was.
    let before = service(m, "web");
    for (args, want) in [
        (
            vec!["--update-parallelism", "-1"],
            "strconv.ParseUint: parsing \"-1\": invalid syntax",
        ),
        (
            vec!["--update-failure-action", "explode"],
            "unrecognized update failure action explode",
        ),
        (
            vec!["--update-max-failure-ratio", "2"],
            "update-maxfailureratio cannot be less than 0 or bigger than 1",
        ),
    ] {
        let mut cmd = vec!["service", "update", "-d"];
        cmd.extend(args.iter().copied());
        cmd.push("web");
        let o = m.swarm(&cmd);
        assert!(!o.ok(), "{args:?} was accepted");
        assert!(o.stderr.contains(want), "{args:?}: {}", o.stderr);
        assert_eq!(
            service(m, "web").meta,
            before.meta,
            "{args:?} changed the service"
        );
    }
    let o = m.swarm(&["service", "rollback", "-d", "web"]);
    assert!(!o.ok());
    assert!(
        o.stderr.contains("does not have a previous spec"),
        "{}",
        o.stderr
    );
    assert_eq!(service(m, "web").meta, before.meta);

    m.swarm_ok(&["service", "update", "-d", "--env-add", "V=2", "web"]);
    let version = service(m, "web").spec_version;
    assert_ne!(version, before.spec_version);
    // Watch the slots: never more than 2 without a running task.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut most_down = 0;
    let mut samples = 0;
    loop {
        let tasks = m.tasks("web").unwrap();
        let serving: BTreeSet<u64> = tasks
            .iter()
            .filter(|t| t.state() == TaskState::Running && t.desired() == TaskState::Running)
            .map(|t| t.slot)
            .collect();
        most_down = most_down.max(6 - serving.len());
        samples += 1;
        if update_state(&service(m, "web")) == UpdateState::Completed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the update did not complete\n{}\n{}",
            m.swarm(&["service", "ps", "web"]).stdout,
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(samples > 20, "the update was watched ({samples} samples)");
    assert!(most_down <= 2, "{most_down} slots down at once");
    assert!(most_down >= 1, "stop-first takes a slot down");
    let tasks = m.tasks("web").unwrap();
    assert_batches(&batches(&tasks, version), 2, 2_000, 3);
    let new_running = tasks
        .iter()
        .filter(|t| t.spec_version == version && t.state() == TaskState::Running)
        .count();
    assert_eq!(new_running, 6);

    let pretty = m.swarm_ok(&["service", "inspect", "--pretty", "web"]);
    assert!(
        pretty.contains(
            "UpdateConfig:\n Parallelism:\t2\n Delay:\t\t2s\n On failure:\tpause\n Monitoring Period: 5s\n Max failure ratio: 0\n Update order:      stop-first\n"
        ),
        "{pretty}"
    );
    assert!(
        pretty.contains("UpdateStatus:\n State:\t\tcompleted\n"),
        "{pretty}"
    );
    assert!(pretty.contains(" Message:\tupdate completed\n"), "{pretty}");
}

#[test]
fn an_image_that_exits_at_once_is_rolled_back_or_pauses_the_update() {
    let (_g, lab) = lab(1, 1);
    let whoami = format!("{}/whoami:latest", lab.registry());
    let busybox = format!("{}/busybox:latest", lab.registry());
    let m = lab.node(1);
    for (name, action) in [("rb", "rollback"), ("pz", "pause")] {
        m.create_service(&[
            "--name",
            name,
            "--replicas",
            "3",
            "--update-failure-action",
            action,
            &whoami,
        ]);
    }
    running(&lab, "rb", 3);
    running(&lab, "pz", 3);
    let old_image = service(m, "rb").image().to_string();
    // busybox's command is `sh`, which ends at once without a terminal. Without -d the CLI
    // follows the update into the managers' rollback and fails with it, as Docker's does.
    let o = m.swarm(&["service", "update", "--image", &busybox, "rb"]);
    assert!(!o.ok(), "a rolled-back update succeeded: {}", o.stdout);
    assert!(
        o.stdout.contains(
            "\nrollback: update rolled back due to failure or early termination of task "
        ),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("overall progress: rolling back update: "),
        "{}",
        o.stdout
    );
    assert!(o.stderr.contains("service rolled back: "), "{}", o.stderr);
    m.swarm_ok(&["service", "update", "-d", "--image", &busybox, "pz"]);

    wait_update_state(&lab, m, "rb", UpdateState::RollbackCompleted, LONG);
    let rb = service(m, "rb");
    assert_eq!(
        rb.image(),
        old_image,
        "the service is back on its old image"
    );
    let msg = rb.update_status.as_ref().unwrap().message.clone();
    assert_eq!(msg, "rollback completed");
    let rb_tasks = running(&lab, "rb", 3);
    assert!(rb_tasks.iter().all(|t| task_image(t) == old_image));
    let pretty = m.swarm_ok(&["service", "inspect", "--pretty", "rb"]);
    assert!(
        pretty.contains("UpdateStatus:\n State:\t\trollback_completed\n"),
        "{pretty}"
    );

    wait_update_state(&lab, m, "pz", UpdateState::Paused, LONG);
    let pz = service(m, "pz");
    let msg = pz.update_status.as_ref().unwrap().message.clone();
    assert!(
        msg.starts_with("update paused due to failure or early termination of task "),
        "{msg}"
    );
    // The update stopped at the failure: the old tasks it had not reached yet keep running
    // and stay untouched (the new task ran for an instant before it ended, so the update
    // may have gone on to a second slot meanwhile, as SwarmKit's does).
    let old_running = |m: &LabNode| {
        m.tasks("pz")
            .unwrap()
            .iter()
            .filter(|t| {
                t.state() == TaskState::Running
                    && t.desired() == TaskState::Running
                    && task_image(t) == old_image
            })
            .count()
    };
    let remaining = old_running(m);
    assert!((1..=2).contains(&remaining), "{remaining} old tasks left");
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(old_running(m), remaining);
    assert_eq!(update_state(&service(m, "pz")), UpdateState::Paused);
    let pretty = m.swarm_ok(&["service", "inspect", "--pretty", "pz"]);
    assert!(
        pretty.contains("UpdateStatus:\n State:\t\tpaused\n"),
        "{pretty}"
    );
}

#[test]
fn a_new_leader_finishes_the_update_with_the_same_policy() {
    let (_g, lab) = lab(3, 1);
    let whoami = format!("{}/whoami:latest", lab.registry());
    let m = lab.node(1);
    m.create_service(&[
        "--name",
        "web",
        "--replicas",
        "6",
        "--constraint",
        "node.role==worker",
        "--update-delay",
        "3s",
        &whoami,
    ]);
    running(&lab, "web", 6);
    m.swarm_ok(&["service", "update", "-d", "--env-add", "V=2", "web"]);
    let version = service(m, "web").spec_version;
    // Mid-update: some slots done, not all.
    wait_for(LONG, || {
        let tasks = m.tasks("web").unwrap_or_default();
        tasks
            .iter()
            .filter(|t| t.spec_version == version && t.state() == TaskState::Running)
            .count()
            >= 2
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    assert_eq!(update_state(&service(m, "web")), UpdateState::Updating);

    let leader = m
        .nodes()
        .unwrap()
        .into_iter()
        .find(|n| n.manager_status.as_ref().is_some_and(|s| s.leader))
        .expect("a leader");
    let hostname = leader.description.as_ref().unwrap().hostname.clone();
    let old_leader = lab.node_named(&hostname).unwrap();
    old_leader.kill_agent().unwrap();
    let other = lab
        .nodes()
        .iter()
        .find(|n| n.is_manager() && n.name() != hostname)
        .unwrap();

    wait_update_state(
        &lab,
        other,
        "web",
        UpdateState::Completed,
        Duration::from_secs(180),
    );
    let new_leader = other
        .nodes()
        .unwrap()
        .into_iter()
        .find(|n| n.manager_status.as_ref().is_some_and(|s| s.leader))
        .and_then(|n| n.description.map(|d| d.hostname))
        .expect("a new leader");
    assert_ne!(new_leader, hostname, "the leadership moved");
    let tasks = other.tasks("web").unwrap();
    // The same policy before and after the leader change: one task at a time, 3 s apart.
    assert_batches(&batches(&tasks, version), 1, 3_000, 6);
    let new_running = tasks
        .iter()
        .filter(|t| t.spec_version == version && t.state() == TaskState::Running)
        .count();
    assert_eq!(new_running, 6);
}

/// `whoami get` in a loop through the VIP of `web` from the client task, while `update`
/// runs and completes; the client's output.
fn requests_during_update(lab: &Lab, client: &proto::Task, update: &[&str]) -> String {
    let m = lab.node(1);
    std::thread::scope(|s| {
        let looping = s.spawn(|| {
            lab.task_exec(
                client,
                &[
                    "/whoami",
                    "get",
                    "http://web/hostname",
                    "--count",
                    "700",
                    "--interval-ms",
                    "40",
                ],
            )
        });
        std::thread::sleep(Duration::from_secs(2));
        m.swarm_ok(update);
        wait_update_state(lab, m, "web", UpdateState::Completed, LONG);
        assert!(
            !looping.is_finished(),
            "the client stopped before the update completed: make the loop longer"
        );
        let out = looping
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("requests failed: {e:#}"));
        assert!(!out.contains("error"), "{out}");
        assert_eq!(out.lines().count(), 700);
        out
    })
}

#[test]
fn start_first_and_stop_first_updates_lose_no_request_through_the_vip() {
    let (_g, lab) = lab(1, 2);
    let whoami = format!("{}/whoami:latest", lab.registry());
    let m = lab.node(1);
    m.swarm_ok(&["network", "create", "-d", "overlay", "appnet"]);
    m.create_service(&[
        "--name",
        "web",
        "--replicas",
        "3",
        "--network",
        "appnet",
        "--constraint",
        "node.hostname!=node3",
        "--update-order",
        "start-first",
        &whoami,
    ]);
    m.create_service(&[
        "--name",
        "client",
        "--network",
        "appnet",
        "--constraint",
        "node.hostname==node3",
        &whoami,
    ]);
    let before = running(&lab, "web", 3);
    let client = running(&lab, "client", 1).remove(0);
    lab.task_get_once_served(&client, "http://web/hostname", SERVED)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));

    let out = requests_during_update(
        &lab,
        &client,
        &["service", "update", "-d", "--force", "web"],
    );
    // Answers came from old and new tasks (hostnames are task ids).
    let after = running(&lab, "web", 3);
    let hosts: BTreeSet<&str> = out.lines().collect();
    assert!(before.iter().any(|t| hosts.contains(&t.id[..12])), "{out}");
    assert!(after.iter().any(|t| hosts.contains(&t.id[..12])), "{out}");

    requests_during_update(
        &lab,
        &client,
        &[
            "service",
            "update",
            "-d",
            "--force",
            "--update-order",
            "stop-first",
            "web",
        ],
    );
    let pretty = m.swarm_ok(&["service", "inspect", "--pretty", "web"]);
    assert!(pretty.contains("Update order:      stop-first"), "{pretty}");
}
