//! Regression tests for a security review of the trust boundary: attacks
//! that docs/SECURITY.md did not cover, each against a real pair of
//! `vcodr serve` processes, with the credential the threat model gives the
//! attacker (one stolen edge certificate; or nothing at all for the admin
//! port). The reviewer wrote each as a reproduction that passed while the
//! attack worked (R1–R9, fixed in 0c8fa64); each is now inverted: the
//! attack code is the reviewer's, and the test asserts what the user sees
//! now that the attack fails (a refusal naming the limit, replication going
//! on, bounded memory and disk, fencing through honest edges).
//!
//! What is still possible is asserted too, and says why it is accepted: an
//! edge answered by a server certificate on its network path (out of scope,
//! docs/SECURITY.md) can still be made to follow nobody (R6).
//!
//! Loopback only, free ports, every wait polls with a deadline. Run with
//! `cargo test --release -p vcodr-server --test review_attacks -- --nocapture`;
//! the figures are printed.

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vcodr_core::*;
use vcodr_server::driver::links::{EdgeLink, ANY_SERVER_NAME, MAX_EDGE_LINKS_PER_CLIENT};
use vcodr_server::tools::cluster::{metric, temp_dir, ProcCluster, UdpProxy, FAST_TIMERS};
use vcodr_server::tools::edge_sim::{EdgeSim, SimSettings};
use vcodr_transport::certs::{CertKeys, CertificateAuthority, TlsIdentity};
use vcodr_transport::quic::QuicTransport;
use vcodr_transport::{Connection, Settings, Transport};

const A: usize = 0;
const B: usize = 1;
const T: Duration = Duration::from_secs(30);

fn vcodr() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vcodr"))
}

async fn pair(prefix: &str, extra: &str) -> ProcCluster {
    let dir = temp_dir(prefix).unwrap();
    let mut cl = ProcCluster::create(vcodr(), &dir, &["a", "b"], extra).unwrap();
    cl.start(A).unwrap();
    cl.start(B).unwrap();
    cl.pair(A, B, T).await.unwrap_or_else(|e| panic!("{e:#}"));
    cl
}

fn stolen(cl: &ProcCluster, name: &str, role: CertRole) -> TlsIdentity {
    let ca = CertificateAuthority::load(&cl.certs).unwrap();
    ca.issue_identity(name, role).unwrap()
}

async fn metrics(cl: &ProcCluster, i: usize) -> String {
    cl.client(i).get("/metrics").await.unwrap().1
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn hex(v: &Value) -> u128 {
    u128::from_str_radix(v.as_str().unwrap(), 16).unwrap()
}

/// An edge link of `identity` to `to`, whose frames may be `max_frame_bytes`.
async fn edge_link(
    identity: &TlsIdentity,
    to: &str,
    max_frame_bytes: usize,
) -> (QuicTransport<EdgeLink>, Connection<EdgeLink>) {
    let settings = Settings {
        max_frame_bytes,
        request_timeout: Duration::from_secs(120),
        ..Settings::default()
    };
    let t =
        QuicTransport::<EdgeLink>::bind(addr("127.0.0.1:0"), identity.clone(), settings).unwrap();
    let link = t.connect(addr(to), ANY_SERVER_NAME).await.unwrap();
    (t, link)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the `(comm)`: state is field 3; utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// The reason of a refusal; anything else fails the test.
fn refusal(r: &ServerMsg) -> &str {
    match r {
        ServerMsg::Refused { reason, .. } => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Occurrences of the throttled log kind `kind` (server/src/serve/throttle.rs) in
/// a server's log: the first of each interval is a line of its own, the
/// others are counted in a summary line (`N more `kind` …`) once the
/// interval ends, within `THROTTLE_INTERVAL` + 1 s.
fn throttled_count(path: &Path, kind: &str) -> u64 {
    let first = format!("kind=\"{kind}\"");
    let first_plain = format!("kind={kind}");
    let summary = format!(" more `{kind}` in the last");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            if let Some(i) = l.find(&summary) {
                // "... <N> more `kind` in the last ...": N precedes the marker.
                l[..i]
                    .rsplit(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(1)
            } else if l.contains(&first)
                || l.ends_with(&first_plain)
                || l.contains(&format!("{first_plain} "))
            {
                1
            } else {
                0
            }
        })
        .sum()
}

/// Throttled summaries are written within this long of the occurrences
/// they count (`THROTTLE_INTERVAL` plus the flush tick).
const THROTTLE_SETTLE: Duration = Duration::from_secs(12);

fn storage_mib(cl: &ProcCluster, i: usize) -> u64 {
    let p = cl
        .dir
        .join(format!("data/{}/vcodr.redb", cl.servers[i].name));
    std::fs::metadata(p).map(|m| m.len() >> 20).unwrap_or(0)
}

// ---------------------------------------------------------------------------
// R1. One monitoring batch just below the edge frame cap was a poison pill:
//     its `Append` was a few dozen bytes larger than the peer link's frame
//     cap, could not be sent, ever, and replication stopped for good (the
//     dialler tore the link down and resent forever; writes timed out; the
//     standby was never counted lost, its heartbeat appends got through).
//     Now a sample is at most `monitoring.max_sample_bytes` and a batch at
//     most one entry's worth (`max_batch_bytes / 2`), so whatever is taken
//     fits an `Append`. The test makes the bounds as tight as the settings
//     allow (`max_frame_bytes = 2 × max_batch_bytes`, the largest
//     `max_sample_bytes`): the poison pill and a batch of many legal samples
//     are refused naming their limit; the largest batch taken replicates.
// ---------------------------------------------------------------------------

const FRAME: usize = 4 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_an_oversized_monitoring_batch_is_refused_and_replication_goes_on() {
    let batch_bytes = FRAME / 2; // the most limits.max_frame_bytes allows
    let sample_max = batch_bytes / 2; // max_sample_bytes at its upper bound
    let extra = format!(
        "{}\n[monitoring]\nmax_sample_bytes = {sample_max}\n\n[limits]\nmax_frame_bytes = {FRAME}\n",
        FAST_TIMERS.replace(
            "[replication]\n",
            &format!("[replication]\nmax_batch_bytes = {batch_bytes}\n")
        )
    );
    let mut cl = pair("vcodr-review-r1", &extra).await;
    cl.client(A)
        .call("configuration/put", json!({"key": "before", "value": 1}))
        .await
        .expect("replication works before the attack");
    let downs_before = [A, B].map(|i| throttled_count(&cl.servers[i].log, "peer_link_down"));

    // The attacker: one stolen edge certificate, one monitoring batch with
    // one sample as large as the edge link's frame cap allows.
    let edge = stolen(&cl, "edge-stolen", CertRole::Edge);
    let (_t, link) = edge_link(&edge, &cl.servers[A].edge, FRAME).await;
    let mut payload = FRAME - 24;
    let msg = loop {
        let m = EdgeMsg::Monitoring {
            samples: vec![Sample {
                seq: 1,
                payload: vec![b'x'; payload],
            }],
        };
        if vcodr_core::codec::encode_frame(&m, FRAME).is_ok() {
            break m;
        }
        payload -= 4;
    };
    eprintln!("R1: one sample of {payload} bytes (edge frame cap {FRAME})");
    let before = cl.client(A).status().await.unwrap()["replication"]["lastIndex"]
        .as_u64()
        .unwrap();
    let r = tokio::time::timeout(T, link.request(&msg))
        .await
        .expect("answered in time")
        .unwrap();
    let why = refusal(&r);
    eprintln!("R1: the poison pill: {why}");
    assert!(
        why.contains("monitoring.max_sample_bytes") && why.contains(&format!("({sample_max})")),
        "{why}"
    );

    // The same bytes as samples each within the limit: refused as a batch.
    let samples: Vec<Sample> = (1..=3)
        .map(|seq| Sample {
            seq,
            payload: vec![b'y'; sample_max],
        })
        .collect();
    let r = link
        .request(&EdgeMsg::Monitoring { samples })
        .await
        .unwrap();
    let why = refusal(&r);
    eprintln!("R1: three samples at the sample limit: {why}");
    assert!(
        why.contains(&format!(
            "above the {} bytes one batch may hold",
            batch_bytes / 2
        )),
        "{why}"
    );
    let s = cl.client(A).status().await.unwrap();
    assert_eq!(
        s["replication"]["lastIndex"].as_u64(),
        Some(before),
        "nothing refused reached the log"
    );

    // The largest batch the server takes (a sample's overhead is 10 bytes)
    // is acknowledged, that is committed with the standby.
    let largest = EdgeMsg::Monitoring {
        samples: vec![Sample {
            seq: 1,
            payload: vec![b'z'; batch_bytes / 2 - 10],
        }],
    };
    let r = tokio::time::timeout(T, link.request(&largest))
        .await
        .expect("answered in time")
        .unwrap();
    assert!(
        matches!(r, ServerMsg::MonitoringAck { up_to_seq: 1, .. }),
        "{r:?}"
    );
    let s = cl
        .wait_status(A, "the standby past the largest batch", T, |s| {
            let r = &s["replication"];
            r["lastIndex"].as_u64() > Some(before) && r["standbyAckedIndex"] == r["lastIndex"]
        })
        .await
        .unwrap();
    eprintln!(
        "R1: A lastIndex {} standbyAckedIndex {}",
        s["replication"]["lastIndex"], s["replication"]["standbyAckedIndex"]
    );

    // Operator writes keep being acknowledged with the standby.
    for k in 0..5 {
        let t0 = Instant::now();
        cl.client(A)
            .call(
                "configuration/put",
                json!({"key": format!("after-{k}"), "value": k}),
            )
            .await
            .unwrap_or_else(|e| panic!("write {k} after the attack: {e:#}"));
        eprintln!(
            "R1: write {k} after the attack acknowledged in {:?}",
            t0.elapsed()
        );
    }
    let s = cl.client(A).status().await.unwrap();
    assert_eq!(s["role"], "ACTIVE");
    assert_eq!(s["drState"], "STANDBY_RUNNING");
    assert_eq!(
        s["replication"]["standbyAckedIndex"], s["replication"]["lastIndex"],
        "{s}"
    );
    let m = metrics(&cl, A).await;
    let dropped = metric(&m, "vcodr_peer_messages_dropped_total");
    eprintln!("R1: a's vcodr_peer_messages_dropped_total {dropped:?}");
    assert_eq!(dropped, Some(0.0), "a peer message did not fit its frame");

    // No peer link churn: not one `peer link down` since the attack, on
    // either server. They are throttled: with none before the attack, the
    // first after it would be logged at once; else wait for the summaries.
    tokio::time::sleep(if downs_before == [0, 0] {
        Duration::from_secs(2)
    } else {
        THROTTLE_SETTLE
    })
    .await;
    let downs = [A, B].map(|i| throttled_count(&cl.servers[i].log, "peer_link_down"));
    eprintln!("R1: `peer_link_down` occurrences a, b: before {downs_before:?}, after {downs:?}");
    assert_eq!(
        downs, downs_before,
        "the peer link went down after the attack"
    );
    // The count sees these lines at all: each server's link to the other came up.
    let ups = [A, B].map(|i| throttled_count(&cl.servers[i].log, "peer_link_up"));
    eprintln!("R1: `peer_link_up` occurrences a, b: {ups:?}");
    assert!(
        ups.iter().all(|n| *n >= 1),
        "no `peer_link_up` seen: {ups:?}"
    );
    drop(link);
    cl.stop_all();
    let _ = std::fs::remove_dir_all(&cl.dir);
}

// ---------------------------------------------------------------------------
// R2. Monitoring samples had no size or rate bound on the server: one edge
//     certificate grew both servers' memory (the in-memory log window kept
//     20,000 entries whatever their size) and disk (samples were kept
//     forever): 24 batches of 8 MiB took both from 11 MiB to ~1 GiB RSS and
//     ~1 GiB of storage. Now, with the default `[monitoring]` and
//     `[replication]` settings (FAST_TIMERS only shortens peer failure
//     detection, for pairing): a sample above 4096 bytes is refused, a
//     client's rate is 256 KiB/s (a bucket of one 512 KiB batch), and a
//     client keeps at most 10,000 stored samples. The bound this test holds
//     both servers to: +64 MiB of RSS and +64 MiB of storage.
// ---------------------------------------------------------------------------

const R2_BOUND_MIB: u64 = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2_one_edge_certificate_cannot_grow_the_servers_memory_or_disk() {
    let mut cl = pair("vcodr-review-r2", FAST_TIMERS).await;
    let rss0 = [cl.rss_kib(A).unwrap(), cl.rss_kib(B).unwrap()];
    let du0 = [storage_mib(&cl, A), storage_mib(&cl, B)];
    let defaults = ServerConfig::default();
    let edge = stolen(&cl, "edge-stolen", CertRole::Edge);
    let (_t, link) = edge_link(&edge, &cl.servers[A].edge, 16 * 1024 * 1024).await;

    // The reviewer's flood: 24 batches of one 8 MiB sample each.
    const BATCHES: u64 = 24;
    const BYTES: usize = 8 * 1024 * 1024;
    let t0 = Instant::now();
    for seq in 1..=BATCHES {
        let m = EdgeMsg::Monitoring {
            samples: vec![Sample {
                seq,
                payload: vec![(seq % 251) as u8; BYTES],
            }],
        };
        let r = link.request(&m).await.unwrap();
        let why = refusal(&r);
        assert!(
            why.contains("above monitoring.max_sample_bytes (4096)"),
            "{why}"
        );
    }
    eprintln!(
        "R2: {BATCHES} batches of {} MiB refused in {:?}",
        BYTES >> 20,
        t0.elapsed()
    );

    // Retention: one batch of 20,000 small samples (within the batch bound)
    // is taken, and at most `retain_samples_per_client` of them stay stored
    // (the active answers `monitoring/getSummary`; the standby's storage is
    // bounded below).
    const SMALL: u64 = 20_000;
    let samples: Vec<Sample> = (1..=SMALL)
        .map(|seq| Sample {
            seq,
            payload: seq.to_le_bytes().repeat(2),
        })
        .collect();
    let r = link
        .request(&EdgeMsg::Monitoring { samples })
        .await
        .unwrap();
    assert!(
        matches!(
            r,
            ServerMsg::MonitoringAck {
                up_to_seq: SMALL,
                ..
            }
        ),
        "{r:?}"
    );
    let retain = defaults.retain_samples_per_client;
    let deadline = Instant::now() + T;
    loop {
        let s = cl
            .client(A)
            .call("monitoring/getSummary", json!({}))
            .await
            .unwrap();
        let row = s["clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["clientId"] == "edge-stolen")
            .cloned()
            .unwrap_or(Value::Null);
        if row["maxSeq"] == SMALL && row["samples"].as_u64() <= Some(retain) {
            eprintln!("R2: a stores {} of the {SMALL} samples", row["samples"]);
            break;
        }
        assert!(Instant::now() < deadline, "retention not applied: {row}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A flood that keeps every limit but the rate: batches of 4 KiB samples
    // as large as a batch may be, back to back for a few seconds.
    let per_batch = defaults.max_sample_batch_bytes() / (defaults.max_sample_bytes + 10);
    let batch_len = per_batch * (defaults.max_sample_bytes + 10);
    let mut seq = SMALL;
    let (mut acked, mut refused) = (0u64, 0u64);
    const FLOOD: Duration = Duration::from_secs(6);
    let t0 = Instant::now();
    while t0.elapsed() < FLOOD {
        let samples: Vec<Sample> = (0..per_batch)
            .map(|_| {
                seq += 1;
                Sample {
                    seq,
                    payload: vec![(seq % 251) as u8; defaults.max_sample_bytes],
                }
            })
            .collect();
        match link
            .request(&EdgeMsg::Monitoring { samples })
            .await
            .unwrap()
        {
            ServerMsg::MonitoringAck { .. } => acked += 1,
            r => {
                let why = refusal(&r);
                assert!(why.contains("monitoring.max_sample_bytes_per_s"), "{why}");
                refused += 1;
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    // What the bucket lets through: what is left of one batch, plus the rate.
    let allowed =
        1 + ((secs * defaults.max_sample_bytes_per_s as f64) / batch_len as f64).ceil() as u64;
    eprintln!(
        "R2: {secs:.1} s of {} KiB batches: {acked} acknowledged (at most {allowed} allowed), {refused} refused",
        batch_len >> 10
    );
    assert!(acked <= allowed, "{acked} batches taken, above the rate");
    assert!(refused > acked, "the flood was not refused: {refused}");

    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = [cl.rss_kib(A).unwrap(), cl.rss_kib(B).unwrap()];
    let du1 = [storage_mib(&cl, A), storage_mib(&cl, B)];
    eprintln!(
        "R2: RSS a {} -> {} MiB, b {} -> {} MiB; storage a {} -> {} MiB, b {} -> {} MiB",
        rss0[0] >> 10,
        rss1[0] >> 10,
        rss0[1] >> 10,
        rss1[1] >> 10,
        du0[0],
        du1[0],
        du0[1],
        du1[1]
    );
    for i in [A, B] {
        let grew = rss1[i].saturating_sub(rss0[i]) >> 10;
        assert!(
            grew <= R2_BOUND_MIB,
            "{}: RSS grew by {grew} MiB",
            cl.servers[i].name
        );
        let grew = du1[i].saturating_sub(du0[i]);
        assert!(
            grew <= R2_BOUND_MIB,
            "{}: storage grew by {grew} MiB",
            cl.servers[i].name
        );
    }
    cl.client(A)
        .call("configuration/put", json!({"key": "after", "value": 1}))
        .await
        .expect("operator writes still acknowledged");
    cl.stop_all();
    let _ = std::fs::remove_dir_all(&cl.dir);
}

// ---------------------------------------------------------------------------
// R3. The admin port took a permit per *connection* (not per request), before
//     the TLS handshake, held for the connection's life, with no header-read
//     or idle timeout: `max_admin_requests` (256) idle TLS connections from
//     anyone who can reach admin_listen (no token, no certificate) locked
//     operators out of everything, /healthz and promotion included. Fixed by
//     issue 11 (permits per request, handshake/header/idle timeouts, a
//     connection cap); `operability.rs` covers it in depth (400 idle and 20
//     half-sent connections, their timeouts and metrics). Here only the
//     reviewer's scenario: while the 256 connections are held, a fresh
//     operator's /healthz and an RPC on the standby answer promptly.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_idle_tls_connections_without_a_token_do_not_lock_the_admin_api() {
    let mut cl = pair("vcodr-review-r3", FAST_TIMERS).await;
    let url = cl.servers[B].url();
    let operator =
        || vcodr_server::tools::ctl::Client::from_files(&url, &cl.token_file, None).unwrap();
    let healthz = |c: vcodr_server::tools::ctl::Client| async move {
        tokio::time::timeout(Duration::from_secs(5), c.get("/healthz")).await
    };
    assert!(matches!(healthz(operator()).await, Ok(Ok((200, _)))));
    // The attacker: TLS to the admin port (the CA certificate is public;
    // any client would do with a verifier that accepts anything), then silence.
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for c in rustls_pki_types::CertificateDer::pem_file_iter(cl.certs.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let mut held = Vec::new();
    const PERMITS: usize = 256; // limits.max_admin_requests, the default
    let mut stalled = 0;
    for _ in 0..PERMITS {
        let tcp = tokio::net::TcpStream::connect(&cl.servers[B].admin)
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        match tokio::time::timeout(Duration::from_secs(2), tls.connect(name, tcp)).await {
            Ok(c) => held.push(c.unwrap()),
            Err(_) => {
                stalled += 1;
                break;
            }
        }
    }
    eprintln!(
        "R3: {} idle TLS connections open to b's admin port ({stalled} handshake left waiting)",
        held.len()
    );
    assert_eq!(held.len(), PERMITS, "a handshake waited for a permit");
    // B is the standby: in a disaster the operator must reach it to promote.
    let t0 = Instant::now();
    let r = healthz(operator()).await;
    eprintln!(
        "R3: a fresh operator's GET /healthz: {r:?} in {:?}",
        t0.elapsed()
    );
    assert!(matches!(r, Ok(Ok((200, _)))), "{r:?}");
    let t0 = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        operator().call("disasterRecovery/getReplicationStatus", json!({})),
    )
    .await;
    eprintln!(
        "R3: getReplicationStatus answered in {:?}: role {}",
        t0.elapsed(),
        r.as_ref()
            .ok()
            .and_then(|r| r.as_ref().ok())
            .map_or(Value::Null, |s| s["role"].clone())
    );
    assert!(matches!(&r, Ok(Ok(s)) if s["role"] == "STANDBY"), "{r:?}");
    drop(held);
    cl.stop_all();
    let _ = std::fs::remove_dir_all(&cl.dir);
}

// ---------------------------------------------------------------------------
// R4. The rejected-proof cache was keyed by FNV-1a-64, which is not collision
//     resistant. Knowing a genuine proof (it is in every heartbeat reply of
//     the promoted server), the attacker computed, in milliseconds, a bogus
//     "signature" whose digest equalled the genuine proof's, and relayed that
//     forgery to the old active first. The old active recorded the digest as
//     forged; the genuine proof, relayed by every honest edge, was then
//     refused unchecked ("the same forged proof was refused before"), and
//     every honest edge relaying it was MARKED — durably (the contact table is
//     saved) — so that its proofs were never checked again, even after the
//     cache was gone (restart). Fencing through edges was off for good: with
//     the peer link cut, the old active kept acknowledging writes (degrade)
//     while the promoted server did too. Two writers.
//
//     Now forgeries are remembered whole and compared whole, and a marked
//     client's proofs are verified again every PROOF_RECHECK_MS. The same
//     forgery (it still collides under the old digest: FNV was unsafe for
//     this) marks only the attacker; the honest edges fence the old active,
//     are not marked, and no write is acknowledged on both servers, also
//     after the old active restarts.
// ---------------------------------------------------------------------------

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME);
    }
    h
}

/// 32 bytes `s` with `fnv(start, s) == target` (an FNV-1a-64 second preimage).
///
/// Each byte can set the low byte of the state before its multiplication to
/// any value `c`, so the final state is `(start - l0)·P^n + Σ g_i(c_i)` with
/// `g_i(c) = c·P^(n-i+1) - f(c)·P^(n-i)`, `f(c) = c·0xb3 mod 256`: a modular
/// subset sum over 32 independent byte choices, solved with Wagner's
/// generalized-birthday tree (16 lists of 2^16, four levels of 16 bits).
fn fnv_second_preimage(start: u64, target: u64) -> Vec<u8> {
    const N: usize = 32;
    let pw = |k: usize| (0..k).fold(1u64, |a, _| a.wrapping_mul(FNV_PRIME));
    let f = |c: u64| (c.wrapping_mul(0xb3)) & 0xff;
    let g = |i: usize, c: u64| -> u64 {
        // i in 1..=N
        let up = c.wrapping_mul(pw(N - i + 1));
        if i < N {
            up.wrapping_sub(f(c).wrapping_mul(pw(N - i)))
        } else {
            up
        }
    };
    let rest = target.wrapping_sub((start.wrapping_sub(start & 0xff)).wrapping_mul(pw(N)));
    // Level 0: 16 lists of (value, code = c_a << 8 | c_b).
    let mut level: Vec<Vec<(u64, u32, u32)>> = (0..16)
        .map(|j| {
            let (ia, ib) = (2 * j + 1, 2 * j + 2);
            let ga: Vec<u64> = (0..256).map(|c| g(ia, c)).collect();
            let gb: Vec<u64> = (0..256).map(|c| g(ib, c)).collect();
            let mut v = Vec::with_capacity(65536);
            for a in 0..256u32 {
                for b in 0..256u32 {
                    let mut x = ga[a as usize].wrapping_add(gb[b as usize]);
                    if j == 15 {
                        x = x.wrapping_sub(rest);
                    }
                    v.push((x, a, b));
                }
            }
            v
        })
        .collect();
    let mut tree = vec![level.clone()];
    for lvl in 0..4 {
        let lo = 16 * lvl;
        let key = |v: u64| ((v >> lo) & 0xffff) as usize;
        let mut next = Vec::new();
        for pair in level.chunks(2) {
            let (l, r) = (&pair[0], &pair[1]);
            let mut buckets: Vec<Vec<u32>> = vec![Vec::new(); 65536];
            for (ri, e) in r.iter().enumerate() {
                buckets[key(e.0)].push(ri as u32);
            }
            let mut out = Vec::new();
            'l: for (li, e) in l.iter().enumerate() {
                let want = (0x10000 - key(e.0)) & 0xffff;
                for &ri in &buckets[want] {
                    out.push((e.0.wrapping_add(r[ri as usize].0), li as u32, ri));
                    if out.len() >= 1 << 17 {
                        break 'l;
                    }
                }
            }
            next.push(out);
        }
        tree.push(next.clone());
        level = next;
    }
    let root = level[0]
        .first()
        .copied()
        .expect("a solution (expected ~2^16)");
    assert_eq!(root.0, 0);
    // Walk down to the 16 leaves: leaf j holds (c_{2j+1}, c_{2j+2}).
    let mut cs = vec![0u64; N];
    /// One level of the tree: per list, its `(hash, left, right)` entries.
    type Level = Vec<Vec<(u64, u32, u32)>>;
    fn walk(tree: &[Level], lvl: usize, list: usize, idx: u32, cs: &mut [u64]) {
        let e = tree[lvl][list][idx as usize];
        if lvl == 0 {
            cs[2 * list] = u64::from(e.1);
            cs[2 * list + 1] = u64::from(e.2);
        } else {
            walk(tree, lvl - 1, 2 * list, e.1, cs);
            walk(tree, lvl - 1, 2 * list + 1, e.2, cs);
        }
    }
    walk(&tree, 4, 0, 0, &mut cs);
    let mut h = start;
    let mut out = Vec::with_capacity(N);
    for c in cs {
        let b = ((h & 0xff) ^ c) as u8;
        h = (h ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        out.push(b);
    }
    assert_eq!(h, target, "second preimage");
    out
}

/// A heartbeat of `client` whose view claims `epochs` (a, b) for the pair.
fn heartbeat(
    client: &str,
    pair_id: Option<PairId>,
    addrs: [&str; 2],
    roles: [Role; 2],
    epochs: [Epoch; 2],
    proof: Option<Arc<EpochProof>>,
) -> EdgeMsg {
    let view = |i: usize| ViewEntry {
        address: addrs[i].into(),
        role: Some(roles[i]),
        epoch: epochs[i],
        pair_id,
        last_response_ms: Some(1),
    };
    EdgeMsg::Heartbeat(Heartbeat {
        client_id: client.into(),
        client_type: ClientType::Edge,
        seq: 1,
        view: [view(0), view(1)],
        following: None,
        config_epoch: 0,
        config_version: 0,
        cached_samples: 0,
        dropped_samples: 0,
        proof,
    })
}

async fn reply_of(link: &Connection<EdgeLink>, msg: &EdgeMsg) -> HeartbeatReply {
    match link.request_datagram(msg).await.unwrap() {
        ServerMsg::HeartbeatReply(r) => r,
        other => panic!("{other:?}"),
    }
}

/// A pair whose peer link runs through proxies the test can cut.
async fn cuttable_pair(prefix: &str) -> (ProcCluster, UdpProxy, UdpProxy) {
    let dir = temp_dir(prefix).unwrap();
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
    (cl, pa, pb)
}

async fn contact(cl: &ProcCluster, i: usize, id: &str) -> Value {
    let st = cl
        .client(i)
        .call(
            "disasterRecovery/getReplicationStatus",
            json!({"with": ["clientContact"]}),
        )
        .await
        .unwrap();
    st["clientContact"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_a_digest_collision_no_longer_disables_fencing_through_edges() {
    let (mut cl, pa, pb) = cuttable_pair("vcodr-review-r4").await;
    let s = cl.client(A).status().await.unwrap();
    let pair_id = Some(hex(&s["pairId"]));
    let (ea, eb) = (cl.servers[A].edge.clone(), cl.servers[B].edge.clone());
    let attacker = stolen(&cl, "edge-stolen", CertRole::Edge);
    let (_ta, to_a) = edge_link(&attacker, &ea, 64 * 1024).await;
    let (_tb, to_b) = edge_link(&attacker, &eb, 64 * 1024).await;

    // Disaster: the peer link is cut; the operator promotes b.
    pa.cut();
    pb.cut();
    cl.wait_state(B, "STANDBY", "FAILURE_GET_ACTIVE_STATUS", T)
        .await
        .unwrap();
    cl.client(B)
        .call("disasterRecovery/promoteStandbyToActive", json!({}))
        .await
        .unwrap();
    let promoted = Instant::now();

    // The attacker heartbeats b (it may do so every millisecond) and gets
    // the proof (once the promotion is durable) ...
    let hb = heartbeat(
        "edge-stolen",
        pair_id,
        [&ea, &eb],
        [Role::Active, Role::Standby],
        [1, 1],
        None,
    );
    let deadline = Instant::now() + T;
    let genuine = loop {
        if let Some(p) = reply_of(&to_b, &hb).await.proof {
            break p;
        }
        assert!(Instant::now() < deadline, "b never handed out its proof");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(genuine.claim.epoch, 2);
    // ... and forges a "signature" with the same FNV digest (the key of the
    // old rejected-proof cache: FNV-1a-64 over the signed bytes and the
    // signature, `EpochProof::digest`).
    let t0 = Instant::now();
    let mut prefix = genuine.claim.signed_bytes();
    prefix.extend_from_slice(&[0x04, 0x03]);
    let old_key = |p: &EpochProof| {
        let h = fnv(FNV_OFFSET, &p.claim.signed_bytes());
        fnv(h, &p.signature)
    };
    let tail = fnv_second_preimage(fnv(FNV_OFFSET, &prefix), old_key(&genuine));
    let mut signature = vec![0x04, 0x03];
    signature.extend_from_slice(&tail);
    let forged = EpochProof {
        claim: genuine.claim.clone(),
        signature,
    };
    assert_eq!(
        old_key(&forged),
        old_key(&genuine),
        "the forgery collides under the old cache key"
    );
    assert_ne!(forged, *genuine);
    let compute = t0.elapsed();
    let r = reply_of(
        &to_a,
        &heartbeat(
            "edge-stolen",
            pair_id,
            [&ea, &eb],
            [Role::Active, Role::Standalone],
            [1, 2],
            Some(Arc::new(forged)),
        ),
    )
    .await;
    eprintln!(
        "R4: forgery computed in {compute:?}; delivered to a {:?} after the promotion (a answered {} / epoch {})",
        promoted.elapsed(),
        r.role,
        r.epoch
    );
    assert_eq!(r.role, Role::Active, "the forgery fenced nobody");
    // The honest fleet now relays the genuine proof to a (they start after
    // the forgery: the attacker won the race the reviewer described).
    let ca = CertificateAuthority::load(&cl.certs).unwrap();
    let sim = EdgeSim::start(
        &ca,
        SimSettings {
            servers: [ea.clone(), eb.clone()],
            count: 5,
            gateway_every: 0,
            heartbeat_interval_ms: 1_000,
            sample_interval_ms: 0,
            ..SimSettings::default()
        },
    )
    .await
    .unwrap();
    let t0 = Instant::now();
    let sa = cl.wait_state(A, "ZOMBIE", "ZOMBIE", T).await.unwrap();
    eprintln!(
        "R4: a fenced by the honest edges {:?} after they started (fencedBy {})",
        t0.elapsed(),
        sa["fencedBy"]
    );
    // Only the attacker is marked.
    let marks = |cl: &ProcCluster| {
        let cl = cl.client(A).clone();
        async move {
            let st = cl
                .call(
                    "disasterRecovery/getReplicationStatus",
                    json!({"with": ["clientContact"]}),
                )
                .await
                .unwrap();
            st["clientContact"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["id"].as_str().unwrap().to_string(),
                        c["forgedEpochClaims"].as_u64().unwrap(),
                    )
                })
                .collect::<Vec<(String, u64)>>()
        }
    };
    let check_marks = |rows: &[(String, u64)], when: &str| {
        eprintln!("R4: {when}, a's contact table (id, forgedEpochClaims): {rows:?}");
        let honest: Vec<_> = rows.iter().filter(|(id, _)| id != "edge-stolen").collect();
        assert_eq!(honest.len(), 5, "{rows:?}");
        assert!(
            honest.iter().all(|(_, n)| *n == 0),
            "honest edges marked as forgers: {rows:?}"
        );
        assert!(
            rows.iter().any(|(id, n)| id == "edge-stolen" && *n > 0),
            "the forgery was not counted: {rows:?}"
        );
    };
    // Let every honest edge relay the proof a few times to the zombie.
    tokio::time::sleep(Duration::from_secs(3)).await;
    check_marks(&marks(&cl).await, "fenced");
    // One writer: a refuses, b acknowledges.
    let wa = cl
        .client(A)
        .call("configuration/put", json!({"key": "split", "value": "a"}))
        .await;
    let wb = cl
        .client(B)
        .call("configuration/put", json!({"key": "split", "value": "b"}))
        .await;
    eprintln!("R4: write on a: {wa:?}\nR4: write on b: {wb:?}");
    assert!(wa.is_err(), "the old active acknowledged a write: {wa:?}");
    assert!(wb.is_ok(), "{wb:?}");
    // After a restart of a (the cache of forgeries is empty again), a is
    // (still or again) fenced and the honest edges are still unmarked.
    tokio::time::sleep(Duration::from_millis(1_500)).await; // contact_save_interval
    cl.stop(A).unwrap();
    cl.start(A).unwrap();
    cl.wait_state(A, "ZOMBIE", "ZOMBIE", T).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sa = cl.client(A).status().await.unwrap();
    eprintln!(
        "R4: after a's restart and 3 s of honest heartbeats: a is {} / {}",
        sa["role"], sa["drState"]
    );
    assert_eq!(sa["role"], "ZOMBIE", "{sa}");
    check_marks(&marks(&cl).await, "after a's restart");
    let wa = cl
        .client(A)
        .call("configuration/put", json!({"key": "split", "value": "a2"}))
        .await;
    assert!(wa.is_err(), "the old active acknowledged a write: {wa:?}");
    sim.stop().await;
    cl.stop_all();
    let _ = std::fs::remove_dir_all(&cl.dir);
}

// ---------------------------------------------------------------------------
// R5. ECDSA signatures are malleable: (r, s) and (r, n - s) both verify. A
//     zombie kept the genuine proof and short-circuited only on that exact
//     value; the malleated twin is a *valid* proof, so it was verified on
//     every heartbeat (one P-256 verification each, ~71 µs) and its relayer
//     was never marked. Now a proof of the claim the server already
//     verified is not verified again, whatever its signature: relaying the
//     twin costs what relaying the held proof costs, and is not a forgery.
// ---------------------------------------------------------------------------

/// The order of P-256.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// `[0x04 0x03][DER (r, s)]` -> `[0x04 0x03][DER (r, n - s)]`.
fn malleate_p256(sig: &[u8]) -> Vec<u8> {
    assert_eq!(&sig[..2], &[0x04, 0x03], "ECDSA P-256 SHA-256");
    let der = &sig[2..];
    assert_eq!(der[0], 0x30);
    let mut i = 2;
    assert_eq!(der[i], 0x02);
    let rlen = der[i + 1] as usize;
    let r = der[i + 2..i + 2 + rlen].to_vec();
    i += 2 + rlen;
    assert_eq!(der[i], 0x02);
    let slen = der[i + 1] as usize;
    let s = &der[i + 2..i + 2 + slen];
    let s = &s[s.len().saturating_sub(32)..];
    let mut s32 = [0u8; 32];
    s32[32 - s.len()..].copy_from_slice(s);
    let mut ns = [0u8; 32];
    let mut borrow = 0i16;
    for k in (0..32).rev() {
        let mut d = i16::from(P256_N[k]) - i16::from(s32[k]) - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        ns[k] = d as u8;
    }
    let mut ns: Vec<u8> = ns.iter().copied().skip_while(|b| *b == 0).collect();
    if ns[0] & 0x80 != 0 {
        ns.insert(0, 0);
    }
    let mut body = vec![0x02, r.len() as u8];
    body.extend_from_slice(&r);
    body.extend_from_slice(&[0x02, ns.len() as u8]);
    body.extend_from_slice(&ns);
    let mut out = vec![0x04, 0x03, 0x30, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r5_a_malleated_genuine_proof_costs_no_verification_and_is_no_forgery() {
    let (mut cl, pa, pb) = cuttable_pair("vcodr-review-r5").await;
    let s = cl.client(A).status().await.unwrap();
    let pair_id = Some(hex(&s["pairId"]));
    let (ea, eb) = (cl.servers[A].edge.clone(), cl.servers[B].edge.clone());
    pa.cut();
    pb.cut();
    cl.wait_state(B, "STANDBY", "FAILURE_GET_ACTIVE_STATUS", T)
        .await
        .unwrap();
    cl.client(B)
        .call("disasterRecovery/promoteStandbyToActive", json!({}))
        .await
        .unwrap();
    let attacker = stolen(&cl, "edge-stolen", CertRole::Edge);
    let (_ta, to_a) = edge_link(&attacker, &ea, 64 * 1024).await;
    let (_tb, to_b) = edge_link(&attacker, &eb, 64 * 1024).await;
    let view = |proof| {
        heartbeat(
            "edge-stolen",
            pair_id,
            [&ea, &eb],
            [Role::Zombie, Role::Standalone],
            [1, 2],
            proof,
        )
    };
    let deadline = Instant::now() + T;
    let genuine = loop {
        if let Some(p) = reply_of(&to_b, &view(None)).await.proof {
            break p;
        }
        assert!(Instant::now() < deadline, "b never handed out its proof");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The attacker itself relays the genuine proof: a is fenced (the genuine path).
    reply_of(&to_a, &view(Some(genuine.clone()))).await;
    cl.wait_state(A, "ZOMBIE", "ZOMBIE", T).await.unwrap();
    let twin = EpochProof {
        claim: genuine.claim.clone(),
        signature: malleate_p256(&genuine.signature),
    };
    assert_ne!(twin, *genuine);
    let b_keys = CertKeys::new(&TlsIdentity::load(&cl.certs, "b").unwrap()).unwrap();
    let keys = Keys::new(Arc::new(b_keys));
    assert!(
        keys.verify(keys.public_key(), &twin),
        "the twin verifies too"
    );
    // What one verification costs here (the best of a few rounds: the
    // machine is shared).
    let verify_us = (0..5)
        .map(|_| {
            let t0 = Instant::now();
            for _ in 0..100 {
                assert!(keys.verify(keys.public_key(), &twin));
            }
            t0.elapsed().as_secs_f64() * 1e6 / 100.0
        })
        .fold(f64::INFINITY, f64::min);
    let twin = Arc::new(twin);
    let forged_before = metric(&metrics(&cl, A).await, "vcodr_forged_epoch_claims_total");

    let pid = cl.servers[A].pid().unwrap();
    const N: usize = 10_000;
    let run = |proof: Arc<EpochProof>| {
        let link = to_a.sender();
        let msg = view(Some(proof));
        async move {
            let t0 = Instant::now();
            let c0 = cpu_ticks(pid);
            let mut tasks = Vec::new();
            for _ in 0..8 {
                let (link, msg) = (link.clone(), msg.clone());
                tasks.push(tokio::spawn(async move {
                    let mut answered = 0;
                    for _ in 0..N / 8 {
                        if let Ok(ServerMsg::HeartbeatReply(r)) = link.request_datagram(&msg).await
                        {
                            assert_eq!(r.role, Role::Zombie);
                            answered += 1;
                        }
                    }
                    answered
                }));
            }
            let mut answered = 0;
            for t in tasks {
                answered += t.await.unwrap();
            }
            (cpu_ticks(pid) - c0, t0.elapsed(), answered)
        }
    };
    let (held_ticks, held_t, held_n) = run(genuine.clone()).await;
    let (twin_ticks, twin_t, twin_n) = run(twin.clone()).await;
    eprintln!(
        "R5: a (epoch {}) answered {held_n} and {twin_n} of {N} heartbeats",
        cl.client(A).status().await.unwrap()["epoch"]
    );
    // The server did the work measured: (almost) every heartbeat answered.
    assert!(held_n >= N * 9 / 10 && twin_n >= N * 9 / 10);
    let tick_ms = 10.0; // USER_HZ = 100
    let extra_us = (twin_ticks as f64 - held_ticks as f64) * tick_ms * 1000.0 / N as f64;
    eprintln!(
        "R5: {N} heartbeats relaying the held proof cost a {:.0} ms CPU ({held_t:?}); \
         relaying its malleated twin {:.0} ms CPU ({twin_t:?}): {extra_us:.1} µs more per heartbeat \
         (one verification costs {verify_us:.1} µs here)",
        held_ticks as f64 * tick_ms,
        twin_ticks as f64 * tick_ms,
    );
    // Within noise of the held proof: well under half a verification per
    // heartbeat (before the fix: one whole verification each).
    assert!(
        extra_us < verify_us / 2.0,
        "the twin costs {extra_us:.1} µs more per heartbeat (a verification is {verify_us:.1} µs)"
    );
    let c = contact(&cl, A, "edge-stolen").await;
    eprintln!(
        "R5: the attacker's row on a: forgedEpochClaims {}",
        c["forgedEpochClaims"]
    );
    assert_eq!(c["forgedEpochClaims"], 0, "the twin is no forgery");
    let forged_after = metric(&metrics(&cl, A).await, "vcodr_forged_epoch_claims_total");
    assert_eq!(forged_after, forged_before, "the twin counted as forged");
    let s = cl.client(A).status().await.unwrap();
    assert_eq!(s["role"], "ZOMBIE");
    cl.stop_all();
    let _ = std::fs::remove_dir_all(&cl.dir);
}

// ---------------------------------------------------------------------------
// R6. Edges take any server certificate for either server (ANY_SERVER_NAME)
//     and kept the highest-epoch proof of any reply, of any pair, unchecked:
//     ONE reply from whoever holds a server certificate of the deployment
//     and sits on an edge's path made it relay a bogus proof (of another
//     pair) forever instead of the genuine one (no fencing through it, and
//     it is marked as a forger). Now an edge keeps only a proof of the pair
//     the replying server says it is in: the genuine proof is learnt and
//     relayed.
//
//     Still possible, and accepted (docs/SECURITY.md, "out of scope": a
//     server certificate on the network path is a man in the middle): the
//     forged reply's own epoch (u64::MAX, as a writer) raises the edge's
//     `max_epoch_seen`, so it follows nobody (and applies no configuration)
//     until it restarts; and a forged reply that names the bogus proof's
//     pair as its own still gets that proof kept. Both are asserted below
//     as they are, so that a change in either is seen.
// ---------------------------------------------------------------------------

#[test]
fn r6_a_forged_reply_no_longer_makes_an_edge_relay_another_pairs_proof() {
    let (sa, sb) = ("a:7444".to_string(), "b:7444".to_string());
    let pair = Some(7u128);
    let reply = |pair_id, role, epoch, proof| {
        ServerMsg::HeartbeatReply(HeartbeatReply {
            seq: 0,
            role,
            dr_state: DrState::StandbyPromoted,
            epoch,
            pair_id,
            active_address: None,
            redirect: None,
            config_version: 0,
            proof,
        })
    };
    // A forged proof (a third server certificate on b's path).
    let bogus = Arc::new(EpochProof {
        claim: EpochClaim {
            pair_id: 999, // not even this pair
            epoch: u64::MAX,
            holder: 1,
            holder_name: "x".into(),
            holder_edge_address: "x:1".into(),
        },
        signature: vec![0; 8],
    });
    // The genuine servers: b promoted to epoch 2 with a real proof.
    let genuine = Arc::new(EpochProof {
        claim: EpochClaim {
            pair_id: 7,
            epoch: 2,
            holder: 2,
            holder_name: "b".into(),
            holder_edge_address: sb.clone(),
        },
        signature: vec![1; 8],
    });
    let run = |forged_reply_pair: Option<PairId>| {
        let mut e = Edge::new(
            EdgeConfig::new("edge-1", ClientType::Edge, [sa.clone(), sb.clone()]),
            0,
        );
        while e.poll_output().is_some() {}
        e.handle_input(
            1,
            EdgeInput::Reply {
                server: 1,
                msg: reply(
                    forged_reply_pair,
                    Role::Standalone,
                    u64::MAX,
                    Some(bogus.clone()),
                ),
            },
        );
        let mut relayed = Vec::new();
        for t in 2..50 {
            e.handle_input(
                t * 10,
                EdgeInput::Reply {
                    server: 1,
                    msg: reply(pair, Role::Standalone, 2, Some(genuine.clone())),
                },
            );
            e.handle_input(
                t * 10 + 1,
                EdgeInput::Reply {
                    server: 0,
                    msg: reply(pair, Role::Active, 1, None),
                },
            );
            e.handle_input(t * 10 + 5, EdgeInput::Timeout(EdgeTimer::Heartbeat));
            while let Some(out) = e.poll_output() {
                if let EdgeOutput::Send {
                    msg: EdgeMsg::Heartbeat(hb),
                    ..
                } = out
                {
                    relayed.push(hb.proof.clone());
                }
            }
        }
        (e, relayed)
    };

    // The forged reply says it is of this pair: its proof of pair 999 is dropped.
    let (e, relayed) = run(pair);
    eprintln!(
        "R6: after 48 genuine replies the edge relays the proof of epoch {:?} (pair {:?}), max_epoch_seen {}, follows {:?}",
        e.proof().map(|p| p.claim.epoch),
        e.proof().map(|p| p.claim.pair_id),
        e.max_epoch_seen(),
        e.following_address()
    );
    assert_eq!(e.proof(), Some(&*genuine), "the genuine proof is kept");
    assert!(!relayed.is_empty(), "the edge sent no heartbeat");
    assert!(
        relayed.iter().all(|p| p.as_deref() != Some(&*bogus)),
        "the bogus proof was relayed"
    );
    assert_eq!(
        relayed.last().unwrap().as_deref(),
        Some(&*genuine),
        "the genuine proof is relayed"
    );
    // Known limitation (on-path, out of scope): the forged epoch is believed
    // for following, until the edge restarts.
    assert_eq!(e.max_epoch_seen(), u64::MAX);
    assert_eq!(e.following(), None, "known limitation: follows nobody");

    // Known limitation (on-path, out of scope): a forged reply that names
    // pair 999 as its own gets its proof kept, and it outranks the genuine
    // one (servers refuse it: it is not of their pair, and count the edge's
    // claim of epoch 2 without a valid proof).
    let (e, relayed) = run(Some(999));
    eprintln!(
        "R6: with a forged reply naming pair 999 the edge relays the proof of pair {:?}",
        e.proof().map(|p| p.claim.pair_id)
    );
    assert_eq!(e.proof(), Some(&*bogus), "known limitation: kept");
    assert!(relayed.iter().all(|p| p.as_deref() == Some(&*bogus)));
}

// ---------------------------------------------------------------------------
// R7. Edge requests share the driver (one lock) with peer messages, with no
//     per-client share: one edge certificate pipelining heartbeats on its 4
//     links (the most it may hold) competes with replication and operator
//     calls. A measurement, not a finding; asserted with a generous bound:
//     during the flood every operator write is still acknowledged (with the
//     standby) within 5 s, and the pair stays healthy.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r7_operator_writes_go_on_during_a_heartbeat_flood_from_one_certificate() {
    let mut cl = pair("vcodr-review-r7", FAST_TIMERS).await;
    let s = cl.client(A).status().await.unwrap();
    let pair_id = Some(hex(&s["pairId"]));
    let (ea, eb) = (cl.servers[A].edge.clone(), cl.servers[B].edge.clone());
    let write_ms = |cl: &ProcCluster, k: usize| {
        let c = cl.client(A).clone();
        async move {
            let mut v = Vec::new();
            for i in 0..k {
                let t0 = Instant::now();
                let r = c
                    .call(
                        "configuration/put",
                        json!({"key": format!("w{i}"), "value": i}),
                    )
                    .await;
                v.push((t0.elapsed().as_secs_f64() * 1e3, r.is_ok()));
            }
            v
        }
    };
    let quiet = write_ms(&cl, 20).await;
    let attacker = stolen(&cl, "edge-stolen", CertRole::Edge);
    let mut links = Vec::new();
    for _ in 0..MAX_EDGE_LINKS_PER_CLIENT {
        links.push(edge_link(&attacker, &ea, 64 * 1024).await);
    }
    let msg = heartbeat(
        "edge-stolen",
        pair_id,
        [&ea, &eb],
        [Role::Active, Role::Standby],
        [1, 1],
        None,
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (_, link) in &links {
        for _ in 0..32 {
            let (l, m, stop, sent) = (link.sender(), msg.clone(), stop.clone(), sent.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = l.request_datagram(&m).await;
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }));
        }
    }
    let flood = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = write_ms(&cl, 20).await;
    let m1 = metrics(&cl, A).await;
    let hb1 = metric(&m1, "vcodr_heartbeats_total{client_type=\"EDGE\"}").unwrap_or(0.0);
    let rate = hb1 / flood.elapsed().as_secs_f64();
    let sa = cl.client(A).status().await.unwrap();
    let sb = cl.client(B).status().await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let p = |v: &[(f64, bool)]| {
        let mut x: Vec<f64> = v.iter().map(|a| a.0).collect();
        x.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (
            x[x.len() / 2],
            x[x.len() - 1],
            v.iter().filter(|a| !a.1).count(),
        )
    };
    eprintln!(
        "R7: writes quiet p50/max {:.1}/{:.1} ms ({} failed); under one certificate's flood ({rate:.0} hb/s) {:.1}/{:.1} ms ({} failed); \
         peer messages dropped {:?}",
        p(&quiet).0,
        p(&quiet).1,
        p(&quiet).2,
        p(&loaded).0,
        p(&loaded).1,
        p(&loaded).2,
        metric(&m1, "vcodr_peer_messages_dropped_total")
    );
    eprintln!(
        "R7: during the flood a is {} / {}, b is {} / {}",
        sa["role"], sa["drState"], sb["role"], sb["drState"]
    );
    assert!(hb1 > 0.0, "no flood");
    assert_eq!(p(&loaded).2, 0, "writes failed under the flood");
    assert!(
        p(&loaded).1 < 5_000.0,
        "a write took {:.0} ms",
        p(&loaded).1
    );
    assert_eq!(
        (&sa["role"], &sa["drState"]),
        (&json!("ACTIVE"), &json!("STANDBY_RUNNING"))
    );
    assert_eq!(
        (&sb["role"], &sb["drState"]),
        (&json!("STANDBY"), &json!("STANDBY_RUNNING"))
    );
    cl.stop_all();
    let _ = std::fs::remove_dir_all(&cl.dir);
}

// ---------------------------------------------------------------------------
// R8. A heartbeat may also travel on a stream, up to max_frame_bytes (16 MiB):
//     its view addresses and `following` were copied into the contact row
//     unbounded (a 15 MiB row, in every clientContact answer and the DR
//     page, and rewritten to disk every contact_save_interval). Now a
//     heartbeat reporting an address over 256 bytes is refused, and the
//     status stays small. (The reviewer also timed operator writes across
//     two contact saves of the huge row; with no row planted there is
//     nothing left to time.)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r8_a_heartbeat_with_a_huge_address_is_refused_and_the_status_stays_small() {
    let mut cl = pair("vcodr-review-r8", FAST_TIMERS).await;
    let s = cl.client(A).status().await.unwrap();
    let pair_id = Some(hex(&s["pairId"]));
    let (ea, eb) = (cl.servers[A].edge.clone(), cl.servers[B].edge.clone());
    let attacker = stolen(&cl, "edge-stolen", CertRole::Edge);
    let (_t, link) = edge_link(&attacker, &ea, 16 * 1024 * 1024).await;
    let honest = heartbeat(
        "edge-stolen",
        pair_id,
        [&ea, &eb],
        [Role::Active, Role::Standby],
        [1, 1],
        None,
    );
    let mut hb = honest.clone();
    if let EdgeMsg::Heartbeat(h) = &mut hb {
        h.following = Some("x".repeat(15 * 1024 * 1024));
    }
    let r = link.request(&hb).await.unwrap();
    let why = refusal(&r);
    eprintln!("R8: a 15 MiB `following`: {why}");
    assert!(why.contains("longer than 256 bytes"), "{why}");
    // The same through a view address, just over the limit.
    let mut hb = honest.clone();
    if let EdgeMsg::Heartbeat(h) = &mut hb {
        h.view[1].address = "y".repeat(vcodr_core::server::MAX_CLIENT_TEXT_BYTES + 1);
    }
    let r = link.request(&hb).await.unwrap();
    let why = refusal(&r);
    eprintln!(
        "R8: a view address of {} bytes: {why}",
        vcodr_core::server::MAX_CLIENT_TEXT_BYTES + 1
    );
    assert!(why.contains("longer than 256 bytes"), "{why}");
    // The link still serves a well-formed heartbeat.
    let r = link.request(&honest).await.unwrap();
    assert!(matches!(r, ServerMsg::HeartbeatReply(_)), "{r:?}");
    let t0 = Instant::now();
    let st = cl
        .client(A)
        .call(
            "disasterRecovery/getReplicationStatus",
            json!({"with": ["clientContact"]}),
        )
        .await
        .unwrap();
    let len = st.to_string().len();
    eprintln!(
        "R8: getReplicationStatus with clientContact is {len} bytes, took {:?}",
        t0.elapsed()
    );
    assert!(len < 64 * 1024, "{len} bytes");
    let row = contact(&cl, A, "edge-stolen").await;
    assert!(
        row.to_string().len() < 4 * 1024,
        "the attacker's row: {row}"
    );
    cl.client(A)
        .call("configuration/put", json!({"key": "after", "value": 1}))
        .await
        .expect("operator writes acknowledged");
    cl.stop_all();
    let _ = std::fs::remove_dir_all(&cl.dir);
}

// ---------------------------------------------------------------------------
// R9. There was no per-identity connection limit on the edge port: one edge
//     certificate opened 4,000 links (one UDP socket), each costing the
//     server a handshake and ~23 KiB. Now a server keeps at most
//     MAX_EDGE_LINKS_PER_CLIENT (4) links per client: a newer one closes the
//     oldest (counted in vcodr_edge_links_replaced_total), the server's
//     memory stays bounded, and the device itself still gets in (its newest
//     link is served).
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r9_one_edge_certificate_keeps_at_most_four_links_open() {
    let mut cl = pair("vcodr-review-r9", FAST_TIMERS).await;
    let s = cl.client(A).status().await.unwrap();
    let pair_id = Some(hex(&s["pairId"]));
    let rss0 = cl.rss_kib(A).unwrap();
    let attacker = stolen(&cl, "edge-stolen", CertRole::Edge);
    let settings = Settings {
        driver: vcodr_transport::QuicDriver::Hub,
        ..Settings::default()
    };
    let t = Arc::new(
        QuicTransport::<EdgeLink>::bind(addr("127.0.0.1:0"), attacker.clone(), settings).unwrap(),
    );
    const LINKS: usize = 4000;
    let to = addr(&cl.servers[A].edge);
    let t0 = Instant::now();
    let mut links = Vec::new();
    let mut failed = 0;
    for _ in 0..LINKS / 50 {
        let mut js = Vec::new();
        for _ in 0..50 {
            let t = t.clone();
            js.push(tokio::spawn(
                async move { t.connect(to, ANY_SERVER_NAME).await },
            ));
        }
        for j in js {
            match j.await.unwrap() {
                Ok(l) => links.push(l),
                Err(_) => failed += 1,
            }
        }
    }
    let opened = links.len();
    eprintln!(
        "R9: {opened} links opened from one certificate ({failed} failed) in {:?}",
        t0.elapsed()
    );
    // The server closes all but the newest few; it counts each it replaced.
    let deadline = Instant::now() + T;
    let (open, replaced) = loop {
        let open = links.iter().filter(|l| l.close_reason().is_none()).count();
        let replaced = metric(&metrics(&cl, A).await, "vcodr_edge_links_replaced_total")
            .unwrap_or(0.0) as usize;
        if open <= MAX_EDGE_LINKS_PER_CLIENT && replaced + MAX_EDGE_LINKS_PER_CLIENT >= opened {
            break (open, replaced);
        }
        assert!(
            Instant::now() < deadline,
            "still {open} links open, {replaced} replaced of {opened}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss1 = cl.rss_kib(A).unwrap();
    eprintln!(
        "R9: {open} still open on the attacker's side, vcodr_edge_links_replaced_total {replaced}; a's RSS {} -> {} MiB",
        rss0 >> 10,
        rss1 >> 10,
    );
    assert!(failed <= LINKS / 10, "{failed} handshakes failed");
    // Before the fix: ~23 KiB per open link, 90 MiB for 4,000.
    let grew = rss1.saturating_sub(rss0) >> 10;
    assert!(grew <= 32, "a's RSS grew by {grew} MiB");
    // The device itself (a new link with the same certificate) is served.
    let (_t2, link) = edge_link(&attacker, &cl.servers[A].edge, 64 * 1024).await;
    let hb = heartbeat(
        "edge-stolen",
        pair_id,
        [&cl.servers[A].edge, &cl.servers[B].edge],
        [Role::Active, Role::Standby],
        [1, 1],
        None,
    );
    let r = reply_of(&link, &hb).await;
    assert_eq!(r.role, Role::Active);
    cl.client(A).status().await.unwrap();
    drop(links);
    cl.stop_all();
    let _ = std::fs::remove_dir_all(&cl.dir);
}
