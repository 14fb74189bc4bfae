//! kill -9 during a stream of appends: every acknowledged call is in the store afterwards and
//! the chain verifies. The child is `mcp-otel audit load --print-acks`, which prints a call's
//! span id only after `append` returned for it.

mod support;

use mcp_otel::audit::verify::{VerifyOptions, verify_path};
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the child until it has acknowledged at least `min_acks` calls (or 20 s passed), kills
/// it with SIGKILL, and returns every span id it acknowledged.
fn run_and_kill(db: &Path, min_acks: usize) -> HashSet<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mcp-otel"))
        .args(["audit", "--db"])
        .arg(db)
        .args([
            "load",
            "--rows",
            "0",
            "--writers",
            "4",
            "--batch",
            "25",
            "--print-acks",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // A watchdog, so that a child that stops acknowledging fails the test instead of hanging it.
    let pid = child.id().to_string();
    let (done, watchdog) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if watchdog.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acks = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while acks.len() < min_acks && Instant::now() < deadline {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(span) = line.strip_prefix("ack ") {
                    acks.insert(span.to_owned());
                }
            }
            _ => break,
        }
    }
    let _ = child.kill(); // SIGKILL: no destructor, no final checkpoint, no flush.
    child.wait().unwrap();
    let _ = done.send(());
    // Acks written to the pipe before the kill still count.
    for line in lines.map_while(Result::ok) {
        if let Some(span) = line.strip_prefix("ack ") {
            acks.insert(span.to_owned());
        }
    }
    acks
}

#[test]
fn a_kill_9_loses_no_acknowledged_call_and_leaves_a_chain_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let mut acked = HashSet::new();
    // Kill at different moments: after a few acks, after more.
    for min_acks in [100, 3000, 20, 1000] {
        let acks = run_and_kill(&db, min_acks);
        assert!(
            acks.len() >= min_acks.min(100),
            "child acknowledged only {}",
            acks.len()
        );
        acked.extend(acks);

        let report = verify_path(&db, &VerifyOptions::default()).unwrap();
        assert!(report.is_intact(), "{:?}", report.problems);
        let stored: HashSet<String> = support::audit::column(&db, "SELECT span_id FROM mcp_logs")
            .into_iter()
            .collect();
        let lost: Vec<_> = acked.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "{} acknowledged calls lost: {lost:?}",
            lost.len()
        );
        assert!(report.rows as usize >= acked.len());
    }
}
