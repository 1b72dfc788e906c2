//! What goes into and comes out of the [`crate::Server`] machine: inputs
//! (`input`), outputs, persistence requests and events (`output`), operator
//! commands, their replies and errors (`command`). The role gate is
//! [`crate::gate`](mod@crate::gate).

mod command;
mod input;
mod method;
mod output;

pub use crate::gate::{gate, Redirects, RequestKind};
pub use command::*;
pub use input::*;
pub use method::Method;
pub use output::*;
