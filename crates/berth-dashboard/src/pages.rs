//! The pages. Each reads through the agent's API as the logged-in user and renders a
//! template; each form posts its session's CSRF token, checked before anything is done.

use crate::Console;
use crate::api::{self, ConsoleUser, Refused};
use crate::view::{Nav, message, query_escape, render, when};
use crate::web::{self, Signed, client_ip, signed};
use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use berth_api::{
    AppStatus, AuditEntry, OperationEvent, ReleaseInfo, RollbackPlan, Status, UserInfo, UserLink,
};
use berth_auth::accounts::{self, AccountStore, Client};
use http::{HeaderMap, Method, StatusCode, header};
use serde::Deserialize;
use std::sync::Arc;

// ---- shared pieces -----------------------------------------------------------------------

/// An API refusal as a page: 403 stays 403 (a viewer pressing deploy), and so on.
fn refused(signed: &Signed, error: Refused) -> Response {
    crate::view::refused(Some(web::nav(signed)), error)
}

fn not_found(what: &str) -> Response {
    message(
        StatusCode::NOT_FOUND,
        "Not found",
        &format!("There is no such {what}."),
        None,
    )
}

fn valid_app(app: &str) -> bool {
    !app.is_empty()
        && app.len() <= 63
        && app
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

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
            let mut response =
                Redirect::to(&format!("/login/code?next={}", query_escape(&next))).into_response();
            let headers = response.headers_mut();
            headers.append(
                header::SET_COOKIE,
                web::set_cookie(
                    &console,
                    web::session_cookie(&console),
                    Some(&session.cookie),
                ),
            );
            headers.append(
                header::SET_COOKIE,
                web::set_cookie(&console, web::login_cookie(&console), None),
            );
            response
        }
        Ok(Ok(session)) => {
            (console.audit)(
                &format!("user {shown_name} via console"),
                "login",
                &format!("user/{shown_name}"),
                "ok",
                &format!("from {ip}, {agent}"),
            );
            let mut response = Redirect::to(&next).into_response();
            let headers = response.headers_mut();
            headers.append(
                header::SET_COOKIE,
                web::set_cookie(
                    &console,
                    web::session_cookie(&console),
                    Some(&session.cookie),
                ),
            );
            headers.append(
                header::SET_COOKIE,
                web::set_cookie(&console, web::login_cookie(&console), None),
            );
            response
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

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    csrf: String,
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
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        web::set_cookie(&console, web::session_cookie(&console), None),
    );
    response
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
                Ok(session) => {
                    let mut response = Redirect::to("/").into_response();
                    response.headers_mut().append(
                        header::SET_COOKIE,
                        web::set_cookie(
                            &console,
                            web::session_cookie(&console),
                            Some(&session.cookie),
                        ),
                    );
                    response
                }
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

// ---- apps ---------------------------------------------------------------------------------

/// An uptime share as people read it: `99.95 %`, or `—` without checks.
fn percent(value: Option<f64>) -> String {
    match value {
        Some(p) if p >= 99.995 => "100 %".to_owned(),
        Some(p) => format!("{p:.2} %"),
        None => "—".to_owned(),
    }
}

/// The worst 30-day uptime of an app's services (its monitors included), from the history.
fn app_uptime(uptime: &berth_api::UptimeAnswer, app: &str) -> String {
    let prefix = format!("{app}/");
    let worst = uptime
        .subjects
        .iter()
        .filter(|s| s.subject.starts_with(&prefix))
        .filter_map(|s| s.month_percent.or(s.week_percent).or(s.day_percent))
        .fold(None, |worst: Option<f64>, p| {
            Some(worst.map_or(p, |w| w.min(p)))
        });
    percent(worst)
}

pub(crate) struct AppRow {
    pub name: String,
    pub uptime: String,
    pub live: String,
    pub version: String,
    pub deployed: String,
    pub health: String,
    pub healthy: bool,
    pub note: String,
}

fn app_row(app: &AppStatus) -> AppRow {
    let desired: u32 = app.services.iter().map(|s| s.desired_replicas).sum();
    let healthy: usize = app.services.iter().map(|s| s.healthy_replicas()).sum();
    let note = if app.stopped {
        "stopped".to_owned()
    } else if app.maintenance.is_some() {
        "maintenance".to_owned()
    } else if let Some(failed) = &app.last_failed {
        format!("release {} failed", failed.number)
    } else if let Some(operation) = &app.operation {
        format!("{} in progress", operation.operation)
    } else {
        String::new()
    };
    AppRow {
        uptime: String::new(),
        name: app.name.clone(),
        live: app
            .live_release
            .as_ref()
            .map(|r| format!("r{}", r.number))
            .unwrap_or_else(|| "—".to_owned()),
        version: app
            .live_release
            .as_ref()
            .map(|r| r.version.clone())
            .unwrap_or_default(),
        deployed: app
            .live_release
            .as_ref()
            .map(|r| when(r.finished_at.unwrap_or(r.created_at)))
            .unwrap_or_default(),
        health: format!("{healthy}/{desired} healthy"),
        healthy: healthy as u64 >= u64::from(desired) && !app.stopped,
        note,
    }
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    nav: Option<Nav>,
    apps: Vec<AppRow>,
    problems: Vec<String>,
    alerts: usize,
    agent: String,
    now: String,
}

pub(crate) async fn overview<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    headers: HeaderMap,
    extensions: http::Extensions,
) -> Response {
    let signed = match signed(&console, &headers, client_ip(&extensions), "/") {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let status: Status = match api::get(&console.api, &signed.as_user, "/v1/status").await {
        Ok(status) => status,
        Err(error) => return refused(&signed, error),
    };
    // Uptime is extra: without it (no history yet, or an error) the page still renders.
    let uptime: Option<berth_api::UptimeAnswer> =
        api::get(&console.api, &signed.as_user, "/v1/uptime")
            .await
            .ok();
    render(
        &OverviewPage {
            nav: Some(web::nav(&signed)),
            apps: status
                .apps
                .iter()
                .map(|app| AppRow {
                    uptime: uptime
                        .as_ref()
                        .map(|u| app_uptime(u, &app.name))
                        .unwrap_or_else(|| "—".to_owned()),
                    ..app_row(app)
                })
                .collect(),
            problems: status.problems.clone(),
            alerts: status.firing_alerts.len(),
            agent: format!("berth {}", status.agent.version),
            now: when(jiff::Timestamp::now().as_millisecond()),
        },
        StatusCode::OK,
    )
}

pub(crate) struct ReleaseRow {
    pub number: i64,
    pub version: String,
    pub kind: String,
    pub status: String,
    pub actor: String,
    pub at: String,
    pub error: String,
    pub live: bool,
}

pub(crate) struct ServiceRow {
    pub name: String,
    pub role: String,
    pub health: String,
    /// Uptime over a day, a week and 30 days.
    pub uptime: String,
}

#[derive(Template)]
#[template(path = "app.html")]
struct AppPage {
    nav: Option<Nav>,
    app: AppRow,
    urls: Vec<String>,
    maintenance: Option<String>,
    services: Vec<ServiceRow>,
    releases: Vec<ReleaseRow>,
}

pub(crate) async fn app<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    extensions: http::Extensions,
) -> Response {
    let signed = match signed(
        &console,
        &headers,
        client_ip(&extensions),
        &format!("/apps/{app}"),
    ) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !valid_app(&app) {
        return not_found("app");
    }
    let status: Status = match api::get(
        &console.api,
        &signed.as_user,
        &format!("/v1/status?app={app}"),
    )
    .await
    {
        Ok(status) => status,
        Err(error) => return refused(&signed, error),
    };
    let Some(state) = status.apps.iter().find(|a| a.name == app) else {
        return message(
            StatusCode::NOT_FOUND,
            "Not found",
            &format!("No app is named {app}."),
            None,
        );
    };
    let releases: Vec<ReleaseInfo> = match api::get(
        &console.api,
        &signed.as_user,
        &format!("/v1/apps/{app}/releases?limit=100"),
    )
    .await
    {
        Ok(releases) => releases,
        Err(error) => return refused(&signed, error),
    };
    let live = state.live_release.as_ref().map(|r| r.number);
    let uptime: Option<berth_api::UptimeAnswer> = api::get(
        &console.api,
        &signed.as_user,
        &format!("/v1/uptime?app={app}"),
    )
    .await
    .ok();
    let service_uptime = |service: &str| {
        let subject = format!("{app}/{service}");
        uptime
            .as_ref()
            .and_then(|u| u.subjects.iter().find(|s| s.subject == subject))
            .map(|s| {
                format!(
                    "{} · {} · {}",
                    percent(s.day_percent),
                    percent(s.week_percent),
                    percent(s.month_percent)
                )
            })
            .unwrap_or_else(|| "—".to_owned())
    };
    render(
        &AppPage {
            nav: Some(web::nav(&signed)),
            app: app_row(state),
            urls: state.urls.clone(),
            maintenance: state.maintenance.clone(),
            services: state
                .services
                .iter()
                .map(|s| ServiceRow {
                    name: s.name.clone(),
                    role: s.role.clone(),
                    health: format!("{}/{} healthy", s.healthy_replicas(), s.desired_replicas),
                    uptime: service_uptime(&s.name),
                })
                .collect(),
            releases: releases
                .iter()
                .map(|r| ReleaseRow {
                    number: r.number,
                    version: r.version.clone(),
                    kind: r.kind.as_str().to_owned(),
                    status: r.status.as_str().to_owned(),
                    actor: r.actor.clone(),
                    at: when(r.created_at),
                    error: r.error.clone().unwrap_or_default(),
                    live: Some(r.number) == live,
                })
                .collect(),
        },
        StatusCode::OK,
    )
}

#[derive(Template)]
#[template(path = "confirm.html")]
struct ConfirmPage {
    nav: Option<Nav>,
    title: String,
    lines: Vec<String>,
    action: String,
    fields: Vec<(String, String)>,
    button: String,
    back: String,
}

#[derive(Deserialize)]
pub(crate) struct ReleaseQuery {
    release: Option<i64>,
}

pub(crate) async fn confirm_rollback<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path(app): Path<String>,
    Query(query): Query<ReleaseQuery>,
    headers: HeaderMap,
    extensions: http::Extensions,
) -> Response {
    let path = format!("/apps/{app}/rollback");
    let signed = match signed(&console, &headers, client_ip(&extensions), &path) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !valid_app(&app) {
        return not_found("app");
    }
    let plan_path = match query.release {
        Some(n) => format!("/v1/apps/{app}/rollback/plan?release={n}"),
        None => format!("/v1/apps/{app}/rollback/plan"),
    };
    let plan: RollbackPlan = match api::get(&console.api, &signed.as_user, &plan_path).await {
        Ok(plan) => plan,
        Err(error) => return refused(&signed, error),
    };
    let mut lines = vec![format!(
        "{app} goes from release {} ({}) to release {} ({}), with zero downtime.",
        plan.from, plan.from_version, plan.to, plan.to_version
    )];
    if plan.changes.is_empty() {
        lines.push("Only the code changes; the configuration is the same.".to_owned());
    } else {
        lines.push("The configuration changes too:".to_owned());
        lines.extend(plan.changes.iter().cloned());
    }
    render(
        &ConfirmPage {
            nav: Some(web::nav(&signed)),
            title: format!("Deploy release {} of {app} again?", plan.to),
            lines,
            action: path,
            fields: vec![("release".to_owned(), plan.to.to_string())],
            button: format!("Deploy release {}", plan.to),
            back: format!("/apps/{app}"),
        },
        StatusCode::OK,
    )
}

#[derive(Template)]
#[template(path = "operation.html")]
struct OperationPage {
    nav: Option<Nav>,
    title: String,
    ok: bool,
    steps: Vec<String>,
    error: String,
    hint: String,
    back: String,
}

fn operation_page(
    signed: &Signed,
    title: String,
    operation: api::Operation,
    back: String,
) -> Response {
    let steps = operation
        .events
        .iter()
        .filter_map(|event| match event {
            OperationEvent::Done { step, detail, .. } => Some(match detail {
                Some(detail) => format!("✓ {step}: {detail}"),
                None => format!("✓ {step}"),
            }),
            OperationEvent::Failed { step, message, .. } => Some(format!("✗ {step}: {message}")),
            OperationEvent::Log { message } => Some(message.clone()),
            _ => None,
        })
        .collect();
    let (ok, error, hint) = match &operation.outcome {
        Some(outcome) => (
            outcome.ok,
            outcome
                .error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_default(),
            outcome
                .error
                .as_ref()
                .and_then(|e| e.hint.clone())
                .unwrap_or_default(),
        ),
        None => (
            false,
            "the operation ended without an outcome".to_owned(),
            String::new(),
        ),
    };
    render(
        &OperationPage {
            nav: Some(web::nav(signed)),
            title,
            ok,
            steps,
            error,
            hint,
            back,
        },
        if ok {
            StatusCode::OK
        } else {
            StatusCode::CONFLICT
        },
    )
}

#[derive(Deserialize)]
pub(crate) struct RollbackForm {
    #[serde(default)]
    csrf: String,
    release: Option<i64>,
}

pub(crate) async fn rollback<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    extensions: http::Extensions,
    Form(form): Form<RollbackForm>,
) -> Response {
    let signed = match web::posted(
        &console,
        &headers,
        &extensions,
        &format!("/apps/{app}"),
        &form.csrf,
    ) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !valid_app(&app) {
        return not_found("app");
    }
    let body = serde_json::json!({ "release": form.release, "wait_for_lock": false });
    match api::operation(
        &console.api,
        &signed.as_user,
        &format!("/v1/apps/{app}/rollback"),
        body,
    )
    .await
    {
        Ok(operation) => operation_page(
            &signed,
            format!("Rollback of {app}"),
            operation,
            format!("/apps/{app}"),
        ),
        Err(error) => refused(&signed, error),
    }
}

pub(crate) async fn confirm_restart<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path((app, service)): Path<(String, String)>,
    headers: HeaderMap,
    extensions: http::Extensions,
) -> Response {
    let path = format!("/apps/{app}/services/{service}/restart");
    let signed = match signed(&console, &headers, client_ip(&extensions), &path) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !valid_app(&app) || !valid_app(&service) {
        return not_found("service");
    }
    render(
        &ConfirmPage {
            nav: Some(web::nav(&signed)),
            title: format!("Restart {service} of {app}?"),
            lines: vec![
                "New replicas start and pass their health check before the old ones stop: no request is dropped.".to_owned(),
            ],
            action: path,
            fields: Vec::new(),
            button: format!("Restart {service}"),
            back: format!("/apps/{app}"),
        },
        StatusCode::OK,
    )
}

pub(crate) async fn restart<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path((app, service)): Path<(String, String)>,
    headers: HeaderMap,
    extensions: http::Extensions,
    Form(form): Form<CsrfForm>,
) -> Response {
    let signed = match web::posted(
        &console,
        &headers,
        &extensions,
        &format!("/apps/{app}"),
        &form.csrf,
    ) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !valid_app(&app) || !valid_app(&service) {
        return not_found("service");
    }
    match api::operation(
        &console.api,
        &signed.as_user,
        &format!("/v1/apps/{app}/services/{service}/restart"),
        serde_json::json!({ "wait_for_lock": false }),
    )
    .await
    {
        Ok(operation) => operation_page(
            &signed,
            format!("Restart of {service} ({app})"),
            operation,
            format!("/apps/{app}"),
        ),
        Err(error) => refused(&signed, error),
    }
}

#[derive(Deserialize)]
pub(crate) struct MaintenanceForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    enabled: String,
    #[serde(default)]
    message: String,
}

pub(crate) async fn maintenance<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    extensions: http::Extensions,
    Form(form): Form<MaintenanceForm>,
) -> Response {
    let signed = match web::posted(
        &console,
        &headers,
        &extensions,
        &format!("/apps/{app}"),
        &form.csrf,
    ) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !valid_app(&app) {
        return not_found("app");
    }
    let message_text = form.message.trim();
    let body = serde_json::json!({
        "enabled": form.enabled == "on",
        "message": (!message_text.is_empty()).then_some(message_text),
    });
    match api::call::<serde_json::Value>(
        &console.api,
        &signed.as_user,
        Method::POST,
        &format!("/v1/apps/{app}/maintenance"),
        Some(body),
    )
    .await
    {
        Ok(_) => Redirect::to(&format!("/apps/{app}")).into_response(),
        Err(error) => refused(&signed, error),
    }
}

// ---- audit --------------------------------------------------------------------------------

#[derive(Deserialize, Default, Clone)]
pub(crate) struct AuditFilter {
    #[serde(default)]
    user: String,
    #[serde(default)]
    app: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    result: String,
    #[serde(default)]
    page: usize,
}

impl AuditFilter {
    fn query(&self) -> String {
        let mut parts = Vec::new();
        for (key, value) in [
            ("actor", &self.user),
            ("app", &self.app),
            ("action", &self.action),
            ("result", &self.result),
        ] {
            let value = value.trim();
            if !value.is_empty() {
                parts.push(format!("{key}={}", query_escape(value)));
            }
        }
        parts.join("&")
    }

    fn page_query(&self, page: usize) -> String {
        let mut parts = Vec::new();
        for (key, value) in [
            ("user", &self.user),
            ("app", &self.app),
            ("action", &self.action),
            ("result", &self.result),
        ] {
            if !value.trim().is_empty() {
                parts.push(format!("{key}={}", query_escape(value.trim())));
            }
        }
        if page > 0 {
            parts.push(format!("page={page}"));
        }
        parts.join("&")
    }
}

const AUDIT_PAGE: usize = 50;

pub(crate) struct AuditRow {
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub result: String,
    pub detail: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    nav: Option<Nav>,
    filter: AuditFilter,
    rows: Vec<AuditRow>,
    newer: Option<String>,
    older: Option<String>,
    export: String,
    page: usize,
}

async fn audit_entries<S: AccountStore>(
    console: &Console<S>,
    user: &ConsoleUser,
    filter: &AuditFilter,
    limit: usize,
    offset: usize,
) -> Result<Vec<AuditEntry>, Refused> {
    let mut query = format!("/v1/audit?limit={limit}&offset={offset}");
    let extra = filter.query();
    if !extra.is_empty() {
        query.push('&');
        query.push_str(&extra);
    }
    api::get(&console.api, user, &query).await
}

pub(crate) async fn audit<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Query(filter): Query<AuditFilter>,
    headers: HeaderMap,
    extensions: http::Extensions,
) -> Response {
    let signed = match signed(&console, &headers, client_ip(&extensions), "/audit") {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let page = filter.page.min(100_000);
    let mut entries = match audit_entries(
        &console,
        &signed.as_user,
        &filter,
        AUDIT_PAGE + 1,
        page * AUDIT_PAGE,
    )
    .await
    {
        Ok(entries) => entries,
        Err(error) => return refused(&signed, error),
    };
    let more = entries.len() > AUDIT_PAGE;
    entries.truncate(AUDIT_PAGE);
    render(
        &AuditPage {
            nav: Some(web::nav(&signed)),
            rows: entries
                .into_iter()
                .map(|e| AuditRow {
                    at: when(e.at),
                    actor: e.actor,
                    action: e.action,
                    target: e.target,
                    result: e.result,
                    detail: e.detail,
                })
                .collect(),
            newer: (page > 0).then(|| filter.page_query(page - 1)),
            older: more.then(|| filter.page_query(page + 1)),
            export: filter.page_query(0),
            page: page + 1,
            filter,
        },
        StatusCode::OK,
    )
}

/// The filtered audit log as a file (up to 10,000 entries, newest first).
async fn audit_export<S: AccountStore + Send + Sync + 'static>(
    console: Arc<Console<S>>,
    filter: AuditFilter,
    headers: HeaderMap,
    extensions: http::Extensions,
    csv: bool,
) -> Response {
    let signed = match signed(&console, &headers, client_ip(&extensions), "/audit") {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let entries = match audit_entries(&console, &signed.as_user, &filter, 10_000, 0).await {
        Ok(entries) => entries,
        Err(error) => return refused(&signed, error),
    };
    let (body, kind, file) = if csv {
        let mut out = String::from("at,actor,action,target,result,detail\r\n");
        for e in &entries {
            let fields = [
                when(e.at),
                e.actor.clone(),
                e.action.clone(),
                e.target.clone(),
                e.result.clone(),
                e.detail.clone(),
            ];
            let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
            out.push_str(&line.join(","));
            out.push_str("\r\n");
        }
        (out, "text/csv; charset=utf-8", "berth-audit.csv")
    } else {
        (
            serde_json::to_string_pretty(&entries).unwrap_or_default(),
            "application/json",
            "berth-audit.json",
        )
    };
    (
        [
            (header::CONTENT_TYPE, kind.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// A CSV field, quoted when needed; a leading `=`, `+`, `-` or `@` is defused so a
/// spreadsheet never runs an audit entry as a formula.
fn csv_field(text: &str) -> String {
    let mut text = text.to_owned();
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        text.insert(0, '\'');
    }
    if text.contains([',', '"', '\n', '\r']) || text.starts_with('\'') {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

pub(crate) async fn audit_csv<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Query(filter): Query<AuditFilter>,
    headers: HeaderMap,
    extensions: http::Extensions,
) -> Response {
    audit_export(console, filter, headers, extensions, true).await
}

pub(crate) async fn audit_json<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Query(filter): Query<AuditFilter>,
    headers: HeaderMap,
    extensions: http::Extensions,
) -> Response {
    audit_export(console, filter, headers, extensions, false).await
}

// ---- users --------------------------------------------------------------------------------

pub(crate) struct UserRow {
    pub name: String,
    pub role: String,
    pub status: String,
    pub last_login: String,
    pub two_factor: bool,
    pub note: String,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    nav: Option<Nav>,
    users: Vec<UserRow>,
    link: Option<(String, String)>,
    roles: Vec<&'static str>,
    two_factor_required: bool,
    sign_up_open: bool,
}

async fn users_page<S: AccountStore>(
    console: &Console<S>,
    signed: &Signed,
    link: Option<(String, String)>,
) -> Response {
    let users: Vec<UserInfo> = match api::get(&console.api, &signed.as_user, "/v1/users").await {
        Ok(users) => users,
        Err(error) => return refused(signed, error),
    };
    let policy: berth_api::TwoFactorPolicy =
        match api::get(&console.api, &signed.as_user, "/v1/console/two-factor").await {
            Ok(policy) => policy,
            Err(error) => return refused(signed, error),
        };
    let sign_up: berth_api::SignUpPolicy =
        match api::get(&console.api, &signed.as_user, "/v1/console/sign-up").await {
            Ok(policy) => policy,
            Err(error) => return refused(signed, error),
        };
    let now = jiff::Timestamp::now().as_millisecond();
    render(
        &UsersPage {
            nav: Some(web::nav(signed)),
            users: users
                .into_iter()
                .map(|u| UserRow {
                    note: if u.locked_until.is_some_and(|at| at > now) {
                        "locked after failed logins".to_owned()
                    } else if !u.has_password {
                        "waiting for its setup link".to_owned()
                    } else {
                        String::new()
                    },
                    last_login: u
                        .last_login_at
                        .map(when)
                        .unwrap_or_else(|| "never".to_owned()),
                    two_factor: u.two_factor,
                    name: u.name,
                    role: u.role,
                    status: u.status,
                })
                .collect(),
            link,
            roles: vec!["viewer", "deployer", "admin"],
            two_factor_required: policy.required,
            sign_up_open: sign_up.open,
        },
        StatusCode::OK,
    )
}

pub(crate) async fn users<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    headers: HeaderMap,
    extensions: http::Extensions,
) -> Response {
    match signed(&console, &headers, client_ip(&extensions), "/users") {
        Ok(signed) => users_page(&console, &signed, None).await,
        Err(response) => response,
    }
}

#[derive(Deserialize)]
pub(crate) struct AddUserForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
}

fn link_text(link: &UserLink) -> (String, String) {
    // The agent's own idea of the console's address, never the request's Host header.
    let url = link.url.clone().unwrap_or_else(|| link.path.clone());
    (
        link.user.clone(),
        format!("{url} (valid until {}, once)", when(link.expires_at)),
    )
}

pub(crate) async fn add_user<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    headers: HeaderMap,
    extensions: http::Extensions,
    Form(form): Form<AddUserForm>,
) -> Response {
    let signed = match web::posted(&console, &headers, &extensions, "/users", &form.csrf) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let body = serde_json::json!({ "name": form.name.trim(), "role": form.role });
    match api::call::<UserLink>(
        &console.api,
        &signed.as_user,
        Method::POST,
        "/v1/users",
        Some(body),
    )
    .await
    {
        Ok(link) => users_page(&console, &signed, Some(link_text(&link))).await,
        Err(error) => refused(&signed, error),
    }
}

#[derive(Deserialize)]
pub(crate) struct UserActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    role: String,
}

pub(crate) async fn user_action<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
    extensions: http::Extensions,
    Form(form): Form<UserActionForm>,
) -> Response {
    let signed = match web::posted(&console, &headers, &extensions, "/users", &form.csrf) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !accounts::valid_user_name(&name) {
        return not_found("user");
    }
    let (method, path, body) = match action.as_str() {
        "disable" | "enable" | "reset" => {
            (Method::POST, format!("/v1/users/{name}/{action}"), None)
        }
        "role" => (
            Method::POST,
            format!("/v1/users/{name}/role"),
            Some(serde_json::json!({ "role": form.role })),
        ),
        "sessions" => (Method::DELETE, format!("/v1/users/{name}/sessions"), None),
        "approve" | "deny" => (Method::POST, format!("/v1/users/{name}/{action}"), None),
        "sign-up" if name == "everyone" => (
            Method::POST,
            "/v1/console/sign-up".to_owned(),
            Some(serde_json::json!({ "open": form.role == "open" })),
        ),
        "two-factor" if name == "everyone" => (
            Method::POST,
            "/v1/console/two-factor".to_owned(),
            Some(serde_json::json!({ "required": form.role == "required" })),
        ),
        _ => {
            return not_found("action");
        }
    };
    match api::call::<serde_json::Value>(&console.api, &signed.as_user, method, &path, body).await {
        Ok(answer) if action == "reset" => match serde_json::from_value::<UserLink>(answer) {
            Ok(link) => users_page(&console, &signed, Some(link_text(&link))).await,
            Err(_) => Redirect::to("/users").into_response(),
        },
        Ok(_) => Redirect::to("/users").into_response(),
        Err(error) => refused(&signed, error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csv_field_never_runs_as_a_formula() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("-1"), "\"'-1\"");
    }

    #[test]
    fn the_next_page_after_login_stays_on_this_console() {
        assert_eq!(web::safe_next(Some("/apps/shop")), "/apps/shop");
        assert_eq!(web::safe_next(Some("//evil.example/")), "/");
        assert_eq!(web::safe_next(Some("https://evil.example/")), "/");
        assert_eq!(web::safe_next(Some("/\\evil.example")), "/");
        assert_eq!(web::safe_next(Some("/\t/evil.example")), "/");
        assert_eq!(
            web::safe_next(Some("/audit?user=alice&page=2")),
            "/audit?user=alice&page=2"
        );
        assert_eq!(web::safe_next(None), "/");
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
