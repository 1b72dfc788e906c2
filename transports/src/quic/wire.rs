//! The wire protocol both QUIC drivers speak, described once: the
//! application close and reset [`code`]s and what a close means to the
//! application ([`close_reason_of`]), the [`hello`] and what a listener
//! does when it fails, the datagram header ([`dgram`]), and the stream
//! frame reader ([`FrameReader`]).
//!
//! Nothing here does I/O. The quinn driver (`quinn_driver`) and the hub
//! (`hub`) call these functions on the bytes they read and act on the
//! answer; neither keeps its own copy of a code, a header layout or the
//! words a bad frame is reported with.
//!
//! A frame is the core codec's: a 5-byte header, then the payload. Its size
//! is checked from the header before a payload byte is kept.

use std::sync::OnceLock;

use quinn_proto::{ConnectionError, VarInt};
use vcodr_core::codec::{self, DecodeError, FRAME_HEADER_LEN};

use crate::error::CloseReason;
use crate::link::LinkInfo;

/// Application error codes on connection close and stream reset.
pub mod code {
    use quinn::VarInt;

    /// Connection closed by the application, normally.
    pub const CLOSED: VarInt = VarInt::from_u32(0);
    /// The peer broke the framing or the hello.
    pub const PROTOCOL_VIOLATION: VarInt = VarInt::from_u32(1);
    /// The two ends share no protocol version.
    pub const VERSION_MISMATCH: VarInt = VarInt::from_u32(2);
    /// The certificate carries no identity or no role (the verifiers
    /// refuse such certificates first; kept as a second line of defence).
    pub const NO_IDENTITY: VarInt = VarInt::from_u32(3);
    /// The listener is gone or the endpoint shuts down.
    pub const SHUTDOWN: VarInt = VarInt::from_u32(4);
    /// Stream reset: the frame on it was rejected (malformed, oversized, late).
    pub const FRAME_REJECTED: VarInt = VarInt::from_u32(0x10);
    /// Stream reset: the responder was dropped without answering.
    pub const NO_RESPONSE: VarInt = VarInt::from_u32(0x11);
    /// Stream reset: the requester gave up.
    pub const CANCELLED: VarInt = VarInt::from_u32(0x12);
}

/// What a stream reset (or stop) with `code` tells the requester.
pub(crate) fn stream_code_name(code: VarInt) -> String {
    match code {
        c if c == code::FRAME_REJECTED => "the peer rejected the frame".into(),
        c if c == code::NO_RESPONSE => "the peer dropped the request unanswered".into(),
        c if c == code::CANCELLED => "cancelled".into(),
        c => format!("stream reset with code {c}"),
    }
}

/// What the application is told of a connection that ended with `e`;
/// `local` holds why we closed it, if we did.
pub(crate) fn close_reason_of(e: &ConnectionError, local: &OnceLock<CloseReason>) -> CloseReason {
    match e {
        ConnectionError::LocallyClosed => local
            .get()
            .cloned()
            .unwrap_or_else(|| CloseReason::Local("closed".into())),
        ConnectionError::ApplicationClosed(c) => {
            let reason = String::from_utf8_lossy(&c.reason).into_owned();
            if c.error_code == code::PROTOCOL_VIOLATION {
                CloseReason::Peer(format!("protocol violation: {reason}"))
            } else if c.error_code == code::VERSION_MISMATCH {
                CloseReason::Peer(format!("version mismatch: {reason}"))
            } else {
                CloseReason::Peer(reason)
            }
        }
        ConnectionError::TimedOut => CloseReason::TimedOut,
        ConnectionError::Reset => CloseReason::Reset,
        other => CloseReason::Transport(other.to_string()),
    }
}

/// The hello: the first frame each way on the client's first bidirectional
/// stream, client first. The server answers with its own hello whatever the
/// outcome, so that on a mismatch both sides can name both versions; then
/// the client closes with [`code::VERSION_MISMATCH`].
pub(crate) mod hello {
    use std::net::SocketAddr;
    use std::time::Duration;

    use quinn_proto::VarInt;
    use vcodr_core::codec::{self, DecodeError, EncodeError, Hello, VersionMismatch};

    use super::code;
    use crate::link::{ListenerStats, Refused};
    use crate::settings::Settings;

    /// Our hello, framed.
    pub(crate) fn ours(settings: &Settings) -> Result<Vec<u8>, EncodeError> {
        codec::encode_frame(&settings.hello, settings.max_frame_bytes)
    }

    /// The peer's hello, from its frame's payload.
    pub(crate) fn theirs(payload: &[u8]) -> Result<Hello, DecodeError> {
        codec::decode_payload(payload)
    }

    /// Why a server (after TLS, so the dialler is known) refuses a link at
    /// the hello: counted and logged the same by both drivers.
    #[derive(Debug)]
    pub(crate) enum Failure {
        /// No readable, well-formed hello; the text says what was wrong.
        Bad(String),
        /// No hello within the handshake timeout.
        Late(Duration),
        /// No common protocol version; our hello was sent first.
        Mismatch(VersionMismatch),
        /// Our hello could not be sent.
        Unanswered(String),
    }

    impl Failure {
        /// Counts and logs the refusal of `peer` at `remote`.
        pub(crate) fn count(&self, stats: &ListenerStats, remote: SocketAddr, peer: &str) {
            let (why, detail) = match self {
                Failure::Bad(reason) => (
                    Refused::NoHello,
                    format!("no valid hello ({reason}); connection closed"),
                ),
                Failure::Late(timeout) => (
                    Refused::NoHello,
                    format!("no hello within {timeout:?}; connection closed"),
                ),
                Failure::Mismatch(mismatch) => (
                    Refused::VersionMismatch,
                    format!("no common protocol version: {mismatch}"),
                ),
                Failure::Unanswered(reason) => (
                    Refused::NoHello,
                    format!("could not answer the hello: {reason}"),
                ),
            };
            stats.refused(why, remote, Some(peer), &detail);
        }

        /// The code and reason the connection closes with, when the
        /// server closes it for this refusal (on a mismatch, once the
        /// client has had time to read our hello).
        pub(crate) fn close(&self) -> (VarInt, String) {
            match self {
                Failure::Bad(reason) => (code::PROTOCOL_VIOLATION, reason.clone()),
                Failure::Late(_) => (
                    code::PROTOCOL_VIOLATION,
                    "no hello within the handshake timeout".into(),
                ),
                Failure::Mismatch(mismatch) => (code::VERSION_MISMATCH, mismatch.to_string()),
                Failure::Unanswered(_) => (code::PROTOCOL_VIOLATION, "no hello".into()),
            }
        }
    }

    /// The close reason of a server that cannot encode its own hello (a
    /// settings bug, logged as a warning).
    pub(crate) const CANNOT_ENCODE: &str = "server cannot encode its hello";
}

/// Datagram requests and responses: a 9-byte header (kind, then the
/// request id as a big-endian u64) before an ordinary frame. A request goes
/// on a stream instead when it does not fit in a datagram; a response that
/// does not fit is answered [`TOO_LARGE`](dgram::TOO_LARGE), and the requester asks again on
/// a stream.
pub(crate) mod dgram {
    use serde::de::DeserializeOwned;

    use crate::link::{decode_whole_frame, whole_frame_payload, LinkInfo};

    /// A request; the rest is its frame.
    pub const REQUEST: u8 = 0;
    /// The response to request `id`; the rest is its frame.
    pub const RESPONSE: u8 = 1;
    /// The responder was dropped unanswered (or the request frame was bad).
    pub const REFUSED: u8 = 2;
    /// The response does not fit in a datagram: ask again on a stream.
    pub const TOO_LARGE: u8 = 3;
    pub const HEADER_LEN: usize = 9;

    pub fn encode(kind: u8, id: u64, frame: &[u8]) -> bytes::Bytes {
        let mut b = Vec::with_capacity(HEADER_LEN + frame.len());
        b.push(kind);
        b.extend_from_slice(&id.to_be_bytes());
        b.extend_from_slice(frame);
        b.into()
    }

    /// Kind, request id and frame of a datagram; `None` if it is shorter
    /// than its header.
    pub fn decode(d: &[u8]) -> Option<(u8, u64, &[u8])> {
        let (header, frame) = d.split_at_checked(HEADER_LEN)?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&header[1..]);
        Some((header[0], u64::from_be_bytes(id), frame))
    }

    /// Whether a frame of `frame_len` bytes fits in one datagram, given
    /// the connection's current largest (`None`: datagrams unavailable).
    pub(crate) fn fits(max_datagram_bytes: Option<usize>, frame_len: usize) -> bool {
        max_datagram_bytes.is_some_and(|max| HEADER_LEN + frame_len <= max)
    }

    /// Request `id`, its frame after the header.
    pub(crate) fn request(id: u64, frame: &[u8]) -> bytes::Bytes {
        encode(REQUEST, id, frame)
    }

    /// The answer to datagram request `id`: the response if it fits,
    /// otherwise [`TOO_LARGE`].
    pub(crate) fn response(
        id: u64,
        frame: &[u8],
        max_datagram_bytes: Option<usize>,
    ) -> bytes::Bytes {
        if fits(max_datagram_bytes, frame.len()) {
            encode(RESPONSE, id, frame)
        } else {
            encode(TOO_LARGE, id, &[])
        }
    }

    /// The answer to datagram request `id` that will get no response.
    pub(crate) fn refusal(id: u64) -> bytes::Bytes {
        encode(REFUSED, id, &[])
    }

    /// An application datagram, read.
    #[derive(Debug, PartialEq)]
    pub(crate) enum Datagram<'a, R> {
        /// A request for the application; answer with datagram `id`.
        Request { id: u64, request: R },
        /// A request whose frame is bad (already logged): answer
        /// [`refusal`]; the link stays up.
        BadRequest { id: u64 },
        /// The response to our request `id`: its payload.
        Response { id: u64, payload: &'a [u8] },
        /// Our request `id` will get no answer.
        Refused { id: u64 },
        /// The answer to our request `id` does not fit: ask on a stream.
        TooLarge { id: u64 },
    }

    /// Reads a datagram received on `link`. `None` for one to drop (shorter
    /// than its header, a malformed response, an unknown kind), logged here
    /// (rate-limited, [`crate::log_limit::bad_frame`]); the link stays up.
    pub(crate) fn read<'a, R: DeserializeOwned>(
        d: &'a [u8],
        link: &LinkInfo,
        max_frame_bytes: usize,
    ) -> Option<Datagram<'a, R>> {
        let Some((kind, id, frame)) = decode(d) else {
            crate::log_limit::bad_frame(
                link,
                "short datagram",
                &format_args!(
                    "dropped a datagram of {} bytes, shorter than its header",
                    d.len()
                ),
            );
            return None;
        };
        match kind {
            REQUEST => match decode_whole_frame::<R>(frame, max_frame_bytes) {
                Ok(request) => Some(Datagram::Request { id, request }),
                Err(e) => {
                    crate::log_limit::bad_frame(
                        link,
                        "bad datagram request",
                        &format_args!("rejected a datagram request ({e}); the link stays up"),
                    );
                    Some(Datagram::BadRequest { id })
                }
            },
            RESPONSE => match whole_frame_payload(frame, max_frame_bytes) {
                Ok(payload) => Some(Datagram::Response { id, payload }),
                Err(e) => {
                    crate::log_limit::bad_frame(
                        link,
                        "bad datagram response",
                        &format_args!("dropped a malformed datagram response ({e})"),
                    );
                    None
                }
            },
            REFUSED => Some(Datagram::Refused { id }),
            TOO_LARGE => Some(Datagram::TooLarge { id }),
            other => {
                crate::log_limit::bad_frame(
                    link,
                    "unknown datagram",
                    &format_args!("dropped a datagram of unknown kind {other}"),
                );
                None
            }
        }
    }

    /// What a requester is told when its datagram request was refused.
    pub(crate) const REFUSED_TEXT: &str = "the peer refused the request unanswered";
}

/// A request stream whose frame was bad or late: logged here; the driver
/// resets that stream with [`code::FRAME_REJECTED`] and the link stays up.
pub(crate) fn rejected_request(link: &LinkInfo, failure: &str) {
    crate::log_limit::bad_frame(
        link,
        "bad request frame",
        &format_args!(
            "rejected a request frame ({failure}); that stream is reset, the link stays up"
        ),
    );
}

/// A bad frame on the peer's ordered stream: logged here; the driver closes
/// the connection with [`code::PROTOCOL_VIOLATION`] and the returned reason,
/// since order can no longer be guaranteed.
pub(crate) fn ordered_violation(link: &LinkInfo, failure: &str) -> String {
    crate::log_limit::bad_frame(
        link,
        "bad ordered frame",
        &format_args!("bad frame on the ordered stream ({failure}); closing this connection only"),
    );
    format!("bad frame on the ordered stream: {failure}")
}

/// Why a request stream was reset for lateness.
pub(crate) fn request_late(request_timeout: std::time::Duration) -> String {
    format!("request not received within {request_timeout:?}")
}

/// What a requester is told of a stream the peer finished unanswered.
pub(crate) const FINISHED_UNANSWERED: &str = "the peer finished the stream without a response";

/// Reassembles frames from stream chunks; the header is checked against
/// `max_frame_bytes` before any payload byte is kept. The hub reads every
/// stream through one; the quinn driver reads exactly a header, then
/// exactly its payload, with the same checks and the same errors.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    /// Header plus payload length, once the header is in.
    total: Option<usize>,
}

impl FrameReader {
    /// Appends `data`, pushing each completed frame's payload to `out`.
    pub(crate) fn push(
        &mut self,
        mut data: &[u8],
        max_frame_bytes: usize,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<(), DecodeError> {
        loop {
            let want = self.total.unwrap_or(FRAME_HEADER_LEN);
            let take = (want - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() < want {
                return Ok(());
            }
            match self.total {
                None => {
                    let len = codec::decode_header(&self.buf, max_frame_bytes)?;
                    self.total = Some(FRAME_HEADER_LEN + len);
                }
                Some(_) => {
                    out.push(self.buf.split_off(FRAME_HEADER_LEN));
                    self.buf.clear();
                    self.total = None;
                    if data.is_empty() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Bytes held for the frame being read.
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// What the end of the stream means for a partly read frame.
    pub(crate) fn at_end(&self) -> Option<DecodeError> {
        if self.buf.is_empty() {
            return None;
        }
        Some(DecodeError::Truncated {
            needed: self.total.unwrap_or(FRAME_HEADER_LEN),
            have: self.buf.len(),
        })
    }
}

#[cfg(test)]
mod tests;
