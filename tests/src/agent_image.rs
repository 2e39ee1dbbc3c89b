//! The agent image: `swarm-agent` and `swarm` in one layer, nothing else but the shared
//! libraries they load when they are not static. `cargo xtask image agent` builds it from the
//! static musl release binaries ([`build_static`]) and pushes it; the lab's agent-container
//! mode builds it from the binaries of the test build (stripped copies, with their libraries),
//! so that the agent it runs as a container is the code under test.
//!
//! The image runs privileged with the host's network and PID namespaces (README, "The agent as
//! a container"); its entrypoint is the agent, so `docker run … IMAGE --flags` passes flags,
//! and `ctr run … IMAGE ID /usr/local/bin/swarm-agent --flags` names the program.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use swarm_oci::{BuiltImage, ImageBuilder, Registry};

use crate::images::{workspace_root, MUSL};

/// Where the agent is in the image (its entrypoint).
pub const AGENT_PATH: &str = "/usr/local/bin/swarm-agent";
/// Where the CLI is in the image.
pub const CLI_PATH: &str = "/usr/local/bin/swarm";
/// The repository the image is pushed to in a registry.
pub const REPOSITORY: &str = "swarm-agent";
/// The image label carrying the version it was built as.
pub const VERSION_LABEL: &str = "org.opencontainers.image.version";

/// The cargo arguments that build the static binaries of the image.
pub const BUILD_STATIC_ARGS: &[&str] = &[
    "build",
    "--release",
    "--target",
    MUSL,
    "-p",
    "swarm-agent",
    "-p",
    "swarm-cli",
    "--config",
    "profile.release.strip=true",
    "--config",
    "profile.release.debug=0",
];

/// The image of `agent` and `cli` (their shared libraries included when they have any),
/// labelled with `version`.
pub fn agent_image(agent: &Path, cli: &Path, version: &str) -> anyhow::Result<BuiltImage> {
    let mut b = ImageBuilder::new()
        .file(AGENT_PATH, agent.to_path_buf(), 0o755)
        .file(CLI_PATH, cli.to_path_buf(), 0o755)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .entrypoint([AGENT_PATH])
        .stop_signal("SIGTERM")
        .label("org.opencontainers.image.title", "swarm-agent")
        .label(VERSION_LABEL, version);
    let mut libs = shared_libraries(agent)?;
    libs.extend(shared_libraries(cli)?);
    libs.sort();
    libs.dedup();
    for lib in libs {
        let path = lib.to_string_lossy().to_string();
        b = b.file(&path, lib, 0o755);
    }
    Ok(b.build()?)
}

/// The shared libraries `ldd` says `bin` loads (the dynamic loader included); none for a
/// static binary.
pub fn shared_libraries(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !bin.is_file() {
        bail!("{} is missing", bin.display());
    }
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd (Debian's libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    if text.contains("statically linked") || err.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        bail!("ldd {} failed: {err}", bin.display());
    }
    Ok(parse_ldd(&text))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// A stripped copy of `bin` in `dir` (debug builds are hundreds of megabytes of symbols).
pub fn stripped_copy(bin: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = bin
        .file_name()
        .with_context(|| format!("{} has no file name", bin.display()))?;
    let out = dir.join(name);
    let status = Command::new("strip")
        .arg("-o")
        .arg(&out)
        .arg(bin)
        .status()
        .context("running strip (Debian's binutils)")?;
    if !status.success() {
        bail!("strip {} failed ({status})", bin.display());
    }
    Ok(out)
}

/// Builds the static binaries (musl, release, stripped) with cargo; returns (agent, cli).
/// Adds the musl target with rustup when it is missing. Never from inside a test.
pub fn build_static() -> anyhow::Result<(PathBuf, PathBuf)> {
    crate::images::ensure_musl_target()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(BUILD_STATIC_ARGS)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("starting {cargo}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", BUILD_STATIC_ARGS.join(" "));
    }
    let dir = workspace_root().join("target").join(MUSL).join("release");
    Ok((dir.join("swarm-agent"), dir.join("swarm")))
}

/// Pushes `image` to `registry` (plain HTTP) as `swarm-agent:TAG`; the pushed reference with
/// its manifest digest.
pub async fn push(registry: &str, image: &BuiltImage, tag: &str) -> anyhow::Result<String> {
    let reg = Registry::new(registry)?;
    let r = reg
        .push(image, REPOSITORY, tag)
        .await
        .with_context(|| format!("pushing {registry}/{REPOSITORY}:{tag}"))?;
    Ok(format!(
        "{registry}/{REPOSITORY}:{tag}@{}",
        r.manifest_digest
    ))
}

/// `cargo xtask image agent --registry HOST:PORT [--tag TAG]`: the static binaries built, the
/// image made of them and pushed; prints the reference and the sizes.
pub fn build_and_push(registry: &str, tag: &str) -> anyhow::Result<()> {
    let (agent, cli) = build_static()?;
    for b in [&agent, &cli] {
        if !shared_libraries(b)?.is_empty() {
            bail!(
                "{} is not static: the image would need its libraries",
                b.display()
            );
        }
    }
    let image = agent_image(&agent, &cli, env!("CARGO_PKG_VERSION"))?;
    let layer: usize = image.layers.iter().map(|(_, blob)| blob.len()).sum();
    let rt = tokio::runtime::Runtime::new()?;
    let pushed = rt.block_on(push(registry, &image, tag))?;
    println!("{pushed}");
    println!(
        "swarm-agent {} bytes, swarm {} bytes; one layer of {layer} bytes compressed",
        std::fs::metadata(&agent)?.len(),
        std::fs::metadata(&cli)?.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines_give_the_libraries_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn the_image_runs_the_agent_and_carries_what_a_dynamic_binary_loads() {
        // /bin/true stands for a binary of the test build: dynamic, with libc and the loader.
        let t = Path::new("/bin/true");
        let image = agent_image(t, t, "9.9.9").unwrap();
        let config = &image.config;
        let c = config.config.as_ref().unwrap();
        assert_eq!(c.entrypoint.as_deref(), Some(&[AGENT_PATH.to_string()][..]));
        assert_eq!(
            c.labels
                .as_ref()
                .unwrap()
                .get(VERSION_LABEL)
                .map(String::as_str),
            Some("9.9.9")
        );
        let entries = swarm_oci::build::list_layer(&image.layers[0].1).unwrap();
        let names: Vec<String> = entries
            .iter()
            .map(|e| format!("/{}", e.path.trim_start_matches('/')))
            .collect();
        for want in [AGENT_PATH, CLI_PATH] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        assert!(
            names.iter().any(|n| n.contains("libc.so")),
            "libc in {names:?}"
        );
        // Another version is another image.
        let other = agent_image(t, t, "9.9.10").unwrap();
        assert_ne!(other.manifest_digest, image.manifest_digest);
    }
}
