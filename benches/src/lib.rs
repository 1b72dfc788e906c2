//! # vcodr-benches: criterion benches over `vcodr-core`
//!
//! The benches in `benches/` measure the sans-IO core alone (SPEC §10):
//! - `heartbeats`: edge heartbeats handled per second by one [`Server`]
//!   (STANDALONE, and both sides of a paired ACTIVE/STANDBY).
//! - `replication`: acknowledged `Put`s per second through an active/standby
//!   pair driven in memory by [`pair::Pair`], with 1 and 64 writes outstanding.
//! - `codec`: frame encode + decode of a heartbeat and of a 256-entry `Append`.
//!
//! This library holds what the benches share: the in-memory [`pair::Pair`]
//! (two real servers, peer messages shuttled by address, `Persist` applied to a
//! [`vcodr_core::MemStore`] each and confirmed at once) and message builders.
//!
//! Run them with
//! `cargo bench -p vcodr-benches -- --warm-up-time 1 --measurement-time 3`;
//! CI runs each once with `cargo bench -p vcodr-benches -- --test`.
//!
//! Two programs measure the machine rather than the core (not run by
//! `cargo test` or `cargo bench`; their parsing and tables are unit-tested,
//! and so is the HTTPS floor under a short load):
//! - `cargo run --release -p vcodr-benches --bin write-vs-pg`: a real pair of
//!   `vcodr serve` processes against the PostgreSQL anchor ([`write_vs_pg`]),
//!   beside what bounds them on the machine: the admin API's HTTPS with
//!   nothing behind it and a thread hand-off, timed ([`floor`]).
//! - `cargo run --release -p vcodr-benches --bin log-store`: commit latency of
//!   replicated-log appends in redb and in a checksummed segment file ([`log_store`]).
//!
//! ```
//! use vcodr_benches::pair::{Durability, Pair};
//! use vcodr_core::DrState;
//!
//! let mut pair = Pair::paired(Durability::MemStore).expect("the pair reaches STANDBY_RUNNING");
//! assert_eq!(pair.active.server.dr_state(), DrState::StandbyRunning);
//! let acked = pair.write_many(100, 8, 100, b"{\"vlan\":10}").expect("every write is acknowledged");
//! assert_eq!(acked, 100);
//! ```

use vcodr_core::*;

pub mod floor;
pub mod heartbeat_cost;
pub mod log_store;
pub mod machine;
pub mod pair;
pub mod write_vs_pg;

/// Edge address of bench server 1 (the active, or the lone STANDALONE); see [`server_info`].
pub const ACTIVE_EDGE_ADDRESS: &str = "10.0.0.1:7444";
/// Edge address of bench server 2 (the standby); see [`server_info`].
pub const STANDBY_EDGE_ADDRESS: &str = "10.0.0.2:7444";

/// The identity of bench server `n` (1: active, 2: standby).
pub fn server_info(n: u8) -> ServerInfo {
    ServerInfo {
        uuid: 0x1000 + u128::from(n),
        name: format!("vco{n}"),
        peer_address: format!("10.0.0.{n}:7443"),
        edge_address: format!("10.0.0.{n}:7444"),
        admin_address: format!("10.0.0.{n}:8443"),
    }
}

/// `server` with the stand-in keys of its name (`vcodr_core::testing`): it
/// signs its epoch proofs and verifies its peer's as a real server would.
pub fn keyed(server: Server) -> Server {
    let name = server.info().name.clone();
    server.with_keys(vcodr_core::testing::TestKeys::keys(&name))
}

/// A STANDALONE / UNCONFIGURED server whose start-up outputs were carried out.
pub fn standalone_server() -> Server {
    let mut server = Server::new(ServerConfig::default(), server_info(1), Now::at(0));
    let _ = vcodr_core::testing::settle(&mut server, Now::at(0));
    server
}

/// The id of bench client `n`, shaped like a real edge id.
pub fn client_id(n: usize) -> ClientId {
    format!("edge-{n:08}")
}

/// A heartbeat of client `n` as an edge that has heard from both servers and
/// follows the first, at epoch `epoch` of pair `pair_id`.
pub fn heartbeat(n: usize, seq: u64, epoch: Epoch, pair_id: Option<PairId>) -> Heartbeat {
    let view = |addr: &str, role: Role| ViewEntry {
        address: addr.to_string(),
        role: Some(role),
        epoch,
        pair_id,
        last_response_ms: Some(1_000),
    };
    let active = ACTIVE_EDGE_ADDRESS.to_string();
    let standby = STANDBY_EDGE_ADDRESS;
    Heartbeat {
        client_id: client_id(n),
        client_type: if n % 10 == 0 {
            ClientType::Gateway
        } else {
            ClientType::Edge
        },
        seq,
        view: [view(&active, Role::Active), view(standby, Role::Standby)],
        following: Some(active),
        config_epoch: epoch,
        config_version: 0,
        cached_samples: 0,
        dropped_samples: 0,
        proof: None,
    }
}

/// The server input carrying [`heartbeat`] `n`, as a transport would hand it over.
pub fn heartbeat_input(n: usize, seq: u64, epoch: Epoch, pair_id: Option<PairId>) -> Input {
    let hb = heartbeat(n, seq, epoch, pair_id);
    Input::Edge {
        reply_to: n as ReplyTo,
        client: client_id(n),
        client_type: hb.client_type,
        msg: EdgeMsg::Heartbeat(hb),
    }
}

/// A `Put` entry of about `value_bytes` bytes, as replicated in an `Append`.
pub fn put_entry(epoch: Epoch, index: Index, value_bytes: usize) -> Entry {
    Entry {
        epoch,
        index,
        op: Op::Put {
            key: format!("site/{index}"),
            value: vec![b'x'; value_bytes],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_gets_exactly_one_reply_and_a_contact_row() {
        let mut server = standalone_server();
        let outs =
            vcodr_core::testing::step(&mut server, Now::at(1), heartbeat_input(7, 1, 1, None));
        assert!(
            matches!(
                outs.as_slice(),
                [Output::ReplyEdge { reply_to: 7, msg: ServerMsg::HeartbeatReply(r) }]
                    if r.seq == 1 && r.role == Role::Standalone
            ),
            "{outs:?}"
        );
        assert_eq!(server.contacts().count(), 1);
    }
}
