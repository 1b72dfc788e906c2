//! The standby's side of replication (SPEC §4): snapshots and entries from
//! the active, made durable and acknowledged.

use super::persist::AfterDurable;
use super::Server;
use crate::api::*;
use crate::log::Log;
use crate::msg::*;
use crate::types::*;

/// A snapshot being received.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct SnapshotRx {
    pub(super) snapshot: Snapshot,
    pub(super) next: u32,
}

impl Server {
    /// Anything from the active: it is reachable.
    fn on_active_heard(&mut self) {
        let Some(sb) = self.role.standby_mut() else {
            return;
        };
        sb.active_heard = true;
        sb.active_missed_ticks = 0;
        let synced = sb.synced;
        if self.dr_state == DrState::FailureGetActiveStatus {
            let to = if synced {
                DrState::StandbySync
            } else {
                DrState::StandbyConfiguring
            };
            self.transition(to, "active reachable again".into());
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_snapshot_chunk(
        &mut self,
        epoch: Epoch,
        index: Index,
        snapshot_epoch: Epoch,
        chunk: u32,
        last: bool,
        docs: Vec<(String, Doc)>,
        sample_seq: Vec<(ClientId, u64)>,
        epoch_starts: Vec<(Epoch, Index)>,
        config_index: Index,
    ) {
        if self.role() != Role::Standby
            || epoch != self.epoch
            || self.dr_state == DrState::StandbyCandidate
        {
            return;
        }
        self.on_active_heard();
        let Some(sb) = self.role.standby_mut() else {
            return;
        };
        // A snapshot of a point this standby already holds (a restarted active
        // probing from scratch): acknowledge it without going back in time.
        let covered = sb.synced
            && sb.snapshot_rx.is_none()
            && (index <= self.applied.index || self.log.epoch_at(index) == Some(snapshot_epoch));
        if covered && index <= self.durable_index {
            self.send_peer(PeerMsg::SnapshotAck { index, chunk });
            if last {
                self.send_append_ack(self.durable_index, true);
            }
            return;
        }
        let Some(sb) = self.role.standby_mut() else {
            return;
        };
        if chunk == 0
            && sb
                .snapshot_rx
                .as_ref()
                .is_none_or(|rx| rx.snapshot.index != index || rx.next > 1)
        {
            let snapshot = Snapshot {
                index,
                epoch: snapshot_epoch,
                ..Snapshot::default()
            };
            sb.snapshot_rx = Some(SnapshotRx { snapshot, next: 0 });
        }
        let Some(rx) = sb.snapshot_rx.as_mut() else {
            return;
        };
        if rx.snapshot.index != index {
            return;
        }
        if chunk < rx.next {
            // A repeat of a chunk we already have: acknowledge it again.
            if !last {
                self.send_peer(PeerMsg::SnapshotAck { index, chunk });
            }
            return;
        }
        if chunk > rx.next {
            return;
        }
        rx.snapshot.docs.extend(docs);
        rx.next += 1;
        if !last {
            self.send_peer(PeerMsg::SnapshotAck { index, chunk });
            return;
        }
        let mut snap = std::mem::take(&mut rx.snapshot);
        sb.snapshot_rx = None;
        sb.synced = true;
        snap.sample_seq = sample_seq.into_iter().collect();
        snap.epoch_starts = epoch_starts;
        snap.config_index = config_index;
        self.fail_pending("replaced by a snapshot");
        self.log = Log::starting_after(snap.index, snap.epoch);
        self.durable_index = snap.index;
        self.pending_sample_seq = snap.sample_seq.clone();
        let before = std::mem::replace(&mut self.applied, snap.clone());
        self.storage_compacted_below = snap.index;
        self.staged.push(PersistOp::InstallSnapshot(snap.clone()));
        // The snapshot names the samples, it does not carry them: the ones
        // this server lacks are copied from the active (`samples_copy`).
        self.plan_sample_copy(&before.sample_seq, &snap);
        if self.dr_state != DrState::StandbySync {
            self.transition(
                DrState::StandbySync,
                format!("snapshot at index {index} installed"),
            );
        }
        self.staged_after
            .push(AfterDurable::AckSnapshot { index, chunk });
    }

    /// Acknowledges to the active's run this standby durably follows; says
    /// nothing while the record of a newer run is not durable yet (an ack
    /// is what lets a restarted active write again, SPEC §4).
    pub(super) fn send_append_ack(&mut self, durable_index: Index, ok: bool) {
        let Some((_, incarnation)) = self
            .role
            .standby()
            .filter(|s| s.acks_incarnation == s.active_incarnation)
            .and_then(|s| s.acks_incarnation)
        else {
            return;
        };
        self.send_peer(PeerMsg::AppendAck {
            incarnation,
            durable_index,
            ok,
        });
    }

    /// The incarnation fence (SPEC §4) for an Append of the active's run
    /// `run`: false if it comes from an earlier run than the one followed
    /// (ignore it). A newer run: what this log holds beyond `since` (never
    /// below what is applied) came from an earlier run, which never made it
    /// durable — drop it, and follow `run` once that is durable.
    fn follow_run(&mut self, run: (Epoch, Incarnation), since: Index) -> bool {
        let followed = self.role.active_incarnation();
        if followed.is_some_and(|f| f > run) {
            let reason = format!(
                "from the active's incarnation {} of epoch {}; this standby follows {:?}",
                run.1, run.0, followed
            );
            self.event(Event::PeerIgnored {
                kind: "Append",
                reason,
            });
            return false;
        }
        if followed == Some(run) {
            return true;
        }
        let keep = since.max(self.applied.index);
        if self.log.last_index() > keep {
            self.drop_log_after(keep);
        }
        if let Some(s) = self.role.standby_mut() {
            s.active_incarnation = Some(run);
        }
        self.staged_after.push(AfterDurable::FollowingDurable(run));
        true
    }

    /// Drops the log after `at` (entries never applied here), on disk too.
    fn drop_log_after(&mut self, at: Index) {
        debug_assert!(at >= self.applied.index, "applied entries stay");
        self.log.truncate_after(at);
        self.durable_index = self.durable_index.min(at);
        self.staged.push(PersistOp::TruncateAfter(at));
        self.pending_sample_seq = self.applied.sample_seq.clone();
        self.fold_pending_sample_seq();
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_append(
        &mut self,
        run: (Epoch, Incarnation),
        since: Index,
        prev_index: Index,
        prev_epoch: Epoch,
        entries: Vec<Entry>,
        commit_index: Index,
        active_durable: Index,
    ) {
        if self.role() != Role::Standby
            || run.0 != self.epoch
            || self.dr_state == DrState::StandbyCandidate
        {
            return;
        }
        self.on_active_heard();
        if self
            .role
            .standby()
            .is_none_or(|sb| sb.snapshot_rx.is_some() || !sb.synced)
        {
            return;
        }
        if !self.follow_run(run, since) {
            return;
        }
        let last = self.log.last_index();
        if prev_index > last {
            self.send_append_ack(self.durable_index.min(last), false);
            return;
        }
        let base = self.log.base_index();
        let mut entries = entries;
        let mut prev = (prev_index, prev_epoch);
        if prev_index < base {
            // Entries at or below our window's base are committed and identical.
            entries.retain(|e| e.index > base);
            prev = (base, self.log.epoch_at(base).unwrap_or(0));
        }
        if entries.first().is_some_and(|e| e.index != prev.0 + 1) {
            return;
        }
        if self.log.epoch_at(prev.0) != Some(prev.1) {
            self.send_append_ack(self.applied.index, false);
            return;
        }
        for e in entries {
            match self.log.epoch_at(e.index) {
                Some(ep) if ep == e.epoch => continue,
                Some(_) => {
                    let at = e.index - 1;
                    if at < self.applied.index {
                        self.event(Event::PeerIgnored {
                            kind: "Append",
                            reason: format!("conflicts with committed entry {}", e.index),
                        });
                        return;
                    }
                    self.drop_log_after(at);
                    self.stage_append(e);
                }
                None => self.stage_append(e),
            }
        }
        self.fold_pending_sample_seq();
        let new_commit = commit_index.min(self.log.last_index());
        self.apply_upto(new_commit);
        let last = self.log.last_index();
        if last >= active_durable
            && self.samples_to_copy.is_empty()
            && self.dr_state == DrState::StandbySync
        {
            self.transition(
                DrState::StandbyRunning,
                format!("caught up with the active at index {last}"),
            );
        }
        if self.durable_index >= last
            && !self
                .staged
                .iter()
                .any(|o| matches!(o, PersistOp::Append(_)))
        {
            self.send_append_ack(self.durable_index, true);
        }
    }
}
