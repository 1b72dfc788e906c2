//! The protocol-level scenario over the in-memory network with faults, on a
//! virtual clock, over several seeds. A failure names its seed; replay one
//! with `VCODR_SEED=<seed> cargo test -p vcodr-transport --test mem`.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use vcodr_core::codec::Hello;
use vcodr_core::CertRole;
use vcodr_transport::mem::{Faults, MemCounts, MemNetwork};
use vcodr_transport::{CloseReason, ConnectError, Incoming, Refusal, Settings, Transport};

const ACTIVE: &str = "127.0.0.1:7001";
const STANDBY: &str = "127.0.0.1:7002";
const ENTRIES: u64 = 500;

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("a valid literal address")
}

fn settings() -> Settings {
    Settings {
        handshake_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(5),
        keep_alive_interval: Duration::from_secs(1),
        ..Settings::default()
    }
}

fn seeds() -> Vec<u64> {
    match std::env::var("VCODR_SEED") {
        Ok(seed) => vec![seed.parse().expect("VCODR_SEED must be a u64")],
        Err(_) => (1..=8).collect(),
    }
}

/// A current-thread runtime on a paused (virtual) clock.
fn virtual_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    report: ReplicationReport,
    counts: MemCounts,
    log_len: usize,
    entries_received: u64,
    virtual_elapsed_ms: u128,
}

/// Replicates `ENTRIES` entries from the active to the standby through drops,
/// duplicates, reordering and delay on every link, a partition shorter than
/// the idle timeout (the link survives) and one longer (the link dies and the
/// active reconnects and resumes from the standby's status).
async fn run_seed(seed: u64) -> Result<Outcome, String> {
    let net = MemNetwork::new(seed);
    net.set_faults(Faults {
        drop: 0.05,
        duplicate: 0.05,
        reorder: 0.05,
        delay_min: Duration::from_millis(1),
        delay_max: Duration::from_millis(30),
    })
    .map_err(|e| e.to_string())?;
    let standby = net
        .transport::<TestProto>(addr(STANDBY), "b", settings())
        .map_err(|e| e.to_string())?;
    let active = net
        .transport::<TestProto>(addr(ACTIVE), "a", settings())
        .map_err(|e| e.to_string())?;
    let state = Arc::new(Mutex::new(StandbyState::default()));
    let _serving = serve(
        standby.listen().map_err(|e| e.to_string())?,
        "b",
        state.clone(),
    );

    let chaos = {
        let net = net.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            net.partition(addr(ACTIVE), addr(STANDBY));
            tokio::time::sleep(Duration::from_secs(1)).await; // < idle timeout
            net.heal_all();
            tokio::time::sleep(Duration::from_millis(500)).await;
            net.partition(addr(ACTIVE), addr(STANDBY));
            tokio::time::sleep(Duration::from_secs(8)).await; // > idle timeout
            net.heal_all();
        })
    };
    let started = tokio::time::Instant::now();
    let limits = ScenarioLimits {
        window: 32,
        ack_timeout: Duration::from_millis(200),
        deadline: Duration::from_secs(600),
        rounds_max: 100_000,
        backoff_seed: seed,
    };
    let report = replicate(&active, addr(STANDBY), "b", ENTRIES, &limits).await?;
    let virtual_elapsed_ms = started.elapsed().as_millis();
    chaos.await.map_err(|e| e.to_string())?;
    let s = state.lock().map_err(|e| e.to_string())?;
    if s.log != (1..=ENTRIES).collect::<Vec<_>>() {
        return Err(format!(
            "standby log is not 1..={ENTRIES}: {} entries, first gap near {:?}",
            s.log.len(),
            s.log.iter().enumerate().find(|(i, v)| **v != *i as u64 + 1)
        ));
    }
    Ok(Outcome {
        report,
        counts: net.counts(),
        log_len: s.log.len(),
        entries_received: s.entries_received,
        virtual_elapsed_ms,
    })
}

#[test]
fn replication_survives_faults_partitions_and_reconnects_over_seeds() {
    for seed in seeds() {
        let outcome = virtual_runtime()
            .block_on(run_seed(seed))
            .unwrap_or_else(|e| panic!("seed {seed} failed: {e}\nreplay: VCODR_SEED={seed} cargo test -p vcodr-transport --test mem"));
        eprintln!("seed {seed}: {outcome:?}");
        let c = outcome.counts;
        assert!(
            c.dropped > 0 && c.duplicated > 0 && c.reordered > 0,
            "seed {seed}: faults were injected: {c:?}"
        );
        assert!(
            c.links_cut >= 1,
            "seed {seed}: the long partition cut the link: {c:?}"
        );
        assert!(
            outcome.report.links_opened >= 2,
            "seed {seed}: the active reconnected: {:?}",
            outcome.report
        );
        assert!(
            outcome.entries_received > ENTRIES,
            "seed {seed}: resends and duplicates reached the standby"
        );
    }
}

#[test]
fn a_seed_replays_the_same_run() {
    let seed = seeds()[0];
    let first = virtual_runtime()
        .block_on(run_seed(seed))
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    let second = virtual_runtime()
        .block_on(run_seed(seed))
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    assert_eq!(first, second, "seed {seed} did not replay identically");
}

/// The same answerer contract as on QUIC (`quic_suite`).
#[test]
fn an_answerer_takes_every_request_of_the_links_it_accepts() {
    virtual_runtime().block_on(async {
        let net = MemNetwork::new(3);
        let server = net
            .transport::<TestProto>(addr(STANDBY), "a", settings())
            .unwrap();
        let edge = net
            .transport::<TestProto>(addr("127.0.0.1:8001"), "edge-1", settings())
            .unwrap();
        an_answerer_takes_every_request(&server, "a", &edge, "edge-1", Duration::from_secs(30))
            .await;
    });
}

#[test]
fn refusals_match_quic() {
    virtual_runtime().block_on(async {
        let net = MemNetwork::new(7);
        let server = net
            .transport::<TestProto>(addr(STANDBY), "a", settings())
            .unwrap();
        let mut listener = server.listen().unwrap();

        let stranger = net
            .transport::<TestProto>(addr("127.0.0.1:8001"), "edge-1", settings())
            .unwrap()
            .with_trust_domain("other");
        match stranger.connect(addr(STANDBY), "a").await {
            Err(ConnectError::HandshakeRefused {
                refusal: Refusal::UnknownCa,
                ..
            }) => {}
            other => panic!(
                "expected unknown CA, got {:?}",
                other.map(|l| l.link().clone())
            ),
        }
        let edge = net
            .transport::<TestProto>(addr("127.0.0.1:8002"), "edge-2", settings())
            .unwrap();
        match edge.connect(addr(STANDBY), "b").await {
            Err(ConnectError::HandshakeRefused {
                refusal: Refusal::WrongName { expected },
                ..
            }) => assert_eq!(expected, "b"),
            other => panic!(
                "expected wrong name, got {:?}",
                other.map(|l| l.link().clone())
            ),
        }
        let future = Settings {
            hello: Hello {
                min_version: 7,
                max_version: 8,
                software: "vcodr 9.0.0".into(),
            },
            ..settings()
        };
        let future_edge = net
            .transport::<TestProto>(addr("127.0.0.1:8003"), "edge-3", future)
            .unwrap();
        let err = future_edge.connect(addr(STANDBY), "a").await.unwrap_err();
        assert!(
            err.to_string().contains("7..=8") && err.to_string().contains("vcodr 9.0.0"),
            "{err}"
        );

        // Across a partition, a dial times out after the handshake timeout (virtual).
        net.partition(addr("127.0.0.1:8002"), addr(STANDBY));
        let before = tokio::time::Instant::now();
        let err = edge.connect(addr(STANDBY), "a").await.unwrap_err();
        assert!(matches!(err, ConnectError::TimedOut { .. }), "{err}");
        assert_eq!(before.elapsed(), settings().handshake_timeout);
        net.heal_all();

        let link = edge.connect(addr(STANDBY), "a").await.unwrap();
        let first = listener.accept().await.unwrap();
        assert_eq!(
            first.peer().as_str(),
            "edge-2",
            "refused peers were never accepted"
        );
        assert_eq!(listener.counts().refused_handshakes, 1);
        assert_eq!(listener.counts().version_mismatches, 1);
        drop(link);
    });
}

#[test]
fn link_down_events_carry_their_reason() {
    virtual_runtime().block_on(async {
        let net = MemNetwork::new(11);
        let server = net
            .transport::<TestProto>(
                addr(STANDBY),
                "b",
                Settings {
                    max_frame_bytes: 4096,
                    ..settings()
                },
            )
            .unwrap();
        let mut listener = server.listen().unwrap();
        let active = net
            .transport::<TestProto>(addr(ACTIVE), "a", settings())
            .unwrap();

        // Closing: the peer sees our reason.
        let link = active.connect(addr(STANDBY), "b").await.unwrap();
        let accepted = listener.accept().await.unwrap();
        link.close("switching over");
        assert_eq!(
            accepted.closed().await,
            CloseReason::Peer("switching over".into())
        );
        assert_eq!(
            link.close_reason(),
            Some(CloseReason::Local("switching over".into()))
        );

        // A frame above the receiver's cap on the ordered stream closes that link only.
        let link = active.connect(addr(STANDBY), "b").await.unwrap();
        let mut accepted = listener.accept().await.unwrap();
        link.send(&LogMessage::Entry {
            index: 1,
            payload: vec![0; 8192],
        })
        .await
        .unwrap();
        let err = accepted.recv().await.unwrap_err();
        assert!(matches!(err.reason, CloseReason::Protocol(_)), "{err}");
        assert!(matches!(link.closed().await, CloseReason::Peer(_)));

        // A crash resets the peer's links; the listener goes with it.
        let link = active.connect(addr(STANDBY), "b").await.unwrap();
        let _accepted = listener.accept().await.unwrap();
        net.crash(addr(STANDBY));
        assert_eq!(link.closed().await, CloseReason::Reset);
        assert!(
            listener.accept().await.is_none(),
            "the crashed host's listener is gone"
        );
        let err = active.connect(addr(STANDBY), "b").await.unwrap_err();
        assert!(err.to_string().contains("nothing listens"), "{err}");

        // Requests still work across a healthy link, with their identity.
        let net2 = MemNetwork::new(12);
        let server2 = net2
            .transport::<TestProto>(addr(STANDBY), "b", settings())
            .unwrap();
        let mut listener2 = server2.listen().unwrap();
        let edge = net2
            .transport::<TestProto>(addr(ACTIVE), "edge-7", settings())
            .unwrap();
        let link = edge.connect(addr(STANDBY), "b").await.unwrap();
        let mut accepted = listener2.accept().await.unwrap();
        let answer = tokio::spawn(async move {
            match accepted.recv().await {
                Ok(Incoming::Request { request, responder }) => {
                    assert_eq!(responder.link().peer.as_str(), "edge-7");
                    responder
                        .respond(&TestResponse::Echo(format!("{request:?}").into_bytes()))
                        .await
                        .unwrap();
                }
                other => panic!("{other:?}"),
            }
            // Dropping the link would close it before the response is delivered.
            accepted
        });
        let reply = link.request(&TestRequest::Status).await.unwrap();
        assert_eq!(reply, TestResponse::Echo(b"Status".to_vec()));
        answer.await.unwrap();
    });
}

fn refusal<P: vcodr_transport::Protocol>(
    result: Result<vcodr_transport::Connection<P>, ConnectError>,
) -> Refusal {
    match result {
        Err(ConnectError::HandshakeRefused { refusal, .. }) => refusal,
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(link) => panic!("expected a refusal, got a link to {}", link.link()),
    }
}

/// The roles rule of QUIC, on the in-memory network: hosts take the role
/// their protocol expects unless told otherwise, a dialler of a role the
/// protocol does not accept is refused, only servers listen, and the
/// accepted link names the proven role and (stand-in) key.
#[test]
fn mem_links_follow_the_roles_rule() {
    virtual_runtime().block_on(async {
        let net = MemNetwork::new(11);
        let host = |port: u16| addr(&format!("127.0.0.1:{port}"));
        // The peer link: servers only.
        let a = net
            .transport::<PeerTestProto>(host(9001), "a", settings())
            .unwrap();
        let mut peer_listener = a.listen().unwrap();
        let b = net
            .transport::<PeerTestProto>(host(9002), "b", settings())
            .unwrap();
        let link = b.connect(host(9001), "a").await.unwrap();
        let accepted = peer_listener.accept().await.unwrap();
        assert_eq!(link.peer().role(), CertRole::Server);
        assert_eq!(accepted.peer().role(), CertRole::Server);
        assert_eq!(accepted.peer().as_str(), "b");
        let stand_in = accepted.peer().public_key().to_vec();
        assert!(!stand_in.is_empty());
        assert_eq!(accepted.peer().fingerprint().len(), 64);
        drop((link, accepted));
        // Stable per name: the next link has the same key.
        let _again = b.connect(host(9001), "a").await.unwrap();
        assert_eq!(
            peer_listener.accept().await.unwrap().peer().public_key(),
            &stand_in[..]
        );
        // A certificate reissued under the same name has another key.
        let reissued = net
            .transport::<PeerTestProto>(host(9003), "b", settings())
            .unwrap()
            .with_public_key(vec![1, 2, 3]);
        let _link = reissued.connect(host(9001), "a").await.unwrap();
        let accepted = peer_listener.accept().await.unwrap();
        assert_eq!(accepted.peer().public_key(), &[1, 2, 3]);
        assert_eq!(accepted.peer().to_core().public_key, vec![1, 2, 3]);

        for (port, name, role) in [
            (9004, "edge-1", CertRole::Edge),
            (9005, "gw-1", CertRole::Gateway),
        ] {
            let stolen = net
                .transport::<PeerTestProto>(host(port), name, settings())
                .unwrap()
                .with_role(role);
            assert_eq!(
                refusal(stolen.connect(host(9001), "a").await),
                Refusal::WrongRole {
                    name: name.into(),
                    role,
                    accepted: vec![CertRole::Server],
                }
            );
            // An edge cannot listen either.
            let err = stolen.listen().unwrap_err().to_string();
            assert!(err.contains("must have role `server`"), "{err}");
        }
        let counts = peer_listener.counts();
        assert_eq!(
            (counts.refused_wrong_role, counts.refused_handshakes),
            (2, 2)
        );

        // The edge link: edges by default, gateways too, servers not.
        let edge_port = net
            .transport::<EdgeTestProto>(host(9101), "a", settings())
            .unwrap();
        let mut edge_listener = edge_port.listen().unwrap();
        let edge = net
            .transport::<EdgeTestProto>(host(9102), "edge-2", settings())
            .unwrap();
        let _edge_link = edge.connect(host(9101), "a").await.unwrap();
        assert_eq!(
            edge_listener.accept().await.unwrap().peer().role(),
            CertRole::Edge
        );
        let gateway = net
            .transport::<EdgeTestProto>(host(9103), "gw-2", settings())
            .unwrap()
            .with_role(CertRole::Gateway);
        let _gateway_link = gateway.connect(host(9101), "a").await.unwrap();
        assert_eq!(
            edge_listener.accept().await.unwrap().peer().role(),
            CertRole::Gateway
        );
        let server = net
            .transport::<EdgeTestProto>(host(9104), "c", settings())
            .unwrap()
            .with_role(CertRole::Server);
        assert_eq!(
            refusal(server.connect(host(9101), "a").await),
            Refusal::WrongRole {
                name: "c".into(),
                role: CertRole::Server,
                accepted: vec![CertRole::Edge, CertRole::Gateway],
            }
        );
        assert_eq!(edge_listener.counts().refused_wrong_role, 1);
    });
}
