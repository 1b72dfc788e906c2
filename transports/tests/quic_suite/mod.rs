//! The QUIC integration suite, over real QUIC on 127.0.0.1, port 0: every
//! test bounds its waits and loops.
//!
//! Not a test target itself: `tests/quic.rs` and `tests/quic_hub.rs` each
//! include it with their own `DRIVER`, so every test runs once per
//! [`QuicDriver`]. Every transport a test binds uses `DRIVER` (through
//! [`quick_settings`] or an explicit `driver` field), except in
//! `drivers_interoperate_both_ways`, which pairs the two drivers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::common::*;
use super::DRIVER;
use vcodr_core::codec::{self, Hello};
use vcodr_transport::certs::{CertRole, CertificateAuthority, TlsIdentity};
use vcodr_transport::quic::{self, QuicTransport};
use vcodr_transport::reconnect::{connect_with_backoff, Backoff};
use vcodr_transport::{
    CloseReason, ConnectError, Connection, Incoming, Listener, Protocol, QuicDriver, Refusal,
    RequestError, Settings, SetupError, Transport,
};

const LOOPBACK: &str = "127.0.0.1:0";
const TEST_LIMIT: Duration = Duration::from_secs(60);

fn loopback() -> SocketAddr {
    LOOPBACK.parse().expect("a valid literal address")
}

/// Short timeouts, on this suite's driver.
fn quick_settings() -> Settings {
    quick_settings_on(DRIVER)
}

/// Short timeouts, on `driver`.
fn quick_settings_on(driver: QuicDriver) -> Settings {
    Settings {
        handshake_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        driver,
        ..Settings::default()
    }
}

struct Server {
    transport: QuicTransport<TestProto>,
    addr: SocketAddr,
    state: Arc<Mutex<StandbyState>>,
    task: tokio::task::JoinHandle<()>,
}

fn start_server(
    ca: &CertificateAuthority,
    name: &str,
    bind: SocketAddr,
    settings: Settings,
) -> Result<Server, SetupError> {
    let identity = ca
        .issue_identity(name, CertRole::Server)
        .expect("certificate");
    let transport = QuicTransport::<TestProto>::bind(bind, identity, settings)?;
    let listener = transport.listen()?;
    let addr = listener.local_addr();
    let state = Arc::new(Mutex::new(StandbyState::default()));
    let task = serve(listener, name, state.clone());
    Ok(Server {
        transport,
        addr,
        state,
        task,
    })
}

fn client(ca: &CertificateAuthority, name: &str, role: CertRole) -> QuicTransport<TestProto> {
    client_on(ca, name, role, DRIVER)
}

fn client_on(
    ca: &CertificateAuthority,
    name: &str,
    role: CertRole,
    driver: QuicDriver,
) -> QuicTransport<TestProto> {
    let identity = ca.issue_identity(name, role).expect("certificate");
    QuicTransport::bind(loopback(), identity, quick_settings_on(driver))
        .expect("bind a client socket")
}

#[tokio::test]
async fn edge_request_response_round_trip() {
    let ca = CertificateAuthority::new().unwrap();
    let server = start_server(&ca, "a", loopback(), quick_settings()).unwrap();
    let edge = client(&ca, "edge-1", CertRole::Edge);
    let link = within("connect", TEST_LIMIT, edge.connect(server.addr, "a"))
        .await
        .unwrap();
    assert_eq!(
        link.peer().as_str(),
        "a",
        "identity from the server's certificate"
    );
    assert_eq!(link.link().version, vcodr_core::codec::PROTOCOL_VERSION);
    let reply = within(
        "heartbeat",
        TEST_LIMIT,
        link.request(&TestRequest::Heartbeat { seq: 42 }),
    )
    .await
    .unwrap();
    assert_eq!(
        reply,
        TestResponse::Reply {
            seq: 42,
            server: "a".into(),
            client: "edge-1".into()
        },
        "the server saw the edge's certificate identity"
    );
    assert_eq!(
        server.state.lock().unwrap().peers,
        vec!["edge-1".to_string()]
    );
}

/// Every finished request gives its stream back: with room for 2 requests
/// per link, 200 one after the other and 200 at once all complete.
#[tokio::test]
async fn stream_credit_comes_back_after_every_request() {
    const REQUESTS: u64 = 200;
    let tight = Settings {
        max_concurrent_requests: 2,
        ..quick_settings()
    };
    let ca = CertificateAuthority::new().unwrap();
    let server = start_server(&ca, "a", loopback(), tight.clone()).unwrap();
    let identity = ca.issue_identity("edge-1", CertRole::Edge).unwrap();
    let edge = QuicTransport::<TestProto>::bind(loopback(), identity, tight).unwrap();
    let link = within("connect", TEST_LIMIT, edge.connect(server.addr, "a"))
        .await
        .unwrap();
    let expected = |seq| TestResponse::Reply {
        seq,
        server: "a".into(),
        client: "edge-1".into(),
    };
    for seq in 0..REQUESTS {
        let reply = within(
            &format!("sequential request {seq}"),
            TEST_LIMIT,
            link.request(&TestRequest::Heartbeat { seq }),
        )
        .await
        .unwrap();
        assert_eq!(reply, expected(seq));
    }
    let mut all = tokio::task::JoinSet::new();
    for seq in REQUESTS..2 * REQUESTS {
        let sender = link.sender();
        all.spawn(async move { (seq, sender.request(&TestRequest::Heartbeat { seq }).await) });
    }
    let answers = within("concurrent requests", TEST_LIMIT, all.join_all()).await;
    for (seq, reply) in answers {
        assert_eq!(reply.unwrap(), expected(seq));
    }
}

#[tokio::test]
async fn ten_thousand_ordered_log_messages_arrive_exactly_once_in_order() {
    const COUNT: u64 = 10_000;
    let ca = CertificateAuthority::new().unwrap();
    let standby = QuicTransport::<TestProto>::bind(
        loopback(),
        ca.issue_identity("b", CertRole::Server).unwrap(),
        quick_settings(),
    )
    .unwrap();
    let mut listener = standby.listen().unwrap();
    let addr = listener.local_addr();
    let active = client(&ca, "a", CertRole::Server);

    let receiver = tokio::spawn(async move {
        let mut link = listener.accept().await.expect("the active's link");
        assert_eq!(link.peer().as_str(), "a");
        let mut expected = 1u64;
        while expected <= COUNT {
            match link.recv().await {
                Ok(Incoming::Message(LogMessage::Entry { index, payload })) => {
                    assert_eq!(index, expected, "lost, duplicated or reordered entry");
                    assert_eq!(payload, index.to_le_bytes().to_vec());
                    expected += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // Nothing more arrives: tell the active, which then closes.
        link.send(&LogMessage::Ack { up_to: COUNT }).await.unwrap();
        let after = link.recv().await;
        assert!(after.is_err(), "an extra message arrived: {after:?}");
        expected - 1
    });

    let mut link = within("connect", TEST_LIMIT, active.connect(addr, "b"))
        .await
        .unwrap();
    within("send 10,000 entries", TEST_LIMIT, async {
        for index in 1..=COUNT {
            link.send(&LogMessage::Entry {
                index,
                payload: index.to_le_bytes().to_vec(),
            })
            .await
            .unwrap();
        }
    })
    .await;
    let ack = within("final ack", TEST_LIMIT, link.recv()).await.unwrap();
    assert!(
        matches!(ack, Incoming::Message(LogMessage::Ack { up_to: COUNT })),
        "{ack:?}"
    );
    link.close("done");
    assert_eq!(
        within("receiver", TEST_LIMIT, receiver).await.unwrap(),
        COUNT
    );
}

/// The protocol-level scenario of `tests/mem.rs`, over real QUIC without faults:
/// nothing is resent and nothing arrives twice.
#[tokio::test]
async fn replication_scenario_over_quic() {
    let ca = CertificateAuthority::new().unwrap();
    let server = start_server(&ca, "b", loopback(), quick_settings()).unwrap();
    let active = client(&ca, "a", CertRole::Server);
    let limits = ScenarioLimits {
        window: 256,
        ack_timeout: Duration::from_secs(5),
        deadline: TEST_LIMIT,
        rounds_max: 10_000,
        backoff_seed: 1,
    };
    let report = replicate(&active, server.addr, "b", 2_000, &limits)
        .await
        .unwrap();
    assert_eq!(report.resend_rounds, 0, "{report:?}");
    assert_eq!(report.links_opened, 1);
    let state = server.state.lock().unwrap();
    assert_eq!(state.log, (1..=2_000).collect::<Vec<_>>());
    assert_eq!(state.entries_out_of_place, 0);
    assert_eq!(state.entries_received, 2_000);
}

fn refusal<P: Protocol>(result: Result<Connection<P>, ConnectError>) -> Refusal {
    match result {
        Err(ConnectError::HandshakeRefused { refusal, .. }) => refusal,
        Err(other) => panic!("expected a handshake refusal, got: {other}"),
        Ok(link) => panic!(
            "expected a handshake refusal, got a link to {}",
            link.link()
        ),
    }
}

#[tokio::test]
async fn bad_certificates_and_names_are_refused_before_any_protocol_message() {
    let ca = CertificateAuthority::new().unwrap();
    let identity = ca.issue_identity("a", CertRole::Server).unwrap();
    let server = QuicTransport::<TestProto>::bind(loopback(), identity, quick_settings()).unwrap();
    let mut listener = server.listen().unwrap();
    let addr = listener.local_addr();

    // A certificate from another deployment's CA.
    let other_ca = CertificateAuthority::new().unwrap();
    // It trusts our CA, so only the server can refuse it.
    let issued = other_ca.issue("edge-1", CertRole::Edge).unwrap();
    let stranger = TlsIdentity::from_pem(&issued.cert_pem, &issued.key_pem, ca.cert_pem()).unwrap();
    let stranger =
        QuicTransport::<TestProto>::bind(loopback(), stranger, quick_settings()).unwrap();
    let got = refusal(within("stranger", TEST_LIMIT, stranger.connect(addr, "a")).await);
    assert_eq!(got, Refusal::UnknownCa, "{got}");

    // No certificate at all.
    let anonymous = TlsIdentity::anonymous(ca.cert_pem()).unwrap();
    let anonymous =
        QuicTransport::<TestProto>::bind(loopback(), anonymous, quick_settings()).unwrap();
    let got = refusal(within("anonymous", TEST_LIMIT, anonymous.connect(addr, "a")).await);
    assert_eq!(got, Refusal::NoCertificate, "{got}");

    // An expired certificate.
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let expired = ca
        .issue_valid("edge-2", CertRole::Edge, now - 30 * day, now - day)
        .unwrap();
    let expired = QuicTransport::<TestProto>::bind(
        loopback(),
        ca.identity(&expired).unwrap(),
        quick_settings(),
    )
    .unwrap();
    let got = refusal(within("expired", TEST_LIMIT, expired.connect(addr, "a")).await);
    assert_eq!(got, Refusal::Expired, "{got}");

    // A good client expecting another server: refused by the client itself.
    let edge = client(&ca, "edge-3", CertRole::Edge);
    let got = refusal(within("wrong name", TEST_LIMIT, edge.connect(addr, "b")).await);
    assert_eq!(
        got,
        Refusal::WrongName {
            expected: "b".into()
        },
        "{got}"
    );

    // A server whose certificate comes from another CA: the client refuses it.
    let impostor = QuicTransport::<TestProto>::bind(
        loopback(),
        other_ca.issue_identity("a", CertRole::Server).unwrap(),
        quick_settings(),
    )
    .unwrap();
    let impostor_listener = impostor.listen().unwrap();
    let got = refusal(
        within(
            "impostor",
            TEST_LIMIT,
            edge.connect(impostor_listener.local_addr(), "a"),
        )
        .await,
    );
    assert_eq!(got, Refusal::UnknownCa, "{got}");

    // The server refused all four in TLS, read no hello, and accepted nothing...
    wait_until("four refused handshakes", TEST_LIMIT, || {
        listener.counts().refused_handshakes >= 4
    })
    .await;
    let counts = listener.counts();
    assert_eq!(
        (
            counts.accepted,
            counts.failed_hellos,
            counts.version_mismatches
        ),
        (0, 0, 0),
        "{counts:?}"
    );
    // ...each counted under its reason.
    assert_eq!(
        (
            counts.refused_unknown_ca,
            counts.refused_no_certificate,
            counts.refused_expired,
            counts.refused_wrong_role
        ),
        (1, 1, 1, 0),
        "{counts:?}"
    );
    // ...and the first link it yields is the good client's.
    let good = client(&ca, "edge-4", CertRole::Edge);
    let _link = within("good client", TEST_LIMIT, good.connect(addr, "a"))
        .await
        .unwrap();
    let first = within("accept", TEST_LIMIT, listener.accept())
        .await
        .unwrap();
    assert_eq!(first.peer().as_str(), "edge-4");
}

/// Binds `name` (a certificate of `role`) and listens for `P`.
fn listen_as<P: Protocol>(
    ca: &CertificateAuthority,
    name: &str,
    role: CertRole,
) -> (QuicTransport<P>, Listener<P>) {
    let identity = ca.issue_identity(name, role).unwrap();
    let transport = QuicTransport::<P>::bind(loopback(), identity, quick_settings()).unwrap();
    let listener = transport.listen().unwrap();
    (transport, listener)
}

/// A transport of this suite's driver that dials `P` as `identity`.
fn dialler<P: Protocol>(identity: TlsIdentity) -> QuicTransport<P> {
    QuicTransport::<P>::bind(loopback(), identity, quick_settings()).unwrap()
}

#[tokio::test]
async fn edge_and_gateway_certificates_are_refused_by_the_peer_listener_in_the_handshake() {
    let ca = CertificateAuthority::new().unwrap();
    let (_server, mut listener) = listen_as::<PeerTestProto>(&ca, "a", CertRole::Server);
    let addr = listener.local_addr();
    for (name, role) in [("edge-1", CertRole::Edge), ("gw-1", CertRole::Gateway)] {
        let stolen = dialler::<PeerTestProto>(ca.issue_identity(name, role).unwrap());
        let result = within(name, TEST_LIMIT, stolen.connect(addr, "a")).await;
        let err = result
            .as_ref()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let got = refusal(result);
        assert_eq!(
            got,
            Refusal::WrongRole {
                name: name.into(),
                role,
                accepted: vec![CertRole::Server],
            },
            "{got}"
        );
        for part in [name, role.as_str(), "accepted: server"] {
            assert!(err.contains(part), "{part:?} missing from: {err}");
        }
    }
    // The listener refused both in TLS: no hello read, nothing accepted.
    wait_until("two refused handshakes", TEST_LIMIT, || {
        listener.counts().refused_wrong_role >= 2
    })
    .await;
    let counts = listener.counts();
    assert_eq!(
        (
            counts.refused_handshakes,
            counts.refused_wrong_role,
            counts.accepted,
            counts.failed_hellos
        ),
        (2, 2, 0, 0),
        "{counts:?}"
    );
    // The standby's own peer gets through, and is a server.
    let peer = dialler::<PeerTestProto>(ca.issue_identity("b", CertRole::Server).unwrap());
    let (dialled, accepted) = within("the peer", TEST_LIMIT, async {
        tokio::join!(peer.connect(addr, "a"), listener.accept())
    })
    .await;
    assert_eq!(dialled.unwrap().peer().role(), CertRole::Server);
    let accepted = accepted.unwrap();
    assert_eq!(
        (accepted.peer().as_str(), accepted.peer().role()),
        ("b", CertRole::Server)
    );
}

#[tokio::test]
async fn the_edge_listener_refuses_servers_and_accepts_edges_and_gateways() {
    let ca = CertificateAuthority::new().unwrap();
    let (_server, mut listener) = listen_as::<EdgeTestProto>(&ca, "a", CertRole::Server);
    let addr = listener.local_addr();
    // Another server (or a third server certificate of the CA) is no edge.
    let server = dialler::<EdgeTestProto>(ca.issue_identity("b", CertRole::Server).unwrap());
    let got = refusal(within("server", TEST_LIMIT, server.connect(addr, "a")).await);
    assert_eq!(
        got,
        Refusal::WrongRole {
            name: "b".into(),
            role: CertRole::Server,
            accepted: vec![CertRole::Edge, CertRole::Gateway],
        },
        "{got}"
    );
    for (name, role) in [("gw-1", CertRole::Gateway), ("edge-1", CertRole::Edge)] {
        let client = dialler::<EdgeTestProto>(ca.issue_identity(name, role).unwrap());
        let (dialled, accepted) = within(name, TEST_LIMIT, async {
            tokio::join!(client.connect(addr, "a"), listener.accept())
        })
        .await;
        let dialled = dialled.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(dialled.peer().role(), CertRole::Server, "{name}");
        let accepted = accepted.unwrap();
        assert_eq!(accepted.peer().as_str(), name);
        assert_eq!(accepted.peer().role(), role);
    }
    let counts = listener.counts();
    assert_eq!(
        (counts.refused_wrong_role, counts.accepted),
        (1, 2),
        "{counts:?}"
    );
}

/// A certificate of `ca` made by hand with rcgen, as another tool (or an
/// older vcodr) would: DNS names `dns`, URI names `uris`, and the server
/// and client usages if `serves`, else the client usage only.
fn hand_made(
    ca: &CertificateAuthority,
    dns: &[&str],
    uris: &[&str],
    serves: bool,
) -> (String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    };
    static MADE: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vcodr-hand-made-{}-{}",
        std::process::id(),
        MADE.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    ca.write(&dir).unwrap();
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let mut ca_params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let ca_name = vcodr_transport::certs::common_name_of(&ca.cert_der().unwrap()).unwrap();
    dn.push(DnType::CommonName, ca_name);
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let issuer = Issuer::new(ca_params, ca_key);

    let mut params =
        CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>()).unwrap();
    for uri in uris {
        let uri = rcgen::string::Ia5String::try_from(uri.to_string()).unwrap();
        params.subject_alt_names.push(SanType::URI(uri));
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = if serves {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn a_certificate_of_our_ca_without_a_role_is_refused() {
    let ca = CertificateAuthority::new().unwrap();
    // Every role may dial this listener: only the missing role is wrong.
    let (_server, listener) = listen_as::<TestProto>(&ca, "a", CertRole::Server);
    let addr = listener.local_addr();
    for (name, uris) in [
        ("old-1", &[][..]),
        // A role URI naming another identity gives no role either.
        ("edge-5", &["urn:vcodr:server:a"][..]),
    ] {
        let (cert, key) = hand_made(&ca, &[name], uris, false);
        let identity = TlsIdentity::from_pem(&cert, &key, ca.cert_pem()).unwrap();
        assert_eq!((identity.name(), identity.role()), (name, None));
        let result = within(
            name,
            TEST_LIMIT,
            dialler::<TestProto>(identity).connect(addr, "a"),
        )
        .await;
        let err = result
            .as_ref()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            refusal(result),
            Refusal::NoRole { name: name.into() },
            "{err}"
        );
        assert!(err.contains("reissue"), "{err}");
    }
    wait_until("two refused handshakes", TEST_LIMIT, || {
        listener.counts().refused_no_role >= 2
    })
    .await;
    let counts = listener.counts();
    assert_eq!(
        (counts.refused_handshakes, counts.accepted),
        (2, 0),
        "{counts:?}"
    );
}

#[tokio::test]
async fn the_peer_id_carries_the_proven_role_and_public_key() {
    let ca = CertificateAuthority::new().unwrap();
    let server_identity = ca.issue_identity("a", CertRole::Server).unwrap();
    let server_key = server_identity.public_key().unwrap();
    let server =
        QuicTransport::<TestProto>::bind(loopback(), server_identity, quick_settings()).unwrap();
    let mut listener = server.listen().unwrap();
    let addr = listener.local_addr();
    let edge_identity = ca.issue_identity("edge-1", CertRole::Edge).unwrap();
    let edge_key = edge_identity.public_key().unwrap();
    let edge = dialler::<TestProto>(edge_identity);
    let mut fingerprints = Vec::new();
    let mut first = None;
    for round in 0..2 {
        let (dialled, accepted) = within("link up", TEST_LIMIT, async {
            tokio::join!(edge.connect(addr, "a"), listener.accept())
        })
        .await;
        let (dialled, accepted) = (dialled.unwrap(), accepted.unwrap());
        let peer = accepted.peer();
        assert_eq!(peer.public_key(), &edge_key[..], "round {round}");
        assert_eq!(peer.role(), CertRole::Edge);
        assert_eq!(peer.to_string(), "edge-1");
        let fingerprint = peer.fingerprint();
        assert_eq!(fingerprint.len(), 64);
        assert!(fingerprint
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
        assert_eq!(
            fingerprint,
            vcodr_transport::certs::key_fingerprint(&edge_key)
        );
        fingerprints.push(fingerprint);
        first.get_or_insert_with(|| peer.clone());
        let pinned = peer.to_core();
        assert_eq!(
            (pinned.name.as_str(), &pinned.public_key[..]),
            ("edge-1", &edge_key[..])
        );
        // And the dialler sees the server's key.
        assert_eq!(dialled.peer().public_key(), &server_key[..]);
        assert_eq!(dialled.peer().role(), CertRole::Server);
    }
    assert_eq!(fingerprints[0], fingerprints[1], "stable across links");
    // Another certificate of the same name has another key.
    let twin = dialler::<TestProto>(ca.issue_identity("edge-1", CertRole::Edge).unwrap());
    let (_dialled, accepted) = within("twin", TEST_LIMIT, async {
        tokio::join!(twin.connect(addr, "a"), listener.accept())
    })
    .await;
    let accepted = accepted.unwrap();
    assert_eq!(accepted.peer().as_str(), "edge-1");
    assert_ne!(accepted.peer().fingerprint(), fingerprints[0]);
    assert_ne!(
        accepted.peer(),
        &first.expect("two links were up"),
        "same name, other key"
    );
}

#[tokio::test]
async fn only_server_certificates_can_serve() {
    let ca = CertificateAuthority::new().unwrap();
    // Our own API refuses to listen with an edge certificate...
    let edge_identity = ca.issue_identity("edge-1", CertRole::Edge).unwrap();
    let err = quic::server_tls_config::<TestProto>(&edge_identity).unwrap_err();
    assert!(err.to_string().contains("role `edge`"), "{err}");
    let edge_transport = dialler::<TestProto>(edge_identity);
    let err = edge_transport.listen().unwrap_err();
    assert!(
        matches!(err, SetupError::Tls { .. })
            && err.to_string().contains("must have role `server`"),
        "{err}"
    );
    // ...and a listener made by hand (a holder of a stolen edge
    // certificate, or a certificate without a role) is refused by every
    // dialler, whatever the key usages say.
    let plain_edge = ca.issue("edge-2", CertRole::Edge).unwrap();
    let edge_with_server_usage = hand_made(&ca, &["edge-6"], &["urn:vcodr:edge:edge-6"], true);
    let roleless_server = hand_made(&ca, &["a"], &[], true);
    let cases = [
        (
            "a plain edge certificate",
            (plain_edge.cert_pem, plain_edge.key_pem),
            "edge-2",
            None,
        ),
        (
            "an edge certificate with the server usage",
            edge_with_server_usage,
            "edge-6",
            Some(Refusal::WrongRole {
                name: "edge-6".into(),
                role: CertRole::Edge,
                accepted: vec![CertRole::Server],
            }),
        ),
        (
            "a server certificate without a role",
            roleless_server,
            "a",
            Some(Refusal::NoRole { name: "a".into() }),
        ),
    ];
    let client = dialler::<TestProto>(ca.issue_identity("b", CertRole::Server).unwrap());
    for (what, (cert, key), name, expected) in cases {
        let (_endpoint, addr) = hand_made_listener(&cert, &key);
        let got = refusal(within(what, TEST_LIMIT, client.connect(addr, name)).await);
        match expected {
            Some(expected) => assert_eq!(got, expected, "{what}: {got}"),
            // webpki refuses it first: no server usage.
            None => assert!(
                got.to_string().contains("extended key usage for server"),
                "{what}: {got}"
            ),
        }
    }
}

/// A QUIC listener for [`TestProto`] made with quinn and rustls directly,
/// presenting `cert_pem` and asking for no client certificate: what the
/// holder of a stolen certificate could run.
fn hand_made_listener(cert_pem: &str, key_pem: &str) -> (quinn::Endpoint, SocketAddr) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(quic::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    tls.alpn_protocols = vec![TestProto::NAME.as_bytes().to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = quinn::Endpoint::server(config, loopback()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    conn.closed().await;
                }
            });
        }
    });
    (endpoint, addr)
}

/// A link kind with another ALPN: an edge dialling the peer port.
struct OtherProto;
impl Protocol for OtherProto {
    const NAME: &'static str = "vcodr-other";
    const ACCEPTS: &'static [CertRole] = &CertRole::ALL;
    type Request = TestRequest;
    type Response = TestResponse;
    type Message = LogMessage;
}

#[tokio::test]
async fn wrong_protocol_is_refused_in_the_handshake() {
    let ca = CertificateAuthority::new().unwrap();
    let server = start_server(&ca, "a", loopback(), quick_settings()).unwrap();
    let other = QuicTransport::<OtherProto>::bind(
        loopback(),
        ca.issue_identity("edge-1", CertRole::Edge).unwrap(),
        quick_settings(),
    )
    .unwrap();
    match within("connect", TEST_LIMIT, other.connect(server.addr, "a")).await {
        Err(ConnectError::HandshakeRefused {
            refusal: Refusal::WrongProtocol { .. },
            ..
        }) => {}
        other => panic!(
            "expected a protocol refusal, got {:?}",
            other.map(|l| l.link().clone())
        ),
    }
}

/// A client that speaks protocol `versions` and calls itself `software`.
fn edge_speaking(
    ca: &CertificateAuthority,
    name: &str,
    versions: std::ops::RangeInclusive<u16>,
    software: &str,
) -> QuicTransport<TestProto> {
    let settings = Settings {
        hello: Hello {
            min_version: *versions.start(),
            max_version: *versions.end(),
            software: software.into(),
        },
        ..quick_settings()
    };
    let identity = ca.issue_identity(name, CertRole::Edge).unwrap();
    QuicTransport::bind(loopback(), identity, settings).unwrap()
}

#[tokio::test]
async fn version_mismatch_is_refused_naming_both_versions() {
    let ca = CertificateAuthority::new().unwrap();
    let server_settings = Settings {
        hello: Hello {
            min_version: 1,
            max_version: 1,
            software: "vcodr 0.1.0".into(),
        },
        ..quick_settings()
    };
    let server = QuicTransport::<TestProto>::bind(
        loopback(),
        ca.issue_identity("a", CertRole::Server).unwrap(),
        server_settings,
    )
    .unwrap();
    let listener = server.listen().unwrap();
    let addr = listener.local_addr();
    let state = Arc::new(Mutex::new(StandbyState::default()));
    let _serving = serve(listener, "a", state.clone());

    let future_edge = edge_speaking(&ca, "edge-9", 7..=8, "vcodr 9.0.0");
    let err = within("connect", TEST_LIMIT, future_edge.connect(addr, "a"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ConnectError::VersionMismatch { .. }),
        "{text}"
    );
    for part in ["7..=8", "vcodr 9.0.0", "1..=1", "vcodr 0.1.0", "`a`"] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
    // One version apart still works (SPEC §6: upgrade one server at a time).
    let next_edge = edge_speaking(&ca, "edge-8", 1..=2, "vcodr 0.2.0");
    let link = within("connect", TEST_LIMIT, next_edge.connect(addr, "a"))
        .await
        .unwrap();
    assert_eq!(link.link().version, 1);
    assert_eq!(
        state.lock().unwrap().links,
        1,
        "the mismatched peer was never handed to the server"
    );
}

/// A raw quinn connection that did the hello by hand, to send bad frames.
async fn raw_link(
    ca: &CertificateAuthority,
    name: &str,
    server: SocketAddr,
) -> (quinn::Endpoint, quinn::Connection) {
    let identity = ca.issue_identity(name, CertRole::Edge).unwrap();
    let tls = quic::client_tls_config::<TestProto>(&identity).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client(loopback()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = endpoint.connect(server, "a").unwrap().await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&codec::to_frame(&Hello::ours("raw test client")).unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    let reply = recv.read_to_end(4096).await.unwrap();
    let (_hello, _) = codec::decode_frame::<Hello>(&reply, 4096).unwrap();
    (endpoint, conn)
}

async fn raw_request(
    conn: &quinn::Connection,
    bytes: &[u8],
) -> Result<Vec<u8>, quinn::ReadToEndError> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // The server may reset before reading everything; that is the point.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    recv.read_to_end(1 << 20).await
}

#[tokio::test]
async fn bad_frames_close_only_their_stream_or_connection() {
    let ca = CertificateAuthority::new().unwrap();
    let settings = Settings {
        max_frame_bytes: 64 * 1024,
        ..quick_settings()
    };
    let server = start_server(&ca, "a", loopback(), settings).unwrap();
    let (_endpoint, raw) = within(
        "raw link",
        TEST_LIMIT,
        raw_link(&ca, "edge-raw", server.addr),
    )
    .await;

    let rejected = |r: Result<Vec<u8>, quinn::ReadToEndError>| match r {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            code == quic::code::FRAME_REJECTED
        }
        _ => false,
    };
    // Unknown frame version, a length far above the cap (never allocated),
    // a malformed payload, a truncated header: each resets its own stream.
    let unknown_version = [9u8, 0, 0, 0, 1, 0];
    let oversized = [codec::FRAME_VERSION, 0x40, 0, 0, 0];
    let garbage = [codec::FRAME_VERSION, 0, 0, 0, 3, 0xff, 0xff, 0xff];
    let truncated = [codec::FRAME_VERSION, 0];
    for (what, bytes) in [
        ("unknown version", &unknown_version[..]),
        ("oversized", &oversized[..]),
        ("garbage", &garbage[..]),
        ("truncated", &truncated[..]),
    ] {
        let result = within(what, TEST_LIMIT, raw_request(&raw, bytes)).await;
        assert!(rejected(result.clone()), "{what}: {result:?}");
    }
    // The same connection still answers a good request.
    let good = codec::to_frame(&TestRequest::Echo(vec![1, 2, 3])).unwrap();
    let answer = within("good request", TEST_LIMIT, raw_request(&raw, &good))
        .await
        .unwrap();
    let (response, _) = codec::decode_frame::<TestResponse>(&answer, 4096).unwrap();
    assert_eq!(response, TestResponse::Echo(vec![1, 2, 3]));

    // Garbage on the ordered stream closes that connection only.
    let mut uni = raw.open_uni().await.unwrap();
    uni.write_all(&oversized).await.unwrap();
    let _ = uni.finish();
    match within("violation close", TEST_LIMIT, raw.closed()).await {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, quic::code::PROTOCOL_VIOLATION);
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            assert!(reason.contains("exceeds the maximum"), "{reason}");
        }
        other => panic!("expected a protocol-violation close, got {other}"),
    }
    // The listener serves everyone else.
    let edge = client(&ca, "edge-ok", CertRole::Edge);
    let link = within(
        "connect after violation",
        TEST_LIMIT,
        edge.connect(server.addr, "a"),
    )
    .await
    .unwrap();
    let reply = within(
        "heartbeat",
        TEST_LIMIT,
        link.request(&TestRequest::Heartbeat { seq: 1 }),
    )
    .await
    .unwrap();
    assert!(matches!(reply, TestResponse::Reply { seq: 1, .. }));

    // A request above the server's cap, from a client with a larger cap:
    // the server rejects that stream only, and the link stays up.
    let big = TestRequest::Echo(vec![0; 70 * 1024]);
    let err = within("big request", TEST_LIMIT, link.request(&big))
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::NoResponse { .. }), "{err}");
    assert!(err.to_string().contains("rejected the frame"), "{err}");
    let reply = within(
        "heartbeat",
        TEST_LIMIT,
        link.request(&TestRequest::Heartbeat { seq: 2 }),
    )
    .await
    .unwrap();
    assert!(matches!(reply, TestResponse::Reply { seq: 2, .. }));

    // With the same cap, the client refuses to send it at all, naming the peer.
    let capped = QuicTransport::<TestProto>::bind(
        loopback(),
        ca.issue_identity("edge-capped", CertRole::Edge).unwrap(),
        Settings {
            max_frame_bytes: 64 * 1024,
            ..quick_settings()
        },
    )
    .unwrap();
    let capped_link = within("connect", TEST_LIMIT, capped.connect(server.addr, "a"))
        .await
        .unwrap();
    let err = capped_link.request(&big).await.unwrap_err();
    assert!(matches!(err, RequestError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("`a` at 127.0.0.1"), "{err}");
}

/// Server `a` handing its first accepted link to `serve`; the transport
/// (keep it alive) and its address.
fn server_a<F, Fut>(ca: &CertificateAuthority, serve: F) -> (QuicTransport<TestProto>, SocketAddr)
where
    F: FnOnce(Connection<TestProto>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let server = QuicTransport::<TestProto>::bind(
        loopback(),
        ca.issue_identity("a", CertRole::Server).unwrap(),
        quick_settings(),
    )
    .unwrap();
    let mut listener = server.listen().unwrap();
    let addr = listener.local_addr();
    tokio::spawn(async move {
        if let Some(link) = listener.accept().await {
            serve(link).await;
        }
    });
    (server, addr)
}

#[tokio::test]
async fn dropped_responder_tells_the_requester_at_once() {
    let ca = CertificateAuthority::new().unwrap();
    let (_server, addr) = server_a(&ca, |mut link| async move {
        while let Ok(incoming) = link.recv().await {
            drop(incoming); // never answer
        }
    });
    let edge = client(&ca, "edge-1", CertRole::Edge);
    let link = edge.connect(addr, "a").await.unwrap();
    let err = within(
        "request",
        Duration::from_secs(3),
        link.request(&TestRequest::Status),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RequestError::NoResponse { .. }), "{err}");
    // A datagram request too, well inside the 5 s request timeout: the
    // refusal is a datagram of its own.
    let err = within(
        "datagram request",
        Duration::from_secs(3),
        link.request_datagram(&TestRequest::Status),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RequestError::NoResponse { .. }), "{err}");
}

/// A thousand links open at once, each completing a heartbeat round trip.
///
/// Dials are paced at `HANDSHAKES_IN_FLIGHT` at a time, as an edge fleet's
/// jitter would: a burst of 1,000 simultaneous QUIC handshakes on loopback
/// overflows even an 8 MiB UDP receive buffer on a 2-core machine and then
/// rests on QUIC's retransmission timers (seconds). All round trips run
/// concurrently once every link is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_clients_each_complete_a_round_trip() {
    const CLIENTS: usize = 1_000;
    const SOCKETS: usize = 8;
    const HANDSHAKES_IN_FLIGHT: usize = 64;
    let ca = CertificateAuthority::new().unwrap();
    let settings = Settings {
        handshake_timeout: Duration::from_secs(30),
        request_timeout: Duration::from_secs(30),
        driver: DRIVER,
        ..Settings::default()
    };
    let server = start_server(&ca, "a", loopback(), settings.clone()).unwrap();
    let sockets: Vec<QuicTransport<TestProto>> = (0..SOCKETS)
        .map(|i| {
            let identity = ca
                .issue_identity(&format!("edge-sock-{i}"), CertRole::Edge)
                .unwrap();
            QuicTransport::bind(loopback(), identity, settings.clone()).unwrap()
        })
        .collect();
    let edges: Vec<QuicTransport<TestProto>> = (0..CLIENTS)
        .map(|i| {
            sockets[i % SOCKETS]
                .with_identity(
                    ca.issue_identity(&format!("edge-{i:05}"), CertRole::Edge)
                        .unwrap(),
                )
                .unwrap()
        })
        .collect();

    let started = tokio::time::Instant::now();
    let pacing = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_IN_FLIGHT));
    let mut dials = tokio::task::JoinSet::new();
    for (i, edge) in edges.into_iter().enumerate() {
        let (pacing, addr) = (pacing.clone(), server.addr);
        dials.spawn(async move {
            let _permit = pacing.acquire().await.expect("never closed");
            edge.connect(addr, "a")
                .await
                .map(|link| (i, link))
                .map_err(|e| format!("edge {i}: {e}"))
        });
    }
    let mut links = Vec::with_capacity(CLIENTS);
    within("1,000 links up", Duration::from_secs(120), async {
        while let Some(result) = dials.join_next().await {
            links.push(result.expect("task").expect("connect"));
        }
    })
    .await;
    let connected = started.elapsed();
    wait_until("all links accepted", TEST_LIMIT, || {
        server.state.lock().unwrap().links == CLIENTS as u64
    })
    .await;

    let mut trips = tokio::task::JoinSet::new();
    for (i, link) in links {
        trips.spawn(async move {
            let reply = link
                .request(&TestRequest::Heartbeat { seq: i as u64 })
                .await
                .map_err(|e| format!("edge {i}: {e}"))?;
            let expected = TestResponse::Reply {
                seq: i as u64,
                server: "a".into(),
                client: format!("edge-{i:05}"),
            };
            if reply != expected {
                return Err(format!("edge {i}: got {reply:?}"));
            }
            Ok::<_, String>(link)
        });
    }
    let mut done = 0;
    let mut still_open = Vec::with_capacity(CLIENTS);
    within(
        "1,000 concurrent round trips",
        Duration::from_secs(60),
        async {
            while let Some(result) = trips.join_next().await {
                still_open.push(result.expect("task").expect("round trip"));
                done += 1;
            }
        },
    )
    .await;
    eprintln!(
        "{CLIENTS} links up in {connected:?}; all round trips done at {:?}",
        started.elapsed()
    );
    assert_eq!(done, CLIENTS);
    assert_eq!(server.state.lock().unwrap().heartbeats, CLIENTS as u64);
    assert!(
        still_open.iter().all(|link| link.close_reason().is_none()),
        "every link stayed up"
    );
}

/// Counts dial attempts, to prove that a reconnect really retried.
struct Counting<T> {
    inner: T,
    attempts: Arc<AtomicU64>,
}

impl<T: Transport<TestProto>> Transport<TestProto> for Counting<T> {
    async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Connection<TestProto>, ConnectError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        self.inner.connect(addr, server_name).await
    }

    fn listen_with(
        &self,
        answerer: Option<vcodr_transport::Answerer<TestProto>>,
    ) -> Result<Listener<TestProto>, SetupError> {
        self.inner.listen_with(answerer)
    }
}

#[tokio::test]
async fn reconnects_after_the_listener_restarts() {
    let ca = CertificateAuthority::new().unwrap();
    let settings = Settings {
        handshake_timeout: Duration::from_millis(500),
        ..quick_settings()
    };
    let server = start_server(&ca, "a", loopback(), settings.clone()).unwrap();
    let addr = server.addr;
    let attempts = Arc::new(AtomicU64::new(0));
    let edge = Counting {
        inner: QuicTransport::<TestProto>::bind(
            loopback(),
            ca.issue_identity("edge-1", CertRole::Edge).unwrap(),
            settings.clone(),
        )
        .unwrap(),
        attempts: attempts.clone(),
    };
    let link = edge.connect(addr, "a").await.unwrap();
    link.request(&TestRequest::Heartbeat { seq: 1 })
        .await
        .unwrap();

    // The server goes away; the edge sees its link go down, with the reason.
    server.task.abort();
    server.transport.shutdown("restarting");
    let reason = within("link down", TEST_LIMIT, link.closed()).await;
    assert_eq!(reason, CloseReason::Peer("restarting".into()));
    drop(link);
    within("server idle", TEST_LIMIT, server.transport.wait_idle()).await;
    drop(server);

    // The edge redials with backoff while the server is down...
    let reconnect = tokio::spawn(async move {
        let mut backoff = Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(200),
            0.5,
            7,
        )
        .unwrap();
        let link = connect_with_backoff(&edge, addr, "a", &mut backoff, 100).await?;
        let reply = link
            .request(&TestRequest::Heartbeat { seq: 2 })
            .await
            .map_err(|e| ConnectError::Failed {
                addr,
                server_name: "a".into(),
                reason: e.to_string(),
            })?;
        Ok::<_, ConnectError>(reply)
    });
    wait_until("a failed attempt", TEST_LIMIT, || {
        attempts.load(Ordering::SeqCst) >= 3
    })
    .await;
    // ...and gets through once it is back on the same port.
    let mut restarted = None;
    for _ in 0..200 {
        match start_server(&ca, "a", addr, settings.clone()) {
            Ok(server) => {
                restarted = Some(server);
                break;
            }
            Err(SetupError::Bind { .. }) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let restarted = restarted.expect("rebinding the port");
    let reply = within("reconnect", TEST_LIMIT, reconnect)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(reply, TestResponse::Reply { seq: 2, .. }),
        "{reply:?}"
    );
    assert_eq!(restarted.state.lock().unwrap().heartbeats, 1);
}

#[tokio::test]
async fn settings_are_validated() {
    let ca = CertificateAuthority::new().unwrap();
    let bad = Settings {
        max_pending_sends: 0,
        driver: DRIVER,
        ..Settings::default()
    };
    let err = QuicTransport::<TestProto>::bind(
        loopback(),
        ca.issue_identity("a", CertRole::Server).unwrap(),
        bad,
    )
    .unwrap_err();
    assert!(err.to_string().contains("max_pending_sends"), "{err}");
}

/// Heartbeats as datagram requests: answered as datagrams; a request or a
/// response too large for one datagram travels on a stream instead; garbage
/// datagrams are dropped and the link keeps serving. (An unanswered one:
/// `dropped_responder_tells_the_requester_at_once`.)
#[tokio::test]
async fn datagram_requests_round_trip_fall_back_to_streams_and_survive_garbage() {
    let ca = CertificateAuthority::new().unwrap();
    let server = start_server(&ca, "a", loopback(), quick_settings()).unwrap();
    let edge = client(&ca, "edge-1", CertRole::Edge);
    let link = within("connect", TEST_LIMIT, edge.connect(server.addr, "a"))
        .await
        .unwrap();
    for seq in 0..100 {
        let reply = within(
            "datagram heartbeat",
            TEST_LIMIT,
            link.request_datagram(&TestRequest::Heartbeat { seq }),
        )
        .await
        .unwrap();
        assert_eq!(
            reply,
            TestResponse::Reply {
                seq,
                server: "a".into(),
                client: "edge-1".into()
            }
        );
    }
    assert_eq!(server.state.lock().unwrap().heartbeats, 100);
    // 200 KiB each way: far beyond any datagram, so both go by stream.
    let big = vec![7u8; 200 * 1024];
    let reply = within(
        "large echo",
        TEST_LIMIT,
        link.request_datagram(&TestRequest::Echo(big.clone())),
    )
    .await
    .unwrap();
    assert_eq!(reply, TestResponse::Echo(big));
    // A small request whose response does not fit: the server says so and
    // the requester asks again on a stream.
    let (_endpoint, raw) = raw_link(&ca, "edge-raw", server.addr).await;
    let max = raw.max_datagram_size().expect("datagrams negotiated");
    let reply = within(
        "a response larger than a datagram",
        TEST_LIMIT,
        link.request_datagram(&TestRequest::Grow(max as u32)),
    )
    .await
    .unwrap();
    assert_eq!(reply, TestResponse::Echo(vec![1u8; max]));
    // Garbage: too short, unknown kind, bad frame, an answer nobody asked for.
    for bytes in [
        &b"\x00"[..],
        &b"\x09\x00\x00\x00\x00\x00\x00\x00\x01junk"[..],
        &b"\x00\x00\x00\x00\x00\x00\x00\x00\x01\xff\xff\xff\xff\xff"[..],
        &b"\x01\x00\x00\x00\x00\x00\x00\x00\x63\x01\x00\x00\x00\x00"[..],
    ] {
        raw.send_datagram(bytes.to_vec().into()).unwrap();
    }
    let reply = within(
        "heartbeat after garbage",
        TEST_LIMIT,
        link.request_datagram(&TestRequest::Heartbeat { seq: 1000 }),
    )
    .await
    .unwrap();
    assert!(matches!(reply, TestResponse::Reply { seq: 1000, .. }));
    assert!(
        raw.close_reason().is_none(),
        "garbage did not close the link"
    );
}

/// A datagram request whose connection closes before the answer fails at
/// once with the peer's reason, not after the request timeout.
#[tokio::test]
async fn a_datagram_request_ends_when_its_connection_closes() {
    let ca = CertificateAuthority::new().unwrap();
    let (_server, addr) = server_a(&ca, |mut link| async move {
        if let Ok(Incoming::Request { responder, .. }) = link.recv().await {
            // Close without answering, and keep the responder from refusing.
            link.close("going away");
            std::mem::forget(responder);
        }
    });
    let edge = client(&ca, "edge-1", CertRole::Edge);
    let link = edge.connect(addr, "a").await.unwrap();
    // Well inside the 5 s request timeout.
    let err = within(
        "datagram request",
        Duration::from_secs(3),
        link.request_datagram(&TestRequest::Status),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, RequestError::Closed { reason: CloseReason::Peer(r), .. } if r == "going away"),
        "{err}"
    );
}

/// Drives `link` as the asking side against a peer running [`serve_link`]
/// under the name `peer`, which sees this side as `me`: a stream request, a
/// datagram request, a datagram request too large for a datagram (so both
/// ways by stream), then `ENTRIES` ordered log messages answered by ordered
/// acks. Returns the link's sender, still open.
async fn exercise(
    what: &str,
    link: Connection<TestProto>,
    peer: &str,
    me: &str,
) -> vcodr_transport::LinkSender<TestProto> {
    const ENTRIES: u64 = 1_000;
    let expected = |seq| TestResponse::Reply {
        seq,
        server: peer.into(),
        client: me.into(),
    };
    let reply = within(
        &format!("{what}: stream request"),
        TEST_LIMIT,
        link.request(&TestRequest::Heartbeat { seq: 1 }),
    )
    .await
    .unwrap_or_else(|e| panic!("{what}: stream request: {e}"));
    assert_eq!(reply, expected(1), "{what}");
    let reply = within(
        &format!("{what}: datagram request"),
        TEST_LIMIT,
        link.request_datagram(&TestRequest::Heartbeat { seq: 2 }),
    )
    .await
    .unwrap_or_else(|e| panic!("{what}: datagram request: {e}"));
    assert_eq!(reply, expected(2), "{what}");
    let big = vec![7u8; 200 * 1024];
    let reply = within(
        &format!("{what}: large echo"),
        TEST_LIMIT,
        link.request_datagram(&TestRequest::Echo(big.clone())),
    )
    .await
    .unwrap_or_else(|e| panic!("{what}: large echo: {e}"));
    assert_eq!(reply, TestResponse::Echo(big), "{what}");

    // Ordered messages both ways: entries out, one ack back per entry. The
    // acks are read while sending, so neither side's queues fill up.
    let (sender, mut receiver) = link.split();
    let send_all = async {
        for index in 1..=ENTRIES {
            sender
                .send(&LogMessage::Entry {
                    index,
                    payload: index.to_le_bytes().to_vec(),
                })
                .await
                .unwrap_or_else(|e| panic!("{what}: send entry {index}: {e}"));
        }
    };
    let read_acks = async {
        let mut last = 0;
        while last < ENTRIES {
            match receiver.recv().await {
                Ok(Incoming::Message(LogMessage::Ack { up_to })) => {
                    assert!(up_to > last, "{what}: ack {up_to} after {last}");
                    last = up_to;
                }
                other => panic!("{what}: unexpected {other:?}"),
            }
        }
    };
    within(
        &format!("{what}: {ENTRIES} entries acknowledged"),
        TEST_LIMIT,
        async { tokio::join!(send_all, read_acks) },
    )
    .await;
    sender
}

/// What a [`serve_link`] side must have seen after [`exercise`].
fn assert_exercised(what: &str, state: &Mutex<StandbyState>) {
    let state = state.lock().unwrap();
    assert_eq!(state.heartbeats, 2, "{what}");
    assert_eq!(state.log, (1..=1_000).collect::<Vec<_>>(), "{what}");
    assert_eq!(
        (state.entries_received, state.entries_out_of_place),
        (1_000, 0),
        "{what}"
    );
}

/// Dials `listener` from `edge` as `edge-1` to `a`; both ends of the link.
async fn link_pair(
    what: &str,
    edge: &QuicTransport<TestProto>,
    listener: &mut Listener<TestProto>,
) -> (Connection<TestProto>, Connection<TestProto>) {
    let addr = listener.local_addr();
    within(&format!("{what}: connect"), TEST_LIMIT, async {
        let (dialled, accepted) = tokio::join!(edge.connect(addr, "a"), listener.accept());
        let dialled = dialled.unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        let accepted = accepted.expect("the listener is open");
        assert_eq!(dialled.peer().as_str(), "a", "{what}");
        assert_eq!(accepted.peer().as_str(), "edge-1", "{what}");
        (dialled, accepted)
    })
    .await
}

/// The two drivers speak the same wire protocol: a client on either one
/// talks to a server on the other, each side in turn asking (stream and
/// datagram requests) and sending ordered messages while the other answers.
#[tokio::test]
async fn drivers_interoperate_both_ways() {
    let ca = CertificateAuthority::new().unwrap();
    for (client_driver, server_driver) in [
        (QuicDriver::Hub, QuicDriver::Quinn),
        (QuicDriver::Quinn, QuicDriver::Hub),
    ] {
        let what = format!("{client_driver:?} client, {server_driver:?} server");
        let server = QuicTransport::<TestProto>::bind(
            loopback(),
            ca.issue_identity("a", CertRole::Server).unwrap(),
            quick_settings_on(server_driver),
        )
        .unwrap();
        assert_eq!(server.settings().driver, server_driver);
        let mut listener = server.listen().unwrap();
        let edge = client_on(&ca, "edge-1", CertRole::Edge, client_driver);
        assert_eq!(edge.settings().driver, client_driver);
        // The client asks and the server answers, then the other way round.
        for client_asks in [true, false] {
            let (dialled, accepted) = link_pair(&what, &edge, &mut listener).await;
            let (asker, answerer, asker_name, answerer_name, side) = if client_asks {
                (dialled, accepted, "edge-1", "a", "client")
            } else {
                (accepted, dialled, "a", "edge-1", "server")
            };
            let served = Arc::new(Mutex::new(StandbyState::default()));
            let serving = tokio::spawn(serve_link(answerer, answerer_name.into(), served.clone()));
            let asking = format!("{what}, the {side} asking");
            let sender = exercise(&asking, asker, answerer_name, asker_name).await;
            assert_exercised(&asking, &served);
            sender.close("done");
            within(
                &format!("{asking}: answering link down"),
                TEST_LIMIT,
                serving,
            )
            .await
            .unwrap();
        }
    }
}

/// A linked pair on this suite's driver: the dialling side's connection,
/// then the accepted one (with the transports, which must stay alive).
async fn linked_pair(
    server_settings: Settings,
    client_settings: Settings,
) -> (
    [QuicTransport<TestProto>; 2],
    Connection<TestProto>,
    Connection<TestProto>,
) {
    let ca = CertificateAuthority::new().unwrap();
    let server = QuicTransport::<TestProto>::bind(
        loopback(),
        ca.issue_identity("a", CertRole::Server).unwrap(),
        server_settings,
    )
    .unwrap();
    let mut listener = server.listen().unwrap();
    let client = QuicTransport::<TestProto>::bind(
        loopback(),
        ca.issue_identity("edge-1", CertRole::Edge).unwrap(),
        client_settings,
    )
    .unwrap();
    let addr = listener.local_addr();
    let (dialled, accepted) = within("link up", TEST_LIMIT, async {
        tokio::join!(client.connect(addr, "a"), listener.accept())
    })
    .await;
    ([server, client], dialled.unwrap(), accepted.unwrap())
}

fn reply_from_a() -> TestResponse {
    TestResponse::Reply {
        seq: 0,
        server: "a".into(),
        client: "edge-1".into(),
    }
}

/// The application reads slower than the peer sends: the transport holds
/// the rest back (the peer is slowed by flow control) and hands everything
/// over, in order, as the application catches up.
#[tokio::test]
async fn a_full_incoming_queue_holds_messages_back_and_loses_none() {
    const COUNT: u64 = 100;
    let small_queue = Settings {
        max_pending_incoming: 4,
        ..quick_settings()
    };
    let (_keep, sender, mut receiver) = linked_pair(small_queue, quick_settings()).await;
    for index in 1..=COUNT {
        let entry = LogMessage::Entry {
            index,
            payload: vec![0; 8],
        };
        within("send", TEST_LIMIT, sender.send(&entry))
            .await
            .unwrap();
    }
    for expected in 1..=COUNT {
        match within("receive", TEST_LIMIT, receiver.recv()).await {
            Ok(Incoming::Message(LogMessage::Entry { index, .. })) => assert_eq!(index, expected),
            other => panic!("message {expected}: {:?}", other.map(|_| ())),
        }
    }
}

/// Requests that time out at the requester and are answered late still give
/// their streams back: with room for 2 requests per link, 3 late answers,
/// then 3 more requests, all answered.
#[tokio::test]
async fn late_answers_to_abandoned_requests_free_their_streams() {
    let server_settings = Settings {
        max_concurrent_requests: 2,
        ..quick_settings()
    };
    let impatient = Settings {
        request_timeout: Duration::from_millis(300),
        ..quick_settings()
    };
    let (_keep, client, mut server) = linked_pair(server_settings, impatient).await;
    let late_sent = Arc::new(AtomicU64::new(0));
    let sent = late_sent.clone();
    let serving = tokio::spawn(async move {
        let mut seen = 0;
        while let Ok(item) = server.recv().await {
            if let Incoming::Request { responder, .. } = item {
                seen += 1;
                let late = seen <= 3;
                let sent = sent.clone();
                tokio::spawn(async move {
                    if late {
                        // Longer than the requester waits.
                        tokio::time::sleep(Duration::from_millis(700)).await;
                    }
                    let _ = responder.respond(&reply_from_a()).await;
                    if late {
                        sent.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        }
    });
    let (a, b, c) = tokio::join!(
        client.request(&TestRequest::Heartbeat { seq: 1 }),
        client.request(&TestRequest::Heartbeat { seq: 2 }),
        client.request(&TestRequest::Heartbeat { seq: 3 }),
    );
    for r in [a, b, c] {
        assert!(
            matches!(r, Err(RequestError::TimedOut { .. })),
            "{:?}",
            r.map(|_| ())
        );
    }
    wait_until("the late answers are sent", TEST_LIMIT, || {
        late_sent.load(Ordering::SeqCst) == 3
    })
    .await;
    for seq in 4..7 {
        let reply = within(
            "request after the late answers",
            TEST_LIMIT,
            client.request(&TestRequest::Heartbeat { seq }),
        )
        .await
        .unwrap_or_else(|e| panic!("request {seq}: {e}"));
        assert_eq!(reply, reply_from_a());
    }
    serving.abort();
}

/// Answers to our own requests are read even while the application has not
/// read what the peer sent on its own.
#[tokio::test]
async fn our_requests_are_answered_while_the_incoming_queue_is_full() {
    let small_queue = Settings {
        max_pending_incoming: 2,
        ..quick_settings()
    };
    let (_keep, client, mut server) = linked_pair(quick_settings(), small_queue).await;
    for index in 1..=20 {
        let entry = LogMessage::Entry {
            index,
            payload: vec![],
        };
        within("send", TEST_LIMIT, server.send(&entry))
            .await
            .unwrap();
    }
    let serving = tokio::spawn(async move {
        while let Ok(item) = server.recv().await {
            if let Incoming::Request { responder, .. } = item {
                let _ = responder.respond(&reply_from_a()).await;
            }
        }
    });
    let reply = within(
        "request while the queue is full",
        TEST_LIMIT,
        client.request(&TestRequest::Heartbeat { seq: 1 }),
    )
    .await
    .unwrap();
    assert_eq!(reply, reply_from_a());
    serving.abort();
}

/// 12 MB of ordered messages of 60 KB each: large bursts leave in GSO
/// batches that the socket accepts.
#[tokio::test]
async fn twelve_megabytes_of_large_messages_arrive_whole() {
    const COUNT: u64 = 200;
    let (_keep, sender, mut receiver) = linked_pair(quick_settings(), quick_settings()).await;
    let reading = tokio::spawn(async move {
        let mut got = 0;
        while got < COUNT {
            match receiver.recv().await {
                Ok(Incoming::Message(LogMessage::Entry { index, payload })) => {
                    got += 1;
                    assert_eq!((index, payload.len()), (got, 60_000));
                }
                Ok(_) => {}
                Err(e) => panic!("after {got} messages: {e}"),
            }
        }
        got
    });
    for index in 1..=COUNT {
        let entry = LogMessage::Entry {
            index,
            payload: vec![7; 60_000],
        };
        within("send", TEST_LIMIT, sender.send(&entry))
            .await
            .unwrap();
    }
    assert_eq!(
        within("receive all", TEST_LIMIT, reading).await.unwrap(),
        COUNT
    );
}

/// A socket bound to 127.0.0.1 cannot send to another address (`EINVAL`,
/// or `ENETUNREACH` without a route): every packet is refused by the OS,
/// and the transport counts each instead of losing them silently. A
/// working link counts none.
#[tokio::test]
async fn refused_udp_sends_are_counted() {
    let ca = CertificateAuthority::new().unwrap();
    let server = start_server(&ca, "a", loopback(), quick_settings()).unwrap();
    let edge = client(&ca, "edge-1", CertRole::Edge);
    let link = within("connect", TEST_LIMIT, edge.connect(server.addr, "a"))
        .await
        .unwrap();
    within(
        "heartbeat",
        TEST_LIMIT,
        link.request(&TestRequest::Heartbeat { seq: 1 }),
    )
    .await
    .unwrap();
    assert_eq!(edge.udp_send_failures(), 0, "loopback to loopback works");
    assert_eq!(server.transport.udp_send_failures(), 0);

    let stranded = QuicTransport::<TestProto>::bind(
        loopback(),
        ca.issue_identity("edge-2", CertRole::Edge).unwrap(),
        Settings {
            handshake_timeout: Duration::from_millis(500),
            ..quick_settings()
        },
    )
    .unwrap();
    // TEST-NET-1 (RFC 5737): never a local address.
    let elsewhere: SocketAddr = "192.0.2.1:7444".parse().unwrap();
    let r = within(
        "connect elsewhere",
        TEST_LIMIT,
        stranded.connect(elsewhere, "a"),
    )
    .await;
    assert!(r.is_err(), "nothing can answer");
    assert!(
        stranded.udp_send_failures() >= 1,
        "the refused handshake packets are counted, not silently lost"
    );
}

/// A listener with an answerer answers every request itself (stream and
/// datagram, now, later, or refused) while `recv` yields only messages.
#[tokio::test]
async fn an_answerer_takes_every_request_of_the_links_it_accepts() {
    let ca = CertificateAuthority::new().unwrap();
    let identity = ca.issue_identity("a", CertRole::Server).unwrap();
    let server = QuicTransport::<TestProto>::bind(loopback(), identity, quick_settings()).unwrap();
    let edge = client(&ca, "edge-1", CertRole::Edge);
    an_answerer_takes_every_request(&server, "a", &edge, "edge-1", TEST_LIMIT).await;
}
