//! Shared pieces of the transport tests: a test protocol, a server that
//! answers it, a replication scenario generic over the transport, and a
//! bounded wait.
#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use vcodr_core::CertRole;
use vcodr_transport::reconnect::{connect_with_backoff, Backoff};
use vcodr_transport::{Connection, Incoming, Listener, Protocol, Transport};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TestRequest {
    Heartbeat {
        seq: u64,
    },
    /// How far has the standby applied the log?
    Status,
    Echo(Vec<u8>),
    /// Answered by an `Echo` of this many bytes.
    Grow(u32),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TestResponse {
    Reply {
        seq: u64,
        server: String,
        client: String,
    },
    Status {
        applied: u64,
    },
    Echo(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogMessage {
    Entry { index: u64, payload: Vec<u8> },
    Ack { up_to: u64 },
}

/// The test link kind. It accepts diallers of every role, since the tests
/// use it both between servers and from edges to servers;
/// [`PeerTestProto`] and [`EdgeTestProto`] hold the roles of the real ones.
#[derive(Debug)]
pub struct TestProto;

impl Protocol for TestProto {
    const NAME: &'static str = "vcodr-test";
    const ACCEPTS: &'static [CertRole] = &CertRole::ALL;
    type Request = TestRequest;
    type Response = TestResponse;
    type Message = LogMessage;
}

/// The test protocol with the peer link's roles: only servers dial it.
#[derive(Debug)]
pub struct PeerTestProto;

impl Protocol for PeerTestProto {
    const NAME: &'static str = "vcodr-test-peer";
    const ACCEPTS: &'static [CertRole] = &[CertRole::Server];
    type Request = TestRequest;
    type Response = TestResponse;
    type Message = LogMessage;
}

/// The test protocol with the edge link's roles: edges and gateways dial it.
#[derive(Debug)]
pub struct EdgeTestProto;

impl Protocol for EdgeTestProto {
    const NAME: &'static str = "vcodr-test-edge";
    const ACCEPTS: &'static [CertRole] = &[CertRole::Edge, CertRole::Gateway];
    type Request = TestRequest;
    type Response = TestResponse;
    type Message = LogMessage;
}

/// Polls `condition` every few milliseconds until it holds or `limit` passes.
pub async fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `future` with a deadline, failing the test with `what` if it passes.
pub async fn within<T>(what: &str, limit: Duration, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// What the standby side of the scenario has seen, across links.
#[derive(Debug, Default)]
pub struct StandbyState {
    /// Highest contiguous index applied.
    pub applied: u64,
    /// Every index applied, in order (must be 1..=n).
    pub log: Vec<u64>,
    /// Entries received, including resends and duplicates.
    pub entries_received: u64,
    /// Entries received that were not the next one (resends, duplicates, reordered).
    pub entries_out_of_place: u64,
    pub heartbeats: u64,
    pub links: u64,
    pub peers: Vec<String>,
}

/// Serves the test protocol on every accepted link: answers requests, applies
/// log entries in order (go-back-N: only the next index is applied) and
/// acknowledges each entry with the highest applied index.
pub fn serve(
    mut listener: Listener<TestProto>,
    name: &str,
    state: Arc<Mutex<StandbyState>>,
) -> tokio::task::JoinHandle<()> {
    let name = name.to_string();
    tokio::spawn(async move {
        while let Some(link) = listener.accept().await {
            {
                let mut s = state.lock().unwrap();
                s.links += 1;
                s.peers.push(link.peer().to_string());
            }
            tokio::spawn(serve_link(link, name.clone(), state.clone()));
        }
    })
}

pub async fn serve_link(
    link: Connection<TestProto>,
    name: String,
    state: Arc<Mutex<StandbyState>>,
) {
    let client = link.peer().to_string();
    let (sender, mut receiver) = link.split();
    while let Ok(incoming) = receiver.recv().await {
        match incoming {
            Incoming::Request { request, responder } => {
                let response = match request {
                    TestRequest::Heartbeat { seq } => {
                        state.lock().unwrap().heartbeats += 1;
                        TestResponse::Reply {
                            seq,
                            server: name.clone(),
                            client: client.clone(),
                        }
                    }
                    TestRequest::Status => TestResponse::Status {
                        applied: state.lock().unwrap().applied,
                    },
                    TestRequest::Echo(bytes) => TestResponse::Echo(bytes),
                    TestRequest::Grow(n) => TestResponse::Echo(vec![1u8; n as usize]),
                };
                // Answer from another task so a slow requester never blocks the reader.
                tokio::spawn(async move {
                    let _ = responder.respond(&response).await;
                });
            }
            Incoming::Message(LogMessage::Entry { index, .. }) => {
                let up_to = {
                    let mut s = state.lock().unwrap();
                    s.entries_received += 1;
                    if index == s.applied + 1 {
                        s.applied = index;
                        s.log.push(index);
                    } else {
                        s.entries_out_of_place += 1;
                    }
                    s.applied
                };
                if sender.send(&LogMessage::Ack { up_to }).await.is_err() {
                    return;
                }
            }
            Incoming::Message(LogMessage::Ack { .. }) => {}
        }
    }
}

/// How the replication scenario went, from the active's side.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplicationReport {
    pub entries_sent: u64,
    pub resend_rounds: u64,
    pub links_opened: u64,
    pub status_requests_failed: u64,
}

/// Limits of the scenario.
#[derive(Clone, Debug)]
pub struct ScenarioLimits {
    pub window: u64,
    pub ack_timeout: Duration,
    pub deadline: Duration,
    pub rounds_max: u64,
    pub backoff_seed: u64,
}

/// The active's side of the replication protocol: streams `n` entries with a
/// window, resends from the last acknowledgement when acks stop coming, and
/// after a link loss reconnects with backoff and asks the standby where it
/// stands (request/response) before resuming. Works over any transport and
/// survives loss, duplication, reordering, partitions and reconnects.
pub async fn replicate<T: Transport<TestProto>>(
    active: &T,
    standby: SocketAddr,
    standby_name: &str,
    n: u64,
    limits: &ScenarioLimits,
) -> Result<ReplicationReport, String> {
    let start = Instant::now();
    let mut report = ReplicationReport::default();
    let mut backoff = Backoff::new(
        Duration::from_millis(20),
        Duration::from_millis(500),
        0.5,
        limits.backoff_seed,
    )
    .map_err(|e| e.to_string())?;
    let mut acked = 0u64;
    for _link_attempt in 0..100 {
        if acked == n {
            return Ok(report);
        }
        if start.elapsed() > limits.deadline {
            return Err(format!(
                "deadline {:?} passed at ack {acked}/{n}: {report:?}",
                limits.deadline
            ));
        }
        let link = connect_with_backoff(active, standby, standby_name, &mut backoff, 200)
            .await
            .map_err(|e| format!("reconnect failed: {e}"))?;
        report.links_opened += 1;
        // Where does the standby stand? Retry the request on loss.
        let mut status = None;
        for _ in 0..20 {
            match link.request(&TestRequest::Status).await {
                Ok(TestResponse::Status { applied }) => {
                    status = Some(applied);
                    break;
                }
                Ok(other) => return Err(format!("unexpected response {other:?}")),
                Err(_) if link.close_reason().is_some() => break,
                Err(_) => report.status_requests_failed += 1,
            }
        }
        let Some(applied) = status else { continue };
        acked = acked.max(applied);
        let (sender, mut receiver) = link.split();
        let (ack_tx, mut ack_rx) = watch::channel(acked);
        let reader = tokio::spawn(async move {
            while let Ok(incoming) = receiver.recv().await {
                if let Incoming::Message(LogMessage::Ack { up_to }) = incoming {
                    ack_tx.send_if_modified(|a| {
                        let grew = up_to > *a;
                        *a = (*a).max(up_to);
                        grew
                    });
                }
            }
        });
        let mut next = acked + 1;
        let mut rounds = 0u64;
        let outcome = loop {
            acked = *ack_rx.borrow_and_update();
            if acked == n {
                break Ok(());
            }
            if start.elapsed() > limits.deadline || rounds > limits.rounds_max {
                break Err(format!(
                    "gave up at ack {acked}/{n} after {rounds} rounds: {report:?}"
                ));
            }
            rounds += 1;
            let window_end = (acked + limits.window).min(n);
            let mut link_lost = false;
            while next <= window_end {
                let entry = LogMessage::Entry {
                    index: next,
                    payload: next.to_le_bytes().to_vec(),
                };
                if sender.send(&entry).await.is_err() {
                    link_lost = true;
                    break;
                }
                report.entries_sent += 1;
                next += 1;
            }
            if link_lost || sender.close_reason().is_some() {
                break Err("link lost".to_string());
            }
            match tokio::time::timeout(limits.ack_timeout, ack_rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break Err("link lost".to_string()),
                Err(_) => {
                    // Acks stopped: go back to the first unacknowledged entry.
                    report.resend_rounds += 1;
                    next = *ack_rx.borrow() + 1;
                }
            }
        };
        reader.abort();
        match outcome {
            Ok(()) => return Ok(report),
            Err(e) if e == "link lost" => continue,
            Err(e) => return Err(e),
        }
    }
    Err(format!("too many links: {report:?}"))
}

/// What the answerer of [`an_answerer_takes_every_request`] saw.
#[derive(Default)]
struct Answered {
    heartbeats: Vec<(u64, String)>,
    /// A `Status` request's responder, kept to be answered later.
    kept: Option<vcodr_transport::Responder<TestProto>>,
}

/// Answers `response` through `responder` at once if the backend can, else
/// from a task of its own: an answerer must not wait.
fn answer_now(responder: vcodr_transport::Responder<TestProto>, response: TestResponse) {
    if let Err(responder) = responder.respond_datagram(&response) {
        tokio::spawn(async move {
            let _ = responder.respond(&response).await;
        });
    }
}

/// A listener with an answerer, as a user drives it: every request of an
/// accepted link, by stream or by datagram, goes to the answerer (which
/// sees the dialler's proven name), one responder kept and answered later
/// from another task, one dropped and refused at once; the accepted link's
/// `recv` yields only its ordered messages, in order; and a request the
/// listener's side sends over the same link still comes out of the
/// dialler's `recv` (a dialled link has no answerer).
pub async fn an_answerer_takes_every_request<T: Transport<TestProto>>(
    server: &T,
    server_name: &str,
    client: &T,
    client_name: &str,
    limit: Duration,
) {
    let answered = Arc::new(Mutex::new(Answered::default()));
    let seen = answered.clone();
    let name = server_name.to_string();
    let answerer: vcodr_transport::Answerer<TestProto> =
        Arc::new(move |request, responder| match request {
            TestRequest::Heartbeat { seq } => {
                let client = responder.link().peer.to_string();
                seen.lock().unwrap().heartbeats.push((seq, client.clone()));
                let reply = TestResponse::Reply {
                    seq,
                    server: name.clone(),
                    client,
                };
                answer_now(responder, reply);
            }
            TestRequest::Status => seen.lock().unwrap().kept = Some(responder),
            TestRequest::Echo(_) => drop(responder),
            TestRequest::Grow(n) => answer_now(responder, TestResponse::Echo(vec![1; n as usize])),
        });
    let mut listener = server.listen_with(Some(answerer)).expect("listen");
    let addr = listener.local_addr();
    let link = within("connect", limit, client.connect(addr, server_name))
        .await
        .expect("connect");
    let mut accepted = within("accept", limit, listener.accept())
        .await
        .expect("an accepted link");

    let reply = |seq| TestResponse::Reply {
        seq,
        server: server_name.to_string(),
        client: client_name.to_string(),
    };
    let by_stream = within(
        "a request",
        limit,
        link.request(&TestRequest::Heartbeat { seq: 1 }),
    );
    assert_eq!(by_stream.await.expect("answered"), reply(1));
    let by_datagram = link.request_datagram(&TestRequest::Heartbeat { seq: 2 });
    let by_datagram = within("a datagram request", limit, by_datagram);
    assert_eq!(by_datagram.await.expect("answered"), reply(2));
    let grown = within("a grown echo", limit, link.request(&TestRequest::Grow(3)));
    assert_eq!(
        grown.await.expect("answered"),
        TestResponse::Echo(vec![1; 3])
    );
    assert_eq!(
        answered.lock().unwrap().heartbeats,
        vec![(1, client_name.to_string()), (2, client_name.to_string())]
    );

    // Kept, then answered from this task.
    let status = {
        let sender = link.sender();
        tokio::spawn(async move { sender.request(&TestRequest::Status).await })
    };
    wait_until("the status responder kept", limit, || {
        answered.lock().unwrap().kept.is_some()
    })
    .await;
    let kept = answered.lock().unwrap().kept.take().expect("kept");
    within(
        "the late answer",
        limit,
        kept.respond(&TestResponse::Status { applied: 7 }),
    )
    .await
    .expect("sent");
    let status = within("the status request", limit, status)
        .await
        .expect("joined");
    assert_eq!(
        status.expect("answered"),
        TestResponse::Status { applied: 7 }
    );

    // Dropped: refused at once, not after the request timeout.
    let echo = TestRequest::Echo(vec![9]);
    let refused = within("a dropped request", limit, link.request(&echo)).await;
    assert!(
        matches!(
            refused,
            Err(vcodr_transport::RequestError::NoResponse { .. })
        ),
        "a dropped responder refuses"
    );

    // Messages still come out of the accepted link's `recv`, in order, and
    // nothing else does.
    for index in 1..=3 {
        let entry = LogMessage::Entry {
            index,
            payload: vec![index as u8],
        };
        within("a message", limit, link.send(&entry))
            .await
            .expect("sent");
    }
    for index in 1..=3 {
        match within("a message received", limit, accepted.recv()).await {
            Ok(Incoming::Message(LogMessage::Entry { index: got, .. })) => assert_eq!(got, index),
            Ok(Incoming::Message(other)) => panic!("unexpected message {other:?}"),
            Ok(Incoming::Request { request, .. }) => {
                panic!("request {request:?} reached recv past the answerer")
            }
            Err(e) => panic!("link closed: {e}"),
        }
    }

    // The dialler has no answerer: the listener side's request reaches its `recv`.
    let mut link = link;
    let asked = {
        let sender = accepted.sender();
        tokio::spawn(async move { sender.request(&TestRequest::Heartbeat { seq: 9 }).await })
    };
    match within("the reverse request", limit, link.recv()).await {
        Ok(Incoming::Request {
            request: TestRequest::Heartbeat { seq: 9 },
            responder,
        }) => {
            let back = TestResponse::Reply {
                seq: 9,
                server: client_name.to_string(),
                client: server_name.to_string(),
            };
            within("the reverse answer", limit, responder.respond(&back))
                .await
                .expect("sent");
        }
        other => panic!("expected the reverse heartbeat, got {other:?}"),
    }
    let back = within("the reverse reply", limit, asked)
        .await
        .expect("joined");
    assert!(matches!(back, Ok(TestResponse::Reply { seq: 9, .. })));
}
