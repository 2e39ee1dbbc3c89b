//! A local `docker-registry` process (Debian's distribution 2.8) for tests and the lab:
//! filesystem storage in a directory, plain HTTP on 127.0.0.1, killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{OciError, Result};
use crate::registry::{Registry, RegistryOptions};

/// Where Debian's `docker-registry` package installs the binary.
pub const DEFAULT_BINARY: &str = "/usr/bin/docker-registry";
/// Environment variable that overrides [`DEFAULT_BINARY`].
pub const BINARY_ENV: &str = "SWARM_DOCKER_REGISTRY";

/// A running registry. Dropping it kills the process (the storage directory stays).
#[derive(Debug)]
pub struct LocalRegistry {
    child: Option<Child>,
    addr: SocketAddr,
    dir: PathBuf,
}

impl LocalRegistry {
    /// Start `docker-registry serve` with storage under `dir` (created if missing; it holds
    /// `config.yml`, `registry.log` and `data/`) on a free port of 127.0.0.1, and wait until
    /// `GET /v2/` answers. Fails (never skips) when the binary is missing.
    pub async fn start(dir: &Path) -> Result<LocalRegistry> {
        let binary = std::env::var_os(BINARY_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BINARY));
        Self::start_with(&binary, dir).await
    }

    /// [`start`](Self::start) with an explicit binary.
    pub async fn start_with(binary: &Path, dir: &Path) -> Result<LocalRegistry> {
        if !binary.is_file() {
            return Err(OciError::LocalRegistry(format!(
                "{} not found: install Debian's docker-registry package (apt-get install -y docker-registry), or set {BINARY_ENV}",
                binary.display()
            )));
        }
        std::fs::create_dir_all(dir.join("data"))
            .map_err(|e| OciError::io(format!("creating {}", dir.join("data").display()), e))?;
        // A port picked by the kernel can be taken in between: try a few.
        let mut last_err = None;
        for _ in 0..3 {
            match Self::try_start(binary, dir).await {
                Ok(r) => return Ok(r),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| OciError::LocalRegistry("could not start".into())))
    }

    async fn try_start(binary: &Path, dir: &Path) -> Result<LocalRegistry> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")
                .map_err(|e| OciError::io("finding a free port on 127.0.0.1", e))?;
            l.local_addr()
                .map_err(|e| OciError::io("finding a free port on 127.0.0.1", e))?
                .port()
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let data = dir.join("data");
        let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"));
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {}\n  secret: swarm-oci-local-registry\n\
             health:\n  storagedriver:\n    enabled: false\n",
            quote(&data.to_string_lossy()),
            quote(&addr.to_string()),
        );
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config)
            .map_err(|e| OciError::io(format!("writing {}", config_path.display()), e))?;
        let log_path = dir.join("registry.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| OciError::io(format!("creating {}", log_path.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| OciError::io(format!("opening {}", log_path.display()), e))?;
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| OciError::io(format!("starting {}", binary.display()), e))?;
        let mut reg = LocalRegistry {
            child: Some(child),
            addr,
            dir: dir.to_path_buf(),
        };
        let client = Registry::with_options(
            &addr.to_string(),
            RegistryOptions {
                attempts: 1,
                connect_timeout: Duration::from_millis(500),
                request_timeout: Duration::from_secs(2),
                ..RegistryOptions::default()
            },
        )?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(child) = reg.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    reg.child = None;
                    return Err(OciError::LocalRegistry(format!(
                        "{} exited with {status} before answering on {addr}; log {}:\n{}",
                        binary.display(),
                        log_path.display(),
                        log_tail(&log_path)
                    )));
                }
            }
            match client.ping().await {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => {
                    reg.stop();
                    return Err(OciError::LocalRegistry(format!(
                        "{} did not answer GET /v2/ on {addr} within 15s ({e}); log {}:\n{}",
                        binary.display(),
                        log_path.display(),
                        log_tail(&log_path)
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        tracing::info!(%addr, dir = %dir.display(), "local registry started");
        Ok(reg)
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Socket address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its storage directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A client for it with default options.
    pub fn client(&self) -> Result<Registry> {
        Registry::new(&self.host())
    }

    /// The last lines of its log (for test failure messages).
    pub fn log_tail(&self) -> String {
        log_tail(&self.dir.join("registry.log"))
    }

    /// Kill the process and wait for it. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
