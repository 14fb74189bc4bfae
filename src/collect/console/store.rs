//! The audit trail the console reads: the SQLite file `collect` writes, or the PostgreSQL store
//! its replicas share (every chain answering at once). Each page asks [`Trail`] for its data;
//! where the SQL differs there is one implementation per store (`overview::pg`, `call::pg`,
//! and `audit review`, `audit query` and `audit verify` of `crate::audit::pg`), everything else
//! (parsing the request, the answer's shape) is shared.
//!
//! Queries are read-only and run at most [`CONCURRENT_QUERIES`] at once, so that the console
//! never takes the cores or the connections ingestion needs: on SQLite each on its own
//! read-only connection off the async threads, on PostgreSQL on a session of a small pool
//! whose transactions are read-only by default.

use super::audit::{self, SearchQuery};
use super::call::{self, CallError, CallQuery};
use super::overview::{self, Overview, Range};
use crate::audit::AuditError;
use crate::audit::pg::{self, PgTarget};
use crate::audit::review::{Review, ReviewFilter};
use crate::audit::verify::{self, VerifyOptions};
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::Client;

/// Store queries that run at once: the console must not take the cores ingestion needs.
pub(crate) const CONCURRENT_QUERIES: usize = 2;

/// Why a page's data could not be read: the HTTP status and the message.
pub(crate) type Failure = (StatusCode, String);

fn unavailable(e: impl std::fmt::Display) -> Failure {
    (StatusCode::SERVICE_UNAVAILABLE, format!("audit trail: {e}"))
}

/// Where the audit trail is.
pub(crate) enum Store {
    /// The SQLite file of this `collect`.
    Sqlite(PathBuf),
    /// The PostgreSQL store shared by the replicas.
    Postgres(Box<PgStore>),
}

/// The PostgreSQL store: its URL (as given, for the verify, which connects on its own), where
/// it is, and the idle sessions.
pub(crate) struct PgStore {
    url: String,
    target: PgTarget,
    idle: Mutex<Vec<Client>>,
}

/// The audit trail and the bound on the console's queries of it.
pub(crate) struct Trail {
    store: Store,
    queries: Semaphore,
}

/// A PostgreSQL session taken from the pool for one page; back in the pool when dropped,
/// unless the connection is gone.
struct Session<'a> {
    client: Option<Client>,
    idle: &'a Mutex<Vec<Client>>,
    _permit: SemaphorePermit<'a>,
}

impl std::ops::Deref for Session<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Session<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("held until dropped")
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take().filter(|c| !c.is_closed()) {
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(c);
        }
    }
}

impl Trail {
    /// The SQLite file at `path`.
    pub(crate) fn sqlite(path: PathBuf) -> Trail {
        Trail::of(Store::Sqlite(path))
    }

    /// The PostgreSQL store at `url` (connected on first use).
    pub(crate) fn postgres(url: &str) -> Result<Trail, AuditError> {
        Ok(Trail::of(Store::Postgres(Box::new(PgStore {
            url: url.to_owned(),
            target: PgTarget::parse(url, "--audit")?,
            idle: Mutex::default(),
        }))))
    }

    fn of(store: Store) -> Trail {
        Trail {
            store,
            queries: Semaphore::new(CONCURRENT_QUERIES),
        }
    }

    /// `sqlite` or `postgres`.
    pub(crate) fn kind(&self) -> &'static str {
        match self.store {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    async fn permit(&self) -> Result<SemaphorePermit<'_>, Failure> {
        self.queries.acquire().await.map_err(|_| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the collector is stopping".to_owned(),
            )
        })
    }

    /// Runs `query` on a read-only connection to the SQLite file at `path`, off the async
    /// threads.
    async fn sqlite_query<T, F>(&self, path: &Path, query: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection, &Path) -> Result<T, Failure> + Send + 'static,
    {
        let _permit = self.permit().await?;
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let conn = crate::audit::store::open_ro(&path).map_err(unavailable)?;
            query(&conn, &path)
        })
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    }

    /// A session of the pool (a new connection when none is idle): read-only transactions,
    /// each statement bounded, sorts in memory as `audit review` has them, and no JIT
    /// compilation (on a busy machine it costs the overview more than it saves).
    async fn session<'a>(
        &'a self,
        target: &PgTarget,
        idle: &'a Mutex<Vec<Client>>,
    ) -> Result<Session<'a>, Failure> {
        let permit = self.permit().await?;
        // One the server has closed meanwhile (a restart, an idle timeout) is dropped, not used.
        let pooled = {
            let mut idle = idle.lock().unwrap_or_else(|e| e.into_inner());
            std::iter::from_fn(|| idle.pop()).find(|c| !c.is_closed())
        };
        let client = match pooled {
            Some(c) => c,
            None => {
                let c = target.connect().await.map_err(unavailable)?;
                c.batch_execute(
                    "SET default_transaction_read_only = on; SET statement_timeout = '60s'; \
                     SET work_mem = '256MB'; SET jit = off; \
                     SET application_name = 'mcp-otel console'",
                )
                .await
                .map_err(|e| unavailable(target.error("configuring the session", e)))?;
                c
            }
        };
        Ok(Session {
            client: Some(client),
            idle,
            _permit: permit,
        })
    }

    /// The overview of `range` (every chain on PostgreSQL).
    pub(crate) async fn overview(&self, range: Range) -> Result<Overview, Failure> {
        match &self.store {
            Store::Sqlite(path) => {
                self.sqlite_query(path, move |conn, _| {
                    overview::from_store(conn, range).map_err(unavailable)
                })
                .await
            }
            Store::Postgres(pg) => {
                let (target, idle) = (&pg.target, &pg.idle);
                let mut s = self.session(target, idle).await?;
                overview::pg::from_store(&mut s, target, range)
                    .await
                    .map_err(unavailable)
            }
        }
    }

    /// The call `q` names, with its trace, or `None`.
    pub(crate) async fn call(&self, q: CallQuery) -> Result<Option<Value>, CallError> {
        let key = q.key().map_err(|e| (StatusCode::BAD_REQUEST, e))?;
        match &self.store {
            Store::Sqlite(path) => {
                self.sqlite_query(path, move |conn, _| {
                    call::detail(conn, &q).map_err(|e| (StatusCode::BAD_REQUEST, e))
                })
                .await
            }
            Store::Postgres(pg) => {
                let (target, idle) = (&pg.target, &pg.idle);
                let s = self.session(target, idle).await?;
                call::pg::detail(&s, target, &key).await
            }
        }
    }

    /// The daily write review of `filter` (every chain on PostgreSQL).
    pub(crate) async fn review(&self, filter: ReviewFilter) -> Result<Review, Failure> {
        match &self.store {
            Store::Sqlite(path) => {
                self.sqlite_query(path, move |conn, path| {
                    crate::audit::review::review(conn, path, &filter).map_err(unavailable)
                })
                .await
            }
            Store::Postgres(pg) => {
                let (target, idle) = (&pg.target, &pg.idle);
                let s = self.session(target, idle).await?;
                pg::review::review(&*s, target, &filter)
                    .await
                    .map_err(unavailable)
            }
        }
    }

    /// The calls whose context or states hold every word of `q.text`, newest first:
    /// `audit query --text`, each store's own full-text search.
    pub(crate) async fn search(&self, q: SearchQuery) -> Result<Value, Failure> {
        let bad = |e| (StatusCode::BAD_REQUEST, e);
        match &self.store {
            Store::Sqlite(path) => {
                self.sqlite_query(path, move |conn, path| {
                    audit::search(conn, path, &q).map_err(bad)
                })
                .await
            }
            Store::Postgres(pg) => {
                let (target, idle) = (&pg.target, &pg.idle);
                let text = audit::search_text(&q).map_err(bad)?;
                let s = self.session(target, idle).await?;
                let mut rows = Vec::new();
                pg::review::query(&*s, target, &audit::search_filter(&text), |row| {
                    rows.push(row);
                    Ok(())
                })
                .await
                .map_err(unavailable)?;
                Ok(audit::search_answer(&text, rows))
            }
        }
    }

    /// `audit verify`'s result with every check at its default: on SQLite the report, on
    /// PostgreSQL one report per chain (`chains`, each with its `chain_id`) and the store's own
    /// problems. `report` adds what the page shows beside a report.
    pub(crate) async fn verify(
        &self,
        report: impl Fn(&verify::VerifyReport) -> Value + Send + 'static,
    ) -> Result<Value, String> {
        let options = VerifyOptions::default();
        match &self.store {
            Store::Sqlite(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || verify::verify_path(&path, &options))
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|r| report(&r))
                    .map_err(|e| e.to_string())
            }
            Store::Postgres(pg) => {
                let url = &pg.url;
                let r = pg::verify_url(url, None, &options)
                    .await
                    .map_err(|e| e.to_string())?;
                let chains: Vec<Value> = r
                    .chains
                    .iter()
                    .map(|c| {
                        let mut v = report(&c.report);
                        v["chain_id"] = json!(c.chain_id);
                        v
                    })
                    .collect();
                let problems: Vec<Value> = r.problems.iter().map(|p| p.to_json()).collect();
                Ok(json!({
                    "intact": r.is_intact(),
                    "summary": r.summary(),
                    "chains": chains,
                    "problems": problems,
                }))
            }
        }
    }
}
