//! The listening side: a [`Listener`] of authenticated links, and its
//! counters of accepted and refused connections ([`ListenerCounts`]),
//! refusals logged rate-limited ([`crate::log_limit`]).

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::error::Refusal;
use crate::log_limit::RefusalLog;
use crate::Protocol;

use super::Connection;

/// Why a listener refused a connection, as it counts and logs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The certificate's role may not dial this link.
    WrongRole,
    /// The certificate names no role.
    NoRole,
    /// The certificate is not of the deployment CA.
    UnknownCa,
    /// The certificate is expired or not yet valid.
    Expired,
    /// The dialler presented no certificate.
    NoCertificate,
    /// Another application protocol (ALPN).
    WrongProtocol,
    /// The certificate names no identity.
    NoIdentity,
    /// The TLS handshake did not finish within the handshake timeout.
    TimedOut,
    /// Any other TLS or connection failure before the link was authenticated.
    OtherTls,
    /// Authenticated, but the hello was missing, late or malformed.
    NoHello,
    /// Authenticated, but no protocol version in common.
    VersionMismatch,
}

impl Refused {
    /// What counts a TLS refusal falls under.
    pub(crate) fn of(refusal: &Refusal) -> Self {
        match refusal {
            Refusal::WrongRole { .. } => Refused::WrongRole,
            Refusal::NoRole { .. } => Refused::NoRole,
            Refusal::UnknownCa => Refused::UnknownCa,
            Refusal::Expired => Refused::Expired,
            Refusal::NoCertificate => Refused::NoCertificate,
            Refusal::NoIdentity => Refused::NoIdentity,
            Refusal::WrongProtocol { .. } => Refused::WrongProtocol,
            Refusal::WrongName { .. } | Refusal::Other(_) => Refused::OtherTls,
        }
    }

    /// The label logs count it under.
    pub(super) fn label(self) -> &'static str {
        match self {
            Refused::WrongRole => "wrong role",
            Refused::NoRole => "no role",
            Refused::UnknownCa => "unknown CA",
            Refused::Expired => "expired certificate",
            Refused::NoCertificate => "no certificate",
            Refused::WrongProtocol => "wrong protocol",
            Refused::NoIdentity => "no identity",
            Refused::TimedOut => "handshake timeout",
            Refused::OtherTls => "other TLS failure",
            Refused::NoHello => "no hello",
            Refused::VersionMismatch => "version mismatch",
        }
    }
}

/// Counters of a listener, for tests, metrics and logs, and its log of
/// refusals.
#[derive(Debug)]
pub(crate) struct ListenerStats {
    pub(crate) accepted: AtomicU64,
    refused_handshakes: AtomicU64,
    refused_wrong_role: AtomicU64,
    refused_no_role: AtomicU64,
    refused_unknown_ca: AtomicU64,
    refused_no_certificate: AtomicU64,
    refused_expired: AtomicU64,
    refused_timed_out: AtomicU64,
    version_mismatches: AtomicU64,
    failed_hellos: AtomicU64,
    log: RefusalLog,
}

/// What a listener has accepted and refused so far ([`Listener::counts`]).
/// The `refused_*` counts are parts of `refused_handshakes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerCounts {
    /// Links authenticated and handed to `accept`.
    pub accepted: u64,
    /// TLS handshakes refused (certificate, role, name, protocol) or timed out.
    pub refused_handshakes: u64,
    /// ... of them, certificates whose role may not dial this link.
    pub refused_wrong_role: u64,
    /// ... of them, certificates that name no role.
    pub refused_no_role: u64,
    /// ... of them, certificates not of the deployment CA.
    pub refused_unknown_ca: u64,
    /// ... of them, diallers without a certificate.
    pub refused_no_certificate: u64,
    /// ... of them, certificates expired or not yet valid.
    pub refused_expired: u64,
    /// ... of them, handshakes that did not finish in time.
    pub refused_timed_out: u64,
    /// Peers refused for sharing no protocol version.
    pub version_mismatches: u64,
    /// Authenticated peers whose hello was missing, late or malformed.
    pub failed_hellos: u64,
}

impl ListenerStats {
    /// The counters of the listener of `protocol` at `addr` (named in logs).
    pub(crate) fn new(protocol: &str, addr: SocketAddr) -> Self {
        ListenerStats {
            accepted: AtomicU64::new(0),
            refused_handshakes: AtomicU64::new(0),
            refused_wrong_role: AtomicU64::new(0),
            refused_no_role: AtomicU64::new(0),
            refused_unknown_ca: AtomicU64::new(0),
            refused_no_certificate: AtomicU64::new(0),
            refused_expired: AtomicU64::new(0),
            refused_timed_out: AtomicU64::new(0),
            version_mismatches: AtomicU64::new(0),
            failed_hellos: AtomicU64::new(0),
            log: RefusalLog::new(protocol, addr),
        }
    }

    pub(super) fn snapshot(&self) -> ListenerCounts {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ListenerCounts {
            accepted: get(&self.accepted),
            refused_handshakes: get(&self.refused_handshakes),
            refused_wrong_role: get(&self.refused_wrong_role),
            refused_no_role: get(&self.refused_no_role),
            refused_unknown_ca: get(&self.refused_unknown_ca),
            refused_no_certificate: get(&self.refused_no_certificate),
            refused_expired: get(&self.refused_expired),
            refused_timed_out: get(&self.refused_timed_out),
            version_mismatches: get(&self.version_mismatches),
            failed_hellos: get(&self.failed_hellos),
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused connection from `from` and logs it, rate-limited
    /// ([`crate::log_limit`]). `name` is the certificate's name when TLS
    /// verified it (never an unverified one); `detail` says what was wrong.
    pub(crate) fn refused(
        &self,
        why: Refused,
        from: SocketAddr,
        name: Option<&str>,
        detail: &dyn fmt::Display,
    ) {
        let part = match why {
            Refused::WrongRole => Some(&self.refused_wrong_role),
            Refused::NoRole => Some(&self.refused_no_role),
            Refused::UnknownCa => Some(&self.refused_unknown_ca),
            Refused::NoCertificate => Some(&self.refused_no_certificate),
            Refused::Expired => Some(&self.refused_expired),
            Refused::TimedOut => Some(&self.refused_timed_out),
            Refused::WrongProtocol | Refused::NoIdentity | Refused::OtherTls => None,
            Refused::NoHello => {
                Self::bump(&self.failed_hellos);
                None
            }
            Refused::VersionMismatch => {
                Self::bump(&self.version_mismatches);
                None
            }
        };
        if !matches!(why, Refused::NoHello | Refused::VersionMismatch) {
            Self::bump(&self.refused_handshakes);
        }
        if let Some(part) = part {
            Self::bump(part);
        }
        self.log.refused(why.label(), from, name, detail);
    }
}

/// What stops a backend's listener when the [`Listener`] is dropped.
// The variants are held only for their `Drop`.
#[allow(dead_code)]
pub(crate) enum ListenerGuard {
    Quic(crate::quic::QuicListenerGuard),
    Hub(crate::quic::HubListenerGuard),
    Mem(crate::mem::MemListenerGuard),
}

/// Yields authenticated connections (link-up events), each after its TLS
/// handshake and protocol hello succeeded. Dropping it stops accepting;
/// links already accepted stay up.
pub struct Listener<P: Protocol> {
    local_addr: SocketAddr,
    accepted: mpsc::Receiver<Connection<P>>,
    stats: Arc<ListenerStats>,
    _guard: ListenerGuard,
}

impl<P: Protocol> fmt::Debug for Listener<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("local_addr", &self.local_addr)
            .field("stats", &self.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl<P: Protocol> Listener<P> {
    pub(crate) fn new(
        local_addr: SocketAddr,
        accepted: mpsc::Receiver<Connection<P>>,
        stats: Arc<ListenerStats>,
        guard: ListenerGuard,
    ) -> Self {
        Listener {
            local_addr,
            accepted,
            stats,
            _guard: guard,
        }
    }

    /// The next authenticated connection; `None` once the transport has shut
    /// down. Cancel-safe.
    pub async fn accept(&mut self) -> Option<Connection<P>> {
        self.accepted.recv().await
    }

    /// The address peers dial.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What the listener has accepted and refused so far.
    pub fn counts(&self) -> ListenerCounts {
        self.stats.snapshot()
    }

    /// A handle that reads [`Listener::counts`] after the listener was moved
    /// into its accept loop (for metrics).
    pub fn counts_handle(&self) -> ListenerCountsHandle {
        ListenerCountsHandle(self.stats.clone())
    }
}

/// Reads a listener's counts from elsewhere ([`Listener::counts_handle`]).
#[derive(Clone)]
pub struct ListenerCountsHandle(Arc<ListenerStats>);

impl fmt::Debug for ListenerCountsHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ListenerCountsHandle")
            .field(&self.0.snapshot())
            .finish()
    }
}

impl ListenerCountsHandle {
    /// What the listener has accepted and refused so far.
    pub fn counts(&self) -> ListenerCounts {
        self.0.snapshot()
    }
}
