//! `swarm ca` (show the root CA, rotate it and follow the rotation) and `swarm update` (the
//! cluster settings after init), and the cluster part of `swarm info` on a manager.

use std::io::IsTerminal;
use std::time::Duration;

use clap::Args;
use proto::*;

use crate::client::Client;
use crate::error::{CliError, Result};
use crate::format::human_duration;
use crate::opts;
use crate::progress::{Line, Renderer};

fn ms_arg(s: &str) -> std::result::Result<i64, String> {
    opts::parse_duration_ms(s)
}

const POLL: Duration = Duration::from_millis(300);
const BAR_WIDTH: usize = 50;

#[derive(Debug, Args)]
pub struct CaArgs {
    /// Path to the PEM-formatted root CA certificate to use for the new cluster (not supported)
    #[arg(long, value_name = "pem-file")]
    pub ca_cert: Option<String>,
    /// Path to the PEM-formatted root CA key to use for the new cluster (not supported)
    #[arg(long, value_name = "pem-file")]
    pub ca_key: Option<String>,
    /// Validity period for node certificates (ns|us|ms|s|m|h)
    #[arg(long, value_parser = ms_arg)]
    pub cert_expiry: Option<i64>,
    /// Exit immediately instead of waiting for the root rotation to converge
    #[arg(short, long)]
    pub detach: bool,
    /// Specifications of one or more certificate signing endpoints (not supported)
    #[arg(long, value_name = "external-ca")]
    pub external_ca: Vec<String>,
    /// Suppress progress output
    #[arg(short, long)]
    pub quiet: bool,
    /// Rotate the swarm CA - if no certificate or key are provided, new ones will be generated
    #[arg(long)]
    pub rotate: bool,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Validity period for node certificates (ns|us|ms|s|m|h)
    #[arg(long, value_parser = ms_arg)]
    pub cert_expiry: Option<i64>,
    /// Dispatcher heartbeat period (ns|us|ms|s|m|h)
    #[arg(long, value_parser = ms_arg)]
    pub dispatcher_heartbeat: Option<i64>,
    /// Task history retention limit
    #[arg(long, allow_negative_numbers = true)]
    pub task_history_limit: Option<i64>,
    /// Change manager autolocking setting (true|false)
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "true|false", value_parser = opts::parse_bool)]
    pub autolock: Option<bool>,
}

fn autolock_of(spec: &ClusterSpec) -> bool {
    spec.encryption_config
        .as_ref()
        .is_some_and(|e| e.auto_lock_managers)
}

fn version(c: &Cluster) -> u64 {
    c.meta.as_ref().map_or(0, |m| m.version)
}

/// Writes `spec` as the cluster's, if the cluster is still the version read.
async fn write_spec(c: &Client, cluster: &Cluster, spec: ClusterSpec) -> Result<()> {
    c.control
        .clone()
        .update_cluster(UpdateClusterRequest {
            cluster_version: version(cluster),
            spec: Some(spec),
            rotate_worker_token: false,
            rotate_manager_token: false,
            rotate_manager_unlock_key: false,
        })
        .await
        .map_err(|s| c.err(s))?;
    Ok(())
}

/// `swarm update`: changes only the settings given, like Docker.
pub async fn update(c: &Client, a: UpdateArgs) -> Result<()> {
    let cluster = c.cluster().await?;
    let mut spec = cluster.spec.clone().unwrap_or_default();
    let was_locked = autolock_of(&spec);
    if let Some(on) = a.autolock {
        spec.encryption_config = Some(EncryptionConfig {
            auto_lock_managers: on,
        });
    }
    if let Some(ms) = a.cert_expiry {
        spec.ca_config
            .get_or_insert_with(Default::default)
            .node_cert_expiry_ms = ms;
    }
    if let Some(ms) = a.dispatcher_heartbeat {
        spec.dispatcher
            .get_or_insert_with(Default::default)
            .heartbeat_period_ms = ms;
    }
    if let Some(n) = a.task_history_limit {
        spec.orchestration
            .get_or_insert_with(Default::default)
            .task_history_retention_limit = n;
    }
    let locks = autolock_of(&spec) && !was_locked;
    write_spec(c, &cluster, spec).await?;
    println!("Swarm updated.");
    // Docker shows the new key when autolock was just turned on.
    if locks {
        let key = crate::unlock_cmd::fetch_unlock_key(c).await?;
        print!("{}", crate::unlock_cmd::unlock_text(&key));
    }
    Ok(())
}

/// `swarm ca`: the root CA certificate; with `--rotate`, a new root and the rotation's
/// progress until every node has moved to it.
pub async fn ca(c: &Client, a: CaArgs) -> Result<()> {
    if !a.rotate {
        let set = [
            ("ca-cert", a.ca_cert.is_some()),
            ("ca-key", a.ca_key.is_some()),
            ("cert-expiry", a.cert_expiry.is_some()),
            ("external-ca", !a.external_ca.is_empty()),
        ];
        if let Some((flag, _)) = set.iter().find(|(_, on)| *on) {
            return Err(CliError::msg(format!(
                "`--{flag}` flag requires the `--rotate` flag to update the CA"
            )));
        }
        return print_root(c).await;
    }
    if a.ca_cert.is_some() || a.ca_key.is_some() || !a.external_ca.is_empty() {
        return Err(CliError::msg(
            "rotating to a given root CA (--ca-cert, --ca-key, --external-ca) is not supported: run `swarm ca --rotate` without them to rotate to a newly generated root CA",
        ));
    }
    let cluster = c.cluster().await?;
    let mut spec = cluster.spec.clone().unwrap_or_default();
    let ca_config = spec.ca_config.get_or_insert_with(Default::default);
    if let Some(ms) = a.cert_expiry {
        ca_config.node_cert_expiry_ms = ms;
    }
    let last = cluster
        .root_ca
        .as_ref()
        .map_or(0, |r| r.last_forced_rotation);
    ca_config.force_rotate = ca_config.force_rotate.max(last) + 1;
    write_spec(c, &cluster, spec).await?;
    if a.detach {
        return Ok(());
    }
    follow_rotation(c, a.quiet).await?;
    print_root(c).await
}

async fn print_root(c: &Client) -> Result<()> {
    let cluster = c.cluster().await?;
    let root = cluster.root_ca.map(|r| r.ca_cert).unwrap_or_default();
    println!("{}", root.trim());
    Ok(())
}

/// Where a rotation stands: the root every node should end with, how many nodes (not down)
/// hold a certificate it issued and how many trust it alone.
#[derive(Debug, PartialEq)]
struct RotationStatus {
    desired_root: String,
    tls_done: usize,
    ca_done: usize,
    total: usize,
    rotating: bool,
}

impl RotationStatus {
    fn of(cluster: &Cluster, nodes: &[Node]) -> Result<RotationStatus> {
        let root = cluster.root_ca.clone().unwrap_or_default();
        let rotation = root.root_rotation.as_ref();
        let desired_root = rotation
            .map(|r| r.ca_cert.clone())
            .unwrap_or(root.ca_cert.clone());
        let issuer = public_key_of(&desired_root)?;
        let waited: Vec<&Node> = nodes
            .iter()
            .filter(|n| n.status.as_ref().map(|s| s.state()) != Some(NodeState::Down))
            .collect();
        let tls = |n: &Node| n.description.as_ref().and_then(|d| d.tls_info.clone());
        Ok(RotationStatus {
            tls_done: waited
                .iter()
                .filter(|n| tls(n).is_some_and(|t| t.cert_issuer_public_key == issuer))
                .count(),
            ca_done: waited
                .iter()
                .filter(|n| tls(n).is_some_and(|t| t.trust_root.trim() == desired_root.trim()))
                .count(),
            total: waited.len(),
            rotating: rotation.is_some(),
            desired_root,
        })
    }

    fn done(&self) -> bool {
        !self.rotating && self.tls_done == self.total && self.ca_done == self.total
    }
}

/// The DER SubjectPublicKeyInfo of a PEM certificate.
pub(crate) fn public_key_of(pem: &str) -> Result<Vec<u8>> {
    let bad = |e: String| {
        CliError::msg(format!(
            "the swarm's root CA certificate is unreadable: {e}"
        ))
    };
    let (_, p) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let cert = p.parse_x509().map_err(|e| bad(e.to_string()))?;
    Ok(cert.public_key().raw.to_vec())
}

/// sha256 of the first certificate's DER, as Docker prints the desired root digest.
fn root_digest(pem: &str) -> String {
    match x509_parser::pem::parse_x509_pem(pem.as_bytes()) {
        Ok((_, p)) => {
            use sha2::Digest;
            let d = sha2::Sha256::digest(&p.contents);
            let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
            format!("sha256:{hex}")
        }
        Err(_) => String::new(),
    }
}

/// Docker's bar: `[=====>    ] n/total nodes`.
fn bar(n: usize, total: usize) -> String {
    let filled = (n.min(total) * BAR_WIDTH)
        .checked_div(total)
        .unwrap_or(BAR_WIDTH);
    format!(
        "[{}>{}] {n}/{total} nodes",
        "=".repeat(filled),
        " ".repeat(BAR_WIDTH - filled)
    )
}

fn status_lines(s: &RotationStatus) -> [Line; 2] {
    [
        Line {
            id: "  rotated TLS certificates".into(),
            action: format!(" {}", bar(s.tls_done, s.total)),
            progress: None,
        },
        Line {
            id: "  rotated CA certificates".into(),
            action: format!("  {}", bar(s.ca_done, s.total)),
            progress: None,
        },
    ]
}

/// Polls the cluster and the nodes until the rotation is over and every node trusts the
/// new root alone, drawing Docker's two progress bars (nothing with `quiet`).
async fn follow_rotation(c: &Client, quiet: bool) -> Result<()> {
    let tty = std::io::stdout().is_terminal();
    let mut out = Renderer::new(std::io::stdout(), tty, 200);
    let mut desired_printed = String::new();
    loop {
        let cluster = c.cluster().await?;
        let nodes = c.nodes().await?;
        let status = RotationStatus::of(&cluster, &nodes)?;
        if !quiet {
            if desired_printed.is_empty() {
                desired_printed = status.desired_root.clone();
                let _ = out.message(&format!(
                    "desired root digest: {}",
                    root_digest(&status.desired_root)
                ));
            }
            for l in status_lines(&status) {
                out.write(l);
            }
            let _ = out.flush();
        }
        if status.done() {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The cluster part of `swarm info` on a manager (Docker's Orchestration, Dispatcher and
/// CA Configuration lines).
/// The cluster settings of `swarm info` on a manager, as Docker orders them; the Raft section
/// is this manager's own timing (`info`, from its agent), which Docker gives as ticks.
pub fn cluster_info_text(cluster: &Cluster, info: &InfoResponse) -> String {
    let spec = cluster.spec.clone().unwrap_or_default();
    let history = spec
        .orchestration
        .map_or(0, |o| o.task_history_retention_limit);
    let heartbeat = spec.dispatcher.map_or(0, |d| d.heartbeat_period_ms);
    let ca = spec.ca_config.unwrap_or_default();
    let ms = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0));
    let rotating = cluster
        .root_ca
        .as_ref()
        .is_some_and(|r| r.root_rotation.is_some());
    let raft = if info.raft_heartbeat_ms > 0 {
        let d = Duration::from_millis;
        format!(
            " Raft:\n  Heartbeat: {:?}\n  Election Timeout: {:?} to {:?}\n",
            d(info.raft_heartbeat_ms),
            d(info.raft_election_timeout_min_ms),
            d(info.raft_election_timeout_max_ms)
        )
    } else {
        String::new()
    };
    format!(
        " Orchestration:\n  Task History Retention Limit: {history}\n{raft} \
         Dispatcher:\n  Heartbeat Period: {}\n \
         CA Configuration:\n  Expiry Duration: {}\n  Force Rotate: {}\n \
         Root Rotation In Progress: {rotating}\n",
        human_duration(ms(heartbeat)),
        human_duration(ms(ca.node_cert_expiry_ms)),
        ca.force_rotate,
    )
}

#[cfg(test)]
mod tests;
