//! Frame encode + decode (`vcodr_core::codec`), in bytes per second: a
//! heartbeat (the most frequent frame) and a 256-entry `Append` (a full
//! replication batch of small configuration writes).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use vcodr_benches::{heartbeat, put_entry};
use vcodr_core::codec::{decode_frame, encode_frame, WireMessage, DEFAULT_MAX_FRAME_BYTES};
use vcodr_core::*;

/// Entries in the `Append` frame.
const APPEND_ENTRIES: u64 = 256;
/// Value bytes of each entry.
const VALUE_BYTES: usize = 96;

fn round_trip<T: WireMessage + PartialEq + std::fmt::Debug>(
    c: &mut Criterion,
    name: &str,
    msg: &T,
) {
    let frame = encode_frame(msg, DEFAULT_MAX_FRAME_BYTES).expect("encodes");
    let (back, used): (T, usize) = decode_frame(&frame, DEFAULT_MAX_FRAME_BYTES).expect("decodes");
    assert_eq!((&back, used), (msg, frame.len()));

    let mut g = c.benchmark_group(format!("codec/{name}"));
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("encode", |b| {
        b.iter(|| encode_frame(black_box(msg), DEFAULT_MAX_FRAME_BYTES).expect("encodes"))
    });
    g.bench_function("decode", |b| {
        b.iter(|| decode_frame::<T>(black_box(&frame), DEFAULT_MAX_FRAME_BYTES).expect("decodes"))
    });
    g.bench_function("encode_decode", |b| {
        b.iter(|| {
            let f = encode_frame(black_box(msg), DEFAULT_MAX_FRAME_BYTES).expect("encodes");
            decode_frame::<T>(&f, DEFAULT_MAX_FRAME_BYTES).expect("decodes")
        })
    });
    g.finish();
}

fn codec(c: &mut Criterion) {
    let hb = EdgeMsg::Heartbeat(heartbeat(4242, 17, 3, Some(0x5eed_u128 << 64 | 0xfeed)));
    round_trip(c, "heartbeat", &hb);

    let entries = (1..=APPEND_ENTRIES)
        .map(|i| put_entry(3, 1_000 + i, VALUE_BYTES))
        .collect();
    let append = PeerEnvelope {
        from: 0x1001,
        pair_id: Some(0x5eed_u128 << 64 | 0xfeed),
        epoch: 3,
        body: PeerMsg::Append {
            incarnation: 1,
            since: 0,
            prev_index: 1_000,
            prev_epoch: 3,
            entries,
            commit_index: 990,
            active_durable: 1_000 + APPEND_ENTRIES,
        },
    };
    round_trip(c, "append_256", &append);
}

criterion_group!(benches, codec);
criterion_main!(benches);
