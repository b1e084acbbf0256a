//! Who may do what through the agent's API. Today: scoped API tokens. A token is shown to its
//! holder once (`berth_<id>_<secret>`, 256 random bits in the secret) and kept only as its
//! SHA-256 (a token is random, so a fast hash is as strong as a slow one; passwords are not
//! and get argon2id); it is found by its id and compared in constant time. Each has a scope
//! (`read` < `deploy` < `admin`), optionally one app and an expiry, and can be revoked.
//!
//! Must not: know how tokens are stored (the `TokenStore` trait; the agent keeps them in its
//! state file), or which API route needs which scope (the agent's router says).

pub mod tokens;

pub use tokens::{AuthError, Caller, Refusal, Scope, TokenRecord, TokenStore, authenticate};
