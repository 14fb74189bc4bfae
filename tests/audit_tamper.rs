//! Tampering with the store through a raw SQLite connection, as someone with write access to
//! the file could: every kind is caught by `verify`, which names the first bad row.

mod support;

use mcp_otel::audit::chain::{self, RowFields, RowHasher};
use mcp_otel::audit::verify::{Problem, ProblemKind, VerifyOptions, VerifyReport, verify_path};
use std::path::{Path, PathBuf};
use support::audit::{raw, store_with};

/// Verifies sequentially and split over two threads (as large stores are); both must agree.
fn verify(path: &Path) -> VerifyReport {
    let sequential = verify_path(path, &VerifyOptions::default()).unwrap();
    let split = VerifyOptions {
        parallel_from_rows: Some(2),
        ..VerifyOptions::default()
    };
    assert_eq!(verify_path(path, &split).unwrap(), sequential);
    sequential
}

/// The one row problem verify reports, as (kind, row).
fn row_problem(report: &VerifyReport) -> (ProblemKind, i64) {
    let p = report
        .problems
        .iter()
        .find(|p| p.kind != ProblemKind::TriggersDropped)
        .unwrap_or_else(|| panic!("no row problem in {:?}", report.problems));
    (p.kind, p.row.unwrap())
}

const DROP_TRIGGERS: &str = "DROP TRIGGER mcp_logs_no_update; DROP TRIGGER mcp_logs_no_delete;";

/// A store of `rows` rows (a checkpoint every `every`) with its row triggers dropped, and a raw
/// connection to it: what someone with write access to the file starts from.
fn unguarded(rows: usize, every: u64) -> (tempfile::TempDir, PathBuf, rusqlite::Connection) {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(dir.path(), rows, every);
    let conn = raw(&path);
    conn.execute_batch(DROP_TRIGGERS).unwrap();
    (dir, path, conn)
}

/// Runs `sql` on an [`unguarded`] store of `rows` rows (a checkpoint every `every`) and
/// verifies it.
fn tampered(rows: usize, every: u64, sql: &str) -> VerifyReport {
    let (_dir, path, conn) = unguarded(rows, every);
    conn.execute_batch(sql).unwrap();
    verify(&path)
}

/// Asserts that some problem of `report` matches `what`.
fn assert_any(report: &VerifyReport, what: impl Fn(&Problem) -> bool) {
    assert!(report.problems.iter().any(what), "{:?}", report.problems);
}

/// Verifies with `require_signed` (an unsigned row is a problem).
fn verify_strict(path: &Path) -> VerifyReport {
    let strict = VerifyOptions {
        require_signed: true,
        ..VerifyOptions::default()
    };
    verify_path(path, &strict).unwrap()
}

#[test]
fn an_untouched_store_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(dir.path(), 40, 10);
    let report = verify(&path);
    assert!(report.is_intact(), "{:?}", report.problems);
    assert_eq!(report.rows, 40);
    assert_eq!(report.ids, Some((1, 40)));
    // Checkpoints every 10 rows plus the shutdown one; the shutdown one covers the head.
    assert!(report.checkpoints_verified >= 4);
    assert_eq!(report.signed_through, Some(40));
    assert!(report.summary().contains("intact"), "{}", report.summary());
}

#[test]
fn the_triggers_refuse_update_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(dir.path(), 5, 10);
    let conn = raw(&path);
    let err = conn
        .execute("UPDATE mcp_logs SET user = 'mallory' WHERE id = 2", [])
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = conn
        .execute("DELETE FROM mcp_logs WHERE id = 5", [])
        .unwrap_err();
    assert!(err.to_string().contains("retention checkpoint"), "{err}");
    let err = conn
        .execute("DELETE FROM audit_checkpoints", [])
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    assert!(verify(&path).is_intact());
}

#[test]
fn dropped_triggers_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(dir.path(), 10, 10);
    raw(&path).execute_batch(DROP_TRIGGERS).unwrap();
    let report = verify(&path);
    let dropped: Vec<_> = report
        .problems
        .iter()
        .filter(|p| p.kind == ProblemKind::TriggersDropped)
        .map(|p| p.detail.clone())
        .collect();
    assert_eq!(dropped.len(), 2, "{dropped:?}");
    assert!(dropped[0].contains("mcp_logs_no_update"), "{dropped:?}");
    assert!(dropped[1].contains("mcp_logs_no_delete"), "{dropped:?}");
}

#[test]
fn a_changed_value_is_named() {
    // Row 12 is an unconfirmed create (`user_confirmation = 0`): make it look confirmed.
    let report = tampered(
        20,
        10,
        "UPDATE mcp_logs SET user_confirmation = 1 WHERE id = 12",
    );
    assert!(!report.is_intact());
    assert_eq!(row_problem(&report), (ProblemKind::Changed, 12));
    let text = report
        .problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>();
    assert!(
        text.iter().any(|t| t.starts_with("row 12: changed")),
        "{text:?}"
    );
}

#[test]
fn a_changed_type_is_named() {
    let report = tampered(20, 10, "UPDATE mcp_logs SET user = x'00ff' WHERE id = 7");
    assert_eq!(row_problem(&report), (ProblemKind::Changed, 7));
}

/// Owned copy of a stored row, to recompute its hash the way an informed attacker would.
fn rehash(conn: &rusqlite::Connection, id: i64, prev: &[u8; 32], user: &str) -> [u8; 32] {
    let cols: Vec<Option<String>> = conn
        .query_row(
            "SELECT timestamp, tool_name, status, error_code, operation_type, resource_id, \
             before_state, after_state, context, trace_id, span_id, parent_span_id, mcp, \
             result, recorded_at, confirmation_outcome, confirmation_source, \
             confirmation_arguments_digest FROM mcp_logs WHERE id = ?1",
            [id],
            |r| (0..18).map(|i| r.get(i)).collect(),
        )
        .unwrap();
    let (duration, confirmation, wait, version): (f64, Option<bool>, Option<f64>, Option<u32>) =
        conn.query_row(
            "SELECT duration_ms, user_confirmation, confirmation_wait_ms, row_version \
             FROM mcp_logs WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    let s = |i: usize| cols[i].as_deref();
    let fields = RowFields {
        id,
        timestamp: s(0).unwrap(),
        tool_name: s(1).unwrap(),
        user,
        status: s(2).unwrap(),
        duration_ms: duration,
        error_code: s(3),
        operation_type: s(4),
        resource_id: s(5),
        before_state: s(6),
        after_state: s(7),
        user_confirmation: confirmation,
        context: s(8),
        trace_id: s(9).unwrap(),
        span_id: s(10).unwrap(),
        parent_span_id: s(11),
        mcp: s(12),
        result: s(13),
        recorded_at: s(14).unwrap(),
        confirmation_outcome: s(15),
        confirmation_source: s(16),
        confirmation_arguments_digest: s(17),
        confirmation_wait_ms: wait,
        row_version: version.unwrap_or(1),
    };
    RowHasher::new().hash(&fields, prev)
}

fn stored_hash(conn: &rusqlite::Connection, id: i64) -> [u8; 32] {
    let h: String = conn
        .query_row("SELECT hash FROM mcp_logs WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    chain::from_hex(&h).unwrap()
}

#[test]
fn a_change_with_a_recomputed_hash_is_named() {
    let (_dir, path, conn) = unguarded(20, 100);
    let prev = stored_hash(&conn, 5);
    let forged = rehash(&conn, 6, &prev, "mallory");
    conn.execute(
        "UPDATE mcp_logs SET user = 'mallory', hash = ?1 WHERE id = 6",
        [chain::to_hex(&forged)],
    )
    .unwrap();
    let report = verify(&path);
    assert_eq!(row_problem(&report), (ProblemKind::Changed, 6));
    assert_any(&report, |p| p.detail.contains("recomputed"));
}

#[test]
fn a_rewritten_tail_is_caught_by_the_signed_checkpoint() {
    let (_dir, path, conn) = unguarded(30, 10);
    // Change row 12 and re-link every later row: the chain is self-consistent again, but the
    // checkpoints signed at rows 20 and 30 recorded the original hashes.
    let mut prev = stored_hash(&conn, 11);
    for id in 12..=30 {
        let user: String = conn
            .query_row("SELECT user FROM mcp_logs WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        let user = if id == 12 { "mallory".to_owned() } else { user };
        let h = rehash_with_prev(&conn, id, &prev, &user);
        conn.execute(
            "UPDATE mcp_logs SET user = ?1, prev_hash = ?2, hash = ?3 WHERE id = ?4",
            rusqlite::params![user, chain::to_hex(&prev), chain::to_hex(&h), id],
        )
        .unwrap();
        prev = h;
    }
    let report = verify(&path);
    let (kind, row) = row_problem(&report);
    assert_eq!(kind, ProblemKind::Changed);
    assert!((12..=20).contains(&row), "{:?}", report.problems);
    assert_any(&report, |p| p.detail.contains("checkpoint #"));
}

fn rehash_with_prev(conn: &rusqlite::Connection, id: i64, prev: &[u8; 32], user: &str) -> [u8; 32] {
    rehash(conn, id, prev, user)
}

#[test]
fn a_deleted_row_is_named() {
    let report = tampered(20, 10, "DELETE FROM mcp_logs WHERE id = 9");
    assert_eq!(row_problem(&report), (ProblemKind::Missing, 9));
    assert_any(&report, |p| p.to_string().contains("row 9 was deleted"));
}

#[test]
fn swapped_rows_are_named() {
    let report = tampered(
        20,
        100,
        "UPDATE mcp_logs SET id = -1 WHERE id = 4;
         UPDATE mcp_logs SET id = 4 WHERE id = 6;
         UPDATE mcp_logs SET id = 6 WHERE id = -1;",
    );
    assert_eq!(row_problem(&report), (ProblemKind::Reordered, 4));
    assert_any(&report, |p| p.detail.contains("written after row 5"));
}

#[test]
fn a_truncated_tail_after_a_checkpoint_is_named() {
    let report = tampered(30, 10, "DELETE FROM mcp_logs WHERE id > 24");
    assert_eq!(row_problem(&report), (ProblemKind::Truncated, 25));
    assert_any(&report, |p| p.detail.contains("covers row 30"));
}

#[test]
fn a_truncation_past_every_checkpoint_is_caught_by_expect_head() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(dir.path(), 30, 10);
    let head = verify(&path).head;
    let conn = raw(&path);
    conn.execute_batch(DROP_TRIGGERS).unwrap();
    // Remove the tail and the checkpoints that cover it: without an outside record the store
    // looks like a shorter, intact chain.
    conn.execute_batch(
        "DROP TRIGGER audit_checkpoints_no_delete;
         DELETE FROM audit_checkpoints WHERE row_id > 20;
         DELETE FROM mcp_logs WHERE id > 20;",
    )
    .unwrap();
    let options = VerifyOptions {
        expect_head: Some(head.hash),
        ..VerifyOptions::default()
    };
    let report = verify_path(&path, &options).unwrap();
    assert_eq!(row_problem(&report), (ProblemKind::Truncated, 21));
}

#[test]
fn a_forged_checkpoint_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(dir.path(), 20, 10);
    let conn = raw(&path);
    let (seq, prev): (i64, String) = conn
        .query_row(
            "SELECT seq, signature FROM audit_checkpoints ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let digest = {
        use sha2::Digest;
        let sig = (0..64)
            .map(|i| u8::from_str_radix(&prev[2 * i..2 * i + 2], 16).unwrap())
            .collect::<Vec<_>>();
        chain::to_hex(&sha2::Sha256::digest(sig).into())
    };
    // A checkpoint claiming row 15 has a different hash, with a made-up signature.
    conn.execute(
        "INSERT INTO audit_checkpoints VALUES (?1, 'periodic', 15, ?2, \
         '2026-01-01T00:00:00.000Z', ?3, ?4)",
        rusqlite::params![seq + 1, "ab".repeat(32), digest, "cd".repeat(64)],
    )
    .unwrap();
    let report = verify(&path);
    let forged = report
        .problems
        .iter()
        .find(|p| p.kind == ProblemKind::BadSignature)
        .unwrap_or_else(|| panic!("{:?}", report.problems));
    assert_eq!(forged.row, Some(15));
    assert!(forged.detail.contains(&format!("checkpoint #{}", seq + 1)));
}

#[test]
fn a_foreign_public_key_fails_every_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(dir.path(), 10, 5);
    let other = mcp_otel::audit::sign::AuditKey::load_or_create(&dir.path().join("other.key"))
        .unwrap()
        .verifying_key();
    let options = VerifyOptions {
        pubkey: Some(other),
        ..VerifyOptions::default()
    };
    let report = verify_path(&path, &options).unwrap();
    assert!(!report.is_intact());
    assert!(
        report
            .problems
            .iter()
            .all(|p| p.kind == ProblemKind::BadSignature)
    );
    assert_eq!(report.checkpoints_verified, 0);
}

#[test]
fn a_dropped_checkpoint_table_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(dir.path(), 10, 5);
    raw(&path)
        .execute_batch("DROP TABLE audit_checkpoints")
        .unwrap();
    let report = verify(&path);
    assert_any(&report, |p| {
        p.kind == ProblemKind::BadSignature && p.detail.contains("audit_checkpoints")
    });
}

/// Appends a copy of the last row as a new call by `user`, its hash computed correctly, with
/// a plain INSERT (no trigger dropped): what someone with write access but no key can do.
fn forge_tail(conn: &rusqlite::Connection, user: &str) -> i64 {
    let last: i64 = conn
        .query_row("SELECT MAX(id) FROM mcp_logs", [], |r| r.get(0))
        .unwrap();
    let prev = stored_hash(conn, last);
    let id = last + 1;
    conn.execute(
        "INSERT INTO mcp_logs SELECT ?1, timestamp, tool_name, ?2, status, duration_ms, \
         error_code, operation_type, resource_id, before_state, after_state, \
         user_confirmation, context, trace_id, 'feedfacefeedface', parent_span_id, mcp, \
         result, recorded_at, confirmation_outcome, confirmation_source, \
         confirmation_arguments_digest, confirmation_wait_ms, row_version, hash, '' \
         FROM mcp_logs WHERE id = ?3",
        rusqlite::params![id, user, last],
    )
    .unwrap();
    // The hash column is the only thing left to set; compute it as verify will.
    let hash = rehash(conn, id, &prev, user);
    conn.execute_batch("DROP TRIGGER mcp_logs_no_update")
        .unwrap();
    conn.execute(
        "UPDATE mcp_logs SET hash = ?1 WHERE id = ?2",
        rusqlite::params![chain::to_hex(&hash), id],
    )
    .unwrap();
    // Indexed for search like a real row, so nothing but the signatures can tell.
    conn.execute(
        "INSERT INTO mcp_logs_fts (rowid, context, before_state, after_state) \
         SELECT id, context, before_state, after_state FROM mcp_logs WHERE id = ?1",
        [id],
    )
    .unwrap();
    // Counted in the console's rollup too (verify checks that it counts every row).
    conn.execute_batch(&format!(
        "INSERT INTO console_rollup_calls SELECT 3600, unixepoch(timestamp) / 3600 * 3600, \
         tool_name, 1, status != 'success', 0, 0, duration_ms, 0, 0, 0, 0, x'' \
         FROM mcp_logs WHERE id = {id} ON CONFLICT DO UPDATE SET calls = calls + 1; \
         INSERT INTO console_rollup_users SELECT 3600, unixepoch(timestamp) / 3600 * 3600, \
         user, 1, status != 'success' FROM mcp_logs WHERE id = {id} \
         ON CONFLICT DO UPDATE SET calls = calls + 1;"
    ))
    .unwrap();
    // Put the trigger back exactly as it was: the forged row is all that changed.
    let (_, sql) = mcp_otel::audit::store::TRIGGERS[0];
    conn.execute_batch(sql).unwrap();
    id
}

#[test]
fn a_forged_tail_is_reported_unsigned_and_fails_require_signed() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(dir.path(), 20, 100);
    let forged = forge_tail(&raw(&path), "mallory");
    // The chain itself is consistent: only the signatures can tell.
    let report = verify(&path);
    assert!(report.is_intact(), "{:?}", report.problems);
    assert_eq!(report.unsigned_rows, 1);
    assert!(
        report
            .summary()
            .contains("1 row(s) after the last signed checkpoint"),
        "{}",
        report.summary()
    );
    let report = verify_strict(&path);
    assert_eq!(row_problem(&report), (ProblemKind::Unsigned, forged));
}

#[test]
fn removed_checkpoints_leave_their_rows_unproven() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(dir.path(), 20, 5);
    let conn = raw(&path);
    conn.execute_batch("DROP TRIGGER audit_checkpoints_no_delete; DELETE FROM audit_checkpoints;")
        .unwrap();
    let report = verify(&path);
    assert_eq!(report.checkpoints_verified, 0);
    assert!(
        report.summary().contains("NO signed checkpoint verified"),
        "{}",
        report.summary()
    );
    let report = verify_strict(&path);
    assert_any(&report, |p| {
        p.kind == ProblemKind::Unsigned && p.row == Some(1)
    });
}

fn search(path: &Path, text: &str) -> Vec<i64> {
    let conn = mcp_otel::audit::store::open_ro(path).unwrap();
    let filter = mcp_otel::audit::review::QueryFilter {
        text: Some(text.to_owned()),
        limit: 1000,
        ..Default::default()
    };
    let mut ids = Vec::new();
    mcp_otel::audit::review::query(&conn, path, &filter, |v| {
        ids.push(v["id"].as_i64().unwrap());
        Ok(())
    })
    .unwrap();
    ids.sort();
    ids
}

#[test]
fn an_edited_search_index_is_caught_and_cannot_invent_results() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(dir.path(), 12, 100);
    let before = search(&path, "p1");
    assert_eq!(before, [2, 5, 8, 11], "calls 1, 4, 7, 10 are in project p1");
    let conn = raw(&path);
    // Hide row 5 from search: remove its entries from the index (the 'delete' command of an
    // external-content FTS5 table), no trigger touched.
    conn.execute(
        "INSERT INTO mcp_logs_fts (mcp_logs_fts, rowid, context, before_state, after_state) \
         SELECT 'delete', id, context, before_state, after_state FROM mcp_logs WHERE id = 5",
        [],
    )
    .unwrap();
    assert_eq!(
        search(&path, "p1"),
        [2, 8, 11],
        "the attack works on search"
    );
    let report = verify(&path);
    assert_eq!(row_problem(&report), (ProblemKind::SearchIndex, 5));
    // Put it back, then make row 3 answer for a word it does not contain.
    conn.execute(
        "INSERT INTO mcp_logs_fts (rowid, context, before_state, after_state) \
         SELECT id, context, before_state, after_state FROM mcp_logs WHERE id = 5",
        [],
    )
    .unwrap();
    assert!(verify(&path).is_intact());
    conn.execute(
        "INSERT INTO mcp_logs_fts (mcp_logs_fts, rowid, context, before_state, after_state) \
         SELECT 'delete', id, context, before_state, after_state FROM mcp_logs WHERE id = 3",
        [],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO mcp_logs_fts (rowid, context) VALUES (3, '{\"project_id\": \"p1\"}')",
        [],
    )
    .unwrap();
    assert_eq!(
        search(&path, "p1"),
        [2, 5, 8, 11],
        "row 3 is re-checked against its chained text and left out"
    );
    // Same rows indexed, different terms: only the deep check sees it.
    assert!(verify(&path).is_intact());
    let deep = VerifyOptions {
        check_search_terms: true,
        ..VerifyOptions::default()
    };
    let report = verify_path(&path, &deep).unwrap();
    assert_any(&report, |p| p.kind == ProblemKind::SearchIndex);
}

#[test]
fn every_schema_object_the_project_did_not_create_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(dir.path(), 5, 100);
    assert!(verify(&path).is_intact());
    let conn = raw(&path);
    // The censor: inserts of one user's calls are silently dropped.
    conn.execute_batch(
        "CREATE TRIGGER hide_mallory BEFORE INSERT ON mcp_logs WHEN NEW.user = 'mallory' \
         BEGIN SELECT RAISE(IGNORE); END",
    )
    .unwrap();
    let report = verify(&path);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::TriggersDropped && p.detail.contains("hide_mallory")),
        "{:?}",
        report.problems
    );
    conn.execute_batch("DROP TRIGGER hide_mallory").unwrap();
    // Without the uniqueness key a resend would be stored twice; a view could mask rows.
    // An index of an earlier build's name passes only as that build created it.
    conn.execute_batch(
        "DROP INDEX mcp_logs_call; CREATE VIEW mcp_logs_clean AS SELECT * FROM mcp_logs; \
         CREATE INDEX mcp_logs_timestamp ON mcp_logs (timestamp) WHERE user != 'mallory'",
    )
    .unwrap();
    let details: Vec<String> = verify(&path)
        .problems
        .into_iter()
        .filter(|p| p.kind == ProblemKind::Schema)
        .map(|p| p.detail)
        .collect();
    assert!(
        details
            .iter()
            .any(|d| d.contains("index mcp_logs_call is gone")),
        "{details:?}"
    );
    assert!(
        details.iter().any(|d| d.contains("view mcp_logs_clean")),
        "{details:?}"
    );
    assert!(
        details
            .iter()
            .any(|d| d.contains("index mcp_logs_timestamp")),
        "{details:?}"
    );
}
