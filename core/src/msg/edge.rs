//! Edge and gateway ↔ server messages on the edge link (SPEC §5).

use crate::proof::EpochProof;
use crate::types::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// An edge's view of one server (SPEC §5).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ViewEntry {
    /// The server's edge address, as configured on the edge.
    pub address: String,
    /// Role in the server's last reply (`None`: never answered).
    pub role: Option<Role>,
    pub epoch: Epoch,
    pub pair_id: Option<PairId>,
    /// Edge-local monotonic milliseconds of the last reply.
    pub last_response_ms: Option<Millis>,
}

/// DR heartbeat, sent by every edge and gateway to both servers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Heartbeat {
    pub client_id: ClientId,
    pub client_type: ClientType,
    /// Heartbeat number, echoed in the reply.
    pub seq: u64,
    pub view: [ViewEntry; 2],
    /// Edge address of the server followed, if any.
    pub following: Option<String>,
    pub config_epoch: Epoch,
    pub config_version: Index,
    pub cached_samples: u64,
    pub dropped_samples: u64,
    /// The highest epoch proof the edge holds (relayed from a server's
    /// reply): the only thing in a heartbeat that can fence a server.
    pub proof: Option<Arc<EpochProof>>,
}

/// Edge/gateway → server.
// Heartbeats dominate the traffic; keeping them inline avoids an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EdgeMsg {
    Heartbeat(Heartbeat),
    /// Pull configuration if it differs from `(have_epoch, have_version)`.
    ConfigPull {
        have_epoch: Epoch,
        have_version: Index,
    },
    /// Monitoring samples, in sequence order.
    Monitoring {
        samples: Vec<Sample>,
    },
}

/// How a message crosses the edge link (SPEC §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// A QUIC datagram: no head-of-line blocking behind retransmits, and a
    /// lost one is a missed heartbeat, not a broken link.
    Datagram,
    /// A QUIC stream: reliable, for what must arrive whole.
    Stream,
}

impl EdgeMsg {
    /// How this message is sent: the one place that chooses datagram or
    /// stream. A heartbeat goes as a datagram (its reply comes back the same
    /// way, when it fits); everything else on a stream.
    pub fn delivery(&self) -> Delivery {
        match self {
            EdgeMsg::Heartbeat(_) => Delivery::Datagram,
            EdgeMsg::ConfigPull { .. } | EdgeMsg::Monitoring { .. } => Delivery::Stream,
        }
    }
}

/// Reply to a heartbeat (SPEC §5).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub seq: u64,
    pub role: Role,
    pub dr_state: DrState,
    pub epoch: Epoch,
    pub pair_id: Option<PairId>,
    /// Edge address of the server this one believes is active.
    pub active_address: Option<String>,
    /// Set by a zombie: where edges should go (to be confirmed by that server).
    pub redirect: Option<String>,
    /// Committed configuration version (log index) on this server.
    pub config_version: Index,
    /// The highest epoch proof this server holds for its pair: its own, or
    /// the one that fenced it. Edges keep the highest and relay it.
    pub proof: Option<Arc<EpochProof>>,
}

/// Server → edge/gateway.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ServerMsg {
    HeartbeatReply(HeartbeatReply),
    /// The whole configuration at `(epoch, version)`.
    Config {
        epoch: Epoch,
        version: Index,
        docs: Vec<(String, Doc)>,
    },
    /// Samples up to `up_to_seq` are durable (on both servers unless degraded).
    MonitoringAck {
        epoch: Epoch,
        up_to_seq: u64,
    },
    /// The request was refused in this role; `redirect` names where to go.
    Refused {
        role: Role,
        epoch: Epoch,
        redirect: Option<String>,
        reason: String,
    },
}
