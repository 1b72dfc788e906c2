//! The one role gate (SPEC §3, §9.5): what a server in each role serves,
//! and where it sends the callers it refuses.

use crate::api::CommandError;
use crate::types::*;

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
) -> Result<(), CommandError> {
    use RequestKind::*;
    let dr = matches!(kind, DrStatus | DrHeartbeat | DrOperation | Login);
    match role {
        Role::Standalone | Role::Active => Ok(()),
        Role::Standby if dr => Ok(()),
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
