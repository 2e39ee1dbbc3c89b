//! Image references: `HOST[:PORT]/NAME[:TAG]`, `HOST[:PORT]/NAME@sha256:…` or both.
//!
//! There is no default registry (no implicit `docker.io`): the registry host is required.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::{OciError, Result};

/// Tag used when a reference has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";

/// A parsed image reference. `Display` gives back the parsed text (no implicit `:latest` added).
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
        let Some((host, path)) = name.split_once('/') else {
            return Err(bad(no_registry(name)));
        };
        if !looks_like_host(host) {
            return Err(bad(no_registry(name)));
        }
        validate_host(host).map_err(&bad)?;
        validate_repository(path).map_err(&bad)?;
        if name.len() > 255 {
            return Err(bad(format!(
                "name {} characters long, at most 255 allowed",
                name.len()
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

fn no_registry(name: &str) -> String {
    format!(
        "no registry host: write it as HOST[:PORT]/NAME[:TAG], for example 127.0.0.1:5000/{} (there is no default registry)",
        name.trim_start_matches('/')
    )
}

/// Docker's rule: the first component is a registry when it has a '.' or a ':', or is `localhost`.
fn looks_like_host(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost" || first.starts_with('[')
}

fn validate_host(host: &str) -> std::result::Result<(), String> {
    let (name, port) = if let Some(stripped) = host.strip_prefix('[') {
        // [IPv6]:port
        let Some((addr, after)) = stripped.split_once(']') else {
            return Err(format!("registry host {host:?} has '[' without ']'"));
        };
        if addr.is_empty()
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
            ("whoami", "no registry host"),
            ("whoami:v1", "no registry host"),
            ("library/whoami", "no registry host"),
            ("swarm/whoami:latest", "no registry host"),
            ("127.0.0.1:5000", "no registry host"),
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
        let msg = Reference::parse("whoami").expect_err("no host").to_string();
        assert!(msg.contains("there is no default registry"), "{msg}");
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
