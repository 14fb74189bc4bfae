//! `mcp-otel demo`, the README's first command, as a user runs it.

use serde_json::Value;
use std::process::Command;

#[test]
fn demo_prints_seed_lines_and_every_span_arrives_over_grpc() {
    let out = Command::new(env!("CARGO_BIN_EXE_mcp-otel"))
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "demo failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("every JSON line parses"))
        .collect();
    assert_eq!(lines.len(), 7, "{stdout}");
    for l in &lines {
        for field in [
            "tool_name",
            "user",
            "timestamp",
            "status",
            "duration_ms",
            "error_code",
        ] {
            assert!(l.get(field).is_some(), "{field} missing in {l}");
        }
    }
    let writes: Vec<&Value> = lines
        .iter()
        .filter(|l| l.get("operation_type").is_some())
        .collect();
    let ops: Vec<&str> = writes
        .iter()
        .map(|l| l["operation_type"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["create", "update", "delete", "update"]);
    assert_eq!(lines.iter().filter(|l| l["status"] == "error").count(), 2);
    assert!(
        !stdout.contains("hunter2"),
        "the demo's password must be redacted"
    );
    assert!(
        stdout.contains("Spans received over OTLP/gRPC: 7 of 7"),
        "{stdout}"
    );
    // A gated delete confirmed, one declined, and the review line of each.
    assert!(stdout.contains("delete_task t2: ran"), "{stdout}");
    assert!(stdout.contains("delete_task t1: refused"), "{stdout}");
    assert!(
        stdout.contains("carol delete_task t2 confirmed=yes outcome=accepted source=elicitation"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "carol delete_task t1 confirmed=NO outcome=declined source=elicitation  (declined: never ran)"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("Declined attempts"), "{stdout}");
    assert!(stdout.contains("audit trail intact"), "{stdout}");
}
