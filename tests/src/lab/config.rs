//! What a lab is: its name, its managers and workers, the directory it lives in and the
//! binaries it runs, checked before anything is made; and the addresses it gives out (node i
//! has `10.77.0.<i>`, the underlay bridge and its registry `10.77.0.254`).

use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::images;

/// The underlay bridge's address (and the registry's).
pub const UNDERLAY_IP: &str = "10.77.0.254";
/// The registry's port on [`UNDERLAY_IP`].
pub const REGISTRY_PORT: u16 = 5000;
/// Node i has the address `10.77.0.<i>`.
pub const NODE_NET: &str = "10.77.0";
const MAX_NODES: usize = 253;
/// Unix socket paths must fit in sun_path (108 bytes).
const MAX_SOCKET_PATH: usize = 100;

#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Short prefix of the namespaces and cgroups (`[a-z][a-z0-9]{0,7}`), e.g. "swl".
    pub name: String,
    pub managers: usize,
    pub workers: usize,
    /// Directory of everything the lab writes (created; removed by `down`).
    pub root: PathBuf,
    /// Where `swarm-agent` and `swarm` are.
    pub bin_dir: PathBuf,
    /// Manager port on every node.
    pub port: u16,
    /// The static whoami binary the `whoami` image is made of.
    pub whoami: PathBuf,
    /// A lab that lives only as long as the process that made it (tests): once that process
    /// is gone, [`Lab::sweep_stale`](super::Lab::sweep_stale) removes it.
    pub temporary: bool,
    /// Agent-container mode: every node's agent runs as the agent image's container in the
    /// node's containerd (built from `bin_dir`'s binaries), not as a process.
    pub agent_container: bool,
}

/// `SWARM_LAB_AGENT=container` makes the test labs run their agents as containers.
pub const AGENT_MODE_ENV: &str = "SWARM_LAB_AGENT";

impl LabConfig {
    pub fn new(
        name: &str,
        managers: usize,
        workers: usize,
        root: impl Into<PathBuf>,
        bin_dir: impl Into<PathBuf>,
    ) -> LabConfig {
        let bin_dir = bin_dir.into();
        LabConfig {
            name: name.to_string(),
            managers,
            workers,
            root: root.into(),
            whoami: default_whoami(&bin_dir),
            bin_dir,
            port: 2377,
            temporary: false,
            agent_container: false,
        }
    }

    pub fn nodes(&self) -> usize {
        self.managers + self.workers
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        validate_name(&self.name)?;
        if self.managers == 0 {
            bail!("a lab needs at least one manager (managers = 0)");
        }
        if self.nodes() > MAX_NODES {
            bail!(
                "{} nodes do not fit in {NODE_NET}.0/24: at most {MAX_NODES}",
                self.nodes()
            );
        }
        if !self.root.is_absolute() {
            bail!(
                "the lab root {} must be an absolute path",
                self.root.display()
            );
        }
        let longest = self.root.join(format!(
            "node{}/containerd/containerd.sock.ttrpc",
            self.nodes()
        ));
        if longest.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "the lab root {} is too long: socket paths like {} exceed {MAX_SOCKET_PATH} bytes; use a short root such as /tmp/swl",
                self.root.display(),
                longest.display()
            );
        }
        Ok(())
    }
}

pub(super) fn test_root(name: &str) -> PathBuf {
    PathBuf::from("/tmp").join(format!("swl-{name}"))
}

/// `<target>/x86_64-unknown-linux-musl/release/whoami` next to `bin_dir` (`<target>/debug`).
fn default_whoami(bin_dir: &Path) -> PathBuf {
    let from_bin = bin_dir.parent().map(images::whoami_path);
    match from_bin {
        Some(p) if p.is_file() => p,
        _ => images::whoami_path(&images::workspace_root().join("target")),
    }
}

pub(super) fn random_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    let mut v = h.finish();
    (0..4)
        .map(|_| {
            let c = (b'a' + (v % 26) as u8) as char;
            v /= 26;
            c
        })
        .collect()
}

pub fn validate_name(name: &str) -> anyhow::Result<()> {
    let ok = (1..=8).contains(&name.len())
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !ok {
        bail!("invalid lab name {name:?}: use 1 to 8 lowercase letters or digits, starting with a letter");
    }
    Ok(())
}

/// The registry's `host:port` on the underlay.
pub(super) fn registry_addr() -> String {
    format!("{UNDERLAY_IP}:{REGISTRY_PORT}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_lowercase_and_start_with_a_letter() {
        for ok in ["swl", "a", "abcd1234", "t9"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "1ab", "Abc", "a-b", "abcdefghi", "a/b", "a b"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        for _ in 0..20 {
            let n = random_name();
            assert_eq!(n.len(), 4);
            validate_name(&n).unwrap();
        }
    }

    #[test]
    fn configs_refuse_long_roots_no_managers_and_too_many_nodes() {
        let ok = LabConfig::new("swl", 3, 2, "/run/swarm-lab", "/x/target/debug");
        ok.validate().unwrap();
        assert_eq!(ok.port, 2377);
        assert_eq!(
            ok.whoami,
            images::whoami_path(&images::workspace_root().join("target"))
        );
        let mut c = ok.clone();
        c.managers = 0;
        assert!(format!("{:#}", c.validate().unwrap_err()).contains("manager"));
        let mut c = ok.clone();
        c.workers = 300;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.root = PathBuf::from(format!("/tmp/{}", "x".repeat(80)));
        assert!(format!("{:#}", c.validate().unwrap_err()).contains("too long"));
        let mut c = ok;
        c.root = PathBuf::from("relative");
        assert!(c.validate().is_err());
    }
}
