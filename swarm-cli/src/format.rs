//! Output formatting shared by the commands: Docker's human durations, state names,
//! ids, images, ports, sizes and timestamps. Everything here is pure (the current time is
//! passed in) so that it can be unit-tested.

use std::cmp::Ordering;
use std::time::Duration;

use proto::{
    NodeAvailability, NodeState, PortConfig, PortProtocol, PublishMode, Reachability, TaskState,
};

/// Length of a truncated id, as `docker service ls` / `service ps` print them.
pub const SHORT_ID_LEN: usize = 12;

/// Docker's `service ps` ERROR column width before it is cut with an ellipsis.
pub const MAX_ERR_LEN: usize = 30;

/// The first 12 characters of an id (Docker's `stringid.TruncateID`).
pub fn truncate_id(id: &str) -> &str {
    match id.char_indices().nth(SHORT_ID_LEN) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

/// Cuts `s` to `max` characters, the last one being `…` (Docker's `formatter.Ellipsis`).
pub fn ellipsis(s: &str, max: usize) -> String {
    if max == 0 {
        return String::new();
    }
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    if max == 1 {
        return s.chars().take(1).collect();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// Upper-cases the first letter (Docker's `formatter.PrettyPrint`).
pub fn pretty(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// go-units `HumanDuration`: "Less than a second", "About a minute", "3 hours", ...
pub fn human_duration(d: Duration) -> String {
    let seconds = d.as_secs();
    if seconds < 1 {
        return "Less than a second".into();
    }
    if seconds == 1 {
        return "1 second".into();
    }
    if seconds < 60 {
        return format!("{seconds} seconds");
    }
    let minutes = seconds / 60;
    if minutes == 1 {
        return "About a minute".into();
    }
    if minutes < 60 {
        return format!("{minutes} minutes");
    }
    // Go: int(d.Hours() + 0.5)
    let hours = (d.as_secs_f64() / 3600.0 + 0.5) as u64;
    if hours == 1 {
        return "About an hour".into();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    if hours < 24 * 7 * 2 {
        return format!("{} days", hours / 24);
    }
    if hours < 24 * 30 * 2 {
        return format!("{} weeks", hours / 24 / 7);
    }
    if hours < 24 * 365 * 2 {
        return format!("{} months", hours / 24 / 30);
    }
    format!("{} years", (d.as_secs_f64() / 3600.0) as u64 / 24 / 365)
}

/// "2 minutes ago" for a timestamp (ms) seen at `now_ms`. Future timestamps count as now.
pub fn ago(now_ms: i64, ts_ms: i64) -> String {
    let d = Duration::from_millis(now_ms.saturating_sub(ts_ms).max(0) as u64);
    format!("{} ago", human_duration(d).to_lowercase())
}

/// The CURRENT STATE column of `service ps`: "Running 2 minutes ago".
pub fn current_state(state: TaskState, ts_ms: i64, now_ms: i64) -> String {
    format!("{} {}", pretty(state.display_name()), ago(now_ms, ts_ms))
}

/// "Ready", "Down", "Unknown", "Disconnected".
pub fn node_state(s: NodeState) -> &'static str {
    match s {
        NodeState::Unknown => "Unknown",
        NodeState::Down => "Down",
        NodeState::Ready => "Ready",
        NodeState::Disconnected => "Disconnected",
    }
}

/// "Active", "Pause", "Drain".
pub fn availability(a: NodeAvailability) -> &'static str {
    match a {
        NodeAvailability::Active => "Active",
        NodeAvailability::Pause => "Pause",
        NodeAvailability::Drain => "Drain",
    }
}

/// "Reachable", "Unreachable", "Unknown".
pub fn reachability(r: Reachability) -> &'static str {
    match r {
        Reachability::Unknown => "Unknown",
        Reachability::Unreachable => "Unreachable",
        Reachability::Reachable => "Reachable",
    }
}

/// MANAGER STATUS column: "Leader", the reachability, or empty for workers.
pub fn manager_status(node: &proto::Node) -> String {
    match &node.manager_status {
        None => String::new(),
        Some(m) if m.leader => "Leader".into(),
        Some(m) => reachability(Reachability::try_from(m.reachability).unwrap_or_default()).into(),
    }
}

pub fn protocol_name(p: i32) -> &'static str {
    match PortProtocol::try_from(p).unwrap_or(PortProtocol::Tcp) {
        PortProtocol::Tcp => "tcp",
        PortProtocol::Udp => "udp",
        PortProtocol::Sctp => "sctp",
    }
}

pub fn publish_mode_name(m: i32) -> &'static str {
    match PublishMode::try_from(m).unwrap_or(PublishMode::Ingress) {
        PublishMode::Ingress => "ingress",
        PublishMode::Host => "host",
    }
}

/// PORTS column of `service ls`: ingress ports only, sorted by protocol then published
/// port, consecutive ports merged into ranges (`*:8080-8081->80-81/tcp`). Ports not yet
/// given a published port are left out, as Docker does.
pub fn service_ports(ports: &[PortConfig]) -> String {
    let mut sorted: Vec<&PortConfig> = ports.iter().collect();
    sorted.sort_by(|a, b| {
        protocol_name(a.protocol)
            .cmp(protocol_name(b.protocol))
            .then(a.published_port.cmp(&b.published_port))
    });
    #[derive(Default)]
    struct Range {
        p_start: u32,
        p_end: u32,
        t_start: u32,
        t_end: u32,
        proto: &'static str,
    }
    fn show(r: &Range) -> String {
        let pub_ = if r.p_end > r.p_start {
            format!("{}-{}", r.p_start, r.p_end)
        } else {
            r.p_start.to_string()
        };
        let tgt = if r.t_end > r.t_start {
            format!("{}-{}", r.t_start, r.t_end)
        } else {
            r.t_start.to_string()
        };
        format!("*:{pub_}->{tgt}/{}", r.proto)
    }
    let mut out = Vec::new();
    let mut r = Range::default();
    for p in sorted {
        if PublishMode::try_from(p.publish_mode).unwrap_or(PublishMode::Ingress)
            != PublishMode::Ingress
        {
            continue;
        }
        let proto = protocol_name(p.protocol);
        let is_range = r.t_end != r.t_start;
        let overlaps = p.target_port <= r.t_end;
        // Same rule as Docker, including its unsigned arithmetic.
        if proto != r.proto
            || p.published_port.wrapping_sub(r.p_end) > 1
            || p.target_port.wrapping_sub(r.t_end) > 1
            || (is_range && overlaps)
        {
            if r.p_start > 0 {
                out.push(show(&r));
            }
            r = Range {
                p_start: p.published_port,
                p_end: p.published_port,
                t_start: p.target_port,
                t_end: p.target_port,
                proto,
            };
            continue;
        }
        r.p_end = p.published_port;
        r.t_end = p.target_port;
    }
    if r.p_start > 0 {
        out.push(show(&r));
    }
    out.join(", ")
}

/// PORTS column of `service ps` (host-mode ports a task published).
pub fn task_ports(ports: &[PortConfig]) -> String {
    ports
        .iter()
        .map(|p| {
            format!(
                "*:{}->{}/{}",
                p.published_port,
                p.target_port,
                protocol_name(p.protocol)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// An image reference as `service ls` shows it: a tagged reference loses its digest and
/// the `docker.io/library/` prefix; anything else is shown as written.
pub fn display_image(image: &str) -> String {
    let name_tag = image.split('@').next().unwrap_or(image);
    let last = name_tag.rsplit('/').next().unwrap_or(name_tag);
    if !last.contains(':') {
        return image.to_string();
    }
    familiar(name_tag).to_string()
}

fn familiar(name: &str) -> &str {
    if let Some(rest) = name.strip_prefix("docker.io/library/") {
        return rest;
    }
    if let Some(rest) = name.strip_prefix("docker.io/") {
        return rest;
    }
    name
}

/// Go's `%.4g` for the sizes we print: four significant digits, no trailing zeros.
fn sig4(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return "0".into();
    }
    let digits_before = x.abs().log10().floor() as i32 + 1;
    let decimals = (4 - digits_before).max(0) as usize;
    let mut s = format!("{x:.decimals$}");
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.pop();
        }
    }
    s
}

/// go-units `BytesSize`: "64MiB", "1.5GiB", "512B".
pub fn bytes_size(bytes: i64) -> String {
    const UNITS: [&str; 9] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"];
    let mut size = bytes as f64;
    let mut i = 0;
    while size >= 1024.0 && i < UNITS.len() - 1 {
        size /= 1024.0;
        i += 1;
    }
    format!("{}{}", sig4(size), UNITS[i])
}

/// Go's `time.Duration.String()`: "5s", "1m30s", "2160h0m0s", "500ms", "0s".
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        // Sub-second values use the largest unit that keeps the integer part non-zero.
        let (unit, div) = if nanos < 1_000 {
            ("ns", 1u128)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", frac(nanos, div));
    }
    let total_secs = d.as_secs();
    let h = total_secs / 3600;
    let m = (total_secs % 3600) / 60;
    let s = frac(
        u128::from(total_secs % 60) * 1_000_000_000 + u128::from(d.subsec_nanos()),
        1_000_000_000,
    );
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// `v / div` with the fraction printed without trailing zeros.
fn frac(v: u128, div: u128) -> String {
    let int = v / div;
    let rem = v % div;
    if rem == 0 {
        return int.to_string();
    }
    let width = div.to_string().len() - 1;
    let mut f = format!("{rem:0width$}");
    while f.ends_with('0') {
        f.pop();
    }
    format!("{int}.{f}")
}

/// A Unix time in ms as Go prints a `time.Time` in UTC: "2024-03-01 12:30:05.123 +0000 UTC".
pub fn timestamp(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    let frac = if millis == 0 {
        String::new()
    } else {
        let mut f = format!(".{millis:03}");
        while f.ends_with('0') {
            f.pop();
        }
        f
    };
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}{frac} +0000 UTC",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Natural ordering ("web.2" before "web.10"), as `sortorder.NaturalLess` in the Docker CLI:
/// digit runs compare by value (fewer leading zeros first on ties), digits sort before
/// other characters, everything else compares bytewise.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (da, db) = (a[i].is_ascii_digit(), b[j].is_ascii_digit());
        if da != db {
            return if da {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        if !da {
            if a[i] != b[j] {
                return a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
            continue;
        }
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        let (nz_a, nz_b) = (i, j);
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let (la, lb) = (i - nz_a, j - nz_b);
        if la != lb {
            return la.cmp(&lb);
        }
        let (na, nb) = (&a[nz_a..i], &b[nz_b..j]);
        if na != nb {
            return na.cmp(nb);
        }
        if nz_a != nz_b {
            return nz_a.cmp(&nz_b);
        }
    }
    // Identical so far: Go compares the total lengths.
    a.len().cmp(&b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_match_go_units() {
        let s = Duration::from_secs;
        assert_eq!(
            human_duration(Duration::from_millis(450)),
            "Less than a second"
        );
        assert_eq!(human_duration(s(1)), "1 second");
        assert_eq!(human_duration(s(47)), "47 seconds");
        assert_eq!(human_duration(s(60)), "About a minute");
        assert_eq!(human_duration(s(119)), "About a minute");
        assert_eq!(human_duration(s(180)), "3 minutes");
        assert_eq!(human_duration(s(35 * 60 + 40)), "35 minutes");
        assert_eq!(human_duration(s(3600)), "About an hour");
        assert_eq!(human_duration(s(3600 + 29 * 60)), "About an hour");
        assert_eq!(human_duration(s(3600 + 31 * 60)), "2 hours");
        assert_eq!(human_duration(s(24 * 3600)), "24 hours");
        assert_eq!(human_duration(s(36 * 3600)), "36 hours");
        assert_eq!(human_duration(s(2 * 86_400)), "2 days");
        assert_eq!(human_duration(s(13 * 86_400 + 5 * 3600)), "13 days");
        assert_eq!(human_duration(s(14 * 86_400)), "2 weeks");
        assert_eq!(human_duration(s(30 * 86_400)), "4 weeks");
        assert_eq!(human_duration(s(60 * 86_400)), "2 months");
        assert_eq!(human_duration(s(24 * 30 * 86_400)), "24 months");
        assert_eq!(human_duration(s((24 * 30 + 14) * 86_400)), "2 years");
        assert_eq!(human_duration(s((3 * 365 + 60) * 86_400)), "3 years");
    }

    #[test]
    fn current_state_reads_like_docker() {
        let now = 1_000_000_000;
        assert_eq!(
            current_state(TaskState::Running, now - 125_000, now),
            "Running 2 minutes ago"
        );
        assert_eq!(
            current_state(TaskState::Running, now - 70_000, now),
            "Running about a minute ago"
        );
        assert_eq!(
            current_state(TaskState::Pending, now - 10, now),
            "Pending less than a second ago"
        );
        assert_eq!(
            current_state(TaskState::Shutdown, now + 5_000, now),
            "Shutdown less than a second ago"
        );
        assert_eq!(
            current_state(TaskState::Failed, now - 3 * 3_600_000, now),
            "Failed 3 hours ago"
        );
    }

    #[test]
    fn ids_and_errors_are_truncated() {
        assert_eq!(truncate_id("abcdefghijklmnopqrstuvwxy"), "abcdefghijkl");
        assert_eq!(truncate_id("abc"), "abc");
        let err = "no suitable node (scheduling constraints not satisfied on 1 node)";
        assert_eq!(ellipsis(err, MAX_ERR_LEN), "no suitable node (scheduling …");
        assert_eq!(ellipsis(err, MAX_ERR_LEN).chars().count(), 30);
        assert_eq!(ellipsis("short", MAX_ERR_LEN), "short");
        assert_eq!(ellipsis("abc", 1), "a");
        assert_eq!(ellipsis("abc", 0), "");
    }

    #[test]
    fn states_are_capitalized() {
        assert_eq!(pretty("running"), "Running");
        assert_eq!(pretty(""), "");
        assert_eq!(node_state(NodeState::Ready), "Ready");
        assert_eq!(availability(NodeAvailability::Drain), "Drain");
        let mut n = proto::Node::default();
        assert_eq!(manager_status(&n), "");
        n.manager_status = Some(proto::ManagerStatus {
            leader: true,
            ..Default::default()
        });
        assert_eq!(manager_status(&n), "Leader");
        n.manager_status = Some(proto::ManagerStatus {
            reachability: Reachability::Unreachable as i32,
            ..Default::default()
        });
        assert_eq!(manager_status(&n), "Unreachable");
    }

    fn port(published: u32, target: u32, proto: PortProtocol, mode: PublishMode) -> PortConfig {
        PortConfig {
            published_port: published,
            target_port: target,
            protocol: proto as i32,
            publish_mode: mode as i32,
            ..Default::default()
        }
    }

    #[test]
    fn service_ports_merge_ranges_like_docker() {
        use PortProtocol::*;
        use PublishMode::*;
        assert_eq!(
            service_ports(&[port(30000, 80, Tcp, Ingress)]),
            "*:30000->80/tcp"
        );
        assert_eq!(
            service_ports(&[
                port(8081, 81, Tcp, Ingress),
                port(8080, 80, Tcp, Ingress),
                port(53, 53, Udp, Ingress),
                port(9000, 9000, Tcp, Host),
            ]),
            "*:8080-8081->80-81/tcp, *:53->53/udp"
        );
        assert_eq!(
            service_ports(&[port(8080, 80, Tcp, Ingress), port(9090, 90, Tcp, Ingress)]),
            "*:8080->80/tcp, *:9090->90/tcp"
        );
        // Not allocated yet: not shown.
        assert_eq!(service_ports(&[port(0, 80, Tcp, Ingress)]), "");
        assert_eq!(service_ports(&[]), "");
    }

    #[test]
    fn task_ports_list_every_port() {
        assert_eq!(
            task_ports(&[
                port(8080, 80, PortProtocol::Tcp, PublishMode::Host),
                port(53, 53, PortProtocol::Udp, PublishMode::Host)
            ]),
            "*:8080->80/tcp,*:53->53/udp"
        );
    }

    #[test]
    fn images_lose_digest_when_tagged() {
        assert_eq!(display_image("nginx:1.25@sha256:abcd"), "nginx:1.25");
        assert_eq!(
            display_image("docker.io/library/nginx:latest"),
            "nginx:latest"
        );
        assert_eq!(display_image("nginx@sha256:abcd"), "nginx@sha256:abcd");
        assert_eq!(display_image("nginx"), "nginx");
        assert_eq!(display_image("localhost:5000/app"), "localhost:5000/app");
        assert_eq!(
            display_image("localhost:5000/app:v1"),
            "localhost:5000/app:v1"
        );
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(bytes_size(512), "512B");
        assert_eq!(bytes_size(64 * 1024 * 1024), "64MiB");
        assert_eq!(bytes_size(1536 * 1024 * 1024), "1.5GiB");
        assert_eq!(bytes_size(8_294_967_296), "7.725GiB");
        assert_eq!(bytes_size(0), "0B");
    }

    #[test]
    fn go_durations_print_like_go() {
        assert_eq!(go_duration(Duration::from_secs(5)), "5s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(2160 * 3600)), "2160h0m0s");
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(
            timestamp(1_709_296_205_120),
            "2024-03-01 12:30:05.12 +0000 UTC"
        );
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["web.10", "web.2", "web.1", "api.3", "web.02"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["api.3", "web.1", "web.2", "web.02", "web.10"]);
        assert_eq!(natural_cmp("node1", "node1"), Ordering::Equal);
        assert_eq!(natural_cmp("node", "node1"), Ordering::Less);
        assert_eq!(natural_cmp("a1", "ab"), Ordering::Less);
    }
}
