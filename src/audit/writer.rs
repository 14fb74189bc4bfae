//! Group commit: one dedicated thread owns the write connection and turns whatever requests
//! are queued into one transaction, so many concurrent exports share one fsync.

use super::bulk::{BULK_ROWS, BulkInsert, LinkedRow};
use super::chain::{self, RowHasher};
use super::durable;
use super::error::AuditError;
use super::retention;
use super::sign::{AuditKey, Checkpoint, CheckpointKind};
use super::store::{self, ChainHead, Durability, StoredCall};
use crate::record::ToolCall;
use chrono::{DateTime, Utc};
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The full-text index is brought up to date by the first transaction that leaves this many
/// rows unindexed…
const TEXT_INDEX_BATCH: usize = 8192;
/// …or that commits this long after it last was; an idle writer catches up after this long too.
/// `audit query --text` reads the tail the index does not hold yet without it.
pub(crate) const TEXT_INDEX_LAG: Duration = Duration::from_secs(1);

/// How an [`AuditWriter`] runs.
#[derive(Clone, Debug)]
pub struct AuditOptions {
    /// The Ed25519 key file; default: the database path with extension `.key`.
    pub key_path: Option<PathBuf>,
    /// Sign a checkpoint after this many new rows…
    pub checkpoint_every_rows: u64,
    /// …or after this long with new rows, whichever comes first.
    pub checkpoint_interval: Duration,
    /// The most rows one transaction takes; more waiting requests go into the next one.
    pub max_batch_rows: usize,
    /// Requests that may wait for the writer before `append` waits for room.
    pub queue_capacity: usize,
    /// How hard each commit is pushed to disk (fsync every commit by default).
    pub durability: Durability,
    /// A cap on the database file's size. Past it appends fail with the retryable
    /// `AuditError::DiskFull`, as on a full disk, until retention makes room.
    pub max_size_bytes: Option<u64>,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            key_path: None,
            checkpoint_every_rows: 10_000,
            checkpoint_interval: Duration::from_secs(60),
            max_batch_rows: 16_384,
            queue_capacity: 4096,
            durability: Durability::Full,
            max_size_bytes: None,
        }
    }
}

/// What one `append` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Rows added to the chain.
    pub appended: usize,
    /// Calls already stored, same timestamp, trace_id and span_id (a retried export): skipped.
    pub duplicates: usize,
    /// For each call of the request, in order: whether it was added (`false`: a duplicate).
    pub(crate) inserted: Vec<bool>,
    /// The chain head after the transaction that carried these rows.
    pub head: ChainHead,
}

impl AppendOutcome {
    /// The answer to an empty append: nothing written, the head not read.
    pub(crate) fn nothing() -> Self {
        AppendOutcome {
            appended: 0,
            duplicates: 0,
            inserted: Vec::new(),
            head: ChainHead {
                id: 0,
                hash: chain::GENESIS_HASH,
            },
        }
    }
}

enum Request {
    Append {
        rows: Vec<StoredCall>,
        reply: oneshot::Sender<Result<AppendOutcome, AuditError>>,
    },
    Prune {
        cutoff: DateTime<Utc>,
        reply: oneshot::Sender<Result<retention::PruneOutcome, AuditError>>,
    },
}

/// The write side of the audit trail, shared by every export handler.
///
/// # Contract
///
/// - [`append`](Self::append) returns only after the rows are committed (with
///   [`Durability::Full`], fsynced): an `Ok` is the permission to acknowledge the export.
/// - It never blocks the calling thread: the SQLite work happens on the writer's own thread;
///   the future waits for room in the queue and then for the commit.
/// - Calls may overlap freely, from any task or thread (the handle is `Clone`). Concurrent
///   calls are committed together in one transaction (group commit); the rows of one call stay
///   contiguous and in order; the order between concurrent calls is unspecified.
/// - A call already stored (same timestamp, trace_id and span_id) is skipped and counted in
///   [`AppendOutcome::duplicates`], so a retried export is harmless.
/// - Cancelling the future (a timeout, a dropped export) does not withdraw the rows: they may
///   still be committed. The export must then be retried (not acknowledged); the retry finds
///   them as duplicates.
/// - Errors say whether retrying can help (`AuditError::is_retryable`): a locked database or
///   a full disk is retryable, and the writer keeps running for later calls.
/// - Dropping the last handle lets the queue drain, writes a final checkpoint and joins the
///   writer thread (a short blocking wait).
#[derive(Clone)]
pub struct AuditWriter {
    inner: Arc<WriterThread<Request>>,
}

/// What the handles of a writer share, for both stores: the queue of requests into its thread,
/// the thread, the store it writes (a path, or a URL without its password) and the public key
/// of its checkpoints. Dropped with the last handle: the queue closes, so the thread drains
/// it, signs its final checkpoint and ends, and it is joined.
pub(crate) struct WriterThread<R> {
    tx: Option<mpsc::Sender<R>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
    public_key: String,
}

impl<R> WriterThread<R> {
    /// The shared part of a writer whose `thread` serves `tx`'s queue.
    pub(crate) fn new(
        tx: mpsc::Sender<R>,
        thread: JoinHandle<()>,
        path: PathBuf,
        public_key: String,
    ) -> Self {
        WriterThread {
            tx: Some(tx),
            thread: Mutex::new(Some(thread)),
            path,
            public_key,
        }
    }

    /// The store: a file, or a URL without its password.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The public key that verifies the checkpoints (hex).
    pub(crate) fn public_key(&self) -> &str {
        &self.public_key
    }

    /// The queue into the thread.
    pub(crate) fn sender(&self) -> Result<&mpsc::Sender<R>, AuditError> {
        self.tx.as_ref().ok_or_else(|| self.stopped())
    }

    /// The error of a writer whose thread is gone.
    pub(crate) fn stopped(&self) -> AuditError {
        AuditError::WriterStopped {
            path: self.path.clone(),
        }
    }
}

impl<R> Drop for WriterThread<R> {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

impl AuditWriter {
    /// Opens (creating when absent) the store at `path` and its signing key, and starts the
    /// writer thread.
    pub fn open(path: impl AsRef<Path>, options: AuditOptions) -> Result<Self, AuditError> {
        let path = path.as_ref().to_path_buf();
        let conn = store::open_rw(&path, options.durability)?;
        let key_path = options
            .key_path
            .clone()
            .unwrap_or_else(|| AuditKey::default_path(&path));
        let recorded = store::meta(&conn, &path, "public_key")?;
        // A store that already has a key must not silently get a new one: its checkpoints
        // would stop verifying against the key its operators kept.
        let key = match &recorded {
            Some(public) if !key_path.exists() => {
                return Err(AuditError::Key {
                    path: key_path,
                    reason: format!(
                        "the file is missing, and this database was started with public key \
                         {public}; restore the key file or pass the right one"
                    ),
                });
            }
            _ => AuditKey::load_or_create(&key_path)?,
        };
        let public_key = key.public_hex();
        store::set_meta(&conn, &path, "public_key", &public_key)?;
        let recorded = store::meta(&conn, &path, "public_key")?;
        if recorded.as_deref() != Some(public_key.as_str()) {
            return Err(AuditError::Key {
                path: key_path,
                reason: format!(
                    "its public key {public_key} is not the one this database was started with \
                     ({}); checkpoints signed with it would not verify",
                    recorded.unwrap_or_default()
                ),
            });
        }
        let chain_id = store::chain_id(&conn, &path)?;
        // WAL checkpoints (copying committed pages into the database file) run on their own
        // thread and connection, so the writer thread only appends and fsyncs the WAL.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0")
            .map_err(|e| AuditError::sqlite(&path, "configuring the connection", e))?;
        if let Some(bytes) = options.max_size_bytes {
            let page: i64 = conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .map_err(|e| AuditError::sqlite(&path, "configuring the connection", e))?;
            let pages = (bytes / page.max(512) as u64).max(1);
            conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
                .map_err(|e| AuditError::sqlite(&path, "configuring the connection", e))?;
        }
        let written = store::head(&conn)
            .map_err(|e| AuditError::sqlite(&path, "reading the chain head", e))?;
        let signed_through = store::last_checkpoint(&conn)
            .map_err(|e| AuditError::sqlite(&path, "reading checkpoints", e))?
            .map_or(0, |c| c.row_id);
        if written.id > signed_through {
            // Rows this writer finds unsigned were appended before it started (a crash before
            // the shutdown checkpoint, or a row added while no collector ran): it will sign
            // over them with its next checkpoint, so say so now.
            eprintln!(
                "mcp-otel collect: audit: {} row(s) after the last signed checkpoint (row {signed_through}) \
                 were not signed before this start; check them with `mcp-otel audit verify \
                 --require-signed` on a copy taken now",
                written.id - signed_through
            );
        }
        // Durable answers without the writer waiting for the disk: the commit writes the log,
        // another thread fsyncs it before the answers go out.
        // The log is named after the file as SQLite resolved it (symbolic links followed).
        let sync = match options.durability {
            Durability::Full => conn
                .path()
                .and_then(|db| durable::WalSync::start(Path::new(db))),
            Durability::Normal => None,
        };
        if sync.is_some() {
            conn.execute_batch("PRAGMA synchronous = NORMAL")
                .map_err(|e| AuditError::sqlite(&path, "configuring the connection", e))?;
        }
        // Rows a crash left out of the full-text index (it follows the rows in batches).
        store::index_text(&conn, 0)
            .map_err(|e| AuditError::sqlite(&path, "indexing the text of the last rows", e))?;
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let mut state = WriterState {
            bulk: None,
            sync,
            unindexed: 0,
            indexed_at: Instant::now(),
            indexed_through: written.id,
            conn,
            path: path.clone(),
            checkpoints: Checkpoints {
                key,
                chain_id,
                last_at: Instant::now(),
            },
            options,
            hasher: RowHasher::new(),
            written,
            tampered: None,
            log_behind: Default::default(),
        };
        let thread = std::thread::Builder::new()
            .name("mcp-otel-audit".to_owned())
            .spawn(move || state.run(rx))
            .map_err(|e| AuditError::Spawn {
                path: path.clone(),
                source: e.into(),
            })?;
        Ok(AuditWriter {
            inner: Arc::new(WriterThread::new(tx, thread, path, public_key)),
        })
    }

    /// The database file.
    pub(crate) fn path(&self) -> &Path {
        self.inner.path()
    }

    fn sender(&self) -> Result<&mpsc::Sender<Request>, AuditError> {
        self.inner.sender()
    }

    fn stopped(&self) -> AuditError {
        self.inner.stopped()
    }

    /// Appends `calls` (in order) and returns once they are committed. See the type's contract.
    pub async fn append(&self, calls: Vec<ToolCall>) -> Result<AppendOutcome, AuditError> {
        self.append_calls(&calls).await
    }

    /// [`append`](Self::append) of borrowed calls: the rows are built from them before the
    /// future first waits, so the caller keeps its calls without cloning them.
    pub(crate) async fn append_calls(
        &self,
        calls: &[ToolCall],
    ) -> Result<AppendOutcome, AuditError> {
        if calls.is_empty() {
            return Ok(AppendOutcome::nothing());
        }
        let (reply, rx) = oneshot::channel();
        // The conversion (JSON text, hex ids) runs here, on the caller's thread, so that
        // concurrent exports spread it over the cores and the writer thread only hashes and
        // inserts.
        let rows = calls.iter().map(StoredCall::from_call).collect();
        self.sender()?
            .send(Request::Append { rows, reply })
            .await
            .map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())?
    }

    /// [`append`](Self::append) for plain threads: blocks the calling thread until the commit.
    /// From async code use `append`, which leaves the executor thread free while it waits.
    pub fn append_blocking(&self, calls: Vec<ToolCall>) -> Result<AppendOutcome, AuditError> {
        // Not tokio's blocking_send/blocking_recv, which panic on a runtime thread: a test or a
        // tool that calls this from async code gets a stalled thread, not a crash.
        futures::executor::block_on(self.append(calls))
    }

    /// Prunes rows recorded before `cutoff` through a signed retention checkpoint, serialised
    /// with the appends.
    pub async fn prune(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<retention::PruneOutcome, AuditError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Request::Prune { cutoff, reply })
            .await
            .map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())?
    }
}

struct WriterState {
    /// The bulk insert, prepared on `conn` by the first transaction that uses it. Declared
    /// before `conn`, so dropped (finalized) before it.
    bulk: Option<BulkInsert>,
    conn: Connection,
    path: PathBuf,
    checkpoints: Checkpoints,
    options: AuditOptions,
    hasher: RowHasher,
    /// The chain head as this writer left it. A head found on disk that differs is a row
    /// appended by someone else: the writer signs no head it did not write.
    written: ChainHead,
    /// Set when the chain moved under the writer: every append fails until an operator has
    /// looked (and restarted the collector).
    tampered: Option<String>,
    /// Rows committed since the full-text index last caught up ([`store::index_text`]), and
    /// when it did: see [`TEXT_INDEX_BATCH`] and [`TEXT_INDEX_LAG`].
    unindexed: usize,
    indexed_at: Instant,
    /// The full-text index holds every row with text up to this one.
    indexed_through: i64,
    /// With [`Durability::Full`]: the thread that fsyncs each commit before its answers go out
    /// (the connection then commits with `synchronous = NORMAL`). `None`: SQLite syncs (or, with
    /// [`Durability::Normal`], nobody), and answers go out as the commit returns.
    sync: Option<durable::WalSync>,
    /// Set by the checkpoint thread when the log has frames: [`WriterState::catch_up_log`].
    log_behind: Arc<AtomicBool>,
}

/// One request's rows, prepared outside the transaction.
struct Pending {
    rows: Vec<StoredCall>,
    reply: oneshot::Sender<Result<AppendOutcome, AuditError>>,
}

impl WriterState {
    fn run(&mut self, rx: mpsc::Receiver<Request>) {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let path = self.path.clone();
        let behind = self.log_behind.clone();
        let checkpointer = std::thread::Builder::new()
            .name("mcp-otel-audit-wal".to_owned())
            .spawn(move || wal_checkpoints(&path, &behind, stopped));
        self.serve(rx);
        drop(stop);
        if let Ok(t) = checkpointer {
            let _ = t.join();
        }
    }

    fn serve(&mut self, mut rx: mpsc::Receiver<Request>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(_) => return,
        };
        let mut pending: Vec<Pending> = Vec::new();
        loop {
            let interval = match self.unindexed {
                0 => self.options.checkpoint_interval,
                _ => self.options.checkpoint_interval.min(TEXT_INDEX_LAG),
            };
            let first = runtime.block_on(async { tokio::time::timeout(interval, rx.recv()).await });
            let first = match first {
                Err(_elapsed) => {
                    // Idle: a due time checkpoint is written even without new appends, and the
                    // full-text index catches up.
                    let _ = self.checkpoint(CheckpointKind::Periodic, false);
                    self.answer(std::iter::empty());
                    continue;
                }
                Ok(None) => break,
                Ok(Some(r)) => r,
            };
            let mut rows = 0usize;
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Append { rows: calls, reply } => {
                        rows += calls.len();
                        pending.push(Pending { rows: calls, reply });
                    }
                    Request::Prune { cutoff, reply } => {
                        // Commit what is queued first, so the prune sees a settled chain.
                        self.commit(&mut pending);
                        rows = 0;
                        let signer = retention::Signer {
                            key: &self.checkpoints.key,
                            chain_id: &self.checkpoints.chain_id,
                        };
                        let outcome = can_write(&self.path, &self.sync).and_then(|()| {
                            retention::prune_with(&self.conn, &self.path, Some(signer), cutoff)
                        });
                        self.answer(std::iter::once(Box::new(
                            move |synced: Result<(), AuditError>| {
                                let _ = reply.send(synced.and(outcome));
                            },
                        )
                            as durable::Answer));
                    }
                }
                if rows < self.options.max_batch_rows {
                    next = rx.try_recv().ok();
                }
            }
            self.catch_up_log();
            self.commit(&mut pending);
        }
        let _ = self.checkpoint(CheckpointKind::Shutdown, true);
        if let Some(sync) = self.sync.take() {
            let _ = sync.sync_now();
        }
    }

    /// Copies into the database file the log frames the checkpoint thread has not (those
    /// appended since it copied), when it asked for it: between two transactions nothing is
    /// appended, so this checkpoint copies the whole log (unless a reader still needs some of it),
    /// and the next transaction starts the log over (see [`wal_checkpoints`]). A failure leaves
    /// it for the next time.
    fn catch_up_log(&mut self) {
        // Not into a file made immutable (a checkpoint writes to the mapped `-shm` as well).
        if self.log_behind.swap(false, Ordering::Relaxed)
            && super::writable::check(&self.path).is_ok()
        {
            let _ = self
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        }
    }

    /// Sends the answers of a commit: once it is fsynced when this writer syncs, else now.
    fn answer(&self, answers: impl Iterator<Item = durable::Answer>) {
        match &self.sync {
            Some(sync) => sync.after_sync(answers.collect()),
            None => answers.for_each(|answer| answer(Ok(()))),
        }
    }

    /// Commits `pending` in one transaction and answers every request. If the transaction
    /// fails with a permanent error, each request is retried alone, so one bad request does
    /// not fail the others.
    fn commit(&mut self, pending: &mut Vec<Pending>) {
        if pending.is_empty() {
            return;
        }
        match self.transaction(pending) {
            Ok(outcomes) => {
                let answers = pending.drain(..).zip(outcomes).map(|(p, outcome)| {
                    let Pending { rows, reply } = p;
                    Box::new(move |synced: Result<(), AuditError>| {
                        let _ = reply.send(synced.map(|()| outcome));
                        // Freed where the answer goes out (the sync thread, when this writer
                        // syncs): a group commit's rows are thousands of small strings, and
                        // freeing them is work off the writer's serial path.
                        drop(rows);
                    }) as durable::Answer
                });
                self.answer(answers);
            }
            Err(e) if e.is_retryable() || pending.len() == 1 => {
                for p in pending.drain(..) {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
            Err(_) => {
                for p in std::mem::take(pending) {
                    let mut one = vec![p];
                    self.commit(&mut one);
                }
            }
        }
    }

    /// Commits `pending` in one transaction: [`BULK_ROWS`] rows per insert while they are all
    /// new, else (a row already stored, a resend, or one SQLite refuses) the whole transaction
    /// again one row at a time, which tells a resend (skipped) from a conflict (an error).
    fn transaction(&mut self, pending: &[Pending]) -> Result<Vec<AppendOutcome>, AuditError> {
        if let Some(outcomes) = self.try_transaction(pending, true)? {
            return Ok(outcomes);
        }
        self.try_transaction(pending, false)?.ok_or_else(|| {
            AuditError::sqlite(
                &self.path,
                "inserting into mcp_logs",
                rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_INTERNAL),
                    Some("one row at a time, a row was neither stored nor refused".to_owned()),
                ),
            )
        })
    }

    /// [`transaction`](Self::transaction) with `bulk` inserts (`Ok(None)`, nothing committed,
    /// when a row was not stored) or one row at a time (never `Ok(None)`).
    fn try_transaction(
        &mut self,
        pending: &[Pending],
        bulk: bool,
    ) -> Result<Option<Vec<AppendOutcome>>, AuditError> {
        let WriterState {
            conn,
            path,
            hasher,
            bulk: prepared,
            ..
        } = self;
        let sql = |context| {
            let path: &Path = path;
            move |e| AuditError::sqlite(path, context, e)
        };
        can_write(path, &self.sync)?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql("starting a transaction"))?;
        // Read the head inside the write lock: another process (an `audit prune`) may have
        // moved it since the last batch.
        let mut head = store::head(&tx).map_err(sql("reading the chain head"))?;
        check_head(path, &mut self.tampered, &self.written, &head)?;
        let recorded_at = store::format_time(Utc::now());
        let mut counts = Vec::with_capacity(pending.len());
        let mut inserter = store::RowInserter::new(&tx).map_err(sql("preparing the inserts"))?;
        let mut left: usize = pending.iter().map(|p| p.rows.len()).sum();
        if bulk && left >= BULK_ROWS && prepared.is_none() {
            *prepared = Some(BulkInsert::prepare(&tx).map_err(sql("preparing the inserts"))?);
        }
        let mut bulk = prepared.as_mut().filter(|_| bulk && left >= BULK_ROWS);
        // The rows of the next bulk insert, taken as new, and the hash the first links to.
        // (Their console rollup seconds beside.)
        let mut staged: Vec<LinkedRow<'_>> = Vec::with_capacity(BULK_ROWS);
        let mut staged_seconds: Vec<Option<i64>> = Vec::with_capacity(BULK_ROWS);
        let mut staged_after = head.hash;
        let (mut prev_hex, mut hash_hex) = (String::new(), String::new());
        for p in pending {
            let (mut appended, mut duplicates) = (0, 0);
            let mut inserted_rows = Vec::with_capacity(p.rows.len());
            for row in &p.rows {
                let fields = row.fields(head.id + 1, &recorded_at);
                let hash = hasher.hash(&fields, &head.hash);
                // A bulk insert takes the rest while a whole one is left.
                if let Some(insert) = bulk
                    .as_mut()
                    .filter(|_| !staged.is_empty() || left >= BULK_ROWS)
                {
                    left -= 1;
                    if staged.is_empty() {
                        staged_after = head.hash;
                    }
                    staged.push(LinkedRow { fields, hash });
                    staged_seconds.push(row.second);
                    head = ChainHead {
                        id: head.id + 1,
                        hash,
                    };
                    inserted_rows.push(true);
                    appended += 1;
                    if staged.len() == BULK_ROWS {
                        let all_new = insert
                            .insert(&tx, &staged_after, &staged)
                            .map_err(sql("inserting into mcp_logs"))?;
                        if !all_new {
                            // Rolled back as `tx` drops.
                            return Ok(None);
                        }
                        for (row, second) in staged.drain(..).zip(staged_seconds.drain(..)) {
                            inserter.count(&row.fields, second);
                        }
                    }
                    continue;
                }
                left -= 1;
                chain::write_hex(&mut prev_hex, &head.hash);
                chain::write_hex(&mut hash_hex, &hash);
                let inserted = inserter
                    .insert(&fields, row.second, &prev_hex, &hash_hex)
                    .map_err(sql("inserting into mcp_logs"))?;
                inserted_rows.push(inserted);
                if inserted {
                    head = ChainHead {
                        id: head.id + 1,
                        hash,
                    };
                    appended += 1;
                } else {
                    duplicates += 1;
                }
            }
            counts.push((appended, duplicates, inserted_rows));
        }
        inserter
            .finish()
            .map_err(sql("updating the console rollup"))?;
        let appended: usize = counts.iter().map(|(appended, _, _)| appended).sum();
        let index_now = self.unindexed + appended >= TEXT_INDEX_BATCH
            || self.indexed_at.elapsed() >= TEXT_INDEX_LAG;
        if index_now {
            store::index_text(&tx, self.indexed_through).map_err(sql("indexing the text"))?;
        }
        self.checkpoints.sign_if_due(
            path,
            &self.options,
            &tx,
            &head,
            CheckpointKind::Periodic,
            false,
        )?;
        tx.commit().map_err(sql("committing"))?;
        self.written = head.clone();
        match index_now {
            true => self.text_indexed(head.id),
            false => self.unindexed += appended,
        }
        Ok(Some(
            counts
                .into_iter()
                .map(|(appended, duplicates, inserted)| AppendOutcome {
                    appended,
                    duplicates,
                    inserted,
                    head: head.clone(),
                })
                .collect(),
        ))
    }

    /// Writes a checkpoint of `kind` in its own transaction, when due (or always with `force`).
    fn checkpoint(&mut self, kind: CheckpointKind, force: bool) -> Result<(), AuditError> {
        let path: &Path = &self.path;
        let sql = |context| move |e| AuditError::sqlite(path, context, e);
        // No checkpoint signs a head whose rows a failed fsync may have lost.
        can_write(path, &self.sync)?;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql("starting a transaction"))?;
        let head = store::head(&tx).map_err(sql("reading the chain head"))?;
        check_head(path, &mut self.tampered, &self.written, &head)?;
        let index_now = self.unindexed > 0;
        if index_now {
            store::index_text(&tx, self.indexed_through).map_err(sql("indexing the text"))?;
        }
        self.checkpoints
            .sign_if_due(path, &self.options, &tx, &head, kind, force)?;
        tx.commit().map_err(sql("committing a checkpoint"))?;
        if index_now {
            self.text_indexed(head.id);
        }
        Ok(())
    }

    /// The full-text index holds every committed row, up to row `through`.
    fn text_indexed(&mut self, through: i64) {
        self.unindexed = 0;
        self.indexed_at = Instant::now();
        self.indexed_through = through;
    }
}

/// Fails (and stays failed) when the chain head on disk is not the one this writer wrote: rows
/// were appended, or the tail removed, by someone else. Retryable, so exporters keep what they
/// hold until an operator has looked and restarted the collector.
pub(crate) fn check_head(
    path: &Path,
    tampered: &mut Option<String>,
    written: &ChainHead,
    found: &ChainHead,
) -> Result<(), AuditError> {
    if tampered.is_none() && found != written {
        let what = format!(
            "the chain head is row {} ({}), but this writer last wrote row {} ({}): rows were \
             added or removed by someone else; nothing more is signed or acknowledged until an \
             operator runs `mcp-otel audit verify` and restarts the collector",
            found.id,
            found.hash_hex(),
            written.id,
            written.hash_hex()
        );
        eprintln!("mcp-otel collect: audit: TAMPERING: {what}");
        *tampered = Some(what);
    }
    match tampered {
        Some(what) => Err(AuditError::Tampered {
            path: path.to_path_buf(),
            what: what.clone(),
        }),
        None => Ok(()),
    }
}

/// Whether this writer may commit: the file is writable and no fsync of its log has failed.
fn can_write(path: &Path, sync: &Option<durable::WalSync>) -> Result<(), AuditError> {
    super::writable::check(path)?;
    sync.as_ref().map_or(Ok(()), durable::WalSync::check)
}

/// Copies committed WAL pages into the database file every half second, until `stop` is
/// dropped, and has the log start over.
///
/// The copying is PASSIVE: it never blocks the writer. But SQLite starts the log over only when
/// a transaction begins with every frame of it copied, and a writer that never pauses has always
/// appended more by the time a checkpoint ends: under sustained load the log grew without end
/// (0.4 GB of log for a 0.2 GB store after 300,000 calls), every commit writing new pages of a
/// growing file. So a second pass copies what was appended during the first (far less), and
/// `behind` then asks the writer to copy the rest itself between two transactions
/// ([`WriterState::catch_up_log`]), so that its next transaction starts the log over, rewriting
/// pages the file and the page cache already have.
fn wal_checkpoints(path: &Path, behind: &AtomicBool, stop: std::sync::mpsc::Receiver<()>) {
    let Ok(conn) = Connection::open(path) else {
        return;
    };
    let _ = conn.busy_timeout(Duration::from_millis(100));
    // The frames in the log (copied or not) after a passive checkpoint.
    let passive = || {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1))
            .unwrap_or(0)
    };
    loop {
        match stop.recv_timeout(Duration::from_millis(500)) {
            // A checkpoint writes to the mapped `-shm` as well: not into a file made immutable.
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                if super::writable::check(path).is_ok() =>
            {
                if passive() > 0 && passive() > 0 {
                    behind.store(true, Ordering::Relaxed);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

/// The writer's signing side, kept apart from its connection (which a transaction borrows).
struct Checkpoints {
    key: AuditKey,
    chain_id: String,
    /// When the last checkpoint was signed.
    last_at: Instant,
}

impl Checkpoints {
    /// Signs the head when N rows or T seconds (`options`) have passed since the last
    /// checkpoint (or when `force`), provided there are rows the last checkpoint does not cover.
    fn sign_if_due(
        &mut self,
        path: &Path,
        options: &AuditOptions,
        conn: &Connection,
        head: &ChainHead,
        kind: CheckpointKind,
        force: bool,
    ) -> Result<(), AuditError> {
        let sql = |context| move |e| AuditError::sqlite(path, context, e);
        let last = store::last_checkpoint(conn).map_err(sql("reading checkpoints"))?;
        let covered = last.as_ref().map_or(0, |c| c.row_id);
        if head.id <= covered {
            return Ok(());
        }
        let due = force
            || (head.id - covered) as u64 >= options.checkpoint_every_rows
            || self.last_at.elapsed() >= options.checkpoint_interval;
        if !due {
            return Ok(());
        }
        let cp = self.key.sign(
            &self.chain_id,
            Checkpoint::next(last.as_ref(), kind, head.id, head.hash),
        );
        store::insert_checkpoint(conn, &cp).map_err(sql("writing a checkpoint"))?;
        self.last_at = Instant::now();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::bulk;
    use crate::audit::verify::{VerifyOptions, verify_path};
    use crate::record::tests_support::arb_tool_call;
    use proptest::prelude::*;

    /// A new store in a temporary folder (kept while the folder guard lives) and its writer.
    fn fresh() -> (tempfile::TempDir, std::path::PathBuf, AuditWriter) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let writer = AuditWriter::open(&path, options()).unwrap();
        (dir, path, writer)
    }

    fn options() -> AuditOptions {
        AuditOptions {
            checkpoint_every_rows: 7,
            durability: Durability::Normal,
            ..AuditOptions::default()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn any_calls_are_stored_and_verify(calls in prop::collection::vec(arb_tool_call(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("a.db");
            let writer = AuditWriter::open(&path, options()).unwrap();
            let outcome = writer.append_blocking(calls.clone()).unwrap();
            let unique: std::collections::HashSet<_> =
                calls.iter().map(|c| (c.ids.trace_id, c.ids.span_id)).collect();
            prop_assert_eq!(outcome.appended, unique.len());
            prop_assert_eq!(outcome.duplicates, calls.len() - unique.len());
            drop(writer);
            let report = verify_path(&path, &VerifyOptions::default()).unwrap();
            prop_assert!(report.is_intact(), "{:?}", report.problems);
            prop_assert_eq!(report.rows as usize, unique.len());
        }
    }

    #[test]
    fn a_store_refuses_a_missing_or_different_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        drop(AuditWriter::open(&path, options()).unwrap());
        let key = AuditKey::default_path(&path);
        std::fs::rename(&key, dir.path().join("kept.key")).unwrap();
        let err = AuditWriter::open(&path, options())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("a.key") && err.contains("missing"), "{err}");
        assert!(
            !key.exists(),
            "no new key may be created for an existing store"
        );
        AuditKey::load_or_create(&dir.path().join("other.key")).unwrap();
        let other = AuditOptions {
            key_path: Some(dir.path().join("other.key")),
            ..options()
        };
        let err = AuditWriter::open(&path, other).err().unwrap().to_string();
        assert!(
            err.contains("other.key") && err.contains("not the one"),
            "{err}"
        );
        std::fs::rename(dir.path().join("kept.key"), &key).unwrap();
        assert!(AuditWriter::open(&path, options()).is_ok());
    }

    #[test]
    fn a_full_store_is_a_retryable_error_and_the_chain_stays_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let writer = AuditWriter::open(
            &path,
            AuditOptions {
                // 64 pages of 16 KiB: the schema takes about 20.
                max_size_bytes: Some(1024 * 1024),
                ..options()
            },
        )
        .unwrap();
        let mut full = None;
        for i in 0..200 {
            let mut calls: Vec<ToolCall> = (0..20).map(|_| ToolCall::new("t", "u")).collect();
            for c in &mut calls {
                c.context = Some(serde_json::json!({ "blob": "x".repeat(2000), "i": i }));
            }
            if let Err(e) = writer.append_blocking(calls) {
                full = Some(e);
                break;
            }
        }
        let err = full.expect("the cap was never reached");
        assert!(matches!(err, AuditError::DiskFull { .. }), "{err}");
        assert!(err.is_retryable());
        assert!(err.to_string().contains("a.db"), "{err}");
        drop(writer);
        let report = verify_path(&path, &VerifyOptions::default()).unwrap();
        assert!(report.is_intact(), "{:?}", report.problems);
        assert!(report.rows > 0);
    }

    #[test]
    fn a_store_from_before_the_time_led_key_is_brought_up_to_date() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let call = ToolCall::new("t", "u");
        drop(AuditWriter::open(&path, options()).unwrap());
        // What an earlier build created: unique on the ids alone, no time-led key, and the
        // plain timestamp index of the builds after it.
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute_batch(
            "DROP INDEX mcp_logs_call; \
             CREATE UNIQUE INDEX old_key ON mcp_logs (trace_id, span_id); \
             CREATE INDEX mcp_logs_timestamp ON mcp_logs (timestamp);",
        )
        .unwrap();
        drop(raw);
        let writer = AuditWriter::open(&path, options()).unwrap();
        let first = writer.append_blocking(vec![call.clone()]).unwrap();
        let retry = writer.append_blocking(vec![call.clone()]).unwrap();
        assert_eq!(
            (first.appended, retry.appended, retry.duplicates),
            (1, 0, 1)
        );
        // Same ids, another start time: the old key still holds it off, without an error.
        let mut later = call.clone();
        later.timestamp += chrono::Duration::seconds(1);
        let later = writer.append_blocking(vec![later]).unwrap();
        assert_eq!((later.appended, later.duplicates), (0, 1));
        let other = writer
            .append_blocking(vec![ToolCall::new("t2", "u")])
            .unwrap();
        assert_eq!((other.appended, other.head.id), (1, 2));
        drop(writer);
        let raw = rusqlite::Connection::open(&path).unwrap();
        let indexes: Vec<String> = raw
            .prepare(
                "SELECT name FROM sqlite_master WHERE name IN ('mcp_logs_call', \
                 'mcp_logs_timestamp') ORDER BY name",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            indexes,
            ["mcp_logs_call"],
            "the key added, the plain index dropped"
        );
        let report = verify_path(&path, &VerifyOptions::default()).unwrap();
        assert!(report.is_intact(), "{:?}", report.problems);
    }

    /// The rows the full-text index holds.
    fn indexed(path: &Path) -> i64 {
        store::open_ro(path)
            .unwrap()
            .query_row("SELECT count(*) FROM mcp_logs_fts_docsize", [], |r| {
                r.get(0)
            })
            .unwrap()
    }

    /// The users of the calls `audit query --text` finds, newest first.
    fn found(path: &Path, text: &str) -> Vec<String> {
        let filter = crate::audit::review::QueryFilter {
            text: Some(text.into()),
            limit: 10,
            ..Default::default()
        };
        let mut users = Vec::new();
        let conn = store::open_ro(path).unwrap();
        crate::audit::review::query(&conn, path, &filter, |row| {
            users.push(row["user"].as_str().unwrap().to_owned());
            Ok(())
        })
        .unwrap();
        users
    }

    #[test]
    fn search_reads_the_rows_the_text_index_does_not_hold_yet() {
        let (_dir, path, writer) = fresh();
        let mut alice = ToolCall::new("get_task", "alice");
        alice.context = Some(serde_json::json!({ "task_id": "task-3" }));
        writer.append_blocking(vec![alice]).unwrap();
        // Its last checkpoint brings the index up to date.
        drop(writer);
        assert_eq!(indexed(&path), 1);
        // A row appended since, not indexed: the tail.
        let mut bob = ToolCall::new("get_task", "bob");
        bob.context = Some(serde_json::json!({ "task_id": "task-30", "title": "Quarterly" }));
        forge_tail(&path, &bob);
        assert_eq!(indexed(&path), 1);
        assert_eq!(found(&path, "task-3"), ["alice"], "whole tokens, not text");
        assert_eq!(found(&path, "TASK-30 quarterly"), ["bob"]);
        assert_eq!(found(&path, "task"), ["bob", "alice"]);
        let deep = VerifyOptions {
            check_search_terms: true,
            ..VerifyOptions::default()
        };
        let report = verify_path(&path, &deep).unwrap();
        assert!(
            report.is_intact(),
            "the tail is no problem: {:?}",
            report.problems
        );
        // The next writer indexes what an earlier one left out.
        drop(AuditWriter::open(&path, options()).unwrap());
        assert_eq!(indexed(&path), 2);
        assert_eq!(found(&path, "task-30"), ["bob"]);
    }

    #[test]
    fn an_idle_writer_brings_the_text_index_up_to_date() {
        let (_dir, path, writer) = fresh();
        let mut call = ToolCall::new("get_task", "alice");
        call.context = Some(serde_json::json!({ "task_id": "task-3" }));
        writer.append_blocking(vec![call]).unwrap();
        let waited = Instant::now();
        while indexed(&path) == 0 {
            assert!(
                waited.elapsed() < TEXT_INDEX_LAG * 10,
                "still not indexed after {:?}",
                waited.elapsed()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(found(&path, "task-3"), ["alice"]);
    }

    #[test]
    fn a_store_with_the_plain_timestamp_index_verifies_and_a_writer_drops_it() {
        let (_dir, path, writer) = fresh();
        writer
            .append_blocking(vec![ToolCall::new("t", "u")])
            .unwrap();
        drop(writer);
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute_batch("CREATE INDEX mcp_logs_timestamp ON mcp_logs (timestamp)")
            .unwrap();
        let has_it = || -> bool {
            raw.query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'mcp_logs_timestamp'",
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert!(has_it());
        let report = verify_path(&path, &VerifyOptions::default()).unwrap();
        assert!(report.is_intact(), "{:?}", report.problems);
        drop(AuditWriter::open(&path, options()).unwrap());
        assert!(!has_it());
        let report = verify_path(&path, &VerifyOptions::default()).unwrap();
        assert!(report.is_intact(), "{:?}", report.problems);
    }

    #[test]
    fn a_retried_export_is_skipped_not_duplicated() {
        let (_dir, _, writer) = fresh();
        let calls: Vec<_> = (0..5)
            .map(|i| ToolCall::new(format!("t{i}"), "u"))
            .collect();
        let first = writer.append_blocking(calls.clone()).unwrap();
        assert_eq!((first.appended, first.duplicates, first.head.id), (5, 0, 5));
        let retry = writer.append_blocking(calls).unwrap();
        assert_eq!((retry.appended, retry.duplicates, retry.head.id), (0, 5, 5));
    }

    /// Every column of every row but the time it was recorded and the links (which cover it),
    /// with the type SQLite stored it as.
    /// The tool names of the stored rows, in id order.
    fn stored_tool_names(path: &Path) -> Vec<String> {
        let conn = store::open_ro(path).unwrap();
        let mut stmt = conn
            .prepare("SELECT tool_name FROM mcp_logs ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn stored_rows(path: &Path) -> Vec<Vec<String>> {
        let conn = store::open_ro(path).unwrap();
        let columns: Vec<String> = store::COLUMNS
            .iter()
            .filter(|c| !["recorded_at", "prev_hash", "hash"].contains(&c.name))
            .map(|c| format!("typeof({0}) || ':' || coalesce({0}, '')", c.name))
            .collect();
        let sql = format!("SELECT {} FROM mcp_logs ORDER BY id", columns.join(", "));
        let mut stmt = conn.prepare(&sql).unwrap();
        stmt.query_map([], |r| (0..columns.len()).map(|i| r.get(i)).collect())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn rows_inserted_in_bulk_are_the_rows_inserted_one_at_a_time() {
        let calls: Vec<ToolCall> = (0..3 * bulk::BULK_ROWS + 5)
            .map(|i| {
                let mut c = ToolCall::new(format!("update_task_{}", i % 3), format!("u{i}"));
                c.duration_ms = i as f64 * 1.5;
                c.context = Some(serde_json::json!({ "id": i, "note": "é\"\u{0}" }));
                if i % 2 == 0 {
                    c.error_code = Some("-32602".into());
                    c.write = Some(crate::record::WriteOp {
                        operation_type: Some(crate::record::OperationType::Update),
                        resource_id: Some(format!("task-{i}")),
                        after_state: Some(serde_json::json!({ "done": true })),
                        user_confirmation: Some(i % 4 == 0),
                        ..Default::default()
                    });
                }
                c
            })
            .collect();
        let (_bulk_dir, bulk_path, writer) = fresh();
        writer.append_blocking(calls.clone()).unwrap();
        drop(writer);
        let (_one_dir, one_path, writer) = fresh();
        // Fewer rows per transaction than a bulk insert takes: one at a time.
        for few in calls.chunks(bulk::BULK_ROWS - 1) {
            writer.append_blocking(few.to_vec()).unwrap();
        }
        drop(writer);
        assert_eq!(stored_rows(&bulk_path), stored_rows(&one_path));
        for path in [&bulk_path, &one_path] {
            let report = verify_path(path, &VerifyOptions::default()).unwrap();
            assert!(report.is_intact(), "{:?}", report.problems);
        }
    }

    #[test]
    fn resends_among_new_calls_are_skipped_and_the_new_ones_stored_in_order() {
        let (_dir, path, writer) = fresh();
        let calls: Vec<_> = (0..4 * bulk::BULK_ROWS)
            .map(|i| ToolCall::new(format!("t{i}"), "u"))
            .collect();
        let resent: Vec<_> = calls.iter().step_by(3).cloned().collect();
        writer.append_blocking(resent.clone()).unwrap();
        let outcome = writer.append_blocking(calls.clone()).unwrap();
        assert_eq!(outcome.duplicates, resent.len());
        assert_eq!(outcome.appended, calls.len() - resent.len());
        let expected: Vec<bool> = (0..calls.len()).map(|i| i % 3 != 0).collect();
        assert_eq!(outcome.inserted, expected);
        assert_eq!(outcome.head.id, calls.len() as i64);
        drop(writer);
        let names = stored_tool_names(&path);
        // The resent calls as first stored, then the new ones in the order sent.
        let want: Vec<String> = resent
            .iter()
            .chain(
                calls
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % 3 != 0)
                    .map(|(_, c)| c),
            )
            .map(|c| c.tool_name.clone())
            .collect();
        assert_eq!(names, want);
        let report = verify_path(&path, &VerifyOptions::default()).unwrap();
        assert!(report.is_intact(), "{:?}", report.problems);
    }

    #[test]
    fn a_censoring_trigger_is_an_error_not_a_duplicate() {
        let (_dir, path, writer) = fresh();
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER hide_mallory BEFORE INSERT ON mcp_logs \
                 WHEN NEW.user = 'mallory' BEGIN SELECT RAISE(IGNORE); END",
            )
            .unwrap();
        let alice = ToolCall::new("delete_task", "alice");
        let mallory = ToolCall::new("delete_task", "mallory");
        let e = writer.append_blocking(vec![mallory.clone()]).unwrap_err();
        assert!(!e.is_retryable(), "{e}");
        assert!(e.to_string().contains("ignored the insert"), "{e}");
        // Among enough calls for a bulk insert too.
        let mut many: Vec<_> = (0..2 * crate::audit::bulk::BULK_ROWS)
            .map(|i| ToolCall::new(format!("t{i}"), "alice"))
            .collect();
        many.insert(5, mallory);
        let e = writer.append_blocking(many).unwrap_err();
        assert!(e.to_string().contains("ignored the insert"), "{e}");
        // Other exports are not failed by it.
        let ok = writer.append_blocking(vec![alice]).unwrap();
        assert_eq!((ok.appended, ok.duplicates), (1, 0));
    }

    /// Appends `call` as the next row with a correctly computed hash, as an attacker with
    /// write access to the file (but not the key) would.
    pub(crate) fn forge_tail(path: &Path, call: &ToolCall) {
        let conn = Connection::open(path).unwrap();
        let head = store::head(&conn).unwrap();
        let stored = StoredCall::from_call(call);
        let recorded_at = store::format_time(Utc::now());
        let fields = stored.fields(head.id + 1, &recorded_at);
        let hash = RowHasher::new().hash(&fields, &head.hash);
        let mut inserter = store::RowInserter::new(&conn).unwrap();
        let inserted = inserter
            .insert(
                &fields,
                stored.second,
                &chain::to_hex(&head.hash),
                &chain::to_hex(&hash),
            )
            .unwrap();
        assert!(inserted);
        // The console's rollup counts it too, as the writer's would.
        inserter.finish().unwrap();
    }

    #[test]
    fn a_forged_tail_is_never_signed_and_stops_acknowledgements() {
        let (_dir, path, writer) = fresh();
        writer
            .append_blocking(vec![ToolCall::new("get_task", "alice")])
            .unwrap();
        forge_tail(&path, &ToolCall::new("create_task", "mallory"));
        let checkpoints = |p: &Path| -> i64 {
            store::open_ro(p)
                .unwrap()
                .query_row("SELECT count(*) FROM audit_checkpoints", [], |r| r.get(0))
                .unwrap()
        };
        let before = checkpoints(&path);
        let e = writer
            .append_blocking(vec![ToolCall::new("get_task", "bob")])
            .unwrap_err();
        assert!(e.is_retryable(), "the exporter keeps the call: {e}");
        assert!(e.to_string().contains("tampering detected"), "{e}");
        // It stays stopped, and its shutdown signs nothing over the forged row.
        let again = writer.append_blocking(vec![ToolCall::new("x", "y")]);
        assert!(again.is_err());
        drop(writer);
        assert_eq!(
            checkpoints(&path),
            before,
            "no checkpoint covers the forged row"
        );
    }

    #[test]
    fn a_different_call_with_the_same_identity_is_refused_not_skipped() {
        let (_dir, _, writer) = fresh();
        let first = ToolCall::new("delete_task", "alice");
        writer.append_blocking(vec![first.clone()]).unwrap();
        let mut forged = first.clone();
        forged.user = "bob".into();
        let e = writer.append_blocking(vec![forged]).unwrap_err();
        assert!(e.to_string().contains("`user` differs"), "{e}");
        // The same call resent, even with less in it, is a duplicate.
        let mut resend = first;
        resend.context = None;
        let again = writer.append_blocking(vec![resend]).unwrap();
        assert_eq!((again.appended, again.duplicates), (0, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_transactions_and_keep_each_call_contiguous() {
        let (_dir, path, writer) = fresh();
        let mut tasks = Vec::new();
        for t in 0..8 {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                for b in 0..20 {
                    let calls = (0..3)
                        .map(|i| ToolCall::new(format!("w{t}-b{b}-{i}"), "u"))
                        .collect();
                    writer.append(calls).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        drop(writer);
        let names = stored_tool_names(&path);
        assert_eq!(names.len(), 8 * 20 * 3);
        for chunk in names.chunks(3) {
            let prefix = chunk[0].trim_end_matches("-0");
            assert_eq!(chunk[1], format!("{prefix}-1"));
            assert_eq!(chunk[2], format!("{prefix}-2"));
        }
        let report = verify_path(&path, &VerifyOptions::default()).unwrap();
        assert!(report.is_intact(), "{:?}", report.problems);
    }

    #[test]
    fn under_sustained_appends_the_log_starts_over() {
        let (_dir, path, writer) = fresh();
        // Four exporters appending back to back: the writer is never idle between transactions.
        let until = Instant::now() + Duration::from_millis(2500);
        std::thread::scope(|s| {
            for t in 0..4 {
                let writer = writer.clone();
                s.spawn(move || {
                    let mut b = 0;
                    while Instant::now() < until {
                        let calls = (0..50)
                            .map(|i| ToolCall::new(format!("w{t}-b{b}-{i}"), "u"))
                            .collect();
                        writer.append_blocking(calls).unwrap();
                        b += 1;
                    }
                });
            }
        });
        // Bytes 12..16 of the log's header: how many times the log started over.
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        let header = std::fs::read(&wal).unwrap();
        let restarts = u32::from_be_bytes(header[12..16].try_into().unwrap());
        assert!(restarts > 0, "the log never started over");
        drop(writer);
        let report = verify_path(&path, &VerifyOptions::default()).unwrap();
        assert!(report.is_intact(), "{:?}", report.problems);
    }

    #[test]
    fn a_locked_database_is_a_retryable_error_and_the_writer_recovers() {
        let (_dir, path, writer) = fresh();
        let blocker = rusqlite::Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let err = writer
            .append_blocking(vec![ToolCall::new("t", "u")])
            .unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("a.db"), "{err}");
        blocker.execute_batch("ROLLBACK").unwrap();
        let ok = writer
            .append_blocking(vec![ToolCall::new("t", "u")])
            .unwrap();
        assert_eq!(ok.appended, 1);
    }
}
