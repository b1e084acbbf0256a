//! `berth plan` and the checks every deploy runs first: whether the release fits on the
//! server (`berth_ops::plan` decides, from the agent's sample) and whether each routed domain
//! resolves to the server.

use super::{Ctx, load_manifest};
use crate::ManifestArgs;
use anyhow::anyhow;
use console::style;
use std::process::ExitCode;

/// Asks the agent for its newest sample of the server; `None` before the first one.
async fn server_sample(
    client: &crate::client::Client,
) -> anyhow::Result<Option<berth_api::TopAnswer>> {
    let top: berth_api::TopAnswer = client.get("/v1/top").await?;
    Ok((top.host.memory_total_bytes > 0).then_some(top))
}

fn gib(bytes: u64) -> String {
    if bytes < 1 << 30 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
    }
}

fn verdict_line(plan: &berth_ops::plan::Plan) -> String {
    use berth_ops::plan::Verdict;
    let (mark, text) = match plan.verdict {
        Verdict::Fits => (style("✓").green(), "fits, during a deploy too"),
        Verdict::Tight => (
            style("!").yellow(),
            "fits, with little room during a deploy",
        ),
        Verdict::FitsOnlyOutsideDeploy => (
            style("✗").red(),
            "fits once deployed, but not while the old release runs beside the new one",
        ),
        Verdict::DoesNotFit => (style("✗").red(), "does not fit on this server"),
    };
    let unknown = plan.asks.iter().filter(|a| a.memory_each.is_none()).count();
    if unknown > 0 && plan.verdict.deploy_allowed() {
        return format!(
            "{} {}: {text}, as far as berth can tell ({unknown} without a memory limit or a running container to measure)",
            style("?").yellow(),
            plan.app
        );
    }
    format!("{mark} {}: {text}", plan.app)
}

/// `berth plan`: what the manifest asks for against what the server has, and whether each
/// routed domain points at the server.
pub(crate) async fn plan(ctx: &Ctx, args: &ManifestArgs) -> anyhow::Result<ExitCode> {
    let loaded = load_manifest(args)?;
    let client = ctx.client()?;
    let Some(top) = server_sample(&client).await? else {
        return Err(anyhow!(
            "the agent has not sampled the server yet (it does every 15 s after it starts): try again in a few seconds"
        ));
    };
    let plan = berth_ops::plan::plan(&loaded.manifest, &top);
    let domains = domain_checks(&loaded.manifest, &client.target).await;
    if ctx.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "plan": plan, "domains": domains }))?
        );
    } else {
        println!("{}", verdict_line(&plan));
        println!(
            "  memory: {} used outside the app; {} with it deployed, {} at the peak of a deploy; the server has {}",
            gib(plan.system + plan.other_apps),
            gib(plan.steady),
            gib(plan.peak),
            gib(plan.memory_total)
        );
        for ask in &plan.asks {
            let memory = match ask.memory_each {
                Some(m) => format!("{} each ({})", gib(m), ask.memory_from),
                None => "memory unknown".to_owned(),
            };
            let cpus = ask
                .cpus_each
                .map(|c| format!(", {c} CPUs each"))
                .unwrap_or_default();
            let gpus = ask
                .gpus
                .as_ref()
                .map(|g| format!(", GPUs: {g}"))
                .unwrap_or_default();
            println!(
                "    {}{} × {}: {memory}{cpus}{gpus}",
                ask.name,
                if ask.accessory { " (accessory)" } else { "" },
                ask.replicas
            );
        }
        if let Some(docker) = &plan.docker_disk_free {
            println!(
                "  disk: {} free for Docker's images and volumes",
                gib(*docker)
            );
        }
        if plan.cpus_asked > 0.0 {
            println!("  CPUs: {} asked of {}", plan.cpus_asked, plan.cpus_total);
        } else {
            println!("  CPUs: no limits set; the server has {}", plan.cpus_total);
        }
        for reason in &plan.reasons {
            println!("  {} {reason}", style("→").yellow());
        }
        for check in &domains {
            let mark = if check.ok {
                style("✓").green()
            } else {
                style("!").yellow()
            };
            println!("  {mark} {}: {}", check.domain, check.says);
        }
    }
    Ok(if plan.verdict.deploy_allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Before a deploy: refuse one that cannot fit (unless forced), warn about a tight one. Says
/// nothing, and lets the deploy go, while the agent has no sample of the server yet.
pub(crate) async fn preflight(
    ctx: &Ctx,
    client: &crate::client::Client,
    manifest: &berth_manifest::Manifest,
    force: bool,
) -> anyhow::Result<()> {
    use berth_ops::plan::Verdict;
    let top = match server_sample(client).await {
        Ok(Some(top)) => top,
        Ok(None) => return Ok(()),
        Err(error) => {
            tracing::debug!(%error, "no sample of the server for the fit check");
            return Ok(());
        }
    };
    let plan = berth_ops::plan::plan(manifest, &top);
    match plan.verdict {
        Verdict::Fits => Ok(()),
        Verdict::Tight => {
            if !ctx.json {
                eprintln!("{}", verdict_line(&plan));
                for reason in &plan.reasons {
                    eprintln!("  {} {reason}", style("→").yellow());
                }
            }
            Ok(())
        }
        Verdict::FitsOnlyOutsideDeploy | Verdict::DoesNotFit if force => {
            if !ctx.json {
                eprintln!("{} (deploying anyway: --force)", verdict_line(&plan));
            }
            Ok(())
        }
        Verdict::FitsOnlyOutsideDeploy | Verdict::DoesNotFit => {
            let reason = plan.reasons.first().cloned().unwrap_or_default();
            Err(anyhow::Error::new(super::Refused {
                message: format!(
                    "{} does not fit on the server: {reason}",
                    manifest.app
                ),
                hint: "`berth plan` shows the numbers; lower `memory` or `replicas`, or pass --force to deploy anyway".into(),
            }))
        }
    }
}

/// Before a deploy to an agent that serves HTTPS: a warning for each routed domain that does
/// not resolve to the server, before the agent asks a CA for its certificate. Never refuses:
/// a CDN or a DNS change in flight is the user's call.
pub(crate) async fn dns_preflight(
    ctx: &Ctx,
    client: &crate::client::Client,
    manifest: &berth_manifest::Manifest,
) {
    if ctx.json {
        return;
    }
    let Ok(info) = client.get::<berth_api::AgentInfo>("/v1/info").await else {
        return;
    };
    if info.https.is_none() {
        return;
    }
    for check in domain_checks(manifest, &client.target).await {
        if !check.ok {
            eprintln!("{} {}: {}", style("!").yellow(), check.domain, check.says);
        }
    }
}

/// Whether a routed domain resolves to the server, the commonest cause of failed issuance.
#[derive(Debug, serde::Serialize)]
struct DomainCheck {
    domain: String,
    ok: bool,
    addresses: Vec<std::net::IpAddr>,
    says: String,
}

async fn domain_checks(
    manifest: &berth_manifest::Manifest,
    target: &crate::client::Target,
) -> Vec<DomainCheck> {
    let mut domains: Vec<String> = Vec::new();
    for service in manifest.services.values() {
        let Some(route) = &service.route else {
            continue;
        };
        if !matches!(route.tls, berth_manifest::Tls::Auto) {
            continue;
        }
        for domain in &route.domains {
            if !domain.starts_with("*.")
                && !domain.ends_with(".localhost")
                && !domains.contains(domain)
            {
                domains.push(domain.clone());
            }
        }
    }
    if domains.is_empty() {
        return Vec::new();
    }
    let server = server_addresses(target).await;
    let mut checks = Vec::new();
    for domain in domains {
        let lookup = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            tokio::net::lookup_host(format!("{domain}:443")),
        )
        .await;
        let addresses: Vec<std::net::IpAddr> = match lookup {
            Ok(Ok(found)) => {
                let mut ips: Vec<_> = found.map(|a| a.ip()).collect();
                ips.sort();
                ips.dedup();
                ips
            }
            _ => Vec::new(),
        };
        let (ok, says) = if addresses.is_empty() {
            (false, "does not resolve: add an A (and AAAA) record pointing at this server before berth asks for its certificate".to_owned())
        } else if server.is_empty() {
            (
                true,
                format!(
                    "resolves to {}; make sure that is this server",
                    join(&addresses)
                ),
            )
        } else if addresses.iter().any(|a| server.contains(a)) {
            (
                true,
                format!("resolves to this server ({})", join(&addresses)),
            )
        } else {
            (
                false,
                format!(
                    "resolves to {}, not this server ({}): the ACME challenge will fail until it points here (a CDN in front needs its own certificate setup)",
                    join(&addresses),
                    join(&server)
                ),
            )
        };
        checks.push(DomainCheck {
            domain,
            ok,
            addresses,
            says,
        });
    }
    checks
}

fn join(addresses: &[std::net::IpAddr]) -> String {
    addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The server's addresses: the remote agent's host resolved, or this machine's own.
async fn server_addresses(target: &crate::client::Target) -> Vec<std::net::IpAddr> {
    use crate::client::Target;
    let host = match target {
        Target::Tcp(address) | Target::Tls(address) => address
            .rsplit_once(':')
            .map(|(host, _)| host.trim_matches(['[', ']']).to_owned()),
        Target::Ssh { destination, .. } => Some(
            destination
                .rsplit_once('@')
                .map_or(destination.as_str(), |(_, host)| host)
                .to_owned(),
        ),
        Target::Unix(_) => None,
    };
    match host {
        Some(host) => match tokio::net::lookup_host((host.as_str(), 0)).await {
            Ok(found) => found
                .map(|a| a.ip())
                .filter(|ip| !ip.is_loopback())
                .collect(),
            Err(_) => Vec::new(),
        },
        None => local_addresses(),
    }
}

/// This machine's global addresses, from /proc (IPv4 from the routing table's local
/// entries, IPv6 from `if_inet6`).
fn local_addresses() -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    if let Ok(trie) = std::fs::read_to_string("/proc/net/fib_trie") {
        let mut last: Option<std::net::Ipv4Addr> = None;
        for line in trie.lines() {
            let line = line.trim();
            if let Some(address) = line.strip_prefix("|-- ") {
                last = address.parse().ok();
            } else if line.contains("/32 host LOCAL")
                && let Some(ip) = last
                && !ip.is_loopback()
                && !out.contains(&std::net::IpAddr::V4(ip))
            {
                out.push(std::net::IpAddr::V4(ip));
            }
        }
    }
    if let Ok(inet6) = std::fs::read_to_string("/proc/net/if_inet6") {
        for line in inet6.lines() {
            let Some(hex) = line.split_whitespace().next() else {
                continue;
            };
            if let Ok(bits) = u128::from_str_radix(hex, 16) {
                let ip = std::net::Ipv6Addr::from(bits);
                // Global unicast only: 2000::/3.
                if ip.segments()[0] & 0xe000 == 0x2000 {
                    out.push(std::net::IpAddr::V6(ip));
                }
            }
        }
    }
    out
}
