//! QUIC (quinn 0.11) with mutual TLS (rustls 0.23, ring provider).
//!
//! # The handshake
//! TLS 1.3 only, ALPN [`Protocol::NAME`]. Both sides verify the other's
//! certificate chain against the deployment CA (and the dialler the
//! server's name), then its role ([`Protocol::ACCEPTS`] on the listening
//! side, [`Protocol::SERVES`] on the dialling side): see
//! [`server_tls_config`] and [`client_tls_config`], which both drivers use.
//! The link's [`PeerId`] is read from the verified leaf certificate: name,
//! role and public key, nothing else of it kept.
//!
//! # Streams of a connection
//! - The client opens the first bidirectional stream and sends its [`Hello`];
//!   the server answers with its own. Both call [`negotiate`]; on a mismatch
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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, ReadError, ReadExactError, RecvStream, SendStream, VarInt};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, warn};
use vcodr_core::codec::{self, negotiate, DecodeError, Hello, FRAME_HEADER_LEN};

use crate::certs::{role_of, spki_of, TlsIdentity};
use crate::error::{CloseReason, ConnectError, Refusal, SetupError};
use crate::link::{
    decode_whole_frame, whole_frame_payload, Backend, Connection, Incoming, IncomingTx, LinkInfo,
    Listener, ListenerGuard, ListenerStats, PeerId, PendingRequests, Refused, RequestFailure,
    Responder, ResponderInner,
};
use crate::roles::{refusal_in_text, RoleClientVerifier, RoleServerVerifier};
use crate::settings::{QuicDriver, Settings};
use crate::{Protocol, Transport};

pub(crate) mod hub;
pub(crate) use hub::{HubLink, HubListenerGuard, HubReply};

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

fn stream_code_name(code: VarInt) -> String {
    match code {
        c if c == code::FRAME_REJECTED => "the peer rejected the frame".into(),
        c if c == code::NO_RESPONSE => "the peer dropped the request unanswered".into(),
        c if c == code::CANCELLED => "cancelled".into(),
        c => format!("stream reset with code {c}"),
    }
}

/// The crypto provider of every configuration: ring.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(name: &str) -> impl Fn(rustls::Error) -> SetupError + '_ {
    move |e| SetupError::Tls {
        name: name.to_string(),
        reason: e.to_string(),
    }
}

fn root_store(identity: &TlsIdentity) -> Result<RootCertStore, SetupError> {
    let mut roots = RootCertStore::empty();
    for root in identity.roots() {
        roots.add(root.clone()).map_err(tls_err(identity.name()))?;
    }
    Ok(roots)
}

/// The rustls server configuration of a listener of `P`: TLS 1.3 only,
/// client certificates required, verified against the deployment CA and
/// refused unless their role is one of [`Protocol::ACCEPTS`]; ALPN
/// [`Protocol::NAME`]. Refuses an identity whose own role is not
/// [`Protocol::SERVES`].
pub fn server_tls_config<P: Protocol>(
    identity: &TlsIdentity,
) -> Result<rustls::ServerConfig, SetupError> {
    let name = identity.name();
    let provider = crypto_provider();
    let (chain, key) = identity.certified().ok_or_else(|| SetupError::Tls {
        name: name.to_string(),
        reason: "a listener needs a certificate".into(),
    })?;
    crate::roles::check_listener::<P>(name, identity.role())?;
    let webpki = WebPkiClientVerifier::builder_with_provider(
        Arc::new(root_store(identity)?),
        provider.clone(),
    )
    .build()
    .map_err(|e| SetupError::Tls {
        name: name.to_string(),
        reason: e.to_string(),
    })?;
    let verifier = Arc::new(RoleClientVerifier::new::<P>(webpki));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err(name))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls_err(name))?;
    config.alpn_protocols = vec![P::NAME.as_bytes().to_vec()];
    Ok(config)
}

/// The rustls client configuration of a dialler of `P`: TLS 1.3 only, the
/// server verified against the deployment CA and the expected name and
/// refused unless its role is [`Protocol::SERVES`], our certificate
/// presented (if any), ALPN [`Protocol::NAME`].
pub fn client_tls_config<P: Protocol>(
    identity: &TlsIdentity,
) -> Result<rustls::ClientConfig, SetupError> {
    let name = identity.name();
    let provider = crypto_provider();
    let webpki = WebPkiServerVerifier::builder_with_provider(
        Arc::new(root_store(identity)?),
        provider.clone(),
    )
    .build()
    .map_err(|e| SetupError::Tls {
        name: name.to_string(),
        reason: e.to_string(),
    })?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err(name))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RoleServerVerifier::new::<P>(webpki)));
    let mut config = match identity.certified() {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(tls_err(name))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![P::NAME.as_bytes().to_vec()];
    Ok(config)
}

fn transport_config(settings: &Settings) -> Result<Arc<quinn::TransportConfig>, SetupError> {
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(settings.idle_timeout).map_err(|_| {
        SetupError::Settings(crate::settings::SettingsError {
            field: "idle_timeout",
            problem: "too large for QUIC".into(),
        })
    })?;
    transport
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(settings.keep_alive_interval))
        // One extra stream for the hello.
        .max_concurrent_bidi_streams(VarInt::from_u32(
            settings.max_concurrent_requests.saturating_add(1),
        ))
        // The ordered stream; one per direction and connection.
        .max_concurrent_uni_streams(VarInt::from_u32(1))
        // Datagram requests (heartbeats): unread ones beyond this are dropped.
        .datagram_receive_buffer_size(Some(settings.datagram_buffer_bytes));
    Ok(Arc::new(transport))
}

pub(crate) fn quinn_client_config<P: Protocol>(
    identity: &TlsIdentity,
    settings: &Settings,
) -> Result<quinn::ClientConfig, SetupError> {
    let tls = client_tls_config::<P>(identity)?;
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| SetupError::Tls {
        name: identity.name().to_string(),
        reason: e.to_string(),
    })?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config(settings)?);
    Ok(config)
}

fn quinn_server_config<P: Protocol>(
    identity: &TlsIdentity,
    settings: &Settings,
) -> Result<quinn::ServerConfig, SetupError> {
    let tls = server_tls_config::<P>(identity)?;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| SetupError::Tls {
        name: identity.name().to_string(),
        reason: e.to_string(),
    })?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_config(settings)?);
    Ok(config)
}

/// quinn's tokio UDP socket, except that a send the OS refuses is counted
/// (quinn's own socket logs it and carries on): quinn-udp's `try_send`
/// instead of `send`, and the error turned into a lost packet here.
#[derive(Debug)]
struct CountingSocket {
    io: tokio::net::UdpSocket,
    state: quinn::udp::UdpSocketState,
    send_failures: Arc<AtomicU64>,
    /// Failures logged so far (at powers of two, as the hub does).
    logged: AtomicU64,
}

impl CountingSocket {
    fn new(socket: std::net::UdpSocket, send_failures: Arc<AtomicU64>) -> std::io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(CountingSocket {
            state: quinn::udp::UdpSocketState::new((&socket).into())?,
            io: tokio::net::UdpSocket::from_std(socket)?,
            send_failures,
            logged: AtomicU64::new(0),
        })
    }
}

/// Waits until the socket can send (quinn's poller, on tokio's readiness).
#[derive(Debug)]
struct CountingPoller(Arc<CountingSocket>);

impl quinn::UdpPoller for CountingPoller {
    fn poll_writable(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.0.io.poll_send_ready(cx)
    }
}

impl quinn::AsyncUdpSocket for CountingSocket {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        Box::pin(CountingPoller(self))
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit<'_>) -> std::io::Result<()> {
        let sent = self.io.try_io(tokio::io::Interest::WRITABLE, || {
            self.state.try_send((&self.io).into(), transmit)
        });
        match sent {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(e),
            Err(e) if !is_send_failure(&e) => Ok(()),
            Err(e) => {
                let n = self.send_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() && self.logged.fetch_max(n, Ordering::Relaxed) < n {
                    debug!(dest = %transmit.destination, error = %e, failures = n, "UDP send failed; the packet counts as lost");
                }
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context<'_>,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.io.poll_recv_ready(cx))?;
            if let Ok(n) = self.io.try_io(tokio::io::Interest::READABLE, || {
                self.state.recv((&self.io).into(), bufs, meta)
            }) {
                return std::task::Poll::Ready(Ok(n));
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }
}

/// `EMSGSIZE` on Linux (x86, arm, riscv; std has no constant for it).
const EMSGSIZE: i32 = 90;

/// Whether a refused UDP send counts in
/// [`QuicTransport::udp_send_failures`]: every error but `EMSGSIZE`, which
/// path MTU discovery provokes on purpose with its probes (quinn-udp passes
/// it over too). A would-block is one where the driver drops the packet (the
/// hub); quinn's driver waits instead and never asks.
pub(crate) fn is_send_failure(e: &std::io::Error) -> bool {
    e.raw_os_error() != Some(EMSGSIZE)
}

/// A UDP socket bound to `addr` with buffers of `buffer_bytes` asked for.
fn udp_socket(addr: SocketAddr, buffer_bytes: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol as IpProtocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM,
        Some(IpProtocol::UDP),
    )?;
    if addr.is_ipv6() {
        // Dual stack where the OS allows it; a failure leaves it IPv6-only.
        let _ = socket.set_only_v6(false);
    }
    // The kernel may clamp these; read back what we got and say so.
    if let Err(e) = socket.set_recv_buffer_size(buffer_bytes) {
        warn!(%addr, error = %e, "cannot set the UDP receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(buffer_bytes) {
        warn!(%addr, error = %e, "cannot set the UDP send buffer");
    }
    let (recv, send) = (socket.recv_buffer_size()?, socket.send_buffer_size()?);
    if recv < buffer_bytes || send < buffer_bytes {
        debug!(%addr, asked = buffer_bytes, recv, send, "UDP buffers clamped by the kernel (net.core.rmem_max/wmem_max)");
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

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
        let client_config = quinn_client_config::<P>(&identity, &settings)?;
        let socket = udp_socket(addr, settings.udp_buffer_bytes)
            .map_err(|source| SetupError::Bind { addr, source })?;
        let settings = Arc::new(settings);
        let send_failures = Arc::new(AtomicU64::new(0));
        let (driver, local_addr) = match settings.driver {
            QuicDriver::Quinn => {
                let runtime = quinn::default_runtime().ok_or_else(|| SetupError::Bind {
                    addr,
                    source: std::io::Error::other("no async runtime: call within tokio"),
                })?;
                let socket = CountingSocket::new(socket, send_failures.clone())
                    .map_err(|source| SetupError::Bind { addr, source })?;
                let endpoint = quinn::Endpoint::new_with_abstract_socket(
                    quinn::EndpointConfig::default(),
                    None,
                    Arc::new(socket),
                    runtime,
                )
                .map_err(|source| SetupError::Bind { addr, source })?;
                let local_addr = endpoint
                    .local_addr()
                    .map_err(|source| SetupError::Bind { addr, source })?;
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
        let client_config = quinn_client_config::<P>(&identity, &self.settings)?;
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
        let fail = |reason: String| ConnectError::Failed {
            addr,
            server_name: server_name.to_string(),
            reason,
        };
        let attempt = async {
            let endpoint = match &self.shared.driver {
                Driver::Quinn(endpoint) => endpoint,
                Driver::Hub(hub) => {
                    return hub
                        .connect(self.client_config.clone(), addr, server_name)
                        .await
                }
            };
            let connecting = endpoint
                .connect_with(self.client_config.clone(), addr, server_name)
                .map_err(|e| match e {
                    quinn::ConnectError::InvalidServerName(_) => ConnectError::InvalidServerName {
                        addr,
                        server_name: server_name.to_string(),
                    },
                    other => fail(other.to_string()),
                })?;
            let conn = connecting
                .await
                .map_err(|e| connect_failure(&e, addr, server_name))?;
            client_hello::<P>(conn, addr, server_name, &self.settings).await
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

    fn listen(&self) -> Result<Listener<P>, SetupError> {
        let addr = self.shared.local_addr;
        if self.shared.listening.swap(true, Ordering::SeqCst) {
            return Err(SetupError::AlreadyListening { addr });
        }
        let server_config = match quinn_server_config::<P>(&self.identity, &self.settings) {
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
                endpoint.set_server_config(Some(server_config));
                let task = tokio::spawn(accept_loop::<P>(
                    endpoint.clone(),
                    self.settings.clone(),
                    accepted_tx,
                    stats.clone(),
                ));
                ListenerGuard::Quic(QuicListenerGuard {
                    endpoint: endpoint.clone(),
                    listening: Box::new({
                        let shared = self.shared.clone();
                        move || shared.listening.store(false, Ordering::SeqCst)
                    }),
                    task: task.abort_handle(),
                })
            }
            Driver::Hub(hub) => {
                let shared = self.shared.clone();
                ListenerGuard::Hub(hub.listen(
                    Arc::new(server_config),
                    accepted_tx,
                    stats.clone(),
                    Box::new(move || shared.listening.store(false, Ordering::SeqCst)),
                ))
            }
        };
        info!(%addr, identity = self.identity.name(), protocol = P::NAME, driver = ?self.settings.driver, "listening");
        Ok(Listener::new(addr, accepted_rx, stats, guard))
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
    stats: Arc<ListenerStats>,
) {
    let handshakes = Arc::new(Semaphore::new(settings.max_concurrent_handshakes));
    while let Some(incoming) = endpoint.accept().await {
        // The semaphore is never closed, so acquiring only waits.
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (settings, accepted, stats) = (settings.clone(), accepted.clone(), stats.clone());
        tokio::spawn(async move {
            accept_one::<P>(incoming, &settings, &accepted, &stats).await;
            drop(permit);
        });
    }
    debug!("endpoint closed; accept loop ends");
}

async fn accept_one<P: Protocol>(
    incoming: quinn::Incoming,
    settings: &Arc<Settings>,
    accepted: &mpsc::Sender<Connection<P>>,
    stats: &ListenerStats,
) {
    let remote = incoming.remote_address();
    let timeout = settings.handshake_timeout;
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            let detail = format!("connection attempt refused: {e}");
            stats.refused(Refused::OtherTls, remote, None, &detail);
            return;
        }
    };
    let conn = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            let (why, name, detail) = classify_refusal(&e);
            stats.refused(why, remote, name.as_deref(), &detail);
            return;
        }
        Err(_) => {
            let detail = format!("TLS handshake not done within {timeout:?}");
            stats.refused(Refused::TimedOut, remote, None, &detail);
            return;
        }
    };
    let Some(peer) = peer_id(&conn) else {
        stats.refused(Refused::NoIdentity, remote, None, &NO_IDENTITY);
        conn.close(code::NO_IDENTITY, NO_IDENTITY.as_bytes());
        return;
    };
    let hello = tokio::time::timeout(timeout, read_hello(&conn, settings.max_frame_bytes)).await;
    let (mut send, theirs) = match hello {
        Ok(Ok(pair)) => pair,
        Ok(Err(reason)) => {
            let detail = format!("no valid hello ({reason}); connection closed");
            stats.refused(Refused::NoHello, remote, Some(peer.as_str()), &detail);
            conn.close(code::PROTOCOL_VIOLATION, reason.as_bytes());
            return;
        }
        Err(_) => {
            let detail = format!("no hello within {timeout:?}; connection closed");
            stats.refused(Refused::NoHello, remote, Some(peer.as_str()), &detail);
            conn.close(
                code::PROTOCOL_VIOLATION,
                b"no hello within the handshake timeout",
            );
            return;
        }
    };
    // Our hello goes back whatever the outcome, so the client can name both versions.
    let ours = match codec::encode_frame(&settings.hello, settings.max_frame_bytes) {
        Ok(frame) => frame,
        Err(e) => {
            warn!(%peer, %remote, reason = %e, "cannot encode our hello");
            conn.close(code::PROTOCOL_VIOLATION, b"server cannot encode its hello");
            return;
        }
    };
    let version = match negotiate(&settings.hello, &theirs) {
        Ok(version) => version,
        Err(mismatch) => {
            let detail = format!("no common protocol version: {mismatch}");
            stats.refused(
                Refused::VersionMismatch,
                remote,
                Some(peer.as_str()),
                &detail,
            );
            if send.write_all(&ours).await.is_ok() && send.finish().is_ok() {
                // Let the client read our hello and close; then close anyway.
                let _ = tokio::time::timeout(timeout, conn.closed()).await;
            }
            conn.close(code::VERSION_MISMATCH, mismatch.to_string().as_bytes());
            return;
        }
    };
    let info = LinkInfo {
        peer: peer.clone(),
        addr: remote,
        version,
        protocol: P::NAME,
    };
    let connection = start_link::<P>(conn.clone(), info, settings);
    if let Err(e) = async {
        send.write_all(&ours).await?;
        send.finish()?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await
    {
        let detail = format!("could not answer the hello: {e}");
        stats.refused(Refused::NoHello, remote, Some(peer.as_str()), &detail);
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
    let hello = codec::decode_payload(&payload).map_err(|e| format!("bad hello: {e}"))?;
    Ok((send, hello))
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
    let ours = codec::encode_frame(&settings.hello, settings.max_frame_bytes)
        .map_err(|e| fail(format!("cannot encode our hello: {e}")))?;
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
        codec::decode_payload(&payload).map_err(|e| fail(format!("bad hello from server: {e}")))?;
    match negotiate(&settings.hello, &theirs) {
        Ok(version) => {
            let info = LinkInfo {
                peer,
                addr,
                version,
                protocol: P::NAME,
            };
            debug!(peer = %info.peer, %addr, version, "link up (dialled)");
            Ok(start_link::<P>(conn, info, settings))
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

/// Why a connection whose certificate verified has no [`PeerId`]: the
/// verifiers refuse such certificates first, so only a bug gets here.
pub(crate) const NO_IDENTITY: &str = "certificate names no identity or no role";

/// The identity proven by a verified certificate chain (as rustls hands it
/// to quinn): the leaf's name, role and public key, and nothing else of it.
fn identity_from(chain: Option<Box<dyn std::any::Any>>) -> Option<PeerId> {
    let chain = chain?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let leaf = chain.first()?;
    let (role, name) = role_of(leaf)?;
    let public_key = spki_of(leaf)?;
    Some(PeerId::new(role, name, public_key))
}

const TLS_ALERT_BAD_CERTIFICATE: u8 = 42;
const TLS_ALERT_CERTIFICATE_EXPIRED: u8 = 45;
const TLS_ALERT_CERTIFICATE_UNKNOWN: u8 = 46;
const TLS_ALERT_UNKNOWN_CA: u8 = 48;
const TLS_ALERT_CERTIFICATE_REQUIRED: u8 = 116;
const TLS_ALERT_NO_APPLICATION_PROTOCOL: u8 = 120;

fn tls_alert(code: quinn::TransportErrorCode) -> Option<u8> {
    let code = u64::from(code);
    (0x100..0x200)
        .contains(&code)
        .then_some((code & 0xff) as u8)
}

/// Reads what rustls reported locally into a [`Refusal`].
fn refusal_from_text(text: &str, expected: &str) -> Option<Refusal> {
    if let Some(refusal) = refusal_in_text(text) {
        Some(refusal)
    } else if text.contains("UnknownIssuer") {
        Some(Refusal::UnknownCa)
    } else if text.contains("not valid for name") || text.contains("NotValidForName") {
        Some(Refusal::WrongName {
            expected: expected.to_string(),
        })
    } else if text.contains("expired") || text.contains("Expired") || text.contains("not valid yet")
    {
        Some(Refusal::Expired)
    } else if text.contains("no certificates") {
        Some(Refusal::NoCertificate)
    } else if text.contains("NoApplicationProtocol") || text.contains("application protocol") {
        Some(Refusal::WrongProtocol { expected: "" })
    } else if text.contains("certificate") {
        Some(Refusal::Other(text.to_string()))
    } else {
        None
    }
}

fn refusal_from_alert(alert: u8, reason: &str) -> Refusal {
    // The peer's close carries its TLS error text: a role refusal names
    // the certificate, its role and the accepted roles.
    if let Some(refusal) = refusal_in_text(reason) {
        return refusal;
    }
    match alert {
        TLS_ALERT_UNKNOWN_CA => Refusal::UnknownCa,
        TLS_ALERT_CERTIFICATE_EXPIRED => Refusal::Expired,
        TLS_ALERT_CERTIFICATE_REQUIRED => Refusal::NoCertificate,
        TLS_ALERT_NO_APPLICATION_PROTOCOL => Refusal::WrongProtocol { expected: "" },
        TLS_ALERT_BAD_CERTIFICATE | TLS_ALERT_CERTIFICATE_UNKNOWN => Refusal::Other(format!(
            "the peer rejected our certificate (TLS alert {alert}) {reason}"
        )),
        other => Refusal::Other(format!("TLS alert {other} {reason}")),
    }
}

fn refusal_of(e: &ConnectionError, expected: &str) -> Option<Refusal> {
    match e {
        ConnectionError::TransportError(t) => {
            tls_alert(t.code).and_then(|_| refusal_from_text(&t.reason, expected))
        }
        ConnectionError::ConnectionClosed(c) => tls_alert(c.error_code)
            .map(|alert| refusal_from_alert(alert, &String::from_utf8_lossy(&c.reason))),
        _ => None,
    }
}

/// How a listener counts and logs a handshake that failed with `e`: the
/// reason, the certificate's name if our verifier read it (role
/// refusals), and what to log.
///
/// Only our own TLS errors count under a certificate reason: a refusal the
/// dialler sent us is about *our* certificate (it refused our name, CA or
/// role), and its text is of the dialler's choosing.
pub(crate) fn classify_refusal(e: &ConnectionError) -> (Refused, Option<String>, String) {
    if let ConnectionError::ConnectionClosed(_) = e {
        return (
            Refused::OtherTls,
            None,
            format!("the dialler refused the handshake ({e})"),
        );
    }
    match refusal_of(e, "") {
        Some(refusal) => {
            let (name, detail) = match &refusal {
                // The refusal says it all; rustls' text repeats it.
                Refusal::WrongRole { name, .. } | Refusal::NoRole { name } => {
                    (Some(name.clone()), refusal.to_string())
                }
                _ => (None, format!("{refusal} ({e})")),
            };
            (Refused::of(&refusal), name, detail)
        }
        None => (
            Refused::OtherTls,
            None,
            format!("TLS handshake failed: {e}"),
        ),
    }
}

fn connect_failure(e: &ConnectionError, addr: SocketAddr, server_name: &str) -> ConnectError {
    let server_name_owned = server_name.to_string();
    match refusal_of(e, server_name) {
        Some(Refusal::WrongProtocol { .. }) => ConnectError::HandshakeRefused {
            addr,
            server_name: server_name_owned,
            refusal: Refusal::WrongProtocol {
                expected: "(see the protocol of this transport)",
            },
        },
        Some(refusal) => ConnectError::HandshakeRefused {
            addr,
            server_name: server_name_owned,
            refusal,
        },
        None => match e {
            ConnectionError::TimedOut => ConnectError::Failed {
                addr,
                server_name: server_name_owned,
                reason: "no answer: the server is down, unreachable or not listening".into(),
            },
            ConnectionError::ApplicationClosed(c) => ConnectError::Failed {
                addr,
                server_name: server_name_owned,
                reason: format!(
                    "closed by the server: {}",
                    String::from_utf8_lossy(&c.reason)
                ),
            },
            other => ConnectError::Failed {
                addr,
                server_name: server_name_owned,
                reason: other.to_string(),
            },
        },
    }
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

/// Datagram requests and responses: a 9-byte header (kind, then the
/// request id as a big-endian u64) before an ordinary frame.
pub(crate) mod dgram {
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
        let fits = self
            .conn
            .max_datagram_size()
            .is_some_and(|max| dgram::HEADER_LEN + frame.len() <= max);
        let datagram = if fits {
            dgram::encode(dgram::RESPONSE, self.id, frame)
        } else {
            dgram::encode(dgram::TOO_LARGE, self.id, &[])
        };
        self.conn.send_datagram(datagram).map_err(|e| e.to_string())
    }

    /// Tells the requester at once that no answer will come (the
    /// [`Responder`] holding this was dropped unanswered).
    pub(crate) fn refuse(self) {
        let _ = self
            .conn
            .send_datagram(dgram::encode(dgram::REFUSED, self.id, &[]));
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

fn close_reason_of(e: &ConnectionError, local: &OnceLock<CloseReason>) -> CloseReason {
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
                Err(FrameError::End) => Err(RequestFailure::NoResponse(
                    "the peer finished the stream without a response".into(),
                )),
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
        let fits = self
            .conn
            .max_datagram_size()
            .is_some_and(|max| dgram::HEADER_LEN + frame.len() <= max);
        if !fits {
            return self.request(frame).await;
        }
        let (slot, rx) = self.datagrams.register();
        match self
            .conn
            .send_datagram(dgram::encode(dgram::REQUEST, slot.id, &frame))
        {
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
            Ok(Some(DatagramAnswer::Refused)) => Err(RequestFailure::NoResponse(
                "the peer refused the request unanswered".into(),
            )),
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
) -> Connection<P> {
    let (ordered_tx, ordered_rx) = mpsc::channel(settings.max_pending_sends);
    let (incoming_tx, incoming_rx) = mpsc::channel(settings.max_pending_incoming);
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
        let Some((kind, id, frame)) = dgram::decode(&d) else {
            crate::log_limit::bad_frame(
                &info,
                "short datagram",
                &format_args!(
                    "dropped a datagram of {} bytes, shorter than its header",
                    d.len()
                ),
            );
            continue;
        };
        match kind {
            dgram::REQUEST => match decode_whole_frame::<P::Request>(frame, max_frame_bytes) {
                Ok(request) => {
                    let responder = Responder::new(
                        info.clone(),
                        max_frame_bytes,
                        ResponderInner::QuicDatagram(DatagramReply {
                            conn: conn.clone(),
                            id,
                        }),
                    );
                    if incoming
                        .send(Box::new(Incoming::Request { request, responder }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    crate::log_limit::bad_frame(
                        &info,
                        "bad datagram request",
                        &format_args!("rejected a datagram request ({e}); the link stays up"),
                    );
                    let _ = conn.send_datagram(dgram::encode(dgram::REFUSED, id, &[]));
                }
            },
            dgram::RESPONSE => match whole_frame_payload(frame, max_frame_bytes) {
                Ok(payload) => requests.answer(id, DatagramAnswer::Response(payload.to_vec())),
                Err(e) => {
                    crate::log_limit::bad_frame(
                        &info,
                        "bad datagram response",
                        &format_args!("dropped a malformed datagram response ({e})"),
                    );
                }
            },
            dgram::REFUSED => requests.answer(id, DatagramAnswer::Refused),
            dgram::TOO_LARGE => requests.answer(id, DatagramAnswer::TooLarge),
            other => {
                crate::log_limit::bad_frame(
                    &info,
                    "unknown datagram",
                    &format_args!("dropped a datagram of unknown kind {other}"),
                );
            }
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
                    .send(Box::new(Incoming::Request { request, responder }))
                    .await;
                return;
            }
            Err(e) => e.to_string(),
        },
        Ok(Err(FrameError::Read(ReadExactError::ReadError(ReadError::ConnectionLost(_))))) => {
            return
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("request not received within {:?}", settings.request_timeout),
    };
    crate::log_limit::bad_frame(
        &info,
        "bad request frame",
        &format_args!(
            "rejected a request frame ({failure}); that stream is reset, the link stays up"
        ),
    );
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
                        if incoming
                            .send(Box::new(Incoming::Message(message)))
                            .await
                            .is_err()
                        {
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
            crate::log_limit::bad_frame(
                &info,
                "bad ordered frame",
                &format_args!(
                    "bad frame on the ordered stream ({failure}); closing this connection only"
                ),
            );
            let reason = format!("bad frame on the ordered stream: {failure}");
            let _ = local_close.set(CloseReason::Protocol(reason.clone()));
            conn.close(code::PROTOCOL_VIOLATION, reason.as_bytes());
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE_TEXT: &str = "invalid peer certificate: Other(OtherError(certificate `edge-9` \
        has role `edge`, which may not dial the `vcodr-peer` link (accepted: server); use a \
        certificate of an accepted role))";

    /// Our verifier's refusal names the certificate; the same text in a
    /// dialler's close is the dialler's word about our certificate, and
    /// counts as nothing more.
    #[test]
    fn only_our_own_role_refusals_name_a_certificate() {
        let local = ConnectionError::TransportError(quinn_proto::TransportError {
            code: quinn_proto::TransportErrorCode::crypto(TLS_ALERT_CERTIFICATE_UNKNOWN),
            frame: None,
            reason: ROLE_TEXT.into(),
        });
        let (why, name, detail) = classify_refusal(&local);
        assert_eq!((why, name.as_deref()), (Refused::WrongRole, Some("edge-9")));
        assert!(detail.contains("accepted: server"), "{detail}");

        let remote = ConnectionError::ConnectionClosed(quinn_proto::ConnectionClose {
            error_code: quinn_proto::TransportErrorCode::crypto(TLS_ALERT_CERTIFICATE_UNKNOWN),
            frame_type: None,
            reason: ROLE_TEXT.as_bytes().to_vec().into(),
        });
        let (why, name, _) = classify_refusal(&remote);
        assert_eq!((why, name), (Refused::OtherTls, None));
        // The dialler, refused by a listener, reads the role refusal back.
        assert_eq!(
            refusal_of(&remote, "a"),
            Some(Refusal::WrongRole {
                name: "edge-9".into(),
                role: vcodr_core::CertRole::Edge,
                accepted: vec![vcodr_core::CertRole::Server],
            })
        );
    }
}
