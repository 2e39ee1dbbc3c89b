//! `swarm service logs [OPTIONS] SERVICE|TASK`: every replica's stdout and stderr, through
//! the manager's log broker (`Logs.SubscribeLogs` on the agent socket).
//!
//! Lines are printed as Docker's CLI prints them:
//! `[<timestamp> ]<service>.<slot>.<task id>@<node><padding>    | <line>` (global tasks:
//! `<service>.<node id>.<task id>`); `--raw` drops the prefix; stderr lines go to stderr.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use proto::logs_client::LogsClient;
use proto::*;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::client::{socket_path, Client};
use crate::error::{CliError, Result};
use crate::format;
use crate::node_cmd;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Follow log output
    #[arg(short, long)]
    pub follow: bool,
    /// Do not map IDs to Names in output
    #[arg(long)]
    pub no_resolve: bool,
    /// Do not include task IDs in output
    #[arg(long)]
    pub no_task_ids: bool,
    /// Do not truncate output
    #[arg(long)]
    pub no_trunc: bool,
    /// Do not neatly format logs
    #[arg(long)]
    pub raw: bool,
    /// Show logs since timestamp (e.g. "2013-01-02T13:23:37Z") or relative (e.g. "42m" for 42 minutes)
    #[arg(long)]
    pub since: Option<String>,
    /// Number of lines to show from the end of the logs
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    /// Show timestamps
    #[arg(short, long)]
    pub timestamps: bool,
    #[arg(value_name = "SERVICE|TASK")]
    pub target: Vec<String>,
}

/// `--tail`: "all" (or a negative number) is -1, else the number of lines.
pub fn parse_tail(v: &str) -> Result<i64> {
    let v = v.trim();
    if v.eq_ignore_ascii_case("all") || v.is_empty() {
        return Ok(-1);
    }
    match v.parse::<i64>() {
        Ok(n) if n < 0 => Ok(-1),
        Ok(n) => Ok(n),
        Err(_) => Err(CliError::msg(format!(
            "invalid value {v:?} for --tail: give a number of lines or \"all\""
        ))),
    }
}

/// `--since` like Docker: a duration before now ("42m", "1h30m"), an RFC 3339 date or
/// time ("2013-01-02", "2013-01-02T13:23:37", "2013-01-02T13:23:37.5Z"; UTC unless a zone
/// is given), or Unix seconds ("1700000000", "1700000000.5"). Unix nanoseconds.
pub fn parse_since(v: &str, now: SystemTime) -> Result<i64> {
    let v = v.trim();
    let bad = || {
        CliError::msg(format!(
            "invalid value {v:?} for --since: give a duration (\"42m\"), a date or time (\"2013-01-02T13:23:37Z\") or Unix seconds"
        ))
    };
    let nanos = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    };
    if v.is_empty() {
        return Err(bad());
    }
    if let Ok(d) = humantime::parse_duration(v) {
        return Ok(nanos(now.checked_sub(d).unwrap_or(UNIX_EPOCH)));
    }
    if v.contains('-') {
        let full = if v.len() == 10 {
            format!("{v}T00:00:00Z")
        } else {
            v.to_string()
        };
        if let Ok(t) = humantime::parse_rfc3339_weak(&full) {
            return Ok(nanos(t));
        }
        // An explicit zone offset: parse the UTC time, then apply the offset.
        if let Some((t, off)) = split_offset(&full) {
            if let Ok(t) = humantime::parse_rfc3339_weak(t) {
                let ns = nanos(t) - off * 1_000_000_000;
                return Ok(ns.max(0));
            }
        }
        return Err(bad());
    }
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs: u64 = secs.parse().map_err(|_| bad())?;
    let mut ns: u32 = 0;
    if !frac.is_empty() {
        if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        ns = format!("{frac:0<9}").parse().map_err(|_| bad())?;
    }
    Ok(nanos(UNIX_EPOCH + Duration::new(secs, ns)))
}

/// `2013-01-02T13:23:37+02:00` -> (`2013-01-02T13:23:37`, 7200).
fn split_offset(v: &str) -> Option<(&str, i64)> {
    if v.len() < 6 || !v.is_char_boundary(v.len() - 6) {
        return None;
    }
    let (t, z) = v.split_at(v.len() - 6);
    let sign = match z.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = z[1..].split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    Some((t, sign * (h * 3600 + m * 60)))
}

/// What the prefix of a line shows.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    pub no_task_ids: bool,
    pub no_trunc: bool,
    pub raw: bool,
    pub timestamps: bool,
    /// Digits of the widest slot: shorter slots are padded after the node name.
    pub padding: usize,
}

/// `<service>.<slot>.<task id>@<node><padding>` (global tasks: `<service>.<node id>...`).
pub fn task_prefix(service: &str, task: &Task, node: &str, s: &Style) -> String {
    let mut name = crate::ps::task_name(service, task);
    if !s.no_task_ids {
        name.push('.');
        name.push_str(if s.no_trunc {
            &task.id
        } else {
            format::truncate_id(&task.id)
        });
    }
    let width = if task.slot != 0 {
        task.slot.to_string().len()
    } else {
        1
    };
    let pad = " ".repeat(s.padding.saturating_sub(width));
    format!("{name}@{node}{pad}")
}

/// One printed line (always ending with a newline).
pub fn render(prefix: &str, m: &LogMessage, s: &Style) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.data.len() + prefix.len() + 40);
    if s.timestamps {
        let t = UNIX_EPOCH + Duration::from_nanos(m.timestamp_ns.max(0) as u64);
        out.extend_from_slice(humantime::format_rfc3339_nanos(t).to_string().as_bytes());
        out.push(b' ');
    }
    if !s.raw {
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(b"    | ");
    }
    out.extend_from_slice(&m.data);
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out
}

/// A connection to the agent socket for the Logs service.
async fn logs_client(host: &str) -> Result<LogsClient<Channel>> {
    let path = socket_path(host)?;
    let channel = Endpoint::try_from("http://localhost")
        .map_err(|e| CliError::msg(format!("invalid endpoint: {e}")))?
        .connect_timeout(Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .map_err(|_| {
            CliError::raw(format!(
                "Cannot connect to the swarm agent at {host}: is swarm-agent running?"
            ))
        })?;
    Ok(LogsClient::new(channel))
}

/// Turns log contexts into prefixes, looking tasks up once.
struct Prefixes {
    names: crate::ps::Names,
    tasks: HashMap<String, Task>,
    cache: HashMap<(String, String, String), String>,
    resolve: bool,
    style: Style,
}

impl Prefixes {
    async fn prefix(&mut self, c: &Client, ctx: &LogContext) -> String {
        let key = (
            ctx.service_id.clone(),
            ctx.node_id.clone(),
            ctx.task_id.clone(),
        );
        if let Some(p) = self.cache.get(&key) {
            return p.clone();
        }
        if !self.tasks.contains_key(&ctx.task_id) {
            let t = c
                .control
                .clone()
                .get_task(GetTaskRequest {
                    task_id: ctx.task_id.clone(),
                })
                .await
                .map(|r| r.into_inner())
                // The task is gone: name it by its node, like a global task.
                .unwrap_or_else(|_| Task {
                    id: ctx.task_id.clone(),
                    node_id: ctx.node_id.clone(),
                    service_id: ctx.service_id.clone(),
                    ..Default::default()
                });
            self.tasks.insert(ctx.task_id.clone(), t);
        }
        let task = self.tasks.get(&ctx.task_id).cloned().unwrap_or_default();
        let (service, node) = if self.resolve {
            (
                self.names
                    .services
                    .get(&ctx.service_id)
                    .cloned()
                    .unwrap_or_else(|| ctx.service_id.clone()),
                self.names
                    .nodes
                    .get(&ctx.node_id)
                    .cloned()
                    .unwrap_or_else(|| ctx.node_id.clone()),
            )
        } else {
            (ctx.service_id.clone(), ctx.node_id.clone())
        };
        let p = task_prefix(&service, &task, &node, &self.style);
        self.cache.insert(key, p.clone());
        p
    }
}

fn digits(n: u64) -> usize {
    n.to_string().len()
}

pub async fn logs(c: &Client, a: LogsArgs, target: String) -> Result<()> {
    let tail = parse_tail(&a.tail)?;
    let since_ns = match &a.since {
        Some(v) => parse_since(v, SystemTime::now())?,
        None => 0,
    };
    let style = |padding| Style {
        no_task_ids: a.no_task_ids,
        no_trunc: a.no_trunc,
        raw: a.raw,
        timestamps: a.timestamps,
        padding,
    };
    // A service first, then a task, as Docker does.
    let (selector, padding, known) = match c
        .control
        .clone()
        .get_service(GetServiceRequest {
            service_id: target.clone(),
        })
        .await
    {
        Ok(svc) => {
            let svc = svc.into_inner();
            let replicas = match svc.spec.as_ref().and_then(|s| s.mode.as_ref()) {
                Some(service_spec::Mode::Replicated(r)) => r.replicas,
                _ => 0,
            };
            let tasks = c
                .tasks(ListTasksRequest {
                    service_ids: vec![svc.id.clone()],
                    ..Default::default()
                })
                .await?;
            let sel = LogSelector {
                service_ids: vec![svc.id],
                task_ids: vec![],
            };
            (sel, digits(replicas).max(1), tasks)
        }
        Err(s) if s.code() == Code::NotFound => {
            let task = c
                .control
                .clone()
                .get_task(GetTaskRequest {
                    task_id: target.clone(),
                })
                .await
                .map_err(|s| {
                    if s.code() == Code::NotFound {
                        CliError::msg(format!("no such task or service: {target}"))
                    } else {
                        c.err(s)
                    }
                })?
                .into_inner();
            let sel = LogSelector {
                service_ids: vec![],
                task_ids: vec![task.id.clone()],
            };
            (sel, digits(task.slot).max(1), vec![task])
        }
        Err(s) => return Err(c.err(s)),
    };
    let names = if a.raw || a.no_resolve {
        crate::ps::Names::default()
    } else {
        node_cmd::names(c).await?
    };
    let mut prefixes = Prefixes {
        names,
        tasks: known.into_iter().map(|t| (t.id.clone(), t)).collect(),
        cache: HashMap::new(),
        resolve: !a.no_resolve,
        style: style(padding),
    };
    let s = style(padding);
    let req = SubscribeLogsRequest {
        selector: Some(selector),
        options: Some(LogSubscriptionOptions {
            follow: a.follow,
            tail,
            since_ns,
            streams: vec![],
        }),
    };
    let mut stream = logs_client(&c.host)
        .await?
        .subscribe_logs(req)
        .await
        .map_err(|s| c.err(s))?
        .into_inner();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    while let Some(msg) = stream.message().await.map_err(|s| c.err(s))? {
        for m in msg.messages {
            let prefix = if s.raw {
                String::new()
            } else {
                prefixes
                    .prefix(c, &m.context.clone().unwrap_or_default())
                    .await
            };
            let line = render(&prefix, &m, &s);
            if m.stream == LogStream::Stderr as i32 {
                stderr.lock().write_all(&line)?;
            } else {
                stdout.lock().write_all(&line)?;
            }
        }
        stdout.lock().flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, slot: u64, node: &str) -> Task {
        Task {
            id: id.into(),
            slot,
            node_id: node.into(),
            ..Default::default()
        }
    }

    fn msg(data: &str, ns: i64) -> LogMessage {
        LogMessage {
            data: data.as_bytes().to_vec(),
            timestamp_ns: ns,
            ..Default::default()
        }
    }

    #[test]
    fn prefixes_read_like_docker() {
        let id = "abcdefghijklmnopqrstuvwxy";
        let s = Style {
            padding: 2,
            ..Default::default()
        };
        let t = task(id, 3, "n1");
        assert_eq!(
            task_prefix("web", &t, "node-1", &s),
            "web.3.abcdefghijkl@node-1 "
        );
        let t10 = task(id, 10, "n1");
        assert_eq!(
            task_prefix("web", &t10, "node-1", &s),
            "web.10.abcdefghijkl@node-1"
        );
        let full = Style {
            no_trunc: true,
            padding: 1,
            ..Default::default()
        };
        assert_eq!(
            task_prefix("web", &t, "node-1", &full),
            format!("web.3.{id}@node-1")
        );
        let ids = Style {
            no_task_ids: true,
            padding: 1,
            ..Default::default()
        };
        assert_eq!(task_prefix("web", &t, "node-1", &ids), "web.3@node-1");
        let global = task(id, 0, "nodeid1");
        assert_eq!(
            task_prefix("mon", &global, "node-1", &ids),
            "mon.nodeid1@node-1"
        );
    }

    #[test]
    fn lines_with_and_without_prefix_and_timestamp() {
        let s = Style::default();
        assert_eq!(
            render("web.1.abc@n1", &msg("hello\n", 0), &s),
            b"web.1.abc@n1    | hello\n"
        );
        // A line without its newline (split or unfinished) still ends the output line.
        assert_eq!(render("p", &msg("part", 0), &s), b"p    | part\n");
        let raw = Style {
            raw: true,
            ..Default::default()
        };
        assert_eq!(render("ignored", &msg("x\n", 0), &raw), b"x\n");
        let ts = Style {
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(
            render("p", &msg("x\n", 1_700_000_000_123_456_789), &ts),
            b"2023-11-14T22:13:20.123456789Z p    | x\n"
        );
    }

    #[test]
    fn tail_values() {
        assert_eq!(parse_tail("all"), Ok(-1));
        assert_eq!(parse_tail("10"), Ok(10));
        assert_eq!(parse_tail("0"), Ok(0));
        assert_eq!(parse_tail("-5"), Ok(-1));
        assert!(parse_tail("ten").is_err());
    }

    #[test]
    fn since_values() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let s = |v| parse_since(v, now);
        assert_eq!(s("42m"), Ok((1_700_000_000 - 42 * 60) * 1_000_000_000));
        assert_eq!(s("1h30m"), Ok((1_700_000_000 - 5400) * 1_000_000_000));
        assert_eq!(s("1700000000"), Ok(1_700_000_000_000_000_000));
        assert_eq!(s("1700000000.5"), Ok(1_700_000_000_500_000_000));
        assert_eq!(s("2023-11-14"), Ok(1_699_920_000_000_000_000));
        assert_eq!(s("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000_000_000));
        assert_eq!(s("2023-11-14T22:13:20"), Ok(1_700_000_000_000_000_000));
        assert_eq!(
            s("2023-11-15T00:13:20+02:00"),
            Ok(1_700_000_000_000_000_000)
        );
        assert!(s("yesterday").is_err());
        assert!(s("").is_err());
        assert!(s("2023-13-45").is_err());
    }
}
