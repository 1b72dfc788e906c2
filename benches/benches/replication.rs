//! Replicated, acknowledged configuration writes per second through an
//! active/standby pair of cores in memory (no network, no disk).
//!
//! A write counts when its `Reply::Written` appears, which the active gives
//! only once the entry is durable locally and on the standby. The pair is set
//! up through the real pairing commands, then kept across samples, so the
//! measured state is the steady one: a full in-memory log window.
//!
//! Variants: `memstore` applies every `Persist` to a `MemStore` per server (the
//! reference store), `confirm_only` confirms without storing (the core alone);
//! `group` confirms each server's persists once per round (group commit),
//! `each_persist` confirms every persist at once.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Instant;
use vcodr_benches::pair::{Commit, Durability, Pair};

/// Distinct keys written, round-robin: keeps the configuration bounded.
const KEYS: u64 = 10_000;
/// A small JSON document, as the admin API would store.
const VALUE: &[u8] =
    br#"{"site":"branch-0042","vlan":10,"segments":["corp","guest"],"qos":"gold"}"#;

fn replication(c: &mut Criterion) {
    let mut g = c.benchmark_group("replication");
    g.throughput(Throughput::Elements(1));
    let cases = [
        (Durability::MemStore, Commit::Group, 1),
        (Durability::MemStore, Commit::Group, 64),
        (Durability::MemStore, Commit::EachPersist, 64),
        (Durability::ConfirmOnly, Commit::Group, 1),
        (Durability::ConfirmOnly, Commit::Group, 64),
    ];
    for (durability, commit, window) in cases {
        let name = format!(
            "{}/{}/outstanding_{window}",
            match durability {
                Durability::MemStore => "memstore",
                Durability::ConfirmOnly => "confirm_only",
            },
            match commit {
                Commit::Group => "group",
                Commit::EachPersist => "each_persist",
            },
        );
        let mut pair = Pair::paired_with(durability, commit).expect("pair reaches STANDBY_RUNNING");
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                let acked = pair
                    .write_many(iters, window, KEYS, VALUE)
                    .expect("every write is acknowledged");
                let elapsed = start.elapsed();
                assert_eq!(acked, iters);
                elapsed
            })
        });
        assert!(
            pair.running(),
            "the pair left STANDBY_RUNNING while writing"
        );
    }
    g.finish();
}

criterion_group!(benches, replication);
criterion_main!(benches);
