//! One fault run: a cluster of three managers and two workers on a [`FaultNet`], a
//! replicated service on the workers, clients writing and reading through every manager,
//! the seeded schedule of faults applied and healed; then the checks of [`Report::passed`]:
//! the history linearizable (and every acknowledged write read back through every manager),
//! the copies the executors ran within their bounds, the store and the executors agreeing on
//! the service's tasks once the faults healed (`agreement`), and a write acknowledged soon
//! after every heal and no fault stopping every write longer than its bound ([`liveness`]).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::history::{check, Op, Record, Ret, Verdict};
use super::liveness;
use super::net::{FaultNet, Mechanism};
use super::replicas::{count, stretches, Sample, Stretches};
use super::schedule::{schedule, Abilities, Fault, Step};
use super::workload::{Workload, COUNTER, OP_TIMEOUT};
use crate::client::AgentClient;
use crate::helpers::poll;
use crate::loopback::Cluster;
use crate::sim_executor::running_tasks;

pub const MANAGERS: usize = 3;
pub const WORKERS: usize = 2;
/// Copies of the watched service.
pub const REPLICAS: usize = 4;
/// The dispatcher's heartbeat period of the cluster (`swarm init --dispatcher-heartbeat`):
/// a node is DOWN after three missed periods.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Client threads per manager.
const CLIENTS_PER_MANAGER: usize = 2;
/// Between two samples of the executors' running state.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The manager port inside the namespaces (private to them, so any port).
const PORT: u16 = 4242;

/// The grace period: a node missing this long is DOWN (three periods), under a leader
/// elected meanwhile twice as long; the faults elect leaders, so the longer one.
pub fn grace() -> Duration {
    use swarm_manager::dispatcher::{ELECTION_GRACE_FACTOR, MISSED_HEARTBEATS};
    HEARTBEAT * MISSED_HEARTBEATS * ELECTION_GRACE_FACTOR
}

/// How long a service may run more copies than asked: the grace period (a node that was
/// cut off is DOWN only then, and until then its session may still be the one it had), plus
/// the time a node that comes back takes to notice its dead session and open a new one
/// (HTTP/2 keepalive 5 s + its 5 s timeout + a 3 s connect timeout), plus margin for a
/// loaded machine.
pub fn over_bound() -> Duration {
    grace() + Duration::from_secs(13) + Duration::from_secs(10)
}

/// How long a service may run fewer copies than asked: the grace period, then the time to
/// reschedule (the node monitor's pass, the orchestrator, the scheduler, the agent's
/// assignment: each under a second here), plus margin for a loaded machine.
pub fn under_bound() -> Duration {
    grace() + Duration::from_secs(3) + Duration::from_secs(10)
}

/// What one run did and found.
pub struct Report {
    pub seed: u64,
    pub faults: Vec<String>,
    /// How latency and loss were added (tc netem, or NFQUEUE where the kernel has no
    /// `sch_netem`), or why they were left out of the schedule.
    pub netem: Result<Mechanism, String>,
    /// How many of the faults were latency and loss.
    pub netem_steps: usize,
    pub verdict: Verdict,
    pub stretches: Stretches,
    pub samples: usize,
    /// After each heal, how long until a write was acknowledged again (`None`: not before the
    /// next fault).
    pub recoveries: Vec<Option<Duration>>,
    /// During each fault, the longest stretch with no write acknowledged.
    pub stalls: Vec<Duration>,
    /// Each fault's bound of that stretch ([`liveness::stall_bound`]; None: no bound).
    pub stall_bounds: Vec<Option<Duration>>,
    /// Once the faults healed: how long until the store and the executors agreed on the
    /// service's tasks, or what still differed at [`agree_bound`].
    pub agreement: Result<Duration, String>,
    pub logs: String,
}

impl Report {
    /// Whether the run found nothing wrong.
    pub fn passed(&self) -> bool {
        self.verdict.passed()
            && self.stretches.longest_over <= over_bound()
            && self.stretches.longest_under <= under_bound()
            && self.agreement.is_ok()
            && liveness::within_bound(&self.recoveries)
            && liveness::stalls_over_bound(&self.stalls, &self.stall_bounds).is_empty()
    }

    /// The summary line of the run.
    pub fn summary(&self) -> String {
        let latency = match &self.netem {
            Ok(by) => format!(
                "; latency and loss in {} of the faults, by {by}",
                self.netem_steps
            ),
            Err(why) => format!(" [latency and loss left out: {why}]"),
        };
        format!(
            "seed {}: {} faults, {} operations on {} services ({} completed, {} indeterminate), \
             linearizable: {}, not checked: {}; copies of the service (asked {REPLICAS}): longest over {:.1?} (bound {:?}), \
             longest under {:.1?} (bound {:?}), {} samples; store and executors agreed {}; \
             writes acknowledged again after each heal within {} (bound {:?}); \
             longest stretch without an acknowledged write while a fault held: {}{latency}",
            self.seed,
            self.faults.len(),
            self.verdict.ops,
            self.verdict.keys,
            self.verdict.ok,
            self.verdict.indeterminate,
            if self.verdict.linearizable() { "yes" } else { "NO" },
            self.verdict.unchecked_summary(),
            self.stretches.longest_over,
            over_bound(),
            self.stretches.longest_under,
            under_bound(),
            self.samples,
            match &self.agreement {
                Ok(after) => format!("{after:.1?} after healing (bound {:?})", agree_bound()),
                Err(_) => format!("NOT within {:?}", agree_bound()),
            },
            match self.recoveries.iter().try_fold(Duration::ZERO, |m, r| r.map(|d| m.max(d))) {
                Some(worst) => format!("{worst:.1?} at worst"),
                None => "NOT after every heal".to_string(),
            },
            liveness::BOUND,
            match self
                .stalls
                .iter()
                .enumerate()
                .max_by_key(|(_, d)| **d)
            {
                Some((i, d)) => match self.stall_bounds.get(i).copied().flatten() {
                    Some(b) => format!("{d:.1?} (fault {}, bound {b:?})", i + 1),
                    None => format!(
                        "{d:.1?} (fault {}, no bound: latency near the heartbeat on a manager)",
                        i + 1
                    ),
                },
                None => "no fault".to_string(),
            },
        )
    }

    /// The faults, each with the longest stretch without an acknowledged write while it held.
    pub fn faults_with_stalls(&self) -> String {
        let mut s = String::from(
            "faults (and the longest stretch without an acknowledged write in each):\n",
        );
        for (i, f) in self.faults.iter().enumerate() {
            let bound = match self.stall_bounds.get(i) {
                Some(Some(b)) => format!(" (bound {b:?})"),
                Some(None) => " (no bound: latency near the heartbeat on a manager)".into(),
                None => String::new(),
            };
            match self.stalls.get(i) {
                Some(d) => s.push_str(&format!("  {f}: {d:.1?}{bound}\n")),
                None => s.push_str(&format!("  {f}\n")),
            }
        }
        s
    }

    /// Everything a failing run needs to be understood: the summary, the violations with
    /// their histories, and the nodes' logs.
    pub fn details(&self) -> String {
        let mut s = self.summary();
        s.push('\n');
        s.push_str(&self.faults_with_stalls());
        if let Err(differ) = &self.agreement {
            s.push_str(&format!(
                "the store and the executors still disagreed {:?} after the faults healed: {differ}\n",
                agree_bound()
            ));
        }
        if !liveness::within_bound(&self.recoveries) {
            s.push_str(
                "writes acknowledged again after each heal (a dash: none before the next fault):",
            );
            for r in &self.recoveries {
                match r {
                    Some(d) => s.push_str(&format!(" {d:.1?}")),
                    None => s.push_str(" -"),
                }
            }
            s.push('\n');
        }
        for (i, stall, bound) in liveness::stalls_over_bound(&self.stalls, &self.stall_bounds) {
            s.push_str(&format!(
                "no write was acknowledged for {stall:.1?} while fault {} held ({}), above its bound {bound:?}\n",
                i + 1,
                self.faults.get(i).map_or("?", String::as_str)
            ));
        }
        if self.verdict.too_much_unchecked() {
            s.push_str(&format!(
                "more than {}% of the operations were not checked (the run fails): {}\n",
                super::history::MAX_UNCHECKED_PERCENT,
                self.verdict.unchecked_summary()
            ));
        }
        for (key, recs) in &self.verdict.violations {
            s.push_str(&format!("no linearization of {key}:\n"));
            let t0 = recs.iter().map(|r| r.invoked).min();
            for r in recs {
                let at = |t: Instant| t0.map(|t0| t - t0).unwrap_or_default();
                s.push_str(&format!(
                    "  p{} via {}: {:?} at {:.3?} -> {}\n",
                    r.process,
                    r.via,
                    r.op,
                    at(r.invoked),
                    match &r.completed {
                        Some((t, ret)) => format!("{ret:?} at {:.3?}", at(*t)),
                        None => "indeterminate".into(),
                    }
                ));
            }
        }
        s.push_str(&self.logs);
        s
    }
}

/// How long after the faults healed the store and the executors may still disagree on the
/// service's tasks: the longer of the two bounds above (a node that comes back shuts its
/// old copies down and reports it; a replacement starts and reports RUNNING).
pub fn agree_bound() -> Duration {
    over_bound().max(under_bound())
}

/// Once the faults healed, the store and the executors must come to agree on the service:
/// every copy an executor runs is a task the store has RUNNING, every task the store has
/// RUNNING runs on an executor, and there are as many as asked. A status report the
/// managers acknowledged but never recorded (a task running for good while the store says
/// ASSIGNED) fails here, though it leaves the copies' count right. Returns how long that
/// took, or what still differed at [`agree_bound`].
fn agreement(c: &Cluster, roots: &[PathBuf], svc: &str) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let on_nodes: BTreeSet<String> = roots
            .iter()
            .flat_map(|r| running_tasks(r))
            .filter(|(_, s)| s == svc)
            .map(|(t, _)| t)
            .collect();
        let differ = match c.node(0).tasks(svc) {
            Ok(tasks) => {
                let state = |t: &proto::Task| t.status.as_ref().map_or(0, |s| s.state);
                let in_store: BTreeSet<String> = tasks
                    .iter()
                    .filter(|t| state(t) == proto::TaskState::Running as i32)
                    .map(|t| t.id.clone())
                    .collect();
                if on_nodes == in_store && on_nodes.len() == REPLICAS {
                    return Ok(start.elapsed());
                }
                let shown = |ids: Vec<&String>| -> Vec<String> {
                    ids.into_iter()
                        .map(|id| match tasks.iter().find(|t| &t.id == id) {
                            Some(t) => format!(
                                "{id} ({:?}, desired {:?}, node {})",
                                proto::TaskState::try_from(state(t)).unwrap_or_default(),
                                t.desired(),
                                t.node_id
                            ),
                            None => format!("{id} (not in the store)"),
                        })
                        .collect()
                };
                format!(
                    "asked {REPLICAS}; running on the executors but not RUNNING in the store: {:?}; \
                     RUNNING in the store but on no executor: {:?}",
                    shown(on_nodes.difference(&in_store).collect()),
                    shown(in_store.difference(&on_nodes).collect()),
                )
            }
            Err(e) => format!("listing the tasks through {}: {e:#}", c.node(0).name),
        };
        if start.elapsed() >= agree_bound() {
            return Err(differ);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Runs the schedule of `seed` for about `budget` of faults; `progress` gets a line per step.
pub fn run(seed: u64, budget: Duration, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Report> {
    let net = FaultNet::new(MANAGERS + WORKERS)?.with_seed(seed);
    let netem = net.netem_works();
    progress(&match &netem {
        Ok(Mechanism::TcNetem) => "latency and loss by tc netem".to_string(),
        Ok(Mechanism::Nfqueue { no_netem }) => format!(
            "latency and loss by NFQUEUE (an iptables rule in the node's namespace, a handler \
             thread in this process): tc netem cannot run here: {no_netem}"
        ),
        Err(why) => format!("latency and loss are left out of this run's schedule: {why}"),
    });
    let can = Abilities {
        netem: netem.is_ok(),
    };
    let c = Cluster::on_net(&net, PORT)?;
    c.form(MANAGERS)
        .with_context(|| format!("forming the cluster:\n{}", c.logs()))?;
    for i in 0..MANAGERS {
        c.node(0)
            .try_swarm(&["node", "update", "--availability", "drain", &c.node(i).name])?;
    }
    c.node(0).try_swarm(&[
        "service",
        "create",
        "-d",
        "--name",
        "safety",
        "--replicas",
        &REPLICAS.to_string(),
        "sim/idle",
    ])?;
    let svc = c
        .node(0)
        .services()?
        .into_iter()
        .find(|s| s.spec.as_ref().is_some_and(|sp| sp.name == "safety"))
        .map(|s| s.id)
        .context("the service just created is not listed")?;
    let roots: Vec<PathBuf> = c.nodes.iter().map(|n| n.data_root.clone()).collect();
    let cut = Arc::new(Mutex::new(vec![false; c.nodes.len()]));
    poll(Duration::from_secs(60), SAMPLE_EVERY, || {
        count(&roots, &cut.lock().expect("cut lock"), &svc) == REPLICAS
    })
    .with_context(|| {
        format!(
            "the service's {REPLICAS} copies did not start:\n{}",
            c.logs()
        )
    })?;

    // The observer of the executors' running state.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (roots, cut, svc, stop) = (roots.clone(), cut.clone(), svc.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let flags = cut.lock().expect("cut lock").clone();
                samples.push(Sample {
                    at: Instant::now(),
                    running: count(&roots, &flags, &svc),
                });
                std::thread::sleep(SAMPLE_EVERY);
            }
            samples
        })
    };

    let work = Workload::new(seed);
    let mut clients = Vec::new();
    for m in 0..MANAGERS {
        for k in 0..CLIENTS_PER_MANAGER {
            let n = c.node(m);
            let client_seed = seed.wrapping_mul(31).wrapping_add((m * 8 + k) as u64);
            clients.push(work.spawn_client(n.name.clone(), n.socket.clone(), client_seed));
        }
    }

    let steps = schedule(seed, MANAGERS, WORKERS, budget, can);
    let mut faults = Vec::new();
    // When each fault healed, and when the next one began (or the clients stopped).
    let mut heals = Vec::new();
    // When each fault began, and when it was healed.
    let mut held = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let began = Instant::now();
        let shown =
            apply(&net, &c, step, &cut).with_context(|| format!("applying {}", step.fault))?;
        held.push((began, Instant::now()));
        progress(&format!(
            "seed {seed} fault {}/{}: {shown} for {:.1?}, then {:.1?} healed ({} operations so far)",
            i + 1,
            steps.len(),
            step.hold,
            step.rest,
            work.history.records().len()
        ));
        faults.push(shown);
        net.heal_all()?;
        cut.lock()
            .expect("cut lock")
            .iter_mut()
            .for_each(|c| *c = false);
        let healed = Instant::now();
        std::thread::sleep(step.rest);
        heals.push((healed, Instant::now()));
    }

    work.stop();
    for t in clients {
        let _ = t.join();
    }
    // Every key read through every manager once the cluster is whole: an acknowledged
    // write missing there is a violation of the same check.
    final_reads(&work, &c)?;
    let agreement = agreement(&c, &roots, &svc);
    stop.store(true, Ordering::SeqCst);
    let samples = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
    let records = work.history.records();
    let recoveries = liveness::recoveries(&records, &heals);
    let stalls = liveness::stalls(&records, &held);
    let stall_bounds = steps
        .iter()
        .map(|s| liveness::stall_bound(&s.fault, MANAGERS))
        .collect();
    let verdict = check(&records);
    Ok(Report {
        seed,
        faults,
        netem,
        netem_steps: steps
            .iter()
            .filter(|s| matches!(s.fault, Fault::Netem { .. }))
            .count(),
        verdict,
        stretches: stretches(&samples, REPLICAS),
        samples: samples.len(),
        recoveries,
        stalls,
        stall_bounds,
        agreement,
        logs: c.logs(),
    })
}

/// Applies one step's fault and holds it; returns what it did.
fn apply(
    net: &FaultNet,
    c: &Cluster,
    step: &Step,
    cut: &Mutex<Vec<bool>>,
) -> anyhow::Result<String> {
    let both = |a: usize, b: usize| -> anyhow::Result<()> {
        net.cut(a, b)?;
        net.cut(b, a)
    };
    let isolate = |lone: usize| -> anyhow::Result<()> {
        for m in (0..MANAGERS).filter(|m| *m != lone) {
            both(lone, m)?;
        }
        Ok(())
    };
    let shown = match &step.fault {
        Fault::IsolateLeader => match leader(c) {
            Some(l) => {
                isolate(l)?;
                format!("isolate the leader node{}", l + 1)
            }
            None => {
                isolate(0)?;
                "isolate node1 (no leader known)".to_string()
            }
        },
        Fault::Split { lone } => {
            isolate(*lone)?;
            step.fault.to_string()
        }
        Fault::OneWay { from, to } => {
            net.cut(*from, *to)?;
            step.fault.to_string()
        }
        Fault::Netem {
            node,
            delay_ms,
            jitter_ms,
            loss_pct,
        } => {
            net.netem(*node, *delay_ms, *jitter_ms, *loss_pct)?;
            step.fault.to_string()
        }
        Fault::IsolateWorker { worker } => {
            for m in 0..MANAGERS {
                both(*worker, m)?;
            }
            cut.lock().expect("cut lock")[*worker] = true;
            step.fault.to_string()
        }
        Fault::Flap { a, b, period } => {
            let end = Instant::now() + step.hold;
            let mut down = false;
            while Instant::now() < end {
                if down {
                    net.heal_all()?;
                } else {
                    both(*a, *b)?;
                }
                down = !down;
                std::thread::sleep((*period).min(end.saturating_duration_since(Instant::now())));
            }
            return Ok(step.fault.to_string());
        }
    };
    std::thread::sleep(step.hold);
    Ok(shown)
}

/// The manager that says it leads (its index), asked with a bound on the wait.
fn leader(c: &Cluster) -> Option<usize> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    (0..MANAGERS).find_map(|m| {
        let nodes = rt.block_on(async {
            let ch = crate::client::socket_channel(c.node(m).socket.clone())
                .await
                .ok()?;
            let mut cl = proto::control_client::ControlClient::new(ch);
            let r = tokio::time::timeout(OP_TIMEOUT, cl.list_nodes(proto::ListNodesRequest {}))
                .await
                .ok()?
                .ok()?;
            Some(r.into_inner().nodes)
        })?;
        nodes
            .iter()
            .find(|n| n.manager_status.as_ref().is_some_and(|m| m.leader))
            .and_then(|n| n.description.as_ref())
            .and_then(|d| d.hostname.strip_prefix("node"))
            .and_then(|i| i.parse::<usize>().ok())
            .map(|i| i - 1)
    })
}

/// Reads every key through every manager, recorded, once every manager answers.
fn final_reads(work: &Arc<Workload>, c: &Cluster) -> anyhow::Result<()> {
    let keys: std::collections::BTreeSet<String> =
        work.history.records().into_iter().map(|r| r.key).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for m in 0..MANAGERS {
        let n = c.node(m);
        let deadline = Instant::now() + Duration::from_secs(60);
        for key in &keys {
            loop {
                let invoked = Instant::now();
                let got = rt.block_on(read_once(&n.socket, key));
                if let Some(ret) = got {
                    work.history.record(Record {
                        key: key.clone(),
                        // A process of its own per final read: each one completes.
                        process: u64::MAX - (m as u64),
                        op: Op::Read,
                        invoked,
                        completed: Some((Instant::now(), ret)),
                        via: n.name.clone(),
                    });
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{} did not answer reads within 60 s after the faults healed:\n{}",
                    n.name,
                    c.logs()
                );
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
    Ok(())
}

async fn read_once(socket: &std::path::Path, key: &str) -> Option<Ret> {
    let ch = crate::client::socket_channel(socket.to_path_buf())
        .await
        .ok()?;
    let mut c = proto::control_client::ControlClient::new(ch);
    let r = tokio::time::timeout(
        OP_TIMEOUT,
        c.get_service(proto::GetServiceRequest {
            service_id: key.to_string(),
        }),
    )
    .await
    .ok()?;
    match r {
        Ok(s) => {
            let n = s
                .into_inner()
                .spec
                .and_then(|sp| sp.labels.get(COUNTER).cloned())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(u64::MAX);
            Some(Ret::Value(n))
        }
        Err(s) if s.code() == tonic::Code::NotFound => Some(Ret::NotFound),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use proto::control_client::ControlClient;
    use proto::CreateServiceRequest;
    use tonic::Code;

    use super::*;
    use crate::faults::workload::idle_spec;

    /// Creates an idle service `name` through the agent socket `socket` with a deadline of
    /// `timeout`: how long the call took, and its result.
    fn create_via(
        rt: &tokio::runtime::Runtime,
        socket: &std::path::Path,
        name: &str,
        timeout: Duration,
    ) -> (Duration, Result<(), tonic::Status>) {
        let (socket, spec) = (socket.to_path_buf(), idle_spec(name));
        rt.block_on(async move {
            let start = Instant::now();
            let ch = match crate::client::socket_channel(socket).await {
                Ok(ch) => ch,
                Err(e) => {
                    return (
                        start.elapsed(),
                        Err(tonic::Status::unavailable(e.to_string())),
                    )
                }
            };
            let mut req = tonic::Request::new(CreateServiceRequest { spec: Some(spec) });
            req.set_timeout(timeout);
            let res = ControlClient::new(ch).create_service(req).await;
            (start.elapsed(), res.map(|_| ()))
        })
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A write a follower forwarded to a leader that was then cut off from the other managers
    /// ends once they move on to another leader, long before the call's deadline: it used to
    /// wait for the deadline (the fault suite's clients stalled a whole operation timeout, 5
    /// s, at every isolated leader).
    #[test]
    fn a_call_forwarded_to_a_cut_off_leader_ends_when_the_others_move_on() {
        let net = FaultNet::new(MANAGERS).unwrap();
        let c = Cluster::on_net(&net, PORT).unwrap();
        c.form(MANAGERS)
            .unwrap_or_else(|e| panic!("forming the cluster: {e:#}\n{}", c.logs()));
        let l = leader(&c).expect("no leader after forming the cluster");
        let f = (0..MANAGERS).find(|i| *i != l).unwrap();
        let rt = runtime();
        let socket = c.node(f).socket.clone();
        // The follower forwards a first write while the leader is reachable: its connection
        // to the leader is open when the cut comes, as in a busy cluster.
        let (_, before) = create_via(&rt, &socket, "before", Duration::from_secs(10));
        before.unwrap_or_else(|s| panic!("a write through node{} failed: {s:?}", f + 1));
        for o in (0..MANAGERS).filter(|i| *i != l) {
            net.cut(l, o).unwrap();
            net.cut(o, l).unwrap();
        }
        let deadline = Duration::from_secs(20);
        let (took, res) = create_via(&rt, &socket, "forwarded", deadline);
        let status = res.expect_err("a cut-off leader acknowledged a write");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        // The others elect a leader within about 2 s (twice that after a split vote); the
        // forwarding channel's keepalive would end the dead connection only after about 10 s
        // (measured with the watch taken out: 9.96 s, "http2 error"), the deadline after 20.
        assert!(
            took < Duration::from_secs(6),
            "the call through node{} ended after {took:?} (deadline {deadline:?}): {status:?}",
            f + 1
        );
        eprintln!(
            "the call through node{} ended after {took:?}: {}",
            f + 1,
            status.message()
        );
    }

    /// The delay added to everything the leader sends: its round trip to the others, above
    /// the default heartbeat (150 ms) and below the longer one.
    const SLOW_LINK_MS: u32 = 250;

    /// A three-manager cluster on its own [`FaultNet`] (daemons started with `args`), formed,
    /// with [`SLOW_LINK_MS`] added to everything its leader sends; the leader's index.
    fn slow_leader(args: &[&str]) -> (FaultNet, Cluster, usize) {
        let net = FaultNet::new(MANAGERS).unwrap();
        let c = Cluster::on_net_with_args(&net, PORT, args).unwrap();
        c.form(MANAGERS)
            .unwrap_or_else(|e| panic!("forming the cluster: {e:#}\n{}", c.logs()));
        let l = leader(&c).expect("no leader after forming the cluster");
        net.netem(l, SLOW_LINK_MS, 0, 0)
            .unwrap_or_else(|e| panic!("slowing node{}'s link: {e:#}", l + 1));
        (net, c, l)
    }

    /// openraft 0.9 gives up on an AppendEntries call after one heartbeat, so a leader whose
    /// round trip to the others is longer commits nothing. The leader says so, naming the
    /// fix: a warning of the late answers with `--raft-heartbeat`, and
    /// `swarm_raft_rpc_late_answers_total` on its /metrics. With that fix, a heartbeat
    /// longer than the round trip, writes through the same slow leader commit.
    #[test]
    fn a_round_trip_above_the_heartbeat_is_reported_and_a_longer_heartbeat_commits_through_it() {
        let rt = runtime();
        let timeout = Duration::from_secs(5);

        // The default heartbeat, 150 ms.
        let (net, c, l) = slow_leader(&[]);
        let n = c.node(l);
        let (took, res) = create_via(&rt, &n.socket, "slow-default", timeout);
        eprintln!(
            "default heartbeat, {SLOW_LINK_MS} ms added to node{}'s link: a write took {took:?}: {res:?}",
            l + 1
        );
        let metrics =
            crate::lab::node::http_get_in(&net.netns_path(l), &n.metrics_addr(), "/metrics")
                .unwrap();
        let late: f64 = metrics
            .lines()
            .filter(|m| m.starts_with("swarm_raft_rpc_late_answers_total{"))
            .filter(|m| m.contains("rpc=\"append_entries\""))
            .filter_map(|m| m.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(
            late > 0.0,
            "node{} counted no late AppendEntries answer under {SLOW_LINK_MS} ms of delay:\n{}",
            l + 1,
            metrics
                .lines()
                .filter(|m| m.starts_with("swarm_raft_rpc"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let log = std::fs::read_to_string(&n.log).unwrap();
        let warning = log
            .lines()
            .find(|line| line.contains("answered an AppendEntries call after"))
            .unwrap_or_else(|| panic!("node{} warned of no late answer:\n{}", l + 1, n.log_tail()));
        assert!(
            warning.contains("--raft-heartbeat (at least"),
            "the warning names no fix: {warning}"
        );
        eprintln!("{late} late answers; the warning: {warning}");
        drop(c);
        drop(net);

        // 600 ms: the same delay commits.
        let (_net, c, l) = slow_leader(&["--raft-heartbeat", "600ms"]);
        let n = c.node(l);
        for i in 0..5 {
            let (took, res) = create_via(&rt, &n.socket, &format!("slow-600ms-{i}"), timeout);
            res.unwrap_or_else(|s| {
                panic!(
                    "with a 600 ms heartbeat, write {i} through the leader node{} under {SLOW_LINK_MS} ms of delay failed after {took:?}: {s:?}\n{}",
                    l + 1,
                    c.logs()
                )
            });
            eprintln!("600 ms heartbeat: write {i} took {took:?}");
        }
    }
}
