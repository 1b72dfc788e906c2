//! Identifiers, roles, DR states and the replicated log's entries.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Fencing number of a pair. Promotion makes the standby the holder of `epoch + 1`.
pub type Epoch = u64;
/// One run of a server process: counted up at every start and durable
/// before the run ships an entry (SPEC §4, "incarnation fence"). A standby
/// tells an active's runs apart by it, so that the entries a run shipped but
/// never made durable cannot be taken for those the next run writes at the
/// same `(epoch, index)`.
pub type Incarnation = u64;
/// Position in the replicated log; the first entry has index 1, 0 means "nothing".
pub type Index = u64;
/// A server's `vcoUuid` (random 128-bit, chosen by the I/O layer at first start).
pub type ServerId = u128;
/// A pair's `pairId` (random 128-bit, made when DR is configured).
pub type PairId = u128;
/// An edge's or gateway's id, taken from its verified client certificate.
pub type ClientId = String;
/// Milliseconds on some clock: monotonic for timeouts, wall-clock for display.
pub type Millis = u64;

/// What the operator, edges and gateways see (SPEC §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    Standalone,
    Active,
    Standby,
    Zombie,
}

impl Role {
    /// Every role, for reachability checks and metrics.
    pub const ALL: [Role; 4] = [Role::Standalone, Role::Active, Role::Standby, Role::Zombie];

    /// The SPEC's upper-case name (`STANDALONE`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standalone => "STANDALONE",
            Role::Active => "ACTIVE",
            Role::Standby => "STANDBY",
            Role::Zombie => "ZOMBIE",
        }
    }

    /// Roles that take configuration writes and that edges may follow.
    pub fn is_writer(self) -> bool {
        matches!(self, Role::Standalone | Role::Active)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The finer DR step, named as the VeloCloud Orchestrator names it (SPEC §2).
///
/// `StandbySync` and `StandbyRunning` are used by both sides of a pair: on the
/// active they describe its standby, on the standby itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DrState {
    Unconfigured,
    StandbyPromoted,
    StandbyCandidate,
    StandbyConfiguring,
    StandbySync,
    StandbyRunning,
    PendingStandbyPromotion,
    FailureGetActiveStatus,
    ActiveConfiguring,
    ActiveWaitStandby,
    PendingActiveDemotion,
    FailureGetStandbyStatus,
    Zombie,
}

impl DrState {
    /// The SPEC's upper-case name (`STANDBY_RUNNING`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DrState::Unconfigured => "UNCONFIGURED",
            DrState::StandbyPromoted => "STANDBY_PROMOTED",
            DrState::StandbyCandidate => "STANDBY_CANDIDATE",
            DrState::StandbyConfiguring => "STANDBY_CONFIGURING",
            DrState::StandbySync => "STANDBY_SYNC",
            DrState::StandbyRunning => "STANDBY_RUNNING",
            DrState::PendingStandbyPromotion => "PENDING_STANDBY_PROMOTION",
            DrState::FailureGetActiveStatus => "FAILURE_GET_ACTIVE_STATUS",
            DrState::ActiveConfiguring => "ACTIVE_CONFIGURING",
            DrState::ActiveWaitStandby => "ACTIVE_WAIT_STANDBY",
            DrState::PendingActiveDemotion => "PENDING_ACTIVE_DEMOTION",
            DrState::FailureGetStandbyStatus => "FAILURE_GET_STANDBY_STATUS",
            DrState::Zombie => "ZOMBIE",
        }
    }

    /// The drStates a role may be in (SPEC §2 table).
    pub fn allowed_for(role: Role) -> &'static [DrState] {
        use DrState::*;
        match role {
            Role::Standalone => &[Unconfigured, StandbyPromoted],
            Role::Standby => &[
                StandbyCandidate,
                StandbyConfiguring,
                StandbySync,
                StandbyRunning,
                PendingStandbyPromotion,
                FailureGetActiveStatus,
            ],
            Role::Active => &[
                ActiveConfiguring,
                ActiveWaitStandby,
                StandbySync,
                StandbyRunning,
                PendingActiveDemotion,
                FailureGetStandbyStatus,
            ],
            Role::Zombie => &[Zombie],
        }
    }

    /// Every `(role, drState)` pair the SPEC names, for reachability checks.
    pub fn all_pairs() -> Vec<(Role, DrState)> {
        Role::ALL
            .iter()
            .flat_map(|&r| DrState::allowed_for(r).iter().map(move |&s| (r, s)))
            .collect()
    }
}

impl fmt::Display for DrState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Edge or gateway (SPEC §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ClientType {
    Edge,
    Gateway,
}

impl ClientType {
    /// The SPEC's upper-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientType::Edge => "EDGE",
            ClientType::Gateway => "GATEWAY",
        }
    }
}

/// How a server is reached, exchanged when a pair is configured.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServerInfo {
    /// `vcoUuid`.
    pub uuid: ServerId,
    /// Name in the server's certificate.
    pub name: String,
    /// `peer_listen`: where the other server of the pair reaches it (`standbyAddress`).
    pub peer_address: String,
    /// `edge_listen`: where edges and gateways reach it; used in redirects.
    pub edge_address: String,
    /// `admin_listen`: where operators reach it; named in API errors.
    pub admin_address: String,
}

/// One configuration change.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    /// Set document `key` to `value` (JSON text, opaque to the core).
    Put { key: String, value: Vec<u8> },
    /// Remove document `key`.
    Delete { key: String },
    /// Monitoring samples of one client, stored once each by `(client, seq)`.
    Samples {
        client: ClientId,
        samples: Vec<Sample>,
    },
    /// First entry of a new epoch, written at promotion: marks where it begins.
    EpochStart,
}

/// A log entry `(epoch, index, op)` (SPEC §4).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    pub epoch: Epoch,
    pub index: Index,
    pub op: Op,
}

impl Entry {
    /// Bytes this entry adds to a frame, roughly: used for batching limits.
    pub fn approx_size(&self) -> usize {
        16 + match &self.op {
            Op::Put { key, value } => key.len() + value.len() + 4,
            Op::Delete { key } => key.len() + 2,
            Op::Samples { client, samples } => {
                client.len() + samples.iter().map(|s| s.payload.len() + 10).sum::<usize>()
            }
            Op::EpochStart => 1,
        }
    }
}

/// One monitoring sample of an edge or gateway.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sample {
    /// Per-client sequence number, from 1, in the order the client produced them.
    pub seq: u64,
    /// Opaque sample bytes.
    pub payload: Vec<u8>,
}

/// A configuration document as stored: value and the index of the write that set it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Doc {
    pub value: Vec<u8>,
    /// `version`: the log index of the write that produced this value.
    pub version: Index,
}

/// A recorded transition (SPEC §2 state history).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Transition {
    pub from_role: Role,
    pub from: DrState,
    pub to_role: Role,
    pub to: DrState,
    pub epoch: Epoch,
    /// Wall-clock milliseconds since the Unix epoch, as given by the I/O layer.
    pub timestamp_ms: Millis,
    pub reason: String,
}

/// What a certificate says its holder is (SPEC §6). The deployment CA writes
/// it into every certificate it issues and the TLS verifier checks it: the
/// peer link accepts only [`CertRole::Server`], the edge link only edges and
/// gateways. A certificate proves *who*; this says what it may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CertRole {
    Server,
    Edge,
    Gateway,
}

impl CertRole {
    /// Every role, for tables and exhaustive checks.
    pub const ALL: [CertRole; 3] = [CertRole::Server, CertRole::Edge, CertRole::Gateway];

    /// The spelling in certificates (`urn:vcodr:<role>:<name>`) and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CertRole::Server => "server",
            CertRole::Edge => "edge",
            CertRole::Gateway => "gateway",
        }
    }

    /// Parses [`CertRole::as_str`].
    pub fn from_name(name: &str) -> Option<CertRole> {
        CertRole::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// The client type a certificate of this role may heartbeat as.
    pub fn client_type(self) -> Option<ClientType> {
        match self {
            CertRole::Server => None,
            CertRole::Edge => Some(ClientType::Edge),
            CertRole::Gateway => Some(ClientType::Gateway),
        }
    }
}

impl fmt::Display for CertRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity TLS proved for the server at the other end of a peer link:
/// the name its certificate carries and its public key. It travels with every
/// peer input into the core (never taken from a message), and pairing pins
/// it durably: afterwards a peer message from any other identity is refused.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerIdentity {
    /// The certificate's name (a server's `name`, e.g. `a`).
    pub name: String,
    /// The certificate's SubjectPublicKeyInfo, DER: epoch proofs signed by
    /// this server are verified against it.
    pub public_key: Vec<u8>,
    /// How operators see the key: the SHA-256 of `public_key` in hex, made
    /// by the I/O layer (the core has no hash function). Shown in logs,
    /// the state history, the API and the DR page alike.
    pub key_fingerprint: String,
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = self
            .key_fingerprint
            .get(..16)
            .unwrap_or(&self.key_fingerprint);
        write!(f, "`{}` (key {short}…)", self.name)
    }
}

/// Identifies the link a peer message came in on, so that a refusal can go
/// back on that same link (a server never dials an address it was told by an
/// unauthenticated message). Chosen by the I/O layer.
pub type PeerLinkId = u64;
