//! `audit prune` on the PostgreSQL store against a real server (tests/support/pg.rs): whole
//! day partitions dropped through a retention checkpoint per chain, after which every chain
//! still verifies (and keeps verifying as appends continue, even when a writer appends while
//! the prune runs); a prune that cannot sign for every chain changes nothing; a day dropped
//! without the checkpoints is named per chain by verify.

mod support;

use chrono::{Duration, Utc};
use mcp_otel::audit::pg::{
    PgOptions, PgVerifyReport, PgWriter, default_key_path, partition_name, verify_url,
};
use mcp_otel::audit::verify::{ProblemKind, VerifyOptions};
use mcp_otel::record::ToolCall;
use std::path::Path;
use support::audit::cli as audit;
use support::pg::{db_name, shared};

/// A writer of `chain` whose clock is `days_ago` days behind, its key the chain's default key
/// file in `dir`.
fn writer(url: &str, dir: &Path, chain: &str, days_ago: i64) -> PgWriter {
    let mut o = PgOptions::new(chain);
    o.key_path = dir.join(default_key_path(chain));
    o.checkpoint_every_rows = 4;
    o.clock_offset = -Duration::days(days_ago);
    PgWriter::open(url, o).unwrap()
}

/// `n` distinct calls of chain `chain`, numbered from `from`.
fn calls(chain: &str, from: usize, n: usize) -> Vec<ToolCall> {
    let start = Utc::now() - Duration::hours(1);
    (from..from + n)
        .map(|i| {
            let mut c = support::audit::call(i, start);
            c.user = format!("{chain}-{}", c.user);
            c
        })
        .collect()
}

/// Chains `a` and `b`, each with 20 rows recorded 100 days ago, 10 rows 95 days ago and 10
/// today; every writer closed.
fn three_ages(dir: &Path) -> String {
    let url = shared().fresh_db();
    for chain in ["a", "b"] {
        let mut next = 0;
        for (days_ago, n) in [(100, 20), (95, 10), (0, 10)] {
            let w = writer(&url, dir, chain, days_ago);
            for chunk in calls(chain, next, n).chunks(5) {
                w.append_blocking(chunk).unwrap();
            }
            next += n;
        }
    }
    url
}

async fn verify(url: &str) -> PgVerifyReport {
    verify_url(url, None, &VerifyOptions::default())
        .await
        .unwrap()
}

fn count(url: &str) -> String {
    shared()
        .psql(
            db_name(url),
            "SELECT chain_id || ':' || count(*) FROM mcp_logs GROUP BY chain_id ORDER BY 1",
        )
        .trim()
        .replace('\n', " ")
}

/// The day partitions of the store, oldest first.
fn partitions(url: &str) -> Vec<String> {
    shared()
        .psql(
            db_name(url),
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'mcp_logs'::regclass ORDER BY 1",
        )
        .lines()
        .map(str::to_owned)
        .collect()
}

fn day(days_ago: i64) -> String {
    partition_name((Utc::now() - Duration::days(days_ago)).date_naive())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_drops_whole_days_and_every_chain_still_verifies() {
    let dir = support::tempdir();
    let url = three_ages(dir.path());
    assert_eq!(count(&url), "a:40 b:40");
    assert!(partitions(&url).contains(&day(100)) && partitions(&url).contains(&day(95)));
    let keys = dir.path().to_str().unwrap();

    let (code, out) = audit(&["prune", "--db", &url, "--retention", "90d", "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("would prune 60 row(s) recorded before "),
        "{out}"
    );
    assert!(out.contains("chain a: 30 row(s), ids ..30,"), "{out}");
    assert_eq!(count(&url), "a:40 b:40", "a dry run changes nothing");

    let (code, out) = audit(&["prune", "--db", &url, "--retention", "90d", "--key", keys]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("pruned 60 row(s) recorded before "),
        "{out}"
    );
    assert!(
        out.contains("chain a: 30 row(s), ids ..30,")
            && out.contains("chain b: 30 row(s), ids ..30,")
            && out.contains("; retention checkpoint #"),
        "{out}"
    );
    assert_eq!(count(&url), "a:10 b:10");
    let left = partitions(&url);
    assert!(
        !left.contains(&day(100)) && !left.contains(&day(95)) && left.contains(&day(0)),
        "{left:?}"
    );
    // Every day older than the retention went, the empty ones made ahead of time too.
    assert!(left.iter().all(|p| *p >= day(90)), "{left:?}");

    let report = verify(&url).await;
    assert!(report.is_intact(), "{}", report.summary());
    for chain in ["a", "b"] {
        let c = report.chain(chain).unwrap();
        assert_eq!((c.pruned_through, c.rows), (Some(30), 10), "{chain}: {c:?}");
    }
    // Appends continue on both chains, and the chains still verify.
    for chain in ["a", "b"] {
        let w = writer(&url, dir.path(), chain, 0);
        let out = w.append_blocking(&calls(chain, 40, 5)).unwrap();
        assert_eq!(out.head.id, 45);
    }
    let (code, out) = audit(&["verify", "--db", &url, "--require-signed"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = audit(&["prune", "--db", &url, "--key", keys]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("nothing to prune"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_appending_while_the_prune_runs_is_not_stopped() {
    let dir = support::tempdir();
    let url = three_ages(dir.path());
    let keys = dir.path().to_str().unwrap().to_owned();
    let live = writer(&url, dir.path(), "b", 0);
    let appending = std::thread::spawn(move || {
        // Small appends with a checkpoint every 4 rows: checkpoints race the prune's.
        for i in 0..60 {
            live.append_blocking(&calls("b", 40 + i, 1)).unwrap();
        }
    });
    let (code, out) = audit(&["prune", "--db", &url, "--retention", "90d", "--key", &keys]);
    appending.join().unwrap();
    assert_eq!(code, 0, "{out}");
    assert_eq!(count(&url), "a:10 b:70");
    let (code, out) = audit(&["verify", "--db", &url, "--require-signed"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("chain b: audit trail intact: 70 rows"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_that_cannot_sign_for_every_chain_changes_nothing() {
    let dir = support::tempdir();
    let url = three_ages(dir.path());
    std::fs::remove_file(dir.path().join(default_key_path("b"))).unwrap();
    let keys = dir.path().to_str().unwrap();
    let (code, out) = audit(&["prune", "--db", &url, "--retention", "90d", "--key", keys]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("mcp-audit-b.key"), "{out}");
    // One key file for two chains to sign for is refused too.
    let one = dir.path().join(default_key_path("a"));
    let (code, out) = audit(&[
        "prune",
        "--db",
        &url,
        "--retention",
        "90d",
        "--key",
        one.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("2 chains have rows to prune"), "{out}");
    assert_eq!(count(&url), "a:40 b:40");
    assert!(partitions(&url).contains(&day(100)));
    assert!(verify(&url).await.is_intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_dropped_without_the_checkpoints_is_named_in_every_chain() {
    let dir = support::tempdir();
    let url = three_ages(dir.path());
    // The owner drops the day of 95 days ago by hand: no trigger fires for a dropped table.
    let p = day(95);
    let db = db_name(&url);
    shared().psql(db, &format!("ALTER TABLE mcp_logs DETACH PARTITION {p}"));
    shared().psql(db, &format!("DROP TABLE {p}"));
    let report = verify(&url).await;
    for chain in ["a", "b"] {
        let c = report.chain(chain).unwrap();
        assert_eq!(c.problems.len(), 1, "{chain}: {:?}", c.problems);
        let problem = &c.problems[0];
        assert_eq!(
            (problem.kind, problem.row),
            (ProblemKind::Missing, Some(21)),
            "{chain}: {problem:?}"
        );
        assert!(
            problem.detail.contains("rows 21..30 are missing"),
            "{problem:?}"
        );
    }
}
