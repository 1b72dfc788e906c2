//! Errors of every transport operation. Each names the peer and address at
//! fault and what failed, so a log line is enough to act on.

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;
use vcodr_core::codec::{DecodeError, VersionMismatch};
use vcodr_core::CertRole;

use crate::link::LinkInfo;
use crate::settings::SettingsError;

/// Why a TLS handshake was refused, by us or by the peer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The certificate is not signed by the deployment CA this side trusts.
    #[error("certificate not signed by the deployment CA (unknown CA)")]
    UnknownCa,
    /// The server's certificate does not name the server we expected.
    #[error("server certificate is not valid for the expected name `{expected}`")]
    WrongName {
        /// The name the client asked for.
        expected: String,
    },
    /// The certificate is expired or not yet valid.
    #[error("certificate expired or not yet valid")]
    Expired,
    /// The client presented no certificate, but the server requires one.
    #[error("no client certificate presented; the server requires one")]
    NoCertificate,
    /// The certificate carries no DNS name to take the identity from.
    #[error("certificate names no identity (no DNS subject alternative name)")]
    NoIdentity,
    /// The certificate is of the deployment CA, but its role may not take
    /// this side of the link: an edge certificate dialling the peer port, a
    /// server certificate dialling the edge port, or a listener whose
    /// certificate is not a server's. `name` is the refused certificate's
    /// (this side's own when the peer refused it).
    #[error(
        "certificate `{name}` has role `{role}`, not accepted on that side of the link \
         (accepted: {}); use a certificate of an accepted role",
        crate::roles::role_list(accepted)
    )]
    WrongRole {
        /// The refused certificate's identity.
        name: String,
        /// Its role.
        role: CertRole,
        /// The roles that side of the link accepts.
        accepted: Vec<CertRole>,
    },
    /// The certificate is of the deployment CA but names no role (no
    /// `urn:vcodr:<role>:<name>` subject alternative name): made before roles
    /// existed, or by another tool.
    #[error(
        "certificate `{name}` carries no vcodr role (no `urn:vcodr:<role>:{name}` subject \
         alternative name); reissue it with `vcodr certs`"
    )]
    NoRole {
        /// The refused certificate's identity.
        name: String,
    },
    /// The two ends speak different application protocols (ALPN), e.g. an
    /// edge dialling the peer port.
    #[error("peer does not speak protocol `{expected}`")]
    WrongProtocol {
        /// The protocol this side speaks.
        expected: &'static str,
    },
    /// Any other certificate or TLS failure, as reported by rustls.
    #[error("{0}")]
    Other(String),
}

/// Why a connection could not be opened.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// TLS refused the handshake (unknown CA, wrong name, wrong or no role,
    /// expired, no certificate...). Nothing of the protocol was exchanged.
    #[error("connecting to `{server_name}` at {addr}: handshake refused: {refusal}")]
    HandshakeRefused {
        /// Address dialled.
        addr: SocketAddr,
        /// Name the server's certificate had to carry.
        server_name: String,
        /// What TLS refused.
        refusal: Refusal,
    },
    /// The two ends share no protocol version; both are named.
    #[error("connecting to `{server_name}` at {addr}: {mismatch}")]
    VersionMismatch {
        /// Address dialled.
        addr: SocketAddr,
        /// Name of the server dialled.
        server_name: String,
        /// Both sides' versions.
        mismatch: VersionMismatch,
    },
    /// No answer within the handshake timeout (peer down, partitioned, or a
    /// listener that is not running).
    #[error("connecting to `{server_name}` at {addr}: no answer within {after:?}")]
    TimedOut {
        /// Address dialled.
        addr: SocketAddr,
        /// Name of the server dialled.
        server_name: String,
        /// The handshake timeout that elapsed.
        after: Duration,
    },
    /// The server name is not a valid DNS name.
    #[error("connecting to {addr}: `{server_name}` is not a valid server name")]
    InvalidServerName {
        /// Address dialled.
        addr: SocketAddr,
        /// The offending name.
        server_name: String,
    },
    /// Anything else: connection refused or closed during the hello, local
    /// endpoint shut down, malformed hello.
    #[error("connecting to `{server_name}` at {addr}: {reason}")]
    Failed {
        /// Address dialled.
        addr: SocketAddr,
        /// Name of the server dialled.
        server_name: String,
        /// What failed.
        reason: String,
    },
}

impl ConnectError {
    /// True for failures that may go away by themselves (timeouts, a peer
    /// that is restarting); false for refusals that need an operator
    /// (certificates, versions, names).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ConnectError::TimedOut { .. } | ConnectError::Failed { .. }
        )
    }
}

/// Why a transport or listener could not be set up.
#[derive(Debug, Error)]
pub enum SetupError {
    /// A setting is invalid.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The TLS identity or CA could not be turned into a TLS configuration.
    #[error("TLS configuration for `{name}`: {reason}")]
    Tls {
        /// Identity being configured.
        name: String,
        /// What rustls refused.
        reason: String,
    },
    /// The UDP socket could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Something already listens on this transport's address.
    #[error("{addr} is already listening")]
    AlreadyListening {
        /// The address in use.
        addr: SocketAddr,
    },
}

/// Why a link is closed, seen from this side.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// This side closed it (or dropped every handle).
    #[error("closed locally: {0}")]
    Local(String),
    /// The peer closed it, with its reason.
    #[error("closed by the peer: {0}")]
    Peer(String),
    /// Nothing was received for the idle timeout (peer gone or partitioned).
    #[error("timed out: nothing received for the idle timeout")]
    TimedOut,
    /// The peer broke the protocol (bad frame on the ordered stream...).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer reset the connection (e.g. it restarted).
    #[error("reset by the peer")]
    Reset,
    /// A QUIC transport error.
    #[error("transport error: {0}")]
    Transport(String),
}

/// The link is closed; returned by `recv` once everything queued was read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("link to {link} closed: {reason}")]
pub struct LinkClosed {
    /// Which link.
    pub link: LinkInfo,
    /// Why.
    pub reason: CloseReason,
}

/// Why an ordered message was not sent.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The message does not fit in one frame.
    #[error("sending to {link}: message of {len} bytes exceeds max_frame_bytes {max}")]
    TooLarge {
        /// Which link.
        link: LinkInfo,
        /// Encoded payload size.
        len: usize,
        /// The configured cap.
        max: usize,
    },
    /// The message could not be serialized.
    #[error("sending to {link}: cannot encode message: {reason}")]
    Encode {
        /// Which link.
        link: LinkInfo,
        /// What postcard said.
        reason: String,
    },
    /// The link is closed; the message was not queued.
    #[error("sending to {link}: link closed: {reason}")]
    Closed {
        /// Which link.
        link: LinkInfo,
        /// Why it closed.
        reason: CloseReason,
    },
}

/// Why a request got no response.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// The request does not fit in one frame.
    #[error("request to {link}: {len} bytes exceed max_frame_bytes {max}")]
    TooLarge {
        /// Which link.
        link: LinkInfo,
        /// Encoded payload size.
        len: usize,
        /// The configured cap.
        max: usize,
    },
    /// The request could not be serialized.
    #[error("request to {link}: cannot encode: {reason}")]
    Encode {
        /// Which link.
        link: LinkInfo,
        /// What postcard said.
        reason: String,
    },
    /// No response within the request timeout.
    #[error("request to {link}: no response within {after:?}")]
    TimedOut {
        /// Which link.
        link: LinkInfo,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The peer dropped the request without answering, or rejected its frame.
    #[error("request to {link}: the peer answered nothing ({reason})")]
    NoResponse {
        /// Which link.
        link: LinkInfo,
        /// What the peer signalled.
        reason: String,
    },
    /// The response frame was malformed, oversized or of an unknown version.
    #[error("request to {link}: bad response frame: {error}")]
    BadResponse {
        /// Which link.
        link: LinkInfo,
        /// What the codec said.
        error: DecodeError,
    },
    /// The link closed before the response arrived.
    #[error("request to {link}: link closed: {reason}")]
    Closed {
        /// Which link.
        link: LinkInfo,
        /// Why it closed.
        reason: CloseReason,
    },
}

/// Why a response could not be sent.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RespondError {
    /// The response does not fit in one frame.
    #[error("responding to {link}: {len} bytes exceed max_frame_bytes {max}")]
    TooLarge {
        /// Which link.
        link: LinkInfo,
        /// Encoded payload size.
        len: usize,
        /// The configured cap.
        max: usize,
    },
    /// The response could not be serialized.
    #[error("responding to {link}: cannot encode: {reason}")]
    Encode {
        /// Which link.
        link: LinkInfo,
        /// What postcard said.
        reason: String,
    },
    /// The requester went away (stream stopped or link closed).
    #[error("responding to {link}: requester gone: {reason}")]
    Gone {
        /// Which link.
        link: LinkInfo,
        /// What happened.
        reason: String,
    },
}
