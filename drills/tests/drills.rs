//! The fault drills (see the crate docs and README "Fault drills"): a short
//! set of seeded schedules on real processes in network namespaces.
//!
//! `cargo test --release --workspace` runs the CI set below; a long run:
//! `VCODR_DRILL_SEEDS=N cargo test --release -p vcodr-drills -- --nocapture`
//! (`VCODR_DRILL_SEED=n` replays one schedule, `VCODR_DRILL_MINUTES=M`
//! bounds the run in time). Needs root and iproute2 + iptables
//! (installed on demand); otherwise it fails naming what is missing.

use std::path::Path;

/// The CI set: short schedules that together draw every kind of fault and
/// both policies (checked by `the_ci_set_draws_every_fault`).
const CI_SEEDS: &[u64] = &[5, 9, 107, 119];

#[test]
fn the_ci_set_draws_every_fault() {
    let mut kinds = std::collections::BTreeSet::new();
    let mut policies = std::collections::BTreeSet::new();
    for &s in CI_SEEDS {
        let sch = vcodr_drills::schedule::Schedule::generate(s);
        policies.insert(sch.policy.as_str());
        kinds.extend(sch.rounds.iter().map(|r| r.kind()));
    }
    let missing: Vec<_> = vcodr_drills::schedule::Round::KINDS
        .iter()
        .filter(|k| !kinds.contains(*k))
        .collect();
    assert!(missing.is_empty(), "the CI set never draws {missing:?}");
    assert_eq!(policies.len(), 2, "{policies:?}");
}

#[test]
fn fault_drills() {
    let tools = vcodr_testkit::require(&["iproute2", "iptables"])
        .expect("the Debian packages the drills need");
    vcodr_testkit::require_root("make network namespaces, iptables rules and tmpfs mounts")
        .expect("root");
    let plan = vcodr_drills::Plan::from_env(CI_SEEDS).expect("VCODR_DRILL_* settings");
    let exe = Path::new(env!("CARGO_BIN_EXE_vcodr-drilled"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let totals = rt
        .block_on(vcodr_drills::run_plan(
            &plan,
            tools.path("ip"),
            tools.path("iptables"),
            exe,
        ))
        .expect("the drills ran");
    println!("{totals}");
    assert!(
        totals.failed.is_empty(),
        "drills failed for seeds {:?} (each printed above with its schedule, history and logs)\n{totals}",
        totals.failed
    );
}
