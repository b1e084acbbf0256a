//! The host's CPU, load, memory, swap and filesystems, read from `/proc` and `statvfs` (no
//! Docker, no subprocess), with node_exporter's names and units: `node_load1`,
//! `node_cpu_seconds_total{cpu,mode}`, `node_memory_MemAvailable_bytes`,
//! `node_filesystem_avail_bytes{mountpoint}`, ...

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// One look at the host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostSample {
    /// 1, 5 and 15 minute load averages.
    pub load: [f64; 3],
    /// `/proc/meminfo` in bytes, by its own field names (`MemTotal`, `MemAvailable`, ...).
    pub memory: BTreeMap<String, u64>,
    /// Seconds each CPU spent in each mode since boot: (`0`, `user`) -> seconds.
    pub cpu_seconds: BTreeMap<(String, String), f64>,
    pub filesystems: Vec<FilesystemUse>,
    /// NVIDIA GPUs as `nvidia-smi` reports them; empty where it is not installed.
    pub gpus: Vec<berth_api::GpuTop>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FilesystemUse {
    /// The directory asked about (berth's data directory, Docker's data root).
    pub mountpoint: String,
    /// What berth keeps there: `berth` or `docker`.
    pub purpose: String,
    pub size_bytes: u64,
    /// Free to unprivileged users, as `df` shows it.
    pub avail_bytes: u64,
    pub free_bytes: u64,
}

impl FilesystemUse {
    /// The share in use, 0 to 1, as `df` computes it.
    pub fn used_fraction(&self) -> f64 {
        let used = self.size_bytes.saturating_sub(self.free_bytes);
        let usable = used + self.avail_bytes;
        if usable == 0 {
            0.0
        } else {
            used as f64 / usable as f64
        }
    }
}

/// `/proc/loadavg`: "0.52 0.58 0.59 1/467 12345".
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut fields = text.split_whitespace().map(str::parse::<f64>);
    Some([
        fields.next()?.ok()?,
        fields.next()?.ok()?,
        fields.next()?.ok()?,
    ])
}

/// `/proc/meminfo`: "MemTotal:  16314152 kB" lines, in bytes.
pub fn parse_meminfo(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let mut words = rest.split_whitespace();
            let value: u64 = words.next()?.parse().ok()?;
            let bytes = match words.next() {
                Some("kB") => value.saturating_mul(1024),
                _ => value,
            };
            Some((name.trim().to_owned(), bytes))
        })
        .collect()
}

/// The modes of a `/proc/stat` CPU line, in their order.
const CPU_MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

/// `/proc/stat`'s per-CPU lines ("cpu0 4705 150 1120 ..." in clock ticks), in seconds.
pub fn parse_cpu_stat(text: &str, ticks_per_second: f64) -> BTreeMap<(String, String), f64> {
    let mut seconds = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(cpu) = words.next().and_then(|w| w.strip_prefix("cpu")) else {
            continue;
        };
        // The first line ("cpu ...") sums all CPUs; node_exporter reports each one.
        if cpu.is_empty() {
            continue;
        }
        for (mode, value) in CPU_MODES.iter().zip(words) {
            if let Ok(ticks) = value.parse::<f64>() {
                seconds.insert(
                    (cpu.to_owned(), (*mode).to_owned()),
                    ticks / ticks_per_second,
                );
            }
        }
    }
    seconds
}

/// The query `nvidia-smi` answers, one CSV line per GPU (memory in MiB).
const NVIDIA_QUERY: &str = "--query-gpu=index,name,memory.total,memory.used,utilization.gpu";

/// Asks `nvidia-smi` when it is on the PATH, for at most 5 seconds (a wedged driver can make
/// it hang); nothing when it is absent or fails.
fn sample_gpus() -> Vec<berth_api::GpuTop> {
    let Some(path) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nvidia-smi"))
            .find(|candidate| candidate.is_file())
    }) else {
        return Vec::new();
    };
    let child = std::process::Command::new(path)
        .args([NVIDIA_QUERY, "--format=csv,noheader,nounits"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return Vec::new();
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                tracing::warn!("nvidia-smi did not answer within 5 seconds");
                return Vec::new();
            }
        }
    }
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut out, &mut text);
    }
    parse_nvidia_smi(&text)
}

/// `nvidia-smi`'s CSV answer to [`NVIDIA_QUERY`]; lines it cannot read are skipped.
pub fn parse_nvidia_smi(text: &str) -> Vec<berth_api::GpuTop> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [index, name, total, used, utilization] = fields.as_slice() else {
                return None;
            };
            Some(berth_api::GpuTop {
                index: index.parse().ok()?,
                name: (*name).to_owned(),
                memory_total_bytes: total.parse::<u64>().ok()? << 20,
                memory_used_bytes: used.parse::<u64>().ok()? << 20,
                utilization_percent: utilization.parse().ok(),
            })
        })
        .collect()
}

/// Reads the host now. `filesystems` are (purpose, directory) pairs; a directory that cannot
/// be read is left out (logged), never fatal.
pub fn sample_host(proc_root: &Path, filesystems: &[(String, PathBuf)]) -> HostSample {
    let read = |name: &str| std::fs::read_to_string(proc_root.join(name)).unwrap_or_default();
    // Linux reports /proc/stat in USER_HZ, 100 on every architecture berth runs on.
    const USER_HZ: f64 = 100.0;
    let mut sample = HostSample {
        load: parse_loadavg(&read("loadavg")).unwrap_or_default(),
        memory: parse_meminfo(&read("meminfo")),
        cpu_seconds: parse_cpu_stat(&read("stat"), USER_HZ),
        filesystems: Vec::new(),
        gpus: sample_gpus(),
    };
    for (purpose, dir) in filesystems {
        match rustix::fs::statvfs(dir) {
            Ok(stat) => {
                let block = stat.f_frsize.max(1);
                sample.filesystems.push(FilesystemUse {
                    mountpoint: dir.display().to_string(),
                    purpose: purpose.clone(),
                    size_bytes: stat.f_blocks.saturating_mul(block),
                    avail_bytes: stat.f_bavail.saturating_mul(block),
                    free_bytes: stat.f_bfree.saturating_mul(block),
                });
            }
            Err(error) => {
                tracing::debug!(%error, dir = %dir.display(), "cannot read the filesystem's use")
            }
        }
    }
    sample
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CpuLabels {
    cpu: String,
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FilesystemLabels {
    mountpoint: String,
    purpose: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The host's metrics as Prometheus sees them; [`HostMetrics::record`] puts a sample in.
#[derive(Default)]
pub struct HostMetrics {
    load: [FloatGauge; 3],
    /// One gauge per [`MEMORY_FIELDS`] entry.
    memory: [Gauge; MEMORY_FIELDS.len()],
    cpu: Family<CpuLabels, Counter<f64, AtomicU64>>,
    /// What the counters were last set to, so each record adds only what passed since.
    cpu_last: Mutex<BTreeMap<(String, String), f64>>,
    fs_size: Family<FilesystemLabels, Gauge>,
    fs_avail: Family<FilesystemLabels, Gauge>,
    fs_free: Family<FilesystemLabels, Gauge>,
    /// The last sample, for the health report's disk checks, and the one before (rates).
    last: Mutex<Option<HostSample>>,
    previous: Mutex<Option<HostSample>>,
}

/// `/proc/meminfo` fields exported, each as `node_memory_<Field>_bytes`.
const MEMORY_FIELDS: [&str; 8] = [
    "MemTotal",
    "MemFree",
    "MemAvailable",
    "Buffers",
    "Cached",
    "SwapTotal",
    "SwapFree",
    "Dirty",
];

impl HostMetrics {
    pub fn register(&self, registry: &mut Registry) {
        for (gauge, name) in self
            .load
            .iter()
            .zip(["node_load1", "node_load5", "node_load15"])
        {
            registry.register(name, "Load average (from /proc/loadavg)", gauge.clone());
        }
        for (gauge, field) in self.memory.iter().zip(MEMORY_FIELDS) {
            registry.register(
                format!("node_memory_{field}_bytes"),
                format!("Memory information field {field}_bytes (from /proc/meminfo)"),
                gauge.clone(),
            );
        }
        registry.register(
            "node_cpu_seconds",
            "Seconds each CPU spent in each mode",
            self.cpu.clone(),
        );
        registry.register(
            "node_filesystem_size_bytes",
            "Filesystem size in bytes",
            self.fs_size.clone(),
        );
        registry.register(
            "node_filesystem_avail_bytes",
            "Filesystem space available to non-root users in bytes",
            self.fs_avail.clone(),
        );
        registry.register(
            "node_filesystem_free_bytes",
            "Filesystem free space in bytes",
            self.fs_free.clone(),
        );
    }

    /// The filesystems as last sampled (empty before the first sample).
    pub fn filesystems(&self) -> Vec<FilesystemUse> {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.filesystems.clone())
            .unwrap_or_default()
    }

    /// The sample before the last, and the last.
    pub fn last_two(&self) -> (Option<HostSample>, Option<HostSample>) {
        (
            self.previous
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            self.last.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        )
    }

    pub fn record(&self, sample: &HostSample) {
        let before = self
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(sample.clone());
        *self.previous.lock().unwrap_or_else(|p| p.into_inner()) = before;
        for (gauge, value) in self.load.iter().zip(sample.load) {
            gauge.set(value);
        }
        for (gauge, field) in self.memory.iter().zip(MEMORY_FIELDS) {
            if let Some(bytes) = sample.memory.get(field) {
                gauge.set(i64::try_from(*bytes).unwrap_or(i64::MAX));
            }
        }
        let mut last = self.cpu_last.lock().unwrap_or_else(|p| p.into_inner());
        for ((cpu, mode), seconds) in &sample.cpu_seconds {
            let key = (cpu.clone(), mode.clone());
            let before = last.get(&key).copied().unwrap_or(0.0);
            // The kernel's counters only grow; a smaller value would be a new boot's.
            let passed = if *seconds >= before {
                seconds - before
            } else {
                *seconds
            };
            self.cpu
                .get_or_create(&CpuLabels {
                    cpu: cpu.clone(),
                    mode: mode.clone(),
                })
                .inc_by(passed);
            last.insert(key, *seconds);
        }
        for fs in &sample.filesystems {
            let labels = FilesystemLabels {
                mountpoint: fs.mountpoint.clone(),
                purpose: fs.purpose.clone(),
            };
            let bytes = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
            self.fs_size
                .get_or_create(&labels)
                .set(bytes(fs.size_bytes));
            self.fs_avail
                .get_or_create(&labels)
                .set(bytes(fs.avail_bytes));
            self.fs_free
                .get_or_create(&labels)
                .set(bytes(fs.free_bytes));
        }
    }
}

/// What a sample means for the alerts: each watched filesystem's use and the memory in use.
pub fn usage_signals(sample: &HostSample) -> Vec<crate::Signal> {
    let mut signals: Vec<crate::Signal> = sample
        .filesystems
        .iter()
        .filter(|fs| fs.size_bytes > 0)
        .map(|fs| crate::Signal::DiskUsage {
            purpose: fs.purpose.clone(),
            used_percent: fs.used_fraction() * 100.0,
        })
        .collect();
    if let (Some(total), Some(available)) = (
        sample.memory.get("MemTotal").filter(|t| **t > 0),
        sample.memory.get("MemAvailable"),
    ) {
        signals.push(crate::Signal::MemoryUsage {
            used_percent: 100.0 * (1.0 - *available as f64 / *total as f64),
        });
    }
    signals
}

/// How often the host is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(15);

/// The sampling worker: a sample now and every [`SAMPLE_EVERY`], until `stop` resolves.
pub async fn sampler(
    metrics: std::sync::Arc<HostMetrics>,
    filesystems: Vec<(String, PathBuf)>,
    alerts: std::sync::Arc<crate::Alerts>,
    report: berth_workers::Reporter,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let dirs = filesystems.clone();
        match tokio::task::spawn_blocking(move || sample_host(Path::new("/proc"), &dirs)).await {
            Ok(sample) => {
                metrics.record(&sample);
                for signal in usage_signals(&sample) {
                    alerts.signal(signal);
                }
            }
            Err(error) => report.failed_run(format!("the sample stopped: {error}")),
        }
        report.idle(
            Some(berth_state::now_ms() + SAMPLE_EVERY.as_millis() as i64),
            None,
        );
        tokio::select! {
            () = tokio::time::sleep(SAMPLE_EVERY) => {}
            () = &mut stop => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_answers_are_read() {
        let gpus = parse_nvidia_smi(
            "0, NVIDIA GeForce RTX 4090, 24564, 1024, 7\n1, NVIDIA A100-SXM4-80GB, 81920, 0, [N/A]\nnot a line\n",
        );
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].memory_total_bytes, 24564 << 20);
        assert_eq!(gpus[0].utilization_percent, Some(7.0));
        assert_eq!(gpus[1].name, "NVIDIA A100-SXM4-80GB");
        assert_eq!(gpus[1].utilization_percent, None);
    }

    #[test]
    fn proc_files_are_read_in_the_units_prometheus_expects() {
        assert_eq!(
            parse_loadavg("0.52 1.58 2.59 1/467 12345\n"),
            Some([0.52, 1.58, 2.59])
        );
        assert_eq!(parse_loadavg("garbage"), None);
        let memory = parse_meminfo(
            "MemTotal:       16314152 kB\nMemAvailable:    8157076 kB\nHugePages_Total:       0\n",
        );
        assert_eq!(memory["MemTotal"], 16_314_152 * 1024);
        assert_eq!(memory["MemAvailable"], 8_157_076 * 1024);
        assert_eq!(
            memory["HugePages_Total"], 0,
            "a count without kB stays a count"
        );
        let cpu = parse_cpu_stat(
            "cpu  9000 0 2000 50000 100 0 30 0 0 0\ncpu0 4500 0 1000 25000 50 0 15 0 0 0\ncpu1 4500 0 1000 25000 50 0 15 0 0 0\nintr 123\n",
            100.0,
        );
        assert_eq!(cpu[&("0".to_owned(), "user".to_owned())], 45.0);
        assert_eq!(cpu[&("1".to_owned(), "idle".to_owned())], 250.0);
        assert!(
            !cpu.keys().any(|(c, _)| c.is_empty()),
            "the summed line is not a CPU"
        );
        assert_eq!(cpu.len(), 16, "8 modes of 2 CPUs");
    }

    #[test]
    fn this_host_is_sampled_and_exported_under_node_exporter_names() {
        let dir = std::env::temp_dir();
        let sample = sample_host(Path::new("/proc"), &[("berth".to_owned(), dir.clone())]);
        assert!(sample.memory["MemTotal"] > 0);
        assert!(!sample.cpu_seconds.is_empty());
        assert_eq!(sample.filesystems.len(), 1);
        let fs = &sample.filesystems[0];
        assert!(fs.size_bytes >= fs.free_bytes && fs.free_bytes >= fs.avail_bytes);
        assert!((0.0..=1.0).contains(&fs.used_fraction()));

        let metrics = HostMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.record(&sample);
        metrics.record(&sample);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for name in [
            "node_load1 ",
            "node_memory_MemAvailable_bytes ",
            "node_memory_MemTotal_bytes ",
            "node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"}",
            "node_filesystem_avail_bytes{mountpoint=",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        // Recording the same sample twice adds nothing to the counters.
        let idle = sample.cpu_seconds[&("0".to_owned(), "idle".to_owned())];
        let line = text
            .lines()
            .find(|l| l.starts_with("node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"}"))
            .unwrap();
        let exported: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((exported - idle).abs() < 1e-6, "{exported} vs {idle}");
    }

    #[test]
    fn a_full_disk_is_close_to_one_and_an_empty_one_zero() {
        let fs = |size, free, avail| FilesystemUse {
            mountpoint: "/".into(),
            purpose: "berth".into(),
            size_bytes: size,
            avail_bytes: avail,
            free_bytes: free,
        };
        assert_eq!(fs(100, 100, 95).used_fraction(), 0.0);
        assert!((fs(100, 5, 0).used_fraction() - 1.0).abs() < 1e-9);
        assert!((fs(100, 50, 45).used_fraction() - 50.0 / 95.0).abs() < 1e-9);
    }
}
