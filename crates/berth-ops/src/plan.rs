//! `berth plan`: whether what a manifest asks for fits on the server, now and during a
//! deploy, when the old release's replicas still run beside the new one's.
//!
//! Memory is what decides: a container is counted at its memory limit when it has one (what
//! it may use), else at what it uses now; the system's own use is what the host uses beyond
//! every container. CPU is shared, so more `cpus` than the server has is a warning, never a
//! refusal. GPUs must exist where a service asks for them. The numbers come from the agent's
//! `berth top` sample; this module only decides.

use berth_api::{ContainerTop, TopAnswer};
use berth_manifest::{Manifest, Service};
use serde::Serialize;

/// A deploy is refused (unless forced) when its peak goes past the memory; it is warned about
/// past this share of it.
const TIGHT_SHARE: f64 = 0.9;
/// Below this much free space on Docker's file system a deploy (images, layers) is warned
/// about, and refused below a quarter of it.
const DISK_WARN_BYTES: u64 = 2 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Fits, during a deploy too, with room to spare.
    Fits,
    /// Fits, but a deploy takes the server past 90 % of its memory.
    Tight,
    /// Fits once deployed, but not while the old release runs beside the new one.
    FitsOnlyOutsideDeploy,
    /// Does not fit even with nothing else of the app running.
    DoesNotFit,
}

impl Verdict {
    /// Whether `berth deploy` goes ahead without `--force`.
    pub fn deploy_allowed(self) -> bool {
        matches!(self, Verdict::Fits | Verdict::Tight)
    }
}

/// One service's or accessory's ask.
#[derive(Debug, Clone, Serialize)]
pub struct Ask {
    pub name: String,
    pub accessory: bool,
    pub replicas: u32,
    /// Per replica: its limit, else what its containers use now, else nothing known.
    pub memory_each: Option<u64>,
    /// Where `memory_each` came from: `limit`, `usage now` or `unknown`.
    pub memory_from: &'static str,
    pub cpus_each: Option<f64>,
    pub gpus: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub app: String,
    pub verdict: Verdict,
    pub memory_total: u64,
    /// The host's use outside every container (the system, the agent, other programs).
    pub system: u64,
    /// Other apps' containers, counted at their limits or use.
    pub other_apps: u64,
    /// This app with the manifest deployed and nothing of the old release left.
    pub steady: u64,
    /// The highest point of a deploy: the old release's services beside the new ones.
    pub peak: u64,
    /// This app's containers running now (the old release during a deploy).
    pub running_now: u64,
    pub cpus_total: usize,
    pub cpus_asked: f64,
    /// Free space on Docker's file system, when the agent measured it.
    pub docker_disk_free: Option<u64>,
    pub asks: Vec<Ask>,
    /// Why the verdict, and what else deserves attention, one sentence each.
    pub reasons: Vec<String>,
}

fn counted(container: &ContainerTop) -> u64 {
    container
        .memory_limit_bytes
        .unwrap_or(container.memory_bytes)
}

pub fn plan(manifest: &Manifest, top: &TopAnswer) -> Plan {
    let app = manifest.app.clone();
    let all_containers: u64 = top.containers.iter().map(|c| c.memory_bytes).sum();
    let system = top.host.memory_used_bytes.saturating_sub(all_containers);
    let other_apps: u64 = top
        .containers
        .iter()
        .filter(|c| c.app != app)
        .map(counted)
        .sum();
    let mine: Vec<&ContainerTop> = top.containers.iter().filter(|c| c.app == app).collect();
    let running_services: u64 = mine
        .iter()
        .filter(|c| !manifest.accessories.contains_key(&c.service))
        .map(|c| counted(c))
        .sum();
    let running_now: u64 = mine.iter().map(|c| counted(c)).sum();

    let mut asks = Vec::new();
    let mut reasons = Vec::new();
    let ask = |name: &str, service: &Service, accessory: bool| {
        let usage: Vec<u64> = mine
            .iter()
            .filter(|c| c.service == name)
            .map(|c| c.memory_bytes)
            .collect();
        let (memory_each, memory_from) = match service.memory {
            Some(limit) => (Some(limit), "limit"),
            None if !usage.is_empty() => (usage.iter().max().copied(), "usage now"),
            None => (None, "unknown"),
        };
        Ask {
            name: name.to_owned(),
            accessory,
            replicas: if accessory { 1 } else { service.replicas },
            memory_each,
            memory_from,
            cpus_each: service.cpus,
            gpus: service.gpus.as_ref().map(|g| match g {
                berth_manifest::Gpus::All => "all".to_owned(),
                berth_manifest::Gpus::Count(n) => n.to_string(),
            }),
        }
    };
    for (name, service) in &manifest.services {
        asks.push(ask(name, service, false));
    }
    for (name, service) in &manifest.accessories {
        asks.push(ask(name, service, true));
    }
    let total_of = |accessory: bool| -> u64 {
        asks.iter()
            .filter(|a| a.accessory == accessory)
            .map(|a| a.memory_each.unwrap_or(0) * u64::from(a.replicas))
            .sum()
    };
    let new_services = total_of(false);
    let accessories = total_of(true);
    let steady = system + other_apps + accessories + new_services;
    let peak = steady + running_services;
    let total = top.host.memory_total_bytes;

    let unknown: Vec<&str> = asks
        .iter()
        .filter(|a| a.memory_each.is_none())
        .map(|a| a.name.as_str())
        .collect();
    if !unknown.is_empty() {
        reasons.push(format!(
            "{} {} no memory limit and no running container to measure: counted as nothing; set `memory` to plan with it",
            unknown.join(", "),
            if unknown.len() == 1 { "has" } else { "have" }
        ));
    }
    let gib = |b: u64| format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30));
    let mut verdict = if steady > total {
        reasons.insert(
            0,
            format!(
                "deployed, the server would need {} of memory and has {}",
                gib(steady),
                gib(total)
            ),
        );
        Verdict::DoesNotFit
    } else if peak > total {
        reasons.insert(
            0,
            format!(
                "during a deploy the old release ({}) runs beside the new one: {} of {} memory; lower the limits or replicas, or deploy with --force and accept the risk of the kernel's OOM killer",
                gib(running_services),
                gib(peak),
                gib(total)
            ),
        );
        Verdict::FitsOnlyOutsideDeploy
    } else if (peak as f64) > TIGHT_SHARE * total as f64 {
        reasons.insert(
            0,
            format!(
                "a deploy takes memory to {} of {} ({:.0} %)",
                gib(peak),
                gib(total),
                100.0 * peak as f64 / total as f64
            ),
        );
        Verdict::Tight
    } else {
        Verdict::Fits
    };

    let cpus_asked: f64 = asks
        .iter()
        .filter_map(|a| a.cpus_each.map(|c| c * f64::from(a.replicas)))
        .fold(0.0, |sum, c| sum + c);
    if cpus_asked > top.host.cpus as f64 {
        reasons.push(format!(
            "the services may use {cpus_asked} CPUs and the server has {}: they will share (CPU is not refused, only slowed)",
            top.host.cpus
        ));
    }

    let gpu_asks: Vec<&Ask> = asks.iter().filter(|a| a.gpus.is_some()).collect();
    if !gpu_asks.is_empty() {
        let names: Vec<&str> = gpu_asks.iter().map(|a| a.name.as_str()).collect();
        let gpus = &top.host.gpus;
        match gpus.is_empty() {
            true => {
                reasons.insert(0, format!("{} {} GPUs and the server has none (no nvidia-smi): the containers would not start", names.join(", "), if names.len() == 1 { "asks for" } else { "ask for" }));
                verdict = Verdict::DoesNotFit;
            }
            false => {
                let wanted: usize = gpu_asks
                    .iter()
                    .filter_map(|a| a.gpus.as_deref()?.parse::<usize>().ok())
                    .max()
                    .unwrap_or(0);
                if wanted > gpus.len() {
                    reasons.insert(
                        0,
                        format!(
                            "{} asks for {wanted} GPUs and the server has {}",
                            names.join(", "),
                            gpus.len()
                        ),
                    );
                    verdict = Verdict::DoesNotFit;
                } else {
                    let used: u64 = gpus.iter().map(|g| g.memory_used_bytes).sum();
                    let total: u64 = gpus.iter().map(|g| g.memory_total_bytes).sum();
                    reasons.push(format!(
                        "GPU memory: {} used of {} on {} GPU{}",
                        gib(used),
                        gib(total),
                        gpus.len(),
                        if gpus.len() == 1 { "" } else { "s" }
                    ));
                }
            }
        }
    }

    if let Some(docker) = top.host.filesystems.iter().find(|f| f.purpose == "docker") {
        if docker.avail_bytes < DISK_WARN_BYTES / 4 {
            reasons.insert(
                0,
                format!(
                    "Docker's file system ({}) has {} free: a new release's images may not fit",
                    docker.mountpoint,
                    gib(docker.avail_bytes)
                ),
            );
            verdict = Verdict::DoesNotFit;
        } else if docker.avail_bytes < DISK_WARN_BYTES {
            reasons.push(format!(
                "Docker's file system ({}) has only {} free",
                docker.mountpoint,
                gib(docker.avail_bytes)
            ));
            if verdict == Verdict::Fits {
                verdict = Verdict::Tight;
            }
        }
    }

    Plan {
        app,
        verdict,
        memory_total: total,
        system,
        other_apps,
        steady,
        peak,
        running_now,
        cpus_total: top.host.cpus,
        cpus_asked,
        docker_disk_free: top
            .host
            .filesystems
            .iter()
            .find(|f| f.purpose == "docker")
            .map(|f| f.avail_bytes),
        asks,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::{FilesystemTop, GpuTop, HostTop};
    use std::path::Path;

    const GIB: u64 = 1 << 30;

    fn manifest(text: &str) -> Manifest {
        let source = berth_manifest::ManifestSource {
            file: "berth.toml",
            text,
            base_dir: Path::new("/tmp"),
        };
        berth_manifest::load(source, None).unwrap()
    }

    fn container(app: &str, service: &str, used: u64, limit: Option<u64>) -> ContainerTop {
        ContainerTop {
            app: app.into(),
            service: service.into(),
            container: format!("{app}-{service}"),
            cpu_percent: None,
            cpu_limit_percent: None,
            memory_bytes: used,
            memory_limit_bytes: limit,
            memory_limit_percent: None,
            net_rx_rate: None,
            net_tx_rate: None,
            disk_read_rate: None,
            disk_write_rate: None,
            oom_kills: None,
            restarts: 0,
        }
    }

    /// A 16 GiB server using 2 GiB outside containers, with a 1 GiB app of someone else's.
    fn server(containers: Vec<ContainerTop>) -> TopAnswer {
        let in_containers: u64 = containers.iter().map(|c| c.memory_bytes).sum();
        TopAnswer {
            sampled_at: Some(0),
            host: HostTop {
                cpus: 4,
                memory_total_bytes: 16 * GIB,
                memory_used_bytes: 2 * GIB + in_containers,
                filesystems: vec![FilesystemTop {
                    purpose: "docker".into(),
                    mountpoint: "/var/lib/docker".into(),
                    used_percent: 50.0,
                    avail_bytes: 100 * GIB,
                }],
                ..HostTop::default()
            },
            containers,
        }
    }

    const APP: &str = "app = \"memo\"\n[services.web]\nimage = \"memo:1\"\nport = 8000\nreplicas = 2\nmemory = \"MEM\"\n[accessories.ollama]\nimage = \"ollama/ollama\"\nmemory = \"4g\"\n";

    fn app(memory: &str) -> Manifest {
        manifest(&APP.replace("MEM", memory))
    }

    #[test]
    fn a_small_app_fits_during_a_deploy_too() {
        let top = server(vec![container("other", "web", GIB / 2, Some(GIB))]);
        let plan = plan(&app("1g"), &top);
        assert_eq!(plan.verdict, Verdict::Fits, "{plan:#?}");
        assert_eq!(plan.system, 2 * GIB);
        assert_eq!(plan.other_apps, GIB);
        // 2 GiB system + 1 GiB other app + 4 GiB ollama + 2 × 1 GiB web
        assert_eq!(plan.steady, 9 * GIB);
        assert_eq!(plan.peak, plan.steady, "nothing of the app runs yet");
    }

    #[test]
    fn a_redeploy_counts_the_old_release_beside_the_new() {
        let running = vec![
            container("memo", "web", GIB, Some(4 * GIB)),
            container("memo", "web", GIB, Some(4 * GIB)),
            container("memo", "ollama", 3 * GIB, Some(4 * GIB)),
        ];
        let plan = plan(&app("4g"), &server(running));
        // steady: 2 system + 4 ollama + 8 web = 14 GiB of 16; peak adds the old web's 8.
        assert_eq!(plan.steady, 14 * GIB);
        assert_eq!(plan.peak, 22 * GIB);
        assert_eq!(plan.verdict, Verdict::FitsOnlyOutsideDeploy, "{plan:#?}");
        assert!(!plan.verdict.deploy_allowed());
        assert!(
            plan.reasons[0].contains("old release"),
            "{:?}",
            plan.reasons
        );
    }

    #[test]
    fn an_app_too_big_for_the_server_does_not_fit() {
        let plan = plan(&app("8g"), &server(Vec::new()));
        assert_eq!(plan.verdict, Verdict::DoesNotFit);
        assert!(
            plan.reasons[0].contains("would need 22.0 GiB"),
            "{:?}",
            plan.reasons
        );
    }

    #[test]
    fn close_to_the_edge_is_tight_and_still_deploys() {
        let plan = plan(&app("4500m"), &server(Vec::new()));
        // 2 + 4 + 2 × 4.39 = 14.8 GiB of 16: over 90 %.
        assert_eq!(plan.verdict, Verdict::Tight, "{plan:#?}");
        assert!(plan.verdict.deploy_allowed());
    }

    #[test]
    fn unknown_memory_is_said_and_counted_from_what_runs() {
        let text = "app = \"memo\"\n[services.web]\nimage = \"memo:1\"\nport = 8000\n";
        let fresh = plan(&manifest(text), &server(Vec::new()));
        assert!(
            fresh.reasons.iter().any(|r| r.contains("no memory limit")),
            "{:?}",
            fresh.reasons
        );
        let running = plan(
            &manifest(text),
            &server(vec![container("memo", "web", 300 << 20, None)]),
        );
        assert_eq!(running.asks[0].memory_each, Some(300 << 20));
        assert_eq!(running.asks[0].memory_from, "usage now");
    }

    #[test]
    fn gpus_must_exist() {
        let text = "app = \"llm\"\n[accessories.ollama]\nimage = \"ollama/ollama\"\ngpus = 2\n";
        let none = plan(&manifest(text), &server(Vec::new()));
        assert_eq!(none.verdict, Verdict::DoesNotFit);
        assert!(
            none.reasons[0].contains("no nvidia-smi"),
            "{:?}",
            none.reasons
        );
        let mut top = server(Vec::new());
        top.host.gpus = vec![GpuTop {
            index: 0,
            name: "RTX".into(),
            memory_total_bytes: 24 * GIB,
            memory_used_bytes: GIB,
            utilization_percent: None,
        }];
        let one = plan(&manifest(text), &top);
        assert_eq!(one.verdict, Verdict::DoesNotFit, "two asked, one there");
        top.host.gpus.push(top.host.gpus[0].clone());
        let two = plan(&manifest(text), &top);
        assert_eq!(two.verdict, Verdict::Fits);
        assert!(
            two.reasons
                .iter()
                .any(|r| r.contains("GPU memory: 2.0 GiB used of 48.0 GiB")),
            "{:?}",
            two.reasons
        );
    }

    #[test]
    fn a_full_docker_disk_refuses() {
        let mut top = server(Vec::new());
        top.host.filesystems[0].avail_bytes = 100 << 20;
        assert_eq!(plan(&app("1g"), &top).verdict, Verdict::DoesNotFit);
        top.host.filesystems[0].avail_bytes = GIB;
        assert_eq!(plan(&app("1g"), &top).verdict, Verdict::Tight);
    }
}
