//! Certificate renewal: a fresh node certificate from any manager, at a random point between
//! 50 % and 80 % of the current one's life, and at once when the roots the managers say nodes
//! trust differ from the node's own (a root rotation: the new certificate comes from the new
//! root and with the new roots).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::anyhow;
use proto::node_ca_client::NodeCaClient;
use proto::{IssueNodeCertificateRequest, NodeDescription};
use swarm_manager::ca;
use swarm_manager::manager::Credentials;
use swarm_manager::tls;

use super::{seal_key, Agent};
use crate::state::NodeState;

/// Gets a fresh certificate for this node (same key type, new key) from any manager.
pub(super) async fn renew_certificate(
    state: &NodeState,
    creds: &Credentials,
    description: NodeDescription,
) -> anyhow::Result<Credentials> {
    let cfg = tls::client_config(&creds.root_ca_pem, Some((&creds.cert_pem, &creds.key_pem)))?;
    let (key, csr) = ca::new_key_and_csr()?;
    let mut last = anyhow!("no manager known");
    // Our own manager last: while our role changes it may not know the leader.
    let mut managers = state.managers.clone();
    managers.sort_by_key(|a| *a == state.advertise_addr);
    for addr in &managers {
        let ch = tls::channel(addr, cfg.clone());
        match NodeCaClient::new(ch)
            .issue_node_certificate(IssueNodeCertificateRequest {
                csr: csr.clone(),
                token: String::new(),
                advertise_addr: state.advertise_addr.clone(),
                description: Some(description.clone()),
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                return Ok(Credentials {
                    cert_pem: r.certificate,
                    key_pem: key,
                    root_ca_pem: if r.root_ca.is_empty() {
                        creds.root_ca_pem.clone()
                    } else {
                        r.root_ca
                    },
                });
            }
            Err(s) => last = anyhow!("renewing the certificate through {addr}: {}", s.message()),
        }
    }
    Err(last)
}

/// Renews the node certificate at a random point between 50 % and 80 % of its life, or
/// when the swarm's roots changed.
pub(super) async fn renewal_loop(agent: Arc<Agent>) {
    loop {
        let Some((_, creds)) = agent.current().await else {
            return;
        };
        let wait = match ca::parse_node_cert_pem(&creds.cert_pem) {
            Ok(id) => ca::renewal_time(&id)
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
            Err(e) => {
                tracing::warn!("cannot read the node certificate: {e}");
                Duration::from_secs(60)
            }
        };
        if !agent.roots_changed(&creds) {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = agent.renew_now.notified() => {}
            }
        }
        // What the node holds now: a role change may have replaced it while we waited.
        let Some((state, creds)) = agent.current().await else {
            return;
        };
        match renew_certificate(&state, &creds, agent.description()).await {
            Ok(new) => {
                let mut inner = agent.inner.lock().await;
                if let Err(e) = agent
                    .paths
                    .save_credentials(&new, seal_key(&inner).as_ref())
                {
                    tracing::warn!("saving the renewed certificate: {e}");
                }
                if let Some(m) = &inner.manager {
                    if let Err(e) = m.update_credentials(&new) {
                        tracing::warn!("loading the renewed certificate: {e}");
                    }
                }
                inner.creds = Some(new);
                tracing::info!("node certificate renewed");
            }
            Err(e) => {
                tracing::warn!("certificate renewal failed, retrying in 30 s: {e:#}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                    _ = agent.renew_now.notified() => {}
                }
            }
        }
        // Answered with other roots than the session's (the rotation moved on meanwhile):
        // the next round renews again, after a pause.
        if agent.roots_changed_now().await {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

impl Agent {
    /// The roots the managers announce differ from the ones in `creds`.
    fn roots_changed(&self, creds: &Credentials) -> bool {
        let session = self.session_root.lock().unwrap_or_else(|e| e.into_inner());
        !session.is_empty() && *session != creds.root_ca_pem
    }

    async fn roots_changed_now(&self) -> bool {
        match self.current().await {
            Some((_, creds)) => self.roots_changed(&creds),
            None => false,
        }
    }
}
