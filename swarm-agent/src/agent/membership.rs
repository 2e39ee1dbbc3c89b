//! Swarm membership: a new swarm (init), joining one (the root CA fetched unverified and
//! checked against the token's digest), leaving it, and resuming the membership kept in the
//! data root when the agent starts.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use proto::ca_client::CaClient;
use proto::node_ca_client::NodeCaClient;
use proto::{
    network_state_message, CaConfig, Cluster, ClusterSpec, DispatcherConfig,
    GetRootCaCertificateRequest, IssueNodeCertificateRequest, JoinTokens, ManagerStatus,
    NetworkStateMessage, Node, NodeAvailability, NodeRole, NodeSpec, NodeStatus,
    OrchestrationConfig, Reachability, RootCa as RootCaObj,
};
use rand::Rng;
use swarm_common::id::new_id;
use swarm_manager::ca::{self, RootCa};
use swarm_manager::manager::{Bootstrap, Credentials, UnlockKey};
use swarm_manager::tls;

use super::addresses::{advertise_addr, host_of, listen_addr, with_default_port};
use super::role::role_name;
use super::Agent;
use crate::state::NodeState;

pub const DEFAULT_CERT_EXPIRY: Duration = Duration::from_secs(90 * 24 * 3600);

pub struct InitOptions {
    pub advertise_addr: String,
    pub listen_addr: String,
    pub task_history_limit: i64,
    pub dispatcher_heartbeat: Duration,
    pub cert_expiry: Duration,
    pub availability: NodeAvailability,
    /// Pools network subnets are carved from; empty = 10.0.0.0/8.
    pub default_addr_pool: Vec<String>,
    /// Prefix length of carved subnets; 0 = 24.
    pub subnet_size: u32,
    /// VXLAN UDP port; 0 = 4789.
    pub vxlan_udp_port: u32,
    /// `--force-new-cluster`: on a manager, a new one-manager cluster from its Raft state
    /// (see [`Agent::force_new_cluster`]); on a node in no swarm, a plain init.
    pub force_new_cluster: bool,
    /// `--autolock`: the cluster starts with an unlock key (returned by `init`).
    pub autolock: bool,
}

pub struct JoinOptions {
    pub remote: String,
    pub token: String,
    pub advertise_addr: String,
    pub listen_addr: String,
    pub availability: NodeAvailability,
}

impl Agent {
    /// Resumes the membership stored in the data root, if any.
    pub async fn resume(self: &Arc<Self>) -> anyhow::Result<()> {
        let Some((state, creds)) = self.paths.load()? else {
            return Ok(());
        };
        tracing::info!(node = %state.node_id, role = %state.role, "resuming swarm membership");
        let mut inner = self.inner.lock().await;
        if state.is_manager() && self.stored_locked(&creds)? {
            tracing::warn!(node = %state.node_id, "this manager is locked (autolock): it starts once `swarm unlock` gives the unlock key");
            inner.state = Some(state.clone());
            inner.locked = Some((state, creds));
            self.publish(&inner);
            return Ok(());
        }
        if state.is_manager() {
            let m = self
                .start_manager(&state, &creds, Bootstrap::Restart, None)
                .await?;
            inner.manager = Some(m);
        }
        inner.state = Some(state);
        inner.creds = Some(creds);
        self.start_background(&mut inner);
        self.publish(&inner);
        Ok(())
    }

    /// `swarm init`: the node id, the worker token, the manager address and, with
    /// `--autolock`, the unlock key.
    pub async fn init(
        self: &Arc<Self>,
        opts: InitOptions,
    ) -> anyhow::Result<(String, String, String, String)> {
        let mut inner = self.inner.lock().await;
        if inner.state.is_some() {
            if opts.force_new_cluster {
                return self.force_new_cluster(&mut inner, &opts).await;
            }
            bail!(already_in_swarm());
        }
        let listen = listen_addr(&opts.listen_addr)?;
        let advertise = advertise_addr(&opts.advertise_addr, listen)?;
        let cluster_id = new_id();
        let node_id = new_id();
        let raft_id = random_raft_id();
        let root = RootCa::generate()?;
        let (key, csr) = ca::new_key_and_csr()?;
        let cert = root.sign_node_cert(
            &csr,
            &node_id,
            NodeRole::Manager,
            &cluster_id,
            opts.cert_expiry,
        )?;
        let worker_token = ca::generate_join_token(&root.cert_pem)?;
        let manager_token = ca::generate_join_token(&root.cert_pem)?;
        let unlock_key = if opts.autolock {
            UnlockKey::generate().human()
        } else {
            String::new()
        };
        let cluster = Cluster {
            id: cluster_id.clone(),
            meta: None,
            spec: Some(ClusterSpec {
                name: "default".into(),
                orchestration: Some(OrchestrationConfig {
                    task_history_retention_limit: opts.task_history_limit,
                }),
                dispatcher: Some(DispatcherConfig {
                    heartbeat_period_ms: opts.dispatcher_heartbeat.as_millis() as i64,
                }),
                ca_config: Some(CaConfig {
                    node_cert_expiry_ms: opts.cert_expiry.as_millis() as i64,
                    ..Default::default()
                }),
                encryption_config: Some(proto::EncryptionConfig {
                    auto_lock_managers: opts.autolock,
                }),
            }),
            root_ca: Some(RootCaObj {
                ca_key: root.key_pem.clone(),
                ca_cert: root.cert_pem.clone(),
                ca_cert_hash: root.digest(),
                join_tokens: Some(JoinTokens {
                    worker: worker_token.clone(),
                    manager: manager_token,
                }),
                ..Default::default()
            }),
            default_addr_pool: opts.default_addr_pool.clone(),
            subnet_size: opts.subnet_size,
            vxlan_udp_port: opts.vxlan_udp_port,
            removed_nodes: vec![],
            unlock_key: unlock_key.clone(),
        };
        let node = Node {
            id: node_id.clone(),
            meta: None,
            spec: Some(NodeSpec {
                labels: Default::default(),
                desired_role: NodeRole::Manager as i32,
                availability: opts.availability as i32,
            }),
            description: Some(proto::NodeDescription {
                tls_info: Some(tls_info_of_root(&root)?),
                ..self.description()
            }),
            status: Some(NodeStatus {
                state: proto::NodeState::Unknown as i32,
                message: String::new(),
                addr: host_of(&advertise),
            }),
            manager_status: Some(ManagerStatus {
                raft_id,
                addr: advertise.clone(),
                leader: true,
                reachability: Reachability::Reachable as i32,
            }),
            role: NodeRole::Manager as i32,
            attachments: vec![],
            port_conflicts: vec![],
        };
        let creds = Credentials {
            cert_pem: cert,
            key_pem: key,
            root_ca_pem: root.cert_pem.clone(),
        };
        let state = NodeState {
            node_id: node_id.clone(),
            cluster_id,
            role: "manager".into(),
            raft_id,
            listen_addr: listen.to_string(),
            advertise_addr: advertise.clone(),
            managers: vec![advertise.clone()],
        };
        self.paths.wipe()?;
        let manager = self
            .start_manager(
                &state,
                &creds,
                Bootstrap::NewCluster {
                    cluster: Box::new(cluster),
                    node: Box::new(node),
                },
                None,
            )
            .await?;
        // Saved only once the cluster exists: a failed init leaves no half membership.
        // (Sealed once the manager wrapped its data key with the unlock key: `seal_tls_key`.)
        let seal = manager.unlock_key().borrow().clone();
        self.paths.save_credentials(&creds, seal.as_ref())?;
        self.paths.save_state(&state)?;
        inner.manager = Some(manager);
        inner.state = Some(state);
        inner.creds = Some(creds);
        self.start_background(&mut inner);
        self.publish(&inner);
        Ok((node_id, worker_token, advertise, unlock_key))
    }

    /// `swarm init --force-new-cluster` on a node in a swarm (Docker's rules): only a
    /// manager can; its manager restarts as the only member of a new Raft membership made
    /// from its own state (same cluster, objects, CA and tokens), on the addresses given now.
    /// The other managers are no longer members; new ones join with the manager token.
    async fn force_new_cluster(
        self: &Arc<Self>,
        inner: &mut super::Inner,
        opts: &InitOptions,
    ) -> anyhow::Result<(String, String, String, String)> {
        if inner.locked.is_some() {
            bail!(swarm_manager::manager::SWARM_LOCKED);
        }
        let (Some(state), Some(creds)) = (inner.state.clone(), inner.creds.clone()) else {
            bail!("this node's swarm membership is incomplete: leave the swarm (swarm leave --force) and init or join again");
        };
        if !state.is_manager() {
            bail!(
                "This node is not a swarm manager: --force-new-cluster starts a new cluster from a manager's state. Run it on a manager of the swarm"
            );
        }
        let listen = listen_addr(&opts.listen_addr)?;
        let advertise = advertise_addr(&opts.advertise_addr, listen)?;
        let unlock = super::seal_key(inner);
        if let Some(m) = inner.manager.take() {
            m.shutdown().await;
        }
        let forced = NodeState {
            listen_addr: listen.to_string(),
            advertise_addr: advertise.clone(),
            managers: vec![advertise.clone()],
            ..state.clone()
        };
        let manager = match self
            .start_manager(&forced, &creds, Bootstrap::ForceNewCluster, unlock.clone())
            .await
        {
            Ok(m) => m,
            Err(e) => {
                // Back to the manager this node had (the state on disk is whole either way:
                // the rewrite is one transaction).
                match self
                    .start_manager(&state, &creds, Bootstrap::Restart, unlock)
                    .await
                {
                    Ok(m) => inner.manager = Some(m),
                    Err(e) => tracing::error!(
                        "restarting the manager after a failed --force-new-cluster: {e:#}"
                    ),
                }
                self.publish(inner);
                return Err(e);
            }
        };
        self.paths.save_state(&forced)?;
        let worker_token = manager
            .store
            .read()
            .cluster()
            .and_then(|c| c.root_ca.as_ref())
            .and_then(|r| r.join_tokens.as_ref())
            .map(|t| t.worker.clone())
            .unwrap_or_default();
        inner.manager = Some(manager);
        inner.state = Some(forced);
        self.start_background(inner);
        self.publish(inner);
        tracing::warn!(node = %state.node_id, "forced a new cluster from this manager's state");
        Ok((state.node_id, worker_token, advertise, String::new()))
    }

    pub async fn join(self: &Arc<Self>, opts: JoinOptions) -> anyhow::Result<(String, NodeRole)> {
        let mut inner = self.inner.lock().await;
        if inner.state.is_some() {
            bail!(already_in_swarm());
        }
        let token = ca::parse_join_token(opts.token.trim())?;
        let remote = with_default_port(&opts.remote);
        let listen = listen_addr(&opts.listen_addr)?;
        let advertise = advertise_addr(&opts.advertise_addr, listen)?;

        // The root CA comes over an unverified connection; the token's digest verifies it.
        let insecure = tls::channel(&remote, tls::insecure_client_config());
        let root_pem = CaClient::new(insecure)
            .get_root_ca_certificate(GetRootCaCertificateRequest {})
            .await
            .map_err(|s| anyhow!("could not reach a manager at {remote}: {}", s.message()))?
            .into_inner()
            .certificate;
        if !ca::token_matches_ca(&token, &root_pem) {
            bail!(
                "the manager at {remote} presented a root CA that does not match the fingerprint in the join token: check the token and the address"
            );
        }
        let (key, csr) = ca::new_key_and_csr()?;
        let secure = tls::channel(&remote, tls::client_config(&root_pem, None)?);
        let resp = NodeCaClient::new(secure)
            .issue_node_certificate(IssueNodeCertificateRequest {
                csr,
                token: opts.token.trim().to_string(),
                advertise_addr: advertise.clone(),
                description: Some(self.description()),
            })
            .await
            .map_err(|s| anyhow!("{}", s.message()))?
            .into_inner();
        let role = NodeRole::try_from(resp.role).unwrap_or(NodeRole::Worker);
        let creds = Credentials {
            cert_pem: resp.certificate,
            key_pem: key,
            root_ca_pem: resp.root_ca,
        };
        let mut state = NodeState {
            node_id: resp.node_id.clone(),
            cluster_id: resp.cluster_id,
            role: role_name(role).into(),
            raft_id: 0,
            listen_addr: listen.to_string(),
            advertise_addr: advertise,
            managers: vec![remote.clone()],
        };
        self.paths.wipe()?;
        self.paths.save_credentials(&creds, None)?;
        if role == NodeRole::Manager {
            state.raft_id = random_raft_id();
            self.paths.save_state(&state)?;
            let m = self
                .start_manager(&state, &creds, Bootstrap::Join { remote }, None)
                .await?;
            inner.manager = Some(m);
        } else {
            self.paths.save_state(&state)?;
        }
        if opts.availability != NodeAvailability::Active {
            tracing::warn!(
                "--availability on join is applied by `swarm node update` once the node is up"
            );
        }
        inner.state = Some(state);
        inner.creds = Some(creds);
        self.start_background(&mut inner);
        self.publish(&inner);
        Ok((resp.node_id, role))
    }

    pub async fn leave(self: &Arc<Self>, force: bool) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().await;
        let Some(state) = inner.state.clone() else {
            bail!("This node is not part of a swarm");
        };
        if state.is_manager() && !force {
            bail!(
                "You are attempting to leave the swarm on a node that is participating as a manager. Removing this node may make the swarm lose its quorum, and removing the last manager erases all current state of the swarm. Use `--force` to ignore this message."
            );
        }
        if let Some(h) = inner.session.take() {
            h.abort();
        }
        if let Some(h) = inner.renewal.take() {
            h.abort();
        }
        self.worker.stop_all();
        inner.locked = None;
        if let Some(m) = inner.manager.take() {
            match tokio::time::timeout(Duration::from_secs(5), m.leave_raft()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("leaving the raft cluster: {e}"),
                Err(_) => tracing::warn!("leaving the raft cluster timed out"),
            }
            m.shutdown().await;
        }
        self.paths.wipe()?;
        inner.state = None;
        inner.creds = None;
        // Out of the swarm: no network state is the managers' any more.
        self.network.apply(NetworkStateMessage {
            r#type: network_state_message::Type::Complete as i32,
            changes: Vec::new(),
            ..Default::default()
        });
        self.publish(&inner);
        Ok(())
    }
}

fn already_in_swarm() -> &'static str {
    "This node is already part of a swarm. Use \"swarm leave\" to leave this swarm and join another one."
}

pub(super) fn random_raft_id() -> u64 {
    rand::rng().random_range(1..u64::MAX)
}

/// The TLS information of a node holding a certificate `root` issued (what the CA records
/// for the nodes it certifies; root rotation follows it).
fn tls_info_of_root(root: &ca::RootCa) -> anyhow::Result<proto::NodeTlsInfo> {
    let issuer = ca::issuer_info_of_ca(&root.cert_pem)?;
    Ok(proto::NodeTlsInfo {
        trust_root: root.cert_pem.clone(),
        cert_issuer_subject: issuer.subject,
        cert_issuer_public_key: issuer.public_key,
    })
}
