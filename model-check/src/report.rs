//! Running a check and telling an operator what it found: figures, each
//! property's verdict, and any counterexample step by step.

use crate::model::*;
use crate::nodes::*;
use crate::properties;
use stateright::{Checker, Expectation, HasDiscoveries, Model};
use std::fmt::Write as _;
use std::time::{Duration, Instant};
use vcodr_core::*;

/// How to run the checker.
#[derive(Clone, Debug)]
pub struct RunOpts {
    pub threads: usize,
    /// Stop exploring below this depth (`None`: exhaustive within the model's budgets).
    pub depth: Option<usize>,
    /// Stop at the first safety counterexample (mutant runs).
    pub stop_at_first_failure: bool,
    /// Give up after this long (the report then says the search is incomplete).
    pub timeout: Option<Duration>,
}

impl Default for RunOpts {
    fn default() -> Self {
        RunOpts {
            threads: 2,
            depth: None,
            stop_at_first_failure: false,
            timeout: None,
        }
    }
}

/// What a property came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `Always`: no counterexample in the explored states.
    Holds,
    /// `Always`: a counterexample was found.
    Violated,
    /// `Sometimes`: an example was found.
    Reached,
    /// `Sometimes`: no example in the explored states.
    NotReached,
}

/// The verdict on one property.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub name: &'static str,
    pub expectation: Expectation,
    pub outcome: Outcome,
    /// The path of a counterexample (or example), rendered step by step.
    pub path: Option<Vec<String>>,
}

/// The result of one check.
#[derive(Clone, Debug)]
pub struct Report {
    pub mutant: Mutant,
    pub unique_states: usize,
    pub states: usize,
    pub max_depth: usize,
    pub elapsed: Duration,
    /// Every state within the budgets was explored (no depth cap, timeout or early stop hit).
    pub complete: bool,
    pub verdicts: Vec<Verdict>,
}

impl Report {
    pub fn failures(&self) -> impl Iterator<Item = &Verdict> {
        self.verdicts
            .iter()
            .filter(|v| v.outcome == Outcome::Violated)
    }
    pub fn unreached(&self) -> impl Iterator<Item = &Verdict> {
        self.verdicts
            .iter()
            .filter(|v| v.outcome == Outcome::NotReached)
    }
    pub fn states_per_second(&self) -> f64 {
        self.unique_states as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The summary an operator reads.
    pub fn render(&self, show_examples: bool) -> String {
        let mut s = String::new();
        let mutant = Mutant::ALL
            .iter()
            .find(|(m, _)| *m == self.mutant)
            .map_or("none", |(_, n)| n);
        let _ = writeln!(
            s,
            "mutant: {mutant}\nunique states: {}  (generated {})\nmax depth: {}\ntime: {:.2} s  ({:.0} unique states/s)\nsearch: {}",
            self.unique_states,
            self.states,
            self.max_depth,
            self.elapsed.as_secs_f64(),
            self.states_per_second(),
            if self.complete {
                "exhaustive within the model's budgets"
            } else {
                "INCOMPLETE (depth cap, timeout or stopped at the first counterexample)"
            }
        );
        let _ = writeln!(s, "properties:");
        for v in &self.verdicts {
            let tag = match v.outcome {
                Outcome::Holds => "holds",
                Outcome::Violated => "VIOLATED",
                Outcome::Reached => "reached",
                Outcome::NotReached => "NOT REACHED",
            };
            let kind = match v.expectation {
                Expectation::Always => "always",
                Expectation::Sometimes => "sometimes",
                Expectation::Eventually => "eventually",
            };
            let _ = writeln!(s, "  [{tag:>11}] {kind:<9} {}", v.name);
        }
        for v in &self.verdicts {
            let wanted =
                v.outcome == Outcome::Violated || (show_examples && v.outcome == Outcome::Reached);
            if let (true, Some(path)) = (wanted, &v.path) {
                let what = if v.outcome == Outcome::Violated {
                    "counterexample"
                } else {
                    "example"
                };
                let _ = writeln!(
                    s,
                    "\n{what} for \"{}\" ({} steps):",
                    v.name,
                    path.len().saturating_sub(1) / 2
                );
                for line in path {
                    let _ = writeln!(s, "{line}");
                }
            }
        }
        s
    }
}

/// Runs the breadth-first checker on `cfg` and reports.
pub fn run(cfg: ModelCfg, opts: &RunOpts) -> Report {
    let mutant = cfg.mutant;
    let model = DrModel::new(cfg);
    let props = model.properties();
    let mut b = model.clone().checker().threads(opts.threads.max(1));
    if let Some(d) = opts.depth {
        b = b.target_max_depth(d);
    }
    if let Some(t) = opts.timeout {
        b = b.timeout(t);
    }
    if opts.stop_at_first_failure {
        b = b.finish_when(HasDiscoveries::AnyFailures);
    }
    let start = Instant::now();
    let checker = b.spawn_bfs().join();
    let elapsed = start.elapsed();
    let discoveries = checker.discoveries();
    let mut early_stop = false;
    let verdicts = props
        .iter()
        .map(|p| {
            let found = discoveries.get(p.name);
            let outcome = match (&p.expectation, found.is_some()) {
                (Expectation::Always, true) => {
                    early_stop |= opts.stop_at_first_failure;
                    Outcome::Violated
                }
                (Expectation::Always, false) => Outcome::Holds,
                (_, true) => Outcome::Reached,
                (_, false) => Outcome::NotReached,
            };
            Verdict {
                name: p.name,
                expectation: p.expectation.clone(),
                outcome,
                path: found.map(|path| render_path(&model, path.clone().into_vec())),
            }
        })
        .collect();
    let timed_out = opts.timeout.is_some_and(|t| elapsed >= t);
    Report {
        mutant,
        unique_states: checker.unique_state_count(),
        states: checker.state_count(),
        max_depth: checker.max_depth(),
        elapsed,
        complete: opts.depth.is_none() && !timed_out && !early_stop,
        verdicts,
    }
}

/// A path as numbered steps, each followed by the state it leads to.
pub fn render_path(model: &DrModel, steps: Vec<(State, Option<Action>)>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((first, _)) = steps.first() {
        out.push(format!("  start: {}", summarize(model, first)));
    }
    for (i, w) in steps.windows(2).enumerate() {
        let (prev, action) = (&w[0].0, &w[0].1);
        let next = &w[1].0;
        if let Some(a) = action {
            out.push(format!("  {:>2}. {}", i + 1, describe_step(prev, a)));
            out.push(format!("      -> {}", summarize(model, next)));
        }
    }
    out
}

fn node_name(n: NodeId) -> String {
    match n {
        NodeId::Server(s) => server_name(s).to_string(),
        NodeId::Edge(e) => edge_client(e),
    }
}

fn link_name(l: Link) -> String {
    match l {
        Link::Peer => "a <-> b".into(),
        Link::Edge(e, s) => format!("{} <-> {}", edge_client(e), server_name(s)),
    }
}

/// An action in an operator's words, without the state (the Explorer's labels).
pub fn describe_action_plain(a: &Action) -> String {
    match *a {
        Action::Deliver(i) => format!("deliver message #{i}"),
        Action::Drop(i) => format!("lose message #{i}"),
        Action::Timer(s, Timer::PeerTick) => format!("{}: peer tick", server_name(s)),
        Action::Timer(s, Timer::StandbyGrace) => {
            format!("{}: standby_grace expires", server_name(s))
        }
        Action::EdgeTick(e) => format!("{}: heartbeat timer", edge_client(e)),
        Action::Flush(s) => format!("{}: disk commits the oldest pending write", server_name(s)),
        Action::Crash(s) => format!("{} CRASHES (unflushed writes lost)", server_name(s)),
        Action::Restart(s) => format!("{} restarts from its disk", server_name(s)),
        Action::Cut(l) => format!("PARTITION: cut {}", link_name(l)),
        Action::Heal(l) => format!("heal {}", link_name(l)),
        Action::Put(s) => format!("operator: configuration/put on {}", server_name(s)),
        Action::Promote(s, force) => format!(
            "operator: promoteStandbyToActive {{force:{force}}} on {}",
            server_name(s)
        ),
        Action::Rejoin(s) => format!("operator: rejoinAsStandby on {}", server_name(s)),
        Action::Prepare(s) => format!("operator: prepareForStandby on {}", server_name(s)),
        Action::Configure(s) => format!(
            "operator: configureActiveForReplication on {}",
            server_name(s)
        ),
        Action::Sample(e) => format!("{}: new monitoring sample", edge_client(e)),
        Action::Forge(s, f) => format!(
            "HOSTILE x -> {} ({} link): forged {}",
            server_name(s),
            match f.channel() {
                crate::hostile::Channel::Peer => "peer",
                crate::hostile::Channel::Edge => "edge",
            },
            f.name()
        ),
    }
}

/// An action with what it carries, read from the state it is taken in.
pub fn describe_step(st: &State, a: &Action) -> String {
    match *a {
        Action::Deliver(i) | Action::Drop(i) => {
            let verb = if matches!(a, Action::Deliver(_)) {
                "deliver"
            } else {
                "LOSE"
            };
            match st.net.get(i) {
                Some(env) => format!(
                    "{verb} {} -> {}: {}",
                    node_name(env.src),
                    node_name(env.dst),
                    describe_msg(&env.msg)
                ),
                None => describe_action_plain(a),
            }
        }
        Action::Put(s) => {
            let (k, _) = write_kv(st.used.writes + 1);
            format!("operator: configuration/put {k} on {}", server_name(s))
        }
        Action::Forge(s, f) => {
            let what = st
                .server(s)
                .and_then(|v| crate::hostile::forge(v, s, f))
                .map(|m| match m {
                    crate::hostile::Forged::Peer(env) => {
                        format!(
                            "{} (from {:#x})",
                            describe_msg(&Msg::Peer(env.clone())),
                            env.from
                        )
                    }
                    crate::hostile::Forged::Edge(m) => {
                        let proof = match &m {
                            EdgeMsg::Heartbeat(hb) => {
                                hb.proof.as_ref().map_or(", no proof".to_string(), |p| {
                                    format!(
                                        ", proof: {} holds e{} (signed by x)",
                                        p.claim.holder_name, p.claim.epoch
                                    )
                                })
                            }
                            _ => String::new(),
                        };
                        format!("{}{proof}", describe_msg(&Msg::ToServer(m)))
                    }
                })
                .unwrap_or_default();
            format!("{}: {what}", describe_action_plain(a))
        }
        _ => describe_action_plain(a),
    }
}

/// A message in a few words.
pub fn describe_msg(m: &Msg) -> String {
    match m {
        Msg::Peer(env) => {
            let body = match &env.body {
                PeerMsg::Append {
                    incarnation,
                    since,
                    prev_index,
                    entries,
                    commit_index,
                    ..
                } => match (entries.first(), entries.last()) {
                    (Some(f), Some(l)) => format!(
                        "Append entries {}..={} after {prev_index}, commit {commit_index} (run {incarnation} since {since})",
                        f.index, l.index
                    ),
                    _ => format!(
                        "Append (heartbeat) after {prev_index}, commit {commit_index} (run {incarnation} since {since})"
                    ),
                },
                PeerMsg::AppendAck {
                    incarnation,
                    durable_index,
                    ok,
                } => {
                    format!("AppendAck durable {durable_index} ok={ok} (run {incarnation})")
                }
                PeerMsg::DemoteRequest { new_epoch } => {
                    format!("DemoteRequest for epoch {new_epoch}")
                }
                PeerMsg::DemoteGranted {
                    new_epoch,
                    last_index,
                    ..
                } => format!("DemoteGranted epoch {new_epoch}, last index {last_index}"),
                PeerMsg::NewEpoch { active, proof } => format!(
                    "NewEpoch held by {}{}",
                    active.name,
                    if proof.is_some() { ", proven" } else { "" }
                ),
                PeerMsg::SnapshotChunk { index, chunk, .. } => {
                    format!("SnapshotChunk {chunk} at index {index}")
                }
                PeerMsg::SnapshotAck { index, chunk } => {
                    format!("SnapshotAck {chunk} at index {index}")
                }
                PeerMsg::Rejoin { last_index, .. } => format!("Rejoin (last index {last_index})"),
                PeerMsg::RejoinAccepted { keep_index, .. } => {
                    format!("RejoinAccepted keep {keep_index}")
                }
                PeerMsg::Refused { reason, .. } => format!("Refused: {reason}"),
                other => other.kind().to_string(),
            };
            format!("{body} [epoch {}]", env.epoch)
        }
        Msg::ToServer(EdgeMsg::Heartbeat(hb)) => {
            let view: Vec<String> = hb
                .view
                .iter()
                .map(|v| {
                    format!(
                        "{}={}@{}",
                        v.address.split(':').next().unwrap_or("?"),
                        v.role.map_or("?", Role::as_str),
                        v.epoch
                    )
                })
                .collect();
            format!("Heartbeat view [{}]", view.join(", "))
        }
        Msg::ToServer(EdgeMsg::ConfigPull {
            have_epoch,
            have_version,
        }) => format!("ConfigPull (have {have_epoch}/{have_version})"),
        Msg::ToServer(EdgeMsg::Monitoring { samples }) => {
            let seqs: Vec<u64> = samples.iter().map(|s| s.seq).collect();
            format!("Monitoring samples {seqs:?}")
        }
        Msg::ToEdge(ServerMsg::HeartbeatReply(r)) => format!(
            "HeartbeatReply {}/{} epoch {}{}",
            r.role,
            r.dr_state,
            r.epoch,
            r.redirect
                .as_ref()
                .map_or(String::new(), |x| format!(" redirect {x}"))
        ),
        Msg::ToEdge(ServerMsg::Config { epoch, version, .. }) => {
            format!("Config epoch {epoch} version {version}")
        }
        Msg::ToEdge(ServerMsg::MonitoringAck { epoch, up_to_seq }) => {
            format!("MonitoringAck up to {up_to_seq} [epoch {epoch}]")
        }
        Msg::ToEdge(ServerMsg::Refused { role, reason, .. }) => {
            format!("Refused by {role}: {reason}")
        }
    }
}

/// The whole system in one line: each server, each edge, cut links, acknowledged writes.
pub fn summarize(_model: &DrModel, st: &State) -> String {
    let mut parts = Vec::new();
    for s in 0..2u8 {
        let n = &st.servers[usize::from(s)];
        let disk = format!(
            "disk log {} commit {}",
            n.store
                .log
                .last()
                .map_or(n.store.applied.index, |e| e.index),
            n.store.commit
        );
        parts.push(match &n.server {
            Some(v) => format!(
                "{} {}/{} e{} log {} commit {}{}; {disk}{}",
                server_name(s),
                v.role(),
                v.dr_state(),
                v.epoch(),
                v.last_index(),
                v.commit_index(),
                if v.highest_epoch_seen() > v.epoch() {
                    format!(" (knows e{})", v.highest_epoch_seen())
                } else {
                    String::new()
                },
                if n.pending.is_empty() {
                    String::new()
                } else {
                    format!(", {} unflushed", n.pending.len())
                }
            ),
            None => format!("{} DOWN; {disk}", server_name(s)),
        });
    }
    for (e, n) in st.edges.iter().enumerate() {
        parts.push(format!(
            "{} follows {}",
            edge_client(e as EdgeIx),
            n.edge
                .following()
                .map_or("nobody", |i| server_name(i as ServerIx))
        ));
    }
    if !st.cut.is_empty() {
        let cut: Vec<String> = st.cut.iter().map(|l| link_name(*l)).collect();
        parts.push(format!("cut: {}", cut.join(", ")));
    }
    if !st.hist.acks.is_empty() {
        let acks: Vec<String> = st
            .hist
            .acks
            .iter()
            .map(|a| {
                format!(
                    "k{} by {} e{}{}",
                    a.key,
                    server_name(a.server),
                    a.epoch,
                    if a.unprotected { " UNPROTECTED" } else { "" }
                )
            })
            .collect();
        parts.push(format!("acked: {}", acks.join(", ")));
    }
    if !st.hist.violations.is_empty() {
        parts.push(format!("violations: {:?}", st.hist.violations));
    }
    parts.join(" | ")
}

/// Which mutant names the command line accepts.
pub fn mutant_names() -> Vec<&'static str> {
    Mutant::ALL.iter().map(|(_, n)| *n).collect()
}

/// Whether every (role, drState) of SPEC §2 is expected by at least one of `cfgs`.
pub fn reach_covers_spec(cfgs: &[ModelCfg]) -> Vec<(Role, DrState)> {
    DrState::all_pairs()
        .into_iter()
        .filter(|p| {
            !cfgs
                .iter()
                .any(|c| properties::expected_reach(c).contains(p))
        })
        .collect()
}
