//! `swarm login [SERVER]` and `swarm logout [SERVER]`, as `docker login`/`logout`: the login is
//! checked against the registry (HTTPS, or plain HTTP for an insecure one) before it is stored
//! in Docker's `config.json` (see [`crate::registry_auth`]).

use std::io::{BufRead, IsTerminal, Write};

use clap::Args;
use swarm_oci::{Credentials, Registry};

use crate::error::{CliError, Result};
use crate::registry_auth;

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Username
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Password (visible in the process list: prefer --password-stdin)
    #[arg(short = 'p', long)]
    pub password: Option<String>,
    /// Take the password from stdin
    #[arg(long)]
    pub password_stdin: bool,
    /// Registry (default: Docker Hub)
    pub server: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// Registry (default: Docker Hub)
    pub server: Option<String>,
}

fn read_line(prompt: &str, hide: bool) -> Result<String> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    if tty {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
    }
    let restore = if hide && tty { echo_off() } else { None };
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(saved) = restore {
        // SAFETY: restoring the terminal attributes read by `echo_off` on fd 0.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &saved) };
        eprintln!();
    }
    read.map_err(|e| {
        CliError::msg(format!(
            "Error: reading {}: {e}",
            prompt.trim_end_matches(": ")
        ))
    })?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Turns the terminal's echo off; the attributes to restore.
fn echo_off() -> Option<libc::termios> {
    // SAFETY: tcgetattr/tcsetattr on fd 0 with a termios owned here.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut t) != 0 {
            return None;
        }
        let saved = t;
        t.c_lflag &= !libc::ECHO;
        libc::tcsetattr(0, libc::TCSANOW, &t);
        Some(saved)
    }
}

pub async fn login(a: LoginArgs) -> Result<()> {
    let registry = registry_auth::registry_of(a.server.as_deref());
    if a.password.is_some() && a.password_stdin {
        return Err(CliError::msg(
            "--password and --password-stdin are mutually exclusive",
        ));
    }
    if a.password_stdin && a.username.is_none() {
        return Err(CliError::msg(
            "Must provide --username with --password-stdin",
        ));
    }
    let username = match a.username {
        Some(u) => u,
        None => read_line("Username: ", false)?,
    };
    let password = match (a.password, a.password_stdin) {
        (Some(p), _) => {
            eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
            p
        }
        (None, true) => {
            let mut all = String::new();
            std::io::stdin().lock().read_line(&mut all).map_err(|e| {
                CliError::msg(format!("Error: reading the password from stdin: {e}"))
            })?;
            all.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => read_line("Password: ", true)?,
    };
    if username.is_empty() || password.is_empty() {
        return Err(CliError::msg(
            "Error: Cannot perform an interactive login from a non TTY device: give --username and --password-stdin",
        ));
    }
    let creds = Credentials::new(username, password);
    let mut opts =
        registry_auth::options_for(&registry).map_err(|e| CliError::msg(format!("Error: {e}")))?;
    opts.credentials = Some(creds.clone());
    let client = Registry::with_options(&registry, opts)
        .map_err(|e| CliError::msg(format!("Error response from registry {registry}: {e}")))?;
    client.ping().await.map_err(|e| {
        CliError::msg(format!(
            "Error response from registry {registry}: login failed: {e}"
        ))
    })?;
    registry_auth::store(&registry, &creds)
        .map_err(|e| CliError::msg(format!("Error saving credentials: {e}")))?;
    println!("Login Succeeded");
    Ok(())
}

pub fn logout(a: LogoutArgs) -> Result<()> {
    let registry = registry_auth::registry_of(a.server.as_deref());
    match registry_auth::erase(&registry) {
        Ok(true) => {
            println!("Removing login credentials for {registry}");
            Ok(())
        }
        Ok(false) => {
            println!("Not logged in to {registry}");
            Ok(())
        }
        Err(e) => Err(CliError::msg(format!("Error: {e}"))),
    }
}
