//! [`WalStorage`]: the production [`Storage`]. A commit costs one
//! `fdatasync` of an append-only log; redb holds the state readers serve.
//!
//! # Design
//! A data directory holds `vcodr.redb` (the materialized state, exactly as
//! [`RedbStorage`] lays it out) and `wal/`, segment files of a write-ahead
//! log of commit batches (format in [`segment`]).
//!
//! [`Storage::commit`] of a batch:
//! 1. applies the batch to redb in a write transaction, not yet committed (a
//!    batch the core must never send is refused here, before it is logged);
//! 2. appends one record — its own LSN, the postcard-encoded batch — to the
//!    active segment with `pwrite` and makes it durable with one `fdatasync`:
//!    from here the batch survives `kill -9` and power loss;
//! 3. commits the redb transaction with `Durability::None`: readers see the
//!    batch at once; a crash reverts redb to its last durable commit.
//!
//! Atomicity comes from the record: a batch is there after a restart iff
//! its record is complete and valid. Every [`CHECKPOINT_BATCHES`] batches or
//! [`CHECKPOINT_BYTES`] logged bytes, step 3 is `Durability::Immediate`
//! instead (a checkpoint: redb then durably holds every batch up to this
//! LSN, recorded in its `state` table), and the segments wholly below it
//! are removed. The checkpoint is paid inline by that one commit (~1 ms);
//! redb takes one write transaction at a time, so a background checkpoint
//! would hold up the next commit all the same.
//!
//! A batch whose record would exceed [`RECORD_BYTES_MAX`] (a snapshot
//! install, a large catch-up) is not logged: it is committed to redb as a
//! checkpoint, itself one atomic durable transaction.
//!
//! At open: redb is opened (and migrated) as [`RedbStorage`] does, the log
//! is read, records above redb's checkpoint are replayed into redb in one
//! durable transaction, then the store serves. A record cut short or
//! failing its CRC-32C at the end of the log was never acknowledged (a
//! commit returns only after its `fdatasync`): it is zeroed and logged (file,
//! offset, bytes). A damaged record with an intact one after it is
//! corruption of acknowledged data: [`StorageError::WalCorrupt`] names the
//! file and offset, and the store does not open. A directory holding only
//! `vcodr.redb` opens with an empty log.
//!
//! # Bounds
//! [`SEGMENT_BYTES`] per segment (zero-filled and synced when created, so a
//! record's `fdatasync` never allocates, and a full disk fails there,
//! before any record is written), [`SEGMENT_RECORDS_MAX`] records per
//! segment, [`RECORD_BYTES_MAX`] per record, a checkpoint every
//! [`CHECKPOINT_BATCHES`] batches or [`CHECKPOINT_BYTES`]: replay at open
//! reads at most that much, and the log holds about two segments.
//!
//! # Errors
//! Fail-stop, as [`Storage`] requires. If a commit fails after its record
//! was durable (redb could not commit), the record is zeroed again so that
//! the failed batch is not replayed; any failure from the log's write on,
//! or of redb (a contact save too), leaves the store refusing every later
//! commit, naming that first cause (redb itself answers later calls only
//! with "Previous I/O error").

mod log;
pub mod segment;
#[cfg(test)]
mod tests;

use self::log::Log;
use super::{
    check_batch_shape, ArchivedEntry, RedbStorage, SampleSummary, Storage, StorageError,
    StorageInfo,
};
use std::path::{Path, PathBuf};
use vcodr_core::{
    ClientContact, Doc, Index, PersistOp, PersistSeq, Restored, SampleChunk, SampleRange,
    Transition,
};

/// Bytes of one segment file, zero-filled when it is created.
pub const SEGMENT_BYTES: u64 = 4 << 20;
/// Records one segment holds at most (bounds the scan of one segment at open).
pub const SEGMENT_RECORDS_MAX: u64 = 65_536;
/// A batch whose record (header and encoded batch) is larger is committed
/// to redb directly, as a checkpoint.
pub const RECORD_BYTES_MAX: usize = 1 << 20;
/// A checkpoint (a durable redb commit) at least every this many logged batches...
pub const CHECKPOINT_BATCHES: u64 = 1_024;
/// ...or this many logged bytes, whichever comes first.
pub const CHECKPOINT_BYTES: u64 = 4 << 20;

/// The redb file in a data directory.
pub const REDB_FILE: &str = "vcodr.redb";
/// The write-ahead log's directory in a data directory.
pub const WAL_DIR: &str = "wal";

const _: () = assert!(RECORD_BYTES_MAX as u64 <= SEGMENT_BYTES);
const _: () = assert!(CHECKPOINT_BYTES <= SEGMENT_BYTES);

/// The bounds of one [`WalStorage`]; [`WalBounds::default`] is the
/// production set of constants above. Tests shrink them to reach segment
/// rolls and checkpoints within a few batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalBounds {
    pub segment_bytes: u64,
    pub segment_records: u64,
    pub record_bytes_max: usize,
    pub checkpoint_batches: u64,
    pub checkpoint_bytes: u64,
}

impl Default for WalBounds {
    fn default() -> Self {
        WalBounds {
            segment_bytes: SEGMENT_BYTES,
            segment_records: SEGMENT_RECORDS_MAX,
            record_bytes_max: RECORD_BYTES_MAX,
            checkpoint_batches: CHECKPOINT_BATCHES,
            checkpoint_bytes: CHECKPOINT_BYTES,
        }
    }
}

/// Durable storage: a write-ahead log of commit batches in front of a redb
/// file. See the module documentation.
#[derive(Debug)]
pub struct WalStorage {
    redb: RedbStorage,
    log: Log,
    dir: PathBuf,
    bounds: WalBounds,
    /// Logged batches and bytes since the last durable redb commit.
    since_checkpoint: (u64, u64),
    /// Set when a commit failed from the log's write on, or redb failed
    /// (not a refused batch): no commit after it; the first cause, named by
    /// every later refusal.
    failed: Option<String>,
    /// Encoded batch (reused).
    payload: Vec<u8>,
}

impl WalStorage {
    /// Opens the store in `data_dir` ([`REDB_FILE`] and [`WAL_DIR`]),
    /// creating what is missing (the directory too), with the production bounds.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_with(data_dir, WalBounds::default())
    }

    /// [`WalStorage::open`] with other bounds.
    pub fn open_with(data_dir: impl AsRef<Path>, bounds: WalBounds) -> Result<Self, StorageError> {
        assert!(bounds.segment_records >= 1 && bounds.checkpoint_batches >= 1);
        let dir = data_dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)
            .map_err(segment::io_err(&dir, "creating the data directory"))?;
        let redb = RedbStorage::open(dir.join(REDB_FILE))?;
        let checkpoint = redb.wal_lsn()?;
        let (log, pending) = Log::open(&dir.join(WAL_DIR), checkpoint, bounds)?;
        if let Some(last) = pending.last() {
            let mut batches = Vec::with_capacity(pending.len());
            for p in &pending {
                let batch: Vec<(PersistSeq, Vec<PersistOp>)> = postcard::from_bytes(&p.payload)
                    .map_err(|e| StorageError::WalCorrupt {
                        path: p.path.clone(),
                        offset: p.offset as u64,
                        why: format!("record {} passes its CRC but does not decode: {e}", p.lsn),
                    })?;
                batches.push(batch);
            }
            let slices: Vec<&[(PersistSeq, Vec<PersistOp>)]> =
                batches.iter().map(Vec::as_slice).collect();
            redb.commit_logged(&slices, last.lsn, true, || Ok(()))
                .map_err(|e| match e {
                    StorageError::InvalidBatch { seq, why } => StorageError::WalCorrupt {
                        path: last.path.clone(),
                        offset: last.offset as u64,
                        why: format!(
                            "replaying records {}..={} refused request {seq}: {why}",
                            pending[0].lsn, last.lsn
                        ),
                    },
                    e => e,
                })?;
            tracing::info!(
                dir = %dir.display(),
                from = pending[0].lsn,
                to = last.lsn,
                records = pending.len(),
                "replayed the write-ahead log into the storage file"
            );
        }
        let mut store = WalStorage {
            redb,
            log,
            dir,
            bounds,
            since_checkpoint: (0, 0),
            failed: None,
            payload: Vec::new(),
        };
        // redb now durably holds everything up to here (replayed durably).
        let durable = pending.last().map_or(checkpoint, |p| p.lsn);
        store.log.delete_below(durable)?;
        Ok(store)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Segment files the log holds now.
    pub fn segment_count(&self) -> usize {
        self.log.segment_count()
    }

    /// `fdatasync`s of the log since open: one per batch that needs one
    /// ([`vcodr_core::PersistOp::needs_fsync`]), plus one per segment left
    /// with unsynced records.
    pub fn log_syncs(&self) -> u64 {
        self.log.syncs()
    }

    /// LSN of the next logged batch.
    pub fn next_lsn(&self) -> u64 {
        self.log.next_lsn()
    }

    /// Makes everything committed durable in redb now and removes the
    /// segments it covers.
    pub fn checkpoint(&mut self) -> Result<(), StorageError> {
        self.refuse_after_failure()?;
        let lsn = self.log.last_lsn();
        if let Err(e) = self.redb.commit_logged(&[], lsn, true, || Ok(())) {
            self.failed = Some(e.to_string());
            return Err(e);
        }
        self.checkpointed(lsn)
    }

    fn checkpointed(&mut self, lsn: u64) -> Result<(), StorageError> {
        self.since_checkpoint = (0, 0);
        self.log.delete_below(lsn)
    }

    fn refuse_after_failure(&self) -> Result<(), StorageError> {
        match &self.failed {
            None => Ok(()),
            Some(why) => Err(StorageError::Io {
                path: self.dir.join(WAL_DIR),
                action: "commit after an earlier storage failure",
                source: std::io::Error::other(why.clone()),
            }),
        }
    }
}

impl Storage for WalStorage {
    fn load(&self) -> Result<Restored, StorageError> {
        self.redb.load()
    }

    fn commit(&mut self, batch: &[(PersistSeq, Vec<PersistOp>)]) -> Result<(), StorageError> {
        self.refuse_after_failure()?;
        check_batch_shape(batch)?;
        if batch.is_empty() {
            return Ok(());
        }
        self.payload.clear();
        let payload =
            postcard::to_extend(batch, std::mem::take(&mut self.payload)).map_err(|source| {
                StorageError::Encode {
                    path: self.dir.join(WAL_DIR),
                    table: "(write-ahead log)",
                    what: "batch",
                    source,
                }
            })?;
        let record = payload.len() + segment::RECORD_HEADER_BYTES;
        if record > self.bounds.record_bytes_max {
            // Too large for a record: one durable redb transaction, a checkpoint.
            let lsn = self.log.last_lsn();
            self.payload = payload;
            self.redb.commit_logged(&[batch], lsn, true, || Ok(()))?;
            return self.checkpointed(lsn);
        }
        let lsn = self.log.next_lsn();
        let sync = batch
            .iter()
            .flat_map(|(_, ops)| ops)
            .any(PersistOp::needs_fsync);
        let (batches, bytes) = self.since_checkpoint;
        let durable = batches + 1 >= self.bounds.checkpoint_batches
            || bytes + record as u64 >= self.bounds.checkpoint_bytes;
        let mut written = None;
        let mut log_tried = false;
        let log = &mut self.log;
        let result = self.redb.commit_logged(&[batch], lsn, durable, || {
            log_tried = true;
            written = Some(log.append(&payload, sync)?);
            Ok(())
        });
        self.payload = payload;
        match result {
            Ok(()) => {
                self.since_checkpoint = (batches + 1, bytes + record as u64);
                if durable {
                    self.checkpointed(lsn)?;
                }
                Ok(())
            }
            Err(e) => {
                if !log_tried {
                    // Refused or failed before the log was touched: nothing changed.
                    // An I/O failure of redb fails every later redb call with
                    // "Previous I/O error": keep this one, the cause, for them.
                    if !matches!(e, StorageError::InvalidBatch { .. }) {
                        self.failed = Some(e.to_string());
                    }
                    return Err(e);
                }
                let mut why = format!("record {lsn}: {e}");
                if let Some(w) = written {
                    // Durable in the log, but redb did not commit: take it back.
                    if let Err(undo) = self.log.undo(w) {
                        tracing::error!(error = %undo, lsn, "the record of a failed batch could not be zeroed: the batch may reappear after a restart");
                        why.push_str(&format!("; zeroing its record failed too: {undo}"));
                    }
                }
                self.failed = Some(why);
                Err(e)
            }
        }
    }

    fn get_doc(&self, key: &str) -> Result<Option<Doc>, StorageError> {
        self.redb.get_doc(key)
    }

    fn list_docs(&self) -> Result<Vec<(String, Index)>, StorageError> {
        self.redb.list_docs()
    }

    fn samples(
        &self,
        client: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        self.redb.samples(client, after_seq, limit)
    }

    fn read_samples(
        &self,
        ranges: &[SampleRange],
        max_bytes: usize,
        max_samples: usize,
    ) -> Result<Vec<SampleChunk>, StorageError> {
        self.redb.read_samples(ranges, max_bytes, max_samples)
    }

    fn sample_summary(&self) -> Result<Vec<SampleSummary>, StorageError> {
        self.redb.sample_summary()
    }

    fn archive(&self, offset: u64, limit: usize) -> Result<Vec<ArchivedEntry>, StorageError> {
        self.redb.archive(offset, limit)
    }

    fn archive_len(&self) -> Result<u64, StorageError> {
        self.redb.archive_len()
    }

    fn history(&self, limit: usize) -> Result<Vec<Transition>, StorageError> {
        self.redb.history(limit)
    }

    /// `path` is the redb file; `file_bytes` counts it and the log's segments.
    fn info(&self) -> Result<StorageInfo, StorageError> {
        let mut info = self.redb.info()?;
        info.file_bytes += self.log.bytes();
        Ok(info)
    }

    /// A durable redb commit, as with [`RedbStorage`]: it makes every logged
    /// batch durable in redb too, so it counts as a checkpoint.
    fn save_contacts(&mut self, contacts: &[ClientContact]) -> Result<(), StorageError> {
        self.refuse_after_failure()?;
        if let Err(e) = self.redb.save_contacts(contacts) {
            // The next commit fails naming this cause (redb itself would
            // only say that a previous I/O error occurred).
            self.failed = Some(e.to_string());
            return Err(e);
        }
        let lsn = self.log.last_lsn();
        self.checkpointed(lsn)
    }

    fn load_contacts(&self) -> Result<Vec<ClientContact>, StorageError> {
        self.redb.load_contacts()
    }
}
