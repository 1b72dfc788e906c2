//! Edges and gateways (SPEC §5): heartbeats and the contact table,
//! configuration pulls, monitoring samples, and the limits one client
//! certificate cannot escape.

use super::commit::PendingSampleAck;
use super::status::ClientCount;
use super::Server;
use crate::api::*;
use crate::msg::*;
use crate::types::*;

/// One row of the contact table (SPEC §5 `clientContact`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientContact {
    pub client_id: ClientId,
    pub client_type: ClientType,
    pub view: [ViewEntry; 2],
    pub following: Option<String>,
    pub config_epoch: Epoch,
    pub config_version: Index,
    pub cached_samples: u64,
    pub dropped_samples: u64,
    /// Wall-clock time of the last heartbeat (`modified`).
    pub modified_ms: Millis,
    /// Heartbeats of this client that claimed a higher epoch without a valid
    /// proof (`forgedEpochClaims`): a marked client's new proofs are no longer
    /// checked (each check costs a signature verification).
    pub forged_epoch_claims: u64,
}

/// A client that relayed a forged epoch claim has its later proofs verified
/// at most once per this many milliseconds (monotonic): a signature check
/// costs ~0.1 ms, so one certificate cannot make a server verify at line rate.
pub const PROOF_RECHECK_MS: Millis = 10_000;

/// Longest address or text an edge may report in a heartbeat (its view and
/// `following`): they are stored in the contact table and shown to operators.
pub const MAX_CLIENT_TEXT_BYTES: usize = 256;

/// What one client may still do, refilled over (monotonic) time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub(super) struct ClientLimits {
    /// Monitoring bytes it may send now (a token bucket of one batch).
    pub(super) sample_tokens: u64,
    /// When `sample_tokens` was last refilled.
    pub(super) refilled_ms: Millis,
    /// When a proof it relayed was last verified (while it is marked).
    pub(super) proof_checked_ms: Option<Millis>,
}

impl Server {
    pub fn contacts(&self) -> impl Iterator<Item = &ClientContact> {
        self.contacts.values()
    }

    /// Seeds the contact table from storage after a restart (at most `max_clients`).
    pub fn restore_contacts(&mut self, contacts: impl IntoIterator<Item = ClientContact>) {
        for c in contacts {
            if self.contacts.len() >= self.cfg.max_clients {
                break;
            }
            self.contacts.insert(c.client_id.clone(), c);
        }
    }

    /// `clientCount`.
    pub fn client_count(&self) -> ClientCount {
        let mut c = ClientCount::default();
        let mine = &self.me.edge_address;
        for ct in self.contacts.values() {
            let edge = ct.client_type == ClientType::Edge;
            if edge {
                c.edge_count += 1;
            } else {
                c.gateway_count += 1;
            }
            match &ct.following {
                Some(f) if f == mine => {
                    if edge {
                        c.current_active_edge_count += 1
                    } else {
                        c.current_active_gateway_count += 1
                    }
                }
                Some(_) => {
                    if edge {
                        c.current_standby_edge_count += 1
                    } else {
                        c.current_standby_gateway_count += 1
                    }
                }
                None => c.following_none_count += 1,
            }
        }
        c
    }

    pub(super) fn refused_msg(&self, reason: String) -> ServerMsg {
        ServerMsg::Refused {
            role: self.role(),
            epoch: self.epoch,
            redirect: self.redirects().edge.filter(|e| *e != self.me.edge_address),
            reason,
        }
    }

    pub(super) fn on_edge(
        &mut self,
        reply_to: ReplyTo,
        client: ClientId,
        client_type: ClientType,
        msg: EdgeMsg,
    ) {
        match msg {
            EdgeMsg::Heartbeat(hb) => self.on_heartbeat(reply_to, client, client_type, hb),
            EdgeMsg::ConfigPull { .. } => {
                if let Err(e) = self.gate(RequestKind::EdgeConfigPull, "configPull") {
                    let m = self.refused_msg(e.to_string());
                    self.out(Output::ReplyEdge { reply_to, msg: m });
                    return;
                }
                let msg = ServerMsg::Config {
                    epoch: self.epoch,
                    version: self.applied.config_index,
                    docs: self
                        .applied
                        .docs
                        .iter()
                        .map(|(k, d)| (k.clone(), d.clone()))
                        .collect(),
                };
                self.out(Output::ReplyEdge { reply_to, msg });
            }
            EdgeMsg::Monitoring { samples } => self.on_samples(reply_to, client, samples),
        }
    }

    fn on_heartbeat(
        &mut self,
        reply_to: ReplyTo,
        client: ClientId,
        client_type: ClientType,
        hb: Heartbeat,
    ) {
        let mismatch = if hb.client_id != client {
            Some(format!(
                "heartbeat names client {:?} but the certificate says {client:?}",
                hb.client_id
            ))
        } else if hb.client_type != client_type {
            Some(format!(
                "heartbeat says {} but the certificate of {client:?} is a {} certificate",
                hb.client_type.as_str(),
                client_type.as_str()
            ))
        } else if hb
            .view
            .iter()
            .map(|v| v.address.len())
            .chain(hb.following.as_ref().map(String::len))
            .any(|n| n > MAX_CLIENT_TEXT_BYTES)
        {
            Some(format!(
                "heartbeat reports an address longer than {MAX_CLIENT_TEXT_BYTES} bytes"
            ))
        } else {
            None
        };
        if let Some(reason) = mismatch {
            self.event(Event::ClientRefused {
                client: client.clone(),
                reason: reason.clone(),
            });
            let m = self.refused_msg(reason);
            self.out(Output::ReplyEdge { reply_to, msg: m });
            return;
        }
        let forged = self.fence_from_heartbeat(&client, &hb);
        if let Some((claimed, why)) = &forged {
            self.event(Event::ForgedEpochClaim {
                client: client.clone(),
                claimed: *claimed,
                why: why.clone(),
            });
        }
        let forged = u64::from(forged.is_some());
        let now_ms = self.now.wall_ms;
        let seq = hb.seq;
        if let Some(c) = self.contacts.get_mut(&client) {
            c.client_type = hb.client_type;
            if c.view != hb.view {
                c.view = hb.view;
            }
            if c.following != hb.following {
                c.following = hb.following;
            }
            c.config_epoch = hb.config_epoch;
            c.config_version = hb.config_version;
            c.cached_samples = hb.cached_samples;
            c.dropped_samples = hb.dropped_samples;
            c.modified_ms = now_ms;
            c.forged_epoch_claims += forged;
        } else if self.contacts.len() < self.cfg.max_clients {
            let c = ClientContact {
                client_id: client.clone(),
                client_type: hb.client_type,
                view: hb.view,
                following: hb.following,
                config_epoch: hb.config_epoch,
                config_version: hb.config_version,
                cached_samples: hb.cached_samples,
                dropped_samples: hb.dropped_samples,
                modified_ms: now_ms,
                forged_epoch_claims: forged,
            };
            self.contacts.insert(client, c);
        } else {
            let reason = format!(
                "contact table full ({} clients); heartbeat answered but not recorded",
                self.cfg.max_clients
            );
            self.event(Event::ClientRefused { client, reason });
        }
        let active_address = self.active_edge_address();
        let redirect = if self.role() == Role::Zombie {
            active_address.clone()
        } else {
            None
        };
        let msg = ServerMsg::HeartbeatReply(HeartbeatReply {
            seq,
            role: self.role(),
            dr_state: self.dr_state,
            epoch: self.epoch,
            pair_id: self.pair_id,
            active_address,
            redirect,
            config_version: self.applied.config_index,
            // Not before the promotion is durable: a standby that crashes
            // first never held the epoch its proof would claim.
            proof: self
                .epoch_proof
                .clone()
                .filter(|_| self.role() != Role::Standby),
        });
        self.out(Output::ReplyEdge { reply_to, msg });
    }

    /// Whether a proof `client` relays may cost a signature verification now:
    /// a client that relayed a forged claim gets one check per
    /// [`PROOF_RECHECK_MS`], and one outside a full contact table none.
    pub(super) fn may_verify_proof_of(&mut self, client: &ClientId) -> Result<(), String> {
        let marked = match self.contacts.get(client) {
            Some(c) => c.forged_epoch_claims > 0,
            None if self.contacts.len() >= self.cfg.max_clients => {
                return Err(format!(
                    "the contact table is full ({} clients): proofs of clients outside it are not checked",
                    self.cfg.max_clients
                ));
            }
            None => false,
        };
        if !marked {
            return Ok(());
        }
        let now = self.now.mono_ms;
        let Some(limits) = self.client_limits_mut(client) else {
            return Err("too many clients tracked to check this one's proofs".into());
        };
        if limits
            .proof_checked_ms
            .is_some_and(|t| now < t.saturating_add(PROOF_RECHECK_MS))
        {
            return Err(format!(
                "this client relayed a forged epoch claim; its proofs are checked at most once per {} s",
                PROOF_RECHECK_MS / 1000
            ));
        }
        limits.proof_checked_ms = Some(now);
        Ok(())
    }

    /// The bounds one client's monitoring must keep (SPEC §4: an edge may
    /// send its own samples, and nothing lets it fill the servers): each
    /// sample at most `max_sample_bytes`, a batch at most one entry's worth,
    /// the uncommitted log within `max_pending_bytes`, and the client's rate
    /// within `max_sample_bytes_per_s`. Charges the batch when it passes.
    fn sample_limits_refusal(&mut self, client: &ClientId, samples: &[Sample]) -> Option<String> {
        let max = self.cfg.max_sample_bytes;
        if let Some(big) = samples.iter().find(|s| s.payload.len() > max) {
            return Some(format!(
                "sample {} has {} bytes, above monitoring.max_sample_bytes ({max}); it is never taken",
                big.seq,
                big.payload.len()
            ));
        }
        let bytes: usize = samples.iter().map(|s| s.payload.len() + 10).sum();
        let batch = self.cfg.max_sample_batch_bytes();
        if bytes > batch {
            return Some(format!(
                "a batch of {bytes} bytes is above the {batch} bytes one batch may hold; send fewer samples at once"
            ));
        }
        if let Some(e) = self.pending_bytes_error(bytes) {
            return Some(e.to_string());
        }
        let now = self.now.mono_ms;
        let rate = self.cfg.max_sample_bytes_per_s;
        let Some(limits) = self.client_limits_mut(client) else {
            return Some(format!(
                "{} clients are tracked already (edges.max_clients); retry later",
                self.cfg.max_clients
            ));
        };
        let refill = now.saturating_sub(limits.refilled_ms).saturating_mul(rate) / 1000;
        limits.sample_tokens = limits
            .sample_tokens
            .saturating_add(refill)
            .min(batch as u64);
        limits.refilled_ms = now;
        if (bytes as u64) > limits.sample_tokens {
            return Some(format!(
                "monitoring above {rate} bytes/s for this client (monitoring.max_sample_bytes_per_s); keep the samples and retry"
            ));
        }
        limits.sample_tokens -= bytes as u64;
        None
    }

    /// The limits of `client`, made on first use with a full sample bucket;
    /// `None` when `max_clients` clients are tracked already.
    fn client_limits_mut(&mut self, client: &ClientId) -> Option<&mut ClientLimits> {
        if !self.client_limits.contains_key(client) {
            if self.client_limits.len() >= self.cfg.max_clients {
                return None;
            }
            let limits = ClientLimits {
                sample_tokens: self.cfg.max_sample_batch_bytes() as u64,
                refilled_ms: self.now.mono_ms,
                proof_checked_ms: None,
            };
            self.client_limits.insert(client.clone(), limits);
        }
        self.client_limits.get_mut(client)
    }

    fn on_samples(&mut self, reply_to: ReplyTo, client: ClientId, samples: Vec<Sample>) {
        let refuse = match self.gate(RequestKind::MonitoringWrite, "monitoring") {
            Err(e) => Some(e.to_string()),
            Ok(()) if !self.takes_writes() => Some(
                "this server is not taking writes right now; keep the samples and retry".into(),
            ),
            Ok(()) if self.writes.len() + self.sample_acks.len() >= self.cfg.max_pending_writes => {
                Some("too many writes waiting; retry shortly".into())
            }
            Ok(()) if samples.windows(2).any(|w| w[1].seq <= w[0].seq) => {
                Some("samples are not in increasing seq order".into())
            }
            Ok(()) => self.sample_limits_refusal(&client, &samples),
        };
        if let Some(reason) = refuse {
            let m = self.refused_msg(reason);
            self.out(Output::ReplyEdge { reply_to, msg: m });
            return;
        }
        let Some(max_seq) = samples.last().map(|s| s.seq) else {
            let msg = ServerMsg::MonitoringAck {
                epoch: self.epoch,
                up_to_seq: 0,
            };
            self.out(Output::ReplyEdge { reply_to, msg });
            return;
        };
        let seen = self.pending_sample_seq.get(&client).copied().unwrap_or(0);
        let (fresh, dups): (Vec<Sample>, Vec<Sample>) =
            samples.into_iter().partition(|s| s.seq > seen);
        let total_dups = dups.len() as u64;
        if total_dups > 0 {
            // Counted by the I/O layer (metrics, monitoring/getSummary): a counter
            // here would make every re-delivery a new state of the machine.
            self.event(Event::SamplesDeduplicated {
                client: client.clone(),
                count: total_dups,
            });
        }
        if fresh.is_empty() {
            // All re-sent: acknowledge once what covers them is committed.
            let committed = self.applied.sample_seq.get(&client).copied().unwrap_or(0);
            if committed >= max_seq {
                let msg = ServerMsg::MonitoringAck {
                    epoch: self.epoch,
                    up_to_seq: max_seq,
                };
                self.out(Output::ReplyEdge { reply_to, msg });
            } else {
                let index = self.log.last_index();
                self.sample_acks.push_back(PendingSampleAck {
                    reply_to,
                    index,
                    up_to_seq: max_seq,
                });
            }
            return;
        }
        self.pending_sample_seq.insert(client.clone(), max_seq);
        let index = self.append_op(Op::Samples {
            client,
            samples: fresh,
        });
        self.sample_acks.push_back(PendingSampleAck {
            reply_to,
            index,
            up_to_seq: max_seq,
        });
    }
}
