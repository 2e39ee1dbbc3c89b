//! `cargo xtask test`: what CI runs. Installs what the build and the tests need when it is
//! missing ([`crate::setup`]), builds every binary the end-to-end tests start and the static
//! whoami binary of the lab's test images, then runs the whole suite; then every fuzz target
//! for a bounded time after replaying its committed inputs ([`crate::fuzz::ci`]); then the data-plane
//! tests again with legacy tc forced (clsact filters on this kernel with TCX), the overlay and
//! VIP lab tests again with every agent as a container, the data-plane tests in a VM with
//! Debian 12's 6.1 kernel ([`crate::vm`]), and the power-loss test in that VM
//! ([`crate::powerloss`]).

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    crate::setup::ensure()?;
    build_for_tests()?;
    // xtask's own tests (the benchmarks' pure parts) need its full feature set.
    let mut args = vec![
        "test",
        "--workspace",
        "--no-fail-fast",
        "--features",
        "xtask/lab",
    ];
    args.extend(extra.iter().map(String::as_str));
    crate::workspace::cargo(&args)?;
    crate::fuzz::ci()?;
    legacy_tc()?;
    agent_containers()?;
    crate::vm::run()?;
    crate::powerloss::run(false)
}

/// Every binary the end-to-end tests start, and the lab's test images.
pub fn build_for_tests() -> anyhow::Result<()> {
    crate::workspace::cargo(&["build", "--workspace", "--bins"])?;
    // The lab tests make their `whoami` image from the static musl binary; a test must not run
    // cargo itself (the test run holds the build lock), so it is built here, by the full xtask.
    crate::workspace::cargo(&[
        "run",
        "--quiet",
        "--package",
        "xtask",
        "--features",
        "lab",
        "--",
        "images",
        "build",
    ])
}

/// swarm-agent's data-plane tests with the programs attached as clsact filters
/// (`SWARM_TEST_TC_ATTACH=legacy`), the way kernels before 6.6 run them.
fn legacy_tc() -> anyhow::Result<()> {
    println!("the data-plane tests again with legacy tc (clsact filters)");
    let bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(&bin)
        .args(["test", "-p", "swarm-agent", "--lib", "--"])
        .args(["--test-threads=1", "network::tests::", "network::probe::"])
        .env("SWARM_TEST_TC_ATTACH", "legacy")
        .current_dir(crate::workspace::workspace_root())
        .status()?;
    if !status.success() {
        anyhow::bail!("swarm-agent's data-plane tests with legacy tc failed ({status})");
    }
    Ok(())
}

/// The lab tests of the overlay and of service VIPs again with every node's agent run as the
/// agent image's container (`SWARM_LAB_AGENT=container`); the upgrade test
/// (`tests/agent_container.rs`) runs in that mode in the suite itself.
fn agent_containers() -> anyhow::Result<()> {
    println!("the overlay and VIP lab tests again with every agent as a container");
    let bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(&bin)
        .args([
            "test", "-p", "tests", "--test", "overlay", "--test", "services", "--",
        ])
        .args(["--test-threads=1", "--exact"])
        .args(AGENT_CONTAINER_TESTS)
        .env("SWARM_LAB_AGENT", "container")
        .current_dir(crate::workspace::workspace_root())
        .status()?;
    if !status.success() {
        anyhow::bail!("the lab tests with the agents as containers failed ({status})");
    }
    Ok(())
}

/// The overlay and VIP tests run again in agent-container mode.
const AGENT_CONTAINER_TESTS: &[&str] = &[
    "tasks_reach_each_other_across_nodes_networks_stay_apart_and_moved_tasks_follow",
    "names_resolve_and_requests_spread_over_every_replica_from_a_node_without_one",
];
