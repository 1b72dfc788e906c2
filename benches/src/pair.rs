//! An active/standby pair of real [`Server`]s driven in memory.
//!
//! The pair plays the I/O layer for both servers: it carries out every output
//! in order — peer messages go to the server whose `peer_address` they name,
//! `Persist` ops go to that server's [`MemStore`] and are confirmed with
//! `Input::Persisted`, timers are kept on a virtual clock that only moves when
//! [`Pair::fire_next_timer`] is called. Nothing is lost or reordered: this is
//! the fair, fast network the benches want, not a fault injector.
//!
//! # Calling contract
//! - [`Pair::paired`] builds both servers and pairs them through the real
//!   commands (`PrepareForStandby` on the standby, `ConfigureActive` on the
//!   active) until both are in `STANDBY_RUNNING`.
//! - [`Pair::submit`] gives the active one command; [`Pair::step`] runs one
//!   round (drain outputs, confirm persists, deliver peer messages);
//!   [`Pair::run_until_idle`] steps until nothing moves. Replies to commands
//!   are collected and taken with [`Pair::take_replies`].
//! - [`Pair::write_many`] keeps a fixed number of `Put`s outstanding and
//!   returns when all are acknowledged, or with an error naming what stalled.

use std::collections::{BTreeMap, VecDeque};
use vcodr_core::*;

/// Most rounds [`Pair::run_until_idle`] runs before it calls the pair livelocked.
pub const STEPS_MAX: u64 = 1_000_000;
/// Most timer firings [`Pair::paired`] allows before both servers must be in `STANDBY_RUNNING`.
pub const PAIRING_TICKS_MAX: u32 = 50;
/// Most timer firings [`Pair::write_many`] allows while writes make no progress.
pub const STALL_TICKS_MAX: u32 = 20;

/// What the pair does with each `Output::Persist`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Apply the ops to the server's [`MemStore`] (the reference store).
    MemStore,
    /// Confirm without storing anything: measures the core without the store.
    ConfirmOnly,
}

/// When the pair confirms persists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// `Input::Persisted` for each `Persist`, as soon as it is drained.
    EachPersist,
    /// One `Input::Persisted` per server per round, covering every `Persist`
    /// drained in that round (group commit: one "fsync" for many writes).
    Group,
}

/// Which server of the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    Active,
    Standby,
}

/// One server and the I/O layer's state for it.
#[derive(Debug)]
pub struct Node {
    pub server: Server,
    /// What the server made durable (only with [`Durability::MemStore`]).
    pub store: MemStore,
    /// Armed timers and their deadlines on the pair's virtual clock.
    pub timers: BTreeMap<Timer, Millis>,
    /// Highest `Persist` drained but not yet confirmed (group commit).
    unconfirmed: Option<PersistSeq>,
}

impl Node {
    fn new(server: Server) -> Self {
        Node {
            server,
            store: MemStore::new(64),
            timers: BTreeMap::new(),
            unconfirmed: None,
        }
    }
}

/// Counters of what the pair carried out, for checks and for bench reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub steps: u64,
    pub peer_messages: u64,
    /// `Persist` outputs (both servers).
    pub persists: u64,
    /// `Persisted` inputs (both servers): fewer than `persists` under group commit.
    pub confirmations: u64,
    /// Peer messages addressed to neither server.
    pub misrouted: u64,
    /// `Event::PeerIgnored` seen: a healthy pair should have none.
    pub peer_ignored: u64,
    pub timers_fired: u64,
}

/// Two servers paired in memory. See the module docs for the calling contract.
#[derive(Debug)]
pub struct Pair {
    pub active: Node,
    pub standby: Node,
    pub durability: Durability,
    pub commit: Commit,
    now_ms: Millis,
    next_req: RequestId,
    in_flight: VecDeque<(Side, PeerEnvelope)>,
    replies: VecDeque<(RequestId, Result<Reply, CommandError>)>,
    pub stats: Stats,
}

impl Pair {
    /// Two fresh STANDALONE servers (1: the future active, 2: the future standby).
    pub fn unpaired(durability: Durability, commit: Commit) -> Self {
        let cfg = ServerConfig::default();
        let now = Now::at(0);
        let mut pair = Pair {
            active: Node::new(crate::keyed(Server::new(
                cfg.clone(),
                crate::server_info(1),
                now,
            ))),
            standby: Node::new(crate::keyed(Server::new(cfg, crate::server_info(2), now))),
            durability,
            commit,
            now_ms: 0,
            next_req: 1,
            in_flight: VecDeque::new(),
            replies: VecDeque::new(),
            stats: Stats::default(),
        };
        // Start-up outputs: the initial metadata persist and the peer tick.
        pair.drain(Side::Active);
        pair.drain(Side::Standby);
        pair.confirm();
        pair
    }

    /// A pair paired through the real commands, both in `STANDBY_RUNNING`.
    pub fn paired(durability: Durability) -> Result<Self, String> {
        Self::paired_with(durability, Commit::Group)
    }

    /// As [`Pair::paired`], with the given commit mode.
    pub fn paired_with(durability: Durability, commit: Commit) -> Result<Self, String> {
        let mut pair = Self::unpaired(durability, commit);
        let prepare = pair.submit_to(Side::Standby, Command::PrepareForStandby);
        pair.run_until_idle()?;
        let (vco_uuid, pairing_token) = match pair.reply_to(prepare)? {
            Ok(Reply::Prepared {
                vco_uuid,
                pairing_token,
            }) => (vco_uuid, pairing_token),
            other => return Err(format!("PrepareForStandby answered {other:?}")),
        };
        let configure = pair.submit_to(
            Side::Active,
            Command::ConfigureActive {
                standby_address: pair.standby.server.info().peer_address.clone(),
                standby_uuid: vco_uuid,
                pairing_token,
            },
        );
        pair.run_until_idle()?;
        match pair.reply_to(configure)? {
            Ok(Reply::Configured { .. }) => {}
            other => return Err(format!("ConfigureActive answered {other:?}")),
        }
        let mut ticks = 0;
        while !pair.running() {
            if ticks == PAIRING_TICKS_MAX {
                return Err(format!(
                    "not STANDBY_RUNNING after {ticks} timer firings: active {} / {}, standby {} / {}",
                    pair.active.server.role(),
                    pair.active.server.dr_state(),
                    pair.standby.server.role(),
                    pair.standby.server.dr_state(),
                ));
            }
            pair.fire_next_timer()?;
            pair.run_until_idle()?;
            ticks += 1;
        }
        Ok(pair)
    }

    /// Both servers are in `STANDBY_RUNNING` (ACTIVE and STANDBY).
    pub fn running(&self) -> bool {
        self.active.server.role() == Role::Active
            && self.active.server.dr_state() == DrState::StandbyRunning
            && self.standby.server.role() == Role::Standby
            && self.standby.server.dr_state() == DrState::StandbyRunning
    }

    pub fn node(&mut self, side: Side) -> &mut Node {
        match side {
            Side::Active => &mut self.active,
            Side::Standby => &mut self.standby,
        }
    }

    /// The virtual clock, in milliseconds.
    pub fn now_ms(&self) -> Millis {
        self.now_ms
    }

    /// Gives the active `cmd`; returns the request id its reply will carry.
    pub fn submit(&mut self, cmd: Command) -> RequestId {
        self.submit_to(Side::Active, cmd)
    }

    /// Gives `side` the operator command `cmd`.
    pub fn submit_to(&mut self, side: Side, cmd: Command) -> RequestId {
        let req = self.next_req;
        self.next_req += 1;
        let now = Now::at(self.now_ms);
        self.node(side)
            .server
            .handle_input(now, Input::Command { req, cmd });
        req
    }

    /// Replies collected so far, oldest first.
    pub fn take_replies(
        &mut self,
    ) -> impl Iterator<Item = (RequestId, Result<Reply, CommandError>)> + '_ {
        self.replies.drain(..)
    }

    fn reply_to(&mut self, req: RequestId) -> Result<Result<Reply, CommandError>, String> {
        let at = self
            .replies
            .iter()
            .position(|(r, _)| *r == req)
            .ok_or_else(|| format!("request {req} was never answered"))?;
        // `at` was just found.
        Ok(self.replies.remove(at).expect("found").1)
    }

    /// Carries out every output `side` has queued.
    fn drain(&mut self, side: Side) {
        let now = Now::at(self.now_ms);
        let durability = self.durability;
        let commit = self.commit;
        loop {
            let node = self.node(side);
            let Some(out) = node.server.poll_output() else {
                break;
            };
            match out {
                Output::SendPeer { to, msg } => {
                    self.stats.peer_messages += 1;
                    let dest = if self.active.server.info().peer_address == to {
                        Side::Active
                    } else if self.standby.server.info().peer_address == to {
                        Side::Standby
                    } else {
                        self.stats.misrouted += 1;
                        continue;
                    };
                    self.in_flight.push_back((dest, msg));
                }
                Output::Persist { seq, ops } => {
                    self.stats.persists += 1;
                    let node = self.node(side);
                    if durability == Durability::MemStore {
                        node.store.apply(&ops);
                    }
                    match commit {
                        Commit::EachPersist => {
                            node.server
                                .handle_input(now, Input::Persisted { up_to: seq });
                            self.stats.confirmations += 1;
                        }
                        Commit::Group => node.unconfirmed = Some(seq),
                    }
                }
                Output::SetTimer { timer, after_ms } => {
                    let deadline = self.now_ms + after_ms;
                    self.node(side).timers.insert(timer, deadline);
                }
                Output::CancelTimer(timer) => {
                    self.node(side).timers.remove(&timer);
                }
                Output::ReadSamples {
                    ranges,
                    max_bytes,
                    max_samples,
                } => {
                    // Answered at once from the store (what a store that
                    // keeps nothing holds: no sample).
                    let node = self.node(side);
                    let chunks = node.store.read_samples(&ranges, max_bytes, max_samples);
                    node.server.handle_input(now, Input::SamplesRead { chunks });
                }
                Output::Reply { req, result } => self.replies.push_back((req, result)),
                Output::Event(Event::PeerIgnored { .. }) => self.stats.peer_ignored += 1,
                Output::Event(_) | Output::ReplyEdge { .. } | Output::ReplyPeer { .. } => {}
            }
        }
    }

    /// Confirms, per server, every persist drained so far (group commit).
    fn confirm(&mut self) -> bool {
        let now = Now::at(self.now_ms);
        let mut any = false;
        for side in [Side::Active, Side::Standby] {
            let node = self.node(side);
            if let Some(up_to) = node.unconfirmed.take() {
                node.server.handle_input(now, Input::Persisted { up_to });
                self.stats.confirmations += 1;
                any = true;
            }
        }
        any
    }

    /// One round: drain both servers, confirm their persists, deliver the
    /// peer messages sent so far. Returns whether anything happened.
    pub fn step(&mut self) -> bool {
        self.stats.steps += 1;
        self.drain(Side::Active);
        self.drain(Side::Standby);
        let mut progressed = self.confirm();
        let now = Now::at(self.now_ms);
        while let Some((side, env)) = self.in_flight.pop_front() {
            // Sent by the other side, over its link; TLS proved its name and key.
            let (link, sender) = match side {
                Side::Active => (1, &self.standby.server),
                Side::Standby => (0, &self.active.server),
            };
            let from = vcodr_core::testing::identity(&sender.info().name);
            self.node(side)
                .server
                .handle_input(now, Input::Peer { link, from, env });
            progressed = true;
        }
        // Outputs of the inputs just given (replies, new persists) count too.
        self.drain(Side::Active);
        self.drain(Side::Standby);
        progressed || self.active.unconfirmed.is_some() || self.standby.unconfirmed.is_some()
    }

    /// Steps until nothing moves; an error after [`STEPS_MAX`] rounds.
    pub fn run_until_idle(&mut self) -> Result<(), String> {
        for _ in 0..STEPS_MAX {
            if !self.step() {
                return Ok(());
            }
        }
        Err(format!("still busy after {STEPS_MAX} rounds: livelock"))
    }

    /// Moves the virtual clock to the earliest armed timer and fires it.
    pub fn fire_next_timer(&mut self) -> Result<(), String> {
        let next = [Side::Active, Side::Standby]
            .into_iter()
            .flat_map(|side| {
                let node = match side {
                    Side::Active => &self.active,
                    Side::Standby => &self.standby,
                };
                node.timers.iter().map(move |(t, at)| (*at, side, *t))
            })
            .min();
        let Some((at, side, timer)) = next else {
            return Err("no timer armed on either server".into());
        };
        self.now_ms = self.now_ms.max(at);
        self.node(side).timers.remove(&timer);
        let now = Now::at(self.now_ms);
        self.node(side)
            .server
            .handle_input(now, Input::Timeout(timer));
        self.stats.timers_fired += 1;
        Ok(())
    }

    /// Writes `count` `Put`s to the active, keeping `window` of them outstanding,
    /// and returns once all are acknowledged (`Reply::Written`). Keys cycle
    /// through `keys` distinct names (`site/0` ...), so a long run keeps the
    /// configuration bounded. Any other reply, or writes that stop making
    /// progress, is an error naming what happened.
    pub fn write_many(
        &mut self,
        count: u64,
        window: u64,
        keys: u64,
        value: &[u8],
    ) -> Result<u64, String> {
        assert!(
            window >= 1 && keys >= 1,
            "window and keys must be at least 1"
        );
        let mut submitted = 0u64;
        let mut acked = 0u64;
        let mut stall_ticks = 0u32;
        while acked < count {
            while submitted - acked < window && submitted < count {
                let key = format!("site/{}", submitted % keys);
                self.submit(Command::Put {
                    key,
                    value: value.to_vec(),
                });
                submitted += 1;
            }
            let progressed = self.step();
            let before = acked;
            for (req, result) in self.replies.drain(..) {
                match result {
                    Ok(Reply::Written { .. }) => acked += 1,
                    other => {
                        return Err(format!(
                            "write request {req} answered {other:?} (after {acked} acknowledged)"
                        ))
                    }
                }
            }
            if acked > before {
                stall_ticks = 0;
            } else if !progressed {
                if stall_ticks == STALL_TICKS_MAX {
                    return Err(format!(
                        "{} writes never acknowledged after {stall_ticks} timer firings: active {} / {} \
                         (last {}, commit {}), standby {} / {} (last {}, commit {})",
                        submitted - acked,
                        self.active.server.role(),
                        self.active.server.dr_state(),
                        self.active.server.last_index(),
                        self.active.server.commit_index(),
                        self.standby.server.role(),
                        self.standby.server.dr_state(),
                        self.standby.server.last_index(),
                        self.standby.server.commit_index(),
                    ));
                }
                self.fire_next_timer()?;
                stall_ticks += 1;
            }
        }
        Ok(acked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(i: u64) -> Vec<u8> {
        format!("{{\"vlan\":{i}}}").into_bytes()
    }

    #[test]
    fn pair_reaches_standby_running_through_the_real_commands() {
        let pair = Pair::paired(Durability::MemStore).expect("pairing");
        assert!(pair.running());
        assert_eq!(pair.active.server.epoch(), pair.standby.server.epoch());
        assert!(pair.active.server.pair_id().is_some());
        assert_eq!(pair.active.server.pair_id(), pair.standby.server.pair_id());
        assert_eq!(pair.stats.misrouted, 0);
        assert_eq!(pair.stats.peer_ignored, 0);
        // Both stores hold the paired metadata.
        for node in [&pair.active, &pair.standby] {
            let meta = node.store.meta.as_ref().expect("meta persisted");
            assert_eq!(meta.role, node.server.role());
            assert_eq!(meta.pair_id, node.server.pair_id());
        }
    }

    fn thousand_writes_reach_the_standby(commit: Commit, window: u64) {
        let mut pair = Pair::paired_with(Durability::MemStore, commit).expect("pairing");
        let n = 1_000;
        // Each write has its own key and value here so that each can be found.
        let mut submitted = 0;
        let mut acked = 0;
        let mut rounds = 0;
        while acked < n {
            while submitted - acked < window && submitted < n {
                pair.submit(Command::Put {
                    key: format!("site/{submitted}"),
                    value: value(submitted),
                });
                submitted += 1;
            }
            pair.step();
            for (_, r) in pair.take_replies() {
                assert!(matches!(r, Ok(Reply::Written { .. })), "{r:?}");
                acked += 1;
            }
            rounds += 1;
            assert!(rounds < 100_000, "writes stalled at {acked} acknowledged");
        }
        assert_eq!(
            pair.active.server.commit_index(),
            pair.active.server.last_index()
        );
        for i in 0..n {
            let key = format!("site/{i}");
            assert!(
                pair.standby.store.contains_put(&key, &value(i)),
                "acknowledged write {key} missing on the standby"
            );
            assert!(pair.active.store.contains_put(&key, &value(i)));
        }
        assert!(pair.running());
        assert_eq!(pair.stats.misrouted, 0);
        assert_eq!(pair.stats.peer_ignored, 0);
    }

    #[test]
    fn thousand_writes_one_at_a_time_are_acknowledged_and_on_the_standby() {
        thousand_writes_reach_the_standby(Commit::Group, 1);
    }

    #[test]
    fn thousand_writes_64_outstanding_group_commit() {
        thousand_writes_reach_the_standby(Commit::Group, 64);
    }

    #[test]
    fn thousand_writes_64_outstanding_each_persist_confirmed() {
        thousand_writes_reach_the_standby(Commit::EachPersist, 64);
    }

    #[test]
    fn group_commit_confirms_fewer_times_than_it_persists() {
        let mut pair = Pair::paired(Durability::MemStore).expect("pairing");
        let before = pair.stats.clone();
        assert_eq!(pair.write_many(640, 64, 100, b"{}"), Ok(640));
        let persists = pair.stats.persists - before.persists;
        let confirmations = pair.stats.confirmations - before.confirmations;
        assert!(
            confirmations * 4 < persists,
            "{confirmations} confirmations for {persists} persists"
        );
    }

    #[test]
    fn write_many_without_a_store_still_acknowledges() {
        let mut pair = Pair::paired(Durability::ConfirmOnly).expect("pairing");
        assert_eq!(pair.write_many(500, 1, 10, b"{}"), Ok(500));
        assert_eq!(pair.write_many(500, 64, 10, b"{}"), Ok(500));
        assert!(pair.standby.store.log.is_empty());
    }
}
