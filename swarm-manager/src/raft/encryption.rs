//! Encryption at rest of a manager's Raft data, as SwarmKit does it (`manager/deks.go`):
//! every log entry and snapshot is sealed with a random data key (DEK, ChaCha20-Poly1305
//! from `ring`), and the data key is stored wrapped by a key-encryption key (KEK).
//!
//! - Without autolock the KEK is a random key in `raft.kek` beside the wrapped data key
//!   (`raft.dek`), both 0600: a copy of the database alone reveals nothing, a copy of the
//!   whole directory does.
//! - With autolock the KEK is the cluster's unlock key (`SWMKEY-1-…`), held only by the
//!   user: `raft.kek` is removed, and a restarted manager cannot read its Raft data (nor its
//!   TLS key, sealed by [`seal_pem`]) until `swarm unlock` gives the key back.
//!
//! Pure key handling and files; which bytes are sealed is `storage.rs`'s business.

use std::path::{Path, PathBuf};

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// The wrapped data key, inside the Raft state directory.
pub const DEK_FILE: &str = "raft.dek";
/// The key-encryption key while autolock is off.
pub const KEK_FILE: &str = "raft.kek";

const KEY_LEN: usize = 32;
/// Version byte of every sealed value.
const SEALED_V1: u8 = 1;
const UNLOCK_KEY_PREFIX: &str = "SWMKEY-1-";
const SEALED_PEM_PREFIX: &str = "SWARM-SEALED-KEY-1 ";
const AAD_DEK: &[u8] = b"swarm raft data key";
const AAD_PEM: &[u8] = b"swarm node tls key";

/// Docker's error for a locked manager (`errSwarmLocked`), with our CLI's name.
pub const SWARM_LOCKED: &str = "Swarm is encrypted and needs to be unlocked before it can be used. Please use \"swarm unlock\" to unlock it.";
/// Docker's error for a wrong unlock key (`invalidUnlockKey`).
pub const INVALID_UNLOCK_KEY: &str = "swarm could not be unlocked: invalid key provided";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{SWARM_LOCKED}")]
    Locked,
    #[error("{INVALID_UNLOCK_KEY}")]
    InvalidKey,
    #[error("the Raft data key {dek} is wrapped by {kek}, which is missing: restore the state directory from a backup, or remove it and join the cluster again")]
    MissingKek { dek: PathBuf, kek: PathBuf },
    #[error("{path}: {reason}; restore the state directory from a backup, or remove it and join the cluster again")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A sealed value could not be opened: wrong key, or bytes changed.
#[derive(Debug, thiserror::Error)]
#[error("cannot decrypt: wrong key or damaged data")]
pub struct CipherError;

fn random_key() -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut k)
        .expect("the system's random number generator failed");
    k
}

fn seal(key: &[u8; KEY_LEN], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .expect("the system's random number generator failed");
    let sealer = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte key"));
    let mut buf = plain.to_vec();
    sealer
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .expect("sealing in memory cannot fail");
    let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
    out.push(SEALED_V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf);
    out
}

fn open(key: &[u8; KEY_LEN], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CipherError> {
    if sealed.len() < 1 + NONCE_LEN || sealed[0] != SEALED_V1 {
        return Err(CipherError);
    }
    let nonce =
        Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN]).map_err(|_| CipherError)?;
    let opener = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte key"));
    let mut buf = sealed[1 + NONCE_LEN..].to_vec();
    let plain = opener
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| CipherError)?;
    Ok(plain.to_vec())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(s.trim().trim_end_matches('='))
        .ok()
}

/// The key every Raft entry and snapshot of this manager is sealed with.
#[derive(Clone)]
pub struct DataKey([u8; KEY_LEN]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    pub fn generate() -> DataKey {
        DataKey(random_key())
    }

    /// `plain` sealed: version, random nonce, ciphertext and tag; `aad` (where the bytes
    /// live) is authenticated, so sealed bytes moved elsewhere do not open.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        seal(&self.0, aad, plain)
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CipherError> {
        open(&self.0, aad, sealed)
    }
}

/// The cluster's unlock key: the KEK of every manager while autolock is on.
#[derive(Clone, PartialEq, Eq)]
pub struct UnlockKey([u8; KEY_LEN]);

impl std::fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnlockKey(..)")
    }
}

impl UnlockKey {
    pub fn generate() -> UnlockKey {
        UnlockKey(random_key())
    }

    /// SwarmKit's human-readable form: `SWMKEY-1-` and the key in base64 (no padding).
    pub fn human(&self) -> String {
        format!("{UNLOCK_KEY_PREFIX}{}", b64(&self.0))
    }

    /// The key as the user typed it (surrounding whitespace ignored); anything else is
    /// Docker's invalid-key error.
    pub fn parse(s: &str) -> Result<UnlockKey, KeyError> {
        let body = s
            .trim()
            .strip_prefix(UNLOCK_KEY_PREFIX)
            .ok_or(KeyError::InvalidKey)?;
        let bytes = unb64(body).ok_or(KeyError::InvalidKey)?;
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| KeyError::InvalidKey)?;
        Ok(UnlockKey(key))
    }
}

/// `raft.dek`: the data key sealed by the KEK, and which KEK that is.
#[derive(Serialize, Deserialize)]
struct DekFile {
    /// Sealed by the unlock key (autolock) rather than by `raft.kek`.
    locked: bool,
    /// base64 of the sealed data key.
    data_key: String,
}

fn read_dek_file(dir: &Path) -> Result<Option<DekFile>, KeyError> {
    let path = dir.join(DEK_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| KeyError::Corrupt {
            path,
            reason: e.to_string(),
        })
}

/// Writes through a temporary file (0600), fsynced, renamed over the target, the
/// directory fsynced: a crash leaves the old file or the new one.
fn write_private(path: &Path, data: &[u8]) -> Result<(), KeyError> {
    swarm_common::fs::write_durably(path, data, 0o600).map_err(|e| KeyError::Io {
        path: e.path,
        source: e.source,
    })
}

fn read_kek(dir: &Path) -> Result<[u8; KEY_LEN], KeyError> {
    let path = dir.join(KEK_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeyError::MissingKek {
                dek: dir.join(DEK_FILE),
                kek: path,
            })
        }
        Err(e) => return Err(io(&path)(e)),
    };
    unb64(&text)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| KeyError::Corrupt {
            path,
            reason: "not a key".into(),
        })
}

/// Whether the data key in `dir` is wrapped by the unlock key (a manager that needs
/// `swarm unlock` before it starts).
pub fn is_locked(dir: &Path) -> Result<bool, KeyError> {
    Ok(read_dek_file(dir)?.is_some_and(|f| f.locked))
}

/// The data key of the Raft state in `dir`, unwrapped by `raft.kek` or by `unlock`
/// (autolock). A directory without one gets a new data key, wrapped by `unlock` when
/// given, else by a new `raft.kek`.
pub fn load_or_create(dir: &Path, unlock: Option<&UnlockKey>) -> Result<DataKey, KeyError> {
    let dek_path = dir.join(DEK_FILE);
    let Some(file) = read_dek_file(dir)? else {
        let dek = DataKey::generate();
        rewrap(dir, &dek, unlock)?;
        return Ok(dek);
    };
    let sealed = unb64(&file.data_key).ok_or_else(|| KeyError::Corrupt {
        path: dek_path.clone(),
        reason: "not base64".into(),
    })?;
    let kek = if file.locked {
        unlock.ok_or(KeyError::Locked)?.0
    } else {
        read_kek(dir)?
    };
    let plain = open(&kek, AAD_DEK, &sealed).map_err(|_| {
        if file.locked {
            KeyError::InvalidKey
        } else {
            KeyError::Corrupt {
                path: dek_path.clone(),
                reason: format!("does not open with {KEK_FILE}"),
            }
        }
    })?;
    let key: [u8; KEY_LEN] = plain.try_into().map_err(|_| KeyError::Corrupt {
        path: dek_path,
        reason: "the data key has the wrong length".into(),
    })?;
    Ok(DataKey(key))
}

/// Wraps `dek` anew: by `to` (autolock on: `raft.kek` removed once the new wrapping is
/// durable) or by a new random `raft.kek` (autolock off: written before the wrapping that
/// needs it). A crash in between leaves a key that still opens.
pub fn rewrap(dir: &Path, dek: &DataKey, to: Option<&UnlockKey>) -> Result<(), KeyError> {
    let dek_path = dir.join(DEK_FILE);
    let kek_path = dir.join(KEK_FILE);
    match to {
        Some(unlock) => {
            let file = DekFile {
                locked: true,
                data_key: b64(&seal(&unlock.0, AAD_DEK, &dek.0)),
            };
            write_private(&dek_path, &serde_json::to_vec(&file).expect("json"))?;
            match std::fs::remove_file(&kek_path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io(&kek_path)(e)),
            }
        }
        None => {
            let kek = random_key();
            write_private(&kek_path, b64(&kek).as_bytes())?;
            let file = DekFile {
                locked: false,
                data_key: b64(&seal(&kek, AAD_DEK, &dek.0)),
            };
            write_private(&dek_path, &serde_json::to_vec(&file).expect("json"))
        }
    }
}

/// A node's TLS key (PEM) sealed by the unlock key, as the agent stores it under autolock.
pub fn seal_pem(key: &UnlockKey, pem: &str) -> String {
    format!(
        "{SEALED_PEM_PREFIX}{}\n",
        b64(&seal(&key.0, AAD_PEM, pem.as_bytes()))
    )
}

/// Whether a stored TLS key is sealed (autolock).
pub fn is_sealed_pem(text: &str) -> bool {
    text.starts_with(SEALED_PEM_PREFIX)
}

/// The PEM of a stored TLS key: as is when it is not sealed, else opened with `key`.
pub fn open_pem(key: Option<&UnlockKey>, text: &str) -> Result<String, KeyError> {
    let Some(body) = text.strip_prefix(SEALED_PEM_PREFIX) else {
        return Ok(text.to_string());
    };
    let key = key.ok_or(KeyError::Locked)?;
    let sealed = unb64(body).ok_or(KeyError::InvalidKey)?;
    let plain = open(&key.0, AAD_PEM, &sealed).map_err(|_| KeyError::InvalidKey)?;
    String::from_utf8(plain).map_err(|_| KeyError::InvalidKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_only_with_their_key_and_place() {
        let dek = DataKey::generate();
        let sealed = dek.seal(b"here", b"secret bytes");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(dek.open(b"here", &sealed).unwrap(), b"secret bytes");
        assert!(dek.open(b"there", &sealed).is_err());
        assert!(DataKey::generate().open(b"here", &sealed).is_err());
        let mut changed = sealed.clone();
        *changed.last_mut().unwrap() ^= 1;
        assert!(dek.open(b"here", &changed).is_err());
        assert!(dek.open(b"here", &[]).is_err());
    }

    #[test]
    fn unlock_keys_round_trip_in_swarmkit_form_and_bad_input_is_refused() {
        let k = UnlockKey::generate();
        let text = k.human();
        assert!(text.starts_with("SWMKEY-1-"), "{text}");
        assert_eq!(UnlockKey::parse(&format!("  {text}\n")).unwrap(), k);
        for bad in [
            "",
            "SWMKEY-1-",
            "SWMKEY-2-abcd",
            "SWMKEY-1-!!!!",
            &text[..text.len() - 2],
        ] {
            let e = UnlockKey::parse(bad).unwrap_err();
            assert_eq!(e.to_string(), INVALID_UNLOCK_KEY, "{bad:?}");
        }
    }

    #[test]
    fn a_data_key_survives_rewrapping_and_opens_only_with_the_current_kek() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let dek = load_or_create(d, None).unwrap();
        assert!(d.join(KEK_FILE).exists() && !is_locked(d).unwrap());
        let again = load_or_create(d, None).unwrap();
        assert_eq!(dek.0, again.0);

        let first = UnlockKey::generate();
        rewrap(d, &dek, Some(&first)).unwrap();
        assert!(is_locked(d).unwrap() && !d.join(KEK_FILE).exists());
        assert!(matches!(load_or_create(d, None), Err(KeyError::Locked)));
        assert_eq!(load_or_create(d, Some(&first)).unwrap().0, dek.0);

        let second = UnlockKey::generate();
        rewrap(d, &dek, Some(&second)).unwrap();
        let err = load_or_create(d, Some(&first)).unwrap_err();
        assert_eq!(err.to_string(), INVALID_UNLOCK_KEY);
        assert_eq!(load_or_create(d, Some(&second)).unwrap().0, dek.0);

        rewrap(d, &dek, None).unwrap();
        assert!(!is_locked(d).unwrap());
        assert_eq!(load_or_create(d, None).unwrap().0, dek.0);

        std::fs::remove_file(d.join(KEK_FILE)).unwrap();
        let err = load_or_create(d, None).unwrap_err();
        assert!(matches!(err, KeyError::MissingKek { .. }), "{err}");
    }

    #[test]
    fn a_sealed_tls_key_needs_the_unlock_key() {
        let pem = "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n";
        assert_eq!(open_pem(None, pem).unwrap(), pem);
        let k = UnlockKey::generate();
        let sealed = seal_pem(&k, pem);
        assert!(is_sealed_pem(&sealed) && !sealed.contains("PRIVATE KEY"));
        assert!(matches!(open_pem(None, &sealed), Err(KeyError::Locked)));
        assert!(matches!(
            open_pem(Some(&UnlockKey::generate()), &sealed),
            Err(KeyError::InvalidKey)
        ));
        assert_eq!(open_pem(Some(&k), &sealed).unwrap(), pem);
    }
}
