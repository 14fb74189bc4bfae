//! The audit trail: every tool call the collector receives, kept in an append-only SQLite
//! table (`mcp_logs`, the seed's columns), hash-chained and periodically signed, so that
//! `mcp-otel audit verify` detects and names any change, removal, reordering or truncation.
//!
//! - [`writer::AuditWriter`]: the append API (group commit on a dedicated thread; its answers
//!   wait for the fsync of their commit on another, `durable`).
//! - [`chain`]: the row encoding and hash; [`sign`]: keys and signed checkpoints.
//! - [`verify`], [`review`] (the daily write review and `query`), [`retention`].
//! - [`pg`]: the same trail in PostgreSQL, one chain per `collect` replica.

mod bulk;
pub mod chain;
mod durable;
mod error;
pub mod grpc;
#[cfg(test)]
mod migrate_tests;
pub mod pg;
pub mod retention;
pub mod review;
pub(crate) mod rollup;
pub mod sign;
pub mod store;
pub mod verify;
pub(crate) mod writable;
pub mod writer;

pub(crate) use error::AuditError;
pub use store::{ChainHead, Durability};
pub use writer::{AppendOutcome, AuditOptions, AuditWriter};
