//! End-to-end `swarm service logs` with the simulated executor: each task writes its
//! `SIM_LOG` (stdout) and `SIM_LOG_ERR` (stderr) line to its log file, the leader's broker
//! gathers them from every node.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tests::{running, swarm_bin, wait_for, AgentClient, Cluster};

fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

#[test]
fn service_logs_gather_every_replica_from_any_manager() {
    let c = Cluster::formed(3, 25601, 2);
    let (leader, follower, worker) = (c.node(0), c.node(1), c.node(2));
    leader.create_service(&[
        "--name",
        "web",
        "--replicas",
        "3",
        "-e",
        "SIM_LOG=hello from web",
        "-e",
        "SIM_LOG_ERR=oops",
        "sim/app",
    ]);
    wait_for(Duration::from_secs(30), || {
        leader.tasks("web").is_ok_and(|t| running(&t).len() == 3)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let tasks = leader.tasks("web").unwrap();
    let hostnames: std::collections::BTreeMap<String, String> = leader
        .nodes()
        .unwrap()
        .into_iter()
        .map(|n| (n.id.clone(), n.description.unwrap_or_default().hostname))
        .collect();
    let expected_out: std::collections::BTreeSet<String> = tasks
        .iter()
        .map(|t| {
            format!(
                "web.{}.{}@{}    | hello from web",
                t.slot,
                short(&t.id),
                hostnames[&t.node_id]
            )
        })
        .collect();

    // The logs may reach the file a moment after RUNNING is reported.
    let mut last = None;
    wait_for(Duration::from_secs(20), || {
        let o = leader.swarm(&["service", "logs", "web"]);
        let done = o.ok() && o.stdout.lines().count() == 3 && o.stderr.lines().count() == 3;
        last = Some(o);
        done
    })
    .unwrap_or_else(|e| panic!("{e}: {last:?}\n{}", c.logs()));
    let out = last.unwrap();
    let lines: std::collections::BTreeSet<String> =
        out.stdout.lines().map(str::to_string).collect();
    assert_eq!(lines, expected_out, "{}", out.stdout);
    assert!(
        out.stderr.lines().all(|l| l.ends_with("    | oops")),
        "stderr lines go to stderr: {}",
        out.stderr
    );

    // A follower forwards to the leader.
    let o = follower.swarm_ok(&["service", "logs", "web"]);
    assert_eq!(
        o.lines()
            .map(str::to_string)
            .collect::<std::collections::BTreeSet<_>>(),
        expected_out
    );
    // A worker is refused like for any cluster call.
    let o = worker.swarm(&["service", "logs", "web"]);
    assert!(!o.ok());
    assert!(
        o.stderr.contains("This node is not a swarm manager"),
        "{}",
        o.stderr
    );

    // Formatting flags.
    let raw = leader.swarm_ok(&["service", "logs", "--raw", "web"]);
    assert_eq!(raw, "hello from web\n".repeat(3));
    let no_ids = leader.swarm_ok(&["service", "logs", "--no-task-ids", "web"]);
    assert!(
        no_ids
            .lines()
            .all(|l| l.starts_with("web.") && l.split('@').next().is_some_and(|p| p.len() == 5)),
        "{no_ids}"
    );
    let ts = leader.swarm_ok(&["service", "logs", "-t", "--tail", "1", "web"]);
    for l in ts.lines() {
        let (stamp, rest) = l.split_once(' ').unwrap();
        assert!(stamp.ends_with('Z') && stamp.len() == 30, "{l}");
        assert!(rest.starts_with("web."), "{l}");
    }
    assert_eq!(
        leader
            .swarm_ok(&["service", "logs", "--tail", "0", "web"])
            .len(),
        0
    );

    // One task by id.
    let t = &tasks[0];
    let one = leader.swarm_ok(&["service", "logs", short(&t.id)]);
    assert_eq!(
        one,
        format!(
            "web.{}.{}@{}    | hello from web\n",
            t.slot,
            short(&t.id),
            hostnames[&t.node_id]
        )
    );
    let none = leader.swarm(&["service", "logs", "nope"]);
    assert!(
        none.stderr.contains("no such task or service: nope"),
        "{none:?}"
    );

    // Following: the lines there, then those of a task that appears later.
    let mut child = Command::new(swarm_bin())
        .arg("-H")
        .arg(format!("unix://{}", follower.socket.display()))
        .args(["service", "logs", "-f", "web"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let read_until = |n: usize, seen: &mut Vec<String>| {
        while seen.len() < n {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(l) => seen.push(l),
                Err(_) => return false,
            }
        }
        true
    };
    assert!(
        read_until(3, &mut seen),
        "follow gave {seen:?}\n{}",
        c.logs()
    );
    leader.swarm_ok(&["service", "scale", "-d", "web=4"]);
    assert!(
        read_until(4, &mut seen),
        "the new task's line did not come: {seen:?}\n{}",
        c.logs()
    );
    assert!(seen[3].starts_with("web.4."), "{seen:?}");
    assert!(child.try_wait().unwrap().is_none(), "-f keeps running");
    let _ = child.kill();
    let _ = child.wait();
}
