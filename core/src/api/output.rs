//! What comes out of a [`crate::Server`]: its outputs, the persistence
//! requests the I/O layer carries out, the durable metadata, and the events
//! an operator should see.

use super::command::{CommandError, Reply};
use super::input::{ReplyTo, RequestId, Timer};
use crate::msg::*;
use crate::proof::EpochProof;
use crate::types::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Sequence number of a [`Output::Persist`] request.
pub type PersistSeq = u64;

/// Outputs of a server, drained with [`crate::Server::poll_output`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub enum Output {
    /// Send to the peer server reachable at `to`: the pinned peer's peer
    /// address, or the standby address the operator configured.
    SendPeer { to: String, msg: PeerEnvelope },
    /// Send back on the link a peer message came in on (refusals of senders
    /// this server does not dial).
    ReplyPeer { link: PeerLinkId, msg: PeerEnvelope },
    /// Reply to an edge request.
    ReplyEdge { reply_to: ReplyTo, msg: ServerMsg },
    /// Make `ops` durable, in order, then give back `Input::Persisted { up_to: seq }`.
    /// The I/O layer may commit several of these in one transaction (group commit).
    Persist {
        seq: PersistSeq,
        ops: Vec<PersistOp>,
    },
    /// Arm `timer` to fire after `after_ms`.
    SetTimer { timer: Timer, after_ms: Millis },
    /// Disarm `timer`.
    CancelTimer(Timer),
    /// The answer to an operator command.
    Reply {
        req: RequestId,
        result: Result<Reply, CommandError>,
    },
    /// Something an operator should see in the logs.
    Event(Event),
    /// Read stored monitoring samples for the standby's copy, and give back
    /// [`Input::SamplesRead`](crate::Input::SamplesRead) with what
    /// [`MemStore::read_samples`](crate::MemStore::read_samples) returns for
    /// the same arguments: for each range in order, the stored samples of
    /// its client with `after_seq < seq <= up_to_seq`, until the next sample
    /// would exceed `max_bytes` (payload + [`SAMPLE_OVERHEAD_BYTES`] each) or
    /// `max_samples` — the read's first sample is always taken, so a read
    /// always progresses. The read sees every `Persist` output before it
    /// (order it after them); at most one is outstanding. It does not block
    /// the core: answer when the storage has read it.
    ReadSamples {
        ranges: Vec<SampleRange>,
        max_bytes: usize,
        max_samples: usize,
    },
}

/// Bytes a sample counts for beyond its payload, in batch bounds (as a
/// monitoring batch counts them).
pub const SAMPLE_OVERHEAD_BYTES: usize = 10;

/// What the I/O layer must make durable.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PersistOp {
    /// Replace the durable DR metadata (boxed: it is large and rare).
    Meta(Box<DurableMeta>),
    /// Append one transition to the state history.
    History(Transition),
    /// Append entries; an entry whose index is already stored replaces it and everything after.
    Append(Vec<Entry>),
    /// Drop every entry after `index` (never a committed one).
    TruncateAfter(Index),
    /// Entries up to `index` are committed: apply them to the stored configuration and samples.
    Commit(Index),
    /// Replace the log and the applied state with this snapshot.
    InstallSnapshot(Snapshot),
    /// Move every entry after `after` into the divergence archive.
    Archive { after: Index, reason: String },
    /// Entries below `below` are committed and replicated; storage may drop them.
    Compact { below: Index },
    /// Retention: drop the stored monitoring samples of `client` whose seq is
    /// below `below_seq` (`monitoring.retain_samples_per_client`).
    PruneSamples { client: ClientId, below_seq: u64 },
    /// Replace the durable list of sample ranges this server lacks and copies
    /// from its active (a standby after a snapshot; see
    /// [`PeerMsg::SamplesPull`]), one range per `(client, after_seq)`.
    SamplesToCopy(Vec<SampleRange>),
    /// Store the chunk's samples without a log entry, each once by
    /// `(client, seq)` (one already stored counts as a duplicate, as in
    /// `Commit`), and record them copied: the range to copy that begins at
    /// `(client, after_seq)` begins at `through_seq` from now on, and is gone
    /// once nothing of it is left.
    StoreSamples(SampleChunk),
}

impl PersistOp {
    /// Whether a store must `fdatasync` this op before confirming it. The
    /// commit marker, sample pruning and log compaction need not: losing
    /// them to a power failure costs nothing the core does not redo — the
    /// entries above a lost commit marker stay in the log and commit again
    /// (restore replays only up to the marker), and pruning and compaction
    /// happen again later. A store may confirm a batch made only of such ops
    /// once it is written (it must survive the process being killed) and let
    /// it become durable with the next batch that needs an fsync — never
    /// after a later batch. Each write would otherwise pay a second fsync:
    /// its entry's, then its commit marker's.
    pub fn needs_fsync(&self) -> bool {
        !matches!(
            self,
            PersistOp::Commit(_) | PersistOp::Compact { .. } | PersistOp::PruneSamples { .. }
        )
    }
}

/// The DR state that survives a restart (SPEC §2).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DurableMeta {
    pub role: Role,
    pub dr_state: DrState,
    pub epoch: Epoch,
    pub pair_id: Option<PairId>,
    /// The other server of the pair.
    pub peer: Option<ServerInfo>,
    /// The other server's identity, pinned at pairing: only its messages are admitted.
    pub peer_identity: Option<PeerIdentity>,
    /// The highest epoch proof held: this server's own (it holds `epoch`) or
    /// the one that fenced it.
    pub epoch_proof: Option<Arc<EpochProof>>,
    /// One-time pairing token while prepared (candidate) or offering a blob.
    pub pairing_token: Option<u128>,
    /// Replication policy agreed at pairing.
    pub policy: OnStandbyLoss,
    /// The standby has completed its initial copy at least once.
    pub synced: bool,
    /// Fenced by this higher epoch (zombie).
    pub fenced_by: Option<Epoch>,
    /// Edge address to redirect to (zombie).
    pub redirect_edge: Option<String>,
    /// Writes acknowledged while degraded.
    pub unprotected_writes: u64,
    pub last_dr_protected_ms: Option<Millis>,
    pub role_timestamp_ms: Millis,
    pub state_timestamp_ms: Millis,
    /// Promoted server: the old active still to be told of the new epoch.
    pub zombie_to_notify: bool,
    /// This run's [`Incarnation`]: one more than the last run's.
    pub incarnation: Incarnation,
    /// Standby: the active's `(epoch, incarnation)` whose entries its log
    /// holds beyond the point that run started from; Appends of an earlier
    /// run are ignored (SPEC §4).
    pub active_incarnation: Option<(Epoch, Incarnation)>,
}

/// Things an operator should see: one log line each.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A role or drState change, also written to the state history.
    Transition(Transition),
    /// The server learned of a higher epoch and fenced itself.
    Fenced { epoch: Epoch, learned_from: String },
    /// Writes are being acknowledged without the standby (degrade policy).
    Degraded { since_index: Index },
    /// Writes are refused while the standby is lost (`block` at the grace,
    /// or an active restarted without reaching its standby): the
    /// `refused_pending` writes that were waiting were answered at once as
    /// not acknowledged.
    WritesBlocked { refused_pending: u64, why: String },
    /// RPO is 0 again: the standby has every acknowledged write.
    Protected { at_index: Index },
    /// A snapshot is being sent to the standby.
    SnapshotSent { index: Index, chunks: u32 },
    /// Entries were moved to the divergence archive at rejoin.
    DivergenceArchived { after: Index, entries_upto: Index },
    /// A message of the pinned peer was ignored (stale, unexpected), with the reason.
    PeerIgnored { kind: &'static str, reason: String },
    /// A peer message was refused at admission: its proven sender may not
    /// send it. The I/O layer counts these by reason and logs them as counts
    /// per interval (an outsider causes them).
    PeerRefused {
        link: PeerLinkId,
        /// The sender's proven identity.
        from: PeerIdentity,
        kind: &'static str,
        reason: PeerRefusal,
    },
    /// The peer's identity was pinned outside a pairing step (see `how`).
    PeerPinned {
        identity: PeerIdentity,
        how: &'static str,
    },
    /// A heartbeat claimed a higher epoch of this pair without a valid proof:
    /// it fenced nobody; the client is marked in the contact table.
    ForgedEpochClaim {
        client: ClientId,
        claimed: Epoch,
        why: String,
    },
    /// Re-sent monitoring samples that were already stored were discarded.
    SamplesDeduplicated { client: ClientId, count: u64 },
    /// An edge request was refused, with the reason.
    ClientRefused { client: ClientId, reason: String },
}

/// Why a peer message was refused at admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerRefusal {
    /// The sender's certificate is not the one pinned at pairing.
    NotPinnedPeer,
    /// No peer is pinned here and the message is not a pairing step.
    NotPaired,
    /// The message names another pair (`pairId`).
    OtherPair,
    /// A pairing step with the wrong token, server, name or state.
    PairingRefused,
}

impl PeerRefusal {
    /// Every reason, for metrics labels.
    pub const ALL: [PeerRefusal; 4] = [
        PeerRefusal::NotPinnedPeer,
        PeerRefusal::NotPaired,
        PeerRefusal::OtherPair,
        PeerRefusal::PairingRefused,
    ];

    /// The metrics label (`vcodr_peer_messages_refused_total{reason}`).
    pub fn as_str(self) -> &'static str {
        match self {
            PeerRefusal::NotPinnedPeer => "not_pinned_peer",
            PeerRefusal::NotPaired => "not_paired",
            PeerRefusal::OtherPair => "other_pair",
            PeerRefusal::PairingRefused => "pairing_refused",
        }
    }
}
