//! One connection of the hub: its [`Phase`] (dialling, accepting, the
//! hello either way, a live link, gone), the hub's side of a live link
//! ([`LinkCtl`]) and the application's ([`HubLink`], [`HubReply`]); the
//! commands a link's handles send ([`Hub::on_link_cmd`]), its deadlines,
//! and how it closes and settles whatever waits on it ([`shut`],
//! [`settle`]). quinn-proto's events are dispatched here ([`on_event`]).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn_proto as proto;
use quinn_proto::{ConnectionError, ConnectionHandle, Dir, Event, StreamEvent, StreamId, VarInt};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::error::{CloseReason, ConnectError};
use crate::link::{
    Connection, Incoming, IncomingTx, LinkInfo, PeerId, RequestFailure, Responder, ResponderInner,
};
use crate::quic::tls::{connect_failure, count_failed_handshake, count_late_handshake};
use crate::quic::wire::{self, close_reason_of, code, dgram, hello, stream_code_name, FrameReader};
use crate::Protocol;

use super::handshake::on_connected;
use super::streams::{
    accept_streams, fits_datagram, on_app_datagram, on_readable, on_writable, open_requests,
    pump_ordered, read_link_stream, respond, OutRequest, Outgoing, StreamTask,
};
use super::{ConnKey, Ctx, Hub, LinkCmd, ReplyTo};

/// The hub half of a [`Backend`](crate::link::Backend): what a link's handles hold.
pub(crate) struct HubLink {
    pub(super) key: ConnKey,
    pub(super) ordered_failed: Arc<AtomicBool>,
    pub(super) tx: mpsc::UnboundedSender<LinkCmd>,
    pub(super) next_id: AtomicU64,
    pub(super) closed: watch::Receiver<Option<CloseReason>>,
    pub(super) local_close: OnceLock<CloseReason>,
    pub(super) sends: Arc<Semaphore>,
    pub(super) request_timeout: Duration,
}

/// Cancels a request in the hub if its future is dropped before the answer.
pub(super) struct CancelOnDrop<'a> {
    pub(super) link: &'a HubLink,
    pub(super) id: u64,
    pub(super) armed: bool,
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

    pub(super) fn current_reason(&self) -> CloseReason {
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
    pub(super) tx: mpsc::UnboundedSender<LinkCmd>,
    pub(super) key: ConnKey,
    pub(super) to: ReplyTo,
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

/// Where a connection is in its life.
pub(super) enum Phase<P: Protocol> {
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
pub(super) struct LinkCtl<P: Protocol> {
    pub(super) key: ConnKey,
    /// For responders and the unpark waiter.
    pub(super) tx: mpsc::UnboundedSender<LinkCmd>,
    pub(super) info: Arc<LinkInfo>,
    pub(super) max_frame_bytes: usize,
    pub(super) incoming: Option<IncomingTx<P>>,
    pub(super) closed: watch::Sender<Option<CloseReason>>,
    pub(super) streams: HashMap<StreamId, StreamTask>,
    pub(super) datagrams: HashMap<u64, OutRequest>,
    /// Requests waiting for the peer to allow another stream.
    pub(super) opening: VecDeque<(u64, OutRequest)>,
    pub(super) ordered_out: Option<StreamId>,
    pub(super) ordered_queue: VecDeque<(Outgoing, OwnedSemaphorePermit)>,
    /// Delivered nothing while the application's queue was full: these wait.
    pub(super) parked: VecDeque<Box<Incoming<P>>>,
    /// Streams with data left unread while parked.
    pub(super) unread: Vec<StreamId>,
    pub(super) waiter: bool,
    /// The hub turn of `answered` and the datagram requests answered in it
    /// ([`ANSWERS_PER_LINK_PER_TURN`](super::ANSWERS_PER_LINK_PER_TURN)).
    pub(super) answered: (u64, u32),
    /// A bad frame on the peer's ordered stream: the connection must close.
    pub(super) violation: Option<String>,
    /// Our ordered stream failed: `send` says so (shared with [`HubLink`]).
    pub(super) ordered_failed: Arc<AtomicBool>,
}

pub(super) struct Conn<P: Protocol> {
    pub(super) handle: ConnectionHandle,
    pub(super) generation: u64,
    pub(super) proto: proto::Connection,
    pub(super) remote: SocketAddr,
    pub(super) phase: Phase<P>,
    /// Handshake or hello deadline.
    pub(super) deadline: Option<Instant>,
    /// Closed by us or lost: nothing more to settle.
    pub(super) closed: bool,
    /// Why we closed it, for the link's close reason.
    pub(super) local_close: Option<CloseReason>,
    /// The wake-up in the timer heap, if any.
    pub(super) scheduled: Option<Instant>,
    /// Counted in [`Ctx::handshaking`].
    pub(super) handshaking: bool,
    pub(super) dirty: bool,
}

/// Hands parked items to the application while its queue has room.
pub(super) fn deliver_parked<P: Protocol>(link: &mut LinkCtl<P>) {
    let Some(tx) = &link.incoming else {
        link.parked.clear();
        return;
    };
    while let Some(item) = link.parked.pop_front() {
        match tx.queue().try_send(item) {
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
    /// A live link's state, nothing in flight yet.
    pub(super) fn new(
        key: ConnKey,
        tx: mpsc::UnboundedSender<LinkCmd>,
        info: Arc<LinkInfo>,
        max_frame_bytes: usize,
        incoming: IncomingTx<P>,
        closed: watch::Sender<Option<CloseReason>>,
        ordered_failed: Arc<AtomicBool>,
    ) -> Self {
        LinkCtl {
            key,
            tx,
            info,
            max_frame_bytes,
            incoming: Some(incoming),
            closed,
            streams: HashMap::new(),
            datagrams: HashMap::new(),
            opening: VecDeque::new(),
            ordered_out: None,
            ordered_queue: VecDeque::new(),
            parked: VecDeque::new(),
            unread: Vec::new(),
            waiter: false,
            answered: (0, 0),
            violation: None,
            ordered_failed,
        }
    }

    pub(super) fn responder(&self, to: ReplyTo) -> Responder<P> {
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

    /// Hands `item` to the application: a request to the listener's
    /// answerer at once; anything else to its queue, parked (and this link's
    /// streams left unread) while the queue is full or others are parked.
    pub(super) fn deliver(&mut self, item: Incoming<P>) {
        let Some(tx) = &self.incoming else { return };
        if self.parked.is_empty() {
            match tx.try_send(item) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => return,
                Err(mpsc::error::TrySendError::Full(item)) => self.parked.push_back(item),
            }
        } else {
            match tx.answered_or(item) {
                Some(item) => self.parked.push_back(Box::new(item)),
                None => return,
            }
        }
        self.wait_for_room();
    }

    /// Asks for an `Unpark` once the application's queue has room (or is
    /// gone: then the parked items are dropped with it).
    pub(super) fn wait_for_room(&mut self) {
        if self.waiter || self.parked.is_empty() {
            return;
        }
        let Some(queue) = self.incoming.as_ref().map(|tx| tx.queue().clone()) else {
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
    pub(super) fn ordered_broken(&mut self) {
        self.ordered_queue.clear();
        self.ordered_failed.store(true, Ordering::Release);
    }

    /// A datagram request is worthless late: dropped, not parked, when the
    /// application's queue is full, or, with an answerer, once this link had
    /// [`ANSWERS_PER_LINK_PER_TURN`](super::ANSWERS_PER_LINK_PER_TURN)
    /// answered in hub turn `turn` (the requester counts a lost heartbeat).
    pub(super) fn deliver_or_drop(&mut self, item: Incoming<P>, turn: u64) -> bool {
        if self.incoming.as_ref().is_some_and(IncomingTx::has_answerer) {
            if self.answered.0 != turn {
                self.answered = (turn, 0);
            }
            if self.answered.1 >= super::ANSWERS_PER_LINK_PER_TURN {
                if let Incoming::Request { responder, .. } = item {
                    responder.disarm();
                }
                return false;
            }
            self.answered.1 += 1;
        }
        let refused = match (&self.incoming, self.parked.is_empty()) {
            (Some(tx), true) => match tx.try_send(item) {
                Ok(()) => return true,
                Err(e) => *e.into_inner(),
            },
            (Some(tx), false) => match tx.answered_or(item) {
                None => return true,
                Some(item) => item,
            },
            (None, _) => item,
        };
        if let Incoming::Request { responder, .. } = refused {
            responder.disarm();
        }
        false
    }

    /// Settles every request waiting on this link with `reason`.
    pub(super) fn fail_all(&mut self, reason: &CloseReason) {
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

/// An accepted connection is through its handshake and hello (or gone).
pub(super) fn handshake_over<P: Protocol>(ctx: &mut Ctx<P>, conn: &mut Conn<P>) {
    if std::mem::take(&mut conn.handshaking) {
        ctx.handshaking -= 1;
    }
}

/// Closes `conn` now, telling the peer `reason` and the application the
/// same as [`CloseReason::Local`].
pub(super) fn shut<P: Protocol>(
    ctx: &mut Ctx<P>,
    conn: &mut Conn<P>,
    error_code: VarInt,
    reason: &str,
) {
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
pub(super) fn shut_as<P: Protocol>(
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
pub(super) fn settle<P: Protocol>(ctx: &mut Ctx<P>, conn: &mut Conn<P>, error: &ConnectionError) {
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

pub(super) fn on_event<P: Protocol>(
    ctx: &mut Ctx<P>,
    conn: &mut Conn<P>,
    now: Instant,
    event: Event,
) {
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
                    on_app_datagram(conn, &d, ctx.turn);
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

impl<P: Protocol> Hub<P> {
    pub(super) fn on_link_cmd(&mut self, cmd: LinkCmd) {
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

    /// Handshake, hello and request-read deadlines.
    pub(super) fn check_deadlines(&mut self, h: ConnectionHandle, now: Instant) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::{incoming_channel, Answerer, IncomingRx};
    use std::sync::atomic::AtomicU32;
    use vcodr_core::CertRole;

    use crate::test_protocol::Echo;

    fn hub_link(answerer: Option<Answerer<Echo>>) -> (LinkCtl<Echo>, IncomingRx<Echo>) {
        let (tx, _cmds) = mpsc::unbounded_channel();
        let (incoming, rx) = incoming_channel(4, answerer);
        let info = LinkInfo {
            peer: PeerId::new(CertRole::Edge, "edge-1", vec![1]),
            addr: "127.0.0.1:9".parse().unwrap(),
            version: 1,
            protocol: Echo::NAME,
        };
        let key = ConnKey {
            handle: ConnectionHandle(0),
            generation: 0,
        };
        let closed = watch::channel(None).0;
        let failed = Arc::new(AtomicBool::new(false));
        let link = LinkCtl::new(key, tx, Arc::new(info), 1 << 16, incoming, closed, failed);
        (link, rx)
    }

    fn request(link: &LinkCtl<Echo>, id: u64) -> Incoming<Echo> {
        Incoming::Request {
            request: id,
            responder: link.responder(ReplyTo::Datagram(id)),
        }
    }

    /// One link cannot fill a turn of the hub with answers: beyond the
    /// budget its datagram requests are dropped, and the next turn takes
    /// them again. Without an answerer the queue's bound applies as before.
    #[test]
    fn a_link_gets_at_most_its_answers_per_turn_then_its_datagram_requests_are_dropped() {
        let answered = Arc::new(AtomicU32::new(0));
        let count = answered.clone();
        let answerer: Answerer<Echo> = Arc::new(move |_, responder| {
            count.fetch_add(1, Ordering::Relaxed);
            drop(responder);
        });
        let (mut link, _rx) = hub_link(Some(answerer));
        let budget = super::super::ANSWERS_PER_LINK_PER_TURN;
        let taken: Vec<bool> = (0..u64::from(budget) + 10)
            .map(|i| {
                let r = request(&link, i);
                link.deliver_or_drop(r, 7)
            })
            .collect();
        assert_eq!(taken.iter().filter(|t| **t).count() as u32, budget);
        assert!(
            taken[..budget as usize].iter().all(|t| *t),
            "the first ones pass"
        );
        assert_eq!(answered.load(Ordering::Relaxed), budget);
        let r = request(&link, 1000);
        assert!(link.deliver_or_drop(r, 8), "a new turn, a new budget");
        assert_eq!(answered.load(Ordering::Relaxed), budget + 1);

        let (mut queued, mut rx) = hub_link(None);
        let taken: Vec<bool> = (0..6)
            .map(|i| {
                let r = request(&queued, i);
                queued.deliver_or_drop(r, 7)
            })
            .collect();
        assert_eq!(
            taken,
            [true, true, true, true, false, false],
            "the queue holds 4"
        );
        assert!(matches!(
            rx.try_recv().map(|b| *b),
            Ok(Incoming::Request { request: 0, .. })
        ));
    }
}
