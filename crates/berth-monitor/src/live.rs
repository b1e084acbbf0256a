//! What the live releases ask for: the manifests the monitors read their settings from
//! (monitors, thresholds, alert channels).

use berth_engine::Engine;
use berth_manifest::Manifest;
use std::collections::BTreeMap;

/// The manifest of an app's live release, if it has one.
pub fn manifest(engine: &Engine, app: &str) -> Option<Manifest> {
    let release = engine.store().live_release(app).ok()??;
    berth_core::release_manifest(&release).ok()
}

/// The live manifest of each app berth runs, by app (stopped apps are not watched).
pub fn manifests(engine: &Engine) -> BTreeMap<String, Manifest> {
    engine
        .store()
        .apps()
        .unwrap_or_default()
        .into_iter()
        .filter(|app| !app.stopped)
        .filter_map(|app| Some((app.name.clone(), manifest(engine, &app.name)?)))
        .collect()
}
