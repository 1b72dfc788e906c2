//! What goes into and comes out of the [`crate::Server`] machine: inputs,
//! outputs, operator commands, their replies and errors, persistence requests,
//! events, and the role gate.

use crate::msg::*;
use crate::proof::EpochProof;
use crate::types::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use thiserror::Error;

/// Identifies an operator request so its reply can be matched; chosen by the I/O layer.
pub type RequestId = u64;
/// Identifies an edge request so its reply can be routed; chosen by the I/O layer.
pub type ReplyTo = u64;
/// Sequence number of a [`Output::Persist`] request.
pub type PersistSeq = u64;

/// Timers of a server. The I/O layer arms them on [`Output::SetTimer`] and
/// feeds [`Input::Timeout`] when one expires; arming an armed timer re-arms it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Timer {
    /// Peer heartbeat, retransmission and failure counting.
    PeerTick,
    /// `standby_grace` ran out: apply the `on_standby_loss` policy.
    StandbyGrace,
}

/// Inputs of a server.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    /// An operator command (admin API).
    Command { req: RequestId, cmd: Command },
    /// A message from a server over the peer link. `from` is the identity
    /// TLS proved for the sender, `link` the link it came in on; the core
    /// decides whether the sender may send it (see [`PeerRefusal`]).
    Peer {
        link: PeerLinkId,
        from: PeerIdentity,
        env: PeerEnvelope,
    },
    /// A message from an edge or gateway whose identity `client` and type
    /// `client_type` the transport verified (both from its certificate).
    Edge {
        reply_to: ReplyTo,
        client: ClientId,
        client_type: ClientType,
        msg: EdgeMsg,
    },
    /// A timer expired.
    Timeout(Timer),
    /// Every [`Output::Persist`] with `seq <= up_to` is durable.
    Persisted { up_to: PersistSeq },
}

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
}

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
}

/// Operator commands (SPEC §3 and §7); status is read with [`crate::Server::status`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    PrepareForStandby,
    ConfigureActive {
        standby_address: String,
        standby_uuid: ServerId,
        pairing_token: u128,
    },
    /// On the would-be active: a blob the standby passes to `TransitionToStandby`.
    GetReplicationBlob,
    /// On the would-be standby: join the active named in the blob.
    TransitionToStandby {
        active_address: String,
        active_uuid: ServerId,
        pairing_token: u128,
    },
    Promote {
        force: bool,
    },
    DemoteActive {
        force: bool,
    },
    /// `removeStandby {force}`; on a zombie, `force` overrides the refusal
    /// given while another server provably holds a higher epoch.
    RemoveStandby {
        force: bool,
    },
    Rejoin,
    Put {
        key: String,
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    Get {
        key: String,
    },
    List,
}

impl Command {
    /// The API method name (SPEC §7).
    pub fn method(&self) -> &'static str {
        match self {
            Command::PrepareForStandby => "disasterRecovery/prepareForStandby",
            Command::ConfigureActive { .. } => "disasterRecovery/configureActiveForReplication",
            Command::GetReplicationBlob => "disasterRecovery/getReplicationBlob",
            Command::TransitionToStandby { .. } => "disasterRecovery/transitionToStandby",
            Command::Promote { .. } => "disasterRecovery/promoteStandbyToActive",
            Command::DemoteActive { .. } => "disasterRecovery/demoteActive",
            Command::RemoveStandby { .. } => "disasterRecovery/removeStandby",
            Command::Rejoin => "disasterRecovery/rejoinAsStandby",
            Command::Put { .. } => "configuration/put",
            Command::Delete { .. } => "configuration/delete",
            Command::Get { .. } => "configuration/get",
            Command::List => "configuration/list",
        }
    }

    /// What the role gate sees of this command.
    pub fn kind(&self) -> RequestKind {
        match self {
            Command::Put { .. } | Command::Delete { .. } => RequestKind::ConfigWrite,
            Command::Get { .. } | Command::List => RequestKind::ConfigRead,
            _ => RequestKind::DrOperation,
        }
    }
}

/// Successful command results.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reply {
    Prepared {
        vco_uuid: ServerId,
        pairing_token: u128,
    },
    Configured {
        pair_id: PairId,
    },
    Blob {
        active: ServerInfo,
        pairing_token: u128,
    },
    Promoted {
        epoch: Epoch,
        /// Acknowledged writes that may be missing here: `Some(0)` when proven none,
        /// `None` when the old active may have acknowledged unprotected writes (degrade).
        data_loss_bound: Option<u64>,
    },
    /// The operation was accepted; follow `drState` for its progress.
    Accepted,
    Written {
        key: String,
        version: Index,
    },
    Deleted {
        key: String,
        version: Index,
    },
    Doc {
        key: String,
        value: Vec<u8>,
        version: Index,
    },
    List(Vec<(String, Index)>),
}

/// Why a command was refused. Each message names the reason and what to do.
#[derive(Clone, Debug, Error, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CommandError {
    #[error("{method} is refused: this server is a STANDBY ({state}); send it to the active server{}", at(.active_admin))]
    StandbyRefuses {
        method: String,
        state: DrState,
        active_admin: Option<String>,
    },
    #[error("{method} is refused: this server is a ZOMBIE, fenced by epoch {fenced_by}; use the promoted server{}", at(.promoted_admin))]
    ZombieRefuses {
        method: String,
        fenced_by: Epoch,
        promoted_admin: Option<String>,
    },
    #[error("{method} is not allowed in role {role} / drState {state}: {why}")]
    WrongState {
        method: String,
        role: Role,
        state: DrState,
        why: String,
    },
    #[error("pairing refused: {0}")]
    PairingRefused(String),
    #[error("no configuration document with key `{0}`")]
    NotFound(String),
    #[error("writes are blocked: {0}")]
    WritesBlocked(String),
    #[error("{waiting} writes are already waiting for durability (limit {limit}); retry shortly")]
    Overloaded { waiting: usize, limit: usize },
    #[error("{waiting} bytes of writes and samples are already waiting to commit (limit {limit}, replication.max_pending_bytes); retry shortly")]
    PendingBytes { waiting: u64, limit: u64 },
    #[error("write at index {index} was not acknowledged: {reason}")]
    NotAcknowledged { index: Index, reason: String },
    #[error("invalid parameter `{param}`: {why}")]
    InvalidParam { param: String, why: String },
    #[error("switchover abandoned: {0}")]
    SwitchoverAbandoned(String),
}

fn at(addr: &Option<String>) -> String {
    match addr {
        Some(a) => format!(" at {a}"),
        None => String::new(),
    }
}

/// What kind of call the role gate decides about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// `getReplicationStatus` and the DR page.
    DrStatus,
    /// Edge and gateway DR heartbeats.
    DrHeartbeat,
    /// The DR operations of SPEC §3.
    DrOperation,
    Login,
    ConfigRead,
    ConfigWrite,
    MonitoringRead,
    /// Monitoring samples from edges.
    MonitoringWrite,
    /// Configuration pulls from edges.
    EdgeConfigPull,
}

impl RequestKind {
    /// Every kind, for tables and exhaustive checks.
    pub const ALL: [RequestKind; 9] = [
        RequestKind::DrStatus,
        RequestKind::DrHeartbeat,
        RequestKind::DrOperation,
        RequestKind::Login,
        RequestKind::ConfigRead,
        RequestKind::ConfigWrite,
        RequestKind::MonitoringRead,
        RequestKind::MonitoringWrite,
        RequestKind::EdgeConfigPull,
    ];
}

/// Where a refused caller should go instead.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Redirects {
    /// Admin address of the server that takes writes.
    pub admin: Option<String>,
    /// Edge address of the server that takes writes.
    pub edge: Option<String>,
}

/// The one role gate (SPEC §3, §9.5): may a server in `role`/`state` serve `kind`?
///
/// A standby serves DR calls only; a zombie accepts no configuration change
/// and sends edges and callers to the promoted server.
pub fn gate(
    role: Role,
    state: DrState,
    fenced_by: Epoch,
    kind: RequestKind,
    method: &str,
    to: &Redirects,
    mutant: crate::config::Mutant,
) -> Result<(), CommandError> {
    use RequestKind::*;
    let dr = matches!(kind, DrStatus | DrHeartbeat | DrOperation | Login);
    match role {
        Role::Standalone | Role::Active => Ok(()),
        Role::Standby if dr => Ok(()),
        Role::Standby
            if mutant == crate::config::Mutant::StandbyServesConfig
                && matches!(kind, ConfigRead | ConfigWrite) =>
        {
            Ok(())
        }
        Role::Standby => Err(CommandError::StandbyRefuses {
            method: method.to_string(),
            state,
            active_admin: to.admin.clone(),
        }),
        Role::Zombie if dr || kind == MonitoringRead => Ok(()),
        Role::Zombie => Err(CommandError::ZombieRefuses {
            method: method.to_string(),
            fenced_by,
            promoted_admin: to.admin.clone(),
        }),
    }
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
