//! The node's role: following the managers when they promote or demote this node (a
//! certificate with the new role, then the in-process manager started or stopped).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use proto::NodeRole;
use swarm_manager::ca;
use swarm_manager::manager::Bootstrap;

use super::membership::random_raft_id;
use super::renewal::renew_certificate;
use super::{seal_key, Agent};

impl Agent {
    /// Changes the node's role to `want`, retrying until it is done or the managers want
    /// another role (a failed attempt is not followed by a new session message).
    pub(super) async fn follow_role(self: Arc<Self>, want: NodeRole) {
        loop {
            match self.clone().change_role(want).await {
                Ok(()) => return,
                Err(e) => tracing::warn!("changing role to {}: {e:#}; retrying", role_name(want)),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let still = *self.wanted_role.lock().unwrap_or_else(|e| e.into_inner()) == Some(want);
            if !still {
                return;
            }
        }
    }

    async fn change_role(self: Arc<Self>, want: NodeRole) -> anyhow::Result<()> {
        let _one = self.role_change.lock().await;
        let mut inner = self.inner.lock().await;
        let Some(mut state) = inner.state.clone() else {
            return Ok(());
        };
        if state.is_manager() == (want == NodeRole::Manager) {
            return Ok(());
        }
        let creds = inner.creds.clone().context("no credentials")?;
        let new = renew_certificate(&state, &creds, self.description()).await?;
        let id = ca::parse_node_cert_pem(&new.cert_pem)?;
        if id.role != want {
            bail!("the CA has not issued the new role yet");
        }
        self.paths
            .save_credentials(&new, seal_key(&inner).as_ref())?;
        inner.creds = Some(new.clone());
        if want == NodeRole::Manager {
            tracing::info!("promoted: starting the manager");
            state.role = "manager".into();
            state.raft_id = random_raft_id();
            self.paths.save_state(&state)?;
            let remote = state
                .managers
                .iter()
                .find(|a| **a != state.advertise_addr)
                .cloned()
                .context("no other manager known to join")?;
            let _ = std::fs::remove_dir_all(self.paths.raft());
            let m = self
                .start_manager(&state, &new, Bootstrap::Join { remote }, None)
                .await?;
            inner.manager = Some(m);
        } else {
            tracing::info!("demoted: stopping the manager");
            if let Some(m) = inner.manager.take() {
                m.shutdown().await;
            }
            // A worker has no unlock key: its TLS key is kept in PEM again.
            self.paths.save_credentials(&new, None)?;
            let _ = std::fs::remove_dir_all(self.paths.raft());
            state.role = "worker".into();
            state.raft_id = 0;
            self.paths.save_state(&state)?;
        }
        inner.state = Some(state);
        self.publish(&inner);
        Ok(())
    }
}

pub fn role_name(r: NodeRole) -> &'static str {
    match r {
        NodeRole::Manager => "manager",
        NodeRole::Worker => "worker",
    }
}
