//! What [`crate::storage::WalStorage`] needs of a [`RedbStorage`]: the last
//! write-ahead log position the state reflects, and batches applied in one
//! transaction of a chosen durability around the log's own write.
//!
//! The position lives in the `state` table under `"wal_lsn"` (8 bytes LE),
//! written by every such transaction, so that whatever redb holds durably
//! names the last log record it includes. A file without the row (every file
//! [`RedbStorage`] alone wrote) is at position 0.

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

    /// Applies `batches` in order in one write transaction that also records
    /// `wal_lsn`; then runs `log` (the write-ahead log's append and fdatasync);
    /// then commits, durably (`Durability::Immediate`, a checkpoint) or not
    /// (`Durability::None`: visible to readers at once, lost at a crash, which
    /// reverts the file to its last durable commit). If applying or `log`
    /// fails, the transaction is aborted and nothing of it is visible.
    pub(in crate::storage) fn commit_logged(
        &self,
        batches: &[&[(PersistSeq, Vec<PersistOp>)]],
        wal_lsn: u64,
        durable: bool,
        log: impl FnOnce() -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let mut txn = self.begin_write()?;
        if !durable {
            txn.set_durability(Durability::None)
                .map_err(self.db_err("(all)", "set durability"))?;
        }
        let applied = (|| {
            for batch in batches {
                self.apply_batch(&txn, batch)?;
            }
            let mut state = txn
                .open_table(STATE)
                .map_err(self.db_err(STATE_NAME, "open"))?;
            state
                .insert(KEY_WAL_LSN, wal_lsn.to_le_bytes().as_slice())
                .map_err(self.db_err(STATE_NAME, "write wal_lsn"))?;
            drop(state);
            log()
        })();
        match applied {
            Ok(()) => txn.commit().map_err(self.db_err(
                "(all)",
                if durable {
                    "commit a checkpoint durably"
                } else {
                    "commit a logged batch"
                },
            )),
            Err(e) => {
                if let Err(abort) = txn.abort() {
                    tracing::warn!(path = %self.path.display(), error = %abort, "aborting a failed batch failed");
                }
                Err(e)
            }
        }
    }
}
