//! `vcodr serve`: one server process — storage, driver, peer and edge
//! listeners over QUIC, and the admin API over HTTPS.

pub mod config;
pub mod log;
pub mod throttle;

use crate::api::admin::{self, AdminState};
use crate::api::metrics::Metrics;
use crate::driver::links::{edge_link_settings, EdgeLink, EdgeLinks, PeerLink};
use crate::driver::peers::PeerLinks;
use crate::driver::{self, DriverSettings, Handle, Published};
use crate::serve::config::FileConfig;
use crate::serve::throttle::{LogThrottle, THROTTLE_INTERVAL};
use crate::storage::{Storage, WalStorage};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use vcodr_core::{Keys, Server, ServerInfo};
use vcodr_transport::certs::{CertKeys, TlsIdentity};
use vcodr_transport::quic::QuicTransport;
use vcodr_transport::{Settings, Transport};

/// Addresses a running server actually bound (port 0 resolved).
#[derive(Clone, Debug)]
pub struct Bound {
    pub admin: SocketAddr,
    pub peer: SocketAddr,
    pub edge: SocketAddr,
}

/// The server's `vcoUuid`: made once from the OS's randomness and kept in `data_dir/vco-uuid`.
pub fn load_or_make_uuid(data_dir: &Path) -> anyhow::Result<u128> {
    let path = data_dir.join("vco-uuid");
    match std::fs::read_to_string(&path) {
        Ok(s) => u128::from_str_radix(s.trim(), 16).with_context(|| {
            format!(
                "{} does not hold a uuid; remove it only if this is a new server",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let uuid = random_u128()?;
            let tmp = data_dir.join("vco-uuid.tmp");
            std::fs::write(&tmp, format!("{uuid:032x}\n"))
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(uuid)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// 128 random bits from the OS (through ring, already used by TLS).
pub fn random_u128() -> anyhow::Result<u128> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow::anyhow!("the OS random source failed"))?;
    Ok(u128::from_le_bytes(b))
}

/// Exit code of `vcodr serve` after a storage failure (`EX_IOERR` of
/// sysexits.h): the server stopped on purpose (fail-stop) for its supervisor
/// to restart it; at the restart it recovers from its storage file.
pub const EXIT_STORAGE_FAILED: i32 = 74;

/// `vcodr serve` stopped because a storage commit failed (see
/// [`EXIT_STORAGE_FAILED`]).
#[derive(Debug, thiserror::Error)]
#[error("storage failed: {0}; stopped (fail-stop) so that a restart recovers from disk")]
pub struct StorageFailed(pub String);

/// A running server.
pub struct Running {
    pub bound: Bound,
    pub handle: Handle,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The admin listener: stopped last, so in-flight calls get their answers.
    admin: tokio::task::JoinHandle<()>,
    driver: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// Graceful stop: stop accepting, finish in-flight commits, answer what
    /// is left, let the admin connections write their last responses, close links.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        self.handle.shutdown().await;
        let Running {
            driver,
            admin,
            tasks,
            ..
        } = self;
        let _ = driver.await;
        let _ = admin.await;
        for t in tasks {
            t.abort();
        }
    }

    /// After a storage failure (the driver has stopped and answered every
    /// call in flight): the admin connections write those answers, then
    /// everything stops.
    pub async fn stop_after_storage_failure(self) {
        let _ = self.shutdown.send(true);
        self.finish().await;
    }

    async fn finish(self) {
        // The admin listener drains for at most `admin::ADMIN_DRAIN_MAX`.
        let _ = self.admin.await;
        self.driver.abort();
        for t in self.tasks {
            t.abort();
        }
    }
}

fn transport_settings(cfg: &FileConfig) -> Settings {
    Settings {
        max_frame_bytes: cfg.limits.max_frame_bytes,
        hello: vcodr_core::codec::Hello::ours(concat!("vcodr ", env!("CARGO_PKG_VERSION"))),
        ..Settings::default()
    }
}

/// The peer link notices a dead peer within a few peer heartbeats: a process
/// that restarted on the same port cannot reset our old connection (its
/// stateless-reset key is new), so only the idle timeout ends it, and until
/// then everything sent on it — a `NewEpoch` included — is lost.
fn peer_settings(cfg: &FileConfig) -> Settings {
    // Saturating: a huge interval is then refused by the settings check
    // (idle_timeout above the limit) rather than wrapped to a short one.
    let idle = Duration::from_millis(
        cfg.core
            .peer_heartbeat_interval_ms
            .saturating_mul(4)
            .max(1_000),
    );
    Settings {
        idle_timeout: idle,
        keep_alive_interval: idle / 4,
        request_timeout: idle,
        ..transport_settings(cfg)
    }
}

/// Forgets an edge link in [`EdgeLinks`] when its task ends, however it ends.
struct ForgetOnDrop<'a>(&'a EdgeLinks, &'a str, u64);

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.closed(self.1, self.2);
    }
}

/// Starts a server from its validated configuration.
pub async fn start(cfg: &FileConfig) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data_dir {}", cfg.data_dir.display()))?;
    let uuid = load_or_make_uuid(&cfg.data_dir)?;
    // `vcodr.redb` and the write-ahead log `wal/` in front of it.
    let storage = WalStorage::open(&cfg.data_dir)
        .with_context(|| format!("opening storage in {}", cfg.data_dir.display()))?;
    let restored = storage.load().context("loading durable state")?;
    let contacts = storage
        .load_contacts()
        .context("loading the contact table")?;

    let identity = TlsIdentity::load(&cfg.tls_dir, &cfg.name).with_context(|| {
        format!(
            "loading the TLS identity `{}` from {}",
            cfg.name,
            cfg.tls_dir.display()
        )
    })?;
    let settings = transport_settings(cfg);
    let peer_t = Arc::new(
        QuicTransport::<PeerLink>::bind(cfg.peer_listen, identity.clone(), peer_settings(cfg))
            .with_context(|| format!("binding peer_listen {}", cfg.peer_listen))?,
    );
    let edge_settings = edge_link_settings(
        settings,
        Duration::from_millis(cfg.edges.heartbeat_interval_ms),
        cfg.edges.driver(),
    );
    let edge_t = QuicTransport::<EdgeLink>::bind(cfg.edge_listen, identity.clone(), edge_settings)
        .with_context(|| format!("binding edge_listen {}", cfg.edge_listen))?;
    let admin_l = tokio::net::TcpListener::bind(cfg.admin_listen)
        .await
        .with_context(|| format!("binding admin_listen {}", cfg.admin_listen))?;
    let bound = Bound {
        admin: admin_l.local_addr()?,
        peer: peer_t.local_addr(),
        edge: edge_t.local_addr(),
    };
    let port0 = |adv: &str, real: SocketAddr| {
        if adv.ends_with(":0") {
            real.to_string()
        } else {
            adv.to_string()
        }
    };
    let me = ServerInfo {
        uuid,
        name: cfg.name.clone(),
        peer_address: port0(&cfg.advertise_peer, bound.peer),
        edge_address: port0(&cfg.advertise_edge, bound.edge),
        admin_address: port0(&cfg.advertise_admin, bound.admin),
    };
    let mut core_cfg = cfg.core.clone();
    core_cfg.seed = random_u128()? as u64;
    let now = driver::Clock::new().now();
    // Promotions are signed with the key of this server's certificate.
    let keys = CertKeys::new(&identity).with_context(|| {
        format!(
            "the key of certificate `{}` in {} cannot sign epoch proofs",
            cfg.name,
            cfg.tls_dir.display()
        )
    })?;
    let mut core =
        Server::restore(core_cfg, me.clone(), restored, now).with_keys(Keys::new(Arc::new(keys)));
    core.restore_contacts(contacts);
    tracing::info!(
        target: "vcodr::dr",
        event = "start",
        name = %me.name,
        uuid = %format!("{uuid:032x}"),
        role = core.role().as_str(),
        dr_state = core.dr_state().as_str(),
        epoch = core.epoch(),
        peer = %me.peer_address,
        edge = %me.edge_address,
        admin = %me.admin_address,
        "started as {} / {} at epoch {}",
        core.role(),
        core.dr_state(),
        core.epoch()
    );

    let metrics = Arc::new(Metrics::default());
    let throttle = Arc::new(LogThrottle::default());
    let admin_throttle = throttle.clone();
    let dsettings = DriverSettings {
        write_timeout: Duration::from_millis(cfg.write_timeout_ms),
        contact_save_interval: Duration::from_millis(cfg.edges.contact_save_interval_ms),
    };
    let (handle, inbox) = driver::channel(&dsettings, metrics.clone());
    let (pinned, pinned_rx) = watch::channel(core.peer_identity().cloned());
    let peer_links = PeerLinks::new(peer_t.clone(), metrics.clone(), throttle.clone(), pinned_rx);
    let driver = driver::spawn(
        &handle,
        inbox,
        core,
        Box::new(storage),
        peer_links.sink(&handle),
        dsettings,
        Published {
            pinned,
            throttle: throttle.clone(),
        },
    );
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    // Peer listener: every message of an accepted link goes to the driver,
    // with the identity its sender proved; the core decides.
    let peer_l = peer_t.listen()?;
    let peer_refused = peer_l.counts_handle();
    tasks.push(tokio::spawn(peer_links.accept_loop(peer_l, handle.clone())));
    // Edge listener: each request is answered by the core, on the
    // transport's task that received it.
    let mut edge_l = edge_t.listen_with(Some(handle.edge_answerer()))?;
    let edge_refused = edge_l.counts_handle();
    let edge_metrics = metrics.clone();
    let edge_links = Arc::new(EdgeLinks::default());
    tasks.push(tokio::spawn(async move {
        let _keep = edge_t;
        while let Some(mut conn) = edge_l.accept().await {
            let client = conn.peer().as_str().to_string();
            // The transport admits only edge and gateway certificates here.
            if conn.peer().role().client_type().is_none() {
                conn.close("only edge and gateway certificates may use the edge link");
                continue;
            }
            let (link_id, replaced) = edge_links.opened(&client, conn.sender());
            if replaced {
                edge_metrics.edge_links_replaced.fetch_add(1, Relaxed);
            }
            let links = edge_links.clone();
            // Requests go to the answerer and the edge link carries no
            // messages: this task only sees the link close, then forgets it.
            tokio::spawn(async move {
                let _forget = ForgetOnDrop(&links, &client, link_id);
                while conn.recv().await.is_ok() {}
            });
        }
    }));
    // Summaries of throttled log lines, and the listeners' refusal counts.
    let m = metrics.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(THROTTLE_INTERVAL / 10);
        loop {
            tick.tick().await;
            throttle.flush();
            m.handshakes_refused_peer
                .store(peer_refused.counts().refused_handshakes, Relaxed);
            m.handshakes_refused_edge
                .store(edge_refused.counts().refused_handshakes, Relaxed);
        }
    }));
    // Admin API.
    let tls = admin::tls_config(&cfg.tls_dir, &cfg.name)?;
    let token = cfg
        .admin_token()
        .with_context(|| format!("reading {}", cfg.admin_token_file.display()))?;
    let state = AdminState {
        handle: handle.clone(),
        token: Arc::new(token),
        name: Arc::new(cfg.name.clone()),
        throttle: admin_throttle.clone(),
    };
    let limits = cfg.limits.admin();
    warn_if_descriptors_short(limits.max_connections);
    let admin = tokio::spawn(admin::serve(
        admin_l,
        tls,
        state,
        limits,
        metrics.clone(),
        admin_throttle,
        shutdown_rx,
    ));
    let _keep_peer = peer_t;
    Ok(Running {
        bound,
        handle,
        shutdown,
        tasks,
        admin,
        driver,
    })
}

/// Descriptors the process needs beside its admin connections (storage,
/// sockets, the runtime), for [`warn_if_descriptors_short`].
const DESCRIPTORS_BESIDE_ADMIN: u64 = 256;

/// Warns when the open-file limit (`ulimit -n`) cannot hold
/// `limits.max_admin_connections`: beyond it accepts fail instead of being
/// refused and counted.
fn warn_if_descriptors_short(max_connections: usize) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok());
    let need = max_connections as u64 + DESCRIPTORS_BESIDE_ADMIN;
    if let Some(soft) = soft.filter(|s| *s < need) {
        tracing::warn!(
            soft_limit = soft,
            needed = need,
            "the open-file limit ({soft}) is below limits.max_admin_connections + {DESCRIPTORS_BESIDE_ADMIN} \
             ({need}): raise it (ulimit -n, LimitNOFILE=) or lower max_admin_connections"
        );
    }
}

/// `vcodr serve --config FILE`: runs until SIGTERM or ctrl-c, or until a
/// storage commit fails: then it answers the calls in flight as outcome
/// unknown and returns [`StorageFailed`] (the process exits with
/// [`EXIT_STORAGE_FAILED`]).
pub async fn run(cfg: FileConfig) -> anyhow::Result<()> {
    // Listening before the "serving" line: a SIGTERM right after it stops
    // the server cleanly instead of killing it.
    let mut signals = StopSignals::new();
    let running = start(&cfg).await?;
    let b = &running.bound;
    tracing::info!(admin = %b.admin, peer = %b.peer, edge = %b.edge, "serving");
    // A line scripts and tests can wait for.
    println!(
        "vcodr {} serving admin=https://{} peer={} edge={}",
        cfg.name, b.admin, b.peer, b.edge
    );
    let mut failed = running.handle.watch_storage_failure();
    let why = tokio::select! {
        _ = signals.recv() => None,
        f = failed.wait_for(Option::is_some) => f.ok().and_then(|f| f.clone()),
    };
    match why {
        None => {
            tracing::info!("shutting down: finishing in-flight commits");
            running.stop().await;
            Ok(())
        }
        Some(why) => {
            tracing::error!(
                target: "vcodr::storage",
                exit_code = EXIT_STORAGE_FAILED,
                "storage failed ({why}): answered the calls in flight as outcome unknown; exiting with code \
                 {EXIT_STORAGE_FAILED} for the supervisor to restart this server, which then recovers from disk"
            );
            running.stop_after_storage_failure().await;
            Err(StorageFailed(why).into())
        }
    }
}

/// SIGTERM (what systemd and `kill` send) and SIGINT (ctrl-c), handled
/// alike, listened to from [`StopSignals::new`] on: a signal that arrives
/// before [`recv`](StopSignals::recv) is polled is kept, not lost to the
/// default action (which would kill the process uncleanly). `serve`, `demo`
/// and `edge-sim` stop on it.
#[derive(Debug)]
pub struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Starts listening (within a tokio runtime). Should the OS refuse a
    /// handler, that signal keeps its default action, logged.
    pub fn new() -> StopSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let listen = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot handle {name}; it stops this process uncleanly");
                    None
                }
            };
            StopSignals {
                term: listen(SignalKind::terminate(), "SIGTERM"),
                int: listen(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    /// Waits for the first of them; returns its name.
    pub async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = next(&mut self.term) => "SIGTERM",
                () = next(&mut self.int) => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "ctrl-c"
        }
    }
}

impl Default for StopSignals {
    fn default() -> Self {
        Self::new()
    }
}
