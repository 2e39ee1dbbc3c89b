//! The compose file's schema: the keys `stack deploy` reads, each struct refusing keys it
//! does not know (`deny_unknown_fields`), so a typo is an error naming the key, not a
//! setting silently dropped. Values whose shape varies (ports, volumes, service secrets,
//! networks, environment, labels) stay YAML values here and are typed in `convert`, where
//! each form gets its own error. Numbers and booleans also accept their string forms, as
//! interpolation yields strings (`replicas: ${N}`).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_yaml::Value;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeFile {
    /// Accepted and not used (as by Docker): the schema is the Compose Specification's.
    #[allow(dead_code)]
    pub version: Option<Value>,
    /// Accepted and not used: the stack's name is the one `stack deploy` is given.
    #[allow(dead_code)]
    pub name: Option<String>,
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    #[serde(default)]
    pub networks: BTreeMap<String, Option<Network>>,
    #[serde(default)]
    pub volumes: BTreeMap<String, Option<Volume>>,
    #[serde(default)]
    pub secrets: BTreeMap<String, FileObject>,
    #[serde(default)]
    pub configs: BTreeMap<String, FileObject>,
}

/// Service keys Swarm ignores: Docker's list (`types.UnsupportedProperties`), with
/// `depends_on`, which Docker ignores silently; they get the "Ignoring unsupported options"
/// warning.
pub const UNSUPPORTED: &[&str] = &[
    "build",
    "cgroup_parent",
    "cgroupns_mode",
    "depends_on",
    "devices",
    "domainname",
    "external_links",
    "ipc",
    "links",
    "mac_address",
    "network_mode",
    "pid",
    "privileged",
    "restart",
    "security_opt",
    "shm_size",
    "userns_mode",
];

/// Docker's deprecated service keys and its words for them ("Ignoring deprecated options").
pub const DEPRECATED: &[(&str, &str)] = &[
    ("container_name", "Setting the container name is not supported."),
    (
        "expose",
        "Exposing ports is unnecessary - services on the same network can access each other's containers on any port.",
    ),
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub image: Option<String>,
    pub command: Option<StringOrList>,
    pub entrypoint: Option<StringOrList>,
    pub environment: Option<Value>,
    pub env_file: Option<StringOrList>,
    #[serde(default)]
    pub ports: Vec<Value>,
    pub networks: Option<Value>,
    #[serde(default)]
    pub volumes: Vec<Value>,
    #[serde(default)]
    pub secrets: Vec<Value>,
    #[serde(default)]
    pub configs: Vec<Value>,
    pub healthcheck: Option<Healthcheck>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub hostname: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub read_only: Option<bool>,
    pub stop_grace_period: Option<String>,
    pub stop_signal: Option<String>,
    pub labels: Option<Value>,
    pub deploy: Option<Deploy>,
    // Ignored by Swarm, with Docker's warnings (see UNSUPPORTED / DEPRECATED).
    pub build: Option<Value>,
    pub cgroup_parent: Option<Value>,
    pub cgroupns_mode: Option<Value>,
    pub depends_on: Option<Value>,
    pub devices: Option<Value>,
    pub domainname: Option<Value>,
    pub external_links: Option<Value>,
    pub ipc: Option<Value>,
    pub links: Option<Value>,
    pub mac_address: Option<Value>,
    pub network_mode: Option<Value>,
    pub pid: Option<Value>,
    pub privileged: Option<Value>,
    pub restart: Option<Value>,
    pub security_opt: Option<Value>,
    pub shm_size: Option<Value>,
    pub userns_mode: Option<Value>,
    pub container_name: Option<Value>,
    pub expose: Option<Value>,
}

impl Service {
    /// The UNSUPPORTED keys this service sets.
    pub fn unsupported(&self) -> Vec<&'static str> {
        let set = [
            self.build.is_some(),
            self.cgroup_parent.is_some(),
            self.cgroupns_mode.is_some(),
            self.depends_on.is_some(),
            self.devices.is_some(),
            self.domainname.is_some(),
            self.external_links.is_some(),
            self.ipc.is_some(),
            self.links.is_some(),
            self.mac_address.is_some(),
            self.network_mode.is_some(),
            self.pid.is_some(),
            self.privileged.is_some(),
            self.restart.is_some(),
            self.security_opt.is_some(),
            self.shm_size.is_some(),
            self.userns_mode.is_some(),
        ];
        UNSUPPORTED
            .iter()
            .zip(set)
            .filter(|(_, s)| *s)
            .map(|(k, _)| *k)
            .collect()
    }

    /// The DEPRECATED keys this service sets.
    pub fn deprecated(&self) -> Vec<(&'static str, &'static str)> {
        let set = [self.container_name.is_some(), self.expose.is_some()];
        DEPRECATED
            .iter()
            .zip(set)
            .filter(|(_, s)| *s)
            .map(|(k, _)| *k)
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    String(String),
    List(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Healthcheck {
    pub test: Option<StringOrList>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub retries: Option<u64>,
    pub start_period: Option<String>,
    pub start_interval: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub disable: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    pub mode: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub replicas: Option<u64>,
    pub labels: Option<Value>,
    pub placement: Option<Placement>,
    pub resources: Option<Resources>,
    pub restart_policy: Option<RestartPolicy>,
    pub update_config: Option<UpdateConfig>,
    pub rollback_config: Option<UpdateConfig>,
    pub endpoint_mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    #[serde(default)]
    pub constraints: Vec<String>,
    #[serde(default)]
    pub preferences: Vec<Preference>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub max_replicas_per_node: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preference {
    pub spread: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub limits: Option<ResourceValues>,
    pub reservations: Option<ResourceValues>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceValues {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub cpus: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub memory: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    pub condition: Option<String>,
    pub delay: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub max_attempts: Option<u64>,
    pub window: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub parallelism: Option<u64>,
    pub delay: Option<String>,
    pub failure_action: Option<String>,
    pub monitor: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub max_failure_ratio: Option<f64>,
    pub order: Option<String>,
}

/// Long port syntax.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongPort {
    #[serde(deserialize_with = "lenient::u64")]
    pub target: u64,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub published: Option<u64>,
    pub protocol: Option<String>,
    pub mode: Option<String>,
    pub name: Option<String>,
}

/// Long volume syntax of a service.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongVolume {
    #[serde(rename = "type")]
    pub kind: String,
    pub source: Option<String>,
    pub target: String,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub read_only: Option<bool>,
    pub bind: Option<BindOptions>,
    pub volume: Option<VolumeOptions>,
    pub tmpfs: Option<TmpfsOptions>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindOptions {
    pub propagation: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeOptions {
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub nocopy: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TmpfsOptions {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub size: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub mode: Option<u64>,
}

/// Long syntax of a service's secret or config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongFileRef {
    pub source: String,
    pub target: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub uid: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub gid: Option<String>,
    /// Octal in YAML (`0440`) reads as a number; a string is read as octal.
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub mode: Option<String>,
}

/// A service's attachment in the long `networks:` syntax.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkAttachment {
    #[serde(default)]
    pub aliases: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub driver: Option<String>,
    #[serde(default)]
    pub driver_opts: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub attachable: Option<bool>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub internal: Option<bool>,
    pub external: Option<External>,
    pub name: Option<String>,
    pub labels: Option<Value>,
    pub ipam: Option<Ipam>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ipam {
    pub driver: Option<String>,
    #[serde(default)]
    pub config: Vec<IpamPool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpamPool {
    pub subnet: Option<String>,
    pub gateway: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    pub driver: Option<String>,
    #[serde(default)]
    pub driver_opts: BTreeMap<String, String>,
    pub external: Option<External>,
    pub name: Option<String>,
    pub labels: Option<Value>,
}

/// A top-level secret or config: from a file, or existing already.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileObject {
    pub file: Option<String>,
    pub external: Option<External>,
    pub name: Option<String>,
    pub labels: Option<Value>,
}

/// `external: true` or the old `external: {name: N}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum External {
    Bool(#[serde(deserialize_with = "lenient::bool")] bool),
    Named { name: String },
}

impl External {
    pub fn is_external(&self) -> bool {
        !matches!(self, External::Bool(false))
    }

    pub fn name(&self) -> Option<&str> {
        match self {
            External::Named { name } => Some(name),
            External::Bool(_) => None,
        }
    }
}

/// Deserializers that take a number or boolean in its own YAML form or as a string.
pub mod lenient {
    use super::*;

    fn scalar_text<'de, D: Deserializer<'de>>(d: D, what: &str) -> Result<String, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(s),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => Err(serde::de::Error::custom(format!(
                "expected {what}, found {}",
                kind(&other)
            ))),
        }
    }

    pub fn kind(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Sequence(_) => "a list",
            Value::Mapping(_) => "a mapping",
            Value::Tagged(_) => "a tagged value",
        }
    }

    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = scalar_text(d, "a non-negative integer")?;
        s.trim().parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid integer {s:?}: expected a non-negative integer"
            ))
        })
    }

    pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        u64(d).map(Some)
    }

    pub fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        let s = scalar_text(d, "a number")?;
        s.trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("invalid number {s:?}")))
    }

    pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        let s = scalar_text(d, "a boolean")?;
        match s.as_str() {
            "true" | "True" | "TRUE" | "yes" => Ok(true),
            "false" | "False" | "FALSE" | "no" => Ok(false),
            _ => Err(serde::de::Error::custom(format!(
                "invalid boolean {s:?}: expected true or false"
            ))),
        }
    }

    pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        bool(d).map(Some)
    }

    pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        scalar_text(d, "a string or number").map(Some)
    }
}
