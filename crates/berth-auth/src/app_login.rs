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
