//! The hub driver ([`QuicDriver::Hub`](crate::QuicDriver::Hub)): one task
//! owns a UDP socket, a `quinn-proto` endpoint and every connection on it,
//! and speaks exactly the wire protocol of the quinn driver (hello on the
//! first bidirectional stream, a stream per request, datagram requests with
//! their 9-byte header, one ordered unidirectional stream per direction).
//!
//! Why: quinn runs a task, a channel and a lock per connection, and the
//! links above it four more tasks each; with 10,000 mostly idle edges every
//! heartbeat then wakes half a dozen tasks across threads. Here a batch of
//! received packets is decrypted, dispatched and answered by one task, and
//! a heartbeat costs one wake-up of the application per request, or none
//! when the listener has an [`Answerer`](crate::Answerer): the hub then
//! answers it in the same turn.
//!
//! The application sees the same [`Connection`], [`Responder`](crate::Responder) and
//! [`Listener`](crate::Listener) as with quinn; what it asks for travels to the hub as a
//! [`LinkCmd`] (no waiting: responses, requests, closes) and comes back on
//! a oneshot or the link's incoming queue.
//!
//! # Layout
//! - this module: the handles ([`HubHandle`], [`LinkCmd`], [`Ctl`]) and the
//!   [`Hub`] task itself: socket in and out, the endpoint, timers, and
//!   driving every connection that something happened to ([`Hub::flush`]);
//! - `conn`: one connection's state and life, the link handles, closing;
//! - `handshake`: after TLS, the hello either way and the link handed over;
//! - `streams`: a live link's streams and datagrams.
//!
//! What the bytes mean is [`super::wire`]'s; TLS is [`super::tls`]'s.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::socket::ReadOnlyRegistration;
use bytes::BytesMut;
use quinn::udp;
use quinn_proto as proto;
use quinn_proto::{ConnectionError, ConnectionHandle, DatagramEvent, StreamId, VarInt};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tracing::{debug, warn};

use super::tls::count_refused_attempt;
use super::wire::code;
use crate::error::{ConnectError, SetupError};
use crate::link::{Answerer, Connection, ListenerStats, RequestFailure};
use crate::settings::Settings;
use crate::Protocol;

mod conn;
mod handshake;
mod streams;

use conn::{on_event, settle, shut, Conn, Phase};
pub(crate) use conn::{HubLink, HubReply};
use streams::StreamTask;

/// A connection as the hub names it: quinn-proto's handle (reused after a
/// connection is gone) and a generation that is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConnKey {
    handle: ConnectionHandle,
    generation: u64,
}

/// Where a response goes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ReplyTo {
    Stream(StreamId),
    Datagram(u64),
}

type AnswerTx = oneshot::Sender<Result<Vec<u8>, RequestFailure>>;

/// What a link's handles ask of the hub.
pub(crate) enum LinkCmd {
    Request {
        key: ConnKey,
        id: u64,
        frame: Vec<u8>,
        datagram: bool,
        answer: AnswerTx,
    },
    /// The requester gave up (timed out or dropped its future).
    Cancel {
        key: ConnKey,
        id: u64,
    },
    /// `None`: the responder was dropped unanswered.
    Respond {
        key: ConnKey,
        to: ReplyTo,
        frame: Option<Vec<u8>>,
    },
    /// A frame of the ordered stream; the permit is returned once it is
    /// written into QUIC's send buffer (backpressure).
    Send {
        key: ConnKey,
        frame: Vec<u8>,
        permit: OwnedSemaphorePermit,
    },
    Close {
        key: ConnKey,
        reason: String,
    },
    /// The application read from a full incoming queue: deliver what waits.
    Unpark {
        key: ConnKey,
    },
}

/// What the transport asks of the hub.
pub(crate) enum Ctl<P: Protocol> {
    Connect {
        config: proto::ClientConfig,
        addr: SocketAddr,
        server_name: String,
        reply: oneshot::Sender<Result<Connection<P>, ConnectError>>,
    },
    Listen {
        config: Arc<proto::ServerConfig>,
        accepted: mpsc::Sender<Connection<P>>,
        answerer: Option<Answerer<P>>,
        stats: Arc<ListenerStats>,
    },
    Unlisten,
    Shutdown {
        reason: String,
    },
    WaitIdle {
        reply: oneshot::Sender<()>,
    },
}

/// The transport's handle on its hub.
pub(crate) struct HubHandle<P: Protocol> {
    ctl: mpsc::UnboundedSender<Ctl<P>>,
    /// Held so that links can be made while no other exists.
    _links: mpsc::UnboundedSender<LinkCmd>,
}

impl<P: Protocol> HubHandle<P> {
    /// Binds the hub to `socket` and starts its task.
    /// Every UDP send the OS refuses is counted in `send_failures`.
    pub(crate) fn start(
        socket: std::net::UdpSocket,
        settings: Arc<Settings>,
        send_failures: Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<(Self, SocketAddr), SetupError> {
        let addr = socket.local_addr().map_err(|source| SetupError::Bind {
            addr: "0.0.0.0:0".parse().expect("literal address"),
            source,
        })?;
        let bind_err = |source| SetupError::Bind { addr, source };
        let state = udp::UdpSocketState::new((&socket).into()).map_err(bind_err)?;
        let socket = ReadOnlyRegistration::new(socket).map_err(bind_err)?;
        let gro = state.gro_segments().max(1);
        let may_fragment = state.may_fragment();
        let slot = usize::from(u16::MAX).min(1500 * gro);
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let (link_tx, link_rx) = mpsc::unbounded_channel();
        let hub = Hub {
            io: Io {
                socket,
                state,
                recv_buf: vec![0; slot * udp::BATCH_SIZE],
                slot,
                send_buf: Vec::with_capacity(64 * 1024),
                response_buf: Vec::new(),
                send_drops: 0,
                send_failures,
            },
            endpoint: proto::Endpoint::new(
                Arc::new(proto::EndpointConfig::default()),
                None,
                // As quinn: path MTU discovery where packets cannot fragment.
                !may_fragment,
                None,
            ),
            conns: HashMap::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            ctx: Ctx {
                settings,
                links: link_tx.downgrade(),
                listen: None,
                next_generation: 0,
                turn: 0,
                idle_waiters: Vec::new(),
                handshaking: 0,
                shut_down: false,
            },
            ctl_rx,
            link_rx,
        };
        tokio::spawn(hub.run());
        Ok((
            HubHandle {
                ctl: ctl_tx,
                _links: link_tx,
            },
            addr,
        ))
    }

    pub(crate) async fn connect(
        &self,
        config: proto::ClientConfig,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Connection<P>, ConnectError> {
        let (reply, rx) = oneshot::channel();
        let gone = || ConnectError::Failed {
            addr,
            server_name: server_name.to_string(),
            reason: "the QUIC endpoint has shut down".into(),
        };
        self.ctl
            .send(Ctl::Connect {
                config,
                addr,
                server_name: server_name.to_string(),
                reply,
            })
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    pub(crate) fn listen(
        &self,
        config: Arc<proto::ServerConfig>,
        accepted: mpsc::Sender<Connection<P>>,
        answerer: Option<Answerer<P>>,
        stats: Arc<ListenerStats>,
        stopped: Box<dyn Fn() + Send + Sync>,
    ) -> HubListenerGuard {
        let _ = self.ctl.send(Ctl::Listen {
            config,
            accepted,
            answerer,
            stats,
        });
        let ctl = self.ctl.clone();
        HubListenerGuard {
            unlisten: Box::new(move || {
                let _ = ctl.send(Ctl::Unlisten);
                stopped();
            }),
        }
    }

    pub(crate) fn shutdown(&self, reason: &str) {
        let _ = self.ctl.send(Ctl::Shutdown {
            reason: reason.to_string(),
        });
    }

    pub(crate) async fn wait_idle(&self) {
        let (reply, rx) = oneshot::channel();
        if self.ctl.send(Ctl::WaitIdle { reply }).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Stops accepting when the listener is dropped.
pub(crate) struct HubListenerGuard {
    unlisten: Box<dyn Fn() + Send + Sync>,
}

impl Drop for HubListenerGuard {
    fn drop(&mut self) {
        (self.unlisten)();
    }
}

struct Io {
    /// Sends go straight to the socket, dropped when its buffer is full.
    socket: ReadOnlyRegistration,
    state: udp::UdpSocketState,
    recv_buf: Vec<u8>,
    slot: usize,
    send_buf: Vec<u8>,
    response_buf: Vec<u8>,
    send_drops: u64,
    /// `send_drops` shared with the transport ([`crate::quic::QuicTransport::udp_send_failures`]).
    send_failures: Arc<std::sync::atomic::AtomicU64>,
}

impl Io {
    fn send(&mut self, t: &proto::Transmit, contents: &[u8]) {
        let transmit = udp::Transmit {
            destination: t.destination,
            ecn: t.ecn.and_then(|e| udp::EcnCodepoint::from_bits(e as u8)),
            contents,
            segment_size: t.segment_size,
            src_ip: t.src_ip,
        };
        match self.state.try_send(self.socket.socket().into(), &transmit) {
            Ok(()) => {}
            Err(e) => {
                // QUIC recovers lost packets; a full socket buffer is loss.
                // Other errors (EINVAL from a socket bound to loopback sending
                // elsewhere, EPERM from a firewall) lose every packet: counted
                // for whoever shows the transport's health.
                self.send_drops += 1;
                if super::socket::is_send_failure(&e) {
                    self.send_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if self.send_drops.is_power_of_two() {
                    debug!(dest = %t.destination, error = %e, drops = self.send_drops, "UDP send failed; the packet counts as lost");
                }
            }
        }
    }
}

struct ListenState<P: Protocol> {
    accepted: mpsc::Sender<Connection<P>>,
    /// Answers the requests of the links accepted from now on.
    answerer: Option<Answerer<P>>,
    stats: Arc<ListenerStats>,
}

/// Everything but the connections and the endpoint.
struct Ctx<P: Protocol> {
    settings: Arc<Settings>,
    links: mpsc::WeakUnboundedSender<LinkCmd>,
    listen: Option<ListenState<P>>,
    next_generation: u64,
    /// Turns of the hub's loop so far (for [`ANSWERS_PER_LINK_PER_TURN`]).
    turn: u64,
    idle_waiters: Vec<oneshot::Sender<()>>,
    /// Accepted connections not yet through TLS and the hello.
    handshaking: usize,
    /// `shutdown` was called: no new connection either way.
    shut_down: bool,
}

struct Hub<P: Protocol> {
    io: Io,
    endpoint: proto::Endpoint,
    /// Boxed: a connection is several KiB, and a table of them inline would
    /// keep up to twice that per connection as spare capacity (and four
    /// times while it grows).
    conns: HashMap<ConnectionHandle, Box<Conn<P>>>,
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    dirty: Vec<ConnectionHandle>,
    ctx: Ctx<P>,
    ctl_rx: mpsc::UnboundedReceiver<Ctl<P>>,
    link_rx: mpsc::UnboundedReceiver<LinkCmd>,
}

/// Received datagrams handled per wake-up before commands and timers get a turn.
const RECV_BATCHES_PER_TURN: usize = 32;

/// Commands taken per wake-up.
const COMMANDS_PER_TURN: usize = 1024;

/// Datagram requests of one link handed to the listener's answerer per turn
/// of the hub; beyond it they are dropped (to the requester, lost packets).
/// The answerer runs on the hub's task, so without it one certificate
/// could fill a turn with requests (a 64 KiB datagram buffer holds ~2,600
/// heartbeat-sized ones) and make every other link wait. An honest edge
/// sends one heartbeat per interval; stream requests need no such bound,
/// since the link's stream limit (`max_concurrent_requests`) holds them.
pub(crate) const ANSWERS_PER_LINK_PER_TURN: u32 = 64;

/// Most datagrams in one GSO send (quinn's own bound).
const MAX_TRANSMIT_SEGMENTS: usize = 10;

impl<P: Protocol> Hub<P> {
    async fn run(mut self) {
        let mut link_cmds = Vec::with_capacity(COMMANDS_PER_TURN);
        let mut ctl_cmds = Vec::new();
        let (mut links_open, mut ctl_open) = (true, true);
        // One timer, moved only when the earliest wake-up changes.
        let far = || tokio::time::Instant::now() + Duration::from_secs(24 * 3600);
        let timer = tokio::time::sleep_until(far());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        loop {
            let next_timer = self.timers.peek().map(|Reverse((t, _, _))| *t);
            if next_timer != armed {
                armed = next_timer;
                timer
                    .as_mut()
                    .reset(next_timer.map_or_else(far, tokio::time::Instant::from_std));
            }
            // Wait for anything at all; then every source gets its turn, so
            // that a busy command channel never starves the socket or the
            // timers (a biased select alone would).
            tokio::select! {
                biased;
                n = self.ctl_rx.recv_many(&mut ctl_cmds, 64), if ctl_open => {
                    if n == 0 {
                        ctl_open = false;
                    }
                    for cmd in ctl_cmds.drain(..) {
                        self.on_ctl(cmd);
                    }
                }
                n = self.link_rx.recv_many(&mut link_cmds, COMMANDS_PER_TURN), if links_open => {
                    if n == 0 {
                        links_open = false;
                    }
                    for cmd in link_cmds.drain(..) {
                        self.on_link_cmd(cmd);
                    }
                }
                ready = self.io.socket.readable() => {
                    if let Err(e) = ready {
                        warn!(error = %e, "QUIC socket failed; the hub stops");
                        break;
                    }
                }
                _ = &mut timer, if armed.is_some() => armed = None,
                // A connection still busy from the last turn.
                _ = std::future::ready(()), if !self.dirty.is_empty() => {}
            }
            self.ctx.turn += 1;
            // Without a syscall unless the socket was seen readable.
            self.receive();
            self.take_link_cmds(&mut links_open);
            self.fire_timers();
            self.flush();
            // What answerers queued while this turn's packets were handled
            // (their responses) goes out now, not after the next receive.
            if self.take_link_cmds(&mut links_open) {
                self.flush();
            }
            if !links_open && !ctl_open {
                // Nobody can ask anything any more: close what is left and
                // stay only until the closes are out.
                let handles: Vec<_> = self.conns.keys().copied().collect();
                for h in handles {
                    self.close_conn(h, code::SHUTDOWN, "the QUIC endpoint was dropped");
                }
                self.flush();
                if self.conns.is_empty() {
                    break;
                }
            }
            if self.conns.is_empty() {
                for waiter in self.ctx.idle_waiters.drain(..) {
                    let _ = waiter.send(());
                }
            }
        }
        debug!(send_drops = self.io.send_drops, "QUIC hub stopped");
    }

    fn mark(&mut self, h: ConnectionHandle) {
        if let Some(conn) = self.conns.get_mut(&h) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(h);
            }
        }
    }

    fn receive(&mut self) {
        let now = Instant::now();
        let mut metas = [udp::RecvMeta::default(); udp::BATCH_SIZE];
        for _ in 0..RECV_BATCHES_PER_TURN {
            let Io {
                socket,
                state,
                recv_buf,
                slot,
                ..
            } = &mut self.io;
            let result = {
                let mut iovs: Vec<IoSliceMut<'_>> =
                    recv_buf.chunks_mut(*slot).map(IoSliceMut::new).collect();
                socket.try_recv(|s| state.recv(s.into(), &mut iovs[..udp::BATCH_SIZE], &mut metas))
            };
            let n = match result {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!(error = %e, "UDP receive failed");
                    return;
                }
            };
            for (i, meta) in metas.iter().take(n).enumerate() {
                let start = i * self.io.slot;
                let mut data = BytesMut::from(&self.io.recv_buf[start..start + meta.len]);
                let stride = meta.stride.max(1);
                while !data.is_empty() {
                    let segment = data.split_to(stride.min(data.len()));
                    self.on_datagram(now, meta, segment);
                }
            }
        }
    }

    fn on_datagram(&mut self, now: Instant, meta: &udp::RecvMeta, data: BytesMut) {
        let ecn = meta
            .ecn
            .and_then(|e| proto::EcnCodepoint::from_bits(e as u8));
        let mut response = std::mem::take(&mut self.io.response_buf);
        response.clear();
        match self
            .endpoint
            .handle(now, meta.addr, meta.dst_ip, ecn, data, &mut response)
        {
            Some(DatagramEvent::ConnectionEvent(h, event)) => {
                if let Some(conn) = self.conns.get_mut(&h) {
                    conn.proto.handle_event(event);
                    self.mark(h);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => self.on_incoming(now, incoming),
            Some(DatagramEvent::Response(t)) => self.io.send(&t, &response[..t.size]),
            None => {}
        }
        self.io.response_buf = response;
    }

    fn on_incoming(&mut self, now: Instant, incoming: proto::Incoming) {
        let remote = incoming.remote_address();
        let listen = self.ctx.listen.as_ref().filter(|_| !self.ctx.shut_down);
        let Some(listen) = listen else {
            let mut buf = Vec::new();
            let t = self.endpoint.refuse(incoming, &mut buf);
            self.io.send(&t, &buf[..t.size]);
            return;
        };
        if self.ctx.handshaking >= self.ctx.settings.max_concurrent_handshakes {
            // The client's retransmission finds room later.
            self.endpoint.ignore(incoming);
            return;
        }
        let stats = listen.stats.clone();
        let mut buf = Vec::new();
        match self.endpoint.accept(incoming, now, &mut buf, None) {
            Ok((h, proto)) => {
                let deadline = now + self.ctx.settings.handshake_timeout;
                self.insert(h, proto, remote, Phase::Accepting, Some(deadline));
            }
            Err(e) => {
                count_refused_attempt(&stats, remote, &e.cause);
                if let Some(t) = e.response {
                    self.io.send(&t, &buf[..t.size]);
                }
            }
        }
    }

    fn insert(
        &mut self,
        h: ConnectionHandle,
        proto: proto::Connection,
        remote: SocketAddr,
        phase: Phase<P>,
        deadline: Option<Instant>,
    ) -> ConnKey {
        self.ctx.next_generation += 1;
        let generation = self.ctx.next_generation;
        let handshaking = matches!(phase, Phase::Accepting);
        self.ctx.handshaking += usize::from(handshaking);
        self.conns.insert(
            h,
            Box::new(Conn {
                handle: h,
                generation,
                proto,
                remote,
                phase,
                deadline,
                closed: false,
                local_close: None,
                scheduled: None,
                handshaking,
                dirty: false,
            }),
        );
        self.mark(h);
        ConnKey {
            handle: h,
            generation,
        }
    }

    fn on_ctl(&mut self, cmd: Ctl<P>) {
        match cmd {
            Ctl::Connect {
                config,
                addr,
                server_name,
                reply,
            } => {
                if self.ctx.shut_down {
                    let _ = reply.send(Err(ConnectError::Failed {
                        addr,
                        server_name,
                        reason: "the QUIC endpoint has shut down".into(),
                    }));
                    return;
                }
                let now = Instant::now();
                match self.endpoint.connect(now, config, addr, &server_name) {
                    Ok((h, proto)) => {
                        let deadline = now + self.ctx.settings.handshake_timeout;
                        let phase = Phase::Dialling { reply, server_name };
                        self.insert(h, proto, addr, phase, Some(deadline));
                    }
                    Err(proto::ConnectError::InvalidServerName(_)) => {
                        let _ =
                            reply.send(Err(ConnectError::InvalidServerName { addr, server_name }));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ConnectError::Failed {
                            addr,
                            server_name,
                            reason: e.to_string(),
                        }));
                    }
                }
            }
            Ctl::Listen {
                config,
                accepted,
                answerer,
                stats,
            } => {
                self.endpoint.set_server_config(Some(config));
                self.ctx.listen = Some(ListenState {
                    accepted,
                    answerer,
                    stats,
                });
            }
            Ctl::Unlisten => {
                self.endpoint.set_server_config(None);
                self.ctx.listen = None;
            }
            Ctl::Shutdown { reason } => {
                self.ctx.shut_down = true;
                self.endpoint.set_server_config(None);
                self.ctx.listen = None;
                let handles: Vec<_> = self.conns.keys().copied().collect();
                for h in handles {
                    self.close_conn(h, code::SHUTDOWN, &reason);
                }
            }
            Ctl::WaitIdle { reply } => self.ctx.idle_waiters.push(reply),
        }
    }

    /// Closes a connection now and settles everything waiting on it.
    fn close_conn(&mut self, h: ConnectionHandle, error_code: VarInt, reason: &str) {
        if let Some(conn) = self.conns.get_mut(&h) {
            shut(&mut self.ctx, conn, error_code, reason);
            self.mark(h);
        }
    }

    /// Carries out up to [`COMMANDS_PER_TURN`] queued link commands without
    /// waiting; whether there were any.
    fn take_link_cmds(&mut self, links_open: &mut bool) -> bool {
        let mut took = false;
        for _ in 0..COMMANDS_PER_TURN {
            match self.link_rx.try_recv() {
                Ok(cmd) => {
                    took = true;
                    self.on_link_cmd(cmd);
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    *links_open = false;
                    break;
                }
            }
        }
        took
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((t, handle, generation))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let h = ConnectionHandle(handle);
            let Some(conn) = self.conns.get_mut(&h) else {
                continue;
            };
            if conn.generation != generation || conn.scheduled != Some(t) {
                continue;
            }
            conn.scheduled = None;
            if conn.proto.poll_timeout().is_some_and(|at| at <= now) {
                conn.proto.handle_timeout(now);
            }
            self.check_deadlines(h, now);
            self.mark(h);
        }
    }

    /// Drives every connection that something happened to: protocol events,
    /// application events, packets out, next timer.
    fn flush(&mut self) {
        let Hub {
            io,
            endpoint,
            conns,
            timers,
            dirty,
            ctx,
            ..
        } = self;
        let mut requeue = Vec::new();
        // As quinn: a GSO burst stays under the 64 KiB a send can carry.
        let max_segments = io.state.max_gso_segments().min(MAX_TRANSMIT_SEGMENTS);
        while let Some(h) = dirty.pop() {
            // Driven in place: a connection is several KiB, too big to move.
            let Some(conn) = conns.get_mut(&h) else {
                continue;
            };
            conn.dirty = false;
            let now = Instant::now();
            let mut drained = false;
            let mut quiet = false;
            for _ in 0..64 {
                let mut progress = false;
                while let Some(event) = conn.proto.poll_endpoint_events() {
                    progress = true;
                    drained |= event.is_drained();
                    if let Some(back) = endpoint.handle_event(h, event) {
                        conn.proto.handle_event(back);
                    }
                }
                while let Some(event) = conn.proto.poll() {
                    progress = true;
                    on_event(ctx, conn, now, event);
                }
                loop {
                    io.send_buf.clear();
                    let Some(t) = conn
                        .proto
                        .poll_transmit(now, max_segments, &mut io.send_buf)
                    else {
                        break;
                    };
                    progress = true;
                    let buf = std::mem::take(&mut io.send_buf);
                    io.send(&t, &buf[..t.size]);
                    io.send_buf = buf;
                }
                if !progress {
                    quiet = true;
                    break;
                }
            }
            if !quiet {
                // Still busy: its turn comes again after the others'.
                conn.dirty = true;
                requeue.push(h);
            }
            if drained {
                settle(ctx, conn, &ConnectionError::LocallyClosed);
                conns.remove(&h);
                continue;
            }
            // A wake-up is queued only when it must come sooner than the one
            // already queued: most changes (the idle timer after every
            // packet) move it later, and a wake-up that comes early just
            // queues the next one (`fire_timers`).
            let next = [conn.proto.poll_timeout(), next_deadline(conn)]
                .into_iter()
                .flatten()
                .min();
            if let Some(t) = next {
                if conn.scheduled.is_none_or(|queued| t < queued) {
                    conn.scheduled = Some(t);
                    timers.push(Reverse((t, h.0, conn.generation)));
                }
            }
        }
        dirty.extend(requeue);
    }
}

/// The earliest application deadline of a connection.
fn next_deadline<P: Protocol>(conn: &Conn<P>) -> Option<Instant> {
    let streams = match &conn.phase {
        Phase::Up(link) => link
            .streams
            .values()
            .filter_map(|t| match t {
                StreamTask::Serving { deadline, .. } => Some(*deadline),
                _ => None,
            })
            .min(),
        _ => None,
    };
    [conn.deadline, streams].into_iter().flatten().min()
}
