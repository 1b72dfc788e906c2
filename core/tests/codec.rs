//! Every wire message survives the codec, and no input makes it panic.

use std::sync::Arc;
use vcodr_core::codec::*;
use vcodr_core::rng::Rng;
use vcodr_core::*;

fn samples() -> (Vec<PeerEnvelope>, Vec<EdgeMsg>, Vec<ServerMsg>) {
    let info = ServerInfo {
        uuid: u128::MAX - 3,
        name: "a".into(),
        peer_address: "127.0.0.1:7443".into(),
        edge_address: "[::1]:7444".into(),
        admin_address: "127.0.0.1:8443".into(),
    };
    let entry = |i| Entry {
        epoch: 3,
        index: i,
        op: Op::Put {
            key: format!("k{i}"),
            value: vec![b'x'; 200],
        },
    };
    let proof = Arc::new(EpochProof {
        claim: EpochClaim {
            pair_id: 2,
            epoch: 4,
            holder: 9,
            holder_name: "b".into(),
            holder_edge_address: "[::1]:9444".into(),
        },
        signature: vec![0xAB; 72],
    });
    let bodies = vec![
        PeerMsg::Pair {
            token: 7,
            standby_uuid: 9,
            active: info.clone(),
            policy: OnStandbyLoss::Block,
        },
        PeerMsg::PairAccepted {
            standby: info.clone(),
            token: 7,
        },
        PeerMsg::Join {
            token: 1,
            standby: info.clone(),
        },
        PeerMsg::Refused {
            reason: "no".into(),
            in_reply_to: Some(7),
        },
        PeerMsg::SnapshotChunk {
            index: 5,
            snapshot_epoch: 2,
            chunk: 0,
            last: true,
            docs: vec![(
                "k".into(),
                Doc {
                    value: b"{}".to_vec(),
                    version: 4,
                },
            )],
            sample_seq: vec![("e1".into(), 10)],
            epoch_starts: vec![(2, 3)],
            config_index: 4,
        },
        PeerMsg::SnapshotAck { index: 5, chunk: 0 },
        PeerMsg::Append {
            prev_index: 1,
            prev_epoch: 3,
            entries: (2..258).map(entry).collect(),
            commit_index: 1,
            active_durable: 257,
        },
        PeerMsg::AppendAck {
            durable_index: 257,
            ok: true,
        },
        PeerMsg::DemoteRequest { new_epoch: 4 },
        PeerMsg::DemoteGranted {
            new_epoch: 4,
            last_index: 257,
            last_epoch: 3,
        },
        PeerMsg::NewEpoch {
            active: info.clone(),
            proof: Some(proof.clone()),
        },
        PeerMsg::ZombieAck,
        PeerMsg::Rejoin {
            last_index: 1,
            last_epoch: 1,
            standby: info.clone(),
        },
        PeerMsg::RejoinAccepted {
            keep_index: 1,
            active: info,
        },
        PeerMsg::Unpair,
        PeerMsg::SamplesPull {
            ranges: vec![SampleRange {
                client: "edge-1".into(),
                after_seq: 3,
                up_to_seq: 9,
            }],
            applied_index: 7,
        },
        PeerMsg::SamplesPull {
            ranges: Vec::new(),
            applied_index: 7,
        },
        PeerMsg::SamplesBatch {
            chunks: vec![SampleChunk {
                client: "edge-1".into(),
                after_seq: 3,
                through_seq: 5,
                samples: vec![
                    Sample {
                        seq: 4,
                        payload: b"s4".to_vec(),
                    },
                    Sample {
                        seq: 5,
                        payload: b"s5".to_vec(),
                    },
                ],
            }],
        },
        PeerMsg::SamplesBatch { chunks: Vec::new() },
    ];
    let peer = bodies
        .into_iter()
        .map(|body| PeerEnvelope {
            from: 1,
            pair_id: Some(2),
            epoch: 3,
            body,
        })
        .collect();
    let view = ViewEntry {
        address: "a".into(),
        role: Some(Role::Zombie),
        epoch: 2,
        pair_id: None,
        last_response_ms: Some(5),
    };
    let edge = vec![
        EdgeMsg::Heartbeat(Heartbeat {
            client_id: "edge-1".into(),
            client_type: ClientType::Gateway,
            seq: 1,
            view: [view.clone(), view],
            following: None,
            config_epoch: 1,
            config_version: 2,
            cached_samples: 3,
            dropped_samples: 4,
            proof: Some(proof.clone()),
        }),
        EdgeMsg::ConfigPull {
            have_epoch: 1,
            have_version: 2,
        },
        EdgeMsg::Monitoring {
            samples: vec![Sample {
                seq: 1,
                payload: vec![0; 64],
            }],
        },
    ];
    let server = vec![
        ServerMsg::HeartbeatReply(HeartbeatReply {
            seq: 1,
            role: Role::Standby,
            dr_state: DrState::FailureGetActiveStatus,
            epoch: 2,
            pair_id: Some(u128::MAX),
            active_address: Some("b".into()),
            redirect: None,
            config_version: 9,
            proof: Some(proof),
        }),
        ServerMsg::Config {
            epoch: 2,
            version: 9,
            docs: vec![],
        },
        ServerMsg::MonitoringAck {
            epoch: 2,
            up_to_seq: 10,
        },
        ServerMsg::Refused {
            role: Role::Zombie,
            epoch: 1,
            redirect: Some("b".into()),
            reason: "zombie".into(),
        },
    ];
    (peer, edge, server)
}

#[test]
fn every_message_round_trips_through_a_frame() {
    let (peer, edge, server) = samples();
    for m in &peer {
        let f = to_frame(m).unwrap();
        assert_eq!(
            decode_frame::<PeerEnvelope>(&f, DEFAULT_MAX_FRAME_BYTES),
            Ok((m.clone(), f.len()))
        );
    }
    for m in &edge {
        let f = to_frame(m).unwrap();
        assert_eq!(
            decode_frame::<EdgeMsg>(&f, DEFAULT_MAX_FRAME_BYTES),
            Ok((m.clone(), f.len()))
        );
    }
    for m in &server {
        let f = to_frame(m).unwrap();
        assert_eq!(
            decode_frame::<ServerMsg>(&f, DEFAULT_MAX_FRAME_BYTES),
            Ok((m.clone(), f.len()))
        );
    }
}

#[test]
fn two_frames_back_to_back_decode_one_after_the_other() {
    let (_, edge, _) = samples();
    let mut buf = to_frame(&edge[0]).unwrap();
    buf.extend(to_frame(&edge[1]).unwrap());
    let (first, used) = decode_frame::<EdgeMsg>(&buf, DEFAULT_MAX_FRAME_BYTES).unwrap();
    let (second, _) = decode_frame::<EdgeMsg>(&buf[used..], DEFAULT_MAX_FRAME_BYTES).unwrap();
    assert_eq!((first, second), (edge[0].clone(), edge[1].clone()));
}

#[test]
fn garbage_and_mutated_frames_never_panic() {
    let seed = std::env::var("VCODR_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xF00D);
    eprintln!("codec fuzz seed {seed}");
    let mut rng = Rng::new(seed);
    let (peer, edge, server) = samples();
    let valid: Vec<Vec<u8>> = peer
        .iter()
        .map(|m| to_frame(m).unwrap())
        .chain(edge.iter().map(|m| to_frame(m).unwrap()))
        .chain(server.iter().map(|m| to_frame(m).unwrap()))
        .collect();
    let mut errors = 0;
    for i in 0..20_000 {
        let mut buf = if i % 2 == 0 {
            let len = rng.range(0, 300) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if len > 0 && rng.range(0, 1) == 0 {
                b[0] = FRAME_VERSION;
            }
            b
        } else {
            valid[rng.range(0, valid.len() as u64 - 1) as usize].clone()
        };
        // Flip, truncate or extend.
        match rng.range(0, 2) {
            0 if !buf.is_empty() => {
                let at = rng.range(0, buf.len() as u64 - 1) as usize;
                buf[at] ^= 1 << rng.range(0, 7);
            }
            1 => buf.truncate(rng.range(0, buf.len() as u64) as usize),
            _ => buf.push(rng.next_u64() as u8),
        }
        let results = [
            decode_frame::<PeerEnvelope>(&buf, 4096).is_err(),
            decode_frame::<EdgeMsg>(&buf, 4096).is_err(),
            decode_frame::<ServerMsg>(&buf, 4096).is_err(),
        ];
        errors += results.iter().filter(|e| **e).count();
    }
    assert!(
        errors > 30_000,
        "most mutations are caught as typed errors ({errors})"
    );
}

#[test]
fn typed_errors_say_what_was_wrong() {
    let f = to_frame(&EdgeMsg::ConfigPull {
        have_epoch: 1,
        have_version: 2,
    })
    .unwrap();
    let e = decode_frame::<EdgeMsg>(&f[..f.len() - 1], 4096).unwrap_err();
    assert_eq!(
        e,
        DecodeError::Truncated {
            needed: f.len(),
            have: f.len() - 1
        }
    );
    let mut bad = f.clone();
    bad[FRAME_HEADER_LEN] = 0xEE; // no such variant
    assert!(matches!(
        decode_frame::<EdgeMsg>(&bad, 4096),
        Err(DecodeError::Malformed(_))
    ));
    let mut long = f.clone();
    long.push(0);
    long[4] += 1; // the length now covers one byte the payload does not use
    assert_eq!(
        decode_frame::<EdgeMsg>(&long, 4096),
        Err(DecodeError::TrailingBytes { extra: 1 })
    );
    assert_eq!(
        DecodeError::UnknownVersion { got: 7 }.to_string(),
        "unknown frame version 7 (this build reads version 1)"
    );
}
