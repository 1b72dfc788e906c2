//! Promotion and demotion, on both sides (SPEC §3 steps 3–5): the planned
//! switchover's handshake, the disaster promotion, and `demoteActive`.

use super::persist::AfterDurable;
use super::role::*;
use super::Server;
use crate::api::*;
use crate::config::mutant;
use crate::msg::*;
use crate::proof::EpochClaim;
use crate::types::*;
use std::sync::Arc;

/// A planned switchover on the active's side.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Demotion {
    pub(super) new_epoch: Epoch,
    pub(super) ticks: u32,
    /// drState to go back to if the switchover is abandoned.
    pub(super) resume: DrState,
}

/// A promotion on the standby's side.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Promotion {
    pub(super) req: RequestId,
    pub(super) planned: bool,
    pub(super) ticks: u32,
    /// Planned: the old active granted demotion and has nothing after this.
    pub(super) granted_last: Option<(Index, Epoch)>,
    pub(super) data_loss_bound: Option<u64>,
    /// drState to go back to if the switchover is abandoned.
    pub(super) resume: DrState,
}

impl Server {
    pub(super) fn on_demote_request(&mut self, new_epoch: Epoch) {
        if self.role.fenced_by() == Some(new_epoch) {
            self.send_demote_granted();
            return;
        }
        let resume = self.dr_state;
        let Some(a) = self
            .role
            .active_mut()
            .filter(|_| new_epoch == self.epoch + 1)
        else {
            let reason = format!(
                "cannot demote for epoch {new_epoch}: this server is {} / {} at epoch {}",
                self.role(),
                self.dr_state,
                self.epoch
            );
            self.send_peer(PeerMsg::Refused {
                reason,
                in_reply_to: None,
            });
            return;
        };
        if a.demotion.is_none() {
            a.demotion = Some(Demotion {
                new_epoch,
                ticks: 0,
                resume,
            });
            self.transition(
                DrState::PendingActiveDemotion,
                "planned switchover requested by the standby".into(),
            );
        }
        self.check_demotion_ready();
    }

    /// Demote once every entry is durable here and on the standby.
    pub(super) fn check_demotion_ready(&mut self) {
        let Some(ActiveState {
            replica,
            demotion: Some(d),
        }) = self.role.active()
        else {
            return;
        };
        let last = self.log.last_index();
        let standby_has_all = replica.match_index >= last && !replica.samples_unconfirmed;
        let skip = mutant!(self.cfg, PromoteWithoutCatchup);
        if !(self.durable_index >= last && (standby_has_all || skip)) {
            return;
        }
        let new_epoch = d.new_epoch;
        self.highest_epoch_seen = self.highest_epoch_seen.max(new_epoch);
        let zombie = ZombieState {
            fenced_by: Some(new_epoch),
            redirect_edge: self.peer.as_ref().map(|p| p.edge_address.clone()),
            rejoin_requested: false,
        };
        self.change_role(
            RoleState::Zombie(zombie),
            DrState::Zombie,
            format!("planned switchover: handed over at index {last} to epoch {new_epoch}"),
        );
        self.fail_pending("planned switchover: this server is now a zombie");
        self.staged_after.push(AfterDurable::GrantDemotion);
    }

    pub(super) fn send_demote_granted(&mut self) {
        let Some(new_epoch) = self.role.fenced_by() else {
            return;
        };
        let (last_index, last_epoch) = (self.log.last_index(), self.log.last_epoch());
        self.send_peer(PeerMsg::DemoteGranted {
            new_epoch,
            last_index,
            last_epoch,
        });
    }

    pub(super) fn on_demote_granted(
        &mut self,
        new_epoch: Epoch,
        last_index: Index,
        last_epoch: Epoch,
    ) {
        let Some(p) = self.role.standby_mut().and_then(|s| s.promotion.as_mut()) else {
            return;
        };
        if !p.planned || p.granted_last.is_some() || new_epoch != self.epoch + 1 {
            return;
        }
        let has_all = self.durable_index >= last_index
            && self
                .log
                .epoch_at(last_index)
                .is_none_or(|e| e == last_epoch);
        if !has_all && !mutant!(self.cfg, PromoteWithoutCatchup) {
            // Cannot happen when the active waited for our durable ack; refuse loudly.
            let (req, resume) = (p.req, p.resume);
            if let Some(s) = self.role.standby_mut() {
                s.promotion = None;
            }
            let why = format!(
                "the old active handed over index {last_index}, but only {} is durable here; promote again \
                 (disaster promotion) once you have checked the old active",
                self.durable_index
            );
            self.transition(resume, format!("planned switchover abandoned: {why}"));
            self.reply(req, Err(CommandError::SwitchoverAbandoned(why)));
            return;
        }
        p.granted_last = Some((last_index, last_epoch));
        self.begin_new_epoch();
    }

    /// Writes the first entry of `epoch + 1`; promotion finishes once it is durable.
    fn begin_new_epoch(&mut self) {
        self.epoch += 1;
        self.highest_epoch_seen = self.highest_epoch_seen.max(self.epoch);
        // The proof goes to disk with the epoch's first entry (one commit).
        if let Some(pair_id) = self.pair_id {
            self.epoch_proof = Some(Arc::new(self.keys.prove(EpochClaim {
                pair_id,
                epoch: self.epoch,
                holder: self.me.uuid,
                holder_name: self.me.name.clone(),
                holder_edge_address: self.me.edge_address.clone(),
            })));
        }
        // Everything this standby holds becomes committed in the new epoch.
        let last = self.log.last_index();
        self.apply_upto(last);
        self.append_op(Op::EpochStart);
        self.staged_after.push(AfterDurable::FinishPromotion);
    }

    pub(super) fn finish_promotion(&mut self) {
        let Some(p) = self.role.standby_mut().and_then(|s| s.promotion.take()) else {
            return;
        };
        let epoch = self.epoch;
        let how = if p.planned {
            "planned switchover"
        } else {
            "disaster failover"
        };
        let uncopied = match self.samples_to_copy.len() {
            0 => String::new(),
            n => format!(
                "; {n} ranges of monitoring samples were still being copied from the old active and \
                 are not on this server"
            ),
        };
        let promoted = StandaloneState {
            zombie_to_notify: true,
        };
        self.change_role(
            RoleState::Standalone(promoted),
            DrState::StandbyPromoted,
            format!("promoted by {how} to epoch {epoch}{uncopied}"),
        );
        self.send_new_epoch();
        self.advance_commit();
        self.reply(
            p.req,
            Ok(Reply::Promoted {
                epoch,
                data_loss_bound: p.data_loss_bound,
            }),
        );
    }

    /// A promotion the operator asked of this standby begins.
    fn start_promotion(&mut self, p: Promotion) {
        if let Some(s) = self.role.standby_mut() {
            s.promotion = Some(p);
        }
    }

    pub(super) fn cmd_promote(
        &mut self,
        req: RequestId,
        force: bool,
    ) -> Result<Option<Reply>, CommandError> {
        const M: Method = Method::PromoteStandbyToActive;
        let Some(sb) = self.role.standby() else {
            return Err(self.wrong_state(M, "only a STANDBY can be promoted"));
        };
        if sb.promotion.is_some() {
            return Err(self.wrong_state(M, "a promotion is already in progress"));
        }
        if !sb.synced {
            return Err(self.wrong_state(
                M,
                "this standby never completed its initial copy; promoting it would lose data",
            ));
        }
        let resume = self.dr_state;
        match self.dr_state {
            DrState::FailureGetActiveStatus => {
                let bound = match self.policy {
                    OnStandbyLoss::Block => Some(0),
                    OnStandbyLoss::Degrade => None,
                };
                self.start_promotion(Promotion {
                    req,
                    planned: false,
                    ticks: 0,
                    granted_last: None,
                    data_loss_bound: bound,
                    resume,
                });
                self.transition(
                    DrState::PendingStandbyPromotion,
                    "disaster failover requested by the operator".into(),
                );
                self.begin_new_epoch();
            }
            DrState::StandbyRunning | DrState::StandbySync
                if force && !self.samples_to_copy.is_empty() =>
            {
                return Err(self.wrong_state(
                    M,
                    format!(
                        "this standby is still copying monitoring samples from the active ({} ranges \
                         left, after a snapshot); a planned switchover now would leave them on the active \
                         only. Retry once it is STANDBY_RUNNING",
                        self.samples_to_copy.len()
                    ),
                ));
            }
            DrState::StandbyRunning | DrState::StandbySync if force => {
                self.start_promotion(Promotion {
                    req,
                    planned: true,
                    ticks: 0,
                    granted_last: None,
                    data_loss_bound: Some(0),
                    resume,
                });
                self.transition(
                    DrState::PendingStandbyPromotion,
                    "planned switchover requested by the operator".into(),
                );
                let new_epoch = self.epoch + 1;
                self.send_peer(PeerMsg::DemoteRequest { new_epoch });
            }
            DrState::StandbyRunning | DrState::StandbySync => {
                return Err(self.wrong_state(
                    M,
                    "the active is reachable; use force:true for a planned switchover (zero loss) \
                     or wait until the active is lost",
                ));
            }
            _ => return Err(self.wrong_state(M, "this standby is not ready to be promoted")),
        }
        Ok(None)
    }

    pub(super) fn cmd_demote(
        &mut self,
        req: RequestId,
        force: bool,
    ) -> Result<Option<Reply>, CommandError> {
        const M: Method = Method::DemoteActive;
        let Some(a) = self.role.active() else {
            return Err(self.wrong_state(M, "only an ACTIVE server can be demoted"));
        };
        let lag = self.log.last_index().saturating_sub(a.replica.match_index);
        if !force && lag > 0 {
            return Err(self.wrong_state(
                M,
                format!("the standby lacks {lag} entries; demoting now would leave them only here. Use force:true to demote anyway"),
            ));
        }
        let zombie = ZombieState {
            fenced_by: None,
            redirect_edge: self.peer.as_ref().map(|p| p.edge_address.clone()),
            rejoin_requested: false,
        };
        self.change_role(
            RoleState::Zombie(zombie),
            DrState::Zombie,
            format!("demoted by the operator (force = {force})"),
        );
        self.fail_pending("this server was demoted by the operator");
        self.staged_after
            .push(AfterDurable::Reply(req, Reply::Accepted));
        Ok(None)
    }
}
