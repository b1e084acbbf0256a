//! Resource history: each sample of the host's and the services' resources summed, as it is
//! written, into minute buckets (kept 48 hours) and hour buckets (kept 90 days), with the
//! mean and the peak of each. No raw rows: a minute holds four samples at most.

use super::{HOUR, MINUTE, Result, Store, sql};
use rusqlite::params;

/// Minute buckets are kept this long; hour buckets [`HOURS_KEPT`].
pub const MINUTES_KEPT: i64 = 48 * HOUR;
pub const HOURS_KEPT: i64 = 90 * 24 * HOUR;

/// One reading: `subject` is `host` or `APP/SERVICE`, `metric` such as `cpu_percent`,
/// `memory_bytes`, `load1` or `disk_percent berth`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceSample {
    pub subject: String,
    pub metric: String,
    pub at: i64,
    pub value: f64,
}

/// One point of a series: the bucket's start (Unix ms), its mean and its peak.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResourcePoint {
    pub at: i64,
    pub mean: f64,
    pub peak: f64,
}

/// One subject's metric over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceSeries {
    pub subject: String,
    pub metric: String,
    pub points: Vec<ResourcePoint>,
}

impl Store {
    /// Adds samples to their minute and hour buckets in one transaction, then drops buckets
    /// past their keeping time.
    pub fn add_resource_samples(&self, samples: &[ResourceSample], now: i64) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(sql("record resources"))?;
        for (table, width) in [("resource_minutes", MINUTE), ("resource_hours", HOUR)] {
            let mut statement = tx
                .prepare_cached(&format!(
                    "INSERT INTO {table} (subject, metric, bucket, samples, total, peak) VALUES (?1, ?2, ?3, 1, ?4, ?4)
                     ON CONFLICT (bucket, subject, metric) DO UPDATE SET
                       samples = samples + 1, total = total + excluded.total, peak = max(peak, excluded.peak)"
                ))
                .map_err(sql("record resources"))?;
            for sample in samples.iter().filter(|s| s.value.is_finite()) {
                statement
                    .execute(params![
                        sample.subject,
                        sample.metric,
                        sample.at.div_euclid(width),
                        sample.value
                    ])
                    .map_err(sql("record resources"))?;
            }
        }
        tx.execute(
            "DELETE FROM resource_minutes WHERE bucket < ?1",
            params![(now - MINUTES_KEPT).div_euclid(MINUTE)],
        )
        .map_err(sql("prune resources"))?;
        tx.execute(
            "DELETE FROM resource_hours WHERE bucket < ?1",
            params![(now - HOURS_KEPT).div_euclid(HOUR)],
        )
        .map_err(sql("prune resources"))?;
        tx.commit().map_err(sql("record resources"))
    }

    /// Every series over `[since, now]` in points `step` ms wide (rounded up to whole
    /// minutes, or to whole hours where minute buckets are no longer kept), of `host` and of
    /// `app`'s services (every app's without one).
    pub fn resource_history(
        &self,
        app: Option<&str>,
        since: i64,
        now: i64,
        step: i64,
    ) -> Result<Vec<ResourceSeries>> {
        let (table, width) = if since >= now - MINUTES_KEPT {
            ("resource_minutes", MINUTE)
        } else {
            ("resource_hours", HOUR)
        };
        let per_point = (step.max(width) + width - 1) / width;
        let conn = self.conn();
        let mut statement = conn
            .prepare_cached(&format!(
                "SELECT subject, metric, (bucket / ?1) * ?1 AS point, sum(total) / sum(samples), max(peak)
                 FROM {table}
                 WHERE bucket >= ?2 AND bucket <= ?3
                   AND (subject = 'host' OR ?4 IS NULL OR substr(subject, 1, length(?4) + 1) = ?4 || '/')
                 GROUP BY subject, metric, point ORDER BY subject, metric, point"
            ))
            .map_err(sql("read resources"))?;
        let rows = statement
            .query_map(
                params![
                    per_point,
                    since.div_euclid(width),
                    now.div_euclid(width),
                    app
                ],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, f64>(3)?,
                        r.get::<_, f64>(4)?,
                    ))
                },
            )
            .map_err(sql("read resources"))?;
        let mut series: Vec<ResourceSeries> = Vec::new();
        for row in rows {
            let (subject, metric, point, mean, peak) = row.map_err(sql("read resources"))?;
            let point = ResourcePoint {
                at: point * width,
                mean,
                peak,
            };
            match series.last_mut() {
                Some(last) if last.subject == subject && last.metric == metric => {
                    last.points.push(point)
                }
                _ => series.push(ResourceSeries {
                    subject,
                    metric,
                    points: vec![point],
                }),
            }
        }
        Ok(series)
    }
}
