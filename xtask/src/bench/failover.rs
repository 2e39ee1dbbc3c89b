//! `cargo xtask bench failover`: how long after the leader process dies the API accepts
//! writes again. Three managers on 127.0.0.1–3; each round SIGKILLs the leader, then writes
//! through the survivors until one write is acknowledged; the killed manager is restarted
//! before the next round.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tests::{wait_for, AgentClient, Cluster};

const TARGET: Duration = Duration::from_secs(2);

/// The index of the manager shown as Leader by `node ls` through a live manager (also
/// `bench scale`'s).
pub(super) fn leader(c: &Cluster, alive: &[bool]) -> Option<usize> {
    (0..alive.len()).filter(|j| alive[*j]).find_map(|j| {
        let out = c.node(j).swarm(&["node", "ls"]);
        out.ok().then_some(())?;
        let line = out
            .stdout
            .lines()
            .find(|l| l.contains("Leader"))?
            .to_string();
        (0..alive.len()).find(|k| alive[*k] && line.contains(&format!("node{} ", k + 1)))
    })
}

/// The failover figure of the goal ("the API accepts writes again"): from `since` (the
/// leader's SIGKILL), `swarm service create -d <args>` through the live managers in turn,
/// every 20 ms, until one is acknowledged; `args(attempt)` gives the service's flags, name
/// and image. Returns the time and the number of attempts; an error past `limit`. Also
/// `bench scale`'s.
pub(super) fn until_a_write_is_acknowledged(
    c: &Cluster,
    alive: &[bool],
    since: Instant,
    limit: Duration,
    args: impl Fn(usize) -> Vec<String>,
) -> anyhow::Result<(Duration, usize)> {
    let live: Vec<usize> = (0..alive.len()).filter(|j| alive[*j]).collect();
    anyhow::ensure!(!live.is_empty(), "no live manager to write through");
    let mut attempt = 0usize;
    loop {
        let via = live[attempt % live.len()];
        attempt += 1;
        let mut cmd = vec!["service".to_string(), "create".into(), "-d".into()];
        cmd.extend(args(attempt));
        let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
        if c.node(via).swarm(&cmd).ok() {
            return Ok((since.elapsed(), attempt));
        }
        if since.elapsed() > limit {
            bail!(
                "no write acknowledged {} s after the leader died\n{}",
                limit.as_secs(),
                c.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn run(rounds: usize, port: u16) -> anyhow::Result<()> {
    crate::workspace::cargo(&["build", "-p", "swarm-cli", "-p", "tests", "--bins"])?;
    let mut c = Cluster::new(3, port)?;
    c.form(3).with_context(|| c.logs())?;
    let mut alive = vec![true; 3];
    let mut samples = Vec::new();
    for round in 0..rounds {
        std::thread::sleep(Duration::from_secs(2));
        let l = leader(&c, &alive).context("no leader before the round")?;
        let started = Instant::now();
        c.nodes[l].kill();
        alive[l] = false;
        let (took, attempt) =
            until_a_write_is_acknowledged(&c, &alive, started, Duration::from_secs(30), |a| {
                vec![
                    "--name".into(),
                    format!("failover-{round}-{a}"),
                    "sim/app".into(),
                ]
            })?;
        println!(
            "round {}: killed node{}, writes accepted again after {:.0} ms ({attempt} attempts)",
            round + 1,
            l + 1,
            took.as_secs_f64() * 1000.0
        );
        samples.push(took);
        c.nodes[l].start()?;
        alive[l] = true;
        wait_for(Duration::from_secs(30), || {
            c.node(l).swarm(&["service", "ls"]).ok()
        })?;
    }
    samples.sort();
    let median = samples[samples.len() / 2];
    let max = *samples.last().expect("at least one round");
    println!(
        "\nleader failover, {} rounds: median {:.0} ms, max {:.0} ms (target ≤ {} ms: {})",
        samples.len(),
        median.as_secs_f64() * 1000.0,
        max.as_secs_f64() * 1000.0,
        TARGET.as_millis(),
        if median <= TARGET { "met" } else { "NOT met" }
    );
    Ok(())
}
