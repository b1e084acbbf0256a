//! Address space for the apps' networks. Each app gets its own bridge network; left to
//! Docker, those come from its default address pools, which hold 31 networks on a stock
//! engine, so the 32nd app could not be deployed. berth instead gives each app a /24 of a
//! range it manages (10.213.0.0/16 unless told otherwise: 256 apps), skipping every subnet a
//! Docker network or a host route already uses.

use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network, `ADDRESS/PREFIX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    base: u32,
    prefix: u8,
}

impl Ipv4Net {
    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        (prefix <= 32).then(|| Self {
            base: u32::from(addr) & Self::mask(prefix),
            prefix,
        })
    }

    fn first(self) -> u32 {
        self.base
    }

    fn last(self) -> u32 {
        self.base | !Self::mask(self.prefix)
    }

    pub fn overlaps(self, other: Ipv4Net) -> bool {
        self.first() <= other.last() && other.first() <= self.last()
    }

    /// The networks of `prefix` inside this one, in order.
    pub fn subnets(self, prefix: u8) -> impl Iterator<Item = Ipv4Net> {
        let count = if prefix < self.prefix || prefix > 32 {
            0
        } else {
            1u64 << (prefix - self.prefix)
        };
        let step = 1u64 << (32 - u32::from(prefix));
        (0..count).filter_map(move |i| {
            let base = u64::from(self.base) + i * step;
            u32::try_from(base)
                .ok()
                .map(|base| Ipv4Net { base, prefix })
        })
    }
}

impl FromStr for Ipv4Net {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not ADDRESS/PREFIX, such as 10.213.0.0/16"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("`{prefix}` is not a prefix length from 0 to 32"))?;
        Ipv4Net::new(addr, prefix).ok_or_else(|| format!("`{text}` is not a network"))
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

/// The range berth takes app networks from unless told otherwise.
pub fn default_range() -> Ipv4Net {
    Ipv4Net {
        base: u32::from(Ipv4Addr::new(10, 213, 0, 0)),
        prefix: 16,
    }
}

/// The prefix length of each app's network.
pub const APP_PREFIX: u8 = 24;

/// The first /24 of `range` that overlaps nothing in `taken`; with `pick`, the free one at
/// that position (modulo their number), so that racing agents spread out.
pub fn choose(range: Ipv4Net, taken: &[Ipv4Net], pick: Option<usize>) -> Option<Ipv4Net> {
    let mut free = range
        .subnets(APP_PREFIX)
        .filter(|candidate| !taken.iter().any(|t| t.overlaps(*candidate)));
    match pick {
        None => free.next(),
        Some(n) => {
            let free: Vec<Ipv4Net> = free.collect();
            (!free.is_empty()).then(|| free[n % free.len()])
        }
    }
}

/// The host's IPv4 routes (from /proc/net/route), as networks: a Docker network must not
/// shadow a route the host uses (a VPN, a LAN).
pub fn host_routes() -> Vec<Ipv4Net> {
    let Ok(text) = std::fs::read_to_string("/proc/net/route") else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let destination = u32::from_str_radix(fields.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(fields.get(7)?, 16).ok()?;
            // The default route (0.0.0.0/0) covers everything; it is no reason to skip.
            if mask == 0 {
                return None;
            }
            // Little-endian in the file.
            let destination = Ipv4Addr::from(destination.swap_bytes());
            let prefix = mask.count_ones() as u8;
            Ipv4Net::new(destination, prefix)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    #[test]
    fn networks_parse_print_and_overlap() {
        assert_eq!(net("10.213.7.9/16").to_string(), "10.213.0.0/16");
        assert!(net("10.0.0.0/8").overlaps(net("10.213.4.0/24")));
        assert!(!net("10.213.4.0/24").overlaps(net("10.213.5.0/24")));
        assert!("10.0.0.0".parse::<Ipv4Net>().is_err());
        assert!("10.0.0.0/33".parse::<Ipv4Net>().is_err());
        assert_eq!(net("10.213.0.0/16").subnets(24).count(), 256);
    }

    #[test]
    fn each_app_gets_the_first_free_24() {
        let range = net("10.213.0.0/16");
        assert_eq!(choose(range, &[], None), Some(net("10.213.0.0/24")));
        let taken = [
            net("10.213.0.0/24"),
            net("10.213.1.0/25"),
            net("172.17.0.0/16"),
        ];
        assert_eq!(choose(range, &taken, None), Some(net("10.213.2.0/24")));
        // After a race lost to another agent: another free one, never a taken one.
        assert_eq!(choose(range, &taken, Some(1)), Some(net("10.213.3.0/24")));
        assert_eq!(choose(range, &taken, Some(254)), Some(net("10.213.2.0/24")));
        // A host route over part of the range (a VPN) is skipped whole.
        let taken = [net("10.213.0.0/20")];
        assert_eq!(choose(range, &taken, None), Some(net("10.213.16.0/24")));
        let full: Vec<Ipv4Net> = range.subnets(24).collect();
        assert_eq!(choose(range, &full, None), None, "every /24 taken");
        assert_eq!(choose(range, &full, Some(3)), None);
    }
}
