//! `vcodr ctl`: the operator's client for the admin API, and the client the
//! demo and tests use. HTTPS trusting the deployment CA, JSON-RPC 2.0.

use anyhow::{anyhow, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// A JSON-RPC error returned by the server.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for ApiError {}

/// A client of one server's admin API.
#[derive(Clone)]
pub struct Client {
    /// `host:port`.
    pub address: String,
    host: String,
    tls: tokio_rustls::TlsConnector,
    token: Arc<String>,
    next_id: Arc<AtomicU64>,
    timeout: Duration,
    /// Idle keep-alive connections, with when each went idle.
    pool: Arc<std::sync::Mutex<Vec<(Sender, std::time::Instant)>>>,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Idle connections kept per client.
const POOL_MAX: usize = 64;
/// A pooled connection idle for longer is not reused: the server closes
/// idle admin connections (`limits.admin_idle_timeout_ms`, 5 s by
/// default), and a request sent as it closes one would be lost.
const POOL_IDLE_MAX: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// `server` is `https://host:port` or `host:port`; `ca_pem` the deployment CA.
    pub fn new(server: &str, ca_pem: &Path, token: &str) -> anyhow::Result<Client> {
        let address = server
            .trim()
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .trim_end_matches("/portal")
            .to_string();
        if server.starts_with("http://") {
            anyhow::bail!("--server {server}: the admin API speaks HTTPS only; use https://");
        }
        let host = match address.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => {
                h.trim_start_matches('[').trim_end_matches(']').to_string()
            }
            _ => anyhow::bail!("--server {server}: give host:port, e.g. https://127.0.0.1:8443"),
        };
        let mut roots = rustls::RootCertStore::empty();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_pem)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| anyhow!("reading the CA {}: {e}", ca_pem.display()))?;
        for c in certs {
            roots
                .add(c)
                .map_err(|e| anyhow!("CA {}: {e}", ca_pem.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Client {
            address,
            host,
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            token: Arc::new(token.trim().to_string()),
            next_id: Arc::new(AtomicU64::new(1)),
            timeout: Duration::from_secs(60),
            pool: Arc::default(),
        })
    }

    /// Reads the token from `token_file` and the CA from `ca` or, by default,
    /// `ca.pem` beside the token file.
    pub fn from_files(
        server: &str,
        token_file: &Path,
        ca: Option<&Path>,
    ) -> anyhow::Result<Client> {
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("reading --token-file {}", token_file.display()))?;
        let default_ca = token_file.parent().unwrap_or(Path::new(".")).join("ca.pem");
        Client::new(server, ca.unwrap_or(&default_ca), &token)
    }

    /// A copy with another token (tests of authentication).
    pub fn with_token(&self, token: &str) -> Client {
        Client {
            token: Arc::new(token.to_string()),
            ..self.clone()
        }
    }

    /// Sends raw bytes to `POST /portal/`; returns the HTTP status and the JSON body.
    pub async fn post_raw(&self, body: Vec<u8>) -> anyhow::Result<(u16, Value)> {
        let (status, bytes) = self.request("POST", "/portal/", body).await?;
        let v = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} answered with non-JSON: {}",
                self.address,
                String::from_utf8_lossy(&bytes)
            )
        })?;
        Ok((status, v))
    }

    /// `GET path`; returns the status and the body.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let (status, bytes) = self.request("GET", path, Vec::new()).await?;
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let fut = async {
            // Reuse an idle connection (keep-alive); a fresh one costs a TLS handshake.
            let pooled = {
                let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
                let mut found = None;
                while let Some((s, idle_since)) = pool.pop() {
                    if !s.is_closed() && idle_since.elapsed() < POOL_IDLE_MAX {
                        found = Some(s);
                        break;
                    }
                }
                found
            };
            // A pooled connection may still be finishing its last response.
            let ready = match pooled {
                Some(mut s) => s.ready().await.ok().map(|()| s),
                None => None,
            };
            let reused = ready.is_some();
            let mut sender = match ready {
                Some(s) => s,
                None => self.connect().await?,
            };
            let req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, &self.address)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(
                    hyper::header::AUTHORIZATION,
                    format!("Token {}", self.token),
                )
                .body(Full::new(Bytes::from(body)))?;
            let resp = match sender.try_send_request(req).await {
                Ok(r) => r,
                Err(mut e) => match e.take_message() {
                    // Never sent: the pooled connection closed first. Once
                    // more on a fresh one (a request that may have been
                    // sent is never repeated).
                    Some(req) if reused => {
                        sender = self.connect().await?;
                        sender
                            .send_request(req)
                            .await
                            .with_context(|| format!("{method} {path} on {}", self.address))?
                    }
                    _ => {
                        return Err(anyhow::Error::new(e.into_error())
                            .context(format!("{method} {path} on {}", self.address)))
                    }
                },
            };
            let status = resp.status().as_u16();
            let reuse = sender;
            let bytes = resp.into_body().collect().await?.to_bytes();
            if !reuse.is_closed() {
                let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
                if pool.len() < POOL_MAX {
                    pool.push((reuse, std::time::Instant::now()));
                }
            }
            anyhow::Ok((status, bytes))
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| anyhow!("{} did not answer within {:?}", self.address, self.timeout))?
    }

    async fn connect(&self) -> anyhow::Result<Sender> {
        let tcp = tokio::net::TcpStream::connect(&self.address)
            .await
            .with_context(|| format!("connecting to {}", self.address))?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| anyhow!("server name {:?}: {e}", self.host))?;
        let tls = self.tls.connect(name, tcp).await.with_context(|| {
            format!(
                "TLS with {} (is --ca the deployment's ca.pem?)",
                self.address
            )
        })?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Calls `method` with `params`; a JSON-RPC error comes back as [`ApiError`]
    /// (inside the `anyhow::Error`, downcastable).
    pub async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Relaxed);
        let body = serde_json::to_vec(
            &json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }),
        )?;
        let (_, v) = self.post_raw(body).await?;
        if let Some(e) = v.get("error") {
            return Err(ApiError {
                code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
                message: e
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                data: e.get("data").cloned(),
            }
            .into());
        }
        v.get("result")
            .cloned()
            .ok_or_else(|| anyhow!("{} answered without result or error: {v}", self.address))
    }

    /// `getReplicationStatus` with every table.
    pub async fn status(&self) -> anyhow::Result<Value> {
        self.call(
            "disasterRecovery/getReplicationStatus",
            json!({ "with": ["clientContact", "clientCount", "stateHistory", "storageInfo"] }),
        )
        .await
    }
}

/// Renders a status as the human table of `vcodr ctl status`.
pub fn status_table(s: &Value) -> String {
    let g = |p: &str| -> String {
        let v = s.pointer(p).cloned().unwrap_or(Value::Null);
        match v {
            Value::String(x) => x,
            Value::Null => "-".into(),
            other => other.to_string(),
        }
    };
    let mut out = String::new();
    let rows = [
        ("name", "/name"),
        ("role", "/role"),
        ("drState", "/drState"),
        ("epoch", "/epoch"),
        ("pairId", "/pairId"),
        ("vcoUuid", "/vcoUuid"),
        ("activeAddress", "/activeAddress"),
        ("peer", "/peer/peerAddress"),
        ("failure", "/failureDescription"),
        ("replication.mode", "/replication/mode"),
        ("replication.policy", "/replication/policy"),
        ("lastIndex", "/replication/lastIndex"),
        ("commitIndex", "/replication/commitIndex"),
        ("standbyAckedIndex", "/replication/standbyAckedIndex"),
        ("lagEntries", "/replication/lagEntries"),
        ("lagMs", "/replication/lagMs"),
        ("unprotectedWrites", "/replication/unprotectedWrites"),
        ("lastDrProtectedTime", "/lastDrProtectedTime"),
        ("documents", "/documents"),
        ("edges (following)", "/clientCount/currentActiveEdgeCount"),
        (
            "gateways (following)",
            "/clientCount/currentActiveGatewayCount",
        ),
    ];
    for (k, p) in rows {
        out += &format!("{k:<22} {}\n", g(p));
    }
    out
}
