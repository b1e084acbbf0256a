//! A user's own account: the second step of a two-factor login, and enrolling or removing
//! the authenticator.

use crate::Console;
use crate::view::{Nav, render};
use crate::web::{self, client_ip};
use askama::Template;
use axum::Form;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use berth_auth::accounts::{self, AccountStore, Client, LoginError};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Template)]
#[template(path = "code.html")]
struct CodePage {
    nav: Option<Nav>,
    csrf: String,
    next: String,
    error: Option<String>,
}

fn pending<S: AccountStore>(
    console: &Console<S>,
    headers: &HeaderMap,
) -> Option<(accounts::SessionRecord, accounts::UserRecord)> {
    let cookie = web::cookie(headers, web::session_cookie(console))?;
    accounts::pending_session(
        &*console.accounts,
        cookie,
        jiff::Timestamp::now().as_millisecond(),
    )
    .ok()
    .flatten()
}

#[derive(Deserialize)]
pub(crate) struct NextQuery {
    next: Option<String>,
}

pub(crate) async fn code_form<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<NextQuery>,
) -> Response {
    let Some((session, _)) = pending(&console, &headers) else {
        return Redirect::to("/login").into_response();
    };
    render(
        &CodePage {
            nav: None,
            csrf: session.csrf,
            next: web::safe_next(query.next.as_deref()),
            error: None,
        },
        StatusCode::OK,
    )
}

#[derive(Deserialize)]
pub(crate) struct CodeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    next: String,
}

pub(crate) async fn code<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    headers: HeaderMap,
    extensions: http::Extensions,
    Form(form): Form<CodeForm>,
) -> Response {
    let Some((session, user)) = pending(&console, &headers) else {
        return Redirect::to("/login").into_response();
    };
    if !accounts::csrf_matches(&session, &form.csrf) {
        return web::forbidden_form();
    }
    let ip = client_ip(&extensions);
    let agent = web::user_agent(&headers);
    let Some(cookie) = web::cookie(&headers, web::session_cookie(&console)) else {
        return Redirect::to("/login").into_response();
    };
    let now = jiff::Timestamp::now().as_millisecond();
    // Codes share the login's per-address budget.
    if !console.login_allowed(ip, now) {
        return render(
            &CodePage {
                nav: None,
                csrf: session.csrf,
                next: web::safe_next(Some(&form.next)),
                error: Some("Too many attempts from this address: wait a minute.".to_owned()),
            },
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let client = Client {
        ip: ip.to_string(),
        user_agent: agent.clone(),
    };
    let next = web::safe_next(Some(&form.next));
    match accounts::second_factor(
        &*console.accounts,
        &console.settings,
        cookie,
        &form.code,
        &client,
        now,
    ) {
        Ok(whole) => {
            (console.audit)(
                &format!("user {} via console", user.name),
                "login",
                &format!("user/{}", user.name),
                "ok",
                &format!("with a second factor; from {ip}, {agent}"),
            );
            web::redirect_with_session(&console, &next, Some(&whole.cookie))
        }
        Err(error) => {
            let detail = match &error {
                LoginError::WrongCode { locked_now: true } => format!(
                    "wrong second-factor code; the account is locked for {} minutes",
                    console.settings.lockout_ms / 60_000
                ),
                other => other.to_string(),
            };
            (console.audit)(
                &format!("{ip} via console"),
                "login",
                &format!("user/{}", user.name),
                "refused",
                &format!("{detail}; from {ip}, {agent}"),
            );
            if matches!(error, LoginError::WrongCode { locked_now: false }) {
                return render(
                    &CodePage {
                        nav: None,
                        csrf: session.csrf,
                        next,
                        error: Some("That code is not right, or was used already.".to_owned()),
                    },
                    StatusCode::UNAUTHORIZED,
                );
            }
            web::redirect_with_session(&console, "/login", None)
        }
    }
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    nav: Option<Nav>,
    required: bool,
    enabled: bool,
    qr: Option<String>,
    secret: String,
    recovery: Vec<String>,
    error: Option<String>,
}

fn account_page<S: AccountStore>(
    console: &Console<S>,
    signed: &web::Signed,
    recovery: Vec<String>,
    error: Option<String>,
) -> Response {
    let user = console
        .accounts
        .user(&signed.user.name)
        .ok()
        .flatten()
        .unwrap_or_else(|| signed.user.clone());
    let (qr, secret) = match &user.totp_pending {
        Some(secret) if user.totp_secret.is_none() => {
            let uri = berth_auth::totp::uri("berth", &user.name, secret);
            let svg = berth_auth::totp::qr_svg(&uri)
                .map(|svg| match svg.find("<svg") {
                    Some(start) => svg[start..].to_owned(),
                    None => svg,
                })
                .unwrap_or_default();
            (Some(svg), berth_auth::totp::secret_text(secret))
        }
        _ => (None, String::new()),
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    render(
        &AccountPage {
            nav: Some(web::nav(signed)),
            required: accounts::two_factor_required(&*console.accounts).unwrap_or(false),
            enabled: user.totp_secret.is_some(),
            qr,
            secret,
            recovery,
            error,
        },
        status,
    )
}

pub(crate) async fn account<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    headers: HeaderMap,
    extensions: http::Extensions,
) -> Response {
    match web::signed(&console, &headers, client_ip(&extensions), "/account") {
        Ok(signed) => account_page(&console, &signed, Vec::new(), None),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
pub(crate) struct TotpForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    code: String,
}

pub(crate) async fn totp<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    axum::extract::Path(step): axum::extract::Path<String>,
    headers: HeaderMap,
    extensions: http::Extensions,
    Form(form): Form<TotpForm>,
) -> Response {
    let signed = match web::signed(&console, &headers, client_ip(&extensions), "/account") {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if let Err(refusal) = web::check_csrf(&signed, &form.csrf) {
        return refusal;
    }
    let now = jiff::Timestamp::now().as_millisecond();
    let name = signed.user.name.clone();
    let actor = format!("user {name} via console");
    let target = format!("user/{name}");
    let result = match step.as_str() {
        "begin" => accounts::begin_totp(&*console.accounts, &name).map(|_| Vec::new()),
        "confirm" => {
            let confirmed = accounts::confirm_totp(&*console.accounts, &name, &form.code, now);
            if confirmed.is_ok() {
                (console.audit)(&actor, "two-factor on", &target, "ok", "");
            }
            confirmed
        }
        "disable" => {
            let disabled = accounts::disable_totp(&*console.accounts, &name, &form.code, now);
            if disabled.is_ok() {
                (console.audit)(&actor, "two-factor off", &target, "ok", "");
            }
            disabled.map(|()| Vec::new())
        }
        _ => {
            return crate::view::message(
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such page.",
                None,
            );
        }
    };
    match result {
        Ok(recovery) => account_page(&console, &signed, recovery, None),
        Err(error) => account_page(&console, &signed, Vec::new(), Some(error.to_string())),
    }
}
