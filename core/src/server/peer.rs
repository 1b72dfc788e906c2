//! The peer link: the one admission decision about who may send what, then
//! a plain dispatch of each message to its concern.

use super::Server;
use crate::api::*;
use crate::config::mutant;
use crate::msg::*;
use crate::types::*;

impl Server {
    /// The one access decision of the peer link: may the server TLS proved
    /// (`from`) send this message? Before pairing only pairing steps are
    /// admitted, each carrying the one-time token that the operator handed
    /// over; after pairing only the pinned peer, and only for its own pair.
    fn admit(&self, from: &PeerIdentity, env: &PeerEnvelope) -> Result<(), PeerRefusal> {
        let pinned = self.sent_by_pinned_peer(from, env);
        let unpinned = self.peer_identity.is_none();
        let token_matches = |t: u128| self.pairing_token == Some(t);
        let pairing_step = match &env.body {
            // A prepared candidate is never pinned; `on_pair` checks the token.
            PeerMsg::Pair { .. } => Some(unpinned),
            PeerMsg::Join { token, .. } => Some(unpinned || token_matches(*token)),
            PeerMsg::PairAccepted { token, .. } => Some(unpinned && token_matches(*token)),
            PeerMsg::Refused { in_reply_to, .. } => {
                Some(unpinned && in_reply_to.is_some_and(token_matches))
            }
            _ => None,
        };
        match pairing_step {
            _ if pinned && pairing_step.is_some() => Ok(()),
            Some(true) => Ok(()),
            Some(false) if unpinned => Err(PeerRefusal::PairingRefused),
            _ if !pinned && unpinned => Err(PeerRefusal::NotPaired),
            _ if !pinned => Err(PeerRefusal::NotPinnedPeer),
            _ if env.pair_id.is_none() || env.pair_id != self.pair_id => {
                Err(PeerRefusal::OtherPair)
            }
            _ => Ok(()),
        }
    }

    /// A pair configured before identities were pinned (storage migrated
    /// from schema 2) has a peer but no pin: the first server whose
    /// certificate carries the name recorded at pairing is pinned. No pairing
    /// of this version leaves that state (each pins as it pairs).
    fn pin_legacy_peer(&mut self, from: &PeerIdentity) {
        let legacy = self.peer_identity.is_none()
            && self.pair_id.is_some()
            && self.pairing_token.is_none()
            && self
                .peer
                .as_ref()
                .is_some_and(|p| !p.name.is_empty() && p.name == from.name);
        if legacy {
            self.peer_identity = Some(from.clone());
            self.event(Event::PeerPinned {
                identity: from.clone(),
                how: "first contact after a storage migration, by the certificate name recorded at pairing",
            });
        }
    }

    /// Whether the proven sender is the peer pinned at pairing.
    fn sent_by_pinned_peer(&self, from: &PeerIdentity, env: &PeerEnvelope) -> bool {
        if mutant!(self.cfg, TrustEnvelopeFrom) {
            // The bug this mutant plants: believing what the message says of itself.
            return self.peer.as_ref().is_some_and(|p| p.uuid == env.from);
        }
        self.peer_identity.as_ref() == Some(from)
    }

    pub(super) fn on_peer(&mut self, link: PeerLinkId, from: PeerIdentity, env: PeerEnvelope) {
        let kind = env.body.kind();
        self.pin_legacy_peer(&from);
        if let Err(reason) = self.admit(&from, &env) {
            // A pairing attempt is answered on its own link (never by dialling
            // an address it names); anything else from a stranger just ends here.
            let answer = match &env.body {
                PeerMsg::Pair { token, .. } | PeerMsg::Join { token, .. } => Some((
                    *token,
                    format!(
                        "{} does not take this pairing: it is {} / {} and paired with {}",
                        self.me.name,
                        self.role,
                        self.dr_state,
                        self.peer_name()
                    ),
                )),
                _ => None,
            };
            if let Some((token, why)) = answer {
                self.refuse_on_link(link, env.pair_id, token, why);
            }
            self.event(Event::PeerRefused {
                link,
                from,
                kind,
                reason,
            });
            return;
        }
        let same_pair = env.pair_id.is_some() && env.pair_id == self.pair_id;
        // Fencing: a higher epoch of our pair, from our pinned peer, ends our writes for good.
        if same_pair && self.sent_by_pinned_peer(&from, &env) && env.epoch > self.epoch {
            let (redirect, proof) = match &env.body {
                PeerMsg::NewEpoch { active, proof } => {
                    // Kept only if it verifies: the zombie then relays it and
                    // knows for sure that a higher epoch exists.
                    let proof = proof
                        .as_ref()
                        .filter(|p| p.claim.epoch == env.epoch && self.proof_verdict(p).is_ok())
                        .cloned();
                    (Some(active.edge_address.clone()), proof)
                }
                _ => (self.peer.as_ref().map(|p| p.edge_address.clone()), None),
            };
            // The peer's addresses stay those learned at pairing: a message,
            // even the pinned peer's, never changes where this server dials.
            let accepting_rejoin =
                self.role == Role::Zombie && matches!(env.body, PeerMsg::RejoinAccepted { .. });
            if !accepting_rejoin {
                self.learn_epoch(
                    env.epoch,
                    redirect,
                    format!("peer {} ({kind})", self.peer_name()),
                    proof,
                );
            }
        }
        match env.body {
            PeerMsg::Pair {
                token,
                standby_uuid,
                active,
                policy,
            } => self.on_pair(
                link,
                from,
                env.pair_id,
                env.epoch,
                token,
                standby_uuid,
                active,
                policy,
            ),
            PeerMsg::Join { token, standby } => self.on_join(link, from, token, standby),
            PeerMsg::Rejoin {
                last_index,
                last_epoch,
                standby,
            } => self.on_rejoin(env.epoch, last_index, last_epoch, standby),
            PeerMsg::Refused { reason, .. } => self.on_refused(reason),
            PeerMsg::NewEpoch { .. } => {
                if self.role == Role::Zombie {
                    self.send_peer(PeerMsg::ZombieAck);
                }
            }
            PeerMsg::ZombieAck => self.zombie_to_notify = false,
            PeerMsg::PairAccepted { standby, .. } => self.on_pair_accepted(from, standby),
            _ if env.epoch < self.epoch && self.role.is_writer() => {
                // A stale server of our pair: tell it who holds the newer epoch.
                self.send_new_epoch();
            }
            PeerMsg::SnapshotChunk {
                index,
                snapshot_epoch,
                chunk,
                last,
                docs,
                sample_seq,
                epoch_starts,
                config_index,
            } => self.on_snapshot_chunk(
                env.epoch,
                index,
                snapshot_epoch,
                chunk,
                last,
                docs,
                sample_seq,
                epoch_starts,
                config_index,
            ),
            PeerMsg::SnapshotAck { index, chunk } if self.role == Role::Active => {
                self.on_standby_heard();
                self.on_snapshot_ack(index, chunk);
            }
            PeerMsg::Append {
                prev_index,
                prev_epoch,
                entries,
                commit_index,
                active_durable,
            } => self.on_append(
                env.epoch,
                prev_index,
                prev_epoch,
                entries,
                commit_index,
                active_durable,
            ),
            PeerMsg::AppendAck { durable_index, ok } if self.role == Role::Active => {
                self.on_standby_heard();
                self.on_append_ack(durable_index, ok);
            }
            PeerMsg::SamplesPull {
                ranges,
                applied_index,
            } if self.role == Role::Active => {
                self.on_standby_heard();
                self.on_samples_pull(ranges, applied_index);
            }
            PeerMsg::SamplesBatch { chunks } => self.on_samples_batch(env.epoch, chunks),
            PeerMsg::DemoteRequest { new_epoch } => self.on_demote_request(new_epoch),
            PeerMsg::DemoteGranted {
                new_epoch,
                last_index,
                last_epoch,
            } => self.on_demote_granted(new_epoch, last_index, last_epoch),
            PeerMsg::RejoinAccepted { keep_index, active } => {
                self.on_rejoin_accepted(env.epoch, keep_index, active)
            }
            PeerMsg::Unpair if self.role == Role::Standalone && self.zombie_to_notify => {
                // The old active left the pair (removeStandby on the zombie): stop telling it.
                self.zombie_to_notify = false;
                self.event(Event::PeerIgnored {
                    kind: "Unpair",
                    reason: format!("the old active {} left the pair", self.peer_name()),
                });
            }
            PeerMsg::Unpair => self.unpair("the peer removed DR (removeStandby)"),
            other => {
                let reason = format!("not expected in role {} / {}", self.role, self.dr_state);
                self.event(Event::PeerIgnored {
                    kind: other.kind(),
                    reason,
                });
            }
        }
    }

    /// Answers a refused pairing step on the link it came in on, echoing its token.
    pub(super) fn refuse_on_link(
        &mut self,
        link: PeerLinkId,
        pair_id: Option<PairId>,
        token: u128,
        reason: String,
    ) {
        let msg = PeerEnvelope {
            from: self.me.uuid,
            pair_id,
            epoch: self.epoch,
            body: PeerMsg::Refused {
                reason,
                in_reply_to: Some(token),
            },
        };
        self.out(Output::ReplyPeer { link, msg });
    }
}
