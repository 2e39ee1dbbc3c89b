//! End-to-end: real `test-agent` processes on 127.0.0.N, driven by the real `swarm` CLI.
//! Each test uses its own port so that tests may run side by side.

use std::collections::BTreeSet;
use std::time::Duration;

use tests::{per_node, running, table, wait_for, AgentClient, Cluster};

fn node_ids(c: &Cluster) -> std::collections::BTreeMap<String, String> {
    c.node(0)
        .nodes()
        .unwrap()
        .into_iter()
        .map(|n| (n.description.clone().unwrap_or_default().hostname, n.id))
        .collect()
}

#[test]
fn five_processes_form_a_swarm_with_one_leader_and_two_reachable_managers() {
    let c = Cluster::formed(5, 24101, 3);
    wait_for(Duration::from_secs(30), || {
        let out = c.node(0).swarm(&["node", "ls"]).stdout;
        out.matches("Leader").count() == 1 && out.matches("Reachable").count() == 2
    })
    .unwrap_or_else(|e| panic!("{e}: {}", c.node(0).swarm(&["node", "ls"]).stdout));
    let out = c.node(0).swarm_ok(&["node", "ls"]);
    let header = out.lines().next().unwrap();
    for col in [
        "ID",
        "HOSTNAME",
        "STATUS",
        "AVAILABILITY",
        "MANAGER STATUS",
        "ENGINE VERSION",
    ] {
        assert!(header.contains(col), "node ls header lacks {col}: {header}");
    }
    let rows = table(&out);
    assert_eq!(rows.len(), 5, "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.contains(" * ") || l.contains("* "))
            .count(),
        1,
        "one row marks the current node: {out}"
    );
    for i in 0..5 {
        assert!(out.contains(&format!("node{}", i + 1)), "{out}");
    }
    // Every manager answers, and agrees on the membership.
    for i in 1..3 {
        let o = c.node(i).swarm_ok(&["node", "ls"]);
        assert_eq!(table(&o).len(), 5, "{o}");
    }
    // Every daemon serves Prometheus metrics; managers report Raft, the leader its objects.
    for (i, n) in c.nodes.iter().enumerate() {
        let body = tests::http_get(&n.metrics_addr(), "/metrics")
            .unwrap_or_else(|e| panic!("metrics of {}: {e}", n.name));
        assert!(body.contains("swarm_api_requests") || i >= 3, "{body}");
        if i < 3 {
            assert!(body.contains("swarm_raft_term "), "{}: {body}", n.name);
            assert!(body.contains("swarm_raft_applied_index "), "{body}");
        }
    }
    wait_for(Duration::from_secs(10), || {
        (0..3).any(|i| {
            let n = c.node(i);
            tests::http_get(&n.metrics_addr(), "/metrics")
                .is_ok_and(|b| b.contains("swarm_raft_is_leader 1") && b.contains("swarm_nodes{"))
        })
    })
    .expect("the leader reports swarm_raft_is_leader 1 and node gauges");
}

#[test]
fn replicated_services_spread_scale_and_global_services_follow_nodes() {
    let mut c = Cluster::formed(5, 24201, 3);
    let m = c.node(0);

    // Without -d the CLI shows progress until the service converged.
    let out = m.swarm_ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "6",
        "sim/app",
    ]);
    assert!(out.contains("verify: Service converged"), "{out}");
    let tasks = m.tasks("web").unwrap();
    let spread = per_node(&tasks);
    assert_eq!(running(&tasks).len(), 6);
    assert_eq!(
        spread.len(),
        5,
        "6 tasks over 5 nodes use every node: {spread:?}"
    );
    assert!(
        spread.values().max().unwrap() - spread.values().min().unwrap() <= 1,
        "{spread:?}"
    );

    let out = m.swarm_ok(&["service", "scale", "web=10", "-d"]);
    assert!(out.contains("web scaled to 10"), "{out}");
    wait_for(Duration::from_secs(60), || {
        running(&m.tasks("web").unwrap()).len() == 10
    })
    .unwrap();
    let spread = per_node(&m.tasks("web").unwrap());
    assert_eq!(
        spread.values().copied().collect::<Vec<_>>(),
        vec![2; 5],
        "{spread:?}"
    );

    m.swarm_ok(&["service", "scale", "web=3", "-d"]);
    wait_for(Duration::from_secs(60), || {
        let t = m.tasks("web").unwrap();
        running(&t).len() == 3
            && t.iter()
                .filter(|t| t.desired() == proto::TaskState::Running)
                .count()
                == 3
    })
    .unwrap();
    let ls = m.swarm_ok(&["service", "ls"]);
    assert!(ls.contains("3/3"), "{ls}");

    m.create_service(&["--name", "mon", "--mode", "global", "sim/agent"]);
    wait_for(Duration::from_secs(60), || {
        running(&m.tasks("mon").unwrap()).len() == 5
    })
    .unwrap();
    let spread = per_node(&m.tasks("mon").unwrap());
    assert_eq!(spread.len(), 5);
    assert!(spread.values().all(|n| *n == 1), "{spread:?}");

    // A node that joins gets its global task.
    let i = c.add_node().unwrap();
    c.join(i, 0, "worker").unwrap();
    let m = c.node(0);
    wait_for(Duration::from_secs(60), || {
        running(&m.tasks("mon").unwrap()).len() == 6
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let ids = node_ids(&c);
    let spread = per_node(&m.tasks("mon").unwrap());
    assert_eq!(spread.get(&ids["node6"]), Some(&1), "{spread:?}");
}

#[test]
fn killing_leaders_loses_no_acknowledged_write_and_a_full_restart_keeps_state() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let mut c = Cluster::formed(3, 24301, 3);
    let sockets: Vec<String> = c
        .nodes
        .iter()
        .map(|n| format!("unix://{}", n.socket.display()))
        .collect();
    let alive = Arc::new(Mutex::new(vec![true; 3]));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));

    // A client that keeps writing services through whichever manager is up.
    let writer = {
        let (alive, acked, stop, sockets) =
            (alive.clone(), acked.clone(), stop.clone(), sockets.clone());
        std::thread::spawn(move || {
            let swarm = tests::swarm_bin();
            let mut i = 0usize;
            let mut attempts = 0usize;
            while !stop.load(Ordering::SeqCst) && attempts < 2000 {
                attempts += 1;
                let target = {
                    let a = alive.lock().unwrap();
                    (0..3).cycle().skip(i).take(3).find(|j| a[*j])
                };
                let Some(t) = target else { continue };
                let name = format!("w{i}");
                let out = std::process::Command::new(&swarm)
                    .args([
                        "-H",
                        &sockets[t],
                        "service",
                        "create",
                        "-d",
                        "--name",
                        &name,
                        "sim/app",
                    ])
                    .output()
                    .unwrap();
                if out.status.success() {
                    acked.lock().unwrap().push(name);
                    i += 1;
                } else {
                    // Not acknowledged (an election is under way): the write may or may not
                    // exist; move to a new name so that a retry is not taken for a conflict.
                    i += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
    };

    let leader_index = |c: &Cluster, a: &[bool]| -> Option<usize> {
        for (j, up) in a.iter().enumerate() {
            if !up {
                continue;
            }
            let out = c.node(j).swarm(&["node", "ls"]);
            if !out.ok() {
                continue;
            }
            for l in out.stdout.lines().filter(|l| l.contains("Leader")) {
                if let Some(k) = (0..3).find(|k| a[*k] && l.contains(&format!("node{}", k + 1))) {
                    return Some(k);
                }
            }
        }
        None
    };

    for round in 0..3 {
        std::thread::sleep(Duration::from_secs(2));
        let a = alive.lock().unwrap().clone();
        let l = leader_index(&c, &a)
            .unwrap_or_else(|| panic!("no leader before round {round}\n{}", c.logs()));
        alive.lock().unwrap()[l] = false;
        c.nodes[l].kill();
        let a = alive.lock().unwrap().clone();
        // A new leader among the survivors, and every survivor answers the API.
        wait_for(Duration::from_secs(30), || {
            leader_index(&c, &a).is_some_and(|n| n != l)
        })
        .unwrap_or_else(|e| panic!("round {round}: no new leader: {e}\n{}", c.logs()));
        for (j, up) in a.iter().enumerate() {
            if *up {
                wait_for(Duration::from_secs(20), || {
                    c.node(j).swarm(&["service", "ls"]).ok()
                })
                .unwrap_or_else(|e| panic!("round {round}: node{} does not answer: {e}", j + 1));
            }
        }
        c.nodes[l].start().unwrap();
        alive.lock().unwrap()[l] = true;
        wait_for(Duration::from_secs(30), || {
            c.node(l).swarm(&["service", "ls"]).ok()
        })
        .unwrap_or_else(|e| {
            panic!(
                "round {round}: restarted node{} does not answer: {e}\n{}",
                l + 1,
                c.logs()
            )
        });
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 5,
        "the writer got few writes through: {acked:?}"
    );

    let names = |c: &Cluster, j: usize| -> BTreeSet<String> {
        c.node(j)
            .services()
            .unwrap()
            .into_iter()
            .map(|s| s.spec.unwrap_or_default().name)
            .collect()
    };
    for j in 0..3 {
        let have = names(&c, j);
        for a in &acked {
            assert!(
                have.contains(a),
                "acknowledged write {a} missing through node{}",
                j + 1
            );
        }
    }

    // All managers down at once, then up again: the state is intact.
    let before = names(&c, 0);
    for n in c.nodes.iter_mut() {
        n.kill();
    }
    for n in c.nodes.iter_mut() {
        n.start().unwrap();
    }
    wait_for(Duration::from_secs(60), || {
        c.node(0).swarm(&["service", "ls"]).ok()
    })
    .unwrap_or_else(|e| panic!("no leader after a full restart: {e}\n{}", c.logs()));
    assert_eq!(names(&c, 0), before);
    assert_eq!(names(&c, 2), before);
}

#[test]
fn a_dead_worker_goes_down_and_its_tasks_move_drain_moves_pause_holds() {
    let mut c = Cluster::formed(5, 24401, 3);
    let ids = node_ids(&c);
    c.node(0)
        .create_service(&["--name", "web", "--replicas", "10", "sim/app"]);
    wait_for(Duration::from_secs(60), || {
        running(&c.node(0).tasks("web").unwrap()).len() == 10
    })
    .unwrap();
    let on5 = per_node(&c.node(0).tasks("web").unwrap())[&ids["node5"]];
    assert!(on5 > 0);

    c.nodes[4].kill();
    wait_for(Duration::from_secs(30), || {
        c.node(0)
            .swarm(&["node", "ls"])
            .stdout
            .lines()
            .any(|l| l.contains("node5") && l.contains("Down"))
    })
    .unwrap_or_else(|e| {
        panic!(
            "node5 never went Down: {e}\n{}",
            c.node(0).swarm(&["node", "ls"]).stdout
        )
    });
    wait_for(Duration::from_secs(60), || {
        let t = c.node(0).tasks("web").unwrap();
        let p = per_node(&t);
        running(&t).len() == 10 && !p.contains_key(&ids["node5"])
    })
    .unwrap_or_else(|e| {
        panic!(
            "tasks of node5 not rescheduled: {e}\n{}",
            c.node(0).swarm(&["service", "ps", "web"]).stdout
        )
    });

    // drain: tasks leave node4.
    c.node(0)
        .swarm_ok(&["node", "update", "--availability", "drain", "node4"]);
    wait_for(Duration::from_secs(60), || {
        let t = c.node(0).tasks("web").unwrap();
        running(&t).len() == 10 && !per_node(&t).contains_key(&ids["node4"])
    })
    .unwrap();
    let out = c.node(0).swarm_ok(&["node", "ls"]);
    assert!(
        out.lines()
            .any(|l| l.contains("node4") && l.contains("Drain")),
        "{out}"
    );

    // pause: node3 keeps its tasks and takes no new ones.
    c.node(0)
        .swarm_ok(&["node", "update", "--availability", "pause", "node3"]);
    let before = per_node(&c.node(0).tasks("web").unwrap())
        .get(&ids["node3"])
        .copied()
        .unwrap_or(0);
    c.node(0).swarm_ok(&["service", "scale", "-d", "web=16"]);
    wait_for(Duration::from_secs(60), || {
        running(&c.node(0).tasks("web").unwrap()).len() == 16
    })
    .unwrap();
    let after = per_node(&c.node(0).tasks("web").unwrap())
        .get(&ids["node3"])
        .copied()
        .unwrap_or(0);
    assert_eq!(before, after, "a paused node took new tasks");
}

#[test]
fn an_unsatisfiable_constraint_leaves_the_task_pending_with_the_reason() {
    let c = Cluster::formed(3, 24501, 1);
    let m = c.node(0);
    m.create_service(&[
        "--name",
        "picky",
        "--constraint",
        "node.labels.zone==nowhere",
        "sim/app",
    ]);
    let want = "no suitable node (scheduling constraints not satisfied on 3 nodes)";
    wait_for(Duration::from_secs(30), || {
        m.swarm(&["service", "ps", "--no-trunc", "picky"])
            .stdout
            .contains(want)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            m.swarm(&["service", "ps", "--no-trunc", "picky"]).stdout
        )
    });
    let t = m.tasks("picky").unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].state(), proto::TaskState::Pending);
    assert!(t[0].node_id.is_empty());
    // Labelling a node satisfies it.
    m.swarm_ok(&["node", "update", "--label-add", "zone=nowhere", "node2"]);
    wait_for(Duration::from_secs(30), || {
        running(&m.tasks("picky").unwrap()).len() == 1
    })
    .unwrap();
}

#[test]
fn tokens_certificates_and_roles_are_enforced() {
    let c = Cluster::new(4, 24601).unwrap();
    c.init(0).unwrap();
    c.join(1, 0, "worker").unwrap();
    let m = c.node(0);

    // A token for another CA, and garbage, are refused; the node stays out of the swarm.
    let good = c.token(0, "worker");
    let digest_len = "SWMTKN-1-".len() + 50;
    let wrong_ca = format!("SWMTKN-1-{}{}", "0".repeat(50), &good[digest_len..]);
    for bad in [wrong_ca.as_str(), "SWMTKN-1-nonsense", "hello"] {
        let o = c.node(2).swarm(&[
            "join",
            "--token",
            bad,
            "--advertise-addr",
            &c.node(2).addr(),
            "--listen-addr",
            &c.node(2).addr(),
            &m.addr(),
        ]);
        assert!(!o.ok(), "join with token {bad:?} succeeded");
        assert!(!o.stderr.trim().is_empty());
    }
    // A rotated-out token is refused, the new one works.
    let out = m.swarm_ok(&["join-token", "--rotate", "worker"]);
    assert!(
        out.contains("Successfully rotated worker join token."),
        "{out}"
    );
    let o = c.node(2).swarm(&[
        "join",
        "--token",
        &good,
        "--advertise-addr",
        &c.node(2).addr(),
        "--listen-addr",
        &c.node(2).addr(),
        &m.addr(),
    ]);
    assert!(!o.ok(), "the rotated-out token still works");
    assert!(o.stderr.contains("invalid join token"), "{}", o.stderr);
    c.join(2, 0, "worker").unwrap();

    // The CLI on a worker says it is not a manager.
    let o = c.node(1).swarm(&["service", "ls"]);
    assert!(!o.ok());
    assert!(o.stderr.contains("not a swarm manager"), "{}", o.stderr);

    // Straight to the manager's port: a worker certificate gets PermissionDenied, no
    // certificate gets Unauthenticated, a certificate of another CA fails the handshake.
    let (cert, key, root) = c.node(1).cert_paths();
    let (cert, key, root) = (tests::read(&cert), tests::read(&key), tests::read(&root));
    let addr = m.addr();
    let call = |cfg: std::sync::Arc<rustls::ClientConfig>| -> Result<(), tonic::Status> {
        let addr = addr.clone();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let ch = swarm_manager::tls::channel(&addr, cfg);
                proto::control_client::ControlClient::new(ch)
                    .list_services(proto::ListServicesRequest::default())
                    .await
                    .map(|_| ())
            })
    };
    let worker = swarm_manager::tls::client_config(&root, Some((&cert, &key))).unwrap();
    let e = call(worker).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let anonymous = swarm_manager::tls::client_config(&root, None).unwrap();
    let e = call(anonymous).unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let other = swarm_manager::ca::RootCa::generate().unwrap();
    let stranger = swarm_manager::tls::client_config(&other.cert_pem, None).unwrap();
    assert!(
        call(stranger).is_err(),
        "a client trusting another CA got through"
    );
    // And the manager's own certificate works.
    let (mc, mk, mr) = m.cert_paths();
    let manager = swarm_manager::tls::client_config(
        &tests::read(&mr),
        Some((&tests::read(&mc), &tests::read(&mk))),
    )
    .unwrap();
    call(manager).expect("a manager certificate is accepted");
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_changes_nothing() {
    let c = Cluster::formed(2, 24701, 1);
    let m = c.node(0);
    m.create_service(&["--name", "ok", "--replicas", "2", "sim/app"]);
    m.create_service(&["--name", "glob", "--mode", "global", "sim/app"]);
    let snapshot = || {
        let mut s: Vec<(String, Option<u64>, u64)> = m
            .services()
            .unwrap()
            .into_iter()
            .map(|s| {
                (
                    s.name().to_string(),
                    s.replicas(),
                    s.meta.map_or(0, |m| m.version),
                )
            })
            .collect();
        s.sort();
        s
    };
    let nodes_before = m
        .nodes()
        .unwrap()
        .into_iter()
        .map(|n| (n.id, n.spec))
        .collect::<Vec<_>>();
    let before = snapshot();
    let cases: &[&[&str]] = &[
        &["service", "create", "-d", "--name", "bad name!", "sim/app"],
        &[
            "service",
            "create",
            "-d",
            "--name",
            "-leading-dash",
            "sim/app",
        ],
        &["service", "create", "-d", "--name", "ok", "sim/app"],
        &[
            "service",
            "create",
            "-d",
            "--mode",
            "global",
            "--replicas",
            "2",
            "--name",
            "g2",
            "sim/app",
        ],
        &[
            "service",
            "create",
            "-d",
            "--replicas",
            "-1",
            "--name",
            "neg",
            "sim/app",
        ],
        &[
            "service",
            "create",
            "-d",
            "--restart-delay",
            "-5s",
            "--name",
            "neg2",
            "sim/app",
        ],
        &[
            "service",
            "create",
            "-d",
            "--constraint",
            "node.role=manager",
            "--name",
            "badc",
            "sim/app",
        ],
        &["service", "create", "-d", "--name", "noimage"],
        &["service", "scale", "-d", "nosuch=2"],
        &["service", "scale", "-d", "glob=3"],
        &["service", "scale", "-d", "ok=-3"],
        &["service", "rm", "nosuch"],
        &["service", "inspect", "nosuch"],
        &["service", "ps", "nosuch"],
        &["node", "update", "--availability", "sideways", "node1"],
        &["node", "update", "--availability", "drain", "nosuch"],
        &["node", "inspect", "nosuch"],
        &["node", "rm", "nosuch"],
        &["node", "demote", "node1"],
    ];
    for args in cases {
        let o = m.swarm(args);
        assert_ne!(
            o.code,
            0,
            "`swarm {}` succeeded: {}",
            args.join(" "),
            o.stdout
        );
        assert!(
            !o.stderr.trim().is_empty(),
            "`swarm {}` failed without saying why",
            args.join(" ")
        );
        assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
    }
    assert_eq!(snapshot(), before, "a refused command changed services");
    let nodes_after = m
        .nodes()
        .unwrap()
        .into_iter()
        .map(|n| (n.id, n.spec))
        .collect::<Vec<_>>();
    assert_eq!(nodes_after, nodes_before, "a refused command changed nodes");
}

#[test]
fn raft_membership_follows_promote_demote_and_leave() {
    let mut c = Cluster::formed(4, 24801, 1);
    let row = |c: &Cluster, via: usize, host: &str| -> String {
        c.node(via)
            .swarm(&["node", "ls"])
            .stdout
            .lines()
            .find(|l| l.contains(host))
            .unwrap_or_default()
            .to_string()
    };

    // Workers promoted to managers become Raft voters: the swarm survives losing the first.
    let out = c.node(0).swarm_ok(&["node", "promote", "node2", "node3"]);
    assert!(
        out.contains("Node node2 promoted to a manager in the swarm."),
        "{out}"
    );
    wait_for(Duration::from_secs(60), || {
        row(&c, 0, "node2").contains("Reachable")
            && row(&c, 0, "node3").contains("Reachable")
            && c.node(1).swarm(&["service", "ls"]).ok()
    })
    .unwrap_or_else(|e| panic!("promotion did not complete: {e}\n{}", c.logs()));
    c.node(1).create_service(&["--name", "before", "sim/app"]);
    c.nodes[0].kill();
    wait_for(Duration::from_secs(30), || {
        c.node(1)
            .swarm(&["service", "create", "-d", "--name", "after", "sim/app"])
            .ok()
            || c.node(1).swarm(&["service", "inspect", "after"]).ok()
    })
    .unwrap_or_else(|e| panic!("no quorum without node1: {e}\n{}", c.logs()));
    let names: BTreeSet<String> = c
        .node(2)
        .services()
        .unwrap()
        .into_iter()
        .map(|s| s.name().to_string())
        .collect();
    assert!(
        names.contains("before") && names.contains("after"),
        "{names:?}"
    );
    c.nodes[0].start().unwrap();
    wait_for(Duration::from_secs(30), || {
        c.node(0).swarm(&["service", "ls"]).ok()
    })
    .unwrap();

    // A demoted manager leaves Raft and loses the Control API. Demote the current leader:
    // the hardest case (it must record the demotion, then step down).
    let leader = (1..3)
        .find(|i| row(&c, 0, &format!("node{}", i + 1)).contains("Leader"))
        .unwrap_or_else(|| {
            panic!(
                "node2 or node3 leads after node1 was killed:\n{}",
                c.node(0).swarm(&["node", "ls"]).stdout
            )
        });
    let other = 3 - leader; // the other one of node2/node3
    let name = format!("node{}", leader + 1);
    let out = c.node(other).swarm_ok(&["node", "demote", &name]);
    assert!(
        out.contains(&format!("Manager {name} demoted in the swarm.")),
        "{out}"
    );
    wait_for(Duration::from_secs(60), || {
        let r = row(&c, other, &name);
        !r.is_empty()
            && !r.contains("Reachable")
            && !r.contains("Leader")
            && c.node(leader)
                .swarm(&["service", "ls"])
                .stderr
                .contains("not a swarm manager")
    })
    .unwrap_or_else(|e| panic!("demotion of the leader did not complete: {e}\n{}", c.logs()));
    // The remaining two managers elect a leader among themselves and take writes.
    wait_for(Duration::from_secs(30), || {
        c.node(0)
            .swarm(&["service", "create", "-d", "--name", "later", "sim/app"])
            .ok()
            || c.node(0).swarm(&["service", "inspect", "later"]).ok()
    })
    .unwrap_or_else(|e| panic!("no writes after demoting the leader: {e}\n{}", c.logs()));

    // A manager may not leave without --force; a worker leaves, goes Down and can be removed.
    let o = c.node(other).swarm(&["leave"]);
    assert!(!o.ok() && o.stderr.contains("--force"), "{o:?}");
    let out = c.node(3).swarm_ok(&["leave"]);
    assert!(out.contains("Node left the swarm."), "{out}");
    assert!(c
        .node(3)
        .swarm(&["node", "ls"])
        .stderr
        .contains("not a swarm manager"));
    wait_for(Duration::from_secs(30), || {
        row(&c, 0, "node4").contains("Down")
    })
    .unwrap();
    c.node(0).swarm_ok(&["node", "rm", "node4"]);
    let out = c.node(0).swarm_ok(&["node", "ls"]);
    assert!(!out.contains("node4"), "{out}");
    assert_eq!(table(&out).len(), 3, "{out}");
}

#[test]
fn the_shipped_daemon_without_containerd_rejects_tasks_and_says_why() {
    let c = Cluster::of_with_args(
        &tests::bin_dir().join("swarm-agent"),
        1,
        24901,
        // This cluster runs in the host's own network namespace: no data plane there.
        &[
            "--containerd-socket",
            "/nonexistent/containerd.sock",
            "--data-plane",
            "none",
        ],
    )
    .unwrap();
    c.form(1).unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let m = c.node(0);
    m.create_service(&["--name", "web", "--restart-condition", "none", "busybox"]);
    wait_for(Duration::from_secs(30), || {
        m.tasks("web")
            .unwrap()
            .iter()
            .any(|t| t.state() == proto::TaskState::Rejected)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            m.swarm(&["service", "ps", "--no-trunc", "web"]).stdout
        )
    });
    let t = m.tasks("web").unwrap();
    assert!(
        t.iter().all(|t| t.state() != proto::TaskState::Running),
        "nothing may pretend to run"
    );
    let err = &t[0].status.as_ref().unwrap().err;
    assert!(
        err.contains("/nonexistent/containerd.sock") && err.contains("is containerd running"),
        "{err}"
    );
    let ps = m.swarm_ok(&["service", "ps", "--no-trunc", "web"]);
    assert!(ps.contains("Rejected") || ps.contains("rejected"), "{ps}");
    assert!(ps.contains("is containerd running"), "{ps}");
}

#[test]
fn restart_policy_replaces_failed_tasks_up_to_max_attempts_and_ps_shows_history() {
    let c = Cluster::formed(2, 25001, 1);
    let m = c.node(0);
    // sim/fail runs for 300 ms, then fails with exit code 1.
    m.create_service(&[
        "--name",
        "crash",
        "--restart-condition",
        "on-failure",
        "--restart-delay",
        "200ms",
        "--restart-max-attempts",
        "2",
        "sim/fail",
    ]);
    // The first task and two restarts fail; then the slot is left alone.
    wait_for(Duration::from_secs(60), || {
        let t = m.tasks("crash").unwrap();
        t.len() == 3 && t.iter().all(|t| t.state() == proto::TaskState::Failed)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            m.swarm(&["service", "ps", "--no-trunc", "crash"]).stdout
        )
    });
    std::thread::sleep(Duration::from_secs(2));
    let t = m.tasks("crash").unwrap();
    assert_eq!(t.len(), 3, "no restart beyond max attempts");
    assert!(t.iter().all(|t| t.slot == 1), "restarts stay in the slot");
    let exit = t[0]
        .status
        .as_ref()
        .unwrap()
        .container_status
        .as_ref()
        .map(|c| c.exit_code);
    assert_eq!(exit, Some(1));
    let ps = m.swarm_ok(&["service", "ps", "--no-trunc", "crash"]);
    assert_eq!(
        ps.lines().filter(|l| l.contains(r" \_ crash.1")).count(),
        2,
        "{ps}"
    );
    assert!(ps.contains("non-zero exit (1)"), "{ps}");
    let ls = m.swarm_ok(&["service", "ls"]);
    assert!(
        ls.lines().any(|l| l.contains("crash") && l.contains("0/1")),
        "{ls}"
    );

    // Condition none: a task that completes is not replaced.
    m.create_service(&[
        "--name",
        "once",
        "--restart-condition",
        "none",
        "sim/complete",
    ]);
    wait_for(Duration::from_secs(30), || {
        m.tasks("once")
            .unwrap()
            .iter()
            .any(|t| t.state() == proto::TaskState::Complete)
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(m.tasks("once").unwrap().len(), 1);
}

#[test]
fn a_frozen_leader_is_replaced_and_steps_down_without_duplicating_work() {
    let c = Cluster::formed(4, 25101, 3);
    c.node(0)
        .create_service(&["--name", "web", "--replicas", "4", "sim/app"]);
    wait_for(Duration::from_secs(60), || {
        running(&c.node(0).tasks("web").unwrap()).len() == 4
    })
    .unwrap();

    // node1 leads (it initialized the swarm). Freeze it: the others elect a new leader,
    // and the swarm keeps working through them.
    c.node(0).freeze(true);
    wait_for(Duration::from_secs(30), || {
        c.node(1).swarm(&["service", "scale", "-d", "web=6"]).ok()
    })
    .unwrap_or_else(|e| panic!("no new leader while node1 is frozen: {e}\n{}", c.logs()));
    wait_for(Duration::from_secs(60), || {
        running(&c.node(1).tasks("web").unwrap()).len() == 6
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));

    // Resumed, the old leader learns the new term, steps down and stops its orchestrators:
    // the service keeps exactly its 6 wanted tasks, one per slot.
    c.node(0).freeze(false);
    wait_for(Duration::from_secs(30), || {
        c.node(0).swarm(&["service", "ls"]).ok()
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let tasks = c.node(0).tasks("web").unwrap();
    let wanted: Vec<_> = tasks
        .iter()
        .filter(|t| t.desired() == proto::TaskState::Running)
        .collect();
    assert_eq!(
        wanted.len(),
        6,
        "{:#?}",
        c.node(0).swarm(&["service", "ps", "web"]).stdout
    );
    let slots: BTreeSet<u64> = wanted.iter().map(|t| t.slot).collect();
    assert_eq!(slots, (1..=6).collect::<BTreeSet<u64>>());
    assert_eq!(running(&tasks).len(), 6);
    let out = c.node(0).swarm_ok(&["node", "ls"]);
    assert_eq!(out.matches("Leader").count(), 1, "{out}");
    let leader_row = out.lines().find(|l| l.contains("Leader")).unwrap();
    assert!(
        !leader_row.contains("node1"),
        "the frozen manager cannot still lead: {out}"
    );
}
