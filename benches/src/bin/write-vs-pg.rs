//! `cargo run --release -p vcodr-benches --bin write-vs-pg -- [--seconds 15] [--no-pg] [--no-floor]`:
//! sync-replicated `configuration/put` on a real vcodr pair at 1, 16 and 64
//! writers, the same load on a bare HTTPS server (the floor), then the
//! PostgreSQL anchor, in one table (see
//! [`vcodr_benches::write_vs_pg`]). Build the server first:
//! `cargo build --release -p vcodr-server`.

use clap::Parser;
use std::path::Path;
use std::time::Duration;
use vcodr_benches::floor;
use vcodr_benches::machine::{load_average, Machine};
use vcodr_benches::write_vs_pg::{self, Args, PgOutcome};

/// Round trips of each thread hand-off timing.
const HANDOFF_ROUNDS: u32 = 20_000;

/// The thread hand-off line: the two threads on one CPU, then on two.
fn handoffs() -> String {
    let timed = || -> anyhow::Result<String> {
        let cpus = floor::allowed_cpus()?;
        let one = floor::handoff(HANDOFF_ROUNDS, (cpus[0], cpus[0]))?;
        let two = match cpus.get(1) {
            Some(&other) => {
                let h = floor::handoff(HANDOFF_ROUNDS, (cpus[0], other))?;
                format!(
                    "{:.1} µs a round trip across two CPUs ({:.1} µs CPU per thread)",
                    h.round_trip_us, h.cpu_us
                )
            }
            None => "not across two CPUs (this process may use one)".to_string(),
        };
        Ok(format!(
            "{two}, {:.1} µs on one CPU ({:.1} µs)",
            one.round_trip_us, one.cpu_us
        ))
    };
    let line = timed().unwrap_or_else(|e| format!("not timed: {e:#}"));
    format!("thread hand-off (wake a sleeping thread, wait for its answer; {HANDOFF_ROUNDS} round trips): {line}")
}

// One thread for the load generator: it shares the two cores with the
// pair, and a second worker thread only added wake-ups across threads
// (alternating rounds at 16 writers: 29–38 against 41–45 µs of the load
// generator's CPU per write).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ sits in the workspace");
    let exe = write_vs_pg::find_vcodr(args.vcodr.as_deref(), &std::env::current_exe()?, workspace)?;
    let machine = Machine::read();
    let load_before = load_average();
    eprintln!(
        "vcodr binary: {}; load average {load_before}",
        exe.display()
    );
    let writers: Vec<usize> = args.writers.iter().map(|&w| usize::from(w)).collect();
    let (runs, status) =
        write_vs_pg::run_vcodr(&exe, &writers, Duration::from_secs(args.seconds)).await?;
    // What bounds the pair on this machine: failures here are reported, not fatal.
    let (floor, handoffs) = if args.no_floor {
        (Vec::new(), None)
    } else {
        let floor = write_vs_pg::run_floor(
            &exe,
            &runs,
            Duration::from_secs(args.seconds),
            write_vs_pg::WARM_UP,
        )
        .await
        .unwrap_or_else(|e| {
            eprintln!("{e:#}: left out of the table");
            Vec::new()
        });
        (floor, Some(handoffs()))
    };
    let pg = if args.no_pg {
        PgOutcome::Skipped
    } else {
        eprintln!(
            "PostgreSQL anchor: bash {} with DUR={} REPS={} (it waits for a quiet machine before each run)",
            args.pg_anchor.display(),
            args.seconds,
            args.pg_reps
        );
        match write_vs_pg::run_anchor(&args.pg_anchor, args.seconds, args.pg_reps)
            .and_then(|out| write_vs_pg::parse_anchor(&out))
        {
            Ok((version, rows)) => PgOutcome::Measured { version, rows },
            Err(e) => PgOutcome::Failed(format!("{e:#}")),
        }
    };
    let load_after = load_average();

    println!();
    println!(
        "vcodr sync-replicated configuration/put ({}-byte values, on_standby_loss = \"block\": durable on both before the ack), \
         loopback HTTPS JSON-RPC, keep-alive connection per writer, {} s per writer count",
        write_vs_pg::VALUE_BYTES,
        args.seconds
    );
    match &pg {
        PgOutcome::Measured { version, .. } => println!(
            "PostgreSQL: {version}, synchronous_commit = on, pgbench 200-byte upsert, median of {} rounds of {} s (noisy: every round above the anchor's MAXOTHER)",
            args.pg_reps, args.seconds
        ),
        PgOutcome::Skipped => println!("PostgreSQL: skipped (--no-pg)"),
        PgOutcome::Failed(why) => println!("PostgreSQL anchor failed: {why}"),
    }
    println!("{}", machine.line(&load_before, &load_after));
    print!("{}", write_vs_pg::render(&runs, &floor, &pg));
    if let Some(line) = handoffs {
        println!("{line}");
    }
    println!("pair after the runs: {status}");
    if let Some(r) = runs.iter().find(|r| r.errors > 0) {
        println!(
            "errors at {} writers, first: {}",
            r.writers,
            r.first_error.as_deref().unwrap_or("?")
        );
    }
    if let PgOutcome::Failed(why) = pg {
        anyhow::bail!("the PostgreSQL anchor failed: {why}");
    }
    Ok(())
}
