//! Secrets at rest: each value is encrypted with age to the agent's own X25519 key, kept in
//! `secrets.key` in the data directory (mode 0600). Plaintext exists only in memory and in
//! the containers that receive it.

use age::secrecy::ExposeSecret;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the secrets key {path}: {message}")]
    KeyUnreadable { path: String, message: String },
    #[error(
        "the secrets key {path} is malformed; restore it from a backup (without it no stored secret can be decrypted)"
    )]
    KeyMalformed { path: String },
    #[error(
        "the secrets key {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`"
    )]
    KeyExposed { path: String, mode: u32 },
    #[error("cannot encrypt a secret: {0}")]
    Encrypt(String),
    #[error("secret {name} cannot be decrypted with this agent's key: {message}")]
    Decrypt { name: String, message: String },
}

pub struct SecretBox {
    identity: age::x25519::Identity,
}

impl SecretBox {
    /// HMAC-SHA256 of `material` (hex, 24 digits) under a key derived from the secrets key:
    /// for container labels that must change with secret values without revealing them.
    pub fn label_digest(&self, material: &[u8]) -> String {
        use hmac::Mac;
        type HmacSha256 = hmac::Hmac<sha2::Sha256>;
        let derive = |key: &[u8], data: &[u8]| {
            let mut mac = <HmacSha256 as hmac::digest::KeyInit>::new_from_slice(key)
                .unwrap_or_else(
                    |_| <HmacSha256 as hmac::digest::KeyInit>::new(&Default::default()),
                );
            mac.update(data);
            mac.finalize().into_bytes()
        };
        let secret = self.identity.to_string();
        let key = derive(
            b"berth container label key v1",
            secret.expose_secret().as_bytes(),
        );
        hex::encode(&derive(&key, material)[..12])
    }

    /// Loads the key from `path`, creating it (mode 0600) on first start.
    pub fn open(path: &Path) -> Result<Self, SecretError> {
        let display = path.display().to_string();
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 && meta.is_file() => {
                Err(SecretError::KeyExposed {
                    path: display,
                    mode: meta.permissions().mode() & 0o777,
                })
            }
            Ok(_) => {
                let text = berth_fs::read_private(path, 4096)
                    .map_err(|e| SecretError::KeyUnreadable {
                        path: display.clone(),
                        message: e.to_string(),
                    })
                    .and_then(|bytes| {
                        String::from_utf8(bytes).map_err(|_| SecretError::KeyMalformed {
                            path: display.clone(),
                        })
                    })?;
                let line = text
                    .lines()
                    .find(|l| l.starts_with("AGE-SECRET-KEY-"))
                    .unwrap_or("");
                let identity = line
                    .parse()
                    .map_err(|_| SecretError::KeyMalformed { path: display })?;
                Ok(Self { identity })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let identity = age::x25519::Identity::generate();
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| SecretError::KeyUnreadable {
                        path: display.clone(),
                        message: e.to_string(),
                    })?;
                let contents = format!(
                    "# berth secrets key: decrypts this agent's stored secrets. Back it up; keep it private.\n# public key: {}\n{}\n",
                    identity.to_public(),
                    identity.to_string().expose_secret()
                );
                file.write_all(contents.as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(|e| SecretError::KeyUnreadable {
                        path: display,
                        message: e.to_string(),
                    })?;
                Ok(Self { identity })
            }
            Err(e) => Err(SecretError::KeyUnreadable {
                path: display,
                message: e.to_string(),
            }),
        }
    }

    pub fn seal(&self, plaintext: &str) -> Result<Vec<u8>, SecretError> {
        age::encrypt(&self.identity.to_public(), plaintext.as_bytes())
            .map_err(|e| SecretError::Encrypt(e.to_string()))
    }

    pub fn open_value(&self, name: &str, ciphertext: &[u8]) -> Result<String, SecretError> {
        let bytes = age::decrypt(&self.identity, ciphertext).map_err(|e| SecretError::Decrypt {
            name: name.to_owned(),
            message: e.to_string(),
        })?;
        String::from_utf8(bytes).map_err(|_| SecretError::Decrypt {
            name: name.to_owned(),
            message: "the value is not UTF-8".into(),
        })
    }
}

/// 32 random bytes as 64 hex characters.
pub fn generate_value() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_digests_follow_values_and_need_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let ours = SecretBox::open(&dir.path().join("a.key")).unwrap();
        let theirs = SecretBox::open(&dir.path().join("b.key")).unwrap();
        let digest = ours.label_digest(b"postgres:16 POSTGRES_PASSWORD=hunter2");
        assert_eq!(digest.len(), 24);
        assert_eq!(
            digest,
            ours.label_digest(b"postgres:16 POSTGRES_PASSWORD=hunter2")
        );
        assert_ne!(
            digest,
            ours.label_digest(b"postgres:16 POSTGRES_PASSWORD=hunter3")
        );
        assert_ne!(
            digest,
            theirs.label_digest(b"postgres:16 POSTGRES_PASSWORD=hunter2"),
            "without the key, a guess cannot be checked against the label"
        );
        use sha2::Digest;
        let plain =
            hex::encode(&sha2::Sha256::digest(b"postgres:16 POSTGRES_PASSWORD=hunter2")[..12]);
        assert_ne!(digest, plain);
    }

    #[test]
    fn values_round_trip_and_the_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let sealed = SecretBox::open(&path).unwrap().seal("hunter2").unwrap();
        assert!(
            !sealed.windows(7).any(|w| w == b"hunter2"),
            "ciphertext does not contain the value"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let reopened = SecretBox::open(&path).unwrap();
        assert_eq!(reopened.open_value("X", &sealed).unwrap(), "hunter2");
    }

    #[test]
    fn another_key_cannot_decrypt_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let sealed = SecretBox::open(&dir.path().join("a.key"))
            .unwrap()
            .seal("v")
            .unwrap();
        let other = SecretBox::open(&dir.path().join("b.key")).unwrap();
        let error = other.open_value("JWT", &sealed).unwrap_err().to_string();
        assert!(error.contains("secret JWT cannot be decrypted"), "{error}");
    }

    #[test]
    fn an_exposed_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        SecretBox::open(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = SecretBox::open(&path).err().unwrap().to_string();
        assert!(error.contains("chmod 600"), "{error}");
    }

    #[test]
    fn generated_values_are_64_hex_characters() {
        let value = generate_value();
        assert_eq!(value.len(), 64);
        assert!(value.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(value, generate_value());
    }
}
