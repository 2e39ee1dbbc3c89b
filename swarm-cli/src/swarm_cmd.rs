//! `swarm init`, `join`, `join-token`, `leave`, `info`.

use clap::Args;
use proto::*;

use crate::client::Client;
use crate::error::{CliError, Result};
use crate::opts;

fn ms_arg(s: &str) -> std::result::Result<i64, String> {
    opts::parse_duration_ms(s)
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Advertised address (format: "<ip>[:port]")
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// Listen address (format: "<ip>[:port]")
    #[arg(long, default_value = "0.0.0.0:2377")]
    pub listen_addr: String,
    /// Availability of the node ("active", "pause", "drain")
    #[arg(long, default_value = "active")]
    pub availability: String,
    /// Task history retention limit
    #[arg(long, default_value_t = 5, allow_negative_numbers = true)]
    pub task_history_limit: i64,
    /// Dispatcher heartbeat period (ns|us|ms|s|m|h)
    #[arg(long, default_value = "5s", value_parser = ms_arg)]
    pub dispatcher_heartbeat: i64,
    /// Validity period for node certificates (ns|us|ms|s|m|h)
    #[arg(long, default_value = "2160h0m0s", value_parser = ms_arg)]
    pub cert_expiry: i64,
    /// Force create a new cluster from current state
    #[arg(long)]
    pub force_new_cluster: bool,
    /// Enable manager autolocking (requiring an unlock key to start a stopped manager)
    #[arg(long)]
    pub autolock: bool,
    /// Default address pool in CIDR format (repeatable)
    #[arg(long, value_name = "CIDR")]
    pub default_addr_pool: Vec<String>,
    /// Default address pool subnet mask length
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub default_addr_pool_mask_length: u32,
    /// Port number to use for data path traffic (1024 - 49151)
    #[arg(long, default_value_t = 4789, value_parser = clap::value_parser!(u32).range(1024..=49151))]
    pub data_path_port: u32,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Token for entry into the swarm
    #[arg(long, default_value = "")]
    pub token: String,
    /// Advertised address (format: "<ip>[:port]")
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// Listen address (format: "<ip>[:port]")
    #[arg(long, default_value = "0.0.0.0:2377")]
    pub listen_addr: String,
    /// Availability of the node ("active", "pause", "drain")
    #[arg(long, default_value = "active")]
    pub availability: String,
    /// HOST:PORT of a manager
    #[arg(value_name = "HOST:PORT")]
    pub remote: Vec<String>,
}

#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    /// Rotate join token
    #[arg(long)]
    pub rotate: bool,
    /// Only display token
    #[arg(short, long)]
    pub quiet: bool,
    /// worker or manager
    #[arg(value_name = "worker|manager")]
    pub role: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LeaveArgs {
    /// Force this node to leave the swarm, ignoring warnings
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Output format: "json" prints the agent's answer as JSON
    #[arg(short, long)]
    pub format: Option<String>,
}

/// Docker's join instructions.
pub fn join_command_text(role: &str, token: &str, addr: &str) -> String {
    format!(
        "To add a {role} to this swarm, run the following command:\n\n    swarm join --token {token} {addr}\n\n"
    )
}

pub fn init_text(node_id: &str, worker_token: &str, addr: &str) -> String {
    format!(
        "Swarm initialized: current node ({node_id}) is now a manager.\n\n{}To add a manager to this swarm, run 'swarm join-token manager' and follow the instructions.\n",
        join_command_text("worker", worker_token, addr)
    )
}

fn availability(v: &str) -> Result<i32> {
    opts::parse_availability(v)
        .map(|a| a as i32)
        .map_err(CliError::msg)
}

pub async fn init(c: &Client, a: InitArgs) -> Result<()> {
    let mut req = InitRequest {
        advertise_addr: a.advertise_addr.unwrap_or_default(),
        listen_addr: a.listen_addr,
        task_history_limit: a.task_history_limit,
        dispatcher_heartbeat_ms: a.dispatcher_heartbeat,
        cert_expiry_ms: a.cert_expiry,
        availability: availability(&a.availability)?,
        force_new_cluster: a.force_new_cluster,
        default_addr_pool: a.default_addr_pool,
        default_addr_pool_mask_length: a.default_addr_pool_mask_length,
        data_path_port: a.data_path_port,
        autolock: a.autolock,
    };
    if req.force_new_cluster {
        keep_swarm_settings(&mut req);
    }
    let resp = c
        .local
        .clone()
        .init(req)
        .await
        .map_err(|s| c.err(s))?
        .into_inner();
    print!(
        "{}",
        init_text(&resp.node_id, &resp.worker_token, &resp.manager_addr)
    );
    if !resp.unlock_key.is_empty() {
        print!("\n{}", crate::unlock_cmd::unlock_text(&resp.unlock_key));
    }
    Ok(())
}

/// `--force-new-cluster` keeps the settings of the swarm it is made from: the settings
/// left at their defaults are not sent (0 = keep), so that only ones the user changed reach
/// the agent, which refuses them with the flag's name.
fn keep_swarm_settings(req: &mut InitRequest) {
    let defaults = InitRequest {
        task_history_limit: 5,
        dispatcher_heartbeat_ms: 5_000,
        cert_expiry_ms: 2160 * 3600 * 1000,
        default_addr_pool_mask_length: 24,
        data_path_port: 4789,
        ..Default::default()
    };
    if req.task_history_limit == defaults.task_history_limit {
        req.task_history_limit = 0;
    }
    if req.dispatcher_heartbeat_ms == defaults.dispatcher_heartbeat_ms {
        req.dispatcher_heartbeat_ms = 0;
    }
    if req.cert_expiry_ms == defaults.cert_expiry_ms {
        req.cert_expiry_ms = 0;
    }
    if req.default_addr_pool_mask_length == defaults.default_addr_pool_mask_length {
        req.default_addr_pool_mask_length = 0;
    }
    if req.data_path_port == defaults.data_path_port {
        req.data_path_port = 0;
    }
}

pub async fn join(c: &Client, a: JoinArgs, remote: String) -> Result<()> {
    let resp = c
        .local
        .clone()
        .join(JoinSwarmRequest {
            remote_addr: remote,
            token: a.token,
            advertise_addr: a.advertise_addr.unwrap_or_default(),
            listen_addr: a.listen_addr,
            availability: availability(&a.availability)?,
        })
        .await
        .map_err(|s| c.err(s))?
        .into_inner();
    if resp.role == NodeRole::Manager as i32 {
        println!("This node joined a swarm as a manager.");
    } else {
        println!("This node joined a swarm as a worker.");
    }
    Ok(())
}

/// The address managers are reached at: the agent's advertise address, else the manager
/// status of this node.
async fn manager_addr(c: &Client, info: &InfoResponse) -> Result<String> {
    if !info.node_addr.is_empty() {
        return Ok(info.node_addr.clone());
    }
    let node = c.node(&info.node_id).await?;
    Ok(node.manager_status.map(|m| m.addr).unwrap_or_default())
}

pub async fn join_token(c: &Client, a: JoinTokenArgs, role: String) -> Result<()> {
    let worker = role == "worker";
    if !worker && role != "manager" {
        return Err(CliError::msg(format!("unknown role {role}")));
    }
    if a.rotate {
        let cluster = c.cluster().await?;
        c.control
            .clone()
            .update_cluster(UpdateClusterRequest {
                cluster_version: cluster.meta.as_ref().map_or(0, |m| m.version),
                spec: cluster.spec.clone(),
                rotate_worker_token: worker,
                rotate_manager_token: !worker,
                rotate_manager_unlock_key: false,
            })
            .await
            .map_err(|s| c.err(s))?;
        if !a.quiet {
            println!("Successfully rotated {role} join token.\n");
        }
    }
    let cluster = c.cluster().await?;
    let tokens = cluster
        .root_ca
        .and_then(|r| r.join_tokens)
        .unwrap_or_default();
    let token = if worker {
        tokens.worker
    } else {
        tokens.manager
    };
    if a.quiet {
        println!("{token}");
        return Ok(());
    }
    let info = c.info().await?;
    let addr = manager_addr(c, &info).await?;
    print!("{}", join_command_text(&role, &token, &addr));
    Ok(())
}

pub async fn leave(c: &Client, a: LeaveArgs) -> Result<()> {
    c.local
        .clone()
        .leave(LeaveSwarmRequest { force: a.force })
        .await
        .map_err(|s| c.err(s))?;
    println!("Node left the swarm.");
    Ok(())
}

/// The `swarm info` text (the Swarm section of `docker info`).
pub fn info_text(i: &InfoResponse) -> String {
    let mut s = format!("Swarm: {}\n", i.local_node_state);
    if !i.node_id.is_empty() {
        s.push_str(&format!(" NodeID: {}\n", i.node_id));
    }
    if !i.error.is_empty() {
        s.push_str(&format!(" Error: {}\n", i.error));
    }
    if i.local_node_state == "active" {
        s.push_str(&format!(
            " Is Manager: {}\n",
            i.role == NodeRole::Manager as i32
        ));
        if !i.cluster_id.is_empty() {
            s.push_str(&format!(" ClusterID: {}\n", i.cluster_id));
        }
        s.push_str(&format!(" Managers: {}\n", i.managers.len()));
        if !i.node_addr.is_empty() {
            s.push_str(&format!(" Node Address: {}\n", i.node_addr));
        }
        if !i.managers.is_empty() {
            s.push_str(" Manager Addresses:\n");
            let mut m = i.managers.clone();
            m.sort();
            for a in m {
                s.push_str(&format!("  {a}\n"));
            }
        }
    }
    s
}

pub async fn info(c: &Client, a: InfoArgs) -> Result<()> {
    let i = c.info().await?;
    match a.format.as_deref() {
        None | Some("") | Some("table") => {
            print!("{}", info_text(&i));
            // A manager also shows the cluster settings, as Docker does.
            if i.control_available {
                if let Ok(cluster) = c.cluster().await {
                    print!("{}", crate::cluster_cmd::cluster_info_text(&cluster, &i));
                }
            }
        }
        Some("json") => println!("{}", crate::json::line(&i, crate::json::Kind::Other)?),
        Some(other) => return Err(crate::output_format::unsupported_format(other)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_output_matches_docker() {
        assert_eq!(
            init_text("abc123", "SWMTKN-1-x-y", "10.0.0.1:2377"),
            "Swarm initialized: current node (abc123) is now a manager.\n\n\
             To add a worker to this swarm, run the following command:\n\n    \
             swarm join --token SWMTKN-1-x-y 10.0.0.1:2377\n\n\
             To add a manager to this swarm, run 'swarm join-token manager' and follow the instructions.\n"
        );
    }

    #[test]
    fn info_text_lists_the_swarm() {
        let i = InfoResponse {
            local_node_state: "active".into(),
            node_id: "n1".into(),
            cluster_id: "c1".into(),
            role: NodeRole::Manager as i32,
            control_available: true,
            managers: vec!["10.0.0.2:2377".into(), "10.0.0.1:2377".into()],
            error: String::new(),
            node_addr: "10.0.0.1:2377".into(),
            ..Default::default()
        };
        assert_eq!(
            info_text(&i),
            "Swarm: active\n NodeID: n1\n Is Manager: true\n ClusterID: c1\n Managers: 2\n Node Address: 10.0.0.1:2377\n Manager Addresses:\n  10.0.0.1:2377\n  10.0.0.2:2377\n"
        );
        let inactive = InfoResponse {
            local_node_state: "inactive".into(),
            ..Default::default()
        };
        assert_eq!(info_text(&inactive), "Swarm: inactive\n");
    }
}
