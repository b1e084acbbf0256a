//! An app's secrets: the HTTP side of the engine's secret operations (`engine/app_secrets.rs`).

use super::*;

pub(super) async fn list_secrets(
    State(state): State<ApiState>,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<SecretInfo>>> {
    check_app_name(&app)?;
    Ok(Json(state.engine.list_secrets(&app)?))
}

pub(super) async fn set_secret(
    State(state): State<ApiState>,
    Path((app, name)): Path<(String, String)>,
    headers: HeaderMap,
    Json(value): Json<SecretValue>,
) -> ApiResult<Json<SecretInfo>> {
    check_app_name(&app)?;
    let actor = actor(&state, &headers);
    Ok(Json(state.engine.set_secret(
        &app,
        &name,
        &value.value,
        &actor,
        "secret.set",
    )?))
}

pub(super) async fn get_secret(
    State(state): State<ApiState>,
    Path((app, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<SecretValue>> {
    check_app_name(&app)?;
    let actor = actor(&state, &headers);
    let value = state.engine.secret_value(&app, &name, &actor)?;
    Ok(Json(SecretValue { value }))
}

pub(super) async fn delete_secret(
    State(state): State<ApiState>,
    Path((app, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    check_app_name(&app)?;
    state
        .engine
        .delete_secret(&app, &name, &actor(&state, &headers))?;
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
    let actor = actor(&state, &headers);
    Ok(Json(state.engine.generate_secret(
        &app,
        &name,
        query.force,
        &actor,
    )?))
}
