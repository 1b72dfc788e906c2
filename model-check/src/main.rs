//! `vcodr-check`: model-check the vcodr DR protocol (SPEC §8, §9).

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::time::Duration;
use vcodr_core::Mutant;
use vcodr_model_check::hostile::Menu;
use vcodr_model_check::model::{CutScope, Durability, ModelCfg, Start};
use vcodr_model_check::report::{mutant_names, run, RunOpts};
use vcodr_model_check::DrModel;

/// Model-check the vcodr DR protocol on the production state machines.
#[derive(Parser, Debug)]
#[command(name = "vcodr-check", version)]
struct Args {
    /// Number of edges (0..=2; default: the model's).
    #[arg(long)]
    edges: Option<u8>,
    /// Stop exploring below this depth (default: exhaustive within the budgets).
    #[arg(long)]
    depth: Option<usize>,
    /// Switch on a deliberate bug in the core (`all`: each in turn); the check
    /// must find a counterexample.
    #[arg(long)]
    mutant: Option<String>,
    /// Checker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Serve stateright's web Explorer on this address (loopback) instead of checking.
    #[arg(long)]
    serve: Option<String>,
    /// Model: `ci`/`failover` (default), `crash`, `edges`, `setup` (pairing
    /// from scratch), `samples` (a sample acknowledged before the pairing,
    /// then a switchover), `hostile-peer`, `hostile-edge`, `hostile-setup` (the
    /// hostile actor), `hostile` (both of its menus at once: beyond the CI
    /// budget, give --timeout-s) or `deep`.
    #[arg(long, default_value = "ci")]
    model: String,
    /// Configuration writes.
    #[arg(long)]
    writes: Option<u8>,
    /// Messages the hostile actor `x` may forge (0: no hostile actor).
    #[arg(long)]
    forgeries: Option<u8>,
    /// What `x` forges: `all`, `peer` (peer-link messages), `edge`
    /// (heartbeat views) or a comma-separated list such as
    /// `append-ack,view-unproven`; default: the model's, or `all` with --forgeries.
    #[arg(long)]
    forge: Option<String>,
    /// Server crashes.
    #[arg(long)]
    crashes: Option<u8>,
    /// Partitions (link cuts).
    #[arg(long)]
    cuts: Option<u8>,
    /// Promotions accepted.
    #[arg(long)]
    promotions: Option<u8>,
    /// Promotion kinds the operator uses: disaster, planned or both.
    #[arg(long)]
    kinds: Option<String>,
    /// rejoinAsStandby calls accepted.
    #[arg(long)]
    rejoins: Option<u8>,
    /// Monitoring samples per edge.
    #[arg(long)]
    samples: Option<u8>,
    /// Peer ticks per server.
    #[arg(long)]
    peer_ticks: Option<u8>,
    /// Heartbeat timer firings per edge.
    #[arg(long)]
    edge_ticks: Option<u8>,
    /// Let the network lose messages as well.
    #[arg(long)]
    lossy: bool,
    /// Messages on edge links may be delivered more than once too.
    #[arg(long)]
    dup_edge_links: bool,
    /// A delivery consumes the message (no duplicates, no delivery long after).
    #[arg(long)]
    no_dup: bool,
    /// Cut any link, not only the peer link.
    #[arg(long)]
    cut_edges: bool,
    /// Make persist requests durable at once (no flush action).
    #[arg(long)]
    sync_disk: bool,
    /// Print an example path for each `Sometimes` property too.
    #[arg(long)]
    examples: bool,
    /// Give up after this many seconds.
    #[arg(long)]
    timeout_s: Option<u64>,
}

fn config(a: &Args) -> Result<ModelCfg> {
    let mut c = match a.model.as_str() {
        "ci" | "failover" => ModelCfg::ci(),
        "crash" => ModelCfg::ci_crash(),
        "edges" => ModelCfg::ci_edges(),
        "hostile" => ModelCfg::hostile(),
        "hostile-peer" => ModelCfg::hostile_peer(),
        "hostile-edge" => ModelCfg::hostile_edge(),
        "hostile-setup" => ModelCfg::hostile_setup(),
        "setup" => ModelCfg::setup(),
        "samples" => ModelCfg::ci_samples(),
        "deep" => ModelCfg::deep(),
        other => bail!(
            "unknown --model {other}: use ci, crash, edges, setup, samples, hostile-peer, \
             hostile-edge, hostile-setup, hostile or deep"
        ),
    };
    if let Some(e) = a.edges {
        if e > 2 {
            bail!("--edges {e} is above the model's 2");
        }
        c.edges = e;
    }
    if let Some(v) = a.writes {
        c.writes = v;
    }
    if let Some(v) = a.forgeries {
        c.forgeries = v;
        if c.forge_menu.is_empty() {
            c.forge_menu = Menu::all();
        }
    }
    if let Some(f) = &a.forge {
        c.forge_menu = Menu::parse(f).map_err(anyhow::Error::msg)?;
    }
    if let Some(v) = a.crashes {
        c.crashes = v;
    }
    if let Some(v) = a.cuts {
        c.cuts = v;
    }
    if let Some(v) = a.promotions {
        c.promotions = v;
    }
    if let Some(v) = a.rejoins {
        c.rejoins = v;
    }
    match a.kinds.as_deref() {
        None => {}
        Some("both") => (c.disaster, c.planned) = (true, true),
        Some("disaster") => (c.disaster, c.planned) = (true, false),
        Some("planned") => (c.disaster, c.planned) = (false, true),
        Some(other) => bail!("unknown --kinds {other}: use disaster, planned or both"),
    }
    if let Some(v) = a.samples {
        c.samples = v;
    }
    if let Some(v) = a.peer_ticks {
        c.peer_ticks = Some(v);
    }
    if let Some(v) = a.edge_ticks {
        c.edge_ticks = Some(v);
    }
    c.net.lossy |= a.lossy;
    if a.dup_edge_links {
        c.net.edge_link_once = false;
    }
    if a.no_dup {
        c.net.duplicating = false;
    }
    if a.cut_edges {
        c.net.cut_scope = CutScope::All;
    }
    if a.sync_disk {
        c.durability = Durability::Sync;
    }
    if c.start == Start::Unconfigured && c.pairings == 0 {
        bail!("the setup model needs at least one pairing");
    }
    Ok(c)
}

fn main() -> Result<()> {
    let a = Args::parse();
    let base = config(&a)?;
    let opts = RunOpts {
        threads: a.threads,
        depth: a.depth,
        stop_at_first_failure: false,
        timeout: a.timeout_s.map(Duration::from_secs),
    };
    if let Some(addr) = &a.serve {
        let mut cfg = base;
        if let Some(m) = &a.mutant {
            cfg.mutant = Mutant::from_name(m).with_context(|| {
                format!("unknown mutant {m}; known: {}", mutant_names().join(", "))
            })?;
        }
        use stateright::Model;
        println!("stateright Explorer on http://{addr} (Ctrl-C to stop)");
        // `serve` blocks while the Explorer's web server runs.
        let _checker = DrModel::new(cfg)
            .checker()
            .threads(a.threads)
            .serve(addr.as_str());
        return Ok(());
    }
    match a.mutant.as_deref() {
        None => {
            let r = run(base, &opts);
            print!("{}", r.render(a.examples));
            let failures = r.failures().count();
            let unreached = r.unreached().count();
            if failures > 0 {
                bail!("{failures} safety propert(y/ies) violated without a mutant: a bug (see the counterexample above)");
            }
            if unreached > 0 && r.complete {
                bail!("{unreached} `sometimes` propert(y/ies) not reached: a property may hold vacuously");
            }
            println!("\nOK: every safety property holds");
            Ok(())
        }
        Some(name) => {
            let mutants: Vec<Mutant> = if name == "all" {
                Mutant::ALL.iter().map(|(m, _)| *m).collect()
            } else {
                vec![Mutant::from_name(name).with_context(|| {
                    format!(
                        "unknown mutant {name}; known: all, {}",
                        mutant_names().join(", ")
                    )
                })?]
            };
            let mut missed = Vec::new();
            let mut lines = Vec::new();
            for m in mutants {
                let cfg = ModelCfg {
                    mutant: m,
                    ..vcodr_model_check::model::mutant_cfg(m, &base)
                };
                let r = run(
                    cfg,
                    &RunOpts {
                        stop_at_first_failure: true,
                        ..opts.clone()
                    },
                );
                print!("{}", r.render(false));
                let mname = Mutant::ALL
                    .iter()
                    .find(|(x, _)| *x == m)
                    .map_or("?", |(_, n)| n);
                let caught: Vec<&str> = r.failures().map(|v| v.name).collect();
                if caught.is_empty() {
                    missed.push(mname);
                    lines.push(format!(
                        "  {mname:<24} NOT CAUGHT ({} states)",
                        r.unique_states
                    ));
                } else {
                    lines.push(format!(
                        "  {mname:<24} caught by \"{}\" ({} states, {:.1} s)",
                        caught.join("\", \""),
                        r.unique_states,
                        r.elapsed.as_secs_f64()
                    ));
                }
                println!("----");
            }
            println!("mutants:");
            for l in &lines {
                println!("{l}");
            }
            if !missed.is_empty() {
                bail!("mutant(s) not caught: {}", missed.join(", "));
            }
            Ok(())
        }
    }
}
