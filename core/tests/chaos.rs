//! Randomized runs: writes, samples, crashes, restarts, partitions, lossy
//! links, promotions of both kinds and rejoins, with SPEC §9's safety
//! properties checked all along. Each run is reproducible from its seed,
//! printed on failure (`VCODR_SEED=<seed>` reruns one).

mod sim;

use sim::*;
use std::collections::BTreeMap;
use vcodr_core::rng::Rng;
use vcodr_core::*;

/// A write whose call returned success.
#[derive(Clone, Debug)]
struct Acked {
    key: String,
    value: String,
    server: usize,
    epoch: Epoch,
    unprotected: bool,
}

struct Run {
    sim: Sim,
    rng: Rng,
    policy: OnStandbyLoss,
    /// Outstanding writes: (server, request) → (key, value, epoch when issued).
    outstanding: BTreeMap<(usize, RequestId), (String, String)>,
    acked: Vec<Acked>,
    next_key: u64,
    promotions: u32,
}

impl Run {
    fn collect_acks(&mut self) {
        let done: Vec<(usize, RequestId)> = self
            .outstanding
            .keys()
            .filter(|(s, r)| self.sim.reply(*s, *r).is_some())
            .copied()
            .collect();
        for (s, r) in done {
            let (key, value) = self.outstanding.remove(&(s, r)).expect("listed");
            if let Some(Ok(Reply::Written { .. })) = self.sim.reply(s, r) {
                let (epoch, unprotected) = self.sim.servers[s].reply_context[&r];
                self.acked.push(Acked {
                    key,
                    value,
                    server: s,
                    epoch,
                    unprotected,
                });
            }
        }
    }

    /// The writer holding the highest epoch, running or crashed (from its durable metadata).
    fn writer_at_top(&self) -> Option<usize> {
        let role_epoch = |i: usize| -> Option<(Role, Epoch)> {
            let n = &self.sim.servers[i];
            match &n.server {
                Some(s) => Some((s.role(), s.epoch())),
                None => n.store.meta.as_ref().map(|m| (m.role, m.epoch)),
            }
        };
        (0..2)
            .filter_map(|i| role_epoch(i).map(|(r, e)| (i, r, e)))
            .max_by_key(|(_, r, e)| (*e, r.is_writer()))
            .filter(|(_, r, _)| r.is_writer())
            .map(|(i, _, _)| i)
    }

    fn check(&self) {
        let seed = self.sim.seed;
        // §9.1 single writer per epoch.
        let mut by_epoch: BTreeMap<Epoch, usize> = BTreeMap::new();
        for a in &self.acked {
            if a.epoch == 0 {
                continue;
            }
            let w = *by_epoch.entry(a.epoch).or_insert(a.server);
            assert_eq!(
                w, a.server,
                "seed {seed}: two servers acknowledged writes in epoch {}",
                a.epoch
            );
        }
        // §9.7 each sample stored at most once.
        for n in &self.sim.servers {
            assert_eq!(
                n.store.duplicate_samples, 0,
                "seed {seed}: sample stored twice on {}",
                n.info.name
            );
        }
        // §9.4 edges never regress.
        for (j, e) in self.sim.edges.iter().enumerate() {
            for ((epoch, _), seen) in e.applied.iter().zip(&e.seen_when_applied) {
                assert!(
                    epoch >= seen,
                    "seed {seed}: edge {j} applied epoch {epoch} after seeing {seen}"
                );
            }
        }
        // §9.2 RPO 0: the top writer holds every acknowledged write (sync mode),
        // or it is held somewhere: log, archive (degrade mode).
        if let Some(top) = self.writer_at_top() {
            let top_node = &self.sim.servers[top];
            let top_epoch = top_node.server.as_ref().map_or_else(
                || top_node.store.meta.as_ref().map_or(0, |m| m.epoch),
                |s| s.epoch(),
            );
            for a in &self.acked {
                if a.epoch >= top_epoch && a.server != top {
                    panic!("seed {seed}: write {} acknowledged by {} at epoch {} ≥ top writer's {top_epoch}", a.key, a.server, a.epoch);
                }
                let here = self.sim.servers[top]
                    .store
                    .contains_put(&a.key, a.value.as_bytes())
                    || self.sim.servers[top].server.as_ref().is_some_and(|s| {
                        s.log()
                            .iter_after(0)
                            .any(|e| matches!(&e.op, Op::Put { key, .. } if *key == a.key))
                    });
                if here {
                    continue;
                }
                let elsewhere = self.sim.servers.iter().any(|n| {
                    n.store.archived_put(&a.key, a.value.as_bytes())
                        || n.store.contains_put(&a.key, a.value.as_bytes())
                });
                match self.policy {
                    OnStandbyLoss::Block => {
                        panic!("seed {seed}: acknowledged write {a:?} missing on the top writer {top}: {}", self.sim.describe())
                    }
                    OnStandbyLoss::Degrade => {
                        assert!(
                            a.unprotected,
                            "seed {seed}: protected write {a:?} missing on the top writer"
                        );
                        assert!(
                            elsewhere,
                            "seed {seed}: unprotected write {a:?} silently lost"
                        );
                    }
                }
            }
        }
    }

    fn act(&mut self) {
        let roll = self.rng.range(0, 99);
        let sim = &mut self.sim;
        let running = |sim: &Sim, i: usize| sim.servers[i].server.is_some();
        match roll {
            0..=44 => {
                let s = self.rng.range(0, 1) as usize;
                if running(sim, s) {
                    for _ in 0..self.rng.range(1, 8) {
                        self.next_key += 1;
                        let key = format!("k{}", self.next_key);
                        let value = format!("v{}-{}", self.next_key, sim.seed);
                        let req = sim.command(
                            s,
                            Command::Put {
                                key: key.clone(),
                                value: value.clone().into_bytes(),
                            },
                        );
                        self.outstanding.insert((s, req), (key, value));
                    }
                }
            }
            45..=54 => {
                let j = self.rng.range(0, sim.edges.len() as u64 - 1) as usize;
                sim.sample(j);
            }
            55..=60 => {
                let s = self.rng.range(0, 1) as usize;
                if running(sim, s) && running(sim, 1 - s) {
                    sim.crash(s);
                }
            }
            61..=70 => {
                for s in 0..2 {
                    if !running(sim, s) {
                        sim.restart(s);
                    }
                }
            }
            71..=78 => {
                let a = Node::Server(self.rng.range(0, 1) as usize);
                let b = if self.rng.range(0, 1) == 0 {
                    Node::Server(0)
                } else {
                    Node::Edge(self.rng.range(0, sim.edges.len() as u64 - 1) as usize)
                };
                if a != b {
                    sim.cut(a, b);
                }
            }
            79..=86 => sim.heal_all(),
            87..=93 => {
                for s in 0..2 {
                    if sim.servers[s]
                        .server
                        .as_ref()
                        .is_some_and(|x| x.role() == Role::Standby)
                        && self.promotions < 3
                    {
                        let force = self.rng.range(0, 1) == 0;
                        sim.command(s, Command::Promote { force });
                        self.promotions += 1;
                    }
                }
            }
            _ => {
                for s in 0..2 {
                    if sim.servers[s]
                        .server
                        .as_ref()
                        .is_some_and(|x| x.role() == Role::Zombie)
                    {
                        sim.command(s, Command::Rejoin);
                    }
                }
            }
        }
    }
}

fn chaos(seed: u64, policy: OnStandbyLoss, steps: usize) {
    let mut sim = Sim::new(seed, policy, 3);
    sim.pair(0, 1);
    sim.faults = Faults::lossy();
    let mut run = Run {
        sim,
        rng: Rng::new(seed ^ 0x000C_4A05),
        policy,
        outstanding: BTreeMap::new(),
        acked: Vec::new(),
        next_key: 0,
        promotions: 0,
    };
    for _ in 0..steps {
        run.act();
        let ms = run.rng.range(5, 400);
        run.sim.run_for(ms);
        run.collect_acks();
        run.check();
    }
    // Heal everything and let it settle: one writer, edges converge on it.
    run.sim.heal_all();
    run.sim.faults = Faults::none();
    for s in 0..2 {
        if run.sim.servers[s].server.is_none() {
            run.sim.restart(s);
        }
    }
    run.sim.run_for(10_000);
    run.collect_acks();
    run.check();
    let promoted = run
        .sim
        .servers
        .iter()
        .flat_map(|n| n.store.history.iter())
        .filter(|t| t.to == DrState::StandbyPromoted)
        .count();
    eprintln!(
        "seed {seed}: {} writes acknowledged, {} promotions requested, {promoted} done; {}",
        run.acked.len(),
        run.promotions,
        run.sim.describe()
    );
    let writers: Vec<usize> = (0..2)
        .filter(|&i| run.sim.servers[i].s().role().is_writer())
        .collect();
    assert!(
        writers.len() <= 1,
        "seed {seed}: two writers after healing: {}",
        run.sim.describe()
    );
    if let [w] = writers[..] {
        let addr = run.sim.servers[w].info.edge_address.clone();
        for (j, f) in run.sim.following().iter().enumerate() {
            assert_eq!(
                f.as_deref(),
                Some(addr.as_str()),
                "seed {seed}: edge {j} does not follow the writer: {}",
                run.sim.describe()
            );
        }
    }
}

#[test]
fn chaos_sync_mode_never_loses_an_acknowledged_write() {
    for_seeds(seeds(0..40), |seed| chaos(seed, OnStandbyLoss::Block, 120));
}

#[test]
fn chaos_degrade_mode_never_silently_loses_a_write() {
    for_seeds(seeds(1000..1040), |seed| {
        chaos(seed, OnStandbyLoss::Degrade, 120)
    });
}
