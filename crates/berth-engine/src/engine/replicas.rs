//! Replacing a service's containers: start, gate, switch, drain.

use super::*;

impl Engine {
    // ---- replacing containers ----------------------------------------------------------

    /// Replaces the containers of `services` (all of the app's for a deploy) with new ones of
    /// `ctx.release`: start, gate, switch, commit, drain, stop. On failure before the commit,
    /// removes what it started and leaves the previous containers serving.
    pub(crate) async fn replace(
        &self,
        ctx: &ReleaseContext<'_>,
        services: &[&Service],
        images: &BTreeMap<String, String>,
        whole_release: bool,
        progress: &Progress,
    ) -> Result<(), OpError> {
        let mut started: Vec<StartedReplica> = Vec::new();
        let before = self.live_app(ctx.app);
        let result = self
            .replace_steps(
                ctx,
                services,
                images,
                whole_release,
                before.clone(),
                &mut started,
                progress,
            )
            .await;
        if result.is_err() {
            // Put routing back exactly as it was, then remove everything this attempt started.
            self.install_live(ctx.app, before);
            self.remove_replicas(&started).await;
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn replace_steps(
        &self,
        ctx: &ReleaseContext<'_>,
        services: &[&Service],
        images: &BTreeMap<String, String>,
        whole_release: bool,
        before: Option<LiveApp>,
        started: &mut Vec<StartedReplica>,
        progress: &Progress,
    ) -> Result<(), OpError> {
        let replaced: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        let old_instances: Vec<Instance> = self
            .store
            .instances(ctx.app)?
            .into_iter()
            .filter(|i| {
                i.state == InstanceState::Current
                    && (whole_release || replaced.contains(&i.service.as_str()))
            })
            .collect();

        // Web services: start next to the old ones and pass the gate.
        let mut new_upstreams: BTreeMap<String, Vec<(String, Arc<Upstream>)>> = BTreeMap::new();
        for service in services.iter().filter(|s| s.role() == Role::Web) {
            let image = images
                .get(&service.name)
                .ok_or_else(|| OpError::failed(format!("no image for service {}", service.name)))?;
            let replicas = self
                .start_and_gate(ctx, service, image, started, progress)
                .await?;
            new_upstreams.insert(
                service.name.clone(),
                replicas
                    .iter()
                    .filter_map(|r| r.upstream.clone().map(|u| (r.container_id.clone(), u)))
                    .collect(),
            );
        }

        // Switch traffic: one atomic swap of the app's routes.
        let step = progress.step("switch traffic");
        let mut live = match (&before, whole_release) {
            (Some(before), false) => before.clone(),
            _ => LiveApp {
                manifest: ctx.manifest.clone(),
                release: ctx.release,
                upstreams: BTreeMap::new(),
            },
        };
        for (service, upstreams) in new_upstreams {
            live.upstreams.insert(service, upstreams);
        }
        self.install_live(ctx.app, Some(live));
        step.done(None);

        // Workers: replaced once the web services are live.
        for service in services.iter().filter(|s| s.role() == Role::Worker) {
            let image = images
                .get(&service.name)
                .ok_or_else(|| OpError::failed(format!("no image for service {}", service.name)))?;
            self.start_and_gate(ctx, service, image, started, progress)
                .await?;
        }

        // Commit: from here on the new containers are the app.
        let now_current: Vec<String> = started.iter().map(|r| r.container_id.clone()).collect();
        let retiring: Vec<String> = old_instances
            .iter()
            .map(|i| i.container_id.clone())
            .collect();
        self.store.commit_switch(&Switch {
            app: ctx.app,
            new_live_release: whole_release.then_some(ctx.release),
            now_current: &now_current,
            retiring: &retiring,
        })?;
        started.clear();

        // The new release is live and committed: the deploy is done. The old one drains
        // (its requests finish, its WebSockets stay until their own limit) in the
        // background, unless the caller asked to wait for it.
        let limits = before.as_ref().map_or_else(
            || DrainLimits::of(ctx.manifest),
            |b| DrainLimits::of(&b.manifest),
        );
        match self.me.get().and_then(std::sync::Weak::upgrade) {
            Some(engine) if !ctx.wait_drain && !old_instances.is_empty() => {
                progress.log(format!(
                    "the old containers drain in the background: requests may finish within {:?}, WebSockets and event streams stay open up to {:?} (`berth status` shows them)",
                    limits.requests, limits.long_lived
                ));
                let app = ctx.app.to_owned();
                tokio::spawn(async move {
                    let quiet = Progress::silent(&app);
                    engine
                        .retire(&app, &old_instances, before.as_ref(), limits, &quiet)
                        .await;
                });
            }
            _ => {
                self.retire(ctx.app, &old_instances, before.as_ref(), limits, progress)
                    .await;
            }
        }
        Ok(())
    }

    /// Starts a service's replicas and waits for all of them to pass the health gate.
    pub(super) async fn start_and_gate(
        &self,
        ctx: &ReleaseContext<'_>,
        service: &Service,
        image: &str,
        started: &mut Vec<StartedReplica>,
        progress: &Progress,
    ) -> Result<Vec<StartedReplica>, OpError> {
        let numbers: Vec<u32> = (1..=service.replicas).collect();
        self.start_and_gate_replicas(ctx, service, image, &numbers, started, progress)
            .await
    }

    /// Starts the replicas numbered `numbers` of a service and waits for all of them to pass
    /// the health gate.
    pub(super) async fn start_and_gate_replicas(
        &self,
        ctx: &ReleaseContext<'_>,
        service: &Service,
        image: &str,
        numbers: &[u32],
        started: &mut Vec<StartedReplica>,
        progress: &Progress,
    ) -> Result<Vec<StartedReplica>, OpError> {
        let step = progress.step(format!(
            "start {} ({})",
            service.name,
            berth_core::progress::counted(numbers.len(), "replica")
        ));
        let mut mine = Vec::new();
        for &replica in numbers {
            match self.start_replica(ctx, service, image, replica).await {
                Ok(r) => {
                    started.push(r.clone());
                    mine.push(r);
                }
                Err(error) => {
                    step.fail(&error.message);
                    return Err(error);
                }
            }
        }
        step.done(None);

        let step = progress.step(format!(
            "health check {}: {}",
            service.name,
            service.healthcheck.probe.describe(service.port)
        ));
        let network = names::network(ctx.app);
        let host = host_header(service);
        let gates = mine.iter().map(|r| {
            let network = network.clone();
            let host = host.clone();
            async move {
                (
                    r,
                    health::gate(
                        self.runtime.as_ref(),
                        &r.container_id,
                        &network,
                        service,
                        &host,
                    )
                    .await,
                )
            }
        });
        let results = futures_util::future::join_all(gates).await;
        let mut gated = Vec::new();
        for (replica, result) in results {
            match result {
                Ok(ip) => {
                    let mut replica = replica.clone();
                    if let (Some(ip), Some(port)) = (ip, service.port) {
                        replica.upstream = Some(Upstream::new(
                            SocketAddr::new(ip, port),
                            replica.name.clone(),
                        ));
                    }
                    gated.push(replica);
                }
                Err(failure) => {
                    let tail = self.runtime.log_tail(&replica.container_id, LOG_TAIL).await;
                    let error = OpError::failed(format!(
                        "service {} failed its health check: {}",
                        service.name,
                        failure.describe()
                    ))
                    .hint(gate_hint(&failure, service))
                    .logs(replica.name.clone(), tail);
                    step.fail(&error.message);
                    return Err(error);
                }
            }
        }
        step.done(None);
        // Keep the upstreams in the list the caller cleans up from.
        for replica in &gated {
            if let Some(entry) = started
                .iter_mut()
                .find(|s| s.container_id == replica.container_id)
            {
                entry.upstream = replica.upstream.clone();
            }
        }
        Ok(gated)
    }

    pub(crate) async fn start_replica(
        &self,
        ctx: &ReleaseContext<'_>,
        service: &Service,
        image: &str,
        replica: u32,
    ) -> Result<StartedReplica, OpError> {
        let name = names::replica_container(ctx.app, &service.name, ctx.release);
        let owner = self.secret_owner(service, image).await?;
        let spec = self.container_spec(ctx, service, image, &name, replica, owner)?;
        let container_id = self.runtime.create_container(&spec).await?;
        // Recorded before it starts: whatever happens next, berth knows it owns it.
        let recorded = self.store.add_instance(&Instance {
            container_id: container_id.clone(),
            name: name.clone(),
            app: ctx.app.to_owned(),
            service: service.name.clone(),
            release: ctx.release,
            replica: i64::from(replica),
            state: InstanceState::Pending,
            created_at: berth_state::now_ms(),
        });
        if let Err(error) = recorded {
            let _ = self.runtime.remove_container(&container_id).await;
            return Err(error.into());
        }
        let started = StartedReplica {
            container_id: container_id.clone(),
            name,
            upstream: None,
        };
        if let Err(error) = self.runtime.start_container(&container_id).await {
            self.remove_replicas(std::slice::from_ref(&started)).await;
            return Err(error.into());
        }
        Ok(started)
    }

    pub(crate) async fn remove_replicas(&self, replicas: &[StartedReplica]) {
        let removals = replicas.iter().map(|replica| async move {
            if let Err(error) = self.runtime.remove_container(&replica.container_id).await {
                tracing::warn!(%error, container = %replica.name, "cannot remove a container of a failed operation");
                return;
            }
            if let Some(upstream) = &replica.upstream {
                upstream.retire();
            }
            if let Err(error) = self.store.remove_instance(&replica.container_id) {
                tracing::warn!(%error, "cannot forget a removed container");
            }
        });
        futures_util::future::join_all(removals).await;
    }

    /// Drains the old web containers, then stops and removes every old container: ordinary
    /// requests may finish within `limits.requests`; WebSockets and event streams may stay
    /// open up to `limits.long_lived`, then get a proper close (a WebSocket close frame, the
    /// end of the stream) and a moment to finish it. The new release is already live, so
    /// problems here are logged, not failures.
    pub(crate) async fn retire(
        &self,
        app: &str,
        old: &[Instance],
        before: Option<&LiveApp>,
        limits: DrainLimits,
        progress: &Progress,
    ) {
        if old.is_empty() {
            return;
        }
        let releases: std::collections::BTreeSet<i64> = old.iter().map(|i| i.release).collect();
        let label = releases
            .iter()
            .map(|r| format!("release {r}"))
            .collect::<Vec<_>>()
            .join(", ");
        let step = progress.step(format!("drain and stop {label}"));
        let upstream_of = |id: &str| {
            before.and_then(|live| {
                live.upstreams
                    .values()
                    .flatten()
                    .find(|(cid, _)| cid == id)
                    .map(|(_, u)| Arc::clone(u))
            })
        };
        let stop_timeout_of = |service: &str| {
            before
                .and_then(|live| live.manifest.services.get(service))
                .map(|s| s.stop_timeout)
                .unwrap_or(Duration::from_secs(10))
        };
        let upstreams: Vec<Arc<Upstream>> = old
            .iter()
            .filter_map(|i| upstream_of(&i.container_id))
            .collect();
        let now = berth_state::now_ms();
        let entry = Draining {
            release: releases.iter().next().copied().unwrap_or_default(),
            since: now,
            closes_at: now + i64::try_from(limits.long_lived.as_millis()).unwrap_or(i64::MAX / 2),
            upstreams,
        };
        self.draining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(app.to_owned())
            .or_default()
            .push(entry.clone());
        let undrained = std::sync::atomic::AtomicUsize::new(0);
        let closed = std::sync::atomic::AtomicUsize::new(0);
        let jobs = old.iter().map(|instance| {
            let upstream = upstream_of(&instance.container_id);
            let stop_timeout = stop_timeout_of(&instance.service);
            let undrained = &undrained;
            let closed = &closed;
            async move {
                if let Some(upstream) = upstream {
                    if !upstream.wait_requests_drained(limits.requests).await {
                        undrained.fetch_add(upstream.requests_in_flight(), std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(app, container = %instance.name, in_flight = upstream.requests_in_flight(), "drain timeout reached; stopping anyway");
                    }
                    if upstream.long_lived() > 0 && !upstream.wait_drained(limits.long_lived).await {
                        closed.fetch_add(upstream.long_lived(), std::sync::atomic::Ordering::Relaxed);
                        tracing::info!(app, container = %instance.name, open = upstream.long_lived(), "closing the old release's WebSockets and event streams (the clients reconnect to the new release)");
                        upstream.close_long_lived();
                        upstream.wait_drained(CLOSING_GRACE).await;
                    }
                    upstream.retire();
                }
                if let Err(error) = self.runtime.stop_container(&instance.container_id, stop_timeout).await {
                    tracing::warn!(app, %error, container = %instance.name, "cannot stop an old container");
                }
                match self.runtime.remove_container(&instance.container_id).await {
                    Ok(()) => {
                        if let Err(error) = self.store.remove_instance(&instance.container_id) {
                            tracing::warn!(%error, "cannot forget a removed container");
                        }
                    }
                    Err(error) => tracing::warn!(app, %error, container = %instance.name, "cannot remove an old container"),
                }
            }
        });
        futures_util::future::join_all(jobs).await;
        if let Some(list) = self
            .draining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(app)
        {
            list.retain(|d| d.since != entry.since || d.release != entry.release);
        }
        let cut = undrained.load(std::sync::atomic::Ordering::Relaxed);
        let closed = closed.load(std::sync::atomic::Ordering::Relaxed);
        let mut notes = Vec::new();
        if cut > 0 {
            notes.push(format!(
                "{cut} requests were still in flight after the drain timeout"
            ));
        }
        if closed > 0 {
            notes.push(format!(
                "{closed} WebSockets or event streams closed properly"
            ));
        }
        step.done((!notes.is_empty()).then(|| notes.join("; ")));
    }

    /// Untags the images of releases older than the newest `keep` good ones.
    pub(super) async fn prune_images(&self, app: &str, keep: u32) {
        let Ok(releases) = self.store.releases(app, 1000) else {
            return;
        };
        let mut kept = 0;
        for release in releases {
            let good = matches!(release.status, ReleaseStatus::Live | ReleaseStatus::Retired);
            if good && kept < keep {
                kept += 1;
                continue;
            }
            for service in release.images.keys() {
                let reference = format!(
                    "{}:{}",
                    names::image_repository(app, service),
                    names::image_tag(release.number)
                );
                if let Err(error) = self.runtime.remove_image(&reference).await {
                    tracing::debug!(%error, reference, "image not pruned");
                }
            }
        }
    }
}
