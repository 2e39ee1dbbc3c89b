//! `service ls --filter`: Docker's keys for services (`id`, `name`, `label`, `mode`). Values
//! of one key are alternatives; different keys must all match. `id` and `name` match
//! prefixes, as Docker's do; `label=K` wants the label set, `label=K=V` its value.

use std::collections::BTreeMap;

use proto::{service_spec::Mode, Service};

use crate::list_filter::Filters;

const MODES: &[&str] = &["replicated", "global", "replicated-job", "global-job"];

/// Docker's service filters, on the CLI's shared [`Filters`].
#[derive(Debug, Default, PartialEq)]
pub struct ServiceFilter(Filters);

impl ServiceFilter {
    pub fn parse(items: &[String]) -> Result<ServiceFilter, String> {
        let f = Filters::parse(items, &["id", "name", "label", "mode"])?;
        if let Some(bad) = f
            .values("mode")
            .iter()
            .find(|m| !MODES.contains(&m.as_str()))
        {
            return Err(format!(
                "invalid filter 'mode={bad}': expected replicated, global, replicated-job or global-job"
            ));
        }
        Ok(ServiceFilter(f))
    }

    pub fn keep(&self, s: &Service) -> bool {
        let spec = s.spec.as_ref();
        let mode = match spec.and_then(|p| p.mode.as_ref()) {
            Some(Mode::Global(_)) => "global",
            Some(Mode::ReplicatedJob(_)) => "replicated-job",
            Some(Mode::GlobalJob(_)) => "global-job",
            _ => "replicated",
        };
        let none = BTreeMap::new();
        let f = &self.0;
        f.any("id", |i| s.id.starts_with(i))
            && f.any("name", |n| s.name().starts_with(n))
            && f.any("mode", |m| m == mode)
            && f.labels("label", spec.map_or(&none, |p| &p.labels))
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
