//! The command line (SPEC §8).

use crate::ctl::{self, ApiError, Client};
use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;

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
        /// Leave the pair running at the end and print its URLs and token.
        #[arg(long)]
        keep_running: bool,
        /// Put the deployment here instead of a temp dir (kept afterwards).
        #[arg(long)]
        dir: Option<PathBuf>,
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
        /// Stop after this many seconds (default: until ctrl-c).
        #[arg(long)]
        duration_s: Option<u64>,
        /// Heartbeat round trips of the first this many seconds (the
        /// connection ramp) are left out of the reported percentiles.
        #[arg(long, default_value_t = 0)]
        warmup_s: u64,
        /// Print the final report as JSON.
        #[arg(long)]
        json: bool,
        /// Who drives the edges' QUIC connections: hub (one task per UDP
        /// socket) or quinn (a task per connection).
        #[arg(long, default_value = "hub", value_parser = crate::config::parse_quic_driver)]
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
        /// Server names, comma-separated (each names a certificate and a `name =` in a config).
        #[arg(long, value_delimiter = ',', default_value = "a,b")]
        servers: Vec<String>,
        /// Edge client certificates to make: edge-1 … edge-N.
        #[arg(long, default_value_t = 0)]
        edges: usize,
        /// Gateway client certificates to make: gateway-1 … gateway-N.
        #[arg(long, default_value_t = 0)]
        gateways: usize,
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
    /// Entries archived at rejoin because the promoted server lacked them.
    Archive,
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    if let Err(e) = crate::log::init(&cli.log_format) {
        eprintln!("error: {e:#}");
        return 2;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let r = rt.block_on(run(cli));
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Cmd::Demo {
            edges,
            writes,
            writers,
            keep_running,
            dir,
        } => {
            crate::demo::main(crate::demo::DemoOptions {
                edges,
                writes,
                writers,
                keep_running,
                dir,
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
            warmup_s,
            json,
            quic_driver,
        } => {
            let [a, b]: [String; 2] = servers
                .try_into()
                .map_err(|_| anyhow::anyhow!("--servers takes exactly two addresses A,B"))?;
            let settings = crate::edge_sim::SimSettings {
                servers: [a, b],
                count,
                heartbeat_interval_ms: heartbeat_ms,
                sample_interval_ms,
                gateway_every,
                quic_driver,
                ..Default::default()
            };
            let summary = crate::edge_sim::run_cli(
                &certs,
                settings.clone(),
                duration_s.map(std::time::Duration::from_secs),
                std::time::Duration::from_secs(warmup_s),
                json,
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
            let cfg = crate::config::FileConfig::load(&config)?;
            match crate::serve::run(cfg).await {
                Ok(()) => Ok(0),
                Err(e) if e.is::<crate::serve::StorageFailed>() => {
                    eprintln!("error: {e:#}");
                    Ok(crate::serve::EXIT_STORAGE_FAILED)
                }
                Err(e) => Err(e),
            }
        }
        Cmd::Certs {
            cmd:
                CertsCmd::Init {
                    out,
                    servers,
                    edges,
                    gateways,
                },
        } => {
            let clients: Vec<String> = (1..=edges).map(|i| format!("edge-{i}")).collect();
            certs_init(&out, &servers, &clients)?;
            let ca = vcodr_transport::certs::CertificateAuthority::load(&out)
                .with_context(|| format!("reading the new CA in {}", out.display()))?;
            for i in 1..=gateways {
                let name = format!("gateway-{i}");
                let issued = ca
                    .issue(&name, vcodr_transport::certs::CertRole::Gateway)
                    .with_context(|| format!("issuing {name}"))?;
                vcodr_transport::certs::write_issued(&out, &issued)
                    .with_context(|| format!("writing {name} in {}", out.display()))?;
            }
            println!(
                "wrote {}: ca.pem, {} server, {} edge and {gateways} gateway certificates, admin.token",
                out.display(),
                servers.len(),
                clients.len()
            );
            Ok(0)
        }
        Cmd::Ctl(args) => ctl_main(args).await,
    }
}

/// `vcodr certs init`: the CA, the certificates and a fresh admin token.
pub fn certs_init(
    out: &std::path::Path,
    servers: &[String],
    clients: &[String],
) -> anyhow::Result<()> {
    vcodr_transport::certs::init_dir(out, servers, clients)
        .with_context(|| format!("making certificates in {}", out.display()))?;
    let token = format!(
        "{:032x}{:032x}",
        crate::serve::random_u128()?,
        crate::serve::random_u128()?
    );
    let path = out.join("admin.token");
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

async fn ctl_main(a: CtlArgs) -> anyhow::Result<i32> {
    let client = Client::from_files(&a.server, &a.token_file, a.ca.as_deref())?;
    let (method, params) = match &a.cmd {
        CtlCmd::Status => (
            "disasterRecovery/getReplicationStatus",
            json!({"with": ["clientCount", "stateHistory"]}),
        ),
        CtlCmd::PrepareStandby => ("disasterRecovery/prepareForStandby", json!({})),
        CtlCmd::ConfigureActive {
            standby_address,
            standby_uuid,
            pairing_token,
        } => (
            "disasterRecovery/configureActiveForReplication",
            json!({"standbyList": [{"standbyAddress": standby_address, "standbyUuid": standby_uuid}], "pairingToken": pairing_token}),
        ),
        CtlCmd::Promote { force } => (
            "disasterRecovery/promoteStandbyToActive",
            json!({"force": force}),
        ),
        CtlCmd::Demote { force } => ("disasterRecovery/demoteActive", json!({"force": force})),
        CtlCmd::RemoveStandby { force } => {
            ("disasterRecovery/removeStandby", json!({"force": force}))
        }
        CtlCmd::Rejoin => ("disasterRecovery/rejoinAsStandby", json!({})),
        CtlCmd::Get { key } => ("configuration/get", json!({"key": key})),
        CtlCmd::Put { key, value } => {
            let v: Value = serde_json::from_str(value).with_context(|| {
                format!("VALUE {value:?} is not JSON (quote strings: '\"text\"')")
            })?;
            ("configuration/put", json!({"key": key, "value": v}))
        }
        CtlCmd::Delete { key } => ("configuration/delete", json!({"key": key})),
        CtlCmd::List => ("configuration/list", json!({})),
        CtlCmd::Archive => ("disasterRecovery/getDivergenceArchive", json!({})),
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
        Err(e) => match e.downcast_ref::<ApiError>() {
            Some(api) => {
                if a.json {
                    println!(
                        "{}",
                        json!({"error": {"code": api.code, "message": api.message, "data": api.data}})
                    );
                }
                eprintln!("error: {}", api.message);
                Ok(3)
            }
            None => Err(e),
        },
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
        CtlCmd::Archive => v
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|d| {
                        format!(
                            "{:>8} epoch {}  {}  ({})\n",
                            d["index"],
                            d["epoch"],
                            d["entry"],
                            d["reason"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        _ => "ok\n".to_string(),
    }
}
