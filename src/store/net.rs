//! What the network backends (S3 and presigned URLs) share: timeouts and the retry budget read from
//! the environment, the backoff schedule, the one TLS crypto provider (ring), the loopback rule for
//! plain `http://`, and a watchdog that turns a stalled transfer into a timeout.
//!
//! Retry policy (both backends): 5xx, 429/throttling, connection failures and timeouts are retried
//! with exponential backoff up to `LIFEBOAT_STORE_MAX_ATTEMPTS` attempts; any other 4xx is final at
//! once (a wrong key or an expired URL does not get better by asking again).

use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use crate::config::Env;
use crate::error::{Error, Result};

/// Timeouts and retry budget for one network backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// TCP + TLS connect.
    pub connect_timeout: Duration,
    /// One request until its response starts (sending its body included), and any pause while a
    /// response body streams.
    pub read_timeout: Duration,
    /// One operation with all its retries.
    pub operation_timeout: Duration,
    /// Attempts per operation, the first one included (1 = no retries).
    pub max_attempts: u32,
}

impl NetConfig {
    pub fn from_env(env: &Env) -> Result<Self> {
        let cfg = NetConfig {
            connect_timeout: env.duration("LIFEBOAT_STORE_CONNECT_TIMEOUT", "10s")?,
            read_timeout: env.duration("LIFEBOAT_STORE_READ_TIMEOUT", "2m")?,
            operation_timeout: env.duration("LIFEBOAT_STORE_OPERATION_TIMEOUT", "15m")?,
            max_attempts: env.u64("LIFEBOAT_STORE_MAX_ATTEMPTS", 5)? as u32,
        };
        for (name, d) in [
            ("LIFEBOAT_STORE_CONNECT_TIMEOUT", cfg.connect_timeout),
            ("LIFEBOAT_STORE_READ_TIMEOUT", cfg.read_timeout),
            ("LIFEBOAT_STORE_OPERATION_TIMEOUT", cfg.operation_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::Config(format!("{name}: must be more than 0")));
            }
        }
        if !(1..=20).contains(&cfg.max_attempts) {
            return Err(Error::Config(format!(
                "LIFEBOAT_STORE_MAX_ATTEMPTS: expected 1 to 20, got {}",
                cfg.max_attempts
            )));
        }
        Ok(cfg)
    }
}

/// Install ring as the process-wide rustls provider (reqwest is built without one). Idempotent; a
/// provider installed earlier by someone else is kept.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// `localhost`, `127.0.0.0/8` or `::1` (brackets allowed): the only hosts plain `http://` may name
/// when a URL carries a bearer credential.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// Delay before attempt `attempt + 1` (attempt counts from 1): 200 ms doubling, capped at 10 s,
/// with up to 25 % jitter so that parallel part uploads do not retry in lockstep.
pub fn backoff(attempt: u32) -> Duration {
    let base = 200u64.saturating_mul(1 << attempt.saturating_sub(1).min(10));
    let base = base.min(10_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    Duration::from_millis(base + (nanos % (base / 4 + 1)))
}

/// The last time a transfer made progress; shared between a body stream and its watchdog.
#[derive(Clone, Debug)]
pub struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
    pub fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle_deadline(&self, idle: Duration) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }
}

/// Run `fut` until it finishes, or until `activity` has not been touched for `idle`: then `None`.
pub async fn until_stalled<T>(
    fut: impl Future<Output = T>,
    activity: &Activity,
    idle: Duration,
) -> Option<T> {
    tokio::pin!(fut);
    loop {
        let deadline = activity.idle_deadline(idle);
        tokio::select! {
            r = &mut fut => return Some(r),
            _ = tokio::time::sleep_until(deadline.into()) => {
                if activity.idle_deadline(idle) <= Instant::now() {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "127.0.0.1",
            "127.8.9.1",
            "[::1]",
            "::1",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "10.0.0.1",
            "example.com",
            "localhost.example.com",
            "[::2]",
            "",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(
            backoff(1) >= Duration::from_millis(200) && backoff(1) <= Duration::from_millis(250)
        );
        assert!(backoff(3) >= Duration::from_millis(800));
        assert!(backoff(30) <= Duration::from_millis(12_500));
    }

    #[test]
    fn net_config_validates() {
        let env = Env::from_pairs([("LIFEBOAT_STORE_MAX_ATTEMPTS", "0")]);
        let e = NetConfig::from_env(&env).unwrap_err().to_string();
        assert!(e.contains("LIFEBOAT_STORE_MAX_ATTEMPTS"), "{e}");
        let env = Env::from_pairs([("LIFEBOAT_STORE_READ_TIMEOUT", "0s")]);
        let e = NetConfig::from_env(&env).unwrap_err().to_string();
        assert!(e.contains("LIFEBOAT_STORE_READ_TIMEOUT"), "{e}");
        let d = NetConfig::from_env(&Env::default()).unwrap();
        assert_eq!(d.max_attempts, 5);
    }

    #[tokio::test]
    async fn watchdog_fires_only_when_idle() {
        let a = Activity::new();
        a.touch();
        // Generous margins (touches 10x more often than `idle`) so a loaded CI machine cannot
        // stretch a touch interval past `idle`.
        let idle = Duration::from_millis(500);
        assert_eq!(until_stalled(async { 7 }, &a, idle).await, Some(7));
        let stalled = until_stalled(std::future::pending::<()>(), &a, idle).await;
        assert!(stalled.is_none());
        // Progress keeps it alive past `idle`.
        let a2 = a.clone();
        let busy = async move {
            for _ in 0..15 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                a2.touch();
            }
            1
        };
        a.touch();
        assert_eq!(until_stalled(busy, &a, idle).await, Some(1));
    }
}
