//! Retention: old rows leave through a signed retention checkpoint, the rest still verifies,
//! appends continue, and nothing but a signed checkpoint opens the delete trigger.

mod support;

use chrono::{DateTime, Duration, Utc};
use mcp_otel::audit::review::{self, QueryFilter};
use mcp_otel::audit::sign::AuditKey;
use mcp_otel::audit::verify::{ProblemKind, VerifyOptions, VerifyReport, verify_path};
use mcp_otel::audit::{AuditOptions, AuditWriter, retention, store};
use std::path::{Path, PathBuf};
use support::audit::{call, raw};

fn append(writer: &AuditWriter, range: std::ops::Range<usize>) {
    let at = Utc::now() - Duration::days(100);
    writer
        .append_blocking(range.map(|i| call(i, at)).collect())
        .unwrap();
}

/// 20 rows, then a cutoff, then 10 more rows, in a fresh folder. Returns the folder, the path
/// and the cutoff.
fn store_across_cutoff() -> (tempfile::TempDir, PathBuf, DateTime<Utc>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let writer = AuditWriter::open(
        &path,
        AuditOptions {
            checkpoint_every_rows: 8,
            ..AuditOptions::default()
        },
    )
    .unwrap();
    append(&writer, 0..20);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let cutoff = Utc::now();
    std::thread::sleep(std::time::Duration::from_millis(20));
    append(&writer, 20..30);
    (dir, path, cutoff)
}

/// Verifies the store and asserts it intact.
fn verify_intact(path: &Path) -> VerifyReport {
    let report = verify_path(path, &VerifyOptions::default()).unwrap();
    assert!(report.is_intact(), "{:?}", report.problems);
    report
}

/// Appends calls `range` through a freshly opened writer, closes it, and verifies.
fn append_and_verify(path: &Path, range: std::ops::Range<usize>) -> VerifyReport {
    let writer = AuditWriter::open(path, AuditOptions::default()).unwrap();
    append(&writer, range);
    drop(writer);
    verify_intact(path)
}

fn count(path: &Path) -> i64 {
    raw(path)
        .query_row("SELECT COUNT(*) FROM mcp_logs", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_dry_run_shows_what_would_go_and_changes_nothing() {
    let (_dir, path, cutoff) = store_across_cutoff();
    let key = AuditKey::default_path(&path);
    let plan = retention::prune(&path, &key, cutoff, true).unwrap();
    assert_eq!(plan.rows, 20);
    assert_eq!(plan.ids, Some((1, 20)));
    assert_eq!(plan.checkpoint_seq, None);
    assert_eq!(count(&path), 30);
}

#[test]
fn pruning_keeps_the_chain_verifiable_and_appends_continue() {
    let (_dir, path, cutoff) = store_across_cutoff();
    let key = AuditKey::default_path(&path);
    let done = retention::prune(&path, &key, cutoff, false).unwrap();
    assert_eq!((done.rows, done.ids), (20, Some((1, 20))));
    assert!(done.checkpoint_seq.is_some());
    assert_eq!(count(&path), 10);

    let report = verify_intact(&path);
    assert_eq!(report.pruned_through, Some(20));
    assert_eq!(report.ids, Some((21, 30)));

    // The full-text index lost the pruned rows too, and is consistent.
    let conn = raw(&path);
    conn.execute_batch("INSERT INTO mcp_logs_fts (mcp_logs_fts) VALUES ('integrity-check')")
        .unwrap();
    let mut hits = 0;
    let filter = QueryFilter {
        text: Some("old 5".into()),
        limit: 10,
        ..QueryFilter::default()
    };
    review::query(&store::open_ro(&path).unwrap(), &path, &filter, |_| {
        hits += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(hits, 0);

    // A row the retention checkpoint does not cover is still protected.
    let err = conn
        .execute("DELETE FROM mcp_logs WHERE id = 25", [])
        .unwrap_err();
    assert!(err.to_string().contains("retention checkpoint"), "{err}");

    // The writer links new rows to the remaining chain.
    let report = append_and_verify(&path, 30..35);
    assert_eq!(report.ids, Some((21, 35)));
}

#[test]
fn pruning_everything_leaves_the_head_in_the_checkpoint() {
    let (_dir, path, _) = store_across_cutoff();
    let key = AuditKey::default_path(&path);
    let before = verify_path(&path, &VerifyOptions::default()).unwrap().head;
    let done = retention::prune(&path, &key, Utc::now() + Duration::seconds(1), false).unwrap();
    assert_eq!(done.rows, 30);
    let report = verify_intact(&path);
    assert_eq!(report.head, before);
    let report = append_and_verify(&path, 40..43);
    assert_eq!(report.ids, Some((31, 33)));
}

#[test]
fn after_pruning_everything_a_large_append_continues_the_chain() {
    let (_dir, path, _) = store_across_cutoff();
    let key = AuditKey::default_path(&path);
    retention::prune(&path, &key, Utc::now() + Duration::seconds(1), false).unwrap();
    // Enough calls for the writer's multi-row inserts, whose ids SQLite would start again at 1
    // in an empty table: the chain goes on from the checkpoint's row instead.
    let report = append_and_verify(&path, 40..90);
    assert_eq!(report.ids, Some((31, 80)));
}

#[test]
fn the_writer_prunes_between_appends() {
    let (_dir, path, cutoff) = store_across_cutoff();
    let writer = AuditWriter::open(&path, AuditOptions::default()).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let done = writer.prune(cutoff).await.unwrap();
        assert_eq!(done.rows, 20);
        let calls = (50..55).map(|i| call(i, Utc::now())).collect();
        writer.append(calls).await.unwrap();
    });
    drop(writer);
    let report = verify_intact(&path);
    assert_eq!(report.ids, Some((21, 35)));
}

#[test]
fn a_forged_retention_checkpoint_does_not_hide_deleted_rows() {
    let (_dir, path, cutoff) = store_across_cutoff();
    retention::prune(&path, &AuditKey::default_path(&path), cutoff, false).unwrap();
    let conn = raw(&path);
    let seq: i64 = conn
        .query_row("SELECT MAX(seq) FROM audit_checkpoints", [], |r| r.get(0))
        .unwrap();
    // A retention checkpoint the attacker signed with nothing: the trigger lets the delete
    // through, verify does not accept the checkpoint.
    conn.execute(
        "INSERT INTO audit_checkpoints VALUES (?1, 'retention', 25, ?2, \
         '2026-01-01T00:00:00.000Z', ?3, ?4)",
        rusqlite::params![seq + 1, "00".repeat(32), "00".repeat(32), "11".repeat(64)],
    )
    .unwrap();
    conn.execute("DELETE FROM mcp_logs WHERE id <= 25", [])
        .unwrap();
    let report = verify_path(&path, &VerifyOptions::default()).unwrap();
    let kinds: Vec<_> = report.problems.iter().map(|p| (p.kind, p.row)).collect();
    assert!(
        kinds.contains(&(ProblemKind::BadSignature, Some(25))),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(ProblemKind::Missing, Some(21))),
        "{kinds:?}"
    );
}
