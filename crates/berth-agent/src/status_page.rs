//! The apps' public status pages (`[status_page]`), served by the proxy: each listed
//! service's last probe and its uptime per day for 90 days, from the state file's history.
//! A page is made at most every 30 seconds per app, so a busy status page costs the state file
//! nothing more.

use berth_dashboard::status::{self, StatusService};
use berth_engine::Engine;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const DAY: i64 = 86_400_000;
/// How long a made page is served again.
const FRESH_MS: i64 = 30_000;
/// A probe older than this says nothing of now.
const RECENT_MS: i64 = 5 * 60_000;

pub(crate) struct StatusPageSource {
    engine: Arc<Engine>,
    made: Mutex<HashMap<String, (i64, String)>>,
}

impl StatusPageSource {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        Self {
            engine,
            made: Mutex::new(HashMap::new()),
        }
    }
}

impl berth_proxy::StatusPages for StatusPageSource {
    fn page(&self, app: &str) -> Option<String> {
        let now = berth_state::now_ms();
        if let Some((at, html)) = self.made.lock().unwrap_or_else(|p| p.into_inner()).get(app)
            && now - at < FRESH_MS
        {
            return Some(html.clone());
        }
        let live = self.engine.live_app(app)?;
        let page = live.manifest.status_page.as_ref()?;
        let store = self.engine.store();
        let first_day = now.div_euclid(DAY) - (status::DAYS as i64 - 1);
        let services: Vec<StatusService> = page
            .services
            .iter()
            .map(|name| {
                let subject = format!("{app}/{name}");
                let mut days = vec![None; status::DAYS];
                for day in store
                    .uptime_days(&subject, first_day * DAY)
                    .unwrap_or_default()
                {
                    let index = day.day_start.div_euclid(DAY) - first_day;
                    if let Ok(index) = usize::try_from(index)
                        && index < days.len()
                        && day.checks > 0
                    {
                        days[index] = Some(day.ups as f64 * 100.0 / day.checks as f64);
                    }
                }
                let up_now = store
                    .uptime_latest(&subject)
                    .ok()
                    .flatten()
                    .filter(|(at, _)| now - at < RECENT_MS)
                    .map(|(_, up)| up);
                StatusService {
                    name: name.clone(),
                    up_now,
                    days,
                }
            })
            .collect();
        let html = status::render(&page.title, &services, now);
        // A page without a probe of every service (just deployed) is not kept: the first
        // probes come within seconds.
        if services.iter().all(|s| s.up_now.is_some()) {
            self.made
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(app.to_owned(), (now, html.clone()));
        }
        Some(html)
    }
}
