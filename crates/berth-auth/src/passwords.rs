//! Passwords: argon2id hashes in PHC form (the parameters travel with each hash, so they can be
//! raised later and old hashes upgraded at the next login), and the policy a new password
//! must meet.

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

/// The parameters new hashes get: argon2id, 19 MiB, two passes, one lane (OWASP's minimum
/// for argon2id), about 30 ms on a small server.
pub fn current_params() -> Params {
    Params::default()
}

fn hasher(params: Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct HashError(String);

/// A PHC string: `$argon2id$v=19$m=19456,t=2,p=1$salt$hash`.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    hasher(current_params())
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Whether `password` matches `stored` (with the parameters recorded in it). A stored value
/// that is not a PHC string matches nothing.
pub fn verify_password(stored: &str, password: &str) -> bool {
    // The verifier takes the parameters from the hash, not from the instance.
    hasher(current_params())
        .verify_password(password.as_bytes(), stored)
        .is_ok()
}

/// Whether a stored hash was made with weaker parameters than new ones get, so it is
/// replaced at the next successful login.
pub fn needs_rehash(stored: &str) -> bool {
    let Ok(parsed) = argon2::password_hash::phc::PasswordHash::new(stored) else {
        return true;
    };
    if parsed.algorithm.as_str() != "argon2id" {
        return true;
    }
    let Ok(params) = Params::try_from(&parsed) else {
        return true;
    };
    let now = current_params();
    params.m_cost() < now.m_cost() || params.t_cost() < now.t_cost()
}

/// A hash of nothing anyone can log in with, verified when the account does not exist so a
/// login takes as long for an unknown name as for a known one.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let random = hex::encode(rand::random::<[u8; 32]>());
        hash_password(&random).unwrap_or_default()
    })
}

/// What a new password must be.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    pub min_length: usize,
    /// Upper and lower case letters, a digit and a symbol (the rule some teams require).
    pub require_classes: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_length: 12,
            require_classes: false,
        }
    }
}

const COMMON: &str = include_str!("common-passwords.txt");

fn is_common(password: &str) -> bool {
    let lower = password.to_lowercase();
    let trimmed = lower.trim_end_matches(|c: char| c.is_ascii_digit() || c.is_ascii_punctuation());
    COMMON
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .any(|common| common == lower || common == trimmed)
}

/// Why a password is refused, in words for the person choosing it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("the password must be at least {0} characters long")]
    TooShort(usize),
    #[error("the password must be at most 1024 characters long")]
    TooLong,
    #[error("the password is one of the passwords attackers try first")]
    Common,
    #[error("the password must not contain the user name")]
    ContainsName,
    #[error("the password needs an upper-case and a lower-case letter, a digit and a symbol")]
    Classes,
}

impl Policy {
    pub fn check(&self, user: &str, password: &str) -> Result<(), PolicyError> {
        let length = password.chars().count();
        if length < self.min_length {
            return Err(PolicyError::TooShort(self.min_length));
        }
        // argon2 takes any length, but a megabyte per login attempt is a cheap attack.
        if password.len() > 1024 {
            return Err(PolicyError::TooLong);
        }
        if is_common(password) {
            return Err(PolicyError::Common);
        }
        if user.len() >= 3 && password.to_lowercase().contains(&user.to_lowercase()) {
            return Err(PolicyError::ContainsName);
        }
        if self.require_classes {
            let has = |test: fn(&char) -> bool| password.chars().any(|c| test(&c));
            if !(has(char::is_ascii_uppercase)
                && has(char::is_ascii_lowercase)
                && has(char::is_ascii_digit)
                && password.chars().any(|c| !c.is_alphanumeric()))
            {
                return Err(PolicyError::Classes);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_hash_records_its_parameters_and_checks_only_its_password() {
        let stored = hash_password("correct horse battery").unwrap();
        assert!(
            stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
        assert!(verify_password(&stored, "correct horse battery"));
        assert!(!verify_password(&stored, "correct horse batterY"));
        assert!(!verify_password("not a hash", "anything"));
        assert!(!needs_rehash(&stored));
        // A hash made with weaker parameters is replaced at the next login.
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8 * 1024, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw")
        .unwrap()
        .to_string();
        assert!(verify_password(&weak, "pw"));
        assert!(needs_rehash(&weak));
        assert!(!verify_password(decoy_hash(), ""));
    }

    #[test]
    fn the_policy_refuses_short_common_and_named_passwords() {
        let policy = Policy::default();
        assert_eq!(
            policy.check("alice", "short"),
            Err(PolicyError::TooShort(12))
        );
        assert_eq!(
            policy.check("alice", "Password123456!"),
            Err(PolicyError::Common)
        );
        assert_eq!(
            policy.check("alice", "QWERTYUIOP"),
            Err(PolicyError::TooShort(12))
        );
        assert_eq!(
            policy.check("alice", "qwertyuiop1234"),
            Err(PolicyError::Common)
        );
        assert_eq!(
            policy.check("alice", "my name is Alice!"),
            Err(PolicyError::ContainsName)
        );
        assert_eq!(policy.check("alice", "tide pool lantern"), Ok(()));
        let strict = Policy {
            require_classes: true,
            ..Policy::default()
        };
        assert_eq!(
            strict.check("alice", "tide pool lantern"),
            Err(PolicyError::Classes)
        );
        assert_eq!(strict.check("alice", "Tide pool lantern 9"), Ok(()));
    }
}
