//! The apply thread of [`super::WalStorage`]: it owns redb's write side
//! and applies logged batches to the open transaction, off the path of the
//! commit that logged them.
//!
//! The log thread (the caller of [`super::WalStorage`]) logs a batch, makes
//! it durable, hands it over ([`Applier::apply`]) and returns: the batch is
//! acknowledged. The apply thread takes the batches in LSN order, applies
//! each to the open transaction and commits that transaction when a bound is
//! reached — `Durability::None` at the group bound, `Durability::Immediate`
//! at the checkpoint bound — so a checkpoint's page writes and `fdatasync`
//! (13–18 ms for 1,024 batches on the development machine) no longer stall
//! the commits queued behind it. Readers ask for every batch logged before
//! them to be committed to redb ([`Applier::show`]) and then read redb on
//! their own thread: redb serves read transactions beside a write one.
//!
//! Jobs run in the order they were handed over. The queue holds at most
//! [`APPLY_QUEUE_BATCHES`] batches and [`APPLY_QUEUE_BYTES`] of their
//! records; a commit that finds it full waits for room (the log never gets
//! more than that ahead of redb, which bounds memory and the replay at open).
//!
//! A failure here comes after the batch was acknowledged: the batch is in
//! the log, and a restart replays it. The first failure is recorded; every
//! later commit is refused naming it, and readers too once redb lacks an
//! acknowledged batch.

use super::segment::RECORD_HEADER_BYTES;
use super::WalBounds;
use crate::storage::{RedbStorage, StorageError};
use ::redb::WriteTransaction;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use vcodr_core::{ClientContact, PersistOp, PersistSeq};

/// One commit's batch, owned: the apply thread applies it after the commit returned.
pub(super) type Batch = Vec<(PersistSeq, Vec<PersistOp>)>;

/// Logged batches handed to the apply thread and not yet applied, at most
/// (a checkpoint's worth: the log is at most two checkpoints ahead of redb's
/// durable state)...
pub const APPLY_QUEUE_BATCHES: usize = super::CHECKPOINT_BATCHES as usize;
/// ...and at most this many bytes of their records (a batch that does not
/// fit waits unless the queue is empty).
pub const APPLY_QUEUE_BYTES: u64 = super::CHECKPOINT_BYTES;

type Reply = SyncSender<Result<(), StorageError>>;

enum Job {
    /// A logged (acknowledged) batch: applied to the open transaction.
    Apply { lsn: u64, batch: Batch, bytes: u64 },
    /// A batch too large for a record, not logged: applied, then the open
    /// transaction is committed durably (a checkpoint); its commit waits.
    Large { batch: Batch, reply: Reply },
    /// Commit the open transaction: readers see every batch before this job.
    Show,
    /// Commit the open transaction (or an empty one) durably.
    Checkpoint { reply: Reply },
    /// Commit the open transaction, then save the contact table durably.
    SaveContacts {
        contacts: Vec<ClientContact>,
        reply: Reply,
    },
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Batches and record bytes of the queued `Apply` jobs.
    queued: (usize, u64),
    /// The apply thread waits for a job.
    asleep: bool,
    /// The sleeping apply thread is to start: a job it must not leave
    /// waiting was handed over (set with the notification, so a spurious
    /// wake-up of its condition variable is not taken for one).
    due: bool,
    /// Threads waiting for the apply thread (room, a reply aside).
    waiters: usize,
    /// LSN of the last logged batch applied to redb (and committed, if its
    /// application reached a bound): published once that job is done.
    applied: u64,
    /// LSN of the last logged batch redb has committed: what readers see.
    visible: u64,
    /// LSN of the last logged batch redb holds durably.
    checkpointed: u64,
    /// Batches in the open transaction.
    uncommitted: usize,
    /// redb write transactions committed (the replay at open excluded).
    redb_commits: u64,
    /// The first failure (of the log, redb or this thread): every later
    /// commit is refused naming it.
    failed: Option<String>,
    /// redb lacks acknowledged batches (an open transaction holding them was
    /// lost; the log has them): readers are refused too.
    readers_refused: bool,
    /// The thread has ended (stopped, or panicked).
    exited: bool,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    /// The apply thread waits here for jobs.
    work: Condvar,
    /// Waiters of the apply thread wait here.
    done: Condvar,
    /// The wake bounds of [`Shared::push`]: batches, record bytes.
    wake: (u64, u64),
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain counters behind: use them.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        st.waiters += 1;
        let mut st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
        st.waiters -= 1;
        st
    }

    /// Queues `job`. A logged batch wakes a sleeping thread only once the
    /// queued batches reach the wake bounds ([`WalBounds::apply_wake_batches`],
    /// [`WalBounds::apply_wake_bytes`]); any other job wakes it at once.
    fn push(&self, st: &mut State, job: Job) {
        let lazy = matches!(job, Job::Apply { .. })
            && (st.queued.0 as u64) < self.wake.0
            && st.queued.1 < self.wake.1;
        st.jobs.push_back(job);
        if !lazy {
            self.start(st);
        }
    }

    /// Wakes the thread if it sleeps with jobs queued.
    fn start(&self, st: &mut State) {
        if st.asleep && !st.jobs.is_empty() && !st.due {
            st.due = true;
            self.work.notify_one();
        }
    }
}

/// The log thread's handle on the apply thread; dropping it stops the
/// thread (queued batches are dropped: they are in the log) and waits for it.
pub(super) struct Applier {
    shared: Arc<Shared>,
    /// Named in refusals.
    dir: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("Applier")
            .field("queued", &st.queued)
            .field("applied", &st.applied)
            .field("visible", &st.visible)
            .field("checkpointed", &st.checkpointed)
            .field("failed", &st.failed)
            .finish()
    }
}

impl Applier {
    /// Starts the thread over `redb`, which durably holds every batch up to
    /// `lsn`; `dir` (the log's) is named in refusals.
    pub fn start(
        redb: Arc<RedbStorage>,
        lsn: u64,
        bounds: WalBounds,
        dir: PathBuf,
    ) -> Result<Applier, StorageError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                applied: lsn,
                visible: lsn,
                checkpointed: lsn,
                ..State::default()
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            wake: (bounds.apply_wake_batches, bounds.apply_wake_bytes),
        });
        let worker = Worker {
            redb,
            shared: shared.clone(),
            bounds,
            txn: None,
            applied: lsn,
            since_checkpoint: (0, 0),
            group_bytes: 0,
        };
        let thread = std::thread::Builder::new()
            .name("vcodr-apply".into())
            .spawn(move || worker.run())
            .map_err(|source| StorageError::Io {
                path: dir.clone(),
                action: "starting the redb apply thread",
                source,
            })?;
        Ok(Applier {
            shared,
            dir,
            thread: Some(thread),
        })
    }

    /// Hands over the logged batch `lsn` (its record `bytes` long), waiting
    /// for room in the queue first.
    pub fn apply(&self, lsn: u64, batch: Batch, bytes: u64) {
        let mut st = self.shared.lock();
        while !st.jobs.is_empty()
            && !st.exited
            && (st.queued.0 >= APPLY_QUEUE_BATCHES || st.queued.1 + bytes > APPLY_QUEUE_BYTES)
        {
            self.shared.start(&mut st);
            st = self.shared.wait(st);
        }
        st.queued.0 += 1;
        st.queued.1 += bytes;
        self.shared.push(&mut st, Job::Apply { lsn, batch, bytes });
    }

    /// Applies a batch too large for a record and commits redb durably.
    pub fn large(&self, batch: Batch) -> Result<(), StorageError> {
        self.call("apply a batch too large for the log", |reply| Job::Large {
            batch,
            reply,
        })
    }

    /// Commits redb durably: it then holds every batch handed over.
    pub fn checkpoint(&self) -> Result<(), StorageError> {
        self.call("checkpoint", |reply| Job::Checkpoint { reply })
    }

    /// Saves the contact table durably (after committing the open transaction).
    pub fn save_contacts(&self, contacts: Vec<ClientContact>) -> Result<(), StorageError> {
        self.call("save the contact table", |reply| Job::SaveContacts {
            contacts,
            reply,
        })
    }

    fn call(
        &self,
        action: &'static str,
        job: impl FnOnce(Reply) -> Job,
    ) -> Result<(), StorageError> {
        let (reply, answer) = sync_channel(1);
        {
            let mut st = self.shared.lock();
            if st.exited {
                return Err(self.refusal(&st, action));
            }
            self.shared.push(&mut st, job(reply));
        }
        answer.recv().unwrap_or_else(|_| {
            // The thread ended without answering: it panicked.
            Err(self.refusal(&self.shared.lock(), action))
        })
    }

    /// Returns once redb has committed every batch up to `lsn`, so that a
    /// read transaction begun now sees them; refuses once redb lacks an
    /// acknowledged batch.
    pub fn show(&self, lsn: u64) -> Result<(), StorageError> {
        let mut st = self.shared.lock();
        if st.visible < lsn && !st.readers_refused && !st.exited {
            self.shared.push(&mut st, Job::Show);
        }
        loop {
            if st.readers_refused || (st.exited && st.visible < lsn) {
                return Err(
                    self.refusal(&st, "read after a storage failure lost uncommitted batches")
                );
            }
            if st.visible >= lsn {
                return Ok(());
            }
            st = self.shared.wait(st);
        }
    }

    /// Asks for the open transaction to be committed, without waiting
    /// (nothing is committed if none is open then).
    pub fn show_later(&self) {
        let mut st = self.shared.lock();
        self.shared.push(&mut st, Job::Show);
    }

    /// Waits until the thread has done every job handed to it (or ended).
    pub fn wait_quiet(&self) {
        let mut st = self.shared.lock();
        self.shared.start(&mut st);
        while !(st.exited || (st.jobs.is_empty() && st.asleep)) {
            st = self.shared.wait(st);
        }
    }

    /// LSN of the last logged batch applied to redb (committed or in the
    /// open transaction).
    #[cfg(test)]
    pub fn applied(&self) -> u64 {
        self.shared.lock().applied
    }

    /// LSN of the last batch redb holds durably.
    pub fn checkpointed(&self) -> u64 {
        self.shared.lock().checkpointed
    }

    /// redb write transactions committed since open.
    pub fn redb_commits(&self) -> u64 {
        self.shared.lock().redb_commits
    }

    /// Batches applied to the open transaction, not yet committed.
    pub fn uncommitted(&self) -> usize {
        self.shared.lock().uncommitted
    }

    /// Records a failure of the log thread (the first cause is kept).
    pub fn fail(&self, why: String) {
        self.shared.lock().failed.get_or_insert(why);
    }

    /// The refusal of a commit after a failure, if there was one.
    pub fn refuse_after_failure(&self) -> Result<(), StorageError> {
        let st = self.shared.lock();
        match st.failed.is_some() || st.exited {
            false => Ok(()),
            true => Err(self.refusal(&st, "commit after an earlier storage failure")),
        }
    }

    fn refusal(&self, st: &State, action: &'static str) -> StorageError {
        StorageError::Io {
            path: self.dir.clone(),
            action,
            source: std::io::Error::other(
                st.failed
                    .clone()
                    .unwrap_or_else(|| "the redb apply thread has ended".into()),
            ),
        }
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.stop = true;
            self.shared.work.notify_one();
        }
        if let Some(t) = self.thread.take() {
            // A panic there was recorded by the thread itself.
            let _ = t.join();
        }
    }
}

/// The apply thread's side.
struct Worker {
    redb: Arc<RedbStorage>,
    shared: Arc<Shared>,
    bounds: WalBounds,
    /// The open transaction; `None` exactly when no batch is in it.
    txn: Option<WriteTransaction>,
    /// LSN of the last logged batch applied to it (or committed before).
    applied: u64,
    /// Batches applied and their record bytes since the last durable commit.
    since_checkpoint: (u64, u64),
    /// Bytes of the encoded batches in the open transaction.
    group_bytes: u64,
}

impl Worker {
    fn run(mut self) {
        let shared = self.shared.clone();
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            while let Some(job) = self.next() {
                self.job(job);
                let st = shared.lock();
                if st.waiters > 0 {
                    shared.done.notify_all();
                }
            }
        }));
        let mut st = shared.lock();
        if let Err(panic) = ran {
            let what = crate::driver::panic_message(panic.as_ref());
            tracing::error!(target: "vcodr::storage", panic = %what, "the redb apply thread panicked ({what})");
            st.failed
                .get_or_insert(format!("the redb apply thread panicked: {what}"));
            st.readers_refused = true;
        }
        st.exited = true;
        // Unanswered calls see their reply dropped.
        st.jobs.clear();
        shared.done.notify_all();
    }

    /// The next job, `None` once the store is dropped.
    fn next(&self) -> Option<Job> {
        let mut st = self.shared.lock();
        loop {
            if st.stop {
                return None;
            }
            if let Some(job) = st.jobs.pop_front() {
                if let Job::Apply { bytes, .. } = &job {
                    st.queued.0 -= 1;
                    st.queued.1 -= bytes;
                }
                if st.waiters > 0 {
                    self.shared.done.notify_all();
                }
                return Some(job);
            }
            st.asleep = true;
            if st.waiters > 0 {
                self.shared.done.notify_all();
            }
            while !st.due && !st.stop {
                st = self.shared.work.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.asleep = false;
            st.due = false;
        }
    }

    fn job(&mut self, job: Job) {
        match job {
            Job::Apply { lsn, batch, bytes } => {
                if self.shared.lock().readers_refused {
                    return;
                }
                if self.apply(&batch, &format!("logged batch {lsn}")).is_err() {
                    return;
                }
                self.applied = lsn;
                let uncommitted = {
                    let mut st = self.shared.lock();
                    st.uncommitted += 1;
                    st.uncommitted as u64
                };
                // The checkpoint counts records, the group encoded batches.
                let (batches, ckpt_bytes) = self.since_checkpoint;
                self.since_checkpoint = (batches + 1, ckpt_bytes + bytes);
                self.group_bytes += bytes - RECORD_HEADER_BYTES as u64;
                let durable = batches + 1 >= self.bounds.checkpoint_batches
                    || ckpt_bytes + bytes >= self.bounds.checkpoint_bytes;
                let full = uncommitted >= self.bounds.apply_group_batches
                    || self.group_bytes >= self.bounds.apply_group_bytes;
                if durable || full {
                    // A failure is recorded; the next commit reports it.
                    let _ = self.commit(durable);
                }
                self.shared.lock().applied = lsn;
            }
            Job::Large { batch, reply } => {
                let done = self.refuse().and_then(|()| {
                    self.apply(&batch, "a batch too large for the log")?;
                    self.commit(true)
                });
                let _ = reply.send(done);
            }
            Job::Show => {
                if self.txn.is_some() && !self.shared.lock().readers_refused {
                    let _ = self.commit(false);
                }
            }
            Job::Checkpoint { reply } => {
                let done = self.refuse().and_then(|()| self.commit(true));
                let _ = reply.send(done);
            }
            Job::SaveContacts { contacts, reply } => {
                let done = self.refuse().and_then(|()| self.save_contacts(&contacts));
                let _ = reply.send(done);
            }
        }
    }

    /// Refuses a job that waits for its outcome after a failure.
    fn refuse(&self) -> Result<(), StorageError> {
        let st = self.shared.lock();
        match &st.failed {
            None => Ok(()),
            Some(why) => Err(StorageError::Io {
                path: self.redb.path().to_path_buf(),
                action: "write after an earlier storage failure",
                source: std::io::Error::other(why.clone()),
            }),
        }
    }

    /// Applies `batch` to the open transaction (begun if there is none). On
    /// error the transaction, with the acknowledged batches in it, is lost.
    fn apply(&mut self, batch: &Batch, what: &str) -> Result<(), StorageError> {
        let txn = match self.txn.take() {
            Some(txn) => txn,
            None => match self.redb.begin_logged() {
                Ok(txn) => txn,
                Err(e) => return Err(self.lost(None, what, e)),
            },
        };
        match self.redb.apply_logged(&txn, batch) {
            Ok(()) => {
                self.txn = Some(txn);
                Ok(())
            }
            Err(e) => Err(self.lost(Some(txn), what, e)),
        }
    }

    /// Aborts `txn` after applying `what` to it failed with `e`; records the
    /// failure. Returns `e`.
    fn lost(&mut self, txn: Option<WriteTransaction>, what: &str, e: StorageError) -> StorageError {
        if let Some(txn) = txn {
            self.redb.abort_logged(txn);
        }
        let mut st = self.shared.lock();
        let n = st.uncommitted;
        st.uncommitted = 0;
        self.group_bytes = 0;
        st.failed.get_or_insert(format!(
            "applying {what} to redb failed: {e} (it and the {n} batches before it in the open transaction are in the log, not in redb)"
        ));
        st.readers_refused = true;
        e
    }

    /// Commits the open transaction (or, if `durable`, an empty one when
    /// none is open) with the LSN of the last applied batch. Whatever the
    /// outcome, no transaction is open afterwards.
    fn commit(&mut self, durable: bool) -> Result<(), StorageError> {
        let lsn = self.applied;
        let result = match self.txn.take() {
            Some(txn) => self.redb.commit_logged(txn, lsn, durable),
            None if durable => self
                .redb
                .begin_logged()
                .and_then(|txn| self.redb.commit_logged(txn, lsn, durable)),
            None => return Ok(()),
        };
        self.group_bytes = 0;
        let mut st = self.shared.lock();
        let acknowledged = st.uncommitted;
        st.uncommitted = 0;
        match result {
            Ok(()) => {
                st.redb_commits += 1;
                st.visible = lsn;
                if durable {
                    st.checkpointed = lsn;
                    self.since_checkpoint = (0, 0);
                }
                Ok(())
            }
            Err(e) => {
                let why = match acknowledged {
                    0 => e.to_string(),
                    n => format!(
                        "{e} (the {n} batches acknowledged into it are in the log, not in redb)"
                    ),
                };
                st.failed.get_or_insert(why);
                if acknowledged > 0 {
                    st.readers_refused = true;
                }
                Err(e)
            }
        }
    }

    /// A durable redb commit of the contact table, after the open
    /// transaction's: it makes every applied batch durable in redb too.
    fn save_contacts(&mut self, contacts: &[ClientContact]) -> Result<(), StorageError> {
        self.commit(false)?;
        match self.redb.write_contacts(contacts) {
            Ok(()) => {
                let mut st = self.shared.lock();
                st.redb_commits += 1;
                st.checkpointed = st.visible;
                self.since_checkpoint = (0, 0);
                Ok(())
            }
            Err(e) => {
                // Later commits fail naming this cause (redb itself would
                // only say that a previous I/O error occurred).
                self.shared.lock().failed.get_or_insert(e.to_string());
                Err(e)
            }
        }
    }
}
