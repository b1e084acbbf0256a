//! `berth alerts`, `berth alerts test CHANNEL`, `berth top`, `berth uptime`, and the health
//! and alert lines of `berth status`: what the agent's monitors found.

use super::{Ctx, invalid};
use crate::output;
use berth_api::{
    AlertInfo, AlertTestRequest, AlertsAnswer, DeliveryInfo, MonitorInfo, MuteInfo, MuteRequest,
    ServiceStatus, TopAnswer, UptimeAnswer,
};
use console::style;
use std::io::IsTerminal;
use std::process::ExitCode;

pub(super) async fn list(ctx: &Ctx, app: Option<String>, limit: usize) -> anyhow::Result<ExitCode> {
    let filter = app.map(|app| format!("&app={app}")).unwrap_or_default();
    let answer: AlertsAnswer = ctx
        .client()?
        .get(&format!("/v1/alerts?limit={limit}{filter}"))
        .await?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    if answer.firing.is_empty() {
        println!("{} no alert is firing", style("✓").green());
    } else {
        println!("{}", style("FIRING").red().bold());
        print!(
            "{}",
            output::table(
                &["  SINCE", "SEVERITY", "SUBJECT", "SUMMARY"],
                &rows(&answer.firing, true)
            )
        );
    }
    let past: Vec<AlertInfo> = answer
        .recent
        .into_iter()
        .filter(|a| a.resolved_at.is_some())
        .collect();
    if !past.is_empty() {
        println!();
        println!("{}", style("RECENT").bold());
        print!(
            "{}",
            output::table(
                &["  WHEN", "SEVERITY", "SUBJECT", "WHAT"],
                &rows(&past, false)
            )
        );
    }
    for mute in &answer.mutes {
        println!(
            "{} mute {}: {} alerts of {} about {} are not sent until {} (by {}; `berth alerts unmute {}` ends it)",
            style("·").dim(),
            mute.id,
            mute.rule.as_deref().unwrap_or("all"),
            mute.app.as_deref().unwrap_or("every app"),
            mute.subject.as_deref().unwrap_or("anything"),
            output::time(mute.until),
            mute.actor,
            mute.id
        );
    }
    if !answer.deliveries.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = answer
            .deliveries
            .iter()
            .map(|d| {
                vec![
                    format!("  {}", d.channel),
                    d.app.clone().unwrap_or_default(),
                    output::time(d.at),
                    d.what.clone(),
                    if d.ok {
                        style("delivered").green().to_string()
                    } else {
                        style(format!(
                            "failed after {} attempts: {}",
                            d.attempts,
                            d.error.as_deref().unwrap_or("no detail")
                        ))
                        .red()
                        .to_string()
                    },
                ]
            })
            .collect();
        print!(
            "{}",
            output::table(&["  CHANNEL", "APP", "LAST SENT", "WHAT", "RESULT"], &rows)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn rows(alerts: &[AlertInfo], firing: bool) -> Vec<Vec<String>> {
    alerts
        .iter()
        .map(|a| {
            let severity = match a.severity.as_str() {
                "critical" => style(a.severity.clone()).red().to_string(),
                "warning" => style(a.severity.clone()).yellow().to_string(),
                _ => a.severity.clone(),
            };
            let what = if firing || a.event {
                a.summary.clone()
            } else {
                let lasted = a
                    .resolved_at
                    .map(|r| output::age(((r - a.started_at).max(0) / 1000) as u64))
                    .unwrap_or_default();
                format!("{} (resolved after {lasted})", a.summary)
            };
            vec![
                format!("  {}", output::time(a.started_at)),
                severity,
                a.subject.clone(),
                output::shorten(&what, 120),
            ]
        })
        .collect()
}

pub(super) async fn test(ctx: &Ctx, app: &str, channel: &str) -> anyhow::Result<ExitCode> {
    let delivery: DeliveryInfo = ctx
        .client()?
        .request(
            http::Method::POST,
            &format!("/v1/apps/{app}/alerts/test"),
            &AlertTestRequest {
                channel: channel.to_owned(),
            },
        )
        .await?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&delivery)?);
    } else if delivery.ok {
        println!(
            "{} a test message went to channel {channel} of {app}",
            style("✓").green()
        );
    } else {
        eprintln!(
            "{} the test message to channel {channel} of {app} failed: {}",
            style("✗").red(),
            delivery.error.as_deref().unwrap_or("no detail")
        );
    }
    Ok(if delivery.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One line per replica the health checks found unhealthy (since when, why, whether it still
/// gets requests), and per healthy one that failed a check in the last hour.
pub(super) fn replica_health_lines(service: &ServiceStatus) -> Vec<String> {
    let now = berth_now_ms();
    let mut lines = Vec::new();
    for replica in &service.replicas {
        let Some(watch) = &replica.watch else {
            continue;
        };
        let why = watch.last_failure.as_deref().unwrap_or("no detail");
        if replica.health == berth_api::Health::Unhealthy {
            let rotation = if watch.in_rotation || service.role != "web" {
                String::new()
            } else {
                ", out of rotation".to_owned()
            };
            lines.push(format!(
                "    {} {} unhealthy since {} ({} checks failed in a row{rotation}): {why}",
                style("✗").red(),
                replica.container,
                output::time(watch.since),
                watch.failures_in_row
            ));
        } else if let Some(at) = watch.last_failure_at.filter(|at| now - at < 3_600_000) {
            lines.push(format!(
                "    {} {} healthy since {}; last failed check {}: {why}",
                style("·").dim(),
                replica.container,
                output::time(watch.since),
                output::time(at)
            ));
        }
    }
    lines
}

/// The `[monitors]` checks and their last results, in `berth status`.
pub(super) fn print_monitors(monitors: &[MonitorInfo]) {
    if monitors.is_empty() {
        return;
    }
    let rows: Vec<Vec<String>> = monitors
        .iter()
        .map(|m| {
            let result = match (&m.failure, m.firing) {
                (None, _) => style(format!("passing ({} ms)", m.latency_ms))
                    .green()
                    .to_string(),
                (Some(why), true) => style(format!("failing, alert firing: {why}"))
                    .red()
                    .to_string(),
                (Some(why), false) => {
                    style(format!("failed {} in a row: {why}", m.failures_in_row))
                        .yellow()
                        .to_string()
                }
            };
            vec![
                format!("{}/{}", m.app, m.name),
                m.check.clone(),
                output::time(m.checked_at),
                result,
            ]
        })
        .collect();
    println!();
    print!(
        "{}",
        output::table(&["MONITOR", "CHECK", "LAST CHECK", "RESULT"], &rows)
    );
}

/// The firing alerts and the channels that cannot be delivered to, after `berth status`.
pub(super) fn print_firing(firing: &[AlertInfo], failing: &[DeliveryInfo]) {
    if firing.is_empty() && failing.is_empty() {
        return;
    }
    println!();
    for alert in firing {
        println!(
            "{} alert since {}: {}",
            style("!").red().bold(),
            output::time(alert.started_at),
            alert.summary
        );
    }
    for delivery in failing {
        println!(
            "{} alerts to channel {}{} are not delivered ({} at {}): {}",
            style("✗").red(),
            delivery.channel,
            delivery
                .app
                .as_ref()
                .map(|a| format!(" of {a}"))
                .unwrap_or_default(),
            delivery.what,
            output::time(delivery.at),
            delivery.error.as_deref().unwrap_or("no detail")
        );
    }
    println!("  (`berth alerts` lists firing and recent alerts)");
}

fn berth_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `berth top`: a refreshing screen in a terminal, one snapshot otherwise.
pub(super) async fn top(ctx: &Ctx, app: Option<String>) -> anyhow::Result<ExitCode> {
    let path = match &app {
        Some(app) => format!("/v1/top?app={app}"),
        None => "/v1/top".to_owned(),
    };
    let client = ctx.client()?;
    let live = !ctx.json && std::io::stdout().is_terminal();
    loop {
        let answer: TopAnswer = client.get(&path).await?;
        if ctx.json {
            println!("{}", serde_json::to_string_pretty(&answer)?);
            return Ok(ExitCode::SUCCESS);
        }
        let screen = top_screen(&answer);
        if !live {
            print!("{screen}");
            return Ok(ExitCode::SUCCESS);
        }
        let term = console::Term::stdout();
        term.clear_screen()?;
        print!("{screen}");
        println!("{}", style("refreshing every 2 s; Ctrl-C to quit").dim());
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
        }
    }
}

fn percent(value: Option<f64>) -> String {
    value
        .map(|v| format!("{v:.1}%"))
        .unwrap_or_else(|| "-".into())
}

fn rate(value: Option<f64>) -> String {
    value
        .map(|v| format!("{}/s", output::bytes(v as u64)))
        .unwrap_or_else(|| "-".into())
}

/// The host's line and a row per container.
pub(super) fn top_screen(answer: &TopAnswer) -> String {
    let host = &answer.host;
    let mut out = format!(
        "host: CPU {} of {} cores · load {:.2} {:.2} {:.2} · memory {} of {} · swap {} of {}\n",
        percent(host.cpu_percent),
        host.cpus,
        host.load[0],
        host.load[1],
        host.load[2],
        output::bytes(host.memory_used_bytes),
        output::bytes(host.memory_total_bytes),
        output::bytes(host.swap_used_bytes),
        output::bytes(host.swap_total_bytes),
    );
    for fs in &host.filesystems {
        out.push_str(&format!(
            "disk: {} data ({}) {:.0}% used, {} free\n",
            fs.purpose,
            fs.mountpoint,
            fs.used_percent,
            output::bytes(fs.avail_bytes)
        ));
    }
    for gpu in &host.gpus {
        out.push_str(&format!(
            "gpu {}: {} · {} · memory {} of {}\n",
            gpu.index,
            gpu.name,
            percent(gpu.utilization_percent),
            output::bytes(gpu.memory_used_bytes),
            output::bytes(gpu.memory_total_bytes)
        ));
    }
    if answer.sampled_at.is_none() && answer.containers.is_empty() {
        out.push_str("no container sampled yet (every 15 s)\n");
        return out;
    }
    let rows: Vec<Vec<String>> = answer
        .containers
        .iter()
        .map(|c| {
            vec![
                c.app.clone(),
                c.service.clone(),
                c.container.clone(),
                percent(c.cpu_percent),
                percent(c.cpu_limit_percent),
                match c.memory_limit_bytes {
                    Some(limit) => format!(
                        "{} / {} ({})",
                        output::bytes(c.memory_bytes),
                        output::bytes(limit),
                        percent(c.memory_limit_percent)
                    ),
                    None => output::bytes(c.memory_bytes),
                },
                format!("{} / {}", rate(c.net_rx_rate), rate(c.net_tx_rate)),
                format!("{} / {}", rate(c.disk_read_rate), rate(c.disk_write_rate)),
                c.oom_kills
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into()),
                c.restarts.to_string(),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&output::table(
        &[
            "APP",
            "SERVICE",
            "CONTAINER",
            "CPU",
            "OF LIMIT",
            "MEMORY",
            "NET IN / OUT",
            "DISK READ / WRITE",
            "OOM",
            "RESTARTS",
        ],
        &rows,
    ));
    if let Some(at) = answer.sampled_at {
        out.push_str(&format!("sampled {} (rates over 15 s)\n", output::time(at)));
    }
    out
}

/// `berth top --history [WINDOW]`.
pub(super) async fn top_history(
    ctx: &Ctx,
    app: Option<String>,
    window: &str,
) -> anyhow::Result<ExitCode> {
    let mut path = format!("/v1/resources?window={window}");
    if let Some(app) = &app {
        path.push_str(&format!("&app={app}"));
    }
    let answer: berth_api::ResourceHistory = ctx.client()?.get(&path).await?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", history_screen(&answer, window));
    Ok(ExitCode::SUCCESS)
}

/// A row per subject and metric: its mean and peak over the window, and a sparkline of the
/// points' peaks.
pub(super) fn history_screen(answer: &berth_api::ResourceHistory, window: &str) -> String {
    if answer.series.is_empty() {
        return "no history yet: the host and each service are recorded every 15 s\n".into();
    }
    let step =
        berth_manifest::units::format_duration(std::time::Duration::from_secs(answer.step_seconds));
    let mut out = format!("the last {window}, in points of {step} (trend: each point's peak)\n\n");
    let rows: Vec<Vec<String>> = answer
        .series
        .iter()
        .map(|series| {
            // The trend's full height: its peak, but at least 1 % (or a load of 1), so an
            // idle line stays low instead of filling the column with noise.
            let (name, show, floor): (String, fn(f64) -> String, f64) = match series.metric.as_str()
            {
                "cpu_percent" => ("cpu".into(), |v| format!("{v:.1}%"), 1.0),
                "memory_bytes" => ("memory".into(), |v| output::bytes(v as u64), 0.0),
                "swap_bytes" => ("swap".into(), |v| output::bytes(v as u64), 0.0),
                "load1" => ("load (1m)".into(), |v| format!("{v:.2}"), 1.0),
                "requests_per_minute" => ("requests/min".into(), |v| format!("{v:.1}"), 1.0),
                "errors_per_minute" => ("5xx/min".into(), |v| format!("{v:.1}"), 0.0),
                other => match other.strip_prefix("disk_percent ") {
                    Some(purpose) => (
                        format!("disk ({purpose} data)"),
                        |v| format!("{v:.1}%"),
                        1.0,
                    ),
                    None => (other.to_owned(), |v| format!("{v:.2}"), 0.0),
                },
            };
            let samples: f64 = series.points.len() as f64;
            let mean = series.points.iter().map(|p| p.mean).sum::<f64>() / samples.max(1.0);
            let peak = series.points.iter().map(|p| p.peak).fold(0.0, f64::max);
            vec![
                series.subject.clone(),
                name,
                show(mean),
                show(peak),
                sparkline(
                    &series.points.iter().map(|p| p.peak).collect::<Vec<_>>(),
                    floor,
                ),
            ]
        })
        .collect();
    out.push_str(&output::table(
        &["SUBJECT", "METRIC", "MEAN", "PEAK", "TREND"],
        &rows,
    ));
    out
}

/// `▁▂▃▅▇` from zero to the largest value or `floor`, whichever is more (at most 60
/// characters: later points win).
fn sparkline(values: &[f64], floor: f64) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let top = values.iter().copied().fold(floor, f64::max);
    values
        .iter()
        .skip(values.len().saturating_sub(60))
        .map(|v| {
            if top <= 0.0 {
                BARS[0]
            } else {
                BARS[((v / top) * 7.0).round().clamp(0.0, 7.0) as usize]
            }
        })
        .collect()
}

/// `berth uptime [APP]`.
pub(super) async fn uptime(ctx: &Ctx, app: Option<String>) -> anyhow::Result<ExitCode> {
    let path = match &app {
        Some(app) => format!("/v1/uptime?app={app}"),
        None => "/v1/uptime".to_owned(),
    };
    let answer: UptimeAnswer = ctx.client()?.get(&path).await?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    if answer.subjects.is_empty() {
        println!(
            "no history yet: services are recorded from their first health check after a deploy"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let share = |p: Option<f64>| match p {
        None => "-".to_owned(),
        Some(p) if p >= 99.95 => style(format!("{p:.3}%")).green().to_string(),
        Some(p) if p >= 99.0 => style(format!("{p:.3}%")).yellow().to_string(),
        Some(p) => style(format!("{p:.3}%")).red().to_string(),
    };
    let ms = |v: Option<i64>| v.map(|v| format!("{v} ms")).unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = answer
        .subjects
        .iter()
        .map(|s| {
            vec![
                s.subject.clone(),
                share(s.day_percent),
                share(s.week_percent),
                share(s.month_percent),
                ms(s.p50_ms),
                ms(s.p95_ms),
                s.checks_day.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &[
                "SUBJECT",
                "24 H",
                "7 D",
                "30 D",
                "P50",
                "P95",
                "CHECKS (24 H)"
            ],
            &rows
        )
    );
    println!();
    if answer.incidents.is_empty() {
        println!("{} no incident in the last 30 days", style("✓").green());
    } else {
        let rows: Vec<Vec<String>> = answer
            .incidents
            .iter()
            .map(|i| {
                let (end, lasted) = match i.ended_at {
                    Some(end) => (
                        output::time(end),
                        output::age(((end - i.started_at).max(0) / 1000) as u64),
                    ),
                    None => (style("ongoing").red().to_string(), "-".into()),
                };
                vec![
                    output::time(i.started_at),
                    end,
                    lasted,
                    output::shorten(&i.cause, 100),
                ]
            })
            .collect();
        print!(
            "{}",
            output::table(&["INCIDENT STARTED", "ENDED", "LASTED", "CAUSE"], &rows)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `berth alerts mute`.
pub(super) async fn mute(
    ctx: &Ctx,
    duration: &str,
    app: Option<String>,
    rule: Option<String>,
    subject: Option<String>,
) -> anyhow::Result<ExitCode> {
    let length = berth_manifest::units::parse_duration(duration).map_err(|e| {
        invalid(
            format!("--for {duration}: {e}"),
            Some("durations look like 30m, 2h or 1d"),
        )
    })?;
    let mute: MuteInfo = ctx
        .client()?
        .request(
            http::Method::POST,
            "/v1/alerts/mutes",
            &MuteRequest {
                app,
                rule,
                subject,
                seconds: length.as_secs(),
            },
        )
        .await?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&mute)?);
    } else {
        println!(
            "{} mute {}: {} alerts of {} are recorded but not sent until {}",
            style("✓").green(),
            mute.id,
            mute.rule.as_deref().unwrap_or("all"),
            mute.app.as_deref().unwrap_or("every app"),
            output::time(mute.until)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `berth alerts unmute ID`.
pub(super) async fn unmute(ctx: &Ctx, id: i64) -> anyhow::Result<ExitCode> {
    ctx.client()?
        .delete(&format!("/v1/alerts/mutes/{id}"))
        .await?;
    if !ctx.json {
        println!("{} mute {id} ended", style("✓").green());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trend_is_scaled_to_its_peak_but_an_idle_one_stays_low() {
        assert_eq!(sparkline(&[0.0, 5.0, 10.0], 0.0), "▁▅█");
        assert_eq!(
            sparkline(&[0.01, 0.02, 0.04], 1.0),
            "▁▁▁",
            "0.04 % of a core is idle"
        );
        assert_eq!(sparkline(&[], 1.0), "");
        assert_eq!(sparkline(&vec![1.0; 100], 0.0).chars().count(), 60);
    }

    #[test]
    fn the_top_screen_shows_each_gpu() {
        let mut answer = TopAnswer {
            sampled_at: Some(0),
            host: berth_api::HostTop::default(),
            containers: Vec::new(),
        };
        answer.host.gpus.push(berth_api::GpuTop {
            index: 0,
            name: "NVIDIA L4".into(),
            memory_total_bytes: 24 << 30,
            memory_used_bytes: 6 << 30,
            utilization_percent: Some(37.0),
        });
        let screen = top_screen(&answer);
        let line = screen
            .lines()
            .find(|l| l.starts_with("gpu 0"))
            .unwrap_or_default();
        assert!(
            line.contains("NVIDIA L4") && line.contains("37"),
            "{screen}"
        );
    }
}
