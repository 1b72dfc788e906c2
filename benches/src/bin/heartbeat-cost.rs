//! `cargo run --release -p vcodr-benches --bin heartbeat-cost -- --edges 3000 --interval-ms 1000 --seconds 30`:
//! server CPU, bytes per link, UDP datagrams and syscalls per edge heartbeat,
//! the hub driver beside the quinn driver, in one table (see
//! [`vcodr_benches::heartbeat_cost`]). Build the server first:
//! `cargo build --release -p vcodr-server`.

use clap::Parser;
use std::path::Path;
use vcodr_benches::heartbeat_cost::{self, Args};
use vcodr_benches::machine::{load_average, Machine};
use vcodr_benches::write_vs_pg::find_vcodr;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ sits in the workspace");
    let exe = find_vcodr(args.vcodr.as_deref(), &std::env::current_exe()?, workspace)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let machine = Machine::read();
    let load_before = load_average();
    eprintln!(
        "vcodr binary: {}; load average {load_before}",
        exe.display()
    );
    let mut runs = Vec::new();
    for driver in &args.drivers {
        runs.push(heartbeat_cost::run_driver(
            &exe,
            &args,
            driver,
            rt.handle(),
        )?);
    }
    let load_after = load_average();
    println!();
    println!(
        "{} edges, heartbeat every {} ms to both servers of a pair (real `vcodr serve` processes), \
         simulator on the same machine, loopback; steady window {} s, syscalls over {} s of it",
        args.edges,
        args.interval_ms,
        args.seconds,
        args.perf_seconds.min(args.seconds / 2)
    );
    println!("{}", machine.line(&load_before, &load_after));
    print!("{}", heartbeat_cost::render(&runs));
    Ok(())
}
