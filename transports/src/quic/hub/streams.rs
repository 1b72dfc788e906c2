//! The streams and datagrams of a live link: requests out and their
//! responses, the peer's requests in and our responses, the ordered stream
//! each way, and datagram requests. Everything is read through a
//! [`FrameReader`] and written through an [`Outgoing`], as far as flow
//! control allows; what the bytes mean is [`wire`]'s.

use std::time::Instant;

use quinn_proto as proto;
use quinn_proto::{Dir, ReadError, StreamId, VarInt};
use tracing::debug;
use vcodr_core::codec::{self, DecodeError};

use crate::error::CloseReason;
use crate::link::{Incoming, RequestFailure};
use crate::quic::wire::{self, code, dgram, stream_code_name, FrameReader};
use crate::Protocol;

use super::conn::{shut_as, Conn, LinkCtl, Phase};
use super::handshake::{client_hello_done, read_hello, server_hello_done};
use super::{AnswerTx, Ctx, ReplyTo};

/// Bytes of one stream still to be written, and whether to finish it after.
pub(super) struct Outgoing {
    pub(super) data: Vec<u8>,
    pub(super) written: usize,
    pub(super) finish: bool,
}

impl Outgoing {
    pub(super) fn new(data: Vec<u8>, finish: bool) -> Self {
        Outgoing {
            data,
            written: 0,
            finish,
        }
    }

    /// Writes what flow control allows; `Ok(true)` once everything is
    /// written (and the stream finished, if asked).
    pub(super) fn pump(
        &mut self,
        conn: &mut proto::Connection,
        id: StreamId,
    ) -> Result<bool, String> {
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
pub(super) struct OutRequest {
    pub(super) answer: AnswerTx,
    /// The frame, kept for a stream retry while it travels as a datagram.
    pub(super) frame: Vec<u8>,
}

/// What a stream of a live link is for.
pub(super) enum StreamTask {
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

/// Whether a frame of `len` bytes fits in one datagram now.
pub(super) fn fits_datagram(proto: &mut proto::Connection, len: usize) -> bool {
    dgram::fits(proto.datagrams().max_size(), len)
}

/// Sends a response (or the refusal, for `None`) where it belongs.
pub(super) fn respond<P: Protocol>(
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
pub(super) fn open_requests<P: Protocol>(proto: &mut proto::Connection, link: &mut LinkCtl<P>) {
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
pub(super) fn pump_ordered<P: Protocol>(proto: &mut proto::Connection, link: &mut LinkCtl<P>) {
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

/// Takes the streams the peer opened, as far as the phase allows: before
/// the link is up only the client's hello; the rest wait in QUIC until
/// [`link_up`](super::handshake::link_up) (a server may open streams as soon as it has read our hello,
/// before its own hello reaches us).
pub(super) fn accept_streams<P: Protocol>(
    ctx: &mut Ctx<P>,
    conn: &mut Conn<P>,
    now: Instant,
    dir: Dir,
) {
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

pub(super) fn on_writable<P: Protocol>(conn: &mut Conn<P>, id: StreamId) {
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
pub(super) enum StreamEnd {
    Open,
    Finished,
    Reset(VarInt),
}

/// Reads what `s` has into `reader`; completed frames go to `frames`. A
/// stream that carries one frame (`single`: requests, responses, hellos) is
/// stopped once it is in, so QUIC frees it (and the peer's stream credit)
/// even if its end is still on the way.
pub(super) fn read_into(
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
pub(super) fn one_frame(
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

pub(super) fn on_readable<P: Protocol>(
    ctx: &mut Ctx<P>,
    conn: &mut Conn<P>,
    now: Instant,
    s: StreamId,
) {
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

/// Reads a live link's stream, then closes the connection if its ordered
/// stream broke.
pub(super) fn read_link_stream<P: Protocol>(ctx: &mut Ctx<P>, conn: &mut Conn<P>, s: StreamId) {
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
pub(super) fn read_stream<P: Protocol>(
    proto: &mut proto::Connection,
    link: &mut LinkCtl<P>,
    s: StreamId,
) {
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
pub(super) fn on_app_datagram<P: Protocol>(conn: &mut Conn<P>, d: &[u8], turn: u64) {
    let Phase::Up(link) = &mut conn.phase else {
        return;
    };
    match dgram::read::<P::Request>(d, &link.info, link.max_frame_bytes) {
        Some(dgram::Datagram::Request { id, request }) => {
            let responder = link.responder(ReplyTo::Datagram(id));
            if !link.deliver_or_drop(Incoming::Request { request, responder }, turn) {
                debug!(link = %link.info, "application behind, or the link's answers for this turn spent: dropped a datagram request");
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
