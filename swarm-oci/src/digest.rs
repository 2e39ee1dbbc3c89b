//! Content digests (`sha256:<64 hex>`) and a streaming verifier.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::{OciError, Result};

/// A validated content digest. Only `sha256` is supported (the only algorithm registries and
/// containerd use in practice). Always lowercase hex.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Digest of a byte slice.
    pub fn of(data: &[u8]) -> Digest {
        Digest::from_sha256(Sha256::digest(data).as_slice())
    }

    fn from_sha256(raw: &[u8]) -> Digest {
        let mut s = String::with_capacity(7 + 64);
        s.push_str("sha256:");
        for b in raw {
            s.push(char::from(b"0123456789abcdef"[(b >> 4) as usize]));
            s.push(char::from(b"0123456789abcdef"[(b & 0xf) as usize]));
        }
        Digest(s)
    }

    /// Parse and validate `sha256:<64 lowercase hex>`.
    pub fn parse(input: &str) -> Result<Digest> {
        let bad = |reason: &str| OciError::InvalidDigest {
            input: input.chars().take(200).collect(),
            reason: reason.to_string(),
        };
        let Some((algo, hex)) = input.split_once(':') else {
            return Err(bad("expected ALGORITHM:HEX such as sha256:<64 hex digits>"));
        };
        if algo != "sha256" {
            return Err(bad(&format!(
                "unsupported algorithm {algo:?}: only sha256 is supported"
            )));
        }
        if hex.len() != 64 {
            return Err(bad(&format!(
                "a sha256 digest has 64 hex digits, this one has {}",
                hex.len()
            )));
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("the hex part must be lowercase hexadecimal [0-9a-f]"));
        }
        Ok(Digest(input.to_string()))
    }

    /// `sha256`.
    pub fn algorithm(&self) -> &str {
        "sha256"
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    /// The full `sha256:<hex>` string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

impl FromStr for Digest {
    type Err = OciError;
    fn from_str(s: &str) -> Result<Digest> {
        Digest::parse(s)
    }
}

impl TryFrom<String> for Digest {
    type Error = OciError;
    fn try_from(s: String) -> Result<Digest> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Hashes content as it streams by and checks it against an expected digest (and size, when
/// known). Feed it with [`update`](Self::update) (or as an `std::io::Write`), then call
/// [`finish`](Self::finish): only an `Ok` from `finish` means the content is valid.
///
/// With an expected size, `update` fails as soon as the content grows past it, and checks the
/// digest when the last expected byte arrives, so a caller that forwards chunks only after `update`
/// succeeded never forwards the final chunk of bad content.
#[derive(Clone)]
pub struct DigestVerifier {
    what: String,
    expected: Digest,
    expected_size: Option<u64>,
    hasher: Sha256,
    size: u64,
    failed: bool,
}

impl DigestVerifier {
    /// `what` names the content in error messages (for example `blob sha256:… of repo x`).
    pub fn new(what: impl Into<String>, expected: Digest, expected_size: Option<u64>) -> Self {
        DigestVerifier {
            what: what.into(),
            expected,
            expected_size,
            hasher: Sha256::new(),
            size: 0,
            failed: false,
        }
    }

    /// Bytes seen so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The digest the content must have.
    pub fn expected(&self) -> &Digest {
        &self.expected
    }

    /// Add a chunk. Fails when the content is already longer than the expected size, or when this
    /// chunk completes the expected size and the digest does not match.
    pub fn update(&mut self, chunk: &[u8]) -> Result<()> {
        if self.failed {
            return Err(OciError::DigestMismatch {
                what: self.what.clone(),
                expected: self.expected.to_string(),
                actual: "(verification already failed)".into(),
            });
        }
        self.size += chunk.len() as u64;
        if let Some(expected) = self.expected_size {
            if self.size > expected {
                self.failed = true;
                return Err(OciError::SizeMismatch {
                    what: self.what.clone(),
                    expected,
                    actual: self.size,
                    truncated: true,
                });
            }
        }
        self.hasher.update(chunk);
        if self.expected_size == Some(self.size) && !chunk.is_empty() {
            self.check_digest()?;
        }
        Ok(())
    }

    /// Check the content seen so far is complete and matches. Returns the digest.
    pub fn finish(&mut self) -> Result<Digest> {
        if let Some(expected) = self.expected_size {
            if self.size != expected {
                self.failed = true;
                return Err(OciError::SizeMismatch {
                    what: self.what.clone(),
                    expected,
                    actual: self.size,
                    truncated: false,
                });
            }
        }
        self.check_digest()
    }

    fn check_digest(&mut self) -> Result<Digest> {
        let actual = Digest::from_sha256(self.hasher.clone().finalize().as_slice());
        if actual != self.expected {
            self.failed = true;
            return Err(OciError::DigestMismatch {
                what: self.what.clone(),
                expected: self.expected.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(actual)
    }
}

impl std::io::Write for DigestVerifier {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digest_of_known_values() {
        assert_eq!(Digest::of(b"").as_str(), EMPTY);
        assert_eq!(
            Digest::of(b"abc").hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn parse_good_and_display_round_trip() {
        let d = Digest::parse(EMPTY).expect("valid");
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d.algorithm(), "sha256");
        assert_eq!(d, Digest::of(b""));
        let again: Digest = d.to_string().parse().expect("round trip");
        assert_eq!(again, d);
        let json = serde_json::to_string(&d).expect("serialize");
        assert_eq!(json, format!("\"{EMPTY}\""));
        let back: Digest = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, d);
    }

    #[test]
    fn parse_bad_inputs() {
        let hex = &EMPTY[7..];
        let cases = [
            ("", "ALGORITHM:HEX"),
            ("sha256", "ALGORITHM:HEX"),
            (hex, "ALGORITHM:HEX"),
            ("sha512:abcd", "only sha256"),
            ("md5:abc", "only sha256"),
            ("sha256:", "64 hex digits"),
            ("sha256:abc", "64 hex digits"),
            (&format!("sha256:{hex}0"), "64 hex digits"),
            (&format!("sha256:{}", hex.to_uppercase()), "lowercase"),
            (&format!("sha256:{}g", &hex[..63]), "lowercase"),
            (&format!("sha256:{}é", &hex[..62]), "lowercase"),
            (&format!("SHA256:{hex}"), "only sha256"),
        ];
        for (input, want) in cases {
            let err = Digest::parse(input).expect_err(input);
            let msg = err.to_string();
            assert!(msg.contains(want), "{input:?}: {msg}");
            assert!(msg.contains("invalid digest"), "{msg}");
        }
        assert!(serde_json::from_str::<Digest>("\"sha256:zz\"").is_err());
    }

    #[test]
    fn verifier_accepts_matching_content_in_chunks() {
        let data = b"hello world, in several chunks";
        let mut v = DigestVerifier::new("test blob", Digest::of(data), Some(data.len() as u64));
        for chunk in data.chunks(7) {
            v.update(chunk).expect("chunk");
        }
        assert_eq!(v.finish().expect("valid"), Digest::of(data));
        assert_eq!(v.size(), data.len() as u64);
    }

    #[test]
    fn verifier_rejects_wrong_digest_before_the_last_chunk_is_accepted() {
        let data = b"0123456789";
        let mut v = DigestVerifier::new("test blob", Digest::of(b"other"), Some(10));
        v.update(&data[..5]).expect("first half is not judged yet");
        let err = v
            .update(&data[5..])
            .expect_err("last chunk completes a bad blob");
        assert!(err.is_verification());
        let msg = err.to_string();
        assert!(msg.contains("digest mismatch for test blob"), "{msg}");
        assert!(msg.contains(Digest::of(b"other").as_str()), "{msg}");
        assert!(msg.contains(Digest::of(data).as_str()), "{msg}");
        assert!(
            v.finish().is_err(),
            "finish must not turn a failure into success"
        );
        assert!(v.update(b"").is_err());
    }

    #[test]
    fn verifier_without_size_checks_at_finish() {
        let mut v = DigestVerifier::new("x", Digest::of(b"abc"), None);
        v.update(b"abd").expect("no size known: judged at finish");
        assert!(matches!(v.finish(), Err(OciError::DigestMismatch { .. })));
        let mut v = DigestVerifier::new("x", Digest::of(b"abc"), None);
        std::io::Write::write_all(&mut v, b"abc").expect("write");
        assert!(v.finish().is_ok());
    }

    #[test]
    fn verifier_rejects_short_and_long_content() {
        let mut v = DigestVerifier::new("short", Digest::of(b"abcdef"), Some(6));
        v.update(b"abc").expect("partial");
        let err = v.finish().expect_err("too short");
        assert!(err.to_string().contains("expected 6 bytes, got 3"), "{err}");

        let mut v = DigestVerifier::new("long", Digest::of(b"abc"), Some(3));
        let err = v.update(b"abcd").expect_err("too long");
        assert!(
            err.to_string().contains("expected 3 bytes, got 4 or more"),
            "{err}"
        );
        // Matching size but the digest of other content.
        let mut v = DigestVerifier::new("same size", Digest::of(b"abc"), Some(3));
        assert!(v.update(b"xyz").is_err());
        // Empty blob.
        let mut v = DigestVerifier::new("empty", Digest::of(b""), Some(0));
        assert!(v.finish().is_ok());
    }
}
