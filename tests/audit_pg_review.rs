//! `audit review` and `audit query` on the PostgreSQL store against a real server
//! (tests/support/pg.rs): the same session written to a SQLite store and, split across two
//! chains (two replicas), to PostgreSQL must give the same review (writes, flags, counts per
//! user) and the same query answers, full-text search included; the seed's query, with
//! `"user"` quoted, returns the rows of `audit review`; the text search is answered from its
//! GIN index.

mod support;

use chrono::{DateTime, Duration, Utc};
use mcp_otel::audit::pg::{self as pg_review, PgOptions, PgWriter};
use mcp_otel::audit::review::{self, QueryFilter, ReviewFilter};
use mcp_otel::audit::store;
use mcp_otel::record::{OperationType, ToolCall, WriteOp};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use support::audit::{SEED_QUERY_PG, cli_ok, tool_call};
use support::pg::{db_name, shared};

/// The review tests' session ([`support::audit::review_session`]) plus a read whose context
/// holds an e-mail address and a path, and two deletes dated far from when they were recorded.
fn session(now: DateTime<Utc>) -> Vec<ToolCall> {
    let mut calls = support::audit::review_session(now);
    let mut mail = tool_call("get_task", "carol", now - Duration::hours(4), None);
    mail.context = Some(json!({"owner": "ops@example.com", "path": "/srv/task-9"}));
    calls.insert(4, mail);
    let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    for (i, t) in [at("1970-01-01T00:00:00Z"), at("2200-01-01T00:00:00Z")]
        .into_iter()
        .enumerate()
    {
        let op = WriteOp::new(OperationType::Delete).resource_id(format!("far-{i}"));
        calls.push(tool_call("delete_task", "mallory", t, Some(op)));
    }
    calls
}

/// The session in a fresh PostgreSQL database, alternate calls on chains `a` and `b`, each
/// chain's calls also resent to the other (a retry the load balancer sent elsewhere).
fn pg_store(dir: &Path, calls: &[ToolCall]) -> String {
    let url = shared().fresh_db();
    let writer = |chain: &str| {
        let mut o = PgOptions::new(chain);
        o.key_path = dir.join(format!("{chain}.key"));
        PgWriter::open(&url, o).unwrap()
    };
    let (a, b) = (writer("a"), writer("b"));
    let mine: Vec<ToolCall> = calls.iter().step_by(2).cloned().collect();
    let theirs: Vec<ToolCall> = calls.iter().skip(1).step_by(2).cloned().collect();
    a.append_blocking(&mine).unwrap();
    b.append_blocking(&theirs).unwrap();
    let again = b.append_blocking(&mine).unwrap();
    assert_eq!(again.duplicates, mine.len());
    url
}

/// The session of `now` in a SQLite store (its folder, path and a read-only connection) and in
/// PostgreSQL ([`pg_store`], its URL).
fn both_stores(now: DateTime<Utc>) -> (tempfile::TempDir, PathBuf, rusqlite::Connection, String) {
    let dir = support::tempdir();
    let calls = session(now);
    let path = support::audit::store_of_calls(dir.path(), calls.clone());
    let url = pg_store(dir.path(), &calls);
    let conn = store::open_ro(&path).unwrap();
    (dir, path, conn, url)
}

/// A review document without the row ids (each store numbers its own chains), recording
/// times (each store recorded the session itself) and chains (which only the PostgreSQL store
/// has: each of its rows must name one of `chains`); the flags, `clock skew` included, stay.
fn without_ids(mut v: Value, chains: &[&str]) -> Value {
    for list in ["writes", "failed", "refused"] {
        for w in v[list].as_array_mut().unwrap() {
            let w = w.as_object_mut().unwrap();
            w.remove("id");
            w.remove("recorded_at");
            let chain = w.remove("chain_id");
            assert_eq!(
                chain.is_some(),
                !chains.is_empty(),
                "{w:?}: a chain where the store has chains"
            );
            if let Some(chain) = chain {
                assert!(chains.contains(&chain.as_str().unwrap()), "{w:?}");
            }
        }
    }
    v
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_review_over_every_chain_is_the_sqlite_stores_review() {
    let now = Utc::now();
    let (_dir, path, conn, url) = both_stores(now);
    let windows = [
        (
            now - Duration::hours(24),
            now + Duration::minutes(1),
            None,
            None,
        ),
        (now - Duration::hours(48), now, None, None),
        (
            now - Duration::hours(24),
            now + Duration::minutes(1),
            Some("mallory"),
            None,
        ),
        (
            now - Duration::hours(24),
            now + Duration::minutes(1),
            None,
            Some("create_task"),
        ),
        // Yesterday: nothing was recorded then, and nothing but the old create is dated then.
        (
            now - Duration::hours(48),
            now - Duration::hours(24),
            None,
            None,
        ),
    ];
    let rt = rt();
    for (since, until, user, tool) in windows {
        let filter = ReviewFilter {
            since,
            until,
            user: user.map(str::to_owned),
            tool: tool.map(str::to_owned),
        };
        let lite = review::review(&conn, &path, &filter).unwrap();
        let pg = rt.block_on(pg_review::review_url(&url, &filter)).unwrap();
        assert_eq!(
            without_ids(pg.to_json(), &["a", "b"]),
            without_ids(lite.to_json(), &[]),
            "{filter:?}"
        );
    }
    // The full window holds every write: all were recorded in it, however they are dated.
    let full = ReviewFilter {
        since: now - Duration::hours(24),
        until: now + Duration::minutes(1),
        user: None,
        tool: None,
    };
    let pg = rt.block_on(pg_review::review_url(&url, &full)).unwrap();
    assert_eq!(pg.writes.len(), 7, "{pg:?}");
    assert_eq!((pg.deletes(), pg.failed().count()), (3, 1));
    // Each write names the chain (the replica) that recorded it: alternate calls went to `a`.
    let doc = pg.to_json();
    let chain_of = |resource: &str| {
        let writes = doc["writes"].as_array().unwrap();
        let w = writes.iter().find(|w| w["resource_id"] == resource);
        w.and_then(|w| w["chain_id"].as_str().map(str::to_owned))
    };
    let (chain_a, chain_b) = (chain_of("far-0"), chain_of("far-1"));
    assert!(
        chain_a.is_some() && chain_a != chain_b,
        "{chain_a:?} {chain_b:?}"
    );
    // The command line, as a reviewer runs it: the table ends with the chain.
    let out = cli_ok(&["review", "--db", &url, "--since", "24h", "--until", "now"]);
    assert!(out.contains("7 writes, 3 deletes"), "{out}");
    let header = out.lines().find(|l| l.contains("TIMESTAMP")).unwrap();
    assert!(header.trim_end().ends_with("CHAIN"), "{out}");
    let mallory = out.lines().find(|l| l.contains("far-1")).unwrap();
    assert!(
        mallory.trim_end().ends_with(chain_b.unwrap().as_str()),
        "{out}"
    );
}

#[test]
fn the_seeds_query_returns_the_rows_of_audit_review_over_every_chain() {
    let dir = support::tempdir();
    let now = Utc::now();
    // Writes dated when they were recorded (the seed's query knows only the call's own time).
    let url = pg_store(dir.path(), &session(now)[1..7]);
    let out = cli_ok(&["sql", "--db", &url, "--json", SEED_QUERY_PG]);
    let seed_rows: Vec<(String, String, String)> = out
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let s = |k: &str| v[k].as_str().unwrap().to_owned();
            (s("tool_name"), s("user"), s("resource_id"))
        })
        .collect();
    let out = cli_ok(&["review", "--db", &url, "--since", "1d", "--json"]);
    let review: Value = serde_json::from_str(&out).unwrap();
    let review_rows: Vec<(String, String, String)> = review["writes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let s = |k: &str| w[k].as_str().unwrap().to_owned();
            (s("tool_name"), s("user"), s("resource_id"))
        })
        .collect();
    assert_eq!(seed_rows.len(), 4, "{seed_rows:?}");
    assert_eq!(seed_rows, review_rows);
    // Both chains contribute.
    let chains = shared().psql(
        db_name(&url),
        "SELECT count(DISTINCT chain_id) FROM mcp_logs WHERE operation_type IS NOT NULL \
         AND timestamp > NOW() - INTERVAL '1 day'",
    );
    assert_eq!(chains.trim(), "2");
}

/// `audit query` on both stores: the `user:tool` of each call returned.
fn answers(
    conn: &rusqlite::Connection,
    path: &Path,
    url: &str,
    filter: &QueryFilter,
) -> (Vec<String>, Vec<String>) {
    let pick = |v: &Value| {
        format!(
            "{}:{}",
            v["user"].as_str().unwrap(),
            v["tool_name"].as_str().unwrap()
        )
    };
    let mut lite = Vec::new();
    review::query(conn, path, filter, |v| {
        lite.push(pick(&v));
        Ok(())
    })
    .unwrap();
    let mut pg = Vec::new();
    rt().block_on(pg_review::query_url(url, filter, |v| {
        assert!(v["chain_id"].is_string(), "{v}");
        pg.push(pick(&v));
        Ok(())
    }))
    .unwrap();
    (pg, lite)
}

#[test]
fn query_filters_and_searches_as_the_sqlite_store_does() {
    let now = Utc::now();
    let (_dir, path, conn, url) = both_stores(now);
    let base = QueryFilter {
        limit: 100,
        ..QueryFilter::default()
    };
    let with = |set: &dyn Fn(&mut QueryFilter)| {
        let mut f = base.clone();
        set(&mut f);
        f
    };
    let text = |t: &str| with(&|f| f.text = Some(t.to_owned()));
    let cases: Vec<(QueryFilter, &[&str])> = vec![
        (
            text("quarterly"),
            &["mallory:delete_task", "alice:create_task"],
        ),
        (
            text("QUARTERLY report"),
            &["mallory:delete_task", "alice:create_task"],
        ),
        // Each word anywhere; the tokens of one word in order (`report-quarterly` is not there).
        (
            text("report quarterly"),
            &["mallory:delete_task", "alice:create_task"],
        ),
        (text("report-quarterly"), &[]),
        (
            text("quarterly-report"),
            &["mallory:delete_task", "alice:create_task"],
        ),
        (text("apollo"), &["alice:list_tasks"]),
        (text("task-1 \"x"), &[]),
        // Parts of an e-mail address and a path are words, as FTS5 splits them.
        (text("example"), &["carol:get_task"]),
        (text("ops@example.com"), &["carol:get_task"]),
        (text("srv task-9"), &["carol:get_task"]),
        (text("draft final"), &["bob:update_task"]),
        (
            with(&|f| f.status = Some("error".into())),
            &["bob:update_task"],
        ),
        (
            with(&|f| f.error_code = Some("403".into())),
            &["bob:update_task"],
        ),
        (
            with(&|f| {
                f.operation_type = Some("create".into());
                f.since = Some(now - Duration::hours(24));
            }),
            &["alice:create_task"],
        ),
        (
            with(&|f| f.until = Some(now - Duration::hours(24))),
            &["alice:create_task", "mallory:delete_task"],
        ),
        (
            with(&|f| {
                f.user = Some("mallory".into());
                f.limit = 2;
            }),
            &["mallory:delete_task", "mallory:delete_task"],
        ),
    ];
    for (filter, want) in &cases {
        let (pg, lite) = answers(&conn, &path, &url, filter);
        assert_eq!(lite, *want, "sqlite, {filter:?}");
        assert_eq!(pg, *want, "postgres, {filter:?}");
    }
    let (pg, lite) = answers(&conn, &path, &url, &base);
    assert_eq!((pg.len(), lite.len()), (9, 9));
    assert_eq!(pg, lite, "no filter: every call, reads too, newest first");
    // The command line prints the table and the count.
    let out = cli_ok(&["query", "--db", &url, "--text", "apollo"]);
    assert!(
        out.contains("list_tasks") && out.ends_with("1 row(s)\n"),
        "{out}"
    );
}

#[test]
fn the_text_search_is_answered_from_its_gin_index() {
    let dir = support::tempdir();
    let url = pg_store(dir.path(), &session(Utc::now()));
    let condition = pg_review::search_condition(&["'quarterly'".to_owned()]);
    let plan = shared().psql(
        db_name(&url),
        &format!("SET enable_seqscan = off; EXPLAIN SELECT id FROM mcp_logs WHERE {condition}"),
    );
    // Each day partition's part of the index `mcp_logs_search`, no partition scanned whole.
    assert!(
        plan.contains("Bitmap Index Scan on mcp_logs_2") && !plan.contains("Seq Scan"),
        "{plan}"
    );
}

#[test]
fn a_collector_on_postgres_serves_the_review_of_every_chain_remotely() {
    let dir = support::tempdir();
    let now = Utc::now();
    let url = pg_store(dir.path(), &session(now));
    let key = dir.path().join("r.key");
    let collect = support::CollectProcess::start(
        env!("CARGO_BIN_EXE_mcp-otel"),
        &[
            "--audit",
            &url,
            "--chain-id",
            "r",
            "--audit-key",
            key.to_str().unwrap(),
        ],
    );
    let remote = format!("http://{}", collect.grpc);
    // The same review, the chains included, as the store's own.
    let (since, until) = (
        (now - Duration::hours(24)).to_rfc3339(),
        (now + Duration::minutes(1)).to_rfc3339(),
    );
    let window = ["--since", &since, "--until", &until, "--json"];
    let review = |at: [&str; 2]| {
        let out = cli_ok(&[&["review"][..], &at, &window].concat());
        without_ids(serde_json::from_str(&out).unwrap(), &["a", "b"])
    };
    let there = review(["--remote", &remote]);
    assert_eq!(there, review(["--db", &url]));
    assert_eq!(there["totals"]["writes"], 7, "{there}");
    let query =
        |at: [&str; 2]| cli_ok(&[&["query"][..], &at, &["--text", "quarterly", "--json"]].concat());
    let rows = query(["--remote", &remote]);
    assert_eq!(rows, query(["--db", &url]));
    assert_eq!(rows.lines().count(), 2, "{rows}");
    // Verify concerns one chain at a time, and the store has several.
    let (code, out) = support::audit::cli(&["verify", "--remote", &remote]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("chains (a, b") && out.contains("chain_id"),
        "{out}"
    );
    let out = cli_ok(&["verify", "--remote", &remote, "--chain", "b"]);
    assert!(out.contains("intact"), "{out}");
}
