//! What the continuous health checks (berth-monitor) need from the engine: the replicas to
//! probe, and replacing one that stays unhealthy through the same health gate a deploy uses.

use super::*;
use berth_api::LockInfo;

/// One container the health monitor probes: a current replica of a live release's service,
/// or an accessory's container.
#[derive(Clone)]
pub struct WatchTarget {
    pub app: String,
    pub release: i64,
    /// The service (or accessory) as its release defines it: its healthcheck, port, role.
    pub service: Service,
    pub container_id: String,
    pub container: String,
    /// The `Host` header the health check sends.
    pub host: String,
    /// Its upstream in the proxy, for a routed web replica.
    pub upstream: Option<Arc<Upstream>>,
}

impl Engine {
    /// Every container the health monitor should watch now: the current replicas of every
    /// live, not stopped app, and their accessories. Apps whose lock is held are listed too
    /// (the monitor pauses their probes, and keeps what it knows of them).
    pub async fn watch_targets(&self) -> Result<Vec<WatchTarget>, OpError> {
        let mut targets = Vec::new();
        for app in self.store.apps()? {
            if app.stopped {
                continue;
            }
            let Some(release) = self.store.live_release(&app.name)? else {
                continue;
            };
            let manifest = release_manifest(&release)?;
            let live = self.routing.live_app(&app.name);
            for service in manifest
                .services
                .values()
                .chain(manifest.accessories.values())
            {
                let containers = self
                    .service_containers(&app.name, &service.name, service.accessory)
                    .await?;
                for (container_id, container) in containers {
                    let upstream = live.as_ref().and_then(|l| {
                        l.upstreams
                            .get(&service.name)?
                            .iter()
                            .find(|(id, _)| *id == container_id)
                            .map(|(_, u)| Arc::clone(u))
                    });
                    targets.push(WatchTarget {
                        app: app.name.clone(),
                        release: release.number,
                        service: service.clone(),
                        container_id,
                        container,
                        host: host_header(service),
                        upstream,
                    });
                }
            }
        }
        Ok(targets)
    }

    /// Replaces one unhealthy replica with a fresh container of the same release, gated like
    /// a deploy's: traffic moves to the new one only once it is healthy, and the old one is
    /// then drained and removed. An accessory is restarted in place and gated. Refused (and
    /// nothing changed) while another operation holds the app's lock. Returns the new
    /// container's name.
    pub async fn replace_replica(
        &self,
        app: &str,
        service_name: &str,
        container_id: &str,
        reason: &str,
    ) -> Result<String, OpError> {
        let _lock = self.monitor_lock(
            app,
            format!("replacement of an unhealthy {service_name} replica"),
        )?;
        let result = self
            .replace_replica_locked(app, service_name, container_id)
            .await;
        self.audit(
            "health monitor",
            "replace-replica",
            &format!("{app}/{service_name}"),
            if result.is_ok() { "ok" } else { "failed" },
            reason,
        );
        result
    }

    /// Points the proxy at a replica's new address. Docker gives a container that starts
    /// again (after a crash, or `docker start`) the address it had unless another container
    /// took it meanwhile; then the old upstream would send requests nowhere, or to that other
    /// container. Returns whether anything changed; refused while the app's lock is held.
    pub fn repoint_replica(
        &self,
        app: &str,
        service: &str,
        container_id: &str,
        addr: SocketAddr,
    ) -> Result<bool, OpError> {
        let _lock = self.monitor_lock(
            app,
            format!("re-routing of a {service} replica to its new address"),
        )?;
        let Some(mut live) = self.live_app(app) else {
            return Ok(false);
        };
        let Some(entry) = live
            .upstreams
            .get_mut(service)
            .and_then(|u| u.iter_mut().find(|(id, _)| id == container_id))
        else {
            return Ok(false);
        };
        if entry.1.addr() == addr {
            return Ok(false);
        }
        let fresh = Upstream::new(addr, entry.1.name().to_owned());
        // Out of rotation stays out: it is the same replica, at another address.
        fresh.set_in_rotation(entry.1.in_rotation());
        let old = std::mem::replace(&mut entry.1, fresh);
        self.install_live(app, Some(live));
        old.retire();
        tracing::warn!(%app, %service, container = %old.name(), from = %old.addr(), to = %addr, "a replica came back at a new address; the proxy follows it");
        Ok(true)
    }

    /// The app's lock for a change the health monitor makes, or `Locked` when another
    /// operation holds it (the monitor tries again later; it never waits).
    fn monitor_lock(
        &self,
        app: &str,
        operation: String,
    ) -> Result<berth_core::locks::AppLock, OpError> {
        let info = LockInfo {
            operation,
            holder: "health monitor".into(),
            since: berth_state::now_ms(),
        };
        self.locks.try_acquire(app, info).map_err(|holder| {
            OpError::new(
                crate::ErrorKind::Locked,
                format!(
                    "{app} is busy with {} (by {})",
                    holder.operation, holder.holder
                ),
            )
        })
    }

    async fn replace_replica_locked(
        &self,
        app: &str,
        service_name: &str,
        container_id: &str,
    ) -> Result<String, OpError> {
        self.ensure_not_stopped(app, "replace a replica of")?;
        let progress = Progress::silent(app);
        let release = self
            .store
            .live_release(app)?
            .ok_or_else(|| OpError::not_found(format!("app {app} has no live release")))?;
        let manifest = release_manifest(&release)?;
        if manifest.accessories.contains_key(service_name) {
            self.restart_steps(app, service_name, &progress).await?;
            return Ok(names::accessory_container(app, service_name));
        }
        let service = manifest.services.get(service_name).ok_or_else(|| {
            OpError::not_found(format!("app {app} has no service {service_name}"))
        })?;
        let old = self
            .store
            .instances(app)?
            .into_iter()
            .find(|i| i.container_id == container_id && i.state == InstanceState::Current)
            .ok_or_else(|| {
                OpError::not_found(format!(
                    "the replica {container_id} of {app}/{service_name} is no longer current"
                ))
            })?;
        let image = release.images.get(service_name).ok_or_else(|| {
            OpError::failed(format!(
                "release {} has no image for {service_name}",
                release.number
            ))
        })?;
        let ctx = self.context_for(&release, &manifest)?;
        let number = u32::try_from(old.replica).unwrap_or(1);
        let before = self.live_app(app);
        let mut started = Vec::new();
        let gated = match self
            .start_and_gate_replicas(&ctx, service, image, &[number], &mut started, &progress)
            .await
        {
            Ok(gated) => gated,
            Err(error) => {
                self.remove_replicas(&started).await;
                return Err(error);
            }
        };
        let Some(fresh) = gated.into_iter().next() else {
            return Err(OpError::failed("no replica was started"));
        };
        if let Some(mut live) = before.clone() {
            if let Some(upstreams) = live.upstreams.get_mut(service_name) {
                upstreams.retain(|(id, _)| id != container_id);
                if let Some(upstream) = &fresh.upstream {
                    upstreams.push((fresh.container_id.clone(), Arc::clone(upstream)));
                }
            }
            self.install_live(app, Some(live));
        }
        let committed = self.store.commit_switch(&Switch {
            app,
            new_live_release: None,
            now_current: std::slice::from_ref(&fresh.container_id),
            retiring: std::slice::from_ref(&old.container_id),
        });
        if let Err(error) = committed {
            self.install_live(app, before);
            self.remove_replicas(std::slice::from_ref(&fresh)).await;
            return Err(error.into());
        }
        // The old replica drains in the background, like a deploy's: its WebSockets may stay
        // up to their own limit, and the app's lock is not held meanwhile.
        let limits = DrainLimits::of(&manifest);
        match self.me.get().and_then(std::sync::Weak::upgrade) {
            Some(engine) => {
                let app = app.to_owned();
                tokio::spawn(async move {
                    engine
                        .retire(
                            &app,
                            std::slice::from_ref(&old),
                            before.as_ref(),
                            limits,
                            &progress,
                        )
                        .await;
                });
            }
            None => {
                self.retire(
                    app,
                    std::slice::from_ref(&old),
                    before.as_ref(),
                    limits,
                    &progress,
                )
                .await;
            }
        }
        Ok(fresh.name)
    }
}
