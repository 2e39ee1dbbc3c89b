//! A loaded compose project as the objects of a stack: the networks, secrets, configs and
//! service specs `stack deploy` wants, named `STACK_name` and labelled
//! `com.docker.stack.namespace=STACK`, as Docker's `convert` package makes them. Every value
//! is checked here, before anything is written; an error names the file, line and key.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use proto::*;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::compose::{self, StringOrList};
use super::load::{KeyPath, Loaded};
use crate::error::Result;
use crate::opts;

/// The label every object of a stack carries: the stack's name.
pub const NAMESPACE_LABEL: &str = "com.docker.stack.namespace";
/// Docker's label on a stack's containers: the image as the compose file names it.
pub const IMAGE_LABEL: &str = "com.docker.stack.image";

/// What a stack deploy wants.
#[derive(Debug, Default)]
pub struct Stack {
    /// Networks to create when missing (the stack's own).
    pub networks: Vec<NetworkSpec>,
    /// Networks that must exist already.
    pub external_networks: Vec<String>,
    pub secrets: Vec<SecretSpec>,
    pub external_secrets: Vec<String>,
    pub configs: Vec<ConfigSpec>,
    pub external_configs: Vec<String>,
    pub services: Vec<ServiceSpec>,
    /// The warnings Docker prints (unsupported and deprecated keys).
    pub warnings: Vec<String>,
}

/// `STACK_name`.
pub fn scoped(namespace: &str, name: &str) -> String {
    format!("{namespace}_{name}")
}

fn namespace_labels(
    namespace: &str,
    mut labels: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    labels.insert(NAMESPACE_LABEL.into(), namespace.into());
    labels
}

/// Converts the project. `env` is the process environment (for `environment: [KEY]`).
pub fn convert(l: &Loaded, namespace: &str, env: &BTreeMap<String, String>) -> Result<Stack> {
    let c = &l.compose;
    let root = KeyPath::default();
    let mut st = Stack::default();
    warnings(c, &mut st.warnings);

    // Networks the services use ("default" when a service names none).
    let mut used_networks = BTreeSet::new();
    for (name, svc) in &c.services {
        let p = root.key("services").key(name);
        for (net, _) in service_networks(l, &p, svc)? {
            used_networks.insert(net);
        }
    }
    let mut network_names = BTreeMap::new();
    for net in &used_networks {
        let p = root.key("networks").key(net);
        let def = c.networks.get(net);
        if def.is_none() && net != "default" {
            return Err(l.error_at(
                &root.key("services"),
                format!("service uses undefined network {net:?}: declare it under the top-level networks"),
            ));
        }
        let def = def.and_then(Option::as_ref);
        let ext = def
            .and_then(|d| d.external.as_ref())
            .filter(|e| e.is_external());
        if let Some(ext) = ext {
            let d = def.expect("external is set");
            if d.driver.is_some()
                || d.ipam.is_some()
                || d.attachable.is_some()
                || !d.driver_opts.is_empty()
            {
                return Err(l.error_at(
                    &p,
                    "an external network cannot set driver, driver_opts, ipam or attachable",
                ));
            }
            let name = ext.name().or(d.name.as_deref()).unwrap_or(net).to_string();
            network_names.insert(net.clone(), name.clone());
            st.external_networks.push(name);
            continue;
        }
        let name = def
            .and_then(|d| d.name.clone())
            .unwrap_or_else(|| scoped(namespace, net));
        network_names.insert(net.clone(), name.clone());
        st.networks
            .push(network_spec(l, &p, namespace, &name, def)?);
    }

    // Secrets and configs.
    let mut secret_names = BTreeMap::new();
    for (key, obj) in &c.secrets {
        let p = root.key("secrets").key(key);
        match file_object(l, &p, namespace, key, obj)? {
            FileObj::External(name) => {
                secret_names.insert(key.clone(), name.clone());
                st.external_secrets.push(name);
            }
            FileObj::Data(name, labels, data) => {
                secret_names.insert(key.clone(), name.clone());
                st.secrets.push(SecretSpec { name, labels, data });
            }
        }
    }
    let mut config_names = BTreeMap::new();
    for (key, obj) in &c.configs {
        let p = root.key("configs").key(key);
        match file_object(l, &p, namespace, key, obj)? {
            FileObj::External(name) => {
                config_names.insert(key.clone(), name.clone());
                st.external_configs.push(name);
            }
            FileObj::Data(name, labels, data) => {
                config_names.insert(key.clone(), name.clone());
                st.configs.push(ConfigSpec { name, labels, data });
            }
        }
    }

    let names = Names {
        networks: network_names,
        secrets: secret_names,
        configs: config_names,
    };
    let mut published: BTreeMap<(u32, i32), String> = BTreeMap::new();
    for (name, svc) in &c.services {
        let p = root.key("services").key(name);
        let spec = service_spec(l, &p, namespace, name, svc, &names, env)?;
        for port in spec.endpoint.iter().flat_map(|e| &e.ports) {
            if port.published_port == 0 {
                continue;
            }
            if let Some(other) =
                published.insert((port.published_port, port.protocol), name.clone())
            {
                return Err(l.error_at(
                    &p.key("ports"),
                    format!(
                        "port {}/{} is published by both service {other} and service {name}",
                        port.published_port,
                        crate::format::protocol_name(port.protocol)
                    ),
                ));
            }
        }
        st.services.push(spec);
    }
    Ok(st)
}

fn warnings(c: &compose::ComposeFile, out: &mut Vec<String>) {
    let unsupported: BTreeSet<&str> = c.services.values().flat_map(|s| s.unsupported()).collect();
    if !unsupported.is_empty() {
        out.push(format!(
            "Ignoring unsupported options: {}\n",
            unsupported.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    let deprecated: BTreeMap<&str, &str> =
        c.services.values().flat_map(|s| s.deprecated()).collect();
    if !deprecated.is_empty() {
        let list: Vec<String> = deprecated
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        out.push(format!(
            "Ignoring deprecated options:\n\n{}\n",
            list.join("\n\n")
        ));
    }
}

struct Names {
    networks: BTreeMap<String, String>,
    secrets: BTreeMap<String, String>,
    configs: BTreeMap<String, String>,
}

/// A value typed at `path` (the polymorphic forms `compose` leaves as YAML).
fn typed<T: DeserializeOwned>(l: &Loaded, path: &KeyPath, v: &Value) -> Result<T> {
    serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        let mut p = path.clone();
        for seg in e.path().iter() {
            match seg {
                serde_path_to_error::Segment::Map { key } => p = p.key(key),
                serde_path_to_error::Segment::Seq { index } => p = p.index(*index),
                _ => {}
            }
        }
        let msg = e.inner().to_string();
        if let Some(key) = msg
            .strip_prefix("unknown field `")
            .and_then(|r| r.split_once('`'))
            .map(|(k, _)| k)
        {
            if p.0.last() != Some(&super::load::Seg::Key(key.to_string())) {
                p = p.key(key);
            }
            return l.error_at(
                &p,
                format!("unknown key {key:?}: it is not a compose key Swarm knows"),
            );
        }
        l.error_at(&p, msg)
    })
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `labels:`/`environment:` as a list of `K=V` or a mapping. Mapping values may be null
/// (`null_value` says what that gives: None skips the key).
fn list_or_map(l: &Loaded, path: &KeyPath, v: &Value) -> Result<Vec<(String, Option<String>)>> {
    match v {
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let s = scalar(x)
                    .ok_or_else(|| l.error_at(&path.index(i), "expected a string KEY=VALUE"))?;
                Ok(match s.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (s, None),
                })
            })
            .collect(),
        Value::Mapping(m) => m
            .iter()
            .map(|(k, x)| {
                let k = scalar(k).ok_or_else(|| l.error_at(path, "keys must be strings"))?;
                let val = match x {
                    Value::Null => None,
                    x => Some(scalar(x).ok_or_else(|| {
                        l.error_at(&path.key(&k), "expected a string, number or boolean")
                    })?),
                };
                Ok((k, val))
            })
            .collect(),
        Value::Null => Ok(vec![]),
        _ => Err(l.error_at(path, "expected a list of KEY=VALUE or a mapping")),
    }
}

fn labels(l: &Loaded, path: &KeyPath, v: Option<&Value>) -> Result<BTreeMap<String, String>> {
    let Some(v) = v else {
        return Ok(BTreeMap::new());
    };
    Ok(list_or_map(l, path, v)?
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect())
}

fn network_spec(
    l: &Loaded,
    p: &KeyPath,
    namespace: &str,
    name: &str,
    def: Option<&compose::Network>,
) -> Result<NetworkSpec> {
    let mut spec = NetworkSpec {
        name: name.to_string(),
        driver: "overlay".into(),
        ..Default::default()
    };
    let mut own_labels = BTreeMap::new();
    if let Some(d) = def {
        if let Some(driver) = &d.driver {
            if driver != "overlay" {
                return Err(l.error_at(
                    &p.key("driver"),
                    format!("network driver {driver:?} is not supported: a stack's networks use the overlay driver"),
                ));
            }
        }
        spec.driver_options = d.driver_opts.clone().into_iter().collect();
        spec.attachable = d.attachable.unwrap_or(false);
        spec.internal = d.internal.unwrap_or(false);
        own_labels = labels(l, &p.key("labels"), d.labels.as_ref())?;
        if let Some(ipam) = &d.ipam {
            if let Some(drv) = &ipam.driver {
                if drv != "default" {
                    return Err(l.error_at(
                        &p.key("ipam").key("driver"),
                        format!("IPAM driver {drv:?} is not supported: only \"default\""),
                    ));
                }
            }
            for (i, pool) in ipam.config.iter().enumerate() {
                let pp = p.key("ipam").key("config").index(i);
                let subnet = pool
                    .subnet
                    .clone()
                    .ok_or_else(|| l.error_at(&pp, "an IPAM pool needs a subnet"))?;
                spec.ipam.push(IpamConfig {
                    subnet,
                    gateway: pool.gateway.clone().unwrap_or_default(),
                });
            }
        }
    }
    spec.labels = namespace_labels(namespace, own_labels);
    Ok(spec)
}

enum FileObj {
    External(String),
    Data(String, BTreeMap<String, String>, Vec<u8>),
}

fn file_object(
    l: &Loaded,
    p: &KeyPath,
    namespace: &str,
    key: &str,
    obj: &compose::FileObject,
) -> Result<FileObj> {
    if let Some(ext) = obj.external.as_ref().filter(|e| e.is_external()) {
        if obj.file.is_some() {
            return Err(l.error_at(&p.key("file"), "an external object cannot have a file"));
        }
        let name = ext
            .name()
            .or(obj.name.as_deref())
            .unwrap_or(key)
            .to_string();
        return Ok(FileObj::External(name));
    }
    let Some(file) = &obj.file else {
        return Err(l.error_at(p, "set file: PATH or external: true"));
    };
    let path = if Path::new(file).is_absolute() {
        Path::new(file).to_path_buf()
    } else {
        l.workdir.join(file)
    };
    let data = std::fs::read(&path).map_err(|e| {
        l.error_at(
            &p.key("file"),
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let name = obj.name.clone().unwrap_or_else(|| scoped(namespace, key));
    let own = labels(l, &p.key("labels"), obj.labels.as_ref())?;
    Ok(FileObj::Data(name, namespace_labels(namespace, own), data))
}

/// A service's networks, with their aliases: `default` when it names none.
fn service_networks(
    l: &Loaded,
    p: &KeyPath,
    svc: &compose::Service,
) -> Result<Vec<(String, Vec<String>)>> {
    let pn = p.key("networks");
    match &svc.networks {
        None | Some(Value::Null) => Ok(vec![("default".into(), vec![])]),
        Some(Value::Sequence(items)) => items
            .iter()
            .enumerate()
            .map(|(i, x)| {
                scalar(x)
                    .map(|n| (n, vec![]))
                    .ok_or_else(|| l.error_at(&pn.index(i), "expected a network name"))
            })
            .collect(),
        Some(Value::Mapping(m)) => m
            .iter()
            .map(|(k, x)| {
                let k =
                    scalar(k).ok_or_else(|| l.error_at(&pn, "network names must be strings"))?;
                let att: compose::NetworkAttachment = match x {
                    Value::Null => Default::default(),
                    x => typed(l, &pn.key(&k), x)?,
                };
                Ok((k, att.aliases))
            })
            .collect(),
        Some(_) => Err(l.error_at(&pn, "expected a list of networks or a mapping")),
    }
}

fn duration_ms(l: &Loaded, p: &KeyPath, v: &Option<String>) -> Result<Option<i64>> {
    v.as_ref()
        .map(|s| {
            opts::parse_duration_ms(s)
                .map_err(|e| l.error_at(p, format!("invalid duration {s:?}: {e}")))
        })
        .transpose()
}

fn words(l: &Loaded, p: &KeyPath, v: &StringOrList) -> Result<Vec<String>> {
    match v {
        StringOrList::List(v) => Ok(v.clone()),
        StringOrList::String(s) => shlex::split(s).ok_or_else(|| {
            l.error_at(
                p,
                format!("cannot split {s:?} into words: unbalanced quotes"),
            )
        }),
    }
}

#[allow(clippy::too_many_arguments)]
fn service_spec(
    l: &Loaded,
    p: &KeyPath,
    namespace: &str,
    name: &str,
    svc: &compose::Service,
    names: &Names,
    env: &BTreeMap<String, String>,
) -> Result<ServiceSpec> {
    let image = svc.image.clone().filter(|i| !i.is_empty()).ok_or_else(|| {
        l.error_at(
            p,
            format!("invalid image reference for service {name}: no image specified"),
        )
    })?;
    let mut container = ContainerSpec {
        image: image.clone(),
        hostname: svc.hostname.clone().unwrap_or_default(),
        dir: svc.working_dir.clone().unwrap_or_default(),
        user: svc.user.clone().unwrap_or_default(),
        read_only: svc.read_only.unwrap_or(false),
        stop_signal: svc.stop_signal.clone().unwrap_or_default(),
        ..Default::default()
    };
    if let Some(c) = &svc.command {
        container.args = words(l, &p.key("command"), c)?;
    }
    if let Some(e) = &svc.entrypoint {
        container.command = words(l, &p.key("entrypoint"), e)?;
    }
    container.env = environment(l, p, svc, env)?;
    let mut clabels = labels(l, &p.key("labels"), svc.labels.as_ref())?;
    clabels.insert(IMAGE_LABEL.into(), image);
    container.labels = namespace_labels(namespace, clabels);
    if let Some(ms) = duration_ms(l, &p.key("stop_grace_period"), &svc.stop_grace_period)? {
        container.stop_grace_period_ms = ms;
    }
    if let Some(h) = &svc.healthcheck {
        container.healthcheck = Some(healthcheck(l, &p.key("healthcheck"), h)?);
    }
    for (i, v) in svc.volumes.iter().enumerate() {
        container
            .mounts
            .push(mount(l, &p.key("volumes").index(i), namespace, v)?);
    }
    for (i, v) in svc.secrets.iter().enumerate() {
        let r = file_ref(
            l,
            &p.key("secrets").index(i),
            v,
            &names.secrets,
            "secret",
            |s| s.to_string(),
        )?;
        container.secrets.push(SecretReference {
            secret_id: String::new(),
            secret_name: r.0,
            file: Some(r.1),
        });
    }
    for (i, v) in svc.configs.iter().enumerate() {
        let r = file_ref(
            l,
            &p.key("configs").index(i),
            v,
            &names.configs,
            "config",
            |s| format!("/{s}"),
        )?;
        container.configs.push(ConfigReference {
            config_id: String::new(),
            config_name: r.0,
            file: Some(r.1),
        });
    }

    let mut task = TaskSpec {
        container: Some(container),
        ..Default::default()
    };
    for (net, mut aliases) in service_networks(l, p, svc)? {
        let target = names
            .networks
            .get(&net)
            .cloned()
            .unwrap_or_else(|| scoped(namespace, &net));
        // Docker adds the service's short name, so `db` reaches STACK_db within the stack.
        aliases.insert(0, name.to_string());
        task.networks
            .push(NetworkAttachmentConfig { target, aliases });
    }

    let mut spec = ServiceSpec {
        name: scoped(namespace, name),
        mode: Some(service_spec::Mode::Replicated(ReplicatedService {
            replicas: 1,
        })),
        ..Default::default()
    };
    let mut slabels = BTreeMap::new();
    let mut endpoint = EndpointSpec::default();
    for (i, v) in svc.ports.iter().enumerate() {
        endpoint.ports.extend(port(l, &p.key("ports").index(i), v)?);
    }
    if let Some(d) = &svc.deploy {
        let pd = p.key("deploy");
        slabels = labels(l, &pd.key("labels"), d.labels.as_ref())?;
        let mode = d.mode.as_deref().unwrap_or("replicated");
        let replicas = d.replicas;
        spec.mode = Some(match mode {
            "replicated" => service_spec::Mode::Replicated(ReplicatedService { replicas: replicas.unwrap_or(1) }),
            "global" => {
                if replicas.is_some() {
                    return Err(l.error_at(&pd.key("replicas"), "replicas can only be used with replicated mode"));
                }
                service_spec::Mode::Global(GlobalService {})
            }
            "replicated-job" => service_spec::Mode::ReplicatedJob(ReplicatedJob {
                max_concurrent: replicas.unwrap_or(1),
                total_completions: replicas.unwrap_or(1),
            }),
            "global-job" => service_spec::Mode::GlobalJob(GlobalJob {}),
            other => {
                return Err(l.error_at(
                    &pd.key("mode"),
                    format!("unknown mode {other:?}: expected replicated, global, replicated-job or global-job"),
                ))
            }
        });
        if let Some(pl) = &d.placement {
            let pp = pd.key("placement");
            let mut placement = Placement {
                constraints: pl.constraints.clone(),
                max_replicas: pl.max_replicas_per_node.unwrap_or(0),
                ..Default::default()
            };
            for (i, pref) in pl.preferences.iter().enumerate() {
                let d = opts::parse_placement_pref(&format!("spread={}", pref.spread))
                    .map_err(|e| l.error_at(&pp.key("preferences").index(i), e))?;
                placement.preferences.push(PlacementPreference {
                    spread_descriptor: d,
                });
            }
            task.placement = Some(placement);
        }
        if let Some(r) = &d.resources {
            let pr = pd.key("resources");
            let vals =
                |v: &Option<compose::ResourceValues>, key: &str| -> Result<Option<Resources>> {
                    let Some(v) = v else { return Ok(None) };
                    let pk = pr.key(key);
                    let mut out = Resources::default();
                    if let Some(c) = &v.cpus {
                        out.nano_cpus =
                            opts::parse_cpus(c).map_err(|e| l.error_at(&pk.key("cpus"), e))?;
                    }
                    if let Some(m) = &v.memory {
                        out.memory_bytes =
                            opts::parse_memory(m).map_err(|e| l.error_at(&pk.key("memory"), e))?;
                    }
                    Ok(Some(out))
                };
            task.resources = Some(ResourceRequirements {
                limits: vals(&r.limits, "limits")?,
                reservations: vals(&r.reservations, "reservations")?,
            });
        }
        if let Some(r) = &d.restart_policy {
            let pr = pd.key("restart_policy");
            let mut rp = RestartPolicy {
                // Docker's default when the policy is given without a condition.
                condition: RestartCondition::Any as i32,
                delay_ms: 5_000,
                ..Default::default()
            };
            if let Some(c) = &r.condition {
                rp.condition = opts::parse_restart_condition(c)
                    .map_err(|e| l.error_at(&pr.key("condition"), e))?
                    as i32;
            }
            if let Some(ms) = duration_ms(l, &pr.key("delay"), &r.delay)? {
                rp.delay_ms = ms;
            }
            rp.max_attempts = r.max_attempts.unwrap_or(0);
            if let Some(ms) = duration_ms(l, &pr.key("window"), &r.window)? {
                rp.window_ms = ms;
            }
            task.restart = Some(rp);
        }
        if let Some(u) = &d.update_config {
            spec.update = Some(update_config(l, &pd.key("update_config"), "update", u)?);
        }
        if let Some(u) = &d.rollback_config {
            spec.rollback = Some(update_config(l, &pd.key("rollback_config"), "rollback", u)?);
        }
        if let Some(m) = &d.endpoint_mode {
            endpoint.mode = opts::parse_endpoint_mode(m)
                .map_err(|e| l.error_at(&pd.key("endpoint_mode"), e))?
                as i32;
            if endpoint.mode == EndpointMode::Dnsrr as i32
                && endpoint
                    .ports
                    .iter()
                    .any(|p| p.publish_mode == PublishMode::Ingress as i32)
            {
                return Err(l.error_at(
                    &pd.key("endpoint_mode"),
                    "port published with ingress mode can't be used with dnsrr mode",
                ));
            }
        }
    }
    spec.labels = namespace_labels(namespace, slabels);
    spec.task = Some(task);
    spec.endpoint = Some(endpoint);
    Ok(spec)
}

/// `environment:` over `env_file:`, sorted as Docker sends them.
fn environment(
    l: &Loaded,
    p: &KeyPath,
    svc: &compose::Service,
    env: &BTreeMap<String, String>,
) -> Result<Vec<String>> {
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    if let Some(files) = &svc.env_file {
        let files = match files {
            StringOrList::String(s) => vec![s.clone()],
            StringOrList::List(l) => l.clone(),
        };
        for (i, f) in files.iter().enumerate() {
            let path = l.workdir.join(f);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                l.error_at(
                    &p.key("env_file").index(i),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            vars.extend(super::load::parse_env_lines(&text, &path)?);
        }
    }
    if let Some(e) = &svc.environment {
        for (k, v) in list_or_map(l, &p.key("environment"), e)? {
            // `KEY` alone: the value from the deploying shell, left out when unset.
            match v.or_else(|| env.get(&k).cloned()) {
                Some(v) => {
                    vars.insert(k, v);
                }
                None => {
                    vars.remove(&k);
                }
            }
        }
    }
    Ok(vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

fn healthcheck(l: &Loaded, p: &KeyPath, h: &compose::Healthcheck) -> Result<HealthConfig> {
    let mut hc = HealthConfig::default();
    if h.disable == Some(true) {
        hc.test = vec!["NONE".into()];
        return Ok(hc);
    }
    if let Some(t) = &h.test {
        hc.test = match t {
            StringOrList::String(s) => vec!["CMD-SHELL".into(), s.clone()],
            StringOrList::List(v) => {
                match v.first().map(String::as_str) {
                    Some("NONE" | "CMD" | "CMD-SHELL") => {}
                    _ => {
                        return Err(l.error_at(
                            &p.key("test"),
                            "a test list starts with CMD, CMD-SHELL or NONE",
                        ))
                    }
                }
                v.clone()
            }
        };
    }
    hc.interval_ms = duration_ms(l, &p.key("interval"), &h.interval)?.unwrap_or(0);
    hc.timeout_ms = duration_ms(l, &p.key("timeout"), &h.timeout)?.unwrap_or(0);
    hc.start_period_ms = duration_ms(l, &p.key("start_period"), &h.start_period)?.unwrap_or(0);
    hc.start_interval_ms =
        duration_ms(l, &p.key("start_interval"), &h.start_interval)?.unwrap_or(0);
    if let Some(r) = h.retries {
        hc.retries =
            i32::try_from(r).map_err(|_| l.error_at(&p.key("retries"), "retries is too large"))?;
    }
    Ok(hc)
}

fn update_config(
    l: &Loaded,
    p: &KeyPath,
    which: &str,
    u: &compose::UpdateConfig,
) -> Result<UpdateConfig> {
    let mut c = UpdateConfig {
        // Docker's compose default.
        parallelism: u.parallelism.unwrap_or(1),
        ..Default::default()
    };
    c.delay_ms = duration_ms(l, &p.key("delay"), &u.delay)?.unwrap_or(0);
    c.monitor_ms = duration_ms(l, &p.key("monitor"), &u.monitor)?.unwrap_or(0);
    if let Some(a) = &u.failure_action {
        c.failure_action = opts::parse_failure_action(which, a)
            .map_err(|e| l.error_at(&p.key("failure_action"), e))?
            as i32;
    }
    if let Some(r) = u.max_failure_ratio {
        if !(0.0..=1.0).contains(&r) {
            return Err(l.error_at(
                &p.key("max_failure_ratio"),
                format!("{r} is not between 0 and 1"),
            ));
        }
        c.max_failure_ratio = r as f32;
    }
    if let Some(o) = &u.order {
        c.order =
            opts::parse_update_order(which, o).map_err(|e| l.error_at(&p.key("order"), e))? as i32;
    }
    Ok(c)
}

/// One `ports:` entry, short (`"8080:80"`, `"80/udp"`, `80`) or long.
fn port(l: &Loaded, p: &KeyPath, v: &Value) -> Result<Vec<PortConfig>> {
    let cli = match v {
        Value::Mapping(_) => {
            let lp: compose::LongPort = typed(l, p, v)?;
            let mut s = format!("target={}", lp.target);
            if let Some(pb) = lp.published {
                s.push_str(&format!(",published={pb}"));
            }
            if let Some(pr) = &lp.protocol {
                s.push_str(&format!(",protocol={pr}"));
            }
            if let Some(m) = &lp.mode {
                s.push_str(&format!(",mode={m}"));
            }
            if lp.target == 0 || lp.target > 65535 {
                return Err(l.error_at(
                    &p.key("target"),
                    format!("invalid target port {}", lp.target),
                ));
            }
            let mut ports = opts::parse_publish(&s).map_err(|e| l.error_at(p, e))?;
            if let Some(n) = lp.name {
                ports.iter_mut().for_each(|x| x.name = n.clone());
            }
            return Ok(ports);
        }
        v => {
            scalar(v).ok_or_else(|| l.error_at(p, "expected a port (\"8080:80\") or a mapping"))?
        }
    };
    if cli.contains('=') || cli.matches(':').count() > 1 {
        return Err(l.error_at(
            p,
            format!("invalid port {cli:?}: expected [PUBLISHED:]TARGET[/PROTOCOL] (a host IP cannot be published in a swarm)"),
        ));
    }
    opts::parse_publish(&cli).map_err(|e| l.error_at(p, e))
}

/// A service's secret or config: the short name, or the long syntax. Returns the object's
/// name in the swarm and the file target (`default_target` of the source when unset).
fn file_ref(
    l: &Loaded,
    p: &KeyPath,
    v: &Value,
    known: &BTreeMap<String, String>,
    what: &str,
    default_target: impl Fn(&str) -> String,
) -> Result<(String, FileTarget)> {
    let long: compose::LongFileRef = match v {
        Value::Mapping(_) => typed(l, p, v)?,
        v => compose::LongFileRef {
            source: scalar(v)
                .ok_or_else(|| l.error_at(p, format!("expected a {what} name or a mapping")))?,
            ..Default::default()
        },
    };
    let name = known.get(&long.source).cloned().ok_or_else(|| {
        l.error_at(
            p,
            format!(
                "undefined {what} {:?}: declare it under the top-level {what}s",
                long.source
            ),
        )
    })?;
    let mode = match &long.mode {
        None => 0o444,
        Some(m) => {
            let digits = m.strip_prefix("0o").unwrap_or(m);
            u32::from_str_radix(digits, 8)
                .ok()
                .filter(|v| *v <= 0o7777)
                .ok_or_else(|| {
                    l.error_at(
                        &p.key("mode"),
                        format!(
                            "invalid file mode {m:?}: expected octal permission bits such as 0440"
                        ),
                    )
                })?
        }
    };
    Ok((
        name,
        FileTarget {
            name: long
                .target
                .clone()
                .unwrap_or_else(|| default_target(&long.source)),
            uid: long.uid.clone().unwrap_or_else(|| "0".into()),
            gid: long.gid.clone().unwrap_or_else(|| "0".into()),
            mode,
        },
    ))
}

/// One `volumes:` entry of a service: a named volume (`STACK_name`, or its external name),
/// an anonymous volume, a bind mount or a tmpfs.
fn mount(l: &Loaded, p: &KeyPath, namespace: &str, v: &Value) -> Result<Mount> {
    let long: compose::LongVolume = match v {
        Value::Mapping(_) => typed(l, p, v)?,
        v => {
            let s = scalar(v)
                .ok_or_else(|| l.error_at(p, "expected SOURCE:TARGET[:ro] or a mapping"))?;
            let parts: Vec<&str> = s.split(':').collect();
            let (source, target, mode) = match parts.as_slice() {
                [t] => (None, t.to_string(), None),
                [s, t] => (Some(s.to_string()), t.to_string(), None),
                [s, t, m] => (Some(s.to_string()), t.to_string(), Some(*m)),
                _ => {
                    return Err(l.error_at(
                        p,
                        format!("invalid volume {s:?}: expected [SOURCE:]TARGET[:MODE]"),
                    ))
                }
            };
            let read_only = match mode {
                None | Some("rw") => None,
                Some("ro") => Some(true),
                Some(m) => {
                    return Err(l.error_at(
                        p,
                        format!("invalid volume mode {m:?} in {s:?}: expected ro or rw"),
                    ))
                }
            };
            let kind = match &source {
                Some(s) if s.starts_with('/') || s.starts_with('.') || s.starts_with('~') => "bind",
                _ => "volume",
            };
            compose::LongVolume {
                kind: kind.into(),
                source,
                target,
                read_only,
                ..Default::default()
            }
        }
    };
    if !long.target.starts_with('/') {
        return Err(l.error_at(
            p,
            format!(
                "invalid mount target {:?}: it must be an absolute path",
                long.target
            ),
        ));
    }
    let mut m = Mount {
        target: long.target.clone(),
        read_only: long.read_only.unwrap_or(false),
        ..Default::default()
    };
    match long.kind.as_str() {
        "bind" => {
            m.r#type = MountType::Bind as i32;
            let src = long
                .source
                .clone()
                .ok_or_else(|| l.error_at(p, "a bind mount needs a source"))?;
            let path = if let Some(rest) = src.strip_prefix("~/") {
                std::env::var("HOME")
                    .map(|h| Path::new(&h).join(rest))
                    .unwrap_or_else(|_| src.clone().into())
            } else {
                l.workdir.join(&src)
            };
            m.source = std::path::absolute(&path)
                .unwrap_or(path)
                .to_string_lossy()
                .into_owned();
            m.bind_propagation = long
                .bind
                .as_ref()
                .and_then(|b| b.propagation.clone())
                .unwrap_or_else(|| "rprivate".into());
        }
        "volume" => {
            m.r#type = MountType::Volume as i32;
            if let Some(src) = &long.source {
                let top = l.compose.volumes.get(src).ok_or_else(|| {
                    l.error_at(
                        p,
                        format!("undefined volume {src:?}: declare it under the top-level volumes"),
                    )
                })?;
                named_volume(l, namespace, src, top.as_ref(), &mut m)?;
                swarm_common::volume::check_name(&m.source).map_err(|e| l.error_at(p, e))?;
            }
            m.volume_nocopy = long.volume.as_ref().and_then(|v| v.nocopy) == Some(true);
        }
        "tmpfs" => {
            m.r#type = MountType::Tmpfs as i32;
            if long.source.is_some() {
                return Err(l.error_at(&p.key("source"), "a tmpfs mount has no source"));
            }
            if let Some(t) = &long.tmpfs {
                if let Some(s) = &t.size {
                    m.tmpfs_size_bytes = opts::parse_memory(s)
                        .map_err(|e| l.error_at(&p.key("tmpfs").key("size"), e))?;
                }
                m.tmpfs_mode = t.mode.unwrap_or(0) as u32;
            }
        }
        other => {
            return Err(l.error_at(
                &p.key("type"),
                format!("unsupported mount type {other:?}: expected volume, bind or tmpfs"),
            ))
        }
    }
    Ok(m)
}

/// A top-level volume on the mount `m`: its name on the nodes (`STACK_key`, its `name:`, or
/// its external name) and, unless external, what creating it takes: labels (with the stack's
/// namespace label, as Docker's), driver and driver options (the local driver without
/// options only: others are refused here, not ignored on the nodes).
fn named_volume(
    l: &Loaded,
    namespace: &str,
    key: &str,
    def: Option<&compose::Volume>,
    m: &mut Mount,
) -> Result<()> {
    let p = KeyPath::default().key("volumes").key(key);
    let Some(d) = def else {
        m.source = scoped(namespace, key);
        m.volume_labels = namespace_labels(namespace, BTreeMap::new());
        return Ok(());
    };
    let driver = d.driver.clone().unwrap_or_default();
    swarm_common::volume::check_driver(&driver, std::iter::empty())
        .map_err(|e| l.error_at(&p.key("driver"), e))?;
    swarm_common::volume::check_driver("", d.driver_opts.keys())
        .map_err(|e| l.error_at(&p.key("driver_opts"), e))?;
    if let Some(ext) = d.external.as_ref().filter(|e| e.is_external()) {
        m.source = ext.name().or(d.name.as_deref()).unwrap_or(key).to_string();
        return Ok(());
    }
    m.source = d.name.clone().unwrap_or_else(|| scoped(namespace, key));
    m.volume_driver = driver;
    m.volume_labels = namespace_labels(namespace, labels(l, &p.key("labels"), d.labels.as_ref())?);
    Ok(())
}
