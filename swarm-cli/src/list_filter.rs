//! `--filter key=value` of `node ls` and `network ls`, as Docker's `filters.Args`: values of
//! one key are alternatives (any may match), different keys must all match, `label` filters
//! all match (`label=K` wants the label set, `label=K=V` that value). A key the command
//! does not know is refused with Docker's "invalid filter 'KEY'".
//!
//! The managers' List requests of nodes and networks take no filter, so these match on
//! the client; `service_filter` builds on these too. `ps::Filter` and
//! `secret_cmd::parse_filters` fill the managers' own filter fields.

use std::collections::BTreeMap;

use proto::{Network, Node, NodeRole};

/// Parsed filters: key → values, in the order given.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Filters {
    map: BTreeMap<String, Vec<String>>,
}

impl Filters {
    pub fn parse(items: &[String], allowed: &[&str]) -> Result<Filters, String> {
        let mut f = Filters::default();
        for item in items {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| format!("bad format of filter (expected name=value): {item}"))?;
            let k = k.trim().to_ascii_lowercase();
            if !allowed.contains(&k.as_str()) {
                return Err(format!("invalid filter '{k}'"));
            }
            f.map.entry(k).or_default().push(v.to_string());
        }
        Ok(f)
    }

    pub fn values(&self, key: &str) -> &[String] {
        self.map.get(key).map_or(&[], Vec::as_slice)
    }

    /// True when `key` is not filtered on or one of its values passes `pred`.
    pub fn any(&self, key: &str, pred: impl Fn(&str) -> bool) -> bool {
        let v = self.values(key);
        v.is_empty() || v.iter().any(|v| pred(v))
    }

    /// Every `key` filter (`K` or `K=V`) is met by `labels`.
    pub fn labels(&self, key: &str, labels: &BTreeMap<String, String>) -> bool {
        self.values(key).iter().all(|f| match f.split_once('=') {
            Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
            None => labels.contains_key(f.as_str()),
        })
    }

    /// Refuses a value of `key` outside `accepted` (case-insensitive).
    pub fn check_values(&self, key: &str, accepted: &[&str]) -> Result<(), String> {
        match self
            .values(key)
            .iter()
            .find(|v| !accepted.contains(&v.to_ascii_lowercase().as_str()))
        {
            Some(bad) => Err(format!(
                "invalid filter '{key}={bad}': expected {}",
                accepted.join(" or ")
            )),
            None => Ok(()),
        }
    }
}

/// `node ls --filter`: id (prefix), name (hostname prefix), label (engine labels),
/// node.label (the node's own labels), membership (accepted|pending), role
/// (manager|worker).
pub fn nodes(items: &[String]) -> Result<Filters, String> {
    let f = Filters::parse(
        items,
        &["id", "name", "label", "node.label", "membership", "role"],
    )?;
    f.check_values("role", &["manager", "worker"])?;
    f.check_values("membership", &["accepted", "pending"])?;
    Ok(f)
}

pub fn keep_node(f: &Filters, n: &Node) -> bool {
    let role = match n.role() {
        NodeRole::Manager => "manager",
        NodeRole::Worker => "worker",
    };
    let empty = BTreeMap::new();
    let engine = n.description.as_ref().map_or(&empty, |d| &d.engine_labels);
    let own = n.spec.as_ref().map_or(&empty, |s| &s.labels);
    f.any("id", |p| n.id.starts_with(p))
        && f.any("name", |p| n.hostname().starts_with(p))
        && f.any("role", |r| r.eq_ignore_ascii_case(role))
        // A node in the store has been accepted: this swarm has no pending state.
        && f.any("membership", |m| m.eq_ignore_ascii_case("accepted"))
        && f.labels("label", engine)
        && f.labels("node.label", own)
}

/// `network ls --filter`: driver (exact), id and name (substrings, as Docker matches
/// them), label, scope (swarm; these are all swarm networks), type (custom|builtin: none
/// of a swarm's networks is one of Docker's predefined bridge/host/none).
pub fn networks(items: &[String]) -> Result<Filters, String> {
    let f = Filters::parse(items, &["driver", "id", "label", "name", "scope", "type"])?;
    f.check_values("type", &["custom", "builtin"])?;
    f.check_values("scope", &["swarm", "global", "local"])?;
    Ok(f)
}

pub fn keep_network(f: &Filters, n: &Network) -> bool {
    let empty = BTreeMap::new();
    let spec = n.spec.as_ref();
    let name = spec.map_or("", |s| s.name.as_str());
    let driver = spec.map_or("overlay", |s| s.driver.as_str());
    f.any("driver", |d| d == driver)
        && f.any("id", |p| n.id.contains(p))
        && f.any("name", |p| name.contains(p))
        && f.any("scope", |s| s.eq_ignore_ascii_case("swarm"))
        && f.any("type", |t| t.eq_ignore_ascii_case("custom"))
        && f.labels("label", spec.map_or(&empty, |s| &s.labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::*;

    fn strs(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn node(id: &str, host: &str, manager: bool, labels: &[(&str, &str)]) -> Node {
        Node {
            id: id.into(),
            role: if manager {
                NodeRole::Manager as i32
            } else {
                NodeRole::Worker as i32
            },
            spec: Some(NodeSpec {
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
            description: Some(NodeDescription {
                hostname: host.into(),
                engine_labels: [("os".to_string(), "linux".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn node_filters_or_within_a_key_and_across_keys() {
        let m = node("aaa1", "node-1", true, &[("zone", "a")]);
        let w = node("bbb2", "node-2", false, &[("zone", "b"), ("ssd", "")]);
        let keep = |items: &[&str], n: &Node| keep_node(&nodes(&strs(items)).unwrap(), n);
        assert!(keep(&["role=manager"], &m) && !keep(&["role=manager"], &w));
        assert!(keep(&["role=worker"], &w));
        assert!(keep(&["id=aaa", "id=bbb"], &m) && keep(&["id=aaa", "id=bbb"], &w));
        assert!(!keep(&["id=aaa", "role=worker"], &m));
        assert!(keep(&["name=node-"], &w) && !keep(&["name=2"], &w));
        assert!(keep(&["node.label=zone=b"], &w) && !keep(&["node.label=zone=b"], &m));
        assert!(keep(&["node.label=ssd"], &w) && !keep(&["node.label=ssd"], &m));
        // Two label filters must both hold.
        assert!(!keep(&["node.label=ssd", "node.label=zone=a"], &w));
        assert!(keep(&["label=os=linux"], &m) && !keep(&["label=os=windows"], &m));
        assert!(keep(&["membership=accepted"], &m) && !keep(&["membership=pending"], &m));
        assert_eq!(
            nodes(&strs(&["colour=red"])).unwrap_err(),
            "invalid filter 'colour'"
        );
        assert!(nodes(&strs(&["role=boss"]))
            .unwrap_err()
            .contains("invalid filter 'role=boss'"));
        assert!(nodes(&strs(&["role"]))
            .unwrap_err()
            .contains("bad format of filter"));
    }

    #[test]
    fn network_filters() {
        let n = Network {
            id: "abcdef".into(),
            spec: Some(NetworkSpec {
                name: "shop_front".into(),
                driver: "overlay".into(),
                labels: [("tier".to_string(), "web".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let keep = |items: &[&str]| keep_network(&networks(&strs(items)).unwrap(), &n);
        assert!(keep(&["name=front"]) && keep(&["name=shop"]) && !keep(&["name=back"]));
        assert!(keep(&["id=cde"]) && !keep(&["id=xyz"]));
        assert!(keep(&["driver=overlay"]) && !keep(&["driver=bridge"]));
        assert!(keep(&["driver=bridge", "driver=overlay"]));
        assert!(keep(&["label=tier=web", "scope=swarm", "type=custom"]));
        assert!(!keep(&["label=tier=db"]) && !keep(&["type=builtin"]) && !keep(&["scope=local"]));
        assert_eq!(
            networks(&strs(&["mode=x"])).unwrap_err(),
            "invalid filter 'mode'"
        );
        assert!(networks(&strs(&["type=other"])).is_err());
    }
}
