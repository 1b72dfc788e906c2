//! A deterministic in-memory world for `vcodr-core`: two servers and some
//! edges on a virtual clock that jumps to the next event, with seeded message
//! loss, duplication, delay (hence reordering) and partitions, asynchronous
//! group-committed durability, and crash/restart of a server from exactly what
//! its [`MemStore`] holds. Every message goes through the wire codec.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use vcodr_core::codec::{decode_frame, encode_frame, DEFAULT_MAX_FRAME_BYTES};
use vcodr_core::rng::Rng;
use vcodr_core::*;

/// One end of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    Server(usize),
    Edge(usize),
}

/// Message faults, in percent, and delivery delay bounds.
#[derive(Clone, Debug)]
pub struct Faults {
    pub drop_pct: u64,
    pub dup_pct: u64,
    pub min_delay_ms: u64,
    pub max_delay_ms: u64,
}

impl Faults {
    pub fn none() -> Self {
        Faults {
            drop_pct: 0,
            dup_pct: 0,
            min_delay_ms: 1,
            max_delay_ms: 1,
        }
    }
    pub fn lossy() -> Self {
        Faults {
            drop_pct: 5,
            dup_pct: 5,
            min_delay_ms: 1,
            max_delay_ms: 20,
        }
    }
}

#[derive(Clone, Debug)]
enum Payload {
    Peer(Vec<u8>),
    ToServer { edge: usize, frame: Vec<u8> },
    ToEdge { server: usize, frame: Vec<u8> },
}

#[derive(Clone, Debug)]
struct InFlight {
    at_ms: u64,
    order: u64,
    from: Node,
    to: Node,
    payload: Payload,
}

/// A server, its durable store and what the driver keeps for it.
pub struct ServerNode {
    pub info: ServerInfo,
    pub cfg: ServerConfig,
    /// `None` while crashed.
    pub server: Option<Server>,
    pub store: MemStore,
    timers: BTreeMap<Timer, u64>,
    /// Persist requests not yet durable.
    unflushed: Vec<(PersistSeq, Vec<PersistOp>)>,
    /// Sample reads asked for, answered after the persists before them
    /// (at the next flush, as the server's storage thread orders them).
    reads: Vec<(Vec<SampleRange>, usize, usize)>,
    flush_at_ms: Option<u64>,
    /// Command results by request id.
    pub replies: BTreeMap<RequestId, Result<Reply, CommandError>>,
    /// Epoch and "degraded" of the server when it produced each reply.
    pub reply_context: BTreeMap<RequestId, (Epoch, bool)>,
    pub events: Vec<Event>,
}

impl ServerNode {
    pub fn s(&self) -> &Server {
        self.server.as_ref().expect("server is running")
    }
}

/// An edge, as the driver sees it.
pub struct EdgeNode {
    pub edge: Edge,
    timer_at_ms: Option<u64>,
    pub events: Vec<EdgeEvent>,
    /// Configuration versions applied, in order: `(epoch, version)`.
    pub applied: Vec<(Epoch, Index)>,
    /// Highest epoch seen by the edge when each configuration was applied.
    pub seen_when_applied: Vec<Epoch>,
    next_payload: u64,
}

pub struct Sim {
    pub seed: u64,
    rng: Rng,
    pub now_ms: u64,
    pub servers: Vec<ServerNode>,
    pub edges: Vec<EdgeNode>,
    net: Vec<InFlight>,
    order: u64,
    pub faults: Faults,
    /// Cut links (both directions), as ordered pairs.
    cut: BTreeSet<(Node, Node)>,
    pub persist_latency_ms: u64,
    next_req: RequestId,
    /// Requests whose reply is awaited, by server.
    pub trace: bool,
    /// Replies to the hostile edge of [`Sim::forge_heartbeat`].
    forged_replies: Vec<ServerMsg>,
    /// Every address a server sent a peer message to (dialled).
    pub dialled: BTreeSet<String>,
}

/// `reply_to` and link id of the hostile sender in [`Sim::forge_peer`] and
/// [`Sim::forge_heartbeat`].
pub const FORGER: u64 = u64::MAX;

pub fn info(i: usize) -> ServerInfo {
    let n = ["a", "b"][i];
    ServerInfo {
        uuid: 0xA0 + i as u128,
        name: n.into(),
        peer_address: format!("{n}:7443"),
        edge_address: format!("{n}:7444"),
        admin_address: format!("{n}:8443"),
    }
}

/// The stand-in keys of server `i` (see `vcodr_core::testing`).
pub fn keys(i: usize) -> Keys {
    vcodr_core::testing::TestKeys::keys(&info(i).name)
}

/// The identity TLS proves for server `i`.
pub fn identity(i: usize) -> PeerIdentity {
    vcodr_core::testing::identity(&info(i).name)
}

/// Server settings scaled for simulations: 100 ms ticks, 2 s grace.
pub fn sim_server_config(policy: OnStandbyLoss, seed: u64) -> ServerConfig {
    ServerConfig {
        peer_heartbeat_interval_ms: 100,
        peer_failure_threshold: 3,
        standby_grace_ms: 2_000,
        on_standby_loss: policy,
        max_batch_entries: 64,
        log_window_entries: 256,
        seed,
        ..ServerConfig::default()
    }
}

impl Sim {
    pub fn new(seed: u64, policy: OnStandbyLoss, edges: usize) -> Self {
        let mut sim = Sim {
            seed,
            rng: Rng::new(seed),
            now_ms: 0,
            servers: Vec::new(),
            edges: Vec::new(),
            net: Vec::new(),
            order: 0,
            faults: Faults::none(),
            cut: BTreeSet::new(),
            persist_latency_ms: 2,
            next_req: 1,
            trace: std::env::var_os("VCODR_SIM_TRACE").is_some(),
            forged_replies: Vec::new(),
            dialled: BTreeSet::new(),
        };
        for i in 0..2 {
            let cfg = sim_server_config(policy, seed.wrapping_add(i as u64));
            let s = Server::new(cfg.clone(), info(i), Now::at(0)).with_keys(keys(i));
            sim.servers.push(ServerNode {
                info: info(i),
                cfg,
                server: Some(s),
                store: MemStore::new(1000),
                timers: BTreeMap::new(),
                unflushed: Vec::new(),
                reads: Vec::new(),
                flush_at_ms: None,
                replies: BTreeMap::new(),
                reply_context: BTreeMap::new(),
                events: Vec::new(),
            });
            sim.drain_server(i);
        }
        for j in 0..edges {
            let mut cfg = EdgeConfig::new(
                format!("edge-{j}"),
                if j % 4 == 3 {
                    ClientType::Gateway
                } else {
                    ClientType::Edge
                },
                [info(0).edge_address, info(1).edge_address],
            );
            cfg.heartbeat_interval_ms = 500;
            cfg.cache_max_bytes = 64 * 1024;
            cfg.batch_max_samples = 16;
            cfg.seed = seed ^ ((j as u64 + 1) * 0x9E37);
            let edge = Edge::new(cfg, 0);
            sim.edges.push(EdgeNode {
                edge,
                timer_at_ms: None,
                events: Vec::new(),
                applied: Vec::new(),
                seen_when_applied: Vec::new(),
                next_payload: 0,
            });
            sim.drain_edge(j);
        }
        sim
    }

    // ------------------------------------------------------------ operator

    pub fn command(&mut self, server: usize, cmd: Command) -> RequestId {
        let req = self.next_req;
        self.next_req += 1;
        let now = self.now();
        if let Some(s) = self.servers[server].server.as_mut() {
            s.handle_input(now, Input::Command { req, cmd });
        }
        self.drain_server(server);
        req
    }

    /// Runs until request `req` on `server` has a result (or `max_ms` passes).
    pub fn call(
        &mut self,
        server: usize,
        cmd: Command,
        max_ms: u64,
    ) -> Result<Reply, CommandError> {
        let what = format!("{cmd:?}");
        let req = self.command(server, cmd);
        let ok = self.run_until(max_ms, |sim| sim.servers[server].replies.contains_key(&req));
        assert!(
            ok,
            "seed {}: no reply to {what} on server {server} within {max_ms} ms",
            self.seed
        );
        self.servers[server].replies[&req].clone()
    }

    pub fn reply(&self, server: usize, req: RequestId) -> Option<&Result<Reply, CommandError>> {
        self.servers[server].replies.get(&req)
    }

    /// Sets up DR: `active` pairs with `standby`, then both reach STANDBY_RUNNING.
    pub fn pair(&mut self, active: usize, standby: usize) {
        let Ok(Reply::Prepared {
            vco_uuid,
            pairing_token,
        }) = self.call(standby, Command::PrepareForStandby, 1_000)
        else {
            panic!("seed {}: prepareForStandby failed", self.seed)
        };
        let standby_address = self.servers[standby].info.peer_address.clone();
        let r = self.call(
            active,
            Command::ConfigureActive {
                standby_address,
                standby_uuid: vco_uuid,
                pairing_token,
            },
            1_000,
        );
        assert!(
            matches!(r, Ok(Reply::Configured { .. })),
            "seed {}: configure failed: {r:?}",
            self.seed
        );
        let ok = self.run_until(30_000, |sim| {
            sim.is(active, Role::Active, DrState::StandbyRunning)
                && sim.is(standby, Role::Standby, DrState::StandbyRunning)
        });
        assert!(
            ok,
            "seed {}: pair did not reach STANDBY_RUNNING: {}",
            self.seed,
            self.describe()
        );
    }

    pub fn is(&self, i: usize, role: Role, st: DrState) -> bool {
        self.servers[i]
            .server
            .as_ref()
            .is_some_and(|s| s.role() == role && s.dr_state() == st)
    }

    pub fn describe(&self) -> String {
        let mut out = format!("t={}ms", self.now_ms);
        for n in &self.servers {
            match &n.server {
                Some(s) => {
                    let st = s.status();
                    out += &format!(
                        " | {}: {}/{} epoch {} last {} commit {} acked {:?}",
                        n.info.name,
                        st.role,
                        st.dr_state,
                        st.epoch,
                        st.last_index,
                        st.commit_index,
                        st.standby_acked_index
                    )
                }
                None => out += &format!(" | {}: crashed", n.info.name),
            }
        }
        out
    }

    // ------------------------------------------------------------ faults

    pub fn cut(&mut self, a: Node, b: Node) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    pub fn heal(&mut self, a: Node, b: Node) {
        self.cut.remove(&(a, b));
        self.cut.remove(&(b, a));
    }

    pub fn heal_all(&mut self) {
        self.cut.clear();
    }

    /// Cuts a server off from everyone.
    pub fn isolate(&mut self, i: usize) {
        let me = Node::Server(i);
        self.cut(me, Node::Server(1 - i));
        for j in 0..self.edges.len() {
            self.cut(me, Node::Edge(j));
        }
    }

    /// Crash: the server loses everything not yet durable.
    pub fn crash(&mut self, i: usize) {
        let n = &mut self.servers[i];
        n.server = None;
        n.timers.clear();
        n.unflushed.clear();
        n.reads.clear();
        n.flush_at_ms = None;
    }

    /// Restart from the durable store.
    pub fn restart(&mut self, i: usize) {
        let now = self.now();
        let n = &mut self.servers[i];
        assert!(n.server.is_none(), "restart of a running server");
        n.server = Some(
            Server::restore(n.cfg.clone(), n.info.clone(), n.store.restored(), now)
                .with_keys(keys(i)),
        );
        self.drain_server(i);
    }

    /// Whether server `i` has no persist or read waiting for its disk.
    pub fn disk_idle(&self, i: usize) -> bool {
        self.servers[i].unflushed.is_empty() && self.servers[i].reads.is_empty()
    }

    /// Feeds `input` to server `i` now and carries out its outputs.
    pub fn input(&mut self, i: usize, input: Input) {
        let now = self.now();
        if let Some(s) = self.servers[i].server.as_mut() {
            s.handle_input(now, input);
        }
        self.drain_server(i);
    }

    pub fn sample(&mut self, j: usize) {
        let e = &mut self.edges[j];
        e.next_payload += 1;
        let payload = format!("edge-{j}/sample-{}", e.next_payload).into_bytes();
        let now = self.now_ms;
        e.edge.handle_input(now, EdgeInput::Sample { payload });
        self.drain_edge(j);
    }

    // ------------------------------------------------------------ the loop

    fn now(&self) -> Now {
        Now::at(self.now_ms)
    }

    fn send(&mut self, from: Node, to: Node, payload: Payload) {
        if self.cut.contains(&(from, to)) {
            return;
        }
        // A message storm is a bug: name what is flooding.
        if self.net.len() > 100_000 {
            let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
            for m in &self.net {
                let k = match &m.payload {
                    Payload::Peer(f) => decode_frame::<PeerEnvelope>(f, DEFAULT_MAX_FRAME_BYTES)
                        .map(|(e, _)| format!("{:?}->{:?} {}", m.from, m.to, e.body.kind()))
                        .unwrap_or_default(),
                    Payload::ToServer { .. } => "edge->server".into(),
                    Payload::ToEdge { .. } => "server->edge".into(),
                };
                *kinds.entry(k).or_default() += 1;
            }
            let hist: Vec<String> = self
                .servers
                .iter()
                .map(|n| {
                    n.store
                        .history
                        .iter()
                        .rev()
                        .take(12)
                        .rev()
                        .map(|t| {
                            format!(
                                "{}@{} {}->{} e{} {}",
                                n.info.name, t.timestamp_ms, t.from, t.to, t.epoch, t.reason
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .collect();
            panic!(
                "seed {}: message storm at {}: {kinds:?} | {}\n{}",
                self.seed,
                self.now_ms,
                self.describe(),
                hist.join("\n---\n")
            );
        }
        if self.rng.range(0, 99) < self.faults.drop_pct {
            return;
        }
        let copies = if self.rng.range(0, 99) < self.faults.dup_pct {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at_ms = self.now_ms
                + self
                    .rng
                    .range(self.faults.min_delay_ms, self.faults.max_delay_ms);
            self.order += 1;
            self.net.push(InFlight {
                at_ms,
                order: self.order,
                from,
                to,
                payload: payload.clone(),
            });
        }
    }

    fn drain_server(&mut self, i: usize) {
        loop {
            let Some(out) = self.servers[i]
                .server
                .as_mut()
                .and_then(|s| s.poll_output())
            else {
                return;
            };
            if self.trace {
                eprintln!(
                    "[{} ms] {} -> {out:?}",
                    self.now_ms, self.servers[i].info.name
                );
            }
            match out {
                Output::SendPeer { to, msg } => {
                    self.dialled.insert(to.clone());
                    let Some(j) = self.servers.iter().position(|n| n.info.peer_address == to)
                    else {
                        continue;
                    };
                    let frame = encode_frame(&msg, DEFAULT_MAX_FRAME_BYTES)
                        .expect("peer message fits a frame");
                    self.send(Node::Server(i), Node::Server(j), Payload::Peer(frame));
                }
                Output::ReplyPeer { link, msg } => {
                    // Links are numbered by the sending server; a hostile sender's is gone.
                    let j = link as usize;
                    if j < self.servers.len() && j != i {
                        let frame = encode_frame(&msg, DEFAULT_MAX_FRAME_BYTES)
                            .expect("peer message fits a frame");
                        self.send(Node::Server(i), Node::Server(j), Payload::Peer(frame));
                    }
                }
                Output::ReplyEdge { reply_to, msg } if reply_to == FORGER => {
                    self.forged_replies.push(msg);
                }
                Output::ReplyEdge { reply_to, msg } => {
                    let frame = encode_frame(&msg, DEFAULT_MAX_FRAME_BYTES)
                        .expect("edge reply fits a frame");
                    self.send(
                        Node::Server(i),
                        Node::Edge(reply_to as usize),
                        Payload::ToEdge { server: i, frame },
                    );
                }
                Output::Persist { seq, ops } => {
                    let n = &mut self.servers[i];
                    n.unflushed.push((seq, ops));
                    if n.flush_at_ms.is_none() {
                        n.flush_at_ms = Some(self.now_ms + self.persist_latency_ms);
                    }
                }
                Output::ReadSamples {
                    ranges,
                    max_bytes,
                    max_samples,
                } => {
                    let n = &mut self.servers[i];
                    n.reads.push((ranges, max_bytes, max_samples));
                    if n.flush_at_ms.is_none() {
                        n.flush_at_ms = Some(self.now_ms + self.persist_latency_ms);
                    }
                }
                Output::SetTimer { timer, after_ms } => {
                    self.servers[i].timers.insert(timer, self.now_ms + after_ms);
                }
                Output::CancelTimer(timer) => {
                    self.servers[i].timers.remove(&timer);
                }
                Output::Reply { req, result } => {
                    let n = &mut self.servers[i];
                    let ctx = n
                        .server
                        .as_ref()
                        .map_or((0, false), |s| (s.epoch(), s.status().degraded));
                    n.reply_context.insert(req, ctx);
                    n.replies.insert(req, result);
                }
                Output::Event(e) => self.servers[i].events.push(e),
            }
        }
    }

    fn drain_edge(&mut self, j: usize) {
        for out in vcodr_core::testing::drain_edge(&mut self.edges[j].edge) {
            match out {
                EdgeOutput::Send { server, msg, .. } => {
                    let frame = encode_frame(&msg, DEFAULT_MAX_FRAME_BYTES)
                        .expect("edge message fits a frame");
                    self.send(
                        Node::Edge(j),
                        Node::Server(server),
                        Payload::ToServer { edge: j, frame },
                    );
                }
                EdgeOutput::SetTimer { after_ms, .. } => {
                    self.edges[j].timer_at_ms = Some(self.now_ms + after_ms)
                }
                EdgeOutput::Event(e) => {
                    if let EdgeEvent::ConfigApplied { epoch, version, .. } = &e {
                        let seen = self.edges[j].edge.max_epoch_seen();
                        self.edges[j].applied.push((*epoch, *version));
                        self.edges[j].seen_when_applied.push(seen);
                    }
                    self.edges[j].events.push(e);
                }
            }
        }
    }

    fn next_event_ms(&self) -> Option<u64> {
        let net = self.net.iter().map(|m| m.at_ms).min();
        let timers = self
            .servers
            .iter()
            .filter(|n| n.server.is_some())
            .flat_map(|n| n.timers.values().copied())
            .min();
        let flush = self.servers.iter().filter_map(|n| n.flush_at_ms).min();
        let edges = self.edges.iter().filter_map(|e| e.timer_at_ms).min();
        [net, timers, flush, edges].into_iter().flatten().min()
    }

    /// Processes everything due at the next event time.
    pub fn step(&mut self) -> bool {
        let Some(t) = self.next_event_ms() else {
            return false;
        };
        self.now_ms = self.now_ms.max(t);
        let now = self.now();
        // Durability first: a group commit of every pending persist.
        for i in 0..self.servers.len() {
            if self.servers[i]
                .flush_at_ms
                .is_some_and(|f| f <= self.now_ms)
            {
                let n = &mut self.servers[i];
                n.flush_at_ms = None;
                let batch = std::mem::take(&mut n.unflushed);
                let reads = std::mem::take(&mut n.reads);
                for (_, ops) in &batch {
                    n.store.apply(ops);
                }
                if let Some(up_to) = batch.last().map(|(s, _)| *s) {
                    if let Some(s) = n.server.as_mut() {
                        s.handle_input(now, Input::Persisted { up_to });
                    }
                    self.drain_server(i);
                }
                for (ranges, max_bytes, max_samples) in reads {
                    let n = &mut self.servers[i];
                    let chunks = n.store.read_samples(&ranges, max_bytes, max_samples);
                    if let Some(s) = n.server.as_mut() {
                        s.handle_input(now, Input::SamplesRead { chunks });
                    }
                    self.drain_server(i);
                }
            }
        }
        // Messages due, in send order.
        let mut due: Vec<InFlight> = Vec::new();
        self.net.retain(|m| {
            if m.at_ms <= t {
                due.push(m.clone());
                false
            } else {
                true
            }
        });
        due.sort_by_key(|m| (m.at_ms, m.order));
        for m in due {
            self.deliver(m);
        }
        for i in 0..self.servers.len() {
            let fired: Vec<Timer> = self.servers[i]
                .timers
                .iter()
                .filter(|(_, &at)| at <= t)
                .map(|(k, _)| *k)
                .collect();
            for timer in fired {
                self.servers[i].timers.remove(&timer);
                if let Some(s) = self.servers[i].server.as_mut() {
                    s.handle_input(now, Input::Timeout(timer));
                }
                self.drain_server(i);
            }
        }
        for j in 0..self.edges.len() {
            if self.edges[j].timer_at_ms.is_some_and(|at| at <= t) {
                self.edges[j].timer_at_ms = None;
                self.edges[j]
                    .edge
                    .handle_input(t, EdgeInput::Timeout(EdgeTimer::Heartbeat));
                self.drain_edge(j);
            }
        }
        true
    }

    fn deliver(&mut self, m: InFlight) {
        if self.cut.contains(&(m.from, m.to)) {
            return;
        }
        let now = self.now();
        match (m.to, m.payload) {
            (Node::Server(i), Payload::Peer(frame)) => {
                let (env, _) = decode_frame::<PeerEnvelope>(&frame, DEFAULT_MAX_FRAME_BYTES)
                    .expect("valid frame");
                let Node::Server(sender) = m.from else {
                    panic!("peer message from {:?}", m.from)
                };
                let input = Input::Peer {
                    link: sender as u64,
                    from: identity(sender),
                    env,
                };
                if let Some(s) = self.servers[i].server.as_mut() {
                    s.handle_input(now, input);
                }
                self.drain_server(i);
            }
            (Node::Server(i), Payload::ToServer { edge, frame }) => {
                let (msg, _) =
                    decode_frame::<EdgeMsg>(&frame, DEFAULT_MAX_FRAME_BYTES).expect("valid frame");
                let cfg = self.edges[edge].edge.config();
                let (client, client_type) = (cfg.client_id.clone(), cfg.client_type);
                if let Some(s) = self.servers[i].server.as_mut() {
                    s.handle_input(
                        now,
                        Input::Edge {
                            reply_to: edge as u64,
                            client,
                            client_type,
                            msg,
                        },
                    );
                }
                self.drain_server(i);
            }
            (Node::Edge(j), Payload::ToEdge { server, frame }) => {
                let (msg, _) = decode_frame::<ServerMsg>(&frame, DEFAULT_MAX_FRAME_BYTES)
                    .expect("valid frame");
                self.edges[j]
                    .edge
                    .handle_input(self.now_ms, EdgeInput::Reply { server, msg });
                self.drain_edge(j);
            }
            (to, _) => panic!("misrouted message to {to:?}"),
        }
    }

    /// A hostile sender (`from`, a certificate of our CA but not the peer)
    /// delivers `env` to server `to` at once; its answers are lost.
    pub fn forge_peer(&mut self, to: usize, from: PeerIdentity, env: PeerEnvelope) {
        let now = self.now();
        if let Some(s) = self.servers[to].server.as_mut() {
            s.handle_input(
                now,
                Input::Peer {
                    link: FORGER,
                    from,
                    env,
                },
            );
        }
        self.drain_server(to);
    }

    /// A hostile edge (its own certificate, `client`) sends a heartbeat to
    /// server `to`; returns the server's reply.
    pub fn forge_heartbeat(&mut self, to: usize, client: &str, hb: Heartbeat) -> Option<ServerMsg> {
        let now = self.now();
        let reply_to = FORGER;
        if let Some(s) = self.servers[to].server.as_mut() {
            s.handle_input(
                now,
                Input::Edge {
                    reply_to,
                    client: client.to_string(),
                    client_type: ClientType::Edge,
                    msg: EdgeMsg::Heartbeat(hb),
                },
            );
        }
        self.drain_server(to);
        self.forged_replies.pop()
    }

    /// Runs until `cond` holds; false if `max_ms` of virtual time passed first.
    pub fn run_until(&mut self, max_ms: u64, mut cond: impl FnMut(&Sim) -> bool) -> bool {
        let deadline = self.now_ms + max_ms;
        loop {
            if cond(self) {
                return true;
            }
            if self.next_event_ms().is_none_or(|t| t > deadline) {
                self.now_ms = self.now_ms.max(deadline);
                return cond(self);
            }
            self.step();
        }
    }

    /// Runs for `ms` of virtual time.
    pub fn run_for(&mut self, ms: u64) {
        let deadline = self.now_ms + ms;
        self.run_until(ms, |sim| sim.now_ms >= deadline);
    }

    /// Edge addresses followed by each edge.
    pub fn following(&self) -> Vec<Option<String>> {
        self.edges
            .iter()
            .map(|e| e.edge.following_address().map(str::to_string))
            .collect()
    }

    /// Whether every edge follows the server at edge address `addr`.
    pub fn all_follow(&self, addr: &str) -> bool {
        self.edges
            .iter()
            .all(|e| e.edge.following_address() == Some(addr))
    }
}

/// Runs `f` for each seed, printing the seed of a failure.
pub fn for_seeds(seeds: std::ops::Range<u64>, f: impl Fn(u64) + std::panic::RefUnwindSafe) {
    for seed in seeds {
        if let Err(e) = std::panic::catch_unwind(|| f(seed)) {
            eprintln!("FAILED with seed {seed} (rerun: VCODR_SEED={seed})");
            std::panic::resume_unwind(e);
        }
    }
}

/// The seed range to run: `VCODR_SEED` pins one seed, `VCODR_SEEDS=N` runs N
/// seeds from the default start (for long bug hunts).
pub fn seeds(default: std::ops::Range<u64>) -> std::ops::Range<u64> {
    if let Some(s) = std::env::var("VCODR_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return s..s + 1;
    }
    match std::env::var("VCODR_SEEDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        Some(n) => default.start..default.start + n,
        None => default,
    }
}
