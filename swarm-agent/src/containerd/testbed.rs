//! A private containerd for tests, without a cluster: what the executor's tests here and the
//! lab of the `tests` crate (one containerd per node) run containers on.
//!
//! - [`config`], [`command`], [`socket`]: a containerd with its own root, state, sockets and
//!   opt directory under one directory, CRI disabled, so that several run side by side;
//! - [`PrivateContainerd`]: one started from a test, waited for, and killed on drop with
//!   whatever its shims left behind;
//! - [`busybox`], [`registry_with`]: a busybox image built from Debian's static busybox and a
//!   private `docker-registry` holding it;
//! - [`require`], [`require_root`]: what the tests need, failing (never skipping) without.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use swarm_oci::{BuiltImage, ImageBuilder, LocalRegistry};

use super::client::Containerd;

/// Debian's containerd package.
pub const CONTAINERD: &str = "/usr/bin/containerd";
/// Debian's runc package.
pub const RUNC: &str = "/usr/sbin/runc";
/// Debian's busybox-static package: the one program of the busybox test images.
pub const BUSYBOX: &str = "/usr/bin/busybox";
/// Where the runc shim of containerd 1.6 keeps its state (`<it>/<namespace>/<id>`), whatever
/// containerd's own `--state` is: shared by every instance.
const RUNC_STATE: &str = "/run/containerd/runc";

/// Fails (never skips) when `path` is missing, naming the Debian package that has it.
pub fn require(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install Debian's {package} package (apt-get install -y {package})"
    );
}

/// Fails unless this process runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "these tests run containers and must run as root");
}

/// The gRPC socket of the containerd whose directory is `dir`.
pub fn socket(dir: &Path) -> PathBuf {
    dir.join("containerd.sock")
}

fn toml_str(p: &Path) -> String {
    // A JSON string is a valid TOML basic string.
    serde_json::to_string(&p.to_string_lossy()).unwrap_or_else(|_| format!("{p:?}"))
}

/// A private containerd: own root, state, sockets and opt dir under `dir`; CRI disabled.
pub fn config(dir: &Path) -> String {
    let sock = socket(dir);
    format!(
        "version = 2\n\
         root = {root}\n\
         state = {state}\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
         [grpc]\n  address = {sock}\n\
         [ttrpc]\n  address = {ttrpc}\n\
         [debug]\n  address = {dbg}\n\
         [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt}\n",
        root = toml_str(&dir.join("root")),
        state = toml_str(&dir.join("state")),
        sock = toml_str(&sock),
        ttrpc = toml_str(&dir.join("containerd.sock.ttrpc")),
        dbg = toml_str(&dir.join("debug.sock")),
        opt = toml_str(&dir.join("opt")),
    )
}

/// Writes `<dir>/config.toml` ([`config`]; `dir` is created) and removes a stale socket;
/// returns the command that runs that containerd (stdin from /dev/null; where its output goes
/// is the caller's choice).
pub fn command(dir: &Path) -> anyhow::Result<Command> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cfg = dir.join("config.toml");
    std::fs::write(&cfg, config(dir)).with_context(|| format!("writing {}", cfg.display()))?;
    let _ = std::fs::remove_file(socket(dir));
    let mut cmd = Command::new(CONTAINERD);
    cmd.arg("--config")
        .arg(&cfg)
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--state")
        .arg(dir.join("state"))
        .arg("--address")
        .arg(socket(dir))
        .stdin(Stdio::null());
    Ok(cmd)
}

/// A private containerd started by a test, killed on drop.
pub struct PrivateContainerd {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
    namespace: String,
}

impl PrivateContainerd {
    /// Starts a containerd in `dir` (its stderr in `<dir>/containerd.log`) for tests that work
    /// in the containerd namespace `namespace`, and waits until it answers.
    pub async fn start(dir: &Path, namespace: &str) -> PrivateContainerd {
        require_root();
        require(CONTAINERD, "containerd");
        require(RUNC, "runc");
        let mut cmd = command(dir).unwrap_or_else(|e| panic!("{e:#}"));
        let log = std::fs::File::create(dir.join("containerd.log")).expect("containerd log file");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting /usr/bin/containerd");
        let mut me = PrivateContainerd {
            child,
            socket: socket(dir),
            dir: dir.to_path_buf(),
            namespace: namespace.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if me.socket.exists() {
                if let Ok(c) = Containerd::connect(&me.socket, namespace).await {
                    if c.check().await.is_ok() {
                        break;
                    }
                }
            }
            if let Ok(Some(st)) = me.child.try_wait() {
                panic!("containerd exited with {st}: {}", me.log());
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer on {} within 20 s: {}",
                me.socket.display(),
                me.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        me
    }

    /// Its gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A client in the tests' namespace.
    pub async fn connect(&self) -> Containerd {
        Containerd::connect(&self.socket, &self.namespace)
            .await
            .expect("connect")
    }

    /// The end of its log (for failure messages).
    pub fn log(&self) -> String {
        let s = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let n = s.len().saturating_sub(4000);
        s.get(n..).unwrap_or("").to_string()
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        // Shims and runc containers outlive containerd: after a failed assertion, end
        // ours (the shims serving this containerd's socket), delete the runc state (kept
        // under /run/containerd/runc/<namespace>, shared by all instances) and unmount
        // the rootfs.
        let sock = self.socket.display().to_string();
        for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_shim = args
                .first()
                .is_some_and(|a| a.ends_with("containerd-shim-runc-v2"));
            if is_shim && args.contains(&sock) {
                // SAFETY: kill has no memory preconditions; the pid is a shim of ours.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let tasks = self
            .dir
            .join("state/io.containerd.runtime.v2.task")
            .join(&self.namespace);
        for entry in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let _ = Command::new(RUNC)
                .arg("--root")
                .arg(Path::new(RUNC_STATE).join(&self.namespace))
                .args(["delete", "--force", &id])
                .stderr(Stdio::null())
                .status();
            let _ = Command::new("umount")
                .arg(entry.path().join("rootfs"))
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Leftover mounts of this containerd would keep its directory busy.
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.join("state"))
            .stderr(Stdio::null())
            .status();
    }
}

/// A busybox image: the static `busybox` as /bin/busybox with `applets` linked to it, /tmp,
/// `PATH=/bin` and `sh` as its command. Add files to the builder, then build it.
pub fn busybox(busybox: &Path, applets: &[&str]) -> ImageBuilder {
    let mut b = ImageBuilder::new()
        .dir("/bin", 0o755)
        .file("/bin/busybox", busybox.to_path_buf(), 0o755)
        .dir("/tmp", 0o1777)
        .env("PATH", "/bin")
        .cmd(["sh"]);
    for applet in applets {
        b = b.symlink(&format!("/bin/{applet}"), "busybox");
    }
    b
}

/// A private `docker-registry` with its storage in `<dir>/registry`, holding `image` as
/// `busybox:latest`.
pub async fn registry_with(dir: &Path, image: &BuiltImage) -> LocalRegistry {
    require(swarm_oci::local::DEFAULT_BINARY, "docker-registry");
    let regdir = dir.join("registry");
    std::fs::create_dir_all(&regdir).expect("registry dir");
    let registry = LocalRegistry::start(&regdir)
        .await
        .expect("starting docker-registry");
    registry
        .client()
        .expect("registry client")
        .push(image, "busybox", "latest")
        .await
        .expect("pushing busybox");
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_everything_under_the_directory() {
        let c = config(Path::new("/tmp/cd/x"));
        assert!(c.contains("root = \"/tmp/cd/x/root\""), "{c}");
        assert!(c.contains("state = \"/tmp/cd/x/state\""), "{c}");
        assert!(c.contains("address = \"/tmp/cd/x/containerd.sock\""), "{c}");
        assert!(
            c.contains("address = \"/tmp/cd/x/containerd.sock.ttrpc\""),
            "{c}"
        );
        assert!(c.contains("address = \"/tmp/cd/x/debug.sock\""), "{c}");
        assert!(c.contains("path = \"/tmp/cd/x/opt\""), "{c}");
        assert!(c.contains("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]"));
        let args: Vec<String> = command(&std::env::temp_dir().join("swarm-testbed-cmd"))
            .unwrap()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[0], "--config");
        assert!(
            args[1].ends_with("swarm-testbed-cmd/config.toml"),
            "{args:?}"
        );
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join("swarm-testbed-cmd"));
    }
}
