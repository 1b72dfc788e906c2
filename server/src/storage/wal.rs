//! [`WalStorage`]: the production [`Storage`]. A commit costs one
//! `fdatasync` of an append-only log; redb holds the state readers serve.
//!
//! # Design
//! A data directory holds `vcodr.redb` (the materialized state, exactly as
//! [`RedbStorage`] lays it out) and `wal/`, segment files of a write-ahead
//! log of commit batches (format in [`segment`]).
//!
//! [`Storage::commit`] of a batch:
//! 1. checks it against [`shape::LogShape`], the commit index, applied
//!    index and stored log indexes kept in memory, and refuses a batch the
//!    core must never send (as [`RedbStorage`] would) before it is logged;
//! 2. appends one record — its own LSN, the postcard-encoded batch — to the
//!    active segment with `pwrite` and makes it durable with one `fdatasync`:
//!    from here the batch survives `kill -9` and power loss;
//! 3. hands the batch to the apply thread ([`apply`]) and returns `Ok`.
//!
//! The apply thread sleeps until [`APPLY_WAKE_BATCHES`] batches (or
//! [`APPLY_WAKE_BYTES`]) wait for it or anything else needs it (a reader,
//! a checkpoint, idle), then applies the batches, in LSN order, to one redb write
//! transaction that stays open across them, the *open transaction*. It
//! commits it (`Durability::None`, with the LSN of its last batch in redb's
//! `state` table) at [`APPLY_GROUP_BATCHES`] batches or [`APPLY_GROUP_BYTES`]
//! (in production the checkpoint's bounds, so that commit is the
//! checkpoint; [`WalBounds`] can set smaller ones), when a reader asks for
//! it and when [`Storage::idle`] does. Every reader of [`Storage`] first has
//! every batch logged before it committed to redb, then reads redb on its
//! own thread, so readers see the last committed batch, as the contract says.
//!
//! A crash, a `kill -9` or a plain drop of the store with the transaction
//! open (or batches still queued for the apply thread) loses them, and with
//! them nothing acknowledged: redb reverts to its last durable commit and
//! the log holds every batch after it, replayed at open.
//!
//! Atomicity comes from the record: a batch is there after a restart iff
//! its record is complete and valid. A refused batch is refused before its
//! record is written and before redb sees it; the store is as it was.
//!
//! Every [`CHECKPOINT_BATCHES`] applied batches or [`CHECKPOINT_BYTES`] of
//! their records, the apply thread commits the open transaction with
//! `Durability::Immediate` instead (a checkpoint: redb then durably holds
//! every batch up to its LSN), and the next commit (before it writes
//! anything) or idle moment removes the segments wholly below it. The checkpoint's page writes and
//! `fdatasync` run on the apply thread, beside the commits that keep logging.
//!
//! A batch whose record would exceed [`RECORD_BYTES_MAX`] (a snapshot
//! install, a large catch-up) is not logged: the apply thread applies it to
//! the open transaction, which it then commits as a checkpoint, itself one
//! atomic durable transaction; that commit returns once it is done.
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
//! [`CHECKPOINT_BATCHES`] batches or [`CHECKPOINT_BYTES`]: these and the
//! apply queue ([`APPLY_QUEUE_BATCHES`], [`APPLY_QUEUE_BYTES`], which
//! bound the batches kept in memory) bound what replay at open reads, and the log
//! holds about three segments. The open transaction holds at most
//! [`APPLY_GROUP_BATCHES`] batches or [`APPLY_GROUP_BYTES`] of them (plus
//! one batch), which bounds the commit a reader waits for.
//!
//! # Errors
//! Fail-stop, as [`Storage`] requires. A refused batch
//! ([`StorageError::InvalidBatch`]) leaves the store as it was. Any other
//! failure — of the log's write, of redb applying a batch or committing the
//! open transaction (on the apply thread, after the batch was acknowledged:
//! the log has it and a restart replays it), a contact save, a checkpoint —
//! leaves the store refusing every later commit, naming that first cause
//! (redb itself answers later calls only with "Previous I/O error"). Once
//! acknowledged batches are in the log but not in redb (an open transaction
//! holding them was lost), readers are refused too, naming the cause,
//! rather than serve a state without them.

mod apply;
mod log;
pub mod segment;
mod shape;
#[cfg(test)]
mod tests;

use self::apply::{Applier, Batch};
pub use self::apply::{APPLY_QUEUE_BATCHES, APPLY_QUEUE_BYTES};
use self::log::Log;
use self::shape::LogShape;
use super::{
    check_batch_shape, ArchivedEntry, RedbStorage, SampleSummary, Storage, StorageError,
    StorageInfo,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
///
/// A checkpoint's page writes and `fsync` share the disk with the log's
/// `fdatasync`s, and the commits waiting on those make the tail of a
/// write's latency: the fewer pages a checkpoint writes at once, the
/// shorter that wait. Against 1,024 batches and 4 MiB, alternating rounds
/// of `write-vs-pg` (AMD EPYC) measured at 16 writers p99 8.8 against
/// 10.4–10.5 ms, p99.9 13–16 against 21–25 ms at 7,714–8,300 against
/// 6,885–8,283 writes/s; at 64 writers 11,571 against 10,162 writes/s
/// (p99 21 against 27 ms); one writer unchanged. A sixteenth (64 batches)
/// cut the p99 no further and cost throughput.
pub const CHECKPOINT_BATCHES: u64 = 256;
/// ...or this many logged bytes, whichever comes first.
pub const CHECKPOINT_BYTES: u64 = 1 << 20;
/// The open redb transaction is committed once it holds this many batches...
///
/// As many as a checkpoint covers: in production the open transaction is
/// committed only by a checkpoint, a reader or [`Storage::idle`]. Each redb
/// commit of the open transaction costs CPU (root updates, checksums of the
/// dirty pages) whether it holds one batch or many. Against one commit per 64
/// batches, three alternating rounds of `write-vs-pg` (16 and 64 writers)
/// measured 5,422–5,697 against 4,945–5,490 writes/s at 16 writers and the
/// standby's CPU per write 67–68 against 70–74 µs. What the bound limits
/// stays bounded by the checkpoint's bounds: the commit a reader waits for.
pub const APPLY_GROUP_BATCHES: u64 = CHECKPOINT_BATCHES;
/// ...or this many bytes of their records (plus the one that reaches it),
/// whichever comes first.
pub const APPLY_GROUP_BYTES: u64 = CHECKPOINT_BYTES;
/// The apply thread sleeps while fewer logged batches than this wait for it
/// (and fewer than [`APPLY_WAKE_BYTES`] of their records) and nothing else
/// does: no reader, checkpoint, large batch, contact save, idle moment or
/// commit waiting for room. Waking it for each batch cost a futex wake on
/// the commit path and a sleep and wake-up of the thread per commit: at one
/// writer, about as many wake-ups as writes on each server. Alternating
/// rounds of `write-vs-pg` (AMD EPYC, 16 writers): 6,873–7,428 against
/// 6,071–7,309 writes/s, active CPU per write 97–102 against 104–126 µs.
/// Batches waiting here are in the log (a crash loses nothing) and bounded
/// by far by the apply queue.
pub const APPLY_WAKE_BATCHES: u64 = 64;
/// ...or this many bytes of their records.
pub const APPLY_WAKE_BYTES: u64 = CHECKPOINT_BYTES / 4;

/// The redb file in a data directory.
pub const REDB_FILE: &str = "vcodr.redb";
/// The write-ahead log's directory in a data directory.
pub const WAL_DIR: &str = "wal";

const _: () = assert!(RECORD_BYTES_MAX as u64 <= SEGMENT_BYTES);
const _: () = assert!(CHECKPOINT_BYTES <= SEGMENT_BYTES);
const _: () = assert!(APPLY_GROUP_BATCHES <= CHECKPOINT_BATCHES);
const _: () = assert!(APPLY_GROUP_BYTES <= CHECKPOINT_BYTES);
const _: () = assert!(APPLY_WAKE_BATCHES <= APPLY_QUEUE_BATCHES as u64);
const _: () = assert!(APPLY_WAKE_BYTES <= APPLY_QUEUE_BYTES);
/// The bounds of one [`WalStorage`]; [`WalBounds::default`] is the
/// production set of constants above. Tests shrink them to reach segment
/// rolls, checkpoints and group commits within a few batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalBounds {
    pub segment_bytes: u64,
    pub segment_records: u64,
    pub record_bytes_max: usize,
    pub checkpoint_batches: u64,
    pub checkpoint_bytes: u64,
    pub apply_group_batches: u64,
    pub apply_group_bytes: u64,
    pub apply_wake_batches: u64,
    pub apply_wake_bytes: u64,
}

impl Default for WalBounds {
    fn default() -> Self {
        WalBounds {
            segment_bytes: SEGMENT_BYTES,
            segment_records: SEGMENT_RECORDS_MAX,
            record_bytes_max: RECORD_BYTES_MAX,
            checkpoint_batches: CHECKPOINT_BATCHES,
            checkpoint_bytes: CHECKPOINT_BYTES,
            apply_group_batches: APPLY_GROUP_BATCHES,
            apply_group_bytes: APPLY_GROUP_BYTES,
            apply_wake_batches: APPLY_WAKE_BATCHES,
            apply_wake_bytes: APPLY_WAKE_BYTES,
        }
    }
}

/// Durable storage: a write-ahead log of commit batches in front of a redb
/// file. See the module documentation.
#[derive(Debug)]
pub struct WalStorage {
    /// Declared first: dropping the store stops the apply thread (its open
    /// transaction aborted) before the database closes.
    applier: Applier,
    /// Shared with the apply thread, which writes; readers read here.
    redb: Arc<RedbStorage>,
    log: Log,
    dir: PathBuf,
    bounds: WalBounds,
    /// What redb will hold once every handed-over batch is applied.
    shape: LogShape,
    /// The encoding of the batch being committed (kept for its capacity).
    record: Vec<u8>,
    /// The log holds no segment wholly below this checkpointed LSN.
    trimmed: u64,
}

impl WalStorage {
    /// Opens the store in `data_dir` ([`REDB_FILE`] and [`WAL_DIR`]),
    /// creating what is missing (the directory too), with the production bounds.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_with(data_dir, WalBounds::default())
    }

    /// [`WalStorage::open`] with other bounds.
    pub fn open_with(data_dir: impl AsRef<Path>, bounds: WalBounds) -> Result<Self, StorageError> {
        assert!(
            bounds.segment_records >= 1
                && bounds.checkpoint_batches >= 1
                && bounds.apply_group_batches >= 1
        );
        let dir = data_dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)
            .map_err(segment::io_err(&dir, "creating the data directory"))?;
        let redb = RedbStorage::open(dir.join(REDB_FILE))?;
        let checkpoint = redb.wal_lsn()?;
        let (mut log, pending) = Log::open(&dir.join(WAL_DIR), checkpoint, bounds)?;
        if let Some(last) = pending.last() {
            let txn = redb.begin_logged()?;
            for p in &pending {
                let applied = postcard::from_bytes::<Batch>(&p.payload)
                    .map_err(|e| StorageError::WalCorrupt {
                        path: p.path.clone(),
                        offset: p.offset as u64,
                        why: format!("record {} passes its CRC but does not decode: {e}", p.lsn),
                    })
                    .and_then(|batch| redb.apply_logged(&txn, &batch));
                if let Err(e) = applied {
                    redb.abort_logged(txn);
                    return Err(match e {
                        StorageError::InvalidBatch { seq, why } => StorageError::WalCorrupt {
                            path: p.path.clone(),
                            offset: p.offset as u64,
                            why: format!(
                                "replaying records {}..={} refused request {seq} of record {}: {why}",
                                pending[0].lsn, last.lsn, p.lsn
                            ),
                        },
                        e => e,
                    });
                }
            }
            redb.commit_logged(txn, last.lsn, true)?;
            tracing::info!(
                dir = %dir.display(),
                from = pending[0].lsn,
                to = last.lsn,
                records = pending.len(),
                "replayed the write-ahead log into the storage file"
            );
        }
        // redb now durably holds everything up to here (replayed durably).
        let durable = pending.last().map_or(checkpoint, |p| p.lsn);
        log.delete_below(durable)?;
        log.prepare_segment();
        let (commit, applied, above) = redb.log_shape()?;
        let redb = Arc::new(redb);
        let applier = Applier::start(redb.clone(), durable, bounds, dir.join(WAL_DIR))?;
        Ok(WalStorage {
            applier,
            redb,
            log,
            dir,
            bounds,
            shape: LogShape::new(commit, applied, above),
            record: Vec::new(),
            trimmed: durable,
        })
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

    /// redb write transactions committed since open, once the apply thread
    /// has done all it was handed: the open transaction's commits (group
    /// bound, checkpoint, reader, [`Storage::idle`]) and contact saves; the
    /// replay at open is not counted.
    pub fn redb_commits(&self) -> u64 {
        self.applier.wait_quiet();
        self.applier.redb_commits()
    }

    /// Acknowledged batches applied to the open redb transaction, not yet
    /// committed to redb (0: no transaction is open), once the apply thread
    /// has done all it was handed.
    pub fn uncommitted_batches(&self) -> usize {
        self.applier.wait_quiet();
        self.applier.uncommitted()
    }

    /// Makes everything committed durable in redb now and removes the
    /// segments it covers.
    pub fn checkpoint(&mut self) -> Result<(), StorageError> {
        self.applier.refuse_after_failure()?;
        self.applier.checkpoint()?;
        self.trim()
    }

    /// Removes the segments the apply thread's last checkpoint covers.
    fn trim(&mut self) -> Result<(), StorageError> {
        let checkpointed = self.applier.checkpointed();
        if checkpointed > self.trimmed {
            if let Err(e) = self.log.delete_below(checkpointed) {
                self.applier.fail(e.to_string());
                return Err(e);
            }
            self.trimmed = checkpointed;
        }
        Ok(())
    }

    /// Returns once redb has committed every batch logged so far (readers
    /// then see them); refuses once redb lacks an acknowledged batch.
    fn settle(&self) -> Result<(), StorageError> {
        self.applier.show(self.log.last_lsn())
    }
}

impl Storage for WalStorage {
    fn load(&self) -> Result<Restored, StorageError> {
        self.settle()?;
        self.redb.load()
    }

    fn commit(&mut self, batch: &[(PersistSeq, Vec<PersistOp>)]) -> Result<(), StorageError> {
        self.commit_owned(batch.to_vec())
    }

    fn commit_owned(&mut self, batch: Batch) -> Result<(), StorageError> {
        self.applier.refuse_after_failure()?;
        // Segments the last checkpoint covers go first: an error here leaves
        // nothing of this batch anywhere.
        self.trim()?;
        check_batch_shape(&batch)?;
        if batch.is_empty() {
            return Ok(());
        }
        // 1. Refuse what the core must never send, before anything is written.
        let shape = self.shape.after(&batch)?;
        let mut buf = std::mem::take(&mut self.record);
        buf.clear();
        self.record = postcard::to_extend(&batch, buf).map_err(|source| StorageError::Encode {
            path: self.dir.join(WAL_DIR),
            table: "(write-ahead log)",
            what: "batch",
            source,
        })?;
        let record = self.record.len() + segment::RECORD_HEADER_BYTES;
        if record > self.bounds.record_bytes_max {
            // Too large for a record: the apply thread applies it and
            // commits redb durably, a checkpoint, before this returns.
            self.applier.large(batch)?;
            self.shape = shape;
            return Ok(());
        }

        // 2. Log it: durable, acknowledged once `commit` returns.
        let lsn = self.log.next_lsn();
        let sync = batch
            .iter()
            .flat_map(|(_, ops)| ops)
            .any(PersistOp::needs_fsync);
        if let Err(e) = self.log.append(&self.record, sync) {
            self.applier.fail(e.to_string());
            return Err(e);
        }
        self.shape = shape;

        // 3. The apply thread applies it to redb.
        self.applier.apply(lsn, batch, record as u64);
        Ok(())
    }

    /// Asks the apply thread to commit the open transaction and removes the
    /// segments its last checkpoint covers.
    fn idle(&mut self) -> Result<(), StorageError> {
        self.applier.refuse_after_failure()?;
        self.applier.show_later();
        self.trim()
    }

    fn get_doc(&self, key: &str) -> Result<Option<Doc>, StorageError> {
        self.settle()?;
        self.redb.get_doc(key)
    }

    fn list_docs(&self) -> Result<Vec<(String, Index)>, StorageError> {
        self.settle()?;
        self.redb.list_docs()
    }

    fn samples(
        &self,
        client: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        self.settle()?;
        self.redb.samples(client, after_seq, limit)
    }

    fn read_samples(
        &self,
        ranges: &[SampleRange],
        max_bytes: usize,
        max_samples: usize,
    ) -> Result<Vec<SampleChunk>, StorageError> {
        self.settle()?;
        self.redb.read_samples(ranges, max_bytes, max_samples)
    }

    fn sample_summary(&self) -> Result<Vec<SampleSummary>, StorageError> {
        self.settle()?;
        self.redb.sample_summary()
    }

    fn archive(&self, offset: u64, limit: usize) -> Result<Vec<ArchivedEntry>, StorageError> {
        self.settle()?;
        self.redb.archive(offset, limit)
    }

    fn archive_len(&self) -> Result<u64, StorageError> {
        self.settle()?;
        self.redb.archive_len()
    }

    fn history(&self, limit: usize) -> Result<Vec<Transition>, StorageError> {
        self.settle()?;
        self.redb.history(limit)
    }

    /// `path` is the redb file; `file_bytes` counts it and the log's segments.
    fn info(&self) -> Result<StorageInfo, StorageError> {
        self.settle()?;
        let mut info = self.redb.info()?;
        info.file_bytes += self.log.bytes();
        Ok(info)
    }

    /// A durable redb commit, as with [`RedbStorage`] (after the open
    /// transaction's): it makes every logged batch durable in redb too, so
    /// it counts as a checkpoint.
    fn save_contacts(&mut self, contacts: &[ClientContact]) -> Result<(), StorageError> {
        self.applier.refuse_after_failure()?;
        self.applier.save_contacts(contacts.to_vec())?;
        self.trim()
    }

    fn load_contacts(&self) -> Result<Vec<ClientContact>, StorageError> {
        self.settle()?;
        self.redb.load_contacts()
    }
}
