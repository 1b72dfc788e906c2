//! The generator of valid persist-request streams ([`OpGen`]) and the
//! sample values the fixed cases use.

use super::*;

pub(super) const KEYS: [&str; 12] = [
    "site/1", "site/2", "site/3", "edge/a", "edge/b", "edge/c", "policy/x", "policy/y", "gw/1",
    "gw/2", "net/10", "net/11",
];
pub(super) const CLIENTS: [&str; 4] = ["edge-1", "edge-2", "gw-1", "edge-10"];

/// Generates valid persist requests the way the core does, advancing the
/// reference store as it goes (so each op is chosen from the state it will
/// meet). Deterministic for a seed.
#[derive(Debug)]
pub struct OpGen {
    pub(super) rng: Rng,
    /// Epoch of new entries; bumped by suffix rewrites and snapshots.
    epoch: u64,
    /// Next sample seq each client would send.
    next_sample: BTreeMap<String, u64>,
    /// Counter for unique history/meta contents.
    counter: u64,
}

impl OpGen {
    pub fn new(seed: u64) -> Self {
        OpGen {
            rng: Rng::new(seed),
            epoch: 1,
            next_sample: BTreeMap::new(),
            counter: 0,
        }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.rng.range(1, 100) <= percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        // Callers pass non-empty constant arrays.
        &items[self.rng.range(0, items.len() as u64 - 1) as usize]
    }

    /// The last index the core's log would report: stored entries, or the applied position.
    fn last(store: &MemStore) -> Index {
        store
            .log
            .last()
            .map_or(0, |e| e.index)
            .max(store.applied.index)
    }

    /// One persist request (1 to 3 steps of the core), applied to `store`.
    pub fn request(&mut self, store: &mut MemStore) -> Vec<PersistOp> {
        let steps = self.rng.range(1, 3);
        let mut ops = Vec::new();
        for _ in 0..steps {
            for op in self.step(store) {
                store.apply(std::slice::from_ref(&op));
                ops.push(op);
            }
        }
        ops
    }

    fn step(&mut self, store: &MemStore) -> Vec<PersistOp> {
        let last = Self::last(store);
        let commit = store.commit;
        match self.rng.range(1, 100) {
            1..=34 => {
                let n = self.rng.range(1, 5);
                vec![PersistOp::Append(self.entries(last + 1, n))]
            }
            35..=58 if last > commit => vec![PersistOp::Commit(self.rng.range(commit + 1, last))],
            35..=58 => vec![PersistOp::Commit(commit)],
            59..=65 => vec![PersistOp::Meta(Box::new(self.meta()))],
            66..=74 => vec![PersistOp::History(self.transition())],
            75..=81 if last > commit => {
                // A standby meets a conflicting suffix from a new epoch.
                let from = self.rng.range(commit + 1, last);
                self.epoch += 1;
                let n = self.rng.range(1, 4);
                let entries = self.entries(from, n);
                if self.chance(50) {
                    vec![
                        PersistOp::TruncateAfter(from - 1),
                        PersistOp::Append(entries),
                    ]
                } else {
                    vec![PersistOp::Append(entries)]
                }
            }
            82..=84 => vec![PersistOp::TruncateAfter(self.rng.range(commit, last))],
            85..=87 => vec![PersistOp::Compact {
                below: self.rng.range(0, last + 2),
            }],
            88..=90 => self.copy_step(store),
            91..=93 => {
                // Retention of one client's stored samples.
                let client = self.pick(&CLIENTS).to_string();
                let next = self.next_sample.get(&client).copied().unwrap_or(1);
                let below_seq = self.rng.range(0, next + 1);
                vec![PersistOp::PruneSamples { client, below_seq }]
            }
            94 => {
                // Rejoin: archive what the promoted server lacks (below the
                // commit index too, as after degraded, unprotected writes).
                let after = self.rng.range(store.applied.index.saturating_sub(3), last);
                let reason = format!("diverged at rejoin #{}", self.counter);
                self.counter += 1;
                let mut ops = vec![PersistOp::Archive { after, reason }];
                if self.chance(60) {
                    ops.push(PersistOp::InstallSnapshot(self.snapshot(store, last)));
                }
                ops
            }
            95..=96 => {
                // A standby's install: the snapshot, and the samples it names
                // that the store lacks, to copy.
                let snap = self.snapshot(store, last);
                let plan = self.copy_plan(store, &snap);
                let mut ops = vec![PersistOp::InstallSnapshot(snap)];
                if self.chance(80) {
                    ops.push(PersistOp::SamplesToCopy(plan));
                }
                ops
            }
            _ => {
                // Promotion: a new epoch begins with an EpochStart entry.
                self.epoch += 1;
                let entry = Entry {
                    epoch: self.epoch,
                    index: last + 1,
                    op: Op::EpochStart,
                };
                vec![
                    PersistOp::Meta(Box::new(self.meta())),
                    PersistOp::History(self.transition()),
                    PersistOp::Append(vec![entry]),
                ]
            }
        }
    }

    /// What a standby installing `snap` over `store` lacks: per client,
    /// the seqs above the highest it applied, up to the snapshot's.
    fn copy_plan(&mut self, store: &MemStore, snap: &Snapshot) -> Vec<SampleRange> {
        snap.sample_seq
            .iter()
            .filter_map(|(client, &want)| {
                let have = store.applied.sample_seq.get(client).copied().unwrap_or(0);
                (have < want).then(|| SampleRange {
                    client: client.clone(),
                    after_seq: have,
                    up_to_seq: want,
                })
            })
            .collect()
    }

    /// One step of a standby's copy: samples of a range still to copy
    /// (all of it, or up to some seq), now and then a chunk of a range it
    /// does not lack (a late answer), or a new plan.
    fn copy_step(&mut self, store: &MemStore) -> Vec<PersistOp> {
        let ranges: Vec<((String, u64), u64)> = store
            .samples_to_copy
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        if ranges.is_empty() || self.chance(10) {
            let client = self.pick(&CLIENTS).to_string();
            let after_seq = self.rng.range(0, 6);
            let up_to_seq = after_seq + self.rng.range(1, 6);
            if self.chance(50) {
                return vec![PersistOp::SamplesToCopy(vec![SampleRange {
                    client,
                    after_seq,
                    up_to_seq,
                }])];
            }
            let samples = vec![Sample {
                seq: up_to_seq,
                payload: self.bytes(16),
            }];
            return vec![PersistOp::StoreSamples(SampleChunk {
                client,
                after_seq,
                through_seq: up_to_seq,
                samples,
            })];
        }
        let ((client, after_seq), up_to_seq) =
            ranges[self.rng.range(0, ranges.len() as u64 - 1) as usize].clone();
        let through_seq = if self.chance(50) {
            up_to_seq
        } else {
            self.rng.range(after_seq + 1, up_to_seq)
        };
        let mut samples = Vec::new();
        for seq in after_seq + 1..=through_seq {
            if self.chance(70) {
                let payload = self.bytes(16);
                samples.push(Sample { seq, payload });
            }
        }
        vec![PersistOp::StoreSamples(SampleChunk {
            client,
            after_seq,
            through_seq,
            samples,
        })]
    }

    fn entries(&mut self, from: Index, n: u64) -> Vec<Entry> {
        (from..from + n)
            .map(|index| Entry {
                epoch: self.epoch,
                index,
                op: self.op(),
            })
            .collect()
    }

    fn bytes(&mut self, max_len: u64) -> Vec<u8> {
        let len = self.rng.range(0, max_len);
        (0..len).map(|_| self.rng.range(0, 255) as u8).collect()
    }

    fn op(&mut self) -> Op {
        match self.rng.range(1, 100) {
            1..=50 => Op::Put {
                key: self.pick(&KEYS).to_string(),
                value: self.bytes(24),
            },
            51..=65 => Op::Delete {
                key: self.pick(&KEYS).to_string(),
            },
            66..=96 => {
                let client = self.pick(&CLIENTS).to_string();
                let next = self.next_sample.get(&client).copied().unwrap_or(1);
                // Now and then a client re-sends samples already sent.
                let from = if self.chance(10) {
                    next.saturating_sub(self.rng.range(1, 3)).max(1)
                } else {
                    next
                };
                let n = self.rng.range(1, 4);
                let samples = (from..from + n)
                    .map(|seq| Sample {
                        seq,
                        payload: self.bytes(16),
                    })
                    .collect();
                self.next_sample.insert(client.clone(), next.max(from + n));
                Op::Samples { client, samples }
            }
            _ => Op::EpochStart,
        }
    }

    fn snapshot(&mut self, store: &MemStore, last: Index) -> Snapshot {
        self.epoch += 1;
        let index = if self.chance(80) {
            last + self.rng.range(0, 10)
        } else {
            self.rng.range(0, last + 3)
        };
        let mut docs = BTreeMap::new();
        for key in KEYS {
            if self.chance(40) {
                let doc = Doc {
                    value: self.bytes(20),
                    version: self.rng.range(0, index),
                };
                docs.insert(key.to_string(), doc);
            }
        }
        let mut sample_seq = BTreeMap::new();
        for client in CLIENTS {
            if self.chance(70) {
                let known = self.next_sample.get(client).copied().unwrap_or(1);
                sample_seq.insert(client.to_string(), self.rng.range(0, known + 1));
            }
        }
        let mut epoch_starts = store.applied.epoch_starts.clone();
        if self.chance(30) {
            epoch_starts.push((self.epoch, index));
        }
        let config_index = docs.values().map(|d| d.version).max().unwrap_or(0);
        Snapshot {
            index,
            epoch: if index == 0 { 0 } else { self.epoch },
            docs,
            sample_seq,
            epoch_starts,
            config_index,
        }
    }

    fn meta(&mut self) -> DurableMeta {
        self.counter += 1;
        let pairs = DrState::all_pairs();
        let (role, dr_state) = pairs[self.rng.range(0, pairs.len() as u64 - 1) as usize];
        let mut m = meta_sample(self.counter);
        m.role = role;
        m.dr_state = dr_state;
        m.epoch = self.epoch;
        m.synced = self.chance(50);
        m.pairing_token = self.chance(30).then(|| self.rng.next_u128());
        m
    }

    fn transition(&mut self) -> Transition {
        self.counter += 1;
        let pairs = DrState::all_pairs();
        let (from_role, from) = pairs[self.rng.range(0, pairs.len() as u64 - 1) as usize];
        let (to_role, to) = pairs[self.rng.range(0, pairs.len() as u64 - 1) as usize];
        Transition {
            from_role,
            from,
            to_role,
            to,
            epoch: self.epoch,
            timestamp_ms: 1_700_000_000_000 + self.counter,
            reason: format!("generated transition {}", self.counter),
        }
    }
}

pub(super) fn put_entry(epoch: u64, index: Index) -> Entry {
    Entry {
        epoch,
        index,
        op: Op::Put {
            key: format!("doc/{index}"),
            value: format!("{{\"v\":{index}}}").into_bytes(),
        },
    }
}

/// A fully populated [`DurableMeta`], distinct for each `n`.
pub fn meta_sample(n: u64) -> DurableMeta {
    DurableMeta {
        role: Role::Active,
        dr_state: DrState::StandbyRunning,
        epoch: n,
        pair_id: Some((u128::from(n) << 64) | 7),
        peer: Some(ServerInfo {
            uuid: u128::from(n) + 1,
            name: format!("peer-{n}"),
            peer_address: "10.0.0.2:7443".into(),
            edge_address: "10.0.0.2:7444".into(),
            admin_address: "10.0.0.2:8443".into(),
        }),
        peer_identity: Some(PeerIdentity {
            name: format!("peer-{n}"),
            public_key: vec![n as u8; 91],
            key_fingerprint: format!("{n:064x}"),
        }),
        epoch_proof: Some(std::sync::Arc::new(EpochProof {
            claim: EpochClaim {
                pair_id: 7,
                epoch: n + 1,
                holder: u128::from(n) + 1,
                holder_name: format!("peer-{n}"),
                holder_edge_address: "10.0.0.2:7444".into(),
            },
            signature: vec![0x30; 72],
        })),
        pairing_token: None,
        policy: OnStandbyLoss::Block,
        synced: true,
        fenced_by: Some(n + 1),
        redirect_edge: Some("10.0.0.3:7444".into()),
        unprotected_writes: n,
        last_dr_protected_ms: Some(n * 1_000),
        role_timestamp_ms: n * 10,
        state_timestamp_ms: n * 20,
        zombie_to_notify: n % 2 == 0,
        incarnation: n + 3,
        active_incarnation: Some((n, n + 2)),
    }
}

/// A state-history transition, distinct for each `n`.
pub fn transition_sample(n: u64) -> Transition {
    Transition {
        from_role: Role::Standby,
        from: DrState::StandbyRunning,
        to_role: Role::Standalone,
        to: DrState::StandbyPromoted,
        epoch: n,
        timestamp_ms: 1_700_000_000_000 + n,
        reason: format!("transition {n}"),
    }
}

/// A contact row, distinct for each `n`.
pub fn contact_sample(n: u64) -> ClientContact {
    let view = |address: &str, role| ViewEntry {
        address: address.into(),
        role,
        epoch: n,
        pair_id: Some(9),
        last_response_ms: Some(n * 3),
    };
    ClientContact {
        client_id: format!("edge-{n:03}"),
        client_type: if n % 2 == 0 {
            ClientType::Edge
        } else {
            ClientType::Gateway
        },
        view: [
            view("10.0.0.1:7444", Some(Role::Active)),
            view("10.0.0.2:7444", None),
        ],
        following: Some("10.0.0.1:7444".into()),
        config_epoch: n,
        config_version: n * 2,
        cached_samples: n,
        dropped_samples: n / 2,
        modified_ms: 1_700_000_000_000 + n,
        forged_epoch_claims: n % 3,
    }
}
