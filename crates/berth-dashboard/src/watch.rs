//! What the server and its alerts say: resource charts over an hour, a day or a week, the
//! alerts firing and past with their mutes, and the certificates the edge serves.

use crate::charts;
use crate::view::{Nav, render, when};
use crate::web::{self, CsrfForm, client_ip, refused, signed};
use crate::{Console, api};
use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use berth_api::{AlertInfo, AlertsAnswer, ResourceHistory, Status, TopAnswer};
use berth_auth::accounts::AccountStore;
use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;
use std::sync::Arc;

// ---- the server ---------------------------------------------------------------------------

pub(crate) struct ChartView {
    /// No sample in the window yet.
    pub empty: bool,
    pub title: String,
    pub now: String,
    pub peak: String,
    pub svg: String,
}

#[derive(Template)]
#[template(path = "server.html")]
struct ServerPage {
    nav: Option<Nav>,
    window: &'static str,
    windows: [&'static str; 3],
    charts: Vec<ChartView>,
    summary: String,
}

#[derive(Deserialize)]
pub(crate) struct WindowQuery {
    window: Option<String>,
}

const WINDOWS: [&str; 3] = ["1h", "24h", "7d"];

pub(crate) async fn server<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Query(query): Query<WindowQuery>,
    headers: HeaderMap,
    extensions: http::Extensions,
) -> Response {
    let signed = match signed(&console, &headers, client_ip(&extensions), "/server") {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let window = WINDOWS
        .into_iter()
        .find(|w| Some(*w) == query.window.as_deref())
        .unwrap_or("24h");
    let history: ResourceHistory = match api::get(
        &console.api,
        &signed.as_user,
        &format!("/v1/resources?window={window}"),
    )
    .await
    {
        Ok(history) => history,
        Err(error) => return refused(&signed, error),
    };
    let top: Option<TopAnswer> = api::get(&console.api, &signed.as_user, "/v1/top")
        .await
        .ok();
    let host = top.as_ref().map(|t| &t.host);
    let memory_total = host
        .map(|h| h.memory_total_bytes as f64)
        .filter(|m| *m > 0.0);
    let cpus = host.map(|h| h.cpus).unwrap_or(1).max(1);
    let step_ms = i64::try_from(history.step_seconds).unwrap_or(60) * 1000;
    let chart = |title: String, metric: &str, ceiling: Option<f64>, show: fn(f64) -> String| {
        let points = charts::find(&history.series, "host", metric)
            .map(|s| s.points.clone())
            .unwrap_or_default();
        ChartView {
            empty: points.is_empty(),
            title,
            now: points.last().map_or("—".to_owned(), |p| show(p.mean)),
            peak: points
                .iter()
                .map(|p| p.peak)
                .reduce(f64::max)
                .map_or("—".to_owned(), show),
            svg: charts::line(
                &points,
                history.since,
                history.until,
                ceiling,
                (720, 120),
                step_ms,
            ),
        }
    };
    let percent = |v: f64| format!("{v:.0} %");
    let mut views = vec![
        chart("CPU".to_owned(), "cpu_percent", Some(100.0), percent),
        chart(
            "Memory".to_owned(),
            "memory_bytes",
            memory_total,
            charts::bytes,
        ),
        chart(format!("Load (1 min, {cpus} CPUs)"), "load1", None, |v| {
            format!("{v:.2}")
        }),
    ];
    for series in history
        .series
        .iter()
        .filter(|s| s.subject == "host" && s.metric.starts_with("disk_percent"))
    {
        let purpose = series.metric.trim_start_matches("disk_percent").trim();
        views.push(chart(
            format!("Disk used ({purpose})"),
            &series.metric,
            Some(100.0),
            percent,
        ));
    }
    let summary = match host {
        Some(host) => format!(
            "{} CPUs · {} of memory · load {:.2} {:.2} {:.2}",
            host.cpus,
            charts::bytes(host.memory_total_bytes as f64),
            host.load[0],
            host.load[1],
            host.load[2]
        ),
        None => "The agent has no sample of the host yet.".to_owned(),
    };
    render(
        &ServerPage {
            nav: Some(web::nav(&signed)),
            window,
            windows: WINDOWS,
            charts: views,
            summary,
        },
        StatusCode::OK,
    )
}

// ---- alerts -------------------------------------------------------------------------------

pub(crate) struct AlertRow {
    pub rule: String,
    pub severity: String,
    pub app: String,
    pub subject: String,
    pub summary: String,
    pub started: String,
    pub resolved: String,
}

fn alert_row(alert: &AlertInfo) -> AlertRow {
    AlertRow {
        rule: alert.rule.clone(),
        severity: alert.severity.clone(),
        app: alert.app.clone().unwrap_or_else(|| "—".to_owned()),
        subject: alert.subject.clone(),
        summary: alert.summary.clone(),
        started: when(alert.started_at),
        resolved: alert
            .resolved_at
            .map(when)
            .unwrap_or_else(|| if alert.event { "—" } else { "firing" }.to_owned()),
    }
}

pub(crate) struct MuteRow {
    pub id: i64,
    pub scope: String,
    pub until: String,
    pub by: String,
}

#[derive(Template)]
#[template(path = "alerts.html")]
struct AlertsPage {
    nav: Option<Nav>,
    firing: Vec<AlertRow>,
    recent: Vec<AlertRow>,
    mutes: Vec<MuteRow>,
    failing: Vec<String>,
    can_mute: bool,
    more: Option<usize>,
}

#[derive(Deserialize)]
pub(crate) struct AlertsQuery {
    limit: Option<usize>,
}

pub(crate) async fn alerts<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Query(query): Query<AlertsQuery>,
    headers: HeaderMap,
    extensions: http::Extensions,
) -> Response {
    let signed = match signed(&console, &headers, client_ip(&extensions), "/alerts") {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let limit = query.limit.unwrap_or(50).clamp(1, 5_000);
    let answer: AlertsAnswer = match api::get(
        &console.api,
        &signed.as_user,
        &format!("/v1/alerts?limit={limit}"),
    )
    .await
    {
        Ok(answer) => answer,
        Err(error) => return refused(&signed, error),
    };
    let mutes = answer
        .mutes
        .iter()
        .map(|m| {
            let parts: Vec<String> = [("app", &m.app), ("rule", &m.rule), ("subject", &m.subject)]
                .into_iter()
                .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name} {v}")))
                .collect();
            MuteRow {
                id: m.id,
                scope: if parts.is_empty() {
                    "every alert".to_owned()
                } else {
                    parts.join(", ")
                },
                until: when(m.until),
                by: m.actor.clone(),
            }
        })
        .collect();
    render(
        &AlertsPage {
            nav: Some(web::nav(&signed)),
            firing: answer.firing.iter().map(alert_row).collect(),
            more: (answer.recent.len() >= limit && limit < 5_000).then_some((limit * 2).min(5_000)),
            recent: answer.recent.iter().map(alert_row).collect(),
            mutes,
            failing: answer
                .deliveries
                .iter()
                .filter(|d| d.error.is_some())
                .map(|d| format!("{}: {}", d.channel, d.error.clone().unwrap_or_default()))
                .collect(),
            can_mute: signed.user.role >= berth_auth::accounts::Role::Deployer,
        },
        StatusCode::OK,
    )
}

#[derive(Deserialize)]
pub(crate) struct MuteForm {
    csrf: String,
    #[serde(default)]
    app: String,
    #[serde(default)]
    rule: String,
    #[serde(default)]
    subject: String,
    hours: u64,
}

pub(crate) async fn mute<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    headers: HeaderMap,
    extensions: http::Extensions,
    Form(form): Form<MuteForm>,
) -> Response {
    let signed = match web::posted(&console, &headers, &extensions, "/alerts", &form.csrf) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let given = |text: &str| Some(text.trim().to_owned()).filter(|t| !t.is_empty());
    let body = serde_json::json!({
        "app": given(&form.app),
        "rule": given(&form.rule),
        "subject": given(&form.subject),
        "seconds": form.hours.saturating_mul(3600),
    });
    match api::call::<serde_json::Value>(
        &console.api,
        &signed.as_user,
        Method::POST,
        "/v1/alerts/mutes",
        Some(body),
    )
    .await
    {
        Ok(_) => Redirect::to("/alerts").into_response(),
        Err(error) => refused(&signed, error),
    }
}

pub(crate) async fn unmute<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    extensions: http::Extensions,
    Form(form): Form<CsrfForm>,
) -> Response {
    let signed = match web::posted(&console, &headers, &extensions, "/alerts", &form.csrf) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    match api::call::<serde_json::Value>(
        &console.api,
        &signed.as_user,
        Method::DELETE,
        &format!("/v1/alerts/mutes/{id}"),
        None,
    )
    .await
    {
        Ok(_) => Redirect::to("/alerts").into_response(),
        Err(error) => refused(&signed, error),
    }
}

// ---- certificates -------------------------------------------------------------------------

pub(crate) struct CertificateRow {
    pub domain: String,
    pub source: String,
    pub state: String,
    pub good: bool,
    pub expires: String,
    pub issuer: String,
    pub problem: String,
}

#[derive(Template)]
#[template(path = "certificates.html")]
struct CertificatesPage {
    nav: Option<Nav>,
    certificates: Vec<CertificateRow>,
    can_renew: bool,
}

pub(crate) async fn certificates<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    headers: HeaderMap,
    extensions: http::Extensions,
) -> Response {
    let signed = match signed(&console, &headers, client_ip(&extensions), "/certificates") {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let status: Status = match api::get(&console.api, &signed.as_user, "/v1/status").await {
        Ok(status) => status,
        Err(error) => return refused(&signed, error),
    };
    let now = jiff::Timestamp::now().as_millisecond();
    let certificates = status
        .certificates
        .iter()
        .map(|c| CertificateRow {
            domain: c.domain.clone(),
            source: c.source.clone(),
            good: c.state == "valid",
            state: c.state.clone(),
            expires: c.not_after.map_or("—".to_owned(), |at| {
                format!("{} ({} days)", when(at), (at - now) / 86_400_000)
            }),
            issuer: c.issuer.clone().unwrap_or_default(),
            problem: match (&c.last_error, c.next_attempt) {
                (Some(error), Some(next)) => format!("{error} (next attempt {})", when(next)),
                (Some(error), None) => error.clone(),
                _ => String::new(),
            },
        })
        .collect();
    render(
        &CertificatesPage {
            nav: Some(web::nav(&signed)),
            certificates,
            can_renew: signed.user.role >= berth_auth::accounts::Role::Deployer,
        },
        StatusCode::OK,
    )
}

pub(crate) async fn renew<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path(domain): Path<String>,
    headers: HeaderMap,
    extensions: http::Extensions,
    Form(form): Form<CsrfForm>,
) -> Response {
    let signed = match web::posted(&console, &headers, &extensions, "/certificates", &form.csrf) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !domain
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return web::not_found("certificate");
    }
    match api::call::<serde_json::Value>(
        &console.api,
        &signed.as_user,
        Method::POST,
        &format!("/v1/certificates/{domain}/renew"),
        None,
    )
    .await
    {
        Ok(_) => Redirect::to("/certificates").into_response(),
        Err(error) => refused(&signed, error),
    }
}
