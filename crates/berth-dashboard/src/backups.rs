//! An app's backups: the list with each copy's last check, a backup or a verification now,
//! and a restore behind a confirmation that asks for the app's name to be typed.

use crate::apps::operation_page;
use crate::view::{self, Nav, render, when};
use crate::web::{self, CsrfForm, client_ip, not_found, refused, signed, valid_app};
use crate::{Console, api, charts};
use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use berth_api::{BackupInfo, BackupList};
use berth_auth::accounts::AccountStore;
use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;
use std::sync::Arc;

const PAGE: usize = 50;

pub(crate) struct CopyRow {
    pub text: String,
    pub good: bool,
}

pub(crate) struct BackupRow {
    pub name: String,
    pub id: String,
    pub taken: String,
    pub reason: String,
    pub size: String,
    pub copies: Vec<CopyRow>,
}

fn backup_row(backup: &BackupInfo) -> BackupRow {
    BackupRow {
        name: backup.name.clone(),
        id: backup.id.clone(),
        taken: when(backup.created_at),
        reason: backup.reason.clone(),
        size: charts::bytes(backup.size as f64),
        copies: backup
            .copies
            .iter()
            .map(|copy| match (&copy.verify_error, &copy.untrusted) {
                (Some(error), _) => CopyRow {
                    text: format!("{}: failed its check: {error}", copy.storage),
                    good: false,
                },
                (None, Some(why)) => CopyRow {
                    text: format!("{}: not trusted: {why}", copy.storage),
                    good: false,
                },
                (None, None) => CopyRow {
                    text: format!(
                        "{}: checked {} ({})",
                        copy.storage,
                        when(copy.verified_at),
                        copy.check
                    ),
                    good: true,
                },
            })
            .collect(),
    }
}

#[derive(Template)]
#[template(path = "backups.html")]
struct BackupsPage {
    nav: Option<Nav>,
    app: String,
    backups: Vec<BackupRow>,
    warnings: Vec<String>,
    configured: bool,
    previous: Option<usize>,
    next: Option<usize>,
}

#[derive(Deserialize)]
pub(crate) struct PageQuery {
    page: Option<usize>,
}

async fn list<S: AccountStore>(
    console: &Console<S>,
    signed: &web::Signed,
    app: &str,
) -> Result<BackupList, api::Refused> {
    api::call(
        &console.api,
        &signed.as_user,
        Method::POST,
        &format!("/v1/apps/{app}/backups/list"),
        Some(serde_json::json!({})),
    )
    .await
}

pub(crate) async fn backups<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path(app): Path<String>,
    Query(query): Query<PageQuery>,
    headers: HeaderMap,
    extensions: http::Extensions,
) -> Response {
    let here = format!("/apps/{app}/backups");
    let signed = match signed(&console, &headers, client_ip(&extensions), &here) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !valid_app(&app) {
        return not_found("app");
    }
    let (list, configured) = match list(&console, &signed, &app).await {
        Ok(list) => (list, true),
        // No `[backups]` in the manifest is a page saying so, not an error.
        Err(error) if error.message.contains("defines no backups") => (
            BackupList {
                backups: Vec::new(),
                warnings: Vec::new(),
            },
            false,
        ),
        Err(error) => return refused(&signed, error),
    };
    let mut rows: Vec<&BackupInfo> = list.backups.iter().collect();
    rows.sort_by_key(|b| std::cmp::Reverse(b.created_at));
    let page = query.page.unwrap_or(0).min(rows.len() / PAGE + 1);
    let shown = rows
        .iter()
        .skip(page.saturating_mul(PAGE))
        .take(PAGE)
        .map(|b| backup_row(b))
        .collect();
    render(
        &BackupsPage {
            nav: Some(web::nav(&signed)),
            app,
            backups: shown,
            warnings: list.warnings.clone(),
            configured,
            previous: page.checked_sub(1),
            next: (rows.len() > (page + 1).saturating_mul(PAGE)).then_some(page + 1),
        },
        StatusCode::OK,
    )
}

pub(crate) async fn run<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    extensions: http::Extensions,
    Form(form): Form<CsrfForm>,
) -> Response {
    let back = format!("/apps/{app}/backups");
    let signed = match web::posted(&console, &headers, &extensions, &back, &form.csrf) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !valid_app(&app) {
        return not_found("app");
    }
    match api::operation(
        &console.api,
        &signed.as_user,
        &format!("/v1/apps/{app}/backups/run"),
        serde_json::json!({}),
    )
    .await
    {
        Ok(operation) => operation_page(&signed, format!("Backup of {app}"), operation, back),
        Err(error) => refused(&signed, error),
    }
}

#[derive(Deserialize)]
pub(crate) struct BackupForm {
    #[serde(default)]
    csrf: String,
    name: String,
    id: String,
    #[serde(default)]
    confirm: String,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

pub(crate) async fn verify<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    extensions: http::Extensions,
    Form(form): Form<BackupForm>,
) -> Response {
    let back = format!("/apps/{app}/backups");
    let signed = match web::posted(&console, &headers, &extensions, &back, &form.csrf) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !valid_app(&app) || !valid_app(&form.name) || !valid_id(&form.id) {
        return not_found("backup");
    }
    match api::operation(
        &console.api,
        &signed.as_user,
        &format!("/v1/apps/{app}/backups/verify"),
        serde_json::json!({ "names": [form.name], "id": form.id }),
    )
    .await
    {
        Ok(operation) => operation_page(
            &signed,
            format!("Verification of {} {}", form.name, form.id),
            operation,
            back,
        ),
        Err(error) => refused(&signed, error),
    }
}

#[derive(Template)]
#[template(path = "restore.html")]
struct RestorePage {
    nav: Option<Nav>,
    app: String,
    name: String,
    id: String,
    taken: String,
    problem: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct RestoreQuery {
    name: String,
    id: String,
}

/// The restore's confirmation: the backup must be one the list shows.
pub(crate) async fn confirm_restore<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path(app): Path<String>,
    Query(query): Query<RestoreQuery>,
    headers: HeaderMap,
    extensions: http::Extensions,
) -> Response {
    let here = format!("/apps/{app}/backups");
    let signed = match signed(&console, &headers, client_ip(&extensions), &here) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    restore_page(&console, &signed, app, query.name, query.id, None).await
}

async fn restore_page<S: AccountStore>(
    console: &Console<S>,
    signed: &web::Signed,
    app: String,
    name: String,
    id: String,
    problem: Option<String>,
) -> Response {
    if !valid_app(&app) || !valid_app(&name) || !valid_id(&id) {
        return not_found("backup");
    }
    let list = match list(console, signed, &app).await {
        Ok(list) => list,
        Err(error) => return refused(signed, error),
    };
    let Some(backup) = list.backups.iter().find(|b| b.name == name && b.id == id) else {
        return not_found("backup");
    };
    let status = if problem.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    render(
        &RestorePage {
            nav: Some(web::nav(signed)),
            taken: when(backup.created_at),
            app,
            name,
            id,
            problem,
        },
        status,
    )
}

pub(crate) async fn restore<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    extensions: http::Extensions,
    Form(form): Form<BackupForm>,
) -> Response {
    let back = format!("/apps/{app}/backups");
    let signed = match web::posted(&console, &headers, &extensions, &back, &form.csrf) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if form.confirm.trim() != app {
        let problem = format!(
            "The name typed was not {app}: nothing was restored. Type it exactly to confirm."
        );
        return restore_page(&console, &signed, app, form.name, form.id, Some(problem)).await;
    }
    if !valid_app(&app) || !valid_app(&form.name) || !valid_id(&form.id) {
        return not_found("backup");
    }
    match api::operation(
        &console.api,
        &signed.as_user,
        &format!("/v1/apps/{app}/restore"),
        serde_json::json!({ "name": form.name, "id": form.id, "force": true }),
    )
    .await
    {
        Ok(operation) => operation_page(
            &signed,
            format!("Restore of {} {}", form.name, form.id),
            operation,
            back,
        ),
        Err(error) => view::refused(Some(web::nav(&signed)), error),
    }
}
