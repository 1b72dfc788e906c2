//! The quinn driver ([`QuicDriver::Quinn`](crate::QuicDriver::Quinn)):
//! quinn's endpoint and connection tasks, and per link four tasks of ours
//! (ordered writer, request acceptor, datagram reader, ordered reader) plus
//! one per request served. For a few busy links, such as the peer link.
//!
//! It speaks [`super::wire`]'s protocol through quinn's async streams: the
//! hello ([`accept_one`], [`client_hello`]), a stream per request
//! ([`QuicLink::request`], [`serve_request`]), datagram requests
//! ([`QuicLink::request_datagram`], [`read_datagrams`]) and the ordered
//! stream ([`ordered_writer`], [`accept_ordered`]).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use quinn::{ConnectionError, ReadError, ReadExactError, RecvStream, SendStream};
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, warn};
use vcodr_core::codec::{self, negotiate, DecodeError, Hello, FRAME_HEADER_LEN};

use super::socket::CountingSocket;
use super::tls::{
    connect_failure, count_failed_handshake, count_late_handshake, count_refused_attempt,
    identity_from, NO_IDENTITY,
};
use super::wire::{self, close_reason_of, code, dgram, hello, stream_code_name};
use crate::error::{CloseReason, ConnectError, Refusal, SetupError};
use crate::link::{
    incoming_channel, Answerer, Backend, Connection, Incoming, IncomingTx, LinkInfo, ListenerStats,
    PeerId, PendingRequests, Refused, RequestFailure, Responder, ResponderInner,
};
use crate::settings::Settings;
use crate::Protocol;

/// A quinn endpoint on `socket`, its sends counted in `send_failures`.
/// Must be called within a tokio runtime.
pub(super) fn endpoint(
    addr: SocketAddr,
    socket: std::net::UdpSocket,
    send_failures: Arc<AtomicU64>,
) -> Result<(quinn::Endpoint, SocketAddr), SetupError> {
    let bind_err = |source| SetupError::Bind { addr, source };
    let runtime = quinn::default_runtime()
        .ok_or_else(|| bind_err(std::io::Error::other("no async runtime: call within tokio")))?;
    let socket = CountingSocket::new(socket, send_failures).map_err(bind_err)?;
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        None,
        Arc::new(socket),
        runtime,
    )
    .map_err(bind_err)?;
    let local_addr = endpoint.local_addr().map_err(bind_err)?;
    Ok((endpoint, local_addr))
}

/// Dials `addr` as `config` says: TLS, then the hello.
pub(super) async fn connect<P: Protocol>(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
    settings: &Arc<Settings>,
) -> Result<Connection<P>, ConnectError> {
    let connecting = endpoint
        .connect_with(config, addr, server_name)
        .map_err(|e| match e {
            quinn::ConnectError::InvalidServerName(_) => ConnectError::InvalidServerName {
                addr,
                server_name: server_name.to_string(),
            },
            other => ConnectError::Failed {
                addr,
                server_name: server_name.to_string(),
                reason: other.to_string(),
            },
        })?;
    let conn = connecting
        .await
        .map_err(|e| connect_failure(&e, addr, server_name))?;
    client_hello::<P>(conn, addr, server_name, settings).await
}

/// Starts accepting on `endpoint` with `config`; links go to `accepted`
/// until the returned guard is dropped, which then calls `stopped`.
pub(super) fn listen<P: Protocol>(
    endpoint: &quinn::Endpoint,
    config: quinn::ServerConfig,
    settings: Arc<Settings>,
    accepted: mpsc::Sender<Connection<P>>,
    answerer: Option<Answerer<P>>,
    stats: Arc<ListenerStats>,
    stopped: Box<dyn Fn() + Send + Sync>,
) -> QuicListenerGuard {
    endpoint.set_server_config(Some(config));
    let task = tokio::spawn(accept_loop::<P>(
        endpoint.clone(),
        settings,
        accepted,
        answerer,
        stats,
    ));
    QuicListenerGuard {
        endpoint: endpoint.clone(),
        listening: stopped,
        task: task.abort_handle(),
    }
}

/// Stops accepting when the listener is dropped.
pub(crate) struct QuicListenerGuard {
    endpoint: quinn::Endpoint,
    listening: Box<dyn Fn() + Send + Sync>,
    task: tokio::task::AbortHandle,
}

impl Drop for QuicListenerGuard {
    fn drop(&mut self) {
        self.task.abort();
        self.endpoint.set_server_config(None);
        (self.listening)();
    }
}

async fn accept_loop<P: Protocol>(
    endpoint: quinn::Endpoint,
    settings: Arc<Settings>,
    accepted: mpsc::Sender<Connection<P>>,
    answerer: Option<Answerer<P>>,
    stats: Arc<ListenerStats>,
) {
    let handshakes = Arc::new(Semaphore::new(settings.max_concurrent_handshakes));
    while let Some(incoming) = endpoint.accept().await {
        // The semaphore is never closed, so acquiring only waits.
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (settings, accepted, stats) = (settings.clone(), accepted.clone(), stats.clone());
        let answerer = answerer.clone();
        tokio::spawn(async move {
            accept_one::<P>(incoming, &settings, &accepted, answerer, &stats).await;
            drop(permit);
        });
    }
    debug!("endpoint closed; accept loop ends");
}

async fn accept_one<P: Protocol>(
    incoming: quinn::Incoming,
    settings: &Arc<Settings>,
    accepted: &mpsc::Sender<Connection<P>>,
    answerer: Option<Answerer<P>>,
    stats: &ListenerStats,
) {
    let remote = incoming.remote_address();
    let timeout = settings.handshake_timeout;
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            count_refused_attempt(stats, remote, &e);
            return;
        }
    };
    let conn = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            count_failed_handshake(stats, remote, &e);
            return;
        }
        Err(_) => {
            count_late_handshake(stats, remote, timeout);
            return;
        }
    };
    let Some(peer) = peer_id(&conn) else {
        stats.refused(Refused::NoIdentity, remote, None, &NO_IDENTITY);
        conn.close(code::NO_IDENTITY, NO_IDENTITY.as_bytes());
        return;
    };
    let refuse = |failure: hello::Failure| {
        failure.count(stats, remote, peer.as_str());
        let (error_code, reason) = failure.close();
        conn.close(error_code, reason.as_bytes());
    };
    let theirs = tokio::time::timeout(timeout, read_hello(&conn, settings.max_frame_bytes)).await;
    let (mut send, theirs) = match theirs {
        Ok(Ok(pair)) => pair,
        Ok(Err(reason)) => return refuse(hello::Failure::Bad(reason)),
        Err(_) => return refuse(hello::Failure::Late(timeout)),
    };
    // Our hello goes back whatever the outcome, so the client can name both versions.
    let ours = match hello::ours(settings) {
        Ok(frame) => frame,
        Err(e) => {
            warn!(%peer, %remote, reason = %e, "cannot encode our hello");
            conn.close(code::PROTOCOL_VIOLATION, hello::CANNOT_ENCODE.as_bytes());
            return;
        }
    };
    let version = match negotiate(&settings.hello, &theirs) {
        Ok(version) => version,
        Err(mismatch) => {
            let failure = hello::Failure::Mismatch(mismatch);
            failure.count(stats, remote, peer.as_str());
            if send.write_all(&ours).await.is_ok() && send.finish().is_ok() {
                // Let the client read our hello and close; then close anyway.
                let _ = tokio::time::timeout(timeout, conn.closed()).await;
            }
            let (error_code, reason) = failure.close();
            conn.close(error_code, reason.as_bytes());
            return;
        }
    };
    let info = LinkInfo {
        peer: peer.clone(),
        addr: remote,
        version,
        protocol: P::NAME,
    };
    let connection = start_link::<P>(conn.clone(), info, settings, answerer);
    if let Err(e) = async {
        send.write_all(&ours).await?;
        send.finish()?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await
    {
        // Dropping the link's handle closes it.
        hello::Failure::Unanswered(e.to_string()).count(stats, remote, peer.as_str());
        return;
    }
    debug!(%peer, %remote, version, "link up (accepted)");
    if accepted.send(connection).await.is_ok() {
        ListenerStats::bump(&stats.accepted);
    }
}

async fn read_hello(
    conn: &quinn::Connection,
    max_frame_bytes: usize,
) -> Result<(SendStream, Hello), String> {
    let (send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| format!("no hello stream: {e}"))?;
    let payload = read_frame(&mut recv, max_frame_bytes)
        .await
        .map_err(|e| format!("bad hello: {e}"))?;
    let theirs = hello::theirs(&payload).map_err(|e| format!("bad hello: {e}"))?;
    Ok((send, theirs))
}

async fn client_hello<P: Protocol>(
    conn: quinn::Connection,
    addr: SocketAddr,
    server_name: &str,
    settings: &Arc<Settings>,
) -> Result<Connection<P>, ConnectError> {
    let fail = |reason: String| ConnectError::Failed {
        addr,
        server_name: server_name.to_string(),
        reason,
    };
    let Some(peer) = peer_id(&conn) else {
        conn.close(code::NO_IDENTITY, NO_IDENTITY.as_bytes());
        return Err(ConnectError::HandshakeRefused {
            addr,
            server_name: server_name.to_string(),
            refusal: Refusal::NoIdentity,
        });
    };
    let ours = hello::ours(settings).map_err(|e| fail(format!("cannot encode our hello: {e}")))?;
    // Until the server's hello arrives, a failure may be the server refusing
    // our certificate: ask the connection why it closed.
    let lost = |conn: &quinn::Connection, what: String| match conn.close_reason() {
        Some(e) => connect_failure(&e, addr, server_name),
        None => fail(what),
    };
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| connect_failure(&e, addr, server_name))?;
    send.write_all(&ours)
        .await
        .map_err(|e| lost(&conn, format!("sending hello: {e}")))?;
    send.finish()
        .map_err(|e| lost(&conn, format!("sending hello: {e}")))?;
    let payload = match read_frame(&mut recv, settings.max_frame_bytes).await {
        Ok(payload) => payload,
        Err(FrameError::Read(ReadExactError::ReadError(ReadError::ConnectionLost(e)))) => {
            return Err(connect_failure(&e, addr, server_name));
        }
        Err(e) => return Err(lost(&conn, format!("reading the server's hello: {e}"))),
    };
    let theirs: Hello =
        hello::theirs(&payload).map_err(|e| fail(format!("bad hello from server: {e}")))?;
    match negotiate(&settings.hello, &theirs) {
        Ok(version) => {
            let info = LinkInfo {
                peer,
                addr,
                version,
                protocol: P::NAME,
            };
            debug!(peer = %info.peer, %addr, version, "link up (dialled)");
            Ok(start_link::<P>(conn, info, settings, None))
        }
        Err(mismatch) => {
            conn.close(code::VERSION_MISMATCH, mismatch.to_string().as_bytes());
            Err(ConnectError::VersionMismatch {
                addr,
                server_name: server_name.to_string(),
                mismatch,
            })
        }
    }
}

fn peer_id(conn: &quinn::Connection) -> Option<PeerId> {
    identity_from(conn.peer_identity())
}

/// Why a frame could not be read from a stream.
#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Read(#[from] ReadExactError),
    /// The stream ended cleanly before a header.
    #[error("stream finished")]
    End,
}

/// Reads one frame's payload. The header is checked before the payload
/// buffer is allocated, so a lying length costs nothing.
async fn read_frame(recv: &mut RecvStream, max_frame_bytes: usize) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Err(FrameError::End),
        Err(ReadExactError::FinishedEarly(have)) => {
            return Err(DecodeError::Truncated {
                needed: FRAME_HEADER_LEN,
                have,
            }
            .into())
        }
        Err(e) => return Err(e.into()),
    }
    let len = codec::decode_header(&header, max_frame_bytes)?;
    let mut payload = vec![0u8; len];
    match recv.read_exact(&mut payload).await {
        Ok(()) => Ok(payload),
        Err(ReadExactError::FinishedEarly(have)) => Err(DecodeError::Truncated {
            needed: FRAME_HEADER_LEN + len,
            have: FRAME_HEADER_LEN + have,
        }
        .into()),
        Err(e) => Err(e.into()),
    }
}

/// Resets a send stream that is dropped before the exchange completed, so
/// that a cancelled request or response never reaches the peer half-written.
struct ResetOnDrop {
    stream: Option<SendStream>,
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if let Some(mut stream) = self.stream.take() {
            let _ = stream.reset(code::CANCELLED);
        }
    }
}

pub(crate) async fn respond(stream: SendStream, frame: &[u8]) -> Result<(), String> {
    let mut guard = ResetOnDrop {
        stream: Some(stream),
    };
    let Some(stream) = guard.stream.as_mut() else {
        return Err("no stream".into());
    };
    let outcome = async {
        stream.write_all(frame).await.map_err(|e| e.to_string())?;
        stream.finish().map_err(|e| e.to_string())
    }
    .await;
    // Complete (or failed for good): dropping the stream now resets nothing.
    guard.stream = None;
    outcome
}

pub(crate) fn refuse(stream: &mut SendStream) {
    let _ = stream.reset(code::NO_RESPONSE);
}

/// How a datagram request was answered.
enum DatagramAnswer {
    Response(Vec<u8>),
    Refused,
    TooLarge,
}

/// Answers one datagram request.
pub(crate) struct DatagramReply {
    conn: quinn::Connection,
    id: u64,
}

impl DatagramReply {
    pub(crate) fn respond(self, frame: &[u8]) -> Result<(), String> {
        let datagram = dgram::response(self.id, frame, self.conn.max_datagram_size());
        self.conn.send_datagram(datagram).map_err(|e| e.to_string())
    }

    /// Tells the requester at once that no answer will come (the
    /// [`Responder`] holding this was dropped unanswered).
    pub(crate) fn refuse(self) {
        let _ = self.conn.send_datagram(dgram::refusal(self.id));
    }
}

/// The QUIC half of a [`Backend`].
pub(crate) struct QuicLink {
    conn: quinn::Connection,
    datagrams: Arc<PendingRequests<DatagramAnswer>>,
    ordered: mpsc::Sender<Vec<u8>>,
    local_close: Arc<OnceLock<CloseReason>>,
    max_frame_bytes: usize,
    request_timeout: Duration,
}

impl QuicLink {
    pub(crate) async fn send_frame(&self, frame: Vec<u8>) -> Result<(), CloseReason> {
        match self.ordered.send(frame).await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.current_reason()),
        }
    }

    fn current_reason(&self) -> CloseReason {
        match self.conn.close_reason() {
            Some(e) => close_reason_of(&e, &self.local_close),
            None => CloseReason::Protocol("the ordered stream failed".into()),
        }
    }

    pub(crate) async fn request(&self, frame: Vec<u8>) -> Result<Vec<u8>, RequestFailure> {
        let lost =
            |e: &ConnectionError| RequestFailure::Closed(close_reason_of(e, &self.local_close));
        let exchange = async {
            let (send, mut recv) = self.conn.open_bi().await.map_err(|e| lost(&e))?;
            let mut guard = ResetOnDrop { stream: Some(send) };
            let stream = guard
                .stream
                .as_mut()
                .ok_or(RequestFailure::NoResponse("internal".into()))?;
            if let Err(e) = stream.write_all(&frame).await {
                return Err(match e {
                    quinn::WriteError::ConnectionLost(e) => lost(&e),
                    quinn::WriteError::Stopped(code) => {
                        RequestFailure::NoResponse(stream_code_name(code))
                    }
                    other => RequestFailure::NoResponse(other.to_string()),
                });
            }
            let _ = stream.finish();
            let result = match read_frame(&mut recv, self.max_frame_bytes).await {
                Ok(payload) => Ok(payload),
                Err(FrameError::Decode(e)) => Err(RequestFailure::Bad(e)),
                Err(FrameError::End) => {
                    Err(RequestFailure::NoResponse(wire::FINISHED_UNANSWERED.into()))
                }
                Err(FrameError::Read(ReadExactError::ReadError(ReadError::ConnectionLost(e)))) => {
                    Err(lost(&e))
                }
                Err(FrameError::Read(ReadExactError::ReadError(ReadError::Reset(code)))) => {
                    Err(RequestFailure::NoResponse(stream_code_name(code)))
                }
                Err(FrameError::Read(e)) => Err(RequestFailure::NoResponse(e.to_string())),
            };
            // The exchange is over: nothing to reset.
            guard.stream = None;
            result
        };
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(RequestFailure::TimedOut),
        }
    }

    /// A request as one datagram, its response as another; on a stream when
    /// either does not fit.
    pub(crate) async fn request_datagram(&self, frame: Vec<u8>) -> Result<Vec<u8>, RequestFailure> {
        if !dgram::fits(self.conn.max_datagram_size(), frame.len()) {
            return self.request(frame).await;
        }
        let (slot, rx) = self.datagrams.register();
        match self.conn.send_datagram(dgram::request(slot.id, &frame)) {
            Ok(()) => {}
            Err(quinn::SendDatagramError::ConnectionLost(e)) => {
                return Err(RequestFailure::Closed(close_reason_of(
                    &e,
                    &self.local_close,
                )))
            }
            // Unsupported by the peer, disabled, or the path shrank.
            Err(_) => return self.request(frame).await,
        }
        let answer = async {
            tokio::select! {
                answer = rx => answer.ok(),
                // No answer can come over a closed connection: say so now.
                _ = self.conn.closed() => None,
            }
        };
        match tokio::time::timeout(self.request_timeout, answer).await {
            Ok(Some(DatagramAnswer::Response(payload))) => Ok(payload),
            Ok(Some(DatagramAnswer::Refused)) => {
                Err(RequestFailure::NoResponse(dgram::REFUSED_TEXT.into()))
            }
            Ok(Some(DatagramAnswer::TooLarge)) => self.request(frame).await,
            Ok(None) => Err(RequestFailure::Closed(self.current_reason())),
            Err(_) => Err(RequestFailure::TimedOut),
        }
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    pub(crate) fn close(&self, reason: &str) {
        let _ = self.local_close.set(CloseReason::Local(reason.to_string()));
        self.conn.close(code::CLOSED, reason.as_bytes());
    }

    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        self.conn
            .close_reason()
            .map(|e| close_reason_of(&e, &self.local_close))
    }

    pub(crate) async fn closed(&self) -> CloseReason {
        let e = self.conn.closed().await;
        close_reason_of(&e, &self.local_close)
    }
}

/// Spawns the tasks of an authenticated link and returns its handle.
fn start_link<P: Protocol>(
    conn: quinn::Connection,
    info: LinkInfo,
    settings: &Arc<Settings>,
    answerer: Option<Answerer<P>>,
) -> Connection<P> {
    let (ordered_tx, ordered_rx) = mpsc::channel(settings.max_pending_sends);
    let (incoming_tx, incoming_rx) = incoming_channel(settings.max_pending_incoming, answerer);
    let local_close = Arc::new(OnceLock::new());
    let datagrams = Arc::new(PendingRequests::default());
    let link = QuicLink {
        conn: conn.clone(),
        datagrams: datagrams.clone(),
        ordered: ordered_tx,
        local_close: local_close.clone(),
        max_frame_bytes: settings.max_frame_bytes,
        request_timeout: settings.request_timeout,
    };
    let connection = Connection::new(
        info,
        settings.max_frame_bytes,
        Backend::Quic(link),
        incoming_rx,
    );
    let info = connection.info_arc();
    tokio::spawn(ordered_writer(conn.clone(), ordered_rx, info.clone()));
    tokio::spawn(accept_requests::<P>(
        conn.clone(),
        incoming_tx.clone(),
        info.clone(),
        settings.clone(),
    ));
    tokio::spawn(read_datagrams::<P>(
        conn.clone(),
        incoming_tx.clone(),
        datagrams,
        info.clone(),
        settings.max_frame_bytes,
    ));
    tokio::spawn(accept_ordered::<P>(
        conn,
        incoming_tx,
        info,
        settings.max_frame_bytes,
        local_close,
    ));
    connection
}

async fn ordered_writer(
    conn: quinn::Connection,
    mut frames: mpsc::Receiver<Vec<u8>>,
    info: Arc<LinkInfo>,
) {
    let mut stream: Option<SendStream> = None;
    let mut batch = Vec::new();
    const BATCH_MAX: usize = 64;
    while frames.recv_many(&mut batch, BATCH_MAX).await > 0 {
        if stream.is_none() {
            match conn.open_uni().await {
                Ok(s) => stream = Some(s),
                Err(e) => {
                    debug!(link = %info, reason = %e, "cannot open the ordered stream");
                    return;
                }
            }
        }
        let Some(s) = stream.as_mut() else { return };
        for frame in batch.drain(..) {
            if let Err(e) = s.write_all(&frame).await {
                debug!(link = %info, reason = %e, "ordered stream write failed");
                return;
            }
        }
    }
    if let Some(mut s) = stream {
        let _ = s.finish();
    }
}

/// Reads datagram requests (for the application) and responses (for the
/// requests this side sent) until the connection closes. A malformed
/// datagram is dropped with a warning; the link stays up.
async fn read_datagrams<P: Protocol>(
    conn: quinn::Connection,
    incoming: IncomingTx<P>,
    requests: Arc<PendingRequests<DatagramAnswer>>,
    info: Arc<LinkInfo>,
    max_frame_bytes: usize,
) {
    while let Ok(d) = conn.read_datagram().await {
        match dgram::read::<P::Request>(&d, &info, max_frame_bytes) {
            Some(dgram::Datagram::Request { id, request }) => {
                let reply = DatagramReply {
                    conn: conn.clone(),
                    id,
                };
                let responder = Responder::new(
                    info.clone(),
                    max_frame_bytes,
                    ResponderInner::QuicDatagram(reply),
                );
                if incoming
                    .send(Incoming::Request { request, responder })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Some(dgram::Datagram::BadRequest { id }) => {
                let _ = conn.send_datagram(dgram::refusal(id));
            }
            Some(dgram::Datagram::Response { id, payload }) => {
                requests.answer(id, DatagramAnswer::Response(payload.to_vec()));
            }
            Some(dgram::Datagram::Refused { id }) => requests.answer(id, DatagramAnswer::Refused),
            Some(dgram::Datagram::TooLarge { id }) => {
                requests.answer(id, DatagramAnswer::TooLarge);
            }
            None => {}
        }
    }
}

async fn accept_requests<P: Protocol>(
    conn: quinn::Connection,
    incoming: IncomingTx<P>,
    info: Arc<LinkInfo>,
    settings: Arc<Settings>,
) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        tokio::spawn(serve_request::<P>(
            send,
            recv,
            incoming.clone(),
            info.clone(),
            settings.clone(),
        ));
    }
}

async fn serve_request<P: Protocol>(
    mut send: SendStream,
    mut recv: RecvStream,
    incoming: IncomingTx<P>,
    info: Arc<LinkInfo>,
    settings: Arc<Settings>,
) {
    let read = tokio::time::timeout(
        settings.request_timeout,
        read_frame(&mut recv, settings.max_frame_bytes),
    );
    let failure = match read.await {
        Ok(Ok(payload)) => match codec::decode_payload::<P::Request>(&payload) {
            Ok(request) => {
                let responder = Responder::new(
                    info.clone(),
                    settings.max_frame_bytes,
                    ResponderInner::Quic(send),
                );
                // If the application dropped its receiver, the responder is
                // dropped with the error and the requester learns at once.
                let _ = incoming
                    .send(Incoming::Request { request, responder })
                    .await;
                return;
            }
            Err(e) => e.to_string(),
        },
        Ok(Err(FrameError::Read(ReadExactError::ReadError(ReadError::ConnectionLost(_))))) => {
            return
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => wire::request_late(settings.request_timeout),
    };
    wire::rejected_request(&info, &failure);
    let _ = recv.stop(code::FRAME_REJECTED);
    let _ = send.reset(code::FRAME_REJECTED);
}

async fn accept_ordered<P: Protocol>(
    conn: quinn::Connection,
    incoming: IncomingTx<P>,
    info: Arc<LinkInfo>,
    max_frame_bytes: usize,
    local_close: Arc<OnceLock<CloseReason>>,
) {
    while let Ok(mut recv) = conn.accept_uni().await {
        loop {
            let failure = match read_frame(&mut recv, max_frame_bytes).await {
                Ok(payload) => match codec::decode_payload::<P::Message>(&payload) {
                    Ok(message) => {
                        if incoming.send(Incoming::Message(message)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(e) => e.to_string(),
                },
                Err(FrameError::End) => break,
                Err(FrameError::Read(ReadExactError::ReadError(ReadError::ConnectionLost(_)))) => {
                    return
                }
                Err(e) => e.to_string(),
            };
            let reason = wire::ordered_violation(&info, &failure);
            let _ = local_close.set(CloseReason::Protocol(reason.clone()));
            conn.close(code::PROTOCOL_VIOLATION, reason.as_bytes());
            return;
        }
    }
}
