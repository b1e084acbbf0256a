//! Handing a running agent's listening sockets to the agent that replaces it, so that a
//! restart or an upgrade of berth never refuses a connection: both processes hold the very
//! same sockets (one listen queue), the new one starts accepting once its routes are back,
//! and only then does the old one stop and drain.
//!
//! The old agent offers the sockets on a unix socket in its private data directory, to the
//! one process it started itself (checked by the peer's credentials, not by the path). The
//! exchange is a few messages over `SOCK_SEQPACKET`, so each message arrives whole with the
//! descriptors attached to it:
//!
//! ```text
//! old → new   Listener { kind, name } + descriptors   (one per listener)
//! old → new   Offered
//! new → old   Received          the old agent releases the data directory's lock
//! old → new   Released          the new agent takes it, rebuilds its routes
//! new → old   Ready { pid }     the old agent stops accepting and drains
//! either      Failed { error }  the other side gives up and the old agent carries on
//! ```
//!
//! Also [`notify_systemd`]: the `sd_notify` datagram, for `Type=notify` units.

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use serde::{Deserialize, Serialize};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The largest message (JSON) either side sends.
const MAX_MESSAGE: usize = 64 * 1024;
/// Descriptors per message: the kernel takes at most 253 (SCM_MAX_FD); a listener with more
/// goes in several messages of the same name.
const MAX_FDS_PER_MESSAGE: usize = 240;

/// One step of the exchange (see the crate documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "message", rename_all = "snake_case")]
pub enum Message {
    /// A listener, its descriptors attached. `name` is the address as configured, so the
    /// new agent matches it with its own configuration.
    Listener { kind: String, name: String },
    /// Every listener was sent.
    Offered,
    /// The listeners arrived: release the data directory.
    Received,
    /// The data directory's lock is free.
    Released,
    /// The new agent serves: stop accepting and drain.
    Ready { pid: u32, version: String },
    /// Giving up, and why.
    Failed { error: String },
}

/// A listener received from the old agent.
#[derive(Debug)]
pub struct Listener {
    /// What it serves: the agent's own vocabulary ("http", "https", "api-unix", ...).
    pub kind: String,
    /// The address as the old agent was configured with it.
    pub name: String,
    /// Its sockets: several for a proxy address served by several event loops.
    pub fds: Vec<OwnedFd>,
}

/// A listener to offer: borrowed, the old agent keeps its own descriptors.
pub struct Offered<'a> {
    pub kind: &'a str,
    pub name: &'a str,
    pub fds: Vec<BorrowedFd<'a>>,
}

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("cannot {action}: {source}")]
    Io {
        action: &'static str,
        source: std::io::Error,
    },
    #[error(
        "process {pid} (uid {uid}) reached the hand-over socket, not the agent berth started (pid {expected}); refused"
    )]
    Stranger { pid: i32, uid: u32, expected: u32 },
    #[error("the other agent sent something unexpected: {0}")]
    Protocol(String),
    #[error("the other agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the other agent went away")]
    Closed,
    #[error("the other agent gave up: {0}")]
    Failed(String),
}

impl HandoverError {
    fn io(action: &'static str) -> impl Fn(Errno) -> HandoverError {
        move |errno| HandoverError::Io {
            action,
            source: errno.into(),
        }
    }
}

/// The old agent's side: a socket waiting for its successor. Removed when dropped.
pub struct Offer {
    socket: OwnedFd,
    path: PathBuf,
}

impl Offer {
    /// Listens at `path`, which must be in a directory only this user can enter.
    pub fn bind(path: &Path) -> Result<Offer, HandoverError> {
        // A leftover of an interrupted hand-over: this process holds the data directory.
        let _ = std::fs::remove_file(path);
        let socket = seqpacket_socket()?;
        let address =
            SocketAddrUnix::new(path).map_err(HandoverError::io("name the hand-over socket"))?;
        rustix::net::bind(&socket, &address)
            .map_err(HandoverError::io("bind the hand-over socket"))?;
        let offer = Offer {
            socket,
            path: path.to_owned(),
        };
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            HandoverError::Io {
                action: "restrict the hand-over socket",
                source: e,
            }
        })?;
        rustix::net::listen(&offer.socket, 1)
            .map_err(HandoverError::io("listen on the hand-over socket"))?;
        Ok(offer)
    }

    /// Waits up to `timeout` for the process `expected_pid` (the successor this agent
    /// started) to connect; anyone else is refused.
    pub fn accept(&self, expected_pid: u32, timeout: Duration) -> Result<Channel, HandoverError> {
        rustix::net::sockopt::set_socket_timeout(
            &self.socket,
            rustix::net::sockopt::Timeout::Recv,
            Some(timeout),
        )
        .map_err(HandoverError::io("set a timeout on the hand-over socket"))?;
        let socket = match rustix::net::accept_with(&self.socket, SocketFlags::CLOEXEC) {
            Ok(socket) => socket,
            Err(Errno::AGAIN) => return Err(HandoverError::Timeout(timeout)),
            Err(errno) => return Err(HandoverError::io("accept the new agent")(errno)),
        };
        let peer = rustix::net::sockopt::socket_peercred(&socket)
            .map_err(HandoverError::io("read the new agent's credentials"))?;
        let pid = peer.pid.as_raw_nonzero().get();
        if peer.uid != rustix::process::geteuid() || u32::try_from(pid).ok() != Some(expected_pid) {
            return Err(HandoverError::Stranger {
                pid,
                uid: peer.uid.as_raw(),
                expected: expected_pid,
            });
        }
        Ok(Channel { socket })
    }
}

impl Drop for Offer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One side of the exchange.
pub struct Channel {
    socket: OwnedFd,
}

impl Channel {
    /// The new agent's side: reaches the old agent's [`Offer`] at `path`.
    pub fn connect(path: &Path) -> Result<Channel, HandoverError> {
        let socket = seqpacket_socket()?;
        let address =
            SocketAddrUnix::new(path).map_err(HandoverError::io("name the hand-over socket"))?;
        rustix::net::connect(&socket, &address).map_err(HandoverError::io(
            "reach the running agent's hand-over socket",
        ))?;
        Ok(Channel { socket })
    }

    pub fn send(&self, message: &Message) -> Result<(), HandoverError> {
        self.send_with(message, &[])
    }

    fn send_with(&self, message: &Message, fds: &[BorrowedFd<'_>]) -> Result<(), HandoverError> {
        let bytes = serde_json::to_vec(message)
            .map_err(|e| HandoverError::Protocol(format!("cannot encode {message:?}: {e}")))?;
        let mut space =
            vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(HandoverError::Protocol(format!(
                "{} descriptors do not fit one message",
                fds.len()
            )));
        }
        let sent = rustix::net::sendmsg(
            &self.socket,
            &[IoSlice::new(&bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        );
        match sent {
            Ok(n) if n == bytes.len() => Ok(()),
            Ok(_) => Err(HandoverError::Protocol("a message was cut short".into())),
            Err(Errno::PIPE | Errno::CONNRESET) => Err(HandoverError::Closed),
            Err(errno) => Err(HandoverError::io("send to the other agent")(errno)),
        }
    }

    /// The next message and the descriptors that came with it (close-on-exec).
    pub fn receive(&self, timeout: Duration) -> Result<(Message, Vec<OwnedFd>), HandoverError> {
        rustix::net::sockopt::set_socket_timeout(
            &self.socket,
            rustix::net::sockopt::Timeout::Recv,
            Some(timeout),
        )
        .map_err(HandoverError::io("set a timeout on the hand-over socket"))?;
        let mut data = vec![0u8; MAX_MESSAGE];
        let mut space =
            vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = match rustix::net::recvmsg(
            &self.socket,
            &mut [IoSliceMut::new(&mut data)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(received) => received,
            Err(Errno::AGAIN) => return Err(HandoverError::Timeout(timeout)),
            Err(Errno::CONNRESET) => return Err(HandoverError::Closed),
            Err(errno) => return Err(HandoverError::io("receive from the other agent")(errno)),
        };
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if received.bytes == 0 {
            return Err(HandoverError::Closed);
        }
        if received
            .flags
            .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
        {
            return Err(HandoverError::Protocol(
                "a message or its descriptors were cut short".into(),
            ));
        }
        let message = serde_json::from_slice(&data[..received.bytes])
            .map_err(|e| HandoverError::Protocol(e.to_string()))?;
        if let Message::Failed { error } = message {
            return Err(HandoverError::Failed(error));
        }
        Ok((message, fds))
    }

    /// Waits for `expected` (its payload aside), or fails naming what came instead.
    pub fn expect(&self, expected: &Message, timeout: Duration) -> Result<Message, HandoverError> {
        let (message, _) = self.receive(timeout)?;
        if std::mem::discriminant(&message) != std::mem::discriminant(expected) {
            return Err(HandoverError::Protocol(format!(
                "expected {expected:?}, got {message:?}"
            )));
        }
        Ok(message)
    }

    /// The old agent's side: sends every listener, then [`Message::Offered`].
    pub fn offer(&self, listeners: &[Offered<'_>]) -> Result<(), HandoverError> {
        for listener in listeners {
            for chunk in listener.fds.chunks(MAX_FDS_PER_MESSAGE) {
                self.send_with(
                    &Message::Listener {
                        kind: listener.kind.to_owned(),
                        name: listener.name.to_owned(),
                    },
                    chunk,
                )?;
            }
        }
        self.send(&Message::Offered)
    }

    /// The new agent's side: every listener offered, merged by kind and name.
    pub fn take(&self, timeout: Duration) -> Result<Vec<Listener>, HandoverError> {
        let mut listeners: Vec<Listener> = Vec::new();
        loop {
            match self.receive(timeout)? {
                (Message::Listener { kind, name }, fds) => {
                    match listeners
                        .iter_mut()
                        .find(|l| l.kind == kind && l.name == name)
                    {
                        Some(listener) => listener.fds.extend(fds),
                        None => listeners.push(Listener { kind, name, fds }),
                    }
                }
                (Message::Offered, _) => return Ok(listeners),
                (other, _) => {
                    return Err(HandoverError::Protocol(format!(
                        "expected listeners, got {other:?}"
                    )));
                }
            }
        }
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

fn seqpacket_socket() -> Result<OwnedFd, HandoverError> {
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(HandoverError::io("create the hand-over socket"))
}

/// Sends `state` (such as `READY=1` or `MAINPID=1234`) to systemd when the process runs
/// under a `Type=notify` unit; `Ok(false)` when it does not.
pub fn notify_systemd(state: &str) -> std::io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(target) => notify(&target, state).map(|()| true),
        None => Ok(false),
    }
}

/// Sends `state` to the notification socket `target` (a path, or `@name` for an abstract one).
pub fn notify(target: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    if let Some(name) = target.as_encoded_bytes().strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(state.as_bytes(), &address)?;
    } else {
        socket.send_to(state.as_bytes(), Path::new(target))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    const SECOND: Duration = Duration::from_secs(5);

    #[test]
    fn listeners_pass_to_the_successor_and_keep_their_queue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handover.sock");
        let offer = Offer::bind(&path).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        // A client queued before the hand-over is accepted by the successor.
        let queued = std::net::TcpStream::connect(address).unwrap();
        let api = std::os::unix::net::UnixListener::bind(dir.path().join("api.sock")).unwrap();

        let successor = std::thread::spawn({
            let path = path.clone();
            move || {
                let channel = Channel::connect(&path).unwrap();
                let listeners = channel.take(SECOND).unwrap();
                channel.send(&Message::Received).unwrap();
                channel.expect(&Message::Released, SECOND).unwrap();
                channel
                    .send(&Message::Ready {
                        pid: std::process::id(),
                        version: "test".into(),
                    })
                    .unwrap();
                listeners
            }
        });
        let channel = offer.accept(std::process::id(), SECOND).unwrap();
        channel
            .offer(&[
                Offered {
                    kind: "http",
                    name: "127.0.0.1:0",
                    fds: vec![listener.as_fd(), listener.as_fd()],
                },
                Offered {
                    kind: "api-unix",
                    name: "unix:/x",
                    fds: vec![api.as_fd()],
                },
            ])
            .unwrap();
        channel.expect(&Message::Received, SECOND).unwrap();
        channel.send(&Message::Released).unwrap();
        let ready = channel.expect(
            &Message::Ready {
                pid: 0,
                version: String::new(),
            },
            SECOND,
        );
        assert!(matches!(ready, Ok(Message::Ready { .. })), "{ready:?}");
        let mut listeners = successor.join().unwrap();
        assert_eq!(listeners.len(), 2);
        assert_eq!(
            (listeners[0].kind.as_str(), listeners[0].name.as_str()),
            ("http", "127.0.0.1:0")
        );
        assert_eq!(listeners[0].fds.len(), 2);
        assert_eq!(listeners[1].fds.len(), 1);

        drop(listener);
        let received = std::net::TcpListener::from(listeners[0].fds.remove(0));
        assert_eq!(received.local_addr().unwrap(), address);
        let (_, peer) = received.accept().unwrap();
        assert_eq!(peer, queued.local_addr().unwrap());
        drop(offer);
        assert!(!path.exists(), "the socket is removed with the offer");
    }

    #[test]
    fn only_the_expected_process_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handover.sock");
        let offer = Offer::bind(&path).unwrap();
        let _stranger = Channel::connect(&path).unwrap();
        match offer.accept(std::process::id() + 1, SECOND) {
            Err(HandoverError::Stranger { pid, .. }) => {
                assert_eq!(pid as u32, std::process::id())
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("a stranger was served"),
        }
        let mode = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn silence_and_departure_are_errors_not_hangs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handover.sock");
        let offer = Offer::bind(&path).unwrap();
        let short = Duration::from_millis(200);
        assert!(matches!(
            offer.accept(std::process::id(), short),
            Err(HandoverError::Timeout(_))
        ));
        let client = Channel::connect(&path).unwrap();
        let server = offer.accept(std::process::id(), SECOND).unwrap();
        assert!(matches!(
            server.receive(short),
            Err(HandoverError::Timeout(_))
        ));
        client
            .send(&Message::Failed {
                error: "no Docker".into(),
            })
            .unwrap();
        match server.receive(SECOND) {
            Err(HandoverError::Failed(error)) => assert_eq!(error, "no Docker"),
            other => panic!("{other:?}"),
        }
        drop(client);
        assert!(matches!(server.receive(SECOND), Err(HandoverError::Closed)));
    }

    #[test]
    fn systemd_gets_one_datagram_per_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        notify(path.as_os_str(), "READY=1").unwrap();
        notify(path.as_os_str(), "MAINPID=42").unwrap();
        let mut buffer = [0u8; 64];
        let n = systemd.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"READY=1");
        let n = systemd.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"MAINPID=42");
    }
}
