//! [`WalStorage`] tests: the conformance suite (clean reopen, and reopen from
//! a crash image at random points with tiny bounds), torn and corrupt tails,
//! checkpoints and segment removal, a data directory of redb alone, large
//! batches, and a full filesystem.

use super::segment::{parse_segment_name, scan, RecordAt};
use super::*;
use crate::storage::conformance::{self, check_load, check_readers, Harness, OpGen};
use crate::storage::tests::conformance_tests;
use crate::storage::{MemStorage, HISTORY_KEEP_MAX};
use std::path::Path;
use vcodr_core::rng::Rng;
use vcodr_core::MemStore;
use vcodr_testkit::Tmpfs;

/// Copies the data directory `from` of a store that is still open: what a
/// `kill -9` at this instant leaves on disk (the page cache is coherent:
/// every `pwrite` is in the copy, redb's header only as of its last durable commit).
pub(crate) fn crash_image(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join(WAL_DIR)).expect("create the image dir");
    std::fs::copy(from.join(REDB_FILE), to.join(REDB_FILE)).expect("copy the redb file");
    for item in std::fs::read_dir(from.join(WAL_DIR)).expect("list wal") {
        let item = item.expect("list wal");
        std::fs::copy(item.path(), to.join(WAL_DIR).join(item.file_name()))
            .expect("copy a segment");
    }
}

fn open(dir: &Path, bounds: WalBounds) -> WalStorage {
    WalStorage::open_with(dir, bounds).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()))
}

/// Tiny bounds: segment rolls, checkpoints and removals within a few batches.
fn tiny(rng: &mut Rng) -> WalBounds {
    WalBounds {
        segment_bytes: rng.range(1, 16) * 4096,
        segment_records: rng.range(1, 8),
        record_bytes_max: [600, 4_000, 1 << 20][rng.range(0, 2) as usize],
        checkpoint_batches: rng.range(1, 12),
        checkpoint_bytes: rng.range(1, 64) * 1024,
        apply_group_batches: rng.range(1, 6),
        apply_group_bytes: rng.range(1, 16) * 1024,
    }
}

/// Nothing reaches a checkpoint, nor the group bound: everything after open
/// lives in the log and the open transaction only, until a reader.
fn no_checkpoint(segment_records: u64) -> WalBounds {
    WalBounds {
        segment_bytes: 64 * 1024,
        segment_records,
        record_bytes_max: 1 << 20,
        checkpoint_batches: u64::MAX,
        checkpoint_bytes: u64::MAX,
        apply_group_batches: u64::MAX,
        apply_group_bytes: u64::MAX,
    }
}

#[derive(Debug)]
struct WalHarness {
    dir: tempfile::TempDir,
    made: u32,
}

impl WalHarness {
    fn new() -> Self {
        WalHarness {
            dir: tempfile::tempdir().expect("a temporary directory"),
            made: 0,
        }
    }
}

impl Harness for WalHarness {
    fn fresh(&mut self) -> Box<dyn Storage> {
        self.made += 1;
        Box::new(open(
            &self.dir.path().join(format!("store-{}", self.made)),
            WalBounds::default(),
        ))
    }

    fn reopen(&mut self, storage: Box<dyn Storage>) -> Box<dyn Storage> {
        let path = storage.info().expect("info").path.expect("a path");
        drop(storage);
        Box::new(open(
            path.parent().expect("a data dir"),
            WalBounds::default(),
        ))
    }
}

/// Reopens from a crash image of the running store (then drops the running
/// one), with tiny random bounds per store: replay, cut-free recovery,
/// checkpoints and segment removal at random points of the streams.
#[derive(Debug)]
struct WalCrashHarness {
    dir: tempfile::TempDir,
    made: u32,
    rng: Rng,
    bounds: WalBounds,
}

impl WalCrashHarness {
    fn new() -> Self {
        WalCrashHarness {
            dir: tempfile::tempdir().expect("a temporary directory"),
            made: 0,
            rng: Rng::new(0x0057_A11E_D0C5),
            bounds: WalBounds::default(),
        }
    }
}

impl Harness for WalCrashHarness {
    fn fresh(&mut self) -> Box<dyn Storage> {
        self.made += 1;
        self.bounds = tiny(&mut self.rng);
        Box::new(open(
            &self.dir.path().join(format!("store-{}", self.made)),
            self.bounds,
        ))
    }

    fn reopen(&mut self, storage: Box<dyn Storage>) -> Box<dyn Storage> {
        let path = storage.info().expect("info").path.expect("a path");
        self.made += 1;
        let image = self.dir.path().join(format!("crash-{}", self.made));
        crash_image(path.parent().expect("a data dir"), &image);
        drop(storage);
        Box::new(open(&image, self.bounds))
    }
}

conformance_tests!(wal_conformance, WalHarness::new());
conformance_tests!(wal_crash_conformance, WalCrashHarness::new());

// ---- torn and corrupt tails ------------------------------------------------

/// A stream of `n` batches from the conformance generator, with the
/// reference state after each (`states[b]` after batch `b`, `states[0]` empty).
type Batch = Vec<(PersistSeq, Vec<PersistOp>)>;

fn stream(seed: u64, n: usize) -> (Vec<Batch>, Vec<MemStore>) {
    let mut gen = OpGen::new(seed);
    let mut reference = MemStore::new(HISTORY_KEEP_MAX);
    let mut states = vec![reference.clone()];
    let mut batches = Vec::new();
    let mut seq = 0;
    for b in 0..n {
        let batch: Vec<_> = (0..1 + b % 3)
            .map(|_| {
                seq += 1;
                (seq, gen.request(&mut reference))
            })
            .collect();
        batches.push(batch);
        states.push(reference.clone());
    }
    (batches, states)
}

/// A crash image of a store that logged `batches` (none checkpointed).
fn logged_image(batches: &[Batch], bounds: WalBounds, root: &Path) -> PathBuf {
    let live = root.join("live");
    let mut s = open(&live, bounds);
    for b in batches {
        s.commit(b).expect("commit");
    }
    let image = root.join("image");
    crash_image(&live, &image);
    image
}

/// The segments of `dir`, oldest first, with their records.
fn segments(dir: &Path) -> Vec<(PathBuf, Vec<RecordAt>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir.join(WAL_DIR))
        .expect("list wal")
        .map(|i| i.expect("list").path())
        .filter(|p| parse_segment_name(&p.file_name().unwrap().to_string_lossy()).is_some())
        .collect();
    out.sort();
    out.into_iter()
        .map(|p| {
            let r = scan(&std::fs::read(&p).expect("read")).records;
            (p, r)
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    if to.exists() {
        std::fs::remove_dir_all(to).expect("clear the trial dir");
    }
    crash_image(from, to);
}

fn rewrite(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).expect("read");
    f(&mut bytes);
    std::fs::write(path, bytes).expect("write");
}

const N: usize = 8;

#[test]
fn the_last_record_cut_at_every_offset_reopens_with_the_batches_before_it() {
    let root = tempfile::tempdir().expect("temp dir");
    let (batches, states) = stream(11, N);
    let image = logged_image(&batches, no_checkpoint(64), root.path());
    let segs = segments(&image);
    let (seg, records) = segs.last().expect("a segment");
    let last = *records.last().expect("a record");
    assert_eq!(last.lsn, N as u64);
    let name = seg.file_name().unwrap().to_owned();
    let trial = root.path().join("trial");
    for cut in 0..last.len {
        copy_dir(&image, &trial);
        rewrite(&trial.join(WAL_DIR).join(&name), |b| {
            b[last.offset + cut..last.offset + last.len].fill(0);
        });
        let mut s = open(&trial, no_checkpoint(64));
        let ctx = format!("last record cut at byte {cut} of {}", last.len);
        check_load(&s, &states[N - 1], &ctx);
        if cut % 50 == 0 {
            check_readers(&s, &states[N - 1], &ctx);
            // The cut space takes the batch again, and it survives a restart.
            s.commit(&batches[N - 1]).expect("commit again");
            drop(s);
            let s = open(&trial, no_checkpoint(64));
            check_load(&s, &states[N], &ctx);
        }
    }
}

#[test]
fn a_flipped_byte_in_the_last_record_reopens_with_the_batches_before_it() {
    let root = tempfile::tempdir().expect("temp dir");
    let (batches, states) = stream(12, N);
    let image = logged_image(&batches, no_checkpoint(64), root.path());
    let segs = segments(&image);
    let (seg, records) = segs.last().expect("a segment");
    let last = *records.last().expect("a record");
    let name = seg.file_name().unwrap().to_owned();
    let trial = root.path().join("trial");
    for at in 0..last.len {
        copy_dir(&image, &trial);
        rewrite(&trial.join(WAL_DIR).join(&name), |b| {
            b[last.offset + at] ^= 0x40
        });
        let s = open(&trial, no_checkpoint(64));
        check_load(
            &s,
            &states[N - 1],
            &format!("byte {at} of the last record flipped"),
        );
    }
}

#[test]
fn a_flipped_byte_in_a_middle_record_refuses_to_open_naming_file_and_offset() {
    let root = tempfile::tempdir().expect("temp dir");
    let (batches, _) = stream(13, N);
    let image = logged_image(&batches, no_checkpoint(64), root.path());
    let segs = segments(&image);
    let (seg, records) = segs.last().expect("a segment");
    let name = seg.file_name().unwrap().to_owned();
    let trial = root.path().join("trial");
    for victim in [0, N / 2, N - 2] {
        let r = records[victim];
        for at in (0..r.len).step_by(7).chain([1, 5, 9, r.len - 1]) {
            copy_dir(&image, &trial);
            rewrite(&trial.join(WAL_DIR).join(&name), |b| {
                b[r.offset + at] ^= 0x01
            });
            match WalStorage::open_with(&trial, no_checkpoint(64)) {
                Err(e @ StorageError::WalCorrupt { .. }) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains(&*name.to_string_lossy()),
                        "names the file: {msg}"
                    );
                    assert!(
                        msg.contains(&format!("offset {}", r.offset)),
                        "names the offset: {msg}"
                    );
                }
                Err(e) => panic!("record {victim} byte {at}: refused, but not as corruption: {e}"),
                Ok(s) => panic!(
                    "record {victim} byte {at} flipped: opened, commit {:?}",
                    s.load().map(|r| r.commit)
                ),
            }
        }
    }
}

/// Damage at the end of one segment with intact records in the next is
/// corruption too; the same damage with nothing after it is a torn tail.
#[test]
fn damage_before_a_later_segment_refuses_and_a_torn_tail_across_segments_is_cut() {
    let root = tempfile::tempdir().expect("temp dir");
    // 3 records a segment: [1..=3] [4..=6] [7].
    let (batches, states) = stream(14, 7);
    let image = logged_image(&batches, no_checkpoint(3), root.path());
    let segs = segments(&image);
    assert!(segs.len() >= 3, "{} segments", segs.len());
    let trial = root.path().join("trial");
    let (first, records) = &segs[0];
    let r = *records.last().expect("a record");
    copy_dir(&image, &trial);
    rewrite(&trial.join(WAL_DIR).join(first.file_name().unwrap()), |b| {
        b[r.offset + r.len - 1] ^= 0x80
    });
    let e = WalStorage::open_with(&trial, no_checkpoint(3)).expect_err("must refuse");
    assert!(
        e.to_string()
            .contains(&*first.file_name().unwrap().to_string_lossy())
            && e.to_string().contains(&format!("offset {}", r.offset)),
        "{e}"
    );

    // The last segment's only record torn: the segment goes, the rest stays.
    let (lastseg, records) = segs.last().expect("a segment");
    assert_eq!(records.len(), 1);
    let r = records[0];
    copy_dir(&image, &trial);
    rewrite(
        &trial.join(WAL_DIR).join(lastseg.file_name().unwrap()),
        |b| b[r.offset + 3] ^= 0x80,
    );
    let cut_to = r.lsn as usize - 1;
    let s = open(&trial, no_checkpoint(3));
    check_load(&s, &states[cut_to], "torn first record of the last segment");
}

// ---- checkpoints, removal, existing data -----------------------------------

#[test]
fn a_checkpoint_then_more_batches_survive_a_crash_and_old_segments_are_removed() {
    let root = tempfile::tempdir().expect("temp dir");
    let (batches, states) = stream(15, 60);
    let bounds = WalBounds {
        segment_records: 3,
        checkpoint_batches: 7,
        ..no_checkpoint(3)
    };
    let live = root.path().join("live");
    let mut s = open(&live, bounds);
    let mut most_segments = 0;
    for (b, batch) in batches.iter().enumerate() {
        s.commit(batch).expect("commit");
        most_segments = most_segments.max(segments(&live).len());
        if b == 40 {
            s.checkpoint().expect("checkpoint");
            assert_eq!(segments(&live).len(), 1, "after an explicit checkpoint");
        }
    }
    // 7 batches between checkpoints, 3 records a segment: at most 4 segments.
    assert!(most_segments <= 4, "{most_segments} segments at once");
    assert_eq!(segments(&live).len(), s.segment_count());
    let image = root.path().join("image");
    crash_image(&live, &image);
    drop(s);
    let s = open(&image, bounds);
    check_load(&s, &states[60], "crash after checkpoints");
    check_readers(&s, &states[60], "crash after checkpoints");
    assert_eq!(s.next_lsn(), 61);
    drop(s);
    let s = open(&live, bounds);
    check_load(&s, &states[60], "clean reopen");
}

#[test]
fn a_data_dir_of_redb_alone_opens_with_an_empty_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (batches, states) = stream(16, 12);
    {
        let mut r = RedbStorage::open(dir.path().join(REDB_FILE)).expect("redb");
        for b in &batches[..6] {
            r.commit(b).expect("commit");
        }
    }
    let mut s = open(dir.path(), WalBounds::default());
    check_load(&s, &states[6], "redb alone");
    assert_eq!(s.segment_count(), 0);
    for b in &batches[6..] {
        s.commit(b).expect("commit");
    }
    let image = dir.path().join("image");
    crash_image(dir.path(), &image);
    drop(s);
    check_load(
        &open(&image, WalBounds::default()),
        &states[12],
        "after a crash",
    );
}

/// Batches too large for a record go to redb as checkpoints, between logged ones.
#[test]
fn large_batches_commit_to_redb_between_logged_ones() {
    let root = tempfile::tempdir().expect("temp dir");
    let (batches, states) = stream(17, 40);
    let bounds = WalBounds {
        record_bytes_max: 700,
        ..no_checkpoint(5)
    };
    let sizes: Vec<usize> = batches
        .iter()
        .map(|b| postcard::to_stdvec(b).expect("encode").len())
        .collect();
    assert!(
        sizes.iter().any(|&n| n > 700) && sizes.iter().any(|&n| n < 600),
        "{sizes:?}"
    );
    let image = logged_image(&batches, bounds, root.path());
    let s = open(&image, bounds);
    check_load(&s, &states[40], "mixed large and logged batches");
}

/// The reference store and the WAL store agree on a refused batch in the
/// middle of a logged stream, across a crash (nothing of it logged).
#[test]
fn a_refused_batch_is_not_logged() {
    let root = tempfile::tempdir().expect("temp dir");
    let live = root.path().join("live");
    let mut s = open(&live, no_checkpoint(64));
    let mut mem = MemStorage::new();
    let (batches, _) = stream(18, 6);
    for b in &batches {
        s.commit(b).expect("commit");
        mem.commit(b).expect("commit");
    }
    let lsn = s.next_lsn();
    let bad = vec![(10_000, vec![PersistOp::TruncateAfter(0)])];
    let commit = mem.load().expect("load").commit;
    if commit > 0 {
        assert!(matches!(
            s.commit(&bad),
            Err(StorageError::InvalidBatch { .. })
        ));
        assert_eq!(s.next_lsn(), lsn, "a refused batch takes no LSN");
    }
    let image = root.path().join("image");
    crash_image(&live, &image);
    assert_eq!(
        open(&image, no_checkpoint(64)).load().expect("load"),
        mem.load().expect("load")
    );
}

// ---- a full filesystem -----------------------------------------------------

fn big_batch(b: u64) -> Batch {
    use vcodr_core::{Entry, Op};
    let entry = Entry {
        epoch: 1,
        index: b,
        op: Op::Put {
            key: format!("full/{b:05}"),
            value: vec![b as u8; 24 * 1024],
        },
    };
    vec![
        (2 * b, vec![PersistOp::Append(vec![entry])]),
        (2 * b + 1, vec![PersistOp::Commit(b)]),
    ]
}

/// The disk fills up: a commit fails naming the file and ENOSPC, nothing
/// after it is taken, and once space is freed the store reopens with every
/// acknowledged batch and nothing of the failed one.
#[test]
fn a_full_filesystem_fails_a_commit_and_keeps_every_acknowledged_batch() {
    vcodr_testkit::require_root("mount a small tmpfs for a full disk").expect("root");
    // Checkpoints often (redb grows at a durable commit), or segments rolled
    // often and no checkpoint (the segment's preallocation fails).
    let redb_first = WalBounds {
        segment_bytes: 512 * 1024,
        checkpoint_batches: 16,
        ..WalBounds::default()
    };
    let segment_first = WalBounds {
        segment_bytes: 1024 * 1024,
        checkpoint_batches: 10_000,
        ..WalBounds::default()
    };
    let mut failed_in = Vec::new();
    for bounds in [redb_first, segment_first] {
        failed_in.push(fill_the_disk(bounds));
    }
    assert!(
        failed_in.iter().any(|m| m.contains("vcodr.redb")),
        "{failed_in:?}"
    );
    assert!(
        failed_in.iter().any(|m| m.contains(".seg")),
        "{failed_in:?}"
    );
}

/// Commits until the disk is full; returns the failure.
fn fill_the_disk(bounds: WalBounds) -> String {
    let root = tempfile::tempdir().expect("temp dir");
    let mnt = root.path().join("mnt");
    let disk = Tmpfs::mount(&mnt, "6m").expect("mount a tmpfs");
    let data = mnt.join("data");
    let mut s = open(&data, bounds);
    let mut mem = MemStorage::new();
    let filler = mnt.join("filler");
    let mut failed = None;
    for b in 1..=400u64 {
        if b == 30 {
            disk.fill(&filler).expect("fill the disk");
        }
        match s.commit(&big_batch(b)) {
            Ok(()) => mem.commit(&big_batch(b)).expect("reference"),
            Err(e) => {
                failed = Some((b, e));
                break;
            }
        }
    }
    let (b, e) = failed.expect("commits kept succeeding on a full disk");
    let msg = e.to_string();
    assert!(msg.contains("No space left on device"), "{msg}");
    assert!(
        msg.contains(&*data.to_string_lossy()),
        "names a file of the store: {msg}"
    );
    assert!(
        s.commit(&big_batch(b + 1)).is_err(),
        "no commit after a failed one"
    );
    eprintln!("batch {b} failed: {msg}");
    drop(s);
    std::fs::remove_file(&filler).expect("free space");
    let s = open(&data, bounds);
    assert_eq!(s.load().expect("load"), mem.load().expect("reference"));
    assert_eq!(s.list_docs().expect("docs"), mem.list_docs().expect("docs"));
    msg
}

/// A batch of commit markers only is written without an `fdatasync` — it
/// survives the process being killed — and becomes durable with the next
/// batch that needs one; a new segment syncs the one it leaves first, so no
/// record is durable after a later one.
#[test]
fn a_batch_of_commit_markers_waits_for_the_next_fsync_and_survives_a_kill() {
    let root = tempfile::tempdir().expect("temp dir");
    let dir = root.path().join("store");
    let mut s = open(&dir, no_checkpoint(2));
    let append = |index| {
        vec![PersistOp::Append(vec![vcodr_core::Entry {
            epoch: 1,
            index,
            op: vcodr_core::Op::Put {
                key: format!("k{index}"),
                value: b"v".to_vec(),
            },
        }])]
    };
    s.commit(&[(1, append(1))]).expect("append");
    let synced = s.log_syncs();
    s.commit(&[(2, vec![PersistOp::Commit(1)])])
        .expect("commit marker");
    assert_eq!(
        s.log_syncs(),
        synced,
        "a commit marker alone costs no fsync"
    );
    let image = root.path().join("killed");
    crash_image(&dir, &image);
    let r = open(&image, no_checkpoint(2)).load().expect("load");
    assert_eq!(r.commit, 1, "the marker survives a kill -9");
    // Two records fill the segment: the next one starts a new segment, and
    // the one it leaves is synced first (then the new record itself).
    s.commit(&[(3, append(2))]).expect("append");
    assert_eq!(s.log_syncs(), synced + 2);
    assert_eq!(s.segment_count(), 2);
    let r = s.load().expect("load");
    assert_eq!((r.commit, r.log.len()), (1, 2));
}
