//! Wire messages: server ↔ server (`peer`, the peer link) and edge ↔ server
//! (`edge`, the edge link), and what both kinds of link carry.
//!
//! Every message is a serde type encoded with postcard inside a frame (see
//! [`crate::codec`]). Every peer message and every heartbeat reply carries the
//! sender's epoch (SPEC §2).

mod edge;
mod peer;

pub use edge::*;
pub use peer::*;

use crate::types::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
