//! Docker's event stream: containers that stop without berth stopping them, and OOM kills,
//! as they happen (no polling). Only containers the health monitor watches count (the current
//! replicas and accessories of live apps, on the engine's health board), and not while the
//! app's lock is held: deploys, restarts and `berth stop` stop containers on purpose.

use crate::alerts::{Alerts, Signal};
use berth_core::names;
use berth_engine::Engine;
use berth_runtime::{ContainerAction, ContainerEvent};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// What an event means for the alerts, if anything.
pub fn signal_for(engine: &Engine, event: &ContainerEvent) -> Option<Signal> {
    let watched = engine.health_board().get(&event.id)?;
    if engine.locks().holder(&watched.app).is_some() {
        return None;
    }
    match event.action {
        ContainerAction::Start => None,
        ContainerAction::Die => Some(Signal::ContainerDied {
            app: watched.app,
            service: watched.service,
            container: watched.container,
            exit_code: event.exit_code,
        }),
        ContainerAction::Oom => Some(Signal::OomKilled {
            app: watched.app,
            service: watched.service,
            container: watched.container,
        }),
    }
}

/// The events worker: follows this agent's containers' events until `stop`, subscribing
/// again (after a pause) when Docker goes away.
pub async fn follow(
    engine: Arc<Engine>,
    alerts: Arc<Alerts>,
    report: berth_workers::Reporter,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let agent = engine.agent_id().to_owned();
    loop {
        let mut events = engine
            .runtime()
            .container_events(&[(names::AGENT, agent.as_str())]);
        report.running("following Docker's container events");
        let error = loop {
            tokio::select! {
                () = &mut stop => return,
                event = events.next() => match event {
                    Some(Ok(event)) => {
                        if let Some(signal) = signal_for(&engine, &event) {
                            alerts.signal(signal);
                        }
                    }
                    Some(Err(error)) => break error.to_string(),
                    None => break "Docker ended the event stream".to_owned(),
                },
            }
        };
        let retry = Duration::from_secs(5);
        report.retrying(
            error,
            Some(berth_state::now_ms() + retry.as_millis() as i64),
        );
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(retry) => {}
        }
    }
}
