//! Users, for admins: roles, links, sign-up approvals and the console's policies.

use crate::Console;
use crate::api::{self};
use crate::view::{Nav, render, when};
use crate::web::{self, Signed, client_ip, signed};
use crate::web::{not_found, refused};
use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use berth_api::{UserInfo, UserLink};
use berth_auth::accounts::{self, AccountStore};
use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;
use std::sync::Arc;

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
