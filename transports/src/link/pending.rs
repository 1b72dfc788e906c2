//! What backends share below the link handles: one frame held whole in one
//! buffer (a datagram, an in-memory packet), and the requests of a link
//! awaiting their answer by id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;
use vcodr_core::codec::{self, DecodeError, FRAME_HEADER_LEN};

/// Decodes a whole frame held in one buffer, refusing trailing bytes.
pub(crate) fn decode_whole_frame<T: serde::de::DeserializeOwned>(
    buf: &[u8],
    max_frame_bytes: usize,
) -> Result<T, DecodeError> {
    codec::decode_payload(whole_frame_payload(buf, max_frame_bytes)?)
}

/// The payload of `buf`, which must hold exactly one frame.
pub(crate) fn whole_frame_payload(
    buf: &[u8],
    max_frame_bytes: usize,
) -> Result<&[u8], DecodeError> {
    let len = codec::decode_header(buf, max_frame_bytes)?;
    let end = FRAME_HEADER_LEN + len;
    if buf.len() < end {
        return Err(DecodeError::Truncated {
            needed: end,
            have: buf.len(),
        });
    }
    if buf.len() > end {
        return Err(DecodeError::TrailingBytes {
            extra: buf.len() - end,
        });
    }
    Ok(&buf[FRAME_HEADER_LEN..])
}

/// Requests of one link awaiting their answer, by id: what a backend that
/// matches answers to requests itself (mem, QUIC datagrams) keeps.
pub(crate) struct PendingRequests<A> {
    next_id: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<A>>>,
}

impl<A> Default for PendingRequests<A> {
    fn default() -> Self {
        PendingRequests {
            next_id: AtomicU64::new(0),
            waiting: Mutex::new(HashMap::new()),
        }
    }
}

impl<A> PendingRequests<A> {
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<A>>> {
        // Only inserts and removes happen under this lock: a map poisoned by
        // a panic elsewhere is still intact.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new request id and where its answer will arrive; the id is
    /// forgotten when the slot is dropped (answered, timed out, cancelled).
    pub(crate) fn register(&self) -> (PendingSlot<'_, A>, oneshot::Receiver<A>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        (PendingSlot { requests: self, id }, rx)
    }

    /// Hands `answer` to request `id`, if it still waits.
    pub(crate) fn answer(&self, id: u64, answer: A) {
        if let Some(tx) = self.lock().remove(&id) {
            let _ = tx.send(answer);
        }
    }
}

/// One registered request ([`PendingRequests::register`]).
pub(crate) struct PendingSlot<'a, A> {
    requests: &'a PendingRequests<A>,
    pub(crate) id: u64,
}

impl<A> Drop for PendingSlot<'_, A> {
    fn drop(&mut self) {
        self.requests.lock().remove(&self.id);
    }
}
