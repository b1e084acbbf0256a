//! The backup metrics: enough to alert on a backup that failed or has not succeeded for too
//! long.

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct BackupLabels {
    pub app: String,
    pub backup: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct BackupRunLabels {
    pub app: String,
    pub backup: String,
    /// `ok`, `partial` or `failed`.
    pub status: String,
}

/// `berth_backup_runs_total{app,backup,status}` and
/// `berth_backup_last_success_timestamp_seconds{app,backup}`: enough to alert on a backup
/// that failed or has not succeeded for too long.
#[derive(Default, Clone)]
pub struct BackupMetrics {
    runs: prometheus_client::metrics::family::Family<
        BackupRunLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    last_success: prometheus_client::metrics::family::Family<
        BackupLabels,
        prometheus_client::metrics::gauge::Gauge,
    >,
}

impl BackupMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "berth_backup_runs",
            "Backup runs by outcome",
            self.runs.clone(),
        );
        registry.register(
            "berth_backup_last_success_timestamp_seconds",
            "When each backup last succeeded on every storage (Unix time)",
            self.last_success.clone(),
        );
    }

    pub(crate) fn record(&self, app: &str, backup: &str, status: &str, at: jiff::Timestamp) {
        self.runs
            .get_or_create(&BackupRunLabels {
                app: app.to_owned(),
                backup: backup.to_owned(),
                status: status.to_owned(),
            })
            .inc();
        if status == "ok" {
            self.last_success
                .get_or_create(&BackupLabels {
                    app: app.to_owned(),
                    backup: backup.to_owned(),
                })
                .set(at.as_second());
        }
    }
}
