//! The DR readiness page served at `GET /`: plain HTML and JavaScript,
//! embedded in the binary, talking to the JSON-RPC API with the admin token.

/// The page.
pub const PAGE: &str = include_str!("web/index.html");
