//! A store written before chain v2 (the confirmation columns): opened by this build it gains
//! the columns, keeps its v1 rows verifying as v1, takes v2 rows after them, and a v1 row that
//! was given a confirmation afterwards is named by verify.

use super::chain::{self, GENESIS_HASH, RowFields, RowHasher};
use super::review::{ReviewFilter, review};
use super::store::{self, COLUMNS};
use super::verify::{VerifyOptions, verify_path};
use super::{AuditOptions, AuditWriter};
use crate::record::{
    Confirmation, ConfirmationOutcome, ConfirmationSource, OperationType, ToolCall, WriteOp,
};
use rusqlite::Connection;
use std::path::Path;

/// The v1 schema exactly as v1 builds created it: every column up to `recorded_at`, then
/// the links; `chain_version` 1.
fn write_v1_store(path: &Path) {
    let v1: Vec<&store::Column> = COLUMNS
        .iter()
        .filter(|c| !c.name.starts_with("confirmation_") && c.name != "row_version")
        .collect();
    let cols: Vec<String> = v1.iter().map(|c| format!("{} {}", c.name, c.sql)).collect();
    let conn = Connection::open(path).unwrap();
    let mut ddl = format!("CREATE TABLE mcp_logs ({});", cols.join(", "));
    ddl.push_str(store::SCHEMA);
    for (_, t) in store::TRIGGERS {
        ddl.push_str(t);
        ddl.push(';');
    }
    ddl.push_str(
        "INSERT INTO audit_meta VALUES ('chain_version', '1'), ('chain_id', '00'), \
         ('created_at', '2026-01-01T00:00:00.000Z');",
    );
    conn.execute_batch(&ddl).unwrap();
    let mut prev = GENESIS_HASH;
    for id in 1..=2 {
        let row = RowFields {
            id,
            timestamp: "2026-01-01T00:00:00.000Z",
            tool_name: "delete_task",
            user: "alice",
            status: "success",
            duration_ms: 1.0,
            operation_type: Some("delete"),
            user_confirmation: Some(true),
            trace_id: "0af7651916cd43dd8448eb211c80319c",
            span_id: if id == 1 {
                "b7ad6b7169203331"
            } else {
                "b7ad6b7169203332"
            },
            recorded_at: "2026-01-01T00:00:01.000Z",
            row_version: 1,
            ..RowFields::default()
        };
        let hash = RowHasher::new().hash(&row, &prev);
        // The v1 columns are the first values of a row, then the links.
        let names: Vec<&str> = v1.iter().map(|c| c.name).collect();
        let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
        let (prev_hex, hash_hex) = (chain::to_hex(&prev), chain::to_hex(&hash));
        let links: [&dyn rusqlite::ToSql; 2] = [&prev_hex, &hash_hex];
        let values = row.values();
        conn.execute(
            &format!(
                "INSERT INTO mcp_logs ({}) VALUES ({})",
                names.join(", "),
                marks.join(", ")
            ),
            rusqlite::params_from_iter(values[..names.len() - 2].iter().chain(&links)),
        )
        .unwrap();
        prev = hash;
    }
}

fn declined_delete() -> ToolCall {
    let mut call = ToolCall::new("delete_entities", "bob");
    call.write = Some(WriteOp {
        user_confirmation: Some(false),
        resource_id: Some("Alice".into()),
        ..WriteOp::new(OperationType::Delete)
    });
    call.status = crate::record::Status::Error;
    call.error_code = Some("tool_error".into());
    call.confirmation = Some(Confirmation {
        outcome: ConfirmationOutcome::Declined,
        source: Some(ConfirmationSource::Elicitation),
        arguments_digest: Some(crate::record::arguments_digest(None)),
        wait_ms: Some(420.0),
    });
    call
}

#[test]
fn a_v1_store_migrates_and_still_verifies() {
    let (_dir, path) = crate::testing::temp_path("old.db");
    write_v1_store(&path);
    // Read-only before any migration: verify and review work on the old columns.
    assert!(
        verify_path(&path, &VerifyOptions::default())
            .unwrap()
            .is_intact()
    );
    {
        let writer = AuditWriter::open(&path, AuditOptions::default()).unwrap();
        writer.append_blocking(vec![declined_delete()]).unwrap();
    }
    let report = verify_path(&path, &VerifyOptions::default()).unwrap();
    assert!(report.is_intact(), "{}", report.summary());
    let conn = store::open_ro(&path).unwrap();
    let versions: Vec<Option<i64>> = conn
        .prepare("SELECT row_version FROM mcp_logs ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(versions, [None, None, Some(2)], "rows keep their version");
    let r = review(
        &conn,
        &path,
        &ReviewFilter {
            since: chrono::DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
                .unwrap()
                .into(),
            until: chrono::Utc::now() + chrono::Duration::hours(1),
            user: None,
            tool: None,
        },
    )
    .unwrap();
    let refused: Vec<&str> = r.refused().map(|w| w.tool_name.as_str()).collect();
    assert_eq!(refused, ["delete_entities"]);
    assert_eq!(
        r.unconfirmed(),
        0,
        "the old rows were confirmed, the refused one never ran"
    );
    drop(conn);

    // A confirmation slipped into a v1 row (the triggers dropped first) is named.
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP TRIGGER mcp_logs_no_update; \
         UPDATE mcp_logs SET confirmation_outcome = 'accepted' WHERE id = 1;",
    )
    .unwrap();
    drop(conn);
    let report = verify_path(&path, &VerifyOptions::default()).unwrap();
    assert!(!report.is_intact());
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.row == Some(1) && p.detail.contains("carries confirmation")),
        "{:?}",
        report.problems
    );
}

/// Every way a confirmation ends, through the audit trail into the review.
#[test]
fn the_review_shows_every_confirmation_case() {
    use crate::record::Status;
    let (_dir, path) = crate::testing::temp_path("a.db");
    let call = |tool: &str, outcome: Option<ConfirmationOutcome>, ran: bool, flag: Option<bool>| {
        let mut c = ToolCall::new(tool, "alice");
        c.write = Some(WriteOp {
            resource_id: Some(tool.into()),
            user_confirmation: outcome.and_then(|o| o.user_confirmation()).or(flag),
            ..WriteOp::new(OperationType::Delete)
        });
        if !ran {
            c.status = Status::Error;
            c.error_code = Some("tool_error".into());
        }
        c.confirmation = match (outcome, flag) {
            (Some(o), _) => Some(Confirmation::new(
                o,
                match o {
                    ConfirmationOutcome::UnsupportedClient | ConfirmationOutcome::NotRequired => {
                        None
                    }
                    _ => Some(ConfirmationSource::Elicitation),
                },
            )),
            (None, Some(f)) => Some(Confirmation::new(
                if f {
                    ConfirmationOutcome::Accepted
                } else {
                    ConfirmationOutcome::Declined
                },
                Some(ConfirmationSource::ClientFlag),
            )),
            (None, None) => None,
        };
        c
    };
    use ConfirmationOutcome as O;
    let calls = vec![
        call("accepted", Some(O::Accepted), true, None),
        call("declined", Some(O::Declined), false, None),
        call("cancelled", Some(O::Cancelled), false, None),
        call("timeout", Some(O::Timeout), false, None),
        call("denied", Some(O::UnsupportedClient), false, None),
        call("allowed", Some(O::UnsupportedClient), true, None),
        call("ungated", Some(O::NotRequired), true, None),
        call("flagged", None, true, Some(true)),
    ];
    {
        let writer = AuditWriter::open(&path, AuditOptions::default()).unwrap();
        writer.append_blocking(calls).unwrap();
    }
    let conn = store::open_ro(&path).unwrap();
    let r = review(
        &conn,
        &path,
        &ReviewFilter {
            since: chrono::Utc::now() - chrono::Duration::hours(1),
            until: chrono::Utc::now() + chrono::Duration::hours(1),
            user: None,
            tool: None,
        },
    )
    .unwrap();
    let mut refused: Vec<&str> = r.refused().map(|w| w.tool_name.as_str()).collect();
    refused.sort();
    assert_eq!(refused, ["cancelled", "declined", "denied", "timeout"]);
    let mut unconfirmed: Vec<&str> = r
        .writes
        .iter()
        .filter(|w| w.is_unconfirmed())
        .map(|w| w.tool_name.as_str())
        .collect();
    unconfirmed.sort();
    assert_eq!(
        unconfirmed,
        ["allowed", "ungated"],
        "ran without a clear yes"
    );
    let mut text = Vec::new();
    r.render(&mut text, false).unwrap();
    let text = String::from_utf8(text).unwrap();
    for needle in [
        "yes (accepted, elicitation)",
        "NO (declined, elicitation)",
        "NO (cancelled, elicitation)",
        "NO (timeout, elicitation)",
        "NO (unsupported_client)",
        "unknown (not_required)",
        "yes (accepted, client_flag)",
        "4 refused at confirmation",
    ] {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }
}
