//! Body-less requests (most GETs, HEADs and DELETEs) forwarded to an upstream over HTTP/1.1 by
//! the proxy itself, on a pooled socket that the request's own task writes and reads.
//!
//! Why not hyper's client for these: it drives each connection from a task of its own and
//! hands every request, response head and body chunk across channels to it, which was most of
//! what a small proxied request cost. Requests with a body and upgrades still go through
//! hyper's client: it copes with an upstream that answers before reading the body, and it
//! hands over upgraded connections.
//!
//! The response side follows RFC 9112 section 6.3 for framing: no body for HEAD, 1xx, 204 and
//! 304; chunked when Transfer-Encoding ends in chunked; else Content-Length; else until the
//! upstream closes. A connection is reused only when its response ended cleanly, the upstream
//! did not ask to close it and nothing unasked for followed the response.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::{Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Largest response head accepted from an upstream.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;
/// Longest chunk-size line or trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// A keep-alive connection to an upstream, with what was read from it and not yet used.
pub(crate) struct Connection {
    stream: TcpStream,
    buf: BytesMut,
}

/// Why an exchange produced no response.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Not one byte came back: the upstream may have closed the connection before it read the
    /// request, so an idempotent request can be sent again.
    NoResponse(String),
    /// The upstream answered with something that is not a usable HTTP/1.1 response.
    Invalid(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NoResponse(message) | Failure::Invalid(message) => f.write_str(message),
        }
    }
}

/// A response body that could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the upstream closed the connection {0} bytes before the end of the response body")]
    Truncated(u64),
    #[error("the upstream closed the connection in the middle of a chunked response body")]
    TruncatedChunked,
    #[error("the upstream's chunked response body is malformed: {0}")]
    Chunked(&'static str),
    #[error("reading the upstream's response failed: {0}")]
    Io(#[from] io::Error),
}

/// The request line and header fields of a body-less request, as written upstream. Names and
/// values were validated when they were parsed (or built by the proxy), so they are copied
/// as they are.
pub(crate) struct RequestHead {
    bytes: Vec<u8>,
    content_length: bool,
}

impl RequestHead {
    pub(crate) fn new(method: &Method, path_and_query: &str) -> Self {
        let mut bytes = Vec::with_capacity(512);
        bytes.extend_from_slice(method.as_str().as_bytes());
        bytes.push(b' ');
        bytes.extend_from_slice(path_and_query.as_bytes());
        bytes.extend_from_slice(b" HTTP/1.1\r\n");
        Self {
            bytes,
            content_length: false,
        }
    }

    pub(crate) fn field(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.content_length |= name == header::CONTENT_LENGTH;
        self.bytes.extend_from_slice(name.as_str().as_bytes());
        self.bytes.extend_from_slice(b": ");
        self.bytes.extend_from_slice(value.as_bytes());
        self.bytes.extend_from_slice(b"\r\n");
    }

    pub(crate) fn finish(mut self, method: &Method) -> Bytes {
        // A POST or PUT without a body still says so, as hyper's client would.
        let expects_body = !matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::DELETE
                | Method::OPTIONS
                | Method::TRACE
                | Method::CONNECT
        );
        if expects_body && !self.content_length {
            self.bytes.extend_from_slice(b"content-length: 0\r\n");
        }
        self.bytes.extend_from_slice(b"\r\n");
        Bytes::from(self.bytes)
    }
}

impl Connection {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Whether a pooled connection can carry another request: the upstream has not closed it
    /// nor sent anything unasked while it sat idle. No system call unless the socket became
    /// readable meanwhile.
    pub(crate) fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable: an end of stream, an error, stray bytes, or a stale readiness flag.
            Poll::Ready(Ok(())) => self.poll_fill(&mut cx).is_pending(),
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }

    /// Sends a request head and reads the response head; the body is read as the returned
    /// [`ResponseBody`] is polled. `method` is the request's, which decides whether the
    /// response can have a body.
    pub(crate) async fn exchange(
        mut self,
        head: &[u8],
        method: &Method,
    ) -> Result<(http::response::Parts, ResponseBody), Failure> {
        if let Err(error) = self.stream.write_all(head).await {
            return Err(Failure::NoResponse(format!(
                "writing the request to the upstream failed: {error}"
            )));
        }
        let mut received = false;
        loop {
            if let Some(parsed) = self.parse_head()? {
                match parsed {
                    Head::Interim => {}
                    Head::Final(mut parts) => {
                        let (framing, keep_alive) = framing(&mut parts, method)?;
                        let body = ResponseBody {
                            connection: Some(self),
                            framing,
                            keep_alive,
                        };
                        return Ok((parts, body));
                    }
                }
                continue;
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(Failure::Invalid(format!(
                    "the upstream's response head is larger than {} KiB",
                    MAX_HEAD / 1024
                )));
            }
            match std::future::poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) if !received => {
                    return Err(Failure::NoResponse(
                        "the upstream closed the connection without answering".into(),
                    ));
                }
                Ok(0) => {
                    return Err(Failure::Invalid(
                        "the upstream closed the connection in the middle of the response head"
                            .into(),
                    ));
                }
                Ok(_) => received = true,
                Err(error) if !received => {
                    return Err(Failure::NoResponse(format!(
                        "reading the upstream's response failed: {error}"
                    )));
                }
                Err(error) => {
                    return Err(Failure::Invalid(format!(
                        "reading the upstream's response failed: {error}"
                    )));
                }
            }
        }
    }

    /// Parses a complete response head from the buffer, consuming it; `None` if more bytes
    /// are needed.
    fn parse_head(&mut self) -> Result<Option<Head>, Failure> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        // Left uninitialised: zeroing 128 headers would cost more than parsing a small head.
        let mut headers =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            &self.buf,
            &mut headers,
        );
        let length = match parsed {
            Ok(httparse::Status::Partial) => return Ok(None),
            Ok(httparse::Status::Complete(length)) => length,
            Err(error) => {
                return Err(Failure::Invalid(format!(
                    "the upstream sent an invalid response head: {error}"
                )));
            }
        };
        let code = response.code.unwrap_or_default();
        let status = StatusCode::from_u16(code).map_err(|_| {
            Failure::Invalid(format!("the upstream answered with status code {code}"))
        })?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(Failure::Invalid(
                    "the upstream switched protocols though the request asked for no upgrade"
                        .into(),
                ));
            }
            // 100 Continue, 103 Early Hints: interim, not passed on (as hyper's client does).
            self.buf.advance(length);
            return Ok(Some(Head::Interim));
        }
        let version = if response.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Where each name and value lies in the head, so that once the head is split off the
        // buffer the values can share its bytes instead of each being copied.
        let base = self.buf.as_ptr() as usize;
        // httparse's slices point into the buffer; an empty one may not, and needs no bytes.
        let offset = |part: &[u8]| {
            (part.as_ptr() as usize)
                .checked_sub(base)
                .filter(|start| start + part.len() <= length)
                .unwrap_or(0)
        };
        let count = response.headers.len();
        let mut few = [(0usize, 0usize, 0usize, 0usize); 32];
        let mut many = Vec::new();
        let fields: &mut [(usize, usize, usize, usize)] = if count <= few.len() {
            &mut few[..count]
        } else {
            many.resize(count, (0, 0, 0, 0));
            &mut many
        };
        for (field, slot) in response.headers.iter().zip(fields.iter_mut()) {
            let name = offset(field.name.as_bytes());
            let value = offset(field.value);
            *slot = (
                name,
                name + field.name.len(),
                value,
                value + field.value.len(),
            );
            if slot.1 > length || slot.3 > length {
                return Err(Failure::Invalid(
                    "the upstream's response head could not be read".into(),
                ));
            }
        }
        let head = self.buf.split_to(length).freeze();
        let mut map = HeaderMap::with_capacity(count);
        for &(name_start, name_end, value_start, value_end) in fields.iter() {
            let name = HeaderName::from_bytes(&head[name_start..name_end]).map_err(|_| {
                Failure::Invalid(format!(
                    "the upstream sent an invalid header name {:?}",
                    String::from_utf8_lossy(&head[name_start..name_end])
                ))
            })?;
            let value = HeaderValue::from_maybe_shared(head.slice(value_start..value_end))
                .map_err(|_| {
                    Failure::Invalid(format!(
                        "the upstream sent an invalid value for header {name}"
                    ))
                })?;
            map.append(name, value);
        }
        let mut parts = http::Response::new(()).into_parts().0;
        parts.status = status;
        parts.version = version;
        parts.headers = map;
        Ok(Some(Head::Final(parts)))
    }
}

enum Head {
    Interim,
    Final(http::response::Parts),
}

/// How the response body is delimited, and whether the connection may be reused after it.
fn framing(parts: &mut http::response::Parts, method: &Method) -> Result<(Framing, bool), Failure> {
    // One pass over the fields rather than a hashed lookup for each name.
    let (mut close, mut keep_alive_token) = (false, false);
    let mut transfer_encoding: Option<&HeaderValue> = None;
    let mut content_length: Option<u64> = None;
    let mut content_length_valid = true;
    for (name, value) in &parts.headers {
        if name == header::CONNECTION {
            for token in value.to_str().unwrap_or_default().split(',') {
                close |= token.trim().eq_ignore_ascii_case("close");
                keep_alive_token |= token.trim().eq_ignore_ascii_case("keep-alive");
            }
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = Some(value);
        } else if name == header::CONTENT_LENGTH {
            // Repeated (or listed) values must all agree.
            for item in value.to_str().unwrap_or("x").split(',') {
                let item = item.trim();
                let parsed = item
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| item.parse::<u64>().ok())
                    .flatten();
                match (parsed, content_length) {
                    (Some(n), None) => content_length = Some(n),
                    (Some(n), Some(seen)) if n == seen => {}
                    _ => content_length_valid = false,
                }
            }
        }
    }
    let keep_alive = !close && (parts.version == Version::HTTP_11 || keep_alive_token);
    if *method == Method::HEAD
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Length(0), keep_alive));
    }
    if let Some(codings) = transfer_encoding {
        let chunked = codings
            .to_str()
            .ok()
            .and_then(|codings| codings.rsplit(',').next())
            .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        // With both, Transfer-Encoding wins and the connection is not trusted again.
        let both = parts.headers.remove(header::CONTENT_LENGTH).is_some();
        return Ok(if chunked {
            (Framing::Chunked(Chunked::Size), keep_alive && !both)
        } else {
            (Framing::UntilClose, false)
        });
    }
    if !content_length_valid {
        return Err(Failure::Invalid(
            "the upstream sent an invalid or conflicting Content-Length".into(),
        ));
    }
    Ok(match content_length {
        Some(length) => (Framing::Length(length), keep_alive),
        None => (Framing::UntilClose, false),
    })
}

enum Framing {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunked),
    /// Everything until the upstream closes the connection.
    UntilClose,
    /// Ended cleanly.
    Done,
}

/// Where a chunked decoder is.
enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes still to come.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: skipping trailer fields up to the empty line.
    Trailers(usize),
}

/// An upstream's response body, read from the connection as it is polled. Holds the
/// connection until the end, then gives it back for reuse if it can be.
pub(crate) struct ResponseBody {
    connection: Option<Connection>,
    framing: Framing,
    keep_alive: bool,
}

impl ResponseBody {
    /// A body that has ended, without a connection (what is left once one was taken).
    pub(crate) fn ended() -> Self {
        Self {
            connection: None,
            framing: Framing::Done,
            keep_alive: false,
        }
    }

    /// The connection, if the body ended cleanly and the connection can carry another request.
    pub(crate) fn into_reusable(mut self) -> Option<Connection> {
        let ended = matches!(self.framing, Framing::Done | Framing::Length(0));
        self.connection
            .take()
            .filter(|c| ended && self.keep_alive && c.buf.is_empty())
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(remaining) => SizeHint::with_exact(remaining),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(connection) = self.connection.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            let buffered = connection.buf.len() as u64;
            match &mut self.framing {
                Framing::Done | Framing::Length(0) => return Poll::Ready(None),
                Framing::Length(remaining) => {
                    if buffered > 0 {
                        let take = buffered.min(*remaining);
                        *remaining -= take;
                        return Poll::Ready(Some(Ok(data(&mut connection.buf, take))));
                    }
                    let remaining = *remaining;
                    if ready!(connection.poll_fill(cx))? == 0 {
                        return Poll::Ready(Some(Err(BodyError::Truncated(remaining))));
                    }
                }
                Framing::UntilClose => {
                    if buffered > 0 {
                        return Poll::Ready(Some(Ok(data(&mut connection.buf, buffered))));
                    }
                    if ready!(connection.poll_fill(cx))? == 0 {
                        self.framing = Framing::Done;
                        self.keep_alive = false;
                        return Poll::Ready(None);
                    }
                }
                Framing::Chunked(state) => {
                    match decode_chunked(state, &mut connection.buf) {
                        Ok(Decoded::Data(length)) => {
                            return Poll::Ready(Some(Ok(data(&mut connection.buf, length))));
                        }
                        Ok(Decoded::End) => {
                            self.framing = Framing::Done;
                            return Poll::Ready(None);
                        }
                        Ok(Decoded::Progress) => continue,
                        Ok(Decoded::NeedMore) => {}
                        Err(problem) => return Poll::Ready(Some(Err(BodyError::Chunked(problem)))),
                    }
                    if ready!(connection.poll_fill(cx))? == 0 {
                        return Poll::Ready(Some(Err(BodyError::TruncatedChunked)));
                    }
                }
            }
        }
    }
}

fn data(buf: &mut BytesMut, length: u64) -> Frame<Bytes> {
    let length = usize::try_from(length).unwrap_or(usize::MAX).min(buf.len());
    Frame::data(buf.split_to(length).freeze())
}

enum Decoded {
    /// This many bytes at the front of the buffer are chunk data.
    Data(u64),
    /// The state moved on; decode again.
    Progress,
    /// The buffer holds too little to move on.
    NeedMore,
    /// The last chunk and the trailers were read.
    End,
}

fn decode_chunked(state: &mut Chunked, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
    match state {
        Chunked::Size => {
            let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                return if buf.len() > MAX_CHUNK_LINE {
                    Err("a chunk-size line is too long")
                } else {
                    Ok(Decoded::NeedMore)
                };
            };
            let line = &buf[..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            // Extensions after `;` are allowed and ignored.
            let digits = line.split(|&b| b == b';').next().unwrap_or_default();
            let digits = digits.trim_ascii();
            if digits.is_empty() || digits.len() > 15 {
                return Err("a chunk size is missing or too large");
            }
            let mut size: u64 = 0;
            for &digit in digits {
                let value = (digit as char)
                    .to_digit(16)
                    .ok_or("a chunk size is not hexadecimal")?;
                size = size * 16 + u64::from(value);
            }
            buf.advance(end + 1);
            *state = if size == 0 {
                Chunked::Trailers(0)
            } else {
                Chunked::Data(size)
            };
            Ok(Decoded::Progress)
        }
        Chunked::Data(remaining) => {
            if buf.is_empty() {
                return Ok(Decoded::NeedMore);
            }
            let take = (buf.len() as u64).min(*remaining);
            *remaining -= take;
            if *remaining == 0 {
                *state = Chunked::DataEnd;
            }
            Ok(Decoded::Data(take))
        }
        Chunked::DataEnd => {
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
            } else if buf.starts_with(b"\n") {
                buf.advance(1);
            } else if buf.is_empty() || &buf[..] == b"\r" {
                return Ok(Decoded::NeedMore);
            } else {
                return Err("a chunk's data is not followed by CRLF");
            }
            *state = Chunked::Size;
            Ok(Decoded::Progress)
        }
        Chunked::Trailers(seen) => {
            let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                return if *seen + buf.len() > MAX_TRAILERS {
                    Err("the trailer section is too large")
                } else {
                    Ok(Decoded::NeedMore)
                };
            };
            let blank = end == 0 || (end == 1 && buf[0] == b'\r');
            buf.advance(end + 1);
            if blank {
                return Ok(Decoded::End);
            }
            // Trailer fields are dropped: clients of a web app do not rely on them.
            *seen += end + 1;
            Ok(Decoded::Progress)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// An upstream that reads one request head and answers with `pieces`, written one at a
    /// time with pauses so the proxy sees them split across reads. Returns what it received.
    async fn upstream(
        pieces: Vec<&'static [u8]>,
        close: bool,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut received = Vec::new();
            let mut buf = [0u8; 4096];
            while !received.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                received.extend_from_slice(&buf[..n]);
            }
            for piece in pieces {
                socket.write_all(piece).await.unwrap();
                socket.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            if !close {
                // Keep the connection open until the test is done with it.
                let _ = socket.read(&mut buf).await;
            }
            received
        });
        (addr, task)
    }

    fn encode_request_head(parts: &http::request::Parts) -> Bytes {
        let mut head =
            RequestHead::new(&parts.method, parts.uri.path_and_query().unwrap().as_str());
        for (name, value) in &parts.headers {
            head.field(name, value);
        }
        head.finish(&parts.method)
    }

    fn get(path: &str) -> http::request::Parts {
        let mut parts = http::Request::new(()).into_parts().0;
        parts.uri = path.parse().unwrap();
        parts
            .headers
            .insert(header::HOST, HeaderValue::from_static("app.test"));
        parts
    }

    async fn read_all(body: &mut ResponseBody) -> Result<Vec<u8>, BodyError> {
        let mut out = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| body.poll_frame(cx)).await {
            if let Ok(data) = frame?.into_data() {
                out.extend_from_slice(&data);
            }
        }
        Ok(out)
    }

    async fn exchange(
        pieces: Vec<&'static [u8]>,
        close: bool,
        method: Method,
    ) -> (
        Result<(http::response::Parts, ResponseBody), Failure>,
        tokio::task::JoinHandle<Vec<u8>>,
    ) {
        let (addr, task) = upstream(pieces, close).await;
        let connection = Connection::new(TcpStream::connect(addr).await.unwrap());
        let mut parts = get("/items?page=2");
        parts.method = method;
        let head = encode_request_head(&parts);
        (connection.exchange(&head, &parts.method).await, task)
    }

    #[tokio::test]
    async fn request_heads_are_written_as_http_1_1() {
        let mut parts = get("/a%20b?x=1");
        parts
            .headers
            .append("x-many", HeaderValue::from_static("1"));
        parts
            .headers
            .append("x-many", HeaderValue::from_static("2"));
        let head = encode_request_head(&parts);
        assert_eq!(
            &head[..],
            b"GET /a%20b?x=1 HTTP/1.1\r\nhost: app.test\r\nx-many: 1\r\nx-many: 2\r\n\r\n"
        );
        parts.method = Method::POST;
        let head = encode_request_head(&parts);
        assert!(head.ends_with(b"content-length: 0\r\n\r\n"));
    }

    #[tokio::test]
    async fn a_content_length_body_split_across_reads_is_read_and_the_connection_reused() {
        let (result, task) = exchange(
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Le",
                b"ngth: 11\r\nX-A: b\r\n\r\nhello",
                b" world",
            ],
            false,
            Method::GET,
        )
        .await;
        let (parts, mut body) = result.unwrap();
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(parts.headers["x-a"], "b");
        assert_eq!(body.size_hint().exact(), Some(11));
        assert_eq!(read_all(&mut body).await.unwrap(), b"hello world");
        assert!(body.is_end_stream());
        let mut connection = body.into_reusable().expect("reusable");
        assert!(connection.is_usable());
        drop(task);
    }

    #[tokio::test]
    async fn chunked_bodies_with_extensions_and_trailers_are_decoded() {
        let (result, _task) = exchange(
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"5;name=value\r\nhel",
                b"lo\r\n6\r\n world\r",
                b"\n0\r\nX-Checksum: 1\r\n",
                b"\r\n",
            ],
            false,
            Method::GET,
        )
        .await;
        let (parts, mut body) = result.unwrap();
        assert!(parts.headers.contains_key(header::TRANSFER_ENCODING));
        assert_eq!(read_all(&mut body).await.unwrap(), b"hello world");
        assert!(body.into_reusable().is_some());
    }

    #[tokio::test]
    async fn a_body_until_close_ends_with_the_connection_which_is_not_reused() {
        let (result, task) = exchange(
            vec![b"HTTP/1.0 200 OK\r\n\r\nstreamed ", b"until close"],
            true,
            Method::GET,
        )
        .await;
        let (parts, mut body) = result.unwrap();
        assert_eq!(parts.version, Version::HTTP_10);
        assert_eq!(read_all(&mut body).await.unwrap(), b"streamed until close");
        assert!(body.into_reusable().is_none());
        let received = task.await.unwrap();
        assert!(received.starts_with(b"GET /items?page=2 HTTP/1.1\r\nhost: app.test\r\n"));
    }

    #[tokio::test]
    async fn head_204_and_304_responses_have_no_body_whatever_they_declare() {
        let (result, _task) = exchange(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"],
            false,
            Method::HEAD,
        )
        .await;
        let (parts, body) = result.unwrap();
        assert_eq!(parts.headers[header::CONTENT_LENGTH], "1234");
        assert!(body.is_end_stream());
        assert!(body.into_reusable().is_some());
        for status in ["204 No Content", "304 Not Modified"] {
            let response: &'static [u8] =
                format!("HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .leak()
                    .as_bytes();
            let (result, _task) = exchange(vec![response], false, Method::GET).await;
            let (_, body) = result.unwrap();
            assert!(body.is_end_stream(), "{status}");
        }
    }

    #[tokio::test]
    async fn interim_responses_are_skipped() {
        let (result, _task) = exchange(
            vec![
                b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
                b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            ],
            false,
            Method::GET,
        )
        .await;
        let (parts, mut body) = result.unwrap();
        assert_eq!(parts.status, StatusCode::CREATED);
        assert!(!parts.headers.contains_key(header::LINK));
        assert_eq!(read_all(&mut body).await.unwrap(), b"ok");
    }

    #[tokio::test]
    async fn connection_close_and_conflicting_framing_stop_reuse() {
        let (result, _task) = exchange(
            vec![b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"],
            false,
            Method::GET,
        )
        .await;
        let (_, mut body) = result.unwrap();
        read_all(&mut body).await.unwrap();
        assert!(body.into_reusable().is_none());

        let (result, _task) = exchange(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
            false,
            Method::GET,
        )
        .await;
        let (parts, mut body) = result.unwrap();
        assert!(!parts.headers.contains_key(header::CONTENT_LENGTH));
        assert_eq!(read_all(&mut body).await.unwrap(), b"ok");
        assert!(body.into_reusable().is_none());

        let (result, _task) = exchange(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"],
            false,
            Method::GET,
        )
        .await;
        let (_, mut body) = result.unwrap();
        assert_eq!(read_all(&mut body).await.unwrap(), b"ok");
        assert!(body.into_reusable().is_none(), "bytes after the response");
    }

    #[tokio::test]
    async fn broken_responses_are_named() {
        let cases: Vec<(Vec<&'static [u8]>, &str)> = vec![
            (vec![b"garbage\r\n\r\n"], "invalid response head"),
            (
                vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n"],
                "Content-Length",
            ),
            (
                vec![b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n"],
                "Content-Length",
            ),
            (
                vec![b"HTTP/1.1 101 Switching Protocols\r\n\r\n"],
                "switched protocols",
            ),
            (
                vec![b"HTTP/1.1 200 OK\r\nContent-"],
                "middle of the response head",
            ),
            (vec![], "without answering"),
        ];
        for (pieces, expected) in cases {
            let (result, _task) = exchange(pieces, true, Method::GET).await;
            let failure = result.err().expect("a failure");
            assert!(
                failure.to_string().contains(expected),
                "{failure} lacks {expected:?}"
            );
            assert_eq!(
                matches!(failure, Failure::NoResponse(_)),
                expected == "without answering",
                "{failure}"
            );
        }
    }

    #[tokio::test]
    async fn truncated_and_malformed_bodies_are_errors() {
        let (result, _task) = exchange(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"],
            true,
            Method::GET,
        )
        .await;
        let (_, mut body) = result.unwrap();
        let error = read_all(&mut body).await.unwrap_err();
        assert!(matches!(error, BodyError::Truncated(5)), "{error}");
        assert!(body.into_reusable().is_none());

        let (result, _task) = exchange(
            vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
            true,
            Method::GET,
        )
        .await;
        let (_, mut body) = result.unwrap();
        assert!(matches!(
            read_all(&mut body).await,
            Err(BodyError::Chunked(_))
        ));

        let (result, _task) = exchange(
            vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"],
            true,
            Method::GET,
        )
        .await;
        let (_, mut body) = result.unwrap();
        assert!(matches!(
            read_all(&mut body).await,
            Err(BodyError::TruncatedChunked)
        ));
    }

    #[tokio::test]
    async fn a_pooled_connection_the_upstream_closed_is_not_usable() {
        let (result, task) = exchange(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
            true,
            Method::GET,
        )
        .await;
        let (_, body) = result.unwrap();
        let mut connection = body.into_reusable().expect("clean end");
        task.await.unwrap();
        // The upstream's FIN arrives asynchronously.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while connection.is_usable() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(!connection.is_usable());
    }
}
