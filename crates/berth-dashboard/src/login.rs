//! Logging in and out, the one-time setup and reset links, and sign-up requests.

use crate::Console;
use crate::view::{Nav, message, query_escape, render};
use crate::web::{self, client_ip};
use crate::web::{CsrfForm, not_found};
use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use berth_auth::accounts::{self, AccountStore, Client};
use http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use std::sync::Arc;

// ---- login -------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    nav: Option<Nav>,
    csrf: String,
    next: String,
    error: Option<String>,
    sign_up: bool,
}

#[derive(Deserialize)]
pub(crate) struct NextQuery {
    next: Option<String>,
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn login_page<S: AccountStore>(
    console: &Console<S>,
    next: String,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    // A login form carries a token matching a cookie of its own, so another site cannot log
    // a browser in to an account of the attacker's.
    let csrf = random_hex();
    let mut response = render(
        &LoginPage {
            nav: None,
            csrf: csrf.clone(),
            next,
            error,
            sign_up: accounts::sign_up_open(&*console.accounts).unwrap_or(false),
        },
        status,
    );
    response.headers_mut().append(
        header::SET_COOKIE,
        web::set_cookie(console, web::login_cookie(console), Some(&csrf)),
    );
    response
}

pub(crate) async fn login_form<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Query(query): Query<NextQuery>,
) -> Response {
    login_page(
        &console,
        web::safe_next(query.next.as_deref()),
        None,
        StatusCode::OK,
    )
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: String,
}

pub(crate) async fn login<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    request_headers: HeaderMap,
    extensions: http::Extensions,
    Form(form): Form<LoginForm>,
) -> Response {
    let ip = client_ip(&extensions);
    let next = web::safe_next(Some(&form.next));
    let expected = web::cookie(&request_headers, web::login_cookie(&console)).unwrap_or("");
    if expected.is_empty()
        || !berth_auth::tokens::constant_time_eq(expected.as_bytes(), form.csrf.as_bytes())
    {
        return web::forbidden_form();
    }
    let now = jiff::Timestamp::now().as_millisecond();
    let agent = web::user_agent(&request_headers);
    if !console.login_allowed(ip, now) {
        (console.audit)(
            &format!("{ip} via console"),
            "login",
            &format!("user/{}", form.name.chars().take(64).collect::<String>()),
            "refused",
            &format!(
                "more than {} attempts a minute from {ip}",
                console.login_rate_per_minute
            ),
        );
        return login_page(
            &console,
            next,
            Some("Too many login attempts from this address: wait a minute.".to_owned()),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let client = Client {
        ip: ip.to_string(),
        user_agent: agent.clone(),
    };
    let name = form.name.trim().to_owned();
    let worker = console.clone();
    let attempt_name = name.clone();
    // argon2 is deliberately slow: off the async workers.
    let result = tokio::task::spawn_blocking(move || {
        accounts::login(
            &*worker.accounts,
            &worker.settings,
            &attempt_name,
            &form.password,
            &client,
            now,
        )
    })
    .await;
    let shown_name: String = name.chars().take(64).collect();
    match result {
        Ok(Ok(session)) if session.record.second_factor_pending => {
            // The password was right; the code comes next, on a session that opens nothing
            // else.
            web::redirect_with_session(
                &console,
                &format!("/login/code?next={}", query_escape(&next)),
                Some(&session.cookie),
            )
        }
        Ok(Ok(session)) => {
            (console.audit)(
                &format!("user {shown_name} via console"),
                "login",
                &format!("user/{shown_name}"),
                "ok",
                &format!("from {ip}, {agent}"),
            );
            web::redirect_with_session(&console, &next, Some(&session.cookie))
        }
        Ok(Err(error)) => {
            let detail = match &error {
                accounts::LoginError::WrongPassword { locked_now: true } => format!(
                    "wrong password; the account is locked for {} minutes",
                    console.settings.lockout_ms / 60_000
                ),
                other => other.to_string(),
            };
            (console.audit)(
                &format!("{ip} via console"),
                "login",
                &format!("user/{shown_name}"),
                "refused",
                &format!("{detail}; from {ip}, {agent}"),
            );
            login_page(
                &console,
                next,
                Some(error.public_message().to_owned()),
                StatusCode::UNAUTHORIZED,
            )
        }
        Err(error) => message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The login failed",
            &error.to_string(),
            None,
        ),
    }
}

pub(crate) async fn logout<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    // The session itself, not `signed`: a user sent to enrol a second factor may still leave.
    let now = jiff::Timestamp::now().as_millisecond();
    let Some(cookie) = web::cookie(&headers, web::session_cookie(&console)) else {
        return Redirect::to("/login").into_response();
    };
    let session = match accounts::session_user(&*console.accounts, &console.settings, cookie, now) {
        Ok(Some((session, _))) => session,
        _ => return Redirect::to("/login").into_response(),
    };
    if !accounts::csrf_matches(&session, &form.csrf) {
        return web::forbidden_form();
    }
    let _ = accounts::close_session(&*console.accounts, cookie);
    web::redirect_with_session(&console, "/login", None)
}

// ---- setup and reset links ----------------------------------------------------------------

#[derive(Template)]
#[template(path = "link.html")]
struct LinkPage {
    nav: Option<Nav>,
    user: String,
    purpose: String,
    error: Option<String>,
    min_length: usize,
}

pub(crate) async fn link_form<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path(secret): Path<String>,
) -> Response {
    let now = jiff::Timestamp::now().as_millisecond();
    match accounts::usable_link(&*console.accounts, &secret, now) {
        Ok(Some(link)) => render(
            &LinkPage {
                nav: None,
                user: link.user,
                purpose: link.purpose.as_str().to_owned(),
                error: None,
                min_length: console.settings.policy.min_length,
            },
            StatusCode::OK,
        ),
        _ => message(
            StatusCode::NOT_FOUND,
            "This link does not work",
            &accounts::LinkError::Spent.to_string(),
            None,
        ),
    }
}

#[derive(Deserialize)]
pub(crate) struct PasswordForm {
    #[serde(default)]
    password: String,
    #[serde(default)]
    again: String,
}

pub(crate) async fn link_set<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path(secret): Path<String>,
    headers: HeaderMap,
    extensions: http::Extensions,
    Form(form): Form<PasswordForm>,
) -> Response {
    // The link's secret in the path is what a CSRF token would be: only its holder has it.
    let now = jiff::Timestamp::now().as_millisecond();
    let Ok(Some(link)) = accounts::usable_link(&*console.accounts, &secret, now) else {
        return message(
            StatusCode::NOT_FOUND,
            "This link does not work",
            &accounts::LinkError::Spent.to_string(),
            None,
        );
    };
    let again = |error: String| {
        render(
            &LinkPage {
                nav: None,
                user: link.user.clone(),
                purpose: link.purpose.as_str().to_owned(),
                error: Some(error),
                min_length: console.settings.policy.min_length,
            },
            StatusCode::BAD_REQUEST,
        )
    };
    if form.password != form.again {
        return again("The two passwords differ.".to_owned());
    }
    let worker = console.clone();
    let result = tokio::task::spawn_blocking(move || {
        accounts::redeem_link(
            &*worker.accounts,
            &worker.settings,
            &secret,
            &form.password,
            now,
        )
    })
    .await;
    let ip = client_ip(&extensions);
    match result {
        Ok(Ok(user)) => {
            (console.audit)(
                &format!("user {} via console", user.name),
                &format!("password {}", link.purpose.as_str()),
                &format!("user/{}", user.name),
                "ok",
                &format!("from {ip}, {}", web::user_agent(&headers)),
            );
            let client = Client {
                ip: ip.to_string(),
                user_agent: web::user_agent(&headers),
            };
            match accounts::open_session(&*console.accounts, &user.name, &client, now) {
                Ok(session) => web::redirect_with_session(&console, "/", Some(&session.cookie)),
                Err(_) => Redirect::to("/login").into_response(),
            }
        }
        Ok(Err(accounts::LinkError::Policy(error))) => {
            again(format!("{}.", capitalize(&error.to_string())))
        }
        Ok(Err(error)) => message(
            StatusCode::BAD_REQUEST,
            "The password was not set",
            &error.to_string(),
            None,
        ),
        Err(error) => message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The password was not set",
            &error.to_string(),
            None,
        ),
    }
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

// ---- sign-up ------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "signup.html")]
struct SignUpPage {
    nav: Option<Nav>,
    csrf: String,
    error: Option<String>,
    done: bool,
    min_length: usize,
}

fn sign_up_page<S: AccountStore>(
    console: &Console<S>,
    error: Option<String>,
    done: bool,
    status: StatusCode,
) -> Response {
    let csrf = random_hex();
    let mut response = render(
        &SignUpPage {
            nav: None,
            csrf: csrf.clone(),
            error,
            done,
            min_length: console.settings.policy.min_length,
        },
        status,
    );
    response.headers_mut().append(
        header::SET_COOKIE,
        web::set_cookie(console, web::login_cookie(console), Some(&csrf)),
    );
    response
}

pub(crate) async fn sign_up_form<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
) -> Response {
    if !accounts::sign_up_open(&*console.accounts).unwrap_or(false) {
        return not_found("page");
    }
    sign_up_page(&console, None, false, StatusCode::OK)
}

#[derive(Deserialize)]
pub(crate) struct SignUpForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    again: String,
}

pub(crate) async fn sign_up<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    headers: HeaderMap,
    extensions: http::Extensions,
    Form(form): Form<SignUpForm>,
) -> Response {
    let expected = web::cookie(&headers, web::login_cookie(&console)).unwrap_or("");
    if expected.is_empty()
        || !berth_auth::tokens::constant_time_eq(expected.as_bytes(), form.csrf.as_bytes())
    {
        return web::forbidden_form();
    }
    let ip = client_ip(&extensions);
    let now = jiff::Timestamp::now().as_millisecond();
    // Requests share the login's per-address budget: nobody fills the users page.
    if !console.login_allowed(ip, now) {
        return sign_up_page(
            &console,
            Some("Too many attempts from this address: wait a minute.".to_owned()),
            false,
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    if form.password != form.again {
        return sign_up_page(
            &console,
            Some("The two passwords differ.".to_owned()),
            false,
            StatusCode::BAD_REQUEST,
        );
    }
    let name = form.name.trim().to_owned();
    let worker = console.clone();
    let from = ip.to_string();
    let result = tokio::task::spawn_blocking(move || {
        accounts::sign_up(
            &*worker.accounts,
            &worker.settings,
            &name,
            &form.password,
            now,
            &from,
        )
    })
    .await;
    match result {
        Ok(Ok(user)) => {
            (console.audit)(
                &format!("{ip} via console"),
                "sign-up request",
                &format!("user/{}", user.name),
                "ok",
                &format!(
                    "waits for an admin's approval; from {ip}, {}",
                    web::user_agent(&headers)
                ),
            );
            sign_up_page(&console, None, true, StatusCode::OK)
        }
        Ok(Err(accounts::SignUpError::Taken)) => {
            // Answered as a request taken: the form tells nobody which names exist.
            (console.audit)(
                &format!("{ip} via console"),
                "sign-up request",
                "console",
                "refused",
                &format!("the name asked for is taken; from {ip}"),
            );
            sign_up_page(&console, None, true, StatusCode::OK)
        }
        Ok(Err(accounts::SignUpError::Closed)) => not_found("page"),
        Ok(Err(error)) => sign_up_page(
            &console,
            Some(capitalize(&error.to_string())),
            false,
            StatusCode::BAD_REQUEST,
        ),
        Err(error) => message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The request failed",
            &error.to_string(),
            None,
        ),
    }
}
