//! `audit verify` of a long PostgreSQL chain, split in two id ranges read over two connections
//! in one exported snapshot (tests/support/pg.rs). The split is forced here from a few rows on
//! (`parallel_from_rows`); the split scan must report what the sequential one reports: the
//! same count and head for an intact chain, and the same first bad row, of the same kind, for
//! each kind of tampering on either side of the split and at it.

mod support;

use chrono::{Duration, Utc};
use mcp_otel::audit::pg::{PgOptions, PgWriter, verify_url};
use mcp_otel::audit::verify::{ProblemKind, VerifyOptions};
use support::pg::{db_name, shared};

/// Rows of chain `c` (checkpoints every 10): ids 1..=40, split at 20.
const ROWS: usize = 40;

/// A fresh store holding chain `c` of [`ROWS`] rows (a second chain, `d`, beside it), its
/// writers closed; the directory of its keys and its URL.
fn store() -> (tempfile::TempDir, String) {
    let dir = support::tempdir();
    let url = shared().fresh_db();
    let start = Utc::now() - Duration::hours(1);
    for (chain, shift) in [("c", 0), ("d", ROWS)] {
        let mut o = PgOptions::new(chain);
        o.key_path = dir.path().join(format!("{chain}.key"));
        o.checkpoint_every_rows = 10;
        let w = PgWriter::open(&url, o).unwrap();
        let calls: Vec<_> = (shift..shift + ROWS)
            .map(|i| support::audit::call(i, start))
            .collect();
        for chunk in calls.chunks(8) {
            w.append_blocking(chunk).unwrap();
        }
    }
    (dir, url)
}

/// What a verify of chain `c` says: rows, head id, the first problem's kind and row.
type Outcome = (u64, i64, Option<(ProblemKind, Option<i64>)>);

/// Chain `c`'s [`Outcome`], split (`parallel_from_rows` 2) and sequential.
fn both(url: &str) -> [Outcome; 2] {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    [Some(2), Some(u64::MAX)].map(|split| {
        let options = VerifyOptions {
            parallel_from_rows: split,
            ..VerifyOptions::default()
        };
        let report = rt.block_on(verify_url(url, None, &options)).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert!(
            report.chain("d").unwrap().is_intact(),
            "{}",
            report.summary()
        );
        let c = report.chain("c").unwrap();
        let first = c.problems.first().map(|p| (p.kind, p.row));
        (c.rows, c.head.id, first)
    })
}

/// Runs `sql` with the triggers bypassed, as the database's superuser could.
fn tamper(url: &str, sql: &str) {
    shared().psql(
        db_name(url),
        &format!("SET session_replication_role = replica; {sql}"),
    );
}

#[test]
fn an_intact_chain_reads_the_same_split_or_not() {
    let (_dir, url) = store();
    let [split, sequential] = both(&url);
    assert_eq!(split, (ROWS as u64, ROWS as i64, None));
    assert_eq!(split, sequential);
}

#[test]
fn the_split_names_the_first_bad_row_of_every_kind() {
    let c = "chain_id = 'c' AND";
    let cases: Vec<(&str, String, ProblemKind, i64)> = vec![
        (
            "changed before the split",
            format!("UPDATE mcp_logs SET \"user\" = 'mallory' WHERE {c} id = 7"),
            ProblemKind::Changed,
            7,
        ),
        (
            "changed after the split",
            format!("UPDATE mcp_logs SET status = 'success!' WHERE {c} id = 33"),
            ProblemKind::Changed,
            33,
        ),
        (
            "changed, then re-hashed, at the split",
            format!(
                "UPDATE mcp_logs SET \"user\" = 'mallory', hash = repeat('ab', 32) \
                 WHERE {c} id = 20"
            ),
            ProblemKind::Changed,
            20,
        ),
        (
            "the first row after the split deleted",
            format!("DELETE FROM mcp_logs WHERE {c} id = 21"),
            ProblemKind::Missing,
            21,
        ),
        (
            "swapped across the split",
            format!(
                "UPDATE mcp_logs SET id = -1 WHERE {c} id = 19; \
                 UPDATE mcp_logs SET id = 19 WHERE {c} id = 22; \
                 UPDATE mcp_logs SET id = 22 WHERE {c} id = -1;"
            ),
            ProblemKind::Reordered,
            19,
        ),
        (
            "the tail truncated",
            format!("DELETE FROM mcp_logs WHERE {c} id > 35"),
            ProblemKind::Truncated,
            36,
        ),
    ];
    for (what, sql, kind, row) in cases {
        let (_dir, url) = store();
        tamper(&url, &sql);
        let [split, sequential] = both(&url);
        assert_eq!(split.2, Some((kind, Some(row))), "{what}: {split:?}");
        assert_eq!(split, sequential, "{what}");
    }
}

#[test]
fn chains_without_a_registration_are_found_and_named() {
    let (_dir, url) = store();
    // Chain `d` loses its registration; rows of a chain `e` that never had one appear (copies
    // of three of `c`'s, with span ids of their own so that they are other calls).
    tamper(
        &url,
        "DELETE FROM audit_chains WHERE chain_id = 'd'; \
         CREATE TEMP TABLE e AS SELECT * FROM mcp_logs WHERE chain_id = 'c' AND id <= 3; \
         UPDATE e SET chain_id = 'e', span_id = left(md5(span_id), 16); \
         INSERT INTO mcp_logs SELECT * FROM e;",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let report = rt
        .block_on(verify_url(&url, None, &VerifyOptions::default()))
        .unwrap();
    assert_eq!(report.chains.len(), 3, "{}", report.summary());
    assert!(report.chain("c").unwrap().is_intact());
    for id in ["d", "e"] {
        let chain = report.chain(id).unwrap();
        assert!(
            chain
                .problems
                .iter()
                .any(|p| p.kind == ProblemKind::BadSignature
                    && p.row.is_none()
                    && p.detail.contains("not registered")),
            "{id}: {:?}",
            chain.problems
        );
    }
    assert_eq!(report.chain("d").unwrap().rows, ROWS as u64);
}
