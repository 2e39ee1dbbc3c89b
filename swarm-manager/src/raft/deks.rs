//! Every manager's Raft data key follows the cluster's autolock setting (SwarmKit's
//! `manager/deks.go`): the unlock key reaches each manager through Raft, in the cluster
//! object, and each re-wraps its own data key with it (autolock on, a new key after
//! `swarm unlock-key --rotate`) or with a new `raft.kek` (autolock off). The key the data
//! key is wrapped by now is published, so that the agent seals its TLS key with it too.

use std::path::PathBuf;

use proto::Cluster;
use tokio::sync::watch;

use super::encryption::{self, DataKey, UnlockKey};
use crate::store::Store;

/// The unlock key the managers' data keys should be wrapped by: `Some` while autolock is
/// on. `Err` for a stored key that does not parse (left as it is, and logged).
pub fn wanted(cluster: &Cluster) -> Result<Option<UnlockKey>, encryption::KeyError> {
    let on = cluster
        .spec
        .as_ref()
        .and_then(|s| s.encryption_config.as_ref())
        .is_some_and(|e| e.auto_lock_managers);
    if !on || cluster.unlock_key.is_empty() {
        return Ok(None);
    }
    UnlockKey::parse(&cluster.unlock_key).map(Some)
}

/// Re-wraps the data key of `dir` whenever the wanted unlock key differs from the one in
/// `current` (what it is wrapped by now), then publishes the new one there. Runs as long as
/// the manager does.
pub async fn follow_unlock_key(
    store: Store,
    dir: PathBuf,
    dek: DataKey,
    current: watch::Sender<Option<UnlockKey>>,
) {
    let mut changes = store.watch();
    loop {
        let wanted = store.read().cluster().map(wanted);
        match wanted {
            None => {}
            Some(Err(e)) => tracing::error!("the cluster's unlock key is unusable: {e}"),
            Some(Ok(wanted)) if wanted != *current.borrow() => {
                let (d, k, w) = (dir.clone(), dek.clone(), wanted.clone());
                let done =
                    tokio::task::spawn_blocking(move || encryption::rewrap(&d, &k, w.as_ref()))
                        .await;
                match done {
                    Ok(Ok(())) => {
                        tracing::info!(autolock = wanted.is_some(), "re-wrapped the Raft data key");
                        current.send_replace(wanted);
                    }
                    Ok(Err(e)) => tracing::error!("re-wrapping the Raft data key: {e}"),
                    Err(e) => tracing::error!("re-wrapping the Raft data key: {e}"),
                }
            }
            Some(Ok(_)) => {}
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}
