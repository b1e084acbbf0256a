//! age keys: the recipients backups are encrypted to and the identities that decrypt them.
//!
//! Every backup is encrypted to the agent's own key (so the agent can verify and restore it)
//! and to the recipients in the manifest (so their owners can restore it without the server,
//! with berth or with the standard `age` tool).

use crate::error::{BackupError, Result};
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

/// A parsed age recipient (`age1...`).
#[derive(Clone)]
pub struct Recipient {
    text: String,
    key: age::x25519::Recipient,
}

impl Recipient {
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let key = age::x25519::Recipient::from_str(text).map_err(|e| {
            BackupError::Invalid(format!(
                "`{text}` is not an age recipient ({e}); it looks like age1… (age-keygen -y \
                 KEYFILE prints yours)"
            ))
        })?;
        Ok(Recipient {
            text: text.to_owned(),
            key,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub(crate) fn age(&self) -> &age::x25519::Recipient {
        &self.key
    }
}

impl std::fmt::Debug for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Identities that may decrypt a backup. Secret: never logged, never stored by berth except
/// the agent's own key file.
#[derive(Clone, Default)]
pub struct Identities {
    keys: Vec<age::x25519::Identity>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identities({} keys)", self.keys.len())
    }
}

/// The secret that authenticates backup records: derived from an age identity, so whoever
/// holds the identity (this server, or the operator with a copy of `backup.key`) can tell a
/// record berth wrote from one planted by someone who can only write to the storage (the
/// recipients, being public, let anyone encrypt a convincing backup).
#[derive(Clone)]
pub struct RecordKey {
    /// A short public name for the key, stored beside each MAC.
    pub id: String,
    secret: [u8; 32],
}

impl std::fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordKey({})", self.id)
    }
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

impl RecordKey {
    fn derive(identity: &age::x25519::Identity) -> Self {
        use hmac::Mac;
        use sha2::Digest;
        let secret_text = identity.to_string();
        let mut kdf =
            <HmacSha256 as hmac::digest::KeyInit>::new_from_slice(b"berth backup record key v1")
                .unwrap_or_else(|_| unreachable_hmac());
        kdf.update(age::secrecy::ExposeSecret::expose_secret(&secret_text).as_bytes());
        let secret: [u8; 32] = kdf.finalize().into_bytes().into();
        let mut id_hash = sha2::Sha256::new();
        id_hash.update(b"berth backup record key id v1");
        id_hash.update(secret);
        let id = hex::encode(&id_hash.finalize()[..8]);
        RecordKey { id, secret }
    }

    /// HMAC-SHA256 of `bytes`, hex.
    pub fn mac(&self, bytes: &[u8]) -> String {
        use hmac::Mac;
        let mut mac = <HmacSha256 as hmac::digest::KeyInit>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable_hmac());
        mac.update(bytes);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether `mac_hex` is this key's MAC of `bytes` (compared in constant time).
    pub fn verifies(&self, bytes: &[u8], mac_hex: &str) -> bool {
        use hmac::Mac;
        // Only the spelling berth writes (64 lower-case hex digits): one record, one form.
        if mac_hex.len() != 64
            || !mac_hex
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return false;
        }
        let Ok(expected) = hex::decode(mac_hex) else {
            return false;
        };
        let mut mac = <HmacSha256 as hmac::digest::KeyInit>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable_hmac());
        mac.update(bytes);
        mac.verify_slice(&expected).is_ok()
    }
}

/// HMAC takes keys of any length; its constructor cannot fail.
fn unreachable_hmac() -> HmacSha256 {
    <HmacSha256 as hmac::digest::KeyInit>::new(&Default::default())
}

impl Identities {
    /// The record keys of these identities; the first signs what this server writes.
    pub fn record_keys(&self) -> Vec<RecordKey> {
        self.keys.iter().map(RecordKey::derive).collect()
    }

    /// Parses an age identity file's text: `AGE-SECRET-KEY-1…` lines, `#` comments.
    pub fn parse(text: &str) -> Result<Self> {
        let mut keys = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = age::x25519::Identity::from_str(line).map_err(|_| {
                BackupError::Invalid(format!(
                    "line {} of the identity is not an age secret key (AGE-SECRET-KEY-1…); \
                     give the file age-keygen wrote",
                    number + 1
                ))
            })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(BackupError::Invalid(
                "the identity holds no age secret key (AGE-SECRET-KEY-1…)".to_owned(),
            ));
        }
        Ok(Identities { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn extend(&mut self, other: &Identities) {
        self.keys.extend(other.keys.iter().cloned());
    }

    /// The public recipients of these identities.
    pub fn recipients(&self) -> Vec<Recipient> {
        self.keys
            .iter()
            .map(|k| {
                let key = k.to_public();
                Recipient {
                    text: key.to_string(),
                    key,
                }
            })
            .collect()
    }

    pub(crate) fn as_age(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.keys.iter().map(|k| k as &dyn age::Identity)
    }
}

/// The agent's own backup key: read from `path`, or created there (mode 0600) on first use.
/// An existing key must be a private regular file of the agent's user (see
/// `berth_fs::read_private`).
pub fn load_or_create_agent_key(path: &Path) -> Result<Identities> {
    match berth_fs::read_private(path, 16 * 1024) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes).map_err(|_| {
                BackupError::Invalid(format!("the backup key {} is not text", path.display()))
            })?;
            Identities::parse(&text).map_err(|e| {
                BackupError::Invalid(format!("the backup key {}: {e}", path.display()))
            })
        }
        Err(berth_fs::FsError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            let key = age::x25519::Identity::generate();
            let text = format!(
                "# berth backup key: decrypts this server's backups. Keep a copy off the \
                 server,\n# or add your own recipient to berth.toml so a lost server does not \
                 lose its backups.\n# public key: {}\n{}\n",
                key.to_public(),
                age::secrecy::ExposeSecret::expose_secret(&key.to_string())
            );
            write_private(path, text.as_bytes())?;
            Identities::parse(&text)
        }
        Err(error) => Err(error.into()),
    }
}

fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| BackupError::io(format!("cannot create {}", dir.display()), e))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| BackupError::io(format!("cannot create {}", path.display()), e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| BackupError::io(format!("cannot write {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_key_is_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backup.key");
        let first = load_or_create_agent_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create_agent_key(&path).unwrap();
        assert_eq!(
            first.recipients()[0].as_str(),
            again.recipients()[0].as_str()
        );
    }

    #[test]
    fn bad_keys_are_refused_with_a_hint() {
        let error = Recipient::parse("ssh-rsa AAAA").unwrap_err().to_string();
        assert!(error.contains("age-keygen -y"), "{error}");
        let error = Identities::parse("# only a comment\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("no age secret key"), "{error}");
        let error = Identities::parse("AGE-SECRET-KEY-1NOPE\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 1"), "{error}");
    }
}
