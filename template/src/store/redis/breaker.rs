//! The circuit breaker in front of Redis for calls that can do without it: after a failure, they
//! skip Redis for a moment instead of each waiting for its timeout.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("a cached entry is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("Redis failed a moment ago; not asked again yet")]
    Resting,
}

/// For calls that can do without Redis (cache reads and fills, shared rate limits): after Redis
/// fails to answer, they skip it, and once a second one call tries it again, alone, until one
/// succeeds. An outage then costs such a path one slow call a second, not one per request.
/// Mutations never skip Redis: their cache entries must be fenced off.
#[derive(Debug)]
pub(crate) struct Breaker {
    rest: Duration,
    /// Set after a failure: until when every call skips Redis.
    resting_until: Mutex<Option<Instant>>,
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new(Duration::from_secs(1))
    }
}

impl Breaker {
    pub(crate) fn new(rest: Duration) -> Self {
        Self { rest, resting_until: Mutex::new(None) }
    }

    /// Runs `call` unless Redis is resting. A connection failure or timeout starts a rest; a
    /// success ends it.
    pub(crate) async fn call<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, CacheError> {
        if !self.may_call() {
            return Err(CacheError::Resting);
        }
        let result = call.await;
        match &result {
            Ok(_) => *self.lock() = None,
            // Connection refused, dropped or timed out: all I/O errors in redis-rs.
            Err(err) if err.is_io_error() => *self.lock() = Some(Instant::now() + self.rest),
            Err(_) => {}
        }
        Ok(result?)
    }

    /// Whether this call goes to Redis. When a rest ends, the first caller probes and the rest
    /// restarts for everyone else: if Redis is still away, only that caller waits for it.
    fn may_call(&self) -> bool {
        let mut resting_until = self.lock();
        match *resting_until {
            None => true,
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                *resting_until = Some(Instant::now() + self.rest);
                true
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Instant>> {
        self.resting_until.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use tokio::sync::Notify;

    use super::*;

    fn refused() -> redis::RedisError {
        redis::RedisError::from(io::Error::from(io::ErrorKind::ConnectionRefused))
    }

    #[tokio::test]
    async fn a_refused_connection_rests_redis_and_other_errors_do_not() {
        let breaker = Breaker::default();
        let failed = breaker.call(async { Err::<(), _>(refused()) }).await;
        assert!(matches!(failed, Err(CacheError::Redis(_))));
        let mut asked = false;
        let skipped = breaker
            .call(async {
                asked = true;
                Ok(())
            })
            .await;
        assert!(matches!(skipped, Err(CacheError::Resting)));
        assert!(!asked, "Redis is not asked while resting");

        let answered = Breaker::default();
        let wrong_type =
            redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "not a number"));
        let _ = answered.call(async { Err::<(), _>(wrong_type) }).await;
        assert!(answered.call(async { Ok(()) }).await.is_ok());
    }

    #[tokio::test]
    async fn after_a_rest_one_call_tries_redis_alone() {
        let breaker = Breaker::new(Duration::from_millis(20));
        let _ = breaker.call(async { Err::<(), _>(refused()) }).await;
        tokio::time::sleep(Duration::from_millis(30)).await;

        // The probe is still waiting for Redis when another call comes: that one skips it.
        let answer = Notify::new();
        let probe = breaker.call(async {
            answer.notified().await;
            Ok(())
        });
        let other = async {
            tokio::task::yield_now().await;
            let skipped = breaker.call(async { Ok(()) }).await;
            answer.notify_one();
            skipped
        };
        let (probed, skipped) = tokio::join!(probe, other);
        assert!(probed.is_ok());
        assert!(matches!(skipped, Err(CacheError::Resting)));
        assert!(breaker.call(async { Ok(()) }).await.is_ok(), "a success ends the rest");
    }
}
