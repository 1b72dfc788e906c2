//! Heartbeats handled per second by one `Server` (SPEC §10: ≥ 5 M/s on one core).
//!
//! Each iteration feeds one `Input::Edge { msg: EdgeMsg::Heartbeat(..) }` from
//! `CLIENTS` distinct clients round-robin and drains the outputs, checking
//! that exactly one is a `ReplyEdge`. Building the input (the owned client id
//! and heartbeat a transport would hand over after decoding) is outside the
//! timed part: it belongs to the transport, not the core. Dropping the reply is
//! inside it.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vcodr_benches::pair::{Durability, Pair, Side};
use vcodr_benches::{heartbeat_input, standalone_server};
use vcodr_core::testing::drain_with;
use vcodr_core::*;

/// Distinct clients heartbeating, round-robin.
const CLIENTS: usize = 10_000;
/// Inputs built (untimed) before each timed chunk.
const CHUNK: usize = 1_000;

/// One prepared heartbeat input per client, cloned (untimed) before use.
fn templates(epoch: Epoch, pair_id: Option<PairId>) -> Vec<Input> {
    relaying(epoch, pair_id, None)
}

/// As [`templates`], each heartbeat relaying `proof` (as edges do after a failover).
fn relaying(epoch: Epoch, pair_id: Option<PairId>, proof: Option<Arc<EpochProof>>) -> Vec<Input> {
    (0..CLIENTS)
        .map(|i| {
            let mut input = heartbeat_input(i, 1, epoch, pair_id);
            if let Input::Edge {
                msg: EdgeMsg::Heartbeat(hb),
                ..
            } = &mut input
            {
                hb.proof = proof.clone();
            }
            input
        })
        .collect()
}

/// Times `iters` heartbeats into `server`, cloning inputs in untimed chunks.
fn run(server: &mut Server, templates: &[Input], iters: u64, next: &mut usize) -> Duration {
    let mut elapsed = Duration::ZERO;
    let mut left = iters;
    let mut inputs = Vec::with_capacity(CHUNK);
    let mut now_ms = 1_000;
    while left > 0 {
        let n = left.min(CHUNK as u64);
        inputs.extend((0..n).map(|_| {
            let input = templates[*next % CLIENTS].clone();
            *next += 1;
            input
        }));
        now_ms += 1;
        let now = Now::at(now_ms);
        let start = Instant::now();
        for input in inputs.drain(..) {
            server.handle_input(now, input);
            let mut replies = 0;
            drain_with(server, |out| {
                if matches!(out, Output::ReplyEdge { .. }) {
                    replies += 1;
                }
                drop(black_box(out));
            });
            assert_eq!(replies, 1, "one ReplyEdge per heartbeat");
        }
        elapsed += start.elapsed();
        left -= n;
    }
    elapsed
}

/// Warms the contact table so that the measured part sees every client known.
fn warm(server: &mut Server, templates: &[Input]) {
    let mut next = 0;
    run(server, templates, CLIENTS as u64, &mut next);
    assert_eq!(server.contacts().count(), CLIENTS);
}

fn heartbeats(c: &mut Criterion) {
    let mut g = c.benchmark_group("heartbeats");
    g.throughput(Throughput::Elements(1));

    let unpaired = templates(1, None);
    let mut standalone = standalone_server();
    warm(&mut standalone, &unpaired);
    let mut next = 0;
    g.bench_function("standalone", |b| {
        b.iter_custom(|iters| run(&mut standalone, &unpaired, iters, &mut next))
    });

    let pair = Pair::paired(Durability::ConfirmOnly).expect("pair reaches STANDBY_RUNNING");
    let paired = templates(pair.active.server.epoch(), pair.active.server.pair_id());
    for (name, mut server) in [
        ("active", pair.active.server.clone()),
        ("standby", pair.standby.server.clone()),
    ] {
        warm(&mut server, &paired);
        let mut next = 0;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| run(&mut server, &paired, iters, &mut next))
        });
    }

    // After a planned switchover: the promoted server holds a proof and puts
    // it in every reply; edges relay it to both servers. The old active, now
    // a zombie, recognises the proof it was fenced by without verifying it
    // again; the promoted server skips it (not above its own epoch).
    let mut pair = Pair::paired(Durability::ConfirmOnly).expect("pair reaches STANDBY_RUNNING");
    pair.submit_to(Side::Standby, Command::Promote { force: true });
    pair.run_until_idle().expect("switchover settles");
    while pair.active.server.role() != Role::Zombie
        || pair.standby.server.role() != Role::Standalone
    {
        pair.fire_next_timer().expect("timers");
        pair.run_until_idle().expect("switchover settles");
    }
    let proof = pair
        .standby
        .server
        .epoch_proof()
        .cloned()
        .map(Arc::new)
        .expect("the promoted server holds a proof");
    assert_eq!(
        pair.active.server.epoch_proof(),
        Some(&*proof),
        "the zombie keeps it"
    );
    let after = relaying(2, pair.standby.server.pair_id(), Some(proof));
    for (name, mut server) in [
        ("promoted_relayed_proof", pair.standby.server.clone()),
        ("zombie_relayed_proof", pair.active.server.clone()),
    ] {
        warm(&mut server, &after);
        let mut next = 0;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| run(&mut server, &after, iters, &mut next))
        });
        assert!(
            server.contacts().all(|c| c.forged_epoch_claims == 0),
            "{name}: a genuine proof is no forged claim"
        );
    }

    // The whole path as a transport sees it: building the owned input included.
    let mut server = standalone_server();
    warm(&mut server, &unpaired);
    let mut i = 0usize;
    g.bench_function("standalone_with_input_build", |b| {
        b.iter(|| {
            i = (i + 1) % CLIENTS;
            server.handle_input(Now::at(2_000), heartbeat_input(i, i as u64, 1, None));
            drain_with(&mut server, |out| drop(black_box(out)));
        })
    });
    g.finish();
}

criterion_group!(benches, heartbeats);
criterion_main!(benches);
