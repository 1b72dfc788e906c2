//! `cargo run --release -p vcodr-benches --bin log-store -- [--commits 2000] [--seconds 10]`:
//! commit latency and throughput of replicated-log appends (batches of 1, 8
//! and 64 entries) in redb and in segment-file prototypes, in a temp dir on
//! the filesystem of the system temp dir (see [`vcodr_benches::log_store`]).

use clap::Parser;
use std::time::Duration;
use vcodr_benches::log_store::{self, Limits, Store};
use vcodr_benches::machine::{load_average, Machine};

/// Durable log appends: redb against an append-only segment file.
#[derive(Debug, Parser)]
#[command(name = "log-store")]
struct Args {
    /// Commits per run at most.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    commits: u64,
    /// Seconds per run at most.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// Entries per commit, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8, 64],
          value_parser = clap::value_parser!(u16).range(1..=4096))]
    batches: Vec<u16>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let limits = Limits {
        commits_max: args.commits as usize,
        time_max: Duration::from_secs(args.seconds),
    };
    let dir = tempfile::tempdir()?;
    let machine = Machine::read();
    let load_before = load_average();
    let mut results = Vec::new();
    for &batch in &args.batches {
        for r in log_store::run_interleaved(&Store::ALL, usize::from(batch), limits, dir.path())? {
            eprintln!(
                "{:<22} batch {batch:>3}: {} commits, p50 {:.3} ms",
                r.store.name(),
                r.commits,
                r.p50.as_secs_f64() * 1e3
            );
            results.push(r);
        }
    }
    let load_after = load_average();
    println!();
    println!(
        "durable log appends: postcard Entry with a {}-byte value ({} bytes), one commit = one redb \
         Immediate transaction, or one pwrite + fdatasync of CRC-32C records; stores interleaved one commit each, at most {} commits or {} s of commits per store and batch; \
         dir {} (every run's files read back and checked)",
        log_store::VALUE_BYTES,
        log_store::entry_bytes(1).len(),
        args.commits,
        args.seconds,
        dir.path().display()
    );
    println!("{}", machine.line(&load_before, &load_after));
    print!("{}", log_store::render(&results));
    Ok(())
}
