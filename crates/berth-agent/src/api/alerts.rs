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
    let mutes = state
        .engine
        .store()
        .alert_mutes(berth_state::now_ms())?
        .into_iter()
        .map(mute_info)
        .collect();
    Ok(Json(AlertsAnswer {
        firing,
        recent,
        deliveries,
        mutes,
    }))
}

fn mute_info(mute: berth_state::AlertMute) -> MuteInfo {
    MuteInfo {
        id: mute.id,
        app: mute.app,
        rule: mute.rule,
        subject: mute.subject,
        until: mute.until,
        actor: mute.actor,
    }
}

/// The rules an alert can have, for refusing a mute of a rule that does not exist.
const RULES: [&str; 16] = [
    "service_down",
    "crash_loop",
    "oom_killed",
    "container_died",
    "replica_replaced",
    "disk_full",
    "memory_high",
    "backup_failed",
    "certificate",
    "deploy_failed",
    "error_rate",
    "log_errors",
    "threshold",
    "monitor_failing",
    "monitor_certificate",
    "test",
];

/// `berth alerts mute`: audited; a mute of at most 30 days.
pub(super) async fn add_mute(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Json(request): Json<MuteRequest>,
) -> ApiResult<Json<MuteInfo>> {
    if let Some(app) = &request.app {
        check_app_name(app)?;
        state.engine.require_app(app)?;
    }
    if let Some(rule) = &request.rule
        && !RULES.contains(&rule.as_str())
    {
        return Err(OpError::invalid(format!("there is no alert rule `{rule}`"))
            .hint(format!(
                "the rules: {}",
                RULES[..RULES.len() - 1].join(", ")
            ))
            .into());
    }
    if request
        .subject
        .as_ref()
        .is_some_and(|s| s.is_empty() || s.len() > 200)
    {
        return Err(OpError::invalid("a mute's subject is 1 to 200 characters")
            .hint("the subject is the alert's second column in `berth alerts`, such as web/1")
            .into());
    }
    if request.seconds == 0 || request.seconds > 30 * 86_400 {
        return Err(OpError::invalid("a mute lasts from a second to 30 days")
            .hint("such as --for 1h")
            .into());
    }
    let actor = actor(&state, &headers);
    let now = berth_state::now_ms();
    let mut mute = berth_state::AlertMute {
        id: 0,
        app: request.app,
        rule: request.rule,
        subject: request.subject,
        until: now + i64::try_from(request.seconds).unwrap_or(0) * 1000,
        actor: actor.clone(),
        created_at: now,
    };
    mute.id = state.engine.store().add_alert_mute(&mute)?;
    let target = format!(
        "{}/{}",
        mute.app.as_deref().unwrap_or("*"),
        mute.rule.as_deref().unwrap_or("*")
    );
    state.engine.audit(
        &actor,
        "alerts.mute",
        &target,
        "ok",
        &format!("until {}", format_time(mute.until)),
    );
    Ok(Json(mute_info(mute)))
}

pub(super) async fn remove_mute(
    State(state): State<ApiState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    if !state.engine.store().remove_alert_mute(id)? {
        return Err(OpError::not_found(format!("there is no mute {id}"))
            .hint("`berth alerts` lists the mutes in force")
            .into());
    }
    let actor = actor(&state, &headers);
    state
        .engine
        .audit(&actor, "alerts.unmute", &id.to_string(), "ok", "");
    Ok(StatusCode::NO_CONTENT)
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
    let sender = berth_monitor::channels::Sender::new(berth_core::names::host_name())
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
