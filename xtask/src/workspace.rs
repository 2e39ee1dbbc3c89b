//! Cargo in the workspace: where its root is, cargo run there, and this xtask run again as
//! the full build.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

/// Runs this same command again as the full xtask (`--features lab`: the lab, the images and
/// the benchmarks that need the daemon), after making sure everything that build needs is on
/// the machine. The light xtask that gets here compiles with stable Rust alone.
#[cfg(not(feature = "lab"))]
pub(crate) fn rerun_with_lab() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "bench") {
        crate::setup::ensure_for_bench()?;
    } else {
        crate::setup::ensure()?;
    }
    let mut cmd = vec![
        "run",
        "--quiet",
        "--package",
        "xtask",
        "--features",
        "lab",
        "--",
    ];
    cmd.extend(args.iter().map(String::as_str));
    cargo(&cmd)
}

/// The workspace root (xtask's parent directory).
pub(crate) fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Runs cargo (the one that started us, if any) in the workspace root.
pub(crate) fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&bin)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("starting {bin}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
