//! Small operations on the state and Docker that the engine and the backups both do the same
//! way.

use crate::{OpError, names};
use berth_manifest::Manifest;
use berth_runtime::ContainerRuntime;
use berth_state::{AuditEntry, InstanceState, Release, Store};

/// Appends to the audit log; a failure to write it is logged, never fatal to the operation.
pub fn audit(store: &Store, actor: &str, action: &str, target: &str, result: &str, detail: &str) {
    let entry = AuditEntry {
        at: berth_state::now_ms(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        result: result.to_owned(),
        detail: detail.to_owned(),
    };
    if let Err(error) = store.add_audit(&entry) {
        tracing::error!(%error, action, target, "cannot write the audit log");
    }
}

/// The manifest a release was made from, as the state file keeps it.
pub fn release_manifest(release: &Release) -> Result<Manifest, OpError> {
    serde_json::from_str(&release.manifest_json).map_err(|e| {
        OpError::failed(format!(
            "the stored manifest of release {} of {} is unreadable: {e}",
            release.number, release.app
        ))
    })
}

/// Container IDs and names serving a service now: its current replicas (as the state file
/// records them), or the accessory's container.
pub async fn service_containers(
    runtime: &dyn ContainerRuntime,
    store: &Store,
    agent_id: &str,
    app: &str,
    service: &str,
    accessory: bool,
) -> Result<Vec<(String, String)>, OpError> {
    if accessory {
        let containers = runtime
            .list_containers(&[
                (names::AGENT, agent_id),
                (names::APP, app),
                (names::ROLE, "accessory"),
                (names::SERVICE, service),
            ])
            .await?;
        return Ok(containers.into_iter().map(|c| (c.id, c.name)).collect());
    }
    Ok(store
        .instances(app)?
        .into_iter()
        .filter(|i| i.service == service && i.state == InstanceState::Current)
        .map(|i| (i.container_id, i.name))
        .collect())
}

/// Told to whoever subscribed (the backup schedule, later the monitors) when an app's live
/// release changes: a deploy or rollback went live, or the app was destroyed. A subscriber
/// that falls behind misses messages (the channel is bounded), so it treats one as "look
/// again" and reads the state, never as the whole story.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseChange {
    pub app: String,
    /// The release now live; `None` when the app has none any more.
    pub live_release: Option<i64>,
}
