//! `heartbeat-cost`: what one edge heartbeat costs a server, per QUIC driver
//! (issue 15). For each driver it starts a real pair of `vcodr serve`
//! processes on loopback (ports picked free), then `vcodr edge-sim --control`
//! with N edges heartbeating both servers, waits until every edge has a reply
//! from both, and measures one steady window:
//!
//! - server CPU per heartbeat: utime+stime of both servers (`/proc/<pid>/stat`)
//!   over the window ÷ heartbeats answered in it (the simulator's count);
//! - bytes per edge link: RSS after the fleet connected minus RSS before,
//!   ÷ links (one per edge and server);
//! - UDP datagrams per heartbeat: `/proc/net/snmp` `Udp: OutDatagrams` delta
//!   ÷ heartbeats (loopback: every datagram sent by either end, once; the
//!   whole network namespace, so another program's UDP counts too);
//! - syscalls and context switches per heartbeat: `perf stat -e
//!   raw_syscalls:sys_enter,context-switches` on both servers for a part of
//!   the window, ÷ heartbeats in that part;
//! - heartbeat p50/p99 (the simulator's histogram, reset at the window's
//!   start), heartbeats lost, and the simulator's own CPU and RSS.
//!
//! Every wait is bounded in time. Not part of `cargo test`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::machine::{proc_now, Proc};
use anyhow::{bail, Context};
use clap::Parser;
use vcodr_server::tools::cluster::{temp_dir, ProcCluster};

/// Command-line arguments of `heartbeat-cost`.
#[derive(Parser, Debug, Clone)]
#[command(
    about = "Server CPU, memory, packets and syscalls per edge heartbeat, hub vs quinn driver"
)]
pub struct Args {
    /// Simulated edges; each heartbeats both servers.
    #[arg(long, default_value_t = 3000)]
    pub edges: usize,
    /// Heartbeat interval of every edge.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Length of the steady window measured.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Server drivers to measure, in this order (`hub`, `quinn`).
    #[arg(long, value_delimiter = ',', default_value = "hub,quinn")]
    pub drivers: Vec<String>,
    /// The simulator's driver (`hub`, `quinn`, or `same`: the server's).
    #[arg(long, default_value = "same")]
    pub sim_driver: String,
    /// Seconds of the window during which `perf stat` counts syscalls (0: none).
    #[arg(long, default_value_t = 5)]
    pub perf_seconds: u64,
    /// Longest wait for every edge to be connected to both servers.
    #[arg(long, default_value_t = 180)]
    pub ramp_limit_s: u64,
    /// Also `perf record` server a (call graphs) for `perf_seconds` into
    /// `<this>.<driver>.data`, after the syscall count.
    #[arg(long)]
    pub perf_record: Option<PathBuf>,
    /// The `vcodr` binary (default: beside this program, or target/release/vcodr).
    #[arg(long)]
    pub vcodr: Option<PathBuf>,
}

/// `Udp:` counters of `/proc/net/snmp` by name.
fn udp_counters() -> std::collections::HashMap<String, u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
    let mut out = std::collections::HashMap::new();
    if let [names, values, ..] = lines[..] {
        for (n, v) in names
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
        {
            out.insert(n.to_string(), v.parse().unwrap_or(0));
        }
    }
    out
}

/// The simulator's summary fields read here.
#[derive(Clone, Copy, Debug, Default)]
struct Sim {
    heartbeats: u64,
    lost: u64,
    errors: u64,
    p50_us: u64,
    p99_us: u64,
}

/// `vcodr edge-sim --control`, driven through stdin, answers read with a bound.
struct SimProc {
    child: Child,
    stdin: ChildStdin,
    answers: mpsc::Receiver<String>,
}

impl SimProc {
    fn ask(&mut self, command: &str) -> anyhow::Result<serde_json::Value> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        let line = self
            .answers
            .recv_timeout(Duration::from_secs(60))
            .with_context(|| format!("edge-sim did not answer {command:?} within 60 s"))?;
        Ok(serde_json::from_str(&line)?)
    }

    fn summary(&mut self, command: &str) -> anyhow::Result<Sim> {
        let v = self.ask(command)?;
        let s = &v["summary"];
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        Ok(Sim {
            heartbeats: n("heartbeats"),
            lost: n("heartbeatsLost"),
            errors: n("requestErrors"),
            p50_us: n("heartbeatP50Us"),
            p99_us: n("heartbeatP99Us"),
        })
    }
}

/// What one driver's run measured.
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub driver: String,
    pub sim_driver: String,
    pub window_s: f64,
    pub heartbeats: u64,
    pub server_us_per_hb: f64,
    pub server_cores: [f64; 2],
    pub rss_idle_mib: [f64; 2],
    pub rss_mib: [f64; 2],
    pub bytes_per_link: f64,
    pub udp_out_per_hb: f64,
    pub udp_rcvbuf_drops: u64,
    pub syscalls_per_hb: Option<f64>,
    pub ctx_switches_per_hb: Option<f64>,
    pub sim_syscalls_per_hb: Option<f64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub lost: u64,
    pub errors: u64,
    pub sim_us_per_hb: f64,
    pub sim_cores: f64,
    pub sim_rss_mib: f64,
}

/// `perf stat` of the syscalls and context switches of `pids` for `secs`;
/// `None` if perf is missing or counts nothing.
fn perf_stat(pids: &[u32], secs: u64) -> Option<(u64, u64)> {
    let list = pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new("timeout")
        .arg((secs + 10).to_string())
        .args(["perf", "stat", "-x", ",", "-e"])
        .arg("raw_syscalls:sys_enter,context-switches")
        .args(["-p", &list, "--", "sleep"])
        .arg(secs.to_string())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    let count = |event: &str| {
        text.lines()
            .find(|l| l.contains(event))
            .and_then(|l| l.split(',').next()?.trim().parse::<u64>().ok())
    };
    Some((count("raw_syscalls:sys_enter")?, count("context-switches")?))
}

/// One driver: a fresh pair and simulator, one steady window.
pub fn run_driver(
    exe: &Path,
    args: &Args,
    driver: &str,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<Run> {
    let sim_driver = if args.sim_driver == "same" {
        driver.to_string()
    } else {
        args.sim_driver.clone()
    };
    let dir = temp_dir("vcodr-hb-cost")?;
    let extra = format!(
        "[edges]\nheartbeat_interval_ms = {}\ncontact_save_interval_ms = 5000\nquic_driver = {driver:?}\n",
        args.interval_ms
    );
    let mut cl = ProcCluster::create(exe, &dir, &["a", "b"], &extra)?;
    cl.start(0)?;
    cl.start(1)?;
    eprintln!("{driver}: pairing");
    rt.block_on(cl.pair(0, 1, Duration::from_secs(30)))?;
    eprintln!("{driver}: paired");
    let pids = [0, 1].map(|i| cl.servers[i].pid().unwrap_or(0));
    // Settle after pairing before the idle figure.
    std::thread::sleep(Duration::from_secs(2));
    let idle = pids.map(proc_now);

    let mut child = Command::new(&cl.exe)
        .args(["edge-sim", "--control", "--servers"])
        .arg(format!("{},{}", cl.servers[0].edge, cl.servers[1].edge))
        .arg("--count")
        .arg(args.edges.to_string())
        .arg("--heartbeat-ms")
        .arg(args.interval_ms.to_string())
        .args(["--sample-interval-ms", "0", "--gateway-every", "10"])
        .arg("--duration-s")
        .arg((args.ramp_limit_s + args.seconds + 120).to_string())
        .arg("--quic-driver")
        .arg(&sim_driver)
        .arg("--certs")
        .arg(&cl.certs)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("sim.log"))?)
        .spawn()?;
    let stdin = child.stdin.take().context("edge-sim stdin")?;
    let stdout = child.stdout.take().context("edge-sim stdout")?;
    let (tx, answers) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut sim = SimProc {
        child,
        stdin,
        answers,
    };
    let result = measure(&mut sim, &cl, args, driver, &sim_driver, pids, idle);
    let _ = writeln!(sim.stdin, "stop");
    let deadline = Instant::now() + Duration::from_secs(20);
    while sim.child.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = sim.child.kill();
    let _ = sim.child.wait();
    cl.stop_all();
    match &result {
        Ok(_) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(_) => eprintln!("logs kept in {}", dir.display()),
    }
    result
}

fn measure(
    sim: &mut SimProc,
    cl: &ProcCluster,
    args: &Args,
    driver: &str,
    sim_driver: &str,
    pids: [u32; 2],
    idle: [Proc; 2],
) -> anyhow::Result<Run> {
    let sim_pid = sim.child.id();
    // Ramp: until every edge has had a reply from both servers.
    let ramp_start = Instant::now();
    loop {
        if let Some(status) = sim.child.try_wait()? {
            bail!("edge-sim exited during the ramp ({status})");
        }
        if !cl.servers.iter().all(|s| s.running()) {
            bail!("a server exited during the ramp");
        }
        let report = sim.ask("report")?;
        let edges = report["edges"].as_array().map_or(&[][..], Vec::as_slice);
        let up = edges
            .iter()
            .filter(|e| {
                let r = &e["replies"];
                r[0].as_u64().unwrap_or(0) > 0 && r[1].as_u64().unwrap_or(0) > 0
            })
            .count();
        if up == args.edges {
            break;
        }
        if ramp_start.elapsed() > Duration::from_secs(args.ramp_limit_s) {
            bail!(
                "only {up} of {} edges heard from both servers after {} s",
                args.edges,
                args.ramp_limit_s
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!(
        "{driver}: {} edges up on both servers after {:.0} s",
        args.edges,
        ramp_start.elapsed().as_secs_f64()
    );
    // Two intervals so that the ramp's handshakes are over.
    std::thread::sleep(Duration::from_millis(2 * args.interval_ms).max(Duration::from_secs(3)));

    let s0 = sim.summary("reset-latency")?;
    let t0 = Instant::now();
    let p0 = pids.map(proc_now);
    let q0 = proc_now(sim_pid);
    let u0 = udp_counters();
    // perf in the middle of the window, over both servers, then the simulator.
    let perf_secs = args.perf_seconds.min(args.seconds / 2);
    let mut syscalls = None;
    let mut sim_syscalls = None;
    if perf_secs > 0 {
        std::thread::sleep(Duration::from_secs((args.seconds - 2 * perf_secs) / 2));
        let a = sim.summary("summary")?;
        let servers = perf_stat(&pids, perf_secs);
        let b = sim.summary("summary")?;
        let simp = perf_stat(&[sim_pid], perf_secs);
        let c = sim.summary("summary")?;
        let per = |n: u64, hb: u64| n as f64 / hb.max(1) as f64;
        syscalls = servers.map(|(s, cs)| {
            (
                per(s, b.heartbeats - a.heartbeats),
                per(cs, b.heartbeats - a.heartbeats),
            )
        });
        sim_syscalls = simp.map(|(s, _)| per(s, c.heartbeats - b.heartbeats));
        if let Some(base) = &args.perf_record {
            let out = format!("{}.{driver}.data", base.display());
            let status = Command::new("timeout")
                .arg((perf_secs + 30).to_string())
                .args([
                    "perf",
                    "record",
                    "-q",
                    "-F",
                    "499",
                    "--call-graph",
                    "dwarf,16384",
                    "-o",
                ])
                .arg(&out)
                .args(["-p", &pids[0].to_string(), "--", "sleep"])
                .arg(perf_secs.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            eprintln!("{driver}: perf record of server a into {out}: {status:?}");
        }
    }
    let rest = Duration::from_secs(args.seconds).saturating_sub(t0.elapsed());
    std::thread::sleep(rest);
    let s1 = sim.summary("summary")?;
    let dt = t0.elapsed().as_secs_f64();
    let p1 = pids.map(proc_now);
    let q1 = proc_now(sim_pid);
    let u1 = udp_counters();
    if !cl.servers.iter().all(|s| s.running()) {
        bail!("a server exited during the window");
    }
    let hb = s1.heartbeats - s0.heartbeats;
    let d = |k: &str| u1.get(k).unwrap_or(&0) - u0.get(k).unwrap_or(&0);
    let cpu = [0, 1].map(|i| p1[i].cpu_s - p0[i].cpu_s);
    let links = (2 * args.edges).max(1) as f64;
    let grown_kib: u64 = (0..2)
        .map(|i| p1[i].rss_kib.saturating_sub(idle[i].rss_kib))
        .sum();
    let mib = |kib: u64| kib as f64 / 1024.0;
    Ok(Run {
        driver: driver.into(),
        sim_driver: sim_driver.into(),
        window_s: dt,
        heartbeats: hb,
        server_us_per_hb: (cpu[0] + cpu[1]) * 1e6 / hb.max(1) as f64,
        server_cores: cpu.map(|c| c / dt),
        rss_idle_mib: idle.map(|p| mib(p.rss_kib)),
        rss_mib: p1.map(|p| mib(p.rss_kib)),
        bytes_per_link: grown_kib as f64 * 1024.0 / links,
        udp_out_per_hb: d("OutDatagrams") as f64 / hb.max(1) as f64,
        udp_rcvbuf_drops: d("RcvbufErrors"),
        syscalls_per_hb: syscalls.map(|s| s.0),
        ctx_switches_per_hb: syscalls.map(|s| s.1),
        sim_syscalls_per_hb: sim_syscalls,
        p50_ms: s1.p50_us as f64 / 1000.0,
        p99_ms: s1.p99_us as f64 / 1000.0,
        lost: s1.lost - s0.lost,
        errors: s1.errors - s0.errors,
        sim_us_per_hb: (q1.cpu_s - q0.cpu_s) * 1e6 / hb.max(1) as f64,
        sim_cores: (q1.cpu_s - q0.cpu_s) / dt,
        sim_rss_mib: mib(q1.rss_kib),
    })
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("n/a".to_string(), |v| format!("{v:.prec$}"))
}

/// The one table: a row per figure, a column per driver.
pub fn render(runs: &[Run]) -> String {
    type Row = (&'static str, fn(&Run) -> String);
    let rows: Vec<Row> = vec![
        ("simulator driver", |r| r.sim_driver.clone()),
        ("heartbeats answered in the window", |r| {
            r.heartbeats.to_string()
        }),
        ("server CPU µs per heartbeat (a+b)", |r| {
            format!("{:.1}", r.server_us_per_hb)
        }),
        ("server cores used (a / b)", |r| {
            format!("{:.2} / {:.2}", r.server_cores[0], r.server_cores[1])
        }),
        ("server RSS MiB idle → fleet (a)", |r| {
            format!("{:.0} → {:.0}", r.rss_idle_mib[0], r.rss_mib[0])
        }),
        ("server RSS MiB idle → fleet (b)", |r| {
            format!("{:.0} → {:.0}", r.rss_idle_mib[1], r.rss_mib[1])
        }),
        ("server bytes per edge link", |r| {
            format!("{:.0}", r.bytes_per_link)
        }),
        ("UDP datagrams sent per heartbeat", |r| {
            format!("{:.2}", r.udp_out_per_hb)
        }),
        ("UDP receive-buffer drops", |r| {
            r.udp_rcvbuf_drops.to_string()
        }),
        ("server syscalls per heartbeat", |r| {
            opt(r.syscalls_per_hb, 2)
        }),
        ("server context switches per heartbeat", |r| {
            opt(r.ctx_switches_per_hb, 2)
        }),
        ("heartbeat p50 / p99 ms", |r| {
            format!("{:.2} / {:.2}", r.p50_ms, r.p99_ms)
        }),
        ("heartbeats lost / request errors", |r| {
            format!("{} / {}", r.lost, r.errors)
        }),
        ("simulator CPU µs per heartbeat", |r| {
            format!("{:.1}", r.sim_us_per_hb)
        }),
        ("simulator cores / RSS MiB", |r| {
            format!("{:.2} / {:.0}", r.sim_cores, r.sim_rss_mib)
        }),
        ("simulator syscalls per heartbeat", |r| {
            opt(r.sim_syscalls_per_hb, 2)
        }),
    ];
    let mut out = format!("{:<40}", "");
    for r in runs {
        out += &format!(" {:>16}", r.driver);
    }
    out.push('\n');
    for (name, f) in rows {
        out += &format!("{name:<40}");
        for r in runs {
            out += &format!(" {:>16}", f(r));
        }
        out.push('\n');
    }
    out
}
