//! Liveness and readiness: what `GET /healthz` and `GET /readyz` answer.
//!
//! - **`/healthz`** (liveness): the process runs, its storage has not
//!   failed, and its driver answers within [`LIVENESS_DRIVER_DEADLINE`]. 200
//!   `ok <name> <role>`; otherwise 503 and the reason. A supervisor restarts
//!   a server that fails it.
//! - **`/readyz`** (readiness): the server can serve its role *now*. 200
//!   `ready <name> <role> <drState>: <what it serves>`; otherwise 503
//!   `not ready <name> …: <reason>`, one line. The rule, in order:
//!   1. storage has not failed (a failed commit makes the server fail-stop:
//!      not ready at once, then it exits);
//!   2. the driver answers within [`READINESS_DRIVER_DEADLINE`];
//!   3. by role ([`verdict`]): **STANDALONE** and **ACTIVE** are ready while
//!      they take writes — an active within the grace of a lost standby
//!      still takes them (they wait), a degraded one takes them unprotected
//!      (said in the line); an active whose writes are blocked
//!      (`on_standby_loss = block` after the grace, restarted without
//!      reaching its standby) or that is handing over in a planned switchover
//!      is not. **STANDBY** is ready while it replicates from its active
//!      (`STANDBY_SYNC`, `STANDBY_RUNNING`); prepared, configuring, promoting
//!      or with its active unreachable it is not. **ZOMBIE** is never ready:
//!      it serves no writes and redirects.
//!
//! Both probes hold no admin request permit (`limits.max_admin_requests`),
//! so a server busy with slow calls still answers them.

use std::time::Duration;
use vcodr_core::{DrState, Role, Server};

/// How long `/readyz` waits for the driver: a server whose driver is this
/// slow is not serving its role now.
pub const READINESS_DRIVER_DEADLINE: Duration = Duration::from_secs(1);
/// How long `/healthz` waits for the driver before calling it stuck.
pub const LIVENESS_DRIVER_DEADLINE: Duration = Duration::from_secs(5);

/// What the driver answers a probe: the role, and whether it serves it now
/// (`Ok`: what it serves; `Err`: why not), one line each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub role: Role,
    pub verdict: Result<String, String>,
}

/// The probe answer of the core's present state.
pub fn probe(core: &Server) -> Probe {
    let st = core.status();
    Probe {
        role: st.role,
        verdict: verdict(
            st.role,
            st.dr_state,
            core.takes_writes(),
            st.degraded,
            st.failure_description.as_deref(),
        ),
    }
}

/// The readiness rule by role (see the module's documentation). `failure`
/// is the server's `failureDescription`; the answer is one line.
pub fn verdict(
    role: Role,
    dr_state: DrState,
    takes_writes: bool,
    degraded: bool,
    failure: Option<&str>,
) -> Result<String, String> {
    let head = format!("{role} {dr_state}");
    let why = |default: &str| one_line(failure.unwrap_or(default));
    match role {
        Role::Standalone | Role::Active if takes_writes => Ok(if degraded {
            format!("{head}: takes writes, degraded (acknowledged without the standby)")
        } else {
            format!("{head}: takes writes")
        }),
        Role::Standalone | Role::Active if dr_state == DrState::PendingActiveDemotion => Err(format!(
            "{head}: writes paused by a planned switchover; the promoted server takes them next"
        )),
        Role::Standalone | Role::Active => Err(format!(
            "{head}: writes refused: {}",
            why("writes are not taken now")
        )),
        Role::Standby => match dr_state {
            DrState::StandbySync | DrState::StandbyRunning => {
                Ok(format!("{head}: replicating from the active"))
            }
            DrState::StandbyCandidate => Err(format!(
                "{head}: prepared, waiting for configureActiveForReplication on the active"
            )),
            DrState::StandbyConfiguring => {
                Err(format!("{head}: receiving its initial copy from the active"))
            }
            DrState::PendingStandbyPromotion => Err(format!("{head}: being promoted")),
            _ => Err(format!(
                "{head}: not replicating: {}",
                why("the active is unreachable")
            )),
        },
        Role::Zombie => Err(format!(
            "{head}: fenced by a higher epoch; serves no writes and redirects to the promoted server"
        )),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_are_ready_while_they_take_writes() {
        use DrState::*;
        assert_eq!(
            verdict(Role::Standalone, Unconfigured, true, false, None),
            Ok("STANDALONE UNCONFIGURED: takes writes".into())
        );
        assert_eq!(
            verdict(Role::Active, StandbyRunning, true, false, None),
            Ok("ACTIVE STANDBY_RUNNING: takes writes".into())
        );
        // Within the grace: writes are taken (and wait); degraded: taken, said so.
        assert!(verdict(
            Role::Active,
            FailureGetStandbyStatus,
            true,
            false,
            Some("lost")
        )
        .is_ok());
        assert_eq!(
            verdict(Role::Active, FailureGetStandbyStatus, true, true, Some("x")),
            Ok("ACTIVE FAILURE_GET_STANDBY_STATUS: takes writes, degraded (acknowledged without the standby)".into())
        );
        assert_eq!(
            verdict(
                Role::Active,
                FailureGetStandbyStatus,
                false,
                false,
                Some("standby unreachable\n  for longer than standby_grace; writes are refused")
            ),
            Err("ACTIVE FAILURE_GET_STANDBY_STATUS: writes refused: standby unreachable for longer than standby_grace; writes are refused".into())
        );
        assert!(
            verdict(Role::Active, PendingActiveDemotion, false, false, None)
                .unwrap_err()
                .contains("planned switchover")
        );
    }

    #[test]
    fn a_standby_is_ready_while_it_replicates_and_a_zombie_never() {
        use DrState::*;
        for st in [StandbySync, StandbyRunning] {
            assert!(
                verdict(Role::Standby, st, false, false, None).is_ok(),
                "{st}"
            );
        }
        for st in [
            StandbyCandidate,
            StandbyConfiguring,
            PendingStandbyPromotion,
            FailureGetActiveStatus,
        ] {
            assert!(
                verdict(Role::Standby, st, false, false, None).is_err(),
                "{st}"
            );
        }
        assert_eq!(
            verdict(
                Role::Standby,
                FailureGetActiveStatus,
                false,
                false,
                Some("active a unreachable")
            ),
            Err("STANDBY FAILURE_GET_ACTIVE_STATUS: not replicating: active a unreachable".into())
        );
        assert!(verdict(Role::Zombie, Zombie, false, false, None)
            .unwrap_err()
            .starts_with("ZOMBIE ZOMBIE: fenced"));
    }
}
