//! Claiming a listening address for one proxy. The proxy's event loops share their address
//! through SO_REUSEPORT, and the kernel would let any other process of the same user join
//! them and take half the connections (a second agent, `berth up` beside a running one,
//! nginx with `reuseport`). Before binding, the proxy claims the address: a lock no other
//! process can take while this one lives (an abstract unix socket named after the address,
//! released by the kernel when the process dies), and a probe that refuses an address some
//! other program already answers on, naming it.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::time::Duration;

/// The address is taken; says by whom, when that can be found out.
#[derive(Debug, thiserror::Error)]
#[error("it is already served by {holder}")]
pub struct AddressTaken {
    pub addr: SocketAddr,
    pub holder: String,
}

/// Held while the proxy serves the address.
pub struct AddressClaim {
    lock: std::os::unix::net::UnixListener,
}

impl AddressClaim {
    /// A claim handed over by the agent this one replaces (the same socket: the claim never
    /// lapses in between).
    pub fn inherited(fd: std::os::fd::OwnedFd) -> Self {
        AddressClaim {
            lock: std::os::unix::net::UnixListener::from(fd),
        }
    }

    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.lock.as_fd()
    }
}

/// Claims `addr` for this process (see the module documentation).
pub fn claim(addr: SocketAddr) -> Result<AddressClaim, AddressTaken> {
    let claimed = lock(addr)?;
    if answers(addr) {
        return Err(AddressTaken {
            addr,
            holder: holder_of(addr).unwrap_or_else(|| "another program".to_owned()),
        });
    }
    Ok(claimed)
}

/// Takes only the lock for `addr`: for an address this process has just bound itself
/// (port 0 became a real port), where the probe would find this very process.
pub fn lock(addr: SocketAddr) -> Result<AddressClaim, AddressTaken> {
    let name = format!("berth-listen-{addr}");
    let lock = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .and_then(|abstract_addr| std::os::unix::net::UnixListener::bind_addr(&abstract_addr));
    match lock {
        Ok(lock) => Ok(AddressClaim { lock }),
        Err(_) => Err(AddressTaken {
            addr,
            holder: holder_of(addr).unwrap_or_else(|| "another berth agent".to_owned()),
        }),
    }
}

/// Whether something accepts connections at `addr` (a wildcard address is tried on
/// loopback).
fn answers(addr: SocketAddr) -> bool {
    let mut target = addr;
    if addr.ip().is_unspecified() {
        target.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        });
    }
    if target.port() == 0 {
        return false;
    }
    TcpStream::connect_timeout(&target, Duration::from_millis(300)).is_ok()
}

/// `PROGRAM (pid N)` of the process listening on `addr`'s port, from /proc (needs the right
/// to look at that process's descriptors: root, or the same user).
fn holder_of(addr: SocketAddr) -> Option<String> {
    let inode = listening_inode(addr.port())?;
    let wanted = format!("socket:[{inode}]");
    for process in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = process.file_name();
        let Some(pid) = pid
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == wanted.as_str()) {
                let program = std::fs::read_to_string(process.path().join("comm"))
                    .map(|c| c.trim().to_owned())
                    .unwrap_or_else(|_| "a program".to_owned());
                return Some(format!("{program} (pid {pid})"));
            }
        }
    }
    None
}

/// The inode of a listening TCP socket on `port`, from /proc/net/tcp and tcp6.
fn listening_inode(port: u16) -> Option<String> {
    let port_hex = format!("{port:04X}");
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if fields.len() > 9
                && fields[3] == "0A"
                && fields[1].rsplit(':').next() == Some(port_hex.as_str())
            {
                return Some(fields[9].to_owned());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_address_cannot_be_claimed_again_and_the_holder_is_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Something else answers there: refused, naming this very process.
        let taken = claim(addr).err().expect("refused");
        assert!(
            taken
                .holder
                .contains(&format!("pid {}", std::process::id())),
            "{taken}"
        );
        drop(listener);
        let first = claim(addr).expect("free now");
        let again = claim(addr).err().expect("claimed once only");
        assert!(again.to_string().contains("already served by"), "{again}");
        drop(first);
        assert!(claim(addr).is_ok(), "released with its claim");
    }
}
