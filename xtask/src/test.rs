//! `cargo xtask test`: what CI runs. Installs the system packages the tests use when they
//! are missing, builds every binary the end-to-end tests start (and the static whoami binary of
//! the lab's test image), then runs the whole suite.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// (program the tests run, Debian package that provides it)
const PACKAGES: &[(&str, &str)] = &[
    ("/usr/bin/docker-registry", "docker-registry"),
    ("/usr/bin/busybox", "busybox-static"),
    ("/usr/bin/containerd", "containerd"),
    ("/usr/sbin/runc", "runc"),
    // The embedded DNS server's end-to-end tests use dnsmasq as the node's resolver (the
    // binary only: `dnsmasq` would also install and start a system service on port 53).
    ("/usr/sbin/dnsmasq", "dnsmasq-base"),
];

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    ensure_packages()?;
    crate::cargo(&["build", "--workspace", "--bins"])?;
    // The lab tests make their `whoami` image from the static musl binary; a test must not run
    // cargo itself (the test run holds the build lock), so it is built here.
    #[cfg(feature = "lab")]
    tests::images::build_whoami()?;
    let mut args = vec!["test", "--workspace", "--no-fail-fast"];
    args.extend(extra.iter().map(String::as_str));
    crate::cargo(&args)
}

/// Installs the missing packages with apt-get (as root), or says what to install.
pub fn ensure_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the tests need these Debian packages: {}; install them (`sudo apt-get install -y {}`) or run as root",
            missing.join(", "),
            missing.join(" ")
        );
    }
    println!("installing {}", missing.join(", "));
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)
}

fn apt(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get {} failed ({status})", args.join(" "));
    }
    Ok(())
}
