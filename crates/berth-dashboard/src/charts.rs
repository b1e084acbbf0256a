//! Charts drawn on the server as SVG: numbers in, markup out, no text of anyone's inside, so a
//! chart can be put into a page as it is.

use berth_api::{ResourcePoint, ResourceSeries};
use std::fmt::Write as _;

/// A line chart of a series' means (and, fainter, its peaks) over `since..until`, scaled to
/// `ceiling` (or the highest peak). A gap in the points (the agent was down) is a gap in the
/// line, not a slope across it.
pub(crate) fn line(
    points: &[ResourcePoint],
    since: i64,
    until: i64,
    ceiling: Option<f64>,
    (width, height): (u32, u32),
    step_ms: i64,
) -> String {
    let top = ceiling
        .unwrap_or_else(|| points.iter().map(|p| p.peak).fold(0.0, f64::max))
        .max(f64::EPSILON);
    let span = (until - since).max(1) as f64;
    let (w, h) = (f64::from(width), f64::from(height));
    let x = |at: i64| ((at - since) as f64 / span * w).clamp(0.0, w);
    let y = |value: f64| (h - value / top * h).clamp(0.0, h);
    let path = |value: fn(&ResourcePoint) -> f64| {
        let mut d = String::new();
        let mut last: Option<i64> = None;
        for point in points {
            let pen = match last {
                Some(previous) if point.at - previous <= 2 * step_ms.max(1) => 'L',
                _ => 'M',
            };
            let _ = write!(d, "{pen}{:.1} {:.1} ", x(point.at), y(value(point)));
            last = Some(point.at);
        }
        d
    };
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" role=\"img\" preserveAspectRatio=\"none\">"
    );
    let _ = write!(
        svg,
        "<line class=\"grid\" x1=\"0\" y1=\"{mid:.1}\" x2=\"{w}\" y2=\"{mid:.1}\"/>",
        mid = h / 2.0
    );
    if !points.is_empty() {
        let _ = write!(svg, "<path class=\"peak\" d=\"{}\"/>", path(|p| p.peak));
        let _ = write!(svg, "<path class=\"mean\" d=\"{}\"/>", path(|p| p.mean));
    }
    svg.push_str("</svg>");
    svg
}

/// The series of `subject` and `metric`, if any.
pub(crate) fn find<'a>(
    series: &'a [ResourceSeries],
    subject: &str,
    metric: &str,
) -> Option<&'a ResourceSeries> {
    series
        .iter()
        .find(|s| s.subject == subject && s.metric == metric)
}

/// The sum of several series point by point (an app's services), by time.
pub(crate) fn sum<'a>(series: impl Iterator<Item = &'a ResourceSeries>) -> Vec<ResourcePoint> {
    let mut by_time: std::collections::BTreeMap<i64, (f64, f64)> = Default::default();
    for s in series {
        for p in &s.points {
            let entry = by_time.entry(p.at).or_default();
            entry.0 += p.mean;
            entry.1 += p.peak;
        }
    }
    by_time
        .into_iter()
        .map(|(at, (mean, peak))| ResourcePoint { at, mean, peak })
        .collect()
}

/// Bytes as people read them.
pub(crate) fn bytes(value: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = value.max(0.0);
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at: i64, mean: f64) -> ResourcePoint {
        ResourcePoint {
            at,
            mean,
            peak: mean * 2.0,
        }
    }

    #[test]
    fn a_chart_scales_its_points_and_breaks_at_gaps() {
        let points = [
            point(0, 0.0),
            point(10, 50.0),
            point(20, 100.0),
            point(90, 50.0),
        ];
        let svg = line(&points, 0, 100, Some(100.0), (100, 50), 10);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        // Means: bottom left, then half way, then the top; the point after the gap starts
        // a new line.
        assert!(
            svg.contains("d=\"M0.0 50.0 L10.0 25.0 L20.0 0.0 M90.0 25.0 \""),
            "{svg}"
        );
        // Without a ceiling the highest peak is the top.
        let scaled = line(&points, 0, 100, None, (100, 50), 10);
        assert!(scaled.contains("L20.0 25.0"), "{scaled}");
        // No points: an empty chart, no path.
        assert!(!line(&[], 0, 100, None, (100, 50), 10).contains("<path"));
    }

    #[test]
    fn series_add_up_by_time_and_bytes_read_well() {
        let a = ResourceSeries {
            subject: "a/web".into(),
            metric: "cpu_percent".into(),
            points: vec![point(0, 1.0), point(60, 2.0)],
        };
        let b = ResourceSeries {
            subject: "a/worker".into(),
            metric: "cpu_percent".into(),
            points: vec![point(60, 3.0)],
        };
        let total = sum([&a, &b].into_iter());
        assert_eq!(total.len(), 2);
        assert_eq!((total[1].mean, total[1].peak), (5.0, 10.0));
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(3.5 * 1024.0 * 1024.0 * 1024.0), "3.5 GiB");
    }
}
