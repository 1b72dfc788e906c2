//! # vcodr-core: the sans-IO heart of vcodr
//!
//! The disaster-recovery state machines of an orchestrator pair and of the
//! edges and gateways that follow it, the replication and heartbeat protocols
//! between them, and their wire messages and codec. No I/O happens here: no
//! async runtime, socket, file or clock. Time and randomness are inputs, and
//! durability is an input too ([`Input::Persisted`]), given back by the I/O
//! layer after it committed what an [`Output::Persist`] asked for — so "a write
//! is acknowledged only when durable on both servers" is a property of this
//! crate, checked by the model checker on these very types.
//!
//! ## The machines
//! - [`Server`]: roles STANDALONE, ACTIVE, STANDBY, ZOMBIE and their drStates
//!   (SPEC §2), operator commands ([`Command`]), replication to the standby
//!   with group commit, snapshots and catch-up, promotion (planned and
//!   disaster), epoch fencing (from the peer or from any edge's heartbeat),
//!   rejoin with a divergence archive, the role gate ([`gate()`]) and the client
//!   contact table.
//! - [`Edge`]: heartbeats to both servers, the follow rule, configuration pulls
//!   by version, and the bounded monitoring cache flushed in order.
//!
//! ## Calling contract
//! Both machines follow the same pattern: `handle_input(now, input)` then drain
//! `poll_output()` until `None`, carrying out each output in order. Timers are
//! outputs (`SetTimer`/`CancelTimer`) whose expiry comes back as an input.
//! `now` never goes backwards. Persist requests become durable in `seq` order.
//!
//! ```
//! use vcodr_core::*;
//!
//! let me = ServerInfo {
//!     uuid: 1,
//!     name: "a".into(),
//!     peer_address: "10.0.0.1:7443".into(),
//!     edge_address: "10.0.0.1:7444".into(),
//!     admin_address: "10.0.0.1:8443".into(),
//! };
//! let mut server = Server::new(ServerConfig::default(), me, Now::at(0));
//! let put = Command::Put { key: "site/1".into(), value: br#"{"vlan":10}"#.to_vec() };
//! server.handle_input(Now::at(1), Input::Command { req: 7, cmd: put });
//!
//! // The driver loop: carry out outputs; durability comes back as an input.
//! let mut acked = None;
//! while let Some(out) = server.poll_output() {
//!     match out {
//!         Output::Persist { seq, ops: _ } => {
//!             // ... write the ops to disk and fsync, then:
//!             server.handle_input(Now::at(2), Input::Persisted { up_to: seq });
//!         }
//!         Output::Reply { req, result } => acked = Some((req, result)),
//!         _ => {}
//!     }
//! }
//! assert_eq!(acked, Some((7, Ok(Reply::Written { key: "site/1".into(), version: 1 }))));
//! ```
//!
//! Design notes and what the model checker covers are in the repository's
//! `model-check/README.md`.

pub mod api;
pub mod codec;
pub mod config;
pub mod durable;
pub mod edge;
pub mod gate;
pub mod log;
pub mod msg;
pub mod proof;
pub mod rng;
pub mod server;
#[cfg(feature = "testing")]
pub mod testing;
pub mod types;

pub use api::*;
#[cfg(feature = "mutants")]
pub use config::Mutant;
pub use config::{ConfigError, EdgeConfig, ServerConfig};
pub use durable::{MemStore, Restored};
pub use edge::{Edge, EdgeEvent, EdgeInput, EdgeOutput, EdgeTimer, ServerSlot};
pub use msg::*;
pub use proof::{EpochClaim, EpochProof, Keys, ProofKeys};
pub use server::{ClientContact, ClientCount, ReplicationMode, Server, Status};
pub use types::*;
