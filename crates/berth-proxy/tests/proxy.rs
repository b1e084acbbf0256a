//! The proxy against real HTTP servers and clients on loopback: routing, retries, atomic
//! switches, draining, HTTP/2, upgrades, streaming, limits and hostile input.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

use berth_proxy::{
    AccessLog, Balance, Proxy, ProxyConfig, RateLimit, RouteSettings, RouteSpec, Scheme, Upstream,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type TestBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn full(text: impl Into<Bytes>) -> TestBody {
    Full::new(text.into()).boxed()
}

/// A test upstream answering `NAME` on `/`; `/slow?ms=N` waits first; `/headers` echoes the
/// request headers; `/path` echoes the path; `/stream` sends 5 chunks 300 ms apart; `/body`
/// reads the body and answers its length; an `Upgrade: echo` request is upgraded to an echo.
async fn upstream(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    let counter = counter.clone();
                    async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let query = req.uri().query().unwrap_or("").to_owned();
                        let response = match req.uri().path() {
                            "/slow" => {
                                let ms: u64 =
                                    query.trim_start_matches("ms=").parse().unwrap_or(500);
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                                Response::new(full(name))
                            }
                            "/headers" => {
                                let mut lines: Vec<String> = req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
                                    .collect();
                                lines.sort();
                                Response::new(full(lines.join("\n")))
                            }
                            "/body" => {
                                let length = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes().len())
                                    .unwrap_or(0);
                                Response::new(full(length.to_string()))
                            }
                            "/stream" => {
                                let (sender, receiver) = tokio::sync::mpsc::channel::<
                                    Result<Frame<Bytes>, std::convert::Infallible>,
                                >(8);
                                tokio::spawn(async move {
                                    for n in 0..5 {
                                        let _ = sender
                                            .send(Ok(Frame::data(Bytes::from(format!(
                                                "data: {n}\n\n"
                                            )))))
                                            .await;
                                        tokio::time::sleep(Duration::from_millis(300)).await;
                                    }
                                });
                                let stream =
                                    futures_util::stream::unfold(receiver, |mut r| async move {
                                        r.recv().await.map(|f| (f, r))
                                    });
                                let mut response = Response::new(StreamBody::new(stream).boxed());
                                response
                                    .headers_mut()
                                    .insert("content-type", "text/event-stream".parse().unwrap());
                                response
                            }
                            _ if req.headers().get("upgrade").is_some_and(|u| u == "echo") => {
                                let upgrade = hyper::upgrade::on(&mut req);
                                tokio::spawn(async move {
                                    if let Ok(upgraded) = upgrade.await {
                                        let mut io = TokioIo::new(upgraded);
                                        let mut buffer = [0u8; 1024];
                                        while let Ok(n) = io.read(&mut buffer).await {
                                            if n == 0 || io.write_all(&buffer[..n]).await.is_err() {
                                                break;
                                            }
                                        }
                                    }
                                });
                                let mut response = Response::new(full(""));
                                *response.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                                response
                                    .headers_mut()
                                    .insert("upgrade", "echo".parse().unwrap());
                                response
                                    .headers_mut()
                                    .insert("connection", "upgrade".parse().unwrap());
                                response
                            }
                            "/big" => Response::new(full(vec![b'x'; 8 << 20])),
                            "/path" => Response::new(full(
                                req.uri()
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                            )),
                            _ => Response::new(full(name)),
                        };
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, hits)
}

struct Running {
    proxy: Arc<Proxy>,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    serving: Option<tokio::task::JoinHandle<()>>,
}

async fn start_proxy(config: ProxyConfig) -> Running {
    let proxy = Proxy::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let serving = tokio::spawn(proxy.clone().serve(
        listener,
        Scheme::Http,
        shutdown,
        Duration::from_secs(5),
    ));
    Running {
        proxy,
        addr,
        stop: Some(stop),
        serving: Some(serving),
    }
}

fn route(
    service: &str,
    release: i64,
    domains: &[&str],
    path: &str,
    upstreams: Vec<Arc<Upstream>>,
) -> RouteSpec {
    RouteSpec {
        app: "app".into(),
        service: service.into(),
        release,
        domains: domains.iter().map(|d| d.to_string()).collect(),
        path: path.into(),
        upstreams,
        settings: RouteSettings::default(),
    }
}

type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(client: &TestClient, proxy: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let request = Request::get(format!("http://{proxy}{path}"))
        .header("host", host)
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends raw bytes and returns whatever comes back before the connection closes (or 3 s).
async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut out)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => eprintln!("raw read error after {} bytes: {error}", out.len()),
        Err(_) => eprintln!("raw read timed out after {} bytes", out.len()),
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn routes_by_host_and_path_and_cleans_headers() {
    let (site, _) = upstream("site").await;
    let (api, _) = upstream("api").await;
    let running = start_proxy(ProxyConfig::default()).await;
    running.proxy.set_app_routes(
        "app",
        vec![
            route(
                "site",
                1,
                &["example.com"],
                "/",
                vec![Upstream::new(site, "site-1")],
            ),
            route(
                "api",
                1,
                &["example.com"],
                "/api",
                vec![Upstream::new(api, "api-1")],
            ),
            route(
                "tenant",
                1,
                &["*.example.com"],
                "/",
                vec![Upstream::new(api, "api-2")],
            ),
        ],
    );
    let client = client();
    let addr = running.addr;
    assert_eq!(
        get(&client, addr, "example.com", "/").await,
        (200, "site".into())
    );
    assert_eq!(
        get(&client, addr, "Example.COM:8080", "/api/x").await,
        (200, "api".into())
    );
    assert_eq!(
        get(&client, addr, "acme.example.com", "/").await,
        (200, "api".into())
    );
    let (status, page) = get(&client, addr, "unknown.org", "/").await;
    assert_eq!(status, 404);
    assert!(page.contains("unknown.org"), "{page}");

    let request = Request::get(format!("http://{addr}/headers"))
        .header("host", "example.com")
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("connection", "x-drop-me")
        .header("x-drop-me", "1")
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    let seen = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(seen.contains("x-forwarded-for: 127.0.0.1"), "{seen}");
    assert!(seen.contains("x-forwarded-host: example.com"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: http"), "{seen}");
    assert!(
        seen.contains("forwarded: for=127.0.0.1;proto=http;host=\"example.com\""),
        "{seen}"
    );
    assert!(
        seen.contains("host: example.com"),
        "the Host header is kept: {seen}"
    );
    assert!(!seen.contains("6.6.6.6"), "{seen}");
    assert!(!seen.contains("x-drop-me"), "{seen}");
}

#[tokio::test]
async fn balances_round_robin_across_replicas() {
    let (a, a_hits) = upstream("a").await;
    let (b, b_hits) = upstream("b").await;
    let running = start_proxy(ProxyConfig::default()).await;
    running.proxy.set_app_routes(
        "app",
        vec![route(
            "web",
            1,
            &[],
            "/",
            vec![Upstream::new(a, "a"), Upstream::new(b, "b")],
        )],
    );
    let client = client();
    for _ in 0..20 {
        assert_eq!(get(&client, running.addr, "x", "/").await.0, 200);
    }
    assert_eq!(a_hits.load(Ordering::SeqCst), 10);
    assert_eq!(b_hits.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn least_connections_sends_new_requests_to_the_idle_replica() {
    let (a, a_hits) = upstream("a").await;
    let (b, b_hits) = upstream("b").await;
    let running = start_proxy(ProxyConfig::default()).await;
    let mut spec = route(
        "web",
        1,
        &[],
        "/",
        vec![Upstream::new(a, "a"), Upstream::new(b, "b")],
    );
    spec.settings.balance = Balance::LeastConnections;
    running.proxy.set_app_routes("app", vec![spec]);
    // Three slow requests occupy one replica each time they land; quick ones go to the other.
    let addr = running.addr;
    let slow = tokio::spawn(async move { get(&client(), addr, "x", "/slow?ms=800").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (a_before, b_before) = (a_hits.load(Ordering::SeqCst), b_hits.load(Ordering::SeqCst));
    let client = client();
    for _ in 0..10 {
        get(&client, addr, "x", "/").await;
    }
    let a_quick = a_hits.load(Ordering::SeqCst) - a_before;
    let b_quick = b_hits.load(Ordering::SeqCst) - b_before;
    assert!(
        a_quick == 10 || b_quick == 10,
        "every quick request avoided the busy replica ({a_quick}/{b_quick})"
    );
    slow.await.unwrap();
}

#[tokio::test]
async fn a_refusing_replica_is_skipped_without_an_error() {
    let (live, _) = upstream("live").await;
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let running = start_proxy(ProxyConfig::default()).await;
    running.proxy.set_app_routes(
        "app",
        vec![route(
            "web",
            1,
            &[],
            "/",
            vec![Upstream::new(dead, "dead"), Upstream::new(live, "live")],
        )],
    );
    let client = client();
    for _ in 0..10 {
        assert_eq!(
            get(&client, running.addr, "x", "/").await,
            (200, "live".into())
        );
    }
}

/// An upstream that answers one request per connection as keep-alive, then closes the
/// connection after a delay that varies from 0 to 9 ms, as a short keep-alive timeout would,
/// racing the proxy's reuse of it. Counts the requests it answered.
async fn closing_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = answered.clone();
    tokio::spawn(async move {
        for connection in 0u64.. {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(connection % 10)).await;
                // Whatever arrived meanwhile is unread: the close resets the connection.
            });
        }
    });
    (addr, answered)
}

#[tokio::test]
async fn pooled_connections_the_upstream_closes_cost_no_request() {
    let (addr, answered) = closing_upstream().await;
    let running = start_proxy(ProxyConfig::default()).await;
    running.proxy.set_app_routes(
        "app",
        vec![route(
            "web",
            1,
            &[],
            "/",
            vec![Upstream::new(addr, "closing")],
        )],
    );
    let client = client();
    // GETs at gaps that land before, around and after the upstream's closes: a request that
    // met a closed pooled connection is sent again on a fresh one.
    for i in 0..150u64 {
        assert_eq!(
            get(&client, running.addr, "x", "/").await,
            (200, "ok".into()),
            "request {i}"
        );
        tokio::time::sleep(Duration::from_millis(i % 12)).await;
    }
    // A body-less POST is never sent twice; well after a close, the dead pooled connection is
    // noticed before it is used.
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let request = Request::post(format!("http://{}/", running.addr))
            .header("host", "x")
            .body(Empty::new())
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), 200, "POST {i}");
    }
    assert_eq!(
        answered.load(Ordering::SeqCst),
        155,
        "each request answered once"
    );
}

#[tokio::test]
async fn a_request_waits_for_an_upstream_that_is_coming_up() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let running = start_proxy(ProxyConfig::default()).await;
    running.proxy.set_app_routes(
        "app",
        vec![route(
            "web",
            1,
            &[],
            "/",
            vec![Upstream::new(
                format!("127.0.0.1:{port}").parse().unwrap(),
                "late",
            )],
        )],
    );
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
            Ok::<_, std::convert::Infallible>(Response::new(full("late")))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    assert_eq!(
        get(&client(), running.addr, "x", "/").await,
        (200, "late".into())
    );
}

#[tokio::test]
async fn no_reachable_replica_is_a_502_after_the_retry_budget() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let config = ProxyConfig {
        retry_budget: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let running = start_proxy(config).await;
    running.proxy.set_app_routes(
        "app",
        vec![route("web", 1, &[], "/", vec![Upstream::new(dead, "dead")])],
    );
    let started = Instant::now();
    let (status, page) = get(&client(), running.addr, "x", "/").await;
    assert_eq!(status, 502);
    assert!(page.contains("web service of app"), "{page}");
    assert!(
        !page.contains("127.0.0.1"),
        "internal addresses stay hidden: {page}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_slow_upstream_is_a_504() {
    let (slow, _) = upstream("slow").await;
    let running = start_proxy(ProxyConfig::default()).await;
    let mut spec = route("web", 1, &[], "/", vec![Upstream::new(slow, "slow")]);
    spec.settings.response_timeout = Duration::from_millis(200);
    running.proxy.set_app_routes("app", vec![spec]);
    assert_eq!(
        get(&client(), running.addr, "x", "/slow?ms=2000").await.0,
        504
    );
}

#[tokio::test]
async fn switching_under_load_loses_nothing_and_old_requests_drain() {
    let (old, _) = upstream("old").await;
    let (new, _) = upstream("new").await;
    let running = start_proxy(ProxyConfig::default()).await;
    let addr = running.addr;
    let old_upstream = Upstream::new(old, "old");
    running.proxy.set_app_routes(
        "app",
        vec![route("web", 1, &[], "/", vec![old_upstream.clone()])],
    );

    // A slow request is in flight on the old release when the switch happens.
    let slow = tokio::spawn(async move { get(&client(), addr, "x", "/slow?ms=700").await });

    // Keep-alive clients hammer the proxy across the switch.
    let stop_at = Instant::now() + Duration::from_millis(1500);
    let mut workers = Vec::new();
    for _ in 0..4 {
        workers.push(tokio::spawn(async move {
            let client = client();
            let (mut ok, mut failed, mut saw_new) = (0, 0, false);
            while Instant::now() < stop_at {
                match get(&client, addr, "x", "/").await {
                    (200, body) => {
                        ok += 1;
                        saw_new |= body == "new";
                    }
                    _ => failed += 1,
                }
            }
            (ok, failed, saw_new)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        old_upstream.inflight() >= 1,
        "the slow request counts as in flight"
    );
    running.proxy.set_app_routes(
        "app",
        vec![route("web", 2, &[], "/", vec![Upstream::new(new, "new")])],
    );
    let drain_started = Instant::now();
    assert!(old_upstream.wait_drained(Duration::from_secs(5)).await);
    assert!(
        drain_started.elapsed() >= Duration::from_millis(300),
        "draining waited for the slow request"
    );
    old_upstream.retire();

    assert_eq!(
        slow.await.unwrap(),
        (200, "old".into()),
        "the in-flight request finished on the old release"
    );
    let (mut ok, mut failed) = (0, 0);
    for worker in workers {
        let (o, f, saw_new) = worker.await.unwrap();
        ok += o;
        failed += f;
        assert!(saw_new, "every client reached the new release");
    }
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert!(ok > 100, "the load loop ran ({ok} requests)");
}

#[tokio::test]
async fn shutdown_lets_the_request_in_progress_finish() {
    let (slow, _) = upstream("slow").await;
    let mut running = start_proxy(ProxyConfig::default()).await;
    running.proxy.set_app_routes(
        "app",
        vec![route("web", 1, &[], "/", vec![Upstream::new(slow, "slow")])],
    );
    let addr = running.addr;
    let request = tokio::spawn(async move { get(&client(), addr, "x", "/slow?ms=500").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    running.stop.take().unwrap().send(()).unwrap();
    assert_eq!(request.await.unwrap(), (200, "slow".into()));
    running.serving.take().unwrap().await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn http2_clients_are_served_over_http1_upstreams() {
    let (web, _) = upstream("web").await;
    let running = start_proxy(ProxyConfig::default()).await;
    running.proxy.set_app_routes(
        "app",
        vec![route(
            "web",
            1,
            &["example.com"],
            "/",
            vec![Upstream::new(web, "web")],
        )],
    );
    // HTTP/2 has no Host header: the authority travels in the URI (here with prior knowledge,
    // as over TLS with ALPN).
    let request = Request::get(format!(
        "http://example.com:{}/headers",
        running.addr.port()
    ))
    .body(Empty::new())
    .unwrap();
    let direct = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(direct),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let seen = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        seen.contains("host: example.com"),
        "the upstream gets a Host header: {seen}"
    );
    assert!(seen.contains("x-forwarded-host: example.com"), "{seen}");
}

#[tokio::test]
async fn upgraded_connections_are_spliced_and_drain_like_requests() {
    let (web, _) = upstream("web").await;
    let running = start_proxy(ProxyConfig::default()).await;
    let upstream_handle = Upstream::new(web, "web-1");
    running.proxy.set_app_routes(
        "app",
        vec![route("web", 1, &[], "/", vec![upstream_handle.clone()])],
    );

    let mut stream = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    stream
        .write_all(b"GET /chat HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 512];
    let n = stream.read(&mut head).await.unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    stream.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");

    // While it is open it counts as in flight: a drain waits for it.
    assert_eq!(upstream_handle.inflight(), 1);
    running.proxy.set_app_routes("app", vec![]);
    assert!(
        !upstream_handle
            .wait_drained(Duration::from_millis(300))
            .await,
        "an open upgraded connection keeps the upstream busy"
    );
    stream.write_all(b"still here").await.unwrap();
    let mut more = [0u8; 10];
    stream.read_exact(&mut more).await.unwrap();
    assert_eq!(
        &more, b"still here",
        "the connection survives the route change"
    );
    drop(stream);
    assert!(
        upstream_handle.wait_drained(Duration::from_secs(3)).await,
        "closing it ends the drain"
    );
}

#[tokio::test]
async fn http2_clients_open_websockets_with_extended_connect() {
    // A WebSocket upstream that records the handshake it got, answers 101, then echoes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<String>();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            head.extend_from_slice(&buf[..n]);
        }
        let _ = seen_tx.send(String::from_utf8_lossy(&head).to_lowercase());
        socket
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n")
            .await
            .unwrap();
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => socket.write_all(&buf[..n]).await.unwrap(),
            }
        }
    });
    let (web, _) = upstream("web").await;
    let running = start_proxy(ProxyConfig::default()).await;
    let sockets = Upstream::new(upstream_addr, "ws-1");
    running.proxy.set_app_routes(
        "app",
        vec![
            route(
                "web",
                1,
                &["example.com"],
                "/",
                vec![Upstream::new(web, "web-1")],
            ),
            route("ws", 1, &["example.com"], "/chat", vec![sockets.clone()]),
        ],
    );
    let port = running.addr.port();
    let direct = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(direct),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    // An ordinary request first, so the server's SETTINGS announcing extended CONNECT are in.
    let warm = Request::get(format!("http://example.com:{port}/"))
        .body(Empty::new())
        .unwrap();
    assert_eq!(sender.send_request(warm).await.unwrap().status(), 200);

    let mut connect = Request::builder()
        .method(hyper::Method::CONNECT)
        .uri(format!("http://example.com:{port}/chat"))
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "chat")
        .body(Empty::new())
        .unwrap();
    connect
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let response = sender.send_request(connect).await.unwrap();
    assert_eq!(response.status(), 200, "RFC 8441 succeeds with a 200");
    for absent in ["upgrade", "connection", "sec-websocket-accept"] {
        assert!(
            response.headers().get(absent).is_none(),
            "{absent} is HTTP/1.1 only"
        );
    }
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat");

    let seen = seen_rx.await.unwrap();
    assert!(seen.starts_with("get /chat http/1.1\r\n"), "{seen}");
    assert!(seen.contains("upgrade: websocket"), "{seen}");
    assert!(seen.contains("connection: upgrade"), "{seen}");
    assert!(seen.contains("sec-websocket-version: 13"), "{seen}");
    let key = seen
        .lines()
        .find_map(|line| line.strip_prefix("sec-websocket-key: "))
        .expect("the upstream gets a key");
    assert_eq!(key.len(), 24, "{key}");

    let mut stream = TokioIo::new(hyper::upgrade::on(response).await.unwrap());
    stream.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
    assert_eq!(
        sockets.inflight(),
        1,
        "an open WebSocket counts as in flight"
    );
    drop(stream);
    assert!(sockets.wait_drained(Duration::from_secs(3)).await);
}

#[tokio::test]
async fn streamed_responses_flow_without_buffering() {
    let (web, _) = upstream("web").await;
    let running = start_proxy(ProxyConfig::default()).await;
    running.proxy.set_app_routes(
        "app",
        vec![route("web", 1, &[], "/", vec![Upstream::new(web, "web")])],
    );
    let request = Request::get(format!("http://{}/stream", running.addr))
        .header("host", "x")
        .body(Empty::new())
        .unwrap();
    let started = Instant::now();
    let response = client().request(request).await.unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let first_at = started.elapsed();
    assert_eq!(&first[..], b"data: 0\n\n");
    assert!(
        first_at < Duration::from_millis(700),
        "the first event arrived after {first_at:?}, before the stream ended"
    );
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(rest.ends_with(b"data: 4\n\n"));
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "the stream took its time"
    );
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let (web, hits) = upstream("web").await;
    let running = start_proxy(ProxyConfig::default()).await;
    let mut spec = route("web", 1, &[], "/", vec![Upstream::new(web, "web")]);
    spec.settings.max_body = 1000;
    running.proxy.set_app_routes("app", vec![spec]);
    let addr = running.addr;

    // Declared too large: refused before the upstream is bothered.
    let response = raw(
        addr,
        b"POST /body HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);

    // Chunked and too large: cut off while streaming.
    let chunk = format!("{:x}\r\n{}\r\n", 600, "a".repeat(600));
    let request = format!(
        "POST /body HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n"
    );
    let response = raw(addr, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");

    // Within the limit: fine.
    let request = format!(
        "POST /body HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 900\r\n\r\n{}",
        "a".repeat(900)
    );
    let response = raw(addr, request.as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with("900"),
        "{response}"
    );
}

#[tokio::test]
async fn huge_headers_get_431_and_slow_headers_are_cut() {
    let (web, _) = upstream("web").await;
    let config = ProxyConfig {
        header_read_timeout: Duration::from_millis(500),
        max_header_size: 8192,
        ..ProxyConfig::default()
    };
    let running = start_proxy(config).await;
    running.proxy.set_app_routes(
        "app",
        vec![route("web", 1, &[], "/", vec![Upstream::new(web, "web")])],
    );
    let addr = running.addr;

    let request = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let response = raw(addr, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");

    // A client trickling its headers is disconnected once the header timeout passes.
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(400) && closed_after < Duration::from_secs(3),
        "closed after {closed_after:?}"
    );
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert_eq!(
        get(&client(), addr, "x", "/").await.0,
        200,
        "the proxy is fine"
    );
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429() {
    let (web, _) = upstream("web").await;
    let running = start_proxy(ProxyConfig::default()).await;
    let mut spec = route("web", 1, &[], "/", vec![Upstream::new(web, "web")]);
    spec.settings.rate_limit = Some(RateLimit {
        requests: 5,
        per: Duration::from_secs(60),
    });
    running.proxy.set_app_routes("app", vec![spec.clone()]);
    let client = client();
    for _ in 0..5 {
        assert_eq!(get(&client, running.addr, "x", "/").await.0, 200);
    }
    let request = Request::get(format!("http://{}/", running.addr))
        .header("host", "x")
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=12).contains(&retry_after), "{retry_after}");
    // A route switch (a deploy) does not reset the client's allowance.
    running.proxy.set_app_routes("app", vec![spec]);
    assert_eq!(get(&client, running.addr, "x", "/").await.0, 429);
}

#[tokio::test]
async fn a_route_at_its_concurrency_limit_answers_503_until_requests_end() {
    let (web, _) = upstream("web").await;
    let running = start_proxy(ProxyConfig::default()).await;
    let mut spec = route("web", 1, &[], "/", vec![Upstream::new(web, "web")]);
    spec.settings.max_concurrent = Some(2);
    running.proxy.set_app_routes("app", vec![spec.clone()]);
    let client = client();
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            let addr = running.addr;
            tokio::spawn(async move { get(&client, addr, "x", "/slow?ms=1500").await })
        })
        .collect();
    // Wait until both are in progress.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut refused = None;
    while Instant::now() < deadline {
        let request = Request::get(format!("http://{}/", running.addr))
            .header("host", "x")
            .body(Empty::new())
            .unwrap();
        let response = client.request(request).await.unwrap();
        if response.status() == 503 {
            refused = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = refused.expect("a third concurrent request was refused");
    assert_eq!(refused.headers()["retry-after"], "1");
    let page = refused.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&page).contains("as many requests"));
    // A route switch (a deploy) keeps counting the requests in progress.
    running.proxy.set_app_routes("app", vec![spec.clone()]);
    assert_eq!(get(&client, running.addr, "x", "/").await.0, 503);
    for request in slow {
        assert_eq!(request.await.unwrap(), (200, "web".into()));
    }
    assert_eq!(
        get(&client, running.addr, "x", "/").await,
        (200, "web".into())
    );

    // A streamed response holds its place until its body ends.
    spec.settings.max_concurrent = Some(1);
    running.proxy.set_app_routes("app", vec![spec]);
    let request = Request::get(format!("http://{}/stream", running.addr))
        .header("host", "x")
        .body(Empty::new())
        .unwrap();
    let mut stream = client.request(request).await.unwrap().into_body();
    let first = stream.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    assert_eq!(get(&client, running.addr, "x", "/").await.0, 503);
    while stream.frame().await.is_some() {}
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = get(&client, running.addr, "x", "/").await.0;
        if status == 200 || Instant::now() > deadline {
            assert_eq!(status, 200, "the stream's place was given back");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn maintenance_mode_serves_a_503_page() {
    let (web, hits) = upstream("web").await;
    let running = start_proxy(ProxyConfig::default()).await;
    let mut spec = route("web", 1, &[], "/", vec![Upstream::new(web, "web")]);
    spec.settings.maintenance = Some("Back at noon.".into());
    running.proxy.set_app_routes("app", vec![spec]);
    let request = Request::get(format!("http://{}/", running.addr))
        .header("host", "x")
        .body(Empty::new())
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let page = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&page).contains("Back at noon."));
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_stripped_prefix_is_not_forwarded() {
    let (web, _) = upstream("web").await;
    let running = start_proxy(ProxyConfig::default()).await;
    let mut spec = route("web", 1, &[], "/api", vec![Upstream::new(web, "web")]);
    spec.settings.strip_prefix = true;
    running.proxy.set_app_routes("app", vec![spec]);
    assert_eq!(
        get(&client(), running.addr, "x", "/api/path?q=1").await,
        (200, "/path?q=1".into())
    );
}

#[tokio::test]
async fn malformed_requests_get_400_and_never_reach_or_confuse_anything() {
    let (web, hits) = upstream("web").await;
    let running = start_proxy(ProxyConfig::default()).await;
    running.proxy.set_app_routes(
        "app",
        vec![route("web", 1, &[], "/", vec![Upstream::new(web, "web")])],
    );
    let addr = running.addr;
    let hostile: [&[u8]; 6] = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage-that-is-not-http\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\nbad header name: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\nx-ok: \x01\x02\r\n\r\n",
        // Request smuggling: conflicting framing.
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 7\r\n\r\nabcdefg",
        b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, identity\r\n\r\n5\r\nabcde\r\n0\r\n\r\n",
    ];
    for request in hostile {
        let response = raw(addr, request).await;
        assert!(
            response.starts_with("HTTP/1.1 400"),
            "{:?} got {response:?}",
            String::from_utf8_lossy(request)
        );
        assert!(!response.contains("/smuggled"));
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
    assert_eq!(
        get(&client(), addr, "x", "/").await,
        (200, "web".into()),
        "the proxy keeps serving"
    );
}

#[tokio::test]
async fn requests_are_logged_as_json_and_counted() {
    let (web, _) = upstream("web").await;
    let running = start_proxy(ProxyConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    running
        .proxy
        .set_access_log(AccessLog::open(&path, 1 << 20, 3).unwrap());
    running.proxy.set_app_routes(
        "app",
        vec![route(
            "web",
            7,
            &["example.com"],
            "/",
            vec![Upstream::new(web, "web-1")],
        )],
    );
    let client = client();
    get(&client, running.addr, "example.com", "/hello?x=1").await;
    get(&client, running.addr, "nowhere.org", "/").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let log = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert_eq!(lines[0]["host"], "example.com");
    assert_eq!(lines[0]["method"], "GET");
    assert_eq!(lines[0]["path"], "/hello?x=1");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["bytes"], 3);
    assert_eq!(lines[0]["app"], "app");
    assert_eq!(lines[0]["release"], 7);
    assert_eq!(lines[0]["upstream"], "web-1");
    assert_eq!(lines[0]["client"], "127.0.0.1");
    assert!(lines[0]["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(lines[1]["status"], 404);

    let mut registry = prometheus_client::registry::Registry::default();
    running.proxy.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("berth_http_requests_total{app=\"app\",status_class=\"2xx\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("berth_http_requests_total{app=\"-\",status_class=\"4xx\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("berth_http_request_duration_seconds_count{app=\"app\"} 1"),
        "{text}"
    );
}

/// Whether the proxy closes `stream` within `limit`: reads until EOF (or a reset). Returns
/// how long that took, and what was read.
async fn closed_within(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    limit: Duration,
) -> Option<(Duration, Vec<u8>)> {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some((started.elapsed(), out)),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

fn short_deadlines() -> ProxyConfig {
    ProxyConfig {
        first_byte_timeout: Duration::from_millis(400),
        header_read_timeout: Duration::from_millis(900),
        idle_timeout: Duration::from_secs(30),
        max_connections: 8,
        ..ProxyConfig::default()
    }
}

#[tokio::test]
async fn silent_and_half_sent_connections_are_closed_while_new_clients_are_served() {
    let (web, _) = upstream("web").await;
    let running = start_proxy(short_deadlines()).await;
    running.proxy.set_app_routes(
        "app",
        vec![route("web", 1, &[], "/", vec![Upstream::new(web, "web")])],
    );
    let addr = running.addr;
    // More hostile sockets than the connection cap (8): some silent, some stopped in the
    // middle of an HTTP/2 preface, some in the middle of an HTTP/1 request line.
    let mut hostile = Vec::new();
    for i in 0..12 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        match i % 3 {
            0 => {}
            1 => stream.write_all(b"PRI * HTTP/2.0\r\n\r\nS").await.unwrap(),
            _ => stream.write_all(b"GET / HT").await.unwrap(),
        }
        hostile.push(stream);
    }
    // A real client is served at once: the idlest hostile connections make room for it.
    let started = Instant::now();
    let served = tokio::time::timeout(Duration::from_secs(5), get(&client(), addr, "x", "/"))
        .await
        .expect("a new client is served while silent connections fill the cap");
    assert_eq!(served, (200, "web".into()));
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "a new client waited {:?} behind silent connections",
        started.elapsed()
    );
    // Every hostile socket is closed by the first-request deadline (0.9 s from accept) at the
    // latest, and none got a response.
    for (i, stream) in hostile.iter_mut().enumerate() {
        let (after, bytes) = closed_within(stream, Duration::from_secs(3))
            .await
            .unwrap_or_else(|| panic!("hostile connection {i} is still open after 3 s"));
        assert!(
            bytes.is_empty() || bytes.starts_with(b"HTTP/1.1 408"),
            "connection {i} after {after:?}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    let mut registry = prometheus_client::registry::Registry::default();
    running.proxy.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("reason=\"silent\"") && text.contains("reason=\"no_request\""),
        "{text}"
    );
}

#[tokio::test]
async fn one_client_address_cannot_take_every_connection() {
    let (web, _) = upstream("web").await;
    let config = ProxyConfig {
        max_connections_per_client: 3,
        ..short_deadlines()
    };
    let running = start_proxy(config).await;
    running.proxy.set_app_routes(
        "app",
        vec![route("web", 1, &[], "/", vec![Upstream::new(web, "web")])],
    );
    let addr = running.addr;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // The fourth from the same address is closed at once, without a response.
    let mut fourth = tokio::net::TcpStream::connect(addr).await.unwrap();
    fourth
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .ok();
    let (after, bytes) = closed_within(&mut fourth, Duration::from_millis(300))
        .await
        .expect("the fourth connection from one address is closed at once");
    assert!(bytes.is_empty(), "after {after:?}: {bytes:?}");
    // Another address is served meanwhile.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = socket.connect(addr).await.unwrap();
    other
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (_, response) = closed_within(&mut other, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
    drop(held);
}

#[tokio::test]
async fn at_the_cap_idle_keep_alive_connections_make_room_and_busy_ones_do_not() {
    let (web, _) = upstream("web").await;
    let config = ProxyConfig {
        max_connections: 3,
        ..short_deadlines()
    };
    let running = start_proxy(config).await;
    running.proxy.set_app_routes(
        "app",
        vec![route("web", 1, &[], "/", vec![Upstream::new(web, "web")])],
    );
    let addr = running.addr;
    // One connection with a slow request in progress, two idle after one request each.
    let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /slow?ms=1500 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        idle.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Two new clients: each takes the place of an idle one.
    for _ in 0..2 {
        let started = Instant::now();
        let served = tokio::time::timeout(Duration::from_secs(5), get(&client(), addr, "x", "/"))
            .await
            .expect("a new client is served when idle connections fill the cap");
        assert_eq!(served.0, 200);
        assert!(started.elapsed() < Duration::from_millis(800));
    }
    for stream in &mut idle {
        assert!(
            closed_within(stream, Duration::from_secs(2))
                .await
                .is_some(),
            "an idle connection was closed for a new client"
        );
    }
    // The busy one got its whole response.
    let (_, response) = closed_within(&mut busy, Duration::from_millis(2500))
        .await
        .map_or((Duration::ZERO, Vec::new()), |r| r);
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("web"),
        "{text}"
    );
}

fn tls_server_config() -> (
    Arc<rustls::ServerConfig>,
    rustls_pki_types::CertificateDer<'static>,
) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let certificate = params.self_signed(&key).unwrap();
    let loaded = berth_tls::load_pem(
        certificate.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
        "test",
    )
    .unwrap();
    let store = berth_tls::CertStore::new();
    store.install(&loaded.names, loaded.key);
    (berth_tls::server_config(store).unwrap(), loaded.leaf)
}

#[tokio::test]
async fn silence_after_a_tls_handshake_is_cut_whichever_protocol_alpn_chose() {
    let (server_config, leaf) = tls_server_config();
    let proxy = Proxy::new(short_deadlines());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(proxy.clone().serve(
        listener,
        Scheme::Https(server_config),
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(1),
    ));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(leaf).unwrap();
    for alpn in [Some(&b"h2"[..]), Some(&b"http/1.1"[..]), None] {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = alpn.map(|a| vec![a.to_vec()]).unwrap_or_default();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        if alpn == Some(b"h2") {
            // Part of the preface, then nothing.
            tls.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        }
        let closed = closed_within(&mut tls, Duration::from_secs(3)).await;
        assert!(closed.is_some(), "ALPN {alpn:?}: still open after 3 s");
    }
}

#[tokio::test]
async fn hosts_connect_and_connection_tricks_are_refused_or_neutralised() {
    let (web, hits) = upstream("web").await;
    let running = start_proxy(ProxyConfig::default()).await;
    running.proxy.set_app_routes(
        "app",
        vec![route("web", 1, &[], "/", vec![Upstream::new(web, "web")])],
    );
    let addr = running.addr;
    let refused: [(&[u8], &str); 6] = [
        // A Host that would add an element to the Forwarded header.
        (
            b"GET /headers HTTP/1.1\r\nhost: x\", for=6.6.6.6;host=\"y\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            b"GET /headers HTTP/1.1\r\nhost: a.test\r\nhost: b.test\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            b"GET /headers HTTP/1.1\r\nuser-agent: x\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            b"GET http://a.test/headers HTTP/1.1\r\nhost: b.test\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            b"CONNECT internal.test:22 HTTP/1.1\r\nhost: internal.test:22\r\n\r\n",
            "HTTP/1.1 405",
        ),
        (
            b"CONNECT 10.0.0.1:6379 HTTP/1.1\r\nhost: 10.0.0.1:6379\r\n\r\n",
            "HTTP/1.1 405",
        ),
    ];
    for (request, status) in refused {
        let response = raw(addr, request).await;
        assert!(
            response.starts_with(status),
            "{:?} got {response:?}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );

    // `Connection: host` removes nothing the upstream needs, with or without a body.
    for request in [
        &b"GET /headers HTTP/1.1\r\nhost: x.test\r\nconnection: host, close\r\n\r\n"[..],
        b"POST /headers HTTP/1.1\r\nhost: x.test\r\nconnection: host, content-length, close\r\ncontent-length: 2\r\n\r\nhi",
    ] {
        let response = raw(addr, request).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("\nhost: x.test"), "{response}");
        assert!(
            response.contains("forwarded: for=127.0.0.1;proto=http;host=\"x.test\""),
            "{response}"
        );
    }
    // HTTP/1.0 may name no host (it reaches routes for any host).
    let response = raw(addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
}

#[tokio::test]
async fn a_broken_client_body_is_the_clients_error_not_the_upstreams() {
    let (web, _) = upstream("web").await;
    let running = start_proxy(ProxyConfig::default()).await;
    running.proxy.set_app_routes(
        "app",
        vec![route("web", 1, &[], "/", vec![Upstream::new(web, "web")])],
    );
    let addr = running.addr;
    // Malformed chunked framing after the head was accepted.
    let response = raw(
        addr,
        b"POST /body HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nabcde\r\nzz\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    // A body cut short: the client stops sending (half-close) before the declared length.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /body HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nonly ten..")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );

    let mut registry = prometheus_client::registry::Registry::default();
    running.proxy.metrics().register(&mut registry);
    let mut metrics = String::new();
    prometheus_client::encoding::text::encode(&mut metrics, &registry).unwrap();
    assert!(
        !metrics.contains("berth_upstream_errors_total{"),
        "no upstream error is counted: {metrics}"
    );
    assert!(
        metrics.contains("berth_http_requests_total{app=\"app\",status_class=\"4xx\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_http_requests_total{app=\"app\",status_class=\"5xx\"} 0"),
        "no 5xx was answered: {metrics}"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_the_send_timeout() {
    let (web, _) = upstream("web").await;
    let config = ProxyConfig {
        send_timeout: Duration::from_millis(600),
        ..ProxyConfig::default()
    };
    let running = start_proxy(config).await;
    running.proxy.set_app_routes(
        "app",
        vec![route("web", 1, &[], "/", vec![Upstream::new(web, "web")])],
    );
    let mut stream = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // Take nothing for a while: the socket buffers fill and the response stalls.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, bytes) = closed_within(&mut stream, Duration::from_secs(5))
        .await
        .expect("the stalled connection was closed");
    assert!(
        bytes.len() < 8 << 20,
        "cut before the end: {} bytes arrived",
        bytes.len()
    );
    let mut registry = prometheus_client::registry::Registry::default();
    running.proxy.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("reason=\"stalled\"} 1"), "{text}");
    // A client that reads is served whole.
    let mut stream = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    stream.read_to_end(&mut all).await.unwrap();
    assert!(all.len() > 8 << 20);
}

#[tokio::test]
async fn a_websocket_keeps_its_connection_slot_until_it_closes() {
    let (web, _) = upstream("web").await;
    let config = ProxyConfig {
        max_connections: 1,
        ..short_deadlines()
    };
    let running = start_proxy(config).await;
    running.proxy.set_app_routes(
        "app",
        vec![route("web", 1, &[], "/", vec![Upstream::new(web, "web")])],
    );
    let mut ws = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    ws.write_all(b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = ws.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // The one slot is the WebSocket's: a new client waits (it is busy, never evicted).
    let waiting = tokio::time::timeout(
        Duration::from_millis(800),
        get(&client(), running.addr, "x", "/"),
    )
    .await;
    assert!(
        waiting.is_err(),
        "served past the connection cap: {waiting:?}"
    );
    ws.write_all(b"ping").await.unwrap();
    let n = ws.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"ping", "the WebSocket still works");
    drop(ws);
    let served = tokio::time::timeout(
        Duration::from_secs(5),
        get(&client(), running.addr, "x", "/"),
    )
    .await
    .expect("served once the WebSocket closed");
    assert_eq!(served.0, 200);
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_gets_the_response() {
    let (web, _) = upstream("web").await;
    let running = start_proxy(ProxyConfig::default()).await;
    running.proxy.set_app_routes(
        "app",
        vec![route("web", 1, &[], "/", vec![Upstream::new(web, "web")])],
    );
    // As `nc -N` and some health checkers do: the request, then shutdown(SHUT_WR).
    let mut stream = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("web"),
        "{text:?}"
    );
}

#[tokio::test]
async fn an_event_stream_counts_as_long_lived_and_ends_cleanly_when_its_release_goes() {
    let (web, _) = upstream("web").await;
    let running = start_proxy(ProxyConfig::default()).await;
    let upstream = Upstream::new(web, "web");
    running.proxy.set_app_routes(
        "app",
        vec![route("web", 1, &[], "/", vec![Arc::clone(&upstream)])],
    );
    let mut stream = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0u8; 4096];
    let n = stream.read(&mut first).await.unwrap();
    assert!(
        String::from_utf8_lossy(&first[..n]).contains("text/event-stream"),
        "{}",
        String::from_utf8_lossy(&first[..n])
    );
    assert_eq!(upstream.long_lived(), 1, "an event stream is long-lived");
    assert_eq!(
        upstream.requests_in_flight(),
        0,
        "and not an ordinary request"
    );
    assert!(
        upstream
            .wait_requests_drained(Duration::from_millis(10))
            .await,
        "ordinary requests are drained while the stream stays"
    );
    upstream.close_long_lived();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the stream ended");
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.ends_with("0\r\n\r\n"),
        "the chunked response ends properly: {text:?}"
    );
    assert!(
        !text.contains("data: 4"),
        "it ended before the upstream's last event: {text:?}"
    );
    assert!(upstream.wait_drained(Duration::from_secs(2)).await);
}

/// A restart of the agent: a successor serves from the very sockets the running proxy
/// listens on, then the old one stops. Keep-alive clients hammering it all along see no
/// failure (the old proxy tells busy connections `Connection: close`), an upgraded connection
/// on the old proxy ends with a FIN near the end of its grace period, and the address stays
/// claimed by the successor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_on_the_same_sockets_takes_over_without_a_failed_request() {
    use berth_proxy::InheritedListener;
    use std::sync::atomic::AtomicBool;
    let (old_site, _) = upstream("old").await;
    let (new_site, _) = upstream("new").await;
    let old = Proxy::new(ProxyConfig::default());
    old.set_app_routes(
        "app",
        vec![route(
            "web",
            1,
            &[],
            "/",
            vec![Upstream::new(old_site, "old")],
        )],
    );
    let (stop_old, stop_old_rx) = tokio::sync::watch::channel(false);
    let workers = old
        .serve_threads(
            "127.0.0.1:0".parse().unwrap(),
            Scheme::Http,
            2,
            stop_old_rx,
            Duration::from_secs(5),
        )
        .unwrap();
    let addr = workers.addr;

    let mut upgraded = tokio::net::TcpStream::connect(addr).await.unwrap();
    upgraded
        .write_all(b"GET /chat HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 512];
    let n = upgraded.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 101"));

    let stop_clients = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(30);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop_clients.clone();
            std::thread::spawn(move || {
                let mut client = berth_testkit::KeepAliveClient::new(&addr.to_string(), "x");
                let (mut ok, mut failures, mut seen) = (0u64, Vec::new(), Vec::<String>::new());
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match client.get("/") {
                        Ok((200, body)) => {
                            ok += 1;
                            if seen.last() != Some(&body) {
                                seen.push(body);
                            }
                        }
                        Ok((status, body)) => failures.push(format!("{status}: {body}")),
                        Err(error) => failures.push(error.to_string()),
                    }
                }
                (ok, failures, seen)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The successor: the same sockets, held off until its routes are in place.
    let fds = workers
        .handover_fds()
        .iter()
        .map(|fd| fd.try_clone_to_owned().unwrap())
        .collect();
    let new = Proxy::new(ProxyConfig::default());
    new.set_ready(false);
    let (_stop_new, stop_new_rx) = tokio::sync::watch::channel(false);
    let successor = new
        .serve_inherited(
            InheritedListener::from_fds(fds).unwrap(),
            Scheme::Http,
            stop_new_rx,
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(successor.addr, addr);
    tokio::time::sleep(Duration::from_millis(200)).await;
    new.set_app_routes(
        "app",
        vec![route(
            "web",
            1,
            &[],
            "/",
            vec![Upstream::new(new_site, "new")],
        )],
    );
    new.set_ready(true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_old.send(true).unwrap();

    // The upgraded connection still works on the old proxy, then ends with a FIN.
    upgraded.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    upgraded.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), upgraded.read_to_end(&mut rest))
        .await
        .expect("the upgraded connection ends within the grace period");
    assert!(ended.is_ok(), "a FIN, not a reset: {ended:?}");
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || workers.join()),
    )
    .await
    .expect("the old proxy's threads end")
    .unwrap();
    assert_eq!(old.open_connections(), 0);

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_clients.store(true, Ordering::Relaxed);
    let (mut total, mut failures) = (0, Vec::new());
    for client in clients {
        let (ok, failed, seen) = client.join().unwrap();
        total += ok;
        failures.extend(failed);
        assert_eq!(seen.last().map(String::as_str), Some("new"), "{seen:?}");
    }
    eprintln!(
        "{total} requests across the hand-over, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(total > 100, "the clients kept requesting ({total})");

    // Nobody else can join the address: the successor holds the claim now.
    let (_stop_third, stop_third_rx) = tokio::sync::watch::channel(false);
    let third = Proxy::new(ProxyConfig::default()).serve_threads(
        addr,
        Scheme::Http,
        1,
        stop_third_rx,
        Duration::from_secs(1),
    );
    assert!(third.is_err(), "a third proxy joined the address");
}
