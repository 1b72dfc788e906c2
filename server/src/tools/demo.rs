//! `vcodr demo`: the whole DR story on embedded defaults — a pair of real
//! server processes, N simulated edges over QUIC, configuration writes, a
//! crash of the active, a disaster promotion, edges following and flushing
//! their cached monitoring, the old active back as a zombie, and a rejoin.
//! Every check reads the system's state back through the admin API.

use crate::tools::cluster::{ProcCluster, FAST_TIMERS};
use crate::tools::ctl::{ApiError, Client};
use crate::tools::edge_sim::{EdgeSim, SimSettings};
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use vcodr_core::Method;
use vcodr_transport::certs::CertificateAuthority;

/// What to run.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub edges: usize,
    pub writes: usize,
    pub writers: usize,
    pub keep_running: bool,
    /// Where to put the deployment (default: a fresh temp dir). A directory
    /// given here is never removed.
    pub dir: Option<std::path::PathBuf>,
    /// Keep the temp dir (certificates, configs, data, logs) at the end.
    pub keep_dir: bool,
}

/// What the story leaves running: the pair and the edges.
struct Deployment {
    cl: ProcCluster,
    sim: EdgeSim,
}

impl Deployment {
    /// Prints how to reach the pair, the server PIDs and where it lives.
    fn print_running(&self) -> anyhow::Result<()> {
        let cl = &self.cl;
        let token = std::fs::read_to_string(&cl.token_file)
            .with_context(|| format!("reading {}", cl.token_file.display()))?;
        println!("\nThe pair keeps running:");
        for s in &cl.servers {
            println!(
                "  {}: pid {}  DR page {}  (CA {})  log {}",
                s.name,
                s.pid().map_or("-".to_string(), |p| p.to_string()),
                s.url(),
                cl.certs.join("ca.pem").display(),
                s.log.display()
            );
        }
        println!("  admin token: {}", token.trim());
        println!(
            "  vcodr ctl --server {} --token-file {} status",
            cl.servers[1].url(),
            cl.token_file.display()
        );
        println!("  deployment in {}", cl.dir.display());
        println!("running: ctrl-c or SIGTERM stops both servers");
        Ok(())
    }

    /// Stops the edges, then each server gracefully (SIGTERM, wait).
    async fn stop(mut self) {
        let _ = self.sim.stop().await;
        self.cl.stop_all();
    }
}

/// One line of the final report.
#[derive(Clone, Debug)]
pub struct Check {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

/// The outcome: phases with their durations and the checks.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub phases: Vec<(String, Duration)>,
    pub checks: Vec<Check>,
    pub dir: std::path::PathBuf,
}

impl Report {
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    fn check(&mut self, what: &str, ok: bool, detail: String) {
        self.checks.push(Check {
            what: what.into(),
            ok,
            detail,
        });
    }

    pub fn render(&self) -> String {
        let mut o = String::from("\nphases\n");
        for (p, d) in &self.phases {
            o += &format!("  {p:<62} {:>7.2} s\n", d.as_secs_f64());
        }
        o += "\nchecks\n";
        for c in &self.checks {
            o += &format!(
                "  [{}] {:<44} {}\n",
                if c.ok { "ok" } else { "FAIL" },
                c.what,
                c.detail
            );
        }
        o += &format!(
            "\n{}\n",
            if self.passed() {
                "DEMO PASSED"
            } else {
                "DEMO FAILED"
            }
        );
        o
    }
}

struct Phases {
    bar: indicatif::ProgressBar,
    started: Instant,
    current: String,
    report: Report,
}

impl Phases {
    fn begin(&mut self, name: &str) {
        self.end();
        self.current = name.to_string();
        self.started = Instant::now();
        self.bar.set_message(name.to_string());
        self.bar.println(format!("▶ {name}"));
    }

    fn end(&mut self) {
        if !self.current.is_empty() {
            let d = self.started.elapsed();
            self.report
                .phases
                .push((std::mem::take(&mut self.current), d));
        }
    }

    fn check(&mut self, what: &str, ok: bool, detail: String) {
        self.bar
            .println(format!("  {} {what}: {detail}", if ok { "✓" } else { "✗" }));
        self.report.check(what, ok, detail);
    }
}

async fn write_burst(
    client: &Client,
    n: usize,
    writers: usize,
    prefix: &str,
) -> (BTreeMap<String, u64>, usize) {
    let per = n.div_ceil(writers.max(1));
    let mut tasks = Vec::new();
    for w in 0..writers.max(1) {
        let c = client.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut failed = 0;
            for i in (w * per)..((w + 1) * per).min(n) {
                let key = format!("{prefix}/{i:05}");
                let value = json!({"site": i, "vlan": 100 + i % 50, "writer": w});
                match c
                    .call(
                        Method::ConfigurationPut,
                        json!({"key": key, "value": value}),
                    )
                    .await
                {
                    Ok(r) => acked.push((key, r["version"].as_u64().unwrap_or(0))),
                    Err(_) => failed += 1,
                }
            }
            (acked, failed)
        }));
    }
    let mut acked = BTreeMap::new();
    let mut failed = 0;
    for t in tasks {
        if let Ok((a, f)) = t.await {
            acked.extend(a);
            failed += f;
        }
    }
    (acked, failed)
}

async fn present(client: &Client, acked: &BTreeMap<String, u64>) -> anyhow::Result<usize> {
    let list = client.call(Method::ConfigurationList, json!({})).await?;
    let have: BTreeMap<String, u64> = list
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| Some((d["key"].as_str()?.to_string(), d["version"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    Ok(acked
        .iter()
        .filter(|(k, v)| have.get(*k) == Some(v))
        .count())
}

async fn wait_for<F: Fn() -> bool>(timeout: Duration, f: F) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    f()
}

/// Runs the demo in `dir`; the report says whether every check passed.
/// The pair and the edges are left running when the story reached its end.
async fn run(
    exe: &std::path::Path,
    opts: &DemoOptions,
    dir: &std::path::Path,
) -> (Report, Option<Deployment>) {
    let dir = dir.to_path_buf();
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut ph = Phases {
        bar,
        started: Instant::now(),
        current: String::new(),
        report: Report {
            dir: dir.clone(),
            ..Report::default()
        },
    };
    let r = story(exe, opts, &dir, &mut ph).await;
    ph.end();
    ph.bar.finish_and_clear();
    match r {
        Ok(d) => (ph.report, Some(d)),
        Err(e) => {
            ph.report
                .check("the story ran to the end", false, format!("{e:#}"));
            (ph.report, None)
        }
    }
}

async fn story(
    exe: &std::path::Path,
    opts: &DemoOptions,
    dir: &std::path::Path,
    ph: &mut Phases,
) -> anyhow::Result<Deployment> {
    const A: usize = 0;
    const B: usize = 1;
    let t = Duration::from_secs(30);
    ph.begin("start servers a and b (certificates, configs, processes)");
    let extra = format!("{FAST_TIMERS}\n");
    let extra = extra.replace(
        "[replication]\n",
        "[replication]\non_standby_loss = \"block\"\n",
    );
    let mut cl = ProcCluster::create(exe, dir, &["a", "b"], &extra)?;
    cl.start(A)?;
    cl.start(B)?;
    ph.bar.println(format!("  deployment in {}", dir.display()));

    ph.begin("pair: prepareForStandby on b, configureActiveForReplication on a");
    cl.pair(A, B, t).await?;
    ph.check(
        "DR set up",
        true,
        "a ACTIVE / STANDBY_RUNNING, b STANDBY / STANDBY_RUNNING".into(),
    );

    ph.begin(&format!(
        "start {} edges heartbeating both servers",
        opts.edges
    ));
    let ca = CertificateAuthority::load(&cl.certs)?;
    let sim = EdgeSim::start(
        &ca,
        SimSettings {
            servers: [cl.servers[A].edge.clone(), cl.servers[B].edge.clone()],
            count: opts.edges,
            heartbeat_interval_ms: 1_000,
            sample_interval_ms: 500,
            ..SimSettings::default()
        },
    )
    .await?;
    let all = opts.edges as u64;
    let ok = wait_for(t, || sim.summary().following[0] == all).await;
    ph.check(
        "every edge follows a",
        ok,
        sim.summary().line(&sim.settings.servers),
    );

    ph.begin(&format!(
        "write {} configuration documents ({} writers)",
        opts.writes, opts.writers
    ));
    let (acked, failed) = write_burst(cl.client(A), opts.writes, opts.writers, "site").await;
    ph.check(
        "writes acknowledged",
        failed == 0 && acked.len() == opts.writes,
        format!("{} acknowledged, {failed} failed", acked.len()),
    );

    ph.begin("disaster: kill -9 the active (a)");
    let samples_before = sim.summary().samples_acked;
    cl.kill9(A);
    cl.wait_state(B, "STANDBY", "FAILURE_GET_ACTIVE_STATUS", t)
        .await?;
    let ok = wait_for(t, || sim.summary().following_none == all).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let cached = sim.summary().cached_samples;
    ph.check(
        "edges follow nobody and cache monitoring",
        ok && cached > 0,
        format!("{cached} samples cached"),
    );

    ph.begin("promote b (disaster failover)");
    let promoted_at = Instant::now();
    let r = cl
        .client(B)
        .call(Method::PromoteStandbyToActive, json!({}))
        .await?;
    ph.check(
        "b promoted",
        r["epoch"] == 2,
        format!("epoch {}, dataLossBound {}", r["epoch"], r["dataLossBound"]),
    );
    let n = present(cl.client(B), &acked).await?;
    ph.check(
        "every acknowledged write is on b",
        n == acked.len(),
        format!("{n} of {} acknowledged writes present", acked.len()),
    );

    ph.begin("edges follow b and flush their caches");
    let ok = wait_for(t, || sim.summary().following[1] == all).await;
    let converge = promoted_at.elapsed();
    ph.check(
        "every edge follows b",
        ok,
        format!("{:.2} s after the promotion", converge.as_secs_f64()),
    );
    let ok = sim.pause_samples(t).await && wait_for(t, || sim.summary().cached_samples == 0).await;
    let s = sim.summary();
    ph.check(
        "cached samples delivered",
        ok,
        format!(
            "{} acknowledged after the outage, {} dropped",
            s.samples_acked - samples_before,
            s.dropped_samples
        ),
    );
    let summary = cl
        .client(B)
        .call(Method::MonitoringGetSummary, json!({}))
        .await?;
    let stored: BTreeMap<String, (u64, u64)> = summary["clients"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| {
                    Some((
                        c["clientId"].as_str()?.to_string(),
                        (c["samples"].as_u64()?, c["maxSeq"].as_u64()?),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut exact = 0;
    let mut wrong = Vec::new();
    for i in 0..opts.edges {
        let want = sim.acked_seq(i);
        let got = stored.get(&sim.client_id(i)).copied().unwrap_or((0, 0));
        // count == max seq == acknowledged seq: every seq from 1 stored, each once.
        if got == (want, want) {
            exact += 1;
        } else if wrong.len() < 3 {
            wrong.push(format!(
                "{}: acknowledged up to {want}, stored {} with max seq {}",
                sim.client_id(i),
                got.0,
                got.1
            ));
        }
    }
    let mut detail = format!(
        "{exact} of {} edges exact; {} duplicates discarded",
        opts.edges, summary["duplicatesDiscarded"]
    );
    for w in &wrong {
        detail.push_str("; ");
        detail.push_str(w);
    }
    ph.check(
        "each sample stored once, none missing",
        exact == opts.edges,
        detail,
    );

    ph.begin("restart the old active: it must become a zombie");
    cl.start(A)?;
    let z = cl.wait_state(A, "ZOMBIE", "ZOMBIE", t).await?;
    ph.check(
        "a fenced as ZOMBIE",
        z["fencedBy"] == 2,
        format!(
            "fenced by epoch {}, redirects to {}",
            z["fencedBy"], z["activeAddress"]
        ),
    );
    let refused = cl
        .client(A)
        .call(Method::ConfigurationPut, json!({"key": "late", "value": 1}))
        .await;
    let named = matches!(&refused, Err(e) if e.downcast_ref::<ApiError>().is_some_and(|a| a.message.contains(&cl.servers[B].admin)));
    ph.check(
        "the zombie refuses writes, naming b",
        named,
        refused
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "accepted!".into()),
    );
    let s = sim.summary();
    ph.check(
        "nobody follows the zombie",
        s.following[0] == 0,
        s.line(&sim.settings.servers),
    );

    ph.begin("rejoin a as the standby of b");
    cl.client(A)
        .call(Method::RejoinAsStandby, json!({}))
        .await?;
    cl.wait_state(A, "STANDBY", "STANDBY_RUNNING", t).await?;
    cl.wait_state(B, "ACTIVE", "STANDBY_RUNNING", t).await?;
    ph.check(
        "DR restored the other way round",
        true,
        "b ACTIVE / STANDBY_RUNNING, a STANDBY / STANDBY_RUNNING".into(),
    );
    // a caught up by snapshot, which names samples but does not carry them:
    // running, it holds the ones b stored during the outage too (copied).
    let stored = |v: &Value| {
        let i = &v["storageInfo"];
        (i["samples"].as_u64(), i["duplicate_samples"].as_u64())
    };
    let with = json!({ "with": ["storageInfo"] });
    let on_a = stored(
        &cl.client(A)
            .call(Method::GetReplicationStatus, with.clone())
            .await?,
    );
    let on_b = stored(
        &cl.client(B)
            .call(Method::GetReplicationStatus, with)
            .await?,
    );
    ph.check(
        "the rejoined standby holds every sample",
        on_a == on_b && on_a.1 == Some(0),
        format!(
            "samples stored: a {}, b {}; duplicates on a {}",
            on_a.0.unwrap_or(0),
            on_b.0.unwrap_or(0),
            on_a.1.unwrap_or(0)
        ),
    );
    ph.end();
    Ok(Deployment { cl, sim })
}

/// Exit code of a demo stopped by `signal` before its story ended (128 + the
/// signal's number, as shells report it).
fn signal_exit_code(signal: &str) -> i32 {
    match signal {
        "SIGTERM" => 128 + 15,
        _ => 128 + 2,
    }
}

/// `vcodr demo`: prints the report; exit code 0 only if every check passed.
///
/// SIGTERM and SIGINT (ctrl-c) are handled alike, at any moment: the
/// servers it started are stopped (killed mid-story, gracefully once the
/// story is over, e.g. with `--keep-running`) and the temp dir it made is
/// removed unless `--keep-dir` (a failed run keeps it for its logs; a
/// `--dir` is never removed).
pub async fn main(opts: DemoOptions) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("locating the vcodr binary")?;
    if opts.edges == 0 || opts.writes == 0 {
        bail!("--edges and --writes must be at least 1");
    }
    let (dir, made_here) = match &opts.dir {
        Some(d) => (d.clone(), false),
        None => (crate::tools::cluster::temp_dir("vcodr-demo")?, true),
    };
    let mut signals = crate::serve::StopSignals::new();
    let outcome = tokio::select! {
        r = run(&exe, &opts, &dir) => Ok(r),
        sig = signals.recv() => Err(sig),
    };
    let (report, deployment) = match outcome {
        Ok(r) => r,
        Err(sig) => {
            // The story's future is gone, and with it the cluster: its Drop
            // killed both servers and waited for them.
            println!("\n{sig}: demo interrupted; both servers stopped");
            keep_or_remove(&dir, made_here && !opts.keep_dir);
            return Ok(signal_exit_code(sig));
        }
    };
    print!("{}", report.render());
    if let Some(d) = deployment {
        if opts.keep_running {
            d.print_running()?;
            let sig = signals.recv().await;
            println!("{sig}: stopping both servers");
        }
        d.stop().await;
    }
    keep_or_remove(&dir, made_here && !opts.keep_dir && report.passed());
    Ok(if report.passed() { 0 } else { 1 })
}

/// Removes the deployment directory, or says where it is kept.
fn keep_or_remove(dir: &std::path::Path, remove: bool) {
    if remove {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) => println!("could not remove {}: {e}", dir.display()),
        }
    } else {
        println!("deployment, configs and logs kept in {}", dir.display());
    }
}
