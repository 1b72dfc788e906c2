//! The DR state machine of one server (SPEC §2–§5).
//!
//! [`Server`] is defined here with its calling contract, its accessors and
//! the two methods of the contract ([`Server::handle_input`],
//! [`Server::poll_output`]). Each concern lives in its own module, as a block
//! of `impl Server` with the handlers of that concern:
//!
//! | module | concern |
//! |---|---|
//! | `restore` | building a server from its storage after a restart |
//! | `role` | the role and what only it holds; the one way out of a role |
//! | `status` | `getReplicationStatus`, redirects, the role gate of API calls |
//! | `persist` | staging durable changes, persist marks, what runs once durable |
//! | `commit` | the commit point, applying entries, waiting writes and samples |
//! | `tick` | the peer tick: failure counting and deadlines per role |
//! | `replication_active` | streaming to the standby; losing it; the grace |
//! | `replication_standby` | receiving snapshots and entries from the active |
//! | `samples_copy` | after a snapshot, copying the samples it names to the standby |
//! | `pairing` | prepare, configure, the blob, unpairing |
//! | `switchover` | planned and disaster promotion, demotion, both sides |
//! | `fencing` | higher epochs, proofs, telling the old active, rejoin |
//! | `peer` | admission of a peer message, then a plain dispatch |
//! | `commands` | operator commands after the role gate; reads and writes |
//! | `edges` | heartbeats, the contact table, monitoring and its limits |

mod commands;
mod commit;
mod edges;
mod fencing;
mod pairing;
mod peer;
mod persist;
mod replication_active;
mod replication_standby;
mod restore;
mod role;
mod samples_copy;
mod status;
mod switchover;
mod tick;

pub use crate::api::Now;
pub use edges::{ClientContact, MAX_CLIENT_TEXT_BYTES, PROOF_RECHECK_MS};
pub use fencing::MAX_REJECTED_PROOFS;
pub use status::{ClientCount, ReplicationMode, Status};

use crate::api::*;
use crate::config::ServerConfig;
use crate::durable::Restored;
use crate::log::Log;
use crate::msg::*;
use crate::proof::{EpochProof, Keys};
use crate::rng::Rng;
use crate::types::*;
use commit::{PendingSampleAck, PendingWrite};
use edges::ClientLimits;
use persist::{AfterDurable, PersistMark};
use role::RoleState;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// The DR state machine of one server (SPEC §2–§5).
///
/// # Calling contract
/// - Build with [`Server::new`] (first start) or [`Server::restore`] (from what
///   the storage holds), then drain [`Server::poll_output`].
/// - Feed every event with [`Server::handle_input`]; after each call drain
///   `poll_output()` until it returns `None` and carry out each output in order.
/// - `now` never goes backwards between calls.
/// - [`Output::Persist`] requests must become durable in `seq` order; report
///   them with [`Input::Persisted`]. Several may share one commit.
/// - Timers: [`Output::SetTimer`] arms or re-arms, [`Output::CancelTimer`]
///   disarms; an expired timer comes back as [`Input::Timeout`].
/// - The machine never reads a clock, a socket or a file, and never blocks.
///
/// # Writes while the standby is lost
/// An active whose standby misses `peer_failure_threshold` peer ticks shows
/// `FAILURE_GET_STANDBY_STATUS`; writes wait (they are acknowledged if the
/// standby answers) until `standby_grace_ms` runs out. Then, at once:
/// - `degrade`: every waiting write is acknowledged without the standby as
///   soon as the count of unprotected writes covering it is durable;
/// - `block`: every waiting write is answered
///   [`CommandError::NotAcknowledged`] and new ones
///   [`CommandError::WritesBlocked`]. The waiting ones stay in the log,
///   uncommitted: they were not acknowledged, yet may still take effect —
///   replicated and applied if the standby comes back while this server is
///   active, archived at rejoin if the standby is promoted instead. They are
///   not truncated: the standby may hold them already, at the same epoch and
///   index, and a different entry there would break the log's matching.
///
/// An active that restarted and has not heard its standby since refuses
/// writes the moment the standby is declared lost (at once if it was lost
/// before the restart), whatever the policy — the standby may have been
/// promoted meanwhile and degrading could make two writers — with a message
/// naming the ways out (wait for the standby; `removeStandby` once sure it
/// was not promoted). Writes resume as soon as the standby is heard.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Server {
    cfg: ServerConfig,
    me: ServerInfo,
    now: Now,
    rng: Rng,

    /// The role, with what only that role holds (see `role`).
    role: RoleState,
    dr_state: DrState,
    epoch: Epoch,
    highest_epoch_seen: Epoch,
    pair_id: Option<PairId>,
    peer: Option<ServerInfo>,
    /// The peer's TLS identity, pinned at pairing: the only sender admitted
    /// for anything but a pairing step.
    peer_identity: Option<PeerIdentity>,
    /// The highest epoch proof held: this server's own, or the one that fenced it.
    epoch_proof: Option<Arc<EpochProof>>,
    /// Signs this server's epoch proofs and verifies the peer's.
    keys: Keys,
    /// Proofs that failed verification, newest last (at most
    /// [`MAX_REJECTED_PROOFS`]), so a replayed forgery costs no second
    /// check. Kept whole and compared whole: a digest could be made to
    /// collide with a genuine proof and get it refused unchecked.
    rejected_proofs: VecDeque<Arc<EpochProof>>,
    /// Per-client limits an edge certificate holder cannot escape: its
    /// monitoring rate and how often its relayed proofs are verified (at
    /// most one entry per known client: `max_clients`).
    client_limits: BTreeMap<ClientId, ClientLimits>,
    pairing_token: Option<u128>,
    policy: OnStandbyLoss,
    unprotected_writes: u64,
    last_dr_protected_ms: Option<Millis>,
    role_timestamp_ms: Millis,
    state_timestamp_ms: Millis,
    failure: Option<String>,
    history: VecDeque<Transition>,
    persisted_meta: Option<DurableMeta>,
    /// This run of the process (SPEC §4): one more than the last run's.
    incarnation: Incarnation,
    /// ...durable: only then may this run ship an entry to a standby.
    incarnation_durable: bool,

    log: Log,
    applied: Snapshot,
    durable_index: Index,
    storage_compacted_below: Index,

    next_seq: PersistSeq,
    staged: Vec<PersistOp>,
    staged_after: Vec<AfterDurable>,
    marks: VecDeque<PersistMark>,

    /// Monitoring sample ranges this server's storage lacks since a snapshot
    /// and copies from the active while it is a standby, `(client,
    /// after_seq)` → `up_to_seq` (durable: [`PersistOp::SamplesToCopy`]).
    /// A fact about the storage, not the role: kept in any role, so a gap
    /// stays a gap (a later snapshot plans around it).
    samples_to_copy: BTreeMap<(ClientId, u64), u64>,

    writes: VecDeque<PendingWrite>,
    sample_acks: VecDeque<PendingSampleAck>,
    pending_sample_seq: BTreeMap<ClientId, u64>,
    samples_stored_since_start: u64,
    contacts: BTreeMap<ClientId, ClientContact>,

    outputs: VecDeque<Output>,
}

const FIRST_EPOCH: Epoch = 1;

impl Server {
    /// A server that has never run: STANDALONE / UNCONFIGURED at epoch 1.
    pub fn new(cfg: ServerConfig, me: ServerInfo, now: Now) -> Self {
        Self::restore(cfg, me, Restored::default(), now)
    }

    /// Gives the server the keys of its certificate: its promotions are then
    /// signed, and epoch proofs relayed by edges are verified with them
    /// against the pinned peer's key. Without keys ([`Keys::default`]) it
    /// proves nothing and believes no relayed proof; the peer link still fences.
    pub fn with_keys(mut self, keys: Keys) -> Self {
        self.keys = keys;
        self
    }

    // ----------------------------------------------------------------- accessors

    pub fn role(&self) -> Role {
        self.role.kind()
    }

    pub fn dr_state(&self) -> DrState {
        self.dr_state
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// This run of the process (SPEC §4, incarnation fence).
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// Highest epoch of this pair this server has heard of.
    pub fn highest_epoch_seen(&self) -> Epoch {
        self.highest_epoch_seen
    }

    pub fn pair_id(&self) -> Option<PairId> {
        self.pair_id
    }

    pub fn info(&self) -> &ServerInfo {
        &self.me
    }

    pub fn peer(&self) -> Option<&ServerInfo> {
        self.peer.as_ref()
    }

    /// The peer identity pinned at pairing.
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.peer_identity.as_ref()
    }

    /// The highest epoch proof this server holds.
    pub fn epoch_proof(&self) -> Option<&EpochProof> {
        self.epoch_proof.as_deref()
    }

    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// Applied (committed) configuration and sample sequences.
    pub fn applied(&self) -> &Snapshot {
        &self.applied
    }

    pub fn commit_index(&self) -> Index {
        self.applied.index
    }

    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }

    /// The log window held in memory.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// State history held in memory, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &Transition> {
        self.history.iter()
    }

    /// Whether this server currently acknowledges configuration writes.
    pub fn takes_writes(&self) -> bool {
        match &self.role {
            RoleState::Standalone(_) => true,
            RoleState::Active(a) => a.write_refusal(None).is_none(),
            RoleState::Standby(_) | RoleState::Zombie(_) => false,
        }
    }

    /// Whether acknowledged writes are all on the standby too (RPO 0).
    pub fn protected(&self) -> bool {
        self.role.replica().is_some_and(|r| !r.degraded())
    }

    // ---------------------------------------------------------------- the contract

    /// Next output, if any. Drain after every [`Server::handle_input`].
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Feeds one input at time `now`.
    pub fn handle_input(&mut self, now: Now, input: Input) {
        self.now = Now {
            mono_ms: now.mono_ms.max(self.now.mono_ms),
            wall_ms: now.wall_ms,
        };
        match input {
            Input::Command { req, cmd } => self.on_command(req, cmd),
            Input::Peer { link, from, env } => self.on_peer(link, from, env),
            Input::Edge {
                reply_to,
                client,
                client_type,
                msg,
            } => self.on_edge(reply_to, client, client_type, msg),
            Input::Timeout(Timer::PeerTick) => self.on_tick(),
            Input::Timeout(Timer::StandbyGrace) => self.on_grace_expired(),
            Input::Persisted { up_to } => self.on_persisted(up_to),
            Input::SamplesRead { chunks } => self.on_samples_read(chunks),
        }
        self.after_input();
    }

    fn after_input(&mut self) {
        if self.protected() {
            self.last_dr_protected_ms = Some(self.now.wall_ms);
        }
        // Entries appended by this input go to the standby now, while they
        // become durable here (SPEC §4: the two fsyncs overlap).
        if self
            .role
            .replica()
            .is_some_and(|r| r.streaming_behind(self.log.last_index()))
        {
            self.replicate();
        }
        self.flush();
    }

    // ---------------------------------------------------------------- helpers

    pub(super) fn out(&mut self, o: Output) {
        self.outputs.push_back(o);
    }

    pub(super) fn set_timer(&mut self, timer: Timer, after_ms: Millis) {
        self.out(Output::SetTimer { timer, after_ms });
    }

    pub(super) fn reply(&mut self, req: RequestId, result: Result<Reply, CommandError>) {
        self.out(Output::Reply { req, result });
    }

    pub(super) fn event(&mut self, e: Event) {
        self.out(Output::Event(e));
    }

    pub(super) fn envelope(&self, body: PeerMsg) -> PeerEnvelope {
        PeerEnvelope {
            from: self.me.uuid,
            pair_id: self.pair_id,
            epoch: self.epoch,
            body,
        }
    }

    pub(super) fn send_peer(&mut self, body: PeerMsg) {
        if let Some(to) = self.peer.as_ref().map(|p| p.peer_address.clone()) {
            let msg = self.envelope(body);
            self.out(Output::SendPeer { to, msg });
        }
    }

    pub(super) fn wrong_state(&self, method: Method, why: impl Into<String>) -> CommandError {
        CommandError::WrongState {
            method: method.name().to_string(),
            role: self.role(),
            state: self.dr_state,
            why: why.into(),
        }
    }

    /// The peer address of the paired server, for messages.
    pub(super) fn peer_address(&self) -> String {
        self.peer
            .as_ref()
            .map_or_else(|| "?".to_string(), |p| p.peer_address.clone())
    }

    pub(super) fn peer_name(&self) -> String {
        self.peer.as_ref().map_or_else(
            || "nobody".into(),
            |p| format!("{} ({})", p.name, p.peer_address),
        )
    }
}
