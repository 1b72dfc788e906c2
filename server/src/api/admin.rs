//! The admin API over HTTPS (SPEC §7): JSON-RPC 2.0 at `POST /portal/`,
//! authenticated by `Authorization: Token <token>`; `GET /` the DR readiness
//! page; `GET /metrics`; `GET /healthz` (unauthenticated liveness) and
//! `GET /readyz` (unauthenticated readiness; the rules are in
//! [`crate::api::health`]).
//!
//! The listener ([`serve`]) bounds what a client can hold: connections
//! (`limits.max_admin_connections`), time to handshake, to send a request
//! and to stay idle (`limits.admin_*_timeout_ms`), and requests in flight
//! (`limits.max_admin_requests`, one permit per request, none per idle
//! connection), so that hundreds of idle or half-sent connections lock no
//! one out, the probes included.

use crate::api::health;
use crate::api::metrics::Metrics;
use crate::api::rpc::{self, RpcError};
use crate::driver::Handle;
use crate::serve::config::AdminLimits;
use crate::serve::throttle::LogThrottle;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

/// Shared state of the admin handlers.
#[derive(Clone, Debug)]
pub struct AdminState {
    pub handle: Handle,
    pub token: Arc<String>,
    pub name: Arc<String>,
    /// Unauthorized calls are logged as counts per interval.
    pub throttle: Arc<LogThrottle>,
}

/// Compares two tokens in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let given = v.strip_prefix("Token ").unwrap_or("").trim();
    constant_time_eq(given.as_bytes(), token.as_bytes())
}

/// The JSON-RPC portal's path, as clients call it (`POST` only).
pub const PORTAL_PATH: &str = "/portal/";
/// Where the portal answers: [`PORTAL_PATH`], with or without its slash.
const PORTAL_PATHS: [&str; 2] = [PORTAL_PATH, "/portal"];

/// The JSON-RPC portal: every write's path, so [`request`] calls it itself
/// rather than through the router (axum's routing, its extractors' copies
/// and its boxed services cost ~4.5 µs of each write at 16 writers, 6 % of
/// the active's runtime thread).
async fn portal(st: &AdminState, headers: &HeaderMap, body: &[u8]) -> Response {
    if !authorized(headers, &st.token) {
        st.handle
            .metrics
            .admin_unauthorized
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        st.throttle.note("admin_unauthorized", || {
            "admin call refused: missing or wrong token".to_string()
        });
        let e = RpcError::new(
            rpc::code::UNAUTHORIZED,
            "unauthorized: send `Authorization: Token <token>` with the admin token",
        );
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(rpc::response(Value::Null, Err(e))),
        )
            .into_response();
    }
    let (id, method, result) = match rpc::parse_request(body) {
        Ok(req) => (req.id, Some(req.method), st.handle.api(req.call).await),
        Err(bad) => (bad.id, bad.method, Err(bad.error)),
    };
    // Refusals of a named method are logged; bodies that are not a request are not.
    if let (Some(method), Err(e)) = (&method, &result) {
        tracing::info!(target: "vcodr::admin", event = "refused", method = %method, code = e.code, "{method} refused: {}", e.message);
    }
    axum::Json(rpc::response(id, result)).into_response()
}

async fn healthz(State(st): State<AdminState>) -> Response {
    let name = &st.name;
    if let Some(why) = st.handle.storage_failure() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("failed {name}: storage failed: {why}; the process exits for its supervisor to restart it\n"),
        )
            .into_response();
    }
    match st.handle.probe(health::LIVENESS_DRIVER_DEADLINE).await {
        Ok(p) => (StatusCode::OK, format!("ok {name} {}\n", p.role)).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("failed {name}: {why}\n"),
        )
            .into_response(),
    }
}

/// `GET /readyz`: the rule is in [`crate::api::health`].
async fn readyz(State(st): State<AdminState>) -> Response {
    let name = &st.name;
    let verdict = match st.handle.storage_failure() {
        Some(why) => Err(format!(
            "storage failed ({why}); the process exits for its supervisor to restart it"
        )),
        None => match st.handle.probe(health::READINESS_DRIVER_DEADLINE).await {
            Ok(p) => p.verdict,
            Err(why) => Err(why),
        },
    };
    match verdict {
        Ok(line) => (StatusCode::OK, format!("ready {name} {line}\n")).into_response(),
        Err(line) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready {name} {line}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(st): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.handle.metrics.render(),
    )
        .into_response()
}

async fn page() -> Html<&'static str> {
    Html(crate::api::web::PAGE)
}

/// The router of the admin API's pages and probes (the portal is served by
/// [`request`] before it: [`PORTAL_PATHS`]).
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(page))
        .with_state(state)
}

/// Loads `DIR/<name>.pem` and `DIR/<name>.key` as a TLS server config (no client certificates:
/// operators authenticate with the admin token).
pub fn tls_config(dir: &Path, name: &str) -> anyhow::Result<rustls::ServerConfig> {
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        // TLS 1.3 only: the server's certificate key also signs epoch proofs,
        // and TLS 1.2 would let a client choose part of what that key signs.
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert_path.display()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// How long a request waits for a permit (`limits.max_admin_requests`)
/// before it is answered 503.
pub const ADMIN_PERMIT_WAIT: Duration = Duration::from_secs(1);
/// Largest request body read (axum's own default limit).
pub const ADMIN_BODY_MAX_BYTES: usize = 2 * 1024 * 1024;
/// How long a stopping admin listener lets its connections finish the
/// requests in flight (their responses are written, idle ones close at once).
pub const ADMIN_DRAIN_MAX: Duration = Duration::from_secs(2);
/// Pause after a failed `accept` (e.g. out of file descriptors), so that a
/// persistent failure is not a busy loop.
pub const ACCEPT_FAILURE_PAUSE: Duration = Duration::from_millis(100);

/// What one connection has been doing, for its idle timeout.
#[derive(Debug)]
struct Activity {
    /// The listener's time origin.
    origin: Instant,
    /// When a byte was last received or a request last ended (ms since `origin`).
    last_ms: AtomicU64,
    /// Requests being handled now.
    in_flight: AtomicUsize,
}

impl Activity {
    fn new(origin: Instant) -> Self {
        let a = Activity {
            origin,
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        };
        a.touch();
        a
    }

    fn touch(&self) {
        self.last_ms
            .store(self.origin.elapsed().as_millis() as u64, Relaxed);
    }

    /// When the connection counts as idle, if nothing happens meanwhile.
    fn idle_at(&self, idle: Duration) -> Instant {
        self.origin + Duration::from_millis(self.last_ms.load(Relaxed)) + idle
    }
}

/// Ends a request's share of [`Activity`] however its future ends.
struct RequestGuard<'a> {
    activity: &'a Activity,
    metrics: &'a Metrics,
}

impl<'a> RequestGuard<'a> {
    fn begin(activity: &'a Activity, metrics: &'a Metrics) -> Self {
        activity.in_flight.fetch_add(1, Relaxed);
        activity.touch();
        metrics.admin_requests_in_flight.fetch_add(1, Relaxed);
        RequestGuard { activity, metrics }
    }
}

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        self.activity.touch();
        self.activity.in_flight.fetch_sub(1, Relaxed);
        self.metrics.admin_requests_in_flight.fetch_sub(1, Relaxed);
    }
}

/// The TLS stream of a connection, noting every byte received in its [`Activity`].
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts an open connection in `vcodr_admin_connections_open` while it lives.
struct OpenGuard(Arc<Metrics>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.admin_connections_open.fetch_sub(1, Relaxed);
    }
}

/// What every connection task shares.
#[derive(Clone)]
struct Shared {
    state: AdminState,
    app: Router,
    acceptor: tokio_rustls::TlsAcceptor,
    limits: AdminLimits,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    throttle: Arc<LogThrottle>,
    origin: Instant,
}

/// The listener's side of the admin API: HTTPS on `listener` until
/// `shutdown` turns true, within `limits`:
/// - at most `max_connections` connections are open; one more is closed at
///   once, counted (`vcodr_admin_connections_refused_total`) and logged as
///   counts per interval;
/// - a connection has `handshake_timeout` for its TLS handshake;
///   `header_timeout` for each request's headers, counted from when it is
///   ready for a request (hyper's `header_read_timeout`), and as long again
///   for the body; once it has no request in flight and has received
///   nothing for `idle_timeout`, it is closed (each counted in
///   `vcodr_admin_connections_timed_out_total{phase}`);
/// - a request holds one of `max_requests` permits from its headers to its
///   response (an idle connection holds none); it waits at most
///   [`ADMIN_PERMIT_WAIT`] for one, then is answered 503. `/healthz` and
///   `/readyz` need none.
///
/// On shutdown it stops accepting, lets every connection finish the request
/// in flight (at most [`ADMIN_DRAIN_MAX`]) and returns.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    state: AdminState,
    limits: AdminLimits,
    metrics: Arc<Metrics>,
    throttle: Arc<LogThrottle>,
    mut shutdown: watch::Receiver<bool>,
) {
    let shared = Shared {
        app: router(state.clone()),
        state,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
        limits,
        permits: Arc::new(Semaphore::new(limits.max_requests)),
        metrics,
        throttle,
        origin: Instant::now(),
    };
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = shutdown.changed() => break,
        };
        let (tcp, peer): (TcpStream, SocketAddr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                shared.throttle.note("admin_accept_failed", || {
                    format!("admin accept failed: {e}")
                });
                tokio::select! {
                    _ = tokio::time::sleep(ACCEPT_FAILURE_PAUSE) => continue,
                    _ = shutdown.changed() => break,
                }
            }
        };
        let m = &shared.metrics;
        if m.admin_connections_open.load(Relaxed) >= limits.max_connections as u64 {
            // Closed at once: an outsider holding connections cannot take more.
            drop(tcp);
            m.admin_connections_refused.fetch_add(1, Relaxed);
            shared.throttle.note("admin_connection_refused", || {
                format!(
                    "admin connection from {peer} closed: {} connections are open \
                     (limits.max_admin_connections)",
                    limits.max_connections
                )
            });
            continue;
        }
        m.admin_connections_open.fetch_add(1, Relaxed);
        let open = OpenGuard(m.clone());
        conns.spawn(connection(
            shared.clone(),
            tcp,
            peer,
            open,
            shutdown.clone(),
        ));
    }
    // Stopping: each connection finishes what is in flight and closes.
    let drained = tokio::time::timeout(ADMIN_DRAIN_MAX, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            left = conns.len(),
            "admin connections still open after the drain; closing them"
        );
    }
}

/// The admin API's HTTP/1.1 server settings: keep-alive, and each
/// request's head within `header_timeout` (`limits.admin_header_timeout_ms`).
pub fn http1(header_timeout: Duration) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    builder
}

async fn connection(
    sh: Shared,
    tcp: TcpStream,
    peer: SocketAddr,
    _open: OpenGuard,
    mut shutdown: watch::Receiver<bool>,
) {
    // Without it, Nagle and delayed ACKs add ~40 ms to every small response.
    let _ = tcp.set_nodelay(true);
    let timed_out =
        |phase: usize| sh.metrics.admin_connections_timed_out[phase].fetch_add(1, Relaxed);
    let tls = match tokio::time::timeout(sh.limits.handshake_timeout, sh.acceptor.accept(tcp)).await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "admin TLS handshake failed");
            return;
        }
        Err(_) => {
            timed_out(TIMEOUT_HANDSHAKE);
            return;
        }
    };
    let activity = Arc::new(Activity::new(sh.origin));
    let io = hyper_util::rt::TokioIo::new(Watched {
        inner: tls,
        activity: activity.clone(),
    });
    let svc = {
        let (sh, activity) = (sh.clone(), activity.clone());
        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let (sh, activity) = (sh.clone(), activity.clone());
            async move { Ok::<_, std::convert::Infallible>(request(&sh, &activity, req).await) }
        })
    };
    let conn = http1(sh.limits.header_timeout).serve_connection(io, svc);
    tokio::pin!(conn);
    let idle = sh.limits.idle_timeout;
    // Set once the connection is asked to close: it may finish its response.
    let mut closing: Option<Instant> = None;
    loop {
        let idle_check = match closing {
            Some(by) => by,
            None => activity.idle_at(idle),
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    if e.is_timeout() {
                        timed_out(TIMEOUT_HEADER);
                    } else {
                        tracing::debug!(%peer, error = %e, "admin connection ended with an error");
                    }
                }
                return;
            }
            _ = tokio::time::sleep_until(idle_check.into()) => {
                if closing.is_some() {
                    // It would not take its last response: drop it.
                    return;
                }
                let now = Instant::now();
                if activity.in_flight.load(Relaxed) == 0 && activity.idle_at(idle) <= now {
                    timed_out(TIMEOUT_IDLE);
                    conn.as_mut().graceful_shutdown();
                    closing = Some(now + sh.limits.header_timeout);
                }
                // Busy, or active meanwhile: the next check is computed above;
                // a request in flight counts as activity when it ends.
                else if activity.in_flight.load(Relaxed) > 0 {
                    activity.touch();
                }
            }
            _ = shutdown.changed(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + ADMIN_DRAIN_MAX);
            }
        }
    }
}

/// `vcodr_admin_connections_timed_out_total{phase}` indexes.
const TIMEOUT_HANDSHAKE: usize = 0;
const TIMEOUT_HEADER: usize = 1;
const TIMEOUT_IDLE: usize = 2;
/// The `phase` labels, by index.
pub const TIMEOUT_PHASES: [&str; 3] = ["handshake", "header", "idle"];

/// One request: a permit (except the probes), the body within the header
/// timeout, then the router.
async fn request(
    sh: &Shared,
    activity: &Activity,
    req: Request<hyper::body::Incoming>,
) -> Response {
    let _busy = RequestGuard::begin(activity, &sh.metrics);
    let probe = matches!(req.uri().path(), "/healthz" | "/readyz");
    let _permit = if probe {
        None
    } else {
        match tokio::time::timeout(ADMIN_PERMIT_WAIT, sh.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => Some(p),
            _ => {
                sh.metrics.admin_requests_refused.fetch_add(1, Relaxed);
                let limit = sh.limits.max_requests;
                sh.throttle.note("admin_overloaded", || {
                    format!("admin request refused: {limit} requests in flight (limits.max_admin_requests)")
                });
                let e = RpcError::new(
                    rpc::code::NOT_ACKNOWLEDGED,
                    format!(
                        "overloaded: {limit} admin requests are in flight (limits.max_admin_requests); \
                         nothing was done, retry shortly"
                    ),
                );
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "1")],
                    axum::Json(rpc::response(Value::Null, Err(e))),
                )
                    .into_response();
            }
        }
    };
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, ADMIN_BODY_MAX_BYTES);
    let bytes = match tokio::time::timeout(sh.limits.header_timeout, limited.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body refused: {e} (at most {ADMIN_BODY_MAX_BYTES} bytes)\n"),
            )
                .into_response()
        }
        Err(_) => {
            sh.metrics.admin_connections_timed_out[TIMEOUT_HEADER].fetch_add(1, Relaxed);
            let mut r = (
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not received within {} ms (limits.admin_header_timeout_ms)\n",
                    sh.limits.header_timeout.as_millis()
                ),
            )
                .into_response();
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return r;
        }
    };
    if PORTAL_PATHS.contains(&parts.uri.path()) {
        if parts.method != axum::http::Method::POST {
            return (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "POST")]).into_response();
        }
        return portal(&sh.state, &parts.headers, &bytes).await;
    }
    let req = Request::from_parts(parts, axum::body::Body::from(bytes));
    match sh.app.clone().oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{self, PeerSink};
    use crate::storage::{MemStorage, Storage, StorageError};
    use serde_json::json;
    use std::sync::atomic::AtomicBool;
    use vcodr_core::*;

    /// [`MemStorage`] whose commits fail with ENOSPC once `full` is set.
    struct FillingDisk {
        inner: MemStorage,
        full: Arc<AtomicBool>,
    }

    impl Storage for FillingDisk {
        fn load(&self) -> Result<Restored, StorageError> {
            self.inner.load()
        }
        fn commit(&mut self, batch: &[(PersistSeq, Vec<PersistOp>)]) -> Result<(), StorageError> {
            if self.full.load(Relaxed) {
                return Err(StorageError::Io {
                    path: "/data/a/vcodr.redb".into(),
                    action: "commit the batch durably",
                    source: std::io::Error::from_raw_os_error(28),
                });
            }
            self.inner.commit(batch)
        }
        fn get_doc(&self, key: &str) -> Result<Option<Doc>, StorageError> {
            self.inner.get_doc(key)
        }
        fn list_docs(&self) -> Result<Vec<(String, Index)>, StorageError> {
            self.inner.list_docs()
        }
        fn samples(
            &self,
            client: &str,
            after_seq: u64,
            limit: usize,
        ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
            self.inner.samples(client, after_seq, limit)
        }
        fn read_samples(
            &self,
            ranges: &[SampleRange],
            max_bytes: usize,
            max_samples: usize,
        ) -> Result<Vec<SampleChunk>, StorageError> {
            self.inner.read_samples(ranges, max_bytes, max_samples)
        }
        fn sample_summary(&self) -> Result<Vec<crate::storage::SampleSummary>, StorageError> {
            self.inner.sample_summary()
        }
        fn archive(
            &self,
            offset: u64,
            limit: usize,
        ) -> Result<Vec<crate::storage::ArchivedEntry>, StorageError> {
            self.inner.archive(offset, limit)
        }
        fn archive_len(&self) -> Result<u64, StorageError> {
            self.inner.archive_len()
        }
        fn history(&self, limit: usize) -> Result<Vec<Transition>, StorageError> {
            self.inner.history(limit)
        }
        fn info(&self) -> Result<crate::storage::StorageInfo, StorageError> {
            self.inner.info()
        }
        fn save_contacts(&mut self, contacts: &[ClientContact]) -> Result<(), StorageError> {
            self.inner.save_contacts(contacts)
        }
        fn load_contacts(&self) -> Result<Vec<ClientContact>, StorageError> {
            self.inner.load_contacts()
        }
    }

    struct NoPeer;

    impl PeerSink for NoPeer {
        fn send(&mut self, _: &str, _: PeerEnvelope) {}
        fn reply(&mut self, _: PeerLinkId, _: PeerEnvelope) {}
        fn close(&mut self, _: PeerLinkId, _: &str) {}
        fn dial_targets(&self) -> usize {
            0
        }
    }

    async fn get(app: &Router, path: &str) -> (u16, String) {
        let req = Request::get(path).body(axum::body::Body::empty()).unwrap();
        let r = app.clone().oneshot(req).await.unwrap();
        let code = r.status().as_u16();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_failed_commit_makes_the_server_not_ready_at_once_and_answers_in_flight_writes() {
        let metrics = Arc::new(Metrics::default());
        let full = Arc::new(AtomicBool::new(false));
        let disk = FillingDisk {
            inner: MemStorage::new(),
            full: full.clone(),
        };
        let throttle = Arc::new(LogThrottle::default());
        let (handle, _driver) = driver::spawn_standalone(
            Box::new(disk),
            Box::new(NoPeer),
            metrics.clone(),
            throttle.clone(),
        );
        let app = router(AdminState {
            handle: handle.clone(),
            token: Arc::new("0123456789abcdef".into()),
            name: Arc::new("a".into()),
            throttle,
        });
        let put =
            |k: &str| rpc::parse_call("configuration/put", &json!({"key": k, "value": 1})).unwrap();
        assert_eq!(
            get(&app, "/readyz").await,
            (
                200,
                "ready a STANDALONE UNCONFIGURED: takes writes\n".into()
            )
        );
        assert_eq!(
            get(&app, "/healthz").await,
            (200, "ok a STANDALONE\n".into())
        );
        assert!(handle.api(put("before")).await.is_ok());

        full.store(true, Relaxed);
        let e = handle.api(put("in-flight")).await.unwrap_err();
        assert_eq!(e.code, rpc::code::OUTCOME_UNKNOWN, "{e:?}");
        for says in [
            "outcome unknown: storage failed on this server",
            "No space left on device (os error 28)",
            "may or may not be durable",
            "exits (code 74)",
            "check with configuration/get after its restart",
        ] {
            assert!(e.message.contains(says), "{says:?} not in {}", e.message);
        }
        // Not ready, not live, at once; the next call is not carried out.
        let (code, body) = get(&app, "/readyz").await;
        assert_eq!(code, 503);
        assert!(
            body.starts_with("not ready a storage failed (storage file /data/a/vcodr.redb: commit the batch durably failed: No space left on device (os error 28))"),
            "{body}"
        );
        assert_eq!(body.lines().count(), 1, "{body}");
        let (code, body) = get(&app, "/healthz").await;
        assert_eq!(code, 503, "{body}");
        let e = handle.api(put("after")).await.unwrap_err();
        assert!(
            e.message
                .starts_with("not carried out: storage failed on this server"),
            "{e:?}"
        );
        let text = metrics.render();
        assert!(text.contains("\nvcodr_storage_failed 1\n"), "{text}");
        assert!(
            text.contains("\nvcodr_writes_outcome_unknown_total 1\n"),
            "{text}"
        );
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Token s3cret".parse().unwrap());
        assert!(authorized(&h, "s3cret"));
        assert!(!authorized(&h, "s3cre"));
    }
}
