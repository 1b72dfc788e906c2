//! QUIC request/response round trips on loopback (one requester, one link),
//! on a stream and as datagrams.
//!
//! `cargo bench -p vcodr-transport --bench rtt`; the example
//! `cargo run --release -p vcodr-transport --example rtt` reports round
//! trips per second at several concurrency levels.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vcodr_transport::certs::{CertRole, CertificateAuthority};
use vcodr_transport::quic::QuicTransport;
use vcodr_transport::{Connection, Settings, Transport};

#[path = "support/echo.rs"]
mod echo;
use echo::{echo_server, loopback, Ping, Rtt};

fn setup(
    rt: &tokio::runtime::Runtime,
) -> (QuicTransport<Rtt>, QuicTransport<Rtt>, Connection<Rtt>) {
    rt.block_on(async {
        let ca = CertificateAuthority::new().expect("CA");
        let (server, addr) = echo_server(&ca, Settings::default()).expect("echo server");
        let edge = QuicTransport::<Rtt>::bind(
            loopback(),
            ca.issue_identity("edge-1", CertRole::Edge).expect("cert"),
            Settings::default(),
        )
        .expect("bind");
        let link = edge.connect(addr, "a").await.expect("connect");
        (server, edge, link)
    })
}

fn round_trips(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (_server, _edge, link) = setup(&rt);
    let mut group = c.benchmark_group("quic_loopback");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    // On a stream, and as one datagram each way (the heartbeats' path; no
    // loss on loopback).
    for (name, datagram) in [("request_response", false), ("request_datagram", true)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let started = Instant::now();
                    for i in 0..iters {
                        let pong = if datagram {
                            link.request_datagram(&Ping(i)).await
                        } else {
                            link.request(&Ping(i)).await
                        };
                        assert_eq!(pong.expect("round trip").0, i);
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, round_trips);
criterion_main!(benches);
