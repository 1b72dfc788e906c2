//! Staging what must become durable, the persist marks that wait for
//! [`Input::Persisted`], and what runs once a mark is durable.

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
        let meta_changed = self
            .persisted_meta
            .as_ref()
            .is_none_or(|m| self.meta_differs(m));
        if meta_changed {
            let meta = self.durable_meta();
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

    /// Whether the durable metadata changed since `m` was persisted. The
    /// wall-clock "last protected" stamp changes on every input while
    /// protected; it is persisted along with the next real change.
    fn meta_differs(&self, m: &DurableMeta) -> bool {
        m.role != self.role
            || m.dr_state != self.dr_state
            || m.epoch != self.epoch
            || m.pair_id != self.pair_id
            || m.peer != self.peer
            || m.peer_identity != self.peer_identity
            || m.epoch_proof != self.epoch_proof
            || m.pairing_token != self.pairing_token
            || m.policy != self.policy
            || m.synced != self.synced
            || m.fenced_by != self.fenced_by
            || m.redirect_edge != self.redirect_edge
            || m.unprotected_writes != self.unprotected_writes
            || m.role_timestamp_ms != self.role_timestamp_ms
            || m.state_timestamp_ms != self.state_timestamp_ms
            || m.zombie_to_notify != self.zombie_to_notify
    }

    fn durable_meta(&self) -> DurableMeta {
        DurableMeta {
            role: self.role,
            dr_state: self.dr_state,
            epoch: self.epoch,
            pair_id: self.pair_id,
            peer: self.peer.clone(),
            peer_identity: self.peer_identity.clone(),
            epoch_proof: self.epoch_proof.clone(),
            pairing_token: self.pairing_token,
            policy: self.policy,
            synced: self.synced,
            fenced_by: self.fenced_by,
            redirect_edge: self.redirect_edge.clone(),
            unprotected_writes: self.unprotected_writes,
            last_dr_protected_ms: self.last_dr_protected_ms,
            role_timestamp_ms: self.role_timestamp_ms,
            state_timestamp_ms: self.state_timestamp_ms,
            zombie_to_notify: self.zombie_to_notify,
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
            match self.role {
                Role::Standby if self.snapshot_rx.is_none() && self.synced => {
                    let durable_index = self.durable_index;
                    self.send_peer(PeerMsg::AppendAck {
                        durable_index,
                        ok: true,
                    });
                }
                Role::Active | Role::Standalone => {
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
                let durable_index = self.durable_index;
                self.send_peer(PeerMsg::AppendAck {
                    durable_index,
                    ok: true,
                });
                // Then copy the samples the snapshot named, or say there are
                // none left to copy (not needed when it named none).
                if !self.applied.sample_seq.is_empty() {
                    self.pull_samples();
                }
            }
            AfterDurable::SamplesStored => self.pull_samples(),
            AfterDurable::GrantDemotion => self.send_demote_granted(),
            AfterDurable::FinishPromotion => self.finish_promotion(),
            AfterDurable::UnprotectedCounted(upto) => {
                if let Some(r) = self.replica.as_mut() {
                    r.unprotected_durable_upto = r.unprotected_durable_upto.max(upto);
                }
                self.advance_commit();
            }
        }
    }
}
