//! The admin API over HTTPS (SPEC §7): JSON-RPC 2.0 at `POST /portal/`,
//! authenticated by `Authorization: Token <token>`; `GET /` the DR readiness
//! page; `GET /metrics`; `GET /healthz` (unauthenticated liveness).

use crate::driver::Handle;
use crate::rpc::{self, RpcError};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Shared state of the admin handlers.
#[derive(Clone, Debug)]
pub struct AdminState {
    pub handle: Handle,
    pub token: Arc<String>,
    pub name: Arc<String>,
    /// Unauthorized calls are logged as counts per interval.
    pub throttle: Arc<crate::throttle::LogThrottle>,
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

async fn portal(State(st): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&headers, &st.token) {
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
    let (id, method, result) = match rpc::parse_request(&body) {
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
    let role = st
        .handle
        .metrics
        .role
        .load(std::sync::atomic::Ordering::Relaxed);
    let role = vcodr_core::Role::ALL
        .get(role as usize)
        .map_or("?", |r| r.as_str());
    (StatusCode::OK, format!("ok {} {role}\n", st.name)).into_response()
}

async fn metrics(State(st): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.handle.metrics.render(),
    )
        .into_response()
}

async fn page() -> Html<&'static str> {
    Html(crate::web::PAGE)
}

/// The router of the admin API.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/portal/", post(portal))
        .route("/portal", post(portal))
        .route("/healthz", get(healthz))
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
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert_path.display()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Serves HTTPS on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    app: Router,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        // Without it, Nagle and delayed ACKs add ~40 ms to every small response.
        let _ = tcp.set_nodelay(true);
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "admin TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let io = hyper_util::rt::TokioIo::new(tls);
            let svc = hyper_util::service::TowerToHyperService::new(app);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
