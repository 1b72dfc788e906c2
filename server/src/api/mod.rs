//! The admin API (SPEC §7): JSON-RPC 2.0 over HTTPS on `admin_listen`.
//!
//! - [`rpc`]: requests — the envelope, the method table's parsing of params
//!   into calls, JSON-RPC errors;
//! - [`json`]: results — the JSON of the core's status, replies and tables;
//! - [`admin`]: the HTTPS listener, tokens, limits, routing;
//! - [`web`]: the DR page (`GET /`); [`metrics`]: `GET /metrics`;
//!   [`health`]: `GET /healthz` and `GET /readyz`.
//!
//! What a call means is the core's; this layer only translates.

pub mod admin;
pub mod health;
pub mod json;
pub mod metrics;
pub mod rpc;
pub mod web;
