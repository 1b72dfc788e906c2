//! QUIC (quinn 0.11) with mutual TLS (rustls 0.23, ring provider).
//!
//! # The handshake
//! TLS 1.3 only, ALPN [`Protocol::NAME`]. Both sides verify the other's
//! certificate chain against the deployment CA (and the dialler the
//! server's name), then its role ([`Protocol::ACCEPTS`] on the listening
//! side, [`Protocol::SERVES`] on the dialling side): see
//! [`server_tls_config`] and [`client_tls_config`], which both drivers use.
//! The link's [`PeerId`](crate::PeerId) is read from the verified leaf certificate: name,
//! role and public key, nothing else of it kept.
//!
//! # Streams of a connection
//! - The client opens the first bidirectional stream and sends its [`Hello`](vcodr_core::codec::Hello);
//!   the server answers with its own. Both call [`negotiate`](vcodr_core::codec::negotiate); on a mismatch
//!   the client closes with [`code::VERSION_MISMATCH`] and both versions are
//!   named on both sides. The hello is the first application message: only a
//!   link that completed it is handed to the application (a client without a
//!   certificate gets `Ok` from quinn's `connect`, then is refused here).
//! - Every request is one bidirectional stream: one frame each way, then
//!   finish. A bad request frame resets that stream only.
//! - The ordered message stream is one unidirectional stream per direction,
//!   opened on the first `send`. A bad frame there closes the connection with
//!   [`code::PROTOCOL_VIOLATION`], since order can no longer be guaranteed.
//!
//! Frames are the core codec's: the 5-byte header is read and checked
//! against `max_frame_bytes` before the payload buffer is allocated.
//!
//! # Modules
//! - `wire`: the protocol above, described once (codes, hello, datagram
//!   header, frame reader); no I/O.
//! - `tls`: rustls and quinn configurations, the peer's identity, refusals
//!   read back from failed handshakes.
//! - `socket`: the UDP socket, its buffers and its refused sends.
//! - `quinn_driver`: [`QuicDriver::Quinn`], on quinn's tasks.
//! - `hub`: [`QuicDriver::Hub`], one task per socket over quinn-proto.
//!
//! This module owns [`QuicTransport`] and hands each call to the socket's driver.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::info;

use crate::certs::TlsIdentity;
use crate::error::{ConnectError, SetupError};
use crate::link::{Answerer, Connection, Listener, ListenerGuard, ListenerStats};
use crate::settings::{QuicDriver, Settings};
use crate::{Protocol, Transport};

pub(crate) mod hub;
mod quinn_driver;
mod socket;
mod tls;
pub(crate) mod wire;

pub(crate) use hub::{HubLink, HubListenerGuard, HubReply};
pub(crate) use quinn_driver::{refuse, respond, DatagramReply, QuicLink, QuicListenerGuard};
pub use tls::{client_tls_config, crypto_provider, server_tls_config};
pub use wire::code;

/// The socket shared by every transport made with [`QuicTransport::with_identity`].
struct EndpointShared<P: Protocol> {
    driver: Driver<P>,
    local_addr: SocketAddr,
    listening: AtomicBool,
    /// UDP sends the OS refused ([`QuicTransport::udp_send_failures`]).
    send_failures: Arc<AtomicU64>,
}

/// Who drives the socket's connections ([`crate::QuicDriver`]).
enum Driver<P: Protocol> {
    Quinn(quinn::Endpoint),
    Hub(hub::HubHandle<P>),
}

/// QUIC transport for protocol `P`: one UDP socket (a quinn endpoint) that
/// dials with this side's certificate and, after [`listen`](Transport::listen),
/// accepts authenticated peers.
///
/// Many identities may share one socket ([`with_identity`](Self::with_identity)):
/// an edge simulator runs 10,000 edges, each with its own client certificate,
/// over a handful of sockets.
pub struct QuicTransport<P: Protocol> {
    shared: Arc<EndpointShared<P>>,
    identity: Arc<TlsIdentity>,
    client_config: quinn::ClientConfig,
    settings: Arc<Settings>,
    _protocol: std::marker::PhantomData<fn() -> P>,
}

impl<P: Protocol> Clone for QuicTransport<P> {
    fn clone(&self) -> Self {
        QuicTransport {
            shared: self.shared.clone(),
            identity: self.identity.clone(),
            client_config: self.client_config.clone(),
            settings: self.settings.clone(),
            _protocol: std::marker::PhantomData,
        }
    }
}

impl<P: Protocol> std::fmt::Debug for QuicTransport<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("local_addr", &self.shared.local_addr)
            .field("identity", &self.identity.name())
            .field("protocol", &P::NAME)
            .finish_non_exhaustive()
    }
}

impl<P: Protocol> QuicTransport<P> {
    /// Binds a UDP socket at `addr` (port 0 picks one) for `identity`,
    /// driven as `settings.driver` says. Must be called within a tokio
    /// runtime.
    pub fn bind(
        addr: SocketAddr,
        identity: TlsIdentity,
        settings: Settings,
    ) -> Result<Self, SetupError> {
        settings.validate()?;
        let client_config = tls::quinn_client_config::<P>(&identity, &settings)?;
        let socket = socket::udp_socket(addr, settings.udp_buffer_bytes)
            .map_err(|source| SetupError::Bind { addr, source })?;
        let settings = Arc::new(settings);
        let send_failures = Arc::new(AtomicU64::new(0));
        let (driver, local_addr) = match settings.driver {
            QuicDriver::Quinn => {
                let (endpoint, local_addr) =
                    quinn_driver::endpoint(addr, socket, send_failures.clone())?;
                (Driver::Quinn(endpoint), local_addr)
            }
            QuicDriver::Hub => {
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(SetupError::Bind {
                        addr,
                        source: std::io::Error::other("no async runtime: call within tokio"),
                    });
                }
                let (hub, local_addr) =
                    hub::HubHandle::start(socket, settings.clone(), send_failures.clone())?;
                (Driver::Hub(hub), local_addr)
            }
        };
        Ok(QuicTransport {
            shared: Arc::new(EndpointShared {
                driver,
                local_addr,
                listening: AtomicBool::new(false),
                send_failures,
            }),
            identity: Arc::new(identity),
            client_config,
            settings,
            _protocol: std::marker::PhantomData,
        })
    }

    /// A transport on the same socket that dials as `identity`.
    pub fn with_identity(&self, identity: TlsIdentity) -> Result<Self, SetupError> {
        let client_config = tls::quinn_client_config::<P>(&identity, &self.settings)?;
        Ok(QuicTransport {
            shared: self.shared.clone(),
            identity: Arc::new(identity),
            client_config,
            settings: self.settings.clone(),
            _protocol: std::marker::PhantomData,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// UDP sends of this socket (every identity sharing it) that the OS
    /// refused since it was bound: a full send buffer where the driver drops
    /// the packet (the hub), and errors that lose every packet — `EINVAL`
    /// when a socket bound to `127.0.0.1` sends to another address, `EPERM`
    /// from a firewall, `ENETUNREACH`. QUIC treats each as a lost packet;
    /// this count is how a caller sees that the packets never left.
    pub fn udp_send_failures(&self) -> u64 {
        self.shared.send_failures.load(Ordering::Relaxed)
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Closes every connection of the socket at once, telling peers
    /// `reason`. Then [`wait_idle`](Self::wait_idle) lets them learn of it.
    pub fn shutdown(&self, reason: &str) {
        info!(addr = %self.shared.local_addr, reason, "QUIC endpoint shutting down");
        match &self.shared.driver {
            Driver::Quinn(endpoint) => endpoint.close(code::SHUTDOWN, reason.as_bytes()),
            Driver::Hub(hub) => hub.shutdown(reason),
        }
    }

    /// Waits until every connection of the socket is closed and its close
    /// has been sent.
    pub async fn wait_idle(&self) {
        match &self.shared.driver {
            Driver::Quinn(endpoint) => endpoint.wait_idle().await,
            Driver::Hub(hub) => hub.wait_idle().await,
        }
    }
}

impl<P: Protocol> Transport<P> for QuicTransport<P> {
    async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Connection<P>, ConnectError> {
        let timeout = self.settings.handshake_timeout;
        let config = self.client_config.clone();
        let attempt = async {
            match &self.shared.driver {
                Driver::Quinn(endpoint) => {
                    quinn_driver::connect(endpoint, config, addr, server_name, &self.settings).await
                }
                Driver::Hub(hub) => hub.connect(config, addr, server_name).await,
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::TimedOut {
                addr,
                server_name: server_name.to_string(),
                after: timeout,
            }),
        }
    }

    fn listen_with(&self, answerer: Option<Answerer<P>>) -> Result<Listener<P>, SetupError> {
        let addr = self.shared.local_addr;
        if self.shared.listening.swap(true, Ordering::SeqCst) {
            return Err(SetupError::AlreadyListening { addr });
        }
        let server_config = match tls::quinn_server_config::<P>(&self.identity, &self.settings) {
            Ok(config) => config,
            Err(e) => {
                self.shared.listening.store(false, Ordering::SeqCst);
                return Err(e);
            }
        };
        let (accepted_tx, accepted_rx) = mpsc::channel(self.settings.max_pending_accepts);
        let stats = Arc::new(ListenerStats::new(P::NAME, addr));
        let guard = match &self.shared.driver {
            Driver::Quinn(endpoint) => {
                let shared = self.shared.clone();
                ListenerGuard::Quic(quinn_driver::listen(
                    endpoint,
                    server_config,
                    self.settings.clone(),
                    accepted_tx,
                    answerer,
                    stats.clone(),
                    Box::new(move || shared.listening.store(false, Ordering::SeqCst)),
                ))
            }
            Driver::Hub(hub) => {
                let shared = self.shared.clone();
                ListenerGuard::Hub(hub.listen(
                    Arc::new(server_config),
                    accepted_tx,
                    answerer,
                    stats.clone(),
                    Box::new(move || shared.listening.store(false, Ordering::SeqCst)),
                ))
            }
        };
        info!(%addr, identity = self.identity.name(), protocol = P::NAME, driver = ?self.settings.driver, "listening");
        Ok(Listener::new(addr, accepted_rx, stats, guard))
    }
}
