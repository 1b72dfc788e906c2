//! The driver: one tokio task that owns the `vcodr-core` [`Server`], feeds it
//! every input (admin calls, peer and edge messages, timer expiries,
//! durability confirmations) and carries out its outputs. No protocol
//! decision is made here.
//!
//! Durability runs on its own thread: persist requests queue up while a
//! commit is in progress and the next commit takes them all (group commit);
//! `Persisted { up_to }` goes back to the core only after the commit returned.

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
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};
use vcodr_core::*;
use vcodr_transport::Responder;

/// What calls still unanswered when the driver stops are told.
const SHUTDOWN_UNFINISHED: &str =
    "outcome unknown: the server is shutting down and this call had not \
     finished; a write may or may not be durable: check with configuration/get after its restart";

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

/// What the driver task receives.
#[allow(missing_debug_implementations)] // holds reply channels
pub enum DriverMsg {
    Api {
        call: ApiCall,
        reply: oneshot::Sender<Result<Value, RpcError>>,
    },
    Edge {
        client: ClientId,
        client_type: ClientType,
        msg: EdgeMsg,
        reply: Responder<EdgeLink>,
    },
    /// A peer message, with the identity TLS proved for its sender and its link.
    Peer {
        link: PeerLinkId,
        from: PeerIdentity,
        env: PeerEnvelope,
    },
    Persisted {
        up_to: PersistSeq,
        entries: u64,
        started: Instant,
    },
    StorageFailed(String),
    /// The storage thread read the samples an `Output::ReadSamples` asked for.
    SamplesRead(Vec<SampleChunk>),
    /// A liveness or readiness probe: the driver answers with the core's state.
    Probe(oneshot::Sender<crate::api::health::Probe>),
    /// Finish in-flight commits, then stop.
    Shutdown(oneshot::Sender<()>),
}

/// Where the driver sends peer messages (the peer-link layer).
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

/// A cheap, cloneable way to talk to the driver.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<DriverMsg>,
    pub metrics: Arc<Metrics>,
    write_timeout: Duration,
    /// Set once, by the driver, when a storage commit failed: the server is
    /// fail-stop from then on (not ready, in-flight calls answered, exit).
    storage_failed: Arc<watch::Sender<Option<String>>>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("write_timeout", &self.write_timeout)
            .finish_non_exhaustive()
    }
}

impl Handle {
    /// Runs an admin API call.
    ///
    /// A call the driver never took (it stopped first) is refused as not
    /// carried out. One it took but could not finish within the write
    /// timeout, or when storage failed or the server stopped, is answered
    /// [`rpc::code::OUTCOME_UNKNOWN`]: a write may or may not be durable.
    pub async fn api(&self, call: ApiCall) -> Result<Value, RpcError> {
        let is_write = matches!(call.kind(), RequestKind::ConfigWrite)
            || matches!(call, ApiCall::Core(Command::Promote { .. }));
        let (reply, rx) = oneshot::channel();
        if self.tx.send(DriverMsg::Api { call, reply }).await.is_err() {
            return Err(self.not_carried_out());
        }
        let wait = if is_write {
            self.write_timeout
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
        self.storage_failed.borrow().clone()
    }

    /// Turns `Some` when storage fails.
    pub fn watch_storage_failure(&self) -> watch::Receiver<Option<String>> {
        self.storage_failed.subscribe()
    }

    /// Asks the driver for the core's state, within `deadline` (the probes).
    pub async fn probe(&self, deadline: Duration) -> Result<crate::api::health::Probe, String> {
        let (tx, rx) = oneshot::channel();
        let asked = async {
            self.tx.send(DriverMsg::Probe(tx)).await.ok()?;
            rx.await.ok()
        };
        match tokio::time::timeout(deadline, asked).await {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err("the driver has stopped".into()),
            Err(_) => Err(format!(
                "the driver did not answer within {} ms",
                deadline.as_millis()
            )),
        }
    }

    /// Hands one edge request to the driver, which answers the edge itself.
    /// Waits while the driver's queue is full (the edge's link stops being
    /// read: backpressure); false when the server is stopping.
    pub async fn edge_request(
        &self,
        client: ClientId,
        client_type: ClientType,
        msg: EdgeMsg,
        responder: Responder<EdgeLink>,
    ) -> bool {
        self.tx
            .send(DriverMsg::Edge {
                client,
                client_type,
                msg,
                reply: responder,
            })
            .await
            .is_ok()
    }

    /// Delivers a peer message that came in on `link` from the server TLS
    /// proved to be `from` (dropped if the driver is overloaded: peers retransmit).
    pub fn peer(&self, link: PeerLinkId, from: PeerIdentity, env: PeerEnvelope) {
        if self
            .tx
            .try_send(DriverMsg::Peer { link, from, env })
            .is_err()
        {
            self.metrics.peer_dropped.fetch_add(1, Relaxed);
        }
    }

    /// Finishes in-flight commits and stops the driver.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(DriverMsg::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Settings of the driver itself.
#[derive(Clone, Debug)]
pub struct DriverSettings {
    pub write_timeout: Duration,
    pub contact_save_interval: Duration,
    pub queue_len: usize,
}

/// What the driver task reads: made with its [`Handle`] by [`channel`], so
/// that the links can be given the handle before the driver starts.
#[allow(missing_debug_implementations)] // a channel end
pub struct Inbox(mpsc::Receiver<DriverMsg>);

/// The driver's queue ([`DriverSettings::queue_len`]) and a handle to it.
pub fn channel(settings: &DriverSettings, metrics: Arc<Metrics>) -> (Handle, Inbox) {
    let (tx, rx) = mpsc::channel(settings.queue_len);
    let handle = Handle {
        tx,
        metrics,
        write_timeout: settings.write_timeout,
        storage_failed: Arc::new(watch::channel(None).0),
    };
    (handle, Inbox(rx))
}

/// What the driver publishes for the I/O layer around it.
#[derive(Debug)]
pub struct Published {
    /// The peer identity the core pinned (the peer links give it priority).
    pub pinned: watch::Sender<Option<PeerIdentity>>,
    /// Rate limit of the log lines outsiders cause.
    pub throttle: Arc<LogThrottle>,
}

/// Starts the storage thread and the driver task, reading `inbox`.
pub fn spawn(
    handle: &Handle,
    inbox: Inbox,
    core: Server,
    storage: Box<dyn Storage>,
    peers: Box<dyn PeerSink>,
    settings: DriverSettings,
    published: Published,
) -> tokio::task::JoinHandle<()> {
    let metrics = handle.metrics.clone();
    let rx = inbox.0;
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<StorageJob>();
    let back = handle.tx.clone();
    let storage_metrics = metrics.clone();
    std::thread::Builder::new()
        .name("vcodr-storage".into())
        .spawn(move || storage_thread::run(storage, jobs_rx, back, storage_metrics))
        .expect("spawning the storage thread");
    let mut d = Driver {
        storage_failed: handle.storage_failed.clone(),
        core,
        clock: Clock::new(),
        timers: BTreeMap::new(),
        jobs: jobs_tx,
        peers,
        metrics,
        edge_waiters: HashMap::new(),
        api_waiters: HashMap::new(),
        next_id: 1,
        settings,
        last_seq: 0,
        persisted_up_to: 0,
        shutdown: None,
        observed_at: Instant::now() - Duration::from_secs(1),
        observed_key: (Role::Standalone, DrState::Unconfigured, 0),
        published,
        back: handle.tx.clone(),
    };
    tokio::spawn(async move { d.run(rx).await })
}

struct Driver {
    core: Server,
    clock: Clock,
    timers: BTreeMap<Timer, Instant>,
    jobs: std::sync::mpsc::Sender<StorageJob>,
    peers: Box<dyn PeerSink>,
    metrics: Arc<Metrics>,
    edge_waiters: HashMap<ReplyTo, Responder<EdgeLink>>,
    api_waiters: HashMap<RequestId, oneshot::Sender<Result<Value, RpcError>>>,
    next_id: u64,
    settings: DriverSettings,
    /// Last persist request sent to storage, and the last one confirmed durable.
    last_seq: PersistSeq,
    persisted_up_to: PersistSeq,
    shutdown: Option<oneshot::Sender<()>>,
    /// When the metrics gauges were last refreshed from the core.
    observed_at: Instant,
    observed_key: (Role, DrState, Epoch),
    published: Published,
    /// Shared with every [`Handle`]: set when a commit failed.
    storage_failed: Arc<watch::Sender<Option<String>>>,
    /// The driver's own queue: where a read on the storage thread answers.
    back: mpsc::Sender<DriverMsg>,
}

impl Driver {
    async fn run(&mut self, mut rx: mpsc::Receiver<DriverMsg>) {
        self.drain();
        let mut save_contacts = tokio::time::interval(self.settings.contact_save_interval);
        save_contacts.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_timer = self.timers.values().min().copied();
            let sleep = async {
                match next_timer {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(m) => {
                        if !self.on_msg(m) {
                            return;
                        }
                    }
                    None => return,
                },
                _ = sleep => self.fire_timers(),
                _ = save_contacts.tick() => {
                    let contacts: Vec<ClientContact> = self.core.contacts().cloned().collect();
                    let _ = self.jobs.send(StorageJob::SaveContacts(contacts));
                }
            }
            self.drain();
            if self.persisted_up_to >= self.last_seq {
                if let Some(done) = self.shutdown.take() {
                    self.answer_unfinished(SHUTDOWN_UNFINISHED);
                    let _ = done.send(());
                    return;
                }
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

    /// Returns false when the driver must stop.
    fn on_msg(&mut self, m: DriverMsg) -> bool {
        match m {
            DriverMsg::Api { call, reply } => self.on_api(call, reply),
            DriverMsg::Edge {
                client,
                client_type,
                msg,
                reply,
            } => {
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
            DriverMsg::Peer { link, from, env } => {
                self.metrics.peer_received.fetch_add(1, Relaxed);
                self.input(Input::Peer { link, from, env });
            }
            DriverMsg::Persisted {
                up_to,
                entries,
                started,
            } => {
                self.persisted_up_to = up_to;
                self.metrics.commit_latency.observe(started.elapsed());
                self.metrics.persisted_entries.fetch_add(entries, Relaxed);
                self.input(Input::Persisted { up_to });
            }
            DriverMsg::StorageFailed(why) => {
                // Not ready from now on, before anyone is answered.
                self.storage_failed.send_replace(Some(why.clone()));
                self.metrics.storage_failed.store(1, Relaxed);
                self.answer_unfinished(&format!(
                    "outcome unknown: storage failed on this server ({why}) while this call was in flight; \
                     the write may or may not be durable. The server exits (code {}) to recover from disk: \
                     check with configuration/get after its restart",
                    crate::serve::EXIT_STORAGE_FAILED
                ));
                return false;
            }
            DriverMsg::SamplesRead(chunks) => {
                self.input(Input::SamplesRead { chunks });
            }
            DriverMsg::Probe(answer) => {
                let _ = answer.send(crate::api::health::probe(&self.core));
            }
            DriverMsg::Shutdown(done) => {
                if self.persisted_up_to >= self.last_seq {
                    self.answer_unfinished(SHUTDOWN_UNFINISHED);
                    let _ = done.send(());
                    return false;
                }
                self.shutdown = Some(done);
            }
        }
        true
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
                if with.client_contact {
                    v["clientContact"] =
                        Value::Array(self.core.contacts().map(json::contact_json).collect());
                }
                if with.client_count {
                    v["clientCount"] = json::client_count_json(&self.core.client_count());
                }
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
                            let _ = reply.send(Ok(v));
                        })));
                } else {
                    let _ = reply.send(Ok(v));
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
                    // it (the core's contract), never blocking this loop. The
                    // core has at most one outstanding; its size is bounded.
                    let back = self.back.clone();
                    let job = move |s: &dyn Storage| {
                        let msg = match s.read_samples(&ranges, max_bytes, max_samples) {
                            Ok(chunks) => DriverMsg::SamplesRead(chunks),
                            Err(e) => {
                                // The core waits for this read: a disk that
                                // cannot serve it is a failed disk (fail-stop).
                                tracing::error!(
                                    target: "vcodr::storage",
                                    error = %e,
                                    "reading monitoring samples for the standby failed: {e}; the server stops (fail-stop)"
                                );
                                DriverMsg::StorageFailed(e.to_string())
                            }
                        };
                        let _ = back.blocking_send(msg);
                    };
                    if self.jobs.send(StorageJob::Read(Box::new(job))).is_err() {
                        tracing::error!(
                            "storage thread is gone; samples for the standby cannot be read"
                        );
                    }
                }
                Output::SetTimer { timer, after_ms } => {
                    self.timers
                        .insert(timer, self.clock.instant_after(after_ms));
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
