//! berth's example app: answers its version on `/`, has `/health`, and is told by the
//! environment how to misbehave so tests can exercise every deploy path.
//!
//! Environment: `VERSION` (reported on `/`; else `BERTH_VERSION`, which berth sets), `PORT` (default 8080), `STARTUP_DELAY_MS`,
//! `FAIL_HEALTH=1` (health answers 500), `CRASH=1` (exit 3 at start), `DATA_DIR` (counter and
//! marker files), `MIGRATE_FAIL=1`, `WORKER_FAIL=1`, `HELLO_DEBUG=1` (enables `/env/NAME` and
//! `/file/PATH` for tests of secret injection). `/ws` is a WebSocket echo that answers
//! "version" with the version.
//!
//! Commands: none (web server), `worker`, `migrate`, `healthcheck`, `count` (increments and
//! prints a counter kept in `DATA_DIR`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use std::{env, fs, process, thread};

fn var(name: &str) -> Option<String> {
    env::var(name).ok().filter(|v| !v.is_empty())
}

fn flag(name: &str) -> bool {
    var(name).is_some_and(|v| v != "0" && v != "false")
}

fn version() -> String {
    var("VERSION")
        .or_else(|| var("BERTH_VERSION"))
        .unwrap_or_else(|| "dev".to_owned())
}

fn data_dir() -> Option<PathBuf> {
    var("DATA_DIR").map(PathBuf::from)
}

fn main() {
    let command = env::args().nth(1).unwrap_or_default();
    let code = match command.as_str() {
        "" | "serve" => serve(),
        "worker" => worker(),
        "migrate" => migrate(),
        "healthcheck" => healthcheck(),
        "count" => count(),
        other => {
            eprintln!(
                "hello: unknown command `{other}` (use serve, worker, migrate or healthcheck)"
            );
            2
        }
    };
    process::exit(code);
}

fn startup() -> Result<(), i32> {
    if let Some(ms) = var("STARTUP_DELAY_MS").and_then(|v| v.parse::<u64>().ok()) {
        println!("hello {}: starting slowly ({ms} ms)", version());
        thread::sleep(Duration::from_millis(ms));
    }
    if flag("CRASH") {
        eprintln!("hello {}: CRASH is set, exiting with status 3", version());
        return Err(3);
    }
    if let Some(dir) = data_dir() {
        let marker = dir.join(format!("started-{}", version()));
        if let Err(e) = fs::create_dir_all(&dir).and_then(|_| fs::write(&marker, b"started\n")) {
            eprintln!("hello: cannot write {}: {e}", marker.display());
        }
    }
    Ok(())
}

fn serve() -> i32 {
    if let Err(code) = startup() {
        return code;
    }
    let port = var("PORT").unwrap_or_else(|| "8080".to_owned());
    let listener = match TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hello: cannot listen on port {port}: {e}");
            return 1;
        }
    };
    println!("hello {}: listening on port {port}", version());
    for stream in listener.incoming().flatten() {
        thread::spawn(move || {
            let _ = handle_connection(stream);
        });
    }
    0
}

static REQUESTS: AtomicU64 = AtomicU64::new(0);
/// Set by `/debug/fail` (with HELLO_DEBUG): this process answers 500 to everything since.
static FAILING: AtomicBool = AtomicBool::new(false);

fn handle_connection(stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    // Without it, a response written in pieces waits for the client's delayed ACK (40 ms
    // on Linux) on every other keep-alive request.
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let target = parts.next().unwrap_or("/").to_owned();
        let http10 = parts.next() == Some("HTTP/1.0");
        let mut content_length = 0usize;
        let mut close = http10;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let name = name.trim().to_ascii_lowercase();
                let value = value.trim().to_owned();
                if name == "content-length" {
                    content_length = value.parse().unwrap_or(0);
                }
                if name == "connection" {
                    close = value.eq_ignore_ascii_case("close");
                }
                headers.push((name, value));
            }
        }
        let mut body = vec![0u8; content_length];
        reader.read_exact(&mut body)?;
        if target == "/ws" {
            return websocket(reader, writer, &headers);
        }
        REQUESTS.fetch_add(1, Ordering::Relaxed);
        let (status, content_type, payload) = respond(&method, &target, &headers, &body);
        let reason = match status {
            200 => "OK",
            404 => "Not Found",
            500 => "Internal Server Error",
            _ => "Status",
        };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nx-version: {}\r\n{}\r\n",
            payload.len(),
            version(),
            if close { "connection: close\r\n" } else { "" }
        );
        // Head and body in one write: one segment for a small response.
        let mut response = head.into_bytes();
        if method != "HEAD" {
            response.extend_from_slice(&payload);
        }
        writer.write_all(&response)?;
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// A WebSocket echo (RFC 6455): answers "version" with the app's version, echoes anything
/// else, and closes when asked.
fn websocket(
    mut reader: BufReader<TcpStream>,
    mut writer: TcpStream,
    headers: &[(String, String)],
) -> std::io::Result<()> {
    let key = headers
        .iter()
        .find(|(n, _)| n == "sec-websocket-key")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let accept = base64(&sha1(
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    ));
    write!(
        writer,
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
    )?;
    writer.flush()?;
    loop {
        let mut head = [0u8; 2];
        reader.read_exact(&mut head)?;
        let opcode = head[0] & 0x0f;
        let masked = head[1] & 0x80 != 0;
        let mut length = u64::from(head[1] & 0x7f);
        if length == 126 {
            let mut extended = [0u8; 2];
            reader.read_exact(&mut extended)?;
            length = u64::from(u16::from_be_bytes(extended));
        } else if length == 127 {
            let mut extended = [0u8; 8];
            reader.read_exact(&mut extended)?;
            length = u64::from_be_bytes(extended);
        }
        let mut mask = [0u8; 4];
        if masked {
            reader.read_exact(&mut mask)?;
        }
        let mut payload = vec![0u8; usize::try_from(length).unwrap_or(0).min(1 << 20)];
        reader.read_exact(&mut payload)?;
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i % 4];
        }
        let (reply_opcode, reply) = match opcode {
            0x8 => {
                send_frame(&mut writer, 0x8, &payload)?;
                return Ok(());
            }
            0x9 => (0xA, payload),
            0x1 if payload == b"version" => (0x1, version().into_bytes()),
            0x1 | 0x2 => (opcode, payload),
            _ => continue,
        };
        send_frame(&mut writer, reply_opcode, &reply)?;
    }
}

fn send_frame(writer: &mut TcpStream, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n < 65536 => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    writer.write_all(&frame)?;
    writer.flush()
}

fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut message = data.to_vec();
    let bit_length = (data.len() as u64).wrapping_mul(8);
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&bit_length.to_be_bytes());
    for block in message.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in w.iter_mut().take(16).enumerate() {
            *word = u32::from_be_bytes([
                block[4 * i],
                block[4 * i + 1],
                block[4 * i + 2],
                block[4 * i + 3],
            ]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, word) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*word);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (state, value) in h.iter_mut().zip([a, b, c, d, e]) {
            *state = state.wrapping_add(value);
        }
    }
    let mut out = [0u8; 20];
    for (i, word) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&word.to_be_bytes());
    }
    out
}

fn base64(data: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn respond(
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (u16, &'static str, Vec<u8>) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let text = "text/plain; charset=utf-8";
    if FAILING.load(Ordering::Relaxed) && !path.starts_with("/debug/") {
        return (500, text, b"failing (set by /debug/fail)\n".to_vec());
    }
    match path {
        "/debug/fail" if flag("HELLO_DEBUG") => {
            FAILING.store(true, Ordering::Relaxed);
            (200, text, b"failing from now on\n".to_vec())
        }
        "/" => (
            200,
            text,
            format!(
                "{} {}\n",
                var("GREETING").unwrap_or_else(|| "hello".into()),
                version()
            )
            .into_bytes(),
        ),
        "/version" => (200, text, format!("{}\n", version()).into_bytes()),
        // Any status, for tests of what berth makes of errors: /status/503.
        p if p.starts_with("/status/") => match p[8..].parse::<u16>() {
            Ok(code) if (200..600).contains(&code) => {
                (code, text, format!("status {code}\n").into_bytes())
            }
            _ => (404, text, b"not a status\n".to_vec()),
        },
        // A JSON log line at a level, for tests of what berth makes of logs: /log/error.
        p if p.starts_with("/log/") => {
            let level = &p[5..];
            if level.is_empty() || !level.chars().all(|c| c.is_ascii_alphabetic()) {
                (404, text, b"not a level\n".to_vec())
            } else {
                println!(r#"{{"level":"{level}","msg":"a {level} line, as asked"}}"#);
                (200, text, b"logged\n".to_vec())
            }
        }
        "/health" | "/up" => {
            if flag("FAIL_HEALTH") {
                (500, text, b"unhealthy (FAIL_HEALTH is set)\n".to_vec())
            } else {
                (200, text, b"ok\n".to_vec())
            }
        }
        "/slow" => {
            let ms = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("ms="))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1000);
            thread::sleep(Duration::from_millis(ms));
            (
                200,
                text,
                format!("slept {ms} ms on {}\n", version()).into_bytes(),
            )
        }
        "/echo" => {
            let mut out = format!("{method} {target}\n");
            for (name, value) in headers {
                out.push_str(&format!("{name}: {value}\n"));
            }
            out.push('\n');
            out.push_str(&String::from_utf8_lossy(body));
            (200, text, out.into_bytes())
        }
        "/count" => match data_dir() {
            None => (500, text, b"DATA_DIR is not set\n".to_vec()),
            Some(dir) => {
                let file = dir.join("count");
                let current: u64 = fs::read_to_string(&file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0);
                let next = if method == "POST" {
                    current + 1
                } else {
                    current
                };
                if method == "POST"
                    && let Err(e) =
                        fs::create_dir_all(&dir).and_then(|_| fs::write(&file, next.to_string()))
                {
                    return (
                        500,
                        text,
                        format!("cannot write {}: {e}\n", file.display()).into_bytes(),
                    );
                }
                (200, text, format!("{next}\n").into_bytes())
            }
        },
        "/requests" => (
            200,
            text,
            format!("{}\n", REQUESTS.load(Ordering::Relaxed)).into_bytes(),
        ),
        p if flag("HELLO_DEBUG") && p.starts_with("/env/") => match var(&p[5..]) {
            Some(v) => (200, text, v.into_bytes()),
            None => (404, text, b"not set\n".to_vec()),
        },
        p if flag("HELLO_DEBUG") && p.starts_with("/file/") => match fs::read(&p[5..]) {
            Ok(v) => (200, text, v),
            Err(e) => (404, text, format!("{e}\n").into_bytes()),
        },
        _ => (404, text, b"not found\n".to_vec()),
    }
}

fn worker() -> i32 {
    if let Err(code) = startup() {
        return code;
    }
    let mut tick = 0u64;
    loop {
        if flag("WORKER_FAIL") && tick >= 1 {
            eprintln!(
                "hello worker {}: WORKER_FAIL is set, exiting with status 1",
                version()
            );
            return 1;
        }
        println!("hello worker {}: tick {tick}", version());
        if let Some(dir) = data_dir() {
            let _ = fs::create_dir_all(&dir).and_then(|_| {
                fs::write(dir.join(format!("worker-{}", version())), tick.to_string())
            });
        }
        tick += 1;
        thread::sleep(Duration::from_millis(500));
    }
}

fn migrate() -> i32 {
    println!("hello {}: running migrations", version());
    if flag("MIGRATE_FAIL") {
        eprintln!("hello {}: migration failed: MIGRATE_FAIL is set", version());
        return 1;
    }
    if let Some(dir) = data_dir() {
        let marker = dir.join(format!("migrated-{}", version()));
        if let Err(e) = fs::create_dir_all(&dir).and_then(|_| fs::write(&marker, b"migrated\n")) {
            eprintln!("hello: cannot write {}: {e}", marker.display());
            return 1;
        }
    }
    println!("hello {}: migrations done", version());
    0
}

fn count() -> i32 {
    let Some(dir) = data_dir() else {
        eprintln!("hello count: DATA_DIR is not set");
        return 1;
    };
    let file = dir.join("count");
    let next = fs::read_to_string(&file)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    match fs::create_dir_all(&dir).and_then(|_| fs::write(&file, next.to_string())) {
        Ok(()) => {
            println!("{next}");
            0
        }
        Err(e) => {
            eprintln!("hello count: cannot write {}: {e}", file.display());
            1
        }
    }
}

fn healthcheck() -> i32 {
    let port = var("PORT").unwrap_or_else(|| "8080".to_owned());
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect(format!("127.0.0.1:{port}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response.starts_with("HTTP/1.1 200"))
    };
    match attempt() {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("hello healthcheck: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_websocket_accept_key_matches_rfc_6455() {
        // The example handshake from RFC 6455, section 1.3.
        let accept = base64(&sha1(
            b"dGhlIHNhbXBsZSBub25jZQ==258EAFA5-E914-47DA-95CA-C5AB0DC85B11",
        ));
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
