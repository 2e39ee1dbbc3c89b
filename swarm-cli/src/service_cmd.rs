//! `swarm service create|inspect|ls|ps|rm|scale|update|rollback`.

use std::collections::{HashMap, HashSet};

use clap::{Args, Subcommand};
use proto::*;

use crate::client::Client;
use crate::error::{CliError, Result};
use crate::format::{self, natural_cmp};
use crate::json::{self, Kind};
use crate::node_cmd;
use crate::opts;
use crate::progress::{self, Operation};
use crate::ps;
use crate::service_spec::{create_spec, update_spec, CreateArgs, UpdateArgs};
use crate::table::Table;

#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Create a new service
    #[command(override_usage = "swarm service create [OPTIONS] IMAGE [COMMAND] [ARG...]")]
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
    /// Scale one or multiple replicated services (or replicated jobs: their completions)
    Scale(ScaleArgs),
    /// Update a service
    Update(Box<UpdateArgs>),
    /// Revert changes to a service's configuration
    Rollback(RollbackArgs),
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
    /// Format output: "table" (default), "json" (one service per line) or a Go template
    #[arg(long)]
    pub format: Option<String>,
    /// Filter output based on conditions provided (id=, name=, label=, mode=)
    #[arg(short, long)]
    pub filter: Vec<String>,
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
    /// Format output: "table" (default), "json" (one task per line) or a Go template
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

fn bad(m: impl Into<String>) -> CliError {
    CliError::msg(m)
}

// ---------------------------------------------------------------- ls

/// The MODE and REPLICAS columns of `service ls`, from the counts the managers return
/// (`ListServicesRequest.status`; `Service::task_status` counts them). Jobs, as Docker shows
/// them: `running/desired (completed/total completed)`.
pub fn replicas_column(svc: &Service, status: &ServiceStatus) -> (String, String) {
    let mode = svc.spec.as_ref().map_or("replicated", |s| s.mode_name());
    let (running, desired, completed) = (
        status.running_tasks,
        status.desired_tasks,
        status.completed_tasks,
    );
    if svc.is_job() {
        let total = svc
            .replicated_job()
            .map_or(desired + completed, |j| j.total_completions);
        return (
            mode.into(),
            format!("{running}/{desired} ({completed}/{total} completed)"),
        );
    }
    let max = svc
        .spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .and_then(|t| t.placement.as_ref())
        .map_or(0, |p| p.max_replicas);
    let text = if svc.replicas().is_some() && max > 0 {
        format!("{running}/{desired} (max {max} per node)")
    } else {
        format!("{running}/{desired}")
    };
    (mode.into(), text)
}

pub(crate) fn image_of(svc: &Service) -> &str {
    svc.spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .and_then(|t| t.container.as_ref())
        .map_or("", |c| c.image.as_str())
}

pub(crate) fn ports_of(svc: &Service) -> &[PortConfig] {
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

/// The service's counts in `statuses`; a service the managers did not count (created since
/// they answered) has no task yet, but still its desired count.
pub(crate) fn status_of(svc: &Service, statuses: &HashMap<String, ServiceStatus>) -> ServiceStatus {
    statuses
        .get(&svc.id)
        .copied()
        .unwrap_or_else(|| svc.task_status(&[], |_| false))
}

pub fn ls_table(services: &[Service], statuses: &HashMap<String, ServiceStatus>) -> String {
    let mut t = Table::new(["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]);
    for s in services {
        let (mode, replicas) = replicas_column(s, &status_of(s, statuses));
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

pub async fn ls(c: &Client, a: LsArgs) -> Result<()> {
    let fmt = crate::template::Format::parse(&a.format);
    let filter = crate::service_filter::ServiceFilter::parse(&a.filter).map_err(bad)?;
    let services = c
        .services()
        .await?
        .into_iter()
        .filter(|s| filter.keep(s))
        .collect();
    print_services(c, services, a.quiet, &fmt).await
}

/// The `service ls` output of `services` (also `stack services`).
pub async fn print_services(
    c: &Client,
    mut services: Vec<Service>,
    quiet: bool,
    fmt: &crate::template::Format,
) -> Result<()> {
    sort_services(&mut services);
    if let crate::template::Format::Template { table, text } = fmt {
        return crate::format_rows::print_services(c, &services, *table, text).await;
    }
    if quiet {
        for s in &services {
            println!("{}", format::truncate_id(&s.id));
        }
        return Ok(());
    }
    if *fmt == crate::template::Format::Json {
        for s in &services {
            println!("{}", json::line(s, Kind::Service)?);
        }
        return Ok(());
    }
    let statuses = if services.is_empty() {
        HashMap::new()
    } else {
        c.service_statuses().await?
    };
    print!("{}", ls_table(&services, &statuses));
    Ok(())
}

// ---------------------------------------------------------------- inspect

fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// Docker's "UpdateConfig:" / "RollbackConfig:" block of `inspect --pretty`.
fn policy_block(title: &str, order_label: &str, c: &UpdateConfig) -> String {
    let dur = |ms: i64| format::go_duration(std::time::Duration::from_millis(ms.max(0) as u64));
    let mut o = format!("\n{title}:\n Parallelism:\t{}", c.parallelism);
    if c.delay_ms != 0 {
        o.push_str(&format!("\n Delay:\t\t{}", dur(c.delay_ms)));
    }
    let action = match UpdateFailureAction::try_from(c.failure_action).unwrap_or_default() {
        UpdateFailureAction::Pause => "pause",
        UpdateFailureAction::Continue => "continue",
        UpdateFailureAction::Rollback => "rollback",
    };
    let order = match UpdateOrder::try_from(c.order).unwrap_or_default() {
        UpdateOrder::StopFirst => "stop-first",
        UpdateOrder::StartFirst => "start-first",
    };
    o.push_str(&format!(
        "\n On failure:\t{action}\n Monitoring Period: {}\n Max failure ratio: {}\n {order_label} {order}",
        dur(c.monitor_ms),
        c.max_failure_ratio
    ));
    o
}

/// Docker's "UpdateStatus:" block of `inspect --pretty`.
fn update_status_block(u: &UpdateStatus, now_ms: i64) -> String {
    let mut o = format!("\nUpdateStatus:\n State:\t\t{}", u.state().docker_name());
    if u.started_at > 0 {
        o.push_str(&format!(
            "\n Started:\t{}",
            format::ago(now_ms, u.started_at)
        ));
    }
    let done = matches!(
        u.state(),
        UpdateState::Completed | UpdateState::RollbackCompleted
    );
    if done && u.completed_at > 0 {
        o.push_str(&format!(
            "\n Completed:\t{}",
            format::ago(now_ms, u.completed_at)
        ));
    }
    o.push_str(&format!("\n Message:\t{}", u.message));
    o
}

/// Docker's `service inspect --pretty` text (the fields this project has).
/// A `Secrets:`/`Configs:` section of `--pretty` (nothing when there are none).
fn references<'a>(o: &mut String, title: &str, refs: impl Iterator<Item = (String, &'a str)>) {
    let mut first = true;
    for (target, source) in refs {
        if first {
            o.push_str(&format!("\n{title}:"));
            first = false;
        }
        o.push_str(&format!("\n Target:\t{target}\n  Source:\t{source}"));
    }
}

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
    match &spec.mode {
        Some(service_spec::Mode::Global(_)) => o.push_str("\tGlobal"),
        Some(service_spec::Mode::ReplicatedJob(j)) => o.push_str(&format!(
            "\tReplicated Job\n Max Concurrent:\t{}\n Total Completions:\t{}",
            j.max_concurrent, j.total_completions
        )),
        Some(service_spec::Mode::GlobalJob(_)) => o.push_str("\tGlobal Job"),
        Some(service_spec::Mode::Replicated(_)) | None => o.push_str(&format!(
            "\tReplicated\n Replicas:\t{}",
            s.replicas().unwrap_or(1)
        )),
    }
    if let Some(js) = &s.job_status {
        // Docker shows it in the JSON only; here in the text too, after the mode.
        o.push_str(&format!(
            "\nJobStatus:\n Job Iteration:\t{}",
            js.job_iteration
        ));
        if js.last_execution > 0 {
            o.push_str(&format!(
                "\n Last Execution:\t{}",
                format::ago(swarm_common::clock::now_ms(), js.last_execution)
            ));
        }
    }
    if let Some(u) = &s.update_status {
        o.push_str(&update_status_block(u, swarm_common::clock::now_ms()));
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
    if let Some(u) = &spec.update {
        o.push_str(&policy_block("UpdateConfig", "Update order:     ", u));
    }
    if let Some(r) = &spec.rollback {
        o.push_str(&policy_block("RollbackConfig", "Rollback order:   ", r));
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
    // Docker's Secrets/Configs sections: references only.
    let target =
        |f: &Option<proto::FileTarget>| f.as_ref().map_or("", |f| f.name.as_str()).to_string();
    let secrets = c
        .secrets
        .iter()
        .map(|r| (target(&r.file), r.secret_name.as_str()));
    references(&mut o, "Secrets", secrets);
    let configs = c
        .configs
        .iter()
        .map(|r| (target(&r.file), r.config_name.as_str()));
    references(&mut o, "Configs", configs);
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
            if p.preserve_source_ip {
                o.push_str("\n  SourceIP = preserve");
            }
        }
        o.push(' ');
    }
    o.push('\n');
    o
}

pub async fn inspect(c: &Client, mut a: InspectArgs) -> Result<()> {
    // Docker: `--format pretty` is `--pretty`; other formats are templates.
    if a.format.as_deref() == Some("pretty") {
        a.pretty = true;
        a.format = None;
    }
    let tmpl = crate::template::inspect_template(&a.format, a.pretty)?;
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
    } else if let Some(t) = tmpl {
        print!("{}", t.render_all(&values)?);
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
    let fmt = crate::template::Format::parse(&a.format);
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
    node_cmd::print_tasks(&tasks, &names, a.quiet, a.no_trunc || a.quiet, &fmt)?;
    match CliError::join(errors) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------- create/update/scale/rm

/// Pins the spec's image to its digest (Docker's `--no-resolve-image` skips this); prints
/// Docker's warning when the registry cannot be asked.
/// `refresh`: a tagged image already pinned is resolved again (`update --force`).
async fn pin_image(spec: &mut ServiceSpec, refresh: bool) {
    let Some(c) = spec.task.as_mut().and_then(|t| t.container.as_mut()) else {
        return;
    };
    if refresh {
        if let Some((name_tag, _)) = c.image.split_once('@') {
            let tagged = name_tag
                .rsplit_once('/')
                .map_or(name_tag, |(_, last)| last)
                .contains(':');
            if tagged {
                c.image = name_tag.to_string();
            }
        }
    }
    match crate::resolve::pin(&c.image).await {
        Ok(pinned) => c.image = pinned,
        Err(warning) => eprintln!("{warning}"),
    }
}

/// `--with-registry-auth`: the user's login for the spec's image goes with the spec (Docker's
/// `PullOptions.RegistryAuth`); the managers keep it and hand it only to the agents running
/// the service's tasks. Empty when the user has no login for that registry (said on stderr).
pub fn attach_registry_auth(spec: &mut ServiceSpec) -> Result<()> {
    let Some(c) = spec.task.as_mut().and_then(|t| t.container.as_mut()) else {
        return Ok(());
    };
    let registry_auth = crate::registry_auth::encoded_auth_for(&c.image)
        .map_err(|e| CliError::msg(e.to_string()))?;
    c.pull_options = Some(PullOptions { registry_auth });
    Ok(())
}

pub async fn create(c: &Client, a: Box<CreateArgs>) -> Result<()> {
    let mut spec = create_spec(&a)?;
    if a.common.with_registry_auth {
        attach_registry_auth(&mut spec)?;
    }
    pin_image(&mut spec, false).await;
    let svc = c
        .control
        .clone()
        .create_service(CreateServiceRequest { spec: Some(spec) })
        .await
        .map_err(|s| c.err(s))?
        .into_inner();
    println!("{}", svc.id);
    if !a.common.detach {
        progress::wait_converged(c, &svc.id, a.common.quiet, Operation::Change).await?;
    }
    Ok(())
}

/// Attempts of [`change_spec`] before the conflict is reported.
const SPEC_WRITE_ATTEMPTS: usize = 5;

/// Reads the service `name`, makes its new spec from the current one with `make` (and pins its
/// image when `pin`), and writes it with the version it read. When that version moved
/// meanwhile (the allocator writes a new service's endpoint and VIPs right after it was
/// created; another client), the change is made again on a fresh read: the same flags, applied
/// to what is there now. Returns the service as it was read.
async fn change_spec(
    c: &Client,
    name: &str,
    pin: bool,
    make: impl Fn(&Service) -> Result<ServiceSpec>,
) -> Result<Service> {
    let (svc, _) = change_spec_if(c, name, pin, |svc| make(svc).map(Some)).await?;
    Ok(svc)
}

/// [`change_spec`] where `make` may find nothing to change (`Ok(None)`: nothing is written).
/// Returns the service as it was last read and whether it was written.
pub(crate) async fn change_spec_if(
    c: &Client,
    name: &str,
    pin: bool,
    mut make: impl FnMut(&Service) -> Result<Option<ServiceSpec>>,
) -> Result<(Service, bool)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let svc = c.service(name).await?;
        let Some(mut spec) = make(&svc)? else {
            return Ok((svc, false));
        };
        if pin {
            pin_image(&mut spec, false).await;
        }
        let written = c
            .control
            .clone()
            .update_service(UpdateServiceRequest {
                service_id: svc.id.clone(),
                service_version: svc.meta.as_ref().map_or(0, |m| m.version),
                spec: Some(spec),
                rollback: false,
            })
            .await;
        match written {
            Ok(_) => return Ok((svc, true)),
            Err(s) if proto::out_of_sequence::is(&s) && attempt < SPEC_WRITE_ATTEMPTS => {}
            Err(s) => return Err(c.err(s)),
        }
    }
}

pub async fn update(c: &Client, a: UpdateArgs, name: String) -> Result<()> {
    if a.rollback {
        // Docker (API ≥ 1.28): a server-side rollback; the other flags are not applied.
        let svc = server_rollback(c, &name).await?;
        println!("{name}");
        if !a.common.detach {
            progress::wait_converged(c, &svc.id, a.common.quiet, Operation::Rollback).await?;
        }
        return Ok(());
    }
    let svc = change_spec(c, &name, a.image.is_some() || a.force, |svc| {
        let mut spec = svc.spec.clone().unwrap_or_default();
        update_spec(&mut spec, &a)?;
        // Without the flag the managers keep the service's login (Docker).
        if a.common.with_registry_auth {
            attach_registry_auth(&mut spec)?;
        }
        Ok(spec)
    })
    .await?;
    println!("{name}");
    if !a.common.detach {
        progress::wait_converged(c, &svc.id, a.common.quiet, Operation::Change).await?;
    }
    Ok(())
}

/// Asks the managers to roll the service back to its previous spec (they keep it, and roll
/// back with the service's rollback policy).
async fn server_rollback(c: &Client, name: &str) -> Result<Service> {
    let svc = c.service(name).await?;
    c.control
        .clone()
        .update_service(UpdateServiceRequest {
            service_id: svc.id.clone(),
            service_version: svc.meta.as_ref().map_or(0, |m| m.version),
            spec: None,
            rollback: true,
        })
        .await
        .map_err(|s| c.err(s))?;
    Ok(svc)
}

pub async fn rollback(c: &Client, a: RollbackArgs, name: String) -> Result<()> {
    let svc = server_rollback(c, &name).await?;
    println!("{name}");
    if !a.detach {
        progress::wait_converged(c, &svc.id, a.quiet, Operation::Rollback).await?;
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
            let svc = change_spec(c, &name, false, |svc| {
                let mut spec = svc.spec.clone().unwrap_or_default();
                match spec.mode.as_mut() {
                    Some(service_spec::Mode::Replicated(r)) => r.replicas = n,
                    None => {
                        spec.mode = Some(service_spec::Mode::Replicated(ReplicatedService {
                            replicas: n,
                        }))
                    }
                    // Docker: the job's completions; the job runs again.
                    Some(service_spec::Mode::ReplicatedJob(j)) => j.total_completions = n,
                    Some(service_spec::Mode::Global(_))
                    | Some(service_spec::Mode::GlobalJob(_)) => {
                        return Err(CliError::raw(
                            "scale can only be used with replicated or replicated-job mode",
                        ))
                    }
                }
                Ok(spec)
            })
            .await?;
            println!("{name} scaled to {n}");
            Ok::<String, CliError>(svc.id)
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
            progress::wait_converged(c, &id, false, Operation::Change).await?;
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
    use crate::service_spec::tests::create;

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
                ..Default::default()
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

    /// The column as `service ls` shows it, from the counts the managers make.
    fn column(svc: &Service, tasks: &[Task], up: &HashSet<String>) -> (String, String) {
        replicas_column(svc, &svc.task_status(tasks, |n| up.contains(n)))
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
            column(&web, &tasks, &active),
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
        assert_eq!(column(&capped, &tasks, &active).1, "2/3 (max 1 per node)");
        let g = svc("s1", "agent", service_spec::Mode::Global(GlobalService {}));
        assert_eq!(column(&g, &tasks, &active), ("global".into(), "2/4".into()));
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
        let out = ls_table(&services, &HashMap::new());
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

    #[test]
    fn pretty_shows_secret_and_config_references() {
        let spec = create_spec(
            &create(&[
                "--secret",
                "source=db_pw,target=pw",
                "--config",
                "src=app.conf,target=/etc/app.conf",
                "nginx",
            ])
            .unwrap(),
        )
        .unwrap();
        let p = pretty(&Service {
            spec: Some(spec),
            ..Default::default()
        });
        assert!(
            p.contains("\nSecrets:\n Target:\tpw\n  Source:\tdb_pw\nConfigs:\n Target:\t/etc/app.conf\n  Source:\tapp.conf\n"),
            "{p}"
        );
    }

    #[test]
    fn pretty_ports_show_a_preserved_source_ip() {
        let a = create(&[
            "-p",
            "published=8080,target=80,source-ip=preserve",
            "-p",
            "9000:90/udp",
            "nginx",
        ])
        .unwrap();
        let s = Service {
            id: "s1".into(),
            spec: Some(create_spec(&a).unwrap()),
            ..Default::default()
        };
        assert!(pretty(&s).ends_with(
            "Ports:\n PublishedPort = 8080\n  Protocol = tcp\n  TargetPort = 80\n  PublishMode = ingress\n  SourceIP = preserve\n PublishedPort = 9000\n  Protocol = udp\n  TargetPort = 90\n  PublishMode = ingress \n"
        ), "{}", pretty(&s));
    }

    #[test]
    fn pretty_shows_the_update_status_with_docker_wording() {
        let now = 1_000_000_000;
        let status = |state: UpdateState, completed_at: i64| UpdateStatus {
            state: state as i32,
            started_at: now - 120_000,
            completed_at,
            message: "update completed".into(),
        };
        assert_eq!(
            update_status_block(&status(UpdateState::Completed, now - 5_000), now),
            "\nUpdateStatus:\n State:\t\tcompleted\n Started:\t2 minutes ago\n Completed:\t5 seconds ago\n Message:\tupdate completed"
        );
        // No completion time while it runs.
        assert!(!update_status_block(&status(UpdateState::Updating, 0), now).contains("Completed"));
        assert!(
            update_status_block(&status(UpdateState::RollbackPaused, 0), now)
                .contains("State:\t\trollback_paused")
        );
    }

    #[test]
    fn jobs_in_service_ls_and_inspect_pretty() {
        use TaskState::*;
        let active: HashSet<String> = ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect();
        let mut job = svc(
            "j1",
            "batch",
            service_spec::Mode::ReplicatedJob(ReplicatedJob {
                max_concurrent: 2,
                total_completions: 5,
            }),
        );
        job.job_status = Some(JobStatus {
            job_iteration: 4,
            last_execution: 1,
        });
        let it = |mut t: Task, i: u64| {
            t.job_iteration = i;
            t
        };
        let tasks = vec![
            it(task("j1", "n1", Complete, Complete), 4),
            it(task("j1", "n2", Running, Running), 4),
            it(task("j1", "n3", Starting, Running), 4),
            // The previous run of the job does not count.
            it(task("j1", "n1", Complete, Shutdown), 1),
            it(task("j1", "n2", Complete, Shutdown), 1),
        ];
        assert_eq!(
            column(&job, &tasks, &active),
            ("replicated job".into(), "1/2 (1/5 completed)".into())
        );
        // Near the end the job desires only the completions left.
        let done: Vec<Task> = (0..4)
            .map(|_| it(task("j1", "n1", Complete, Complete), 4))
            .chain([it(task("j1", "n2", Running, Running), 4)])
            .collect();
        assert_eq!(column(&job, &done, &active).1, "1/1 (4/5 completed)");

        let g = svc(
            "g1",
            "everywhere",
            service_spec::Mode::GlobalJob(GlobalJob {}),
        );
        let tasks = vec![
            task("g1", "n1", Complete, Complete),
            task("g1", "n2", Running, Running),
            task("g1", "n3", Complete, Complete),
        ];
        assert_eq!(
            column(&g, &tasks, &active),
            ("global job".into(), "1/1 (2/3 completed)".into())
        );

        let p = pretty(&job);
        assert!(
            p.contains(
                "\nService Mode:\tReplicated Job\n Max Concurrent:\t2\n Total Completions:\t5"
            ),
            "{p}"
        );
        assert!(
            p.contains("\nJobStatus:\n Job Iteration:\t4\n Last Execution:\t"),
            "{p}"
        );
        assert!(!p.contains("UpdateConfig"), "{p}");
        assert!(pretty(&g).contains("\nService Mode:\tGlobal Job"));
    }
}
