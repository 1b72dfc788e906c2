//! [`WalStorage`]: the production [`Storage`]. A commit costs one
//! `fdatasync` of an append-only log; redb holds the state readers serve.
//!
//! # Design
//! A data directory holds `vcodr.redb` (the materialized state, exactly as
//! [`RedbStorage`] lays it out) and `wal/`, segment files of a write-ahead
//! log of commit batches (format in [`segment`]).
//!
//! One redb write transaction, the *open transaction*, stays open across
//! commits. [`Storage::commit`] of a batch:
//! 1. applies the batch to the open transaction (begun if there is none),
//!    over the batches applied to it before (a batch the core must never
//!    send is refused here, before it is logged);
//! 2. appends one record — its own LSN, the postcard-encoded batch — to the
//!    active segment with `pwrite` and makes it durable with one `fdatasync`:
//!    from here the batch survives `kill -9` and power loss, and `commit`
//!    returns `Ok` — the redb transaction is left open, the batch not yet
//!    committed to redb, for the next batches to apply to.
//!
//! The open transaction is committed (`Durability::None`, with the LSN of
//! its last record in redb's `state` table) later, at the first of:
//! - a reader: every read method of [`Storage`] (and
//!   [`Storage::save_contacts`], [`WalStorage::checkpoint`]) commits it
//!   first, so readers see the last committed batch, as the contract says;
//! - [`APPLY_GROUP_BATCHES`] batches or [`APPLY_GROUP_BYTES`] of encoded
//!   batches in it: the batch that reaches the bound commits it after its
//!   record is durable (in production these are the checkpoint's bounds, so
//!   that commit is the checkpoint; [`WalBounds`] can set smaller ones);
//! - a checkpoint (below);
//! - [`Storage::idle`], which the driver calls when it has nothing queued.
//!
//! A crash, a `kill -9` or a plain drop of the store with the transaction
//! open loses it, and with it nothing acknowledged: redb reverts to its last
//! durable commit and the log holds every batch after it, replayed at open.
//!
//! Atomicity comes from the record: a batch is there after a restart iff
//! its record is complete and valid. A refused batch (or one that fails)
//! may have left part of itself in the open transaction, and redb has no
//! partial rollback: the transaction is aborted, and the batches
//! acknowledged into it before are applied again, from their encodings kept
//! until it commits, in a fresh one (left open as the new open transaction).
//!
//! Every [`CHECKPOINT_BATCHES`] logged batches or [`CHECKPOINT_BYTES`]
//! logged bytes, the batch that reaches the bound commits the open
//! transaction with `Durability::Immediate` instead (a checkpoint: redb then
//! durably holds every batch up to this LSN), and the segments wholly below
//! it are removed. The checkpoint is paid inline by that one commit (~1 ms);
//! redb takes one write transaction at a time, so a background checkpoint
//! would hold up the next commit all the same.
//!
//! A batch whose record would exceed [`RECORD_BYTES_MAX`] (a snapshot
//! install, a large catch-up) is not logged: it is applied to the open
//! transaction, which is then committed as a checkpoint, itself one atomic
//! durable transaction.
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
//! reads at most that much, and the log holds about two segments. The open
//! transaction holds at most [`APPLY_GROUP_BATCHES`] batches or
//! [`APPLY_GROUP_BYTES`] of them (plus one batch), which bounds the encoded
//! batches kept in memory, the work of applying them again after a refused
//! batch, and the commit a reader waits for.
//!
//! # Errors
//! Fail-stop, as [`Storage`] requires. A refused batch
//! ([`StorageError::InvalidBatch`]) leaves the store as it was, the batches
//! acknowledged before it still in the open transaction. Any other failure
//! — of the log's write, of redb applying a batch, committing the open
//! transaction (from a commit, a reader or [`Storage::idle`]), a contact
//! save, a checkpoint — leaves the store refusing every later commit,
//! naming that first cause (redb itself answers later calls only with
//! "Previous I/O error"). If a batch's record was durable but the commit of
//! the open transaction it then asked for failed, the record is zeroed
//! again so that the failed batch is not replayed. Batches acknowledged
//! into an open transaction that could not be committed are still in the
//! log (a restart replays them) but not in redb: from then on readers are
//! refused too, naming the cause, rather than serve a state without them.

mod log;
pub mod segment;
#[cfg(test)]
mod tests;

use self::log::Log;
use super::{
    check_batch_shape, ArchivedEntry, RedbStorage, SampleSummary, Storage, StorageError,
    StorageInfo,
};
use ::redb::WriteTransaction;
use std::cell::{Cell, RefCell};
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
/// The open redb transaction is committed once it holds this many batches...
///
/// As many as a checkpoint covers: in production the open transaction is
/// committed only by a checkpoint, a reader or [`Storage::idle`]. Each redb
/// commit of the open transaction costs CPU (root updates, checksums of the
/// dirty pages) whether it holds one batch or many. Against one commit per 64
/// batches, three alternating rounds of `write-vs-pg` (16 and 64 writers)
/// measured 5,422–5,697 against 4,945–5,490 writes/s at 16 writers and the
/// standby's CPU per write 67–68 against 70–74 µs. What the bound limits
/// stays bounded by the checkpoint's bounds: the encoded batches kept in
/// memory ([`CHECKPOINT_BYTES`]), the batches applied again after a refused
/// one (which a correct core never sends), and the commit a reader waits for.
pub const APPLY_GROUP_BATCHES: u64 = CHECKPOINT_BATCHES;
/// ...or this many bytes of encoded batches (plus the one that reaches it),
/// whichever comes first.
pub const APPLY_GROUP_BYTES: u64 = CHECKPOINT_BYTES;

/// The redb file in a data directory.
pub const REDB_FILE: &str = "vcodr.redb";
/// The write-ahead log's directory in a data directory.
pub const WAL_DIR: &str = "wal";

const _: () = assert!(RECORD_BYTES_MAX as u64 <= SEGMENT_BYTES);
const _: () = assert!(CHECKPOINT_BYTES <= SEGMENT_BYTES);
const _: () = assert!(APPLY_GROUP_BATCHES <= CHECKPOINT_BATCHES);
const _: () = assert!(APPLY_GROUP_BYTES <= CHECKPOINT_BYTES);
// The open transaction lives in the store, which the driver moves to its
// storage thread (`Storage: Send`).
const _: fn() = || {
    fn send<T: Send>() {}
    send::<WriteTransaction>();
};

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
        }
    }
}

/// The open redb transaction and the acknowledged batches applied to it.
/// `txn` is `None` exactly when no batch is in it (between calls).
#[derive(Default)]
struct Open {
    txn: Option<WriteTransaction>,
    /// The postcard encodings of those batches, back to back (what their
    /// records hold): to apply them again in a fresh transaction when a
    /// later batch must be taken out of this one.
    payloads: Vec<u8>,
    /// Where each of them ends in `payloads`.
    ends: Vec<usize>,
}

impl Open {
    fn clear(&mut self) {
        self.payloads.clear();
        self.ends.clear();
    }
}

impl std::fmt::Debug for Open {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Open")
            .field("txn", &self.txn.as_ref().map(|_| "open"))
            .field("batches", &self.ends.len())
            .field("bytes", &self.payloads.len())
            .finish()
    }
}

/// `Vec::extend` for postcard, keeping the vector when encoding fails.
struct Append<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Append<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

/// Durable storage: a write-ahead log of commit batches in front of a redb
/// file. See the module documentation.
#[derive(Debug)]
pub struct WalStorage {
    /// Declared before `redb`: a store dropped with the transaction open
    /// aborts it before the database closes.
    open: RefCell<Open>,
    redb: RedbStorage,
    log: Log,
    dir: PathBuf,
    bounds: WalBounds,
    /// Logged batches and bytes since the last durable redb commit.
    since_checkpoint: (u64, u64),
    /// Set when a commit failed from the log's write on, or redb failed
    /// (not a refused batch): no commit after it; the first cause, named by
    /// every later refusal.
    failed: RefCell<Option<String>>,
    /// Acknowledged batches were dropped from an open transaction that could
    /// not be committed: redb lacks them (the log has them), so readers are
    /// refused as well.
    readers_refused: Cell<bool>,
    /// redb write transactions committed since open (the replay excluded).
    redb_commits: Cell<u64>,
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
        let (log, pending) = Log::open(&dir.join(WAL_DIR), checkpoint, bounds)?;
        if let Some(last) = pending.last() {
            let txn = redb.begin_logged()?;
            for p in &pending {
                let applied = postcard::from_bytes::<Vec<(PersistSeq, Vec<PersistOp>)>>(&p.payload)
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
        let mut store = WalStorage {
            open: RefCell::new(Open::default()),
            redb,
            log,
            dir,
            bounds,
            since_checkpoint: (0, 0),
            failed: RefCell::new(None),
            readers_refused: Cell::new(false),
            redb_commits: Cell::new(0),
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

    /// redb write transactions committed since open: the open transaction's
    /// commits (group bound, checkpoint, reader, [`Storage::idle`]) and
    /// contact saves; the replay at open is not counted.
    pub fn redb_commits(&self) -> u64 {
        self.redb_commits.get()
    }

    /// Acknowledged batches applied to the open redb transaction, not yet
    /// committed to redb (0: no transaction is open).
    pub fn uncommitted_batches(&self) -> usize {
        self.open.borrow().ends.len()
    }

    /// Makes everything committed durable in redb now and removes the
    /// segments it covers.
    pub fn checkpoint(&mut self) -> Result<(), StorageError> {
        self.refuse_after_failure()?;
        let lsn = self.log.last_lsn();
        self.commit_open(&mut self.open.borrow_mut(), true)?;
        self.checkpointed(lsn)
    }

    fn checkpointed(&mut self, lsn: u64) -> Result<(), StorageError> {
        self.since_checkpoint = (0, 0);
        self.log.delete_below(lsn)
    }

    /// Commits the open transaction (or, for a checkpoint without one, an
    /// empty transaction), recording the last logged LSN; a checkpoint if
    /// `durable`. Whatever the outcome, no transaction is open afterwards.
    fn commit_open(&self, open: &mut Open, durable: bool) -> Result<(), StorageError> {
        let lsn = self.log.last_lsn();
        let result = match open.txn.take() {
            Some(txn) => self.redb.commit_logged(txn, lsn, durable),
            None => self
                .redb
                .begin_logged()
                .and_then(|txn| self.redb.commit_logged(txn, lsn, durable)),
        };
        let acknowledged = open.ends.len();
        open.clear();
        match result {
            Ok(()) => {
                self.redb_commits.set(self.redb_commits.get() + 1);
                Ok(())
            }
            Err(e) => {
                let why = match acknowledged {
                    0 => e.to_string(),
                    n => format!(
                        "{e} (the {n} batches acknowledged into it are in the log, not in redb)"
                    ),
                };
                self.fail(why, acknowledged > 0);
                Err(e)
            }
        }
    }

    /// Commits the open transaction, if any, so that redb holds every
    /// acknowledged batch; refuses if it cannot (now or since a failure).
    fn settle(&self) -> Result<(), StorageError> {
        let mut open = self.open.borrow_mut();
        if open.txn.is_some() {
            self.commit_open(&mut open, false)?;
        }
        if self.readers_refused.get() {
            return Err(self.refusal("read after a storage failure lost uncommitted batches"));
        }
        Ok(())
    }

    /// Takes the batch that failed with `cause` (applied, and maybe logged,
    /// after the acknowledged ones) out of the open transaction: aborts it
    /// and applies the acknowledged ones again in a fresh one. Fail-stop
    /// unless `cause` is a refusal. Returns `cause`.
    fn take_back(&self, open: &mut Open, cause: StorageError) -> StorageError {
        if let Some(txn) = open.txn.take() {
            self.redb.abort_logged(txn);
        }
        if let Err(e) = self.reapply(open) {
            let n = open.ends.len();
            open.clear();
            self.fail(
                format!("{cause}; applying the {n} batches acknowledged before it again failed: {e} (they are in the log, not in redb)"),
                true,
            );
            return cause;
        }
        if !matches!(cause, StorageError::InvalidBatch { .. }) {
            // An I/O failure of redb fails every later redb call with
            // "Previous I/O error": keep this one, the cause, for them.
            self.fail(cause.to_string(), false);
        }
        cause
    }

    /// Applies the acknowledged batches of `open` to a fresh transaction,
    /// which becomes the open one.
    fn reapply(&self, open: &mut Open) -> Result<(), StorageError> {
        if open.ends.is_empty() {
            return Ok(());
        }
        let txn = self.redb.begin_logged()?;
        let mut from = 0;
        for (i, &end) in open.ends.iter().enumerate() {
            let applied = postcard::from_bytes::<Vec<(PersistSeq, Vec<PersistOp>)>>(
                &open.payloads[from..end],
            )
            .map_err(|source| StorageError::Decode {
                path: self.dir.join(WAL_DIR),
                table: "(write-ahead log)",
                key: format!("uncommitted batch {i}"),
                source,
            })
            .and_then(|batch| self.redb.apply_logged(&txn, &batch));
            if let Err(e) = applied {
                self.redb.abort_logged(txn);
                return Err(e);
            }
            from = end;
        }
        open.txn = Some(txn);
        Ok(())
    }

    /// Records a failure: the first cause is kept.
    fn fail(&self, why: String, readers_too: bool) {
        self.failed.borrow_mut().get_or_insert(why);
        if readers_too {
            self.readers_refused.set(true);
        }
    }

    fn refusal(&self, action: &'static str) -> StorageError {
        StorageError::Io {
            path: self.dir.join(WAL_DIR),
            action,
            source: std::io::Error::other(
                self.failed
                    .borrow()
                    .clone()
                    .unwrap_or_else(|| "an earlier storage failure".into()),
            ),
        }
    }

    fn refuse_after_failure(&self) -> Result<(), StorageError> {
        match self.failed.borrow().is_some() {
            false => Ok(()),
            true => Err(self.refusal("commit after an earlier storage failure")),
        }
    }
}

impl Storage for WalStorage {
    fn load(&self) -> Result<Restored, StorageError> {
        self.settle()?;
        self.redb.load()
    }

    fn commit(&mut self, batch: &[(PersistSeq, Vec<PersistOp>)]) -> Result<(), StorageError> {
        self.refuse_after_failure()?;
        check_batch_shape(batch)?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut guard = self.open.borrow_mut();
        let open = &mut *guard;
        let start = open.payloads.len();
        if let Err(source) = postcard::to_extend(batch, Append(&mut open.payloads)) {
            open.payloads.truncate(start);
            return Err(StorageError::Encode {
                path: self.dir.join(WAL_DIR),
                table: "(write-ahead log)",
                what: "batch",
                source,
            });
        }
        let record = open.payloads.len() - start + segment::RECORD_HEADER_BYTES;
        let large = record > self.bounds.record_bytes_max;
        if large {
            // Not logged: its encoding is not kept either.
            open.payloads.truncate(start);
        }

        // 1. Apply, over the acknowledged batches of the open transaction.
        let txn = match open.txn.take() {
            Some(txn) => txn,
            None => match self.redb.begin_logged() {
                Ok(txn) => txn,
                Err(e) => {
                    open.payloads.truncate(start);
                    return Err(self.take_back(open, e));
                }
            },
        };
        let applied = self.redb.apply_logged(&txn, batch);
        open.txn = Some(txn);
        if let Err(e) = applied {
            open.payloads.truncate(start);
            return Err(self.take_back(open, e));
        }

        if large {
            // Too large for a record: the open transaction, this batch
            // included, becomes one durable redb transaction, a checkpoint.
            let lsn = self.log.last_lsn();
            self.commit_open(open, true)?;
            drop(guard);
            return self.checkpointed(lsn);
        }

        // 2. Log it: durable, acknowledged once `commit` returns.
        let lsn = self.log.next_lsn();
        let sync = batch
            .iter()
            .flat_map(|(_, ops)| ops)
            .any(PersistOp::needs_fsync);
        let written = match self.log.append(&open.payloads[start..], sync) {
            Ok(w) => w,
            Err(e) => {
                open.payloads.truncate(start);
                return Err(self.take_back(open, e));
            }
        };
        let (batches, bytes) = self.since_checkpoint;
        self.since_checkpoint = (batches + 1, bytes + record as u64);
        let durable = batches + 1 >= self.bounds.checkpoint_batches
            || bytes + record as u64 >= self.bounds.checkpoint_bytes;
        let full = open.ends.len() as u64 + 1 >= self.bounds.apply_group_batches
            || open.payloads.len() as u64 >= self.bounds.apply_group_bytes;
        if !(durable || full) {
            open.ends.push(open.payloads.len());
            return Ok(());
        }

        // 3. The bound is reached: commit the open transaction, this batch included.
        if let Err(e) = self.commit_open(open, durable) {
            // Durable in the log, but the commit it asked for failed: take it back.
            if let Err(undo) = self.log.undo(written) {
                tracing::error!(error = %undo, lsn, "the record of a failed batch could not be zeroed: the batch may reappear after a restart");
                if let Some(why) = self.failed.borrow_mut().as_mut() {
                    why.push_str(&format!("; zeroing record {lsn} failed too: {undo}"));
                }
            }
            return Err(e);
        }
        drop(guard);
        if durable {
            self.checkpointed(lsn)?;
        }
        Ok(())
    }

    /// Commits the open transaction: the next batch starts a fresh one.
    fn idle(&mut self) -> Result<(), StorageError> {
        self.settle()
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
        self.refuse_after_failure()?;
        self.settle()?;
        if let Err(e) = self.redb.save_contacts(contacts) {
            // The next commit fails naming this cause (redb itself would
            // only say that a previous I/O error occurred).
            self.fail(e.to_string(), false);
            return Err(e);
        }
        self.redb_commits.set(self.redb_commits.get() + 1);
        let lsn = self.log.last_lsn();
        self.checkpointed(lsn)
    }

    fn load_contacts(&self) -> Result<Vec<ClientContact>, StorageError> {
        self.settle()?;
        self.redb.load_contacts()
    }
}
