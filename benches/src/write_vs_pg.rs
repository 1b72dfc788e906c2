//! `write-vs-pg`: sync-replicated configuration writes of a real vcodr pair
//! against the PostgreSQL anchor (`pg_sync_repl.sh`), on this machine, in one table.
//!
//! The pair is two `vcodr serve` processes on loopback started by
//! [`ProcCluster`] with `on_standby_loss = "block"`: a write is acknowledged
//! only once durable on both. Each writer has its own keep-alive HTTPS
//! connection ([`Writer`]: HTTP/1.1 over the admin [`Client`]'s TLS) and
//! sends `configuration/put` of a 200-byte JSON string back to back for the
//! run's duration.
//!
//! The anchor runs afterwards (it waits for a quiet machine before each of
//! its runs); its `SUMMARY` rows for `synchronous_commit = on` at 1 and 16
//! clients are parsed by [`parse_anchor`] and set beside ours.

use crate::floor::HttpsFloor;
use crate::machine::{current_tid, ms, percentile, proc_now, render_table, thread_run_s};
use anyhow::{bail, Context};
use clap::Parser;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vcodr_core::Method;
use vcodr_server::api::admin::PORTAL_PATH;
use vcodr_server::ctl::Client;
use vcodr_server::tools::cluster::{temp_dir, ProcCluster};

/// Where the PostgreSQL anchor lives on the project's machines.
pub const DEFAULT_ANCHOR: &str = "/work/shared/anchors/pg_sync_repl.sh";
/// Bytes of the value each `configuration/put` writes (as the anchor's rows).
pub const VALUE_BYTES: usize = 200;
/// Keys each writer cycles through (the anchor upserts into 10,000 keys).
pub const KEYS_PER_WRITER: u64 = 10_000;
/// Writes one writer sends in one run at most, whatever the duration.
pub const WRITES_PER_WRITER_MAX: u64 = 10_000_000;
/// Warm-up before the measured runs (writers, duration): unreported.
pub const WARM_UP: (usize, Duration) = (16, Duration::from_secs(2));

/// Sync-replicated writes of a real vcodr pair against PostgreSQL's synchronous replication.
#[derive(Debug, Clone, PartialEq, Parser)]
#[command(name = "write-vs-pg")]
pub struct Args {
    /// The `vcodr` binary [default: `vcodr` beside this program, else
    /// target/release/vcodr in the workspace]. Build it first with
    /// `cargo build --release -p vcodr-server`.
    #[arg(long, value_name = "PATH")]
    pub vcodr: Option<PathBuf>,
    /// Seconds per run (each writer count; PostgreSQL's DUR too).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,
    /// Writer counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16, 64],
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub writers: Vec<u16>,
    /// Skip the PostgreSQL anchor.
    #[arg(long)]
    pub no_pg: bool,
    /// Skip the HTTPS floor and the thread hand-off timing ([`crate::floor`]).
    #[arg(long)]
    pub no_floor: bool,
    /// The PostgreSQL anchor script (run with bash; it installs PostgreSQL through apt when missing).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_ANCHOR)]
    pub pg_anchor: PathBuf,
    /// Rounds of the anchor (its REPS; it reports the median).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    pub pg_reps: u64,
}

/// Finds the `vcodr` binary: `explicit` (which must exist), else `vcodr`
/// beside `self_exe` (the same cargo target directory), else
/// `workspace/target/release/vcodr`.
pub fn find_vcodr(
    explicit: Option<&Path>,
    self_exe: &Path,
    workspace: &Path,
) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("--vcodr {}: no such file", p.display());
        }
        return Ok(p.to_path_buf());
    }
    let beside = self_exe.with_file_name("vcodr");
    let in_workspace = workspace.join("target/release/vcodr");
    for candidate in [&beside, &in_workspace] {
        if candidate.is_file() {
            return Ok(candidate.clone());
        }
    }
    bail!(
        "no vcodr binary at {} nor {}: build it with `cargo build --release -p vcodr-server` \
         (with the same CARGO_TARGET_DIR as this program), or pass --vcodr PATH",
        beside.display(),
        in_workspace.display()
    )
}

/// One measured run of the load generator: on the vcodr pair, or on the
/// [`HttpsFloor`] ([`run_floor`]).
#[derive(Debug, Clone, PartialEq)]
pub struct VcodrRun {
    pub writers: usize,
    /// Acknowledged writes per second.
    pub writes_per_s: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// The tail beyond p99: storage stalls (a checkpoint, a new log segment) show here.
    pub p999: Duration,
    pub max: Duration,
    /// Calls that failed (transport or JSON-RPC error).
    pub errors: u64,
    /// The first failure's message, to say why.
    pub first_error: Option<String>,
    /// CPU per acknowledged write, in µs, over the run: of the active, the
    /// standby and the load generator (this process; utime + stime); on the
    /// floor, of its thread, none, and the load generator's thread (run time).
    pub cpu_us_per_write: [f64; 3],
}

/// A row of the anchor's `SUMMARY` (one `synchronous_commit` mode at one client count).
#[derive(Debug, Clone, PartialEq)]
pub struct PgRow {
    pub mode: String,
    pub clients: usize,
    pub tps: f64,
    pub avg_latency_ms: f64,
    /// Rounds the median is over; ends in `*` when every round was noisy.
    pub rounds: String,
}

/// What the anchor gave.
#[derive(Debug, Clone, PartialEq)]
pub enum PgOutcome {
    /// `--no-pg`.
    Skipped,
    /// The anchor did not run to the end, or its output did not parse: why.
    Failed(String),
    /// Its `synchronous_commit = on` rows and its `PostgreSQL:` version line.
    Measured { version: String, rows: Vec<PgRow> },
}

/// Parses the anchor's output: the `PostgreSQL:` line and the rows of the
/// `SUMMARY` section for `synchronous_commit = on`. The rows are printed by
/// `printf "%-18s %7s %10.1f %11.3f %6s %10.1f..%-10.1f\n", mode, clients, TPS, avg_lat_ms, n, min, max`.
pub fn parse_anchor(text: &str) -> anyhow::Result<(String, Vec<PgRow>)> {
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("PostgreSQL: "))
        .map(str::trim)
        .unwrap_or("unknown version")
        .to_string();
    let mut lines = text.lines().skip_while(|l| !l.starts_with("SUMMARY:"));
    if lines.next().is_none() {
        bail!("the anchor's output has no SUMMARY section");
    }
    let mut rows = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() != Some(&"on") {
            continue;
        }
        if f.len() != 6 || !f[5].contains("..") {
            bail!("SUMMARY row {line:?}: expected mode, clients, TPS, avg_lat_ms, n, min..max");
        }
        let num = |i: usize, what: &str| -> anyhow::Result<f64> {
            f[i].parse::<f64>()
                .with_context(|| format!("SUMMARY row {line:?}: {what} {:?}", f[i]))
        };
        rows.push(PgRow {
            mode: f[0].to_string(),
            clients: f[1]
                .parse()
                .with_context(|| format!("SUMMARY row {line:?}: clients {:?}", f[1]))?,
            tps: num(2, "TPS")?,
            avg_latency_ms: num(3, "avg_lat_ms")?,
            rounds: f[4].to_string(),
        });
    }
    if rows.is_empty() {
        bail!("the anchor's SUMMARY has no synchronous_commit = on rows");
    }
    Ok((version, rows))
}

/// The one table: writers | vcodr writes/s (p50/p99 ms) | errors |
/// PostgreSQL TPS (avg ms) | ratio | CPU per write, and, when the floor ran
/// (`floor`, one per run, in order), the HTTPS floor back to back and at
/// the pair's rate.
pub fn render(runs: &[VcodrRun], floor: &[FloorRun], pg: &PgOutcome) -> String {
    let mut header = vec![
        "writers".to_string(),
        "vcodr writes/s (p50/p99 ms)".to_string(),
        "errors".to_string(),
        "PostgreSQL TPS (avg ms)".to_string(),
        "ratio vcodr/PG".to_string(),
        "CPU µs/write (active/standby/load)".to_string(),
    ];
    if !floor.is_empty() {
        header.push("HTTPS floor calls/s (CPU µs/call server/load)".to_string());
        header.push("HTTPS floor at the pair's rate".to_string());
    }
    let bare = |f: &VcodrRun| {
        format!(
            "{:.1} ({:.0}/{:.0})",
            f.writes_per_s, f.cpu_us_per_write[0], f.cpu_us_per_write[2]
        )
    };
    let mut rows = vec![header];
    for (i, r) in runs.iter().enumerate() {
        let ours = format!("{:.1} ({}/{})", r.writes_per_s, ms(r.p50), ms(r.p99));
        let (theirs, ratio) = match pg {
            PgOutcome::Skipped => ("skipped (--no-pg)".to_string(), "-".to_string()),
            PgOutcome::Failed(_) => ("anchor failed".to_string(), "-".to_string()),
            PgOutcome::Measured { rows, .. } => {
                match rows.iter().find(|p| p.clients == r.writers) {
                    Some(p) => {
                        let noisy = if p.rounds.ends_with('*') {
                            " noisy"
                        } else {
                            ""
                        };
                        (
                            format!("{:.1} ({:.3}){noisy}", p.tps, p.avg_latency_ms),
                            format!("{:.2}", r.writes_per_s / p.tps),
                        )
                    }
                    None => ("not in the anchor".to_string(), "-".to_string()),
                }
            }
        };
        rows.push(vec![
            r.writers.to_string(),
            ours,
            r.errors.to_string(),
            theirs,
            ratio,
            r.cpu_us_per_write.map(|c| format!("{c:.0}")).join("/"),
        ]);
        if let Some(f) = floor.get(i) {
            let row = rows.last_mut().expect("the row just pushed");
            row.push(bare(&f.full));
            row.push(bare(&f.paced));
        }
    }
    render_table(&rows)
}

/// Starts the pair in a fresh temp dir, pairs it, warms up, runs each writer
/// count for `duration`, checks the standby acknowledged everything, stops it.
pub async fn run_vcodr(
    exe: &Path,
    writer_counts: &[usize],
    duration: Duration,
) -> anyhow::Result<(Vec<VcodrRun>, String)> {
    let dir = temp_dir("vcodr-write-vs-pg")?;
    let extra = "[replication]\non_standby_loss = \"block\"\n";
    let mut cluster = ProcCluster::create(exe, &dir, &["a", "b"], extra)?;
    let result = async {
        cluster.start(0)?;
        cluster.start(1)?;
        cluster.pair(0, 1, Duration::from_secs(30)).await?;
        run_writers(&cluster, WARM_UP.0, WARM_UP.1).await?;
        let mut runs = Vec::new();
        for &writers in writer_counts {
            let run = run_writers(&cluster, writers, duration).await?;
            eprintln!(
                "vcodr {writers:>3} writers: {:.1} writes/s, p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms, {} errors, \
                 CPU µs per write {:.0} active / {:.0} standby / {:.0} load{}",
                run.writes_per_s,
                ms(run.p50),
                ms(run.p99),
                ms(run.p999),
                ms(run.max),
                run.errors,
                run.cpu_us_per_write[0],
                run.cpu_us_per_write[1],
                run.cpu_us_per_write[2],
                run.first_error
                    .as_deref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            );
            runs.push(run);
        }
        let st = cluster.client(0).status().await?;
        let status = format!(
            "active {} / {}, commit index {}, standby acked {}",
            st["role"],
            st["drState"],
            st["replication"]["commitIndex"],
            st["replication"]["standbyAckedIndex"]
        );
        anyhow::Ok((runs, status))
    }
    .await;
    cluster.stop_all();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The [`HttpsFloor`] under the writers of each of the pair's `runs`:
/// back to back (what it can answer), then paced to that run's rate (what
/// the same calls cost when they come as often as the pair's writes).
#[derive(Debug, Clone, PartialEq)]
pub struct FloorRun {
    pub full: VcodrRun,
    pub paced: VcodrRun,
}

/// Runs the [`HttpsFloor`] in this process, at a port of its own, for each
/// of the pair's `runs` ([`FloorRun`], `duration` each) after `warm_up`
/// (writers, duration). On a current-thread runtime only: the load
/// generator's CPU is this thread's. A call that fails fails the floor.
pub async fn run_floor(
    exe: &Path,
    runs: &[VcodrRun],
    duration: Duration,
    warm_up: (usize, Duration),
) -> anyhow::Result<Vec<FloorRun>> {
    if tokio::runtime::Handle::current().runtime_flavor()
        != tokio::runtime::RuntimeFlavor::CurrentThread
    {
        bail!("the HTTPS floor counts the load generator as this thread: run it on a current-thread runtime");
    }
    let dir = temp_dir("vcodr-https-floor")?;
    let result = async {
        // The cluster's certificates, token and admin address; no server is started.
        let cluster = ProcCluster::create(exe, &dir, &["a"], "")?;
        let client = cluster.client(0);
        let addr = client
            .address
            .parse()
            .with_context(|| format!("the admin address {}", client.address))?;
        let floor = HttpsFloor::start(&cluster.certs, "a", addr)?;
        let load = current_tid();
        let cpu = || [floor.cpu_s(), 0.0, thread_run_s(load).unwrap_or(f64::NAN)];
        let measured = |run: VcodrRun, how: &str| -> anyhow::Result<VcodrRun> {
            eprintln!(
                "HTTPS floor {:>3} writers {how}: {:.1} calls/s, p50 {} ms, p99 {} ms, \
                 CPU µs per call {:.1} server / {:.1} load",
                run.writers,
                run.writes_per_s,
                ms(run.p50),
                ms(run.p99),
                run.cpu_us_per_write[0],
                run.cpu_us_per_write[2],
            );
            match &run.first_error {
                Some(e) => bail!("{} of its calls failed, the first: {e}", run.errors),
                None => Ok(run),
            }
        };
        drive(client, warm_up.0, warm_up.1, None, cpu).await?;
        let mut out = Vec::new();
        for pair in runs {
            let full = drive(client, pair.writers, duration, None, cpu).await?;
            let full = measured(full, "back to back")?;
            let period = Duration::from_secs_f64(pair.writers as f64 / pair.writes_per_s.max(1.0));
            let paced = drive(client, pair.writers, duration, Some(period), cpu).await?;
            let paced = measured(paced, "at the pair's rate")?;
            out.push(FloorRun { full, paced });
        }
        anyhow::Ok(out)
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result.context("the HTTPS floor")
}

/// `writers` concurrent writers on the pair's active ([`drive`]), with the
/// CPU of the active, the standby and this process.
async fn run_writers(
    cluster: &ProcCluster,
    writers: usize,
    duration: Duration,
) -> anyhow::Result<VcodrRun> {
    let pids = [
        cluster.servers[0].pid().unwrap_or(0),
        cluster.servers[1].pid().unwrap_or(0),
        std::process::id(),
    ];
    drive(cluster.client(0), writers, duration, None, || {
        pids.map(|p| proc_now(p).cpu_s)
    })
    .await
}

/// `writers` concurrent writers, each on its own keep-alive connection
/// ([`Writer`]) to `client`'s server, for `duration`, back to back or, with
/// `pace`, each starting a call at most every `pace`; `cpu` gives the CPU
/// seconds of the three parties the run reports per write.
async fn drive(
    client: &Client,
    writers: usize,
    duration: Duration,
    pace: Option<Duration>,
    cpu: impl Fn() -> [f64; 3],
) -> anyhow::Result<VcodrRun> {
    let mut conns = Vec::with_capacity(writers);
    for _ in 0..writers {
        conns.push(Writer::connect(client).await?);
    }
    let cpu_before = cpu();
    let start = Instant::now();
    let stop = start + duration;
    let mut tasks = Vec::with_capacity(writers);
    for (w, conn) in conns.into_iter().enumerate() {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Some(conn);
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut first_error = None;
            let mut i = 0u64;
            while Instant::now() < stop && i < WRITES_PER_WRITER_MAX {
                if let Some(period) = pace {
                    // Call i starts no earlier than its slot (`period` apart per writer).
                    let slot = start + period.mul_f64(i as f64);
                    tokio::time::sleep_until(slot.into()).await;
                }
                let key = format!("load/{w}/{}", i % KEYS_PER_WRITER);
                let value = value_of(w, i);
                i += 1;
                // The last write broke or closed the connection: a new one,
                // outside the write's latency.
                let c = match conn.take() {
                    Some(c) => c,
                    None => match Writer::connect(&client).await {
                        Ok(c) => c,
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                            continue;
                        }
                    },
                };
                let c = conn.insert(c);
                let t0 = Instant::now();
                let done = tokio::time::timeout(CALL_TIMEOUT, c.put(i - 1, &key, &value))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {CALL_TIMEOUT:?}")));
                match done {
                    Ok(keep) => {
                        latencies.push(t0.elapsed());
                        if !keep {
                            conn = None;
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        conn = None;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            (latencies, errors, first_error)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        let (l, e, f) = t.await.context("a writer task panicked")?;
        all.extend(l);
        errors += e;
        first_error = first_error.or(f);
    }
    let took = start.elapsed();
    let acked = all.len().max(1) as f64;
    let cpu_after = cpu();
    let cpu_us_per_write = std::array::from_fn(|i| (cpu_after[i] - cpu_before[i]) * 1e6 / acked);
    all.sort_unstable();
    Ok(VcodrRun {
        writers,
        writes_per_s: all.len() as f64 / took.as_secs_f64(),
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
        p999: percentile(&all, 0.999),
        max: all.last().copied().unwrap_or_default(),
        errors,
        first_error,
        cpu_us_per_write,
    })
}

/// The value of write `i` of writer `w`: a JSON string of [`VALUE_BYTES`] bytes, different each time.
pub fn value_of(w: usize, i: u64) -> String {
    let mut v = format!("w{w}-i{i}-");
    v.extend(std::iter::repeat_n(
        'x',
        VALUE_BYTES.saturating_sub(v.len()),
    ));
    v.truncate(VALUE_BYTES);
    v
}

/// One writer's keep-alive HTTPS connection, speaking HTTP/1.1 itself:
/// the load generator shares the two cores with the pair, and the admin
/// [`Client`] (hyper's connection task, a timeout and a pool per call, a
/// JSON tree per request) cost it more CPU per write than the servers'
/// whole admin path. The request is the one [`Client::call`] sends.
struct Writer {
    io: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    /// The request head up to its `Content-Length` value.
    head: String,
    buf: Vec<u8>,
}

impl Writer {
    async fn connect(client: &Client) -> anyhow::Result<Writer> {
        Ok(Writer {
            io: client.tls_stream().await?,
            head: format!(
                "POST {PORTAL_PATH} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
                 authorization: {}\r\ncontent-length: ",
                client.address,
                client.authorization()
            ),
            buf: Vec::with_capacity(4096),
        })
    }

    /// `configuration/put` of `key` = `value` (JSON strings) as JSON-RPC
    /// call `id`: whether the connection stays open (the server may close
    /// it after its answer); an error names what the server answered
    /// instead of a result.
    async fn put(&mut self, id: u64, key: &str, value: &str) -> anyhow::Result<bool> {
        use tokio::io::AsyncWriteExt;
        let body = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"{}\",\
             \"params\":{{\"key\":{},\"value\":{}}}}}",
            Method::ConfigurationPut.name(),
            serde_json::to_string(key)?,
            serde_json::to_string(value)?
        );
        let mut request = Vec::with_capacity(self.head.len() + body.len() + 16);
        request.extend_from_slice(self.head.as_bytes());
        request.extend_from_slice(format!("{}\r\n\r\n", body.len()).as_bytes());
        request.extend_from_slice(body.as_bytes());
        self.io.write_all(&request).await?;
        self.io.flush().await?;
        self.buf.clear();
        let (status, body_at, body_len, close) = loop {
            if let Some(head) = parse_head(&self.buf)? {
                break head;
            }
            read_more(&mut self.io, &mut self.buf).await?;
        };
        while self.buf.len() < body_at + body_len {
            read_more(&mut self.io, &mut self.buf).await?;
        }
        let body = &self.buf[body_at..body_at + body_len];
        let v: serde_json::Value = serde_json::from_slice(body)
            .with_context(|| format!("HTTP {status}: the body is not JSON"))?;
        match (status, v.get("result"), v.get("error")) {
            (200, Some(_), None) => Ok(!close),
            _ => bail!("HTTP {status}: {v}"),
        }
    }
}

/// Reads what the server sent next onto `buf`; the end of the stream is an error.
async fn read_more(
    io: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    let n = io.read(&mut chunk).await?;
    if n == 0 {
        bail!("the server closed the connection mid-response");
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// How long a writer waits for one answer: a stalled server counts as an
/// error instead of stopping the run.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Most bytes of a response head [`parse_head`] waits for.
const HEAD_MAX: usize = 16 * 1024;

/// The status, where the body starts, its length and whether the server
/// closes the connection after it, once `buf` holds a whole response head
/// (`None` before); a head without `content-length` (or chunked) is
/// refused, as the admin API always sends one.
fn parse_head(buf: &[u8]) -> anyhow::Result<Option<(u16, usize, usize, bool)>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > HEAD_MAX {
            bail!("no end of the response head in {HEAD_MAX} bytes");
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).context("a response head that is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = match status_line.split(' ').collect::<Vec<_>>()[..] {
        ["HTTP/1.1", code, ..] => code
            .parse::<u16>()
            .with_context(|| format!("status line {status_line:?}"))?,
        _ => bail!("not an HTTP/1.1 status line: {status_line:?}"),
    };
    let mut length = None;
    let mut close = false;
    for line in lines {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .trim()
                    .parse::<usize>()
                    .with_context(|| format!("header {line:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("connection") {
            close |= value.trim().eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("HTTP {status} with {line:?}: only content-length bodies are read");
        }
    }
    match length {
        Some(len) => Ok(Some((status, end + 4, len, close))),
        None => bail!("HTTP {status} without content-length"),
    }
}

/// Runs the anchor with `DUR`/`REPS`, echoing its output as it comes
/// (prefixed `pg| `); returns its standard output, or why it failed.
pub fn run_anchor(script: &Path, seconds: u64, reps: u64) -> anyhow::Result<String> {
    if !script.is_file() {
        bail!(
            "the PostgreSQL anchor {} does not exist (give --pg-anchor PATH, or --no-pg)",
            script.display()
        );
    }
    let mut child = Command::new("bash")
        .arg(script)
        .env("DUR", seconds.to_string())
        .env("REPS", reps.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting bash {}", script.display()))?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let errors = std::thread::spawn(move || {
        let mut kept = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("pg! {line}");
            kept.push(line);
        }
        kept
    });
    let mut out = String::new();
    let stdout = child.stdout.take().context("no stdout pipe")?;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        eprintln!("pg| {line}");
        out += &line;
        out.push('\n');
    }
    let status = child.wait()?;
    let err_lines = errors.join().unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = err_lines
            .iter()
            .rev()
            .take(15)
            .rev()
            .map(String::as_str)
            .collect();
        let last_out = out
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        if tail.is_empty() {
            // Under `set -e` a failing test inside a function ends the
            // script without a word (e.g. its quiet-machine wait giving up).
            bail!(
                "{} exited with {status} without any error output; its last output line: {last_out:?}",
                script.display()
            );
        }
        bail!(
            "{} exited with {status}; its last output line: {last_out:?}; its last error lines:\n{}",
            script.display(),
            tail.join("\n")
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("write-vs-pg").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_15_seconds_at_1_16_64_writers_with_the_anchor() {
        let a = parse(&[]).unwrap();
        assert_eq!(
            a,
            Args {
                vcodr: None,
                seconds: 15,
                writers: vec![1, 16, 64],
                no_pg: false,
                no_floor: false,
                pg_anchor: PathBuf::from(DEFAULT_ANCHOR),
                pg_reps: 3,
            }
        );
    }

    #[test]
    fn every_option_is_read() {
        let a = parse(&[
            "--vcodr",
            "/x/vcodr",
            "--seconds",
            "3",
            "--writers",
            "2,8",
            "--no-pg",
            "--no-floor",
            "--pg-reps",
            "1",
        ])
        .unwrap();
        assert_eq!(a.vcodr, Some(PathBuf::from("/x/vcodr")));
        assert_eq!(
            (a.seconds, a.writers, a.no_pg, a.no_floor, a.pg_reps),
            (3, vec![2, 8], true, true, 1)
        );
    }

    #[test]
    fn bad_arguments_are_refused_naming_the_option() {
        for (args, needle) in [
            (&["--seconds", "0"][..], "--seconds"),
            (&["--seconds", "ten"][..], "--seconds"),
            (&["--writers", "1,0"][..], "--writers"),
            (&["--writers", "300"][..], "--writers"),
            (&["--pg-reps", "0"][..], "--pg-reps"),
            (&["--frobnicate"][..], "--frobnicate"),
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn the_binary_is_found_or_the_error_says_how_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("target/release");
        std::fs::create_dir_all(&release).unwrap();
        let self_exe = dir.path().join("other/release/write-vs-pg");
        let e = find_vcodr(None, &self_exe, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cargo build --release -p vcodr-server") && e.contains("--vcodr"),
            "{e}"
        );
        std::fs::write(release.join("vcodr"), b"").unwrap();
        assert_eq!(
            find_vcodr(None, &self_exe, dir.path()).unwrap(),
            release.join("vcodr")
        );
        // Beside this program wins over the workspace default.
        std::fs::create_dir_all(self_exe.parent().unwrap()).unwrap();
        std::fs::write(self_exe.with_file_name("vcodr"), b"").unwrap();
        assert_eq!(
            find_vcodr(None, &self_exe, dir.path()).unwrap(),
            self_exe.with_file_name("vcodr")
        );
        let missing = dir.path().join("nope");
        let e = find_vcodr(Some(&missing), &self_exe, dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--vcodr") && e.contains("nope"), "{e}");
    }

    #[test]
    fn a_response_head_is_read_once_whole_with_its_content_length() {
        let ok =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 42\r\n\r\n{";
        assert_eq!(
            parse_head(ok).unwrap(),
            Some((200, ok.len() - 1, 42, false))
        );
        // Not all there yet.
        assert_eq!(parse_head(&ok[..20]).unwrap(), None);
        assert_eq!(
            parse_head(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nConnection: close\r\n\r\n")
                .unwrap(),
            Some((503, 74, 0, true))
        );
        let refused = |head: &[u8]| parse_head(head).unwrap_err().to_string();
        assert_eq!(
            refused(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
            "HTTP 200 with \"transfer-encoding: chunked\": only content-length bodies are read"
        );
        assert_eq!(
            refused(b"HTTP/1.1 200 OK\r\n\r\n"),
            "HTTP 200 without content-length"
        );
        assert_eq!(
            refused(b"SSH-2.0-OpenSSH\r\n\r\n"),
            "not an HTTP/1.1 status line: \"SSH-2.0-OpenSSH\""
        );
        assert_eq!(
            refused(&vec![b'x'; HEAD_MAX + 1]),
            format!("no end of the response head in {HEAD_MAX} bytes")
        );
    }

    /// The load generator, its response parser and the floor agree: every
    /// put is answered, none fails, the floor's CPU is counted, and the
    /// paced run keeps to the rate it was given.
    #[tokio::test(flavor = "current_thread")]
    async fn the_load_generator_drives_the_https_floor_back_to_back_and_paced() {
        let exe = std::env::current_exe().unwrap();
        let pair = [run(1, 200.0), run(4, 400.0)];
        let warm_up = (2, Duration::from_millis(100));
        let floor = run_floor(&exe, &pair, Duration::from_millis(500), warm_up)
            .await
            .unwrap();
        assert_eq!(floor.len(), 2);
        for (f, p) in floor.iter().zip(&pair) {
            for r in [&f.full, &f.paced] {
                assert!(
                    r.writers == p.writers && r.errors == 0 && r.cpu_us_per_write[0] > 0.0,
                    "{r:?}"
                );
            }
            // At most one call per slot: never faster than the pair's rate.
            assert!(
                f.paced.writes_per_s <= p.writes_per_s * 1.1,
                "{:?}",
                f.paced
            );
        }
    }

    #[test]
    fn values_are_200_bytes_and_differ() {
        assert_eq!(value_of(0, 0).len(), VALUE_BYTES);
        assert_eq!(value_of(63, 9_999_999).len(), VALUE_BYTES);
        assert_ne!(value_of(1, 2), value_of(2, 1));
    }

    /// The SUMMARY section as the anchor's awk printf writes it.
    fn anchor_output(on_16: &str) -> String {
        let row = |m: &str, c: u32, t: f64, l: f64, n: &str, lo: f64, hi: f64| {
            format!("{m:<18} {c:>7} {t:>10.1} {l:>11.3} {n:>6} {lo:>10.1}..{hi:<10.1}\n")
        };
        let mut s = String::from(
            "PostgreSQL: postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)\n\
             primary:  fsync=on ...\n\n\
             round synchronous_commit clients        TPS  avg_lat_ms other_cpu%\n\
             1     on                       1     2012.3       0.496          3\n\n\
             SUMMARY: median of rounds with other_cpu <= 25% (all rounds, marked *, if none);\n\
             (lower median for even n); latency is from the median-TPS round; min..max over all rounds\n\
             synchronous_commit clients        TPS  avg_lat_ms      n         TPS min..max\n",
        );
        s += &row("on", 1, 2012.3, 0.496, "3", 1990.0, 2030.4);
        s += on_16;
        s += &row("remote_apply", 1, 1900.0, 0.52, "3", 1800.0, 1950.0);
        s += &row("local", 16, 30000.0, 0.5, "3", 29000.0, 31000.0);
        s += "\nstandby rows: 10000 (primary: 10000)\ntotal run time: 300 s\n";
        s
    }

    #[test]
    fn the_anchor_summary_is_parsed_on_rows_only() {
        let on_16 = format!(
            "{:<18} {:>7} {:>10.1} {:>11.3} {:>6} {:>10.1}..{:<10.1}\n",
            "on", 16, 11034.25, 1.431, "2*", 10000.0, 12000.0
        );
        let (version, rows) = parse_anchor(&anchor_output(&on_16)).unwrap();
        assert_eq!(
            version,
            "postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"
        );
        assert_eq!(
            rows,
            vec![
                PgRow {
                    mode: "on".into(),
                    clients: 1,
                    tps: 2012.3,
                    avg_latency_ms: 0.496,
                    rounds: "3".into()
                },
                PgRow {
                    mode: "on".into(),
                    clients: 16,
                    tps: 11034.2,
                    avg_latency_ms: 1.431,
                    rounds: "2*".into()
                },
            ]
        );
    }

    #[test]
    fn anchor_output_without_a_summary_or_with_a_bad_row_is_an_error() {
        let e = parse_anchor("PostgreSQL: x\nround ...\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no SUMMARY"), "{e}");
        let e = parse_anchor(&anchor_output("on 16 fast 1.0 3 1..2\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("TPS \"fast\""), "{e}");
    }

    fn run(writers: usize, per_s: f64) -> VcodrRun {
        VcodrRun {
            writers,
            writes_per_s: per_s,
            p50: Duration::from_micros(812),
            p99: Duration::from_micros(2_345),
            p999: Duration::from_micros(3_456),
            max: Duration::from_micros(4_567),
            errors: 0,
            first_error: None,
            cpu_us_per_write: [175.4, 99.6, 60.0],
        }
    }

    #[test]
    fn the_table_sets_each_writer_count_beside_the_anchor() {
        let pg = PgOutcome::Measured {
            version: "15".into(),
            rows: vec![
                PgRow {
                    mode: "on".into(),
                    clients: 1,
                    tps: 2000.0,
                    avg_latency_ms: 0.5,
                    rounds: "3".into(),
                },
                PgRow {
                    mode: "on".into(),
                    clients: 16,
                    tps: 11000.0,
                    avg_latency_ms: 1.43,
                    rounds: "3*".into(),
                },
            ],
        };
        let runs = [run(1, 1000.0), run(16, 5500.0), run(64, 9000.0)];
        assert_eq!(
            render(&runs, &[], &pg),
            "\
writers | vcodr writes/s (p50/p99 ms) | errors | PostgreSQL TPS (avg ms) | ratio vcodr/PG | CPU µs/write (active/standby/load)
--------|-----------------------------|--------|-------------------------|----------------|-----------------------------------
1       |        1000.0 (0.812/2.345) |      0 |          2000.0 (0.500) |           0.50 |                         175/100/60
16      |        5500.0 (0.812/2.345) |      0 |   11000.0 (1.430) noisy |           0.50 |                         175/100/60
64      |        9000.0 (0.812/2.345) |      0 |       not in the anchor |              - |                         175/100/60
"
        );
        let floor = [
            FloorRun {
                full: run(1, 6000.0),
                paced: run(1, 1000.0),
            },
            FloorRun {
                full: run(16, 50000.0),
                paced: run(16, 5500.0),
            },
        ];
        let with_floor = render(&runs[..2], &floor, &pg);
        assert_eq!(
            with_floor
                .lines()
                .map(|l| l
                    .split(" | ")
                    .skip(6)
                    .collect::<Vec<_>>()
                    .join(" | ")
                    .trim()
                    .to_string())
                .collect::<Vec<_>>(),
            [
                "HTTPS floor calls/s (CPU µs/call server/load) | HTTPS floor at the pair's rate",
                "",
                "6000.0 (175/60) |                1000.0 (175/60)",
                "50000.0 (175/60) |                5500.0 (175/60)",
            ]
        );
        let skipped = render(&runs[..1], &[], &PgOutcome::Skipped);
        assert!(skipped.contains("skipped (--no-pg)"), "{skipped}");
    }
}
