//! An app's public status page: each service's state now and a bar per day for 90 days,
//! nothing else (no version, no error, no address). The proxy serves it, so it is a whole
//! page of its own, with its style inline and no script.

use askama::Template;

/// Days shown.
pub const DAYS: usize = 90;

/// What the page says of one service.
pub struct StatusService {
    pub name: String,
    /// The last check: up or down; `None` with no recent check.
    pub up_now: Option<bool>,
    /// Each day's (checks passed, checks), oldest first, `DAYS` of them; `None` for a day
    /// without checks.
    pub days: Vec<Option<(i64, i64)>>,
}

struct Bar {
    x: usize,
    class: &'static str,
    label: String,
}

struct ServiceView {
    name: String,
    state: &'static str,
    state_class: &'static str,
    bars: Vec<Bar>,
    uptime: String,
}

#[derive(PartialEq, Eq)]
enum Overall {
    Up,
    Down,
    /// A service with no recent check (a stopped app): neither claimed up nor down.
    Unknown,
}

#[derive(Template)]
#[template(path = "status.html")]
struct StatusTemplate {
    title: String,
    overall: Overall,
    services: Vec<ServiceView>,
    width: usize,
    bar_width: usize,
    updated: String,
}

const BAR_STEP: usize = 8;

/// The page, for `now_ms` (the last bar is today, UTC).
pub fn render(title: &str, services: &[StatusService], now_ms: i64) -> String {
    let today = now_ms.div_euclid(86_400_000);
    let views: Vec<ServiceView> = services
        .iter()
        .map(|service| {
            let bars = service
                .days
                .iter()
                .enumerate()
                .map(|(index, day)| {
                    let day = day
                        .filter(|(_, checks)| *checks > 0)
                        .map(|(ups, checks)| ups as f64 * 100.0 / checks as f64);
                    let day_number = today - (DAYS - 1 - index) as i64;
                    let date = crate::view::when(day_number * 86_400_000)
                        .split(' ')
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let (class, label) = match day {
                        None => ("none", format!("{date}: no data")),
                        Some(p) if p >= 99.9 => ("up", format!("{date}: {p:.2} % up")),
                        Some(p) if p >= 95.0 => ("degraded", format!("{date}: {p:.2} % up")),
                        Some(p) => ("down", format!("{date}: {p:.2} % up")),
                    };
                    Bar {
                        x: index * BAR_STEP,
                        class,
                        label,
                    }
                })
                .collect();
            // Of all the checks in the window, not an average of days: a day with one
            // check weighs as much as that check.
            let (ups, checks) = service
                .days
                .iter()
                .flatten()
                .fold((0, 0), |(u, c), (ups, checks)| (u + ups, c + checks));
            let uptime = if checks == 0 {
                "no data yet".to_owned()
            } else {
                format!("{:.2} % uptime", ups as f64 * 100.0 / checks as f64)
            };
            let (state, state_class) = match service.up_now {
                Some(true) => ("Operational", "state-up"),
                Some(false) => ("Down", "state-down"),
                None => ("No data", "state-unknown"),
            };
            ServiceView {
                name: service.name.clone(),
                state,
                state_class,
                bars,
                uptime,
            }
        })
        .collect();
    let page = StatusTemplate {
        title: title.to_owned(),
        overall: if services.iter().any(|s| s.up_now == Some(false)) {
            Overall::Down
        } else if services.iter().all(|s| s.up_now == Some(true)) {
            Overall::Up
        } else {
            Overall::Unknown
        },
        services: views,
        width: DAYS * BAR_STEP,
        bar_width: BAR_STEP - 2,
        updated: crate::view::when(now_ms),
    };
    page.render()
        .unwrap_or_else(|error| format!("the status page could not be rendered: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_shows_each_service_and_its_days_and_escapes_names() {
        let mut days = vec![None; DAYS];
        days[DAYS - 1] = Some((1000, 1000));
        days[DAYS - 2] = Some((975, 1000));
        days[DAYS - 3] = Some((1, 2));
        let html = render(
            "Shop <status>",
            &[
                StatusService {
                    name: "web".into(),
                    up_now: Some(true),
                    days: days.clone(),
                },
                StatusService {
                    name: "api".into(),
                    up_now: Some(false),
                    days,
                },
            ],
            10 * 86_400_000 + 5,
        );
        assert!(html.contains("Shop &#60;status&#62;"), "{html}");
        assert!(!html.contains("<status>"));
        assert!(html.contains("Some systems are down"));
        assert!(html.contains("Operational") && html.contains("Down"));
        assert_eq!(html.matches("<rect").count(), 2 * DAYS);
        assert!(html.contains("class=\"degraded\""));
        assert!(html.contains("1970-01-11: 100.00 % up"), "{html}");
        // Of all checks: 1976 of 2002, not the average of the days' shares.
        assert!(html.contains("98.70 % uptime"), "{html}");
        assert!(!html.contains("<script"));
        let unknown = render(
            "Shop",
            &[StatusService {
                name: "web".into(),
                up_now: None,
                days: vec![None; DAYS],
            }],
            0,
        );
        assert!(unknown.contains("Status unknown"), "{unknown}");
        assert!(!unknown.contains("All systems operational"));
    }
}
