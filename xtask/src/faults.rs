//! `cargo xtask faults --seeds N --minutes M [--seed S]`: the long fault suite (issue 15):
//! the test `tests/tests/faults.rs` run with N seeds (new ones, printed; or the one given to
//! replay a failure), M minutes of faults each, its progress shown as it goes (every fault,
//! the operations so far) and, per seed, the faults, operations and the checker's verdicts.

use anyhow::Context;

pub fn run(seeds: u64, minutes: u64, seed: Option<u64>) -> anyhow::Result<()> {
    anyhow::ensure!(minutes > 0, "--minutes must be at least 1");
    let list: Vec<u64> = match seed {
        Some(s) => vec![s],
        None => {
            anyhow::ensure!(seeds > 0, "--seeds must be at least 1");
            let base = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("the clock is before 1970")?
                .as_secs();
            (0..seeds).map(|i| base * 1000 + i).collect()
        }
    };
    let shown: Vec<String> = list.iter().map(u64::to_string).collect();
    println!(
        "fault suite: seeds {} ({minutes} min of faults each); replay one with `cargo xtask faults --seed N --minutes {minutes}`",
        shown.join(", ")
    );
    crate::setup::ensure()?;
    // The daemon with the simulated executor and the CLI the runs start.
    crate::workspace::cargo(&["build", "-p", "tests", "-p", "swarm-cli", "--bins"])?;
    let bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(&bin)
        .args(["test", "-p", "tests", "--test", "faults", "--"])
        .args(["--nocapture", "--test-threads=1"])
        .env("SWARM_FAULT_SEEDS", shown.join(","))
        .env("SWARM_FAULT_SECONDS", (minutes * 60).to_string())
        .current_dir(crate::workspace::workspace_root())
        .status()
        .with_context(|| format!("starting {bin}"))?;
    anyhow::ensure!(
        status.success(),
        "the fault suite failed ({status}): see the seeds above"
    );
    Ok(())
}
