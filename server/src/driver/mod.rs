//! The driver: owns the `vcodr-core` [`Server`], feeds it every input
//! (admin calls, peer and edge messages, timer expiries, durability
//! confirmations) and carries out its outputs. No protocol decision is made
//! here.
//!
//! The core sits behind one mutex, and whoever has an input runs it: the
//! admin connection's task, the transport's task that decoded an edge
//! request ([`Handle::edge_answerer`]; on the hub driver the hub itself), a
//! peer link's task, the storage thread after a commit, the timer task. Each
//! takes the lock, feeds the core, carries out what it output and lets go. No input waits in a queue for another
//! thread to pick it up: on this 2-core machine every such hand-off was a
//! wake-up across threads, the largest cost of a write after the disk
//! (issue 13). The lock is held for the core's step and its outputs only:
//! microseconds for a heartbeat or a write, longer for a status call that
//! lists every client. Nothing under it waits for the disk or the network
//! (outputs are queued; log lines go to stderr as before), and a call made
//! under it back into the driver is a bug caught at once ([`Handle`] panics).
//!
//! Durability runs on its own thread: persist requests queue up while a
//! commit is in progress and the next commit takes them all (group commit);
//! `Persisted { up_to }` goes to the core only after the commit returned. A
//! slow disk therefore holds up writes and the storage reads queued behind
//! them (a status call's history, the archive), not probes, heartbeats or
//! the rest of the status.

pub mod links;
pub mod peers;
mod storage_thread;

use crate::api::json;
use crate::api::metrics::Metrics;
use crate::api::rpc::{self, ApiCall, RpcError};
use crate::driver::links::EdgeLink;
use crate::serve::throttle::LogThrottle;
use crate::storage::Storage;
use serde_json::{json, Value};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{oneshot, watch, Notify};
use vcodr_core::*;
use vcodr_transport::{Answerer, Responder};

/// What calls still unanswered when the driver stops are told.
const SHUTDOWN_UNFINISHED: &str =
    "outcome unknown: the server is shutting down and this call had not \
     finished; a write may or may not be durable: check with configuration/get after its restart";

/// What calls in flight are told when the driver panicked (a bug).
const DRIVER_PANICKED: &str = "outcome unknown: this server's driver failed (a bug: see its log) while \
     this call was in flight; a write may or may not be durable: check with configuration/get after \
     the server's restart";

/// Time as the core takes it.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            start: Instant::now(),
        }
    }

    pub fn now(&self) -> Now {
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Now {
            mono_ms: self.start.elapsed().as_millis() as u64,
            wall_ms,
        }
    }

    fn instant_after(&self, after_ms: Millis) -> Instant {
        Instant::now() + Duration::from_millis(after_ms)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A read the storage thread runs between commits.
type ReadJob = Box<dyn FnOnce(&dyn Storage) + Send>;

enum StorageJob {
    Commit(PersistSeq, Vec<PersistOp>),
    Read(ReadJob),
    /// What an `Output::ReadSamples` asked for: read, then given to the core.
    ReadSamples {
        ranges: Vec<SampleRange>,
        max_bytes: usize,
        max_samples: usize,
    },
    SaveContacts(Vec<ClientContact>),
}

/// Answers an edge: inline when the request came as a datagram (a
/// heartbeat), from a short task when a stream must be written.
fn answer_edge(responder: Responder<EdgeLink>, msg: ServerMsg) {
    if let Err(responder) = responder.respond_datagram(&msg) {
        tokio::spawn(async move {
            let _ = responder.respond(&msg).await;
        });
    }
}

/// Where the driver sends peer messages (the peer-link layer). Called with
/// the driver's lock held: every method only queues and returns.
pub trait PeerSink: Send + 'static {
    /// Queue `msg` for the server at `to` (dialled if need be); may drop it
    /// when the link's queue is full (the core retransmits).
    fn send(&mut self, to: &str, msg: PeerEnvelope);
    /// Answer on the link `link` a message came in on (never dialled).
    fn reply(&mut self, link: PeerLinkId, msg: PeerEnvelope);
    /// Close link `link`: its sender may not use the peer link.
    fn close(&mut self, link: PeerLinkId, reason: &str);
    /// Addresses dialled now (a gauge: the core names only its peer).
    fn dial_targets(&self) -> usize;
}

/// What every [`Handle`] shares: the driver, once [`spawn`] gave it its
/// core, until it stops (then `None` again).
struct Shared {
    driver: Mutex<Option<Driver>>,
    /// Wakes the timer task: a timer came due earlier than it sleeps for, or
    /// the driver stopped.
    timers_changed: Arc<Notify>,
    /// Permits of the probes waiting for a held lock ([`PROBE_POLLERS`]).
    probe_pollers: Arc<tokio::sync::Semaphore>,
    write_timeout: Duration,
    /// Set once, by the driver, when a storage commit failed: the server is
    /// fail-stop from then on (not ready, in-flight calls answered, exit).
    storage_failed: Arc<watch::Sender<Option<String>>>,
}

thread_local! {
    /// Set while this thread holds the driver's lock: a call back into the
    /// driver from under it would deadlock.
    static IN_DRIVER: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as holding the driver's lock while it lives (also
/// when the core panics under it).
struct InDriver;

impl InDriver {
    fn check() {
        assert!(
            !IN_DRIVER.get(),
            "a call into the driver from under its own lock (it would deadlock)"
        );
    }

    fn enter() -> InDriver {
        IN_DRIVER.set(true);
        InDriver
    }
}

impl Drop for InDriver {
    fn drop(&mut self) {
        IN_DRIVER.set(false);
    }
}

/// A [`Handle`] that does not keep the driver alive: what the driver itself
/// holds (its peer sink) and the storage thread, so that dropping every
/// other handle drops the driver, ends the storage thread and closes the store.
#[derive(Clone)]
pub struct WeakHandle {
    shared: std::sync::Weak<Shared>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for WeakHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeakHandle").finish_non_exhaustive()
    }
}

impl WeakHandle {
    /// The handle, while the driver's owners still hold it.
    pub fn upgrade(&self) -> Option<Handle> {
        Some(Handle {
            shared: self.shared.upgrade()?,
            metrics: self.metrics.clone(),
        })
    }
}

/// A cheap, cloneable way to run inputs through the driver.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("write_timeout", &self.shared.write_timeout)
            .finish_non_exhaustive()
    }
}

impl Handle {
    /// A handle that does not keep the driver alive.
    pub fn downgrade(&self) -> WeakHandle {
        WeakHandle {
            shared: Arc::downgrade(&self.shared),
            metrics: self.metrics.clone(),
        }
    }

    /// Runs `f` on the driver, then carries out what the core output; `None`
    /// when there is no driver (not started yet, or stopped).
    ///
    /// A panic under the lock (a bug) stops the driver: what it held may be
    /// half-updated, so nothing more is fed to it. The calls in flight are
    /// answered as outcome unknown, the panic is logged, and the caller gets
    /// `None` as if the driver had stopped.
    fn with_driver<R>(&self, f: impl FnOnce(&mut Driver) -> R) -> Option<R> {
        InDriver::check();
        // A panic in `f` or the drain is caught below; one elsewhere under
        // the lock (a probe) leaves the driver as it was: it goes on.
        let mut slot = self
            .shared
            .driver
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let d = slot.as_mut()?;
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = InDriver::enter();
            let r = f(d);
            d.drain();
            d.finish_shutdown();
            r
        }));
        match ran {
            Ok(r) => {
                if d.stopped {
                    *slot = None;
                    self.shared.timers_changed.notify_one();
                }
                Some(r)
            }
            Err(panic) => {
                let what = panic_message(panic.as_ref());
                tracing::error!(
                    panic = %what,
                    "the driver panicked ({what}): it stops; this server takes no more inputs and \
                     its liveness probe fails"
                );
                if let Some(mut d) = slot.take() {
                    d.answer_unfinished(DRIVER_PANICKED);
                }
                self.shared.timers_changed.notify_one();
                None
            }
        }
    }

    /// Runs an admin API call.
    ///
    /// A call the driver never took (it stopped first) is refused as not
    /// carried out. One it took but could not finish within the write
    /// timeout, or when storage failed or the server stopped, is answered
    /// [`rpc::code::OUTCOME_UNKNOWN`]: a write may or may not be durable.
    pub async fn api(&self, call: ApiCall) -> Result<Value, RpcError> {
        let is_write = matches!(call.kind(), RequestKind::ConfigWrite)
            || matches!(call, ApiCall::Core(Command::Promote { .. }));
        let (reply, mut rx) = oneshot::channel();
        if self.with_driver(|d| d.on_api(call, reply)).is_none() {
            // Taken, then the driver stopped under this very call (a panic
            // after its write went to storage): that answer, not "not carried out".
            return rx
                .try_recv()
                .unwrap_or_else(|_| Err(self.not_carried_out()));
        }
        let wait = if is_write {
            self.shared.write_timeout
        } else {
            Duration::from_secs(30)
        };
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(r)) => r,
            // Dropped unanswered: the driver stopped before it took the call.
            Ok(Err(_)) => Err(self.not_carried_out()),
            Err(_) if is_write => {
                self.metrics.writes_outcome_unknown.fetch_add(1, Relaxed);
                Err(RpcError::new(
                    rpc::code::OUTCOME_UNKNOWN,
                    format!(
                        "outcome unknown: no acknowledgement within {} ms (limits.write_timeout_ms); the \
                         write may or may not take effect (the standby has not confirmed it); check with \
                         configuration/get before retrying",
                        wait.as_millis()
                    ),
                ))
            }
            Err(_) => Err(RpcError::new(
                rpc::code::INTERNAL,
                format!("no answer within {} ms; retry", wait.as_millis()),
            )),
        }
    }

    fn not_carried_out(&self) -> RpcError {
        match self.storage_failure() {
            Some(why) => RpcError::new(
                rpc::code::INTERNAL,
                format!(
                    "not carried out: storage failed on this server ({why}); it exits (code {}) for its \
                     supervisor to restart it and recover from disk; retry after the restart",
                    crate::serve::EXIT_STORAGE_FAILED
                ),
            ),
            None => RpcError::new(
                rpc::code::INTERNAL,
                "not carried out: the server is shutting down; retry after its restart",
            ),
        }
    }

    /// Why storage failed, once it has (the server is then fail-stop).
    pub fn storage_failure(&self) -> Option<String> {
        self.shared.storage_failed.borrow().clone()
    }

    /// Turns `Some` when storage fails.
    pub fn watch_storage_failure(&self) -> watch::Receiver<Option<String>> {
        self.shared.storage_failed.subscribe()
    }

    /// Asks the driver for the core's state, within `deadline` (the probes):
    /// a driver whose lock stays held that long is reported, not waited for.
    /// While the lock is held, the tries run on a blocking-pool thread: tasks
    /// waiting for the lock may hold every worker, and with them the
    /// runtime's timers.
    pub async fn probe(&self, deadline: Duration) -> Result<crate::api::health::Probe, String> {
        if let Some(answer) = try_probe(&self.shared) {
            return answer;
        }
        // Probes need no token: at most PROBE_POLLERS wait for a held lock.
        let Ok(permit) = self.shared.probe_pollers.clone().try_acquire_owned() else {
            return Err(format!(
                "the driver is busy and {PROBE_POLLERS} probes already wait for it"
            ));
        };
        let shared = self.shared.clone();
        let until = Instant::now() + deadline;
        let tried = tokio::task::spawn_blocking(move || loop {
            let _permit = &permit;
            if let Some(answer) = try_probe(&shared) {
                return answer;
            }
            if Instant::now() >= until {
                return Err(format!(
                    "the driver did not answer within {} ms",
                    deadline.as_millis()
                ));
            }
            std::thread::sleep(PROBE_RETRY);
        });
        tried
            .await
            .unwrap_or_else(|e| Err(format!("the probe failed: {e}")))
    }

    /// Runs one edge request through the core, which answers the edge
    /// itself, as the client its certificate proves (the edge listener
    /// admits only edge and gateway certificates; anything else is refused
    /// unanswered). Does nothing once the driver has stopped: the dropped
    /// responder tells the edge at once.
    pub fn edge_request(&self, msg: EdgeMsg, responder: Responder<EdgeLink>) {
        let peer = &responder.link().peer;
        let Some(client_type) = peer.role().client_type() else {
            return;
        };
        let client: ClientId = peer.as_str().to_string();
        self.with_driver(|d| d.on_edge(client, client_type, msg, responder));
    }

    /// The edge listener's [`Answerer`]: each request goes through the core
    /// on the transport's task that decoded it (the hub's own, on the hub
    /// driver), which needs no other task to wake. It waits for the lock
    /// while another input holds it: the core's step and its outputs, log
    /// lines included (written to stderr under the lock), never the disk or
    /// the network. While the driver is stopped its requests are refused
    /// unanswered (the server is on its way out then).
    pub fn edge_answerer(&self) -> Answerer<EdgeLink> {
        let handle = self.clone();
        Arc::new(move |msg, responder| handle.edge_request(msg, responder))
    }

    /// Runs a peer message that came in on `link` from the server TLS
    /// proved to be `from` (dropped when the driver has stopped).
    pub fn peer(&self, link: PeerLinkId, from: PeerIdentity, env: PeerEnvelope) {
        self.with_driver(|d| {
            d.metrics.peer_received.fetch_add(1, Relaxed);
            d.input(Input::Peer { link, from, env });
        });
    }

    /// Finishes in-flight commits and stops the driver.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.with_driver(|d| d.shutdown = Some(tx)).is_some() {
            let _ = rx.await;
        }
    }
}

/// The core's state for a probe if the driver's lock is free; `None` while
/// it is held.
fn try_probe(shared: &Shared) -> Option<Result<crate::api::health::Probe, String>> {
    // As `with_driver`: a poisoned lock holds a driver or nothing, as it says.
    let slot = match shared.driver.try_lock() {
        Ok(slot) => slot,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => return None,
    };
    Some(
        slot.as_ref()
            .map(|d| crate::api::health::probe(&d.core))
            .ok_or_else(|| "the driver has stopped".into()),
    )
}

/// What a caught panic said.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Probes that wait at once for the driver's lock while it is held, each on a
/// blocking-pool thread; a probe beyond them fails at once.
pub const PROBE_POLLERS: usize = 4;

/// How often a probe tries the driver's lock again while it is held.
const PROBE_RETRY: Duration = Duration::from_millis(1);

/// Settings of the driver itself.
#[derive(Clone, Debug)]
pub struct DriverSettings {
    pub write_timeout: Duration,
    pub contact_save_interval: Duration,
}

/// The driver's place before it starts: made with its [`Handle`] by
/// [`channel`], so that the links can be given the handle before the driver
/// has its core; [`spawn`] fills it.
#[allow(missing_debug_implementations)]
pub struct Inbox(Arc<Shared>);

/// A handle to a driver that [`spawn`] starts (until then every input is
/// refused as if the driver had stopped).
pub fn channel(settings: &DriverSettings, metrics: Arc<Metrics>) -> (Handle, Inbox) {
    let shared = Arc::new(Shared {
        driver: Mutex::new(None),
        timers_changed: Arc::new(Notify::new()),
        probe_pollers: Arc::new(tokio::sync::Semaphore::new(PROBE_POLLERS)),
        write_timeout: settings.write_timeout,
        storage_failed: Arc::new(watch::channel(None).0),
    });
    let handle = Handle {
        shared: shared.clone(),
        metrics,
    };
    (handle, Inbox(shared))
}

/// What the driver publishes for the I/O layer around it.
#[derive(Debug)]
pub struct Published {
    /// The peer identity the core pinned (the peer links give it priority).
    pub pinned: watch::Sender<Option<PeerIdentity>>,
    /// Rate limit of the log lines outsiders cause.
    pub throttle: Arc<LogThrottle>,
}

/// Gives the driver its core and starts the storage thread and the timer
/// task; the task ends when the driver stops (shutdown or a failed commit).
/// Must be called within a tokio runtime: the storage thread runs its inputs
/// in that runtime's context.
pub fn spawn(
    handle: &Handle,
    inbox: Inbox,
    core: Server,
    storage: Box<dyn Storage>,
    peers: Box<dyn PeerSink>,
    settings: DriverSettings,
    published: Published,
) -> tokio::task::JoinHandle<()> {
    debug_assert!(
        Arc::ptr_eq(&inbox.0, &handle.shared),
        "another driver's inbox"
    );
    let metrics = handle.metrics.clone();
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<StorageJob>();
    let runtime = tokio::runtime::Handle::current();
    let storage_handle = handle.downgrade();
    std::thread::Builder::new()
        .name("vcodr-storage".into())
        .spawn(move || {
            let _in_runtime = runtime.enter();
            storage_thread::run(storage, jobs_rx, storage_handle)
        })
        .expect("spawning the storage thread");
    let save_every = settings.contact_save_interval;
    let d = Driver {
        storage_failed: handle.shared.storage_failed.clone(),
        core,
        clock: Clock::new(),
        timers: BTreeMap::new(),
        armed: None,
        timers_changed: handle.shared.timers_changed.clone(),
        jobs: jobs_tx,
        peers,
        metrics,
        edge_waiters: HashMap::new(),
        api_waiters: HashMap::new(),
        next_id: 1,
        last_seq: 0,
        persisted_up_to: 0,
        shutdown: None,
        stopped: false,
        observed_at: Instant::now() - Duration::from_secs(1),
        observed_key: (Role::Standalone, DrState::Unconfigured, 0),
        published,
    };
    *inbox
        .0
        .driver
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(d);
    // What restoring the core output (timers, a first heartbeat).
    handle.with_driver(|_| {});
    tokio::spawn(run_timers(handle.clone(), save_every))
}

/// The timer task: fires the core's timers when they come due and saves the
/// client contact table every `save_every`; ends when the driver stops.
async fn run_timers(handle: Handle, save_every: Duration) {
    let mut save_contacts = tokio::time::interval(save_every);
    save_contacts.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Asked for before the next deadline is read: a timer set after
        // the read wakes the wait below.
        let changed = handle.shared.timers_changed.notified();
        let Some(next) = handle.with_driver(|d| {
            d.armed = d.timers.values().min().copied();
            d.armed
        }) else {
            return;
        };
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let ran = tokio::select! {
            _ = sleep => handle.with_driver(Driver::fire_timers),
            _ = changed => Some(()),
            _ = save_contacts.tick() => handle.with_driver(|d| {
                let contacts: Vec<ClientContact> = d.core.contacts().cloned().collect();
                let _ = d.jobs.send(StorageJob::SaveContacts(contacts));
            }),
        };
        if ran.is_none() {
            return;
        }
    }
}

struct Driver {
    core: Server,
    clock: Clock,
    timers: BTreeMap<Timer, Instant>,
    /// The deadline the timer task sleeps until (`None`: no timer).
    armed: Option<Instant>,
    timers_changed: Arc<Notify>,
    jobs: std::sync::mpsc::Sender<StorageJob>,
    peers: Box<dyn PeerSink>,
    metrics: Arc<Metrics>,
    edge_waiters: HashMap<ReplyTo, Responder<EdgeLink>>,
    api_waiters: HashMap<RequestId, oneshot::Sender<Result<Value, RpcError>>>,
    next_id: u64,
    /// Last persist request sent to storage, and the last one confirmed durable.
    last_seq: PersistSeq,
    persisted_up_to: PersistSeq,
    /// A graceful stop waiting for the commits in flight.
    shutdown: Option<oneshot::Sender<()>>,
    /// Set when the driver must take no more inputs (stopped, storage failed).
    stopped: bool,
    /// When the metrics gauges were last refreshed from the core.
    observed_at: Instant,
    observed_key: (Role, DrState, Epoch),
    published: Published,
    /// Shared with every [`Handle`]: set when a commit failed.
    storage_failed: Arc<watch::Sender<Option<String>>>,
}

impl Driver {
    /// Completes a graceful stop once every commit sent is durable.
    fn finish_shutdown(&mut self) {
        if self.persisted_up_to >= self.last_seq {
            if let Some(done) = self.shutdown.take() {
                self.answer_unfinished(SHUTDOWN_UNFINISHED);
                let _ = done.send(());
                self.stopped = true;
            }
        }
    }

    /// Answers every call the core took and has not answered: the driver
    /// stops. A write among them may or may not be durable.
    fn answer_unfinished(&mut self, why: &str) {
        let n = self.api_waiters.len() as u64;
        self.metrics.writes_outcome_unknown.fetch_add(n, Relaxed);
        for (_, w) in self.api_waiters.drain() {
            let _ = w.send(Err(RpcError::new(rpc::code::OUTCOME_UNKNOWN, why)));
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn input(&mut self, input: Input) {
        let now = self.clock.now();
        self.core.handle_input(now, input);
    }

    fn on_edge(
        &mut self,
        client: ClientId,
        client_type: ClientType,
        msg: EdgeMsg,
        reply: Responder<EdgeLink>,
    ) {
        match &msg {
            EdgeMsg::Heartbeat(hb) => {
                let c = if hb.client_type == ClientType::Edge {
                    &self.metrics.heartbeats_edge
                } else {
                    &self.metrics.heartbeats_gateway
                };
                c.fetch_add(1, Relaxed);
            }
            EdgeMsg::Monitoring { samples } => {
                self.metrics
                    .samples_received
                    .fetch_add(samples.len() as u64, Relaxed);
            }
            EdgeMsg::ConfigPull { .. } => {
                self.metrics.config_pulls.fetch_add(1, Relaxed);
            }
        }
        let id = self.id();
        self.edge_waiters.insert(id, reply);
        self.input(Input::Edge {
            reply_to: id,
            client,
            client_type,
            msg,
        });
    }

    /// The storage thread made every persist request up to `up_to` durable.
    fn on_persisted(&mut self, up_to: PersistSeq, entries: u64, started: Instant) {
        self.persisted_up_to = up_to;
        self.metrics.commit_latency.observe(started.elapsed());
        self.metrics.persisted_entries.fetch_add(entries, Relaxed);
        self.input(Input::Persisted { up_to });
    }

    /// A commit (or a read the core waits for) failed: fail-stop.
    fn on_storage_failed(&mut self, why: String) {
        // Not ready from now on, before anyone is answered.
        self.storage_failed.send_replace(Some(why.clone()));
        self.metrics.storage_failed.store(1, Relaxed);
        self.answer_unfinished(&format!(
            "outcome unknown: storage failed on this server ({why}) while this call was in flight; \
             the write may or may not be durable. The server exits (code {}) to recover from disk: \
             check with configuration/get after its restart",
            crate::serve::EXIT_STORAGE_FAILED
        ));
        self.stopped = true;
    }

    fn on_api(&mut self, call: ApiCall, reply: oneshot::Sender<Result<Value, RpcError>>) {
        if let Err(e) = self.core.gate(call.kind(), call.method().name()) {
            let _ = reply.send(Err(e.into()));
            return;
        }
        match call {
            ApiCall::Core(cmd) => {
                let id = self.id();
                self.api_waiters.insert(id, reply);
                self.input(Input::Command { req: id, cmd });
            }
            ApiCall::Status(with) => {
                let mut v = json::status_json(&self.core.status());
                if with.client_count {
                    v["clientCount"] = json::client_count_json(&self.core.client_count());
                }
                // The contact table has a row per client: copied under the
                // lock, rendered off it (everything that waits for the lock,
                // the hub answering heartbeats among them, would wait for
                // the JSON), on a blocking-pool thread, not the storage thread.
                let contacts = with.client_contact.then(|| {
                    self.core
                        .contacts()
                        .cloned()
                        .collect::<Vec<ClientContact>>()
                });
                let rt = tokio::runtime::Handle::try_current().ok();
                let finish = move |mut v: Value| {
                    let Some(contacts) = contacts else {
                        let _ = reply.send(Ok(v));
                        return;
                    };
                    let render = move || {
                        v["clientContact"] =
                            Value::Array(contacts.iter().map(json::contact_json).collect());
                        let _ = reply.send(Ok(v));
                    };
                    match rt {
                        Some(rt) => drop(rt.spawn_blocking(render)),
                        None => render(),
                    }
                };
                if with.state_history || with.storage_info {
                    let _ = self
                        .jobs
                        .send(StorageJob::Read(Box::new(move |s: &dyn Storage| {
                            if with.state_history {
                                match s.history(200) {
                                    Ok(h) => {
                                        v["stateHistory"] = Value::Array(
                                            h.iter().map(json::transition_json).collect(),
                                        )
                                    }
                                    Err(e) => v["stateHistory"] = json!({ "error": e.to_string() }),
                                }
                            }
                            if with.storage_info {
                                v["storageInfo"] = match s.info() {
                                    Ok(i) => serde_json::to_value(&i).unwrap_or(Value::Null),
                                    Err(e) => json!({ "error": e.to_string() }),
                                };
                            }
                            finish(v);
                        })));
                } else {
                    finish(v);
                }
            }
            ApiCall::DivergenceArchive { offset, limit } => {
                let _ = self
                    .jobs
                    .send(StorageJob::Read(Box::new(move |s: &dyn Storage| {
                        let r = s
                            .archive_len()
                            .and_then(|total| Ok((total, s.archive(offset, limit)?)))
                            .map(|(total, rows)| {
                                json::archive_page_json(total, offset, limit, &rows)
                            })
                            .map_err(|e| RpcError::new(rpc::code::INTERNAL, e.to_string()));
                        let _ = reply.send(r);
                    })));
            }
            ApiCall::ClientSamples {
                client_id,
                after_seq,
                limit,
            } => {
                let _ = self.jobs.send(StorageJob::Read(Box::new(move |s: &dyn Storage| {
                    let r = s
                        .samples(&client_id, after_seq, limit)
                        .map(|rows| {
                            let samples: Vec<Value> = rows
                                .iter()
                                .map(|(seq, p)| json!({ "seq": seq, "payload": String::from_utf8_lossy(p) }))
                                .collect();
                            json!({ "clientId": client_id, "samples": samples })
                        })
                        .map_err(|e| RpcError::new(rpc::code::INTERNAL, e.to_string()));
                    let _ = reply.send(r);
                })));
            }
            ApiCall::MonitoringSummary => {
                let dups = self.metrics.sample_duplicates.load(Relaxed);
                let _ = self.jobs.send(StorageJob::Read(Box::new(move |s: &dyn Storage| {
                    let r = s
                        .sample_summary()
                        .map(|rows| {
                            let total: u64 = rows.iter().map(|r| r.count).sum();
                            let clients: Vec<Value> = rows
                                .iter()
                                .map(|r| json!({ "clientId": r.client, "samples": r.count, "maxSeq": r.max_seq }))
                                .collect();
                            json!({ "samplesStored": total, "duplicatesDiscarded": dups, "clients": clients })
                        })
                        .map_err(|e| RpcError::new(rpc::code::INTERNAL, e.to_string()));
                    let _ = reply.send(r);
                })));
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        let due: Vec<Timer> = self
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in due {
            self.timers.remove(&t);
            self.input(Input::Timeout(t));
        }
    }

    /// Carries out every output of the core.
    fn drain(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::SendPeer { to, msg } => {
                    self.metrics.peer_sent.fetch_add(1, Relaxed);
                    self.peers.send(&to, msg);
                }
                Output::ReplyPeer { link, msg } => {
                    self.metrics.peer_sent.fetch_add(1, Relaxed);
                    self.peers.reply(link, msg);
                }
                Output::ReplyEdge { reply_to, msg } => {
                    if let Some(w) = self.edge_waiters.remove(&reply_to) {
                        answer_edge(w, msg);
                    }
                }
                Output::Persist { seq, ops } => {
                    self.last_seq = seq;
                    if self.jobs.send(StorageJob::Commit(seq, ops)).is_err() {
                        tracing::error!(
                            "storage thread is gone; persist request {seq} cannot be made durable"
                        );
                    }
                }
                Output::ReadSamples {
                    ranges,
                    max_bytes,
                    max_samples,
                } => {
                    // On the storage thread, after the commits queued before
                    // it (the core's contract), never blocking the caller.
                    // The core has at most one outstanding; its size is bounded.
                    let job = StorageJob::ReadSamples {
                        ranges,
                        max_bytes,
                        max_samples,
                    };
                    if self.jobs.send(job).is_err() {
                        tracing::error!(
                            "storage thread is gone; samples for the standby cannot be read"
                        );
                    }
                }
                Output::SetTimer { timer, after_ms } => {
                    let at = self.clock.instant_after(after_ms);
                    self.timers.insert(timer, at);
                    if self.armed.is_none_or(|armed| at < armed) {
                        // The timer task sleeps past it: wake it to re-read.
                        self.armed = Some(at);
                        self.timers_changed.notify_one();
                    }
                }
                Output::CancelTimer(timer) => {
                    self.timers.remove(&timer);
                }
                Output::Reply { req, result } => {
                    match &result {
                        Ok(Reply::Written { .. } | Reply::Deleted { .. }) => {
                            self.metrics.writes_acknowledged.fetch_add(1, Relaxed);
                        }
                        Err(e) => {
                            if matches!(e, CommandError::NotAcknowledged { .. }) {
                                self.metrics.writes_not_acknowledged.fetch_add(1, Relaxed);
                            }
                            tracing::info!(request = req, error = %e, "request refused")
                        }
                        _ => {}
                    }
                    if let Some(w) = self.api_waiters.remove(&req) {
                        let _ =
                            w.send(result.map(|r| json::reply_json(&r)).map_err(RpcError::from));
                    }
                }
                Output::Event(e) => {
                    if let Event::PeerRefused {
                        link,
                        reason: PeerRefusal::NotPinnedPeer | PeerRefusal::NotPaired,
                        ..
                    } = &e
                    {
                        // Nothing this sender says will be taken: end its link.
                        self.peers
                            .close(*link, "this server does not take peer messages from you");
                    }
                    crate::serve::log::event(&e, &self.metrics, &self.published.throttle)
                }
            }
        }
        // Gauges cost O(clients) (the client counts): refresh a few times a second, not per input.
        let key = (self.core.role(), self.core.dr_state(), self.core.epoch());
        if self.observed_at.elapsed() >= Duration::from_millis(200) || key != self.observed_key {
            self.observed_key = key;
            self.observed_at = Instant::now();
            self.metrics.observe(&self.core);
            self.metrics
                .peer_dial_targets
                .store(self.peers.dial_targets() as u64, Relaxed);
        }
        let pin = self.core.peer_identity();
        if self.published.pinned.borrow().as_ref() != pin {
            let pin = pin.cloned();
            self.published.pinned.send_replace(pin);
        }
    }
}

/// A driver of a fresh STANDALONE core named `a` on `storage`, for tests:
/// its handle and its timer task.
#[cfg(test)]
pub(crate) fn spawn_standalone(
    storage: Box<dyn Storage>,
    peers: Box<dyn PeerSink>,
    metrics: Arc<Metrics>,
    throttle: Arc<LogThrottle>,
) -> (Handle, tokio::task::JoinHandle<()>) {
    let settings = DriverSettings {
        write_timeout: Duration::from_secs(10),
        contact_save_interval: Duration::from_secs(3600),
    };
    let (handle, inbox) = channel(&settings, metrics);
    let me = ServerInfo {
        uuid: 1,
        name: "a".into(),
        peer_address: "127.0.0.1:1".into(),
        edge_address: "127.0.0.1:2".into(),
        admin_address: "127.0.0.1:3".into(),
    };
    let core = Server::new(ServerConfig::default(), me, Now::at(0));
    let timers = spawn(
        &handle,
        inbox,
        core,
        storage,
        peers,
        settings,
        Published {
            pinned: watch::channel(None).0,
            throttle,
        },
    );
    (handle, timers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    /// A peer link layer that panics when the core sends: a bug under the lock.
    struct PanickingPeer;

    impl PeerSink for PanickingPeer {
        fn send(&mut self, to: &str, _: PeerEnvelope) {
            panic!("the peer sink fails sending to {to} (this test's bug under the driver's lock)");
        }
        fn reply(&mut self, _: PeerLinkId, _: PeerEnvelope) {}
        fn close(&mut self, _: PeerLinkId, _: &str) {}
        fn dial_targets(&self) -> usize {
            0
        }
    }

    fn driver(peers: Box<dyn PeerSink>) -> (Handle, tokio::task::JoinHandle<()>) {
        spawn_standalone(
            Box::new(MemStorage::new()),
            peers,
            Arc::new(Metrics::default()),
            Arc::new(LogThrottle::default()),
        )
    }

    fn put(key: &str) -> ApiCall {
        rpc::parse_call("configuration/put", &json!({"key": key, "value": 1})).unwrap()
    }

    // The timer task, waiting for the lock, holds a worker meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_probe_reports_a_driver_whose_lock_stays_held_instead_of_waiting_for_it() {
        let (handle, _timers) = driver(Box::new(PanickingPeer));
        assert_eq!(
            handle.probe(Duration::from_secs(1)).await.map(|p| p.role),
            Ok(Role::Standalone)
        );
        let shared = handle.shared.clone();
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let _held = shared.driver.lock().unwrap();
            locked_tx.send(()).unwrap();
            let _ = release_rx.recv();
        });
        locked_rx.recv().unwrap();
        assert_eq!(
            handle
                .probe(Duration::from_millis(20))
                .await
                .map(|p| p.role),
            Err("the driver did not answer within 20 ms".to_string())
        );
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        assert_eq!(
            handle.probe(Duration::from_secs(1)).await.map(|p| p.role),
            Ok(Role::Standalone)
        );
        assert!(handle.api(put("after")).await.is_ok());
    }

    /// The contact table is rendered after the lock is let go; the parts
    /// read from storage first. Every part asked for is in the answer.
    #[tokio::test]
    async fn a_status_with_every_part_answers_them_all_with_the_contact_table_rendered_off_the_lock(
    ) {
        let (handle, _timers) = driver(Box::new(PanickingPeer));
        let view = |address: &str| ViewEntry {
            address: address.into(),
            role: Some(Role::Standalone),
            epoch: 1,
            pair_id: None,
            last_response_ms: Some(5),
        };
        let contact = ClientContact {
            client_id: "edge-7".into(),
            client_type: ClientType::Edge,
            view: [view("127.0.0.1:2"), view("127.0.0.1:4")],
            following: Some("127.0.0.1:2".into()),
            config_epoch: 1,
            config_version: 3,
            cached_samples: 0,
            dropped_samples: 0,
            modified_ms: 9,
            forged_epoch_claims: 0,
        };
        handle.with_driver(|d| d.core.restore_contacts([contact]));
        let all = json!({"with": ["clientContact", "clientCount", "stateHistory", "storageInfo"]});
        let call = rpc::parse_call("disasterRecovery/getReplicationStatus", &all).unwrap();
        let v = handle.api(call.clone()).await.unwrap();
        assert_eq!(v["clientContact"][0]["id"], "edge-7", "{v}");
        assert_eq!(v["clientContact"][0]["activeAddress"], "127.0.0.1:2", "{v}");
        assert_eq!(v["clientContact"].as_array().map(Vec::len), Some(1), "{v}");
        assert_eq!(v["clientCount"]["edgeCount"], 1, "{v}");
        assert!(v["stateHistory"].is_array(), "{v}");
        assert!(v["storageInfo"].is_object(), "{v}");
        // Without the storage parts the contacts come the same way.
        let some = json!({"with": ["clientContact"]});
        let call = rpc::parse_call("disasterRecovery/getReplicationStatus", &some).unwrap();
        let v2 = handle.api(call).await.unwrap();
        assert_eq!(v2["clientContact"], v["clientContact"]);
        assert!(v2.get("stateHistory").is_none(), "{v2}");
    }

    #[tokio::test]
    async fn dropping_every_handle_drops_the_driver_and_with_it_the_storage_thread_and_store() {
        let (handle, timers) = driver(Box::new(PanickingPeer));
        assert!(handle.api(put("k")).await.is_ok());
        let shared = Arc::downgrade(&handle.shared);
        // What `Running::finish` does: the timer task goes, then the handles.
        // The driver's own peer sink and the storage thread hold weak ones:
        // the driver goes, its job queue closes, the storage thread ends and
        // drops the store.
        timers.abort();
        let _ = timers.await;
        drop(handle);
        let deadline = Instant::now() + Duration::from_secs(10);
        while shared.strong_count() > 0 {
            assert!(
                Instant::now() < deadline,
                "something still holds the driver ({} handles)",
                shared.strong_count()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_panic_under_the_lock_stops_the_driver_answers_the_calls_in_flight_and_refuses_the_rest(
    ) {
        let (handle, timers) = driver(Box::new(PanickingPeer));
        assert!(handle.api(put("before")).await.is_ok());
        // Configuring the pair sends to the standby once durable: on the
        // storage thread, under the lock, where the sink panics.
        let configure = ApiCall::Core(Command::ConfigureActive {
            standby_address: "127.0.0.1:9".into(),
            standby_uuid: 2,
            pairing_token: 7,
        });
        let e = handle.api(configure).await.unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (rpc::code::OUTCOME_UNKNOWN, DRIVER_PANICKED)
        );
        assert_eq!(
            handle.probe(Duration::from_secs(1)).await.map(|p| p.role),
            Err("the driver has stopped".to_string())
        );
        let e = handle.api(put("after")).await.unwrap_err();
        assert_eq!(
            e.message,
            "not carried out: the server is shutting down; retry after its restart"
        );
        tokio::time::timeout(Duration::from_secs(10), timers)
            .await
            .expect("the timer task ends with the driver")
            .expect("the timer task does not panic");
    }
}
