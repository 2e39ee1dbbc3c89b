//! The simulated-agent harness at CI size: 3 real managers (`test-agent` processes) and 200
//! simulated agents in this process (`tests::sim_agents`), each a real agent session over
//! gRPC/mTLS. The cluster forms, services converge with every task RUNNING exactly once (as
//! the managers see it and as the executors run it), and after the leader is SIGKILLed the
//! new leader keeps every task running once and converges a new service.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use proto::{Task, TaskState};
use tests::sim_agents::{duplicates, ready_count, SimAgents};
use tests::{wait_for, AgentClient, Cluster};

const SIM_NODES: usize = 200;

/// Per service name: how many tasks must run (replicas, or one per simulated node).
fn expected(c: &Cluster, via: usize) -> anyhow::Result<BTreeMap<String, (String, usize)>> {
    Ok(c.node(via)
        .services()?
        .into_iter()
        .map(|s| {
            let spec = s.spec.clone().unwrap_or_default();
            let want = match &spec.mode {
                Some(proto::service_spec::Mode::Replicated(r)) => r.replicas as usize,
                _ => SIM_NODES,
            };
            (spec.name, (s.id, want))
        })
        .collect())
}

/// Every service's tasks, read through node `via`.
fn all_tasks(c: &Cluster, via: usize) -> anyhow::Result<BTreeMap<String, Vec<Task>>> {
    let mut out = BTreeMap::new();
    for (name, (id, _)) in expected(c, via)? {
        out.insert(name, c.node(via).tasks(&id)?);
    }
    Ok(out)
}

/// Why the cluster, read through node `via`, and the executors do not agree that every
/// task runs exactly once; None when they do.
fn not_converged(c: &Cluster, via: usize, sim: &SimAgents) -> Option<String> {
    // A read refused for a moment (an election, a slow peer) is retried by the caller.
    let want = match expected(c, via) {
        Ok(w) => w,
        Err(e) => return Some(format!("listing services: {e:#}")),
    };
    let tasks = match all_tasks(c, via) {
        Ok(t) => t,
        Err(e) => return Some(format!("listing tasks: {e:#}")),
    };
    let mut managers_running = BTreeSet::new();
    for (name, (_, count)) in &want {
        let running: Vec<&Task> = tasks[name]
            .iter()
            .filter(|t| t.desired() == TaskState::Running && t.state() == TaskState::Running)
            .collect();
        if running.len() != *count {
            return Some(format!("{name}: {} of {count} running", running.len()));
        }
        managers_running.extend(running.iter().map(|t| t.id.clone()));
    }
    let executors = sim.running().snapshot();
    let dups = duplicates(&executors);
    if !dups.is_empty() {
        return Some(format!("executors run duplicates: {dups:?}"));
    }
    let executors_running: BTreeSet<String> = executors.iter().map(|t| t.task_id.clone()).collect();
    if executors_running != managers_running {
        let extra: Vec<_> = executors_running.difference(&managers_running).collect();
        let missing: Vec<_> = managers_running.difference(&executors_running).collect();
        return Some(format!(
            "executors and managers disagree: {} run that the managers do not show running ({:?}), {} shown running that no executor runs ({:?})",
            extra.len(),
            extra.iter().take(5).collect::<Vec<_>>(),
            missing.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        ));
    }
    None
}

fn wait_converged(c: &Cluster, via: usize, sim: &SimAgents, timeout: Duration, what: &str) {
    let mut why = None;
    let r = wait_for(timeout, || {
        why = not_converged(c, via, sim);
        why.is_none()
    });
    if r.is_err() {
        panic!(
            "{what}: not converged after {timeout:?}: {}\n{}",
            why.unwrap_or_default(),
            c.logs()
        );
    }
}

/// Waits until every simulated node is Ready, read through node `via`.
fn wait_sim_ready(c: &Cluster, via: usize, ids: &BTreeSet<String>, timeout: Duration) {
    let mut ready = 0;
    let r = wait_for(timeout, || {
        ready = c
            .node(via)
            .nodes()
            .map_or(0, |nodes| ready_count(&nodes, ids));
        ready == ids.len()
    });
    if r.is_err() {
        panic!(
            "{ready} of {} simulated nodes Ready after {timeout:?}\n{}",
            ids.len(),
            c.logs()
        );
    }
}

/// The index of the manager `node ls` through `via` shows as Leader.
fn leader(c: &Cluster, via: usize) -> Option<usize> {
    let out = c.node(via).swarm(&["node", "ls"]);
    let row = out.stdout.lines().find(|l| l.contains("Leader"))?;
    (0..3).find(|i| row.contains(&format!("node{} ", i + 1)))
}

#[test]
fn two_hundred_simulated_agents_converge_and_survive_a_leader_kill() {
    let started = Instant::now();
    let c = Cluster::formed(3, 29101, 3);
    let token = c.token(0, "worker");
    let mut sim = SimAgents::new(&c.root.join("sim"), 2).unwrap();
    let joined = AtomicUsize::new(0);
    sim.join(SIM_NODES, &c.node(0).addr(), &token, 16, &joined)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let ids: BTreeSet<String> = sim.node_ids().into_iter().collect();
    assert_eq!(
        ids.len(),
        SIM_NODES,
        "every simulated node has an id of its own"
    );
    wait_sim_ready(&c, 0, &ids, Duration::from_secs(60));
    // Each simulated node is known by its own hostname and address.
    let nodes = c.node(0).nodes().unwrap();
    let sim_nodes: Vec<_> = nodes
        .iter()
        .filter(|n| ids.contains(&n.id))
        .map(|n| {
            (
                n.description.as_ref().unwrap().hostname.clone(),
                n.status.as_ref().unwrap().addr.clone(),
            )
        })
        .collect();
    assert_eq!(sim_nodes.len(), SIM_NODES);
    let hostnames: BTreeSet<_> = sim_nodes.iter().map(|(h, _)| h).collect();
    let addrs: BTreeSet<_> = sim_nodes.iter().map(|(_, a)| a).collect();
    assert_eq!(hostnames.len(), SIM_NODES, "{sim_nodes:?}");
    assert_eq!(addrs.len(), SIM_NODES, "{sim_nodes:?}");
    assert!(addrs.iter().all(|a| a.starts_with("127.1.")), "{addrs:?}");
    eprintln!("{SIM_NODES} nodes Ready after {:?}", started.elapsed());

    // Tasks only on the simulated nodes, whose executors the test sees.
    let m = c.node(0);
    let workers = ["--constraint", "node.role==worker"];
    m.swarm_ok(&["network", "create", "-d", "overlay", "front"]);
    m.create_service(
        &[
            &["--name", "web", "--replicas", "300"],
            &workers[..],
            &["sim/app"],
        ]
        .concat(),
    );
    m.create_service(
        &[
            &["--name", "mon", "--mode", "global"],
            &workers[..],
            &["sim/agent"],
        ]
        .concat(),
    );
    m.create_service(
        &[
            &["--name", "api", "--replicas", "100", "--network", "front"],
            &workers[..],
            &["sim/api"],
        ]
        .concat(),
    );
    let t0 = Instant::now();
    wait_converged(&c, 0, &sim, Duration::from_secs(60), "first services");
    eprintln!("600 tasks running after {:?}", t0.elapsed());

    // The overlay service has a VIP on `front`, and the nodes running its tasks learned it
    // from the network state stream.
    let api = m
        .services()
        .unwrap()
        .into_iter()
        .find(|s| s.spec.as_ref().is_some_and(|sp| sp.name == "api"))
        .unwrap();
    let vips = api
        .endpoint
        .as_ref()
        .map(|e| e.virtual_ips.clone())
        .unwrap_or_default();
    assert_eq!(vips.len(), 1, "one VIP on front: {vips:?}");
    let api_nodes: BTreeSet<String> = sim
        .running()
        .snapshot()
        .into_iter()
        .filter(|t| t.service_id == api.id)
        .map(|t| t.node_id)
        .collect();
    wait_for(Duration::from_secs(20), || {
        sim.nodes
            .iter()
            .filter(|n| api_nodes.contains(&n.node_id))
            .all(|n| {
                let v = n.agent.network_view().current();
                v.services
                    .get(&api.id)
                    .is_some_and(|s| s.virtual_ips.iter().any(|ip| ip.addr == vips[0].addr))
            })
    })
    .unwrap_or_else(|e| panic!("the nodes running api tasks do not see its VIP: {e}"));
    let bytes = sim.network_state_bytes();
    assert!(
        sim.nodes
            .iter()
            .zip(&bytes)
            .all(|(n, b)| !api_nodes.contains(&n.node_id) || *b > 0),
        "nodes with tasks on front received network state"
    );

    // SIGKILL the leader; the two others elect one, and nothing runs twice or stops.
    let before: BTreeSet<String> = sim
        .running()
        .snapshot()
        .into_iter()
        .map(|t| t.task_id)
        .collect();
    assert_eq!(before.len(), 600);
    let old = leader(&c, 0).expect("a leader");
    let mut c = c;
    c.nodes[old].kill();
    let via = (old + 1) % 3;
    wait_for(Duration::from_secs(30), || {
        leader(&c, via).is_some_and(|l| l != old)
    })
    .unwrap_or_else(|e| panic!("no new leader after the kill: {e}\n{}", c.logs()));
    let t1 = Instant::now();
    // The simulated nodes' sessions move to the new leader; every task still runs once.
    wait_sim_ready(&c, via, &ids, Duration::from_secs(30));
    wait_converged(
        &c,
        via,
        &sim,
        Duration::from_secs(30),
        "after the leader kill",
    );
    eprintln!("settled {:?} after the new leader", t1.elapsed());
    // Nothing was restarted: the executors run the very tasks they ran before the kill.
    let after: BTreeSet<String> = sim
        .running()
        .snapshot()
        .into_iter()
        .map(|t| t.task_id)
        .collect();
    assert_eq!(after, before, "the leader kill replaced no task");
    c.node(via).create_service(
        &[
            &["--name", "late", "--replicas", "200"],
            &workers[..],
            &["sim/late"],
        ]
        .concat(),
    );
    wait_converged(&c, via, &sim, Duration::from_secs(30), "the new service");
    assert_eq!(expected(&c, via).unwrap()["late"].1, 200);
    assert_eq!(sim.running().len(), 800);
    eprintln!("whole test {:?}", started.elapsed());
}
