//! One schedule's deployment inside a [`Lab`]: certificates naming the
//! servers' drill addresses, a config per server, each server's data_dir on
//! a small tmpfs of its own (the full-filesystem fault), the server
//! processes and the edge simulator, each started with `ip netns exec` in
//! its namespace (ip execs the program: its pid is the child's).

use crate::lab::{Host, Lab};
use crate::schedule::Policy;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use vcodr_server::ctl::Client;
use vcodr_server::tools::cluster::spawn_serve;
use vcodr_transport::certs::ServerSpec;

/// Timers of the drills' servers (SPEC §8 keys). `write_timeout_ms` must
/// exceed the longest wait for the grace (200 × 4 + 2,000 ms) and the
/// switchover (20 × 200 ms).
pub const HEARTBEAT_INTERVAL_MS: u64 = 1_000;
pub const STANDBY_GRACE_MS: u64 = 2_000;
pub const WRITE_TIMEOUT_MS: u64 = 6_000;

/// The admin client's own timeout: above the server's write timeout, so
/// that a slow write is answered by the server (outcome unknown) rather
/// than given up by the client — except when the server is stopped.
pub const CLIENT_TIMEOUT: Duration = Duration::from_millis(WRITE_TIMEOUT_MS + 2_000);

/// Size of each server's tmpfs.
pub const DISK_SIZE: &str = "64m";

/// Edges and gateways the simulator runs.
pub const EDGES: usize = 6;
/// One sample per edge every this many ms.
pub const SAMPLE_INTERVAL_MS: u64 = 250;
/// Each edge's monitoring cache.
pub const EDGE_CACHE_BYTES: usize = 256 * 1024;

/// Longest wait for a process to say it serves.
const START_WAIT: Duration = Duration::from_secs(30);

const ADMIN_PORT: u16 = 8443;
const PEER_PORT: u16 = 7443;
const EDGE_PORT: u16 = 7444;

/// One `vcodr serve`.
#[derive(Debug)]
pub struct Server {
    pub name: &'static str,
    pub host: Host,
    pub addr: String,
    pub config: PathBuf,
    pub log: PathBuf,
    /// The tmpfs mount point; data_dir is `<disk>/data`.
    pub disk: PathBuf,
    pub client: Client,
    child: Option<Child>,
    /// SIGSTOPped by the drill and not yet continued.
    pub stopped: bool,
}

impl Server {
    pub fn peer_address(&self) -> String {
        format!("{}:{PEER_PORT}", self.addr)
    }

    pub fn edge_address(&self) -> String {
        format!("{}:{EDGE_PORT}", self.addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The exit code if it exited by itself since the last look (`Some(None)`:
    /// ended by a signal).
    pub fn exited(&mut self) -> Option<Option<i32>> {
        let st = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        self.stopped = false;
        Some(st.code())
    }
}

/// The edge simulator process, driven through `--control`.
#[derive(Debug)]
pub struct Edges {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
    pub log: PathBuf,
}

/// A mounted tmpfs; unmounted on drop.
#[derive(Debug)]
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Servers, edges and their files for one schedule.
#[derive(Debug)]
pub struct Deployment {
    pub dir: PathBuf,
    pub exe: PathBuf,
    pub token_file: PathBuf,
    pub servers: [Server; 2],
    pub edges: Option<Edges>,
    // Declared last: unmounted after the processes are gone.
    _disks: Vec<Tmpfs>,
}

fn config_text(name: &str, addr: &str, policy: Policy) -> String {
    format!(
        "name = \"{name}\"\n\
         data_dir = \"disk-{name}/data\"\n\
         admin_listen = \"{addr}:{ADMIN_PORT}\"\n\
         peer_listen = \"{addr}:{PEER_PORT}\"\n\
         edge_listen = \"{addr}:{EDGE_PORT}\"\n\
         tls_dir = \"certs\"\n\
         admin_token_file = \"certs/admin.token\"\n\
         \n\
         [replication]\n\
         on_standby_loss = \"{}\"\n\
         standby_grace_ms = {STANDBY_GRACE_MS}\n\
         peer_heartbeat_interval_ms = 200\n\
         peer_failure_threshold = 3\n\
         \n\
         [edges]\n\
         heartbeat_interval_ms = {HEARTBEAT_INTERVAL_MS}\n\
         contact_save_interval_ms = 1000\n\
         \n\
         [limits]\n\
         write_timeout_ms = {WRITE_TIMEOUT_MS}\n",
        policy.as_str()
    )
}

impl Deployment {
    /// Certificates, configs and tmpfs mounts in `dir` (which must exist).
    pub fn create(lab: &Lab, exe: &Path, dir: &Path, policy: Policy) -> Result<Deployment> {
        let certs = dir.join("certs");
        let specs: Vec<ServerSpec> = [Host::A, Host::B]
            .iter()
            .zip(["a", "b"])
            .map(|(h, n)| ServerSpec {
                name: n.to_string(),
                sans: vec![lab.addr(*h)],
            })
            .collect();
        vcodr_server::cli::certs_init(&certs, &specs, &[])?;
        let token_file = certs.join("admin.token");
        let mut disks = Vec::new();
        let mut make = |host: Host, name: &'static str| -> Result<Server> {
            let addr = lab.addr(host);
            let config = dir.join(format!("{name}.toml"));
            std::fs::write(&config, config_text(name, &addr, policy))
                .with_context(|| format!("writing {}", config.display()))?;
            let disk = dir.join(format!("disk-{name}"));
            std::fs::create_dir_all(&disk)?;
            let st = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={DISK_SIZE}"), "tmpfs"])
                .arg(&disk)
                .status()
                .context("running mount")?;
            if !st.success() {
                bail!("mount -t tmpfs at {} failed: {st}", disk.display());
            }
            disks.push(Tmpfs(disk.clone()));
            let client =
                Client::from_files(&format!("https://{addr}:{ADMIN_PORT}"), &token_file, None)?
                    .with_timeout(CLIENT_TIMEOUT);
            Ok(Server {
                name,
                host,
                addr,
                config,
                log: dir.join(format!("{name}.log")),
                disk,
                client,
                child: None,
                stopped: false,
            })
        };
        let servers = [make(Host::A, "a")?, make(Host::B, "b")?];
        Ok(Deployment {
            dir: dir.to_path_buf(),
            exe: exe.to_path_buf(),
            token_file,
            servers,
            edges: None,
            _disks: disks,
        })
    }

    /// Starts server `i` and waits for its "serving" line.
    pub async fn start(&mut self, lab: &Lab, i: usize) -> Result<()> {
        let s = &mut self.servers[i];
        if s.child.is_some() {
            bail!("{} is already running", s.name);
        }
        let mut child = spawn_serve(
            lab.command_in(s.host, &self.exe),
            &self.exe,
            &s.config,
            &self.dir,
            &s.log,
        )?;
        let mut lines = line_reader(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
        s.child = Some(child);
        s.stopped = false;
        let deadline = tokio::time::Instant::now() + START_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, lines.recv()).await {
                Ok(Some(l)) if l.contains(" serving ") => break,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    let code = s.exited();
                    self.kill9(i);
                    bail!(
                        "{} did not start within {START_WAIT:?} (exit: {code:?}); log {}:\n{}",
                        self.servers[i].name,
                        self.servers[i].log.display(),
                        tail(&self.servers[i].log, 10)
                    );
                }
            }
        }
        // Keep draining stdout for as long as it runs.
        tokio::spawn(async move { while lines.recv().await.is_some() {} });
        Ok(())
    }

    /// SIGKILL (continues nothing first: a stopped process dies too).
    pub fn kill9(&mut self, i: usize) {
        let s = &mut self.servers[i];
        if let Some(mut c) = s.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        s.stopped = false;
    }

    pub fn signal(&mut self, i: usize, sig: &str) -> Result<()> {
        let s = &mut self.servers[i];
        let pid = s
            .pid()
            .ok_or_else(|| anyhow!("{} is not running", s.name))?;
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()?;
        if !st.success() {
            bail!("kill -{sig} {pid} failed");
        }
        match sig {
            "STOP" => s.stopped = true,
            "CONT" => s.stopped = false,
            _ => {}
        }
        Ok(())
    }

    /// SIGTERM, then waits up to `timeout` for the exit (SIGKILL after it).
    pub async fn stop(&mut self, i: usize, timeout: Duration) -> Result<Option<i32>> {
        if !self.servers[i].running() {
            return Ok(None);
        }
        if self.servers[i].stopped {
            self.signal(i, "CONT")?;
        }
        self.signal(i, "TERM")?;
        match self.wait_exit(i, timeout).await {
            Ok(code) => Ok(code),
            Err(e) => {
                self.kill9(i);
                Err(e)
            }
        }
    }

    /// The storage file of server `i` (read it only once the server stopped).
    pub fn storage_file(&self, i: usize) -> PathBuf {
        self.servers[i].disk.join("data").join("vcodr.redb")
    }

    /// Waits up to `timeout` for server `i` to exit by itself.
    pub async fn wait_exit(&mut self, i: usize, timeout: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.servers[i].running() {
                bail!("{} is not running", self.servers[i].name);
            }
            if let Some(code) = self.servers[i].exited() {
                return Ok(code);
            }
            if Instant::now() > deadline {
                bail!("{} still runs {timeout:?} later", self.servers[i].name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fills server `i`'s tmpfs beside its data; returns the filler's path.
    pub fn fill_disk(&self, i: usize) -> Result<PathBuf> {
        let path = self.servers[i].disk.join("filler");
        let mut f = std::fs::File::create(&path)?;
        let chunk = vec![0xa5u8; 64 * 1024];
        // A 64 MiB tmpfs holds at most 1,024 chunks.
        for _ in 0..4_096 {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => return Err(e).with_context(|| format!("filling {}", path.display())),
            }
        }
        Ok(path)
    }

    /// Starts the edge simulator (in its namespace) and returns when it runs.
    pub fn start_edges(&mut self, lab: &Lab) -> Result<()> {
        let log_path = self.dir.join("edges.log");
        let log = std::fs::File::create(&log_path)?;
        let servers = format!(
            "{},{}",
            self.servers[0].edge_address(),
            self.servers[1].edge_address()
        );
        let mut child = lab
            .command_in(Host::Edges, &self.exe)
            .args(["edge-sim", "--servers", &servers, "--certs", "certs"])
            .args(["--count", &EDGES.to_string()])
            .args(["--heartbeat-ms", &HEARTBEAT_INTERVAL_MS.to_string()])
            .args(["--sample-interval-ms", &SAMPLE_INTERVAL_MS.to_string()])
            .args(["--cache-bytes", &EDGE_CACHE_BYTES.to_string()])
            .args(["--gateway-every", "3", "--control"])
            .current_dir(&self.dir)
            .env(
                "RUST_LOG",
                std::env::var("VCODR_DRILL_EDGE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting edge-sim")?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let lines = line_reader(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
        self.edges = Some(Edges {
            child,
            stdin,
            lines,
            log: log_path,
        });
        Ok(())
    }

    /// Sends one `--control` command and returns its JSON answer.
    pub async fn edges_command(&mut self, command: &str, timeout: Duration) -> Result<Value> {
        let e = self
            .edges
            .as_mut()
            .ok_or_else(|| anyhow!("the edge simulator is not running"))?;
        writeln!(e.stdin, "{command}").context("writing to edge-sim's stdin")?;
        e.stdin.flush()?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, e.lines.recv()).await {
                Ok(Some(l)) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&l) {
                        return Ok(v);
                    }
                }
                Ok(None) => bail!(
                    "edge-sim exited; log {}:\n{}",
                    e.log.display(),
                    tail(&e.log, 10)
                ),
                Err(_) => bail!("edge-sim did not answer {command:?} within {timeout:?}"),
            }
        }
    }

    /// Kills everything this deployment started.
    pub fn kill_all(&mut self) {
        self.kill9(0);
        self.kill9(1);
        if let Some(mut e) = self.edges.take() {
            let _ = e.child.kill();
            let _ = e.child.wait();
        }
    }

    /// Copies each tmpfs' contents beside it (`kept-disk-a`, …), before
    /// the mounts go, so that a failed drill's data can be looked at.
    pub fn keep_disks(&self) {
        for s in &self.servers {
            let to = self.dir.join(format!("kept-disk-{}", s.name));
            let _ = Command::new("cp").arg("-a").arg(&s.disk).arg(&to).status();
            let _ = std::fs::remove_file(to.join("filler"));
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The lines `r` produces, as they come.
fn line_reader(r: impl std::io::Read + Send + 'static) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
