//! The peer link: the one admission decision about who may send what and at
//! which epoch, then a plain dispatch of each message to its concern.

use super::Server;
use crate::api::*;
use crate::config::mutant;
use crate::msg::*;
use crate::types::*;

/// What admission decided about one peer message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admission {
    /// Not from anyone allowed to send it: refused, nothing else happens.
    Refused(PeerRefusal),
    /// From the pinned peer of our pair at a higher epoch: the epoch is
    /// learned first (fencing this server), then the message is handled.
    HigherEpoch,
    /// From a lower epoch of our pair while this server writes: the sender
    /// is told who holds the newer epoch, and the message is not handled.
    Stale,
    /// Handled by its concern.
    Handle,
}

/// Whether a message means something only between servers at the same
/// epoch (replication, switchover, leaving the pair), so that one from a
/// lower epoch is answered with the newer one instead. Pairing steps and
/// the messages about epochs themselves are handled at any epoch.
fn needs_current_epoch(body: &PeerMsg) -> bool {
    match body {
        PeerMsg::Pair { .. }
        | PeerMsg::PairAccepted { .. }
        | PeerMsg::Join { .. }
        | PeerMsg::Refused { .. }
        | PeerMsg::NewEpoch { .. }
        | PeerMsg::ZombieAck
        | PeerMsg::Rejoin { .. } => false,
        PeerMsg::SnapshotChunk { .. }
        | PeerMsg::SnapshotAck { .. }
        | PeerMsg::Append { .. }
        | PeerMsg::AppendAck { .. }
        | PeerMsg::DemoteRequest { .. }
        | PeerMsg::DemoteGranted { .. }
        | PeerMsg::RejoinAccepted { .. }
        | PeerMsg::Unpair
        | PeerMsg::SamplesPull { .. }
        | PeerMsg::SamplesBatch { .. } => true,
    }
}

impl Server {
    /// The one decision about a peer message, before any handler sees it:
    /// may the server TLS proved (`from`) send it, and at what epoch is it?
    /// Before pairing only pairing steps are admitted, each carrying the
    /// one-time token that the operator handed over; after pairing only the
    /// pinned peer, and only for its own pair. Then the epoch: a higher one
    /// of the pinned peer is learned first, and a lower one gets the sender
    /// told who holds the newer epoch instead of the message being handled.
    fn admit(&self, from: &PeerIdentity, env: &PeerEnvelope) -> Admission {
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
        let refusal = match pairing_step {
            _ if pinned && pairing_step.is_some() => None,
            Some(true) => None,
            Some(false) if unpinned => Some(PeerRefusal::PairingRefused),
            _ if !pinned && unpinned => Some(PeerRefusal::NotPaired),
            _ if !pinned => Some(PeerRefusal::NotPinnedPeer),
            _ if env.pair_id.is_none() || env.pair_id != self.pair_id => {
                Some(PeerRefusal::OtherPair)
            }
            _ => None,
        };
        if let Some(r) = refusal {
            return Admission::Refused(r);
        }
        let same_pair = env.pair_id.is_some() && env.pair_id == self.pair_id;
        // A zombie takes the epoch of the server it rejoins from the acceptance itself.
        let accepting_rejoin =
            self.role() == Role::Zombie && matches!(env.body, PeerMsg::RejoinAccepted { .. });
        if same_pair && pinned && env.epoch > self.epoch && !accepting_rejoin {
            Admission::HigherEpoch
        } else if env.epoch < self.epoch
            && self.role().is_writer()
            && needs_current_epoch(&env.body)
        {
            Admission::Stale
        } else {
            Admission::Handle
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
        self.pin_legacy_peer(&from);
        match self.admit(&from, &env) {
            Admission::Refused(reason) => self.refuse_peer(link, from, &env, reason),
            Admission::Stale => self.send_new_epoch(),
            Admission::HigherEpoch => {
                self.learn_epoch_of_peer(&env);
                self.dispatch(link, from, env);
            }
            Admission::Handle => self.dispatch(link, from, env),
        }
    }

    /// Ends a message admission refused. A pairing attempt is answered on
    /// its own link (never by dialling an address it names); anything else
    /// from a stranger just ends here.
    fn refuse_peer(
        &mut self,
        link: PeerLinkId,
        from: PeerIdentity,
        env: &PeerEnvelope,
        reason: PeerRefusal,
    ) {
        let answer = match &env.body {
            PeerMsg::Pair { token, .. } | PeerMsg::Join { token, .. } => Some((
                *token,
                format!(
                    "{} does not take this pairing: it is {} / {} and paired with {}",
                    self.me.name,
                    self.role(),
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
            kind: env.body.kind(),
            reason,
        });
    }

    /// Fencing by the peer link: the pinned peer holds a higher epoch of our
    /// pair, which ends this server's writes for good.
    fn learn_epoch_of_peer(&mut self, env: &PeerEnvelope) {
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
            // The peer's addresses stay those learned at pairing: a message,
            // even the pinned peer's, never changes where this server dials.
            _ => (self.peer.as_ref().map(|p| p.edge_address.clone()), None),
        };
        let source = format!("peer {} ({})", self.peer_name(), env.body.kind());
        self.learn_epoch(env.epoch, redirect, source, proof);
    }

    /// Each admitted message to the handler of its concern; each handler
    /// decides what its message means in the current role.
    fn dispatch(&mut self, link: PeerLinkId, from: PeerIdentity, env: PeerEnvelope) {
        let epoch = env.epoch;
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
                epoch,
                token,
                standby_uuid,
                active,
                policy,
            ),
            PeerMsg::Join { token, standby } => self.on_join(link, from, token, standby),
            PeerMsg::PairAccepted { standby, .. } => self.on_pair_accepted(from, standby),
            PeerMsg::Refused { reason, .. } => self.on_refused(reason),
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
                epoch,
                index,
                snapshot_epoch,
                chunk,
                last,
                docs,
                sample_seq,
                epoch_starts,
                config_index,
            ),
            PeerMsg::SnapshotAck { index, chunk } => self.on_snapshot_ack(index, chunk),
            PeerMsg::Append {
                incarnation,
                since,
                prev_index,
                prev_epoch,
                entries,
                commit_index,
                active_durable,
            } => self.on_append(
                (epoch, incarnation),
                since,
                prev_index,
                prev_epoch,
                entries,
                commit_index,
                active_durable,
            ),
            PeerMsg::AppendAck {
                incarnation,
                durable_index,
                ok,
            } => self.on_append_ack(incarnation, durable_index, ok),
            PeerMsg::SamplesPull {
                ranges,
                applied_index,
            } => self.on_samples_pull(ranges, applied_index),
            PeerMsg::SamplesBatch { chunks } => self.on_samples_batch(epoch, chunks),
            PeerMsg::DemoteRequest { new_epoch } => self.on_demote_request(new_epoch),
            PeerMsg::DemoteGranted {
                new_epoch,
                last_index,
                last_epoch,
            } => self.on_demote_granted(new_epoch, last_index, last_epoch),
            PeerMsg::NewEpoch { .. } => self.on_new_epoch(),
            PeerMsg::ZombieAck => self.on_zombie_ack(),
            PeerMsg::Rejoin {
                last_index,
                last_epoch,
                standby,
            } => self.on_rejoin(epoch, last_index, last_epoch, standby),
            PeerMsg::RejoinAccepted { keep_index, active } => {
                self.on_rejoin_accepted(epoch, keep_index, active)
            }
            PeerMsg::Unpair => self.on_unpair(),
        }
    }

    /// An admitted message that means nothing in this role.
    pub(super) fn not_expected(&mut self, kind: &'static str) {
        let reason = format!("not expected in role {} / {}", self.role(), self.dr_state);
        self.event(Event::PeerIgnored { kind, reason });
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
