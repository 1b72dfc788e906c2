//! Measures QUIC request/response round trips per second on loopback, and
//! how long it takes to open many authenticated links.
//!
//! ```text
//! cargo run --release -p vcodr-transport --example rtt -- [SECONDS] [CONCURRENCY] [LINKS]
//! ```
//! SECONDS (default 5) of round trips with CONCURRENCY requesters (default 1,
//! then 64) over one link; then LINKS (default 1000) links opened at once,
//! each doing one round trip.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vcodr_transport::certs::{CertRole, CertificateAuthority};
use vcodr_transport::quic::QuicTransport;
use vcodr_transport::{Settings, Transport};

#[path = "../benches/support/echo.rs"]
mod echo;
use echo::{echo_server, loopback, Ping, Rtt};

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds = arg(1, 5);
    let concurrency = arg(2, 0);
    let links = arg(3, 1000);
    let ca = CertificateAuthority::new()?;
    let settings = Settings {
        handshake_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(60),
        ..Settings::default()
    };
    let (_server, addr) = echo_server(&ca, settings.clone())?;

    let edge = QuicTransport::<Rtt>::bind(
        loopback(),
        ca.issue_identity("edge-1", CertRole::Edge)?,
        settings.clone(),
    )?;
    let link = edge.connect(addr, "a").await?;
    let levels: Vec<u64> = if concurrency == 0 {
        vec![1, 64]
    } else {
        vec![concurrency]
    };
    for level in levels {
        let count = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = tokio::task::JoinSet::new();
        let started = Instant::now();
        for _ in 0..level {
            let sender = link.sender();
            let count = count.clone();
            tasks.spawn(async move {
                let mut seq = 0;
                while Instant::now() < deadline {
                    let pong = sender.request(&Ping(seq)).await.expect("round trip");
                    assert_eq!(pong.0, seq);
                    seq += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let elapsed = started.elapsed().as_secs_f64();
        let total = count.load(Ordering::Relaxed);
        println!(
            "round trips, {level} concurrent on one link: {total} in {elapsed:.2} s = {:.0}/s (mean {:.1} µs each per requester)",
            total as f64 / elapsed,
            elapsed * 1e6 * level as f64 / total as f64
        );
    }

    if links > 0 {
        let sockets: Vec<_> = (0..8)
            .map(|i| {
                QuicTransport::<Rtt>::bind(
                    loopback(),
                    ca.issue_identity(&format!("sock-{i}"), CertRole::Edge)
                        .unwrap(),
                    settings.clone(),
                )
                .unwrap()
            })
            .collect();
        let edges: Vec<_> = (0..links as usize)
            .map(|i| {
                sockets[i % 8]
                    .with_identity(
                        ca.issue_identity(&format!("edge-{i:05}"), CertRole::Edge)
                            .unwrap(),
                    )
                    .unwrap()
            })
            .collect();
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for edge in edges {
            tasks.spawn(async move {
                let t = Instant::now();
                let link = edge.connect(addr, "a").await.expect("connect");
                link.request(&Ping(0)).await.expect("round trip");
                (t.elapsed(), link)
            });
        }
        let mut times = Vec::new();
        let mut held = Vec::new();
        while let Some(r) = tasks.join_next().await {
            let (t, link) = r?;
            times.push(t);
            held.push(link);
        }
        times.sort();
        println!(
            "{links} links opened at once + one round trip each: {:.2} s; per link p50 {:?} p99 {:?} max {:?}",
            started.elapsed().as_secs_f64(),
            times[times.len() / 2],
            times[times.len() * 99 / 100],
            times[times.len() - 1]
        );
    }
    Ok(())
}
