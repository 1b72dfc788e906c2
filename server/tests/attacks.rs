//! The trust boundary on real processes (docs/SECURITY.md): each attack of
//! the threat model, tried with a stolen edge certificate and with a third
//! server certificate of the same deployment CA against a real pair of
//! `vcodr serve` processes, and the genuine path that must keep working:
//! an old active cut off from the promoted server is fenced through edges.
//!
//! Loopback only, free ports, a UDP proxy the test cuts for the peer link;
//! every wait polls with a deadline.

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vcodr_core::*;
use vcodr_server::driver::links::{EdgeLink, PeerLink, ANY_SERVER_NAME};
use vcodr_server::tools::cluster::{metric, temp_dir, ProcCluster, UdpProxy, FAST_TIMERS};
use vcodr_server::tools::edge_sim::{EdgeSim, SimSettings};
use vcodr_transport::certs::{CertificateAuthority, TlsIdentity};
use vcodr_transport::quic::QuicTransport;
use vcodr_transport::{ConnectError, Settings, Transport};

const A: usize = 0;
const B: usize = 1;
const T: Duration = Duration::from_secs(30);

fn vcodr() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vcodr"))
}

/// A pair of real servers, `a` active and `b` standby, with `extra` config.
async fn pair(prefix: &str, extra: &str) -> ProcCluster {
    let dir = temp_dir(prefix).unwrap();
    let mut cl = ProcCluster::create(vcodr(), &dir, &["a", "b"], extra).unwrap();
    cl.start(A).unwrap();
    cl.start(B).unwrap();
    cl.pair(A, B, T).await.unwrap_or_else(|e| panic!("{e:#}"));
    cl
}

/// An identity issued by the deployment's CA (as a thief would hold it).
fn stolen(cl: &ProcCluster, name: &str, role: CertRole) -> TlsIdentity {
    let ca = CertificateAuthority::load(&cl.certs).unwrap();
    ca.issue_identity(name, role).unwrap()
}

async fn metrics(cl: &ProcCluster, i: usize) -> String {
    cl.client(i).get("/metrics").await.unwrap().1
}

async fn wait_metric(cl: &ProcCluster, i: usize, name: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + T;
    loop {
        let v = metric(&metrics(cl, i).await, name).unwrap_or(0.0);
        if v >= at_least {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {name} stayed at {v}, expected ≥ {at_least}",
            cl.servers[i].name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The forged peer messages of the threat model, each claiming to come from
/// the real peer of `to` (its uuid, the pair's id and epoch).
fn forgeries(
    status_of_to: &Value,
    peer: &Value,
    attacker_edge: &str,
    attacker_peer: &str,
) -> Vec<PeerEnvelope> {
    let hex = |v: &Value| u128::from_str_radix(v.as_str().unwrap(), 16).unwrap();
    let pair_id = Some(hex(&status_of_to["pairId"]));
    let peer_uuid = hex(&peer["uuid"]);
    let peer_info = ServerInfo {
        uuid: peer_uuid,
        name: peer["name"].as_str().unwrap().into(),
        peer_address: attacker_peer.into(),
        edge_address: attacker_edge.into(),
        admin_address: "127.0.0.1:1".into(),
    };
    let epoch = status_of_to["epoch"].as_u64().unwrap();
    [
        PeerMsg::AppendAck {
            incarnation: 1,
            durable_index: 1_000_000,
            ok: true,
        },
        PeerMsg::NewEpoch {
            active: peer_info.clone(),
            proof: None,
        },
        PeerMsg::DemoteRequest {
            new_epoch: epoch + 1,
        },
        PeerMsg::Unpair,
        PeerMsg::Append {
            incarnation: 1,
            since: 0,
            prev_index: status_of_to["replication"]["lastIndex"].as_u64().unwrap(),
            prev_epoch: epoch,
            entries: vec![Entry {
                epoch,
                index: status_of_to["replication"]["lastIndex"].as_u64().unwrap() + 1,
                op: Op::Put {
                    key: "forged".into(),
                    value: b"1".to_vec(),
                },
            }],
            commit_index: 0,
            active_durable: 0,
        },
        PeerMsg::Rejoin {
            last_index: 0,
            last_epoch: 0,
            standby: peer_info,
        },
    ]
    .into_iter()
    .map(|body| PeerEnvelope {
        from: peer_uuid,
        pair_id,
        epoch: if matches!(body, PeerMsg::NewEpoch { .. }) {
            epoch + 1
        } else {
            epoch
        },
        body,
    })
    .collect()
}

/// Sends `env` to the peer port `to` over a fresh link with `identity`.
async fn send_peer(
    identity: &TlsIdentity,
    to: &str,
    env: &PeerEnvelope,
) -> Result<(), ConnectError> {
    let t =
        QuicTransport::<PeerLink>::bind(addr("127.0.0.1:0"), identity.clone(), Settings::default())
            .unwrap();
    let link = t.connect(addr(to), ANY_SERVER_NAME).await?;
    let _ = link.send(env).await;
    // Give the frame time to leave before the endpoint is dropped.
    let _ = tokio::time::timeout(Duration::from_millis(300), link.closed()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_peer_messages_change_nothing_with_an_edge_or_a_third_server_certificate() {
    let mut cl = pair("vcodr-attacks-peer", FAST_TIMERS).await;
    cl.client(A)
        .call("configuration/put", json!({"key": "before", "value": 1}))
        .await
        .unwrap();
    let sa = cl.client(A).status().await.unwrap();
    let sb = cl.client(B).status().await.unwrap();
    // Where a dial-back to the attacker would land: nothing may arrive.
    let trap = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let trap_addr = trap.local_addr().unwrap().to_string();
    let to_a = forgeries(&sa, &sa["peer"], "127.0.0.1:9", &trap_addr);
    let to_b = forgeries(&sb, &sb["peer"], "127.0.0.1:9", &trap_addr);

    // 1. A stolen edge certificate is refused in the handshake on both peer ports.
    let edge = stolen(&cl, "edge-stolen", CertRole::Edge);
    for (to, msgs) in [(A, &to_a), (B, &to_b)] {
        for env in msgs {
            let e = send_peer(&edge, &cl.servers[to].peer, env)
                .await
                .expect_err("an edge certificate reaches no peer port");
            let text = e.to_string();
            assert!(text.contains("role") && text.contains("edge"), "{text}");
        }
    }
    for i in [A, B] {
        wait_metric(
            &cl,
            i,
            "vcodr_handshakes_refused_total{listener=\"peer\"}",
            6.0,
        )
        .await;
    }

    // 2. A third server certificate reaches the peer port; every message is refused.
    let x = stolen(&cl, "x", CertRole::Server);
    // The forged AppendAck arrives while the real standby cannot answer: the
    // waiting write must not be acknowledged.
    cl.signal(B, "STOP").unwrap();
    let c = cl.client(A).clone();
    let write = tokio::spawn(async move {
        c.call("configuration/put", json!({"key": "during", "value": 1}))
            .await
    });
    for env in &to_a {
        send_peer(&x, &cl.servers[A].peer, env).await.unwrap();
    }
    let refused = "vcodr_peer_messages_refused_total{reason=\"not_pinned_peer\"}";
    wait_metric(&cl, A, refused, to_a.len() as f64).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !write.is_finished(),
        "the forged AppendAck acknowledged a write"
    );
    cl.signal(B, "CONT").unwrap();
    let r = write
        .await
        .unwrap()
        .expect("acknowledged once the real standby has it");
    assert!(r["version"].as_u64().is_some());
    for env in &to_b {
        send_peer(&x, &cl.servers[B].peer, env).await.unwrap();
    }
    wait_metric(&cl, B, refused, to_b.len() as f64).await;

    // Nothing changed: roles, states, epochs; no dial-back to the attacker.
    let a = cl
        .wait_state(A, "ACTIVE", "STANDBY_RUNNING", T)
        .await
        .unwrap();
    let b = cl
        .wait_state(B, "STANDBY", "STANDBY_RUNNING", T)
        .await
        .unwrap();
    for s in [&a, &b] {
        assert_eq!(
            (s["epoch"].as_u64(), s["fencedBy"].as_u64()),
            (Some(1), None),
            "{s}"
        );
        assert_eq!(s["peerIdentity"]["name"], if s == &a { "b" } else { "a" });
    }
    let mut buf = [0u8; 64];
    let dialled = tokio::time::timeout(Duration::from_millis(500), trap.recv_from(&mut buf)).await;
    assert!(
        dialled.is_err(),
        "a server dialled the address a forged message named"
    );
    for i in [A, B] {
        let m = metrics(&cl, i).await;
        assert_eq!(metric(&m, "vcodr_peer_dial_targets"), Some(1.0), "{m}");
    }
    // The forged Append never reaches the documents: switch over and look.
    let p = cl
        .client(B)
        .call(
            "disasterRecovery/promoteStandbyToActive",
            json!({"force": true}),
        )
        .await
        .unwrap();
    assert_eq!(
        (p["epoch"].as_u64(), p["dataLossBound"].as_u64()),
        (Some(2), Some(0))
    );
    for key in ["before", "during"] {
        cl.client(B)
            .call("configuration/get", json!({"key": key}))
            .await
            .unwrap_or_else(|e| panic!("{key}: {e:#}"));
    }
    let e = cl
        .client(B)
        .call("configuration/get", json!({"key": "forged"}))
        .await
        .expect_err("the forged document does not exist");
    assert!(e.to_string().contains("forged"), "{e:#}");
    cl.stop_all();
    let _ = std::fs::remove_dir_all(&cl.dir);
}

/// A heartbeat of `client` claiming `epoch` for `address`, with `proof`.
fn forged_heartbeat(
    client: &str,
    pair_id: Option<PairId>,
    address: &str,
    epoch: Epoch,
    proof: Option<Arc<EpochProof>>,
) -> EdgeMsg {
    let view = |address: &str, role, epoch| ViewEntry {
        address: address.into(),
        role: Some(role),
        epoch,
        pair_id,
        last_response_ms: Some(1),
    };
    EdgeMsg::Heartbeat(Heartbeat {
        client_id: client.into(),
        client_type: ClientType::Edge,
        seq: 1,
        view: [
            view("127.0.0.1:9", Role::Active, 1),
            view(address, Role::Standalone, epoch),
        ],
        following: None,
        config_epoch: 0,
        config_version: 0,
        cached_samples: 0,
        dropped_samples: 0,
        proof,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_heartbeat_view_fences_nobody_and_marks_the_client() {
    let mut cl = pair("vcodr-attacks-hb", FAST_TIMERS).await;
    let s = cl.client(A).status().await.unwrap();
    let pair = u128::from_str_radix(s["pairId"].as_str().unwrap(), 16).unwrap();
    let pair_id = Some(pair);
    let b_uuid = u128::from_str_radix(s["peer"]["uuid"].as_str().unwrap(), 16).unwrap();
    let edge = stolen(&cl, "edge-stolen", CertRole::Edge);
    // A proof signed with the attacker's own key (an edge key of our CA).
    let own = vcodr_transport::certs::CertKeys::new(&edge).unwrap();
    let own = Keys::new(Arc::new(own)).prove(EpochClaim {
        pair_id: pair,
        epoch: 99,
        holder: b_uuid,
        holder_name: "b".into(),
        holder_edge_address: "127.0.0.1:9".into(),
    });
    let t = QuicTransport::<EdgeLink>::bind(addr("127.0.0.1:0"), edge.clone(), Settings::default())
        .unwrap();
    for i in [A, B] {
        let link = t
            .connect(addr(&cl.servers[i].edge), ANY_SERVER_NAME)
            .await
            .unwrap();
        for proof in [None, Some(Arc::new(own.clone()))] {
            let r = link
                .request_datagram(&forged_heartbeat(
                    "edge-stolen",
                    pair_id,
                    "127.0.0.1:9",
                    99,
                    proof,
                ))
                .await
                .unwrap();
            assert!(matches!(r, ServerMsg::HeartbeatReply(_)), "{r:?}");
        }
        // A server certificate is refused on the edge port.
        let x = stolen(&cl, "x", CertRole::Server);
        let tx =
            QuicTransport::<EdgeLink>::bind(addr("127.0.0.1:0"), x, Settings::default()).unwrap();
        let e = tx
            .connect(addr(&cl.servers[i].edge), ANY_SERVER_NAME)
            .await
            .expect_err("a server certificate is no edge");
        assert!(e.to_string().contains("role"), "{e}");
    }
    for i in [A, B] {
        wait_metric(&cl, i, "vcodr_forged_epoch_claims_total", 2.0).await;
        let st = cl
            .client(i)
            .call(
                "disasterRecovery/getReplicationStatus",
                json!({"with": ["clientContact"]}),
            )
            .await
            .unwrap();
        let row = st["clientContact"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == "edge-stolen")
            .cloned()
            .expect("the attacker is in the contact table");
        assert!(row["forgedEpochClaims"].as_u64().unwrap() >= 2, "{row}");
        assert_eq!(st["fencedBy"], Value::Null);
    }
    // Durably nothing: after a restart both are what they were.
    for i in [A, B] {
        cl.stop(i).unwrap();
        cl.start(i).unwrap();
    }
    cl.wait_state(A, "ACTIVE", "STANDBY_RUNNING", T)
        .await
        .unwrap();
    cl.wait_state(B, "STANDBY", "STANDBY_RUNNING", T)
        .await
        .unwrap();
    cl.client(A)
        .call(
            "configuration/put",
            json!({"key": "still-writing", "value": 1}),
        )
        .await
        .unwrap();
    cl.stop_all();
    let _ = std::fs::remove_dir_all(&cl.dir);
}

/// Memory a server may grow by while refusing a flood of `Rejoin`s.
const REJOIN_FLOOD_RSS_BOUND_KIB: u64 = 32 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoin_flood_neither_dials_nor_grows_memory() {
    let mut cl = pair("vcodr-attacks-flood", FAST_TIMERS).await;
    let s = cl.client(A).status().await.unwrap();
    let pair_id = Some(u128::from_str_radix(s["pairId"].as_str().unwrap(), 16).unwrap());
    let b_uuid = u128::from_str_radix(s["peer"]["uuid"].as_str().unwrap(), 16).unwrap();
    let traps: Vec<tokio::net::UdpSocket> = {
        let mut v = Vec::new();
        for _ in 0..8 {
            v.push(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        }
        v
    };
    let trap_addrs: Vec<String> = traps
        .iter()
        .map(|t| t.local_addr().unwrap().to_string())
        .collect();
    let rss_before = cl.rss_kib(A).unwrap();
    let x = stolen(&cl, "x", CertRole::Server);
    let t = QuicTransport::<PeerLink>::bind(addr("127.0.0.1:0"), x, Settings::default()).unwrap();
    // 20,000 Rejoins naming distinct addresses, sent as fast as the links
    // allow; the server closes each link at its first refused message, so
    // the flood redials (bounded in count and time).
    const FLOOD: usize = 20_000;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut sent, mut links) = (0usize, 0usize);
    while sent < FLOOD && Instant::now() < deadline {
        let Ok(link) = t.connect(addr(&cl.servers[A].peer), ANY_SERVER_NAME).await else {
            continue;
        };
        links += 1;
        while sent < FLOOD {
            let peer_address = match trap_addrs.get(sent) {
                Some(a) => a.clone(),
                None => format!(
                    "10.{}.{}.{}:7443",
                    sent >> 16 & 255,
                    sent >> 8 & 255,
                    sent & 255
                ),
            };
            let env = PeerEnvelope {
                from: b_uuid,
                pair_id,
                epoch: 1,
                body: PeerMsg::Rejoin {
                    last_index: 0,
                    last_epoch: 0,
                    standby: ServerInfo {
                        uuid: b_uuid,
                        name: "b".into(),
                        peer_address,
                        edge_address: "127.0.0.1:9".into(),
                        admin_address: "127.0.0.1:1".into(),
                    },
                },
            };
            if link.send(&env).await.is_err() {
                break;
            }
            sent += 1;
        }
    }
    eprintln!("flood: {sent} Rejoins over {links} links");
    let refused = wait_metric(
        &cl,
        A,
        "vcodr_peer_messages_refused_total{reason=\"not_pinned_peer\"}",
        1.0,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = cl.rss_kib(A).unwrap();
    eprintln!("refused {refused}; RSS {rss_before} KiB -> {rss_after} KiB");
    assert!(
        rss_after <= rss_before + REJOIN_FLOOD_RSS_BOUND_KIB,
        "RSS grew from {rss_before} to {rss_after} KiB (bound +{REJOIN_FLOOD_RSS_BOUND_KIB} KiB)"
    );
    let m = metrics(&cl, A).await;
    assert_eq!(
        metric(&m, "vcodr_peer_dial_targets"),
        Some(1.0),
        "only the pinned peer is dialled"
    );
    for trap in &traps {
        let mut buf = [0u8; 64];
        let got = tokio::time::timeout(Duration::from_millis(100), trap.recv_from(&mut buf)).await;
        assert!(got.is_err(), "a server dialled an address a Rejoin named");
    }
    // And the pair is unharmed.
    cl.wait_state(A, "ACTIVE", "STANDBY_RUNNING", T)
        .await
        .unwrap();
    cl.client(A)
        .call(
            "configuration/put",
            json!({"key": "after-flood", "value": 1}),
        )
        .await
        .unwrap();
    cl.stop_all();
    let _ = std::fs::remove_dir_all(&cl.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_active_cut_off_from_the_promoted_server_is_fenced_through_edges() {
    // The peer link runs through two proxies the test can cut.
    let dir = temp_dir("vcodr-attacks-genuine").unwrap();
    let mut cl = ProcCluster::create(vcodr(), &dir, &["a", "b"], FAST_TIMERS).unwrap();
    let pa = UdpProxy::start(addr(&cl.servers[A].peer)).await.unwrap();
    let pb = UdpProxy::start(addr(&cl.servers[B].peer)).await.unwrap();
    cl.set_key(A, "advertise_peer", &format!("\"{}\"", pa.addr))
        .unwrap();
    cl.set_key(B, "advertise_peer", &format!("\"{}\"", pb.addr))
        .unwrap();
    cl.servers[B].peer = pb.addr.to_string();
    cl.start(A).unwrap();
    cl.start(B).unwrap();
    cl.pair(A, B, T).await.unwrap_or_else(|e| panic!("{e:#}"));
    let ca = CertificateAuthority::load(&cl.certs).unwrap();
    let heartbeat_ms = 1_000;
    let sim = EdgeSim::start(
        &ca,
        SimSettings {
            servers: [cl.servers[A].edge.clone(), cl.servers[B].edge.clone()],
            count: 5,
            heartbeat_interval_ms: heartbeat_ms,
            sample_interval_ms: 0,
            ..SimSettings::default()
        },
    )
    .await
    .unwrap();
    let deadline = Instant::now() + T;
    while sim.summary().following[0] != 5 {
        assert!(Instant::now() < deadline, "edges follow a");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The peer link breaks both ways; the edges still reach both servers.
    pa.cut();
    pb.cut();
    cl.wait_state(B, "STANDBY", "FAILURE_GET_ACTIVE_STATUS", T)
        .await
        .unwrap();
    let r = cl
        .client(B)
        .call("disasterRecovery/promoteStandbyToActive", json!({}))
        .await
        .unwrap();
    let promoted = Instant::now();
    assert_eq!(r["epoch"], 2);
    let z = cl
        .wait_status(A, "ZOMBIE", T, |s| s["role"] == "ZOMBIE")
        .await
        .unwrap();
    let took = promoted.elapsed();
    eprintln!(
        "the old active was fenced through edges {:.0} ms after the promotion",
        took.as_secs_f64() * 1e3
    );
    // One heartbeat interval (+10 % jitter) plus 1 s (SPEC §9.6, §10).
    assert!(
        took <= Duration::from_millis(heartbeat_ms * 11 / 10 + 1_000),
        "fenced {took:?} after the promotion"
    );
    assert_eq!(z["fencedBy"], 2);
    assert_eq!(z["epochProof"]["holderName"], "b");
    assert_eq!(z["epochProof"]["epoch"], 2);
    let log = std::fs::read_to_string(&cl.servers[A].log).unwrap();
    assert!(
        log.contains("relaying the proof of `b`"),
        "learned from an edge"
    );
    let deadline = Instant::now() + T;
    while sim.summary().following[1] != 5 {
        assert!(Instant::now() < deadline, "edges follow b");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sim.stop().await;
    cl.stop_all();
    let _ = std::fs::remove_dir_all(&dir);
}
