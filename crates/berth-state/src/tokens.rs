//! API tokens: records of berth_auth's tokens (their hashes, never the tokens).

use super::{Result, StateError, Store, sql};
use berth_auth::{Scope, TokenRecord};
use rusqlite::{OptionalExtension, params};

const COLUMNS: &str = "id, name, scope, app, token_hash, created_at, created_by, expires_at, last_used_at, revoked_at";

fn record(row: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    let scope: String = row.get(2)?;
    Ok(TokenRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        // The table's CHECK admits only the three scopes.
        scope: scope.parse().unwrap_or(Scope::Read),
        app: row.get(3)?,
        hash: row.get(4)?,
        created_ms: row.get(5)?,
        created_by: row.get(6)?,
        expires_ms: row.get(7)?,
        last_used_ms: row.get(8)?,
        revoked_ms: row.get(9)?,
    })
}

impl Store {
    /// Stores a new token; a token of the same name that is not revoked is a conflict.
    pub fn add_token(&self, token: &TokenRecord) -> Result<()> {
        let conn = self.conn();
        let taken: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM api_tokens WHERE name = ?1 AND revoked_at IS NULL)",
                params![token.name],
                |row| row.get(0),
            )
            .map_err(sql("store an API token"))?;
        if taken {
            return Err(StateError::Conflict(format!(
                "an API token named `{}` exists; revoke it first (`berth tokens revoke {}`) or pick another name",
                token.name, token.name
            )));
        }
        conn.execute(
            &format!("INSERT INTO api_tokens ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
            params![
                token.id,
                token.name,
                token.scope.as_str(),
                token.app,
                token.hash,
                token.created_ms,
                token.created_by,
                token.expires_ms,
                token.last_used_ms,
                token.revoked_ms
            ],
        )
        .map(|_| ())
        .map_err(|error| match error.sqlite_error_code() {
            // Another request took the name between the check and the insert.
            Some(rusqlite::ErrorCode::ConstraintViolation) => StateError::Conflict(format!(
                "an API token named `{}` exists; revoke it first or pick another name",
                token.name
            )),
            _ => sql("store an API token")(error),
        })
    }

    pub fn token_by_id(&self, id: &str) -> Result<Option<TokenRecord>> {
        self.conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM api_tokens WHERE id = ?1"),
                params![id],
                record,
            )
            .optional()
            .map_err(sql("read an API token"))
    }

    /// Every token, revoked ones too, newest first.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let conn = self.conn();
        let mut statement = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM api_tokens ORDER BY created_at DESC, rowid DESC"
            ))
            .map_err(sql("list API tokens"))?;
        let rows = statement
            .query_map([], record)
            .map_err(sql("list API tokens"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql("list API tokens"))
    }

    /// Revokes the live token of that name; false when there is none.
    pub fn revoke_token(&self, name: &str, at: i64) -> Result<bool> {
        self.conn()
            .execute(
                "UPDATE api_tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
                params![name, at],
            )
            .map(|n| n > 0)
            .map_err(sql("revoke an API token"))
    }

    pub fn touch_token(&self, id: &str, at: i64) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1",
                params![id, at],
            )
            .map(|_| ())
            .map_err(sql("note an API token's use"))
    }
}

impl berth_auth::TokenStore for Store {
    type Error = StateError;
    fn token_by_id(&self, id: &str) -> Result<Option<TokenRecord>> {
        Store::token_by_id(self, id)
    }
}
