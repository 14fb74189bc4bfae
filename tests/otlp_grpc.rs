//! The OTLP/gRPC client of the default target (gRPC to `http://`) against opentelemetry-otlp's
//! tonic exporter, which it replaces there: the same call sent through each to a real tonic
//! receiver on 127.0.0.1:0 arrives as the same request with the same metadata (the
//! `OTEL_EXPORTER_OTLP_HEADERS` headers, no compression by default to a loopback endpoint and
//! gzip when `OTEL_EXPORTER_OTLP_COMPRESSION` asks for it, the user agent, the timeout); a dead
//! endpoint fails both with the same error, counted and not waited for by the caller.
//!
//! One test in this file: it sets process environment variables before anything reads them,
//! and runs its gzip round in a child process of this binary (with the variable set from the
//! start there).

mod support;

use mcp_otel::emit::{
    BatchConfig, EmitConfig, Emitter, OtlpTarget, SpanOptions, SpanTarget, otlp_exporter,
};
use mcp_otel::record::{
    Confirmation, ConfirmationOutcome, ConfirmationSource, OperationType, Status, ToolCall,
    TraceIds, Transport, WriteOp,
};
use serde_json::json;
use std::time::{Duration, Instant};

fn config(endpoint: &str) -> EmitConfig {
    EmitConfig {
        spans: SpanTarget::Otlp {
            endpoint: Some(endpoint.to_owned()),
        },
        batch: Some(BatchConfig {
            scheduled_delay: Duration::from_secs(60),
            ..BatchConfig::default()
        }),
        default_service_name: Some("grpc-test".into()),
        span_options: SpanOptions {
            record_arguments: true,
            record_result: true,
            ..SpanOptions::default()
        },
        ..EmitConfig::default()
    }
}

/// The two exporters for `endpoint`: ours (what `Emitter::new` builds) and opentelemetry-otlp's.
fn both(endpoint: &str) -> [Emitter; 2] {
    let config = config(endpoint);
    let target = OtlpTarget::from_env(None, Some(endpoint)).unwrap();
    [
        Emitter::new(&config).unwrap(),
        Emitter::with_exporter(&config, move || otlp_exporter(&target)).unwrap(),
    ]
}

/// A call with every part a span can carry.
fn full_call() -> ToolCall {
    let mut call = ToolCall::new("update_task", "alice");
    call.ids = TraceIds {
        trace_id: [7; 16],
        span_id: [3; 8],
        parent_span_id: [9; 8],
    };
    call.timestamp = chrono::DateTime::from_timestamp_millis(1_800_000_000_123).unwrap();
    call.status = Status::Error;
    call.error_code = Some("-32603".into());
    call.duration_ms = 12.25;
    call.context = Some(json!({"id": "t1", "labels": ["a", "b"], "n": 1.5}));
    call.result = Some(json!({"isError": true}));
    call.write = Some(
        WriteOp::new(OperationType::Update)
            .resource_id("t1")
            .before(json!({"state": "open"}))
            .after(json!({"state": "done"}))
            .confirmed(Some(true)),
    );
    call.mcp.request_id = Some("7".into());
    call.mcp.transport = Some(Transport::Stdio);
    call.mcp.client_name = Some("cli".into());
    call.read_only_hint = Some(false);
    let mut confirmation = Confirmation::new(
        ConfirmationOutcome::Accepted,
        Some(ConfirmationSource::Elicitation),
    );
    confirmation.wait_ms = Some(3.5);
    call.confirmation = Some(confirmation);
    call
}

/// Set in the child process that runs the gzip round.
const GZIP_ROUND: &str = "MCP_OTEL_TEST_GZIP_ROUND";
const TEST: &str = "our_grpc_client_sends_what_opentelemetry_otlp_sends";

#[test]
fn our_grpc_client_sends_what_opentelemetry_otlp_sends() {
    let gzip_round = std::env::var_os(GZIP_ROUND).is_some();
    round(gzip_round);
    if !gzip_round {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST, "--test-threads", "1"])
            .env(GZIP_ROUND, "1")
            .env("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
            .status()
            .unwrap();
        assert!(status.success(), "the gzip round: {status}");
    }
}

/// Both exporters to one receiver: the same requests and metadata, compressed with gzip only
/// when `gzip` (the variable set, in the child) and not by default to a loopback endpoint.
fn round(gzip: bool) {
    // SAFETY: the only test of this binary; no other thread runs yet.
    unsafe {
        std::env::set_var(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-tenant=acme,x-team=pay%20ments",
        );
        std::env::set_var("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=fixed");
        if !gzip {
            std::env::remove_var("OTEL_EXPORTER_OTLP_COMPRESSION");
        }
        for var in [
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        ] {
            std::env::remove_var(var);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (addr, mut rx) = support::raw_trace_receiver().await;
        let mut got = Vec::new();
        for emitter in both(&format!("http://{addr}")) {
            emitter.emit_redacted(full_call());
            emitter.emit_redacted(ToolCall::new("get_task", "bob"));
            assert!(emitter.flush(Duration::from_secs(10)).await);
            assert_eq!(emitter.stats().exported, 2, "{}", emitter.export_summary());
            got.push(
                tokio::time::timeout(Duration::from_secs(10), rx.recv())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        let (ours, theirs) = (&got[0], &got[1]);
        // The calls were made apart: their ids and times differ, everything else is the same
        // (the resource's attributes come in the order of each resource's hash map).
        let spans = |e: &support::RawExport| {
            let mut request = e.request.clone();
            let resource = request.resource_spans[0].resource.as_mut().unwrap();
            resource.attributes.sort_by(|a, b| a.key.cmp(&b.key));
            for s in &mut request.resource_spans[0].scope_spans[0].spans[1..] {
                s.trace_id.clear();
                s.span_id.clear();
                s.start_time_unix_nano = 0;
                s.end_time_unix_nano = 0;
            }
            request
        };
        assert_eq!(spans(ours), spans(theirs));
        assert_eq!(
            ours.request.resource_spans[0].scope_spans[0].spans[0],
            theirs.request.resource_spans[0].scope_spans[0].spans[0]
        );
        assert_eq!(ours.metadata, theirs.metadata);
        let header = |k: &str| ours.metadata.get(k).map(String::as_str);
        assert_eq!(header("x-tenant"), Some("acme"));
        assert_eq!(header("x-team"), Some("pay ments"));
        assert_eq!(
            header("grpc-encoding"),
            gzip.then_some("gzip"),
            "{:?}",
            ours.metadata
        );

        // Nothing listens: both fail alike, after their retries, and the caller never waits.
        let dead = format!("http://127.0.0.1:{}", support::closed_port());
        let mut errors = Vec::new();
        for emitter in both(&dead) {
            let started = Instant::now();
            for _ in 0..3 {
                emitter.emit_redacted(ToolCall::new("get_task", "bob"));
            }
            assert!(started.elapsed() < Duration::from_millis(100));
            assert!(emitter.flush(Duration::from_secs(20)).await);
            let stats = emitter.stats();
            assert_eq!((stats.exported, stats.failed), (0, 3), "{stats:?}");
            errors.push(emitter.last_export_error().unwrap());
        }
        assert_eq!(errors[0], errors[1]);
        assert!(
            errors[0]
                .starts_with("Operation failed: TonicTracesClient export failed with gRPC code: "),
            "{}",
            errors[0]
        );
    });
}
