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

/// The C compiler for the musl target (Debian's musl-tools).
pub const MUSL_GCC: &str = "/usr/bin/musl-gcc";

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
    // ring (under rustls, the registry client's TLS) compiles C and assembly for the target.
    if !Path::new(MUSL_GCC).is_file() {
        bail!("{MUSL_GCC} is missing: the static build needs a musl C compiler (apt-get install musl-tools)");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(BUILD_STATIC_ARGS)
        .env("CC_x86_64_unknown_linux_musl", MUSL_GCC)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("starting {cargo}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", BUILD_STATIC_ARGS.join(" "));
    }
    let dir = workspace_root().join("target").join(MUSL).join("release");
    Ok((dir.join("swarm-agent"), dir.join("swarm")))
}

/// Pushes `image` to `registry` (over HTTPS, or plain HTTP when `insecure`) as
/// `swarm-agent:TAG`; the pushed reference with its manifest digest.
pub async fn push(
    registry: &str,
    insecure: bool,
    image: &BuiltImage,
    tag: &str,
) -> anyhow::Result<String> {
    let reg = if insecure {
        Registry::insecure(registry)?
    } else {
        Registry::new(registry)?
    };
    let r = reg
        .push(image, REPOSITORY, tag)
        .await
        .with_context(|| format!("pushing {registry}/{REPOSITORY}:{tag}"))?;
    Ok(format!(
        "{registry}/{REPOSITORY}:{tag}@{}",
        r.manifest_digest
    ))
}

/// `cargo xtask image agent --registry HOST:PORT [--insecure] [--tag TAG]`: the static binaries built, the
/// image made of them and pushed; prints the reference and the sizes.
pub fn build_and_push(registry: &str, insecure: bool, tag: &str) -> anyhow::Result<()> {
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
    let pushed = rt.block_on(push(registry, insecure, &image, tag))?;
    println!("{pushed}");
    println!(
        "swarm-agent {} bytes, swarm {} bytes; one layer of {layer} bytes compressed",
        std::fs::metadata(&agent)?.len(),
        std::fs::metadata(&cli)?.len()
    );
    Ok(())
}

/// Every capability runc 1.1 knows (`CAP_CHOWN` … `CAP_CHECKPOINT_RESTORE`): the agent's
/// container is privileged.
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// What the agent's container is made of: the image's files mounted at `rootfs` (`ctr images
/// mount --rw`), the agent's command line, its environment, the host directories bound at the
/// same path (`/run`, the data root: every path the agent hands containerd means the same on
/// the host) and its cgroup.
pub struct AgentContainer {
    pub rootfs: PathBuf,
    /// The whole command line, [`AGENT_PATH`] first.
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// Host directories bound at the same path, recursively, with shared propagation (what
    /// the agent mounts below them, task namespaces and secret tmpfs, must reach the host).
    pub shared_binds: Vec<PathBuf>,
    /// Host directories bound at the same path, recursively.
    pub binds: Vec<PathBuf>,
    /// Host files bound read-only at the same path (the resolver configuration the embedded
    /// DNS server forwards to).
    pub read_only: Vec<PathBuf>,
    /// The cgroup of the container (`linux.cgroupsPath`).
    pub cgroup: String,
    /// The capabilities it gets: every one for a privileged container, or those of this
    /// host's bounding set ([`bounding_capabilities`]), as `ctr run --privileged` does.
    pub capabilities: Vec<String>,
}

/// The capabilities of [`ALL_CAPABILITIES`] in this process's bounding set (`CapBnd` of
/// `/proc/self/status`): a host, or a sandbox, may lack some, and runc cannot grant a
/// capability it does not have ("unable to apply caps: operation not permitted").
pub fn bounding_capabilities() -> anyhow::Result<Vec<String>> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .context("no CapBnd in /proc/self/status")?;
    let mask = u64::from_str_radix(hex.trim(), 16).context("parsing CapBnd")?;
    Ok(capabilities_in(mask))
}

/// The capabilities of [`ALL_CAPABILITIES`] (listed by number) whose bit is set in `mask`.
fn capabilities_in(mask: u64) -> Vec<String> {
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1 << bit) != 0)
        .map(|(_, c)| c.to_string())
        .collect()
}

impl AgentContainer {
    /// The agent's container on a host laid out as README shows it: rootfs
    /// `/run/swarm-agent/rootfs`, `/run` shared, data root `/var/lib/swarm`, cgroup
    /// `/swarm-agent`, the agent's default flags.
    pub fn on_host() -> AgentContainer {
        AgentContainer {
            rootfs: PathBuf::from("/run/swarm-agent/rootfs"),
            args: vec![AGENT_PATH.to_string()],
            env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".to_string()],
            shared_binds: vec![PathBuf::from("/run")],
            binds: vec![PathBuf::from("/var/lib/swarm")],
            read_only: vec![PathBuf::from("/etc/resolv.conf")],
            cgroup: "/swarm-agent".to_string(),
            capabilities: ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// The OCI runtime spec (`config.json`) `ctr run --config` runs: privileged (every
    /// capability, no seccomp or AppArmor profile, every device), the host's network, PID and
    /// cgroup namespaces by having no entry for them (an entry with the path
    /// `/proc/1/ns/pid` is refused by runc 1.1: "can't get final child's PID from pipe"), a
    /// mount namespace of its own with shared root propagation, a fresh `/proc` and `/sys`,
    /// the host's `/dev`, `/sys/fs/cgroup` and bpffs, a tmpfs at `/tmp`, and the binds.
    pub fn runtime_spec(&self) -> serde_json::Value {
        let path = |p: &Path| p.to_string_lossy().to_string();
        let bind = |p: &Path, options: &[&str]| {
            serde_json::json!({
                "destination": path(p),
                "type": "bind",
                "source": path(p),
                "options": options,
            })
        };
        let mut mounts = vec![
            serde_json::json!({
                "destination": "/proc", "type": "proc", "source": "proc",
                "options": ["nosuid", "noexec", "nodev"],
            }),
            bind(Path::new("/dev"), &["rbind", "rw"]),
            serde_json::json!({
                "destination": "/sys", "type": "sysfs", "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "rw"],
            }),
            bind(Path::new("/sys/fs/cgroup"), &["rbind", "rw"]),
            bind(Path::new("/sys/fs/bpf"), &["rbind", "rw"]),
            // The root is read-only: the agent's scratch space (the views of images it reads
            // files from are mounted below it, in the container's mount namespace only).
            serde_json::json!({
                "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777"],
            }),
        ];
        mounts.extend(
            self.shared_binds
                .iter()
                .map(|p| bind(p, &["rbind", "rshared", "rw"])),
        );
        mounts.extend(self.binds.iter().map(|p| bind(p, &["rbind", "rw"])));
        mounts.extend(self.read_only.iter().map(|p| bind(p, &["rbind", "ro"])));
        serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "user": { "uid": 0, "gid": 0 },
                "args": self.args,
                "env": self.env,
                "cwd": "/",
                "capabilities": {
                    "bounding": self.capabilities,
                    "effective": self.capabilities,
                    "permitted": self.capabilities,
                },
                "noNewPrivileges": false,
            },
            "root": { "path": path(&self.rootfs), "readonly": true },
            "mounts": mounts,
            "linux": {
                "namespaces": [{ "type": "mount" }, { "type": "ipc" }],
                "rootfsPropagation": "rshared",
                "cgroupsPath": self.cgroup,
                "resources": { "devices": [{ "allow": true, "access": "rwm" }] },
            },
        })
    }
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

    #[test]
    fn the_agent_spec_shares_the_hosts_pid_and_network_namespaces_by_naming_neither() {
        let spec = AgentContainer::on_host().runtime_spec();
        let ns: Vec<&str> = spec["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["mount", "ipc"]);
        assert!(spec["linux"].get("seccomp").is_none());
        assert!(spec["process"].get("apparmorProfile").is_none());
        let caps = spec["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap();
        assert_eq!(caps.len(), ALL_CAPABILITIES.len());
        let run = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/run")
            .unwrap();
        assert_eq!(
            run["options"],
            serde_json::json!(["rbind", "rshared", "rw"])
        );
    }

    #[test]
    fn capabilities_are_numbered_as_the_kernel_numbers_them() {
        // CAP_SYS_RESOURCE is 24, CAP_BPF 39, CAP_CHECKPOINT_RESTORE 40 (linux/capability.h).
        assert_eq!(ALL_CAPABILITIES[24], "CAP_SYS_RESOURCE");
        assert_eq!(ALL_CAPABILITIES[39], "CAP_BPF");
        assert_eq!(ALL_CAPABILITIES.len(), 41);
        let without_sys_resource = capabilities_in(0x1fffeffffff);
        assert_eq!(without_sys_resource.len(), 40);
        assert!(!without_sys_resource.iter().any(|c| c == "CAP_SYS_RESOURCE"));
        assert_eq!(capabilities_in(0b101), ["CAP_CHOWN", "CAP_DAC_READ_SEARCH"]);
    }

    #[test]
    fn the_readme_shows_the_spec_the_code_makes() {
        let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
        let start = readme
            .find("```json\n{\n  \"ociVersion\"")
            .expect("README shows the agent's runtime spec in a json block");
        let block = &readme[start + "```json\n".len()..];
        let block = &block[..block.find("```").unwrap()];
        let shown: serde_json::Value = serde_json::from_str(block).unwrap();
        assert_eq!(
            shown,
            AgentContainer::on_host().runtime_spec(),
            "README's spec is not what AgentContainer::on_host makes; print it with \
             serde_json::to_string_pretty"
        );
    }
}
