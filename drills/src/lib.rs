//! # vcodr-drills: fault drills on real processes
//!
//! The evidence behind "nothing lost": two `vcodr serve` processes and a
//! `vcodr edge-sim`, each in a network namespace of its own, a writer pool
//! and a status poller in this process, and a seeded nemesis that cuts
//! links (both ways, one way, the edges from one server), SIGKILLs and
//! restarts servers (also in the middle of a promotion or a rejoin),
//! SIGSTOPs and continues them and fills the filesystem under the active,
//! with the operator's steps in between: disaster promotion, planned
//! switchover, rejoin, under the `block` or the `degrade` policy. Every
//! write, promotion, fault and status seen goes into a [`history`]; after
//! heal and recovery the [`check`]er tests it against SPEC §9.
//!
//! * [`lab`]: the namespaces, bridge, addresses and cuts (topology drawn there);
//! * [`deploy`]: certificates, configs, tmpfs data dirs, processes;
//! * [`schedule`]: the seeded nemesis;
//! * [`workload`]: writers and poller;
//! * [`run`]: one schedule, round by round, with recovery;
//! * [`check`]: the properties.
//!
//! ## Calling contract
//! Needs root (namespaces, iptables, tmpfs), `ip` and `iptables` (from
//! [`vcodr_testkit::require`]) and the `vcodr` program (the drills'
//! `vcodr-drilled` binary). [`Plan::from_env`] reads the seeds; [`run_plan`]
//! runs them one after the other in one [`lab::Lab`], printing each
//! schedule and, on failure, its seed, schedule, the history around each
//! violation and the servers' log paths; a failed schedule's directory is
//! kept, a passed one's removed. Each call makes its own lab and removes
//! it when done (also on panic).
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! let tools = vcodr_testkit::require(&["iproute2", "iptables"])?;
//! let plan = vcodr_drills::Plan::from_env(&[1, 2, 3])?;
//! let totals = vcodr_drills::run_plan(
//!     &plan,
//!     tools.path("ip"),
//!     tools.path("iptables"),
//!     std::path::Path::new("target/release/vcodr"),
//! )
//! .await?;
//! assert!(totals.failed.is_empty(), "{totals}");
//! # Ok(()) }
//! ```

pub mod check;
pub mod deploy;
pub mod history;
pub mod lab;
pub mod run;
pub mod schedule;
pub mod workload;

use anyhow::{anyhow, Context, Result};
use check::Checked;
use history::Ms;
use run::ScheduleReport;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Schedules a long run may ask for, at most.
pub const SEEDS_MAX: u64 = 1_000_000;

/// Which schedules to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub seeds: Vec<u64>,
    /// Start no schedule after this long (`VCODR_DRILL_MINUTES`).
    pub time_limit: Option<Duration>,
    /// How the seeds were chosen, for the log.
    pub source: String,
}

impl Plan {
    /// From the environment: `VCODR_DRILL_SEED=n` alone replays schedule
    /// n; `VCODR_DRILL_SEEDS=N` runs N schedules from `VCODR_DRILL_SEED`
    /// (or from a base taken from the clock, printed); `VCODR_DRILL_MINUTES=M`
    /// starts no schedule after M minutes. Without any, `ci_seeds`.
    pub fn from_env(ci_seeds: &[u64]) -> Result<Plan> {
        let var = |name: &str| -> Result<Option<u64>> {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| anyhow!("{name}={v:?}: give a whole number")),
                Err(_) => Ok(None),
            }
        };
        let seed = var("VCODR_DRILL_SEED")?;
        let count = var("VCODR_DRILL_SEEDS")?;
        let minutes = var("VCODR_DRILL_MINUTES")?;
        let time_limit = minutes.map(|m| Duration::from_secs(m * 60));
        let plan = match (seed, count) {
            (_, Some(n)) if n > SEEDS_MAX => {
                anyhow::bail!("VCODR_DRILL_SEEDS={n}: at most {SEEDS_MAX}")
            }
            (Some(s), None) => Plan {
                seeds: vec![s],
                time_limit,
                source: format!("VCODR_DRILL_SEED={s}"),
            },
            (base, Some(n)) => {
                let base = base.unwrap_or_else(|| {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(1, |d| d.as_secs() % 1_000_000)
                        * 1_000
                });
                Plan {
                    seeds: (base..base.saturating_add(n)).collect(),
                    time_limit,
                    source: format!("VCODR_DRILL_SEEDS={n} from base seed {base}"),
                }
            }
            (None, None) => Plan {
                seeds: ci_seeds.to_vec(),
                time_limit,
                source: format!("the CI set {ci_seeds:?}"),
            },
        };
        Ok(plan)
    }
}

/// Figures of a run of several schedules.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    pub schedules: u64,
    /// Seeds of the schedules that failed.
    pub failed: Vec<u64>,
    /// Faults and operator steps by kind.
    pub steps: BTreeMap<String, u64>,
    pub checked: Checked,
    pub elapsed: Duration,
    /// Schedules per policy.
    pub policies: BTreeMap<&'static str, u64>,
    /// Where the failed schedules' directories are.
    pub kept: Vec<PathBuf>,
}

impl Totals {
    fn add(&mut self, r: &ScheduleReport) {
        self.schedules += 1;
        *self.policies.entry(r.schedule.policy.as_str()).or_default() += 1;
        for (k, n) in &r.steps {
            *self.steps.entry(k.clone()).or_default() += n;
        }
        let (a, b) = (&mut self.checked, &r.checked);
        a.acked += b.acked;
        a.failed += b.failed;
        a.unknown += b.unknown;
        a.acked_archived += b.acked_archived;
        a.samples_generated += b.samples_generated;
        a.samples_stored += b.samples_stored;
        a.samples_archived += b.samples_archived;
        a.samples_dropped += b.samples_dropped;
        a.samples_only_on_other += b.samples_only_on_other;
        a.promotions += b.promotions;
        a.fence_ms_max = a.fence_ms_max.max(b.fence_ms_max);
        if !r.clean() {
            self.failed.push(r.schedule.seed);
            self.kept.push(r.dir.clone());
        }
    }
}

impl fmt::Display for Totals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.checked;
        writeln!(
            f,
            "drills: {} schedules in {:.0} s ({}), {} failed{}",
            self.schedules,
            self.elapsed.as_secs_f64(),
            self.policies
                .iter()
                .map(|(p, n)| format!("{n} {p}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.failed.len(),
            if self.failed.is_empty() {
                String::new()
            } else {
                format!(" (seeds {:?}; kept: {:?})", self.failed, self.kept)
            }
        )?;
        writeln!(f, "  faults and operator steps:")?;
        for (k, n) in &self.steps {
            writeln!(f, "    {n:>6}  {k}")?;
        }
        writeln!(
            f,
            "  writes checked: {} acknowledged ({} of them only in a divergence archive, degrade), {} failed, {} outcome unknown",
            c.acked, c.acked_archived, c.failed, c.unknown
        )?;
        writeln!(
            f,
            "  samples checked: {} generated, {} stored on the final active, {} archived, {} dropped by full caches, {} on the other server only",
            c.samples_generated,
            c.samples_stored,
            c.samples_archived,
            c.samples_dropped,
            c.samples_only_on_other
        )?;
        write!(
            f,
            "  promotions: {} answered; slowest fencing where the deadline applies: {} ms after the reply",
            c.promotions, c.fence_ms_max
        )
    }
}

/// Runs every schedule of `plan`; see the crate's calling contract.
pub async fn run_plan(plan: &Plan, ip: &Path, iptables: &Path, exe: &Path) -> Result<Totals> {
    let started = Instant::now();
    let lab = lab::Lab::create(ip, iptables)?;
    let root = std::env::temp_dir().join(format!(
        "{}-{}-{:08x}",
        lab::DIR_PREFIX,
        std::process::id(),
        vcodr_server::serve::random_u128()? as u32
    ));
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    println!(
        "drills: {} schedules ({}); network {} ({}.0/24); directories under {}",
        plan.seeds.len(),
        plan.source,
        lab.tag,
        lab.net.map(|o| o.to_string()).join("."),
        root.display()
    );
    let mut totals = Totals::default();
    for &seed in &plan.seeds {
        if plan.time_limit.is_some_and(|l| started.elapsed() > l) {
            println!("drills: time limit reached; no more schedules");
            break;
        }
        let report = run::run_schedule(&lab, exe, &root, seed).await;
        if report.clean() {
            println!(
                "drills: seed {seed} passed in {:.1} s: {} writes acknowledged, {} failed, {} unknown; {} samples",
                report.elapsed.as_secs_f64(),
                report.checked.acked,
                report.checked.failed,
                report.checked.unknown,
                report.checked.samples_generated
            );
            let _ = std::fs::remove_dir_all(&report.dir);
        } else {
            println!("{}", failure_text(&report));
        }
        totals.add(&report);
        totals.elapsed = started.elapsed();
    }
    if totals.failed.is_empty() {
        let _ = std::fs::remove_dir(&root);
    }
    totals.elapsed = started.elapsed();
    Ok(totals)
}

/// History lines within this many ms of a violation are printed with it.
const AROUND_MS: Ms = 3_000;
/// Violations listed per schedule.
const VIOLATIONS_LISTED: usize = 40;
/// Violations printed in full (with their history) per schedule.
const VIOLATIONS_SHOWN: usize = 8;

/// Everything a reader needs to understand a failed schedule.
pub fn failure_text(r: &ScheduleReport) -> String {
    use std::fmt::Write as _;
    let seed = r.schedule.seed;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n==== DRILL FAILED: seed {seed} ====\nreplay: VCODR_DRILL_SEED={seed} cargo test --release -p vcodr-drills -- --nocapture\n{}",
        r.schedule
    );
    let _ = writeln!(out, "{} violations:", r.violations.len());
    for v in r.violations.iter().take(VIOLATIONS_LISTED) {
        let _ = writeln!(out, "  - {v}");
    }
    if r.violations.len() > VIOLATIONS_LISTED {
        let _ = writeln!(
            out,
            "  … and {} more",
            r.violations.len() - VIOLATIONS_LISTED
        );
    }
    let _ = writeln!(out, "faults, operator steps and promotions:");
    for s in &r.record.steps {
        let _ = writeln!(out, "  {s}");
    }
    for v in r.violations.iter().take(VIOLATIONS_SHOWN) {
        let _ = writeln!(out, "-- {v}");
        for w in &v.writes {
            let _ = writeln!(out, "   {w}");
            for other in r
                .record
                .writes
                .iter()
                .filter(|o| o.key == w.key && o.n != w.n)
            {
                let _ = writeln!(out, "   same key: {other}");
            }
        }
        if let Some(at) = v.at {
            let (lo, hi) = (at.saturating_sub(AROUND_MS), at + AROUND_MS);
            for p in &r.record.promotions {
                if p.complete >= lo && p.invoke <= hi {
                    let _ = writeln!(out, "   {p}");
                }
            }
            for s in &r.record.segments {
                if s.last >= lo && s.first <= hi {
                    let _ = writeln!(out, "   {s}");
                }
            }
        }
    }
    let _ = writeln!(out, "logs:");
    for l in &r.logs {
        let _ = writeln!(out, "  {}", l.display());
    }
    let _ = writeln!(
        out,
        "kept for inspection: {} (configs, certificates, logs; kept-disk-a/b: the data dirs)",
        r.dir.display()
    );
    out
}
