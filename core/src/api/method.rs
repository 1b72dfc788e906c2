//! The one table of admin API methods (SPEC §7): each method's wire name
//! and the role gate that applies to it. The core names methods in its
//! refusals with it, the JSON-RPC layer parses with it, and the driver and
//! `ctl` call with it; no method name is spelled anywhere else.

use crate::gate::RequestKind;
use std::fmt;

/// An admin API method (SPEC §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    PrepareForStandby,
    ConfigureActiveForReplication,
    GetReplicationBlob,
    TransitionToStandby,
    GetReplicationStatus,
    PromoteStandbyToActive,
    DemoteActive,
    RemoveStandby,
    RejoinAsStandby,
    GetDivergenceArchive,
    ConfigurationGet,
    ConfigurationList,
    ConfigurationPut,
    ConfigurationDelete,
    MonitoringGetClientSamples,
    MonitoringGetSummary,
}

impl Method {
    /// Every method, in the order SPEC §7 lists them.
    pub const ALL: [Method; 16] = [
        Method::PrepareForStandby,
        Method::ConfigureActiveForReplication,
        Method::GetReplicationBlob,
        Method::TransitionToStandby,
        Method::GetReplicationStatus,
        Method::PromoteStandbyToActive,
        Method::DemoteActive,
        Method::RemoveStandby,
        Method::RejoinAsStandby,
        Method::GetDivergenceArchive,
        Method::ConfigurationGet,
        Method::ConfigurationList,
        Method::ConfigurationPut,
        Method::ConfigurationDelete,
        Method::MonitoringGetClientSamples,
        Method::MonitoringGetSummary,
    ];

    /// The wire name, exactly as SPEC §7 writes it.
    pub const fn name(self) -> &'static str {
        match self {
            Method::PrepareForStandby => "disasterRecovery/prepareForStandby",
            Method::ConfigureActiveForReplication => {
                "disasterRecovery/configureActiveForReplication"
            }
            Method::GetReplicationBlob => "disasterRecovery/getReplicationBlob",
            Method::TransitionToStandby => "disasterRecovery/transitionToStandby",
            Method::GetReplicationStatus => "disasterRecovery/getReplicationStatus",
            Method::PromoteStandbyToActive => "disasterRecovery/promoteStandbyToActive",
            Method::DemoteActive => "disasterRecovery/demoteActive",
            Method::RemoveStandby => "disasterRecovery/removeStandby",
            Method::RejoinAsStandby => "disasterRecovery/rejoinAsStandby",
            Method::GetDivergenceArchive => "disasterRecovery/getDivergenceArchive",
            Method::ConfigurationGet => "configuration/get",
            Method::ConfigurationList => "configuration/list",
            Method::ConfigurationPut => "configuration/put",
            Method::ConfigurationDelete => "configuration/delete",
            Method::MonitoringGetClientSamples => "monitoring/getClientSamples",
            Method::MonitoringGetSummary => "monitoring/getSummary",
        }
    }

    /// The method with this wire name, if any.
    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }

    /// What the role gate sees of a call of this method.
    pub const fn kind(self) -> RequestKind {
        match self {
            Method::GetReplicationStatus | Method::GetDivergenceArchive => RequestKind::DrStatus,
            Method::PrepareForStandby
            | Method::ConfigureActiveForReplication
            | Method::GetReplicationBlob
            | Method::TransitionToStandby
            | Method::PromoteStandbyToActive
            | Method::DemoteActive
            | Method::RemoveStandby
            | Method::RejoinAsStandby => RequestKind::DrOperation,
            Method::ConfigurationGet | Method::ConfigurationList => RequestKind::ConfigRead,
            Method::ConfigurationPut | Method::ConfigurationDelete => RequestKind::ConfigWrite,
            Method::MonitoringGetClientSamples | Method::MonitoringGetSummary => {
                RequestKind::MonitoringRead
            }
        }
    }
}

impl AsRef<str> for Method {
    fn as_ref(&self) -> &str {
        self.name()
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_method() {
        for m in Method::ALL {
            assert_eq!(Method::from_name(m.name()), Some(m));
        }
        assert_eq!(Method::from_name("configuration/nope"), None);
    }
}
