//! The writer pool and the status poller, in this (root-namespace) process.
//!
//! Writers put JSON documents over the admin API (HTTPS JSON-RPC), one
//! call at a time each, mostly to the server the poller last saw writable,
//! sometimes to the other (whose refusals test the role gates). Most keys
//! are written once (`u<writer>-<n>`); every fifth write goes to one of three
//! keys of its writer (`h<writer>-<k>`), so that "a later write of the
//! same key" means a later write of the same writer.
//!
//! The poller asks both servers for their status every
//! [`POLL_INTERVAL`] and records what it sees as [`crate::history::Segment`]s.

use crate::history::{History, Outcome, Write};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use vcodr_server::ctl::{ApiError, Client};

/// Writers in the pool.
pub const WRITERS: usize = 4;
/// Pause between two writes of one writer (each is ~1–3 ms otherwise).
pub const WRITE_PAUSE: Duration = Duration::from_millis(15);
/// Pause after a refusal, so that a refusing server is not hammered.
pub const REFUSED_PAUSE: Duration = Duration::from_millis(50);
/// Writes per writer per schedule, at most.
pub const WRITES_PER_WRITER_MAX: u64 = 50_000;
/// One in this many writes goes to the server not believed writable.
const OTHER_SERVER_ONE_IN: u64 = 5;
/// Hot keys per writer.
pub const HOT_KEYS: u64 = 3;

pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// A status call slower than this counts as unreachable.
pub const POLL_TIMEOUT: Duration = Duration::from_millis(1_000);

/// The JSON-RPC error codes of `vcodr_server::rpc::code`.
mod code {
    pub const WRONG_ROLE: i64 = -32001;
    pub const NOT_ACKNOWLEDGED: i64 = -32003;
    pub const OUTCOME_UNKNOWN: i64 = -32006;
}

/// The key of writer `w`'s `n`-th write.
pub fn key_of(w: usize, n: u64) -> String {
    if n % 5 == 0 {
        format!("h{w}-{}", (n / 5) % HOT_KEYS)
    } else {
        format!("u{w}-{n}")
    }
}

/// Whether a key is one of the hot keys (written more than once).
pub fn is_hot(key: &str) -> bool {
    key.starts_with('h')
}

/// The value of writer `w`'s `n`-th write: unique in the whole drill.
pub fn value_of(w: usize, n: u64) -> Value {
    json!({ "w": w, "n": n })
}

/// Sorts a failed call into "no effect" and "may take effect".
pub fn classify(e: &anyhow::Error) -> Outcome {
    if let Some(api) = e.downcast_ref::<ApiError>() {
        let text = format!("{} (code {})", api.message, api.code);
        return match api.code {
            code::OUTCOME_UNKNOWN => Outcome::Unknown(text),
            // "write at index N was not acknowledged: …": logged, so it may
            // still be replicated or handed over; "writes are blocked",
            // "… already waiting …", "not carried out": never logged.
            code::NOT_ACKNOWLEDGED if api.message.starts_with("write at index") => {
                Outcome::Unknown(text)
            }
            code::NOT_ACKNOWLEDGED | code::WRONG_ROLE => Outcome::Fail(text),
            _ if api.message.starts_with("not carried out") => Outcome::Fail(text),
            _ => Outcome::Unknown(text),
        };
    }
    let text = format!("{e:#}");
    // The TCP connection was never made: the request was never sent.
    if text.starts_with("connecting to") {
        Outcome::Fail(text)
    } else {
        Outcome::Unknown(text)
    }
}

/// The running pool and poller.
#[derive(Debug)]
pub struct Workload {
    stop: Arc<AtomicBool>,
    writers: JoinSet<u64>,
    poller: tokio::task::JoinHandle<()>,
    /// The server last seen ACTIVE or STANDALONE with the highest epoch.
    pub believed: Arc<AtomicUsize>,
}

impl Workload {
    pub fn start(clients: [Client; 2], history: Arc<History>) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let believed = Arc::new(AtomicUsize::new(0));
        let mut writers = JoinSet::new();
        for w in 0..WRITERS {
            // Clones share one pool of idle connections per server; each
            // call takes its own.
            let clients = clients.clone();
            writers.spawn(writer(
                w,
                clients,
                history.clone(),
                stop.clone(),
                believed.clone(),
            ));
        }
        let poller = tokio::spawn(poll(clients, history, stop.clone(), believed.clone()));
        Workload {
            stop,
            writers,
            poller,
            believed,
        }
    }

    /// Stops the writers (each finishes its call in flight) and the poller.
    /// Returns the writes made.
    pub async fn stop(mut self) -> u64 {
        self.stop.store(true, Relaxed);
        let mut n = 0;
        while let Some(r) = self.writers.join_next().await {
            n += r.unwrap_or(0);
        }
        let _ = self.poller.await;
        n
    }
}

async fn writer(
    w: usize,
    clients: [Client; 2],
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    believed: Arc<AtomicUsize>,
) -> u64 {
    let mut n = 0;
    while !stop.load(Relaxed) && n < WRITES_PER_WRITER_MAX {
        n += 1;
        let mut server = believed.load(Relaxed).min(1);
        // Deterministic per (writer, n): which writes go to the other server.
        if (n.wrapping_mul(2_654_435_761) ^ w as u64) % OTHER_SERVER_ONE_IN == 0 {
            server = 1 - server;
        }
        let (key, value) = (key_of(w, n), value_of(w, n));
        let invoke = history.now();
        let r = clients[server]
            .call(
                "configuration/put",
                json!({ "key": key, "value": value.clone() }),
            )
            .await;
        let outcome = match r {
            Ok(v) => match v["version"].as_u64() {
                Some(version) => Outcome::Ok { version },
                None => Outcome::Unknown(format!("a reply without a version: {v}")),
            },
            Err(e) => classify(&e),
        };
        let refused = !matches!(outcome, Outcome::Ok { .. });
        history.write(Write {
            writer: w,
            n,
            server,
            key,
            value,
            invoke,
            complete: history.now(),
            outcome,
        });
        tokio::time::sleep(if refused { REFUSED_PAUSE } else { WRITE_PAUSE }).await;
    }
    n
}

async fn poll(
    clients: [Client; 2],
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    believed: Arc<AtomicUsize>,
) {
    let clients = clients.map(|c| c.with_timeout(POLL_TIMEOUT));
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Bounded by the writers' bound: a schedule never polls for days.
    while !stop.load(Relaxed) {
        tick.tick().await;
        let sent = history.now();
        let (ra, rb) = tokio::join!(status(&clients[0]), status(&clients[1]));
        let got = history.now();
        let mut best: Option<(u64, usize)> = None;
        for (i, r) in [ra, rb].into_iter().enumerate() {
            match r {
                Some((role, state, epoch)) => {
                    if (role == "ACTIVE" || role == "STANDALONE")
                        && best.is_none_or(|(e, _)| epoch > e)
                    {
                        best = Some((epoch, i));
                    }
                    history.observe(i, sent, got, &role, &state, epoch);
                }
                None => history.observe(i, sent, got, "UNREACHABLE", "-", 0),
            }
        }
        if let Some((_, i)) = best {
            believed.store(i, Relaxed);
        }
    }
}

/// (role, drState, epoch) of a server, if it answers.
pub async fn status(c: &Client) -> Option<(String, String, u64)> {
    let s = c
        .call("disasterRecovery/getReplicationStatus", json!({}))
        .await
        .ok()?;
    Some((
        s["role"].as_str()?.to_string(),
        s["drState"].as_str()?.to_string(),
        s["epoch"].as_u64()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_keys_are_few_and_the_rest_unique() {
        let keys: Vec<String> = (1..=100).map(|n| key_of(2, n)).collect();
        let hot: std::collections::BTreeSet<_> = keys.iter().filter(|k| is_hot(k)).collect();
        assert_eq!(hot.len() as u64, HOT_KEYS);
        assert_eq!(keys.iter().filter(|k| is_hot(k)).count(), 20);
        let unique: std::collections::BTreeSet<_> = keys.iter().filter(|k| !is_hot(k)).collect();
        assert_eq!(unique.len(), 80);
    }

    #[test]
    fn failures_are_sorted_by_whether_they_may_take_effect() {
        let api = |code, m: &str| {
            anyhow::Error::new(ApiError {
                code,
                message: m.into(),
                data: None,
            })
        };
        let unknown = |o: Outcome| matches!(o, Outcome::Unknown(_));
        let fail = |o: Outcome| matches!(o, Outcome::Fail(_));
        assert!(unknown(classify(&api(-32006, "outcome unknown: …"))));
        assert!(unknown(classify(&api(
            -32003,
            "write at index 7 was not acknowledged: fenced"
        ))));
        assert!(fail(classify(&api(
            -32003,
            "writes are blocked: standby lost"
        ))));
        assert!(fail(classify(&api(
            -32001,
            "configuration/put is refused: …"
        ))));
        assert!(unknown(classify(&api(-32603, "internal"))));
        assert!(fail(classify(&anyhow::anyhow!(
            "connecting to 10.0.0.1:8443"
        ))));
        assert!(unknown(classify(&anyhow::anyhow!(
            "10.0.0.1:8443 did not answer within 8s"
        ))));
    }
}
