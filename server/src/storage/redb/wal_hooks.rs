//! What [`crate::storage::WalStorage`] needs of a [`RedbStorage`]: the last
//! write-ahead log position the state reflects, and a write transaction that
//! takes logged batches one after the other and is committed later, with a
//! chosen durability.
//!
//! The position lives in the `state` table under `"wal_lsn"` (8 bytes LE),
//! written by every such transaction just before it commits, so that
//! whatever redb holds durably names the last log record it includes. A file
//! without the row (every file [`RedbStorage`] alone wrote) is at position 0.
//!
//! redb takes one write transaction at a time: while one of these is open,
//! any other write of this file ([`Storage::save_contacts`], a migration)
//! would wait for it, so the caller commits or aborts it first.

use super::*;

const KEY_WAL_LSN: &str = "wal_lsn";

impl RedbStorage {
    /// The LSN of the last write-ahead log record this state includes (0: none).
    pub(in crate::storage) fn wal_lsn(&self) -> Result<u64, StorageError> {
        let txn = self.begin_read()?;
        let state = self.read_table(&txn, STATE, STATE_NAME)?;
        let found = state
            .get(KEY_WAL_LSN)
            .map_err(self.db_err(STATE_NAME, "read wal_lsn"))?;
        match found {
            None => Ok(0),
            Some(g) => {
                let bytes: [u8; 8] = g.value().try_into().map_err(|_| StorageError::Foreign {
                    path: self.path.clone(),
                    why: format!(
                        "table `{STATE_NAME}` row `{KEY_WAL_LSN}` is {} bytes, not 8",
                        g.value().len()
                    ),
                })?;
                Ok(u64::from_le_bytes(bytes))
            }
        }
    }

    /// The commit index, the applied index and the stored log indexes above
    /// the applied one, ascending: what [`crate::storage::WalStorage`] keeps
    /// in memory to refuse a batch before logging it.
    pub(in crate::storage) fn log_shape(&self) -> Result<(Index, Index, Vec<Index>), StorageError> {
        let txn = self.begin_read()?;
        let state = self.read_table(&txn, STATE, STATE_NAME)?;
        let head = self.read_head(&state)?;
        let log = self.read_table(&txn, LOG, LOG_NAME)?;
        let mut above = Vec::new();
        for item in log
            .range(head.applied_index + 1..)
            .map_err(self.db_err(LOG_NAME, "read indexes"))?
        {
            let (k, _) = item.map_err(self.db_err(LOG_NAME, "read indexes"))?;
            above.push(k.value());
        }
        Ok((head.commit, head.applied_index, above))
    }

    /// [`Storage::save_contacts`] through a shared reference: the
    /// [`crate::storage::WalStorage`] apply thread shares the database.
    pub(in crate::storage) fn write_contacts(
        &self,
        contacts: &[ClientContact],
    ) -> Result<(), StorageError> {
        let txn = self.begin_write()?;
        {
            let mut table = txn
                .open_table(CONTACTS)
                .map_err(self.db_err(CONTACTS_NAME, "open"))?;
            table
                .retain(|_, _| false)
                .map_err(self.db_err(CONTACTS_NAME, "clear"))?;
            for c in contacts {
                let bytes = self.encode(CONTACTS_NAME, "contact", &ContactRecord::from(c))?;
                table
                    .insert(c.client_id.as_str(), bytes.as_slice())
                    .map_err(self.db_err(CONTACTS_NAME, "write"))?;
            }
        }
        txn.commit()
            .map_err(self.db_err(CONTACTS_NAME, "commit contacts"))
    }

    /// Begins a write transaction for logged batches, `Durability::None`
    /// unless [`RedbStorage::commit_logged`] makes it a checkpoint.
    pub(in crate::storage) fn begin_logged(&self) -> Result<WriteTransaction, StorageError> {
        let mut txn = self.begin_write()?;
        txn.set_durability(Durability::None)
            .map_err(self.db_err("(all)", "set durability"))?;
        Ok(txn)
    }

    /// Applies one batch in `txn`, over what the batches applied before it
    /// left there (uncommitted ones included), refusing what the core must
    /// never send as [`Storage::commit`] does. On error `txn` may hold part
    /// of the batch: the caller aborts it.
    pub(in crate::storage) fn apply_logged(
        &self,
        txn: &WriteTransaction,
        batch: &[(PersistSeq, Vec<PersistOp>)],
    ) -> Result<(), StorageError> {
        self.apply_batch(txn, batch)
    }

    /// Records `wal_lsn` in `txn` and commits it, durably
    /// (`Durability::Immediate`, a checkpoint) or not (`Durability::None`:
    /// visible to readers at once, lost at a crash, which reverts the file
    /// to its last durable commit). On error nothing of `txn` is committed.
    pub(in crate::storage) fn commit_logged(
        &self,
        mut txn: WriteTransaction,
        wal_lsn: u64,
        durable: bool,
    ) -> Result<(), StorageError> {
        let recorded = (|| {
            if durable {
                txn.set_durability(Durability::Immediate)
                    .map_err(self.db_err("(all)", "set durability"))?;
            }
            let mut state = txn
                .open_table(STATE)
                .map_err(self.db_err(STATE_NAME, "open"))?;
            state
                .insert(KEY_WAL_LSN, wal_lsn.to_le_bytes().as_slice())
                .map_err(self.db_err(STATE_NAME, "write wal_lsn"))?;
            Ok(())
        })();
        if let Err(e) = recorded {
            self.abort_logged(txn);
            return Err(e);
        }
        txn.commit().map_err(self.db_err(
            "(all)",
            if durable {
                "commit a checkpoint durably"
            } else {
                "commit logged batches"
            },
        ))
    }

    /// Aborts `txn`: nothing of it is committed, whether or not the abort
    /// itself reports an error (then only logged).
    pub(in crate::storage) fn abort_logged(&self, txn: WriteTransaction) {
        if let Err(abort) = txn.abort() {
            tracing::warn!(path = %self.path.display(), error = %abort, "aborting a write transaction of logged batches failed");
        }
    }
}
