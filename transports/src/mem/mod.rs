//! An in-process network with the same API as QUIC, for simulation tests.
//!
//! Hosts are [`MemTransport`]s on one [`MemNetwork`], addressed by
//! `SocketAddr` like real ones. Every frame goes through the core codec and
//! the same `max_frame_bytes` checks as on QUIC. Faults, per directed link or
//! for the whole network, all drawn from the network's seed:
//!
//! - **delay**: uniform in `delay_min..=delay_max`, order kept;
//! - **reorder**: a frame is held back so that later ones overtake it;
//! - **duplicate** and **drop** of single frames (requests, responses and
//!   ordered messages alike). QUIC never drops or duplicates within a live
//!   stream: these faults are harsher than the real network, for protocols
//!   (like vcodr's) that must survive resends after reconnects;
//! - **partition** of two hosts: like QUIC, frames wait while partitioned and
//!   flow once healed, unless the partition outlasts the link's idle
//!   timeout, which then closes it ([`CloseReason::TimedOut`]); dialling
//!   across a partition times out after the handshake timeout;
//! - **crash** of a host: its links reset, its listener vanishes.
//!
//! # Identities and roles
//! A host's identity is a name, as its certificate would carry. Its role
//! is, unless [`MemTransport::with_role`] sets one, the role its protocol
//! expects of it: [`Protocol::SERVES`] when it listens, the first of
//! [`Protocol::ACCEPTS`] when it dials (so a server on the peer link is a
//! server, an edge on the edge link an edge). The roles rule is the QUIC
//! transport's: a dialler of another role is refused
//! ([`Refusal::WrongRole`]), and a listener of another role than
//! `SERVES` cannot start. Its public key is a stand-in, stable per trust
//! domain and name, unless [`MemTransport::with_public_key`] sets one; it
//! is not a key anything can verify a signature with.
//!
//! # Virtual time and determinism
//! All timers are tokio's. Under a paused clock (`#[tokio::test(start_paused =
//! true)]`, current-thread runtime) time is virtual: it jumps to the next
//! delivery whenever every task waits, so a simulated minute takes
//! milliseconds. Each link direction draws from its own generator, derived
//! from the seed and the link's number (links are numbered in `connect`
//! order), so with a deterministic application a seed reproduces a run.
//! Print the seed on failure ([`MemNetwork::seed`]).

use std::any::Any;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tracing::{debug, warn};
use vcodr_core::codec::{negotiate, Hello};
use vcodr_core::CertRole;

use crate::error::{CloseReason, ConnectError, Refusal, SetupError};
use crate::link::{
    decode_whole_frame, whole_frame_payload, Backend, Connection, Incoming, IncomingTx, LinkInfo,
    Listener, ListenerGuard, ListenerStats, PeerId, PendingRequests, Refused, RequestFailure,
    Responder, ResponderInner,
};
use crate::rng::SplitMix64;
use crate::settings::{Settings, SettingsError};
use crate::{Protocol, Transport};

/// Faults of a directed link. Probabilities are in `[0, 1]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Faults {
    /// Probability that a frame is lost.
    pub drop: f64,
    /// Probability that a frame is delivered twice.
    pub duplicate: f64,
    /// Probability that a frame is held back so later frames overtake it.
    pub reorder: f64,
    /// Smallest one-way delay.
    pub delay_min: Duration,
    /// Largest one-way delay.
    pub delay_max: Duration,
}

impl Faults {
    /// A perfect link: no loss, no delay.
    pub const NONE: Faults = Faults {
        drop: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        delay_min: Duration::ZERO,
        delay_max: Duration::ZERO,
    };

    /// Checks probabilities and delays.
    pub fn validate(&self) -> Result<(), SettingsError> {
        for (field, p) in [
            ("faults.drop", self.drop),
            ("faults.duplicate", self.duplicate),
            ("faults.reorder", self.reorder),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(SettingsError {
                    field,
                    problem: format!("{p} is not a probability in [0, 1]"),
                });
            }
        }
        if self.delay_min > self.delay_max {
            return Err(SettingsError {
                field: "faults.delay_min",
                problem: format!(
                    "{:?} is above delay_max {:?}",
                    self.delay_min, self.delay_max
                ),
            });
        }
        if self.delay_max > Duration::from_secs(3600) {
            return Err(SettingsError {
                field: "faults.delay_max",
                problem: "more than an hour".into(),
            });
        }
        Ok(())
    }
}

impl Default for Faults {
    fn default() -> Self {
        Faults::NONE
    }
}

/// What the network did with frames so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemCounts {
    /// Frames handed to their destination.
    pub delivered: u64,
    /// Frames lost by the `drop` fault.
    pub dropped: u64,
    /// Extra copies made by the `duplicate` fault.
    pub duplicated: u64,
    /// Frames held back by the `reorder` fault.
    pub reordered: u64,
    /// Links closed by partitions that outlasted the idle timeout, or crashes.
    pub links_cut: u64,
}

struct ListenerSlot {
    identity: String,
    public_key: Arc<[u8]>,
    trust_domain: String,
    protocol: &'static str,
    hello: Hello,
    accept: Box<dyn Any + Send>,
    stats: Arc<ListenerStats>,
    generation: u64,
}

struct LinkEntry {
    a: SocketAddr,
    b: SocketAddr,
    idle_timeout: Duration,
    shared: Weak<MemLinkShared>,
}

struct NetState {
    default_faults: Faults,
    link_faults: BTreeMap<(SocketAddr, SocketAddr), Faults>,
    partitions: BTreeSet<(SocketAddr, SocketAddr)>,
    listeners: BTreeMap<SocketAddr, ListenerSlot>,
    links: BTreeMap<u64, LinkEntry>,
    next_link: u64,
    next_generation: u64,
    connect_rng: SplitMix64,
    counts: MemCounts,
}

fn pair(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

impl NetState {
    fn blocked(&self, a: SocketAddr, b: SocketAddr) -> bool {
        self.partitions.contains(&pair(a, b))
    }

    fn faults(&self, from: SocketAddr, to: SocketAddr) -> Faults {
        self.link_faults
            .get(&(from, to))
            .copied()
            .unwrap_or(self.default_faults)
    }
}

struct NetInner {
    seed: u64,
    state: Mutex<NetState>,
    topology: watch::Sender<u64>,
}

/// The in-process network: a seed, the hosts' listeners, and the faults.
#[derive(Clone)]
pub struct MemNetwork {
    inner: Arc<NetInner>,
}

impl std::fmt::Debug for MemNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemNetwork")
            .field("seed", &self.inner.seed)
            .finish_non_exhaustive()
    }
}

impl MemNetwork {
    /// A network with no faults whose every random choice derives from `seed`.
    pub fn new(seed: u64) -> Self {
        let (topology, _) = watch::channel(0);
        MemNetwork {
            inner: Arc::new(NetInner {
                seed,
                state: Mutex::new(NetState {
                    default_faults: Faults::NONE,
                    link_faults: BTreeMap::new(),
                    partitions: BTreeSet::new(),
                    listeners: BTreeMap::new(),
                    links: BTreeMap::new(),
                    next_link: 0,
                    next_generation: 0,
                    connect_rng: SplitMix64::fork(seed, u64::MAX),
                    counts: MemCounts::default(),
                }),
                topology,
            }),
        }
    }

    /// The seed: print it when a simulation fails, to replay it.
    pub fn seed(&self) -> u64 {
        self.inner.seed
    }

    fn state(&self) -> MutexGuard<'_, NetState> {
        // A panic while holding this lock is a bug in this module; the state
        // itself stays consistent (every update is a single assignment), so
        // carry on with it rather than poison every later test step.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A host at `addr` whose certificate would name `identity`.
    pub fn transport<P: Protocol>(
        &self,
        addr: SocketAddr,
        identity: &str,
        settings: Settings,
    ) -> Result<MemTransport<P>, SetupError> {
        settings.validate()?;
        crate::certs::validate_name(identity).map_err(|e| SetupError::Tls {
            name: identity.to_string(),
            reason: e.to_string(),
        })?;
        Ok(MemTransport {
            net: self.clone(),
            addr,
            identity: identity.to_string(),
            role: None,
            public_key: None,
            trust_domain: "deployment".to_string(),
            settings: Arc::new(settings),
            _protocol: std::marker::PhantomData,
        })
    }

    /// Faults of every link without its own.
    pub fn set_faults(&self, faults: Faults) -> Result<(), SettingsError> {
        faults.validate()?;
        self.state().default_faults = faults;
        Ok(())
    }

    /// Faults of the directed link `from → to`.
    pub fn set_link_faults(
        &self,
        from: SocketAddr,
        to: SocketAddr,
        faults: Faults,
    ) -> Result<(), SettingsError> {
        faults.validate()?;
        self.state().link_faults.insert((from, to), faults);
        Ok(())
    }

    /// Cuts `a` from `b` both ways. Links between them that stay cut for
    /// their idle timeout close. Call within a tokio runtime.
    pub fn partition(&self, a: SocketAddr, b: SocketAddr) {
        let mut watched = Vec::new();
        {
            let mut state = self.state();
            state.partitions.insert(pair(a, b));
            state.links.retain(|_, link| link.shared.strong_count() > 0);
            for link in state.links.values() {
                if pair(link.a, link.b) == pair(a, b) {
                    watched.push((link.shared.clone(), link.idle_timeout));
                }
            }
        }
        self.inner.topology.send_modify(|g| *g += 1);
        for (shared, idle_timeout) in watched {
            let net = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(idle_timeout).await;
                if let Some(shared) = shared.upgrade() {
                    if net.state().blocked(a, b) && shared.close(Side::Client, Cause::Partition) {
                        net.state().counts.links_cut += 1;
                    }
                }
            });
        }
    }

    /// Ends the partition of `a` and `b`; held frames flow again.
    pub fn heal(&self, a: SocketAddr, b: SocketAddr) {
        self.state().partitions.remove(&pair(a, b));
        self.inner.topology.send_modify(|g| *g += 1);
    }

    /// Ends every partition.
    pub fn heal_all(&self) {
        self.state().partitions.clear();
        self.inner.topology.send_modify(|g| *g += 1);
    }

    /// The host at `addr` crashes: its listener goes, its links reset (its
    /// own handles see them closed locally, peers see [`CloseReason::Reset`]).
    pub fn crash(&self, addr: SocketAddr) {
        let mut cut = Vec::new();
        {
            let mut state = self.state();
            state.listeners.remove(&addr);
            state.links.retain(|_, link| {
                if link.a == addr || link.b == addr {
                    if let Some(shared) = link.shared.upgrade() {
                        cut.push((
                            shared,
                            if link.a == addr {
                                Side::Client
                            } else {
                                Side::Server
                            },
                        ));
                    }
                    false
                } else {
                    link.shared.strong_count() > 0
                }
            });
        }
        for (shared, side) in cut {
            if shared.close(side, Cause::Crash) {
                self.state().counts.links_cut += 1;
            }
        }
    }

    /// What the network did so far.
    pub fn counts(&self) -> MemCounts {
        self.state().counts
    }
}

/// One host on a [`MemNetwork`], speaking protocol `P`.
pub struct MemTransport<P: Protocol> {
    net: MemNetwork,
    addr: SocketAddr,
    identity: String,
    role: Option<CertRole>,
    public_key: Option<Arc<[u8]>>,
    trust_domain: String,
    settings: Arc<Settings>,
    _protocol: std::marker::PhantomData<fn() -> P>,
}

impl<P: Protocol> Clone for MemTransport<P> {
    fn clone(&self) -> Self {
        MemTransport {
            net: self.net.clone(),
            addr: self.addr,
            identity: self.identity.clone(),
            role: self.role,
            public_key: self.public_key.clone(),
            trust_domain: self.trust_domain.clone(),
            settings: self.settings.clone(),
            _protocol: std::marker::PhantomData,
        }
    }
}

impl<P: Protocol> std::fmt::Debug for MemTransport<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemTransport")
            .field("addr", &self.addr)
            .field("identity", &self.identity)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl<P: Protocol> MemTransport<P> {
    /// Puts this host under another CA: hosts of different trust domains
    /// refuse each other as QUIC refuses an unknown CA.
    pub fn with_trust_domain(mut self, domain: &str) -> Self {
        self.trust_domain = domain.to_string();
        self
    }

    /// Gives this host's certificate `role`, whether it dials or listens
    /// (by default: the role its protocol expects, see the module doc).
    pub fn with_role(mut self, role: CertRole) -> Self {
        self.role = Some(role);
        self
    }

    /// Gives this host's certificate the public key `spki`, as its peers
    /// see it in [`PeerId::public_key`] (to simulate a certificate
    /// reissued under the same name, or to use real keys).
    pub fn with_public_key(mut self, spki: Vec<u8>) -> Self {
        self.public_key = Some(spki.into());
        self
    }

    /// This host's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The public key peers see: the one set, or a stand-in per trust
    /// domain and name.
    fn public_key(&self) -> Arc<[u8]> {
        self.public_key.clone().unwrap_or_else(|| {
            format!("vcodr-mem-key:{}:{}", self.trust_domain, self.identity)
                .into_bytes()
                .into()
        })
    }

    fn one_way_delay(&self, state: &mut NetState, from: SocketAddr, to: SocketAddr) -> Duration {
        let faults = state.faults(from, to);
        state
            .connect_rng
            .duration_between(faults.delay_min, faults.delay_max)
    }
}

enum Dial<P: Protocol> {
    Partitioned,
    Nobody,
    Found {
        accept: mpsc::Sender<Connection<P>>,
        identity: String,
        public_key: Arc<[u8]>,
        trust_domain: String,
        protocol: &'static str,
        hello: Hello,
        settings_max_frame: usize,
        stats: Arc<ListenerStats>,
        round_trip: Duration,
    },
    WrongProtocol(&'static str, Arc<ListenerStats>),
}

impl<P: Protocol> Transport<P> for MemTransport<P> {
    async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Connection<P>, ConnectError> {
        let name = server_name.to_string();
        let timeout = self.settings.handshake_timeout;
        let refused = |refusal| ConnectError::HandshakeRefused {
            addr,
            server_name: name.clone(),
            refusal,
        };
        if crate::certs::validate_name(server_name).is_err() {
            return Err(ConnectError::InvalidServerName {
                addr,
                server_name: name,
            });
        }
        let dial: Dial<P> = {
            let mut state = self.net.state();
            if state.blocked(self.addr, addr) {
                Dial::Partitioned
            } else {
                let round_trip = self.one_way_delay(&mut state, self.addr, addr)
                    + self.one_way_delay(&mut state, addr, self.addr);
                match state.listeners.get(&addr) {
                    None => Dial::Nobody,
                    Some(slot) => match slot
                        .accept
                        .downcast_ref::<(mpsc::Sender<Connection<P>>, usize)>()
                    {
                        Some((accept, max_frame)) if slot.protocol == P::NAME => Dial::Found {
                            accept: accept.clone(),
                            identity: slot.identity.clone(),
                            public_key: slot.public_key.clone(),
                            trust_domain: slot.trust_domain.clone(),
                            protocol: slot.protocol,
                            hello: slot.hello.clone(),
                            settings_max_frame: *max_frame,
                            stats: slot.stats.clone(),
                            round_trip,
                        },
                        _ => Dial::WrongProtocol(slot.protocol, slot.stats.clone()),
                    },
                }
            }
        };
        let (accept, identity, server_key, dial_role, hello, server_max_frame, stats, round_trip) =
            match dial {
                Dial::Partitioned => {
                    tokio::time::sleep(timeout).await;
                    return Err(ConnectError::TimedOut {
                        addr,
                        server_name: name,
                        after: timeout,
                    });
                }
                Dial::Nobody => {
                    return Err(ConnectError::Failed {
                        addr,
                        server_name: name,
                        reason: "nothing listens there".into(),
                    })
                }
                Dial::WrongProtocol(theirs, stats) => {
                    let detail = format!("peer speaks `{}`, not `{theirs}`", P::NAME);
                    stats.refused(Refused::WrongProtocol, self.addr, None, &detail);
                    return Err(refused(Refusal::WrongProtocol { expected: P::NAME }));
                }
                Dial::Found {
                    accept,
                    identity,
                    public_key,
                    trust_domain,
                    protocol,
                    hello,
                    settings_max_frame,
                    stats,
                    round_trip,
                } => {
                    debug_assert_eq!(protocol, P::NAME);
                    if trust_domain != self.trust_domain {
                        let refusal = Refusal::UnknownCa;
                        stats.refused(Refused::UnknownCa, self.addr, None, &refusal);
                        return Err(refused(refusal));
                    }
                    if identity != server_name {
                        return Err(refused(Refusal::WrongName {
                            expected: server_name.to_string(),
                        }));
                    }
                    // The listener's verifier: the dialler's role must be accepted.
                    let role = match self.role.or_else(|| P::ACCEPTS.first().copied()) {
                        Some(role) if P::ACCEPTS.contains(&role) => Ok(role),
                        Some(role) => Err(Refusal::WrongRole {
                            name: self.identity.clone(),
                            role,
                            accepted: P::ACCEPTS.to_vec(),
                        }),
                        None => Err(Refusal::NoRole {
                            name: self.identity.clone(),
                        }),
                    };
                    let role = match role {
                        Ok(role) => role,
                        Err(refusal) => {
                            let why = Refused::of(&refusal);
                            stats.refused(why, self.addr, Some(&self.identity), &refusal);
                            return Err(refused(refusal));
                        }
                    };
                    (
                        accept,
                        identity,
                        public_key,
                        role,
                        hello,
                        settings_max_frame,
                        stats,
                        round_trip,
                    )
                }
            };
        let version = match negotiate(&self.settings.hello, &hello) {
            Ok(version) => version,
            Err(mismatch) => {
                let detail = format!("no common protocol version: {mismatch}");
                let me = Some(self.identity.as_str());
                stats.refused(Refused::VersionMismatch, self.addr, me, &detail);
                return Err(ConnectError::VersionMismatch {
                    addr,
                    server_name: name,
                    mismatch,
                });
            }
        };
        tokio::time::sleep(round_trip).await;

        // Both ends of the link.
        let shared = Arc::new(MemLinkShared::new());
        let link_id = {
            let mut state = self.net.state();
            let id = state.next_link;
            state.next_link += 1;
            state.links.insert(
                id,
                LinkEntry {
                    a: self.addr,
                    b: addr,
                    idle_timeout: self.settings.idle_timeout,
                    shared: Arc::downgrade(&shared),
                },
            );
            id
        };
        let client_end = End::new(&self.settings);
        let server_end = End::new(&self.settings);
        let client_info = LinkInfo {
            peer: PeerId::new(P::SERVES, identity, server_key.to_vec()),
            addr,
            version,
            protocol: P::NAME,
        };
        let server_info = LinkInfo {
            peer: PeerId::new(dial_role, self.identity.clone(), self.public_key().to_vec()),
            addr: self.addr,
            version,
            protocol: P::NAME,
        };
        let (client_conn, client_parts) = client_end.connection::<P>(
            client_info,
            &shared,
            Side::Client,
            &self.settings,
            self.settings.max_frame_bytes,
        );
        let (server_conn, server_parts) = server_end.connection::<P>(
            server_info,
            &shared,
            Side::Server,
            &self.settings,
            server_max_frame,
        );
        let capacity = self.settings.max_pending_sends;
        let to_server = Pipe::<P> {
            net: self.net.clone(),
            from: self.addr,
            to: addr,
            rng: SplitMix64::fork(self.net.seed(), link_id * 2),
            capacity,
            dest: server_parts.dest,
            shared: shared.clone(),
        };
        let to_client = Pipe::<P> {
            net: self.net.clone(),
            from: addr,
            to: self.addr,
            rng: SplitMix64::fork(self.net.seed(), link_id * 2 + 1),
            capacity,
            dest: client_parts.dest,
            shared: shared.clone(),
        };
        tokio::spawn(to_server.run(client_parts.outgoing));
        tokio::spawn(to_client.run(server_parts.outgoing));
        match tokio::time::timeout(timeout, accept.send(server_conn)).await {
            Ok(Ok(())) => {
                ListenerStats::bump(&stats.accepted);
                debug!(link = link_id, from = %self.addr, to = %addr, "mem link up");
                Ok(client_conn)
            }
            Ok(Err(_)) => Err(ConnectError::Failed {
                addr,
                server_name: name,
                reason: "the listener closed".into(),
            }),
            Err(_) => Err(ConnectError::TimedOut {
                addr,
                server_name: name,
                after: timeout,
            }),
        }
    }

    fn listen(&self) -> Result<Listener<P>, SetupError> {
        crate::roles::check_listener::<P>(&self.identity, Some(self.role.unwrap_or(P::SERVES)))?;
        let (tx, rx) = mpsc::channel::<Connection<P>>(self.settings.max_pending_accepts);
        let stats = Arc::new(ListenerStats::new(P::NAME, self.addr));
        let generation = {
            let mut state = self.net.state();
            if state.listeners.contains_key(&self.addr) {
                return Err(SetupError::AlreadyListening { addr: self.addr });
            }
            let generation = state.next_generation;
            state.next_generation += 1;
            state.listeners.insert(
                self.addr,
                ListenerSlot {
                    identity: self.identity.clone(),
                    public_key: self.public_key(),
                    trust_domain: self.trust_domain.clone(),
                    protocol: P::NAME,
                    hello: self.settings.hello.clone(),
                    accept: Box::new((tx, self.settings.max_frame_bytes)),
                    stats: stats.clone(),
                    generation,
                },
            );
            generation
        };
        let guard = MemListenerGuard {
            net: self.net.clone(),
            addr: self.addr,
            generation,
        };
        Ok(Listener::new(
            self.addr,
            rx,
            stats,
            ListenerGuard::Mem(guard),
        ))
    }
}

/// Removes the listener from the network when dropped.
pub(crate) struct MemListenerGuard {
    net: MemNetwork,
    addr: SocketAddr,
    generation: u64,
}

impl Drop for MemListenerGuard {
    fn drop(&mut self) {
        let mut state = self.net.state();
        if state
            .listeners
            .get(&self.addr)
            .is_some_and(|slot| slot.generation == self.generation)
        {
            state.listeners.remove(&self.addr);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

#[derive(Clone, Debug)]
enum Cause {
    App(String),
    Protocol(String),
    Partition,
    Crash,
}

/// The state both ends of one mem link share: whether and why it closed.
struct MemLinkShared {
    closed: watch::Sender<Option<(Side, Cause)>>,
}

impl MemLinkShared {
    fn new() -> Self {
        MemLinkShared {
            closed: watch::channel(None).0,
        }
    }

    /// Closes the link; false if it was closed already.
    fn close(&self, by: Side, cause: Cause) -> bool {
        self.closed.send_if_modified(|state| {
            if state.is_some() {
                return false;
            }
            *state = Some((by, cause.clone()));
            true
        })
    }

    fn reason_for(&self, side: Side) -> Option<CloseReason> {
        let state = self.closed.borrow();
        let (by, cause) = state.as_ref()?;
        let ours = *by == side;
        Some(match cause {
            Cause::App(reason) if ours => CloseReason::Local(reason.clone()),
            Cause::App(reason) => CloseReason::Peer(reason.clone()),
            Cause::Protocol(reason) if ours => CloseReason::Protocol(reason.clone()),
            Cause::Protocol(reason) => CloseReason::Peer(format!("protocol violation: {reason}")),
            Cause::Partition => CloseReason::TimedOut,
            Cause::Crash if ours => CloseReason::Local("this host crashed".into()),
            Cause::Crash => CloseReason::Reset,
        })
    }

    async fn closed(&self, side: Side) -> CloseReason {
        let mut rx = self.closed.subscribe();
        // The sender lives in `self`, so `wait_for` cannot see it dropped.
        let _ = rx.wait_for(Option::is_some).await;
        self.reason_for(side).unwrap_or(CloseReason::Reset)
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Message,
    Request(u64),
    Response(u64),
    Refused(u64),
}

#[derive(Clone, Debug)]
struct Packet {
    kind: Kind,
    frame: Vec<u8>,
}

/// Requests awaiting a response (or a refusal, as text).
type Pending = Arc<PendingRequests<Result<Vec<u8>, String>>>;

/// The mem half of a [`Backend`]: one side of a link.
pub(crate) struct MemLink {
    shared: Arc<MemLinkShared>,
    side: Side,
    outgoing: mpsc::Sender<Packet>,
    pending: Pending,
    request_slots: Semaphore,
    max_frame_bytes: usize,
    request_timeout: Duration,
}

/// Removes a request's slot when the request ends, however it ends.
impl MemLink {
    fn reason(&self) -> CloseReason {
        self.shared
            .reason_for(self.side)
            .unwrap_or(CloseReason::Reset)
    }

    pub(crate) async fn send_frame(&self, frame: Vec<u8>) -> Result<(), CloseReason> {
        if let Some(reason) = self.shared.reason_for(self.side) {
            return Err(reason);
        }
        self.outgoing
            .send(Packet {
                kind: Kind::Message,
                frame,
            })
            .await
            .map_err(|_| self.reason())
    }

    pub(crate) async fn request(&self, frame: Vec<u8>) -> Result<Vec<u8>, RequestFailure> {
        let exchange = async {
            // The semaphore is never closed, so acquiring only waits.
            let _permit = self
                .request_slots
                .acquire()
                .await
                .map_err(|_| RequestFailure::Closed(self.reason()))?;
            if let Some(reason) = self.shared.reason_for(self.side) {
                return Err(RequestFailure::Closed(reason));
            }
            let (slot, rx) = self.pending.register();
            self.outgoing
                .send(Packet {
                    kind: Kind::Request(slot.id),
                    frame,
                })
                .await
                .map_err(|_| RequestFailure::Closed(self.reason()))?;
            let answer = tokio::select! {
                biased;
                answer = rx => answer,
                reason = self.shared.closed(self.side) => return Err(RequestFailure::Closed(reason)),
            };
            match answer {
                Ok(Ok(frame)) => whole_frame_payload(&frame, self.max_frame_bytes)
                    .map(<[u8]>::to_vec)
                    .map_err(RequestFailure::Bad),
                Ok(Err(reason)) => Err(RequestFailure::NoResponse(reason)),
                Err(_) => Err(RequestFailure::Closed(self.reason())),
            }
        };
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(RequestFailure::TimedOut),
        }
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    pub(crate) fn close(&self, reason: &str) {
        self.shared.close(self.side, Cause::App(reason.to_string()));
    }

    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        self.shared.reason_for(self.side)
    }

    pub(crate) async fn closed(&self) -> CloseReason {
        self.shared.closed(self.side).await
    }
}

/// Answers one request over a mem link.
pub(crate) struct MemResponder {
    id: u64,
    outgoing: mpsc::Sender<Packet>,
}

impl MemResponder {
    pub(crate) async fn respond(self, frame: Vec<u8>) -> Result<(), String> {
        self.outgoing
            .send(Packet {
                kind: Kind::Response(self.id),
                frame,
            })
            .await
            .map_err(|_| "the link closed".to_string())
    }

    pub(crate) fn refuse(self) {
        // Best effort, like a QUIC stream reset: if the queue is full or the
        // link closed, the requester times out instead.
        let _ = self.outgoing.try_send(Packet {
            kind: Kind::Refused(self.id),
            frame: Vec::new(),
        });
    }
}

/// Where a pipe delivers: the receiving side's queues.
struct Dest<P: Protocol> {
    incoming: IncomingTx<P>,
    pending: Pending,
    /// The receiving side's own outgoing queue, for its responders.
    outgoing: mpsc::Sender<Packet>,
    info: Arc<LinkInfo>,
    side: Side,
    max_frame_bytes: usize,
}

struct EndParts<P: Protocol> {
    dest: Dest<P>,
    outgoing: mpsc::Receiver<Packet>,
}

struct End {
    outgoing: (mpsc::Sender<Packet>, mpsc::Receiver<Packet>),
    pending: Pending,
}

impl End {
    fn new(settings: &Settings) -> Self {
        End {
            outgoing: mpsc::channel(settings.max_pending_sends),
            pending: Arc::default(),
        }
    }

    fn connection<P: Protocol>(
        self,
        info: LinkInfo,
        shared: &Arc<MemLinkShared>,
        side: Side,
        settings: &Settings,
        max_frame_bytes: usize,
    ) -> (Connection<P>, EndParts<P>) {
        let (incoming_tx, incoming_rx) = mpsc::channel(settings.max_pending_incoming);
        let (out_tx, out_rx) = self.outgoing;
        let link = MemLink {
            shared: shared.clone(),
            side,
            outgoing: out_tx.clone(),
            pending: self.pending.clone(),
            request_slots: Semaphore::new(settings.max_concurrent_requests as usize),
            max_frame_bytes,
            request_timeout: settings.request_timeout,
        };
        let connection = Connection::new(info, max_frame_bytes, Backend::Mem(link), incoming_rx);
        let dest = Dest {
            incoming: incoming_tx,
            pending: self.pending,
            outgoing: out_tx,
            info: connection.info_arc(),
            side,
            max_frame_bytes,
        };
        (
            connection,
            EndParts {
                dest,
                outgoing: out_rx,
            },
        )
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: Instant,
    seq: u64,
}

/// Carries one direction of one link through the faults.
struct Pipe<P: Protocol> {
    net: MemNetwork,
    from: SocketAddr,
    to: SocketAddr,
    rng: SplitMix64,
    capacity: usize,
    dest: Dest<P>,
    shared: Arc<MemLinkShared>,
}

impl<P: Protocol> Pipe<P> {
    async fn run(mut self, mut input: mpsc::Receiver<Packet>) {
        let mut due: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
        let mut packets: HashMap<u64, Packet> = HashMap::new();
        let mut seq = 0u64;
        let mut fifo_at = Instant::now();
        let mut input_open = true;
        let mut closed = self.shared.closed.subscribe();
        let mut topology = self.net.inner.topology.subscribe();
        loop {
            if closed.borrow_and_update().is_some() || (!input_open && due.is_empty()) {
                return;
            }
            topology.borrow_and_update();
            let blocked = self.net.state().blocked(self.from, self.to);
            let next_at = if blocked {
                None
            } else {
                due.peek().map(|d| d.0.at)
            };
            tokio::select! {
                biased;
                _ = closed.changed() => {}
                _ = topology.changed(), if blocked => {}
                _ = tokio::time::sleep_until(next_at.unwrap_or_else(Instant::now)), if next_at.is_some() => {
                    if let Some(Reverse(next)) = due.pop() {
                        if let Some(packet) = packets.remove(&next.seq) {
                            if !self.deliver(packet, &mut closed).await {
                                return;
                            }
                        }
                    }
                }
                packet = input.recv(), if input_open && due.len() < self.capacity => match packet {
                    None => input_open = false,
                    Some(packet) => self.schedule(packet, &mut due, &mut packets, &mut seq, &mut fifo_at),
                },
            }
        }
    }

    fn schedule(
        &mut self,
        packet: Packet,
        due: &mut BinaryHeap<Reverse<Due>>,
        packets: &mut HashMap<u64, Packet>,
        seq: &mut u64,
        fifo_at: &mut Instant,
    ) {
        let faults = self.net.state().faults(self.from, self.to);
        // A fixed number of draws per frame, so that enabling one fault does
        // not shift the choices of the others.
        let dropped = self.rng.chance(faults.drop);
        let duplicated = self.rng.chance(faults.duplicate);
        let now = Instant::now();
        let mut copies = Vec::with_capacity(2);
        for _ in 0..2 {
            let delay = self
                .rng
                .duration_between(faults.delay_min, faults.delay_max);
            let reordered = self.rng.chance(faults.reorder);
            let hold = self.rng.duration_between(
                Duration::from_millis(1),
                faults.delay_max.max(Duration::from_millis(1)) * 2,
            );
            copies.push((delay, reordered, hold));
        }
        let copy_count = if dropped {
            0
        } else if duplicated {
            2
        } else {
            1
        };
        {
            let mut state = self.net.state();
            if dropped {
                state.counts.dropped += 1;
            }
            if duplicated && !dropped {
                state.counts.duplicated += 1;
            }
        }
        for (delay, reordered, hold) in copies.into_iter().take(copy_count) {
            let at = if reordered {
                self.net.state().counts.reordered += 1;
                now + delay + hold
            } else {
                let at = (now + delay).max(*fifo_at);
                *fifo_at = at;
                at
            };
            packets.insert(*seq, packet.clone());
            due.push(Reverse(Due { at, seq: *seq }));
            *seq += 1;
        }
    }

    /// Hands `packet` over; false once the link is closed.
    async fn deliver(
        &mut self,
        packet: Packet,
        closed: &mut watch::Receiver<Option<(Side, Cause)>>,
    ) -> bool {
        self.net.state().counts.delivered += 1;
        let dest = &self.dest;
        let incoming = match packet.kind {
            Kind::Response(id) => {
                dest.pending.answer(id, Ok(packet.frame));
                return true;
            }
            Kind::Refused(id) => {
                dest.pending
                    .answer(id, Err("the peer dropped the request unanswered".into()));
                return true;
            }
            Kind::Message => {
                match decode_whole_frame::<P::Message>(&packet.frame, dest.max_frame_bytes) {
                    Ok(message) => Incoming::Message(message),
                    Err(e) => {
                        warn!(link = %dest.info, reason = %e, "bad frame on the ordered stream; closing this connection only");
                        self.shared.close(
                            dest.side,
                            Cause::Protocol(format!("bad frame on the ordered stream: {e}")),
                        );
                        return false;
                    }
                }
            }
            Kind::Request(id) => {
                match decode_whole_frame::<P::Request>(&packet.frame, dest.max_frame_bytes) {
                    Ok(request) => Incoming::Request {
                        request,
                        responder: Responder::new(
                            dest.info.clone(),
                            dest.max_frame_bytes,
                            ResponderInner::Mem(MemResponder {
                                id,
                                outgoing: dest.outgoing.clone(),
                            }),
                        ),
                    },
                    Err(e) => {
                        warn!(link = %dest.info, reason = %e, "rejected a request frame; the link stays up");
                        let _ = dest.outgoing.try_send(Packet {
                            kind: Kind::Refused(id),
                            frame: Vec::new(),
                        });
                        return true;
                    }
                }
            }
        };
        tokio::select! {
            biased;
            _ = closed.wait_for(Option::is_some) => false,
            sent = dest.incoming.send(Box::new(incoming)) => sent.is_ok(),
        }
    }
}
