//! The commit point: what may be acknowledged (alone, with the standby, or
//! degraded), applying committed entries, the in-memory log window, and the
//! writes and sample batches waiting for their entry to commit.

use super::persist::AfterDurable;
use super::role::{ActiveState, RoleState};
use super::Server;
use crate::api::*;
use crate::config::mutant;
use crate::durable::{apply_entry, fold_sample_seq};
use crate::msg::*;
use crate::types::*;

/// An operator write waiting to be acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct PendingWrite {
    pub(super) req: RequestId,
    pub(super) index: Index,
    pub(super) key: String,
    pub(super) delete: bool,
}

/// A monitoring batch waiting for its entry to commit.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct PendingSampleAck {
    pub(super) reply_to: ReplyTo,
    pub(super) index: Index,
    pub(super) up_to_seq: u64,
}

impl Server {
    /// The highest index that may be acknowledged to clients.
    fn ack_point(&self) -> Index {
        match &self.role {
            RoleState::Standalone(_) => self.durable_index,
            RoleState::Active(ActiveState { replica: r, .. }) => {
                if mutant!(self.cfg, AckBeforeStandby) {
                    self.durable_index
                } else if r.degraded() {
                    // Unprotected writes are acknowledged once their count is durable.
                    self.durable_index
                        .min(r.match_index.max(r.unprotected_durable_upto))
                } else {
                    self.durable_index.min(r.match_index)
                }
            }
            RoleState::Standby(_) | RoleState::Zombie(_) => self.applied.index,
        }
    }

    /// Moves the commit point forward (writer roles) and acknowledges what it covers.
    pub(super) fn advance_commit(&mut self) {
        if !self.role().is_writer() {
            return;
        }
        let applied = self.applied.index;
        let upto = self.durable_index.min(self.log.last_index());
        if let Some(r) = self.role.replica_mut().filter(|r| r.degraded()) {
            // Count what degrade will acknowledge; the count goes to disk with
            // the next persist, and the writes are acknowledged after it.
            let from = applied.max(r.match_index).max(r.unprotected_counted_upto);
            if upto > from {
                let n = self
                    .log
                    .iter_after(from)
                    .take_while(|e| e.index <= upto)
                    .filter(|e| e.op != Op::EpochStart)
                    .count();
                self.unprotected_writes += n as u64;
                r.unprotected_counted_upto = upto;
                self.staged_after
                    .push(AfterDurable::UnprotectedCounted(upto));
            }
        }
        let target = self.ack_point().min(self.log.last_index());
        if target <= self.applied.index {
            return;
        }
        self.apply_upto(target);
        self.answer_committed();
    }

    pub(super) fn apply_upto(&mut self, target: Index) {
        let from = self.applied.index;
        if target <= from {
            return;
        }
        let entries: Vec<Entry> = self
            .log
            .iter_after(from)
            .take_while(|e| e.index <= target)
            .cloned()
            .collect();
        let retain = self.cfg.retain_samples_per_client;
        let mut prune = Vec::new();
        for e in &entries {
            if let Op::Samples { client, samples } = &e.op {
                self.samples_stored_since_start += samples.len() as u64;
                // Retention: older samples of this client leave storage.
                if let Some(last) = samples.last().filter(|s| s.seq > retain) {
                    prune.push(PersistOp::PruneSamples {
                        client: client.clone(),
                        below_seq: last.seq - retain + 1,
                    });
                }
            }
            apply_entry(&mut self.applied, e);
        }
        self.staged.push(PersistOp::Commit(self.applied.index));
        self.staged.extend(prune);
        self.trim_window();
    }

    fn trim_window(&mut self) {
        let before = self.log.base_index();
        let base = self.log.trim_front(
            self.cfg.log_window_entries,
            self.cfg.log_window_bytes,
            self.applied.index,
        );
        if base == before {
            return;
        }
        // Storage keeps what the standby may still need from the log.
        let safe = match self.role.replica() {
            Some(r) => r.match_index.min(base),
            None => base,
        };
        if safe >= self.storage_compacted_below + (self.cfg.log_window_entries as u64 / 4).max(1) {
            self.storage_compacted_below = safe;
            self.staged.push(PersistOp::Compact { below: safe + 1 });
        }
    }

    fn answer_committed(&mut self) {
        let c = self.applied.index;
        while self.writes.front().is_some_and(|w| w.index <= c) {
            let w = self.writes.pop_front().expect("checked");
            let r = if w.delete {
                Reply::Deleted {
                    key: w.key,
                    version: w.index,
                }
            } else {
                Reply::Written {
                    key: w.key,
                    version: w.index,
                }
            };
            self.reply(w.req, Ok(r));
        }
        while self.sample_acks.front().is_some_and(|a| a.index <= c) {
            let a = self.sample_acks.pop_front().expect("checked");
            let msg = ServerMsg::MonitoringAck {
                epoch: self.epoch,
                up_to_seq: a.up_to_seq,
            };
            self.out(Output::ReplyEdge {
                reply_to: a.reply_to,
                msg,
            });
        }
    }

    /// Takes the samples of the log beyond the applied state into the
    /// highest seq of each client seen (`pending_sample_seq`).
    pub(super) fn fold_pending_sample_seq(&mut self) {
        for e in self.log.iter_after(self.applied.index) {
            fold_sample_seq(&mut self.pending_sample_seq, &e.op);
        }
    }

    /// Refuses every waiting write and sample batch (fenced, demoted, unpaired).
    pub(super) fn fail_pending(&mut self, reason: &str) {
        for w in std::mem::take(&mut self.writes) {
            let e = CommandError::NotAcknowledged {
                index: w.index,
                reason: reason.to_string(),
            };
            self.reply(w.req, Err(e));
        }
        for a in std::mem::take(&mut self.sample_acks) {
            let msg = self.refused_msg(reason.to_string());
            self.out(Output::ReplyEdge {
                reply_to: a.reply_to,
                msg,
            });
        }
    }
}
