//! Building a server from what its storage holds: the role and epoch it
//! had (SPEC §2), the log replayed up to the commit point, and the state
//! re-established with the peer after a restart.

use super::persist::AfterDurable;
use super::replication_active::Replica;
use super::role::*;
use super::Server;
use super::{Now, FIRST_EPOCH};
use crate::api::*;
use crate::config::{mutant, ServerConfig};
use crate::durable::{apply_entry, Restored};
use crate::log::Log;
use crate::proof::Keys;
use crate::rng::Rng;
use crate::types::*;
use std::collections::{BTreeMap, VecDeque};

impl Server {
    /// A server restarting from what its storage holds: it comes back in the
    /// role and epoch it had (SPEC §2).
    pub fn restore(cfg: ServerConfig, me: ServerInfo, r: Restored, now: Now) -> Self {
        debug_assert!(cfg.validate().is_ok(), "validate the configuration first");
        let rng = Rng::new(cfg.seed ^ (me.uuid as u64) ^ ((me.uuid >> 64) as u64));
        let mut applied = r.applied;
        let mut log = Log::starting_after(applied.index, applied.epoch);
        // Replay committed entries beyond the applied state, then keep the rest.
        let applied_index = applied.index;
        let mut entries = r
            .log
            .into_iter()
            .skip_while(|e| e.index <= applied_index)
            .peekable();
        while let Some(e) = entries.next_if(|e| e.index <= r.commit) {
            apply_entry(&mut applied, &e);
            log.push(e);
        }
        for e in entries {
            if e.index == log.last_index() + 1 {
                log.push(e);
            }
        }
        let commit = applied.index;
        log.trim_front(cfg.log_window_entries, cfg.log_window_bytes, commit);
        let history: VecDeque<Transition> = r.history.into_iter().collect();
        let mut s = Server {
            me,
            now,
            rng,
            role: RoleState::Standalone(StandaloneState::default()),
            dr_state: DrState::Unconfigured,
            epoch: FIRST_EPOCH,
            highest_epoch_seen: FIRST_EPOCH,
            pair_id: None,
            peer: None,
            peer_identity: None,
            epoch_proof: None,
            keys: Keys::default(),
            rejected_proofs: VecDeque::new(),
            client_limits: BTreeMap::new(),
            pairing_token: None,
            policy: cfg.on_standby_loss,
            unprotected_writes: 0,
            last_dr_protected_ms: None,
            role_timestamp_ms: now.wall_ms,
            state_timestamp_ms: now.wall_ms,
            failure: None,
            history,
            persisted_meta: r.meta.clone(),
            incarnation: r.meta.as_ref().map_or(0, |m| m.incarnation) + 1,
            incarnation_durable: false,
            durable_index: log.last_index(),
            storage_compacted_below: 0,
            log,
            pending_sample_seq: applied.sample_seq.clone(),
            applied,
            next_seq: 1,
            staged: Vec::new(),
            staged_after: Vec::new(),
            marks: VecDeque::new(),
            samples_to_copy: r
                .samples_to_copy
                .into_iter()
                .map(|x| ((x.client, x.after_seq), x.up_to_seq))
                .collect(),
            writes: VecDeque::new(),
            sample_acks: VecDeque::new(),
            samples_stored_since_start: 0,
            contacts: BTreeMap::new(),
            outputs: VecDeque::new(),
            cfg,
        };
        s.fold_pending_sample_seq();
        if let Some(m) = r.meta {
            s.role = match m.role {
                Role::Standalone => RoleState::Standalone(StandaloneState {
                    zombie_to_notify: m.zombie_to_notify,
                }),
                Role::Active => {
                    let need_snapshot = m.dr_state == DrState::ActiveWaitStandby;
                    let mut replica = Replica::new(need_snapshot, s.log.last_index());
                    replica.lag_since_ms = Some(now.mono_ms);
                    replica.unheard_since_restart = true;
                    // The last run may have shipped entries it never made
                    // durable: no new entry until the standby drops them.
                    replica.restart_unconfirmed = !mutant!(s.cfg, ReuseIndexAfterRestart);
                    // Whether the standby still copies samples is not known
                    // here (unless there are none): it says so again, from
                    // this point on.
                    replica.samples_unconfirmed = !s.applied.sample_seq.is_empty();
                    replica.samples_confirm_from = s.applied.index;
                    RoleState::Active(ActiveState {
                        replica,
                        demotion: None,
                    })
                }
                Role::Standby => RoleState::Standby(StandbyState {
                    synced: m.synced,
                    join_target: m.dr_state == DrState::StandbyCandidate && m.peer.is_some(),
                    active_incarnation: m.active_incarnation,
                    acks_incarnation: m.active_incarnation,
                    ..StandbyState::default()
                }),
                Role::Zombie => RoleState::Zombie(ZombieState {
                    fenced_by: m.fenced_by,
                    redirect_edge: m.redirect_edge.clone(),
                    rejoin_requested: false,
                }),
            };
            if mutant!(s.cfg, ReuseIndexAfterRestart) {
                // The mutant: this run passes for the last one.
                s.incarnation = m.incarnation;
            }
            s.epoch = m.epoch;
            s.highest_epoch_seen = m.fenced_by.unwrap_or(m.epoch).max(m.epoch);
            s.pair_id = m.pair_id;
            s.peer = m.peer.clone();
            s.peer_identity = m.peer_identity.clone();
            s.epoch_proof = m.epoch_proof.clone();
            s.pairing_token = m.pairing_token;
            s.policy = m.policy;
            s.unprotected_writes = m.unprotected_writes;
            s.last_dr_protected_ms = m.last_dr_protected_ms;
            s.role_timestamp_ms = m.role_timestamp_ms;
            s.state_timestamp_ms = m.state_timestamp_ms;
            s.dr_state = m.dr_state;
            let promoted_durably = m.role == Role::Standby
                && m.dr_state == DrState::PendingStandbyPromotion
                && s.log
                    .get(s.log.last_index())
                    .is_some_and(|e| e.op == Op::EpochStart && e.epoch == m.epoch);
            if promoted_durably {
                // The first entry of the new epoch was durable: the promotion happened.
                let last = s.log.last_index();
                s.apply_upto(last);
                s.change_role(
                    RoleState::Standalone(StandaloneState {
                        zombie_to_notify: true,
                    }),
                    DrState::StandbyPromoted,
                    format!("restarted: promotion to epoch {} was durable", m.epoch),
                );
            }
            let resumed = s.state_after_restart(s.dr_state);
            if resumed != s.dr_state {
                s.transition(
                    resumed,
                    "restarted: state re-established with the peer".into(),
                );
            }
        }
        // Entries durable in the log but not yet recorded as committed.
        s.advance_commit();
        s.set_timer(Timer::PeerTick, s.cfg.peer_heartbeat_interval_ms);
        if s.role() == Role::Active && s.dr_state == DrState::FailureGetStandbyStatus {
            if let Some(r) = s.role.replica_mut() {
                r.declare_lost();
            }
            s.set_timer(Timer::StandbyGrace, s.cfg.standby_grace_ms);
            // Lost before the restart and not heard since: refused at once.
            s.block_restarted_alone();
        }
        // This run ships nothing before its incarnation is durable (SPEC §4).
        s.staged_after.push(AfterDurable::IncarnationDurable);
        s.flush();
        s
    }

    fn state_after_restart(&self, st: DrState) -> DrState {
        use DrState::*;
        match (self.role(), st) {
            (Role::Active, ActiveConfiguring | ActiveWaitStandby | FailureGetStandbyStatus) => st,
            (Role::Active, _) => StandbySync,
            (Role::Standby, StandbyCandidate | StandbyConfiguring) => st,
            (Role::Standby, _) if self.role.synced() => StandbySync,
            (Role::Standby, _) => StandbyConfiguring,
            _ => st,
        }
    }
}
