//! berth's proxy on its own for `scripts/bench-proxy`: the same `Proxy` the agent runs, with
//! one catch-all route to an upstream, an access log, and optionally TLS.
//!
//! Usage: bench_proxy LISTEN UPSTREAM ACCESS_LOG [CERT_PEM KEY_PEM]
//! Runs one runtime worker thread (pin it to a core with taskset).

use berth_proxy::{AccessLog, Proxy, ProxyConfig, RouteSettings, RouteSpec, Scheme, Upstream};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream, access_log, rest @ ..] = args.as_slice() else {
        return Err("usage: bench_proxy LISTEN UPSTREAM ACCESS_LOG [CERT_PEM KEY_PEM]".into());
    };
    let scheme = match rest {
        [cert, key] => {
            let store = berth_tls::CertStore::new();
            let loaded = berth_tls::load_pem(&std::fs::read(cert)?, &std::fs::read(key)?, cert)?;
            store.install(&loaded.names, loaded.key.clone());
            Scheme::Https(berth_tls::server_config(store)?)
        }
        _ => Scheme::Http,
    };
    // The agent's way: one event loop per thread on a shared port (one thread here, for a
    // proxy pinned to one core).
    let threads = std::env::var("THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    let proxy = Proxy::new(ProxyConfig::default());
    if access_log != "off" {
        proxy.set_access_log(AccessLog::open(
            std::path::Path::new(access_log),
            1 << 30,
            1,
        )?);
    }
    proxy.set_app_routes(
        "bench",
        vec![RouteSpec {
            app: "bench".into(),
            service: "web".into(),
            release: 1,
            domains: vec![],
            path: "/".into(),
            upstreams: vec![Upstream::new(upstream.parse()?, "upstream")],
            settings: RouteSettings::default(),
        }],
    );
    let (_stop, stopping) = tokio::sync::watch::channel(false);
    let workers = proxy.serve_threads(
        listen.parse()?,
        scheme,
        threads,
        stopping,
        std::time::Duration::from_secs(1),
    )?;
    workers.join();
    Ok(())
}
