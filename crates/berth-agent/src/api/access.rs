//! Who may call which route over TCP: the API token's scope and app (berth_auth), checked
//! before any handler runs. The unix socket needs none (its file mode decides).

use super::*;
use berth_auth::Scope;
use http::Method;

/// Set by the access check for the handlers (and stripped from every client request first):
/// the token's name, for the audit log, the one app it may act on, and its scope.
pub(crate) const TOKEN_HEADER: &str = "x-berth-token";
pub(crate) const TOKEN_APP_HEADER: &str = "x-berth-token-app";
pub(crate) const TOKEN_SCOPE_HEADER: &str = "x-berth-token-scope";
/// Set for a console user's request: their name, for the audit log.
pub(crate) const USER_HEADER: &str = "x-berth-user";

/// Whether the request came with a token below admin (set by `authorize` only): such a caller
/// may not hand the agent a manifest of its own for backups, nor deploy one that reaches the
/// host.
pub(crate) fn below_admin(headers: &HeaderMap) -> bool {
    headers
        .get(TOKEN_SCOPE_HEADER)
        .is_some_and(|scope| scope.as_bytes() != b"admin")
}

fn segments(path: &str) -> Vec<&str> {
    path.trim_start_matches('/').split('/').collect()
}

/// The scope a request needs. A route not named here needs admin: a new route stays closed
/// to lesser tokens until someone decides otherwise.
pub(crate) fn required_scope(method: &Method, path: &str) -> Scope {
    let reads = method == Method::GET || method == Method::HEAD;
    match segments(path).as_slice() {
        // Tokens, the agent itself, secrets (values), a shell in a container, destroying an
        // app: whoever holds these holds the server.
        ["v1", "tokens" | "users" | "console" | "agent", ..] => Scope::Admin,
        ["v1", "apps", _, "secrets", ..] | ["v1", "apps", _, "destroy"] => Scope::Admin,
        ["v1", "apps", _, "services", _, "exec" | "attach"] => Scope::Admin,
        _ if reads => Scope::Read,
        ["v1", "uploads" | "deploy"] => Scope::Deploy,
        ["v1", "alerts", "mutes", ..] | ["v1", "certificates", _, "renew"] => Scope::Deploy,
        [
            "v1",
            "apps",
            _,
            "rollback" | "stop" | "start" | "maintenance",
        ] => Scope::Deploy,
        ["v1", "apps", _, "alerts", "test"] => Scope::Deploy,
        ["v1", "apps", _, "services", _, "restart"] => Scope::Deploy,
        // Backups as the live release defines them (`below_admin` keeps a caller's manifest
        // out); listing can re-read storages, so it is not a mere read.
        ["v1", "apps", _, "backups", "run" | "list"] => Scope::Deploy,
        // Restores write to the server; verify and prune take identities and retention rules.
        _ => Scope::Admin,
    }
}

/// The app a route acts on, when its path names one.
pub(crate) fn path_app(path: &str) -> Option<&str> {
    match segments(path).as_slice() {
        ["v1", "apps", app, ..] => Some(app),
        _ => None,
    }
}

/// Whether a token limited to one app may call a route whose path names no app: only what a
/// deploy needs (the agent's version, the server's fit, the upload and the deploy itself,
/// whose manifest the deploy handler checks). Never tokens, the agent, alerts or
/// certificates, which span apps.
pub(crate) fn app_token_may_call(path: &str) -> bool {
    matches!(path, "/v1/info" | "/v1/top" | "/v1/uploads" | "/v1/deploy")
}

/// The access check every request passes before its handler. Over the unix socket (no
/// token configured) it only strips the headers it alone may set.
pub(super) async fn authorize(
    State(state): State<ApiState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    for internal in [
        TOKEN_HEADER,
        TOKEN_APP_HEADER,
        TOKEN_SCOPE_HEADER,
        USER_HEADER,
    ] {
        request.headers_mut().remove(internal);
    }
    // The console calls this router in-process with the logged-in user as an extension,
    // which no network client can set; its router accepts nothing else.
    let console_user = request
        .extensions()
        .get::<berth_dashboard::ConsoleUser>()
        .cloned();
    if let Some(user) = console_user {
        return authorize_console_user(&state, user, request, next).await;
    }
    if state.transport == CONSOLE {
        return unauthenticated(OpError::new(
            ErrorKind::Unauthorized,
            "the console's API takes only logged-in users",
        ));
    }
    let Some(agent_token) = state.token.clone() else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_owned();
    let now = berth_state::now_ms();
    // The agent's own token (DATA_DIR/api-token) is an admin token named `api-token`.
    let caller = if berth_auth::tokens::constant_time_eq(
        presented.as_bytes(),
        agent_token.as_bytes(),
    ) {
        berth_auth::Caller {
            name: "api-token".into(),
            scope: Scope::Admin,
            app: None,
        }
    } else {
        match berth_auth::authenticate(&**state.engine.store(), &presented, now) {
            Ok((caller, record)) => {
                // The last use, to the minute: not a write per request.
                if record.last_used_ms.is_none_or(|at| now - at > 60_000) {
                    let _ = state.engine.store().touch_token(&record.id, now);
                }
                caller
            }
            Err(berth_auth::AuthError::Refused(refusal)) => {
                if let berth_auth::Refusal::Revoked { name } | berth_auth::Refusal::Expired { name } =
                    &refusal
                    && refusal_is_new(name, berth_state::now_ms())
                {
                    let path = request.uri().path().to_owned();
                    state.engine.audit(
                        &format!("token {name} via {}", state.transport),
                        "refused",
                        &path,
                        "refused",
                        &refusal.to_string(),
                    );
                }
                return unauthenticated(OpError::new(ErrorKind::Unauthorized, refusal.to_string()).hint(
                    "pass a live token (BERTH_TOKEN): the agent's own is in its api-token file; `berth tokens add` on the server makes a scoped one",
                ));
            }
            Err(error @ berth_auth::AuthError::Store(_)) => {
                return ApiFailure::from(OpError::failed(error.to_string())).into_response();
            }
        }
    };
    let path = request.uri().path().to_owned();
    let needed = required_scope(request.method(), &path);
    let refusal = if !caller.scope.allows(needed) {
        Some(format!(
            "the API token `{}` has the {} scope; {} {path} needs {needed}",
            caller.name,
            caller.scope,
            request.method()
        ))
    } else if let Some(own) = &caller.app {
        let allowed = match path_app(&path) {
            Some(app) => app == own,
            None => app_token_may_call(&path),
        };
        (!allowed).then(|| format!("the API token `{}` is for the app {own} only", caller.name))
    } else {
        None
    };
    // Names and apps are plain words (checked when the token was made).
    if let Ok(name) = http::HeaderValue::from_str(&caller.name) {
        request.headers_mut().insert(TOKEN_HEADER, name);
    }
    if let Some(app) = caller.app.as_deref() {
        match http::HeaderValue::from_str(app) {
            Ok(value) => {
                request.headers_mut().insert(TOKEN_APP_HEADER, value);
            }
            // Fail closed: a restriction that cannot be passed on is a refusal.
            Err(_) => {
                return ApiFailure::from(OpError::new(
                    ErrorKind::Forbidden,
                    format!("the API token `{}` names an unusable app", caller.name),
                ))
                .into_response();
            }
        }
    }
    request.headers_mut().insert(
        TOKEN_SCOPE_HEADER,
        http::HeaderValue::from_static(caller.scope.as_str()),
    );
    if let Some(message) = refusal {
        if refusal_is_new(&caller.name, now) {
            state.engine.audit(
                &actor(&state, request.headers()),
                "refused",
                &path,
                "refused",
                &message,
            );
        }
        return ApiFailure::from(OpError::new(ErrorKind::Forbidden, message).hint(
            "use a token of a wider scope, or ask an admin for one: `berth tokens add NAME --scope deploy`",
        ))
        .into_response();
    }
    next.run(request).await
}

/// The transport name of the router the console calls in-process.
pub(crate) const CONSOLE: &str = "console";

/// A console user's request: their role's scope against the same table as a token's.
async fn authorize_console_user(
    state: &ApiState,
    user: berth_dashboard::ConsoleUser,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let scope = user.role.scope();
    let Ok(name) = http::HeaderValue::from_str(&user.name) else {
        return unauthenticated(OpError::new(ErrorKind::Unauthorized, "not a user name"));
    };
    request.headers_mut().insert(USER_HEADER, name);
    request.headers_mut().insert(
        TOKEN_SCOPE_HEADER,
        http::HeaderValue::from_static(scope.as_str()),
    );
    let path = request.uri().path().to_owned();
    let needed = required_scope(request.method(), &path);
    if !scope.allows(needed) {
        let message = format!(
            "the user {} is a {}; {} {path} needs the {} role",
            user.name,
            user.role,
            request.method(),
            match needed {
                Scope::Read => "viewer",
                Scope::Deploy => "deployer",
                Scope::Admin => "admin",
            }
        );
        if refusal_is_new(&format!("user {}", user.name), berth_state::now_ms()) {
            state.engine.audit(
                &actor(state, request.headers()),
                "refused",
                &path,
                "refused",
                &message,
            );
        }
        return ApiFailure::from(
            OpError::new(ErrorKind::Forbidden, message)
                .hint("ask an admin for a wider role (`berth users role NAME deployer`)"),
        )
        .into_response();
    }
    next.run(request).await
}

/// Whether a refusal of this token is the first within a minute: one audit entry per token
/// and minute, so a holder of a known token cannot fill the audit log with refused requests.
fn refusal_is_new(token: &str, now: i64) -> bool {
    static LAST: std::sync::Mutex<BTreeMap<String, i64>> = std::sync::Mutex::new(BTreeMap::new());
    let Ok(mut last) = LAST.lock() else {
        return true;
    };
    // Forget the old ones, so the map stays as small as the tokens refused this minute.
    last.retain(|_, at| now - *at < 60_000);
    if last.contains_key(token) {
        return false;
    }
    last.insert(token.to_owned(), now);
    true
}

/// 401, and the connection is not kept: an unauthenticated client does not hold a slot.
fn unauthenticated(error: OpError) -> Response {
    let mut refused = ApiFailure(error, StatusCode::UNAUTHORIZED).into_response();
    refused.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    refused
}

fn info(record: &berth_auth::TokenRecord) -> TokenInfo {
    TokenInfo {
        name: record.name.clone(),
        scope: record.scope.to_string(),
        app: record.app.clone(),
        created_at: record.created_ms,
        created_by: record.created_by.clone(),
        expires_at: record.expires_ms,
        last_used_at: record.last_used_ms,
        revoked_at: record.revoked_ms,
    }
}

pub(super) async fn list_tokens(State(state): State<ApiState>) -> ApiResult<Json<Vec<TokenInfo>>> {
    let records = state.engine.store().tokens()?;
    Ok(Json(records.iter().map(info).collect()))
}

pub(super) async fn add_token(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Json(request): Json<TokenRequest>,
) -> ApiResult<Json<TokenIssued>> {
    if !berth_auth::tokens::valid_name(&request.name) || request.name == "api-token" {
        return Err(OpError::invalid(format!("`{}` is not a token name", request.name))
            .hint("lower-case letters, digits, `-`, `_` and `.`, up to 64; `api-token` is the agent's own")
            .into());
    }
    let scope: Scope = request
        .scope
        .parse()
        .map_err(|e: String| OpError::invalid(e))?;
    if let Some(app) = &request.app {
        check_app_name(app)?;
    }
    let now = berth_state::now_ms();
    let expires = match request.expires_in_seconds {
        Some(0) => {
            return Err(OpError::invalid("a token that expires at once is of no use").into());
        }
        Some(seconds) => Some(
            now.saturating_add(
                i64::try_from(seconds)
                    .unwrap_or(i64::MAX / 2)
                    .saturating_mul(1000),
            ),
        ),
        None => None,
    };
    let actor = actor(&state, &headers);
    let issued = berth_auth::tokens::issue(
        &request.name,
        scope,
        request.app.clone(),
        now,
        &actor,
        expires,
    );
    state.engine.store().add_token(&issued.record)?;
    state.engine.audit(
        &actor,
        "token add",
        &format!("token/{}", request.name),
        "ok",
        &format!(
            "scope {scope}{}",
            request
                .app
                .as_deref()
                .map(|a| format!(", app {a}"))
                .unwrap_or_default()
        ),
    );
    Ok(Json(TokenIssued {
        token: issued.text,
        info: info(&issued.record),
    }))
}

pub(super) async fn revoke_token(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let actor = actor(&state, &headers);
    if !state
        .engine
        .store()
        .revoke_token(&name, berth_state::now_ms())?
    {
        return Err(OpError::new(
            ErrorKind::NotFound,
            format!("no live API token is named `{name}`"),
        )
        .hint("`berth tokens list` shows them")
        .into());
    }
    state
        .engine
        .audit(&actor, "token revoke", &format!("token/{name}"), "ok", "");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_needs_the_scope_its_effect_calls_for() {
        let get = Method::GET;
        let post = Method::POST;
        let delete = Method::DELETE;
        for (method, path, scope) in [
            (&get, "/v1/status", Scope::Read),
            (&get, "/v1/apps/shop/releases", Scope::Read),
            (&get, "/v1/apps/shop/services/web/logs", Scope::Read),
            (&post, "/v1/apps/shop/backups/list", Scope::Deploy),
            (&post, "/v1/apps/shop/backups/verify", Scope::Admin),
            (&post, "/v1/apps/shop/backups/prune", Scope::Admin),
            (&post, "/v1/certificates/example.com/renew", Scope::Deploy),
            (&post, "/v1/some/new/route", Scope::Admin),
            (&get, "/v1/users", Scope::Admin),
            (&post, "/v1/users/alice/role", Scope::Admin),
            (&Method::PUT, "/v1/apps/shop/anything", Scope::Admin),
            (&post, "/v1/deploy", Scope::Deploy),
            (&post, "/v1/uploads", Scope::Deploy),
            (&post, "/v1/apps/shop/rollback", Scope::Deploy),
            (&post, "/v1/apps/shop/services/web/restart", Scope::Deploy),
            (&post, "/v1/apps/shop/maintenance", Scope::Deploy),
            (&post, "/v1/apps/shop/backups/run", Scope::Deploy),
            (&post, "/v1/apps/shop/restore", Scope::Admin),
            (&post, "/v1/alerts/mutes", Scope::Deploy),
            (&get, "/v1/apps/shop/secrets", Scope::Admin),
            (&get, "/v1/apps/shop/secrets/DB_PASSWORD", Scope::Admin),
            (&post, "/v1/apps/shop/services/web/exec", Scope::Admin),
            (&get, "/v1/apps/shop/services/web/attach", Scope::Admin),
            (&post, "/v1/apps/shop/destroy", Scope::Admin),
            (&post, "/v1/agent/upgrade", Scope::Admin),
            (&get, "/v1/tokens", Scope::Admin),
            (&delete, "/v1/tokens/ci", Scope::Admin),
        ] {
            assert_eq!(required_scope(method, path), scope, "{method} {path}");
        }
    }

    #[test]
    fn an_app_token_reaches_its_app_and_what_a_deploy_needs() {
        assert_eq!(path_app("/v1/apps/shop/rollback"), Some("shop"));
        assert_eq!(path_app("/v1/status"), None);
        assert!(app_token_may_call("/v1/deploy"));
        assert!(app_token_may_call("/v1/top"));
        for spanning in [
            "/v1/status",
            "/v1/tokens",
            "/v1/agent/stop",
            "/v1/alerts/mutes",
            "/v1/metrics",
            "/v1/certificates/x/renew",
        ] {
            assert!(!app_token_may_call(spanning), "{spanning}");
        }
    }

    #[test]
    fn refusals_are_audited_once_a_minute_per_token() {
        assert!(refusal_is_new("flood-a", 1_000_000));
        assert!(!refusal_is_new("flood-a", 1_030_000));
        assert!(refusal_is_new("flood-b", 1_030_000));
        assert!(refusal_is_new("flood-a", 1_061_000));
    }
}
