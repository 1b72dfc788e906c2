//! The checker: what must hold of a schedule's history and of the final
//! state once the pair is healed and recovered (SPEC §9).
//!
//! | property | what is checked |
//! |---|---|
//! | [`NEVER_LOST`] | every acknowledged write is on the final active with its value and version, or superseded there by a later write of the same key (same writer, later call), or — in `degrade` only — in a divergence archive with its key and value |
//! | [`NO_EFFECT`] | a write refused with no effect (wrong role, blocked or overloaded before it was logged, never sent) is nowhere |
//! | [`NO_PHANTOM`] | every document on the final active is the value of a write of the history |
//! | [`RPO_AT_PROMOTION`] | a `dataLossBound: 0` promotion: every write the old active acknowledged before the promotion returned is on the promoted server right after it |
//! | [`FENCED_ACKS_NOTHING`] | no write is acknowledged by a server seen ZOMBIE (or STANDBY) before the write was sent and still after its answer; in `block`, none by a server after a promotion of the other returned; in `degrade`, none after the fencing deadline of such a promotion |
//! | [`FENCED_IN_TIME`] | with the old active running and every edge reaching both servers, it is seen ZOMBIE within one heartbeat interval + 1 s of the promotion's reply |
//! | [`SAMPLES_AT_MOST_ONCE`] | each edge's stored samples have distinct seqs, each payload names its edge and seq, `getSummary` agrees, no seq above what the edge generated |
//! | [`SAMPLES_AT_LEAST_ONCE`] | every seq an edge got acknowledged is stored on the final active (or, in `degrade`, archived), except at most as many as it dropped from a full cache; nothing is left in its cache |
//!
//! Recovery (both servers STANDBY_RUNNING again without manual repair) and
//! fail-stop on a full disk are checked by the runner as the schedule runs
//! ([`crate::run`]) and reported as [`CONVERGES`], [`FAIL_STOP`] and
//! [`DETECTS`].

use crate::history::{name, Ms, Outcome, Record, Write};
use crate::schedule::Policy;
use crate::workload::is_hot;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use vcodr_server::edge_sim::EdgeReport;

pub const NEVER_LOST: &str = "acknowledged writes are never lost";
pub const NO_EFFECT: &str = "refused writes have no effect";
pub const NO_PHANTOM: &str = "no document that nobody wrote";
pub const RPO_AT_PROMOTION: &str = "RPO 0 at every dataLossBound-0 promotion";
pub const FENCED_ACKS_NOTHING: &str = "a fenced server acknowledges nothing";
pub const FENCED_IN_TIME: &str = "the old active is fenced within one heartbeat interval + 1 s";
pub const SAMPLES_AT_MOST_ONCE: &str = "each monitoring sample is stored at most once";
pub const SAMPLES_AT_LEAST_ONCE: &str =
    "each acknowledged sample is stored (within the cache bound)";
pub const CONVERGES: &str = "the pair returns to STANDBY_RUNNING without manual repair";
pub const FAIL_STOP: &str = "storage failure is fail-stop";
pub const DETECTS: &str = "a standby that lost its active says FAILURE_GET_ACTIVE_STATUS";
pub const HARNESS: &str = "the drill ran as scheduled";
pub const REPLICAS_AGREE: &str =
    "the final active holds every acknowledged sample the other server holds";

/// One property that did not hold.
#[derive(Clone, Debug)]
pub struct Violation {
    pub property: &'static str,
    pub detail: String,
    /// When it happened (for the history lines around it).
    pub at: Option<Ms>,
    /// The writes involved (a few).
    pub writes: Vec<Write>,
}

impl Violation {
    pub fn new(property: &'static str, detail: impl Into<String>) -> Violation {
        Violation {
            property,
            detail: detail.into(),
            at: None,
            writes: Vec::new(),
        }
    }

    pub fn at(mut self, at: Ms) -> Violation {
        self.at = Some(at);
        self
    }

    fn write(mut self, w: &Write) -> Violation {
        self.at = Some(self.at.unwrap_or(w.invoke));
        self.writes.push(w.clone());
        self
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.property, self.detail)
    }
}

/// One row of a divergence archive.
#[derive(Clone, Debug, PartialEq)]
pub struct Archived {
    /// The server whose archive holds it.
    pub server: usize,
    pub epoch: u64,
    pub index: u64,
    /// `{"op": "put", "key", "value"}`, `{"op": "samples", "clientId", "firstSeq", "lastSeq"}`, …
    pub entry: Value,
}

/// The recovered pair, as the checker sees it.
#[derive(Clone, Debug, Default)]
pub struct Final {
    /// The final active (0: a, 1: b).
    pub active: usize,
    /// Every document on the final active: key → (value, version).
    pub docs: BTreeMap<String, (Value, u64)>,
    /// Both servers' divergence archives, every row.
    pub archive: Vec<Archived>,
    /// The edges' own counts, after they flushed their caches.
    pub edges: Vec<EdgeReport>,
    /// Samples stored on the final active per client: (seq, payload).
    pub samples: BTreeMap<String, Vec<(u64, String)>>,
    /// `monitoring/getSummary` of the final active.
    pub summary: Value,
    /// Sample seqs stored on the other server, per client (read from its
    /// storage file once it stopped).
    pub other_samples: BTreeMap<String, BTreeSet<u64>>,
}

/// What the checker looked at, for the totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    pub acked: u64,
    pub failed: u64,
    pub unknown: u64,
    /// Acknowledged writes found only in a divergence archive (degrade).
    pub acked_archived: u64,
    pub samples_generated: u64,
    pub samples_stored: u64,
    pub samples_archived: u64,
    pub samples_dropped: u64,
    /// Acknowledged samples missing on the final active but kept by the
    /// other server (before the standby copied the samples a snapshot names,
    /// the defect the drills found).
    pub samples_only_on_other: u64,
    pub promotions: u64,
    /// Slowest fencing seen where the deadline applies (ms after the reply).
    pub fence_ms_max: u64,
}

/// The `(writer, n)` a drill value names.
fn write_id(v: &Value) -> Option<(usize, u64)> {
    Some((v["w"].as_u64()? as usize, v["n"].as_u64()?))
}

/// Checks every property; returns what was checked and what failed.
pub fn check(
    record: &Record,
    fin: &Final,
    policy: Policy,
    heartbeat_interval_ms: u64,
) -> (Checked, Vec<Violation>) {
    let mut v = Vec::new();
    let mut c = Checked::default();
    let archived_puts: BTreeSet<(String, String)> = fin
        .archive
        .iter()
        .filter(|a| a.entry["op"] == "put")
        .filter_map(|a| {
            Some((
                a.entry["key"].as_str()?.to_string(),
                a.entry["value"].to_string(),
            ))
        })
        .collect();
    let by_id: BTreeMap<(usize, u64), &Write> =
        record.writes.iter().map(|w| ((w.writer, w.n), w)).collect();

    // Writes: never lost, no effect when refused.
    for w in &record.writes {
        let on_final = fin.docs.get(&w.key);
        let present = on_final.is_some_and(|(val, _)| *val == w.value);
        let archived = archived_puts.contains(&(w.key.clone(), w.value.to_string()));
        match &w.outcome {
            Outcome::Ok { version } => {
                c.acked += 1;
                let superseded = is_hot(&w.key)
                    && on_final
                        .and_then(|(val, _)| write_id(val))
                        .is_some_and(|(wr, n)| wr == w.writer && n > w.n);
                if present {
                    let at = on_final.map(|(_, v)| *v).unwrap_or(0);
                    if at != *version {
                        v.push(
                            Violation::new(
                                NEVER_LOST,
                                format!(
                                    "{} acknowledged at version {version} is on the final active {} at version {at}",
                                    w.key,
                                    name(fin.active)
                                ),
                            )
                            .write(w),
                        );
                    }
                } else if superseded {
                } else if archived && policy == Policy::Degrade {
                    c.acked_archived += 1;
                } else if archived {
                    v.push(
                        Violation::new(
                            NEVER_LOST,
                            format!(
                                "block: {} was acknowledged by {} yet is only in a divergence archive (RPO 0 broken)",
                                w.key,
                                name(w.server)
                            ),
                        )
                        .write(w),
                    );
                } else {
                    let now = match on_final {
                        Some((val, ver)) => format!("holds {val} at version {ver}"),
                        None => "does not have it".into(),
                    };
                    v.push(
                        Violation::new(
                            NEVER_LOST,
                            format!(
                                "{} acknowledged by {} at version {version} is lost: the final active {} {now}, and no archive has it",
                                w.key,
                                name(w.server),
                                name(fin.active)
                            ),
                        )
                        .write(w),
                    );
                }
            }
            Outcome::Fail(e) => {
                c.failed += 1;
                if present || archived {
                    v.push(
                        Violation::new(
                            NO_EFFECT,
                            format!(
                                "{} was refused ({e}) yet is {}",
                                w.key,
                                if present {
                                    "on the final active"
                                } else {
                                    "in a divergence archive"
                                }
                            ),
                        )
                        .write(w),
                    );
                }
            }
            Outcome::Unknown(_) => c.unknown += 1,
        }
    }

    // No phantom documents.
    for (key, (val, version)) in &fin.docs {
        let ok = write_id(val)
            .and_then(|id| by_id.get(&id))
            .is_some_and(|w| w.key == *key && !matches!(w.outcome, Outcome::Fail(_)));
        if !ok {
            v.push(Violation::new(
                NO_PHANTOM,
                format!("{key} = {val} (version {version}) on the final active was written by nobody (or by a refused write)"),
            ));
        }
    }

    // Promotions.
    for p in &record.promotions {
        let Ok((_, bound)) = p.result else { continue };
        c.promotions += 1;
        let old = 1 - p.server;
        if let (Some(0), Some(list)) = (bound, &p.docs_after) {
            let docs: BTreeMap<&str, u64> = list.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            for w in &record.writes {
                let Some(version) = w.acked() else { continue };
                if w.server != old || w.complete > p.complete || w.complete < p_earlier(record, p) {
                    continue;
                }
                let have = docs.get(w.key.as_str()).copied();
                let ok = match have {
                    Some(h) if is_hot(&w.key) => h >= version,
                    Some(h) => h == version,
                    None => false,
                };
                if !ok {
                    v.push(
                        Violation::new(
                            RPO_AT_PROMOTION,
                            format!(
                                "promotion of {} at {} ms said dataLossBound 0, yet it lacks {} acknowledged by {} at version {version} (it has {})",
                                name(p.server),
                                p.complete,
                                w.key,
                                name(old),
                                have.map_or("nothing".to_string(), |h| format!("version {h}"))
                            ),
                        )
                        .write(w)
                        .at(p.complete),
                    );
                }
            }
        }
        if p.fence_deadline_applies {
            let deadline = heartbeat_interval_ms + 1_000;
            // Fenced: seen ZOMBIE, or already past it (a standby again, or
            // at the new epoch) — a rejoin can follow faster than one poll.
            let new_epoch = p.result.as_ref().map_or(u64::MAX, |(e, _)| *e);
            let fenced = record
                .segments
                .iter()
                .filter(|s| {
                    s.server == old
                        && s.last >= p.invoke
                        && (s.refuses_writes() || (s.role != "UNREACHABLE" && s.epoch >= new_epoch))
                })
                .map(|s| s.first)
                .min();
            match fenced {
                Some(t) => {
                    let took = t.saturating_sub(p.complete);
                    c.fence_ms_max = c.fence_ms_max.max(took);
                    if took > deadline {
                        v.push(
                            Violation::new(
                                FENCED_IN_TIME,
                                format!(
                                    "{} was first seen ZOMBIE {took} ms after the promotion of {} returned (deadline {deadline} ms)",
                                    name(old),
                                    name(p.server)
                                ),
                            )
                            .at(p.complete),
                        );
                    }
                }
                None => v.push(
                    Violation::new(
                        FENCED_IN_TIME,
                        format!(
                            "{} was never seen ZOMBIE after the promotion of {}",
                            name(old),
                            name(p.server)
                        ),
                    )
                    .at(p.complete),
                ),
            }
        }
    }

    // A fenced server acknowledges nothing.
    for w in &record.writes {
        if w.acked().is_none() {
            continue;
        }
        if let Some(s) = record.segments.iter().find(|s| {
            s.server == w.server
                && s.refuses_writes()
                && s.first <= w.invoke
                && s.last >= w.complete
        }) {
            v.push(
                Violation::new(
                    FENCED_ACKS_NOTHING,
                    format!(
                        "{} acknowledged {} while it was {} / {} (epoch {}) from before the call ({} ms) to after its answer ({} ms)",
                        name(w.server),
                        w.key,
                        s.role,
                        s.state,
                        s.epoch,
                        s.first,
                        s.last
                    ),
                )
                .write(w),
            );
            continue;
        }
        // The last promotion asked before the write was sent, if it is of
        // the other server and had returned (one of this server, whatever
        // its answer, may have made it writable again).
        let last = record
            .promotions
            .iter()
            .filter(|p| p.invoke <= w.invoke)
            .max_by_key(|p| p.invoke);
        // A promotion of this very server asked after that one and before
        // the answer came may have made it the writer the write reached
        // (found by the long run, seed 1098: a write sent to a standby
        // 1 ms before its own disaster promotion, acknowledged by it as
        // STANDALONE at the next epoch).
        let promoted_since = |p: &crate::history::Promotion| {
            record
                .promotions
                .iter()
                .any(|q| q.server == w.server && q.invoke > p.invoke && q.invoke <= w.complete)
        };
        if let Some(p) = last.filter(|p| {
            p.server != w.server && p.result.is_ok() && p.complete <= w.invoke && !promoted_since(p)
        }) {
            let late = match policy {
                Policy::Block => true,
                Policy::Degrade => {
                    p.fence_deadline_applies
                        && w.invoke > p.complete + heartbeat_interval_ms + 1_000
                }
            };
            if late {
                v.push(
                    Violation::new(
                        FENCED_ACKS_NOTHING,
                        format!(
                            "{} acknowledged {} sent {} ms after the promotion of {} returned ({})",
                            name(w.server),
                            w.key,
                            w.invoke - p.complete,
                            name(p.server),
                            match policy {
                                Policy::Block =>
                                    "block: it cannot have reached the promoted server",
                                Policy::Degrade => "past the fencing deadline",
                            }
                        ),
                    )
                    .write(w),
                );
            }
        }
    }

    check_samples(fin, policy, &mut c, &mut v);
    (c, v)
}

/// The reply time of the promotion before `p` (0 if none): writes acked
/// before it belong to an earlier epoch's check.
fn p_earlier(record: &Record, p: &crate::history::Promotion) -> Ms {
    record
        .promotions
        .iter()
        .filter(|q| q.result.is_ok() && q.complete < p.invoke)
        .map(|q| q.complete)
        .max()
        .unwrap_or(0)
}

fn check_samples(fin: &Final, policy: Policy, c: &mut Checked, v: &mut Vec<Violation>) {
    let summary: BTreeMap<&str, (u64, u64)> = fin.summary["clients"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| {
                    Some((
                        x["clientId"].as_str()?,
                        (x["samples"].as_u64()?, x["maxSeq"].as_u64()?),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    for e in &fin.edges {
        let id = e.client_id.as_str();
        let stored = fin.samples.get(id).map(Vec::as_slice).unwrap_or(&[]);
        c.samples_generated += e.generated;
        c.samples_stored += stored.len() as u64;
        c.samples_dropped += e.dropped;
        let mut seqs = BTreeSet::new();
        for (i, (seq, payload)) in stored.iter().enumerate() {
            if !seqs.insert(*seq) || (i > 0 && stored[i - 1].0 >= *seq) {
                v.push(Violation::new(
                    SAMPLES_AT_MOST_ONCE,
                    format!("{id}: sample seq {seq} stored twice (or out of order)"),
                ));
            }
            let want = format!("{{\"edge\":\"{id}\",\"seq\":{seq}}}");
            if payload.trim_end() != want {
                v.push(Violation::new(
                    SAMPLES_AT_MOST_ONCE,
                    format!("{id}: the sample stored at seq {seq} is {payload:?}, not {want}"),
                ));
            }
            if *seq > e.generated {
                v.push(Violation::new(
                    SAMPLES_AT_MOST_ONCE,
                    format!(
                        "{id}: seq {seq} is stored, yet the edge generated only {}",
                        e.generated
                    ),
                ));
            }
        }
        let want_summary = (stored.len() as u64, stored.last().map_or(0, |s| s.0));
        let got_summary = summary.get(id).copied().unwrap_or((0, 0));
        if got_summary != want_summary {
            v.push(Violation::new(
                SAMPLES_AT_MOST_ONCE,
                format!(
                    "{id}: getSummary says {} samples up to seq {}, getClientSamples lists {} up to {}",
                    got_summary.0, got_summary.1, want_summary.0, want_summary.1
                ),
            ));
        }
        if e.cached > 0 {
            v.push(Violation::new(
                SAMPLES_AT_LEAST_ONCE,
                format!(
                    "{id}: {} samples are still cached after recovery: not delivered to the final active",
                    e.cached
                ),
            ));
        }
        let archived: Vec<(u64, u64)> = fin
            .archive
            .iter()
            .filter(|a| a.entry["op"] == "samples" && a.entry["clientId"] == id)
            .filter_map(|a| Some((a.entry["firstSeq"].as_u64()?, a.entry["lastSeq"].as_u64()?)))
            .collect();
        let other = fin.other_samples.get(id);
        let mut missing = Vec::new();
        let mut only_on_other = Vec::new();
        for seq in 1..=e.acked_seq {
            if seqs.contains(&seq) {
                continue;
            }
            if archived.iter().any(|(a, b)| (*a..=*b).contains(&seq)) {
                c.samples_archived += 1;
                if policy == Policy::Degrade {
                    continue;
                }
            }
            if other.is_some_and(|o| o.contains(&seq)) {
                only_on_other.push(seq);
            } else {
                missing.push(seq);
            }
        }
        if !only_on_other.is_empty() {
            c.samples_only_on_other += only_on_other.len() as u64;
            v.push(
                Violation::new(
                    REPLICAS_AGREE,
                    format!(
                        "{id}: {} acknowledged samples are on {} only, not on the final active {}: seqs {}",
                        only_on_other.len(),
                        name(1 - fin.active),
                        name(fin.active),
                        ranges(&only_on_other)
                    ),
                )
            );
        }
        if missing.len() as u64 > e.dropped {
            v.push(Violation::new(
                SAMPLES_AT_LEAST_ONCE,
                format!(
                    "{id}: {} of the {} samples acknowledged are missing on the final active (it dropped {}): seqs {}",
                    missing.len(),
                    e.acked_seq,
                    e.dropped,
                    ranges(&missing)
                ),
            ));
        }
    }
}

/// `1-3, 7, 9-10`.
pub fn ranges(seqs: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < seqs.len() {
        let mut j = i;
        while j + 1 < seqs.len() && seqs[j + 1] == seqs[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            seqs[i].to_string()
        } else {
            format!("{}-{}", seqs[i], seqs[j])
        });
        i = j + 1;
        if out.len() >= 20 {
            out.push("…".into());
            break;
        }
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Promotion, Segment};
    use crate::workload::{key_of, value_of};
    use serde_json::json;

    fn w(writer: usize, n: u64, server: usize, t: (Ms, Ms), outcome: Outcome) -> Write {
        Write {
            writer,
            n,
            server,
            key: key_of(writer, n),
            value: value_of(writer, n),
            invoke: t.0,
            complete: t.1,
            outcome,
        }
    }

    fn ok(v: u64) -> Outcome {
        Outcome::Ok { version: v }
    }

    fn properties(v: &[Violation]) -> Vec<&'static str> {
        v.iter().map(|x| x.property).collect()
    }

    #[test]
    fn a_lost_acknowledged_write_is_found_and_an_archived_one_only_in_degrade() {
        let record = Record {
            writes: vec![
                w(0, 1, 0, (0, 5), ok(2)),
                w(0, 2, 0, (6, 9), ok(3)),
                w(0, 3, 0, (10, 12), Outcome::Unknown("timeout".into())),
            ],
            ..Record::default()
        };
        let mut fin = Final::default();
        fin.docs.insert(key_of(0, 1), (value_of(0, 1), 2));
        let (c, v) = check(&record, &fin, Policy::Degrade, 1000);
        assert_eq!((c.acked, c.unknown), (2, 1));
        assert_eq!(properties(&v), [NEVER_LOST]);
        assert!(
            v[0].detail
                .contains("u0-2 acknowledged by a at version 3 is lost"),
            "{}",
            v[0]
        );
        fin.archive.push(Archived {
            server: 0,
            epoch: 1,
            index: 3,
            entry: json!({"op": "put", "key": key_of(0, 2), "value": value_of(0, 2)}),
        });
        let (c, v) = check(&record, &fin, Policy::Degrade, 1000);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(c.acked_archived, 1);
        let (_, v) = check(&record, &fin, Policy::Block, 1000);
        assert_eq!(properties(&v), [NEVER_LOST]);
        assert!(v[0].detail.starts_with("block:"));
    }

    #[test]
    fn a_hot_key_may_be_superseded_by_a_later_write_of_its_writer_only() {
        // n = 5 and n = 20 write h0-1 and h0-1 (5/5 % 3 = 1, 20/5 % 3 = 1).
        assert_eq!(key_of(0, 5), key_of(0, 20));
        let record = Record {
            writes: vec![w(0, 5, 0, (0, 1), ok(4)), w(0, 20, 0, (2, 3), ok(9))],
            ..Record::default()
        };
        let mut fin = Final::default();
        fin.docs.insert(key_of(0, 5), (value_of(0, 20), 9));
        assert!(check(&record, &fin, Policy::Block, 1000).1.is_empty());
        fin.docs.insert(key_of(0, 5), (value_of(0, 5), 4));
        let (_, v) = check(&record, &fin, Policy::Block, 1000);
        assert_eq!(properties(&v), [NEVER_LOST]);
    }

    #[test]
    fn refused_writes_must_not_appear_nor_documents_nobody_wrote() {
        let record = Record {
            writes: vec![w(1, 1, 1, (0, 1), Outcome::Fail("standby".into()))],
            ..Record::default()
        };
        let mut fin = Final::default();
        fin.docs.insert(key_of(1, 1), (value_of(1, 1), 7));
        fin.docs.insert("other".into(), (json!(1), 8));
        let (_, v) = check(&record, &fin, Policy::Degrade, 1000);
        assert_eq!(properties(&v), [NO_EFFECT, NO_PHANTOM, NO_PHANTOM]);
    }

    fn promotion(
        server: usize,
        t: (Ms, Ms),
        bound: Option<u64>,
        docs: Vec<(String, u64)>,
    ) -> Promotion {
        Promotion {
            server,
            force: false,
            invoke: t.0,
            complete: t.1,
            result: Ok((2, bound)),
            fence_deadline_applies: true,
            docs_after: Some(docs),
        }
    }

    fn seg(server: usize, t: (Ms, Ms), role: &str) -> Segment {
        Segment {
            server,
            first: t.0,
            last: t.1,
            role: role.into(),
            state: role.into(),
            epoch: 1,
        }
    }

    #[test]
    fn rpo_and_fencing_at_a_promotion() {
        // a acked u0-1 before b's promotion, which lacks it.
        let record = Record {
            writes: vec![
                w(0, 1, 0, (0, 10), ok(5)),
                w(0, 2, 0, (3_000, 3_010), ok(6)),
            ],
            promotions: vec![promotion(1, (100, 200), Some(0), vec![])],
            segments: vec![
                seg(0, (0, 1_000), "ACTIVE"),
                seg(0, (4_000, 5_000), "ZOMBIE"),
            ],
            steps: vec![],
        };
        let mut fin = Final {
            active: 1,
            ..Final::default()
        };
        fin.docs.insert(key_of(0, 1), (value_of(0, 1), 5));
        fin.docs.insert(key_of(0, 2), (value_of(0, 2), 6));
        let (c, v) = check(&record, &fin, Policy::Degrade, 1000);
        assert_eq!(
            properties(&v),
            [RPO_AT_PROMOTION, FENCED_IN_TIME, FENCED_ACKS_NOTHING]
        );
        assert_eq!(c.fence_ms_max, 3_800);
        assert!(
            v[2].detail.contains("past the fencing deadline"),
            "{}",
            v[2]
        );
        // In block, any ack after the promotion returned is one too many.
        let (_, v) = check(&record, &fin, Policy::Block, 1000);
        assert!(v
            .iter()
            .any(|x| x.detail.contains("block: it cannot have reached")));
    }

    #[test]
    fn an_ack_racing_the_servers_own_promotion_is_no_fenced_ack() {
        // b was promoted (epoch 2); a rejoined as its standby; a write sent
        // to a 1 ms before a's own promotion is answered by a as the new
        // writer (the long run's seed 1098).
        let record = Record {
            writes: vec![w(0, 1, 0, (8_135, 8_137), ok(760))],
            promotions: vec![
                promotion(1, (3_723, 3_726), Some(0), vec![]),
                promotion(0, (8_136, 8_137), Some(0), vec![]),
            ],
            segments: vec![seg(0, (3_824, 8_121), "STANDBY")],
            steps: vec![],
        };
        let mut fin = Final::default();
        fin.docs.insert(key_of(0, 1), (value_of(0, 1), 760));
        let (_, v) = check(&record, &fin, Policy::Block, 1000);
        assert!(!properties(&v).contains(&FENCED_ACKS_NOTHING), "{v:?}");
        // Without a's own promotion the same ack is one too many.
        let record = Record {
            promotions: vec![promotion(1, (3_723, 3_726), Some(0), vec![])],
            ..record
        };
        let (_, v) = check(&record, &fin, Policy::Block, 1000);
        assert!(properties(&v).contains(&FENCED_ACKS_NOTHING), "{v:?}");
    }

    #[test]
    fn an_ack_from_a_server_seen_zombie_before_and_after_the_call() {
        let record = Record {
            writes: vec![w(0, 1, 0, (500, 600), ok(5))],
            segments: vec![seg(0, (400, 700), "ZOMBIE")],
            ..Record::default()
        };
        let mut fin = Final::default();
        fin.docs.insert(key_of(0, 1), (value_of(0, 1), 5));
        let (_, v) = check(&record, &fin, Policy::Degrade, 1000);
        assert_eq!(properties(&v), [FENCED_ACKS_NOTHING]);
        // Seen zombie only after the call was sent: it may have been in flight.
        let record = Record {
            segments: vec![seg(0, (550, 700), "ZOMBIE")],
            ..record
        };
        assert!(check(&record, &fin, Policy::Degrade, 1000).1.is_empty());
    }

    fn edge(generated: u64, acked: u64, cached: u64, dropped: u64) -> EdgeReport {
        EdgeReport {
            client_id: "edge-1".into(),
            following: Some(0),
            generated,
            acked_seq: acked,
            cached,
            dropped,
            paused: true,
            replies: [0, 0],
        }
    }

    fn stored(seqs: &[u64]) -> Vec<(u64, String)> {
        seqs.iter()
            .map(|s| (*s, format!("{{\"edge\":\"edge-1\",\"seq\":{s}}}   ")))
            .collect()
    }

    #[test]
    fn samples_once_and_at_least_once() {
        let mut fin = Final {
            edges: vec![edge(4, 4, 0, 0)],
            ..Final::default()
        };
        fin.samples.insert("edge-1".into(), stored(&[1, 2, 3, 4]));
        fin.summary = json!({"clients": [{"clientId": "edge-1", "samples": 4, "maxSeq": 4}]});
        let (c, v) = check(&Record::default(), &fin, Policy::Block, 1000);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!((c.samples_generated, c.samples_stored), (4, 4));
        // Seq 3 missing, twice stored 2, summary disagrees.
        fin.samples.insert("edge-1".into(), stored(&[1, 2, 2, 4]));
        let (_, v) = check(&Record::default(), &fin, Policy::Block, 1000);
        assert_eq!(
            properties(&v),
            [SAMPLES_AT_MOST_ONCE, SAMPLES_AT_LEAST_ONCE],
            "{v:?}"
        );
        // A seq the edge dropped may be missing; an archived one in degrade.
        fin.samples.insert("edge-1".into(), stored(&[1, 2, 4]));
        fin.summary = json!({"clients": [{"clientId": "edge-1", "samples": 3, "maxSeq": 4}]});
        fin.edges = vec![edge(4, 4, 0, 1)];
        assert!(check(&Record::default(), &fin, Policy::Block, 1000)
            .1
            .is_empty());
        fin.edges = vec![edge(4, 4, 0, 0)];
        fin.archive.push(Archived {
            server: 0,
            epoch: 1,
            index: 9,
            entry: json!({"op": "samples", "clientId": "edge-1", "firstSeq": 3, "lastSeq": 3}),
        });
        assert!(check(&Record::default(), &fin, Policy::Degrade, 1000)
            .1
            .is_empty());
        assert_eq!(
            properties(&check(&Record::default(), &fin, Policy::Block, 1000).1),
            [SAMPLES_AT_LEAST_ONCE]
        );
        fin.edges = vec![edge(4, 2, 2, 0)];
        assert!(
            properties(&check(&Record::default(), &fin, Policy::Degrade, 1000).1)
                .contains(&SAMPLES_AT_LEAST_ONCE)
        );
    }

    #[test]
    fn samples_kept_by_the_other_server_only_fail_the_check() {
        let mut fin = Final {
            edges: vec![edge(4, 4, 0, 0)],
            ..Final::default()
        };
        fin.samples.insert("edge-1".into(), stored(&[1, 4]));
        fin.summary = json!({"clients": [{"clientId": "edge-1", "samples": 2, "maxSeq": 4}]});
        fin.other_samples
            .insert("edge-1".into(), [1, 2, 4].into_iter().collect());
        let (c, v) = check(&Record::default(), &fin, Policy::Block, 1000);
        // 2 is on b only (the replicas disagree), 3 nowhere (a loss).
        assert_eq!(
            properties(&v),
            [REPLICAS_AGREE, SAMPLES_AT_LEAST_ONCE],
            "{v:?}"
        );
        assert_eq!(c.samples_only_on_other, 1);
    }

    #[test]
    fn ranges_are_compact() {
        assert_eq!(ranges(&[1, 2, 3, 7, 9, 10]), "1-3, 7, 9-10");
        assert_eq!(ranges(&[]), "");
    }
}
