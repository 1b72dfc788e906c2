//! Prints the schedules of a range of seeds without running them:
//! `cargo run --release -p vcodr-drills --example schedules -- FIRST [COUNT]`.

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("seeds are whole numbers"))
        .collect();
    let first = args.first().copied().unwrap_or(1);
    let count = args.get(1).copied().unwrap_or(1).min(10_000);
    for seed in first..first + count {
        print!("{}", vcodr_drills::schedule::Schedule::generate(seed));
    }
}
