//! Epochs (SPEC §2): learning a higher one and fencing, epoch proofs and
//! their verification, telling the old active, and rejoining as standby.

use super::replication_active::Replica;
use super::role::*;
use super::Server;
use crate::api::*;
use crate::config::mutant;
use crate::msg::*;
use crate::proof::EpochProof;
use crate::types::*;
use std::sync::Arc;

/// Forged proofs remembered (see `rejected_proofs`).
pub const MAX_REJECTED_PROOFS: usize = 64;

impl Server {
    /// Tells the peer (the old active) that this server holds its epoch, with the proof.
    pub(super) fn send_new_epoch(&mut self) {
        let active = self.me.clone();
        let proof = self
            .epoch_proof
            .clone()
            .filter(|p| p.claim.epoch == self.epoch && p.claim.holder == self.me.uuid);
        self.send_peer(PeerMsg::NewEpoch { active, proof });
    }

    /// The promoted peer tells this server of its epoch: a zombie
    /// acknowledges it (fenced by it, just now or before).
    pub(super) fn on_new_epoch(&mut self) {
        if self.role() == Role::Zombie {
            self.send_peer(PeerMsg::ZombieAck);
        }
    }

    /// The old active knows it is fenced: stop telling it.
    pub(super) fn on_zombie_ack(&mut self) {
        if let Some(s) = self.role.standalone_mut() {
            s.zombie_to_notify = false;
        }
    }

    /// Whether `proof` shows that this server's pinned peer holds its epoch:
    /// the signature verifies against the key pinned at pairing. Each proof
    /// is verified once: a valid one is kept (`epoch_proof`), a forged one
    /// remembered by digest.
    pub(super) fn proof_verdict(&mut self, proof: &EpochProof) -> Result<(), String> {
        if self.epoch_proof.as_deref() == Some(proof) {
            return Ok(());
        }
        let claim = &proof.claim;
        let Some(pin) = self.peer_identity.as_ref() else {
            return Err("this server has no pinned peer to check it against".into());
        };
        let peer_uuid = self.peer.as_ref().map(|p| p.uuid);
        if Some(claim.pair_id) != self.pair_id
            || Some(claim.holder) != peer_uuid
            || claim.holder_name != pin.name
        {
            return Err(format!(
                "it names holder `{}` ({:032x}) of pair {:032x}, not this server's peer {}",
                claim.holder_name,
                claim.holder,
                claim.pair_id,
                self.peer_name()
            ));
        }
        if let Some(why) = proof.shape_error() {
            return Err(why);
        }
        // The claim this server already verified, under another signature
        // (ECDSA signatures are malleable): nothing more to learn from it.
        if self
            .epoch_proof
            .as_ref()
            .is_some_and(|held| held.claim == *claim)
        {
            return Ok(());
        }
        if self.rejected_proofs.iter().any(|r| **r == *proof) {
            return Err("the same forged proof was refused before".into());
        }
        if self.keys.verify(&pin.public_key, proof) {
            return Ok(());
        }
        if self.rejected_proofs.len() >= MAX_REJECTED_PROOFS {
            self.rejected_proofs.pop_front();
        }
        self.rejected_proofs.push_back(Arc::new(proof.clone()));
        Err(format!(
            "its signature does not verify against the pinned key of {pin}"
        ))
    }

    /// A higher epoch of our pair exists: unless we hold it, we are a zombie from now on.
    pub(super) fn learn_epoch(
        &mut self,
        epoch: Epoch,
        redirect_edge: Option<String>,
        source: String,
        proof: Option<Arc<EpochProof>>,
    ) {
        self.highest_epoch_seen = self.highest_epoch_seen.max(epoch);
        if epoch <= self.epoch {
            return;
        }
        if let Some(p) = proof.filter(|p| p.claim.epoch == epoch) {
            if self
                .epoch_proof
                .as_ref()
                .is_none_or(|have| have.claim.epoch < epoch)
            {
                self.epoch_proof = Some(p);
            }
        }
        if let Some(z) = self.role.zombie_mut() {
            if z.fenced_by.is_none_or(|f| f < epoch) {
                z.fenced_by = Some(epoch);
                if redirect_edge.is_some() {
                    z.redirect_edge = redirect_edge;
                }
            }
            return;
        }
        if mutant!(self.cfg, NoEpochFencing) {
            return;
        }
        let zombie = ZombieState {
            fenced_by: Some(epoch),
            redirect_edge,
            rejoin_requested: false,
        };
        let why = format!("epoch {epoch} already exists ({source}); this server is fenced");
        let left = self.leave_role(RoleState::Zombie(zombie), &why);
        self.event(Event::Fenced {
            epoch,
            learned_from: source.clone(),
        });
        self.record_transition(
            left,
            DrState::Zombie,
            format!("fenced: epoch {epoch} learned from {source}"),
        );
        self.fail_pending(&format!(
            "this server was fenced by epoch {epoch}; the write may still exist on the promoted \
             server if it was replicated before the promotion: check there with configuration/get"
        ));
    }

    pub(super) fn on_rejoin(
        &mut self,
        epoch: Epoch,
        last_index: Index,
        last_epoch: Epoch,
        standby: ServerInfo,
    ) {
        // Admission proved the sender is the pinned peer; its claims about
        // itself must still agree with the pin.
        let known = self.peer.as_ref().is_some_and(|p| p.uuid == standby.uuid)
            && self
                .peer_identity
                .as_ref()
                .is_some_and(|pin| pin.name == standby.name);
        if !known || epoch >= self.epoch || !self.role().is_writer() {
            let reason = format!(
                "{} cannot take {} back: it is {} / {} at epoch {} and its peer is {}",
                self.me.name,
                standby.name,
                self.role(),
                self.dr_state,
                self.epoch,
                self.peer_name()
            );
            // To the pinned peer's known address, never to one the message names.
            self.send_peer(PeerMsg::Refused {
                reason,
                in_reply_to: None,
            });
            return;
        }
        // Our log agrees with the zombie's up to the last index of the zombie's
        // last epoch that we also hold; after that the zombie diverged.
        let starts_after_its_epoch = self
            .applied
            .epoch_starts
            .iter()
            .copied()
            .chain(
                self.log
                    .iter_after(self.applied.index)
                    .filter(|e| e.op == Op::EpochStart)
                    .map(|e| (e.epoch, e.index)),
            )
            .filter(|(e, _)| *e > last_epoch)
            .map(|(_, start)| start - 1)
            .min();
        let ours = starts_after_its_epoch.unwrap_or(self.log.last_index());
        let keep_index = last_index.min(ours);
        // Addresses stay those learned at pairing (defence in depth: even
        // a wrongly admitted Rejoin could not redirect replication).
        if self
            .peer
            .as_ref()
            .is_some_and(|p| p.peer_address != standby.peer_address)
        {
            self.event(Event::PeerIgnored {
                kind: "Rejoin",
                reason: format!(
                    "names peer address {}; this server keeps {} from the pairing",
                    standby.peer_address,
                    self.peer_name()
                ),
            });
        }
        if self.role() == Role::Standalone {
            let active = ActiveState {
                replica: Replica::new(true, self.log.last_index()),
                demotion: None,
            };
            let reason = format!("old active {} rejoins as standby", self.peer_name());
            self.change_role(
                RoleState::Active(active),
                DrState::ActiveWaitStandby,
                reason,
            );
        } else if let Some(r) = self.role.replica_mut() {
            // A repeated request: start the copy again.
            r.need_snapshot = true;
            r.snapshot = None;
        }
        let active = self.me.clone();
        self.send_peer(PeerMsg::RejoinAccepted { keep_index, active });
        self.on_standby_heard();
        self.replicate();
    }

    pub(super) fn on_rejoin_accepted(
        &mut self,
        epoch: Epoch,
        keep_index: Index,
        active: ServerInfo,
    ) {
        if !self.role.zombie().is_some_and(|z| z.rejoin_requested) {
            return;
        }
        if self
            .peer_identity
            .as_ref()
            .is_some_and(|pin| pin.name != active.name)
        {
            let reason = format!(
                "the acceptance names active `{}`, not the pinned peer {}",
                active.name,
                self.peer_name()
            );
            self.event(Event::PeerIgnored {
                kind: "RejoinAccepted",
                reason,
            });
            return;
        }
        let last = self.log.last_index();
        if keep_index < last {
            let reason = format!(
                "diverged from {} at rejoin: not present on the promoted server (epoch {epoch})",
                active.name
            );
            self.staged.push(PersistOp::Archive {
                after: keep_index,
                reason,
            });
            self.event(Event::DivergenceArchived {
                after: keep_index,
                entries_upto: last,
            });
        }
        if keep_index >= self.log.base_index() && keep_index < last {
            self.log.truncate_after(keep_index);
            self.durable_index = self.durable_index.min(keep_index);
        }
        self.epoch = epoch;
        self.highest_epoch_seen = self.highest_epoch_seen.max(epoch);
        // `active` is the pinned peer (admission, name checked above); its
        // addresses stay those learned at pairing.
        let standby = StandbyState {
            active_heard: true,
            ..StandbyState::default()
        };
        let reason = format!("rejoined {} as standby at epoch {epoch}", self.peer_name());
        self.change_role(
            RoleState::Standby(standby),
            DrState::StandbyConfiguring,
            reason,
        );
    }

    pub(super) fn cmd_rejoin(&mut self, req: RequestId) -> Result<Option<Reply>, CommandError> {
        let Some(z) = self.role.zombie_mut().filter(|_| self.peer.is_some()) else {
            return Err(self.wrong_state(
                Method::RejoinAsStandby,
                "only a ZOMBIE that knows its promoted peer can rejoin",
            ));
        };
        z.rejoin_requested = true;
        self.send_rejoin();
        self.reply(req, Ok(Reply::Accepted));
        Ok(None)
    }

    pub(super) fn send_rejoin(&mut self) {
        let m = PeerMsg::Rejoin {
            last_index: self.log.last_index(),
            last_epoch: self.log.last_epoch(),
            standby: self.me.clone(),
        };
        self.send_peer(m);
    }

    /// Fencing through edges (SPEC §2): a heartbeat relays the highest epoch
    /// proof its edge holds, and a valid proof of a higher epoch of our pair
    /// fences this server. A view that claims a higher epoch without such a
    /// proof fences nobody: it is returned as `(claimed epoch, why)` to be
    /// counted and marked.
    pub(super) fn fence_from_heartbeat(
        &mut self,
        client: &ClientId,
        hb: &Heartbeat,
    ) -> Option<(Epoch, String)> {
        let pair = self.pair_id?;
        let claimed = hb
            .view
            .iter()
            .filter(|v| v.pair_id == Some(pair) && v.role.is_some_and(Role::is_writer))
            .max_by_key(|v| v.epoch)?;
        if mutant!(self.cfg, UnprovenEpoch) {
            // The bug this mutant plants: believing the claim itself.
            if claimed.epoch > self.epoch {
                let (epoch, address) = (claimed.epoch, claimed.address.clone());
                self.learn_epoch(
                    epoch,
                    Some(address.clone()),
                    format!("edge {client}'s view of {address}"),
                    None,
                );
            }
            return None;
        }
        let claimed = claimed.epoch;
        let mut proven = self.epoch;
        let relayed = hb
            .proof
            .as_ref()
            .filter(|p| p.claim.pair_id == pair && p.claim.epoch > self.epoch);
        if let Some(p) = relayed.filter(|p| self.epoch_proof.as_ref() == Some(*p)) {
            // The proof this server already holds (a zombie hears it from
            // every edge): nothing to verify or learn again.
            proven = p.claim.epoch;
        } else if let Some(p) = relayed {
            let verdict = match self.may_verify_proof_of(client) {
                Ok(()) => self.proof_verdict(p),
                Err(why) => Err(why),
            };
            if let Err(why) = verdict {
                return Some((p.claim.epoch, format!("epoch proof refused: {why}")));
            }
            proven = p.claim.epoch;
            let source = format!(
                "edge {client}, relaying the proof of `{}`",
                p.claim.holder_name
            );
            self.learn_epoch(
                p.claim.epoch,
                Some(p.claim.holder_edge_address.clone()),
                source,
                Some(p.clone()),
            );
        }
        (claimed > proven).then(|| {
            (
                claimed,
                format!("its view claims epoch {claimed} of this pair without a valid proof"),
            )
        })
    }
}
