//! # vcodr-model-check: the DR protocol of vcodr, model-checked
//!
//! Stateright models over the **production** state machines of `vcodr-core`
//! ([`vcodr_core::Server`], [`vcodr_core::Edge`]): two servers, N edges and an
//! operator, on a network that loses, duplicates and reorders messages, with
//! partitions, crashes, restarts from durable storage and asynchronous disk
//! flushes as nondeterministic actions. The properties of SPEC §9 are checked
//! on every reachable state within the budgets of a [`ModelCfg`].
//!
//! - [`nodes`]: the adapters — a core machine plus what its I/O layer holds
//!   (the reference [`vcodr_core::MemStore`], unflushed persist requests, armed
//!   timers). They feed inputs and carry out outputs; no protocol logic.
//! - [`model`]: the model's state, actions and budgets.
//! - [`hostile`]: the hostile actor `x`, a holder of a valid CA certificate
//!   that forges peer messages and heartbeat views (SPEC §6).
//! - [`properties`]: SPEC §9.1–§9.8 and the trust boundary, one function each.
//! - [`report`]: running the checker and printing verdicts and counterexamples.
//!
//! ```
//! use vcodr_model_check::{model::*, report::*};
//!
//! // The smallest useful check: paired servers, no edges, one write, nothing else.
//! let cfg = ModelCfg { edges: 0, crashes: 0, cuts: 0, promotions: 0, peer_ticks: Some(1), ..ModelCfg::ci() };
//! let report = run(cfg, &RunOpts::default());
//! assert_eq!(report.failures().count(), 0, "{}", report.render(false));
//! assert!(report.unique_states > 1);
//! ```
//!
//! What is and is not covered, the abstractions and the measured figures are
//! in this crate's README.

pub mod hostile;
pub mod model;
pub mod nodes;
pub mod properties;
pub mod report;

pub use model::{DrModel, ModelCfg};
pub use report::{run, Report, RunOpts};
