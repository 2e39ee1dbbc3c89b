//! Registry authentication as Docker does it: the registry answers `401` with a
//! `WWW-Authenticate` challenge, either `Basic realm=…` (send the user and password on every
//! request) or `Bearer realm=…,service=…,scope=…` (fetch a token from the realm, with the
//! user and password as Basic credentials when there are any, and send it as `Bearer`).

use base64::Engine as _;
use serde::Deserialize;

/// A user's credentials for one registry (what `swarm login` stores in `config.json`).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// `Basic base64(user:password)`.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Docker's `AuthConfig` as it travels in `X-Registry-Auth` (the fields swarm uses).
#[derive(serde::Serialize, Deserialize, Default)]
struct AuthConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    username: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    password: String,
    /// `base64(user:password)`, as `config.json` keeps it (used when the two above are empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    auth: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    serveraddress: String,
}

/// A registry login as the CLI sends it with `--with-registry-auth` and the managers keep it
/// (Docker's `X-Registry-Auth`: URL-safe base64 of `{"username","password","serveraddress"}`).
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    pub credentials: Credentials,
    /// The registry the login is for (`docker.io` for Docker Hub), as the CLI named it.
    pub server_address: String,
}

impl RegistryAuth {
    /// Docker's encoding (URL-safe base64 with padding of the JSON).
    pub fn encode(&self) -> String {
        let cfg = AuthConfig {
            username: self.credentials.username.clone(),
            password: self.credentials.password.clone(),
            auth: String::new(),
            serveraddress: self.server_address.clone(),
        };
        let json = serde_json::to_vec(&cfg).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE.encode(json)
    }

    /// Reads what [`encode`](Self::encode) (or Docker's CLI) wrote: URL-safe or standard
    /// base64, padded or not; `auth` (`base64(user:password)`) when there is no username.
    pub fn decode(encoded: &str) -> Result<RegistryAuth, String> {
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        let text = encoded.trim();
        let raw = [URL_SAFE, URL_SAFE_NO_PAD, STANDARD, STANDARD_NO_PAD]
            .iter()
            .find_map(|e| e.decode(text).ok())
            .ok_or("the registry auth is not base64")?;
        let cfg: AuthConfig = serde_json::from_slice(&raw)
            .map_err(|e| format!("the registry auth is not Docker's AuthConfig JSON: {e}"))?;
        let (username, password) = if cfg.username.is_empty() && !cfg.auth.is_empty() {
            let pair = STANDARD
                .decode(cfg.auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or("the registry auth's \"auth\" is not base64 of USER:PASSWORD")?;
            let (u, p) = pair
                .split_once(':')
                .ok_or("the registry auth's \"auth\" is not base64 of USER:PASSWORD")?;
            (u.to_string(), p.to_string())
        } else {
            (cfg.username, cfg.password)
        };
        if username.is_empty() {
            return Err("the registry auth has no username".into());
        }
        Ok(RegistryAuth {
            credentials: Credentials::new(username, password),
            server_address: cfg.serveraddress,
        })
    }
}

impl std::fmt::Debug for RegistryAuth {
    /// The password is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("credentials", &self.credentials)
            .field("server_address", &self.server_address)
            .finish()
    }
}

impl std::fmt::Debug for Credentials {
    /// The password is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses the first challenge of a `WWW-Authenticate` header; `None` for an unknown scheme.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let params = parse_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        })
    } else {
        None
    }
}

/// `key=value` or `key="quoted, value"` pairs separated by commas.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().trim_start_matches(',').trim().to_string();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.push((key, value));
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// The answer of a token realm (`token` or its OAuth2 spelling `access_token`).
#[derive(Deserialize)]
pub(crate) struct TokenAnswer {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
}

impl TokenAnswer {
    pub(crate) fn into_token(self) -> Option<String> {
        self.token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_auth_reads_and_writes_dockers_x_registry_auth() {
        let auth = RegistryAuth {
            credentials: Credentials::new("lab", "p@ss/word?"),
            server_address: "reg.example:5000".into(),
        };
        let encoded = auth.encode();
        // URL-safe: it travels in an HTTP header in Docker.
        assert!(
            !encoded.contains('+') && !encoded.contains('/'),
            "{encoded}"
        );
        assert_eq!(RegistryAuth::decode(&encoded), Ok(auth.clone()));
        // What Docker's CLI sends (all of AuthConfig's fields, some empty), standard base64.
        let docker = base64::engine::general_purpose::STANDARD.encode(
            r#"{"username":"lab","password":"p@ss/word?","auth":"","email":"","serveraddress":"reg.example:5000","identitytoken":""}"#,
        );
        assert_eq!(RegistryAuth::decode(&docker), Ok(auth));
        // Only `auth` (base64 of user:password), as config.json keeps it.
        let only_auth = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"auth":"dTpw","serveraddress":"r.example"}"#);
        let d = RegistryAuth::decode(&only_auth).expect("auth field");
        assert_eq!(d.credentials, Credentials::new("u", "p"));
        assert!(RegistryAuth::decode("not base64!")
            .unwrap_err()
            .contains("not base64"));
        let no_user = base64::engine::general_purpose::URL_SAFE.encode("{}");
        assert!(RegistryAuth::decode(&no_user)
            .unwrap_err()
            .contains("no username"));
        assert!(
            !format!("{d:?}").contains("\"p\""),
            "the password is never printed"
        );
    }

    #[test]
    fn parses_docker_hub_and_distribution_challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(r#"bearer realm="https://r/t", scope="repository:a/b:pull,push""#),
            Some(Challenge::Bearer {
                realm: "https://r/t".into(),
                service: None,
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None, "no realm");
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(
            parse_challenge(r#"Bearer realm="a\"b",service=s"#),
            Some(Challenge::Bearer {
                realm: "a\"b".into(),
                service: Some("s".into()),
                scope: None,
            })
        );
    }

    #[test]
    fn basic_header_and_debug_hide_nothing_they_should_not() {
        let c = Credentials::new("testuser", "testpassword");
        assert_eq!(c.basic_header(), "Basic dGVzdHVzZXI6dGVzdHBhc3N3b3Jk");
        let shown = format!("{c:?}");
        assert!(
            shown.contains("testuser") && !shown.contains("testpassword"),
            "{shown}"
        );
    }

    #[test]
    fn token_answers_in_both_spellings() {
        let t: TokenAnswer = serde_json::from_str(r#"{"token":"abc"}"#).expect("json");
        assert_eq!(t.into_token().as_deref(), Some("abc"));
        let t: TokenAnswer = serde_json::from_str(r#"{"access_token":"xyz"}"#).expect("json");
        assert_eq!(t.into_token().as_deref(), Some("xyz"));
        let t: TokenAnswer = serde_json::from_str(r#"{"token":""}"#).expect("json");
        assert_eq!(t.into_token(), None);
    }
}
