//! The console (berth-dashboard) served by the agent: its pages call the API router in-process
//! as the logged-in user, and its accounts live in the agent's state file.

use crate::api::ApiState;
use berth_auth::accounts::{AccountStore, LinkPurpose, Role, UserRecord};
use std::sync::Arc;

/// The user the first-start setup link is for.
const FIRST_ADMIN: &str = "admin";

/// On a first start (no console user yet), an admin account with a one-time setup link,
/// printed to the log; again at each start while that account has no password and its
/// links have expired. A handover (the same agent, replaced) never prints one.
pub(crate) fn first_admin_link(state: &ApiState, took_over: bool) {
    if took_over {
        return;
    }
    let store = state.engine.store();
    let users = match store.users() {
        Ok(users) => users,
        Err(error) => {
            tracing::warn!(%error, "cannot read the console's users");
            return;
        }
    };
    let waiting = match users.as_slice() {
        [] => {
            let record = UserRecord::new(
                FIRST_ADMIN,
                Role::Admin,
                berth_state::now_ms(),
                "the agent's first start",
            );
            if let Err(error) = store.insert_user(&record) {
                tracing::warn!(%error, "cannot add the console's first admin");
                return;
            }
            true
        }
        [only] => only.name == FIRST_ADMIN && only.password_hash.is_none(),
        _ => false,
    };
    if !waiting {
        return;
    }
    match crate::api::make_user_link(state, FIRST_ADMIN, LinkPurpose::Setup) {
        Ok(link) => {
            let url = link.url.unwrap_or(link.path);
            tracing::warn!(
                url = %url,
                "the console has no admin yet: open this link within the hour to set the admin's password (it works once; `berth users reset admin` makes a new one)"
            );
            state.engine.audit(
                "the agent",
                "user add",
                &format!("user/{FIRST_ADMIN}"),
                "ok",
                "first start: a setup link was printed to the agent's log",
            );
        }
        Err(error) => {
            tracing::warn!(error = %error.0.message, "cannot make the first admin's setup link")
        }
    }
}

/// The console's routes.
pub(crate) fn router(state: ApiState, listen: Option<crate::DashboardListen>) -> axum::Router {
    let engine = state.engine.clone();
    let audit: berth_dashboard::AuditSink =
        Arc::new(move |actor, action, target, result, detail| {
            engine.audit(actor, action, target, result, detail);
        });
    let accounts = state.engine.store().clone();
    let api = crate::api::router(state);
    let mut console = berth_dashboard::Console::new(accounts, api, audit);
    if let Some(listen) = listen {
        console.login_rate_per_minute = listen.login_rate_per_minute;
        console.settings.max_failures = listen.lockout_after.max(1);
        console.settings.lockout_ms =
            i64::try_from(listen.lockout_for.as_millis()).unwrap_or(i64::MAX);
        console.settings.policy.require_classes = listen.password_classes;
    }
    berth_dashboard::router(Arc::new(console))
}
