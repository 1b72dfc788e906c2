//! Test support (cargo feature `testing`): stand-in keys and identities for
//! the core's tests, the benches and the model checker, and the one way they
//! drain a machine's outputs ([`drain`], [`drain_edge`], [`step`],
//! [`drain_with`], [`settle`]). Nothing here is cryptography; production
//! servers use `vcodr-transport`'s keys.

use crate::api::{Input, Now, Output};
use crate::edge::{Edge, EdgeOutput};
use crate::msg::*;
use crate::proof::{EpochClaim, EpochProof, Keys, ProofKeys};
use crate::types::*;
use std::sync::Arc;

/// Every output `server` has queued, in the order produced.
pub fn drain(server: &mut crate::Server) -> Vec<Output> {
    std::iter::from_fn(|| server.poll_output()).collect()
}

/// Every output `edge` has queued, in the order produced.
pub fn drain_edge(edge: &mut Edge) -> Vec<EdgeOutput> {
    std::iter::from_fn(|| edge.poll_output()).collect()
}

/// Feeds `input` to `server` at `now` and returns what it produced.
pub fn step(server: &mut crate::Server, now: Now, input: Input) -> Vec<Output> {
    server.handle_input(now, input);
    drain(server)
}

/// Hands every queued output of `server` to `f`, in order, without
/// collecting them (for benches: no allocation of its own).
#[inline]
pub fn drain_with(server: &mut crate::Server, mut f: impl FnMut(Output)) {
    while let Some(out) = server.poll_output() {
        f(out);
    }
}

/// Drains `server` as a lossless, instant storage would: every `Persist`
/// is confirmed at once with `Persisted` at `now` (its ops are dropped: for
/// a server whose storage does not matter to the test); the other outputs
/// are returned in order.
pub fn settle(server: &mut crate::Server, now: Now) -> Vec<Output> {
    let mut rest = Vec::new();
    while let Some(out) = server.poll_output() {
        match out {
            Output::Persist { seq, .. } => {
                server.handle_input(now, Input::Persisted { up_to: seq })
            }
            other => rest.push(other),
        }
    }
    rest
}

/// Stand-in keys of the server called `name`: the "public key" is
/// `test-key:<name>`, a "signature" is that key and a digest of the message.
/// Whoever does not hold `name`'s keys cannot make `name`'s signature in a
/// test — the tests and the model's hostile actor only sign with their own.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TestKeys {
    public_key: Vec<u8>,
}

impl TestKeys {
    pub fn new(name: &str) -> Self {
        TestKeys {
            public_key: public_key(name),
        }
    }

    /// As [`Keys`], ready for [`crate::Server::with_keys`].
    pub fn keys(name: &str) -> Keys {
        Keys::new(Arc::new(TestKeys::new(name)))
    }
}

/// The stand-in public key of `name`.
pub fn public_key(name: &str) -> Vec<u8> {
    format!("test-key:{name}").into_bytes()
}

/// The identity TLS would prove for the server called `name` (stand-in key).
pub fn identity(name: &str) -> PeerIdentity {
    PeerIdentity {
        name: name.to_string(),
        public_key: public_key(name),
        key_fingerprint: format!("test-key-of-{name}"),
    }
}

fn signature(public_key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in public_key.iter().chain(message) {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut sig = b"test-sig:".to_vec();
    sig.extend_from_slice(public_key);
    sig.extend_from_slice(&h.to_be_bytes());
    sig
}

impl ProofKeys for TestKeys {
    fn public_key(&self) -> &[u8] {
        &self.public_key
    }
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        signature(&self.public_key, message)
    }
    fn verify(&self, public_key: &[u8], message: &[u8], sig: &[u8]) -> bool {
        signature(public_key, message) == sig
    }
}

/// One sample of every wire message kind: every [`PeerMsg`] in a
/// [`PeerEnvelope`], every [`EdgeMsg`] and every [`ServerMsg`], with the
/// `Append` carrying `append_entries` entries of 200-byte values. The codec
/// test round-trips them; the fuzz targets are seeded with them.
pub fn wire_samples(append_entries: u64) -> (Vec<PeerEnvelope>, Vec<EdgeMsg>, Vec<ServerMsg>) {
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
            incarnation: 7,
            since: 1,
            prev_index: 1,
            prev_epoch: 3,
            entries: (2..2 + append_entries).map(entry).collect(),
            commit_index: 1,
            active_durable: 1 + append_entries,
        },
        PeerMsg::AppendAck {
            incarnation: 7,
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
