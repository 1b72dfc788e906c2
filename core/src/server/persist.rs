//! Staging what must become durable, the persist marks that wait for
//! [`Input::Persisted`], and what runs once a mark is durable.

use super::role::RoleState;
use super::Server;
use crate::api::*;
use crate::msg::*;
use crate::types::*;

/// Something to do once a persist request is durable.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum AfterDurable {
    Reply(RequestId, Reply),
    SendPair,
    /// Echoing the pairing token.
    SendPairAccepted(u128),
    SendJoin,
    AckSnapshot {
        index: Index,
        chunk: u32,
    },
    GrantDemotion,
    FinishPromotion,
    /// The unprotected-write count covering entries up to this index is durable.
    UnprotectedCounted(Index),
    /// Samples copied from the active are durable: pull the next ones.
    SamplesStored,
    /// This run's incarnation is durable: it may ship entries.
    IncarnationDurable,
    /// A standby's record of the active's run is durable: acknowledge it.
    FollowingDurable((Epoch, Incarnation)),
}

/// A persist request not yet confirmed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct PersistMark {
    pub(super) seq: PersistSeq,
    /// Log last index once this request is durable.
    pub(super) last_index: Index,
    pub(super) after: Vec<AfterDurable>,
}

impl Server {
    /// Stages the metadata if it changed and emits one `Persist` for everything staged.
    pub(super) fn flush(&mut self) {
        let mut meta = self.durable_meta();
        let meta_changed = match &self.persisted_meta {
            None => true,
            // The wall-clock "last protected" stamp changes on every input
            // while protected; it is persisted along with the next real change.
            Some(m) => {
                let stamp =
                    std::mem::replace(&mut meta.last_dr_protected_ms, m.last_dr_protected_ms);
                let changed = meta != *m;
                meta.last_dr_protected_ms = stamp;
                changed
            }
        };
        if meta_changed {
            self.staged
                .insert(0, PersistOp::Meta(Box::new(meta.clone())));
            self.persisted_meta = Some(meta);
        }
        if self.staged.is_empty() && self.staged_after.is_empty() {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let ops = std::mem::take(&mut self.staged);
        self.marks.push_back(PersistMark {
            seq,
            last_index: self.log.last_index(),
            after: std::mem::take(&mut self.staged_after),
        });
        self.outputs.push_back(Output::Persist { seq, ops });
    }

    /// The durable metadata as the state says it now: the one list of what
    /// [`DurableMeta`] holds (compared whole with `!=` in [`Server::flush`]).
    fn durable_meta(&self) -> DurableMeta {
        DurableMeta {
            role: self.role(),
            dr_state: self.dr_state,
            epoch: self.epoch,
            pair_id: self.pair_id,
            peer: self.peer.clone(),
            peer_identity: self.peer_identity.clone(),
            epoch_proof: self.epoch_proof.clone(),
            pairing_token: self.pairing_token,
            policy: self.policy,
            synced: self.role.synced(),
            fenced_by: self.role.fenced_by(),
            redirect_edge: self.role.redirect_edge().cloned(),
            unprotected_writes: self.unprotected_writes,
            last_dr_protected_ms: self.last_dr_protected_ms,
            role_timestamp_ms: self.role_timestamp_ms,
            state_timestamp_ms: self.state_timestamp_ms,
            zombie_to_notify: self.role.zombie_to_notify(),
            incarnation: self.incarnation,
            active_incarnation: self.role.active_incarnation(),
        }
    }

    pub(super) fn stage_append(&mut self, entry: Entry) {
        match self.staged.last_mut() {
            Some(PersistOp::Append(v)) => v.push(entry.clone()),
            _ => self.staged.push(PersistOp::Append(vec![entry.clone()])),
        }
        self.log.push(entry);
    }

    pub(super) fn append_op(&mut self, op: Op) -> Index {
        let index = self.log.last_index() + 1;
        self.stage_append(Entry {
            epoch: self.epoch,
            index,
            op,
        });
        index
    }

    pub(super) fn on_persisted(&mut self, up_to: PersistSeq) {
        let before = self.durable_index;
        let mut actions = Vec::new();
        while self.marks.front().is_some_and(|m| m.seq <= up_to) {
            // `front()` was just checked to be `Some`.
            let m = self.marks.pop_front().expect("checked");
            self.durable_index = m.last_index.min(self.log.last_index());
            actions.extend(m.after);
        }
        for a in actions {
            self.run_after(a);
        }
        if self.durable_index != before {
            match &self.role {
                RoleState::Standby(s) if s.snapshot_rx.is_none() && s.synced => {
                    self.send_append_ack(self.durable_index, true);
                }
                RoleState::Active(_) | RoleState::Standalone(_) => {
                    self.advance_commit();
                    self.replicate();
                }
                _ => {}
            }
        }
    }

    fn run_after(&mut self, a: AfterDurable) {
        match a {
            AfterDurable::Reply(req, r) => self.reply(req, Ok(r)),
            AfterDurable::SendPair => self.send_pair(),
            AfterDurable::SendPairAccepted(token) => self.send_pair_accepted(token),
            AfterDurable::SendJoin => self.send_join(),
            AfterDurable::AckSnapshot { index, chunk } => {
                self.send_peer(PeerMsg::SnapshotAck { index, chunk });
                self.send_append_ack(self.durable_index, true);
                // Then copy the samples the snapshot named, or say there are
                // none left to copy (not needed when it named none).
                if !self.applied.sample_seq.is_empty() {
                    self.pull_samples();
                }
            }
            AfterDurable::SamplesStored => self.pull_samples(),
            AfterDurable::GrantDemotion => self.send_demote_granted(),
            AfterDurable::FinishPromotion => self.finish_promotion(),
            AfterDurable::IncarnationDurable => {
                self.incarnation_durable = true;
                if self.role.replica().is_some() {
                    self.replicate();
                    // Probe at once: a restarted active takes writes only
                    // once its standby follows this run.
                    self.send_heartbeat_append();
                }
            }
            AfterDurable::FollowingDurable(run) => {
                if let Some(s) = self.role.standby_mut() {
                    if s.active_incarnation == Some(run) {
                        s.acks_incarnation = Some(run);
                        self.send_append_ack(self.durable_index, true);
                    }
                }
            }
            AfterDurable::UnprotectedCounted(upto) => {
                if let Some(r) = self.role.replica_mut() {
                    r.unprotected_durable_upto = r.unprotected_durable_upto.max(upto);
                }
                self.advance_commit();
            }
        }
    }
}
