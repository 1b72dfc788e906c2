//! The properties of SPEC §9, each tied to its number. `Always` properties
//! are safety invariants (a discovery is a counterexample); `Sometimes`
//! properties prove the model reaches what the invariants talk about.

use crate::hostile::Channel;
use crate::model::*;
use crate::nodes::*;
use stateright::{Expectation, Property};
use vcodr_core::*;

/// Role, epoch and pair of server `s`: from memory when up, from its durable store when crashed.
fn role_epoch(st: &State, s: ServerIx) -> Option<(Role, Epoch, Option<PairId>)> {
    match st.server(s) {
        Some(v) => Some((v.role(), v.epoch(), v.pair_id())),
        None => st.servers[usize::from(s)]
            .store
            .meta
            .as_ref()
            .map(|m| (m.role, m.epoch, m.pair_id)),
    }
}

/// Whether `store` holds sample `seq` of `client`: stored, or in a log entry
/// (to be stored when it commits). A snapshot's `sample_seq` covering `seq`
/// does not count: a snapshot names samples, it does not carry them.
pub fn store_has_sample(store: &MemStore, client: &str, seq: u64) -> bool {
    store.samples.contains_key(&(client.to_string(), seq))
        || store.log.iter().any(|e| {
            matches!(&e.op, Op::Samples { client: c, samples }
                if c == client && samples.iter().any(|x| x.seq == seq))
        })
}

/// §9.1 Single writer per epoch: no two servers of a pair acknowledge writes in the same epoch.
pub fn single_writer_per_epoch(_: &DrModel, st: &State) -> bool {
    let acks: Vec<&Ack> = st.hist.acks.iter().filter(|a| a.pair.is_some()).collect();
    acks.iter().all(|a| {
        acks.iter()
            .all(|b| a.pair != b.pair || a.epoch != b.epoch || a.server == b.server)
    })
}

/// §9.2 RPO 0: every write a paired server acknowledged with the standby's durable copy
/// is in the durable store of every server of the pair that takes writes at that epoch or later.
pub fn rpo_zero(_: &DrModel, st: &State) -> bool {
    st.hist
        .acks
        .iter()
        .filter(|a| !a.unprotected && a.pair.is_some())
        .all(|a| {
            let (k, v) = write_kv(a.key);
            (0..2u8).all(|s| match role_epoch(st, s) {
                Some((role, epoch, pair))
                    if role.is_writer() && epoch >= a.epoch && pair == a.pair =>
                {
                    st.servers[usize::from(s)].store.contains_put(&k, &v)
                }
                _ => true,
            })
        })
}

/// §9.2 / §3 "zero loss, always": a promotion that reports `dataLossBound: 0`
/// holds every write acknowledged in an earlier epoch, protected or not.
pub fn zero_loss_promotion(_: &DrModel, st: &State) -> bool {
    st.hist
        .zero_loss_promotions
        .iter()
        .all(|&(s, pair, epoch)| {
            st.hist
                .acks
                .iter()
                .filter(|a| a.epoch < epoch && a.pair == pair)
                .all(|a| {
                    let (k, v) = write_kv(a.key);
                    st.servers[usize::from(s)].store.contains_put(&k, &v)
                })
        })
}

/// §9.2 Degrade mode: writes acknowledged without the standby are counted by the
/// server that took them and never silently lost (stored somewhere, or archived).
pub fn unprotected_counted_and_kept(_: &DrModel, st: &State) -> bool {
    let kept = st.hist.acks.iter().filter(|a| a.unprotected).all(|a| {
        let (k, v) = write_kv(a.key);
        st.servers
            .iter()
            .any(|n| n.store.contains_put(&k, &v) || n.store.archived_put(&k, &v))
    });
    let counted = (0..2u8).all(|s| {
        if !st.hist.acks.iter().any(|a| a.unprotected && a.server == s) {
            return true;
        }
        let acked = st
            .hist
            .acks
            .iter()
            .filter(|a| a.unprotected && a.server == s)
            .count() as u64;
        let count = match st.server(s) {
            Some(v) => v.status().unprotected_writes,
            None => st.servers[usize::from(s)]
                .store
                .meta
                .as_ref()
                .map_or(0, |m| m.unprotected_writes),
        };
        acked <= count
    });
    kept && counted
}

/// §9.2 / §4 Log matching, also across restarts: no two servers' durable
/// logs hold different entries at the same `(epoch, index)`. Entries are
/// shipped before they are durable on the active, so this is what the
/// incarnation fence keeps: a restarted active never writes, at an index its
/// last run shipped, an entry other than the one the standby may hold.
pub fn durable_logs_match(_: &DrModel, st: &State) -> bool {
    let (a, b) = (&st.servers[0].store.log, &st.servers[1].store.log);
    a.iter().all(|x| {
        b.iter()
            .filter(|y| y.index == x.index && y.epoch == x.epoch)
            .all(|y| y == x)
    })
}

/// §9.3 Fencing: a server that has learned of a higher epoch never acknowledges a write again.
pub fn fencing(_: &DrModel, st: &State) -> bool {
    !st.hist
        .violations
        .iter()
        .any(|v| matches!(v, Violation::Fencing { .. }))
}

/// §9.4 Edges never regress: no edge applies configuration of a lower epoch after seeing a higher one.
pub fn edges_never_regress(_: &DrModel, st: &State) -> bool {
    !st.hist
        .violations
        .iter()
        .any(|v| matches!(v, Violation::EdgeRegress { .. }))
        && st
            .edges
            .iter()
            .all(|e| e.edge.config_applied().0 <= e.edge.max_epoch_seen().max(1))
}

/// §9.5 Role gates: a STANDBY or a ZOMBIE refuses every configuration write at once.
pub fn role_gates(_: &DrModel, st: &State) -> bool {
    !st.hist
        .violations
        .iter()
        .any(|v| matches!(v, Violation::RoleGate { .. }))
}

/// §9.6 (safety half of convergence, SPEC §5): an edge follows only a server whose
/// last reply said ACTIVE or STANDALONE at the highest epoch the edge has seen.
pub fn edges_follow_only_writers(_: &DrModel, st: &State) -> bool {
    st.edges.iter().all(|n| match n.edge.following() {
        None => true,
        Some(i) => {
            let view = &n.edge.slots()[i].view;
            view.role.is_some_and(Role::is_writer) && view.epoch >= n.edge.max_epoch_seen()
        }
    })
}

/// §9.6 Convergence is reachable: after a promotion every edge follows the promoted
/// server and the old active is a zombie.
pub fn converged_after_promotion(_: &DrModel, st: &State) -> bool {
    let Some((p, promoted)) = st
        .up()
        .filter(|(_, v)| v.role().is_writer() && v.epoch() > 1)
        .max_by_key(|(_, v)| v.epoch())
    else {
        return false;
    };
    let other = 1 - p;
    let edges_follow = st
        .edges
        .iter()
        .all(|n| n.edge.following() == Some(usize::from(p)));
    let old_fenced = st
        .server(other)
        .is_some_and(|v| v.role() == Role::Zombie && v.highest_epoch_seen() >= promoted.epoch());
    edges_follow && old_fenced
}

/// §9.7 Monitoring: each sample is stored at most once on every server.
pub fn samples_at_most_once(_: &DrModel, st: &State) -> bool {
    st.servers.iter().all(|n| n.store.duplicate_samples == 0)
}

/// Whether `store` records sample `seq` of `client` as lacked: in a range
/// still to copy from an active (kept by a standby promoted in a disaster
/// before its copy completed, which the state history reports).
pub fn store_lacks_sample(store: &MemStore, client: &str, seq: u64) -> bool {
    store
        .samples_to_copy
        .iter()
        .any(|((c, after), up_to)| c == client && *after < seq && seq <= *up_to)
}

/// §9.7 Monitoring: every sample a paired server acknowledged to its edge
/// (with the standby's copy, or alone after a promotion) is durable on every
/// server of the pair that takes writes at that epoch or a later one — also
/// one that caught up by snapshot, which names samples but does not carry
/// them — or, on a standby promoted in a disaster in the middle of its copy,
/// recorded durably as lacked (never silently missing).
pub fn acked_samples_kept(_: &DrModel, st: &State) -> bool {
    st.hist
        .sample_acks
        .iter()
        .filter(|a| !a.unprotected && a.pair.is_some())
        .all(|a| {
            let client = edge_client(a.edge);
            (0..2u8).all(|s| match role_epoch(st, s) {
                Some((role, epoch, pair))
                    if role.is_writer() && epoch >= a.epoch && pair == a.pair =>
                {
                    let store = &st.servers[usize::from(s)].store;
                    (1..=a.up_to_seq).all(|q| {
                        store_has_sample(store, &client, q) || store_lacks_sample(store, &client, q)
                    })
                }
                _ => true,
            })
        })
}

/// §9.7 / §4 A standby that reports STANDBY_RUNNING (caught up: a planned
/// switchover to it loses nothing) holds every sample its pair acknowledged
/// at its epoch or before — stored, or in its log — also after catching up
/// by snapshot, which names samples but does not carry them.
pub fn running_standby_holds_acked_samples(_: &DrModel, st: &State) -> bool {
    st.up()
        .filter(|(_, v)| v.role() == Role::Standby && v.dr_state() == DrState::StandbyRunning)
        .all(|(s, v)| holds_acked_samples(st, s, v))
}

/// §9.7 / §4 An active that reports STANDBY_RUNNING has a standby holding
/// every sample the pair acknowledged at the active's epoch or before
/// (stored or in its log, read from its durable store, up or down).
pub fn running_active_has_standby_with_acked_samples(_: &DrModel, st: &State) -> bool {
    st.up()
        .filter(|(_, v)| v.role() == Role::Active && v.dr_state() == DrState::StandbyRunning)
        .all(|(s, v)| holds_acked_samples(st, 1 - s, v))
}

/// Whether server `holder`'s durable store holds (stored, or in its log)
/// every sample acknowledged as protected in `view`'s pair at its epoch or
/// before.
fn holds_acked_samples(st: &State, holder: ServerIx, view: &Server) -> bool {
    let store = &st.servers[usize::from(holder)].store;
    st.hist
        .sample_acks
        .iter()
        .filter(|a| {
            !a.unprotected
                && a.pair.is_some()
                && a.pair == view.pair_id()
                && a.epoch <= view.epoch()
        })
        .all(|a| {
            let client = edge_client(a.edge);
            (1..=a.up_to_seq).all(|q| store_has_sample(store, &client, q))
        })
}

/// Non-vacuity (`Start::SwitchedOver`, where the only standby there can be
/// is the rejoined zombie): a standby that caught up by snapshot is
/// STANDBY_RUNNING holding, copied from its active, every acknowledged sample.
pub fn copied_samples_on_running_standby(_: &DrModel, st: &State) -> bool {
    !st.hist.sample_acks.is_empty()
        && st.up().any(|(s, v)| {
            let store = &st.servers[usize::from(s)].store;
            v.role() == Role::Standby
                && v.dr_state() == DrState::StandbyRunning
                && st.hist.sample_acks.iter().all(|a| {
                    let client = edge_client(a.edge);
                    (1..=a.up_to_seq).all(|q| store.samples.contains_key(&(client.clone(), q)))
                })
        })
}

/// §2 / §6 No forged view or message fences a server: no server has heard of,
/// or is fenced by, an epoch above the highest one a genuine server has held
/// (or asked its peer to hand over in a planned switchover). Only the pinned
/// peer and valid proofs can raise them; the hostile actor has neither.
pub fn no_forged_fencing(_: &DrModel, st: &State) -> bool {
    let max = st.hist.max_epoch;
    (0..2u8).all(|s| {
        let (seen, fenced) = match st.server(s) {
            Some(v) => (v.highest_epoch_seen(), v.status().fenced_by),
            None => st.servers[usize::from(s)]
                .store
                .meta
                .as_ref()
                .map_or((0, None), |m| (m.epoch, m.fenced_by)),
        };
        seen <= max && fenced.is_none_or(|f| f <= max)
    })
}

/// §6 Forged writes are never stored: the key of the hostile actor's forged
/// `Append` is in no server's log, applied state, durable store or divergence
/// archive (no operator writes it, so it can only come from the forgery),
/// and the sample of its forged `SamplesBatch` in no server's samples.
pub fn forged_writes_never_stored(_: &DrModel, st: &State) -> bool {
    use crate::hostile::{FORGED_KEY, FORGED_VALUE};
    st.servers.iter().all(|n| {
        let in_memory = n.server.as_ref().is_some_and(|v| {
            v.applied().docs.contains_key(FORGED_KEY)
                || v.log()
                    .iter_after(0)
                    .any(|e| matches!(&e.op, Op::Put { key, .. } if key == FORGED_KEY))
        });
        !in_memory
            && !n.store.contains_put(FORGED_KEY, FORGED_VALUE)
            && !n.store.archived_put(FORGED_KEY, FORGED_VALUE)
            && !n
                .store
                .samples
                .values()
                .any(|p| p == crate::hostile::FORGED_SAMPLE)
    })
}

/// §6 A server dials only its configured or pinned peer, never an address
/// taken from an unauthenticated message: every peer message goes to `a` or `b`.
pub fn dials_only_peers(_: &DrModel, st: &State) -> bool {
    !st.hist
        .violations
        .iter()
        .any(|v| matches!(v, Violation::DialedStranger { .. }))
}

/// §3 / §6 A pair is left only by the operator (`removeStandby`, which the
/// model never runs): a server that joined a pair durably keeps its pair id,
/// in memory and on disk.
pub fn pair_left_only_by_operator(_: &DrModel, st: &State) -> bool {
    (0..2u8).all(|s| {
        let i = usize::from(s);
        let Some(pair) = st.hist.paired[i] else {
            return true;
        };
        let node = &st.servers[i];
        node.store.meta.as_ref().and_then(|m| m.pair_id) == Some(pair)
            && node
                .server
                .as_ref()
                .is_none_or(|v| v.pair_id() == Some(pair))
    })
}

/// §2 Every epoch proof a server or an edge holds is genuine: signed with the
/// key of the server it names as holder, which is `a` or `b` under its own
/// uuid. (Servers relay the proof they hold to edges; a forged one accepted
/// once would travel on to fence elsewhere.)
pub fn only_genuine_proofs_held(_: &DrModel, st: &State) -> bool {
    let genuine = |p: &EpochProof| {
        (0..2u8).any(|s| {
            let info = server_info(s);
            p.claim.holder == info.uuid
                && p.claim.holder_name == info.name
                && server_keys(s).verify(&server_identity(s).public_key, p)
        })
    };
    st.up().all(|(_, v)| v.epoch_proof().is_none_or(genuine))
        && st.edges.iter().all(|e| e.edge.proof().is_none_or(genuine))
}

/// §2 / §9.6 A genuine edge is never taken for a forger: no server marks one
/// of the model's edges as having claimed an epoch without a valid proof. A
/// marked client's proofs are no longer checked, so a genuine edge marked by
/// mistake could no longer fence an old active (convergence, §9.6).
pub fn genuine_edges_never_marked(_: &DrModel, st: &State) -> bool {
    st.up().all(|(_, v)| {
        v.contacts()
            .all(|c| c.client_id == crate::hostile::HOSTILE_CLIENT || c.forged_epoch_claims == 0)
    })
}

/// Non-vacuity: a forged heartbeat claim refused, and yet every edge follows
/// the promoted server and the old active is fenced (genuine fencing works
/// alongside the forgeries).
pub fn converged_despite_forgery(m: &DrModel, st: &State) -> bool {
    forged_view_refused(m, st) && converged_after_promotion(m, st)
}

/// Non-vacuity: a forged peer message reached a server and was refused at admission.
pub fn forged_peer_message_refused(_: &DrModel, st: &State) -> bool {
    st.hist.milestones & milestone::FORGED_PEER_REFUSED != 0
}
/// Non-vacuity: a forged heartbeat claim reached a server and was refused.
pub fn forged_view_refused(_: &DrModel, st: &State) -> bool {
    st.hist.milestones & milestone::FORGED_VIEW_REFUSED != 0
}

/// Non-vacuity: a write is acknowledged.
pub fn write_acknowledged(_: &DrModel, st: &State) -> bool {
    !st.hist.acks.is_empty()
}
/// Non-vacuity: a disaster failover completes.
pub fn disaster_failover_done(_: &DrModel, st: &State) -> bool {
    st.hist.milestones & milestone::DISASTER_PROMOTED != 0
}
/// Non-vacuity: a planned switchover completes.
pub fn planned_switchover_done(_: &DrModel, st: &State) -> bool {
    st.hist.milestones & milestone::PLANNED_PROMOTED != 0
}
/// Non-vacuity: a write acknowledged before a promotion is on the promoted server.
pub fn acked_write_survives_promotion(_: &DrModel, st: &State) -> bool {
    st.hist.acks.iter().any(|a| {
        let (k, v) = write_kv(a.key);
        st.up().any(|(s, srv)| {
            srv.role().is_writer()
                && srv.epoch() > a.epoch
                && st.servers[usize::from(s)].store.contains_put(&k, &v)
        })
    })
}
/// Non-vacuity: the fsyncs overlap — a standby holds, durably, an entry its
/// writer has not made durable yet.
pub fn standby_durable_first(_: &DrModel, st: &State) -> bool {
    st.up().any(|(s, srv)| {
        srv.role() == Role::Standby && {
            let other = &st.servers[usize::from(1 - s)].store.log;
            let mine = &st.servers[usize::from(s)].store.log;
            mine.last()
                .is_some_and(|e| other.last().is_none_or(|o| o.index < e.index))
        }
    })
}
/// Non-vacuity: a crashed server restarts from its store.
pub fn server_restarted(_: &DrModel, st: &State) -> bool {
    st.hist.milestones & milestone::RESTARTED != 0
}
/// Non-vacuity: a write is acknowledged without the standby (degrade).
pub fn unprotected_write(_: &DrModel, st: &State) -> bool {
    st.hist.milestones & milestone::UNPROTECTED_ACK != 0
}
/// Non-vacuity: a monitoring sample is acknowledged to its edge.
pub fn sample_acknowledged(_: &DrModel, st: &State) -> bool {
    !st.hist.sample_acks.is_empty()
}

macro_rules! reach {
    ($($f:ident: $name:literal => $role:ident / $state:ident;)*) => {
        $(
            #[doc = concat!("§9.8 Reachability: some server is ", $name, ".")]
            pub fn $f(_: &DrModel, st: &State) -> bool {
                st.up().any(|(_, v)| v.role() == Role::$role && v.dr_state() == DrState::$state)
            }
        )*
        /// §9.8: one `Sometimes` per (role, drState) of SPEC §2.
        pub fn reachability() -> Vec<(Role, DrState, Property<DrModel>)> {
            vec![$((Role::$role, DrState::$state, Property::sometimes(concat!("8 reach ", $name), $f))),*]
        }
    };
}

reach! {
    reach_standalone_unconfigured: "STANDALONE/UNCONFIGURED" => Standalone / Unconfigured;
    reach_standalone_promoted: "STANDALONE/STANDBY_PROMOTED" => Standalone / StandbyPromoted;
    reach_standby_candidate: "STANDBY/STANDBY_CANDIDATE" => Standby / StandbyCandidate;
    reach_standby_configuring: "STANDBY/STANDBY_CONFIGURING" => Standby / StandbyConfiguring;
    reach_standby_sync: "STANDBY/STANDBY_SYNC" => Standby / StandbySync;
    reach_standby_running: "STANDBY/STANDBY_RUNNING" => Standby / StandbyRunning;
    reach_standby_pending_promotion: "STANDBY/PENDING_STANDBY_PROMOTION" => Standby / PendingStandbyPromotion;
    reach_standby_failure: "STANDBY/FAILURE_GET_ACTIVE_STATUS" => Standby / FailureGetActiveStatus;
    reach_active_configuring: "ACTIVE/ACTIVE_CONFIGURING" => Active / ActiveConfiguring;
    reach_active_wait_standby: "ACTIVE/ACTIVE_WAIT_STANDBY" => Active / ActiveWaitStandby;
    reach_active_sync: "ACTIVE/STANDBY_SYNC" => Active / StandbySync;
    reach_active_running: "ACTIVE/STANDBY_RUNNING" => Active / StandbyRunning;
    reach_active_pending_demotion: "ACTIVE/PENDING_ACTIVE_DEMOTION" => Active / PendingActiveDemotion;
    reach_active_failure: "ACTIVE/FAILURE_GET_STANDBY_STATUS" => Active / FailureGetStandbyStatus;
    reach_zombie: "ZOMBIE/ZOMBIE" => Zombie / Zombie;
}

/// The safety properties (SPEC §9.1–§9.7), checked in every configuration.
pub fn safety() -> Vec<Property<DrModel>> {
    vec![
        Property::always("1 single writer per epoch", single_writer_per_epoch),
        Property::always("2 RPO 0 (acked writes on every later writer)", rpo_zero),
        Property::always(
            "2 dataLossBound 0 means no acked write lost",
            zero_loss_promotion,
        ),
        Property::always(
            "2 degrade: unprotected writes counted and kept",
            unprotected_counted_and_kept,
        ),
        Property::always(
            "2 durable logs agree at every (epoch, index)",
            durable_logs_match,
        ),
        Property::always("3 fencing: no ack after a higher epoch", fencing),
        Property::always("4 edges never regress", edges_never_regress),
        Property::always("5 role gates", role_gates),
        Property::always("6 edges follow only writers", edges_follow_only_writers),
        Property::always("7 samples stored at most once", samples_at_most_once),
        Property::always("7 acked samples kept", acked_samples_kept),
        Property::always(
            "7 a running standby holds every acked sample",
            running_standby_holds_acked_samples,
        ),
        Property::always(
            "7 a running active's standby holds every acked sample",
            running_active_has_standby_with_acked_samples,
        ),
        Property::always(
            "T fenced only by an epoch a server held (no forgery fences)",
            no_forged_fencing,
        ),
        Property::always("T forged writes never stored", forged_writes_never_stored),
        Property::always("T only genuine epoch proofs held", only_genuine_proofs_held),
        Property::always(
            "T genuine edges never marked as forging",
            genuine_edges_never_marked,
        ),
        Property::always("T servers dial only their peer", dials_only_peers),
        Property::always(
            "T a pair is left only by the operator",
            pair_left_only_by_operator,
        ),
    ]
}

/// Every property that `cfg` can exercise: the safety properties, the
/// non-vacuity examples its budgets allow, and the reachability of the drStates
/// this configuration is meant to reach (see [`expected_reach`]).
pub fn for_config(cfg: &ModelCfg) -> Vec<Property<DrModel>> {
    let mut v = safety();
    let mut some = |name: &'static str, f: fn(&DrModel, &State) -> bool, on: bool| {
        if on {
            v.push(Property::sometimes(name, f));
        }
    };
    some("write acknowledged", write_acknowledged, cfg.writes > 0);
    some(
        "disaster failover completed",
        disaster_failover_done,
        cfg.promotions > 0 && cfg.disaster,
    );
    some(
        "planned switchover completed",
        planned_switchover_done,
        cfg.promotions > 0 && cfg.planned,
    );
    some(
        "acked write on the promoted server",
        acked_write_survives_promotion,
        cfg.writes > 0 && cfg.promotions > 0 && cfg.start == Start::Paired,
    );
    some("server restarted", server_restarted, cfg.crashes > 0);
    some(
        "entry durable on the standby before its active",
        standby_durable_first,
        cfg.writes > 0 && cfg.durability == Durability::Async && cfg.start == Start::Paired,
    );
    some(
        "write acked unprotected (degrade)",
        unprotected_write,
        cfg.writes > 0
            && cfg.policy == OnStandbyLoss::Degrade
            && cfg.start == Start::Paired
            && cfg.cuts > 0,
    );
    some("sample acknowledged", sample_acknowledged, cfg.samples > 0);
    some(
        "copied samples on a running rejoined standby",
        copied_samples_on_running_standby,
        cfg.start == Start::SwitchedOver && cfg.edges > 0 && cfg.rejoins > 0,
    );
    some(
        "6 converged after promotion",
        converged_after_promotion,
        cfg.edges > 0 && cfg.promotions > 0,
    );
    let hostile = cfg.forgeries > 0;
    some(
        "forged peer message refused",
        forged_peer_message_refused,
        hostile && cfg.forge_menu.iter().any(|f| f.channel() == Channel::Peer),
    );
    some(
        "forged heartbeat claim refused",
        forged_view_refused,
        hostile
            && cfg.start == Start::Paired
            && cfg.forge_menu.iter().any(|f| f.channel() == Channel::Edge),
    );
    some(
        "6 converged after promotion despite forged claims",
        converged_despite_forgery,
        hostile
            && cfg.start == Start::Paired
            && cfg.edges > 0
            && cfg.promotions > 0
            && cfg.forge_menu.iter().any(|f| f.channel() == Channel::Edge),
    );
    let want = expected_reach(cfg);
    v.extend(
        reachability()
            .into_iter()
            .filter(|(r, s, _)| want.contains(&(*r, *s)))
            .map(|(_, _, p)| p),
    );
    v
}

/// The (role, drState) pairs a configuration must reach. The two CI models
/// together cover every pair of SPEC §2 (checked by a test).
pub fn expected_reach(cfg: &ModelCfg) -> Vec<(Role, DrState)> {
    use DrState::*;
    use Role::*;
    let mut v = vec![(Standby, StandbyRunning), (Active, StandbyRunning)];
    if cfg.edges > 0 && cfg.promotions > 0 && cfg.disaster {
        v.push((Role::Zombie, DrState::Zombie));
    }
    if cfg.start == Start::Unconfigured {
        v.extend([
            (Standalone, Unconfigured),
            (Standby, StandbyCandidate),
            (Standby, StandbyConfiguring),
            (Standby, StandbySync),
            (Active, ActiveConfiguring),
            (Active, ActiveWaitStandby),
        ]);
    }
    if cfg.peer_ticks != Some(0) && (cfg.cuts > 0 || cfg.crashes > 0 || cfg.net.lossy) {
        v.extend([
            (Standby, FailureGetActiveStatus),
            (Active, FailureGetStandbyStatus),
        ]);
    }
    if cfg.promotions > 0 {
        v.push((Standalone, StandbyPromoted));
        if cfg.planned || cfg.durability == Durability::Async {
            // A synchronous disk finishes a disaster promotion within one step.
            v.push((Standby, PendingStandbyPromotion));
        }
        if cfg.planned {
            v.extend([
                (Active, PendingActiveDemotion),
                (Role::Zombie, DrState::Zombie),
            ]);
        }
    }
    if cfg.crashes > 0 && cfg.start == Start::Paired {
        v.push((Standby, StandbySync));
        v.push((Active, StandbySync));
    }
    if cfg.rejoins > 0 {
        v.extend([(Standby, StandbyConfiguring), (Active, ActiveWaitStandby)]);
    }
    v.sort();
    v.dedup();
    v
}

/// Whether a property's discovery is a failure.
pub fn is_failure(p: &Property<DrModel>) -> bool {
    p.expectation == Expectation::Always
}
