//! Service discovery and load balancing for real, in the lab: names resolved by the agent's
//! DNS at 127.0.0.11 (reached through the socket hooks), connections to VIPs balanced by the
//! eBPF programs, from processes inside containers (whoami's client modes). Needs what
//! `cargo xtask test` installs (containerd, runc, docker-registry, dnsmasq …). One lab at a
//! time.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use tests::lab::testing::{create, test_lab as lab, wait_running, SERVED};
use tests::lab::Lab;
use tests::{hostname, task_addr, wait_for, AgentClient};

/// `whoami lookup NAME` inside the task: the addresses, sorted (empty when it fails).
fn lookup(lab: &Lab, from: &proto::Task, name: &str) -> Vec<String> {
    lab.task_exec(from, &["/whoami", "lookup", name])
        .map(|out| out.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

fn addrs(tasks: &[proto::Task], network: &str) -> Vec<String> {
    let mut v: Vec<String> = tasks.iter().filter_map(|t| task_addr(t, network)).collect();
    v.sort();
    v
}

/// The service's VIP on `network_id`, without prefix length.
fn vip(lab: &Lab, service: &str) -> String {
    let svc = lab
        .node(1)
        .services()
        .unwrap()
        .into_iter()
        .find(|s| s.spec.as_ref().is_some_and(|sp| sp.name == service))
        .unwrap();
    svc.endpoint
        .and_then(|e| e.virtual_ips.first().cloned())
        .map(|v| v.addr.split('/').next().unwrap().to_string())
        .unwrap_or_else(|| panic!("{service} has no VIP"))
}

/// The service `client`: one whoami task on appnet on node3 to act from (wait for it with
/// `running`).
fn create_client_on_node3(lab: &Lab, whoami: &str) {
    create(
        lab,
        &[
            "--name",
            "client",
            "--network",
            "appnet",
            "--constraint",
            "node.hostname==node3",
            whoami,
        ],
    );
}

/// The CLI conveniences scripts use, on the services of the test below: `--filter`,
/// `--format` Go templates (`{{.Name}}`, `{{json .}}`, `table`), `-q`, as Docker prints them.
fn cli_filters_and_formats(lab: &Lab, web: &[proto::Task]) {
    let m = lab.node(1);
    let web_id = m
        .services()
        .unwrap()
        .into_iter()
        .find(|s| s.spec.as_ref().is_some_and(|p| p.name == "web"))
        .map(|s| s.id)
        .unwrap();
    assert_eq!(
        m.swarm_ok(&["service", "ls", "-q", "--filter", "label=tier=web"]),
        format!("{}\n", &web_id[..12])
    );
    // Same key: any value; different keys: all.
    assert_eq!(
        m.swarm_ok(&[
            "service",
            "ls",
            "--filter",
            "name=web",
            "--filter",
            "name=rr",
            "--filter",
            "mode=replicated",
            "--format",
            "{{.Name}}"
        ]),
        "rr\nweb\n"
    );
    let table = m.swarm_ok(&[
        "service",
        "ls",
        "--filter",
        "label=tier",
        "--format",
        "table {{.Name}}\\t{{.Replicas}}",
    ]);
    assert_eq!(table, "NAME      REPLICAS\nweb       3/3\n");
    // `service ps --filter desired-state=running --format '{{.Name}} {{.Node}}'`.
    let mut want: Vec<String> = web
        .iter()
        .map(|t| format!("web.{} {}", t.slot, lab.node_of(t).unwrap().name()))
        .collect();
    want.sort();
    let out = m.swarm_ok(&[
        "service",
        "ps",
        "web",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Name}} {{.Node}}",
    ]);
    let mut got: Vec<&str> = out.lines().collect();
    got.sort();
    assert_eq!(got, want, "{out}");
    // `node ls --format '{{json .}}'`: Docker's node fields, one object a line.
    let out = m.swarm_ok(&["node", "ls", "--format", "{{json .}}"]);
    let nodes: Vec<serde_json::Value> = out.lines().map(tests::json).collect();
    assert_eq!(nodes.len(), 3, "{out}");
    let keys: Vec<&String> = nodes[0].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "Availability",
            "EngineVersion",
            "Hostname",
            "ID",
            "ManagerStatus",
            "Self",
            "Status",
            "TLSStatus"
        ],
        "{out}"
    );
    let me = nodes.iter().find(|n| n["Self"] == true).unwrap();
    assert_eq!(
        (&me["Hostname"], &me["ManagerStatus"]),
        (&"node1".into(), &"Leader".into())
    );
    assert!(
        nodes
            .iter()
            .all(|n| n["Status"] == "Ready" && n["TLSStatus"] == "Ready"),
        "{out}"
    );
    assert_eq!(
        m.swarm_ok(&["node", "ls", "-q", "--filter", "role=manager"]),
        format!("{}\n", me["ID"].as_str().unwrap())
    );
    assert_eq!(
        m.swarm_ok(&[
            "node",
            "ls",
            "--filter",
            "role=worker",
            "--filter",
            "name=node",
            "--format",
            "{{.Hostname}}"
        ]),
        "node2\nnode3\n"
    );
    assert_eq!(
        m.swarm_ok(&[
            "network",
            "ls",
            "--filter",
            "name=appnet",
            "--format",
            "{{.Name}} {{.Driver}} {{.Scope}}"
        ]),
        "appnet overlay swarm\n"
    );
    assert_eq!(
        m.swarm_ok(&[
            "service",
            "inspect",
            "--format",
            "{{.Spec.Name}} {{json .Spec.Labels}}",
            "web"
        ]),
        "web {\"tier\":\"web\"}\n"
    );
    // Bad filters and templates are refused with Docker's words, not a panic.
    let bad = m.swarm(&["node", "ls", "--filter", "colour=red"]);
    assert!(
        !bad.ok() && bad.stderr.contains("invalid filter 'colour'"),
        "{}",
        bad.stderr
    );
    let bad = m.swarm(&["service", "ls", "--format", "{{.Name"]);
    assert!(
        !bad.ok() && bad.stderr.contains("template parsing error"),
        "{}",
        bad.stderr
    );
}

#[test]
fn names_resolve_and_requests_spread_over_every_replica_from_a_node_without_one() {
    let (_g, lab) = lab(1, 2);
    let whoami = format!("{}/whoami:latest", lab.registry());
    let m = lab.node(1);
    m.swarm_ok(&["network", "create", "-d", "overlay", "appnet"]);
    m.swarm_ok(&["network", "create", "-d", "overlay", "othernet"]);
    create(
        &lab,
        &[
            "--name",
            "web",
            "--label",
            "tier=web",
            "--replicas",
            "3",
            "--network",
            "appnet",
            "--constraint",
            "node.hostname!=node3",
            &whoami,
        ],
    );
    create(
        &lab,
        &[
            "--name",
            "rr",
            "--replicas",
            "2",
            "--endpoint-mode",
            "dnsrr",
            "--network",
            "appnet",
            &whoami,
        ],
    );
    create(
        &lab,
        &["--name", "hidden", "--network", "othernet", &whoami],
    );
    create(
        &lab,
        &[
            "--name",
            "client",
            "--network",
            "name=appnet,alias=front-door",
            "--constraint",
            "node.hostname==node3",
            &whoami,
        ],
    );
    let web = wait_running(&lab, "web", 3);
    let rr = wait_running(&lab, "rr", 2);
    let hidden = wait_running(&lab, "hidden", 1);
    let client = wait_running(&lab, "client", 1).remove(0);
    assert_eq!(lab.node_of(&client).unwrap().name(), "node3");
    cli_filters_and_formats(&lab, &web);

    // `web` is its VIP, `tasks.web` every task address; dnsrr names are the task addresses.
    let web_vip = vip(&lab, "web");
    assert_eq!(
        lookup(&lab, &client, "web"),
        vec![web_vip.clone()],
        "{}",
        lab.logs()
    );
    assert_eq!(lookup(&lab, &client, "tasks.web"), addrs(&web, "appnet"));
    assert_eq!(lookup(&lab, &client, "rr"), addrs(&rr, "appnet"));
    // A task's own alias, and a task name.
    assert_eq!(
        lookup(&lab, &client, "front-door"),
        vec![vip(&lab, "client")]
    );
    let name = format!("web.{}.{}", web[0].slot, web[0].id);
    assert_eq!(
        lookup(&lab, &client, &name),
        vec![task_addr(&web[0], "appnet").unwrap()]
    );
    // A service on a network the client is not on neither resolves nor answers on its VIP.
    assert!(
        lookup(&lab, &client, "hidden").is_empty(),
        "hidden resolved"
    );
    let hidden_vip = vip(&lab, "hidden");
    assert!(
        lab.task_get(&client, &format!("http://{hidden_vip}/"))
            .is_err(),
        "hidden's VIP answered"
    );
    let _ = hidden;

    // 300 requests to http://web/ from node3 (no replica there): every replica gets between
    // half and twice its share.
    let out = lab
        .task_exec(
            &client,
            &["/whoami", "get", "http://web/hostname", "--count", "300"],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for l in out.lines() {
        *per.entry(l.trim().to_string()).or_default() += 1;
    }
    assert_eq!(per.values().sum::<usize>(), 300, "{per:?}");
    for t in &web {
        let n = per.get(&hostname(t)).copied().unwrap_or(0);
        assert!(
            (50..=200).contains(&n),
            "{} got {n} of 300: {per:?}",
            hostname(t)
        );
    }
    // The per-service and per-backend counters on node3's /metrics saw them.
    let metrics = lab.node(3).metrics().unwrap();
    let conns: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("swarm_service_connections_total") && l.contains("service=\"web\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(conns >= 300.0, "{metrics}");
    assert!(
        metrics
            .lines()
            .filter(|l| l.starts_with("swarm_service_backend_connections_total")
                && l.contains("service=\"web\""))
            .count()
            == 3,
        "{metrics}"
    );

    // A task reaches its own service (itself among the backends).
    let own = lab
        .task_exec(
            &web[0],
            &["/whoami", "get", "http://web/hostname", "--count", "6"],
        )
        .unwrap_or_else(|e| panic!("a task could not reach its own service: {e:#}"));
    assert_eq!(own.lines().count(), 6, "{own}");

    // dnsrr: each address the name gives is one of its tasks (the C library sorts the
    // addresses it is given, so a client that takes the first one always gets the same).
    let mut seen = std::collections::BTreeSet::new();
    for ip in lookup(&lab, &client, "rr") {
        seen.insert(
            lab.task_get(&client, &format!("http://{ip}/hostname"))
                .unwrap(),
        );
    }
    let want: std::collections::BTreeSet<String> = rr.iter().map(hostname).collect();
    assert_eq!(seen, want);
}

/// Request log lines of a task (whoami logs one per request) with their times.
fn request_times(lab: &Lab, task: &proto::Task) -> Vec<SystemTime> {
    let node = lab.node_of(task).unwrap();
    let log = node
        .data_root()
        .join("tasks")
        .join(&task.id)
        .join("container.log");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("GET /hostname"))
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            humantime::parse_rfc3339(v.get("time")?.as_str()?).ok()
        })
        .collect()
}

#[test]
fn scaling_down_and_up_under_load_fails_no_request_and_stopping_tasks_get_no_new_ones() {
    let (_g, lab) = lab(1, 2);
    let whoami = format!("{}/whoami:latest", lab.registry());
    let m = lab.node(1);
    m.swarm_ok(&["network", "create", "-d", "overlay", "appnet"]);
    create(
        &lab,
        &[
            "--name",
            "web",
            "--replicas",
            "3",
            "--network",
            "appnet",
            &whoami,
        ],
    );
    create_client_on_node3(&lab, &whoami);
    wait_running(&lab, "web", 3);
    let client = wait_running(&lab, "client", 1).remove(0);
    // The first request waits for node3's data path to list web's tasks (see
    // `task_get_once_served`).
    lab.task_get_once_served(&client, "http://web/hostname", SERVED)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));

    // A bounded loop of requests (~12 s) while the service goes 3 → 1 → 3.
    let lab_ref = &lab;
    let (out, stopped_at) = std::thread::scope(|s| {
        let load = s.spawn(move || {
            lab_ref.task_exec(
                &client,
                &[
                    "/whoami",
                    "get",
                    "http://web/hostname",
                    "--count",
                    "400",
                    "--interval-ms",
                    "25",
                ],
            )
        });
        std::thread::sleep(Duration::from_secs(2));
        let before: Vec<String> = wait_running(lab_ref, "web", 3)
            .iter()
            .map(|t| t.id.clone())
            .collect();
        m.swarm_ok(&["service", "scale", "web=1"]);
        let stopped_at = SystemTime::now();
        let one = wait_running(lab_ref, "web", 1);
        let removed: Vec<String> = before.into_iter().filter(|id| *id != one[0].id).collect();
        std::thread::sleep(Duration::from_secs(2));
        m.swarm_ok(&["service", "scale", "web=3"]);
        wait_running(lab_ref, "web", 3);
        (load.join().unwrap(), (stopped_at, removed))
    });
    let out = out.unwrap_or_else(|e| panic!("a request failed while scaling: {e:#}"));
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error")).collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(out.lines().count(), 400);

    // The removed tasks got no new connection once they started stopping: they get their
    // stop signal LB_DRAIN (1 s) after the scale, and by then node3's load balancer had left
    // them out.
    let (t_stop, removed) = stopped_at;
    let tasks = m.tasks("web").unwrap();
    for id in removed {
        let t = tasks.iter().find(|t| t.id == id).unwrap();
        let late: Vec<SystemTime> = request_times(&lab, t)
            .into_iter()
            .filter(|at| *at > t_stop + swarm_agent::containerd::run::LB_DRAIN)
            .collect();
        assert!(
            late.is_empty(),
            "{} served {} requests after it was stopped",
            t.id,
            late.len()
        );
    }
}

#[test]
fn udp_through_a_vip_follows_a_live_backend_and_a_task_may_bind_port_53() {
    let (_g, lab) = lab(1, 2);
    let whoami = format!("{}/whoami:latest", lab.registry());
    let m = lab.node(1);
    m.swarm_ok(&["network", "create", "-d", "overlay", "appnet"]);
    create(
        &lab,
        &[
            "--name",
            "echo",
            "--replicas",
            "2",
            "--network",
            "appnet",
            "--constraint",
            "node.hostname!=node3",
            &whoami,
        ],
    );
    create_client_on_node3(&lab, &whoami);
    // A task that binds port 53 itself (TCP and UDP) starts, serves, and resolves names.
    create(
        &lab,
        &[
            "--name",
            "dns53",
            "--network",
            "appnet",
            &whoami,
            "--port",
            "53",
        ],
    );
    let echo = wait_running(&lab, "echo", 2);
    let client = wait_running(&lab, "client", 1).remove(0);
    let dns53 = wait_running(&lab, "dns53", 1).remove(0);
    assert_eq!(
        lab.task_get_once_served(&client, "http://dns53:53/hostname", SERVED)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs())),
        hostname(&dns53)
    );
    assert_eq!(lookup(&lab, &dns53, "echo"), vec![vip(&lab, "echo")]);

    // One connected UDP socket to echo's VIP, a datagram every 200 ms for ~12 s; the backend
    // that answers first is killed on its node.
    let lab_ref = &lab;
    let client_ref = &client;
    let answers = std::thread::scope(|s| {
        let load = s.spawn(move || {
            lab_ref.task_exec(
                client_ref,
                &[
                    "/whoami",
                    "udp",
                    "echo:80",
                    "hi",
                    "--count",
                    "60",
                    "--interval-ms",
                    "200",
                ],
            )
        });
        // Find who answers now, then kill it.
        let first = lab_ref
            .task_exec(client_ref, &["/whoami", "udp", "echo:80", "probe"])
            .unwrap();
        let victim = echo
            .iter()
            .find(|t| first.contains(&hostname(t)))
            .unwrap_or_else(|| panic!("no echo task answered: {first}"));
        std::thread::sleep(Duration::from_secs(2));
        let node = lab_ref.node_of(victim).unwrap();
        node.ctr(&["task", "kill", "-s", "SIGKILL", &victim.id])
            .unwrap();
        (load.join().unwrap().unwrap(), victim.clone())
    });
    let (out, victim) = answers;
    let lines: Vec<&str> = out.lines().collect();
    // A live backend: the other task, or the one that replaced the killed task (it may get
    // the freed address back, and then the flow's backend address simply lives again).
    let live: Vec<String> = wait_running(&lab, "echo", 2).iter().map(hostname).collect();
    let last: Vec<&&str> = lines.iter().rev().take(10).collect();
    assert!(
        last.iter()
            .all(|l| !l.contains(&hostname(&victim)) && live.iter().any(|h| l.contains(h))),
        "the connected socket did not end up on a live backend {live:?} (killed {}): {lines:?}",
        hostname(&victim)
    );
    let timeouts = lines.iter().filter(|l| **l == "timeout").count();
    assert!(timeouts <= 10, "{timeouts} datagrams lost: {lines:?}");
}

#[test]
fn unknown_names_are_forwarded_to_the_nodes_resolvers() {
    let (_g, lab) = lab(1, 1);
    let whoami = format!("{}/whoami:latest", lab.registry());
    let m = lab.node(1);
    m.swarm_ok(&["network", "create", "-d", "overlay", "appnet"]);
    create(&lab, &["--name", "client", "--network", "appnet", &whoami]);
    let client = wait_running(&lab, "client", 1).remove(0);
    // The lab's upstream (dnsmasq in the underlay) holds the zone example.test.
    use tests::lab::{UPSTREAM_TEST_ADDR, UPSTREAM_TEST_NAME};
    wait_for(Duration::from_secs(20), || {
        lookup(&lab, &client, UPSTREAM_TEST_NAME) == vec![UPSTREAM_TEST_ADDR.to_string()]
    })
    .unwrap_or_else(|_| {
        panic!(
            "not forwarded: {:?}\n{}",
            lookup(&lab, &client, UPSTREAM_TEST_NAME),
            lab.logs()
        )
    });
    // A name the upstream does not have does not resolve.
    assert!(lookup(&lab, &client, "nothing.example.test").is_empty());
}
