//! The `AuditService` gRPC API (`proto/mcp_otel/audit/v1/audit.proto`): Review, Query (a server
//! stream) and Verify on the store of a running collector, for `mcp-otel audit --remote URL`.
//!
//! `collect` mounts [`service`] on its gRPC port behind its bearer-token check. Every request
//! opens its own read-only connection on a blocking thread, so reviews never slow the writer.

use super::error::AuditError;
use super::review::{self, QueryFilter, Review, ReviewFilter, UserCounts, WriteRow};
use super::store;
use super::verify::{self, VerifyOptions, VerifyReport};
use chrono::{DateTime, Utc};
use futures::Stream;
use std::path::PathBuf;
use std::pin::Pin;
use tonic::{Request, Response, Status};

/// The generated messages, client and server.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub(crate) mod proto {
    tonic::include_proto!("mcp_otel.audit.v1");
}

pub(crate) use proto::audit_service_client::AuditServiceClient;
pub(crate) use proto::audit_service_server::AuditServiceServer;

/// Serves the audit store at `db` (read-only).
pub fn service(db: impl Into<PathBuf>) -> AuditServiceServer<AuditService> {
    AuditServiceServer::new(AuditService {
        store: Store::Sqlite(db.into()),
    })
}

/// Serves the PostgreSQL store at `url` (every chain; read-only).
pub fn postgres_service(url: impl Into<String>) -> AuditServiceServer<AuditService> {
    AuditServiceServer::new(AuditService {
        store: Store::Postgres(url.into()),
    })
}

/// The store a service reads.
#[derive(Clone, Debug)]
enum Store {
    /// A SQLite file: each request opens it read-only on a blocking thread.
    Sqlite(PathBuf),
    /// A PostgreSQL store (URL): each request opens its own connection.
    Postgres(String),
}

/// The server side of `AuditService` over one store.
#[derive(Clone, Debug)]
pub struct AuditService {
    store: Store,
}

impl From<AuditError> for Status {
    fn from(e: AuditError) -> Self {
        let message = e.to_string();
        match e {
            AuditError::Missing { .. } => Status::not_found(message),
            AuditError::Invalid { .. } => Status::invalid_argument(message),
            AuditError::Locked { .. } | AuditError::DiskFull { .. } => Status::unavailable(message),
            _ => Status::internal(message),
        }
    }
}

fn time(field: &'static str, s: &str) -> Result<DateTime<Utc>, AuditError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| AuditError::Invalid {
            field,
            reason: format!("expected an RFC 3339 time, got {s:?}"),
        })
}

fn opt_time(field: &'static str, s: Option<String>) -> Result<Option<DateTime<Utc>>, AuditError> {
    s.map(|s| time(field, &s)).transpose()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AuditError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(Status::from)
}

type RecordStream = Pin<Box<dyn Stream<Item = Result<proto::AuditRecord, Status>> + Send>>;

#[tonic::async_trait]
impl proto::audit_service_server::AuditService for AuditService {
    async fn review(
        &self,
        request: Request<proto::ReviewRequest>,
    ) -> Result<Response<proto::ReviewResponse>, Status> {
        let r = request.into_inner();
        let filter = ReviewFilter {
            since: time("since", &r.since)?,
            until: time("until", &r.until)?,
            user: r.user,
            tool: r.tool,
        };
        let review = match &self.store {
            Store::Sqlite(db) => {
                let db = db.clone();
                blocking(move || {
                    let conn = store::open_ro(&db)?;
                    review::review(&conn, &db, &filter)
                })
                .await?
            }
            Store::Postgres(url) => super::pg::review_url(url, &filter).await?,
        };
        Ok(Response::new(review.into()))
    }

    type QueryStream = RecordStream;

    async fn query(
        &self,
        request: Request<proto::QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        let r = request.into_inner();
        let filter = QueryFilter {
            since: opt_time("since", r.since)?,
            until: opt_time("until", r.until)?,
            user: r.user,
            tool: r.tool,
            status: r.status,
            error_code: r.error_code,
            operation_type: r.operation_type,
            text: r.text,
            limit: r.limit,
        };
        // Rows go out as they are read; the bounded channel makes a slow client slow the
        // reader, not grow memory.
        let (tx, mut rx) = tokio::sync::mpsc::channel(256);
        let gone = |_| std::io::Error::other("client went away");
        match self.store.clone() {
            Store::Sqlite(db) => {
                tokio::task::spawn_blocking(move || {
                    let result = store::open_ro(&db).and_then(|conn| {
                        review::query(&conn, &db, &filter, |row| {
                            tx.blocking_send(Ok(record(&row))).map_err(gone)
                        })
                    });
                    if let Err(e) = result {
                        let _ = tx.blocking_send(Err(Status::from(e)));
                    }
                });
            }
            Store::Postgres(url) => {
                tokio::spawn(async move {
                    let send = |row: serde_json::Value| {
                        let tx = tx.clone();
                        async move { tx.send(Ok(record(&row))).await.map_err(gone) }
                    };
                    if let Err(e) = super::pg::review::query_each(&url, &filter, send).await {
                        let _ = tx.send(Err(Status::from(e))).await;
                    }
                });
            }
        }
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn verify(
        &self,
        request: Request<proto::VerifyRequest>,
    ) -> Result<Response<proto::VerifyResponse>, Status> {
        let r = request.into_inner();
        let options = VerifyOptions {
            pubkey: r
                .pubkey
                .as_deref()
                .map(super::sign::parse_public_key)
                .transpose()?,
            expect_head: r
                .expect_head
                .as_deref()
                .map(|h| {
                    super::chain::from_hex(h).ok_or_else(|| AuditError::Invalid {
                        field: "expect_head",
                        reason: format!("expected 64 hex digits, got {h:?}"),
                    })
                })
                .transpose()?,
            parallel_from_rows: None,
            require_signed: r.require_signed,
            // The deep index check takes the store's write lock: a local, offline operation.
            check_search_terms: false,
        };
        let report = match &self.store {
            Store::Sqlite(db) => {
                let db = db.clone();
                blocking(move || verify::verify_path(&db, &options)).await?
            }
            Store::Postgres(url) => pg_chain_report(url, r.chain_id.as_deref(), &options).await?,
        };
        Ok(Response::new(proto::VerifyResponse::from(&report)))
    }
}

/// One chain of the PostgreSQL store at `url` verified: `chain`, or the store's one chain; the
/// store's own problems (its triggers) are the chain's too, since they concern every chain.
async fn pg_chain_report(
    url: &str,
    chain: Option<&str>,
    options: &VerifyOptions,
) -> Result<VerifyReport, Status> {
    let mut store = super::pg::verify_url(url, chain, options).await?;
    if store.chains.len() != 1 {
        let ids: Vec<&str> = store.chains.iter().map(|c| c.chain_id.as_str()).collect();
        return Err(Status::invalid_argument(format!(
            "the store has {} chains ({}): name one in chain_id (--chain)",
            ids.len(),
            ids.join(", ")
        )));
    }
    let mut report = store.chains.remove(0).report;
    report.problems.extend(store.problems);
    Ok(report)
}

impl From<&VerifyReport> for proto::VerifyResponse {
    fn from(report: &VerifyReport) -> Self {
        proto::VerifyResponse {
            intact: report.is_intact(),
            rows: report.rows,
            head_id: report.head.id,
            head_hash: report.head.hash_hex(),
            checkpoints_verified: report.checkpoints_verified as u64,
            signed_through: report.signed_through,
            pruned_through: report.pruned_through,
            problems: report
                .problems
                .iter()
                .map(|p| proto::Problem {
                    kind: p.kind.as_str().to_owned(),
                    row: p.row,
                    detail: p.detail.clone(),
                })
                .collect(),
            summary: report.summary(),
            first_id: report.ids.map(|i| i.0),
            last_id: report.ids.map(|i| i.1),
            public_key: report.public_key.as_ref().map(|k| k.0.clone()),
            public_key_given: report.public_key.as_ref().is_some_and(|k| k.1),
            unsigned_rows: report.unsigned_rows,
        }
    }
}

/// A remote verification as the same report a local one gives, so both print alike.
impl TryFrom<proto::VerifyResponse> for VerifyReport {
    type Error = String;

    fn try_from(r: proto::VerifyResponse) -> Result<Self, String> {
        let hash = super::chain::from_hex(&r.head_hash)
            .ok_or_else(|| format!("head hash {:?} is not 64 hex digits", r.head_hash))?;
        let problems = r
            .problems
            .into_iter()
            .map(|p| {
                let kind = verify::ProblemKind::parse(&p.kind)
                    .ok_or_else(|| format!("unknown problem kind {:?}", p.kind))?;
                Ok(verify::Problem {
                    kind,
                    row: p.row,
                    detail: p.detail,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(VerifyReport {
            rows: r.rows,
            ids: r.first_id.zip(r.last_id),
            head: super::ChainHead {
                id: r.head_id,
                hash,
            },
            checkpoints_verified: usize::try_from(r.checkpoints_verified).unwrap_or(usize::MAX),
            signed_through: r.signed_through,
            pruned_through: r.pruned_through,
            unsigned_rows: r.unsigned_rows,
            public_key: r.public_key.map(|k| (k, r.public_key_given)),
            problems,
        })
    }
}

/// A row as `query` returns it (a JSON object) turned into the wire record.
fn record(row: &serde_json::Value) -> proto::AuditRecord {
    let text = |k: &str| row[k].as_str().map(str::to_owned);
    let json = |k: &str| match &row[k] {
        serde_json::Value::Null => None,
        v => Some(v.to_string()),
    };
    proto::AuditRecord {
        id: row["id"].as_i64().unwrap_or_default(),
        timestamp: text("timestamp").unwrap_or_default(),
        tool_name: text("tool_name").unwrap_or_default(),
        user: text("user").unwrap_or_default(),
        status: text("status").unwrap_or_default(),
        duration_ms: row["duration_ms"].as_f64().unwrap_or_default(),
        error_code: text("error_code"),
        operation_type: text("operation_type"),
        resource_id: text("resource_id"),
        user_confirmation: row["user_confirmation"].as_bool(),
        before_state: json("before_state"),
        after_state: json("after_state"),
        context: json("context"),
        trace_id: text("trace_id").unwrap_or_default(),
        span_id: text("span_id").unwrap_or_default(),
        mcp: json("mcp"),
        confirmation_outcome: text("confirmation_outcome"),
        confirmation_source: text("confirmation_source"),
        confirmation_arguments_digest: text("confirmation_arguments_digest"),
        confirmation_wait_ms: row["confirmation_wait_ms"].as_f64(),
        chain_id: text("chain_id"),
    }
}

/// The wire record back into the JSON object `audit query` prints.
pub(crate) fn record_to_json(r: &proto::AuditRecord) -> serde_json::Value {
    let json = |s: &Option<String>| {
        s.as_deref()
            .map(|s| serde_json::from_str(s).unwrap_or(serde_json::Value::String(s.to_owned())))
    };
    let mut v = serde_json::json!({
        "id": r.id,
        "timestamp": r.timestamp,
        "tool_name": r.tool_name,
        "user": r.user,
        "status": r.status,
        "duration_ms": r.duration_ms,
        "error_code": r.error_code,
        "operation_type": r.operation_type,
        "resource_id": r.resource_id,
        "user_confirmation": r.user_confirmation,
        "before_state": json(&r.before_state),
        "after_state": json(&r.after_state),
        "context": json(&r.context),
        "trace_id": r.trace_id,
        "span_id": r.span_id,
        "mcp": json(&r.mcp),
        "confirmation_outcome": r.confirmation_outcome,
        "confirmation_source": r.confirmation_source,
        "confirmation_arguments_digest": r.confirmation_arguments_digest,
        "confirmation_wait_ms": r.confirmation_wait_ms,
    });
    // Only a PostgreSQL store's rows have a chain: a SQLite store's print as before.
    if let (Some(chain), Some(o)) = (&r.chain_id, v.as_object_mut()) {
        o.insert("chain_id".to_owned(), chain.clone().into());
    }
    v
}

/// The filters on the wire, as the CLI sends them for a remote review.
impl From<&ReviewFilter> for proto::ReviewRequest {
    fn from(f: &ReviewFilter) -> Self {
        proto::ReviewRequest {
            since: store::format_time(f.since),
            until: store::format_time(f.until),
            user: f.user.clone(),
            tool: f.tool.clone(),
        }
    }
}

impl From<&QueryFilter> for proto::QueryRequest {
    fn from(f: &QueryFilter) -> Self {
        proto::QueryRequest {
            since: f.since.map(store::format_time),
            until: f.until.map(store::format_time),
            user: f.user.clone(),
            tool: f.tool.clone(),
            status: f.status.clone(),
            error_code: f.error_code.clone(),
            operation_type: f.operation_type.clone(),
            text: f.text.clone(),
            limit: f.limit,
        }
    }
}

/// `From` both ways between a domain row and its wire twin, which have the same fields.
macro_rules! same_fields {
    ($a:ty, $b:ty, [$($field:ident),* $(,)?]) => {
        impl From<$a> for $b {
            fn from(v: $a) -> Self {
                Self { $($field: v.$field),* }
            }
        }
        impl From<$b> for $a {
            fn from(v: $b) -> Self {
                Self { $($field: v.$field),* }
            }
        }
    };
}

same_fields!(
    WriteRow,
    proto::WriteOperation,
    [
        id,
        timestamp,
        tool_name,
        user,
        operation_type,
        resource_id,
        status,
        error_code,
        user_confirmation,
        confirmation_outcome,
        confirmation_source,
        recorded_at,
        chain_id,
    ]
);
same_fields!(
    UserCounts,
    proto::UserCounts,
    [user, writes, creates, updates, deletes, unconfirmed, failed]
);

impl From<Review> for proto::ReviewResponse {
    fn from(r: Review) -> Self {
        proto::ReviewResponse {
            since: r.since,
            until: r.until,
            writes: r.writes.into_iter().map(Into::into).collect(),
            per_user: r.per_user.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<proto::ReviewResponse> for Review {
    fn from(r: proto::ReviewResponse) -> Self {
        Review {
            since: r.since,
            until: r.until,
            writes: r.writes.into_iter().map(Into::into).collect(),
            per_user: r.per_user.into_iter().map(Into::into).collect(),
            // The limit is the reader's choice, applied where the review is printed.
            max_skew: review::DEFAULT_MAX_SKEW,
        }
    }
}
