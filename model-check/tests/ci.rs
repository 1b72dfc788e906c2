//! The CI-sized model checks: each model exhaustively within its budgets,
//! every safety property holding, every `Sometimes` reached, and the number
//! of unique states pinned so that an unnoticed change in what is explored
//! (in the model or in vcodr-core) fails loudly. Then every mutant caught.
//!
//! Run with `cargo test --release -p vcodr-model-check` (debug builds are
//! about 10x slower).

use vcodr_core::Mutant;
use vcodr_model_check::hostile::{Forgery, Menu};
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
    // 60,874 before a server leaving a role forgot that role's state; 57,157
    // before entries were shipped ahead of local durability (see the README).
    check(ModelCfg::ci(), 69_378);
}

#[test]
fn crash_model() {
    // 6,704 before entries were shipped ahead of local durability (see the README).
    check(ModelCfg::ci_crash(), 8_474);
}

#[test]
fn edges_model() {
    // 359,850 before edges relayed epoch proofs (see the README).
    check(ModelCfg::ci_edges(), 971_414);
}

#[test]
fn hostile_peer_model() {
    check(ModelCfg::hostile_peer(), HOSTILE_PEER_STATES);
}

#[test]
fn hostile_edge_model() {
    check(ModelCfg::hostile_edge(), 700_553);
}

#[test]
fn hostile_setup_model() {
    check(ModelCfg::hostile_setup(), HOSTILE_SETUP_STATES);
}

/// Every peer forgery is refused at admission and changes nothing but the
/// "refused" milestone: exactly twice the states of the model without `x`.
const HOSTILE_PEER_STATES: usize = 2 * 69_378;
const HOSTILE_SETUP_STATES: usize = 2 * 23_198;

#[test]
fn setup_model() {
    // 23,458 before entries were shipped ahead of local durability (see the README).
    check(ModelCfg::setup(), 23_198);
}

/// The fault drills' scenario: samples acknowledged by the promoted server
/// alone, then the rejoin of its zombie (a snapshot and the sample copy).
#[test]
fn samples_model() {
    // 161,336 before a server leaving a role forgot that role's state;
    // 153,324 before entries were shipped ahead of local durability (see the README).
    check(ModelCfg::ci_samples(), 312_200);
}

#[test]
fn ci_models_together_reach_every_spec_drstate() {
    let missing = reach_covers_spec(&[
        ModelCfg::ci(),
        ModelCfg::ci_crash(),
        ModelCfg::ci_edges(),
        ModelCfg::setup(),
        ModelCfg::ci_samples(),
        ModelCfg::hostile_peer(),
        ModelCfg::hostile_edge(),
        ModelCfg::hostile_setup(),
    ]);
    assert!(missing.is_empty(), "no CI model expects {missing:?}");
}

fn caught(m: Mutant) -> Report {
    caught_in(mutant_cfg(m, &ModelCfg::ci()))
}

fn caught_in(cfg: ModelCfg) -> Report {
    let m = cfg.mutant;
    let r = run(
        cfg,
        &RunOpts {
            stop_at_first_failure: true,
            ..RunOpts::default()
        },
    );
    println!("{}", r.render(false));
    assert!(r.failures().count() > 0, "mutant {m:?} was not caught");
    r
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
fn mutant_trust_envelope_from_is_caught() {
    caught(Mutant::TrustEnvelopeFrom);
}

/// Each forgery that does harm once its defence is off, alone on the menu,
/// and the property that then fails. With admission believing the envelope
/// (`trust-envelope-from`), a forged `AppendAck` breaks RPO 0 (the active
/// acknowledges a write its standby never had, and the standby is promoted
/// without it). `Pair`, `PairAccepted`, `Refused` and `Join` are not listed:
/// they carry a guessed token, which the pairing steps still check; nor is
/// `Rejoin`: its addresses are never taken (see the test below).
#[test]
fn each_forgery_is_caught_when_its_defence_is_off() {
    use Forgery::*;
    let cases: [(Mutant, Forgery, &str); 9] = [
        (Mutant::TrustEnvelopeFrom, AppendAck, "2 RPO 0"),
        (Mutant::TrustEnvelopeFrom, NewEpochUnproven, "T fenced only"),
        (
            Mutant::TrustEnvelopeFrom,
            NewEpochSignedByX,
            "T fenced only",
        ),
        (Mutant::TrustEnvelopeFrom, DemoteRequest, "T fenced only"),
        (Mutant::TrustEnvelopeFrom, Unpair, "T a pair is left only"),
        (Mutant::TrustEnvelopeFrom, Append, "T forged writes"),
        (Mutant::UnprovenEpoch, ViewUnproven, "T fenced only"),
        (Mutant::UnprovenEpoch, ViewSignedByX, "T fenced only"),
        (
            Mutant::UnprovenEpoch,
            ViewPeerClaimSignedByX,
            "T fenced only",
        ),
    ];
    for (mutant, forgery, property) in cases {
        let cfg = ModelCfg {
            mutant,
            forgeries: 1,
            forge_menu: Menu::of(&[forgery]),
            ..ModelCfg::ci()
        };
        let r = caught_in(cfg);
        let caught: Vec<&str> = r.failures().map(|v| v.name).collect();
        assert!(
            caught.iter().any(|n| n.starts_with(property)),
            "{mutant:?} with a forged {forgery:?}: expected \"{property}…\" to fail, got {caught:?}"
        );
    }
}

/// The sample copy's messages, on the `samples` model (a rejoined standby
/// copying an edge's sample): with admission believing the envelope, a
/// forged "copy complete" makes the active report STANDBY_RUNNING while its
/// standby lacks the sample, and a forged batch is stored as the sample.
#[test]
fn each_sample_copy_forgery_is_caught_when_its_defence_is_off() {
    use Forgery::*;
    let cases: [(Forgery, &str); 2] = [
        (SamplesDone, "7 a running active's standby"),
        (SamplesBatch, "T forged writes"),
    ];
    for (forgery, property) in cases {
        let cfg = ModelCfg {
            mutant: Mutant::TrustEnvelopeFrom,
            forgeries: 1,
            forge_menu: Menu::of(&[forgery]),
            ..ModelCfg::ci_samples()
        };
        let r = caught_in(cfg);
        let caught: Vec<&str> = r.failures().map(|v| v.name).collect();
        assert!(
            caught.iter().any(|n| n.starts_with(property)),
            "a forged {forgery:?}: expected \"{property}…\" to fail, got {caught:?}"
        );
    }
}

/// Defence in depth: even with admission believing the envelope, a forged
/// `Rejoin` naming x's addresses cannot redirect where a server dials — the
/// peer's addresses are those learned at pairing, never a message's.
#[test]
fn a_wrongly_admitted_rejoin_still_dials_only_the_peer() {
    let cfg = ModelCfg {
        mutant: Mutant::TrustEnvelopeFrom,
        forgeries: 1,
        forge_menu: Menu::of(&[Forgery::Rejoin]),
        ..ModelCfg::ci()
    };
    let r = run(cfg, &RunOpts::default());
    println!("{}", r.render(false));
    assert!(r.complete, "the search must be exhaustive");
    let failed: Vec<&str> = r.failures().map(|v| v.name).collect();
    assert!(
        !failed.iter().any(|n| n.starts_with("T servers dial only")),
        "a forged Rejoin redirected a server: {failed:?}"
    );
}

#[test]
fn mutant_unproven_epoch_is_caught() {
    caught(Mutant::UnprovenEpoch);
}

#[test]
fn mutant_no_sample_copy_is_caught() {
    let r = caught(Mutant::NoSampleCopy);
    let failed: Vec<&str> = r.failures().map(|v| v.name).collect();
    assert!(
        failed
            .iter()
            .any(|n| n.starts_with("7 a running") || n.starts_with("7 acked samples kept")),
        "a standby without the sample copy broke no sample property: {failed:?}"
    );
}

/// The incarnation fence (SPEC §4) off: a restarted active writes other
/// entries at the indexes its last run shipped but never made durable, and
/// the standby, holding the old ones at the same `(epoch, index)`, takes
/// them for the new.
#[test]
fn mutant_reuse_index_after_restart_is_caught() {
    let r = caught(Mutant::ReuseIndexAfterRestart);
    let failed: Vec<&str> = r.failures().map(|v| v.name).collect();
    assert!(
        failed.iter().any(|n| n.starts_with("2 ")),
        "reusing indexes after a restart broke no property of §9.2: {failed:?}"
    );
}

#[test]
fn every_mutant_has_a_test() {
    // The mutants with a `mutant_*_is_caught` test above.
    let tested = [
        Mutant::AckBeforeStandby,
        Mutant::NoEpochFencing,
        Mutant::FollowZombie,
        Mutant::StandbyServesConfig,
        Mutant::PromoteWithoutCatchup,
        Mutant::TrustEnvelopeFrom,
        Mutant::UnprovenEpoch,
        Mutant::NoSampleCopy,
        Mutant::ReuseIndexAfterRestart,
    ];
    for (m, name) in Mutant::ALL {
        assert!(
            tested.contains(&m),
            "mutant {name} needs its own test above"
        );
    }
}
