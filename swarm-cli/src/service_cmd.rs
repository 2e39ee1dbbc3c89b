//! `swarm service create|inspect|ls|ps|rm|scale|update|rollback`.

use std::collections::HashSet;

use clap::{Args, Subcommand};
use proto::*;

use crate::client::Client;
use crate::error::{CliError, Result};
use crate::format::{self, natural_cmp};
use crate::json::{self, Kind};
use crate::node_cmd;
use crate::opts;
use crate::progress;
use crate::ps;
use crate::table::Table;

#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Create a new service
    Create(Box<CreateArgs>),
    /// Display detailed information on one or more services
    Inspect(InspectArgs),
    /// List services
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// List the tasks of one or more services
    Ps(PsArgs),
    /// Remove one or more services
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Scale one or multiple replicated services
    Scale(ScaleArgs),
    /// Update a service
    Update(Box<UpdateArgs>),
    /// Revert changes to a service's configuration
    Rollback(RollbackArgs),
}

// ---------------------------------------------------------------- flag value types

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

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Print the information in a human friendly format
    #[arg(long)]
    pub pretty: bool,
    /// Output format: "json" (default)
    #[arg(short, long)]
    pub format: Option<String>,
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only display IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format: "table" (default) or "json" (one service per line)
    #[arg(long)]
    pub format: Option<String>,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Only display task IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not truncate output
    #[arg(long)]
    pub no_trunc: bool,
    /// Filter output based on conditions provided (desired-state=, node=, id=, name=)
    #[arg(short, long)]
    pub filter: Vec<String>,
    /// Output format: "table" (default) or "json" (one task per line)
    #[arg(long)]
    pub format: Option<String>,
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    pub detach: bool,
    #[arg(value_name = "SERVICE=REPLICAS")]
    pub specs: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    pub detach: bool,
    /// Suppress progress output
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(value_name = "SERVICE")]
    pub service: Vec<String>,
}

// ---------------------------------------------------------------- spec building

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

// ---------------------------------------------------------------- ls

/// MODE and REPLICAS columns. Running tasks: observed and desired RUNNING on a node that is
/// not down. Desired: the replica count, or for a global service its tasks meant to run.
pub fn replicas_column(
    svc: &Service,
    tasks: &[Task],
    active_nodes: &HashSet<String>,
) -> (String, String) {
    let mine = tasks.iter().filter(|t| t.service_id == svc.id);
    let running = mine
        .clone()
        .filter(|t| {
            t.state() == TaskState::Running
                && t.desired() <= TaskState::Running
                && active_nodes.contains(&t.node_id)
        })
        .count();
    match svc.replicas() {
        None => {
            let desired = mine.filter(|t| t.desired() <= TaskState::Running).count();
            ("global".into(), format!("{running}/{desired}"))
        }
        Some(n) => {
            let max = svc
                .spec
                .as_ref()
                .and_then(|s| s.task.as_ref())
                .and_then(|t| t.placement.as_ref())
                .map_or(0, |p| p.max_replicas);
            let text = if max > 0 {
                format!("{running}/{n} (max {max} per node)")
            } else {
                format!("{running}/{n}")
            };
            ("replicated".into(), text)
        }
    }
}

fn image_of(svc: &Service) -> &str {
    svc.spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .and_then(|t| t.container.as_ref())
        .map_or("", |c| c.image.as_str())
}

fn ports_of(svc: &Service) -> &[PortConfig] {
    match svc.endpoint.as_ref() {
        Some(e) if !e.ports.is_empty() => &e.ports,
        _ => svc
            .spec
            .as_ref()
            .and_then(|s| s.endpoint.as_ref())
            .map_or(&[], |e| e.ports.as_slice()),
    }
}

pub fn sort_services(services: &mut [Service]) {
    services.sort_by(|a, b| natural_cmp(a.name(), b.name()).then(a.id.cmp(&b.id)));
}

pub fn ls_table(services: &[Service], tasks: &[Task], active_nodes: &HashSet<String>) -> String {
    let mut t = Table::new(["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]);
    for s in services {
        let (mode, replicas) = replicas_column(s, tasks, active_nodes);
        t.row([
            format::truncate_id(&s.id).to_string(),
            s.name().to_string(),
            mode,
            replicas,
            format::display_image(image_of(s)),
            format::service_ports(ports_of(s)),
        ]);
    }
    t.render()
}

fn json_format(f: &Option<String>) -> Result<bool> {
    match f.as_deref() {
        None | Some("") | Some("table") => Ok(false),
        Some("json") => Ok(true),
        Some(other) => Err(crate::unsupported_format(other)),
    }
}

pub async fn ls(c: &Client, a: LsArgs) -> Result<()> {
    let json_out = json_format(&a.format)?;
    let mut services = c.services().await?;
    sort_services(&mut services);
    if a.quiet {
        for s in &services {
            println!("{}", format::truncate_id(&s.id));
        }
        return Ok(());
    }
    if json_out {
        for s in &services {
            println!("{}", json::line(s, Kind::Service)?);
        }
        return Ok(());
    }
    let (tasks, active) = if services.is_empty() {
        (Vec::new(), HashSet::new())
    } else {
        let tasks = c.tasks(ListTasksRequest::default()).await?;
        let active = c
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.state() != NodeState::Down)
            .map(|n| n.id)
            .collect();
        (tasks, active)
    };
    print!("{}", ls_table(&services, &tasks, &active));
    Ok(())
}

// ---------------------------------------------------------------- inspect

fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// Docker's `service inspect --pretty` text (the fields this project has).
pub fn pretty(s: &Service) -> String {
    let spec = s.spec.clone().unwrap_or_default();
    let task = spec.task.clone().unwrap_or_default();
    let c = task.container.clone().unwrap_or_default();
    let mut o = format!("\nID:\t\t{}\nName:\t\t{}", s.id, spec.name);
    if !spec.labels.is_empty() {
        o.push_str("\nLabels:");
        for (k, v) in &spec.labels {
            if v.is_empty() {
                o.push_str(&format!("\n {k}"));
            } else {
                o.push_str(&format!("\n {k}={v}"));
            }
        }
    }
    o.push_str("\nService Mode:");
    match s.replicas() {
        None => o.push_str("\tGlobal"),
        Some(n) => o.push_str(&format!("\tReplicated\n Replicas:\t{n}")),
    }
    o.push_str("\nPlacement:");
    if let Some(p) = &task.placement {
        if !p.constraints.is_empty() {
            o.push_str(&format!("\n Constraints:\t{}", go_list(&p.constraints)));
        }
        if !p.preferences.is_empty() {
            let prefs: Vec<String> = p
                .preferences
                .iter()
                .map(|pp| format!("spread={}", pp.spread_descriptor))
                .collect();
            o.push_str(&format!("\n Preferences:   {}", go_list(&prefs)));
        }
        if p.max_replicas > 0 {
            o.push_str(&format!("\n Max Replicas Per Node:   {}", p.max_replicas));
        }
    }
    if let Some(r) = &task.restart {
        o.push_str(&format!(
            "\nRestartPolicy:\n Condition:\t{}\n Delay:\t\t{}\n MaxAttempts:\t{}",
            match RestartCondition::try_from(r.condition).unwrap_or_default() {
                RestartCondition::Any => "any",
                RestartCondition::OnFailure => "on-failure",
                RestartCondition::None => "none",
            },
            format::go_duration(std::time::Duration::from_millis(r.delay_ms.max(0) as u64)),
            r.max_attempts
        ));
        if r.window_ms > 0 {
            o.push_str(&format!(
                "\n Window:\t{}",
                format::go_duration(std::time::Duration::from_millis(r.window_ms as u64))
            ));
        }
    }
    o.push_str(&format!("\nContainerSpec:\n Image:\t\t{}", c.image));
    if !c.args.is_empty() {
        o.push_str("\n Args:\t\t");
        for a in &c.args {
            o.push_str(a);
            o.push(' ');
        }
    }
    if !c.env.is_empty() {
        o.push_str("\n Env:\t\t");
        for e in &c.env {
            o.push_str(e);
            o.push(' ');
        }
    }
    if !c.dir.is_empty() {
        o.push_str(&format!("\n Dir:\t\t{}", c.dir));
    }
    if !c.user.is_empty() {
        o.push_str(&format!("\n User: {}", c.user));
    }
    if let Some(res) = &task.resources {
        let r = res.reservations.unwrap_or_default();
        let l = res.limits.unwrap_or_default();
        let has_r = r.nano_cpus > 0 || r.memory_bytes > 0;
        let has_l = l.nano_cpus > 0 || l.memory_bytes > 0;
        if has_r || has_l {
            o.push_str("\nResources:");
        }
        for (title, x, has) in [(" Reservations:", &r, has_r), (" Limits:", &l, has_l)] {
            if !has {
                continue;
            }
            o.push('\n');
            o.push_str(title);
            if x.nano_cpus > 0 {
                o.push_str(&format!("\n  CPU:\t\t{}", x.nano_cpus as f64 / 1e9));
            }
            if x.memory_bytes > 0 {
                o.push_str(&format!(
                    "\n  Memory:\t{}",
                    format::bytes_size(x.memory_bytes)
                ));
            }
        }
    }
    if !task.networks.is_empty() {
        o.push_str("\nNetworks:");
        for n in &task.networks {
            o.push_str(&format!(" {}", n.target));
        }
        o.push(' ');
    }
    let mode = spec.endpoint.as_ref().map_or(EndpointMode::Vip, |e| {
        EndpointMode::try_from(e.mode).unwrap_or_default()
    });
    o.push_str(&format!(
        "\nEndpoint Mode:\t{}",
        match mode {
            EndpointMode::Vip => "vip",
            EndpointMode::Dnsrr => "dnsrr",
        }
    ));
    let ports = ports_of(s);
    if !ports.is_empty() {
        o.push_str("\nPorts:");
        for p in ports {
            o.push_str(&format!(
                "\n PublishedPort = {}\n  Protocol = {}\n  TargetPort = {}\n  PublishMode = {}",
                p.published_port,
                format::protocol_name(p.protocol),
                p.target_port,
                format::publish_mode_name(p.publish_mode)
            ));
        }
        o.push(' ');
    }
    o.push('\n');
    o
}

pub async fn inspect(c: &Client, a: InspectArgs) -> Result<()> {
    if !a.pretty {
        json_format(&Some(a.format.clone().unwrap_or_else(|| "json".into())))?;
    }
    let mut values = Vec::new();
    let mut texts = Vec::new();
    let mut errors = Vec::new();
    for r in &a.services {
        match c.service(r).await {
            Ok(s) if a.pretty => texts.push(pretty(&s)),
            Ok(s) => values.push(json::value(&s, Kind::Service)?),
            Err(e) => errors.push(e),
        }
    }
    if a.pretty {
        print!("{}", texts.join("\n"));
    } else {
        println!("{}", json::inspect_array(&values)?);
    }
    match CliError::join(errors) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------- ps

pub async fn service_ps(c: &Client, a: PsArgs) -> Result<()> {
    let json_out = json_format(&a.format)?;
    let filter = ps::Filter::parse(&a.filter).map_err(bad)?;
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for r in &a.services {
        match c.service(r).await {
            Ok(s) => found.push(s),
            Err(e) => errors.push(e),
        }
    }
    if found.is_empty() {
        return Err(CliError::join(errors).unwrap_or_else(|| bad("no service given")));
    }
    let mut names = node_cmd::names(c).await?;
    for s in &found {
        names.services.insert(s.id.clone(), s.name().to_string());
    }
    let ids: HashSet<&str> = found.iter().map(|s| s.id.as_str()).collect();
    let node_ids: Vec<String> = filter
        .nodes
        .iter()
        .map(|n| {
            names
                .nodes
                .iter()
                .find(|(_, host)| *host == n)
                .map_or_else(|| n.clone(), |(id, _)| id.clone())
        })
        .collect();
    let tasks: Vec<Task> = c
        .tasks(ListTasksRequest {
            service_ids: found.iter().map(|s| s.id.clone()).collect(),
            node_ids,
            desired_states: filter.desired.iter().map(|s| *s as i32).collect(),
        })
        .await?
        .into_iter()
        .filter(|t| ids.contains(t.service_id.as_str()) && filter.keep(t, &names))
        .collect();
    node_cmd::print_tasks(&tasks, &names, a.quiet, a.no_trunc || a.quiet, json_out)?;
    match CliError::join(errors) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------- create/update/scale/rm

pub async fn create(c: &Client, a: Box<CreateArgs>) -> Result<()> {
    let spec = create_spec(&a)?;
    let svc = c
        .control
        .clone()
        .create_service(CreateServiceRequest { spec: Some(spec) })
        .await
        .map_err(|s| c.err(s))?
        .into_inner();
    println!("{}", svc.id);
    if !a.common.detach {
        progress::wait_converged(c, &svc.id, a.common.quiet).await?;
    }
    Ok(())
}

async fn write_spec(c: &Client, svc: &Service, spec: ServiceSpec) -> Result<Service> {
    Ok(c.control
        .clone()
        .update_service(UpdateServiceRequest {
            service_id: svc.id.clone(),
            service_version: svc.meta.as_ref().map_or(0, |m| m.version),
            spec: Some(spec),
        })
        .await
        .map_err(|s| c.err(s))?
        .into_inner())
}

pub async fn update(c: &Client, a: UpdateArgs, name: String) -> Result<()> {
    let svc = c.service(&name).await?;
    let mut spec = svc.spec.clone().unwrap_or_default();
    update_spec(&mut spec, &a)?;
    write_spec(c, &svc, spec).await?;
    println!("{name}");
    if !a.common.detach {
        progress::wait_converged(c, &svc.id, a.common.quiet).await?;
    }
    Ok(())
}

pub async fn rollback(c: &Client, a: RollbackArgs, name: String) -> Result<()> {
    let svc = c.service(&name).await?;
    let Some(prev) = svc.previous_spec.clone() else {
        return Err(bad(format!(
            "service {name} does not have a previous spec to roll back to"
        )));
    };
    write_spec(c, &svc, prev).await?;
    println!("{name}");
    if !a.detach {
        progress::wait_converged(c, &svc.id, a.quiet).await?;
    }
    Ok(())
}

/// `scale` arguments, checked before anything is changed (Docker's usage error).
pub fn parse_scale_args(specs: &[String]) -> std::result::Result<Vec<(String, u64)>, String> {
    specs
        .iter()
        .map(|s| opts::parse_scale(s).ok_or_else(|| s.clone()))
        .collect()
}

pub async fn scale(c: &Client, a: ScaleArgs, specs: Vec<(String, u64)>) -> Result<()> {
    let mut errors = Vec::new();
    let mut scaled = Vec::new();
    for (name, n) in specs {
        let result = async {
            let svc = c.service(&name).await?;
            if svc.is_global() {
                return Err(CliError::raw("scale can only be used with replicated mode"));
            }
            let mut spec = svc.spec.clone().unwrap_or_default();
            spec.mode = Some(service_spec::Mode::Replicated(ReplicatedService {
                replicas: n,
            }));
            write_spec(c, &svc, spec).await?;
            println!("{name} scaled to {n}");
            Ok(svc.id)
        }
        .await;
        match result {
            Ok(id) => scaled.push(id),
            Err(e) => errors.push(CliError::raw(format!("{name}: {e}"))),
        }
    }
    if let Some(e) = CliError::join(errors) {
        return Err(e);
    }
    if !a.detach {
        for id in scaled {
            progress::wait_converged(c, &id, false).await?;
        }
    }
    Ok(())
}

pub async fn rm(c: &Client, a: RmArgs) -> Result<()> {
    let mut errors = Vec::new();
    for r in a.services {
        let result = async {
            let svc = c.service(&r).await?;
            c.control
                .clone()
                .remove_service(RemoveServiceRequest {
                    service_id: svc.id.clone(),
                })
                .await
                .map_err(|s| c.err(s))?;
            Ok::<(), CliError>(())
        }
        .await;
        match result {
            Ok(()) => println!("{r}"),
            Err(e) => errors.push(e),
        }
    }
    match CliError::join(errors) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
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

    fn create(args: &[&str]) -> std::result::Result<CreateArgs, clap::Error> {
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

    fn svc(id: &str, name: &str, mode: service_spec::Mode) -> Service {
        Service {
            id: id.into(),
            spec: Some(ServiceSpec {
                name: name.into(),
                mode: Some(mode),
                task: Some(TaskSpec {
                    container: Some(ContainerSpec {
                        image: "nginx:latest@sha256:00".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            endpoint: Some(Endpoint {
                spec: None,
                ports: vec![PortConfig {
                    target_port: 80,
                    published_port: 30000,
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }
    }

    fn task(svc: &str, node: &str, state: TaskState, desired: TaskState) -> Task {
        Task {
            service_id: svc.into(),
            node_id: node.into(),
            desired_state: desired as i32,
            status: Some(TaskStatus {
                state: state as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn replicas_column_counts_running_tasks() {
        use TaskState::*;
        let active: HashSet<String> = ["n1", "n2"].iter().map(|s| s.to_string()).collect();
        let web = svc(
            "s1",
            "web",
            service_spec::Mode::Replicated(ReplicatedService { replicas: 3 }),
        );
        let tasks = vec![
            task("s1", "n1", Running, Running),
            task("s1", "n2", Running, Running),
            task("s1", "n3", Running, Running),  // node down
            task("s1", "n1", Running, Shutdown), // being stopped
            task("s1", "", Pending, Running),
            task("other", "n1", Running, Running),
        ];
        assert_eq!(
            replicas_column(&web, &tasks, &active),
            ("replicated".into(), "2/3".into())
        );
        let mut capped = web.clone();
        capped
            .spec
            .as_mut()
            .unwrap()
            .task
            .as_mut()
            .unwrap()
            .placement = Some(Placement {
            max_replicas: 1,
            ..Default::default()
        });
        assert_eq!(
            replicas_column(&capped, &tasks, &active).1,
            "2/3 (max 1 per node)"
        );
        let g = svc("s1", "agent", service_spec::Mode::Global(GlobalService {}));
        assert_eq!(
            replicas_column(&g, &tasks, &active),
            ("global".into(), "2/4".into())
        );
    }

    #[test]
    fn ls_table_is_sorted_and_formatted() {
        let mut services = vec![
            svc(
                "zzzzzzzzzzzzzzzzzzzzzzzzz",
                "web10",
                service_spec::Mode::Replicated(ReplicatedService { replicas: 1 }),
            ),
            svc(
                "yyyyyyyyyyyyyyyyyyyyyyyyy",
                "web2",
                service_spec::Mode::Global(GlobalService {}),
            ),
        ];
        sort_services(&mut services);
        let out = ls_table(&services, &[], &HashSet::new());
        assert_eq!(
            out,
            "ID             NAME      MODE         REPLICAS   IMAGE          PORTS\n\
             yyyyyyyyyyyy   web2      global       0/0        nginx:latest   *:30000->80/tcp\n\
             zzzzzzzzzzzz   web10     replicated   0/1        nginx:latest   *:30000->80/tcp\n"
        );
    }

    #[test]
    fn scale_args() {
        assert_eq!(
            parse_scale_args(&["a=1".into(), "b=0".into()]),
            Ok(vec![("a".into(), 1), ("b".into(), 0)])
        );
        assert_eq!(
            parse_scale_args(&["a=1".into(), "b".into()]),
            Err("b".into())
        );
    }

    #[test]
    fn pretty_shows_spec() {
        let a = create(&[
            "--name",
            "web",
            "--replicas",
            "2",
            "--constraint",
            "node.role==manager",
            "--reserve-cpu",
            "0.5",
            "--reserve-memory",
            "64M",
            "-e",
            "A=1",
            "nginx",
            "x",
        ])
        .unwrap();
        let s = Service {
            id: "s1".into(),
            spec: Some(create_spec(&a).unwrap()),
            ..Default::default()
        };
        let p = pretty(&s);
        assert!(p.starts_with("\nID:\t\ts1\nName:\t\tweb\nService Mode:\tReplicated\n Replicas:\t2\nPlacement:\n Constraints:\t[node.role==manager]\n"));
        assert!(p.contains("ContainerSpec:\n Image:\t\tnginx\n Args:\t\tx \n Env:\t\tA=1 \n"));
        assert!(p.contains("Resources:\n Reservations:\n  CPU:\t\t0.5\n  Memory:\t64MiB\n"));
        assert!(p.ends_with("Endpoint Mode:\tvip\n"));
    }
}
