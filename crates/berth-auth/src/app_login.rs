//! Console logins for an app's own pages (a route with `auth = "berth"`). The console and the
//! app live on different hosts, so a browser's console cookie never reaches the app's host.
//! After a console login the console issues a one-time ticket bound to the user and the app
//! host; the browser carries it to that host, where the proxy trades it for a session that
//! opens that host only. The ticket lives a minute and in memory: one lost to a restart costs
//! the user a second redirect, never a login.

use crate::accounts::{
    AccountStore, Client, NewSession, Role, UserRecord, UserStatus, open_scoped_session,
    random_hex, sha256_hex,
};
use crate::tokens::constant_time_eq;
use std::collections::HashMap;
use std::sync::Mutex;

/// How long a ticket can be traded for a session.
pub const TICKET_MS: i64 = 60_000;

/// Tickets waiting to be traded; a bounded map, so a flood of console logins cannot grow it
/// without end.
#[derive(Debug, Default)]
pub struct Tickets {
    waiting: Mutex<HashMap<String, Ticket>>,
}

#[derive(Debug, Clone)]
struct Ticket {
    user: String,
    host: String,
    /// The browser's login state (a cookie of the app's host): only that browser may trade it.
    state: String,
    /// The console login behind it took a second factor.
    second_factor: bool,
    expires_ms: i64,
}

/// Who a traded ticket was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traded {
    pub user: String,
    pub second_factor: bool,
}

const MAX_WAITING: usize = 10_000;

impl Tickets {
    /// A ticket for `user` to open `host` from the browser holding login `state`; the secret
    /// goes into the link, once.
    pub fn issue(
        &self,
        user: &str,
        host: &str,
        state: &str,
        second_factor: bool,
        now_ms: i64,
    ) -> String {
        let secret = random_hex();
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.retain(|_, t| t.expires_ms > now_ms);
        if waiting.len() >= MAX_WAITING {
            // The oldest go first: they are the nearest to expiring anyway.
            let mut by_age: Vec<(String, i64)> = waiting
                .iter()
                .map(|(k, t)| (k.clone(), t.expires_ms))
                .collect();
            by_age.sort_by_key(|(_, expires)| *expires);
            for (key, _) in by_age.into_iter().take(MAX_WAITING / 10) {
                waiting.remove(&key);
            }
        }
        waiting.insert(
            sha256_hex(&secret),
            Ticket {
                user: user.to_owned(),
                host: host.to_ascii_lowercase(),
                state: state.to_owned(),
                second_factor,
                expires_ms: now_ms + TICKET_MS,
            },
        );
        secret
    }

    /// Who a ticket was issued to, if it is unspent, unexpired, for `host` and for the
    /// browser holding `state`. A ticket works once, even when shown wrongly.
    fn take(&self, secret: &str, host: &str, state: &str, now_ms: i64) -> Option<Traded> {
        if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let ticket = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&sha256_hex(secret))?;
        let right_host =
            constant_time_eq(ticket.host.as_bytes(), host.to_ascii_lowercase().as_bytes());
        let right_state =
            !state.is_empty() && constant_time_eq(ticket.state.as_bytes(), state.as_bytes());
        (right_host && right_state && ticket.expires_ms > now_ms).then_some(Traded {
            user: ticket.user,
            second_factor: ticket.second_factor,
        })
    }
}

/// Why a logged-in user may not open a route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("this page needs the {needed} role; your account, {user}, is a {has}")]
    Role {
        user: String,
        has: Role,
        needed: Role,
    },
    #[error(
        "this page needs a login with a second factor: turn two-factor login on in the console's account page if it is off, log out of the console and log in again with a code"
    )]
    SecondFactor,
}

/// Whether `user`, logged in with a second factor or not (`second_factor`), may open a
/// route that asks for `role` and, when `two_factor`, a login with a second factor.
pub fn allowed(
    user: &UserRecord,
    second_factor: bool,
    role: Role,
    two_factor: bool,
) -> Result<(), Denied> {
    if user.status != UserStatus::Active {
        return Err(Denied::Role {
            user: user.name.clone(),
            has: user.role,
            needed: role,
        });
    }
    if user.role < role {
        return Err(Denied::Role {
            user: user.name.clone(),
            has: user.role,
            needed: role,
        });
    }
    if two_factor && (!second_factor || user.totp_secret.is_none()) {
        return Err(Denied::SecondFactor);
    }
    Ok(())
}

/// Trades a ticket for a session that opens `host` only. `None` for a spent, expired or
/// foreign ticket, or a user who is no longer active.
pub fn redeem<S: AccountStore>(
    store: &S,
    tickets: &Tickets,
    secret: &str,
    host: &str,
    state: &str,
    client: &Client,
    now_ms: i64,
) -> Result<Option<(NewSession, UserRecord)>, S::Error> {
    let Some(traded) = tickets.take(secret, host, state, now_ms) else {
        return Ok(None);
    };
    let Some(user) = store
        .user(&traded.user)?
        .filter(|u| u.status == UserStatus::Active)
    else {
        return Ok(None);
    };
    let host = Some(host.to_ascii_lowercase());
    let session = open_scoped_session(
        store,
        &user.name,
        client,
        host,
        traded.second_factor,
        now_ms,
    )?;
    Ok(Some((session, user)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::memory::MemoryAccounts;
    use crate::accounts::{Settings, app_session_user, open_session, session_user};

    fn store_with(name: &str, role: Role) -> MemoryAccounts {
        let store = MemoryAccounts::default();
        let mut user = UserRecord::new(name, role, 0, "test");
        user.password_hash = Some("x".into());
        assert!(store.insert_user(&user).unwrap());
        store
    }

    #[test]
    fn a_ticket_opens_its_host_once_and_its_session_opens_nothing_else() {
        let store = store_with("ann", Role::Viewer);
        let tickets = Tickets::default();
        let settings = Settings::default();
        let client = Client::default();
        let secret = tickets.issue("ann", "Admin.Example.com", "st", false, 1_000);
        let (session, user) = redeem(
            &store,
            &tickets,
            &secret,
            "admin.example.com",
            "st",
            &client,
            2_000,
        )
        .unwrap()
        .expect("a fresh ticket is traded");
        assert_eq!(user.name, "ann");
        assert_eq!(session.record.host.as_deref(), Some("admin.example.com"));
        assert!(!session.record.second_factor);
        // Once only.
        assert!(
            redeem(
                &store,
                &tickets,
                &secret,
                "admin.example.com",
                "st",
                &client,
                2_000
            )
            .unwrap()
            .is_none()
        );
        // The session opens its host, not another and not the console.
        let cookie = &session.cookie;
        assert!(
            app_session_user(&store, &settings, cookie, "admin.example.com", 3_000)
                .unwrap()
                .is_some()
        );
        assert!(
            app_session_user(&store, &settings, cookie, "db.example.com", 3_000)
                .unwrap()
                .is_none()
        );
        assert!(
            session_user(&store, &settings, cookie, 3_000)
                .unwrap()
                .is_none()
        );
        // And a console session opens no app.
        let console = open_session(&store, "ann", &client, 3_000).unwrap();
        assert!(
            app_session_user(
                &store,
                &settings,
                &console.cookie,
                "admin.example.com",
                3_000
            )
            .unwrap()
            .is_none()
        );
    }

    #[test]
    fn a_ticket_shown_elsewhere_late_or_by_another_browser_is_refused_and_spent() {
        let store = store_with("ann", Role::Admin);
        let tickets = Tickets::default();
        let client = Client::default();
        let trade = |secret: &str, host: &str, state: &str, at: i64| {
            redeem(&store, &tickets, secret, host, state, &client, at)
                .unwrap()
                .map(|(session, _)| session)
        };
        let secret = tickets.issue("ann", "admin.example.com", "mine", false, 0);
        assert!(trade(&secret, "evil.example.com", "mine", 10).is_none());
        assert!(
            trade(&secret, "admin.example.com", "mine", 10).is_none(),
            "a ticket shown on the wrong host is spent"
        );
        // Another browser (another login state) cannot use someone's ticket.
        let fixed = tickets.issue("ann", "admin.example.com", "mine", false, 0);
        assert!(trade(&fixed, "admin.example.com", "victims", 10).is_none());
        assert!(trade(&fixed, "admin.example.com", "mine", 10).is_none());
        let stateless = tickets.issue("ann", "admin.example.com", "", false, 0);
        assert!(trade(&stateless, "admin.example.com", "", 10).is_none());
        let late = tickets.issue("ann", "admin.example.com", "mine", false, 0);
        assert!(trade(&late, "admin.example.com", "mine", TICKET_MS).is_none());
        assert!(trade("not-a-ticket", "admin.example.com", "mine", 1).is_none());
        // The second factor of the console login goes with the ticket.
        let strong = tickets.issue("ann", "admin.example.com", "mine", true, 0);
        let session = trade(&strong, "admin.example.com", "mine", 10).unwrap();
        assert!(session.record.second_factor);
    }

    #[test]
    fn a_route_admits_by_role_and_a_login_with_a_second_factor() {
        let mut user = UserRecord::new("ann", Role::Deployer, 0, "test");
        assert_eq!(allowed(&user, false, Role::Viewer, false), Ok(()));
        assert_eq!(allowed(&user, false, Role::Deployer, false), Ok(()));
        assert!(matches!(
            allowed(&user, false, Role::Admin, false),
            Err(Denied::Role { .. })
        ));
        assert_eq!(
            allowed(&user, false, Role::Viewer, true),
            Err(Denied::SecondFactor)
        );
        user.totp_secret = Some(vec![1; 20]);
        // Enrolled, but this login took no code: not enough.
        assert_eq!(
            allowed(&user, false, Role::Viewer, true),
            Err(Denied::SecondFactor)
        );
        assert_eq!(allowed(&user, true, Role::Viewer, true), Ok(()));
        user.status = UserStatus::Disabled;
        assert!(allowed(&user, true, Role::Viewer, false).is_err());
    }
}

/// HTTP basic auth for a route (`auth = { login = "basic", users_secret = "..." }`): users
/// are `name:$argon2id$...` lines of a berth secret. Browsers send the password with every
/// request, so a right one is remembered for five minutes (by a hash of the stored hash and the
/// password: a rotated secret or password is checked afresh), and argon2 runs once per user
/// and password, not per request. Five wrong passwords lock the name for 15 minutes, and an
/// address may get ten wrong a minute, whatever the names.
#[derive(Debug, Default)]
pub struct BasicLogins {
    verified: Mutex<HashMap<String, i64>>,
    failures: Mutex<HashMap<(String, String), (u32, i64)>>,
    by_address: Mutex<HashMap<String, (i64, u32)>>,
}

/// What a basic-auth check says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BasicOutcome {
    /// Right, for this user.
    Allow(String),
    /// No credentials, or wrong ones: ask again.
    Refused,
    /// Too many wrong ones: wait this many milliseconds.
    Locked(i64),
}

const BASIC_REMEMBERED_MS: i64 = 5 * 60_000;
const BASIC_LOCK_AFTER: u32 = 5;
const BASIC_LOCK_MS: i64 = 15 * 60_000;
const BASIC_ADDRESS_PER_MINUTE: u32 = 10;
const BASIC_KEPT: usize = 10_000;

/// The user and password of an `Authorization: Basic ...` header.
pub fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = data_encoding::BASE64
        .decode(encoded.trim().as_bytes())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    (!user.is_empty()).then(|| (user.to_owned(), password.to_owned()))
}

/// The stored hash of `user` among a secret's `name:hash` lines (blank lines and `#`
/// comments skipped).
fn stored_hash<'a>(users: &'a str, user: &str) -> Option<&'a str> {
    users
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| *name == user)
        .map(|(_, hash)| hash.trim())
}

impl BasicLogins {
    /// Checks the `Authorization` header (if any) of a request to `app`'s route against the
    /// `users` lines, from the client at `address`.
    pub fn check(
        &self,
        app: &str,
        users: &str,
        header: Option<&str>,
        address: &str,
        now_ms: i64,
    ) -> BasicOutcome {
        let Some((user, password)) = header.and_then(basic_credentials) else {
            return BasicOutcome::Refused;
        };
        {
            let by_address = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((start, count)) = by_address.get(address)
                && now_ms - start < 60_000
                && *count >= BASIC_ADDRESS_PER_MINUTE
            {
                return BasicOutcome::Locked(60_000 - (now_ms - start));
            }
        }
        let user_key = (app.to_owned(), user.clone());
        if let Some((count, since)) = self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&user_key)
            && *count >= BASIC_LOCK_AFTER
            && now_ms - since < BASIC_LOCK_MS
        {
            return BasicOutcome::Locked(BASIC_LOCK_MS - (now_ms - since));
        }
        let stored = stored_hash(users, &user);
        let remembered =
            stored.map(|hash| sha256_hex(&format!("{app}\u{0}{hash}\u{0}{user}\u{0}{password}")));
        if let Some(key) = &remembered
            && self
                .verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(key)
                .is_some_and(|until| *until > now_ms)
        {
            return BasicOutcome::Allow(user);
        }
        // An unknown name costs the same argon2 time as a known one.
        let right = match stored {
            Some(hash) => crate::passwords::verify_password(hash, &password),
            None => {
                let _ =
                    crate::passwords::verify_password(crate::passwords::decoy_hash(), &password);
                false
            }
        };
        if right {
            self.failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&user_key);
            if let Some(key) = remembered {
                let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
                if verified.len() >= BASIC_KEPT {
                    verified.retain(|_, until| *until > now_ms);
                }
                if verified.len() < BASIC_KEPT {
                    verified.insert(key, now_ms + BASIC_REMEMBERED_MS);
                }
            }
            return BasicOutcome::Allow(user);
        }
        {
            let mut by_address = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
            if by_address.len() >= BASIC_KEPT {
                by_address.retain(|_, (start, _)| now_ms - *start < 60_000);
            }
            let entry = by_address.entry(address.to_owned()).or_insert((now_ms, 0));
            if now_ms - entry.0 >= 60_000 {
                *entry = (now_ms, 0);
            }
            entry.1 += 1;
        }
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= BASIC_KEPT {
            failures.retain(|_, (_, since)| now_ms - *since < BASIC_LOCK_MS);
        }
        let entry = failures.entry(user_key).or_insert((0, now_ms));
        if now_ms - entry.1 >= BASIC_LOCK_MS {
            *entry = (0, now_ms);
        }
        entry.0 += 1;
        if entry.0 >= BASIC_LOCK_AFTER {
            entry.1 = now_ms;
            return BasicOutcome::Locked(BASIC_LOCK_MS);
        }
        BasicOutcome::Refused
    }
}

#[cfg(test)]
mod basic_tests {
    use super::*;

    fn header(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            data_encoding::BASE64.encode(format!("{user}:{password}").as_bytes())
        )
    }

    #[test]
    fn basic_auth_lets_in_the_secrets_users_and_locks_a_guessed_name() {
        let hash = crate::passwords::hash_password("orchard lamp quiet").unwrap();
        let users = format!("# admins\n\nann:{hash}\n");
        let logins = BasicLogins::default();
        let check = |user: &str, password: &str, address: &str, at: i64| {
            logins.check("shop", &users, Some(&header(user, password)), address, at)
        };
        assert_eq!(
            check("ann", "orchard lamp quiet", "a", 0),
            BasicOutcome::Allow("ann".into())
        );
        // Remembered: the same pair again, without argon2.
        assert_eq!(
            check("ann", "orchard lamp quiet", "a", 1),
            BasicOutcome::Allow("ann".into())
        );
        assert_eq!(
            logins.check("shop", &users, None, "a", 2),
            BasicOutcome::Refused
        );
        assert_eq!(
            logins.check("shop", &users, Some("Bearer x"), "a", 2),
            BasicOutcome::Refused
        );
        assert_eq!(
            check("bob", "orchard lamp quiet", "b", 3),
            BasicOutcome::Refused
        );
        for at in 0..4 {
            assert_eq!(
                check("ann", "wrong", &format!("c{at}"), 10 + at),
                BasicOutcome::Refused
            );
        }
        assert!(matches!(
            check("ann", "wrong", "c9", 20),
            BasicOutcome::Locked(_)
        ));
        // Locked: the right password is refused too, until the lock ends.
        assert!(matches!(
            check("ann", "orchard lamp quiet", "d", 30),
            BasicOutcome::Locked(_)
        ));
        assert_eq!(
            check("ann", "orchard lamp quiet", "d", 20 + BASIC_LOCK_MS),
            BasicOutcome::Allow("ann".into())
        );
        // One address guessing many names is slowed down as well.
        for n in 0..BASIC_ADDRESS_PER_MINUTE {
            check(&format!("u{n}"), "x", "e", 100);
        }
        assert!(matches!(
            check("ann", "orchard lamp quiet", "e", 101),
            BasicOutcome::Locked(_)
        ));
    }

    #[test]
    fn credentials_are_read_from_the_header() {
        assert_eq!(
            basic_credentials(&header("ann", "a:b c")),
            Some(("ann".into(), "a:b c".into()))
        );
        assert_eq!(basic_credentials("Basic !!!"), None);
        assert_eq!(basic_credentials(&header("", "x")), None);
        assert_eq!(stored_hash("ann:$x\nbob: $y ", "bob"), Some("$y"));
    }
}
