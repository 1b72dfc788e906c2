//! The follow rule (SPEC §5): which server an edge follows, the epoch
//! proofs it keeps and relays, and configuration pulled from the server it
//! follows, never of a lower epoch than it has seen.

use super::{Edge, EdgeEvent};
use crate::config::mutant;
use crate::msg::*;
use crate::proof::EpochProof;
use crate::types::*;
use std::sync::Arc;

impl Edge {
    pub(super) fn on_heartbeat_reply(&mut self, i: usize, r: HeartbeatReply) {
        if let Some(sent) = self.slots[i].awaiting_since_ms.take() {
            let rtt_ms = self.now_ms.saturating_sub(sent);
            self.event(EdgeEvent::HeartbeatRtt { server: i, rtt_ms });
        }
        let s = &mut self.slots[i];
        s.missed = 0;
        s.reachable = true;
        s.view.role = Some(r.role);
        s.view.epoch = r.epoch;
        s.view.pair_id = r.pair_id;
        s.view.last_response_ms = Some(self.now_ms);
        s.dr_state = Some(r.dr_state);
        s.config_version = r.config_version;
        s.redirect = r.redirect.clone();
        if r.role.is_writer() {
            self.max_epoch_seen = self.max_epoch_seen.max(r.epoch);
        }
        // Only a proof of the pair the replying server is in.
        if let Some(p) = r.proof.filter(|p| Some(p.claim.pair_id) == r.pair_id) {
            self.learn_proof(i, p);
        }
        if let Some(to) = r.redirect {
            // Confirm the redirect by the target's own reply before following it.
            match self.cfg.servers.iter().position(|a| *a == to) {
                Some(j) if j != i => self.heartbeat(j),
                Some(_) => {}
                None => {
                    let from = self.cfg.servers[i].clone();
                    self.event(EdgeEvent::RedirectIgnored { from, to });
                }
            }
        }
        self.refollow();
        if self.following == Some(i)
            && !self.pull_inflight
            && (r.epoch, r.config_version) != self.config
        {
            self.pull_inflight = true;
            let (have_epoch, have_version) = self.config;
            self.send(
                i,
                EdgeMsg::ConfigPull {
                    have_epoch,
                    have_version,
                },
            );
        }
    }

    pub(super) fn on_config(
        &mut self,
        i: usize,
        epoch: Epoch,
        version: Index,
        docs: Vec<(String, Doc)>,
    ) {
        self.pull_inflight = false;
        if self.following == Some(i)
            && epoch >= self.max_epoch_seen
            && (epoch, version) != self.config
        {
            self.config = (epoch, version);
            self.event(EdgeEvent::ConfigApplied {
                epoch,
                version,
                docs,
            });
        }
    }

    /// Keeps the highest proof and, when it is new, relays it at once to the
    /// other server if that one last showed a lower epoch: an old active is
    /// then fenced within one heartbeat of the promotion, not two.
    fn learn_proof(&mut self, from: usize, p: Arc<EpochProof>) {
        if self
            .proof
            .as_ref()
            .is_some_and(|have| have.claim.epoch >= p.claim.epoch)
        {
            return;
        }
        let epoch = p.claim.epoch;
        self.proof = Some(p);
        let other = 1 - from;
        let s = &self.slots[other];
        if s.reachable && s.view.epoch < epoch {
            self.heartbeat(other);
        }
    }

    /// The follow rule: the reachable ACTIVE or STANDALONE server with the highest
    /// epoch, never below one already seen; never a standby or a zombie.
    pub(super) fn refollow(&mut self) {
        let follow_zombie = mutant!(self.cfg, FollowZombie);
        let current = self.following;
        let best = (0..2)
            .filter(|&i| {
                let s = &self.slots[i];
                let ok_role = s
                    .view
                    .role
                    .is_some_and(|r| r.is_writer() || (follow_zombie && r == Role::Zombie));
                s.reachable && ok_role && (s.view.epoch >= self.max_epoch_seen || follow_zombie)
            })
            .max_by_key(|&i| {
                let s = &self.slots[i];
                (
                    s.view.epoch,
                    s.view.role == Some(Role::Active),
                    current == Some(i),
                    i == 0,
                )
            });
        if best != current {
            let from = self.following_address().map(str::to_string);
            self.following = best;
            let to = self.following_address().map(str::to_string);
            self.event(EdgeEvent::Following { from, to });
            self.inflight = None;
            self.pull_inflight = false;
            self.flush_samples();
        }
    }
}
