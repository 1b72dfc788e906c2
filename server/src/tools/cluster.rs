//! A pair of real `vcodr serve` processes on loopback, for the demo and the
//! tests: certificates, configuration files with free ports, start, kill -9,
//! graceful stop, and waiting on the admin API with deadlines.

use crate::tools::ctl::Client;
use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vcodr_core::Method;

/// One server process.
#[derive(Debug)]
pub struct ProcServer {
    pub name: String,
    pub config: PathBuf,
    pub admin: String,
    pub peer: String,
    pub edge: String,
    pub log: PathBuf,
    child: Option<Child>,
    pub client: Client,
}

impl ProcServer {
    pub fn url(&self) -> String {
        format!("https://{}", self.admin)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A deployment: a directory with certificates, configs, data and logs.
#[derive(Debug)]
pub struct ProcCluster {
    pub dir: PathBuf,
    pub certs: PathBuf,
    pub token_file: PathBuf,
    pub exe: PathBuf,
    pub servers: Vec<ProcServer>,
}

/// A free port on 127.0.0.1 for TCP (`udp == false`) or UDP.
pub fn free_port(udp: bool) -> anyhow::Result<u16> {
    Ok(if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    })
}

/// Extra lines for every server's TOML (sections and keys of SPEC §8).
pub const FAST_TIMERS: &str = "[replication]\npeer_heartbeat_interval_ms = 200\npeer_failure_threshold = 3\nstandby_grace_ms = 3000\n\n[edges]\nheartbeat_interval_ms = 1000\ncontact_save_interval_ms = 1000\n";

impl ProcCluster {
    /// Makes certificates (`vcodr certs init` logic) and one config per name with free ports.
    /// `extra` is appended to each config file.
    pub fn create(
        exe: &Path,
        dir: &Path,
        names: &[&str],
        extra: &str,
    ) -> anyhow::Result<ProcCluster> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let certs = dir.join("certs");
        let servers: Vec<vcodr_transport::certs::ServerSpec> = names
            .iter()
            .map(|s| vcodr_transport::certs::ServerSpec::named(s))
            .collect();
        crate::cli::certs_init(&certs, &servers, &[])?;
        let token_file = certs.join("admin.token");
        let mut out = Vec::new();
        for name in names {
            let (admin, peer, edge) = (free_port(false)?, free_port(true)?, free_port(true)?);
            let config = dir.join(format!("{name}.toml"));
            let text = format!(
                "name = \"{name}\"\ndata_dir = \"data/{name}\"\nadmin_listen = \"127.0.0.1:{admin}\"\npeer_listen = \"127.0.0.1:{peer}\"\nedge_listen = \"127.0.0.1:{edge}\"\ntls_dir = \"certs\"\nadmin_token_file = \"certs/admin.token\"\n\n{extra}"
            );
            std::fs::write(&config, text)
                .with_context(|| format!("writing {}", config.display()))?;
            let admin = format!("127.0.0.1:{admin}");
            out.push(ProcServer {
                name: name.to_string(),
                config,
                client: Client::from_files(&format!("https://{admin}"), &token_file, None)?,
                admin,
                peer: format!("127.0.0.1:{peer}"),
                edge: format!("127.0.0.1:{edge}"),
                log: dir.join(format!("{name}.log")),
                child: None,
            });
        }
        // Servers run in `dir`: a relative binary path must not depend on it.
        let exe = exe
            .canonicalize()
            .with_context(|| format!("locating {}", exe.display()))?;
        Ok(ProcCluster {
            dir: dir.to_path_buf(),
            certs,
            token_file,
            exe,
            servers: out,
        })
    }

    /// Sets a top-level key of server `i`'s config file (before its first
    /// table), e.g. `advertise_peer`. Takes effect at the next start.
    pub fn set_key(&self, i: usize, key: &str, toml_value: &str) -> anyhow::Result<()> {
        let path = &self.servers[i].config;
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let line = format!("{key} = {toml_value}\n");
        let mut out = String::new();
        let mut placed = false;
        for l in text.lines() {
            if l.starts_with(&format!("{key} ")) || l.starts_with(&format!("{key}=")) {
                continue;
            }
            if !placed && l.starts_with('[') {
                out += &line;
                placed = true;
            }
            out += l;
            out.push('\n');
        }
        if !placed {
            out += &line;
        }
        std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
    }

    /// Resident memory of server `i` in KiB (Linux `/proc`), if it runs.
    pub fn rss_kib(&self, i: usize) -> Option<u64> {
        let pid = self.servers[i].pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to server `i`'s process.
    pub fn signal(&self, i: usize, signal: &str) -> anyhow::Result<()> {
        let pid = self.servers[i]
            .pid()
            .ok_or_else(|| anyhow!("{} is not running", self.servers[i].name))?;
        let st = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        if !st.success() {
            bail!("kill -{signal} {pid} failed");
        }
        Ok(())
    }

    /// Starts server `i` and waits for its "serving" line.
    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let s = &mut self.servers[i];
        if s.child.is_some() {
            bail!("{} is already running", s.name);
        }
        let mut child = spawn_serve(
            Command::new(&self.exe),
            &self.exe,
            &s.config,
            &self.dir,
            &s.log,
        )?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(" serving ") => break,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let tail = std::fs::read_to_string(&s.log).unwrap_or_default();
                    let tail: Vec<&str> = tail.lines().rev().take(10).collect();
                    bail!(
                        "{} did not start within 30 s; last log lines:\n{}",
                        s.name,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
            }
        }
        s.child = Some(child);
        Ok(())
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (up to 30 s) for a clean exit; returns the exit status code.
    pub fn stop(&mut self, i: usize) -> anyhow::Result<Option<i32>> {
        let Some(mut c) = self.servers[i].child.take() else {
            return Ok(None);
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait()? {
                return Ok(st.code());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!(
                    "{} did not stop within 30 s of SIGTERM",
                    self.servers[i].name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (up to `timeout`) for server `i` to exit on its own; returns
    /// its exit code (`None` if a signal ended it). Fails if it still runs.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let name = self.servers[i].name.clone();
        let c = self.servers[i]
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("{name} is not running"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = c.try_wait()? {
                self.servers[i].child = None;
                return Ok(st.code());
            }
            if Instant::now() > deadline {
                bail!("{name} still runs {timeout:?} later");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop_all(&mut self) {
        for i in 0..self.servers.len() {
            let _ = self.stop(i);
        }
    }

    pub fn client(&self, i: usize) -> &Client {
        &self.servers[i].client
    }

    /// Polls `getReplicationStatus` of server `i` until `pred` holds.
    pub async fn wait_status(
        &self,
        i: usize,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        loop {
            if let Ok(s) = self.client(i).status().await {
                if pred(&s) {
                    return Ok(s);
                }
                last = s;
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: {what} not reached within {timeout:?}; last status: role {} drState {} failure {}",
                    self.servers[i].name,
                    last["role"],
                    last["drState"],
                    last["failureDescription"]
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until server `i` is in `role`/`state`.
    pub async fn wait_state(
        &self,
        i: usize,
        role: &str,
        state: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        self.wait_status(i, &format!("{role} / {state}"), timeout, |s| {
            s["role"] == role && s["drState"] == state
        })
        .await
    }

    /// prepareForStandby on `standby`, configureActiveForReplication on `active`, then both STANDBY_RUNNING.
    pub async fn pair(
        &self,
        active: usize,
        standby: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let prep = self
            .client(standby)
            .call(Method::PrepareForStandby, json!({}))
            .await?;
        let params = json!({
            "standbyList": [{"standbyAddress": self.servers[standby].peer, "standbyUuid": prep["vcoUuid"]}],
            "pairingToken": prep["pairingToken"],
        });
        self.client(active)
            .call(Method::ConfigureActiveForReplication, params)
            .await?;
        self.wait_state(active, "ACTIVE", "STANDBY_RUNNING", timeout)
            .await?;
        self.wait_state(standby, "STANDBY", "STANDBY_RUNNING", timeout)
            .await?;
        Ok(())
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            if let Some(mut c) = s.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(prefix: &str) -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "{prefix}-{}-{:08x}",
        std::process::id(),
        crate::serve::random_u128()? as u32
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// The value of the Prometheus sample `name` (with its labels, e.g.
/// `vcodr_peer_messages_refused_total{reason="not_pinned_peer"}`) in `text`.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A UDP forwarder on 127.0.0.1 in front of `target`, that a test can cut
/// (both directions, silently, as a partition would) and heal: loopback has
/// no netem, and a proxy touches nothing outside the test.
#[derive(Debug)]
pub struct UdpProxy {
    pub addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// Clients one proxy forwards for (each gets its own upstream socket).
pub const UDP_PROXY_CLIENTS_MAX: usize = 64;

impl UdpProxy {
    pub async fn start(target: std::net::SocketAddr) -> anyhow::Result<UdpProxy> {
        use std::sync::atomic::Ordering::Relaxed;
        use std::sync::Arc;
        let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let c = cut.clone();
        let task = tokio::spawn(async move {
            let mut upstreams: std::collections::HashMap<
                std::net::SocketAddr,
                Arc<tokio::net::UdpSocket>,
            > = std::collections::HashMap::new();
            // Dropped (and so aborted) with this task.
            let mut backs = tokio::task::JoinSet::new();
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, from)) = front.recv_from(&mut buf).await else {
                    return;
                };
                if c.load(Relaxed) {
                    continue;
                }
                let up = match upstreams.get(&from) {
                    Some(u) => u.clone(),
                    None if upstreams.len() < UDP_PROXY_CLIENTS_MAX => {
                        let Ok(u) = tokio::net::UdpSocket::bind("127.0.0.1:0").await else {
                            continue;
                        };
                        if u.connect(target).await.is_err() {
                            continue;
                        }
                        let u = Arc::new(u);
                        upstreams.insert(from, u.clone());
                        let (back, front, c) = (u.clone(), front.clone(), c.clone());
                        backs.spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            while let Ok(n) = back.recv(&mut buf).await {
                                if !c.load(Relaxed) {
                                    let _ = front.send_to(&buf[..n], from).await;
                                }
                            }
                        });
                        u
                    }
                    None => continue,
                };
                let _ = up.send(&buf[..n]).await;
            }
        });
        Ok(UdpProxy { addr, cut, task })
    }

    /// Drops everything in both directions from now on.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Spawns `vcodr serve --config <config>` through `cmd` (the `vcodr` binary
/// `exe` itself, or a wrapper that runs it, such as `ip netns exec`), in
/// `dir`, its log appended to `log` and its stdout piped (the caller waits
/// for the "serving" line). Shared by this cluster and the fault drills.
pub fn spawn_serve(
    mut cmd: Command,
    exe: &Path,
    config: &Path,
    dir: &Path,
    log: &Path,
) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .current_dir(dir)
        .env("RUST_LOG", "info,quinn=warn,rustls=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {} serve", exe.display()))
}
