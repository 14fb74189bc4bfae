//! The seed's daily write review on known writes: an unconfirmed delete, a failed update,
//! reads that must not appear, a write outside the window; plus `query` and read-only `sql`.

mod support;

use chrono::{DateTime, Duration, Utc};
use mcp_otel::audit::review::{self, QueryFilter};
use mcp_otel::audit::store;
use mcp_otel::record::{OperationType, ToolCall, WriteOp};
use serde_json::json;
use std::path::PathBuf;

use support::audit::{tool_call as call, window};

/// The calls of the session under review ([`support::audit::review_session`]); `now` is the
/// end of the review window.
fn session(now: DateTime<Utc>) -> Vec<ToolCall> {
    support::audit::review_session(now)
}

/// A store in a new temporary folder holding `calls`: the folder, the store's path, and a
/// read-only connection to it.
fn store_of(calls: Vec<ToolCall>) -> (tempfile::TempDir, PathBuf, rusqlite::Connection) {
    let dir = tempfile::tempdir().unwrap();
    let path = support::audit::store_of_calls(dir.path(), calls);
    let conn = store::open_ro(&path).unwrap();
    (dir, path, conn)
}

/// The review as `mcp-otel audit review` prints it, without colour.
fn rendered(r: &review::Review) -> String {
    let mut text = Vec::new();
    r.render(&mut text, false).unwrap();
    String::from_utf8(text).unwrap()
}

#[test]
fn the_daily_review_lists_every_write_of_the_window_newest_first_with_flags() {
    let now = Utc::now();
    let (_dir, path, conn) = store_of(session(now));
    let r = review::review(&conn, &path, &window(now - Duration::hours(24), now)).unwrap();
    let listed: Vec<(&str, &str, Option<&str>)> = r
        .writes
        .iter()
        .map(|w| {
            (
                w.user.as_str(),
                w.operation_type.as_str(),
                w.resource_id.as_deref(),
            )
        })
        .collect();
    // Newest first; the read and the 30-hour-old create are not there.
    assert_eq!(
        listed,
        [
            ("alice", "write", Some("task-3")),
            ("mallory", "delete", Some("task-1")),
            ("bob", "update", Some("task-2")),
            ("alice", "create", Some("task-1")),
        ]
    );
    assert_eq!(r.deletes(), 1);
    // The unconfirmed delete and the write whose confirmation is unknown are flagged.
    assert_eq!(r.unconfirmed(), 2);
    let failed: Vec<_> = r
        .failed()
        .map(|w| (w.user.as_str(), w.error_code.as_deref()))
        .collect();
    assert_eq!(failed, [("bob", Some("403"))]);
    let mallory = r.per_user.iter().find(|u| u.user == "mallory").unwrap();
    assert_eq!(
        (mallory.writes, mallory.deletes, mallory.unconfirmed),
        (1, 1, 1)
    );
    let alice = r.per_user.iter().find(|u| u.user == "alice").unwrap();
    assert_eq!((alice.writes, alice.creates, alice.unconfirmed), (2, 1, 1));

    let mut text = Vec::new();
    r.render(&mut text, false).unwrap();
    let text = String::from_utf8(text).unwrap();
    let delete_line = text.lines().find(|l| l.contains("mallory")).unwrap();
    assert!(delete_line.starts_with('!'), "{text}");
    assert!(
        delete_line.contains("DELETE") && delete_line.contains("not confirmed"),
        "{text}"
    );
    assert!(text.contains("Failed writes:"), "{text}");
    assert!(text.contains("error 403"), "{text}");
    let mut colored = Vec::new();
    r.render(&mut colored, true).unwrap();
    let colored = String::from_utf8(colored).unwrap();
    assert!(
        colored
            .lines()
            .any(|l| l.starts_with("\x1b[1;31m!") && l.contains("mallory"))
    );

    // The session was written just now with timestamps hours back: past the default skew
    // limit every write is also flagged `clock skew`; within a wider one, only the rest.
    assert_eq!(
        r.to_json()["writes"][1]["flags"],
        json!(["delete", "not confirmed", "clock skew"])
    );
    let v = r.clone().with_max_skew(Duration::hours(48)).to_json();
    assert_eq!(
        v["totals"],
        json!({"writes": 4, "deletes": 1, "unconfirmed": 2, "failed": 1, "refused": 0})
    );
    assert_eq!(v["writes"][1]["flags"], json!(["delete", "not confirmed"]));
    assert_eq!(v["writes"][0]["flags"], json!(["confirmation unknown"]));
}

#[test]
fn the_review_filters_by_user_and_tool() {
    let now = Utc::now();
    let (_dir, path, conn) = store_of(session(now));
    let mut filter = window(now - Duration::hours(48), now);
    filter.user = Some("alice".to_owned());
    assert_eq!(
        review::review(&conn, &path, &filter).unwrap().writes.len(),
        3
    );
    filter.tool = Some("create_task".to_owned());
    assert_eq!(
        review::review(&conn, &path, &filter).unwrap().writes.len(),
        2
    );
}

#[test]
fn the_seeds_query_runs_with_only_its_time_expression_adapted() {
    let (_dir, _path, conn) = store_of(session(Utc::now()));
    let mut rows = Vec::new();
    review::sql(
        &conn,
        review::SEED_DAILY_REVIEW,
        |_| Ok(()),
        |_, v| {
            rows.push((
                v["user"].clone(),
                v["operation_type"].clone(),
                v["user_confirmation"].clone(),
            ));
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(
        rows,
        [
            (json!("mallory"), json!("delete"), json!(false)),
            (json!("bob"), json!("update"), json!(true)),
            (json!("alice"), json!("create"), json!(true)),
        ]
    );
}

#[test]
fn sql_is_read_only() {
    let (_dir, _path, conn) = store_of(session(Utc::now()));
    for statement in [
        "DELETE FROM mcp_logs",
        "UPDATE mcp_logs SET user = 'x'",
        "DROP TRIGGER mcp_logs_no_update",
    ] {
        let err = review::sql(&conn, statement, |_| Ok(()), |_, _| Ok(())).unwrap_err();
        assert!(err.to_string().contains("read-only"), "{statement}: {err}");
    }
}

#[test]
fn query_filters_and_searches_context_and_states() {
    let now = Utc::now();
    let (_dir, path, conn) = store_of(session(now));
    let run = |filter: QueryFilter| {
        let mut users = Vec::new();
        review::query(
            &conn,
            &path,
            &QueryFilter {
                limit: 100,
                ..filter
            },
            |v| {
                users.push(format!(
                    "{}:{}",
                    v["user"].as_str().unwrap(),
                    v["tool_name"].as_str().unwrap()
                ));
                Ok(())
            },
        )
        .unwrap();
        users
    };
    // The calls matching the default filter changed by `set`.
    let only = |set: &dyn Fn(&mut QueryFilter)| {
        let mut filter = QueryFilter::default();
        set(&mut filter);
        run(filter)
    };
    let text = |t: &str| only(&|f| f.text = Some(t.into()));
    // Full-text search over the states: the create's after_state and the delete's before_state.
    assert_eq!(
        text("quarterly"),
        ["mallory:delete_task", "alice:create_task"]
    );
    // ... and over the context of a read; words with punctuation are searched, not parsed.
    assert_eq!(text("apollo"), ["alice:list_tasks"]);
    assert!(text("task-1 \"x").is_empty());
    assert_eq!(
        only(&|f| f.status = Some("error".into())),
        ["bob:update_task"]
    );
    assert_eq!(
        only(&|f| f.error_code = Some("403".into())),
        ["bob:update_task"]
    );
    assert_eq!(
        only(&|f| {
            f.operation_type = Some("create".into());
            f.since = Some(now - Duration::hours(24));
        }),
        ["alice:create_task"]
    );
    assert_eq!(
        run(QueryFilter::default()).len(),
        6,
        "no filter: every call, reads too"
    );
    assert_eq!(
        only(&|f| f.until = Some(now - Duration::hours(24))),
        ["alice:create_task"]
    );
}

#[test]
fn durations_and_times_parse_and_bad_ones_name_the_flag() {
    let now = Utc::now();
    assert_eq!(
        review::parse_time("--since", "24h", now).unwrap(),
        now - Duration::hours(24)
    );
    assert_eq!(review::parse_time("--since", "now", now).unwrap(), now);
    assert_eq!(
        review::parse_time("--since", "2026-01-02T03:04:05Z", now)
            .unwrap()
            .to_rfc3339(),
        "2026-01-02T03:04:05+00:00"
    );
    assert_eq!(
        review::parse_duration("--retention", "90d").unwrap(),
        Duration::days(90)
    );
    let err = review::parse_time("--since", "yesterday", now)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--since") && err.contains("yesterday"),
        "{err}"
    );
}

#[test]
fn escape_sequences_in_names_cannot_erase_the_delete_line() {
    let now = Utc::now();
    // ESC[1A ESC[2K: cursor up, erase the line: what would hide "delete, not confirmed".
    let sneaky = "mallory\u{1b}[1A\u{1b}[2K";
    let delete = call(
        "delete_task",
        sneaky,
        now - Duration::hours(1),
        Some(WriteOp::new(OperationType::Delete).resource_id("task-\u{1b}[2K1")),
    );
    let (_dir, path, conn) = store_of(vec![delete]);
    let r = review::review(&conn, &path, &window(now - Duration::hours(24), now)).unwrap();
    let text = rendered(&r);
    assert!(
        !text.contains('\u{1b}'),
        "no raw escape reaches the terminal: {text:?}"
    );
    let line = text.lines().find(|l| l.contains("mallory")).unwrap();
    assert!(line.starts_with('!'), "{text}");
    assert!(line.contains("mallory\\u{1b}[1A\\u{1b}[2K"), "{line}");
}

#[test]
fn writes_dated_far_away_are_reviewed_by_when_they_were_recorded() {
    let now = Utc::now();
    let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    let deletes: Vec<ToolCall> = [
        at("1970-01-01T00:00:00Z"),
        at("2200-01-01T00:00:00Z"),
        at("2262-01-01T00:00:00Z"),
        now - Duration::minutes(5),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, t)| {
        let op = WriteOp::new(OperationType::Delete).resource_id(format!("task-{i}"));
        call("delete_task", "mallory", t, Some(op))
    })
    .collect();
    let (_dir, path, conn) = store_of(deletes);
    let today = window(now - Duration::hours(24), now + Duration::minutes(1));
    let r = review::review(&conn, &path, &today).unwrap();
    assert_eq!(
        r.writes.len(),
        4,
        "every delete recorded today is reviewed: {r:?}"
    );
    let text = rendered(&r);
    let skewed = text.lines().filter(|l| l.contains("(recorded ")).count();
    assert_eq!(
        skewed, 3,
        "the three far-dated ones show when they were recorded:\n{text}"
    );
    // A window of yesterday holds none of them, however they are dated.
    let yesterday = window(now - Duration::hours(48), now - Duration::hours(24));
    assert!(
        review::review(&conn, &path, &yesterday)
            .unwrap()
            .writes
            .is_empty()
    );
}
