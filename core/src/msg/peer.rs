//! Server ↔ server messages on the peer link (SPEC §3, §4).

use super::OnStandbyLoss;
use crate::proof::EpochProof;
use crate::types::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

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
    /// Entries are sent as soon as the active appends them, before they are
    /// durable on it; `incarnation` and `since` fence a restarted active's
    /// runs from each other (SPEC §4).
    Append {
        /// The sending run of the active (durable on it before it sent this).
        incarnation: Incarnation,
        /// The active's log ended here when this run began streaming to this
        /// standby: for an active that restarted, the end of what its
        /// storage held (all durable), so what a standby holds beyond it
        /// that an earlier run sent was never durable on the active, never
        /// acknowledged. (Every other stream begins with a snapshot, and a
        /// standby never drops below what it applied.)
        since: Index,
        prev_index: Index,
        prev_epoch: Epoch,
        entries: Vec<Entry>,
        commit_index: Index,
        /// The active's locally durable last index, so the standby knows it caught up.
        active_durable: Index,
    },
    /// Standby → active: the standby's log is durable up to `durable_index`
    /// (`ok == false`: the append did not fit; `durable_index` is a hint to resend from).
    /// Sent only once the standby durably follows the active's run
    /// `incarnation` (it dropped what earlier runs sent beyond `since`); an
    /// active takes no ack of another run.
    AppendAck {
        incarnation: Incarnation,
        durable_index: Index,
        ok: bool,
    },
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
    /// Standby → active, after installing a snapshot: send me the stored
    /// monitoring samples of these ranges (at most [`SAMPLE_PULL_RANGES_MAX`],
    /// the first ranges still to copy). A snapshot carries each client's
    /// highest sample seq, not the samples, so a standby copies the ones it
    /// lacks this way, one pull at a time. **Empty `ranges`**: this standby
    /// holds every sample of the entries up to its `applied_index` (its copy
    /// is complete); sent when the copy ends and in answer to an empty
    /// [`PeerMsg::SamplesBatch`].
    SamplesPull {
        ranges: Vec<SampleRange>,
        applied_index: Index,
    },
    /// Active → standby: what the active stores of the ranges of a pull, in
    /// their order, within `replication.max_batch_bytes` and
    /// `max_batch_entries` samples (a batch that ran out of room answers a
    /// prefix). **Empty `chunks`**: the active asks whether the standby's copy
    /// is complete (it answers with a [`PeerMsg::SamplesPull`]).
    SamplesBatch { chunks: Vec<SampleChunk> },
}

/// Most ranges one [`PeerMsg::SamplesPull`] asks for (and chunks one
/// [`PeerMsg::SamplesBatch`] may hold): a pull makes the active read at most
/// this many ranges, within its byte and sample bounds.
pub const SAMPLE_PULL_RANGES_MAX: usize = 64;

/// Monitoring samples of one client whose seq is in `(after_seq, up_to_seq]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SampleRange {
    pub client: ClientId,
    pub after_seq: u64,
    pub up_to_seq: u64,
}

/// What a server stores of one [`SampleRange`] up to `through_seq`: every
/// stored sample of `client` with `after_seq < seq <= through_seq`, in seq
/// order (none: it stores none there). `through_seq` is the range's
/// `up_to_seq` when the whole range was read, else the last sample's seq.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SampleChunk {
    pub client: ClientId,
    pub after_seq: u64,
    pub through_seq: u64,
    pub samples: Vec<Sample>,
}

impl SampleChunk {
    /// Whether this chunk is a well-formed answer for `range`: it starts
    /// where the range starts, ends within it having made progress, and its
    /// samples are in increasing seq order inside `(after_seq, through_seq]`.
    pub fn answers(&self, range: &SampleRange) -> bool {
        self.client == range.client
            && self.after_seq == range.after_seq
            && self.after_seq < self.through_seq
            && self.through_seq <= range.up_to_seq
            && self.samples.first().is_none_or(|s| s.seq > self.after_seq)
            && self
                .samples
                .last()
                .is_none_or(|s| s.seq <= self.through_seq)
            && self.samples.windows(2).all(|w| w[0].seq < w[1].seq)
    }
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
            PeerMsg::SamplesPull { .. } => "SamplesPull",
            PeerMsg::SamplesBatch { .. } => "SamplesBatch",
        }
    }
}
