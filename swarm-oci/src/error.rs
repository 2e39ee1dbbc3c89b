//! Errors of the OCI crate: every message names the object involved and, where there is one, the fix.

/// Result type of this crate.
pub type Result<T, E = OciError> = std::result::Result<T, E>;

/// Everything that can go wrong while building, pushing or pulling an image.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// A digest string is not `sha256:<64 lowercase hex>`.
    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest { input: String, reason: String },

    /// An image reference does not parse.
    #[error("invalid image reference {input:?}: {reason}")]
    InvalidReference { input: String, reason: String },

    /// Content did not hash to the digest it was announced with. Nothing read must be kept.
    #[error(
        "digest mismatch for {what}: expected {expected}, got {actual}; the content was rejected"
    )]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    /// Content had another size than the descriptor said. Nothing read must be kept.
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}{more}; the content was rejected",
        more = if *.truncated { " or more" } else { "" })]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
        /// True when the download was stopped as soon as it went past the expected size.
        truncated: bool,
    },

    /// The registry could not be reached (connection refused, DNS, TLS, timeout), after retries.
    #[error("registry {registry} unreachable: {message}")]
    Unreachable { registry: String, message: String },

    /// The registry answered with an error status. `code` and `message` come from its JSON error
    /// body (`{"errors":[{"code":..,"message":..}]}`) when it sent one.
    #[error("registry {registry}: {request} failed with HTTP {status}: {code}: {message}")]
    Registry {
        registry: String,
        /// `METHOD /v2/...` of the failed request.
        request: String,
        status: u16,
        /// Distribution error code such as `MANIFEST_UNKNOWN`, `NAME_UNKNOWN`, `BLOB_UNKNOWN`;
        /// derived from the status when the body had none.
        code: String,
        message: String,
    },

    /// The registry answered something this client cannot use (missing header, bad JSON ...).
    #[error("registry {registry}: {message}")]
    Protocol { registry: String, message: String },

    /// A manifest of a media type this client does not handle (for example Docker schema 1).
    #[error("unsupported manifest media type {media_type:?} for {what}: only OCI image manifests/indexes and Docker schema 2 manifests/lists are supported")]
    UnsupportedMediaType { what: String, media_type: String },

    /// An image index has no manifest for the wanted platform.
    #[error("image {image} has no manifest for platform {platform} (available: {available})")]
    NoMatchingPlatform {
        image: String,
        platform: String,
        available: String,
    },

    /// JSON of a manifest, index or config does not decode.
    #[error("invalid JSON in {what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    /// The image builder was given inconsistent input.
    #[error("building image: {0}")]
    Build(String),

    /// Local I/O (reading a source file, writing a downloaded blob).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// Starting a local registry process failed.
    #[error("local registry: {0}")]
    LocalRegistry(String),
}

impl OciError {
    /// The registry's error code (`MANIFEST_UNKNOWN`, `NAME_UNKNOWN` ...) when this is a registry error.
    pub fn registry_code(&self) -> Option<&str> {
        match self {
            OciError::Registry { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status when the registry answered with an error.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            OciError::Registry { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when the registry said the manifest, blob or repository does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, OciError::Registry { status: 404, .. })
            || matches!(
                self.registry_code(),
                Some("MANIFEST_UNKNOWN" | "NAME_UNKNOWN" | "BLOB_UNKNOWN")
            )
    }

    /// True when the content failed verification (digest or size).
    pub fn is_verification(&self) -> bool {
        matches!(
            self,
            OciError::DigestMismatch { .. } | OciError::SizeMismatch { .. }
        )
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        OciError::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn json(what: impl Into<String>, source: serde_json::Error) -> Self {
        OciError::Json {
            what: what.into(),
            source,
        }
    }
}
