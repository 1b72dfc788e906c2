//! `vcodr edge-sim`: many simulated edges and gateways in one process. Each is
//! a real `vcodr-core` [`Edge`] with its own client certificate identity and
//! its own QUIC connections to both servers (one UDP socket per 1,000 edges),
//! heartbeating with jitter, pulling configuration and sending monitoring.

use crate::driver::links::{edge_link_settings, EdgeLink, ANY_SERVER_NAME};
use anyhow::Context;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicU8,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Semaphore};
use vcodr_core::rng::Rng;
use vcodr_core::*;
use vcodr_transport::certs::{CertRole, CertificateAuthority};
use vcodr_transport::quic::QuicTransport;
use vcodr_transport::reconnect::Backoff;
use vcodr_transport::{Connection, QuicDriver, RequestError, Settings, Transport};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimSettings {
    /// Edge addresses of the two servers, as the servers advertise them.
    pub servers: [String; 2],
    pub count: usize,
    /// Every `gateway_every`-th client is a gateway (0: none).
    pub gateway_every: usize,
    /// Client ids are `<prefix>-<i>`.
    pub id_prefix: String,
    pub heartbeat_interval_ms: u64,
    /// One monitoring sample per edge every this many ms (0: none).
    pub sample_interval_ms: u64,
    pub sample_bytes: usize,
    pub cache_bytes: usize,
    /// Handshakes in flight at once (loopback UDP buffers overflow beyond a few dozen).
    pub handshake_concurrency: usize,
    /// Who drives the simulator's QUIC connections.
    pub quic_driver: QuicDriver,
    /// Where the simulator's UDP sockets bind (port 0: any). `None`: the
    /// unspecified address of the servers' family ([`bind_address_for`]), so
    /// that the OS picks the source address of the route to each server.
    pub bind: Option<SocketAddr>,
    pub seed: u64,
}

/// The address a client socket binds to reach `servers`: `0.0.0.0:0` for
/// IPv4 servers, `[::]:0` (dual stack) if any is IPv6. Never a loopback
/// address: a socket bound to `127.0.0.1` cannot send anywhere else (every
/// send fails with `EINVAL`).
pub fn bind_address_for(servers: &[SocketAddr]) -> SocketAddr {
    if servers.iter().any(SocketAddr::is_ipv6) {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    }
}

/// `server` as a dual-stack IPv6 socket reaches it: an IPv4 address as
/// `::ffff:a.b.c.d`, when the socket is IPv6.
fn dial_address(server: SocketAddr, bound: SocketAddr) -> SocketAddr {
    match (server, bound) {
        (SocketAddr::V4(v4), SocketAddr::V6(_)) => {
            SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port()))
        }
        _ => server,
    }
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            servers: [String::new(), String::new()],
            count: 100,
            gateway_every: 10,
            id_prefix: "edge".into(),
            heartbeat_interval_ms: 10_000,
            sample_interval_ms: 1_000,
            sample_bytes: 64,
            cache_bytes: 1024 * 1024,
            handshake_concurrency: 48,
            quic_driver: QuicDriver::Hub,
            bind: None,
            seed: 1,
        }
    }
}

/// Latency histogram with log-linear microsecond buckets.
#[derive(Debug)]
pub struct RttHistogram {
    /// Four buckets per power of two of microseconds (at most 25 % wide),
    /// up to ~2^40 µs.
    buckets: [AtomicU64; RTT_BUCKETS],
}

/// 1 µs wide up to 7 µs, then four per power of two up to ~2^40 µs.
const RTT_BUCKETS: usize = 4 + 4 * 38;

impl Default for RttHistogram {
    fn default() -> Self {
        RttHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl RttHistogram {
    fn bucket(us: u64) -> usize {
        if us < 4 {
            return us as usize;
        }
        let exp = 63 - us.leading_zeros() as usize;
        let sub = ((us >> (exp - 2)) & 3) as usize;
        (4 + (exp - 2) * 4 + sub).min(RTT_BUCKETS - 1)
    }

    /// Largest value (µs) that falls in bucket `i`.
    fn upper_us(i: usize) -> u64 {
        if i < 4 {
            return i as u64;
        }
        let (exp, sub) = ((i - 4) / 4 + 2, ((i - 4) % 4) as u64);
        ((4 + sub + 1) << (exp - 2)) - 1
    }

    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.buckets[Self::bucket(us)].fetch_add(1, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// Forgets every observation (e.g. those of the connection ramp).
    pub fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Relaxed);
        }
    }

    /// Upper bound of the bucket holding quantile `q`, in microseconds.
    pub fn quantile_us(&self, q: f64) -> u64 {
        let n = self.count();
        if n == 0 {
            return 0;
        }
        let target = ((n as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Relaxed);
            if seen >= target {
                return Self::upper_us(i);
            }
        }
        Self::upper_us(RTT_BUCKETS - 1)
    }
}

/// Shared counters of the simulation.
#[derive(Debug, Default)]
pub struct Stats {
    pub heartbeats: AtomicU64,
    pub rtt: RttHistogram,
    /// Requests that failed otherwise (the link broke): the edge redials.
    pub request_errors: AtomicU64,
    /// Heartbeats (datagrams) or their replies lost: the edge counts a miss.
    pub heartbeats_lost: AtomicU64,
    pub connect_failures: AtomicU64,
    pub samples_generated: AtomicU64,
    pub samples_acked: AtomicU64,
    pub configs_applied: AtomicU64,
    pub follow_changes: AtomicU64,
}

/// Per-edge state visible to the summary.
#[derive(Debug, Default)]
struct EdgeView {
    /// 0: nobody, 1: server 0, 2: server 1.
    following: AtomicU8,
    cached: AtomicU64,
    dropped: AtomicU64,
    /// Highest sample seq acknowledged.
    acked_seq: AtomicU64,
    /// Seq of the last sample generated (samples are numbered from 1).
    generated: AtomicU64,
    /// Replies received from each server.
    replies: [AtomicU64; 2],
    /// The edge has seen the pause and will generate no further sample.
    paused: AtomicBool,
}

/// A snapshot of the simulation, for the live line and the final report.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub edges: usize,
    pub following: [u64; 2],
    pub following_none: u64,
    pub cached_samples: u64,
    pub dropped_samples: u64,
    pub samples_generated: u64,
    pub samples_acked: u64,
    pub heartbeats: u64,
    pub heartbeat_p50_us: u64,
    pub heartbeat_p99_us: u64,
    pub request_errors: u64,
    pub heartbeats_lost: u64,
    pub connect_failures: u64,
    /// UDP sends the OS refused (every packet of a socket that cannot reach
    /// the servers, e.g. one bound to loopback: `EINVAL`).
    pub send_failures: u64,
    pub configs_applied: u64,
    pub follow_changes: u64,
}

impl Summary {
    /// The live one-line summary.
    pub fn line(&self, servers: &[String; 2]) -> String {
        format!(
            "edges {} | following {}: {} | {}: {} | nobody: {} | cached {} dropped {} | hb {} p50 {:.2} ms p99 {:.2} ms lost {} | errors {} | connect failures {} | send failures {}",
            self.edges,
            servers[0],
            self.following[0],
            servers[1],
            self.following[1],
            self.following_none,
            self.cached_samples,
            self.dropped_samples,
            self.heartbeats,
            self.heartbeat_p50_us as f64 / 1000.0,
            self.heartbeat_p99_us as f64 / 1000.0,
            self.heartbeats_lost,
            self.request_errors,
            self.connect_failures,
            self.send_failures
        )
    }
}

/// One edge's own view of its monitoring samples ([`EdgeSim::edges`]).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EdgeReport {
    pub client_id: String,
    /// The server it follows (0 or 1, as in `--servers`), if any.
    pub following: Option<usize>,
    /// Seq of its last sample (samples are numbered 1, 2, …): how many it generated.
    pub generated: u64,
    /// Highest seq a server acknowledged as durable.
    pub acked_seq: u64,
    /// Samples kept until acknowledged.
    pub cached: u64,
    /// Samples dropped because the cache was full (oldest first).
    pub dropped: u64,
    /// It has seen the pause and generates no more samples.
    pub paused: bool,
    /// Replies it received from each server (0 and 1, as in `--servers`):
    /// a count that grows says the edge reaches that server now.
    pub replies: [u64; 2],
}

/// Edges sharing one UDP socket in the simulator.
const EDGES_PER_SOCKET: usize = 1_000;

/// A running simulation.
pub struct EdgeSim {
    pub settings: SimSettings,
    pub stats: Arc<Stats>,
    views: Arc<Vec<EdgeView>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    sockets: Vec<QuicTransport<EdgeLink>>,
}

impl std::fmt::Debug for EdgeSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeSim")
            .field("edges", &self.views.len())
            .finish_non_exhaustive()
    }
}

impl EdgeSim {
    /// Issues a client certificate per edge from `ca` and starts every edge.
    pub async fn start(
        ca: &CertificateAuthority,
        settings: SimSettings,
    ) -> anyhow::Result<EdgeSim> {
        let servers: Vec<SocketAddr> = settings
            .servers
            .iter()
            .map(|s| {
                s.parse().with_context(|| {
                    format!("--servers: {s:?} is not IP:port (the edge_listen a server advertises)")
                })
            })
            .collect::<Result<_, _>>()?;
        let bind = settings.bind.unwrap_or_else(|| bind_address_for(&servers));
        let tsettings = edge_link_settings(
            Settings {
                udp_buffer_bytes: 16 * 1024 * 1024,
                max_pending_accepts: 16,
                ..Settings::default()
            },
            Duration::from_millis(settings.heartbeat_interval_ms),
            settings.quic_driver,
        );
        // One UDP socket (quinn endpoint, whose receive loop is one task) per
        // `EDGES_PER_SOCKET` edges, so that receiving spreads over the cores.
        let sockets = settings.count.div_ceil(EDGES_PER_SOCKET).max(1);
        let first = ca.issue_identity(&format!("{}-sim", settings.id_prefix), CertRole::Edge)?;
        let bases = (0..sockets)
            .map(|_| {
                QuicTransport::<EdgeLink>::bind(bind, first.clone(), tsettings.clone())
                    .with_context(|| {
                        format!("binding one of the edge simulator's UDP sockets to {bind}")
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let stats = Arc::new(Stats::default());
        let views: Arc<Vec<EdgeView>> =
            Arc::new((0..settings.count).map(|_| EdgeView::default()).collect());
        let (stop, stop_rx) = watch::channel(false);
        let handshakes = Arc::new(Semaphore::new(settings.handshake_concurrency.max(1)));
        let mut tasks = Vec::with_capacity(settings.count);
        let mut rng = Rng::new(settings.seed);
        for i in 0..settings.count {
            let id = format!("{}-{}", settings.id_prefix, i + 1);
            let client_type = if settings.gateway_every > 0 && (i + 1) % settings.gateway_every == 0
            {
                ClientType::Gateway
            } else {
                ClientType::Edge
            };
            // A gateway's certificate says so: servers check the type against it.
            let role = match client_type {
                ClientType::Edge => CertRole::Edge,
                ClientType::Gateway => CertRole::Gateway,
            };
            let identity = ca
                .issue_identity(&id, role)
                .with_context(|| format!("issuing a certificate for {id}"))?;
            let transport = bases[i / EDGES_PER_SOCKET].with_identity(identity)?;
            let mut cfg = EdgeConfig::new(id, client_type, settings.servers.clone());
            cfg.heartbeat_interval_ms = settings.heartbeat_interval_ms;
            cfg.cache_max_bytes = settings.cache_bytes;
            cfg.seed = rng.next_u64();
            cfg.validate()?;
            let start_delay =
                Duration::from_millis(rng.range(0, settings.heartbeat_interval_ms.min(5_000)));
            let ctx = EdgeCtx {
                index: i,
                cfg,
                servers: [servers[0], servers[1]].map(|a| dial_address(a, bind)),
                transport: Arc::new(transport),
                stats: stats.clone(),
                views: views.clone(),
                handshakes: handshakes.clone(),
                sample_interval: (settings.sample_interval_ms > 0)
                    .then(|| Duration::from_millis(settings.sample_interval_ms)),
                sample_bytes: settings.sample_bytes,
                start_delay,
                // Each edge's first sample at its own moment, so that a fleet
                // samples evenly from the start, not all at once (or, with
                // minutes between samples, not at all in a short run).
                sample_phase: Duration::from_millis(
                    rng.range(0, settings.sample_interval_ms.max(1)),
                ),
            };
            tasks.push(tokio::spawn(run_edge(ctx, stop_rx.clone())));
        }
        Ok(EdgeSim {
            settings,
            stats,
            views,
            stop,
            tasks,
            sockets: bases,
        })
    }

    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            edges: self.views.len(),
            following: [0, 0],
            following_none: 0,
            cached_samples: 0,
            dropped_samples: 0,
            samples_generated: self.stats.samples_generated.load(Relaxed),
            samples_acked: self.stats.samples_acked.load(Relaxed),
            heartbeats: self.stats.heartbeats.load(Relaxed),
            heartbeat_p50_us: self.stats.rtt.quantile_us(0.5),
            heartbeat_p99_us: self.stats.rtt.quantile_us(0.99),
            request_errors: self.stats.request_errors.load(Relaxed),
            heartbeats_lost: self.stats.heartbeats_lost.load(Relaxed),
            connect_failures: self.stats.connect_failures.load(Relaxed),
            send_failures: self.sockets.iter().map(|t| t.udp_send_failures()).sum(),
            configs_applied: self.stats.configs_applied.load(Relaxed),
            follow_changes: self.stats.follow_changes.load(Relaxed),
        };
        for v in self.views.iter() {
            match v.following.load(Relaxed) {
                1 => s.following[0] += 1,
                2 => s.following[1] += 1,
                _ => s.following_none += 1,
            }
            s.cached_samples += v.cached.load(Relaxed);
            s.dropped_samples += v.dropped.load(Relaxed);
        }
        s
    }

    /// Highest sample seq acknowledged for edge `i` (0-based).
    pub fn acked_seq(&self, i: usize) -> u64 {
        self.views[i].acked_seq.load(Relaxed)
    }

    /// Client id of edge `i` (0-based).
    pub fn client_id(&self, i: usize) -> String {
        format!("{}-{}", self.settings.id_prefix, i + 1)
    }

    /// Stops generating samples but keeps heartbeating and flushing.
    ///
    /// Returns once every edge has seen the pause (false if `timeout` passed
    /// first): from then on each edge's cached count covers every sample it
    /// will ever send, so "caches empty" means "everything acknowledged".
    pub async fn pause_samples(&self, timeout: Duration) -> bool {
        let _ = self.stop.send(true);
        let deadline = Instant::now() + timeout;
        loop {
            if self.views.iter().all(|v| v.paused.load(Acquire)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Generates samples again after [`EdgeSim::pause_samples`].
    pub fn resume_samples(&self) {
        let _ = self.stop.send(false);
    }

    /// Every edge's own counts, in edge order: what a harness compares with
    /// what the servers stored.
    pub fn edges(&self) -> Vec<EdgeReport> {
        self.views
            .iter()
            .enumerate()
            .map(|(i, v)| EdgeReport {
                client_id: self.client_id(i),
                following: match v.following.load(Relaxed) {
                    1 => Some(0),
                    2 => Some(1),
                    _ => None,
                },
                generated: v.generated.load(Relaxed),
                acked_seq: v.acked_seq.load(Relaxed),
                cached: v.cached.load(Relaxed),
                dropped: v.dropped.load(Relaxed),
                paused: v.paused.load(Acquire),
                replies: [v.replies[0].load(Relaxed), v.replies[1].load(Relaxed)],
            })
            .collect()
    }

    /// Stops every edge.
    pub async fn stop(self) -> Summary {
        let _ = self.stop.send(true);
        let s = self.summary();
        for t in self.tasks {
            t.abort();
        }
        s
    }
}

struct EdgeCtx {
    index: usize,
    cfg: EdgeConfig,
    servers: [SocketAddr; 2],
    transport: Arc<QuicTransport<EdgeLink>>,
    stats: Arc<Stats>,
    views: Arc<Vec<EdgeView>>,
    handshakes: Arc<Semaphore>,
    sample_interval: Option<Duration>,
    sample_bytes: usize,
    start_delay: Duration,
    sample_phase: Duration,
}

/// One server link of one edge: connected, or reconnecting in the background.
enum Link {
    Up(Arc<Connection<EdgeLink>>),
    Connecting,
    Down,
}

async fn run_edge(ctx: EdgeCtx, mut stop: watch::Receiver<bool>) {
    tokio::time::sleep(ctx.start_delay).await;
    let started = Instant::now();
    let ms = |started: Instant| started.elapsed().as_millis() as u64;
    let mut edge = Edge::new(ctx.cfg.clone(), 0);
    let (tx, mut rx) = mpsc::channel::<Event>(256);
    let mut links = [Link::Down, Link::Down];
    let mut timer = Instant::now();
    let mut sampling = !*stop.borrow();
    ctx.views[ctx.index].paused.store(!sampling, Release);
    let mut next_sample = ctx
        .sample_interval
        .map(|_| Instant::now() + ctx.sample_phase);
    let mut backoff = [Backoff::standard(), Backoff::standard()];
    let mut lost_in_a_row = [0u32; 2];
    for (i, link) in links.iter_mut().enumerate() {
        *link = Link::Connecting;
        spawn_connect(&ctx, i, Duration::ZERO, tx.clone());
    }
    loop {
        // Carry out the edge's outputs.
        while let Some(out) = edge.poll_output() {
            match out {
                EdgeOutput::Send { server, msg, .. } => match &links[server] {
                    Link::Up(conn) => {
                        let conn = conn.clone();
                        let tx = tx.clone();
                        let stats = ctx.stats.clone();
                        let hb = msg.delivery() == Delivery::Datagram;
                        let hb_wait = Duration::from_millis(ctx.cfg.heartbeat_interval_ms);
                        tokio::spawn(async move {
                            let t0 = Instant::now();
                            // `Err(None)`: a heartbeat unanswered within one
                            // interval, a missed one. The link's request
                            // timeout (10 s) is far longer, and a server that
                            // restarted answers nothing on the old connection:
                            // waiting it out kept edges from redialling for
                            // three times that.
                            let answer = if hb {
                                match tokio::time::timeout(hb_wait, conn.request_datagram(&msg))
                                    .await
                                {
                                    Ok(r) => r.map_err(Some),
                                    Err(_) => Err(None),
                                }
                            } else {
                                conn.request(&msg).await.map_err(Some)
                            };
                            match answer {
                                Ok(reply) => {
                                    if hb {
                                        stats.heartbeats.fetch_add(1, Relaxed);
                                        stats.rtt.observe(t0.elapsed());
                                    }
                                    let _ = tx.send(Event::Reply(server, reply)).await;
                                }
                                // A lost datagram is a missed heartbeat, not yet a dead link.
                                Err(None | Some(RequestError::TimedOut { .. })) if hb => {
                                    stats.heartbeats_lost.fetch_add(1, Relaxed);
                                    let _ = tx.send(Event::HeartbeatLost(server)).await;
                                }
                                Err(e) => {
                                    if let Some(e) = e {
                                        tracing::debug!(server, heartbeat = hb, error = %e, "edge request failed");
                                    }
                                    stats.request_errors.fetch_add(1, Relaxed);
                                    let _ = tx.send(Event::LinkFailed(server)).await;
                                }
                            }
                        });
                    }
                    // Unreachable: the edge counts the missing reply itself.
                    Link::Connecting | Link::Down => {}
                },
                EdgeOutput::SetTimer { after_ms, .. } => {
                    timer = Instant::now() + Duration::from_millis(after_ms)
                }
                EdgeOutput::Event(e) => note(&ctx, &e),
            }
        }
        let v = &ctx.views[ctx.index];
        v.following
            .store(edge.following().map_or(0, |i| i as u8 + 1), Relaxed);
        v.cached.store(edge.cached_samples() as u64, Relaxed);
        v.dropped.store(edge.dropped_samples(), Relaxed);
        for (i, link) in links.iter_mut().enumerate() {
            if matches!(link, Link::Down) {
                *link = Link::Connecting;
                spawn_connect(&ctx, i, backoff[i].next_delay(), tx.clone());
            }
        }
        let sample_at = next_sample.filter(|_| sampling);
        tokio::select! {
            _ = tokio::time::sleep_until(timer.into()) => {
                timer = Instant::now() + Duration::from_secs(3600);
                edge.handle_input(ms(started), EdgeInput::Timeout(EdgeTimer::Heartbeat));
            }
            _ = async { match sample_at { Some(t) => tokio::time::sleep_until(t.into()).await, None => std::future::pending().await } } => {
                if *stop.borrow() {
                    // Paused while the timer raced the stop signal: the
                    // stop branch runs next and records the pause.
                    sampling = false;
                    continue;
                }
                let seq = edge.next_seq();
                let mut payload = format!("{{\"edge\":\"{}\",\"seq\":{seq}}}", ctx.cfg.client_id).into_bytes();
                payload.resize(payload.len().max(ctx.sample_bytes), b' ');
                ctx.stats.samples_generated.fetch_add(1, Relaxed);
                ctx.views[ctx.index].generated.store(seq, Relaxed);
                edge.handle_input(ms(started), EdgeInput::Sample { payload });
                next_sample = ctx.sample_interval.map(|d| Instant::now() + d);
            }
            ev = rx.recv() => match ev {
                Some(Event::Reply(server, msg)) => {
                    lost_in_a_row[server] = 0;
                    ctx.views[ctx.index].replies[server].fetch_add(1, Relaxed);
                    edge.handle_input(ms(started), EdgeInput::Reply { server, msg });
                }
                Some(Event::HeartbeatLost(server)) => {
                    lost_in_a_row[server] += 1;
                    // A server that restarted cannot reset our old connection
                    // (its stateless-reset key is new): after as many misses
                    // in a row as the edge machine counts before it stops
                    // following (`edges.missed_threshold`), redial it.
                    if lost_in_a_row[server] >= ctx.cfg.missed_threshold {
                        if let Link::Up(conn) = &links[server] {
                            conn.close("heartbeats lost; redialling");
                            links[server] = Link::Down;
                        }
                        lost_in_a_row[server] = 0;
                    }
                }
                Some(Event::Connected(server, conn)) => {
                    backoff[server].reset();
                    links[server] = Link::Up(Arc::new(conn));
                }
                Some(Event::LinkFailed(server)) => {
                    if matches!(links[server], Link::Up(_)) {
                        links[server] = Link::Down;
                    }
                }
                Some(Event::ConnectFailed(server)) => links[server] = Link::Down,
                None => return,
            },
            _ = stop.changed() => {
                sampling = !*stop.borrow();
                // Every sample generated so far is already in `cached` (stored
                // at the top of the loop), so a pause seen here is complete.
                ctx.views[ctx.index].paused.store(!sampling, Release);
            }
        }
    }
}

enum Event {
    Reply(usize, ServerMsg),
    HeartbeatLost(usize),
    Connected(usize, Connection<EdgeLink>),
    ConnectFailed(usize),
    LinkFailed(usize),
}

fn spawn_connect(ctx: &EdgeCtx, server: usize, delay: Duration, tx: mpsc::Sender<Event>) {
    let transport = ctx.transport.clone();
    let addr = ctx.servers[server];
    let gate = ctx.handshakes.clone();
    let stats = ctx.stats.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let r = {
            let _permit = gate.acquire().await;
            transport.connect(addr, ANY_SERVER_NAME).await
        };
        let ev = match r {
            Ok(conn) => Event::Connected(server, conn),
            Err(_) => {
                stats.connect_failures.fetch_add(1, Relaxed);
                Event::ConnectFailed(server)
            }
        };
        let _ = tx.send(ev).await;
    });
}

fn note(ctx: &EdgeCtx, e: &EdgeEvent) {
    match e {
        EdgeEvent::SamplesAcked { up_to_seq } => {
            let v = &ctx.views[ctx.index];
            let before = v.acked_seq.fetch_max(*up_to_seq, Relaxed);
            ctx.stats
                .samples_acked
                .fetch_add(up_to_seq.saturating_sub(before), Relaxed);
        }
        EdgeEvent::ConfigApplied { .. } => {
            ctx.stats.configs_applied.fetch_add(1, Relaxed);
        }
        EdgeEvent::Following { .. } => {
            ctx.stats.follow_changes.fetch_add(1, Relaxed);
        }
        EdgeEvent::SamplesDropped { .. }
        | EdgeEvent::HeartbeatRtt { .. }
        | EdgeEvent::RedirectIgnored { .. } => {}
    }
}

/// Longest a `pause` command of `--control` waits for every edge to see it.
pub const CONTROL_PAUSE_WAIT: Duration = Duration::from_secs(30);

/// A command read by `--control` from stdin.
#[derive(Debug)]
enum Control {
    Line(String),
    /// stdin closed: whoever drove the simulator is gone.
    Eof,
}

/// Reads stdin lines on a thread of its own (stdin is blocking).
fn control_lines() -> mpsc::Receiver<Control> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(Control::Line(line)).is_err() {
                return;
            }
        }
        let _ = tx.blocking_send(Control::Eof);
    });
    rx
}

/// Answers one `--control` command (one JSON line); `None`: stop.
async fn control(sim: &EdgeSim, command: &str) -> Option<serde_json::Value> {
    use serde_json::json;
    Some(match command.trim() {
        "report" => json!({ "summary": sim.summary(), "edges": sim.edges() }),
        // Cheap: no per-edge list (a measurement polls it).
        "summary" => json!({ "summary": sim.summary() }),
        // Percentiles from here on (a measurement window starts).
        "reset-latency" => {
            sim.stats.rtt.reset();
            json!({ "summary": sim.summary() })
        }
        "pause" => json!({ "paused": sim.pause_samples(CONTROL_PAUSE_WAIT).await }),
        "resume" => {
            sim.resume_samples();
            json!({ "resumed": true })
        }
        "stop" => return None,
        other => json!({
            "error": format!("unknown command {other:?}: give report, summary, reset-latency, pause, resume or stop")
        }),
    })
}

/// `vcodr edge-sim`: runs until `duration` passes (or SIGINT/SIGTERM), printing a live line.
///
/// With `control`, it also reads commands from stdin, one a line, and
/// answers each with one JSON line on stdout: `report` (the summary and
/// every edge's own sample counts, [`EdgeReport`]), `summary` (the summary
/// alone), `reset-latency` (the summary, then percentiles start again), `pause` (stop
/// generating samples; answered once every edge has seen it, `{"paused":
/// false}` if that took longer than [`CONTROL_PAUSE_WAIT`]), `resume`,
/// `stop`. It stops when stdin closes, so that it never outlives its driver.
pub async fn run_cli(
    certs: &std::path::Path,
    settings: SimSettings,
    duration: Option<Duration>,
    warmup: Duration,
    json: bool,
    control_stdin: bool,
) -> anyhow::Result<Summary> {
    let mut signals = crate::serve::StopSignals::new();
    let ca = CertificateAuthority::load(certs)
        .with_context(|| format!("loading the CA (ca.pem + ca.key) from {}", certs.display()))?;
    let servers = settings.servers.clone();
    let sim = EdgeSim::start(&ca, settings).await?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let mut commands = control_stdin.then(control_lines);
    let deadline = duration.map(|d| Instant::now() + d);
    let mut warmup_ends = (!warmup.is_zero()).then(|| Instant::now() + warmup);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        if warmup_ends.is_some_and(|t| Instant::now() >= t) {
            sim.stats.rtt.reset();
            warmup_ends = None;
        }
        let command = async {
            match commands.as_mut() {
                Some(rx) => rx.recv().await.unwrap_or(Control::Eof),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            _ = signals.recv() => break,
            c = command => match c {
                Control::Line(line) => match control(&sim, &line).await {
                    Some(answer) => {
                        println!("{answer}");
                        continue;
                    }
                    None => break,
                },
                Control::Eof => break,
            },
        }
        let line = sim.summary().line(&servers);
        if json || control_stdin {
            eprintln!("{line}");
        } else {
            bar.set_message(line);
            bar.tick();
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    bar.finish_and_clear();
    Ok(sim.stop().await)
}

#[cfg(test)]
mod tests;
