//! Snapshots by log size: openraft's policy counts entries (`SNAPSHOT_EVERY_LOGS`); this
//! loop also asks for a snapshot once the entries appended since the last one take
//! `every` bytes ([`LogBytes`]), after which openraft purges the log it covers.

use std::time::Duration;

use super::storage::LogBytes;
use super::Raft;

/// How often the size is looked at.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Runs until Raft shuts down.
pub async fn snapshot_by_size(raft: Raft, bytes: LogBytes, every: u64) {
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let size = bytes.get();
        if size < every {
            continue;
        }
        tracing::info!(
            bytes = size,
            limit = every,
            "the Raft log grew past its size limit since the last snapshot: building one"
        );
        if let Err(e) = raft.trigger().snapshot().await {
            tracing::debug!("raft stopped: {e}");
            return;
        }
        // Give the build time to finish (it resets the count) before asking again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while bytes.get() >= every && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(CHECK_EVERY).await;
        }
    }
}
