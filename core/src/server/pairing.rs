//! Pairing and unpairing (SPEC §3 steps 1–2 and `removeStandby`): prepare,
//! configure, the replication blob, and leaving a pair.

use super::persist::AfterDurable;
use super::replication_active::Replica;
use super::role::*;
use super::Server;
use crate::api::*;
use crate::msg::*;
use crate::types::*;

impl Server {
    /// Refuses a pairing step that passed admission but not its own checks.
    fn refuse_pairing(
        &mut self,
        link: PeerLinkId,
        from: PeerIdentity,
        kind: &'static str,
        pair_id: Option<PairId>,
        token: u128,
        reason: String,
    ) {
        self.refuse_on_link(link, pair_id, token, reason.clone());
        self.event(Event::PeerIgnored { kind, reason });
        self.event(Event::PeerRefused {
            link,
            from,
            kind,
            reason: PeerRefusal::PairingRefused,
        });
    }

    pub(super) fn send_pair(&mut self) {
        let (Some(token), Some(peer)) = (self.pairing_token, self.peer.clone()) else {
            return;
        };
        let m = PeerMsg::Pair {
            token,
            standby_uuid: peer.uuid,
            active: self.me.clone(),
            policy: self.policy,
        };
        self.send_peer(m);
    }

    pub(super) fn send_join(&mut self) {
        let Some(token) = self.pairing_token else {
            return;
        };
        let m = PeerMsg::Join {
            token,
            standby: self.me.clone(),
        };
        self.send_peer(m);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_pair(
        &mut self,
        link: PeerLinkId,
        from: PeerIdentity,
        pair_id: Option<PairId>,
        epoch: Epoch,
        token: u128,
        standby_uuid: ServerId,
        active: ServerInfo,
        policy: OnStandbyLoss,
    ) {
        // A repeat of the pairing we already accepted.
        if self.role() == Role::Standby
            && pair_id.is_some()
            && pair_id == self.pair_id
            && self.peer_identity.as_ref() == Some(&from)
        {
            if self.dr_state == DrState::StandbyConfiguring && self.marks.is_empty() {
                self.send_pair_accepted(token);
            }
            return;
        }
        let joining = self
            .role
            .standby()
            .is_some_and(|s| s.join_target)
            .then(|| self.peer.as_ref().map(|p| p.uuid));
        let refuse = if self.role() != Role::Standby || self.dr_state != DrState::StandbyCandidate {
            Some(format!(
                "{} is {} / {}, not a prepared standby (run prepareForStandby on it first)",
                self.me.name,
                self.role(),
                self.dr_state
            ))
        } else if standby_uuid != self.me.uuid {
            Some(format!(
                "standbyUuid {standby_uuid:032x} does not match this server's vcoUuid {:032x}",
                self.me.uuid
            ))
        } else if self.pairing_token != Some(token) {
            Some("pairingToken does not match the one prepareForStandby issued".to_string())
        } else if pair_id.is_none() {
            Some("pairing without a pairId".to_string())
        } else if active.name != from.name {
            Some(format!(
                "the pairing names active `{}` but its certificate is `{}`",
                active.name, from.name
            ))
        } else if joining.is_some_and(|uuid| uuid != Some(active.uuid)) {
            Some(format!(
                "active {:032x} is not the one named in the replication blob",
                active.uuid
            ))
        } else {
            None
        };
        if let Some(reason) = refuse {
            self.refuse_pairing(link, from, "Pair", pair_id, token, reason);
            return;
        }
        self.pair_id = pair_id;
        self.epoch = epoch;
        self.highest_epoch_seen = self.highest_epoch_seen.max(epoch);
        self.peer = Some(active);
        self.peer_identity = Some(from);
        self.epoch_proof = None;
        self.policy = policy;
        if let Some(s) = self.role.standby_mut() {
            // Paired: a standby that has copied nothing yet, and has just heard its active.
            *s = StandbyState {
                active_heard: true,
                ..StandbyState::default()
            };
        }
        self.transition(
            DrState::StandbyConfiguring,
            format!(
                "paired with active {}, certificate {}",
                self.peer_name(),
                self.peer_identity
                    .as_ref()
                    .map_or_else(String::new, |i| i.to_string())
            ),
        );
        // The token is echoed in `PairAccepted`, then forgotten.
        self.staged_after
            .push(AfterDurable::SendPairAccepted(token));
        self.pairing_token = None;
    }

    pub(super) fn send_pair_accepted(&mut self, token: u128) {
        let standby = self.me.clone();
        self.send_peer(PeerMsg::PairAccepted { standby, token });
    }

    pub(super) fn on_join(
        &mut self,
        link: PeerLinkId,
        from: PeerIdentity,
        token: u128,
        standby: ServerInfo,
    ) {
        let refuse = if self.role() != Role::Standalone || self.pairing_token != Some(token) {
            Some(format!(
                "{} has no matching replication blob outstanding (run getReplicationBlob on it)",
                self.me.name
            ))
        } else if standby.name != from.name {
            Some(format!(
                "the join names standby `{}` but its certificate is `{}`",
                standby.name, from.name
            ))
        } else {
            None
        };
        if let Some(reason) = refuse {
            self.refuse_pairing(link, from, "Join", None, token, reason);
            return;
        }
        self.begin_configure(standby, token);
        self.peer_identity = Some(from);
        self.staged_after.push(AfterDurable::SendPair);
    }

    fn begin_configure(&mut self, standby: ServerInfo, token: u128) {
        self.pair_id = Some(self.rng.next_u128().max(1));
        self.peer = Some(standby);
        // A new pairing: whoever was pinned before is not the new standby.
        self.peer_identity = None;
        self.epoch_proof = None;
        self.pairing_token = Some(token);
        self.policy = self.cfg.on_standby_loss;
        let active = ActiveState {
            replica: Replica::new(true, self.log.last_index()),
            demotion: None,
        };
        let reason = format!("configuring replication to {}", self.peer_name());
        self.change_role(
            RoleState::Active(active),
            DrState::ActiveConfiguring,
            reason,
        );
    }

    pub(super) fn on_pair_accepted(&mut self, from: PeerIdentity, standby: ServerInfo) {
        if self.role() != Role::Active || self.dr_state != DrState::ActiveConfiguring {
            return;
        }
        let expected = self.peer.as_ref().map(|p| p.uuid);
        let pinned_other = self.peer_identity.as_ref().is_some_and(|pin| *pin != from);
        if Some(standby.uuid) != expected || standby.name != from.name || pinned_other {
            let reason = format!(
                "pairing accepted by {} `{}` ({:032x}), which is not the standby configured ({})",
                if standby.name == from.name {
                    "server"
                } else {
                    "a certificate not matching its claim"
                },
                from.name,
                standby.uuid,
                self.peer_name()
            );
            self.event(Event::PeerIgnored {
                kind: "PairAccepted",
                reason,
            });
            return;
        }
        self.peer = Some(standby);
        self.peer_identity = Some(from);
        self.pairing_token = None;
        self.on_standby_heard();
        self.transition(
            DrState::ActiveWaitStandby,
            format!(
                "standby {} accepted the pairing; pinned certificate {}",
                self.peer_name(),
                self.peer_identity
                    .as_ref()
                    .map_or_else(String::new, |i| i.to_string())
            ),
        );
        self.replicate();
    }

    pub(super) fn on_refused(&mut self, reason: String) {
        self.event(Event::PeerIgnored {
            kind: "Refused",
            reason: reason.clone(),
        });
        let candidate = self.dr_state == DrState::StandbyCandidate;
        match &mut self.role {
            RoleState::Active(_) if self.dr_state == DrState::ActiveConfiguring => {
                self.unpair_local(&format!("pairing refused by the standby: {reason}"));
            }
            RoleState::Standby(s) if candidate && s.join_target => {
                s.join_target = false;
                self.failure = Some(format!(
                    "transitionToStandby refused by the active: {reason}"
                ));
            }
            RoleState::Zombie(z) if z.rejoin_requested => {
                z.rejoin_requested = false;
                self.failure = Some(format!(
                    "rejoinAsStandby refused by {}: {reason}",
                    self.peer_name()
                ));
            }
            _ => {}
        }
    }

    pub(super) fn cmd_prepare(&mut self, req: RequestId) -> Result<Option<Reply>, CommandError> {
        const M: Method = Method::PrepareForStandby;
        let joining = self.role.standby().is_some_and(|s| s.join_target);
        if self.role() == Role::Standby && self.dr_state == DrState::StandbyCandidate {
            if let Some(t) = self.pairing_token.filter(|_| !joining) {
                return Ok(Some(Reply::Prepared {
                    vco_uuid: self.me.uuid,
                    pairing_token: t,
                }));
            }
        }
        if self.role() != Role::Standalone {
            return Err(
                self.wrong_state(M, "only a STANDALONE server can be prepared as a standby")
            );
        }
        let token = self.rng.next_u128().max(1);
        self.pairing_token = Some(token);
        self.pair_id = None;
        self.peer = None;
        self.peer_identity = None;
        self.epoch_proof = None;
        self.change_role(
            RoleState::Standby(StandbyState::default()),
            DrState::StandbyCandidate,
            "prepared for standby".into(),
        );
        self.staged_after.push(AfterDurable::Reply(
            req,
            Reply::Prepared {
                vco_uuid: self.me.uuid,
                pairing_token: token,
            },
        ));
        Ok(None)
    }

    pub(super) fn cmd_configure(
        &mut self,
        req: RequestId,
        address: String,
        uuid: ServerId,
        token: u128,
    ) -> Result<Option<Reply>, CommandError> {
        const M: Method = Method::ConfigureActiveForReplication;
        if self.role() != Role::Standalone {
            return Err(self.wrong_state(
                M,
                "only a STANDALONE server can be configured as active; removeStandby first",
            ));
        }
        if address.trim().is_empty() {
            return Err(CommandError::InvalidParam {
                param: "standbyList[0].standbyAddress".into(),
                why: "empty".into(),
            });
        }
        if address == self.me.peer_address || uuid == self.me.uuid {
            return Err(CommandError::InvalidParam {
                param: "standbyList[0]".into(),
                why: "names this server itself; give the standby's peer_listen address and vcoUuid"
                    .into(),
            });
        }
        let standby = ServerInfo {
            uuid,
            name: String::new(),
            peer_address: address,
            edge_address: String::new(),
            admin_address: String::new(),
        };
        self.begin_configure(standby, token);
        self.staged_after.push(AfterDurable::SendPair);
        // `begin_configure` set the pair id.
        let pair_id = self.pair_id.expect("set by begin_configure");
        self.staged_after
            .push(AfterDurable::Reply(req, Reply::Configured { pair_id }));
        Ok(None)
    }

    pub(super) fn cmd_blob(&mut self, req: RequestId) -> Result<Option<Reply>, CommandError> {
        if self.role() != Role::Standalone {
            return Err(self.wrong_state(
                Method::GetReplicationBlob,
                "only a STANDALONE server hands out a replication blob",
            ));
        }
        let token = self.rng.next_u128().max(1);
        self.pairing_token = Some(token);
        self.staged_after.push(AfterDurable::Reply(
            req,
            Reply::Blob {
                active: self.me.clone(),
                pairing_token: token,
            },
        ));
        Ok(None)
    }

    pub(super) fn cmd_transition_to_standby(
        &mut self,
        req: RequestId,
        address: String,
        uuid: ServerId,
        token: u128,
    ) -> Result<Option<Reply>, CommandError> {
        if self.role() != Role::Standalone {
            return Err(self.wrong_state(
                Method::TransitionToStandby,
                "only a STANDALONE server can become a standby",
            ));
        }
        self.pairing_token = Some(token);
        self.pair_id = None;
        self.peer_identity = None;
        self.epoch_proof = None;
        self.peer = Some(ServerInfo {
            uuid,
            name: String::new(),
            peer_address: address,
            edge_address: String::new(),
            admin_address: String::new(),
        });
        let joining = StandbyState {
            join_target: true,
            ..StandbyState::default()
        };
        let reason = format!("joining active {}", self.peer_name());
        self.change_role(
            RoleState::Standby(joining),
            DrState::StandbyCandidate,
            reason,
        );
        self.staged_after.push(AfterDurable::SendJoin);
        self.staged_after
            .push(AfterDurable::Reply(req, Reply::Accepted));
        Ok(None)
    }

    pub(super) fn cmd_remove_standby(
        &mut self,
        req: RequestId,
        force: bool,
    ) -> Result<Option<Reply>, CommandError> {
        const M: Method = Method::RemoveStandby;
        let why = match self.role() {
            Role::Active | Role::Standby => {
                "DR removed by the operator (removeStandby)".to_string()
            }
            Role::Zombie => {
                // The way out of a fenced state. Refused while this server's
                // own view says another one holds a higher epoch of the pair
                // (proven, learned from the peer, or granted in a planned
                // switchover): leaving the pair would then make two writers.
                // A zombie made by demoteActive alone knows of no successor.
                let proven = self
                    .epoch_proof
                    .as_ref()
                    .filter(|p| p.claim.epoch > self.epoch && p.claim.holder != self.me.uuid);
                let holder = match (proven, self.role.fenced_by()) {
                    (Some(p), _) => Some(format!(
                        "server `{}` ({}) provably holds epoch {} of this pair",
                        p.claim.holder_name, p.claim.holder_edge_address, p.claim.epoch
                    )),
                    (None, Some(e)) => Some(format!(
                        "epoch {e} of this pair exists (learned from, or handed over to, the peer {})",
                        self.peer_name()
                    )),
                    (None, None) => None,
                };
                if let (Some(holder), false) = (holder, force) {
                    return Err(self.wrong_state(
                        M,
                        format!(
                            "{holder}: leaving the pair now would make two writers. Rejoin it \
                             instead (rejoinAsStandby), or, only if that server is gone for good \
                             (or never completed its promotion), use force:true"
                        ),
                    ));
                }
                format!(
                    "zombie left the pair by removeStandby (force = {force}, fenced by epoch {}); \
                     it runs alone with its data",
                    self.role.fenced_by().unwrap_or(self.epoch)
                )
            }
            Role::Standalone => {
                return Err(self.wrong_state(M, "DR is not configured on this server"));
            }
        };
        self.send_peer(PeerMsg::Unpair);
        if self.role() == Role::Zombie {
            self.leave_pair_as_zombie(&why);
        } else {
            self.unpair_local(&why);
        }
        self.staged_after
            .push(AfterDurable::Reply(req, Reply::Accepted));
        Ok(None)
    }

    /// The peer removed DR (`removeStandby`).
    pub(super) fn on_unpair(&mut self) {
        let promoted = self.role.standalone_mut().filter(|s| s.zombie_to_notify);
        if let Some(s) = promoted {
            // The old active left the pair (removeStandby on the zombie): stop telling it.
            s.zombie_to_notify = false;
            self.event(Event::PeerIgnored {
                kind: "Unpair",
                reason: format!("the old active {} left the pair", self.peer_name()),
            });
        } else if matches!(self.role(), Role::Active | Role::Standby) {
            self.unpair_local("the peer removed DR (removeStandby)");
        }
    }

    /// Leaves the pair: STANDALONE / UNCONFIGURED, keeping the data.
    fn unpair_local(&mut self, why: &str) {
        let left = self.leave_role(RoleState::Standalone(StandaloneState::default()), why);
        self.pair_id = None;
        self.peer = None;
        self.peer_identity = None;
        self.epoch_proof = None;
        self.pairing_token = None;
        self.record_transition(left, DrState::Unconfigured, why.to_string());
        self.advance_commit();
    }

    /// A zombie leaves its pair (removeStandby): epochs count within a pair,
    /// so the higher one it learned no longer concerns it.
    fn leave_pair_as_zombie(&mut self, why: &str) {
        self.highest_epoch_seen = self.epoch;
        self.unpair_local(why);
    }
}
