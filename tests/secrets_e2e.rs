//! No planted secret in any output, end to end: every kind the redactor covers is planted at
//! several depths in arguments, results (JSON inside `content[].text` too), before/after
//! states, the user name and the resource id of calls made through the library's emitter
//! (with and without `record_result`), exporting over loopback gRPC to a real
//! `mcp-otel collect --audit FILE --forward …` process; plus a foreign span carrying the same
//! secrets sent straight over OTLP by a plain gRPC client. None of them may appear in the JSON
//! log lines, the spans as collect forwards them to the next hop, any column of the audit rows
//! (read from the SQLite file) or `/metrics`.

mod support;

use mcp_otel::emit::{EmitConfig, Emitter, LogTarget, SpanOptions, SpanTarget};
use mcp_otel::record::{OperationType, ToolCall, WriteOp};
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::{CollectProcess, raw_trace_receiver, string_kv};

/// (where it is planted as text, the part that must never come out). Each secret is unique so
/// that a hit names the rule that missed it.
const TEXT_SECRETS: &[(&str, &str)] = &[
    (
        "Authorization: Basic YWxpY2U6QkFTSUNwdzE=",
        "YWxpY2U6QkFTSUNwdzE",
    ),
    ("Bearer opaqueBEARERtok3n9x8y7", "opaqueBEARERtok3n9x8y7"),
    (
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJKV1RzdWIifQ.c2lnSldUc2lnbmF0dXJl",
        "eyJzdWIiOiJKV1RzdWIifQ",
    ),
    (
        "https://admin:URLpassw0rdQ@db.example.com/x",
        "URLpassw0rdQ",
    ),
    (
        "postgres://app:DSNpassw0rdR@db.internal:5432/prod",
        "DSNpassw0rdR",
    ),
    (
        "host=db user=app password=LIBPQpassS dbname=prod",
        "LIBPQpassS",
    ),
    (
        "https://api.example.com/v1/items?api_key=QUERYkey123T&page=2",
        "QUERYkey123T",
    ),
    (
        "sk_live_51HrealLIVEstripeKEY0001",
        "51HrealLIVEstripeKEY0001",
    ),
    (
        "AIzaSyGOOGLEkey0123456789abcdefghijklm",
        "SyGOOGLEkey0123456789",
    ),
    (
        "sk-proj-OPENAIproj0123456789abcdefghijklmnopqrst",
        "OPENAIproj0123456789",
    ),
    (
        "sk-ant-api03-ANTHROPICkey0123456789abcdefgh",
        "ANTHROPICkey0123456789",
    ),
    (
        "ghp_GITHUBclassic0123456789abcdefghijklmn",
        "GITHUBclassic0123456789",
    ),
    (
        "github_pat_11GITHUBFINE0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRS",
        "GITHUBFINE0123456789",
    ),
    ("glpat-GITLABtoken012345678", "GITLABtoken012345678"),
    (
        "npm_NPMtoken0123456789abcdefghijklmnopqr",
        "NPMtoken0123456789abc",
    ),
    (
        "hf_HUGGINGFACEtoken0123456789abcdefghij",
        "HUGGINGFACEtoken0123",
    ),
    (
        "SG.SENDGRIDid0123456789ab.SENDGRIDsecret0123456789abcdefghijklmnopqrstu",
        "SENDGRIDsecret0123456789",
    ),
    ("AKIAAWSKEYID01234567", "AWSKEYID01234567"),
    (
        "xoxb-123456789012-1234567890123-SLACKbotTOKEN0123456789ab",
        "SLACKbotTOKEN0123456789ab",
    ),
    (
        "AGE-SECRET-KEY-1AGESECRETQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ",
        "1AGESECRETQQQQQQQQQQ",
    ),
    (
        "-----BEGIN PRIVATE KEY-----\nMIIEvQPEMprivateKEYbody0123456789\n-----END PRIVATE KEY-----",
        "MIIEvQPEMprivateKEYbody",
    ),
    ("card 4111 1111 1111 1111 on file", "4111 1111 1111 1111"),
    ("card 5500005555555559 on file", "5500005555555559"),
];

/// (key, value): secret by the key's name, whatever the value looks like.
const KEYED_SECRETS: &[(&str, &str)] = &[
    ("password", "KEYpasswordVAL1"),
    ("db_password", "KEYdbPasswordVAL2"),
    ("db_pass", "KEYdbPassVAL3"),
    ("pwd", "KEYpwdVAL4"),
    ("AdminPwd", "KEYadminPwdVAL5"),
    ("auth", "KEYauthVAL6"),
    ("client_secret", "KEYclientSecretVAL7"),
    ("x-api-key", "KEYxApiKeyVAL8"),
    ("aws_access_key_id", "KEYawsAccessVAL9"),
    ("session_id", "KEYsessionIdVAL10"),
    ("connection_string", "KEYconnStringVAL11"),
    ("passphrase", "KEYpassphraseVAL12"),
    ("private_key", "KEYprivateKeyVAL13"),
    ("cookie", "KEYcookieVAL14"),
    ("refresh_token", "KEYrefreshTokenVAL15"),
    ("dsn", "KEYdsnVAL16"),
    ("cvv", "KEYcvvVAL17"),
];

/// Every needle that must not come out.
fn needles() -> Vec<&'static str> {
    TEXT_SECRETS
        .iter()
        .map(|(_, s)| *s)
        .chain(KEYED_SECRETS.iter().map(|(_, v)| *v))
        .collect()
}

/// An object with every secret: keyed ones as members, text ones as values of plain keys.
fn planted() -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in KEYED_SECRETS {
        m.insert((*k).to_owned(), json!(v));
    }
    for (i, (text, _)) in TEXT_SECRETS.iter().enumerate() {
        m.insert(format!("note_{i}"), json!(text));
    }
    Value::Object(m)
}

/// `planted()` at depth 0, 1 and 3, in an array, and as JSON text inside a string.
fn deep() -> Value {
    json!({
        "project_id": "apollo",
        "top": planted(),
        "nested": {"a": {"b": {"c": planted()}}},
        "list": [1, "two", planted()],
        "as_text": planted().to_string(),
    })
}

/// A tool result the way MCP servers return one: the JSON in `content[].text`, plus
/// `structuredContent`.
fn result() -> Value {
    json!({
        "content": [
            {"type": "text", "text": planted().to_string()},
            {"type": "text", "text": format!("connected with {}", TEXT_SECRETS[4].0)},
        ],
        "structuredContent": deep(),
        "isError": false,
    })
}

fn call(tool: &str) -> ToolCall {
    let mut c = ToolCall::new(tool, "ghp_GITHUBclassic0123456789abcdefghijklmn");
    c.context = Some(deep());
    c.result = Some(result());
    c.write = Some(
        WriteOp::new(OperationType::Update)
            .resource_id("https://admin:URLpassw0rdQ@db.example.com/x")
            .before(deep())
            .after(json!({"config": deep(), "password": "KEYpasswordVAL1"}))
            .confirmed(Some(true)),
    );
    c.error_code = None;
    c
}

/// An emitter exporting to `grpc`, JSON lines to `log`, with the given result recording.
fn emitter(grpc: std::net::SocketAddr, log: &std::path::Path, record_result: bool) -> Emitter {
    Emitter::new(&EmitConfig {
        spans: SpanTarget::Otlp {
            endpoint: Some(format!("http://{grpc}")),
        },
        log: LogTarget::File(log.to_owned()),
        span_options: SpanOptions {
            record_result,
            record_arguments: true,
            ..SpanOptions::default()
        },
        batch: Some(mcp_otel::emit::BatchConfig {
            scheduled_delay: Duration::from_millis(20),
            ..Default::default()
        }),
        ..EmitConfig::default()
    })
    .unwrap()
}

/// The span another instrumentation sends, with the secrets in the official attributes.
fn foreign_span() -> Span {
    let s = |k: &str, v: String| string_kv(k, &v);
    let mut span = Span {
        name: "tools/call update_config".into(),
        kind: 2,
        trace_id: vec![7; 16],
        span_id: vec![9; 8],
        start_time_unix_nano: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
        attributes: vec![
            s("mcp.method.name", "tools/call".into()),
            s("gen_ai.operation.name", "execute_tool".into()),
            s("gen_ai.tool.name", "update_config".into()),
            s("enduser.id", "sk_live_51HrealLIVEstripeKEY0001".to_owned()),
            s("gen_ai.tool.call.arguments", deep().to_string()),
            s("gen_ai.tool.call.result", result().to_string()),
            s("db.connection_string", TEXT_SECRETS[4].0.to_owned()),
            s(
                "http.request.header.authorization",
                TEXT_SECRETS[1].0.to_owned(),
            ),
            s("url.full", TEXT_SECRETS[6].0.to_owned()),
        ],
        ..Default::default()
    };
    span.end_time_unix_nano = span.start_time_unix_nano + 5_000_000;
    span
}

/// Every needle found in `text`, each with the text around its first occurrence.
fn leaks(text: &str) -> Vec<String> {
    needles()
        .into_iter()
        .filter_map(|n| {
            let at = text.find(n)?;
            let from = (0..=at.saturating_sub(80))
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            let to = ((at + n.len() + 40).min(text.len())..=text.len())
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(text.len());
            Some(format!("{n} in …{}…", &text[from..to]))
        })
        .collect()
}

/// Every string of an OTLP value tree, as JSON text (what a next hop would show).
fn all_text(
    req: &opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
) -> String {
    serde_json::to_string(req).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_planted_secret_reaches_any_output() {
    let dir = support::tempdir();
    let db = dir.path().join("audit.db");
    let (forward, mut forwarded) = raw_trace_receiver().await;
    let collect = CollectProcess::start(
        env!("CARGO_BIN_EXE_mcp-otel"),
        &[
            "--audit".to_owned(),
            db.display().to_string(),
            "--forward".to_owned(),
            format!("http://{forward}"),
            "--hold-window".to_owned(),
            "200ms".to_owned(),
        ],
    );
    // Our calls, without and with the result recorded.
    let log = dir.path().join("calls.jsonl");
    for (record_result, tool) in [(false, "update_config"), (true, "update_config_full")] {
        let e = emitter(collect.grpc, &log, record_result);
        e.emit(call(tool));
        assert!(e.flush(Duration::from_secs(10)).await, "{tool} exported");
    }
    // Another instrumentation's span, straight over OTLP/gRPC.
    support::export_spans(collect.grpc, vec![foreign_span()])
        .await
        .unwrap();

    // The JSON log lines.
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(lines.lines().count(), 2, "{lines}");
    assert_eq!(leaks(&lines), Vec::<String>::new(), "JSON lines");
    assert!(lines.contains("[REDACTED]"), "{lines}");

    // The audit rows: every column of every row, once all three are stored (the foreign one
    // after its hold window).
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let rows = support::audit::column(
            &db,
            "SELECT json_array(id, timestamp, tool_name, user, status, duration_ms, error_code, \
             operation_type, resource_id, before_state, after_state, user_confirmation, context, \
             trace_id, span_id, mcp, result) FROM mcp_logs",
        );
        if rows.len() >= 3 || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rows.len(), 3, "{rows:#?}");
    let table = rows.join("\n");
    assert_eq!(leaks(&table), Vec::<String>::new(), "audit rows");
    let full = rows
        .iter()
        .find(|r| r.contains("update_config_full"))
        .unwrap();
    assert!(
        full.contains("content"),
        "the recorded result is stored (redacted): {full}"
    );
    // Nor in the full-text index (its own token store): no secret is a search hit.
    let conn = support::audit::raw(&db);
    for needle in needles() {
        let hits: i64 = conn
            .query_row(
                "SELECT count(*) FROM mcp_logs_fts WHERE mcp_logs_fts MATCH ?1",
                [format!("\"{}\"", needle.replace('"', ""))],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(hits, 0, "{needle} is in the search index");
    }

    // The spans as collect forwards them to the next hop.
    let mut hop = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut spans = 0;
    while spans < 3 && Instant::now() < deadline {
        if let Ok(Some(x)) =
            tokio::time::timeout(Duration::from_millis(500), forwarded.recv()).await
        {
            spans += x
                .request
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum::<usize>();
            hop.push_str(&all_text(&x.request));
            hop.push('\n');
        }
    }
    assert_eq!(spans, 3, "every span is forwarded");
    assert_eq!(leaks(&hop), Vec::<String>::new(), "forwarded spans");
    // The redacted arguments still travel (not dropped wholesale).
    assert!(hop.contains("apollo"), "{hop}");

    // /metrics (users are labels).
    let mut collect = collect;
    let status = collect.child.try_wait().unwrap();
    assert!(
        status.is_none(),
        "collect is running: {status:?} {:?}",
        collect.stderr.lock().unwrap()
    );
    let metrics = support::scrape_metrics(collect.metrics).await;
    assert!(metrics.contains("update_config"), "{metrics}");
    assert_eq!(leaks(&metrics), Vec::<String>::new(), "/metrics");
}
