//! Layouts of earlier storage schemas, read once to migrate a file forward.
//!
//! Schemas 3 and 4 stored the DR metadata without the server's incarnation
//! and a standby's followed run (SPEC §4): [`DurableMetaV4`]. A migrated
//! server's next run is its first counted one, and a migrated standby
//! follows no run until the active's next Append: it then drops what an
//! earlier run of the active sent beyond that run's `since`, which is safe
//! however old that run is.
//!
//! Schema 2 (vcodr before the trust-boundary release) had no pinned peer
//! identity and no epoch proof in the DR metadata, and no forged-claim count
//! in the contact rows. Postcard is positional, so those rows are read with
//! these structs and written back in the current layout; everything else is
//! unchanged. A pair migrated this way pins its peer on first contact by the
//! certificate name it recorded at pairing (see the core's admission rule).

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use vcodr_core::{
    ClientId, ClientType, DrState, DurableMeta, Epoch, EpochProof, Index, Millis, OnStandbyLoss,
    PairId, PeerIdentity, Role, ServerInfo, ViewEntry,
};

/// [`DurableMeta`] as schema 2 stored it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DurableMetaV2 {
    pub role: Role,
    pub dr_state: DrState,
    pub epoch: Epoch,
    pub pair_id: Option<PairId>,
    pub peer: Option<ServerInfo>,
    pub pairing_token: Option<u128>,
    pub policy: OnStandbyLoss,
    pub synced: bool,
    pub fenced_by: Option<Epoch>,
    pub redirect_edge: Option<String>,
    pub unprotected_writes: u64,
    pub last_dr_protected_ms: Option<Millis>,
    pub role_timestamp_ms: Millis,
    pub state_timestamp_ms: Millis,
    pub zombie_to_notify: bool,
}

/// [`DurableMeta`] as schemas 3 and 4 stored it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DurableMetaV4 {
    pub role: Role,
    pub dr_state: DrState,
    pub epoch: Epoch,
    pub pair_id: Option<PairId>,
    pub peer: Option<ServerInfo>,
    pub peer_identity: Option<PeerIdentity>,
    pub epoch_proof: Option<Arc<EpochProof>>,
    pub pairing_token: Option<u128>,
    pub policy: OnStandbyLoss,
    pub synced: bool,
    pub fenced_by: Option<Epoch>,
    pub redirect_edge: Option<String>,
    pub unprotected_writes: u64,
    pub last_dr_protected_ms: Option<Millis>,
    pub role_timestamp_ms: Millis,
    pub state_timestamp_ms: Millis,
    pub zombie_to_notify: bool,
}

impl From<DurableMetaV4> for DurableMeta {
    fn from(m: DurableMetaV4) -> Self {
        DurableMeta {
            role: m.role,
            dr_state: m.dr_state,
            epoch: m.epoch,
            pair_id: m.pair_id,
            peer: m.peer,
            peer_identity: m.peer_identity,
            epoch_proof: m.epoch_proof,
            pairing_token: m.pairing_token,
            policy: m.policy,
            synced: m.synced,
            fenced_by: m.fenced_by,
            redirect_edge: m.redirect_edge,
            unprotected_writes: m.unprotected_writes,
            last_dr_protected_ms: m.last_dr_protected_ms,
            role_timestamp_ms: m.role_timestamp_ms,
            state_timestamp_ms: m.state_timestamp_ms,
            zombie_to_notify: m.zombie_to_notify,
            incarnation: 0,
            active_incarnation: None,
        }
    }
}

impl From<DurableMetaV2> for DurableMeta {
    fn from(m: DurableMetaV2) -> Self {
        DurableMeta {
            role: m.role,
            dr_state: m.dr_state,
            epoch: m.epoch,
            pair_id: m.pair_id,
            peer: m.peer,
            peer_identity: None,
            epoch_proof: None,
            pairing_token: m.pairing_token,
            policy: m.policy,
            synced: m.synced,
            fenced_by: m.fenced_by,
            redirect_edge: m.redirect_edge,
            unprotected_writes: m.unprotected_writes,
            last_dr_protected_ms: m.last_dr_protected_ms,
            role_timestamp_ms: m.role_timestamp_ms,
            state_timestamp_ms: m.state_timestamp_ms,
            zombie_to_notify: m.zombie_to_notify,
            incarnation: 0,
            active_incarnation: None,
        }
    }
}

/// A contact row as schema 2 stored it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ContactRecordV2 {
    pub client_id: ClientId,
    pub client_type: ClientType,
    pub view: [ViewEntry; 2],
    pub following: Option<String>,
    pub config_epoch: Epoch,
    pub config_version: Index,
    pub cached_samples: u64,
    pub dropped_samples: u64,
    pub modified_ms: Millis,
}
