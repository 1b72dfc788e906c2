//! The CI-sized model checks: each model exhaustively within its budgets,
//! every safety property holding, every `Sometimes` reached, and the number
//! of unique states pinned so that an unnoticed change in what is explored
//! (in the model or in vcodr-core) fails loudly. Then every mutant caught.
//!
//! Run with `cargo test --release -p vcodr-model-check` (debug builds are
//! about 10x slower).

use vcodr_core::Mutant;
use vcodr_model_check::model::{mutant_cfg, ModelCfg};
use vcodr_model_check::report::{reach_covers_spec, run, Report, RunOpts};

fn check(cfg: ModelCfg, pinned_unique_states: usize) -> Report {
    let r = run(cfg, &RunOpts::default());
    println!("{}", r.render(false));
    assert_eq!(
        r.failures().count(),
        0,
        "a safety property failed:\n{}",
        r.render(false)
    );
    assert_eq!(
        r.unreached().count(),
        0,
        "a `sometimes` was not reached:\n{}",
        r.render(false)
    );
    assert!(r.complete, "the search must be exhaustive");
    assert_eq!(
        r.unique_states, pinned_unique_states,
        "the explored state space changed: if intended (model or core change), \
         update the pinned count and the README figures"
    );
    r
}

#[test]
fn failover_model() {
    check(ModelCfg::ci(), 60_874);
}

#[test]
fn crash_model() {
    check(ModelCfg::ci_crash(), 6_737);
}

#[test]
fn edges_model() {
    // 359,850 before edges relayed epoch proofs (see the README).
    check(ModelCfg::ci_edges(), 971_414);
}

#[test]
fn setup_model() {
    check(ModelCfg::setup(), 22_042);
}

#[test]
fn ci_models_together_reach_every_spec_drstate() {
    let missing = reach_covers_spec(&[
        ModelCfg::ci(),
        ModelCfg::ci_crash(),
        ModelCfg::ci_edges(),
        ModelCfg::setup(),
    ]);
    assert!(missing.is_empty(), "no CI model expects {missing:?}");
}

fn caught(m: Mutant) {
    let cfg = mutant_cfg(m, &ModelCfg::ci());
    let r = run(
        cfg,
        &RunOpts {
            stop_at_first_failure: true,
            ..RunOpts::default()
        },
    );
    println!("{}", r.render(false));
    assert!(r.failures().count() > 0, "mutant {m:?} was not caught");
}

#[test]
fn mutant_ack_before_standby_is_caught() {
    caught(Mutant::AckBeforeStandby);
}

#[test]
fn mutant_no_epoch_fencing_is_caught() {
    caught(Mutant::NoEpochFencing);
}

#[test]
fn mutant_follow_zombie_is_caught() {
    caught(Mutant::FollowZombie);
}

#[test]
fn mutant_standby_serves_config_is_caught() {
    caught(Mutant::StandbyServesConfig);
}

#[test]
fn mutant_promote_without_catchup_is_caught() {
    caught(Mutant::PromoteWithoutCatchup);
}

#[test]
fn every_mutant_has_a_test() {
    assert_eq!(
        Mutant::ALL.len(),
        5,
        "a new mutant needs its own test above"
    );
}
