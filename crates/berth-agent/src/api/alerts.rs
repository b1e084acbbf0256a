//! `berth alerts`: the firing and recent alerts and each channel's last delivery, and a test
//! message to one channel. The alerts themselves are made by berth-monitor's workers.

use super::*;

#[derive(Deserialize)]
pub(super) struct AlertsQuery {
    app: Option<String>,
    limit: Option<usize>,
}

pub(super) fn alert_info(alert: berth_state::AlertRecord) -> AlertInfo {
    AlertInfo {
        id: alert.id,
        rule: alert.rule,
        severity: alert.severity,
        app: alert.app,
        subject: alert.subject,
        summary: alert.summary,
        event: alert.event,
        started_at: alert.started_at,
        resolved_at: alert.resolved_at,
    }
}

pub(super) fn delivery_info(delivery: berth_state::AlertDelivery) -> DeliveryInfo {
    DeliveryInfo {
        channel: delivery.channel,
        app: delivery.app,
        what: delivery.what,
        at: delivery.at,
        ok: delivery.ok,
        attempts: delivery.attempts,
        error: delivery.error,
    }
}

/// The firing alerts (of `app` and the host's, when given) and every channel's last delivery.
pub(super) fn alert_summary(
    engine: &Engine,
    app: Option<&str>,
) -> Result<(Vec<AlertInfo>, Vec<DeliveryInfo>), OpError> {
    let store = engine.store();
    let firing = store
        .firing_alerts()?
        .into_iter()
        .filter(|a| app.is_none() || a.app.is_none() || a.app.as_deref() == app)
        .map(alert_info)
        .collect();
    let deliveries = store
        .last_alert_deliveries()?
        .into_iter()
        .filter(|d| app.is_none() || d.app.as_deref() == app)
        .map(delivery_info)
        .collect();
    Ok((firing, deliveries))
}

pub(super) async fn alerts(
    State(state): State<ApiState>,
    Query(query): Query<AlertsQuery>,
) -> ApiResult<Json<AlertsAnswer>> {
    if let Some(app) = &query.app {
        check_app_name(app)?;
    }
    let (firing, deliveries) = alert_summary(&state.engine, query.app.as_deref())?;
    let recent = state
        .engine
        .store()
        .recent_alerts(query.limit.unwrap_or(50).min(5_000), query.app.as_deref())?
        .into_iter()
        .map(alert_info)
        .collect();
    Ok(Json(AlertsAnswer {
        firing,
        recent,
        deliveries,
    }))
}

/// Sends a test message to one of the app's channels now (one attempt) and says how it went.
pub(super) async fn test_alert(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Json(request): Json<AlertTestRequest>,
) -> ApiResult<Json<DeliveryInfo>> {
    check_app_name(&app)?;
    state.engine.require_app(&app)?;
    let channels = berth_monitor::alerts::app_channels(&state.engine, &app);
    let channel = channels
        .iter()
        .find(|c| c.name == request.channel)
        .ok_or_else(|| {
            let known: Vec<&str> = channels.iter().map(|c| c.name.as_str()).collect();
            OpError::not_found(format!(
                "the live release of {app} has no alert channel {}",
                request.channel
            ))
            .hint(if known.is_empty() {
                "add an [alerts.NAME] table to berth.toml and deploy".to_owned()
            } else {
                format!("its channels: {}", known.join(", "))
            })
        })?;
    let sender = berth_monitor::channels::Sender::new(
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "berth".into()),
    )
    .map_err(OpError::failed)?;
    let message =
        berth_monitor::channels::Message::test(&app, &channel.name, berth_state::now_ms());
    let delivery = berth_monitor::alerts::send_with_retries(
        &state.engine,
        &sender,
        &app,
        channel,
        &message,
        &[],
    )
    .await;
    let actor = actor(&state, &headers);
    state.engine.audit(
        &actor,
        "alerts.test",
        &format!("{app}/{}", channel.name),
        if delivery.ok { "ok" } else { "failed" },
        delivery.error.as_deref().unwrap_or(""),
    );
    if let Err(error) = state.engine.store().add_alert_delivery(&delivery) {
        tracing::warn!(%error, "cannot record an alert delivery");
    }
    Ok(Json(delivery_info(delivery)))
}
