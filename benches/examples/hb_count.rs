//! Heartbeats into one server, for instruction counts under callgrind
//! (deterministic, unlike wall-clock on a shared machine):
//! `hb_count <standalone|active|standby|promoted|zombie> <n>`. Inputs are
//! built before the loop; run it twice (n and 2n) under
//! `valgrind --tool=callgrind --toggle-collect=*Server*handle_input* --toggle-collect=*Server*poll_output*`
//! and divide the difference by n: instructions per heartbeat in the core.
use std::sync::Arc;
use vcodr_benches::pair::{Durability, Pair, Side};
use vcodr_benches::{heartbeat_input, standalone_server};
use vcodr_core::*;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kind = args[1].as_str();
    let n: usize = args[2].parse().unwrap();
    let mut proof = None;
    let (mut server, epoch, pair_id) = match kind {
        "standalone" => (standalone_server(), 1, None),
        "promoted" | "zombie" => {
            // After a planned switchover; every heartbeat relays the proof.
            let mut pair = Pair::paired(Durability::ConfirmOnly).unwrap();
            pair.submit_to(Side::Standby, Command::Promote { force: true });
            pair.run_until_idle().unwrap();
            while pair.active.server.role() != Role::Zombie {
                pair.fire_next_timer().unwrap();
                pair.run_until_idle().unwrap();
            }
            proof = pair.standby.server.epoch_proof().cloned().map(Arc::new);
            let s = if kind == "promoted" {
                pair.standby.server.clone()
            } else {
                pair.active.server.clone()
            };
            let p = pair.standby.server.pair_id();
            (s, 2, p)
        }
        _ => {
            let pair = Pair::paired(Durability::ConfirmOnly).unwrap();
            let s = if kind == "active" {
                pair.active.server.clone()
            } else {
                pair.standby.server.clone()
            };
            let (e, p) = (s.epoch(), s.pair_id());
            (s, e, p)
        }
    };
    let clients = 10_000;
    let inputs: Vec<Input> = (0..n)
        .map(|i| {
            let mut input = heartbeat_input(i % clients, i as u64, epoch, pair_id);
            if let Input::Edge {
                msg: EdgeMsg::Heartbeat(hb),
                ..
            } = &mut input
            {
                hb.proof = proof.clone();
            }
            input
        })
        .collect();
    let mut replies = 0u64;
    for (i, input) in inputs.into_iter().enumerate() {
        server.handle_input(Now::at(1_000 + i as u64 / 1000), input);
        vcodr_core::testing::drain_with(&mut server, |out| {
            if matches!(out, Output::ReplyEdge { .. }) {
                replies += 1;
            }
        });
    }
    assert_eq!(replies as usize, n);
    println!("{kind} {n} {replies}");
}
