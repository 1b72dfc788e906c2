//! The conformance suite every [`Storage`] implementation must pass.
//!
//! The reference is [`vcodr_core::MemStore`]: an [`OpGen`] produces valid
//! persist-request streams shaped like the core's (contiguous appends,
//! rewrites of an uncommitted suffix, truncation above the commit index,
//! commits, snapshots and the sample copy after them, divergence archives,
//! compaction, metadata and state history) from a seed, applies them to a
//! reference store and to the implementation in random group-commit batch
//! sizes, and compares
//! [`Storage::load`] with [`MemStore::restored`] and every reader with the
//! reference. Each check panics with the seed and batch number on a mismatch;
//! rerun one seed with `VCODR_CONFORMANCE_SEED=<seed>`.
//!
//! ```
//! use vcodr_server::storage::conformance::{self, Harness};
//! use vcodr_server::storage::{MemStorage, Storage};
//!
//! #[derive(Debug)]
//! struct Mem;
//! impl Harness for Mem {
//!     fn fresh(&mut self) -> Box<dyn Storage> { Box::new(MemStorage::new()) }
//!     // Memory does not survive a restart; the same value stands for "reopened".
//!     fn reopen(&mut self, storage: Box<dyn Storage>) -> Box<dyn Storage> { storage }
//! }
//! conformance::refused_batch_leaves_nothing(&mut Mem);
//! ```

use super::{
    ArchivedEntry, SampleSummary, Storage, StorageError, HISTORY_KEEP_MAX, HISTORY_RESTORE_MAX,
    READ_ROWS_MAX,
};
use std::collections::BTreeMap;
use vcodr_core::rng::Rng;
use vcodr_core::{
    ClientContact, ClientType, Doc, DrState, DurableMeta, Entry, EpochClaim, EpochProof, Index,
    MemStore, OnStandbyLoss, Op, PeerIdentity, PersistOp, PersistSeq, Restored, Role, Sample,
    SampleChunk, SampleRange, ServerInfo, Snapshot, Transition, ViewEntry,
};

/// Makes and restarts stores of the implementation under test.
pub trait Harness {
    /// A new, empty store.
    fn fresh(&mut self) -> Box<dyn Storage>;
    /// Closes `storage` and opens the same store again, as a restart does.
    fn reopen(&mut self, storage: Box<dyn Storage>) -> Box<dyn Storage>;
}

/// Seeds [`run_all`] uses: `VCODR_CONFORMANCE_SEED` if set, else a fixed list.
pub fn seeds() -> Vec<u64> {
    match std::env::var("VCODR_CONFORMANCE_SEED") {
        Ok(s) => match s.trim().parse() {
            Ok(seed) => vec![seed],
            Err(_) => panic!("VCODR_CONFORMANCE_SEED={s:?} is not a u64"),
        },
        Err(_) => vec![1, 2, 3, 0xC0FF_EE00_D15A_57E5],
    }
}

/// Runs every check of the suite.
pub fn run_all(h: &mut dyn Harness) {
    empty_store_loads_nothing(h);
    refused_batch_leaves_nothing(h);
    commit_over_a_hole_is_refused(h);
    unordered_batch_is_refused(h);
    contacts_round_trip(h);
    history_is_bounded(h);
    for seed in seeds() {
        generator_covers_every_op(seed, 400);
        random_streams_match_reference(h, seed, 400);
        reopen_keeps_everything(h, seed, 200);
    }
}

fn ok<T>(r: Result<T, StorageError>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// A store that never committed anything loads as a server that never ran.
pub fn empty_store_loads_nothing(h: &mut dyn Harness) {
    let s = h.fresh();
    assert_eq!(ok(s.load(), "load"), Restored::default());
    let reference = MemStore::new(HISTORY_KEEP_MAX);
    check_readers(s.as_ref(), &reference, "empty store");
    let s = h.reopen(s);
    assert_eq!(ok(s.load(), "load after reopen"), Restored::default());
    assert!(ok(s.load_contacts(), "load_contacts").is_empty());
}

/// A batch refused part-way (a `TruncateAfter` below the commit index) leaves
/// nothing of itself behind, before and after a restart, and the store keeps working.
pub fn refused_batch_leaves_nothing(h: &mut dyn Harness) {
    let mut s = h.fresh();
    let mut reference = MemStore::new(HISTORY_KEEP_MAX);
    let setup: Vec<(PersistSeq, Vec<PersistOp>)> = vec![
        (
            1,
            vec![PersistOp::Append(
                (1..=4).map(|i| put_entry(1, i)).collect(),
            )],
        ),
        (2, vec![PersistOp::Commit(3)]),
    ];
    commit_both(s.as_mut(), &mut reference, &setup, "setup");
    let before = ok(s.load(), "load");

    let bad: Vec<(PersistSeq, Vec<PersistOp>)> = vec![
        (
            3,
            vec![
                PersistOp::Meta(Box::new(meta_sample(7))),
                PersistOp::History(transition_sample(7)),
                PersistOp::Append((5..=6).map(|i| put_entry(1, i)).collect()),
                PersistOp::Commit(5),
            ],
        ),
        (4, vec![PersistOp::TruncateAfter(2)]),
    ];
    match s.commit(&bad) {
        Err(StorageError::InvalidBatch { seq: 4, .. }) => {}
        other => {
            panic!("TruncateAfter(2) below commit 5 must be refused as request 4, got {other:?}")
        }
    }
    assert_eq!(
        ok(s.load(), "load after refusal"),
        before,
        "refused batch left something behind"
    );
    check_readers(s.as_ref(), &reference, "after a refused batch");
    let mut s = h.reopen(s);
    assert_eq!(
        ok(s.load(), "load after reopen"),
        before,
        "refused batch visible after restart"
    );

    // The store still works.
    let next: Vec<(PersistSeq, Vec<PersistOp>)> = vec![(5, vec![PersistOp::Commit(4)])];
    commit_both(s.as_mut(), &mut reference, &next, "after refusal");
    assert_eq!(ok(s.load(), "load"), reference.restored());
}

/// `Commit` over a hole in the log is refused, not applied around the hole.
pub fn commit_over_a_hole_is_refused(h: &mut dyn Harness) {
    let mut s = h.fresh();
    let mut reference = MemStore::new(HISTORY_KEEP_MAX);
    let setup: Vec<(PersistSeq, Vec<PersistOp>)> = vec![(
        1,
        vec![
            PersistOp::Append(vec![put_entry(1, 1), put_entry(1, 2)]),
            PersistOp::Append(vec![put_entry(1, 4)]),
        ],
    )];
    commit_both(s.as_mut(), &mut reference, &setup, "setup");
    match s.commit(&[(2, vec![PersistOp::Commit(4)])]) {
        Err(StorageError::InvalidBatch { seq: 2, .. }) => {}
        other => panic!("Commit(4) over missing entry 3 must be refused, got {other:?}"),
    }
    assert_eq!(ok(s.load(), "load"), reference.restored());
}

/// Persist sequence numbers must increase within a batch.
pub fn unordered_batch_is_refused(h: &mut dyn Harness) {
    let mut s = h.fresh();
    let batch: Vec<(PersistSeq, Vec<PersistOp>)> = vec![
        (2, vec![PersistOp::Meta(Box::new(meta_sample(1)))]),
        (1, vec![PersistOp::History(transition_sample(1))]),
    ];
    match s.commit(&batch) {
        Err(StorageError::InvalidBatch { seq: 1, .. }) => {}
        other => panic!("a batch with seq 1 after seq 2 must be refused, got {other:?}"),
    }
    assert_eq!(ok(s.load(), "load"), Restored::default());
}

/// The contact table is replaced as a whole and survives a restart.
pub fn contacts_round_trip(h: &mut dyn Harness) {
    let mut s = h.fresh();
    let mut rows: Vec<ClientContact> = (0..5).rev().map(contact_sample).collect();
    ok(s.save_contacts(&rows), "save_contacts");
    rows.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    assert_eq!(ok(s.load_contacts(), "load_contacts"), rows);
    assert_eq!(ok(s.info(), "info").contacts, 5);
    let mut s = h.reopen(s);
    assert_eq!(ok(s.load_contacts(), "load_contacts after reopen"), rows);
    let fewer = vec![contact_sample(9)];
    ok(s.save_contacts(&fewer), "save_contacts");
    assert_eq!(ok(s.load_contacts(), "load_contacts"), fewer);
    // Contacts are not part of what a server restores from, nor of the log.
    assert_eq!(ok(s.load(), "load"), Restored::default());
}

/// History keeps the newest [`HISTORY_KEEP_MAX`]; `load` hands back the newest
/// [`HISTORY_RESTORE_MAX`], oldest first.
pub fn history_is_bounded(h: &mut dyn Harness) {
    let mut s = h.fresh();
    let total = HISTORY_KEEP_MAX as u64 + 37;
    let mut seq = 0;
    let mut n = 0;
    while n < total {
        let chunk: Vec<PersistOp> = (n..(n + 997).min(total))
            .map(|i| PersistOp::History(transition_sample(i)))
            .collect();
        n += chunk.len() as u64;
        seq += 1;
        ok(s.commit(&[(seq, chunk)]), "commit history");
    }
    let s = h.reopen(s);
    let loaded = ok(s.load(), "load").history;
    assert_eq!(loaded.len(), HISTORY_RESTORE_MAX);
    assert_eq!(
        loaded.first(),
        Some(&transition_sample(total - HISTORY_RESTORE_MAX as u64))
    );
    assert_eq!(loaded.last(), Some(&transition_sample(total - 1)));
    let all = ok(s.history(usize::MAX), "history");
    assert_eq!(all.len(), HISTORY_KEEP_MAX.min(READ_ROWS_MAX));
    assert_eq!(all.last(), Some(&transition_sample(total - 1)));
    assert_eq!(
        ok(s.history(3), "history(3)"),
        all[all.len() - 3..].to_vec()
    );
    assert_eq!(
        ok(s.info(), "info").history_entries,
        HISTORY_KEEP_MAX as u64
    );
}

/// Random op streams from `seed`, `requests` persist requests long, applied in
/// random batch sizes: after every batch `load` equals the reference, and
/// every few batches so does every reader.
pub fn random_streams_match_reference(h: &mut dyn Harness, seed: u64, requests: u64) {
    run_stream(h, seed, requests, None);
}

/// As [`random_streams_match_reference`], restarting the store every few batches.
pub fn reopen_keeps_everything(h: &mut dyn Harness, seed: u64, requests: u64) {
    run_stream(h, seed ^ 0x5EED_0FBE_EF00, requests, Some(3));
}

fn run_stream(h: &mut dyn Harness, seed: u64, requests: u64, reopen_every: Option<u64>) {
    let mut s = h.fresh();
    let mut gen = OpGen::new(seed);
    let mut reference = MemStore::new(HISTORY_KEEP_MAX);
    let mut seq: PersistSeq = 0;
    let mut batch_no = 0u64;
    while seq < requests {
        batch_no += 1;
        let size = match gen.rng.range(0, 9) {
            0..=2 => 1,
            3..=7 => gen.rng.range(2, 8),
            _ => gen.rng.range(9, 40),
        };
        let mut batch = Vec::new();
        for _ in 0..size {
            seq += 1;
            let ops = gen.request(&mut reference);
            batch.push((seq, ops));
        }
        let ctx = format!("seed {seed}, batch {batch_no} (requests up to {seq})");
        if let Err(e) = s.commit(&batch) {
            panic!("{ctx}: commit failed: {e}\nbatch: {batch:?}");
        }
        if reopen_every.is_some_and(|k| batch_no % k == 0) {
            s = h.reopen(s);
        }
        check_load(s.as_ref(), &reference, &ctx);
        if batch_no % 7 == 0 {
            check_readers(s.as_ref(), &reference, &ctx);
        }
    }
    let ctx = format!("seed {seed}, end of stream");
    check_readers(s.as_ref(), &reference, &ctx);
    let s = h.reopen(s);
    check_load(s.as_ref(), &reference, &ctx);
    check_readers(s.as_ref(), &reference, &ctx);
}

/// The generator reaches every op kind, and the corners of the reference that
/// matter (rewritten suffixes, duplicates, archived entries, compaction), in
/// a stream of `requests` from `seed`.
pub fn generator_covers_every_op(seed: u64, requests: u64) {
    let mut gen = OpGen::new(seed);
    let mut reference = MemStore::new(HISTORY_KEEP_MAX);
    let mut kinds = std::collections::BTreeSet::new();
    let mut compacted = false;
    let mut samples_stored = 0;
    let mut samples_dropped_by_snapshot = false;
    let mut copy_advanced = false;
    let mut copy_finished = false;
    let mut max_commit = 0;
    for _ in 0..requests {
        let samples_before = reference.samples.len();
        let copy_before = reference.samples_to_copy.clone();
        let first_before = reference.log.first().map(|e| e.index);
        for op in gen.request(&mut reference) {
            kinds.insert(match op {
                PersistOp::Meta(_) => "Meta",
                PersistOp::History(_) => "History",
                PersistOp::Append(_) => "Append",
                PersistOp::TruncateAfter(_) => "TruncateAfter",
                PersistOp::Commit(_) => "Commit",
                PersistOp::InstallSnapshot(_) => "InstallSnapshot",
                PersistOp::Archive { .. } => "Archive",
                PersistOp::Compact { .. } => "Compact",
                PersistOp::PruneSamples { .. } => "PruneSamples",
                PersistOp::SamplesToCopy(_) => "SamplesToCopy",
                PersistOp::StoreSamples(_) => "StoreSamples",
            });
        }
        compacted |=
            reference.log.first().map(|e| e.index) > first_before && first_before.is_some();
        samples_stored = samples_stored.max(reference.samples.len());
        samples_dropped_by_snapshot |= reference.samples.len() < samples_before;
        let copy_now = &reference.samples_to_copy;
        copy_advanced |= copy_now.len() == copy_before.len() && *copy_now != copy_before;
        copy_finished |= copy_now.len() < copy_before.len();
        max_commit = max_commit.max(reference.commit);
    }
    assert!(copy_advanced, "seed {seed}: no copy range moved on");
    assert!(copy_finished, "seed {seed}: no copy range was completed");
    assert_eq!(
        kinds.len(),
        11,
        "seed {seed}: op kinds generated: {kinds:?}"
    );
    assert!(compacted, "seed {seed}: no compaction dropped an entry");
    assert!(
        !reference.archive.is_empty(),
        "seed {seed}: nothing archived"
    );
    assert!(
        reference.duplicate_samples > 0,
        "seed {seed}: no duplicate sample"
    );
    assert!(samples_stored > 0, "seed {seed}: no sample stored");
    assert!(
        samples_dropped_by_snapshot,
        "seed {seed}: no snapshot dropped a sample"
    );
    // (A snapshot at a low index may bring it back down at the end.)
    assert!(
        max_commit > 20,
        "seed {seed}: commit index only up to {max_commit}"
    );
}

fn commit_both(
    s: &mut dyn Storage,
    reference: &mut MemStore,
    batch: &[(PersistSeq, Vec<PersistOp>)],
    what: &str,
) {
    ok(s.commit(batch), what);
    for (_, ops) in batch {
        reference.apply(ops);
    }
}

/// `load` of `s` equals `reference.restored()`, history compared on its tail.
pub fn check_load(s: &dyn Storage, reference: &MemStore, ctx: &str) {
    let got = ok(s.load(), ctx);
    let mut want = reference.restored();
    let excess = want.history.len().saturating_sub(HISTORY_RESTORE_MAX);
    want.history.drain(..excess);
    if got == want {
        return;
    }
    let field = if got.meta != want.meta {
        "meta"
    } else if got.applied.docs != want.applied.docs {
        "applied.docs"
    } else if got.applied.sample_seq != want.applied.sample_seq {
        "applied.sample_seq"
    } else if got.applied != want.applied {
        "applied (index, epoch or epoch_starts)"
    } else if got.commit != want.commit {
        "commit"
    } else if got.log != want.log {
        "log"
    } else if got.samples_to_copy != want.samples_to_copy {
        "samples_to_copy"
    } else {
        "history"
    };
    panic!("{ctx}: load() differs from the reference in {field}\n got: {got:?}\nwant: {want:?}");
}

/// Every reader of `s` agrees with `reference`.
pub fn check_readers(s: &dyn Storage, reference: &MemStore, ctx: &str) {
    let docs = &reference.applied.docs;
    for key in KEYS.iter().copied().chain(["missing/key"]) {
        assert_eq!(
            ok(s.get_doc(key), ctx),
            docs.get(key).cloned(),
            "{ctx}: get_doc({key})"
        );
    }
    let listed: Vec<(String, Index)> = docs.iter().map(|(k, d)| (k.clone(), d.version)).collect();
    assert_eq!(ok(s.list_docs(), ctx), listed, "{ctx}: list_docs");

    let mut summary: Vec<SampleSummary> = Vec::new();
    for (client, seq) in reference.samples.keys() {
        match summary.last_mut() {
            Some(row) if &row.client == client => {
                row.count += 1;
                row.max_seq = row.max_seq.max(*seq);
            }
            _ => summary.push(SampleSummary {
                client: client.clone(),
                count: 1,
                max_seq: *seq,
            }),
        }
    }
    assert_eq!(
        ok(s.sample_summary(), ctx),
        summary,
        "{ctx}: sample_summary"
    );
    for client in CLIENTS.iter().copied().chain(["missing-client"]) {
        let all: Vec<(u64, Vec<u8>)> = reference
            .samples
            .iter()
            .filter(|((c, _), _)| c == client)
            .map(|((_, q), p)| (*q, p.clone()))
            .collect();
        assert_eq!(
            ok(s.samples(client, 0, usize::MAX), ctx),
            all,
            "{ctx}: samples({client})"
        );
        let after = all.get(1).map_or(3, |(q, _)| *q);
        let page: Vec<(u64, Vec<u8>)> = all
            .iter()
            .filter(|(q, _)| *q > after)
            .take(2)
            .cloned()
            .collect();
        assert_eq!(
            ok(s.samples(client, after, 2), ctx),
            page,
            "{ctx}: samples({client}, after {after}, limit 2)"
        );
        assert!(ok(s.samples(client, u64::MAX, 10), ctx).is_empty());
    }
    // Reads for a standby's copy: ranges in order, bounded by bytes and
    // samples, at the same places as the reference.
    let mut ranges: Vec<SampleRange> = CLIENTS
        .iter()
        .chain(&["missing-client"])
        .map(|c| SampleRange {
            client: c.to_string(),
            after_seq: 1,
            up_to_seq: u64::MAX,
        })
        .collect();
    ranges.push(SampleRange {
        client: CLIENTS[0].into(),
        after_seq: 0,
        up_to_seq: 3,
    });
    ranges.push(SampleRange {
        client: CLIENTS[1].into(),
        after_seq: 5,
        up_to_seq: 5,
    });
    for (max_bytes, max_samples) in [(usize::MAX, usize::MAX), (64, 100), (1, 1), (200, 3)] {
        assert_eq!(
            ok(s.read_samples(&ranges, max_bytes, max_samples), ctx),
            reference.read_samples(&ranges, max_bytes, max_samples),
            "{ctx}: read_samples(max_bytes {max_bytes}, max_samples {max_samples})"
        );
    }

    let archive: Vec<ArchivedEntry> = reference
        .archive
        .iter()
        .map(|a| ArchivedEntry {
            index: a.entry.index,
            epoch: a.entry.epoch,
            op: a.entry.op.clone(),
            reason: a.reason.clone(),
        })
        .collect();
    assert_eq!(ok(s.archive(0, usize::MAX), ctx), archive, "{ctx}: archive");
    let page: Vec<ArchivedEntry> = archive.iter().skip(1).take(2).cloned().collect();
    assert_eq!(ok(s.archive(1, 2), ctx), page, "{ctx}: archive(1, 2)");
    assert_eq!(
        ok(s.archive_len(), ctx),
        archive.len() as u64,
        "{ctx}: archive_len"
    );
    // Pages of any size, from any position, cover the archive exactly once.
    let mut paged = Vec::new();
    loop {
        let rows = ok(s.archive(paged.len() as u64, 3), ctx);
        if rows.is_empty() {
            break;
        }
        paged.extend(rows);
    }
    assert_eq!(paged, archive, "{ctx}: archive read in pages of 3");
    assert!(
        ok(s.archive(archive.len() as u64, 10), ctx).is_empty(),
        "{ctx}: archive past its end"
    );

    let h = &reference.history;
    let tail: Vec<Transition> = h.iter().skip(h.len().saturating_sub(5)).cloned().collect();
    assert_eq!(ok(s.history(5), ctx), tail, "{ctx}: history(5)");

    let info = ok(s.info(), ctx);
    let log = &reference.log;
    let want = (
        log.len() as u64,
        log.first().map(|e| e.index),
        log.last().map(|e| e.index),
        reference.commit,
        reference.applied.index,
        docs.len() as u64,
        reference.samples.len() as u64,
        reference.duplicate_samples,
        reference.archive.len() as u64,
        h.len() as u64,
    );
    let got = (
        info.log_entries,
        info.first_log_index,
        info.last_log_index,
        info.commit_index,
        info.applied_index,
        info.docs,
        info.samples,
        info.duplicate_samples,
        info.archive_entries,
        info.history_entries,
    );
    assert_eq!(
        got, want,
        "{ctx}: info (log_entries, first, last, commit, applied, docs, samples, duplicates, archive, history)"
    );
}

mod gen;
pub use gen::{contact_sample, meta_sample, transition_sample, OpGen};
use gen::{put_entry, CLIENTS, KEYS};
