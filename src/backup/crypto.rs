//! Keys of an encrypted repository.
//!
//! A random 32-byte master key is made when the repository is created and
//! stored in `config`, wrapped (XChaCha20-Poly1305) by a key-encryption
//! key. The KEK is either the 32 bytes of a key file (hex) or Argon2id of
//! a passphrase with the salt and costs kept in `config`. Changing the
//! passphrase or key file re-wraps the master key only: data stays as it
//! is (see docs/backup.md, "Keys").
//!
//! From the master key two subkeys are derived with BLAKE3's key
//! derivation, so no key is used for two purposes: the AEAD key of every
//! sealed object, and the key of the keyed hash that names chunks (plain
//! BLAKE3 digests would tell anyone who guesses a block's content that
//! the repository holds it).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use thiserror::Error;

pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;

#[derive(Debug, Error)]
pub enum CryptoError {
    #[error("wrong key or passphrase for this repository (the master key does not unwrap)")]
    WrongKey,
    #[error(
        "this repository is encrypted: give --key-file FILE or a passphrase (--passphrase-env VAR)"
    )]
    KeyNeeded,
    #[error("key file {path}: {why}")]
    KeyFile { path: PathBuf, why: String },
    #[error("argon2: {0}")]
    Kdf(String),
    #[error("authentication failed: the data was altered or written with another key")]
    Inauthentic,
}

/// Where the key-encryption key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A file holding 64 hex digits (32 bytes).
    File(PathBuf),
    Passphrase(String),
}

/// Argon2id costs, stored in `config` so the same KEK can be derived
/// again. Defaults follow RFC 9106's second recommendation (64 MiB, t=3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
    pub salt: String,
}

/// What `config` records about encryption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionConfig {
    /// "xchacha20poly1305".
    pub cipher: String,
    /// "keyfile" or "argon2id".
    pub kek: String,
    pub kdf: Option<KdfParams>,
    /// Master key sealed by the KEK, hex (nonce || ciphertext || tag).
    pub wrapped_master: String,
}

/// The subkeys in use; `None` in a `Repo` means not encrypted.
pub struct Keys {
    aead: XChaCha20Poly1305,
    id_key: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    fn from_master(master: &[u8; 32]) -> Keys {
        let aead_key = blake3::derive_key("gentgt repository 2026 aead", master);
        Keys {
            aead: XChaCha20Poly1305::new(&aead_key.into()),
            id_key: blake3::derive_key("gentgt repository 2026 chunk id", master),
        }
    }

    /// The name of a chunk: keyed BLAKE3 of its plaintext.
    pub fn chunk_id(&self, data: &[u8]) -> blake3::Hash {
        blake3::keyed_hash(&self.id_key, data)
    }

    /// nonce || ciphertext || tag, the associated data bound in (what the
    /// object is and its name, so a blob moved elsewhere does not open).
    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> Vec<u8> {
        seal_with(&self.aead, plain, aad)
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open_with(&self.aead, sealed, aad)
    }
}

fn seal_with(c: &XChaCha20Poly1305, plain: &[u8], aad: &[u8]) -> Vec<u8> {
    // Random 192-bit nonces: collisions are negligible even over 2^64
    // messages, so no counter has to survive crashes.
    let nonce: [u8; NONCE_LEN] = rand::random();
    let ct = c
        .encrypt(&XNonce::from(nonce), Payload { msg: plain, aad })
        .expect("XChaCha20-Poly1305 seals any message below 256 GiB");
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

fn open_with(c: &XChaCha20Poly1305, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Inauthentic);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce = XNonce::try_from(nonce).map_err(|_| CryptoError::Inauthentic)?;
    c.decrypt(&nonce, Payload { msg: ct, aad })
        .map_err(|_| CryptoError::Inauthentic)
}

const WRAP_AAD: &[u8] = b"gentgt master key";

fn kek(source: &KeySource, kdf: Option<&KdfParams>) -> Result<XChaCha20Poly1305, CryptoError> {
    let key = match (source, kdf) {
        (KeySource::File(path), _) => read_key_file(path)?,
        (KeySource::Passphrase(p), Some(k)) => argon2id(p, k)?,
        (KeySource::Passphrase(_), None) => {
            return Err(CryptoError::Kdf(
                "the repository uses a key file, not a passphrase".into(),
            ));
        }
    };
    Ok(XChaCha20Poly1305::new(&key.into()))
}

fn read_key_file(path: &PathBuf) -> Result<[u8; 32], CryptoError> {
    let bad = |why: String| CryptoError::KeyFile {
        path: path.clone(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let bytes = hex::decode(text.trim()).map_err(|e| bad(format!("not hex: {e}")))?;
    bytes
        .try_into()
        .map_err(|_| bad("must hold 64 hex digits (32 bytes)".into()))
}

fn argon2id(pass: &str, k: &KdfParams) -> Result<[u8; 32], CryptoError> {
    let params = argon2::Params::new(k.m_kib, k.t, k.p, Some(32))
        .map_err(|e| CryptoError::Kdf(e.to_string()))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = hex::decode(&k.salt).map_err(|e| CryptoError::Kdf(e.to_string()))?;
    let mut out = [0u8; 32];
    a.hash_password_into(pass.as_bytes(), &salt, &mut out)
        .map_err(|e| CryptoError::Kdf(e.to_string()))?;
    Ok(out)
}

/// Write a new random key file (mode 0600); refuses to overwrite one.
pub fn generate_key_file(path: &PathBuf) -> Result<(), CryptoError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key: [u8; 32] = rand::random();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CryptoError::KeyFile {
            path: path.clone(),
            why: e.to_string(),
        })?;
    writeln!(f, "{}", hex::encode(key))
        .and_then(|()| f.sync_all())
        .map_err(|e| CryptoError::KeyFile {
            path: path.clone(),
            why: e.to_string(),
        })
}

/// A new master key wrapped by `source`: the config part and the keys.
pub fn create(
    source: &KeySource,
    kdf_cost: Option<(u32, u32)>,
) -> Result<(EncryptionConfig, Keys), CryptoError> {
    let master: [u8; 32] = rand::random();
    let cfg = wrap(&master, source, kdf_cost)?;
    Ok((cfg, Keys::from_master(&master)))
}

/// Wrap `master` for `source` (used at creation and to change the key).
fn wrap(
    master: &[u8; 32],
    source: &KeySource,
    kdf_cost: Option<(u32, u32)>,
) -> Result<EncryptionConfig, CryptoError> {
    let (m_kib, t) = kdf_cost.unwrap_or((64 * 1024, 3));
    let kdf = match source {
        KeySource::File(_) => None,
        KeySource::Passphrase(_) => Some(KdfParams {
            m_kib,
            t,
            p: 1,
            salt: hex::encode(rand::random::<[u8; 16]>()),
        }),
    };
    let c = kek(source, kdf.as_ref())?;
    Ok(EncryptionConfig {
        cipher: "xchacha20poly1305".into(),
        kek: if kdf.is_some() { "argon2id" } else { "keyfile" }.into(),
        kdf,
        wrapped_master: hex::encode(seal_with(&c, master, WRAP_AAD)),
    })
}

fn unwrap_master(cfg: &EncryptionConfig, source: &KeySource) -> Result<[u8; 32], CryptoError> {
    let c = kek(source, cfg.kdf.as_ref())?;
    let sealed = hex::decode(&cfg.wrapped_master).map_err(|_| CryptoError::WrongKey)?;
    let master = open_with(&c, &sealed, WRAP_AAD).map_err(|_| CryptoError::WrongKey)?;
    master.try_into().map_err(|_| CryptoError::WrongKey)
}

/// The keys of an existing repository, or `WrongKey`.
pub fn unlock(cfg: &EncryptionConfig, source: Option<&KeySource>) -> Result<Keys, CryptoError> {
    let source = source.ok_or(CryptoError::KeyNeeded)?;
    Ok(Keys::from_master(&unwrap_master(cfg, source)?))
}

/// Re-wrap the master key for a new key source (rotation of the KEK).
pub fn rewrap(
    cfg: &EncryptionConfig,
    old: &KeySource,
    new: &KeySource,
    kdf_cost: Option<(u32, u32)>,
) -> Result<EncryptionConfig, CryptoError> {
    wrap(&unwrap_master(cfg, old)?, new, kdf_cost)
}
