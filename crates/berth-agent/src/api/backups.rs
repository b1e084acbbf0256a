//! Backups, verification, pruning and restores.

use super::*;
use berth_backup_jobs::Backups;

/// The manifest a backup request is about: the one sent (for this app), else the live one.
pub(super) fn backup_manifest(
    state: &ApiState,
    app: &str,
    sent: Option<&ManifestText>,
) -> ApiResult<berth_manifest::Manifest> {
    check_app_name(app)?;
    let sent = match sent {
        Some(text) => Some(parse_manifest(
            &text.manifest,
            &text.manifest_path,
            &text.base_dir,
            text.environment.as_deref(),
        )?),
        None => None,
    };
    Ok(state.engine.backups().backup_manifest(app, sent)?)
}

pub(super) fn check_backup_id(id: Option<&str>) -> ApiResult<()> {
    match id {
        Some(id) if !berth_backup::meta::is_valid_id(id) => {
            Err(OpError::invalid(format!("`{id}` is not a backup id"))
                .hint("ids look like 20261123T030001Z-3f9a; `berth backup list` shows them")
                .into())
        }
        _ => Ok(()),
    }
}

pub(super) async fn backup_run(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Json(request): Json<BackupRunRequest>,
) -> ApiResult<Response> {
    let actor = actor(&state, &headers);
    // A token below admin runs the live release's backups, never a manifest of its own.
    let given = request.manifest.as_ref().filter(|_| !below_admin(&headers));
    let manifest = backup_manifest(&state, &app, given)?;
    let names = Backups::backup_names(&manifest, &request.names)?;
    let backups = state.engine.backups().clone();
    let locks = backups.locks().clone();
    let actor2 = actor.clone();
    start_locked_operation(
        &state,
        &locks,
        &app,
        "backup",
        &actor,
        true,
        Vec::new(),
        move |progress| {
            backups.run_backups(
                manifest,
                names,
                berth_backup::Reason::Manual,
                actor2,
                progress,
            )
        },
    )
}

pub(super) async fn backup_list(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Json(request): Json<BackupListRequest>,
) -> ApiResult<Json<BackupList>> {
    // A token below admin lists the live release's storages, never ones it names itself.
    let given = request.manifest.as_ref().filter(|_| !below_admin(&headers));
    let manifest = backup_manifest(&state, &app, given)?;
    if let Some(name) = &request.name {
        Backups::backup_named(&manifest, name)?;
    }
    Ok(Json(
        state
            .engine
            .backups()
            .list_backups(&manifest, request.name.as_deref(), request.refresh)
            .await?,
    ))
}

pub(super) async fn backup_verify(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Json(request): Json<BackupVerifyRequest>,
) -> ApiResult<Response> {
    let actor = actor(&state, &headers);
    let manifest = backup_manifest(&state, &app, request.manifest.as_ref())?;
    let names = Backups::backup_names(&manifest, &request.names)?;
    check_backup_id(request.id.as_deref())?;
    let identity = match &request.identity {
        Some(text) => Some(
            berth_backup::Identities::parse(text)
                .map_err(|e| OpError::invalid(format!("the identity given: {e}")))?,
        ),
        None => None,
    };
    if request.adopt_unsigned && request.id.is_none() {
        return Err(OpError::invalid(
            "adopting unsigned backups takes one backup at a time, named with --id",
        )
        .hint("look at each unsigned backup in `berth backup list`, and adopt only those you know this server took")
        .into());
    }
    let backups = state.engine.backups().clone();
    let locks = backups.locks().clone();
    let actor2 = actor.clone();
    start_locked_operation(
        &state,
        &locks,
        &app,
        "verification",
        &actor,
        true,
        Vec::new(),
        move |progress| {
            backups.verify_backups(
                manifest,
                names,
                berth_backup_jobs::VerifyOptions {
                    id: request.id,
                    adopt_unsigned: request.adopt_unsigned,
                    identity,
                },
                actor2,
                progress,
            )
        },
    )
}

pub(super) async fn backup_prune(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Json(request): Json<BackupPruneRequest>,
) -> ApiResult<Response> {
    let actor = actor(&state, &headers);
    let manifest = backup_manifest(&state, &app, request.manifest.as_ref())?;
    let names = Backups::backup_names(&manifest, &request.names)?;
    let backups = state.engine.backups().clone();
    let locks = backups.locks().clone();
    let actor2 = actor.clone();
    start_locked_operation(
        &state,
        &locks,
        &app,
        "prune",
        &actor,
        true,
        Vec::new(),
        move |progress| backups.prune_backups(manifest, names, request.dry_run, actor2, progress),
    )
}

pub(super) async fn restore(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Json(request): Json<RestoreRequest>,
) -> ApiResult<Response> {
    let actor = actor(&state, &headers);
    let manifest = backup_manifest(&state, &app, request.manifest.as_ref())?;
    Backups::backup_named(&manifest, &request.name)?;
    check_backup_id(request.id.as_deref())?;
    let at = match &request.at {
        Some(text) => Some(berth_backup_jobs::parse_at(text)?),
        None => None,
    };
    let identity = match &request.identity {
        Some(text) => Some(
            berth_backup::Identities::parse(text)
                .map_err(|e| OpError::invalid(format!("the identity given: {e}")))?,
        ),
        None => None,
    };
    if let Some(from) = &request.from
        && !manifest.backup.backups[&request.name].to.contains(from)
    {
        return Err(
            OpError::invalid(format!("backup {} is not stored on {from}", request.name))
                .hint(format!(
                    "its storage: {}",
                    manifest.backup.backups[&request.name].to.join(", ")
                ))
                .into(),
        );
    }
    let plan = berth_backup_jobs::RestorePlan {
        manifest,
        name: request.name,
        id: request.id,
        at,
        to: request.to.map(PathBuf::from),
        force: request.force,
        from: request.from,
        identity,
        keep_setuid: request.keep_setuid,
        allow_untrusted: request.allow_untrusted,
        actor: actor.clone(),
    };
    let backups = state.engine.backups().clone();
    // The deploy lock: nothing may replace the containers a restore stops and starts.
    start_operation(
        &state,
        &app,
        "restore",
        &actor,
        false,
        Vec::new(),
        move |progress| backups.restore(plan, progress),
    )
}
