//! The flags `service create` and `service update` take (Docker's names and syntax) and
//! the `ServiceSpec` they build.

use clap::Args;
use proto::*;

use crate::error::{CliError, Result};
use crate::format;
use crate::opts;

/// The ports of one `--publish` value (a range gives several).
#[derive(Debug, Clone, PartialEq)]
pub struct Ports(pub Vec<PortConfig>);

fn ports_arg(s: &str) -> std::result::Result<Ports, String> {
    opts::parse_publish(s).map(Ports)
}
fn ms_arg(s: &str) -> std::result::Result<i64, String> {
    opts::parse_duration_ms(s)
}
fn mem_arg(s: &str) -> std::result::Result<i64, String> {
    opts::parse_memory(s)
}
fn cpu_arg(s: &str) -> std::result::Result<i64, String> {
    opts::parse_cpus(s)
}
fn env_arg(s: &str) -> std::result::Result<String, String> {
    opts::parse_env(s)
}
fn pref_arg(s: &str) -> std::result::Result<String, String> {
    opts::parse_placement_pref(s)
}

/// Flags `service create` and `service update` share (same names as Docker's).
#[derive(Debug, Args, Default)]
pub struct CommonArgs {
    /// Number of tasks
    #[arg(long)]
    pub replicas: Option<u64>,
    /// Maximum number of tasks per node (default 0 = unlimited)
    #[arg(long = "replicas-max-per-node")]
    pub max_replicas: Option<u64>,
    /// Reserve CPUs
    #[arg(long, value_parser = cpu_arg, value_name = "CPUS")]
    pub reserve_cpu: Option<i64>,
    /// Reserve Memory
    #[arg(long, value_parser = mem_arg, value_name = "BYTES")]
    pub reserve_memory: Option<i64>,
    /// Limit CPUs
    #[arg(long, value_parser = cpu_arg, value_name = "CPUS")]
    pub limit_cpu: Option<i64>,
    /// Limit Memory
    #[arg(long, value_parser = mem_arg, value_name = "BYTES")]
    pub limit_memory: Option<i64>,
    /// Restart when condition is met ("none", "on-failure", "any")
    #[arg(long)]
    pub restart_condition: Option<String>,
    /// Delay between restart attempts (ns|us|ms|s|m|h)
    #[arg(long, value_parser = ms_arg, value_name = "DURATION")]
    pub restart_delay: Option<i64>,
    /// Maximum number of restarts before giving up
    #[arg(long)]
    pub restart_max_attempts: Option<u64>,
    /// Window used to evaluate the restart policy (ns|us|ms|s|m|h)
    #[arg(long, value_parser = ms_arg, value_name = "DURATION")]
    pub restart_window: Option<i64>,
    /// Endpoint mode (vip or dnsrr)
    #[arg(long)]
    pub endpoint_mode: Option<String>,
    /// Time to wait before force killing a container (ns|us|ms|s|m|h)
    #[arg(long, value_parser = ms_arg, value_name = "DURATION")]
    pub stop_grace_period: Option<i64>,
    /// Container hostname
    #[arg(long)]
    pub hostname: Option<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Overwrite the default ENTRYPOINT of the image
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    pub detach: bool,
    /// Suppress progress output
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Service name
    #[arg(long)]
    pub name: Option<String>,
    /// Service mode ("replicated" or "global")
    #[arg(long, default_value = "replicated")]
    pub mode: String,
    /// Set environment variables
    #[arg(short, long, value_parser = env_arg)]
    pub env: Vec<String>,
    /// Placement constraints
    #[arg(long)]
    pub constraint: Vec<String>,
    /// Add a placement preference (spread=node.labels.<key>)
    #[arg(long = "placement-pref", value_parser = pref_arg)]
    pub placement_pref: Vec<String>,
    /// Publish a port as a node port
    #[arg(short, long, value_parser = ports_arg)]
    pub publish: Vec<Ports>,
    /// Network attachments
    #[arg(long)]
    pub network: Vec<String>,
    /// Service labels
    #[arg(short, long)]
    pub label: Vec<String>,
    /// Container labels
    #[arg(long = "container-label")]
    pub container_label: Vec<String>,
    #[command(flatten)]
    pub common: CommonArgs,
    /// IMAGE [COMMAND] [ARG...]
    #[arg(
        value_name = "IMAGE [COMMAND] [ARG...]",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub image_and_args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Service image tag
    #[arg(long)]
    pub image: Option<String>,
    /// Service command args (space separated)
    #[arg(long)]
    pub args: Option<String>,
    /// Add or update an environment variable
    #[arg(long = "env-add", value_parser = env_arg)]
    pub env_add: Vec<String>,
    /// Remove an environment variable
    #[arg(long = "env-rm")]
    pub env_rm: Vec<String>,
    /// Add or update a placement constraint
    #[arg(long = "constraint-add")]
    pub constraint_add: Vec<String>,
    /// Remove a constraint
    #[arg(long = "constraint-rm")]
    pub constraint_rm: Vec<String>,
    /// Add a placement preference
    #[arg(long = "placement-pref-add", value_parser = pref_arg)]
    pub placement_pref_add: Vec<String>,
    /// Remove a placement preference
    #[arg(long = "placement-pref-rm", value_parser = pref_arg)]
    pub placement_pref_rm: Vec<String>,
    /// Add or update a published port
    #[arg(long = "publish-add", value_parser = ports_arg)]
    pub publish_add: Vec<Ports>,
    /// Remove a published port by its target port (80, 80/udp)
    #[arg(long = "publish-rm")]
    pub publish_rm: Vec<String>,
    /// Add a network
    #[arg(long = "network-add")]
    pub network_add: Vec<String>,
    /// Remove a network
    #[arg(long = "network-rm")]
    pub network_rm: Vec<String>,
    /// Add or update a service label
    #[arg(long = "label-add")]
    pub label_add: Vec<String>,
    /// Remove a label by its key
    #[arg(long = "label-rm")]
    pub label_rm: Vec<String>,
    /// Add or update a container label
    #[arg(long = "container-label-add")]
    pub container_label_add: Vec<String>,
    /// Remove a container label by its key
    #[arg(long = "container-label-rm")]
    pub container_label_rm: Vec<String>,
    /// Force update even if no changes require it
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(value_name = "SERVICE")]
    pub service: Vec<String>,
}

fn bad(m: impl Into<String>) -> CliError {
    CliError::msg(m)
}

fn task_spec(spec: &mut ServiceSpec) -> &mut TaskSpec {
    spec.task.get_or_insert_with(Default::default)
}

fn container(spec: &mut ServiceSpec) -> &mut ContainerSpec {
    task_spec(spec)
        .container
        .get_or_insert_with(Default::default)
}

fn placement(spec: &mut ServiceSpec) -> &mut Placement {
    task_spec(spec)
        .placement
        .get_or_insert_with(Default::default)
}

fn endpoint(spec: &mut ServiceSpec) -> &mut EndpointSpec {
    spec.endpoint.get_or_insert_with(Default::default)
}

fn res(spec: &mut ServiceSpec) -> &mut ResourceRequirements {
    task_spec(spec)
        .resources
        .get_or_insert_with(Default::default)
}

fn restart(spec: &mut ServiceSpec) -> &mut RestartPolicy {
    task_spec(spec).restart.get_or_insert_with(Default::default)
}

/// Applies the flags create and update share; `global` is the resulting mode.
fn apply_common(spec: &mut ServiceSpec, a: &CommonArgs) -> Result<()> {
    let global = matches!(spec.mode, Some(service_spec::Mode::Global(_)));
    if let Some(n) = a.replicas {
        if global {
            return Err(bad("replicas can only be used with replicated mode"));
        }
        spec.mode = Some(service_spec::Mode::Replicated(ReplicatedService {
            replicas: n,
        }));
    }
    if let Some(m) = a.max_replicas {
        if global {
            return Err(bad(
                "replicas-max-per-node can only be used with replicated mode",
            ));
        }
        placement(spec).max_replicas = m;
    }
    if let Some(v) = a.reserve_cpu {
        res(spec)
            .reservations
            .get_or_insert_with(Default::default)
            .nano_cpus = v;
    }
    if let Some(v) = a.reserve_memory {
        res(spec)
            .reservations
            .get_or_insert_with(Default::default)
            .memory_bytes = v;
    }
    if let Some(v) = a.limit_cpu {
        res(spec)
            .limits
            .get_or_insert_with(Default::default)
            .nano_cpus = v;
    }
    if let Some(v) = a.limit_memory {
        res(spec)
            .limits
            .get_or_insert_with(Default::default)
            .memory_bytes = v;
    }
    if let Some(c) = &a.restart_condition {
        restart(spec).condition = opts::parse_restart_condition(c).map_err(bad)? as i32;
    }
    if let Some(d) = a.restart_delay {
        restart(spec).delay_ms = d;
    }
    if let Some(n) = a.restart_max_attempts {
        restart(spec).max_attempts = n;
    }
    if let Some(w) = a.restart_window {
        restart(spec).window_ms = w;
    }
    if let Some(m) = &a.endpoint_mode {
        endpoint(spec).mode = opts::parse_endpoint_mode(m).map_err(bad)? as i32;
    }
    if let Some(g) = a.stop_grace_period {
        container(spec).stop_grace_period_ms = g;
    }
    if let Some(h) = &a.hostname {
        container(spec).hostname = h.clone();
    }
    if let Some(w) = &a.workdir {
        container(spec).dir = w.clone();
    }
    if let Some(u) = &a.user {
        container(spec).user = u.clone();
    }
    if let Some(e) = &a.entrypoint {
        container(spec).command = e.split_whitespace().map(String::from).collect();
    }
    Ok(())
}

/// The spec `service create` sends.
pub fn create_spec(a: &CreateArgs) -> Result<ServiceSpec> {
    let (image, args) = a
        .image_and_args
        .split_first()
        .ok_or_else(|| bad("an image is required"))?;
    let mut spec = ServiceSpec {
        name: a.name.clone().unwrap_or_default(),
        labels: opts::parse_labels(&a.label).map_err(bad)?,
        ..Default::default()
    };
    spec.mode = Some(match a.mode.as_str() {
        "replicated" => service_spec::Mode::Replicated(ReplicatedService { replicas: 1 }),
        "global" => service_spec::Mode::Global(GlobalService {}),
        other => {
            return Err(bad(format!(
                "invalid service mode {other:?}, only replicated and global are supported"
            )))
        }
    });
    {
        let c = container(&mut spec);
        c.image = image.clone();
        c.args = args.to_vec();
        c.env = a.env.clone();
        c.labels = opts::parse_labels(&a.container_label).map_err(bad)?;
    }
    if !a.constraint.is_empty() {
        placement(&mut spec).constraints = a.constraint.clone();
    }
    if !a.placement_pref.is_empty() {
        placement(&mut spec).preferences = a
            .placement_pref
            .iter()
            .map(|d| PlacementPreference {
                spread_descriptor: d.clone(),
            })
            .collect();
    }
    let ports: Vec<PortConfig> = a.publish.iter().flat_map(|p| p.0.clone()).collect();
    if !ports.is_empty() {
        endpoint(&mut spec).ports = ports;
    }
    task_spec(&mut spec).networks = a
        .network
        .iter()
        .map(|n| NetworkAttachmentConfig {
            target: n.clone(),
            aliases: vec![],
        })
        .collect();
    apply_common(&mut spec, &a.common)?;
    Ok(spec)
}

/// `--publish-rm` value: removes ports with that target (and protocol when given).
fn publish_rm_matches(v: &str, p: &PortConfig) -> bool {
    if v.contains('=') {
        return opts::parse_publish(v).is_ok_and(|list| {
            list.iter().any(|q| {
                q.target_port == p.target_port
                    && q.protocol == p.protocol
                    && (q.published_port == 0 || q.published_port == p.published_port)
            })
        });
    }
    let (port, proto) = match v.split_once('/') {
        Some((port, proto)) => (port, Some(proto)),
        None => (v, None),
    };
    port.parse::<u32>().is_ok_and(|t| t == p.target_port)
        && proto.is_none_or(|pr| pr == format::protocol_name(p.protocol))
}

/// Applies `service update` flags to the current spec.
pub fn update_spec(spec: &mut ServiceSpec, a: &UpdateArgs) -> Result<()> {
    if let Some(img) = &a.image {
        container(spec).image = img.clone();
    }
    if let Some(args) = &a.args {
        container(spec).args = args.split_whitespace().map(String::from).collect();
    }
    {
        let c = container(spec);
        for rm in &a.env_rm {
            c.env.retain(|e| opts::env_key(e) != rm);
        }
        for add in &a.env_add {
            let key = opts::env_key(add).to_string();
            c.env.retain(|e| opts::env_key(e) != key);
            c.env.push(add.clone());
        }
        for k in &a.container_label_rm {
            c.labels.remove(k);
        }
        c.labels
            .extend(opts::parse_labels(&a.container_label_add).map_err(bad)?);
    }
    for k in &a.label_rm {
        spec.labels.remove(k);
    }
    spec.labels
        .extend(opts::parse_labels(&a.label_add).map_err(bad)?);
    {
        let p = placement(spec);
        p.constraints.retain(|c| !a.constraint_rm.contains(c));
        for c in &a.constraint_add {
            if !p.constraints.contains(c) {
                p.constraints.push(c.clone());
            }
        }
        p.preferences
            .retain(|pp| !a.placement_pref_rm.contains(&pp.spread_descriptor));
        for d in &a.placement_pref_add {
            p.preferences.push(PlacementPreference {
                spread_descriptor: d.clone(),
            });
        }
    }
    {
        let e = endpoint(spec);
        e.ports
            .retain(|p| !a.publish_rm.iter().any(|v| publish_rm_matches(v, p)));
        for add in a.publish_add.iter().flat_map(|p| p.0.iter()) {
            // Same target and protocol: replaced.
            e.ports
                .retain(|p| !(p.target_port == add.target_port && p.protocol == add.protocol));
            e.ports.push(add.clone());
        }
    }
    {
        let t = task_spec(spec);
        t.networks.retain(|n| !a.network_rm.contains(&n.target));
        for n in &a.network_add {
            if !t.networks.iter().any(|x| &x.target == n) {
                t.networks.push(NetworkAttachmentConfig {
                    target: n.clone(),
                    aliases: vec![],
                });
            }
        }
        if a.force {
            t.force_update += 1;
        }
    }
    apply_common(spec, &a.common)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct CreateCli {
        #[command(flatten)]
        a: CreateArgs,
    }

    #[derive(Parser)]
    struct UpdateCli {
        #[command(flatten)]
        a: UpdateArgs,
    }

    pub(crate) fn create(args: &[&str]) -> std::result::Result<CreateArgs, clap::Error> {
        CreateCli::try_parse_from(std::iter::once("create").chain(args.iter().copied()))
            .map(|c| c.a)
    }

    #[test]
    fn create_builds_the_spec() {
        let a = create(&[
            "--name",
            "web",
            "--replicas",
            "3",
            "-e",
            "A=1",
            "--constraint",
            "node.role==worker",
            "--reserve-cpu",
            "0.5",
            "--reserve-memory",
            "64M",
            "--limit-memory",
            "1G",
            "--restart-condition",
            "on-failure",
            "--restart-delay",
            "10s",
            "--restart-max-attempts",
            "3",
            "-p",
            "8080:80",
            "-p",
            "mode=host,published=9000,target=90,protocol=udp",
            "--placement-pref",
            "spread=node.labels.zone",
            "--stop-grace-period",
            "1m",
            "--label",
            "tier=front",
            "-d",
            "nginx:1.25",
            "nginx",
            "-g",
            "daemon off;",
        ])
        .unwrap();
        let spec = create_spec(&a).unwrap();
        assert_eq!(spec.name, "web");
        assert_eq!(spec.labels.get("tier").map(String::as_str), Some("front"));
        assert!(matches!(
            spec.mode,
            Some(service_spec::Mode::Replicated(ReplicatedService {
                replicas: 3
            }))
        ));
        let t = spec.task.clone().unwrap();
        let c = t.container.clone().unwrap();
        assert_eq!(c.image, "nginx:1.25");
        assert_eq!(c.args, ["nginx", "-g", "daemon off;"]);
        assert_eq!(c.env, ["A=1"]);
        assert_eq!(c.stop_grace_period_ms, 60_000);
        let r = t.resources.unwrap();
        assert_eq!(
            r.reservations.unwrap(),
            Resources {
                nano_cpus: 500_000_000,
                memory_bytes: 64 << 20
            }
        );
        assert_eq!(r.limits.unwrap().memory_bytes, 1 << 30);
        let rp = t.restart.unwrap();
        assert_eq!(rp.condition, RestartCondition::OnFailure as i32);
        assert_eq!(rp.delay_ms, 10_000);
        assert_eq!(rp.max_attempts, 3);
        let p = t.placement.unwrap();
        assert_eq!(p.constraints, ["node.role==worker"]);
        assert_eq!(p.preferences[0].spread_descriptor, "node.labels.zone");
        let ports = spec.endpoint.unwrap().ports;
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[1].publish_mode, PublishMode::Host as i32);
        assert!(a.common.detach);
    }

    #[test]
    fn create_defaults_and_errors() {
        let spec = create_spec(&create(&["busybox"]).unwrap()).unwrap();
        assert!(matches!(
            spec.mode,
            Some(service_spec::Mode::Replicated(ReplicatedService {
                replicas: 1
            }))
        ));
        let global = create(&["--mode", "global", "--replicas", "2", "busybox"]).unwrap();
        assert_eq!(
            create_spec(&global).map_err(|e| e.to_string()),
            Err("Error: replicas can only be used with replicated mode".into())
        );
        let bad_mode = create(&["--mode", "daemonset", "busybox"]).unwrap();
        assert!(create_spec(&bad_mode).is_err());
        let bad_cond = create(&["--restart-condition", "always", "busybox"]).unwrap();
        assert!(create_spec(&bad_cond).is_err());
        // Flag value errors come from clap.
        assert!(create(&["--reserve-memory", "64X", "busybox"]).is_err());
        assert!(create(&["--replicas", "-1", "busybox"]).is_err());
        assert!(create(&["--restart-delay", "5", "busybox"]).is_err());
        assert!(create(&["-p", "a:b", "busybox"]).is_err());
        // Flags after the image belong to the command.
        let a = create(&["busybox", "sleep", "-d"]).unwrap();
        assert!(!a.common.detach);
        assert_eq!(a.image_and_args, ["busybox", "sleep", "-d"]);
    }

    #[test]
    fn update_modifies_the_spec() {
        let a = create(&[
            "-e",
            "A=1",
            "-e",
            "B=2",
            "--constraint",
            "node.role==worker",
            "-p",
            "8080:80",
            "busybox",
        ])
        .unwrap();
        let mut spec = create_spec(&a).unwrap();
        let u = UpdateCli::try_parse_from([
            "update",
            "--image",
            "busybox:2",
            "--env-add",
            "A=9",
            "--env-rm",
            "B",
            "--constraint-rm",
            "node.role==worker",
            "--constraint-add",
            "node.labels.x==y",
            "--publish-rm",
            "80",
            "--publish-add",
            "9090:90",
            "--replicas",
            "4",
            "--force",
            "web",
        ])
        .unwrap()
        .a;
        update_spec(&mut spec, &u).unwrap();
        let t = spec.task.clone().unwrap();
        let c = t.container.unwrap();
        assert_eq!(c.image, "busybox:2");
        assert_eq!(c.env, ["A=9"]);
        assert_eq!(t.placement.unwrap().constraints, ["node.labels.x==y"]);
        assert_eq!(t.force_update, 1);
        let ports = spec.endpoint.clone().unwrap().ports;
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].target_port, 90);
        assert!(matches!(
            spec.mode,
            Some(service_spec::Mode::Replicated(ReplicatedService {
                replicas: 4
            }))
        ));
        assert_eq!(u.service, ["web"]);
    }
}
