//! Copying monitoring samples to a standby after a snapshot (SPEC §4).
//!
//! A snapshot carries each client's highest sample seq, not the samples:
//! they live only in storage, bounded by `retain_samples_per_client` per
//! client, and the core holds none of them. So a standby that installs a
//! snapshot knows, per client, the highest seq it stores itself (its applied
//! `sample_seq` before the install) and the active's (the snapshot's); what
//! lies between — within the retention window — it copies from the active:
//!
//! - the standby keeps the ranges it lacks durably ([`PersistOp::SamplesToCopy`],
//!   written with the snapshot) and pulls them, a few ranges per
//!   [`PeerMsg::SamplesPull`], one pull at a time (again on every peer tick
//!   until answered, and after a restart);
//! - the active has its storage read them ([`Output::ReadSamples`], one read
//!   outstanding, bounded by `max_batch_bytes` and `max_batch_entries`) and
//!   answers with a [`PeerMsg::SamplesBatch`] of what it holds there;
//! - the standby stores them without a log entry, each once
//!   ([`PersistOp::StoreSamples`], which also advances the durable ranges),
//!   and once that is durable pulls the next ones;
//! - when nothing is left it says so (an empty pull naming its applied
//!   index); the active, which asks with an empty batch on each tick until
//!   told, reports `STANDBY_RUNNING` only then, and a planned switchover
//!   waits for it. Samples newer than the snapshot come through the log.
//!
//! Every message goes through the same admission as any peer message (the
//! pinned peer of this pair); the active answers only as ACTIVE at its
//! epoch, the standby takes batches only as a synced STANDBY at its epoch,
//! and only for ranges it still lacks.

use super::persist::AfterDurable;
use super::Server;
use crate::api::*;
use crate::config::mutant;
use crate::msg::*;
use crate::types::*;
use std::collections::BTreeMap;

impl Server {
    /// Sample ranges this standby still copies from its active, in order.
    pub fn samples_to_copy(&self) -> impl Iterator<Item = SampleRange> + '_ {
        self.samples_to_copy
            .iter()
            .map(|((client, after_seq), up_to_seq)| SampleRange {
                client: client.clone(),
                after_seq: *after_seq,
                up_to_seq: *up_to_seq,
            })
    }

    /// The standby installs `snap` over what it had applied (`before`): the
    /// ranges it lacks are, per client of the snapshot, those above its own
    /// highest seq, and those it still lacked from an earlier copy, up to the
    /// snapshot's seq and within the retention window. Staged after the
    /// snapshot, in the same persist request.
    pub(super) fn plan_sample_copy(&mut self, before: &BTreeMap<ClientId, u64>, snap: &Snapshot) {
        let retain = self.cfg.retain_samples_per_client;
        let mut plan: BTreeMap<(ClientId, u64), u64> = BTreeMap::new();
        let old = std::mem::take(&mut self.samples_to_copy);
        for ((client, after), up_to) in old {
            let Some(&want) = snap.sample_seq.get(&client) else {
                continue;
            };
            let after = after.max(want.saturating_sub(retain));
            let up_to = up_to.min(want);
            if after < up_to {
                plan.insert((client, after), up_to);
            }
        }
        for (client, &want) in &snap.sample_seq {
            let have = before.get(client).copied().unwrap_or(0);
            let after = have.max(want.saturating_sub(retain));
            if after < want {
                plan.insert((client.clone(), after), want);
            }
        }
        if mutant!(self.cfg, NoSampleCopy) {
            plan.clear();
        }
        self.samples_to_copy = plan;
        let ranges: Vec<SampleRange> = self.samples_to_copy().collect();
        self.staged.push(PersistOp::SamplesToCopy(ranges));
    }

    /// Standby: asks for the first ranges still to copy, or, when none is
    /// left, tells the active that the copy is complete.
    pub(super) fn pull_samples(&mut self) {
        if !self
            .role
            .standby()
            .is_some_and(|s| s.synced && s.snapshot_rx.is_none())
        {
            return;
        }
        let ranges: Vec<SampleRange> = self
            .samples_to_copy()
            .take(SAMPLE_PULL_RANGES_MAX)
            .collect();
        let applied_index = self.applied.index;
        self.send_peer(PeerMsg::SamplesPull {
            ranges,
            applied_index,
        });
    }

    /// Standby, on its peer tick: a pull not answered yet is asked again
    /// (also the first one after a restart).
    pub(super) fn tick_sample_copy(&mut self) {
        let promoting = self.role.standby().is_some_and(|s| s.promotion.is_some());
        if !self.samples_to_copy.is_empty() && !promoting {
            self.pull_samples();
        }
    }

    pub(super) fn on_samples_batch(&mut self, epoch: Epoch, chunks: Vec<SampleChunk>) {
        if self.role() != Role::Standby
            || epoch != self.epoch
            || self.dr_state == DrState::StandbyCandidate
        {
            return self.not_expected("SamplesBatch");
        }
        if !self.role.synced() || self.role.standby().is_some_and(|s| s.snapshot_rx.is_some()) {
            // Before the snapshot is installed there is nothing to copy into.
            return;
        }
        if chunks.is_empty() {
            // The active asks whether the copy is complete. While it is not,
            // the peer tick keeps pulling: nothing to add.
            if self.samples_to_copy.is_empty() {
                self.pull_samples();
            }
            return;
        }
        if chunks.len() > SAMPLE_PULL_RANGES_MAX {
            self.event(Event::PeerIgnored {
                kind: "SamplesBatch",
                reason: format!(
                    "{} chunks, above the {SAMPLE_PULL_RANGES_MAX} one pull asks for",
                    chunks.len()
                ),
            });
            return;
        }
        // Only chunks for a range still lacked: a late answer to an earlier
        // pull finds its range moved on and is dropped (never stored twice).
        let mut take = Vec::new();
        for c in chunks {
            let Some(&up_to_seq) = self.samples_to_copy.get(&(c.client.clone(), c.after_seq))
            else {
                continue;
            };
            let range = SampleRange {
                client: c.client.clone(),
                after_seq: c.after_seq,
                up_to_seq,
            };
            if !c.answers(&range) {
                self.event(Event::PeerIgnored {
                    kind: "SamplesBatch",
                    reason: format!(
                        "a chunk of {:?} ({}, {}] does not answer the range ({}, {}] still to copy",
                        c.client, c.after_seq, c.through_seq, range.after_seq, range.up_to_seq
                    ),
                });
                return;
            }
            take.push((c, up_to_seq));
        }
        if take.is_empty() {
            return;
        }
        for (c, up_to_seq) in take {
            self.samples_to_copy
                .remove(&(c.client.clone(), c.after_seq));
            if c.through_seq < up_to_seq {
                self.samples_to_copy
                    .insert((c.client.clone(), c.through_seq), up_to_seq);
            }
            self.samples_stored_since_start += c.samples.len() as u64;
            self.staged.push(PersistOp::StoreSamples(c));
        }
        // The next pull, once these are durable, acknowledges them.
        self.staged_after.push(AfterDurable::SamplesStored);
    }

    /// Active: the standby asks for samples, or says its copy is complete.
    pub(super) fn on_samples_pull(&mut self, ranges: Vec<SampleRange>, applied_index: Index) {
        let max_bytes = self.cfg.max_batch_bytes;
        let max_samples = self.cfg.max_batch_entries;
        if self.role() != Role::Active {
            return self.not_expected("SamplesPull");
        }
        self.on_standby_heard();
        let Some(r) = self.role.replica_mut() else {
            return;
        };
        if ranges.is_empty() {
            // Only a word about the copy of the latest snapshot counts: an
            // older one (a duplicate from before it) names a lower index.
            if r.samples_unconfirmed && applied_index >= r.samples_confirm_from {
                r.samples_unconfirmed = false;
                self.after_standby_progress();
            }
            return;
        }
        let malformed = if ranges.len() > SAMPLE_PULL_RANGES_MAX {
            Some(format!(
                "{} ranges, above the {SAMPLE_PULL_RANGES_MAX} a pull may ask for",
                ranges.len()
            ))
        } else {
            ranges
                .iter()
                .find(|x| x.after_seq >= x.up_to_seq)
                .map(|x| format!("an empty range ({}, {}]", x.after_seq, x.up_to_seq))
        };
        if let Some(reason) = malformed {
            self.event(Event::PeerIgnored {
                kind: "SamplesPull",
                reason,
            });
            return;
        }
        if r.reading_samples {
            // One read at a time: the standby asks again on its next tick.
            return;
        }
        r.reading_samples = true;
        self.out(Output::ReadSamples {
            ranges,
            max_bytes,
            max_samples,
        });
    }

    /// Active: what the storage read for the standby's pull.
    pub(super) fn on_samples_read(&mut self, chunks: Vec<SampleChunk>) {
        let Some(r) = self.role.replica_mut() else {
            return;
        };
        if !r.reading_samples {
            return;
        }
        r.reading_samples = false;
        // A read of valid ranges answers at least its first range; an empty
        // batch would mean "is your copy complete?".
        if !chunks.is_empty() {
            self.send_peer(PeerMsg::SamplesBatch { chunks });
        }
    }

    /// Active, on its peer tick: until the standby said its copy of the
    /// latest snapshot is complete, ask it.
    pub(super) fn tick_ask_sample_copy(&mut self) {
        let ask = self.role.replica().is_some_and(|r| {
            r.samples_unconfirmed && !r.reading_samples && r.snapshot.is_none() && !r.need_snapshot
        });
        if ask {
            self.send_peer(PeerMsg::SamplesBatch { chunks: Vec::new() });
        }
    }
}
