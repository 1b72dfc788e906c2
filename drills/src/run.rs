//! Runs one schedule: a fresh deployment, pairing, edges, the workload,
//! each round's fault and operator steps, heal and recovery after each, and
//! at the end the final state for the checker.

use crate::check::{self, Archived, Checked, Final, Violation, CONVERGES, FAIL_STOP, HARNESS};
use crate::deploy::{Deployment, HEARTBEAT_INTERVAL_MS};
use crate::history::{name, History, Ms, Promotion, Record};
use crate::lab::{Host, Lab};
use crate::schedule::{CutDir, Round, Schedule, Side};
use crate::workload::Workload;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vcodr_server::ctl::{read_archive, ArchiveItem, Client};
use vcodr_server::edge_sim::EdgeReport;
use vcodr_server::storage::{Storage, WalStorage};

/// Longest wait for the pair to be STANDBY_RUNNING on both servers again.
pub const RECOVER_WAIT: Duration = Duration::from_secs(60);
/// Longest wait for a standby to notice it lost the active.
pub const DETECT_WAIT: Duration = Duration::from_secs(15);
/// Longest wait for a full disk to stop the server.
pub const FAIL_STOP_WAIT: Duration = Duration::from_secs(30);
/// Longest wait for every edge to follow the final active and flush.
pub const EDGES_WAIT: Duration = Duration::from_secs(30);
/// Longest wait, after a recovery, for every edge to hear from both servers.
pub const EDGES_REACH_WAIT: Duration = Duration::from_secs(15);
/// Steady writes after each recovery.
pub const STEADY: Duration = Duration::from_millis(1_500);
/// `rejoinAsStandby` again after this long without progress.
const REJOIN_RETRY: Duration = Duration::from_secs(5);
/// A standby facing a zombie (no active anywhere) this long is promoted.
const NO_ACTIVE_PROMOTE_AFTER: Duration = Duration::from_secs(3);
/// Concurrent `configuration/get` calls when reading the final state.
const READ_CONCURRENCY: usize = 16;
/// Pages of `getClientSamples` per edge, at most.
const SAMPLE_PAGES_MAX: usize = 10_000;

/// What one schedule did and found.
#[derive(Debug)]
pub struct ScheduleReport {
    pub schedule: Schedule,
    pub checked: Checked,
    /// Faults injected and operator steps, by kind.
    pub steps: BTreeMap<String, u64>,
    pub violations: Vec<Violation>,
    pub record: Record,
    pub dir: PathBuf,
    pub logs: Vec<PathBuf>,
    pub elapsed: Duration,
}

impl ScheduleReport {
    /// No violation at all.
    pub fn clean(&self) -> bool {
        self.violations.is_empty()
    }
}

struct Drill<'a> {
    lab: &'a Lab,
    dep: Deployment,
    h: Arc<History>,
    findings: Vec<Violation>,
    /// Counts of faults and operator steps.
    steps: BTreeMap<String, u64>,
}

/// Runs the schedule of `seed` in `lab`, in a fresh directory under `root`.
/// Never panics on a finding: everything that went wrong is a violation.
pub async fn run_schedule(lab: &Lab, exe: &Path, root: &Path, seed: u64) -> ScheduleReport {
    let started = Instant::now();
    let schedule = Schedule::generate(seed);
    println!("drills: {schedule}");
    let dir = root.join(format!("seed-{seed}"));
    let h = Arc::new(History::new());
    let mut report = ScheduleReport {
        schedule: schedule.clone(),
        checked: Checked::default(),
        steps: BTreeMap::new(),
        violations: Vec::new(),
        record: Record::default(),
        dir: dir.clone(),
        logs: ["a.log", "b.log", "edges.log"]
            .iter()
            .map(|f| dir.join(f))
            .collect(),
        elapsed: Duration::ZERO,
    };
    let dep = match std::fs::create_dir_all(&dir)
        .map_err(anyhow::Error::from)
        .and_then(|()| Deployment::create(lab, exe, &dir, schedule.policy))
    {
        Ok(d) => d,
        Err(e) => {
            report
                .violations
                .push(Violation::new(HARNESS, format!("deployment: {e:#}")));
            return report;
        }
    };
    let mut drill = Drill {
        lab,
        dep,
        h: h.clone(),
        findings: Vec::new(),
        steps: BTreeMap::new(),
    };
    let outcome = drill.run(&schedule).await;
    report.record = h.take();
    match outcome {
        Ok(fin) => {
            let (checked, mut v) =
                check::check(&report.record, &fin, schedule.policy, HEARTBEAT_INTERVAL_MS);
            report.checked = checked;
            report.violations.append(&mut v);
        }
        Err(e) => report
            .violations
            .push(Violation::new(HARNESS, format!("{e:#}")).at(h.now())),
    }
    // Findings first: they usually explain the rest.
    let mut all = std::mem::take(&mut drill.findings);
    all.append(&mut report.violations);
    report.violations = all;
    report.steps = std::mem::take(&mut drill.steps);
    drill.dep.kill_all();
    if !report.clean() {
        drill.dep.keep_disks();
    }
    drop(drill);
    report.elapsed = started.elapsed();
    report
}

impl Drill<'_> {
    fn client(&self, i: usize) -> Client {
        self.dep.servers[i].client.clone()
    }

    fn count(&mut self, kind: &str) {
        *self.steps.entry(kind.to_string()).or_default() += 1;
    }

    fn find(&mut self, property: &'static str, detail: String) {
        let v = Violation::new(property, detail).at(self.h.now());
        eprintln!("drills: seed finding: {v}");
        self.h.step("finding", v.to_string());
        self.findings.push(v);
    }

    async fn status(&self, i: usize) -> Option<Value> {
        self.client(i)
            .with_timeout(Duration::from_secs(2))
            .call("disasterRecovery/getReplicationStatus", json!({}))
            .await
            .ok()
    }

    /// Polls server `i`'s status until `pred` holds (or `timeout`).
    async fn wait_for(
        &self,
        i: usize,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        loop {
            if let Some(s) = self.status(i).await {
                if pred(&s) {
                    return Ok(s);
                }
                last = s;
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: {what} not reached within {timeout:?}; last status: role {} drState {} epoch {}",
                    name(i),
                    last["role"],
                    last["drState"],
                    last["epoch"]
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server whose role is ACTIVE (the higher epoch if both say so).
    async fn active(&self) -> Result<usize> {
        let (a, b) = tokio::join!(self.status(0), self.status(1));
        let act = |s: &Option<Value>| {
            s.as_ref()
                .filter(|s| s["role"] == "ACTIVE")
                .and_then(|s| s["epoch"].as_u64())
        };
        match (act(&a), act(&b)) {
            (Some(ea), Some(eb)) => Ok(if eb > ea { 1 } else { 0 }),
            (Some(_), None) => Ok(0),
            (None, Some(_)) => Ok(1),
            (None, None) => bail!(
                "no server is ACTIVE: a {} / {}, b {} / {}",
                a.as_ref().map_or(Value::Null, |s| s["role"].clone()),
                a.as_ref().map_or(Value::Null, |s| s["drState"].clone()),
                b.as_ref().map_or(Value::Null, |s| s["role"].clone()),
                b.as_ref().map_or(Value::Null, |s| s["drState"].clone()),
            ),
        }
    }

    async fn pair(&mut self, active: usize, standby: usize) -> Result<()> {
        let prep = self
            .client(standby)
            .call("disasterRecovery/prepareForStandby", json!({}))
            .await
            .context("prepareForStandby")?;
        let params = json!({
            "standbyList": [{
                "standbyAddress": self.dep.servers[standby].peer_address(),
                "standbyUuid": prep["vcoUuid"],
            }],
            "pairingToken": prep["pairingToken"],
        });
        self.client(active)
            .call("disasterRecovery/configureActiveForReplication", params)
            .await
            .context("configureActiveForReplication")?;
        for i in [active, standby] {
            self.wait_for(i, "STANDBY_RUNNING after pairing", RECOVER_WAIT, |s| {
                s["drState"] == "STANDBY_RUNNING"
            })
            .await?;
        }
        Ok(())
    }

    async fn run(&mut self, schedule: &Schedule) -> Result<Final> {
        self.dep.start(self.lab, 0).await?;
        self.dep.start(self.lab, 1).await?;
        self.pair(0, 1).await?;
        self.dep.start_edges(self.lab)?;
        self.wait_edges_follow(0).await?;
        let workload = Workload::start([self.client(0), self.client(1)], self.h.clone());
        tokio::time::sleep(STEADY).await;
        let mut healthy = true;
        for (i, round) in schedule.rounds.iter().enumerate() {
            self.h.step("round", format!("{}: {round}", i + 1));
            self.count(round.kind());
            if let Err(e) = self.round(round).await {
                self.find(HARNESS, format!("round {} ({round}): {e:#}", i + 1));
            }
            if let Err(e) = self.recover().await {
                self.find(CONVERGES, format!("after round {} ({round}): {e:#}", i + 1));
                healthy = false;
                break;
            }
            tokio::time::sleep(STEADY).await;
        }
        let writes = workload.stop().await;
        self.h.step("writers stopped", format!("{writes} writes"));
        if !healthy {
            bail!("the pair did not recover; the final state is not checked");
        }
        self.final_state().await
    }

    async fn wait_edges_follow(&mut self, server: usize) -> Result<Vec<EdgeReport>> {
        let deadline = Instant::now() + EDGES_WAIT;
        loop {
            let edges = self.edge_report().await?;
            if edges.iter().all(|e| e.following == Some(server)) {
                return Ok(edges);
            }
            if Instant::now() > deadline {
                bail!(
                    "edges do not all follow {} within {EDGES_WAIT:?}: {:?}",
                    name(server),
                    edges
                        .iter()
                        .map(|e| (e.client_id.as_str(), e.following))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Promotes server `i` and records it (with the promoted server's
    /// documents right after a `dataLossBound: 0` reply).
    async fn promote(&mut self, i: usize, force: bool, fence_applies: bool) -> bool {
        let c = self.client(i);
        let invoke = self.h.now();
        let r = c
            .call(
                "disasterRecovery/promoteStandbyToActive",
                json!({ "force": force }),
            )
            .await;
        let complete = self.h.now();
        self.record_promotion(i, force, fence_applies, invoke, complete, r)
            .await
    }

    async fn record_promotion(
        &mut self,
        i: usize,
        force: bool,
        fence_applies: bool,
        invoke: Ms,
        complete: Ms,
        r: Result<Value>,
    ) -> bool {
        let result = match r {
            Ok(v) => v["epoch"]
                .as_u64()
                .map(|e| (e, v["dataLossBound"].as_u64()))
                .ok_or_else(|| format!("a reply without an epoch: {v}")),
            Err(e) => Err(format!("{e:#}")),
        };
        let docs_after = match &result {
            Ok((_, Some(0))) => self.list(i).await.ok(),
            _ => None,
        };
        self.count(if force {
            "op: planned switchover"
        } else {
            "op: disaster promotion"
        });
        let p = Promotion {
            server: i,
            force,
            invoke,
            complete,
            result,
            fence_deadline_applies: fence_applies,
            docs_after,
        };
        self.h.step("promotion", p.to_string());
        let ok = p.result.is_ok();
        self.h.promotion(p);
        ok
    }

    async fn list(&self, i: usize) -> Result<Vec<(String, u64)>> {
        let v = self.client(i).call("configuration/list", json!({})).await?;
        v.as_array()
            .ok_or_else(|| anyhow!("configuration/list: not an array: {v}"))?
            .iter()
            .map(|d| match (d["key"].as_str(), d["version"].as_u64()) {
                (Some(k), Some(v)) => Ok((k.to_string(), v)),
                _ => Err(anyhow!("configuration/list row {d}")),
            })
            .collect()
    }

    async fn rejoin(&mut self, i: usize) -> Result<Value, String> {
        self.count("op: rejoin");
        let r = self
            .client(i)
            .call("disasterRecovery/rejoinAsStandby", json!({}))
            .await
            .map_err(|e| format!("{e:#}"));
        self.h.step(
            "op: rejoin",
            format!(
                "{}: {}",
                name(i),
                match &r {
                    Ok(v) => format!("ok {v}"),
                    Err(e) => format!("error {e}"),
                }
            ),
        );
        r
    }

    async fn wait_standby_lost(&mut self, sby: usize) -> bool {
        match self
            .wait_for(sby, "FAILURE_GET_ACTIVE_STATUS", DETECT_WAIT, |s| {
                s["drState"] == "FAILURE_GET_ACTIVE_STATUS"
            })
            .await
        {
            Ok(_) => true,
            Err(e) => {
                self.find(
                    check::DETECTS,
                    format!("the standby never noticed it lost the active: {e:#}"),
                );
                false
            }
        }
    }

    fn kill(&mut self, i: usize, why: &str) {
        self.dep.kill9(i);
        self.h.step("SIGKILL", format!("{} ({why})", name(i)));
    }

    async fn restart(&mut self, i: usize) -> Result<()> {
        self.h.step("restart", name(i));
        self.dep.start(self.lab, i).await
    }

    async fn sleep_until(&self, t: Instant) {
        tokio::time::sleep(t.saturating_duration_since(Instant::now())).await;
    }

    async fn round(&mut self, round: &Round) -> Result<()> {
        let act = self.active().await?;
        let sby = 1 - act;
        let side = |s: Side| match s {
            Side::Active => act,
            Side::Standby => sby,
        };
        let (ha, hs) = (Host::server(act), Host::server(sby));
        match *round {
            Round::PeerCut {
                dir,
                hold_ms,
                promote,
            } => {
                let until = Instant::now() + Duration::from_millis(hold_ms);
                match dir {
                    CutDir::Both => self.lab.drop_traffic(ha, hs, true, true)?,
                    CutDir::ActiveToStandby => self.lab.drop_traffic(ha, hs, false, true)?,
                    CutDir::StandbyToActive => self.lab.drop_traffic(hs, ha, false, true)?,
                }
                self.h
                    .step("cut", format!("{} <-> {} ({dir:?})", name(act), name(sby)));
                if promote && self.wait_standby_lost(sby).await {
                    // The edges reach both: they must fence the old active.
                    if self.promote(sby, false, true).await {
                        let _ = self
                            .wait_for(
                                act,
                                "ZOMBIE",
                                Duration::from_millis(HEARTBEAT_INTERVAL_MS + 3_000),
                                |s| s["role"] == "ZOMBIE",
                            )
                            .await;
                    }
                }
                self.sleep_until(until).await;
            }
            Round::EdgeCut { side: s, hold_ms } => {
                let x = side(s);
                self.lab
                    .drop_traffic(Host::server(x), Host::Edges, true, true)?;
                self.h.step("cut", format!("edges <-> {}", name(x)));
                tokio::time::sleep(Duration::from_millis(hold_ms)).await;
            }
            Round::Kill {
                side: s,
                down_ms,
                promote,
            } => {
                let x = side(s);
                let until = Instant::now() + Duration::from_millis(down_ms);
                self.kill(x, "fault");
                if promote && x == act && self.wait_standby_lost(sby).await {
                    self.promote(sby, false, false).await;
                }
                self.sleep_until(until).await;
                self.restart(x).await?;
            }
            Round::Pause {
                side: s,
                hold_ms,
                promote,
            } => {
                let x = side(s);
                let until = Instant::now() + Duration::from_millis(hold_ms);
                self.dep.signal(x, "STOP")?;
                self.h.step("SIGSTOP", name(x));
                if promote && x == act && self.wait_standby_lost(sby).await {
                    self.promote(sby, false, false).await;
                }
                self.sleep_until(until).await;
                self.dep.signal(x, "CONT")?;
                self.h.step("SIGCONT", name(x));
            }
            Round::Switchover => {
                self.promote(sby, true, true).await;
            }
            Round::KillDuringSwitchover { promoter, delay_ms } => {
                let victim = if promoter { sby } else { act };
                self.promote_and_kill(sby, true, victim, delay_ms).await?;
            }
            Round::KillDuringDisasterPromotion { delay_ms } => {
                self.lab.drop_traffic(ha, hs, true, true)?;
                self.h
                    .step("cut", format!("{} <-> {} (Both)", name(act), name(sby)));
                if self.wait_standby_lost(sby).await {
                    self.promote_and_kill(sby, false, sby, delay_ms).await?;
                }
            }
            Round::KillDuringRejoin { delay_ms } => {
                if self.promote(sby, true, true).await {
                    self.wait_for(act, "ZOMBIE", Duration::from_secs(10), |s| {
                        s["role"] == "ZOMBIE"
                    })
                    .await?;
                    let c = self.client(act);
                    self.count("op: rejoin");
                    let t = self
                        .h
                        .step("op: rejoin", format!("{} (to be killed)", name(act)));
                    let call = tokio::spawn(async move {
                        c.call("disasterRecovery/rejoinAsStandby", json!({})).await
                    });
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    self.kill(act, &format!("{} ms into its rejoin", self.h.now() - t));
                    let r = call.await.map_err(|e| anyhow!("{e}"))?;
                    self.h.step(
                        "op: rejoin answer",
                        format!(
                            "{}: {}",
                            name(act),
                            r.map_or_else(|e| format!("{e:#}"), |v| v.to_string())
                        ),
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    self.restart(act).await?;
                }
            }
            Round::FullDisk { promote } => {
                let filler = self.dep.fill_disk(act)?;
                self.h.step("full disk", format!("under {}", name(act)));
                match self.dep.wait_exit(act, FAIL_STOP_WAIT).await {
                    Ok(code) => {
                        self.h
                            .step("exit", format!("{} exited with {code:?}", name(act)));
                        if code == Some(0) {
                            self.find(
                                FAIL_STOP,
                                format!("{} exited with code 0 on a full disk", name(act)),
                            );
                        }
                    }
                    Err(e) => {
                        self.find(
                            FAIL_STOP,
                            format!("{} kept running on a full disk: {e:#}", name(act)),
                        );
                        self.kill(act, "did not fail-stop");
                    }
                }
                if promote && self.wait_standby_lost(sby).await {
                    self.promote(sby, false, false).await;
                }
                std::fs::remove_file(&filler)
                    .with_context(|| format!("freeing {}", filler.display()))?;
                self.h.step("space freed", name(act));
                self.restart(act).await?;
            }
        }
        Ok(())
    }

    /// Promotes `promoted` and SIGKILLs `victim` `delay_ms` after the call;
    /// records the promotion's answer; restarts the victim a second later.
    async fn promote_and_kill(
        &mut self,
        promoted: usize,
        force: bool,
        victim: usize,
        delay_ms: u64,
    ) -> Result<()> {
        let c = self.client(promoted);
        let h = self.h.clone();
        let invoke = h.now();
        let call = tokio::spawn(async move {
            let r = c
                .call(
                    "disasterRecovery/promoteStandbyToActive",
                    json!({ "force": force }),
                )
                .await;
            (h.now(), r)
        });
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let t = self.h.now() - invoke;
        self.kill(
            victim,
            &format!("{t} ms into the promotion of {}", name(promoted)),
        );
        let (complete, r) = call.await.map_err(|e| anyhow!("{e}"))?;
        self.record_promotion(promoted, force, false, invoke, complete, r)
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.restart(victim).await
    }

    /// Heal, continue, restart; then the operator's steps until both
    /// servers say STANDBY_RUNNING: rejoin a zombie, and promote a standby
    /// that faces a zombie (nobody is active) once it says
    /// FAILURE_GET_ACTIVE_STATUS.
    async fn recover(&mut self) -> Result<()> {
        self.lab.heal()?;
        self.h.step("heal", "every cut removed");
        for i in 0..2 {
            if self.dep.servers[i].stopped {
                self.dep.signal(i, "CONT")?;
                self.h.step("SIGCONT", name(i));
            }
        }
        let before = self.edge_report().await?;
        self.recover_pair().await?;
        self.wait_edges_reach_both(&before).await
    }

    async fn edge_report(&mut self) -> Result<Vec<EdgeReport>> {
        let r = self
            .dep
            .edges_command("report", Duration::from_secs(10))
            .await?;
        serde_json::from_value(r["edges"].clone()).with_context(|| format!("edge-sim report {r}"))
    }

    /// Every edge gets replies from both servers again (from the processes
    /// running now, also after a restart): so that the next round's fault
    /// starts with every edge reaching both, as the fencing deadline assumes.
    async fn wait_edges_reach_both(&mut self, before: &[EdgeReport]) -> Result<()> {
        let deadline = Instant::now() + EDGES_REACH_WAIT;
        loop {
            let now = self.edge_report().await?;
            let behind: Vec<String> = now
                .iter()
                .zip(before)
                .flat_map(|(n, b)| {
                    (0..2)
                        .filter(|&s| n.replies[s] < b.replies[s] + 2)
                        .map(|s| format!("{} from {}", n.client_id, name(s)))
                        .collect::<Vec<_>>()
                })
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.find(
                    CONVERGES,
                    format!(
                        "edges get no replies within {EDGES_REACH_WAIT:?} of the recovery: {}",
                        behind.join(", ")
                    ),
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn recover_pair(&mut self) -> Result<()> {
        let deadline = Instant::now() + RECOVER_WAIT;
        let mut last_rejoin: [Option<Instant>; 2] = [None; 2];
        let mut no_active_since: Option<Instant> = None;
        let mut last_promote: Option<Instant> = None;
        loop {
            for i in 0..2 {
                if let Some(code) = self.dep.servers[i].exited() {
                    self.find(
                        CONVERGES,
                        format!(
                            "{} exited by itself (code {code:?}); restarting it",
                            name(i)
                        ),
                    );
                }
                if !self.dep.servers[i].running() {
                    self.restart(i).await?;
                }
            }
            let (a, b) = tokio::join!(self.status(0), self.status(1));
            let st = [a, b];
            let rs = |i: usize| -> (String, String) {
                st[i]
                    .as_ref()
                    .map_or(("UNREACHABLE".into(), "-".into()), |s| {
                        (
                            s["role"].as_str().unwrap_or("?").to_string(),
                            s["drState"].as_str().unwrap_or("?").to_string(),
                        )
                    })
            };
            let (r0, r1) = (rs(0), rs(1));
            let roles = [r0.0.as_str(), r1.0.as_str()];
            let states = [r0.1.as_str(), r1.1.as_str()];
            if states == ["STANDBY_RUNNING"; 2]
                && roles.contains(&"ACTIVE")
                && roles.contains(&"STANDBY")
            {
                self.h
                    .step("recovered", format!("a {} / b {}", roles[0], roles[1]));
                return Ok(());
            }
            for z in 0..2 {
                let o = 1 - z;
                if roles[z] != "ZOMBIE" {
                    continue;
                }
                if matches!(roles[o], "ACTIVE" | "STANDALONE")
                    && last_rejoin[z].is_none_or(|t| t.elapsed() > REJOIN_RETRY)
                {
                    last_rejoin[z] = Some(Instant::now());
                    let _ = self.rejoin(z).await;
                }
                if roles[o] == "STANDBY" && states[o] == "FAILURE_GET_ACTIVE_STATUS" {
                    let since = *no_active_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > NO_ACTIVE_PROMOTE_AFTER
                        && last_promote.is_none_or(|t| t.elapsed() > REJOIN_RETRY)
                    {
                        last_promote = Some(Instant::now());
                        self.h.step(
                            "op: no active",
                            format!(
                                "{} is a zombie and {} a standby without its active",
                                name(z),
                                name(o)
                            ),
                        );
                        self.promote(o, false, false).await;
                    }
                } else {
                    no_active_since = None;
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "not STANDBY_RUNNING on both within {RECOVER_WAIT:?}: a {} / {}, b {} / {}",
                    roles[0],
                    states[0],
                    roles[1],
                    states[1]
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn final_state(&mut self) -> Result<Final> {
        let act = self.active().await?;
        let sby = 1 - act;
        // The standby holds what the active holds.
        let want = self
            .status(act)
            .await
            .and_then(|s| s["replication"]["lastIndex"].as_u64());
        let caught_up = self
            .wait_for(
                sby,
                "the active's last index",
                Duration::from_secs(20),
                |s| want.is_some() && s["replication"]["lastIndex"].as_u64() >= want,
            )
            .await;
        if let Err(e) = caught_up {
            self.find(CONVERGES, format!("the standby does not catch up: {e:#}"));
        }
        let mut fin = Final {
            active: act,
            ..Final::default()
        };
        // Every document on the final active.
        let keys = self.list(act).await?;
        let mut gets = tokio::task::JoinSet::new();
        let gate = Arc::new(tokio::sync::Semaphore::new(READ_CONCURRENCY));
        for (key, _) in keys {
            let (c, gate) = (self.client(act), gate.clone());
            gets.spawn(async move {
                let _permit = gate.acquire_owned().await;
                let r = c.call("configuration/get", json!({ "key": key })).await;
                (key, r)
            });
        }
        while let Some(r) = gets.join_next().await {
            let (key, r) = r.map_err(|e| anyhow!("{e}"))?;
            let d = r.with_context(|| format!("configuration/get {key}"))?;
            let version = d["version"]
                .as_u64()
                .ok_or_else(|| anyhow!("{key}: no version in {d}"))?;
            fin.docs.insert(key, (d["value"].clone(), version));
        }
        // Both archives, every page.
        for i in 0..2 {
            let mut rows = Vec::new();
            let read = read_archive(&self.client(i), 0, None, |item| {
                if let ArchiveItem::Entry(e) = item {
                    rows.push(Archived {
                        server: i,
                        epoch: e["epoch"].as_u64().unwrap_or(0),
                        index: e["index"].as_u64().unwrap_or(0),
                        entry: e["entry"].clone(),
                    });
                }
                Ok(())
            })
            .await
            .with_context(|| format!("reading {}'s divergence archive", name(i)))?;
            if read.count != read.total {
                self.find(
                    HARNESS,
                    format!(
                        "{}'s archive: read {} of {} rows",
                        name(i),
                        read.count,
                        read.total
                    ),
                );
            }
            self.h
                .step("archive", format!("{}: {} rows", name(i), read.total));
            fin.archive.append(&mut rows);
        }
        // Edges: follow the final active, stop sampling, flush.
        if let Err(e) = self.wait_edges_follow(act).await {
            self.find(CONVERGES, format!("{e:#}"));
        }
        let paused = self
            .dep
            .edges_command("pause", Duration::from_secs(40))
            .await?;
        if paused["paused"] != true {
            self.find(HARNESS, format!("edge-sim pause: {paused}"));
        }
        let deadline = Instant::now() + EDGES_WAIT;
        loop {
            let r = self
                .dep
                .edges_command("report", Duration::from_secs(10))
                .await?;
            let edges: Vec<EdgeReport> = serde_json::from_value(r["edges"].clone())?;
            if edges.iter().all(|e| e.cached == 0) || Instant::now() > deadline {
                fin.edges = edges;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let c = self.client(act);
        fin.summary = c.call("monitoring/getSummary", json!({})).await?;
        for e in &fin.edges {
            let mut got = Vec::new();
            let mut after = 0;
            for _ in 0..SAMPLE_PAGES_MAX {
                let page = c
                    .call(
                        "monitoring/getClientSamples",
                        json!({ "clientId": e.client_id, "afterSeq": after, "limit": 1000 }),
                    )
                    .await?;
                let rows = page["samples"].as_array().cloned().unwrap_or_default();
                if rows.is_empty() {
                    break;
                }
                for s in rows {
                    let seq = s["seq"].as_u64().ok_or_else(|| anyhow!("sample {s}"))?;
                    after = after.max(seq);
                    got.push((seq, s["payload"].as_str().unwrap_or("").to_string()));
                }
            }
            fin.samples.insert(e.client_id.clone(), got);
        }
        // The other server's samples, from its storage file once it stopped
        // (a standby serves no monitoring reads): where a sample missing on
        // the final active may still be.
        for i in [sby, act] {
            if let Err(e) = self.dep.stop(i, Duration::from_secs(30)).await {
                self.find(HARNESS, format!("stopping {}: {e:#}", name(i)));
            }
        }
        // The data dir: the redb file and the write-ahead log in front of it.
        let file = self.dep.storage_file(sby);
        let store = WalStorage::open(file.parent().unwrap_or(&file))
            .with_context(|| format!("opening {}'s storage", name(sby)))?;
        for e in &fin.edges {
            let rows = store
                .samples(&e.client_id, 0, usize::MAX)
                .with_context(|| format!("{}'s samples of {}", name(sby), e.client_id))?;
            fin.other_samples.insert(
                e.client_id.clone(),
                rows.into_iter().map(|(q, _)| q).collect(),
            );
        }
        Ok(fin)
    }
}
