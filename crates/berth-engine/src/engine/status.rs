//! `berth status`: every app's live release and each service's replicas with their health.

use crate::engine::{Engine, release_manifest};
use crate::error::OpError;
use crate::health::{self, ProbeResult};
use crate::names;
use berth_api::{AppStatus, Health, ReleaseInfo, ReplicaStatus, ServiceStatus};
use berth_manifest::{Role, Service};
use berth_runtime::ContainerState;
use berth_state::Release;
use std::time::Duration;

pub fn release_info(release: &Release) -> ReleaseInfo {
    ReleaseInfo {
        number: release.number,
        version: release.version.clone(),
        kind: match release.kind {
            berth_state::ReleaseKind::Deploy => berth_api::ReleaseKind::Deploy,
            berth_state::ReleaseKind::Rollback => berth_api::ReleaseKind::Rollback,
        },
        rollback_of: release.rollback_of,
        status: match release.status {
            berth_state::ReleaseStatus::Deploying => berth_api::ReleaseState::Deploying,
            berth_state::ReleaseStatus::Live => berth_api::ReleaseState::Live,
            berth_state::ReleaseStatus::Retired => berth_api::ReleaseState::Retired,
            berth_state::ReleaseStatus::Failed => berth_api::ReleaseState::Failed,
        },
        actor: release.actor.clone(),
        created_at: release.created_at,
        finished_at: release.finished_at,
        error: release.error.clone(),
        images: release.images.clone(),
    }
}

impl Engine {
    /// Container IDs and names serving a service now (current replicas, or the accessory).
    pub async fn service_containers(
        &self,
        app: &str,
        service: &str,
        accessory: bool,
    ) -> Result<Vec<(String, String)>, OpError> {
        berth_core::service_containers(
            self.runtime().as_ref(),
            self.store(),
            self.agent_id(),
            app,
            service,
            accessory,
        )
        .await
    }

    pub async fn app_status(&self, app: &str) -> Result<AppStatus, OpError> {
        let live = self.store().live_release(app)?;
        let newest = self.store().releases(app, 1)?.into_iter().next();
        let mut status = AppStatus {
            name: app.to_owned(),
            live_release: live.as_ref().map(release_info),
            last_failed: newest
                .filter(|r| r.status == berth_state::ReleaseStatus::Failed)
                .as_ref()
                .map(release_info),
            draining: self
                .draining(app)
                .into_iter()
                .map(|d| berth_api::DrainingInfo {
                    release: d.release,
                    since: d.since,
                    requests: d
                        .upstreams
                        .iter()
                        .map(|u| u.requests_in_flight() as u64)
                        .sum(),
                    long_lived: d.upstreams.iter().map(|u| u.long_lived() as u64).sum(),
                    closes_at: d.closes_at,
                })
                .collect(),
            operation: self
                .locks()
                .holder(app)
                .filter(|l| l.operation != "reconcile"),
            services: Vec::new(),
            urls: Vec::new(),
            maintenance: self.store().app(app)?.and_then(|a| a.maintenance),
            stopped: self.store().app(app)?.is_some_and(|a| a.stopped),
            backups: Vec::new(),
        };
        let Some(live) = live else { return Ok(status) };
        let manifest = release_manifest(&live)?;
        status.urls = self.urls(&manifest);
        status.backups = self.backups().backup_status(&manifest);
        let services: Vec<&Service> = manifest
            .service_start_order()
            .into_iter()
            .filter_map(|n| manifest.services.get(n))
            .chain(manifest.accessories.values())
            .collect();
        let stopped = status.stopped;
        let probes = services.iter().map(|service| async move {
            let containers = self
                .service_containers(app, &service.name, service.accessory)
                .await?;
            let replicas = futures_util::future::join_all(
                containers
                    .iter()
                    .map(|(id, name)| self.replica_status(app, service, id, name, stopped)),
            )
            .await;
            Ok::<_, OpError>(ServiceStatus {
                name: service.name.clone(),
                role: service.role().as_str().into(),
                release: (!service.accessory).then_some(live.number),
                desired_replicas: service.replicas,
                replicas,
            })
        });
        for service in futures_util::future::join_all(probes).await {
            status.services.push(service?);
        }
        Ok(status)
    }

    async fn replica_status(
        &self,
        app: &str,
        service: &Service,
        id: &str,
        name: &str,
        app_stopped: bool,
    ) -> ReplicaStatus {
        let info = match self.runtime().inspect_container(id).await {
            Ok(Some(info)) => info,
            Ok(None) => {
                return ReplicaStatus {
                    container: name.to_owned(),
                    state: "missing".into(),
                    health: Health::Unhealthy,
                    health_detail: Some("the container no longer exists".into()),
                    started_at: None,
                    uptime_seconds: None,
                    restarts: 0,
                    watch: None,
                };
            }
            Err(error) => {
                return ReplicaStatus {
                    container: name.to_owned(),
                    state: "unknown".into(),
                    health: Health::Unknown,
                    health_detail: Some(error.to_string()),
                    started_at: None,
                    uptime_seconds: None,
                    restarts: 0,
                    watch: None,
                };
            }
        };
        let watched = self.health_board().get(id);
        let (health, detail) = if app_stopped && info.state != ContainerState::Running {
            // Down on purpose, not a fault.
            (
                Health::Stopped,
                Some("the app was stopped by `berth stop`".to_owned()),
            )
        } else if info.state != ContainerState::Running {
            (
                Health::Unhealthy,
                Some(format!("the container is {}", info.state.as_str())),
            )
        } else if let Some(watched) = &watched {
            // The continuous checks' last verdict: no probe on demand.
            (
                if watched.healthy {
                    Health::Healthy
                } else {
                    Health::Unhealthy
                },
                (!watched.healthy)
                    .then(|| watched.last_failure.as_ref().map(|(_, why)| why.clone()))
                    .flatten(),
            )
        } else {
            // Status must answer quickly even when an app hangs.
            let mut quick = service.clone();
            quick.healthcheck.timeout = quick.healthcheck.timeout.min(Duration::from_secs(2));
            let ip = info.addresses.get(&names::network(app)).copied();
            match health::probe(
                self.runtime().as_ref(),
                id,
                ip,
                &quick,
                &crate::engine::host_header(service),
            )
            .await
            {
                ProbeResult::Healthy => (Health::Healthy, None),
                ProbeResult::Unhealthy(why) => (Health::Unhealthy, Some(why)),
            }
        };
        let uptime = info
            .started_at
            .as_deref()
            .and_then(|s| s.parse::<jiff::Timestamp>().ok())
            .filter(|_| info.state == ContainerState::Running)
            .map(|t| jiff::Timestamp::now().duration_since(t).as_secs().max(0) as u64);
        ReplicaStatus {
            container: name.to_owned(),
            state: info.state.as_str().into(),
            health,
            health_detail: detail,
            started_at: info.started_at,
            uptime_seconds: uptime,
            restarts: info.restart_count,
            watch: watched.map(|w| berth_api::ReplicaWatch {
                since: w.since_ms,
                failures_in_row: w.failures_in_row,
                last_failure_at: w.last_failure.as_ref().map(|(at, _)| *at),
                last_failure: w.last_failure.map(|(_, why)| why),
                in_rotation: w.in_rotation,
            }),
        }
    }

    /// Whether a service name is a service or an accessory of the app's live release.
    pub fn service_role(&self, app: &str, service: &str) -> Result<Role, OpError> {
        let live = self.store().live_release(app)?.ok_or_else(|| {
            OpError::not_found(format!("app {app} has no live release"))
                .hint("deploy it first with `berth deploy`")
        })?;
        let manifest = release_manifest(&live)?;
        if let Some(s) = manifest
            .services
            .get(service)
            .or_else(|| manifest.accessories.get(service))
        {
            return Ok(s.role());
        }
        let known: Vec<&str> = manifest
            .services
            .keys()
            .chain(manifest.accessories.keys())
            .map(String::as_str)
            .collect();
        Err(
            OpError::not_found(format!("app {app} has no service {service}"))
                .hint(format!("its services: {}", known.join(", "))),
        )
    }
}
