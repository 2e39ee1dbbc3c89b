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
fn mount_arg(s: &str) -> std::result::Result<Mount, String> {
    opts::parse_mount(s)
}
fn file_ref_arg(s: &str) -> std::result::Result<opts::FileReference, String> {
    opts::parse_file_reference(s)
}
fn uint64_arg(s: &str) -> std::result::Result<u64, String> {
    opts::parse_go_uint(s)
}
fn float32_arg(s: &str) -> std::result::Result<f32, String> {
    opts::parse_go_float(s)
}
fn duration_arg(s: &str) -> std::result::Result<std::time::Duration, String> {
    // Docker's PositiveDurationOpt.
    opts::parse_go_duration(s).map_err(|e| {
        if s.starts_with('-') {
            "duration cannot be negative".to_string()
        } else {
            e
        }
    })
}

/// The health check flags (Docker's names; `service update` takes the same ones).
#[derive(Debug, Args, Default)]
pub struct HealthArgs {
    /// Command to run to check health
    #[arg(long, value_name = "string")]
    pub health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h)
    #[arg(long, value_parser = duration_arg, value_name = "duration")]
    pub health_interval: Option<std::time::Duration>,
    /// Maximum time to allow one check to run (ms|s|m|h)
    #[arg(long, value_parser = duration_arg, value_name = "duration")]
    pub health_timeout: Option<std::time::Duration>,
    /// Consecutive failures needed to report unhealthy
    #[arg(long, value_name = "int", allow_negative_numbers = true)]
    pub health_retries: Option<i32>,
    /// Start period for the container to initialize before counting retries towards unstable (ms|s|m|h)
    #[arg(long, value_parser = duration_arg, value_name = "duration")]
    pub health_start_period: Option<std::time::Duration>,
    /// Time between running the check during the start period (ms|s|m|h)
    #[arg(long, value_parser = duration_arg, value_name = "duration")]
    pub health_start_interval: Option<std::time::Duration>,
    /// Disable any container-specified HEALTHCHECK
    #[arg(long)]
    pub no_healthcheck: bool,
}

/// swarmkit's smallest non-zero health check duration.
const MIN_HEALTH_DURATION: std::time::Duration = std::time::Duration::from_millis(1);

fn health_ms(d: std::time::Duration, field: &str) -> Result<i64> {
    if !d.is_zero() && d < MIN_HEALTH_DURATION {
        return Err(bad(format!(
            "ContainerSpec: {field} in HealthConfig cannot be less than 1ms"
        )));
    }
    i64::try_from(d.as_millis()).map_err(|_| {
        bad(format!(
            "ContainerSpec: {field} in HealthConfig is too large"
        ))
    })
}

impl HealthArgs {
    fn any_setting(&self) -> bool {
        self.health_cmd.is_some()
            || self.health_interval.is_some()
            || self.health_timeout.is_some()
            || self.health_retries.is_some()
            || self.health_start_period.is_some()
            || self.health_start_interval.is_some()
    }

    /// Writes the given durations and retries into `h` (validated like swarmkit does).
    fn apply_settings(&self, h: &mut HealthConfig) -> Result<()> {
        if let Some(d) = self.health_interval {
            h.interval_ms = health_ms(d, "Interval")?;
        }
        if let Some(d) = self.health_timeout {
            h.timeout_ms = health_ms(d, "Timeout")?;
        }
        if let Some(d) = self.health_start_period {
            h.start_period_ms = health_ms(d, "StartPeriod")?;
        }
        if let Some(d) = self.health_start_interval {
            h.start_interval_ms = health_ms(d, "StartInterval")?;
        }
        if let Some(r) = self.health_retries {
            if r < 0 {
                return Err(bad(
                    "ContainerSpec: Retries in HealthConfig cannot be negative",
                ));
            }
            h.retries = r;
        }
        Ok(())
    }

    /// `service create`: Docker's `toHealthConfig` (`--health-cmd` alone gives
    /// `["CMD-SHELL", cmd]` with zero durations, i.e. the defaults).
    pub fn to_config(&self) -> Result<Option<HealthConfig>> {
        let have = self.health_cmd.as_deref().is_some_and(|c| !c.is_empty())
            || self.health_interval.is_some()
            || self.health_timeout.is_some()
            || self.health_start_period.is_some()
            || self.health_start_interval.is_some()
            || self.health_retries.is_some_and(|r| r != 0);
        if self.no_healthcheck {
            if have {
                return Err(bad("--no-healthcheck conflicts with --health-* options"));
            }
            return Ok(Some(HealthConfig {
                test: vec!["NONE".into()],
                ..Default::default()
            }));
        }
        if !have {
            return Ok(None);
        }
        let mut h = HealthConfig::default();
        if let Some(cmd) = self.health_cmd.as_deref().filter(|c| !c.is_empty()) {
            h.test = vec!["CMD-SHELL".into(), cmd.to_string()];
        }
        self.apply_settings(&mut h)?;
        Ok(Some(h))
    }

    /// `service update`: Docker's `updateHealthcheck`.
    pub fn update(&self, c: &mut ContainerSpec) -> Result<()> {
        if !self.no_healthcheck && !self.any_setting() {
            return Ok(());
        }
        if self.no_healthcheck {
            if self.any_setting() {
                return Err(bad("--no-healthcheck conflicts with --health-* options"));
            }
            c.healthcheck = Some(HealthConfig {
                test: vec!["NONE".into()],
                ..Default::default()
            });
            return Ok(());
        }
        let h = c.healthcheck.get_or_insert_with(Default::default);
        if h.test.first().map(String::as_str) == Some("NONE") {
            h.test.clear();
        }
        self.apply_settings(h)?;
        if let Some(cmd) = &self.health_cmd {
            h.test = if cmd.is_empty() {
                Vec::new()
            } else {
                vec!["CMD-SHELL".into(), cmd.clone()]
            };
        }
        Ok(())
    }
}

/// The `--update-*` and `--rollback-*` flags (Docker's names, defaults and help).
#[derive(Debug, Args, Default)]
pub struct PolicyArgs {
    /// Maximum number of tasks updated simultaneously (0 to update all at once) (default 1)
    #[arg(long, value_parser = uint64_arg, allow_negative_numbers = true, value_name = "uint")]
    pub update_parallelism: Option<u64>,
    /// Delay between updates (ns|us|ms|s|m|h) (default 0s)
    #[arg(long, value_parser = ms_arg, value_name = "duration")]
    pub update_delay: Option<i64>,
    /// Action on update failure ("pause", "continue", "rollback") (default "pause")
    #[arg(long, value_name = "string")]
    pub update_failure_action: Option<String>,
    /// Duration after each task update to monitor for failure (ns|us|ms|s|m|h) (default 5s)
    #[arg(long, value_parser = ms_arg, value_name = "duration")]
    pub update_monitor: Option<i64>,
    /// Failure rate to tolerate during an update (default 0)
    #[arg(long, value_parser = float32_arg, allow_negative_numbers = true, value_name = "float")]
    pub update_max_failure_ratio: Option<f32>,
    /// Update order ("start-first", "stop-first") (default "stop-first")
    #[arg(long, value_name = "string")]
    pub update_order: Option<String>,
    /// Maximum number of tasks rolled back simultaneously (0 to roll back all at once) (default 1)
    #[arg(long, value_parser = uint64_arg, allow_negative_numbers = true, value_name = "uint")]
    pub rollback_parallelism: Option<u64>,
    /// Delay between task rollbacks (ns|us|ms|s|m|h) (default 0s)
    #[arg(long, value_parser = ms_arg, value_name = "duration")]
    pub rollback_delay: Option<i64>,
    /// Action on rollback failure ("pause", "continue") (default "pause")
    #[arg(long, value_name = "string")]
    pub rollback_failure_action: Option<String>,
    /// Duration after each task rollback to monitor for failure (ns|us|ms|s|m|h) (default 5s)
    #[arg(long, value_parser = ms_arg, value_name = "duration")]
    pub rollback_monitor: Option<i64>,
    /// Failure rate to tolerate during a rollback (default 0)
    #[arg(long, value_parser = float32_arg, allow_negative_numbers = true, value_name = "float")]
    pub rollback_max_failure_ratio: Option<f32>,
    /// Rollback order ("start-first", "stop-first") (default "stop-first")
    #[arg(long, value_name = "string")]
    pub rollback_order: Option<String>,
}

impl PolicyArgs {
    /// Sets the given flags on the spec's update and rollback configs (Docker's defaults for
    /// the rest when the spec has none).
    pub fn apply(&self, spec: &mut ServiceSpec) -> Result<()> {
        let u = (
            self.update_parallelism,
            self.update_delay,
            &self.update_failure_action,
            self.update_monitor,
            self.update_max_failure_ratio,
            &self.update_order,
        );
        let r = (
            self.rollback_parallelism,
            self.rollback_delay,
            &self.rollback_failure_action,
            self.rollback_monitor,
            self.rollback_max_failure_ratio,
            &self.rollback_order,
        );
        for (which, (par, delay, action, monitor, ratio, order)) in [("update", u), ("rollback", r)]
        {
            let any = par.is_some()
                || delay.is_some()
                || action.is_some()
                || monitor.is_some()
                || ratio.is_some()
                || order.is_some();
            if !any {
                continue;
            }
            let slot = if which == "update" {
                &mut spec.update
            } else {
                &mut spec.rollback
            };
            let c = slot.get_or_insert_with(UpdateConfig::docker_default);
            if let Some(p) = par {
                c.parallelism = p;
            }
            if let Some(d) = delay {
                c.delay_ms = d;
            }
            if let Some(a) = action {
                c.failure_action = opts::parse_failure_action(which, a).map_err(bad)? as i32;
            }
            if let Some(m) = monitor {
                c.monitor_ms = m;
            }
            if let Some(x) = ratio {
                c.max_failure_ratio = x;
            }
            if let Some(o) = order {
                c.order = opts::parse_update_order(which, o).map_err(bad)? as i32;
            }
        }
        Ok(())
    }
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
    /// Number of job tasks to run concurrently (default equal to --replicas)
    #[arg(long = "max-concurrent")]
    pub max_concurrent: Option<u64>,
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
    /// Signal to stop the container
    #[arg(long, value_name = "string")]
    pub stop_signal: Option<String>,
    /// Mount the container's root filesystem as read only
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "bool")]
    pub read_only: Option<bool>,
    #[command(flatten)]
    pub health: HealthArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Send registry authentication details to swarm agents
    #[arg(long)]
    pub with_registry_auth: bool,
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
    /// Service mode ("replicated", "global", "replicated-job", "global-job")
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
    /// Attach a filesystem mount to the service
    #[arg(long, value_parser = mount_arg, value_name = "mount")]
    pub mount: Vec<Mount>,
    /// Set one or more supplementary user groups for the container
    #[arg(long, value_name = "list")]
    pub group: Vec<String>,
    /// Specify secrets to expose to the service
    #[arg(long, value_parser = file_ref_arg, value_name = "secret")]
    pub secret: Vec<opts::FileReference>,
    /// Specify configurations to expose to the service
    #[arg(long, value_parser = file_ref_arg, value_name = "config")]
    pub config: Vec<opts::FileReference>,
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
    /// Add or update a mount on a service
    #[arg(long = "mount-add", value_parser = mount_arg, value_name = "mount")]
    pub mount_add: Vec<Mount>,
    /// Remove a mount by its target path
    #[arg(long = "mount-rm", value_name = "list")]
    pub mount_rm: Vec<String>,
    /// Add an additional supplementary user group to the container
    #[arg(long = "group-add", value_name = "list")]
    pub group_add: Vec<String>,
    /// Remove a previously added supplementary user group from the container
    #[arg(long = "group-rm", value_name = "list")]
    pub group_rm: Vec<String>,
    /// Add or update a secret on a service
    #[arg(long = "secret-add", value_parser = file_ref_arg, value_name = "secret")]
    pub secret_add: Vec<opts::FileReference>,
    /// Remove a secret
    #[arg(long = "secret-rm", value_name = "list")]
    pub secret_rm: Vec<String>,
    /// Add or update a config file on a service
    #[arg(long = "config-add", value_parser = file_ref_arg, value_name = "config")]
    pub config_add: Vec<opts::FileReference>,
    /// Remove a configuration file
    #[arg(long = "config-rm", value_name = "list")]
    pub config_rm: Vec<String>,
    /// Force update even if no changes require it
    #[arg(long)]
    pub force: bool,
    /// Rollback to previous specification (done by the managers; other flags are ignored)
    #[arg(long)]
    pub rollback: bool,
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

/// The spec's restart policy, created by the first restart flag: for a job with Docker's
/// job condition (`on-failure`), the flags given changing the rest.
fn restart(spec: &mut ServiceSpec) -> &mut RestartPolicy {
    let job = spec.is_job();
    task_spec(spec)
        .restart
        .get_or_insert_with(|| RestartPolicy {
            condition: if job {
                RestartCondition::OnFailure as i32
            } else {
                RestartCondition::Any as i32
            },
            ..Default::default()
        })
}

/// Applies the flags create and update share to the spec's mode (set by create, or the
/// service's): `--replicas` is a replicated job's completions, `--max-concurrent` only for
/// replicated jobs (Docker's rules and messages).
fn apply_common(spec: &mut ServiceSpec, a: &CommonArgs) -> Result<()> {
    use service_spec::Mode;
    let global = matches!(spec.mode, Some(Mode::Global(_)) | Some(Mode::GlobalJob(_)));
    if let Some(n) = a.replicas {
        match spec.mode.as_mut() {
            Some(Mode::Global(_)) | Some(Mode::GlobalJob(_)) => {
                return Err(bad(
                    "replicas can only be used with replicated or replicated-job mode",
                ))
            }
            Some(Mode::ReplicatedJob(j)) => j.total_completions = n,
            Some(Mode::Replicated(_)) | None => {
                spec.mode = Some(Mode::Replicated(ReplicatedService { replicas: n }))
            }
        }
    }
    if let Some(m) = a.max_concurrent {
        match spec.mode.as_mut() {
            Some(Mode::ReplicatedJob(j)) => j.max_concurrent = m,
            _ => {
                return Err(bad(
                    "max-concurrent can only be used with replicated-job mode",
                ))
            }
        }
    }
    if let Some(m) = a.max_replicas {
        if global {
            return Err(bad(
                "replicas-max-per-node can only be used with replicated or replicated-job mode",
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
    a.policy.apply(spec)?;
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
    if let Some(s) = &a.stop_signal {
        container(spec).stop_signal = s.clone();
    }
    if let Some(r) = a.read_only {
        container(spec).read_only = r;
    }
    Ok(())
}

/// The spec `service create` sends.
/// A `--network` value: a network name or id, or Docker's long syntax
/// `name=NET[,alias=A]...` (`target=` is accepted for `name=`).
pub fn network_attachment(v: &str) -> Result<NetworkAttachmentConfig> {
    if !v.contains('=') {
        if v.is_empty() {
            return Err(bad("invalid --network value \"\": name a network"));
        }
        return Ok(NetworkAttachmentConfig {
            target: v.to_string(),
            aliases: vec![],
        });
    }
    let mut att = NetworkAttachmentConfig::default();
    for part in v.split(',') {
        match part.split_once('=') {
            Some(("name" | "target", n)) => att.target = n.to_string(),
            Some(("alias", a)) if !a.is_empty() => att.aliases.push(a.to_string()),
            _ => {
                return Err(bad(format!(
                "invalid --network field {part:?} in {v:?}: expected name=NETWORK[,alias=ALIAS...]"
            )))
            }
        }
    }
    if att.target.is_empty() {
        return Err(bad(format!(
            "invalid --network value {v:?}: name=NETWORK is required"
        )));
    }
    Ok(att)
}

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
        // Docker: completions = --replicas, concurrency = --max-concurrent or --replicas;
        // neither given, the managers' defaults (1 and 1).
        "replicated-job" => service_spec::Mode::ReplicatedJob(ReplicatedJob {
            max_concurrent: a.common.max_concurrent.or(a.common.replicas).unwrap_or(0),
            total_completions: 0,
        }),
        "global-job" => service_spec::Mode::GlobalJob(GlobalJob {}),
        other => {
            return Err(bad(format!(
                "invalid service mode {other:?}, only replicated, global, replicated-job and global-job are supported"
            )))
        }
    });
    {
        let c = container(&mut spec);
        c.image = image.clone();
        c.args = args.to_vec();
        c.env = a.env.clone();
        c.labels = opts::parse_labels(&a.container_label).map_err(bad)?;
        let mut targets = std::collections::BTreeSet::new();
        for m in &a.mount {
            if !targets.insert(m.target.as_str()) {
                // swarmkit's validateMounts.
                return Err(bad(format!("invalid duplicate mount point: {}", m.target)));
            }
        }
        c.mounts = a.mount.clone();
        c.groups = a.group.clone();
        c.secrets = a.secret.iter().map(secret_reference).collect();
        c.configs = a.config.iter().map(config_reference).collect();
        c.healthcheck = a.common.health.to_config()?;
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
        .map(|n| network_attachment(n))
        .collect::<Result<_>>()?;
    apply_common(&mut spec, &a.common)?;
    Ok(spec)
}

/// `--publish-rm` value: removes ports with that target (and protocol when given).
fn publish_rm_matches(v: &str, p: &PortConfig) -> bool {
    if v.contains('=') {
        return opts::parse_publish_fields(v).is_ok_and(|list| {
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

/// A `--secret` value as the spec carries it: by name (the managers resolve the id).
fn secret_reference(r: &opts::FileReference) -> SecretReference {
    SecretReference {
        secret_id: String::new(),
        secret_name: r.source.clone(),
        file: Some(r.file.clone()),
    }
}

fn config_reference(r: &opts::FileReference) -> ConfigReference {
    ConfigReference {
        config_id: String::new(),
        config_name: r.source.clone(),
        file: Some(r.file.clone()),
    }
}

/// Docker's `updateMounts`: added mounts replace those with the same target, `--mount-rm`
/// removes by target; the result is sorted by source then target.
fn update_mounts(mounts: &mut Vec<Mount>, add: &[Mount], rm: &[String]) -> Result<()> {
    if add.is_empty() && rm.is_empty() {
        return Ok(());
    }
    let mut by_target: std::collections::BTreeMap<String, Mount> = Default::default();
    for m in add {
        if by_target.insert(m.target.clone(), m.clone()).is_some() {
            return Err(bad("duplicate mount target"));
        }
    }
    for m in mounts.iter() {
        by_target
            .entry(m.target.clone())
            .or_insert_with(|| m.clone());
    }
    let mut out: Vec<Mount> = by_target
        .into_values()
        .filter(|m| !rm.contains(&m.target))
        .collect();
    out.sort_by(|a, b| (&a.source, &a.target).cmp(&(&b.source, &b.target)));
    *mounts = out;
    Ok(())
}

/// Docker's `updateGroups`: add, remove, sort (duplicates dropped).
fn update_groups(groups: &mut Vec<String>, add: &[String], rm: &[String]) {
    if add.is_empty() && rm.is_empty() {
        return;
    }
    groups.extend(add.iter().cloned());
    groups.retain(|g| !rm.contains(g));
    groups.sort();
    groups.dedup();
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
        update_mounts(&mut c.mounts, &a.mount_add, &a.mount_rm)?;
        update_groups(&mut c.groups, &a.group_add, &a.group_rm);
        // Docker's updateSecrets/updateConfigs: removed by name, then the added appended
        // (the managers refuse two on one target).
        c.secrets.retain(|r| !a.secret_rm.contains(&r.secret_name));
        c.secrets.extend(a.secret_add.iter().map(secret_reference));
        c.configs.retain(|r| !a.config_rm.contains(&r.config_name));
        c.configs.extend(a.config_add.iter().map(config_reference));
        a.common.health.update(c)?;
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
            let att = network_attachment(n)?;
            match t.networks.iter_mut().find(|x| x.target == att.target) {
                // Already attached: new aliases replace the old ones.
                Some(x) => {
                    if !att.aliases.is_empty() {
                        x.aliases = att.aliases;
                    }
                }
                None => t.networks.push(att),
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
            Err("Error: replicas can only be used with replicated or replicated-job mode".into())
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

    #[test]
    fn source_ip_is_set_by_create_and_publish_add_and_kept_by_updates() {
        let a = create(&[
            "-p",
            "published=8080,target=80,protocol=tcp,mode=ingress,source-ip=preserve",
            "-p",
            "9000:90",
            "nginx",
        ])
        .unwrap();
        let mut spec = create_spec(&a).unwrap();
        let preserved = |spec: &ServiceSpec| -> Vec<(u32, bool)> {
            spec.endpoint
                .as_ref()
                .unwrap()
                .ports
                .iter()
                .map(|p| (p.published_port, p.preserve_source_ip))
                .collect()
        };
        assert_eq!(preserved(&spec), [(8080, true), (9000, false)]);
        // An update of something else keeps it.
        update_spec(
            &mut spec,
            &update(&["--image", "nginx:2", "--env-add", "A=1"]).unwrap(),
        )
        .unwrap();
        assert_eq!(preserved(&spec), [(8080, true), (9000, false)]);
        // --publish-add sets it (replacing the port with the same target and protocol).
        let u = update(&[
            "--publish-add",
            "published=9000,target=90,source-ip=preserve",
        ])
        .unwrap();
        update_spec(&mut spec, &u).unwrap();
        assert_eq!(preserved(&spec), [(8080, true), (9000, true)]);
        let u = update(&["--publish-add", "published=8080,target=80,source-ip=nat"]).unwrap();
        update_spec(&mut spec, &u).unwrap();
        assert_eq!(preserved(&spec), [(9000, true), (8080, false)]);
        // Refused with mode=host, by create and by --publish-add.
        let e = create(&[
            "-p",
            "mode=host,published=8080,target=80,source-ip=preserve",
            "nginx",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("source-ip only applies to mode=ingress"), "{e}");
        let e = update(&[
            "--publish-add",
            "mode=host,published=1,target=1,source-ip=nat",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("source-ip only applies to mode=ingress"), "{e}");
    }

    fn update(args: &[&str]) -> std::result::Result<UpdateArgs, clap::Error> {
        UpdateCli::try_parse_from(
            std::iter::once("update")
                .chain(args.iter().copied())
                .chain(["web"]),
        )
        .map(|c| c.a)
    }

    fn cspec(spec: &ServiceSpec) -> ContainerSpec {
        spec.task.clone().unwrap().container.unwrap()
    }

    #[test]
    fn create_health_flags() {
        let spec = create_spec(&create(&["--health-cmd", "curl -f localhost", "busybox"]).unwrap())
            .unwrap();
        assert_eq!(
            cspec(&spec).healthcheck,
            Some(HealthConfig {
                test: vec!["CMD-SHELL".into(), "curl -f localhost".into()],
                ..Default::default()
            })
        );
        let spec = create_spec(
            &create(&[
                "--health-cmd",
                "true",
                "--health-interval",
                "5s",
                "--health-timeout",
                "2s",
                "--health-retries",
                "4",
                "--health-start-period",
                "1m",
                "--health-start-interval",
                "500ms",
                "busybox",
            ])
            .unwrap(),
        )
        .unwrap();
        let h = cspec(&spec).healthcheck.unwrap();
        assert_eq!(
            (
                h.interval_ms,
                h.timeout_ms,
                h.retries,
                h.start_period_ms,
                h.start_interval_ms
            ),
            (5000, 2000, 4, 60_000, 500)
        );
        // Only an interval: the test stays empty (the image's test is used).
        let spec = create_spec(&create(&["--health-interval", "10s", "busybox"]).unwrap()).unwrap();
        let h = cspec(&spec).healthcheck.unwrap();
        assert!(h.test.is_empty());
        assert_eq!(h.interval_ms, 10_000);
        // No flag: no health config.
        let spec = create_spec(&create(&["busybox"]).unwrap()).unwrap();
        assert_eq!(cspec(&spec).healthcheck, None);
        let spec = create_spec(&create(&["--no-healthcheck", "busybox"]).unwrap()).unwrap();
        assert_eq!(cspec(&spec).healthcheck.unwrap().test, ["NONE"]);

        let err = |args: &[&str]| create_spec(&create(args).unwrap()).unwrap_err().to_string();
        assert_eq!(
            err(&["--no-healthcheck", "--health-cmd", "true", "busybox"]),
            "Error: --no-healthcheck conflicts with --health-* options"
        );
        assert_eq!(
            err(&["--health-retries", "-1", "busybox"]),
            "Error: ContainerSpec: Retries in HealthConfig cannot be negative"
        );
        assert_eq!(
            err(&["--health-interval", "500us", "busybox"]),
            "Error: ContainerSpec: Interval in HealthConfig cannot be less than 1ms"
        );
        let e = create(&["--health-interval", "-1s", "busybox"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("duration cannot be negative"), "{e}");
        assert!(create(&["--health-timeout", "5", "busybox"]).is_err());
        assert!(create(&["--health-retries", "x", "busybox"]).is_err());
    }

    #[test]
    fn secrets_and_configs_are_references_by_name_and_updates_add_and_remove_them() {
        let mut spec = create_spec(
            &create(&[
                "--secret",
                "db_pw",
                "--secret",
                "source=tls_key,target=key.pem,uid=100,gid=101,mode=0400",
                "--config",
                "src=app.conf,target=/etc/app.conf",
                "busybox",
            ])
            .unwrap(),
        )
        .unwrap();
        let c = cspec(&spec);
        let names: Vec<&str> = c.secrets.iter().map(|r| r.secret_name.as_str()).collect();
        assert_eq!(names, ["db_pw", "tls_key"]);
        assert!(
            c.secrets.iter().all(|r| r.secret_id.is_empty()),
            "the managers resolve ids"
        );
        let f = c.secrets[1].file.as_ref().unwrap();
        assert_eq!(
            (f.name.as_str(), f.uid.as_str(), f.gid.as_str(), f.mode),
            ("key.pem", "100", "101", 0o400)
        );
        let f = c.secrets[0].file.as_ref().unwrap();
        assert_eq!((f.name.as_str(), f.mode), ("db_pw", 0o444));
        assert_eq!(c.configs[0].config_name, "app.conf");
        assert_eq!(c.configs[0].file.as_ref().unwrap().name, "/etc/app.conf");
        let u = update(&[
            "--secret-rm",
            "db_pw",
            "--secret-add",
            "new_pw",
            "--config-rm",
            "app.conf",
        ])
        .unwrap();
        update_spec(&mut spec, &u).unwrap();
        let c = cspec(&spec);
        let names: Vec<&str> = c.secrets.iter().map(|r| r.secret_name.as_str()).collect();
        assert_eq!(names, ["tls_key", "new_pw"]);
        assert!(c.configs.is_empty());
        let e = create(&["--secret", "target=x", "busybox"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("source is required"), "{e}");
    }

    #[test]
    fn create_mounts_groups_signal_read_only() {
        let spec = create_spec(
            &create(&[
                "--mount",
                "type=bind,source=/x,target=/y,readonly",
                "--mount",
                "type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=0700",
                "--group",
                "wheel",
                "--group",
                "1001",
                "--stop-signal",
                "SIGUSR1",
                "--read-only",
                "busybox",
            ])
            .unwrap(),
        )
        .unwrap();
        let c = cspec(&spec);
        assert_eq!(c.mounts.len(), 2);
        assert_eq!(c.mounts[0].r#type, MountType::Bind as i32);
        assert!(c.mounts[0].read_only);
        assert_eq!(c.mounts[1].r#type, MountType::Tmpfs as i32);
        assert_eq!(c.mounts[1].tmpfs_size_bytes, 1 << 20);
        assert_eq!(c.mounts[1].tmpfs_mode, 0o700);
        assert_eq!(c.groups, ["wheel", "1001"]);
        assert_eq!(c.stop_signal, "SIGUSR1");
        assert!(c.read_only);
        // `--read-only` does not eat the image argument.
        let a = create(&["--read-only", "busybox", "sh"]).unwrap();
        assert_eq!(a.image_and_args, ["busybox", "sh"]);
        assert_eq!(a.common.read_only, Some(true));
        let a = create(&["--read-only=false", "busybox"]).unwrap();
        assert_eq!(a.common.read_only, Some(false));

        let a = create(&["--mount", "source=data,target=/d,volume-nocopy", "busybox"]).unwrap();
        let v = &create_spec(&a)
            .unwrap()
            .task
            .unwrap()
            .container
            .unwrap()
            .mounts[0];
        assert_eq!(
            (v.r#type, v.source.as_str(), v.volume_nocopy),
            (MountType::Volume as i32, "data", true)
        );
        let e = create(&["--mount", "type=volume,source=v,target=/d", "busybox"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("too short"), "{e}");
        let dup = create(&[
            "--mount",
            "type=tmpfs,target=/d",
            "--mount",
            "type=bind,source=/x,target=/d",
            "busybox",
        ])
        .unwrap();
        assert_eq!(
            create_spec(&dup).unwrap_err().to_string(),
            "Error: invalid duplicate mount point: /d"
        );
    }

    #[test]
    fn update_health_mounts_groups() {
        let mut spec = create_spec(
            &create(&[
                "--health-cmd",
                "true",
                "--health-retries",
                "5",
                "--mount",
                "type=bind,source=/b,target=/y",
                "--mount",
                "type=tmpfs,target=/t",
                "--group",
                "b",
                "busybox",
            ])
            .unwrap(),
        )
        .unwrap();
        // Nothing health-related: unchanged.
        update_spec(&mut spec, &update(&["--image", "busybox:2"]).unwrap()).unwrap();
        assert_eq!(cspec(&spec).healthcheck.unwrap().retries, 5);
        assert_eq!(cspec(&spec).mounts[0].target, "/y");

        update_spec(&mut spec, &update(&["--health-interval", "7s"]).unwrap()).unwrap();
        let h = cspec(&spec).healthcheck.unwrap();
        assert_eq!((h.test.len(), h.interval_ms, h.retries), (2, 7000, 5));

        update_spec(&mut spec, &update(&["--no-healthcheck"]).unwrap()).unwrap();
        assert_eq!(
            cspec(&spec).healthcheck,
            Some(HealthConfig {
                test: vec!["NONE".into()],
                ..Default::default()
            })
        );
        update_spec(&mut spec, &update(&["--health-timeout", "3s"]).unwrap()).unwrap();
        let h = cspec(&spec).healthcheck.unwrap();
        assert!(h.test.is_empty(), "NONE is dropped by a --health-* update");
        assert_eq!(h.timeout_ms, 3000);
        update_spec(&mut spec, &update(&["--health-cmd", "exit 0"]).unwrap()).unwrap();
        assert_eq!(
            cspec(&spec).healthcheck.unwrap().test,
            ["CMD-SHELL", "exit 0"]
        );
        assert!(update_spec(
            &mut spec,
            &update(&["--no-healthcheck", "--health-retries", "1"]).unwrap()
        )
        .is_err());

        update_spec(
            &mut spec,
            &update(&[
                "--mount-add",
                "type=bind,source=/a,target=/y,readonly",
                "--mount-add",
                "type=tmpfs,target=/z",
                "--mount-rm",
                "/t",
                "--group-add",
                "a",
                "--group-rm",
                "b",
                "--stop-signal",
                "USR2",
                "--read-only",
            ])
            .unwrap(),
        )
        .unwrap();
        let c = cspec(&spec);
        let mounts: Vec<(&str, &str, bool)> = c
            .mounts
            .iter()
            .map(|m| (m.source.as_str(), m.target.as_str(), m.read_only))
            .collect();
        assert_eq!(mounts, [("", "/z", false), ("/a", "/y", true)]);
        assert_eq!(c.groups, ["a"]);
        assert_eq!(c.stop_signal, "USR2");
        assert!(c.read_only);
        update_spec(&mut spec, &update(&["--read-only=false"]).unwrap()).unwrap();
        assert!(!cspec(&spec).read_only);
        let dup = update(&[
            "--mount-add",
            "type=tmpfs,target=/q",
            "--mount-add",
            "type=tmpfs,target=/q",
        ])
        .unwrap();
        assert_eq!(
            update_spec(&mut spec, &dup).unwrap_err().to_string(),
            "Error: duplicate mount target"
        );
    }

    #[test]
    fn network_values() {
        let a = network_attachment("front").unwrap();
        assert_eq!((a.target.as_str(), a.aliases.len()), ("front", 0));
        let a = network_attachment("name=front,alias=web,alias=www").unwrap();
        assert_eq!(a.target, "front");
        assert_eq!(a.aliases, ["web", "www"]);
        for bad in ["", "alias=web", "name=front,driver-opt=x"] {
            assert!(network_attachment(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoint_mode_flag() {
        let a = create(&[
            "--endpoint-mode",
            "dnsrr",
            "--network",
            "name=front,alias=db",
            "x",
        ])
        .unwrap();
        let mut spec = create_spec(&a).unwrap();
        assert_eq!(
            spec.endpoint.as_ref().unwrap().mode,
            EndpointMode::Dnsrr as i32
        );
        let t = spec.task.as_ref().unwrap();
        assert_eq!(t.networks[0].target, "front");
        assert_eq!(t.networks[0].aliases, ["db"]);
        let a = create(&["x"]).unwrap();
        assert_eq!(
            create_spec(&a).unwrap().endpoint.map_or(0, |e| e.mode),
            EndpointMode::Vip as i32,
            "vip by default"
        );
        update_spec(
            &mut spec,
            &update(&["--endpoint-mode", "vip", "svc"]).unwrap(),
        )
        .unwrap();
        assert_eq!(
            spec.endpoint.as_ref().unwrap().mode,
            EndpointMode::Vip as i32
        );
        let bad = create(&["--endpoint-mode", "rr", "x"]).unwrap();
        let e = create_spec(&bad).unwrap_err().to_string();
        assert!(e.contains("only vip and dnsrr"), "{e}");
    }

    #[test]
    fn job_modes_and_their_flags() {
        use service_spec::Mode;
        let spec = |args: &[&str]| create_spec(&create(args).unwrap()).map_err(|e| e.to_string());
        assert_eq!(
            spec(&[
                "--mode",
                "replicated-job",
                "--replicas",
                "5",
                "--max-concurrent",
                "2",
                "busybox"
            ])
            .unwrap()
            .mode,
            Some(Mode::ReplicatedJob(ReplicatedJob {
                max_concurrent: 2,
                total_completions: 5
            }))
        );
        // Docker: the concurrency defaults to --replicas; neither: the managers' default.
        assert_eq!(
            spec(&["--mode", "replicated-job", "--replicas", "3", "busybox"])
                .unwrap()
                .mode,
            Some(Mode::ReplicatedJob(ReplicatedJob {
                max_concurrent: 3,
                total_completions: 3
            }))
        );
        assert_eq!(
            spec(&["--mode", "replicated-job", "busybox"]).unwrap().mode,
            Some(Mode::ReplicatedJob(ReplicatedJob::default()))
        );
        let g = spec(&["--mode", "global-job", "busybox"]).unwrap();
        assert_eq!(g.mode, Some(Mode::GlobalJob(GlobalJob {})));
        assert_eq!(g.update, None, "no update policy unless asked");
        // A restart flag on a job keeps Docker's job condition.
        let r = spec(&[
            "--mode",
            "global-job",
            "--restart-max-attempts",
            "2",
            "busybox",
        ])
        .unwrap();
        let p = r.task.unwrap().restart.unwrap();
        assert_eq!(p.condition, RestartCondition::OnFailure as i32);
        assert_eq!(p.max_attempts, 2);

        // Docker's refusals.
        for (args, msg) in [
            (
                &["--mode", "global-job", "--replicas", "2", "busybox"][..],
                "Error: replicas can only be used with replicated or replicated-job mode",
            ),
            (
                &["--max-concurrent", "2", "busybox"][..],
                "Error: max-concurrent can only be used with replicated-job mode",
            ),
            (
                &["--mode", "global", "--max-concurrent", "2", "busybox"][..],
                "Error: max-concurrent can only be used with replicated-job mode",
            ),
            (
                &["--mode", "global-job", "--replicas-max-per-node", "1", "busybox"][..],
                "Error: replicas-max-per-node can only be used with replicated or replicated-job mode",
            ),
        ] {
            assert_eq!(spec(args), Err(msg.to_string()), "{args:?}");
        }
        let e = spec(&["--mode", "cron-job", "busybox"]).unwrap_err();
        assert!(e.contains("replicated-job and global-job"), "{e}");

        // Update: --replicas is a replicated job's completions, --max-concurrent its concurrency.
        let mut s = spec(&["--mode", "replicated-job", "--replicas", "2", "busybox"]).unwrap();
        update_spec(
            &mut s,
            &update(&["--replicas", "6", "--max-concurrent", "3", "j"]).unwrap(),
        )
        .unwrap();
        assert_eq!(
            s.mode,
            Some(Mode::ReplicatedJob(ReplicatedJob {
                max_concurrent: 3,
                total_completions: 6
            }))
        );
        let mut svc = spec(&["busybox"]).unwrap();
        let e = update_spec(&mut svc, &update(&["--max-concurrent", "3", "j"]).unwrap())
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "Error: max-concurrent can only be used with replicated-job mode"
        );
    }
}
