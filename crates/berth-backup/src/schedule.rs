//! Cron schedules (`0 3 * * *`), evaluated in a time zone.

use croner::Cron;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use std::str::FromStr;

#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    text: String,
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Self, String> {
        let cron = Cron::from_str(text).map_err(|e| e.to_string())?;
        Ok(Schedule {
            cron,
            text: text.to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first time strictly after `after` the schedule fires.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let zoned = after.to_zoned(tz.clone());
        self.cron
            .find_next_occurrence(&zoned, false)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The last time at or before `at` the schedule fired.
    pub fn previous_at_or_before(&self, at: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let zoned = at.to_zoned(tz.clone());
        self.cron
            .find_previous_occurrence(&zoned, true)
            .ok()
            .map(|z| z.timestamp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daily_at_three() {
        let schedule = Schedule::parse("0 3 * * *").unwrap();
        let now: Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        let next = schedule.next_after(now, &TimeZone::UTC).unwrap();
        assert_eq!(next.to_string(), "2026-11-24T03:00:00Z");
        let previous = schedule.previous_at_or_before(now, &TimeZone::UTC).unwrap();
        assert_eq!(previous.to_string(), "2026-11-23T03:00:00Z");
        // In Berlin 03:00 local is 02:00 UTC in winter.
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let next = schedule.next_after(now, &berlin).unwrap();
        assert_eq!(next.to_string(), "2026-11-24T02:00:00Z");
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(Schedule::parse("every day").is_err());
        assert!(Schedule::parse("61 * * * *").is_err());
    }
}
