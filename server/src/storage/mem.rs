//! [`MemStorage`]: the reference [`MemStore`] behind the [`Storage`] trait.

use super::{
    check_batch_shape, commit_hole, truncate_refused, ArchivedEntry, SampleSummary, Storage,
    StorageError, StorageInfo, HISTORY_KEEP_MAX, HISTORY_RESTORE_MAX, READ_ROWS_MAX,
};
use std::collections::BTreeMap;
use vcodr_core::{
    ClientContact, ClientId, Doc, Index, MemStore, PersistOp, PersistSeq, Restored, SampleChunk,
    SampleRange, Transition,
};

/// Storage in memory, for driver tests: the core's reference store with the
/// same history bound as [`super::RedbStorage`]. Nothing survives the process;
/// "durable" means "committed to this value".
#[derive(Clone, Debug)]
pub struct MemStorage {
    /// The reference store; every op means what it makes of it.
    store: MemStore,
    /// The last saved contact table, by client id.
    contacts: BTreeMap<ClientId, ClientContact>,
}

impl Default for MemStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStorage {
    /// An empty store keeping [`HISTORY_KEEP_MAX`] transitions.
    pub fn new() -> Self {
        MemStorage {
            store: MemStore::new(HISTORY_KEEP_MAX),
            contacts: BTreeMap::new(),
        }
    }

    /// The reference store inside (for tests that inspect it).
    pub fn store(&self) -> &MemStore {
        &self.store
    }
}

/// Refuses what `MemStore` would panic on or apply silently wrong: truncating
/// a committed entry, committing over a hole in the log.
fn check_op(store: &MemStore, seq: PersistSeq, op: &PersistOp) -> Result<(), StorageError> {
    match op {
        PersistOp::TruncateAfter(index) if *index < store.commit => {
            Err(truncate_refused(seq, *index, store.commit))
        }
        PersistOp::Commit(index) => {
            let commit = store.commit.max(*index);
            let applying = store
                .log
                .iter()
                .filter(|e| e.index > store.applied.index && e.index <= commit);
            for (expected, e) in (store.applied.index + 1..).zip(applying) {
                if e.index != expected {
                    return Err(commit_hole(seq, expected, e.index));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

impl Storage for MemStorage {
    fn load(&self) -> Result<Restored, StorageError> {
        let mut r = self.store.restored();
        let excess = r.history.len().saturating_sub(HISTORY_RESTORE_MAX);
        r.history.drain(..excess);
        Ok(r)
    }

    fn commit(&mut self, batch: &[(PersistSeq, Vec<PersistOp>)]) -> Result<(), StorageError> {
        check_batch_shape(batch)?;
        // Apply to a copy and swap it in at the end: a refused op leaves nothing behind.
        let mut next = self.store.clone();
        for (seq, ops) in batch {
            for op in ops {
                check_op(&next, *seq, op)?;
                next.apply(std::slice::from_ref(op));
            }
        }
        self.store = next;
        Ok(())
    }

    fn get_doc(&self, key: &str) -> Result<Option<Doc>, StorageError> {
        Ok(self.store.applied.docs.get(key).cloned())
    }

    fn list_docs(&self) -> Result<Vec<(String, Index)>, StorageError> {
        Ok(self
            .store
            .applied
            .docs
            .iter()
            .map(|(k, d)| (k.clone(), d.version))
            .collect())
    }

    fn samples(
        &self,
        client: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        if after_seq == u64::MAX {
            return Ok(Vec::new());
        }
        let from = (client.to_string(), after_seq + 1);
        let to = (client.to_string(), u64::MAX);
        Ok(self
            .store
            .samples
            .range(from..=to)
            .take(limit.min(READ_ROWS_MAX))
            .map(|((_, seq), payload)| (*seq, payload.clone()))
            .collect())
    }

    fn read_samples(
        &self,
        ranges: &[SampleRange],
        max_bytes: usize,
        max_samples: usize,
    ) -> Result<Vec<SampleChunk>, StorageError> {
        Ok(self.store.read_samples(ranges, max_bytes, max_samples))
    }

    fn sample_summary(&self) -> Result<Vec<SampleSummary>, StorageError> {
        let mut out: Vec<SampleSummary> = Vec::new();
        for (client, seq) in self.store.samples.keys() {
            match out.last_mut() {
                Some(s) if &s.client == client => {
                    s.count += 1;
                    s.max_seq = s.max_seq.max(*seq);
                }
                _ => out.push(SampleSummary {
                    client: client.clone(),
                    count: 1,
                    max_seq: *seq,
                }),
            }
        }
        Ok(out)
    }

    fn archive(&self, offset: u64, limit: usize) -> Result<Vec<ArchivedEntry>, StorageError> {
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        Ok(self
            .store
            .archive
            .iter()
            .skip(skip)
            .take(limit.min(READ_ROWS_MAX))
            .map(|a| ArchivedEntry {
                index: a.entry.index,
                epoch: a.entry.epoch,
                op: a.entry.op.clone(),
                reason: a.reason.clone(),
            })
            .collect())
    }

    fn archive_len(&self) -> Result<u64, StorageError> {
        Ok(self.store.archive.len() as u64)
    }

    fn history(&self, limit: usize) -> Result<Vec<Transition>, StorageError> {
        let h = &self.store.history;
        let n = limit.min(READ_ROWS_MAX).min(h.len());
        Ok(h.iter().skip(h.len() - n).cloned().collect())
    }

    fn info(&self) -> Result<StorageInfo, StorageError> {
        let s = &self.store;
        Ok(StorageInfo {
            path: None,
            file_bytes: 0,
            schema_version: super::SCHEMA_VERSION,
            log_entries: s.log.len() as u64,
            first_log_index: s.log.first().map(|e| e.index),
            last_log_index: s.log.last().map(|e| e.index),
            commit_index: s.commit,
            applied_index: s.applied.index,
            docs: s.applied.docs.len() as u64,
            samples: s.samples.len() as u64,
            duplicate_samples: s.duplicate_samples,
            archive_entries: s.archive.len() as u64,
            history_entries: s.history.len() as u64,
            contacts: self.contacts.len() as u64,
        })
    }

    fn save_contacts(&mut self, contacts: &[ClientContact]) -> Result<(), StorageError> {
        self.contacts = contacts
            .iter()
            .map(|c| (c.client_id.clone(), c.clone()))
            .collect();
        Ok(())
    }

    fn load_contacts(&self) -> Result<Vec<ClientContact>, StorageError> {
        Ok(self.contacts.values().cloned().collect())
    }
}
