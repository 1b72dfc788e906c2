//! The two kinds of links vcodr speaks, as transport protocols.

use std::time::Duration;

use vcodr_core::{CertRole, EdgeMsg, PeerEnvelope, ServerMsg};
use vcodr_transport::{Protocol, QuicDriver, Settings};

/// Server ↔ server: each side sends its peer messages on the ordered stream
/// of a connection it dialled; nothing is request/response.
#[derive(Debug)]
pub struct PeerLink;

impl Protocol for PeerLink {
    const NAME: &'static str = "vcodr-peer";
    /// Only servers: an edge or gateway certificate is refused in the handshake.
    const ACCEPTS: &'static [CertRole] = &[CertRole::Server];
    type Request = ();
    type Response = ();
    type Message = PeerEnvelope;
}

/// Edge or gateway → server: every message is a request with one reply.
/// Heartbeats travel as datagram requests
/// ([`request_datagram`](vcodr_transport::LinkSender::request_datagram)):
/// one packet each way, and a lost one is simply a missed heartbeat, which
/// the edge machine already counts; configuration pulls and monitoring
/// batches, which must arrive, use streams.
#[derive(Debug)]
pub struct EdgeLink;

/// Stream requests one edge may have in flight on a link: a configuration
/// pull and a monitoring batch (one each, by the edge machine's rules), plus
/// room for heartbeats that fell back to a stream. QUIC sets aside state for
/// every stream it allows the peer, so a server holding 10,000 edges keeps
/// this small.
pub const EDGE_LINK_REQUESTS: u32 = 8;

impl Protocol for EdgeLink {
    const NAME: &'static str = "vcodr-edge";
    /// Edges and gateways; a server certificate is refused in the handshake.
    const ACCEPTS: &'static [CertRole] = &[CertRole::Edge, CertRole::Gateway];
    type Request = EdgeMsg;
    type Response = ServerMsg;
    type Message = ();
}

/// The certificate name every server certificate carries besides its own
/// name, so a server can dial its peer knowing only its address (pairing
/// starts from `standbyAddress`); the peer's identity is then taken from its
/// certificate and checked by the core against the pairing.
pub const ANY_SERVER_NAME: &str = "localhost";

/// Transport settings of an edge link, on either end, for edges that
/// heartbeat every `heartbeat_interval`:
/// - `driver`: the hub (the default) runs thousands of mostly idle links on
///   one task;
/// - the edge's heartbeats are the link's keep-alive: QUIC's own keep-alive
///   (every `idle / 2`) fires only when heartbeats stop, so an idle fleet
///   sends one exchange per heartbeat and nothing else;
/// - the link dies after four silent heartbeat intervals (at least 30 s), so
///   a few lost heartbeats never cost a reconnection.
pub fn edge_link_settings(
    base: Settings,
    heartbeat_interval: Duration,
    driver: QuicDriver,
) -> Settings {
    let idle = (heartbeat_interval * 4)
        .max(Duration::from_secs(30))
        .min(vcodr_transport::TIMEOUT_LIMIT);
    Settings {
        max_concurrent_requests: EDGE_LINK_REQUESTS,
        driver,
        idle_timeout: idle,
        keep_alive_interval: idle / 2,
        ..base
    }
}

/// Edge links one client (one certificate) may hold on a server at once: an
/// edge needs one; a reconnection overlaps its old link for a while.
pub const MAX_EDGE_LINKS_PER_CLIENT: usize = 4;

/// The edge links open on a server, by client, so that one certificate
/// cannot open thousands (each costs the server ~20 KiB): beyond
/// [`MAX_EDGE_LINKS_PER_CLIENT`] its oldest link is closed.
#[derive(Debug, Default)]
pub struct EdgeLinks {
    next: std::sync::atomic::AtomicU64,
    by_client: std::sync::Mutex<std::collections::HashMap<String, ClientLinks>>,
}

/// One client's open links, oldest first, by id.
type ClientLinks = Vec<(u64, vcodr_transport::LinkSender<EdgeLink>)>;

impl EdgeLinks {
    /// Registers `link` of `client`; returns its id (for [`EdgeLinks::closed`])
    /// and whether an older link of the same client was closed for it.
    pub fn opened(&self, client: &str, link: vcodr_transport::LinkSender<EdgeLink>) -> (u64, bool) {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut map = self
            .by_client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let links = map.entry(client.to_string()).or_default();
        links.push((id, link));
        let replaced = links.len() > MAX_EDGE_LINKS_PER_CLIENT;
        if replaced {
            let (_, oldest) = links.remove(0);
            oldest.close("replaced by a newer link of the same client");
        }
        (id, replaced)
    }

    /// Forgets link `id` of `client`, which has closed.
    pub fn closed(&self, client: &str, id: u64) {
        let mut map = self
            .by_client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(links) = map.get_mut(client) {
            links.retain(|(i, _)| *i != id);
            if links.is_empty() {
                map.remove(client);
            }
        }
    }
}
