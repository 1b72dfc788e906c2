//! Wire messages: server ↔ server (peer link) and edge ↔ server (edge link).
//!
//! Every message is a serde type encoded with postcard inside a frame (see
//! [`crate::codec`]). Every peer message and every heartbeat reply carries the
//! sender's epoch (SPEC §2).

use crate::proof::EpochProof;
use crate::types::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Policy when the standby is lost for longer than `standby_grace` (SPEC §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum OnStandbyLoss {
    /// Keep refusing writes: RPO stays 0.
    Block,
    /// Accept writes unprotected, counted and reported.
    #[default]
    Degrade,
}

impl OnStandbyLoss {
    /// The configuration spelling (`block`, `degrade`).
    pub fn as_str(self) -> &'static str {
        match self {
            OnStandbyLoss::Block => "block",
            OnStandbyLoss::Degrade => "degrade",
        }
    }
}

/// A consistent copy of a server's applied state at `index`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Snapshot {
    /// Last log index included.
    pub index: Index,
    /// Epoch of the entry at `index` (0 when `index` is 0).
    pub epoch: Epoch,
    /// Configuration documents.
    pub docs: BTreeMap<String, Doc>,
    /// Highest monitoring sample sequence stored per client.
    pub sample_seq: BTreeMap<ClientId, u64>,
    /// `(epoch, first index)` of each epoch begun at a promotion, oldest first.
    pub epoch_starts: Vec<(Epoch, Index)>,
    /// Index of the last entry that changed the documents (0: none): the
    /// configuration version edges pull by, so that monitoring samples,
    /// which also travel through the log, do not make every edge re-pull.
    pub config_index: Index,
}

/// Header of every peer message.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerEnvelope {
    /// Sender's `vcoUuid`, as the sender says: informational only. Who sent
    /// a message is what TLS proved ([`crate::Input::Peer`]'s `from`).
    pub from: ServerId,
    /// The pair this message belongs to (`None` before pairing).
    pub pair_id: Option<PairId>,
    /// Sender's epoch.
    pub epoch: Epoch,
    pub body: PeerMsg,
}

/// Server ↔ server messages on the peer link.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PeerMsg {
    /// Active → candidate: become my standby (configureActiveForReplication).
    Pair {
        token: u128,
        standby_uuid: ServerId,
        active: ServerInfo,
        policy: OnStandbyLoss,
    },
    /// Candidate → active: pairing accepted and durable on the standby.
    /// `token` echoes the pairing token: only the server the active sent its
    /// `Pair` to knows it, so the active pins whoever echoes it.
    PairAccepted { standby: ServerInfo, token: u128 },
    /// Would-be standby → would-be active (transitionToStandby with a blob).
    Join { token: u128, standby: ServerInfo },
    /// Either side: a request was refused; names why. A refusal of a pairing
    /// step echoes its token (`in_reply_to`), so that the server that sent
    /// it, having no pinned peer yet, can tell it from a forgery.
    Refused {
        reason: String,
        in_reply_to: Option<u128>,
    },
    /// Active → standby: one chunk of a snapshot; chunks are sent one at a time.
    SnapshotChunk {
        index: Index,
        snapshot_epoch: Epoch,
        chunk: u32,
        last: bool,
        docs: Vec<(String, Doc)>,
        sample_seq: Vec<(ClientId, u64)>,
        epoch_starts: Vec<(Epoch, Index)>,
        /// The snapshot's `config_index` (meaningful in the last chunk).
        config_index: Index,
    },
    /// Standby → active: chunk received (and, for the last one, installed durably).
    SnapshotAck { index: Index, chunk: u32 },
    /// Active → standby: entries after `(prev_index, prev_epoch)`; empty is the heartbeat.
    Append {
        prev_index: Index,
        prev_epoch: Epoch,
        entries: Vec<Entry>,
        commit_index: Index,
        /// The active's locally durable last index, so the standby knows it caught up.
        active_durable: Index,
    },
    /// Standby → active: the standby's log is durable up to `durable_index`
    /// (`ok == false`: the append did not fit; `durable_index` is a hint to resend from).
    AppendAck { durable_index: Index, ok: bool },
    /// Standby → active: stop taking writes and hand over (planned switchover).
    DemoteRequest { new_epoch: Epoch },
    /// Old active (now a durable zombie) → standby: everything up to `last_index`.
    DemoteGranted {
        new_epoch: Epoch,
        last_index: Index,
        last_epoch: Epoch,
    },
    /// Promoted server → old active: `epoch` exists and is held by `active`,
    /// which proves it.
    NewEpoch {
        active: ServerInfo,
        proof: Option<Arc<EpochProof>>,
    },
    /// Zombie → promoted server: fenced, stop telling me.
    ZombieAck,
    /// Zombie → promoted server: make me your standby.
    Rejoin {
        last_index: Index,
        last_epoch: Epoch,
        standby: ServerInfo,
    },
    /// Promoted server → zombie: keep your log up to `keep_index`, archive the rest.
    RejoinAccepted {
        keep_index: Index,
        active: ServerInfo,
    },
    /// Either side: DR removed (removeStandby).
    Unpair,
}

impl PeerMsg {
    /// Short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerMsg::Pair { .. } => "Pair",
            PeerMsg::PairAccepted { .. } => "PairAccepted",
            PeerMsg::Join { .. } => "Join",
            PeerMsg::Refused { .. } => "Refused",
            PeerMsg::SnapshotChunk { .. } => "SnapshotChunk",
            PeerMsg::SnapshotAck { .. } => "SnapshotAck",
            PeerMsg::Append { .. } => "Append",
            PeerMsg::AppendAck { .. } => "AppendAck",
            PeerMsg::DemoteRequest { .. } => "DemoteRequest",
            PeerMsg::DemoteGranted { .. } => "DemoteGranted",
            PeerMsg::NewEpoch { .. } => "NewEpoch",
            PeerMsg::ZombieAck => "ZombieAck",
            PeerMsg::Rejoin { .. } => "Rejoin",
            PeerMsg::RejoinAccepted { .. } => "RejoinAccepted",
            PeerMsg::Unpair => "Unpair",
        }
    }
}

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
