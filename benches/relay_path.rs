//! The stdio proxy's relay-path work for one `tools/call`, without the pipes.
//!
//! Hypothesis: deciding whether a client line is a `tools/call` and splicing a `traceparent`
//! into it costs well under a microsecond for a small call, so the proxy's added latency over a
//! plain byte relay (benches/proxy_latency.rs) is not spent here.

use criterion::{Criterion, criterion_group, criterion_main};
use mcp_otel::capture::proxy::inject::plan_call;
use std::hint::black_box;

const ECHO: &[u8] = br#"{"jsonrpc":"2.0","id":12345,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello"}}}"#;
const ECHO_WITH_PARENT: &[u8] = br#"{"jsonrpc":"2.0","id":12345,"method":"tools/call","params":{"_meta":{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},"name":"echo","arguments":{"message":"hello"}}}"#;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("relay_path");
    group.bench_function("plan_and_splice", |b| {
        b.iter(|| {
            let plan = plan_call(black_box(ECHO), true).unwrap();
            black_box(plan.splice.as_ref().unwrap().apply(ECHO));
        })
    });
    group.bench_function("plan_only", |b| {
        b.iter(|| black_box(plan_call(black_box(ECHO), false).unwrap()))
    });
    group.bench_function("plan_client_parent", |b| {
        b.iter(|| black_box(plan_call(black_box(ECHO_WITH_PARENT), true).unwrap()))
    });
    group.bench_function("memmem_only", |b| {
        b.iter(|| black_box(memchr::memmem::find(black_box(ECHO), b"tools/call")))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
