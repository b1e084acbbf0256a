//! Admin pages: an app's secrets (names only: a value goes in, never out) and API tokens.

use crate::Console;
use crate::api::{self};
use crate::view::{Nav, message, render, when};
use crate::web::{self, Signed, client_ip, refused, valid_app};
use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use berth_api::{SecretInfo, TokenInfo, TokenIssued};
use berth_auth::accounts::AccountStore;
use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;
use std::sync::Arc;

fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(crate) struct SecretRow {
    pub name: String,
    pub used_by: String,
    pub updated: String,
}

#[derive(Template)]
#[template(path = "secrets.html")]
struct SecretsPage {
    nav: Option<Nav>,
    app: String,
    secrets: Vec<SecretRow>,
    note: Option<String>,
}

async fn secrets_page<S: AccountStore>(
    console: &Console<S>,
    signed: &Signed,
    app: &str,
    note: Option<String>,
) -> Response {
    let list: Vec<SecretInfo> = match api::get(
        &console.api,
        &signed.as_user,
        &format!("/v1/apps/{app}/secrets"),
    )
    .await
    {
        Ok(list) => list,
        Err(error) => return refused(signed, error),
    };
    render(
        &SecretsPage {
            nav: Some(web::nav(signed)),
            app: app.to_owned(),
            secrets: list
                .into_iter()
                .map(|s| SecretRow {
                    used_by: if s.used_by.is_empty() {
                        "—".to_owned()
                    } else {
                        s.used_by.join(", ")
                    },
                    updated: when(s.updated_at),
                    name: s.name,
                })
                .collect(),
            note,
        },
        StatusCode::OK,
    )
}

pub(crate) async fn secrets<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    extensions: http::Extensions,
) -> Response {
    let path = format!("/apps/{app}/secrets");
    let signed = match web::signed(&console, &headers, client_ip(&extensions), &path) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !valid_app(&app) {
        return message(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such app.",
            None,
        );
    }
    secrets_page(&console, &signed, &app, None).await
}

#[derive(Deserialize)]
pub(crate) struct SecretForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    value: String,
}

/// Sets a secret's value: it goes to the API and is never written back into a page.
async fn put_secret<S: AccountStore>(
    console: &Console<S>,
    signed: &Signed,
    app: &str,
    name: &str,
    value: &str,
) -> Response {
    if !valid_app(app) || !valid_secret_name(name) {
        return message(
            StatusCode::BAD_REQUEST,
            "Not a secret name",
            "A secret's name is letters, digits and `_`, not starting with a digit.",
            None,
        );
    }
    match api::call::<SecretInfo>(
        &console.api,
        &signed.as_user,
        Method::PUT,
        &format!("/v1/apps/{app}/secrets/{name}"),
        Some(serde_json::json!({ "value": value })),
    )
    .await
    {
        Ok(info) => {
            let note = if info.used_by.is_empty() {
                format!("{name} is set.")
            } else {
                format!(
                    "{name} is set; restart {} (or deploy) for it to take effect.",
                    info.used_by.join(", ")
                )
            };
            secrets_page(console, signed, app, Some(note)).await
        }
        Err(error) => refused(signed, error),
    }
}

pub(crate) async fn add_secret<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    extensions: http::Extensions,
    Form(form): Form<SecretForm>,
) -> Response {
    let back = format!("/apps/{app}/secrets");
    let signed = match web::posted(&console, &headers, &extensions, &back, &form.csrf) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    put_secret(&console, &signed, &app, form.name.trim(), &form.value).await
}

pub(crate) async fn secret_action<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path(path): Path<(String, String)>,
    headers: HeaderMap,
    extensions: http::Extensions,
    Form(form): Form<SecretForm>,
) -> Response {
    let (app, name) = path;
    let back = format!("/apps/{app}/secrets");
    let signed = match web::posted(&console, &headers, &extensions, &back, &form.csrf) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    put_secret(&console, &signed, &app, &name, &form.value).await
}

pub(crate) async fn rotate_secret<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path((app, name)): Path<(String, String)>,
    headers: HeaderMap,
    extensions: http::Extensions,
    Form(form): Form<SecretForm>,
) -> Response {
    let back = format!("/apps/{app}/secrets");
    let signed = match web::posted(&console, &headers, &extensions, &back, &form.csrf) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !valid_app(&app) || !valid_secret_name(&name) {
        return message(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such secret.",
            None,
        );
    }
    match api::call::<SecretInfo>(
        &console.api,
        &signed.as_user,
        Method::POST,
        &format!("/v1/apps/{app}/secrets/{name}/generate"),
        None,
    )
    .await
    {
        Ok(info) => {
            let note = format!(
                "{name} has a new random value{}.",
                if info.used_by.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; restart {} (or deploy) for it to take effect",
                        info.used_by.join(", ")
                    )
                }
            );
            secrets_page(&console, &signed, &app, Some(note)).await
        }
        Err(error) => refused(&signed, error),
    }
}

pub(crate) struct TokenRow {
    pub name: String,
    pub scope: String,
    pub app: String,
    pub state: String,
    pub live: bool,
    pub last_used: String,
    pub created_by: String,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    nav: Option<Nav>,
    tokens: Vec<TokenRow>,
    issued: Option<String>,
}

async fn tokens_page<S: AccountStore>(
    console: &Console<S>,
    signed: &Signed,
    issued: Option<String>,
) -> Response {
    let list: Vec<TokenInfo> = match api::get(&console.api, &signed.as_user, "/v1/tokens").await {
        Ok(list) => list,
        Err(error) => return refused(signed, error),
    };
    let now = jiff::Timestamp::now().as_millisecond();
    render(
        &TokensPage {
            nav: Some(web::nav(signed)),
            tokens: list
                .into_iter()
                .map(|t| {
                    let (state, live) = match (t.revoked_at, t.expires_at) {
                        (Some(at), _) => (format!("revoked {}", when(at)), false),
                        (None, Some(at)) if at <= now => (format!("expired {}", when(at)), false),
                        (None, Some(at)) => (format!("until {}", when(at)), true),
                        (None, None) => ("live".to_owned(), true),
                    };
                    TokenRow {
                        app: t.app.unwrap_or_else(|| "any".to_owned()),
                        last_used: t
                            .last_used_at
                            .map(when)
                            .unwrap_or_else(|| "never".to_owned()),
                        name: t.name,
                        scope: t.scope,
                        state,
                        live,
                        created_by: t.created_by,
                    }
                })
                .collect(),
            issued,
        },
        StatusCode::OK,
    )
}

pub(crate) async fn tokens<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    headers: HeaderMap,
    extensions: http::Extensions,
) -> Response {
    match web::signed(&console, &headers, client_ip(&extensions), "/tokens") {
        Ok(signed) => tokens_page(&console, &signed, None).await,
        Err(response) => response,
    }
}

#[derive(Deserialize)]
pub(crate) struct TokenForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    app: String,
    #[serde(default)]
    days: String,
}

pub(crate) async fn add_token<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    headers: HeaderMap,
    extensions: http::Extensions,
    Form(form): Form<TokenForm>,
) -> Response {
    let signed = match web::posted(&console, &headers, &extensions, "/tokens", &form.csrf) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let app = form.app.trim();
    let days: Option<u64> = form.days.trim().parse().ok().filter(|d| *d > 0);
    let body = serde_json::json!({
        "name": form.name.trim(),
        "scope": form.scope,
        "app": (!app.is_empty()).then_some(app),
        "expires_in_seconds": days.map(|d| d.saturating_mul(86_400)),
    });
    match api::call::<TokenIssued>(
        &console.api,
        &signed.as_user,
        Method::POST,
        "/v1/tokens",
        Some(body),
    )
    .await
    {
        Ok(issued) => tokens_page(&console, &signed, Some(issued.token)).await,
        Err(error) => refused(&signed, error),
    }
}

#[derive(Deserialize)]
pub(crate) struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

pub(crate) async fn revoke_token<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    extensions: http::Extensions,
    Form(form): Form<CsrfOnly>,
) -> Response {
    let signed = match web::posted(&console, &headers, &extensions, "/tokens", &form.csrf) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !berth_auth::tokens::valid_name(&name) {
        return message(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such token.",
            None,
        );
    }
    match api::call::<serde_json::Value>(
        &console.api,
        &signed.as_user,
        Method::DELETE,
        &format!("/v1/tokens/{name}"),
        None,
    )
    .await
    {
        Ok(_) => Redirect::to("/tokens").into_response(),
        Err(error) => refused(&signed, error),
    }
}
