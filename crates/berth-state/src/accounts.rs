//! Console accounts: berth_auth's users, sessions and one-time links.

use super::{Result, StateError, Store, sql};
use berth_auth::accounts::{
    AccountStore, LinkPurpose, LinkRecord, Role, SessionRecord, UserRecord, UserStatus,
};
use rusqlite::{OptionalExtension, params};

const USER_COLUMNS: &str = "name, role, status, password_hash, created_at, created_by, failed_logins, locked_until, last_login_at, totp_secret, totp_pending, totp_last_step, recovery_codes";
const SESSION_COLUMNS: &str = "id_hash, user_name, csrf, created_at, last_seen_at, ip, user_agent, second_factor_pending, host, second_factor";

fn secret_column(secret: Option<&Vec<u8>>) -> Option<String> {
    secret.map(|s| berth_auth::totp::secret_text(s))
}

fn secret_value(text: Option<String>) -> Option<Vec<u8>> {
    text.and_then(|t| berth_auth::totp::secret_from_text(&t))
}
const LINK_COLUMNS: &str = "id_hash, user_name, purpose, created_at, expires_at, used_at";

fn user(row: &rusqlite::Row<'_>) -> rusqlite::Result<UserRecord> {
    let role: String = row.get(1)?;
    let status: String = row.get(2)?;
    Ok(UserRecord {
        name: row.get(0)?,
        // The table's CHECKs admit only what parses; a stranger value reads as the least.
        role: role.parse().unwrap_or(Role::Viewer),
        status: status.parse().unwrap_or(UserStatus::Disabled),
        password_hash: row.get(3)?,
        created_ms: row.get(4)?,
        created_by: row.get(5)?,
        failed_logins: row.get(6)?,
        locked_until_ms: row.get(7)?,
        last_login_ms: row.get(8)?,
        totp_secret: secret_value(row.get(9)?),
        totp_pending: secret_value(row.get(10)?),
        totp_last_step: row.get(11)?,
        recovery_codes: row
            .get::<_, String>(12)?
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

fn session(row: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        id_hash: row.get(0)?,
        user: row.get(1)?,
        csrf: row.get(2)?,
        created_ms: row.get(3)?,
        last_seen_ms: row.get(4)?,
        ip: row.get(5)?,
        user_agent: row.get(6)?,
        second_factor_pending: row.get(7)?,
        host: row.get(8)?,
        second_factor: row.get(9)?,
    })
}

fn link(row: &rusqlite::Row<'_>) -> rusqlite::Result<LinkRecord> {
    let purpose: String = row.get(2)?;
    Ok(LinkRecord {
        id_hash: row.get(0)?,
        user: row.get(1)?,
        purpose: purpose.parse().unwrap_or(LinkPurpose::Reset),
        created_ms: row.get(3)?,
        expires_ms: row.get(4)?,
        used_ms: row.get(5)?,
    })
}

impl AccountStore for Store {
    type Error = StateError;

    fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        self.conn()
            .query_row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE name = ?1"),
                params![name],
                user,
            )
            .optional()
            .map_err(sql("read a user"))
    }

    fn users(&self) -> Result<Vec<UserRecord>> {
        let conn = self.conn();
        let mut statement = conn
            .prepare(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY name"))
            .map_err(sql("list users"))?;
        let rows = statement.query_map([], user).map_err(sql("list users"))?;
        rows.collect::<Result<_, _>>().map_err(sql("list users"))
    }

    fn insert_user(&self, record: &UserRecord) -> Result<bool> {
        let inserted = self
            .conn()
            .execute(
                &format!(
                    "INSERT INTO users ({USER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) ON CONFLICT (name) DO NOTHING"
                ),
                params![
                    record.name,
                    record.role.as_str(),
                    record.status.as_str(),
                    record.password_hash,
                    record.created_ms,
                    record.created_by,
                    record.failed_logins,
                    record.locked_until_ms,
                    record.last_login_ms,
                    secret_column(record.totp_secret.as_ref()),
                    secret_column(record.totp_pending.as_ref()),
                    record.totp_last_step,
                    record.recovery_codes.join("\n")
                ],
            )
            .map_err(sql("add a user"))?;
        Ok(inserted > 0)
    }

    fn update_user(&self, record: &UserRecord) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE users SET role = ?2, status = ?3, password_hash = ?4, failed_logins = ?5, locked_until = ?6, last_login_at = ?7, totp_secret = ?8, totp_pending = ?9, totp_last_step = ?10, recovery_codes = ?11 WHERE name = ?1",
                params![
                    record.name,
                    record.role.as_str(),
                    record.status.as_str(),
                    record.password_hash,
                    record.failed_logins,
                    record.locked_until_ms,
                    record.last_login_ms,
                    secret_column(record.totp_secret.as_ref()),
                    secret_column(record.totp_pending.as_ref()),
                    record.totp_last_step,
                    record.recovery_codes.join("\n")
                ],
            )
            .map(|_| ())
            .map_err(sql("update a user"))
    }

    fn delete_user(&self, name: &str) -> Result<()> {
        // Sessions and links go with it (ON DELETE CASCADE).
        self.conn()
            .execute("DELETE FROM users WHERE name = ?1", params![name])
            .map(|_| ())
            .map_err(sql("remove a user"))
    }

    fn delete_links_of(&self, name: &str) -> Result<()> {
        self.conn()
            .execute(
                "DELETE FROM account_links WHERE user_name = ?1",
                params![name],
            )
            .map(|_| ())
            .map_err(sql("spend a user's links"))
    }

    fn insert_session(&self, record: &SessionRecord) -> Result<()> {
        self.conn()
            .execute(
                &format!(
                    "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                ),
                params![
                    record.id_hash,
                    record.user,
                    record.csrf,
                    record.created_ms,
                    record.last_seen_ms,
                    record.ip,
                    record.user_agent,
                    record.second_factor_pending,
                    record.host,
                    record.second_factor
                ],
            )
            .map(|_| ())
            .map_err(sql("open a session"))
    }

    fn session(&self, id_hash: &str) -> Result<Option<SessionRecord>> {
        self.conn()
            .query_row(
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id_hash = ?1"),
                params![id_hash],
                session,
            )
            .optional()
            .map_err(sql("read a session"))
    }

    fn touch_session(&self, id_hash: &str, at_ms: i64) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE sessions SET last_seen_at = ?2 WHERE id_hash = ?1",
                params![id_hash, at_ms],
            )
            .map(|_| ())
            .map_err(sql("note a session's use"))
    }

    fn delete_session(&self, id_hash: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM sessions WHERE id_hash = ?1", params![id_hash])
            .map(|_| ())
            .map_err(sql("end a session"))
    }

    fn delete_sessions_of(&self, name: &str) -> Result<usize> {
        self.conn()
            .execute("DELETE FROM sessions WHERE user_name = ?1", params![name])
            .map_err(sql("end a user's sessions"))
    }

    fn insert_link(&self, record: &LinkRecord) -> Result<()> {
        self.conn()
            .execute(
                &format!(
                    "INSERT INTO account_links ({LINK_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                ),
                params![
                    record.id_hash,
                    record.user,
                    record.purpose.as_str(),
                    record.created_ms,
                    record.expires_ms,
                    record.used_ms
                ],
            )
            .map(|_| ())
            .map_err(sql("store a one-time link"))
    }

    fn link(&self, id_hash: &str) -> Result<Option<LinkRecord>> {
        self.conn()
            .query_row(
                &format!("SELECT {LINK_COLUMNS} FROM account_links WHERE id_hash = ?1"),
                params![id_hash],
                link,
            )
            .optional()
            .map_err(sql("read a one-time link"))
    }

    fn take_link(&self, id_hash: &str, now_ms: i64) -> Result<Option<LinkRecord>> {
        // One statement: of two requests racing for a link, one updates a row.
        self.conn()
            .query_row(
                &format!(
                    "UPDATE account_links SET used_at = ?2 WHERE id_hash = ?1 AND used_at IS NULL AND expires_at > ?2 RETURNING {LINK_COLUMNS}"
                ),
                params![id_hash, now_ms],
                link,
            )
            .optional()
            .map_err(sql("use a one-time link"))
    }

    fn setting(&self, key: &str) -> Result<Option<String>> {
        self.conn()
            .query_row(
                "SELECT value FROM console_settings WHERE key = ?1",
                params![key],
                |row| row.get(0),
            )
            .optional()
            .map_err(sql("read a console setting"))
    }

    fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO console_settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
            .map_err(sql("store a console setting"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_auth::accounts::{self as auth, Client, Settings};

    #[test]
    fn accounts_round_trip_and_a_link_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let settings = Settings::default();
        assert!(
            store
                .insert_user(&UserRecord::new("alice", Role::Admin, 1, "root via unix"))
                .unwrap()
        );
        assert!(
            !store
                .insert_user(&UserRecord::new("alice", Role::Viewer, 2, "x"))
                .unwrap()
        );
        let (secret, record) = auth::issue_link("alice", LinkPurpose::Setup, 10, &settings);
        store.insert_link(&record).unwrap();
        assert_eq!(store.link(&record.id_hash).unwrap().unwrap(), record);
        auth::redeem_link(&store, &settings, &secret, "tide pool lantern", 20).unwrap();
        assert!(store.take_link(&record.id_hash, 30).unwrap().is_none());
        let opened = auth::login(
            &store,
            &settings,
            "alice",
            "tide pool lantern",
            &Client::default(),
            40,
        )
        .unwrap();
        let (found, user) = auth::session_user(&store, &settings, &opened.cookie, 50)
            .unwrap()
            .unwrap();
        assert_eq!((found.user.as_str(), user.role), ("alice", Role::Admin));
        assert_eq!(store.delete_sessions_of("alice").unwrap(), 1);
        assert_eq!(store.users().unwrap().len(), 1);
        // Nothing presented later is stored as it was presented.
        let bytes = std::fs::read(dir.path().join("state.db")).unwrap_or_default();
        let wal = std::fs::read(dir.path().join("state.db-wal")).unwrap_or_default();
        for haystack in [bytes, wal] {
            for needle in [
                secret.as_bytes(),
                opened.cookie.as_bytes(),
                b"tide pool lantern",
            ] {
                assert!(!haystack.windows(needle.len()).any(|w| w == needle));
            }
        }
    }
}
