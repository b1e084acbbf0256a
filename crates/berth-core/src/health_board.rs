//! What the continuous health checks last found for each container: written by the health
//! monitor (berth-monitor), read by `berth status` and the health report, so neither has to
//! probe on demand.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

/// The monitor's view of one container.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchedHealth {
    pub app: String,
    pub service: String,
    pub container: String,
    pub healthy: bool,
    /// When it last turned healthy or unhealthy (Unix milliseconds).
    pub since_ms: i64,
    /// Checks failed in a row (0 after a success).
    pub failures_in_row: u32,
    /// The last failed check: when, and why.
    pub last_failure: Option<(i64, String)>,
    /// Whether the proxy sends it requests (web replicas).
    pub in_rotation: bool,
    /// The CPUs it may use (its `cpus` limit), for "% of its limit".
    pub cpu_limit: Option<f64>,
}

/// Container id to its last watched health.
#[derive(Debug, Default)]
pub struct HealthBoard(RwLock<HashMap<String, WatchedHealth>>);

impl HealthBoard {
    pub fn get(&self, container_id: &str) -> Option<WatchedHealth> {
        self.read().get(container_id).cloned()
    }

    pub fn set(&self, container_id: &str, health: WatchedHealth) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(container_id.to_owned(), health);
    }

    /// Forgets every container not in `keep`.
    pub fn retain(&self, keep: &HashSet<String>) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| keep.contains(id));
    }

    /// Every watched container, by id.
    pub fn all(&self) -> Vec<(String, WatchedHealth)> {
        let mut all: Vec<_> = self
            .read()
            .iter()
            .map(|(id, h)| (id.clone(), h.clone()))
            .collect();
        all.sort_by(|a, b| {
            (&a.1.app, &a.1.service, &a.1.container).cmp(&(&b.1.app, &b.1.service, &b.1.container))
        });
        all
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, WatchedHealth>> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }
}
