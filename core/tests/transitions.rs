//! Exact outputs of single transitions and refusals of the server machine.

mod sim;

use sim::*;
use vcodr_core::*;

use vcodr_core::testing::drain;

fn fresh() -> Server {
    let mut s = Server::new(
        sim_server_config(OnStandbyLoss::Block, 1),
        info(0),
        Now::at(1_000),
    );
    drain(&mut s);
    s
}

fn cmd(s: &mut Server, req: RequestId, c: Command) -> Vec<Output> {
    s.handle_input(Now::at(2_000), Input::Command { req, cmd: c });
    drain(s)
}

fn persisted(s: &mut Server, up_to: PersistSeq) -> Vec<Output> {
    s.handle_input(Now::at(3_000), Input::Persisted { up_to });
    drain(s)
}

fn meta_of(out: &[Output]) -> Option<DurableMeta> {
    out.iter().find_map(|o| match o {
        Output::Persist { ops, .. } => ops.iter().find_map(|op| match op {
            PersistOp::Meta(m) => Some((**m).clone()),
            _ => None,
        }),
        _ => None,
    })
}

#[test]
fn first_start_persists_standalone_metadata_and_arms_the_peer_tick() {
    let mut s = Server::new(
        sim_server_config(OnStandbyLoss::Block, 1),
        info(0),
        Now::at(1_000),
    );
    let out = drain(&mut s);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(
        out[0],
        Output::SetTimer {
            timer: Timer::PeerTick,
            after_ms: 100
        }
    );
    let m = meta_of(&out).expect("metadata persisted");
    assert_eq!(
        (m.role, m.dr_state, m.epoch, m.pair_id),
        (Role::Standalone, DrState::Unconfigured, 1, None)
    );
}

#[test]
fn standalone_write_is_acknowledged_once_durable_and_then_committed() {
    let mut s = fresh();
    let out = cmd(
        &mut s,
        7,
        Command::Put {
            key: "k".into(),
            value: b"{}".to_vec(),
        },
    );
    let entry = Entry {
        epoch: 1,
        index: 1,
        op: Op::Put {
            key: "k".into(),
            value: b"{}".to_vec(),
        },
    };
    assert_eq!(
        out,
        vec![Output::Persist {
            seq: 2,
            ops: vec![PersistOp::Append(vec![entry])]
        }]
    );
    let out = persisted(&mut s, 2);
    assert_eq!(
        out,
        vec![
            Output::Reply {
                req: 7,
                result: Ok(Reply::Written {
                    key: "k".into(),
                    version: 1
                })
            },
            Output::Persist {
                seq: 3,
                ops: vec![PersistOp::Commit(1)]
            },
        ]
    );
    assert_eq!(
        cmd(&mut s, 8, Command::Get { key: "k".into() }),
        vec![Output::Reply {
            req: 8,
            result: Ok(Reply::Doc {
                key: "k".into(),
                value: b"{}".to_vec(),
                version: 1
            })
        }]
    );
}

#[test]
fn group_commit_one_persist_acknowledges_many_writes() {
    let mut s = fresh();
    for i in 0..5 {
        let out = cmd(
            &mut s,
            i,
            Command::Put {
                key: format!("k{i}"),
                value: b"1".to_vec(),
            },
        );
        assert!(matches!(&out[..], [Output::Persist { .. }]));
    }
    let out = persisted(&mut s, 6);
    let acks: Vec<RequestId> = out
        .iter()
        .filter_map(|o| match o {
            Output::Reply {
                req,
                result: Ok(Reply::Written { .. }),
            } => Some(*req),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![0, 1, 2, 3, 4]);
}

#[test]
fn prepare_for_standby_answers_after_the_token_is_durable() {
    let mut s = fresh();
    let out = cmd(&mut s, 1, Command::PrepareForStandby);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Reply { .. })),
        "no answer before durability: {out:?}"
    );
    let m = meta_of(&out).expect("metadata");
    assert_eq!(
        (m.role, m.dr_state),
        (Role::Standby, DrState::StandbyCandidate)
    );
    let token = m.pairing_token.expect("token persisted");
    assert!(out.iter().any(|o| matches!(o, Output::Event(Event::Transition(t)) if t.to == DrState::StandbyCandidate && t.reason == "prepared for standby")));
    let out = persisted(&mut s, 2);
    assert_eq!(
        out,
        vec![Output::Reply {
            req: 1,
            result: Ok(Reply::Prepared {
                vco_uuid: info(0).uuid,
                pairing_token: token
            })
        }]
    );
}

#[test]
fn every_refusal_names_its_reason() {
    let mut s = fresh();
    let refusal = |s: &mut Server, c: Command| -> CommandError {
        match &cmd(s, 99, c)[..] {
            [Output::Reply {
                req: 99,
                result: Err(e),
            }] => e.clone(),
            other => panic!("expected one refusal, got {other:?}"),
        }
    };
    let wrong = |method: &str, why: &str| CommandError::WrongState {
        method: method.into(),
        role: Role::Standalone,
        state: DrState::Unconfigured,
        why: why.into(),
    };
    assert_eq!(
        refusal(&mut s, Command::Promote { force: false }),
        wrong(
            "disasterRecovery/promoteStandbyToActive",
            "only a STANDBY can be promoted"
        )
    );
    assert_eq!(
        refusal(&mut s, Command::DemoteActive { force: true }),
        wrong(
            "disasterRecovery/demoteActive",
            "only an ACTIVE server can be demoted"
        )
    );
    assert_eq!(
        refusal(&mut s, Command::RemoveStandby { force: false }),
        wrong(
            "disasterRecovery/removeStandby",
            "DR is not configured on this server"
        )
    );
    assert_eq!(
        refusal(&mut s, Command::Rejoin),
        wrong(
            "disasterRecovery/rejoinAsStandby",
            "only a ZOMBIE that knows its promoted peer can rejoin"
        )
    );
    assert_eq!(
        refusal(&mut s, Command::Get { key: "nope".into() }),
        CommandError::NotFound("nope".into())
    );
    assert_eq!(
        refusal(&mut s, Command::Delete { key: "nope".into() }),
        CommandError::NotFound("nope".into())
    );
    assert_eq!(
        refusal(
            &mut s,
            Command::Put {
                key: String::new(),
                value: vec![]
            }
        ),
        CommandError::InvalidParam {
            param: "key".into(),
            why: "0 bytes; give 1 to 1024".into()
        }
    );
    let me = info(0);
    assert_eq!(
        refusal(
            &mut s,
            Command::ConfigureActive {
                standby_address: me.peer_address,
                standby_uuid: 5,
                pairing_token: 1
            }
        ),
        CommandError::InvalidParam {
            param: "standbyList[0]".into(),
            why: "names this server itself; give the standby's peer_listen address and vcoUuid"
                .into()
        }
    );
    assert_eq!(
        refusal(
            &mut s,
            Command::ConfigureActive {
                standby_address: " ".into(),
                standby_uuid: 5,
                pairing_token: 1
            }
        ),
        CommandError::InvalidParam {
            param: "standbyList[0].standbyAddress".into(),
            why: "empty".into()
        }
    );
}

#[test]
fn the_role_gate_decides_for_every_kind_of_call() {
    use RequestKind::*;
    let to = Redirects {
        admin: Some("b:8443".into()),
        edge: Some("b:7444".into()),
    };
    for kind in RequestKind::ALL {
        for role in [Role::Standalone, Role::Active] {
            assert_eq!(
                gate(role, DrState::StandbyRunning, 1, kind, "m", &to),
                Ok(())
            );
        }
        let standby = gate(Role::Standby, DrState::StandbyRunning, 1, kind, "m", &to);
        let dr = matches!(kind, DrStatus | DrHeartbeat | DrOperation | Login);
        assert_eq!(standby.is_ok(), dr, "standby / {kind:?}");
        if let Err(e) = standby {
            assert_eq!(e.to_string(), "m is refused: this server is a STANDBY (STANDBY_RUNNING); send it to the active server at b:8443");
        }
        let zombie = gate(Role::Zombie, DrState::Zombie, 2, kind, "m", &to);
        assert_eq!(
            zombie.is_ok(),
            dr || kind == MonitoringRead,
            "zombie / {kind:?}"
        );
        if let Err(e) = zombie {
            assert_eq!(e.to_string(), "m is refused: this server is a ZOMBIE, fenced by epoch 2; use the promoted server at b:8443");
        }
    }
    // The mutant that the model checker must catch: a standby's gate lets
    // configuration calls through (the server's gate reads its own config).
    for (mutant, served) in [(Mutant::None, false), (Mutant::StandbyServesConfig, true)] {
        let cfg = ServerConfig {
            mutant,
            ..sim_server_config(OnStandbyLoss::Block, 1)
        };
        let mut s = Server::new(cfg, info(0), Now::at(1_000));
        drain(&mut s);
        let _ = cmd(&mut s, 1, Command::PrepareForStandby);
        assert_eq!(s.role(), Role::Standby);
        assert_eq!(s.gate(ConfigWrite, "m").is_ok(), served, "{mutant:?}");
    }
}

fn running_pair() -> Sim {
    let mut sim = Sim::new(11, OnStandbyLoss::Block, 0);
    sim.pair(0, 1);
    sim.run_for(50);
    sim
}

/// The proof server `holder` makes when promoted to `epoch` of `pair_id`.
fn proof_by(holder: usize, pair_id: PairId, epoch: Epoch) -> std::sync::Arc<EpochProof> {
    std::sync::Arc::new(keys(holder).prove(EpochClaim {
        pair_id,
        epoch,
        holder: info(holder).uuid,
        holder_name: info(holder).name,
        holder_edge_address: info(holder).edge_address,
    }))
}

#[test]
fn an_edge_relaying_a_valid_epoch_proof_fences_the_active_at_once() {
    let mut sim = running_pair();
    let mut s = sim.servers[0].server.take().expect("running");
    drain(&mut s);
    let pair_id = s.pair_id();
    let proof = proof_by(1, pair_id.expect("paired"), 2);
    // A write is waiting for the standby when the news arrives.
    let out = cmd(
        &mut s,
        5,
        Command::Put {
            key: "late".into(),
            value: b"1".to_vec(),
        },
    );
    // Shipped to the standby at once, while it becomes durable here (SPEC §4).
    assert!(
        matches!(&out[..], [Output::SendPeer { msg, .. }, Output::Persist { .. }]
            if matches!(&msg.body, PeerMsg::Append { entries, .. } if entries.len() == 1)),
        "{out:?}"
    );
    let view = |address: &str, role, epoch| ViewEntry {
        address: address.into(),
        role: Some(role),
        epoch,
        pair_id,
        last_response_ms: Some(1),
    };
    let hb = Heartbeat {
        client_id: "edge-9".into(),
        client_type: ClientType::Edge,
        seq: 42,
        view: [
            view("a:7444", Role::Active, 1),
            view("b:7444", Role::Standalone, 2),
        ],
        following: Some("b:7444".into()),
        config_epoch: 2,
        config_version: 3,
        cached_samples: 0,
        dropped_samples: 0,
        proof: Some(proof.clone()),
    };
    s.handle_input(
        Now::at(9_000),
        Input::Edge {
            reply_to: 77,
            client: "edge-9".into(),
            client_type: ClientType::Edge,
            msg: EdgeMsg::Heartbeat(hb),
        },
    );
    let out = drain(&mut s);
    assert_eq!(s.role(), Role::Zombie);
    assert_eq!(
        out.iter()
            .find(|o| matches!(o, Output::Event(Event::Fenced { .. }))),
        Some(&Output::Event(Event::Fenced {
            epoch: 2,
            learned_from: "edge edge-9, relaying the proof of `b`".into()
        }))
    );
    assert!(out.contains(&Output::Reply {
        req: 5,
        result: Err(CommandError::NotAcknowledged {
            index: 1,
            reason: "this server was fenced by epoch 2; the write may still exist on the promoted \
                     server if it was replicated before the promotion: check there with configuration/get"
                .into()
        })
    }));
    let reply = out.iter().find_map(|o| match o {
        Output::ReplyEdge {
            reply_to: 77,
            msg: ServerMsg::HeartbeatReply(r),
        } => Some(r.clone()),
        _ => None,
    });
    assert_eq!(
        reply,
        Some(HeartbeatReply {
            seq: 42,
            role: Role::Zombie,
            dr_state: DrState::Zombie,
            epoch: 1,
            pair_id,
            active_address: Some("b:7444".into()),
            redirect: Some("b:7444".into()),
            config_version: 0,
            proof: Some(proof.clone()),
        })
    );
    let m = meta_of(&out).expect("fencing is persisted at once");
    assert_eq!(
        (m.role, m.fenced_by, m.redirect_edge.as_deref()),
        (Role::Zombie, Some(2), Some("b:7444"))
    );
    assert_eq!(
        m.epoch_proof,
        Some(proof),
        "the zombie keeps the proof and relays it"
    );
    // And it never acknowledges a write again.
    let out = cmd(
        &mut s,
        6,
        Command::Put {
            key: "x".into(),
            value: b"1".to_vec(),
        },
    );
    assert!(matches!(
        &out[..],
        [Output::Reply {
            req: 6,
            result: Err(CommandError::ZombieRefuses { fenced_by: 2, .. })
        }]
    ));
    let out = persisted(&mut s, 1_000);
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Reply { result: Ok(_), .. })),
        "{out:?}"
    );
}

#[test]
fn a_view_of_another_pair_or_a_lower_epoch_changes_nothing() {
    let mut sim = running_pair();
    let mut s = sim.servers[0].server.take().expect("running");
    drain(&mut s);
    let other_pair = ViewEntry {
        address: "x:7444".into(),
        role: Some(Role::Standalone),
        epoch: 9,
        pair_id: Some(12345),
        last_response_ms: None,
    };
    let hb = Heartbeat {
        client_id: "edge-1".into(),
        client_type: ClientType::Gateway,
        seq: 1,
        view: [other_pair.clone(), other_pair],
        following: None,
        config_epoch: 0,
        config_version: 0,
        cached_samples: 4,
        dropped_samples: 1,
        proof: None,
    };
    s.handle_input(
        Now::at(9_000),
        Input::Edge {
            reply_to: 1,
            client: "edge-1".into(),
            client_type: ClientType::Gateway,
            msg: EdgeMsg::Heartbeat(hb.clone()),
        },
    );
    let out = drain(&mut s);
    assert_eq!(s.role(), Role::Active);
    assert_eq!(out.len(), 1, "{out:?}");
    let c = s.contacts().next().expect("recorded");
    assert_eq!(
        (
            c.client_type,
            c.cached_samples,
            c.dropped_samples,
            c.modified_ms
        ),
        (ClientType::Gateway, 4, 1, 9_000)
    );
    assert_eq!(
        s.client_count(),
        ClientCount {
            gateway_count: 1,
            following_none_count: 1,
            ..ClientCount::default()
        }
    );
    // A heartbeat whose body names another client than its certificate is refused.
    s.handle_input(
        Now::at(9_001),
        Input::Edge {
            reply_to: 2,
            client: "edge-2".into(),
            client_type: ClientType::Gateway,
            msg: EdgeMsg::Heartbeat(hb.clone()),
        },
    );
    let out = drain(&mut s);
    assert!(
        matches!(
            &out[..],
            [
                Output::Event(Event::ClientRefused { .. }),
                Output::ReplyEdge {
                    reply_to: 2,
                    msg: ServerMsg::Refused { .. }
                }
            ]
        ),
        "{out:?}"
    );
    // An edge certificate cannot heartbeat as a gateway.
    s.handle_input(
        Now::at(9_002),
        Input::Edge {
            reply_to: 3,
            client: "edge-1".into(),
            client_type: ClientType::Edge,
            msg: EdgeMsg::Heartbeat(hb),
        },
    );
    let out = drain(&mut s);
    assert_eq!(
        out[0],
        Output::Event(Event::ClientRefused {
            client: "edge-1".into(),
            reason:
                "heartbeat says GATEWAY but the certificate of \"edge-1\" is a EDGE certificate"
                    .into()
        }),
        "{out:?}"
    );
}

/// A heartbeat from `client` claiming that `b` is STANDALONE at `epoch`, with `proof`.
fn claim(
    s: &mut Server,
    client: &str,
    epoch: Epoch,
    proof: Option<std::sync::Arc<EpochProof>>,
) -> Vec<Output> {
    let pair_id = s.pair_id();
    let view = |address: &str, role, epoch| ViewEntry {
        address: address.into(),
        role: Some(role),
        epoch,
        pair_id,
        last_response_ms: Some(1),
    };
    let hb = Heartbeat {
        client_id: client.into(),
        client_type: ClientType::Edge,
        seq: 1,
        view: [
            view("a:7444", Role::Active, 1),
            view("attacker:7444", Role::Standalone, epoch),
        ],
        following: None,
        config_epoch: 0,
        config_version: 0,
        cached_samples: 0,
        dropped_samples: 0,
        proof,
    };
    s.handle_input(
        Now::at(9_000),
        Input::Edge {
            reply_to: 1,
            client: client.into(),
            client_type: ClientType::Edge,
            msg: EdgeMsg::Heartbeat(hb),
        },
    );
    drain(s)
}

#[test]
fn a_claimed_epoch_without_a_valid_proof_fences_nobody_and_marks_the_client() {
    let mut sim = running_pair();
    for s in [0, 1] {
        let mut srv = sim.servers[s].server.take().expect("running");
        drain(&mut srv);
        let role = srv.role();
        let pair_id = srv.pair_id().expect("paired");
        let peer = 1 - s;
        let mut forged_claims = 0;
        // The attacker's proofs: none; signed with its own (edge) key; a real
        // signature of `b` over another claim; a proof naming the attacker as holder.
        let mut own_key = keys(peer).prove(EpochClaim {
            pair_id,
            epoch: 99,
            holder: info(peer).uuid,
            holder_name: info(peer).name,
            holder_edge_address: "attacker:7444".into(),
        });
        own_key.signature = vcodr_core::testing::TestKeys::keys("edge-666")
            .prove(own_key.claim.clone())
            .signature;
        let mut moved = keys(peer).prove(EpochClaim {
            pair_id,
            epoch: 2,
            holder: info(peer).uuid,
            holder_name: info(peer).name,
            holder_edge_address: info(peer).edge_address,
        });
        moved.claim.epoch = 99;
        let attacker_holds = vcodr_core::testing::TestKeys::keys("x").prove(EpochClaim {
            pair_id,
            epoch: 99,
            holder: 0xBAD,
            holder_name: "x".into(),
            holder_edge_address: "attacker:7444".into(),
        });
        let attempts: Vec<(&str, Option<std::sync::Arc<EpochProof>>, &str)> = vec![
            (
                "edge-666",
                None,
                "its view claims epoch 99 of this pair without a valid proof",
            ),
            (
                "edge-667",
                Some(std::sync::Arc::new(own_key)),
                "epoch proof refused: its signature does not verify against the pinned key of ",
            ),
            (
                "edge-668",
                Some(std::sync::Arc::new(moved)),
                "epoch proof refused: its signature does not verify against the pinned key of ",
            ),
            (
                "edge-669",
                Some(std::sync::Arc::new(attacker_holds)),
                "epoch proof refused: it names holder `x`",
            ),
        ];
        for (client, proof, why) in attempts {
            let out = claim(&mut srv, client, 99, proof);
            assert_eq!(
                srv.role(),
                role,
                "{client} changed the role of {}: {out:?}",
                info(s).name
            );
            assert_eq!(srv.status().fenced_by, None);
            let event = out.iter().find_map(|o| match o {
                Output::Event(Event::ForgedEpochClaim {
                    client: c,
                    claimed,
                    why,
                }) => Some((c.clone(), *claimed, why.clone())),
                _ => None,
            });
            let (c, claimed, got) =
                event.unwrap_or_else(|| panic!("{client}: not counted: {out:?}"));
            assert_eq!((c.as_str(), claimed), (client, 99));
            assert!(got.starts_with(why), "{client}: {got}");
            forged_claims += 1;
            let marked = srv
                .contacts()
                .find(|c| c.client_id == client)
                .map(|c| c.forged_epoch_claims);
            assert_eq!(marked, Some(1), "{client} is marked in the contact table");
        }
        assert_eq!(forged_claims, 4);
        if role == Role::Active {
            // A marked client gets one check per PROOF_RECHECK_MS: its next
            // forgery is checked (and refused)...
            let mut again = (*proof_by(peer, pair_id, 3)).clone();
            again.signature.clear();
            let out = claim(&mut srv, "edge-667", 3, Some(std::sync::Arc::new(again)));
            assert!(
                out.iter().any(
                    |o| matches!(o, Output::Event(Event::ForgedEpochClaim { why, .. })
                    if why.contains("does not verify"))
                ),
                "{out:?}"
            );
            // ...and within the interval even a genuine proof from it is not
            // checked, so a flood from one certificate costs one check per 10 s...
            let real = proof_by(peer, pair_id, 2);
            let out = claim(&mut srv, "edge-667", 2, Some(real.clone()));
            assert_eq!(srv.role(), role, "{out:?}");
            assert!(
                out.iter().any(
                    |o| matches!(o, Output::Event(Event::ForgedEpochClaim { why, .. })
                    if why.contains("at most once per 10 s"))
                ),
                "{out:?}"
            );
            // ...while an honest edge relaying it fences the active at once.
            let out = claim(&mut srv, "edge-1", 2, Some(real));
            assert_eq!(srv.role(), Role::Zombie, "{out:?}");
        }
    }
}

#[test]
fn a_peer_message_from_anyone_but_the_pinned_peer_is_refused_and_changes_nothing() {
    let mut sim = running_pair();
    let pair_id = sim.servers[0].s().pair_id();
    let before: Vec<_> = (0..2).map(|i| sim.servers[i].s().status()).collect();
    let a = info(0);
    let b = info(1);
    // Every forgery claims to come from the real peer (its uuid, pair and epoch).
    let forgeries = |to: usize| {
        let peer = info(1 - to);
        let body = [
            PeerMsg::AppendAck {
                incarnation: 1,
                durable_index: 1_000_000,
                ok: true,
            },
            PeerMsg::NewEpoch {
                active: ServerInfo {
                    edge_address: "attacker:7444".into(),
                    ..peer.clone()
                },
                proof: None,
            },
            PeerMsg::DemoteRequest { new_epoch: 2 },
            PeerMsg::Unpair,
            PeerMsg::Append {
                incarnation: 1,
                since: 0,
                prev_index: 0,
                prev_epoch: 0,
                entries: vec![Entry {
                    epoch: 1,
                    index: 1,
                    op: Op::Put {
                        key: "forged".into(),
                        value: b"1".to_vec(),
                    },
                }],
                commit_index: 1,
                active_durable: 1,
            },
            PeerMsg::Rejoin {
                last_index: 0,
                last_epoch: 0,
                standby: ServerInfo {
                    peer_address: "attacker:7443".into(),
                    ..peer.clone()
                },
            },
            PeerMsg::Pair {
                token: 1,
                standby_uuid: info(to).uuid,
                active: peer.clone(),
                policy: OnStandbyLoss::Degrade,
            },
        ];
        body.into_iter()
            .map(|body| PeerEnvelope {
                from: peer.uuid,
                pair_id,
                epoch: 1,
                body,
            })
            .collect::<Vec<_>>()
    };
    // A third server of our CA ("x"), and the mutant's view: what the envelope says.
    for to in [0, 1] {
        for env in forgeries(to) {
            let kind = env.body.kind();
            sim.forge_peer(to, vcodr_core::testing::identity("x"), env);
            let refused = sim.servers[to].events.iter().rev().find_map(|e| match e {
                Event::PeerRefused {
                    kind: k,
                    reason,
                    from,
                    ..
                } if *k == kind => Some((*reason, from.name.clone())),
                _ => None,
            });
            assert_eq!(
                refused,
                Some((PeerRefusal::NotPinnedPeer, "x".to_string())),
                "{kind} to {}",
                info(to).name
            );
        }
    }
    sim.run_for(2_000);
    for (i, before) in before.iter().enumerate() {
        let st = sim.servers[i].s().status();
        assert_eq!(
            (
                st.role,
                st.dr_state,
                st.epoch,
                st.last_index,
                st.commit_index
            ),
            (
                before.role,
                before.dr_state,
                before.epoch,
                before.last_index,
                before.commit_index
            ),
            "{}",
            sim.describe()
        );
        assert!(sim.servers[i].s().applied().docs.is_empty());
    }
    // No dial: peer messages went only to the two servers' own addresses.
    assert_eq!(
        sim.dialled.iter().cloned().collect::<Vec<_>>(),
        vec![a.peer_address, b.peer_address]
    );
}

#[test]
fn a_standby_refuses_edge_configuration_and_samples_with_a_redirect() {
    let mut sim = running_pair();
    let mut s = sim.servers[1].server.take().expect("running");
    drain(&mut s);
    s.handle_input(
        Now::at(1),
        Input::Edge {
            reply_to: 3,
            client: "e".into(),
            client_type: ClientType::Edge,
            msg: EdgeMsg::ConfigPull {
                have_epoch: 0,
                have_version: 0,
            },
        },
    );
    let out = drain(&mut s);
    let [Output::ReplyEdge {
        reply_to: 3,
        msg:
            ServerMsg::Refused {
                role: Role::Standby,
                redirect,
                reason,
                ..
            },
    }] = &out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(redirect.as_deref(), Some("a:7444"));
    assert!(reason.contains("STANDBY"), "{reason}");
    let samples = vec![Sample {
        seq: 1,
        payload: b"x".to_vec(),
    }];
    s.handle_input(
        Now::at(2),
        Input::Edge {
            reply_to: 4,
            client: "e".into(),
            client_type: ClientType::Edge,
            msg: EdgeMsg::Monitoring { samples },
        },
    );
    assert!(matches!(
        &drain(&mut s)[..],
        [Output::ReplyEdge {
            reply_to: 4,
            msg: ServerMsg::Refused { .. }
        }]
    ));
}

#[test]
fn samples_are_stored_once_however_often_they_are_sent() {
    let mut s = fresh();
    let batch = |from: u64, to: u64| EdgeMsg::Monitoring {
        samples: (from..=to)
            .map(|q| Sample {
                seq: q,
                payload: vec![q as u8],
            })
            .collect(),
    };
    s.handle_input(
        Now::at(1),
        Input::Edge {
            reply_to: 1,
            client: "e".into(),
            client_type: ClientType::Edge,
            msg: batch(1, 3),
        },
    );
    let out = drain(&mut s);
    assert!(
        matches!(&out[..], [Output::Persist { seq: 2, .. }]),
        "{out:?}"
    );
    // Re-sent before the first one is durable, plus one new sample.
    s.handle_input(
        Now::at(2),
        Input::Edge {
            reply_to: 1,
            client: "e".into(),
            client_type: ClientType::Edge,
            msg: batch(1, 4),
        },
    );
    let out = drain(&mut s);
    let Output::Persist { ops, .. } = &out[1] else {
        panic!("{out:?}")
    };
    assert_eq!(
        ops,
        &vec![PersistOp::Append(vec![Entry {
            epoch: 1,
            index: 2,
            op: Op::Samples {
                client: "e".into(),
                samples: vec![Sample {
                    seq: 4,
                    payload: vec![4]
                }]
            }
        }])]
    );
    assert!(
        out.contains(&Output::Event(Event::SamplesDeduplicated {
            client: "e".into(),
            count: 3
        })),
        "{out:?}"
    );
    let out = persisted(&mut s, 3);
    let acks: Vec<u64> = out
        .iter()
        .filter_map(|o| match o {
            Output::ReplyEdge {
                msg: ServerMsg::MonitoringAck { up_to_seq, .. },
                ..
            } => Some(*up_to_seq),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![3, 4]);
    assert_eq!(s.status().samples_stored_since_start, 4);
    // Re-sent after commit: acknowledged at once, nothing appended.
    s.handle_input(
        Now::at(4),
        Input::Edge {
            reply_to: 1,
            client: "e".into(),
            client_type: ClientType::Edge,
            msg: batch(2, 4),
        },
    );
    assert_eq!(
        drain(&mut s),
        vec![
            Output::Event(Event::SamplesDeduplicated {
                client: "e".into(),
                count: 3
            }),
            Output::ReplyEdge {
                reply_to: 1,
                msg: ServerMsg::MonitoringAck {
                    epoch: 1,
                    up_to_seq: 4
                }
            },
        ]
    );
}

#[test]
fn the_configuration_version_moves_with_documents_not_with_samples() {
    let mut s = fresh();
    let unknown = |address: &str| ViewEntry {
        address: address.into(),
        role: None,
        epoch: 0,
        pair_id: None,
        last_response_ms: None,
    };
    // What an edge is told in a heartbeat reply and in a pull, at time `at`.
    let versions = |s: &mut Server, at: Millis| {
        let hb = Heartbeat {
            client_id: "e".into(),
            client_type: ClientType::Edge,
            seq: at,
            view: [unknown("a:7444"), unknown("b:7444")],
            following: None,
            config_epoch: 0,
            config_version: 0,
            cached_samples: 0,
            dropped_samples: 0,
            proof: None,
        };
        let mut got = Vec::new();
        for msg in [
            EdgeMsg::Heartbeat(hb),
            EdgeMsg::ConfigPull {
                have_epoch: 0,
                have_version: 0,
            },
        ] {
            s.handle_input(
                Now::at(at),
                Input::Edge {
                    reply_to: 9,
                    client: "e".into(),
                    client_type: ClientType::Edge,
                    msg,
                },
            );
            for o in drain(s) {
                match o {
                    Output::ReplyEdge {
                        msg: ServerMsg::HeartbeatReply(r),
                        ..
                    } => got.push(r.config_version),
                    Output::ReplyEdge {
                        msg: ServerMsg::Config { version, .. },
                        ..
                    } => got.push(version),
                    _ => {}
                }
            }
        }
        got
    };
    assert_eq!(versions(&mut s, 10), vec![0, 0]);
    let _ = cmd(
        &mut s,
        1,
        Command::Put {
            key: "k".into(),
            value: b"{}".to_vec(),
        },
    );
    let _ = persisted(&mut s, 3);
    assert_eq!(versions(&mut s, 11), vec![1, 1], "a put is version 1");
    // Monitoring samples are log entries 2 and 3: edges must not re-pull for them.
    for (i, seq) in [1u64, 2].into_iter().enumerate() {
        s.handle_input(
            Now::at(12),
            Input::Edge {
                reply_to: 10 + i as u64,
                client: "e".into(),
                client_type: ClientType::Edge,
                msg: EdgeMsg::Monitoring {
                    samples: vec![Sample {
                        seq,
                        payload: vec![1],
                    }],
                },
            },
        );
        let out = drain(&mut s);
        let Some(Output::Persist { seq: p, .. }) = out.first() else {
            panic!("{out:?}")
        };
        let p = *p;
        let _ = persisted(&mut s, p + 1);
    }
    assert_eq!(s.status().commit_index, 3);
    assert_eq!(versions(&mut s, 13), vec![1, 1], "samples leave it alone");
    let _ = cmd(&mut s, 2, Command::Delete { key: "k".into() });
    let _ = persisted(&mut s, 99);
    assert_eq!(s.status().commit_index, 4);
    assert_eq!(versions(&mut s, 14), vec![4, 4], "a delete moves it");
}

/// A pair on `policy` whose peer link is cut after `n` writes were issued on
/// the active (0): it has declared its standby lost, and the writes wait,
/// durable locally only. Returns the simulation and the writes' requests.
fn standby_lost_with_waiting_writes(policy: OnStandbyLoss, n: usize) -> (Sim, Vec<RequestId>) {
    let mut sim = Sim::new(31, policy, 0);
    sim.pair(0, 1);
    sim.run_for(50);
    sim.cut(Node::Server(0), Node::Server(1));
    let reqs: Vec<RequestId> = (0..n)
        .map(|i| {
            sim.command(
                0,
                Command::Put {
                    key: format!("waiting/{i}"),
                    value: b"1".to_vec(),
                },
            )
        })
        .collect();
    assert!(sim.run_until(1_000, |s| s.is(
        0,
        Role::Active,
        DrState::FailureGetStandbyStatus
    )));
    let st = sim.servers[0].s().status();
    assert_eq!(st.pending_writes, n, "the writes wait for the grace");
    assert_eq!(st.durable_index, st.last_index, "durable locally");
    assert!(reqs.iter().all(|r| sim.reply(0, *r).is_none()));
    (sim, reqs)
}

#[test]
fn at_the_grace_block_answers_every_waiting_write_at_once_as_not_acknowledged() {
    let (sim, reqs) = standby_lost_with_waiting_writes(OnStandbyLoss::Block, 2);
    let mut a = sim.servers[0].s().clone();
    let last = a.last_index();
    a.handle_input(Now::at(sim.now_ms), Input::Timeout(Timer::StandbyGrace));
    let out = drain(&mut a);
    assert_eq!(out.len(), 3, "{out:#?}");
    for (i, (o, req)) in out.iter().zip(&reqs).enumerate() {
        let Output::Reply {
            req: r,
            result: Err(CommandError::NotAcknowledged { index, reason }),
        } = o
        else {
            panic!("expected a refusal, got {o:?}")
        };
        assert_eq!((*r, *index), (*req, last - 1 + i as u64));
        for says in [
            "on_standby_loss = block acknowledges no write without it",
            "not confirmed by the standby, so it may still take effect",
            "replicated and applied if the standby comes back",
            "archived here at rejoin",
            "Check with configuration/get before retrying",
        ] {
            assert!(reason.contains(says), "{says:?} not in {reason:?}");
        }
    }
    let Output::Event(Event::WritesBlocked {
        refused_pending,
        why,
    }) = &out[2]
    else {
        panic!("expected WritesBlocked, got {:?}", out[2])
    };
    assert_eq!(*refused_pending, 2);
    assert!(why.contains("on_standby_loss = block"), "{why}");
    let st = a.status();
    assert_eq!((st.pending_writes, st.writes_blocked), (0, true));
    assert_eq!(st.unprotected_writes, 0);
    // The next write is refused before it is logged.
    a.handle_input(
        Now::at(sim.now_ms),
        Input::Command {
            req: 99,
            cmd: Command::Put {
                key: "late".into(),
                value: b"1".to_vec(),
            },
        },
    );
    let out = drain(&mut a);
    assert!(
        matches!(&out[..], [Output::Reply { req: 99, result: Err(CommandError::WritesBlocked(m)) }] if m.contains("RPO stays 0")),
        "{out:?}"
    );
    assert_eq!(a.last_index(), last);
}

#[test]
fn at_the_grace_degrade_acknowledges_every_waiting_write_as_unprotected() {
    let (sim, reqs) = standby_lost_with_waiting_writes(OnStandbyLoss::Degrade, 2);
    let mut a = sim.servers[0].s().clone();
    let last = a.last_index();
    let commit = a.commit_index();
    a.handle_input(Now::at(sim.now_ms), Input::Timeout(Timer::StandbyGrace));
    let out = drain(&mut a);
    // The count of the two unprotected writes goes to disk first...
    assert_eq!(out.len(), 2, "{out:#?}");
    assert_eq!(
        out[0],
        Output::Event(Event::Degraded {
            since_index: commit + 1
        })
    );
    let Output::Persist { seq, ops } = &out[1] else {
        panic!("expected a persist, got {:?}", out[1])
    };
    let [PersistOp::Meta(m)] = &ops[..] else {
        panic!("expected the metadata alone, got {ops:?}")
    };
    assert_eq!(m.unprotected_writes, 2);
    assert_eq!(
        a.status().pending_writes,
        2,
        "not yet acknowledged: the count is not durable"
    );
    // ...then both are acknowledged, and committed.
    a.handle_input(Now::at(sim.now_ms), Input::Persisted { up_to: *seq });
    let out = drain(&mut a);
    assert_eq!(
        out[..2],
        [
            Output::Reply {
                req: reqs[0],
                result: Ok(Reply::Written {
                    key: "waiting/0".into(),
                    version: last - 1
                })
            },
            Output::Reply {
                req: reqs[1],
                result: Ok(Reply::Written {
                    key: "waiting/1".into(),
                    version: last
                })
            },
        ],
        "{out:#?}"
    );
    assert!(
        matches!(&out[2..], [Output::Persist { ops, .. }] if ops.contains(&PersistOp::Commit(last))),
        "{out:#?}"
    );
    let st = a.status();
    assert_eq!(
        (st.pending_writes, st.unprotected_writes, st.degraded),
        (0, 2, true)
    );
}

/// The durable store of the active of a pair that crashed; the standby
/// (server 1) is gone too. `lost_before` makes the active declare its
/// standby lost before the crash.
fn active_store_after_crash(lost_before: bool) -> (MemStore, ServerConfig) {
    let mut sim = Sim::new(32, OnStandbyLoss::Degrade, 0);
    sim.pair(0, 1);
    sim.run_for(50);
    assert!(matches!(
        sim.call(
            0,
            Command::Put {
                key: "before".into(),
                value: b"1".to_vec()
            },
            1_000
        ),
        Ok(Reply::Written { .. })
    ));
    sim.crash(1);
    if lost_before {
        assert!(sim.run_until(1_000, |s| s.is(
            0,
            Role::Active,
            DrState::FailureGetStandbyStatus
        )));
        // The new drState reaches the disk.
        sim.run_for(100);
    }
    sim.crash(0);
    (sim.servers[0].store.clone(), sim.servers[0].cfg.clone())
}

fn put_cmd(s: &mut Server, now: u64, req: RequestId, key: &str) -> Vec<Output> {
    s.handle_input(
        Now::at(now),
        Input::Command {
            req,
            cmd: Command::Put {
                key: key.into(),
                value: b"1".to_vec(),
            },
        },
    );
    drain(s)
}

#[test]
fn an_active_restarted_alone_refuses_writes_as_soon_as_its_standby_is_declared_lost() {
    let (store, cfg) = active_store_after_crash(false);
    let threshold = cfg.peer_failure_threshold;
    let mut a = Server::restore(cfg, info(0), store.restored(), Now::at(10_000));
    drain(&mut a);
    assert_eq!(
        (a.role(), a.dr_state()),
        (Role::Active, DrState::StandbySync)
    );
    // Until the standby answers this run, no write is even logged: the
    // standby may hold entries the last run shipped at the next indexes
    // (SPEC §4, incarnation fence).
    let last = a.last_index();
    let out = put_cmd(&mut a, 10_001, 1, "too early");
    let [Output::Reply {
        req: 1,
        result: Err(CommandError::WritesBlocked(m)),
    }] = &out[..]
    else {
        panic!("{out:#?}")
    };
    assert!(m.contains("restarted") && m.contains("retry"), "{m}");
    assert_eq!(a.last_index(), last);
    assert!(a.status().writes_blocked);
    let mut t = 10_100;
    for _ in 1..threshold {
        let out = drain_after(&mut a, t, Input::Timeout(Timer::PeerTick));
        assert!(
            out.iter().all(|o| !matches!(o, Output::Reply { .. })),
            "{out:?}"
        );
        t += 100;
    }
    // The tick that declares it lost blocks writes (none was waiting)...
    let out = drain_after(&mut a, t, Input::Timeout(Timer::PeerTick));
    assert!(out.contains(&Output::SetTimer {
        timer: Timer::StandbyGrace,
        after_ms: 2_000
    }));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Event(Event::WritesBlocked {
            refused_pending: 0,
            ..
        })
    )));
    assert_eq!(a.dr_state(), DrState::FailureGetStandbyStatus);
    // ...and the next write is refused before it is logged, naming the ways out.
    let last = a.last_index();
    let out = put_cmd(&mut a, t + 1, 2, "refused");
    let [Output::Reply {
        req: 2,
        result: Err(CommandError::WritesBlocked(m)),
    }] = &out[..]
    else {
        panic!("{out:#?}")
    };
    for says in [
        "may have been promoted",
        "whatever on_standby_loss says",
        "resume as soon as the standby answers",
        "removeStandby",
    ] {
        assert!(m.contains(says), "{says:?} not in {m:?}");
    }
    assert_eq!(a.last_index(), last);
    // The grace changes nothing: never degraded.
    drain_after(&mut a, t + 2_000, Input::Timeout(Timer::StandbyGrace));
    let st = a.status();
    assert_eq!(
        (st.degraded, st.writes_blocked, st.unprotected_writes),
        (false, true, 0)
    );
}

#[test]
fn an_active_restarted_with_its_standby_already_lost_refuses_writes_at_once() {
    let (store, cfg) = active_store_after_crash(true);
    let mut a = Server::restore(cfg, info(0), store.restored(), Now::at(10_000));
    let out = drain(&mut a);
    assert_eq!(
        (a.role(), a.dr_state()),
        (Role::Active, DrState::FailureGetStandbyStatus)
    );
    assert!(
        out.iter().any(|o| matches!(
            o,
            Output::Event(Event::WritesBlocked {
                refused_pending: 0,
                ..
            })
        )),
        "{out:#?}"
    );
    let out = put_cmd(&mut a, 10_001, 1, "refused");
    assert!(
        matches!(&out[..], [Output::Reply { req: 1, result: Err(CommandError::WritesBlocked(m)) }] if m.contains("removeStandby")),
        "{out:#?}"
    );
}

fn drain_after(s: &mut Server, now: u64, input: Input) -> Vec<Output> {
    vcodr_core::testing::step(s, Now::at(now), input)
}

/// One monitoring batch of `client` at `at_ms`: `n` samples of `bytes` each, from seq `from`.
fn samples(
    s: &mut Server,
    at_ms: Millis,
    client: &str,
    from: u64,
    n: u64,
    bytes: usize,
) -> Vec<Output> {
    s.handle_input(
        Now::at(at_ms),
        Input::Edge {
            reply_to: 1,
            client: client.into(),
            client_type: ClientType::Edge,
            msg: EdgeMsg::Monitoring {
                samples: (from..from + n)
                    .map(|seq| Sample {
                        seq,
                        payload: vec![7; bytes],
                    })
                    .collect(),
            },
        },
    );
    drain(s)
}

fn refusal_of(out: &[Output]) -> Option<String> {
    out.iter().find_map(|o| match o {
        Output::ReplyEdge {
            msg: ServerMsg::Refused { reason, .. },
            ..
        } => Some(reason.clone()),
        _ => None,
    })
}

#[test]
fn one_client_cannot_fill_the_servers_with_monitoring() {
    let cfg = ServerConfig {
        max_sample_bytes: 1024,
        max_sample_bytes_per_s: 10_000,
        ..sim_server_config(OnStandbyLoss::Block, 1)
    };
    let mut s = Server::new(cfg.clone(), info(0), Now::at(1_000));
    drain(&mut s);
    // A sample above monitoring.max_sample_bytes is never taken.
    let why = refusal_of(&samples(&mut s, 1_000, "e", 1, 1, 1025)).expect("refused");
    assert!(
        why.contains("above monitoring.max_sample_bytes (1024)"),
        "{why}"
    );
    // A batch above what one entry may hold.
    let batch = cfg.max_sample_batch_bytes();
    let n = (batch / 1000) as u64 + 1;
    let why = refusal_of(&samples(&mut s, 1_000, "e", 1, n, 990)).expect("refused");
    assert!(why.contains("one batch may hold"), "{why}");
    // The rate: the bucket holds one batch; once spent, 10,000 bytes/s refill it.
    let full = (batch / 1010) as u64;
    assert_eq!(
        refusal_of(&samples(&mut s, 1_000, "e", 1, full, 1000)),
        None
    );
    let why = refusal_of(&samples(&mut s, 1_000, "e", full + 1, 10, 1000)).expect("refused");
    assert!(why.contains("monitoring above 10000 bytes/s"), "{why}");
    // Another client has its own bucket.
    assert_eq!(refusal_of(&samples(&mut s, 1_000, "f", 1, 1, 1000)), None);
    // Two seconds later 20,000 bytes were refilled: ten more samples pass.
    assert_eq!(
        refusal_of(&samples(&mut s, 3_000, "e", full + 1, 10, 1000)),
        None
    );
}

#[test]
fn uncommitted_entries_are_bounded_in_bytes() {
    let cfg = ServerConfig {
        max_pending_bytes: 1 << 20,
        ..sim_server_config(OnStandbyLoss::Block, 1)
    };
    let mut s = Server::new(cfg, info(0), Now::at(1_000));
    drain(&mut s);
    let value = vec![b'x'; 300_000];
    for req in 1..=3 {
        let out = cmd(
            &mut s,
            req,
            Command::Put {
                key: format!("k{req}"),
                value: value.clone(),
            },
        );
        assert!(matches!(&out[..], [Output::Persist { .. }]), "{out:?}");
    }
    // Nothing is durable yet: a fourth would go past 1 MiB waiting.
    let out = cmd(
        &mut s,
        4,
        Command::Put {
            key: "k4".into(),
            value,
        },
    );
    let Some(Output::Reply {
        result: Err(CommandError::PendingBytes { waiting, limit }),
        ..
    }) = out.first()
    else {
        panic!("{out:?}")
    };
    assert!(*waiting > 900_000 && *limit == 1 << 20, "{out:?}");
    // Once the first ones commit, writes are taken again.
    let _ = persisted(&mut s, 100);
    let out = cmd(
        &mut s,
        5,
        Command::Put {
            key: "k5".into(),
            value: vec![1],
        },
    );
    assert!(matches!(&out[..], [Output::Persist { .. }]), "{out:?}");
}

#[test]
fn stored_samples_are_kept_per_client_up_to_the_retention() {
    let cfg = ServerConfig {
        retain_samples_per_client: 5,
        ..sim_server_config(OnStandbyLoss::Block, 1)
    };
    let mut s = Server::new(cfg, info(0), Now::at(1_000));
    let mut store = MemStore::new(10);
    let apply = |s: &mut Server, out: Vec<Output>, store: &mut MemStore| {
        for o in out {
            if let Output::Persist { seq, ops } = o {
                store.apply(&ops);
                let more = persisted(s, seq);
                for o in more {
                    if let Output::Persist { ops, .. } = o {
                        store.apply(&ops);
                    }
                }
            }
        }
    };
    let out = drain(&mut s);
    apply(&mut s, out, &mut store);
    for from in [1, 4, 7] {
        let out = samples(&mut s, 1_000 + from, "e", from, 3, 10);
        apply(&mut s, out, &mut store);
    }
    // Nine stored, the newest five kept: seqs 5..=9.
    let kept: Vec<u64> = store.samples.keys().map(|(_, q)| *q).collect();
    assert_eq!(kept, vec![5, 6, 7, 8, 9]);
}

#[test]
fn a_malleated_copy_of_the_proof_a_zombie_holds_costs_no_verification() {
    let mut sim = running_pair();
    let mut s = sim.servers[0].server.take().expect("running");
    drain(&mut s);
    let pair_id = s.pair_id().expect("paired");
    let proof = proof_by(1, pair_id, 2);
    let _ = claim(&mut s, "edge-1", 2, Some(proof.clone()));
    assert_eq!(s.role(), Role::Zombie);
    // Same claim, another signature (ECDSA allows two): known, not verified,
    // not a forgery.
    let mut twin = (*proof).clone();
    twin.signature.reverse();
    let out = claim(&mut s, "edge-2", 2, Some(std::sync::Arc::new(twin)));
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Event(Event::ForgedEpochClaim { .. }))),
        "{out:?}"
    );
    assert_eq!(
        s.contacts()
            .find(|c| c.client_id == "edge-2")
            .map(|c| c.forged_epoch_claims),
        Some(0)
    );
}

#[test]
fn a_heartbeat_with_an_oversized_address_is_refused() {
    let mut s = fresh();
    let long = ViewEntry {
        address: "x".repeat(257),
        role: None,
        epoch: 0,
        pair_id: None,
        last_response_ms: None,
    };
    let hb = Heartbeat {
        client_id: "e".into(),
        client_type: ClientType::Edge,
        seq: 1,
        view: [long.clone(), long],
        following: None,
        config_epoch: 0,
        config_version: 0,
        cached_samples: 0,
        dropped_samples: 0,
        proof: None,
    };
    s.handle_input(
        Now::at(10),
        Input::Edge {
            reply_to: 1,
            client: "e".into(),
            client_type: ClientType::Edge,
            msg: EdgeMsg::Heartbeat(hb),
        },
    );
    let out = drain(&mut s);
    assert!(
        refusal_of(&out).is_some_and(|r| r.contains("longer than 256 bytes")),
        "{out:?}"
    );
    assert_eq!(s.contacts().count(), 0, "nothing stored");
}
