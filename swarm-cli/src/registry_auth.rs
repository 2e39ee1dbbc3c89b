//! Registry logins kept as Docker keeps them: `auths` of `~/.docker/config.json` (or
//! `$DOCKER_CONFIG/config.json`), one `{"auth": base64("user:password")}` per registry,
//! Docker Hub under `https://index.docker.io/v1/`. So `docker login` and `swarm login` share
//! their logins. Also how the CLI reaches a registry: HTTPS, plain HTTP for the insecure ones
//! it is told of, with the user's login.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value};
use swarm_oci::reference::DOCKER_HUB;
use swarm_oci::{Credentials, RegistryOptions};

/// Where Docker keeps Docker Hub's login in `auths`.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";
/// Registries the CLI reaches over plain HTTP (comma-separated `HOST[:PORT]`), like the
/// agent's `--insecure-registry`.
pub const INSECURE_ENV: &str = "SWARM_INSECURE_REGISTRIES";

/// Errors reading or writing the login file.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not Docker's config.json format: {reason}; fix or remove it")]
    Format { path: String, reason: String },
}

/// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
pub fn config_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("config.json");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".docker").join("config.json")
}

/// The registry a login names: `None` is Docker Hub; `https://`/`http://` and a path are
/// dropped (`https://reg.example/v2/` is `reg.example`).
pub fn registry_of(server: Option<&str>) -> String {
    let Some(s) = server.map(str::trim).filter(|s| !s.is_empty()) else {
        return DOCKER_HUB.to_string();
    };
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or(s);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DOCKER_HUB.to_string(),
        h => h.to_string(),
    }
}

/// The key of `registry` in `auths`.
fn auth_key(registry: &str) -> String {
    if registry == DOCKER_HUB {
        DOCKER_HUB_AUTH_KEY.to_string()
    } else {
        registry.to_string()
    }
}

/// The login file as read (an empty object when missing).
struct ConfigFile {
    path: PathBuf,
    root: Map<String, Value>,
}

impl ConfigFile {
    fn load(path: PathBuf) -> Result<ConfigFile, AuthError> {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(AuthError::Io {
                    path: shown,
                    source,
                })
            }
        };
        let root = if text.trim().is_empty() {
            Map::new()
        } else {
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(m)) => m,
                Ok(_) => {
                    return Err(AuthError::Format {
                        path: shown,
                        reason: "not a JSON object".into(),
                    })
                }
                Err(e) => {
                    return Err(AuthError::Format {
                        path: shown,
                        reason: e.to_string(),
                    })
                }
            }
        };
        Ok(ConfigFile { path, root })
    }

    fn auths(&self) -> Option<&Map<String, Value>> {
        self.root.get("auths").and_then(Value::as_object)
    }

    /// The credential helper Docker would ask for `registry`: `credHelpers` (per registry),
    /// else `credsStore`.
    fn helper(&self, registry: &str) -> Option<String> {
        let per_registry = self
            .root
            .get("credHelpers")
            .and_then(Value::as_object)
            .and_then(|m| {
                m.iter()
                    .find(|(k, _)| **k == auth_key(registry) || registry_of(Some(k)) == registry)
            })
            .and_then(|(_, v)| v.as_str());
        per_registry
            .or_else(|| self.root.get("credsStore").and_then(Value::as_str))
            .filter(|h| !h.is_empty())
            .map(str::to_string)
    }

    fn credentials(&self, registry: &str) -> Result<Option<Credentials>, AuthError> {
        if let Some(helper) = self.helper(registry) {
            return helper_get(&format!("docker-credential-{helper}"), &auth_key(registry));
        }
        let key = auth_key(registry);
        let Some(auths) = self.auths() else {
            return Ok(None);
        };
        // Docker also finds entries written with a scheme (`https://reg.example`).
        let entry = auths.get(&key).or_else(|| {
            auths
                .iter()
                .find(|(k, _)| registry_of(Some(k)) == registry)
                .map(|(_, v)| v)
        });
        let Some(encoded) = entry.and_then(|e| e.get("auth")).and_then(Value::as_str) else {
            return Ok(None);
        };
        let bad = |reason: &str| AuthError::Format {
            path: self.path.display().to_string(),
            reason: format!("auths.{key:?}.auth {reason}"),
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| bad("is not base64"))?;
        let text = String::from_utf8(raw).map_err(|_| bad("is not UTF-8"))?;
        let (user, password) = text
            .split_once(':')
            .ok_or_else(|| bad("is not base64 of USER:PASSWORD"))?;
        Ok(Some(Credentials::new(user, password)))
    }

    fn save(&self) -> Result<(), AuthError> {
        let shown = self.path.display().to_string();
        let io = |source| AuthError::Io {
            path: shown.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let text = serde_json::to_string_pretty(&Value::Object(self.root.clone()))
            .unwrap_or_else(|_| "{}".into());
        // Written whole to a private temporary file, then renamed: a crash leaves the old
        // file, never half of one, and the passwords are never readable by others.
        let tmp = self.path.with_extension("json.tmp");
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
            f.write_all(b"\n").map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

/// Asks Docker's credential helper (`program` is `docker-credential-HELPER`) `get` for
/// `server` (its protocol: the server on stdin, `{"Username","Secret"}` on stdout;
/// "credentials not found" when it has none).
fn helper_get(program: &str, server: &str) -> Result<Option<Credentials>, AuthError> {
    use std::io::Write as _;
    let program = program.to_string();
    let io = |source| AuthError::Io {
        path: program.clone(),
        source,
    };
    let mut child = std::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(io)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(server.as_bytes()).map_err(io)?;
    }
    let out = child.wait_with_output().map_err(io)?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("credentials not found") {
            return Ok(None);
        }
        return Err(AuthError::Format {
            path: program.clone(),
            reason: format!(
                "get {server} failed: {}{}",
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| AuthError::Format {
        path: program.clone(),
        reason: format!("its answer is not JSON: {e}"),
    })?;
    let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
    Ok(Some(Credentials::new(field("Username"), field("Secret"))))
}

/// What `--with-registry-auth` sends for `image`: the user's login for the image's registry
/// as Docker's X-Registry-Auth, or an empty one (with a warning on stderr) when there is none.
pub fn encoded_auth_for(image: &str) -> Result<String, AuthError> {
    let registry = match swarm_oci::Reference::parse(image) {
        Ok(r) => r.registry().to_string(),
        Err(_) => return Ok(String::new()),
    };
    match lookup(&registry)? {
        Some(credentials) => Ok(swarm_oci::RegistryAuth {
            credentials,
            server_address: registry,
        }
        .encode()),
        None => {
            eprintln!(
                "no login for registry {registry} in {}: the nodes pull {image} without credentials (run `swarm login {registry}` first)",
                config_path().display()
            );
            Ok(String::new())
        }
    }
}

/// The stored login for `registry` (`docker.io` for Docker Hub), if any.
pub fn lookup(registry: &str) -> Result<Option<Credentials>, AuthError> {
    ConfigFile::load(config_path())?.credentials(registry)
}

/// Stores a login for `registry`, keeping everything else in the file.
pub fn store(registry: &str, creds: &Credentials) -> Result<(), AuthError> {
    let mut file = ConfigFile::load(config_path())?;
    let auths = file
        .root
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    if !auths.is_object() {
        *auths = Value::Object(Map::new());
    }
    let encoded = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", creds.username, creds.password));
    if let Some(m) = auths.as_object_mut() {
        m.insert(auth_key(registry), serde_json::json!({ "auth": encoded }));
    }
    file.save()
}

/// Removes the login of `registry`; `false` when there was none.
pub fn erase(registry: &str) -> Result<bool, AuthError> {
    let mut file = ConfigFile::load(config_path())?;
    let key = auth_key(registry);
    let removed = file
        .root
        .get_mut("auths")
        .and_then(Value::as_object_mut)
        .map(|m| {
            let keys: Vec<String> = m
                .keys()
                .filter(|k| **k == key || registry_of(Some(k)) == registry)
                .cloned()
                .collect();
            for k in &keys {
                m.remove(k);
            }
            !keys.is_empty()
        })
        .unwrap_or(false);
    if removed {
        file.save()?;
    }
    Ok(removed)
}

/// Registries named in [`INSECURE_ENV`].
pub fn insecure_registries() -> Vec<String> {
    std::env::var(INSECURE_ENV)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// How the CLI reaches `registry`: HTTPS with the system's roots unless listed insecure, with
/// the user's login when there is one.
pub fn options_for(registry: &str) -> Result<RegistryOptions, AuthError> {
    Ok(RegistryOptions {
        insecure: RegistryOptions::is_insecure(registry, &insecure_registries()),
        credentials: lookup(registry)?,
        connect_timeout: Duration::from_secs(3),
        request_timeout: Duration::from_secs(10),
        attempts: 2,
        ..RegistryOptions::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_servers_name_registries_as_docker_does() {
        assert_eq!(registry_of(None), "docker.io");
        assert_eq!(
            registry_of(Some("https://index.docker.io/v1/")),
            "docker.io"
        );
        assert_eq!(registry_of(Some("reg.example:5000")), "reg.example:5000");
        assert_eq!(registry_of(Some("https://reg.example/v2/")), "reg.example");
        assert_eq!(auth_key("docker.io"), DOCKER_HUB_AUTH_KEY);
    }

    #[test]
    fn credential_helpers_are_asked_as_docker_asks_them() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        // A helper speaking Docker's protocol: the server on stdin, JSON on stdout.
        let helper = dir.path().join("docker-credential-fake");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread server\nif [ \"$server\" = reg.example:5000 ]; then\n  printf '{\"ServerURL\":\"%s\",\"Username\":\"robot\",\"Secret\":\"t0ken\"}' \"$server\"\nelse\n  echo 'credentials not found in native keychain'; exit 1\nfi\n",
        )
        .expect("write helper");
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let program = helper.to_string_lossy().to_string();
        assert_eq!(
            helper_get(&program, "reg.example:5000").expect("answer"),
            Some(Credentials::new("robot", "t0ken"))
        );
        assert_eq!(helper_get(&program, "other.example").expect("none"), None);
        let missing = helper_get("/nonexistent/docker-credential-x", "r").unwrap_err();
        assert!(
            missing.to_string().contains("docker-credential-x"),
            "{missing}"
        );

        // credHelpers (per registry) first, then credsStore.
        let file = ConfigFile {
            path: dir.path().join("config.json"),
            root: serde_json::from_str(
                r#"{"credsStore":"desktop","credHelpers":{"reg.example:5000":"fake","https://index.docker.io/v1/":"hub"}}"#,
            )
            .expect("json"),
        };
        assert_eq!(file.helper("reg.example:5000").as_deref(), Some("fake"));
        assert_eq!(file.helper("docker.io").as_deref(), Some("hub"));
        assert_eq!(file.helper("else.example").as_deref(), Some("desktop"));
    }

    #[test]
    fn reads_what_docker_wrote_and_writes_what_docker_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        // A file as `docker login` leaves it, with other settings kept across our writes.
        std::fs::write(
            &path,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dGVzdHVzZXI6dGVzdHBhc3N3b3Jk"},"https://old.example":{"auth":"YTpi"}},"psFormat":"table {{.ID}}"}"#,
        )
        .expect("write");
        let file = ConfigFile::load(path.clone()).expect("load");
        assert_eq!(
            file.credentials("docker.io").expect("ok"),
            Some(Credentials::new("testuser", "testpassword"))
        );
        assert_eq!(
            file.credentials("old.example").expect("ok"),
            Some(Credentials::new("a", "b"))
        );
        assert_eq!(file.credentials("none.example").expect("ok"), None);

        let mut file = file;
        file.root
            .get_mut("auths")
            .and_then(Value::as_object_mut)
            .expect("auths")
            .insert(
                "reg.example:5000".into(),
                serde_json::json!({"auth": "dTpw"}),
            );
        file.save().expect("save");
        let again = ConfigFile::load(path.clone()).expect("reload");
        assert_eq!(again.root["psFormat"], "table {{.ID}}");
        assert_eq!(
            again.credentials("reg.example:5000").expect("ok"),
            Some(Credentials::new("u", "p"))
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "passwords are not readable by others: {mode:o}"
        );

        std::fs::write(&path, "{not json").expect("write");
        let err = ConfigFile::load(path).err().expect("bad file");
        assert!(
            err.to_string().contains("not Docker's config.json format"),
            "{err}"
        );
    }
}
