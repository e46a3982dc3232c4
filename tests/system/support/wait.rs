//! Waiting for a condition, bounded: tests wait for what they need to see,
//! never for a fixed time.

use std::{
    fmt::Debug,
    future::Future,
    time::{Duration, Instant},
};

/// How often a condition is looked at again.
const POLL: Duration = Duration::from_millis(20);

/// Looks at `check` until it gives `Ok`, at most `within`; past that,
/// panics saying what was awaited and what `check` saw last.
pub async fn wait_until<T, E, F, Fut>(what: &str, within: Duration, check: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    wait_until_every(what, within, POLL, check).await
}

/// [`wait_until`], looking again every `every` (for a check that costs
/// the system something, such as a rate-limited login).
pub async fn wait_until_every<T, E, F, Fut>(
    what: &str,
    within: Duration,
    every: Duration,
    mut check: F,
) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last seen: {last:?}")
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

/// [`wait_until`] for synchronous code.
pub fn wait_until_blocking<T, E: Debug>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last seen: {last:?}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}
