//! Test images, built by the project from static binaries, never pulled from the internet:
//! - `whoami`: the project's own server (images/whoami), built for musl and stripped;
//! - `busybox`: Debian's busybox-static with its applets linked in /bin.
//!
//! `cargo xtask images push --registry HOST:PORT` pushes them as `HOST:PORT/whoami:latest` and
//! `HOST:PORT/busybox:latest`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use swarm_oci::{BuiltImage, ImageBuilder, Registry};

pub const BUSYBOX: &str = "/usr/bin/busybox";
const MUSL: &str = "x86_64-unknown-linux-musl";

/// Applets linked into the busybox image: shells and network probes for tests.
const APPLETS: &[&str] = &[
    "sh", "ash", "cat", "echo", "env", "hostname", "ip", "ls", "nc", "nslookup", "ping", "printf",
    "ps", "sleep", "test", "true", "false", "wget", "grep", "head", "tail", "id", "mkdir", "rm",
    "date", "uname", "ifconfig", "route", "netstat", "timeout", "wc", "sed",
];

pub fn busybox_image(busybox: &Path) -> anyhow::Result<BuiltImage> {
    if !busybox.exists() {
        bail!(
            "{} is missing: install Debian's busybox-static package",
            busybox.display()
        );
    }
    let mut b = ImageBuilder::new()
        .dir("/bin", 0o755)
        .file("/bin/busybox", busybox.to_path_buf(), 0o755)
        .dir("/tmp", 0o1777)
        .env("PATH", "/bin")
        .cmd(["sh"]);
    for applet in APPLETS {
        b = b.symlink(&format!("/bin/{applet}"), "busybox");
    }
    Ok(b.build()?)
}

pub fn whoami_image(binary: &Path) -> anyhow::Result<BuiltImage> {
    Ok(ImageBuilder::new()
        .file("/whoami", binary.to_path_buf(), 0o755)
        .env("PATH", "/")
        .entrypoint(["/whoami"])
        .expose("80/tcp")
        .expose("80/udp")
        .build()?)
}

/// Builds the static whoami binary (musl, stripped) and returns its path.
pub fn build_whoami() -> anyhow::Result<PathBuf> {
    let installed = std::process::Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup")?;
    if !String::from_utf8_lossy(&installed.stdout).contains(MUSL) {
        let ok = std::process::Command::new("rustup")
            .args(["target", "add", MUSL])
            .status()
            .context("running rustup")?;
        if !ok.success() {
            bail!("rustup target add {MUSL} failed");
        }
    }
    crate::cargo(&[
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
    ])?;
    Ok(crate::workspace_root().join(format!("target/{MUSL}/release/whoami")))
}

pub fn push(registry: &str) -> anyhow::Result<()> {
    let whoami = whoami_image(&build_whoami()?)?;
    let busybox = busybox_image(Path::new(BUSYBOX))?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let reg = Registry::new(registry)?;
        for (name, image) in [("whoami", &whoami), ("busybox", &busybox)] {
            let r = reg
                .push(image, name, "latest")
                .await
                .with_context(|| format!("pushing {registry}/{name}:latest"))?;
            println!("{registry}/{name}:latest@{}", r.manifest_digest);
        }
        anyhow::Ok(())
    })
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
}
