//! The audit trail in PostgreSQL (`collect --audit postgres://…`), for deployments where
//! several `collect` replicas share one store.
//!
//! The table is the SQLite store's `mcp_logs` (same name, the seed's columns, the same chain v2
//! row hash) with one more column, `chain_id`: every replica appends to its own hash chain,
//! numbered by its own `id` sequence (the primary key is `(chain_id, id)`), and signs its own
//! checkpoints with its own key, so replicas never contend on one chain head and each chain
//! verifies on its own. A call is stored once across all chains: the uniqueness key is the
//! SQLite store's, `(timestamp, trace_id, span_id)`, over the whole table.
//!
//! - `target`: the URL (libpq style, with `sslmode` and `sslrootcert`), TLS through rustls.
//! - `schema`: the DDL (derived from `super::store::COLUMNS`), the triggers, the set-up.
//! - [`writer::PgWriter`]: group commit on a dedicated thread, as [`super::AuditWriter`].
//! - `verify`: every chain (or one), the first bad row of each.
//! - `retention`: `audit prune`, whole day partitions through a retention checkpoint per
//!   chain.
//! - `review`: `audit review` and `audit query` (PostgreSQL's text search) over every chain.

pub(crate) mod retention;
pub(crate) mod review;
pub(crate) mod schema;
pub(crate) mod target;
pub(crate) mod verify;
pub(crate) mod writer;

pub use review::{query_url, review_url};
pub use schema::{partition_name, search_condition};
pub(crate) use target::{PgTarget, is_postgres_url};
pub use verify::{PgVerifyReport, verify_url};
pub use writer::{PgOptions, PgWriter, default_key_path};
