//! The reference meaning of [`PersistOp`]s: an in-memory durable store.
//!
//! [`MemStore`] is what "durable" means for vcodr. The model checker keeps one
//! per server as the part of its state that survives a crash, the core's test
//! harness does the same, and the server's on-disk storage is tested against
//! it (same ops in, same [`Restored`] out).

use crate::api::{DurableMeta, PersistOp, SAMPLE_OVERHEAD_BYTES};
use crate::msg::{SampleChunk, SampleRange, Snapshot};
use crate::types::*;
use std::collections::{BTreeMap, VecDeque};

/// What a server restarts from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Restored {
    /// `None`: the server never ran; it starts STANDALONE / UNCONFIGURED.
    pub meta: Option<DurableMeta>,
    /// Applied state: configuration and sample sequences at `applied.index`.
    pub applied: Snapshot,
    /// Highest committed index (entries above `applied.index` up to here are replayed).
    pub commit: Index,
    /// Stored log entries, in order (may begin at or before `applied.index`).
    pub log: Vec<Entry>,
    /// Most recent state-history transitions, oldest first.
    pub history: Vec<Transition>,
    /// Sample ranges this server lacks and copies from its active, in
    /// `(client, after_seq)` order ([`PersistOp::SamplesToCopy`]).
    pub samples_to_copy: Vec<SampleRange>,
}

/// An entry moved to the divergence archive at rejoin.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Archived {
    pub entry: Entry,
    pub reason: String,
}

/// Applies one committed entry to an applied state. Shared by the core and stores.
pub fn apply_entry(state: &mut Snapshot, entry: &Entry) {
    debug_assert_eq!(entry.index, state.index + 1, "entries are applied in order");
    match &entry.op {
        Op::Put { key, value } => {
            state.docs.insert(
                key.clone(),
                Doc {
                    value: value.clone(),
                    version: entry.index,
                },
            );
            state.config_index = entry.index;
        }
        Op::Delete { key } => {
            state.docs.remove(key);
            state.config_index = entry.index;
        }
        Op::Samples { .. } => fold_sample_seq(&mut state.sample_seq, &entry.op),
        Op::EpochStart => state.epoch_starts.push((entry.epoch, entry.index)),
    }
    state.index = entry.index;
    state.epoch = entry.epoch;
}

/// Folds the samples of `op` into the highest sample seq of each client:
/// the one rule both for the applied state (`Snapshot::sample_seq`) and for
/// what the log holds beyond it (a server's pending seqs).
pub(crate) fn fold_sample_seq(seqs: &mut BTreeMap<ClientId, u64>, op: &Op) {
    if let Op::Samples { client, samples } = op {
        if let Some(last) = samples.last() {
            let seq = seqs.entry(client.clone()).or_insert(0);
            *seq = (*seq).max(last.seq);
        }
    }
}

/// The reference durable store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct MemStore {
    pub meta: Option<DurableMeta>,
    pub history: VecDeque<Transition>,
    /// History transitions kept (0 keeps none: the model checker's choice).
    pub history_cap: usize,
    pub log: Vec<Entry>,
    pub applied: Snapshot,
    pub commit: Index,
    pub archive: Vec<Archived>,
    /// Stored monitoring samples by `(client, seq)`.
    pub samples: BTreeMap<(ClientId, u64), Vec<u8>>,
    /// Samples applied whose `(client, seq)` was already stored: must stay 0.
    pub duplicate_samples: u64,
    /// Sample ranges still to copy from the active: `(client, after_seq)` →
    /// `up_to_seq` ([`PersistOp::SamplesToCopy`], [`PersistOp::StoreSamples`]).
    pub samples_to_copy: BTreeMap<(ClientId, u64), u64>,
}

impl MemStore {
    /// An empty store keeping at most `history_cap` transitions.
    pub fn new(history_cap: usize) -> Self {
        MemStore {
            history_cap,
            ..MemStore::default()
        }
    }

    /// Applies `ops` in order, as one atomic commit.
    pub fn apply(&mut self, ops: &[PersistOp]) {
        for op in ops {
            self.apply_one(op);
        }
    }

    fn apply_one(&mut self, op: &PersistOp) {
        match op {
            PersistOp::Meta(m) => self.meta = Some((**m).clone()),
            PersistOp::History(t) => {
                if self.history_cap > 0 {
                    if self.history.len() == self.history_cap {
                        self.history.pop_front();
                    }
                    self.history.push_back(t.clone());
                }
            }
            PersistOp::Append(entries) => {
                if let Some(first) = entries.first() {
                    // An append rewrites everything from its first index on.
                    let keep = self.log.partition_point(|x| x.index < first.index);
                    self.log.truncate(keep);
                    self.log.extend(entries.iter().cloned());
                }
            }
            PersistOp::TruncateAfter(index) => {
                assert!(*index >= self.commit, "truncating committed entries");
                self.log.retain(|x| x.index <= *index);
            }
            PersistOp::Commit(index) => {
                self.commit = self.commit.max(*index);
                let from = self.applied.index;
                let start = self.log.partition_point(|e| e.index <= from);
                let end = self.log.partition_point(|e| e.index <= self.commit);
                let to_apply: Vec<Entry> = self.log[start..end.max(start)].to_vec();
                for e in &to_apply {
                    if let Op::Samples { client, samples } = &e.op {
                        for s in samples {
                            let key = (client.clone(), s.seq);
                            if self.samples.insert(key, s.payload.clone()).is_some() {
                                self.duplicate_samples += 1;
                            }
                        }
                    }
                    apply_entry(&mut self.applied, e);
                }
            }
            PersistOp::InstallSnapshot(s) => {
                self.applied = s.clone();
                self.commit = s.index;
                self.log.clear();
                // Samples are not part of a snapshot: those the old state had
                // beyond the new state's sequences belong to the divergence
                // archive (already moved by `Archive`) or were never committed.
                let seqs = &s.sample_seq;
                self.samples
                    .retain(|(c, q), _| seqs.get(c).is_some_and(|m| q <= m));
            }
            PersistOp::Archive { after, reason } => {
                let (keep, moved): (Vec<_>, Vec<_>) =
                    self.log.drain(..).partition(|e| e.index <= *after);
                self.log = keep;
                self.archive.extend(moved.into_iter().map(|entry| Archived {
                    entry,
                    reason: reason.clone(),
                }));
            }
            PersistOp::PruneSamples { client, below_seq } => {
                let from = (client.clone(), 0);
                let to = (client.clone(), *below_seq);
                let gone: Vec<(ClientId, u64)> = self
                    .samples
                    .range(from..to)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in gone {
                    self.samples.remove(&k);
                }
            }
            PersistOp::Compact { below } => {
                let keep_from = (*below).min(self.commit + 1).min(self.applied.index + 1);
                self.log.retain(|e| e.index >= keep_from);
            }
            PersistOp::SamplesToCopy(ranges) => {
                self.samples_to_copy = ranges
                    .iter()
                    .map(|r| ((r.client.clone(), r.after_seq), r.up_to_seq))
                    .collect();
            }
            PersistOp::StoreSamples(chunk) => {
                for s in &chunk.samples {
                    let key = (chunk.client.clone(), s.seq);
                    if self.samples.insert(key, s.payload.clone()).is_some() {
                        self.duplicate_samples += 1;
                    }
                }
                let key = (chunk.client.clone(), chunk.after_seq);
                if let Some(up_to) = self.samples_to_copy.remove(&key) {
                    if chunk.through_seq < up_to {
                        let rest = (chunk.client.clone(), chunk.through_seq);
                        self.samples_to_copy.insert(rest, up_to);
                    }
                }
            }
        }
    }

    /// The reference meaning of [`Output::ReadSamples`](crate::Output::ReadSamples):
    /// [`read_sample_chunks`] over this store's samples.
    pub fn read_samples(
        &self,
        ranges: &[SampleRange],
        max_bytes: usize,
        max_samples: usize,
    ) -> Vec<SampleChunk> {
        let read = read_sample_chunks(ranges, max_bytes, max_samples, |r| {
            let from = (r.client.clone(), r.after_seq + 1);
            let to = (r.client.clone(), r.up_to_seq);
            Ok::<_, std::convert::Infallible>(self.samples.range(from..=to).map(|((_, seq), p)| {
                Ok(Sample {
                    seq: *seq,
                    payload: p.clone(),
                })
            }))
        });
        match read {
            Ok(chunks) => chunks,
            Err(never) => match never {},
        }
    }

    /// What a server restarting from this store gets.
    pub fn restored(&self) -> Restored {
        Restored {
            meta: self.meta.clone(),
            applied: self.applied.clone(),
            commit: self.commit,
            log: self.log.clone(),
            history: self.history.iter().cloned().collect(),
            samples_to_copy: self
                .samples_to_copy
                .iter()
                .map(|((client, after_seq), up_to_seq)| SampleRange {
                    client: client.clone(),
                    after_seq: *after_seq,
                    up_to_seq: *up_to_seq,
                })
                .collect(),
        }
    }

    /// Whether a `Put` of `key` with `value` is in the log or the applied state
    /// (the model checker writes every key once, so this finds an acknowledged write).
    pub fn contains_put(&self, key: &str, value: &[u8]) -> bool {
        self.applied.docs.get(key).is_some_and(|d| d.value == value)
            || self
                .log
                .iter()
                .any(|e| matches!(&e.op, Op::Put { key: k, value: v } if k == key && v == value))
    }

    /// Whether the divergence archive holds a `Put` of `key` with `value`.
    pub fn archived_put(&self, key: &str, value: &[u8]) -> bool {
        self.archive
            .iter()
            .any(|a| matches!(&a.entry.op, Op::Put { key: k, value: v } if k == key && v == value))
    }
}

/// How every store answers [`Output::ReadSamples`](crate::Output::ReadSamples)
/// (the in-memory reference and each `Storage`): for each range in order,
/// the stored samples of its client with `after_seq < seq <= up_to_seq`, as
/// one [`SampleChunk`] whose `through_seq` is the range's end when all of it
/// was read. The read stops before the first sample that would bring it
/// above `max_bytes` (payload + [`SAMPLE_OVERHEAD_BYTES`] each) or
/// `max_samples`, except that its first sample is always taken; the range it
/// stops in answers up to its last sample taken (no chunk if none), and later
/// ranges are not answered. Ranges with `after_seq >= up_to_seq` are skipped.
/// `samples_of(range)` yields those samples of the store, in seq order; its
/// errors end the read.
pub fn read_sample_chunks<E, I>(
    ranges: &[SampleRange],
    max_bytes: usize,
    max_samples: usize,
    mut samples_of: impl FnMut(&SampleRange) -> Result<I, E>,
) -> Result<Vec<SampleChunk>, E>
where
    I: Iterator<Item = Result<Sample, E>>,
{
    let mut budget = SampleBudget::new(max_bytes, max_samples);
    let mut out = Vec::new();
    for r in ranges.iter().filter(|r| r.after_seq < r.up_to_seq) {
        let mut chunk = SampleChunk {
            client: r.client.clone(),
            after_seq: r.after_seq,
            through_seq: r.up_to_seq,
            samples: Vec::new(),
        };
        let mut full = false;
        for sample in samples_of(r)? {
            let sample = sample?;
            if !budget.take(sample.payload.len()) {
                full = true;
                break;
            }
            chunk.samples.push(sample);
        }
        if full {
            if let Some(last) = chunk.samples.last() {
                chunk.through_seq = last.seq;
                out.push(chunk);
            }
            break;
        }
        out.push(chunk);
    }
    Ok(out)
}

/// The bounds of one read of samples ([`read_sample_chunks`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SampleBudget {
    bytes_left: usize,
    samples_left: usize,
    taken: usize,
}

impl SampleBudget {
    fn new(max_bytes: usize, max_samples: usize) -> Self {
        SampleBudget {
            bytes_left: max_bytes,
            samples_left: max_samples,
            taken: 0,
        }
    }

    /// Takes a sample of `payload_bytes` if it fits (the first always does);
    /// false: the read stops before it.
    fn take(&mut self, payload_bytes: usize) -> bool {
        let bytes = payload_bytes + SAMPLE_OVERHEAD_BYTES;
        let fits = self.samples_left > 0 && bytes <= self.bytes_left;
        if !fits && self.taken > 0 {
            return false;
        }
        self.bytes_left = self.bytes_left.saturating_sub(bytes);
        self.samples_left = self.samples_left.saturating_sub(1);
        self.taken += 1;
        true
    }
}
