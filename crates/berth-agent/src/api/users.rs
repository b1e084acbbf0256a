//! Console accounts through the API (admin only, like tokens): `berth users` and the
//! console's users page both come here, so both are audited alike.

use super::*;
use berth_auth::accounts::{self as auth, AccountStore, LinkPurpose, Role, UserRecord, UserStatus};

fn info(user: &UserRecord) -> UserInfo {
    UserInfo {
        name: user.name.clone(),
        role: user.role.to_string(),
        status: user.status.as_str().to_owned(),
        has_password: user.password_hash.is_some(),
        created_at: user.created_ms,
        created_by: user.created_by.clone(),
        last_login_at: user.last_login_ms,
        locked_until: user.locked_until_ms,
        two_factor: user.totp_secret.is_some(),
    }
}

pub(super) async fn two_factor_policy(
    State(state): State<ApiState>,
) -> ApiResult<Json<TwoFactorPolicy>> {
    Ok(Json(TwoFactorPolicy {
        required: auth::two_factor_required(&**state.engine.store())?,
    }))
}

pub(super) async fn set_two_factor_policy(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Json(policy): Json<TwoFactorPolicy>,
) -> ApiResult<Json<TwoFactorPolicy>> {
    state.engine.store().set_setting(
        auth::REQUIRE_2FA,
        if policy.required { "true" } else { "false" },
    )?;
    state.engine.audit(
        &actor(&state, &headers),
        "two-factor policy",
        "console",
        "ok",
        if policy.required {
            "every user must log in with a second factor"
        } else {
            "a second factor is each user's choice"
        },
    );
    Ok(Json(policy))
}

fn no_such_user(name: &str) -> ApiFailure {
    OpError::new(ErrorKind::NotFound, format!("no user is named `{name}`"))
        .hint("`berth users list` shows them")
        .into()
}

fn existing(state: &ApiState, name: &str) -> ApiResult<UserRecord> {
    state
        .engine
        .store()
        .user(name)?
        .ok_or_else(|| no_such_user(name))
}

/// A one-time link for `user`, stored hashed; the secret goes only into the answer.
pub(crate) fn make_link(state: &ApiState, user: &str, purpose: LinkPurpose) -> ApiResult<UserLink> {
    let settings = auth::Settings::default();
    let (secret, record) = auth::issue_link(user, purpose, berth_state::now_ms(), &settings);
    state.engine.store().insert_link(&record)?;
    Ok(UserLink {
        user: user.to_owned(),
        purpose: purpose.as_str().to_owned(),
        path: format!("/link/{secret}"),
        url: state
            .info
            .dashboard
            .as_ref()
            .map(|base| format!("{base}/link/{secret}")),
        expires_at: record.expires_ms,
    })
}

pub(super) async fn list_users(State(state): State<ApiState>) -> ApiResult<Json<Vec<UserInfo>>> {
    let users = state.engine.store().users()?;
    Ok(Json(users.iter().map(info).collect()))
}

pub(super) async fn add_user(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Json(request): Json<UserRequest>,
) -> ApiResult<Json<UserLink>> {
    if !auth::valid_user_name(&request.name) {
        return Err(
            OpError::invalid(format!("`{}` is not a user name", request.name))
                .hint(
                    "2 to 64 lower-case letters, digits, `-`, `_` and `.`, starting with a letter",
                )
                .into(),
        );
    }
    let role: Role = request
        .role
        .parse()
        .map_err(|e: String| OpError::invalid(e))?;
    let actor = actor(&state, &headers);
    let record = UserRecord::new(&request.name, role, berth_state::now_ms(), &actor);
    if !state.engine.store().insert_user(&record)? {
        return Err(OpError::new(
            ErrorKind::Conflict,
            format!("a user named `{}` exists", request.name),
        )
        .hint("`berth users reset NAME` makes a new password link for them")
        .into());
    }
    let link = make_link(&state, &request.name, LinkPurpose::Setup)?;
    state.engine.audit(
        &actor,
        "user add",
        &format!("user/{}", request.name),
        "ok",
        &format!("role {role}; setup link valid for an hour"),
    );
    Ok(Json(link))
}

pub(super) async fn reset_user(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<UserLink>> {
    existing(&state, &name)?;
    let link = make_link(&state, &name, LinkPurpose::Reset)?;
    state.engine.audit(
        &actor(&state, &headers),
        "user reset",
        &format!("user/{name}"),
        "ok",
        "password reset link valid for an hour",
    );
    Ok(Json(link))
}

async fn set_status(
    state: ApiState,
    name: String,
    headers: HeaderMap,
    status: UserStatus,
) -> ApiResult<Json<UserInfo>> {
    // Not while a login reads and writes this account back.
    let _exclusive = auth::exclusive();
    let mut user = existing(&state, &name)?;
    let actor = actor(&state, &headers);
    if status == UserStatus::Disabled
        && headers
            .get(USER_HEADER)
            .is_some_and(|v| v.as_bytes() == name.as_bytes())
    {
        return Err(OpError::invalid("you cannot disable your own account")
            .hint("ask another admin, or use `berth users disable` on the server")
            .into());
    }
    user.status = status;
    let store = state.engine.store();
    store.update_user(&user)?;
    let ended = if status == UserStatus::Disabled {
        store.delete_sessions_of(&name)?
    } else {
        0
    };
    state.engine.audit(
        &actor,
        if status == UserStatus::Disabled {
            "user disable"
        } else {
            "user enable"
        },
        &format!("user/{name}"),
        "ok",
        &if ended > 0 {
            format!("{ended} session(s) ended")
        } else {
            String::new()
        },
    );
    Ok(Json(info(&user)))
}

pub(super) async fn disable_user(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<UserInfo>> {
    set_status(state, name, headers, UserStatus::Disabled).await
}

pub(super) async fn enable_user(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<UserInfo>> {
    set_status(state, name, headers, UserStatus::Active).await
}

pub(super) async fn set_role(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(request): Json<UserRoleRequest>,
) -> ApiResult<Json<UserInfo>> {
    // Not while a login reads and writes this account back.
    let _exclusive = auth::exclusive();
    let role: Role = request
        .role
        .parse()
        .map_err(|e: String| OpError::invalid(e))?;
    let mut user = existing(&state, &name)?;
    if user.role == role {
        return Ok(Json(info(&user)));
    }
    let before = user.role;
    user.role = role;
    let store = state.engine.store();
    store.update_user(&user)?;
    // A privilege change ends the user's sessions: they log in again with the new role.
    let ended = store.delete_sessions_of(&name)?;
    state.engine.audit(
        &actor(&state, &headers),
        "user role",
        &format!("user/{name}"),
        "ok",
        &format!("{before} → {role}; {ended} session(s) ended"),
    );
    Ok(Json(info(&user)))
}

pub(super) async fn end_sessions(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<SessionsEnded>> {
    existing(&state, &name)?;
    let ended = state.engine.store().delete_sessions_of(&name)?;
    state.engine.audit(
        &actor(&state, &headers),
        "user logout",
        &format!("user/{name}"),
        "ok",
        &format!("{ended} session(s) ended"),
    );
    Ok(Json(SessionsEnded { ended }))
}

pub(super) async fn sign_up_policy(State(state): State<ApiState>) -> ApiResult<Json<SignUpPolicy>> {
    Ok(Json(SignUpPolicy {
        open: auth::sign_up_open(&**state.engine.store())?,
    }))
}

pub(super) async fn set_sign_up_policy(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Json(policy): Json<SignUpPolicy>,
) -> ApiResult<Json<SignUpPolicy>> {
    state
        .engine
        .store()
        .set_setting(auth::SIGN_UP, if policy.open { "open" } else { "closed" })?;
    state.engine.audit(
        &actor(&state, &headers),
        "sign-up policy",
        "console",
        "ok",
        if policy.open {
            "the login page offers a form to ask for an account"
        } else {
            "accounts only from an admin"
        },
    );
    Ok(Json(policy))
}

fn pending(state: &ApiState, name: &str) -> ApiResult<UserRecord> {
    let user = existing(state, name)?;
    if user.status != UserStatus::Pending {
        return Err(OpError::invalid(format!(
            "{name} did not ask for an account: there is nothing to approve or deny"
        ))
        .hint("`berth users list` shows the requests as `pending`")
        .into());
    }
    Ok(user)
}

pub(super) async fn approve_user(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<UserInfo>> {
    // Not while a login reads and writes this account back.
    let _exclusive = auth::exclusive();
    let mut user = pending(&state, &name)?;
    user.status = UserStatus::Active;
    state.engine.store().update_user(&user)?;
    state.engine.audit(
        &actor(&state, &headers),
        "user approve",
        &format!("user/{name}"),
        "ok",
        &format!("sign-up request approved as a {}", user.role),
    );
    Ok(Json(info(&user)))
}

pub(super) async fn deny_user(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<UserInfo>> {
    // Not while a login reads and writes this account back.
    let _exclusive = auth::exclusive();
    let user = pending(&state, &name)?;
    state.engine.store().delete_user(&name)?;
    state.engine.audit(
        &actor(&state, &headers),
        "user deny",
        &format!("user/{name}"),
        "ok",
        "sign-up request denied and removed",
    );
    Ok(Json(info(&user)))
}
