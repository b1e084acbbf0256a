//! `[thresholds.NAME]`: alerts on a measurement that stays past a limit for a while, such as
//! `when = "cpu > 80% for 10m"`, beside the built-in rules.

use crate::alerts::Severity;
use crate::units::{duration_ms, format_duration, format_size, parse_duration, parse_size};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One threshold of the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    pub name: String,
    pub condition: Condition,
    /// The service or accessory it watches (`cpu` and `memory` only); `None` watches each.
    pub service: Option<String>,
    pub severity: Severity,
}

/// `METRIC OP LIMIT [for DURATION]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    pub metric: Metric,
    pub above: bool,
    /// Written `>=` or `<=`.
    pub or_equal: bool,
    pub limit: Limit,
    /// How long it must hold before the alert fires (zero: at the first sample).
    #[serde(with = "duration_ms")]
    pub lasting: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// A service's CPU: percent of its `cpus` limit, or of one core without one (the
    /// busiest replica).
    Cpu,
    /// A service's memory: percent of its `memory` limit, or bytes (the largest replica).
    Memory,
    /// The host's CPU in use, percent of all cores.
    HostCpu,
    /// The host's memory in use (not available), percent.
    HostMemory,
    /// The host's swap in use, percent.
    HostSwap,
    /// The host's 1-minute load average.
    HostLoad,
    /// Each filesystem berth watches (its data, Docker's data), percent used as `df` shows.
    Disk,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    Percent(f64),
    Bytes(u64),
    Number(f64),
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Cpu => "cpu",
            Metric::Memory => "memory",
            Metric::HostCpu => "host.cpu",
            Metric::HostMemory => "host.memory",
            Metric::HostSwap => "host.swap",
            Metric::HostLoad => "host.load",
            Metric::Disk => "disk",
        }
    }

    /// Whether it is measured per service (else once for the host).
    pub fn per_service(self) -> bool {
        matches!(self, Metric::Cpu | Metric::Memory)
    }

    const ALL: [Metric; 7] = [
        Metric::Cpu,
        Metric::Memory,
        Metric::HostCpu,
        Metric::HostMemory,
        Metric::HostSwap,
        Metric::HostLoad,
        Metric::Disk,
    ];
}

impl Limit {
    /// The limit as a number in the unit a reading of it has (percent, bytes, plain).
    pub fn value(self) -> f64 {
        match self {
            Limit::Percent(p) | Limit::Number(p) => p,
            Limit::Bytes(b) => b as f64,
        }
    }

    /// The limit as written back (`80%`, `512 MiB`, `4`).
    pub fn show(self) -> String {
        match self {
            Limit::Percent(p) => format!("{p}%"),
            Limit::Bytes(b) => format_size(b),
            Limit::Number(n) => format!("{n}"),
        }
    }

    /// A reading in the same unit, for messages.
    pub fn show_reading(self, reading: f64) -> String {
        match self {
            Limit::Percent(_) => format!("{reading:.0}%"),
            Limit::Bytes(_) => format_size(reading.max(0.0) as u64),
            Limit::Number(_) => format!("{reading:.2}"),
        }
    }
}

impl Condition {
    /// Whether a reading is past the limit.
    pub fn holds(&self, reading: f64) -> bool {
        let limit = self.limit.value();
        match (self.above, self.or_equal) {
            (true, false) => reading > limit,
            (true, true) => reading >= limit,
            (false, false) => reading < limit,
            (false, true) => reading <= limit,
        }
    }
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match (self.above, self.or_equal) {
            (true, false) => ">",
            (true, true) => ">=",
            (false, false) => "<",
            (false, true) => "<=",
        };
        write!(f, "{} {op} {}", self.metric.name(), self.limit.show())?;
        if !self.lasting.is_zero() {
            write!(f, " for {}", format_duration(self.lasting))?;
        }
        Ok(())
    }
}

/// Parses `cpu > 80% for 10m`, `memory > 512MB`, `host.load > 4 for 5m`; the reason on failure.
pub fn parse_condition(text: &str) -> Result<Condition, String> {
    let text = text.trim();
    let (expression, lasting) = match text.split_once(" for") {
        Some((expression, lasting)) if lasting.is_empty() || lasting.starts_with(' ') => (
            expression,
            parse_duration(lasting).map_err(|e| format!("after `for`: {e}"))?,
        ),
        _ => (text, Duration::ZERO),
    };
    let (metric, above, limit) = match (expression.split_once('>'), expression.split_once('<')) {
        (Some((metric, limit)), None) => (metric, true, limit),
        (None, Some((metric, limit))) => (metric, false, limit),
        _ => return Err("expected one comparison, `>` or `<`".into()),
    };
    let metric_text = metric.trim();
    let metric = Metric::ALL
        .into_iter()
        .find(|m| m.name() == metric_text)
        .ok_or_else(|| {
            format!(
                "there is no measurement `{metric_text}` (there are {})",
                Metric::ALL.map(Metric::name).join(", ")
            )
        })?;
    let or_equal = limit.starts_with('=');
    let limit_text = limit.trim_start_matches('=').trim();
    let limit = if let Some(number) = limit_text.strip_suffix('%') {
        let percent: f64 = number
            .trim()
            .parse()
            .map_err(|_| format!("`{limit_text}` is not a percentage"))?;
        if !(0.0..=100.0).contains(&percent) && metric != Metric::Cpu {
            return Err(format!("{limit_text} is not between 0% and 100%"));
        }
        Limit::Percent(percent)
    } else if let Ok(number) = limit_text.parse::<f64>() {
        Limit::Number(number)
    } else {
        Limit::Bytes(parse_size(limit_text).map_err(|e| format!("`{limit_text}`: {e}"))?)
    };
    let fits = match (metric, limit) {
        (Metric::Memory, Limit::Percent(_) | Limit::Bytes(_)) => true,
        (Metric::HostLoad, Limit::Number(n)) => n.is_finite() && n >= 0.0,
        (Metric::HostLoad, _) => false,
        (_, Limit::Percent(_)) => true,
        _ => false,
    };
    if !fits {
        return Err(match metric {
            Metric::Memory => {
                "memory takes a percentage of its limit or a size, such as 90% or 512MB".into()
            }
            Metric::HostLoad => "host.load takes a plain number, such as 4".into(),
            other => format!("{} takes a percentage, such as 80%", other.name()),
        });
    }
    if lasting > Duration::from_secs(7 * 86_400) {
        return Err("a duration over 7 days would hardly ever fire".into());
    }
    Ok(Condition {
        metric,
        above,
        or_equal,
        limit,
        lasting,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse_with_their_units_and_durations() {
        let cpu = parse_condition("cpu > 80% for 10m").unwrap();
        assert_eq!(cpu.metric, Metric::Cpu);
        assert!(cpu.above);
        assert_eq!(cpu.limit, Limit::Percent(80.0));
        assert_eq!(cpu.lasting, Duration::from_secs(600));
        assert_eq!(cpu.to_string(), "cpu > 80% for 10m");
        assert!(cpu.holds(80.5) && !cpu.holds(80.0));

        let memory = parse_condition("memory>512MB").unwrap();
        assert_eq!(memory.limit, Limit::Bytes(512 * 1024 * 1024));
        assert!(memory.lasting.is_zero());

        let load = parse_condition("host.load > 4 for 5m").unwrap();
        assert_eq!(load.limit, Limit::Number(4.0));
        let below = parse_condition("host.memory < 10%").unwrap();
        assert!(!below.above && below.holds(5.0) && !below.holds(10.0));
        let disk = parse_condition("disk >= 90%").unwrap();
        assert_eq!(disk.limit, Limit::Percent(90.0));
        assert!(disk.holds(90.0) && !disk.holds(89.9));
        assert_eq!(disk.to_string(), "disk >= 90%");
    }

    #[test]
    fn broken_conditions_say_what_is_wrong() {
        for (text, reason) in [
            ("cpu 80%", "expected one comparison"),
            ("gpu > 80%", "there is no measurement `gpu`"),
            ("disk > 512MB", "disk takes a percentage"),
            ("host.load > 50%", "host.load takes a plain number"),
            ("memory > 4", "memory takes a percentage"),
            ("disk > 120%", "not between 0% and 100%"),
            ("cpu > 80% for ten minutes", "after `for`"),
            ("cpu > 80% for 30d", "over 7 days"),
        ] {
            let error = parse_condition(text).unwrap_err();
            assert!(error.contains(reason), "{text}: {error}");
        }
    }
}
