//! Go's `time.ParseDuration` syntax, which Docker's duration flags take and which the
//! agent's flags and the CLI share.

use std::time::Duration;

/// Parses a Go `time.ParseDuration` string: "5s", "1m30s", "2160h0m0s", "1.5h", "300ms", "0".
///
/// Hand-written rather than `humantime::parse_duration`: humantime 2.4 does accept
/// "2160h0m0s", "1.5h" and "0", but it also accepts units and spaces Go does not know
/// ("1d", "5 min", weeks, months) — `--restart-delay 1d` must fail as it does in Docker,
/// with Go's error text.
/// Negative durations are rejected: no flag of ours takes one.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let invalid = || format!("time: invalid duration {s:?}");
    if s.is_empty() {
        return Err(invalid());
    }
    let mut rest = s;
    if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    } else if rest.starts_with('-') {
        return Err(format!("negative duration {s:?} is not allowed"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: f64 = 0.0; // nanoseconds
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(invalid());
        }
        let value: f64 = num.parse().map_err(|_| invalid())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale: f64 = match unit {
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            other => return Err(format!("time: unknown unit {other:?} in duration {s:?}")),
        };
        total += value * scale;
    }
    if total > u64::MAX as f64 {
        return Err(invalid());
    }
    Ok(Duration::from_nanos(total.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let s = Duration::from_secs;
        assert_eq!(parse_go_duration("5s"), Ok(s(5)));
        assert_eq!(parse_go_duration("1m30s"), Ok(s(90)));
        assert_eq!(parse_go_duration("2160h0m0s"), Ok(s(2160 * 3600)));
        assert_eq!(parse_go_duration("2160h"), Ok(s(2160 * 3600)));
        assert_eq!(parse_go_duration("1.5h"), Ok(s(5400)));
        assert_eq!(parse_go_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_go_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(
            parse_go_duration("5"),
            Err("time: missing unit in duration \"5\"".into())
        );
        assert_eq!(
            parse_go_duration("1d"),
            Err("time: unknown unit \"d\" in duration \"1d\"".into())
        );
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("abc").is_err());
        assert!(parse_go_duration("1..5s").is_err());
        assert!(parse_go_duration("-5s").is_err());
    }
}
