//! Edge fleet load on a pair over QUIC on loopback (SPEC §10): starts two real
//! `vcodr serve` processes and pairs them, then runs `vcodr edge-sim` as a
//! third process with N edges heartbeating both servers every second. While
//! the fleet runs it samples each server's resident memory (VmRSS) and the CPU
//! time of the three processes once a second, and reads the active's contact
//! table to see how many clients follow it. Then it promotes the standby
//! (planned switchover) and measures how long until every client follows it.
//!
//! ```sh
//! cargo build --release -p vcodr-server
//! cargo run --release -p vcodr-server --example edge_load -- target/release/vcodr 10000 30
//! ```
//! Arguments: path of the `vcodr` binary, edge count, seconds of steady load,
//! ms between two monitoring samples of one edge (0: none; default 60,000),
//! heartbeat interval in ms (default 1,000, SPEC §10's stress figure; the
//! product default is 10,000), QUIC driver of the edge links on both ends
//! (`hub`, the default, or `quinn`).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use vcodr_server::tools::cluster::{temp_dir, ProcCluster};

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

/// Clients that `server`'s contact table shows following it.
async fn following(cl: &ProcCluster, server: usize) -> anyhow::Result<u64> {
    let st = cl
        .client(server)
        .call(
            "disasterRecovery/getReplicationStatus",
            serde_json::json!({ "with": ["clientCount"] }),
        )
        .await?;
    let n = |k: &str| st["clientCount"][k].as_u64().unwrap_or(0);
    Ok(n("currentActiveEdgeCount") + n("currentActiveGatewayCount"))
}

/// How many edges the simulator's latest live line shows following `addr`.
fn sim_following(log: &std::path::Path, addr: &str) -> u64 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let Some(line) = text.lines().last() else {
        return 0;
    };
    let key = format!("{addr}: ");
    line.split(" | ")
        .find_map(|part| {
            let part = part.strip_prefix("following ").unwrap_or(part);
            part.strip_prefix(&key)?.trim().parse().ok()
        })
        .unwrap_or(0)
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
    let heartbeat_ms: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1_000);
    let driver = args.next().unwrap_or_else(|| "hub".into());
    let dir = temp_dir("vcodr-edge-load")?;
    let extra = format!(
        "[edges]\nheartbeat_interval_ms = {heartbeat_ms}\ncontact_save_interval_ms = 5000\nquic_driver = {driver:?}\n"
    );
    let mut cl = ProcCluster::create(&exe, &dir, &["a", "b"], &extra)?;
    cl.start(0)?;
    cl.start(1)?;
    cl.pair(0, 1, Duration::from_secs(30)).await?;
    let pids = [
        cl.servers[0].pid().unwrap_or(0),
        cl.servers[1].pid().unwrap_or(0),
    ];
    let rss_idle = pids.map(rss_kib);

    // Connect phase plus steady phase; the sim prints its report at the end.
    let ramp = 10 + count as u64 / 1000 + heartbeat_ms.min(5_000) / 1000;
    let total = ramp + secs;
    let out = dir.join("sim.json");
    let mut sim = Command::new(&cl.exe)
        .args(["edge-sim", "--servers"])
        .arg(format!("{},{}", cl.servers[0].edge, cl.servers[1].edge))
        .arg("--count")
        .arg(count.to_string())
        .arg("--heartbeat-ms")
        .arg(heartbeat_ms.to_string())
        .arg("--sample-interval-ms")
        .arg(sample_ms.to_string())
        // Outlives the steady phase and the switchover; stopped by ctrl-c.
        .arg("--duration-s")
        .arg((total + 120).to_string())
        .arg("--warmup-s")
        .arg(ramp.to_string())
        .arg("--quic-driver")
        .arg(&driver)
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
    let mut cpu_at_ramp: Option<([f64; 3], Instant)> = None;
    let mut cpu_steady = [0.0; 3];
    while start.elapsed() < Duration::from_secs(total) {
        if let Some(status) = sim.try_wait()? {
            anyhow::bail!("edge-sim exited early ({status}); see {}", dir.display());
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
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let following_a = following(&cl, 0).await?;
    // The simulator's live line (once a second): percentiles since the ramp.
    let steady_line = std::fs::read_to_string(dir.join("sim.log"))?
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();

    // Planned switchover while the fleet runs: how long until b's contact
    // table shows every client following b? Each client reports whom it
    // follows in its next heartbeat, so this is an upper bound by up to one
    // heartbeat interval.
    let promoted = Instant::now();
    cl.client(1)
        .call(
            "disasterRecovery/promoteStandbyToActive",
            serde_json::json!({"force": true}),
        )
        .await?;
    let mut converged = None;
    let mut edges_converged = None;
    let b_edge = cl.servers[1].edge.to_string();
    let patience = Duration::from_secs(30).max(Duration::from_millis(3 * heartbeat_ms));
    while promoted.elapsed() < patience {
        // The edges' own view (the simulator's live line, once a second).
        if edges_converged.is_none() && sim_following(&dir.join("sim.log"), &b_edge) == count as u64
        {
            edges_converged = Some(promoted.elapsed());
        }
        if converged.is_none() && following(&cl, 1).await? == count as u64 {
            converged = Some(promoted.elapsed());
        }
        if converged.is_some() && edges_converged.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let following_b = following(&cl, 1).await?;
    // ctrl-c: the simulator stops and prints its report.
    let _ = Command::new("kill")
        .args(["-INT", &sim_pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sim.try_wait()?.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = sim.kill();
    let _ = sim.wait();
    let report = std::fs::read_to_string(&out)?;
    println!("edges {count} over the {driver} QUIC driver, heartbeat {heartbeat_ms} ms to both servers, a monitoring sample every {sample_ms} ms per edge, {secs} s steady after a {ramp} s ramp");
    println!("steady phase (edge-sim live line): {steady_line}");
    println!("clients following a before the switchover (its contact table): {following_a}");
    println!(
        "server RSS MiB: idle a {:.0} b {:.0}; peak a {:.0} b {:.0}; edge-sim peak {:.0}",
        rss_idle[0] as f64 / 1024.0,
        rss_idle[1] as f64 / 1024.0,
        peak[0] as f64 / 1024.0,
        peak[1] as f64 / 1024.0,
        sim_peak as f64 / 1024.0
    );
    println!(
        "CPU in the steady phase (cores): a {:.2} b {:.2} edge-sim {:.2}",
        cpu_steady[0], cpu_steady[1], cpu_steady[2]
    );
    match edges_converged {
        Some(t) => println!(
            "switchover: all {count} edges follow b {:.1} s after promoteStandbyToActive (edge-sim's live line, read once a second)",
            t.as_secs_f64()
        ),
        None => println!("switchover: not every edge followed b within {:.0} s (edge-sim)", patience.as_secs_f64()),
    }
    match converged {
        Some(t) => println!(
            "switchover: all {count} clients follow b {:.2} s after promoteStandbyToActive (b's contact table: each edge says so in its next heartbeat)",
            t.as_secs_f64()
        ),
        None => println!(
            "switchover: only {following_b} of {count} clients follow b after {:.0} s",
            patience.as_secs_f64()
        ),
    }
    println!(
        "edge-sim final report (whole run after the ramp): {}",
        report.trim()
    );
    println!("logs in {}", dir.display());
    cl.stop_all();
    Ok(())
}
