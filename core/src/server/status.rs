//! What a server tells about itself: `getReplicationStatus` ([`Status`]),
//! where refused callers should go ([`Redirects`]) and the role gate of its
//! API calls.

use super::Server;
use crate::api::*;
use crate::config::mutant;
use crate::msg::*;
use crate::proof::EpochProof;
use crate::types::*;
use std::sync::Arc;

/// `clientCount` (SPEC §5).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct ClientCount {
    pub edge_count: u64,
    pub gateway_count: u64,
    /// Edges following this server.
    pub current_active_edge_count: u64,
    /// Gateways following this server.
    pub current_active_gateway_count: u64,
    /// Edges following the other server of the pair.
    pub current_standby_edge_count: u64,
    pub current_standby_gateway_count: u64,
    /// Clients following nobody.
    pub following_none_count: u64,
}

/// `replication.mode` of `getReplicationStatus` (SPEC §4, §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplicationMode {
    /// An active whose writes wait for its standby (RPO 0).
    Sync,
    /// An active acknowledging writes without its standby (`degrade`).
    AsyncDegraded,
    /// A standby, following its active.
    SyncStandby,
    /// Standalone or zombie: nothing replicated.
    None,
}

impl ReplicationMode {
    /// The name the API and the DR page show.
    pub const fn as_str(self) -> &'static str {
        match self {
            ReplicationMode::Sync => "SYNC",
            ReplicationMode::AsyncDegraded => "ASYNC_DEGRADED",
            ReplicationMode::SyncStandby => "SYNC_STANDBY",
            ReplicationMode::None => "NONE",
        }
    }
}

/// `getReplicationStatus` (SPEC §7), without the optional tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub role: Role,
    pub dr_state: DrState,
    pub failure_description: Option<String>,
    pub role_timestamp_ms: Millis,
    pub state_timestamp_ms: Millis,
    pub last_dr_protected_ms: Option<Millis>,
    pub epoch: Epoch,
    pub highest_epoch_seen: Epoch,
    pub pair_id: Option<PairId>,
    pub me: ServerInfo,
    pub peer: Option<ServerInfo>,
    /// The peer identity pinned at pairing (certificate name and key).
    pub peer_identity: Option<PeerIdentity>,
    /// The highest epoch proof held (own, or the one that fenced this server).
    pub epoch_proof: Option<Arc<EpochProof>>,
    /// Admin address of the server that takes writes, as far as this one knows.
    pub active_admin_address: Option<String>,
    /// Edge address of the server that takes writes, as far as this one knows.
    pub active_edge_address: Option<String>,
    pub policy: OnStandbyLoss,
    pub last_index: Index,
    pub commit_index: Index,
    pub durable_index: Index,
    pub standby_acked_index: Option<Index>,
    pub lag_entries: u64,
    pub lag_ms: u64,
    pub unprotected_writes: u64,
    pub degraded: bool,
    /// An active whose acknowledged writes are on its standby too (RPO 0):
    /// what the API, the metrics and the DR page call "protected".
    pub protected: bool,
    pub replication_mode: ReplicationMode,
    pub writes_blocked: bool,
    pub fenced_by: Option<Epoch>,
    pub pending_writes: usize,
    pub documents: usize,
    /// Monitoring samples this server has stored since it started, its own
    /// and those copied from the active (`samplesStoredSinceStart`).
    pub samples_stored_since_start: u64,
    pub client_count: ClientCount,
}

impl Server {
    /// `getReplicationStatus`.
    pub fn status(&self) -> Status {
        let rep = self.role.replica();
        let standby_acked = rep.map(|r| r.match_index);
        let lag_entries = rep.map_or(0, |r| self.durable_index.saturating_sub(r.match_index));
        let lag_ms = rep
            .and_then(|r| r.lag_since_ms)
            .filter(|_| lag_entries > 0)
            .map_or(0, |t| self.now.mono_ms.saturating_sub(t));
        let redirects = self.redirects();
        let degraded = rep.is_some_and(|r| r.degraded());
        let replication_mode = match self.role() {
            Role::Active if degraded => ReplicationMode::AsyncDegraded,
            Role::Active => ReplicationMode::Sync,
            Role::Standby => ReplicationMode::SyncStandby,
            Role::Standalone | Role::Zombie => ReplicationMode::None,
        };
        Status {
            role: self.role(),
            dr_state: self.dr_state,
            failure_description: self.failure.clone(),
            role_timestamp_ms: self.role_timestamp_ms,
            state_timestamp_ms: self.state_timestamp_ms,
            last_dr_protected_ms: self.last_dr_protected_ms,
            epoch: self.epoch,
            highest_epoch_seen: self.highest_epoch_seen,
            pair_id: self.pair_id,
            me: self.me.clone(),
            peer: self.peer.clone(),
            peer_identity: self.peer_identity.clone(),
            epoch_proof: self.epoch_proof.clone(),
            active_admin_address: redirects.admin,
            active_edge_address: redirects.edge,
            policy: self.policy,
            last_index: self.log.last_index(),
            commit_index: self.applied.index,
            durable_index: self.durable_index,
            standby_acked_index: standby_acked,
            lag_entries,
            lag_ms,
            unprotected_writes: self.unprotected_writes,
            degraded,
            protected: self.protected(),
            replication_mode,
            writes_blocked: rep.is_some_and(|r| r.blocked() || r.restart_unconfirmed),
            fenced_by: self.role.fenced_by(),
            pending_writes: self.writes.len(),
            documents: self.applied.docs.len(),
            samples_stored_since_start: self.samples_stored_since_start,
            client_count: self.client_count(),
        }
    }

    /// Where callers refused by this server should go.
    pub fn redirects(&self) -> Redirects {
        match self.role() {
            Role::Standalone | Role::Active => Redirects {
                admin: Some(self.me.admin_address.clone()),
                edge: Some(self.me.edge_address.clone()),
            },
            Role::Standby => Redirects {
                admin: self
                    .peer
                    .as_ref()
                    .map(|p| p.admin_address.clone())
                    .filter(|a| !a.is_empty()),
                edge: self
                    .peer
                    .as_ref()
                    .map(|p| p.edge_address.clone())
                    .filter(|a| !a.is_empty()),
            },
            Role::Zombie => {
                let peer_edge = self.peer.as_ref().map(|p| p.edge_address.clone());
                let redirect_edge = self.role.redirect_edge().cloned();
                let promoted_is_peer = redirect_edge.is_none() || redirect_edge == peer_edge;
                Redirects {
                    admin: self
                        .peer
                        .as_ref()
                        .filter(|_| promoted_is_peer)
                        .map(|p| p.admin_address.clone())
                        .filter(|a| !a.is_empty()),
                    edge: redirect_edge.or(peer_edge).filter(|a| !a.is_empty()),
                }
            }
        }
    }

    /// Edge address of the server that takes writes (what `redirects().edge` says, cheaper).
    pub(super) fn active_edge_address(&self) -> Option<String> {
        match self.role() {
            Role::Standalone | Role::Active => Some(self.me.edge_address.clone()),
            Role::Standby => self
                .peer
                .as_ref()
                .map(|p| &p.edge_address)
                .filter(|a| !a.is_empty())
                .cloned(),
            Role::Zombie => self.redirects().edge,
        }
    }

    /// The role gate for an API call of `kind` (SPEC §3, §9.5).
    pub fn gate(&self, kind: RequestKind, method: &str) -> Result<(), CommandError> {
        let config_call = matches!(kind, RequestKind::ConfigRead | RequestKind::ConfigWrite);
        if mutant!(self.cfg, StandbyServesConfig) && self.role() == Role::Standby && config_call {
            // The bug this mutant plants: a standby serving configuration calls.
            return Ok(());
        }
        gate(
            self.role(),
            self.dr_state,
            self.role.fenced_by().unwrap_or(self.highest_epoch_seen),
            kind,
            method,
            &self.redirects(),
        )
    }
}
