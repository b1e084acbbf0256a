//! An open-loop load generator for `scripts/bench-proxy`: sends requests at a fixed rate over
//! keep-alive connections and measures each latency from when the request was *scheduled*,
//! so a slow server cannot hide its queueing (coordinated omission, as wrk2 corrects it).
//!
//! Usage: bench_load URL RATE SECONDS CONNECTIONS
//! Prints: `achieved=… p50_ms=… p99_ms=… p999_ms=… max_ms=… errors=…`

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Benchmarks only: accept whatever certificate the server presents.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(
    url: &http::Uri,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<Sender, Box<dyn std::error::Error + Send + Sync>> {
    let host = url.host().unwrap_or("127.0.0.1");
    let port = url
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    let sender = match tls {
        Some(connector) => {
            let name = rustls_pki_types::ServerName::try_from(host.to_owned())?;
            let stream = connector.connect(name, tcp).await?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            sender
        }
        None => {
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(connection);
            sender
        }
    };
    Ok(sender)
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, rate, seconds, connections] = args.as_slice() else {
        return Err("usage: bench_load URL RATE SECONDS CONNECTIONS".into());
    };
    let url: http::Uri = url.parse()?;
    let rate: f64 = rate.parse()?;
    let seconds: f64 = seconds.parse()?;
    let connections: usize = connections.parse()?;
    let tls = (url.scheme_str() == Some("https")).then(|| {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.dangerous()
                    .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
                    .with_no_client_auth()
            });
        config.map(|c| tokio_rustls::TlsConnector::from(Arc::new(c)))
    });
    let tls = match tls {
        Some(Ok(connector)) => Some(connector),
        Some(Err(e)) => return Err(e.into()),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let interval = Duration::from_secs_f64(connections as f64 / rate);
        let start = tokio::time::Instant::now() + Duration::from_millis(200);
        let end = start + Duration::from_secs_f64(seconds);
        let mut tasks = Vec::new();
        for index in 0..connections {
            let url = url.clone();
            let tls = tls.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies: Vec<u32> = Vec::new();
                let (mut errors, mut in_window) = (0u64, 0u64);
                let mut sender = connect(&url, tls.as_ref()).await.ok();
                let mut scheduled = start + interval.mul_f64(index as f64 / connections as f64);
                while scheduled < end {
                    tokio::time::sleep_until(scheduled).await;
                    // A server may close a keep-alive connection after N requests: reconnect.
                    if sender.as_ref().is_some_and(|s| s.is_closed()) {
                        sender = connect(&url, tls.as_ref()).await.ok();
                    }
                    let request = http::Request::get(url.path())
                        .header("host", url.host().unwrap_or("localhost"))
                        .body(Empty::new());
                    let ok = match (&mut sender, request) {
                        (Some(s), Ok(request)) => match s.send_request(request).await {
                            Ok(response) => {
                                response.status().is_success()
                                    && response.into_body().collect().await.is_ok()
                            }
                            Err(_) => false,
                        },
                        _ => false,
                    };
                    if ok {
                        if tokio::time::Instant::now() <= end {
                            in_window += 1;
                        }
                        let latency =
                            Instant::now().saturating_duration_since(scheduled.into_std());
                        latencies.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
                    } else {
                        errors += 1;
                        sender = connect(&url, tls.as_ref()).await.ok();
                    }
                    scheduled += interval;
                }
                (latencies, errors, in_window)
            }));
        }
        let mut all = Vec::new();
        let (mut errors, mut completed) = (0, 0);
        for task in tasks {
            if let Ok((latencies, e, in_window)) = task.await {
                completed += in_window;
                all.extend(latencies);
                errors += e;
            }
        }
        all.sort_unstable();
        let quantile = |q: f64| {
            all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0) as f64
                / 1000.0
        };
        println!(
            "achieved={:.0} p50_ms={:.3} p99_ms={:.3} p999_ms={:.3} max_ms={:.3} errors={errors}",
            // Only responses that arrived within the window count as achieved throughput.
            completed as f64 / seconds,
            quantile(0.50),
            quantile(0.99),
            quantile(0.999),
            all.last().copied().unwrap_or(0) as f64 / 1000.0
        );
    });
    Ok(())
}
