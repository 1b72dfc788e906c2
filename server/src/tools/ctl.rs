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
use vcodr_core::Method;

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

    /// A copy that gives up on a call after `timeout` (default 60 s): a
    /// harness that stops servers must not wait a minute per call.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            timeout,
            ..self.clone()
        }
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
        let (status, bytes) = self
            .request("POST", crate::api::admin::PORTAL_PATH, body)
            .await?;
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
                .header(hyper::header::AUTHORIZATION, self.authorization())
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

    /// A TLS connection to the server (TCP without Nagle), the server's
    /// certificate checked against the CA: what [`Client::call`] speaks
    /// HTTP/1.1 over, for a caller that speaks it itself (the write-vs-pg
    /// load generator).
    pub async fn tls_stream(
        &self,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(&self.address)
            .await
            .with_context(|| format!("connecting to {}", self.address))?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| anyhow!("server name {:?}: {e}", self.host))?;
        self.tls
            .connect(name, tcp)
            .await
            .map_err(|e| tls_error(&self.address, &self.host, e))
    }

    /// The `Authorization` header's value.
    pub fn authorization(&self) -> String {
        format!("Token {}", self.token)
    }

    async fn connect(&self) -> anyhow::Result<Sender> {
        let tls = self.tls_stream().await?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Calls `method` with `params`; a JSON-RPC error comes back as [`ApiError`]
    /// (inside the `anyhow::Error`, downcastable).
    pub async fn call(&self, method: impl AsRef<str>, params: Value) -> anyhow::Result<Value> {
        let method = method.as_ref();
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
            Method::GetReplicationStatus,
            json!({ "with": ["clientContact", "clientCount", "stateHistory", "storageInfo"] }),
        )
        .await
    }
}

/// What went wrong in the TLS handshake with `address`, and what to do.
fn tls_error(address: &str, host: &str, e: std::io::Error) -> anyhow::Error {
    use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidCertificate(
            NotValidForName | NotValidForNameContext { .. },
        )) => {
            anyhow!(
                "TLS with {address}: the server's certificate is not valid for `{host}` \
                 (server certificates name the server, localhost, 127.0.0.1 and the names \
                 given to `vcodr certs init --servers NAME=SAN,…`); reissue it naming `{host}`: \
                 move that server's NAME.pem and NAME.key aside, run \
                 `vcodr certs add-server --dir DIR NAME={host}` and restart it, \
                 or use an address it is valid for"
            )
        }
        _ => anyhow::Error::new(e).context(format!(
            "TLS with {address} (is --ca the deployment's ca.pem?)"
        )),
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

/// Rows `vcodr ctl archive` asks for per `getDivergenceArchive` call.
pub const ARCHIVE_FETCH_ROWS: usize = 1_000;

/// What [`read_archive`] read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveRead {
    /// Rows in the archive, as its last page said.
    pub total: u64,
    /// Position of the first row read.
    pub offset: u64,
    /// Rows handed to the callback.
    pub count: u64,
    /// Position of the first row not read, if the archive holds more.
    pub next: Option<u64>,
}

/// What [`read_archive`] hands its callback, in this order.
#[derive(Clone, Copy, Debug)]
pub enum ArchiveItem<'a> {
    /// Once, first: rows in the archive.
    Total(u64),
    /// Each entry, oldest first.
    Entry(&'a Value),
}

/// Reads the divergence archive from `offset`, `limit` rows at most (all
/// of them if `None`), page by page ([`ARCHIVE_FETCH_ROWS`] per call),
/// handing the total and then each entry to `each` as it arrives: memory
/// stays bounded however long the archive is.
pub async fn read_archive(
    client: &Client,
    offset: u64,
    limit: Option<u64>,
    mut each: impl FnMut(ArchiveItem<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<ArchiveRead> {
    let mut read = ArchiveRead {
        total: 0,
        offset,
        count: 0,
        next: Some(offset),
    };
    let mut at = offset;
    let mut first = true;
    loop {
        let want = match limit {
            Some(l) => (l - read.count).min(ARCHIVE_FETCH_ROWS as u64),
            None => ARCHIVE_FETCH_ROWS as u64,
        };
        if want == 0 && !first {
            break;
        }
        let page = client
            .call(
                Method::GetDivergenceArchive,
                json!({ "offset": at, "limit": want }),
            )
            .await?;
        let bad = |what: &str| {
            anyhow!(
                "{} answered getDivergenceArchive {{offset: {at}, limit: {want}}} without {what}: {page}",
                client.address
            )
        };
        let total = page["total"]
            .as_u64()
            .ok_or_else(|| bad("a `total` (a server older than this ctl?)"))?;
        let entries = page["entries"]
            .as_array()
            .ok_or_else(|| bad("an `entries` array"))?;
        let next = match &page["next"] {
            Value::Null => None,
            v => Some(v.as_u64().ok_or_else(|| bad("a numeric `next`"))?),
        };
        read.total = total;
        if first {
            each(ArchiveItem::Total(total))?;
            first = false;
        }
        for e in entries {
            each(ArchiveItem::Entry(e))?;
        }
        read.count += entries.len() as u64;
        at += entries.len() as u64;
        read.next = next;
        match next {
            None => break,
            Some(n) if n != at || (entries.is_empty() && want > 0) => {
                anyhow::bail!(
                    "{}: the archive page at offset {} held {} rows and points to offset {n}: it changed under us or the server is wrong; read it again",
                    client.address,
                    at - entries.len() as u64,
                    entries.len()
                )
            }
            Some(_) => {}
        }
        if limit.is_some_and(|l| read.count >= l) {
            break;
        }
    }
    Ok(read)
}

/// Writes `lines` to `path` atomically: a temporary file beside it, fsync,
/// rename over `path`, fsync of the directory. Nobody ever sees half a file;
/// on error the temporary file is removed and `path` is left as it was.
pub struct AtomicFile {
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl std::fmt::Debug for AtomicFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtomicFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl AtomicFile {
    pub fn create(path: &Path) -> anyhow::Result<AtomicFile> {
        let name = path
            .file_name()
            .ok_or_else(|| anyhow!("--out {}: not a file name", path.display()))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| {
                format!("creating {} (for --out {})", tmp.display(), path.display())
            })?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp,
            file: Some(std::io::BufWriter::new(file)),
        })
    }

    pub fn write_line(&mut self, line: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| anyhow!("{} is already finished", self.path.display()))?;
        writeln!(f, "{line}").with_context(|| format!("writing {}", self.tmp.display()))
    }

    /// Makes the file durable and puts it in place.
    pub fn finish(mut self) -> anyhow::Result<()> {
        let f = self
            .file
            .take()
            .ok_or_else(|| anyhow!("{} is already finished", self.path.display()))?;
        let placed = f
            .into_inner()
            .map_err(|e| anyhow!("writing {}: {}", self.tmp.display(), e.error()))
            .and_then(|f| {
                f.sync_all()
                    .with_context(|| format!("syncing {}", self.tmp.display()))
            })
            .and_then(|()| {
                std::fs::rename(&self.tmp, &self.path).with_context(|| {
                    format!("renaming {} to {}", self.tmp.display(), self.path.display())
                })
            });
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(e);
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("syncing the directory {}", dir.display()))?;
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
