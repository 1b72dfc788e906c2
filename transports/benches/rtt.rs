//! QUIC request/response round trips on loopback (one requester, one link).
//!
//! `cargo bench -p vcodr-transport --bench rtt`; the example
//! `cargo run --release -p vcodr-transport --example rtt` reports round
//! trips per second at several concurrency levels.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde::{Deserialize, Serialize};
use vcodr_transport::certs::{CertKind, CertificateAuthority};
use vcodr_transport::quic::QuicTransport;
use vcodr_transport::{Connection, Incoming, Protocol, Settings, Transport};

#[derive(Serialize, Deserialize)]
struct Ping(u64);
#[derive(Serialize, Deserialize)]
struct Pong(u64);

struct Rtt;
impl Protocol for Rtt {
    const NAME: &'static str = "vcodr-rtt";
    type Request = Ping;
    type Response = Pong;
    type Message = ();
}

fn setup(
    rt: &tokio::runtime::Runtime,
) -> (QuicTransport<Rtt>, QuicTransport<Rtt>, Connection<Rtt>) {
    rt.block_on(async {
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
        let ca = CertificateAuthority::new().expect("CA");
        let server = QuicTransport::<Rtt>::bind(
            loopback,
            ca.issue_identity("a", CertKind::Server).expect("cert"),
            Settings::default(),
        )
        .expect("bind");
        let mut listener = server.listen().expect("listen");
        let addr = listener.local_addr();
        tokio::spawn(async move {
            while let Some(mut link) = listener.accept().await {
                tokio::spawn(async move {
                    while let Ok(incoming) = link.recv().await {
                        if let Incoming::Request { request, responder } = incoming {
                            let _ = responder.respond(&Pong(request.0)).await;
                        }
                    }
                });
            }
        });
        let edge = QuicTransport::<Rtt>::bind(
            loopback,
            ca.issue_identity("edge-1", CertKind::Client).expect("cert"),
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
    group.bench_function("request_response", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for i in 0..iters {
                    let pong = link.request(&Ping(i)).await.expect("round trip");
                    assert_eq!(pong.0, i);
                }
                started.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, round_trips);
criterion_main!(benches);
