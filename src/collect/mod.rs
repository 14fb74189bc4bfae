//! The collector side: OTLP in, tool calls out to metrics, alerts, the audit trail and the next
//! OTLP hop.
//!
//! `receive` → `decode` → `ingest::Collector`, which sorts out the records of one call
//! (`once`: exactly once, whichever layers instrument it; `staging` holds other
//! instrumentations' calls durably meanwhile) and feeds `metrics` (Prometheus),
//! `alerts` (the built-in evaluator, delivered by `notify`), `forward` (next hop), and an
//! optional [`ingest::CallStore`] (the audit trail, `audit_store`) that an export waits for
//! before it is acknowledged. `server` binds the
//! listeners; `config` parses and validates.

pub mod alerts;
mod audit_store;
pub mod config;
pub mod console;
pub(crate) mod decode;
#[cfg(test)]
pub(crate) mod decode_fuzz;
pub(crate) mod forward;
pub mod ingest;
pub(crate) mod metrics;
pub(crate) mod notify;
pub(crate) mod once;
pub(crate) mod receive;
mod scrub;
pub mod server;
pub(crate) mod staging;
pub mod testing;
#[cfg(feature = "tls")]
pub(crate) mod tls;
pub(crate) mod wire;

pub use config::CollectConfig;
pub use server::{CollectError, RunningCollector, start};
