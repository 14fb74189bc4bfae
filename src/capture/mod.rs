//! Capture: where tool calls are observed. The library API (any Rust server), the rmcp wrapper
//! (one line around an rmcp `ServerHandler`), and the shared pieces both use: trace context from
//! `_meta`, write classification, and the task-local slot a tool reports its write into.

pub(crate) mod classify;
pub mod context;
pub(crate) mod library;
pub mod proxy;
#[cfg(feature = "rmcp")]
pub mod rmcp;
pub(crate) mod scope;

pub use crate::record::Outcome;
pub use library::{CallGuard, ErrorCode, Instrumentation, Observed};
pub use scope::{record_confirmation, record_write};
