//! `berth top`: the last two samples of the host and of each container, as rates.

use crate::containers::{ContainerMetrics, Samples};
use crate::host::{HostMetrics, HostSample};
use berth_api::{ContainerTop, FilesystemTop, HostTop, TopAnswer};

/// What `berth top` shows now; `app` keeps one app's containers.
pub fn top(host: &HostMetrics, containers: &ContainerMetrics, app: Option<&str>) -> TopAnswer {
    let (previous, last) = host.last_two();
    let mut answer = TopAnswer {
        sampled_at: None,
        host: last
            .as_ref()
            .map(|l| host_top(previous.as_ref(), l))
            .unwrap_or_default(),
        containers: Vec::new(),
    };
    let mut rows: Vec<ContainerTop> = containers
        .samples()
        .into_values()
        .filter_map(|samples| container_top(&samples))
        .filter(|row| app.is_none_or(|a| row.app == a))
        .collect();
    rows.sort_by(|a, b| {
        (&a.app, &a.service, &a.container).cmp(&(&b.app, &b.service, &b.container))
    });
    answer.sampled_at = containers
        .samples()
        .values()
        .filter_map(|s| s.last.as_ref().map(|(at, _)| *at))
        .max();
    answer.containers = rows;
    answer
}

fn host_top(previous: Option<&HostSample>, last: &HostSample) -> HostTop {
    let memory = |field: &str| last.memory.get(field).copied().unwrap_or(0);
    let cpus = last
        .cpu_seconds
        .keys()
        .map(|(cpu, _)| cpu.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let cpu_percent = previous.and_then(|previous| {
        let (mut busy, mut all) = (0.0, 0.0);
        for (key, now) in &last.cpu_seconds {
            let passed = now - previous.cpu_seconds.get(key).copied().unwrap_or(*now);
            all += passed;
            if !matches!(key.1.as_str(), "idle" | "iowait") {
                busy += passed;
            }
        }
        (all > 0.0).then(|| 100.0 * busy / all)
    });
    HostTop {
        cpus,
        cpu_percent,
        load: last.load,
        memory_used_bytes: memory("MemTotal").saturating_sub(memory("MemAvailable")),
        memory_total_bytes: memory("MemTotal"),
        swap_used_bytes: memory("SwapTotal").saturating_sub(memory("SwapFree")),
        swap_total_bytes: memory("SwapTotal"),
        filesystems: last
            .filesystems
            .iter()
            .map(|fs| FilesystemTop {
                purpose: fs.purpose.clone(),
                mountpoint: fs.mountpoint.clone(),
                used_percent: 100.0 * fs.used_fraction(),
                avail_bytes: fs.avail_bytes,
            })
            .collect(),
        gpus: last.gpus.clone(),
    }
}

/// A container's row: levels from the last sample, rates from the last two.
pub fn container_top(samples: &Samples) -> Option<ContainerTop> {
    let (at, last) = samples.last.as_ref()?;
    let seconds_and_previous = samples
        .previous
        .as_ref()
        .filter(|(then, _)| at > then)
        .map(|(then, previous)| ((at - then) as f64 / 1000.0, previous));
    let rate = |now: f64, then: fn(&crate::containers::ContainerSample) -> f64| {
        seconds_and_previous.map(|(seconds, previous)| ((now - then(previous)) / seconds).max(0.0))
    };
    let cpu_percent = rate(last.cpu_seconds, |s| s.cpu_seconds).map(|r| 100.0 * r);
    Some(ContainerTop {
        app: last.app.clone(),
        service: last.service.clone(),
        container: last.container.clone(),
        cpu_percent,
        cpu_limit_percent: cpu_percent
            .zip(last.cpu_limit.filter(|l| *l > 0.0))
            .map(|(percent, limit)| percent / limit),
        memory_bytes: last.memory_bytes,
        memory_limit_bytes: last.memory_limit,
        memory_limit_percent: last
            .memory_limit
            .filter(|l| *l > 0)
            .map(|l| 100.0 * last.memory_bytes as f64 / l as f64),
        net_rx_rate: rate(last.rx_bytes as f64, |s| s.rx_bytes as f64),
        net_tx_rate: rate(last.tx_bytes as f64, |s| s.tx_bytes as f64),
        disk_read_rate: rate(last.read_bytes as f64, |s| s.read_bytes as f64),
        disk_write_rate: rate(last.write_bytes as f64, |s| s.write_bytes as f64),
        oom_kills: last.oom_kills,
        restarts: last.restarts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containers::ContainerSample;

    #[test]
    fn rates_come_from_the_last_two_samples_and_limits_give_percentages() {
        let sample = |cpu: f64, rx: u64| ContainerSample {
            app: "shop".into(),
            service: "web".into(),
            container: "shop-web-1".into(),
            cpu_seconds: cpu,
            memory_bytes: 64 << 20,
            memory_limit: Some(256 << 20),
            cpu_limit: Some(0.5),
            rx_bytes: rx,
            ..ContainerSample::default()
        };
        let only_one = Samples {
            previous: None,
            last: Some((0, sample(1.0, 0))),
        };
        let row = container_top(&only_one).unwrap();
        assert_eq!(row.cpu_percent, None, "one sample has no rate");
        assert_eq!(row.memory_limit_percent, Some(25.0));
        let two = Samples {
            previous: Some((0, sample(1.0, 0))),
            last: Some((15_000, sample(4.0, 30_000))),
        };
        let row = container_top(&two).unwrap();
        assert_eq!(row.cpu_percent, Some(20.0), "3 s of CPU in 15 s");
        assert_eq!(row.cpu_limit_percent, Some(40.0), "of half a core");
        assert_eq!(row.net_rx_rate, Some(2000.0));
    }

    #[test]
    fn the_host_cpu_share_leaves_out_idle_and_iowait() {
        let sample = |user: f64, idle: f64| HostSample {
            load: [0.5, 0.4, 0.3],
            memory: [
                ("MemTotal".to_owned(), 1000),
                ("MemAvailable".to_owned(), 250),
            ]
            .into_iter()
            .collect(),
            cpu_seconds: [
                (("0".to_owned(), "user".to_owned()), user),
                (("0".to_owned(), "idle".to_owned()), idle),
            ]
            .into_iter()
            .collect(),
            filesystems: Vec::new(),
            gpus: Vec::new(),
        };
        let row = host_top(Some(&sample(10.0, 10.0)), &sample(13.0, 11.0));
        assert_eq!(row.cpu_percent, Some(75.0));
        assert_eq!(
            (row.memory_used_bytes, row.memory_total_bytes, row.cpus),
            (750, 1000, 1)
        );
        assert_eq!(host_top(None, &sample(1.0, 1.0)).cpu_percent, None);
    }
}
