//! The staging table in the PostgreSQL store: `collect_held_calls`, created with the rest of
//! the schema (`audit::pg::schema`), keyed by the replica's chain id first, so that replicas
//! sharing the database load and release only the calls they held themselves (the stored-twin
//! look-up reads every chain's rows: a record of ours may have reached another replica).
//!
//! One connection of its own, opened on first use and again after it was lost, with
//! `synchronous_commit = on`: each method is one statement (its own transaction), so concurrent
//! calls share the connection (tokio-postgres pipelines them). A database that is down fails the
//! call retryably (the export is answered UNAVAILABLE, the tick tries again).

use super::{StagedRow, StagingError, StoredRow, TwinQuery};
use crate::audit::AuditError;
use crate::audit::pg::{PgTarget, schema};
use std::sync::Arc;
use tokio_postgres::Client;

#[derive(Clone)]
pub(super) struct PgStaging {
    target: Arc<PgTarget>,
    chain_id: Arc<str>,
    client: Arc<tokio::sync::Mutex<Option<Arc<Client>>>>,
}

const STAGE_SQL: &str = "INSERT INTO collect_held_calls \
    (chain_id, \"timestamp\", trace_id, span_id, origin, due_at, call) \
    SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
    $7::text[]) ON CONFLICT DO NOTHING";

const RELEASE_SQL: &str = "DELETE FROM collect_held_calls h \
    USING unnest($2::text[], $3::text[], $4::text[]) AS k(at, trace_id, span_id) \
    WHERE h.chain_id = $1 AND h.\"timestamp\" = k.at AND h.trace_id = k.trace_id \
    AND h.span_id = k.span_id";

const LOAD_SQL: &str = "SELECT origin, due_at, call FROM collect_held_calls \
    WHERE chain_id = $1 ORDER BY \"timestamp\"";

const TWINS_SQL: &str = "SELECT \"timestamp\", span_id, parent_span_id, duration_ms, mcp \
    FROM mcp_logs WHERE \"timestamp\" >= $1 AND \"timestamp\" <= $2 \
    AND trace_id = $3 AND tool_name = $4";

impl PgStaging {
    pub(super) fn new(url: &str, chain_id: &str) -> Result<Self, StagingError> {
        let target = PgTarget::parse(url, "--audit").map_err(|e| StagingError {
            place: "--audit".to_owned(),
            message: e.to_string(),
            retryable: false,
        })?;
        Ok(PgStaging {
            target: Arc::new(target),
            chain_id: Arc::from(chain_id),
            client: Arc::default(),
        })
    }

    fn error(&self, e: AuditError) -> StagingError {
        StagingError {
            place: self.target.shown().to_owned(),
            retryable: e.is_retryable(),
            message: e.to_string(),
        }
    }

    fn failed(&self, context: &'static str, e: tokio_postgres::Error) -> StagingError {
        self.error(self.target.error(context, e))
    }

    /// The live connection, opened (with the schema made sure of) when there is none.
    async fn client(&self) -> Result<Arc<Client>, StagingError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        *slot = None;
        let t = &self.target;
        let mut client = t.connect().await.map_err(|e| self.error(e))?;
        client
            .batch_execute(
                "SET synchronous_commit = on; SET application_name = 'mcp-otel collect staging'",
            )
            .await
            .map_err(|e| self.failed("configuring the session", e))?;
        schema::ensure(&mut client, t)
            .await
            .map_err(|e| self.error(e))?;
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    pub(super) async fn stage(&self, rows: Vec<StagedRow>) -> Result<(), StagingError> {
        let column = |f: fn(&StagedRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
        let (ts, trace, span) = (
            column(|r| r.timestamp.as_str()),
            column(|r| r.trace_id.as_str()),
            column(|r| r.span_id.as_str()),
        );
        let (origin, due, call) = (
            column(|r| r.origin),
            column(|r| r.due_at.as_str()),
            column(|r| r.call.as_str()),
        );
        let chain: &str = &self.chain_id;
        self.client()
            .await?
            .execute(
                STAGE_SQL,
                &[&chain, &ts, &trace, &span, &origin, &due, &call],
            )
            .await
            .map_err(|e| self.failed("staging held calls", e))?;
        Ok(())
    }

    pub(super) async fn release(
        &self,
        keys: Vec<(String, String, String)>,
    ) -> Result<(), StagingError> {
        let ts: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        let trace: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
        let span: Vec<&str> = keys.iter().map(|k| k.2.as_str()).collect();
        let chain: &str = &self.chain_id;
        self.client()
            .await?
            .execute(RELEASE_SQL, &[&chain, &ts, &trace, &span])
            .await
            .map_err(|e| self.failed("releasing held calls", e))?;
        Ok(())
    }

    /// This replica's staged rows: (origin, due time, call), oldest first.
    pub(super) async fn load(&self) -> Result<Vec<(String, String, String)>, StagingError> {
        let chain: &str = &self.chain_id;
        let rows = self
            .client()
            .await?
            .query(LOAD_SQL, &[&chain])
            .await
            .map_err(|e| self.failed("loading held calls", e))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// The rows of `mcp_logs` (every chain's) that `q` finds.
    pub(super) async fn twins(&self, q: TwinQuery) -> Result<Vec<StoredRow>, StagingError> {
        let rows = self
            .client()
            .await?
            .query(TWINS_SQL, &[&q.start, &q.end, &q.trace_id, &q.tool_name])
            .await
            .map_err(|e| self.failed("looking up a held call's stored twin", e))?;
        Ok(rows
            .iter()
            .map(|r| StoredRow {
                start: r.get(0),
                span_id: r.get(1),
                parent_span_id: r.get(2),
                duration_ms: r.get(3),
                mcp: r.get(4),
            })
            .collect())
    }
}
