//! Per-route limits: a rate per client address (a token bucket per route and address), and
//! how many requests a route serves at once.

use crate::admission::ClientKey;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A route's limiters, kept across route-table rebuilds (a deploy) so that neither the
/// buckets nor the count of requests in progress start again from zero.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteLimiters {
    pub rate: Option<Arc<RateLimiter>>,
    pub concurrency: Option<Arc<ConcurrencyLimit>>,
}

/// How many requests a route serves at once.
#[derive(Debug)]
pub(crate) struct ConcurrencyLimit {
    max: AtomicUsize,
    active: AtomicUsize,
}

impl ConcurrencyLimit {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: AtomicUsize::new(max),
            active: AtomicUsize::new(0),
        })
    }

    /// A new deploy may change the limit; requests in progress keep counting.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// A permit for one more request, held until it ends; `None` at the limit.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConcurrencyPermit> {
        let max = self.max.load(Ordering::Relaxed);
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |active| {
                (active < max).then_some(active + 1)
            })
            .ok()
            .map(|_| ConcurrencyPermit(Arc::clone(self)))
    }

    #[cfg(test)]
    fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }
}

/// One request counted against its route's [`ConcurrencyLimit`] until dropped.
#[derive(Debug)]
pub(crate) struct ConcurrencyPermit(Arc<ConcurrencyLimit>);

impl Drop for ConcurrencyPermit {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `requests` per `per`, with bursts up to `requests`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
}

/// Token buckets per client, keyed like connection caps (an IPv4 address, or an IPv6 /64: a
/// client picks any address in its /64 at will), in shards so that requests rarely wait on
/// one another, each shard bounded. Idle buckets are dropped by [`RateLimiter::sweep`], which
/// the proxy runs in the background, never on a request's path.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    shards: [Mutex<HashMap<ClientKey, Bucket>>; SHARDS],
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

const SHARDS: usize = 16;
/// Buckets one shard holds at most (65,536 clients in all); past it, an arbitrary bucket makes
/// room. A full bucket is no different from a forgotten one, so this only lets a client that
/// was idle start afresh.
const MAX_PER_SHARD: usize = 4096;

/// Buckets idle this long are forgotten: by then they would be full again anyway.
const FORGET_AFTER: Duration = Duration::from_secs(600);

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    fn shard(&self, key: &ClientKey) -> &Mutex<HashMap<ClientKey, Bucket>> {
        let bits = match *key {
            ClientKey::V4(v4) => u64::from(v4),
            ClientKey::V6Prefix(prefix) => prefix,
        };
        // A multiplicative hash: neighbouring addresses land in different shards.
        let index = (bits.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize;
        &self.shards[index % SHARDS]
    }

    /// Takes a token for `client`; `Err(wait)` says how long until one is available.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let capacity = f64::from(self.limit.requests.max(1));
        let rate = capacity / self.limit.per.as_secs_f64().max(0.001);
        let key = ClientKey::of(client);
        let mut buckets = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_PER_SHARD
            && !buckets.contains_key(&key)
            && let Some(victim) = buckets.keys().next().copied()
        {
            buckets.remove(&victim);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        bucket.tokens = (bucket.tokens
            + now.saturating_duration_since(bucket.last).as_secs_f64() * rate)
            .min(capacity);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    /// Forgets buckets idle for ten minutes, one shard at a time.
    pub fn sweep(&self, now: Instant) {
        for shard in &self.shards {
            let mut buckets = shard.lock().unwrap_or_else(|p| p.into_inner());
            buckets.retain(|_, bucket| now.saturating_duration_since(bucket.last) < FORGET_AFTER);
        }
    }

    #[cfg(test)]
    fn clients(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_permits_are_counted_until_dropped() {
        let limit = ConcurrencyLimit::new(2);
        let first = limit.try_acquire().expect("first");
        let second = limit.try_acquire().expect("second");
        assert!(limit.try_acquire().is_none(), "third is over the limit");
        drop(first);
        let third = limit.try_acquire().expect("a permit was given back");
        limit.set_max(1);
        assert!(limit.try_acquire().is_none(), "lowered limit");
        drop((second, third));
        assert_eq!(limit.active(), 0);
        assert!(limit.try_acquire().is_some());
    }

    #[test]
    fn a_burst_is_allowed_then_the_rate_applies() {
        let limiter = RateLimiter::new(RateLimit {
            requests: 3,
            per: Duration::from_secs(3),
        });
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(client, t0).is_ok());
        }
        let wait = limiter.check(client, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(
            limiter.check(other, t0).is_ok(),
            "clients have their own buckets"
        );
        assert!(
            limiter.check(client, t0 + Duration::from_secs(1)).is_ok(),
            "one token per second refills"
        );
        assert!(limiter.check(client, t0 + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn an_ipv6_client_is_one_bucket_however_many_addresses_it_uses() {
        let limiter = RateLimiter::new(RateLimit {
            requests: 2,
            per: Duration::from_secs(60),
        });
        let t0 = Instant::now();
        assert!(
            limiter
                .check("2001:db8:1:2::1".parse().unwrap(), t0)
                .is_ok()
        );
        assert!(
            limiter
                .check("2001:db8:1:2::2".parse().unwrap(), t0)
                .is_ok()
        );
        assert!(
            limiter
                .check("2001:db8:1:2:ffff::3".parse().unwrap(), t0)
                .is_err(),
            "a third address in the same /64 shares the bucket"
        );
        assert!(
            limiter
                .check("2001:db8:1:3::1".parse().unwrap(), t0)
                .is_ok()
        );
    }

    #[test]
    fn buckets_are_bounded_and_idle_ones_are_swept() {
        let limiter = RateLimiter::new(RateLimit {
            requests: 5,
            per: Duration::from_secs(1),
        });
        let t0 = Instant::now();
        for n in 0..100_000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            assert!(limiter.check(ip, t0).is_ok());
        }
        assert!(
            limiter.clients() <= SHARDS * MAX_PER_SHARD,
            "{}",
            limiter.clients()
        );
        limiter.sweep(t0 + Duration::from_secs(60));
        assert!(limiter.clients() > 0, "recent buckets stay");
        limiter.sweep(t0 + FORGET_AFTER);
        assert_eq!(limiter.clients(), 0, "idle ones go");
    }
}
