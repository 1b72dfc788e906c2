//! The UDP socket under both drivers: bound with the buffers asked for,
//! and every send the OS refuses counted
//! ([`QuicTransport::udp_send_failures`](super::QuicTransport::udp_send_failures)).
//! The hub reads and writes it itself; the quinn driver gets it wrapped in
//! a [`CountingSocket`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tracing::{debug, warn};

/// quinn's tokio UDP socket, except that a send the OS refuses is counted
/// (quinn's own socket logs it and carries on): quinn-udp's `try_send`
/// instead of `send`, and the error turned into a lost packet here.
#[derive(Debug)]
pub(super) struct CountingSocket {
    io: tokio::net::UdpSocket,
    state: quinn::udp::UdpSocketState,
    send_failures: Arc<AtomicU64>,
    /// Failures logged so far (at powers of two, as the hub does).
    logged: AtomicU64,
}

impl CountingSocket {
    pub(super) fn new(
        socket: std::net::UdpSocket,
        send_failures: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
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
/// [`QuicTransport::udp_send_failures`](super::QuicTransport::udp_send_failures): every error but `EMSGSIZE`, which
/// path MTU discovery provokes on purpose with its probes (quinn-udp passes
/// it over too). A would-block is one where the driver drops the packet (the
/// hub); quinn's driver waits instead and never asks.
pub(crate) fn is_send_failure(e: &std::io::Error) -> bool {
    e.raw_os_error() != Some(EMSGSIZE)
}

/// A UDP socket bound to `addr` with buffers of `buffer_bytes` asked for.
pub(super) fn udp_socket(
    addr: SocketAddr,
    buffer_bytes: usize,
) -> std::io::Result<std::net::UdpSocket> {
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
