//! What runs beside a server rather than in it: the API client ([`ctl`]),
//! the edge simulator ([`edge_sim`]), the guided demo ([`demo`]) and
//! clusters of server processes for tests and the demo ([`cluster`]).

pub mod cluster;
pub mod ctl;
pub mod demo;
pub mod edge_sim;
