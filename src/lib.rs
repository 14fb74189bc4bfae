//! mcp-otel: OpenTelemetry observability for MCP tool calls.
//!
//! Data flows one way through the modules: `capture` observes a call and builds a
//! [`record::ToolCall`]; `emit` redacts it and turns it into a span and a JSON log line, exported
//! over OTLP/gRPC; `collect` receives spans and decodes them back into tool calls.

#![warn(unreachable_pub)]

pub mod audit;
pub mod capture;
pub mod cli;
pub mod collect;
#[cfg(feature = "rmcp")]
pub mod demo;
pub mod display;
pub mod duration;
pub mod emit;
pub mod hex;
pub mod record;
pub mod redact;
pub mod semconv;
pub mod serve;
