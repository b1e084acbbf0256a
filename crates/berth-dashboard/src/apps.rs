//! The apps overview and an app's page, with its actions behind confirmations.

use crate::Console;
use crate::api::{self};
use crate::charts;
use crate::view::{Nav, message, render, when};
use crate::web::{self, Signed, client_ip, signed};
use crate::web::{CsrfForm, not_found, refused, valid_app};
use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use berth_api::{AppStatus, OperationEvent, ReleaseInfo, RollbackPlan, Status};
use berth_auth::accounts::AccountStore;
use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;
use std::sync::Arc;

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
    /// The last hour: requests and 5xx answers a minute, CPU and memory, each with a sparkline.
    pub activity: Option<Activity>,
    pub live: String,
    pub version: String,
    pub deployed: String,
    pub health: String,
    pub healthy: bool,
    pub note: String,
}

/// An app's last hour in figures and sparklines.
pub(crate) struct Activity {
    pub requests: String,
    pub errors: String,
    pub cpu: String,
    pub memory: String,
    pub requests_line: String,
    pub cpu_line: String,
    pub memory_line: String,
}

fn activity(history: &berth_api::ResourceHistory, app: &str) -> Activity {
    let step_ms = i64::try_from(history.step_seconds).unwrap_or(60) * 1000;
    let of_app = |metric: &'static str| {
        let prefix = format!("{app}/");
        charts::sum(
            history
                .series
                .iter()
                .filter(move |s| s.metric == metric && s.subject.starts_with(&prefix)),
        )
    };
    let spark = |points: &[berth_api::ResourcePoint]| {
        charts::line(
            points,
            history.since,
            history.until,
            None,
            (120, 24),
            step_ms,
        )
        .replacen("class=\"chart\"", "class=\"chart spark\"", 1)
    };
    let last = |points: &[berth_api::ResourcePoint], show: fn(f64) -> String| {
        points.last().map_or("—".to_owned(), |p| show(p.mean))
    };
    let (requests, errors) = (of_app("requests_per_minute"), of_app("errors_per_minute"));
    let (cpu, memory) = (of_app("cpu_percent"), of_app("memory_bytes"));
    Activity {
        requests: last(&requests, |v| format!("{v:.1}/min")),
        errors: last(&errors, |v| format!("{v:.1}/min")),
        cpu: last(&cpu, |v| format!("{v:.1} %")),
        memory: last(&memory, charts::bytes),
        requests_line: spark(&requests),
        cpu_line: spark(&cpu),
        memory_line: spark(&memory),
    }
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
        activity: None,
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
    // So are the last hour's requests and resources.
    let history: Option<berth_api::ResourceHistory> =
        api::get(&console.api, &signed.as_user, "/v1/resources?window=1h")
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
                    activity: history.as_ref().map(|h| activity(h, &app.name)),
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
    /// Pages of releases, newest first: the page before and after this one, if any.
    newer: Option<usize>,
    older: Option<usize>,
}

/// Releases shown on an app's page at a time.
const RELEASES_PAGE: usize = 50;

#[derive(Deserialize)]
pub(crate) struct PageQuery {
    page: Option<usize>,
}

pub(crate) async fn app<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path(app): Path<String>,
    Query(query): Query<PageQuery>,
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
    // Up to the API's 1,000 releases, 50 a page.
    let page = query.page.unwrap_or(0).min(1_000 / RELEASES_PAGE - 1);
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
        // One more than this page needs, to know whether an older page exists (the API
        // reads at most 1,000).
        &format!(
            "/v1/apps/{app}/releases?limit={}",
            (page + 1) * RELEASES_PAGE + 1
        ),
    )
    .await
    {
        Ok(releases) => releases,
        Err(error) => return refused(&signed, error),
    };
    let older = (releases.len() > (page + 1) * RELEASES_PAGE).then_some(page + 1);
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
            newer: page.checked_sub(1),
            older,
            releases: releases
                .iter()
                .skip(page * RELEASES_PAGE)
                .take(RELEASES_PAGE)
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
#[template(path = "compare.html")]
struct ComparePage {
    nav: Option<Nav>,
    app: String,
    from: i64,
    from_version: String,
    to: i64,
    to_version: String,
    changes: Vec<String>,
}

#[derive(Deserialize)]
pub(crate) struct CompareQuery {
    from: i64,
    to: i64,
}

/// The manifest of one recorded release against another's.
pub(crate) async fn compare<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path(app): Path<String>,
    Query(query): Query<CompareQuery>,
    headers: HeaderMap,
    extensions: http::Extensions,
) -> Response {
    let here = format!("/apps/{app}");
    let signed = match signed(&console, &headers, client_ip(&extensions), &here) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !valid_app(&app) {
        return not_found("app");
    }
    let path = format!(
        "/v1/apps/{app}/releases/compare?from={}&to={}",
        query.from, query.to
    );
    let plan: RollbackPlan = match api::get(&console.api, &signed.as_user, &path).await {
        Ok(plan) => plan,
        Err(error) => return refused(&signed, error),
    };
    render(
        &ComparePage {
            nav: Some(web::nav(&signed)),
            app,
            from: plan.from,
            from_version: plan.from_version,
            to: plan.to,
            to_version: plan.to_version,
            changes: plan.changes,
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

pub(crate) fn operation_page(
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
