//! `swarm network create|ls|inspect|rm` (swarm-scoped overlay networks).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use clap::{Args, Subcommand};
use proto::*;
use tonic::Code;

use crate::client::Client;
use crate::error::{CliError, Result};
use crate::format::{natural_cmp, truncate_id};
use crate::json::{self, Kind};
use crate::table::Table;

#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Create a network
    Create(CreateArgs),
    /// List networks
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more networks
    Inspect(InspectArgs),
    /// Remove one or more networks
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Driver to manage the Network
    #[arg(short, long, default_value = "overlay")]
    pub driver: String,
    /// Subnet in CIDR format that represents a network segment
    #[arg(long)]
    pub subnet: Vec<String>,
    /// IPv4 Gateway for the master subnet
    #[arg(long)]
    pub gateway: Vec<String>,
    /// Enable manual container attachment
    #[arg(long)]
    pub attachable: bool,
    /// Restrict external access to the network
    #[arg(long)]
    pub internal: bool,
    /// Create swarm routing-mesh network
    #[arg(long)]
    pub ingress: bool,
    /// Set driver specific options
    #[arg(short = 'o', long = "opt", value_name = "key=value")]
    pub opt: Vec<String>,
    /// Set metadata on a network
    #[arg(long, value_name = "key=value")]
    pub label: Vec<String>,
    #[arg(value_name = "NETWORK")]
    pub name: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only display network IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not truncate the output
    #[arg(long)]
    pub no_trunc: bool,
    /// Format output: "table" (default), "json" (one network per line) or a Go template
    #[arg(long)]
    pub format: Option<String>,
    /// Provide filter values (driver=, id=, label=, name=, scope=, type=)
    #[arg(short, long)]
    pub filter: Vec<String>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Output format: "json" (default)
    #[arg(short, long)]
    pub format: Option<String>,
    /// Verbose output for diagnostics
    #[arg(short, long)]
    pub verbose: bool,
    #[arg(value_name = "NETWORK")]
    pub networks: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Do not error if the network does not exist (and do not ask before removing ingress)
    #[arg(short, long)]
    pub force: bool,
    #[arg(value_name = "NETWORK")]
    pub networks: Vec<String>,
}

/// `KEY=VALUE` flag values (a missing value is empty); also `secret|config create --label`.
pub(crate) fn key_values(flag: &str, items: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for kv in items {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        if k.is_empty() {
            return Err(CliError::msg(format!(
                "invalid argument {kv:?} for \"{flag}\" flag: expected key=value"
            )));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// The spec `network create` sends.
pub fn create_spec(a: &CreateArgs, name: &str) -> Result<NetworkSpec> {
    if a.gateway.len() > a.subnet.len() {
        return Err(CliError::msg(
            "every ip-range or gateway must have a corresponding subnet",
        ));
    }
    let ipam = a
        .subnet
        .iter()
        .enumerate()
        .map(|(i, s)| IpamConfig {
            subnet: s.clone(),
            gateway: a.gateway.get(i).cloned().unwrap_or_default(),
        })
        .collect();
    Ok(NetworkSpec {
        name: name.to_string(),
        labels: key_values("--label", &a.label)?,
        driver: a.driver.clone(),
        driver_options: key_values("--opt", &a.opt)?,
        ipam,
        attachable: a.attachable,
        internal: a.internal,
        ingress: a.ingress,
    })
}

pub async fn create(c: &Client, a: CreateArgs) -> Result<()> {
    let name = a.name.first().cloned().unwrap_or_default();
    let spec = create_spec(&a, &name)?;
    let n = c
        .control
        .clone()
        .create_network(CreateNetworkRequest { spec: Some(spec) })
        .await
        .map_err(|s| c.err(s))?
        .into_inner();
    println!("{}", n.id);
    Ok(())
}

fn name_of(n: &Network) -> &str {
    n.spec.as_ref().map_or("", |s| s.name.as_str())
}

/// Docker's `network ls` table: `NETWORK ID   NAME   DRIVER   SCOPE`, sorted by name.
pub fn ls_table(nets: &[Network], no_trunc: bool) -> String {
    let mut t = Table::new(["NETWORK ID", "NAME", "DRIVER", "SCOPE"]);
    for n in nets {
        t.row([
            if no_trunc {
                n.id.clone()
            } else {
                truncate_id(&n.id).to_string()
            },
            name_of(n).to_string(),
            n.spec
                .as_ref()
                .map_or("overlay", |s| s.driver.as_str())
                .to_string(),
            "swarm".to_string(),
        ]);
    }
    t.render()
}

async fn list(c: &Client) -> Result<Vec<Network>> {
    let mut nets = c
        .control
        .clone()
        .list_networks(ListNetworksRequest {})
        .await
        .map_err(|s| c.err(s))?
        .into_inner()
        .networks;
    nets.sort_by(|a, b| natural_cmp(name_of(a), name_of(b)));
    Ok(nets)
}

pub async fn ls(c: &Client, a: LsArgs) -> Result<()> {
    let fmt = crate::template::Format::parse(&a.format);
    let filter = crate::list_filter::networks(&a.filter).map_err(CliError::msg)?;
    let mut nets = list(c).await?;
    nets.retain(|n| crate::list_filter::keep_network(&filter, n));
    if let crate::template::Format::Template { table, text } = &fmt {
        let rows: Vec<_> = nets
            .iter()
            .map(|n| crate::format_rows::network(n, !a.no_trunc))
            .collect();
        let out =
            crate::template::render_rows(*table, text, crate::format_rows::NETWORK_HEADERS, &rows)?;
        print!("{out}");
        return Ok(());
    }
    if a.quiet {
        for n in &nets {
            println!(
                "{}",
                if a.no_trunc {
                    n.id.as_str()
                } else {
                    truncate_id(&n.id)
                }
            );
        }
    } else if fmt == crate::template::Format::Json {
        for n in &nets {
            println!("{}", json::line(n, Kind::Other)?);
        }
    } else {
        print!("{}", ls_table(&nets, a.no_trunc));
    }
    Ok(())
}

async fn get(c: &Client, reference: &str) -> Result<Network> {
    get_status(c, reference)
        .await
        .map_err(|s| not_found(c, reference, s))
}

fn not_found(c: &Client, reference: &str, s: tonic::Status) -> CliError {
    if s.code() == Code::NotFound {
        CliError::msg(format!("No such network: {reference}"))
    } else {
        c.err(s)
    }
}

async fn get_status(c: &Client, reference: &str) -> std::result::Result<Network, tonic::Status> {
    c.control
        .clone()
        .get_network(GetNetworkRequest {
            network_id: reference.to_string(),
        })
        .await
        .map(|r| r.into_inner())
}

/// What this node's agent received from the managers about its networks.
async fn local_view(c: &Client) -> Result<NetworkViewResponse> {
    Ok(c.local
        .clone()
        .network_view(NetworkViewRequest {})
        .await
        .map_err(|s| c.err(s))?
        .into_inner())
}

/// The network of the local view that `reference` names: its id, a unique id prefix, or
/// its name.
fn find_local<'a>(view: &'a NetworkViewResponse, reference: &str) -> Option<&'a NetworkInfo> {
    if let Some(n) = view
        .networks
        .iter()
        .find(|n| n.id == reference || n.name == reference)
    {
        return Some(n);
    }
    let mut prefixed = view.networks.iter().filter(|n| n.id.starts_with(reference));
    match (prefixed.next(), prefixed.next()) {
        (Some(n), None) if !reference.is_empty() => Some(n),
        _ => None,
    }
}

/// A network object built from the local view, for nodes that cannot ask the managers
/// (workers): what Docker shows on a worker for the networks it has tasks on.
pub fn network_from_view(n: &NetworkInfo) -> Network {
    let mut driver_options = BTreeMap::new();
    if n.mtu != 0 {
        driver_options.insert(
            "com.docker.network.driver.mtu".to_string(),
            n.mtu.to_string(),
        );
    }
    Network {
        id: n.id.clone(),
        meta: None,
        spec: Some(NetworkSpec {
            name: n.name.clone(),
            driver: "overlay".into(),
            driver_options,
            attachable: n.attachable,
            internal: n.internal,
            ingress: n.ingress,
            ..Default::default()
        }),
        allocation: Some(NetworkAllocation {
            vni: n.vni,
            subnet: n.subnet.clone(),
            gateway: n.gateway.clone(),
        }),
    }
}

fn without_prefix(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
}

/// Docker's `Services` section of `network inspect --verbose` for one network, from this
/// node's view: per service name its `VIP` (no prefix length; empty in dnsrr mode), `Ports`
/// (ingress-published, `Target: 80, Publish: 30000`) and `Tasks` (`Name`, `EndpointIP`,
/// `Info: {"Host IP": <node address>}`), plus `Serving` per task (the load balancer may
/// choose it). Services are keyed by name, tasks sorted by name.
pub fn services_section(view: &NetworkViewResponse, network_id: &str) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    let blank = || {
        let mut m = Map::new();
        m.insert("VIP".into(), json!(""));
        m.insert("Ports".into(), json!([]));
        m.insert("Tasks".into(), json!([]));
        m
    };
    let mut out: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for s in view
        .services
        .iter()
        .filter(|s| s.network_ids.iter().any(|n| n == network_id))
    {
        let m = out.entry(s.name.clone()).or_insert_with(blank);
        let vip = s
            .virtual_ips
            .iter()
            .find(|v| v.network_id == network_id)
            .map_or("", |v| without_prefix(&v.addr));
        m.insert("VIP".into(), json!(vip));
        let ports: Vec<String> = s
            .ports
            .iter()
            .filter(|p| p.publish_mode == PublishMode::Ingress as i32)
            .map(|p| format!("Target: {}, Publish: {}", p.target_port, p.published_port))
            .collect();
        m.insert("Ports".into(), json!(ports));
    }
    let mut tasks: BTreeMap<String, Vec<&EndpointInfo>> = BTreeMap::new();
    for e in view
        .endpoints
        .iter()
        .filter(|e| e.network_id == network_id && !e.node_ingress)
    {
        tasks.entry(e.service_name.clone()).or_default().push(e);
    }
    for (service, mut eps) in tasks {
        eps.sort_by(|a, b| natural_cmp(&a.task_name, &b.task_name));
        let list: Vec<Value> = eps
            .iter()
            .map(|e| {
                json!({
                    "Name": e.task_name,
                    "EndpointIP": e.address,
                    "Info": {"Host IP": e.node_addr},
                    "Serving": e.serving,
                })
            })
            .collect();
        out.entry(service)
            .or_insert_with(blank)
            .insert("Tasks".into(), Value::Array(list));
    }
    Value::Object(
        out.into_iter()
            .map(|(k, v)| (k, Value::Object(v)))
            .collect(),
    )
}

/// Docker's MAC for an overlay address: 02:42 and the four bytes of the address (what the
/// agent gives a task's interface).
fn docker_mac(addr: &str) -> String {
    match addr.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => {
            let o = ip.octets();
            format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
        }
        Err(_) => String::new(),
    }
}

/// Docker's key of the node's own endpoint on the ingress network in `Containers`.
pub const INGRESS_SBOX: &str = "ingress-sbox";

/// Where a network's endpoints are, from this node's view, as Docker's `network inspect`
/// shows it:
/// - `Containers`: the endpoints of this node's tasks, keyed by task id (`Name` the task
///   name, `EndpointID`, Docker's `MacAddress`, `IPv4Address` with the subnet's prefix
///   length), and on the ingress network every node's own endpoint (Docker's
///   `ingress-sbox`, `Name` `ingress-endpoint`): this node's under `ingress-sbox` as Docker
///   shows it, another node's under `ingress-sbox-<node id>` (Docker only knows its own), each
///   with its `Node` (hostname, or id when unknown);
/// - `Peers`: every node with an endpoint on the network (`Name` its hostname, or its id
///   when unknown; `IP` its data-path address), sorted by name; None when this node's view
///   does not hold the network (Docker shows no peers where the network is not set up).
pub fn endpoint_sections(
    view: &NetworkViewResponse,
    network_id: &str,
    local_node: &str,
    hostnames: &BTreeMap<String, String>,
) -> (serde_json::Value, Option<serde_json::Value>) {
    use serde_json::{json, Map, Value};
    let info = view.networks.iter().find(|n| n.id == network_id);
    let prefix = info.and_then(|n| n.subnet.split_once('/').map(|(_, len)| len));
    let with_prefix = |addr: &str| match prefix {
        Some(len) if !addr.is_empty() => format!("{addr}/{len}"),
        _ => addr.to_string(),
    };
    let host = |node: &str| {
        hostnames
            .get(node)
            .filter(|h| !h.is_empty())
            .cloned()
            .unwrap_or_else(|| node.to_string())
    };
    let mut containers = Map::new();
    let mut peers: BTreeMap<String, (String, String)> = BTreeMap::new();
    for e in view.endpoints.iter().filter(|e| e.network_id == network_id) {
        peers
            .entry(e.node_id.clone())
            .or_insert_with(|| (host(&e.node_id), e.node_addr.clone()));
        let mut entry = json!({
            "Name": if e.node_ingress { "ingress-endpoint" } else { e.task_name.as_str() },
            "EndpointID": e.task_id,
            "MacAddress": docker_mac(&e.address),
            "IPv4Address": with_prefix(&e.address),
            "IPv6Address": "",
        });
        let key = if e.node_ingress {
            entry["Node"] = Value::String(host(&e.node_id));
            if e.node_id == local_node {
                INGRESS_SBOX.to_string()
            } else {
                format!("{INGRESS_SBOX}-{}", e.node_id)
            }
        } else if e.node_id == local_node {
            e.task_id.clone()
        } else {
            continue;
        };
        containers.insert(key, entry);
    }
    let mut peers: Vec<(String, String)> = peers.into_values().collect();
    peers.sort_by(|a, b| natural_cmp(&a.0, &b.0).then_with(|| a.1.cmp(&b.1)));
    let peers = info.map(|_| {
        Value::Array(
            peers
                .into_iter()
                .map(|(name, ip)| json!({"Name": name, "IP": ip}))
                .collect(),
        )
    });
    (Value::Object(containers), peers)
}

/// This node's id and the hostnames of the nodes (the managers' list; a worker cannot ask
/// for it and shows node ids instead).
async fn local_node_and_hostnames(c: &Client) -> Result<(String, BTreeMap<String, String>)> {
    let me = c
        .local
        .clone()
        .info(InfoRequest {})
        .await
        .map_err(|s| c.err(s))?
        .into_inner()
        .node_id;
    let hostnames = c
        .nodes()
        .await
        .map(|nodes| {
            nodes
                .into_iter()
                .map(|n| {
                    let h = n.hostname().to_string();
                    (n.id, h)
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((me, hostnames))
}

pub async fn inspect(c: &Client, a: InspectArgs) -> Result<()> {
    let tmpl = crate::template::inspect_template(&a.format, false)?;
    // The node's own view: `Containers` and `Peers`, `--verbose`'s `Services`, and the
    // networks of a worker (it cannot ask the managers).
    let mut view: Option<NetworkViewResponse> = None;
    // This node's id and the nodes' hostnames.
    let mut who: Option<(String, BTreeMap<String, String>)> = None;
    let mut values = Vec::new();
    let mut errors = Vec::new();
    for r in &a.networks {
        let n = match get_status(c, r).await {
            Ok(n) => n,
            Err(s) if s.code() == Code::FailedPrecondition => {
                if view.is_none() {
                    view = Some(local_view(c).await?);
                }
                match view.as_ref().map(|v| (v.complete, find_local(v, r))) {
                    Some((_, Some(info))) => network_from_view(info),
                    // In a swarm, without a task on it: what Docker says on a worker.
                    Some((true, None)) => {
                        errors.push(CliError::msg(format!("No such network: {r}")));
                        continue;
                    }
                    _ => {
                        errors.push(c.err(s));
                        continue;
                    }
                }
            }
            Err(s) => {
                errors.push(not_found(c, r, s));
                continue;
            }
        };
        let mut v = json::value(&n, Kind::Other)?;
        if view.is_none() {
            view = Some(local_view(c).await?);
        }
        if who.is_none() {
            who = Some(local_node_and_hostnames(c).await?);
        }
        if let (Some(obj), Some(view), Some((me, hostnames))) =
            (v.as_object_mut(), view.as_ref(), who.as_ref())
        {
            let (containers, peers) = endpoint_sections(view, &n.id, me, hostnames);
            obj.insert("Containers".into(), containers);
            if let Some(peers) = peers {
                obj.insert("Peers".into(), peers);
            }
            if a.verbose {
                obj.insert("Services".into(), services_section(view, &n.id));
            }
        }
        values.push(v);
    }
    match tmpl {
        Some(t) => print!("{}", t.render_all(&values)?),
        None => println!("{}", json::inspect_array(&values)?),
    }
    match CliError::join(errors) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Network references of `service update --network-add` as network ids (the service spec
/// stores ids); an unknown network is an error. A `name=X,alias=Y` value keeps its options.
pub async fn ids_for_add(c: &Client, refs: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for r in refs {
        let (name, rest) = split_network_value(r);
        let id = get(c, name).await?.id;
        out.push(match rest {
            Some(rest) => format!("name={id},{rest}"),
            None => id,
        });
    }
    Ok(out)
}

/// Network references of `service update --network-rm`: each as given, plus its id when the
/// network exists (so that a name matches the id the spec stores).
pub async fn ids_for_rm(c: &Client, refs: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for r in refs {
        out.push(r.clone());
        if let Ok(n) = get(c, r).await {
            out.push(n.id);
        }
    }
    Ok(out)
}

/// "front" → ("front", None); "name=front,alias=web" → ("front", Some("alias=web")).
fn split_network_value(v: &str) -> (&str, Option<&str>) {
    if !v.contains('=') {
        return (v, None);
    }
    let mut name = v;
    let mut rest: Vec<&str> = Vec::new();
    for part in v.split(',') {
        match part.split_once('=') {
            Some(("name" | "target", n)) => name = n,
            _ => rest.push(part),
        }
    }
    if rest.is_empty() {
        (name, None)
    } else {
        // The options follow the name in the value: keep the tail as written.
        let tail_start = v.find(rest[0]).unwrap_or(v.len());
        (name, Some(&v[tail_start..]))
    }
}

/// Docker's warning before removing the routing-mesh network.
pub const INGRESS_WARNING: &str = "WARNING! Before removing the routing-mesh network, make sure all the nodes in your swarm run the same swarm-agent version. Otherwise, removal may not be effective and functionality of newly created ingress networks will be impaired.\nAre you sure you want to continue? [y/N] ";

fn confirmed(answer: &str) -> bool {
    matches!(answer.trim(), "y" | "Y" | "yes" | "Yes" | "YES")
}

fn confirm_ingress_removal() -> bool {
    print!("{INGRESS_WARNING}");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(_) => confirmed(&line),
        Err(_) => false,
    }
}

pub async fn rm(c: &Client, a: RmArgs) -> Result<()> {
    let mut errors = Vec::new();
    for r in &a.networks {
        let n = match get(c, r).await {
            Ok(n) => n,
            Err(_) if a.force => continue,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if n.spec.as_ref().is_some_and(|s| s.ingress) && !a.force && !confirm_ingress_removal() {
            errors.push(CliError::msg(format!(
                "network {r} not removed: removing the ingress network needs confirmation (answer y, or use --force)"
            )));
            continue;
        }
        match c
            .control
            .clone()
            .remove_network(RemoveNetworkRequest {
                network_id: n.id.clone(),
            })
            .await
        {
            Ok(_) => println!("{r}"),
            Err(s) if a.force && s.code() == Code::NotFound => {}
            Err(s) => errors.push(c.err(s)),
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

    fn args(extra: &[&str]) -> CreateArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct W {
            #[command(flatten)]
            a: CreateArgs,
        }
        let mut argv = vec!["network-create"];
        argv.extend_from_slice(extra);
        W::try_parse_from(argv).expect("parses").a
    }

    #[test]
    fn create_flags_make_the_spec() {
        let a = args(&[
            "--subnet",
            "10.9.0.0/24",
            "--gateway",
            "10.9.0.254",
            "--attachable",
            "--internal",
            "-o",
            "com.docker.network.driver.mtu=1400",
            "--label",
            "team=web",
            "front",
        ]);
        let s = create_spec(&a, "front").unwrap();
        assert_eq!(s.driver, "overlay", "the default driver");
        assert_eq!(s.name, "front");
        assert_eq!(
            s.ipam,
            vec![IpamConfig {
                subnet: "10.9.0.0/24".into(),
                gateway: "10.9.0.254".into()
            }]
        );
        assert!(s.attachable && s.internal && !s.ingress);
        assert_eq!(s.driver_options["com.docker.network.driver.mtu"], "1400");
        assert_eq!(s.labels["team"], "web");

        let a = args(&["--gateway", "10.9.0.1", "x"]);
        let e = create_spec(&a, "x").unwrap_err().to_string();
        assert!(e.contains("corresponding subnet"), "{e}");
        let a = args(&["-o", "=1", "x"]);
        assert!(create_spec(&a, "x").is_err());
        let a = args(&["-d", "bridge", "x"]);
        assert_eq!(
            create_spec(&a, "x").unwrap().driver,
            "bridge",
            "refused by the manager"
        );
    }

    #[test]
    fn ls_table_is_dockers() {
        let n = |id: &str, name: &str| Network {
            id: id.into(),
            spec: Some(NetworkSpec {
                name: name.into(),
                driver: "overlay".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let out = ls_table(
            &[
                n("abcdefghijklmnopqrstuvwxy", "ingress"),
                n("zyxwvutsrqponmlkjihgfedcb", "front"),
            ],
            false,
        );
        assert_eq!(
            out,
            "NETWORK ID     NAME      DRIVER    SCOPE\n\
             abcdefghijkl   ingress   overlay   swarm\n\
             zyxwvutsrqpo   front     overlay   swarm\n"
        );
    }

    #[test]
    fn network_values_split() {
        assert_eq!(split_network_value("front"), ("front", None));
        assert_eq!(
            split_network_value("name=front,alias=web"),
            ("front", Some("alias=web"))
        );
        assert_eq!(split_network_value("name=front"), ("front", None));
    }

    #[test]
    fn only_yes_confirms() {
        assert!(confirmed("y\n") && confirmed("yes"));
        assert!(!confirmed("") && !confirmed("n") && !confirmed("nope"));
    }

    fn view() -> NetworkViewResponse {
        let ep = |task: &str, svc: &str, net: &str, addr: &str, host: &str, serving: bool| {
            EndpointInfo {
                task_id: task.into(),
                network_id: net.into(),
                address: addr.into(),
                node_addr: host.into(),
                service_name: svc.into(),
                task_name: format!("{svc}.{task}"),
                serving,
                ..Default::default()
            }
        };
        NetworkViewResponse {
            complete: true,
            generation: 1,
            networks: vec![NetworkInfo {
                id: "n1aaaaaaaaaa".into(),
                name: "front".into(),
                vni: 4097,
                subnet: "10.0.1.0/24".into(),
                gateway: "10.0.1.1".into(),
                mtu: 1400,
                ..Default::default()
            }],
            endpoints: vec![
                ep(
                    "10.t2",
                    "web",
                    "n1aaaaaaaaaa",
                    "10.0.1.4",
                    "127.0.0.2",
                    false,
                ),
                ep("2.t1", "web", "n1aaaaaaaaaa", "10.0.1.3", "127.0.0.1", true),
                ep("1.t3", "db", "n1aaaaaaaaaa", "10.0.1.9", "127.0.0.1", true),
                ep("1.t4", "web", "other", "10.0.2.3", "127.0.0.1", true),
            ],
            services: vec![
                ServiceInfo {
                    id: "s1".into(),
                    name: "web".into(),
                    virtual_ips: vec![
                        VirtualIp {
                            network_id: "other".into(),
                            addr: "10.0.2.2/24".into(),
                        },
                        VirtualIp {
                            network_id: "n1aaaaaaaaaa".into(),
                            addr: "10.0.1.2/24".into(),
                        },
                    ],
                    network_ids: vec!["other".into(), "n1aaaaaaaaaa".into()],
                    ports: vec![
                        PortConfig {
                            target_port: 80,
                            published_port: 30000,
                            ..Default::default()
                        },
                        PortConfig {
                            target_port: 81,
                            published_port: 8081,
                            publish_mode: PublishMode::Host as i32,
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
                ServiceInfo {
                    id: "s2".into(),
                    name: "idle".into(),
                    endpoint_mode: EndpointMode::Dnsrr as i32,
                    network_ids: vec!["n1aaaaaaaaaa".into()],
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn verbose_services_section_is_dockers_for_one_network() {
        let v = services_section(&view(), "n1aaaaaaaaaa");
        assert_eq!(
            v,
            serde_json::json!({
                "db": {"VIP": "", "Ports": [], "Tasks": [
                    {"Name": "db.1.t3", "EndpointIP": "10.0.1.9",
                     "Info": {"Host IP": "127.0.0.1"}, "Serving": true},
                ]},
                "idle": {"VIP": "", "Ports": [], "Tasks": []},
                "web": {"VIP": "10.0.1.2", "Ports": ["Target: 80, Publish: 30000"], "Tasks": [
                    {"Name": "web.2.t1", "EndpointIP": "10.0.1.3",
                     "Info": {"Host IP": "127.0.0.1"}, "Serving": true},
                    {"Name": "web.10.t2", "EndpointIP": "10.0.1.4",
                     "Info": {"Host IP": "127.0.0.2"}, "Serving": false},
                ]},
            })
        );
        assert_eq!(services_section(&view(), "unknown"), serde_json::json!({}));
    }

    fn ingress_view() -> NetworkViewResponse {
        let sbox = |node: &str, addr: &str, node_addr: &str| EndpointInfo {
            task_id: node.into(),
            network_id: "ing".into(),
            address: addr.into(),
            node_id: node.into(),
            node_addr: node_addr.into(),
            node_ingress: true,
            ..Default::default()
        };
        let task = |id: &str, name: &str, addr: &str, node: &str, node_addr: &str| EndpointInfo {
            task_id: id.into(),
            network_id: "ing".into(),
            address: addr.into(),
            node_id: node.into(),
            node_addr: node_addr.into(),
            service_id: "s1".into(),
            service_name: "web".into(),
            task_name: name.into(),
            serving: true,
            ..Default::default()
        };
        NetworkViewResponse {
            complete: true,
            generation: 3,
            networks: vec![NetworkInfo {
                id: "ing".into(),
                name: "ingress".into(),
                vni: 4096,
                subnet: "10.0.0.0/24".into(),
                gateway: "10.0.0.1".into(),
                ingress: true,
                ..Default::default()
            }],
            endpoints: vec![
                sbox("node1", "10.0.0.2", "192.168.1.1"),
                sbox("node2", "10.0.0.3", "192.168.1.2"),
                sbox("node3", "10.0.0.4", "192.168.1.3"),
                task("t1", "web.1.t1", "10.0.0.5", "node1", "192.168.1.1"),
                task("t2", "web.2.t2", "10.0.0.6", "node2", "192.168.1.2"),
                // Another network: not this one's.
                EndpointInfo {
                    network_id: "front".into(),
                    ..task("t1", "web.1.t1", "10.0.1.5", "node1", "192.168.1.1")
                },
            ],
            services: vec![ServiceInfo {
                id: "s1".into(),
                name: "web".into(),
                virtual_ips: vec![VirtualIp {
                    network_id: "ing".into(),
                    addr: "10.0.0.7/24".into(),
                }],
                network_ids: vec!["ing".into()],
                ports: vec![PortConfig {
                    target_port: 80,
                    published_port: 8080,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn ingress_inspect_shows_every_nodes_ingress_endpoint_and_peer() {
        let hostnames: BTreeMap<String, String> = [
            ("node1".to_string(), "node-1".to_string()),
            ("node2".to_string(), "node-2".to_string()),
        ]
        .into();
        let (containers, peers) = endpoint_sections(&ingress_view(), "ing", "node1", &hostnames);
        assert_eq!(
            containers,
            serde_json::json!({
                "ingress-sbox": {
                    "Name": "ingress-endpoint",
                    "EndpointID": "node1",
                    "MacAddress": "02:42:0a:00:00:02",
                    "IPv4Address": "10.0.0.2/24",
                    "IPv6Address": "",
                    "Node": "node-1",
                },
                "ingress-sbox-node2": {
                    "Name": "ingress-endpoint",
                    "EndpointID": "node2",
                    "MacAddress": "02:42:0a:00:00:03",
                    "IPv4Address": "10.0.0.3/24",
                    "IPv6Address": "",
                    "Node": "node-2",
                },
                "ingress-sbox-node3": {
                    "Name": "ingress-endpoint",
                    "EndpointID": "node3",
                    "MacAddress": "02:42:0a:00:00:04",
                    "IPv4Address": "10.0.0.4/24",
                    "IPv6Address": "",
                    "Node": "node3",
                },
                // This node's task only, as Docker shows local containers.
                "t1": {
                    "Name": "web.1.t1",
                    "EndpointID": "t1",
                    "MacAddress": "02:42:0a:00:00:05",
                    "IPv4Address": "10.0.0.5/24",
                    "IPv6Address": "",
                },
            })
        );
        assert_eq!(
            peers,
            // In natural order (`node3` before `node-1`, as `node ls` would sort them).
            Some(serde_json::json!([
                {"Name": "node3", "IP": "192.168.1.3"},
                {"Name": "node-1", "IP": "192.168.1.1"},
                {"Name": "node-2", "IP": "192.168.1.2"},
            ]))
        );
        // Seen from node2: its own endpoint is the `ingress-sbox`.
        let (containers, _) = endpoint_sections(&ingress_view(), "ing", "node2", &hostnames);
        let keys: Vec<&String> = containers.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "ingress-sbox",
                "ingress-sbox-node1",
                "ingress-sbox-node3",
                "t2"
            ]
        );
        assert_eq!(containers["ingress-sbox"]["IPv4Address"], "10.0.0.3/24");
        // A network this node's view does not hold: nothing, and no peers.
        let (containers, peers) = endpoint_sections(&ingress_view(), "back", "node1", &hostnames);
        assert_eq!((containers, peers), (serde_json::json!({}), None));
        // The node endpoints are no service's tasks in `--verbose`'s Services.
        assert_eq!(
            services_section(&ingress_view(), "ing"),
            serde_json::json!({
                "web": {"VIP": "10.0.0.7", "Ports": ["Target: 80, Publish: 8080"], "Tasks": [
                    {"Name": "web.1.t1", "EndpointIP": "10.0.0.5",
                     "Info": {"Host IP": "192.168.1.1"}, "Serving": true},
                    {"Name": "web.2.t2", "EndpointIP": "10.0.0.6",
                     "Info": {"Host IP": "192.168.1.2"}, "Serving": true},
                ]},
            })
        );
    }

    #[test]
    fn workers_find_networks_in_their_view() {
        let v = view();
        for r in ["front", "n1aaaaaaaaaa", "n1a"] {
            assert_eq!(
                find_local(&v, r).map(|n| n.name.as_str()),
                Some("front"),
                "{r}"
            );
        }
        assert!(find_local(&v, "back").is_none());
        assert!(find_local(&v, "").is_none());
        let n = network_from_view(&v.networks[0]);
        let spec = n.spec.as_ref().unwrap();
        assert_eq!(
            (spec.name.as_str(), spec.driver.as_str()),
            ("front", "overlay")
        );
        assert_eq!(spec.driver_options["com.docker.network.driver.mtu"], "1400");
        let a = n.allocation.unwrap();
        assert_eq!(
            (a.vni, a.subnet.as_str(), a.gateway.as_str()),
            (4097, "10.0.1.0/24", "10.0.1.1")
        );
    }
}
