//! Which backups a GFS policy keeps, with the semantics of `restic forget --keep-*`:
//!
//! - backups are considered newest first;
//! - each rule (`last`, `hourly`, `daily`, `weekly`, `monthly`, `yearly`) keeps the newest
//!   backup of each of the last N periods that have a backup (hours, days, ISO weeks, months,
//!   years, in the given time zone; `last` counts backups);
//! - a rule that still has periods left when it reaches the oldest backup keeps that one too,
//!   so a young history is kept whole;
//! - a backup is kept when any rule keeps it.
//!
//! A policy with every count at 0 keeps everything: berth never deletes on an empty policy.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keep {
    #[serde(default)]
    pub last: u32,
    #[serde(default)]
    pub hourly: u32,
    #[serde(default)]
    pub daily: u32,
    #[serde(default)]
    pub weekly: u32,
    #[serde(default)]
    pub monthly: u32,
    #[serde(default)]
    pub yearly: u32,
}

impl Keep {
    /// True when no rule is set: nothing is ever pruned.
    pub fn keeps_everything(&self) -> bool {
        self.rules().iter().all(|(count, _)| *count == 0)
    }

    fn rules(&self) -> [(u32, Rule); 6] {
        [
            (self.last, Rule::Last),
            (self.hourly, Rule::Hourly),
            (self.daily, Rule::Daily),
            (self.weekly, Rule::Weekly),
            (self.monthly, Rule::Monthly),
            (self.yearly, Rule::Yearly),
        ]
    }
}

impl std::fmt::Display for Keep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.keeps_everything() {
            return f.write_str("keep everything");
        }
        let parts: Vec<String> = self
            .rules()
            .iter()
            .filter(|(count, _)| *count > 0)
            .map(|(count, rule)| format!("{count} {}", rule.label()))
            .collect();
        write!(f, "keep {}", parts.join(", "))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Rule {
    fn label(self) -> &'static str {
        match self {
            Rule::Last => "last",
            Rule::Hourly => "hourly",
            Rule::Daily => "daily",
            Rule::Weekly => "weekly",
            Rule::Monthly => "monthly",
            Rule::Yearly => "yearly",
        }
    }

    /// The period a backup falls in; equal keys mean the same period.
    fn period(self, at: Timestamp, position: usize, tz: &TimeZone) -> i64 {
        let local = at.to_zoned(tz.clone());
        let (year, month, day, hour) = (
            i64::from(local.year()),
            i64::from(local.month()),
            i64::from(local.day()),
            i64::from(local.hour()),
        );
        match self {
            Rule::Last => position as i64,
            Rule::Hourly => ((year * 100 + month) * 100 + day) * 100 + hour,
            Rule::Daily => (year * 100 + month) * 100 + day,
            Rule::Weekly => {
                let week = local.date().iso_week_date();
                i64::from(week.year()) * 100 + i64::from(week.week())
            }
            Rule::Monthly => year * 100 + month,
            Rule::Yearly => year,
        }
    }
}

/// One backup as retention sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    pub at: Timestamp,
}

/// The decision for one backup, with the rules that keep it (`daily`, `oldest monthly`...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub id: String,
    pub keep: bool,
    pub reasons: Vec<String>,
}

/// Applies `keep` to `candidates` (any order); returns verdicts newest first.
pub fn apply(candidates: &[Candidate], keep: &Keep, tz: &TimeZone) -> Vec<Verdict> {
    let mut sorted: Vec<&Candidate> = candidates.iter().collect();
    // Newest first; ties broken by id so the result does not depend on the input order.
    sorted.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| b.id.cmp(&a.id)));
    if keep.keeps_everything() {
        return sorted
            .iter()
            .map(|c| Verdict {
                id: c.id.clone(),
                keep: true,
                reasons: vec!["no retention policy".to_owned()],
            })
            .collect();
    }
    let mut rules: Vec<(u32, Rule, Option<i64>)> = keep
        .rules()
        .iter()
        .filter(|(count, _)| *count > 0)
        .map(|(count, rule)| (*count, *rule, None))
        .collect();
    let oldest = sorted.len().saturating_sub(1);
    let mut verdicts = Vec::with_capacity(sorted.len());
    for (position, candidate) in sorted.iter().enumerate() {
        let mut reasons = Vec::new();
        for (left, rule, last_period) in rules.iter_mut() {
            if *left == 0 {
                continue;
            }
            let period = rule.period(candidate.at, position, tz);
            let new_period = *last_period != Some(period);
            if new_period || position == oldest {
                let label = if new_period {
                    rule.label().to_owned()
                } else {
                    format!("oldest {}", rule.label())
                };
                reasons.push(label);
                *last_period = Some(period);
                *left -= 1;
            }
        }
        verdicts.push(Verdict {
            id: candidate.id.clone(),
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    verdicts
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn at(y: i16, m: i8, d: i8, h: i8) -> Timestamp {
        date(y, m, d)
            .at(h, 0, 0, 0)
            .to_zoned(TimeZone::UTC)
            .unwrap()
            .timestamp()
    }

    fn candidates(times: &[Timestamp]) -> Vec<Candidate> {
        times
            .iter()
            .map(|t| Candidate {
                id: t.strftime("%Y-%m-%dT%H").to_string(),
                at: *t,
            })
            .collect()
    }

    fn kept(verdicts: &[Verdict]) -> Vec<&str> {
        verdicts
            .iter()
            .filter(|v| v.keep)
            .map(|v| v.id.as_str())
            .collect()
    }

    #[test]
    fn an_empty_policy_keeps_everything() {
        let list = candidates(&[at(2026, 1, 1, 3), at(2026, 1, 2, 3)]);
        let verdicts = apply(&list, &Keep::default(), &TimeZone::UTC);
        assert!(verdicts.iter().all(|v| v.keep));
    }

    #[test]
    fn last_keeps_the_newest_n() {
        let list = candidates(&[
            at(2026, 1, 1, 1),
            at(2026, 1, 1, 2),
            at(2026, 1, 1, 3),
            at(2026, 1, 1, 4),
        ]);
        let keep = Keep {
            last: 2,
            ..Keep::default()
        };
        let verdicts = apply(&list, &keep, &TimeZone::UTC);
        assert_eq!(kept(&verdicts), ["2026-01-01T04", "2026-01-01T03"]);
    }

    #[test]
    fn daily_keeps_the_newest_backup_of_each_day() {
        let list = candidates(&[
            at(2026, 3, 1, 1),
            at(2026, 3, 1, 23),
            at(2026, 3, 2, 5),
            at(2026, 3, 2, 6),
            at(2026, 3, 3, 0),
        ]);
        let keep = Keep {
            daily: 2,
            ..Keep::default()
        };
        // Two days kept (the 3rd and the 2nd, newest of each); none left for the oldest.
        let verdicts = apply(&list, &keep, &TimeZone::UTC);
        assert_eq!(kept(&verdicts), ["2026-03-03T00", "2026-03-02T06"]);
    }

    #[test]
    fn a_rule_with_periods_left_keeps_the_oldest_backup() {
        // Three days of backups, a week of dailies asked for: everything is kept, and the
        // oldest one (same day as a kept one) because the rule still had periods left.
        let list = candidates(&[at(2026, 3, 1, 1), at(2026, 3, 1, 2), at(2026, 3, 2, 1)]);
        let keep = Keep {
            daily: 7,
            ..Keep::default()
        };
        let verdicts = apply(&list, &keep, &TimeZone::UTC);
        assert_eq!(
            kept(&verdicts),
            ["2026-03-02T01", "2026-03-01T02", "2026-03-01T01"]
        );
        assert_eq!(verdicts[2].reasons, ["oldest daily"]);
    }

    #[test]
    fn weeks_are_iso_weeks() {
        // 2026-01-04 is a Sunday (ISO week 2026-W01), 2026-01-05 a Monday (W02); 2025-12-29
        // (Monday) is already in ISO week 2026-W01.
        let list = candidates(&[at(2025, 12, 29, 3), at(2026, 1, 4, 3), at(2026, 1, 5, 3)]);
        let keep = Keep {
            weekly: 2,
            ..Keep::default()
        };
        let verdicts = apply(&list, &keep, &TimeZone::UTC);
        assert_eq!(kept(&verdicts), ["2026-01-05T03", "2026-01-04T03"]);
    }

    #[test]
    fn the_same_as_restic_forget_on_a_year_boundary() {
        // 45 daily snapshots (2025-11-20 .. 2026-01-03, 03:00 UTC) given to
        // `restic forget --dry-run --keep-daily 3 --keep-weekly 2 --keep-monthly 2
        // --keep-yearly 2` (restic 0.14.0) kept exactly these five.
        let start = at(2025, 11, 20, 3);
        let times: Vec<Timestamp> = (0..45)
            .map(|d| start + jiff::SignedDuration::from_hours(24 * d))
            .collect();
        let keep = Keep {
            daily: 3,
            weekly: 2,
            monthly: 2,
            yearly: 2,
            ..Keep::default()
        };
        let verdicts = apply(&candidates(&times), &keep, &TimeZone::UTC);
        assert_eq!(
            kept(&verdicts),
            [
                "2026-01-03T03",
                "2026-01-02T03",
                "2026-01-01T03",
                "2025-12-31T03",
                "2025-12-28T03"
            ]
        );
        assert_eq!(
            verdicts[0].reasons,
            ["daily", "weekly", "monthly", "yearly"]
        );
    }

    #[test]
    fn periods_follow_the_time_zone() {
        // 23:30 UTC on the 1st is already the 2nd in Berlin: one day there, two in UTC.
        let a = date(2026, 6, 1)
            .at(23, 30, 0, 0)
            .to_zoned(TimeZone::UTC)
            .unwrap()
            .timestamp();
        let b = at(2026, 6, 2, 6);
        let list = vec![
            Candidate {
                id: "a".into(),
                at: a,
            },
            Candidate {
                id: "b".into(),
                at: b,
            },
        ];
        let keep = Keep {
            daily: 1,
            ..Keep::default()
        };
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        assert_eq!(kept(&apply(&list, &keep, &berlin)), ["b"]);
        assert_eq!(kept(&apply(&list, &keep, &TimeZone::UTC)), ["b"]);
        let two = Keep {
            daily: 2,
            ..Keep::default()
        };
        // In Berlin both are on the 2nd, but the oldest is kept as "oldest daily".
        let verdicts = apply(&list, &two, &berlin);
        assert_eq!(verdicts[1].reasons, ["oldest daily"]);
        let verdicts = apply(&list, &two, &TimeZone::UTC);
        assert_eq!(verdicts[1].reasons, ["daily"]);
    }
}
