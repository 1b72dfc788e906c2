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
//! a heartbeat costs one wake-up of the application per request.
//!
//! The application sees the same [`Connection`], [`Responder`] and
//! [`Listener`] as with quinn; what it asks for travels to the hub as a
//! [`LinkCmd`] (no waiting: responses, requests, closes) and comes back on
//! a oneshot or the link's incoming queue.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn::udp;
use quinn_proto as proto;
use quinn_proto::{
    ConnectionError, ConnectionHandle, DatagramEvent, Dir, Event, ReadError, StreamEvent, StreamId,
    VarInt,
};
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};
use vcodr_core::codec::{self, negotiate, DecodeError, Hello};

use super::tls::{
    connect_failure, count_failed_handshake, count_late_handshake, count_refused_attempt,
    identity_from, NO_IDENTITY,
};
use super::wire::{self, close_reason_of, code, dgram, hello, stream_code_name, FrameReader};
use crate::error::{CloseReason, ConnectError, Refusal, SetupError};
use crate::link::{
    Backend, Connection, Incoming, IncomingTx, LinkInfo, ListenerStats, PeerId, Refused,
    RequestFailure, Responder, ResponderInner,
};
use crate::settings::Settings;
use crate::Protocol;

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
        socket.set_nonblocking(true).map_err(bind_err)?;
        let state = udp::UdpSocketState::new((&socket).into()).map_err(bind_err)?;
        let socket = tokio::net::UdpSocket::from_std(socket).map_err(bind_err)?;
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
        stats: Arc<ListenerStats>,
        stopped: Box<dyn Fn() + Send + Sync>,
    ) -> HubListenerGuard {
        let _ = self.ctl.send(Ctl::Listen {
            config,
            accepted,
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

/// The hub half of a [`Backend`]: what a link's handles hold.
pub(crate) struct HubLink {
    key: ConnKey,
    ordered_failed: Arc<AtomicBool>,
    tx: mpsc::UnboundedSender<LinkCmd>,
    next_id: AtomicU64,
    closed: watch::Receiver<Option<CloseReason>>,
    local_close: OnceLock<CloseReason>,
    sends: Arc<Semaphore>,
    request_timeout: Duration,
}

/// Cancels a request in the hub if its future is dropped before the answer.
struct CancelOnDrop<'a> {
    link: &'a HubLink,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.link.tx.send(LinkCmd::Cancel {
                key: self.link.key,
                id: self.id,
            });
        }
    }
}

impl HubLink {
    pub(crate) async fn request(
        &self,
        frame: Vec<u8>,
        datagram: bool,
    ) -> Result<Vec<u8>, RequestFailure> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, rx) = oneshot::channel();
        let cmd = LinkCmd::Request {
            key: self.key,
            id,
            frame,
            datagram,
            answer,
        };
        if self.tx.send(cmd).is_err() {
            return Err(RequestFailure::Closed(self.current_reason()));
        }
        let mut guard = CancelOnDrop {
            link: self,
            id,
            armed: true,
        };
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(answer) => {
                guard.armed = false;
                match answer {
                    Ok(answer) => answer,
                    // The hub dropped the request: its connection is gone.
                    Err(_) => Err(RequestFailure::Closed(self.current_reason())),
                }
            }
            Err(_) => Err(RequestFailure::TimedOut),
        }
    }

    pub(crate) async fn send_frame(&self, frame: Vec<u8>) -> Result<(), CloseReason> {
        // The semaphore is never closed.
        let permit = self
            .sends
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.current_reason())?;
        if let Some(reason) = self.close_reason() {
            return Err(reason);
        }
        if self.ordered_failed.load(Ordering::Acquire) {
            return Err(CloseReason::Protocol("the ordered stream failed".into()));
        }
        self.tx
            .send(LinkCmd::Send {
                key: self.key,
                frame,
                permit,
            })
            .map_err(|_| self.current_reason())
    }

    fn current_reason(&self) -> CloseReason {
        self.close_reason()
            .unwrap_or_else(|| CloseReason::Local("the QUIC endpoint has shut down".into()))
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    pub(crate) fn close(&self, reason: &str) {
        let _ = self.local_close.set(CloseReason::Local(reason.to_string()));
        let _ = self.tx.send(LinkCmd::Close {
            key: self.key,
            reason: reason.to_string(),
        });
    }

    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        if let Some(reason) = self.closed.borrow().clone() {
            return Some(reason);
        }
        if self.tx.is_closed() {
            return Some(CloseReason::Local("the QUIC endpoint has shut down".into()));
        }
        self.local_close.get().cloned()
    }

    pub(crate) async fn closed(&self) -> CloseReason {
        let mut rx = self.closed.clone();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        reason.unwrap_or_else(|| self.current_reason())
    }
}

/// Answers one request of a hub link.
pub(crate) struct HubReply {
    tx: mpsc::UnboundedSender<LinkCmd>,
    key: ConnKey,
    to: ReplyTo,
}

impl HubReply {
    /// Queues the response; never waits.
    pub(crate) fn respond(self, frame: Vec<u8>) -> Result<(), String> {
        self.tx
            .send(LinkCmd::Respond {
                key: self.key,
                to: self.to,
                frame: Some(frame),
            })
            .map_err(|_| "the QUIC endpoint has shut down".to_string())
    }

    pub(crate) fn refuse(self) {
        let _ = self.tx.send(LinkCmd::Respond {
            key: self.key,
            to: self.to,
            frame: None,
        });
    }
}

/// Bytes of one stream still to be written, and whether to finish it after.
struct Outgoing {
    data: Vec<u8>,
    written: usize,
    finish: bool,
}

impl Outgoing {
    fn new(data: Vec<u8>, finish: bool) -> Self {
        Outgoing {
            data,
            written: 0,
            finish,
        }
    }

    /// Writes what flow control allows; `Ok(true)` once everything is
    /// written (and the stream finished, if asked).
    fn pump(&mut self, conn: &mut proto::Connection, id: StreamId) -> Result<bool, String> {
        let mut stream = conn.send_stream(id);
        while self.written < self.data.len() {
            match stream.write(&self.data[self.written..]) {
                Ok(n) => self.written += n,
                Err(proto::WriteError::Blocked) => return Ok(false),
                Err(proto::WriteError::Stopped(code)) => {
                    // As quinn does: the reset lets both sides free it.
                    let _ = stream.reset(code);
                    return Err(stream_code_name(code));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        if self.finish {
            if let Err(e) = stream.finish() {
                if let proto::FinishError::Stopped(code) = e {
                    let _ = stream.reset(code);
                }
                return Err(e.to_string());
            }
        }
        Ok(true)
    }
}

/// A request this side sent, by request id.
struct OutRequest {
    answer: AnswerTx,
    /// The frame, kept for a stream retry while it travels as a datagram.
    frame: Vec<u8>,
}

/// What a stream of a live link is for.
enum StreamTask {
    /// Our request: writing it, then reading the response.
    Request {
        id: u64,
        answer: AnswerTx,
        out: Option<Outgoing>,
        reader: FrameReader,
    },
    /// The peer's request: reading it until its frame is complete.
    Serving {
        reader: FrameReader,
        deadline: Instant,
    },
    /// The peer's request is with the application.
    Answering,
    /// Writing our response.
    Responding(Outgoing),
    /// The peer's ordered stream.
    OrderedIn(FrameReader),
}

/// Where a connection is in its life.
enum Phase<P: Protocol> {
    /// Dialled; TLS under way.
    Dialling {
        reply: oneshot::Sender<Result<Connection<P>, ConnectError>>,
        server_name: String,
    },
    /// Dialled, authenticated, our hello sent; waiting for the server's.
    ClientHello {
        reply: oneshot::Sender<Result<Connection<P>, ConnectError>>,
        server_name: String,
        peer: PeerId,
        stream: StreamId,
        out: Outgoing,
        reader: FrameReader,
    },
    /// Accepted; TLS under way.
    Accepting,
    /// Accepted and authenticated; waiting for the client's hello.
    ServerHello {
        peer: PeerId,
        stream: Option<(StreamId, FrameReader)>,
    },
    /// No common version: our hello was sent so the client can name both;
    /// the connection closes when the client does or at the deadline.
    Mismatch { refusal: hello::Failure },
    /// A link the application holds.
    Up(Box<LinkCtl<P>>),
    /// Closed; draining.
    Gone,
}

/// The hub's side of a live link.
struct LinkCtl<P: Protocol> {
    key: ConnKey,
    /// For responders and the unpark waiter.
    tx: mpsc::UnboundedSender<LinkCmd>,
    info: Arc<LinkInfo>,
    max_frame_bytes: usize,
    incoming: Option<IncomingTx<P>>,
    closed: watch::Sender<Option<CloseReason>>,
    streams: HashMap<StreamId, StreamTask>,
    datagrams: HashMap<u64, OutRequest>,
    /// Requests waiting for the peer to allow another stream.
    opening: VecDeque<(u64, OutRequest)>,
    ordered_out: Option<StreamId>,
    ordered_queue: VecDeque<(Outgoing, OwnedSemaphorePermit)>,
    /// Delivered nothing while the application's queue was full: these wait.
    parked: VecDeque<Box<Incoming<P>>>,
    /// Streams with data left unread while parked.
    unread: Vec<StreamId>,
    waiter: bool,
    /// A bad frame on the peer's ordered stream: the connection must close.
    violation: Option<String>,
    /// Our ordered stream failed: `send` says so (shared with [`HubLink`]).
    ordered_failed: Arc<AtomicBool>,
}

struct Conn<P: Protocol> {
    handle: ConnectionHandle,
    generation: u64,
    proto: proto::Connection,
    remote: SocketAddr,
    phase: Phase<P>,
    /// Handshake or hello deadline.
    deadline: Option<Instant>,
    /// Closed by us or lost: nothing more to settle.
    closed: bool,
    /// Why we closed it, for the link's close reason.
    local_close: Option<CloseReason>,
    /// The wake-up in the timer heap, if any.
    scheduled: Option<Instant>,
    /// Counted in [`Ctx::handshaking`].
    handshaking: bool,
    dirty: bool,
}

struct Io {
    socket: tokio::net::UdpSocket,
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
        match self.state.try_send((&self.socket).into(), &transmit) {
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
    stats: Arc<ListenerStats>,
}

/// Everything but the connections and the endpoint.
struct Ctx<P: Protocol> {
    settings: Arc<Settings>,
    links: mpsc::WeakUnboundedSender<LinkCmd>,
    listen: Option<ListenState<P>>,
    next_generation: u64,
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
            // Without a syscall unless the socket was seen readable.
            self.receive();
            for _ in 0..COMMANDS_PER_TURN {
                match self.link_rx.try_recv() {
                    Ok(cmd) => self.on_link_cmd(cmd),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        links_open = false;
                        break;
                    }
                }
            }
            self.fire_timers();
            self.flush();
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
                socket.try_io(Interest::READABLE, || {
                    state.recv((&*socket).into(), &mut iovs[..udp::BATCH_SIZE], &mut metas)
                })
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
                stats,
            } => {
                self.endpoint.set_server_config(Some(config));
                self.ctx.listen = Some(ListenState { accepted, stats });
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

    fn on_link_cmd(&mut self, cmd: LinkCmd) {
        let key = match &cmd {
            LinkCmd::Request { key, .. }
            | LinkCmd::Cancel { key, .. }
            | LinkCmd::Respond { key, .. }
            | LinkCmd::Send { key, .. }
            | LinkCmd::Close { key, .. }
            | LinkCmd::Unpark { key } => *key,
        };
        let Hub { conns, ctx, .. } = self;
        let Some(conn) = conns
            .get_mut(&key.handle)
            .filter(|c| c.generation == key.generation)
        else {
            // Gone: a request's answer sender is dropped here, which tells
            // the requester that the link closed.
            return;
        };
        match cmd {
            LinkCmd::Close { reason, .. } => {
                shut(ctx, conn, code::CLOSED, &reason);
            }
            LinkCmd::Request {
                id,
                frame,
                datagram,
                answer,
                ..
            } => {
                let Phase::Up(link) = &mut conn.phase else {
                    return;
                };
                let request = OutRequest { answer, frame };
                if datagram && fits_datagram(&mut conn.proto, request.frame.len()) {
                    let bytes = dgram::request(id, &request.frame);
                    match conn.proto.datagrams().send(bytes, true) {
                        Ok(()) => {
                            link.datagrams.insert(id, request);
                        }
                        // Unsupported, disabled or the path shrank: a stream.
                        Err(_) => link.opening.push_back((id, request)),
                    }
                } else {
                    link.opening.push_back((id, request));
                }
                open_requests(&mut conn.proto, link);
            }
            LinkCmd::Cancel { id, .. } => {
                let Phase::Up(link) = &mut conn.phase else {
                    return;
                };
                link.datagrams.remove(&id);
                link.opening.retain(|(i, _)| *i != id);
                let stream = link.streams.iter().find_map(|(s, t)| match t {
                    StreamTask::Request { id: i, .. } if *i == id => Some(*s),
                    _ => None,
                });
                if let Some(s) = stream {
                    link.streams.remove(&s);
                    let _ = conn.proto.send_stream(s).reset(code::CANCELLED);
                    let _ = conn.proto.recv_stream(s).stop(code::CANCELLED);
                }
            }
            LinkCmd::Respond { to, frame, .. } => {
                let Phase::Up(link) = &mut conn.phase else {
                    return;
                };
                respond(&mut conn.proto, link, to, frame);
            }
            LinkCmd::Send { frame, permit, .. } => {
                let Phase::Up(link) = &mut conn.phase else {
                    return;
                };
                link.ordered_queue
                    .push_back((Outgoing::new(frame, false), permit));
                pump_ordered(&mut conn.proto, link);
            }
            LinkCmd::Unpark { .. } => {
                let Phase::Up(link) = &mut conn.phase else {
                    return;
                };
                link.waiter = false;
                deliver_parked(link);
                link.wait_for_room();
                if link.parked.is_empty() {
                    let unread = std::mem::take(&mut link.unread);
                    for s in unread {
                        read_link_stream(ctx, conn, s);
                    }
                }
            }
        }
        self.mark(key.handle);
    }

    /// Closes a connection now and settles everything waiting on it.
    fn close_conn(&mut self, h: ConnectionHandle, error_code: VarInt, reason: &str) {
        if let Some(conn) = self.conns.get_mut(&h) {
            shut(&mut self.ctx, conn, error_code, reason);
            self.mark(h);
        }
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

    /// Handshake, hello and request-read deadlines.
    fn check_deadlines(&mut self, h: ConnectionHandle, now: Instant) {
        let Hub { conns, ctx, .. } = self;
        let Some(conn) = conns.get_mut(&h) else {
            return;
        };
        let timeout = ctx.settings.handshake_timeout;
        let remote = conn.remote;
        if conn.deadline.is_some_and(|d| d <= now) {
            conn.deadline = None;
            let (error_code, reason) = match std::mem::replace(&mut conn.phase, Phase::Gone) {
                Phase::Dialling { reply, server_name }
                | Phase::ClientHello {
                    reply, server_name, ..
                } => {
                    let _ = reply.send(Err(ConnectError::TimedOut {
                        addr: remote,
                        server_name,
                        after: timeout,
                    }));
                    (code::CLOSED, "handshake timed out".to_string())
                }
                Phase::Accepting => {
                    if let Some(l) = &ctx.listen {
                        count_late_handshake(&l.stats, remote, timeout);
                    }
                    (code::CLOSED, "TLS handshake timed out".to_string())
                }
                Phase::ServerHello { peer, .. } => {
                    let refusal = hello::Failure::Late(timeout);
                    if let Some(l) = &ctx.listen {
                        refusal.count(&l.stats, remote, peer.as_str());
                    }
                    refusal.close()
                }
                Phase::Mismatch { refusal } => refusal.close(),
                other => {
                    conn.phase = other;
                    return;
                }
            };
            shut(ctx, conn, error_code, &reason);
            return;
        }
        let Phase::Up(link) = &mut conn.phase else {
            return;
        };
        let late: Vec<StreamId> = link
            .streams
            .iter()
            .filter_map(|(s, t)| match t {
                StreamTask::Serving { deadline, .. } if *deadline <= now => Some(*s),
                _ => None,
            })
            .collect();
        for s in late {
            link.streams.remove(&s);
            let reason = wire::request_late(ctx.settings.request_timeout);
            wire::rejected_request(&link.info, &reason);
            let _ = conn.proto.recv_stream(s).stop(code::FRAME_REJECTED);
            let _ = conn.proto.send_stream(s).reset(code::FRAME_REJECTED);
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

/// Whether a frame of `len` bytes fits in one datagram now.
fn fits_datagram(proto: &mut proto::Connection, len: usize) -> bool {
    dgram::fits(proto.datagrams().max_size(), len)
}

/// Sends a response (or the refusal, for `None`) where it belongs.
fn respond<P: Protocol>(
    proto: &mut proto::Connection,
    link: &mut LinkCtl<P>,
    to: ReplyTo,
    frame: Option<Vec<u8>>,
) {
    match to {
        ReplyTo::Datagram(id) => {
            let bytes = match frame {
                Some(frame) => dgram::response(id, &frame, proto.datagrams().max_size()),
                None => dgram::refusal(id),
            };
            let _ = proto.datagrams().send(bytes, true);
        }
        ReplyTo::Stream(s) => {
            if !matches!(link.streams.get(&s), Some(StreamTask::Answering)) {
                return;
            }
            link.streams.remove(&s);
            match frame {
                Some(frame) => {
                    let mut out = Outgoing::new(frame, true);
                    if let Ok(false) = out.pump(proto, s) {
                        link.streams.insert(s, StreamTask::Responding(out));
                    }
                }
                None => {
                    let _ = proto.send_stream(s).reset(code::NO_RESPONSE);
                }
            }
        }
    }
}

/// Opens a stream for each waiting request, as far as the peer allows.
fn open_requests<P: Protocol>(proto: &mut proto::Connection, link: &mut LinkCtl<P>) {
    while let Some((id, request)) = link.opening.pop_front() {
        if request.answer.is_closed() {
            continue;
        }
        let Some(s) = proto.streams().open(Dir::Bi) else {
            link.opening.push_front((id, request));
            return;
        };
        let mut out = Outgoing::new(request.frame, true);
        match out.pump(proto, s) {
            Ok(done) => {
                link.streams.insert(
                    s,
                    StreamTask::Request {
                        id,
                        answer: request.answer,
                        out: (!done).then_some(out),
                        reader: FrameReader::default(),
                    },
                );
            }
            Err(reason) => {
                let _ = request.answer.send(Err(RequestFailure::NoResponse(reason)));
            }
        }
    }
}

/// Writes queued ordered frames, opening the stream on the first one.
fn pump_ordered<P: Protocol>(proto: &mut proto::Connection, link: &mut LinkCtl<P>) {
    if link.ordered_queue.is_empty() {
        return;
    }
    let s = match link.ordered_out {
        Some(s) => s,
        None => match proto.streams().open(Dir::Uni) {
            Some(s) => {
                link.ordered_out = Some(s);
                s
            }
            None => return,
        },
    };
    while let Some((out, _permit)) = link.ordered_queue.front_mut() {
        match out.pump(proto, s) {
            Ok(true) => {
                // Written into QUIC's buffer: the permit goes back.
                link.ordered_queue.pop_front();
            }
            Ok(false) => return,
            Err(reason) => {
                debug!(link = %link.info, %reason, "ordered stream write failed");
                link.ordered_broken();
                return;
            }
        }
    }
}

/// Hands parked items to the application while its queue has room.
fn deliver_parked<P: Protocol>(link: &mut LinkCtl<P>) {
    let Some(tx) = &link.incoming else {
        link.parked.clear();
        return;
    };
    while let Some(item) = link.parked.pop_front() {
        match tx.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(item)) => {
                link.parked.push_front(item);
                return;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                link.parked.clear();
                return;
            }
        }
    }
}

impl<P: Protocol> LinkCtl<P> {
    fn responder(&self, to: ReplyTo) -> Responder<P> {
        Responder::new(
            self.info.clone(),
            self.max_frame_bytes,
            ResponderInner::Hub(HubReply {
                tx: self.tx.clone(),
                key: self.key,
                to,
            }),
        )
    }

    /// Queues `item` for the application; parks it (and stops reading this
    /// link's streams) while the application's queue is full.
    fn deliver(&mut self, item: Incoming<P>) {
        let item = Box::new(item);
        if self.parked.is_empty() {
            let Some(tx) = &self.incoming else { return };
            match tx.try_send(item) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => return,
                Err(mpsc::error::TrySendError::Full(item)) => self.parked.push_back(item),
            }
        } else {
            self.parked.push_back(item);
        }
        self.wait_for_room();
    }

    /// Asks for an `Unpark` once the application's queue has room (or is
    /// gone: then the parked items are dropped with it).
    fn wait_for_room(&mut self) {
        if self.waiter || self.parked.is_empty() {
            return;
        }
        let Some(queue) = self.incoming.clone() else {
            return;
        };
        self.waiter = true;
        let (cmds, key) = (self.tx.clone(), self.key);
        tokio::spawn(async move {
            // Room now; only the hub sends on this queue, so it stays.
            drop(queue.reserve_owned().await);
            let _ = cmds.send(LinkCmd::Unpark { key });
        });
    }

    /// Our ordered stream is unusable: drop what waits for it, and tell
    /// senders.
    fn ordered_broken(&mut self) {
        self.ordered_queue.clear();
        self.ordered_failed.store(true, Ordering::Release);
    }

    /// A datagram request is worthless late: dropped, not parked, when the
    /// application is behind (the requester counts a lost heartbeat).
    fn deliver_or_drop(&mut self, item: Incoming<P>) -> bool {
        let refused = match (&self.incoming, self.parked.is_empty()) {
            (Some(tx), true) => match tx.try_send(Box::new(item)) {
                Ok(()) => return true,
                Err(e) => *e.into_inner(),
            },
            _ => item,
        };
        if let Incoming::Request { responder, .. } = refused {
            responder.disarm();
        }
        false
    }

    /// Settles every request waiting on this link with `reason`.
    fn fail_all(&mut self, reason: &CloseReason) {
        let fail = || Err(RequestFailure::Closed(reason.clone()));
        for (_, task) in self.streams.drain() {
            if let StreamTask::Request { answer, .. } = task {
                let _ = answer.send(fail());
            }
        }
        for (_, request) in self.datagrams.drain() {
            let _ = request.answer.send(fail());
        }
        for (_, request) in self.opening.drain(..) {
            let _ = request.answer.send(fail());
        }
        self.ordered_queue.clear();
        self.parked.clear();
    }
}

fn peer_of(proto: &proto::Connection) -> Option<PeerId> {
    identity_from(proto.crypto_session().peer_identity())
}

/// An accepted connection is through its handshake and hello (or gone).
fn handshake_over<P: Protocol>(ctx: &mut Ctx<P>, conn: &mut Conn<P>) {
    if std::mem::take(&mut conn.handshaking) {
        ctx.handshaking -= 1;
    }
}

/// Closes `conn` now, telling the peer `reason` and the application the
/// same as [`CloseReason::Local`].
fn shut<P: Protocol>(ctx: &mut Ctx<P>, conn: &mut Conn<P>, error_code: VarInt, reason: &str) {
    shut_as(
        ctx,
        conn,
        error_code,
        reason,
        CloseReason::Local(reason.into()),
    );
}

/// Closes `conn` now (once) and settles everything waiting on it; the
/// application is told `local`.
fn shut_as<P: Protocol>(
    ctx: &mut Ctx<P>,
    conn: &mut Conn<P>,
    error_code: VarInt,
    reason: &str,
    local: CloseReason,
) {
    if conn.closed {
        return;
    }
    conn.closed = true;
    conn.local_close = Some(local);
    conn.proto.close(
        Instant::now(),
        error_code,
        Bytes::copy_from_slice(reason.as_bytes()),
    );
    settle(ctx, conn, &ConnectionError::LocallyClosed);
}

/// The connection is over (closed here, lost, or drained): tell whoever waits.
fn settle<P: Protocol>(ctx: &mut Ctx<P>, conn: &mut Conn<P>, error: &ConnectionError) {
    handshake_over(ctx, conn);
    conn.closed = true;
    conn.deadline = None;
    let remote = conn.remote;
    let local = || {
        conn.local_close
            .clone()
            .unwrap_or_else(|| CloseReason::Local("closed".into()))
    };
    match std::mem::replace(&mut conn.phase, Phase::Gone) {
        Phase::Dialling { reply, server_name }
        | Phase::ClientHello {
            reply, server_name, ..
        } => {
            let e = match error {
                ConnectionError::LocallyClosed => ConnectError::Failed {
                    addr: remote,
                    server_name,
                    reason: local().to_string(),
                },
                e => connect_failure(e, remote, &server_name),
            };
            let _ = reply.send(Err(e));
        }
        Phase::Accepting => {
            if !matches!(error, ConnectionError::LocallyClosed) {
                if let Some(l) = &ctx.listen {
                    count_failed_handshake(&l.stats, remote, error);
                }
            }
        }
        Phase::ServerHello { peer, .. } => {
            if !matches!(error, ConnectionError::LocallyClosed) {
                if let Some(l) = &ctx.listen {
                    let refusal = hello::Failure::Bad(error.to_string());
                    refusal.count(&l.stats, remote, peer.as_str());
                }
            }
        }
        Phase::Up(mut link) => {
            let reason = match error {
                ConnectionError::LocallyClosed => local(),
                e => close_reason_of(e, &OnceLock::new()),
            };
            link.fail_all(&reason);
            link.closed.send_replace(Some(reason));
        }
        Phase::Mismatch { .. } | Phase::Gone => {}
    }
}

fn on_event<P: Protocol>(ctx: &mut Ctx<P>, conn: &mut Conn<P>, now: Instant, event: Event) {
    match event {
        Event::HandshakeDataReady | Event::DatagramsUnblocked => {}
        Event::Connected => on_connected(ctx, conn, now),
        Event::ConnectionLost { reason } => {
            if !conn.closed {
                settle(ctx, conn, &reason);
            }
        }
        // Before the link is up they wait in QUIC's buffer (`link_up`).
        Event::DatagramReceived => {
            if matches!(conn.phase, Phase::Up(_)) {
                while let Some(d) = conn.proto.datagrams().recv() {
                    on_app_datagram(conn, &d);
                }
            }
        }
        Event::Stream(StreamEvent::Opened { dir }) => accept_streams(ctx, conn, now, dir),
        Event::Stream(StreamEvent::Readable { id }) => on_readable(ctx, conn, now, id),
        Event::Stream(StreamEvent::Writable { id }) => on_writable(conn, id),
        Event::Stream(StreamEvent::Stopped { id, error_code }) => {
            // The peer wants nothing more on this stream: reset it, as quinn
            // does, so that both sides free it (a stop alone frees nothing).
            let _ = conn.proto.send_stream(id).reset(error_code);
            if let Phase::Up(link) = &mut conn.phase {
                match link.streams.remove(&id) {
                    // Stopped before the whole request went out: no answer
                    // will come. Once it is out, a peer that has read its
                    // frame may stop the rest; the response still comes.
                    Some(StreamTask::Request {
                        answer,
                        out: Some(_),
                        ..
                    }) => {
                        let reason = stream_code_name(error_code);
                        let _ = answer.send(Err(RequestFailure::NoResponse(reason)));
                        let _ = conn.proto.recv_stream(id).stop(code::CANCELLED);
                    }
                    Some(StreamTask::Responding(_)) | None => {}
                    Some(other) => {
                        link.streams.insert(id, other);
                    }
                }
                if link.ordered_out == Some(id) {
                    debug!(link = %link.info, code = %error_code, "the peer stopped our ordered stream");
                    link.ordered_broken();
                }
            }
        }
        Event::Stream(StreamEvent::Available { dir }) => {
            if let Phase::Up(link) = &mut conn.phase {
                match dir {
                    Dir::Bi => open_requests(&mut conn.proto, link),
                    Dir::Uni => pump_ordered(&mut conn.proto, link),
                }
            }
        }
        Event::Stream(StreamEvent::Finished { .. }) => {}
    }
}

/// Takes the streams the peer opened, as far as the phase allows: before
/// the link is up only the client's hello; the rest wait in QUIC until
/// [`link_up`] (a server may open streams as soon as it has read our hello,
/// before its own hello reaches us).
fn accept_streams<P: Protocol>(ctx: &mut Ctx<P>, conn: &mut Conn<P>, now: Instant, dir: Dir) {
    loop {
        match (&mut conn.phase, dir) {
            (Phase::ServerHello { stream, .. }, Dir::Bi) if stream.is_none() => {
                let Some(s) = conn.proto.streams().accept(dir) else {
                    return;
                };
                *stream = Some((s, FrameReader::default()));
                on_readable(ctx, conn, now, s);
            }
            (Phase::Up(link), _) => {
                let Some(s) = conn.proto.streams().accept(dir) else {
                    return;
                };
                let task = match dir {
                    Dir::Bi => StreamTask::Serving {
                        reader: FrameReader::default(),
                        deadline: now + ctx.settings.request_timeout,
                    },
                    Dir::Uni => StreamTask::OrderedIn(FrameReader::default()),
                };
                link.streams.insert(s, task);
                on_readable(ctx, conn, now, s);
            }
            (Phase::Mismatch { .. } | Phase::Gone, _) => {
                let Some(s) = conn.proto.streams().accept(dir) else {
                    return;
                };
                let _ = conn.proto.recv_stream(s).stop(code::FRAME_REJECTED);
                if dir == Dir::Bi {
                    let _ = conn.proto.send_stream(s).reset(code::FRAME_REJECTED);
                }
            }
            _ => return,
        }
    }
}

/// The link just came up: what the peer sent meanwhile is taken now.
fn link_up<P: Protocol>(ctx: &mut Ctx<P>, conn: &mut Conn<P>, now: Instant) {
    accept_streams(ctx, conn, now, Dir::Bi);
    accept_streams(ctx, conn, now, Dir::Uni);
    while matches!(conn.phase, Phase::Up(_)) {
        let Some(d) = conn.proto.datagrams().recv() else {
            break;
        };
        on_app_datagram(conn, &d);
    }
}

fn on_connected<P: Protocol>(ctx: &mut Ctx<P>, conn: &mut Conn<P>, now: Instant) {
    let remote = conn.remote;
    let peer = peer_of(&conn.proto);
    match std::mem::replace(&mut conn.phase, Phase::Gone) {
        Phase::Dialling { reply, server_name } => {
            if reply.is_closed() {
                let reason = "the dialler gave up";
                shut(ctx, conn, code::CLOSED, reason);
                return;
            }
            let Some(peer) = peer else {
                shut(ctx, conn, code::NO_IDENTITY, NO_IDENTITY);
                let _ = reply.send(Err(ConnectError::HandshakeRefused {
                    addr: remote,
                    server_name,
                    refusal: Refusal::NoIdentity,
                }));
                return;
            };
            let fail = |reason: String| ConnectError::Failed {
                addr: remote,
                server_name: server_name.clone(),
                reason,
            };
            let ours = hello::ours(&ctx.settings)
                .map_err(|e| fail(format!("cannot encode our hello: {e}")))
                .and_then(|frame| {
                    let s =
                        conn.proto.streams().open(Dir::Bi).ok_or_else(|| {
                            fail("the server allows no stream for the hello".into())
                        })?;
                    Ok((frame, s))
                });
            let (frame, stream) = match ours {
                Ok(pair) => pair,
                Err(e) => {
                    let local = CloseReason::Local(e.to_string());
                    shut_as(ctx, conn, code::CLOSED, "no hello", local);
                    let _ = reply.send(Err(e));
                    return;
                }
            };
            let mut out = Outgoing::new(frame, true);
            let _ = out.pump(&mut conn.proto, stream);
            conn.phase = Phase::ClientHello {
                reply,
                server_name,
                peer,
                stream,
                out,
                reader: FrameReader::default(),
            };
        }
        Phase::Accepting => {
            let Some(peer) = peer else {
                if let Some(l) = &ctx.listen {
                    l.stats
                        .refused(Refused::NoIdentity, remote, None, &NO_IDENTITY);
                }
                shut(ctx, conn, code::NO_IDENTITY, NO_IDENTITY);
                return;
            };
            conn.deadline = Some(now + ctx.settings.handshake_timeout);
            conn.phase = Phase::ServerHello { peer, stream: None };
        }
        other => conn.phase = other,
    }
}

fn on_writable<P: Protocol>(conn: &mut Conn<P>, id: StreamId) {
    match &mut conn.phase {
        Phase::ClientHello { stream, out, .. } if *stream == id => {
            let _ = out.pump(&mut conn.proto, id);
        }
        Phase::Up(link) => {
            if link.ordered_out == Some(id) {
                pump_ordered(&mut conn.proto, link);
                return;
            }
            let failed = match link.streams.get_mut(&id) {
                Some(StreamTask::Request { out, .. }) => match out.as_mut() {
                    Some(o) => match o.pump(&mut conn.proto, id) {
                        Ok(true) => {
                            *out = None;
                            None
                        }
                        Ok(false) => None,
                        Err(reason) => Some(reason),
                    },
                    None => None,
                },
                Some(StreamTask::Responding(out)) => {
                    if !matches!(out.pump(&mut conn.proto, id), Ok(false)) {
                        link.streams.remove(&id);
                    }
                    None
                }
                _ => None,
            };
            if let Some(reason) = failed {
                if let Some(StreamTask::Request { answer, .. }) = link.streams.remove(&id) {
                    let _ = answer.send(Err(RequestFailure::NoResponse(reason)));
                }
            }
        }
        _ => {}
    }
}

/// What reading a stream found, besides frames.
enum StreamEnd {
    Open,
    Finished,
    Reset(VarInt),
}

/// Reads what `s` has into `reader`; completed frames go to `frames`. A
/// stream that carries one frame (`single`: requests, responses, hellos) is
/// stopped once it is in, so QUIC frees it (and the peer's stream credit)
/// even if its end is still on the way.
fn read_into(
    proto: &mut proto::Connection,
    s: StreamId,
    reader: &mut FrameReader,
    max_frame_bytes: usize,
    frames: &mut Vec<Vec<u8>>,
    single: bool,
) -> Result<StreamEnd, DecodeError> {
    let mut stream = proto.recv_stream(s);
    let Ok(mut chunks) = stream.read(true) else {
        return Ok(StreamEnd::Finished);
    };
    let mut end = StreamEnd::Open;
    let mut bad = None;
    loop {
        match chunks.next(usize::MAX) {
            Ok(Some(chunk)) => {
                if bad.is_none() {
                    if let Err(e) = reader.push(&chunk.bytes, max_frame_bytes, frames) {
                        bad = Some(e);
                    }
                }
            }
            Ok(None) => {
                end = StreamEnd::Finished;
                break;
            }
            Err(ReadError::Blocked) => break,
            Err(ReadError::Reset(code)) => {
                end = StreamEnd::Reset(code);
                break;
            }
        }
    }
    let _ = chunks.finalize();
    if single && !frames.is_empty() && matches!(end, StreamEnd::Open) {
        let _ = proto.recv_stream(s).stop(code::CLOSED);
    }
    match bad {
        Some(e) => Err(e),
        None => Ok(end),
    }
}

/// One frame, or why there is none (yet: `Ok(None)`).
fn one_frame(
    result: Result<StreamEnd, DecodeError>,
    frames: Vec<Vec<u8>>,
    reader: &FrameReader,
) -> Result<Option<Vec<u8>>, String> {
    match (result, frames.into_iter().next()) {
        (Err(e), _) => Err(e.to_string()),
        (Ok(_), Some(payload)) => Ok(Some(payload)),
        (Ok(StreamEnd::Open), None) => Ok(None),
        (Ok(StreamEnd::Finished), None) => Err(reader
            .at_end()
            .map_or("stream finished".to_string(), |e| e.to_string())),
        (Ok(StreamEnd::Reset(code)), None) => Err(stream_code_name(code)),
    }
}

/// The peer's hello from its stream; `None` until its frame is complete.
/// Errors start with `bad` (a malformed hello) or `unreadable` (no hello).
fn read_hello(
    proto: &mut proto::Connection,
    s: StreamId,
    reader: &mut FrameReader,
    max_frame_bytes: usize,
    [bad, unreadable]: [&str; 2],
) -> Option<Result<Hello, String>> {
    let mut frames = Vec::new();
    let result = read_into(proto, s, reader, max_frame_bytes, &mut frames, true);
    match one_frame(result, frames, reader) {
        Ok(None) => None,
        Ok(Some(payload)) => Some(hello::theirs(&payload).map_err(|e| format!("{bad}: {e}"))),
        Err(e) => Some(Err(format!("{unreadable}: {e}"))),
    }
}

fn on_readable<P: Protocol>(ctx: &mut Ctx<P>, conn: &mut Conn<P>, now: Instant, s: StreamId) {
    let max_frame_bytes = ctx.settings.max_frame_bytes;
    match &mut conn.phase {
        Phase::ClientHello { stream, reader, .. } if *stream == s => {
            let texts = ["bad hello from server", "reading the server's hello"];
            if let Some(outcome) = read_hello(&mut conn.proto, s, reader, max_frame_bytes, texts) {
                client_hello_done(ctx, conn, now, outcome);
            }
        }
        Phase::ServerHello {
            stream: Some((hs, reader)),
            ..
        } if *hs == s => {
            let texts = ["bad hello", "bad hello"];
            if let Some(outcome) = read_hello(&mut conn.proto, s, reader, max_frame_bytes, texts) {
                server_hello_done(ctx, conn, now, s, outcome);
            }
        }
        Phase::Up(link) => {
            // While the application is behind, what the peer sends waits in
            // QUIC's buffers (flow control slows the peer); answers to our
            // own requests are still read.
            let peer_stream = matches!(
                link.streams.get(&s),
                Some(StreamTask::Serving { .. } | StreamTask::OrderedIn(_))
            );
            if peer_stream && !link.parked.is_empty() {
                if !link.unread.contains(&s) {
                    link.unread.push(s);
                }
                return;
            }
            read_link_stream(ctx, conn, s);
        }
        _ => {}
    }
}

fn client_hello_done<P: Protocol>(
    ctx: &mut Ctx<P>,
    conn: &mut Conn<P>,
    now: Instant,
    outcome: Result<Hello, String>,
) {
    let remote = conn.remote;
    let Phase::ClientHello {
        reply,
        server_name,
        peer,
        ..
    } = std::mem::replace(&mut conn.phase, Phase::Gone)
    else {
        return;
    };
    let theirs = match outcome {
        Ok(hello) => hello,
        Err(reason) => {
            shut(ctx, conn, code::CLOSED, &reason);
            let _ = reply.send(Err(ConnectError::Failed {
                addr: remote,
                server_name,
                reason,
            }));
            return;
        }
    };
    match negotiate(&ctx.settings.hello, &theirs) {
        Ok(version) => {
            let info = LinkInfo {
                peer,
                addr: remote,
                version,
                protocol: P::NAME,
            };
            debug!(peer = %info.peer, addr = %remote, version, "link up (dialled)");
            let Some(connection) = make_link(ctx, conn, info) else {
                let _ = reply.send(Err(ConnectError::Failed {
                    addr: remote,
                    server_name,
                    reason: SHUTTING_DOWN.into(),
                }));
                return;
            };
            conn.deadline = None;
            link_up(ctx, conn, now);
            // A caller that gave up drops the connection, which closes it.
            let _ = reply.send(Ok(connection));
        }
        Err(mismatch) => {
            let text = mismatch.to_string();
            shut(ctx, conn, code::VERSION_MISMATCH, &text);
            let _ = reply.send(Err(ConnectError::VersionMismatch {
                addr: remote,
                server_name,
                mismatch,
            }));
        }
    }
}

fn server_hello_done<P: Protocol>(
    ctx: &mut Ctx<P>,
    conn: &mut Conn<P>,
    now: Instant,
    stream: StreamId,
    outcome: Result<Hello, String>,
) {
    let remote = conn.remote;
    handshake_over(ctx, conn);
    let Phase::ServerHello { peer, .. } = std::mem::replace(&mut conn.phase, Phase::Gone) else {
        return;
    };
    let Some(listen) = &ctx.listen else {
        let reason = "no longer listening";
        shut(ctx, conn, code::SHUTDOWN, reason);
        return;
    };
    let stats = listen.stats.clone();
    let theirs = match outcome {
        Ok(hello) => hello,
        Err(reason) => {
            let local = CloseReason::Protocol(reason.clone());
            let refusal = hello::Failure::Bad(reason);
            refusal.count(&stats, remote, peer.as_str());
            let (error_code, reason) = refusal.close();
            shut_as(ctx, conn, error_code, &reason, local);
            return;
        }
    };
    // Our hello goes back whatever the outcome, so the client can name both versions.
    let ours = match hello::ours(&ctx.settings) {
        Ok(frame) => frame,
        Err(e) => {
            warn!(%peer, %remote, reason = %e, "cannot encode our hello");
            shut(ctx, conn, code::PROTOCOL_VIOLATION, hello::CANNOT_ENCODE);
            return;
        }
    };
    let mut out = Outgoing::new(ours, true);
    let done = match out.pump(&mut conn.proto, stream) {
        Ok(done) => done,
        Err(reason) => {
            let local = CloseReason::Local(format!("could not answer the hello: {reason}"));
            let refusal = hello::Failure::Unanswered(reason);
            refusal.count(&stats, remote, peer.as_str());
            let (error_code, reason) = refusal.close();
            shut_as(ctx, conn, error_code, &reason, local);
            return;
        }
    };
    match negotiate(&ctx.settings.hello, &theirs) {
        Err(mismatch) => {
            let refusal = hello::Failure::Mismatch(mismatch);
            refusal.count(&stats, remote, peer.as_str());
            // Let the client read our hello and close; then close anyway.
            conn.deadline = Some(now + ctx.settings.handshake_timeout);
            conn.phase = Phase::Mismatch { refusal };
        }
        Ok(version) => {
            let info = LinkInfo {
                peer: peer.clone(),
                addr: remote,
                version,
                protocol: P::NAME,
            };
            conn.deadline = None;
            let Some(connection) = make_link(ctx, conn, info) else {
                return;
            };
            if let (false, Phase::Up(link)) = (done, &mut conn.phase) {
                link.streams.insert(stream, StreamTask::Responding(out));
            }
            link_up(ctx, conn, now);
            debug!(%peer, %remote, version, "link up (accepted)");
            let Some(listen) = &ctx.listen else { return };
            match listen.accepted.try_send(connection) {
                Ok(()) => ListenerStats::bump(&stats.accepted),
                Err(mpsc::error::TrySendError::Full(connection)) => {
                    let accepted = listen.accepted.clone();
                    tokio::spawn(async move {
                        if accepted.send(connection).await.is_ok() {
                            ListenerStats::bump(&stats.accepted);
                        }
                    });
                }
                // The listener is gone: dropping the link closes it.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }
}

const SHUTTING_DOWN: &str = "the QUIC endpoint is shutting down";

/// Makes the application's handle of an authenticated link and puts the
/// connection in its `Up` phase; once the hub is shutting down, closes the
/// connection instead and returns `None`.
fn make_link<P: Protocol>(
    ctx: &mut Ctx<P>,
    conn: &mut Conn<P>,
    info: LinkInfo,
) -> Option<Connection<P>> {
    let Some(tx) = ctx.links.upgrade() else {
        shut(ctx, conn, code::SHUTDOWN, SHUTTING_DOWN);
        return None;
    };
    let settings = &ctx.settings;
    let key = ConnKey {
        handle: conn.handle,
        generation: conn.generation,
    };
    let (incoming_tx, incoming_rx) = mpsc::channel(settings.max_pending_incoming);
    let (closed_tx, closed_rx) = watch::channel(None);
    let ordered_failed = Arc::new(AtomicBool::new(false));
    let link = HubLink {
        key,
        ordered_failed: ordered_failed.clone(),
        tx: tx.clone(),
        next_id: AtomicU64::new(0),
        closed: closed_rx,
        local_close: OnceLock::new(),
        sends: Arc::new(Semaphore::new(settings.max_pending_sends)),
        request_timeout: settings.request_timeout,
    };
    let connection = Connection::new(
        info,
        settings.max_frame_bytes,
        Backend::Hub(link),
        incoming_rx,
    );
    conn.phase = Phase::Up(Box::new(LinkCtl {
        key,
        tx,
        info: connection.info_arc(),
        max_frame_bytes: settings.max_frame_bytes,
        incoming: Some(incoming_tx),
        closed: closed_tx,
        streams: HashMap::new(),
        datagrams: HashMap::new(),
        opening: VecDeque::new(),
        ordered_out: None,
        ordered_queue: VecDeque::new(),
        parked: VecDeque::new(),
        unread: Vec::new(),
        waiter: false,
        violation: None,
        ordered_failed,
    }));
    Some(connection)
}

/// Reads a live link's stream, then closes the connection if its ordered
/// stream broke.
fn read_link_stream<P: Protocol>(ctx: &mut Ctx<P>, conn: &mut Conn<P>, s: StreamId) {
    let Phase::Up(link) = &mut conn.phase else {
        return;
    };
    read_stream(&mut conn.proto, link, s);
    if let Some(reason) = link.violation.take() {
        let local = CloseReason::Protocol(reason.clone());
        shut_as(ctx, conn, code::PROTOCOL_VIOLATION, &reason, local);
    }
}

/// Reads a live link's stream and acts on what arrived.
fn read_stream<P: Protocol>(proto: &mut proto::Connection, link: &mut LinkCtl<P>, s: StreamId) {
    let max_frame_bytes = link.max_frame_bytes;
    let Some(task) = link.streams.remove(&s) else {
        return;
    };
    let mut frames = Vec::new();
    match task {
        StreamTask::Request {
            id,
            answer,
            out,
            mut reader,
        } => {
            let result = read_into(proto, s, &mut reader, max_frame_bytes, &mut frames, true);
            let outcome = match (result, frames.into_iter().next()) {
                (Err(e), _) => Err(RequestFailure::Bad(e)),
                (Ok(_), Some(payload)) => Ok(payload),
                (Ok(StreamEnd::Open), None) => {
                    let task = StreamTask::Request {
                        id,
                        answer,
                        out,
                        reader,
                    };
                    link.streams.insert(s, task);
                    return;
                }
                (Ok(StreamEnd::Finished), None) => Err(match reader.at_end() {
                    Some(e) => RequestFailure::Bad(e),
                    None => RequestFailure::NoResponse(wire::FINISHED_UNANSWERED.into()),
                }),
                (Ok(StreamEnd::Reset(code)), None) => {
                    Err(RequestFailure::NoResponse(stream_code_name(code)))
                }
            };
            let _ = answer.send(outcome);
        }
        StreamTask::Serving {
            mut reader,
            deadline,
        } => {
            let result = read_into(proto, s, &mut reader, max_frame_bytes, &mut frames, true);
            let failure = match one_frame(result, frames, &reader) {
                Ok(None) => {
                    link.streams
                        .insert(s, StreamTask::Serving { reader, deadline });
                    return;
                }
                Ok(Some(payload)) => match codec::decode_payload::<P::Request>(&payload) {
                    Ok(request) => {
                        link.streams.insert(s, StreamTask::Answering);
                        let responder = link.responder(ReplyTo::Stream(s));
                        link.deliver(Incoming::Request { request, responder });
                        return;
                    }
                    Err(e) => e.to_string(),
                },
                Err(e) => e,
            };
            wire::rejected_request(&link.info, &failure);
            let _ = proto.recv_stream(s).stop(code::FRAME_REJECTED);
            let _ = proto.send_stream(s).reset(code::FRAME_REJECTED);
        }
        StreamTask::OrderedIn(mut reader) => {
            let result = read_into(proto, s, &mut reader, max_frame_bytes, &mut frames, false);
            let mut failure = match &result {
                Err(e) => Some(e.to_string()),
                Ok(StreamEnd::Finished) => reader.at_end().map(|e| e.to_string()),
                Ok(StreamEnd::Reset(code)) => Some(stream_code_name(*code)),
                Ok(StreamEnd::Open) => None,
            };
            for payload in frames {
                match codec::decode_payload::<P::Message>(&payload) {
                    Ok(message) => link.deliver(Incoming::Message(message)),
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                }
            }
            if let Some(failure) = failure {
                link.violation = Some(wire::ordered_violation(&link.info, &failure));
                return;
            }
            if matches!(result, Ok(StreamEnd::Open)) {
                link.streams.insert(s, StreamTask::OrderedIn(reader));
            }
        }
        other @ (StreamTask::Answering | StreamTask::Responding(_)) => {
            link.streams.insert(s, other);
        }
    }
}

/// A datagram of a live link: a request for the application, or the
/// answer to one of ours. A malformed one is dropped; the link stays up.
fn on_app_datagram<P: Protocol>(conn: &mut Conn<P>, d: &[u8]) {
    let Phase::Up(link) = &mut conn.phase else {
        return;
    };
    match dgram::read::<P::Request>(d, &link.info, link.max_frame_bytes) {
        Some(dgram::Datagram::Request { id, request }) => {
            let responder = link.responder(ReplyTo::Datagram(id));
            if !link.deliver_or_drop(Incoming::Request { request, responder }) {
                debug!(link = %link.info, "application behind: dropped a datagram request");
            }
        }
        Some(dgram::Datagram::BadRequest { id }) => {
            let _ = conn.proto.datagrams().send(dgram::refusal(id), true);
        }
        Some(dgram::Datagram::Response { id, payload }) => {
            if let Some(r) = link.datagrams.remove(&id) {
                let _ = r.answer.send(Ok(payload.to_vec()));
            }
        }
        Some(dgram::Datagram::Refused { id }) => {
            if let Some(r) = link.datagrams.remove(&id) {
                let failure = RequestFailure::NoResponse(dgram::REFUSED_TEXT.into());
                let _ = r.answer.send(Err(failure));
            }
        }
        Some(dgram::Datagram::TooLarge { id }) => {
            if let Some(r) = link.datagrams.remove(&id) {
                link.opening.push_back((id, r));
                open_requests(&mut conn.proto, link);
            }
        }
        None => {}
    }
}
