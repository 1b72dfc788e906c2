//! Limits and timeouts of the state machines, validated before use.

use crate::msg::OnStandbyLoss;
use crate::types::{ClientId, ClientType, Millis};
use thiserror::Error;

/// A setting that does not make sense, named by its configuration key.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid setting `{key}`: {why}")]
pub struct ConfigError {
    /// The key as written in the configuration file.
    pub key: &'static str,
    pub why: String,
}

fn check(ok: bool, key: &'static str, why: impl FnOnce() -> String) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError { key, why: why() })
    }
}

/// Deliberate bugs the model checker switches on to prove its properties have
/// teeth. Not reachable from the server's configuration file.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Mutant {
    #[default]
    None,
    /// The active acknowledges a write once it is durable locally only.
    AckBeforeStandby,
    /// Servers record higher epochs but do not fence themselves.
    NoEpochFencing,
    /// Edges follow a zombie as if it were active.
    FollowZombie,
    /// The role gate lets a standby serve configuration calls.
    StandbyServesConfig,
    /// Planned switchover skips the final catch-up of the standby.
    PromoteWithoutCatchup,
    /// Peer admission believes the envelope's `from` instead of the identity TLS proved.
    TrustEnvelopeFrom,
    /// A heartbeat's claimed higher epoch fences without a valid proof.
    UnprovenEpoch,
}

impl Mutant {
    /// Every mutant with its command-line name.
    pub const ALL: [(Mutant, &'static str); 7] = [
        (Mutant::AckBeforeStandby, "ack-before-standby"),
        (Mutant::NoEpochFencing, "no-epoch-fencing"),
        (Mutant::FollowZombie, "follow-zombie"),
        (Mutant::StandbyServesConfig, "standby-serves-config"),
        (Mutant::PromoteWithoutCatchup, "promote-without-catchup"),
        (Mutant::TrustEnvelopeFrom, "trust-envelope-from"),
        (Mutant::UnprovenEpoch, "unproven-epoch"),
    ];

    /// Looks a mutant up by its command-line name.
    pub fn from_name(name: &str) -> Option<Mutant> {
        Mutant::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(m, _)| *m)
    }
}

/// Settings of a [`crate::Server`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerConfig {
    /// Interval of the peer tick: heartbeat to the peer, retransmission, failure counting.
    pub peer_heartbeat_interval_ms: Millis,
    /// Peer ticks without a word from the peer before it counts as unreachable.
    pub peer_failure_threshold: u32,
    /// `replication.standby_grace_ms`: how long writes wait for a lost standby.
    pub standby_grace_ms: Millis,
    /// `replication.on_standby_loss`.
    pub on_standby_loss: OnStandbyLoss,
    /// Most entries in one `Append`.
    pub max_batch_entries: usize,
    /// Most payload bytes in one `Append` or snapshot chunk (below the frame cap).
    pub max_batch_bytes: usize,
    /// Most entries sent to the standby and not yet acknowledged.
    pub max_inflight_entries: u64,
    /// Committed entries kept in memory for catching a standby up; older ones need a snapshot.
    pub log_window_entries: usize,
    /// Most writes waiting for durability; more are refused until some complete.
    pub max_pending_writes: usize,
    /// Most clients in the contact table.
    pub max_clients: usize,
    /// State-history transitions kept in memory (all are persisted).
    pub history_entries: usize,
    /// Peer ticks a planned switchover may take before it is abandoned.
    pub switchover_max_ticks: u32,
    /// Seed of the server's random numbers (pairing tokens, pair ids).
    pub seed: u64,
    #[doc(hidden)]
    pub mutant: Mutant,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            peer_heartbeat_interval_ms: 500,
            peer_failure_threshold: 4,
            standby_grace_ms: 60_000,
            on_standby_loss: OnStandbyLoss::Degrade,
            max_batch_entries: 1024,
            max_batch_bytes: 1024 * 1024,
            max_inflight_entries: 8192,
            log_window_entries: 20_000,
            max_pending_writes: 20_000,
            max_clients: 200_000,
            history_entries: 64,
            switchover_max_ticks: 20,
            seed: 0,
            mutant: Mutant::None,
        }
    }
}

impl ServerConfig {
    /// Checks each setting and the relations between them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(
            self.peer_heartbeat_interval_ms >= 10,
            "replication.peer_heartbeat_interval_ms",
            || {
                format!(
                    "{} ms is below the 10 ms minimum",
                    self.peer_heartbeat_interval_ms
                )
            },
        )?;
        check(
            self.peer_failure_threshold >= 1,
            "replication.peer_failure_threshold",
            || "must be at least 1 missed heartbeat".into(),
        )?;
        // Both factors come from the config file: a product past u64 is an
        // error, not a wrap to a small detection time that passes the check.
        let detect_ms = self
            .peer_heartbeat_interval_ms
            .checked_mul(u64::from(self.peer_failure_threshold));
        check(
            detect_ms.is_some(),
            "replication.peer_heartbeat_interval_ms",
            || {
                format!(
                    "{} ms × peer_failure_threshold {} overflows; failure detection must be a \
                     number of milliseconds",
                    self.peer_heartbeat_interval_ms, self.peer_failure_threshold
                )
            },
        )?;
        let detect_ms = detect_ms.unwrap_or(Millis::MAX);
        check(
            self.standby_grace_ms >= detect_ms,
            "replication.standby_grace_ms",
            || {
                format!(
                "{} ms is shorter than failure detection ({} ms = peer_heartbeat_interval_ms × \
                 peer_failure_threshold); raise it",
                self.standby_grace_ms, detect_ms
            )
            },
        )?;
        check(
            self.max_batch_entries >= 1,
            "replication.max_batch_entries",
            || "must be ≥ 1".into(),
        )?;
        check(
            self.max_batch_bytes >= 1024
                && self.max_batch_bytes <= crate::codec::DEFAULT_MAX_FRAME_BYTES / 2,
            "replication.max_batch_bytes",
            || {
                format!(
                    "{} is outside 1024..=half the 16 MiB frame cap",
                    self.max_batch_bytes
                )
            },
        )?;
        check(
            self.max_inflight_entries >= self.max_batch_entries as u64,
            "replication.max_inflight_entries",
            || {
                format!(
                    "{} is below max_batch_entries ({})",
                    self.max_inflight_entries, self.max_batch_entries
                )
            },
        )?;
        check(
            self.log_window_entries >= self.max_batch_entries,
            "replication.log_window_entries",
            || {
                format!(
                    "{} is below max_batch_entries ({})",
                    self.log_window_entries, self.max_batch_entries
                )
            },
        )?;
        check(
            self.max_pending_writes >= 1,
            "limits.max_pending_writes",
            || "must be ≥ 1".into(),
        )?;
        check(self.max_clients >= 1, "limits.max_clients", || {
            "must be ≥ 1".into()
        })?;
        check(self.history_entries >= 1, "limits.history_entries", || {
            "must be ≥ 1".into()
        })?;
        check(
            self.switchover_max_ticks >= 2,
            "replication.switchover_max_ticks",
            || "must be ≥ 2".into(),
        )?;
        Ok(())
    }
}

/// Settings of an [`crate::Edge`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EdgeConfig {
    pub client_id: ClientId,
    pub client_type: ClientType,
    /// Edge addresses of the two servers of the pair.
    pub servers: [String; 2],
    /// `edges.heartbeat_interval_ms`; each interval is jittered by ±`jitter_percent`.
    pub heartbeat_interval_ms: Millis,
    pub jitter_percent: u8,
    /// Heartbeats in a row without a reply before a server counts as unreachable.
    pub missed_threshold: u32,
    /// `monitoring_cache`: bytes of samples kept while unacknowledged.
    pub cache_max_bytes: usize,
    /// Most samples in one monitoring batch.
    pub batch_max_samples: usize,
    /// Seed of the heartbeat jitter.
    pub seed: u64,
    #[doc(hidden)]
    pub mutant: Mutant,
}

impl EdgeConfig {
    /// An edge with the SPEC's defaults (10 s heartbeats, ±10 % jitter).
    pub fn new(
        client_id: impl Into<ClientId>,
        client_type: ClientType,
        servers: [String; 2],
    ) -> Self {
        EdgeConfig {
            client_id: client_id.into(),
            client_type,
            servers,
            heartbeat_interval_ms: 10_000,
            jitter_percent: 10,
            missed_threshold: 3,
            cache_max_bytes: 1024 * 1024,
            batch_max_samples: 256,
            seed: 0,
            mutant: Mutant::None,
        }
    }

    /// Checks each setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(!self.client_id.is_empty(), "client_id", || {
            "must not be empty".into()
        })?;
        check(self.servers[0] != self.servers[1], "servers", || {
            format!(
                "both servers are {}; give the two servers of the pair",
                self.servers[0]
            )
        })?;
        check(
            self.heartbeat_interval_ms >= 10,
            "edges.heartbeat_interval_ms",
            || {
                format!(
                    "{} ms is below the 10 ms minimum",
                    self.heartbeat_interval_ms
                )
            },
        )?;
        check(self.jitter_percent <= 50, "edges.jitter_percent", || {
            "must be ≤ 50".into()
        })?;
        check(self.missed_threshold >= 1, "edges.missed_threshold", || {
            "must be ≥ 1".into()
        })?;
        check(
            self.cache_max_bytes >= 1024,
            "edges.monitoring_cache",
            || "must be ≥ 1024 bytes".into(),
        )?;
        check(
            self.batch_max_samples >= 1,
            "edges.batch_max_samples",
            || "must be ≥ 1".into(),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_relations_are_checked() {
        ServerConfig::default().validate().unwrap();
        let bad = ServerConfig {
            standby_grace_ms: 100,
            ..ServerConfig::default()
        };
        let err = bad.validate().unwrap_err();
        assert_eq!(err.key, "replication.standby_grace_ms");
        assert!(
            err.to_string().contains("shorter than failure detection"),
            "{err}"
        );
        // Found while writing the config fuzz target (regression input:
        // fuzz/regressions/config_toml/): this product overflowed, a panic
        // with overflow checks and in release a wrap to 0 that accepted a
        // heartbeat interval of 2^62 ms.
        let huge = ServerConfig {
            peer_heartbeat_interval_ms: 1 << 62,
            peer_failure_threshold: 4,
            ..ServerConfig::default()
        };
        let err = huge.validate().unwrap_err();
        assert_eq!(err.key, "replication.peer_heartbeat_interval_ms");
        assert!(err.to_string().contains("overflows"), "{err}");
        let edge = EdgeConfig::new("e1", ClientType::Edge, ["a".into(), "a".into()]);
        assert_eq!(edge.validate().unwrap_err().key, "servers");
    }
}
