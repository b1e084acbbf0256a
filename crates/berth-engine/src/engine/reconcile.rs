//! Start-up reconciliation: makes Docker match the state file after a crash or restart.
//!
//! The state file's `current` containers and live release are the truth (the switch
//! transaction is a deploy's commit point). So: containers of an interrupted deploy
//! (`pending`) and of a release that was being retired are removed; the live release's
//! containers are started if stopped and recreated (through the health gate) if missing;
//! routes are rebuilt from them; interrupted releases are recorded as failed.

use crate::engine::{Engine, LiveApp, StartedReplica, release_manifest};
use crate::error::OpError;
use crate::health;
use crate::names;
use berth_api::LockInfo;
use berth_manifest::Role;
use berth_proxy::Upstream;
use berth_runtime::ContainerState;
use berth_state::{InstanceState, ReleaseStatus, Switch};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What reconciliation did, for the log.
#[derive(Debug, Default)]
pub struct ReconcileReport {
    pub removed: Vec<String>,
    pub started: Vec<String>,
    pub recreated: Vec<String>,
    pub interrupted_releases: Vec<String>,
}

impl Engine {
    pub async fn reconcile_all(&self) -> Result<ReconcileReport, OpError> {
        // Fails fast (before touching anything) when Docker is unreachable.
        self.runtime().info().await?;
        let mut report = ReconcileReport::default();
        let interrupted = self
            .store()
            .releases_with_status(ReleaseStatus::Deploying)?;
        for app in self.store().apps()? {
            self.reconcile_app(&app.name, &mut report).await?;
        }
        for release in interrupted {
            self.store().fail_release(
                &release.app,
                release.number,
                "interrupted: the agent stopped during this operation; the previous release kept serving",
            )?;
            self.audit(
                "agent",
                release.kind.as_str(),
                &release.app,
                "interrupted",
                &format!("release {}", release.number),
            );
            report
                .interrupted_releases
                .push(format!("{} release {}", release.app, release.number));
        }
        Ok(report)
    }

    async fn reconcile_app(&self, app: &str, report: &mut ReconcileReport) -> Result<(), OpError> {
        let lock = LockInfo {
            operation: "reconcile".into(),
            holder: "agent".into(),
            since: berth_state::now_ms(),
        };
        let _lock = self.locks().acquire(app, lock, |_| {}).await;
        // A stopped app stays stopped: its routes answer 503, its containers are left alone.
        if self.store().app(app)?.is_some_and(|a| a.stopped) {
            if let Some(live) = self.store().live_release(app)? {
                let manifest = release_manifest(&live)?;
                self.install_live(
                    app,
                    Some(LiveApp {
                        manifest,
                        release: live.number,
                        upstreams: BTreeMap::new(),
                    }),
                );
            }
            return Ok(());
        }
        self.reconcile_app_locked(app, report).await
    }

    /// Makes Docker match the state for one app; the caller holds the app's lock.
    pub(crate) async fn reconcile_app_locked(
        &self,
        app: &str,
        report: &mut ReconcileReport,
    ) -> Result<(), OpError> {
        // Secret files live on a tmpfs: after a reboot, the containers about to be started
        // again would find their bind mounts' sources gone.
        self.restore_secret_files(app).await?;
        let containers = self
            .runtime()
            .list_containers(&[(names::AGENT, self.agent_id()), (names::APP, app)])
            .await?;
        let instances = self.store().instances(app)?;
        let current: HashMap<&str, &berth_state::Instance> = instances
            .iter()
            .filter(|i| i.state == InstanceState::Current)
            .map(|i| (i.container_id.as_str(), i))
            .collect();

        // Containers the state file does not count as current: an interrupted operation's, or
        // an old release that was still draining. They are removed once the app is routed
        // again, so slow-stopping strays never delay serving.
        let mut existing = Vec::new();
        let mut strays = Vec::new();
        for container in &containers {
            let role = container
                .labels
                .get(names::ROLE)
                .map(String::as_str)
                .unwrap_or("");
            let keep =
                role == Role::Accessory.as_str() || current.contains_key(container.id.as_str());
            if !keep {
                strays.push(container);
                continue;
            }
            if container.state != ContainerState::Running {
                self.runtime().start_container(&container.id).await?;
                report.started.push(container.name.clone());
            }
            existing.push(container.id.clone());
        }
        for instance in &instances {
            if instance.state != InstanceState::Current
                || !existing.contains(&instance.container_id)
            {
                self.store().remove_instance(&instance.container_id)?;
            }
        }
        // Taking over from a running agent: it may still be draining connections to them.
        if let (Some(delay), Some(engine)) = (self.stray_delay(), self.arc())
            && !strays.is_empty()
        {
            let later: Vec<(String, String)> = strays
                .iter()
                .map(|c| (c.id.clone(), c.name.clone()))
                .collect();
            let app_name = app.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                for (id, name) in later {
                    tracing::info!(app = %app_name, container = %name, "removing a container the previous agent drained");
                    let _ = engine
                        .runtime()
                        .stop_container(&id, Duration::from_secs(10))
                        .await;
                    if let Err(error) = engine.runtime().remove_container(&id).await {
                        tracing::warn!(app = %app_name, container = %name, %error, "cannot remove an old container");
                    }
                }
            });
            strays.clear();
        }
        let remove_strays = async {
            let removals = strays.iter().map(|container| async move {
                tracing::info!(app, container = %container.name, "removing a container the state file does not count as current");
                self.runtime().stop_container(&container.id, Duration::from_secs(10)).await?;
                self.runtime().remove_container(&container.id).await
            });
            for result in futures_util::future::join_all(removals).await {
                result?;
            }
            Ok::<_, OpError>(strays.iter().map(|c| c.name.clone()).collect::<Vec<_>>())
        };

        let Some(live) = self.store().live_release(app)? else {
            self.install_live(app, None);
            report.removed.extend(remove_strays.await?);
            return Ok(());
        };
        let manifest = release_manifest(&live)?;
        let network = names::network(app);
        let mut upstreams: BTreeMap<String, Vec<(String, Arc<Upstream>)>> = BTreeMap::new();
        let mut missing: Vec<(&berth_manifest::Service, u32)> = Vec::new();
        for service in manifest.services.values() {
            let mine: Vec<&&berth_state::Instance> = current
                .values()
                .filter(|i| i.service == service.name && existing.contains(&i.container_id))
                .collect();
            if service.role() == Role::Web {
                let mut list = Vec::new();
                for instance in &mine {
                    let address = self
                        .runtime()
                        .inspect_container(&instance.container_id)
                        .await?
                        .and_then(|info| info.addresses.get(&network).copied());
                    if let (Some(ip), Some(port)) = (address, service.port) {
                        list.push((
                            instance.container_id.clone(),
                            Upstream::new(SocketAddr::new(ip, port), instance.name.clone()),
                        ));
                    }
                }
                upstreams.insert(service.name.clone(), list);
            }
            let have = mine.len() as u32;
            if have < service.replicas {
                missing.push((service, service.replicas - have));
            }
        }
        // Serve with what is there right away, then clean up and fill in missing replicas.
        self.install_live(
            app,
            Some(LiveApp {
                manifest: manifest.clone(),
                release: live.number,
                upstreams: upstreams.clone(),
            }),
        );
        report.removed.extend(remove_strays.await?);
        if missing.is_empty() {
            return Ok(());
        }
        let ctx = self.context_for(&live, &manifest)?;
        for (service, count) in missing {
            let Some(image) = live.images.get(&service.name) else {
                continue;
            };
            for replica in 1..=count {
                let started: StartedReplica =
                    self.start_replica(&ctx, service, image, replica).await?;
                match health::gate(
                    self.runtime().as_ref(),
                    &started.container_id,
                    &network,
                    service,
                    &crate::engine::host_header(service),
                )
                .await
                {
                    Ok(ip) => {
                        self.store().commit_switch(&Switch {
                            app,
                            new_live_release: None,
                            now_current: std::slice::from_ref(&started.container_id),
                            retiring: &[],
                        })?;
                        if let (Some(ip), Some(port)) = (ip, service.port) {
                            upstreams.entry(service.name.clone()).or_default().push((
                                started.container_id.clone(),
                                Upstream::new(SocketAddr::new(ip, port), started.name.clone()),
                            ));
                        }
                        report.recreated.push(started.name.clone());
                    }
                    Err(failure) => {
                        tracing::error!(app, service = %service.name, failure = %failure.describe(), "a missing replica could not be recreated");
                        self.remove_replicas(std::slice::from_ref(&started)).await;
                    }
                }
            }
        }
        self.install_live(
            app,
            Some(LiveApp {
                manifest,
                release: live.number,
                upstreams,
            }),
        );
        self.prune_secret_files(app);
        Ok(())
    }
}
