//! [`RedbStorage`]: the production [`Storage`], one redb file.
//!
//! # Layout (schema version [`SCHEMA_VERSION`])
//! | table | key → value | what |
//! |---|---|---|
//! | `vcodr_schema` | `"version"` → u64 | marks the file as ours; refused at open when absent or different |
//! | `state` | `"head"` → [`Head`], `"meta"` → [`DurableMeta`] | applied position, commit index, counters; DR metadata |
//! | `history` | seq → [`Transition`] | state history, the newest [`HISTORY_KEEP_MAX`] |
//! | `log` | index → [`Entry`] | the replicated log |
//! | `docs` | key → [`Doc`] | applied configuration documents |
//! | `sample_seq` | client → u64 | applied state: highest sample seq per client |
//! | `samples` | (client, seq) → payload | stored monitoring samples |
//! | `sample_count` | client → u64 | samples stored per client (for the summary) |
//! | `sample_copy` | (client, after seq) → up-to seq | sample ranges a standby still copies from its active after a snapshot ([`PersistOp::SamplesToCopy`]) |
//! | `archive` | position → ([`Entry`], reason) | divergence archive |
//! | `contacts` | client → contact row | client contact table |
//!
//! Structured values are postcard-encoded. Every [`Storage::commit`] is one
//! write transaction with [`Durability::Immediate`]: one fsync per batch.
//!
//! A file of schema [`MIGRATES_FROM`] or later is migrated at open, in one
//! transaction (see [`super::legacy`]); older or newer ones are refused,
//! naming both versions.

use super::{
    check_batch_shape, commit_hole, truncate_refused, ArchivedEntry, ContactRecord, SampleSummary,
    Storage, StorageError, StorageInfo, HISTORY_KEEP_MAX, HISTORY_RESTORE_MAX, READ_ROWS_MAX,
};
use ::redb::{
    Builder, Database, DatabaseError, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase,
    ReadableTable, ReadableTableMetadata, Table, TableDefinition, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Display;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use vcodr_core::durable::read_sample_chunks;
use vcodr_core::{
    ClientContact, Doc, DurableMeta, Entry, Epoch, Index, Op, PersistOp, PersistSeq, Restored,
    Sample, SampleChunk, SampleRange, Snapshot, Transition,
};

/// On-disk format version written at creation and checked at every open.
/// 3: the DR metadata pins the peer's identity and holds an epoch proof;
/// contact rows count forged epoch claims.
/// 4: the `sample_copy` table (a standby's sample ranges still to copy): a
/// build that knows nothing of it must not open the file and forget them.
/// 5: the DR metadata holds the server's incarnation and a standby's
/// followed run of its active (SPEC §4, incarnation fence).
pub const SCHEMA_VERSION: u64 = 5;
/// The oldest schema migrated at open (2, 3 and 4 → 5).
pub const MIGRATES_FROM: u64 = 2;

const SCHEMA_TABLE: &str = "vcodr_schema";
const SCHEMA: TableDefinition<&str, u64> = TableDefinition::new(SCHEMA_TABLE);
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("docs");
const SAMPLE_SEQ: TableDefinition<&str, u64> = TableDefinition::new("sample_seq");
const SAMPLES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("samples");
const SAMPLE_COUNT: TableDefinition<&str, u64> = TableDefinition::new("sample_count");
const SAMPLE_COPY: TableDefinition<(&str, u64), u64> = TableDefinition::new("sample_copy");
const ARCHIVE: TableDefinition<u64, &[u8]> = TableDefinition::new("archive");
const CONTACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("contacts");

const KEY_VERSION: &str = "version";
const KEY_HEAD: &str = "head";
const KEY_META: &str = "meta";

/// Where the applied state stands, and the counters of the append-only tables.
/// Small; read and rewritten by every commit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    /// Last log index applied to `docs`, `sample_seq` and `samples`.
    applied_index: Index,
    /// Epoch of the entry at `applied_index`.
    applied_epoch: Epoch,
    /// `(epoch, first index)` of each epoch begun at a promotion (applied state).
    epoch_starts: Vec<(Epoch, Index)>,
    /// Last applied index that changed the documents (applied state).
    config_index: Index,
    /// Highest committed index.
    commit: Index,
    /// Key of the next state-history row.
    history_next: u64,
    /// Key of the next divergence-archive row.
    archive_next: u64,
    /// Samples applied whose `(client, seq)` was already stored (must stay 0).
    duplicate_samples: u64,
}

/// A divergence-archive row as stored.
#[derive(Debug, Serialize, Deserialize)]
struct ArchiveRecord {
    entry: Entry,
    reason: String,
}

/// Durable storage in one redb file. See [`Storage`] for the contract and the
/// module documentation for the layout.
#[derive(Debug)]
pub struct RedbStorage {
    /// The open database; redb holds an exclusive lock on the file.
    db: Database,
    /// The file, named in every error and in [`StorageInfo`].
    path: PathBuf,
}

/// The tables a commit writes, each opened on first use within the
/// transaction: a batch of appends and commit markers opens three of the
/// nine (opening one costs a lookup in redb's table tree, and closing it an
/// update of the table's root; with all nine opened per batch, that was
/// ~4 % of each server's CPU under sync writes).
macro_rules! write_tables {
    ($($field:ident: $def:ident, $name:ident, $k:ty, $v:ty;)+) => {
        struct WriteTables<'t> {
            txn: &'t WriteTransaction,
            store: &'t RedbStorage,
            $($field: Option<Table<'t, $k, $v>>,)+
        }

        impl<'t> WriteTables<'t> {
            fn new(store: &'t RedbStorage, txn: &'t WriteTransaction) -> Self {
                WriteTables { txn, store, $($field: None,)+ }
            }

            $(
                /// The table, opened (or created) on first use.
                fn $field(&mut self) -> Result<&mut Table<'t, $k, $v>, StorageError> {
                    if self.$field.is_none() {
                        let t = self
                            .txn
                            .open_table($def)
                            .map_err(self.store.db_err($name, "open"))?;
                        self.$field = Some(t);
                    }
                    Ok(self.$field.as_mut().expect("opened above"))
                }
            )+

            /// Opens every table: creates the ones a new file does not have yet.
            fn create_all(&mut self) -> Result<(), StorageError> {
                $(self.$field()?;)+
                Ok(())
            }
        }
    };
}

// The one list of the tables a commit writes.
write_tables! {
    state: STATE, STATE_NAME, &'static str, &'static [u8];
    history: HISTORY, HISTORY_NAME, u64, &'static [u8];
    log: LOG, LOG_NAME, u64, &'static [u8];
    docs: DOCS, DOCS_NAME, &'static str, &'static [u8];
    sample_seq: SAMPLE_SEQ, SAMPLE_SEQ_NAME, &'static str, u64;
    samples: SAMPLES, SAMPLES_NAME, (&'static str, u64), &'static [u8];
    sample_count: SAMPLE_COUNT, SAMPLE_COUNT_NAME, &'static str, u64;
    sample_copy: SAMPLE_COPY, SAMPLE_COPY_NAME, (&'static str, u64), u64;
    archive: ARCHIVE, ARCHIVE_NAME, u64, &'static [u8];
}

impl RedbStorage {
    /// Opens the storage file at `path`, creating it (and its schema) if it
    /// does not exist or is empty.
    ///
    /// Refuses a file that is not a redb database or is damaged, a redb file
    /// without vcodr's schema marker, and a file of another schema version.
    /// Every page's checksum is verified at open (a full read of the file), so
    /// a file altered behind redb's back is refused rather than trusted.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        let mut builder = Builder::new();
        builder.set_check_integrity_on_open(true);
        let db = builder.create(&path).map_err(|source| match source {
            DatabaseError::Storage(::redb::StorageError::Corrupted(why)) => {
                StorageError::Unreadable {
                    path: path.clone(),
                    why,
                }
            }
            // redb reports a foreign header ("magic number mismatch") this way.
            DatabaseError::Storage(::redb::StorageError::Io(e))
                if e.kind() == std::io::ErrorKind::InvalidData =>
            {
                StorageError::Unreadable {
                    path: path.clone(),
                    why: e.to_string(),
                }
            }
            source => StorageError::Open {
                path: path.clone(),
                source,
            },
        })?;
        let store = RedbStorage { db, path };
        store.check_schema()?;
        Ok(store)
    }

    /// The storage file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adopts an empty database (writes the schema) or checks the marker of a used one.
    fn check_schema(&self) -> Result<(), StorageError> {
        let read = self.begin_read()?;
        let mut names: Vec<String> = read
            .list_tables()
            .map_err(self.db_err("(table list)", "listing tables"))?
            .map(|h| ::redb::TableHandle::name(&h).to_string())
            .collect();
        names.extend(
            read.list_multimap_tables()
                .map_err(self.db_err("(table list)", "listing tables"))?
                .map(|h| ::redb::MultimapTableHandle::name(&h).to_string()),
        );
        if names.is_empty() {
            drop(read);
            return self.init_schema();
        }
        if !names.iter().any(|n| n == SCHEMA_TABLE) {
            names.sort();
            names.truncate(8);
            return Err(StorageError::Foreign {
                path: self.path.clone(),
                why: format!(
                    "a redb database without the `{SCHEMA_TABLE}` marker table; it holds tables {names:?}"
                ),
            });
        }
        let table = read
            .open_table(SCHEMA)
            .map_err(self.db_err(SCHEMA_TABLE, "open"))?;
        let found = table
            .get(KEY_VERSION)
            .map_err(self.db_err(SCHEMA_TABLE, "read version"))?
            .map(|v| v.value());
        match found {
            Some(SCHEMA_VERSION) => Ok(()),
            Some(from) if (MIGRATES_FROM..SCHEMA_VERSION).contains(&from) => {
                drop(table);
                drop(read);
                self.migrate(from)
            }
            Some(found) => Err(StorageError::SchemaVersion {
                path: self.path.clone(),
                found,
                supported: SCHEMA_VERSION,
            }),
            None => Err(StorageError::Foreign {
                path: self.path.clone(),
                why: format!("the `{SCHEMA_TABLE}` table has no `{KEY_VERSION}` row"),
            }),
        }
    }

    /// Schema `from` (2, 3 or 4) → [`SCHEMA_VERSION`], in one write
    /// transaction: the DR metadata rewritten in the current layout (and,
    /// from 2, the contact rows), the `sample_copy` table created where it
    /// was missing (before 4); nothing else changes.
    fn migrate(&self, from: u64) -> Result<(), StorageError> {
        let txn = self.begin_write()?;
        let mut contacts = 0;
        {
            let mut state = txn
                .open_table(STATE)
                .map_err(self.db_err(STATE_NAME, "open"))?;
            let old = state
                .get(KEY_META)
                .map_err(self.db_err(STATE_NAME, "read meta"))?
                .map(|g| g.value().to_vec());
            if let Some(bytes) = old {
                let meta = if from == MIGRATES_FROM {
                    let v2: super::legacy::DurableMetaV2 =
                        self.decode(STATE_NAME, KEY_META, &bytes)?;
                    DurableMeta::from(v2)
                } else {
                    let v4: super::legacy::DurableMetaV4 =
                        self.decode(STATE_NAME, KEY_META, &bytes)?;
                    DurableMeta::from(v4)
                };
                let bytes = self.encode(STATE_NAME, "meta", &meta)?;
                state
                    .insert(KEY_META, bytes.as_slice())
                    .map_err(self.db_err(STATE_NAME, "write meta"))?;
            }
            if from == MIGRATES_FROM {
                let mut table = txn
                    .open_table(CONTACTS)
                    .map_err(self.db_err(CONTACTS_NAME, "open"))?;
                let mut rows = Vec::new();
                for item in table.iter().map_err(self.db_err(CONTACTS_NAME, "read"))? {
                    let (k, v) = item.map_err(self.db_err(CONTACTS_NAME, "read"))?;
                    let old: super::legacy::ContactRecordV2 =
                        self.decode(CONTACTS_NAME, k.value(), v.value())?;
                    rows.push((k.value().to_string(), ContactRecord::from(old)));
                }
                for (k, row) in &rows {
                    let bytes = self.encode(CONTACTS_NAME, "contact", row)?;
                    table
                        .insert(k.as_str(), bytes.as_slice())
                        .map_err(self.db_err(CONTACTS_NAME, "write"))?;
                }
                contacts = rows.len();
            }
            if from < 4 {
                txn.open_table(SAMPLE_COPY)
                    .map_err(self.db_err(SAMPLE_COPY_NAME, "create"))?;
            }
        }
        self.commit_schema(txn, "commit the migration")?;
        tracing::info!(
            path = %self.path.display(),
            from,
            to = SCHEMA_VERSION,
            contacts,
            "migrated the storage file{}",
            if from == MIGRATES_FROM {
                ": the peer is pinned again on its first contact by the certificate name recorded at pairing"
            } else {
                ""
            }
        );
        Ok(())
    }

    /// Records [`SCHEMA_VERSION`] in `txn` and commits it: the last step of
    /// creating or migrating a file, so that a crash before it leaves the
    /// file as it was.
    fn commit_schema(
        &self,
        txn: WriteTransaction,
        action: &'static str,
    ) -> Result<(), StorageError> {
        {
            let mut schema = txn
                .open_table(SCHEMA)
                .map_err(self.db_err(SCHEMA_TABLE, "open"))?;
            schema
                .insert(KEY_VERSION, SCHEMA_VERSION)
                .map_err(self.db_err(SCHEMA_TABLE, "write version"))?;
        }
        txn.commit().map_err(self.db_err(SCHEMA_TABLE, action))
    }

    fn init_schema(&self) -> Result<(), StorageError> {
        let txn = self.begin_write()?;
        {
            let mut t = WriteTables::new(self, &txn);
            t.create_all()?;
            let head = self.encode(STATE_NAME, "head", &Head::default())?;
            t.state()?
                .insert(KEY_HEAD, head.as_slice())
                .map_err(self.db_err(STATE_NAME, "write head"))?;
            txn.open_table(CONTACTS)
                .map_err(self.db_err(CONTACTS_NAME, "create"))?;
        }
        self.commit_schema(txn, "commit schema")?;
        tracing::info!(path = %self.path.display(), version = SCHEMA_VERSION, "created storage file");
        Ok(())
    }

    // ---- errors and encoding -------------------------------------------------

    fn db_err<E: Into<::redb::Error>>(
        &self,
        table: &'static str,
        action: &'static str,
    ) -> impl FnOnce(E) -> StorageError + '_ {
        move |e| StorageError::Db {
            path: self.path.clone(),
            table,
            action,
            source: Box::new(e.into()),
        }
    }

    fn encode<T: Serialize>(
        &self,
        table: &'static str,
        what: &'static str,
        value: &T,
    ) -> Result<Vec<u8>, StorageError> {
        postcard::to_stdvec(value).map_err(|source| StorageError::Encode {
            path: self.path.clone(),
            table,
            what,
            source,
        })
    }

    fn decode<T: DeserializeOwned>(
        &self,
        table: &'static str,
        key: impl Display,
        bytes: &[u8],
    ) -> Result<T, StorageError> {
        postcard::from_bytes(bytes).map_err(|source| StorageError::Decode {
            path: self.path.clone(),
            table,
            key: key.to_string(),
            source,
        })
    }

    fn begin_read(&self) -> Result<ReadTransaction, StorageError> {
        self.db
            .begin_read()
            .map_err(self.db_err("(all)", "begin read transaction"))
    }

    fn begin_write(&self) -> Result<WriteTransaction, StorageError> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(self.db_err("(all)", "begin write transaction"))?;
        txn.set_durability(Durability::Immediate)
            .map_err(self.db_err("(all)", "set durability"))?;
        Ok(txn)
    }

    fn read_table<K: ::redb::Key + 'static, V: ::redb::Value + 'static>(
        &self,
        txn: &ReadTransaction,
        def: TableDefinition<K, V>,
        name: &'static str,
    ) -> Result<ReadOnlyTable<K, V>, StorageError> {
        txn.open_table(def).map_err(self.db_err(name, "open"))
    }

    fn read_head<T: ReadableTable<&'static str, &'static [u8]>>(
        &self,
        state: &T,
    ) -> Result<Head, StorageError> {
        let guard = state
            .get(KEY_HEAD)
            .map_err(self.db_err(STATE_NAME, "read head"))?
            .ok_or_else(|| StorageError::Foreign {
                path: self.path.clone(),
                why: format!("table `{STATE_NAME}` has no `{KEY_HEAD}` row"),
            })?;
        self.decode(STATE_NAME, KEY_HEAD, guard.value())
    }

    // ---- the write path -------------------------------------------------------

    /// Applies the whole batch inside `txn`; the caller commits or aborts.
    fn apply_batch(
        &self,
        txn: &WriteTransaction,
        batch: &[(PersistSeq, Vec<PersistOp>)],
    ) -> Result<(), StorageError> {
        let mut t = WriteTables::new(self, txn);
        let mut head = self.read_head(&*t.state()?)?;
        let before = head.clone();
        for (seq, ops) in batch {
            for op in ops {
                self.apply_op(&mut t, &mut head, *seq, op)?;
            }
        }
        if head.history_next != before.history_next {
            // Only a batch that added transitions can leave too many.
            self.prune_history(&mut t, &head)?;
        }
        if head != before {
            let bytes = self.encode(STATE_NAME, "head", &head)?;
            t.state()?
                .insert(KEY_HEAD, bytes.as_slice())
                .map_err(self.db_err(STATE_NAME, "write head"))?;
        }
        Ok(())
    }

    fn apply_op(
        &self,
        t: &mut WriteTables<'_>,
        head: &mut Head,
        seq: PersistSeq,
        op: &PersistOp,
    ) -> Result<(), StorageError> {
        match op {
            PersistOp::Meta(meta) => {
                let bytes = self.encode(STATE_NAME, "meta", meta)?;
                t.state()?
                    .insert(KEY_META, bytes.as_slice())
                    .map_err(self.db_err(STATE_NAME, "write meta"))?;
            }
            PersistOp::History(transition) => {
                let bytes = self.encode(HISTORY_NAME, "transition", transition)?;
                t.history()?
                    .insert(head.history_next, bytes.as_slice())
                    .map_err(self.db_err(HISTORY_NAME, "append"))?;
                head.history_next += 1;
            }
            PersistOp::Append(entries) => {
                for e in entries {
                    // An entry at a stored index replaces it and everything after.
                    let last = t
                        .log()?
                        .last()
                        .map_err(self.db_err(LOG_NAME, "read last"))?
                        .map(|(k, _)| k.value());
                    if last.is_some_and(|last| last >= e.index) {
                        t.log()?
                            .retain_in(e.index.., |_, _| false)
                            .map_err(self.db_err(LOG_NAME, "drop replaced suffix"))?;
                    }
                    let bytes = self.encode(LOG_NAME, "entry", e)?;
                    t.log()?
                        .insert(e.index, bytes.as_slice())
                        .map_err(self.db_err(LOG_NAME, "append"))?;
                }
            }
            PersistOp::TruncateAfter(index) => {
                if *index < head.commit {
                    return Err(truncate_refused(seq, *index, head.commit));
                }
                t.log()?
                    .retain_in::<u64, _>((Bound::Excluded(*index), Bound::Unbounded), |_, _| false)
                    .map_err(self.db_err(LOG_NAME, "truncate"))?;
            }
            PersistOp::Commit(index) => {
                head.commit = head.commit.max(*index);
                self.apply_committed(t, head, seq)?;
            }
            PersistOp::InstallSnapshot(snapshot) => self.install_snapshot(t, head, snapshot)?,
            PersistOp::Archive { after, reason } => {
                let moved: Vec<(u64, Vec<u8>)> = t
                    .log()?
                    .extract_from_if::<u64, _>(
                        (Bound::Excluded(*after), Bound::Unbounded),
                        |_, _| true,
                    )
                    .map_err(self.db_err(LOG_NAME, "extract for archive"))?
                    .map(|r| r.map(|(k, v)| (k.value(), v.value().to_vec())))
                    .collect::<Result<_, _>>()
                    .map_err(self.db_err(LOG_NAME, "extract for archive"))?;
                for (index, bytes) in moved {
                    let entry: Entry = self.decode(LOG_NAME, index, &bytes)?;
                    let record = ArchiveRecord {
                        entry,
                        reason: reason.clone(),
                    };
                    let bytes = self.encode(ARCHIVE_NAME, "archived entry", &record)?;
                    t.archive()?
                        .insert(head.archive_next, bytes.as_slice())
                        .map_err(self.db_err(ARCHIVE_NAME, "append"))?;
                    head.archive_next += 1;
                }
            }
            PersistOp::PruneSamples { client, below_seq } => {
                let removed = t
                    .samples()?
                    .extract_from_if(
                        (client.as_str(), 0)..(client.as_str(), *below_seq),
                        |_, _| true,
                    )
                    .map_err(self.db_err(SAMPLES_NAME, "prune"))?
                    .count() as u64;
                if removed > 0 {
                    let count = t
                        .sample_count()?
                        .get(client.as_str())
                        .map_err(self.db_err(SAMPLE_COUNT_NAME, "read"))?
                        .map_or(0, |g| g.value());
                    let left = count.saturating_sub(removed);
                    if left == 0 {
                        // As if the client never stored one (the summary lists no empty client).
                        t.sample_count()?
                            .remove(client.as_str())
                            .map_err(self.db_err(SAMPLE_COUNT_NAME, "write"))?;
                    } else {
                        t.sample_count()?
                            .insert(client.as_str(), left)
                            .map_err(self.db_err(SAMPLE_COUNT_NAME, "write"))?;
                    }
                }
            }
            PersistOp::Compact { below } => {
                let keep_from = (*below).min(head.commit + 1).min(head.applied_index + 1);
                t.log()?
                    .retain_in(..keep_from, |_, _| false)
                    .map_err(self.db_err(LOG_NAME, "compact"))?;
            }
            PersistOp::SamplesToCopy(ranges) => {
                t.sample_copy()?
                    .retain(|_, _| false)
                    .map_err(self.db_err(SAMPLE_COPY_NAME, "clear"))?;
                for r in ranges {
                    t.sample_copy()?
                        .insert((r.client.as_str(), r.after_seq), r.up_to_seq)
                        .map_err(self.db_err(SAMPLE_COPY_NAME, "write"))?;
                }
            }
            PersistOp::StoreSamples(chunk) => {
                let client = chunk.client.as_str();
                let mut added = 0u64;
                for s in &chunk.samples {
                    let old = t
                        .samples()?
                        .insert((client, s.seq), s.payload.as_slice())
                        .map_err(self.db_err(SAMPLES_NAME, "store copied sample"))?;
                    if old.is_some() {
                        head.duplicate_samples += 1;
                    } else {
                        added += 1;
                    }
                }
                if added > 0 {
                    let count = t
                        .sample_count()?
                        .get(client)
                        .map_err(self.db_err(SAMPLE_COUNT_NAME, "read"))?
                        .map_or(0, |g| g.value());
                    t.sample_count()?
                        .insert(client, count + added)
                        .map_err(self.db_err(SAMPLE_COUNT_NAME, "write"))?;
                }
                let up_to = t
                    .sample_copy()?
                    .remove((client, chunk.after_seq))
                    .map_err(self.db_err(SAMPLE_COPY_NAME, "advance"))?
                    .map(|g| g.value());
                if let Some(up_to) = up_to.filter(|u| chunk.through_seq < *u) {
                    t.sample_copy()?
                        .insert((client, chunk.through_seq), up_to)
                        .map_err(self.db_err(SAMPLE_COPY_NAME, "advance"))?;
                }
            }
        }
        Ok(())
    }

    /// Applies log entries `(applied_index, commit]` to docs and samples, as
    /// [`vcodr_core::durable::apply_entry`] does to a snapshot.
    fn apply_committed(
        &self,
        t: &mut WriteTables<'_>,
        head: &mut Head,
        seq: PersistSeq,
    ) -> Result<(), StorageError> {
        if head.commit <= head.applied_index {
            return Ok(());
        }
        let mut entries = Vec::new();
        for item in t
            .log()?
            .range(head.applied_index + 1..=head.commit)
            .map_err(self.db_err(LOG_NAME, "read committed range"))?
        {
            let (k, v) = item.map_err(self.db_err(LOG_NAME, "read committed range"))?;
            entries.push(self.decode::<Entry>(LOG_NAME, k.value(), v.value())?);
        }
        for e in entries {
            if e.index != head.applied_index + 1 {
                return Err(commit_hole(seq, head.applied_index + 1, e.index));
            }
            match &e.op {
                Op::Put { key, value } => {
                    let doc = Doc {
                        value: value.clone(),
                        version: e.index,
                    };
                    let bytes = self.encode(DOCS_NAME, "document", &doc)?;
                    t.docs()?
                        .insert(key.as_str(), bytes.as_slice())
                        .map_err(self.db_err(DOCS_NAME, "put"))?;
                    head.config_index = e.index;
                }
                Op::Delete { key } => {
                    t.docs()?
                        .remove(key.as_str())
                        .map_err(self.db_err(DOCS_NAME, "delete"))?;
                    head.config_index = e.index;
                }
                Op::Samples { client, samples } => {
                    let mut added = 0u64;
                    for s in samples {
                        let old = t
                            .samples()?
                            .insert((client.as_str(), s.seq), s.payload.as_slice())
                            .map_err(self.db_err(SAMPLES_NAME, "store sample"))?;
                        if old.is_some() {
                            head.duplicate_samples += 1;
                        } else {
                            added += 1;
                        }
                    }
                    if added > 0 {
                        let count = t
                            .sample_count()?
                            .get(client.as_str())
                            .map_err(self.db_err(SAMPLE_COUNT_NAME, "read"))?
                            .map_or(0, |g| g.value());
                        t.sample_count()?
                            .insert(client.as_str(), count + added)
                            .map_err(self.db_err(SAMPLE_COUNT_NAME, "write"))?;
                    }
                    if let Some(last) = samples.last() {
                        let seq_was = t
                            .sample_seq()?
                            .get(client.as_str())
                            .map_err(self.db_err(SAMPLE_SEQ_NAME, "read"))?
                            .map_or(0, |g| g.value());
                        t.sample_seq()?
                            .insert(client.as_str(), seq_was.max(last.seq))
                            .map_err(self.db_err(SAMPLE_SEQ_NAME, "write"))?;
                    }
                }
                Op::EpochStart => head.epoch_starts.push((e.epoch, e.index)),
            }
            head.applied_index = e.index;
            head.applied_epoch = e.epoch;
        }
        Ok(())
    }

    fn install_snapshot(
        &self,
        t: &mut WriteTables<'_>,
        head: &mut Head,
        s: &Snapshot,
    ) -> Result<(), StorageError> {
        t.docs()?
            .retain(|_, _| false)
            .map_err(self.db_err(DOCS_NAME, "clear"))?;
        for (key, doc) in &s.docs {
            let bytes = self.encode(DOCS_NAME, "document", doc)?;
            t.docs()?
                .insert(key.as_str(), bytes.as_slice())
                .map_err(self.db_err(DOCS_NAME, "install"))?;
        }
        t.sample_seq()?
            .retain(|_, _| false)
            .map_err(self.db_err(SAMPLE_SEQ_NAME, "clear"))?;
        for (client, seq) in &s.sample_seq {
            t.sample_seq()?
                .insert(client.as_str(), *seq)
                .map_err(self.db_err(SAMPLE_SEQ_NAME, "install"))?;
        }
        t.log()?
            .retain(|_, _| false)
            .map_err(self.db_err(LOG_NAME, "clear"))?;
        // Samples beyond the snapshot's sequences were never committed there
        // (or were archived): drop them, as the reference store does.
        let seqs = &s.sample_seq;
        t.samples()?
            .retain(|(client, seq), _| seqs.get(client).is_some_and(|max| seq <= *max))
            .map_err(self.db_err(SAMPLES_NAME, "drop samples beyond the snapshot"))?;
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for item in t
            .samples()?
            .iter()
            .map_err(self.db_err(SAMPLES_NAME, "count"))?
        {
            let (k, _) = item.map_err(self.db_err(SAMPLES_NAME, "count"))?;
            *counts.entry(k.value().0.to_string()).or_insert(0) += 1;
        }
        t.sample_count()?
            .retain(|_, _| false)
            .map_err(self.db_err(SAMPLE_COUNT_NAME, "clear"))?;
        for (client, count) in &counts {
            t.sample_count()?
                .insert(client.as_str(), *count)
                .map_err(self.db_err(SAMPLE_COUNT_NAME, "recount"))?;
        }
        head.applied_index = s.index;
        head.applied_epoch = s.epoch;
        head.epoch_starts = s.epoch_starts.clone();
        head.config_index = s.config_index;
        head.commit = s.index;
        Ok(())
    }

    /// The newest `limit` transitions in `txn`, oldest first.
    fn history_in(
        &self,
        txn: &ReadTransaction,
        limit: usize,
    ) -> Result<Vec<Transition>, StorageError> {
        let table = self.read_table(txn, HISTORY, HISTORY_NAME)?;
        let mut out = Vec::new();
        for item in table
            .iter()
            .map_err(self.db_err(HISTORY_NAME, "read"))?
            .rev()
            .take(limit.min(READ_ROWS_MAX))
        {
            let (k, v) = item.map_err(self.db_err(HISTORY_NAME, "read"))?;
            out.push(self.decode::<Transition>(HISTORY_NAME, k.value(), v.value())?);
        }
        out.reverse();
        Ok(out)
    }

    fn prune_history(&self, t: &mut WriteTables<'_>, head: &Head) -> Result<(), StorageError> {
        let keep = HISTORY_KEEP_MAX as u64;
        if head.history_next > keep {
            t.history()?
                .retain_in(..head.history_next - keep, |_, _| false)
                .map_err(self.db_err(HISTORY_NAME, "prune"))?;
        }
        Ok(())
    }
}

const STATE_NAME: &str = "state";
const HISTORY_NAME: &str = "history";
const LOG_NAME: &str = "log";
const DOCS_NAME: &str = "docs";
const SAMPLE_SEQ_NAME: &str = "sample_seq";
const SAMPLES_NAME: &str = "samples";
const SAMPLE_COUNT_NAME: &str = "sample_count";
const SAMPLE_COPY_NAME: &str = "sample_copy";
const ARCHIVE_NAME: &str = "archive";
const CONTACTS_NAME: &str = "contacts";

// The `Storage` trait over these tables: what the driver calls.
mod storage_impl;
// What the write-ahead log in front of this file needs of it.
mod wal_hooks;
