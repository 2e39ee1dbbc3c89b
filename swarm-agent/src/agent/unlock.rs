//! Autolock on the node: a manager whose data key (and TLS key) is wrapped by the unlock
//! key stays locked after a restart (no Raft, no session, no tasks) until `swarm unlock`
//! gives the key; a wrong key is refused with Docker's message and changes nothing.

use std::sync::Arc;

use anyhow::bail;
use swarm_manager::manager::{
    is_locked, is_sealed_pem, open_pem, Bootstrap, Credentials, UnlockKey,
};

use super::Agent;

impl Agent {
    /// Whether the membership on disk is a locked manager's: its TLS key sealed, or its
    /// Raft data key wrapped by the unlock key.
    pub(super) fn stored_locked(&self, creds: &Credentials) -> anyhow::Result<bool> {
        Ok(is_sealed_pem(&creds.key_pem) || is_locked(&self.paths.raft())?)
    }

    /// `swarm unlock`: opens the TLS key and the Raft data key with `key` and starts the
    /// manager and the node's work, as a restart without autolock would have.
    pub async fn unlock(self: &Arc<Self>, key: &str) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().await;
        let Some((state, mut creds)) = inner.locked.clone() else {
            if inner.state.is_none() {
                bail!("This node is not part of a swarm");
            }
            bail!("swarm is not locked");
        };
        let key = UnlockKey::parse(key)?;
        creds.key_pem = open_pem(Some(&key), &creds.key_pem)?;
        // The data key is opened (and a wrong key refused) before anything starts.
        let m = self
            .start_manager(&state, &creds, Bootstrap::Restart, Some(key))
            .await?;
        tracing::info!(node = %state.node_id, "unlocked: the manager starts");
        inner.manager = Some(m);
        inner.locked = None;
        inner.creds = Some(creds);
        self.start_background(&mut inner);
        self.publish(&inner);
        Ok(())
    }
}
