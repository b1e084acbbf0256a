//! A watcher on the client side of HTTP/1 connections that flags request heads with both
//! `Content-Length` and `Transfer-Encoding`: the classic request-smuggling shape.
//!
//! hyper already handles such a request safely (it frames the body as chunked, drops the
//! length and closes the connection afterwards), but it does so silently. The edge answers
//! 400 instead, which needs the raw head: hyper removes `Content-Length` before the service
//! sees the request. The watcher follows the byte stream exactly (heads, fixed-length and
//! chunked bodies) so body bytes are never mistaken for heads; if it ever cannot follow, it
//! switches itself off rather than guess.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const MAX_HEAD: usize = 64 * 1024;
const MAX_LINE: usize = 4096;

#[derive(Debug)]
enum State {
    /// Collecting a request head.
    Head(Vec<u8>),
    /// Skipping `n` more bytes of a fixed-length body.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    ChunkEnd(usize),
    /// Reading trailer lines until an empty one.
    Trailers(Vec<u8>),
    /// Not following any more (HTTP/2, an upgrade, or something it cannot parse).
    Off,
}

/// Where the watcher reports what it saw.
pub(crate) trait Flag: Send + Sync {
    fn raise(&self);
}

impl Flag for Arc<AtomicBool> {
    fn raise(&self) {
        self.store(true, Ordering::Release);
    }
}

pub(crate) struct FramingWatcher<F: Flag> {
    state: State,
    flag: F,
}

impl<F: Flag> FramingWatcher<F> {
    pub fn new(flag: F) -> Self {
        Self {
            state: State::Head(Vec::new()),
            flag,
        }
    }

    #[cfg(test)]
    fn is_following(&self) -> bool {
        !matches!(self.state, State::Off)
    }

    /// Feeds bytes the client sent, in order.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Head(head) => {
                    // Tolerate the empty lines some clients send between requests.
                    if head.is_empty() {
                        let skip = bytes
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        bytes = &bytes[skip..];
                        if bytes.is_empty() {
                            return;
                        }
                    }
                    // The common case: a whole head in one read, parsed where it lies.
                    if head.is_empty()
                        && let Some(end) = find_head_end(bytes)
                    {
                        self.state = self.after_head(&bytes[..end]);
                        bytes = &bytes[end..];
                        continue;
                    }
                    let before = head.len();
                    head.extend_from_slice(bytes);
                    let Some(end) = find_head_end(head) else {
                        if head.len() > MAX_HEAD {
                            self.state = State::Off;
                        }
                        return;
                    };
                    let consumed = end - before;
                    let head = std::mem::take(head);
                    self.state = self.after_head(&head[..end]);
                    bytes = &bytes[consumed..];
                }
                State::Body(remaining) => {
                    let n = (*remaining).min(bytes.len() as u64);
                    *remaining -= n;
                    bytes = &bytes[n as usize..];
                    if *remaining == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkSize(line) => match take_line(line, &mut bytes) {
                    LineResult::More => {}
                    LineResult::TooLong => self.state = State::Off,
                    LineResult::Line(text) => {
                        let size = text
                            .split(';')
                            .next()
                            .map(str::trim)
                            .and_then(|h| u64::from_str_radix(h, 16).ok());
                        self.state = match size {
                            Some(0) => State::Trailers(Vec::new()),
                            Some(n) => State::ChunkData(n),
                            None => State::Off,
                        };
                    }
                },
                State::ChunkData(remaining) => {
                    let n = (*remaining).min(bytes.len() as u64);
                    *remaining -= n;
                    bytes = &bytes[n as usize..];
                    if *remaining == 0 {
                        self.state = State::ChunkEnd(0);
                    }
                }
                State::ChunkEnd(seen) => {
                    // The CRLF after chunk data.
                    let want: &[u8] = b"\r\n";
                    while *seen < 2 && !bytes.is_empty() {
                        if bytes[0] != want[*seen] {
                            self.state = State::Off;
                            return;
                        }
                        *seen += 1;
                        bytes = &bytes[1..];
                    }
                    if *seen == 2 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::Trailers(line) => match take_line(line, &mut bytes) {
                    LineResult::More => {}
                    LineResult::TooLong => self.state = State::Off,
                    LineResult::Line(text) if text.is_empty() => {
                        self.state = State::Head(Vec::new())
                    }
                    LineResult::Line(_) => self.state = State::Trailers(Vec::new()),
                },
            }
        }
    }

    fn after_head(&self, head: &[u8]) -> State {
        // HTTP/2's preface (prior knowledge): binary frames follow. Recognised on the whole
        // head, so the verdict never depends on how the bytes were split into reads.
        if head.starts_with(b"PRI * HTTP/2.0\r\n") {
            return State::Off;
        }
        if !needs_parse(head) {
            return State::Head(Vec::new());
        }
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            // hyper rejects what httparse cannot parse; nothing left to follow.
            _ => return State::Off,
        }
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut transfer_encoding = false;
        let mut content_length = false;
        let mut upgrade = false;
        for header in request.headers.iter() {
            let value = std::str::from_utf8(header.value).unwrap_or("").trim();
            if header.name.eq_ignore_ascii_case("content-length") {
                content_length = true;
                length = value.parse().ok();
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                transfer_encoding = true;
                chunked = value
                    .rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            } else if header.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        if transfer_encoding && content_length {
            self.flag.raise();
        }
        if upgrade || request.method == Some("CONNECT") {
            return State::Off;
        }
        if transfer_encoding {
            // hyper refuses a final encoding other than chunked; nothing left to follow then.
            return if chunked {
                State::ChunkSize(Vec::new())
            } else {
                State::Off
            };
        }
        match (content_length, length) {
            (false, _) | (true, Some(0)) => State::Head(Vec::new()),
            (true, Some(n)) => State::Body(n),
            (true, None) => State::Off,
        }
    }
}

enum LineResult {
    More,
    TooLong,
    Line(String),
}

/// Moves bytes up to and including a LF into `line`; returns the line without CRLF when
/// complete.
fn take_line(line: &mut Vec<u8>, bytes: &mut &[u8]) -> LineResult {
    match bytes.iter().position(|b| *b == b'\n') {
        Some(end) => {
            line.extend_from_slice(&bytes[..end]);
            *bytes = &bytes[end + 1..];
            if line.ends_with(b"\r") {
                line.pop();
            }
            let text = String::from_utf8_lossy(line).into_owned();
            line.clear();
            LineResult::Line(text)
        }
        None => {
            line.extend_from_slice(bytes);
            *bytes = &[];
            if line.len() > MAX_LINE {
                LineResult::TooLong
            } else {
                LineResult::More
            }
        }
    }
}

/// Whether a head can say anything the watcher must act on: a body's framing, an upgrade,
/// CONNECT, or a folded line it would have to read closely. Most requests (a GET with a
/// dozen headers) say none of it, and one look at the start of each line shows that
/// without parsing the head again after hyper.
fn needs_parse(head: &[u8]) -> bool {
    if head.starts_with(b"CONNECT ") {
        return true;
    }
    head.split(|b| *b == b'\n').skip(1).any(|line| {
        let starts_with = |name: &[u8]| {
            line.get(..name.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(name))
        };
        matches!(line.first(), Some(b' ' | b'\t'))
            || starts_with(b"content-length")
            || starts_with(b"transfer-encoding")
            || starts_with(b"upgrade")
    })
}

fn find_head_end(head: &[u8]) -> Option<usize> {
    head.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// The client's connection, with every byte read also fed to a [`FramingWatcher`].
pub(crate) struct Watched<IO, F: Flag> {
    inner: IO,
    watcher: FramingWatcher<F>,
}

impl<IO, F: Flag> Watched<IO, F> {
    pub fn new(inner: IO, flag: F) -> Self {
        Self {
            inner,
            watcher: FramingWatcher::new(flag),
        }
    }
}

impl<IO: AsyncRead + Unpin, F: Flag + Unpin> AsyncRead for Watched<IO, F> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &result {
            self.watcher.feed(&buf.filled()[before..]);
        }
        result
    }
}

impl<IO: AsyncWrite + Unpin, F: Flag + Unpin> AsyncWrite for Watched<IO, F> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(chunks: &[&[u8]]) -> (bool, FramingWatcher<Arc<AtomicBool>>) {
        let flag = Arc::new(AtomicBool::new(false));
        let mut watcher = FramingWatcher::new(flag.clone());
        for chunk in chunks {
            watcher.feed(chunk);
        }
        (flag.load(Ordering::Acquire), watcher)
    }

    #[test]
    fn both_framing_headers_are_flagged_in_either_order() {
        assert!(watch(&[b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"]).0);
        assert!(
            watch(&[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"])
                .0
        );
    }

    #[test]
    fn body_bytes_that_look_like_a_head_are_not_mistaken_for_one() {
        let nested = b"POST /x HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        let mut request = format!(
            "POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            nested.len()
        )
        .into_bytes();
        request.extend_from_slice(nested);
        request.extend_from_slice(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
        let (flagged, watcher) = watch(&[&request]);
        assert!(!flagged);
        assert!(
            watcher.is_following(),
            "it kept following into the next request"
        );

        let chunked_body = format!("{:x}\r\n", nested.len());
        let mut request =
            b"POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        request.extend_from_slice(chunked_body.as_bytes());
        request.extend_from_slice(nested);
        request.extend_from_slice(b"\r\n0\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n");
        let (flagged, watcher) = watch(&[&request]);
        assert!(!flagged);
        assert!(watcher.is_following());
    }

    #[test]
    fn bytes_may_arrive_one_at_a_time() {
        let request = b"GET / HTTP/1.1\r\nhost: x\r\n\r\nPOST / HTTP/1.1\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n";
        let single: Vec<&[u8]> = request.chunks(1).collect();
        assert!(watch(&single).0);
    }

    #[test]
    fn only_heads_that_name_framing_upgrades_or_folds_are_parsed_again() {
        assert!(!needs_parse(
            b"GET /a HTTP/1.1\r\nhost: x\r\naccept: */*\r\nx-content-length: 3\r\n\r\n"
        ));
        assert!(needs_parse(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n"));
        assert!(needs_parse(
            b"POST / HTTP/1.1\r\nTRANSFER-ENCODING: chunked\r\n\r\n"
        ));
        assert!(needs_parse(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"));
        assert!(needs_parse(b"CONNECT x:443 HTTP/1.1\r\nhost: x\r\n\r\n"));
        assert!(needs_parse(
            b"GET / HTTP/1.1\r\nx-a: 1\r\n transfer-encoding: chunked\r\n\r\n"
        ));
    }

    #[test]
    fn http2_and_upgrades_are_not_followed() {
        let (_, watcher) = watch(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]);
        assert!(!watcher.is_following());
        let (_, watcher) = watch(&[
            b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
        ]);
        assert!(!watcher.is_following());
    }

    /// Random request streams built from the pieces smuggling attempts use, then random
    /// garbage: whatever the bytes, the watcher never panics and reaches the same verdict
    /// however the stream is split into reads (an attacker chooses the TCP segments).
    /// `BERTH_FUZZ_SECONDS` runs it longer; `BERTH_FUZZ_SEED` replays one seed.
    #[test]
    fn fuzz_any_split_of_any_stream_gets_the_same_verdict() {
        use rand::{Rng, SeedableRng};
        let seconds: f64 = std::env::var("BERTH_FUZZ_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1.0);
        let seed: u64 = std::env::var("BERTH_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let started = std::time::Instant::now();
        let pieces: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n",
            b"POST /upload HTTP/1.1\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"host: x\r\n",
            b"content-length: 5\r\n",
            b"Content-Length: 0\r\n",
            b"content-length: 99999999999999999999\r\n",
            b"transfer-encoding: chunked\r\n",
            b"Transfer-Encoding: gzip, chunked\r\n",
            b" transfer-encoding: chunked\r\n",
            b"x-a: 1\r\n\tcontent-length: 3\r\n",
            b"upgrade: websocket\r\nconnection: upgrade\r\n",
            b"\r\n",
            b"hello",
            b"5\r\nhello\r\n0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
            b"0;ext=1\r\ntrailer: x\r\n\r\n",
            b"\n",
            b"\r",
            b"\0",
        ];
        let mut cases = 0u64;
        while started.elapsed().as_secs_f64() < seconds {
            let mut stream = Vec::new();
            for _ in 0..rng.random_range(1..24) {
                if rng.random_bool(0.1) {
                    let garbage: Vec<u8> =
                        (0..rng.random_range(1..40)).map(|_| rng.random()).collect();
                    stream.extend_from_slice(&garbage);
                } else {
                    stream.extend_from_slice(pieces[rng.random_range(0..pieces.len())]);
                }
            }
            let (whole, _) = watch(&[&stream]);
            let mut cuts: Vec<usize> = (0..rng.random_range(1..8))
                .map(|_| rng.random_range(0..=stream.len()))
                .collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut at = 0;
            for cut in cuts {
                chunks.push(&stream[at..cut]);
                at = cut;
            }
            chunks.push(&stream[at..]);
            let (split, _) = watch(&chunks);
            assert_eq!(
                whole,
                split,
                "seed {seed}: the verdict depends on the split {:?} of {:?}",
                chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
                String::from_utf8_lossy(&stream)
            );
            cases += 1;
        }
        assert!(cases > 100, "seed {seed}: only {cases} cases ran");
    }
}
