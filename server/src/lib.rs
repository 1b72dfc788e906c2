//! vcodr-server: the process that runs `vcodr-core` on real storage and
//! networking — the driver, redb storage, the QUIC peer and edge links, the
//! HTTPS admin API with the DR page and metrics, the CLI, the edge simulator
//! and the demo. No protocol decision is made here: that is `vcodr-core`'s.
//!
//! | module | what it holds |
//! |---|---|
//! | [`serve`] | `vcodr serve`: one server process put together — its configuration file, log lines and their throttle |
//! | [`driver`] | the task that owns the core: feeds it inputs, carries out its outputs, and the peer and edge links it speaks over |
//! | [`api`] | the admin API over HTTPS: JSON-RPC (`rpc`, `json`), the listener (`admin`), the DR page (`web`), metrics and health |
//! | [`storage`] | the durable store (redb), its reference in memory and the conformance suite both pass |
//! | [`tools`] | what runs beside a server: `ctl` (the API client), `edge-sim`, `demo`, `cluster` (test clusters of processes) |
//! | [`cli`] | the command line: parses and calls the above |

pub mod api;
pub mod cli;
pub mod driver;
pub mod serve;
pub mod storage;
pub mod tools;

// The paths the fuzz targets and the drills (crates outside this one's
// grouping work) still name; they are these modules, not copies.
pub use api::rpc;
pub use serve::config;
pub use tools::{ctl, edge_sim};
