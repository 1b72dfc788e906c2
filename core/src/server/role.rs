//! The role a server has and what only that role holds (SPEC §2).
//!
//! [`RoleState`] is the one place a role's state lives: entering a role
//! builds its state from nothing but what the caller gives, and leaving it
//! drops that state whole, so no field of one role outlives it in another.
//! Every change of role goes through [`Server::leave_role`] (most through
//! [`Server::change_role`], which also records the transition); a change of
//! drState within a role through [`Server::transition`].

use super::replication_active::Replica;
use super::replication_standby::SnapshotRx;
use super::switchover::{Demotion, Promotion};
use super::Server;
use crate::api::*;
use crate::types::*;

/// The server's role and the state that only this role holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum RoleState {
    Standalone(StandaloneState),
    Active(ActiveState),
    Standby(StandbyState),
    Zombie(ZombieState),
}

/// Alone and writing: never paired, unpaired, or promoted.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub(super) struct StandaloneState {
    /// Promoted, and the old active has neither acknowledged the new epoch
    /// (`ZombieAck`) nor left the pair: it is told again at every peer tick.
    /// Durable.
    pub(super) zombie_to_notify: bool,
}

/// Writing, and replicating to a standby.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct ActiveState {
    /// The standby as this server sees it.
    pub(super) replica: Replica,
    /// A planned switchover the standby asked for, until handed over or abandoned.
    pub(super) demotion: Option<Demotion>,
}

impl ActiveState {
    /// Why this active refuses new writes (configuration and monitoring)
    /// now, if it does; `failure` is the server's failure text, shown when
    /// writes are blocked for the standby's loss.
    pub(super) fn write_refusal(&self, failure: Option<&str>) -> Option<String> {
        if self.demotion.is_some() {
            return Some("a planned switchover is in progress; retry on the new active".into());
        }
        if self.replica.blocked() {
            return Some(failure.unwrap_or("standby lost").to_string());
        }
        if self.replica.restart_unconfirmed {
            // SPEC §4, incarnation fence: the standby may hold entries the
            // last run shipped but never made durable here.
            return Some(
                "this server restarted and waits for its standby to drop what the last run sent but \
                 never made durable (SPEC §4); writes resume as soon as the standby answers — retry shortly"
                    .into(),
            );
        }
        None
    }
}

/// Following an active, or prepared to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub(super) struct StandbyState {
    /// The initial copy is complete: a snapshot was installed since this
    /// server paired or rejoined. Durable.
    pub(super) synced: bool,
    /// Heard from the active since the last peer tick.
    pub(super) active_heard: bool,
    /// Peer ticks in a row without the active (at most `peer_failure_threshold`).
    pub(super) active_missed_ticks: u32,
    /// A snapshot being received.
    pub(super) snapshot_rx: Option<SnapshotRx>,
    /// Made by `transitionToStandby`: it joins the active named in the blob
    /// at every peer tick until paired or refused.
    pub(super) join_target: bool,
    /// A promotion under way, until it is durable or abandoned.
    pub(super) promotion: Option<Promotion>,
    /// The active's run this standby follows: `(epoch, incarnation)` of
    /// the newest Append taken (SPEC §4, incarnation fence). Durable.
    pub(super) active_incarnation: Option<(Epoch, Incarnation)>,
    /// ...and the one of those whose record is durable: acknowledgements
    /// are sent for that run only, none while a newer record is not durable.
    pub(super) acks_incarnation: Option<(Epoch, Incarnation)>,
}

/// Fenced: a higher epoch exists, or the operator demoted this server.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub(super) struct ZombieState {
    /// The epoch that fenced this server; `None` when the operator demoted
    /// it and no successor is known. Durable.
    pub(super) fenced_by: Option<Epoch>,
    /// Edge address of the server that holds the higher epoch, when known. Durable.
    pub(super) redirect_edge: Option<String>,
    /// `rejoinAsStandby` was called: the rejoin is sent at every peer tick
    /// until accepted or refused.
    pub(super) rejoin_requested: bool,
}

impl RoleState {
    pub(super) fn kind(&self) -> Role {
        match self {
            RoleState::Standalone(_) => Role::Standalone,
            RoleState::Active(_) => Role::Active,
            RoleState::Standby(_) => Role::Standby,
            RoleState::Zombie(_) => Role::Zombie,
        }
    }

    pub(super) fn standalone_mut(&mut self) -> Option<&mut StandaloneState> {
        match self {
            RoleState::Standalone(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn active(&self) -> Option<&ActiveState> {
        match self {
            RoleState::Active(a) => Some(a),
            _ => None,
        }
    }

    pub(super) fn active_mut(&mut self) -> Option<&mut ActiveState> {
        match self {
            RoleState::Active(a) => Some(a),
            _ => None,
        }
    }

    /// The active's view of its standby.
    pub(super) fn replica(&self) -> Option<&Replica> {
        self.active().map(|a| &a.replica)
    }

    pub(super) fn replica_mut(&mut self) -> Option<&mut Replica> {
        self.active_mut().map(|a| &mut a.replica)
    }

    pub(super) fn standby(&self) -> Option<&StandbyState> {
        match self {
            RoleState::Standby(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn standby_mut(&mut self) -> Option<&mut StandbyState> {
        match self {
            RoleState::Standby(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn zombie(&self) -> Option<&ZombieState> {
        match self {
            RoleState::Zombie(z) => Some(z),
            _ => None,
        }
    }

    pub(super) fn zombie_mut(&mut self) -> Option<&mut ZombieState> {
        match self {
            RoleState::Zombie(z) => Some(z),
            _ => None,
        }
    }

    /// A standby whose initial copy is complete.
    pub(super) fn synced(&self) -> bool {
        self.standby().is_some_and(|s| s.synced)
    }

    /// The epoch that fenced this zombie.
    pub(super) fn fenced_by(&self) -> Option<Epoch> {
        self.zombie().and_then(|z| z.fenced_by)
    }

    /// Where this zombie sends edges: the holder of the higher epoch.
    pub(super) fn redirect_edge(&self) -> Option<&String> {
        self.zombie().and_then(|z| z.redirect_edge.as_ref())
    }

    /// The active's run a standby follows (durable).
    pub(super) fn active_incarnation(&self) -> Option<(Epoch, Incarnation)> {
        self.standby().and_then(|s| s.active_incarnation)
    }

    /// A promoted server that still has to tell the old active.
    pub(super) fn zombie_to_notify(&self) -> bool {
        matches!(self, RoleState::Standalone(s) if s.zombie_to_notify)
    }
}

impl Server {
    /// The one way out of a role: answers what the role left had under way
    /// (a promotion, refused with `why`), disarms what only it had armed
    /// (the active's standby grace) and enters `next`, dropping the state
    /// of the role left. Returns the role left; the caller records the
    /// transition to `next`'s drState at once ([`Server::record_transition`]).
    pub(super) fn leave_role(&mut self, next: RoleState, why: &str) -> Role {
        debug_assert_ne!(next.kind(), self.role(), "not a change of role");
        let promotion = self.role.standby_mut().and_then(|s| s.promotion.take());
        if let Some(p) = promotion {
            let e = self.wrong_state(Method::PromoteStandbyToActive, why);
            self.reply(p.req, Err(e));
        }
        if self.role() == Role::Active {
            self.out(Output::CancelTimer(Timer::StandbyGrace));
        }
        std::mem::replace(&mut self.role, next).kind()
    }

    /// Leaves the current role for `next`, in drState `to` (see
    /// [`Server::leave_role`]; a promotion under way is refused with `reason`).
    pub(super) fn change_role(&mut self, next: RoleState, to: DrState, reason: String) {
        let left = self.leave_role(next, &reason);
        self.record_transition(left, to, reason);
    }

    /// A change of drState within the current role.
    pub(super) fn transition(&mut self, to: DrState, reason: String) {
        self.record_transition(self.role(), to, reason);
    }

    /// Records a change from role `from` (and the current drState) to the
    /// current role in drState `to`: event, in-memory and durable history.
    pub(super) fn record_transition(&mut self, from: Role, to: DrState, reason: String) {
        let role = self.role();
        debug_assert!(
            DrState::allowed_for(role).contains(&to),
            "{role} cannot be in {to}"
        );
        if role == from && to == self.dr_state {
            return;
        }
        let t = Transition {
            from_role: from,
            from: self.dr_state,
            to_role: role,
            to,
            epoch: self.epoch,
            timestamp_ms: self.now.wall_ms,
            reason,
        };
        if role != from {
            self.role_timestamp_ms = self.now.wall_ms;
        }
        self.state_timestamp_ms = self.now.wall_ms;
        self.dr_state = to;
        if !matches!(
            to,
            DrState::FailureGetActiveStatus | DrState::FailureGetStandbyStatus
        ) {
            self.failure = None;
        }
        if self.history.len() >= self.cfg.history_entries {
            self.history.pop_front();
        }
        self.history.push_back(t.clone());
        self.staged.push(PersistOp::History(t.clone()));
        self.event(Event::Transition(t));
    }
}
