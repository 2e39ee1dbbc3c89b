//! Test images, built by the project from static binaries, never pulled from the internet:
//! - `whoami`: the project's own server (images/whoami), built for musl and stripped;
//! - `busybox`: Debian's busybox-static with its applets linked in /bin, and a file in
//!   [`SEED_DIR`] (image content for volume tests).
//!
//! `cargo xtask images push --registry HOST:PORT` pushes them as `HOST:PORT/whoami:latest` and
//! `HOST:PORT/busybox:latest`; the lab (`crate::lab`) pushes them into its own registry.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use swarm_agent::containerd::testbed;
use swarm_oci::{BuiltImage, ImageBuilder, Registry};

pub use testbed::BUSYBOX;
/// The target the whoami binary is built for (a static binary runs in an empty image).
pub const MUSL: &str = "x86_64-unknown-linux-musl";

/// Applets linked into the busybox image: shells and network probes for tests.
const APPLETS: &[&str] = &[
    "sh", "ash", "cat", "echo", "env", "hostname", "ip", "ls", "nc", "nslookup", "ping", "printf",
    "ps", "sleep", "test", "true", "false", "wget", "grep", "head", "tail", "id", "mkdir", "rm",
    "date", "uname", "ifconfig", "route", "netstat", "timeout", "wc", "sed",
];

/// The cargo arguments that build the whoami binary (run in the workspace root).
pub const BUILD_WHOAMI_ARGS: &[&str] = &[
    "build",
    "--release",
    "--target",
    MUSL,
    "-p",
    "whoami",
    "--config",
    "profile.release.strip=true",
    "--config",
    "profile.release.debug=0",
];

/// A directory of the busybox image with one file, [`SEED_HELLO`] (mode 0640 in a 0750
/// directory): what a new volume mounted there starts with.
pub const SEED_DIR: &str = "/seed";
/// The content of `SEED_DIR/hello`.
pub const SEED_HELLO: &str = "hello from the image\n";

pub fn busybox_image(busybox: &Path) -> anyhow::Result<BuiltImage> {
    if !busybox.exists() {
        bail!(
            "{} is missing: install Debian's busybox-static package (apt-get install -y busybox-static)",
            busybox.display()
        );
    }
    Ok(testbed::busybox(busybox, APPLETS)
        .dir(SEED_DIR, 0o750)
        .file(&format!("{SEED_DIR}/hello"), SEED_HELLO.as_bytes(), 0o640)
        .build()?)
}

pub fn whoami_image(binary: &Path) -> anyhow::Result<BuiltImage> {
    if !binary.is_file() {
        bail!("{} is missing: {}", binary.display(), whoami_build_hint());
    }
    Ok(ImageBuilder::new()
        .file("/whoami", binary.to_path_buf(), 0o755)
        .env("PATH", "/")
        .entrypoint(["/whoami"])
        .expose("80/tcp")
        .expose("80/udp")
        .build()?)
}

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Where [`build_whoami`] puts the binary, for the target directory `target_dir`
/// (normally `<workspace>/target`).
pub fn whoami_path(target_dir: &Path) -> PathBuf {
    target_dir.join(MUSL).join("release").join("whoami")
}

/// What to run when the whoami binary is missing.
pub fn whoami_build_hint() -> String {
    format!(
        "build it with `rustup target add {MUSL} && cargo {}` in {} (`cargo xtask test` does it)",
        BUILD_WHOAMI_ARGS.join(" "),
        workspace_root().display()
    )
}

/// Builds the static whoami binary (musl, stripped) with cargo and returns its path. Adds the
/// musl target with rustup when it is missing. Never call this from inside a test (it runs
/// cargo, which waits for the lock the test run holds): tests use [`whoami_path`].
pub fn build_whoami() -> anyhow::Result<PathBuf> {
    ensure_musl_target()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(BUILD_WHOAMI_ARGS)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("starting {cargo}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", BUILD_WHOAMI_ARGS.join(" "));
    }
    Ok(whoami_path(&workspace_root().join("target")))
}

/// Adds the musl target with rustup when it is missing.
pub fn ensure_musl_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup (is it installed?)")?;
    if !String::from_utf8_lossy(&installed.stdout).contains(MUSL) {
        let ok = Command::new("rustup")
            .args(["target", "add", MUSL])
            .status()
            .context("running rustup")?;
        if !ok.success() {
            bail!("rustup target add {MUSL} failed");
        }
    }
    Ok(())
}

/// Pushes both images to `registry` (plain HTTP) as `whoami:latest` and `busybox:latest`;
/// returns the pushed references with their manifest digests (`HOST:PORT/NAME:latest@sha256:…`).
pub async fn push_images(
    registry: &str,
    whoami: &BuiltImage,
    busybox: &BuiltImage,
) -> anyhow::Result<Vec<String>> {
    let reg = Registry::insecure(registry)?;
    let mut pushed = Vec::new();
    for (name, image) in [("whoami", whoami), ("busybox", busybox)] {
        let r = reg
            .push(image, name, "latest")
            .await
            .with_context(|| format!("pushing {registry}/{name}:latest"))?;
        pushed.push(format!("{registry}/{name}:latest@{}", r.manifest_digest));
    }
    Ok(pushed)
}

/// `cargo xtask images push`: builds whoami, then pushes both images to `registry`.
pub fn push(registry: &str) -> anyhow::Result<()> {
    let whoami = whoami_image(&build_whoami()?)?;
    let busybox = busybox_image(Path::new(BUSYBOX))?;
    let rt = tokio::runtime::Runtime::new()?;
    for line in rt.block_on(push_images(registry, &whoami, &busybox))? {
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_busybox_image_round_trips_through_a_real_registry() {
        let dir = tempfile::tempdir().unwrap();
        let reg = swarm_oci::LocalRegistry::start(dir.path()).await.unwrap();
        let image = busybox_image(Path::new(BUSYBOX)).unwrap();
        let client = reg.client().unwrap();
        client.push(&image, "busybox", "latest").await.unwrap();
        let r = swarm_oci::Reference::parse(&format!("{}/busybox:latest", reg.host())).unwrap();
        let resolved = client.resolve(&r).await.unwrap();
        assert_eq!(resolved.digest(), &image.manifest_digest);
        let layer = client
            .fetch_blob("busybox", &resolved.manifest.layers[0])
            .await
            .unwrap();
        let entries = swarm_oci::build::list_layer(&layer).unwrap();
        let names: Vec<String> = entries.iter().map(|e| e.path.clone()).collect();
        assert!(
            names
                .iter()
                .any(|p| p.trim_start_matches('/') == "bin/busybox"),
            "{names:?}"
        );
        assert!(
            names
                .iter()
                .any(|p| p.trim_start_matches('/') == "bin/wget"),
            "{names:?}"
        );
    }

    #[test]
    fn a_missing_whoami_binary_says_how_to_build_it() {
        let err = whoami_image(Path::new("/nonexistent/whoami")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("cargo build --release --target"), "{msg}");
        assert!(msg.contains("-p whoami"), "{msg}");
    }

    #[test]
    fn the_whoami_path_is_under_the_musl_release_dir() {
        assert_eq!(
            whoami_path(Path::new("/w/target")),
            PathBuf::from("/w/target/x86_64-unknown-linux-musl/release/whoami")
        );
    }
}
