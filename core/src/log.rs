//! The in-memory window of the replicated log.

use crate::types::*;
use std::collections::VecDeque;

/// A contiguous run of entries `base_index + 1 ..= last_index()`, plus the
/// epoch of the entry just before it (`base_epoch`), so that any append can be
/// checked against its `(prev_index, prev_epoch)`. It also keeps the running
/// total of the entries' sizes ([`Entry::approx_size`]), so that the bytes
/// between two indexes — the window held, what is in flight to the standby,
/// what waits to be committed — cost O(1).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Log {
    entries: VecDeque<Entry>,
    /// `ends[i]`: total size of every entry up to and including `entries[i]`,
    /// counted from the log's creation (so trimming the front keeps it valid).
    ends: VecDeque<u64>,
    /// Total size of every entry before `entries[0]`.
    base_bytes: u64,
    base_index: Index,
    base_epoch: Epoch,
}

impl Log {
    /// An empty log whose previous entry is `(index, epoch)` (a snapshot point).
    pub fn starting_after(index: Index, epoch: Epoch) -> Self {
        Log {
            entries: VecDeque::new(),
            ends: VecDeque::new(),
            base_bytes: 0,
            base_index: index,
            base_epoch: epoch,
        }
    }

    /// Index of the entry just before the first one held.
    pub fn base_index(&self) -> Index {
        self.base_index
    }

    pub fn last_index(&self) -> Index {
        self.base_index + self.entries.len() as u64
    }

    pub fn last_epoch(&self) -> Epoch {
        self.entries.back().map_or(self.base_epoch, |e| e.epoch)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Total size of the entries held.
    pub fn bytes(&self) -> u64 {
        self.end_bytes(self.last_index()) - self.base_bytes
    }

    /// Total size of the entries after `after` held in the window (all of
    /// them if `after` is below the window).
    pub fn bytes_after(&self, after: Index) -> u64 {
        let from = if after <= self.base_index {
            self.base_bytes
        } else {
            self.end_bytes(after)
        };
        self.end_bytes(self.last_index()).saturating_sub(from)
    }

    /// Running total up to and including the entry at `index` (within the window).
    fn end_bytes(&self, index: Index) -> u64 {
        if index <= self.base_index {
            return self.base_bytes;
        }
        let i = ((index - self.base_index) as usize).min(self.ends.len());
        if i == 0 {
            self.base_bytes
        } else {
            self.ends[i - 1]
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The epoch of the entry at `index`, if this window knows it.
    pub fn epoch_at(&self, index: Index) -> Option<Epoch> {
        if index == self.base_index {
            return Some(self.base_epoch);
        }
        self.get(index).map(|e| e.epoch)
    }

    pub fn get(&self, index: Index) -> Option<&Entry> {
        if index <= self.base_index {
            return None;
        }
        self.entries.get((index - self.base_index - 1) as usize)
    }

    /// Appends the next entry. Panics if it does not follow the last one: that is a bug.
    pub fn push(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index() + 1,
            "log entries must be contiguous"
        );
        let end = self.end_bytes(self.last_index()) + entry.approx_size() as u64;
        self.ends.push_back(end);
        self.entries.push_back(entry);
    }

    /// Drops every entry after `index` (which must not be below the base).
    pub fn truncate_after(&mut self, index: Index) {
        assert!(index >= self.base_index, "cannot truncate below the window");
        let keep = (index - self.base_index) as usize;
        self.entries.truncate(keep);
        self.ends.truncate(keep);
    }

    /// Drops entries from the front until at most `keep` remain and they hold
    /// at most `keep_bytes`, never past `upto`. Returns the new base index.
    pub fn trim_front(&mut self, keep: usize, keep_bytes: u64, upto: Index) -> Index {
        while (self.entries.len() > keep || self.bytes() > keep_bytes) && self.base_index < upto {
            // `base_index < upto <= last_index()`, so there is a front entry.
            let e = self.entries.pop_front().expect("non-empty");
            self.base_bytes = self.ends.pop_front().expect("one size per entry");
            self.base_index = e.index;
            self.base_epoch = e.epoch;
        }
        self.base_index
    }

    /// Entries from `from` up to `upto`, at most `max_entries` and about `max_bytes`
    /// (always at least one entry if any is available).
    pub fn batch(
        &self,
        from: Index,
        upto: Index,
        max_entries: usize,
        max_bytes: usize,
    ) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut i = from;
        while i <= upto && out.len() < max_entries {
            let Some(e) = self.get(i) else { break };
            bytes += e.approx_size();
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push(e.clone());
            i += 1;
        }
        out
    }

    /// Entries after `index`, in order.
    pub fn iter_after(&self, index: Index) -> impl Iterator<Item = &Entry> {
        let skip = (index.saturating_sub(self.base_index) as usize).min(self.entries.len());
        self.entries.range(skip..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(epoch: Epoch, index: Index) -> Entry {
        Entry {
            epoch,
            index,
            op: Op::Put {
                key: format!("k{index}"),
                value: vec![1; 10],
            },
        }
    }

    #[test]
    fn window_tracks_base_and_epochs() {
        let mut log = Log::starting_after(5, 2);
        assert_eq!((log.last_index(), log.last_epoch()), (5, 2));
        for i in 6..=10 {
            log.push(put(3, i));
        }
        assert_eq!(log.epoch_at(5), Some(2));
        assert_eq!(log.epoch_at(8), Some(3));
        assert_eq!(log.epoch_at(4), None);
        assert_eq!(log.trim_front(2, u64::MAX, 7), 7);
        assert_eq!((log.base_index(), log.len()), (7, 3));
        assert_eq!(log.batch(8, 10, 2, 1 << 20).len(), 2);
        assert_eq!(
            log.batch(8, 10, 10, 1).len(),
            1,
            "at least one entry even above the byte cap"
        );
        log.truncate_after(8);
        assert_eq!(log.last_index(), 8);
    }

    #[test]
    #[should_panic(expected = "contiguous")]
    fn gaps_are_bugs() {
        let mut log = Log::default();
        log.push(put(1, 2));
    }

    fn sized(index: Index, bytes: usize) -> Entry {
        Entry {
            epoch: 1,
            index,
            op: Op::Put {
                key: String::new(),
                value: vec![0; bytes],
            },
        }
    }

    #[test]
    fn sizes_are_counted_through_pushes_truncations_and_trims() {
        let mut log = Log::starting_after(0, 0);
        for i in 1..=10 {
            log.push(sized(i, 100));
        }
        let one = sized(1, 100).approx_size() as u64;
        assert_eq!(log.bytes(), 10 * one);
        assert_eq!(log.bytes_after(4), 6 * one);
        assert_eq!(log.bytes_after(0), 10 * one);
        log.truncate_after(8);
        assert_eq!((log.last_index(), log.bytes()), (8, 8 * one));
        log.push(sized(9, 1_000));
        assert_eq!(log.bytes_after(8), sized(9, 1_000).approx_size() as u64);
        // By count: keep 5; by bytes: keep at most the big one and one more.
        assert_eq!(log.trim_front(5, u64::MAX, 9), 4);
        assert_eq!(log.bytes_after(3), log.bytes());
        let big = sized(9, 1_000).approx_size() as u64;
        assert_eq!(log.trim_front(100, big + one, 9), 7);
        assert_eq!(log.bytes(), big + one);
        // Never past `upto`, whatever the sizes.
        assert_eq!(log.trim_front(0, 0, 7), 7);
        assert_eq!(log.bytes_after(100), 0);
    }
}
