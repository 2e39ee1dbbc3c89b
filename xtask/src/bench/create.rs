//! `cargo xtask bench create [--replicas 20] [--rounds 3]`: in a 3-node lab (1 manager,
//! 2 workers), the time from `swarm service create --replicas N` to all N tasks running, and
//! where it goes:
//! - schedule: until every task is assigned to a node (seen through the Control API);
//! - pull / create / start: the agents' own phase timings (`swarm_executor_phase_seconds`,
//!   mean per task): image pull and unpack, namespace + spec + container + rootfs, and
//!   Tasks.Create + Start;
//! - report: from the agent's RUNNING timestamp to the moment the API showed it (median;
//!   includes up to one 20 ms poll).
//!
//! Round 1 is cold (the nodes fetch the image from the registry); later rounds are warm
//! (the pinned image is already in each containerd).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use proto::TaskState;
use tests::lab::{Lab, LabConfig};
use tests::AgentClient;

const POLL: Duration = Duration::from_millis(20);

/// Sums and counts of `swarm_executor_phase_seconds` by phase, over all nodes.
fn phase_totals(lab: &Lab) -> anyhow::Result<BTreeMap<String, (f64, f64)>> {
    let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for i in 1..=lab.config().nodes() {
        let text = lab.node(i).metrics()?;
        for line in text.lines() {
            let (sum, rest) =
                if let Some(r) = line.strip_prefix("swarm_executor_phase_seconds_sum{") {
                    (true, r)
                } else if let Some(r) = line.strip_prefix("swarm_executor_phase_seconds_count{") {
                    (false, r)
                } else {
                    continue;
                };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let Some(phase) = labels
                .strip_prefix("phase=\"")
                .and_then(|l| l.split('"').next())
            else {
                continue;
            };
            let v: f64 = value.trim().parse().unwrap_or(0.0);
            let e = out.entry(phase.to_string()).or_default();
            if sum {
                e.0 += v;
            } else {
                e.1 += v;
            }
        }
    }
    Ok(out)
}

/// Mean seconds per observation of `phase` between two snapshots.
fn mean(
    before: &BTreeMap<String, (f64, f64)>,
    after: &BTreeMap<String, (f64, f64)>,
    phase: &str,
) -> Option<f64> {
    let (s1, c1) = after.get(phase).copied().unwrap_or_default();
    let (s0, c0) = before.get(phase).copied().unwrap_or_default();
    (c1 > c0).then(|| (s1 - s0) / (c1 - c0))
}

struct Round {
    total: Duration,
    scheduled: Duration,
    pull: Option<f64>,
    create: Option<f64>,
    start: Option<f64>,
    report_ms: f64,
}

fn round(lab: &Lab, image: &str, name: &str, replicas: usize) -> anyhow::Result<Round> {
    let m = lab.node(1);
    let before = phase_totals(lab)?;
    let t0 = Instant::now();
    m.try_swarm(&[
        "service",
        "create",
        "-d",
        "--name",
        name,
        "--replicas",
        &replicas.to_string(),
        image,
    ])?;
    let mut scheduled = None;
    let mut seen_running: BTreeMap<String, i64> = BTreeMap::new();
    let mut report_lag = Vec::new();
    let deadline = t0 + Duration::from_secs(300);
    loop {
        let tasks = m.tasks(name)?;
        if scheduled.is_none()
            && tasks.len() >= replicas
            && tasks.iter().all(|t| !t.node_id.is_empty())
        {
            scheduled = Some(t0.elapsed());
        }
        let now_ms = swarm_common::clock::now_ms();
        for t in &tasks {
            if let Some(bad) = t
                .status
                .as_ref()
                .filter(|s| matches!(s.state(), TaskState::Rejected | TaskState::Failed))
            {
                bail!("task {} failed: {}", t.id, bad.err);
            }
            if t.state() == TaskState::Running && !seen_running.contains_key(&t.id) {
                let ts = t.status.as_ref().map_or(now_ms, |s| s.timestamp);
                seen_running.insert(t.id.clone(), now_ms);
                report_lag.push((now_ms - ts).max(0) as f64);
            }
        }
        if seen_running.len() >= replicas {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {replicas} tasks running after 300 s",
                seen_running.len()
            );
        }
        std::thread::sleep(POLL);
    }
    let total = t0.elapsed();
    let after = phase_totals(lab)?;
    report_lag.sort_by(|a, b| a.total_cmp(b));
    let report_ms = report_lag[report_lag.len() / 2];
    m.try_swarm(&["service", "rm", name])?;
    // Wait until the containers are gone so rounds do not overlap.
    tests::wait_for(Duration::from_secs(120), || {
        (1..=lab.config().nodes()).all(|i| {
            lab.node(i)
                .containerd_containers()
                .is_ok_and(|c| c.is_empty())
        })
    })
    .context("waiting for the containers of the round to be removed")?;
    Ok(Round {
        total,
        scheduled: scheduled.unwrap_or(total),
        pull: mean(&before, &after, "pull"),
        create: mean(&before, &after, "create"),
        start: mean(&before, &after, "start"),
        report_ms,
    })
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{:.1}", s * 1000.0))
}

pub fn run(replicas: usize, rounds: usize) -> anyhow::Result<()> {
    if replicas == 0 || rounds == 0 {
        bail!("--replicas and --rounds must be at least 1");
    }
    crate::workspace::cargo(&["build", "--release", "-p", "swarm-agent", "-p", "swarm-cli"])?;
    tests::images::build_whoami()?;
    let root = std::path::PathBuf::from("/tmp/swl-bench");
    let _ = Lab::cleanup("swb", &root);
    let bin = crate::workspace::workspace_root().join("target/release");
    let lab = Lab::up(LabConfig::new("swb", 1, 2, &root, bin))?;
    let image = format!("{}/whoami:latest", lab.registry());
    println!(
        "service create --replicas {replicas} {image} in a 3-node lab (1 manager, 2 workers), release build\n"
    );
    println!(
        "{:<6} {:>9} {:>10} {:>9} {:>10} {:>9} {:>10}",
        "round", "total ms", "sched. ms", "pull ms", "create ms", "start ms", "report ms"
    );
    let mut totals = Vec::new();
    for r in 1..=rounds {
        let res = round(&lab, &image, &format!("bench{r}"), replicas)
            .with_context(|| format!("round {r}; lab logs:\n{}", lab.logs()))?;
        println!(
            "{:<6} {:>9.0} {:>10.0} {:>9} {:>10} {:>9} {:>10.0}",
            if r == 1 {
                "1 cold".to_string()
            } else {
                r.to_string()
            },
            res.total.as_secs_f64() * 1000.0,
            res.scheduled.as_secs_f64() * 1000.0,
            ms(res.pull),
            ms(res.create),
            ms(res.start),
            res.report_ms,
        );
        if r > 1 {
            totals.push(res.total.as_secs_f64());
        }
    }
    if !totals.is_empty() {
        totals.sort_by(|a, b| a.total_cmp(b));
        println!(
            "\nwarm median: {:.0} ms for {replicas} tasks (pull/create/start are per-task means; \
             tasks on a node start concurrently)",
            totals[totals.len() / 2] * 1000.0
        );
    }
    Ok(())
}
