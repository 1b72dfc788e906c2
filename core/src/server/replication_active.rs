//! The active's side of replication (SPEC §4): streaming entries and
//! snapshots to the standby, its acknowledgements, losing and regaining it,
//! and the `on_standby_loss` policy at the grace.

use super::Server;
use crate::api::*;
use crate::msg::*;
use crate::types::*;

/// A snapshot being sent, one chunk at a time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct SnapshotTx {
    pub(super) index: Index,
    pub(super) epoch: Epoch,
    pub(super) chunks: Vec<PeerMsg>,
    /// Next chunk to be acknowledged.
    pub(super) next: u32,
}

/// Where the active stands with a standby it cannot reach (SPEC §4,
/// `on_standby_loss`): the machine behind `FAILURE_GET_STANDBY_STATUS` and
/// the policy applied at the grace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum StandbyLoss {
    /// The standby answers, or has missed fewer than `peer_failure_threshold` ticks.
    Reachable,
    /// Missed `peer_failure_threshold` ticks in a row: writes wait for it
    /// until `standby_grace` runs out.
    Lost,
    /// Lost beyond the grace where writes may not go on without it
    /// (`block`, or degrading would risk two writers): writes are refused
    /// until it is heard again.
    Blocked,
    /// Lost beyond the grace with `degrade`: writes are acknowledged without
    /// it until it holds all that was acknowledged, also once it answers
    /// again (`lost: false`) and catches up.
    Degraded { lost: bool },
}

/// The active's view of its standby.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Replica {
    /// Highest index durable on the standby.
    pub(super) match_index: Index,
    /// Next index to send.
    pub(super) next_index: Index,
    /// The standby needs a snapshot before any entry.
    pub(super) need_snapshot: bool,
    pub(super) snapshot: Option<SnapshotTx>,
    /// Heard from the standby since the last tick.
    pub(super) heard: bool,
    /// Heard from the standby at all since this process started: until then
    /// the standby may have been promoted while we were down, so degrading
    /// would risk two writers (the peers' classic "old primary restarts alone").
    pub(super) heard_since_start: bool,
    /// This server restarted as active and has not heard the standby since.
    /// Once the standby is also declared lost, writes are refused at once,
    /// whatever the policy (see [`Server::block_restarted_alone`]). Cleared
    /// when the standby is heard.
    pub(super) unheard_since_restart: bool,
    pub(super) missed_ticks: u32,
    pub(super) loss: StandbyLoss,
    /// Degraded: entries up to here are counted in `unprotected_writes`...
    pub(super) unprotected_counted_upto: Index,
    /// ...and up to here that count is durable, so they may be acknowledged.
    pub(super) unprotected_durable_upto: Index,
    /// Match index at the previous tick, to detect a stalled stream.
    pub(super) match_at_tick: Index,
    /// Monotonic time since which the standby lags, for `lagMs`.
    pub(super) lag_since_ms: Option<Millis>,
    /// The standby may lack monitoring samples this server stores: a
    /// snapshot was sent (it carries no samples), or this server restarted
    /// and does not know. Not `STANDBY_RUNNING`, no planned switchover, until
    /// the standby says its copy is complete (see `samples_copy`).
    pub(super) samples_unconfirmed: bool,
    /// ...by naming an applied index at least this one: the snapshot's (or
    /// this server's applied index at its restart).
    pub(super) samples_confirm_from: Index,
    /// A [`Output::ReadSamples`] for the standby is outstanding (one at a time).
    pub(super) reading_samples: bool,
    /// The log's last index when this replica began: what every Append of
    /// this run names as `since` (SPEC §4). For a restarted active, the end
    /// of what its storage held, all durable; every other replica begins
    /// with a snapshot (`need_snapshot`), beyond which a standby holds
    /// nothing to drop.
    pub(super) since: Index,
    /// Restarted as active, and the standby has not yet acknowledged an
    /// Append of this run: it may still hold entries the last run shipped
    /// but never made durable, so no new entry may be written at their
    /// indexes — writes are refused until it answers (SPEC §4).
    pub(super) restart_unconfirmed: bool,
}

impl Replica {
    pub(super) fn new(need_snapshot: bool, last_index: Index) -> Self {
        Replica {
            match_index: 0,
            next_index: last_index + 1,
            need_snapshot,
            snapshot: None,
            heard: false,
            heard_since_start: false,
            unheard_since_restart: false,
            unprotected_counted_upto: 0,
            unprotected_durable_upto: 0,
            missed_ticks: 0,
            loss: StandbyLoss::Reachable,
            match_at_tick: 0,
            lag_since_ms: None,
            samples_unconfirmed: true,
            samples_confirm_from: 0,
            reading_samples: false,
            since: last_index,
            restart_unconfirmed: false,
        }
    }

    /// Streaming entries (no snapshot under way or needed) and `last_index`
    /// not all sent yet.
    pub(super) fn streaming_behind(&self, last_index: Index) -> bool {
        self.snapshot.is_none() && !self.need_snapshot && self.next_index <= last_index
    }

    /// Missed `peer_failure_threshold` ticks in a row, and not heard since.
    pub(super) fn lost(&self) -> bool {
        matches!(
            self.loss,
            StandbyLoss::Lost | StandbyLoss::Blocked | StandbyLoss::Degraded { lost: true }
        )
    }

    /// Writes are acknowledged without the standby.
    pub(super) fn degraded(&self) -> bool {
        matches!(self.loss, StandbyLoss::Degraded { .. })
    }

    /// Writes are refused until the standby is heard.
    pub(super) fn blocked(&self) -> bool {
        self.loss == StandbyLoss::Blocked
    }

    /// Missed `peer_failure_threshold` ticks: true if it was not lost before.
    pub(super) fn declare_lost(&mut self) -> bool {
        let was = self.loss;
        self.loss = match was {
            StandbyLoss::Reachable => StandbyLoss::Lost,
            StandbyLoss::Degraded { .. } => StandbyLoss::Degraded { lost: true },
            StandbyLoss::Lost | StandbyLoss::Blocked => was,
        };
        self.loss != was
    }
}

impl Server {
    /// Sends the standby what it lacks: snapshot chunks or entries, as soon
    /// as they are in the log — before they are durable here (SPEC §4) —
    /// once this run's incarnation is durable.
    pub(super) fn replicate(&mut self) {
        if self.role() != Role::Active
            || self.dr_state == DrState::ActiveConfiguring
            || !self.incarnation_durable
        {
            return;
        }
        let Some(r) = self.role.replica_mut() else {
            return;
        };
        if r.snapshot.is_some() {
            return;
        }
        if r.need_snapshot || r.next_index <= self.log.base_index() {
            self.start_snapshot();
            return;
        }
        let mut sends = Vec::new();
        let commit = self.applied.index;
        let last = self.log.last_index();
        let incarnation = self.incarnation;
        while r.next_index <= last
            && r.next_index - r.match_index - 1 < self.cfg.max_inflight_entries
            && self.log.bytes_after(r.match_index) - self.log.bytes_after(r.next_index - 1)
                < self.cfg.max_inflight_bytes
        {
            let room = self.cfg.max_inflight_entries - (r.next_index - r.match_index - 1);
            let max = (self.cfg.max_batch_entries as u64).min(room) as usize;
            let entries = self
                .log
                .batch(r.next_index, last, max, self.cfg.max_batch_bytes);
            if entries.is_empty() {
                break;
            }
            let prev_index = r.next_index - 1;
            // `prev_index >= base_index` because `next_index > base_index` was checked.
            let prev_epoch = self.log.epoch_at(prev_index).unwrap_or(0);
            r.next_index += entries.len() as u64;
            sends.push(PeerMsg::Append {
                incarnation,
                since: r.since,
                prev_index,
                prev_epoch,
                entries,
                commit_index: commit,
                active_durable: self.durable_index,
            });
        }
        for m in sends {
            self.send_peer(m);
        }
    }

    /// An empty append: heartbeat and probe of where the standby is.
    pub(super) fn send_heartbeat_append(&mut self) {
        if !self.incarnation_durable {
            return;
        }
        let Some(r) = self.role.replica() else {
            return;
        };
        if r.snapshot.is_some() || r.need_snapshot {
            return;
        }
        let prev_index = r.next_index - 1;
        let Some(prev_epoch) = self.log.epoch_at(prev_index) else {
            return;
        };
        let m = PeerMsg::Append {
            incarnation: self.incarnation,
            since: r.since,
            prev_index,
            prev_epoch,
            entries: Vec::new(),
            commit_index: self.applied.index,
            active_durable: self.durable_index,
        };
        self.send_peer(m);
    }

    fn start_snapshot(&mut self) {
        let snap = self.applied.clone();
        let mut chunks = Vec::new();
        let mut docs = Vec::new();
        let mut bytes = 0usize;
        let max = self.cfg.max_batch_bytes;
        for (k, d) in &snap.docs {
            let size = k.len() + d.value.len() + 16;
            if bytes + size > max && !docs.is_empty() {
                chunks.push(std::mem::take(&mut docs));
                bytes = 0;
            }
            bytes += size;
            docs.push((k.clone(), d.clone()));
        }
        chunks.push(docs);
        let n = chunks.len() as u32;
        let chunks: Vec<PeerMsg> = chunks
            .into_iter()
            .enumerate()
            .map(|(i, docs)| {
                let last = i as u32 + 1 == n;
                PeerMsg::SnapshotChunk {
                    index: snap.index,
                    snapshot_epoch: snap.epoch,
                    chunk: i as u32,
                    last,
                    docs,
                    sample_seq: if last {
                        snap.sample_seq.clone().into_iter().collect()
                    } else {
                        Vec::new()
                    },
                    epoch_starts: if last {
                        snap.epoch_starts.clone()
                    } else {
                        Vec::new()
                    },
                    config_index: snap.config_index,
                }
            })
            .collect();
        let first = chunks[0].clone();
        if let Some(r) = self.role.replica_mut() {
            r.need_snapshot = false;
            // A snapshot naming no sample (no client ever sent one) leaves
            // nothing to copy.
            r.samples_unconfirmed = !snap.sample_seq.is_empty();
            r.samples_confirm_from = snap.index;
            r.snapshot = Some(SnapshotTx {
                index: snap.index,
                epoch: snap.epoch,
                chunks,
                next: 0,
            });
        }
        self.event(Event::SnapshotSent {
            index: snap.index,
            chunks: n,
        });
        if self.dr_state == DrState::StandbyRunning {
            self.transition(
                DrState::StandbySync,
                "standby needs a snapshot: the log it lacks was compacted".into(),
            );
        }
        self.send_peer(first);
    }

    pub(super) fn resend_snapshot_chunk(&mut self) {
        let chunk = self
            .role
            .replica()
            .and_then(|r| r.snapshot.as_ref())
            .and_then(|s| s.chunks.get(s.next as usize).cloned());
        if let Some(c) = chunk {
            self.send_peer(c);
        }
    }

    pub(super) fn on_snapshot_ack(&mut self, index: Index, chunk: u32) {
        if self.role() != Role::Active {
            return self.not_expected("SnapshotAck");
        }
        self.on_standby_heard();
        let Some(r) = self.role.replica_mut() else {
            return;
        };
        let Some(tx) = r.snapshot.as_mut() else {
            return;
        };
        if tx.index != index || tx.next != chunk {
            return;
        }
        tx.next += 1;
        if (tx.next as usize) < tx.chunks.len() {
            let c = tx.chunks[tx.next as usize].clone();
            self.send_peer(c);
            return;
        }
        let (idx, _epoch) = (tx.index, tx.epoch);
        r.snapshot = None;
        r.match_index = r.match_index.max(idx);
        r.next_index = idx + 1;
        if self.dr_state == DrState::ActiveWaitStandby {
            self.transition(
                DrState::StandbySync,
                format!("standby installed the snapshot at index {idx}"),
            );
        }
        self.after_standby_progress();
        self.replicate();
        // Tell the standby at once where the log ends, so it sees it caught up.
        self.send_heartbeat_append();
    }

    pub(super) fn on_append_ack(
        &mut self,
        incarnation: Incarnation,
        durable_index: Index,
        ok: bool,
    ) {
        if self.role() != Role::Active {
            return self.not_expected("AppendAck");
        }
        if incarnation != self.incarnation {
            // An answer to an earlier run of this server: what it says the
            // standby holds may be entries this run never wrote (SPEC §4).
            let reason = format!(
                "answers incarnation {incarnation}; this run is {}",
                self.incarnation
            );
            self.event(Event::PeerIgnored {
                kind: "AppendAck",
                reason,
            });
            return;
        }
        self.on_standby_heard();
        let last = self.log.last_index();
        let Some(r) = self.role.replica_mut() else {
            return;
        };
        // The standby durably follows this run: what it holds beyond `since`
        // is this run's.
        r.restart_unconfirmed = false;
        if r.snapshot.is_some() {
            return;
        }
        let mut resend = true;
        let mut regressed = None;
        if ok {
            r.match_index = r.match_index.max(durable_index.min(last));
            r.next_index = r.next_index.max(r.match_index + 1);
        } else {
            if durable_index < r.match_index {
                // The standby says it holds less than it acknowledged: believe it
                // (its disk is the truth) and say so loudly.
                regressed = Some(r.match_index);
                r.match_index = durable_index;
            }
            // The standby lacks what we sent after its hint: resend from there,
            // once — a repeated refusal waits for the next tick.
            let next = (durable_index + 1).max(r.match_index + 1).min(r.next_index);
            resend = next != r.next_index;
            r.next_index = next;
        }
        if let Some(acked) = regressed {
            let reason = format!(
                "standby reports durable index {durable_index} below the {acked} it acknowledged"
            );
            self.event(Event::PeerIgnored {
                kind: "AppendAck",
                reason,
            });
        }
        self.after_standby_progress();
        if resend {
            self.replicate();
        }
    }

    /// After the standby acknowledged something: lag, states, protection, commit.
    pub(super) fn after_standby_progress(&mut self) {
        let durable = self.durable_index;
        let now = self.now.mono_ms;
        let Some(r) = self.role.replica_mut() else {
            return;
        };
        let caught_up = r.match_index >= durable;
        r.lag_since_ms = if caught_up {
            None
        } else {
            r.lag_since_ms.or(Some(now))
        };
        let ended_degrade = match r.loss {
            StandbyLoss::Degraded { lost } if r.match_index >= self.applied.index => {
                r.loss = if lost {
                    StandbyLoss::Lost
                } else {
                    StandbyLoss::Reachable
                };
                true
            }
            _ => false,
        };
        let m = r.match_index;
        let samples_copied = !r.samples_unconfirmed;
        if ended_degrade {
            self.event(Event::Protected { at_index: m });
        }
        if caught_up && samples_copied && self.dr_state == DrState::StandbySync {
            self.transition(
                DrState::StandbyRunning,
                format!("standby caught up at index {m}"),
            );
        }
        self.advance_commit();
        self.check_demotion_ready();
    }

    pub(super) fn on_standby_heard(&mut self) {
        let Some(r) = self.role.replica_mut() else {
            return;
        };
        r.heard = true;
        r.heard_since_start = true;
        r.unheard_since_restart = false;
        r.missed_ticks = 0;
        if r.lost() {
            r.loss = match r.loss {
                StandbyLoss::Degraded { .. } => StandbyLoss::Degraded { lost: false },
                _ => StandbyLoss::Reachable,
            };
            self.out(Output::CancelTimer(Timer::StandbyGrace));
            let to = if self.role.replica().is_some_and(|r| {
                r.match_index >= self.durable_index
                    && r.snapshot.is_none()
                    && !r.samples_unconfirmed
            }) {
                DrState::StandbyRunning
            } else {
                DrState::StandbySync
            };
            if self.dr_state == DrState::FailureGetStandbyStatus {
                self.transition(to, "standby reachable again".into());
            }
        }
    }

    /// `standby_grace` ran out with the standby still lost: the policy
    /// decides about the writes waiting now and those to come. `degrade`
    /// acknowledges them without the standby (counted as unprotected, once
    /// the count is durable); `block` answers every waiting write at once as
    /// not acknowledged and refuses new ones (see [`Server::block_writes`]).
    pub(super) fn on_grace_expired(&mut self) {
        if self.role() != Role::Active {
            return;
        }
        let policy = self.policy;
        let commit = self.applied.index;
        let grace = self.cfg.standby_grace_ms;
        let peer = self.peer_address();
        let Some(r) = self.role.replica_mut() else {
            return;
        };
        if !r.lost() {
            return;
        }
        if r.unheard_since_restart {
            // Blocked when the standby was declared lost.
            self.block_restarted_alone();
            return;
        }
        match policy {
            OnStandbyLoss::Degrade if !r.heard_since_start => {
                let failure = format!(
                    "the standby {peer} has not answered since replication was configured, for longer than \
                     standby_grace ({grace} ms): writes are refused rather than degraded. They resume once \
                     it answers; to run alone, removeStandby"
                );
                let pending = format!(
                    "the standby {peer} has not answered since replication was configured, and this server \
                     acknowledges no write without it before it has answered once. The write is in this \
                     server's log only: it takes effect if the standby answers while this server is still \
                     active; check with configuration/get before retrying"
                );
                self.block_writes(failure, &pending);
            }
            OnStandbyLoss::Degrade => {
                if !r.degraded() {
                    debug_assert_eq!(r.loss, StandbyLoss::Lost, "never blocked once heard");
                    r.loss = StandbyLoss::Degraded { lost: true };
                    self.failure = Some(format!(
                        "standby unreachable for longer than standby_grace ({grace} ms); writes are acknowledged \
                         WITHOUT the standby (on_standby_loss = degrade) and counted as unprotected"
                    ));
                    self.event(Event::Degraded {
                        since_index: commit + 1,
                    });
                    // The writes waiting now are acknowledged as unprotected
                    // too, as soon as their count is durable.
                    self.advance_commit();
                }
            }
            OnStandbyLoss::Block => {
                let failure = format!(
                    "standby unreachable for longer than standby_grace ({grace} ms); writes are refused \
                     (on_standby_loss = block) so that RPO stays 0"
                );
                let pending = format!(
                    "the standby has been unreachable for longer than standby_grace ({grace} ms) and \
                     on_standby_loss = block acknowledges no write without it (RPO stays 0). The write is in \
                     this server's log but not confirmed by the standby, so it may still take effect: it is \
                     replicated and applied if the standby comes back while this server is active, and not \
                     if the standby is promoted instead (it is then archived here at rejoin). Check with \
                     configuration/get before retrying"
                );
                self.block_writes(failure, &pending);
            }
        }
    }

    /// Stops acknowledging writes while the standby is lost: new writes are
    /// refused with `failure` (`WritesBlocked`), and every write already
    /// waiting is answered at once as not acknowledged, with `pending_reason`.
    /// Those stay in the log, uncommitted: the truth for their clients is
    /// that they were not acknowledged and will not be by this call, yet may
    /// still take effect if the standby returns (truncating them instead
    /// would be unsafe: the standby may hold them already). Writes resume
    /// when the standby is heard again ([`Server::on_standby_heard`]).
    fn block_writes(&mut self, failure: String, pending_reason: &str) {
        let Some(r) = self.role.replica_mut() else {
            return;
        };
        if r.blocked() {
            return;
        }
        debug_assert_eq!(r.loss, StandbyLoss::Lost, "never degraded when blocking");
        r.loss = StandbyLoss::Blocked;
        self.failure = Some(failure.clone());
        let refused_pending = self.writes.len() as u64;
        self.fail_pending(pending_reason);
        self.event(Event::WritesBlocked {
            refused_pending,
            why: failure,
        });
    }

    /// An active that restarted and has not heard its standby since, once
    /// the standby is declared lost: the standby may have been promoted while
    /// this server was down, so acknowledging writes without it (degrade)
    /// could make two writers. Writes are refused at once — not when the
    /// grace runs out — whatever the policy, naming the ways out.
    pub(super) fn block_restarted_alone(&mut self) {
        let peer = self.peer_address();
        let failure = format!(
            "restarted without reaching the standby {peer} since: it may have been promoted while this server \
             was down, so writes are refused (whatever on_standby_loss says) rather than risk two writers. \
             They resume as soon as the standby answers; to run alone for good, first make sure it was not \
             promoted, then removeStandby"
        );
        let pending = format!(
            "this server restarted and has not reached its standby {peer} since, and acknowledges no write \
             without it (it may have been promoted meanwhile). The write is in this server's log only: it takes \
             effect if the standby answers while this server is still active, and not if the standby was \
             promoted. Check with configuration/get before retrying"
        );
        self.block_writes(failure, &pending);
    }
}
