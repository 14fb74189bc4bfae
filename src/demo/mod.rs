//! The demo: a real MCP server, an OTLP receiver and a scripted client session in one process.

pub mod confirm;
mod run;
pub mod tasks;

pub use run::{DemoError, run};
