//! Operable under load and faults, on real processes (127.0.0.1, free
//! ports): the admin API stays usable while hundreds of idle or half-sent
//! connections are held; a full disk stops the server (fail-stop), which
//! recovers from disk at its restart; an out-of-range setting keeps
//! `vcodr serve` from starting. Every wait has a deadline; every process and
//! mount a test makes is removed by a guard, also on failure.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vcodr_server::tools::cluster::{metric, temp_dir, ProcCluster, FAST_TIMERS};
use vcodr_server::tools::ctl::{ApiError, Client};
use vcodr_testkit::Tmpfs;

const A: usize = 0;
const B: usize = 1;
const T: Duration = Duration::from_secs(30);

fn vcodr() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vcodr"))
}

/// Removes a test's directory when dropped (after its cluster, declared later, is gone).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TLS connector trusting the deployment CA, speaking HTTP/1.1.
fn connector(ca: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(c: &tokio_rustls::TlsConnector, addr: &str) -> Tls {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("127.0.0.1").unwrap();
    tokio::time::timeout(T, c.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake")
}

/// Waits until the server closes `s`; returns how long after `since`.
async fn closed_by_server(mut s: Tls, since: Instant) -> Duration {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return since.elapsed(),
            Ok(_) => {}
        }
    }
}

async fn metrics(c: &Client) -> String {
    let (code, text) = c.get("/metrics").await.expect("/metrics");
    assert_eq!(code, 200);
    text
}

/// A call answered within `limit`, for "promptly".
async fn within<F: std::future::Future>(limit: Duration, what: &str, f: F) -> F::Output {
    let t = Instant::now();
    let r = tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what} not answered within {limit:?}"));
    eprintln!("{what}: {:?}", t.elapsed());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_lock_no_one_out() {
    const IDLE: usize = 400;
    const HALF: usize = 20;
    const CAP: usize = 450;
    let idle_timeout = Duration::from_secs(8);
    let dir = TempDir(temp_dir("vcodr-admin-limits").unwrap());
    let extra = format!(
        "[limits]\nmax_admin_connections = {CAP}\nadmin_handshake_timeout_ms = 5000\n\
         admin_header_timeout_ms = 10000\nadmin_idle_timeout_ms = {}\n",
        idle_timeout.as_millis()
    );
    let mut cl = ProcCluster::create(vcodr(), &dir.0, &["a"], &extra).unwrap();
    cl.start(A).unwrap();
    let addr = cl.servers[A].admin.clone();
    let tls = connector(&cl.certs.join("ca.pem"));

    // 400 idle TLS connections (handshaken, not a byte of a request), and 20
    // that send half a request header and stop; each waits for its close.
    let mut held = tokio::task::JoinSet::new();
    for chunk in 0..(IDLE + HALF) / 20 {
        let mut opening = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (tls, addr) = (tls.clone(), addr.clone());
            opening.spawn(async move { tls_connect(&tls, &addr).await });
        }
        while let Some(s) = opening.join_next().await {
            let mut s = s.unwrap();
            let half = chunk >= IDLE / 20;
            if half {
                s.write_all(b"POST /portal/ HTTP/1.1\r\nHost: a\r\nContent-Type: appl")
                    .await
                    .unwrap();
                s.flush().await.unwrap();
            }
            let since = Instant::now();
            held.spawn(async move { (half, closed_by_server(s, since).await) });
        }
    }
    assert_eq!(held.len(), IDLE + HALF);

    // A fresh client is answered promptly: liveness, readiness, a JSON-RPC call.
    let fresh = cl.client(A).clone();
    let prompt = Duration::from_secs(3);
    let (code, body) = within(prompt, "/healthz", fresh.get("/healthz"))
        .await
        .unwrap();
    assert_eq!((code, body.trim()), (200, "ok a STANDALONE"));
    let (code, body) = within(prompt, "/readyz", fresh.get("/readyz"))
        .await
        .unwrap();
    assert_eq!(
        (code, body.trim()),
        (200, "ready a STANDALONE UNCONFIGURED: takes writes")
    );
    let put = fresh.call(
        "configuration/put",
        json!({"key": "while-held", "value": {"vlan": 1}}),
    );
    let r = within(prompt, "configuration/put", put).await.unwrap();
    assert_eq!(r["version"], 1);
    let m = metrics(&fresh).await;
    let open = metric(&m, "vcodr_admin_connections_open").unwrap();
    assert!(open >= (IDLE + HALF) as f64, "{open} open");
    assert!(m.contains("# HELP vcodr_admin_connections_refused_total "));

    // Over the cap, new connections are closed at once and counted.
    let refused_before = metric(&m, "vcodr_admin_connections_refused_total").unwrap();
    const EXTRA: usize = CAP - IDLE - HALF + 30;
    let mut knocking = tokio::task::JoinSet::new();
    for _ in 0..EXTRA {
        let addr = addr.clone();
        knocking.spawn(async move {
            let mut tcp = TcpStream::connect(&addr).await.unwrap();
            let mut b = [0u8; 16];
            match tokio::time::timeout(Duration::from_millis(1_000), tcp.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => None,
                Ok(Ok(n)) => panic!("{n} bytes before any TLS hello"),
                // Accepted: it waits for our TLS hello.
                Err(_) => Some(tcp),
            }
        });
    }
    let mut pending = Vec::new();
    let mut refused = 0u32;
    while let Some(r) = knocking.join_next().await {
        match r.unwrap() {
            Some(tcp) => pending.push(tcp),
            None => refused += 1,
        }
    }
    assert!(
        refused >= 20,
        "{refused} of {EXTRA} connections over the cap refused ({} accepted)",
        pending.len()
    );
    assert!(
        pending.len() + IDLE + HALF < CAP,
        "{} accepted beyond the cap",
        pending.len()
    );
    drop(pending);
    let deadline = Instant::now() + T;
    // Until the server has seen the pending ones go, our own connection
    // may be refused too (and counted).
    let mut ours_refused = 0u32;
    let counted = loop {
        match fresh.get("/metrics").await {
            Ok((200, m)) => {
                let n = metric(&m, "vcodr_admin_connections_refused_total").unwrap();
                if n - refused_before >= f64::from(refused) {
                    break n - refused_before;
                }
            }
            _ => ours_refused += 1,
        }
        assert!(Instant::now() < deadline, "refusals not counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        counted >= f64::from(refused) && counted <= f64::from(refused + ours_refused),
        "each refusal counted once: {counted} counted, {refused} + {ours_refused} seen"
    );

    // The held connections are closed once idle for the idle timeout (the
    // half-sent ones too: they received nothing more), not before.
    while let Some(r) = tokio::time::timeout(idle_timeout + T, held.join_next())
        .await
        .expect("held connections closed in time")
    {
        let (half, after) = r.unwrap();
        assert!(
            after >= idle_timeout - Duration::from_millis(200),
            "closed after {after:?} (half: {half}), before the idle timeout"
        );
        assert!(
            after <= idle_timeout + Duration::from_secs(10),
            "closed only after {after:?} (half: {half})"
        );
    }
    let deadline = Instant::now() + T;
    loop {
        let m = metrics(&fresh).await;
        let idle = metric(
            &m,
            "vcodr_admin_connections_timed_out_total{phase=\"idle\"}",
        )
        .unwrap();
        let header = metric(
            &m,
            "vcodr_admin_connections_timed_out_total{phase=\"header\"}",
        )
        .unwrap();
        let open = metric(&m, "vcodr_admin_connections_open").unwrap();
        if idle >= IDLE as f64 && idle + header >= (IDLE + HALF) as f64 && open <= 3.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timeouts not counted: idle {idle}, header {header}, open {open}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(&cl.servers[A].log).unwrap();
    let refusal_lines = log
        .lines()
        .filter(|l| l.contains("admin_connection_refused"))
        .count();
    // At most a first line and a summary per throttle interval (the burst
    // may straddle two), for 20 or more refusals.
    assert!(
        (1..=4).contains(&refusal_lines),
        "{refused} refusals are logged as counts per interval, not one line each: {refusal_lines} lines"
    );
    cl.stop_all();
}

fn api_error(e: &anyhow::Error) -> Option<&ApiError> {
    e.downcast_ref::<ApiError>()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_server_which_comes_back_with_every_acknowledged_write() {
    vcodr_testkit::require_root("mount a small tmpfs as a server's data_dir").unwrap();
    let dir = TempDir(temp_dir("vcodr-full-disk").unwrap());
    let data_a = dir.0.join("data/a");
    let disk = Tmpfs::mount(&data_a, "32m").unwrap();
    // Contact saves off this test's path: with the write-ahead log, write
    // commits touch redb durably only at checkpoints, so a contact save would
    // often be what meets the full disk first — and stop the server just the
    // same, but with no write in flight to answer, which is what this test
    // checks.
    let timers = FAST_TIMERS.replace(
        "contact_save_interval_ms = 1000",
        "contact_save_interval_ms = 3600000",
    );
    assert_ne!(timers, FAST_TIMERS, "the contact save interval is set");
    let mut cl = ProcCluster::create(vcodr(), &dir.0, &["a", "b"], &timers).unwrap();
    cl.start(A).unwrap();
    cl.start(B).unwrap();
    cl.pair(A, B, T).await.unwrap();
    let a = cl.client(A).clone();
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..20 {
        let k = format!("small/{i}");
        let r = a
            .call("configuration/put", json!({"key": k, "value": i}))
            .await
            .unwrap();
        acked.insert(k, r["version"].as_u64().unwrap());
    }

    // Eight writers, each with its own connection already open, so that
    // eight writes are in flight when the disk is full.
    let url = cl.servers[A].url();
    let mut writers = Vec::new();
    for j in 0..8 {
        let w = Client::from_files(&url, &cl.token_file, None).unwrap();
        let k = format!("warm/{j}");
        let r = w
            .call("configuration/put", json!({"key": k, "value": j}))
            .await;
        acked.insert(k, r.unwrap()["version"].as_u64().unwrap());
        writers.push(w);
    }

    // The disk fills up beside the storage file; then writes fail.
    let filler = data_a.join("filler");
    let t = Instant::now();
    let filled = disk.fill(&filler).unwrap();
    eprintln!("filled {filled} bytes in {:?}", t.elapsed());
    let big = Value::String("x".repeat(64 * 1024));
    let mut failures: Vec<(String, anyhow::Error)> = Vec::new();
    for round in 0..400 {
        let mut puts = tokio::task::JoinSet::new();
        for (j, w) in writers.iter().enumerate() {
            let (a, big) = (w.clone(), big.clone());
            let k = format!("big/{round}/{j}");
            puts.spawn(async move {
                let r = a
                    .call("configuration/put", json!({"key": k, "value": big}))
                    .await;
                (k, r)
            });
        }
        while let Some(r) = puts.join_next().await {
            match r.unwrap() {
                (k, Ok(v)) => {
                    acked.insert(k, v["version"].as_u64().unwrap());
                }
                (k, Err(e)) => failures.push((k, e)),
            }
        }
        if !failures.is_empty() {
            break;
        }
    }
    assert!(
        !failures.is_empty(),
        "writes kept succeeding on a full disk"
    );
    // The writes in flight at the failure are told the truth: outcome unknown.
    let unknown: Vec<&ApiError> = failures
        .iter()
        .filter_map(|(_, e)| api_error(e))
        .filter(|e| e.code == -32006)
        .collect();
    assert!(
        !unknown.is_empty(),
        "no in-flight write was answered outcome unknown: {failures:?}"
    );
    for e in &unknown {
        for says in [
            "outcome unknown",
            "may or may not be durable",
            "configuration/get after its restart",
        ] {
            assert!(e.message.contains(says), "{says:?} not in {e}");
        }
    }
    // Any other failure says it was not carried out, or is the exit itself.
    for (k, e) in &failures {
        if let Some(api) = api_error(e) {
            assert!(
                api.code == -32006 || api.message.starts_with("not carried out: storage failed"),
                "{k}: {api}"
            );
        }
    }
    for (k, e) in &failures {
        eprintln!("{k}: {e:#}");
    }
    eprintln!(
        "{} acknowledged, {} outcome unknown, {} other failures",
        acked.len(),
        unknown.len(),
        failures.len() - unknown.len()
    );

    // The process exits with the documented code; its log names the file and the OS error.
    assert_eq!(cl.wait_exit(A, T).unwrap(), Some(74));
    let log = std::fs::read_to_string(&cl.servers[A].log).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("storage commit failed"))
        .unwrap_or_else(|| panic!("no failed commit logged:\n{log}"));
    // The redb file or a write-ahead log segment, whichever hit the full disk.
    assert!(
        line.contains("vcodr.redb") || line.contains("/wal/"),
        "{line}"
    );
    assert!(line.contains("No space left on device"), "{line}");
    assert!(log.contains("exiting with code 74"), "{log}");

    // Space freed, the supervisor restarts it: it comes back in its role,
    // with every acknowledged write, on both servers.
    std::fs::remove_file(&filler).unwrap();
    cl.start(A).unwrap();
    cl.wait_state(A, "ACTIVE", "STANDBY_RUNNING", T)
        .await
        .unwrap();
    cl.wait_state(B, "STANDBY", "STANDBY_RUNNING", T)
        .await
        .unwrap();
    let (code, body) = a.get("/readyz").await.unwrap();
    assert_eq!(
        (code, body.trim()),
        (200, "ready a ACTIVE STANDBY_RUNNING: takes writes")
    );
    for (k, version) in &acked {
        let d = a
            .call("configuration/get", json!({"key": k}))
            .await
            .unwrap_or_else(|e| panic!("{k} acknowledged, then lost: {e:#}"));
        assert_eq!(d["version"].as_u64(), Some(*version), "{k}");
    }
    // Writes resume, and the standby has every acknowledged one too.
    let after = a
        .call("configuration/put", json!({"key": "after", "value": 1}))
        .await
        .unwrap();
    assert!(after["version"].as_u64().unwrap() > *acked.values().max().unwrap());
    let want = acked.len() as u64 + 1;
    cl.wait_status(B, "every acknowledged document", T, |s| {
        s["documents"].as_u64().is_some_and(|n| n >= want)
    })
    .await
    .unwrap();
    cl.stop_all();
    drop(cl);
    drop(disk);
}

/// Runs `vcodr serve --config <config>` and waits (with a deadline) for it
/// to exit; returns its exit code and stderr.
fn serve_exit(config: &Path, cwd: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(vcodr())
        .arg("serve")
        .arg("--config")
        .arg(config)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + T;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (st.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vcodr serve with {} did not exit", config.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_refuses_an_out_of_range_setting_naming_the_key_value_and_range() {
    let dir = TempDir(temp_dir("vcodr-bounds").unwrap());
    let cases = [
        (
            "[replication]\nstandby_grace_ms = 9223372036854775807\n",
            "key `replication.standby_grace_ms`: 9223372036854775807 ms is outside the allowed range 10..=3600000 ms",
        ),
        (
            "[edges]\nheartbeat_interval_ms = 18446744073709551615\n",
            "key `edges.heartbeat_interval_ms`: 18446744073709551615 ms is outside the allowed range 10..=600000 ms",
        ),
        (
            "[limits]\nadmin_idle_timeout_ms = 0\n",
            "key `limits.admin_idle_timeout_ms`: 0 ms is outside the allowed range 100..=300000 ms",
        ),
    ];
    for (i, (extra, says)) in cases.iter().enumerate() {
        let sub = dir.0.join(format!("case{i}"));
        let cl = ProcCluster::create(vcodr(), &sub, &["a"], extra).unwrap();
        let (code, err) = serve_exit(&cl.servers[A].config, &sub);
        assert!(code.is_some_and(|c| c != 0), "{extra}: exit {code:?}");
        assert!(err.contains(says), "{extra}: {err}");
    }
}
