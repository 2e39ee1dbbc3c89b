//! `cargo xtask bench scheduler`: how long the scheduler takes from the store insert of
//! PENDING tasks (as the allocator leaves them) until every task is ASSIGNED.
//!
//! Each configuration runs in a child process (this binary, hidden `bench-child`
//! subcommand) so that the peak RSS (getrusage ru_maxrss) belongs to that configuration
//! alone. The child builds an in-memory store (`Store::memory()`, no Raft) with N READY and
//! ACTIVE nodes of 4 CPUs / 8 GiB and one replicated service, then starts the clock, inserts
//! T PENDING tasks in best-effort requests of 1 000 (as the orchestrators and the allocator
//! write tasks; until December 2026 it inserted them in atomic batches of 10 000, which
//! nothing in the managers does), runs `Scheduler::pass` until no task is PENDING, stops the
//! clock, and checks that every task is ASSIGNED and the spread is even. Besides the wall
//! clock it reports the child's CPU time over the same interval: on a shared machine the
//! wall clock also counts the time other processes hold the cores.
//!
//! Reference: SwarmKit's scheduler takes 21.6 s for 1k nodes × 100k tasks.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use proto::{
    service_spec, ContainerSpec, Node, NodeAvailability, NodeDescription, NodeSpec, NodeState,
    NodeStatus, Platform, ReplicatedService, Resources, Service, ServiceSpec, Task, TaskSpec,
    TaskState, TaskStatus,
};
use swarm_common::id::new_id;
use swarm_manager::scheduler::Scheduler;
use swarm_manager::store::{Object, Op, OpOutcome, Request, Store};

/// (nodes, tasks)
const MATRIX: &[(usize, usize)] = &[
    (1_000, 1_000),
    (1_000, 10_000),
    (1_000, 100_000),
    (100_000, 1_000),
    (100_000, 100_000),
];

/// SwarmKit's time for 1k nodes × 100k tasks, seconds.
const SWARMKIT_1K_100K: f64 = 21.6;

/// Ops per store batch while building the state.
const BATCH: usize = 10_000;
/// Tasks per store request while inserting them: the size of the best-effort requests in
/// which the orchestrators and the allocator write tasks (`OPS_PER_REQUEST`).
const INSERT_BATCH: usize = 1_000;

const MAX_PASSES: usize = 20;

fn parse_count(s: &str) -> anyhow::Result<usize> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = match s.strip_suffix('k') {
        Some(n) => (n, 1_000),
        None => match s.strip_suffix('m') {
            Some(n) => (n, 1_000_000),
            None => (s.as_str(), 1),
        },
    };
    let n: usize = num
        .parse()
        .with_context(|| format!("{s:?} is not a count (examples: 1000, 1k, 100k)"))?;
    Ok(n * mult)
}

fn parse_only(s: &str) -> anyhow::Result<(usize, usize)> {
    let Some((n, t)) = s
        .to_ascii_lowercase()
        .split_once('x')
        .map(|(a, b)| (a.to_string(), b.to_string()))
    else {
        bail!("--only {s:?}: expected NODESxTASKS, e.g. 1000x100000 or 1kx100k");
    };
    let (n, t) = (parse_count(&n)?, parse_count(&t)?);
    if n == 0 || t == 0 {
        bail!("--only {s:?}: nodes and tasks must be at least 1");
    }
    Ok((n, t))
}

struct RunResult {
    secs: f64,
    /// CPU time (user + system) the child used over `secs`: on a shared machine, where the
    /// wall clock also counts the time other processes hold the cores, the steadier figure.
    cpu_secs: f64,
    /// Part of `secs` spent inserting the tasks into the store.
    insert_secs: f64,
    maxrss_kib: u64,
    passes: usize,
}

fn run_child(nodes: usize, tasks: usize) -> anyhow::Result<RunResult> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let out = Command::new(&exe)
        .args([
            "bench-child",
            "--nodes",
            &nodes.to_string(),
            "--tasks",
            &tasks.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "benchmark {nodes} nodes × {tasks} tasks failed ({}):\n{stdout}",
            out.status
        );
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .with_context(|| format!("no RESULT line in the child's output:\n{stdout}"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() != 5 {
        bail!("malformed RESULT line {line:?}");
    }
    Ok(RunResult {
        secs: f[0].parse().context("RESULT seconds")?,
        insert_secs: f[1].parse().context("RESULT insert seconds")?,
        maxrss_kib: f[2].parse().context("RESULT maxrss")?,
        passes: f[3].parse().context("RESULT passes")?,
        cpu_secs: f[4].parse().context("RESULT cpu seconds")?,
    })
}

fn human(n: usize) -> String {
    if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

pub fn scheduler(runs: usize, only: Option<&str>) -> anyhow::Result<()> {
    let runs = runs.max(1);
    let configs: Vec<(usize, usize)> = match only {
        Some(s) => vec![parse_only(s)?],
        None => MATRIX.to_vec(),
    };
    println!(
        "scheduler benchmark: in-memory store, {runs} run(s) per configuration, each in its own process"
    );
    let mut rows = Vec::new();
    for &(nodes, tasks) in &configs {
        let mut secs = Vec::new();
        let mut cpu = Vec::new();
        let mut rss = 0u64;
        let mut passes = 0usize;
        for r in 0..runs {
            let res = run_child(nodes, tasks)?;
            eprintln!(
                "  {} nodes × {} tasks, run {}: {:.3} s (store insert {:.3} s, scheduling {:.3} s; CPU {:.3} s), {} pass(es), peak RSS {} MiB",
                human(nodes),
                human(tasks),
                r + 1,
                res.secs,
                res.insert_secs,
                res.secs - res.insert_secs,
                res.cpu_secs,
                res.passes,
                res.maxrss_kib / 1024
            );
            secs.push(res.secs);
            cpu.push(res.cpu_secs);
            rss = rss.max(res.maxrss_kib);
            passes = passes.max(res.passes);
        }
        rows.push((nodes, tasks, Spread::of(secs), Spread::of(cpu), rss, passes));
    }

    println!();
    println!(
        "{:>7} {:>7} {:>10} {:>15} {:>10} {:>12} {:>13} {:>7}  VS SWARMKIT",
        "NODES", "TASKS", "MEDIAN s", "MIN-MAX s", "CPU s", "TASKS/s", "PEAK RSS MiB", "PASSES"
    );
    for (nodes, tasks, wall, cpu, rss, passes) in rows {
        let median = wall.median;
        let vs = if (nodes, tasks) == (1_000, 100_000) {
            format!(
                "{:.1}x faster (SwarmKit {SWARMKIT_1K_100K} s)",
                SWARMKIT_1K_100K / median.max(1e-9)
            )
        } else {
            String::new()
        };
        println!(
            "{:>7} {:>7} {:>10.3} {:>15} {:>10.3} {:>12.0} {:>13.1} {:>7}  {}",
            human(nodes),
            human(tasks),
            median,
            format!("{:.3}-{:.3}", wall.min, wall.max),
            cpu.median,
            tasks as f64 / median.max(1e-9),
            rss as f64 / 1024.0,
            passes,
            vs
        );
    }
    println!("(CPU s: median CPU time of the child over the same interval; the wall clock also counts time other processes hold the cores)");
    if cfg!(debug_assertions) {
        println!("(debug build: not representative)");
    }
    Ok(())
}

/// Median and range of a configuration's runs.
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Spread {
        v.sort_by(|a, b| a.total_cmp(b));
        Spread {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

fn node(i: usize) -> Node {
    Node {
        id: format!("node{i:07}"),
        spec: Some(NodeSpec {
            availability: NodeAvailability::Active as i32,
            ..Default::default()
        }),
        description: Some(NodeDescription {
            hostname: format!("host{i}"),
            platform: Some(Platform {
                os: "linux".into(),
                architecture: "x86_64".into(),
            }),
            resources: Some(Resources {
                nano_cpus: 4_000_000_000,
                memory_bytes: 8 << 30,
            }),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: NodeState::Ready as i32,
            addr: format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn rusage() -> Option<libc::rusage> {
    // SAFETY: getrusage writes into the zeroed struct we pass; no other memory is touched.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_SELF, &mut ru) == 0).then_some(ru)
    }
}

fn maxrss_kib() -> u64 {
    rusage().map_or(0, |ru| ru.ru_maxrss.max(0) as u64)
}

/// User + system CPU time of this process so far.
fn cpu_secs() -> f64 {
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    rusage().map_or(0.0, |ru| secs(ru.ru_utime) + secs(ru.ru_stime))
}

/// One configuration, in this (child) process. Prints
/// `RESULT <secs> <insert secs> <maxrss KiB> <passes> <cpu secs>`.
/// Proposes `ops` as one best-effort request, as the orchestrators and the allocator write
/// tasks; every op must apply.
async fn insert(store: &Store, ops: Vec<Op>) -> anyhow::Result<()> {
    let resp = store.propose(Request::best_effort(ops)).await?;
    let outcomes = match resp.result {
        Some(Ok(o)) => o,
        Some(Err(e)) => bail!("inserting tasks: {e}"),
        None => bail!("inserting tasks: no answer"),
    };
    for o in outcomes {
        if let OpOutcome::Skipped(e) = o {
            bail!("inserting tasks: {e}");
        }
    }
    Ok(())
}

pub fn child(nodes: usize, tasks: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(child_async(nodes, tasks))
}

async fn child_async(n_nodes: usize, n_tasks: usize) -> anyhow::Result<()> {
    let store = Store::memory();
    let mut ops = Vec::with_capacity(BATCH);
    for i in 0..n_nodes {
        ops.push(Op::Create(Object::Node(node(i))));
        if ops.len() == BATCH {
            store.write(std::mem::take(&mut ops)).await?;
        }
    }
    let task_spec = TaskSpec {
        container: Some(ContainerSpec {
            image: "nginx:1.27".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let service = Service {
        id: new_id(),
        spec: Some(ServiceSpec {
            name: "bench".into(),
            task: Some(task_spec.clone()),
            mode: Some(service_spec::Mode::Replicated(ReplicatedService {
                replicas: n_tasks as u64,
            })),
            ..Default::default()
        }),
        spec_version: 1,
        ..Default::default()
    };
    ops.push(Op::Create(Object::Service(service.clone())));
    store.write(std::mem::take(&mut ops)).await?;

    let scheduler = Scheduler::new(store.clone());

    // ---- clock starts: the allocator's store insert of PENDING tasks
    let start = Instant::now();
    let cpu_start = cpu_secs();
    for slot in 1..=n_tasks {
        ops.push(Op::Create(Object::Task(Task {
            id: new_id(),
            service_id: service.id.clone(),
            slot: slot as u64,
            spec: Some(task_spec.clone()),
            spec_version: 1,
            service_name: "bench".into(),
            status: Some(TaskStatus {
                state: TaskState::Pending as i32,
                message: "pending task scheduling".into(),
                ..Default::default()
            }),
            desired_state: TaskState::Running as i32,
            ..Default::default()
        })));
        if ops.len() == INSERT_BATCH {
            insert(&store, std::mem::take(&mut ops)).await?;
        }
    }
    if !ops.is_empty() {
        insert(&store, std::mem::take(&mut ops)).await?;
    }
    let inserted = start.elapsed().as_secs_f64();
    let mut passes = 0;
    while store.read().count_in_state(TaskState::Pending) > 0 {
        if passes == MAX_PASSES {
            bail!(
                "{} tasks still PENDING after {MAX_PASSES} passes",
                store.read().count_in_state(TaskState::Pending)
            );
        }
        scheduler.pass().await?;
        passes += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu_start;
    // ---- clock stopped

    let st = store.read();
    let assigned = st.count_in_state(TaskState::Assigned);
    if assigned != n_tasks || st.task_count() != n_tasks {
        bail!(
            "expected {n_tasks} ASSIGNED tasks, found {assigned} ASSIGNED of {}",
            st.task_count()
        );
    }
    let (mut min, mut max, mut sum) = (usize::MAX, 0usize, 0usize);
    for n in st.nodes() {
        let c = st.tasks_on_node(&n.id).count();
        min = min.min(c);
        max = max.max(c);
        sum += c;
    }
    if sum != n_tasks {
        bail!("the nodes hold {sum} tasks, expected {n_tasks}");
    }
    if max - min > 1 {
        bail!("uneven spread: between {min} and {max} tasks per node");
    }
    drop(st);
    println!(
        "RESULT {secs:.6} {inserted:.6} {} {passes} {cpu:.6}",
        maxrss_kib()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_configurations() {
        assert_eq!(parse_only("1000x100000").unwrap(), (1_000, 100_000));
        assert_eq!(parse_only("1kx100K").unwrap(), (1_000, 100_000));
        assert!(parse_only("1000").is_err());
        assert!(parse_only("0x5").is_err());
    }

    #[test]
    fn small_configuration_passes_its_checks() {
        child(10, 95).unwrap();
    }
}
