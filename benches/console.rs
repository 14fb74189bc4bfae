//! The console's data paths: the overview over a large audit trail, and the live tap on
//! ingestion.
//!
//! Hypotheses (2 shared cores, SSD):
//! - `overview`: the figures come from the audit writer's rollup (five-minute and hourly cells
//!   per tool, hourly per user), with rows read only at the range's ragged edges, so every
//!   range answers in a few ms to tens of ms, however many calls it holds: over 1,000,000 calls
//!   spread across 7 days, the last hour, day and week all stay far under 300 ms.
//! - `pages`: the review of one day reads that day's writes over the partial writes index
//!   (~57,000 here: the figure to watch), a call's detail is one row by id plus its trace's
//!   calls within an hour of it.
//! - `publish`: handing a counted batch to the console moves it into an `Arc` and sends that on
//!   a broadcast channel: well under a microsecond per batch with or without a reader, nothing
//!   per call.
//!
//! The store is built once in `target/console-bench/` (rebuilt when older than 12 hours);
//! `MCP_OTEL_BENCH_ROWS` overrides its size (default 1,000,000). Run:
//! `cargo bench --bench console`.

use chrono::{Duration as Age, Utc};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use mcp_otel::audit::{AuditOptions, AuditWriter, Durability, store};
use mcp_otel::audit::{review, verify};
use mcp_otel::collect::console::audit::{self, SearchQuery};
use mcp_otel::collect::console::call::{self, CallQuery};
use mcp_otel::collect::console::feed::CallFeed;
use mcp_otel::collect::console::overview::{self, Range};
use mcp_otel::collect::console::review::ReviewQuery;
use mcp_otel::record::{OperationType, Status, ToolCall, WriteOp};
use serde_json::json;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

const WEEK_MS: u64 = 7 * 24 * 3600 * 1000;

fn call(i: u64, rows: u64) -> ToolCall {
    let mut c = ToolCall::new(
        [
            "list_tasks",
            "update_task",
            "get_task",
            "delete_task",
            "search",
        ][(i % 5) as usize],
        format!("user-{}", i % 200),
    );
    // Oldest first, evenly over the last 7 days.
    c.timestamp = Utc::now() - Age::milliseconds((WEEK_MS - i * WEEK_MS / rows) as i64);
    c.duration_ms = ((i * 7919) % 2000) as f64 / 10.0;
    c.context = Some(json!({"project_id": format!("p{}", i % 100), "limit": 50}));
    if i.is_multiple_of(17) {
        c.status = Status::Error;
        c.error_code = Some(["429", "401", "403", "500"][(i / 17 % 4) as usize].to_owned());
    }
    if i % 5 == 1 || i % 5 == 3 {
        c.write = Some(
            WriteOp::new(if i % 5 == 1 {
                OperationType::Update
            } else {
                OperationType::Delete
            })
            .resource_id(format!("task-{i}"))
            .confirmed(Some(!i.is_multiple_of(3))),
        );
    }
    c
}

fn store_path(rows: u64) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("console-{rows}.db"));
    let ready = dir.join(format!("console-{rows}.ready"));
    let fresh = std::fs::metadata(&ready)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(12 * 3600));
    if !fresh {
        for ext in ["db", "db-wal", "db-shm", "key", "ready"] {
            let _ = std::fs::remove_file(dir.join(format!("console-{rows}.{ext}")));
        }
        fill(&path, rows);
        std::fs::write(&ready, b"").unwrap();
    }
    path
}

fn fill(path: &Path, rows: u64) {
    let w = AuditWriter::open(
        path,
        AuditOptions {
            durability: Durability::Normal,
            ..AuditOptions::default()
        },
    )
    .unwrap();
    let started = std::time::Instant::now();
    for chunk in (0..rows).collect::<Vec<_>>().chunks(1000) {
        w.append_blocking(chunk.iter().map(|&i| call(i, rows)).collect())
            .unwrap();
    }
    eprintln!("built {rows} rows in {:?}", started.elapsed());
}

fn overview_bench(c: &mut Criterion) {
    let rows: u64 = std::env::var("MCP_OTEL_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let path = store_path(rows);
    let conn = store::open_ro(&path).unwrap();
    let mut g = c.benchmark_group("console_overview");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    for span in ["1h", "24h", "7d"] {
        let range = Range::last(span, Utc::now()).unwrap();
        let o = overview::from_store(&conn, range).unwrap();
        eprintln!("{span}: {} calls in range", o.totals.calls);
        g.bench_with_input(
            BenchmarkId::new(format!("{rows}_rows"), span),
            &range,
            |b, r| b.iter(|| black_box(overview::from_store(&conn, *r).unwrap())),
        );
    }
    g.finish();

    // The other pages' data over the same store.
    let mut g = c.benchmark_group("console_pages");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    let yesterday = (Utc::now() - Age::days(1)).format("%Y-%m-%d").to_string();
    let filter = ReviewQuery {
        day: Some(yesterday),
        ..ReviewQuery::default()
    }
    .filter(Utc::now())
    .unwrap();
    let started = std::time::Instant::now();
    let r = review::review(&conn, &path, &filter).unwrap();
    let read = started.elapsed();
    let doc = r.to_json().to_string();
    eprintln!(
        "review of yesterday: {} writes; once: read {read:?}, then the JSON text {:?} ({} bytes)",
        r.writes.len(),
        started.elapsed() - read,
        doc.len()
    );
    // What the page gets: at most PAGE_WRITES listed, every write counted.
    g.bench_function(format!("{rows}_rows/review_yesterday_page"), |b| {
        b.iter(|| {
            black_box(
                review::review(&conn, &path, &filter)
                    .unwrap()
                    .json_listing(mcp_otel::collect::console::review::PAGE_WRITES),
            )
        })
    });
    let q = CallQuery {
        id: Some((rows / 2) as i64),
        ..CallQuery::default()
    };
    assert!(call::detail(&conn, &q).unwrap().is_some());
    g.bench_function(format!("{rows}_rows/call_detail"), |b| {
        b.iter(|| black_box(call::detail(&conn, &q).unwrap()))
    });
    // The audit page: a search whose words 1 call in 100 holds (10,000 here), the newest 100
    // listed; and, once, the verify run whose result the page shows (it runs in the
    // background, so it is not the page's wait).
    let words = SearchQuery {
        text: Some("p42".into()),
    };
    let found = audit::search(&conn, &path, &words).unwrap();
    eprintln!(
        "search p42: {} listed, more: {}",
        found["results"].as_array().unwrap().len(),
        found["more"]
    );
    g.bench_function(format!("{rows}_rows/audit_search"), |b| {
        b.iter(|| black_box(audit::search(&conn, &path, &words).unwrap()))
    });
    let started = std::time::Instant::now();
    let report = verify::verify_path(&path, &verify::VerifyOptions::default()).unwrap();
    eprintln!(
        "verify of {} rows (the audit page's background run): {:?}, intact: {}",
        report.rows,
        started.elapsed(),
        report.is_intact()
    );
    g.finish();
}

fn publish_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("console_publish");
    let batch: Vec<ToolCall> = (0..100).map(|i| call(i, 100)).collect();
    g.bench_function("drop_batch_of_100_baseline", |b| {
        b.iter_batched(|| batch.clone(), drop, criterion::BatchSize::SmallInput)
    });
    // (name, whether the feed keeps the recent window, whether a reader is subscribed)
    for (name, recent_window, idle_reader) in [
        ("publish_100_no_reader", false, false),
        ("publish_100_one_idle_reader", false, true),
        ("publish_100_recent_window", true, false),
    ] {
        let feed = CallFeed::new(recent_window);
        let _reader = idle_reader.then(|| feed.subscribe());
        g.bench_function(name, |b| {
            b.iter_batched(
                || batch.clone(),
                |v| feed.publish(v),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, publish_bench, overview_bench);
criterion_main!(benches);
