//! Malformed request heads, generated at random from the shapes attacks take, against the
//! real proxy and an upstream that counts what reaches it: none gets a 2xx, none reaches the
//! upstream, and the proxy keeps serving. Runs for `BERTH_FUZZ_SECONDS` (default 3);
//! `BERTH_FUZZ_SEED` replays one seed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

use berth_proxy::{Proxy, ProxyConfig, RouteSettings, RouteSpec, Scheme, Upstream};
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An upstream that answers 200 to anything and counts it.
async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    (addr, hits)
}

/// A well-formed request, as lines; mutations break it.
fn valid_request(rng: &mut impl Rng) -> Vec<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = vec![
        b"GET /path?q=1 HTTP/1.1".to_vec(),
        b"host: app.test".to_vec(),
    ];
    for _ in 0..rng.random_range(0..4) {
        let name = ["accept", "user-agent", "x-request-id", "cookie"][rng.random_range(0..4)];
        lines.push(format!("{name}: value-{}", rng.random::<u16>()).into_bytes());
    }
    lines
}

/// Each mutation makes a request that no server may accept.
fn malform(rng: &mut impl Rng, lines: &mut Vec<Vec<u8>>) -> &'static str {
    let last = lines.len();
    match rng.random_range(0..16) {
        0 => {
            lines[0] = b"G\x00T / HTTP/1.1".to_vec();
            "a NUL in the method"
        }
        1 => {
            lines[0] = [
                "GET / HTTP/1.2",
                "GET / HTTP/9.9",
                "GET / HTTP/1.1x",
                "GET / HTTP/1",
            ][rng.random_range(0..4)]
            .as_bytes()
            .to_vec();
            "an unknown version"
        }
        2 => {
            lines[0] = b"GET  / HTTP/1.1".to_vec();
            "two spaces in the request line"
        }
        3 => {
            lines.push(
                [
                    "ho st: x",
                    "host : x",
                    "\x01x: y",
                    ": empty-name",
                    "x-\x7f: y",
                ][rng.random_range(0..5)]
                .as_bytes()
                .to_vec(),
            );
            "a malformed header name"
        }
        4 => {
            lines.push(b"x-value: a\x00b".to_vec());
            "a NUL in a header value"
        }
        5 => {
            lines.push(b"x-value: a\rb".to_vec());
            "a bare CR in a header value"
        }
        6 => {
            lines[0] = b"POST / HTTP/1.1".to_vec();
            lines.push(b"content-length: 4".to_vec());
            lines.push(b"content-length: 5".to_vec());
            "conflicting Content-Lengths"
        }
        7 => {
            lines[0] = b"POST / HTTP/1.1".to_vec();
            lines.push(
                [
                    "content-length: 4a",
                    "content-length: -1",
                    "content-length: +4",
                    "content-length: 0x10",
                ][rng.random_range(0..4)]
                .as_bytes()
                .to_vec(),
            );
            "a Content-Length that is not a number"
        }
        8 => {
            lines[0] = b"POST / HTTP/1.1".to_vec();
            lines.push(b"content-length: 4".to_vec());
            lines.push(b"transfer-encoding: chunked".to_vec());
            "Content-Length with Transfer-Encoding"
        }
        9 => {
            lines[0] = b"POST / HTTP/1.1".to_vec();
            lines.push(
                [
                    "transfer-encoding: gzip",
                    "transfer-encoding: chunked, gzip",
                    "transfer-encoding: chunked\x0b",
                ][rng.random_range(0..3)]
                .as_bytes()
                .to_vec(),
            );
            "a Transfer-Encoding other than chunked"
        }
        10 => {
            lines.remove(1);
            "no Host"
        }
        11 => {
            lines.push(b"host: other.test".to_vec());
            "two Hosts"
        }
        12 => {
            lines[1] = [
                "host: a\"b",
                "host: a b",
                "host: a/b",
                "host: a@b",
                "host: [::1",
                "host: x:99999999",
            ][rng.random_range(0..6)]
            .as_bytes()
            .to_vec();
            "a malformed Host"
        }
        13 => {
            lines.insert(last.min(2), b" folded: continuation".to_vec());
            "an obsolete line fold"
        }
        14 => {
            lines[0] = b"CONNECT internal.test:22 HTTP/1.1".to_vec();
            "CONNECT"
        }
        _ => {
            lines[0] = [
                "GET http://a b/ HTTP/1.1",
                "GET /\x00 HTTP/1.1",
                "GET HTTP/1.1",
            ][rng.random_range(0..3)]
            .as_bytes()
            .to_vec();
            "a malformed target"
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_malformed_heads_never_get_a_2xx_or_reach_the_upstream() {
    let seconds: f64 = std::env::var("BERTH_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let seed: u64 = std::env::var("BERTH_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (upstream, hits) = counting_upstream().await;
    let proxy = Proxy::new(ProxyConfig::default());
    proxy.set_app_routes(
        "app",
        vec![RouteSpec {
            app: "app".into(),
            service: "web".into(),
            release: 1,
            domains: vec![],
            path: "/".into(),
            upstreams: vec![Upstream::new(upstream, "web")],
            settings: RouteSettings::default(),
        }],
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(proxy.clone().serve(
        listener,
        Scheme::Http,
        std::future::pending(),
        Duration::from_secs(1),
    ));

    let started = Instant::now();
    let mut cases = 0;
    while started.elapsed().as_secs_f64() < seconds {
        let mut lines = valid_request(&mut rng);
        // One mutation a case: two could cancel out (no Host, then a second Host).
        let broken = malform(&mut rng, &mut lines);
        let mut request = lines.join(&b"\r\n"[..]);
        request.extend_from_slice(b"\r\n\r\n");
        if rng.random_bool(0.3) {
            request.extend_from_slice(b"abcd0\r\n\r\n");
        }
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(&request).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer)).await;
        let status = String::from_utf8_lossy(&answer)
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok());
        assert!(
            status.is_none_or(|s| s >= 400),
            "seed {seed}: {broken} got {status:?} for {:?}",
            String::from_utf8_lossy(&request)
        );
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "seed {seed}: {broken} reached the upstream: {:?}",
            String::from_utf8_lossy(&request)
        );
        cases += 1;
    }
    assert!(cases > 20, "seed {seed}: only {cases} cases ran");
    // And the proxy still serves.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: app.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
}
