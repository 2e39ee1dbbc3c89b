//! The agent as a container, for real: a lab whose every node runs `swarm-agent` as the agent
//! image's container in the node's containerd (`ctr run`, privileged, the node's network, the
//! host's PID namespace), and the upgrade without a gap: every node's agent container replaced,
//! one by one, by one of a newer image while a client sends requests through a service VIP
//! (from a task) and through a published port (from outside the nodes). Needs root, containerd,
//! runc, docker-registry, busybox-static, binutils and the static whoami binary, like the other
//! lab tests (`cargo xtask test` installs and builds them); fails, never skips, without them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tests::lab::testing::{create, wait_running, LONG};
use tests::lab::{Lab, LabConfig, LabNode, AGENT_NAMESPACE, LAB_AGENT_TAG};
use tests::AgentClient;

/// The service's VIP on the network `network`.
fn vip(lab: &Lab, service: &str, network: &str) -> String {
    let m = lab.node(1);
    let net = m
        .networks()
        .unwrap()
        .into_iter()
        .find(|n| n.spec.as_ref().is_some_and(|s| s.name == network))
        .unwrap_or_else(|| panic!("no network {network}"));
    let svc = m
        .services()
        .unwrap()
        .into_iter()
        .find(|s| s.spec.as_ref().is_some_and(|sp| sp.name == service))
        .unwrap_or_else(|| panic!("no service {service}"));
    svc.endpoint
        .and_then(|e| e.virtual_ips.into_iter().find(|v| v.network_id == net.id))
        .map(|v| v.addr.split('/').next().unwrap_or_default().to_string())
        .unwrap_or_else(|| panic!("{service} has no VIP on {network}"))
}

/// The ids of the task containers on every node (containerd namespace `swarm`).
fn task_containers(lab: &Lab) -> BTreeMap<String, Vec<String>> {
    lab.nodes()
        .iter()
        .map(|n| {
            let mut ids = n
                .containerd_containers()
                .unwrap_or_else(|e| panic!("{e:#}"));
            ids.sort();
            (n.name().to_string(), ids)
        })
        .collect()
}

/// The pid of the node's agent (the container's process, `ctr run --pid-file`).
fn agent_pid(node: &LabNode) -> String {
    let pidfile = node.dir().join("agent.pid");
    std::fs::read_to_string(&pidfile)
        .unwrap_or_else(|e| panic!("{}: {e}", pidfile.display()))
        .trim()
        .to_string()
}

/// The node's agent process: its cgroup (from /proc) must be the agent container's.
fn agent_cgroup_of(node: &LabNode) -> String {
    std::fs::read_to_string(format!("/proc/{}/cgroup", agent_pid(node))).unwrap_or_default()
}

/// The node's agent runs as the container of `image`, its process in the container's cgroup.
fn assert_agent_container(n: &LabNode, image: &str) {
    assert_eq!(n.running_agent_image().unwrap(), image, "{}", n.name());
    let cg = agent_cgroup_of(n);
    assert!(
        cg.contains(&format!("/{}", n.agent_cgroup())),
        "{}'s agent is not in its container's cgroup: {cg}",
        n.name()
    );
    assert!(n.agent_running(), "{}", n.agent_log_tail());
}

/// Requests through a published port from outside every node, round robin over the nodes,
/// one at a time, until `stop` (or `max`): (answers, failures with the node asked).
fn publish_loop(lab: &Lab, port: u16, stop: Arc<AtomicBool>) -> (usize, Vec<String>) {
    let addrs: Vec<String> = lab
        .nodes()
        .iter()
        .map(|n| format!("{}:{port}", n.ip()))
        .collect();
    lab.in_underlay(move || {
        let (mut ok, mut failed) = (0, Vec::new());
        let end = Instant::now() + Duration::from_secs(240);
        for i in 0..20_000 {
            if stop.load(Ordering::SeqCst) || Instant::now() > end {
                break;
            }
            let addr = &addrs[i % addrs.len()];
            match tests::http_get(addr, "/hostname") {
                Ok(_) => ok += 1,
                Err(e) => failed.push(format!("{addr}: {e:#}")),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok((ok, failed))
    })
    .unwrap_or_else(|e| panic!("the published-port client did not run: {e:#}"))
}

#[test]
fn every_agent_container_replaced_by_a_newer_image_keeps_tasks_and_fails_no_request() {
    let mut cfg = LabConfig::for_tests(1, 2);
    cfg.agent_container = true;
    let lab = Lab::up(cfg).unwrap_or_else(|e| panic!("{e:#}"));
    let first_image = format!(
        "{}/{}:{LAB_AGENT_TAG}",
        lab.registry(),
        tests::agent_image::REPOSITORY
    );

    // Every agent is the container of the lab's image, in a namespace and cgroup of its own:
    // not among the tasks' containers.
    for n in lab.nodes() {
        assert_agent_container(n, &first_image);
    }

    let whoami = format!("{}/whoami:latest", lab.registry());
    let m = lab.node(1);
    m.swarm_ok(&["network", "create", "-d", "overlay", "upnet"]);
    create(
        &lab,
        &[
            "--name",
            "web",
            "--replicas",
            "3",
            "--network",
            "upnet",
            "-p",
            "8080:80",
            &whoami,
        ],
    );
    create(
        &lab,
        &[
            "--name",
            "client",
            "--network",
            "upnet",
            "--constraint",
            "node.hostname==node3",
            &whoami,
        ],
    );
    let web = wait_running(&lab, "web", 3);
    let client = wait_running(&lab, "client", 1).remove(0);
    let web_vip = vip(&lab, "web", "upnet");
    // Both paths answer before the upgrade starts.
    tests::wait_for(LONG, || {
        lab.task_get(&client, &format!("http://{web_vip}/hostname"))
            .is_ok()
    })
    .unwrap_or_else(|e| panic!("the VIP never answered: {e:#}\n{}", lab.logs()));
    for n in lab.nodes() {
        let addr = format!("{}:8080", n.ip());
        tests::wait_for(LONG, || {
            let a = addr.clone();
            lab.in_underlay(move || tests::http_get(&a, "/hostname"))
                .is_ok()
        })
        .unwrap_or_else(|e| panic!("{addr} never answered: {e:#}\n{}", lab.logs()));
    }
    let before = task_containers(&lab);
    let agents_before: Vec<String> = lab.nodes().iter().map(agent_pid).collect();
    assert!(
        before
            .values()
            .flatten()
            .all(|id| !id.starts_with("swarm-agent")),
        "the agent's container is among the tasks': {before:?}"
    );

    // The newer image: the same binaries as another version (another digest).
    let next = lab
        .push_agent_image("next", "next")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let next = next.split('@').next().unwrap_or_default().to_string();
    assert_ne!(next, first_image);

    let stop = Arc::new(AtomicBool::new(false));
    let vip_url = format!("http://{web_vip}/hostname");
    let lab_ref = &lab;
    let (published, vip_out, replaced_at, vip_done_at) = std::thread::scope(|s| {
        let flag = stop.clone();
        let publisher = s.spawn(move || publish_loop(lab_ref, 8080, flag));
        // From the client task: 2500 sequential requests through the VIP, 20 ms apart (about a
        // minute), each line a hostname or `error: …`.
        let vip_client = s.spawn(|| {
            let out = lab_ref.task_exec(
                &client,
                &[
                    "/whoami",
                    "get",
                    &vip_url,
                    "--count",
                    "2500",
                    "--interval-ms",
                    "20",
                ],
            );
            (out, Instant::now())
        });
        let upgrade = || {
            std::thread::sleep(Duration::from_secs(2));
            for n in lab_ref.nodes() {
                n.replace_agent(&next)
                    .unwrap_or_else(|e| panic!("{e:#}\n{}", lab_ref.logs()));
                lab_ref
                    .wait_ready(LONG)
                    .unwrap_or_else(|e| panic!("{e:#}\n{}", lab_ref.logs()));
                std::thread::sleep(Duration::from_secs(2));
            }
            Instant::now()
        };
        let replaced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(upgrade));
        let (vip_out, vip_done) = vip_client.join().expect("the VIP client thread panicked");
        stop.store(true, Ordering::SeqCst);
        let published = publisher
            .join()
            .expect("the published-port thread panicked");
        match replaced {
            Ok(at) => (published, vip_out, at, vip_done),
            Err(p) => std::panic::resume_unwind(p),
        }
    });

    // Zero failed requests on both paths (no retry hides one), and the loops covered it all.
    let (published_ok, published_failed) = published;
    assert!(
        published_failed.is_empty(),
        "{} of {} requests through the published port failed: {:?}\n{}",
        published_failed.len(),
        published_failed.len() + published_ok,
        published_failed.iter().take(20).collect::<Vec<_>>(),
        lab.logs()
    );
    assert!(
        published_ok >= 300,
        "only {published_ok} published-port requests ran"
    );
    let vip_out = vip_out.unwrap_or_else(|e| {
        panic!(
            "requests through the VIP failed (whoami get exits 1 on any failure): {e:#}\n{}",
            lab.logs()
        )
    });
    let answers: Vec<&str> = vip_out.lines().filter(|l| !l.trim().is_empty()).collect();
    let errors: Vec<&&str> = answers.iter().filter(|l| l.contains("error")).collect();
    assert!(errors.is_empty(), "VIP requests failed: {errors:?}");
    assert_eq!(answers.len(), 2500, "every VIP request answered");
    let web_hosts: std::collections::BTreeSet<String> = web.iter().map(tests::hostname).collect();
    assert!(
        answers.iter().all(|a| web_hosts.contains(a.trim())),
        "answers from tasks other than web's {web_hosts:?}"
    );
    assert!(
        vip_done_at > replaced_at,
        "the VIP client finished before the last agent was replaced: it did not cover the upgrade"
    );

    // Every agent runs the newer image, as a new process in its container's cgroup; the tasks
    // are the same containers.
    for (n, old_pid) in lab.nodes().iter().zip(&agents_before) {
        assert_ne!(
            &agent_pid(n),
            old_pid,
            "{}'s agent was not replaced",
            n.name()
        );
        assert_agent_container(n, &next);
    }
    assert_eq!(task_containers(&lab), before, "the task containers changed");
    let web_after = wait_running(&lab, "web", 3);
    let ids = |t: &[proto::Task]| {
        let mut v: Vec<String> = t.iter().map(|t| t.id.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&web_after), ids(&web), "web's tasks changed");
    // The agent containers stay out of the tasks' namespace, in their own.
    for n in lab.nodes() {
        let listed = n
            .exec(&["ctr", "-n", AGENT_NAMESPACE, "containers", "ls", "-q"])
            .stdout;
        assert!(
            listed.lines().any(|l| l.trim() == n.agent_container_id()),
            "{}: {listed}",
            n.name()
        );
    }
}
