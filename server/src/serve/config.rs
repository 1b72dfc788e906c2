//! The server's configuration file (TOML, SPEC §8): every key has a default
//! except the server's identity (`name`) and its listen addresses for peers
//! and edges. Validated at start-up; errors name the file and the key.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;
use vcodr_core::config::check_range;
use vcodr_core::{OnStandbyLoss, ServerConfig};
use vcodr_transport::QuicDriver;

/// A configuration that cannot be used, naming the file, the key and what to do.
#[derive(Debug, Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: key `{key}`: {why}")]
    Invalid {
        path: PathBuf,
        key: String,
        why: String,
    },
}

/// `[replication]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationSection {
    /// `"degrade"` (default) or `"block"`.
    pub on_standby_loss: String,
    pub standby_grace_ms: u64,
    pub peer_heartbeat_interval_ms: u64,
    pub peer_failure_threshold: u32,
    pub max_batch_entries: usize,
    pub max_batch_bytes: usize,
    pub max_inflight_entries: u64,
    pub log_window_entries: usize,
    /// The in-memory log window's bound in bytes.
    pub log_window_bytes: u64,
    /// Bytes sent to the standby and not yet acknowledged.
    pub max_inflight_bytes: u64,
    /// Bytes of writes and samples appended and not yet committed.
    pub max_pending_bytes: u64,
    pub switchover_max_ticks: u32,
}

impl Default for ReplicationSection {
    fn default() -> Self {
        let c = ServerConfig::default();
        ReplicationSection {
            on_standby_loss: "degrade".into(),
            standby_grace_ms: c.standby_grace_ms,
            peer_heartbeat_interval_ms: c.peer_heartbeat_interval_ms,
            peer_failure_threshold: c.peer_failure_threshold,
            max_batch_entries: c.max_batch_entries,
            max_batch_bytes: c.max_batch_bytes,
            max_inflight_entries: c.max_inflight_entries,
            log_window_entries: c.log_window_entries,
            log_window_bytes: c.log_window_bytes,
            max_inflight_bytes: c.max_inflight_bytes,
            max_pending_bytes: c.max_pending_bytes,
            switchover_max_ticks: c.switchover_max_ticks,
        }
    }
}

/// `[monitoring]`: what each edge or gateway may send and what is kept.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MonitoringSection {
    /// The largest sample payload taken, in bytes.
    pub max_sample_bytes: usize,
    /// Each client's monitoring rate, in bytes per second (a bucket of one batch).
    pub max_sample_bytes_per_s: u64,
    /// Stored samples kept per client; older ones are dropped as newer ones commit.
    pub retain_samples_per_client: u64,
}

impl Default for MonitoringSection {
    fn default() -> Self {
        let c = ServerConfig::default();
        MonitoringSection {
            max_sample_bytes: c.max_sample_bytes,
            max_sample_bytes_per_s: c.max_sample_bytes_per_s,
            retain_samples_per_client: c.retain_samples_per_client,
        }
    }
}

/// `[edges]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EdgesSection {
    /// The interval edges are configured with; a contact older than three of
    /// these is shown as stale.
    pub heartbeat_interval_ms: u64,
    /// Most clients in the contact table.
    pub max_clients: usize,
    /// How often the contact table is saved to disk.
    pub contact_save_interval_ms: u64,
    /// Who drives the edge listener's QUIC connections: `"hub"` (one task
    /// for every edge; the default) or `"quinn"` (quinn's task per
    /// connection, the driver of the peer link). Both speak the same
    /// protocol; `"quinn"` is the fallback should the hub misbehave.
    pub quic_driver: String,
}

impl Default for EdgesSection {
    fn default() -> Self {
        EdgesSection {
            heartbeat_interval_ms: 10_000,
            max_clients: 200_000,
            contact_save_interval_ms: 10_000,
            quic_driver: "hub".into(),
        }
    }
}

/// A QUIC driver by its configuration name (`"hub"` or `"quinn"`).
pub fn parse_quic_driver(name: &str) -> Result<QuicDriver, String> {
    match name {
        "hub" => Ok(QuicDriver::Hub),
        "quinn" => Ok(QuicDriver::Quinn),
        other => Err(format!("{other:?} is neither \"hub\" nor \"quinn\"")),
    }
}

impl EdgesSection {
    /// The edge listener's driver (the name was checked at start-up).
    pub fn driver(&self) -> QuicDriver {
        parse_quic_driver(&self.quic_driver).unwrap_or(QuicDriver::Hub)
    }
}

/// `[limits]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Largest frame accepted on the peer and edge links.
    pub max_frame_bytes: usize,
    /// Most writes waiting for durability.
    pub max_pending_writes: usize,
    /// Most admin API requests in flight at once (a request holds one from
    /// its headers to its response; an idle keep-alive connection none).
    /// The probes `/healthz` and `/readyz` hold none.
    pub max_admin_requests: usize,
    /// Most open admin connections; a connection beyond it is closed at
    /// once, counted and logged as counts per interval.
    pub max_admin_connections: usize,
    /// Longest a new admin connection may take to complete its TLS handshake.
    pub admin_handshake_timeout_ms: u64,
    /// Longest a request's headers may take to arrive, counted from when the
    /// connection is ready for a request (after the handshake or the
    /// previous response; hyper's `header_read_timeout`); its body has as
    /// long again once the headers are in.
    pub admin_header_timeout_ms: u64,
    /// An admin connection with no request in flight that receives nothing
    /// for this long is closed.
    pub admin_idle_timeout_ms: u64,
    /// Longest an admin write waits for its acknowledgement before the
    /// caller is told the outcome is unknown. Unset: long enough for the
    /// grace to decide first ([`default_write_timeout_ms`]).
    pub write_timeout_ms: Option<u64>,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_frame_bytes: vcodr_core::codec::DEFAULT_MAX_FRAME_BYTES,
            max_pending_writes: ServerConfig::default().max_pending_writes,
            max_admin_requests: 256,
            max_admin_connections: 1024,
            admin_handshake_timeout_ms: 5_000,
            admin_header_timeout_ms: 10_000,
            admin_idle_timeout_ms: 5_000,
            write_timeout_ms: None,
        }
    }
}

/// `[runtime]`: the threads of the server's async runtime.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// Threads that run the QUIC endpoints, the admin API and the core; the
    /// storage thread and the blocking pool (probes that wait, status
    /// rendering) are beside them. One by default: a heartbeat or a write
    /// then never wakes a second runtime thread, which on the measured
    /// 2-core machine cost more than it gave (README, "Figures": server CPU
    /// per heartbeat −18 %, one-writer writes +20–35 %, 16 writers within
    /// noise). Everything on the runtime shares it, the admin API's TLS
    /// handshakes (from anyone who can reach `admin_listen`, within
    /// `limits.max_admin_connections`) with the hub's heartbeats: more threads
    /// help a server that takes many handshakes at once on a machine with
    /// cores to spare.
    pub worker_threads: usize,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        RuntimeSection { worker_threads: 1 }
    }
}

impl RuntimeSection {
    /// The runtime `vcodr serve` runs on. One thread is a current-thread
    /// runtime: the thread that starts the server runs every task, and a
    /// task woken by another runs after the tasks already ready, not at once
    /// (tokio's multi-thread scheduler runs it next, from its "LIFO slot").
    /// That order is what lets one peer-link turn carry the writes of every
    /// admin request that arrived together: in one QUIC packet instead of a
    /// packet each (README, "Figures": at 16 writers 3.9 writes a packet
    /// against 1.0, −20 % of the active's and −25 % of the standby's CPU per
    /// write).
    pub fn builder(&self) -> tokio::runtime::Builder {
        match self.worker_threads {
            1 => tokio::runtime::Builder::new_current_thread(),
            n => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(n);
                b
            }
        }
    }
}

/// Upper bounds of the server's own keys (the core's are in
/// `vcodr_core::config::bounds`).
pub mod bounds {
    /// `limits.max_admin_requests` and `limits.max_admin_connections`.
    pub const ADMIN_CONNECTIONS_MAX: usize = 65_536;
    /// `limits.admin_handshake_timeout_ms`.
    pub const ADMIN_HANDSHAKE_TIMEOUT_MS_MAX: u64 = 60_000;
    /// `limits.admin_header_timeout_ms`.
    pub const ADMIN_HEADER_TIMEOUT_MS_MAX: u64 = 300_000;
    /// The smallest admin timeout: below it a loopback TLS handshake fails.
    pub const ADMIN_TIMEOUT_MS_MIN: u64 = 100;
    /// `limits.write_timeout_ms`: three hours (the grace is at most one).
    pub const WRITE_TIMEOUT_MS_MAX: u64 = 10_800_000;
    /// `edges.contact_save_interval_ms`: one hour.
    pub const CONTACT_SAVE_INTERVAL_MS_MAX: u64 = 3_600_000;
    /// `runtime.worker_threads`.
    pub const WORKER_THREADS_MAX: u64 = 64;
}

/// Margin of [`default_write_timeout_ms`] beyond the worst wait for the grace.
pub const WRITE_TIMEOUT_MARGIN_MS: u64 = 10_000;

/// The longest a write can wait before the grace decides about it: its
/// standby is declared lost up to `peer_failure_threshold + 1` peer ticks
/// after its last answer, then `standby_grace_ms` runs.
pub fn grace_decides_within_ms(c: &ServerConfig) -> u64 {
    c.peer_heartbeat_interval_ms
        .saturating_mul(u64::from(c.peer_failure_threshold) + 1)
        .saturating_add(c.standby_grace_ms)
}

/// `limits.write_timeout_ms` when unset: [`grace_decides_within_ms`] plus
/// [`WRITE_TIMEOUT_MARGIN_MS`] (72.5 s with the defaults), so a write waiting
/// for a lost standby is answered by `on_standby_loss`, not by the timeout.
pub fn default_write_timeout_ms(c: &ServerConfig) -> u64 {
    grace_decides_within_ms(c).saturating_add(WRITE_TIMEOUT_MARGIN_MS)
}

/// The admin listener's limits, from `[limits]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminLimits {
    pub max_requests: usize,
    pub max_connections: usize,
    pub handshake_timeout: std::time::Duration,
    pub header_timeout: std::time::Duration,
    pub idle_timeout: std::time::Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        LimitsSection::default().admin()
    }
}

impl LimitsSection {
    /// The admin listener's limits.
    pub fn admin(&self) -> AdminLimits {
        let ms = std::time::Duration::from_millis;
        AdminLimits {
            max_requests: self.max_admin_requests,
            max_connections: self.max_admin_connections,
            handshake_timeout: ms(self.admin_handshake_timeout_ms),
            header_timeout: ms(self.admin_header_timeout_ms),
            idle_timeout: ms(self.admin_idle_timeout_ms),
        }
    }
}

/// The file as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: String,
    data_dir: Option<PathBuf>,
    #[serde(default = "default_admin")]
    admin_listen: String,
    peer_listen: String,
    edge_listen: String,
    /// Addresses others use to reach this server, when not the listen addresses.
    advertise_peer: Option<String>,
    advertise_edge: Option<String>,
    advertise_admin: Option<String>,
    #[serde(default = "default_tls_dir")]
    tls_dir: PathBuf,
    admin_token_file: Option<PathBuf>,
    #[serde(default)]
    replication: ReplicationSection,
    #[serde(default)]
    edges: EdgesSection,
    #[serde(default)]
    monitoring: MonitoringSection,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    runtime: RuntimeSection,
}

fn default_admin() -> String {
    "127.0.0.1:8443".into()
}

fn default_tls_dir() -> PathBuf {
    "certs".into()
}

/// A validated configuration, paths resolved against the file's directory.
#[derive(Clone, Debug)]
pub struct FileConfig {
    pub path: PathBuf,
    pub name: String,
    pub data_dir: PathBuf,
    pub admin_listen: SocketAddr,
    pub peer_listen: SocketAddr,
    pub edge_listen: SocketAddr,
    pub advertise_peer: String,
    pub advertise_edge: String,
    pub advertise_admin: String,
    pub tls_dir: PathBuf,
    pub admin_token_file: PathBuf,
    pub replication: ReplicationSection,
    pub edges: EdgesSection,
    pub limits: LimitsSection,
    pub runtime: RuntimeSection,
    /// `limits.write_timeout_ms`, or its default.
    pub write_timeout_ms: u64,
    /// The core's settings derived from the sections above.
    pub core: ServerConfig,
}

impl FileConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text` as if read from `path`, then checks that
    /// the certificate files and the admin token it names are readable.
    pub fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigFileError> {
        let config = Self::parse_text(path, text)?;
        config.check_files()?;
        Ok(config)
    }

    /// Everything [`FileConfig::parse`] checks but the files: the TOML and
    /// every key's value and the relations between them. Pure (it reads no
    /// file; `path` only resolves relative paths), so it is what the fuzz
    /// target `config_toml` feeds.
    pub fn parse_text(path: &Path, text: &str) -> Result<FileConfig, ConfigFileError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigFileError::Parse {
            path: path.into(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let invalid = |key: &str, why: String| ConfigFileError::Invalid {
            path: path.into(),
            key: key.into(),
            why,
        };
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        if raw.name.is_empty()
            || !raw
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(invalid(
                "name",
                format!(
                    "{:?} must be a non-empty certificate name (letters, digits, - _ .)",
                    raw.name
                ),
            ));
        }
        let addr = |key: &str, v: &str| -> Result<SocketAddr, ConfigFileError> {
            v.parse().map_err(|e| {
                invalid(
                    key,
                    format!("{v:?} is not an address like 127.0.0.1:7443 ({e})"),
                )
            })
        };
        let admin_listen = addr("admin_listen", &raw.admin_listen)?;
        let peer_listen = addr("peer_listen", &raw.peer_listen)?;
        let edge_listen = addr("edge_listen", &raw.edge_listen)?;
        for (k1, a1, k2, a2) in [
            ("admin_listen", admin_listen, "peer_listen", peer_listen),
            ("admin_listen", admin_listen, "edge_listen", edge_listen),
            ("peer_listen", peer_listen, "edge_listen", edge_listen),
        ] {
            if a1 == a2 && a1.port() != 0 {
                return Err(invalid(
                    k2,
                    format!("{a2} is also `{k1}`; give each listener its own port"),
                ));
            }
        }
        let policy = match raw.replication.on_standby_loss.as_str() {
            "degrade" => OnStandbyLoss::Degrade,
            "block" => OnStandbyLoss::Block,
            other => {
                return Err(invalid(
                    "replication.on_standby_loss",
                    format!("{other:?} is neither \"degrade\" nor \"block\""),
                ))
            }
        };
        let r = &raw.replication;
        let core = ServerConfig {
            peer_heartbeat_interval_ms: r.peer_heartbeat_interval_ms,
            peer_failure_threshold: r.peer_failure_threshold,
            standby_grace_ms: r.standby_grace_ms,
            on_standby_loss: policy,
            max_batch_entries: r.max_batch_entries,
            max_batch_bytes: r.max_batch_bytes,
            max_inflight_entries: r.max_inflight_entries,
            log_window_entries: r.log_window_entries,
            log_window_bytes: r.log_window_bytes,
            max_inflight_bytes: r.max_inflight_bytes,
            max_pending_bytes: r.max_pending_bytes,
            max_sample_bytes: raw.monitoring.max_sample_bytes,
            max_sample_bytes_per_s: raw.monitoring.max_sample_bytes_per_s,
            retain_samples_per_client: raw.monitoring.retain_samples_per_client,
            max_pending_writes: raw.limits.max_pending_writes,
            max_clients: raw.edges.max_clients,
            switchover_max_ticks: r.switchover_max_ticks,
            ..ServerConfig::default()
        };
        core.validate().map_err(|e| invalid(e.key, e.why))?;
        let range = |key: &'static str, v: u64, min: u64, max: u64, unit: &str| {
            check_range(key, v, min, max, unit).map_err(|e| invalid(e.key, e.why))
        };
        let l = &raw.limits;
        range(
            "limits.max_frame_bytes",
            l.max_frame_bytes as u64,
            vcodr_core::codec::MIN_MAX_FRAME_BYTES as u64,
            vcodr_transport::MAX_FRAME_BYTES_LIMIT as u64,
            "bytes",
        )?;
        if l.max_frame_bytes < 2 * r.max_batch_bytes {
            return Err(invalid(
                "limits.max_frame_bytes",
                format!(
                    "{} must be at least twice replication.max_batch_bytes ({})",
                    l.max_frame_bytes, r.max_batch_bytes
                ),
            ));
        }
        let conns = bounds::ADMIN_CONNECTIONS_MAX as u64;
        range(
            "limits.max_admin_connections",
            l.max_admin_connections as u64,
            1,
            conns,
            "",
        )?;
        range(
            "limits.max_admin_requests",
            l.max_admin_requests as u64,
            1,
            conns,
            "",
        )?;
        if l.max_admin_requests > l.max_admin_connections {
            return Err(invalid(
                "limits.max_admin_requests",
                format!(
                    "{} is above limits.max_admin_connections ({}): each request needs a connection of \
                     its own (HTTP/1.1), so lower it or raise max_admin_connections",
                    l.max_admin_requests, l.max_admin_connections
                ),
            ));
        }
        let t_min = bounds::ADMIN_TIMEOUT_MS_MIN;
        range(
            "limits.admin_handshake_timeout_ms",
            l.admin_handshake_timeout_ms,
            t_min,
            bounds::ADMIN_HANDSHAKE_TIMEOUT_MS_MAX,
            "ms",
        )?;
        range(
            "limits.admin_header_timeout_ms",
            l.admin_header_timeout_ms,
            t_min,
            bounds::ADMIN_HEADER_TIMEOUT_MS_MAX,
            "ms",
        )?;
        range(
            "limits.admin_idle_timeout_ms",
            l.admin_idle_timeout_ms,
            t_min,
            bounds::ADMIN_HEADER_TIMEOUT_MS_MAX,
            "ms",
        )?;
        if l.admin_idle_timeout_ms > l.admin_header_timeout_ms {
            // hyper's header timer also runs while a connection waits for
            // its next request: a longer idle timeout would never apply.
            return Err(invalid(
                "limits.admin_idle_timeout_ms",
                format!(
                    "{} ms is above limits.admin_header_timeout_ms ({} ms), which also bounds how long a \
                     connection may wait for its next request; lower it or raise the header timeout",
                    l.admin_idle_timeout_ms, l.admin_header_timeout_ms
                ),
            ));
        }
        range(
            "runtime.worker_threads",
            raw.runtime.worker_threads as u64,
            1,
            bounds::WORKER_THREADS_MAX,
            "",
        )?;
        let write_timeout_ms = l
            .write_timeout_ms
            .unwrap_or_else(|| default_write_timeout_ms(&core));
        range(
            "limits.write_timeout_ms",
            write_timeout_ms,
            1_000,
            bounds::WRITE_TIMEOUT_MS_MAX,
            "ms",
        )?;
        let grace_within = grace_decides_within_ms(&core);
        if write_timeout_ms <= grace_within {
            return Err(invalid(
                "limits.write_timeout_ms",
                format!(
                    "{write_timeout_ms} ms does not exceed the longest wait for the grace ({grace_within} ms \
                     = replication.standby_grace_ms + (peer_failure_threshold + 1) × \
                     peer_heartbeat_interval_ms): writes waiting for a lost standby would time out as \
                     \"outcome unknown\" before on_standby_loss decides; raise it (or leave it unset: \
                     {} ms) or lower the grace",
                    default_write_timeout_ms(&core)
                ),
            ));
        }
        let switchover_ms = core
            .peer_heartbeat_interval_ms
            .saturating_mul(u64::from(core.switchover_max_ticks));
        if write_timeout_ms <= switchover_ms {
            return Err(invalid(
                "limits.write_timeout_ms",
                format!(
                    "{write_timeout_ms} ms does not exceed a planned switchover's longest run ({switchover_ms} ms \
                     = replication.switchover_max_ticks × peer_heartbeat_interval_ms): \
                     promoteStandbyToActive {{force}} would time out before it ends"
                ),
            ));
        }
        parse_quic_driver(&raw.edges.quic_driver)
            .map_err(|why| invalid("edges.quic_driver", why))?;
        range(
            "edges.heartbeat_interval_ms",
            raw.edges.heartbeat_interval_ms,
            10,
            vcodr_core::config::bounds::EDGE_HEARTBEAT_INTERVAL_MS_MAX,
            "ms",
        )?;
        range(
            "edges.contact_save_interval_ms",
            raw.edges.contact_save_interval_ms,
            100,
            bounds::CONTACT_SAVE_INTERVAL_MS_MAX,
            "ms",
        )?;
        let tls_dir = resolve(&raw.tls_dir);
        let admin_token_file = resolve(
            &raw.admin_token_file
                .unwrap_or_else(|| raw.tls_dir.join("admin.token")),
        );
        let data_dir = resolve(
            &raw.data_dir
                .unwrap_or_else(|| PathBuf::from("data").join(&raw.name)),
        );
        let advertise =
            |given: Option<String>, listen: SocketAddr| given.unwrap_or_else(|| listen.to_string());
        Ok(FileConfig {
            path: path.into(),
            advertise_peer: advertise(raw.advertise_peer, peer_listen),
            advertise_edge: advertise(raw.advertise_edge, edge_listen),
            advertise_admin: advertise(raw.advertise_admin, admin_listen),
            name: raw.name,
            data_dir,
            admin_listen,
            peer_listen,
            edge_listen,
            tls_dir,
            admin_token_file,
            replication: raw.replication,
            edges: raw.edges,
            limits: raw.limits,
            runtime: raw.runtime,
            write_timeout_ms,
            core,
        })
    }

    /// The certificate files of `tls_dir` and the admin token: readable,
    /// and the token long enough.
    fn check_files(&self) -> Result<(), ConfigFileError> {
        let invalid = |key: &str, why: String| ConfigFileError::Invalid {
            path: self.path.clone(),
            key: key.into(),
            why,
        };
        let tls_dir = &self.tls_dir;
        for file in [
            "ca.pem".to_string(),
            format!("{}.pem", self.name),
            format!("{}.key", self.name),
        ] {
            let p = tls_dir.join(&file);
            if let Err(e) = std::fs::metadata(&p) {
                return Err(invalid(
                    "tls_dir",
                    format!(
                        "{} is not readable ({e}); run `vcodr certs init --out {} --servers {}`",
                        p.display(),
                        tls_dir.display(),
                        self.name
                    ),
                ));
            }
        }
        let admin_token_file = &self.admin_token_file;
        match std::fs::read_to_string(admin_token_file) {
            Ok(t) if t.trim().len() >= 16 => Ok(()),
            Ok(_) => Err(invalid(
                "admin_token_file",
                format!(
                    "{} holds a token shorter than 16 characters",
                    admin_token_file.display()
                ),
            )),
            Err(e) => Err(invalid(
                "admin_token_file",
                format!("{} is not readable ({e})", admin_token_file.display()),
            )),
        }
    }

    /// The admin token, trimmed.
    pub fn admin_token(&self) -> std::io::Result<String> {
        Ok(std::fs::read_to_string(&self.admin_token_file)?
            .trim()
            .to_string())
    }
}

#[cfg(test)]
mod tests;
