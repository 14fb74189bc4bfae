//! mcp-otel: OpenTelemetry observability for MCP tool calls.
//!
//! Data flows one way through the modules: `capture` observes a call and builds a
//! [`record::ToolCall`]; `emit` redacts it and turns it into a span and a JSON log line, exported
//! over OTLP/gRPC; `collect` receives spans and decodes them back into tool calls.
//!
//! # Modules
//!
//! In data-flow order (capture → emit → collect → audit), then the shared pieces:
//!
//! - [`capture`]: where calls are observed: the library API, the rmcp wrapper and the proxy
//!   (stdio and Streamable HTTP, no server changes); each produces a [`record::ToolCall`].
//! - [`emit`]: redacts a finished call, writes its JSON log line, turns it into a span and
//!   exports it over OTLP (gRPC, HTTP/protobuf or HTTP/JSON) off the call path.
//! - [`collect`]: `mcp-otel collect`: OTLP in, decoded back into tool calls, out to Prometheus
//!   metrics, the built-in alerts, the audit trail and the next OTLP hop.
//! - [`audit`]: the append-only, hash-chained and signed audit trail (SQLite or PostgreSQL),
//!   with verify, the write review, query and retention.
//! - [`cli`]: the command line's wiring, one module per subcommand.
//! - `demo` (feature `rmcp`): a real MCP server, an OTLP receiver and a scripted client session
//!   in one process.
//! - [`serve`]: bounded connection serving (connection caps, timeouts, bytes in flight) for
//!   `collect`'s listeners and the HTTP proxy.
//! - [`display`]: untrusted text made safe for a terminal or a log line.
//! - [`duration`]: the one parser for durations in flags and config files (`250ms`, `5m`, `90d`).
//! - [`hex`]: lower-case hexadecimal for trace ids, hashes, keys and fingerprints.
//! - [`redact`]: secrets and size caps, applied to a call before anything leaves the process.
//! - [`record`]: the one model of an observed tool call ([`record::ToolCall`]).
//! - [`semconv`]: every span attribute key read or written, once (OpenTelemetry MCP semantic
//!   conventions, plus the `mcp_otel.*` namespace).
//!
//! # Public API
//!
//! A library user instruments a Rust MCP server with [`capture::Instrumentation`] (one
//! [`capture::CallGuard`] per call; [`capture::record_write`] and
//! [`capture::record_confirmation`] report a call's write and its confirmation from inside the
//! tool), or wraps an rmcp `ServerHandler` in `capture::rmcp::Traced` (feature `rmcp`, on by
//! default). [`emit`] configures where spans and JSON lines go, [`record`] is the data model,
//! [`redact`] what is removed before export, and [`semconv`] the attribute keys a backend query
//! uses. The other public modules ([`audit`], [`cli`], [`collect`], `demo`, [`display`],
//! [`duration`], [`hex`], [`serve`], and [`capture::proxy`]) are public for the `mcp-otel`
//! binary, the tests and the benches; they are not a stable API.

#![warn(missing_docs, unreachable_pub)]

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
mod memory;
pub mod record;
pub mod redact;
pub mod semconv;
pub mod serve;
#[cfg(test)]
mod testing;
