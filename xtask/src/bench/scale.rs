//! `cargo xtask bench scale`: 3 real managers (`test-agent` processes on 127.0.0.1–3, Raft
//! on disk, mTLS) and N simulated agents in this process (`tests::sim_agents`: real joins
//! and agent sessions, tasks RUNNING at once), Swarm3k on one machine.
//!
//! Phases, each with a progress line every 2 s: the nodes join and become Ready; the
//! services are created (one global service when the task count allows, the rest replicated,
//! one in ten (`--overlay-every`) on one of 30 overlay networks (`--networks`) with a VIP)
//! and run until every task is RUNNING (as the executors see it and as `service ls` shows
//! it); then `service ls`, `node ls` and `service ps` are timed through the CLI under that
//! load; then the leader is SIGKILLed and the cluster timed until a write through the
//! survivors is acknowledged (the failover goal, measured as `bench failover` does) and
//! until it settles (a new leader, every simulated node Ready again, every task running
//! once). The report: those times, the
//! leader's CPU per phase, the peak RSS of each manager, the Raft database, log and snapshot
//! sizes, and the network state bytes each node received.
//!
//! The managers and the harness are the debug builds `cargo xtask` makes (as `bench
//! failover`), or with `--release` release builds (xtask re-runs itself as one, and the
//! managers, agents and CLI it starts are built the same way): compare runs of one kind.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use ::tests::sim_agents::{duplicates, ready_count, SimAgents};
use ::tests::{http_get, AgentClient, Cluster};
use anyhow::{bail, Context};

use super::failover::{leader, until_a_write_is_acknowledged};
use super::ScaleOpts;

/// The machine memory (MiB) below which the bench stops instead of letting the kernel's
/// OOM killer pick a process of a shared machine.
const MIN_AVAILABLE_MIB: f64 = 1024.0;
/// How often a progress line is printed.
const PROGRESS: Duration = Duration::from_secs(2);
/// Samples per timed CLI command.
const SAMPLES: usize = 30;
/// The kind of build measured (this xtask's, and the one of what it starts).
const PROFILE: &str = if cfg!(debug_assertions) {
    "debug"
} else {
    "release"
};

/// CPU seconds (user + system) a process used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): state is field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime is field 14, stime 15: indexes 11 and 12 after ") ".
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) as f64 / hz
}

/// CPU seconds of each process.
fn cpus(pids: &[u32]) -> Vec<f64> {
    pids.iter().map(|p| cpu_seconds(*p)).collect()
}

/// CPU seconds each used since `before`, as "a / b / c".
fn cpu_since(pids: &[u32], before: &[f64]) -> String {
    cpus(pids)
        .iter()
        .zip(before)
        .map(|(now, b)| format!("{:.1}", now - b))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// A `Field: N kB` line of a /proc file (`status`, `meminfo`), as MiB.
fn proc_kb_as_mib(path: &str, field: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A `/proc/<pid>/status` field in kB, as MiB (0 when unknown).
fn status_mib(pid: u32, field: &str) -> f64 {
    proc_kb_as_mib(&format!("/proc/{pid}/status"), field).unwrap_or(0.0)
}

/// `MemAvailable` of /proc/meminfo, in MiB (unknown: infinite).
fn available_mib() -> f64 {
    proc_kb_as_mib("/proc/meminfo", "MemAvailable:").unwrap_or(f64::INFINITY)
}

/// Peak RSS (MiB) of the managers and of this process (the simulated agents).
fn peaks(pids: &[u32]) -> String {
    let mut v: Vec<String> = pids
        .iter()
        .map(|p| format!("{:.0}", status_mib(*p, "VmHWM:")))
        .collect();
    v.push(format!("{:.0}", status_mib(std::process::id(), "VmHWM:")));
    v.join(" / ")
}

/// Stops the bench while the machine still has memory: which phase, and who holds it.
fn memory_guard(phase: &str, pids: &[u32]) -> anyhow::Result<()> {
    let avail = available_mib();
    if avail < MIN_AVAILABLE_MIB {
        bail!(
            "stopped in the {phase} phase: the machine has {avail:.0} MiB of memory left (the bench stops under {MIN_AVAILABLE_MIB:.0} MiB); peak RSS MiB (node1 / node2 / node3 / simulated agents) {}; try fewer --nodes, more --networks or a larger --overlay-every (each simulated node holds the endpoints of every network it has a task on)",
            peaks(pids)
        );
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Simulated nodes Ready as manager `via` sees them.
fn ready(c: &Cluster, via: usize, ids: &BTreeSet<String>) -> usize {
    c.node(via)
        .nodes()
        .map_or(0, |nodes| ready_count(&nodes, ids))
}

/// The rows of `service ls` through `via` whose REPLICAS column is not `n/n` (every task
/// running, global services included): empty once every service is full.
fn services_short(c: &Cluster, via: usize) -> anyhow::Result<Vec<String>> {
    let out = c.node(via).try_swarm(&["service", "ls"])?;
    let short = ::tests::table(&out)
        .into_iter()
        .filter(|row| {
            !row.iter().any(|col| {
                col.split_once('/').is_some_and(|(a, b)| {
                    a.trim().parse::<u64>().ok().is_some()
                        && a.trim() == b.split_whitespace().next().unwrap_or("")
                })
            })
        })
        .map(|row| row.join(" "))
        .collect();
    Ok(short)
}

/// What keeps the bench waiting on `service ls` through `via`, for the progress line: None
/// once every service is full; `""` while `check` is false (the agents do not run every
/// task yet, so `service ls` is not asked); else which services are short (the first
/// three) or why `service ls` failed.
fn not_full(c: &Cluster, via: usize, check: bool) -> Option<String> {
    if !check {
        return Some(String::new());
    }
    match services_short(c, via) {
        Ok(short) if short.is_empty() => None,
        Ok(short) => Some(format!(
            "; {} services short, e.g. {}",
            short.len(),
            short
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(" | ")
        )),
        Err(e) => Some(format!("; service ls failed: {e:#}")),
    }
}

/// p50 and p99 of the time `args` takes through the CLI on manager `via`, in ms.
fn latency(c: &Cluster, via: usize, args: &[&str]) -> anyhow::Result<(f64, f64)> {
    let mut ms = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t = Instant::now();
        let o = c.node(via).swarm(args);
        if !o.ok() {
            bail!("swarm {}: {}", args.join(" "), o.stderr);
        }
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    Ok((at(0.5), at(0.99)))
}

/// `swarm ARGS` through manager `via`, tried again for up to 60 s while refused (an
/// election under load); the refusals are counted in `retries`.
fn write(c: &Cluster, via: usize, args: &[&str], retries: &mut usize) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        match c.node(via).try_swarm(args) {
            Ok(_) => return Ok(()),
            // A refused write that was committed after all.
            Err(e) if *retries > 0 && format!("{e:#}").contains("already exists") => return Ok(()),
            Err(e) if t.elapsed() < Duration::from_secs(60) => {
                *retries += 1;
                println!("[retry] {e:#}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A gauge of the `/metrics` text (0 when absent).
fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The services: (name, replicas or None for global, overlay network index).
fn plan(o: &ScaleOpts) -> Vec<(String, Option<usize>, Option<usize>)> {
    let global = o.services >= 2 && o.tasks >= 2 * o.nodes;
    let replicated = o.services - usize::from(global);
    let left = o.tasks - if global { o.nodes } else { 0 };
    let mut out = Vec::with_capacity(o.services);
    if global {
        out.push(("scale-global".to_string(), None, None));
    }
    let every = usize::from(o.overlay_every);
    for i in 0..replicated {
        let replicas = left / replicated + usize::from(i < left % replicated);
        let net = (i % every == 0).then_some((i / every) % usize::from(o.networks));
        out.push((format!("scale-{i:04}"), Some(replicas), net));
    }
    out
}

pub fn run(o: ScaleOpts) -> anyhow::Result<()> {
    if o.services == 0 || o.tasks < o.services {
        bail!(
            "--tasks ({}) must be at least --services ({}), and --services at least 1",
            o.tasks,
            o.services
        );
    }
    if o.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if cfg!(debug_assertions) {
        crate::workspace::cargo(&["build", "-p", "swarm-cli", "-p", "tests", "--bins"])?;
    } else {
        // The same call as the one that built this xtask: nothing to build, nothing rebuilt.
        crate::workspace::cargo(super::SCALE_RELEASE_BUILD)?;
    }
    println!(
        "bench scale: 3 managers, {} simulated nodes, {} tasks in {} services ({PROFILE} builds; heartbeat {})",
        o.nodes, o.tasks, o.services, o.heartbeat
    );
    let mut c = Cluster::new(3, o.port)?;
    let init = c.init_with(0, &["--dispatcher-heartbeat", &o.heartbeat]);
    if !init.ok() {
        bail!("swarm init: {}\n{}", init.stderr, c.logs());
    }
    for i in 1..3 {
        c.join(i, 0, "manager").with_context(|| c.logs())?;
    }
    c.wait_nodes_ready(0, 3).with_context(|| c.logs())?;
    let pids: Vec<u32> = c.nodes.iter().map(|n| n.pid().unwrap_or(0)).collect();
    let token = c.token(0, "worker");

    // 1. Join.
    let mut sim = SimAgents::new(&c.root.join("sim"), 2)?;
    let joined = AtomicUsize::new(0);
    let cpu0 = cpus(&pids);
    let t_join = Instant::now();
    let done = std::sync::atomic::AtomicBool::new(false);
    let ids: BTreeSet<String> = std::thread::scope(|s| -> anyhow::Result<_> {
        let progress = s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(PROGRESS);
                println!(
                    "[join] {}/{} joined, {:.0} s",
                    joined.load(std::sync::atomic::Ordering::Relaxed),
                    o.nodes,
                    t_join.elapsed().as_secs_f64()
                );
            }
        });
        let r = sim.join(o.nodes, &c.node(0).addr(), &token, o.parallel, &joined);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = progress.join();
        r.with_context(|| c.logs())?;
        Ok(sim.node_ids().into_iter().collect())
    })?;
    let joined_in = t_join.elapsed();
    let mut last = Instant::now();
    loop {
        let r = ready(&c, 0, &ids);
        if r == o.nodes {
            break;
        }
        if last.elapsed() >= PROGRESS {
            println!(
                "[ready] {r}/{} Ready, {:.0} s",
                o.nodes,
                t_join.elapsed().as_secs_f64()
            );
            last = Instant::now();
        }
        if t_join.elapsed() > Duration::from_secs(600) {
            bail!("{r} of {} nodes Ready after 10 minutes", o.nodes);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let ready_in = t_join.elapsed();
    let cpu_join = cpu_since(&pids, &cpu0);
    println!(
        "all {} nodes joined in {:.1} s, Ready in {:.1} s",
        o.nodes,
        joined_in.as_secs_f64(),
        ready_in.as_secs_f64()
    );

    // 2. Services until every task runs.
    let cpu1 = cpus(&pids);
    let t_create = Instant::now();
    let mut retries = 0;
    for k in 0..usize::from(o.networks) {
        let subnet = format!("10.{}.0.0/16", 100 + k);
        write(
            &c,
            0,
            &[
                "network",
                "create",
                "-d",
                "overlay",
                "--subnet",
                &subnet,
                &format!("scale-net{k}"),
            ],
            &mut retries,
        )?;
    }
    let plan = plan(&o);
    let (mut created, mut last) = (0, Instant::now());
    for (name, replicas, net) in &plan {
        let mut args = vec![
            "service".to_string(),
            "create".into(),
            "-d".into(),
            "--name".into(),
            name.clone(),
            "--constraint".into(),
            "node.role==worker".into(),
        ];
        match replicas {
            Some(r) => args.extend(["--replicas".into(), r.to_string()]),
            None => args.extend(["--mode".into(), "global".into()]),
        }
        if let Some(k) = net {
            args.extend(["--network".into(), format!("scale-net{k}")]);
        }
        args.push("sim/app".into());
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        write(&c, 0, &a, &mut retries)?;
        created += 1;
        if last.elapsed() >= PROGRESS {
            println!(
                "[create] {created}/{} services, {}/{} tasks running, {:.0} s, RSS MiB {}",
                plan.len(),
                sim.running().len(),
                o.tasks,
                t_create.elapsed().as_secs_f64(),
                peaks(&pids)
            );
            memory_guard("create", &pids)?;
            last = Instant::now();
        }
    }
    let created_in = t_create.elapsed();
    println!(
        "{} services created in {:.1} s ({retries} writes refused and retried)",
        plan.len(),
        created_in.as_secs_f64()
    );
    let mut last = Instant::now();
    loop {
        let running = sim.running().len();
        let Some(waiting) = not_full(&c, 0, running >= o.tasks) else {
            break;
        };
        if last.elapsed() >= PROGRESS {
            println!(
                "[converge] {running}/{} running, {:.0} s, RSS MiB {}{}",
                o.tasks,
                t_create.elapsed().as_secs_f64(),
                peaks(&pids),
                waiting
            );
            memory_guard("converge", &pids)?;
            last = Instant::now();
        }
        if t_create.elapsed() > Duration::from_secs(60 * o.converge_minutes) {
            let cpu = cpu_since(&pids, &cpu1);
            println!(
                "stopped: CPU seconds since the first create (node1 / node2 / node3) {cpu}, peak RSS MiB (node1 / node2 / node3 / simulated agents) {}",
                peaks(&pids)
            );
            let services = not_full(&c, 0, true).unwrap_or_default();
            bail!(
                "{running} of {} tasks running {} minutes after the first create (--converge-minutes){services}",
                o.tasks,
                o.converge_minutes
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let converged_in = t_create.elapsed();
    let cpu_converge = cpu_since(&pids, &cpu1);
    let dups = duplicates(&sim.running().snapshot());
    if !dups.is_empty() {
        bail!("tasks running twice: {dups:?}");
    }
    println!(
        "all {} tasks running {:.1} s after the first create",
        o.tasks,
        converged_in.as_secs_f64()
    );

    // 3. Steady state: the leader's CPU with only heartbeats, then the CLI under that load.
    let cpu2 = cpus(&pids);
    let t_idle = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let secs = t_idle.elapsed().as_secs_f64();
    let idle_cores = cpus(&pids)
        .iter()
        .zip(&cpu2)
        .map(|(now, b)| format!("{:.2}", (now - b) / secs))
        .collect::<Vec<_>>()
        .join(" / ");
    let svc = plan[plan.len() / 2].0.clone();
    let service_ls = latency(&c, 0, &["service", "ls"])?;
    let node_ls = latency(&c, 0, &["node", "ls"])?;
    let service_ps = latency(&c, 0, &["service", "ps", &svc])?;
    let ns_bytes = sim.network_state_bytes();
    let metrics = http_get(&c.node(0).metrics_addr(), "/metrics").unwrap_or_default();
    let raft_files: Vec<u64> = c
        .nodes
        .iter()
        .map(|n| {
            // The database and the snapshot file beside it.
            std::fs::read_dir(n.data_root.join("raft"))
                .map(|d| {
                    d.flatten()
                        .filter_map(|e| e.metadata().ok())
                        .filter(|m| m.is_file())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0)
        })
        .collect();
    let rss_before_kill: Vec<f64> = pids.iter().map(|p| status_mib(*p, "VmHWM:")).collect();

    // What was measured before the kill, printed now: a failed settle must not lose it.
    let mut before_kill: Vec<String> = Vec::new();
    let mut sorted = ns_bytes.clone();
    sorted.sort_unstable();
    let total: u64 = sorted.iter().sum();
    before_kill.push(format!(
        "steady:    cores used (node1 / node2 / node3) {idle_cores} (heartbeats only, 10 s)"
    ));
    for (what, (p50, p99)) in [
        ("service ls", service_ls),
        ("node ls", node_ls),
        ("service ps", service_ps),
    ] {
        before_kill.push(format!(
            "{what:<11}p50 {p50:>8.1} ms   p99 {p99:>8.1} ms   ({SAMPLES} runs of the CLI)"
        ));
    }
    before_kill.push(format!(
        "raft (node1): snapshot {:.1} MiB, log since snapshot {:.1} MiB, commit index {}, term {} before the kill",
        gauge(&metrics, "swarm_raft_snapshot_bytes") / (1024.0 * 1024.0),
        gauge(&metrics, "swarm_raft_log_bytes") / (1024.0 * 1024.0),
        gauge(&metrics, "swarm_raft_commit_index"),
        gauge(&metrics, "swarm_raft_term")
    ));
    before_kill.push(format!(
        "network state per node: mean {:.1} KiB, p50 {:.1} KiB, max {:.1} KiB (total {:.1} MiB)",
        total as f64 / sorted.len() as f64 / 1024.0,
        sorted[sorted.len() / 2] as f64 / 1024.0,
        *sorted.last().unwrap_or(&0) as f64 / 1024.0,
        mib(total),
    ));
    for (i, r) in rss_before_kill.iter().enumerate() {
        before_kill.push(format!(
            "manager node{}: peak RSS {r:.0} MiB before the kill",
            i + 1
        ));
    }
    before_kill.push(format!(
        "simulated agents ({} nodes in this process): peak RSS {:.0} MiB",
        o.nodes,
        status_mib(std::process::id(), "VmHWM:")
    ));
    println!("before the leader kill:");
    for l in &before_kill {
        println!("  {l}");
    }

    // 4. SIGKILL the leader; time until the cluster settles.
    let mut alive = [true; 3];
    let old = leader(&c, &alive).context("no leader before the kill")?;
    let t_kill = Instant::now();
    c.nodes[old].kill();
    alive[old] = false;
    // The services have no replicas: the task count the settle phase waits for stays.
    let (writes_in, write_attempts) =
        until_a_write_is_acknowledged(&c, &alive, t_kill, Duration::from_secs(60), |a| {
            vec![
                "--replicas".into(),
                "0".into(),
                "--name".into(),
                format!("scale-failover-{a}"),
                "sim/app".into(),
            ]
        })?;
    println!(
        "[kill] a write acknowledged {:.2} s after the leader died ({write_attempts} attempts)",
        writes_in.as_secs_f64()
    );
    let (new_leader, elected_in) = loop {
        if let Some(l) = leader(&c, &alive) {
            break (l, t_kill.elapsed());
        }
        if t_kill.elapsed() > Duration::from_secs(60) {
            bail!("no new leader 60 s after the kill\n{}", c.logs());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut last = Instant::now();
    loop {
        let r = ready(&c, new_leader, &ids);
        let running = sim.running().len();
        let Some(waiting) = not_full(&c, new_leader, r == o.nodes && running == o.tasks) else {
            break;
        };
        if last.elapsed() >= PROGRESS {
            println!(
                "[settle] {r}/{} Ready, {running}/{} running, {:.0} s{}",
                o.nodes,
                o.tasks,
                t_kill.elapsed().as_secs_f64(),
                waiting
            );
            memory_guard("settle", &pids)?;
            last = Instant::now();
        }
        if t_kill.elapsed() > Duration::from_secs(600) {
            bail!("not settled 10 minutes after the leader kill");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let settled_in = t_kill.elapsed();
    let dups = duplicates(&sim.running().snapshot());
    if !dups.is_empty() {
        bail!("tasks running twice after the leader kill: {dups:?}");
    }
    let ns_after: Vec<u64> = sim.network_state_bytes();

    // Report.
    let rss: Vec<f64> = pids
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if i == old {
                rss_before_kill[i]
            } else {
                status_mib(*p, "VmHWM:")
            }
        })
        .collect();
    let ns_total_after: u64 = ns_after.iter().sum();
    println!("\n== bench scale: {} nodes, {} tasks, {} services (one in {} on one of {} overlay networks; 3 managers; {PROFILE} builds) ==", o.nodes, o.tasks, plan.len(), o.overlay_every, o.networks);
    println!(
        "join:      all joined {:>8.1} s   all Ready {:>8.1} s   CPU s (node1 / node2 / node3) {}",
        joined_in.as_secs_f64(),
        ready_in.as_secs_f64(),
        cpu_join
    );
    println!(
        "converge:  created {:>8.1} s   all RUNNING {:>8.1} s   CPU s (node1 / node2 / node3) {}",
        created_in.as_secs_f64(),
        converged_in.as_secs_f64(),
        cpu_converge
    );
    for l in &before_kill {
        println!("{l}");
    }
    for (i, r) in rss.iter().enumerate() {
        println!(
            "manager node{}: peak RSS {r:.0} MiB, Raft files (database and snapshot) {:.1} MiB{}",
            i + 1,
            mib(raft_files[i]),
            if i == old { " (the leader killed)" } else { "" }
        );
    }
    println!(
        "leader kill (node{}): writes acknowledged again in {:.2} s ({} attempts), new leader node{} in `node ls` {:.1} s, settled in {:.1} s; network state sent to all nodes since the first create {:.1} MiB (the failover's COMPLETE messages included)",
        old + 1,
        writes_in.as_secs_f64(),
        write_attempts,
        new_leader + 1,
        elected_in.as_secs_f64(),
        settled_in.as_secs_f64(),
        mib(ns_total_after)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(nodes: usize, tasks: usize, services: usize) -> ScaleOpts {
        ScaleOpts {
            nodes,
            tasks,
            services,
            networks: 8,
            overlay_every: 4,
            port: 0,
            parallel: 1,
            heartbeat: "5s".into(),
            converge_minutes: 60,
            release: false,
        }
    }

    #[test]
    fn the_plan_has_every_task_and_service() {
        for (n, t, s) in [(5000, 150_000, 300), (200, 6000, 30), (10, 5, 3), (3, 7, 1)] {
            let p = plan(&opts(n, t, s));
            assert_eq!(p.len(), s);
            let global = p.iter().filter(|(_, r, _)| r.is_none()).count();
            let tasks: usize = p.iter().map(|(_, r, _)| r.unwrap_or(n)).sum();
            assert_eq!(tasks, t, "{n} nodes {t} tasks {s} services");
            assert_eq!(global, usize::from(s >= 2 && t >= 2 * n));
            assert!(p.iter().any(|(_, _, net)| net.is_some()));
            assert!(p.iter().all(|(_, _, net)| net.is_none_or(|k| k < 8)));
        }
        let mut o = opts(5000, 150_000, 300);
        (o.networks, o.overlay_every) = (30, 10);
        let p = plan(&o);
        let on: Vec<usize> = p.iter().filter_map(|(_, _, net)| *net).collect();
        assert_eq!(on.len(), 30, "one in ten of the 299 replicated services");
        assert_eq!(
            on.iter().collect::<BTreeSet<_>>().len(),
            30,
            "each on its own"
        );
    }

    #[test]
    fn a_gauge_is_read_by_its_exact_name() {
        let m = "# HELP x\nswarm_raft_log_bytes_total 9\nswarm_raft_log_bytes 42\n";
        assert_eq!(gauge(m, "swarm_raft_log_bytes"), 42.0);
        assert_eq!(gauge(m, "swarm_missing"), 0.0);
    }
}
