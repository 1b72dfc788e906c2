//! The DR state machine of one server.

use crate::api::*;
use crate::config::{Mutant, ServerConfig};
use crate::durable::{apply_entry, Restored};
use crate::log::Log;
use crate::msg::*;
use crate::proof::{EpochClaim, EpochProof, Keys};
use crate::rng::Rng;
use crate::types::*;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// The time of an input: a monotonic clock for timeouts and lag, and wall-clock
/// time for timestamps shown to operators. Neither has to agree with the peer's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Now {
    pub mono_ms: Millis,
    pub wall_ms: Millis,
}

impl Now {
    /// Both clocks at `ms` (tests and simulations).
    pub fn at(ms: Millis) -> Self {
        Now {
            mono_ms: ms,
            wall_ms: ms,
        }
    }
}

/// An operator write waiting to be acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PendingWrite {
    req: RequestId,
    index: Index,
    key: String,
    delete: bool,
}

/// A monitoring batch waiting for its entry to commit.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PendingSampleAck {
    reply_to: ReplyTo,
    index: Index,
    up_to_seq: u64,
}

/// Something to do once a persist request is durable.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum AfterDurable {
    Reply(RequestId, Reply),
    SendPair,
    /// Echoing the pairing token.
    SendPairAccepted(u128),
    SendJoin,
    AckSnapshot {
        index: Index,
        chunk: u32,
    },
    GrantDemotion,
    FinishPromotion,
    /// The unprotected-write count covering entries up to this index is durable.
    UnprotectedCounted(Index),
}

/// A persist request not yet confirmed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PersistMark {
    seq: PersistSeq,
    /// Log last index once this request is durable.
    last_index: Index,
    after: Vec<AfterDurable>,
}

/// A snapshot being sent, one chunk at a time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SnapshotTx {
    index: Index,
    epoch: Epoch,
    chunks: Vec<PeerMsg>,
    /// Next chunk to be acknowledged.
    next: u32,
}

/// A snapshot being received.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SnapshotRx {
    snapshot: Snapshot,
    next: u32,
}

/// The active's view of its standby.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Replica {
    /// Highest index durable on the standby.
    match_index: Index,
    /// Next index to send.
    next_index: Index,
    /// The standby needs a snapshot before any entry.
    need_snapshot: bool,
    snapshot: Option<SnapshotTx>,
    /// Heard from the standby since the last tick.
    heard: bool,
    /// Heard from the standby at all since this process started: until then
    /// the standby may have been promoted while we were down, so degrading
    /// would risk two writers (the peers' classic "old primary restarts alone").
    heard_since_start: bool,
    /// This server restarted as active and has not heard the standby since.
    /// Once the standby is also declared lost, writes are refused at once,
    /// whatever the policy (see [`Server::block_restarted_alone`]). Cleared
    /// when the standby is heard.
    unheard_since_restart: bool,
    missed_ticks: u32,
    /// Missed `peer_failure_threshold` ticks in a row.
    lost: bool,
    /// Lost for longer than `standby_grace` with `on_standby_loss = degrade`:
    /// writes are acknowledged without the standby until it has them all.
    degraded: bool,
    /// Lost for longer than `standby_grace` with `on_standby_loss = block`.
    blocked: bool,
    /// Degraded: entries up to here are counted in `unprotected_writes`...
    unprotected_counted_upto: Index,
    /// ...and up to here that count is durable, so they may be acknowledged.
    unprotected_durable_upto: Index,
    /// Match index at the previous tick, to detect a stalled stream.
    match_at_tick: Index,
    /// Monotonic time since which the standby lags, for `lagMs`.
    lag_since_ms: Option<Millis>,
}

impl Replica {
    fn new(need_snapshot: bool, last_index: Index) -> Self {
        Replica {
            match_index: 0,
            next_index: last_index + 1,
            need_snapshot,
            snapshot: None,
            heard: false,
            heard_since_start: false,
            unheard_since_restart: false,
            unprotected_counted_upto: 0,
            unprotected_durable_upto: 0,
            missed_ticks: 0,
            lost: false,
            degraded: false,
            blocked: false,
            match_at_tick: 0,
            lag_since_ms: None,
        }
    }
}

/// A planned switchover on the active's side.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Demotion {
    new_epoch: Epoch,
    ticks: u32,
    /// drState to go back to if the switchover is abandoned.
    resume: DrState,
}

/// A promotion on the standby's side.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Promotion {
    req: RequestId,
    planned: bool,
    ticks: u32,
    /// Planned: the old active granted demotion and has nothing after this.
    granted_last: Option<(Index, Epoch)>,
    data_loss_bound: Option<u64>,
    /// drState to go back to if the switchover is abandoned.
    resume: DrState,
}

/// One row of the contact table (SPEC §5 `clientContact`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientContact {
    pub client_id: ClientId,
    pub client_type: ClientType,
    pub view: [ViewEntry; 2],
    pub following: Option<String>,
    pub config_epoch: Epoch,
    pub config_version: Index,
    pub cached_samples: u64,
    pub dropped_samples: u64,
    /// Wall-clock time of the last heartbeat (`modified`).
    pub modified_ms: Millis,
    /// Heartbeats of this client that claimed a higher epoch without a valid
    /// proof (`forgedEpochClaims`): a marked client's new proofs are no longer
    /// checked (each check costs a signature verification).
    pub forged_epoch_claims: u64,
}

/// `clientCount` (SPEC §5).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct ClientCount {
    pub edge_count: u64,
    pub gateway_count: u64,
    /// Edges following this server.
    pub current_active_edge_count: u64,
    /// Gateways following this server.
    pub current_active_gateway_count: u64,
    /// Edges following the other server of the pair.
    pub current_standby_edge_count: u64,
    pub current_standby_gateway_count: u64,
    /// Clients following nobody.
    pub following_none_count: u64,
}

/// `getReplicationStatus` (SPEC §7), without the optional tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub role: Role,
    pub dr_state: DrState,
    pub failure_description: Option<String>,
    pub role_timestamp_ms: Millis,
    pub state_timestamp_ms: Millis,
    pub last_dr_protected_ms: Option<Millis>,
    pub epoch: Epoch,
    pub highest_epoch_seen: Epoch,
    pub pair_id: Option<PairId>,
    pub me: ServerInfo,
    pub peer: Option<ServerInfo>,
    /// The peer identity pinned at pairing (certificate name and key).
    pub peer_identity: Option<PeerIdentity>,
    /// The highest epoch proof held (own, or the one that fenced this server).
    pub epoch_proof: Option<Arc<EpochProof>>,
    /// Admin address of the server that takes writes, as far as this one knows.
    pub active_admin_address: Option<String>,
    /// Edge address of the server that takes writes, as far as this one knows.
    pub active_edge_address: Option<String>,
    pub policy: OnStandbyLoss,
    pub last_index: Index,
    pub commit_index: Index,
    pub durable_index: Index,
    pub standby_acked_index: Option<Index>,
    pub lag_entries: u64,
    pub lag_ms: u64,
    pub unprotected_writes: u64,
    pub degraded: bool,
    pub writes_blocked: bool,
    pub fenced_by: Option<Epoch>,
    pub pending_writes: usize,
    pub documents: usize,
    pub samples_stored: u64,
    pub client_count: ClientCount,
}

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

    role: Role,
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
    synced: bool,
    fenced_by: Option<Epoch>,
    redirect_edge: Option<String>,
    unprotected_writes: u64,
    last_dr_protected_ms: Option<Millis>,
    role_timestamp_ms: Millis,
    state_timestamp_ms: Millis,
    zombie_to_notify: bool,
    failure: Option<String>,
    history: VecDeque<Transition>,
    persisted_meta: Option<DurableMeta>,

    log: Log,
    applied: Snapshot,
    durable_index: Index,
    storage_compacted_below: Index,

    next_seq: PersistSeq,
    staged: Vec<PersistOp>,
    staged_after: Vec<AfterDurable>,
    marks: VecDeque<PersistMark>,

    replica: Option<Replica>,
    active_heard: bool,
    active_missed_ticks: u32,
    snapshot_rx: Option<SnapshotRx>,
    join_target: bool,
    rejoin_requested: bool,
    demotion: Option<Demotion>,
    promotion: Option<Promotion>,

    writes: VecDeque<PendingWrite>,
    sample_acks: VecDeque<PendingSampleAck>,
    pending_sample_seq: BTreeMap<ClientId, u64>,
    samples_stored: u64,
    contacts: BTreeMap<ClientId, ClientContact>,

    outputs: VecDeque<Output>,
}

const FIRST_EPOCH: Epoch = 1;
/// Forged proofs remembered (see `rejected_proofs`).
pub const MAX_REJECTED_PROOFS: usize = 64;
/// A client that relayed a forged epoch claim has its later proofs verified
/// at most once per this many milliseconds (monotonic): a signature check
/// costs ~0.1 ms, so one certificate cannot make a server verify at line rate.
pub const PROOF_RECHECK_MS: Millis = 10_000;
/// Longest address or text an edge may report in a heartbeat (its view and
/// `following`): they are stored in the contact table and shown to operators.
pub const MAX_CLIENT_TEXT_BYTES: usize = 256;

/// What one client may still do, refilled over (monotonic) time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
struct ClientLimits {
    /// Monitoring bytes it may send now (a token bucket of one batch).
    sample_tokens: u64,
    /// When `sample_tokens` was last refilled.
    refilled_ms: Millis,
    /// When a proof it relayed was last verified (while it is marked).
    proof_checked_ms: Option<Millis>,
}

impl Server {
    /// A server that has never run: STANDALONE / UNCONFIGURED at epoch 1.
    pub fn new(cfg: ServerConfig, me: ServerInfo, now: Now) -> Self {
        Self::restore(cfg, me, Restored::default(), now)
    }

    /// A server restarting from what its storage holds: it comes back in the
    /// role and epoch it had (SPEC §2).
    pub fn restore(cfg: ServerConfig, me: ServerInfo, r: Restored, now: Now) -> Self {
        debug_assert!(cfg.validate().is_ok(), "validate the configuration first");
        let rng = Rng::new(cfg.seed ^ (me.uuid as u64) ^ ((me.uuid >> 64) as u64));
        let mut applied = r.applied;
        let mut log = Log::starting_after(applied.index, applied.epoch);
        // Replay committed entries beyond the applied state, then keep the rest.
        let applied_index = applied.index;
        let mut entries = r
            .log
            .into_iter()
            .skip_while(|e| e.index <= applied_index)
            .peekable();
        while let Some(e) = entries.next_if(|e| e.index <= r.commit) {
            apply_entry(&mut applied, &e);
            log.push(e);
        }
        for e in entries {
            if e.index == log.last_index() + 1 {
                log.push(e);
            }
        }
        let commit = applied.index;
        log.trim_front(cfg.log_window_entries, cfg.log_window_bytes, commit);
        let history: VecDeque<Transition> = r.history.into_iter().collect();
        let mut s = Server {
            me,
            now,
            rng,
            role: Role::Standalone,
            dr_state: DrState::Unconfigured,
            epoch: FIRST_EPOCH,
            highest_epoch_seen: FIRST_EPOCH,
            pair_id: None,
            peer: None,
            peer_identity: None,
            epoch_proof: None,
            keys: Keys::default(),
            rejected_proofs: VecDeque::new(),
            client_limits: BTreeMap::new(),
            pairing_token: None,
            policy: cfg.on_standby_loss,
            synced: false,
            fenced_by: None,
            redirect_edge: None,
            unprotected_writes: 0,
            last_dr_protected_ms: None,
            role_timestamp_ms: now.wall_ms,
            state_timestamp_ms: now.wall_ms,
            zombie_to_notify: false,
            failure: None,
            history,
            persisted_meta: r.meta.clone(),
            durable_index: log.last_index(),
            storage_compacted_below: 0,
            log,
            pending_sample_seq: applied.sample_seq.clone(),
            applied,
            next_seq: 1,
            staged: Vec::new(),
            staged_after: Vec::new(),
            marks: VecDeque::new(),
            replica: None,
            active_heard: false,
            active_missed_ticks: 0,
            snapshot_rx: None,
            join_target: false,
            rejoin_requested: false,
            demotion: None,
            promotion: None,
            writes: VecDeque::new(),
            sample_acks: VecDeque::new(),
            samples_stored: 0,
            contacts: BTreeMap::new(),
            outputs: VecDeque::new(),
            cfg,
        };
        for e in s.log.iter_after(s.applied.index) {
            if let Op::Samples { client, samples } = &e.op {
                if let Some(last) = samples.last() {
                    let seq = s.pending_sample_seq.entry(client.clone()).or_insert(0);
                    *seq = (*seq).max(last.seq);
                }
            }
        }
        if let Some(m) = r.meta {
            s.role = m.role;
            s.epoch = m.epoch;
            s.highest_epoch_seen = m.fenced_by.unwrap_or(m.epoch).max(m.epoch);
            s.pair_id = m.pair_id;
            s.peer = m.peer.clone();
            s.peer_identity = m.peer_identity.clone();
            s.epoch_proof = m.epoch_proof.clone();
            s.pairing_token = m.pairing_token;
            s.policy = m.policy;
            s.synced = m.synced;
            s.fenced_by = m.fenced_by;
            s.redirect_edge = m.redirect_edge;
            s.unprotected_writes = m.unprotected_writes;
            s.last_dr_protected_ms = m.last_dr_protected_ms;
            s.role_timestamp_ms = m.role_timestamp_ms;
            s.state_timestamp_ms = m.state_timestamp_ms;
            s.zombie_to_notify = m.zombie_to_notify;
            s.dr_state = m.dr_state;
            let promoted_durably = m.role == Role::Standby
                && m.dr_state == DrState::PendingStandbyPromotion
                && s.log
                    .get(s.log.last_index())
                    .is_some_and(|e| e.op == Op::EpochStart && e.epoch == m.epoch);
            if promoted_durably {
                // The first entry of the new epoch was durable: the promotion happened.
                s.zombie_to_notify = true;
                let last = s.log.last_index();
                s.apply_upto(last);
                s.transition(
                    Role::Standalone,
                    DrState::StandbyPromoted,
                    format!("restarted: promotion to epoch {} was durable", m.epoch),
                );
            }
            let resumed = s.state_after_restart(s.dr_state);
            match s.role {
                Role::Active => {
                    let mut rep =
                        Replica::new(m.dr_state == DrState::ActiveWaitStandby, s.log.last_index());
                    rep.lag_since_ms = Some(now.mono_ms);
                    rep.unheard_since_restart = true;
                    s.replica = Some(rep);
                }
                Role::Standby if m.dr_state == DrState::StandbyCandidate && m.peer.is_some() => {
                    s.join_target = true;
                }
                _ => {}
            }
            if resumed != s.dr_state {
                s.transition(
                    s.role,
                    resumed,
                    "restarted: state re-established with the peer".into(),
                );
            }
        }
        // Entries durable in the log but not yet recorded as committed.
        s.advance_commit();
        s.set_timer(Timer::PeerTick, s.cfg.peer_heartbeat_interval_ms);
        if s.role == Role::Active && s.dr_state == DrState::FailureGetStandbyStatus {
            if let Some(r) = s.replica.as_mut() {
                r.lost = true;
            }
            s.set_timer(Timer::StandbyGrace, s.cfg.standby_grace_ms);
            // Lost before the restart and not heard since: refused at once.
            s.block_restarted_alone();
        }
        s.flush();
        s
    }

    /// Gives the server the keys of its certificate: its promotions are then
    /// signed, and epoch proofs relayed by edges are verified with them
    /// against the pinned peer's key. Without keys ([`Keys::default`]) it
    /// proves nothing and believes no relayed proof; the peer link still fences.
    pub fn with_keys(mut self, keys: Keys) -> Self {
        self.keys = keys;
        self
    }

    fn state_after_restart(&self, st: DrState) -> DrState {
        use DrState::*;
        match (self.role, st) {
            (Role::Active, ActiveConfiguring | ActiveWaitStandby | FailureGetStandbyStatus) => st,
            (Role::Active, _) => StandbySync,
            (Role::Standby, StandbyCandidate | StandbyConfiguring) => st,
            (Role::Standby, _) if self.synced => StandbySync,
            (Role::Standby, _) => StandbyConfiguring,
            _ => st,
        }
    }

    // ----------------------------------------------------------------- accessors

    pub fn role(&self) -> Role {
        self.role
    }
    pub fn dr_state(&self) -> DrState {
        self.dr_state
    }
    pub fn epoch(&self) -> Epoch {
        self.epoch
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
    pub fn contacts(&self) -> impl Iterator<Item = &ClientContact> {
        self.contacts.values()
    }
    /// Seeds the contact table from storage after a restart (at most `max_clients`).
    pub fn restore_contacts(&mut self, contacts: impl IntoIterator<Item = ClientContact>) {
        for c in contacts {
            if self.contacts.len() >= self.cfg.max_clients {
                break;
            }
            self.contacts.insert(c.client_id.clone(), c);
        }
    }

    /// Whether this server currently acknowledges configuration writes.
    pub fn takes_writes(&self) -> bool {
        self.role.is_writer()
            && self.demotion.is_none()
            && !self.replica.as_ref().is_some_and(|r| r.blocked)
    }
    /// Whether acknowledged writes are all on the standby too (RPO 0).
    pub fn protected(&self) -> bool {
        self.role == Role::Active && !self.replica.as_ref().is_some_and(|r| r.degraded)
    }

    /// `clientCount`.
    pub fn client_count(&self) -> ClientCount {
        let mut c = ClientCount::default();
        let mine = &self.me.edge_address;
        for ct in self.contacts.values() {
            let edge = ct.client_type == ClientType::Edge;
            if edge {
                c.edge_count += 1;
            } else {
                c.gateway_count += 1;
            }
            match &ct.following {
                Some(f) if f == mine => {
                    if edge {
                        c.current_active_edge_count += 1
                    } else {
                        c.current_active_gateway_count += 1
                    }
                }
                Some(_) => {
                    if edge {
                        c.current_standby_edge_count += 1
                    } else {
                        c.current_standby_gateway_count += 1
                    }
                }
                None => c.following_none_count += 1,
            }
        }
        c
    }

    /// `getReplicationStatus`.
    pub fn status(&self) -> Status {
        let rep = self.replica.as_ref();
        let standby_acked = rep.map(|r| r.match_index);
        let lag_entries = rep.map_or(0, |r| self.durable_index.saturating_sub(r.match_index));
        let lag_ms = rep
            .and_then(|r| r.lag_since_ms)
            .filter(|_| lag_entries > 0)
            .map_or(0, |t| self.now.mono_ms.saturating_sub(t));
        let redirects = self.redirects();
        Status {
            role: self.role,
            dr_state: self.dr_state,
            failure_description: self.failure.clone(),
            role_timestamp_ms: self.role_timestamp_ms,
            state_timestamp_ms: self.state_timestamp_ms,
            last_dr_protected_ms: self.last_dr_protected_ms,
            epoch: self.epoch,
            highest_epoch_seen: self.highest_epoch_seen,
            pair_id: self.pair_id,
            me: self.me.clone(),
            peer: self.peer.clone(),
            peer_identity: self.peer_identity.clone(),
            epoch_proof: self.epoch_proof.clone(),
            active_admin_address: redirects.admin,
            active_edge_address: redirects.edge,
            policy: self.policy,
            last_index: self.log.last_index(),
            commit_index: self.applied.index,
            durable_index: self.durable_index,
            standby_acked_index: standby_acked,
            lag_entries,
            lag_ms,
            unprotected_writes: self.unprotected_writes,
            degraded: rep.is_some_and(|r| r.degraded),
            writes_blocked: rep.is_some_and(|r| r.blocked),
            fenced_by: self.fenced_by,
            pending_writes: self.writes.len(),
            documents: self.applied.docs.len(),
            samples_stored: self.samples_stored,
            client_count: self.client_count(),
        }
    }

    /// Where callers refused by this server should go.
    pub fn redirects(&self) -> Redirects {
        match self.role {
            Role::Standalone | Role::Active => Redirects {
                admin: Some(self.me.admin_address.clone()),
                edge: Some(self.me.edge_address.clone()),
            },
            Role::Standby => Redirects {
                admin: self
                    .peer
                    .as_ref()
                    .map(|p| p.admin_address.clone())
                    .filter(|a| !a.is_empty()),
                edge: self
                    .peer
                    .as_ref()
                    .map(|p| p.edge_address.clone())
                    .filter(|a| !a.is_empty()),
            },
            Role::Zombie => {
                let peer_edge = self.peer.as_ref().map(|p| p.edge_address.clone());
                let promoted_is_peer =
                    self.redirect_edge.is_none() || self.redirect_edge == peer_edge;
                Redirects {
                    admin: self
                        .peer
                        .as_ref()
                        .filter(|_| promoted_is_peer)
                        .map(|p| p.admin_address.clone())
                        .filter(|a| !a.is_empty()),
                    edge: self
                        .redirect_edge
                        .clone()
                        .or(peer_edge)
                        .filter(|a| !a.is_empty()),
                }
            }
        }
    }

    /// Edge address of the server that takes writes (what `redirects().edge` says, cheaper).
    fn active_edge_address(&self) -> Option<String> {
        match self.role {
            Role::Standalone | Role::Active => Some(self.me.edge_address.clone()),
            Role::Standby => self
                .peer
                .as_ref()
                .map(|p| &p.edge_address)
                .filter(|a| !a.is_empty())
                .cloned(),
            Role::Zombie => self.redirects().edge,
        }
    }

    /// The role gate for an API call of `kind` (SPEC §3, §9.5).
    pub fn gate(&self, kind: RequestKind, method: &str) -> Result<(), CommandError> {
        gate(
            self.role,
            self.dr_state,
            self.fenced_by.unwrap_or(self.highest_epoch_seen),
            kind,
            method,
            &self.redirects(),
            self.cfg.mutant,
        )
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
        }
        self.after_input();
    }

    fn after_input(&mut self) {
        if self.protected() {
            self.last_dr_protected_ms = Some(self.now.wall_ms);
        }
        self.flush();
    }

    /// Stages the metadata if it changed and emits one `Persist` for everything staged.
    fn flush(&mut self) {
        let meta_changed = self
            .persisted_meta
            .as_ref()
            .is_none_or(|m| self.meta_differs(m));
        if meta_changed {
            let meta = self.durable_meta();
            self.staged
                .insert(0, PersistOp::Meta(Box::new(meta.clone())));
            self.persisted_meta = Some(meta);
        }
        if self.staged.is_empty() && self.staged_after.is_empty() {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let ops = std::mem::take(&mut self.staged);
        self.marks.push_back(PersistMark {
            seq,
            last_index: self.log.last_index(),
            after: std::mem::take(&mut self.staged_after),
        });
        self.outputs.push_back(Output::Persist { seq, ops });
    }

    /// Whether the durable metadata changed since `m` was persisted. The
    /// wall-clock "last protected" stamp changes on every input while
    /// protected; it is persisted along with the next real change.
    fn meta_differs(&self, m: &DurableMeta) -> bool {
        m.role != self.role
            || m.dr_state != self.dr_state
            || m.epoch != self.epoch
            || m.pair_id != self.pair_id
            || m.peer != self.peer
            || m.peer_identity != self.peer_identity
            || m.epoch_proof != self.epoch_proof
            || m.pairing_token != self.pairing_token
            || m.policy != self.policy
            || m.synced != self.synced
            || m.fenced_by != self.fenced_by
            || m.redirect_edge != self.redirect_edge
            || m.unprotected_writes != self.unprotected_writes
            || m.role_timestamp_ms != self.role_timestamp_ms
            || m.state_timestamp_ms != self.state_timestamp_ms
            || m.zombie_to_notify != self.zombie_to_notify
    }

    fn durable_meta(&self) -> DurableMeta {
        DurableMeta {
            role: self.role,
            dr_state: self.dr_state,
            epoch: self.epoch,
            pair_id: self.pair_id,
            peer: self.peer.clone(),
            peer_identity: self.peer_identity.clone(),
            epoch_proof: self.epoch_proof.clone(),
            pairing_token: self.pairing_token,
            policy: self.policy,
            synced: self.synced,
            fenced_by: self.fenced_by,
            redirect_edge: self.redirect_edge.clone(),
            unprotected_writes: self.unprotected_writes,
            last_dr_protected_ms: self.last_dr_protected_ms,
            role_timestamp_ms: self.role_timestamp_ms,
            state_timestamp_ms: self.state_timestamp_ms,
            zombie_to_notify: self.zombie_to_notify,
        }
    }

    // ---------------------------------------------------------------- helpers

    fn out(&mut self, o: Output) {
        self.outputs.push_back(o);
    }

    fn set_timer(&mut self, timer: Timer, after_ms: Millis) {
        self.out(Output::SetTimer { timer, after_ms });
    }

    fn reply(&mut self, req: RequestId, result: Result<Reply, CommandError>) {
        self.out(Output::Reply { req, result });
    }

    fn event(&mut self, e: Event) {
        self.out(Output::Event(e));
    }

    fn envelope(&self, body: PeerMsg) -> PeerEnvelope {
        PeerEnvelope {
            from: self.me.uuid,
            pair_id: self.pair_id,
            epoch: self.epoch,
            body,
        }
    }

    fn send_peer(&mut self, body: PeerMsg) {
        if let Some(to) = self.peer.as_ref().map(|p| p.peer_address.clone()) {
            let msg = self.envelope(body);
            self.out(Output::SendPeer { to, msg });
        }
    }

    fn wrong_state(&self, method: &str, why: impl Into<String>) -> CommandError {
        CommandError::WrongState {
            method: method.to_string(),
            role: self.role,
            state: self.dr_state,
            why: why.into(),
        }
    }

    /// Records a role/drState change: event, in-memory and durable history.
    fn transition(&mut self, role: Role, to: DrState, reason: String) {
        debug_assert!(
            DrState::allowed_for(role).contains(&to),
            "{role} cannot be in {to}"
        );
        if role == self.role && to == self.dr_state {
            return;
        }
        let t = Transition {
            from_role: self.role,
            from: self.dr_state,
            to_role: role,
            to,
            epoch: self.epoch,
            timestamp_ms: self.now.wall_ms,
            reason,
        };
        if role != self.role {
            self.role_timestamp_ms = self.now.wall_ms;
        }
        self.state_timestamp_ms = self.now.wall_ms;
        self.role = role;
        self.dr_state = to;
        if !matches!(
            to,
            DrState::FailureGetActiveStatus | DrState::FailureGetStandbyStatus
        ) {
            self.failure = None;
        }
        if self.history.len() >= self.cfg.history_entries {
            self.history.pop_front();
        }
        self.history.push_back(t.clone());
        self.staged.push(PersistOp::History(t.clone()));
        self.event(Event::Transition(t));
    }

    fn stage_append(&mut self, entry: Entry) {
        match self.staged.last_mut() {
            Some(PersistOp::Append(v)) => v.push(entry.clone()),
            _ => self.staged.push(PersistOp::Append(vec![entry.clone()])),
        }
        self.log.push(entry);
    }

    fn append_op(&mut self, op: Op) -> Index {
        let index = self.log.last_index() + 1;
        self.stage_append(Entry {
            epoch: self.epoch,
            index,
            op,
        });
        index
    }

    // ---------------------------------------------------------------- persistence

    fn on_persisted(&mut self, up_to: PersistSeq) {
        let before = self.durable_index;
        let mut actions = Vec::new();
        while self.marks.front().is_some_and(|m| m.seq <= up_to) {
            // `front()` was just checked to be `Some`.
            let m = self.marks.pop_front().expect("checked");
            self.durable_index = m.last_index.min(self.log.last_index());
            actions.extend(m.after);
        }
        for a in actions {
            self.run_after(a);
        }
        if self.durable_index != before {
            match self.role {
                Role::Standby if self.snapshot_rx.is_none() && self.synced => {
                    let durable_index = self.durable_index;
                    self.send_peer(PeerMsg::AppendAck {
                        durable_index,
                        ok: true,
                    });
                }
                Role::Active | Role::Standalone => {
                    self.advance_commit();
                    self.replicate();
                }
                _ => {}
            }
        }
    }

    fn run_after(&mut self, a: AfterDurable) {
        match a {
            AfterDurable::Reply(req, r) => self.reply(req, Ok(r)),
            AfterDurable::SendPair => self.send_pair(),
            AfterDurable::SendPairAccepted(token) => self.send_pair_accepted(token),
            AfterDurable::SendJoin => self.send_join(),
            AfterDurable::AckSnapshot { index, chunk } => {
                self.send_peer(PeerMsg::SnapshotAck { index, chunk });
                let durable_index = self.durable_index;
                self.send_peer(PeerMsg::AppendAck {
                    durable_index,
                    ok: true,
                });
            }
            AfterDurable::GrantDemotion => self.send_demote_granted(),
            AfterDurable::FinishPromotion => self.finish_promotion(),
            AfterDurable::UnprotectedCounted(upto) => {
                if let Some(r) = self.replica.as_mut() {
                    r.unprotected_durable_upto = r.unprotected_durable_upto.max(upto);
                }
                self.advance_commit();
            }
        }
    }

    // ---------------------------------------------------------------- commit and acks

    /// The highest index that may be acknowledged to clients.
    fn ack_point(&self) -> Index {
        match (&self.replica, self.role) {
            (_, Role::Standalone) => self.durable_index,
            (Some(r), Role::Active) => {
                if self.cfg.mutant == Mutant::AckBeforeStandby {
                    self.durable_index
                } else if r.degraded {
                    // Unprotected writes are acknowledged once their count is durable.
                    self.durable_index
                        .min(r.match_index.max(r.unprotected_durable_upto))
                } else {
                    self.durable_index.min(r.match_index)
                }
            }
            _ => self.applied.index,
        }
    }

    /// Moves the commit point forward (writer roles) and acknowledges what it covers.
    fn advance_commit(&mut self) {
        if !self.role.is_writer() {
            return;
        }
        let applied = self.applied.index;
        let upto = self.durable_index.min(self.log.last_index());
        if let Some(r) = self.replica.as_mut().filter(|r| r.degraded) {
            // Count what degrade will acknowledge; the count goes to disk with
            // the next persist, and the writes are acknowledged after it.
            let from = applied.max(r.match_index).max(r.unprotected_counted_upto);
            if upto > from {
                let n = self
                    .log
                    .iter_after(from)
                    .take_while(|e| e.index <= upto)
                    .filter(|e| e.op != Op::EpochStart)
                    .count();
                self.unprotected_writes += n as u64;
                r.unprotected_counted_upto = upto;
                self.staged_after
                    .push(AfterDurable::UnprotectedCounted(upto));
            }
        }
        let target = self.ack_point().min(self.log.last_index());
        if target <= self.applied.index {
            return;
        }
        self.apply_upto(target);
        self.answer_committed();
    }

    fn apply_upto(&mut self, target: Index) {
        let from = self.applied.index;
        if target <= from {
            return;
        }
        let entries: Vec<Entry> = self
            .log
            .iter_after(from)
            .take_while(|e| e.index <= target)
            .cloned()
            .collect();
        let retain = self.cfg.retain_samples_per_client;
        let mut prune = Vec::new();
        for e in &entries {
            if let Op::Samples { client, samples } = &e.op {
                self.samples_stored += samples.len() as u64;
                // Retention: older samples of this client leave storage.
                if let Some(last) = samples.last().filter(|s| s.seq > retain) {
                    prune.push(PersistOp::PruneSamples {
                        client: client.clone(),
                        below_seq: last.seq - retain + 1,
                    });
                }
            }
            apply_entry(&mut self.applied, e);
        }
        self.staged.push(PersistOp::Commit(self.applied.index));
        self.staged.extend(prune);
        self.trim_window();
    }

    fn trim_window(&mut self) {
        let before = self.log.base_index();
        let base = self.log.trim_front(
            self.cfg.log_window_entries,
            self.cfg.log_window_bytes,
            self.applied.index,
        );
        if base == before {
            return;
        }
        // Storage keeps what the standby may still need from the log.
        let safe = match &self.replica {
            Some(r) => r.match_index.min(base),
            None => base,
        };
        if safe >= self.storage_compacted_below + (self.cfg.log_window_entries as u64 / 4).max(1) {
            self.storage_compacted_below = safe;
            self.staged.push(PersistOp::Compact { below: safe + 1 });
        }
    }

    fn answer_committed(&mut self) {
        let c = self.applied.index;
        while self.writes.front().is_some_and(|w| w.index <= c) {
            let w = self.writes.pop_front().expect("checked");
            let r = if w.delete {
                Reply::Deleted {
                    key: w.key,
                    version: w.index,
                }
            } else {
                Reply::Written {
                    key: w.key,
                    version: w.index,
                }
            };
            self.reply(w.req, Ok(r));
        }
        while self.sample_acks.front().is_some_and(|a| a.index <= c) {
            let a = self.sample_acks.pop_front().expect("checked");
            let msg = ServerMsg::MonitoringAck {
                epoch: self.epoch,
                up_to_seq: a.up_to_seq,
            };
            self.out(Output::ReplyEdge {
                reply_to: a.reply_to,
                msg,
            });
        }
    }

    /// Refuses every waiting write and sample batch (fenced, demoted, unpaired).
    fn fail_pending(&mut self, reason: &str) {
        for w in std::mem::take(&mut self.writes) {
            let e = CommandError::NotAcknowledged {
                index: w.index,
                reason: reason.to_string(),
            };
            self.reply(w.req, Err(e));
        }
        for a in std::mem::take(&mut self.sample_acks) {
            let msg = self.refused_msg(reason.to_string());
            self.out(Output::ReplyEdge {
                reply_to: a.reply_to,
                msg,
            });
        }
    }

    fn refused_msg(&self, reason: String) -> ServerMsg {
        ServerMsg::Refused {
            role: self.role,
            epoch: self.epoch,
            redirect: self.redirects().edge.filter(|e| *e != self.me.edge_address),
            reason,
        }
    }

    // ---------------------------------------------------------------- replication (active)

    /// Sends the standby what it lacks: snapshot chunks or locally durable entries.
    fn replicate(&mut self) {
        if self.role != Role::Active || self.dr_state == DrState::ActiveConfiguring {
            return;
        }
        let Some(r) = self.replica.as_mut() else {
            return;
        };
        if r.snapshot.is_some() {
            return;
        }
        if r.need_snapshot || r.next_index <= self.log.base_index() {
            self.start_snapshot();
            return;
        }
        let mut sends = Vec::new();
        let commit = self.applied.index;
        while r.next_index <= self.durable_index
            && r.next_index - r.match_index - 1 < self.cfg.max_inflight_entries
            && self.log.bytes_after(r.match_index) - self.log.bytes_after(r.next_index - 1)
                < self.cfg.max_inflight_bytes
        {
            let room = self.cfg.max_inflight_entries - (r.next_index - r.match_index - 1);
            let max = (self.cfg.max_batch_entries as u64).min(room) as usize;
            let entries = self.log.batch(
                r.next_index,
                self.durable_index,
                max,
                self.cfg.max_batch_bytes,
            );
            if entries.is_empty() {
                break;
            }
            let prev_index = r.next_index - 1;
            // `prev_index >= base_index` because `next_index > base_index` was checked.
            let prev_epoch = self.log.epoch_at(prev_index).unwrap_or(0);
            r.next_index += entries.len() as u64;
            sends.push(PeerMsg::Append {
                prev_index,
                prev_epoch,
                entries,
                commit_index: commit,
                active_durable: self.durable_index,
            });
        }
        for m in sends {
            self.send_peer(m);
        }
    }

    /// An empty append: heartbeat and probe of where the standby is.
    fn send_heartbeat_append(&mut self) {
        let Some(r) = self.replica.as_ref() else {
            return;
        };
        if r.snapshot.is_some() || r.need_snapshot {
            return;
        }
        let prev_index = r.next_index - 1;
        let Some(prev_epoch) = self.log.epoch_at(prev_index) else {
            return;
        };
        let m = PeerMsg::Append {
            prev_index,
            prev_epoch,
            entries: Vec::new(),
            commit_index: self.applied.index,
            active_durable: self.durable_index,
        };
        self.send_peer(m);
    }

    fn start_snapshot(&mut self) {
        let snap = self.applied.clone();
        let mut chunks = Vec::new();
        let mut docs = Vec::new();
        let mut bytes = 0usize;
        let max = self.cfg.max_batch_bytes;
        for (k, d) in &snap.docs {
            let size = k.len() + d.value.len() + 16;
            if bytes + size > max && !docs.is_empty() {
                chunks.push(std::mem::take(&mut docs));
                bytes = 0;
            }
            bytes += size;
            docs.push((k.clone(), d.clone()));
        }
        chunks.push(docs);
        let n = chunks.len() as u32;
        let chunks: Vec<PeerMsg> = chunks
            .into_iter()
            .enumerate()
            .map(|(i, docs)| {
                let last = i as u32 + 1 == n;
                PeerMsg::SnapshotChunk {
                    index: snap.index,
                    snapshot_epoch: snap.epoch,
                    chunk: i as u32,
                    last,
                    docs,
                    sample_seq: if last {
                        snap.sample_seq.clone().into_iter().collect()
                    } else {
                        Vec::new()
                    },
                    epoch_starts: if last {
                        snap.epoch_starts.clone()
                    } else {
                        Vec::new()
                    },
                    config_index: snap.config_index,
                }
            })
            .collect();
        let first = chunks[0].clone();
        if let Some(r) = self.replica.as_mut() {
            r.need_snapshot = false;
            r.snapshot = Some(SnapshotTx {
                index: snap.index,
                epoch: snap.epoch,
                chunks,
                next: 0,
            });
        }
        self.event(Event::SnapshotSent {
            index: snap.index,
            chunks: n,
        });
        if self.dr_state == DrState::StandbyRunning {
            self.transition(
                Role::Active,
                DrState::StandbySync,
                "standby needs a snapshot: the log it lacks was compacted".into(),
            );
        }
        self.send_peer(first);
    }

    fn resend_snapshot_chunk(&mut self) {
        let chunk = self
            .replica
            .as_ref()
            .and_then(|r| r.snapshot.as_ref())
            .and_then(|s| s.chunks.get(s.next as usize).cloned());
        if let Some(c) = chunk {
            self.send_peer(c);
        }
    }

    fn on_snapshot_ack(&mut self, index: Index, chunk: u32) {
        let Some(r) = self.replica.as_mut() else {
            return;
        };
        let Some(tx) = r.snapshot.as_mut() else {
            return;
        };
        if tx.index != index || tx.next != chunk {
            return;
        }
        tx.next += 1;
        if (tx.next as usize) < tx.chunks.len() {
            let c = tx.chunks[tx.next as usize].clone();
            self.send_peer(c);
            return;
        }
        let (idx, _epoch) = (tx.index, tx.epoch);
        r.snapshot = None;
        r.match_index = r.match_index.max(idx);
        r.next_index = idx + 1;
        if self.dr_state == DrState::ActiveWaitStandby {
            self.transition(
                Role::Active,
                DrState::StandbySync,
                format!("standby installed the snapshot at index {idx}"),
            );
        }
        self.after_standby_progress();
        self.replicate();
        // Tell the standby at once where the log ends, so it sees it caught up.
        self.send_heartbeat_append();
    }

    fn on_append_ack(&mut self, durable_index: Index, ok: bool) {
        let durable = self.durable_index;
        let Some(r) = self.replica.as_mut() else {
            return;
        };
        if r.snapshot.is_some() {
            return;
        }
        let mut resend = true;
        let mut regressed = None;
        if ok {
            r.match_index = r.match_index.max(durable_index.min(durable));
            r.next_index = r.next_index.max(r.match_index + 1);
        } else {
            if durable_index < r.match_index {
                // The standby says it holds less than it acknowledged: believe it
                // (its disk is the truth) and say so loudly.
                regressed = Some(r.match_index);
                r.match_index = durable_index;
            }
            // The standby lacks what we sent after its hint: resend from there,
            // once — a repeated refusal waits for the next tick.
            let next = (durable_index + 1).max(r.match_index + 1).min(r.next_index);
            resend = next != r.next_index;
            r.next_index = next;
        }
        if let Some(acked) = regressed {
            let reason = format!(
                "standby reports durable index {durable_index} below the {acked} it acknowledged"
            );
            self.event(Event::PeerIgnored {
                kind: "AppendAck",
                reason,
            });
        }
        self.after_standby_progress();
        if resend {
            self.replicate();
        }
    }

    /// After the standby acknowledged something: lag, states, protection, commit.
    fn after_standby_progress(&mut self) {
        let durable = self.durable_index;
        let now = self.now.mono_ms;
        let Some(r) = self.replica.as_mut() else {
            return;
        };
        let caught_up = r.match_index >= durable;
        r.lag_since_ms = if caught_up {
            None
        } else {
            r.lag_since_ms.or(Some(now))
        };
        let ended_degrade = r.degraded && r.match_index >= self.applied.index;
        if ended_degrade {
            r.degraded = false;
        }
        let m = r.match_index;
        if ended_degrade {
            self.event(Event::Protected { at_index: m });
        }
        if caught_up && self.dr_state == DrState::StandbySync {
            self.transition(
                Role::Active,
                DrState::StandbyRunning,
                format!("standby caught up at index {m}"),
            );
        }
        self.advance_commit();
        self.check_demotion_ready();
    }

    fn on_standby_heard(&mut self) {
        let Some(r) = self.replica.as_mut() else {
            return;
        };
        r.heard = true;
        r.heard_since_start = true;
        r.unheard_since_restart = false;
        r.missed_ticks = 0;
        if r.lost {
            r.lost = false;
            r.blocked = false;
            self.out(Output::CancelTimer(Timer::StandbyGrace));
            let to = if self
                .replica
                .as_ref()
                .is_some_and(|r| r.match_index >= self.durable_index && r.snapshot.is_none())
            {
                DrState::StandbyRunning
            } else {
                DrState::StandbySync
            };
            if self.dr_state == DrState::FailureGetStandbyStatus {
                self.transition(Role::Active, to, "standby reachable again".into());
            }
        }
    }

    /// `standby_grace` ran out with the standby still lost: the policy
    /// decides about the writes waiting now and those to come. `degrade`
    /// acknowledges them without the standby (counted as unprotected, once
    /// the count is durable); `block` answers every waiting write at once as
    /// not acknowledged and refuses new ones (see [`Server::block_writes`]).
    fn on_grace_expired(&mut self) {
        if self.role != Role::Active {
            return;
        }
        let policy = self.policy;
        let commit = self.applied.index;
        let grace = self.cfg.standby_grace_ms;
        let peer = self.peer_address();
        let Some(r) = self.replica.as_mut() else {
            return;
        };
        if !r.lost {
            return;
        }
        if r.unheard_since_restart {
            // Blocked when the standby was declared lost.
            self.block_restarted_alone();
            return;
        }
        match policy {
            OnStandbyLoss::Degrade if !r.heard_since_start => {
                let failure = format!(
                    "the standby {peer} has not answered since replication was configured, for longer than \
                     standby_grace ({grace} ms): writes are refused rather than degraded. They resume once \
                     it answers; to run alone, removeStandby"
                );
                let pending = format!(
                    "the standby {peer} has not answered since replication was configured, and this server \
                     acknowledges no write without it before it has answered once. The write is in this \
                     server's log only: it takes effect if the standby answers while this server is still \
                     active; check with configuration/get before retrying"
                );
                self.block_writes(failure, &pending);
            }
            OnStandbyLoss::Degrade => {
                if !r.degraded {
                    r.degraded = true;
                    self.failure = Some(format!(
                        "standby unreachable for longer than standby_grace ({grace} ms); writes are acknowledged \
                         WITHOUT the standby (on_standby_loss = degrade) and counted as unprotected"
                    ));
                    self.event(Event::Degraded {
                        since_index: commit + 1,
                    });
                    // The writes waiting now are acknowledged as unprotected
                    // too, as soon as their count is durable.
                    self.advance_commit();
                }
            }
            OnStandbyLoss::Block => {
                let failure = format!(
                    "standby unreachable for longer than standby_grace ({grace} ms); writes are refused \
                     (on_standby_loss = block) so that RPO stays 0"
                );
                let pending = format!(
                    "the standby has been unreachable for longer than standby_grace ({grace} ms) and \
                     on_standby_loss = block acknowledges no write without it (RPO stays 0). The write is in \
                     this server's log but not confirmed by the standby, so it may still take effect: it is \
                     replicated and applied if the standby comes back while this server is active, and not \
                     if the standby is promoted instead (it is then archived here at rejoin). Check with \
                     configuration/get before retrying"
                );
                self.block_writes(failure, &pending);
            }
        }
    }

    /// Stops acknowledging writes while the standby is lost: new writes are
    /// refused with `failure` (`WritesBlocked`), and every write already
    /// waiting is answered at once as not acknowledged, with `pending_reason`.
    /// Those stay in the log, uncommitted: the truth for their clients is
    /// that they were not acknowledged and will not be by this call, yet may
    /// still take effect if the standby returns (truncating them instead
    /// would be unsafe: the standby may hold them already). Writes resume
    /// when the standby is heard again ([`Server::on_standby_heard`]).
    fn block_writes(&mut self, failure: String, pending_reason: &str) {
        let Some(r) = self.replica.as_mut() else {
            return;
        };
        if r.blocked {
            return;
        }
        r.blocked = true;
        self.failure = Some(failure.clone());
        let refused_pending = self.writes.len() as u64;
        self.fail_pending(pending_reason);
        self.event(Event::WritesBlocked {
            refused_pending,
            why: failure,
        });
    }

    /// An active that restarted and has not heard its standby since, once
    /// the standby is declared lost: the standby may have been promoted while
    /// this server was down, so acknowledging writes without it (degrade)
    /// could make two writers. Writes are refused at once — not when the
    /// grace runs out — whatever the policy, naming the ways out.
    fn block_restarted_alone(&mut self) {
        let peer = self.peer_address();
        let failure = format!(
            "restarted without reaching the standby {peer} since: it may have been promoted while this server \
             was down, so writes are refused (whatever on_standby_loss says) rather than risk two writers. \
             They resume as soon as the standby answers; to run alone for good, first make sure it was not \
             promoted, then removeStandby"
        );
        let pending = format!(
            "this server restarted and has not reached its standby {peer} since, and acknowledges no write \
             without it (it may have been promoted meanwhile). The write is in this server's log only: it takes \
             effect if the standby answers while this server is still active, and not if the standby was \
             promoted. Check with configuration/get before retrying"
        );
        self.block_writes(failure, &pending);
    }

    /// The peer address of the paired server, for messages.
    fn peer_address(&self) -> String {
        self.peer
            .as_ref()
            .map_or_else(|| "?".to_string(), |p| p.peer_address.clone())
    }

    // ---------------------------------------------------------------- the peer tick

    fn on_tick(&mut self) {
        self.set_timer(Timer::PeerTick, self.cfg.peer_heartbeat_interval_ms);
        match self.role {
            Role::Active => self.tick_active(),
            Role::Standby => self.tick_standby(),
            Role::Standalone if self.zombie_to_notify => self.send_new_epoch(),
            Role::Zombie if self.rejoin_requested => self.send_rejoin(),
            _ => {}
        }
    }

    fn tick_active(&mut self) {
        let threshold = self.cfg.peer_failure_threshold;
        let durable = self.durable_index;
        let Some(r) = self.replica.as_mut() else {
            return;
        };
        if !r.heard {
            r.missed_ticks = (r.missed_ticks + 1).min(threshold);
        }
        r.heard = false;
        let newly_lost = !r.lost && r.missed_ticks >= threshold;
        if newly_lost {
            r.lost = true;
        }
        let restarted_alone = newly_lost && r.unheard_since_restart;
        // Stalled stream: rewind and resend from what the standby has.
        let stalled = r.match_index == r.match_at_tick && r.next_index > r.match_index + 1;
        if stalled {
            r.next_index = r.match_index + 1;
        }
        r.match_at_tick = r.match_index;
        let lag = durable.saturating_sub(r.match_index);
        if newly_lost {
            self.failure = Some(format!(
                "standby {} unreachable: no answer to {threshold} peer heartbeats; writes wait up to \
                 standby_grace ({} ms), then on_standby_loss = {} applies",
                self.peer.as_ref().map_or("?", |p| p.peer_address.as_str()),
                self.cfg.standby_grace_ms,
                self.policy.as_str()
            ));
            if matches!(
                self.dr_state,
                DrState::StandbySync | DrState::StandbyRunning | DrState::ActiveWaitStandby
            ) {
                self.transition(
                    Role::Active,
                    DrState::FailureGetStandbyStatus,
                    format!("standby unreachable for {threshold} heartbeats (lag {lag} entries)"),
                );
            }
            self.set_timer(Timer::StandbyGrace, self.cfg.standby_grace_ms);
        }
        if restarted_alone {
            self.block_restarted_alone();
        }
        if let Some(d) = self.demotion.as_mut() {
            d.ticks += 1;
            if d.ticks > self.cfg.switchover_max_ticks {
                let resume = d.resume;
                self.demotion = None;
                self.transition(
                    Role::Active,
                    resume,
                    "planned switchover abandoned: the standby did not catch up in time; writes resume".into(),
                );
            }
        }
        match self.dr_state {
            DrState::ActiveConfiguring => self.send_pair(),
            _ if self.replica.as_ref().is_some_and(|r| r.snapshot.is_some()) => {
                self.resend_snapshot_chunk()
            }
            _ => {
                self.replicate();
                self.send_heartbeat_append();
            }
        }
    }

    fn tick_standby(&mut self) {
        let threshold = self.cfg.peer_failure_threshold;
        if self.join_target && self.dr_state == DrState::StandbyCandidate {
            self.send_join();
        }
        if !self.active_heard {
            self.active_missed_ticks = (self.active_missed_ticks + 1).min(threshold);
        }
        self.active_heard = false;
        if let Some(p) = self.promotion.as_mut() {
            if p.planned && p.granted_last.is_none() {
                p.ticks += 1;
                if p.ticks > self.cfg.switchover_max_ticks {
                    let (req, resume) = (p.req, p.resume);
                    self.promotion = None;
                    let why = format!(
                        "the active did not confirm its demotion within {} peer heartbeats; nothing changed, \
                         the active keeps serving",
                        self.cfg.switchover_max_ticks
                    );
                    self.transition(
                        Role::Standby,
                        resume,
                        format!("planned switchover abandoned: {why}"),
                    );
                    self.reply(req, Err(CommandError::SwitchoverAbandoned(why)));
                } else {
                    let new_epoch = self.epoch + 1;
                    self.send_peer(PeerMsg::DemoteRequest { new_epoch });
                }
            }
        }
        let watching = matches!(
            self.dr_state,
            DrState::StandbyConfiguring | DrState::StandbySync | DrState::StandbyRunning
        );
        if watching && self.active_missed_ticks >= threshold {
            let missed = self.active_missed_ticks;
            self.failure = Some(format!(
                "active {} unreachable: nothing heard for {missed} peer heartbeats; promoteStandbyToActive \
                 is possible",
                self.peer.as_ref().map_or("?", |p| p.peer_address.as_str())
            ));
            self.transition(
                Role::Standby,
                DrState::FailureGetActiveStatus,
                format!("active unreachable for {missed} heartbeats"),
            );
        }
    }

    fn on_active_heard(&mut self) {
        self.active_heard = true;
        self.active_missed_ticks = 0;
        if self.dr_state == DrState::FailureGetActiveStatus {
            let to = if self.synced {
                DrState::StandbySync
            } else {
                DrState::StandbyConfiguring
            };
            self.transition(Role::Standby, to, "active reachable again".into());
        }
    }

    // ---------------------------------------------------------------- peer messages

    /// The one access decision of the peer link: may the server TLS proved
    /// (`from`) send this message? Before pairing only pairing steps are
    /// admitted, each carrying the one-time token that the operator handed
    /// over; after pairing only the pinned peer, and only for its own pair.
    fn admit(&self, from: &PeerIdentity, env: &PeerEnvelope) -> Result<(), PeerRefusal> {
        let pinned = self.sent_by_pinned_peer(from, env);
        let unpinned = self.peer_identity.is_none();
        let token_matches = |t: u128| self.pairing_token == Some(t);
        let pairing_step = match &env.body {
            // A prepared candidate is never pinned; `on_pair` checks the token.
            PeerMsg::Pair { .. } => Some(unpinned),
            PeerMsg::Join { token, .. } => Some(unpinned || token_matches(*token)),
            PeerMsg::PairAccepted { token, .. } => Some(unpinned && token_matches(*token)),
            PeerMsg::Refused { in_reply_to, .. } => {
                Some(unpinned && in_reply_to.is_some_and(token_matches))
            }
            _ => None,
        };
        match pairing_step {
            _ if pinned && pairing_step.is_some() => Ok(()),
            Some(true) => Ok(()),
            Some(false) if unpinned => Err(PeerRefusal::PairingRefused),
            _ if !pinned && unpinned => Err(PeerRefusal::NotPaired),
            _ if !pinned => Err(PeerRefusal::NotPinnedPeer),
            _ if env.pair_id.is_none() || env.pair_id != self.pair_id => {
                Err(PeerRefusal::OtherPair)
            }
            _ => Ok(()),
        }
    }

    /// A pair configured before identities were pinned (storage migrated
    /// from schema 2) has a peer but no pin: the first server whose
    /// certificate carries the name recorded at pairing is pinned. No pairing
    /// of this version leaves that state (each pins as it pairs).
    fn pin_legacy_peer(&mut self, from: &PeerIdentity) {
        let legacy = self.peer_identity.is_none()
            && self.pair_id.is_some()
            && self.pairing_token.is_none()
            && self
                .peer
                .as_ref()
                .is_some_and(|p| !p.name.is_empty() && p.name == from.name);
        if legacy {
            self.peer_identity = Some(from.clone());
            self.event(Event::PeerPinned {
                identity: from.clone(),
                how: "first contact after a storage migration, by the certificate name recorded at pairing",
            });
        }
    }

    /// Whether the proven sender is the peer pinned at pairing.
    fn sent_by_pinned_peer(&self, from: &PeerIdentity, env: &PeerEnvelope) -> bool {
        if self.cfg.mutant == Mutant::TrustEnvelopeFrom {
            // The bug this mutant plants: believing what the message says of itself.
            return self.peer.as_ref().is_some_and(|p| p.uuid == env.from);
        }
        self.peer_identity.as_ref() == Some(from)
    }

    fn on_peer(&mut self, link: PeerLinkId, from: PeerIdentity, env: PeerEnvelope) {
        let kind = env.body.kind();
        self.pin_legacy_peer(&from);
        if let Err(reason) = self.admit(&from, &env) {
            // A pairing attempt is answered on its own link (never by dialling
            // an address it names); anything else from a stranger just ends here.
            let answer = match &env.body {
                PeerMsg::Pair { token, .. } | PeerMsg::Join { token, .. } => Some((
                    *token,
                    format!(
                        "{} does not take this pairing: it is {} / {} and paired with {}",
                        self.me.name,
                        self.role,
                        self.dr_state,
                        self.peer_name()
                    ),
                )),
                _ => None,
            };
            if let Some((token, why)) = answer {
                self.refuse_on_link(link, env.pair_id, token, why);
            }
            self.event(Event::PeerRefused {
                link,
                from,
                kind,
                reason,
            });
            return;
        }
        let same_pair = env.pair_id.is_some() && env.pair_id == self.pair_id;
        // Fencing: a higher epoch of our pair, from our pinned peer, ends our writes for good.
        if same_pair && self.sent_by_pinned_peer(&from, &env) && env.epoch > self.epoch {
            let (redirect, proof) = match &env.body {
                PeerMsg::NewEpoch { active, proof } => {
                    // Kept only if it verifies: the zombie then relays it and
                    // knows for sure that a higher epoch exists.
                    let proof = proof
                        .as_ref()
                        .filter(|p| p.claim.epoch == env.epoch && self.proof_verdict(p).is_ok())
                        .cloned();
                    (Some(active.edge_address.clone()), proof)
                }
                _ => (self.peer.as_ref().map(|p| p.edge_address.clone()), None),
            };
            // The peer's addresses stay those learned at pairing: a message,
            // even the pinned peer's, never changes where this server dials.
            let accepting_rejoin =
                self.role == Role::Zombie && matches!(env.body, PeerMsg::RejoinAccepted { .. });
            if !accepting_rejoin {
                self.learn_epoch(
                    env.epoch,
                    redirect,
                    format!("peer {} ({kind})", self.peer_name()),
                    proof,
                );
            }
        }
        match env.body {
            PeerMsg::Pair {
                token,
                standby_uuid,
                active,
                policy,
            } => self.on_pair(
                link,
                from,
                env.pair_id,
                env.epoch,
                token,
                standby_uuid,
                active,
                policy,
            ),
            PeerMsg::Join { token, standby } => self.on_join(link, from, token, standby),
            PeerMsg::Rejoin {
                last_index,
                last_epoch,
                standby,
            } => self.on_rejoin(env.epoch, last_index, last_epoch, standby),
            PeerMsg::Refused { reason, .. } => self.on_refused(reason),
            PeerMsg::NewEpoch { .. } => {
                if self.role == Role::Zombie {
                    self.send_peer(PeerMsg::ZombieAck);
                }
            }
            PeerMsg::ZombieAck => self.zombie_to_notify = false,
            PeerMsg::PairAccepted { standby, .. } => self.on_pair_accepted(from, standby),
            _ if env.epoch < self.epoch && self.role.is_writer() => {
                // A stale server of our pair: tell it who holds the newer epoch.
                self.send_new_epoch();
            }
            PeerMsg::SnapshotChunk {
                index,
                snapshot_epoch,
                chunk,
                last,
                docs,
                sample_seq,
                epoch_starts,
                config_index,
            } => self.on_snapshot_chunk(
                env.epoch,
                index,
                snapshot_epoch,
                chunk,
                last,
                docs,
                sample_seq,
                epoch_starts,
                config_index,
            ),
            PeerMsg::SnapshotAck { index, chunk } if self.role == Role::Active => {
                self.on_standby_heard();
                self.on_snapshot_ack(index, chunk);
            }
            PeerMsg::Append {
                prev_index,
                prev_epoch,
                entries,
                commit_index,
                active_durable,
            } => self.on_append(
                env.epoch,
                prev_index,
                prev_epoch,
                entries,
                commit_index,
                active_durable,
            ),
            PeerMsg::AppendAck { durable_index, ok } if self.role == Role::Active => {
                self.on_standby_heard();
                self.on_append_ack(durable_index, ok);
            }
            PeerMsg::DemoteRequest { new_epoch } => self.on_demote_request(new_epoch),
            PeerMsg::DemoteGranted {
                new_epoch,
                last_index,
                last_epoch,
            } => self.on_demote_granted(new_epoch, last_index, last_epoch),
            PeerMsg::RejoinAccepted { keep_index, active } => {
                self.on_rejoin_accepted(env.epoch, keep_index, active)
            }
            PeerMsg::Unpair if self.role == Role::Standalone && self.zombie_to_notify => {
                // The old active left the pair (removeStandby on the zombie): stop telling it.
                self.zombie_to_notify = false;
                self.event(Event::PeerIgnored {
                    kind: "Unpair",
                    reason: format!("the old active {} left the pair", self.peer_name()),
                });
            }
            PeerMsg::Unpair => self.unpair("the peer removed DR (removeStandby)"),
            other => {
                let reason = format!("not expected in role {} / {}", self.role, self.dr_state);
                self.event(Event::PeerIgnored {
                    kind: other.kind(),
                    reason,
                });
            }
        }
    }

    /// Answers a refused pairing step on the link it came in on, echoing its token.
    fn refuse_on_link(
        &mut self,
        link: PeerLinkId,
        pair_id: Option<PairId>,
        token: u128,
        reason: String,
    ) {
        let msg = PeerEnvelope {
            from: self.me.uuid,
            pair_id,
            epoch: self.epoch,
            body: PeerMsg::Refused {
                reason,
                in_reply_to: Some(token),
            },
        };
        self.out(Output::ReplyPeer { link, msg });
    }

    /// Refuses a pairing step that passed admission but not its own checks.
    fn refuse_pairing(
        &mut self,
        link: PeerLinkId,
        from: PeerIdentity,
        kind: &'static str,
        pair_id: Option<PairId>,
        token: u128,
        reason: String,
    ) {
        self.refuse_on_link(link, pair_id, token, reason.clone());
        self.event(Event::PeerIgnored { kind, reason });
        self.event(Event::PeerRefused {
            link,
            from,
            kind,
            reason: PeerRefusal::PairingRefused,
        });
    }

    fn peer_name(&self) -> String {
        self.peer.as_ref().map_or_else(
            || "nobody".into(),
            |p| format!("{} ({})", p.name, p.peer_address),
        )
    }

    /// Tells the peer (the old active) that this server holds its epoch, with the proof.
    fn send_new_epoch(&mut self) {
        let active = self.me.clone();
        let proof = self
            .epoch_proof
            .clone()
            .filter(|p| p.claim.epoch == self.epoch && p.claim.holder == self.me.uuid);
        self.send_peer(PeerMsg::NewEpoch { active, proof });
    }

    /// Whether `proof` shows that this server's pinned peer holds its epoch:
    /// the signature verifies against the key pinned at pairing. Each proof
    /// is verified once: a valid one is kept (`epoch_proof`), a forged one
    /// remembered by digest.
    fn proof_verdict(&mut self, proof: &EpochProof) -> Result<(), String> {
        if self.epoch_proof.as_deref() == Some(proof) {
            return Ok(());
        }
        let claim = &proof.claim;
        let Some(pin) = self.peer_identity.as_ref() else {
            return Err("this server has no pinned peer to check it against".into());
        };
        let peer_uuid = self.peer.as_ref().map(|p| p.uuid);
        if Some(claim.pair_id) != self.pair_id
            || Some(claim.holder) != peer_uuid
            || claim.holder_name != pin.name
        {
            return Err(format!(
                "it names holder `{}` ({:032x}) of pair {:032x}, not this server's peer {}",
                claim.holder_name,
                claim.holder,
                claim.pair_id,
                self.peer_name()
            ));
        }
        if let Some(why) = proof.shape_error() {
            return Err(why);
        }
        // The claim this server already verified, under another signature
        // (ECDSA signatures are malleable): nothing more to learn from it.
        if self
            .epoch_proof
            .as_ref()
            .is_some_and(|held| held.claim == *claim)
        {
            return Ok(());
        }
        if self.rejected_proofs.iter().any(|r| **r == *proof) {
            return Err("the same forged proof was refused before".into());
        }
        if self.keys.verify(&pin.public_key, proof) {
            return Ok(());
        }
        if self.rejected_proofs.len() >= MAX_REJECTED_PROOFS {
            self.rejected_proofs.pop_front();
        }
        self.rejected_proofs.push_back(Arc::new(proof.clone()));
        Err(format!(
            "its signature does not verify against the pinned key of {pin}"
        ))
    }

    /// A higher epoch of our pair exists: unless we hold it, we are a zombie from now on.
    fn learn_epoch(
        &mut self,
        epoch: Epoch,
        redirect_edge: Option<String>,
        source: String,
        proof: Option<Arc<EpochProof>>,
    ) {
        self.highest_epoch_seen = self.highest_epoch_seen.max(epoch);
        if epoch <= self.epoch {
            return;
        }
        if let Some(p) = proof.filter(|p| p.claim.epoch == epoch) {
            if self
                .epoch_proof
                .as_ref()
                .is_none_or(|have| have.claim.epoch < epoch)
            {
                self.epoch_proof = Some(p);
            }
        }
        if self.role == Role::Zombie {
            if self.fenced_by.is_none_or(|f| f < epoch) {
                self.fenced_by = Some(epoch);
                if redirect_edge.is_some() {
                    self.redirect_edge = redirect_edge;
                }
            }
            return;
        }
        if self.cfg.mutant == Mutant::NoEpochFencing {
            return;
        }
        self.fenced_by = Some(epoch);
        if redirect_edge.is_some() {
            self.redirect_edge = redirect_edge;
        }
        self.replica = None;
        self.demotion = None;
        self.snapshot_rx = None;
        if let Some(p) = self.promotion.take() {
            let why = format!("epoch {epoch} already exists ({source}); this server is fenced");
            self.reply(
                p.req,
                Err(self.wrong_state("disasterRecovery/promoteStandbyToActive", why)),
            );
        }
        self.out(Output::CancelTimer(Timer::StandbyGrace));
        self.event(Event::Fenced {
            epoch,
            learned_from: source.clone(),
        });
        self.transition(
            Role::Zombie,
            DrState::Zombie,
            format!("fenced: epoch {epoch} learned from {source}"),
        );
        self.fail_pending(&format!(
            "this server was fenced by epoch {epoch}; the write may still exist on the promoted \
             server if it was replicated before the promotion: check there with configuration/get"
        ));
    }

    fn send_pair(&mut self) {
        let (Some(token), Some(peer)) = (self.pairing_token, self.peer.clone()) else {
            return;
        };
        let m = PeerMsg::Pair {
            token,
            standby_uuid: peer.uuid,
            active: self.me.clone(),
            policy: self.policy,
        };
        self.send_peer(m);
    }

    fn send_join(&mut self) {
        let Some(token) = self.pairing_token else {
            return;
        };
        let m = PeerMsg::Join {
            token,
            standby: self.me.clone(),
        };
        self.send_peer(m);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_pair(
        &mut self,
        link: PeerLinkId,
        from: PeerIdentity,
        pair_id: Option<PairId>,
        epoch: Epoch,
        token: u128,
        standby_uuid: ServerId,
        active: ServerInfo,
        policy: OnStandbyLoss,
    ) {
        // A repeat of the pairing we already accepted.
        if self.role == Role::Standby
            && pair_id.is_some()
            && pair_id == self.pair_id
            && self.peer_identity.as_ref() == Some(&from)
        {
            if self.dr_state == DrState::StandbyConfiguring && self.marks.is_empty() {
                self.send_pair_accepted(token);
            }
            return;
        }
        let joining = self.join_target.then(|| self.peer.as_ref().map(|p| p.uuid));
        let refuse = if self.role != Role::Standby || self.dr_state != DrState::StandbyCandidate {
            Some(format!(
                "{} is {} / {}, not a prepared standby (run prepareForStandby on it first)",
                self.me.name, self.role, self.dr_state
            ))
        } else if standby_uuid != self.me.uuid {
            Some(format!(
                "standbyUuid {standby_uuid:032x} does not match this server's vcoUuid {:032x}",
                self.me.uuid
            ))
        } else if self.pairing_token != Some(token) {
            Some("pairingToken does not match the one prepareForStandby issued".to_string())
        } else if pair_id.is_none() {
            Some("pairing without a pairId".to_string())
        } else if active.name != from.name {
            Some(format!(
                "the pairing names active `{}` but its certificate is `{}`",
                active.name, from.name
            ))
        } else if joining.is_some_and(|uuid| uuid != Some(active.uuid)) {
            Some(format!(
                "active {:032x} is not the one named in the replication blob",
                active.uuid
            ))
        } else {
            None
        };
        if let Some(reason) = refuse {
            self.refuse_pairing(link, from, "Pair", pair_id, token, reason);
            return;
        }
        self.pair_id = pair_id;
        self.epoch = epoch;
        self.highest_epoch_seen = self.highest_epoch_seen.max(epoch);
        self.peer = Some(active);
        self.peer_identity = Some(from);
        self.epoch_proof = None;
        self.policy = policy;
        self.join_target = false;
        self.synced = false;
        self.active_heard = true;
        self.active_missed_ticks = 0;
        self.transition(
            Role::Standby,
            DrState::StandbyConfiguring,
            format!(
                "paired with active {}, certificate {}",
                self.peer_name(),
                self.peer_identity
                    .as_ref()
                    .map_or_else(String::new, |i| i.to_string())
            ),
        );
        // The token is echoed in `PairAccepted`, then forgotten.
        self.staged_after
            .push(AfterDurable::SendPairAccepted(token));
        self.pairing_token = None;
    }

    fn send_pair_accepted(&mut self, token: u128) {
        let standby = self.me.clone();
        self.send_peer(PeerMsg::PairAccepted { standby, token });
    }

    fn on_join(&mut self, link: PeerLinkId, from: PeerIdentity, token: u128, standby: ServerInfo) {
        let refuse = if self.role != Role::Standalone || self.pairing_token != Some(token) {
            Some(format!(
                "{} has no matching replication blob outstanding (run getReplicationBlob on it)",
                self.me.name
            ))
        } else if standby.name != from.name {
            Some(format!(
                "the join names standby `{}` but its certificate is `{}`",
                standby.name, from.name
            ))
        } else {
            None
        };
        if let Some(reason) = refuse {
            self.refuse_pairing(link, from, "Join", None, token, reason);
            return;
        }
        self.begin_configure(standby, token);
        self.peer_identity = Some(from);
        self.staged_after.push(AfterDurable::SendPair);
    }

    fn begin_configure(&mut self, standby: ServerInfo, token: u128) {
        self.pair_id = Some(self.rng.next_u128().max(1));
        self.peer = Some(standby);
        // A new pairing: whoever was pinned before is not the new standby.
        self.peer_identity = None;
        self.epoch_proof = None;
        self.zombie_to_notify = false;
        self.pairing_token = Some(token);
        self.policy = self.cfg.on_standby_loss;
        self.replica = Some(Replica::new(true, self.log.last_index()));
        self.transition(
            Role::Active,
            DrState::ActiveConfiguring,
            format!("configuring replication to {}", self.peer_name()),
        );
    }

    fn on_pair_accepted(&mut self, from: PeerIdentity, standby: ServerInfo) {
        if self.role != Role::Active || self.dr_state != DrState::ActiveConfiguring {
            return;
        }
        let expected = self.peer.as_ref().map(|p| p.uuid);
        let pinned_other = self.peer_identity.as_ref().is_some_and(|pin| *pin != from);
        if Some(standby.uuid) != expected || standby.name != from.name || pinned_other {
            let reason = format!(
                "pairing accepted by {} `{}` ({:032x}), which is not the standby configured ({})",
                if standby.name == from.name {
                    "server"
                } else {
                    "a certificate not matching its claim"
                },
                from.name,
                standby.uuid,
                self.peer_name()
            );
            self.event(Event::PeerIgnored {
                kind: "PairAccepted",
                reason,
            });
            return;
        }
        self.peer = Some(standby);
        self.peer_identity = Some(from);
        self.pairing_token = None;
        self.on_standby_heard();
        self.transition(
            Role::Active,
            DrState::ActiveWaitStandby,
            format!(
                "standby {} accepted the pairing; pinned certificate {}",
                self.peer_name(),
                self.peer_identity
                    .as_ref()
                    .map_or_else(String::new, |i| i.to_string())
            ),
        );
        self.replicate();
    }

    fn on_refused(&mut self, reason: String) {
        self.event(Event::PeerIgnored {
            kind: "Refused",
            reason: reason.clone(),
        });
        if self.role == Role::Active && self.dr_state == DrState::ActiveConfiguring {
            self.unpair_local(&format!("pairing refused by the standby: {reason}"));
        } else if self.role == Role::Standby
            && self.dr_state == DrState::StandbyCandidate
            && self.join_target
        {
            self.join_target = false;
            self.failure = Some(format!(
                "transitionToStandby refused by the active: {reason}"
            ));
        } else if self.role == Role::Zombie && self.rejoin_requested {
            self.rejoin_requested = false;
            self.failure = Some(format!(
                "rejoinAsStandby refused by {}: {reason}",
                self.peer_name()
            ));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_snapshot_chunk(
        &mut self,
        epoch: Epoch,
        index: Index,
        snapshot_epoch: Epoch,
        chunk: u32,
        last: bool,
        docs: Vec<(String, Doc)>,
        sample_seq: Vec<(ClientId, u64)>,
        epoch_starts: Vec<(Epoch, Index)>,
        config_index: Index,
    ) {
        if self.role != Role::Standby
            || epoch != self.epoch
            || self.dr_state == DrState::StandbyCandidate
        {
            return;
        }
        self.on_active_heard();
        // A snapshot of a point this standby already holds (a restarted active
        // probing from scratch): acknowledge it without going back in time.
        let covered = self.synced
            && self.snapshot_rx.is_none()
            && (index <= self.applied.index || self.log.epoch_at(index) == Some(snapshot_epoch));
        if covered && index <= self.durable_index {
            self.send_peer(PeerMsg::SnapshotAck { index, chunk });
            if last {
                let durable_index = self.durable_index;
                self.send_peer(PeerMsg::AppendAck {
                    durable_index,
                    ok: true,
                });
            }
            return;
        }
        if chunk == 0
            && self
                .snapshot_rx
                .as_ref()
                .is_none_or(|rx| rx.snapshot.index != index || rx.next > 1)
        {
            let snapshot = Snapshot {
                index,
                epoch: snapshot_epoch,
                ..Snapshot::default()
            };
            self.snapshot_rx = Some(SnapshotRx { snapshot, next: 0 });
        }
        let Some(rx) = self.snapshot_rx.as_mut() else {
            return;
        };
        if rx.snapshot.index != index {
            return;
        }
        if chunk < rx.next {
            // A repeat of a chunk we already have: acknowledge it again.
            if !last {
                self.send_peer(PeerMsg::SnapshotAck { index, chunk });
            }
            return;
        }
        if chunk > rx.next {
            return;
        }
        rx.snapshot.docs.extend(docs);
        rx.next += 1;
        if !last {
            self.send_peer(PeerMsg::SnapshotAck { index, chunk });
            return;
        }
        // `snapshot_rx` was just checked to be `Some`.
        let mut rx = self.snapshot_rx.take().expect("checked");
        rx.snapshot.sample_seq = sample_seq.into_iter().collect();
        rx.snapshot.epoch_starts = epoch_starts;
        rx.snapshot.config_index = config_index;
        let snap = rx.snapshot;
        self.fail_pending("replaced by a snapshot");
        self.log = Log::starting_after(snap.index, snap.epoch);
        self.durable_index = snap.index;
        self.pending_sample_seq = snap.sample_seq.clone();
        self.applied = snap.clone();
        self.storage_compacted_below = snap.index;
        self.staged.push(PersistOp::InstallSnapshot(snap));
        self.synced = true;
        if self.dr_state != DrState::StandbySync {
            self.transition(
                Role::Standby,
                DrState::StandbySync,
                format!("snapshot at index {index} installed"),
            );
        }
        self.staged_after
            .push(AfterDurable::AckSnapshot { index, chunk });
    }

    fn on_append(
        &mut self,
        epoch: Epoch,
        prev_index: Index,
        prev_epoch: Epoch,
        entries: Vec<Entry>,
        commit_index: Index,
        active_durable: Index,
    ) {
        if self.role != Role::Standby
            || epoch != self.epoch
            || self.dr_state == DrState::StandbyCandidate
        {
            return;
        }
        self.on_active_heard();
        if self.snapshot_rx.is_some() || !self.synced {
            return;
        }
        let last = self.log.last_index();
        if prev_index > last {
            let durable_index = self.durable_index.min(last);
            self.send_peer(PeerMsg::AppendAck {
                durable_index,
                ok: false,
            });
            return;
        }
        let base = self.log.base_index();
        let mut entries = entries;
        let mut prev = (prev_index, prev_epoch);
        if prev_index < base {
            // Entries at or below our window's base are committed and identical.
            entries.retain(|e| e.index > base);
            prev = (base, self.log.epoch_at(base).unwrap_or(0));
        }
        if entries.first().is_some_and(|e| e.index != prev.0 + 1) {
            return;
        }
        if self.log.epoch_at(prev.0) != Some(prev.1) {
            let durable_index = self.applied.index;
            self.send_peer(PeerMsg::AppendAck {
                durable_index,
                ok: false,
            });
            return;
        }
        for e in entries {
            match self.log.epoch_at(e.index) {
                Some(ep) if ep == e.epoch => continue,
                Some(_) => {
                    let at = e.index - 1;
                    if at < self.applied.index {
                        self.event(Event::PeerIgnored {
                            kind: "Append",
                            reason: format!("conflicts with committed entry {}", e.index),
                        });
                        return;
                    }
                    self.log.truncate_after(at);
                    self.durable_index = self.durable_index.min(at);
                    self.staged.push(PersistOp::TruncateAfter(at));
                    self.stage_append(e);
                }
                None => self.stage_append(e),
            }
        }
        for e in self.log.iter_after(self.applied.index) {
            if let Op::Samples { client, samples } = &e.op {
                if let Some(last) = samples.last() {
                    let seq = self.pending_sample_seq.entry(client.clone()).or_insert(0);
                    *seq = (*seq).max(last.seq);
                }
            }
        }
        let new_commit = commit_index.min(self.log.last_index());
        self.apply_upto(new_commit);
        let last = self.log.last_index();
        if last >= active_durable && self.dr_state == DrState::StandbySync {
            self.transition(
                Role::Standby,
                DrState::StandbyRunning,
                format!("caught up with the active at index {last}"),
            );
        }
        if self.durable_index >= last
            && !self
                .staged
                .iter()
                .any(|o| matches!(o, PersistOp::Append(_)))
        {
            let durable_index = self.durable_index;
            self.send_peer(PeerMsg::AppendAck {
                durable_index,
                ok: true,
            });
        }
    }

    // ---------------------------------------------------------------- promotion

    fn on_demote_request(&mut self, new_epoch: Epoch) {
        if self.role == Role::Zombie && self.fenced_by == Some(new_epoch) {
            self.send_demote_granted();
            return;
        }
        if self.role != Role::Active || new_epoch != self.epoch + 1 {
            let reason = format!(
                "cannot demote for epoch {new_epoch}: this server is {} / {} at epoch {}",
                self.role, self.dr_state, self.epoch
            );
            self.send_peer(PeerMsg::Refused {
                reason,
                in_reply_to: None,
            });
            return;
        }
        if self.demotion.is_none() {
            let resume = self.dr_state;
            self.demotion = Some(Demotion {
                new_epoch,
                ticks: 0,
                resume,
            });
            self.transition(
                Role::Active,
                DrState::PendingActiveDemotion,
                "planned switchover requested by the standby".into(),
            );
        }
        self.check_demotion_ready();
    }

    /// Demote once every entry is durable here and on the standby.
    fn check_demotion_ready(&mut self) {
        let Some(d) = &self.demotion else { return };
        let last = self.log.last_index();
        let standby_has_all = self.replica.as_ref().is_some_and(|r| r.match_index >= last);
        let skip = self.cfg.mutant == Mutant::PromoteWithoutCatchup;
        if !(self.durable_index >= last && (standby_has_all || skip)) {
            return;
        }
        let new_epoch = d.new_epoch;
        self.demotion = None;
        self.fenced_by = Some(new_epoch);
        self.highest_epoch_seen = self.highest_epoch_seen.max(new_epoch);
        self.redirect_edge = self.peer.as_ref().map(|p| p.edge_address.clone());
        self.replica = None;
        self.out(Output::CancelTimer(Timer::StandbyGrace));
        self.transition(
            Role::Zombie,
            DrState::Zombie,
            format!("planned switchover: handed over at index {last} to epoch {new_epoch}"),
        );
        self.fail_pending("planned switchover: this server is now a zombie");
        self.staged_after.push(AfterDurable::GrantDemotion);
    }

    fn send_demote_granted(&mut self) {
        let Some(new_epoch) = self.fenced_by else {
            return;
        };
        let (last_index, last_epoch) = (self.log.last_index(), self.log.last_epoch());
        self.send_peer(PeerMsg::DemoteGranted {
            new_epoch,
            last_index,
            last_epoch,
        });
    }

    fn on_demote_granted(&mut self, new_epoch: Epoch, last_index: Index, last_epoch: Epoch) {
        let Some(p) = self.promotion.as_mut() else {
            return;
        };
        if !p.planned || p.granted_last.is_some() || new_epoch != self.epoch + 1 {
            return;
        }
        let has_all = self.durable_index >= last_index
            && self
                .log
                .epoch_at(last_index)
                .is_none_or(|e| e == last_epoch);
        if !has_all && self.cfg.mutant != Mutant::PromoteWithoutCatchup {
            // Cannot happen when the active waited for our durable ack; refuse loudly.
            let (req, resume) = (p.req, p.resume);
            self.promotion = None;
            let why = format!(
                "the old active handed over index {last_index}, but only {} is durable here; promote again \
                 (disaster promotion) once you have checked the old active",
                self.durable_index
            );
            self.transition(
                Role::Standby,
                resume,
                format!("planned switchover abandoned: {why}"),
            );
            self.reply(req, Err(CommandError::SwitchoverAbandoned(why)));
            return;
        }
        p.granted_last = Some((last_index, last_epoch));
        self.begin_new_epoch();
    }

    /// Writes the first entry of `epoch + 1`; promotion finishes once it is durable.
    fn begin_new_epoch(&mut self) {
        self.epoch += 1;
        self.highest_epoch_seen = self.highest_epoch_seen.max(self.epoch);
        // The proof goes to disk with the epoch's first entry (one commit).
        if let Some(pair_id) = self.pair_id {
            self.epoch_proof = Some(Arc::new(self.keys.prove(EpochClaim {
                pair_id,
                epoch: self.epoch,
                holder: self.me.uuid,
                holder_name: self.me.name.clone(),
                holder_edge_address: self.me.edge_address.clone(),
            })));
        }
        // Everything this standby holds becomes committed in the new epoch.
        let last = self.log.last_index();
        self.apply_upto(last);
        self.append_op(Op::EpochStart);
        self.staged_after.push(AfterDurable::FinishPromotion);
    }

    fn finish_promotion(&mut self) {
        let Some(p) = self.promotion.take() else {
            return;
        };
        let epoch = self.epoch;
        let how = if p.planned {
            "planned switchover"
        } else {
            "disaster failover"
        };
        self.zombie_to_notify = true;
        self.snapshot_rx = None;
        self.transition(
            Role::Standalone,
            DrState::StandbyPromoted,
            format!("promoted by {how} to epoch {epoch}"),
        );
        self.send_new_epoch();
        self.advance_commit();
        self.reply(
            p.req,
            Ok(Reply::Promoted {
                epoch,
                data_loss_bound: p.data_loss_bound,
            }),
        );
    }

    fn on_rejoin(
        &mut self,
        epoch: Epoch,
        last_index: Index,
        last_epoch: Epoch,
        standby: ServerInfo,
    ) {
        // Admission proved the sender is the pinned peer; its claims about
        // itself must still agree with the pin.
        let known = self.peer.as_ref().is_some_and(|p| p.uuid == standby.uuid)
            && self
                .peer_identity
                .as_ref()
                .is_some_and(|pin| pin.name == standby.name);
        if !known || epoch >= self.epoch || !self.role.is_writer() {
            let reason = format!(
                "{} cannot take {} back: it is {} / {} at epoch {} and its peer is {}",
                self.me.name,
                standby.name,
                self.role,
                self.dr_state,
                self.epoch,
                self.peer_name()
            );
            // To the pinned peer's known address, never to one the message names.
            self.send_peer(PeerMsg::Refused {
                reason,
                in_reply_to: None,
            });
            return;
        }
        // Our log agrees with the zombie's up to the last index of the zombie's
        // last epoch that we also hold; after that the zombie diverged.
        let starts_after_its_epoch = self
            .applied
            .epoch_starts
            .iter()
            .copied()
            .chain(
                self.log
                    .iter_after(self.applied.index)
                    .filter(|e| e.op == Op::EpochStart)
                    .map(|e| (e.epoch, e.index)),
            )
            .filter(|(e, _)| *e > last_epoch)
            .map(|(_, start)| start - 1)
            .min();
        let ours = starts_after_its_epoch.unwrap_or(self.log.last_index());
        let keep_index = last_index.min(ours);
        // Addresses stay those learned at pairing (defence in depth: even
        // a wrongly admitted Rejoin could not redirect replication).
        if self
            .peer
            .as_ref()
            .is_some_and(|p| p.peer_address != standby.peer_address)
        {
            self.event(Event::PeerIgnored {
                kind: "Rejoin",
                reason: format!(
                    "names peer address {}; this server keeps {} from the pairing",
                    standby.peer_address,
                    self.peer_name()
                ),
            });
        }
        self.zombie_to_notify = false;
        if self.role == Role::Standalone {
            self.replica = Some(Replica::new(true, self.log.last_index()));
            self.transition(
                Role::Active,
                DrState::ActiveWaitStandby,
                format!("old active {} rejoins as standby", self.peer_name()),
            );
        } else if let Some(r) = self.replica.as_mut() {
            // A repeated request: start the copy again.
            r.need_snapshot = true;
            r.snapshot = None;
        }
        let active = self.me.clone();
        self.send_peer(PeerMsg::RejoinAccepted { keep_index, active });
        self.on_standby_heard();
        self.replicate();
    }

    fn on_rejoin_accepted(&mut self, epoch: Epoch, keep_index: Index, active: ServerInfo) {
        if self.role != Role::Zombie || !self.rejoin_requested {
            return;
        }
        if self
            .peer_identity
            .as_ref()
            .is_some_and(|pin| pin.name != active.name)
        {
            let reason = format!(
                "the acceptance names active `{}`, not the pinned peer {}",
                active.name,
                self.peer_name()
            );
            self.event(Event::PeerIgnored {
                kind: "RejoinAccepted",
                reason,
            });
            return;
        }
        let last = self.log.last_index();
        if keep_index < last {
            let reason = format!(
                "diverged from {} at rejoin: not present on the promoted server (epoch {epoch})",
                active.name
            );
            self.staged.push(PersistOp::Archive {
                after: keep_index,
                reason,
            });
            self.event(Event::DivergenceArchived {
                after: keep_index,
                entries_upto: last,
            });
        }
        if keep_index >= self.log.base_index() && keep_index < last {
            self.log.truncate_after(keep_index);
            self.durable_index = self.durable_index.min(keep_index);
        }
        self.rejoin_requested = false;
        self.epoch = epoch;
        self.highest_epoch_seen = self.highest_epoch_seen.max(epoch);
        self.fenced_by = None;
        self.redirect_edge = None;
        // `active` is the pinned peer (admission, name checked above); its
        // addresses stay those learned at pairing.
        self.synced = false;
        self.active_heard = true;
        self.active_missed_ticks = 0;
        self.transition(
            Role::Standby,
            DrState::StandbyConfiguring,
            format!("rejoined {} as standby at epoch {epoch}", self.peer_name()),
        );
    }

    // ---------------------------------------------------------------- operator commands

    fn on_command(&mut self, req: RequestId, cmd: Command) {
        let method = cmd.method();
        if let Err(e) = self.gate(cmd.kind(), method) {
            self.reply(req, Err(e));
            return;
        }
        let result = match cmd {
            Command::PrepareForStandby => self.cmd_prepare(req),
            Command::ConfigureActive {
                standby_address,
                standby_uuid,
                pairing_token,
            } => self.cmd_configure(req, standby_address, standby_uuid, pairing_token),
            Command::GetReplicationBlob => self.cmd_blob(req),
            Command::TransitionToStandby {
                active_address,
                active_uuid,
                pairing_token,
            } => self.cmd_transition_to_standby(req, active_address, active_uuid, pairing_token),
            Command::Promote { force } => self.cmd_promote(req, force),
            Command::DemoteActive { force } => self.cmd_demote(req, force),
            Command::RemoveStandby { force } => self.cmd_remove_standby(req, force),
            Command::Rejoin => self.cmd_rejoin(req),
            Command::Put { key, value } => self.cmd_write(req, key, Some(value)),
            Command::Delete { key } => self.cmd_write(req, key, None),
            Command::Get { key } => match self.applied.docs.get(&key) {
                Some(d) => Ok(Some(Reply::Doc {
                    key,
                    value: d.value.clone(),
                    version: d.version,
                })),
                None => Err(CommandError::NotFound(key)),
            },
            Command::List => Ok(Some(Reply::List(
                self.applied
                    .docs
                    .iter()
                    .map(|(k, d)| (k.clone(), d.version))
                    .collect(),
            ))),
        };
        match result {
            Ok(Some(r)) => self.reply(req, Ok(r)),
            Ok(None) => {}
            Err(e) => self.reply(req, Err(e)),
        }
    }

    fn cmd_prepare(&mut self, req: RequestId) -> Result<Option<Reply>, CommandError> {
        const M: &str = "disasterRecovery/prepareForStandby";
        if self.role == Role::Standby && self.dr_state == DrState::StandbyCandidate {
            if let Some(t) = self.pairing_token.filter(|_| !self.join_target) {
                return Ok(Some(Reply::Prepared {
                    vco_uuid: self.me.uuid,
                    pairing_token: t,
                }));
            }
        }
        if self.role != Role::Standalone {
            return Err(
                self.wrong_state(M, "only a STANDALONE server can be prepared as a standby")
            );
        }
        let token = self.rng.next_u128().max(1);
        self.pairing_token = Some(token);
        self.pair_id = None;
        self.peer = None;
        self.peer_identity = None;
        self.epoch_proof = None;
        self.join_target = false;
        self.transition(
            Role::Standby,
            DrState::StandbyCandidate,
            "prepared for standby".into(),
        );
        self.staged_after.push(AfterDurable::Reply(
            req,
            Reply::Prepared {
                vco_uuid: self.me.uuid,
                pairing_token: token,
            },
        ));
        Ok(None)
    }

    fn cmd_configure(
        &mut self,
        req: RequestId,
        address: String,
        uuid: ServerId,
        token: u128,
    ) -> Result<Option<Reply>, CommandError> {
        const M: &str = "disasterRecovery/configureActiveForReplication";
        if self.role != Role::Standalone {
            return Err(self.wrong_state(
                M,
                "only a STANDALONE server can be configured as active; removeStandby first",
            ));
        }
        if address.trim().is_empty() {
            return Err(CommandError::InvalidParam {
                param: "standbyList[0].standbyAddress".into(),
                why: "empty".into(),
            });
        }
        if address == self.me.peer_address || uuid == self.me.uuid {
            return Err(CommandError::InvalidParam {
                param: "standbyList[0]".into(),
                why: "names this server itself; give the standby's peer_listen address and vcoUuid"
                    .into(),
            });
        }
        let standby = ServerInfo {
            uuid,
            name: String::new(),
            peer_address: address,
            edge_address: String::new(),
            admin_address: String::new(),
        };
        self.begin_configure(standby, token);
        self.staged_after.push(AfterDurable::SendPair);
        // `begin_configure` set the pair id.
        let pair_id = self.pair_id.expect("set by begin_configure");
        self.staged_after
            .push(AfterDurable::Reply(req, Reply::Configured { pair_id }));
        Ok(None)
    }

    fn cmd_blob(&mut self, req: RequestId) -> Result<Option<Reply>, CommandError> {
        if self.role != Role::Standalone {
            return Err(self.wrong_state(
                "disasterRecovery/getReplicationBlob",
                "only a STANDALONE server hands out a replication blob",
            ));
        }
        let token = self.rng.next_u128().max(1);
        self.pairing_token = Some(token);
        self.staged_after.push(AfterDurable::Reply(
            req,
            Reply::Blob {
                active: self.me.clone(),
                pairing_token: token,
            },
        ));
        Ok(None)
    }

    fn cmd_transition_to_standby(
        &mut self,
        req: RequestId,
        address: String,
        uuid: ServerId,
        token: u128,
    ) -> Result<Option<Reply>, CommandError> {
        if self.role != Role::Standalone {
            return Err(self.wrong_state(
                "disasterRecovery/transitionToStandby",
                "only a STANDALONE server can become a standby",
            ));
        }
        self.pairing_token = Some(token);
        self.pair_id = None;
        self.peer_identity = None;
        self.epoch_proof = None;
        self.peer = Some(ServerInfo {
            uuid,
            name: String::new(),
            peer_address: address,
            edge_address: String::new(),
            admin_address: String::new(),
        });
        self.join_target = true;
        self.transition(
            Role::Standby,
            DrState::StandbyCandidate,
            format!("joining active {}", self.peer_name()),
        );
        self.staged_after.push(AfterDurable::SendJoin);
        self.staged_after
            .push(AfterDurable::Reply(req, Reply::Accepted));
        Ok(None)
    }

    fn cmd_promote(&mut self, req: RequestId, force: bool) -> Result<Option<Reply>, CommandError> {
        const M: &str = "disasterRecovery/promoteStandbyToActive";
        if self.role != Role::Standby {
            return Err(self.wrong_state(M, "only a STANDBY can be promoted"));
        }
        if self.promotion.is_some() {
            return Err(self.wrong_state(M, "a promotion is already in progress"));
        }
        if !self.synced {
            return Err(self.wrong_state(
                M,
                "this standby never completed its initial copy; promoting it would lose data",
            ));
        }
        let resume = self.dr_state;
        match self.dr_state {
            DrState::FailureGetActiveStatus => {
                let bound = match self.policy {
                    OnStandbyLoss::Block => Some(0),
                    OnStandbyLoss::Degrade => None,
                };
                self.promotion = Some(Promotion {
                    req,
                    planned: false,
                    ticks: 0,
                    granted_last: None,
                    data_loss_bound: bound,
                    resume,
                });
                self.transition(
                    Role::Standby,
                    DrState::PendingStandbyPromotion,
                    "disaster failover requested by the operator".into(),
                );
                self.begin_new_epoch();
            }
            DrState::StandbyRunning | DrState::StandbySync if force => {
                self.promotion = Some(Promotion {
                    req,
                    planned: true,
                    ticks: 0,
                    granted_last: None,
                    data_loss_bound: Some(0),
                    resume,
                });
                self.transition(
                    Role::Standby,
                    DrState::PendingStandbyPromotion,
                    "planned switchover requested by the operator".into(),
                );
                let new_epoch = self.epoch + 1;
                self.send_peer(PeerMsg::DemoteRequest { new_epoch });
            }
            DrState::StandbyRunning | DrState::StandbySync => {
                return Err(self.wrong_state(
                    M,
                    "the active is reachable; use force:true for a planned switchover (zero loss) \
                     or wait until the active is lost",
                ));
            }
            _ => return Err(self.wrong_state(M, "this standby is not ready to be promoted")),
        }
        Ok(None)
    }

    fn cmd_demote(&mut self, req: RequestId, force: bool) -> Result<Option<Reply>, CommandError> {
        const M: &str = "disasterRecovery/demoteActive";
        if self.role != Role::Active {
            return Err(self.wrong_state(M, "only an ACTIVE server can be demoted"));
        }
        let lag = self.replica.as_ref().map_or(u64::MAX, |r| {
            self.log.last_index().saturating_sub(r.match_index)
        });
        if !force && lag > 0 {
            return Err(self.wrong_state(
                M,
                format!("the standby lacks {lag} entries; demoting now would leave them only here. Use force:true to demote anyway"),
            ));
        }
        self.replica = None;
        self.demotion = None;
        self.redirect_edge = self.peer.as_ref().map(|p| p.edge_address.clone());
        self.out(Output::CancelTimer(Timer::StandbyGrace));
        self.transition(
            Role::Zombie,
            DrState::Zombie,
            format!("demoted by the operator (force = {force})"),
        );
        self.fail_pending("this server was demoted by the operator");
        self.staged_after
            .push(AfterDurable::Reply(req, Reply::Accepted));
        Ok(None)
    }

    fn cmd_remove_standby(
        &mut self,
        req: RequestId,
        force: bool,
    ) -> Result<Option<Reply>, CommandError> {
        const M: &str = "disasterRecovery/removeStandby";
        let why = match self.role {
            Role::Active | Role::Standby => {
                "DR removed by the operator (removeStandby)".to_string()
            }
            Role::Zombie => {
                // The way out of a fenced state. Refused while this server's
                // own view says another one holds a higher epoch of the pair
                // (proven, learned from the peer, or granted in a planned
                // switchover): leaving the pair would then make two writers.
                // A zombie made by demoteActive alone knows of no successor.
                let proven = self
                    .epoch_proof
                    .as_ref()
                    .filter(|p| p.claim.epoch > self.epoch && p.claim.holder != self.me.uuid);
                let holder = match (proven, self.fenced_by) {
                    (Some(p), _) => Some(format!(
                        "server `{}` ({}) provably holds epoch {} of this pair",
                        p.claim.holder_name, p.claim.holder_edge_address, p.claim.epoch
                    )),
                    (None, Some(e)) => Some(format!(
                        "epoch {e} of this pair exists (learned from, or handed over to, the peer {})",
                        self.peer_name()
                    )),
                    (None, None) => None,
                };
                if let (Some(holder), false) = (holder, force) {
                    return Err(self.wrong_state(
                        M,
                        format!(
                            "{holder}: leaving the pair now would make two writers. Rejoin it \
                             instead (rejoinAsStandby), or, only if that server is gone for good \
                             (or never completed its promotion), use force:true"
                        ),
                    ));
                }
                format!(
                    "zombie left the pair by removeStandby (force = {force}, fenced by epoch {}); \
                     it runs alone with its data",
                    self.fenced_by.unwrap_or(self.epoch)
                )
            }
            Role::Standalone => {
                return Err(self.wrong_state(M, "DR is not configured on this server"));
            }
        };
        self.send_peer(PeerMsg::Unpair);
        if self.role == Role::Zombie {
            self.leave_pair_as_zombie(&why);
        } else {
            self.unpair_local(&why);
        }
        self.staged_after
            .push(AfterDurable::Reply(req, Reply::Accepted));
        Ok(None)
    }

    fn unpair(&mut self, why: &str) {
        if matches!(self.role, Role::Active | Role::Standby) {
            self.unpair_local(why);
        }
    }

    fn unpair_local(&mut self, why: &str) {
        if let Some(p) = self.promotion.take() {
            self.reply(
                p.req,
                Err(self.wrong_state("disasterRecovery/promoteStandbyToActive", why)),
            );
        }
        self.pair_id = None;
        self.peer = None;
        self.peer_identity = None;
        self.epoch_proof = None;
        self.pairing_token = None;
        self.replica = None;
        self.demotion = None;
        self.snapshot_rx = None;
        self.join_target = false;
        self.synced = false;
        self.zombie_to_notify = false;
        self.out(Output::CancelTimer(Timer::StandbyGrace));
        self.transition(Role::Standalone, DrState::Unconfigured, why.to_string());
        self.advance_commit();
    }

    /// A zombie leaves its pair (removeStandby): epochs count within a pair,
    /// so the higher one it learned no longer concerns it.
    fn leave_pair_as_zombie(&mut self, why: &str) {
        self.fenced_by = None;
        self.redirect_edge = None;
        self.rejoin_requested = false;
        self.highest_epoch_seen = self.epoch;
        self.unpair_local(why);
    }

    fn cmd_rejoin(&mut self, req: RequestId) -> Result<Option<Reply>, CommandError> {
        if self.role != Role::Zombie || self.peer.is_none() {
            return Err(self.wrong_state(
                "disasterRecovery/rejoinAsStandby",
                "only a ZOMBIE that knows its promoted peer can rejoin",
            ));
        }
        self.rejoin_requested = true;
        self.send_rejoin();
        self.reply(req, Ok(Reply::Accepted));
        Ok(None)
    }

    /// Refuses an append of about `size` bytes when the entries waiting to
    /// commit already hold `max_pending_bytes` (the standby is slow or lost):
    /// memory for uncommitted entries stays bounded in bytes, not only in count.
    fn pending_bytes_error(&self, size: usize) -> Option<CommandError> {
        let waiting = self.log.bytes_after(self.applied.index);
        (waiting + size as u64 > self.cfg.max_pending_bytes).then_some(CommandError::PendingBytes {
            waiting,
            limit: self.cfg.max_pending_bytes,
        })
    }

    fn send_rejoin(&mut self) {
        let m = PeerMsg::Rejoin {
            last_index: self.log.last_index(),
            last_epoch: self.log.last_epoch(),
            standby: self.me.clone(),
        };
        self.send_peer(m);
    }

    fn cmd_write(
        &mut self,
        req: RequestId,
        key: String,
        value: Option<Vec<u8>>,
    ) -> Result<Option<Reply>, CommandError> {
        if key.is_empty() || key.len() > 1024 {
            return Err(CommandError::InvalidParam {
                param: "key".into(),
                why: format!("{} bytes; give 1 to 1024", key.len()),
            });
        }
        if let Some(v) = &value {
            let limit = self.cfg.max_sample_batch_bytes();
            if v.len() > limit {
                return Err(CommandError::InvalidParam {
                    param: "value".into(),
                    why: format!("{} bytes is above the {limit} byte limit", v.len()),
                });
            }
        }
        if self.demotion.is_some() {
            return Err(CommandError::WritesBlocked(
                "a planned switchover is in progress; retry on the new active".into(),
            ));
        }
        if let Some(r) = &self.replica {
            if r.blocked {
                return Err(CommandError::WritesBlocked(
                    self.failure
                        .clone()
                        .unwrap_or_else(|| "standby lost".into()),
                ));
            }
        }
        if self.writes.len() >= self.cfg.max_pending_writes {
            return Err(CommandError::Overloaded {
                waiting: self.writes.len(),
                limit: self.cfg.max_pending_writes,
            });
        }
        let size = key.len() + value.as_ref().map_or(0, Vec::len);
        if let Some(e) = self.pending_bytes_error(size) {
            return Err(e);
        }
        let delete = value.is_none();
        if delete && !self.applied.docs.contains_key(&key) {
            return Err(CommandError::NotFound(key));
        }
        let op = match value {
            Some(value) => Op::Put {
                key: key.clone(),
                value,
            },
            None => Op::Delete { key: key.clone() },
        };
        let index = self.append_op(op);
        self.writes.push_back(PendingWrite {
            req,
            index,
            key,
            delete,
        });
        Ok(None)
    }

    // ---------------------------------------------------------------- edges

    fn on_edge(
        &mut self,
        reply_to: ReplyTo,
        client: ClientId,
        client_type: ClientType,
        msg: EdgeMsg,
    ) {
        match msg {
            EdgeMsg::Heartbeat(hb) => self.on_heartbeat(reply_to, client, client_type, hb),
            EdgeMsg::ConfigPull { .. } => {
                if let Err(e) = self.gate(RequestKind::EdgeConfigPull, "configPull") {
                    let m = self.refused_msg(e.to_string());
                    self.out(Output::ReplyEdge { reply_to, msg: m });
                    return;
                }
                let msg = ServerMsg::Config {
                    epoch: self.epoch,
                    version: self.applied.config_index,
                    docs: self
                        .applied
                        .docs
                        .iter()
                        .map(|(k, d)| (k.clone(), d.clone()))
                        .collect(),
                };
                self.out(Output::ReplyEdge { reply_to, msg });
            }
            EdgeMsg::Monitoring { samples } => self.on_samples(reply_to, client, samples),
        }
    }

    fn on_heartbeat(
        &mut self,
        reply_to: ReplyTo,
        client: ClientId,
        client_type: ClientType,
        hb: Heartbeat,
    ) {
        let mismatch = if hb.client_id != client {
            Some(format!(
                "heartbeat names client {:?} but the certificate says {client:?}",
                hb.client_id
            ))
        } else if hb.client_type != client_type {
            Some(format!(
                "heartbeat says {} but the certificate of {client:?} is a {} certificate",
                hb.client_type.as_str(),
                client_type.as_str()
            ))
        } else if hb
            .view
            .iter()
            .map(|v| v.address.len())
            .chain(hb.following.as_ref().map(String::len))
            .any(|n| n > MAX_CLIENT_TEXT_BYTES)
        {
            Some(format!(
                "heartbeat reports an address longer than {MAX_CLIENT_TEXT_BYTES} bytes"
            ))
        } else {
            None
        };
        if let Some(reason) = mismatch {
            self.event(Event::ClientRefused {
                client: client.clone(),
                reason: reason.clone(),
            });
            let m = self.refused_msg(reason);
            self.out(Output::ReplyEdge { reply_to, msg: m });
            return;
        }
        let forged = self.fence_from_heartbeat(&client, &hb);
        if let Some((claimed, why)) = &forged {
            self.event(Event::ForgedEpochClaim {
                client: client.clone(),
                claimed: *claimed,
                why: why.clone(),
            });
        }
        let forged = u64::from(forged.is_some());
        let now_ms = self.now.wall_ms;
        let seq = hb.seq;
        if let Some(c) = self.contacts.get_mut(&client) {
            c.client_type = hb.client_type;
            if c.view != hb.view {
                c.view = hb.view;
            }
            if c.following != hb.following {
                c.following = hb.following;
            }
            c.config_epoch = hb.config_epoch;
            c.config_version = hb.config_version;
            c.cached_samples = hb.cached_samples;
            c.dropped_samples = hb.dropped_samples;
            c.modified_ms = now_ms;
            c.forged_epoch_claims += forged;
        } else if self.contacts.len() < self.cfg.max_clients {
            let c = ClientContact {
                client_id: client.clone(),
                client_type: hb.client_type,
                view: hb.view,
                following: hb.following,
                config_epoch: hb.config_epoch,
                config_version: hb.config_version,
                cached_samples: hb.cached_samples,
                dropped_samples: hb.dropped_samples,
                modified_ms: now_ms,
                forged_epoch_claims: forged,
            };
            self.contacts.insert(client, c);
        } else {
            let reason = format!(
                "contact table full ({} clients); heartbeat answered but not recorded",
                self.cfg.max_clients
            );
            self.event(Event::ClientRefused { client, reason });
        }
        let active_address = self.active_edge_address();
        let redirect = if self.role == Role::Zombie {
            active_address.clone()
        } else {
            None
        };
        let msg = ServerMsg::HeartbeatReply(HeartbeatReply {
            seq,
            role: self.role,
            dr_state: self.dr_state,
            epoch: self.epoch,
            pair_id: self.pair_id,
            active_address,
            redirect,
            config_version: self.applied.config_index,
            // Not before the promotion is durable: a standby that crashes
            // first never held the epoch its proof would claim.
            proof: self
                .epoch_proof
                .clone()
                .filter(|_| self.role != Role::Standby),
        });
        self.out(Output::ReplyEdge { reply_to, msg });
    }

    /// Whether a proof `client` relays may cost a signature verification now:
    /// a client that relayed a forged claim gets one check per
    /// [`PROOF_RECHECK_MS`], and one outside a full contact table none.
    fn may_verify_proof_of(&mut self, client: &ClientId) -> Result<(), String> {
        let marked = match self.contacts.get(client) {
            Some(c) => c.forged_epoch_claims > 0,
            None if self.contacts.len() >= self.cfg.max_clients => {
                return Err(format!(
                    "the contact table is full ({} clients): proofs of clients outside it are not checked",
                    self.cfg.max_clients
                ));
            }
            None => false,
        };
        if !marked {
            return Ok(());
        }
        let now = self.now.mono_ms;
        let Some(limits) = self.client_limits_mut(client) else {
            return Err("too many clients tracked to check this one's proofs".into());
        };
        if limits
            .proof_checked_ms
            .is_some_and(|t| now < t.saturating_add(PROOF_RECHECK_MS))
        {
            return Err(format!(
                "this client relayed a forged epoch claim; its proofs are checked at most once per {} s",
                PROOF_RECHECK_MS / 1000
            ));
        }
        limits.proof_checked_ms = Some(now);
        Ok(())
    }

    /// Fencing through edges (SPEC §2): a heartbeat relays the highest epoch
    /// proof its edge holds, and a valid proof of a higher epoch of our pair
    /// fences this server. A view that claims a higher epoch without such a
    /// proof fences nobody: it is returned as `(claimed epoch, why)` to be
    /// counted and marked.
    fn fence_from_heartbeat(
        &mut self,
        client: &ClientId,
        hb: &Heartbeat,
    ) -> Option<(Epoch, String)> {
        let pair = self.pair_id?;
        let claimed = hb
            .view
            .iter()
            .filter(|v| v.pair_id == Some(pair) && v.role.is_some_and(Role::is_writer))
            .max_by_key(|v| v.epoch)?;
        if self.cfg.mutant == Mutant::UnprovenEpoch {
            // The bug this mutant plants: believing the claim itself.
            if claimed.epoch > self.epoch {
                let (epoch, address) = (claimed.epoch, claimed.address.clone());
                self.learn_epoch(
                    epoch,
                    Some(address.clone()),
                    format!("edge {client}'s view of {address}"),
                    None,
                );
            }
            return None;
        }
        let claimed = claimed.epoch;
        let mut proven = self.epoch;
        let relayed = hb
            .proof
            .as_ref()
            .filter(|p| p.claim.pair_id == pair && p.claim.epoch > self.epoch);
        if let Some(p) = relayed.filter(|p| self.epoch_proof.as_ref() == Some(*p)) {
            // The proof this server already holds (a zombie hears it from
            // every edge): nothing to verify or learn again.
            proven = p.claim.epoch;
        } else if let Some(p) = relayed {
            let verdict = match self.may_verify_proof_of(client) {
                Ok(()) => self.proof_verdict(p),
                Err(why) => Err(why),
            };
            if let Err(why) = verdict {
                return Some((p.claim.epoch, format!("epoch proof refused: {why}")));
            }
            proven = p.claim.epoch;
            let source = format!(
                "edge {client}, relaying the proof of `{}`",
                p.claim.holder_name
            );
            self.learn_epoch(
                p.claim.epoch,
                Some(p.claim.holder_edge_address.clone()),
                source,
                Some(p.clone()),
            );
        }
        (claimed > proven).then(|| {
            (
                claimed,
                format!("its view claims epoch {claimed} of this pair without a valid proof"),
            )
        })
    }

    /// The bounds one client's monitoring must keep (SPEC §4: an edge may
    /// send its own samples, and nothing lets it fill the servers): each
    /// sample at most `max_sample_bytes`, a batch at most one entry's worth,
    /// the uncommitted log within `max_pending_bytes`, and the client's rate
    /// within `max_sample_bytes_per_s`. Charges the batch when it passes.
    fn sample_limits_refusal(&mut self, client: &ClientId, samples: &[Sample]) -> Option<String> {
        let max = self.cfg.max_sample_bytes;
        if let Some(big) = samples.iter().find(|s| s.payload.len() > max) {
            return Some(format!(
                "sample {} has {} bytes, above monitoring.max_sample_bytes ({max}); it is never taken",
                big.seq,
                big.payload.len()
            ));
        }
        let bytes: usize = samples.iter().map(|s| s.payload.len() + 10).sum();
        let batch = self.cfg.max_sample_batch_bytes();
        if bytes > batch {
            return Some(format!(
                "a batch of {bytes} bytes is above the {batch} bytes one batch may hold; send fewer samples at once"
            ));
        }
        if let Some(e) = self.pending_bytes_error(bytes) {
            return Some(e.to_string());
        }
        let now = self.now.mono_ms;
        let rate = self.cfg.max_sample_bytes_per_s;
        let Some(limits) = self.client_limits_mut(client) else {
            return Some(format!(
                "{} clients are tracked already (edges.max_clients); retry later",
                self.cfg.max_clients
            ));
        };
        let refill = now.saturating_sub(limits.refilled_ms).saturating_mul(rate) / 1000;
        limits.sample_tokens = limits
            .sample_tokens
            .saturating_add(refill)
            .min(batch as u64);
        limits.refilled_ms = now;
        if (bytes as u64) > limits.sample_tokens {
            return Some(format!(
                "monitoring above {rate} bytes/s for this client (monitoring.max_sample_bytes_per_s); keep the samples and retry"
            ));
        }
        limits.sample_tokens -= bytes as u64;
        None
    }

    /// The limits of `client`, made on first use with a full sample bucket;
    /// `None` when `max_clients` clients are tracked already.
    fn client_limits_mut(&mut self, client: &ClientId) -> Option<&mut ClientLimits> {
        if !self.client_limits.contains_key(client) {
            if self.client_limits.len() >= self.cfg.max_clients {
                return None;
            }
            let limits = ClientLimits {
                sample_tokens: self.cfg.max_sample_batch_bytes() as u64,
                refilled_ms: self.now.mono_ms,
                proof_checked_ms: None,
            };
            self.client_limits.insert(client.clone(), limits);
        }
        self.client_limits.get_mut(client)
    }

    fn on_samples(&mut self, reply_to: ReplyTo, client: ClientId, samples: Vec<Sample>) {
        let refuse = match self.gate(RequestKind::MonitoringWrite, "monitoring") {
            Err(e) => Some(e.to_string()),
            Ok(()) if !self.takes_writes() => Some(
                "this server is not taking writes right now; keep the samples and retry".into(),
            ),
            Ok(()) if self.writes.len() + self.sample_acks.len() >= self.cfg.max_pending_writes => {
                Some("too many writes waiting; retry shortly".into())
            }
            Ok(()) if samples.windows(2).any(|w| w[1].seq <= w[0].seq) => {
                Some("samples are not in increasing seq order".into())
            }
            Ok(()) => self.sample_limits_refusal(&client, &samples),
        };
        if let Some(reason) = refuse {
            let m = self.refused_msg(reason);
            self.out(Output::ReplyEdge { reply_to, msg: m });
            return;
        }
        let Some(max_seq) = samples.last().map(|s| s.seq) else {
            let msg = ServerMsg::MonitoringAck {
                epoch: self.epoch,
                up_to_seq: 0,
            };
            self.out(Output::ReplyEdge { reply_to, msg });
            return;
        };
        let seen = self.pending_sample_seq.get(&client).copied().unwrap_or(0);
        let (fresh, dups): (Vec<Sample>, Vec<Sample>) =
            samples.into_iter().partition(|s| s.seq > seen);
        let total_dups = dups.len() as u64;
        if total_dups > 0 {
            // Counted by the I/O layer (metrics, monitoring/getSummary): a counter
            // here would make every re-delivery a new state of the machine.
            self.event(Event::SamplesDeduplicated {
                client: client.clone(),
                count: total_dups,
            });
        }
        if fresh.is_empty() {
            // All re-sent: acknowledge once what covers them is committed.
            let committed = self.applied.sample_seq.get(&client).copied().unwrap_or(0);
            if committed >= max_seq {
                let msg = ServerMsg::MonitoringAck {
                    epoch: self.epoch,
                    up_to_seq: max_seq,
                };
                self.out(Output::ReplyEdge { reply_to, msg });
            } else {
                let index = self.log.last_index();
                self.sample_acks.push_back(PendingSampleAck {
                    reply_to,
                    index,
                    up_to_seq: max_seq,
                });
            }
            return;
        }
        self.pending_sample_seq.insert(client.clone(), max_seq);
        let index = self.append_op(Op::Samples {
            client,
            samples: fresh,
        });
        self.sample_acks.push_back(PendingSampleAck {
            reply_to,
            index,
            up_to_seq: max_seq,
        });
    }
}
