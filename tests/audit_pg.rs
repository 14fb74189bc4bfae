//! The PostgreSQL audit store against a real server (tests/support/pg.rs): one chain per
//! writer in one shared table, every call stored once across chains, the triggers, the seed's
//! query as written (with `"user"` quoted), and `audit verify` naming the first bad row of the
//! chain that was tampered with (changed, deleted, swapped, truncated, forged signature) while
//! the other chain stays intact.

mod support;

use chrono::{Duration as Delta, Utc};
use mcp_otel::audit::pg::{PgOptions, PgWriter, verify_url};
use mcp_otel::audit::verify::{ProblemKind, VerifyOptions};
use mcp_otel::record::ToolCall;
use std::path::Path;
use support::audit::cli as audit;
use support::pg::{PgServer, db_name, roles_sql, shared, verified};

/// A writer of chain `chain` into `url`, its key in `dir`, a checkpoint every `every` rows.
fn writer(url: &str, dir: &Path, chain: &str, every: u64) -> PgWriter {
    let mut options = PgOptions::new(chain);
    options.key_path = dir.join(format!("{chain}.key"));
    options.checkpoint_every_rows = every;
    PgWriter::open(url, options).unwrap()
}

/// `n` calls of the fixture session, starting an hour ago (offset by `shift` ms).
fn calls(n: usize, shift: i64) -> Vec<ToolCall> {
    let start = Utc::now() - Delta::hours(1) + Delta::milliseconds(shift);
    (0..n).map(|i| support::audit::call(i, start)).collect()
}

/// Two chains, `a` and `b`, of `n` rows each (in appends of 5), checkpoints every `every`;
/// both writers closed (shutdown checkpoints written).
fn two_chains(server: &PgServer, n: usize, every: u64) -> (tempfile::TempDir, String) {
    let dir = support::tempdir();
    let url = server.fresh_db();
    let a = writer(&url, dir.path(), "a", every);
    let b = writer(&url, dir.path(), "b", every);
    for (i, chunk) in calls(n, 0).chunks(5).enumerate() {
        a.append_blocking(chunk).unwrap();
        let other: Vec<ToolCall> = calls(n, 100_000)[i * 5..i * 5 + chunk.len()].to_vec();
        b.append_blocking(&other).unwrap();
    }
    drop((a, b));
    (dir, url)
}

async fn verify(url: &str) -> mcp_otel::audit::pg::PgVerifyReport {
    verify_url(url, None, &VerifyOptions::default())
        .await
        .unwrap()
}

/// Runs `sql` as the superuser with the triggers bypassed, as an attacker with the
/// database's superuser would.
fn tamper(server: &PgServer, url: &str, sql: &str) {
    server.psql(
        db_name(url),
        &format!("SET session_replication_role = replica; {sql}"),
    );
}

/// [`two_chains`] of `n` rows (a checkpoint every 10), then [`tamper`] with `sql`.
fn tampered(n: usize, sql: &str) -> (tempfile::TempDir, String) {
    let server = shared();
    let (dir, url) = two_chains(server, n, 10);
    tamper(server, &url, sql);
    (dir, url)
}

/// Asserts that chain `a` has one problem, `kind` at row `row`, and chain `b` none; the
/// problem's detail.
async fn only_a_is_bad(url: &str, kind: ProblemKind, row: i64) -> String {
    let report = verify(url).await;
    assert!(!report.is_intact(), "{}", report.summary());
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let b = report.chain("b").unwrap();
    assert!(b.is_intact(), "chain b: {:?}", b.problems);
    let a = report.chain("a").unwrap();
    assert_eq!(a.problems.len(), 1, "{:?}", a.problems);
    let p = &a.problems[0];
    assert_eq!((p.kind, p.row), (kind, Some(row)), "{}", p.detail);
    p.detail.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_stored_once_across_chains_and_each_chain_verifies() {
    let server = shared();
    let dir = support::tempdir();
    let url = server.fresh_db();
    let a = writer(&url, dir.path(), "a", 7);
    let b = writer(&url, dir.path(), "b", 7);
    let (key_a, key_b) = (a.public_key().to_owned(), b.public_key().to_owned());
    let first = calls(20, 0);
    let out = a.append(&first).await.unwrap();
    assert_eq!((out.appended, out.duplicates, out.head.id), (20, 0, 20));
    // The exporter's retry, sent by the load balancer to the other replica: nothing new.
    let retry = b.append(&first[5..15]).await.unwrap();
    assert_eq!((retry.appended, retry.duplicates), (0, 10));
    // A different call claiming a stored call's identity is refused, not skipped.
    let mut forged = first[3].clone();
    forged.user = "mallory".into();
    let e = b.append(&[forged]).await.unwrap_err();
    assert!(
        !e.is_retryable() && e.to_string().contains("`user` differs"),
        "{e}"
    );
    // Concurrent appends from both replicas, the same calls in part.
    let more = calls(40, 50_000);
    let (x, y) = tokio::join!(a.append(&more[..30]), b.append(&more[10..]));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.appended + y.appended, 40, "{x:?} {y:?}");
    drop((a, b));
    let rows = server.psql(
        db_name(&url),
        "SELECT count(*), count(DISTINCT chain_id) FROM mcp_logs",
    );
    assert_eq!(rows.trim(), "60|2");
    let report = verify_url(
        &url,
        None,
        &VerifyOptions {
            require_signed: true,
            ..VerifyOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(report.is_intact(), "{}", report.summary());
    assert_eq!(report.chains.len(), 2);
    assert_eq!(
        report.chain("a").unwrap().rows + report.chain("b").unwrap().rows,
        60
    );
    // The same through the command line, every chain and one.
    let (code, out) = audit(&["verify", "--db", &url]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("chain a:") && out.contains("chain b:") && out.contains("all intact"),
        "{out}"
    );
    let (code, out) = audit(&["verify", "--db", &url, "--chain", "b", "--json"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("\"chain_id\":\"b\"") && !out.contains("\"chain_id\":\"a\""),
        "{out}"
    );
    // Each chain's registered key, and a chain checked against a kept copy of its key.
    let (code, keys) = audit(&["pubkey", "--db", &url]);
    assert_eq!(code, 0, "{keys}");
    assert_eq!(keys, format!("a\t{key_a}\nb\t{key_b}\n"));
    let (code, out) = audit(&["verify", "--db", &url, "--chain", "a", "--pubkey", &key_a]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(given)"), "{out}");
    // A key, or a head, concerns one chain: with two in the store, it must be named.
    let (code, out) = audit(&["verify", "--db", &url, "--pubkey", &key_a]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("name it with --chain"), "{out}");
    let (code, out) = audit(&["verify", "--db", &url, "--chain", "a", "--pubkey", &key_b]);
    assert_eq!(code, 1, "the other chain's key proves nothing here: {out}");
    assert!(
        out.contains("chain a: row ") && out.contains(": bad signature"),
        "{out}"
    );
}

/// Two replicas that insert the same new calls at the same moment clash on the day's uniqueness
/// index (neither sees the other's uncommitted rows when it looks the keys up): the second
/// one's whole transaction is rolled back and redone, so each call is stored once and neither
/// chain has a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_inserting_the_same_calls_at_once_store_each_once() {
    let server = shared();
    let dir = support::tempdir();
    let url = server.fresh_db();
    let a = writer(&url, dir.path(), "a", 50);
    let b = writer(&url, dir.path(), "b", 50);
    let mut appended = 0;
    for round in 0..20 {
        let batch = calls(40, round * 1_000);
        let (x, y) = tokio::join!(a.append(&batch[..30]), b.append(&batch[10..]));
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(x.appended + y.appended, 40, "round {round}: {x:?} {y:?}");
        appended += x.appended + y.appended;
    }
    drop((a, b));
    let rows = server.psql(
        db_name(&url),
        "SELECT count(*), count(DISTINCT (\"timestamp\", trace_id, span_id)) FROM mcp_logs",
    );
    assert_eq!(rows.trim(), format!("{appended}|{appended}"));
    let report = verify(&url).await;
    assert!(report.is_intact(), "{}", report.summary());
}

#[test]
fn a_chain_keeps_its_key_and_one_writer() {
    let server = shared();
    let dir = support::tempdir();
    let url = server.fresh_db();
    let a = writer(&url, dir.path(), "a", 10);
    // A second live writer of the same chain is refused (retryably: the first may be dying).
    let mut same = PgOptions::new("a");
    same.key_path = dir.path().join("a.key");
    let twin = PgWriter::open(&url, same.clone()).unwrap();
    let e = twin.append_blocking(&calls(1, 0)).unwrap_err();
    assert!(
        e.is_retryable() && e.to_string().contains("another process is writing chain"),
        "{e}"
    );
    drop((a, twin));
    // Another key for a registered chain is refused at start.
    let mut other = PgOptions::new("a");
    other.key_path = dir.path().join("other.key");
    let e = PgWriter::open(&url, other).err().unwrap().to_string();
    assert!(e.contains("was started with public key"), "{e}");
    assert!(PgWriter::open(&url, same).is_ok());
}

#[test]
fn the_triggers_refuse_update_delete_and_truncate() {
    let server = shared();
    let (_dir, url) = two_chains(server, 10, 5);
    let db = db_name(&url);
    for sql in [
        "UPDATE mcp_logs SET \"user\" = 'mallory' WHERE id = 2",
        "DELETE FROM mcp_logs WHERE id = 5",
        "TRUNCATE mcp_logs",
        "DELETE FROM audit_checkpoints",
        "UPDATE audit_chains SET public_key = 'x'",
    ] {
        let e = server.psql_err(db, sql).unwrap_err();
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
    let e = server
        .psql_err(
            db,
            "ALTER TABLE mcp_logs DISABLE TRIGGER mcp_logs_no_update",
        )
        .map(|_| String::new())
        .unwrap();
    assert!(e.is_empty());
    let report = verify(&url).await_blocking();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::TriggersDropped
                && p.detail
                    .contains("mcp_logs_no_update on mcp_logs is disabled")),
        "{:?}",
        report.problems
    );
}

/// Blocking on a future from a plain test.
trait Blocking: std::future::Future + Sized {
    fn await_blocking(self) -> Self::Output {
        tokio::runtime::Runtime::new().unwrap().block_on(self)
    }
}
impl<F: std::future::Future> Blocking for F {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_row_is_named_in_its_chain() {
    let (_dir, url) = tampered(
        20,
        "UPDATE mcp_logs SET \"user\" = 'mallory' WHERE chain_id = 'a' AND id = 7",
    );
    only_a_is_bad(&url, ProblemKind::Changed, 7).await;
    let (code, out) = audit(&["verify", "--db", &url]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("chain a: row 7: changed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_row_is_named_in_its_chain() {
    let (_dir, url) = tampered(20, "DELETE FROM mcp_logs WHERE chain_id = 'a' AND id = 9");
    only_a_is_bad(&url, ProblemKind::Missing, 9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_rows_are_named_in_their_chain() {
    let (_dir, url) = tampered(
        20,
        "UPDATE mcp_logs SET id = -1 WHERE chain_id = 'a' AND id = 4; \
         UPDATE mcp_logs SET id = 4 WHERE chain_id = 'a' AND id = 6; \
         UPDATE mcp_logs SET id = 6 WHERE chain_id = 'a' AND id = -1;",
    );
    let detail = only_a_is_bad(&url, ProblemKind::Reordered, 4).await;
    assert!(detail.contains("position 6"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_tail_is_named_in_its_chain() {
    let (_dir, url) = tampered(30, "DELETE FROM mcp_logs WHERE chain_id = 'a' AND id > 24");
    only_a_is_bad(&url, ProblemKind::Truncated, 25).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_signature_is_named_in_its_chain() {
    // Chain b's signature is a valid signature, but by another key over another chain.
    let (_dir, url) = tampered(
        20,
        "UPDATE audit_checkpoints SET signature = (SELECT signature FROM audit_checkpoints \
         WHERE chain_id = 'b' AND seq = 1) WHERE chain_id = 'a' AND seq = 1",
    );
    let report = verify(&url).await;
    assert!(report.chain("b").unwrap().is_intact());
    let a = report.chain("a").unwrap();
    assert!(
        a.problems
            .iter()
            .any(|p| p.kind == ProblemKind::BadSignature && p.row == Some(10)),
        "{:?}",
        a.problems
    );
    let (code, out) = audit(&["verify", "--db", &url]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("chain a: row 10: bad signature"), "{out}");
}

#[test]
fn the_seeds_query_runs_as_written_with_user_quoted() {
    let server = shared();
    let (_dir, url) = two_chains(server, 20, 10);
    let (code, out) = audit(&["sql", "--db", &url, support::audit::SEED_QUERY_PG]);
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("timestamp\ttool_name\tuser\t"),
        "{out}"
    );
    // Writes only: per chain, 20 fixture calls of which 12 are writes (create/update/delete).
    let writes = server.psql(
        db_name(&url),
        "SELECT count(*) FROM mcp_logs WHERE operation_type IS NOT NULL",
    );
    assert_eq!(
        lines.len() - 1,
        writes.trim().parse::<usize>().unwrap(),
        "{out}"
    );
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.contains("alice") || l.contains("bob"))
    );
    assert!(
        !out.contains("list_tasks") && !out.contains("get_task"),
        "{out}"
    );
    // A bare `user` is the role running the query, not the column.
    let (_, bare) = audit(&["sql", "--db", &url, "SELECT user FROM mcp_logs LIMIT 1"]);
    assert!(
        bare.contains("postgres") && !bare.contains("alice"),
        "{bare}"
    );
    // Writes are refused by the read-only transaction.
    let (code, out) = audit(&["sql", "--db", &url, "DELETE FROM mcp_logs"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("read-only"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writers_own_role_cannot_rewrite_history() {
    let server = shared();
    let dir = support::tempdir();
    let url = server.fresh_db();
    let db = db_name(&url).to_owned();
    // The owner (here the superuser) creates the schema once.
    drop(writer(&url, dir.path(), "owner", 10));
    server.psql(&db, &roles_sql(&db));
    let collect_url = server.url_as(&format!("{db}_collect"), &db);
    let w = writer(&collect_url, dir.path(), "r1", 3);
    let out = w.append(&calls(10, 0)).await.unwrap();
    assert_eq!(out.appended, 10);
    drop(w);
    for sql in [
        "UPDATE mcp_logs SET \"user\" = 'mallory' WHERE id = 2",
        "DELETE FROM mcp_logs",
        "DELETE FROM audit_checkpoints",
        "ALTER TABLE mcp_logs DISABLE TRIGGER mcp_logs_no_update",
        "DROP TABLE mcp_logs",
        // Held calls are staged and released, never rewritten.
        "UPDATE collect_held_calls SET origin = 'ours'",
    ] {
        let e = server
            .psql_as(&format!("{db}_collect"), &db, sql)
            .unwrap_err();
        assert!(
            e.contains("permission denied") || e.contains("must be owner"),
            "{sql}: {e}"
        );
        let e = server
            .psql_as(&format!("{db}_review"), &db, sql)
            .unwrap_err();
        assert!(
            e.contains("permission denied") || e.contains("must be owner"),
            "{sql}: {e}"
        );
    }
    let e = server
        .psql_as(
            &format!("{db}_review"),
            &db,
            "INSERT INTO audit_chains VALUES ('x', 'y', 2)",
        )
        .unwrap_err();
    assert!(e.contains("permission denied"), "{e}");
    // The reviewer reads everything, and verify passes as the reviewer.
    let review_url = server.url_as(&format!("{db}_review"), &db);
    verified(&review_url, &[("r1", 10)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_of_another_type_is_named_not_read() {
    let server = shared();
    let (_dir, url) = two_chains(server, 10, 5);
    // Same values, another type: the rows would be read (and hashed) as something else.
    server.psql(
        db_name(&url),
        "ALTER TABLE mcp_logs ALTER COLUMN duration_ms TYPE numeric",
    );
    let report = verify(&url).await;
    assert!(!report.is_intact());
    assert!(
        report.problems.iter().any(|p| p.kind == ProblemKind::Schema
            && p.detail == "column `duration_ms` of mcp_logs is `numeric`, not `double precision`"),
        "{:?}",
        report.problems
    );
    let (code, out) = audit(&["verify", "--db", &url]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("`duration_ms`"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_server_refuses_fails_its_own_export_only() {
    let server = shared();
    let dir = support::tempdir();
    let url = server.fresh_db();
    let a = writer(&url, dir.path(), "a", 100);
    // PostgreSQL's text cannot hold a NUL: the server refuses the row, for good.
    let mut bad = calls(1, 0);
    bad[0].user = "mal\0lory".into();
    let good: Vec<Vec<ToolCall>> = (0..10).map(|i| calls(5, 10_000 * (i + 1))).collect();
    // Sent together, so that the writer groups them into one transaction.
    let appends = good.iter().map(|c| a.append(c));
    let (bad, good) = tokio::join!(a.append(&bad), futures::future::join_all(appends));
    let e = bad.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    for g in good {
        assert_eq!(g.unwrap().appended, 5);
    }
    drop(a);
    let rows = server.psql(db_name(&url), "SELECT count(*) FROM mcp_logs");
    assert_eq!(rows.trim(), "50");
    assert!(verify(&url).await.is_intact());
}
