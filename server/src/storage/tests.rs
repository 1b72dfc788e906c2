//! Storage tests: the conformance suite on memory and redb (the WAL store's
//! runs in `wal::tests`), what is refused at open, a `kill -9` crash test on
//! redb and on the WAL store, a throughput measurement of both, and one of
//! the CPU of the WAL store's commit.

use super::conformance::{self, Harness};
use super::*;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vcodr_core::rng::Rng;
use vcodr_core::{DurableMeta, Entry, Op, Sample};

#[derive(Debug)]
struct MemHarness;

impl Harness for MemHarness {
    fn fresh(&mut self) -> Box<dyn Storage> {
        Box::new(MemStorage::new())
    }
    // Memory does not survive a restart; the same value stands for "reopened".
    fn reopen(&mut self, storage: Box<dyn Storage>) -> Box<dyn Storage> {
        storage
    }
}

#[derive(Debug)]
struct RedbHarness {
    dir: tempfile::TempDir,
    made: u32,
}

impl RedbHarness {
    fn new() -> Self {
        RedbHarness {
            dir: tempfile::tempdir().expect("a temporary directory"),
            made: 0,
        }
    }
}

impl Harness for RedbHarness {
    fn fresh(&mut self) -> Box<dyn Storage> {
        self.made += 1;
        let path = self.dir.path().join(format!("store-{}.redb", self.made));
        Box::new(RedbStorage::open(&path).unwrap_or_else(|e| panic!("open {path:?}: {e}")))
    }

    fn reopen(&mut self, storage: Box<dyn Storage>) -> Box<dyn Storage> {
        let path = storage
            .info()
            .expect("info")
            .path
            .expect("a redb store has a path");
        drop(storage);
        Box::new(RedbStorage::open(&path).unwrap_or_else(|e| panic!("reopen {path:?}: {e}")))
    }
}

macro_rules! conformance_tests {
    ($module:ident, $harness:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn empty_store_loads_nothing() {
                conformance::empty_store_loads_nothing(&mut $harness);
            }
            #[test]
            fn refused_batch_leaves_nothing() {
                conformance::refused_batch_leaves_nothing(&mut $harness);
            }
            #[test]
            fn commit_over_a_hole_is_refused() {
                conformance::commit_over_a_hole_is_refused(&mut $harness);
            }
            #[test]
            fn unordered_batch_is_refused() {
                conformance::unordered_batch_is_refused(&mut $harness);
            }
            #[test]
            fn contacts_round_trip() {
                conformance::contacts_round_trip(&mut $harness);
            }
            #[test]
            fn history_is_bounded() {
                conformance::history_is_bounded(&mut $harness);
            }
            #[test]
            fn random_streams_match_reference() {
                for seed in conformance::seeds() {
                    eprintln!("conformance seed {seed} (rerun with VCODR_CONFORMANCE_SEED={seed})");
                    conformance::random_streams_match_reference(&mut $harness, seed, 400);
                }
            }
            #[test]
            fn reopen_keeps_everything() {
                for seed in conformance::seeds() {
                    eprintln!("conformance seed {seed} (rerun with VCODR_CONFORMANCE_SEED={seed})");
                    conformance::reopen_keeps_everything(&mut $harness, seed, 200);
                }
            }
        }
    };
}

// The WAL store runs the suite too (`wal::tests`).
pub(crate) use conformance_tests;

conformance_tests!(mem_conformance, MemHarness);
conformance_tests!(redb_conformance, RedbHarness::new());

#[test]
fn generator_covers_every_op() {
    for seed in conformance::seeds() {
        conformance::generator_covers_every_op(seed, 400);
    }
}

/// The one-call entry point runs too (on memory: it repeats what the tests above split up).
#[test]
fn run_all_passes_on_memory() {
    conformance::run_all(&mut MemHarness);
}

// ---- opening -----------------------------------------------------------------

#[test]
fn a_file_that_is_not_redb_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("vcodr.redb");
    let content = b"# some operator's notes, not a database\n".repeat(200);
    std::fs::write(&path, &content).expect("write");
    match RedbStorage::open(&path) {
        Err(e @ StorageError::Unreadable { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("vcodr.redb"), "names the file: {msg}");
            assert!(msg.contains("not a redb database"), "{msg}");
        }
        other => panic!("a text file must be refused as unreadable, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&path).expect("read"),
        content,
        "file untouched"
    );
}

#[test]
fn a_damaged_file_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("vcodr.redb");
    {
        let mut store = RedbStorage::open(&path).expect("create");
        for b in 1..=40 {
            store.commit(&crash_batch(b)).expect("commit");
        }
    }
    let mut bytes = std::fs::read(&path).expect("read");
    assert!(bytes.len() > 8192, "file is {} bytes", bytes.len());
    // Scribble over everything after the header pages: every tree page is hit.
    for (i, byte) in bytes.iter_mut().enumerate().skip(4096) {
        *byte ^= 0x5A ^ (i as u8);
    }
    std::fs::write(&path, &bytes).expect("write");
    match RedbStorage::open(&path) {
        Err(e @ (StorageError::Unreadable { .. } | StorageError::Open { .. })) => {
            assert!(e.to_string().contains("vcodr.redb"), "{e}");
        }
        Err(other) => panic!("a damaged file must be refused at open, got {other}"),
        Ok(store) => panic!(
            "a damaged file must be refused at open; it opened and loads as {:?}",
            store.load().map(|r| r.commit)
        ),
    }
}

#[test]
fn a_redb_file_without_our_marker_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("other.redb");
    {
        let db = ::redb::Database::create(&path).expect("create");
        let txn = db.begin_write().expect("begin");
        {
            let def: ::redb::TableDefinition<&str, u64> = ::redb::TableDefinition::new("users");
            let mut t = txn.open_table(def).expect("table");
            t.insert("alice", 1).expect("insert");
        }
        txn.commit().expect("commit");
    }
    match RedbStorage::open(&path) {
        Err(e @ StorageError::Foreign { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("other.redb") && msg.contains("users"), "{msg}");
        }
        other => panic!("a foreign redb file must be refused, got {other:?}"),
    }
}

#[test]
fn another_schema_version_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("vcodr.redb");
    drop(RedbStorage::open(&path).expect("create"));
    {
        let db = ::redb::Database::create(&path).expect("open raw");
        let txn = db.begin_write().expect("begin");
        {
            let def: ::redb::TableDefinition<&str, u64> =
                ::redb::TableDefinition::new("vcodr_schema");
            let mut t = txn.open_table(def).expect("table");
            t.insert("version", 99).expect("insert");
        }
        txn.commit().expect("commit");
    }
    match RedbStorage::open(&path) {
        Err(StorageError::SchemaVersion {
            found: 99,
            supported: SCHEMA_VERSION,
            ..
        }) => {}
        other => panic!("schema version 99 must be refused, got {other:?}"),
    }
}

/// A file of schema 4 (DR metadata without the incarnation fields) opens
/// as the current schema with that metadata, counting runs from 0 and
/// following no run of its active (SPEC §4).
#[test]
fn a_schema_4_file_is_migrated_with_its_dr_metadata() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("vcodr.redb");
    let meta = DurableMeta {
        incarnation: 0,
        active_incarnation: None,
        ..conformance::meta_sample(3)
    };
    {
        let mut store = RedbStorage::open(&path).expect("create");
        store
            .commit(&[(1, vec![PersistOp::Meta(Box::new(meta.clone()))])])
            .expect("commit");
    }
    {
        // What a schema-4 build wrote: the metadata in its layout, version 4.
        let m = meta.clone();
        let v4 = legacy::DurableMetaV4 {
            role: m.role,
            dr_state: m.dr_state,
            epoch: m.epoch,
            pair_id: m.pair_id,
            peer: m.peer,
            peer_identity: m.peer_identity,
            epoch_proof: m.epoch_proof,
            pairing_token: m.pairing_token,
            policy: m.policy,
            synced: m.synced,
            fenced_by: m.fenced_by,
            redirect_edge: m.redirect_edge,
            unprotected_writes: m.unprotected_writes,
            last_dr_protected_ms: m.last_dr_protected_ms,
            role_timestamp_ms: m.role_timestamp_ms,
            state_timestamp_ms: m.state_timestamp_ms,
            zombie_to_notify: m.zombie_to_notify,
        };
        let db = ::redb::Database::create(&path).expect("open raw");
        let txn = db.begin_write().expect("begin");
        {
            let state: ::redb::TableDefinition<&str, &[u8]> = ::redb::TableDefinition::new("state");
            let mut t = txn.open_table(state).expect("table");
            let bytes = postcard::to_stdvec(&v4).expect("encode");
            t.insert("meta", bytes.as_slice()).expect("insert");
            let def: ::redb::TableDefinition<&str, u64> =
                ::redb::TableDefinition::new("vcodr_schema");
            let mut t = txn.open_table(def).expect("table");
            t.insert("version", 4).expect("insert");
        }
        txn.commit().expect("commit");
    }
    let store = RedbStorage::open(&path).expect("a schema-4 file is migrated");
    assert_eq!(store.info().expect("info").schema_version, SCHEMA_VERSION);
    assert_eq!(store.load().expect("load").meta, Some(meta));
}

/// A file of schema 3 (no `sample_copy` table) opens as the current schema with
/// everything it held, and takes a standby's sample copy from then on.
#[test]
fn a_schema_3_file_is_migrated_and_keeps_everything() {
    use vcodr_core::{SampleChunk, SampleRange};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("vcodr.redb");
    let samples = Op::Samples {
        client: "edge-1".into(),
        samples: vec![Sample {
            seq: 1,
            payload: b"s1".to_vec(),
        }],
    };
    let before = {
        let mut store = RedbStorage::open(&path).expect("create");
        store
            .commit(&[
                (
                    1,
                    vec![PersistOp::Append(vec![Entry {
                        epoch: 1,
                        index: 1,
                        op: samples,
                    }])],
                ),
                (2, vec![PersistOp::Commit(1)]),
            ])
            .expect("commit");
        store.load().expect("load")
    };
    {
        // What a schema-3 build wrote: no `sample_copy` table, version 3.
        let db = ::redb::Database::create(&path).expect("open raw");
        let txn = db.begin_write().expect("begin");
        let copy: ::redb::TableDefinition<(&str, u64), u64> =
            ::redb::TableDefinition::new("sample_copy");
        assert!(txn.delete_table(copy).expect("delete"));
        {
            let def: ::redb::TableDefinition<&str, u64> =
                ::redb::TableDefinition::new("vcodr_schema");
            let mut t = txn.open_table(def).expect("table");
            t.insert("version", 3).expect("insert");
        }
        txn.commit().expect("commit");
    }
    let mut store = RedbStorage::open(&path).expect("a schema-3 file is migrated");
    assert_eq!(store.info().expect("info").schema_version, SCHEMA_VERSION);
    assert_eq!(store.load().expect("load"), before);
    let range = SampleRange {
        client: "edge-1".into(),
        after_seq: 1,
        up_to_seq: 3,
    };
    store
        .commit(&[(
            3,
            vec![
                PersistOp::SamplesToCopy(vec![range.clone()]),
                PersistOp::StoreSamples(SampleChunk {
                    client: "edge-1".into(),
                    after_seq: 1,
                    through_seq: 2,
                    samples: vec![Sample {
                        seq: 2,
                        payload: b"s2".to_vec(),
                    }],
                }),
            ],
        )])
        .expect("commit");
    drop(store);
    let store = RedbStorage::open(&path).expect("reopen");
    assert_eq!(
        store.load().expect("load").samples_to_copy,
        vec![SampleRange {
            after_seq: 2,
            ..range
        }]
    );
    assert_eq!(
        store.samples("edge-1", 0, 10).expect("samples"),
        vec![(1, b"s1".to_vec()), (2, b"s2".to_vec())]
    );
}

#[test]
fn an_empty_file_is_adopted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("vcodr.redb");
    std::fs::write(&path, b"").expect("write");
    let store = RedbStorage::open(&path).expect("an empty file becomes a new store");
    assert_eq!(store.load().expect("load"), vcodr_core::Restored::default());
    assert_eq!(store.info().expect("info").schema_version, SCHEMA_VERSION);
}

#[test]
fn a_second_open_of_the_same_file_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("vcodr.redb");
    let _first = RedbStorage::open(&path).expect("first open");
    match RedbStorage::open(&path) {
        Err(e @ StorageError::Open { .. }) => {
            assert!(e.to_string().contains("no other vcodr process"), "{e}");
        }
        other => panic!("a second open must be refused, got {other:?}"),
    }
}

#[test]
fn a_missing_directory_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("no/such/dir/vcodr.redb");
    let e = RedbStorage::open(&path).expect_err("must fail");
    assert!(e.to_string().contains("no/such/dir/vcodr.redb"), "{e}");
}

#[test]
fn a_corrupt_record_names_table_and_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("vcodr.redb");
    drop(RedbStorage::open(&path).expect("create"));
    {
        let db = ::redb::Database::create(&path).expect("open raw");
        let txn = db.begin_write().expect("begin");
        {
            let def: ::redb::TableDefinition<&str, &[u8]> = ::redb::TableDefinition::new("state");
            let mut t = txn.open_table(def).expect("table");
            t.insert("meta", [0xFFu8; 3].as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }
    let store = RedbStorage::open(&path).expect("the file itself is sound");
    match store.load() {
        Err(e @ StorageError::Decode { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("`state`") && msg.contains("meta"), "{msg}");
        }
        other => panic!("a corrupt meta record must be reported, got {other:?}"),
    }
}

// ---- kill -9 -------------------------------------------------------------------

const CRASH_CHILD_DIR: &str = "VCODR_STORAGE_CRASH_CHILD_DIR";
/// `redb` or `wal`: which store the child commits to.
const CRASH_CHILD_KIND: &str = "VCODR_STORAGE_CRASH_CHILD_KIND";
const CRASH_CHILD_TEST: &str = "storage::tests::crash_child";
const CRASH_FILE: &str = "vcodr.redb";
/// The WAL store of the crash test: small segments, frequent checkpoints
/// and a redb commit every 10 batches (not a divisor of 25), the apply
/// thread woken every 4, so that kills land in rolls, checkpoints, removals
/// and group commits too, and mostly with the redb transaction open or
/// batches not yet applied.
const CRASH_WAL_BOUNDS: WalBounds = WalBounds {
    segment_bytes: 64 * 1024,
    segment_records: 40,
    record_bytes_max: wal::RECORD_BYTES_MAX,
    checkpoint_batches: 25,
    checkpoint_bytes: wal::CHECKPOINT_BYTES,
    apply_group_batches: 10,
    apply_group_bytes: wal::APPLY_GROUP_BYTES,
    apply_wake_batches: 4,
    apply_wake_bytes: wal::APPLY_WAKE_BYTES,
};

/// Opens the crash test's store of `kind` in `dir`.
fn open_crash_store(kind: &str, dir: &Path) -> Result<Box<dyn Storage>, StorageError> {
    Ok(match kind {
        "redb" => Box::new(RedbStorage::open(dir.join(CRASH_FILE))?),
        "wal" => Box::new(WalStorage::open_with(dir, CRASH_WAL_BOUNDS)?),
        other => panic!("{CRASH_CHILD_KIND}={other:?}: neither redb nor wal"),
    })
}
/// Batches one child commits at most, and for how long it runs at most.
const CHILD_BATCHES_MAX: u64 = 50_000;
const CHILD_RUN_MAX: Duration = Duration::from_secs(60);
/// How long the parent waits for the child's reports before failing.
const PARENT_WAIT_MAX: Duration = Duration::from_secs(90);
const CRASH_ROUNDS: u32 = 4;

/// Batch `b` commits log entry `b`: three persist requests, as the core makes them.
fn crash_batch(b: u64) -> Vec<(PersistSeq, Vec<PersistOp>)> {
    let op = if b % 4 == 0 {
        Op::Samples {
            client: "edge-crash".into(),
            samples: vec![Sample {
                seq: b,
                payload: b.to_le_bytes().to_vec(),
            }],
        }
    } else {
        Op::Put {
            key: format!("crash/{b:06}"),
            value: format!("{{\"batch\":{b}}}").into_bytes(),
        }
    };
    let entry = Entry {
        epoch: 1,
        index: b,
        op,
    };
    let mut last = vec![PersistOp::Meta(Box::new(conformance::meta_sample(b)))];
    if b % 50 == 0 {
        last.push(PersistOp::Compact { below: b - 10 });
    }
    vec![
        (
            3 * b,
            vec![
                PersistOp::Append(vec![entry]),
                PersistOp::History(conformance::transition_sample(b)),
            ],
        ),
        (3 * b + 1, vec![PersistOp::Commit(b)]),
        (3 * b + 2, last),
    ]
}

/// Every batch up to `upto` is in `store`, and the store holds whole batches
/// only: all three persist requests of each batch up to its commit index, none
/// of any later one.
fn assert_batches_present(store: &dyn Storage, upto: u64) {
    let r = store.load().expect("load after kill -9");
    let last = r.commit;
    assert!(
        last >= upto,
        "commit {last} < reported {upto}: a committed batch was lost"
    );
    let meta = r.meta.expect("meta present");
    assert_eq!(
        meta.unprotected_writes, last,
        "meta of batch {last} torn from its commit"
    );
    let history = store.history(1).expect("history");
    assert_eq!(
        history.last().map(|t| t.epoch),
        Some(last),
        "history of batch {last} torn"
    );
    assert_eq!(
        r.log.last().map(|e| e.index),
        Some(last),
        "log of batch {last} torn"
    );
    let samples: Vec<u64> = store
        .samples("edge-crash", 0, usize::MAX)
        .expect("samples")
        .into_iter()
        .map(|(seq, _)| seq)
        .collect();
    assert_eq!(
        samples.len() as u64,
        last / 4,
        "samples of batches up to {last}"
    );
    for b in 1..=last {
        if b % 4 == 0 {
            assert!(
                samples.binary_search(&b).is_ok(),
                "sample of batch {b} lost"
            );
        } else {
            let doc = r.applied.docs.get(&format!("crash/{b:06}"));
            assert_eq!(
                doc.map(|d| d.version),
                Some(b),
                "document of batch {b} lost"
            );
        }
    }
    assert_eq!(
        r.applied.docs.len() as u64,
        last - last / 4,
        "documents of later batches"
    );
}

/// The child side of [`kill_9_keeps_every_committed_batch`]: commits batches in
/// a loop, reporting each on stdout once `commit` returned. Does nothing
/// unless started by the parent.
#[test]
#[ignore = "child process of kill_9_keeps_every_committed_batch; runs only when started by it"]
fn crash_child() {
    let Ok(dir) = std::env::var(CRASH_CHILD_DIR) else {
        return;
    };
    let kind = std::env::var(CRASH_CHILD_KIND).unwrap_or_else(|_| "redb".into());
    let mut store = open_crash_store(&kind, Path::new(&dir)).expect("child open");
    let first = store.load().expect("child load").commit + 1;
    let started = Instant::now();
    let mut out = std::io::stdout().lock();
    for b in first..first + CHILD_BATCHES_MAX {
        if started.elapsed() > CHILD_RUN_MAX {
            break;
        }
        store.commit(&crash_batch(b)).expect("child commit");
        writeln!(out, "committed {b}").expect("stdout");
        out.flush().expect("stdout");
    }
}

#[test]
fn kill_9_keeps_every_committed_batch() {
    kill_9_keeps_every_committed_batch_of("redb");
}

#[test]
fn wal_kill_9_keeps_every_committed_batch() {
    kill_9_keeps_every_committed_batch_of("wal");
}

fn kill_9_keeps_every_committed_batch_of(kind: &str) {
    let seed = std::env::var("VCODR_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00C0_FFEE_u64);
    eprintln!("crash test seed {seed} (rerun with VCODR_CRASH_SEED={seed})");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("test binary path");
    let mut reported_max = 0u64;
    for round in 1..=CRASH_ROUNDS {
        let wait_for = rng.range(2, 60);
        let mut child = Command::new(&exe)
            .args([
                CRASH_CHILD_TEST,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD_DIR, dir.path())
            .env(CRASH_CHILD_KIND, kind)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().expect("stdout was piped");
        let (tx, rx) = mpsc::channel::<u64>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(b) = line.strip_prefix("committed ") {
                    let b = b.trim().parse().expect("a batch number");
                    if tx.send(b).is_err() {
                        break;
                    }
                }
            }
        });
        let deadline = Instant::now() + PARENT_WAIT_MAX;
        let mut seen = 0;
        while seen < wait_for {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(b) => {
                    assert!(b > reported_max, "batches are reported in order");
                    reported_max = b;
                    seen += 1;
                }
                Err(e) => {
                    // Best effort: the child may already be gone.
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("round {round}: child reported {seen} of {wait_for} commits: {e}");
                }
            }
        }
        // SIGKILL, most likely in the middle of the next commit. An error here
        // means the child already exited, which the checks below also cover.
        let _ = child.kill();
        let status = child.wait().expect("wait for the child");
        reader.join().expect("reader thread");
        // Lines written before the kill were reported committed too.
        for b in rx.try_iter() {
            reported_max = reported_max.max(b);
        }
        eprintln!("{kind} round {round}: killed after batch {reported_max} ({status})");
        let store =
            open_crash_store(kind, dir.path()).expect("the store opens cleanly after kill -9");
        assert_batches_present(store.as_ref(), reported_max);
    }
    assert!(reported_max >= u64::from(CRASH_ROUNDS) * 2);
}

// ---- throughput ----------------------------------------------------------------

/// Group-commit latency and throughput on this disk, `RedbStorage` (one
/// `Durability::Immediate` transaction per commit) against `WalStorage` (one
/// `fdatasync` of its log per commit, checkpoints included). Run with
/// `cargo test --release -p vcodr-server --lib storage::tests::group_commit_throughput -- --ignored --nocapture`
/// (README "Figures"; `log-store` in the benches measures the bare log
/// alternatives, this the production stores). The two take turns, one
/// commit each, so a noisy neighbour on the disk slows both alike.
#[test]
#[ignore = "measurement, not a check; run by hand"]
fn group_commit_throughput() {
    const RUN: Duration = Duration::from_secs(10);
    const COMMITS_MAX: usize = 200_000;
    let value = vec![b'x'; 200];
    println!(
        "| store | writes per commit | commits/s | writes/s | p50 ms | p99 ms | max ms | commits |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for per_batch in [1u64, 64] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut stores: Vec<(&str, Box<dyn Storage>, Vec<Duration>)> = vec![
            (
                "redb (RedbStorage)",
                Box::new(RedbStorage::open(dir.path().join("bench.redb")).expect("open")),
                Vec::new(),
            ),
            (
                "wal (WalStorage)",
                Box::new(WalStorage::open(dir.path().join("wal-store")).expect("open")),
                Vec::new(),
            ),
        ];
        let mut index = 0u64;
        let started = Instant::now();
        while started.elapsed() < RUN * 2 && stores[0].2.len() < COMMITS_MAX {
            let batch = bench_batch(&mut index, per_batch, &value);
            for (_, store, took) in &mut stores {
                let t0 = Instant::now();
                store.commit(&batch).expect("commit");
                took.push(t0.elapsed());
            }
        }
        for (name, store, mut took) in stores {
            let busy: Duration = took.iter().sum();
            let commits = took.len();
            took.sort_unstable();
            let at = |q: f64| took[((commits as f64 * q) as usize).min(commits - 1)];
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "| {name} | {per_batch} | {:.0} | {:.0} | {:.3} | {:.3} | {:.2} | {commits} ({} bytes on disk) |",
                commits as f64 / busy.as_secs_f64(),
                (commits as u64 * per_batch) as f64 / busy.as_secs_f64(),
                ms(at(0.50)),
                ms(at(0.99)),
                ms(took[commits - 1]),
                store.info().expect("info").file_bytes,
            );
        }
    }
}

/// The CPU a `WalStorage::commit` costs its thread, and its latency, with
/// the open redb transaction committed after every batch
/// (`apply_group_batches: 1`: the step order before it stayed open) against
/// [`wal::APPLY_GROUP_BATCHES`]. The CPU of every thread of the process
/// from `/proc/self/task/*/schedstat` (nanoseconds on CPU: an `fdatasync`'s
/// wait is not in it, the writeback it does is; the other tests of the
/// binary are filtered out). The two take turns in phases of about a second, each
/// after a `sync` (not measured): one commit each in turn would have each
/// store's `fdatasync` write back the other's dirty redb pages (one
/// filesystem journal). Run with
/// `cargo test --release -p vcodr-server --lib storage::tests::wal_group_commit_cpu -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, not a check; run by hand"]
fn wal_group_commit_cpu() {
    const RUN: Duration = Duration::from_secs(10);
    const PHASE: Duration = Duration::from_secs(1);
    // Every thread of the process: the commit's, and the stores' apply and
    // segment threads, which do part of each commit's work.
    fn process_cpu() -> Duration {
        let mut ns = 0u64;
        for task in std::fs::read_dir("/proc/self/task").expect("tasks") {
            let path = task.expect("task").path().join("schedstat");
            // A thread that ended meanwhile has no file: it counts nothing.
            let Ok(stat) = std::fs::read_to_string(path) else {
                continue;
            };
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .expect("nanoseconds on CPU");
        }
        Duration::from_nanos(ns)
    }
    struct Run {
        group: u64,
        store: WalStorage,
        index: u64,
        took: Vec<Duration>,
        cpu: Duration,
    }
    let value = vec![b'x'; 200];
    println!("| open transaction committed every | writes per commit | CPU µs per commit | p50 ms | p99 ms | commits | redb commits |");
    println!("|---|---|---|---|---|---|---|");
    for per_batch in [1u64, 64] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut runs: Vec<Run> = [1, wal::APPLY_GROUP_BATCHES]
            .into_iter()
            .map(|group| {
                let bounds = WalBounds {
                    apply_group_batches: group,
                    ..WalBounds::default()
                };
                let store = WalStorage::open_with(dir.path().join(format!("g{group}")), bounds)
                    .expect("open");
                Run {
                    group,
                    store,
                    index: 0,
                    took: Vec::new(),
                    cpu: Duration::ZERO,
                }
            })
            .collect();
        let started = Instant::now();
        while started.elapsed() < RUN * 2 {
            for r in &mut runs {
                let status = Command::new("sync").status().expect("run sync");
                assert!(status.success(), "sync: {status}");
                let phase = Instant::now();
                while phase.elapsed() < PHASE {
                    let batch = bench_batch(&mut r.index, per_batch, &value);
                    let (t0, c0) = (Instant::now(), process_cpu());
                    r.store.commit(&batch).expect("commit");
                    let c1 = process_cpu();
                    r.took.push(t0.elapsed());
                    r.cpu += c1 - c0;
                }
            }
        }
        for mut r in runs {
            let commits = r.took.len();
            r.took.sort_unstable();
            let at = |q: f64| r.took[((commits as f64 * q) as usize).min(commits - 1)];
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "| {} batches | {per_batch} | {:.1} | {:.3} | {:.3} | {commits} | {} |",
                r.group,
                r.cpu.as_secs_f64() * 1e6 / commits as f64,
                ms(at(0.50)),
                ms(at(0.99)),
                r.store.redb_commits(),
            );
        }
    }
}

/// `per_batch` writes of the throughput measurements: each a log entry (a
/// document of `value`) and the commit of the write before it.
fn bench_batch(index: &mut u64, per_batch: u64, value: &[u8]) -> Vec<(PersistSeq, Vec<PersistOp>)> {
    (0..per_batch)
        .map(|_| {
            *index += 1;
            let entry = Entry {
                epoch: 1,
                index: *index,
                op: Op::Put {
                    key: format!("bench/{}", *index % 1_000),
                    value: value.to_vec(),
                },
            };
            (
                *index,
                vec![
                    PersistOp::Append(vec![entry]),
                    PersistOp::Commit(*index - 1),
                ],
            )
        })
        .collect()
}
