//! The stateright model: two servers, N edges, an operator, a network that
//! loses, duplicates and reorders, partitions, crashes and storage flushes —
//! all as nondeterministic actions around the unmodified `vcodr-core` machines.

use crate::hostile::{self, Channel, Forgery, Menu};
use crate::nodes::*;
use std::collections::BTreeSet;
use std::sync::Arc;
use vcodr_core::*;

/// How the network behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetCfg {
    /// A delivered message stays in flight and may be delivered again, at any
    /// later time (stateright's duplicating network). Without it a delivery
    /// consumes the message; a message sent while an identical one is in
    /// flight merges with it (a loss, which any real network may cause).
    pub duplicating: bool,
    /// Messages on edge links (heartbeats, pulls, samples and their replies)
    /// are consumed on delivery even when `duplicating`: each is delivered at
    /// most once, still in any order and at any later time. Re-sending is the
    /// edge's own behaviour (every heartbeat tick), which the model explores.
    pub edge_link_once: bool,
    /// Any message in flight may be lost (a `Drop` action).
    pub lossy: bool,
    /// Which links a partition may cut.
    pub cut_scope: CutScope,
}

/// Which links the `Cut` action may cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutScope {
    /// Only the server ↔ server link (the classic split: edges see both servers).
    PeerOnly,
    /// Any link, edge links included.
    All,
}

/// When `Persist` requests become durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// A separate `Flush` action commits the oldest pending request; a crash
    /// loses every request not yet flushed.
    Async,
    /// Committed as soon as the core asks (fewer states, fewer interleavings).
    Sync,
}

/// Where the servers start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Both STANDALONE / UNCONFIGURED; the operator pairs them in the model.
    Unconfigured,
    /// Already paired and in STANDBY_RUNNING, edges following `a`: the pairing
    /// is driven through the real core by a deterministic loop in `init_states`.
    Paired,
    /// As `Paired`, then (by the same deterministic loop) a planned
    /// switchover to `b`, the edges following `b`, and one sample of each
    /// edge acknowledged by `b` alone: `a` is `b`'s zombie, and the only
    /// copy of those samples is on `b`. Their acknowledgements stay in the
    /// history for the properties; what follows (a rejoin, say) is explored.
    SwitchedOver,
}

/// Everything that bounds the model. Each `u8` is a budget for the whole run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelCfg {
    pub edges: u8,
    pub start: Start,
    pub net: NetCfg,
    pub durability: Durability,
    /// `replication.on_standby_loss` of both servers.
    pub policy: OnStandbyLoss,
    /// Configuration writes (`configuration/put`, each a unique key) accepted by a server.
    pub writes: u8,
    /// Promotions accepted by a server.
    pub promotions: u8,
    /// Allow `promoteStandbyToActive {}` (disaster failover).
    pub disaster: bool,
    /// Allow `promoteStandbyToActive {force:true}` (planned switchover).
    pub planned: bool,
    /// `rejoinAsStandby` calls accepted.
    pub rejoins: u8,
    /// `prepareForStandby` + `configureActiveForReplication` rounds (Start::Unconfigured).
    pub pairings: u8,
    /// Server crashes (each may be followed by a restart).
    pub crashes: u8,
    /// Links cut (each may be healed).
    pub cuts: u8,
    /// Monitoring samples produced per edge.
    pub samples: u8,
    /// Peer ticks per server (`None`: unbounded). Not needed for finiteness
    /// since the core caps its missed-tick counters; a budget shrinks the space.
    pub peer_ticks: Option<u8>,
    /// Heartbeat timer firings per edge (`None`: unbounded). The edge machine
    /// is finite without it; the budget shrinks the space.
    pub edge_ticks: Option<u8>,
    /// Cap on a server's persist sequence number (a backstop bound: every
    /// persist is caused by a bounded operator action, crash or promotion, so
    /// the CI models never reach it; the report says if one did).
    pub max_persist_seq: PersistSeq,
    /// Cap on pending (unflushed) persist requests per server.
    pub max_pending: usize,
    /// Messages the hostile actor `x` may forge (see [`crate::hostile`]); 0: no
    /// hostile actor. A forgery that changes nothing is not counted.
    pub forgeries: u8,
    /// Which forgeries `x` chooses from.
    pub forge_menu: Menu,
    /// Deliberate bug switched on in the core.
    pub mutant: Mutant,
}

impl ModelCfg {
    /// CI model "failover": a paired active/standby, one write, a partition of
    /// the peer link, both promotion kinds (one per run), synchronous disks.
    pub fn ci() -> Self {
        ModelCfg {
            edges: 0,
            start: Start::Paired,
            net: NetCfg {
                duplicating: true,
                edge_link_once: true,
                lossy: false,
                cut_scope: CutScope::PeerOnly,
            },
            durability: Durability::Sync,
            policy: OnStandbyLoss::Degrade,
            writes: 1,
            promotions: 1,
            disaster: true,
            planned: true,
            rejoins: 0,
            pairings: 0,
            crashes: 0,
            cuts: 1,
            samples: 0,
            peer_ticks: Some(2),
            edge_ticks: Some(2),
            max_persist_seq: 32,
            max_pending: 3,
            forgeries: 0,
            forge_menu: Menu::NONE,
            mutant: Mutant::None,
        }
    }

    /// CI model "crash": one crash of either server at any moment, asynchronous
    /// disks (a crash loses what was not flushed), one write, a disaster failover.
    pub fn ci_crash() -> Self {
        ModelCfg {
            durability: Durability::Async,
            crashes: 1,
            cuts: 0,
            planned: false,
            peer_ticks: Some(1),
            ..ModelCfg::ci()
        }
    }

    /// CI model "edges": an edge heartbeating both servers through a disaster
    /// failover: follow rule, configuration pulls, fencing of the old active.
    pub fn ci_edges() -> Self {
        ModelCfg {
            edges: 1,
            writes: 0,
            cuts: 0,
            planned: false,
            edge_ticks: Some(2),
            ..ModelCfg::ci()
        }
    }

    /// CI model "setup": from two unconfigured servers through
    /// prepareForStandby, configureActiveForReplication, snapshot and sync,
    /// with a write and a crash at any moment.
    pub fn setup() -> Self {
        ModelCfg {
            edges: 0,
            start: Start::Unconfigured,
            writes: 1,
            promotions: 0,
            crashes: 1,
            cuts: 0,
            pairings: 1,
            peer_ticks: Some(1),
            ..ModelCfg::ci()
        }
    }

    /// CI model "samples": the fault drills' scenario. From a planned
    /// switchover to `b` with an edge's sample acknowledged by `b` alone (its
    /// old active `a` a zombie; [`Start::SwitchedOver`]), `a` rejoins: a
    /// snapshot, and the copy of the samples it names but does not carry, with
    /// a crash of either server at any moment (a synchronous disk: what a
    /// crash loses is the in-memory copy state), then a planned switchover
    /// back.
    /// A STANDBY_RUNNING `a` — where that switchover loses nothing — and a
    /// promoted `a` must hold the sample (§9.7). Without the copy they do not.
    pub fn ci_samples() -> Self {
        ModelCfg {
            edges: 1,
            start: Start::SwitchedOver,
            samples: 0,
            writes: 0,
            cuts: 0,
            crashes: 1,
            promotions: 1,
            disaster: false,
            planned: true,
            rejoins: 1,
            peer_ticks: Some(1),
            edge_ticks: Some(0),
            ..ModelCfg::ci()
        }
    }

    /// The hostile actor `x` at full strength: the `edges` situation (a
    /// disaster failover, the old active fenced through an edge) with one
    /// write, and `x` choosing from every forgery, twice. Beyond the CI budget
    /// (over 3 M states, see the README); CI splits it into
    /// [`ModelCfg::hostile_peer`] and [`ModelCfg::hostile_edge`].
    pub fn hostile() -> Self {
        ModelCfg {
            edges: 1,
            writes: 1,
            cuts: 0,
            planned: false,
            edge_ticks: Some(1),
            forgeries: 2,
            forge_menu: Menu::all(),
            ..ModelCfg::ci()
        }
    }

    /// CI model "hostile-peer": the `ci` failover model (a write, a partition,
    /// degrade, a disaster or planned promotion) with `x` forging two peer-link
    /// messages of every kind, at any moment, to either server.
    pub fn hostile_peer() -> Self {
        ModelCfg {
            forgeries: 2,
            forge_menu: Menu::peer(),
            ..ModelCfg::ci()
        }
    }

    /// CI model "hostile-setup": the `setup` model (pairing from scratch, a
    /// write, a crash) with `x` forging two peer-link messages of every kind:
    /// the pairing steps are the only peer messages admitted before a peer is
    /// pinned, so this is where guessed tokens are tried.
    pub fn hostile_setup() -> Self {
        ModelCfg {
            forgeries: 2,
            forge_menu: Menu::peer(),
            ..ModelCfg::setup()
        }
    }

    /// CI model "hostile-edge": an edge heartbeating both servers through a
    /// disaster failover and the fencing of the old active through it (the
    /// `edges` model with one heartbeat tick), with `x` sending two forged
    /// heartbeat views, each proof variant, at any moment, to either server.
    pub fn hostile_edge() -> Self {
        ModelCfg {
            edge_ticks: Some(1),
            forgeries: 2,
            forge_menu: Menu::edge(),
            ..ModelCfg::ci_edges()
        }
    }

    pub fn server_cfg(&self) -> ServerConfig {
        ServerConfig {
            peer_heartbeat_interval_ms: 100,
            peer_failure_threshold: 1,
            standby_grace_ms: 100,
            on_standby_loss: self.policy,
            history_entries: 1,
            switchover_max_ticks: 2,
            mutant: self.mutant,
            ..ServerConfig::default()
        }
    }

    pub fn edge_cfg(&self, e: EdgeIx) -> EdgeConfig {
        EdgeConfig {
            heartbeat_interval_ms: 100,
            jitter_percent: 0,
            missed_threshold: 1,
            cache_max_bytes: 1024,
            batch_max_samples: 16,
            mutant: self.mutant,
            ..EdgeConfig::new(
                edge_client(e),
                ClientType::Edge,
                [server_info(0).edge_address, server_info(1).edge_address],
            )
        }
    }

    /// Every link that exists in this configuration.
    pub fn links(&self) -> Vec<Link> {
        let mut v = vec![Link::Peer];
        for e in 0..self.edges {
            for s in 0..2 {
                v.push(Link::Edge(e, s));
            }
        }
        v
    }
}

/// Client id of edge `e` (its certificate name).
pub fn edge_client(e: EdgeIx) -> ClientId {
    format!("e{e}")
}

/// Key and value of the `n`th write (unique, so presence is checkable).
pub fn write_kv(n: u8) -> (String, Vec<u8>) {
    (format!("k{n}"), format!("v{n}").into_bytes())
}

/// An acknowledged configuration write.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ack {
    /// Write number (key `k{n}`).
    pub key: u8,
    pub server: ServerIx,
    /// Epoch of the acknowledging server.
    pub epoch: Epoch,
    /// Acknowledged while degraded (without the standby).
    pub unprotected: bool,
    /// The pair the server belonged to (`None`: not under DR, no promise).
    pub pair: Option<PairId>,
}

/// A monitoring acknowledgement sent to an edge.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SampleAck {
    pub edge: EdgeIx,
    pub up_to_seq: u64,
    pub server: ServerIx,
    pub epoch: Epoch,
    pub unprotected: bool,
    /// The pair the server belonged to (`None`: not under DR, no promise).
    pub pair: Option<PairId>,
}

/// A safety violation observed at the moment it happened.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Violation {
    /// A STANDBY or ZOMBIE did not refuse a configuration call at once.
    RoleGate { server: ServerIx, role: Role },
    /// A server acknowledged a write after learning of a higher epoch.
    Fencing {
        server: ServerIx,
        epoch: Epoch,
        seen: Epoch,
    },
    /// An edge applied configuration of a lower epoch than it had seen.
    EdgeRegress {
        edge: EdgeIx,
        applied: Epoch,
        seen: Epoch,
    },
    /// A server sent a peer message to an address that is neither `a`'s nor `b`'s.
    DialedStranger { server: ServerIx, to: String },
}

/// Milestones, for `Sometimes` properties (non-vacuity).
pub mod milestone {
    pub const DISASTER_PROMOTED: u16 = 1 << 0;
    pub const PLANNED_PROMOTED: u16 = 1 << 1;
    pub const RESTARTED: u16 = 1 << 2;
    pub const REJOINED: u16 = 1 << 3;
    pub const UNPROTECTED_ACK: u16 = 1 << 4;
    pub const CUT: u16 = 1 << 5;
    /// A forged peer message reached a server and was refused at admission.
    pub const FORGED_PEER_REFUSED: u16 = 1 << 6;
    /// A forged heartbeat claim reached a server and was refused (counted, client marked).
    pub const FORGED_VIEW_REFUSED: u16 = 1 << 7;
}

/// What happened so far that the properties look at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct History {
    pub acks: Vec<Ack>,
    pub sample_acks: Vec<SampleAck>,
    pub violations: Vec<Violation>,
    /// Promotions that reported `dataLossBound: 0`: (server, pair, new epoch).
    pub zero_loss_promotions: Vec<(ServerIx, Option<PairId>, Epoch)>,
    pub milestones: u16,
    /// The highest epoch a genuine server has held (its `epoch()` after any
    /// step) or asked its peer to hand over (a planned switchover's
    /// `DemoteRequest`, after which the old active is fenced by an epoch its
    /// peer holds only once the handover is done).
    pub max_epoch: Epoch,
    /// The pair each server first joined durably (the model never runs
    /// `removeStandby`, so it must keep it).
    pub paired: [Option<PairId>; 2],
}

/// Budgets used so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Used {
    pub writes: u8,
    pub promotions: u8,
    pub rejoins: u8,
    pub prepares: u8,
    pub configures: u8,
    pub crashes: u8,
    pub cuts: u8,
    pub forgeries: u8,
}

/// A state of the whole system.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// Shared until written: a step clones only the nodes it touches.
    pub servers: [Arc<ServerNode>; 2],
    pub edges: Vec<Arc<EdgeNode>>,
    pub net: Net,
    pub cut: BTreeSet<Link>,
    pub used: Used,
    /// The pairing token the operator copied from `prepareForStandby`.
    pub token: Option<(ServerIx, u128)>,
    pub hist: Arc<History>,
}

impl State {
    pub fn server(&self, s: ServerIx) -> Option<&Server> {
        self.servers[usize::from(s)].server.as_ref()
    }
    /// Servers that are up, with their index.
    pub(crate) fn srv_mut(&mut self, s: ServerIx) -> &mut ServerNode {
        Arc::make_mut(&mut self.servers[usize::from(s)])
    }
    pub(crate) fn edge_mut(&mut self, e: EdgeIx) -> &mut EdgeNode {
        Arc::make_mut(&mut self.edges[usize::from(e)])
    }
    pub(crate) fn hist_mut(&mut self) -> &mut History {
        Arc::make_mut(&mut self.hist)
    }
    pub fn up(&self) -> impl Iterator<Item = (ServerIx, &Server)> {
        (0..2u8).filter_map(|s| self.server(s).map(|v| (s, v)))
    }
}

/// What the model can do in a state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Deliver the message at this position of the network (it stays: duplication).
    Deliver(usize),
    /// Lose the message at this position.
    Drop(usize),
    /// A server timer fires.
    Timer(ServerIx, Timer),
    /// An edge's heartbeat timer fires.
    EdgeTick(EdgeIx),
    /// The oldest pending persist request of a server becomes durable.
    Flush(ServerIx),
    Crash(ServerIx),
    Restart(ServerIx),
    Cut(Link),
    Heal(Link),
    /// Operator: `configuration/put` of the next unique key.
    Put(ServerIx),
    /// Operator: `promoteStandbyToActive {force}`.
    Promote(ServerIx, bool),
    /// Operator: `rejoinAsStandby`.
    Rejoin(ServerIx),
    /// Operator: `prepareForStandby`.
    Prepare(ServerIx),
    /// Operator: `configureActiveForReplication` with the prepared server and its token.
    Configure(ServerIx),
    /// An edge produces a monitoring sample.
    Sample(EdgeIx),
    /// The hostile actor sends this forgery to this server (delivered at once).
    Forge(ServerIx, Forgery),
}

const REQ_PROMOTE_DISASTER: RequestId = 1000;
const REQ_PROMOTE_PLANNED: RequestId = 1001;
const REQ_OTHER: RequestId = 2000;

/// The model: a configuration; the state lives in [`State`].
#[derive(Clone, Debug)]
pub struct DrModel {
    pub cfg: ModelCfg,
}

impl DrModel {
    pub fn new(cfg: ModelCfg) -> Self {
        DrModel { cfg }
    }

    fn is_cut(&self, st: &State, link: Link) -> bool {
        st.cut.contains(&link)
    }

    /// Feeds `input` (or nothing, to drain a freshly restored server) and
    /// carries out every output. Returns the operator replies.
    pub(crate) fn feed_server(
        &self,
        st: &mut State,
        s: ServerIx,
        input: Option<Input>,
    ) -> Vec<(RequestId, Result<Reply, CommandError>)> {
        let mut replies = Vec::new();
        let mut next: std::collections::VecDeque<Input> = input.into_iter().collect();
        let mut first = true;
        while first || !next.is_empty() {
            first = false;
            if st.server(s).is_none() {
                break;
            }
            let node = st.srv_mut(s);
            let Some(srv) = node.server.as_mut() else {
                break;
            };
            let seen_before = srv.highest_epoch_seen();
            if let Some(i) = next.pop_front() {
                srv.handle_input(NOW, i);
            }
            let outs: Vec<Output> = vcodr_core::testing::drain(srv);
            let epoch = srv.epoch();
            let pair = srv.pair_id();
            // A write or sample acknowledged while the active is degraded went
            // without the standby: the core ends degrade before acknowledging
            // anything the standby has, so the state after the input tells.
            let acks = outs.iter().any(|o| {
                matches!(
                    o,
                    Output::Reply {
                        result: Ok(Reply::Written { .. }),
                        ..
                    } | Output::ReplyEdge {
                        msg: ServerMsg::MonitoringAck { .. },
                        ..
                    }
                )
            });
            let unprotected = acks && srv.status().degraded;
            let mut durable_up_to = None;
            let mut read = None;
            for out in outs {
                match out {
                    Output::SendPeer { to, msg } => {
                        if let PeerMsg::DemoteRequest { new_epoch } = msg.body {
                            if new_epoch > st.hist.max_epoch {
                                st.hist_mut().max_epoch = new_epoch;
                            }
                        }
                        if server_by_peer_address(&to).is_none() {
                            // SPEC §6: never an address taken from an unauthenticated message.
                            let v = Violation::DialedStranger {
                                server: s,
                                to: to.clone(),
                            };
                            if !st.hist.violations.contains(&v) {
                                st.hist_mut().violations.push(v);
                            }
                        }
                        if let Some(d) = server_by_peer_address(&to) {
                            if !self.is_cut(st, Link::Peer) && d != s {
                                st.net.insert(Envelope {
                                    src: NodeId::Server(s),
                                    dst: NodeId::Server(d),
                                    msg: Msg::Peer(msg),
                                });
                            }
                        }
                    }
                    Output::ReplyPeer { link, msg } => {
                        // Back to the sender of the message answered: link ids are server indexes.
                        if let Some(d) = ServerIx::try_from(link).ok().filter(|d| *d < 2 && *d != s)
                        {
                            if !self.is_cut(st, Link::Peer) {
                                st.net.insert(Envelope {
                                    src: NodeId::Server(s),
                                    dst: NodeId::Server(d),
                                    msg: Msg::Peer(msg),
                                });
                            }
                        }
                    }
                    Output::ReplyEdge { reply_to, msg } => {
                        let e = reply_to as EdgeIx;
                        if let ServerMsg::MonitoringAck { epoch, up_to_seq } = &msg {
                            let a = SampleAck {
                                edge: e,
                                up_to_seq: *up_to_seq,
                                server: s,
                                epoch: *epoch,
                                unprotected,
                                pair,
                            };
                            if !st.hist_mut().sample_acks.contains(&a) {
                                st.hist_mut().sample_acks.push(a);
                            }
                        }
                        if e < self.cfg.edges && !self.is_cut(st, Link::Edge(e, s)) {
                            st.net.insert(Envelope {
                                src: NodeId::Server(s),
                                dst: NodeId::Edge(e),
                                msg: Msg::ToEdge(msg),
                            });
                        }
                    }
                    Output::Persist { seq, ops } => {
                        let node = st.srv_mut(s);
                        node.last_seq = seq;
                        match self.cfg.durability {
                            Durability::Sync => {
                                node.store.apply(&ops);
                                durable_up_to = Some(seq);
                            }
                            Durability::Async => node.pending.push((seq, ops)),
                        }
                    }
                    Output::ReadSamples {
                        ranges,
                        max_bytes,
                        max_samples,
                    } => {
                        // Answered at once, from the store as it is once the
                        // persist requests before the read are durable (the
                        // server's storage thread runs a read after them).
                        let node = &st.servers[usize::from(s)];
                        let chunks = if node.pending.is_empty() {
                            node.store.read_samples(&ranges, max_bytes, max_samples)
                        } else {
                            let mut after = node.store.clone();
                            for (_, ops) in &node.pending {
                                after.apply(ops);
                            }
                            after.read_samples(&ranges, max_bytes, max_samples)
                        };
                        read = Some(Input::SamplesRead { chunks });
                    }
                    Output::SetTimer { timer, .. } => {
                        st.srv_mut(s).timers.insert(timer);
                    }
                    Output::CancelTimer(timer) => {
                        st.srv_mut(s).timers.remove(&timer);
                    }
                    Output::Reply { req, result } => {
                        match &result {
                            Ok(Reply::Written { .. }) => {
                                if seen_before > epoch {
                                    st.hist_mut().violations.push(Violation::Fencing {
                                        server: s,
                                        epoch,
                                        seen: seen_before,
                                    });
                                }
                                st.hist_mut().acks.push(Ack {
                                    key: req as u8,
                                    server: s,
                                    epoch,
                                    unprotected,
                                    pair,
                                });
                                if unprotected {
                                    st.hist_mut().milestones |= milestone::UNPROTECTED_ACK;
                                }
                            }
                            Ok(Reply::Promoted {
                                epoch,
                                data_loss_bound,
                            }) => {
                                if *data_loss_bound == Some(0) {
                                    st.hist_mut().zero_loss_promotions.push((s, pair, *epoch));
                                }
                                st.hist_mut().milestones |= if req == REQ_PROMOTE_PLANNED {
                                    milestone::PLANNED_PROMOTED
                                } else {
                                    milestone::DISASTER_PROMOTED
                                };
                            }
                            Ok(Reply::Prepared { pairing_token, .. }) => {
                                st.token = Some((s, *pairing_token));
                            }
                            _ => {}
                        }
                        replies.push((req, result));
                    }
                    Output::Event(Event::PeerRefused { link, .. })
                        if link == hostile::HOSTILE_LINK =>
                    {
                        st.hist_mut().milestones |= milestone::FORGED_PEER_REFUSED;
                    }
                    Output::Event(Event::ForgedEpochClaim { client, .. })
                        if client == hostile::HOSTILE_CLIENT =>
                    {
                        st.hist_mut().milestones |= milestone::FORGED_VIEW_REFUSED;
                    }
                    Output::Event(_) => {}
                }
            }
            next.extend(durable_up_to.map(|up_to| Input::Persisted { up_to }));
            next.extend(read);
        }
        replies
    }

    /// Feeds `input` to edge `e` and carries out every output.
    pub(crate) fn feed_edge(&self, st: &mut State, e: EdgeIx, input: Option<EdgeInput>) {
        let node = st.edge_mut(e);
        let seen_before = node.edge.max_epoch_seen();
        if let Some(i) = input {
            node.edge.handle_input(0, i);
        }
        let outs: Vec<EdgeOutput> = vcodr_core::testing::drain_edge(&mut node.edge);
        for out in outs {
            match out {
                EdgeOutput::Send { server, msg, .. } => {
                    let s = server as ServerIx;
                    if !self.is_cut(st, Link::Edge(e, s)) {
                        st.net.insert(Envelope {
                            src: NodeId::Edge(e),
                            dst: NodeId::Server(s),
                            msg: Msg::ToServer(msg),
                        });
                    }
                }
                EdgeOutput::SetTimer { .. } => st.edge_mut(e).armed = true,
                EdgeOutput::Event(EdgeEvent::ConfigApplied { epoch, .. })
                    if epoch < seen_before =>
                {
                    st.hist_mut().violations.push(Violation::EdgeRegress {
                        edge: e,
                        applied: epoch,
                        seen: seen_before,
                    });
                }
                EdgeOutput::Event(_) => {}
            }
        }
    }

    /// Whether `env` can be delivered now (destination up, link not cut).
    fn deliverable(&self, st: &State, env: &Envelope) -> bool {
        let up = match env.dst {
            NodeId::Server(s) => st.server(s).is_some(),
            NodeId::Edge(_) => true,
        };
        up && !self.is_cut(st, env.link())
    }

    /// Delivers one message to its destination.
    pub(crate) fn deliver(&self, st: &mut State, env: Envelope) {
        match (env.src, env.dst, env.msg) {
            (NodeId::Server(src), NodeId::Server(d), Msg::Peer(env)) => {
                let input = Input::Peer {
                    link: u64::from(src),
                    from: server_identity(src),
                    env,
                };
                self.feed_server(st, d, Some(input));
            }
            (NodeId::Edge(e), NodeId::Server(d), Msg::ToServer(m)) => {
                let input = Input::Edge {
                    reply_to: u64::from(e),
                    client: edge_client(e),
                    client_type: ClientType::Edge,
                    msg: m,
                };
                self.feed_server(st, d, Some(input));
            }
            (NodeId::Server(s), NodeId::Edge(e), Msg::ToEdge(m)) => {
                let input = EdgeInput::Reply {
                    server: usize::from(s),
                    msg: m,
                };
                self.feed_edge(st, e, Some(input));
            }
            (src, dst, _) => unreachable!("no such route {src:?} -> {dst:?}"),
        }
    }

    /// The disk commits every pending request in one transaction (group
    /// commit), then the core is told.
    fn flush(&self, st: &mut State, s: ServerIx) {
        if st.servers[usize::from(s)].pending.is_empty() {
            return;
        }
        let node = st.srv_mut(s);
        let mut up_to = 0;
        for (seq, ops) in std::mem::take(&mut node.pending) {
            node.store.apply(&ops);
            up_to = seq;
        }
        self.feed_server(st, s, Some(Input::Persisted { up_to }));
    }

    fn fire_timer(&self, st: &mut State, s: ServerIx, t: Timer) {
        st.srv_mut(s).timers.remove(&t);
        self.feed_server(st, s, Some(Input::Timeout(t)));
    }

    fn fire_edge(&self, st: &mut State, e: EdgeIx) {
        st.edge_mut(e).armed = false;
        self.feed_edge(st, e, Some(EdgeInput::Timeout(EdgeTimer::Heartbeat)));
    }

    fn restart(&self, st: &mut State, s: ServerIx) {
        let restored = st.servers[usize::from(s)].store.restored();
        let srv = Server::restore(self.cfg.server_cfg(), server_info(s), restored, NOW)
            .with_keys(server_keys(s));
        st.srv_mut(s).server = Some(srv);
        self.feed_server(st, s, None);
        st.hist_mut().milestones |= milestone::RESTARTED;
    }

    /// A fair, deterministic run: flush everything, deliver every message in
    /// flight exactly once (consuming it), and when nothing is in flight fire
    /// every armed peer tick and edge heartbeat (and, with `grace`, the
    /// standby-grace timer). Stops when `done` holds or after `rounds`.
    pub fn fair_run(
        &self,
        st: &mut State,
        rounds: usize,
        grace: bool,
        done: impl Fn(&State) -> bool,
    ) -> bool {
        for _ in 0..rounds {
            if done(st) {
                return true;
            }
            for s in 0..2 {
                self.flush(st, s);
            }
            if !st.net.is_empty() {
                let msgs: Vec<Envelope> = st.net.iter().cloned().collect();
                st.net.clear();
                for env in msgs {
                    if self.deliverable(st, &env) {
                        self.deliver(st, env);
                    }
                }
                continue;
            }
            for s in 0..2 {
                let node = &st.servers[usize::from(s)];
                if node.server.is_some() && node.timers.contains(&Timer::PeerTick) {
                    self.fire_timer(st, s, Timer::PeerTick);
                }
                let node = &st.servers[usize::from(s)];
                if grace && node.server.is_some() && node.timers.contains(&Timer::StandbyGrace) {
                    self.fire_timer(st, s, Timer::StandbyGrace);
                }
            }
            for e in 0..st.edges.len() as EdgeIx {
                if st.edges[usize::from(e)].armed {
                    self.fire_edge(st, e);
                }
            }
        }
        done(st)
    }

    fn command(
        &self,
        st: &mut State,
        s: ServerIx,
        req: RequestId,
        cmd: Command,
    ) -> Vec<(RequestId, Result<Reply, CommandError>)> {
        self.feed_server(st, s, Some(Input::Command { req, cmd }))
    }

    /// The initial state (see [`Start`]).
    pub fn initial(&self) -> State {
        let node = |s: ServerIx| ServerNode {
            server: Some(
                Server::new(self.cfg.server_cfg(), server_info(s), NOW).with_keys(server_keys(s)),
            ),
            store: MemStore::new(0),
            pending: Vec::new(),
            timers: BTreeSet::new(),
            ticks: 0,
            last_seq: 0,
        };
        let mut st = State {
            servers: [Arc::new(node(0)), Arc::new(node(1))],
            edges: Vec::new(),
            net: Net::default(),
            cut: BTreeSet::new(),
            used: Used::default(),
            token: None,
            hist: Arc::new(History::default()),
        };
        for s in 0..2 {
            self.feed_server(&mut st, s, None);
        }
        self.fair_run(&mut st, 4, false, |st| {
            st.servers.iter().all(|n| n.pending.is_empty())
        });
        if self.cfg.start != Start::Unconfigured {
            self.command(&mut st, 1, REQ_OTHER, Command::PrepareForStandby);
            self.fair_run(&mut st, 4, false, |st| st.token.is_some());
            let (_, token) = st
                .token
                .take()
                .expect("prepareForStandby answers with a token");
            let b = server_info(1);
            let cmd = Command::ConfigureActive {
                standby_address: b.peer_address,
                standby_uuid: b.uuid,
                pairing_token: token,
            };
            self.command(&mut st, 0, REQ_OTHER, cmd);
            let running = |st: &State| {
                st.up()
                    .all(|(_, v)| v.dr_state() == DrState::StandbyRunning)
                    && st.net.is_empty()
                    && st.servers.iter().all(|n| n.pending.is_empty())
            };
            assert!(
                self.fair_run(&mut st, 60, false, running),
                "the pairing did not reach STANDBY_RUNNING on both servers: {:?}",
                st.up()
                    .map(|(_, v)| (v.role(), v.dr_state()))
                    .collect::<Vec<_>>()
            );
        }
        for e in 0..self.cfg.edges {
            st.edges.push(Arc::new(EdgeNode {
                edge: Edge::new(self.cfg.edge_cfg(e), 0),
                armed: false,
                samples: 0,
                ticks: 0,
            }));
            self.feed_edge(&mut st, e, None);
        }
        let settled = |st: &State| {
            st.net.is_empty()
                && st.servers.iter().all(|n| n.pending.is_empty())
                && (st.server(0).is_some_and(|v| v.role() != Role::Active)
                    || st.edges.iter().all(|e| e.edge.following() == Some(0)))
        };
        assert!(
            self.fair_run(&mut st, 20, false, settled),
            "edges did not settle"
        );
        let mut hist = History::default();
        if self.cfg.start == Start::SwitchedOver {
            self.switch_over_with_samples(&mut st);
            hist.sample_acks = st.hist.sample_acks.clone();
        }
        for s in 0..2 {
            st.srv_mut(s).ticks = 0;
        }
        st.hist = Arc::new(hist);
        self.note_epochs(&mut st);
        st
    }

    /// `Start::SwitchedOver` from a paired state: a planned switchover to
    /// `b`, the edges following it, one sample of each acknowledged by `b`.
    fn switch_over_with_samples(&self, st: &mut State) {
        self.command(st, 1, REQ_PROMOTE_PLANNED, Command::Promote { force: true });
        let switched = |st: &State| {
            st.server(0).is_some_and(|v| v.role() == Role::Zombie)
                && st.server(1).is_some_and(|v| v.role() == Role::Standalone)
                && st.net.is_empty()
                && st.edges.iter().all(|e| e.edge.following() == Some(1))
        };
        assert!(
            self.fair_run(st, 40, false, switched),
            "the planned switchover did not complete"
        );
        for e in 0..st.edges.len() as EdgeIx {
            let n = st.edge_mut(e);
            n.samples += 1;
            let payload = vec![e, n.samples];
            self.feed_edge(st, e, Some(EdgeInput::Sample { payload }));
        }
        let acked =
            |st: &State| st.net.is_empty() && st.edges.iter().all(|e| e.edge.cached_samples() == 0);
        assert!(
            self.fair_run(st, 40, false, acked),
            "the samples were not acknowledged"
        );
        for e in 0..st.edges.len() {
            Arc::make_mut(&mut st.edges[e]).ticks = 0;
        }
    }

    /// Raises `History::max_epoch` to every up server's epoch and records
    /// the pair each server first joins durably (`History::paired`).
    fn note_epochs(&self, st: &mut State) {
        let held = st.up().map(|(_, v)| v.epoch()).max().unwrap_or(0);
        if held > st.hist.max_epoch {
            st.hist_mut().max_epoch = held;
        }
        for i in 0..2 {
            if st.hist.paired[i].is_none() {
                let durable = st.servers[i].store.meta.as_ref().and_then(|m| m.pair_id);
                if durable.is_some() {
                    st.hist_mut().paired[i] = durable;
                }
            }
        }
    }

    /// Carries out `action`; `None` when it changes nothing.
    pub fn step(&self, last: &State, action: &Action) -> Option<State> {
        let mut st = last.clone();
        match *action {
            Action::Deliver(i) => {
                let env = st.net.get(i)?;
                let once = self.cfg.net.edge_link_once && env.link() != Link::Peer;
                let env = if self.cfg.net.duplicating && !once {
                    env.clone()
                } else {
                    st.net.remove(i)
                };
                self.deliver(&mut st, env);
            }
            Action::Drop(i) => {
                st.net.remove(i);
            }
            Action::Timer(s, t) => {
                if t == Timer::PeerTick && self.cfg.peer_ticks.is_some() {
                    st.srv_mut(s).ticks += 1;
                }
                self.fire_timer(&mut st, s, t);
            }
            Action::EdgeTick(e) => {
                if self.cfg.edge_ticks.is_some() {
                    st.edge_mut(e).ticks += 1;
                }
                self.fire_edge(&mut st, e)
            }
            Action::Flush(s) => self.flush(&mut st, s),
            Action::Crash(s) => {
                let n = st.srv_mut(s);
                n.server = None;
                n.pending.clear();
                n.timers.clear();
                st.used.crashes += 1;
            }
            Action::Restart(s) => self.restart(&mut st, s),
            Action::Cut(l) => {
                st.cut.insert(l);
                st.used.cuts += 1;
                st.hist_mut().milestones |= milestone::CUT;
            }
            Action::Heal(l) => {
                st.cut.remove(&l);
            }
            Action::Sample(e) => {
                let n = st.edge_mut(e);
                n.samples += 1;
                let payload = vec![e, n.samples];
                self.feed_edge(&mut st, e, Some(EdgeInput::Sample { payload }));
            }
            Action::Put(s) => {
                let n = st.used.writes + 1;
                let (key, value) = write_kv(n);
                let role = st.server(s)?.role();
                let replies =
                    self.command(&mut st, s, RequestId::from(n), Command::Put { key, value });
                let refused = replies
                    .iter()
                    .any(|(r, res)| *r == RequestId::from(n) && res.is_err());
                if matches!(role, Role::Standby | Role::Zombie) && !refused {
                    st.hist_mut()
                        .violations
                        .push(Violation::RoleGate { server: s, role });
                }
                if !self.changed(last, &st, s) {
                    return None;
                }
                st.used.writes = n;
            }
            Action::Promote(s, force) => {
                let req = if force {
                    REQ_PROMOTE_PLANNED
                } else {
                    REQ_PROMOTE_DISASTER
                };
                self.command(&mut st, s, req, Command::Promote { force });
                if !self.changed(last, &st, s) {
                    return None;
                }
                st.used.promotions += 1;
            }
            Action::Rejoin(s) => {
                self.command(&mut st, s, REQ_OTHER, Command::Rejoin);
                if !self.changed(last, &st, s) {
                    return None;
                }
                st.used.rejoins += 1;
            }
            Action::Prepare(s) => {
                self.command(&mut st, s, REQ_OTHER, Command::PrepareForStandby);
                if !self.changed(last, &st, s) {
                    return None;
                }
                st.used.prepares += 1;
            }
            Action::Configure(s) => {
                let (b, token) = st.token?;
                let info = server_info(b);
                let cmd = Command::ConfigureActive {
                    standby_address: info.peer_address,
                    standby_uuid: info.uuid,
                    pairing_token: token,
                };
                self.command(&mut st, s, REQ_OTHER, cmd);
                if !self.changed(last, &st, s) {
                    return None;
                }
                st.used.configures += 1;
            }
            Action::Forge(s, f) => {
                let m = hostile::forge(st.server(s)?, s, f)?;
                self.feed_server(&mut st, s, Some(hostile::input(m)));
                let untouched = last.servers == st.servers
                    && last.net == st.net
                    && last.hist.violations == st.hist.violations;
                if untouched && last.hist == st.hist {
                    return None;
                }
                if !untouched {
                    st.used.forgeries += 1;
                }
            }
        }
        self.note_epochs(&mut st);
        Some(st)
    }

    /// Whether an operator command changed anything (a refused command is a no-op).
    fn changed(&self, last: &State, now: &State, s: ServerIx) -> bool {
        let i = usize::from(s);
        last.servers[i] != now.servers[i]
            || last.hist.violations.len() != now.hist.violations.len()
            || last.net != now.net
    }

    /// The enabled actions, in a fixed order.
    pub fn enabled(&self, st: &State, out: &mut Vec<Action>) {
        let c = &self.cfg;
        for (i, env) in st.net.iter().enumerate() {
            if self.deliverable(st, env) {
                out.push(Action::Deliver(i));
            }
            if c.net.lossy {
                out.push(Action::Drop(i));
            }
        }
        for s in 0..2u8 {
            let node = &st.servers[usize::from(s)];
            match &node.server {
                Some(srv) => {
                    for &t in &node.timers {
                        if t != Timer::PeerTick || c.peer_ticks.is_none_or(|b| node.ticks < b) {
                            out.push(Action::Timer(s, t));
                        }
                    }
                    if !node.pending.is_empty() {
                        out.push(Action::Flush(s));
                    }
                    if st.used.crashes < c.crashes {
                        out.push(Action::Crash(s));
                    }
                    if st.used.writes < c.writes {
                        out.push(Action::Put(s));
                    }
                    let role = srv.role();
                    if st.used.promotions < c.promotions && role == Role::Standby {
                        if c.disaster {
                            out.push(Action::Promote(s, false));
                        }
                        if c.planned {
                            out.push(Action::Promote(s, true));
                        }
                    }
                    if st.used.rejoins < c.rejoins && role == Role::Zombie {
                        out.push(Action::Rejoin(s));
                    }
                    if role == Role::Standalone {
                        if st.used.prepares < c.pairings {
                            out.push(Action::Prepare(s));
                        }
                        if st.used.configures < c.pairings && st.token.is_some_and(|(b, _)| b != s)
                        {
                            out.push(Action::Configure(s));
                        }
                    }
                }
                None => out.push(Action::Restart(s)),
            }
        }
        for e in 0..c.edges {
            let n = &st.edges[usize::from(e)];
            if n.armed && c.edge_ticks.is_none_or(|b| n.ticks < b) {
                out.push(Action::EdgeTick(e));
            }
            if n.samples < c.samples {
                out.push(Action::Sample(e));
            }
        }
        if st.used.forgeries < c.forgeries {
            for (s, _) in st.up() {
                out.extend(c.forge_menu.iter().map(|f| Action::Forge(s, f)));
            }
        }
        for l in c.links() {
            let allowed = c.net.cut_scope == CutScope::All || l == Link::Peer;
            if st.cut.contains(&l) {
                out.push(Action::Heal(l));
            } else if allowed && st.used.cuts < c.cuts {
                out.push(Action::Cut(l));
            }
        }
    }

    /// The bounds of the exploration (see [`ModelCfg`]).
    pub fn in_bounds(&self, st: &State) -> bool {
        let c = &self.cfg;
        st.servers
            .iter()
            .all(|n| n.last_seq <= c.max_persist_seq && n.pending.len() <= c.max_pending)
    }
}

impl stateright::Model for DrModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![self.initial()]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        self.enabled(state, actions)
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        self.step(last, &action)
    }

    fn properties(&self) -> Vec<stateright::Property<Self>> {
        crate::properties::for_config(&self.cfg)
    }

    fn within_boundary(&self, state: &State) -> bool {
        self.in_bounds(state)
    }

    fn format_action(&self, action: &Action) -> String {
        crate::report::describe_action_plain(action)
    }
}

impl ModelCfg {
    /// The deeper configuration documented in the README: lossy network, any
    /// link may be cut, two writes, two promotions, a rejoin, samples.
    pub fn deep() -> Self {
        ModelCfg {
            edges: 2,
            net: NetCfg {
                duplicating: true,
                edge_link_once: true,
                lossy: true,
                cut_scope: CutScope::All,
            },
            durability: Durability::Async,
            writes: 2,
            promotions: 2,
            rejoins: 1,
            crashes: 1,
            samples: 1,
            ..ModelCfg::ci()
        }
    }
}

/// The configuration a mutant run uses: `base`, with what the mutant needs to
/// show (an edge for `follow-zombie`, a promotion for the promotion mutants,
/// the hostile actor with its peer-link forgeries for `trust-envelope-from`
/// and its heartbeat views for `unproven-epoch`, unless `base` already
/// offers some of that kind: `--forge append-ack` stays what it says).
pub fn mutant_cfg(m: Mutant, base: &ModelCfg) -> ModelCfg {
    let mut c = base.clone();
    c.mutant = m;
    match m {
        Mutant::FollowZombie => {
            c.edges = c.edges.max(1);
            c.edge_ticks = Some(1);
        }
        Mutant::PromoteWithoutCatchup => {
            c.planned = true;
            c.promotions = c.promotions.max(1);
            c.writes = c.writes.max(1);
        }
        Mutant::AckBeforeStandby | Mutant::NoEpochFencing => {
            c.promotions = c.promotions.max(1);
            c.writes = c.writes.max(1);
        }
        Mutant::StandbyServesConfig => c.writes = c.writes.max(1),
        // What these two let in is the hostile actor (see `crate::hostile`).
        Mutant::TrustEnvelopeFrom => {
            c.forgeries = c.forgeries.max(1);
            if !c.forge_menu.iter().any(|f| f.channel() == Channel::Peer) {
                c.forge_menu = c.forge_menu.with(Menu::peer());
            }
            c.promotions = c.promotions.max(1);
            c.writes = c.writes.max(1);
        }
        Mutant::UnprovenEpoch => {
            c.forgeries = c.forgeries.max(1);
            if !c.forge_menu.iter().any(|f| f.channel() == Channel::Edge) {
                c.forge_menu = c.forge_menu.with(Menu::edge());
            }
        }
        // Only a standby that catches up by snapshot after samples were
        // acknowledged without it has samples to copy: the `samples` start.
        Mutant::NoSampleCopy => {
            c = ModelCfg {
                mutant: m,
                ..ModelCfg::ci_samples()
            }
        }
        // A restarted active reusing indexes needs entries shipped but not
        // durable (an asynchronous disk), a crash of the active, and a
        // write before and after it.
        Mutant::ReuseIndexAfterRestart => {
            c.durability = Durability::Async;
            c.crashes = c.crashes.max(1);
            c.writes = c.writes.max(2);
        }
        Mutant::None => {}
    }
    c
}
