//! Join tokens: `SWMTKN-1-<sha256 of the root CA DER, base36, 50 chars>-<secret, base36, 25 chars>`.

use super::digest::cert_digest_raw;
use super::CaError;

const PREFIX: &str = "SWMTKN";
const VERSION: &str = "1";
/// Length of a 256-bit digest in base 36, left-padded with '0'.
const DIGEST_LEN: usize = 50;
/// Length of 128 random bits in base 36, left-padded with '0'.
const SECRET_LEN: usize = 25;

/// The two variable parts of a join token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_digest_base36: String,
    pub secret: String,
}

/// A new token for the cluster whose root CA certificate is `root_ca_cert_pem`.
pub fn generate_join_token(root_ca_cert_pem: &str) -> Result<String, CaError> {
    let digest = cert_digest_raw(root_ca_cert_pem)?;
    let secret: [u8; 16] = rand::random();
    Ok(format!(
        "{PREFIX}-{VERSION}-{}-{}",
        base36_padded(&digest, DIGEST_LEN),
        base36_padded(&secret, SECRET_LEN)
    ))
}

/// Splits and checks the format of a token.
pub fn parse_join_token(token: &str) -> Result<JoinToken, CaError> {
    let bad = |why: &str| Err(CaError::InvalidJoinToken(why.to_string()));
    let token = token.trim();
    if token.is_empty() {
        return bad("the token is empty");
    }
    let parts: Vec<&str> = token.split('-').collect();
    if parts.len() != 4 {
        return bad("expected 4 '-'-separated parts: SWMTKN-1-<ca digest>-<secret>");
    }
    if parts[0] != PREFIX {
        return bad("the token does not start with SWMTKN");
    }
    if parts[1] != VERSION {
        return bad("unsupported token version (expected 1)");
    }
    let (digest, secret) = (parts[2], parts[3]);
    if digest.len() != DIGEST_LEN || !is_base36(digest) {
        return bad("the CA digest part must be 50 base-36 characters");
    }
    if secret.len() != SECRET_LEN || !is_base36(secret) {
        return bad("the secret part must be 25 base-36 characters");
    }
    Ok(JoinToken {
        ca_digest_base36: digest.to_string(),
        secret: secret.to_string(),
    })
}

/// Whether the token's digest part is the digest of this root CA certificate.
pub fn token_matches_ca(token: &JoinToken, root_ca_cert_pem: &str) -> bool {
    match cert_digest_raw(root_ca_cert_pem) {
        Ok(d) => tokens_equal(&token.ca_digest_base36, &base36_padded(&d, DIGEST_LEN)),
        Err(_) => false,
    }
}

/// Constant-time comparison (the length is not secret).
pub fn tokens_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn is_base36(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

/// Big-endian bytes as a lower-case base-36 number, left-padded with '0' to `width`.
fn base36_padded(bytes: &[u8], width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut num = bytes.to_vec();
    let mut out = Vec::new();
    while num.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in num.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 36) as u8;
            rem = cur % 36;
        }
        out.push(DIGITS[rem as usize]);
    }
    while out.len() < width {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_matches_known_values() {
        assert_eq!(base36_padded(&[0], 3), "000");
        assert_eq!(base36_padded(&[35], 1), "z");
        assert_eq!(base36_padded(&[36], 1), "10");
        assert_eq!(base36_padded(&[0x01, 0x00], 0), "74"); // 256 = 7*36 + 4
        assert_eq!(base36_padded(&[0xff; 32], 0).len(), 50);
        assert_eq!(base36_padded(&[0xff; 16], 0).len(), 25);
    }

    #[test]
    fn constant_time_compare() {
        assert!(tokens_equal("abc", "abc"));
        assert!(!tokens_equal("abc", "abd"));
        assert!(!tokens_equal("abc", "abcd"));
        assert!(tokens_equal("", ""));
    }
}
