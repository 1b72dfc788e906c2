//! Log lines an outsider can cause (refused peer messages and links, forged
//! epoch claims, unauthorized admin calls, refused clients), as counts per
//! interval: the first of a kind in an interval is logged at once, the rest
//! are counted and summarized in one line when the interval ends. So each
//! kind costs at most two lines per [`THROTTLE_INTERVAL`], however hard
//! someone pushes. The exact counts are metrics.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often a kind of throttled line may appear (plus one summary).
pub const THROTTLE_INTERVAL: Duration = Duration::from_secs(10);
/// Distinct kinds kept; further ones share the kind `other`.
pub const MAX_THROTTLED_KINDS: usize = 32;
/// Longest detail kept for a summary, in bytes.
pub const MAX_DETAIL_BYTES: usize = 300;

#[derive(Debug)]
struct Kind {
    what: &'static str,
    /// Occurrences in this interval.
    count: u64,
    /// The latest occurrence's detail (for the summary).
    last: String,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    kinds: Vec<Kind>,
}

/// Rate-limits log lines per kind (thread-safe; shared by the driver, the
/// peer links and the admin API).
#[derive(Debug)]
pub struct LogThrottle {
    interval: Duration,
    window: Mutex<Window>,
}

impl Default for LogThrottle {
    fn default() -> Self {
        LogThrottle::new(THROTTLE_INTERVAL)
    }
}

fn clip(mut s: String) -> String {
    if s.len() > MAX_DETAIL_BYTES {
        let mut cut = MAX_DETAIL_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

impl LogThrottle {
    pub fn new(interval: Duration) -> Self {
        LogThrottle {
            interval,
            window: Mutex::new(Window {
                started: Instant::now(),
                kinds: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One occurrence of `what` at warning level; `detail` says what
    /// happened (who, why). Returns whether this occurrence was logged (the
    /// first of its interval).
    pub fn note(&self, what: &'static str, detail: impl FnOnce() -> String) -> bool {
        self.record(what, tracing::Level::WARN, detail)
    }

    /// As [`LogThrottle::note`], at info level (events of our own links).
    pub fn info(&self, what: &'static str, detail: impl FnOnce() -> String) -> bool {
        self.record(what, tracing::Level::INFO, detail)
    }

    fn record(
        &self,
        what: &'static str,
        level: tracing::Level,
        detail: impl FnOnce() -> String,
    ) -> bool {
        let mut w = self.lock();
        self.roll(&mut w, Instant::now());
        let i = match w.kinds.iter().position(|k| k.what == what) {
            Some(i) => i,
            None if w.kinds.len() < MAX_THROTTLED_KINDS => {
                w.kinds.push(Kind {
                    what,
                    count: 0,
                    last: String::new(),
                });
                w.kinds.len() - 1
            }
            None => match w.kinds.iter().position(|k| k.what == "other") {
                Some(i) => i,
                None => {
                    // The last slot becomes the shared one.
                    let last = w.kinds.len() - 1;
                    w.kinds[last] = Kind {
                        what: "other",
                        count: 0,
                        last: String::new(),
                    };
                    last
                }
            },
        };
        let k = &mut w.kinds[i];
        k.count += 1;
        let detail = clip(detail());
        if k.count == 1 {
            let secs = self.interval.as_secs();
            if level == tracing::Level::WARN {
                tracing::warn!(target: "vcodr::refused", kind = k.what, "{detail} (more of these are counted and summarized every {secs} s)");
            } else {
                tracing::info!(target: "vcodr::links", kind = k.what, "{detail} (more of these are counted and summarized every {secs} s)");
            }
            return true;
        }
        k.last = detail;
        false
    }

    /// Writes the summaries of an interval that has ended (call it
    /// periodically so quiet kinds are summarized too).
    pub fn flush(&self) {
        let mut w = self.lock();
        self.roll(&mut w, Instant::now());
    }

    fn roll(&self, w: &mut Window, now: Instant) {
        let elapsed = now.saturating_duration_since(w.started);
        if elapsed < self.interval {
            return;
        }
        for k in &mut w.kinds {
            if k.count > 1 {
                tracing::warn!(
                    target: "vcodr::refused",
                    kind = k.what,
                    count = k.count - 1,
                    "{} more `{}` in the last {} s; the latest: {}",
                    k.count - 1,
                    k.what,
                    elapsed.as_secs(),
                    k.last
                );
            }
            k.count = 0;
            k.last.clear();
        }
        w.started = now;
    }

    /// Occurrences of `what` in the current interval (for tests).
    pub fn count(&self, what: &str) -> u64 {
        self.lock()
            .kinds
            .iter()
            .find(|k| k.what == what)
            .map_or(0, |k| k.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_a_kind_is_logged_the_rest_counted() {
        let t = LogThrottle::new(Duration::from_secs(3600));
        assert!(t.note("peer_refused", || "from x".into()));
        for i in 0..10_000 {
            assert!(!t.note("peer_refused", || format!("from x #{i}")));
        }
        assert_eq!(t.count("peer_refused"), 10_001);
        assert!(
            t.note("unauthorized", || "admin".into()),
            "another kind logs at once"
        );
    }

    #[test]
    fn kinds_are_bounded_and_details_clipped() {
        const NAMES: [&str; 40] = [
            "k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9", "k10", "k11", "k12", "k13",
            "k14", "k15", "k16", "k17", "k18", "k19", "k20", "k21", "k22", "k23", "k24", "k25",
            "k26", "k27", "k28", "k29", "k30", "k31", "k32", "k33", "k34", "k35", "k36", "k37",
            "k38", "k39",
        ];
        let t = LogThrottle::new(Duration::from_secs(3600));
        for n in NAMES {
            t.note(n, || "é".repeat(1_000));
        }
        let w = t.lock();
        assert_eq!(w.kinds.len(), MAX_THROTTLED_KINDS);
        assert!(w.kinds.iter().any(|k| k.what == "other"));
        assert_eq!(
            clip("é".repeat(1_000)).len(),
            MAX_DETAIL_BYTES + '…'.len_utf8()
        );
    }

    #[test]
    fn a_new_interval_logs_again() {
        let t = LogThrottle::new(Duration::from_millis(0));
        assert!(t.note("x", || "1".into()));
        assert!(
            t.note("x", || "2".into()),
            "the interval ended: a new first"
        );
    }
}
