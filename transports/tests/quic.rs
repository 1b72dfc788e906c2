//! The QUIC integration suite (`quic_suite`) on the quinn driver;
//! `quic_hub.rs` runs the same suite on the hub driver.

mod common;
mod quic_suite;

use vcodr_transport::QuicDriver;

/// The driver of every transport the suite binds (except where it mixes them).
const DRIVER: QuicDriver = QuicDriver::Quinn;
