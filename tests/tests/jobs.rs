//! Jobs for real, in the lab: a replicated job's completions and concurrency seen from the
//! task states over time, `service update --force` running a job again, a global job once
//! per node, a failing job retried under its restart policy, and bad input refused. Needs
//! what `cargo xtask test` installs (containerd, runc, docker-registry, busybox-static). One
//! lab at a time.

use std::time::{Duration, Instant};

use proto::TaskState;
use tests::lab::testing::{test_lab as lab, LONG};
use tests::lab::{Lab, LabNode};
use tests::{table, wait_for, AgentClient};

fn service(m: &LabNode, name: &str) -> proto::Service {
    m.services()
        .unwrap()
        .into_iter()
        .find(|s| s.name() == name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

/// The `service ls` row of `name`: [ID, NAME, MODE, REPLICAS, IMAGE, (PORTS)].
fn ls_row(m: &LabNode, name: &str) -> Vec<String> {
    table(&m.swarm_ok(&["service", "ls"]))
        .into_iter()
        .find(|r| r.get(1).is_some_and(|n| n == name))
        .unwrap_or_else(|| panic!("{name} not in service ls"))
}

/// Tasks of the job's current iteration.
fn current(m: &LabNode, name: &str) -> Vec<proto::Task> {
    let it = service(m, name).job_iteration();
    m.tasks(name)
        .unwrap()
        .into_iter()
        .filter(|t| t.job_iteration == it)
        .collect()
}

fn count(tasks: &[proto::Task], state: TaskState) -> usize {
    tasks.iter().filter(|t| t.state() == state).count()
}

/// Follows the job's current iteration until `completions` tasks are Complete, sampling the
/// task states; returns the most tasks seen at once wanted and not ended, and running.
fn watch_job(lab: &Lab, m: &LabNode, name: &str, completions: usize) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut most_active, mut most_running, mut samples) = (0, 0, 0);
    loop {
        let tasks = current(m, name);
        let active = tasks
            .iter()
            .filter(|t| t.desired() <= TaskState::Running && !t.state().is_terminal())
            .count();
        most_active = most_active.max(active);
        most_running = most_running.max(count(&tasks, TaskState::Running));
        samples += 1;
        if count(&tasks, TaskState::Complete) >= completions {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not complete\n{}\n{}",
            m.swarm(&["service", "ps", name]).stdout,
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(samples > 20, "the job was watched ({samples} samples)");
    (most_active, most_running)
}

#[test]
fn replicated_job_runs_its_completions_max_concurrent_at_a_time_and_again_on_update() {
    let (_g, lab) = lab(1, 2);
    let m = lab.node(1);
    let busybox = format!("{}/busybox:latest", lab.registry());
    m.create_service(&[
        "--name",
        "batch",
        "--mode",
        "replicated-job",
        "--replicas",
        "5",
        "--max-concurrent",
        "2",
        &busybox,
        "sleep",
        "2",
    ]);
    let (most_active, most_running) = watch_job(&lab, m, "batch", 5);
    assert!(most_active <= 2, "{most_active} tasks at once");
    assert_eq!(most_running, 2, "2 ran at once");

    // Done: 5 Complete tasks, none restarted, nothing more started.
    std::thread::sleep(Duration::from_secs(3));
    let tasks = m.tasks("batch").unwrap();
    assert_eq!(tasks.len(), 5, "{tasks:?}");
    assert_eq!(count(&tasks, TaskState::Complete), 5);
    assert!(tasks.iter().all(|t| t.desired() == TaskState::Complete));
    let mut slots: Vec<u64> = tasks.iter().map(|t| t.slot).collect();
    slots.sort();
    assert_eq!(slots, vec![1, 2, 3, 4, 5]);
    let row = ls_row(m, "batch");
    assert_eq!(row[2], "replicated job", "{row:?}");
    assert_eq!(row[3], "0/0 (5/5 completed)", "{row:?}");
    let pretty = m.swarm_ok(&["service", "inspect", "--pretty", "batch"]);
    assert!(
        pretty.contains(
            "Service Mode:\tReplicated Job\n Max Concurrent:\t2\n Total Completions:\t5\n"
        ),
        "{pretty}"
    );
    assert!(
        pretty.contains("JobStatus:\n Job Iteration:\t0\n"),
        "{pretty}"
    );
    assert!(pretty.contains(" Condition:\ton-failure\n"), "{pretty}");

    // Bad input: Docker's errors, and the job stays as it was.
    let before = service(m, "batch");
    for (args, want) in [
        (
            vec![
                "service",
                "update",
                "-d",
                "--update-parallelism",
                "2",
                "batch",
            ],
            "update and rollback configs cannot be used with jobs",
        ),
        (
            vec!["service", "update", "-d", "--rollback-delay", "1s", "batch"],
            "update and rollback configs cannot be used with jobs",
        ),
        (vec!["service", "rollback", "-d", "batch"], "is a job"),
    ] {
        let o = m.swarm(&args);
        assert!(!o.ok(), "{args:?} was accepted");
        assert!(o.stderr.contains(want), "{args:?}: {}", o.stderr);
        assert_eq!(service(m, "batch").meta, before.meta, "{args:?} changed it");
    }

    // `update --force` runs the job again: a new iteration, 5 more completions.
    m.swarm_ok(&["service", "update", "-d", "--force", "batch"]);
    let after = service(m, "batch");
    assert!(after.job_iteration() > before.job_iteration());
    let (most_active, _) = watch_job(&lab, m, "batch", 5);
    assert!(most_active <= 2, "{most_active} tasks at once");
    let tasks = m.tasks("batch").unwrap();
    assert_eq!(count(&tasks, TaskState::Complete), 10, "both runs are kept");
    let pretty = m.swarm_ok(&["service", "inspect", "--pretty", "batch"]);
    assert!(
        pretty.contains(&format!("Job Iteration:\t{}\n", after.job_iteration())),
        "{pretty}"
    );

    // `service scale` of a replicated job sets its completions and runs it again.
    m.swarm_ok(&["service", "scale", "-d", "batch=3"]);
    let scaled = service(m, "batch");
    assert_eq!(
        scaled.replicated_job().map(|j| j.total_completions),
        Some(3)
    );
    watch_job(&lab, m, "batch", 3);
    assert_eq!(ls_row(m, "batch")[3], "0/0 (3/3 completed)");
}

#[test]
fn global_job_runs_once_per_node_and_a_failing_job_stops_after_its_attempts() {
    let (_g, lab) = lab(1, 2);
    let m = lab.node(1);
    let busybox = format!("{}/busybox:latest", lab.registry());

    // Without -d the CLI follows the job to its end.
    let out = m.swarm_ok(&[
        "service",
        "create",
        "--name",
        "everywhere",
        "--mode",
        "global-job",
        &busybox,
        "true",
    ]);
    assert!(out.contains("job progress: 3 out of 3 complete"), "{out}");
    assert!(out.contains("verify: Job complete"), "{out}");
    let tasks = m.tasks("everywhere").unwrap();
    assert_eq!(count(&tasks, TaskState::Complete), 3, "{tasks:?}");
    let mut nodes: Vec<&str> = tasks.iter().map(|t| t.node_id.as_str()).collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 3, "once per node");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(m.tasks("everywhere").unwrap().len(), 3, "not run again");
    let row = ls_row(m, "everywhere");
    assert_eq!(row[2], "global job", "{row:?}");
    assert_eq!(row[3], "0/0 (3/3 completed)", "{row:?}");

    // Refused: --replicas on a global job, --max-concurrent on a service, scaling a global
    // job, changing nothing.
    for (args, want) in [
        (
            vec![
                "service",
                "create",
                "-d",
                "--mode",
                "global-job",
                "--replicas",
                "2",
                &busybox,
            ],
            "replicas can only be used with replicated or replicated-job mode",
        ),
        (
            vec!["service", "create", "-d", "--max-concurrent", "2", &busybox],
            "max-concurrent can only be used with replicated-job mode",
        ),
        (
            vec![
                "service",
                "create",
                "-d",
                "--mode",
                "global-job",
                "--update-delay",
                "1s",
                &busybox,
            ],
            "update and rollback configs cannot be used with jobs",
        ),
        (
            vec!["service", "scale", "-d", "everywhere=2"],
            "scale can only be used with replicated or replicated-job mode",
        ),
    ] {
        let o = m.swarm(&args);
        assert!(!o.ok(), "{args:?} was accepted");
        assert!(o.stderr.contains(want), "{args:?}: {}", o.stderr);
    }
    assert_eq!(m.services().unwrap().len(), 1, "no service created");

    // A job whose command fails: retried under on-failure, then left failed.
    m.create_service(&[
        "--name",
        "failing",
        "--mode",
        "replicated-job",
        "--restart-max-attempts",
        "2",
        "--restart-delay",
        "100ms",
        &busybox,
        "sh",
        "-c",
        "exit 3",
    ]);
    wait_for(LONG, || {
        m.tasks("failing")
            .is_ok_and(|t| count(&t, TaskState::Failed) >= 3)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n{}",
            m.swarm(&["service", "ps", "failing"]).stdout,
            lab.logs()
        )
    });
    std::thread::sleep(Duration::from_secs(3));
    let tasks = m.tasks("failing").unwrap();
    assert_eq!(tasks.len(), 3, "the first run and 2 restarts: {tasks:?}");
    assert_eq!(count(&tasks, TaskState::Failed), 3);
    assert!(tasks.iter().all(|t| t.slot == 1));
    assert_eq!(ls_row(m, "failing")[3], "0/1 (0/1 completed)");
}
