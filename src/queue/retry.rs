//! Jittered exponential backoff for transient queue errors. Permanent errors
//! (no such queue, access denied, bad input) are returned at once. Used
//! wherever queues are called: the worker parent and the CLI process.

use super::QueueError;
use rand::Rng;
use std::future::Future;
use std::time::Duration;

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    /// Tries in all, the first included.
    pub(crate) attempts: u32,
    /// Scale of the delays: retry N waits between `base`·2^(N-1) and
    /// `base`·2^N.
    pub(crate) base: Duration,
    /// Cap on the window (so a delay is at most this).
    pub(crate) max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (1-based): random between half
    /// and all of an exponentially growing window.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let window = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        let millis = window.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis.max(1)))
    }

    /// Run `op` until it succeeds, fails permanently, or runs out of attempts.
    pub(crate) async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, QueueError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, QueueError>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e) if e.is_transient() && attempt < self.attempts => {
                    let delay = self.delay(attempt);
                    tracing::warn!(operation = what, attempt, error = %e, delay_ms = delay.as_millis() as u64, "transient queue error; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast() -> Backoff {
        Backoff {
            attempts: 4,
            base: Duration::from_millis(1),
            max: Duration::from_millis(4),
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_then_given_up() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = fast()
            .run("t", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(QueueError::Transient("throttled".into()))
            })
            .await;
        assert!(r.unwrap_err().is_transient());
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried_and_success_stops() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = fast()
            .run("t", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(QueueError::NoSuchQueue("q".into()))
            })
            .await;
        assert_eq!(r, Err(QueueError::NoSuchQueue("q".into())));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let calls = AtomicU32::new(0);
        let r = fast()
            .run("t", || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(QueueError::Transient("reset".into()))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r, Ok(7));
    }

    #[test]
    fn delays_grow_and_stay_capped() {
        let b = Backoff::default();
        for attempt in 1..20 {
            assert!(b.delay(attempt) <= b.max);
        }
        assert!(b.delay(1) >= Duration::from_millis(100));
    }
}
