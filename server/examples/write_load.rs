//! Configuration-write load on a synchronously replicating pair over loopback:
//! starts two real `vcodr serve` processes (on_standby_loss = "block", so every
//! acknowledged write is durable on both), pairs them, then runs C concurrent
//! JSON-RPC writers (200-byte JSON values, like the PostgreSQL anchor's rows)
//! for D seconds and prints throughput and latency percentiles.
//!
//! ```sh
//! cargo build --release -p vcodr-server
//! cargo run --release -p vcodr-server --example write_load -- target/release/vcodr 15 1 16
//! ```
//! Arguments: path of the `vcodr` binary, seconds per run, then writer counts.

use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vcodr_server::tools::cluster::{temp_dir, ProcCluster};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let exe = PathBuf::from(args.next().unwrap_or_else(|| "target/release/vcodr".into()));
    let secs: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(15);
    let mut writers: Vec<usize> = args.map(|s| s.parse()).collect::<Result<_, _>>()?;
    if writers.is_empty() {
        writers = vec![1, 16];
    }
    let dir = temp_dir("vcodr-load")?;
    let extra = "[replication]\non_standby_loss = \"block\"\n";
    let mut cl = ProcCluster::create(&exe, &dir, &["a", "b"], extra)?;
    cl.start(0)?;
    cl.start(1)?;
    cl.pair(0, 1, Duration::from_secs(30)).await?;
    let value: String = "x".repeat(180);
    println!("vcodr sync-replicated writes, {secs} s per run, loopback, on_standby_loss=block (durable on both before the ack)");
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>10}",
        "writers", "writes/s", "p50_ms", "p99_ms", "errors"
    );
    // Warm-up.
    run(&cl, 16, Duration::from_secs(2), &value).await;
    for &c in &writers {
        let (n, mut lat, errors, took) = run(&cl, c, Duration::from_secs(secs), &value).await;
        lat.sort_unstable();
        let q = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        println!(
            "{c:>8} {:>10.1} {:>10.3} {:>10.3} {errors:>10}",
            n as f64 / took.as_secs_f64(),
            q(0.50).as_secs_f64() * 1e3,
            q(0.99).as_secs_f64() * 1e3
        );
    }
    let st = cl.client(0).status().await?;
    println!(
        "active: {} / {}, commit index {}, standby acked {}",
        st["role"],
        st["drState"],
        st["replication"]["commitIndex"],
        st["replication"]["standbyAckedIndex"]
    );
    cl.stop_all();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn run(
    cl: &ProcCluster,
    writers: usize,
    dur: Duration,
    value: &str,
) -> (u64, Vec<Duration>, u64, Duration) {
    let start = Instant::now();
    let stop = start + dur;
    let value = Arc::new(value.to_string());
    let mut tasks = Vec::new();
    for w in 0..writers {
        let c = cl.client(0).clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut i = 0u64;
            // Bounded in time and in count.
            while Instant::now() < stop && i < 10_000_000 {
                let key = format!("load/{w}/{}", i % 10_000);
                let t0 = Instant::now();
                match c
                    .call(
                        "configuration/put",
                        json!({"key": key, "value": {"v": *value, "i": i}}),
                    )
                    .await
                {
                    Ok(_) => lat.push(t0.elapsed()),
                    Err(_) => errors += 1,
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    (all.len() as u64, all, errors, start.elapsed())
}
