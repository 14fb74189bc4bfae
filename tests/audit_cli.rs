//! The `mcp-otel audit` commands as a user runs them: exit codes, what they print.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use support::audit::{call, raw, store_with};

fn audit(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mcp-otel"))
        .arg("audit")
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn verify_exits_0_when_intact_and_1_naming_the_row_when_not() {
    let dir = tempfile::tempdir().unwrap();
    let db = store_with(dir.path(), 12, 5);
    let pubkey = stdout(&audit(&db, &["pubkey"])).trim().to_owned();
    assert_eq!(pubkey.len(), 64, "{pubkey}");

    let ok = audit(&db, &["verify", "--pubkey", &pubkey]);
    assert_eq!(ok.status.code(), Some(0), "{}", stdout(&ok));
    let summary = stdout(&ok);
    assert!(summary.contains("intact: 12 rows"), "{summary}");
    assert!(summary.contains("(given)"), "{summary}");
    // The head hash printed by verify is what --expect-head takes later.
    let head = summary
        .split("head 12 ")
        .nth(1)
        .and_then(|s| s.get(..64))
        .unwrap()
        .to_owned();
    let ok = audit(&db, &["verify", "--expect-head", &head]);
    assert_eq!(ok.status.code(), Some(0), "{}", stdout(&ok));

    let conn = raw(&db);
    conn.execute_batch(
        "DROP TRIGGER mcp_logs_no_update; UPDATE mcp_logs SET resource_id = 'x' WHERE id = 4;",
    )
    .unwrap();
    let bad = audit(&db, &["verify"]);
    assert_eq!(bad.status.code(), Some(1));
    let text = stdout(&bad);
    assert!(text.contains("row 4: changed"), "{text}");
    assert!(
        text.contains("trigger mcp_logs_no_update is gone"),
        "{text}"
    );
    let json = audit(&db, &["verify", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["intact"], false);
    assert!(
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["row"] == 4 && p["kind"] == "changed")
    );
}

#[test]
fn review_answers_the_seeds_question_in_one_command() {
    let dir = tempfile::tempdir().unwrap();
    let db = store_with(dir.path(), 20, 100);
    let out = audit(&db, &["review", "--since", "24h", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 20 calls, 3 of each 5 are writes: 12 writes, 4 deletes.
    assert_eq!(v["totals"]["writes"], 12);
    assert_eq!(v["totals"]["deletes"], 4);
    let table = stdout(&audit(&db, &["review", "--user", "bob"]));
    assert!(table.starts_with("Write operations from"), "{table}");
    assert!(table.contains("Per user:"), "{table}");
    assert!(!table.contains("alice"), "{table}");
}

#[test]
fn sql_refuses_writes_with_a_clear_error_and_runs_queries() {
    let dir = tempfile::tempdir().unwrap();
    let db = store_with(dir.path(), 5, 100);
    let out = audit(&db, &["sql", "DELETE FROM mcp_logs"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("read-only"), "{err}");
    let out = audit(
        &db,
        &["sql", "SELECT COUNT(*) AS n FROM mcp_logs", "--json"],
    );
    assert_eq!(stdout(&out).trim(), r#"{"n":5}"#);
}

#[test]
fn query_prune_and_a_missing_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = store_with(dir.path(), 10, 100);
    let out = audit(&db, &["query", "--operation", "delete", "--json"]);
    assert_eq!(stdout(&out).lines().count(), 2);
    let out = audit(&db, &["prune", "--retention", "0s", "--dry-run"]);
    assert!(
        stdout(&out).starts_with("would prune 10 row(s): ids 1..10"),
        "{}",
        stdout(&out)
    );
    let out = audit(&db, &["prune", "--retention", "0s"]);
    assert!(
        stdout(&out).starts_with("pruned 10 row(s)"),
        "{}",
        stdout(&out)
    );
    assert_eq!(audit(&db, &["verify"]).status.code(), Some(0));
    let missing = dir.path().join("nope.db");
    let out = audit(&missing, &["verify"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.db does not exist"));
    assert!(!missing.exists(), "verify must not create a database");
}

#[test]
fn review_flags_clock_skew_beyond_the_limit_given() {
    use chrono::{Duration, Utc};
    use mcp_otel::audit::{AuditOptions, AuditWriter};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let now = Utc::now();
    // Two deletes (calls 3 and 8 of the session), dated 30 and 5 minutes before they are
    // recorded.
    let calls = vec![
        call(3, now - Duration::minutes(30)),
        call(8, now - Duration::minutes(5)),
    ];
    let writer = AuditWriter::open(&db, AuditOptions::default()).unwrap();
    writer.append_blocking(calls).unwrap();
    drop(writer);
    let skewed = |args: &[&str]| -> Vec<String> {
        let out = audit(&db, &[&["review", "--json"], args].concat());
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let writes = v["writes"].as_array().unwrap();
        assert_eq!(writes.len(), 2, "{v}");
        writes
            .iter()
            .filter(|w| {
                w["flags"]
                    .as_array()
                    .unwrap()
                    .contains(&"clock skew".into())
            })
            .map(|w| w["resource_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(skewed(&[]).is_empty(), "within the default hour");
    assert_eq!(skewed(&["--max-skew", "10m"]), ["task-3"]);
    assert_eq!(skewed(&["--max-skew", "60"]), ["task-8", "task-3"]);
    let table = stdout(&audit(&db, &["review", "--max-skew", "10m"]));
    let line = table.lines().find(|l| l.contains("task-3")).unwrap();
    assert!(line.contains("(recorded "), "{table}");
    let line = table.lines().find(|l| l.contains("task-8")).unwrap();
    assert!(!line.contains("(recorded "), "{table}");
    let bad = audit(&db, &["review", "--max-skew", "ten minutes"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("expected a duration like"),
        "{bad:?}"
    );
}
