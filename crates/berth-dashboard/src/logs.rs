//! An app's logs: the last lines, or the lines berth kept with the filters of `berth logs`,
//! rendered on the server; new lines follow over server-sent events (`assets/console.js`).

use crate::Console;
use crate::api::{self};
use crate::view::{Nav, render, when};
use crate::web::{self, client_ip, refused, valid_app};
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use berth_api::{LogLine, Status};
use berth_auth::accounts::AccountStore;
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use std::sync::Arc;

fn escape(text: &str) -> String {
    crate::view::query_escape(text)
}

#[derive(Deserialize, Default)]
pub(crate) struct LogsQuery {
    #[serde(default)]
    service: String,
    #[serde(default)]
    grep: String,
    #[serde(default)]
    level: String,
    #[serde(default)]
    release: String,
}

pub(crate) struct Row {
    pub at: String,
    pub text: String,
    pub stderr: bool,
}

#[derive(Template)]
#[template(path = "logs.html")]
struct LogsPage {
    nav: Option<Nav>,
    app: String,
    services: Vec<String>,
    service: String,
    grep: String,
    level: String,
    levels: Vec<&'static str>,
    release: String,
    lines: Vec<Row>,
    live: bool,
    error: Option<String>,
}

pub(crate) async fn logs<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path(app): Path<String>,
    Query(query): Query<LogsQuery>,
    headers: HeaderMap,
    extensions: http::Extensions,
) -> Response {
    let back = format!("/apps/{app}/logs");
    let signed = match web::signed(&console, &headers, client_ip(&extensions), &back) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !valid_app(&app) {
        return crate::view::message(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such app.",
            None,
        );
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
    let services: Vec<String> = status
        .apps
        .iter()
        .filter(|a| a.name == app)
        .flat_map(|a| a.services.iter().map(|s| s.name.clone()))
        .collect();
    let service = if services.contains(&query.service) {
        query.service.clone()
    } else {
        services.first().cloned().unwrap_or_default()
    };
    let level = match query.level.as_str() {
        "error" | "warn" | "info" | "debug" => query.level.clone(),
        _ => "any".to_owned(),
    };
    let release: Option<i64> = query.release.trim().parse().ok();
    let filtered = !query.grep.trim().is_empty() || level != "any" || release.is_some();
    let mut path = format!(
        "/v1/apps/{app}/services/{service}/logs?tail={}",
        if filtered { 500 } else { 200 }
    );
    if !query.grep.trim().is_empty() {
        path.push_str(&format!("&grep={}", escape(query.grep.trim())));
    }
    if level != "any" {
        path.push_str(&format!("&level={level}"));
    }
    if let Some(release) = release {
        path.push_str(&format!("&release={release}"));
    }
    let (lines, error) = if service.is_empty() {
        (Vec::new(), Some("This app runs no service.".to_owned()))
    } else {
        match api::lines(&console.api, &signed.as_user, &path).await {
            Ok(lines) => (
                lines
                    .into_iter()
                    .filter_map(|line| serde_json::from_slice::<LogLine>(&line).ok())
                    .map(|line| Row {
                        at: line.at.map(when).unwrap_or_default(),
                        stderr: line.stream == "stderr",
                        text: line.line,
                    })
                    .collect(),
                None,
            ),
            Err(error) => (Vec::new(), Some(error.message)),
        }
    };
    render(
        &LogsPage {
            nav: Some(web::nav(&signed)),
            app,
            services,
            live: !filtered && error.is_none(),
            service,
            grep: query.grep.clone(),
            level,
            levels: vec!["any", "error", "warn", "info", "debug"],
            release: release.map(|r| r.to_string()).unwrap_or_default(),
            lines,
            error,
        },
        StatusCode::OK,
    )
}

/// New lines of a service as server-sent events, each a JSON [`LogLine`].
pub(crate) async fn stream<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path(app): Path<String>,
    Query(query): Query<LogsQuery>,
    headers: HeaderMap,
    extensions: http::Extensions,
) -> Response {
    let back = format!("/apps/{app}/logs");
    let signed = match web::signed(&console, &headers, client_ip(&extensions), &back) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !valid_app(&app) || !valid_app(&query.service) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let path = format!(
        "/v1/apps/{app}/services/{}/logs?tail=0&follow=true",
        query.service
    );
    let body = match api::follow(&console.api, &signed.as_user, &path).await {
        Ok(body) => body,
        Err(error) => return (error.status, error.message).into_response(),
    };
    let events = api::split_lines(body).map(|line| {
        Ok::<_, std::convert::Infallible>(Event::default().data(String::from_utf8_lossy(&line)))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
