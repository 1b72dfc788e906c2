//! The peer link for the driver: the links this server dials (only to the
//! addresses the core names: its configured or pinned peer) and the links
//! other servers dialled to it, each with a named bound.
//!
//! Every message that arrives, on either kind of link, goes to the driver
//! with the identity TLS proved for its sender and the id of its link; the
//! core alone decides whether that sender may send it. A refusal the core
//! answers goes back on the link the message came in on — this server never
//! dials an address it was told by a message.
//!
//! Bounds: [`MAX_ACCEPTED_PEER_LINKS`] links dialled to us at once (beyond
//! it the oldest link of a server that is not the pinned peer is closed, or
//! the new one refused, and counted), [`MAX_DIAL_TARGETS`] addresses dialled,
//! [`PEER_SEND_QUEUE`] messages queued per dialled address and
//! [`PEER_REPLY_QUEUE`] replies per accepted link (beyond them messages are
//! dropped and counted: the core retransmits what matters).

use crate::api::metrics::Metrics;
use crate::driver::links::{PeerLink, ANY_SERVER_NAME};
use crate::driver::{Handle, PeerSink, WeakHandle};
use crate::serve::throttle::LogThrottle;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{mpsc, watch};
use vcodr_core::{PeerEnvelope, PeerIdentity, PeerLinkId};
use vcodr_transport::quic::QuicTransport;
use vcodr_transport::reconnect::Backoff;
use vcodr_transport::{Connection, Incoming, LinkSender, Listener, SendError, Transport};

/// Links other servers dialled to this one, open at once.
pub const MAX_ACCEPTED_PEER_LINKS: usize = 8;
/// Peer addresses this server dials at once (the core names one at a time:
/// the configured standby, then the pinned peer).
pub const MAX_DIAL_TARGETS: usize = 4;
/// Messages queued for one dialled address while its link is down or busy.
pub const PEER_SEND_QUEUE: usize = 4096;
/// Replies (refusals) queued for one accepted link.
pub const PEER_REPLY_QUEUE: usize = 16;
/// A dialled link that stayed up this long resets the redial backoff.
pub const LINK_STABLE: std::time::Duration = std::time::Duration::from_secs(2);

/// One accepted link: where its replies go, who proved to be at the other end.
struct Accepted {
    id: PeerLinkId,
    who: PeerIdentity,
    replies: mpsc::Sender<PeerEnvelope>,
    sender: LinkSender<PeerLink>,
}

/// Every open link by id: accepted ones (oldest first) and dialled ones.
#[derive(Default)]
struct Registry {
    accepted: VecDeque<Accepted>,
    dialled: HashMap<PeerLinkId, LinkSender<PeerLink>>,
}

/// The peer-link layer shared by the driver (sending) and the link tasks.
#[derive(Clone)]
pub struct PeerLinks {
    transport: Arc<QuicTransport<PeerLink>>,
    registry: Arc<Mutex<Registry>>,
    next_id: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    throttle: Arc<LogThrottle>,
    /// The peer identity the core pinned, published by the driver.
    pinned: watch::Receiver<Option<PeerIdentity>>,
}

impl std::fmt::Debug for PeerLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLinks").finish_non_exhaustive()
    }
}

impl PeerLinks {
    pub fn new(
        transport: Arc<QuicTransport<PeerLink>>,
        metrics: Arc<Metrics>,
        throttle: Arc<LogThrottle>,
        pinned: watch::Receiver<Option<PeerIdentity>>,
    ) -> Self {
        PeerLinks {
            transport,
            registry: Arc::default(),
            next_id: Arc::new(AtomicU64::new(1)),
            metrics,
            throttle,
            pinned,
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding it leaves plain data behind: keep going.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn id(&self) -> PeerLinkId {
        self.next_id.fetch_add(1, Relaxed)
    }

    /// The sink the driver sends through; what the links it dials receive goes to `handle`.
    pub fn sink(&self, handle: &Handle) -> Box<dyn PeerSink> {
        Box::new(DialingSink {
            links: self.clone(),
            handle: handle.downgrade(),
            targets: VecDeque::new(),
        })
    }

    /// Accepts links until the listener ends; each message goes to `handle`.
    pub async fn accept_loop(self, mut listener: Listener<PeerLink>, handle: Handle) {
        while let Some(conn) = listener.accept().await {
            let who = conn.peer().to_core();
            let Some((id, replies)) = self.admit_link(&conn, &who) else {
                continue;
            };
            let links = self.clone();
            let handle = handle.clone();
            tokio::spawn(async move {
                links.serve_accepted(conn, id, who, replies, handle).await;
            });
        }
    }

    /// Registers an accepted link within [`MAX_ACCEPTED_PEER_LINKS`]: the
    /// pinned peer always gets a place (the oldest other link makes room);
    /// anyone else only while there is room or an older stranger to replace.
    fn admit_link(
        &self,
        conn: &Connection<PeerLink>,
        who: &PeerIdentity,
    ) -> Option<(PeerLinkId, mpsc::Receiver<PeerEnvelope>)> {
        let pinned = self.pinned.borrow().clone();
        let is_pinned = pinned.as_ref() == Some(who);
        let mut reg = self.registry();
        if reg.accepted.len() >= MAX_ACCEPTED_PEER_LINKS {
            // Room is made by closing the oldest link of a server that is not
            // the pinned peer; the pinned peer may also replace its own stale link.
            let stranger = reg
                .accepted
                .iter()
                .position(|a| Some(&a.who) != pinned.as_ref());
            let victim = stranger.or(is_pinned.then_some(0));
            let Some(old) = victim.and_then(|i| reg.accepted.remove(i)) else {
                drop(reg);
                self.metrics.peer_links_refused.fetch_add(1, Relaxed);
                self.throttle.note("peer_link_refused", || {
                    format!(
                        "refused a peer link from `{}` at {}: {MAX_ACCEPTED_PEER_LINKS} peer links are open",
                        who.name,
                        conn.link().addr
                    )
                });
                conn.close("too many peer links");
                return None;
            };
            old.sender
                .close("too many peer links: the oldest link of a server that is not the pinned peer is closed");
            self.metrics.peer_links_refused.fetch_add(1, Relaxed);
            self.throttle.note("peer_link_evicted", || {
                format!(
                    "{MAX_ACCEPTED_PEER_LINKS} peer links open: closed the oldest (from `{}`) to admit `{}`",
                    old.who.name, who.name
                )
            });
        }
        let id = self.id();
        let (tx, rx) = mpsc::channel(PEER_REPLY_QUEUE);
        reg.accepted.push_back(Accepted {
            id,
            who: who.clone(),
            replies: tx,
            sender: conn.sender(),
        });
        Some((id, rx))
    }

    async fn serve_accepted(
        self,
        conn: Connection<PeerLink>,
        id: PeerLinkId,
        who: PeerIdentity,
        mut replies: mpsc::Receiver<PeerEnvelope>,
        handle: Handle,
    ) {
        let (sender, mut receiver) = conn.split();
        loop {
            tokio::select! {
                m = receiver.recv() => match m {
                    Ok(Incoming::Message(env)) => handle.peer(id, who.clone(), env),
                    Ok(Incoming::Request { .. }) => {}
                    Err(_) => break,
                },
                r = replies.recv() => match r {
                    Some(env) => {
                        if sender.send(&env).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
        self.registry().accepted.retain(|a| a.id != id);
    }

    /// Answers on link `link` (a refusal); dropped if the link is gone or its queue is full.
    fn reply(&self, link: PeerLinkId, msg: PeerEnvelope) {
        let reg = self.registry();
        if let Some(a) = reg.accepted.iter().find(|a| a.id == link) {
            if a.replies.try_send(msg).is_err() {
                self.metrics.peer_dropped.fetch_add(1, Relaxed);
            }
        } else if let Some(s) = reg.dialled.get(&link) {
            let s = s.clone();
            drop(reg);
            // A dialled link is our own peer's: at most one refusal per message it sent.
            tokio::spawn(async move {
                let _ = s.send(&msg).await;
            });
        }
    }

    /// Closes link `link` (its sender is not allowed on the peer link).
    pub fn close(&self, link: PeerLinkId, reason: &str) {
        let mut reg = self.registry();
        if let Some(i) = reg.accepted.iter().position(|a| a.id == link) {
            if let Some(a) = reg.accepted.remove(i) {
                a.sender.close(reason);
            }
        }
    }

    /// Dials `to` and keeps a link to it, reconnecting with capped
    /// exponential backoff and jitter; what it receives goes to `handle`.
    fn spawn_dialler(&self, to: String, handle: Handle) -> mpsc::Sender<PeerEnvelope> {
        let (tx, mut rx) = mpsc::channel::<PeerEnvelope>(PEER_SEND_QUEUE);
        let links = self.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::standard();
            let mut logged = false;
            loop {
                let addr = tokio::net::lookup_host(&to)
                    .await
                    .ok()
                    .and_then(|mut a| a.next());
                let conn = match addr {
                    Some(addr) => links.transport.connect(addr, ANY_SERVER_NAME).await,
                    None => {
                        if !logged {
                            tracing::warn!(peer = %to, "cannot resolve the peer address");
                            logged = true;
                        }
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                };
                let conn = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        if !logged {
                            tracing::warn!(peer = %to, error = %e, "cannot reach the peer; retrying with backoff");
                            logged = true;
                        }
                        // Messages queued meanwhile are stale; the core retransmits what matters.
                        loop {
                            match rx.try_recv() {
                                Ok(_) => {}
                                Err(mpsc::error::TryRecvError::Empty) => break,
                                Err(mpsc::error::TryRecvError::Disconnected) => return,
                            }
                        }
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                };
                logged = false;
                let up_at = std::time::Instant::now();
                let id = links.id();
                let who = conn.peer().to_core();
                links
                    .throttle
                    .info("peer_link_up", || format!("peer link up to {to}, {who}"));
                let (sender, mut receiver) = conn.split();
                links.registry().dialled.insert(id, sender.clone());
                let ended = loop {
                    tokio::select! {
                        m = rx.recv() => match m {
                            Some(m) => match sender.send(&m).await {
                                Ok(()) => {}
                                // The core never sends what cannot fit; should it,
                                // dropping it keeps the link (and everything behind it) alive.
                                Err(e @ (SendError::TooLarge { .. } | SendError::Encode { .. })) => {
                                    links.metrics.peer_dropped.fetch_add(1, Relaxed);
                                    links.throttle.note("peer_message_too_large", || {
                                        format!("dropped a peer {} that cannot be sent: {e}", m.body.kind())
                                    });
                                }
                                Err(e) => break format!("{e}"),
                            },
                            None => {
                                links.registry().dialled.remove(&id);
                                return;
                            }
                        },
                        m = receiver.recv() => match m {
                            Ok(Incoming::Message(env)) => handle.peer(id, who.clone(), env),
                            Ok(Incoming::Request { .. }) => {}
                            Err(e) => break format!("{e}"),
                        },
                    }
                };
                links.registry().dialled.remove(&id);
                links.throttle.info("peer_link_down", || {
                    format!("peer link down to {to}: {ended}")
                });
                // A link that dies at once (the peer closes it, refusing us)
                // is redialled with backoff, not in a loop of handshakes.
                if up_at.elapsed() >= LINK_STABLE {
                    backoff.reset();
                } else {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        });
        tx
    }
}

/// The driver's side: dials the addresses the core sends to.
struct DialingSink {
    links: PeerLinks,
    /// Where what the dialled links receive goes (the driver holds this
    /// sink: a strong handle would keep it alive forever).
    handle: WeakHandle,
    /// Dialled addresses, oldest first, at most [`MAX_DIAL_TARGETS`].
    targets: VecDeque<(String, mpsc::Sender<PeerEnvelope>)>,
}

impl PeerSink for DialingSink {
    fn send(&mut self, to: &str, msg: PeerEnvelope) {
        let i = match self.targets.iter().position(|(a, _)| a == to) {
            Some(i) => i,
            None => {
                // Gone: the driver itself is being dropped.
                let Some(handle) = self.handle.upgrade() else {
                    return;
                };
                if self.targets.len() >= MAX_DIAL_TARGETS {
                    // Dropping its sender ends the oldest dialler.
                    self.targets.pop_front();
                }
                let tx = self.links.spawn_dialler(to.to_string(), handle);
                self.targets.push_back((to.to_string(), tx));
                self.targets.len() - 1
            }
        };
        if self.targets[i].1.try_send(msg).is_err() {
            self.links.metrics.peer_dropped.fetch_add(1, Relaxed);
        }
    }

    fn reply(&mut self, link: PeerLinkId, msg: PeerEnvelope) {
        self.links.reply(link, msg);
    }

    fn close(&mut self, link: PeerLinkId, reason: &str) {
        self.links.close(link, reason);
    }

    fn dial_targets(&self) -> usize {
        self.targets.len()
    }
}
