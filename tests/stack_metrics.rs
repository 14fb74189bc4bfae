//! `collector-config/metrics.txt` (the contract the shipped rules, dashboard and Kubernetes
//! rendering are checked against) lists exactly what the real `mcp-otel collect` binary exposes
//! on `/metrics`: every metric family with its type and its labels, nothing more, nothing less.
//!
//! The binary is started on loopback (ports chosen by the OS, read back from its start-up line),
//! given one tool call of each kind through the library's real OTLP/gRPC exporter (so that the
//! labelled families have a series whose labels can be read), plus one export whose resource
//! reports exporter losses, and scraped once.

mod support;

use mcp_otel::record::{OperationType, Status, ToolCall, WriteOp};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// name → (type, labels), as `metrics.txt` writes them (counters with `_total`, histograms by
/// their base name).
type Contract = BTreeMap<String, (String, BTreeSet<String>)>;

fn contract() -> Contract {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/collector-config/metrics.txt");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = Contract::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [name, typ, labels] = parts[..] else {
            panic!("metrics.txt: not `name type labels`: {line:?}")
        };
        let labels = if labels == "-" {
            BTreeSet::new()
        } else {
            labels.split(',').map(str::to_owned).collect()
        };
        assert!(
            out.insert(name.to_owned(), (typ.to_owned(), labels))
                .is_none(),
            "metrics.txt lists {name} twice"
        );
    }
    out
}

/// The same shape, read from an OpenMetrics exposition.
fn exposed(text: &str) -> Contract {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, typ) = rest.split_once(' ').expect("`# TYPE family type`");
            types.insert(family.to_owned(), typ.to_owned());
        }
    }
    let mut out = Contract::new();
    for (family, typ) in &types {
        let name = match typ.as_str() {
            "counter" => format!("{family}_total"),
            _ => family.clone(),
        };
        let mut labels = BTreeSet::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let series = line.split(' ').next().unwrap_or("");
            let (metric, label_text) = series.split_once('{').unwrap_or((series, ""));
            let belongs = match typ.as_str() {
                "counter" => metric == name,
                "histogram" => [
                    format!("{family}_bucket"),
                    format!("{family}_sum"),
                    format!("{family}_count"),
                ]
                .contains(&metric.to_owned()),
                _ => metric == family,
            };
            if !belongs {
                continue;
            }
            for pair in label_text.trim_end_matches('}').split(',') {
                if let Some((k, _)) = pair.split_once('=')
                    && !(typ == "histogram" && k == "le")
                {
                    labels.insert(k.to_owned());
                }
            }
        }
        out.insert(name, (typ.clone(), labels));
    }
    out
}

async fn scrape(metrics: SocketAddr) -> String {
    let r = reqwest::Client::new()
        .get(format!("http://{metrics}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("GET /metrics");
    assert!(r.status().is_success(), "{}", r.status());
    r.text().await.expect("a text body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_txt_lists_exactly_what_the_binary_exposes() {
    let collect =
        support::CollectProcess::start(env!("CARGO_BIN_EXE_mcp-otel"), &["--audit", "none"]);
    let (grpc, metrics) = (collect.grpc, collect.metrics);
    // One successful read, one failed write: every labelled family gets a series.
    let e = support::otlp_emitter(grpc, Duration::from_millis(20));
    e.emit(ToolCall::new("get_task", "alice"));
    let mut w = ToolCall::new("delete_task", "bob");
    w.status = Status::Error;
    w.error_code = Some("403".into());
    w.write = Some(WriteOp::new(OperationType::Delete));
    // A declined confirmation, so that mcp_confirmations_total has a series too.
    w.confirmation = Some(mcp_otel::record::Confirmation::new(
        mcp_otel::record::ConfirmationOutcome::Declined,
        Some(mcp_otel::record::ConfirmationSource::Elicitation),
    ));
    e.emit(w);
    assert!(e.flush(Duration::from_secs(10)).await, "no flush in 10 s");
    // An export whose resource says its exporter lost spans before (as ours do after an
    // outage), so that the exporter-loss families have a series too.
    {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
        use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
        use opentelemetry_proto::tonic::resource::v1::Resource;
        use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
        let int = |key: &str, n: i64| KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(n)),
            }),
            ..Default::default()
        };
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        support::string_kv("service.name", "lossy-proxy"),
                        support::string_kv("service.instance.id", "i-1"),
                        int("mcp_otel.exporter.spans_failed", 3),
                        int("mcp_otel.exporter.spans_dropped", 1),
                    ],
                    ..Default::default()
                }),
                ..Default::default()
            }],
        };
        let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
            .await
            .expect("connect to collect");
        client.export(req).await.expect("export accepted");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(metrics).await;
        if text.contains("mcp_otel_spans_received_total 2") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "collect did not count the 2 spans:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let want = contract();
    let got = exposed(&text);
    let names = |c: &Contract| c.keys().cloned().collect::<BTreeSet<_>>();
    let missing: Vec<_> = names(&want).difference(&names(&got)).cloned().collect();
    let unlisted: Vec<_> = names(&got).difference(&names(&want)).cloned().collect();
    assert!(
        missing.is_empty() && unlisted.is_empty(),
        "metrics.txt and /metrics disagree.\n  listed but not exposed: {missing:?}\n  exposed \
         but not listed: {unlisted:?}\n/metrics:\n{text}"
    );
    for (name, (typ, labels)) in &want {
        let (got_typ, got_labels) = &got[name];
        assert_eq!(got_typ, typ, "{name}: type in metrics.txt vs /metrics");
        // A family without a series yet shows no labels; every labelled family has one here.
        assert_eq!(
            got_labels, labels,
            "{name}: labels in metrics.txt vs /metrics"
        );
    }
}
