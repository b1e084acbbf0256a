//! Who may do what through the agent's API and its console. Console accounts
//! ([`accounts`]): users with a role (viewer, deployer, admin: the token scopes' ladder),
//! argon2id passwords ([`passwords`]) under a policy, lockout after failed logins, sessions
//! and one-time setup and reset links. Scoped API tokens ([`tokens`]): a token is shown to its
//! holder once (`berth_<id>_<secret>`, 256 random bits in the secret) and kept only as its
//! SHA-256 (a token is random, so a fast hash is as strong as a slow one; passwords are not
//! and get argon2id); it is found by its id and compared in constant time. Each has a scope
//! (`read` < `deploy` < `admin`), optionally one app and an expiry, and can be revoked.
//!
//! Must not: know how tokens and accounts are stored (the `TokenStore` and `AccountStore`
//! traits; the agent keeps them in its state file), which API route needs which scope (the
//! agent's router says), or anything of HTTP (the console's crate holds cookies and forms).

pub mod accounts;
pub mod app_login;
pub mod passwords;
pub mod tokens;
pub mod totp;

pub use tokens::{AuthError, Caller, Refusal, Scope, TokenRecord, TokenStore, authenticate};
