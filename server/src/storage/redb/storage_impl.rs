//! [`Storage`] for [`RedbStorage`]: loading, group commits and the readers,
//! over the tables and helpers of the parent module.

use super::*;

fn count<T: ReadableTableMetadata>(
    s: &RedbStorage,
    table: &T,
    name: &'static str,
) -> Result<u64, StorageError> {
    table.len().map_err(s.db_err(name, "count"))
}

impl Storage for RedbStorage {
    fn load(&self) -> Result<Restored, StorageError> {
        let txn = self.begin_read()?;
        let state = self.read_table(&txn, STATE, STATE_NAME)?;
        let head = self.read_head(&state)?;
        let meta = match state
            .get(KEY_META)
            .map_err(self.db_err(STATE_NAME, "read meta"))?
        {
            Some(g) => Some(self.decode::<DurableMeta>(STATE_NAME, KEY_META, g.value())?),
            None => None,
        };

        let mut docs = BTreeMap::new();
        let table = self.read_table(&txn, DOCS, DOCS_NAME)?;
        for item in table.iter().map_err(self.db_err(DOCS_NAME, "read"))? {
            let (k, v) = item.map_err(self.db_err(DOCS_NAME, "read"))?;
            let doc: Doc = self.decode(DOCS_NAME, k.value(), v.value())?;
            docs.insert(k.value().to_string(), doc);
        }
        let mut sample_seq = BTreeMap::new();
        let table = self.read_table(&txn, SAMPLE_SEQ, SAMPLE_SEQ_NAME)?;
        for item in table.iter().map_err(self.db_err(SAMPLE_SEQ_NAME, "read"))? {
            let (k, v) = item.map_err(self.db_err(SAMPLE_SEQ_NAME, "read"))?;
            sample_seq.insert(k.value().to_string(), v.value());
        }
        let mut log = Vec::new();
        let table = self.read_table(&txn, LOG, LOG_NAME)?;
        for item in table.iter().map_err(self.db_err(LOG_NAME, "read"))? {
            let (k, v) = item.map_err(self.db_err(LOG_NAME, "read"))?;
            log.push(self.decode::<Entry>(LOG_NAME, k.value(), v.value())?);
        }
        let history = self.history_in(&txn, HISTORY_RESTORE_MAX)?;
        let mut samples_to_copy = Vec::new();
        let table = self.read_table(&txn, SAMPLE_COPY, SAMPLE_COPY_NAME)?;
        for item in table
            .iter()
            .map_err(self.db_err(SAMPLE_COPY_NAME, "read"))?
        {
            let (k, v) = item.map_err(self.db_err(SAMPLE_COPY_NAME, "read"))?;
            let (client, after_seq) = k.value();
            samples_to_copy.push(SampleRange {
                client: client.to_string(),
                after_seq,
                up_to_seq: v.value(),
            });
        }
        Ok(Restored {
            meta,
            applied: Snapshot {
                index: head.applied_index,
                epoch: head.applied_epoch,
                docs,
                sample_seq,
                epoch_starts: head.epoch_starts,
                config_index: head.config_index,
            },
            commit: head.commit,
            log,
            history,
            samples_to_copy,
        })
    }

    fn commit(&mut self, batch: &[(PersistSeq, Vec<PersistOp>)]) -> Result<(), StorageError> {
        check_batch_shape(batch)?;
        let txn = self.begin_write()?;
        match self.apply_batch(&txn, batch) {
            Ok(()) => txn
                .commit()
                .map_err(self.db_err("(all)", "commit the batch durably")),
            Err(e) => {
                if let Err(abort) = txn.abort() {
                    tracing::warn!(path = %self.path.display(), error = %abort, "aborting a refused batch failed");
                }
                Err(e)
            }
        }
    }

    fn get_doc(&self, key: &str) -> Result<Option<Doc>, StorageError> {
        let txn = self.begin_read()?;
        let table = self.read_table(&txn, DOCS, DOCS_NAME)?;
        let found = table.get(key).map_err(self.db_err(DOCS_NAME, "read"))?;
        found
            .map(|g| self.decode(DOCS_NAME, key, g.value()))
            .transpose()
    }

    fn list_docs(&self) -> Result<Vec<(String, Index)>, StorageError> {
        let txn = self.begin_read()?;
        let table = self.read_table(&txn, DOCS, DOCS_NAME)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(self.db_err(DOCS_NAME, "read"))? {
            let (k, v) = item.map_err(self.db_err(DOCS_NAME, "read"))?;
            let doc: Doc = self.decode(DOCS_NAME, k.value(), v.value())?;
            out.push((k.value().to_string(), doc.version));
        }
        Ok(out)
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
        let txn = self.begin_read()?;
        let table = self.read_table(&txn, SAMPLES, SAMPLES_NAME)?;
        let mut out = Vec::new();
        for item in table
            .range((client, after_seq + 1)..=(client, u64::MAX))
            .map_err(self.db_err(SAMPLES_NAME, "read"))?
            .take(limit.min(READ_ROWS_MAX))
        {
            let (k, v) = item.map_err(self.db_err(SAMPLES_NAME, "read"))?;
            out.push((k.value().1, v.value().to_vec()));
        }
        Ok(out)
    }

    fn read_samples(
        &self,
        ranges: &[SampleRange],
        max_bytes: usize,
        max_samples: usize,
    ) -> Result<Vec<SampleChunk>, StorageError> {
        let txn = self.begin_read()?;
        let table = self.read_table(&txn, SAMPLES, SAMPLES_NAME)?;
        const WHAT: &str = "read for the standby";
        read_sample_chunks(ranges, max_bytes, max_samples, |r| {
            let client = r.client.as_str();
            let rows = table
                .range((client, r.after_seq + 1)..=(client, r.up_to_seq))
                .map_err(self.db_err(SAMPLES_NAME, WHAT))?;
            Ok(rows.map(|row| {
                let (k, v) = row.map_err(self.db_err(SAMPLES_NAME, WHAT))?;
                Ok(Sample {
                    seq: k.value().1,
                    payload: v.value().to_vec(),
                })
            }))
        })
    }

    fn sample_summary(&self) -> Result<Vec<SampleSummary>, StorageError> {
        let txn = self.begin_read()?;
        let counts = self.read_table(&txn, SAMPLE_COUNT, SAMPLE_COUNT_NAME)?;
        let samples = self.read_table(&txn, SAMPLES, SAMPLES_NAME)?;
        let mut out = Vec::new();
        for item in counts
            .iter()
            .map_err(self.db_err(SAMPLE_COUNT_NAME, "read"))?
        {
            let (k, v) = item.map_err(self.db_err(SAMPLE_COUNT_NAME, "read"))?;
            let client = k.value();
            let max_seq = samples
                .range((client, 0)..=(client, u64::MAX))
                .map_err(self.db_err(SAMPLES_NAME, "read"))?
                .next_back()
                .transpose()
                .map_err(self.db_err(SAMPLES_NAME, "read"))?
                .map_or(0, |(k, _)| k.value().1);
            out.push(SampleSummary {
                client: client.to_string(),
                count: v.value(),
                max_seq,
            });
        }
        Ok(out)
    }

    fn archive(&self, offset: u64, limit: usize) -> Result<Vec<ArchivedEntry>, StorageError> {
        let txn = self.begin_read()?;
        let table = self.read_table(&txn, ARCHIVE, ARCHIVE_NAME)?;
        let mut out = Vec::new();
        for item in table
            .range(offset..)
            .map_err(self.db_err(ARCHIVE_NAME, "read"))?
            .take(limit.min(READ_ROWS_MAX))
        {
            let (k, v) = item.map_err(self.db_err(ARCHIVE_NAME, "read"))?;
            let r: ArchiveRecord = self.decode(ARCHIVE_NAME, k.value(), v.value())?;
            out.push(ArchivedEntry {
                index: r.entry.index,
                epoch: r.entry.epoch,
                op: r.entry.op,
                reason: r.reason,
            });
        }
        Ok(out)
    }

    /// redb keeps each table's length in its B-tree header: no scan.
    fn archive_len(&self) -> Result<u64, StorageError> {
        let txn = self.begin_read()?;
        count(
            self,
            &self.read_table(&txn, ARCHIVE, ARCHIVE_NAME)?,
            ARCHIVE_NAME,
        )
    }

    fn history(&self, limit: usize) -> Result<Vec<Transition>, StorageError> {
        let txn = self.begin_read()?;
        self.history_in(&txn, limit)
    }

    fn info(&self) -> Result<StorageInfo, StorageError> {
        let file_bytes = std::fs::metadata(&self.path)
            .map_err(|source| StorageError::Io {
                path: self.path.clone(),
                action: "reading the file size",
                source,
            })?
            .len();
        let txn = self.begin_read()?;
        let state = self.read_table(&txn, STATE, STATE_NAME)?;
        let head = self.read_head(&state)?;
        let log = self.read_table(&txn, LOG, LOG_NAME)?;
        let first_log_index = log
            .first()
            .map_err(self.db_err(LOG_NAME, "read first"))?
            .map(|(k, _)| k.value());
        let last_log_index = log
            .last()
            .map_err(self.db_err(LOG_NAME, "read last"))?
            .map(|(k, _)| k.value());
        Ok(StorageInfo {
            path: Some(self.path.clone()),
            file_bytes,
            schema_version: SCHEMA_VERSION,
            log_entries: count(self, &log, LOG_NAME)?,
            first_log_index,
            last_log_index,
            commit_index: head.commit,
            applied_index: head.applied_index,
            docs: count(self, &self.read_table(&txn, DOCS, DOCS_NAME)?, DOCS_NAME)?,
            samples: count(
                self,
                &self.read_table(&txn, SAMPLES, SAMPLES_NAME)?,
                SAMPLES_NAME,
            )?,
            duplicate_samples: head.duplicate_samples,
            archive_entries: count(
                self,
                &self.read_table(&txn, ARCHIVE, ARCHIVE_NAME)?,
                ARCHIVE_NAME,
            )?,
            history_entries: count(
                self,
                &self.read_table(&txn, HISTORY, HISTORY_NAME)?,
                HISTORY_NAME,
            )?,
            contacts: count(
                self,
                &self.read_table(&txn, CONTACTS, CONTACTS_NAME)?,
                CONTACTS_NAME,
            )?,
        })
    }

    fn save_contacts(&mut self, contacts: &[ClientContact]) -> Result<(), StorageError> {
        self.write_contacts(contacts)
    }

    fn load_contacts(&self) -> Result<Vec<ClientContact>, StorageError> {
        let txn = self.begin_read()?;
        let table = self.read_table(&txn, CONTACTS, CONTACTS_NAME)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(self.db_err(CONTACTS_NAME, "read"))? {
            let (k, v) = item.map_err(self.db_err(CONTACTS_NAME, "read"))?;
            let r: ContactRecord = self.decode(CONTACTS_NAME, k.value(), v.value())?;
            out.push(r.into());
        }
        Ok(out)
    }
}
