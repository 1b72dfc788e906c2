//! Prints, per client, the sample seqs a stopped server's storage file
//! holds: for a kept drill directory (`kept-disk-a/data/vcodr.redb`).
//! `cargo run --release -p vcodr-drills --example stored_samples -- FILE`

use vcodr_server::storage::{Storage, WalStorage};

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("give the storage file (…/data/vcodr.redb)"))?;
    // The data dir (the redb file and the write-ahead log in front of it).
    let path = std::path::PathBuf::from(path);
    let store = WalStorage::open(path.parent().unwrap_or(&path))?;
    for c in store.sample_summary()? {
        let seqs: Vec<u64> = store
            .samples(&c.client, 0, usize::MAX)?
            .into_iter()
            .map(|(q, _)| q)
            .collect();
        println!(
            "{}: {} samples, seqs {}",
            c.client,
            seqs.len(),
            vcodr_drills::check::ranges(&seqs)
        );
    }
    Ok(())
}
