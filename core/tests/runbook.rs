//! Runbook scenarios on the deterministic simulation: each test reads like
//! the steps an operator takes, and checks what the operator would check.

mod sim;

use sim::*;
use std::collections::BTreeSet;
use vcodr_core::*;

const A: usize = 0;
const B: usize = 1;

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

fn standby_running_pair(seed: u64, policy: OnStandbyLoss, edges: usize) -> Sim {
    let mut sim = Sim::new(seed, policy, edges);
    sim.pair(A, B);
    sim
}

/// The active is gone: the standby notices, the operator promotes it to epoch 2.
fn disaster_promote_b(sim: &mut Sim) {
    let noticed = sim.run_until(5_000, |s| {
        s.is(B, Role::Standby, DrState::FailureGetActiveStatus)
    });
    assert!(
        noticed,
        "seed {}: the standby did not notice: {}",
        sim.seed,
        sim.describe()
    );
    let r = sim.call(B, Command::Promote { force: false }, 1_000);
    assert!(
        matches!(r, Ok(Reply::Promoted { epoch: 2, .. })),
        "seed {}: {r:?}",
        sim.seed
    );
}

/// Issues `n` writes at once and returns (request, key, value) of each.
fn burst(sim: &mut Sim, server: usize, prefix: &str, n: usize) -> Vec<(RequestId, String, String)> {
    (0..n)
        .map(|i| {
            let key = format!("{prefix}/{i}");
            let value = format!("{{\"n\":{i},\"p\":\"{prefix}\"}}");
            let req = sim.command(server, put(&key, &value));
            (req, key, value)
        })
        .collect()
}

fn acked(
    sim: &Sim,
    server: usize,
    writes: &[(RequestId, String, String)],
) -> Vec<(String, String)> {
    writes
        .iter()
        .filter(|(req, _, _)| matches!(sim.reply(server, *req), Some(Ok(Reply::Written { .. }))))
        .map(|(_, k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn dr_setup_reaches_standby_running_on_both() {
    let mut sim = Sim::new(1, OnStandbyLoss::Degrade, 0);
    // 1. prepareForStandby on b.
    let Ok(Reply::Prepared {
        vco_uuid,
        pairing_token,
    }) = sim.call(B, Command::PrepareForStandby, 100)
    else {
        panic!()
    };
    assert_eq!(vco_uuid, info(B).uuid);
    assert!(sim.is(B, Role::Standby, DrState::StandbyCandidate));
    // Asking again returns the same token.
    assert_eq!(
        sim.call(B, Command::PrepareForStandby, 100),
        Ok(Reply::Prepared {
            vco_uuid,
            pairing_token
        })
    );
    // A wrong token is refused by the standby and the active falls back to STANDALONE.
    let bad = Command::ConfigureActive {
        standby_address: info(B).peer_address,
        standby_uuid: vco_uuid,
        pairing_token: pairing_token ^ 1,
    };
    assert!(matches!(
        sim.call(A, bad, 100),
        Ok(Reply::Configured { .. })
    ));
    assert!(
        sim.run_until(2_000, |s| s.is(A, Role::Standalone, DrState::Unconfigured)),
        "{}",
        sim.describe()
    );
    assert!(
        sim.is(B, Role::Standby, DrState::StandbyCandidate),
        "the candidate is untouched"
    );
    // 2. configureActiveForReplication on a with the right token.
    let cfg = Command::ConfigureActive {
        standby_address: info(B).peer_address,
        standby_uuid: vco_uuid,
        pairing_token,
    };
    let Ok(Reply::Configured { pair_id }) = sim.call(A, cfg, 100) else {
        panic!()
    };
    assert!(
        sim.run_until(10_000, |s| s.is(A, Role::Active, DrState::StandbyRunning)
            && s.is(B, Role::Standby, DrState::StandbyRunning))
    );
    sim.run_for(50); // let the last transitions reach the disk
    for n in &sim.servers {
        assert_eq!(n.s().pair_id(), Some(pair_id));
        assert_eq!(n.s().epoch(), 1);
    }
    // The state history tells the story on both sides, durably.
    let steps = |i: usize| -> Vec<(Role, DrState)> {
        sim.servers[i]
            .store
            .history
            .iter()
            .map(|t| (t.to_role, t.to))
            .collect()
    };
    assert_eq!(
        steps(B),
        vec![
            (Role::Standby, DrState::StandbyCandidate),
            (Role::Standby, DrState::StandbyConfiguring),
            (Role::Standby, DrState::StandbySync),
            (Role::Standby, DrState::StandbyRunning),
        ]
    );
    assert_eq!(
        steps(A)[2..],
        [
            (Role::Active, DrState::ActiveConfiguring),
            (Role::Active, DrState::ActiveWaitStandby),
            (Role::Active, DrState::StandbySync),
            (Role::Active, DrState::StandbyRunning),
        ]
    );
    let st = sim.servers[A].s().status();
    assert_eq!(
        (st.lag_entries, st.degraded, st.unprotected_writes),
        (0, false, 0)
    );
    assert!(st.last_dr_protected_ms.is_some());
}

#[test]
fn thousand_writes_then_planned_switchover_loses_nothing() {
    for_seeds(seeds(0..4), |seed| {
        let mut sim = standby_running_pair(seed, OnStandbyLoss::Block, 2);
        sim.faults = Faults::lossy();
        let writes = burst(&mut sim, A, "cfg", 1000);
        assert!(
            sim.run_until(60_000, |s| writes
                .iter()
                .all(|(r, _, _)| s.reply(A, *r).is_some())),
            "{}",
            sim.describe()
        );
        let acked = acked(&sim, A, &writes);
        assert_eq!(
            acked.len(),
            1000,
            "seed {seed}: every write is acknowledged in a healthy pair"
        );
        // Planned switchover: promote b with force while a is healthy.
        let r = sim.call(B, Command::Promote { force: true }, 30_000);
        assert_eq!(
            r,
            Ok(Reply::Promoted {
                epoch: 2,
                data_loss_bound: Some(0)
            }),
            "seed {seed}"
        );
        assert!(sim.is(B, Role::Standalone, DrState::StandbyPromoted));
        assert!(
            sim.run_until(5_000, |s| s.is(A, Role::Zombie, DrState::Zombie)),
            "seed {seed}: {}",
            sim.describe()
        );
        for (k, v) in &acked {
            assert!(
                sim.servers[B].store.contains_put(k, v.as_bytes()),
                "seed {seed}: {k} lost in the switchover"
            );
        }
        // The zombie refuses writes and names the promoted server.
        let err = sim.call(A, put("late", "1"), 100).unwrap_err();
        assert_eq!(
            err,
            CommandError::ZombieRefuses {
                method: "configuration/put".into(),
                fenced_by: 2,
                promoted_admin: Some(info(B).admin_address)
            }
        );
        assert!(err.to_string().contains("b:8443"), "{err}");
        // Edges follow the promoted server.
        sim.faults = Faults::none();
        assert!(
            sim.run_until(5_000, |s| s.all_follow("b:7444")),
            "seed {seed}"
        );
    });
}

#[test]
fn active_crash_forced_failover_keeps_every_acknowledged_write() {
    for_seeds(seeds(0..16), |seed| {
        let mut sim = standby_running_pair(seed, OnStandbyLoss::Block, 1);
        sim.faults = Faults::lossy();
        let writes = burst(&mut sim, A, "w", 300);
        // Crash the active somewhere in the middle of the burst.
        let crash_after = 1 + seed * 7 % 40;
        sim.run_for(crash_after);
        sim.crash(A);
        let acked = acked(&sim, A, &writes);
        // The standby notices, the operator promotes.
        assert!(
            sim.run_until(5_000, |s| s.is(
                B,
                Role::Standby,
                DrState::FailureGetActiveStatus
            )),
            "seed {seed}: {}",
            sim.describe()
        );
        let r = sim.call(B, Command::Promote { force: false }, 1_000);
        assert_eq!(
            r,
            Ok(Reply::Promoted {
                epoch: 2,
                data_loss_bound: Some(0)
            }),
            "seed {seed}"
        );
        for (k, v) in &acked {
            assert!(
                sim.servers[B].store.contains_put(k, v.as_bytes()),
                "seed {seed}: acknowledged {k} missing after failover"
            );
        }
        // The promoted server takes writes at epoch 2.
        assert!(matches!(
            sim.call(B, put("after", "1"), 1_000),
            Ok(Reply::Written { .. })
        ));
    });
}

#[test]
fn old_active_restarts_alone_learns_the_epoch_from_an_edge_and_redirects() {
    let mut sim = standby_running_pair(3, OnStandbyLoss::Block, 2);
    sim.crash(A);
    disaster_promote_b(&mut sim);
    assert!(sim.run_until(5_000, |s| s.all_follow("b:7444")));
    // The old active comes back, but the peer link is cut: only edges can tell it.
    sim.cut(Node::Server(A), Node::Server(B));
    sim.restart(A);
    assert_eq!(
        (sim.servers[A].s().role(), sim.servers[A].s().epoch()),
        (Role::Active, 1),
        "comes back as it was"
    );
    assert!(
        sim.run_until(5_000, |s| s.is(A, Role::Zombie, DrState::Zombie)),
        "{}",
        sim.describe()
    );
    let fenced = sim.servers[A].events.iter().find_map(|e| match e {
        Event::Fenced {
            epoch,
            learned_from,
        } => Some((*epoch, learned_from.clone())),
        _ => None,
    });
    let (epoch, from) = fenced.expect("a Fenced event");
    assert_eq!(epoch, 2);
    assert!(
        from.starts_with("edge edge-"),
        "learned from an edge: {from}"
    );
    // Durably: a crash now brings it back a zombie.
    sim.run_for(100);
    sim.crash(A);
    sim.restart(A);
    assert!(sim.is(A, Role::Zombie, DrState::Zombie));
    // It never took a write at epoch 1 after the promotion, and it redirects edges.
    let s = sim.servers[A].s().status();
    assert_eq!(s.active_edge_address.as_deref(), Some("b:7444"));
    assert!(sim.run_until(2_000, |s| s
        .edges
        .iter()
        .all(|e| e.edge.slots()[A].redirect.as_deref() == Some("b:7444"))));
    assert!(sim.all_follow("b:7444"), "nobody follows the zombie");
}

#[test]
fn edges_cache_monitoring_during_the_outage_and_flush_it_in_order_exactly_once() {
    for_seeds(seeds(0..8), |seed| {
        let mut sim = standby_running_pair(seed, OnStandbyLoss::Block, 3);
        sim.faults = Faults::lossy();
        for round in 0..5 {
            for j in 0..3 {
                sim.sample(j);
            }
            sim.run_for(50 + round);
        }
        // Outage: the active dies; samples pile up in the edges' caches.
        sim.crash(A);
        sim.run_for(3_000);
        for _ in 0..10 {
            for j in 0..3 {
                sim.sample(j);
            }
            sim.run_for(100);
        }
        assert!(
            sim.edges.iter().all(|e| e.edge.following().is_none()),
            "seed {seed}: nobody to follow"
        );
        assert!(
            sim.edges.iter().all(|e| e.edge.cached_samples() >= 10),
            "seed {seed}: samples are cached"
        );
        assert!(sim.is(B, Role::Standby, DrState::FailureGetActiveStatus));
        assert!(matches!(
            sim.call(B, Command::Promote { force: false }, 1_000),
            Ok(Reply::Promoted { .. })
        ));
        let ok = sim.run_until(20_000, |s| {
            s.edges.iter().all(|e| e.edge.cached_samples() == 0)
        });
        assert!(
            ok,
            "seed {seed}: caches flushed: {:?}",
            sim.edges
                .iter()
                .map(|e| e.edge.cached_samples())
                .collect::<Vec<_>>()
        );
        sim.run_for(100); // the commit record that files the samples follows the acknowledgement
                          // Every sample, once, in order, on the promoted server.
        let store = &sim.servers[B].store;
        assert_eq!(store.duplicate_samples, 0, "seed {seed}");
        for j in 0..3 {
            let id = format!("edge-{j}");
            let seqs: Vec<u64> = store
                .samples
                .keys()
                .filter(|(c, _)| *c == id)
                .map(|(_, q)| *q)
                .collect();
            assert_eq!(
                seqs,
                (1..=15).collect::<Vec<_>>(),
                "seed {seed}: {id}'s samples"
            );
            assert_eq!(
                store.samples[&(id.clone(), 15)],
                format!("edge-{j}/sample-15").into_bytes()
            );
        }
        assert_eq!(
            sim.edges
                .iter()
                .map(|e| e.edge.dropped_samples())
                .sum::<u64>(),
            0
        );
    });
}

#[test]
fn degrade_mode_counts_unprotected_writes_and_rejoin_archives_the_divergent_ones() {
    let mut sim = standby_running_pair(5, OnStandbyLoss::Degrade, 1);
    let before = burst(&mut sim, A, "pre", 10);
    assert!(sim.run_until(2_000, |s| before
        .iter()
        .all(|(r, _, _)| s.reply(A, *r).is_some())));
    // The standby is cut off from the active (not from the edge).
    sim.cut(Node::Server(A), Node::Server(B));
    let during = burst(&mut sim, A, "lonely", 5);
    assert!(sim.run_until(1_000, |s| s.is(
        A,
        Role::Active,
        DrState::FailureGetStandbyStatus
    )));
    assert!(
        during.iter().all(|(r, _, _)| sim.reply(A, *r).is_none()),
        "writes wait for the grace period"
    );
    assert!(sim.run_until(5_000, |s| during
        .iter()
        .all(|(r, _, _)| s.reply(A, *r).is_some())));
    let st = sim.servers[A].s().status();
    assert!(st.degraded);
    assert_eq!(st.unprotected_writes, 5);
    assert!(
        st.failure_description
            .as_deref()
            .unwrap_or("")
            .contains("unprotected"),
        "{st:?}"
    );
    assert!(
        sim.servers[A]
            .events
            .iter()
            .any(|e| matches!(e, Event::Degraded { .. })),
        "never silent"
    );
    // Disaster on the other side: the operator promotes b, which lacks the 5 writes.
    sim.isolate(A);
    assert!(sim.run_until(5_000, |s| s.is(
        B,
        Role::Standby,
        DrState::FailureGetActiveStatus
    )));
    let r = sim.call(B, Command::Promote { force: false }, 1_000);
    assert_eq!(
        r,
        Ok(Reply::Promoted {
            epoch: 2,
            data_loss_bound: None
        }),
        "degrade mode cannot promise 0"
    );
    let b_writes = burst(&mut sim, B, "new", 3);
    assert!(sim.run_until(1_000, |s| b_writes
        .iter()
        .all(|(r, _, _)| s.reply(B, *r).is_some())));
    // The network heals: a learns the new epoch and becomes a zombie, then rejoins.
    sim.heal_all();
    assert!(
        sim.run_until(5_000, |s| s.is(A, Role::Zombie, DrState::Zombie)),
        "{}",
        sim.describe()
    );
    assert_eq!(sim.call(A, Command::Rejoin, 100), Ok(Reply::Accepted));
    assert!(
        sim.run_until(10_000, |s| s.is(A, Role::Standby, DrState::StandbyRunning)
            && s.is(B, Role::Active, DrState::StandbyRunning)),
        "{}",
        sim.describe()
    );
    // The 5 unprotected writes are archived on a, never silently dropped, and not on b.
    for (_, k, v) in &during {
        assert!(
            sim.servers[A].store.archived_put(k, v.as_bytes()),
            "{k} archived"
        );
        assert!(!sim.servers[B].store.contains_put(k, v.as_bytes()));
    }
    assert!(sim.servers[A]
        .events
        .iter()
        .any(|e| matches!(e, Event::DivergenceArchived { .. })));
    // The new standby has everything b acknowledged.
    for (_, k, v) in before.iter().chain(&b_writes) {
        assert!(
            sim.servers[A].store.contains_put(k, v.as_bytes()),
            "{k} on the rejoined standby"
        );
    }
}

#[test]
fn block_mode_refuses_writes_after_the_grace_and_resumes_when_the_standby_returns() {
    let mut sim = standby_running_pair(6, OnStandbyLoss::Block, 0);
    sim.cut(Node::Server(A), Node::Server(B));
    let cut_at = sim.now_ms;
    let held = burst(&mut sim, A, "held", 3);
    assert!(sim.run_until(3_000, |s| s.servers[A].s().status().writes_blocked));
    // The writes waiting at the grace are answered then, not at write_timeout:
    // not acknowledged, and told that they may still take effect.
    let grace = sim.servers[A].cfg.standby_grace_ms;
    for (r, _, _) in &held {
        let Some(Err(CommandError::NotAcknowledged { reason, .. })) = sim.reply(A, *r) else {
            panic!("{:?}", sim.reply(A, *r))
        };
        assert!(reason.contains("may still take effect"), "{reason}");
    }
    assert!(
        sim.now_ms - cut_at <= grace + 1_000,
        "answered at the grace"
    );
    let st = sim.servers[A].s().status();
    assert_eq!((st.pending_writes, st.unprotected_writes), (0, 0));
    let err = sim.call(A, put("refused", "1"), 100).unwrap_err();
    assert!(
        matches!(&err, CommandError::WritesBlocked(m) if m.contains("on_standby_loss = block")),
        "{err}"
    );
    assert!(sim.servers[A].events.iter().any(|e| matches!(
        e,
        Event::WritesBlocked {
            refused_pending: 3,
            ..
        }
    )));
    sim.heal_all();
    assert!(sim.run_until(5_000, |s| s.is(A, Role::Active, DrState::StandbyRunning)));
    assert!(matches!(
        sim.call(A, put("after", "1"), 1_000),
        Ok(Reply::Written { .. })
    ));
    // The refused writes were still in a's log: the standby came back, so
    // they took effect, on both servers, as their refusal said they might.
    for (_, k, v) in &held {
        assert!(sim.servers[B].store.contains_put(k, v.as_bytes()), "{k}");
        let got = sim.call(A, Command::Get { key: k.clone() }, 100);
        assert!(
            matches!(&got, Ok(Reply::Doc { value, .. }) if value == v.as_bytes()),
            "{got:?}"
        );
    }
    assert!(!sim.servers[B].store.contains_put("refused", b"1"));
}

#[test]
fn standby_and_zombie_refuse_what_they_must() {
    let mut sim = standby_running_pair(7, OnStandbyLoss::Block, 0);
    let w = sim.call(A, put("k", "1"), 1_000);
    assert_eq!(
        w,
        Ok(Reply::Written {
            key: "k".into(),
            version: 1
        })
    );
    // A standby serves DR calls only, naming the active.
    for cmd in [
        put("k", "2"),
        Command::Get { key: "k".into() },
        Command::List,
        Command::Delete { key: "k".into() },
    ] {
        let method = cmd.method().to_string();
        let err = sim.call(B, cmd, 100).unwrap_err();
        assert_eq!(
            err,
            CommandError::StandbyRefuses {
                method,
                state: DrState::StandbyRunning,
                active_admin: Some("a:8443".into())
            }
        );
    }
    // DR calls in the wrong state are refused with the reason.
    let err = sim
        .call(B, Command::Promote { force: false }, 100)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("use force:true for a planned switchover"),
        "{err}"
    );
    let err = sim
        .call(A, Command::Promote { force: true }, 100)
        .unwrap_err();
    assert!(
        err.to_string().contains("only a STANDBY can be promoted"),
        "{err}"
    );
    let err = sim.call(B, Command::PrepareForStandby, 100).unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::WrongState {
                role: Role::Standby,
                ..
            }
        ),
        "{err}"
    );
    let err = sim.call(A, Command::Rejoin, 100).unwrap_err();
    assert!(err.to_string().contains("only a ZOMBIE"), "{err}");
    // The zombie accepts no configuration change.
    sim.call(B, Command::Promote { force: true }, 10_000)
        .unwrap();
    assert!(sim.run_until(2_000, |s| s.is(A, Role::Zombie, DrState::Zombie)));
    for cmd in [put("k", "3"), Command::Delete { key: "k".into() }] {
        assert!(matches!(
            sim.call(A, cmd, 100),
            Err(CommandError::ZombieRefuses { fenced_by: 2, .. })
        ));
    }
    let err = sim
        .call(A, Command::RemoveStandby { force: false }, 100)
        .unwrap_err();
    assert!(err.to_string().contains("rejoinAsStandby"), "{err}");
    // And the promoted server has the value.
    assert_eq!(
        sim.call(B, Command::Get { key: "k".into() }, 100),
        Ok(Reply::Doc {
            key: "k".into(),
            value: b"1".to_vec(),
            version: 1
        })
    );
}

#[test]
fn edges_never_apply_configuration_of_a_lower_epoch_after_seeing_a_higher_one() {
    for_seeds(seeds(0..8), |seed| {
        let mut sim = standby_running_pair(seed, OnStandbyLoss::Degrade, 4);
        sim.faults = Faults::lossy();
        burst(&mut sim, A, "x", 20);
        sim.run_for(2_000);
        sim.cut(Node::Server(A), Node::Server(B));
        sim.cut(Node::Server(A), Node::Edge(0));
        sim.run_for(1_000);
        sim.call(B, Command::Promote { force: false }, 2_000)
            .unwrap();
        burst(&mut sim, B, "y", 5);
        burst(&mut sim, A, "z", 5);
        sim.run_for(5_000);
        sim.heal_all();
        sim.run_for(5_000);
        for (j, e) in sim.edges.iter().enumerate() {
            for (k, ((epoch, _), seen)) in e.applied.iter().zip(&e.seen_when_applied).enumerate() {
                assert!(
                    epoch >= seen,
                    "seed {seed}: edge {j} applied epoch {epoch} after seeing {seen}"
                );
                if k > 0 {
                    assert!(
                        *epoch >= e.applied[k - 1].0,
                        "seed {seed}: edge {j} regressed"
                    );
                }
            }
            assert_eq!(
                e.edge.following_address(),
                Some("b:7444"),
                "seed {seed}: edge {j} converged"
            );
            assert_eq!(
                e.edge.config_applied().0,
                2,
                "seed {seed}: edge {j} runs the promoted configuration"
            );
        }
        assert!(sim.is(A, Role::Zombie, DrState::Zombie), "seed {seed}");
    });
}

#[test]
fn crash_restart_keeps_role_and_epoch() {
    let mut sim = standby_running_pair(8, OnStandbyLoss::Block, 0);
    let w = burst(&mut sim, A, "c", 50);
    assert!(sim.run_until(2_000, |s| w
        .iter()
        .all(|(r, _, _)| s.reply(A, *r).is_some())));
    for i in [B, A] {
        sim.crash(i);
        sim.restart(i);
    }
    assert_eq!(sim.servers[A].s().role(), Role::Active);
    assert_eq!(sim.servers[B].s().role(), Role::Standby);
    assert!(
        sim.run_until(5_000, |s| s.is(A, Role::Active, DrState::StandbyRunning)
            && s.is(B, Role::Standby, DrState::StandbyRunning)),
        "{}",
        sim.describe()
    );
    // The commit point reaches the standby with the next append or heartbeat.
    assert!(sim.run_until(1_000, |s| s.servers[B].s().commit_index() == 50));
    let keys: BTreeSet<String> = sim.servers[B].s().applied().docs.keys().cloned().collect();
    assert_eq!(keys.len(), 50);
    assert!(matches!(
        sim.call(A, put("again", "1"), 1_000),
        Ok(Reply::Written { .. })
    ));
}

#[test]
fn pairing_from_the_standby_side_with_a_replication_blob() {
    let mut sim = Sim::new(9, OnStandbyLoss::Block, 0);
    let w = sim.call(A, put("before", "1"), 1_000);
    assert!(matches!(w, Ok(Reply::Written { .. })));
    // getReplicationBlob on the would-be active, transitionToStandby on the other.
    let Ok(Reply::Blob {
        active,
        pairing_token,
    }) = sim.call(A, Command::GetReplicationBlob, 1_000)
    else {
        panic!()
    };
    assert_eq!(active, info(A));
    let join = Command::TransitionToStandby {
        active_address: active.peer_address,
        active_uuid: active.uuid,
        pairing_token,
    };
    assert_eq!(sim.call(B, join, 1_000), Ok(Reply::Accepted));
    assert!(
        sim.run_until(10_000, |s| s.is(A, Role::Active, DrState::StandbyRunning)
            && s.is(B, Role::Standby, DrState::StandbyRunning))
    );
    assert!(
        sim.servers[B].store.contains_put("before", b"1"),
        "the standby got the snapshot"
    );
    // A second transitionToStandby with the used token is refused by the active.
    let mut other = Sim::new(10, OnStandbyLoss::Block, 0);
    let join = Command::TransitionToStandby {
        active_address: info(A).peer_address,
        active_uuid: info(A).uuid,
        pairing_token: 12345,
    };
    assert_eq!(other.call(B, join, 1_000), Ok(Reply::Accepted));
    other.run_for(2_000);
    assert!(
        other.is(A, Role::Standalone, DrState::Unconfigured),
        "no blob outstanding: refused"
    );
    let st = other.servers[B].s().status();
    assert!(
        st.failure_description
            .as_deref()
            .unwrap_or("")
            .contains("refused by the active"),
        "{st:?}"
    );
}

#[test]
fn remove_standby_returns_both_servers_to_standalone() {
    let mut sim = standby_running_pair(12, OnStandbyLoss::Block, 0);
    assert_eq!(
        sim.call(A, Command::RemoveStandby { force: false }, 1_000),
        Ok(Reply::Accepted)
    );
    assert!(
        sim.run_until(2_000, |s| s.is(A, Role::Standalone, DrState::Unconfigured)
            && s.is(B, Role::Standalone, DrState::Unconfigured))
    );
    assert!(
        matches!(
            sim.call(A, put("solo", "1"), 1_000),
            Ok(Reply::Written { .. })
        ),
        "no standby to wait for"
    );
    assert_eq!(sim.servers[A].s().pair_id(), None);
}

#[test]
fn manual_demotion_then_disaster_promotion_of_the_standby() {
    let mut sim = standby_running_pair(13, OnStandbyLoss::Block, 1);
    let w = sim.call(A, put("k", "1"), 1_000);
    assert!(matches!(w, Ok(Reply::Written { .. })));
    sim.run_for(300); // the commit point reaches the standby
    assert_eq!(
        sim.call(A, Command::DemoteActive { force: false }, 1_000),
        Ok(Reply::Accepted)
    );
    assert!(sim.is(A, Role::Zombie, DrState::Zombie));
    assert!(sim.run_until(5_000, |s| s.is(
        B,
        Role::Standby,
        DrState::FailureGetActiveStatus
    )));
    assert!(matches!(
        sim.call(B, Command::Promote { force: false }, 1_000),
        Ok(Reply::Promoted { epoch: 2, .. })
    ));
    assert!(sim.run_until(5_000, |s| s.following()[0].as_deref() == Some("b:7444")));
    assert_eq!(
        sim.call(B, Command::Get { key: "k".into() }, 100),
        Ok(Reply::Doc {
            key: "k".into(),
            value: b"1".to_vec(),
            version: 1
        })
    );
    // The demoted server rejoins the promoted one.
    assert_eq!(sim.call(A, Command::Rejoin, 100), Ok(Reply::Accepted));
    assert!(
        sim.run_until(10_000, |s| s.is(A, Role::Standby, DrState::StandbyRunning)),
        "{}",
        sim.describe()
    );
}

#[test]
fn an_old_active_restarting_alone_refuses_writes_instead_of_degrading() {
    let mut sim = standby_running_pair(14, OnStandbyLoss::Degrade, 0);
    sim.crash(A);
    disaster_promote_b(&mut sim);
    // a comes back without any way to hear of epoch 2 (no edges, peer link cut).
    sim.cut(Node::Server(A), Node::Server(B));
    sim.restart(A);
    let restarted_at = sim.now_ms;
    let last_index = sim.servers[A].s().last_index();
    // No write before the standby says what it holds of the last run (SPEC §4).
    let err = sim.call(A, put("split-brain", "1"), 100).unwrap_err();
    assert!(
        matches!(&err, CommandError::WritesBlocked(why) if why.contains("restarted")),
        "{err}"
    );
    assert!(sim.servers[A].s().status().writes_blocked);
    // Once the standby is declared lost — not at the grace — the refusal
    // names the risk and the ways out.
    let cfg = sim.servers[A].cfg.clone();
    let detection = cfg.peer_heartbeat_interval_ms * u64::from(cfg.peer_failure_threshold + 1);
    assert!(
        sim.run_until(detection, |s| s.servers[A].s().dr_state()
            == DrState::FailureGetStandbyStatus),
        "{}",
        sim.describe()
    );
    assert!(sim.now_ms - restarted_at < cfg.standby_grace_ms);
    let err = sim.call(A, put("refused", "1"), 100).unwrap_err();
    assert!(err.to_string().contains("may have been promoted"), "{err}");
    assert!(err.to_string().contains("removeStandby"), "{err}");
    let st = sim.servers[A].s().status();
    assert_eq!((st.degraded, st.unprotected_writes), (false, 0));
    // The link heals: the promoted server fences it.
    sim.heal_all();
    assert!(
        sim.run_until(5_000, |s| s.is(A, Role::Zombie, DrState::Zombie)),
        "{}",
        sim.describe()
    );
    assert_eq!(
        sim.servers[A].s().last_index(),
        last_index,
        "nothing was written while a was alone"
    );
}

/// A heartbeat from a hostile edge (its own, valid certificate) whose view
/// claims that `address` holds `epoch` of the pair, with `proof`.
fn forged_heartbeat(
    sim: &Sim,
    client: &str,
    address: &str,
    epoch: Epoch,
    proof: Option<std::sync::Arc<EpochProof>>,
) -> Heartbeat {
    let pair_id = sim.servers[A].s().pair_id();
    let view = |address: &str, role, epoch| ViewEntry {
        address: address.into(),
        role: Some(role),
        epoch,
        pair_id,
        last_response_ms: Some(1),
    };
    Heartbeat {
        client_id: client.into(),
        client_type: ClientType::Edge,
        seq: 1,
        view: [
            view("a:7444", Role::Active, 1),
            view(address, Role::Standalone, epoch),
        ],
        following: None,
        config_epoch: 0,
        config_version: 0,
        cached_samples: 0,
        dropped_samples: 0,
        proof,
    }
}

#[test]
fn a_stolen_edge_certificate_cannot_fence_the_pair_through_heartbeats() {
    let mut sim = standby_running_pair(21, OnStandbyLoss::Block, 2);
    assert!(sim.run_until(5_000, |s| s.all_follow("a:7444")));
    // The attacker's heartbeats claim epoch 99 at an address of its own,
    // first without a proof, then with one signed by its own key.
    let pair_id = sim.servers[A].s().pair_id().expect("paired");
    let own = vcodr_core::testing::TestKeys::keys("edge-stolen").prove(EpochClaim {
        pair_id,
        epoch: 99,
        holder: info(B).uuid,
        holder_name: "b".into(),
        holder_edge_address: "attacker:7444".into(),
    });
    for proof in [None, Some(std::sync::Arc::new(own))] {
        for to in [A, B] {
            let hb = forged_heartbeat(&sim, "edge-stolen", "attacker:7444", 99, proof.clone());
            let reply = sim.forge_heartbeat(to, "edge-stolen", hb);
            assert!(
                matches!(reply, Some(ServerMsg::HeartbeatReply(_))),
                "answered like any heartbeat: {reply:?}"
            );
        }
    }
    sim.run_for(2_000);
    assert!(
        sim.is(A, Role::Active, DrState::StandbyRunning),
        "{}",
        sim.describe()
    );
    assert!(
        sim.is(B, Role::Standby, DrState::StandbyRunning),
        "{}",
        sim.describe()
    );
    for s in [A, B] {
        let st = sim.servers[s].s().status();
        assert_eq!(
            (st.epoch, st.highest_epoch_seen, st.fenced_by),
            (1, 1, None)
        );
        let marked = sim.servers[s]
            .s()
            .contacts()
            .find(|c| c.client_id == "edge-stolen")
            .map(|c| c.forged_epoch_claims);
        assert_eq!(
            marked,
            Some(2),
            "the stolen certificate is marked on {}",
            info(s).name
        );
        let counted = sim.servers[s]
            .events
            .iter()
            .filter(|e| matches!(e, Event::ForgedEpochClaim { client, claimed: 99, .. } if client == "edge-stolen"))
            .count();
        assert_eq!(counted, 2);
    }
    // The pair keeps serving: a write is acknowledged with the standby.
    assert!(matches!(
        sim.call(A, put("after-attack", "1"), 2_000),
        Ok(Reply::Written { .. })
    ));
    assert!(
        sim.all_follow("a:7444"),
        "the honest edges stay on the active"
    );
}

#[test]
fn the_genuine_proof_reaches_the_old_active_through_edges_alone() {
    let mut sim = standby_running_pair(22, OnStandbyLoss::Block, 3);
    assert!(sim.run_until(5_000, |s| s.all_follow("a:7444")));
    // The peer link breaks; the edges still reach both servers.
    sim.cut(Node::Server(A), Node::Server(B));
    disaster_promote_b(&mut sim);
    let promoted_at = sim.now_ms;
    assert!(
        sim.run_until(5_000, |s| s.is(A, Role::Zombie, DrState::Zombie)),
        "{}",
        sim.describe()
    );
    // Edges heartbeat every 500 ms (±10 %) here: the first edge that hears of
    // the promotion relays the proof to the old active at once.
    let took = sim.now_ms - promoted_at;
    assert!(took <= 550 + 20, "fenced {took} ms after the promotion");
    let st = sim.servers[A].s().status();
    let proof = st
        .epoch_proof
        .expect("the zombie keeps the proof it was fenced by");
    assert_eq!(
        (proof.claim.epoch, proof.claim.holder_name.as_str()),
        (2, "b")
    );
    assert!(sim.run_until(3_000, |s| s.all_follow("b:7444")));
}

#[test]
fn a_zombie_leaves_the_pair_only_when_its_own_view_allows_it_or_by_force() {
    // Demoted by hand, nobody promoted: removeStandby brings it back as a
    // standalone server with its data.
    let mut sim = standby_running_pair(23, OnStandbyLoss::Block, 0);
    assert!(matches!(
        sim.call(A, put("k", "1"), 1_000),
        Ok(Reply::Written { .. })
    ));
    sim.run_for(300);
    assert_eq!(
        sim.call(A, Command::DemoteActive { force: false }, 1_000),
        Ok(Reply::Accepted)
    );
    assert_eq!(
        sim.call(A, Command::RemoveStandby { force: false }, 1_000),
        Ok(Reply::Accepted)
    );
    assert!(sim.run_until(2_000, |s| s.is(A, Role::Standalone, DrState::Unconfigured)));
    assert_eq!(
        sim.call(A, Command::Get { key: "k".into() }, 100),
        Ok(Reply::Doc {
            key: "k".into(),
            value: b"1".to_vec(),
            version: 1
        })
    );
    let reason = sim.servers[A]
        .store
        .history
        .back()
        .map(|t| t.reason.clone())
        .unwrap_or_default();
    assert!(reason.contains("zombie left the pair"), "{reason}");

    // After a real promotion the zombie provably has a successor: refused
    // unless forced, and the refusal names the holder and the way out.
    let mut sim = standby_running_pair(24, OnStandbyLoss::Block, 0);
    sim.call(B, Command::Promote { force: true }, 10_000)
        .unwrap();
    assert!(
        sim.run_until(2_000, |s| s.is(A, Role::Zombie, DrState::Zombie)
            && s.servers[A].s().epoch_proof().is_some())
    );
    let err = sim
        .call(A, Command::RemoveStandby { force: false }, 100)
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("server `b`") && text.contains("epoch 2") && text.contains("rejoinAsStandby"),
        "{text}"
    );
    assert_eq!(
        sim.call(A, Command::RemoveStandby { force: true }, 1_000),
        Ok(Reply::Accepted)
    );
    assert!(sim.run_until(2_000, |s| s.is(A, Role::Standalone, DrState::Unconfigured)));
    assert!(
        sim.is(B, Role::Standalone, DrState::StandbyPromoted),
        "the promoted server is untouched"
    );
    let st = sim.servers[A].s().status();
    assert_eq!(
        (st.pair_id, st.fenced_by, st.highest_epoch_seen),
        (None, None, 1)
    );
}

#[test]
fn pairing_is_completed_only_by_the_server_that_got_the_token() {
    let mut sim = Sim::new(25, OnStandbyLoss::Block, 0);
    let Ok(Reply::Prepared {
        vco_uuid,
        pairing_token,
    }) = sim.call(B, Command::PrepareForStandby, 1_000)
    else {
        panic!("prepare")
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
    assert!(matches!(r, Ok(Reply::Configured { .. })));
    // A third server of the deployment answers first, claiming to be b,
    // with a guessed token: refused, pins nothing.
    let pair_id = sim.servers[A].s().pair_id();
    sim.forge_peer(
        A,
        vcodr_core::testing::identity("x"),
        PeerEnvelope {
            from: info(B).uuid,
            pair_id,
            epoch: 1,
            body: PeerMsg::PairAccepted {
                standby: ServerInfo {
                    name: "x".into(),
                    ..info(B)
                },
                token: pairing_token ^ 1,
            },
        },
    );
    assert!(sim.servers[A].s().peer_identity().is_none());
    assert!(sim.servers[A].events.iter().any(|e| matches!(
        e,
        Event::PeerRefused {
            reason: PeerRefusal::PairingRefused,
            ..
        }
    )));
    // The real standby completes the pairing; both pin each other.
    assert!(
        sim.run_until(10_000, |s| s.is(A, Role::Active, DrState::StandbyRunning)
            && s.is(B, Role::Standby, DrState::StandbyRunning))
    );
    assert_eq!(sim.servers[A].s().peer_identity(), Some(&identity(B)));
    assert_eq!(sim.servers[B].s().peer_identity(), Some(&identity(A)));
    // A pairing attempt by another server is answered on its own link and changes nothing.
    sim.forge_peer(
        B,
        vcodr_core::testing::identity("x"),
        PeerEnvelope {
            from: 0xBAD,
            pair_id: None,
            epoch: 1,
            body: PeerMsg::Pair {
                token: pairing_token,
                standby_uuid: info(B).uuid,
                active: ServerInfo {
                    name: "x".into(),
                    peer_address: "attacker:7443".into(),
                    ..info(A)
                },
                policy: OnStandbyLoss::Degrade,
            },
        },
    );
    sim.run_for(1_000);
    assert!(sim.is(B, Role::Standby, DrState::StandbyRunning));
    assert!(!sim.dialled.contains("attacker:7443"), "{:?}", sim.dialled);
}

/// Found by the fault drills (`VCODR_DRILL_SEED=4`, and seeds 2, 3, 5):
/// samples the promoted server stored while it ran alone, before the old
/// active rejoined, never reach the rejoined server. Its resync is a
/// snapshot, and a snapshot carries each client's highest sample seq but
/// not the samples themselves; after the next switchover the new active
/// lacks them (they survive only on the other server), although every one
/// was acknowledged to its edge. Fixed by the sample copy after a snapshot:
/// the rejoined server pulls what it lacks from the active and is not
/// STANDBY_RUNNING (so the switchover back waits) until it holds them.
#[test]
fn samples_stored_before_a_rejoin_reach_the_rejoined_server() {
    for_seeds(seeds(0..4), |seed| {
        let mut sim = standby_running_pair(seed, OnStandbyLoss::Block, 2);
        assert_eq!(
            sim.call(B, Command::Promote { force: true }, 30_000),
            Ok(Reply::Promoted {
                epoch: 2,
                data_loss_bound: Some(0)
            }),
            "seed {seed}"
        );
        assert!(
            sim.run_until(5_000, |s| s.is(A, Role::Zombie, DrState::Zombie)
                && s.all_follow("b:7444")),
            "seed {seed}: {}",
            sim.describe()
        );
        // b runs alone (its old active is a zombie): the edges' samples are
        // acknowledged once durable on b.
        for _ in 0..5 {
            for j in 0..2 {
                sim.sample(j);
            }
            sim.run_for(100);
        }
        assert!(
            sim.run_until(5_000, |s| s
                .edges
                .iter()
                .all(|e| e.edge.cached_samples() == 0)),
            "seed {seed}: b acknowledges the samples"
        );
        sim.run_for(100);
        // a rejoins as b's standby, and b hands over to it (zero loss, always).
        assert_eq!(sim.call(A, Command::Rejoin, 100), Ok(Reply::Accepted));
        assert!(
            sim.run_until(10_000, |s| s.is(A, Role::Standby, DrState::StandbyRunning)
                && s.is(B, Role::Active, DrState::StandbyRunning)),
            "seed {seed}: {}",
            sim.describe()
        );
        assert!(matches!(
            sim.call(A, Command::Promote { force: true }, 30_000),
            Ok(Reply::Promoted { epoch: 3, .. })
        ));
        for j in 0..2 {
            let id = format!("edge-{j}");
            for store in [&sim.servers[B].store, &sim.servers[A].store] {
                let seqs: Vec<u64> = store
                    .samples
                    .keys()
                    .filter(|(c, _)| *c == id)
                    .map(|(_, q)| *q)
                    .collect();
                assert_eq!(
                    seqs,
                    (1..=5).collect::<Vec<_>>(),
                    "seed {seed}: {id}'s acknowledged samples on {}",
                    if std::ptr::eq(store, &sim.servers[A].store) {
                        "a, the new active"
                    } else {
                        "b"
                    }
                );
            }
        }
    });
}
