//! The nemesis' schedule: drawn from a seed, printed, replayed exactly by
//! the same seed (`VCODR_DRILL_SEED=n`). Sides are relative (the active,
//! the standby at the moment the round starts), since promotions swap them.
//!
//! A schedule is a replication policy and a few rounds. Each round injects
//! one fault, with operator steps where the fault calls for them, and ends
//! with heal and recovery (see [`crate::run`]): the network healed, every
//! stopped server continued and every dead one restarted, zombies rejoined,
//! until both servers say STANDBY_RUNNING.

use std::fmt;
use vcodr_core::rng::Rng;

/// `replication.on_standby_loss` of both servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Block,
    Degrade,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Block => "block",
            Policy::Degrade => "degrade",
        }
    }
}

/// A server by its role when the round starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Active,
    Standby,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Active => "the active",
            Side::Standby => "the standby",
        })
    }
}

/// Which directions of the peer link a cut drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutDir {
    Both,
    /// Only what the active sends to the standby.
    ActiveToStandby,
    /// Only what the standby sends to the active.
    StandbyToActive,
}

/// One fault and the operator steps it calls for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Round {
    /// Cut the peer link for `hold_ms`; with `promote`, promote the standby
    /// once it reports FAILURE_GET_ACTIVE_STATUS (disaster failover while
    /// the old active still runs and the edges reach both: it must be
    /// fenced through them within one heartbeat interval + 1 s).
    PeerCut {
        dir: CutDir,
        hold_ms: u64,
        promote: bool,
    },
    /// Cut the edges from one server for `hold_ms`.
    EdgeCut { side: Side, hold_ms: u64 },
    /// SIGKILL one server, restart it `down_ms` later (a supervisor); with
    /// `promote` (the active only), disaster-promote the standby meanwhile.
    Kill {
        side: Side,
        down_ms: u64,
        promote: bool,
    },
    /// SIGSTOP one server, SIGCONT it `hold_ms` later; with `promote` (the
    /// active only), disaster-promote the standby meanwhile.
    Pause {
        side: Side,
        hold_ms: u64,
        promote: bool,
    },
    /// Planned switchover (`force: true`), then rejoin the old active.
    Switchover,
    /// A planned switchover, and SIGKILL of the promoting standby
    /// (`promoter`) or of the active `delay_ms` after the call.
    KillDuringSwitchover { promoter: bool, delay_ms: u64 },
    /// Cut the peer link, disaster-promote the standby and SIGKILL it
    /// `delay_ms` after the call.
    KillDuringDisasterPromotion { delay_ms: u64 },
    /// A planned switchover, then `rejoinAsStandby` on the zombie and
    /// SIGKILL of it `delay_ms` later.
    KillDuringRejoin { delay_ms: u64 },
    /// Fill the filesystem under the active's data_dir: it must exit
    /// non-zero (fail-stop); then free the space and restart it. With
    /// `promote`, disaster-promote the standby while it is down.
    FullDisk { promote: bool },
}

impl Round {
    /// The fault's kind, for the totals.
    pub fn kind(&self) -> &'static str {
        match self {
            Round::PeerCut {
                dir: CutDir::Both, ..
            } => "cut a<->b both ways",
            Round::PeerCut { .. } => "cut a<->b one way",
            Round::EdgeCut { .. } => "cut the edges from one server",
            Round::Kill { .. } => "SIGKILL a server",
            Round::Pause { .. } => "SIGSTOP/SIGCONT a server",
            Round::Switchover => "planned switchover",
            Round::KillDuringSwitchover { .. } => "SIGKILL during a planned switchover",
            Round::KillDuringDisasterPromotion { .. } => "SIGKILL during a disaster promotion",
            Round::KillDuringRejoin { .. } => "SIGKILL during a rejoin",
            Round::FullDisk { .. } => "full filesystem under the active",
        }
    }

    /// Every kind a schedule can draw.
    pub const KINDS: [&'static str; 10] = [
        "cut a<->b both ways",
        "cut a<->b one way",
        "cut the edges from one server",
        "SIGKILL a server",
        "SIGSTOP/SIGCONT a server",
        "planned switchover",
        "SIGKILL during a planned switchover",
        "SIGKILL during a disaster promotion",
        "SIGKILL during a rejoin",
        "full filesystem under the active",
    ];

    /// Whether the round promotes the standby by disaster.
    pub fn disaster_promotion(&self) -> bool {
        matches!(
            self,
            Round::PeerCut { promote: true, .. }
                | Round::Kill { promote: true, .. }
                | Round::Pause { promote: true, .. }
                | Round::KillDuringDisasterPromotion { .. }
                | Round::FullDisk { promote: true }
        )
    }
}

impl fmt::Display for Round {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let then_promote = |p: bool| {
            if p {
                ", promote the standby (disaster)"
            } else {
                ""
            }
        };
        match self {
            Round::PeerCut {
                dir,
                hold_ms,
                promote,
            } => {
                let d = match dir {
                    CutDir::Both => "both ways",
                    CutDir::ActiveToStandby => "active -> standby only",
                    CutDir::StandbyToActive => "standby -> active only",
                };
                write!(
                    f,
                    "cut the peer link {d} for {hold_ms} ms{}",
                    then_promote(*promote)
                )
            }
            Round::EdgeCut { side, hold_ms } => {
                write!(f, "cut the edges from {side} for {hold_ms} ms")
            }
            Round::Kill {
                side,
                down_ms,
                promote,
            } => write!(
                f,
                "SIGKILL {side}, restart it after {down_ms} ms{}",
                then_promote(*promote)
            ),
            Round::Pause {
                side,
                hold_ms,
                promote,
            } => write!(
                f,
                "SIGSTOP {side}, SIGCONT after {hold_ms} ms{}",
                then_promote(*promote)
            ),
            Round::Switchover => write!(f, "planned switchover (force), rejoin the old active"),
            Round::KillDuringSwitchover { promoter, delay_ms } => write!(
                f,
                "planned switchover, SIGKILL {} {delay_ms} ms after the call",
                if *promoter {
                    "the promoting standby"
                } else {
                    "the active"
                }
            ),
            Round::KillDuringDisasterPromotion { delay_ms } => write!(
                f,
                "cut the peer link, promote the standby (disaster), SIGKILL it {delay_ms} ms after the call"
            ),
            Round::KillDuringRejoin { delay_ms } => write!(
                f,
                "planned switchover, rejoin the zombie, SIGKILL it {delay_ms} ms after the call"
            ),
            Round::FullDisk { promote } => write!(
                f,
                "fill the filesystem under the active (expect fail-stop), free it, restart{}",
                then_promote(*promote)
            ),
        }
    }
}

/// One drill: a policy and its rounds, from a seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub seed: u64,
    pub policy: Policy,
    pub rounds: Vec<Round>,
}

/// Rounds per schedule.
pub const ROUNDS_MIN: u64 = 2;
pub const ROUNDS_MAX: u64 = 4;

impl Schedule {
    /// The schedule of `seed`: the same seed, the same schedule, always.
    pub fn generate(seed: u64) -> Schedule {
        let mut rng = Rng::new(seed ^ 0x5eed_d7111);
        let policy = if rng.range(0, 1) == 0 {
            Policy::Block
        } else {
            Policy::Degrade
        };
        let n = rng.range(ROUNDS_MIN, ROUNDS_MAX);
        let rounds = (0..n).map(|_| draw(&mut rng)).collect();
        Schedule {
            seed,
            policy,
            rounds,
        }
    }
}

fn side(rng: &mut Rng) -> Side {
    if rng.range(0, 1) == 0 {
        Side::Active
    } else {
        Side::Standby
    }
}

fn draw(rng: &mut Rng) -> Round {
    // Weights: the faults that fence and archive come up most often.
    match rng.range(0, 14) {
        0..=2 => Round::PeerCut {
            dir: match rng.range(0, 3) {
                0 | 1 => CutDir::Both,
                2 => CutDir::ActiveToStandby,
                _ => CutDir::StandbyToActive,
            },
            hold_ms: rng.range(2_000, 6_000),
            promote: rng.range(0, 2) > 0,
        },
        3 => Round::EdgeCut {
            side: side(rng),
            hold_ms: rng.range(2_000, 5_000),
        },
        4 | 5 => {
            let side = side(rng);
            Round::Kill {
                side,
                down_ms: rng.range(500, 4_000),
                promote: side == Side::Active && rng.range(0, 2) > 0,
            }
        }
        6 | 7 => {
            let side = side(rng);
            Round::Pause {
                side,
                hold_ms: rng.range(1_000, 5_000),
                promote: side == Side::Active && rng.range(0, 2) > 0,
            }
        }
        8 => Round::Switchover,
        9 | 10 => Round::KillDuringSwitchover {
            promoter: rng.range(0, 1) == 0,
            delay_ms: rng.range(0, 60),
        },
        11 => Round::KillDuringDisasterPromotion {
            delay_ms: rng.range(0, 60),
        },
        12 => Round::KillDuringRejoin {
            delay_ms: rng.range(0, 300),
        },
        _ => Round::FullDisk {
            promote: rng.range(0, 1) == 0,
        },
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "schedule of seed {} (replay: VCODR_DRILL_SEED={}): policy {}",
            self.seed,
            self.seed,
            self.policy.as_str()
        )?;
        for (i, r) in self.rounds.iter().enumerate() {
            writeln!(f, "  round {}: {r}", i + 1)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_schedule_every_time() {
        for seed in 0..200 {
            assert_eq!(Schedule::generate(seed), Schedule::generate(seed));
        }
        assert_ne!(Schedule::generate(1), Schedule::generate(2));
    }

    #[test]
    fn schedules_draw_every_kind_and_both_policies() {
        let mut kinds = std::collections::BTreeSet::new();
        let mut policies = std::collections::BTreeSet::new();
        for seed in 0..300 {
            let s = Schedule::generate(seed);
            policies.insert(s.policy.as_str());
            assert!((ROUNDS_MIN..=ROUNDS_MAX).contains(&(s.rounds.len() as u64)));
            for r in &s.rounds {
                kinds.insert(r.kind());
                if let Round::Kill { side, promote, .. } | Round::Pause { side, promote, .. } = r {
                    assert!(!promote || *side == Side::Active, "{r}");
                }
            }
        }
        assert_eq!(kinds.len(), Round::KINDS.len(), "{kinds:?}");
        assert!(kinds.iter().all(|k| Round::KINDS.contains(k)));
        assert_eq!(policies.len(), 2);
    }
}
