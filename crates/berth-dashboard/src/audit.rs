//! The audit log: filters, pages, CSV and JSON.

use crate::Console;
use crate::api::{self, ConsoleUser, Refused};
use crate::view::{Nav, query_escape, render, when};
use crate::web::refused;
use crate::web::{self, client_ip, signed};
use askama::Template;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use berth_api::AuditEntry;
use berth_auth::accounts::AccountStore;
use http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use std::sync::Arc;

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
}
