//! Writes every target's seed inputs (`vcodr_fuzz_targets::seeds`) to
//! `DIR/<target>/seed-<name>`: `cargo run -p vcodr-fuzz-targets --bin
//! fuzz-seeds -- fuzz/corpus`, before a campaign and `cargo fuzz cmin`.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: fuzz-seeds DIR   (writes DIR/<target>/seed-<name>)");
        std::process::exit(2);
    };
    let seeds = vcodr_fuzz_targets::seeds::all();
    for (target, name, bytes) in &seeds {
        let target_dir = dir.join(target);
        std::fs::create_dir_all(&target_dir)?;
        std::fs::write(target_dir.join(format!("seed-{name}")), bytes)?;
    }
    println!("{} seeds written under {}", seeds.len(), dir.display());
    Ok(())
}
