//! [`LogShape`]: what [`super::WalStorage`] must know of redb's state to
//! refuse a batch before it is logged, kept in memory so that the log
//! thread never waits for the apply thread: the commit index, the applied
//! index and which log indexes above it are stored.
//!
//! It refuses exactly what [`crate::storage::RedbStorage`] refuses while
//! applying (and [`crate::storage::MemStorage`] before it): a
//! `TruncateAfter` below the commit index, a `Commit` over a hole in the log
//! above the applied index, with the same messages. Every other op changes
//! it as redb's log table and head change. The conformance suite and the
//! refused-batch tests run against it through [`super::WalStorage`]; a batch
//! it accepts that redb then refuses is a storage failure (fail-stop).

use crate::storage::{commit_hole, truncate_refused, StorageError};
use vcodr_core::{Index, PersistOp, PersistSeq};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct LogShape {
    /// Highest committed index (redb's `head.commit`).
    pub commit: Index,
    /// Last log index applied to the documents (redb's `head.applied_index`).
    pub applied: Index,
    /// Log indexes above `applied` that the log table holds: inclusive
    /// ranges, ascending, neither overlapping nor adjacent.
    pub above: Vec<(Index, Index)>,
}

impl LogShape {
    /// From the stored indexes above `applied`, ascending.
    pub fn new(commit: Index, applied: Index, stored: impl IntoIterator<Item = Index>) -> Self {
        let mut shape = LogShape {
            commit,
            applied,
            above: Vec::new(),
        };
        for index in stored {
            shape.insert(index);
        }
        shape
    }

    /// Applies `batch` to a copy; the copy if every op is accepted.
    pub fn after(&self, batch: &[(PersistSeq, Vec<PersistOp>)]) -> Result<LogShape, StorageError> {
        let mut next = self.clone();
        for (seq, ops) in batch {
            for op in ops {
                next.apply(*seq, op)?;
            }
        }
        Ok(next)
    }

    fn apply(&mut self, seq: PersistSeq, op: &PersistOp) -> Result<(), StorageError> {
        match op {
            PersistOp::Append(entries) => {
                for e in entries {
                    // An entry at a stored index replaces it and everything after.
                    self.remove_from(e.index);
                    self.insert(e.index);
                }
            }
            PersistOp::TruncateAfter(index) => {
                if *index < self.commit {
                    return Err(truncate_refused(seq, *index, self.commit));
                }
                self.remove_after(*index);
            }
            PersistOp::Archive { after, .. } => self.remove_after(*after),
            PersistOp::Commit(index) => {
                self.commit = self.commit.max(*index);
                // Entries (applied, commit] are applied in order; the first
                // stored one that does not follow the last applied is a hole.
                while let Some(&(lo, hi)) = self.above.first() {
                    if lo > self.commit {
                        break;
                    }
                    if lo != self.applied + 1 {
                        return Err(commit_hole(seq, self.applied + 1, lo));
                    }
                    self.applied = hi.min(self.commit);
                    if hi <= self.commit {
                        self.above.remove(0);
                    } else {
                        self.above[0].0 = self.commit + 1;
                    }
                }
            }
            PersistOp::InstallSnapshot(s) => {
                self.applied = s.index;
                self.commit = s.index;
                self.above.clear();
            }
            // Compaction removes only entries up to the applied index.
            PersistOp::Compact { .. }
            | PersistOp::Meta(_)
            | PersistOp::History(_)
            | PersistOp::PruneSamples { .. }
            | PersistOp::SamplesToCopy(_)
            | PersistOp::StoreSamples(_) => {}
        }
        Ok(())
    }

    /// Records `index` as stored (nothing at or above it is: callers remove
    /// the suffix first). Indexes up to `applied` are not tracked.
    fn insert(&mut self, index: Index) {
        if index <= self.applied {
            return;
        }
        match self.above.last_mut() {
            Some((_, hi)) if *hi + 1 == index => *hi = index,
            _ => self.above.push((index, index)),
        }
    }

    /// Forgets every stored index `> index` (none above `u64::MAX`).
    fn remove_after(&mut self, index: Index) {
        if let Some(from) = index.checked_add(1) {
            self.remove_from(from);
        }
    }

    /// Forgets every stored index `>= from`.
    fn remove_from(&mut self, from: Index) {
        while let Some((lo, hi)) = self.above.last_mut() {
            if *lo >= from {
                self.above.pop();
            } else {
                if *hi >= from {
                    *hi = from - 1;
                }
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{MemStorage, Storage};
    use vcodr_core::rng::Rng;
    use vcodr_core::{Entry, Op, Snapshot};

    /// The shape [`MemStorage`]'s reference store has.
    fn of(mem: &MemStorage) -> LogShape {
        let s = mem.store();
        let applied = s.applied.index;
        let stored = s.log.iter().map(|e| e.index).filter(|&i| i > applied);
        LogShape::new(s.commit, applied, stored)
    }

    fn random_op(rng: &mut Rng) -> PersistOp {
        let index = rng.range(0, 14);
        match rng.range(0, 12) {
            0..=3 => {
                // Ascending, as the core appends; sometimes with a gap.
                let n = rng.range(1, 4);
                let step = if rng.range(0, 5) == 0 { 2 } else { 1 };
                PersistOp::Append(
                    (0..n)
                        .map(|k| Entry {
                            epoch: 1,
                            index: index.max(1) + k * step,
                            op: Op::Put {
                                key: format!("k{}", rng.range(0, 4)),
                                value: vec![k as u8],
                            },
                        })
                        .collect(),
                )
            }
            4..=6 => PersistOp::Commit(index),
            // The highest index too: nothing is after it.
            7 => PersistOp::TruncateAfter(if rng.range(0, 6) == 0 {
                Index::MAX
            } else {
                index
            }),
            8 => PersistOp::Archive {
                after: if rng.range(0, 6) == 0 {
                    Index::MAX
                } else {
                    index
                },
                reason: "test".into(),
            },
            9 | 10 => PersistOp::Compact { below: index },
            _ => PersistOp::InstallSnapshot(Snapshot {
                index,
                epoch: u64::from(index > 0),
                ..Snapshot::default()
            }),
        }
    }

    /// Against the reference store, over random streams with holes,
    /// truncations of committed entries, archives (after the highest index
    /// too), compactions and snapshots: the same batches accepted, the same refusals with the
    /// same messages, and after every batch exactly the reference's shape.
    #[test]
    fn refuses_exactly_what_the_reference_store_refuses() {
        let seed = 0x5A4E_0001;
        let mut rng = Rng::new(seed);
        let (mut accepted, mut refused) = (0, 0);
        for stream in 0..200 {
            let mut mem = MemStorage::new();
            let mut shape = LogShape::default();
            for b in 0..40u64 {
                let ctx = format!("seed {seed:#x}, stream {stream}, batch {b}");
                let batch: Vec<(PersistSeq, Vec<PersistOp>)> = (0..rng.range(1, 3))
                    .map(|r| {
                        (
                            b * 4 + r,
                            (0..rng.range(1, 3)).map(|_| random_op(&mut rng)).collect(),
                        )
                    })
                    .collect();
                let expected = mem.commit(&batch).map_err(|e| e.to_string());
                let got = shape.after(&batch).map_err(|e| e.to_string());
                match (expected, got) {
                    (Ok(()), Ok(next)) => {
                        shape = next;
                        accepted += 1;
                    }
                    (Err(e), Err(g)) => {
                        assert_eq!(g, e, "{ctx}: {batch:?}");
                        refused += 1;
                    }
                    (e, g) => panic!("{ctx}: reference {e:?}, shape {g:?}: {batch:?}"),
                }
                assert_eq!(shape, of(&mem), "{ctx}: {batch:?}");
            }
        }
        assert!(
            accepted > 2_000 && refused > 500,
            "{accepted} accepted, {refused} refused"
        );
    }
}
