//! The monitoring cache (SPEC §4, §5): samples kept until the active
//! acknowledges them, bounded in bytes (the oldest dropped and counted), and
//! flushed to the followed server in order, one batch at a time.

use super::{Edge, EdgeEvent};
use crate::msg::*;
use crate::types::*;

impl Edge {
    pub(super) fn on_monitoring_ack(&mut self, i: usize, up_to_seq: u64) {
        if self.following != Some(i) {
            return;
        }
        while self.cache.front().is_some_and(|s| s.seq <= up_to_seq) {
            // `front()` was just checked.
            let s = self.cache.pop_front().expect("checked");
            self.cache_bytes -= s.payload.len();
        }
        if self.inflight.is_some_and(|(last, _)| last <= up_to_seq) {
            self.inflight = None;
        }
        self.event(EdgeEvent::SamplesAcked { up_to_seq });
        self.flush_samples();
    }

    pub(super) fn on_sample(&mut self, payload: Vec<u8>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.cache_bytes += payload.len();
        self.cache.push_back(Sample { seq, payload });
        let mut dropped = 0;
        while self.cache_bytes > self.cfg.cache_max_bytes {
            // The cache holds at least the sample just pushed.
            let s = self.cache.pop_front().expect("non-empty");
            self.cache_bytes -= s.payload.len();
            dropped += 1;
        }
        if dropped > 0 {
            self.dropped += dropped;
            self.event(EdgeEvent::SamplesDropped { count: dropped });
        }
        self.flush_samples();
    }

    /// Sends the oldest cached samples to the followed server, one batch at a time.
    pub(super) fn flush_samples(&mut self) {
        let Some(i) = self.following else { return };
        if self.inflight.is_some() || self.cache.is_empty() {
            return;
        }
        let samples: Vec<Sample> = self
            .cache
            .iter()
            .take(self.cfg.batch_max_samples)
            .cloned()
            .collect();
        let last = samples.last().map_or(0, |s| s.seq);
        self.inflight = Some((last, 0));
        self.send(i, EdgeMsg::Monitoring { samples });
    }
}
