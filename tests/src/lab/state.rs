//! `<root>/lab.json`: the lab's description, written when it is made, so that a later process
//! can attach to it ([`read`]) and a sweep or a teardown can tell whose root it is ([`raw`]).

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::config::{registry_addr, validate_name, LabConfig};

/// The lab's description under its root.
pub const STATE_FILE: &str = "lab.json";

/// Writes `<root>/lab.json` for `c`, owned by this process.
pub(super) fn write(c: &LabConfig) -> anyhow::Result<()> {
    let v = serde_json::json!({
        "name": c.name,
        "managers": c.managers,
        "workers": c.workers,
        "root": c.root.to_string_lossy(),
        "bin_dir": c.bin_dir.to_string_lossy(),
        "port": c.port,
        "whoami": c.whoami.to_string_lossy(),
        "registry": registry_addr(),
        "temporary": c.temporary,
        "agent_container": c.agent_container,
        "owner_pid": std::process::id(),
    });
    let path = c.root.join(STATE_FILE);
    std::fs::write(&path, format!("{v:#}\n")).with_context(|| format!("writing {}", path.display()))
}

/// The configuration `<root>/lab.json` describes.
pub(super) fn read(root: &Path) -> anyhow::Result<LabConfig> {
    let path = root.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (is a lab up there? start one with `cargo xtask lab up`)",
            path.display()
        )
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let field = |k: &str| {
        v.get(k)
            .ok_or_else(|| anyhow::anyhow!("{} has no {k:?}", path.display()))
    };
    let s = |k: &str| -> anyhow::Result<String> {
        Ok(field(k)?
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("{k:?} in {} is not a string", path.display()))?
            .to_string())
    };
    let n = |k: &str| -> anyhow::Result<u64> {
        field(k)?
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("{k:?} in {} is not a number", path.display()))
    };
    let mut cfg = LabConfig::new(
        &s("name")?,
        n("managers")? as usize,
        n("workers")? as usize,
        s("root")?,
        s("bin_dir")?,
    );
    cfg.port = u16::try_from(n("port")?).context("port in lab.json")?;
    cfg.whoami = PathBuf::from(s("whoami")?);
    cfg.temporary = v.get("temporary").and_then(|t| t.as_bool()) == Some(true);
    cfg.agent_container = v.get("agent_container").and_then(|t| t.as_bool()) == Some(true);
    validate_name(&cfg.name)?;
    Ok(cfg)
}

/// `<root>/lab.json` as it is, when there is one and it parses.
pub(super) fn raw(root: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(root.join(STATE_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}
