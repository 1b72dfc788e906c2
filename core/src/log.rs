//! The in-memory window of the replicated log.

use crate::types::*;
use std::collections::VecDeque;

/// A contiguous run of entries `base_index + 1 ..= last_index()`, plus the
/// epoch of the entry just before it (`base_epoch`), so that any append can be
/// checked against its `(prev_index, prev_epoch)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Log {
    entries: VecDeque<Entry>,
    base_index: Index,
    base_epoch: Epoch,
}

impl Log {
    /// An empty log whose previous entry is `(index, epoch)` (a snapshot point).
    pub fn starting_after(index: Index, epoch: Epoch) -> Self {
        Log {
            entries: VecDeque::new(),
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
        self.entries.push_back(entry);
    }

    /// Drops every entry after `index` (which must not be below the base).
    pub fn truncate_after(&mut self, index: Index) {
        assert!(index >= self.base_index, "cannot truncate below the window");
        self.entries.truncate((index - self.base_index) as usize);
    }

    /// Drops entries from the front until at most `keep` remain, never past `upto`.
    /// Returns the new base index.
    pub fn trim_front(&mut self, keep: usize, upto: Index) -> Index {
        while self.entries.len() > keep && self.base_index < upto {
            // `len() > keep >= 0`, so there is a front entry.
            let e = self.entries.pop_front().expect("non-empty");
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
        assert_eq!(log.trim_front(2, 7), 7);
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
}
