//! The audit trail's hot paths: durable group-commit appends, verify, and the daily review.
//!
//! Hypotheses (2 shared cores, SSD):
//! - `append`: with concurrent writers (exports of 100 calls each), group commit makes the
//!   fsync per transaction negligible; SHA-256, the inserts and the full-text index bound
//!   throughput at well over 50,000 durable calls/s.
//! - `verify`: one sequential scan with no allocation per row, SHA-256 at hardware speed:
//!   over 1,000,000 rows/s.
//! - `review`: the partial index on writes makes "all writes of the last 24 hours" over a
//!   store of 1,000,000 calls (half of them writes, all inside the window) take under 1 s.
//!
//! The large store is built once and kept in `target/audit-bench/` (rebuilt when
//! older than 12 hours);
//! `MCP_OTEL_BENCH_ROWS` overrides its size (default 1,000,000). Run:
//! `cargo bench --bench audit`.

use chrono::{Duration as Age, Utc};
use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use mcp_otel::audit::review::{self, ReviewFilter};
use mcp_otel::audit::store;
use mcp_otel::audit::verify::{VerifyOptions, verify_path};
use mcp_otel::audit::{AuditOptions, AuditWriter, Durability};
use mcp_otel::record::{OperationType, ToolCall, WriteOp};
use serde_json::json;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn call(i: u64) -> ToolCall {
    let mut c = ToolCall::new(
        ["list_tasks", "update_task", "get_task", "delete_task"][(i % 4) as usize],
        format!("user-{}", i % 50),
    );
    c.timestamp = Utc::now() - Age::milliseconds((i % 3_600_000) as i64);
    c.duration_ms = (i % 1000) as f64 / 10.0;
    c.context = Some(json!({
        "project_id": format!("p{}", i % 100),
        "filters": {"status": "open", "assignee": "alice"},
        "limit": 50,
    }));
    if i % 2 == 1 {
        c.write = Some(
            WriteOp::new(if i % 4 == 1 {
                OperationType::Update
            } else {
                OperationType::Delete
            })
            .resource_id(format!("task-{i}"))
            .before(json!({"title": "draft", "done": false}))
            .after(json!({"title": "final", "done": true}))
            .confirmed(Some(!i.is_multiple_of(3))),
        );
    }
    c
}

fn fill(path: &Path, rows: u64) {
    let writer = AuditWriter::open(
        path,
        AuditOptions {
            durability: Durability::Normal,
            ..AuditOptions::default()
        },
    )
    .unwrap();
    let mut i = 0;
    while i < rows {
        let n = (rows - i).min(10_000);
        writer
            .append_blocking((i..i + n).map(call).collect())
            .unwrap();
        i += n;
    }
}

/// A store of `rows` calls, built once per size and reused across runs.
fn store_of(rows: u64) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/audit-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("audit-{rows}.db"));
    let ready = dir.join(format!("audit-{rows}.ready"));
    // Call timestamps are relative to the build time; past 12 h they start to leave the
    // review's 24-hour window, so the store is rebuilt.
    let fresh = std::fs::metadata(&ready)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(12 * 3600));
    if !fresh {
        for ext in ["db", "db-wal", "db-shm", "key"] {
            let _ = std::fs::remove_file(path.with_extension(ext));
        }
        let started = Instant::now();
        fill(&path, rows);
        eprintln!("built {} in {:.1?}", path.display(), started.elapsed());
        std::fs::write(&ready, b"").unwrap();
    }
    path
}

/// The store sizes: 100,000 and 1,000,000 rows when benchmarking, small ones when
/// `cargo test --all-targets` runs each benchmark once as a test (without `--bench`).
fn sizes() -> [u64; 2] {
    if !std::env::args().any(|a| a == "--bench") {
        return [1_000, 5_000];
    }
    let large = std::env::var("MCP_OTEL_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    [100_000, large]
}

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let writer = AuditWriter::open(dir.path().join("append.db"), AuditOptions::default()).unwrap();
    let mut group = c.benchmark_group("audit_append_durable");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    let batch = 100u64;
    // Sustained load: `w` exporters each append `iters` exports of `batch` calls back to back,
    // as concurrent OTLP exports do; the time is until the last one is committed.
    for writers in [1u64, 8, 32] {
        group.throughput(Throughput::Elements(writers * batch));
        group.bench_with_input(BenchmarkId::new("writers", writers), &writers, |b, &w| {
            let mut next = 0u64;
            b.iter_custom(|iters| {
                let exports: Vec<Vec<Vec<ToolCall>>> = (0..w)
                    .map(|_| {
                        (0..iters)
                            .map(|_| {
                                let calls = (next..next + batch).map(call).collect();
                                next += batch;
                                calls
                            })
                            .collect()
                    })
                    .collect();
                let started = Instant::now();
                std::thread::scope(|s| {
                    for mine in exports {
                        let writer = writer.clone();
                        s.spawn(move || {
                            for calls in mine {
                                writer.append_blocking(calls).unwrap();
                            }
                        });
                    }
                });
                started.elapsed()
            });
        });
    }
    group.finish();
}

/// A group of 10 samples over 10 s: one iteration reads a whole store.
fn slow_group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group
}

fn verify(c: &mut Criterion) {
    let mut group = slow_group(c, "audit_verify");
    for rows in sizes() {
        let path = store_of(rows);
        group.throughput(Throughput::Elements(rows));
        group.bench_with_input(BenchmarkId::new("rows", rows), &path, |b, path| {
            b.iter(|| {
                let report = verify_path(path, &VerifyOptions::default()).unwrap();
                assert!(report.is_intact(), "{:?}", report.problems);
                black_box(report)
            })
        });
    }
    group.finish();
}

fn daily_review(c: &mut Criterion) {
    let mut group = slow_group(c, "audit_review_24h");
    for rows in sizes() {
        let path = store_of(rows);
        let conn = store::open_ro(&path).unwrap();
        group.throughput(Throughput::Elements(rows));
        group.bench_with_input(BenchmarkId::new("rows", rows), &conn, |b, conn| {
            b.iter(|| {
                let filter = ReviewFilter {
                    since: Utc::now() - Age::hours(24),
                    until: Utc::now(),
                    user: None,
                    tool: None,
                };
                let r = review::review(conn, &path, &filter).unwrap();
                assert!(r.writes.len() as u64 >= rows / 2 - 1);
                // The JSON document, as `audit review --json` prints it.
                r.write_json(&mut std::io::sink()).unwrap();
                black_box(r.writes.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, append, verify, daily_review);
criterion_main!(benches);
