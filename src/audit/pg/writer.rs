//! Group commit into PostgreSQL: one dedicated thread (with its own single-threaded runtime)
//! owns this replica's connection and turns whatever requests are queued into one transaction,
//! so many concurrent exports share one commit (`synchronous_commit = on`: the commit returns
//! once the WAL is flushed on the server).
//!
//! One transaction is two round trips whatever its size: `BEGIN`, the chain head, the day lock
//! and the calls already stored among the batch's keys (a retry, possibly sent to another
//! replica first) sent together; then one `INSERT … SELECT FROM unnest(…)` of the new rows and
//! the `COMMIT` sent together (a due checkpoint is signed between them). Should a concurrent
//! replica commit one of the same calls between the look-up and the insert, the insert fails on
//! the day's uniqueness index, the `COMMIT` behind it rolls everything back, and the
//! transaction is redone (the look-up then finds the call).

use super::super::chain::{self, RowHasher};
use super::super::error::AuditError;
use super::super::sign::{AuditKey, Checkpoint, CheckpointKind};
use super::super::store::{self, ChainHead, StoredCall};
use super::super::writer::{AppendOutcome, WriterThread, check_head};
use super::schema;
use super::target::PgTarget;
use crate::record::ToolCall;
use chrono::{DateTime, NaiveDate, Utc};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, GenericClient, Transaction};

/// How a [`PgWriter`] runs.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// This replica's chain: unique per writer (two live writers on one chain are refused).
    pub(crate) chain_id: String,
    /// The Ed25519 key that signs this chain's checkpoints (created when absent).
    pub key_path: PathBuf,
    /// Sign a checkpoint after this many new rows…
    pub checkpoint_every_rows: u64,
    /// …or after this long with new rows, whichever comes first.
    pub(crate) checkpoint_interval: Duration,
    /// The most rows one transaction takes.
    pub(crate) max_batch_rows: usize,
    /// Requests that may wait for the writer before `append` waits for room.
    pub(crate) queue_capacity: usize,
    /// Added to the clock that stamps `recorded_at` (zero; tests of retention record days in
    /// the past with it).
    #[doc(hidden)]
    pub clock_offset: chrono::Duration,
}

impl PgOptions {
    /// The defaults of the SQLite writer, for `chain_id`, with its default key file.
    pub fn new(chain_id: impl Into<String>) -> Self {
        let chain_id = chain_id.into();
        let d = super::super::AuditOptions::default();
        PgOptions {
            key_path: default_key_path(&chain_id),
            chain_id,
            checkpoint_every_rows: d.checkpoint_every_rows,
            checkpoint_interval: d.checkpoint_interval,
            max_batch_rows: d.max_batch_rows,
            queue_capacity: d.queue_capacity,
            clock_offset: chrono::Duration::zero(),
        }
    }
}

/// The chain id of a replica that was given none: `<hostname>/<configured gRPC listen address>`,
/// stable across restarts of the same pod or host (a StatefulSet's pod name, a VM's name).
pub(crate) fn default_chain_id(grpc_listen: &str) -> String {
    format!("{}/{grpc_listen}", hostname())
}

/// `mcp-audit-<chain id, with anything but letters, digits, `.` and `-` as `-`>.key`, in the
/// working directory.
pub fn default_key_path(chain_id: &str) -> PathBuf {
    let safe: String = chain_id
        .chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                true => c,
                false => '-',
            },
        )
        .collect();
    PathBuf::from(format!("mcp-audit-{safe}.key"))
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and we stop at the first NUL or the end.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match rc {
        0 if end > 0 => String::from_utf8_lossy(&buf[..end]).into_owned(),
        _ => "localhost".to_owned(),
    }
}

/// A call as the writer inserts it: the stored text, and its start time as a `timestamptz`.
struct PgCall {
    stored: StoredCall,
    at: DateTime<Utc>,
}

impl PgCall {
    fn of(call: &ToolCall) -> Self {
        let at = millis(call.timestamp);
        // The hashed text is exactly what the timestamptz gives back.
        let stored = StoredCall::from_call_at(call, at);
        PgCall { stored, at }
    }
}

/// `t` cut to whole milliseconds, the precision of the stored text.
fn millis(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

struct Request {
    rows: Vec<PgCall>,
    reply: oneshot::Sender<Result<AppendOutcome, AuditError>>,
}

/// The write side of the PostgreSQL store for one replica (one chain).
///
/// # Contract
///
/// The [`AuditWriter`](super::super::AuditWriter)'s: `append` returns only after the commit (an
/// `Ok` is the permission to acknowledge), never blocks the calling thread, may be called
/// concurrently (concurrent calls share a transaction; each call's rows stay contiguous in the
/// chain), skips calls already stored in any chain (same timestamp, trace_id and span_id) and
/// refuses a different call claiming a stored call's identity. A database that is down,
/// restarting or refusing connections fails the call with a retryable error and is reconnected
/// on the next call; a commit whose outcome was lost with the connection is also an error (the
/// exporter retries, and the retry finds the rows if they were committed). A chain head that
/// moved under the writer (rows added or removed by someone else) stops every append until an
/// operator restarts the collector. Dropping the last handle drains the queue, signs a shutdown
/// checkpoint and joins the writer thread.
#[derive(Clone)]
pub struct PgWriter {
    inner: std::sync::Arc<WriterThread<Request>>,
}

impl PgWriter {
    /// Loads (or creates) the chain's key and starts the writer thread, which connects, creates
    /// or brings the schema up to date and registers the chain. A database that cannot be
    /// reached now is not an error (appends fail retryably until it can); a chain registered
    /// with another key, or an invalid URL, is.
    pub fn open(url: &str, options: PgOptions) -> Result<Self, AuditError> {
        let target = PgTarget::parse(url, "--audit")?;
        let key = AuditKey::load_or_create(&options.key_path)?;
        let public_key = key.public_hex();
        let shown = PathBuf::from(target.shown());
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let (ready, started) = std::sync::mpsc::channel();
        let state = WriterState {
            target,
            signer: Signer::new(key, &options),
            options,
            client: None,
            statements: None,
            written: None,
            in_doubt: None,
            tampered: None,
            hasher: RowHasher::new(),
            partitions_through: None,
        };
        let thread = std::thread::Builder::new()
            .name("mcp-otel-audit-pg".to_owned())
            .spawn(move || run(state, rx, ready))
            .map_err(|e| AuditError::Spawn {
                path: shown.clone(),
                source: e.into(),
            })?;
        let stopped = || AuditError::WriterStopped {
            path: shown.clone(),
        };
        match started.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_retryable() => {
                eprintln!(
                    "mcp-otel collect: audit: {e}; exports are refused (retryably) until it can be reached"
                );
            }
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => return Err(stopped()),
        }
        Ok(PgWriter {
            inner: std::sync::Arc::new(WriterThread::new(tx, thread, shown, public_key)),
        })
    }

    /// The public key that verifies this chain's checkpoints (hex).
    pub fn public_key(&self) -> &str {
        self.inner.public_key()
    }

    /// Appends `calls` (in order) to this replica's chain and returns once they are committed.
    pub async fn append(&self, calls: &[ToolCall]) -> Result<AppendOutcome, AuditError> {
        if calls.is_empty() {
            return Ok(AppendOutcome::nothing());
        }
        let (reply, rx) = oneshot::channel();
        // The conversion runs on the caller's thread, spread over the cores.
        let rows = calls.iter().map(PgCall::of).collect();
        let tx = self.inner.sender()?;
        tx.send(Request { rows, reply })
            .await
            .map_err(|_| self.inner.stopped())?;
        rx.await.map_err(|_| self.inner.stopped())?
    }

    /// [`append`](Self::append) for plain threads.
    pub fn append_blocking(&self, calls: &[ToolCall]) -> Result<AppendOutcome, AuditError> {
        futures::executor::block_on(self.append(calls))
    }
}

fn run(
    mut state: WriterState,
    rx: mpsc::Receiver<Request>,
    ready: std::sync::mpsc::Sender<Result<(), AuditError>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(AuditError::Spawn {
                path: PathBuf::from(state.target.shown()),
                source: e.into(),
            }));
            return;
        }
    };
    runtime.block_on(async move {
        let first = state.connect().await;
        let fatal = matches!(&first, Err(e) if !e.is_retryable());
        let _ = ready.send(first);
        if !fatal {
            state.serve(rx).await;
        }
    });
}

struct WriterState {
    target: PgTarget,
    signer: Signer,
    options: PgOptions,
    client: Option<Client>,
    /// The transaction's statements, prepared on `client`.
    statements: Option<Statements>,
    /// The chain head as this writer left it (`None` until the first connect read it).
    written: Option<ChainHead>,
    /// The head a commit would have left, when the connection died before its answer: the
    /// next connect accepts either.
    in_doubt: Option<ChainHead>,
    /// Set when the chain moved under the writer: every append fails from then on.
    tampered: Option<String>,
    hasher: RowHasher,
    /// The last day whose partition this writer made sure exists.
    partitions_through: Option<NaiveDate>,
}

/// A namespace for this project's session advisory locks (the second key is the chain's hash).
const CHAIN_LOCK: i32 = 0x6d63_706f; // "mcpo"

/// A namespace for the transaction locks that serialise the checkpoints of one chain (the
/// second key is the chain's hash): its writer's and `audit prune`'s retention checkpoints.
pub(crate) const CHECKPOINT_LOCK: i32 = 0x6d63_7063; // "mcpc"

/// A transaction's statements, prepared once per connection: each then costs one round trip
/// and no parsing or planning, and the reads that do not depend on each other are sent
/// together (pipelined).
struct Statements {
    head: tokio_postgres::Statement,
    day_lock: tokio_postgres::Statement,
    day_lock_shared: tokio_postgres::Statement,
    held: tokio_postgres::Statement,
    insert: tokio_postgres::Statement,
}

impl Statements {
    async fn prepare(client: &Client, t: &PgTarget) -> Result<Self, AuditError> {
        let prepare = |sql: String| async move {
            client
                .prepare(&sql)
                .await
                .map_err(|e| t.error("preparing the writer's statements", e))
        };
        Ok(Statements {
            head: prepare(HEAD_SQL.to_owned()).await?,
            day_lock: prepare("SELECT pg_advisory_xact_lock($1)".to_owned()).await?,
            day_lock_shared: prepare("SELECT pg_advisory_xact_lock_shared($1)".to_owned()).await?,
            held: prepare(held_sql()).await?,
            insert: prepare(insert_sql()).await?,
        })
    }
}

/// The newest row of a chain.
const HEAD_SQL: &str = "SELECT id, hash FROM mcp_logs WHERE chain_id = $1 ORDER BY id DESC LIMIT 1";

/// The transaction lock every writer holds shared while it inserts, and exclusively near
/// midnight (UTC, by its own clock): two replicas inserting the same new call in transactions
/// stamped on two different days would meet no common uniqueness index (each day's partition
/// has its own), so around the change of day their transactions take turns, and the second
/// one's look-up finds the first one's rows.
const DAY_LOCK: i64 = 0x6d63_702d_6461_7973; // "mcp-days"

/// How close to midnight (by the writer's clock) it takes [`DAY_LOCK`] exclusively: more than
/// the clocks of two replicas differ.
const NEAR_MIDNIGHT: chrono::Duration = chrono::Duration::minutes(5);

/// How far back a batch's keys are looked up: a resend (the exporter's retry of an export
/// whose answer was lost, another instrumentation's twin of the call) comes within minutes of
/// the original; a call first stored longer ago than this and sent again would be stored
/// twice. Bounded so that a look-up probes two or three days' uniqueness indexes, not the
/// whole retention's.
pub(crate) const RESEND_WINDOW: chrono::Duration = chrono::Duration::hours(48);

/// Whether `t` is within [`NEAR_MIDNIGHT`] of a UTC midnight.
fn near_midnight(t: DateTime<Utc>) -> bool {
    use chrono::Timelike;
    let s = i64::from(t.num_seconds_from_midnight());
    let window = NEAR_MIDNIGHT.num_seconds();
    s < window || s > 86_400 - window
}

// The columns a resend of the same span reproduces: the SQLite store's list.
use crate::audit::store::SAME_CALL;

impl WriterState {
    fn path(&self) -> PathBuf {
        PathBuf::from(self.target.shown())
    }

    /// Connects when there is no live connection: session settings, the schema, the chain's
    /// registration and lock, and the head (a first connect adopts it; a reconnect after a
    /// commit in doubt accepts the head that commit would have left).
    async fn connect(&mut self) -> Result<(), AuditError> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        self.client = None;
        let t = &self.target;
        let mut client = t.connect().await?;
        client
            .batch_execute("SET synchronous_commit = on; SET application_name = 'mcp-otel collect'")
            .await
            .map_err(|e| t.error("configuring the session", e))?;
        schema::ensure(&mut client, t).await?;
        let chain_id = &self.options.chain_id;
        schema::register_chain(&client, t, chain_id, &self.signer.key.public_hex()).await?;
        let locked: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                &[&CHAIN_LOCK, chain_id],
            )
            .await
            .map_err(|e| t.error("locking the chain", e))?
            .get(0);
        if !locked {
            return Err(t.busy(format!(
                "another process is writing chain {chain_id:?}: every replica needs its own \
                 --chain-id (retrying)"
            )));
        }
        let head = read_head(&client, t, chain_id).await?;
        match (&self.written, self.in_doubt.take()) {
            (None, _) => {
                let signed = last_checkpoint(&client, t, chain_id)
                    .await?
                    .map_or(0, |c| c.row_id);
                if head.id > signed {
                    eprintln!(
                        "mcp-otel collect: audit: chain {chain_id:?}: {} row(s) after the last \
                         signed checkpoint (row {signed}) were not signed before this start; \
                         check them with `mcp-otel audit verify --chain {chain_id}`",
                        head.id - signed
                    );
                }
                self.written = Some(head);
            }
            (Some(_), Some(doubt)) if doubt == head => self.written = Some(head),
            _ => {}
        }
        self.statements = Some(Statements::prepare(&client, t).await?);
        self.signer.covered = None;
        self.client = Some(client);
        Ok(())
    }

    async fn serve(&mut self, mut rx: mpsc::Receiver<Request>) {
        let mut pending: Vec<Request> = Vec::new();
        loop {
            let interval = self.options.checkpoint_interval;
            let first = match tokio::time::timeout(interval, rx.recv()).await {
                Err(_idle) => {
                    let _ = self.checkpoint(CheckpointKind::Periodic, false).await;
                    continue;
                }
                Ok(None) => break,
                Ok(Some(r)) => r,
            };
            let mut rows = first.rows.len();
            pending.push(first);
            while rows < self.options.max_batch_rows {
                match rx.try_recv() {
                    Ok(r) => {
                        rows += r.rows.len();
                        pending.push(r);
                    }
                    Err(_) => break,
                }
            }
            self.commit(&mut pending).await;
        }
        if let Err(e) = self.checkpoint(CheckpointKind::Shutdown, true).await {
            eprintln!("mcp-otel collect: audit: the shutdown checkpoint was not written: {e}");
        }
    }

    /// Commits `pending` and answers every request. When the server refuses the group for a
    /// reason that retrying will not change (a text it cannot store, say), each request is
    /// tried alone, so that one export's bad row fails that export only and the others are
    /// stored.
    async fn commit(&mut self, pending: &mut Vec<Request>) {
        match self.attempt(pending).await {
            Ok(outcomes) => {
                for (p, outcome) in pending.drain(..).zip(outcomes) {
                    let _ = p.reply.send(outcome);
                }
            }
            Err(e) if !e.is_retryable() && pending.len() > 1 => {
                for p in pending.drain(..) {
                    let one = [p];
                    let outcome = match self.attempt(&one).await {
                        Ok(mut outcomes) => outcomes.pop().unwrap_or(Err(e.clone())),
                        Err(e) => Err(e),
                    };
                    let [p] = one;
                    let _ = p.reply.send(outcome);
                }
            }
            Err(e) => {
                for p in pending.drain(..) {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// [`transaction`](Self::transaction), redone (up to three times) when a concurrent
    /// replica's insert of the same calls clashed with it.
    async fn attempt(
        &mut self,
        pending: &[Request],
    ) -> Result<Vec<Result<AppendOutcome, AuditError>>, AuditError> {
        let mut result = Err(self
            .target
            .busy("concurrent inserts of the same calls kept clashing"));
        for _attempt in 0..3 {
            match self.transaction(pending).await {
                Ok(Some(outcomes)) => return Ok(outcomes),
                Ok(None) => continue,
                // Two replicas inserting the same calls in different orders: the server broke
                // the deadlock by failing one; redo it.
                Err(e) if is_conflict(&e) => result = Err(e),
                Err(e) => return Err(e),
            }
        }
        result
    }

    /// One transaction for `pending`: `None` when a concurrent replica's insert of one of the
    /// same calls clashed with it (redo it); per request, its outcome or why it alone was
    /// refused. A transaction that did not commit is rolled back here.
    async fn transaction(
        &mut self,
        pending: &[Request],
    ) -> Result<Option<Vec<Result<AppendOutcome, AuditError>>>, AuditError> {
        self.connect().await?;
        let recorded = millis(Utc::now() + self.options.clock_offset);
        self.add_partitions(recorded.date_naive()).await?;
        let result = self.group(pending, recorded).await;
        if !matches!(result, Ok(Some(_)))
            && let Some(c) = &self.client
        {
            // A no-op (a warning) when the server already ended it: a pipelined COMMIT behind
            // a failed statement answers ROLLBACK.
            let _ = c.batch_execute("ROLLBACK").await;
        }
        result
    }

    /// The body of [`transaction`](Self::transaction), in two round trips when no checkpoint
    /// is due: `BEGIN`, the chain head, the day lock and the look-up of the batch's keys sent
    /// together; then the insert and `COMMIT` sent together. The insert has no `ON CONFLICT`:
    /// a concurrent replica's commit of one of the same calls between the look-up and the
    /// insert fails the insert on the day's uniqueness index, so the pipelined `COMMIT` rolls
    /// the whole transaction back (nothing half-stored, no gap in the chain) and it is redone.
    async fn group(
        &mut self,
        pending: &[Request],
        recorded: DateTime<Utc>,
    ) -> Result<Option<Vec<Result<AppendOutcome, AuditError>>>, AuditError> {
        let path = self.path();
        let WriterState {
            target: t,
            signer,
            options,
            client,
            written,
            in_doubt,
            tampered,
            hasher,
            statements,
            ..
        } = self;
        let chain_id = options.chain_id.as_str();
        let st = statements.as_ref().expect("connected");
        let c = client.as_ref().expect("connected");
        let day_lock = match near_midnight(recorded) {
            true => &st.day_lock,
            false => &st.day_lock_shared,
        };
        // Sent together; the server runs them in this order, so the look-up runs once the day
        // lock is held and sees what a replica that held it before committed.
        let (chain_param, lock_param) = (&[&chain_id as _], &[&DAY_LOCK as _]);
        let (begun, newest, locked, held) = futures::join!(
            c.batch_execute("BEGIN"),
            c.query_opt(&st.head, chain_param),
            c.execute(day_lock, lock_param),
            held_calls(c, t, &st.held, pending, recorded - RESEND_WINDOW),
        );
        begun.map_err(|e| t.error("starting a transaction", e))?;
        let newest = newest.map_err(|e| t.error("reading the chain head", e))?;
        locked.map_err(|e| t.error("taking the day lock", e))?;
        let held = held?;
        let mut head = match newest {
            Some(r) => head_of(&r),
            None => read_head(c, t, chain_id).await?,
        };
        let written_head = written.clone().unwrap_or_else(|| head.clone());
        check_head(&path, tampered, &written_head, &head)?;
        let recorded_at = store::format_time(recorded);
        let mut batch = Batch::default();
        let mut seen: HashMap<(&str, &str, &str), Held> = HashMap::new();
        let mut outcomes = Vec::with_capacity(pending.len());
        let mut hex = (String::new(), String::new());
        for p in pending {
            let (mark, start) = (batch.len(), head.clone());
            let mut added = Vec::new();
            let mut inserted = Vec::with_capacity(p.rows.len());
            let mut refused = None;
            for r in &p.rows {
                let s = &r.stored;
                let key = (s.timestamp(), s.trace_id(), s.span_id());
                let holder = seen.get(&key).or_else(|| held.get(&key));
                if let Some(h) = holder {
                    match h.differs(s) {
                        None => {
                            inserted.push(false);
                            continue;
                        }
                        Some(column) => {
                            refused = Some(t.unusable(format!(
                                "a different call already holds span {}/{} started {} (its \
                                 `{column}` differs): not stored",
                                s.trace_id(),
                                s.span_id(),
                                s.timestamp()
                            )));
                            break;
                        }
                    }
                }
                let fields = s.fields(head.id + 1, &recorded_at);
                let hash = hasher.hash(&fields, &head.hash);
                chain::write_hex(&mut hex.0, &head.hash);
                chain::write_hex(&mut hex.1, &hash);
                batch.push(r, head.id + 1, recorded, &hex.0, &hex.1);
                seen.insert(key, Held::of(s));
                added.push(key);
                head = ChainHead {
                    id: head.id + 1,
                    hash,
                };
                inserted.push(true);
            }
            match refused {
                Some(e) => {
                    batch.truncate(mark);
                    for k in added {
                        seen.remove(&k);
                    }
                    head = start;
                    outcomes.push(Err(e));
                }
                None => {
                    let appended = inserted.iter().filter(|i| **i).count();
                    outcomes.push(Ok(AppendOutcome {
                        appended,
                        duplicates: inserted.len() - appended,
                        inserted,
                        head: ChainHead {
                            id: 0,
                            hash: chain::GENESIS_HASH,
                        },
                    }));
                }
            }
        }
        let insert = async {
            match batch.len() {
                0 => Ok(0),
                _ => c.execute(&st.insert, &batch.params(&chain_id)).await,
            }
        };
        let (inserted, committed) = match signer.may_sign(&head, false) {
            false => futures::join!(insert, c.batch_execute("COMMIT")),
            true => {
                // The signing reads (and may write) under a lock first: not pipelined.
                let inserted = insert.await;
                if inserted.is_ok() {
                    signer
                        .sign_if_due(c, t, &head, CheckpointKind::Periodic, false)
                        .await?;
                }
                (inserted, c.batch_execute("COMMIT").await)
            }
        };
        // A statement the server refused ended the transaction there (the COMMIT behind it
        // answered ROLLBACK); any other failure may have lost the answer to a commit.
        let lost = |e: &tokio_postgres::Error| e.as_db_error().is_none();
        if let Err(e) = &inserted
            && !lost(e)
        {
            signer.covered = None;
            return match e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                true => Ok(None),
                false => Err(t.error("inserting into mcp_logs", inserted.unwrap_err())),
            };
        }
        if let Some(e) = [inserted.err(), committed.err()]
            .into_iter()
            .flatten()
            .next()
        {
            signer.covered = None;
            // The server may have committed before the connection died: the next connect
            // accepts that head too, and the exporter's retry finds these rows.
            *in_doubt = Some(head);
            return Err(t.error("committing", e));
        }
        *written = Some(head.clone());
        for o in outcomes.iter_mut().flatten() {
            o.head = head.clone();
        }
        Ok(Some(outcomes))
    }

    /// Makes sure the partitions of `day`, the day before (a clock set back) and the two days
    /// after exist, when this writer has not yet done so for `day`.
    async fn add_partitions(&mut self, day: NaiveDate) -> Result<(), AuditError> {
        if self.partitions_through.is_some_and(|d| d > day) {
            return Ok(());
        }
        let client = self.client.as_ref().expect("connected");
        let first = day - chrono::Days::new(1);
        client
            .execute(
                &format!("SELECT {}($1, 4)", schema::ADD_PARTITIONS),
                &[&first],
            )
            .await
            .map_err(|e| self.target.error("adding the day partitions", e))?;
        self.partitions_through = Some(day + chrono::Days::new(2));
        Ok(())
    }

    /// Writes a checkpoint of `kind` in its own transaction, when due (or always with `force`).
    async fn checkpoint(&mut self, kind: CheckpointKind, force: bool) -> Result<(), AuditError> {
        self.connect().await?;
        let path = self.path();
        let chain_id = self.options.chain_id.as_str();
        let t = &self.target;
        let (tx, head) = at_head(
            &mut self.client,
            t,
            chain_id,
            &path,
            &mut self.tampered,
            &self.written,
        )
        .await?;
        self.signer.sign_if_due(&tx, t, &head, kind, force).await?;
        let covered = self.signer.covered.take();
        tx.commit()
            .await
            .map_err(|e| t.error("committing a checkpoint", e))?;
        self.signer.covered = covered;
        Ok(())
    }
}

/// A deadlock or serialization failure: the transaction can simply be redone.
fn is_conflict(e: &AuditError) -> bool {
    match e {
        AuditError::Postgres { source, .. } => source
            .code()
            .is_some_and(|c| matches!(c.code(), "40P01" | "40001")),
        _ => false,
    }
}

/// A transaction on the connected `client`, and the chain head in it, checked against the head
/// this writer `written` (a head that moved under it stops the writer: [`check_head`]).
async fn at_head<'c>(
    client: &'c mut Option<Client>,
    t: &PgTarget,
    chain_id: &str,
    path: &Path,
    tampered: &mut Option<String>,
    written: &Option<ChainHead>,
) -> Result<(Transaction<'c>, ChainHead), AuditError> {
    let client = client.as_mut().expect("connected");
    let tx = client
        .transaction()
        .await
        .map_err(|e| t.error("starting a transaction", e))?;
    let head = read_head(&tx, t, chain_id).await?;
    let written_head = written.clone().unwrap_or_else(|| head.clone());
    check_head(path, tampered, &written_head, &head)?;
    Ok((tx, head))
}

/// The newest row of `chain_id`, or the last pruned row when retention took them all, or the
/// genesis link.
pub(crate) async fn read_head(
    c: &impl GenericClient,
    t: &PgTarget,
    chain_id: &str,
) -> Result<ChainHead, AuditError> {
    let row = c
        .query_opt(HEAD_SQL, &[&chain_id])
        .await
        .map_err(|e| t.error("reading the chain head", e))?;
    let row = match row {
        Some(r) => Some(r),
        None => c
            .query_opt(
                "SELECT row_id, row_hash FROM audit_checkpoints WHERE chain_id = $1 \
                 AND kind = 'retention' ORDER BY seq DESC LIMIT 1",
                &[&chain_id],
            )
            .await
            .map_err(|e| t.error("reading the chain head", e))?,
    };
    Ok(match row {
        Some(r) => head_of(&r),
        None => ChainHead {
            id: 0,
            hash: chain::GENESIS_HASH,
        },
    })
}

/// A head from an `(id, hash)` row.
fn head_of(r: &tokio_postgres::Row) -> ChainHead {
    ChainHead {
        id: r.get(0),
        hash: chain::from_hex(r.get(1)).unwrap_or(chain::GENESIS_HASH),
    }
}

/// The checkpoints of `chain_id`, oldest first; rows that do not parse as `Err(seq, reason)`.
pub(crate) async fn checkpoints(
    c: &impl GenericClient,
    t: &PgTarget,
    chain_id: &str,
    newest_only: bool,
) -> Result<Vec<Result<Checkpoint, (i64, String)>>, AuditError> {
    let sql = format!(
        "SELECT seq, kind, row_id, row_hash, created_at, prev_digest, signature \
         FROM audit_checkpoints WHERE chain_id = $1 ORDER BY seq {}",
        if newest_only { "DESC LIMIT 1" } else { "" }
    );
    let rows = c
        .query(sql.as_str(), &[&chain_id])
        .await
        .map_err(|e| t.error("reading checkpoints", e))?;
    Ok(rows
        .iter()
        .map(|r| {
            let seq: i64 = r.get(0);
            let parsed = (|| {
                Some(Checkpoint {
                    seq,
                    kind: CheckpointKind::parse(r.get(1))?,
                    row_id: r.get(2),
                    row_hash: chain::from_hex(r.get(3))?,
                    created_at: r.get(4),
                    prev_digest: chain::from_hex(r.get(5))?,
                    signature: super::super::sign::signature_from_hex(r.get(6))?,
                })
            })();
            parsed.ok_or((seq, "a field does not parse".to_owned()))
        })
        .collect())
}

async fn last_checkpoint(
    c: &impl GenericClient,
    t: &PgTarget,
    chain_id: &str,
) -> Result<Option<Checkpoint>, AuditError> {
    Ok(checkpoints(c, t, chain_id, true)
        .await?
        .into_iter()
        .next()
        .and_then(Result::ok))
}

/// The writer's signing side: its chain's key, and what and when it last signed.
struct Signer {
    key: AuditKey,
    chain_id: String,
    every_rows: u64,
    interval: Duration,
    last_at: Instant,
    /// The row the chain's last checkpoint covers, as this writer last read or wrote it
    /// (`None`: read it). Only decides when a checkpoint is due; the signing re-reads it.
    covered: Option<i64>,
}

impl Signer {
    fn new(key: AuditKey, options: &PgOptions) -> Self {
        Signer {
            key,
            chain_id: options.chain_id.clone(),
            every_rows: options.checkpoint_every_rows,
            interval: options.checkpoint_interval,
            last_at: Instant::now(),
            covered: None,
        }
    }

    /// Whether a checkpoint of `head` may be due: N rows or T seconds since the last one (or
    /// `force`), with rows it does not cover; always when the covered row is not known.
    fn may_sign(&self, head: &ChainHead, force: bool) -> bool {
        self.covered.is_none_or(|covered| {
            head.id > covered
                && (force
                    || (head.id - covered) as u64 >= self.every_rows
                    || self.last_at.elapsed() >= self.interval)
        })
    }

    /// Signs the head when [`may_sign`](Self::may_sign) (reading the covered row when it is not
    /// known), and sets `covered` to the row the last checkpoint then covers (`None` when the
    /// transaction then does not commit). The signing reads the last checkpoint under the
    /// chain's checkpoint lock, since `audit prune` may have added one.
    async fn sign_if_due(
        &mut self,
        c: &impl GenericClient,
        t: &PgTarget,
        head: &ChainHead,
        kind: CheckpointKind,
        force: bool,
    ) -> Result<(), AuditError> {
        if self.covered.is_none() {
            let last = last_checkpoint(c, t, &self.chain_id).await?;
            self.covered = Some(last.map_or(0, |c| c.row_id));
        }
        if !self.may_sign(head, force) {
            return Ok(());
        }
        c.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&CHECKPOINT_LOCK, &self.chain_id],
        )
        .await
        .map_err(|e| t.error("locking the chain's checkpoints", e))?;
        let last = last_checkpoint(c, t, &self.chain_id).await?;
        if let Some(l) = last.as_ref().filter(|l| l.row_id >= head.id) {
            self.covered = Some(l.row_id);
            return Ok(());
        }
        let cp = self.key.sign(
            &self.chain_id,
            Checkpoint::next(last.as_ref(), kind, head.id, head.hash),
        );
        insert_checkpoint(c, t, &self.chain_id, &cp).await?;
        self.last_at = Instant::now();
        self.covered = Some(head.id);
        Ok(())
    }
}

/// Inserts checkpoint `cp` of `chain_id` (the caller holds the chain's [`CHECKPOINT_LOCK`]).
pub(crate) async fn insert_checkpoint(
    tx: &impl GenericClient,
    t: &PgTarget,
    chain_id: &str,
    cp: &Checkpoint,
) -> Result<(), AuditError> {
    tx.execute(
        "INSERT INTO audit_checkpoints \
         (chain_id, seq, kind, row_id, row_hash, created_at, prev_digest, signature) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &chain_id,
            &cp.seq,
            &cp.kind.as_str(),
            &cp.row_id,
            &chain::to_hex(&cp.row_hash),
            &cp.created_at,
            &chain::to_hex(&cp.prev_digest),
            &crate::hex::encode(&cp.signature),
        ],
    )
    .await
    .map_err(|e| t.error("writing a checkpoint", e))?;
    Ok(())
}

/// A stored call's [`SAME_CALL`] columns: what a resend must match.
struct Held {
    texts: [Option<String>; 12],
    duration_ms: f64,
    user_confirmation: Option<bool>,
}

impl Held {
    fn of(s: &StoredCall) -> Self {
        Held {
            texts: [
                Some(s.tool_name().to_owned()),
                Some(s.user().to_owned()),
                Some(s.status.to_owned()),
                s.error_code().map(str::to_owned),
                s.operation_type.map(str::to_owned),
                s.resource_id().map(str::to_owned),
                s.before_state().map(str::to_owned),
                s.after_state().map(str::to_owned),
                s.context().map(str::to_owned),
                s.parent_span_id().map(str::to_owned),
                s.mcp().map(str::to_owned),
                s.result().map(str::to_owned),
            ],
            duration_ms: s.duration_ms,
            user_confirmation: s.user_confirmation,
        }
    }

    fn from_row(r: &tokio_postgres::Row) -> Self {
        // Columns 3.. of HELD_SQL, in SAME_CALL order.
        let t = |i: usize| r.get::<_, Option<String>>(i);
        Held {
            texts: [
                t(3),
                t(4),
                t(5),
                t(7),
                t(8),
                t(9),
                t(10),
                t(11),
                t(13),
                t(14),
                t(15),
                t(16),
            ],
            duration_ms: r.get(6),
            user_confirmation: r.get(12),
        }
    }

    /// `None` when `s` is a resend of this call (every column equal, or absent from the
    /// resend: a record another instrumentation's twin enriched is still the same call), else
    /// the first column that differs.
    fn differs(&self, s: &StoredCall) -> Option<&'static str> {
        let wants: [Option<&str>; 12] = [
            Some(s.tool_name()),
            Some(s.user()),
            Some(s.status),
            s.error_code(),
            s.operation_type,
            s.resource_id(),
            s.before_state(),
            s.after_state(),
            s.context(),
            s.parent_span_id(),
            s.mcp(),
            s.result(),
        ];
        const TEXT_COLUMNS: [&str; 12] = [
            SAME_CALL[0],
            SAME_CALL[1],
            SAME_CALL[2],
            SAME_CALL[4],
            SAME_CALL[5],
            SAME_CALL[6],
            SAME_CALL[7],
            SAME_CALL[8],
            SAME_CALL[10],
            SAME_CALL[11],
            SAME_CALL[12],
            SAME_CALL[13],
        ];
        for ((want, have), name) in wants.iter().zip(&self.texts).zip(TEXT_COLUMNS) {
            if want.is_some() && *want != have.as_deref() {
                return Some(name);
            }
        }
        if s.duration_ms != self.duration_ms {
            return Some(SAME_CALL[3]);
        }
        if s.user_confirmation.is_some() && s.user_confirmation != self.user_confirmation {
            return Some(SAME_CALL[9]);
        }
        None
    }
}

/// The calls among `pending`'s keys that are already stored, in any chain, by a transaction
/// recorded since `since` ([`RESEND_WINDOW`]).
async fn held_calls<'p>(
    tx: &Client,
    t: &PgTarget,
    statement: &tokio_postgres::Statement,
    pending: &'p [Request],
    since: DateTime<Utc>,
) -> Result<HashMap<(&'p str, &'p str, &'p str), Held>, AuditError> {
    let rows = pending.iter().flat_map(|p| &p.rows);
    let at: Vec<DateTime<Utc>> = rows.clone().map(|r| r.at).collect();
    let traces: Vec<&str> = rows.clone().map(|r| r.stored.trace_id()).collect();
    let spans: Vec<&str> = rows.clone().map(|r| r.stored.span_id()).collect();
    let mut by_key: HashMap<(DateTime<Utc>, &str, &str), &'p PgCall> = HashMap::new();
    for r in rows {
        by_key.insert((r.at, r.stored.trace_id(), r.stored.span_id()), r);
    }
    let found = tx
        .query(statement, &[&at, &traces, &spans, &since])
        .await
        .map_err(|e| t.error("looking up stored calls", e))?;
    let mut held = HashMap::with_capacity(found.len());
    for r in &found {
        let at: DateTime<Utc> = r.get(0);
        let (trace, span): (&str, &str) = (r.get(1), r.get(2));
        if let Some(call) = by_key.get(&(at, trace, span)) {
            let s = &call.stored;
            held.insert(
                (s.timestamp(), s.trace_id(), s.span_id()),
                Held::from_row(r),
            );
        }
    }
    Ok(held)
}

/// The look-up of stored calls among a batch's keys (`$1..$3`) recorded since `$4`: one probe
/// of the uniqueness indexes per key. The per-key subquery (`LATERAL … LIMIT 1`, which the
/// planner cannot flatten into a join) keeps it a probe whatever the statistics say: as a plain
/// join, the statement prepared on a connection opened when the day's partition was empty was
/// planned once as a hash join over a scan of the whole partition, and each transaction then
/// read every row of the day (the profile of the load harness: more than half of the server's
/// time).
fn held_sql() -> String {
    let cols: Vec<String> = SAME_CALL
        .iter()
        .map(|c| format!("l.{}", schema::quoted(c)))
        .collect();
    format!(
        "SELECT l.\"timestamp\", l.trace_id, l.span_id, {} \
         FROM unnest($1::timestamptz[], $2::text[], $3::text[]) AS k(at, trace_id, span_id) \
         CROSS JOIN LATERAL (SELECT * FROM mcp_logs l WHERE l.\"timestamp\" = k.at \
         AND l.trace_id = k.trace_id AND l.span_id = k.span_id AND l.recorded_at >= $4 \
         LIMIT 1) l",
        cols.join(", ")
    )
}

/// `INSERT INTO mcp_logs (chain_id, …) SELECT $1, * FROM unnest($2::bigint[], …)`, without
/// `ON CONFLICT`: a clash must fail the transaction, not leave a gap in the chain.
fn insert_sql() -> String {
    let arrays: Vec<String> = store::COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}[]", i + 2, schema::array_type(c)))
        .collect();
    format!(
        "INSERT INTO mcp_logs (chain_id, {}) SELECT $1, * FROM unnest({})",
        schema::row_columns(),
        arrays.join(", ")
    )
}

/// The new rows of a transaction, column by column, for the `unnest` insert.
#[derive(Default)]
struct Batch<'a> {
    id: Vec<i64>,
    timestamp: Vec<DateTime<Utc>>,
    tool_name: Vec<&'a str>,
    user: Vec<&'a str>,
    status: Vec<&'a str>,
    duration_ms: Vec<f64>,
    error_code: Vec<Option<&'a str>>,
    operation_type: Vec<Option<&'a str>>,
    resource_id: Vec<Option<&'a str>>,
    before_state: Vec<Option<&'a str>>,
    after_state: Vec<Option<&'a str>>,
    user_confirmation: Vec<Option<bool>>,
    context: Vec<Option<&'a str>>,
    trace_id: Vec<&'a str>,
    span_id: Vec<&'a str>,
    parent_span_id: Vec<Option<&'a str>>,
    mcp: Vec<Option<&'a str>>,
    result: Vec<Option<&'a str>>,
    recorded_at: Vec<DateTime<Utc>>,
    confirmation_outcome: Vec<Option<&'a str>>,
    confirmation_source: Vec<Option<&'a str>>,
    confirmation_arguments_digest: Vec<Option<&'a str>>,
    confirmation_wait_ms: Vec<Option<f64>>,
    row_version: Vec<i64>,
    prev_hash: Vec<String>,
    hash: Vec<String>,
}

impl<'a> Batch<'a> {
    fn len(&self) -> usize {
        self.id.len()
    }

    fn push(&mut self, r: &'a PgCall, id: i64, recorded: DateTime<Utc>, prev: &str, hash: &str) {
        let s = &r.stored;
        self.id.push(id);
        self.timestamp.push(r.at);
        self.tool_name.push(s.tool_name());
        self.user.push(s.user());
        self.status.push(s.status);
        self.duration_ms.push(s.duration_ms);
        self.error_code.push(s.error_code());
        self.operation_type.push(s.operation_type);
        self.resource_id.push(s.resource_id());
        self.before_state.push(s.before_state());
        self.after_state.push(s.after_state());
        self.user_confirmation.push(s.user_confirmation);
        self.context.push(s.context());
        self.trace_id.push(s.trace_id());
        self.span_id.push(s.span_id());
        self.parent_span_id.push(s.parent_span_id());
        self.mcp.push(s.mcp());
        self.result.push(s.result());
        self.recorded_at.push(recorded);
        self.confirmation_outcome.push(s.confirmation_outcome);
        self.confirmation_source.push(s.confirmation_source);
        self.confirmation_arguments_digest
            .push(s.confirmation_arguments_digest());
        self.confirmation_wait_ms.push(s.confirmation_wait_ms);
        self.row_version.push(i64::from(chain::CHAIN_VERSION));
        self.prev_hash.push(prev.to_owned());
        self.hash.push(hash.to_owned());
    }

    fn truncate(&mut self, n: usize) {
        macro_rules! cut {
            ($($f:ident),*) => { $(self.$f.truncate(n);)* };
        }
        chain::chained_columns!(cut!());
        cut!(prev_hash, hash);
    }

    /// `$1` the chain, then one array per column of [`store::COLUMNS`], in its order.
    fn params<'p>(
        &'p self,
        chain_id: &'p &str,
    ) -> Vec<&'p (dyn tokio_postgres::types::ToSql + Sync)> {
        macro_rules! refs {
            ($($f:ident),*) => {
                vec![
                    chain_id as &(dyn tokio_postgres::types::ToSql + Sync),
                    $(&self.$f,)*
                    &self.prev_hash,
                    &self.hash,
                ]
            };
        }
        chain::chained_columns!(refs!())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_insert_binds_one_array_per_column() {
        let b = Batch::default();
        let chain = "c";
        assert_eq!(b.params(&chain).len(), store::COLUMNS.len() + 1);
        let sql = insert_sql();
        assert!(
            sql.contains("$2::BIGINT[]") && sql.contains("$3::TIMESTAMPTZ[]"),
            "{sql}"
        );
        assert!(sql.contains(&format!("${}::", store::COLUMNS.len() + 1)));
    }

    #[test]
    fn default_names_are_stable_and_file_safe() {
        let id = default_chain_id("0.0.0.0:4317");
        assert!(id.ends_with("/0.0.0.0:4317"), "{id}");
        assert_eq!(
            default_key_path("pod-1/0.0.0.0:4317"),
            PathBuf::from("mcp-audit-pod-1-0.0.0.0-4317.key")
        );
    }
}
