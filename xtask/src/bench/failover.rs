//! `cargo xtask bench failover`: how long after the leader process dies the API accepts
//! writes again. Three managers on 127.0.0.1–3; each round SIGKILLs the leader, then writes
//! through the survivors until one write is acknowledged; the killed manager is restarted
//! before the next round.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tests::{wait_for, AgentClient, Cluster};

const TARGET: Duration = Duration::from_secs(2);

fn leader(c: &Cluster, alive: &[bool]) -> Option<usize> {
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
        let mut attempt = 0usize;
        let took = loop {
            let j = (0..3)
                .filter(|j| alive[*j])
                .nth(attempt % 2)
                .expect("two survivors");
            attempt += 1;
            let name = format!("failover-{round}-{attempt}");
            if c.node(j)
                .swarm(&["service", "create", "-d", "--name", &name, "sim/app"])
                .ok()
            {
                break started.elapsed();
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "no write acknowledged 30 s after the leader died\n{}",
                    c.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
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
