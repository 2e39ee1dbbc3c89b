//! Image references: `[HOST[:PORT]/]NAME[:TAG][@sha256:…]`, normalized as Docker does:
//! without a registry host the image is on Docker Hub (`docker.io`, served by
//! [`DOCKER_HUB_ENDPOINT`]), and a one-component Hub name is in `library/`
//! (`nginx` → `docker.io/library/nginx`). `index.docker.io` is the old name of `docker.io`.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::{OciError, Result};

/// Tag used when a reference has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
/// The registry of references without a host (Docker Hub).
pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's old name, normalized to [`DOCKER_HUB`].
pub const DOCKER_HUB_LEGACY: &str = "index.docker.io";
/// Where Docker Hub's distribution API is served (Docker's `registry-1.docker.io`).
pub const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";
/// Repository namespace of Docker Hub's official images.
const OFFICIAL_NAMESPACE: &str = "library";

/// A parsed, normalized image reference. `Display` gives the full form (`docker.io/library/nginx`,
/// no implicit `:latest` added); [`familiar`](Self::familiar) the short form Docker shows.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parse `HOST[:PORT]/NAME[:TAG][@sha256:HEX]`.
    pub fn parse(input: &str) -> Result<Reference> {
        let bad = |reason: String| OciError::InvalidReference {
            input: input.chars().take(300).collect(),
            reason,
        };
        if input.is_empty() {
            return Err(bad(
                "empty reference; expected HOST[:PORT]/NAME[:TAG]".into()
            ));
        }
        if input.len() > 512 {
            return Err(bad(format!("{} characters is too long", input.len())));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(Digest::parse(d).map_err(|e| bad(e.to_string()))?),
            ),
            None => (input, None),
        };
        // A ':' after the last '/' starts the tag (a ':' before it is the registry port).
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if last_slash.is_none_or(|s| colon > s) => {
                (&rest[..colon], Some(&rest[colon + 1..]))
            }
            _ => (rest, None),
        };
        let (host, path) = split_domain(name);
        if host != DOCKER_HUB {
            validate_host(host).map_err(&bad)?;
        }
        let path = if host == DOCKER_HUB && !path.contains('/') {
            if path == name && path.len() == 64 && path.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(
                    "a 64-character hexadecimal repository name is refused (it reads as an image id); write the registry host before it".into(),
                ));
            }
            format!("{OFFICIAL_NAMESPACE}/{path}")
        } else {
            path.to_string()
        };
        let path = path.as_str();
        validate_repository(path).map_err(&bad)?;
        if host.len() + 1 + path.len() > 255 {
            return Err(bad(format!(
                "name {} characters long, at most 255 allowed",
                host.len() + 1 + path.len()
            )));
        }
        if let Some(tag) = tag {
            validate_tag(tag).map_err(&bad)?;
        }
        Ok(Reference {
            registry: host.to_string(),
            repository: path.to_string(),
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// Build a reference from parts (validated like `parse`).
    pub fn new(
        registry: &str,
        repository: &str,
        tag: Option<&str>,
        digest: Option<Digest>,
    ) -> Result<Reference> {
        let mut text = format!("{registry}/{repository}");
        if let Some(tag) = tag {
            text.push(':');
            text.push_str(tag);
        }
        if let Some(d) = &digest {
            text.push('@');
            text.push_str(d.as_str());
        }
        Reference::parse(&text)
    }

    /// `HOST[:PORT]` of the registry.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Repository path inside the registry, for example `swarm/whoami`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag as written, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest as written, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What to ask the registry's `/manifests/<reference>` for: the digest when there is one
    /// (it pins the content), else the tag, else `latest`.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// True when the image is on Docker Hub.
    pub fn is_docker_hub(&self) -> bool {
        self.registry == DOCKER_HUB
    }

    /// Docker's short form: `docker.io/` and `library/` left out (`nginx:1.27`,
    /// `dmcgowan/myapp`), other registries written in full.
    pub fn familiar(&self) -> String {
        let mut out = if self.is_docker_hub() {
            self.repository
                .strip_prefix("library/")
                .filter(|rest| !rest.contains('/'))
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            format!("{}/{}", self.registry, self.repository)
        };
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(d) = &self.digest {
            out.push('@');
            out.push_str(d.as_str());
        }
        out
    }

    /// The reference with `:latest` added when it has neither tag nor digest (Docker's
    /// `TagNameOnly`): what `service create` records.
    pub fn with_default_tag(&self) -> Reference {
        let mut r = self.clone();
        if r.tag.is_none() && r.digest.is_none() {
            r.tag = Some(DEFAULT_TAG.to_string());
        }
        r
    }

    /// The same image pinned to a digest (tag kept for readability).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The same repository with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Result<Reference> {
        Reference::new(&self.registry, &self.repository, Some(tag), None)
    }
}

/// Docker's split of a name into registry and repository path: the first component is a
/// registry when it has a '.' or a ':', is `localhost`, or has an upper-case letter (a
/// repository never has one); otherwise the whole name is on Docker Hub.
fn split_domain(name: &str) -> (&str, &str) {
    let (host, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':', '['])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DOCKER_HUB, name),
    };
    if host == DOCKER_HUB_LEGACY {
        (DOCKER_HUB, path)
    } else {
        (host, path)
    }
}

fn validate_host(host: &str) -> std::result::Result<(), String> {
    let (name, port) = if let Some(stripped) = host.strip_prefix('[') {
        // [IPv6]:port
        let Some((addr, after)) = stripped.split_once(']') else {
            return Err(format!("registry host {host:?} has '[' without ']'"));
        };
        // An address with an optional zone (`fc00::1%eth0`).
        let (addr, zone) = addr.split_once('%').unwrap_or((addr, "x"));
        if addr.is_empty()
            || zone.is_empty()
            || !zone
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
            || !addr
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(format!(
                "registry host {host:?} is not a valid IPv6 address"
            ));
        }
        match after {
            "" => return Ok(()),
            p => match p.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return Err(format!("registry host {host:?}: unexpected text after ']'")),
            },
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(host), None),
        }
    };
    if let Some(name) = name {
        if name.is_empty() {
            return Err(format!("registry host {host:?} has an empty host name"));
        }
        for label in name.split('.') {
            let b = label.as_bytes();
            let ok = !b.is_empty()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-';
            if !ok {
                return Err(format!(
                    "registry host {host:?}: {label:?} is not a valid host name part (letters, digits, inner '-')"
                ));
            }
        }
    }
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "registry host {host:?}: port {port:?} is not a number"
            ));
        }
        match port.parse::<u32>() {
            Ok(p) if (1..=65535).contains(&p) => {}
            _ => {
                return Err(format!(
                    "registry host {host:?}: port {port} is out of range 1-65535"
                ))
            }
        }
    }
    Ok(())
}

/// path-component ('/' path-component)*, path-component = [a-z0-9]+ (separator [a-z0-9]+)*,
/// separator = '.' | '_' | '__' | '-'+.
pub(crate) fn validate_repository(path: &str) -> std::result::Result<(), String> {
    if path.is_empty() {
        return Err("empty repository name after the registry host".into());
    }
    for comp in path.split('/') {
        if comp.is_empty() {
            return Err(format!("repository {path:?} has an empty path component"));
        }
        if comp.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("repository {path:?} must be lowercase"));
        }
        let b = comp.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let mut i = 0;
        let mut ok = !b.is_empty() && alnum(b[0]) && alnum(b[b.len() - 1]);
        while ok && i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            // A separator run.
            let start = i;
            while i < b.len() && !alnum(b[i]) {
                i += 1;
            }
            let sep = &comp[start..i];
            ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
        }
        if !ok {
            return Err(format!(
                "repository path component {comp:?} is invalid: use lowercase letters and digits, separated by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

/// [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
pub(crate) fn validate_tag(tag: &str) -> std::result::Result<(), String> {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = tag.as_bytes();
    if b.is_empty() {
        return Err("empty tag after ':'".into());
    }
    if b.len() > 128 {
        return Err(format!(
            "tag is {} characters long, at most 128 allowed",
            b.len()
        ));
    }
    if !word(b[0]) || !b.iter().all(|&c| word(c) || c == b'.' || c == b'-') {
        return Err(format!(
            "tag {tag:?} is invalid: letters, digits, '_', '.', '-', not starting with '.' or '-'"
        ));
    }
    Ok(())
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl FromStr for Reference {
    type Err = OciError;
    fn from_str(s: &str) -> Result<Reference> {
        Reference::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// input, registry, repository, tag, has digest, manifest reference
    type Case<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, bool, &'a str);

    #[test]
    fn parses_good_references() {
        let cases: &[Case] = &[
            // input, registry, repository, tag, has digest, manifest reference
            (
                "127.0.0.1:5000/whoami",
                "127.0.0.1:5000",
                "whoami",
                None,
                false,
                "latest",
            ),
            (
                "127.0.0.1:5000/whoami:v1",
                "127.0.0.1:5000",
                "whoami",
                Some("v1"),
                false,
                "v1",
            ),
            (
                "localhost/a/b/c:1.0-rc_1",
                "localhost",
                "a/b/c",
                Some("1.0-rc_1"),
                false,
                "1.0-rc_1",
            ),
            (
                "localhost:5000/swarm/busybox",
                "localhost:5000",
                "swarm/busybox",
                None,
                false,
                "latest",
            ),
            (
                "registry.example.com/x__y/a-b--c.d",
                "registry.example.com",
                "x__y/a-b--c.d",
                None,
                false,
                "latest",
            ),
            (
                "[::1]:5000/img:t",
                "[::1]:5000",
                "img",
                Some("t"),
                false,
                "t",
            ),
            ("[fd00::1]/img", "[fd00::1]", "img", None, false, "latest"),
        ];
        for (input, reg, repo, tag, dig, mref) in cases {
            let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry(), *reg, "{input}");
            assert_eq!(r.repository(), *repo, "{input}");
            assert_eq!(r.tag(), *tag, "{input}");
            assert_eq!(r.digest().is_some(), *dig, "{input}");
            assert_eq!(r.manifest_reference(), *mref, "{input}");
            assert_eq!(r.to_string(), *input, "display round-trips");
            assert_eq!(Reference::parse(&r.to_string()).expect("reparse"), r);
        }
    }

    #[test]
    fn parses_digest_references() {
        let r = Reference::parse(&format!("127.0.0.1:5000/whoami@{D}")).expect("digest ref");
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().map(|d| d.as_str()), Some(D));
        assert_eq!(r.manifest_reference(), D);
        let r = Reference::parse(&format!("127.0.0.1:5000/whoami:v2@{D}")).expect("tag+digest");
        assert_eq!(r.tag(), Some("v2"));
        assert_eq!(r.manifest_reference(), D, "digest wins over tag");
        assert_eq!(r.to_string(), format!("127.0.0.1:5000/whoami:v2@{D}"));
        let pinned = Reference::parse("h.io/a:t")
            .expect("ok")
            .with_digest(Digest::of(b""));
        assert_eq!(pinned.to_string(), format!("h.io/a:t@{D}"));
        assert_eq!(pinned.with_tag("u").expect("tag").to_string(), "h.io/a:u");
        let built = Reference::new("h.io:80", "a/b", Some("t"), None).expect("new");
        assert_eq!(built.to_string(), "h.io:80/a/b:t");
    }

    #[test]
    fn rejects_bad_references_with_reasons() {
        let cases = [
            ("", "empty reference"),
            ("127.0.0.1:5000/", "empty repository"),
            ("127.0.0.1:5000/Whoami", "lowercase"),
            ("127.0.0.1:5000/who//ami", "empty path component"),
            ("127.0.0.1:5000/-who", "invalid"),
            ("127.0.0.1:5000/who.", "invalid"),
            ("127.0.0.1:5000/a...b", "invalid"),
            ("127.0.0.1:5000/a___b", "invalid"),
            ("127.0.0.1:5000/a:", "empty tag"),
            ("127.0.0.1:5000/a:.x", "tag \".x\" is invalid"),
            ("127.0.0.1:5000/a:x y", "invalid"),
            ("127.0.0.1:99999/a", "out of range"),
            ("127.0.0.1:0/a", "out of range"),
            ("127.0.0.1:abc/a", "is not a number"),
            ("-bad.host/a", "not a valid host name part"),
            ("bad..host/a", "not a valid host name part"),
            ("[::1/a", "without ']'"),
            ("[zz]/a", "not a valid IPv6"),
            ("127.0.0.1:5000/a@sha256:abc", "64 hex digits"),
            ("127.0.0.1:5000/a@", "invalid digest"),
            ("127.0.0.1:5000/a@@", "invalid digest"),
        ];
        for (input, want) in cases {
            let err = Reference::parse(input).expect_err(input);
            let msg = err.to_string();
            assert!(msg.contains(want), "{input:?}: {msg}");
            assert!(msg.contains("invalid image reference"), "{msg}");
        }
        let long_tag = format!("h.io/a:{}", "t".repeat(129));
        assert!(Reference::parse(&long_tag).is_err());
        let long_name = format!("h.io/{}", "a".repeat(300));
        assert!(Reference::parse(&long_name).is_err());
    }

    /// Docker's own cases (distribution's reference package, normalize_test.go): names that
    /// `ParseNormalizedNamed` accepts and refuses.
    #[test]
    fn accepts_and_refuses_the_names_docker_does() {
        for name in [
            "docker/docker",
            "library/debian",
            "debian",
            "docker.io/docker/docker",
            "docker.io/library/debian",
            "docker.io/debian",
            "index.docker.io/docker/docker",
            "index.docker.io/library/debian",
            "index.docker.io/debian",
            "127.0.0.1:5000/docker/docker",
            "127.0.0.1:5000/library/debian",
            "127.0.0.1:5000/debian",
            "[fc00::1%eth0]:5000/docker/docker",
            "[fc00::1%eth0]:5000/library/debian",
            "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
            "docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
            "docker-rules/docker",
            "docker---rules/docker",
            "doc/docker",
            "d/docker",
            "jess/t",
            "dock__er/docker",
        ] {
            Reference::parse(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        for name in [
            "https://github.com/docker/docker",
            "docker/Docker",
            "-docker",
            "-docker/docker",
            "-docker.io/docker/docker",
            "docker///docker",
            "docker.io/docker/Docker",
            "docker.io/docker///docker",
            "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
            "docker-/docker",
            "-docker-/docker",
            "____/____",
            "_docker/_docker",
            "dock..er/docker",
            "dock_.er/docker",
            "dock-.er/docker",
            "docker/",
        ] {
            assert!(Reference::parse(name).is_err(), "{name} must be refused");
        }
        let long_ns = format!("{}/docker", "this_is_not_a_valid_namespace_".repeat(9));
        assert!(Reference::parse(&long_ns).is_err());
    }

    /// TestParseRepositoryInfo and TestNormalizedSplitHostname: every spelling of a name gives
    /// the same full name, familiar name, registry and path.
    #[test]
    fn normalizes_as_docker_does() {
        // remote path, familiar, full, other spelling, registry
        let cases = [
            (
                "fooo/bar",
                "fooo/bar",
                "docker.io/fooo/bar",
                "index.docker.io/fooo/bar",
                "docker.io",
            ),
            (
                "library/ubuntu",
                "ubuntu",
                "docker.io/library/ubuntu",
                "library/ubuntu",
                "docker.io",
            ),
            (
                "nonlibrary/ubuntu",
                "nonlibrary/ubuntu",
                "docker.io/nonlibrary/ubuntu",
                "",
                "docker.io",
            ),
            (
                "other/library",
                "other/library",
                "docker.io/other/library",
                "",
                "docker.io",
            ),
            (
                "private/moonbase",
                "127.0.0.1:8000/private/moonbase",
                "127.0.0.1:8000/private/moonbase",
                "",
                "127.0.0.1:8000",
            ),
            (
                "privatebase",
                "127.0.0.1:8000/privatebase",
                "127.0.0.1:8000/privatebase",
                "",
                "127.0.0.1:8000",
            ),
            (
                "private/moonbase",
                "example.com/private/moonbase",
                "example.com/private/moonbase",
                "",
                "example.com",
            ),
            (
                "privatebasee",
                "example.com:8000/privatebasee",
                "example.com:8000/privatebasee",
                "",
                "example.com:8000",
            ),
            (
                "library/ubuntu-12.04-base",
                "ubuntu-12.04-base",
                "docker.io/library/ubuntu-12.04-base",
                "index.docker.io/library/ubuntu-12.04-base",
                "docker.io",
            ),
            (
                "library/foo",
                "foo",
                "docker.io/library/foo",
                "docker.io/foo",
                "docker.io",
            ),
            (
                "library/foo/bar",
                "library/foo/bar",
                "docker.io/library/foo/bar",
                "",
                "docker.io",
            ),
            (
                "store/foo/bar",
                "store/foo/bar",
                "docker.io/store/foo/bar",
                "",
                "docker.io",
            ),
            (
                "test_com/foo",
                "test_com/foo",
                "docker.io/test_com/foo",
                "",
                "docker.io",
            ),
            (
                "foo",
                "test-com:8080/foo",
                "test-com:8080/foo",
                "",
                "test-com:8080",
            ),
            (
                "foo",
                "xn--n3h.com:18080/foo",
                "xn--n3h.com:18080/foo",
                "",
                "xn--n3h.com:18080",
            ),
        ];
        for (path, familiar, full, other, registry) in cases {
            for spelling in [familiar, full, other]
                .into_iter()
                .filter(|s| !s.is_empty())
            {
                let r = Reference::parse(spelling).unwrap_or_else(|e| panic!("{spelling}: {e}"));
                assert_eq!(r.familiar(), familiar, "{spelling}");
                assert_eq!(r.to_string(), full, "{spelling}");
                assert_eq!(r.registry(), registry, "{spelling}");
                assert_eq!(r.repository(), path, "{spelling}");
            }
        }
    }

    /// TestParseAnyReference (the named cases) and TestParseReferenceWithTagAndDigest, plus the
    /// issue's own examples.
    #[test]
    fn tags_and_digests_normalize_as_docker_does() {
        let d = "sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c";
        let cases = [
            ("redis".to_string(), "docker.io/library/redis".to_string()),
            (
                "redis:latest".into(),
                "docker.io/library/redis:latest".into(),
            ),
            (
                "docker.io/library/redis:latest".into(),
                "docker.io/library/redis:latest".into(),
            ),
            (format!("redis@{d}"), format!("docker.io/library/redis@{d}")),
            (
                format!("docker.io/library/redis@{d}"),
                format!("docker.io/library/redis@{d}"),
            ),
            ("dmcgowan/myapp".into(), "docker.io/dmcgowan/myapp".into()),
            (
                "dmcgowan/myapp:latest".into(),
                "docker.io/dmcgowan/myapp:latest".into(),
            ),
            (
                "docker.io/mcgowan/myapp:latest".into(),
                "docker.io/mcgowan/myapp:latest".into(),
            ),
            (
                format!("dmcgowan/myapp@{d}"),
                format!("docker.io/dmcgowan/myapp@{d}"),
            ),
            (
                "dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9".into(),
                "docker.io/library/dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9"
                    .into(),
            ),
            ("dbcc1".into(), "docker.io/library/dbcc1".into()),
            (
                format!("busybox:latest@{d}"),
                format!("docker.io/library/busybox:latest@{d}"),
            ),
            ("nginx".into(), "docker.io/library/nginx".into()),
            (
                "library/nginx:1.27".into(),
                "docker.io/library/nginx:1.27".into(),
            ),
            (
                format!("docker.io/library/nginx@{d}"),
                format!("docker.io/library/nginx@{d}"),
            ),
        ];
        for (input, full) in cases {
            let r = Reference::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), full, "{input}");
            assert_eq!(Reference::parse(&full).expect("full form parses"), r);
        }
        let r = Reference::parse(&format!("busybox:latest@{d}")).expect("busybox");
        assert_eq!(r.familiar(), format!("busybox:latest@{d}"));
        let nginx = Reference::parse("nginx").expect("nginx");
        assert_eq!(
            nginx.with_default_tag().to_string(),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(nginx.manifest_reference(), "latest");
        assert!(nginx.is_docker_hub());
        assert!(Reference::parse("busybox")
            .expect("ok")
            .with_tag("-foo")
            .is_err());
    }

    #[test]
    fn never_panics_on_odd_input() {
        for s in [
            ":",
            "/",
            "@",
            ":/",
            "/:",
            "a/:",
            "[",
            "]",
            "[]/a",
            "[]:5/a",
            "é/é",
            "h.io/é",
            "h.io/a:é",
            "h.io/a@sha256",
            "h.io:/a",
            ".:/a",
            "::::/a",
            "h.io/a/b:c/d",
            "\0/\0",
        ] {
            let _ = Reference::parse(s);
        }
        assert!(Reference::parse("h.io/a/b:c/d").is_err());
    }
}
