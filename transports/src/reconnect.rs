//! Reconnecting with capped exponential backoff and jitter.

use std::net::SocketAddr;
use std::time::Duration;

use tracing::{debug, warn};

use crate::error::ConnectError;
use crate::link::Connection;
use crate::rng::SplitMix64;
use crate::settings::SettingsError;
use crate::{Protocol, Transport};

/// Most attempts [`connect_with_backoff`] accepts, so that no caller loops forever.
pub const ATTEMPTS_LIMIT: u32 = 1_000_000;

/// Delays between connection attempts: `initial · 2ⁿ`, capped at `max`, each
/// shortened by a random fraction up to `jitter` so that many edges that
/// lost the same server do not come back in lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: f64,
    attempt: u32,
    rng: SplitMix64,
}

impl Backoff {
    /// A backoff from `initial` up to `max` with `jitter` in `[0, 1]`, whose
    /// jitter is drawn from `seed` (use a fixed seed in simulations).
    pub fn new(
        initial: Duration,
        max: Duration,
        jitter: f64,
        seed: u64,
    ) -> Result<Self, SettingsError> {
        if initial.is_zero() || initial > max {
            return Err(SettingsError {
                field: "backoff.initial",
                problem: format!("{initial:?} must be above zero and at most backoff.max {max:?}"),
            });
        }
        if max > crate::settings::TIMEOUT_LIMIT {
            return Err(SettingsError {
                field: "backoff.max",
                problem: format!("{max:?} is more than a day"),
            });
        }
        if !(0.0..=1.0).contains(&jitter) {
            return Err(SettingsError {
                field: "backoff.jitter",
                problem: format!("{jitter} is not in [0, 1]"),
            });
        }
        Ok(Backoff {
            initial,
            max,
            jitter,
            attempt: 0,
            rng: SplitMix64::new(seed),
        })
    }

    /// 100 ms doubling up to 10 s, half jitter, seeded from process entropy.
    pub fn standard() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            jitter: 0.5,
            attempt: 0,
            rng: SplitMix64::new(SplitMix64::entropy_seed()),
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32 << self.attempt.min(30);
        let base = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        base.mul_f64(1.0 - self.jitter * self.rng.next_f64())
    }

    /// Back to `initial`, after a link stayed up.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Dials `addr` until a link is up or `max_attempts` attempts failed,
/// sleeping [`Backoff::next_delay`] between attempts. Refusals that need an
/// operator (certificates, versions) end the loop at once. Returns the last
/// error.
pub async fn connect_with_backoff<P: Protocol, T: Transport<P>>(
    transport: &T,
    addr: SocketAddr,
    server_name: &str,
    backoff: &mut Backoff,
    max_attempts: u32,
) -> Result<Connection<P>, ConnectError> {
    let max_attempts = max_attempts.clamp(1, ATTEMPTS_LIMIT);
    let mut attempt = 1;
    loop {
        match transport.connect(addr, server_name).await {
            Ok(connection) => {
                backoff.reset();
                return Ok(connection);
            }
            Err(e) if !e.is_transient() => {
                warn!(%addr, server_name, error = %e, "connection refused for good; not retrying");
                return Err(e);
            }
            Err(e) if attempt >= max_attempts => {
                warn!(%addr, server_name, attempts = attempt, error = %e, "giving up connecting");
                return Err(e);
            }
            Err(e) => {
                let delay = backoff.next_delay();
                debug!(%addr, server_name, attempt, ?delay, error = %e, "connect failed; retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_capped_and_jittered() {
        let mut b =
            Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 0.5, 3).unwrap();
        let delays: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let base = Duration::from_millis(100 * (1 << i.min(10))).min(Duration::from_secs(1));
            assert!(
                *d <= base && *d >= base / 2,
                "attempt {i}: {d:?} vs base {base:?}"
            );
        }
        assert!(delays[7] >= Duration::from_millis(500));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
        let mut same =
            Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 0.5, 3).unwrap();
        assert_eq!(same.next_delay(), delays[0], "a seed reproduces the jitter");
    }

    #[test]
    fn invalid_backoff_is_refused() {
        assert_eq!(
            Backoff::new(Duration::ZERO, Duration::from_secs(1), 0.5, 0)
                .unwrap_err()
                .field,
            "backoff.initial"
        );
        assert_eq!(
            Backoff::new(Duration::from_secs(2), Duration::from_secs(1), 0.5, 0)
                .unwrap_err()
                .field,
            "backoff.initial"
        );
        assert_eq!(
            Backoff::new(Duration::from_secs(1), Duration::from_secs(1), 1.5, 0)
                .unwrap_err()
                .field,
            "backoff.jitter"
        );
    }
}
