//! Resource history: every 15 s the host's and each service's resources, as `berth top`
//! computes them from the samplers' last samples, go into the state file's minute and hour
//! buckets (`berth top --history`, the console's charts), with each app's requests and 5xx
//! answers a minute as the proxy counted them (subject `APP/*`, which no service name can be).

use berth_api::TopAnswer;
use berth_engine::Engine;
use berth_state::ResourceSample;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const RECORD_EVERY: Duration = Duration::from_secs(15);

/// What one round records: the host's CPU (percent of all cores), memory and swap in use
/// (bytes), 1-minute load and each watched filesystem's use (percent); per service, the CPU
/// (percent of one core) and memory (bytes) of all its replicas together.
pub fn samples(top: &TopAnswer, now: i64) -> Vec<ResourceSample> {
    let mut samples = Vec::new();
    let mut add = |subject: &str, metric: &str, value: f64| {
        samples.push(ResourceSample {
            subject: subject.to_owned(),
            metric: metric.to_owned(),
            at: now,
            value,
        });
    };
    let host = &top.host;
    if host.memory_total_bytes > 0 {
        if let Some(cpu) = host.cpu_percent {
            add("host", "cpu_percent", cpu);
        }
        add("host", "memory_bytes", host.memory_used_bytes as f64);
        add("host", "swap_bytes", host.swap_used_bytes as f64);
        add("host", "load1", host.load[0]);
        for fs in &host.filesystems {
            add(
                "host",
                &format!("disk_percent {}", fs.purpose),
                fs.used_percent,
            );
        }
    }
    let mut services: BTreeMap<(&str, &str), (Option<f64>, u64)> = BTreeMap::new();
    for container in &top.containers {
        let entry = services
            .entry((&container.app, &container.service))
            .or_default();
        if let Some(cpu) = container.cpu_percent {
            entry.0 = Some(entry.0.unwrap_or(0.0) + cpu);
        }
        entry.1 += container.memory_bytes;
    }
    for ((app, service), (cpu, memory)) in services {
        let subject = format!("{app}/{service}");
        if let Some(cpu) = cpu {
            add(&subject, "cpu_percent", cpu);
        }
        add(&subject, "memory_bytes", memory as f64);
    }
    samples
}

/// An app's proxy counters at one moment: all answers and 5xx ones.
#[derive(Debug, Clone, Copy)]
pub struct RequestCount {
    pub at: i64,
    pub total: u64,
    pub errors: u64,
}

/// Requests and 5xx answers a minute since the previous count of the app (none for its first
/// count, or when the counters went back: the proxy restarted).
pub fn request_samples(
    app: &str,
    previous: Option<RequestCount>,
    now: RequestCount,
) -> Vec<ResourceSample> {
    let Some(previous) = previous else {
        return Vec::new();
    };
    let elapsed = now.at - previous.at;
    if elapsed <= 0 || now.total < previous.total || now.errors < previous.errors {
        return Vec::new();
    }
    let per_minute = |count: u64| count as f64 * 60_000.0 / elapsed as f64;
    let subject = format!("{app}/*");
    vec![
        ResourceSample {
            subject: subject.clone(),
            metric: "requests_per_minute".to_owned(),
            at: now.at,
            value: per_minute(now.total - previous.total),
        },
        ResourceSample {
            subject,
            metric: "errors_per_minute".to_owned(),
            at: now.at,
            value: per_minute(now.errors - previous.errors),
        },
    ]
}

/// The history worker, until `stop`.
pub async fn recorder(
    engine: Arc<Engine>,
    host: Arc<crate::HostMetrics>,
    containers: Arc<crate::ContainerMetrics>,
    proxy: Arc<berth_proxy::Proxy>,
    report: berth_workers::Reporter,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut counted: std::collections::HashMap<String, RequestCount> = Default::default();
    loop {
        let now = berth_state::now_ms();
        let top = crate::top::top(&host, &containers, None);
        let mut samples = samples(&top, now);
        for app in engine.store().apps().unwrap_or_default() {
            let counts = proxy.metrics().requests_by_class(&app.name);
            let count = RequestCount {
                at: now,
                total: counts.iter().sum(),
                errors: counts[5],
            };
            let previous = counted.insert(app.name.clone(), count);
            samples.extend(request_samples(&app.name, previous, count));
        }
        let store = engine.clone();
        let written =
            tokio::task::spawn_blocking(move || store.store().add_resource_samples(&samples, now))
                .await;
        match written {
            Ok(Ok(())) => report.idle(
                Some(now + i64::try_from(RECORD_EVERY.as_millis()).unwrap_or(15_000)),
                None,
            ),
            Ok(Err(error)) => report.failed_run(format!("cannot record resources: {error}")),
            Err(error) => report.failed_run(format!("the recording stopped: {error}")),
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(RECORD_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::{ContainerTop, FilesystemTop, HostTop};

    #[test]
    fn requests_are_recorded_a_minute_from_the_proxys_counters() {
        let first = RequestCount {
            at: 0,
            total: 100,
            errors: 1,
        };
        assert!(request_samples("shop", None, first).is_empty());
        let later = RequestCount {
            at: 15_000,
            total: 130,
            errors: 4,
        };
        let samples = request_samples("shop", Some(first), later);
        let values: Vec<_> = samples
            .iter()
            .map(|s| (s.subject.as_str(), s.metric.as_str(), s.value))
            .collect();
        assert_eq!(
            values,
            vec![
                ("shop/*", "requests_per_minute", 120.0),
                ("shop/*", "errors_per_minute", 12.0)
            ]
        );
        // Counters that went back (a restart) record nothing rather than a negative rate.
        let restarted = RequestCount {
            at: 30_000,
            total: 5,
            errors: 0,
        };
        assert!(request_samples("shop", Some(later), restarted).is_empty());
    }

    #[test]
    fn a_service_is_the_sum_of_its_replicas_and_the_host_is_recorded_once_sampled() {
        let container = |name: &str, cpu: Option<f64>, memory: u64| ContainerTop {
            app: "shop".into(),
            service: "web".into(),
            container: name.into(),
            cpu_percent: cpu,
            cpu_limit_percent: None,
            memory_bytes: memory,
            memory_limit_bytes: None,
            memory_limit_percent: None,
            net_rx_rate: None,
            net_tx_rate: None,
            disk_read_rate: None,
            disk_write_rate: None,
            oom_kills: None,
            restarts: 0,
        };
        let mut top = TopAnswer {
            sampled_at: Some(1),
            host: HostTop::default(),
            containers: vec![
                container("shop-web-1", Some(30.0), 100),
                container("shop-web-2", Some(12.5), 50),
            ],
        };
        let recorded = |top: &TopAnswer| -> Vec<(String, String, f64)> {
            samples(top, 7)
                .into_iter()
                .map(|s| (s.subject, s.metric, s.value))
                .collect()
        };
        assert_eq!(
            recorded(&top),
            [
                ("shop/web".into(), "cpu_percent".into(), 42.5),
                ("shop/web".into(), "memory_bytes".into(), 150.0)
            ],
            "no host line before the host is sampled"
        );
        top.host = HostTop {
            cpus: 2,
            cpu_percent: None,
            load: [0.5, 0.0, 0.0],
            memory_used_bytes: 600,
            memory_total_bytes: 1000,
            swap_used_bytes: 0,
            swap_total_bytes: 0,
            filesystems: vec![FilesystemTop {
                purpose: "berth".into(),
                mountpoint: "/".into(),
                used_percent: 40.0,
                avail_bytes: 1,
            }],
            gpus: Vec::new(),
        };
        top.containers[0].cpu_percent = None;
        let host: Vec<_> = recorded(&top)
            .into_iter()
            .filter(|s| s.0 == "host")
            .map(|s| s.1)
            .collect();
        assert_eq!(
            host,
            ["memory_bytes", "swap_bytes", "load1", "disk_percent berth"],
            "no CPU line before two host samples"
        );
        assert!(recorded(&top).contains(&("shop/web".into(), "cpu_percent".into(), 12.5)));
    }
}
