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
//!   timeout, which then closes it ([`CloseReason::TimedOut`](crate::CloseReason::TimedOut)); dialling
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
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::debug;
use vcodr_core::codec::{negotiate, Hello};
use vcodr_core::CertRole;

use crate::error::{ConnectError, Refusal, SetupError};
use crate::link::{
    Answerer, Connection, LinkInfo, Listener, ListenerGuard, ListenerStats, PeerId, Refused,
};
use crate::rng::SplitMix64;
use crate::settings::{Settings, SettingsError};
use crate::{Protocol, Transport};

mod pipe;

use pipe::{Cause, End, MemLinkShared, Pipe, Side};
pub(crate) use pipe::{MemLink, MemResponder};

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
    /// own handles see them closed locally, peers see [`CloseReason::Reset`](crate::CloseReason::Reset)).
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

/// What a listener slot holds for its protocol (type-erased in [`ListenerSlot`]).
struct ListenerEnd<P: Protocol> {
    accept: mpsc::Sender<Connection<P>>,
    max_frame_bytes: usize,
    answerer: Option<Answerer<P>>,
}

impl<P: Protocol> Clone for ListenerEnd<P> {
    fn clone(&self) -> Self {
        ListenerEnd {
            accept: self.accept.clone(),
            max_frame_bytes: self.max_frame_bytes,
            answerer: self.answerer.clone(),
        }
    }
}

enum Dial<P: Protocol> {
    Partitioned,
    Nobody,
    Found {
        end: ListenerEnd<P>,
        identity: String,
        public_key: Arc<[u8]>,
        trust_domain: String,
        protocol: &'static str,
        hello: Hello,
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
                    Some(slot) => match slot.accept.downcast_ref::<ListenerEnd<P>>() {
                        Some(end) if slot.protocol == P::NAME => Dial::Found {
                            end: end.clone(),
                            identity: slot.identity.clone(),
                            public_key: slot.public_key.clone(),
                            trust_domain: slot.trust_domain.clone(),
                            protocol: slot.protocol,
                            hello: slot.hello.clone(),
                            stats: slot.stats.clone(),
                            round_trip,
                        },
                        _ => Dial::WrongProtocol(slot.protocol, slot.stats.clone()),
                    },
                }
            }
        };
        let (end, identity, server_key, dial_role, hello, stats, round_trip) = match dial {
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
                end,
                identity,
                public_key,
                trust_domain,
                protocol,
                hello,
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
                (end, identity, public_key, role, hello, stats, round_trip)
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
            None,
        );
        let (server_conn, server_parts) = server_end.connection::<P>(
            server_info,
            &shared,
            Side::Server,
            &self.settings,
            end.max_frame_bytes,
            end.answerer.clone(),
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
        match tokio::time::timeout(timeout, end.accept.send(server_conn)).await {
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

    fn listen_with(&self, answerer: Option<Answerer<P>>) -> Result<Listener<P>, SetupError> {
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
                    accept: Box::new(ListenerEnd {
                        accept: tx,
                        max_frame_bytes: self.settings.max_frame_bytes,
                        answerer,
                    }),
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
