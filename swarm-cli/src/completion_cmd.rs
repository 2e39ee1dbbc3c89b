//! `swarm completion bash|zsh|fish|powershell|elvish` (shell completion scripts, as
//! `docker completion` prints them) and the hidden `swarm man-pages OUTDIR` (one roff page
//! per command: `swarm.1`, `swarm-service-ls.1`, ...). Both are generated from the CLI's
//! clap definition, so they cannot drift from the flags the CLI takes.

use std::path::PathBuf;

use clap::Args;
use clap_complete::Shell;

use crate::error::{CliError, Result};

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to complete in
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write the pages to (created if missing)
    #[arg(value_name = "OUTDIR")]
    pub out_dir: PathBuf,
}

/// The completion script of `shell` for `cmd`.
pub fn completion(mut cmd: clap::Command, shell: Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "swarm", &mut out);
    out
}

/// Writes the man pages of `cmd` and of every visible subcommand to `dir`.
pub fn man_pages(cmd: clap::Command, dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .and_then(|_| clap_mangen::generate_to(cmd, dir))
        .map_err(|e| CliError::msg(format!("cannot write man pages to {}: {e}", dir.display())))
}
