//! The storage thread: commits the core's persist requests in groups and
//! runs reads between commits; after each commit it runs the core's
//! `Persisted` itself ([`Handle`]), so a commit costs no hand-off to
//! another thread. A failed commit stops the server. The thread ends when
//! the driver stops (its job queue closes).

use super::*;
use std::sync::mpsc::RecvTimeoutError;

/// Runs the thread; a panic in it (a bug in a store or a read) is a failed
/// store: the driver stops as after a failed commit.
pub(super) fn run(
    storage: Box<dyn Storage>,
    jobs: std::sync::mpsc::Receiver<StorageJob>,
    driver: WeakHandle,
) {
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        serve(storage, jobs, &driver)
    }));
    if let Err(panic) = ran {
        let what = panic_message(panic.as_ref());
        tracing::error!(target: "vcodr::storage", panic = %what, "the storage thread panicked ({what}); the server stops (fail-stop)");
        on_driver(&driver, |d| {
            d.on_storage_failed(format!("the storage thread panicked: {what}"))
        });
    }
}

/// Runs `f` on the driver while it exists; `None` once it is gone or stopped.
fn on_driver<R>(driver: &WeakHandle, f: impl FnOnce(&mut Driver) -> R) -> Option<R> {
    driver.upgrade()?.with_driver(f)
}

fn serve(
    mut storage: Box<dyn Storage>,
    jobs: std::sync::mpsc::Receiver<StorageJob>,
    driver: &WeakHandle,
) {
    let metrics = driver.metrics.clone();
    let mut pending: Vec<StorageJob> = Vec::new();
    // Whether a commit ran since the store last had an idle moment.
    let mut busy = false;
    loop {
        // Whether this turn's first job found the thread waiting for work.
        let mut woke = false;
        if pending.is_empty() {
            let job = match jobs.try_recv() {
                Ok(j) => Ok(j),
                Err(_) if busy => {
                    woke = true;
                    jobs.recv_timeout(IDLE_AFTER)
                }
                Err(_) => {
                    woke = true;
                    jobs.recv().map_err(|_| RecvTimeoutError::Disconnected)
                }
            };
            match job {
                Ok(j) => pending.push(j),
                Err(RecvTimeoutError::Timeout) => {
                    busy = false;
                    if let Err(e) = storage.idle() {
                        fail(driver, &e, "idle work (committing the state file)", 0);
                        return;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // The driver is gone: leave the state file up to date (a
                    // failure here changes nothing the log does not replay).
                    if busy {
                        if let Err(e) = storage.idle() {
                            tracing::warn!(target: "vcodr::storage", error = %e, "committing the state file at stop failed: {e}; the log replays it at the next start");
                        }
                    }
                    return;
                }
            }
        }
        // Group commit: everything queued while the previous commit ran.
        pending.extend(jobs.try_iter());
        if woke && lingers(&pending) {
            // Commit markers alone that woke the thread: ride with the next
            // job rather than cost a commit (a wake-up, a log write, a redb
            // apply) of their own. Markers queued while a commit ran go at
            // once: they keep the group-commit cycle turning.
            match jobs.recv_timeout(MARKER_LINGER) {
                Ok(j) => {
                    pending.push(j);
                    pending.extend(jobs.try_iter());
                }
                // Alone after all, or the driver is gone (the next turn sees it).
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            }
        }
        let mut batch = Vec::new();
        let mut rest = Vec::new();
        for j in pending.drain(..) {
            match j {
                StorageJob::Commit(seq, ops) if rest.is_empty() => batch.push((seq, ops)),
                other => rest.push(other),
            }
        }
        if !batch.is_empty() {
            let started = Instant::now();
            let entries = batch
                .iter()
                .flat_map(|(_, ops)| ops)
                .map(|op| {
                    if let PersistOp::Append(e) = op {
                        e.len() as u64
                    } else {
                        0
                    }
                })
                .sum();
            let up_to = batch.last().map_or(0, |(s, _)| *s);
            let requests = batch.len();
            busy = true;
            match storage.commit_owned(batch) {
                Ok(()) => {
                    metrics.persist_batches.fetch_add(1, Relaxed);
                    metrics.persist_requests.fetch_add(requests as u64, Relaxed);
                    if on_driver(driver, |d| d.on_persisted(up_to, entries, started)).is_none() {
                        return;
                    }
                }
                Err(e) => {
                    fail(driver, &e, "commit", requests);
                    return;
                }
            }
        }
        // Reads and contact saves keep their order relative to later commits.
        let mut rest = rest.into_iter();
        while let Some(j) = rest.next() {
            match j {
                StorageJob::Read(f) => f(storage.as_ref()),
                StorageJob::ReadSamples {
                    ranges,
                    max_bytes,
                    max_samples,
                } => match storage.read_samples(&ranges, max_bytes, max_samples) {
                    Ok(chunks) => {
                        on_driver(driver, |d| d.input(Input::SamplesRead { chunks }));
                    }
                    Err(e) => {
                        // The core waits for this read: a disk that cannot
                        // serve it is a failed disk (fail-stop).
                        fail(driver, &e, "read of monitoring samples for the standby", 0);
                        return;
                    }
                },
                StorageJob::SaveContacts(c) => {
                    if let Err(e) = storage.save_contacts(&c) {
                        tracing::warn!(error = %e, "saving the client contact table failed");
                    }
                }
                commit @ StorageJob::Commit(..) => {
                    pending.push(commit);
                    pending.extend(rest.by_ref());
                }
            }
        }
    }
}

/// Whether the queued jobs are commits of which no op needs an fsync
/// ([`PersistOp::needs_fsync`]: commit markers, compactions, sample
/// pruning), and nothing else: if they woke the thread, they wait up to
/// [`MARKER_LINGER`] for the next job. Their durability comes with the next
/// synced batch in any case; at one writer every write's commit marker was
/// otherwise a commit of its own, half of the active's commits.
fn lingers(pending: &[StorageJob]) -> bool {
    !pending.is_empty()
        && pending.iter().all(|j| match j {
            StorageJob::Commit(_, ops) => !ops.iter().any(PersistOp::needs_fsync),
            _ => false,
        })
}

/// How long commit markers alone wait for the next job ([`lingers`]):
/// longer than a sync-replicated write takes on loopback, short beside any
/// timer of the core (what waits for them is told at most this much later).
const MARKER_LINGER: Duration = Duration::from_millis(1);

/// How long the queue stays empty before the store is told it is idle
/// ([`Storage::idle`]: [`crate::storage::WalStorage`] commits its open redb
/// transaction then, so a quiet server's state file is up to date).
const IDLE_AFTER: Duration = Duration::from_millis(100);

/// A commit (or the idle work, or a read the core waits for) failed: nothing after it may be acknowledged,
/// and what the disk holds is no longer what the core believes (the batch
/// may be durable or not): fail-stop.
fn fail(
    driver: &WeakHandle,
    e: &crate::storage::StorageError,
    what: &str,
    persist_requests: usize,
) {
    let os_error = os_error(e);
    tracing::error!(
        target: "vcodr::storage",
        error = %e,
        os_error = %os_error.as_deref().unwrap_or("none"),
        persist_requests,
        "storage {what} failed: {e}; the server stops (fail-stop) and recovers from disk at its restart"
    );
    on_driver(driver, |d| d.on_storage_failed(e.to_string()));
}

/// The operating-system error under a storage error, if any (e.g. `No space
/// left on device (os error 28)`).
fn os_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.to_string());
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(seq: PersistSeq, ops: Vec<PersistOp>) -> StorageJob {
        StorageJob::Commit(seq, ops)
    }

    #[test]
    fn only_commits_that_need_no_fsync_wait_for_the_next_job() {
        let marker = || commit(1, vec![PersistOp::Commit(7)]);
        let tidy = commit(
            2,
            vec![
                PersistOp::Compact { below: 3 },
                PersistOp::PruneSamples {
                    client: "e1".into(),
                    below_seq: 4,
                },
            ],
        );
        assert!(lingers(&[marker()]));
        assert!(lingers(&[marker(), tidy]));

        // A write's entry, or anything but a commit, goes at once.
        let append = commit(3, vec![PersistOp::Commit(7), PersistOp::Append(vec![])]);
        assert!(!lingers(&[marker(), append]));
        assert!(!lingers(&[marker(), StorageJob::SaveContacts(vec![])]));
        assert!(!lingers(&[]));
    }
}
