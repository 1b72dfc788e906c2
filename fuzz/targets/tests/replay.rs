//! Replays every committed input of every fuzz target — the minimized corpus
//! `fuzz/corpus/<target>/` and the crash regressions
//! `fuzz/regressions/<target>/` — and the seeds, through the same functions
//! libFuzzer runs. A regression input is one that once crashed a target;
//! this test keeps it fixed. Runs in `cargo test --release --workspace`.

use std::path::{Path, PathBuf};
use vcodr_fuzz_targets::{seeds, Target, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("fuzz/targets has a parent")
        .to_path_buf()
}

/// The files of `dir`, sorted; none if it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str, run: Target, file: &Path) {
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    // A panic names the file to rerun with `cargo fuzz run <target> <file>`.
    eprintln!("replaying {target} {}", file.display());
    run(&bytes);
}

#[test]
fn every_committed_corpus_input_replays() {
    for (target, run) in TARGETS {
        let files = inputs(&fuzz_dir().join("corpus").join(target));
        assert!(
            !files.is_empty(),
            "fuzz/corpus/{target}/ is empty: the committed corpus is missing"
        );
        for file in &files {
            replay(target, run, file);
        }
    }
}

#[test]
fn every_crash_regression_replays() {
    let mut count = 0;
    for (target, run) in TARGETS {
        for file in inputs(&fuzz_dir().join("regressions").join(target)) {
            replay(target, run, &file);
            count += 1;
        }
    }
    eprintln!("{count} regression inputs replayed");
}

#[test]
fn every_seed_replays() {
    let all = seeds::all();
    for (target, _) in TARGETS {
        assert!(
            all.iter().any(|(t, _, _)| *t == target),
            "{target} has no seed"
        );
    }
    for (target, name, bytes) in &all {
        let (_, run) = TARGETS
            .iter()
            .find(|(t, _)| t == target)
            .expect("a seed's target exists");
        eprintln!("seed {target} {name}");
        run(bytes);
    }
}
