//! The command line (SPEC §8).

use crate::tools::ctl::{self, ApiError, ArchiveItem, Client};
use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;
use vcodr_core::Method;
use vcodr_transport::certs::ServerSpec;

#[derive(Debug, Parser)]
#[command(
    name = "vcodr",
    version,
    about = "Disaster recovery for an SD-WAN orchestrator: an active/standby pair with RPO 0"
)]
pub struct Cli {
    /// Log lines as `text` or `json`.
    #[arg(long, global = true, default_value = "text")]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// The main job on embedded defaults: a pair, N edges, writes, a failover, a report.
    Demo {
        /// Simulated edges and gateways.
        #[arg(long, default_value_t = 100)]
        edges: usize,
        /// Configuration documents written before the failover.
        #[arg(long, default_value_t = 500)]
        writes: usize,
        /// Concurrent writers.
        #[arg(long, default_value_t = 16)]
        writers: usize,
        /// Leave the pair running at the end and print its URLs, PIDs and
        /// token, until SIGINT (ctrl-c) or SIGTERM.
        #[arg(long)]
        keep_running: bool,
        /// Put the deployment here instead of a temp dir (kept afterwards).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the temp dir (certificates, configs, data, logs) at the end;
        /// by default it is removed, except after a failed run.
        #[arg(long)]
        keep_dir: bool,
    },
    /// Many simulated edges over QUIC, with monitoring traffic.
    EdgeSim {
        /// Edge addresses of the two servers, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        servers: Vec<String>,
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// Directory with ca.pem and ca.key (edges get certificates from this CA).
        #[arg(long, default_value = "certs")]
        certs: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        heartbeat_ms: u64,
        /// One sample per edge every this many ms (0: none).
        #[arg(long, default_value_t = 1_000)]
        sample_interval_ms: u64,
        /// Every Nth client is a gateway (0: none).
        #[arg(long, default_value_t = 10)]
        gateway_every: usize,
        /// Stop after this many seconds (default: until SIGINT/ctrl-c or SIGTERM).
        #[arg(long)]
        duration_s: Option<u64>,
        /// Bind the simulator's UDP sockets here (default: 0.0.0.0:0, or
        /// [::]:0 for IPv6 servers: the OS picks the source address of the
        /// route to each server).
        #[arg(long, value_name = "IP:PORT")]
        bind: Option<std::net::SocketAddr>,
        /// Heartbeat round trips of the first this many seconds (the
        /// connection ramp) are left out of the reported percentiles.
        #[arg(long, default_value_t = 0)]
        warmup_s: u64,
        /// Print the final report as JSON.
        #[arg(long)]
        json: bool,
        /// Monitoring cache per edge, in bytes (when full, the oldest
        /// samples are dropped and counted).
        #[arg(long, default_value_t = 1024 * 1024)]
        cache_bytes: usize,
        /// Take commands from stdin, one a line, each answered with one JSON
        /// line on stdout: `report` (every edge's sample counts), `summary`, `reset-latency` (percentiles start again), `pause`,
        /// `resume` (sample generation), `stop`. Stops when stdin closes.
        /// For harnesses such as the fault drills.
        #[arg(long)]
        control: bool,
        /// Who drives the edges' QUIC connections: hub (one task per UDP
        /// socket) or quinn (a task per connection).
        #[arg(long, default_value = "hub", value_parser = crate::serve::config::parse_quic_driver)]
        quic_driver: vcodr_transport::QuicDriver,
    },
    /// Run one server.
    Serve {
        /// The server's TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Make certificates and the admin token.
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
    /// Talk to a server's admin API.
    Ctl(CtlArgs),
}

#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// A deployment CA, a certificate for each server, edge and gateway, and
    /// the admin token. Every certificate names its role (server, edge,
    /// gateway), which the servers enforce.
    Init {
        #[arg(long)]
        out: PathBuf,
        /// The servers: `a,b` (names, each a certificate and a `name =` in a
        /// config), or one server per `--servers` with the DNS names and IP
        /// addresses it is reached by: `--servers a=vco-a.example.net,10.0.0.1
        /// --servers b=vco-b.example.net,10.0.0.2`. Every server
        /// certificate also names `localhost` and `127.0.0.1`.
        #[arg(long, action = clap::ArgAction::Append, default_value = "a,b", value_name = "NAME[,NAME…]|NAME=SAN[,SAN…]")]
        servers: Vec<String>,
        /// Edge client certificates to make: edge-1 … edge-N.
        #[arg(long, default_value_t = 0)]
        edges: usize,
        /// Gateway client certificates to make: gateway-1 … gateway-N.
        #[arg(long, default_value_t = 0)]
        gateways: usize,
    },
    /// One more server certificate from the existing CA (DIR/ca.key), e.g.
    /// `c=vco-c.example.net,10.0.0.3`. Existing files are never overwritten.
    AddServer {
        /// The directory with ca.pem and ca.key.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// NAME, or NAME=SAN[,SAN…] with the DNS names and IP addresses it is reached by.
        #[arg(value_name = "NAME[=SAN,…]")]
        server: String,
    },
    /// More edge certificates from the existing CA, numbered after the
    /// highest existing <prefix>-N. Existing files are never overwritten.
    AddEdges {
        /// The directory with ca.pem and ca.key.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// How many to make.
        #[arg(long)]
        count: usize,
        /// Names are <prefix>-<n>.
        #[arg(long, default_value = "edge")]
        prefix: String,
    },
    /// More gateway certificates from the existing CA, numbered after the
    /// highest existing <prefix>-N. Existing files are never overwritten.
    AddGateways {
        /// The directory with ca.pem and ca.key.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// How many to make.
        #[arg(long)]
        count: usize,
        /// Names are <prefix>-<n>.
        #[arg(long, default_value = "gateway")]
        prefix: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The server's admin URL, e.g. https://127.0.0.1:8443.
    #[arg(long)]
    pub server: String,
    /// File holding the admin token.
    #[arg(long)]
    pub token_file: PathBuf,
    /// The deployment CA (default: ca.pem beside the token file).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: CtlCmd,
}

#[derive(Debug, Subcommand)]
pub enum CtlCmd {
    /// Role, drState, epoch, replication and clients.
    Status,
    /// Prepare this server to become a standby; prints its vcoUuid and pairing token.
    PrepareStandby,
    /// Configure this server as active, replicating to the prepared standby.
    ConfigureActive {
        #[arg(long)]
        standby_address: String,
        #[arg(long)]
        standby_uuid: String,
        #[arg(long)]
        pairing_token: String,
    },
    /// Promote this standby (disaster failover; --force: planned switchover).
    Promote {
        #[arg(long)]
        force: bool,
    },
    /// Demote this active to a zombie.
    Demote {
        #[arg(long)]
        force: bool,
    },
    /// Unconfigure DR on this server (and, best effort, its peer). On a
    /// zombie: leave the pair and run alone with its data.
    RemoveStandby {
        /// On a zombie: even though another server holds a higher epoch
        /// (only when that server is gone for good; see the runbook).
        #[arg(long)]
        force: bool,
    },
    /// Turn this zombie into the standby of the promoted server.
    Rejoin,
    /// Read a configuration document.
    Get { key: String },
    /// Write a configuration document (VALUE is JSON).
    Put { key: String, value: String },
    /// Delete a configuration document.
    Delete { key: String },
    /// List configuration documents and their versions.
    List,
    /// Entries archived at rejoin because the promoted server lacked them:
    /// all of them by default (read page by page), with the total.
    Archive {
        /// Start at this position of the archive (0 is the oldest entry).
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// At most this many entries (default: every one from --offset on).
        #[arg(long)]
        limit: Option<u64>,
        /// Write the entries to FILE as JSON lines (one entry per line),
        /// atomically, instead of printing them.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    if let Err(e) = crate::serve::log::init(&cli.log_format) {
        eprintln!("error: {e:#}");
        return 2;
    }
    // A server's configuration is read before its runtime starts: it says
    // how many threads the runtime has (`runtime.worker_threads`).
    let serve = match &cli.command {
        Cmd::Serve { config } => match crate::serve::config::FileConfig::load(config) {
            Ok(cfg) => Some(cfg),
            Err(e) => {
                eprintln!("error: {e:#}");
                return 1;
            }
        },
        _ => None,
    };
    let mut builder = match &serve {
        Some(cfg) => cfg.runtime.builder(),
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let r = rt.block_on(run(cli, serve));
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// Runs `cli`; `serve` is the configuration of `vcodr serve`, read already.
async fn run(cli: Cli, serve: Option<crate::serve::config::FileConfig>) -> anyhow::Result<i32> {
    match cli.command {
        Cmd::Demo {
            edges,
            writes,
            writers,
            keep_running,
            dir,
            keep_dir,
        } => {
            crate::tools::demo::main(crate::tools::demo::DemoOptions {
                edges,
                writes,
                writers,
                keep_running,
                dir,
                keep_dir,
            })
            .await
        }
        Cmd::EdgeSim {
            servers,
            count,
            certs,
            heartbeat_ms,
            sample_interval_ms,
            gateway_every,
            duration_s,
            bind,
            warmup_s,
            json,
            cache_bytes,
            control,
            quic_driver,
        } => {
            let [a, b]: [String; 2] = servers
                .try_into()
                .map_err(|_| anyhow::anyhow!("--servers takes exactly two addresses A,B"))?;
            let settings = crate::tools::edge_sim::SimSettings {
                servers: [a, b],
                count,
                heartbeat_interval_ms: heartbeat_ms,
                sample_interval_ms,
                gateway_every,
                quic_driver,
                bind,
                cache_bytes,
                ..Default::default()
            };
            let summary = crate::tools::edge_sim::run_cli(
                &certs,
                settings.clone(),
                duration_s.map(std::time::Duration::from_secs),
                std::time::Duration::from_secs(warmup_s),
                json,
                control,
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!("{}", summary.line(&settings.servers));
            }
            Ok(0)
        }
        Cmd::Serve { config } => {
            let cfg = match serve {
                Some(cfg) => cfg,
                None => crate::serve::config::FileConfig::load(&config)?,
            };
            match crate::serve::run(cfg).await {
                Ok(()) => Ok(0),
                Err(e) if e.is::<crate::serve::StorageFailed>() => {
                    eprintln!("error: {e:#}");
                    Ok(crate::serve::EXIT_STORAGE_FAILED)
                }
                Err(e) => Err(e),
            }
        }
        Cmd::Certs { cmd } => certs_main(cmd),
        Cmd::Ctl(args) => ctl_main(args).await,
    }
}

/// The servers of every `--servers` value ([`ServerSpec::parse`]).
fn parse_servers(values: &[String]) -> anyhow::Result<Vec<ServerSpec>> {
    let mut specs = Vec::new();
    for v in values {
        specs.extend(ServerSpec::parse(v).with_context(|| format!("--servers {v}"))?);
    }
    Ok(specs)
}

/// One line per server certificate: its name and what it is valid for.
fn server_line(spec: &ServerSpec) -> String {
    let mut names = vec![spec.name.as_str(), "localhost", "127.0.0.1"];
    names.extend(spec.sans.iter().map(String::as_str));
    format!(
        "  {}.pem: server, valid for {}",
        spec.name,
        names.join(", ")
    )
}

fn certs_main(cmd: CertsCmd) -> anyhow::Result<i32> {
    use vcodr_transport::certs::{add_clients, add_server, CertRole};
    match cmd {
        CertsCmd::Init {
            out,
            servers,
            edges,
            gateways,
        } => {
            let servers = parse_servers(&servers)?;
            let clients: Vec<String> = (1..=edges).map(|i| format!("edge-{i}")).collect();
            certs_init(&out, &servers, &clients)?;
            add_clients(&out, CertRole::Gateway, "gateway", gateways)
                .with_context(|| format!("issuing gateway certificates in {}", out.display()))?;
            println!(
                "wrote {}: ca.pem, {} server, {} edge and {gateways} gateway certificates, admin.token",
                out.display(),
                servers.len(),
                clients.len()
            );
            for spec in &servers {
                println!("{}", server_line(spec));
            }
        }
        CertsCmd::AddServer { dir, server } => {
            let spec = match ServerSpec::parse(&server)
                .with_context(|| format!("server {server:?}"))?
                .as_slice()
            {
                [one] => one.clone(),
                _ => anyhow::bail!(
                    "add-server takes one server, NAME or NAME=SAN[,SAN…], not {server:?}"
                ),
            };
            add_server(&dir, &spec).with_context(|| {
                format!(
                    "adding the server certificate `{}` in {}",
                    spec.name,
                    dir.display()
                )
            })?;
            println!("wrote {}:", dir.display());
            println!("{}", server_line(&spec));
        }
        CertsCmd::AddEdges { dir, count, prefix } => {
            let names = add_clients(&dir, CertRole::Edge, &prefix, count)
                .with_context(|| format!("adding edge certificates in {}", dir.display()))?;
            println!("{}", added_line(&dir, "edge", &names));
        }
        CertsCmd::AddGateways { dir, count, prefix } => {
            let names = add_clients(&dir, CertRole::Gateway, &prefix, count)
                .with_context(|| format!("adding gateway certificates in {}", dir.display()))?;
            println!("{}", added_line(&dir, "gateway", &names));
        }
    }
    Ok(0)
}

fn added_line(dir: &std::path::Path, what: &str, names: &[String]) -> String {
    match names {
        [] => format!("no {what} certificate asked for; nothing written"),
        [one] => format!("wrote {}: {one} ({what})", dir.display()),
        [first, .., last] => format!(
            "wrote {}: {} {what} certificates, {first} … {last}",
            dir.display(),
            names.len()
        ),
    }
}

/// `vcodr certs init`: the CA, the certificates and a fresh admin token.
pub fn certs_init(
    out: &std::path::Path,
    servers: &[ServerSpec],
    clients: &[String],
) -> anyhow::Result<()> {
    let path = out.join("admin.token");
    if path.exists() {
        anyhow::bail!(
            "{} exists already: `certs init` makes a new deployment in an empty directory (add certificates with `vcodr certs add-server`/`add-edges`)",
            path.display()
        );
    }
    vcodr_transport::certs::init_dir(out, servers, clients)
        .with_context(|| format!("making certificates in {}", out.display()))?;
    let token = format!(
        "{:032x}{:032x}",
        crate::serve::random_u128()?,
        crate::serve::random_u128()?
    );
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    use std::io::Write;
    let mut f = o
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{token}")?;
    f.sync_all()?;
    Ok(())
}

/// Exit code 3 for an error the server answered (printed, as JSON too with
/// `--json`); any other error goes up.
fn api_failure(e: anyhow::Error, json: bool) -> anyhow::Result<i32> {
    match e.downcast_ref::<ApiError>() {
        Some(api) => {
            if json {
                println!(
                    "{}",
                    json!({"error": {"code": api.code, "message": api.message, "data": api.data}})
                );
            }
            eprintln!("error: {}", api.message);
            Ok(3)
        }
        None => Err(e),
    }
}

/// `vcodr ctl archive`: every entry from `offset` (or `limit` of them),
/// printed as it arrives, as one JSON document with `--json`, or exported to
/// `out` as JSON lines; always with the total.
async fn ctl_archive(
    client: &Client,
    offset: u64,
    limit: Option<u64>,
    out: Option<&std::path::Path>,
    json_out: bool,
) -> anyhow::Result<i32> {
    use std::io::Write;
    let stdout = std::io::stdout();
    let r = match out {
        Some(path) => {
            let mut file = ctl::AtomicFile::create(path)?;
            let read = ctl::read_archive(client, offset, limit, |item| match item {
                ArchiveItem::Total(_) => Ok(()),
                ArchiveItem::Entry(e) => file.write_line(&serde_json::to_string(e)?),
            })
            .await;
            match read {
                Ok(read) => {
                    file.finish()?;
                    Ok((read, Some(path)))
                }
                Err(e) => Err(e),
            }
        }
        None if json_out => {
            // One JSON document, streamed: `{"total":…,"entries":[…],"count":…,"next":…}`.
            let mut lock = stdout.lock();
            let mut first = true;
            let read = ctl::read_archive(client, offset, limit, |item| match item {
                ArchiveItem::Total(total) => Ok(write!(
                    lock,
                    "{{\"total\":{total},\"offset\":{offset},\"entries\":["
                )?),
                ArchiveItem::Entry(e) => {
                    let sep = if std::mem::take(&mut first) {
                        "\n"
                    } else {
                        ",\n"
                    };
                    Ok(write!(lock, "{sep}{}", serde_json::to_string(e)?)?)
                }
            })
            .await;
            if let Ok(read) = &read {
                writeln!(
                    lock,
                    "\n],\"count\":{},\"next\":{}}}",
                    read.count,
                    read.next.map_or("null".to_string(), |n| n.to_string())
                )?;
            }
            read.map(|r| (r, None))
        }
        None => {
            let mut lock = stdout.lock();
            let read = ctl::read_archive(client, offset, limit, |item| match item {
                ArchiveItem::Total(total) => Ok(writeln!(
                    lock,
                    "divergence archive of {}: {total} entries",
                    client.address
                )?),
                ArchiveItem::Entry(d) => Ok(write!(lock, "{}", archive_line(d))?),
            })
            .await;
            read.map(|r| (r, None))
        }
    };
    let (read, file) = match r {
        Ok(x) => x,
        Err(e) => return api_failure(e, json_out),
    };
    let span = if read.count == 0 {
        "no entries".to_string()
    } else {
        format!(
            "positions {}..={}",
            read.offset,
            read.offset + read.count - 1
        )
    };
    let rest = match read.next {
        Some(n) => format!("; more from --offset {n}"),
        None => String::new(),
    };
    match file {
        Some(path) if json_out => println!(
            "{}",
            json!({"total": read.total, "offset": read.offset, "count": read.count, "next": read.next, "out": path})
        ),
        Some(path) => println!(
            "wrote {} of {} entries ({span}) to {} as JSON lines{rest}",
            read.count,
            read.total,
            path.display()
        ),
        None if json_out => {}
        None => println!(
            "{} of {} entries listed ({span}){rest}",
            read.count, read.total
        ),
    }
    Ok(0)
}

/// One archived entry as `vcodr ctl archive` prints it.
fn archive_line(d: &Value) -> String {
    format!(
        "{:>8} index {} epoch {}  {}  ({})\n",
        d["position"],
        d["index"],
        d["epoch"],
        d["entry"],
        d["reason"].as_str().unwrap_or("")
    )
}

async fn ctl_main(a: CtlArgs) -> anyhow::Result<i32> {
    let client = Client::from_files(&a.server, &a.token_file, a.ca.as_deref())?;
    let (method, params) = match &a.cmd {
        CtlCmd::Status => (
            Method::GetReplicationStatus,
            json!({"with": ["clientCount", "stateHistory"]}),
        ),
        CtlCmd::PrepareStandby => (Method::PrepareForStandby, json!({})),
        CtlCmd::ConfigureActive {
            standby_address,
            standby_uuid,
            pairing_token,
        } => (
            Method::ConfigureActiveForReplication,
            json!({"standbyList": [{"standbyAddress": standby_address, "standbyUuid": standby_uuid}], "pairingToken": pairing_token}),
        ),
        CtlCmd::Promote { force } => (Method::PromoteStandbyToActive, json!({"force": force})),
        CtlCmd::Demote { force } => (Method::DemoteActive, json!({"force": force})),
        CtlCmd::RemoveStandby { force } => (Method::RemoveStandby, json!({"force": force})),
        CtlCmd::Rejoin => (Method::RejoinAsStandby, json!({})),
        CtlCmd::Get { key } => (Method::ConfigurationGet, json!({"key": key})),
        CtlCmd::Put { key, value } => {
            let v: Value = serde_json::from_str(value).with_context(|| {
                format!("VALUE {value:?} is not JSON (quote strings: '\"text\"')")
            })?;
            (Method::ConfigurationPut, json!({"key": key, "value": v}))
        }
        CtlCmd::Delete { key } => (Method::ConfigurationDelete, json!({"key": key})),
        CtlCmd::List => (Method::ConfigurationList, json!({})),
        CtlCmd::Archive { offset, limit, out } => {
            return ctl_archive(&client, *offset, *limit, out.as_deref(), a.json).await
        }
    };
    match client.call(method, params).await {
        Ok(v) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", human(&a.cmd, &v));
            }
            Ok(0)
        }
        Err(e) => api_failure(e, a.json),
    }
}

fn human(cmd: &CtlCmd, v: &Value) -> String {
    let s = |p: &str| {
        v.pointer(p)
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            })
            .unwrap_or_default()
    };
    match cmd {
        CtlCmd::Status => {
            let mut out = ctl::status_table(v);
            if let Some(Value::Array(h)) = v.get("stateHistory") {
                out += "state history (latest last):\n";
                for t in h.iter().rev().take(8).rev() {
                    out += &format!(
                        "  {} {} -> {} {}  epoch {}  {}\n",
                        t["fromRole"].as_str().unwrap_or(""),
                        t["from"].as_str().unwrap_or(""),
                        t["toRole"].as_str().unwrap_or(""),
                        t["to"].as_str().unwrap_or(""),
                        t["epoch"],
                        t["reason"].as_str().unwrap_or("")
                    );
                }
            }
            out
        }
        CtlCmd::PrepareStandby => format!(
            "vcoUuid       {}\npairingToken  {}\n",
            s("/vcoUuid"),
            s("/pairingToken")
        ),
        CtlCmd::ConfigureActive { .. } => {
            format!("pairId  {}\ndrState {}\n", s("/pairId"), s("/drState"))
        }
        CtlCmd::Promote { .. } => format!(
            "epoch          {}\ndataLossBound  {}\n",
            s("/epoch"),
            s("/dataLossBound")
        ),
        CtlCmd::Get { .. } => format!(
            "{}\n",
            serde_json::to_string_pretty(&v["value"]).unwrap_or_default()
        ),
        CtlCmd::Put { .. } | CtlCmd::Delete { .. } => {
            format!("{} version {}\n", s("/key"), s("/version"))
        }
        CtlCmd::List => v
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|d| format!("{:<40} {}\n", d["key"].as_str().unwrap_or(""), d["version"]))
                    .collect()
            })
            .unwrap_or_default(),
        _ => "ok\n".to_string(),
    }
}
