//! Token buckets for login and sign-up, per client address and per
//! (account, address).
//!
//! Policy (documented in README): every login or sign-up attempt takes a
//! token from its client address's bucket; a failed login also takes one
//! from the (account, address) bucket. There is deliberately no bucket per
//! account alone: anyone could empty it and lock the account's owner out.
//! An attacker can only exhaust buckets keyed by addresses they send from,
//! so the owner, from their own address, can always log in.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// A set of token buckets of one shape.
pub struct Limiter {
    capacity: f64,
    per_second: f64,
    max_keys: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    /// `capacity` tokens, refilled at `capacity` per `period`.
    pub fn new(capacity: u32, period: Duration, max_keys: usize) -> Limiter {
        Limiter {
            capacity: f64::from(capacity),
            per_second: f64::from(capacity) / period.as_secs_f64(),
            max_keys,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn with_bucket<T>(&self, key: &str, now: Instant, f: impl FnOnce(&mut Bucket) -> T) -> T {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= self.max_keys && !buckets.contains_key(key) {
            // Forget full buckets first: they carry no information.
            let (capacity, per_second) = (self.capacity, self.per_second);
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * per_second < capacity
            });
            if buckets.len() >= self.max_keys {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.capacity,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.capacity);
        bucket.updated = now;
        f(bucket)
    }

    fn wait_for_one(&self, tokens: f64) -> Duration {
        Duration::from_secs_f64(((1.0 - tokens) / self.per_second).max(0.0))
    }

    /// Takes a token, or says how long until one is available.
    pub fn take(&self, key: &str) -> Result<(), Duration> {
        self.take_at(key, Instant::now())
    }

    pub fn take_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        self.with_bucket(key, now, |b| {
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                Ok(())
            } else {
                Err(self.wait_for_one(b.tokens))
            }
        })
    }

    /// Whether a token is available, without taking it.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.with_bucket(key, Instant::now(), |b| {
            if b.tokens >= 1.0 {
                Ok(())
            } else {
                Err(self.wait_for_one(b.tokens))
            }
        })
    }
}

/// Retry-After in whole seconds, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_empty_and_refill() {
        let l = Limiter::new(3, Duration::from_secs(3), 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.take_at("a", t0).is_ok());
        }
        let wait = l.take_at("a", t0).unwrap_err();
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::from_millis(900),
            "{wait:?}"
        );
        // Another key is unaffected.
        assert!(l.take_at("b", t0).is_ok());
        // One second later one token is back.
        assert!(l.take_at("a", t0 + Duration::from_secs(1)).is_ok());
        assert!(l.take_at("a", t0 + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn the_key_set_is_bounded() {
        let l = Limiter::new(1, Duration::from_secs(60), 10);
        let t0 = Instant::now();
        for i in 0..100 {
            let _ = l.take_at(&format!("k{i}"), t0);
        }
        assert!(l.buckets.lock().unwrap().len() <= 10);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2100)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
