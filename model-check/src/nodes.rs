//! The actor adapters: a [`Server`] or [`Edge`] of `vcodr-core` plus what its
//! I/O layer would hold (durable store, unflushed persist requests, armed
//! timers). They feed inputs to the core and hand every output to the model;
//! they make no protocol decision of their own.

use std::collections::BTreeSet;
use vcodr_core::*;

/// Time never moves in the model: every timing decision of the core is driven
/// by timer inputs, which fire nondeterministically, never by comparing `now`.
pub const NOW: Now = Now {
    mono_ms: 0,
    wall_ms: 0,
};

/// Index of a server in the model (0 = "a", 1 = "b").
pub type ServerIx = u8;
/// Index of an edge in the model.
pub type EdgeIx = u8;

/// Identity of server `s` as its peers, edges and operators know it.
pub fn server_info(s: ServerIx) -> ServerInfo {
    let name = server_name(s);
    ServerInfo {
        uuid: 0xA + u128::from(s),
        name: name.to_string(),
        peer_address: format!("{name}:7443"),
        edge_address: format!("{name}:7444"),
        admin_address: format!("{name}:8443"),
    }
}

/// The identity TLS proves for server `s` (stand-in key, see `vcodr_core::testing`).
pub fn server_identity(s: ServerIx) -> PeerIdentity {
    vcodr_core::testing::identity(server_name(s))
}

/// The keys of server `s`: it signs its epoch proofs with them.
pub fn server_keys(s: ServerIx) -> Keys {
    vcodr_core::testing::TestKeys::keys(server_name(s))
}

/// `a` or `b`.
pub fn server_name(s: ServerIx) -> &'static str {
    ["a", "b"][usize::from(s)]
}

/// The server whose peer address is `address`.
pub fn server_by_peer_address(address: &str) -> Option<ServerIx> {
    (0..2).find(|&s| server_info(s).peer_address == address)
}

/// One server and its I/O layer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerNode {
    /// The production state machine; `None` while crashed.
    pub server: Option<Server>,
    /// What survives a crash: the reference durable store of the core.
    pub store: MemStore,
    /// `Persist` requests handed to the disk and not yet durable, in `seq` order.
    /// A crash loses them.
    pub pending: Vec<(PersistSeq, Vec<PersistOp>)>,
    /// Armed timers; a crash disarms them.
    pub timers: BTreeSet<Timer>,
    /// Peer ticks fired so far (bounded: see `ModelCfg::peer_ticks`).
    pub ticks: u8,
    /// Highest persist sequence number seen (bounded: see `ModelCfg::max_persist_seq`).
    pub last_seq: PersistSeq,
}

/// One edge and its timer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EdgeNode {
    pub edge: Edge,
    /// Whether its heartbeat timer is armed.
    pub armed: bool,
    /// Samples produced so far (bounded: see `ModelCfg::samples`).
    pub samples: u8,
    /// Heartbeat timer firings so far (bounded: see `ModelCfg::edge_ticks`).
    pub ticks: u8,
}

/// Where a message goes or comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeId {
    Server(ServerIx),
    Edge(EdgeIx),
}

/// A message of either link.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Msg {
    Peer(PeerEnvelope),
    ToServer(EdgeMsg),
    ToEdge(ServerMsg),
}

/// A message in flight.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Envelope {
    pub src: NodeId,
    pub dst: NodeId,
    pub msg: Msg,
}

impl Envelope {
    /// The link this message travels on.
    pub fn link(&self) -> Link {
        match (self.src, self.dst) {
            (NodeId::Server(_), NodeId::Server(_)) => Link::Peer,
            (NodeId::Edge(e), NodeId::Server(s)) | (NodeId::Server(s), NodeId::Edge(e)) => {
                Link::Edge(e, s)
            }
            (NodeId::Edge(_), NodeId::Edge(_)) => unreachable!("edges never talk to edges"),
        }
    }
}

/// A network link that a partition can cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Link {
    /// Server a ↔ server b.
    Peer,
    /// Edge ↔ server.
    Edge(EdgeIx, ServerIx),
}

/// Messages in flight: an unordered set (a message sent twice is one element),
/// kept sorted by a fixed hash so that iteration, and so the order of
/// actions, is the same for equal states.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Net {
    msgs: Vec<(u64, Envelope)>,
}

fn stable_hash(e: &Envelope) -> u64 {
    use std::hash::{Hash, Hasher};
    // `DefaultHasher::new()` has fixed keys: the same on every run.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    e.hash(&mut h);
    h.finish()
}

impl Net {
    pub fn insert(&mut self, e: Envelope) {
        let h = stable_hash(&e);
        let from = self.msgs.partition_point(|(k, _)| *k < h);
        let mut i = from;
        while i < self.msgs.len() && self.msgs[i].0 == h {
            if self.msgs[i].1 == e {
                return;
            }
            i += 1;
        }
        self.msgs.insert(i, (h, e));
    }
    pub fn remove(&mut self, i: usize) -> Envelope {
        self.msgs.remove(i).1
    }
    pub fn get(&self, i: usize) -> Option<&Envelope> {
        self.msgs.get(i).map(|(_, e)| e)
    }
    pub fn len(&self) -> usize {
        self.msgs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Envelope> {
        self.msgs.iter().map(|(_, e)| e)
    }
    pub fn clear(&mut self) {
        self.msgs.clear();
    }
}
