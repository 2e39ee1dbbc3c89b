//! What an agent keeps on disk under its data root: its swarm membership and certificates.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use swarm_manager::manager::{seal_pem, Credentials, UnlockKey};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeState {
    pub node_id: String,
    pub cluster_id: String,
    /// "manager" or "worker": the role of the current certificate.
    pub role: String,
    /// Raft id while this node is a manager.
    pub raft_id: u64,
    pub listen_addr: String,
    /// host:port other nodes reach this node's manager at.
    pub advertise_addr: String,
    /// Known manager addresses (host:port), refreshed from sessions.
    pub managers: Vec<String>,
}

impl NodeState {
    pub fn is_manager(&self) -> bool {
        self.role == "manager"
    }
}

pub struct Paths {
    root: PathBuf,
}

impl Paths {
    pub fn new(root: &Path) -> Self {
        Paths {
            root: root.to_path_buf(),
        }
    }
    pub fn state(&self) -> PathBuf {
        self.root.join("state.json")
    }
    pub fn certs(&self) -> PathBuf {
        self.root.join("certificates")
    }
    pub fn raft(&self) -> PathBuf {
        self.root.join("raft")
    }
    pub fn cert(&self) -> PathBuf {
        self.certs().join("swarm-node.crt")
    }
    pub fn key(&self) -> PathBuf {
        self.certs().join("swarm-node.key")
    }
    pub fn root_ca(&self) -> PathBuf {
        self.certs().join("swarm-root-ca.crt")
    }

    /// The membership and credentials kept in the data root; the key as stored (sealed by
    /// the unlock key under autolock: `swarm_manager::manager::open_pem`).
    pub fn load(&self) -> anyhow::Result<Option<(NodeState, Credentials)>> {
        let p = self.state();
        if !p.exists() {
            return Ok(None);
        }
        let state: NodeState = serde_json::from_slice(
            &std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| {
            format!(
                "{} is corrupt; remove the data root to start over",
                p.display()
            )
        })?;
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
        };
        let creds = Credentials {
            cert_pem: read(self.cert())?,
            key_pem: read(self.key())?,
            root_ca_pem: read(self.root_ca())?,
        };
        Ok(Some((state, creds)))
    }

    /// Creates the data root, or puts an existing one right: the root, its certificates
    /// and Raft directories 0700, the node key, certificates, state and Raft files 0600
    /// (the Raft database holds the root CA key and both join tokens). Task files (mounted
    /// into containers) keep their modes; the root's 0700 keeps other users out of them.
    pub fn secure(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let private = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("setting the mode of {} to {mode:o}", p.display()))
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .with_context(|| format!("creating the data root {}", self.root.display()))?;
        private(&self.root, 0o700)?;
        if self.state().exists() {
            private(&self.state(), 0o600)?;
        }
        for dir in [self.certs(), self.raft()] {
            if !dir.is_dir() {
                continue;
            }
            private(&dir, 0o700)?;
            let entries =
                std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
            for e in entries {
                let e = e.with_context(|| format!("reading {}", dir.display()))?;
                let ft = e.file_type()?;
                private(&e.path(), if ft.is_dir() { 0o700 } else { 0o600 })?;
            }
        }
        Ok(())
    }

    pub fn save_state(&self, state: &NodeState) -> anyhow::Result<()> {
        write_atomic(&self.state(), &serde_json::to_vec_pretty(state)?, 0o600)
    }

    /// Saves the node's certificate, roots and key; the key sealed by `seal` (a manager's
    /// unlock key under autolock), else in PEM.
    pub fn save_credentials(
        &self,
        creds: &Credentials,
        seal: Option<&UnlockKey>,
    ) -> anyhow::Result<()> {
        write_atomic(&self.root_ca(), creds.root_ca_pem.as_bytes(), 0o600)?;
        let key = match seal {
            Some(k) => seal_pem(k, &creds.key_pem),
            None => creds.key_pem.clone(),
        };
        write_atomic(&self.key(), key.as_bytes(), 0o600)?;
        write_atomic(&self.cert(), creds.cert_pem.as_bytes(), 0o600)
    }

    /// Forgets the swarm: state, certificates and raft data.
    pub fn wipe(&self) -> anyhow::Result<()> {
        for p in [self.state(), self.certs(), self.raft()] {
            if p.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else if p.exists() {
                std::fs::remove_file(&p)?;
            }
        }
        Ok(())
    }
}

/// Creates the directory (0700) if needed, then writes durably
/// ([`swarm_common::fs::write_durably`]).
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = path.parent().context("path without parent")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    swarm_common::fs::write_durably(path, data, mode)?;
    Ok(())
}
