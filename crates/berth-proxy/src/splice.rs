//! An upgraded connection (a WebSocket, usually) spliced between a client and an upstream,
//! and its proper end when the upstream's release goes away.
//!
//! Bytes flow both ways untouched. For a WebSocket, the upstream-to-client direction is
//! followed frame by frame (headers parsed, payloads skipped), so that when the drain limit
//! of an old release ends, berth can wait for the frame in flight to finish and then send
//! the client a close frame of its own (1012, "service restart": browsers and client
//! libraries reconnect at once, to the new release) and close with FIN, never a reset.

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long a frame in flight may take to finish once closing has begun.
const FINISH_FRAME: Duration = Duration::from_secs(5);
/// How long the client has to answer the close frame before the connection is dropped.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(5);

/// The close code berth sends: 1012, the server is restarting (RFC 6455 registry).
pub(crate) const SERVICE_RESTART: u16 = 1012;

/// Follows WebSocket frames in one direction to know where one ends.
#[derive(Debug, Default)]
pub(crate) struct FrameTracker {
    /// Header bytes collected for the frame that starts next.
    header: Vec<u8>,
    /// Payload bytes left of the current frame.
    payload_left: u64,
}

impl FrameTracker {
    /// Feeds bytes that passed, in order.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len() as u64);
                self.payload_left -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            self.header.push(bytes[0]);
            bytes = &bytes[1..];
            if let Some(payload) = header_complete(&self.header) {
                self.header.clear();
                self.payload_left = payload;
            }
        }
    }

    /// Whether the bytes so far end exactly at a frame boundary.
    pub(crate) fn at_boundary(&self) -> bool {
        self.header.is_empty() && self.payload_left == 0
    }
}

/// The payload length once `header` is a whole frame header, else `None`.
fn header_complete(header: &[u8]) -> Option<u64> {
    if header.len() < 2 {
        return None;
    }
    let masked = header[1] & 0x80 != 0;
    let (length, used) = match header[1] & 0x7f {
        126 if header.len() >= 4 => (u64::from(u16::from_be_bytes([header[2], header[3]])), 4),
        127 if header.len() >= 10 => {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&header[2..10]);
            (u64::from_be_bytes(bytes), 10)
        }
        126 | 127 => return None,
        n => (u64::from(n), 2),
    };
    let total = used + if masked { 4 } else { 0 };
    (header.len() >= total).then_some(length)
}

/// A close frame from the server side (unmasked): `code`, then `reason`.
pub(crate) fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(120)];
    let mut frame = vec![0x88, (2 + reason.len()) as u8];
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason);
    frame
}

/// Splices `client` and `upstream` until either side ends, or `closing` resolves: then a
/// WebSocket gets a close frame at the next frame boundary and both sides a FIN; any other
/// upgraded protocol just the FINs.
pub(crate) async fn splice<C, U>(
    mut client: C,
    mut upstream: U,
    closing: impl std::future::Future<Output = ()>,
    websocket: bool,
) -> std::io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    tokio::pin!(closing);
    let mut tracker = FrameTracker::default();
    let mut from_client = vec![0u8; 16 * 1024];
    let mut from_upstream = vec![0u8; 16 * 1024];
    let (mut client_open, mut upstream_open) = (true, true);
    let mut closing_since: Option<tokio::time::Instant> = None;
    loop {
        if !client_open && !upstream_open {
            return Ok(());
        }
        if let Some(since) = closing_since
            && (!websocket || tracker.at_boundary() || since.elapsed() >= FINISH_FRAME)
        {
            return close(client, upstream, websocket && tracker.at_boundary()).await;
        }
        let finish_frame = async {
            match closing_since {
                Some(since) => tokio::time::sleep_until(since + FINISH_FRAME).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = client.read(&mut from_client), if client_open => match read? {
                0 => {
                    client_open = false;
                    upstream.shutdown().await?;
                }
                n => upstream.write_all(&from_client[..n]).await?,
            },
            read = upstream.read(&mut from_upstream), if upstream_open => match read? {
                0 => {
                    upstream_open = false;
                    client.shutdown().await?;
                }
                n => {
                    client.write_all(&from_upstream[..n]).await?;
                    if websocket {
                        tracker.feed(&from_upstream[..n]);
                    }
                }
            },
            () = &mut closing, if closing_since.is_none() => {
                closing_since = Some(tokio::time::Instant::now());
            }
            () = finish_frame => {}
        }
    }
}

/// Ends a spliced connection properly: the close frame (when at a boundary), FIN to the
/// client, then waits a moment for its answer so the close is clean rather than a reset.
async fn close<C, U>(mut client: C, mut upstream: U, send_close: bool) -> std::io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let _ = upstream.shutdown().await;
    drop(upstream);
    if send_close {
        client
            .write_all(&close_frame(
                SERVICE_RESTART,
                "berth: restarting, reconnect",
            ))
            .await?;
        client.flush().await?;
    }
    client.shutdown().await?;
    // Read (and drop) what the client still sends, its close frame included, until it
    // closes too: closing a socket with unread data would send a reset.
    let mut sink = vec![0u8; 4096];
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
        while let Ok(n) = client.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload_len: usize, masked: bool) -> Vec<u8> {
        let mut frame = vec![0x82];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload_len {
            n if n < 126 => frame.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                frame.push(mask_bit | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(mask_bit | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            frame.extend_from_slice(&[1, 2, 3, 4]);
        }
        frame.extend(std::iter::repeat_n(b'x', payload_len));
        frame
    }

    #[test]
    fn frames_of_every_length_form_are_followed_in_any_split() {
        let mut stream = Vec::new();
        for (len, masked) in [
            (0, false),
            (5, false),
            (125, true),
            (126, false),
            (70_000, false),
        ] {
            stream.extend(frame(len, masked));
        }
        for chunk in [1, 3, 7, 1000, stream.len()] {
            let mut tracker = FrameTracker::default();
            let mut boundaries = 0;
            for piece in stream.chunks(chunk) {
                for byte in piece.chunks(1) {
                    tracker.feed(byte);
                    if tracker.at_boundary() {
                        boundaries += 1;
                    }
                }
            }
            assert!(tracker.at_boundary(), "chunk {chunk}");
            assert_eq!(boundaries, 5, "one boundary after each frame");
        }
        let mut tracker = FrameTracker::default();
        tracker.feed(&frame(200, false)[..50]);
        assert!(!tracker.at_boundary(), "in the middle of a frame");
    }

    #[test]
    fn the_close_frame_is_a_well_formed_server_frame() {
        let frame = close_frame(SERVICE_RESTART, "bye");
        assert_eq!(frame, [0x88, 5, 0x03, 0xf4, b'b', b'y', b'e']);
        let mut tracker = FrameTracker::default();
        tracker.feed(&frame);
        assert!(tracker.at_boundary());
    }

    #[tokio::test]
    async fn closing_waits_for_the_frame_in_flight_then_sends_a_close_frame_and_a_fin() {
        let (client_end, proxy_client) = tokio::io::duplex(1 << 20);
        let (proxy_upstream, mut upstream_end) = tokio::io::duplex(1 << 20);
        let (closing_tx, mut closing) = tokio::sync::watch::channel(false);
        let closing = async move {
            let _ = closing.wait_for(|c| *c).await.map(|_| ());
        };
        let spliced = tokio::spawn(splice(proxy_client, proxy_upstream, closing, true));
        let (mut client_read, mut client_write) = tokio::io::split(client_end);
        // Half of a frame arrives, then closing begins: the frame is finished first.
        let whole = frame(10, false);
        upstream_end.write_all(&whole[..6]).await.unwrap();
        let mut got = vec![0u8; 6];
        client_read.read_exact(&mut got).await.unwrap();
        closing_tx.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        upstream_end.write_all(&whole[6..]).await.unwrap();
        let mut rest = vec![0u8; whole.len() - 6];
        client_read.read_exact(&mut rest).await.unwrap();
        // Then berth's close frame, then EOF.
        let mut tail = Vec::new();
        client_write.shutdown().await.unwrap();
        client_read.read_to_end(&mut tail).await.unwrap();
        assert_eq!(
            tail,
            close_frame(SERVICE_RESTART, "berth: restarting, reconnect")
        );
        spliced.await.unwrap().unwrap();
    }
}
