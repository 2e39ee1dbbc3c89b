//! `swarm node ls|inspect|update|promote|demote|rm|ps`.

use std::collections::HashMap;

use clap::{Args, Subcommand};
use proto::*;

use crate::client::Client;
use crate::error::{CliError, Result};
use crate::format::{self, natural_cmp};
use crate::format_rows;
use crate::json::{self, Kind};
use crate::opts;
use crate::ps;
use crate::table::Table;
use crate::template::{self, Format};

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List nodes in the swarm
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more nodes
    Inspect(InspectArgs),
    /// Update a node
    Update(UpdateArgs),
    /// Promote one or more nodes to manager in the swarm
    Promote(NodesArgs),
    /// Demote one or more nodes from manager in the swarm
    Demote(NodesArgs),
    /// Remove one or more nodes from the swarm
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// List tasks running on one or more nodes, defaults to current node
    Ps(PsArgs),
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only display IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Filter output based on conditions provided (id=, name=, label=, node.label=, membership=, role=)
    #[arg(short, long)]
    pub filter: Vec<String>,
    /// Format output: "table" (default), "json" (one node per line) or a Go template
    #[arg(long)]
    pub format: Option<String>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Print the information in a human friendly format
    #[arg(long)]
    pub pretty: bool,
    /// Format output: "json" (default), "pretty" or a Go template ('{{.Description.Hostname}}')
    #[arg(short, long)]
    pub format: Option<String>,
    #[arg(value_name = "NODE")]
    pub nodes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Availability of the node ("active", "pause", "drain")
    #[arg(long)]
    pub availability: Option<String>,
    /// Add or update a node label ("key=value")
    #[arg(long = "label-add", value_name = "key=value")]
    pub label_add: Vec<String>,
    /// Remove a node label if exists
    #[arg(long = "label-rm", value_name = "key")]
    pub label_rm: Vec<String>,
    /// Role of the node ("worker", "manager")
    #[arg(long)]
    pub role: Option<String>,
    #[arg(value_name = "NODE")]
    pub node: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NodesArgs {
    #[arg(value_name = "NODE")]
    pub nodes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Force remove a node from the swarm
    #[arg(short, long)]
    pub force: bool,
    #[arg(value_name = "NODE")]
    pub nodes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Only display task IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not truncate output
    #[arg(long)]
    pub no_trunc: bool,
    /// Filter output based on conditions provided (desired-state=, id=, name=)
    #[arg(short, long)]
    pub filter: Vec<String>,
    /// Format output: "table" (default), "json" (one task per line) or a Go template
    #[arg(long)]
    pub format: Option<String>,
    #[arg(value_name = "NODE")]
    pub nodes: Vec<String>,
}

/// Nodes in `node ls` order: natural order of hostnames, then ids.
pub fn sort_nodes(nodes: &mut [Node]) {
    nodes.sort_by(|a, b| natural_cmp(a.hostname(), b.hostname()).then(a.id.cmp(&b.id)));
}

/// The `node ls` table; `self_id` gets the `*`.
pub fn ls_table(nodes: &[Node], self_id: &str) -> String {
    let mut t = Table::new([
        "ID  ",
        "HOSTNAME",
        "STATUS",
        "AVAILABILITY",
        "MANAGER STATUS",
        "ENGINE VERSION",
    ]);
    for n in nodes {
        t.row([
            format!("{} {}", n.id, if n.id == self_id { "*" } else { " " }),
            n.hostname().to_string(),
            format::node_state(n.state()).to_string(),
            format::availability(n.availability()).to_string(),
            format::manager_status(n),
            n.description
                .as_ref()
                .map_or(String::new(), |d| d.engine_version.clone()),
        ]);
    }
    t.render()
}

pub async fn ls(c: &Client, a: LsArgs) -> Result<()> {
    let fmt = Format::parse(&a.format);
    let json_out = fmt == Format::Json;
    let filter = crate::list_filter::nodes(&a.filter).map_err(CliError::msg)?;
    let mut nodes: Vec<Node> = c
        .nodes()
        .await?
        .into_iter()
        .filter(|n| crate::list_filter::keep_node(&filter, n))
        .collect();
    sort_nodes(&mut nodes);
    if let Format::Template { table, text } = &fmt {
        let self_id = c.info().await?.node_id;
        let cert = c.cluster().await?.root_ca.unwrap_or_default().ca_cert;
        let root = crate::cluster_cmd::public_key_of(&cert)
            .ok()
            .map(|public_key| format_rows::ClusterRoot { cert, public_key });
        let rows: Vec<_> = nodes
            .iter()
            .map(|n| format_rows::node(n, &self_id, root.as_ref()))
            .collect();
        print!(
            "{}",
            template::render_rows(*table, text, format_rows::NODE_HEADERS, &rows)?
        );
        return Ok(());
    }
    if a.quiet {
        for n in &nodes {
            println!("{}", n.id);
        }
        return Ok(());
    }
    if json_out {
        for n in &nodes {
            println!("{}", json::line(n, Kind::Node)?);
        }
        return Ok(());
    }
    let self_id = if nodes.is_empty() {
        String::new()
    } else {
        c.info().await?.node_id
    };
    print!("{}", ls_table(&nodes, &self_id));
    Ok(())
}

fn labels_block(title: &str, labels: &std::collections::BTreeMap<String, String>) -> String {
    let mut s = String::new();
    if labels.is_empty() {
        return s;
    }
    s.push_str(&format!("\n{title}:"));
    for (k, v) in labels {
        if v.is_empty() {
            s.push_str(&format!("\n - {k}"));
        } else {
            s.push_str(&format!("\n - {k}={v}"));
        }
    }
    s
}

/// Docker's `node inspect --pretty` text.
pub fn pretty(n: &Node) -> String {
    let spec = n.spec.clone().unwrap_or_default();
    let desc = n.description.clone().unwrap_or_default();
    let status = n.status.clone().unwrap_or_default();
    let mut s = format!("ID:\t\t\t{}", n.id);
    s.push_str(&labels_block("Labels", &spec.labels));
    s.push_str(&format!("\nHostname:              \t{}", desc.hostname));
    s.push_str(&format!(
        "\nJoined at:             \t{}",
        format::timestamp(n.meta.as_ref().map_or(0, |m| m.created_at))
    ));
    s.push_str(&format!(
        "\nStatus:\n State:\t\t\t{}",
        format::node_state(n.state())
    ));
    if !status.message.is_empty() {
        s.push_str(&format!(
            "\n Message:              \t{}",
            format::pretty(&status.message)
        ));
    }
    s.push_str(&format!(
        "\n Availability:         \t{}",
        format::availability(n.availability())
    ));
    if !status.addr.is_empty() {
        s.push_str(&format!("\n Address:\t\t{}", status.addr));
    }
    if let Some(m) = &n.manager_status {
        s.push_str(&format!(
            "\nManager Status:\n Address:\t\t{}\n Raft Status:\t\t{}\n Leader:\t\t{}",
            m.addr,
            format::reachability(Reachability::try_from(m.reachability).unwrap_or_default()),
            if m.leader { "Yes" } else { "No" }
        ));
    }
    let platform = desc.platform.clone().unwrap_or_default();
    s.push_str(&format!(
        "\nPlatform:\n Operating System:\t{}\n Architecture:\t\t{}",
        platform.os, platform.architecture
    ));
    let res = desc.resources.unwrap_or_default();
    s.push_str(&format!(
        "\nResources:\n CPUs:\t\t\t{}\n Memory:\t\t{}",
        res.nano_cpus / 1_000_000_000,
        if res.memory_bytes == 0 {
            String::new()
        } else {
            format::bytes_size(res.memory_bytes)
        }
    ));
    s.push_str(&format!("\nEngine Version:\t\t{}", desc.engine_version));
    s.push_str(&labels_block("Engine Labels", &desc.engine_labels));
    if let Some(dp) = desc.data_plane.as_ref().filter(|d| !d.mode.is_empty()) {
        s.push_str(&format!("\nData Plane:\n Mode:\t\t\t{}", dp.mode));
        if !dp.tc_attach.is_empty() {
            s.push_str(&format!("\n TC Attach:\t\t{}", dp.tc_attach));
        }
        if !dp.missing.is_empty() {
            s.push_str(&format!("\n Missing:\t\t{}", dp.missing.join(", ")));
        }
        s.push_str(&format!("\n Kernel:\t\t{}", dp.kernel));
        s.push_str(&format!("\n Reason:\t\t{}", dp.reason));
    }
    if !n.port_conflicts.is_empty() {
        s.push_str("\nPublished ports a process of the node listens on too:");
        for c in &n.port_conflicts {
            let protocol = format::protocol_name(c.protocol);
            let process = if c.process.is_empty() {
                "?"
            } else {
                &c.process
            };
            s.push_str(&format!("\n {}/{protocol}:\t\t{process}", c.port));
        }
    }
    s.push('\n');
    s
}

pub async fn inspect(c: &Client, mut a: InspectArgs) -> Result<()> {
    // Docker: `--format pretty` is `--pretty`; other formats are templates.
    if a.format.as_deref() == Some("pretty") {
        a.pretty = true;
        a.format = None;
    }
    let tmpl = template::inspect_template(&a.format, a.pretty)?;
    let mut values = Vec::new();
    let mut texts = Vec::new();
    let mut errors = Vec::new();
    for r in &a.nodes {
        // "self" names the local node, as in Docker.
        let reference = if r == "self" {
            c.info().await?.node_id
        } else {
            r.clone()
        };
        match c.node(&reference).await {
            Ok(n) if a.pretty => texts.push(pretty(&n)),
            Ok(n) => values.push(json::value(&n, Kind::Node)?),
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

fn parse_role(r: &str) -> Result<NodeRole> {
    match r {
        "worker" => Ok(NodeRole::Worker),
        "manager" => Ok(NodeRole::Manager),
        other => Err(CliError::msg(format!(
            "invalid role {other:?}, only worker and manager are supported"
        ))),
    }
}

/// Applies `node update` flags to a spec.
pub fn merge_update(spec: &mut NodeSpec, a: &UpdateArgs) -> Result<()> {
    if let Some(r) = &a.role {
        spec.desired_role = parse_role(r)? as i32;
    }
    if let Some(av) = &a.availability {
        spec.availability = opts::parse_availability(av).map_err(CliError::msg)? as i32;
    }
    for (k, v) in opts::parse_labels(&a.label_add).map_err(CliError::msg)? {
        spec.labels.insert(k, v);
    }
    for k in &a.label_rm {
        if spec.labels.remove(k).is_none() {
            return Err(CliError::msg(format!(
                "key {k} doesn't exist in node's labels"
            )));
        }
    }
    Ok(())
}

/// How often a node change is read and written again when another writer (the managers'
/// own bookkeeping: manager status, node state) changed the node in between.
const UPDATE_ATTEMPTS: usize = 5;

/// Reads node `r`, lets `change` edit its spec (`Ok(false)`: nothing to write) and writes it
/// back against the version read. Each change here is a delta of the user's flags, so a
/// write that lost the race with another writer ("update out of sequence") is read and
/// applied again. Returns whether it wrote.
async fn change_spec(
    c: &Client,
    r: &str,
    mut change: impl FnMut(&mut NodeSpec) -> Result<bool>,
) -> Result<bool> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let n = c.node(r).await?;
        let mut spec = n.spec.clone().unwrap_or_default();
        if !change(&mut spec)? {
            return Ok(false);
        }
        let written = c
            .control
            .clone()
            .update_node(UpdateNodeRequest {
                node_id: n.id.clone(),
                node_version: n.meta.as_ref().map_or(0, |m| m.version),
                spec: Some(spec),
            })
            .await;
        match written {
            Ok(_) => return Ok(true),
            Err(s) if proto::out_of_sequence::is(&s) && attempt < UPDATE_ATTEMPTS => {}
            Err(s) => return Err(c.err(s)),
        }
    }
}

pub async fn update(c: &Client, a: UpdateArgs, node: String) -> Result<()> {
    change_spec(c, &node, |spec| {
        merge_update(spec, &a)?;
        Ok(true)
    })
    .await?;
    println!("{node}");
    Ok(())
}

/// `promote` (to manager) or `demote` (to worker) each node; errors are collected.
pub async fn set_role(c: &Client, nodes: Vec<String>, role: NodeRole) -> Result<()> {
    let mut errors = Vec::new();
    for r in nodes {
        let result = async {
            let wrote = change_spec(c, &r, |spec| {
                if spec.desired_role == role as i32 {
                    return Ok(false);
                }
                spec.desired_role = role as i32;
                Ok(true)
            })
            .await?;
            match (role, wrote) {
                (NodeRole::Manager, false) => println!("Node {r} is already a manager."),
                (NodeRole::Worker, false) => println!("Node {r} is already a worker."),
                (NodeRole::Manager, true) => {
                    println!("Node {r} promoted to a manager in the swarm.")
                }
                (NodeRole::Worker, true) => println!("Manager {r} demoted in the swarm."),
            }
            Ok::<(), CliError>(())
        }
        .await;
        if let Err(e) = result {
            errors.push(e);
        }
    }
    match CliError::join(errors) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

pub async fn rm(c: &Client, a: RmArgs) -> Result<()> {
    let mut errors = Vec::new();
    for r in a.nodes {
        match c
            .control
            .clone()
            .remove_node(RemoveNodeRequest {
                node_id: r.clone(),
                force: a.force,
            })
            .await
        {
            Ok(_) => println!("{r}"),
            Err(s) => errors.push(c.err(s)),
        }
    }
    match CliError::join(errors) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Names for the task table: every service and node, looked up once.
pub async fn names(c: &Client) -> Result<ps::Names> {
    let all_services = c.services().await?;
    let all_nodes = c.nodes().await?;
    let services: HashMap<String, String> = all_services
        .iter()
        .map(|s| (s.id.clone(), s.name().to_string()))
        .collect();
    let nodes: HashMap<String, String> = all_nodes
        .iter()
        .map(|n| (n.id.clone(), n.hostname().to_string()))
        .collect();
    Ok(ps::Names {
        services,
        nodes,
        shadows: ps::port_shadows(&all_services, &all_nodes),
    })
}

/// Prints tasks as `service ps` / `node ps` do.
pub fn print_tasks(
    tasks: &[Task],
    names: &ps::Names,
    quiet: bool,
    no_trunc: bool,
    fmt: &Format,
) -> Result<()> {
    if let Format::Template { table, text } = fmt {
        let now = swarm_common::clock::now_ms();
        let rows = format_rows::tasks(tasks, names, !no_trunc, now);
        print!(
            "{}",
            template::render_rows(*table, text, format_rows::TASK_HEADERS, &rows)?
        );
    } else if quiet {
        print!("{}", ps::quiet(tasks, names));
    } else if *fmt == Format::Json {
        for (t, _) in ps::ordered(tasks, names) {
            println!("{}", json::line(t, Kind::Task)?);
        }
    } else {
        print!(
            "{}",
            ps::table(tasks, names, !no_trunc, swarm_common::clock::now_ms())
        );
    }
    Ok(())
}

pub async fn node_ps(c: &Client, a: PsArgs) -> Result<()> {
    let fmt = Format::parse(&a.format);
    let filter = ps::Filter::parse(&a.filter).map_err(CliError::msg)?;
    let refs = if a.nodes.is_empty() {
        vec!["self".to_string()]
    } else {
        a.nodes.clone()
    };
    let mut ids = Vec::new();
    let mut errors = Vec::new();
    for r in refs {
        let reference = if r == "self" {
            c.info().await?.node_id
        } else {
            r.clone()
        };
        match c.node(&reference).await {
            Ok(n) => ids.push(n.id),
            Err(e) => errors.push(e),
        }
    }
    if !ids.is_empty() {
        let names = names(c).await?;
        let tasks: Vec<Task> = c
            .tasks(ListTasksRequest {
                node_ids: ids.clone(),
                desired_states: filter.desired.iter().map(|s| *s as i32).collect(),
                ..Default::default()
            })
            .await?
            .into_iter()
            .filter(|t| ids.contains(&t.node_id) && filter.keep(t, &names))
            .collect();
        print_tasks(&tasks, &names, a.quiet, a.no_trunc || a.quiet, &fmt)?;
    }
    match CliError::join(errors) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, host: &str, leader: Option<bool>) -> Node {
        Node {
            id: id.into(),
            description: Some(NodeDescription {
                hostname: host.into(),
                engine_version: "0.1.0".into(),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                state: NodeState::Ready as i32,
                ..Default::default()
            }),
            manager_status: leader.map(|l| ManagerStatus {
                leader: l,
                reachability: Reachability::Reachable as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn ls_marks_self_and_sorts_by_hostname() {
        let mut nodes = vec![
            node("cccccccccccccccccccccccc3", "node10", None),
            node("aaaaaaaaaaaaaaaaaaaaaaaa1", "node2", Some(false)),
            node("bbbbbbbbbbbbbbbbbbbbbbbb2", "node1", Some(true)),
        ];
        sort_nodes(&mut nodes);
        let out = ls_table(&nodes, "bbbbbbbbbbbbbbbbbbbbbbbb2");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "ID                            HOSTNAME   STATUS    AVAILABILITY   MANAGER STATUS   ENGINE VERSION",
                "bbbbbbbbbbbbbbbbbbbbbbbb2 *   node1      Ready     Active         Leader           0.1.0",
                "aaaaaaaaaaaaaaaaaaaaaaaa1     node2      Ready     Active         Reachable        0.1.0",
                "cccccccccccccccccccccccc3     node10     Ready     Active                          0.1.0",
            ]
        );
    }

    #[test]
    fn update_merges_flags() {
        let mut spec = NodeSpec::default();
        spec.labels.insert("old".into(), "1".into());
        let a = UpdateArgs {
            availability: Some("drain".into()),
            label_add: vec!["zone=a".into()],
            label_rm: vec!["old".into()],
            role: Some("manager".into()),
            node: vec![],
        };
        merge_update(&mut spec, &a).unwrap();
        assert_eq!(spec.availability, NodeAvailability::Drain as i32);
        assert_eq!(spec.desired_role, NodeRole::Manager as i32);
        assert_eq!(spec.labels.get("zone").map(String::as_str), Some("a"));
        assert!(!spec.labels.contains_key("old"));
        let again = UpdateArgs {
            availability: None,
            label_add: vec![],
            label_rm: vec!["old".into()],
            role: None,
            node: vec![],
        };
        assert_eq!(
            merge_update(&mut spec, &again).map_err(|e| e.to_string()),
            Err("Error: key old doesn't exist in node's labels".into())
        );
    }

    #[test]
    fn pretty_reads_like_docker() {
        let mut n = node("n1", "host1", Some(true));
        n.manager_status.as_mut().unwrap().addr = "10.0.0.1:2377".into();
        n.status.as_mut().unwrap().addr = "10.0.0.1".into();
        n.description.as_mut().unwrap().resources = Some(Resources {
            nano_cpus: 4_000_000_000,
            memory_bytes: 8 * 1024 * 1024 * 1024,
        });
        let p = pretty(&n);
        assert!(p.starts_with("ID:\t\t\tn1\nHostname:              \thost1\n"));
        assert!(p.contains("\nStatus:\n State:\t\t\tReady\n Availability:         \tActive\n Address:\t\t10.0.0.1\n"));
        assert!(p.contains("\nManager Status:\n Address:\t\t10.0.0.1:2377\n Raft Status:\t\tReachable\n Leader:\t\tYes\n"));
        assert!(p.contains("\nResources:\n CPUs:\t\t\t4\n Memory:\t\t8GiB\n"));
        assert!(p.ends_with("Engine Version:\t\t0.1.0\n"));
    }

    #[test]
    fn pretty_shows_the_data_plane_the_agent_chose() {
        let mut n = node("n1", "host1", None);
        n.description.as_mut().unwrap().data_plane = Some(proto::DataPlaneInfo {
            mode: "ebpf".into(),
            tc_attach: "legacy".into(),
            missing: vec!["tcx".into()],
            reason: "no TCX".into(),
            kernel: "6.1.0-28-amd64".into(),
        });
        let p = pretty(&n);
        assert!(
            p.ends_with("\nData Plane:\n Mode:\t\t\tebpf\n TC Attach:\t\tlegacy\n Missing:\t\ttcx\n Kernel:\t\t6.1.0-28-amd64\n Reason:\t\tno TCX\n"),
            "{p}"
        );
    }
}
