//! Edge fleet load on a pair over QUIC on loopback (SPEC §10): starts two real
//! `vcodr serve` processes and pairs them, then runs `vcodr edge-sim` as a
//! third process with N edges heartbeating both servers every second. While
//! the fleet runs it samples each server's resident memory (VmRSS) and the CPU
//! time of the three processes once a second, and reads the active's contact
//! table to see how many clients follow it. Failover convergence under a
//! fleet is measured by `server/tests/fleet.rs` and the demo.
//!
//! ```sh
//! cargo build --release -p vcodr-server
//! cargo run --release -p vcodr-server --example edge_load -- target/release/vcodr 10000 30
//! ```
//! Arguments: path of the `vcodr` binary, edge count, seconds of steady load,
//! ms between two monitoring samples of one edge (0: none; default 60,000).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use vcodr_server::cluster::{temp_dir, ProcCluster};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_s(pid: u32) -> f64 {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may contain spaces).
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    ticks as f64 / 100.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let exe = PathBuf::from(args.next().unwrap_or_else(|| "target/release/vcodr".into()));
    let count: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let secs: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(30);
    let sample_ms: u64 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(60_000);
    let dir = temp_dir("vcodr-edge-load")?;
    let extra = "[edges]\nheartbeat_interval_ms = 1000\ncontact_save_interval_ms = 5000\n";
    let mut cl = ProcCluster::create(&exe, &dir, &["a", "b"], extra)?;
    cl.start(0)?;
    cl.start(1)?;
    cl.pair(0, 1, Duration::from_secs(30)).await?;
    let pids = [
        cl.servers[0].pid().unwrap_or(0),
        cl.servers[1].pid().unwrap_or(0),
    ];
    let rss_idle = pids.map(rss_kib);

    // Connect phase plus steady phase; the sim prints its report at the end.
    let ramp = 10 + count as u64 / 1000;
    let total = ramp + secs;
    let out = dir.join("sim.json");
    let mut sim = Command::new(&cl.exe)
        .args(["edge-sim", "--servers"])
        .arg(format!("{},{}", cl.servers[0].edge, cl.servers[1].edge))
        .arg("--count")
        .arg(count.to_string())
        .args(["--heartbeat-ms", "1000", "--sample-interval-ms"])
        .arg(sample_ms.to_string())
        .arg("--duration-s")
        .arg(total.to_string())
        .arg("--warmup-s")
        .arg(ramp.to_string())
        .arg("--certs")
        .arg(&cl.certs)
        .arg("--json")
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(dir.join("sim.log"))?)
        .spawn()?;
    let sim_pid = sim.id();
    let start = Instant::now();
    let mut peak = [0u64; 2];
    let mut sim_peak = 0;
    let mut following = 0;
    let mut cpu_at_ramp: Option<([f64; 3], Instant)> = None;
    let mut cpu_steady = [0.0; 3];
    while start.elapsed() < Duration::from_secs(total + 30) {
        if sim.try_wait()?.is_some() {
            break;
        }
        for (p, pid) in peak.iter_mut().zip(pids) {
            *p = (*p).max(rss_kib(pid));
        }
        sim_peak = sim_peak.max(rss_kib(sim_pid));
        let cpu = [cpu_s(pids[0]), cpu_s(pids[1]), cpu_s(sim_pid)];
        match cpu_at_ramp {
            None if start.elapsed() > Duration::from_secs(ramp) => {
                cpu_at_ramp = Some((cpu, Instant::now()))
            }
            Some((c0, t0)) if cpu[2] > 0.0 => {
                let dt = t0.elapsed().as_secs_f64().max(1e-3);
                cpu_steady = [0, 1, 2].map(|i| (cpu[i] - c0[i]) / dt);
            }
            _ => {}
        }
        if start.elapsed() > Duration::from_secs(ramp) {
            let st = cl
                .client(0)
                .call(
                    "disasterRecovery/getReplicationStatus",
                    serde_json::json!({ "with": ["clientCount"] }),
                )
                .await?;
            following = st["clientCount"]["currentActiveEdgeCount"]
                .as_u64()
                .unwrap_or(0)
                + st["clientCount"]["currentActiveGatewayCount"]
                    .as_u64()
                    .unwrap_or(0);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _ = sim.kill();
    let _ = sim.wait();
    let report = std::fs::read_to_string(&out)?;
    println!("edges {count}, heartbeat 1 s to both servers, a monitoring sample every {sample_ms} ms per edge, {secs} s steady after a {ramp} s ramp (percentiles: steady phase only)");
    println!("edge-sim report: {}", report.trim());
    println!("clients following a (its contact table): {following}");
    println!(
        "server RSS MiB: idle a {:.0} b {:.0}; peak a {:.0} b {:.0}; edge-sim peak {:.0}",
        rss_idle[0] as f64 / 1024.0,
        rss_idle[1] as f64 / 1024.0,
        peak[0] as f64 / 1024.0,
        peak[1] as f64 / 1024.0,
        sim_peak as f64 / 1024.0
    );
    println!("logs in {}", dir.display());
    println!(
        "CPU in the steady phase (cores): a {:.2} b {:.2} edge-sim {:.2}",
        cpu_steady[0], cpu_steady[1], cpu_steady[2]
    );
    cl.stop_all();
    Ok(())
}
