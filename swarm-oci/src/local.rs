//! A local `docker-registry` process (Debian's distribution 2.8) for tests and the lab:
//! filesystem storage in a directory, on 127.0.0.1, killed on drop. Plain HTTP (an insecure
//! registry) by default; [`LocalSecurity`] adds TLS with a given certificate and a login
//! (an htpasswd file of bcrypt entries, Basic authentication).

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

/// TLS and login of a local registry.
#[derive(Clone, Debug, Default)]
pub struct LocalSecurity {
    /// PEM certificate chain and key it serves HTTPS with.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// An htpasswd file (bcrypt entries): every request needs one of its users.
    pub htpasswd: Option<PathBuf>,
}

/// A running registry. Dropping it kills the process (the storage directory stays).
#[derive(Debug)]
pub struct LocalRegistry {
    child: Option<Child>,
    addr: SocketAddr,
    dir: PathBuf,
    security: LocalSecurity,
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
        Self::start_secured(binary, dir, LocalSecurity::default()).await
    }

    /// [`start_with`](Self::start_with) serving TLS and/or requiring a login.
    pub async fn start_secured(
        binary: &Path,
        dir: &Path,
        security: LocalSecurity,
    ) -> Result<LocalRegistry> {
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
            match Self::try_start(binary, dir, &security).await {
                Ok(r) => return Ok(r),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| OciError::LocalRegistry("could not start".into())))
    }

    async fn try_start(
        binary: &Path,
        dir: &Path,
        security: &LocalSecurity,
    ) -> Result<LocalRegistry> {
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
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {}\n  secret: swarm-oci-local-registry\n",
            quote(&data.to_string_lossy()),
            quote(&addr.to_string()),
        );
        config.push_str(&security_config(security));
        config.push_str("health:\n  storagedriver:\n    enabled: false\n");
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
            security: security.clone(),
        };
        // Without TLS verification of its own certificate: this only waits for it to listen
        // (an answer of 401 from a registry with a login counts as up).
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| OciError::LocalRegistry(format!("HTTP client: {e}")))?;
        let scheme = if security.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{addr}/v2/");
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
            let answer = client.get(&url).send().await;
            match answer.map(|r| r.status().as_u16()) {
                Ok(200 | 401) => break,
                Ok(other) if Instant::now() > deadline => {
                    reg.stop();
                    return Err(OciError::LocalRegistry(format!(
                        "{} answered GET /v2/ on {addr} with HTTP {other}; log {}:\n{}",
                        binary.display(),
                        log_path.display(),
                        log_tail(&log_path)
                    )));
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
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

    /// Options reaching it: plain HTTP without TLS; with TLS, trusting `ca_pem` (the CA that
    /// signed its certificate).
    pub fn options(&self, ca_pem: Option<Vec<u8>>) -> RegistryOptions {
        RegistryOptions {
            insecure: self.security.tls.is_none(),
            ca_pem,
            ..RegistryOptions::default()
        }
    }

    /// A client for it (plain HTTP; use [`options`](Self::options) for one with TLS).
    pub fn client(&self) -> Result<Registry> {
        Registry::with_options(&self.host(), self.options(None))
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

/// The `http.tls` and `auth.htpasswd` sections of a registry configuration.
pub fn security_config(security: &LocalSecurity) -> String {
    let quote = |p: &Path| {
        let s = p.to_string_lossy();
        serde_json::to_string(&s).unwrap_or_else(|_| format!("{s:?}"))
    };
    let mut out = String::new();
    if let Some((cert, key)) = &security.tls {
        out.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            quote(cert),
            quote(key)
        ));
    }
    if let Some(htpasswd) = &security.htpasswd {
        out.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: swarm-registry\n    path: {}\n",
            quote(htpasswd)
        ));
    }
    out
}

/// An htpasswd line (bcrypt, as distribution requires) for `user`, made by apache2-utils'
/// `htpasswd`.
pub fn htpasswd_entry(user: &str, password: &str) -> Result<String> {
    let out = Command::new("htpasswd")
        .args(["-nbB", user, password])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            OciError::LocalRegistry(format!(
                "running htpasswd: {e}; install apache2-utils (apt-get install -y apache2-utils)"
            ))
        })?;
    if !out.status.success() {
        return Err(OciError::LocalRegistry(format!(
            "htpasswd -nbB {user} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(format!("{line}\n"))
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
