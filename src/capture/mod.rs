//! Capture: where tool calls are observed. The library API (any Rust server), the rmcp wrapper
//! (one line around an rmcp `ServerHandler`), and (later) the proxy for servers in any language.

pub mod context;
pub mod library;

pub use library::{CallGuard, ErrorCode, Instrumentation, Observed, Outcome};
