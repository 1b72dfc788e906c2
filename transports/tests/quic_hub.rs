//! The QUIC integration suite (`quic_suite`) on the hub driver;
//! `quic.rs` runs the same suite on the quinn driver.

mod common;
mod quic_suite;

use vcodr_transport::QuicDriver;

/// The driver of every transport the suite binds (except where it mixes them).
const DRIVER: QuicDriver = QuicDriver::Hub;
