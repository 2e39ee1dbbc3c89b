//! Placement constraints (`--constraint node.labels.zone==a`), parsed once and matched
//! against nodes. Same language as SwarmKit: `<key>==<value>` or `<key>!=<value>`, values
//! compared case-insensitively (label *names* are case-sensitive), all constraints must hold.

use std::net::IpAddr;

use proto::{Node, NodeRole};

const NODE_LABEL_PREFIX: &str = "node.labels.";
const ENGINE_LABEL_PREFIX: &str = "engine.labels.";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    Eq,
    NotEq,
}

impl std::fmt::Display for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Operator::Eq => "==",
            Operator::NotEq => "!=",
        })
    }
}

/// What a constraint looks at on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Key {
    Id,
    Hostname,
    Ip,
    Role,
    PlatformOs,
    PlatformArch,
    NodeLabel(String),
    EngineLabel(String),
}

/// `node.ip` values: one address or a CIDR subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
enum IpMatch {
    Addr(IpAddr),
    Net(IpAddr, u8),
}

/// One parsed constraint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    /// The key as written, e.g. `node.labels.zone`.
    pub key: String,
    pub op: Operator,
    /// The value as written (trimmed).
    pub value: String,
    parsed_key: Key,
    ip: Option<IpMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    #[error("invalid constraint {expr:?}: expected <key>==<value> or <key>!=<value>")]
    NoOperator { expr: String },
    #[error("invalid constraint {expr:?}: key {key:?} is invalid (letters, digits, '.', '-' and '_' only)")]
    InvalidKey { expr: String, key: String },
    #[error("invalid constraint {expr:?}: value {value:?} is invalid")]
    InvalidValue { expr: String, value: String },
    #[error("invalid constraint {expr:?}: unknown key {key:?}; use node.id, node.hostname, node.ip, node.role, node.platform.os, node.platform.arch, node.labels.<name> or engine.labels.<name>")]
    UnknownKey { expr: String, key: String },
    #[error("invalid constraint {expr:?}: {value:?} is not an IP address or CIDR subnet")]
    InvalidIp { expr: String, value: String },
}

fn valid_key(k: &str) -> bool {
    // SwarmKit: ^(?i)[a-z_][a-z0-9\-_.]+$
    let b = k.as_bytes();
    b.len() >= 2
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn valid_value(v: &str) -> bool {
    // SwarmKit: ^(?i)[a-z0-9:\-_\s\.\*\(\)\?\+\[\]\\\^\$\|\/]+$
    !v.is_empty()
        && v.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || c.is_whitespace()
                || matches!(
                    c,
                    ':' | '-'
                        | '_'
                        | '.'
                        | '*'
                        | '('
                        | ')'
                        | '?'
                        | '+'
                        | '['
                        | ']'
                        | '\\'
                        | '^'
                        | '$'
                        | '|'
                        | '/'
                )
        })
}

fn parse_ip_match(v: &str) -> Option<IpMatch> {
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Some(IpMatch::Addr(ip));
    }
    let (addr, len) = v.split_once('/')?;
    let ip: IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some(IpMatch::Net(ip, len))
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V4(_)) => match a.to_ipv4_mapped() {
            Some(a4) => in_net(IpAddr::V4(a4), net, len),
            None => false,
        },
        (IpAddr::V4(a), IpAddr::V6(_)) => in_net(IpAddr::V6(a.to_ipv6_mapped()), net, len),
    }
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let canon = |x: IpAddr| match x {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(x, IpAddr::V4),
        v4 => v4,
    };
    canon(a) == canon(b)
}

/// Parses one expression such as `node.labels.zone == a`.
pub fn parse_constraint(expr: &str) -> Result<Constraint, ConstraintError> {
    let (op, (k, v)) = if let Some(kv) = expr.split_once("==") {
        (Operator::Eq, kv)
    } else if let Some(kv) = expr.split_once("!=") {
        (Operator::NotEq, kv)
    } else {
        return Err(ConstraintError::NoOperator { expr: expr.into() });
    };
    let key = k.trim();
    let value = v.trim();
    if !valid_key(key) {
        return Err(ConstraintError::InvalidKey {
            expr: expr.into(),
            key: key.into(),
        });
    }
    if !valid_value(value) {
        return Err(ConstraintError::InvalidValue {
            expr: expr.into(),
            value: value.into(),
        });
    }
    let lower = key.to_ascii_lowercase();
    let parsed_key = match lower.as_str() {
        "node.id" => Key::Id,
        "node.hostname" => Key::Hostname,
        "node.ip" => Key::Ip,
        "node.role" => Key::Role,
        "node.platform.os" => Key::PlatformOs,
        "node.platform.arch" => Key::PlatformArch,
        // The prefix is case-insensitive, the label name is not.
        l if l.len() > NODE_LABEL_PREFIX.len() && l.starts_with(NODE_LABEL_PREFIX) => {
            Key::NodeLabel(key[NODE_LABEL_PREFIX.len()..].to_string())
        }
        l if l.len() > ENGINE_LABEL_PREFIX.len() && l.starts_with(ENGINE_LABEL_PREFIX) => {
            Key::EngineLabel(key[ENGINE_LABEL_PREFIX.len()..].to_string())
        }
        _ => {
            return Err(ConstraintError::UnknownKey {
                expr: expr.into(),
                key: key.into(),
            })
        }
    };
    let ip = if parsed_key == Key::Ip {
        match parse_ip_match(value) {
            Some(m) => Some(m),
            None => {
                return Err(ConstraintError::InvalidIp {
                    expr: expr.into(),
                    value: value.into(),
                })
            }
        }
    } else {
        None
    };
    Ok(Constraint {
        key: key.to_string(),
        op,
        value: value.to_string(),
        parsed_key,
        ip,
    })
}

/// Parses every expression; the first invalid one is the error.
pub fn parse_constraints(exprs: &[String]) -> Result<Vec<Constraint>, ConstraintError> {
    exprs.iter().map(|e| parse_constraint(e)).collect()
}

impl Constraint {
    fn match_str(&self, what: &str) -> bool {
        let eq = self.value.eq_ignore_ascii_case(what)
            || (!self.value.is_ascii() && self.value.to_lowercase() == what.to_lowercase());
        match self.op {
            Operator::Eq => eq,
            Operator::NotEq => !eq,
        }
    }

    /// Whether `node` satisfies this constraint. A missing field counts as the empty
    /// string: `==` fails and `!=` holds.
    pub fn matches(&self, node: &Node) -> bool {
        let desc = node.description.as_ref();
        match &self.parsed_key {
            Key::Id => self.match_str(&node.id),
            Key::Hostname => self.match_str(desc.map_or("", |d| d.hostname.as_str())),
            Key::Role => self.match_str(match node.role_enum() {
                NodeRole::Manager => "manager",
                NodeRole::Worker => "worker",
            }),
            Key::PlatformOs => self.match_str(
                desc.and_then(|d| d.platform.as_ref())
                    .map_or("", |p| p.os.as_str()),
            ),
            Key::PlatformArch => self.match_str(
                desc.and_then(|d| d.platform.as_ref())
                    .map_or("", |p| p.architecture.as_str()),
            ),
            Key::NodeLabel(l) => self.match_str(
                node.spec
                    .as_ref()
                    .and_then(|s| s.labels.get(l))
                    .map_or("", |v| v.as_str()),
            ),
            Key::EngineLabel(l) => self.match_str(
                desc.and_then(|d| d.engine_labels.get(l))
                    .map_or("", |v| v.as_str()),
            ),
            Key::Ip => {
                let addr = node.status.as_ref().map_or("", |s| s.addr.as_str());
                // The status address may carry a port.
                let node_ip = addr
                    .parse::<IpAddr>()
                    .ok()
                    .or_else(|| addr.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()));
                let hit = match (&self.ip, node_ip) {
                    (Some(IpMatch::Addr(ip)), Some(n)) => same_ip(n, *ip),
                    (Some(IpMatch::Net(net, len)), Some(n)) => in_net(n, *net, *len),
                    (None, _) => return false,
                    (_, None) => false,
                };
                match self.op {
                    Operator::Eq => hit,
                    Operator::NotEq => !hit,
                }
            }
        }
    }
}

impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}{}", self.key, self.op, self.value)
    }
}

/// Whether `node` satisfies every constraint (true for none).
pub fn node_matches(constraints: &[Constraint], node: &Node) -> bool {
    constraints.iter().all(|c| c.matches(node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{NodeDescription, NodeSpec, NodeStatus, Platform};

    fn node() -> Node {
        Node {
            id: "abc123".into(),
            role: NodeRole::Manager as i32,
            spec: Some(NodeSpec {
                labels: [("zone".to_string(), "a".to_string())].into(),
                ..Default::default()
            }),
            description: Some(NodeDescription {
                hostname: "Node-1".into(),
                platform: Some(Platform {
                    os: "linux".into(),
                    architecture: "x86_64".into(),
                }),
                engine_labels: [("disk".to_string(), "ssd".to_string())].into(),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addr: "10.1.2.3".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn check(expr: &str) -> bool {
        parse_constraint(expr).unwrap().matches(&node())
    }

    #[test]
    fn keys_and_operators() {
        assert!(check("node.id==abc123"));
        assert!(
            check("node.hostname==node-1"),
            "hostname is case-insensitive"
        );
        assert!(check("node.hostname != other"));
        assert!(check("node.role==manager"));
        assert!(check("node.role==MANAGER"));
        assert!(!check("node.role!=manager"));
        assert!(check("node.platform.os==linux"));
        assert!(check("node.platform.arch==x86_64"));
        assert!(check("node.labels.zone==a"));
        assert!(!check("node.labels.zone==b"));
        assert!(
            !check("node.labels.Zone==a"),
            "label names are case-sensitive"
        );
        assert!(
            check("node.labels.rack!=r1"),
            "a missing label is the empty string"
        );
        assert!(!check("node.labels.rack==r1"));
        assert!(check("engine.labels.disk==ssd"));
        assert!(check("node.ip==10.1.2.3"));
        assert!(check("node.ip==10.0.0.0/8"));
        assert!(!check("node.ip!=10.0.0.0/8"));
        assert!(check("node.ip!=192.168.0.0/16"));
    }

    #[test]
    fn all_must_hold() {
        let cs = parse_constraints(&["node.labels.zone==a".into(), "node.role!=manager".into()])
            .unwrap();
        assert!(!node_matches(&cs, &node()));
        assert!(node_matches(&cs[..1], &node()));
        assert!(node_matches(&[], &node()));
    }

    #[test]
    fn parse_errors() {
        assert_eq!(
            parse_constraint("node.role=manager")
                .unwrap_err()
                .to_string(),
            "invalid constraint \"node.role=manager\": expected <key>==<value> or <key>!=<value>"
        );
        assert!(matches!(
            parse_constraint("node.colour==red"),
            Err(ConstraintError::UnknownKey { .. })
        ));
        assert!(matches!(
            parse_constraint("node.labels.x==a<b"),
            Err(ConstraintError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse_constraint("node.ip==nothing"),
            Err(ConstraintError::InvalidIp { .. })
        ));
        assert!(matches!(
            parse_constraint("==a"),
            Err(ConstraintError::InvalidKey { .. })
        ));
        let c = parse_constraint(" node.labels.zone  ==  a ").unwrap();
        assert_eq!(
            (c.key.as_str(), c.op, c.value.as_str()),
            ("node.labels.zone", Operator::Eq, "a")
        );
    }
}
