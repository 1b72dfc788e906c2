//! What a driver holds: connections, their two halves, incoming messages and
//! responders, and the listener. The same types serve every backend.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;
use vcodr_core::codec::{self, DecodeError, EncodeError};
use vcodr_core::{CertRole, PeerIdentity};

use crate::error::{CloseReason, LinkClosed, RequestError, RespondError, SendError};
use crate::Protocol;

mod listener;
mod pending;

#[cfg(test)]
mod tests;

pub use listener::{Listener, ListenerCounts, ListenerCountsHandle};
pub(crate) use listener::{ListenerGuard, ListenerStats, Refused};
pub(crate) use pending::{decode_whole_frame, whole_frame_payload, PendingRequests};

/// A peer's authenticated identity, read from its verified certificate
/// (never from a message): its name (the first DNS name: a server's name
/// such as `a`, or an edge's client id), its role, and its public key.
///
/// Cheap to clone (one shared allocation, a pointer in every [`LinkInfo`]
/// and error), and nothing else of the certificate is kept.
/// [`Display`](fmt::Display) and [`as_str`](Self::as_str) give the name
/// alone.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(Arc<Proven>);

/// What a [`PeerId`] shares between its clones.
#[derive(PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Proven {
    name: Box<str>,
    role: CertRole,
    public_key: Box<[u8]>,
}

impl PeerId {
    pub(crate) fn new(role: CertRole, name: impl Into<String>, public_key: Vec<u8>) -> Self {
        PeerId(Arc::new(Proven {
            name: name.into().into_boxed_str(),
            role,
            public_key: public_key.into_boxed_slice(),
        }))
    }

    /// The name, as the certificate carries it.
    pub fn as_str(&self) -> &str {
        &self.0.name
    }

    /// The role the certificate carries, which the handshake checked
    /// against the link's [`Protocol::ACCEPTS`] or [`Protocol::SERVES`].
    pub fn role(&self) -> CertRole {
        self.0.role
    }

    /// The certificate's SubjectPublicKeyInfo, DER: what pairing pins and
    /// epoch proofs are verified against. (On [`mem`](crate::mem) links, a
    /// stand-in: see [`MemTransport::with_public_key`](crate::mem::MemTransport::with_public_key).)
    pub fn public_key(&self) -> &[u8] {
        &self.0.public_key
    }

    /// SHA-256 of [`public_key`](Self::public_key), 64 lower-case hex
    /// digits: what operators compare.
    pub fn fingerprint(&self) -> String {
        crate::certs::key_fingerprint(&self.0.public_key)
    }

    /// The identity as the core pins it (name, public key, its fingerprint).
    pub fn to_core(&self) -> PeerIdentity {
        PeerIdentity {
            name: self.0.name.to_string(),
            public_key: self.0.public_key.to_vec(),
            key_fingerprint: self.fingerprint(),
        }
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fingerprint = self.fingerprint();
        write!(
            f,
            "PeerId({} `{}`, key {}…)",
            self.0.role,
            self.0.name,
            &fingerprint[..16]
        )
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.name)
    }
}

/// Who is at the other end of a link, where, and what was agreed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// The peer's authenticated identity.
    pub peer: PeerId,
    /// The peer's address.
    pub addr: SocketAddr,
    /// The protocol version negotiated in the hello exchange.
    pub version: u16,
    /// The protocol's name ([`Protocol::NAME`]).
    pub protocol: &'static str,
}

impl fmt::Display for LinkInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` at {} ({} v{})",
            self.peer, self.addr, self.protocol, self.version
        )
    }
}

/// Something the peer sent: a request that wants a response, or a message of
/// the ordered one-way stream.
pub enum Incoming<P: Protocol> {
    /// A request; answer it with [`Responder::respond`]. Dropping the
    /// responder tells the requester that no answer will come.
    Request {
        /// The request.
        request: P::Request,
        /// Where the response goes.
        responder: Responder<P>,
    },
    /// The next message of the peer's ordered stream.
    Message(P::Message),
}

impl<P: Protocol> fmt::Debug for Incoming<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Incoming::Request { responder, .. } => f
                .debug_struct("Request")
                .field("from", &responder.link.peer)
                .finish_non_exhaustive(),
            Incoming::Message(_) => f.write_str("Message(..)"),
        }
    }
}

/// Answers the requests of every link a listener accepts, on the task that
/// decoded them ([`Transport::listen_with`](crate::Transport::listen_with)):
/// no hand-off to another task, so on the hub driver a heartbeat is
/// received, answered and sent in one turn of the hub. It must not wait for
/// I/O or another task, and should be short: it runs on the transport's
/// own task, and on the hub every link waits while it runs. The responder
/// may be kept and answered later. Requests reach it in the order each
/// stream or datagram completes; as on any QUIC link, they are not ordered
/// with the link's messages.
pub type Answerer<P> = Arc<dyn Fn(<P as Protocol>::Request, Responder<P>) + Send + Sync>;

/// Where a link's backend puts what it receives for the application: a
/// request to the listener's [`Answerer`] if it has one, anything else to
/// the link's queue, which [`LinkReceiver::recv`] reads. Boxed in the
/// queue: a channel allocates its slots in blocks of 32, and a heartbeat is
/// large, so unboxed every idle link of a 10,000-edge server would hold
/// ~10 KiB.
pub(crate) struct IncomingTx<P: Protocol> {
    queue: mpsc::Sender<Box<Incoming<P>>>,
    answerer: Option<Answerer<P>>,
}

impl<P: Protocol> Clone for IncomingTx<P> {
    fn clone(&self) -> Self {
        IncomingTx {
            queue: self.queue.clone(),
            answerer: self.answerer.clone(),
        }
    }
}

pub(crate) type IncomingRx<P> = mpsc::Receiver<Box<Incoming<P>>>;

/// A link's incoming queue of `capacity` items, with the listener's answerer
/// (`None` on a dialled link, or a listener without one).
pub(crate) fn incoming_channel<P: Protocol>(
    capacity: usize,
    answerer: Option<Answerer<P>>,
) -> (IncomingTx<P>, IncomingRx<P>) {
    let (queue, rx) = mpsc::channel(capacity);
    (IncomingTx { queue, answerer }, rx)
}

impl<P: Protocol> IncomingTx<P> {
    /// Answers `item` now if it is a request and there is an answerer;
    /// otherwise hands it back, for the queue.
    pub(crate) fn answered_or(&self, item: Incoming<P>) -> Option<Incoming<P>> {
        match (&self.answerer, item) {
            (Some(answer), Incoming::Request { request, responder }) => {
                answer(request, responder);
                None
            }
            (_, item) => Some(item),
        }
    }

    /// Hands `item` over without waiting; a full queue hands it back.
    pub(crate) fn try_send(
        &self,
        item: Incoming<P>,
    ) -> Result<(), mpsc::error::TrySendError<Box<Incoming<P>>>> {
        match self.answered_or(item) {
            None => Ok(()),
            Some(item) => self.queue.try_send(Box::new(item)),
        }
    }

    /// Hands `item` over, waiting for room in the queue; an error once the
    /// application has dropped its receiver.
    pub(crate) async fn send(&self, item: Incoming<P>) -> Result<(), LinkClosedTx> {
        match self.answered_or(item) {
            None => Ok(()),
            Some(item) => self
                .queue
                .send(Box::new(item))
                .await
                .map_err(|_| LinkClosedTx),
        }
    }

    /// Whether requests go to an answerer.
    pub(crate) fn has_answerer(&self) -> bool {
        self.answerer.is_some()
    }

    /// The queue itself: to wait for room in it, and for items that waited
    /// (parked) for room, which are never requests of an answerer.
    pub(crate) fn queue(&self) -> &mpsc::Sender<Box<Incoming<P>>> {
        &self.queue
    }
}

/// The application dropped the link's receiver.
#[derive(Debug)]
pub(crate) struct LinkClosedTx;

/// The backend-specific end of a response.
pub(crate) enum ResponderInner {
    Quic(quinn::SendStream),
    QuicDatagram(crate::quic::DatagramReply),
    Hub(crate::quic::HubReply),
    Mem(crate::mem::MemResponder),
}

/// Sends the response to one request. Single use; dropping it unanswered
/// tells the requester at once (it gets [`RequestError::NoResponse`]).
pub struct Responder<P: Protocol> {
    link: Arc<LinkInfo>,
    max_frame_bytes: usize,
    inner: Option<ResponderInner>,
    _protocol: PhantomData<fn() -> P>,
}

impl<P: Protocol> fmt::Debug for Responder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl<P: Protocol> Responder<P> {
    pub(crate) fn new(link: Arc<LinkInfo>, max_frame_bytes: usize, inner: ResponderInner) -> Self {
        Responder {
            link,
            max_frame_bytes,
            inner: Some(inner),
            _protocol: PhantomData,
        }
    }

    /// Who asked.
    pub fn link(&self) -> &LinkInfo {
        &self.link
    }

    /// Sends `response` at once, without waiting, when the backend can:
    /// a request that came as a datagram ([`LinkSender::request_datagram`])
    /// on quinn, and every request on the hub driver
    /// ([`QuicDriver::Hub`](crate::QuicDriver::Hub)), which queues the
    /// response for its task. A driver task can then answer inline instead
    /// of spawning a task per request. Any other responder is handed back
    /// untouched, for [`respond`](Self::respond).
    pub fn respond_datagram(
        mut self,
        response: &P::Response,
    ) -> Result<Result<(), RespondError>, Self> {
        if !matches!(
            self.inner,
            Some(ResponderInner::QuicDatagram(_) | ResponderInner::Hub(_))
        ) {
            return Err(self);
        }
        let frame = match self.encode(response) {
            Ok(frame) => frame,
            Err(e) => return Ok(Err(e)),
        };
        let sent = match self.inner.take() {
            Some(ResponderInner::QuicDatagram(reply)) => reply.respond(&frame),
            Some(ResponderInner::Hub(reply)) => reply.respond(frame),
            other => {
                self.inner = other;
                return Err(self);
            }
        };
        Ok(sent.map_err(|reason| RespondError::Gone {
            link: (*self.link).clone(),
            reason,
        }))
    }

    /// Forgets the request without telling the requester (a datagram
    /// request dropped because the application is behind: to the requester
    /// it is a lost packet).
    pub(crate) fn disarm(mut self) {
        self.inner = None;
    }

    fn encode(&self, response: &P::Response) -> Result<Vec<u8>, RespondError> {
        codec::encode_frame(response, self.max_frame_bytes).map_err(|e| match e {
            EncodeError::TooLarge { len, max } => RespondError::TooLarge {
                link: (*self.link).clone(),
                len,
                max,
            },
            EncodeError::Serialize(reason) => RespondError::Encode {
                link: (*self.link).clone(),
                reason,
            },
        })
    }

    /// Sends `response` and completes the exchange.
    pub async fn respond(mut self, response: &P::Response) -> Result<(), RespondError> {
        let frame = self.encode(response)?;
        let inner = self.inner.take();
        let result = match inner {
            Some(ResponderInner::Quic(stream)) => crate::quic::respond(stream, &frame).await,
            Some(ResponderInner::QuicDatagram(reply)) => reply.respond(&frame),
            Some(ResponderInner::Hub(reply)) => reply.respond(frame),
            Some(ResponderInner::Mem(mem)) => mem.respond(frame).await,
            // `inner` is only taken here, and `respond` consumes `self`.
            None => Err("responder already used".to_string()),
        };
        result.map_err(|reason| RespondError::Gone {
            link: (*self.link).clone(),
            reason,
        })
    }
}

impl<P: Protocol> Drop for Responder<P> {
    fn drop(&mut self) {
        match self.inner.take() {
            Some(ResponderInner::Quic(mut stream)) => crate::quic::refuse(&mut stream),
            Some(ResponderInner::QuicDatagram(reply)) => reply.refuse(),
            Some(ResponderInner::Hub(reply)) => reply.refuse(),
            Some(ResponderInner::Mem(mem)) => mem.refuse(),
            None => {}
        }
    }
}

/// Why a request failed, before the generic layer adds the link.
pub(crate) enum RequestFailure {
    TimedOut,
    NoResponse(String),
    Bad(DecodeError),
    Closed(CloseReason),
}

/// The backend of one link. Held only by application handles: when the last
/// one is dropped, the link is closed.
pub(crate) enum Backend {
    Quic(crate::quic::QuicLink),
    Hub(crate::quic::HubLink),
    Mem(crate::mem::MemLink),
}

impl Backend {
    async fn send_frame(&self, frame: Vec<u8>) -> Result<(), CloseReason> {
        match self {
            Backend::Quic(q) => q.send_frame(frame).await,
            Backend::Hub(h) => h.send_frame(frame).await,
            Backend::Mem(m) => m.send_frame(frame).await,
        }
    }

    async fn request(&self, frame: Vec<u8>) -> Result<Vec<u8>, RequestFailure> {
        match self {
            Backend::Quic(q) => q.request(frame).await,
            Backend::Hub(h) => h.request(frame, false).await,
            Backend::Mem(m) => m.request(frame).await,
        }
    }

    async fn request_datagram(&self, frame: Vec<u8>) -> Result<Vec<u8>, RequestFailure> {
        match self {
            Backend::Quic(q) => q.request_datagram(frame).await,
            Backend::Hub(h) => h.request(frame, true).await,
            // The in-memory network already drops, delays, duplicates and
            // reorders requests as its faults say: one path serves both.
            Backend::Mem(m) => m.request(frame).await,
        }
    }

    fn close(&self, reason: &str) {
        match self {
            Backend::Quic(q) => q.close(reason),
            Backend::Hub(h) => h.close(reason),
            Backend::Mem(m) => m.close(reason),
        }
    }

    fn close_reason(&self) -> Option<CloseReason> {
        match self {
            Backend::Quic(q) => q.close_reason(),
            Backend::Hub(h) => h.close_reason(),
            Backend::Mem(m) => m.close_reason(),
        }
    }

    async fn closed(&self) -> CloseReason {
        match self {
            Backend::Quic(q) => q.closed().await,
            Backend::Hub(h) => h.closed().await,
            Backend::Mem(m) => m.closed().await,
        }
    }
}

pub(crate) struct LinkShared {
    info: Arc<LinkInfo>,
    max_frame_bytes: usize,
    backend: Backend,
}

impl Drop for LinkShared {
    fn drop(&mut self) {
        self.backend.close("every handle to the link was dropped");
    }
}

/// The sending half of a link: ordered messages and requests. Cheap to clone;
/// the link closes when every clone and the receiver are dropped.
pub struct LinkSender<P: Protocol> {
    shared: Arc<LinkShared>,
    _protocol: PhantomData<fn() -> P>,
}

impl<P: Protocol> Clone for LinkSender<P> {
    fn clone(&self) -> Self {
        LinkSender {
            shared: self.shared.clone(),
            _protocol: PhantomData,
        }
    }
}

impl<P: Protocol> fmt::Debug for LinkSender<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkSender")
            .field("link", &self.shared.info)
            .finish_non_exhaustive()
    }
}

impl<P: Protocol> LinkSender<P> {
    /// Who is at the other end.
    pub fn link(&self) -> &LinkInfo {
        &self.shared.info
    }

    /// Queues `message` on the ordered stream. Waits while
    /// `max_pending_sends` messages are already queued (backpressure).
    /// Cancel-safe: a cancelled call queued nothing.
    ///
    /// Messages from one sender arrive in order, none lost or duplicated, as
    /// long as the link stays up; after it closes, the application resends
    /// from its own acknowledgements over a new link.
    pub async fn send(&self, message: &P::Message) -> Result<(), SendError> {
        let link = || (*self.shared.info).clone();
        let frame =
            codec::encode_frame(message, self.shared.max_frame_bytes).map_err(|e| match e {
                EncodeError::TooLarge { len, max } => SendError::TooLarge {
                    link: link(),
                    len,
                    max,
                },
                EncodeError::Serialize(reason) => SendError::Encode {
                    link: link(),
                    reason,
                },
            })?;
        self.shared
            .backend
            .send_frame(frame)
            .await
            .map_err(|reason| SendError::Closed {
                link: link(),
                reason,
            })
    }

    /// Sends `request` and waits for its response, at most `request_timeout`.
    /// Each request travels independently (QUIC: its own stream), so a slow
    /// one does not hold up the others; at most `max_concurrent_requests`
    /// are in flight per link, further ones wait.
    pub async fn request(&self, request: &P::Request) -> Result<P::Response, RequestError> {
        self.exchange(request, false).await
    }

    /// Sends `request` as an unreliable datagram and waits for its response
    /// (also a datagram), at most `request_timeout`. At most once, never
    /// retransmitted: a lost request or response ends in
    /// [`RequestError::TimedOut`]. For small, idempotent, periodic requests
    /// such as heartbeats, where a late answer is worthless and a stream per
    /// request costs more than the request itself (QUIC: one packet each
    /// way, no stream state, no head-of-line blocking behind retransmits).
    /// A request or response too large for one datagram on this path
    /// travels on a stream instead, as with [`request`](Self::request).
    pub async fn request_datagram(
        &self,
        request: &P::Request,
    ) -> Result<P::Response, RequestError> {
        self.exchange(request, true).await
    }

    async fn exchange(
        &self,
        request: &P::Request,
        datagram: bool,
    ) -> Result<P::Response, RequestError> {
        let link = || (*self.shared.info).clone();
        let frame =
            codec::encode_frame(request, self.shared.max_frame_bytes).map_err(|e| match e {
                EncodeError::TooLarge { len, max } => RequestError::TooLarge {
                    link: link(),
                    len,
                    max,
                },
                EncodeError::Serialize(reason) => RequestError::Encode {
                    link: link(),
                    reason,
                },
            })?;
        let answer = if datagram {
            self.shared.backend.request_datagram(frame).await
        } else {
            self.shared.backend.request(frame).await
        };
        match answer {
            Ok(payload) => {
                codec::decode_payload(&payload).map_err(|error| RequestError::BadResponse {
                    link: link(),
                    error,
                })
            }
            Err(RequestFailure::TimedOut) => Err(RequestError::TimedOut {
                link: link(),
                after: self.request_timeout(),
            }),
            Err(RequestFailure::NoResponse(reason)) => Err(RequestError::NoResponse {
                link: link(),
                reason,
            }),
            Err(RequestFailure::Bad(error)) => Err(RequestError::BadResponse {
                link: link(),
                error,
            }),
            Err(RequestFailure::Closed(reason)) => Err(RequestError::Closed {
                link: link(),
                reason,
            }),
        }
    }

    fn request_timeout(&self) -> std::time::Duration {
        match &self.shared.backend {
            Backend::Quic(q) => q.request_timeout(),
            Backend::Hub(h) => h.request_timeout(),
            Backend::Mem(m) => m.request_timeout(),
        }
    }

    /// Closes the link at once; queued data may be lost. The peer sees
    /// [`CloseReason::Peer`] with `reason`.
    pub fn close(&self, reason: &str) {
        self.shared.backend.close(reason);
    }

    /// Why the link closed, if it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.backend.close_reason()
    }

    /// Waits until the link is closed (link-down event).
    pub async fn closed(&self) -> CloseReason {
        self.shared.backend.closed().await
    }
}

/// The receiving half of a link.
pub struct LinkReceiver<P: Protocol> {
    shared: Arc<LinkShared>,
    incoming: IncomingRx<P>,
}

impl<P: Protocol> fmt::Debug for LinkReceiver<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkReceiver")
            .field("link", &self.shared.info)
            .finish_non_exhaustive()
    }
}

impl<P: Protocol> LinkReceiver<P> {
    /// Who is at the other end.
    pub fn link(&self) -> &LinkInfo {
        &self.shared.info
    }

    /// The next request or message. After the link closes, what was already
    /// received is still returned, then [`LinkClosed`] with the reason.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Result<Incoming<P>, LinkClosed> {
        match self.incoming.recv().await {
            Some(incoming) => Ok(*incoming),
            None => Err(LinkClosed {
                link: (*self.shared.info).clone(),
                reason: self.shared.backend.closed().await,
            }),
        }
    }
}

/// An authenticated link to one peer, after the protocol hello.
///
/// Use it whole, or [`split`](Connection::split) it into a cloneable
/// [`LinkSender`] and a [`LinkReceiver`] for separate tasks. The link closes
/// when every handle is dropped, when either side calls `close`, or when the
/// network loses it; [`closed`](LinkSender::closed) reports which.
pub struct Connection<P: Protocol> {
    sender: LinkSender<P>,
    receiver: LinkReceiver<P>,
}

impl<P: Protocol> fmt::Debug for Connection<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("link", self.link())
            .finish_non_exhaustive()
    }
}

impl<P: Protocol> Connection<P> {
    pub(crate) fn new(
        info: LinkInfo,
        max_frame_bytes: usize,
        backend: Backend,
        incoming: IncomingRx<P>,
    ) -> Self {
        let shared = Arc::new(LinkShared {
            info: Arc::new(info),
            max_frame_bytes,
            backend,
        });
        Connection {
            sender: LinkSender {
                shared: shared.clone(),
                _protocol: PhantomData,
            },
            receiver: LinkReceiver { shared, incoming },
        }
    }

    pub(crate) fn info_arc(&self) -> Arc<LinkInfo> {
        self.sender.shared.info.clone()
    }

    /// Who is at the other end, where, and which version was agreed.
    pub fn link(&self) -> &LinkInfo {
        &self.sender.shared.info
    }

    /// The peer's authenticated identity.
    pub fn peer(&self) -> &PeerId {
        &self.link().peer
    }

    /// A new handle for sending, e.g. for another task.
    pub fn sender(&self) -> LinkSender<P> {
        self.sender.clone()
    }

    /// The two halves.
    pub fn split(self) -> (LinkSender<P>, LinkReceiver<P>) {
        (self.sender, self.receiver)
    }

    /// See [`LinkSender::send`].
    pub async fn send(&self, message: &P::Message) -> Result<(), SendError> {
        self.sender.send(message).await
    }

    /// See [`LinkSender::request`].
    pub async fn request(&self, request: &P::Request) -> Result<P::Response, RequestError> {
        self.sender.request(request).await
    }

    /// See [`LinkSender::request_datagram`].
    pub async fn request_datagram(
        &self,
        request: &P::Request,
    ) -> Result<P::Response, RequestError> {
        self.sender.request_datagram(request).await
    }

    /// See [`LinkReceiver::recv`].
    pub async fn recv(&mut self) -> Result<Incoming<P>, LinkClosed> {
        self.receiver.recv().await
    }

    /// See [`LinkSender::close`].
    pub fn close(&self, reason: &str) {
        self.sender.close(reason);
    }

    /// See [`LinkSender::close_reason`].
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.sender.close_reason()
    }

    /// See [`LinkSender::closed`].
    pub async fn closed(&self) -> CloseReason {
        self.sender.closed().await
    }
}
