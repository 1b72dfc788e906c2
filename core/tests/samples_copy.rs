//! Exact outputs of the sample copy after a snapshot: a standby pulls the
//! monitoring samples a snapshot names but does not carry, the active reads
//! them from its storage and answers within its batch bounds, and neither
//! side reports STANDBY_RUNNING before the copy is complete.

mod sim;

use sim::*;
use vcodr_core::*;

const A: usize = 0;
const B: usize = 1;
const CLIENT: &str = "edge-7";
/// Samples a's store holds before b pairs with it.
const SAMPLES: u64 = 5;
/// `replication.max_batch_bytes` of both servers: two samples of
/// [`PAYLOAD_BYTES`] (+10 each) fit one batch, three do not.
const BATCH_BYTES: usize = 1024;
const PAYLOAD_BYTES: usize = 400;

fn payload(seq: u64) -> Vec<u8> {
    let mut p = format!("{CLIENT}/sample-{seq}/").into_bytes();
    p.resize(PAYLOAD_BYTES, b'.');
    p
}

fn sample(seq: u64) -> Sample {
    Sample {
        seq,
        payload: payload(seq),
    }
}

fn range(after_seq: u64, up_to_seq: u64) -> SampleRange {
    SampleRange {
        client: CLIENT.into(),
        after_seq,
        up_to_seq,
    }
}

fn chunk(after_seq: u64, through_seq: u64) -> SampleChunk {
    SampleChunk {
        client: CLIENT.into(),
        after_seq,
        through_seq,
        samples: (after_seq + 1..=through_seq).map(sample).collect(),
    }
}

/// Two servers taken out of a simulation and driven by hand, each with its
/// durable store: every output is returned for the test to check.
struct Hand {
    servers: [Option<Server>; 2],
    stores: [MemStore; 2],
    cfgs: [ServerConfig; 2],
    pair_id: Option<PairId>,
    epoch: Epoch,
    t: u64,
}

impl Hand {
    fn s(&self, i: usize) -> &Server {
        self.servers[i].as_ref().expect("running")
    }

    fn feed(&mut self, i: usize, input: Input) -> Vec<Output> {
        self.t += 1;
        let s = self.servers[i].as_mut().expect("running");
        vcodr_core::testing::step(s, Now::at(self.t), input)
    }

    /// Makes every `Persist` of `outs` durable on server `i` and confirms it.
    fn durable(&mut self, i: usize, outs: &[Output]) -> Vec<Output> {
        let mut up_to = None;
        for o in outs {
            if let Output::Persist { seq, ops } = o {
                self.stores[i].apply(ops);
                up_to = Some(*seq);
            }
        }
        let up_to = up_to.expect("a persist request");
        self.feed(i, Input::Persisted { up_to })
    }

    /// Delivers `body` from server `1 - to` (its proven identity) to `to`.
    fn peer(&mut self, to: usize, body: PeerMsg) -> Vec<Output> {
        let from = 1 - to;
        let env = self.env(from, body);
        self.feed(
            to,
            Input::Peer {
                link: from as u64,
                from: identity(from),
                env,
            },
        )
    }

    /// The envelope server `from` puts around `body`.
    fn env(&self, from: usize, body: PeerMsg) -> PeerEnvelope {
        PeerEnvelope {
            from: info(from).uuid,
            pair_id: self.pair_id,
            epoch: self.epoch,
            body,
        }
    }

    /// `body` sent by server `from` to its peer.
    fn send(&self, from: usize, body: PeerMsg) -> Output {
        Output::SendPeer {
            to: info(1 - from).peer_address,
            msg: self.env(from, body),
        }
    }

    /// Delivers a's `append` to b and makes what b stages durable: b's
    /// outputs once it durably follows a's run.
    fn b_follows(&mut self, append: PeerMsg) -> Vec<Output> {
        let out = self.peer(B, append);
        self.durable(B, &out)
    }

    fn tick(&mut self, i: usize) -> Vec<Output> {
        self.feed(i, Input::Timeout(Timer::PeerTick))
    }

    fn crash_and_restart(&mut self, i: usize) -> Vec<Output> {
        self.t += 1;
        let restored = self.stores[i].restored();
        let mut s = Server::restore(self.cfgs[i].clone(), info(i), restored, Now::at(self.t))
            .with_keys(keys(i));
        let out = vcodr_core::testing::drain(&mut s);
        self.servers[i] = Some(s);
        out
    }

    fn is(&self, i: usize, role: Role, st: DrState) -> bool {
        let s = self.s(i);
        s.role() == role && s.dr_state() == st
    }

    fn stored(&self, i: usize) -> Vec<u64> {
        self.stores[i]
            .samples
            .keys()
            .filter(|(c, _)| c == CLIENT)
            .map(|(_, q)| *q)
            .collect()
    }
}

fn peer_bodies(outs: &[Output]) -> Vec<&PeerMsg> {
    outs.iter()
        .filter_map(|o| match o {
            Output::SendPeer { msg, .. } => Some(&msg.body),
            _ => None,
        })
        .collect()
}

fn transitions(outs: &[Output]) -> Vec<(Role, DrState)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Event(Event::Transition(t)) => Some((t.to_role, t.to)),
            _ => None,
        })
        .collect()
}

/// a, STANDALONE, stores [`SAMPLES`] samples of one edge; then b pairs with
/// it. Both are taken out of the simulation the moment b's snapshot install
/// is durable — before a hears of it — and everything in flight is lost:
/// b's acknowledgement and its first pull included.
fn snapshot_installed_on_b() -> Hand {
    let mut sim = Sim::new(5, OnStandbyLoss::Block, 0);
    for i in [A, B] {
        sim.servers[i].cfg.max_batch_bytes = BATCH_BYTES;
        // A sample must fit a monitoring batch (half a replication batch).
        sim.servers[i].cfg.max_sample_bytes = BATCH_BYTES / 2;
        assert_eq!(sim.servers[i].cfg.validate(), Ok(()));
        sim.crash(i);
        sim.restart(i);
    }
    for q in 1..=SAMPLES {
        sim.input(
            A,
            Input::Edge {
                reply_to: FORGER,
                client: CLIENT.into(),
                client_type: ClientType::Edge,
                msg: EdgeMsg::Monitoring {
                    samples: vec![sample(q)],
                },
            },
        );
        sim.run_for(20);
    }
    let on_a: Vec<u64> = sim.servers[A]
        .store
        .samples
        .keys()
        .map(|(_, q)| *q)
        .collect();
    assert_eq!(on_a, (1..=SAMPLES).collect::<Vec<_>>());

    let Ok(Reply::Prepared {
        vco_uuid,
        pairing_token,
    }) = sim.call(B, Command::PrepareForStandby, 1_000)
    else {
        panic!("prepareForStandby")
    };
    let r = sim.call(
        A,
        Command::ConfigureActive {
            standby_address: info(B).peer_address,
            standby_uuid: vco_uuid,
            pairing_token,
        },
        1_000,
    );
    assert!(matches!(r, Ok(Reply::Configured { .. })), "{r:?}");
    assert!(sim.run_until(5_000, |s| !s.servers[B].store.samples_to_copy.is_empty()));
    assert!(sim.disk_idle(A) && sim.disk_idle(B));
    let [a, b] = [A, B].map(|i| sim.servers[i].server.take());
    let hand = Hand {
        pair_id: a.as_ref().and_then(Server::pair_id),
        epoch: 1,
        servers: [a, b],
        stores: [A, B].map(|i| sim.servers[i].store.clone()),
        cfgs: [A, B].map(|i| sim.servers[i].cfg.clone()),
        t: sim.now_ms,
    };
    assert!(hand.is(A, Role::Active, DrState::ActiveWaitStandby));
    assert_eq!(hand.s(A).incarnation(), RUN);
    assert!(hand.is(B, Role::Standby, DrState::StandbySync));
    hand
}

/// Brings a to STANDBY_SYNC: it resends the snapshot's last chunk, b (which
/// installed it already) acknowledges it without installing it again; a's
/// heartbeat then makes b follow a's run (SPEC §4), and b acknowledges it.
fn a_hears_the_install(h: &mut Hand) -> Index {
    let out = h.tick(A);
    let chunk = peer_bodies(&out)
        .into_iter()
        .find(|m| matches!(m, PeerMsg::SnapshotChunk { last: true, .. }))
        .cloned()
        .expect("the last chunk is sent again");
    let PeerMsg::SnapshotChunk { index, .. } = chunk else {
        unreachable!()
    };
    let out = h.peer(B, chunk);
    // No AppendAck: b follows no run of a yet (a snapshot names none).
    assert_eq!(
        out,
        vec![h.send(B, PeerMsg::SnapshotAck { index, chunk: 0 })]
    );
    let out = h.peer(A, PeerMsg::SnapshotAck { index, chunk: 0 });
    assert_eq!(
        transitions(&out),
        vec![(Role::Active, DrState::StandbySync)]
    );
    let heartbeat = heartbeat_of(RUN, index);
    assert!(peer_bodies(&out).contains(&&heartbeat), "{out:?}");
    h.durable(A, &out);
    let out = h.b_follows(heartbeat);
    assert_eq!(
        peer_bodies(&out),
        vec![&PeerMsg::AppendAck {
            incarnation: RUN,
            durable_index: index,
            ok: true,
        }]
    );
    let out = h.peer(
        A,
        PeerMsg::AppendAck {
            incarnation: RUN,
            durable_index: index,
            ok: true,
        },
    );
    assert_eq!(transitions(&out), vec![], "the standby still lacks samples");
    index
}

/// a's run in these tests: the setup restarts both servers before anything
/// reached their disks, so it is still the first (a run that never became
/// durable shipped nothing).
const RUN: Incarnation = 1;

/// a's heartbeat at `index` from its run `run`, which began at `index`.
fn heartbeat_of(run: Incarnation, index: Index) -> PeerMsg {
    PeerMsg::Append {
        incarnation: run,
        since: index,
        prev_index: index,
        prev_epoch: 1,
        entries: Vec::new(),
        commit_index: index,
        active_durable: index,
    }
}

#[test]
fn a_standby_copies_the_samples_its_snapshot_names_and_runs_only_then() {
    let mut h = snapshot_installed_on_b();
    let index = a_hears_the_install(&mut h);
    assert_eq!(h.stores[B].samples_to_copy.len(), 1);
    assert!(h.stored(B).is_empty());

    // The active's heartbeat: b has every entry, not every sample.
    let out = h.tick(A);
    let heartbeat = heartbeat_of(RUN, index);
    let ask = PeerMsg::SamplesBatch { chunks: Vec::new() };
    assert_eq!(
        out,
        vec![
            Output::SetTimer {
                timer: Timer::PeerTick,
                after_ms: 100
            },
            h.send(A, heartbeat.clone()),
            h.send(A, ask.clone()),
        ]
    );
    let out = h.peer(B, heartbeat.clone());
    assert_eq!(
        out,
        vec![h.send(
            B,
            PeerMsg::AppendAck {
                incarnation: RUN,
                durable_index: index,
                ok: true
            }
        )]
    );
    assert!(h.is(B, Role::Standby, DrState::StandbySync));
    // Asked whether its copy is complete while it is not: its tick pulls.
    assert_eq!(h.peer(B, ask), vec![]);
    let out = h.feed(
        B,
        Input::Command {
            req: 1,
            cmd: Command::Promote { force: true },
        },
    );
    assert!(
        matches!(&out[..], [Output::Reply { req: 1, result: Err(CommandError::WrongState { why, .. }) }]
            if why.contains("still copying monitoring samples")),
        "{out:?}"
    );

    // b pulls; a reads its storage, once at a time, within its batch bounds.
    let pull = |_: &Hand, after: u64| PeerMsg::SamplesPull {
        ranges: vec![range(after, SAMPLES)],
        applied_index: index,
    };
    let out = h.tick(B);
    assert_eq!(
        out,
        vec![
            Output::SetTimer {
                timer: Timer::PeerTick,
                after_ms: 100
            },
            h.send(B, pull(&h, 0)),
        ]
    );
    let read = Output::ReadSamples {
        ranges: vec![range(0, SAMPLES)],
        max_bytes: BATCH_BYTES,
        max_samples: 64,
    };
    assert_eq!(h.peer(A, pull(&h, 0)), vec![read]);
    assert_eq!(h.peer(A, pull(&h, 0)), vec![], "one read at a time");
    let chunks = h.stores[A].read_samples(&[range(0, SAMPLES)], BATCH_BYTES, 64);
    assert_eq!(chunks, vec![chunk(0, 2)], "two samples fit 1024 bytes");
    let out = h.feed(A, Input::SamplesRead { chunks });
    let batch = PeerMsg::SamplesBatch {
        chunks: vec![chunk(0, 2)],
    };
    assert_eq!(out, vec![h.send(A, batch.clone())]);

    // b stores them without a log entry; a late copy of the batch stores nothing.
    let out = h.peer(B, batch.clone());
    let [Output::Persist { ops, .. }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(ops, &vec![PersistOp::StoreSamples(chunk(0, 2))]);
    assert_eq!(h.peer(B, batch), vec![]);
    let out = h.durable(B, &out);
    assert_eq!(out, vec![h.send(B, pull(&h, 2))]);
    assert_eq!(h.stored(B), vec![1, 2]);
    assert_eq!(h.stores[B].log.len(), 0, "no log entry for copied samples");

    // The rest, pull after pull.
    let mut after = 2;
    let out = loop {
        assert_eq!(h.peer(A, pull(&h, after)).len(), 1);
        let chunks = h.stores[A].read_samples(&[range(after, SAMPLES)], BATCH_BYTES, 64);
        let out = h.feed(A, Input::SamplesRead { chunks });
        let [PeerMsg::SamplesBatch { chunks }] = &peer_bodies(&out)[..] else {
            panic!("{out:?}")
        };
        let through = chunks[0].through_seq;
        let batch = PeerMsg::SamplesBatch {
            chunks: chunks.clone(),
        };
        let out = h.peer(B, batch);
        let out = h.durable(B, &out);
        if through == SAMPLES {
            break out;
        }
        after = through;
        assert_eq!(out, vec![h.send(B, pull(&h, after))]);
    };
    // Nothing left: b says so, naming its applied index.
    let done = PeerMsg::SamplesPull {
        ranges: Vec::new(),
        applied_index: index,
    };
    assert_eq!(out, vec![h.send(B, done.clone())]);
    assert_eq!(h.stored(B), h.stored(A));
    assert!(h.stores[B].samples_to_copy.is_empty());

    assert!(h.is(A, Role::Active, DrState::StandbySync));
    let out = h.peer(A, done);
    assert_eq!(
        transitions(&out),
        vec![(Role::Active, DrState::StandbyRunning)]
    );
    let out = h.peer(B, heartbeat);
    assert_eq!(
        transitions(&out),
        vec![(Role::Standby, DrState::StandbyRunning)]
    );
    // No more asking.
    assert_eq!(peer_bodies(&h.tick(A)), vec![&heartbeat_of(RUN, index)]);
    for i in [A, B] {
        assert_eq!(h.stores[i].duplicate_samples, 0);
    }
}

#[test]
fn a_standby_restarted_in_the_middle_of_the_copy_resumes_where_its_disk_is() {
    let mut h = snapshot_installed_on_b();
    let index = a_hears_the_install(&mut h);
    let out = h.tick(B);
    assert_eq!(peer_bodies(&out).len(), 1);
    let out = h.peer(
        A,
        PeerMsg::SamplesPull {
            ranges: vec![range(0, SAMPLES)],
            applied_index: index,
        },
    );
    assert_eq!(out.len(), 1);
    let chunks = h.stores[A].read_samples(&[range(0, SAMPLES)], BATCH_BYTES, 64);
    let out = h.feed(A, Input::SamplesRead { chunks });
    let batch = peer_bodies(&out)[0].clone();
    let out = h.peer(B, batch.clone());
    h.durable(B, &out);
    assert_eq!(h.stored(B), vec![1, 2]);

    // b crashes before its next pull arrives; it restarts from its disk.
    let out = h.crash_and_restart(B);
    assert_eq!(transitions(&out), vec![]);
    assert!(h.is(B, Role::Standby, DrState::StandbySync));
    assert_eq!(
        h.s(B).samples_to_copy().collect::<Vec<_>>(),
        vec![range(2, SAMPLES)]
    );
    let out = h.tick(B);
    assert_eq!(
        peer_bodies(&out),
        vec![&PeerMsg::SamplesPull {
            ranges: vec![range(2, SAMPLES)],
            applied_index: index,
        }]
    );
    // The batch b had stored, delivered again after the restart: nothing stored twice.
    assert_eq!(h.peer(B, batch), vec![]);
    // a answers the pull of the restarted b from where b's disk is.
    let out = h.peer(
        A,
        PeerMsg::SamplesPull {
            ranges: vec![range(2, SAMPLES)],
            applied_index: index,
        },
    );
    assert_eq!(
        out,
        vec![Output::ReadSamples {
            ranges: vec![range(2, SAMPLES)],
            max_bytes: BATCH_BYTES,
            max_samples: 64,
        }]
    );
    let mut after = 2;
    while after < SAMPLES {
        let chunks = h.stores[A].read_samples(&[range(after, SAMPLES)], BATCH_BYTES, 64);
        let out = h.feed(A, Input::SamplesRead { chunks });
        let batch = peer_bodies(&out)[0].clone();
        let out = h.peer(B, batch);
        let out = h.durable(B, &out);
        match &peer_bodies(&out)[..] {
            [PeerMsg::SamplesPull { ranges, .. }] if ranges.is_empty() => after = SAMPLES,
            [PeerMsg::SamplesPull { ranges, .. }] => {
                after = ranges[0].after_seq;
                let pull = PeerMsg::SamplesPull {
                    ranges: ranges.clone(),
                    applied_index: index,
                };
                assert_eq!(h.peer(A, pull).len(), 1);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(h.stored(B), (1..=SAMPLES).collect::<Vec<_>>());
    assert_eq!(h.stores[B].duplicate_samples, 0);
}

#[test]
fn the_active_restarted_asks_before_it_reports_its_standby_running() {
    let mut h = snapshot_installed_on_b();
    let index = a_hears_the_install(&mut h);
    // b has nothing left to copy once a has answered; then a restarts.
    let mut after = 0;
    while after < SAMPLES {
        let chunks = h.stores[A].read_samples(&[range(after, SAMPLES)], BATCH_BYTES, 64);
        assert_eq!(
            h.peer(
                A,
                PeerMsg::SamplesPull {
                    ranges: vec![range(after, SAMPLES)],
                    applied_index: index,
                }
            )
            .len(),
            1
        );
        let out = h.feed(A, Input::SamplesRead { chunks });
        let out = h.peer(B, peer_bodies(&out)[0].clone());
        let out = h.durable(B, &out);
        match &peer_bodies(&out)[..] {
            [PeerMsg::SamplesPull { ranges, .. }] if ranges.is_empty() => after = SAMPLES,
            [PeerMsg::SamplesPull { ranges, .. }] => after = ranges[0].after_seq,
            other => panic!("{other:?}"),
        }
    }
    // a never got b's word (lost), and restarts: a new run, which probes
    // b once it is durable; b follows it.
    let out = h.crash_and_restart(A);
    assert!(h.is(A, Role::Active, DrState::StandbySync));
    let out = h.durable(A, &out);
    let probe = heartbeat_of(RUN + 1, index);
    assert_eq!(peer_bodies(&out), vec![&probe]);
    let out = h.b_follows(probe);
    let ack = PeerMsg::AppendAck {
        incarnation: RUN + 1,
        durable_index: index,
        ok: true,
    };
    assert_eq!(peer_bodies(&out), vec![&ack]);
    let out = h.peer(A, ack);
    assert_eq!(
        transitions(&out),
        vec![],
        "a does not know about the samples"
    );
    let out = h.tick(A);
    let ask = PeerMsg::SamplesBatch { chunks: Vec::new() };
    assert!(peer_bodies(&out).contains(&&ask), "{out:?}");
    let out = h.peer(B, ask);
    let done = PeerMsg::SamplesPull {
        ranges: Vec::new(),
        applied_index: index,
    };
    assert_eq!(out, vec![h.send(B, done.clone())]);
    let out = h.peer(A, done);
    assert_eq!(
        transitions(&out),
        vec![(Role::Active, DrState::StandbyRunning)]
    );
}

#[test]
fn sample_messages_are_admitted_like_every_peer_message() {
    let mut h = snapshot_installed_on_b();
    let index = a_hears_the_install(&mut h);
    let pull = PeerMsg::SamplesPull {
        ranges: vec![range(0, SAMPLES)],
        applied_index: index,
    };
    // From a server of our CA that is not the pinned peer: refused at admission.
    let env = h.env(B, pull.clone());
    let out = h.feed(
        A,
        Input::Peer {
            link: FORGER,
            from: vcodr_core::testing::identity("x"),
            env,
        },
    );
    assert_eq!(
        out,
        vec![Output::Event(Event::PeerRefused {
            link: FORGER,
            from: vcodr_core::testing::identity("x"),
            kind: "SamplesPull",
            reason: PeerRefusal::NotPinnedPeer,
        })]
    );
    let env = h.env(
        A,
        PeerMsg::SamplesBatch {
            chunks: vec![chunk(0, 2)],
        },
    );
    let out = h.feed(
        B,
        Input::Peer {
            link: FORGER,
            from: vcodr_core::testing::identity("x"),
            env,
        },
    );
    assert!(
        matches!(
            &out[..],
            [Output::Event(Event::PeerRefused {
                kind: "SamplesBatch",
                reason: PeerRefusal::NotPinnedPeer,
                ..
            })]
        ),
        "{out:?}"
    );
    // Another pair's id, from the pinned peer itself.
    let mut env = h.env(B, pull.clone());
    env.pair_id = Some(0xBAD);
    let out = h.feed(
        A,
        Input::Peer {
            link: B as u64,
            from: identity(B),
            env,
        },
    );
    assert!(
        matches!(
            &out[..],
            [Output::Event(Event::PeerRefused {
                reason: PeerRefusal::OtherPair,
                ..
            })]
        ),
        "{out:?}"
    );
    // Wrong role: a standby reads nothing for anyone.
    let out = h.peer(B, pull.clone());
    assert_eq!(
        out,
        vec![Output::Event(Event::PeerIgnored {
            kind: "SamplesPull",
            reason: "not expected in role STANDBY / STANDBY_SYNC".into(),
        })]
    );
    // ...and an active stores no batch.
    let out = h.peer(
        A,
        PeerMsg::SamplesBatch {
            chunks: vec![chunk(0, 2)],
        },
    );
    assert_eq!(
        out,
        vec![Output::Event(Event::PeerIgnored {
            kind: "SamplesBatch",
            reason: "not expected in role ACTIVE / STANDBY_SYNC".into(),
        })]
    );
    // A stale epoch: the active tells its sender who holds the current one.
    let mut env = h.env(B, pull.clone());
    env.epoch = 0;
    let out = h.feed(
        A,
        Input::Peer {
            link: B as u64,
            from: identity(B),
            env,
        },
    );
    assert!(
        matches!(&peer_bodies(&out)[..], [PeerMsg::NewEpoch { .. }]),
        "{out:?}"
    );
    assert!(!out.iter().any(|o| matches!(o, Output::ReadSamples { .. })));
    // ...and a standby takes no batch of another epoch.
    let mut env = h.env(
        A,
        PeerMsg::SamplesBatch {
            chunks: vec![chunk(0, 2)],
        },
    );
    env.epoch = 0;
    let out = h.feed(
        B,
        Input::Peer {
            link: A as u64,
            from: identity(A),
            env,
        },
    );
    assert!(
        matches!(
            &out[..],
            [Output::Event(Event::PeerIgnored {
                kind: "SamplesBatch",
                ..
            })]
        ),
        "{out:?}"
    );
    assert!(h.stored(B).is_empty());
    // None of it started a read: the genuine pull does.
    assert_eq!(h.peer(A, pull).len(), 1);
}

#[test]
fn what_a_pull_may_make_the_active_read_is_bounded() {
    let mut h = snapshot_installed_on_b();
    let index = a_hears_the_install(&mut h);
    let too_many: Vec<SampleRange> = (0..=SAMPLE_PULL_RANGES_MAX as u64)
        .map(|i| SampleRange {
            client: format!("edge-{i}"),
            after_seq: 0,
            up_to_seq: u64::MAX,
        })
        .collect();
    let out = h.peer(
        A,
        PeerMsg::SamplesPull {
            ranges: too_many,
            applied_index: index,
        },
    );
    assert_eq!(
        out,
        vec![Output::Event(Event::PeerIgnored {
            kind: "SamplesPull",
            reason: "65 ranges, above the 64 a pull may ask for".into(),
        })]
    );
    let out = h.peer(
        A,
        PeerMsg::SamplesPull {
            ranges: vec![range(3, 3)],
            applied_index: index,
        },
    );
    assert_eq!(
        out,
        vec![Output::Event(Event::PeerIgnored {
            kind: "SamplesPull",
            reason: "an empty range (3, 3]".into(),
        })]
    );
    // A pull for what the active does not hold is answered with what it has:
    // nothing of a client it never heard of, the rest of one it knows.
    let ranges = vec![
        SampleRange {
            client: "edge-unknown".into(),
            after_seq: 0,
            up_to_seq: 1_000,
        },
        range(4, 1_000),
    ];
    let out = h.peer(
        A,
        PeerMsg::SamplesPull {
            ranges: ranges.clone(),
            applied_index: index,
        },
    );
    assert_eq!(
        out,
        vec![Output::ReadSamples {
            ranges: ranges.clone(),
            max_bytes: BATCH_BYTES,
            max_samples: 64,
        }]
    );
    let chunks = h.stores[A].read_samples(&ranges, BATCH_BYTES, 64);
    assert_eq!(
        chunks,
        vec![
            SampleChunk {
                client: "edge-unknown".into(),
                after_seq: 0,
                through_seq: 1_000,
                samples: Vec::new(),
            },
            SampleChunk {
                client: CLIENT.into(),
                after_seq: 4,
                through_seq: 1_000,
                samples: vec![sample(5)],
            },
        ]
    );
    // A batch that does not answer what b lacks stores nothing.
    let bad = SampleChunk {
        through_seq: SAMPLES + 1,
        samples: vec![sample(1), sample(6)],
        ..chunk(0, 1)
    };
    let out = h.peer(B, PeerMsg::SamplesBatch { chunks: vec![bad] });
    assert!(
        matches!(
            &out[..],
            [Output::Event(Event::PeerIgnored {
                kind: "SamplesBatch",
                ..
            })]
        ),
        "{out:?}"
    );
    let unordered = SampleChunk {
        samples: vec![sample(2), sample(1)],
        ..chunk(0, 2)
    };
    let out = h.peer(
        B,
        PeerMsg::SamplesBatch {
            chunks: vec![unordered],
        },
    );
    assert!(
        matches!(
            &out[..],
            [Output::Event(Event::PeerIgnored {
                kind: "SamplesBatch",
                ..
            })]
        ),
        "{out:?}"
    );
    assert!(h.stored(B).is_empty());
}

#[test]
fn a_read_is_bounded_by_bytes_and_samples_and_always_progresses() {
    let mut store = MemStore::new(0);
    let ops: Vec<PersistOp> = vec![
        PersistOp::SamplesToCopy(vec![range(0, 9)]),
        PersistOp::StoreSamples(SampleChunk {
            client: CLIENT.into(),
            after_seq: 0,
            through_seq: 9,
            samples: [1, 2, 3, 5, 8].into_iter().map(sample).collect(),
        }),
    ];
    store.apply(&ops);
    assert!(
        store.samples_to_copy.is_empty(),
        "the whole range was copied"
    );
    assert_eq!(store.duplicate_samples, 0);
    let seqs = |c: &SampleChunk| c.samples.iter().map(|s| s.seq).collect::<Vec<_>>();
    // Two samples fit 1024 bytes: the chunk stops after the second.
    let got = store.read_samples(&[range(0, 9)], BATCH_BYTES, 64);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].through_seq, seqs(&got[0])), (2, vec![1, 2]));
    // A sample bound.
    let got = store.read_samples(&[range(2, 9)], 1 << 20, 2);
    assert_eq!((got[0].through_seq, seqs(&got[0])), (5, vec![3, 5]));
    // The first sample is taken even above the byte bound: a read progresses.
    let got = store.read_samples(&[range(0, 9)], 1, 64);
    assert_eq!((got[0].through_seq, seqs(&got[0])), (1, vec![1]));
    // Ranges in order; the one that ran out of room answers a prefix, later ones nothing.
    let other = SampleRange {
        client: "edge-9".into(),
        after_seq: 0,
        up_to_seq: 5,
    };
    let got = store.read_samples(&[range(5, 9), other.clone(), range(0, 9)], BATCH_BYTES, 64);
    assert_eq!(
        got.iter()
            .map(|c| (c.client.as_str(), c.after_seq, c.through_seq, seqs(c)))
            .collect::<Vec<_>>(),
        vec![
            (CLIENT, 5, 9, vec![8]),
            ("edge-9", 0, 5, vec![]),
            (CLIENT, 0, 1, vec![1]),
        ]
    );
    // A partial copy moves the range on; storing a sample again is a duplicate.
    let mut store = MemStore::new(0);
    store.apply(&[PersistOp::SamplesToCopy(vec![range(0, 9)])]);
    store.apply(&[PersistOp::StoreSamples(chunk(0, 2))]);
    assert_eq!(store.restored().samples_to_copy, vec![range(2, 9)]);
    store.apply(&[PersistOp::StoreSamples(chunk(1, 2))]);
    assert_eq!(store.duplicate_samples, 1);
    assert_eq!(store.restored().samples_to_copy, vec![range(2, 9)]);
}

#[test]
fn a_new_snapshot_in_the_middle_of_a_copy_keeps_what_is_still_lacked_and_nothing_else() {
    let mut h = snapshot_installed_on_b();
    let index = a_hears_the_install(&mut h);
    h.tick(B);
    h.peer(
        A,
        PeerMsg::SamplesPull {
            ranges: vec![range(0, SAMPLES)],
            applied_index: index,
        },
    );
    let out = h.peer(
        B,
        PeerMsg::SamplesBatch {
            chunks: vec![chunk(0, 2)],
        },
    );
    h.durable(B, &out);
    // Newer samples arrive through the log meanwhile, and commit.
    let entry = Entry {
        epoch: 1,
        index: index + 1,
        op: Op::Samples {
            client: CLIENT.into(),
            samples: vec![sample(6), sample(7)],
        },
    };
    let out = h.peer(
        B,
        PeerMsg::Append {
            incarnation: RUN,
            since: index,
            prev_index: index,
            prev_epoch: 1,
            entries: vec![entry],
            commit_index: index + 1,
            active_durable: index + 1,
        },
    );
    h.durable(B, &out);
    assert_eq!(h.stored(B), vec![1, 2, 6, 7]);
    // Then b needs a snapshot again (say its active restarted and compacted).
    let out = h.peer(
        B,
        PeerMsg::SnapshotChunk {
            index: index + 5,
            snapshot_epoch: 1,
            chunk: 0,
            last: true,
            docs: Vec::new(),
            sample_seq: vec![(CLIENT.into(), 9)],
            epoch_starts: Vec::new(),
            config_index: 0,
        },
    );
    let ops: Vec<&PersistOp> = out
        .iter()
        .flat_map(|o| match o {
            Output::Persist { ops, .. } => ops.iter().collect(),
            _ => Vec::new(),
        })
        .collect();
    // (2, 5] is still lacked from the first copy; 6 and 7 are here: only
    // what lies above them is new.
    assert!(
        ops.contains(&&PersistOp::SamplesToCopy(vec![range(2, 5), range(7, 9)])),
        "{ops:?}"
    );
    let out = h.durable(B, &out);
    assert_eq!(h.stored(B), vec![1, 2, 6, 7]);
    assert_eq!(
        peer_bodies(&out).last(),
        Some(&&PeerMsg::SamplesPull {
            ranges: vec![range(2, 5), range(7, 9)],
            applied_index: index + 5,
        })
    );
    // Retention: of a client whose seq moved far ahead only the retained window is copied.
    let retain = h.cfgs[B].retain_samples_per_client;
    let out = h.peer(
        B,
        PeerMsg::SnapshotChunk {
            index: index + 9,
            snapshot_epoch: 1,
            chunk: 0,
            last: true,
            docs: Vec::new(),
            sample_seq: vec![(CLIENT.into(), retain + 100)],
            epoch_starts: Vec::new(),
            config_index: 0,
        },
    );
    let plan = out.iter().find_map(|o| match o {
        Output::Persist { ops, .. } => ops.iter().find_map(|op| match op {
            PersistOp::SamplesToCopy(p) => Some(p.clone()),
            _ => None,
        }),
        _ => None,
    });
    assert_eq!(plan, Some(vec![range(100, retain + 100)]));
}
