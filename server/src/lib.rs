//! vcodr-server: the process that runs `vcodr-core` on real storage and
//! networking — the driver, redb storage, the QUIC peer and edge links, the
//! HTTPS admin API with the DR page and metrics, the CLI, the edge simulator
//! and the demo. No protocol decision is made here: that is `vcodr-core`'s.

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod driver;
pub mod edge_sim;
pub mod health;
pub mod links;
pub mod log;
pub mod metrics;
pub mod peers;
pub mod rpc;
pub mod serve;
pub mod storage;
pub mod throttle;
pub mod web;
