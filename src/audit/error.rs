//! The one error type of the audit trail, with the retryable/permanent split that the
//! collector turns into an OTLP `UNAVAILABLE` (retry later) or a permanent failure.

use std::path::PathBuf;
use std::sync::Arc;

/// Everything the audit trail can fail with. Messages name the database or key file involved.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Arc<rusqlite::Error>,
    },
    #[error("audit database {path} does not exist")]
    Missing { path: PathBuf },
    #[error("{path} is not an mcp-otel audit database: {reason}")]
    NotAStore { path: PathBuf, reason: String },
    /// Another connection holds the write lock longer than the busy timeout. Retryable.
    #[error("audit database {path} is locked by another writer ({context}); retry later")]
    Locked {
        path: PathBuf,
        context: &'static str,
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// The disk (or the file-size limit) is full. Retryable once space is freed.
    #[error("audit database {path}: disk full while {context}; retry after freeing space")]
    DiskFull {
        path: PathBuf,
        context: &'static str,
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// A file of the store is immutable or append-only (see `writable`): refused before SQLite
    /// writes to it. Retryable once an operator has fixed the file.
    #[error("audit database file {path} is {reason}: the audit trail cannot be written")]
    Unwritable { path: PathBuf, reason: &'static str },
    /// The operating system refused a read or write (`EIO`, `EPERM` on a file made read-only
    /// under an open connection). Retryable: nothing was committed.
    #[error("audit database {path}: I/O error while {context}: {source}")]
    Io {
        path: PathBuf,
        context: &'static str,
        #[source]
        source: Arc<rusqlite::Error>,
    },
    #[error("audit database {path}: {context}: {source}")]
    Sqlite {
        path: PathBuf,
        context: &'static str,
        #[source]
        source: Arc<rusqlite::Error>,
    },
    #[error("audit signing key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("audit signing key {path}: {source}")]
    KeyIo {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A thread of the writer could not be started.
    #[error("cannot start the audit writer for {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The writer thread is gone (the store was closed, or it panicked).
    #[error("the audit writer for {path} has stopped")]
    WriterStopped { path: PathBuf },
    /// The chain moved under the writer (rows appended or removed by someone else): appends
    /// stop until an operator acts. Retryable, so nothing an exporter holds is dropped.
    #[error("audit database {path}: tampering detected: {what}")]
    Tampered { path: PathBuf, what: String },
    /// The PostgreSQL store (`postgres://…`): `target` is the URL without its password.
    /// Retryable when the server is down, restarting, refusing connections or out of resources.
    #[error("audit database {target}: {context}: {source}")]
    Postgres {
        target: String,
        context: &'static str,
        retryable: bool,
        #[source]
        source: Arc<tokio_postgres::Error>,
    },
    /// A PostgreSQL store that cannot be used as it is, or not now (`retryable`): another
    /// process writes the same chain, a chain's key differs. `target` has no password.
    #[error("audit database {target}: {reason}")]
    PostgresStore {
        target: String,
        reason: String,
        retryable: bool,
    },
    /// A flag or argument the caller gave is not valid.
    #[error("`{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// `audit sql` was given a statement that would write.
    #[error("the audit database is opened read-only; `audit sql` runs queries only ({0})")]
    ReadOnly(String),
    /// Writing a command's output failed (a closed pipe, a full disk).
    #[error("writing the output: {0}")]
    Output(#[source] Arc<std::io::Error>),
}

impl AuditError {
    /// True when trying the same thing again later may succeed (disk full, database locked,
    /// writer restarting): the collector answers such exports with a retryable status.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            AuditError::Locked { .. }
                | AuditError::DiskFull { .. }
                | AuditError::Unwritable { .. }
                | AuditError::Io { .. }
                | AuditError::WriterStopped { .. }
                | AuditError::Tampered { .. }
                | AuditError::Postgres {
                    retryable: true,
                    ..
                }
                | AuditError::PostgresStore {
                    retryable: true,
                    ..
                }
        )
    }

    /// Classifies a SQLite error from `context` on `path`: locks and full disks are retryable.
    pub(crate) fn sqlite(
        path: &std::path::Path,
        context: &'static str,
        e: rusqlite::Error,
    ) -> Self {
        use rusqlite::ErrorCode;
        let path = path.to_path_buf();
        let code = e.sqlite_error_code();
        let e = Arc::new(e);
        match code {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => AuditError::Locked {
                path,
                context,
                source: e,
            },
            Some(ErrorCode::DiskFull) => AuditError::DiskFull {
                path,
                context,
                source: e,
            },
            Some(ErrorCode::ReadOnly) => AuditError::ReadOnly(e.to_string()),
            Some(ErrorCode::SystemIoFailure) => AuditError::Io {
                path,
                context,
                source: e,
            },
            _ => AuditError::Sqlite {
                path,
                context,
                source: e,
            },
        }
    }
}
