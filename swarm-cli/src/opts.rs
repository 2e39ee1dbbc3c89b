//! Parsers for flag values, with Docker's syntax and error texts: Go durations, memory
//! sizes, CPU counts, published ports, `KEY=VALUE` lists.

use std::collections::BTreeMap;

use proto::{NodeAvailability, PortConfig, PortProtocol, PublishMode};

pub use swarm_common::duration::parse_go_duration;

/// Milliseconds of a Go duration string (what the protos carry).
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let d = parse_go_duration(s)?;
    i64::try_from(d.as_millis()).map_err(|_| format!("duration {s:?} is too large"))
}

/// go-units `RAMInBytes`: "64M", "64MiB", "1.5G", "512k", "100" (bytes), "100b".
/// Units are binary and case-insensitive.
pub fn parse_memory(s: &str) -> Result<i64, String> {
    let invalid = || format!("invalid size: '{s}'");
    let num_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let num = &s[..num_len];
    if num.is_empty() || !num.starts_with(|c: char| c.is_ascii_digit()) || num.ends_with('.') {
        return Err(invalid());
    }
    let value: f64 = num.parse().map_err(|_| invalid())?;
    let mut rest = s[num_len..].to_ascii_lowercase();
    if let Some(r) = rest.strip_prefix(' ') {
        rest = r.to_string();
    }
    let mut chars = rest.as_str();
    let mut mul: f64 = 1.0;
    if let Some(c) = chars.chars().next() {
        let m = match c {
            'k' => Some(1024f64),
            'm' => Some(1024f64.powi(2)),
            'g' => Some(1024f64.powi(3)),
            't' => Some(1024f64.powi(4)),
            'p' => Some(1024f64.powi(5)),
            _ => None,
        };
        if let Some(m) = m {
            mul = m;
            chars = &chars[1..];
        }
    }
    let chars = chars.strip_prefix('i').unwrap_or(chars);
    let chars = chars.strip_prefix('b').unwrap_or(chars);
    if !chars.is_empty() {
        return Err(invalid());
    }
    let bytes = value * mul;
    if bytes > i64::MAX as f64 {
        return Err(invalid());
    }
    Ok(bytes as i64)
}

/// A CPU count ("0.5", "2") as nano CPUs, at most nine decimals (Docker's `NanoCPUs`).
pub fn parse_cpus(s: &str) -> Result<i64, String> {
    let bad = || format!("failed to parse {s} as a rational number");
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if (int.is_empty() && frac.is_empty())
        || !int.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    if frac.len() > 9 {
        return Err("value is too precise".into());
    }
    let int: i64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let frac_nanos: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().map_err(|_| bad())?
    };
    int.checked_mul(1_000_000_000)
        .and_then(|v| v.checked_add(frac_nanos))
        .ok_or_else(bad)
}

fn parse_protocol(p: &str) -> Result<PortProtocol, String> {
    match p {
        "tcp" => Ok(PortProtocol::Tcp),
        "udp" => Ok(PortProtocol::Udp),
        "sctp" => Ok(PortProtocol::Sctp),
        other => Err(format!("invalid protocol value {other}")),
    }
}

fn parse_port(p: &str, what: &str) -> Result<u32, String> {
    p.parse::<u16>()
        .map(u32::from)
        .map_err(|_| format!("invalid {what} port {p:?}: expected a number between 0 and 65535"))
}

/// "80" or "8080-8081" as an inclusive range.
fn parse_range(p: &str, what: &str) -> Result<(u32, u32), String> {
    match p.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse_port(a, what)?, parse_port(b, what)?);
            if b < a {
                return Err(format!("invalid {what} port range {p:?}"));
            }
            Ok((a, b))
        }
        None => {
            let v = parse_port(p, what)?;
            Ok((v, v))
        }
    }
}

/// A `--publish` value, in the short syntax (`8080:80`, `8080:80/udp`, `80`,
/// `8080-8081:80-81`) or the long one (`mode=host,published=8080,target=80,protocol=udp`,
/// plus our `source-ip=preserve|nat` for ingress mode). A published port of 0 asks the
/// daemon to pick one. Ports the data plane cannot carry are refused (see
/// [`check_publishable`]).
pub fn parse_publish(v: &str) -> Result<Vec<PortConfig>, String> {
    let ports = parse_publish_fields(v)?;
    for p in &ports {
        check_publishable(p)?;
    }
    Ok(ports)
}

/// What the data plane cannot publish yet (the managers refuse it too): SCTP, host-mode
/// ports without a published port. `source-ip` is checked while parsing (it is only
/// refused with `mode=host` when given).
fn check_publishable(p: &PortConfig) -> Result<(), String> {
    if p.protocol == PortProtocol::Sctp as i32 {
        return Err(format!(
            "port {}/sctp: sctp ports cannot be published yet: the data plane carries tcp and udp only; publish the port over tcp or udp",
            p.target_port
        ));
    }
    if p.publish_mode == PublishMode::Host as i32 && p.published_port == 0 {
        return Err(format!(
            "mode=host needs a published port: dynamic host ports are not supported yet; give the port to publish on each node with published=P (mode=host,published=P,target={})",
            p.target_port
        ));
    }
    Ok(())
}

/// [`parse_publish`] without the data-plane checks: the syntax only (`--publish-rm`
/// matches ports with it).
pub fn parse_publish_fields(v: &str) -> Result<Vec<PortConfig>, String> {
    if v.contains('=') {
        let mut pc = PortConfig::default();
        let mut target = None;
        let mut source_ip = None;
        for field in v.split(',') {
            let (key, val) = match field.split_once('=') {
                Some((k, val)) if !k.is_empty() => (k.trim(), val.trim()),
                _ => return Err(format!("invalid field {field}")),
            };
            match key {
                "protocol" => pc.protocol = parse_protocol(val)? as i32,
                "mode" => {
                    pc.publish_mode = match val {
                        "ingress" => PublishMode::Ingress,
                        "host" => PublishMode::Host,
                        other => return Err(format!("invalid publish mode value {other}")),
                    } as i32
                }
                "target" => target = Some(parse_port(val, "target")?),
                "published" => pc.published_port = parse_port(val, "published")?,
                "source-ip" => {
                    source_ip = Some(match val {
                        "preserve" => true,
                        "nat" => false,
                        other => {
                            return Err(format!(
                                "invalid source-ip value {other}: use preserve (the task sees the client's address) or nat (the default)"
                            ))
                        }
                    })
                }
                other => return Err(format!("invalid field key {other}")),
            }
        }
        match target {
            Some(t) if t > 0 => pc.target_port = t,
            _ => return Err("missing mandatory field \"target\"".into()),
        }
        if let Some(preserve) = source_ip {
            if pc.publish_mode == PublishMode::Host as i32 {
                return Err("source-ip only applies to mode=ingress: a host-mode port already reaches the task straight from the client, with the client's address; drop source-ip or use mode=ingress".into());
            }
            pc.preserve_source_ip = preserve;
        }
        return Ok(vec![pc]);
    }
    let (ports, proto) = match v.split_once('/') {
        Some((p, proto)) => (p, parse_protocol(proto)?),
        None => (v, PortProtocol::Tcp),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (published, target) = match parts.as_slice() {
        [t] => (None, parse_range(t, "target")?),
        [p, t] => (
            if p.is_empty() {
                None
            } else {
                Some(parse_range(p, "published")?)
            },
            parse_range(t, "target")?,
        ),
        [_, _, _] => return Err("hostip is not supported".into()),
        _ => return Err(format!("invalid port format {v:?}")),
    };
    if target.0 == 0 {
        return Err(format!(
            "invalid port format {v:?}: the target port cannot be 0"
        ));
    }
    let count = target.1 - target.0 + 1;
    if let Some(p) = published {
        if p.1 - p.0 + 1 != count {
            return Err(format!(
                "invalid ranges specified for container and host Ports: {} and {}",
                ports.rsplit(':').next().unwrap_or(""),
                ports.split(':').next().unwrap_or("")
            ));
        }
    }
    Ok((0..count)
        .map(|i| PortConfig {
            protocol: proto as i32,
            target_port: target.0 + i,
            published_port: match published {
                None => 0,
                Some(p) => p.0 + i,
            },
            publish_mode: PublishMode::Ingress as i32,
            ..Default::default()
        })
        .collect())
}

/// An `--env` entry: `K=V` as is; a bare `K` takes the value of the CLI's own environment
/// when it is set (Docker's `ValidateEnv`).
pub fn parse_env(v: &str) -> Result<String, String> {
    if v.is_empty() || v.starts_with('=') {
        return Err(format!("invalid environment variable: {v}"));
    }
    if v.contains('=') {
        return Ok(v.to_string());
    }
    Ok(match std::env::var(v) {
        Ok(val) => format!("{v}={val}"),
        Err(_) => v.to_string(),
    })
}

/// The variable name of an env entry.
pub fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

/// `k=v` or `k` (empty value) labels into a map.
pub fn parse_labels(list: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for l in list {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        if k.is_empty() {
            return Err(format!("invalid label {l:?}: the key cannot be empty"));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// `spread=node.labels.zone` → the spread descriptor.
pub fn parse_placement_pref(v: &str) -> Result<String, String> {
    match v.split_once('=') {
        Some(("spread", d)) if !d.is_empty() => Ok(d.to_string()),
        Some((strategy, _)) if strategy != "spread" => Err(format!(
            "unsupported placement preference {strategy} (only spread is supported)"
        )),
        _ => Err("placement preference must be of the format \"<strategy>=<arg>\"".into()),
    }
}

pub fn parse_availability(v: &str) -> Result<NodeAvailability, String> {
    match v.to_ascii_lowercase().as_str() {
        "active" => Ok(NodeAvailability::Active),
        "pause" => Ok(NodeAvailability::Pause),
        "drain" => Ok(NodeAvailability::Drain),
        _ => Err(format!(
            "invalid availability {v:?}, only active, pause and drain are supported"
        )),
    }
}

/// Go's `strconv.ParseUint` (base 10), with its error text.
pub fn parse_go_uint(s: &str) -> Result<u64, String> {
    if s.starts_with('+') {
        return Err(format!("strconv.ParseUint: parsing {s:?}: invalid syntax"));
    }
    s.parse::<u64>().map_err(|e| {
        let why = if matches!(e.kind(), std::num::IntErrorKind::PosOverflow) {
            "value out of range"
        } else {
            "invalid syntax"
        };
        format!("strconv.ParseUint: parsing {s:?}: {why}")
    })
}

/// Go's `strconv.ParseFloat` (32 bits), with its error text.
pub fn parse_go_float(s: &str) -> Result<f32, String> {
    s.parse::<f32>()
        .map_err(|_| format!("strconv.ParseFloat: parsing {s:?}: invalid syntax"))
}

/// `--update-failure-action` / `--rollback-failure-action` (Docker's daemon error text).
pub fn parse_failure_action(which: &str, v: &str) -> Result<proto::UpdateFailureAction, String> {
    match v {
        "pause" => Ok(proto::UpdateFailureAction::Pause),
        "continue" => Ok(proto::UpdateFailureAction::Continue),
        "rollback" if which == "update" => Ok(proto::UpdateFailureAction::Rollback),
        other => Err(format!("unrecognized {which} failure action {other}")),
    }
}

/// `--update-order` / `--rollback-order` (Docker's daemon error text).
pub fn parse_update_order(which: &str, v: &str) -> Result<proto::UpdateOrder, String> {
    match v {
        "stop-first" => Ok(proto::UpdateOrder::StopFirst),
        "start-first" => Ok(proto::UpdateOrder::StartFirst),
        other => Err(format!("unrecognized {which} order {other}")),
    }
}

pub fn parse_restart_condition(v: &str) -> Result<proto::RestartCondition, String> {
    match v {
        "any" => Ok(proto::RestartCondition::Any),
        "on-failure" => Ok(proto::RestartCondition::OnFailure),
        "none" => Ok(proto::RestartCondition::None),
        other => Err(format!(
            "invalid restart condition {other:?}, only any, on-failure and none are supported"
        )),
    }
}

pub fn parse_endpoint_mode(v: &str) -> Result<proto::EndpointMode, String> {
    match v {
        "vip" => Ok(proto::EndpointMode::Vip),
        "dnsrr" => Ok(proto::EndpointMode::Dnsrr),
        other => Err(format!(
            "invalid endpoint mode {other:?}, only vip and dnsrr are supported"
        )),
    }
}

/// `service scale` argument `NAME=REPLICAS`.
pub fn parse_scale(v: &str) -> Option<(String, u64)> {
    let (name, n) = v.split_once('=')?;
    if name.is_empty() {
        return None;
    }
    Some((name.to_string(), n.parse().ok()?))
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Splits a CSV record the way Go's `encoding/csv` does for one line: commas separate
/// fields, a field that starts with `"` is quoted (`""` is a literal quote).
fn split_csv(v: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = v.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err(format!("invalid mount value {v:?}: unterminated quote")),
                }
            }
            match chars.next() {
                None => {
                    out.push(field);
                    return Ok(out);
                }
                Some(',') => out.push(field),
                Some(_) => {
                    return Err(format!(
                        "invalid mount value {v:?}: extraneous characters after a quoted field"
                    ))
                }
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        out.push(field);
                        return Ok(out);
                    }
                    Some(',') => break,
                    Some(c) => field.push(c),
                }
            }
            out.push(field);
        }
    }
}

/// A `--secret`/`--config` value: the object's name and where its file goes.
#[derive(Clone, Debug, PartialEq)]
pub struct FileReference {
    pub source: String,
    pub file: proto::FileTarget,
}

/// A `--secret` or `--config` value with Docker's syntax (SecretOpt/ConfigOpt): `NAME`, or
/// CSV fields `source|src=NAME[,target=PATH][,uid=N][,gid=N][,mode=0400]`. The target
/// defaults to the name, the owner to 0:0, the mode to 0444; the mode is read like Go's
/// `ParseUint(v, 0, 32)` (`0400` octal, `0o400`, `0x100`, `256`).
pub fn parse_file_reference(v: &str) -> Result<FileReference, String> {
    let mut r = FileReference {
        source: String::new(),
        file: proto::FileTarget {
            name: String::new(),
            uid: "0".into(),
            gid: "0".into(),
            mode: 0o444,
        },
    };
    let fields = split_csv(v)?;
    if let [only] = fields.as_slice() {
        if !only.contains('=') {
            r.source = only.clone();
            r.file.name = only.clone();
            return Ok(r);
        }
    }
    for field in &fields {
        let Some((key, val)) = field.split_once('=') else {
            return Err(format!("invalid field '{field}' must be a key=value pair"));
        };
        match key.to_ascii_lowercase().as_str() {
            "source" | "src" => r.source = val.to_string(),
            "target" => r.file.name = val.to_string(),
            "uid" => r.file.uid = val.to_string(),
            "gid" => r.file.gid = val.to_string(),
            "mode" => {
                let parsed = if let Some(hex) =
                    val.strip_prefix("0x").or_else(|| val.strip_prefix("0X"))
                {
                    u32::from_str_radix(hex, 16)
                } else if let Some(oct) = val.strip_prefix("0o").or_else(|| val.strip_prefix("0O"))
                {
                    u32::from_str_radix(oct, 8)
                } else if val.len() > 1 && val.starts_with('0') {
                    u32::from_str_radix(&val[1..], 8)
                } else {
                    val.parse::<u32>()
                };
                r.file.mode = parsed.map_err(|_| format!("invalid mode specified: {val:?}"))?;
            }
            _ => return Err(format!("invalid field key {key}")),
        }
    }
    if r.source.is_empty() {
        return Err("source is required".into());
    }
    if r.file.name.is_empty() {
        r.file.name = r.source.clone();
    }
    Ok(r)
}

/// A `--mount` value with Docker's syntax and error texts (`type=bind,source=/x,target=/y
/// [,readonly][,bind-propagation=rslave]`, `type=volume[,source=NAME],target=/t
/// [,volume-nocopy][,volume-label=K=V][,volume-driver=local]`, `type=tmpfs,target=/t
/// [,tmpfs-size=64m][,tmpfs-mode=1770]`). As in Docker the type defaults to `volume`; other
/// drivers than `local`, `volume-opt` and the other types Docker knows are refused.
pub fn parse_mount(v: &str) -> Result<proto::Mount, String> {
    let mut m = proto::Mount::default();
    let mut kind = String::from("volume");
    let (mut bind_opts, mut volume_opts, mut tmpfs_opts) = (false, false, false);
    for field in split_csv(v)? {
        let (key, val) = match field.split_once('=') {
            Some((k, val)) => (k.to_ascii_lowercase(), val),
            None => {
                match field.to_ascii_lowercase().as_str() {
                    "readonly" | "ro" => m.read_only = true,
                    "volume-nocopy" => {
                        volume_opts = true;
                        m.volume_nocopy = true;
                    }
                    "bind-nonrecursive" => {
                        return Err("bind-nonrecursive is not supported yet".into())
                    }
                    _ => return Err(format!("invalid field '{field}' must be a key=value pair")),
                }
                continue;
            }
        };
        let invalid = || format!("invalid value for {key}: {val}");
        match key.as_str() {
            "type" => kind = val.to_ascii_lowercase(),
            "source" | "src" => {
                m.source = val.to_string();
                if val == "." || val.starts_with("./") {
                    if let Ok(abs) = std::path::absolute(val) {
                        m.source = abs.to_string_lossy().into_owned();
                    }
                }
            }
            "target" | "dst" | "destination" => m.target = val.to_string(),
            "readonly" | "ro" => m.read_only = parse_go_bool(val).ok_or_else(invalid)?,
            // Docker accepts it and ignores it on Linux.
            "consistency" => {}
            "bind-propagation" => {
                bind_opts = true;
                let p = val.to_ascii_lowercase();
                if ![
                    "rprivate", "private", "rshared", "shared", "rslave", "slave",
                ]
                .contains(&p.as_str())
                {
                    return Err(format!("invalid propagation mode: {val}"));
                }
                m.bind_propagation = p;
            }
            "volume-nocopy" => {
                volume_opts = true;
                m.volume_nocopy = parse_go_bool(val).ok_or_else(invalid)?;
            }
            "volume-label" | "volume-opt" => {
                volume_opts = true;
                let (k, v) = val.split_once('=').unwrap_or((val, ""));
                if k.is_empty() {
                    return Err(format!(
                        "invalid value for {key}: {val}: expected KEY=VALUE"
                    ));
                }
                let map = if key == "volume-label" {
                    &mut m.volume_labels
                } else {
                    &mut m.volume_driver_options
                };
                map.insert(k.to_string(), v.to_string());
            }
            "volume-driver" => {
                volume_opts = true;
                m.volume_driver = val.to_string();
            }
            "tmpfs-size" => {
                tmpfs_opts = true;
                m.tmpfs_size_bytes = parse_memory(val).map_err(|_| invalid())?;
            }
            "tmpfs-mode" => {
                tmpfs_opts = true;
                m.tmpfs_mode = u32::from_str_radix(val, 8).map_err(|_| invalid())?;
            }
            _ => return Err(format!("unexpected key '{key}' in '{field}'")),
        }
    }
    if kind.is_empty() {
        return Err("type is required".into());
    }
    if m.target.is_empty() {
        return Err("target is required".into());
    }
    if volume_opts && kind != "volume" {
        return Err(format!(
            "cannot mix 'volume-*' options with mount type '{kind}'"
        ));
    }
    if bind_opts && kind != "bind" {
        return Err(format!(
            "cannot mix 'bind-*' options with mount type '{kind}'"
        ));
    }
    if tmpfs_opts && kind != "tmpfs" {
        return Err(format!(
            "cannot mix 'tmpfs-*' options with mount type '{kind}'"
        ));
    }
    m.r#type = match kind.as_str() {
        "bind" => {
            if m.source.is_empty() {
                return Err(
                    "invalid mount config for type \"bind\": field Source must not be empty".into(),
                );
            }
            proto::MountType::Bind
        }
        "tmpfs" => {
            if !m.source.is_empty() {
                return Err(
                    "invalid mount config for type \"tmpfs\": field Source must not be specified"
                        .into(),
                );
            }
            proto::MountType::Tmpfs
        }
        "volume" => {
            if !m.source.is_empty() {
                swarm_common::volume::check_name(&m.source)?;
            }
            swarm_common::volume::check_driver(&m.volume_driver, m.volume_driver_options.keys())?;
            proto::MountType::Volume
        }
        "npipe" | "cluster" | "image" => {
            return Err(format!(
                "mount type {kind:?} is not supported: use type=bind, type=volume or type=tmpfs"
            ))
        }
        other => {
            return Err(format!(
                "invalid mount type {other:?}: use type=bind, type=volume or type=tmpfs"
            ))
        }
    } as i32;
    Ok(m)
}

/// A boolean flag value as Go's `strconv.ParseBool` reads it (`--autolock=false`).
pub fn parse_bool(s: &str) -> std::result::Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("strconv.ParseBool: parsing {s:?}: invalid syntax")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_ms() {
        assert_eq!(parse_duration_ms("1m"), Ok(60_000));
        assert_eq!(parse_duration_ms("300ms"), Ok(300));
        assert!(parse_duration_ms("5").is_err());
    }

    #[test]
    fn humantime_is_not_go_syntax() {
        // Why parse_go_duration exists: humantime disagrees with Go on these.
        assert!(humantime::parse_duration("2160h0m0s").is_ok());
        assert!(humantime::parse_duration("1d").is_ok());
        assert!(humantime::parse_duration("5 min").is_ok());
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("64M"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_memory("64MiB"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_memory("64mb"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_memory("1.5G"), Ok(1536 * 1024 * 1024));
        assert_eq!(parse_memory("512k"), Ok(512 * 1024));
        assert_eq!(parse_memory("100"), Ok(100));
        assert_eq!(parse_memory("100b"), Ok(100));
        assert_eq!(parse_memory("10 m"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_memory("64X"), Err("invalid size: '64X'".into()));
        assert!(parse_memory("").is_err());
        assert!(parse_memory("M").is_err());
        assert!(parse_memory("-1M").is_err());
        assert!(parse_memory("1.2.3M").is_err());
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0.5"), Ok(500_000_000));
        assert_eq!(parse_cpus("2"), Ok(2_000_000_000));
        assert_eq!(parse_cpus(".25"), Ok(250_000_000));
        assert_eq!(parse_cpus("0.000000001"), Ok(1));
        assert_eq!(
            parse_cpus("0.0000000001"),
            Err("value is too precise".into())
        );
        assert!(parse_cpus("abc").is_err());
        assert!(parse_cpus("-1").is_err());
        assert!(parse_cpus("").is_err());
    }

    fn pc(published: u32, target: u32, proto: PortProtocol, mode: PublishMode) -> PortConfig {
        PortConfig {
            published_port: published,
            target_port: target,
            protocol: proto as i32,
            publish_mode: mode as i32,
            ..Default::default()
        }
    }

    #[test]
    fn publish_short_syntax() {
        use PortProtocol::*;
        use PublishMode::*;
        assert_eq!(
            parse_publish("8080:80"),
            Ok(vec![pc(8080, 80, Tcp, Ingress)])
        );
        assert_eq!(
            parse_publish("53:53/udp"),
            Ok(vec![pc(53, 53, Udp, Ingress)])
        );
        assert_eq!(parse_publish("80"), Ok(vec![pc(0, 80, Tcp, Ingress)]));
        assert_eq!(
            parse_publish("8080-8081:80-81"),
            Ok(vec![pc(8080, 80, Tcp, Ingress), pc(8081, 81, Tcp, Ingress)])
        );
        assert!(parse_publish("8080-8082:80-81").is_err());
        assert!(parse_publish("8080:80-81").is_err());
        assert_eq!(
            parse_publish("80-81"),
            Ok(vec![pc(0, 80, Tcp, Ingress), pc(0, 81, Tcp, Ingress)])
        );
        assert_eq!(
            parse_publish("127.0.0.1:8080:80"),
            Err("hostip is not supported".into())
        );
        assert!(parse_publish("8080:80/icmp").is_err());
        assert!(parse_publish("x:80").is_err());
        assert!(parse_publish("70000:80").is_err());
        assert!(parse_publish("8080:0").is_err());
    }

    #[test]
    fn publish_long_syntax() {
        use PortProtocol::*;
        use PublishMode::*;
        assert_eq!(
            parse_publish("published=8080,target=80"),
            Ok(vec![pc(8080, 80, Tcp, Ingress)])
        );
        assert_eq!(
            parse_publish("mode=host,published=8080,target=80,protocol=udp"),
            Ok(vec![pc(8080, 80, Udp, Host)])
        );
        assert_eq!(
            parse_publish("target=80"),
            Ok(vec![pc(0, 80, Tcp, Ingress)])
        );
        assert_eq!(
            parse_publish("published=8080"),
            Err("missing mandatory field \"target\"".into())
        );
        assert_eq!(
            parse_publish("mode=bridge,target=80"),
            Err("invalid publish mode value bridge".into())
        );
        assert_eq!(
            parse_publish("target=80,color=red"),
            Err("invalid field key color".into())
        );
        assert!(parse_publish("target=80,oops").is_err());
    }

    #[test]
    fn publish_source_ip() {
        use PortProtocol::*;
        use PublishMode::*;
        let preserved = PortConfig {
            preserve_source_ip: true,
            ..pc(8080, 80, Tcp, Ingress)
        };
        assert_eq!(
            parse_publish("published=8080,target=80,protocol=tcp,mode=ingress,source-ip=preserve"),
            Ok(vec![preserved.clone()])
        );
        assert_eq!(
            parse_publish("source-ip=preserve,published=8080,target=80"),
            Ok(vec![preserved])
        );
        assert_eq!(
            parse_publish("published=8080,target=80,source-ip=nat"),
            Ok(vec![pc(8080, 80, Tcp, Ingress)])
        );
        assert_eq!(
            parse_publish("target=80,source-ip=keep"),
            Err("invalid source-ip value keep: use preserve (the task sees the client's address) or nat (the default)".into())
        );
        for v in [
            "mode=host,published=8080,target=80,source-ip=preserve",
            "source-ip=nat,mode=host,published=8080,target=80",
        ] {
            let e = parse_publish(v).unwrap_err();
            assert!(
                e.starts_with("source-ip only applies to mode=ingress: "),
                "{v}: {e}"
            );
        }
    }

    #[test]
    fn publish_refuses_what_the_data_plane_cannot_carry() {
        for v in [
            "9000:9000/sctp",
            "9000/sctp",
            "published=9000,target=9000,protocol=sctp",
        ] {
            let e = parse_publish(v).unwrap_err();
            assert!(
                e.starts_with("port 9000/sctp: sctp ports cannot be published yet"),
                "{v}: {e}"
            );
        }
        assert_eq!(
            parse_publish("mode=host,target=80"),
            Err("mode=host needs a published port: dynamic host ports are not supported yet; give the port to publish on each node with published=P (mode=host,published=P,target=80)".into())
        );
        // `--publish-rm` still matches such ports by their syntax.
        assert_eq!(
            parse_publish_fields("mode=host,target=80").map(|p| p[0].target_port),
            Ok(80)
        );
    }

    #[test]
    fn env_labels_prefs_scale() {
        assert_eq!(parse_env("A=1"), Ok("A=1".into()));
        assert_eq!(
            parse_env("SWARM_CLI_TEST_SURELY_UNSET"),
            Ok("SWARM_CLI_TEST_SURELY_UNSET".into())
        );
        assert!(parse_env("=x").is_err());
        assert_eq!(env_key("A=1=2"), "A");
        assert_eq!(env_key("B"), "B");
        let l = parse_labels(&["a=1".into(), "b".into()]).unwrap();
        assert_eq!(l.get("a").map(String::as_str), Some("1"));
        assert_eq!(l.get("b").map(String::as_str), Some(""));
        assert!(parse_labels(&["=x".into()]).is_err());
        assert_eq!(
            parse_placement_pref("spread=node.labels.zone"),
            Ok("node.labels.zone".into())
        );
        assert!(parse_placement_pref("binpack=x").is_err());
        assert!(parse_placement_pref("spread").is_err());
        assert_eq!(parse_scale("web=3"), Some(("web".into(), 3)));
        assert_eq!(parse_scale("web"), None);
        assert_eq!(parse_scale("web=-1"), None);
        assert_eq!(parse_availability("Drain"), Ok(NodeAvailability::Drain));
        assert!(parse_availability("off").is_err());
    }

    #[test]
    fn file_references() {
        let r = parse_file_reference("db_pw").unwrap();
        assert_eq!(r.source, "db_pw");
        assert_eq!(
            (
                r.file.name.as_str(),
                r.file.uid.as_str(),
                r.file.gid.as_str(),
                r.file.mode
            ),
            ("db_pw", "0", "0", 0o444)
        );
        let r = parse_file_reference("source=db_pw,target=pw,uid=1000,gid=2000,mode=0400").unwrap();
        assert_eq!(
            (
                r.source.as_str(),
                r.file.name.as_str(),
                r.file.uid.as_str(),
                r.file.gid.as_str(),
                r.file.mode
            ),
            ("db_pw", "pw", "1000", "2000", 0o400)
        );
        let r = parse_file_reference("src=app.conf,target=/etc/app.conf").unwrap();
        assert_eq!(
            (r.source.as_str(), r.file.name.as_str()),
            ("app.conf", "/etc/app.conf")
        );
        // Go's base 0: no leading zero is decimal.
        assert_eq!(
            parse_file_reference("src=a,mode=292").unwrap().file.mode,
            0o444
        );
        assert_eq!(
            parse_file_reference("src=a,mode=0o600").unwrap().file.mode,
            0o600
        );
        assert_eq!(
            parse_file_reference("target=x").unwrap_err(),
            "source is required"
        );
        assert_eq!(
            parse_file_reference("src=a,owner=1").unwrap_err(),
            "invalid field key owner"
        );
        assert_eq!(
            parse_file_reference("src=a,ro").unwrap_err(),
            "invalid field 'ro' must be a key=value pair"
        );
        assert!(parse_file_reference("src=a,mode=0999")
            .unwrap_err()
            .contains("invalid mode"));
    }

    #[test]
    fn mounts() {
        let m = parse_mount("type=bind,source=/x,target=/y,readonly").unwrap();
        assert_eq!(m.r#type, proto::MountType::Bind as i32);
        assert_eq!(
            (m.source.as_str(), m.target.as_str(), m.read_only),
            ("/x", "/y", true)
        );
        let m = parse_mount("type=bind,src=/x,dst=/y,ro=false,bind-propagation=RSlave").unwrap();
        assert!(!m.read_only);
        assert_eq!(m.bind_propagation, "rslave");
        let m = parse_mount("type=tmpfs,target=/t,tmpfs-size=64m,tmpfs-mode=0700").unwrap();
        assert_eq!(m.r#type, proto::MountType::Tmpfs as i32);
        assert_eq!(m.tmpfs_size_bytes, 64 << 20);
        assert_eq!(m.tmpfs_mode, 0o700);
        let m = parse_mount("\"type=bind\",\"source=/a,b\",target=/c").unwrap();
        assert_eq!(m.source, "/a,b");
        let rel = parse_mount("type=bind,source=./data,target=/d").unwrap();
        assert!(
            rel.source.starts_with('/') && rel.source.ends_with("/data"),
            "{}",
            rel.source
        );

        let e = |v: &str| parse_mount(v).unwrap_err();
        assert_eq!(e("type=bind,source=/x"), "target is required");
        assert_eq!(
            e("type=bind,source=/x,target=/y,color=red"),
            "unexpected key 'color' in 'color=red'"
        );
        assert_eq!(
            e("type=bind,source=/x,target=/y,oops"),
            "invalid field 'oops' must be a key=value pair"
        );
        assert_eq!(
            e("type=bind,source=/x,target=/y,readonly=maybe"),
            "invalid value for readonly: maybe"
        );
        assert_eq!(
            e("type=tmpfs,target=/t,tmpfs-mode=9"),
            "invalid value for tmpfs-mode: 9"
        );
        assert_eq!(
            e("type=tmpfs,target=/t,tmpfs-size=x"),
            "invalid value for tmpfs-size: x"
        );
        assert_eq!(
            e("type=bind,source=/x,target=/y,tmpfs-size=1m"),
            "cannot mix 'tmpfs-*' options with mount type 'bind'"
        );
        assert_eq!(
            e("type=tmpfs,target=/y,bind-propagation=shared"),
            "cannot mix 'bind-*' options with mount type 'tmpfs'"
        );
        assert_eq!(
            e("type=tmpfs,source=/x,target=/y"),
            "invalid mount config for type \"tmpfs\": field Source must not be specified"
        );
        assert!(e("type=floppy,target=/y").contains("invalid mount type"));
        assert!(e("type=image,source=x,target=/y").contains("not supported"));
    }

    #[test]
    fn volume_mounts() {
        // The default type is volume, as in Docker.
        let m = parse_mount("source=data,target=/srv").unwrap();
        assert_eq!(m.r#type, proto::MountType::Volume as i32);
        assert_eq!((m.source.as_str(), m.target.as_str()), ("data", "/srv"));
        assert!(!m.volume_nocopy && !m.read_only);
        let m = parse_mount(
            "type=volume,src=db,dst=/var/lib/db,ro,volume-nocopy,volume-label=tier=db,volume-label=empty,volume-driver=local",
        )
        .unwrap();
        assert!(m.read_only && m.volume_nocopy);
        assert_eq!(m.volume_driver, "local");
        assert_eq!(m.volume_labels.get("tier").map(String::as_str), Some("db"));
        assert_eq!(m.volume_labels.get("empty").map(String::as_str), Some(""));
        let m = parse_mount("type=volume,target=/scratch,volume-nocopy=false").unwrap();
        assert!(m.source.is_empty() && !m.volume_nocopy, "anonymous volume");

        let e = |v: &str| parse_mount(v).unwrap_err();
        assert!(e("type=volume,source=v,target=/y").contains("too short"));
        assert!(e("type=volume,source=/srv/x,target=/y").contains("invalid characters"));
        assert!(e("type=volume,source=../x,target=/y").contains("invalid characters"));
        assert!(e("type=volume,source=db,target=/y,volume-driver=nfs")
            .contains("volume driver \"nfs\" is not supported"));
        assert!(e("type=volume,source=db,target=/y,volume-opt=type=nfs")
            .contains("volume option \"type\" is not supported"));
        assert_eq!(
            e("type=volume,source=db,target=/y,volume-label==x"),
            "invalid value for volume-label: =x: expected KEY=VALUE"
        );
        assert_eq!(
            e("type=bind,source=/x,target=/y,volume-nocopy"),
            "cannot mix 'volume-*' options with mount type 'bind'"
        );
    }

    #[test]
    fn update_policy_values_take_docker_syntax_and_errors() {
        assert_eq!(parse_go_uint("0"), Ok(0));
        assert_eq!(parse_go_uint("12"), Ok(12));
        assert_eq!(
            parse_go_uint("-1"),
            Err("strconv.ParseUint: parsing \"-1\": invalid syntax".into())
        );
        assert_eq!(
            parse_go_uint("99999999999999999999"),
            Err("strconv.ParseUint: parsing \"99999999999999999999\": value out of range".into())
        );
        assert_eq!(parse_go_float("0.25"), Ok(0.25));
        assert!(parse_go_float("x")
            .unwrap_err()
            .contains("strconv.ParseFloat"));
        assert_eq!(
            parse_failure_action("update", "rollback"),
            Ok(proto::UpdateFailureAction::Rollback)
        );
        assert_eq!(
            parse_failure_action("rollback", "rollback"),
            Err("unrecognized rollback failure action rollback".into())
        );
        assert_eq!(
            parse_update_order("update", "start-first"),
            Ok(proto::UpdateOrder::StartFirst)
        );
        assert_eq!(
            parse_update_order("rollback", "first"),
            Err("unrecognized rollback order first".into())
        );
    }
}
