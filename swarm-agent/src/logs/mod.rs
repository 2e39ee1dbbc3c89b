//! Task logs on the node.
//!
//! - [`driver`]: the containerd "binary" log driver. containerd's shim starts
//!   `swarm-agent log-driver <task dir>` for each task; it writes the container's stdout
//!   and stderr to `<task dir>/container.log` in Docker's json-file format.
//! - [`reader`]: reads those files back (tail, since) and follows them.
//! - [`publisher`]: serves the leader's log subscriptions (`swarm service logs`).

pub mod driver;
pub mod publisher;
pub mod reader;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The current log file of a task, in its task directory.
pub const LOG_FILE: &str = "container.log";
/// The previous log file, kept after a rotation.
pub const ROTATED_FILE: &str = "container.log.1";
/// A log file is rotated when it would grow past this size.
pub const MAX_FILE_SIZE: u64 = 10 * 1024 * 1024;
/// Longer lines are split into entries of this size (like Docker's json-file driver).
pub const MAX_LINE: usize = 16 * 1024;

/// Which output of the container a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    pub fn parse(s: &str) -> Option<Stream> {
        match s {
            "stdout" => Some(Stream::Stdout),
            "stderr" => Some(Stream::Stderr),
            _ => None,
        }
    }

    pub fn to_proto(self) -> proto::LogStream {
        match self {
            Stream::Stdout => proto::LogStream::Stdout,
            Stream::Stderr => proto::LogStream::Stderr,
        }
    }
}

/// One entry of a log file: a line (with its `\n`), or a 16 KiB piece of a longer one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub stream: Stream,
    pub time: SystemTime,
    pub data: Vec<u8>,
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Go's RFC3339Nano in UTC, as Docker's json-file driver writes it:
/// `2024-05-01T12:00:00.5Z` (trailing zeros of the fraction dropped). Times before
/// 1970 are written as the epoch.
pub fn format_rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (y, mo, day) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let mut s = format!(
        "{y:04}-{mo:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    let nanos = d.subsec_nanos();
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses an RFC 3339 time (`YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    if s.len() < 20 || !s.is_char_boundary(10) || !s.is_char_boundary(19) {
        return None;
    }
    let (date, rest) = s.split_at(10);
    let sep = rest.as_bytes()[0];
    if sep != b'T' && sep != b't' && sep != b' ' {
        return None;
    }
    let (clock, mut rest) = rest[1..].split_at(8);
    let mut dp = date.split('-');
    let (y, mo, d) = (
        digits(dp.next()?)?,
        digits(dp.next()?)?,
        digits(dp.next()?)?,
    );
    let mut cp = clock.split(':');
    let (h, mi, sec) = (
        digits(cp.next()?)?,
        digits(cp.next()?)?,
        digits(cp.next()?)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut nanos: u32 = 0;
    if let Some(r) = rest.strip_prefix('.') {
        let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        if end == 0 {
            return None;
        }
        let frac = &r[..end.min(9)];
        nanos = digits(frac)? * 10u32.pow(9 - frac.len() as u32);
        rest = &r[end..];
    }
    let offset: i64 = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let oh = i64::from(digits(&rest[1..3])?);
            let om = i64::from(digits(&rest[4..6])?);
            if &rest[3..4] != ":" {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if rest.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(i64::from(y), mo, d) * 86_400
        + i64::from(h) * 3600
        + i64::from(mi) * 60
        + i64::from(sec)
        - offset;
    if secs < 0 {
        return Some(UNIX_EPOCH);
    }
    Some(UNIX_EPOCH + Duration::new(secs as u64, nanos))
}

/// Unix nanoseconds of a time (0 before 1970, saturating far in the future).
pub fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The time of Unix nanoseconds (`None` for 0 or less: no time given).
pub fn from_unix_nanos(ns: i64) -> Option<SystemTime> {
    (ns > 0).then(|| UNIX_EPOCH + Duration::from_nanos(ns as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_like_go() {
        let t = UNIX_EPOCH + Duration::new(1_714_564_800, 500_000_000);
        assert_eq!(format_rfc3339_nano(t), "2024-05-01T12:00:00.5Z");
        assert_eq!(parse_rfc3339("2024-05-01T12:00:00.5Z"), Some(t));
        let t = UNIX_EPOCH + Duration::new(951_782_400, 123_456_789);
        assert_eq!(format_rfc3339_nano(t), "2000-02-29T00:00:00.123456789Z");
        assert_eq!(parse_rfc3339(&format_rfc3339_nano(t)), Some(t));
        assert_eq!(format_rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            parse_rfc3339("2024-05-01T14:00:00+02:00"),
            Some(UNIX_EPOCH + Duration::from_secs(1_714_564_800))
        );
        for bad in [
            "",
            "2024-05-01",
            "2024-13-01T00:00:00Z",
            "2024-05-01T00:00:00",
            "x024-05-01T00:00:00Z",
            "2024-05-01T00:00:00.Z",
            "2024-05-01T00:00:00+0200",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        for days in [-1000, 0, 59, 60, 365, 10_957, 19_844, 100_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
