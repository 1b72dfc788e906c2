//! [`WalStorage`] tests: the conformance suite (clean reopen, and reopen from
//! a crash image at random points with tiny bounds), torn and corrupt tails,
//! checkpoints and segment removal, a data directory of redb alone, large
//! batches, the open redb transaction (what commits it, refused batches
//! after uncommitted ones, a drop with it open), and a full filesystem.

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
        apply_wake_batches: rng.range(1, 6),
        apply_wake_bytes: rng.range(1, 16) * 1024,
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
        apply_wake_batches: APPLY_WAKE_BATCHES,
        apply_wake_bytes: APPLY_WAKE_BYTES,
    }
}

/// Reopens by dropping the store as it is — its redb transaction open when
/// the stream left it so (no reader runs first) — and opening it again.
#[derive(Debug)]
struct WalHarness {
    dir: tempfile::TempDir,
    made: u32,
    /// The data directory of the store in use.
    current: PathBuf,
}

impl WalHarness {
    fn new() -> Self {
        WalHarness {
            dir: tempfile::tempdir().expect("a temporary directory"),
            made: 0,
            current: PathBuf::new(),
        }
    }
}

impl Harness for WalHarness {
    fn fresh(&mut self) -> Box<dyn Storage> {
        self.made += 1;
        self.current = self.dir.path().join(format!("store-{}", self.made));
        Box::new(open(&self.current, WalBounds::default()))
    }

    fn reopen(&mut self, storage: Box<dyn Storage>) -> Box<dyn Storage> {
        drop(storage);
        Box::new(open(&self.current, WalBounds::default()))
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
    /// The data directory of the store in use.
    current: PathBuf,
}

impl WalCrashHarness {
    fn new() -> Self {
        WalCrashHarness {
            dir: tempfile::tempdir().expect("a temporary directory"),
            made: 0,
            rng: Rng::new(0x0057_A11E_D0C5),
            bounds: WalBounds::default(),
            current: PathBuf::new(),
        }
    }
}

impl Harness for WalCrashHarness {
    fn fresh(&mut self) -> Box<dyn Storage> {
        self.made += 1;
        self.bounds = tiny(&mut self.rng);
        self.current = self.dir.path().join(format!("store-{}", self.made));
        Box::new(open(&self.current, self.bounds))
    }

    /// The image is taken as the store is, no reader first: its open
    /// transaction, if any, is not in it.
    fn reopen(&mut self, storage: Box<dyn Storage>) -> Box<dyn Storage> {
        self.made += 1;
        let image = self.dir.path().join(format!("crash-{}", self.made));
        crash_image(&self.current, &image);
        drop(storage);
        self.current = image;
        Box::new(open(&self.current, self.bounds))
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
    // The apply thread woken at each batch: checkpoints come at once.
    let bounds = WalBounds {
        segment_records: 3,
        checkpoint_batches: 7,
        apply_wake_batches: 1,
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
        // The apply thread checkpoints behind the log: let it finish this
        // batch (and a checkpoint it reached) before the next commit trims,
        // or a loaded machine lets segments pile up beyond the bound.
        applied_reaches(&s, b as u64 + 1, &format!("batch {b}"));
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

// ---- the open redb transaction ---------------------------------------------

/// A batch refused part-way: its first request rewrites the metadata, the
/// history and the whole log (an entry at index 1), its second truncates
/// below the commit index. Its requests are `seq` and `seq + 1`.
fn refused_part_way(seq: PersistSeq) -> Batch {
    use vcodr_core::{Entry, Op};
    let entry = Entry {
        epoch: 9,
        index: 1,
        op: Op::Put {
            key: "refused/batch".into(),
            value: b"never".to_vec(),
        },
    };
    vec![
        (
            seq,
            vec![
                PersistOp::Meta(Box::new(conformance::meta_sample(999))),
                PersistOp::History(conformance::transition_sample(999)),
                PersistOp::Append(vec![entry]),
            ],
        ),
        (seq + 1, vec![PersistOp::TruncateAfter(0)]),
    ]
}

fn assert_refused(s: &mut WalStorage, seq: PersistSeq, ctx: &str) {
    match s.commit(&refused_part_way(seq)) {
        Err(StorageError::InvalidBatch { seq: at, .. }) if at == seq + 1 => {}
        other => panic!(
            "{ctx}: the batch must be refused at request {}, got {other:?}",
            seq + 1
        ),
    }
}

/// Batches apply to one open redb transaction, none committed to redb
/// until a reader, which sees all of them (and commits once).
#[test]
fn batches_in_one_open_transaction_are_all_seen_by_the_next_reader() {
    let root = tempfile::tempdir().expect("temp dir");
    let (batches, states) = stream(31, 10);
    let mut s = open(root.path(), no_checkpoint(64));
    for (b, batch) in batches.iter().enumerate() {
        s.commit(batch).expect("commit");
        assert_eq!(s.uncommitted_batches(), b + 1);
    }
    assert_eq!(s.redb_commits(), 0, "no batch committed to redb yet");
    check_load(&*s.redb, &states[0], "redb itself, before a reader");
    check_load(&s, &states[10], "the first reader");
    assert_eq!((s.redb_commits(), s.uncommitted_batches()), (1, 0));
    check_readers(&s, &states[10], "every reader");
    assert_eq!(
        s.redb_commits(),
        1,
        "readers with nothing open commit nothing"
    );
}

/// Every read method, `save_contacts`, `checkpoint` and `idle` commit the
/// open transaction before anything else; each holds one batch here.
#[test]
fn every_reader_commits_the_open_transaction_first() {
    type Reader = (&'static str, u64, fn(&mut WalStorage));
    let readers: [Reader; 14] = [
        ("load", 1, |s| drop(s.load().expect("load"))),
        ("get_doc", 1, |s| drop(s.get_doc("x").expect("get_doc"))),
        ("list_docs", 1, |s| drop(s.list_docs().expect("list_docs"))),
        ("samples", 1, |s| {
            drop(s.samples("c", 0, 9).expect("samples"))
        }),
        ("read_samples", 1, |s| {
            drop(s.read_samples(&[], 9, 9).expect("read_samples"))
        }),
        ("sample_summary", 1, |s| {
            drop(s.sample_summary().expect("sample_summary"))
        }),
        ("archive", 1, |s| drop(s.archive(0, 9).expect("archive"))),
        ("archive_len", 1, |s| {
            s.archive_len().expect("archive_len");
        }),
        ("history", 1, |s| drop(s.history(9).expect("history"))),
        ("info", 1, |s| drop(s.info().expect("info"))),
        ("load_contacts", 1, |s| {
            drop(s.load_contacts().expect("load_contacts"))
        }),
        // The open transaction's commit, then the contacts' own.
        ("save_contacts", 2, |s| {
            s.save_contacts(&[]).expect("save_contacts")
        }),
        ("checkpoint", 1, |s| s.checkpoint().expect("checkpoint")),
        ("idle", 1, |s| s.idle().expect("idle")),
    ];
    let root = tempfile::tempdir().expect("temp dir");
    let (batches, states) = stream(32, readers.len());
    let mut s = open(root.path(), no_checkpoint(64));
    let mut commits = 0;
    for (b, (name, cost, read)) in readers.iter().enumerate() {
        s.commit(&batches[b]).expect("commit");
        assert_eq!(s.uncommitted_batches(), 1, "{name}");
        read(&mut s);
        commits += cost;
        assert_eq!(
            s.uncommitted_batches(),
            0,
            "{name} left the transaction open"
        );
        assert_eq!(s.redb_commits(), commits, "{name}");
        check_load(&*s.redb, &states[b + 1], name);
    }
    check_readers(&s, &states[readers.len()], "after all of them");
}

/// A refused batch after uncommitted ones: the acknowledged ones stay
/// (readers, a `kill -9`, a reopen see them), nothing of it does, it takes
/// no LSN and no redb commit, and the store keeps taking batches into the
/// same kind of open transaction.
#[test]
fn a_refused_batch_after_uncommitted_ones_keeps_them_and_nothing_of_itself() {
    let root = tempfile::tempdir().expect("temp dir");
    let live = root.path().join("live");
    let bounds = no_checkpoint(64);
    let (batches, states) = stream(33, 12);
    assert!(states[6].commit > 0, "the refusal needs a commit index");
    let mut s = open(&live, bounds);
    for b in &batches[..6] {
        s.commit(b).expect("commit");
    }
    let lsn = s.next_lsn();
    assert_refused(&mut s, 1_000_000, "after 6 uncommitted batches");
    assert_eq!(s.next_lsn(), lsn, "a refused batch takes no LSN");
    assert_eq!(s.uncommitted_batches(), 6, "still uncommitted");
    assert_eq!(s.redb_commits(), 0, "the refusal committed nothing");
    let killed = root.path().join("killed");
    crash_image(&live, &killed);

    for b in &batches[6..9] {
        s.commit(b).expect("commit after a refusal");
    }
    assert_refused(&mut s, 2_000_000, "after 9 uncommitted batches");
    assert_eq!(s.uncommitted_batches(), 9);
    check_load(&s, &states[9], "after two refusals");
    check_readers(&s, &states[9], "after two refusals");
    assert_eq!(s.redb_commits(), 1);
    // Refused with nothing uncommitted, then with one.
    assert_refused(&mut s, 3_000_000, "with nothing uncommitted");
    s.commit(&batches[9]).expect("commit");
    assert_refused(&mut s, 4_000_000, "after 1 uncommitted batch");
    for b in &batches[10..] {
        s.commit(b).expect("commit");
    }
    assert_eq!(s.uncommitted_batches(), 3);
    drop(s);
    check_load(&open(&live, bounds), &states[12], "reopened after a drop");
    let s = open(&killed, bounds);
    check_load(&s, &states[6], "killed after the first refusal");
    check_readers(&s, &states[6], "killed after the first refusal");
}

/// Refused batches at random points of random streams, with tiny bounds
/// (group commits, checkpoints, rolls, large batches), random readers and
/// a `kill -9` at the end: exactly the acknowledged batches remain.
#[test]
fn refused_batches_at_random_points_keep_exactly_the_acknowledged_ones() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut rng = Rng::new(0x2EF0_5ED0);
    for round in 0..6 {
        let bounds = tiny(&mut rng);
        let ctx = format!("round {round}, {bounds:?}");
        let live = root.path().join(format!("live-{round}"));
        let (batches, states) = stream(40 + round, 40);
        let mut s = open(&live, bounds);
        let mut refused = 0;
        for (b, batch) in batches.iter().enumerate() {
            s.commit(batch).expect("commit");
            if states[b + 1].commit > 0 && rng.range(0, 2) == 0 {
                let held = s.uncommitted_batches();
                assert_refused(&mut s, 1_000_000 * (b as u64 + 1), &ctx);
                assert_eq!(s.uncommitted_batches(), held, "{ctx}: batch {b}");
                refused += 1;
            }
            if rng.range(0, 7) == 0 {
                check_load(&s, &states[b + 1], &format!("{ctx}, batch {b}"));
            }
        }
        assert!(refused > 5, "{ctx}: {refused} refusals");
        let image = root.path().join(format!("killed-{round}"));
        crash_image(&live, &image);
        check_readers(&s, &states[40], &ctx);
        drop(s);
        let s = open(&image, bounds);
        check_load(&s, &states[40], &format!("{ctx}, after a kill -9"));
        check_readers(&s, &states[40], &format!("{ctx}, after a kill -9"));
    }
}

/// A store dropped with its transaction open loses it, without a panic; the
/// log has every batch, replayed at the next open.
#[test]
fn a_store_dropped_with_its_transaction_open_replays_the_log_at_reopen() {
    let root = tempfile::tempdir().expect("temp dir");
    let (batches, states) = stream(34, 14);
    let mut s = open(root.path(), no_checkpoint(64));
    for b in &batches[..10] {
        s.commit(b).expect("commit");
    }
    assert_eq!((s.uncommitted_batches(), s.redb_commits()), (10, 0));
    drop(s);
    {
        let redb = RedbStorage::open(root.path().join(REDB_FILE)).expect("redb alone");
        check_load(&redb, &states[0], "the transaction went with the store");
    }
    let mut s = open(root.path(), no_checkpoint(64));
    assert_eq!(s.next_lsn(), 11);
    check_load(&s, &states[10], "replayed at reopen");
    // Committed (not durably) by a reader, then more open: dropped again.
    for b in &batches[10..] {
        s.commit(b).expect("commit");
    }
    drop(s);
    let s = open(root.path(), no_checkpoint(64));
    check_load(&s, &states[14], "reopened again");
    check_readers(&s, &states[14], "reopened again");
}

/// The group bounds commit the open transaction: exactly one redb commit
/// per bound reached, the checkpoint counting as one, and redb holds
/// exactly the batches up to the last of them.
#[test]
fn the_group_bounds_commit_the_open_transaction() {
    let root = tempfile::tempdir().expect("temp dir");
    let (batches, states) = stream(35, 25);

    // 4 batches a group, a checkpoint every 10: commits after batches 4, 8,
    // 10 (checkpoint), 14, 18, 20 (checkpoint), 24.
    let bounds = WalBounds {
        apply_group_batches: 4,
        checkpoint_batches: 10,
        ..no_checkpoint(3)
    };
    let mut s = open(&root.path().join("batches"), bounds);
    let mut committed = 0;
    for (b, batch) in batches.iter().enumerate() {
        let n = b + 1;
        s.commit(batch).expect("commit");
        if [4, 8, 10, 14, 18, 20, 24].contains(&n) {
            committed = n;
        }
        let ctx = format!("group of 4 batches, after batch {n}");
        assert_eq!(s.uncommitted_batches(), n - committed, "{ctx}");
        check_load(&*s.redb, &states[committed], &ctx);
    }
    assert_eq!(s.redb_commits(), 7);
    assert!(s.segment_count() <= 4, "{} segments", s.segment_count());
    check_load(&s, &states[25], "a reader commits the last one");
    assert_eq!(s.redb_commits(), 8);

    // By bytes: the batch that brings the group's encoded batches to the
    // bound commits it.
    let sizes: Vec<u64> = batches
        .iter()
        .map(|b| postcard::to_stdvec(b).expect("encode").len() as u64)
        .collect();
    let bytes = sizes[0] + sizes[1] + sizes[2];
    let bounds = WalBounds {
        apply_group_bytes: bytes,
        ..no_checkpoint(64)
    };
    let mut s = open(&root.path().join("bytes"), bounds);
    let (mut held, mut committed, mut commits) = (0, 0, 0);
    for (b, batch) in batches.iter().enumerate() {
        s.commit(batch).expect("commit");
        held += sizes[b];
        if held >= bytes {
            (held, committed, commits) = (0, b + 1, commits + 1);
        }
        s.uncommitted_batches();
        check_load(
            &*s.redb,
            &states[committed],
            &format!("group of {bytes} bytes, after batch {}", b + 1),
        );
    }
    assert!(commits >= 5, "{commits} group commits");
    assert_eq!(s.redb_commits(), commits);
}

/// `idle` commits the open transaction, and only when one is open.
#[test]
fn idle_commits_the_open_transaction() {
    let root = tempfile::tempdir().expect("temp dir");
    let (batches, states) = stream(36, 5);
    let mut s = open(&root.path().join("wal"), no_checkpoint(64));
    for b in &batches[..3] {
        s.commit(b).expect("commit");
    }
    Storage::idle(&mut s).expect("idle");
    assert_eq!((s.uncommitted_batches(), s.redb_commits()), (0, 1));
    check_load(&*s.redb, &states[3], "after idle");
    s.idle().expect("idle again");
    assert_eq!(s.redb_commits(), 1, "nothing open, nothing committed");
    for b in &batches[3..] {
        s.commit(b).expect("commit");
    }
    s.idle().expect("idle");
    assert_eq!(s.redb_commits(), 2);
    check_load(&*s.redb, &states[5], "after the second idle");
    // The default: nothing to do.
    let mut redb = RedbStorage::open(root.path().join("alone.redb")).expect("redb");
    redb.idle().expect("idle");
    MemStorage::new().idle().expect("idle");
}

/// Polls `applied` until it reaches `lsn`, for at most 30 s, without
/// waking the apply thread (as [`WalStorage::uncommitted_batches`] would).
fn applied_reaches(s: &WalStorage, lsn: u64, ctx: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while s.applier.applied() < lsn {
        assert!(
            std::time::Instant::now() < deadline,
            "{ctx}: applied {} after 30 s, expected {lsn}",
            s.applier.applied()
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The apply thread sleeps while fewer batches than the wake bound wait for
/// it and nothing else needs it; the bound, a reader and idle wake it.
#[test]
fn the_apply_thread_sleeps_until_the_wake_bound_a_reader_or_idle() {
    let root = tempfile::tempdir().expect("temp dir");
    let (batches, states) = stream(37, 12);
    let bounds = WalBounds {
        apply_wake_batches: 5,
        ..no_checkpoint(64)
    };
    let mut s = open(&root.path().join("wal"), bounds);
    let base = s.applier.applied();
    s.applier.wait_quiet();
    for b in &batches[..4] {
        s.commit(b).expect("commit");
    }
    assert_eq!(
        s.applier.applied(),
        base,
        "4 batches, wake bound 5: none applied yet"
    );
    check_load(&s, &states[4], "a reader wakes it");
    assert_eq!(s.applier.applied(), base + 4);

    s.applier.wait_quiet();
    for b in &batches[4..8] {
        s.commit(b).expect("commit");
    }
    assert_eq!(s.applier.applied(), base + 4, "4 more: still asleep");
    s.commit(&batches[8]).expect("commit");
    applied_reaches(&s, base + 9, "the fifth waiting batch wakes it");

    s.applier.wait_quiet();
    for b in &batches[9..11] {
        s.commit(b).expect("commit");
    }
    assert_eq!(s.applier.applied(), base + 9);
    s.idle().expect("idle");
    applied_reaches(&s, base + 11, "idle wakes it");
    check_load(&*s.redb, &states[11], "idle committed them");

    // By bytes: one batch at the byte bound wakes it.
    let bounds = WalBounds {
        apply_wake_bytes: 1,
        ..no_checkpoint(64)
    };
    let mut s = open(&root.path().join("bytes"), bounds);
    let base = s.applier.applied();
    s.applier.wait_quiet();
    s.commit(&batches[0]).expect("commit");
    applied_reaches(&s, base + 1, "a batch at the byte bound wakes it");
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
        checkpoint_bytes: 1 << 30,
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
    let disk = Tmpfs::mount(&mnt, "10m").expect("mount a tmpfs");
    // Freed with the filler: room for the replay at reopen (the log holds a
    // segment more than what was free when the disk filled: the spare).
    let ballast = mnt.join("ballast");
    std::fs::write(&ballast, vec![1u8; 4 << 20]).expect("ballast");
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
            Ok(()) => {
                mem.commit(&big_batch(b)).expect("reference");
                // redb's failures surface at the next commit: let the apply
                // thread meet the full disk before the log does.
                s.uncommitted_batches();
            }
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
    // A reader sees every acknowledged batch, or refuses: never a state
    // without one of them.
    match s.load() {
        Ok(r) => assert_eq!(r, mem.load().expect("reference"), "a reader after {msg}"),
        Err(e) => assert!(
            e.to_string().contains("No space left on device"),
            "a refused reader names the cause: {e}"
        ),
    }
    assert!(
        s.commit(&big_batch(b + 1)).is_err(),
        "no commit after a failed one"
    );
    eprintln!("batch {b} failed: {msg}");
    drop(s);
    std::fs::remove_file(&filler).expect("free space");
    std::fs::remove_file(&ballast).expect("free space");
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

/// The spare segment files in the log directory of store `dir`.
fn spares(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join(WAL_DIR))
        .expect("log dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(segment::CREATING_SUFFIX))
        .collect();
    names.sort();
    names
}

/// The segment a roll needs is made ahead (zero-filled and synced in the
/// background, then renamed into place by the roll); one spare waits at a
/// time, a drop removes it, and one a crash leaves is removed at open.
#[test]
fn the_next_segment_is_made_ahead_and_no_spare_outlives_the_store() {
    let root = tempfile::tempdir().expect("temp dir");
    let dir = root.path().join("store");
    let (batches, states) = stream(38, 12);
    let mut s = open(&dir, no_checkpoint(3));
    let wait_for_one_spare = |ctx: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let found = spares(&dir);
            if found.len() == 1 {
                return found;
            }
            assert!(found.len() < 2, "{ctx}: one spare at a time: {found:?}");
            assert!(
                std::time::Instant::now() < deadline,
                "{ctx}: no spare made: {found:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    let first = wait_for_one_spare("after open");
    for b in &batches {
        s.commit(b).expect("commit");
    }
    assert_eq!(s.segment_count(), 4, "3 records a segment");
    let later = wait_for_one_spare("after 3 rolls");
    assert_ne!(first, later, "each roll took the spare waiting");
    let image = root.path().join("killed");
    crash_image(&dir, &image);
    drop(s);
    assert_eq!(
        spares(&dir),
        Vec::<String>::new(),
        "a drop removes the spare"
    );
    check_load(&open(&dir, no_checkpoint(3)), &states[12], "reopened");
    let s = open(&image, no_checkpoint(3));
    check_load(&s, &states[12], "after a kill -9 with a spare on disk");
    let left = spares(&image);
    assert!(
        !left.contains(&later[0]),
        "the crash's spare {later:?} was removed at open: {left:?}"
    );
}
