//! Durable storage of a vcodr server: what [`vcodr_core::Output::Persist`]
//! asks for, made durable, and read back at restart and by the admin API.
//!
//! [`Storage`] is the contract the driver relies on. Three implementations:
//! - [`WalStorage`]: the production store, a write-ahead log of commit
//!   batches (one `fdatasync` per commit) in front of a redb file;
//! - [`RedbStorage`]: one redb file, one durable redb transaction per commit
//!   (the state [`WalStorage`] keeps; usable on its own);
//! - [`MemStorage`]: [`vcodr_core::MemStore`] behind the same trait, for
//!   driver tests (nothing survives the process).
//!
//! The meaning of every [`PersistOp`] is defined by
//! [`vcodr_core::MemStore`], the reference store the model checker uses. An
//! implementation is correct when the same ops in give the same
//! [`Restored`] out; [`conformance`] checks exactly that, on random op
//! streams shaped like the core's, and any new implementation must pass it.
//!
//! ```
//! use vcodr_core::{Entry, Op, PersistOp};
//! use vcodr_server::storage::{RedbStorage, Storage};
//!
//! # fn main() -> Result<(), vcodr_server::storage::StorageError> {
//! # let dir = tempfile::tempdir().expect("temp dir");
//! let mut store = RedbStorage::open(dir.path().join("vcodr.redb"))?;
//! let put = Op::Put { key: "site/1".into(), value: br#"{"vlan":10}"#.to_vec() };
//! let entry = Entry { epoch: 1, index: 1, op: put };
//! // Two persist requests of the core, made durable by one fsync.
//! store.commit(&[
//!     (1, vec![PersistOp::Append(vec![entry])]),
//!     (2, vec![PersistOp::Commit(1)]),
//! ])?;
//! assert_eq!(store.get_doc("site/1")?.map(|d| d.version), Some(1));
//! assert_eq!(store.load()?.commit, 1);
//! # Ok(())
//! # }
//! ```

pub mod conformance;
mod legacy;
mod mem;
mod redb;
#[cfg(test)]
mod tests;
pub mod wal;

pub use self::mem::MemStorage;
pub use self::redb::{RedbStorage, SCHEMA_VERSION};
pub use self::wal::{WalBounds, WalStorage};

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use thiserror::Error;
use vcodr_core::{
    ClientContact, ClientId, ClientType, Doc, Epoch, Index, Millis, Op, PersistOp, PersistSeq,
    Restored, SampleChunk, SampleRange, Transition, ViewEntry,
};

/// State-history transitions [`Storage::load`] hands to a restarting server
/// (the most recent ones).
pub const HISTORY_RESTORE_MAX: usize = 1_000;
/// State-history transitions kept on disk; older ones are pruned so the file
/// does not grow forever.
pub const HISTORY_KEEP_MAX: usize = 10_000;
/// Rows one admin-API read returns at most, whatever `limit` it asks for.
pub const READ_ROWS_MAX: usize = 10_000;
/// Persist requests one [`Storage::commit`] accepts at most.
pub const BATCH_REQUESTS_MAX: usize = 4_096;

const _: () = assert!(HISTORY_RESTORE_MAX <= HISTORY_KEEP_MAX);
const _: () = assert!(HISTORY_KEEP_MAX <= READ_ROWS_MAX);

/// Durable storage of one server.
///
/// # Contract
/// - **Meaning**: every [`PersistOp`] means what [`vcodr_core::MemStore`]
///   makes of it. For the same ops, [`Storage::load`] returns what
///   [`vcodr_core::MemStore::restored`] returns, except that the history is
///   the most recent [`HISTORY_RESTORE_MAX`] transitions (at most
///   [`HISTORY_KEEP_MAX`] are kept).
/// - **Ordering**: the persist requests of a batch are applied in the order
///   given, and the ops of each request in order; batches in call order.
///   Persist sequence numbers must increase strictly within a batch.
/// - **Atomicity**: a batch is one transaction. If [`Storage::commit`]
///   returns an error, nothing of the batch is visible, now or after a
///   restart, and the store is as it was before the call.
/// - **Durability**: when [`Storage::commit`] returns `Ok`, the whole batch
///   survives `kill -9` and power loss (one fsync per batch: group commit);
///   only then may the driver feed `Input::Persisted { up_to: last seq }`.
///   One exception: a batch none of whose ops
///   [`needs_fsync`](vcodr_core::PersistOp::needs_fsync) (commit markers,
///   pruning, compaction) must survive `kill -9` at once but may survive
///   power loss only from the next batch that needs an fsync on.
/// - **Errors**: an op the core must never produce (truncating a committed
///   entry, committing over a hole in the log) is refused with
///   [`StorageError::InvalidBatch`], never a panic. Any error from `commit`
///   means the server must stop: its durable state is no longer what the core
///   believes.
/// - **Readers** see the last committed batch; they are for the admin API and
///   clamp `limit` to [`READ_ROWS_MAX`]. An implementation may finish work
///   it deferred at a commit first ([`WalStorage`] waits for its apply
///   thread to commit every logged batch to redb), so a reader can fail as
///   a commit does.
/// - **Idle**: [`Storage::idle`] is an optimisation hook, nothing more: it
///   has no effect on what readers see or what a restart finds, whether it
///   is called or not. An error from it is a storage failure, as from
///   `commit`: the server must stop.
pub trait Storage: Send + 'static {
    /// Everything a restarting [`vcodr_core::Server::restore`] needs.
    fn load(&self) -> Result<Restored, StorageError>;

    /// Applies every persist request of `batch`, in order, in one durable
    /// transaction (group commit). Returns only once it is durable; on error
    /// nothing of the batch is applied.
    fn commit(&mut self, batch: &[(PersistSeq, Vec<PersistOp>)]) -> Result<(), StorageError>;

    /// [`Storage::commit`] of a batch the caller gives up: a store that
    /// applies it after returning ([`WalStorage`]) keeps it without a copy.
    fn commit_owned(
        &mut self,
        batch: Vec<(PersistSeq, Vec<PersistOp>)>,
    ) -> Result<(), StorageError> {
        self.commit(&batch)
    }

    /// The driver has nothing queued: a moment to do work a commit left for
    /// later, off the path of the next commit ([`WalStorage`] has its open
    /// redb transaction committed, which the next reader would otherwise wait for).
    /// An optimisation hook only (see the contract); by default nothing.
    fn idle(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    /// A committed configuration document (the applied state).
    fn get_doc(&self, key: &str) -> Result<Option<Doc>, StorageError>;

    /// Every committed configuration document: `(key, version)` in key order.
    fn list_docs(&self) -> Result<Vec<(String, Index)>, StorageError>;

    /// Stored monitoring samples of `client` with `seq > after_seq`, in `seq`
    /// order, at most `limit` of them: `(seq, payload)`.
    fn samples(
        &self,
        client: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError>;

    /// What [`vcodr_core::Output::ReadSamples`] asks for: exactly what
    /// [`vcodr_core::MemStore::read_samples`] returns for the same arguments
    /// (ranges in order, bounded by bytes and samples, the first sample
    /// always taken). Run by the driver's storage thread, after every commit
    /// queued before it.
    fn read_samples(
        &self,
        ranges: &[SampleRange],
        max_bytes: usize,
        max_samples: usize,
    ) -> Result<Vec<SampleChunk>, StorageError>;

    /// Per client: how many samples are stored and the highest `seq`, in client order.
    fn sample_summary(&self) -> Result<Vec<SampleSummary>, StorageError>;

    /// The divergence archive from position `offset` (0 is the oldest), at most `limit` rows.
    fn archive(&self, offset: u64, limit: usize) -> Result<Vec<ArchivedEntry>, StorageError>;

    /// How many rows the divergence archive holds (positions `0..len`), without
    /// reading them: the `total` of every `getDivergenceArchive` page.
    fn archive_len(&self) -> Result<u64, StorageError>;

    /// The most recent `limit` state-history transitions, newest last.
    fn history(&self, limit: usize) -> Result<Vec<Transition>, StorageError>;

    /// Sizes and positions for `getReplicationStatus` `storageInfo`.
    fn info(&self) -> Result<StorageInfo, StorageError>;

    /// Replaces the stored client contact table with `contacts` (SPEC §5),
    /// durably. The driver calls this periodically, not per heartbeat; rows
    /// are keyed by `client_id` (a repeated id keeps the last row).
    fn save_contacts(&mut self, contacts: &[ClientContact]) -> Result<(), StorageError>;

    /// The contact table last saved, in `client_id` order.
    fn load_contacts(&self) -> Result<Vec<ClientContact>, StorageError>;
}

/// One row of [`Storage::sample_summary`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SampleSummary {
    pub client: ClientId,
    /// Samples stored for this client.
    pub count: u64,
    /// Highest stored `seq`.
    pub max_seq: u64,
}

/// One row of the divergence archive ([`Storage::archive`]): a log entry
/// moved aside at rejoin, never silently dropped.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ArchivedEntry {
    /// Log index the entry had.
    pub index: Index,
    pub epoch: Epoch,
    pub op: Op,
    /// Why it was archived.
    pub reason: String,
}

/// `storageInfo` (SPEC §7).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StorageInfo {
    /// The storage file (`None` for memory).
    pub path: Option<PathBuf>,
    /// Size of the file on disk (0 for memory).
    pub file_bytes: u64,
    /// On-disk format version (see [`SCHEMA_VERSION`]).
    pub schema_version: u64,
    /// Log entries stored.
    pub log_entries: u64,
    pub first_log_index: Option<Index>,
    pub last_log_index: Option<Index>,
    /// Highest committed index.
    pub commit_index: Index,
    /// Index of the last entry applied to the documents and samples.
    pub applied_index: Index,
    /// Configuration documents.
    pub docs: u64,
    /// Monitoring samples stored.
    pub samples: u64,
    /// Samples whose `(client, seq)` was already stored when applied: must stay 0.
    pub duplicate_samples: u64,
    pub archive_entries: u64,
    pub history_entries: u64,
    /// Rows of the client contact table.
    pub contacts: u64,
}

/// Why storage failed. Each message names the file, the table and what failed.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("cannot open storage file {path}: {source}; check that the directory exists, is writable, and that no other vcodr process uses this data_dir")]
    Open {
        path: PathBuf,
        #[source]
        source: ::redb::DatabaseError,
    },
    #[error("{path} is not a redb database or is damaged ({why}); refusing to use it: move it away and resync this server from its peer, or restore the file from a backup")]
    Unreadable { path: PathBuf, why: String },
    #[error("{path} is not a vcodr storage file ({why}); refusing to use it: move it away or point data_dir elsewhere")]
    Foreign { path: PathBuf, why: String },
    #[error("{path} has storage schema version {found}, this vcodr understands version {supported}; use the vcodr release that wrote it")]
    SchemaVersion {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    #[error("storage file {path}, table `{table}`: {action} failed: {source}")]
    Db {
        path: PathBuf,
        table: &'static str,
        action: &'static str,
        #[source]
        source: Box<::redb::Error>,
    },
    #[error("storage file {path}, table `{table}`, key {key}: stored record is corrupt: {source}")]
    Decode {
        path: PathBuf,
        table: &'static str,
        key: String,
        #[source]
        source: postcard::Error,
    },
    #[error("storage file {path}, table `{table}`: cannot encode {what}: {source}")]
    Encode {
        path: PathBuf,
        table: &'static str,
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error("storage file {path}: {action} failed: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A write-ahead log segment holds a damaged record with acknowledged
    /// records after it (or records out of sequence): never cut silently.
    #[error("write-ahead log segment {path} is damaged at offset {offset} ({why}); records after it were acknowledged, so it is not a torn tail: refusing to open. Resync this server from its peer, or restore the data_dir from a backup")]
    WalCorrupt {
        path: PathBuf,
        offset: u64,
        why: String,
    },
    /// The batch asks for something the core must never ask; nothing of it was applied.
    #[error("persist request {seq} refused, batch not applied: {why}")]
    InvalidBatch { seq: PersistSeq, why: String },
}

/// Checks what [`Storage::commit`] requires of a batch's shape.
fn check_batch_shape(batch: &[(PersistSeq, Vec<PersistOp>)]) -> Result<(), StorageError> {
    if batch.len() > BATCH_REQUESTS_MAX {
        let seq = batch.first().map_or(0, |(s, _)| *s);
        return Err(StorageError::InvalidBatch {
            seq,
            why: format!(
                "{} persist requests in one batch (limit {BATCH_REQUESTS_MAX})",
                batch.len()
            ),
        });
    }
    for pair in batch.windows(2) {
        if pair[1].0 <= pair[0].0 {
            return Err(StorageError::InvalidBatch {
                seq: pair[1].0,
                why: format!(
                    "persist sequence numbers must increase within a batch ({} follows {})",
                    pair[1].0, pair[0].0
                ),
            });
        }
    }
    Ok(())
}

fn truncate_refused(seq: PersistSeq, index: Index, commit: Index) -> StorageError {
    StorageError::InvalidBatch {
        seq,
        why: format!("TruncateAfter({index}) would drop committed entries (commit index {commit})"),
    }
}

fn commit_hole(seq: PersistSeq, expected: Index, found: Index) -> StorageError {
    StorageError::InvalidBatch {
        seq,
        why: format!(
            "Commit would apply entry {found} but entry {expected} is missing from the log"
        ),
    }
}

/// A [`ClientContact`] as stored: the core's type has no serde, by design
/// (it is not a wire type), so storage keeps its own mirror of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ContactRecord {
    client_id: ClientId,
    client_type: ClientType,
    view: [ViewEntry; 2],
    following: Option<String>,
    config_epoch: Epoch,
    config_version: Index,
    cached_samples: u64,
    dropped_samples: u64,
    modified_ms: Millis,
    forged_epoch_claims: u64,
}

impl From<legacy::ContactRecordV2> for ContactRecord {
    fn from(c: legacy::ContactRecordV2) -> Self {
        ContactRecord {
            client_id: c.client_id,
            client_type: c.client_type,
            view: c.view,
            following: c.following,
            config_epoch: c.config_epoch,
            config_version: c.config_version,
            cached_samples: c.cached_samples,
            dropped_samples: c.dropped_samples,
            modified_ms: c.modified_ms,
            forged_epoch_claims: 0,
        }
    }
}

impl From<&ClientContact> for ContactRecord {
    fn from(c: &ClientContact) -> Self {
        ContactRecord {
            client_id: c.client_id.clone(),
            client_type: c.client_type,
            view: c.view.clone(),
            following: c.following.clone(),
            config_epoch: c.config_epoch,
            config_version: c.config_version,
            cached_samples: c.cached_samples,
            dropped_samples: c.dropped_samples,
            modified_ms: c.modified_ms,
            forged_epoch_claims: c.forged_epoch_claims,
        }
    }
}

impl From<ContactRecord> for ClientContact {
    fn from(c: ContactRecord) -> Self {
        ClientContact {
            client_id: c.client_id,
            client_type: c.client_type,
            view: c.view,
            following: c.following,
            config_epoch: c.config_epoch,
            config_version: c.config_version,
            cached_samples: c.cached_samples,
            dropped_samples: c.dropped_samples,
            modified_ms: c.modified_ms,
            forged_epoch_claims: c.forged_epoch_claims,
        }
    }
}
