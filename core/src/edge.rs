//! The state machine of an edge or gateway (SPEC §5).

use crate::config::{EdgeConfig, Mutant};
use crate::msg::*;
use crate::proof::EpochProof;
use crate::rng::Rng;
use crate::types::*;
use std::collections::VecDeque;
use std::sync::Arc;

/// Timers of an edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EdgeTimer {
    /// Heartbeat to both servers; also retries config pulls and monitoring batches.
    Heartbeat,
}

/// Inputs of an edge.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EdgeInput {
    Timeout(EdgeTimer),
    /// A message from server `server` (0 or 1, as in [`EdgeConfig::servers`]).
    Reply {
        server: usize,
        msg: ServerMsg,
    },
    /// A new monitoring sample to deliver.
    Sample {
        payload: Vec<u8>,
    },
}

/// Outputs of an edge.
// Sends of heartbeats dominate; keeping them inline avoids an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub enum EdgeOutput {
    /// Send `msg` to server `server` at `address`.
    Send {
        server: usize,
        address: String,
        msg: EdgeMsg,
    },
    /// Arm `timer` to fire after `after_ms`.
    SetTimer {
        timer: EdgeTimer,
        after_ms: Millis,
    },
    Event(EdgeEvent),
}

/// Things worth reporting about an edge.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EdgeEvent {
    /// The edge now follows `to` (an edge address), or nobody.
    Following {
        from: Option<String>,
        to: Option<String>,
    },
    /// New configuration applied.
    ConfigApplied {
        epoch: Epoch,
        version: Index,
        docs: Vec<(String, Doc)>,
    },
    /// Samples up to `up_to_seq` are durable on the servers.
    SamplesAcked { up_to_seq: u64 },
    /// The cache was full: the oldest samples were dropped.
    SamplesDropped { count: u64 },
    /// A heartbeat round trip completed.
    HeartbeatRtt { server: usize, rtt_ms: Millis },
    /// A zombie named a server this edge does not know.
    RedirectIgnored { from: String, to: String },
}

/// What an edge knows of one server.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerSlot {
    pub view: ViewEntry,
    pub dr_state: Option<DrState>,
    /// When the unanswered heartbeat was sent (edge monotonic ms).
    pub awaiting_since_ms: Option<Millis>,
    /// Heartbeats in a row without a reply (capped at the threshold).
    pub missed: u32,
    pub reachable: bool,
    /// Committed configuration version it last reported.
    pub config_version: Index,
    pub redirect: Option<String>,
}

/// The state machine of an edge or gateway.
///
/// # Calling contract
/// Build with [`Edge::new`], drain [`Edge::poll_output`] (it arms the first
/// heartbeat), then feed every reply, timer and sample with
/// [`Edge::handle_input`] and drain the outputs after each call.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Edge {
    cfg: EdgeConfig,
    now_ms: Millis,
    rng: Rng,
    slots: [ServerSlot; 2],
    following: Option<usize>,
    max_epoch_seen: Epoch,
    /// The highest epoch proof a server gave: relayed in every heartbeat, so
    /// that an old active this edge still reaches learns it was replaced.
    /// The edge does not verify it (servers do, against their pinned peer).
    proof: Option<Arc<EpochProof>>,
    config: (Epoch, Index),
    pull_inflight: bool,
    next_seq: u64,
    cache: VecDeque<Sample>,
    cache_bytes: usize,
    /// Last seq of the batch sent and not yet acknowledged, and ticks since.
    inflight: Option<(u64, u32)>,
    dropped: u64,
    outputs: VecDeque<EdgeOutput>,
}

impl Edge {
    pub fn new(cfg: EdgeConfig, now_ms: Millis) -> Self {
        debug_assert!(cfg.validate().is_ok(), "validate the configuration first");
        let slot = |address: &String| ServerSlot {
            view: ViewEntry {
                address: address.clone(),
                role: None,
                epoch: 0,
                pair_id: None,
                last_response_ms: None,
            },
            dr_state: None,
            awaiting_since_ms: None,
            missed: 0,
            reachable: false,
            config_version: 0,
            redirect: None,
        };
        let mut e = Edge {
            rng: Rng::new(cfg.seed),
            slots: [slot(&cfg.servers[0]), slot(&cfg.servers[1])],
            cfg,
            now_ms,
            following: None,
            max_epoch_seen: 0,
            proof: None,
            config: (0, 0),
            pull_inflight: false,
            next_seq: 1,
            cache: VecDeque::new(),
            cache_bytes: 0,
            inflight: None,
            dropped: 0,
            outputs: VecDeque::new(),
        };
        e.heartbeat_both();
        e.arm_heartbeat();
        e
    }

    pub fn config(&self) -> &EdgeConfig {
        &self.cfg
    }
    /// Index of the followed server.
    pub fn following(&self) -> Option<usize> {
        self.following
    }
    /// Edge address of the followed server.
    pub fn following_address(&self) -> Option<&str> {
        self.following.map(|i| self.cfg.servers[i].as_str())
    }
    pub fn slots(&self) -> &[ServerSlot; 2] {
        &self.slots
    }
    pub fn max_epoch_seen(&self) -> Epoch {
        self.max_epoch_seen
    }
    /// The epoch proof this edge relays.
    pub fn proof(&self) -> Option<&EpochProof> {
        self.proof.as_deref()
    }
    /// `(epoch, version)` of the configuration applied.
    pub fn config_applied(&self) -> (Epoch, Index) {
        self.config
    }
    /// Samples kept until acknowledged.
    pub fn cached_samples(&self) -> usize {
        self.cache.len()
    }
    pub fn cached_bytes(&self) -> usize {
        self.cache_bytes
    }
    pub fn dropped_samples(&self) -> u64 {
        self.dropped
    }
    /// Next sample sequence number.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    #[must_use]
    pub fn poll_output(&mut self) -> Option<EdgeOutput> {
        self.outputs.pop_front()
    }

    pub fn handle_input(&mut self, now_ms: Millis, input: EdgeInput) {
        self.now_ms = self.now_ms.max(now_ms);
        match input {
            EdgeInput::Timeout(EdgeTimer::Heartbeat) => self.on_tick(),
            EdgeInput::Reply { server, msg } if server < 2 => self.on_reply(server, msg),
            EdgeInput::Reply { .. } => {}
            EdgeInput::Sample { payload } => self.on_sample(payload),
        }
    }

    fn send(&mut self, server: usize, msg: EdgeMsg) {
        let address = self.cfg.servers[server].clone();
        self.outputs.push_back(EdgeOutput::Send {
            server,
            address,
            msg,
        });
    }

    fn event(&mut self, e: EdgeEvent) {
        self.outputs.push_back(EdgeOutput::Event(e));
    }

    fn arm_heartbeat(&mut self) {
        let base = self.cfg.heartbeat_interval_ms;
        let spread = base * u64::from(self.cfg.jitter_percent) / 100;
        let after_ms = if spread == 0 {
            base
        } else {
            self.rng.range(base - spread, base + spread)
        };
        self.outputs.push_back(EdgeOutput::SetTimer {
            timer: EdgeTimer::Heartbeat,
            after_ms,
        });
    }

    fn heartbeat_both(&mut self) {
        for i in 0..2 {
            self.heartbeat(i);
        }
    }

    fn heartbeat(&mut self, i: usize) {
        let hb = Heartbeat {
            client_id: self.cfg.client_id.clone(),
            client_type: self.cfg.client_type,
            // The send time doubles as the heartbeat's number: replies echo it.
            seq: self.now_ms,
            view: [self.slots[0].view.clone(), self.slots[1].view.clone()],
            following: self.following_address().map(str::to_string),
            config_epoch: self.config.0,
            config_version: self.config.1,
            cached_samples: self.cache.len() as u64,
            dropped_samples: self.dropped,
            proof: self.proof.clone(),
        };
        if self.slots[i].awaiting_since_ms.is_none() {
            self.slots[i].awaiting_since_ms = Some(self.now_ms);
        }
        self.send(i, EdgeMsg::Heartbeat(hb));
    }

    fn on_tick(&mut self) {
        let threshold = self.cfg.missed_threshold;
        for s in &mut self.slots {
            if s.awaiting_since_ms.is_some() {
                s.missed = (s.missed + 1).min(threshold);
                if s.missed >= threshold {
                    s.reachable = false;
                }
            }
        }
        self.refollow();
        self.heartbeat_both();
        self.pull_inflight = false;
        match self.inflight {
            Some((_, ticks)) if ticks >= 1 => {
                self.inflight = None;
                self.flush_samples();
            }
            Some((seq, ticks)) => self.inflight = Some((seq, ticks + 1)),
            None => self.flush_samples(),
        }
        self.arm_heartbeat();
    }

    fn on_reply(&mut self, i: usize, msg: ServerMsg) {
        match msg {
            ServerMsg::HeartbeatReply(r) => {
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
            ServerMsg::Config {
                epoch,
                version,
                docs,
            } => {
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
            ServerMsg::MonitoringAck { up_to_seq, .. } => {
                if self.following != Some(i) {
                    return;
                }
                while self.cache.front().is_some_and(|s| s.seq <= up_to_seq) {
                    // `front()` was just checked.
                    let s = self.cache.pop_front().expect("checked");
                    self.cache_bytes -= s.payload.len();
                }
                if self.inflight.is_some_and(|(last, _)| last <= up_to_seq) {
                    self.inflight = None;
                }
                self.event(EdgeEvent::SamplesAcked { up_to_seq });
                self.flush_samples();
            }
            ServerMsg::Refused { .. } => {
                // The server will not take it now; the next heartbeat tells why.
                self.pull_inflight = false;
            }
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
    fn refollow(&mut self) {
        let follow_zombie = self.cfg.mutant == Mutant::FollowZombie;
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

    fn on_sample(&mut self, payload: Vec<u8>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.cache_bytes += payload.len();
        self.cache.push_back(Sample { seq, payload });
        let mut dropped = 0;
        while self.cache_bytes > self.cfg.cache_max_bytes {
            // The cache holds at least the sample just pushed.
            let s = self.cache.pop_front().expect("non-empty");
            self.cache_bytes -= s.payload.len();
            dropped += 1;
        }
        if dropped > 0 {
            self.dropped += dropped;
            self.event(EdgeEvent::SamplesDropped { count: dropped });
        }
        self.flush_samples();
    }

    /// Sends the oldest cached samples to the followed server, one batch at a time.
    fn flush_samples(&mut self) {
        let Some(i) = self.following else { return };
        if self.inflight.is_some() || self.cache.is_empty() {
            return;
        }
        let samples: Vec<Sample> = self
            .cache
            .iter()
            .take(self.cfg.batch_max_samples)
            .cloned()
            .collect();
        let last = samples.last().map_or(0, |s| s.seq);
        self.inflight = Some((last, 0));
        self.send(i, EdgeMsg::Monitoring { samples });
    }
}
