//! The segment files of the write-ahead log as one log: recovery at open
//! (torn tails cut, corruption refused), appends, and deleting what a
//! checkpoint covers.

use super::segment::{
    self, create_segment, install_segment, intact_record_after, io_err, parse_segment_name,
    prepare_segment, scan, sync_dir, write_zeros, CREATING_SUFFIX, RECORD_HEADER_BYTES,
};
use super::WalBounds;
use crate::storage::StorageError;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// A record recovered at open, with an LSN above the checkpoint.
#[derive(Debug)]
pub(super) struct Pending {
    pub lsn: u64,
    pub payload: Vec<u8>,
    pub path: PathBuf,
    pub offset: usize,
}

#[derive(Debug)]
struct Segment {
    first_lsn: u64,
    path: PathBuf,
    /// File size.
    bytes: u64,
}

/// The segment taking appends.
#[derive(Debug)]
struct Active {
    file: File,
    /// Where the next record goes.
    offset: u64,
    records: u64,
    /// Records written since its last `fdatasync` (batches of ops that need
    /// none, [`vcodr_core::PersistOp::needs_fsync`]): synced with the next
    /// record that needs it, or before a new segment takes over.
    unsynced: bool,
}

/// The write-ahead log: segment files in one directory, oldest first.
#[derive(Debug)]
pub(super) struct Log {
    dir: PathBuf,
    bounds: WalBounds,
    /// Every segment file, oldest first; the last is the active one if `active` is set.
    segments: Vec<Segment>,
    active: Option<Active>,
    /// LSN of the next record.
    next_lsn: u64,
    /// The record being written (reused).
    buf: Vec<u8>,
    /// `fdatasync`s of records since open (for tests and measurements).
    syncs: u64,
    /// The next segment file, made ready ahead of the roll that takes it.
    spare: Spare,
}

type Prepared = Result<(File, PathBuf), StorageError>;

/// The thread that zero-fills and syncs the next segment file while the
/// log takes appends, so that a roll costs a rename and a directory sync,
/// not the ~20–45 ms of writing and syncing 4 MiB that it cost the commit
/// in flight (measured with `perf trace` under `write-vs-pg` at 16 writers,
/// one roll every ~1.5 s). One spare at a time; a roll takes it, or waits
/// for it while it is being made. Dropping the log stops the thread and
/// removes an untaken spare (the next open removes one a crash left). A
/// spare that could not be made (a full disk) is made again at the roll.
#[derive(Debug)]
struct Spare {
    /// Asks for the next spare; `None` once the thread is gone.
    ask: Option<mpsc::Sender<()>>,
    made: mpsc::Receiver<Prepared>,
    /// A spare was asked for and not taken yet.
    asked: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spare {
    fn start(dir: &Path, bytes: u64) -> Result<Spare, StorageError> {
        let (ask, asked) = mpsc::channel::<()>();
        let (made_tx, made) = mpsc::sync_channel::<Prepared>(1);
        let dir = dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("vcodr-wal-spare".into())
            .spawn({
                let dir = dir.clone();
                move || {
                    for n in 0u64.. {
                        if asked.recv().is_err() {
                            return;
                        }
                        let spare = prepare_segment(&dir, &format!("spare-{n:06}"), bytes);
                        if made_tx.send(spare).is_err() {
                            return;
                        }
                    }
                }
            })
            .map_err(|source| StorageError::Io {
                path: dir.clone(),
                action: "starting the write-ahead log's segment thread",
                source,
            })?;
        Ok(Spare {
            ask: Some(ask),
            made,
            asked: false,
            thread: Some(thread),
        })
    }

    /// Asks for a spare unless one is asked for already.
    fn ask(&mut self) {
        if let (Some(ask), false) = (&self.ask, self.asked) {
            self.asked = ask.send(()).is_ok();
        }
    }

    /// The spare, waiting for it if it is being made; the next is asked for.
    fn take(&mut self) -> Option<Prepared> {
        self.ask();
        let got = self.made.recv().ok();
        self.asked = false;
        self.ask();
        got
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        self.ask = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        while let Ok(Ok((file, path))) = self.made.try_recv() {
            drop(file);
            let _ = std::fs::remove_file(path);
        }
    }
}

fn corrupt(path: &Path, offset: usize, why: String) -> StorageError {
    StorageError::WalCorrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        why,
    }
}

impl Log {
    /// Opens the log in `dir` (created if missing) for a store whose durable
    /// state covers every LSN up to `checkpoint`. Returns the records above
    /// the checkpoint, to replay in order.
    ///
    /// A damaged record with no intact record after it (in its segment or a
    /// later one) was never acknowledged: it and the rest of its segment are
    /// zeroed, and later (empty) segments removed. A damaged record followed
    /// by an intact one, a missing record above the checkpoint, or a
    /// segment whose first record is not the LSN its name says, is refused.
    pub fn open(
        dir: &Path,
        checkpoint: u64,
        bounds: WalBounds,
    ) -> Result<(Log, Vec<Pending>), StorageError> {
        if !dir.is_dir() {
            std::fs::create_dir_all(dir)
                .map_err(io_err(dir, "creating the write-ahead log directory"))?;
            // The directory's own name must survive a power loss with the records in it.
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let mut found = Vec::new();
        for item in std::fs::read_dir(dir).map_err(io_err(dir, "listing the write-ahead log"))? {
            let item = item.map_err(io_err(dir, "listing the write-ahead log"))?;
            let name = item.file_name().to_string_lossy().into_owned();
            let path = item.path();
            if let Some(lsn) = parse_segment_name(&name) {
                found.push((lsn, path));
            } else if name.ends_with(CREATING_SUFFIX) {
                // A segment whose creation did not finish: never held a record.
                std::fs::remove_file(&path)
                    .map_err(io_err(&path, "removing an unfinished segment"))?;
            } else {
                tracing::warn!(path = %path.display(), "ignoring a file that is not a write-ahead log segment");
            }
        }
        found.sort();

        let mut log = Log {
            dir: dir.to_path_buf(),
            bounds,
            segments: Vec::new(),
            active: None,
            next_lsn: checkpoint + 1,
            buf: Vec::new(),
            syncs: 0,
            spare: Spare::start(dir, bounds.segment_bytes)?,
        };
        let mut pending = Vec::new();
        let mut last_lsn: Option<u64> = None;
        let mut tail_cut = false;
        // Per segment: its records, end, and whether it was cut.
        let mut last_end = (0u64, 0u64);
        for (i, (first_lsn, path)) in found.iter().enumerate() {
            let bytes =
                std::fs::read(path).map_err(io_err(path, "reading a write-ahead log segment"))?;
            let s = scan(&bytes);
            if tail_cut {
                // After a cut tail, nothing may be intact (checked below); this one is empty.
                if let Some(r) = s.records.first() {
                    return Err(corrupt(
                        path,
                        r.offset,
                        "intact records after a damaged record of an earlier segment".into(),
                    ));
                }
                std::fs::remove_file(path)
                    .map_err(io_err(path, "removing an empty segment after a cut tail"))?;
                continue;
            }
            if let Some(r) = s.records.first() {
                if r.lsn != *first_lsn {
                    return Err(corrupt(
                        path,
                        0,
                        format!(
                            "the segment is named for LSN {first_lsn} but begins with LSN {}",
                            r.lsn
                        ),
                    ));
                }
                if let Some(prev) = last_lsn {
                    if r.lsn != prev + 1 && r.lsn > checkpoint + 1 {
                        return Err(corrupt(
                            path,
                            0,
                            format!("records {}..{} are missing before it", prev + 1, r.lsn),
                        ));
                    }
                }
            }
            for r in &s.records {
                if r.lsn > checkpoint {
                    let expected = pending
                        .last()
                        .map_or(checkpoint + 1, |p: &Pending| p.lsn + 1);
                    if r.lsn != expected {
                        return Err(corrupt(path, r.offset, format!("record {} found where record {expected} (the first after the checkpoint) belongs", r.lsn)));
                    }
                    pending.push(Pending {
                        lsn: r.lsn,
                        payload: r.payload(&bytes).to_vec(),
                        path: path.clone(),
                        offset: r.offset,
                    });
                }
                last_lsn = Some(r.lsn);
            }
            if let Some(why) = s.damage {
                let after = last_lsn.unwrap_or(first_lsn.saturating_sub(1));
                if let Some(at) = intact_record_after(&bytes, s.end + 1, after) {
                    return Err(corrupt(
                        path,
                        s.end,
                        format!("{why}, and an acknowledged record follows at offset {at}"),
                    ));
                }
                for (_, later) in &found[i + 1..] {
                    let later_bytes = std::fs::read(later)
                        .map_err(io_err(later, "reading a write-ahead log segment"))?;
                    if let Some(at) = intact_record_after(&later_bytes, 0, after) {
                        return Err(corrupt(
                            path,
                            s.end,
                            format!(
                                "{why}, and an acknowledged record follows in {} at offset {at}",
                                later.display()
                            ),
                        ));
                    }
                }
                // Never acknowledged: cut it.
                let nonzero_end = bytes.iter().rposition(|&b| b != 0).map_or(s.end, |p| p + 1);
                let file = File::options()
                    .write(true)
                    .open(path)
                    .map_err(io_err(path, "opening a segment to cut its torn tail"))?;
                write_zeros(&file, s.end as u64, bytes.len() as u64)
                    .and_then(|()| file.sync_data())
                    .map_err(io_err(path, "cutting the torn tail of a segment"))?;
                tracing::warn!(
                    path = %path.display(),
                    offset = s.end,
                    bytes = nonzero_end - s.end,
                    why = %why,
                    "cut a torn write-ahead log tail: a record that was never acknowledged"
                );
                tail_cut = true;
            }
            if s.records.is_empty() {
                // Never held a record (created just before a crash), or its only one was cut.
                std::fs::remove_file(path).map_err(io_err(path, "removing an empty segment"))?;
                continue;
            }
            last_end = (s.end as u64, s.records.len() as u64);
            log.segments.push(Segment {
                first_lsn: *first_lsn,
                path: path.clone(),
                bytes: bytes.len() as u64,
            });
        }
        sync_dir(dir)?;
        if let Some(last) = last_lsn {
            log.next_lsn = log.next_lsn.max(last + 1);
        }
        if let Some(seg) = log.segments.last() {
            let (end, records) = last_end;
            // Appends continue in the last segment only right after its last record.
            if last_lsn.map(|l| l + 1) == Some(log.next_lsn)
                && end + RECORD_HEADER_BYTES as u64 <= seg.bytes
                && records < bounds.segment_records
            {
                let file = File::options()
                    .read(true)
                    .write(true)
                    .open(&seg.path)
                    .map_err(io_err(
                        &seg.path,
                        "opening the last write-ahead log segment",
                    ))?;
                log.active = Some(Active {
                    unsynced: false,
                    file,
                    offset: end,
                    records,
                });
            }
        }
        Ok((log, pending))
    }

    /// Has the next segment file made ready in the background (the store
    /// calls this once it has replayed the log at open: a disk freed after
    /// filling up gives its space to the replay first).
    pub fn prepare_segment(&mut self) {
        self.spare.ask();
    }

    /// LSN of the next record.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// The batches a checkpoint may write without a record take no LSN: the
    /// one of the last record written.
    pub fn last_lsn(&self) -> u64 {
        self.next_lsn - 1
    }

    /// Bytes of every segment file.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// `fdatasync`s of records (and of segments left unsynced) since open.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Segment files on disk.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Appends the record of [`Log::next_lsn`] and, if `sync`, `fdatasync`s
    /// it (and every record before it): durable on `Ok`. Without `sync` the
    /// record is written (it survives the process being killed) and becomes
    /// durable with the next synced one. Starts a new segment first when the
    /// record does not fit the active one (or it holds
    /// [`WalBounds::segment_records`]), syncing the one it leaves if needed,
    /// so that no record is ever durable after a later one.
    pub fn append(&mut self, payload: &[u8], sync: bool) -> Result<(), StorageError> {
        let lsn = self.next_lsn;
        self.buf.clear();
        segment::encode_record(lsn, payload, &mut self.buf);
        let len = self.buf.len() as u64;
        let fits = |a: &Active, seg: &Segment| {
            a.offset + len <= seg.bytes && a.records < self.bounds.segment_records
        };
        let roll = match (&self.active, self.segments.last()) {
            (Some(a), Some(seg)) => !fits(a, seg),
            _ => true,
        };
        if roll {
            if let (Some(a), Some(seg)) = (self.active.as_ref(), self.segments.last()) {
                if a.unsynced {
                    a.file.sync_data().map_err(io_err(
                        &seg.path,
                        "fdatasync of a full write-ahead log segment",
                    ))?;
                    self.syncs += 1;
                }
            }
            self.active = None;
            let bytes = self.bounds.segment_bytes.max(len);
            let (file, path) = match (bytes == self.bounds.segment_bytes)
                .then(|| self.spare.take())
                .flatten()
            {
                Some(Ok((file, creating))) => (file, install_segment(&self.dir, &creating, lsn)?),
                Some(Err(e)) => {
                    // The disk may have room again since: what counts is the
                    // roll's own attempt, which fails before any record is written.
                    tracing::warn!(target: "vcodr::storage", error = %e, "making the next write-ahead log segment ahead failed ({e}); making it at the roll");
                    create_segment(&self.dir, lsn, bytes)?
                }
                // A record larger than a segment (or the thread is gone).
                None => create_segment(&self.dir, lsn, bytes)?,
            };
            self.segments.push(Segment {
                first_lsn: lsn,
                path,
                bytes,
            });
            self.active = Some(Active {
                file,
                offset: 0,
                records: 0,
                unsynced: false,
            });
        }
        let seg = self.segments.last().expect("a segment was just ensured");
        let a = self
            .active
            .as_mut()
            .expect("an active segment was just ensured");
        let offset = a.offset;
        a.file
            .write_all_at(&self.buf, offset)
            .map_err(io_err(&seg.path, "writing a write-ahead log record"))?;
        if sync {
            a.file
                .sync_data()
                .map_err(io_err(&seg.path, "fdatasync of a write-ahead log record"))?;
            self.syncs += 1;
        }
        a.unsynced = !sync;
        a.offset += len;
        a.records += 1;
        self.next_lsn += 1;
        Ok(())
    }

    /// Removes the segments whose records all have LSNs up to `checkpoint`
    /// (never the active one). A removal lost in a crash leaves a segment
    /// the next open skips.
    pub fn delete_below(&mut self, checkpoint: u64) -> Result<(), StorageError> {
        let keep_last = 1;
        let mut remove = 0;
        while remove + keep_last < self.segments.len()
            && self.segments[remove + 1].first_lsn <= checkpoint + 1
        {
            remove += 1;
        }
        for seg in self.segments.drain(..remove) {
            std::fs::remove_file(&seg.path).map_err(io_err(
                &seg.path,
                "removing a checkpointed write-ahead log segment",
            ))?;
        }
        Ok(())
    }
}
