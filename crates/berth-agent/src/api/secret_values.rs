//! An app's secrets: listed with their users, set, read, deleted and generated.

use super::*;

pub(super) fn check_secret_name(name: &str) -> ApiResult<()> {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128;
    if valid {
        Ok(())
    } else {
        Err(OpError::invalid(format!("`{name}` is not a valid secret name"))
            .hint("use letters, digits and underscores, not starting with a digit, such as JWT_SECRET_KEY")
            .into())
    }
}

/// Services of the live release that use each secret.
pub(super) fn secret_users(engine: &Engine, app: &str) -> BTreeMap<String, Vec<String>> {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Some(manifest) = engine
        .store()
        .live_release(app)
        .ok()
        .flatten()
        .and_then(|r| release_manifest(&r).ok())
    else {
        return users;
    };
    for service in manifest
        .services
        .values()
        .chain(manifest.accessories.values())
    {
        for secret in &service.secrets {
            users
                .entry(secret.name.clone())
                .or_default()
                .push(service.name.clone());
        }
    }
    users
}

pub(super) async fn list_secrets(
    State(state): State<ApiState>,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<SecretInfo>>> {
    check_app_name(&app)?;
    let users = secret_users(&state.engine, &app);
    let secrets = state.engine.store().secrets(&app)?;
    Ok(Json(
        secrets
            .into_iter()
            .map(|s| SecretInfo {
                used_by: users.get(&s.name).cloned().unwrap_or_default(),
                name: s.name,
                created_at: s.created_at,
                updated_at: s.updated_at,
            })
            .collect(),
    ))
}

pub(super) fn secret_info(state: &ApiState, app: &str, name: &str) -> ApiResult<SecretInfo> {
    let users = secret_users(&state.engine, app);
    let stored = state
        .engine
        .store()
        .secrets(app)?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| OpError::failed(format!("secret {name} vanished after it was stored")))?;
    Ok(SecretInfo {
        used_by: users.get(name).cloned().unwrap_or_default(),
        name: stored.name,
        created_at: stored.created_at,
        updated_at: stored.updated_at,
    })
}

pub(super) fn store_secret(
    state: &ApiState,
    app: &str,
    name: &str,
    value: &str,
    actor: &str,
    action: &str,
) -> ApiResult<SecretInfo> {
    let sealed = state.engine.secrets().seal(value).map_err(OpError::from)?;
    state.engine.store().put_secret(app, name, &sealed)?;
    // Only the name is ever recorded.
    state
        .engine
        .audit(actor, action, &format!("{app}/{name}"), "ok", "");
    secret_info(state, app, name)
}

pub(super) async fn set_secret(
    State(state): State<ApiState>,
    Path((app, name)): Path<(String, String)>,
    headers: HeaderMap,
    Json(value): Json<SecretValue>,
) -> ApiResult<Json<SecretInfo>> {
    check_app_name(&app)?;
    check_secret_name(&name)?;
    if value.value.is_empty() {
        return Err(OpError::invalid("the secret's value is empty").into());
    }
    Ok(Json(store_secret(
        &state,
        &app,
        &name,
        &value.value,
        &actor(&state, &headers),
        "secret.set",
    )?))
}

pub(super) async fn get_secret(
    State(state): State<ApiState>,
    Path((app, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<SecretValue>> {
    check_app_name(&app)?;
    check_secret_name(&name)?;
    let ciphertext = state
        .engine
        .store()
        .secret_ciphertext(&app, &name)?
        .ok_or_else(|| {
            OpError::not_found(format!("app {app} has no secret {name}")).hint(format!(
                "set it with `berth secrets set {name} --app {app}`"
            ))
        })?;
    let value = state
        .engine
        .secrets()
        .open_value(&name, &ciphertext)
        .map_err(OpError::from)?;
    state.engine.audit(
        &actor(&state, &headers),
        "secret.get",
        &format!("{app}/{name}"),
        "ok",
        "",
    );
    Ok(Json(SecretValue { value }))
}

pub(super) async fn delete_secret(
    State(state): State<ApiState>,
    Path((app, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    check_app_name(&app)?;
    check_secret_name(&name)?;
    if !state.engine.store().delete_secret(&app, &name)? {
        return Err(OpError::not_found(format!("app {app} has no secret {name}")).into());
    }
    state.engine.audit(
        &actor(&state, &headers),
        "secret.rm",
        &format!("{app}/{name}"),
        "ok",
        "",
    );
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub(super) struct GenerateQuery {
    #[serde(default)]
    force: bool,
}

pub(super) async fn generate_secret(
    State(state): State<ApiState>,
    Path((app, name)): Path<(String, String)>,
    Query(query): Query<GenerateQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<SecretInfo>> {
    check_app_name(&app)?;
    check_secret_name(&name)?;
    if !query.force
        && state
            .engine
            .store()
            .secret_ciphertext(&app, &name)?
            .is_some()
    {
        return Err(OpError::new(
            ErrorKind::Conflict,
            format!("secret {name} of {app} already exists"),
        )
        .hint("pass --force to replace it with a new random value")
        .into());
    }
    let value = secrets::generate_value();
    Ok(Json(store_secret(
        &state,
        &app,
        &name,
        &value,
        &actor(&state, &headers),
        "secret.generate",
    )?))
}
