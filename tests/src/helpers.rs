//! What every end-to-end test uses, with the loopback harness or the lab: polling, the CLI's
//! tables and JSON, tasks that run, a task's address and hostname, a plain HTTP GET.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;

/// Polls `f` every 200 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, f: impl FnMut() -> bool) -> anyhow::Result<()> {
    poll(timeout, Duration::from_millis(200), f)
}

/// Polls `f` every `period` until it holds or `timeout` passes.
pub fn poll(
    timeout: Duration,
    period: Duration,
    mut f: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(period);
    }
}

/// Parses a table printed by the CLI into rows of columns split on runs of 2+ spaces.
pub fn table(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// The JSON the CLI prints with `--format json`.
pub fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("CLI printed invalid JSON ({e}):\n{out}"))
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Tasks that should run and do: desired RUNNING and observed RUNNING.
pub fn running(tasks: &[proto::Task]) -> Vec<&proto::Task> {
    tasks
        .iter()
        .filter(|t| {
            t.desired() == proto::TaskState::Running && t.state() == proto::TaskState::Running
        })
        .collect()
}

/// Running tasks per node id.
pub fn per_node(tasks: &[proto::Task]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for t in running(tasks) {
        *m.entry(t.node_id.clone()).or_insert(0) += 1;
    }
    m
}

/// The task's address on the network named `network` (without prefix length).
pub fn task_addr(task: &proto::Task, network: &str) -> Option<String> {
    task.networks
        .iter()
        .find(|a| a.network_name == network)
        .and_then(|a| a.addresses.first())
        .and_then(|a| a.split('/').next())
        .map(str::to_string)
}

/// Whether `ip` is in the subnet `net`/`len`.
pub fn in_subnet(ip: Ipv4Addr, (net, len): (Ipv4Addr, u32)) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(net) & mask
}

/// The hostname of a task's container, which whoami answers with: the first 12 characters of
/// the task id.
pub fn hostname(t: &proto::Task) -> String {
    t.id[..12].to_string()
}

/// A plain HTTP/1.0 GET (for /metrics), returning the body.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path} on {addr}: {head}");
    }
    Ok(body.to_string())
}
