//! Logs of refused connections that an outsider cannot flood.
//!
//! Anyone who reaches a listener's port can make it refuse handshakes as
//! fast as they send packets (no certificate, another CA, a stolen edge
//! certificate on the peer port...). A line per refusal would let them fill
//! the disk and bury the lines that matter, so each listener keeps a
//! [`RefusalLog`]: the first refusal of each reason is logged at once with
//! everything known about it; further ones are counted and summed up in one
//! line per [`SUMMARY_INTERVAL`], for example
//!
//! ```text
//! refused 1,234 more connections in the last 10 s on vcodr-peer 127.0.0.1:7443: 1,200 wrong
//! role (last from 10.0.0.9:5555, `edge-00001`), 34 unknown CA (last from 10.0.0.7:4444)
//! ```
//!
//! The same holds for bad frames from authenticated peers (a stolen edge
//! certificate can send malformed datagrams and requests as fast as it
//! likes): [`frame_log`] keeps one such log per link kind, counting
//! rejected frames instead of refused connections.
//!
//! A reason quiet for a whole interval is forgotten, so its next refusal is
//! logged at once again. At most [`MAX_REASONS`] reasons are kept; refusals
//! of further ones are only counted ("of other reasons"). So a listener logs
//! at most `MAX_REASONS + 1` lines per interval, whatever the load.
//! The exact counts are the listener's ([`crate::ListenerCounts`]).

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

/// How often further refusals of a reason are summed up in one line.
pub(crate) const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);
/// Most distinct reasons a log keeps apart; refusals of further ones are
/// counted together.
pub(crate) const MAX_REASONS: usize = 16;

/// One reason being summed up.
#[derive(Debug)]
struct Reason {
    reason: &'static str,
    /// Refusals since the last summary (not counting the one logged at once).
    count: u64,
    last_from: SocketAddr,
    last_name: Option<String>,
}

/// What [`Limiter::record`] asks of its caller.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// A summary that fell due: log it.
    pub(crate) summary: Option<String>,
    /// The first refusal of its reason: log it now, in full.
    pub(crate) log_now: bool,
    /// Call [`Limiter::flush_if_due`] at this instant.
    pub(crate) flush_at: Option<Instant>,
}

/// The counting, without clock or logger (so that tests drive the time).
#[derive(Debug)]
pub(crate) struct Limiter {
    /// Where, for the summary: protocol and address of the listener.
    place: String,
    /// What is counted: `refused … connection` or `rejected … frame`.
    verb: &'static str,
    noun: &'static str,
    interval: Duration,
    /// Start of the current summary interval; `None` while quiet.
    since: Option<Instant>,
    reasons: Vec<Reason>,
    /// Refusals of reasons beyond [`MAX_REASONS`] since the last summary.
    others: u64,
    flush_scheduled: bool,
}

impl Limiter {
    pub(crate) fn new(place: String, interval: Duration) -> Self {
        Self::counting(place, interval, "refused", "connection")
    }

    /// A limiter whose lines say `{verb} N more {noun}s`.
    pub(crate) fn counting(
        place: String,
        interval: Duration,
        verb: &'static str,
        noun: &'static str,
    ) -> Self {
        Limiter {
            place,
            verb,
            noun,
            interval,
            since: None,
            reasons: Vec::new(),
            others: 0,
            flush_scheduled: false,
        }
    }

    /// Counts one refusal for `reason` from `from` (and the verified name of
    /// the certificate, if any).
    pub(crate) fn record(
        &mut self,
        now: Instant,
        reason: &'static str,
        from: SocketAddr,
        name: Option<&str>,
    ) -> Outcome {
        let mut outcome = Outcome {
            summary: self.flush_if_due(now),
            ..Outcome::default()
        };
        let since = *self.since.get_or_insert(now);
        let known = self.reasons.iter().position(|r| r.reason == reason);
        match known {
            Some(i) => {
                let r = &mut self.reasons[i];
                r.count += 1;
                r.last_from = from;
                r.last_name = name.map(str::to_string);
            }
            None if self.reasons.len() < MAX_REASONS => {
                self.reasons.push(Reason {
                    reason,
                    count: 0,
                    last_from: from,
                    last_name: None,
                });
                outcome.log_now = true;
                return outcome;
            }
            None => self.others += 1,
        }
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            outcome.flush_at = Some(since + self.interval);
        }
        outcome
    }

    /// The summary of the interval, if it is over (and something was
    /// counted); reasons quiet for the whole interval are forgotten.
    pub(crate) fn flush_if_due(&mut self, now: Instant) -> Option<String> {
        let since = self.since?;
        if now < since + self.interval {
            return None;
        }
        self.flush_scheduled = false;
        let summary = self.summary(now.saturating_duration_since(since));
        self.reasons.retain(|r| r.count > 0);
        for r in &mut self.reasons {
            r.count = 0;
        }
        self.others = 0;
        self.since = (!self.reasons.is_empty()).then_some(now);
        summary
    }

    fn summary(&self, elapsed: Duration) -> Option<String> {
        let total = self.reasons.iter().map(|r| r.count).sum::<u64>() + self.others;
        if total == 0 {
            return None;
        }
        let mut counted: Vec<&Reason> = self.reasons.iter().filter(|r| r.count > 0).collect();
        counted.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(b.reason)));
        let mut line = format!(
            "{} {} more {}{} in the last {} s on {}:",
            self.verb,
            thousands(total),
            self.noun,
            if total == 1 { "" } else { "s" },
            thousands(elapsed.as_secs().max(1)),
            self.place
        );
        for (i, r) in counted.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            let _ = write!(
                line,
                "{sep}{} {} (last from {}",
                thousands(r.count),
                r.reason,
                r.last_from
            );
            if let Some(name) = &r.last_name {
                let _ = write!(line, ", `{name}`");
            }
            line.push(')');
        }
        if self.others > 0 {
            let sep = if counted.is_empty() { " " } else { ", " };
            let _ = write!(line, "{sep}{} of other reasons", thousands(self.others));
        }
        Some(line)
    }
}

/// `1234567` as `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A listener's log of refused connections (see the module doc).
pub(crate) struct RefusalLog {
    limiter: Arc<Mutex<Limiter>>,
}

impl fmt::Debug for RefusalLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefusalLog").finish_non_exhaustive()
    }
}

fn locked(limiter: &Mutex<Limiter>) -> std::sync::MutexGuard<'_, Limiter> {
    // Every update is complete before the lock is released: a panic
    // elsewhere cannot leave the counts half-written.
    limiter.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RefusalLog {
    /// The log of the listener of `protocol` at `addr`.
    pub(crate) fn new(protocol: &str, addr: SocketAddr) -> Self {
        RefusalLog {
            limiter: Arc::new(Mutex::new(Limiter::new(
                format!("{protocol} {addr}"),
                SUMMARY_INTERVAL,
            ))),
        }
    }

    /// A log of frames rejected on links of `protocol`.
    fn frames(protocol: &str) -> Self {
        RefusalLog {
            limiter: Arc::new(Mutex::new(Limiter::counting(
                format!("{protocol} links"),
                SUMMARY_INTERVAL,
                "rejected",
                "frame",
            ))),
        }
    }

    /// Logs (at once or in the next summary) one refusal: `reason` is the
    /// short, fixed label it is counted under, `detail` what was refused.
    pub(crate) fn refused(
        &self,
        reason: &'static str,
        from: SocketAddr,
        name: Option<&str>,
        detail: &dyn fmt::Display,
    ) {
        let (outcome, place, verb, noun) = {
            let mut limiter = locked(&self.limiter);
            let outcome = limiter.record(Instant::now(), reason, from, name);
            let place = outcome.log_now.then(|| limiter.place.clone());
            (outcome, place, limiter.verb, limiter.noun)
        };
        if let Some(summary) = outcome.summary {
            warn!("{summary}");
        }
        if let Some(place) = place {
            warn!(
                listener = %place,
                remote = %from,
                peer = name,
                reason,
                "{verb} a {noun} on {place} from {from}: {detail} (further ones for \
                 `{reason}` are summed up every {} s)",
                SUMMARY_INTERVAL.as_secs()
            );
        }
        if let Some(at) = outcome.flush_at {
            // Without a runtime (never, in practice) the summary comes with
            // the next refusal instead.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let limiter = self.limiter.clone();
                runtime.spawn(async move {
                    tokio::time::sleep_until(at).await;
                    let summary = locked(&limiter).flush_if_due(Instant::now());
                    if let Some(summary) = summary {
                        warn!("{summary}");
                    }
                });
            }
        }
    }
}

/// Link kinds with a frame log (one per [`crate::Protocol::NAME`]); a
/// process has two, the bound only guards against misuse.
const MAX_FRAME_LOGS: usize = 8;

/// The log of bad frames received on links of `protocol`, shared by every
/// link of that kind in the process.
pub(crate) fn frame_log(protocol: &'static str) -> Arc<RefusalLog> {
    type Logs = Mutex<Vec<(&'static str, Arc<RefusalLog>)>>;
    static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
    let logs = LOGS.get_or_init(|| Mutex::new(Vec::new()));
    let mut logs = logs.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, log)) = logs.iter().find(|(p, _)| *p == protocol) {
        return log.clone();
    }
    let log = Arc::new(RefusalLog::frames(protocol));
    if logs.len() < MAX_FRAME_LOGS {
        logs.push((protocol, log.clone()));
    }
    log
}

/// Logs (at once or in the next summary) a bad frame received on `link`:
/// `reason` is the fixed label it is counted under.
pub(crate) fn bad_frame(link: &crate::LinkInfo, reason: &'static str, detail: &dyn fmt::Display) {
    frame_log(link.protocol).refused(reason, link.addr, Some(link.peer.as_str()), detail);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 9], port))
    }

    #[test]
    fn thousands_are_separated() {
        for (n, text) in [
            (0, "0"),
            (999, "999"),
            (1_000, "1,000"),
            (1_234, "1,234"),
            (123_456, "123,456"),
            (1_234_567, "1,234,567"),
        ] {
            assert_eq!(thousands(n), text);
        }
    }

    #[test]
    fn the_first_of_each_reason_is_logged_then_one_summary_per_interval() {
        let t0 = Instant::now();
        let mut log = Limiter::new("vcodr-peer 127.0.0.1:7443".into(), SUMMARY_INTERVAL);
        let first = log.record(t0, "wrong role", addr(1), Some("edge-00001"));
        assert_eq!(
            first,
            Outcome {
                log_now: true,
                ..Outcome::default()
            }
        );
        let first_ca = log.record(t0, "unknown CA", addr(2), None);
        assert!(first_ca.log_now);
        // A flood: nothing logged, one flush asked for at the interval's end.
        let mut flushes = Vec::new();
        for i in 0..1_200u64 {
            let now = t0 + Duration::from_millis(i);
            let name = format!("edge-{:05}", i % 7);
            let outcome = log.record(now, "wrong role", addr(5555), Some(&name));
            assert!(!outcome.log_now && outcome.summary.is_none());
            flushes.extend(outcome.flush_at);
        }
        for _ in 0..34 {
            let outcome = log.record(t0 + Duration::from_secs(2), "unknown CA", addr(4444), None);
            assert!(!outcome.log_now && outcome.summary.is_none());
            flushes.extend(outcome.flush_at);
        }
        assert_eq!(flushes, vec![t0 + SUMMARY_INTERVAL]);
        assert_eq!(
            log.flush_if_due(t0 + Duration::from_secs(9)),
            None,
            "not yet"
        );
        let summary = log.flush_if_due(t0 + SUMMARY_INTERVAL).unwrap();
        assert_eq!(
            summary,
            "refused 1,234 more connections in the last 10 s on vcodr-peer 127.0.0.1:7443: \
             1,200 wrong role (last from 10.0.0.9:5555, `edge-00002`), \
             34 unknown CA (last from 10.0.0.9:4444)"
        );
        // Still noisy: counted into the next summary, not logged at once.
        let t1 = t0 + SUMMARY_INTERVAL;
        let again = log.record(t1 + Duration::from_secs(1), "wrong role", addr(6), None);
        assert!(!again.log_now);
        assert_eq!(again.flush_at, Some(t1 + SUMMARY_INTERVAL));
        let summary = log.flush_if_due(t1 + SUMMARY_INTERVAL).unwrap();
        assert!(
            summary.starts_with("refused 1 more connection in"),
            "{summary}"
        );
        // "unknown CA" was quiet for a whole interval: forgotten, so its
        // next refusal is logged at once again.
        let later = t1 + 3 * SUMMARY_INTERVAL;
        let outcome = log.record(later, "unknown CA", addr(7), None);
        assert!(outcome.log_now);
        assert_eq!(outcome.summary, None, "nothing was counted meanwhile");
    }

    #[test]
    fn a_late_refusal_brings_the_summary_due_and_reasons_are_bounded() {
        let t0 = Instant::now();
        let mut log = Limiter::new("vcodr-edge 0.0.0.0:7444".into(), SUMMARY_INTERVAL);
        const LABELS: [&str; MAX_REASONS + 4] = [
            "r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11", "r12", "r13",
            "r14", "r15", "r16", "r17", "r18", "r19",
        ];
        let logged_now = LABELS
            .iter()
            .filter(|label| log.record(t0, label, addr(1), None).log_now)
            .count();
        assert_eq!(logged_now, MAX_REASONS, "beyond the bound: only counted");
        assert!(log.reasons.len() <= MAX_REASONS);
        for label in LABELS {
            log.record(t0, label, addr(1), None);
        }
        // No timer ran: the next refusal, much later, brings the summary.
        let outcome = log.record(t0 + Duration::from_secs(60), "r0", addr(2), None);
        let summary = outcome.summary.expect("a summary fell due");
        assert!(
            summary.starts_with("refused 24 more connections in the last 60 s on vcodr-edge"),
            "{summary}"
        );
        assert!(summary.ends_with(", 8 of other reasons"), "{summary}");
        assert!(log.reasons.len() <= MAX_REASONS);
    }

    #[test]
    fn bad_frames_of_authenticated_peers_are_counted_per_link_kind() {
        let t0 = Instant::now();
        let mut log = Limiter::counting(
            "vcodr-edge links".into(),
            SUMMARY_INTERVAL,
            "rejected",
            "frame",
        );
        assert!(
            log.record(t0, "short datagram", addr(1), Some("edge-7"))
                .log_now
        );
        for _ in 0..1_000 {
            assert!(
                !log.record(t0, "short datagram", addr(1), Some("edge-7"))
                    .log_now
            );
        }
        let summary = log
            .flush_if_due(t0 + SUMMARY_INTERVAL)
            .expect("a summary fell due");
        assert_eq!(
            summary,
            "rejected 1,000 more frames in the last 10 s on vcodr-edge links: 1,000 short \
             datagram (last from 10.0.0.9:1, `edge-7`)"
        );
        let a = frame_log("vcodr-edge");
        assert!(
            Arc::ptr_eq(&a, &frame_log("vcodr-edge")),
            "one log per link kind"
        );
        assert!(!Arc::ptr_eq(&a, &frame_log("vcodr-peer")));
    }
}
