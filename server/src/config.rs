//! The server's configuration file (TOML, SPEC §8): every key has a default
//! except the server's identity (`name`) and its listen addresses for peers
//! and edges. Validated at start-up; errors name the file and the key.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;
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
            switchover_max_ticks: c.switchover_max_ticks,
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
    /// Most concurrent admin API requests.
    pub max_admin_requests: usize,
    /// Longest an admin write waits for its acknowledgement before the
    /// caller is told the outcome is unknown.
    pub write_timeout_ms: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_frame_bytes: vcodr_core::codec::DEFAULT_MAX_FRAME_BYTES,
            max_pending_writes: ServerConfig::default().max_pending_writes,
            max_admin_requests: 256,
            write_timeout_ms: 30_000,
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
    limits: LimitsSection,
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
            max_pending_writes: raw.limits.max_pending_writes,
            max_clients: raw.edges.max_clients,
            switchover_max_ticks: r.switchover_max_ticks,
            ..ServerConfig::default()
        };
        core.validate().map_err(|e| invalid(e.key, e.why))?;
        let l = &raw.limits;
        if l.max_frame_bytes < vcodr_core::codec::MIN_MAX_FRAME_BYTES
            || l.max_frame_bytes < 2 * r.max_batch_bytes
        {
            return Err(invalid(
                "limits.max_frame_bytes",
                format!(
                    "{} must be at least twice replication.max_batch_bytes ({})",
                    l.max_frame_bytes, r.max_batch_bytes
                ),
            ));
        }
        if l.max_admin_requests == 0 {
            return Err(invalid(
                "limits.max_admin_requests",
                "must be at least 1".into(),
            ));
        }
        if l.write_timeout_ms < r.peer_heartbeat_interval_ms {
            return Err(invalid(
                "limits.write_timeout_ms",
                "must be at least one peer heartbeat interval".into(),
            ));
        }
        parse_quic_driver(&raw.edges.quic_driver)
            .map_err(|why| invalid("edges.quic_driver", why))?;
        if raw.edges.heartbeat_interval_ms < 10 || raw.edges.contact_save_interval_ms < 100 {
            return Err(invalid(
                "edges",
                "heartbeat_interval_ms ≥ 10 and contact_save_interval_ms ≥ 100".into(),
            ));
        }
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
mod tests {
    use super::*;

    fn setup() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs).expect("mkdir");
        for f in ["ca.pem", "a.pem", "a.key"] {
            std::fs::write(certs.join(f), "x").expect("write");
        }
        std::fs::write(certs.join("admin.token"), "0123456789abcdef0123").expect("write");
        dir
    }

    const MINIMAL: &str =
        "name = \"a\"\npeer_listen = \"127.0.0.1:7443\"\nedge_listen = \"127.0.0.1:7444\"\n";

    #[test]
    fn minimal_file_gets_every_default() {
        let dir = setup();
        let path = dir.path().join("a.toml");
        let c = FileConfig::parse(&path, MINIMAL).expect("valid");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:8443");
        assert_eq!(c.data_dir, dir.path().join("data/a"));
        assert_eq!(c.admin_token_file, dir.path().join("certs/admin.token"));
        assert_eq!(c.core.on_standby_loss, OnStandbyLoss::Degrade);
        assert_eq!(c.core.standby_grace_ms, 60_000);
        assert_eq!(c.advertise_peer, "127.0.0.1:7443");
        assert_eq!(c.edges.driver(), QuicDriver::Hub);
        let quinn = format!("{MINIMAL}[edges]\nquic_driver = \"quinn\"\n");
        let c = FileConfig::parse(&path, &quinn).expect("valid");
        assert_eq!(c.edges.driver(), QuicDriver::Quinn);
    }

    #[test]
    fn errors_name_the_key() {
        let dir = setup();
        let path = dir.path().join("a.toml");
        let cases = [
            (format!("{MINIMAL}[replication]\non_standby_loss = \"maybe\"\n"), "replication.on_standby_loss"),
            (format!("{MINIMAL}[replication]\nstandby_grace_ms = 10\n"), "replication.standby_grace_ms"),
            (format!("{MINIMAL}[edges]\nquic_driver = \"tokio\"\n"), "edges.quic_driver"),
            ("name = \"a\"\npeer_listen = \"nowhere\"\nedge_listen = \"127.0.0.1:7444\"\n".into(), "peer_listen"),
            ("name = \"a\"\npeer_listen = \"127.0.0.1:7443\"\nedge_listen = \"127.0.0.1:7443\"\n".into(), "edge_listen"),
            (MINIMAL.replace("name = \"a\"", "name = \"zz\""), "tls_dir"),
        ];
        for (text, key) in cases {
            let err = FileConfig::parse(&path, &text).unwrap_err();
            assert!(
                err.to_string().contains(&format!("key `{key}`")),
                "{key}: {err}"
            );
        }
        let err = FileConfig::parse(&path, &format!("{MINIMAL}colour = \"blue\"\n")).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let err = FileConfig::parse(&path, "peer_listen = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.to_string().contains("name"), "{err}");
    }
}
