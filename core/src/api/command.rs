//! Operator commands (SPEC §3, §7), their replies and why they are refused.

use super::Method;
use crate::gate::RequestKind;
use crate::types::*;
use serde::{Deserialize, Serialize};
use thiserror::Error;

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
    /// The API method of this command (SPEC §7).
    pub fn method(&self) -> Method {
        match self {
            Command::PrepareForStandby => Method::PrepareForStandby,
            Command::ConfigureActive { .. } => Method::ConfigureActiveForReplication,
            Command::GetReplicationBlob => Method::GetReplicationBlob,
            Command::TransitionToStandby { .. } => Method::TransitionToStandby,
            Command::Promote { .. } => Method::PromoteStandbyToActive,
            Command::DemoteActive { .. } => Method::DemoteActive,
            Command::RemoveStandby { .. } => Method::RemoveStandby,
            Command::Rejoin => Method::RejoinAsStandby,
            Command::Put { .. } => Method::ConfigurationPut,
            Command::Delete { .. } => Method::ConfigurationDelete,
            Command::Get { .. } => Method::ConfigurationGet,
            Command::List => Method::ConfigurationList,
        }
    }

    /// What the role gate sees of this command.
    pub fn kind(&self) -> RequestKind {
        self.method().kind()
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
