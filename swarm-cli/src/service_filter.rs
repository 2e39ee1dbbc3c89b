//! `service ls --filter`: Docker's keys for services (`id`, `name`, `label`, `mode`). Values
//! of one key are alternatives; different keys must all match. `id` and `name` match
//! prefixes, as Docker's do; `label=K` wants the label set, `label=K=V` its value.

use proto::{service_spec::Mode, Service};

#[derive(Debug, Default, PartialEq)]
pub struct ServiceFilter {
    ids: Vec<String>,
    names: Vec<String>,
    labels: Vec<(String, Option<String>)>,
    modes: Vec<String>,
}

impl ServiceFilter {
    pub fn parse(items: &[String]) -> Result<ServiceFilter, String> {
        let mut f = ServiceFilter::default();
        for item in items {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| format!("bad format of filter (expected name=value): {item}"))?;
            match k.trim().to_ascii_lowercase().as_str() {
                "id" => f.ids.push(v.to_string()),
                "name" => f.names.push(v.to_string()),
                "label" => f.labels.push(match v.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (v.to_string(), None),
                }),
                "mode" => match v {
                    "replicated" | "global" | "replicated-job" | "global-job" => {
                        f.modes.push(v.to_string())
                    }
                    _ => {
                        return Err(format!(
                            "invalid filter 'mode={v}': expected replicated, global, replicated-job or global-job"
                        ))
                    }
                },
                other => return Err(format!("invalid filter '{other}'")),
            }
        }
        Ok(f)
    }

    pub fn keep(&self, s: &Service) -> bool {
        let spec = s.spec.as_ref();
        let mode = match spec.and_then(|p| p.mode.as_ref()) {
            Some(Mode::Global(_)) => "global",
            Some(Mode::ReplicatedJob(_)) => "replicated-job",
            Some(Mode::GlobalJob(_)) => "global-job",
            _ => "replicated",
        };
        let labels = spec.map(|p| &p.labels);
        (self.ids.is_empty() || self.ids.iter().any(|i| s.id.starts_with(i.as_str())))
            && (self.names.is_empty()
                || self.names.iter().any(|n| s.name().starts_with(n.as_str())))
            && (self.modes.is_empty() || self.modes.iter().any(|m| m == mode))
            && self.labels.iter().all(|(k, v)| {
                labels
                    .and_then(|l| l.get(k))
                    .is_some_and(|have| v.as_ref().is_none_or(|v| v == have))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{GlobalService, ServiceSpec};

    fn svc(id: &str, name: &str, labels: &[(&str, &str)], global: bool) -> Service {
        Service {
            id: id.into(),
            spec: Some(ServiceSpec {
                name: name.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                mode: global.then_some(Mode::Global(GlobalService {})),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn f(items: &[&str]) -> ServiceFilter {
        ServiceFilter::parse(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn docker_keys_match_as_docker_does() {
        let web = svc("abc123", "shop_web", &[("tier", "web")], false);
        let db = svc("def456", "shop_db", &[("tier", "db")], true);
        assert!(f(&["label=tier=web"]).keep(&web) && !f(&["label=tier=web"]).keep(&db));
        assert!(f(&["label=tier"]).keep(&db));
        assert!(!f(&["label=zone"]).keep(&db));
        assert!(f(&["name=shop_"]).keep(&web) && !f(&["name=web"]).keep(&web));
        assert!(f(&["id=abc"]).keep(&web) && !f(&["id=abc"]).keep(&db));
        assert!(f(&["mode=global"]).keep(&db) && !f(&["mode=global"]).keep(&web));
        // Same key: any; different keys: all.
        assert!(f(&["id=abc", "id=def"]).keep(&db));
        assert!(!f(&["id=abc", "mode=global"]).keep(&web));
        assert!(ServiceFilter::parse(&["colour=red".into()])
            .unwrap_err()
            .contains("invalid filter 'colour'"));
        assert!(ServiceFilter::parse(&["mode=sometimes".into()]).is_err());
        assert!(ServiceFilter::parse(&["label".into()]).is_err());
    }
}
