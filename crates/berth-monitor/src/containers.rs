//! Each watched container's resources, read from its cgroup (v2, or v1 where the host still
//! runs it) and its network namespace's `/proc/PID/net/dev`, every 15 s: no Docker stats
//! stream. Exported under cAdvisor's names (`container_cpu_usage_seconds_total`,
//! `container_memory_working_set_bytes`, ...) and kept as the last two samples, which
//! `berth top` turns into rates.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

/// One container's counters and levels at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerSample {
    pub app: String,
    pub service: String,
    pub container: String,
    /// CPU time used since the container started, in seconds.
    pub cpu_seconds: f64,
    /// Memory in use less the page cache the kernel can drop (what `docker stats` shows).
    pub memory_bytes: u64,
    /// The memory limit, when there is one.
    pub memory_limit: Option<u64>,
    /// CPUs the container may use (its `cpus` limit), when limited.
    pub cpu_limit: Option<f64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    /// Processes the kernel killed for exceeding the memory limit, when the kernel says.
    pub oom_kills: Option<u64>,
    /// Times Docker restarted the container (its restart policy), as Docker counts them.
    pub restarts: u64,
}

/// Where a container's cgroup files are, under the cgroup root (`/sys/fs/cgroup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupFiles {
    /// cgroup v2: one directory.
    Unified(PathBuf),
    /// cgroup v1: one directory per controller (memory, cpuacct, blkio).
    Split {
        memory: PathBuf,
        cpu: PathBuf,
        blkio: PathBuf,
    },
}

/// Finds a container's cgroup (Docker's cgroupfs or systemd driver, v2 or v1).
pub fn cgroup_of(root: &Path, id: &str) -> Option<CgroupFiles> {
    let leaves = [
        format!("docker/{id}"),
        format!("system.slice/docker-{id}.scope"),
    ];
    for leaf in &leaves {
        let dir = root.join(leaf);
        if dir.join("cgroup.controllers").exists() || dir.join("memory.current").exists() {
            return Some(CgroupFiles::Unified(dir));
        }
    }
    for leaf in &leaves {
        let memory = root.join("memory").join(leaf);
        if memory.is_dir() {
            let cpu = ["cpuacct", "cpu,cpuacct", "cpu"]
                .iter()
                .map(|c| root.join(c).join(leaf))
                .find(|p| p.is_dir())
                .unwrap_or_else(|| root.join("cpuacct").join(leaf));
            return Some(CgroupFiles::Split {
                memory,
                cpu,
                blkio: root.join("blkio").join(leaf),
            });
        }
    }
    None
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// `key value` lines (`cpu.stat`, `memory.stat`, `memory.events`) as a map.
pub fn parse_flat_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// v2 `io.stat` (`8:0 rbytes=1 wbytes=2 ...` per device): bytes read and written in all.
pub fn parse_io_stat(text: &str) -> (u64, u64) {
    let mut totals = (0, 0);
    for field in text.split_whitespace() {
        if let Some(n) = field
            .strip_prefix("rbytes=")
            .and_then(|n| n.parse::<u64>().ok())
        {
            totals.0 += n;
        } else if let Some(n) = field
            .strip_prefix("wbytes=")
            .and_then(|n| n.parse::<u64>().ok())
        {
            totals.1 += n;
        }
    }
    totals
}

/// v1 `blkio.throttle.io_service_bytes` (`8:0 Read 123` per device and operation).
pub fn parse_blkio(text: &str) -> (u64, u64) {
    let mut totals = (0, 0);
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(_device), Some(op), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match op {
            "Read" => totals.0 += n,
            "Write" => totals.1 += n,
            _ => {}
        }
    }
    totals
}

/// `/proc/PID/net/dev`: bytes received and sent on every interface but loopback.
pub fn parse_net_dev(text: &str) -> (u64, u64) {
    let mut totals = (0, 0);
    for line in text.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let fields: Vec<u64> = counters
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        if fields.len() >= 9 {
            totals.0 += fields[0];
            totals.1 += fields[8];
        }
    }
    totals
}

/// Reads one container's cgroup and network counters.
pub fn sample_container(files: &CgroupFiles, pid: Option<i64>) -> ContainerSample {
    let mut sample = ContainerSample::default();
    match files {
        CgroupFiles::Unified(dir) => {
            let cpu = parse_flat_keyed(&read(&dir.join("cpu.stat")).unwrap_or_default());
            sample.cpu_seconds = cpu.get("usage_usec").copied().unwrap_or(0) as f64 / 1e6;
            let current: u64 = read(&dir.join("memory.current"))
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0);
            let stat = parse_flat_keyed(&read(&dir.join("memory.stat")).unwrap_or_default());
            sample.memory_bytes =
                current.saturating_sub(stat.get("inactive_file").copied().unwrap_or(0));
            sample.memory_limit = read(&dir.join("memory.max")).and_then(|t| t.trim().parse().ok());
            let (read_bytes, write_bytes) =
                parse_io_stat(&read(&dir.join("io.stat")).unwrap_or_default());
            (sample.read_bytes, sample.write_bytes) = (read_bytes, write_bytes);
            sample.oom_kills = read(&dir.join("memory.events"))
                .and_then(|t| parse_flat_keyed(&t).get("oom_kill").copied());
        }
        CgroupFiles::Split { memory, cpu, blkio } => {
            sample.cpu_seconds = read(&cpu.join("cpuacct.usage"))
                .and_then(|t| t.trim().parse::<u64>().ok())
                .unwrap_or(0) as f64
                / 1e9;
            let usage: u64 = read(&memory.join("memory.usage_in_bytes"))
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0);
            let stat = parse_flat_keyed(&read(&memory.join("memory.stat")).unwrap_or_default());
            sample.memory_bytes =
                usage.saturating_sub(stat.get("total_inactive_file").copied().unwrap_or(0));
            // v1 says "no limit" with a number near i64::MAX.
            sample.memory_limit = read(&memory.join("memory.limit_in_bytes"))
                .and_then(|t| t.trim().parse::<u64>().ok())
                .filter(|l| *l < (1 << 60));
            (sample.read_bytes, sample.write_bytes) = parse_blkio(
                &read(&blkio.join("blkio.throttle.io_service_bytes")).unwrap_or_default(),
            );
            sample.oom_kills = read(&memory.join("memory.oom_control"))
                .and_then(|t| parse_flat_keyed(&t).get("oom_kill").copied());
        }
    }
    if let Some(pid) = pid.filter(|p| *p > 0)
        && let Some(text) = read(Path::new(&format!("/proc/{pid}/net/dev")))
    {
        (sample.rx_bytes, sample.tx_bytes) = parse_net_dev(&text);
    }
    sample
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabels {
    /// The container's name, as cAdvisor labels it.
    name: String,
    app: String,
    service: String,
}

type FloatCounter = Counter<f64, AtomicU64>;

/// Every watched container's resources as Prometheus sees them, and the last two samples.
#[derive(Default)]
pub struct ContainerMetrics {
    cpu: Family<ContainerLabels, FloatCounter>,
    memory: Family<ContainerLabels, Gauge>,
    memory_limit: Family<ContainerLabels, Gauge>,
    rx: Family<ContainerLabels, FloatCounter>,
    tx: Family<ContainerLabels, FloatCounter>,
    reads: Family<ContainerLabels, FloatCounter>,
    writes: Family<ContainerLabels, FloatCounter>,
    ooms: Family<ContainerLabels, FloatCounter>,
    restarts: Family<ContainerLabels, FloatCounter>,
    /// By container id: the previous and the last sample, with their times (Unix ms).
    samples: Mutex<HashMap<String, Samples>>,
}

/// The last two samples of a container.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub previous: Option<(i64, ContainerSample)>,
    pub last: Option<(i64, ContainerSample)>,
}

impl ContainerMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "container_cpu_usage_seconds",
            "Cumulative CPU time consumed by the container in seconds",
            self.cpu.clone(),
        );
        registry.register(
            "container_memory_working_set_bytes",
            "Memory in use by the container less its inactive page cache",
            self.memory.clone(),
        );
        registry.register(
            "container_spec_memory_limit_bytes",
            "The container's memory limit",
            self.memory_limit.clone(),
        );
        registry.register(
            "container_network_receive_bytes",
            "Cumulative bytes received by the container",
            self.rx.clone(),
        );
        registry.register(
            "container_network_transmit_bytes",
            "Cumulative bytes sent by the container",
            self.tx.clone(),
        );
        registry.register(
            "container_fs_reads_bytes",
            "Cumulative bytes the container read from block devices",
            self.reads.clone(),
        );
        registry.register(
            "container_fs_writes_bytes",
            "Cumulative bytes the container wrote to block devices",
            self.writes.clone(),
        );
        registry.register(
            "container_oom_events",
            "Processes of the container the kernel killed for exceeding its memory limit",
            self.ooms.clone(),
        );
        registry.register(
            "berth_container_restarts",
            "Times Docker restarted the container after it stopped",
            self.restarts.clone(),
        );
    }

    /// Puts a round of samples in (by container id, at `now` Unix ms); containers not in it
    /// are forgotten, their series removed.
    pub fn record(&self, round: &[(String, ContainerSample)], now: i64) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let keep: std::collections::HashSet<&String> = round.iter().map(|(id, _)| id).collect();
        let gone: Vec<String> = samples
            .keys()
            .filter(|id| !keep.contains(id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(Samples {
                last: Some((_, sample)),
                ..
            }) = samples.remove(&id)
            {
                let labels = labels_of(&sample);
                for family in [
                    &self.cpu,
                    &self.rx,
                    &self.tx,
                    &self.reads,
                    &self.writes,
                    &self.ooms,
                    &self.restarts,
                ] {
                    family.remove(&labels);
                }
                self.memory.remove(&labels);
                self.memory_limit.remove(&labels);
            }
        }
        for (id, sample) in round {
            let entry = samples.entry(id.clone()).or_default();
            let before = entry
                .last
                .as_ref()
                .map(|(_, s)| s.clone())
                .unwrap_or_default();
            let labels = labels_of(sample);
            // Counters only grow: each round adds what passed since the last.
            let grow = |family: &Family<ContainerLabels, FloatCounter>, now: f64, then: f64| {
                family.get_or_create(&labels).inc_by((now - then).max(0.0));
            };
            grow(&self.cpu, sample.cpu_seconds, before.cpu_seconds);
            grow(&self.rx, sample.rx_bytes as f64, before.rx_bytes as f64);
            grow(&self.tx, sample.tx_bytes as f64, before.tx_bytes as f64);
            grow(
                &self.reads,
                sample.read_bytes as f64,
                before.read_bytes as f64,
            );
            grow(
                &self.writes,
                sample.write_bytes as f64,
                before.write_bytes as f64,
            );
            grow(
                &self.ooms,
                sample.oom_kills.unwrap_or(0) as f64,
                before.oom_kills.unwrap_or(0) as f64,
            );
            grow(
                &self.restarts,
                sample.restarts as f64,
                before.restarts as f64,
            );
            let bytes = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
            self.memory
                .get_or_create(&labels)
                .set(bytes(sample.memory_bytes));
            if let Some(limit) = sample.memory_limit {
                self.memory_limit.get_or_create(&labels).set(bytes(limit));
            }
            entry.previous = entry.last.take();
            entry.last = Some((now, sample.clone()));
        }
    }

    /// The last two samples of every container.
    pub fn samples(&self) -> HashMap<String, Samples> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn labels_of(sample: &ContainerSample) -> ContainerLabels {
    ContainerLabels {
        name: sample.container.clone(),
        app: sample.app.clone(),
        service: sample.service.clone(),
    }
}

/// How often containers are sampled.
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// The container sampling worker: every [`SAMPLE_EVERY`], the containers the health checks
/// watch (from the engine's health board), each one's main process asked of Docker (for its
/// network namespace).
pub async fn sampler(
    engine: std::sync::Arc<berth_engine::Engine>,
    metrics: std::sync::Arc<ContainerMetrics>,
    report: berth_workers::Reporter,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let watched = engine.health_board().all();
        let mut round = Vec::new();
        for (id, health) in &watched {
            // Asked each round: a container Docker restarted has a new main process.
            let info = engine.runtime().inspect_container(id).await.ok().flatten();
            let pid = info.as_ref().and_then(|info| info.pid);
            let restarts = info.map_or(0, |info| u64::try_from(info.restart_count).unwrap_or(0));
            let cpu_limit = health.cpu_limit;
            let root = Path::new("/sys/fs/cgroup");
            let Some(files) = cgroup_of(root, id) else {
                continue;
            };
            let mut sample = tokio::task::spawn_blocking(move || sample_container(&files, pid))
                .await
                .unwrap_or_default();
            sample.app = health.app.clone();
            sample.service = health.service.clone();
            sample.container = health.container.clone();
            sample.cpu_limit = cpu_limit;
            sample.restarts = restarts;
            round.push((id.clone(), sample));
        }
        metrics.record(&round, berth_state::now_ms());
        report.idle(
            Some(berth_state::now_ms() + SAMPLE_EVERY.as_millis() as i64),
            Some(format!(
                "{} sampled",
                berth_core::progress::counted(round.len(), "container")
            )),
        );
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_and_proc_files_are_read_in_bytes_and_seconds() {
        assert_eq!(
            parse_flat_keyed("usage_usec 2500000\nuser_usec 1\nnr_periods 0\n")["usage_usec"],
            2_500_000
        );
        assert_eq!(
            parse_io_stat(
                "8:0 rbytes=100 wbytes=20 rios=1 wios=1\n259:0 rbytes=5 wbytes=1 rios=0\n"
            ),
            (105, 21)
        );
        assert_eq!(
            parse_blkio("8:0 Read 100\n8:0 Write 20\n8:0 Sync 120\n8:0 Total 120\nTotal 120\n"),
            (100, 20)
        );
        let net = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     500       5    0    0    0     0          0         0      500       5    0    0    0     0       0          0\n  eth0:    1000      10    0    0    0     0          0         0     2000      20    0    0    0     0       0          0\n";
        assert_eq!(
            parse_net_dev(net),
            (1000, 2000),
            "loopback is not the network"
        );
    }

    #[test]
    fn a_v2_and_a_v1_cgroup_are_found_and_read() {
        let root = tempfile::tempdir().unwrap();
        let v2 = root.path().join("system.slice/docker-abc.scope");
        std::fs::create_dir_all(&v2).unwrap();
        for (file, text) in [
            ("cgroup.controllers", "cpu memory io\n"),
            ("cpu.stat", "usage_usec 1500000\n"),
            ("memory.current", "10485760\n"),
            ("memory.stat", "anon 1\ninactive_file 2097152\n"),
            ("memory.max", "33554432\n"),
            ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"),
            ("io.stat", "8:0 rbytes=4096 wbytes=8192\n"),
        ] {
            std::fs::write(v2.join(file), text).unwrap();
        }
        let files = cgroup_of(root.path(), "abc").unwrap();
        assert_eq!(files, CgroupFiles::Unified(v2.clone()));
        let sample = sample_container(&files, None);
        assert_eq!(sample.cpu_seconds, 1.5);
        assert_eq!(sample.memory_bytes, 8 << 20, "less the inactive page cache");
        assert_eq!(sample.memory_limit, Some(32 << 20));
        assert_eq!((sample.read_bytes, sample.write_bytes), (4096, 8192));
        assert_eq!(sample.oom_kills, Some(1));
        std::fs::write(v2.join("memory.max"), "max\n").unwrap();
        assert_eq!(sample_container(&files, None).memory_limit, None);

        let v1 = tempfile::tempdir().unwrap();
        for controller in ["memory", "cpuacct", "blkio"] {
            std::fs::create_dir_all(v1.path().join(controller).join("docker/def")).unwrap();
        }
        let at = |c: &str, f: &str| v1.path().join(c).join("docker/def").join(f);
        std::fs::write(at("cpuacct", "cpuacct.usage"), "2000000000\n").unwrap();
        std::fs::write(at("memory", "memory.usage_in_bytes"), "5000\n").unwrap();
        std::fs::write(at("memory", "memory.stat"), "total_inactive_file 1000\n").unwrap();
        std::fs::write(
            at("memory", "memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        std::fs::write(
            at("memory", "memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        std::fs::write(
            at("blkio", "blkio.throttle.io_service_bytes"),
            "8:0 Read 7\n8:0 Write 9\n",
        )
        .unwrap();
        let files = cgroup_of(v1.path(), "def").unwrap();
        let sample = sample_container(&files, None);
        assert_eq!(sample.cpu_seconds, 2.0);
        assert_eq!(sample.memory_bytes, 4000);
        assert_eq!(sample.memory_limit, None, "v1's huge number means no limit");
        assert_eq!(
            (sample.read_bytes, sample.write_bytes, sample.oom_kills),
            (7, 9, Some(2))
        );
        assert!(cgroup_of(v1.path(), "nope").is_none());
    }

    #[test]
    fn counters_grow_by_what_passed_and_gone_containers_leave_the_scrape() {
        let metrics = ContainerMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let sample = |cpu: f64| ContainerSample {
            app: "shop".into(),
            service: "web".into(),
            container: "shop-web-1".into(),
            cpu_seconds: cpu,
            memory_bytes: 1024,
            ..ContainerSample::default()
        };
        metrics.record(&[("c1".into(), sample(2.0))], 0);
        metrics.record(&[("c1".into(), sample(3.5))], 15_000);
        metrics.record(&[("c1".into(), sample(3.5))], 30_000);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "container_cpu_usage_seconds_total{name=\"shop-web-1\",app=\"shop\",service=\"web\"} 3.5"
            ),
            "{text}"
        );
        assert!(text.contains("container_memory_working_set_bytes{name=\"shop-web-1\",app=\"shop\",service=\"web\"} 1024"), "{text}");
        let samples = metrics.samples();
        assert_eq!(samples["c1"].previous.as_ref().unwrap().0, 15_000);
        metrics.record(&[], 45_000);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains("shop-web-1"), "{text}");
        assert!(metrics.samples().is_empty());
    }
}
