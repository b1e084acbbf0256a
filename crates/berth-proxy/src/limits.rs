//! Per-route limits: a rate per client address (a token bucket per route and address), and
//! how many requests a route serves at once.

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

#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// Buckets idle this long are forgotten, so memory follows the active clients.
const FORGET_AFTER: Duration = Duration::from_secs(600);

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes a token for `client`; `Err(wait)` says how long until one is available.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let capacity = f64::from(self.limit.requests.max(1));
        let rate = capacity / self.limit.per.as_secs_f64().max(0.001);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 10_000 {
            buckets.retain(|_, (_, seen)| now.duration_since(*seen) < FORGET_AFTER);
        }
        let (tokens, last) = buckets.entry(client).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(capacity);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
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
}
