//! Scoped API tokens: issue, parse, check.

use sha2::{Digest, Sha256};
use std::fmt;

/// What a token may do; each scope includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Status, releases, logs, metrics, the audit log.
    Read,
    /// Also deploy, roll back, restart, start and stop, maintenance, backups and restores.
    Deploy,
    /// Everything: secrets, exec, tokens, destroying an app, the agent itself.
    Admin,
}

impl Scope {
    pub fn allows(self, needed: Scope) -> bool {
        self >= needed
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Deploy => "deploy",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "read" => Ok(Scope::Read),
            "deploy" => Ok(Scope::Deploy),
            "admin" => Ok(Scope::Admin),
            _ => Err(format!("`{text}` is not a scope: read, deploy or admin")),
        }
    }
}

/// A token as stored: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenRecord {
    /// The public part of the token, to find its record.
    pub id: String,
    pub name: String,
    pub scope: Scope,
    /// The one app it may act on, when restricted.
    pub app: Option<String>,
    /// SHA-256 of the whole token, hex.
    pub hash: String,
    pub created_ms: i64,
    pub created_by: String,
    pub expires_ms: Option<i64>,
    pub last_used_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

/// Where tokens are kept.
pub trait TokenStore {
    type Error;
    fn token_by_id(&self, id: &str) -> Result<Option<TokenRecord>, Self::Error>;
}

/// A freshly issued token: `text` is shown once, `record` is stored.
pub struct Issued {
    pub text: String,
    pub record: TokenRecord,
}

const PREFIX: &str = "berth_";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 64;

/// Makes a new token.
pub fn issue(
    name: &str,
    scope: Scope,
    app: Option<String>,
    created_ms: i64,
    created_by: &str,
    expires_ms: Option<i64>,
) -> Issued {
    let id = hex::encode(rand::random::<[u8; ID_LEN / 2]>());
    let secret = hex::encode(rand::random::<[u8; SECRET_LEN / 2]>());
    let text = format!("{PREFIX}{id}_{secret}");
    Issued {
        record: TokenRecord {
            id,
            name: name.to_owned(),
            scope,
            app,
            hash: hash(&text),
            created_ms,
            created_by: created_by.to_owned(),
            expires_ms,
            last_used_ms: None,
            revoked_ms: None,
        },
        text,
    }
}

/// SHA-256 of a token, hex.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The id of a token in berth's form, or `None` for anything else.
pub fn token_id(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    (id.len() == ID_LEN && secret.len() == SECRET_LEN && lower_hex(id) && lower_hex(secret))
        .then_some(id)
}

/// Whom a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (recorded in the audit log).
    pub name: String,
    pub scope: Scope,
    pub app: Option<String>,
}

impl Caller {
    /// Whether this caller may act on `app` (an app-wide token on any).
    pub fn may_touch(&self, app: &str) -> bool {
        self.app.as_deref().is_none_or(|own| own == app)
    }
}

/// Why a token was not accepted. Unknown and wrong tokens are told apart from nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("missing or wrong API token")]
    Unknown,
    #[error("the API token `{name}` was revoked")]
    Revoked { name: String },
    #[error("the API token `{name}` expired")]
    Expired { name: String },
}

/// Checks a presented token against its record (found by `token_id`).
pub fn check(
    record: Option<&TokenRecord>,
    presented: &str,
    now_ms: i64,
) -> Result<Caller, Refusal> {
    let Some(record) = record else {
        return Err(Refusal::Unknown);
    };
    if !constant_time_eq(hash(presented).as_bytes(), record.hash.as_bytes()) {
        return Err(Refusal::Unknown);
    }
    if record.revoked_ms.is_some() {
        return Err(Refusal::Revoked {
            name: record.name.clone(),
        });
    }
    if record.expires_ms.is_some_and(|at| at <= now_ms) {
        return Err(Refusal::Expired {
            name: record.name.clone(),
        });
    }
    Ok(Caller {
        name: record.name.clone(),
        scope: record.scope,
        app: record.app.clone(),
    })
}

/// Why a request's token was not accepted: the token, or the store it is kept in.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("cannot read the API tokens: {0}")]
    Store(String),
}

/// Finds and checks a presented token; also returns its record (for its last use).
pub fn authenticate<S: TokenStore>(
    store: &S,
    presented: &str,
    now_ms: i64,
) -> Result<(Caller, TokenRecord), AuthError>
where
    S::Error: fmt::Display,
{
    let Some(id) = token_id(presented) else {
        return Err(Refusal::Unknown.into());
    };
    let record = store
        .token_by_id(id)
        .map_err(|e| AuthError::Store(e.to_string()))?;
    let caller = check(record.as_ref(), presented, now_ms)?;
    match record {
        Some(record) => Ok((caller, record)),
        None => Err(Refusal::Unknown.into()),
    }
}

/// Compares without stopping at the first difference, so the time taken tells nothing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A token name: lower-case letters, digits, `-`, `_` and `.`, up to 64.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn scopes_include_the_ones_before() {
        assert!(Scope::Admin.allows(Scope::Deploy));
        assert!(Scope::Deploy.allows(Scope::Read));
        assert!(Scope::Deploy.allows(Scope::Deploy));
        assert!(!Scope::Read.allows(Scope::Deploy));
        assert!(!Scope::Deploy.allows(Scope::Admin));
        assert_eq!("deploy".parse(), Ok(Scope::Deploy));
        assert!("root".parse::<Scope>().is_err());
    }

    #[test]
    fn an_issued_token_checks_and_only_its_hash_is_stored() {
        let issued = issue(
            "ci",
            Scope::Deploy,
            Some("shop".into()),
            1_000,
            "root via unix",
            None,
        );
        assert!(issued.text.starts_with("berth_"));
        assert_eq!(token_id(&issued.text), Some(issued.record.id.as_str()));
        assert!(!issued.record.hash.contains(&issued.text[18..]));
        let caller = check(Some(&issued.record), &issued.text, 2_000).unwrap();
        assert_eq!(caller.scope, Scope::Deploy);
        assert!(caller.may_touch("shop") && !caller.may_touch("other"));
        // Another token with the same id, or none, is unknown.
        let last = if issued.text.ends_with('0') { '1' } else { '0' };
        let forged = format!("{}{last}", &issued.text[..issued.text.len() - 1]);
        assert_eq!(
            check(Some(&issued.record), &forged, 2_000),
            Err(Refusal::Unknown)
        );
        assert_eq!(check(None, &issued.text, 2_000), Err(Refusal::Unknown));
        assert_ne!(
            issue("ci", Scope::Read, None, 0, "x", None).text,
            issued.text
        );
    }

    #[test]
    fn revoked_and_expired_tokens_are_refused_by_name() {
        let mut issued = issue("old", Scope::Admin, None, 0, "x", Some(5_000));
        assert!(check(Some(&issued.record), &issued.text, 4_999).is_ok());
        assert_eq!(
            check(Some(&issued.record), &issued.text, 5_000),
            Err(Refusal::Expired { name: "old".into() })
        );
        issued.record.revoked_ms = Some(10);
        assert_eq!(
            check(Some(&issued.record), &issued.text, 0),
            Err(Refusal::Revoked { name: "old".into() })
        );
    }

    #[test]
    fn only_berths_token_form_has_an_id() {
        for bad in [
            "",
            "berth_",
            "berth_0123456789ab",
            "berth_0123456789AB_0000000000000000000000000000000000000000000000000000000000000000",
            "berth_0123456789ab_00",
            "Bearer berth_0123456789ab_0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert_eq!(token_id(bad), None, "{bad}");
        }
        assert_eq!(
            token_id(
                "berth_0123456789ab_0000000000000000000000000000000000000000000000000000000000000000"
            ),
            Some("0123456789ab")
        );
    }

    #[test]
    fn names() {
        assert!(valid_name("github-ci.main"));
        assert!(!valid_name("CI"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
    }
}
