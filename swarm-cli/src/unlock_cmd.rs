//! Autolock: `swarm unlock` (the key from a prompt or stdin) and `swarm unlock-key
//! [--rotate] [-q]`, and Docker's text that shows an unlock key (also after `init
//! --autolock` and `update --autolock=true`).

use std::io::{BufRead, IsTerminal, Write};

use clap::Args;
use proto::*;

use crate::client::Client;
use crate::error::{CliError, Result};

#[derive(Debug, Args)]
pub struct UnlockArgs {}

#[derive(Debug, Args)]
pub struct UnlockKeyArgs {
    /// Rotate unlock key
    #[arg(long)]
    pub rotate: bool,
    /// Only display token
    #[arg(short, long)]
    pub quiet: bool,
}

/// Docker's words around an unlock key.
pub fn unlock_text(key: &str) -> String {
    format!(
        "To unlock a swarm manager after it restarts, run the `swarm unlock`\ncommand and provide the following key:\n\n    {key}\n\nPlease remember to store this key in a password manager, since without it you\nwill not be able to restart the manager.\n"
    )
}

/// The unlock key, or Docker's errors: none set, or the daemon's answer wrapped.
pub async fn fetch_unlock_key(c: &Client) -> Result<String> {
    let key = c
        .control
        .clone()
        .get_unlock_key(GetUnlockKeyRequest {})
        .await
        .map_err(|s| CliError::raw(format!("could not fetch unlock key: {}", c.err(s))))?
        .into_inner()
        .unlock_key;
    if key.is_empty() {
        return Err(CliError::msg("no unlock key is set"));
    }
    Ok(key)
}

pub async fn unlock_key(c: &Client, a: UnlockKeyArgs) -> Result<()> {
    if a.rotate {
        let cluster = c.cluster().await?;
        let on = cluster
            .spec
            .as_ref()
            .and_then(|s| s.encryption_config.as_ref())
            .is_some_and(|e| e.auto_lock_managers);
        if !on {
            return Err(CliError::msg(
                "cannot rotate because autolock is not turned on",
            ));
        }
        c.control
            .clone()
            .update_cluster(UpdateClusterRequest {
                cluster_version: cluster.meta.as_ref().map_or(0, |m| m.version),
                spec: cluster.spec.clone(),
                rotate_manager_unlock_key: true,
                ..Default::default()
            })
            .await
            .map_err(|s| c.err(s))?;
        if !a.quiet {
            print!("Successfully rotated manager unlock key.\n\n");
        }
    }
    let key = fetch_unlock_key(c).await?;
    if a.quiet {
        println!("{key}");
    } else {
        print!("{}", unlock_text(&key));
    }
    Ok(())
}

/// The key typed at a prompt (not echoed on a terminal) or the first line of stdin.
fn read_key(prompt: &str) -> Result<String> {
    print!("{prompt}");
    std::io::stdout().flush().ok();
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let echo = tty.then(|| set_echo(false)).flatten();
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(saved) = echo {
        restore_echo(saved);
        println!();
    }
    read.map_err(|e| CliError::msg(format!("reading the unlock key: {e}")))?;
    Ok(line.trim().to_string())
}

/// Turns the terminal's echo off; the settings to restore.
fn set_echo(on: bool) -> Option<libc::termios> {
    // SAFETY: tcgetattr/tcsetattr on stdin with a zeroed termios they fill in.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 {
            return None;
        }
        let saved = t;
        if on {
            t.c_lflag |= libc::ECHO;
        } else {
            t.c_lflag &= !libc::ECHO;
        }
        (libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) == 0).then_some(saved)
    }
}

fn restore_echo(saved: libc::termios) {
    // SAFETY: the settings tcgetattr returned for stdin.
    unsafe {
        libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &saved);
    }
}

/// `swarm unlock`: only a locked node asks for the key (Docker's order and errors).
pub async fn unlock(c: &Client, _a: UnlockArgs) -> Result<()> {
    let info = c.info().await?;
    match info.local_node_state.as_str() {
        "inactive" => return Err(CliError::msg("This node is not part of a swarm")),
        "locked" => {}
        _ => return Err(CliError::msg("swarm is not locked")),
    }
    let key = read_key("Please enter unlock key: ")?;
    c.local
        .clone()
        .unlock(UnlockRequest { unlock_key: key })
        .await
        .map_err(|s| c.err(s))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlock_text_matches_docker() {
        assert_eq!(
            unlock_text("SWMKEY-1-abc"),
            "To unlock a swarm manager after it restarts, run the `swarm unlock`\n\
             command and provide the following key:\n\n    SWMKEY-1-abc\n\n\
             Please remember to store this key in a password manager, since without it you\n\
             will not be able to restart the manager.\n"
        );
    }
}
