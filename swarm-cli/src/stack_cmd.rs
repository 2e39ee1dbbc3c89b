//! `swarm stack deploy|ls|ps|services|rm|config`: Docker's stacks. A stack is the services,
//! networks, secrets and configs of compose files, named `STACK_name` and labelled
//! `com.docker.stack.namespace=STACK`; the managers know nothing of stacks, the label is all
//! there is. `deploy` reads and checks every file and value first (`stack_cmd::load`,
//! `stack_cmd::convert`) and the cluster's state (external objects, ports, secrets that
//! would change) before its first write, then creates what is missing and updates only the
//! services whose spec changed.

mod compose;
mod convert;
mod load;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use proto::*;
use sha2::Digest;

use crate::client::Client;
use crate::error::{CliError, Result};
use convert::{Stack, NAMESPACE_LABEL};

/// A secret's data never comes back from the managers: a deploy records its digest in this
/// label to tell an unchanged secret from one whose file changed (secrets are immutable).
const SECRET_DIGEST_LABEL: &str = "com.docker.stack.secret-sha256";

#[derive(Debug, Subcommand)]
pub enum StackCmd {
    /// Deploy a new stack or update an existing stack
    #[command(visible_alias = "up")]
    Deploy(DeployArgs),
    /// List stacks
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// List the tasks in the stack
    Ps(PsArgs),
    /// List the services in the stack
    Services(ServicesArgs),
    /// Remove one or more stacks
    #[command(visible_alias = "remove", visible_alias = "down")]
    Rm(RmArgs),
    /// Outputs the final config file, after doing merges and interpolations
    Config(ConfigArgs),
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Path to a Compose file, or "-" to read from stdin
    #[arg(
        short = 'c',
        long = "compose-file",
        value_name = "FILE",
        required = true
    )]
    pub compose_file: Vec<PathBuf>,
    /// Prune services that are no longer referenced
    #[arg(long)]
    pub prune: bool,
    /// Send registry authentication details to Swarm agents
    #[arg(long)]
    pub with_registry_auth: bool,
    /// Query the registry to resolve image digest and supported platforms ("always", "never")
    #[arg(long, default_value = "always")]
    pub resolve_image: String,
    #[arg(value_name = "STACK")]
    pub stack: String,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Format output: "table" (default), "json" or a Go template
    #[arg(long)]
    pub format: Option<String>,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Filter output based on conditions provided (desired-state=, node=, id=, name=)
    #[arg(short, long)]
    pub filter: Vec<String>,
    /// Do not truncate output
    #[arg(long)]
    pub no_trunc: bool,
    /// Only display task IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Format output: "table" (default), "json" or a Go template
    #[arg(long)]
    pub format: Option<String>,
    #[arg(value_name = "STACK")]
    pub stack: String,
}

#[derive(Debug, Args)]
pub struct ServicesArgs {
    /// Only display IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Filter output based on conditions provided (id=, name=, label=, mode=)
    #[arg(short, long)]
    pub filter: Vec<String>,
    /// Format output: "table" (default), "json" or a Go template
    #[arg(long)]
    pub format: Option<String>,
    #[arg(value_name = "STACK")]
    pub stack: String,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[arg(value_name = "STACK", required = true)]
    pub stacks: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Path to a Compose file
    #[arg(
        short = 'c',
        long = "compose-file",
        value_name = "FILE",
        required = true
    )]
    pub compose_file: Vec<PathBuf>,
    /// Skip interpolation and output only merged config
    #[arg(long)]
    pub skip_interpolation: bool,
}

fn environment() -> BTreeMap<String, String> {
    std::env::vars().collect()
}

/// Docker's stack name rule (`validateStackName`, plus the characters object names take).
fn check_stack_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(CliError::msg(format!(
            "invalid stack name {name:?}: use letters, digits, '_', '-' and '.', starting with a letter or digit"
        )))
    }
}

/// `stack config`: the files merged and interpolated, as YAML. Needs no agent.
pub fn config(a: ConfigArgs) -> Result<()> {
    let env = if a.skip_interpolation {
        None
    } else {
        Some(environment())
    };
    let merged = load::merged_text(&a.compose_file, env.as_ref())?;
    print!("{merged}");
    Ok(())
}

pub async fn run(c: &Client, cmd: StackCmd) -> Result<()> {
    match cmd {
        StackCmd::Deploy(a) => deploy(c, a).await,
        StackCmd::Ls(a) => ls(c, a).await,
        StackCmd::Ps(a) => ps(c, a).await,
        StackCmd::Services(a) => services(c, a).await,
        StackCmd::Rm(a) => rm(c, a).await,
        StackCmd::Config(a) => config(a),
    }
}

/// Reads and checks the files of a deploy: everything `deploy` can know before asking the
/// cluster.
pub fn plan(a: &DeployArgs) -> Result<Stack> {
    if a.resolve_image != "always" && a.resolve_image != "never" && a.resolve_image != "changed" {
        return Err(CliError::msg(format!(
            "invalid option {} for flag --resolve-image: expected always, changed or never",
            a.resolve_image
        )));
    }
    check_stack_name(&a.stack)?;
    let env = environment();
    let loaded = load::load(&a.compose_file, &env)?;
    convert::convert(&loaded, &a.stack, &env)
}

fn in_stack(labels: &BTreeMap<String, String>, stack: &str) -> bool {
    labels.get(NAMESPACE_LABEL).is_some_and(|v| v == stack)
}

/// What the cluster holds now.
struct Current {
    networks: Vec<Network>,
    secrets: Vec<Secret>,
    configs: Vec<Config>,
    services: Vec<Service>,
}

async fn current(c: &Client) -> Result<Current> {
    let mut ctl = c.control.clone();
    let networks = ctl
        .list_networks(ListNetworksRequest {})
        .await
        .map_err(|s| c.err(s))?
        .into_inner()
        .networks;
    let secrets = ctl
        .list_secrets(ListSecretsRequest::default())
        .await
        .map_err(|s| c.err(s))?
        .into_inner()
        .secrets;
    let configs = ctl
        .list_configs(ListConfigsRequest::default())
        .await
        .map_err(|s| c.err(s))?
        .into_inner()
        .configs;
    let services = c.services().await?;
    Ok(Current {
        networks,
        secrets,
        configs,
        services,
    })
}

fn net_name(n: &Network) -> &str {
    n.spec.as_ref().map_or("", |s| s.name.as_str())
}

fn digest_hex(data: &[u8]) -> String {
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The checks against the cluster, all before the first write.
fn check_against(st: &mut Stack, cur: &Current) -> Result<()> {
    for name in &st.external_networks {
        if !cur
            .networks
            .iter()
            .any(|n| net_name(n) == name || n.id == *name)
        {
            return Err(CliError::msg(format!(
                "network {name:?} is declared as external, but could not be found. You need to create a swarm-scoped network before the stack is deployed"
            )));
        }
    }
    for spec in &st.networks {
        if let Some(n) = cur.networks.iter().find(|n| net_name(n) == spec.name) {
            let driver = n.spec.as_ref().map_or("", |s| s.driver.as_str());
            if driver != "overlay" {
                return Err(CliError::msg(format!(
                    "network {:?} exists with driver {driver:?}: a stack needs an overlay network; remove it or rename the stack's network",
                    spec.name
                )));
            }
        }
    }
    for name in &st.external_secrets {
        if !cur
            .secrets
            .iter()
            .any(|s| s.spec.as_ref().is_some_and(|p| p.name == *name))
        {
            return Err(CliError::msg(format!(
                "secret {name:?} is declared as external, but could not be found: create it with `swarm secret create` first"
            )));
        }
    }
    for name in &st.external_configs {
        if !cur
            .configs
            .iter()
            .any(|s| s.spec.as_ref().is_some_and(|p| p.name == *name))
        {
            return Err(CliError::msg(format!(
                "config {name:?} is declared as external, but could not be found: create it with `swarm config create` first"
            )));
        }
    }
    for spec in &mut st.secrets {
        let digest = digest_hex(&spec.data);
        if let Some(existing) = cur
            .secrets
            .iter()
            .filter_map(|s| s.spec.as_ref())
            .find(|s| s.name == spec.name)
        {
            match existing.labels.get(SECRET_DIGEST_LABEL) {
                Some(d) if *d != digest => {
                    return Err(CliError::msg(format!(
                        "secret {} exists with other data, and secrets cannot be changed: give the secret a new name (for example with name: in the compose file) to roll it",
                        spec.name
                    )))
                }
                _ => {}
            }
        }
        spec.labels.insert(SECRET_DIGEST_LABEL.into(), digest);
    }
    for spec in &st.configs {
        if let Some(existing) = cur
            .configs
            .iter()
            .filter_map(|s| s.spec.as_ref())
            .find(|s| s.name == spec.name)
        {
            if existing.data != spec.data {
                return Err(CliError::msg(format!(
                    "config {} exists with other data, and configs cannot be changed: give the config a new name (for example with name: in the compose file) to roll it",
                    spec.name
                )));
            }
        }
    }
    // Published ports held by services outside this stack.
    let ours: HashSet<&str> = st.services.iter().map(|s| s.name.as_str()).collect();
    for spec in &st.services {
        for p in spec
            .endpoint
            .iter()
            .flat_map(|e| &e.ports)
            .filter(|p| p.published_port != 0)
        {
            for other in cur.services.iter().filter(|s| !ours.contains(s.name())) {
                let held = other
                    .endpoint
                    .iter()
                    .flat_map(|e| &e.ports)
                    .chain(
                        other
                            .spec
                            .iter()
                            .flat_map(|s| s.endpoint.iter())
                            .flat_map(|e| &e.ports),
                    )
                    .any(|q| q.published_port == p.published_port && q.protocol == p.protocol);
                if held {
                    return Err(CliError::msg(format!(
                        "port {}/{} of service {} is already published by service {}: choose another published port",
                        p.published_port,
                        crate::format::protocol_name(p.protocol),
                        spec.name,
                        other.name()
                    )));
                }
            }
        }
    }
    Ok(())
}

/// `spec` with what the managers store in place of what a file gives (network ids for
/// names, secret and config ids) and what other commands keep (the force counter) taken
/// from `existing`, so an unchanged file compares equal.
fn carry_over(
    spec: &mut ServiceSpec,
    existing: &ServiceSpec,
    network_ids: &HashMap<String, String>,
) {
    let (Some(t), Some(e)) = (spec.task.as_mut(), existing.task.as_ref()) else {
        return;
    };
    t.force_update = e.force_update;
    for att in &mut t.networks {
        if let Some(id) = network_ids.get(&att.target) {
            att.target = id.clone();
        }
    }
    let (Some(c), Some(ec)) = (t.container.as_mut(), e.container.as_ref()) else {
        return;
    };
    for r in &mut c.secrets {
        if let Some(o) = ec.secrets.iter().find(|o| o.secret_name == r.secret_name) {
            r.secret_id = o.secret_id.clone();
        }
    }
    for r in &mut c.configs {
        if let Some(o) = ec.configs.iter().find(|o| o.config_name == r.config_name) {
            r.config_id = o.config_id.clone();
        }
    }
}

/// The image the spec would run once pinned: an unchanged tag keeps the service's digest.
async fn pin(spec: &mut ServiceSpec, existing: Option<&ServiceSpec>, mode: &str) {
    if mode == "never" {
        return;
    }
    let Some(c) = spec.task.as_mut().and_then(|t| t.container.as_mut()) else {
        return;
    };
    let old = existing
        .and_then(|s| s.task.as_ref())
        .and_then(|t| t.container.as_ref())
        .map(|c| c.image.as_str());
    if mode == "changed" {
        if let Some(old) = old {
            if old.split_once('@').map_or(old, |(n, _)| n) == c.image {
                c.image = old.to_string();
                return;
            }
        }
    }
    match crate::resolve::pin(&c.image).await {
        Ok(p) => c.image = p,
        Err(warning) => eprintln!("{warning}"),
    }
}

pub async fn deploy(c: &Client, a: DeployArgs) -> Result<()> {
    let mut st = plan(&a)?;
    let cur = current(c).await?;
    check_against(&mut st, &cur)?;
    for w in &st.warnings {
        eprintln!("{w}");
    }
    let mut ctl = c.control.clone();
    // Prune first: services of the stack no longer in the files.
    if a.prune {
        let wanted: HashSet<&str> = st.services.iter().map(|s| s.name.as_str()).collect();
        for s in cur.services.iter().filter(|s| {
            s.spec
                .as_ref()
                .is_some_and(|p| in_stack(&p.labels, &a.stack))
                && !wanted.contains(s.name())
        }) {
            println!("Removing service {}", s.name());
            ctl.remove_service(RemoveServiceRequest {
                service_id: s.id.clone(),
            })
            .await
            .map_err(|e| c.err(e))?;
        }
    }
    for spec in &st.networks {
        if cur.networks.iter().any(|n| net_name(n) == spec.name) {
            continue;
        }
        println!("Creating network {}", spec.name);
        ctl.create_network(CreateNetworkRequest {
            spec: Some(spec.clone()),
        })
        .await
        .map_err(|e| c.err(e))?;
    }
    for spec in &st.secrets {
        if cur
            .secrets
            .iter()
            .any(|s| s.spec.as_ref().is_some_and(|p| p.name == spec.name))
        {
            continue;
        }
        println!("Creating secret {}", spec.name);
        ctl.create_secret(CreateSecretRequest {
            spec: Some(spec.clone()),
        })
        .await
        .map_err(|e| c.err(e))?;
    }
    for spec in &st.configs {
        if cur
            .configs
            .iter()
            .any(|s| s.spec.as_ref().is_some_and(|p| p.name == spec.name))
        {
            continue;
        }
        println!("Creating config {}", spec.name);
        ctl.create_config(CreateConfigRequest {
            spec: Some(spec.clone()),
        })
        .await
        .map_err(|e| c.err(e))?;
    }
    let network_ids: HashMap<String, String> = cur
        .networks
        .iter()
        .map(|n| (net_name(n).to_string(), n.id.clone()))
        .collect();
    for mut spec in st.services {
        let existing = cur.services.iter().find(|s| s.name() == spec.name);
        let old_spec = existing.and_then(|s| s.spec.as_ref());
        pin(&mut spec, old_spec, &a.resolve_image).await;
        if a.with_registry_auth {
            crate::service_cmd::attach_registry_auth(&mut spec)?;
        }
        match existing {
            None => {
                println!("Creating service {}", spec.name);
                ctl.create_service(CreateServiceRequest { spec: Some(spec) })
                    .await
                    .map_err(|e| c.err(e))?;
            }
            Some(svc) => {
                // Made again on a fresh read when another writer moved the service meanwhile
                // (the managers' allocator right after a create; another client).
                let mut announced = false;
                crate::service_cmd::change_spec_if(c, &svc.id, false, |svc| {
                    let mut spec = spec.clone();
                    let old = svc.spec.clone().unwrap_or_default();
                    carry_over(&mut spec, &old, &network_ids);
                    // The managers store a spec with Docker's defaults filled in: compare like
                    // with like.
                    spec.apply_docker_defaults();
                    // The managers never return the login they keep: compare without it, and
                    // send a login that may have changed (they keep an unchanged one as is).
                    let mut without_login = spec.clone();
                    if let Some(c) = without_login
                        .task
                        .as_mut()
                        .and_then(|t| t.container.as_mut())
                    {
                        c.pull_options = None;
                    }
                    if old == without_login && !a.with_registry_auth {
                        return Ok(None);
                    }
                    if !announced {
                        println!("Updating service {} (id: {})", spec.name, svc.id);
                        announced = true;
                    }
                    Ok(Some(spec))
                })
                .await?;
            }
        }
    }
    Ok(())
}

async fn stack_services(c: &Client, stack: &str) -> Result<Vec<Service>> {
    Ok(c.services()
        .await?
        .into_iter()
        .filter(|s| s.spec.as_ref().is_some_and(|p| in_stack(&p.labels, stack)))
        .collect())
}

fn nothing_found(stack: &str) -> CliError {
    CliError::raw(format!("Nothing found in stack: {stack}"))
}

pub async fn ls(c: &Client, a: LsArgs) -> Result<()> {
    let fmt = crate::template::Format::parse(&a.format);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for s in c.services().await? {
        if let Some(ns) = s.spec.as_ref().and_then(|p| p.labels.get(NAMESPACE_LABEL)) {
            *counts.entry(ns.clone()).or_default() += 1;
        }
    }
    if let crate::template::Format::Template { table, text } = &fmt {
        let rows: Vec<_> = counts
            .iter()
            .map(|(name, n)| crate::format_rows::stack(name, *n))
            .collect();
        let headers = crate::format_rows::STACK_HEADERS;
        print!(
            "{}",
            crate::template::render_rows(*table, text, headers, &rows)?
        );
        return Ok(());
    }
    if fmt == crate::template::Format::Json {
        for (name, n) in &counts {
            println!(
                "{}",
                serde_json::json!({"Name": name, "Services": n.to_string()})
            );
        }
        return Ok(());
    }
    let mut t = crate::table::Table::new(["NAME", "SERVICES"]);
    for (name, n) in &counts {
        t.row([name.clone(), n.to_string()]);
    }
    print!("{}", t.render());
    Ok(())
}

pub async fn services(c: &Client, a: ServicesArgs) -> Result<()> {
    let fmt = crate::template::Format::parse(&a.format);
    let filter = crate::service_filter::ServiceFilter::parse(&a.filter).map_err(CliError::msg)?;
    let services = stack_services(c, &a.stack).await?;
    if services.is_empty() {
        return Err(nothing_found(&a.stack));
    }
    let services = services.into_iter().filter(|s| filter.keep(s)).collect();
    crate::service_cmd::print_services(c, services, a.quiet, &fmt).await
}

pub async fn ps(c: &Client, a: PsArgs) -> Result<()> {
    let fmt = crate::template::Format::parse(&a.format);
    let filter = crate::ps::Filter::parse(&a.filter).map_err(CliError::msg)?;
    let services = stack_services(c, &a.stack).await?;
    if services.is_empty() {
        return Err(nothing_found(&a.stack));
    }
    let names = crate::node_cmd::names(c).await?;
    let ids: HashSet<&str> = services.iter().map(|s| s.id.as_str()).collect();
    let tasks: Vec<Task> = c
        .tasks(ListTasksRequest {
            service_ids: services.iter().map(|s| s.id.clone()).collect(),
            node_ids: vec![],
            desired_states: filter.desired.iter().map(|s| *s as i32).collect(),
        })
        .await?
        .into_iter()
        .filter(|t| ids.contains(t.service_id.as_str()) && filter.keep(t, &names))
        .collect();
    if tasks.is_empty() && !a.quiet && fmt == crate::template::Format::Default {
        return Err(CliError::raw(format!(
            "nothing found in stack: {}",
            a.stack
        )));
    }
    crate::node_cmd::print_tasks(&tasks, &names, a.quiet, a.no_trunc || a.quiet, &fmt)
}

/// How long `rm` retries removing a network its services' tasks still hold.
const NETWORK_RELEASE: Duration = Duration::from_secs(60);

pub async fn rm(c: &Client, a: RmArgs) -> Result<()> {
    let mut errors = Vec::new();
    for stack in &a.stacks {
        if let Err(e) = rm_one(c, stack).await {
            errors.push(e);
        }
    }
    match CliError::join(errors) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn rm_one(c: &Client, stack: &str) -> Result<()> {
    let cur = current(c).await?;
    let mut ctl = c.control.clone();
    let mut services: Vec<&Service> = cur
        .services
        .iter()
        .filter(|s| s.spec.as_ref().is_some_and(|p| in_stack(&p.labels, stack)))
        .collect();
    services.sort_by(|a, b| a.name().cmp(b.name()));
    let secrets: Vec<&Secret> = cur
        .secrets
        .iter()
        .filter(|s| s.spec.as_ref().is_some_and(|p| in_stack(&p.labels, stack)))
        .collect();
    let configs: Vec<&Config> = cur
        .configs
        .iter()
        .filter(|s| s.spec.as_ref().is_some_and(|p| in_stack(&p.labels, stack)))
        .collect();
    let networks: Vec<&Network> = cur
        .networks
        .iter()
        .filter(|n| n.spec.as_ref().is_some_and(|p| in_stack(&p.labels, stack)))
        .collect();
    if services.is_empty() && secrets.is_empty() && configs.is_empty() && networks.is_empty() {
        return Err(nothing_found(stack));
    }
    let mut failed = Vec::new();
    for s in services {
        println!("Removing service {}", s.name());
        if let Err(e) = ctl
            .remove_service(RemoveServiceRequest {
                service_id: s.id.clone(),
            })
            .await
        {
            failed.push(c.err(e));
        }
    }
    for s in secrets {
        let name = s.spec.as_ref().map_or("", |p| p.name.as_str());
        println!("Removing secret {name}");
        if let Err(e) = remove_in_use(|| {
            let mut ctl = ctl.clone();
            let id = s.id.clone();
            async move {
                ctl.remove_secret(RemoveSecretRequest { secret_id: id })
                    .await
                    .map(|_| ())
            }
        })
        .await
        {
            failed.push(c.err(e));
        }
    }
    for s in configs {
        let name = s.spec.as_ref().map_or("", |p| p.name.as_str());
        println!("Removing config {name}");
        if let Err(e) = remove_in_use(|| {
            let mut ctl = ctl.clone();
            let id = s.id.clone();
            async move {
                ctl.remove_config(RemoveConfigRequest { config_id: id })
                    .await
                    .map(|_| ())
            }
        })
        .await
        {
            failed.push(c.err(e));
        }
    }
    for n in networks {
        println!("Removing network {}", net_name(n));
        if let Err(e) = remove_in_use(|| {
            let mut ctl = ctl.clone();
            let id = n.id.clone();
            async move {
                ctl.remove_network(RemoveNetworkRequest { network_id: id })
                    .await
                    .map(|_| ())
            }
        })
        .await
        {
            failed.push(c.err(e));
        }
    }
    match CliError::join(failed) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Removes an object the stack's removed services may still hold for a moment (their tasks
/// are shutting down): retried while the managers say it is in use.
async fn remove_in_use<F, Fut>(mut remove: F) -> std::result::Result<(), tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), tonic::Status>>,
{
    let deadline = Instant::now() + NETWORK_RELEASE;
    loop {
        match remove().await {
            Ok(()) => return Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
            Err(s)
                if Instant::now() < deadline
                    && matches!(
                        s.code(),
                        tonic::Code::FailedPrecondition
                            | tonic::Code::InvalidArgument
                            | tonic::Code::Aborted
                    )
                    && s.message().contains("in use") =>
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(s) => return Err(s),
        }
    }
}

#[cfg(test)]
mod tests;
