//! The UDP socket under both drivers: bound with the buffers asked for,
//! and every send the OS refuses counted
//! ([`QuicTransport::udp_send_failures`](super::QuicTransport::udp_send_failures)).
//! The hub reads and writes it itself; the quinn driver gets it wrapped in
//! a [`CountingSocket`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use tracing::{debug, warn};

/// A UDP socket registered with the runtime for reading only.
///
/// tokio's own `UdpSocket` registers for writing too, and Linux reports a
/// UDP socket writable again each time a datagram it sent is taken off the
/// receiver's queue: every datagram sent woke this thread once more for
/// nothing (strace at one writer: 3.2 `epoll_wait` a write on each server,
/// one of them an `EPOLLOUT` alone). Sends here go straight to the socket;
/// a send the kernel refuses as would-block is the only time anyone waits
/// for writability ([`CountingSocket::wait_writable`]).
#[derive(Debug)]
pub(super) struct ReadOnlyRegistration(AsyncFd<std::net::UdpSocket>);

/// Registers `socket` with the current runtime for `interest` alone.
fn register(
    socket: std::net::UdpSocket,
    interest: Interest,
) -> std::io::Result<AsyncFd<std::net::UdpSocket>> {
    // Deprecated because a `T` could close or swap its descriptor while
    // registered; a `std::net::UdpSocket` owns its descriptor, keeps it for
    // its life and closes it only when dropped, after the registration (the
    // `AsyncFd` drops its registration first).
    #[allow(deprecated)]
    AsyncFd::with_interest(socket, interest)
}

impl ReadOnlyRegistration {
    /// Registers `socket` (non-blocking) for reading with the current runtime.
    pub(super) fn new(socket: std::net::UdpSocket) -> std::io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(ReadOnlyRegistration(register(socket, Interest::READABLE)?))
    }

    pub(super) fn socket(&self) -> &std::net::UdpSocket {
        self.0.get_ref()
    }

    /// Waits until the socket has something to read (it may turn out to have
    /// nothing: [`Self::try_recv`] then says would-block and the next wait waits).
    pub(super) async fn readable(&self) -> std::io::Result<()> {
        let mut guard = self.0.readable().await?;
        guard.retain_ready();
        Ok(())
    }

    /// Runs `recv` on the socket if it was last seen readable; a would-block
    /// clears that, so the next [`Self::readable`] waits for new datagrams.
    pub(super) fn try_recv<R>(
        &self,
        recv: impl FnOnce(&std::net::UdpSocket) -> std::io::Result<R>,
    ) -> std::io::Result<R> {
        self.0.try_io(Interest::READABLE, recv)
    }

    /// Receives a batch into `slots` buffers when the socket is readable, or
    /// `Pending` until it is. A batch that did not fill every slot emptied
    /// the queue: readiness is cleared then, and the next call waits for
    /// the next datagram's wake-up instead of asking the kernel once more
    /// for a would-block (each datagram took two `recvmmsg` otherwise).
    /// Nothing is missed: a datagram queued after this read wakes the
    /// runtime again, and tokio keeps a readiness newer than the one seen here.
    pub(super) fn poll_recv_batch(
        &self,
        cx: &mut std::task::Context<'_>,
        slots: usize,
        mut recv: impl FnMut(&std::net::UdpSocket) -> std::io::Result<usize>,
    ) -> std::task::Poll<std::io::Result<usize>> {
        loop {
            let mut guard = std::task::ready!(self.0.poll_read_ready(cx))?;
            if let Ok(r) = guard.try_io(|fd| recv(fd.get_ref())) {
                // Only where quinn-udp reads with `recvmmsg`: elsewhere it
                // reads one datagram a call whatever the slots.
                if cfg!(any(target_os = "linux", target_os = "android"))
                    && matches!(r, Ok(n) if n < slots)
                {
                    guard.clear_ready();
                }
                return std::task::Poll::Ready(r);
            }
        }
    }
}

/// quinn's tokio UDP socket, except that a send the OS refuses is counted
/// (quinn's own socket logs it and carries on): quinn-udp's `try_send`
/// instead of `send`, and the error turned into a lost packet here; and it
/// is registered for reading only ([`ReadOnlyRegistration`]).
#[derive(Debug)]
pub(super) struct CountingSocket {
    io: ReadOnlyRegistration,
    state: quinn::udp::UdpSocketState,
    send_failures: Arc<AtomicU64>,
    /// Failures logged so far (at powers of two, as the hub does).
    logged: AtomicU64,
    /// The last send was refused as would-block: quinn's pollers wait for
    /// writability before it tries again.
    blocked: AtomicBool,
    /// While connections wait for writability: a second descriptor of the
    /// socket registered for writing, shared by them all (one descriptor
    /// per socket however many wait), closed when the last stops waiting.
    writable: Mutex<Weak<AsyncFd<std::net::UdpSocket>>>,
    /// Times that descriptor could not be made (logged at powers of two).
    wait_failures: AtomicU64,
}

impl CountingSocket {
    pub(super) fn new(
        socket: std::net::UdpSocket,
        send_failures: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        Ok(CountingSocket {
            state: quinn::udp::UdpSocketState::new((&socket).into())?,
            io: ReadOnlyRegistration::new(socket)?,
            send_failures,
            logged: AtomicU64::new(0),
            blocked: AtomicBool::new(false),
            writable: Mutex::new(Weak::new()),
            wait_failures: AtomicU64::new(0),
        })
    }

    /// The shared descriptor registered for writing ([`Self::writable`]),
    /// made if no one holds it.
    fn writable_registration(&self) -> std::io::Result<Arc<AsyncFd<std::net::UdpSocket>>> {
        let mut slot = self.writable.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(fd) = slot.upgrade() {
            return Ok(fd);
        }
        let fd = Arc::new(register(self.io.socket().try_clone()?, Interest::WRITABLE)?);
        *slot = Arc::downgrade(&fd);
        Ok(fd)
    }

    /// What a poller waits on after a refused send: the socket writable
    /// again, or — when no descriptor or epoll watch is left to wait with —
    /// [`WRITABLE_RETRY`], after which quinn simply tries again.
    fn wait_writable(&self) -> WritableWait {
        match self.writable_registration() {
            Ok(fd) => Box::pin(async move {
                // Cleared as seen: a send refused again waits for the next
                // datagram to leave the buffer, never spins on this one.
                fd.writable().await?.clear_ready();
                Ok(())
            }),
            Err(e) => {
                let n = self.wait_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    warn!(error = %e, failures = n, "cannot wait for the UDP socket to take sends; retrying every {WRITABLE_RETRY:?}");
                }
                Box::pin(async {
                    tokio::time::sleep(WRITABLE_RETRY).await;
                    Ok(())
                })
            }
        }
    }
}

/// How long quinn waits before sending again when the socket's
/// writability cannot be waited for ([`CountingSocket::wait_writable`]).
const WRITABLE_RETRY: std::time::Duration = std::time::Duration::from_millis(5);

/// A poller's wait for writability.
type WritableWait = Pin<Box<dyn Future<Output = std::io::Result<()>> + Send + Sync>>;

/// Lets quinn send at once unless the socket last refused a send as
/// would-block; then waits ([`CountingSocket::wait_writable`]).
struct CountingPoller {
    socket: Arc<CountingSocket>,
    wait: Option<WritableWait>,
}

impl std::fmt::Debug for CountingPoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingPoller")
            .field("waiting", &self.wait.is_some())
            .finish_non_exhaustive()
    }
}

impl quinn::UdpPoller for CountingPoller {
    fn poll_writable(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.socket.blocked.load(Ordering::Acquire) {
            // Another connection saw it writable first: stop waiting too
            // (and let go of the shared descriptor).
            this.wait = None;
            return std::task::Poll::Ready(Ok(()));
        }
        let socket = &this.socket;
        let wait = this.wait.get_or_insert_with(|| socket.wait_writable());
        let waited = std::task::ready!(wait.as_mut().poll(cx));
        this.wait = None;
        // An error only when the runtime shuts down, as tokio's own socket.
        waited?;
        this.socket.blocked.store(false, Ordering::Release);
        std::task::Poll::Ready(Ok(()))
    }
}

impl quinn::AsyncUdpSocket for CountingSocket {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        Box::pin(CountingPoller {
            socket: self,
            wait: None,
        })
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit<'_>) -> std::io::Result<()> {
        match self.state.try_send(self.io.socket().into(), transmit) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.blocked.store(true, Ordering::Release);
                Err(e)
            }
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
        let slots = bufs.len().min(meta.len());
        self.io.poll_recv_batch(cx, slots, |socket| {
            self.state.recv(socket.into(), bufs, meta)
        })
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.io.socket().local_addr()
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

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::UdpPoller;
    use std::os::fd::AsRawFd;
    use std::task::Poll;
    use std::time::Duration;

    /// The events every epoll instance of this process asks for on `fd`
    /// (`/proc/self/fdinfo` of each `[eventpoll]` descriptor): one entry per
    /// registration of that descriptor (tokio holds each epoll instance
    /// under two descriptors: a registration is told apart by its data word).
    fn epoll_masks(fd: i32) -> Vec<u32> {
        let mut masks = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let is_epoll = std::fs::read_link(entry.path())
                .is_ok_and(|t| t.to_string_lossy().contains("eventpoll"));
            let info = format!("/proc/self/fdinfo/{}", entry.file_name().to_string_lossy());
            let Ok(info) = std::fs::read_to_string(info) else {
                continue;
            };
            for line in info.lines().filter(|_| is_epoll) {
                // "tfd:       12 events:       19 data: ... pos:0 ino:... sdev:..."
                let mut words = line.split_whitespace();
                if words.next() != Some("tfd:") || words.next() != Some(&fd.to_string()) {
                    continue;
                }
                if let (Some("events:"), Some(hex), Some("data:"), Some(data)) =
                    (words.next(), words.next(), words.next(), words.next())
                {
                    masks.insert(data.to_string(), u32::from_str_radix(hex, 16).unwrap());
                }
            }
        }
        masks.into_values().collect()
    }

    /// One poll of `p` for writability, with the test task's waker.
    async fn poll(p: &mut CountingPoller) -> Poll<std::io::Result<()>> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *p).poll_writable(cx))).await
    }

    const EPOLLIN: u32 = 0x1;
    const EPOLLOUT: u32 = 0x4;

    fn bound() -> std::net::UdpSocket {
        udp_socket("127.0.0.1:0".parse().unwrap(), 1 << 16).unwrap()
    }

    #[tokio::test]
    async fn the_socket_is_registered_for_reading_only_and_writes_wait_only_after_a_refusal() {
        let socket = bound();
        let fd = socket.as_raw_fd();
        let counting = Arc::new(CountingSocket::new(socket, Arc::default()).unwrap());
        let masks = epoll_masks(fd);
        assert_eq!(masks.len(), 1, "one registration of the socket: {masks:x?}");
        assert_eq!(masks[0] & (EPOLLIN | EPOLLOUT), EPOLLIN, "{:x}", masks[0]);

        // Nothing refused: quinn may send at once, and nothing is registered.
        let poller = |socket: &Arc<CountingSocket>| CountingPoller {
            socket: socket.clone(),
            wait: None,
        };
        let (mut first, mut second) = (poller(&counting), poller(&counting));
        assert!(matches!(poll(&mut first).await, Poll::Ready(Ok(()))));
        assert_eq!(counting.writable.lock().unwrap().strong_count(), 0);

        // A refused send: both connections wait, on one second descriptor.
        counting.blocked.store(true, Ordering::Release);
        assert!(poll(&mut first).await.is_pending());
        assert!(poll(&mut second).await.is_pending());
        assert_eq!(counting.writable.lock().unwrap().strong_count(), 2);
        tokio::time::timeout(
            Duration::from_secs(10),
            std::future::poll_fn(|cx| Pin::new(&mut first).poll_writable(cx)),
        )
        .await
        .expect("an idle socket is writable")
        .unwrap();
        assert!(!counting.blocked.load(Ordering::Acquire));
        // The other sees it writable too, and lets go: the descriptor closes.
        assert!(matches!(poll(&mut second).await, Poll::Ready(Ok(()))));
        assert!(first.wait.is_none() && second.wait.is_none());
        assert_eq!(counting.writable.lock().unwrap().strong_count(), 0);
        assert_eq!(epoll_masks(fd).len(), 1);
    }

    #[tokio::test]
    async fn a_datagram_after_a_batch_that_emptied_the_queue_still_wakes_the_reader() {
        let socket = bound();
        let addr = socket.local_addr().unwrap();
        let io = ReadOnlyRegistration::new(socket).unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = [0u8; 64];
        for round in 0..3u8 {
            sender.send_to(&[round], addr).unwrap();
            // One datagram of four slots: readiness is cleared after it.
            let recv = std::future::poll_fn(|cx| {
                io.poll_recv_batch(cx, 4, |s| s.recv(&mut buf).map(|_| 1))
            });
            let n = tokio::time::timeout(Duration::from_secs(10), recv)
                .await
                .unwrap_or_else(|_| panic!("round {round}: the datagram never woke the reader"))
                .unwrap();
            assert_eq!((n, buf[0]), (1, round));
        }
        // Cleared, and nothing queued: the reader waits.
        let waiting = std::future::poll_fn(|cx| {
            Poll::Ready(io.poll_recv_batch(cx, 4, |s| s.recv(&mut [0u8; 8]).map(|_| 1)))
        })
        .await;
        assert!(waiting.is_pending());
    }
}
