//! vcodr-transport: carries `vcodr-core` messages between servers (the peer
//! link, active ↔ standby) and between edges and servers, over QUIC with
//! mutual TLS ([`quic`]) or over an in-process, fault-injecting network for
//! simulations ([`mem`]). Both give the same types, so a driver written
//! against [`Transport`] runs unchanged on either.
//!
//! QUIC connections are driven by quinn ([`QuicDriver::Quinn`]: a task per
//! connection, for a few busy links) or by the hub ([`QuicDriver::Hub`]: one
//! task per UDP socket drives every connection through quinn-proto, for
//! thousands of mostly idle edge links). The two speak the same protocol.
//!
//! # Model
//! - A [`Protocol`] names a link kind (its ALPN), the certificate roles
//!   that may take each side of it, and its three message types: requests,
//!   their responses, and one-way messages. The crate is generic over them;
//!   it knows nothing of vcodr's messages.
//! - [`Transport::listen`] yields a [`Listener`]; each [`Listener::accept`]
//!   is a **link-up** event: a [`Connection`] whose peer proved its identity
//!   with a certificate from the deployment CA and completed the protocol
//!   hello. The identity ([`PeerId`]) comes from the verified certificate,
//!   never from a message: its name (a server name or an edge's client id),
//!   its role ([`CertRole`]: server, edge, gateway) and its public key
//!   (SubjectPublicKeyInfo, with a SHA-256 [fingerprint](PeerId::fingerprint)),
//!   which a server pins for its peer at pairing ([`PeerId::to_core`]) and
//!   verifies epoch proofs against ([`certs::CertKeys`]).
//! - **Roles rule**: a certificate holder acts only in its own role. A
//!   protocol names the roles that may dial it ([`Protocol::ACCEPTS`]) and
//!   the role that serves it ([`Protocol::SERVES`], servers). Both are
//!   checked in the TLS handshake, after the chain: an edge certificate is
//!   refused by the peer listener before any protocol message is read, a
//!   server certificate by the edge listener, and a listener whose
//!   certificate is not a server's by every dialler. Both ends report
//!   [`Refusal::WrongRole`] naming the certificate, its role and the roles
//!   accepted; a certificate without a role gets [`Refusal::NoRole`].
//!   Refusals are counted per reason ([`ListenerCounts`]) and logged so that
//!   a flood of them costs a few lines per 10 s, not one line each.
//! - [`Transport::connect`] dials an address and expects a server name; it
//!   returns only after TLS *and* the hello succeeded (a QUIC client without
//!   a certificate gets `Ok` from quinn's `connect` and is refused a moment
//!   later: here it gets [`ConnectError::HandshakeRefused`]).
//! - On a connection: [`Connection::request`] sends a request and awaits its
//!   response (heartbeat → reply, config pull, monitoring batch → ack);
//!   [`Connection::send`] appends to the ordered one-way stream (the
//!   replication log); [`Connection::recv`] yields [`Incoming`] requests
//!   (with a [`Responder`]) and messages, except that the requests of a
//!   listener with an [`Answerer`] ([`Transport::listen_with`]) go to it
//!   instead; [`Connection::closed`] is the **link-down** event with its
//!   [`CloseReason`].
//! - Protocol versions: each side's [`Settings::hello`] is exchanged when a
//!   link opens and [`vcodr_core::codec::negotiate`]d; the agreed version is
//!   in [`LinkInfo::version`]; peers without a common version are refused
//!   with both versions named ([`ConnectError::VersionMismatch`]).
//!
//! # Calling contract
//! - Everything runs inside a tokio runtime; transports spawn their tasks.
//! - Every queue is bounded by a [`Settings`] field: `send` waits while
//!   `max_pending_sends` messages are queued, the transport stops reading
//!   while `max_pending_incoming` are unread (so the peer slows down), and
//!   `request` waits while `max_concurrent_requests` are in flight. With an
//!   answerer nothing waits unread: a link's stream requests are bounded by
//!   `max_concurrent_requests`, and on the hub its datagram requests by
//!   `ANSWERS_PER_LINK_PER_TURN` per turn of the hub, beyond which
//!   they are dropped as lost packets. A
//!   driver that must not wait wraps calls in its own timeout; `send`,
//!   `recv` and `accept` are cancel-safe.
//! - Ordered messages arrive in order, without loss or duplicates, while a
//!   link lives (on QUIC; [`mem`] can inject harsher faults). A link that
//!   closes may lose what was in flight: protocols acknowledge and resend
//!   over the next link (see [`reconnect`]).
//! - Dropping every handle of a connection closes it; dropping a
//!   [`Responder`] unanswered tells the requester at once.
//! - Malformed, oversized or unknown-version frames close only their stream
//!   (a request) or their connection (the ordered stream, or the hello),
//!   with a `tracing` warning that names the peer, address and reason; the
//!   listener keeps serving everyone else. A frame's size is checked from
//!   its header before its payload is allocated.
//! - Errors are values ([`ConnectError`], [`SendError`], [`RequestError`],
//!   ...) naming the peer, address and what failed; panics are bugs.
//!
//! # Why ring
//! rustls and quinn use the `ring` crypto provider here: it builds with a C
//! compiler alone (gcc on our machines), whereas `aws-lc-rs`, the rustls
//! default, needs cmake (and for some targets clang/NASM) in every build
//! and CI image. Configurations are built with `builder_with_provider`, so
//! no process-wide default provider is needed even if both ever end up in
//! the dependency tree.
//!
//! # Example: a server and an edge over QUIC on loopback
//! ```
//! use serde::{Deserialize, Serialize};
//! use vcodr_transport::certs::{CertRole, CertificateAuthority};
//! use vcodr_transport::quic::QuicTransport;
//! use vcodr_transport::{Incoming, Protocol, Settings, Transport};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct Heartbeat { seq: u64 }
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct Reply { seq: u64, server: String }
//!
//! /// The edge link: heartbeats answered by replies, no one-way messages;
//! /// dialled by edges and gateways, served by servers.
//! struct EdgeLink;
//! impl Protocol for EdgeLink {
//!     const NAME: &'static str = "vcodr-edge-example";
//!     const ACCEPTS: &'static [CertRole] = &[CertRole::Edge, CertRole::Gateway];
//!     type Request = Heartbeat;
//!     type Response = Reply;
//!     type Message = ();
//! }
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let ca = CertificateAuthority::new()?;
//!     let loopback = "127.0.0.1:0".parse()?;
//!
//!     // Server "a": accept edges, answer each heartbeat.
//!     let server_identity = ca.issue_identity("a", CertRole::Server)?;
//!     let server = QuicTransport::<EdgeLink>::bind(loopback, server_identity, Settings::default())?;
//!     let mut listener = server.listen()?;
//!     let server_addr = listener.local_addr();
//!     tokio::spawn(async move {
//!         while let Some(mut link) = listener.accept().await {
//!             tokio::spawn(async move {
//!                 // `link.peer()` is the edge's id, role and key, from its certificate.
//!                 assert_eq!(link.peer().role(), CertRole::Edge);
//!                 while let Ok(incoming) = link.recv().await {
//!                     if let Incoming::Request { request, responder } = incoming {
//!                         let reply = Reply { seq: request.seq, server: "a".into() };
//!                         let _ = responder.respond(&reply).await;
//!                     }
//!                 }
//!             });
//!         }
//!     });
//!
//!     // Edge "edge-1": dial server "a" and heartbeat once.
//!     let edge_identity = ca.issue_identity("edge-1", CertRole::Edge)?;
//!     let edge = QuicTransport::<EdgeLink>::bind(loopback, edge_identity, Settings::default())?;
//!     let link = edge.connect(server_addr, "a").await?;
//!     assert_eq!(link.peer().as_str(), "a");
//!     assert_eq!(link.peer().role(), CertRole::Server);
//!     let reply = link.request(&Heartbeat { seq: 1 }).await?;
//!     assert_eq!(reply, Reply { seq: 1, server: "a".into() });
//!     Ok(())
//! }
//! ```

use std::future::Future;
use std::net::SocketAddr;

use vcodr_core::codec::WireMessage;
use vcodr_core::CertRole;

pub mod certs;
mod error;
mod link;
mod log_limit;
pub mod mem;
pub mod quic;
pub mod reconnect;
mod rng;
mod roles;
mod settings;
#[cfg(test)]
mod test_protocol;

/// Entry points for the fuzz targets (`fuzz/targets`, package
/// `vcodr-fuzz-targets`): the pure functions through which the bytes a peer
/// or edge sends are first read, exposed as they are served (thin wrappers,
/// no second copy). Not part of the transport's API.
#[doc(hidden)]
pub mod fuzzing {
    use vcodr_core::codec::DecodeError;

    /// Datagram kinds (first byte of every application datagram).
    pub const DGRAM_REQUEST: u8 = crate::quic::wire::dgram::REQUEST;
    pub const DGRAM_RESPONSE: u8 = crate::quic::wire::dgram::RESPONSE;
    pub const DGRAM_REFUSED: u8 = crate::quic::wire::dgram::REFUSED;
    pub const DGRAM_TOO_LARGE: u8 = crate::quic::wire::dgram::TOO_LARGE;
    /// Bytes of the datagram header: kind and request id.
    pub const DGRAM_HEADER_LEN: usize = crate::quic::wire::dgram::HEADER_LEN;

    /// Kind, request id and frame of a datagram (both QUIC drivers' decoder).
    pub fn decode_datagram(d: &[u8]) -> Option<(u8, u64, &[u8])> {
        crate::quic::wire::dgram::decode(d)
    }

    /// Encodes a datagram as both QUIC drivers do.
    pub fn encode_datagram(kind: u8, id: u64, frame: &[u8]) -> Vec<u8> {
        crate::quic::wire::dgram::encode(kind, id, frame).to_vec()
    }

    /// A buffer that must hold exactly one frame, decoded (datagram
    /// requests, in-memory packets).
    pub fn decode_whole_frame<T: serde::de::DeserializeOwned>(
        buf: &[u8],
        max_frame_bytes: usize,
    ) -> Result<T, DecodeError> {
        crate::link::decode_whole_frame(buf, max_frame_bytes)
    }

    /// The payload of a buffer that must hold exactly one frame (datagram
    /// responses).
    pub fn whole_frame_payload(buf: &[u8], max_frame_bytes: usize) -> Result<&[u8], DecodeError> {
        crate::link::whole_frame_payload(buf, max_frame_bytes)
    }

    /// The hub driver's stream frame reassembler.
    #[derive(Debug, Default)]
    pub struct FrameReader(crate::quic::wire::FrameReader);

    impl FrameReader {
        /// Appends one stream chunk, pushing each completed frame's payload to `out`.
        pub fn push(
            &mut self,
            data: &[u8],
            max_frame_bytes: usize,
            out: &mut Vec<Vec<u8>>,
        ) -> Result<(), DecodeError> {
            self.0.push(data, max_frame_bytes, out)
        }

        /// What the end of the stream means for a partly read frame.
        pub fn at_end(&self) -> Option<DecodeError> {
            self.0.at_end()
        }

        /// Bytes held for the frame being read: never more than a header
        /// plus `max_frame_bytes`.
        pub fn buffered(&self) -> usize {
            self.0.buffered()
        }
    }
}

pub use error::{
    CloseReason, ConnectError, LinkClosed, Refusal, RequestError, RespondError, SendError,
    SetupError,
};
pub use link::{
    Answerer, Connection, Incoming, LinkInfo, LinkReceiver, LinkSender, Listener, ListenerCounts,
    ListenerCountsHandle, PeerId, Responder,
};
pub use settings::{
    QuicDriver, Settings, SettingsError, MAX_FRAME_BYTES_LIMIT, QUEUE_LEN_LIMIT, TIMEOUT_LIMIT,
};

/// A kind of link and the messages it carries, and who may take each side
/// of it. Implemented by a unit type per link kind (peer link, edge link).
///
/// The roles are part of the link kind, like its ALPN, not of
/// [`Settings`]: they are fixed at compile time, the same on both ends (so a
/// dialler refused for its role can name what the listener accepts), and no
/// configuration file or settings mistake can open the peer port to edges.
pub trait Protocol: Send + Sync + 'static {
    /// The protocol's name, used as the TLS ALPN: an edge that dials the
    /// peer port is refused in the handshake. Keep it short and versionless
    /// (versions are negotiated by the hello).
    const NAME: &'static str;
    /// The roles whose certificates may dial a listener of this protocol:
    /// `[CertRole::Server]` for the peer link, `[CertRole::Edge,
    /// CertRole::Gateway]` for the edge link. Any other certificate of the
    /// deployment CA is refused in the TLS handshake
    /// ([`Refusal::WrongRole`]). Must not be empty.
    const ACCEPTS: &'static [CertRole];
    /// The role a listener's certificate must carry: a dialler refuses any
    /// other in the handshake, so a stolen edge certificate can never serve.
    /// Every vcodr link is served by servers, hence the default.
    const SERVES: CertRole = CertRole::Server;
    /// What a requester sends.
    type Request: WireMessage;
    /// What answers a request.
    type Response: WireMessage;
    /// What travels on the ordered one-way stream.
    type Message: WireMessage;
}

/// A network a driver can use without knowing which: [`quic::QuicTransport`]
/// or [`mem::MemTransport`].
pub trait Transport<P: Protocol>: Send + Sync + 'static {
    /// Dials `addr`, requiring the server's certificate to name
    /// `server_name`; returns once TLS and the protocol hello succeeded,
    /// within `handshake_timeout`.
    fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> impl Future<Output = Result<Connection<P>, ConnectError>> + Send;

    /// Starts accepting peers on this transport's address; everything they
    /// send comes out of each link's [`recv`](Connection::recv).
    fn listen(&self) -> Result<Listener<P>, SetupError> {
        self.listen_with(None)
    }

    /// As [`listen`](Self::listen), but with an `answerer`, every request of
    /// every accepted link goes to it on the task that decoded the request,
    /// the moment it is decoded; `recv` then yields only messages (and the
    /// close). What the answerer must not do is in [`Answerer`].
    fn listen_with(&self, answerer: Option<Answerer<P>>) -> Result<Listener<P>, SetupError>;
}
