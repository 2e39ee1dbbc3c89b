//! Registry client for the distribution v2 HTTP API: push built images, resolve references,
//! download blobs with digest and size verification.
//!
//! HTTPS by default, trusting the system's roots (`/etc/ssl/certs`, `SSL_CERT_FILE`) and any
//! registry CA given in [`RegistryOptions::ca_pem`]; plain HTTP only for a registry the caller
//! lists as insecure ([`RegistryOptions::insecure`], Docker's `insecure-registries`).
//! `docker.io` is reached at `registry-1.docker.io`. A `401` challenge is answered with the
//! given [`Credentials`] (Basic) or a token fetched from the challenge's realm (Bearer).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use reqwest::header::{
    HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode, Url};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::auth::{parse_challenge, Challenge, Credentials, TokenAnswer};
use crate::build::BuiltImage;
use crate::digest::{Digest, DigestVerifier};
use crate::error::{OciError, Result};
use crate::reference::{self, Reference};
use crate::spec::{media_types, Descriptor, ImageConfig, ImageIndex, ImageManifest, Platform};

/// Largest manifest or index accepted (distribution itself refuses more than 4 MiB).
const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Largest error body read for its message.
const MAX_ERROR_BODY: usize = 64 << 10;

/// Connection settings.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Plain `http://` instead of `https://` (a registry listed as insecure).
    pub insecure: bool,
    /// PEM certificates trusted besides the system's roots (a registry CA).
    pub ca_pem: Option<Vec<u8>>,
    /// Credentials answering the registry's `401` challenge (none: anonymous).
    pub credentials: Option<Credentials>,
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Duration,
    /// Total timeout of small requests (manifests, HEAD, upload start).
    pub request_timeout: Duration,
    /// Longest pause while reading a response body (blob downloads have no total timeout).
    pub read_timeout: Duration,
    /// Attempts per request (connection errors and 5xx answers are retried, nothing else).
    pub attempts: u32,
    /// Pause before the second attempt; doubled for each further one.
    pub backoff: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure: false,
            ca_pem: None,
            credentials: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            attempts: 3,
            backoff: Duration::from_millis(200),
        }
    }
}

/// Where the system's trust roots are (Debian's bundle); `SSL_CERT_FILE` overrides it.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

impl RegistryOptions {
    /// Whether `host` (`HOST[:PORT]`) is reached over plain HTTP: it is in `insecure`
    /// (entries `HOST[:PORT]`; an entry without a port matches every port of that host), or
    /// it is on this machine (`localhost`, 127.0.0.0/8, `[::1]`), which Docker always treats
    /// as insecure.
    pub fn is_insecure(host: &str, insecure: &[String]) -> bool {
        let bare = match host.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        let loopback = bare == "localhost"
            || bare == "[::1]"
            || bare
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| a.is_loopback());
        loopback
            || insecure
                .iter()
                .map(|e| e.trim())
                .any(|e| e == host || e == bare)
    }
}

/// A client for one registry (`HOST[:PORT]`). Cheap to clone (clones share the tokens).
#[derive(Clone, Debug)]
pub struct Registry {
    host: String,
    base: Url,
    client: reqwest::Client,
    opts: RegistryOptions,
    /// `Authorization` values that worked, by repository (`""` for `/v2/`).
    auth: Arc<Mutex<HashMap<String, String>>>,
}

/// A manifest or index as fetched: exact bytes (to store), media type and verified digest.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub media_type: String,
    pub digest: Digest,
    pub bytes: Bytes,
}

impl FetchedManifest {
    /// Descriptor pointing at this manifest.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.bytes.len() as u64,
            urls: None,
            annotations: None,
            platform: None,
        }
    }
}

/// Result of [`Registry::resolve`]: the platform image manifest a reference points to.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The parsed image manifest.
    pub manifest: ImageManifest,
    /// Its exact bytes, media type (OCI or Docker schema 2) and digest.
    pub fetched: FetchedManifest,
    /// The index (or Docker manifest list) the reference pointed to, when there was one.
    pub index: Option<FetchedManifest>,
}

impl Resolved {
    /// Digest of the image manifest (what to pin a task to).
    pub fn digest(&self) -> &Digest {
        &self.fetched.digest
    }
}

/// What [`Registry::push`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushReport {
    pub manifest_digest: Digest,
    /// Blobs (config and layers) that were uploaded.
    pub uploaded: Vec<Digest>,
    /// Blobs the registry already had (found by HEAD), not uploaded again.
    pub skipped: Vec<Digest>,
}

/// Stream of verified blob chunks; see [`Registry::blob_stream`].
pub type BlobStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

impl Registry {
    /// A client for `host_port` (for example `registry.example:5000`) over HTTPS.
    pub fn new(host_port: &str) -> Result<Registry> {
        Registry::with_options(host_port, RegistryOptions::default())
    }

    /// A client for `host_port` over plain HTTP (an insecure registry).
    pub fn insecure(host_port: &str) -> Result<Registry> {
        Registry::with_options(
            host_port,
            RegistryOptions {
                insecure: true,
                ..RegistryOptions::default()
            },
        )
    }

    /// A client for the registry named by an image reference.
    pub fn for_reference(reference: &Reference, opts: RegistryOptions) -> Result<Registry> {
        Registry::with_options(reference.registry(), opts)
    }

    /// A client with explicit options.
    pub fn with_options(host_port: &str, opts: RegistryOptions) -> Result<Registry> {
        // Validate the host the same way references do.
        let parsed =
            Reference::parse(&format!("{host_port}/x")).map_err(|e| OciError::Protocol {
                registry: host_port.to_string(),
                message: format!("invalid registry address (expected HOST[:PORT]): {e}"),
            })?;
        if parsed.registry() != host_port {
            return Err(OciError::Protocol {
                registry: host_port.to_string(),
                message: "invalid registry address (expected HOST[:PORT] with a '.' or ':' in it, or localhost)".into(),
            });
        }
        let scheme = if opts.insecure { "http" } else { "https" };
        let endpoint = if host_port == reference::DOCKER_HUB {
            reference::DOCKER_HUB_ENDPOINT
        } else {
            host_port
        };
        let base =
            Url::parse(&format!("{scheme}://{endpoint}/")).map_err(|e| OciError::Protocol {
                registry: host_port.to_string(),
                message: format!("invalid registry address: {e}"),
            })?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.read_timeout)
            .user_agent(concat!("swarm-oci/", env!("CARGO_PKG_VERSION")));
        if !opts.insecure {
            for cert in trust_roots(host_port, opts.ca_pem.as_deref())? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| OciError::Protocol {
            registry: host_port.to_string(),
            message: format!("cannot create HTTP client: {}", error_chain(&e)),
        })?;
        Ok(Registry {
            host: host_port.to_string(),
            base,
            client,
            opts,
            auth: Arc::default(),
        })
    }

    /// `HOST[:PORT]` this client talks to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `GET /v2/`: succeeds when the registry speaks the v2 API (and needs no authentication).
    pub async fn ping(&self) -> Result<()> {
        let url = self.url("/v2/")?;
        let resp = self.send(Method::GET, url, "GET /v2/", |r| r).await?;
        self.expect_status(resp, "GET /v2/", &[StatusCode::OK])
            .await?;
        Ok(())
    }

    /// `HEAD` a blob: `true` when the repository has it.
    pub async fn has_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        check_repo(&self.host, repo)?;
        let what = format!("HEAD /v2/{repo}/blobs/{digest}");
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"))?;
        let resp = self.send(Method::HEAD, url, &what, |r| r).await?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.status_error(&what, resp).await),
        }
    }

    /// Upload a blob unless the repository already has it (monolithic upload: `POST` an upload
    /// session, then `PUT <location>?digest=…` with the whole content). Returns `true` when it
    /// was uploaded, `false` when skipped. Refuses data that does not match `digest`.
    pub async fn push_blob(&self, repo: &str, digest: &Digest, data: Bytes) -> Result<bool> {
        check_repo(&self.host, repo)?;
        let actual = Digest::of(&data);
        if &actual != digest {
            return Err(OciError::DigestMismatch {
                what: format!("blob to push to {}/{repo}", self.host),
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        if self.has_blob(repo, digest).await? {
            tracing::debug!(registry = %self.host, repo, %digest, "blob already present, skipped");
            return Ok(false);
        }
        let what = format!("POST /v2/{repo}/blobs/uploads/");
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/"))?;
        let resp = self
            .send(Method::POST, url, &what, |r| r.header(CONTENT_LENGTH, "0"))
            .await?;
        let resp = self
            .expect_status(resp, &what, &[StatusCode::ACCEPTED])
            .await?;
        let location =
            header_str(resp.headers(), LOCATION.as_str()).ok_or_else(|| OciError::Protocol {
                registry: self.host.clone(),
                message: format!("{what} answered 202 without a Location header"),
            })?;
        let mut put_url = self.base.join(&location).map_err(|e| OciError::Protocol {
            registry: self.host.clone(),
            message: format!("{what}: bad upload Location {location:?}: {e}"),
        })?;
        put_url
            .query_pairs_mut()
            .append_pair("digest", digest.as_str());
        let what = format!("PUT /v2/{repo}/blobs/uploads/…?digest={digest}");
        let size = data.len() as u64;
        // Allow at least 1 MiB/s on top of the normal request timeout.
        let timeout = self.opts.request_timeout + Duration::from_secs(size >> 20);
        let resp = self
            .send_with_timeout(Method::PUT, put_url, &what, Some(timeout), |r| {
                r.header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, size)
                    .body(data.clone())
            })
            .await?;
        self.expect_status(resp, &what, &[StatusCode::CREATED])
            .await?;
        tracing::debug!(registry = %self.host, repo, %digest, size, "blob uploaded");
        Ok(true)
    }

    /// `PUT` a manifest (or index) under a tag or digest, with its media type as Content-Type.
    /// Returns its digest (checked against the registry's `Docker-Content-Digest`).
    pub async fn push_manifest(
        &self,
        repo: &str,
        tag_or_digest: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest> {
        check_repo(&self.host, repo)?;
        check_manifest_reference(&self.host, tag_or_digest)?;
        let digest = Digest::of(bytes);
        let what = format!("PUT /v2/{repo}/manifests/{tag_or_digest}");
        let url = self.url(&format!("/v2/{repo}/manifests/{tag_or_digest}"))?;
        let body = Bytes::copy_from_slice(bytes);
        let resp = self
            .send(Method::PUT, url, &what, |r| {
                r.header(CONTENT_TYPE, media_type).body(body.clone())
            })
            .await?;
        let resp = self
            .expect_status(resp, &what, &[StatusCode::CREATED])
            .await?;
        if let Some(theirs) = header_str(resp.headers(), "docker-content-digest") {
            if theirs != digest.as_str() {
                return Err(OciError::DigestMismatch {
                    what: format!("manifest pushed to {}/{repo}:{tag_or_digest}", self.host),
                    expected: digest.to_string(),
                    actual: theirs,
                });
            }
        }
        Ok(digest)
    }

    /// Push a built image as `repo:tag`: config and layers first (each skipped when the
    /// registry has it), then the manifest.
    pub async fn push(&self, image: &BuiltImage, repo: &str, tag: &str) -> Result<PushReport> {
        check_repo(&self.host, repo)?;
        check_manifest_reference(&self.host, tag)?;
        let mut report = PushReport {
            manifest_digest: image.manifest_digest.clone(),
            uploaded: Vec::new(),
            skipped: Vec::new(),
        };
        let mut blobs: Vec<(&Digest, &[u8])> = vec![(&image.config_digest, &image.config_bytes)];
        for (desc, data) in &image.layers {
            blobs.push((&desc.digest, data));
        }
        for (digest, data) in blobs {
            if self
                .push_blob(repo, digest, Bytes::copy_from_slice(data))
                .await?
            {
                report.uploaded.push(digest.clone());
            } else {
                report.skipped.push(digest.clone());
            }
        }
        let media_type = image
            .manifest
            .media_type
            .as_deref()
            .unwrap_or(media_types::OCI_MANIFEST);
        let digest = self
            .push_manifest(repo, tag, media_type, &image.manifest_bytes)
            .await?;
        tracing::info!(registry = %self.host, repo, tag, %digest,
            uploaded = report.uploaded.len(), skipped = report.skipped.len(), "image pushed");
        Ok(report)
    }

    /// `GET /v2/<repo>/tags/list`: the repository's tags (`NAME_UNKNOWN` when it does not exist).
    pub async fn list_tags(&self, repo: &str) -> Result<Vec<String>> {
        check_repo(&self.host, repo)?;
        let what = format!("GET /v2/{repo}/tags/list");
        let url = self.url(&format!("/v2/{repo}/tags/list"))?;
        let resp = self.send(Method::GET, url, &what, |r| r).await?;
        let resp = self.expect_status(resp, &what, &[StatusCode::OK]).await?;
        let body = self.read_limited(resp, &what, MAX_MANIFEST_BYTES).await?;
        #[derive(serde::Deserialize)]
        struct Tags {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let tags: Tags = serde_json::from_slice(&body)
            .map_err(|e| OciError::json(format!("tag list of {}/{repo}", self.host), e))?;
        let mut tags = tags.tags.unwrap_or_default();
        tags.sort();
        Ok(tags)
    }

    /// `GET /v2/<repo>/manifests/<tag or digest>` with the OCI and Docker schema 2 media types
    /// accepted. By digest, the content is verified; by tag, the digest is computed and checked
    /// against `Docker-Content-Digest` when the registry sends it.
    pub async fn fetch_manifest(&self, repo: &str, tag_or_digest: &str) -> Result<FetchedManifest> {
        check_repo(&self.host, repo)?;
        check_manifest_reference(&self.host, tag_or_digest)?;
        let what = format!("GET /v2/{repo}/manifests/{tag_or_digest}");
        let url = self.url(&format!("/v2/{repo}/manifests/{tag_or_digest}"))?;
        let resp = self
            .send(Method::GET, url, &what, |r| {
                r.header(ACCEPT, media_types::MANIFEST_ACCEPT)
            })
            .await?;
        let resp = self.expect_status(resp, &what, &[StatusCode::OK]).await?;
        let header_type = header_str(resp.headers(), CONTENT_TYPE.as_str())
            .map(|t| t.split(';').next().unwrap_or("").trim().to_string());
        let header_digest = header_str(resp.headers(), "docker-content-digest");
        let bytes = self.read_limited(resp, &what, MAX_MANIFEST_BYTES).await?;
        let name = format!("manifest {}/{repo}:{tag_or_digest}", self.host);
        let digest = Digest::of(&bytes);
        let expected = if tag_or_digest.contains(':') {
            Some(tag_or_digest.to_string())
        } else {
            header_digest
        };
        if let Some(expected) = expected {
            if expected != digest.as_str() {
                return Err(OciError::DigestMismatch {
                    what: name,
                    expected,
                    actual: digest.to_string(),
                });
            }
        }
        #[derive(serde::Deserialize)]
        struct Probe {
            #[serde(rename = "mediaType")]
            media_type: Option<String>,
            #[serde(rename = "schemaVersion")]
            schema_version: Option<u32>,
            manifests: Option<serde::de::IgnoredAny>,
        }
        let probe: Probe =
            serde_json::from_slice(&bytes).map_err(|e| OciError::json(name.clone(), e))?;
        let media_type = match (probe.media_type, header_type) {
            (Some(t), _) => t,
            // OCI allows omitting mediaType; tell manifest and index apart by shape.
            (None, Some(t)) if media_types::is_manifest(&t) || media_types::is_index(&t) => t,
            (None, _) if probe.schema_version == Some(2) => {
                if probe.manifests.is_some() {
                    media_types::OCI_INDEX.to_string()
                } else {
                    media_types::OCI_MANIFEST.to_string()
                }
            }
            (None, t) => t.unwrap_or_default(),
        };
        if !media_types::is_manifest(&media_type) && !media_types::is_index(&media_type) {
            return Err(OciError::UnsupportedMediaType {
                what: name,
                media_type,
            });
        }
        Ok(FetchedManifest {
            media_type,
            digest,
            bytes,
        })
    }

    /// Resolve a reference to the image manifest for this host's platform (linux/amd64 here),
    /// following an index or manifest list. The reference must name this registry.
    pub async fn resolve(&self, reference: &Reference) -> Result<Resolved> {
        self.resolve_platform(reference, &Platform::host()).await
    }

    /// [`resolve`](Self::resolve) for an explicit platform.
    pub async fn resolve_platform(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<Resolved> {
        if reference.registry() != self.host {
            return Err(OciError::Protocol {
                registry: self.host.clone(),
                message: format!(
                    "image {reference} is on registry {}, not on this one; use Registry::for_reference",
                    reference.registry()
                ),
            });
        }
        let repo = reference.repository();
        let top = self
            .fetch_manifest(repo, &reference.manifest_reference())
            .await?;
        if media_types::is_manifest(&top.media_type) {
            let manifest = parse_manifest(&self.host, reference, &top)?;
            return Ok(Resolved {
                manifest,
                fetched: top,
                index: None,
            });
        }
        let index: ImageIndex = serde_json::from_slice(&top.bytes)
            .map_err(|e| OciError::json(format!("image index of {reference}"), e))?;
        let chosen = index
            .manifests
            .iter()
            .find(|d| {
                media_types::is_manifest(&d.media_type)
                    && d.platform.as_ref().is_some_and(|p| platform.matches(p))
            })
            .ok_or_else(|| OciError::NoMatchingPlatform {
                image: reference.to_string(),
                platform: platform.to_string(),
                available: index
                    .manifests
                    .iter()
                    .map(|d| {
                        d.platform
                            .as_ref()
                            .map_or("(none)".to_string(), |p| p.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let fetched = self.fetch_manifest(repo, chosen.digest.as_str()).await?;
        if fetched.bytes.len() as u64 != chosen.size {
            return Err(OciError::SizeMismatch {
                what: format!("manifest {} of {reference}", chosen.digest),
                expected: chosen.size,
                actual: fetched.bytes.len() as u64,
                truncated: false,
            });
        }
        if !media_types::is_manifest(&fetched.media_type) {
            return Err(OciError::UnsupportedMediaType {
                what: format!("manifest {} of {reference} for {platform}", chosen.digest),
                media_type: fetched.media_type,
            });
        }
        let manifest = parse_manifest(&self.host, reference, &fetched)?;
        Ok(Resolved {
            manifest,
            fetched,
            index: Some(top),
        })
    }

    /// Download and decode the config of a manifest. Returns the parsed config and its exact
    /// (verified) bytes.
    pub async fn fetch_config(
        &self,
        repo: &str,
        manifest: &ImageManifest,
    ) -> Result<(ImageConfig, Bytes)> {
        if !media_types::is_config(&manifest.config.media_type) {
            return Err(OciError::UnsupportedMediaType {
                what: format!("config {} in {}/{repo}", manifest.config.digest, self.host),
                media_type: manifest.config.media_type.clone(),
            });
        }
        let bytes = self.fetch_blob(repo, &manifest.config).await?;
        let config = serde_json::from_slice(&bytes).map_err(|e| {
            OciError::json(
                format!("config {} in {}/{repo}", manifest.config.digest, self.host),
                e,
            )
        })?;
        Ok((config, bytes))
    }

    /// Download a whole blob into memory, verified against the descriptor's digest and size.
    pub async fn fetch_blob(&self, repo: &str, desc: &Descriptor) -> Result<Bytes> {
        let mut stream = self.blob_stream(repo, desc).await?;
        let cap = usize::try_from(desc.size)
            .unwrap_or(usize::MAX)
            .min(64 << 20);
        let mut buf = BytesMut::with_capacity(cap);
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk?);
        }
        Ok(buf.freeze())
    }

    /// Stream a blob. Every chunk is hashed; the stream fails as soon as the content exceeds the
    /// descriptor's size, and the chunk that completes the blob is only yielded after the digest
    /// matched. An `Err` item (always the last) means everything received must be discarded;
    /// the stream ending with `None` means the blob was complete and valid.
    pub async fn blob_stream(&self, repo: &str, desc: &Descriptor) -> Result<BlobStream> {
        check_repo(&self.host, repo)?;
        let what = format!("GET /v2/{repo}/blobs/{}", desc.digest);
        let url = self.url(&format!("/v2/{repo}/blobs/{}", desc.digest))?;
        let resp = self
            .send_with_timeout(Method::GET, url, &what, None, |r| r)
            .await?;
        let resp = self.expect_status(resp, &what, &[StatusCode::OK]).await?;
        let name = format!("blob {} of {}/{repo}", desc.digest, self.host);
        if let Some(len) = resp.content_length() {
            if len != desc.size {
                return Err(OciError::SizeMismatch {
                    what: name,
                    expected: desc.size,
                    actual: len,
                    truncated: false,
                });
            }
        }
        let verifier = DigestVerifier::new(name, desc.digest.clone(), Some(desc.size));
        let host = self.host.clone();
        let inner = resp.bytes_stream().boxed();
        let stream = futures::stream::unfold(
            (inner, verifier, host, false),
            |(mut inner, mut verifier, host, done)| async move {
                if done {
                    return None;
                }
                match inner.next().await {
                    Some(Ok(chunk)) => match verifier.update(&chunk) {
                        Ok(()) => Some((Ok(chunk), (inner, verifier, host, false))),
                        Err(e) => Some((Err(e), (inner, verifier, host, true))),
                    },
                    Some(Err(e)) => {
                        let err = OciError::Unreachable {
                            registry: host.clone(),
                            message: format!(
                                "reading blob {} failed after {} bytes: {}",
                                verifier.expected(),
                                verifier.size(),
                                error_chain(&e)
                            ),
                        };
                        Some((Err(err), (inner, verifier, host, true)))
                    }
                    None => match verifier.finish() {
                        Ok(_) => None,
                        Err(e) => Some((Err(e), (inner, verifier, host, true))),
                    },
                }
            },
        );
        Ok(Box::pin(stream))
    }

    /// Download a blob into `out`, verified (digest and size). Returns the byte count. On `Err`
    /// the bytes already written to `out` are not valid and must be discarded.
    pub async fn download_blob<W>(&self, repo: &str, desc: &Descriptor, out: &mut W) -> Result<u64>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        let mut stream = self.blob_stream(repo, desc).await?;
        let mut n = 0u64;
        let io = |e| OciError::io(format!("writing blob {}", desc.digest), e);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            out.write_all(&chunk).await.map_err(io)?;
            n += chunk.len() as u64;
        }
        out.flush().await.map_err(io)?;
        Ok(n)
    }

    fn url(&self, path: &str) -> Result<Url> {
        self.base.join(path).map_err(|e| OciError::Protocol {
            registry: self.host.clone(),
            message: format!("cannot build URL for {path}: {e}"),
        })
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        what: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        self.send_with_timeout(method, url, what, Some(self.opts.request_timeout), build)
            .await
    }

    /// Send with retries: connection errors, timeouts and 5xx answers are retried with backoff;
    /// any other answer is returned for the caller to judge.
    async fn send_with_timeout(
        &self,
        method: Method,
        url: Url,
        what: &str,
        timeout: Option<Duration>,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let scope_key = repository_of(url.path());
        let mut resp = self
            .send_retrying(&method, &url, what, timeout, &build, &scope_key)
            .await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let challenge = header_str(resp.headers(), WWW_AUTHENTICATE.as_str());
            if let Some(header) = self.answer_challenge(challenge.as_deref(), what).await? {
                lock(&self.auth).insert(scope_key.clone(), header);
                resp = self
                    .send_retrying(&method, &url, what, timeout, &build, &scope_key)
                    .await?;
            }
        }
        Ok(resp)
    }

    /// The `Authorization` value answering a `401` challenge, or `None` when there is nothing
    /// to answer with (the `401` is then the caller's error).
    async fn answer_challenge(
        &self,
        challenge: Option<&str>,
        what: &str,
    ) -> Result<Option<String>> {
        match challenge.and_then(parse_challenge) {
            Some(Challenge::Basic) => Ok(self
                .opts
                .credentials
                .as_ref()
                .map(Credentials::basic_header)),
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let mut url = Url::parse(&realm).map_err(|e| OciError::Protocol {
                    registry: self.host.clone(),
                    message: format!("{what}: token realm {realm:?} is not a URL: {e}"),
                })?;
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(service) = &service {
                        q.append_pair("service", service);
                    }
                    if let Some(scope) = &scope {
                        q.append_pair("scope", scope);
                    }
                }
                let token_what = format!("GET token from {realm} for {what}");
                let mut req = self.client.get(url).timeout(self.opts.request_timeout);
                if let Some(c) = &self.opts.credentials {
                    req = req.header(AUTHORIZATION, c.basic_header());
                }
                let resp = req.send().await.map_err(|e| OciError::Unreachable {
                    registry: self.host.clone(),
                    message: format!("{token_what}: {}", error_chain(&e)),
                })?;
                let resp = self
                    .expect_status(resp, &token_what, &[StatusCode::OK])
                    .await?;
                let body = self.read_limited(resp, &token_what, MAX_ERROR_BODY).await?;
                let answer: TokenAnswer = serde_json::from_slice(&body)
                    .map_err(|e| OciError::json(token_what.clone(), e))?;
                let token = answer.into_token().ok_or_else(|| OciError::Protocol {
                    registry: self.host.clone(),
                    message: format!("{token_what}: the answer has no token"),
                })?;
                Ok(Some(format!("Bearer {token}")))
            }
            None => Ok(None),
        }
    }

    async fn send_retrying(
        &self,
        method: &Method,
        url: &Url,
        what: &str,
        timeout: Option<Duration>,
        build: &impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
        scope_key: &str,
    ) -> Result<reqwest::Response> {
        let attempts = self.opts.attempts.max(1);
        let mut delay = self.opts.backoff;
        let mut attempt = 1;
        let authorization = lock(&self.auth).get(scope_key).cloned();
        loop {
            let mut req = build(self.client.request(method.clone(), url.clone()));
            if let Some(a) = &authorization {
                req = req.header(AUTHORIZATION, a);
            }
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            let last = attempt >= attempts;
            match req.send().await {
                Ok(resp) if resp.status().is_server_error() && !last => {
                    tracing::warn!(registry = %self.host, request = what, status = resp.status().as_u16(),
                        attempt, "registry server error, retrying");
                }
                Ok(resp) => return Ok(resp),
                Err(e) if e.is_builder() => {
                    return Err(OciError::Protocol {
                        registry: self.host.clone(),
                        message: format!("{what}: cannot build request: {}", error_chain(&e)),
                    })
                }
                Err(e) => {
                    let mut detail = if e.is_timeout() {
                        format!("{what}: timed out ({})", error_chain(&e))
                    } else {
                        format!("{what}: {}", error_chain(&e))
                    };
                    if !self.opts.insecure && detail.contains("InvalidContentType") {
                        // rustls's words for a plain-HTTP answer to the TLS handshake.
                        detail.push_str(&format!(
                            " (http: server gave HTTP response to HTTPS client: if {} is meant to be reached over plain HTTP, list it as insecure on the nodes with swarm-agent --insecure-registry {})",
                            self.host, self.host
                        ));
                    }
                    if last {
                        return Err(OciError::Unreachable {
                            registry: self.host.clone(),
                            message: format!("{detail} (after {attempts} attempts)"),
                        });
                    }
                    tracing::warn!(registry = %self.host, request = what, attempt, error = %detail,
                        "registry request failed, retrying");
                }
            }
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2);
            attempt += 1;
        }
    }

    async fn expect_status(
        &self,
        resp: reqwest::Response,
        what: &str,
        ok: &[StatusCode],
    ) -> Result<reqwest::Response> {
        if ok.contains(&resp.status()) {
            Ok(resp)
        } else {
            Err(self.status_error(what, resp).await)
        }
    }

    /// Turn an error answer into [`OciError::Registry`] with the registry's own code and message.
    async fn status_error(&self, what: &str, resp: reqwest::Response) -> OciError {
        let status = resp.status();
        let body = self
            .read_limited(resp, what, MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        let (code, mut message) = parse_error_body(status, &body);
        if status == StatusCode::UNAUTHORIZED {
            message.push_str(if self.opts.credentials.is_some() {
                " (the registry refused the credentials given: log in again with `swarm login`)"
            } else {
                " (no credentials were given: run `swarm login` for this registry and pass --with-registry-auth)"
            });
        }
        OciError::Registry {
            registry: self.host.clone(),
            request: what.to_string(),
            status: status.as_u16(),
            code,
            message,
        }
    }

    async fn read_limited(
        &self,
        resp: reqwest::Response,
        what: &str,
        limit: usize,
    ) -> Result<Bytes> {
        let mut stream = resp.bytes_stream();
        let mut buf = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| OciError::Unreachable {
                registry: self.host.clone(),
                message: format!("{what}: reading the answer failed: {}", error_chain(&e)),
            })?;
            if buf.len() + chunk.len() > limit {
                return Err(OciError::Protocol {
                    registry: self.host.clone(),
                    message: format!("{what}: answer larger than {limit} bytes"),
                });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The repository of a `/v2/<repo>/{manifests,blobs,tags}/…` path (`""` for others): the
/// scope a token is good for.
fn repository_of(path: &str) -> String {
    let Some(rest) = path.strip_prefix("/v2/") else {
        return String::new();
    };
    for marker in ["/manifests/", "/blobs/", "/tags/"] {
        if let Some(i) = rest.find(marker) {
            return rest[..i].to_string();
        }
    }
    String::new()
}

/// The system's trust roots plus `extra` (PEM), for a registry over HTTPS.
fn trust_roots(host: &str, extra: Option<&[u8]>) -> Result<Vec<reqwest::Certificate>> {
    let mut roots = Vec::new();
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| SYSTEM_CA_BUNDLE.into());
    if let Ok(pem) = std::fs::read(&system) {
        // A damaged system bundle is not this registry's problem: the built-in roots remain.
        match reqwest::Certificate::from_pem_bundle(&pem) {
            Ok(certs) => roots.extend(certs),
            Err(e) => {
                tracing::warn!(bundle = %system.display(), "system CA bundle unreadable: {e}")
            }
        }
    }
    if let Some(pem) = extra {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| OciError::Protocol {
            registry: host.to_string(),
            message: format!(
                "the registry CA given is not PEM certificates: {}",
                error_chain(&e)
            ),
        })?;
        if certs.is_empty() {
            return Err(OciError::Protocol {
                registry: host.to_string(),
                message: "the registry CA given holds no PEM certificate".into(),
            });
        }
        roots.extend(certs);
    }
    Ok(roots)
}

fn parse_manifest(
    host: &str,
    reference: &Reference,
    fetched: &FetchedManifest,
) -> Result<ImageManifest> {
    let manifest: ImageManifest = serde_json::from_slice(&fetched.bytes)
        .map_err(|e| OciError::json(format!("manifest {} of {reference}", fetched.digest), e))?;
    if manifest.schema_version != 2 {
        return Err(OciError::Protocol {
            registry: host.to_string(),
            message: format!(
                "manifest {} of {reference} has schemaVersion {}, expected 2",
                fetched.digest, manifest.schema_version
            ),
        });
    }
    Ok(manifest)
}

fn check_repo(host: &str, repo: &str) -> Result<()> {
    reference::validate_repository(repo).map_err(|reason| OciError::InvalidReference {
        input: format!("{host}/{repo}"),
        reason,
    })
}

fn check_manifest_reference(host: &str, r: &str) -> Result<()> {
    if r.contains(':') {
        Digest::parse(r).map(|_| ())
    } else {
        reference::validate_tag(r).map_err(|reason| OciError::InvalidReference {
            input: format!("{host}/…:{r}"),
            reason,
        })
    }
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

/// `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":…}]}` → code and
/// message (several errors joined with `; `). Without such a body, a code derived from the status.
fn parse_error_body(status: StatusCode, body: &[u8]) -> (String, String) {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        detail: Option<serde_json::Value>,
    }
    if let Ok(parsed) = serde_json::from_slice::<Body>(body) {
        if let Some(first) = parsed.errors.first() {
            let messages: Vec<String> = parsed
                .errors
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let mut m = if i == 0 {
                        e.message.clone()
                    } else {
                        format!("{}: {}", e.code, e.message)
                    };
                    match &e.detail {
                        None | Some(serde_json::Value::Null) => {}
                        Some(d) => {
                            let d = d.to_string();
                            let d: String = d.chars().take(300).collect();
                            m.push_str(&format!(" ({d})"));
                        }
                    }
                    m
                })
                .collect();
            return (first.code.clone(), messages.join("; "));
        }
    }
    let code = match status.as_u16() {
        401 => "UNAUTHORIZED",
        403 => "DENIED",
        404 => "NOT_FOUND",
        405 => "UNSUPPORTED",
        429 => "TOOMANYREQUESTS",
        _ => "",
    };
    let code = if code.is_empty() {
        format!("HTTP_{}", status.as_u16())
    } else {
        code.to_string()
    };
    let text = String::from_utf8_lossy(body);
    let text: String = text.trim().chars().take(300).collect();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    (code, message)
}

/// An error and its sources, joined with `: ` (reqwest's own text alone hides the cause).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_give_code_and_message() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"nope"}}]}"#;
        let (code, msg) = parse_error_body(StatusCode::NOT_FOUND, body);
        assert_eq!(code, "MANIFEST_UNKNOWN");
        assert_eq!(msg, r#"manifest unknown ({"Tag":"nope"})"#);

        let body = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"},{"code":"X","message":"y"}]}"#;
        let (code, msg) = parse_error_body(StatusCode::NOT_FOUND, body);
        assert_eq!(code, "NAME_UNKNOWN");
        assert_eq!(msg, "repository name not known to registry; X: y");

        assert_eq!(
            parse_error_body(StatusCode::NOT_FOUND, b""),
            ("NOT_FOUND".to_string(), "not found".to_string())
        );
        assert_eq!(
            parse_error_body(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>"),
            (
                "HTTP_502".to_string(),
                "<html>bad gateway</html>".to_string()
            )
        );
        assert_eq!(
            parse_error_body(StatusCode::UNAUTHORIZED, b"{}").0,
            "UNAUTHORIZED"
        );
    }

    #[test]
    fn registry_addresses_are_validated() {
        assert!(Registry::new("127.0.0.1:5000").is_ok());
        assert!(Registry::new("localhost").is_ok());
        assert!(Registry::new("[::1]:5000").is_ok());
        for bad in ["", "127.0.0.1:5000/x", "http://h:1", "h:99999", "a b"] {
            let err = Registry::new(bad).expect_err(bad);
            assert!(
                err.to_string().contains("invalid registry address"),
                "{bad}: {err}"
            );
        }
    }

    /// Transport policy only (not registry semantics, which the integration tests cover against a
    /// real registry): a TCP server answering every connection with a fixed status line.
    async fn fixed_answer_server(
        status_line: &'static str,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let count = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    if status_line.is_empty() {
                        // Never answer.
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    let body = r#"{"errors":[{"code":"UNAVAILABLE","message":"try later"}]}"#;
                    let resp = format!(
                        "HTTP/1.1 {status_line}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        (addr, count)
    }

    /// A registry answering `401` with a Bearer challenge until it gets the token its realm
    /// hands out for `user:pw` (Docker Hub's flow); counts the token requests.
    async fn token_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let tokens = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = tokens.clone();
        let realm = format!("http://{addr}/token");
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let counter = counter.clone();
                let realm = realm.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let line = req.lines().next().unwrap_or("").to_string();
                    let auth = req
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("authorization")
                                .then(|| v.trim().to_string())
                        })
                        .unwrap_or_default();
                    let basic = Credentials::new("user", "pw").basic_header();
                    let (status, extra, body) = if line.starts_with("GET /token?") {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let scoped = line.contains("scope=repository%3Aa%2Fb%3Apull")
                            && line.contains("service=test-registry");
                        if auth == basic && scoped {
                            ("200 OK", String::new(), r#"{"token":"T0K"}"#.to_string())
                        } else {
                            ("401 Unauthorized", String::new(), "{}".to_string())
                        }
                    } else if auth == "Bearer T0K" {
                        ("200 OK", String::new(), "{}".to_string())
                    } else {
                        (
                            "401 Unauthorized",
                            format!("WWW-Authenticate: Bearer realm=\"{realm}\",service=\"test-registry\",scope=\"repository:a/b:pull\"\r\n"),
                            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_string(),
                        )
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        (addr, tokens)
    }

    #[tokio::test]
    async fn bearer_challenges_are_answered_with_a_token_from_the_realm() {
        use std::sync::atomic::Ordering;
        let (addr, tokens) = token_server().await;
        let opts = RegistryOptions {
            credentials: Some(Credentials::new("user", "pw")),
            ..fast_options()
        };
        let client = Registry::with_options(&addr, opts).expect("client");
        client.list_tags("a/b").await.expect("tags with a token");
        assert_eq!(tokens.load(Ordering::SeqCst), 1);
        // The token is kept for the repository: no second token request.
        client.list_tags("a/b").await.expect("tags again");
        assert_eq!(tokens.load(Ordering::SeqCst), 1, "token reused");

        let anonymous = Registry::with_options(&addr, fast_options()).expect("client");
        let err = anonymous
            .list_tags("a/b")
            .await
            .expect_err("no credentials");
        assert_eq!(err.http_status(), Some(401), "{err}");

        let wrong = RegistryOptions {
            credentials: Some(Credentials::new("user", "nope")),
            ..fast_options()
        };
        let err = Registry::with_options(&addr, wrong)
            .expect("client")
            .list_tags("a/b")
            .await
            .expect_err("refused");
        let msg = err.to_string();
        assert!(
            msg.contains("GET token from") && msg.contains("HTTP 401"),
            "{msg}"
        );
        assert!(msg.contains("refused the credentials"), "{msg}");
    }

    #[test]
    fn loopback_registries_are_insecure_and_others_only_when_listed() {
        let listed = vec!["10.0.0.1:5000".to_string(), "reg.lab".to_string()];
        assert!(RegistryOptions::is_insecure("127.0.0.1:5000", &[]));
        assert!(RegistryOptions::is_insecure("localhost:5000", &[]));
        assert!(RegistryOptions::is_insecure("[::1]:5000", &[]));
        assert!(RegistryOptions::is_insecure("10.0.0.1:5000", &listed));
        assert!(!RegistryOptions::is_insecure("10.0.0.1:5001", &listed));
        assert!(RegistryOptions::is_insecure("reg.lab:443", &listed));
        assert!(!RegistryOptions::is_insecure("docker.io", &listed));
        assert!(!RegistryOptions::is_insecure("10.0.0.1:5000", &[]));
    }

    #[test]
    fn docker_hub_is_reached_at_its_endpoint_over_https() {
        let hub = Registry::new("docker.io").expect("hub");
        assert_eq!(hub.host(), "docker.io");
        assert_eq!(hub.base.as_str(), "https://registry-1.docker.io/");
        let err = Registry::new("nohost").expect_err("not a host");
        assert!(
            err.to_string().contains("invalid registry address"),
            "{err}"
        );
        let err = Registry::with_options(
            "reg.example",
            RegistryOptions {
                ca_pem: Some(b"not pem".to_vec()),
                ..RegistryOptions::default()
            },
        )
        .expect_err("bad CA");
        assert!(err.to_string().contains("registry CA"), "{err}");
    }

    fn fast_options() -> RegistryOptions {
        RegistryOptions {
            backoff: Duration::from_millis(20),
            request_timeout: Duration::from_millis(300),
            insecure: true,
            ..RegistryOptions::default()
        }
    }

    #[tokio::test]
    async fn server_errors_are_retried_three_times_then_reported() {
        let (addr, count) = fixed_answer_server("503 Service Unavailable").await;
        let client = Registry::with_options(&addr, fast_options()).expect("client");
        let err = client.ping().await.expect_err("503");
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(err.http_status(), Some(503));
        assert!(
            err.to_string().contains("HTTP 503: UNAVAILABLE: try later"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn client_errors_are_not_retried() {
        let (addr, count) = fixed_answer_server("404 Not Found").await;
        let client = Registry::with_options(&addr, fast_options()).expect("client");
        let err = client.ping().await.expect_err("404");
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(err.http_status(), Some(404));
    }

    #[tokio::test]
    async fn silent_servers_time_out_as_unreachable() {
        let (addr, count) = fixed_answer_server("").await;
        let client = Registry::with_options(&addr, fast_options()).expect("client");
        let started = std::time::Instant::now();
        let err = client.ping().await.expect_err("timeout");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3);
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("registry {addr} unreachable")),
            "{msg}"
        );
        assert!(msg.contains("timed out"), "{msg}");
    }

    #[test]
    fn registry_error_display_names_everything() {
        let e = OciError::Registry {
            registry: "127.0.0.1:5000".into(),
            request: "GET /v2/x/manifests/nope".into(),
            status: 404,
            code: "MANIFEST_UNKNOWN".into(),
            message: "manifest unknown".into(),
        };
        assert_eq!(
            e.to_string(),
            "registry 127.0.0.1:5000: GET /v2/x/manifests/nope failed with HTTP 404: MANIFEST_UNKNOWN: manifest unknown"
        );
        assert!(e.is_not_found());
        assert_eq!(e.registry_code(), Some("MANIFEST_UNKNOWN"));
    }
}
