//! The demo: a real MCP server, an OTLP receiver and a scripted client session in one process.

pub mod tasks;
