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

/// Checks that `value` of `key` lies in `min..=max`; the error names the
/// key, the value and the allowed range, in `unit` (`"ms"`, `"bytes"`, or
/// `""` for a count).
pub fn check_range<T>(
    key: &'static str,
    value: T,
    min: T,
    max: T,
    unit: &str,
) -> Result<(), ConfigError>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    let u = if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    };
    check(value >= min && value <= max, key, || {
        format!("{value}{u} is outside the allowed range {min}..={max}{u}")
    })
}

/// Deliberate bugs the model checker switches on to prove its properties have
/// teeth (cargo feature `mutants`, which only the model checker and the
/// core's own tests enable). Not reachable from the server's configuration
/// file, and not even compiled into it.
#[cfg(feature = "mutants")]
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
    /// A standby that caught up by snapshot copies none of the monitoring
    /// samples the snapshot names (the defect the fault drills found).
    NoSampleCopy,
    /// A restarted active reuses the indexes its last run shipped but never
    /// made durable: no incarnation fence (SPEC §4), so a standby keeps the
    /// entries of the old run where the new run writes others.
    ReuseIndexAfterRestart,
}

#[cfg(feature = "mutants")]
impl Mutant {
    /// Every mutant with its command-line name.
    pub const ALL: [(Mutant, &'static str); 9] = [
        (Mutant::AckBeforeStandby, "ack-before-standby"),
        (Mutant::NoEpochFencing, "no-epoch-fencing"),
        (Mutant::FollowZombie, "follow-zombie"),
        (Mutant::StandbyServesConfig, "standby-serves-config"),
        (Mutant::PromoteWithoutCatchup, "promote-without-catchup"),
        (Mutant::TrustEnvelopeFrom, "trust-envelope-from"),
        (Mutant::UnprovenEpoch, "unproven-epoch"),
        (Mutant::NoSampleCopy, "no-sample-copy"),
        (Mutant::ReuseIndexAfterRestart, "reuse-index-after-restart"),
    ];

    /// Looks a mutant up by its command-line name.
    pub fn from_name(name: &str) -> Option<Mutant> {
        Mutant::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(m, _)| *m)
    }
}

/// Whether the deliberate bug `Mutant::$m` is switched on in the
/// configuration `$cfg`: always `false` without the `mutants` feature, so a
/// production build has no mutant and no check for one.
#[cfg(feature = "mutants")]
macro_rules! mutant {
    ($cfg:expr, $m:ident) => {
        $cfg.mutant == $crate::config::Mutant::$m
    };
}
#[cfg(not(feature = "mutants"))]
macro_rules! mutant {
    ($cfg:expr, $m:ident) => {
        false
    };
}
pub(crate) use mutant;

/// Upper bounds of [`ServerConfig`] and [`EdgeConfig`] (lower bounds are in
/// `validate`). They keep every timer, queue and table finite and every
/// product of them far from overflow: a deadline is `now + at most a few
/// hours`, never `u64::MAX`.
pub mod bounds {
    use crate::types::Millis;

    /// `replication.peer_heartbeat_interval_ms`: one minute.
    pub const PEER_HEARTBEAT_INTERVAL_MS_MAX: Millis = 60_000;
    /// `replication.peer_failure_threshold`.
    pub const PEER_FAILURE_THRESHOLD_MAX: u32 = 100;
    /// `replication.standby_grace_ms`: one hour. Writes wait this long for a
    /// lost standby; beyond it an operator must decide, not a timer.
    pub const STANDBY_GRACE_MS_MAX: Millis = 3_600_000;
    /// `replication.max_batch_entries`.
    pub const MAX_BATCH_ENTRIES_MAX: usize = 65_536;
    /// `replication.max_inflight_entries`.
    pub const MAX_INFLIGHT_ENTRIES_MAX: u64 = 1_048_576;
    /// `replication.log_window_entries` (entries held in memory).
    pub const LOG_WINDOW_ENTRIES_MAX: usize = 1_000_000;
    /// `limits.max_pending_writes`.
    pub const MAX_PENDING_WRITES_MAX: usize = 1_000_000;
    /// `edges.max_clients`.
    pub const MAX_CLIENTS_MAX: usize = 10_000_000;
    /// State-history transitions kept in memory.
    pub const HISTORY_ENTRIES_MAX: usize = 100_000;
    /// `replication.switchover_max_ticks`.
    pub const SWITCHOVER_MAX_TICKS_MAX: u32 = 10_000;
    /// `edges.heartbeat_interval_ms`: ten minutes.
    pub const EDGE_HEARTBEAT_INTERVAL_MS_MAX: Millis = 600_000;
    /// `edges.missed_threshold`.
    pub const EDGE_MISSED_THRESHOLD_MAX: u32 = 100;
    /// `edges.monitoring_cache`: 1 GiB.
    pub const EDGE_CACHE_MAX_BYTES_MAX: usize = 1 << 30;
    /// `edges.batch_max_samples`.
    pub const EDGE_BATCH_MAX_SAMPLES_MAX: usize = 65_536;
    /// `replication.log_window_bytes`, `max_inflight_bytes`, `max_pending_bytes`: 4 GiB.
    pub const LOG_BYTES_MAX: u64 = 4 << 30;
    /// `monitoring.max_sample_bytes`: one sample's payload.
    pub const MAX_SAMPLE_BYTES_MAX: usize = 1 << 20;
    /// `monitoring.max_sample_bytes_per_s`: one client's monitoring rate, 64 MiB/s.
    pub const MAX_SAMPLE_RATE_MAX: u64 = 64 << 20;
    /// `monitoring.retain_samples_per_client`.
    pub const RETAIN_SAMPLES_MAX: u64 = 1 << 32;
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
    /// The same window's bound in bytes ([`crate::Entry::approx_size`]).
    pub log_window_bytes: u64,
    /// Bytes of entries sent to the standby and not yet acknowledged.
    pub max_inflight_bytes: u64,
    /// Bytes of entries appended and not yet committed (waiting for
    /// durability or the standby); beyond it writes and samples are refused
    /// as overloaded until some commit.
    pub max_pending_bytes: u64,
    /// `monitoring.max_sample_bytes`: the largest sample payload taken.
    pub max_sample_bytes: usize,
    /// `monitoring.max_sample_bytes_per_s`: each client's monitoring rate
    /// (a token bucket holding up to one batch, [`ServerConfig::max_sample_batch_bytes`]);
    /// beyond it a batch is refused and the edge keeps it cached.
    pub max_sample_bytes_per_s: u64,
    /// `monitoring.retain_samples_per_client`: stored samples kept per
    /// client; older ones are dropped from storage as newer ones commit.
    pub retain_samples_per_client: u64,
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
    #[cfg(feature = "mutants")]
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
            log_window_bytes: 64 << 20,
            max_inflight_bytes: 16 << 20,
            max_pending_bytes: 64 << 20,
            max_sample_bytes: 4096,
            max_sample_bytes_per_s: 256 << 10,
            retain_samples_per_client: 10_000,
            max_pending_writes: 20_000,
            max_clients: 200_000,
            history_entries: 64,
            switchover_max_ticks: 20,
            seed: 0,
            #[cfg(feature = "mutants")]
            mutant: Mutant::None,
        }
    }
}

impl ServerConfig {
    /// The most bytes of samples one monitoring batch may carry (a write's
    /// value has the same bound): an entry always fits an `Append`.
    pub fn max_sample_batch_bytes(&self) -> usize {
        self.max_batch_bytes / 2
    }

    /// Peer failure detection: how long an unreachable peer takes to be
    /// declared lost (`peer_heartbeat_interval_ms × peer_failure_threshold`).
    pub fn failure_detection_ms(&self) -> Millis {
        self.peer_heartbeat_interval_ms
            .saturating_mul(Millis::from(self.peer_failure_threshold))
    }

    /// Checks each setting against its range (the error names the key, the
    /// value and the range) and the relations between them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use bounds::*;
        check_range(
            "replication.peer_heartbeat_interval_ms",
            self.peer_heartbeat_interval_ms,
            10,
            PEER_HEARTBEAT_INTERVAL_MS_MAX,
            "ms",
        )?;
        check_range(
            "replication.peer_failure_threshold",
            self.peer_failure_threshold,
            1,
            PEER_FAILURE_THRESHOLD_MAX,
            "",
        )?;
        check_range(
            "replication.standby_grace_ms",
            self.standby_grace_ms,
            10,
            STANDBY_GRACE_MS_MAX,
            "ms",
        )?;
        let detect_ms = self.failure_detection_ms();
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
        check_range(
            "replication.max_batch_entries",
            self.max_batch_entries,
            1,
            MAX_BATCH_ENTRIES_MAX,
            "",
        )?;
        check_range(
            "replication.max_batch_bytes",
            self.max_batch_bytes,
            1024,
            crate::codec::DEFAULT_MAX_FRAME_BYTES / 2,
            "bytes",
        )?;
        check_range(
            "replication.max_inflight_entries",
            self.max_inflight_entries,
            1,
            MAX_INFLIGHT_ENTRIES_MAX,
            "",
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
        check_range(
            "replication.log_window_entries",
            self.log_window_entries,
            1,
            LOG_WINDOW_ENTRIES_MAX,
            "",
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
        let batch = self.max_batch_bytes as u64;
        check_range(
            "replication.log_window_bytes",
            self.log_window_bytes,
            2 * batch,
            LOG_BYTES_MAX,
            "bytes",
        )?;
        check_range(
            "replication.max_inflight_bytes",
            self.max_inflight_bytes,
            batch,
            LOG_BYTES_MAX,
            "bytes",
        )?;
        check_range(
            "replication.max_pending_bytes",
            self.max_pending_bytes,
            batch,
            LOG_BYTES_MAX,
            "bytes",
        )?;
        check_range(
            "monitoring.max_sample_bytes",
            self.max_sample_bytes,
            16,
            MAX_SAMPLE_BYTES_MAX.min(self.max_sample_batch_bytes()),
            "bytes",
        )?;
        check_range(
            "monitoring.max_sample_bytes_per_s",
            self.max_sample_bytes_per_s,
            1024,
            MAX_SAMPLE_RATE_MAX,
            "bytes/s",
        )?;
        check_range(
            "monitoring.retain_samples_per_client",
            self.retain_samples_per_client,
            1,
            RETAIN_SAMPLES_MAX,
            "",
        )?;
        check_range(
            "limits.max_pending_writes",
            self.max_pending_writes,
            1,
            MAX_PENDING_WRITES_MAX,
            "",
        )?;
        check_range(
            "edges.max_clients",
            self.max_clients,
            1,
            MAX_CLIENTS_MAX,
            "",
        )?;
        check_range(
            "limits.history_entries",
            self.history_entries,
            1,
            HISTORY_ENTRIES_MAX,
            "",
        )?;
        check_range(
            "replication.switchover_max_ticks",
            self.switchover_max_ticks,
            2,
            SWITCHOVER_MAX_TICKS_MAX,
            "",
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
    #[cfg(feature = "mutants")]
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
            #[cfg(feature = "mutants")]
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
        use bounds::*;
        check_range(
            "edges.heartbeat_interval_ms",
            self.heartbeat_interval_ms,
            10,
            EDGE_HEARTBEAT_INTERVAL_MS_MAX,
            "ms",
        )?;
        check_range("edges.jitter_percent", self.jitter_percent, 0, 50, "%")?;
        check_range(
            "edges.missed_threshold",
            self.missed_threshold,
            1,
            EDGE_MISSED_THRESHOLD_MAX,
            "",
        )?;
        check_range(
            "edges.monitoring_cache",
            self.cache_max_bytes,
            1024,
            EDGE_CACHE_MAX_BYTES_MAX,
            "bytes",
        )?;
        check_range(
            "edges.batch_max_samples",
            self.batch_max_samples,
            1,
            EDGE_BATCH_MAX_SAMPLES_MAX,
            "",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
