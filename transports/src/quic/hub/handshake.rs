//! A connection's way up, after TLS: the peer's identity from its
//! certificate, the hello each way ([`wire::hello`](crate::quic::wire::hello)), the version
//! negotiated, and the link handed to the dialler or the listener
//! ([`make_link`], [`link_up`]). Refusals are counted as the quinn driver
//! counts them, through the same [`hello::Failure`].

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use quinn_proto as proto;
use quinn_proto::{Dir, StreamId};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, warn};
use vcodr_core::codec::{negotiate, Hello};

use crate::error::{CloseReason, ConnectError, Refusal};
use crate::link::{
    incoming_channel, Answerer, Backend, Connection, LinkInfo, ListenerStats, PeerId, Refused,
};
use crate::quic::tls::{identity_from, NO_IDENTITY};
use crate::quic::wire::{code, hello, FrameReader};
use crate::Protocol;

use super::conn::{handshake_over, shut, shut_as, Conn, HubLink, LinkCtl, Phase};
use super::streams::{accept_streams, on_app_datagram, one_frame, read_into, Outgoing, StreamTask};
use super::{ConnKey, Ctx};

pub(super) fn peer_of(proto: &proto::Connection) -> Option<PeerId> {
    identity_from(proto.crypto_session().peer_identity())
}

/// The link just came up: what the peer sent meanwhile is taken now.
pub(super) fn link_up<P: Protocol>(ctx: &mut Ctx<P>, conn: &mut Conn<P>, now: Instant) {
    accept_streams(ctx, conn, now, Dir::Bi);
    accept_streams(ctx, conn, now, Dir::Uni);
    while matches!(conn.phase, Phase::Up(_)) {
        let Some(d) = conn.proto.datagrams().recv() else {
            break;
        };
        on_app_datagram(conn, &d, ctx.turn);
    }
}

pub(super) fn on_connected<P: Protocol>(ctx: &mut Ctx<P>, conn: &mut Conn<P>, now: Instant) {
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

/// The peer's hello from its stream; `None` until its frame is complete.
/// Errors start with `bad` (a malformed hello) or `unreadable` (no hello).
pub(super) fn read_hello(
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

pub(super) fn client_hello_done<P: Protocol>(
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
            let Some(connection) = make_link(ctx, conn, info, None) else {
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

pub(super) fn server_hello_done<P: Protocol>(
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
            let answerer = ctx.listen.as_ref().and_then(|l| l.answerer.clone());
            let Some(connection) = make_link(ctx, conn, info, answerer) else {
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

pub(super) const SHUTTING_DOWN: &str = "the QUIC endpoint is shutting down";

/// Makes the application's handle of an authenticated link (its requests
/// answered by `answerer`, if any) and puts the connection in its `Up`
/// phase; once the hub is shutting down, closes the connection instead and
/// returns `None`.
pub(super) fn make_link<P: Protocol>(
    ctx: &mut Ctx<P>,
    conn: &mut Conn<P>,
    info: LinkInfo,
    answerer: Option<Answerer<P>>,
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
    let (incoming_tx, incoming_rx) = incoming_channel(settings.max_pending_incoming, answerer);
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
    conn.phase = Phase::Up(Box::new(LinkCtl::new(
        key,
        tx,
        connection.info_arc(),
        settings.max_frame_bytes,
        incoming_tx,
        closed_tx,
        ordered_failed,
    )));
    Some(connection)
}
