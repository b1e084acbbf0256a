//! The apps' public status pages (`[status_page]`), served by the proxy: each listed
//! service's last probe and its uptime per day for 90 days, from the state file's history.
//! A page is made at most every 30 seconds per app (every 5 while a service has no recent
//! probe), by one request at a time, so a busy status page costs the state file nothing more.

use berth_dashboard::status::{self, StatusService};
use berth_engine::Engine;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const DAY: i64 = 86_400_000;
/// How long a made page is served again.
const FRESH_MS: i64 = 30_000;
/// ... when a service had no recent probe (just deployed, or stopped).
const FRESH_INCOMPLETE_MS: i64 = 5_000;
/// A probe older than this says nothing of now.
const RECENT_MS: i64 = 5 * 60_000;

pub(crate) struct StatusPageSource {
    engine: Arc<Engine>,
    /// Per app: until when the page is served again, and the page.
    made: Mutex<HashMap<String, (i64, String)>>,
    /// Held while a page is made: requests arriving meanwhile wait for it, not make it too.
    making: Mutex<()>,
}

impl StatusPageSource {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        Self {
            engine,
            made: Mutex::new(HashMap::new()),
            making: Mutex::new(()),
        }
    }
}

impl berth_proxy::StatusPages for StatusPageSource {
    fn page(&self, app: &str) -> Option<String> {
        let fresh = |now: i64| {
            self.made
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(app)
                .filter(|(until, _)| now < *until)
                .map(|(_, html)| html.clone())
        };
        if let Some(html) = fresh(berth_state::now_ms()) {
            return Some(html);
        }
        let _making = self.making.lock().unwrap_or_else(|p| p.into_inner());
        let now = berth_state::now_ms();
        if let Some(html) = fresh(now) {
            return Some(html);
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
                        days[index] = Some((day.ups, day.checks));
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
        // A page without a probe of every service (just deployed, or stopped) is kept for
        // less: the first probes come within seconds.
        let keep = if services.iter().all(|s| s.up_now.is_some()) {
            FRESH_MS
        } else {
            FRESH_INCOMPLETE_MS
        };
        self.made
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(app.to_owned(), (now + keep, html.clone()));
        Some(html)
    }
}
