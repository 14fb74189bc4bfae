//! Caller-side cost of one instrumented tool call.
//!
//! Hypothesis: the work on the call path (start the guard: ids, clock; set the arguments; finish:
//! redact, push the record into the bounded lock-free queue) costs well under 2 µs for small and
//! medium argument objects, and under 4 µs when the JSON line is also written to a buffered
//! writer. Building the span and its attributes happens on the export worker, off the call path;
//! `span_build` measures that cost separately (it bounds the worker's throughput). Between
//! samples the worker drains the queue outside the timed part, so every call takes the enqueue
//! path (not the cheaper drop path), which the `dropped` check at the end asserts.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use mcp_otel::capture::{Instrumentation, Outcome};
use mcp_otel::emit::{BatchConfig, EmitConfig, Emitter};
use mcp_otel::record::{OperationType, WriteOp};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use serde_json::{Value, json};
use std::hint::black_box;
use std::io::{BufWriter, sink};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        drop(black_box(batch));
        Ok(())
    }
}

fn args(size: &str) -> Value {
    match size {
        "small" => json!({"project_id": "p1"}),
        "medium" => json!({
            "project_id": "p1",
            "filters": {"status": "open", "assignee": "alice", "due_before": "2026-12-01"},
            "limit": 50,
        }),
        _ => json!({
            "project_id": "p1",
            "title": "x".repeat(1024),
            "tags": (0..32).map(|i| format!("tag-{i}")).collect::<Vec<_>>(),
            "filters": {"status": "open", "nested": {"a": [1, 2, 3], "b": {"c": "d"}}},
        }),
    }
}

/// Calls timed between two drains of the queue; well under its capacity.
const CHUNK: u64 = 100_000;

fn config() -> EmitConfig {
    EmitConfig {
        batch: Some(BatchConfig {
            // Each sample's calls fit in the queue; the worker drains it between samples.
            max_queue_size: 262_144,
            max_export_batch_size: 512,
            scheduled_delay: Duration::from_millis(10),
            ..BatchConfig::default()
        }),
        ..EmitConfig::default()
    }
}

fn one_call(inst: &Instrumentation, args: &Value) {
    let mut call = inst.start_call("update_task", "alice");
    call.set_request_id("42");
    call.set_context(args.clone());
    call.set_write(WriteOp::new(OperationType::Update).resource_id("t1"));
    call.finish(Outcome::Success);
}

fn bench(c: &mut Criterion) {
    let spans_only =
        Instrumentation::new(Emitter::with_exporter(&config(), || Ok(Discard)).unwrap());
    // The same pipeline, plus one JSON line per call into a buffered writer.
    let logged = Instrumentation::new(
        Emitter::with_exporter(&config(), || Ok(Discard))
            .unwrap()
            .with_log(Box::new(BufWriter::with_capacity(1 << 16, sink()))),
    );
    let mut group = c.benchmark_group("instrumented_call");
    for (name, inst) in [("call_path", &spans_only), ("call_path+json_line", &logged)] {
        for size in ["small", "medium", "large"] {
            let a = args(size);
            group.bench_with_input(BenchmarkId::new(name, size), &a, |b, a| {
                b.iter_custom(|iters| {
                    let mut elapsed = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let chunk = left.min(CHUNK);
                        let start = Instant::now();
                        for _ in 0..chunk {
                            one_call(inst, a);
                        }
                        elapsed += start.elapsed();
                        left -= chunk;
                        // Let the worker catch up outside the timed part, so every call
                        // measures the enqueue path, not the drop path.
                        inst.emitter().flush_blocking(Duration::from_secs(60));
                    }
                    elapsed
                })
            });
        }
    }
    for size in ["small", "medium", "large"] {
        let mut call = mcp_otel::record::ToolCall::new("update_task", "alice");
        call.context = Some(args(size));
        call.write = Some(WriteOp::new(OperationType::Update).resource_id("t1"));
        let opts = mcp_otel::emit::SpanOptions::default();
        group.bench_with_input(
            BenchmarkId::new("span_build(worker)", size),
            &call,
            |b, c| {
                b.iter_batched(
                    || c.clone(),
                    |c| mcp_otel::emit::span::into_span(c, &opts),
                    criterion::BatchSize::SmallInput,
                )
            },
        );
    }
    group.finish();
    for (name, inst) in [("call_path", &spans_only), ("call_path+json_line", &logged)] {
        let stats = inst.stats();
        assert_eq!(
            stats.dropped, 0,
            "{name}: the queue filled, the bench measured drops"
        );
        eprintln!("{name}: {stats:?}");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
