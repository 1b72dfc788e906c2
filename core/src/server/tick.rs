//! The peer tick: failure counting, retransmission and the switchover
//! deadlines, per role.

use super::role::RoleState;
use super::Server;
use crate::api::*;
use crate::msg::*;
use crate::types::*;

impl Server {
    pub(super) fn on_tick(&mut self) {
        self.set_timer(Timer::PeerTick, self.cfg.peer_heartbeat_interval_ms);
        match &self.role {
            RoleState::Active(_) => self.tick_active(),
            RoleState::Standby(_) => self.tick_standby(),
            RoleState::Standalone(s) if s.zombie_to_notify => self.send_new_epoch(),
            RoleState::Zombie(z) if z.rejoin_requested => self.send_rejoin(),
            RoleState::Standalone(_) | RoleState::Zombie(_) => {}
        }
    }

    fn tick_active(&mut self) {
        let threshold = self.cfg.peer_failure_threshold;
        let durable = self.durable_index;
        let Some(r) = self.role.replica_mut() else {
            return;
        };
        if !r.heard {
            r.missed_ticks = (r.missed_ticks + 1).min(threshold);
        }
        r.heard = false;
        let newly_lost = r.missed_ticks >= threshold && r.declare_lost();
        let restarted_alone = newly_lost && r.unheard_since_restart;
        // Stalled stream: rewind and resend from what the standby has.
        let stalled = r.match_index == r.match_at_tick && r.next_index > r.match_index + 1;
        if stalled {
            r.next_index = r.match_index + 1;
        }
        r.match_at_tick = r.match_index;
        let lag = durable.saturating_sub(r.match_index);
        if newly_lost {
            self.failure = Some(format!(
                "standby {} unreachable: no answer to {threshold} peer heartbeats; writes wait up to \
                 standby_grace ({} ms), then on_standby_loss = {} applies",
                self.peer.as_ref().map_or("?", |p| p.peer_address.as_str()),
                self.cfg.standby_grace_ms,
                self.policy.as_str()
            ));
            if matches!(
                self.dr_state,
                DrState::StandbySync | DrState::StandbyRunning | DrState::ActiveWaitStandby
            ) {
                self.transition(
                    DrState::FailureGetStandbyStatus,
                    format!("standby unreachable for {threshold} heartbeats (lag {lag} entries)"),
                );
            }
            self.set_timer(Timer::StandbyGrace, self.cfg.standby_grace_ms);
        }
        if restarted_alone {
            self.block_restarted_alone();
        }
        let demotion = self.role.active_mut().and_then(|a| a.demotion.as_mut());
        if let Some(d) = demotion {
            d.ticks += 1;
            if d.ticks > self.cfg.switchover_max_ticks {
                let resume = d.resume;
                if let Some(a) = self.role.active_mut() {
                    a.demotion = None;
                }
                self.transition(
                    resume,
                    "planned switchover abandoned: the standby did not catch up in time; writes resume".into(),
                );
            }
        }
        match self.dr_state {
            DrState::ActiveConfiguring => self.send_pair(),
            _ if self.role.replica().is_some_and(|r| r.snapshot.is_some()) => {
                self.resend_snapshot_chunk()
            }
            _ => {
                self.replicate();
                self.send_heartbeat_append();
                self.tick_ask_sample_copy();
            }
        }
    }

    fn tick_standby(&mut self) {
        let threshold = self.cfg.peer_failure_threshold;
        let candidate = self.dr_state == DrState::StandbyCandidate;
        let Some(sb) = self.role.standby_mut() else {
            return;
        };
        if sb.join_target && candidate {
            self.send_join();
        }
        self.tick_sample_copy();
        let Some(sb) = self.role.standby_mut() else {
            return;
        };
        if !sb.active_heard {
            sb.active_missed_ticks = (sb.active_missed_ticks + 1).min(threshold);
        }
        sb.active_heard = false;
        let missed = sb.active_missed_ticks;
        if let Some(p) = sb.promotion.as_mut() {
            if p.planned && p.granted_last.is_none() {
                p.ticks += 1;
                if p.ticks > self.cfg.switchover_max_ticks {
                    let (req, resume) = (p.req, p.resume);
                    sb.promotion = None;
                    let why = format!(
                        "the active did not confirm its demotion within {} peer heartbeats; nothing changed, \
                         the active keeps serving",
                        self.cfg.switchover_max_ticks
                    );
                    self.transition(resume, format!("planned switchover abandoned: {why}"));
                    self.reply(req, Err(CommandError::SwitchoverAbandoned(why)));
                } else {
                    let new_epoch = self.epoch + 1;
                    self.send_peer(PeerMsg::DemoteRequest { new_epoch });
                }
            }
        }
        let watching = matches!(
            self.dr_state,
            DrState::StandbyConfiguring | DrState::StandbySync | DrState::StandbyRunning
        );
        if watching && missed >= threshold {
            self.failure = Some(format!(
                "active {} unreachable: nothing heard for {missed} peer heartbeats; promoteStandbyToActive \
                 is possible",
                self.peer.as_ref().map_or("?", |p| p.peer_address.as_str())
            ));
            self.transition(
                DrState::FailureGetActiveStatus,
                format!("active unreachable for {missed} heartbeats"),
            );
        }
    }
}
