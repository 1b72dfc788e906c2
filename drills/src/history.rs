//! What happened in one drill: every write (invoke, outcome, key, value,
//! server), every promotion with its result, every fault and operator
//! step, and every status the poller saw, as time segments. Times are
//! milliseconds since the schedule started, on this process's monotonic
//! clock.

use serde_json::Value;
use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

/// Milliseconds since the schedule started.
pub type Ms = u64;

/// How a write ended, as the client saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Acknowledged: durable (on both servers, or counted as unprotected).
    Ok { version: u64 },
    /// Refused with no effect: wrong role, blocked or overloaded before it
    /// was logged, or never sent (connection refused).
    Fail(String),
    /// It may or may not take effect: timeouts, "outcome unknown", logged
    /// but not acknowledged, a connection lost after sending.
    Unknown(String),
}

/// One write of the writer pool.
#[derive(Clone, Debug)]
pub struct Write {
    /// Writer number.
    pub writer: usize,
    /// This writer's n-th write (its writes are sequential).
    pub n: u64,
    /// The server asked (0: a, 1: b).
    pub server: usize,
    pub key: String,
    pub value: Value,
    pub invoke: Ms,
    pub complete: Ms,
    pub outcome: Outcome,
}

impl Write {
    pub fn acked(&self) -> Option<u64> {
        match self.outcome {
            Outcome::Ok { version } => Some(version),
            _ => None,
        }
    }
}

/// A `promoteStandbyToActive` call.
#[derive(Clone, Debug)]
pub struct Promotion {
    pub server: usize,
    pub force: bool,
    pub invoke: Ms,
    pub complete: Ms,
    /// `Ok((epoch, dataLossBound))`; `Err` the error (or timeout) text.
    pub result: Result<(u64, Option<u64>), String>,
    /// Whether the drill kept the old active running and reachable by the
    /// edges until it was fenced, so that the fencing deadline applies.
    pub fence_deadline_applies: bool,
    /// `configuration/list` of the promoted server right after the reply
    /// (key, version), for the RPO check of `dataLossBound: 0` promotions.
    pub docs_after: Option<Vec<(String, u64)>>,
}

/// A fault the nemesis injected, or an operator step, with its time.
#[derive(Clone, Debug)]
pub struct Step {
    pub at: Ms,
    /// Kind, for the totals (`cut a<->b`, `sigkill`, …); operator steps start with `op:`.
    pub kind: String,
    pub detail: String,
}

/// Consecutive polls of one server that saw the same role, drState and epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub server: usize,
    /// Reply time of the first poll: the server was in this state at or before it.
    pub first: Ms,
    /// Send time of the last poll: the server was in this state at or after it.
    pub last: Ms,
    /// `ACTIVE`, `STANDBY`, …; `UNREACHABLE` when the poll failed.
    pub role: String,
    pub state: String,
    pub epoch: u64,
}

impl Segment {
    pub fn writable(&self) -> bool {
        self.role == "ACTIVE" || self.role == "STANDALONE"
    }

    /// Fenced or standby: it must acknowledge nothing.
    pub fn refuses_writes(&self) -> bool {
        self.role == "ZOMBIE" || self.role == "STANDBY"
    }
}

/// The history of one schedule; shared by the writers, the poller and the
/// runner.
#[derive(Debug)]
pub struct History {
    start: Instant,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    writes: Vec<Write>,
    promotions: Vec<Promotion>,
    steps: Vec<Step>,
    segments: Vec<Segment>,
    /// Index in `segments` of each server's current segment.
    open: [Option<usize>; 2],
}

/// Everything recorded, once the schedule is over.
#[derive(Clone, Debug, Default)]
pub struct Record {
    pub writes: Vec<Write>,
    pub promotions: Vec<Promotion>,
    pub steps: Vec<Step>,
    pub segments: Vec<Segment>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    pub fn new() -> History {
        History {
            start: Instant::now(),
            inner: Mutex::default(),
        }
    }

    pub fn now(&self) -> Ms {
        self.start.elapsed().as_millis() as Ms
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write(&self, w: Write) {
        self.lock().writes.push(w);
    }

    pub fn promotion(&self, p: Promotion) {
        self.lock().promotions.push(p);
    }

    /// Records a fault or operator step now; prints it when `verbose`.
    pub fn step(&self, kind: &str, detail: impl Into<String>) -> Ms {
        let at = self.now();
        let s = Step {
            at,
            kind: kind.to_string(),
            detail: detail.into(),
        };
        if verbose() {
            eprintln!("drills: {s}");
        }
        self.lock().steps.push(s);
        at
    }

    /// One poll of `server`, sent at `sent` and answered (or failed) at `got`.
    pub fn observe(&self, server: usize, sent: Ms, got: Ms, role: &str, state: &str, epoch: u64) {
        let mut g = self.lock();
        if let Some(i) = g.open[server] {
            let s = &mut g.segments[i];
            if s.role == role && s.state == state && s.epoch == epoch {
                s.last = sent;
                return;
            }
        }
        let seg = Segment {
            server,
            first: got,
            last: sent,
            role: role.to_string(),
            state: state.to_string(),
            epoch,
        };
        g.segments.push(seg);
        g.open[server] = Some(g.segments.len() - 1);
    }

    /// Writes completed so far that `f` accepts.
    pub fn writes_where(&self, f: impl Fn(&Write) -> bool) -> Vec<Write> {
        self.lock()
            .writes
            .iter()
            .filter(|w| f(w))
            .cloned()
            .collect()
    }

    pub fn take(&self) -> Record {
        let g = self.lock();
        Record {
            writes: g.writes.clone(),
            promotions: g.promotions.clone(),
            steps: g.steps.clone(),
            segments: g.segments.clone(),
        }
    }
}

/// `VCODR_DRILL_VERBOSE=1`: print every step as it happens.
pub fn verbose() -> bool {
    std::env::var_os("VCODR_DRILL_VERBOSE").is_some_and(|v| v != "0")
}

/// `a` or `b`.
pub fn name(server: usize) -> &'static str {
    ["a", "b"][server.min(1)]
}

impl fmt::Display for Write {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>7} ms .. {:>7} ms  write w{}#{} to {} key {} value {} -> ",
            self.invoke,
            self.complete,
            self.writer,
            self.n,
            name(self.server),
            self.key,
            self.value
        )?;
        match &self.outcome {
            Outcome::Ok { version } => write!(f, "ok version {version}"),
            Outcome::Fail(e) => write!(f, "fail: {e}"),
            Outcome::Unknown(e) => write!(f, "unknown: {e}"),
        }
    }
}

impl fmt::Display for Promotion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>7} ms .. {:>7} ms  promote {}{} -> ",
            self.invoke,
            self.complete,
            name(self.server),
            if self.force { " (force)" } else { "" }
        )?;
        match &self.result {
            Ok((epoch, bound)) => write!(
                f,
                "epoch {epoch}, dataLossBound {}",
                bound.map_or("null".to_string(), |b| b.to_string())
            ),
            Err(e) => write!(f, "error: {e}"),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>7} ms  {}: {}", self.at, self.kind, self.detail)
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>7} ms .. {:>7} ms  {} is {} / {} epoch {}",
            self.first,
            self.last,
            name(self.server),
            self.role,
            self.state,
            self.epoch
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_of_one_state_extend_one_segment() {
        let h = History::new();
        h.observe(0, 0, 2, "ACTIVE", "STANDBY_RUNNING", 1);
        h.observe(0, 100, 102, "ACTIVE", "STANDBY_RUNNING", 1);
        h.observe(1, 100, 101, "STANDBY", "STANDBY_RUNNING", 1);
        h.observe(0, 200, 203, "ZOMBIE", "ZOMBIE", 1);
        h.observe(0, 300, 301, "ZOMBIE", "ZOMBIE", 1);
        let r = h.take();
        assert_eq!(r.segments.len(), 3);
        assert_eq!((r.segments[0].first, r.segments[0].last), (2, 100));
        assert_eq!((r.segments[2].first, r.segments[2].last), (203, 300));
        assert!(r.segments[2].refuses_writes() && r.segments[0].writable());
    }
}
