//! berth's console: pages rendered on the server (askama), served by the agent on a listener
//! of its own. It holds no power of its own: every page reads, and every button acts, through
//! the agent's API router called in-process as the logged-in user, so the API's scope table,
//! its lock and its audit log apply to a click exactly as to the CLI. What it owns is the
//! login: passwords, lockout, sessions and CSRF tokens (through `berth_auth::accounts`).
//!
//! Must not: reach the engine, the state file or Docker directly; trust anything a client
//! sends about who it is; render a secret's value.

mod account;
mod api;
mod apps;
mod audit;
mod backups;
mod charts;
mod handoff;
mod login;
mod logs;
mod manage;
pub mod status;
mod users;
mod view;
mod watch;
mod web;

use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use berth_auth::accounts::{AccountStore, Settings};
use http::{StatusCode, header};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

pub use api::ConsoleUser;
pub use handoff::{AppLogins, AppRoute, RouteLookup};

/// Records an event in the agent's audit log: actor, action, target, result, detail.
pub type AuditSink = Arc<dyn Fn(&str, &str, &str, &str, &str) + Send + Sync>;

/// Everything the console's pages need.
pub struct Console<S> {
    pub accounts: Arc<S>,
    pub settings: Settings,
    /// The agent's API, called in-process with a [`ConsoleUser`] extension.
    pub api: axum::Router,
    pub audit: AuditSink,
    /// Cookies get `Secure` (and the `__Host-` prefix): the console is reached over HTTPS.
    pub secure_cookies: bool,
    /// Login attempts allowed per client address and minute.
    pub login_rate_per_minute: u32,
    /// Logins for routes with `auth = "berth"` (none: such routes cannot be logged into).
    pub app_logins: Option<AppLogins>,
    /// Served through berth's proxy on a domain: a request from loopback takes its client's
    /// address from `X-Real-IP`, which the proxy states (for the login rate limit and the
    /// audit log).
    pub behind_proxy: bool,
    attempts: Mutex<HashMap<IpAddr, (i64, u32)>>,
}

impl<S> Console<S> {
    pub fn new(accounts: Arc<S>, api: axum::Router, audit: AuditSink) -> Self {
        Console {
            accounts,
            settings: Settings::default(),
            api,
            audit,
            secure_cookies: false,
            login_rate_per_minute: 10,
            app_logins: None,
            behind_proxy: false,
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// Whether another login attempt from `ip` is allowed now (a fixed one-minute window).
    pub(crate) fn login_allowed(&self, ip: IpAddr, now_ms: i64) -> bool {
        let Ok(mut attempts) = self.attempts.lock() else {
            return false;
        };
        attempts.retain(|_, (start, _)| now_ms - *start < 60_000);
        let entry = attempts.entry(ip).or_insert((now_ms, 0));
        entry.1 += 1;
        entry.1 <= self.login_rate_per_minute
    }
}

/// The console's routes, for the agent to serve (with connect info, so logins record the
/// client's address).
pub fn router<S>(console: Arc<Console<S>>) -> axum::Router
where
    S: AccountStore + Send + Sync + 'static,
{
    routes(console)
}

fn routes<S>(console: Arc<Console<S>>) -> axum::Router
where
    S: AccountStore + Send + Sync + 'static,
{
    axum::Router::new()
        .route("/", get(apps::overview::<S>))
        .route(
            "/login",
            get(login::login_form::<S>).post(login::login::<S>),
        )
        .route("/logout", post(login::logout::<S>))
        .route("/handoff", get(handoff::handoff::<S>))
        .route(
            "/signup",
            get(login::sign_up_form::<S>).post(login::sign_up::<S>),
        )
        .route(
            "/login/code",
            get(account::code_form::<S>).post(account::code::<S>),
        )
        .route("/account", get(account::account::<S>))
        .route("/account/totp/{step}", post(account::totp::<S>))
        .route(
            "/link/{secret}",
            get(login::link_form::<S>).post(login::link_set::<S>),
        )
        .route("/apps/{app}", get(apps::app::<S>))
        .route(
            "/apps/{app}/rollback",
            get(apps::confirm_rollback::<S>).post(apps::rollback::<S>),
        )
        .route(
            "/apps/{app}/services/{service}/restart",
            get(apps::confirm_restart::<S>).post(apps::restart::<S>),
        )
        .route("/apps/{app}/maintenance", post(apps::maintenance::<S>))
        .route(
            "/apps/{app}/secrets",
            get(manage::secrets::<S>).post(manage::add_secret::<S>),
        )
        .route(
            "/apps/{app}/secrets/{name}",
            post(manage::secret_action::<S>),
        )
        .route(
            "/apps/{app}/secrets/{name}/rotate",
            post(manage::rotate_secret::<S>),
        )
        .route(
            "/tokens",
            get(manage::tokens::<S>).post(manage::add_token::<S>),
        )
        .route("/tokens/{name}/revoke", post(manage::revoke_token::<S>))
        .route("/apps/{app}/logs", get(logs::logs::<S>))
        .route("/apps/{app}/logs/stream", get(logs::stream::<S>))
        .route("/apps/{app}/compare", get(apps::compare::<S>))
        .route("/apps/{app}/backups", get(backups::backups::<S>))
        .route("/apps/{app}/backups/run", post(backups::run::<S>))
        .route("/apps/{app}/backups/verify", post(backups::verify::<S>))
        .route(
            "/apps/{app}/backups/restore",
            get(backups::confirm_restore::<S>).post(backups::restore::<S>),
        )
        .route("/server", get(watch::server::<S>))
        .route("/alerts", get(watch::alerts::<S>))
        .route("/alerts/mute", post(watch::mute::<S>))
        .route("/alerts/mutes/{id}/remove", post(watch::unmute::<S>))
        .route("/certificates", get(watch::certificates::<S>))
        .route("/certificates/{domain}/renew", post(watch::renew::<S>))
        .route("/audit", get(audit::audit::<S>))
        .route("/audit.csv", get(audit::audit_csv::<S>))
        .route("/audit.json", get(audit::audit_json::<S>))
        .route("/users", get(users::users::<S>).post(users::add_user::<S>))
        .route("/users/{name}/{action}", post(users::user_action::<S>))
        .route("/assets/console.css", get(stylesheet))
        .route("/assets/console.js", get(script))
        .fallback(not_found)
        .layer(middleware::from_fn(web::same_origin_posts))
        .layer(middleware::from_fn(web::security_headers))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&console),
            web::proxied_client::<S>,
        ))
        .with_state(console)
}

const STYLESHEET: &str = include_str!("../assets/console.css");

const SCRIPT: &str = include_str!("../assets/console.js");

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        SCRIPT,
    )
        .into_response()
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLESHEET,
    )
        .into_response()
}

async fn not_found() -> Response {
    view::message(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such page.",
        None,
    )
}
