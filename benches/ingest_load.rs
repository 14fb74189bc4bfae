//! Load harness for `mcp-otel collect` (two processes on one machine).
//!
//! Hypotheses: (1) with metrics and alerts on and forwarding off, one `collect` process ingests
//! at least 300,000 MCP spans/s arriving over OTLP/gRPC in batches of 512, with this load
//! generator running on the same 2 cores; (2) its RSS stays ≤ 30 MiB idle and ≤ 100 MiB after
//! 100,000 distinct users (label cap on); (3) from a span's arrival to the webhook POST of the
//! alert it trips, p99 ≤ 1 s; (4) with the audit trail on (`--audit FILE`, durable: an export
//! is acknowledged only after its rows are committed and the WAL fsynced), 8 concurrent
//! exporters sending exports of 100 calls with random trace ids get at least 150,000 calls/s
//! acknowledged (issue 13), and the store then holds exactly the acknowledged calls and
//! verifies. The audited phase sends exports encoded before it is timed, and the same exports
//! with the same load to a `collect` without the audit trail, side by side; both report
//! `collect`'s CPU-µs per call (all its threads, from `/proc/PID/stat`) and the harness's own.
//!
//! `cargo bench --bench ingest_load` (release build of the harness and of `mcp-otel`);
//! `AUDIT_CALLS` (default 300,000) and `AUDIT_RUNS` (pairs of runs, default 1) size the audited
//! phase, `AUDIT_ONLY=1` runs only it;
//! `INGEST_CONSOLE_VIEWERS=1` keeps that many console live views reading during the ingest and
//! audited ingest phases (issue 14: the live stream must not slow ingestion). Prints
//! one line per figure; docs/benchmarks.md records them. Loopback only; every loop is bounded.

mod shapes;
#[path = "../tests/support/mod.rs"]
mod support;
use shapes::{BATCH, mixed_batch, rss_mib, span};
use support::string_kv as kv;

use axum::routing::post;
use bytes::{BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A call as the audit trail sees it: random ids, as real exporters send them, arguments, and
/// for one call in two a write (update or delete) with its resource and confirmation, updates
/// with their after-state.
fn audited_span(n: u64) -> Span {
    let tools = ["get_task", "update_task", "list_tasks", "delete_task"];
    let tool = tools[(n % 4) as usize];
    let mut s = span(n, &format!("user-{}", n % 50), tool, "success", None);
    s.trace_id = rand::random::<[u8; 16]>().to_vec();
    s.span_id = rand::random::<[u8; 8]>().to_vec();
    s.attributes.retain(|a| {
        !matches!(
            a.key.as_str(),
            "mcp_otel.operation_type" | "mcp_otel.resource_id"
        )
    });
    s.attributes.push(kv(
        "mcp_otel.context",
        &format!(r#"{{"project_id":{},"task_id":"task-{n}"}}"#, n % 100),
    ));
    if n % 4 == 1 || n % 4 == 3 {
        let op = if n % 4 == 1 { "update" } else { "delete" };
        s.attributes.push(kv("mcp_otel.operation_type", op));
        s.attributes
            .push(kv("mcp_otel.resource_id", &format!("task-{n}")));
        s.attributes.push(kv(
            "mcp_otel.user_confirmation",
            if n.is_multiple_of(3) { "false" } else { "true" },
        ));
        if op == "update" {
            s.attributes.push(kv(
                "mcp_otel.after_state",
                &format!(r#"{{"id":"task-{n}","title":"Quarterly report {n}","done":true}}"#),
            ));
        }
    }
    s
}

type Collect = support::CollectProcess;

/// Starts `collect`; without `--audit` in `extra` the audit trail is off.
fn start_collect(extra: &[&str]) -> Collect {
    // The figures of issue 3 are for metrics and alerts: no audit trail unless asked for.
    let audit_off: &[&str] = if extra.contains(&"--audit") {
        &[]
    } else {
        &["--audit", "none"]
    };
    Collect::start(env!("CARGO_BIN_EXE_mcp-otel"), &[audit_off, extra].concat())
}

async fn client(addr: SocketAddr) -> TraceServiceClient<tonic::transport::Channel> {
    TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20)
}

async fn throughput(c: &Collect, seconds: u64, streams: usize) -> f64 {
    let batches: Arc<Vec<ExportTraceServiceRequest>> = Arc::new((0..64).map(mixed_batch).collect());
    let sent = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    // Warm up: one batch per stream.
    let mut warm = client(c.grpc).await;
    warm.export(batches[0].clone()).await.unwrap();
    let started = Instant::now();
    for s in 0..streams {
        let mut cl = client(c.grpc).await;
        let batches = batches.clone();
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = s;
            while Instant::now() < stop_at {
                cl.export(batches[i % batches.len()].clone()).await.unwrap();
                sent.fetch_add(BATCH as u64, Ordering::Relaxed);
                i += streams;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    sent.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// `calls` audited calls in exports of `batch`, each encoded as the gRPC message body an
/// exporter sends. Built before a phase is timed, so that the load generator, which shares the
/// two cores with `collect`, spends its time sending rather than building and encoding spans.
fn audited_exports(calls: u64, batch: u64) -> Vec<Bytes> {
    (0..calls.div_ceil(batch))
        .map(|i| {
            let spans = (i * batch..((i + 1) * batch).min(calls))
                .map(audited_span)
                .collect();
            Bytes::from(support::export_request(spans).encode_to_vec())
        })
        .collect()
}

/// The client side of the trace service for exports already encoded: the body as it is, the
/// response decoded by prost.
#[derive(Clone, Copy, Default)]
struct EncodedExport;

impl tonic::codec::Codec for EncodedExport {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = Self;
    type Decoder = tonic_prost::ProstDecoder<ExportTraceServiceResponse>;

    fn encoder(&mut self) -> Self {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

impl tonic::codec::Encoder for EncodedExport {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

/// CPU time (user + system, all threads) a process has used so far, in µs.
fn cpu_us(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: f64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<f64>().ok())
        .sum();
    ticks * 1e6 / 100.0
}

/// What one audited phase measured.
struct AuditedRun {
    /// Acknowledged calls per second.
    rate: f64,
    /// `collect`'s CPU-µs per acknowledged call (all its threads).
    collect_cpu_us: f64,
    /// The harness's own CPU-µs per call (the load generator).
    harness_cpu_us: f64,
}

/// `streams` exporters, each sending the next of `exports` (calls in exports of 100) and
/// waiting for its acknowledgement, until every export is acknowledged.
async fn audited_throughput(c: &Collect, exports: Arc<Vec<Bytes>>, streams: u64) -> AuditedRun {
    let calls: u64 = exports
        .iter()
        .map(|e| {
            ExportTraceServiceRequest::decode(e.clone())
                .unwrap()
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .map(|ss| ss.spans.len() as u64)
                .sum::<u64>()
        })
        .sum();
    let next = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..streams {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        clients.push(tonic::client::Grpc::new(channel));
    }
    let (collect_cpu, harness_cpu) = (cpu_us(c.child.id()), cpu_us(std::process::id()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut cl in clients {
        let (next, exports) = (next.clone(), exports.clone());
        tasks.push(tokio::spawn(async move {
            let path = http::uri::PathAndQuery::from_static(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            );
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(export) = exports.get(i) else { break };
                cl.ready().await.unwrap();
                cl.unary(
                    tonic::Request::new(export.clone()),
                    path.clone(),
                    EncodedExport,
                )
                .await
                .expect("export acknowledged");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    AuditedRun {
        rate: calls as f64 / seconds,
        collect_cpu_us: (cpu_us(c.child.id()) - collect_cpu) / calls as f64,
        harness_cpu_us: (cpu_us(std::process::id()) - harness_cpu) / calls as f64,
    }
}

/// With `INGEST_CONSOLE_VIEWERS=N`, N browsers' worth of live views (`/api/console/live`, no
/// filter) read the console's stream while a phase runs, each on a thread of its own (as a
/// browser is not starved by this harness's exporters), counting the calls they were sent and
/// what the console told them it skipped (a view gets at most 500 calls per 250 ms).
struct Viewers {
    open: usize,
    counts: Arc<[AtomicU64; 3]>,
}

impl Viewers {
    async fn open(c: &Collect) -> Viewers {
        let n: usize = std::env::var("INGEST_CONSOLE_VIEWERS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let counts: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        let (ready_tx, ready) = std::sync::mpsc::channel();
        for _ in 0..n {
            let url = format!("http://{}/api/console/live", c.metrics);
            let (counts, ready_tx) = (counts.clone(), ready_tx.clone());
            // Ends when the collector it reads from stops.
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let mut resp = reqwest::get(url).await.unwrap();
                    assert_eq!(resp.status(), 200);
                    let _ = ready_tx.send(());
                    let mut tail = String::new();
                    while let Ok(Some(chunk)) = resp.chunk().await {
                        tail.push_str(&String::from_utf8_lossy(&chunk));
                        // Whole events only: each ends with a blank line.
                        while let Some(end) = tail.find("\n\n") {
                            let event: String = tail.drain(..end + 2).collect();
                            let n = event.matches("\"span_id\"").count() as u64;
                            counts[0].fetch_add(n, Ordering::Relaxed);
                            for (i, key) in [(1, "\"skipped\":"), (2, "\"skipped_batches\":")] {
                                if let Some(at) = event.find(key) {
                                    let digits: String = event[at + key.len()..]
                                        .chars()
                                        .take_while(|c| c.is_ascii_digit())
                                        .collect();
                                    counts[i]
                                        .fetch_add(digits.parse().unwrap_or(0), Ordering::Relaxed);
                                }
                            }
                        }
                    }
                });
            });
        }
        for _ in 0..n {
            ready.recv().unwrap();
        }
        Viewers { open: n, counts }
    }

    /// Prints what the views got, if any were open.
    fn close(self, phase: &str, seconds: f64) {
        if self.open == 0 {
            return;
        }
        let [calls, skipped, batches] = &*self.counts;
        println!(
            "{phase}: {} console live view(s) open: sent {:.0} calls/s in all, told of {} calls \
             and {} batches skipped",
            self.open,
            calls.load(Ordering::Relaxed) as f64 / seconds,
            skipped.load(Ordering::Relaxed),
            batches.load(Ordering::Relaxed)
        );
    }
}

async fn distinct_users(c: &Collect, users: u64) {
    let mut cl = client(c.grpc).await;
    let mut n = 0;
    while n < users {
        let spans = (0..BATCH as u64)
            .map(|i| {
                span(
                    n + i,
                    &format!("distinct-{}", n + i),
                    "get_task",
                    "success",
                    None,
                )
            })
            .collect();
        cl.export(support::export_request(spans)).await.unwrap();
        n += BATCH as u64;
    }
}

/// Arrival → webhook latency: each round sends one export whose 101 calls by a fresh user trip
/// McpToolCallLoop, and times the webhook POST naming that user.
async fn alert_latency(rounds: usize) -> Vec<Duration> {
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let sink = seen.clone();
    let app = axum::Router::new().route(
        "/api/v2/alerts",
        post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let sink = sink.clone();
            async move {
                let at = Instant::now();
                for a in v.as_array().cloned().unwrap_or_default() {
                    if a.get("endsAt").is_none()
                        && let Some(u) = a["labels"]["user"].as_str()
                    {
                        sink.lock().unwrap().entry(u.to_owned()).or_insert(at);
                    }
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let c = start_collect(&["--alert-webhook", &hook]);
    let mut cl = client(c.grpc).await;
    let mut latencies = Vec::new();
    for r in 0..rounds {
        let user = format!("looper-{r}");
        let spans = (0..101u64)
            .map(|i| span(r as u64 * 1000 + i, &user, "get_task", "success", None))
            .collect();
        let sent = Instant::now();
        cl.export(support::export_request(spans)).await.unwrap();
        let deadline = sent + Duration::from_secs(10);
        loop {
            if let Some(at) = seen.lock().unwrap().get(&user) {
                latencies.push(at.duration_since(sent));
                break;
            }
            assert!(Instant::now() < deadline, "no webhook for {user}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    latencies
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize)
        .saturating_sub(1)
        .min(sorted.len() - 1)]
}

/// Throughput and memory with metrics and alerts only (hypotheses 1 and 2).
async fn other_phases(seconds: u64, users: u64) {
    let c = start_collect(&[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("collect RSS idle: {:.1} MiB", rss_mib(c.child.id()));
    let viewers = Viewers::open(&c).await;
    let rate = throughput(&c, seconds, 4).await;
    viewers.close("ingest", seconds as f64);
    let text = support::scrape_metrics(c.metrics).await;
    let received = text
        .lines()
        .find_map(|l| l.strip_prefix("mcp_otel_spans_received_total "))
        .unwrap_or("?")
        .to_owned();
    println!(
        "ingest: {rate:.0} spans/s over {seconds} s (batches of {BATCH}, 4 streams, metrics + alerts on, forwarding off; collect counted {received} spans)"
    );
    println!(
        "collect RSS after the throughput run: {:.1} MiB",
        rss_mib(c.child.id())
    );
    drop(c);

    let c = start_collect(&[]);
    distinct_users(&c, users).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "collect RSS after {users} distinct users (cap 1000): {:.1} MiB",
        rss_mib(c.child.id())
    );
    drop(c);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not, and gets a short
    // smoke run that checks the harness still works.
    let full = std::env::args().any(|a| a == "--bench");
    let seconds = std::env::var("INGEST_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if full { 10 } else { 1 });
    let (users, rounds) = if full { (100_000, 200) } else { (5_000, 10) };
    // `AUDIT_ONLY=1`: only the audited ingest phase (and its un-audited twin).
    let audit_only = std::env::var("AUDIT_ONLY").is_ok_and(|v| v == "1");
    if !audit_only {
        other_phases(seconds, users).await;
    }

    let calls: u64 = std::env::var("AUDIT_CALLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if full { 300_000 } else { 5_000 });
    let runs: usize = std::env::var("AUDIT_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let exports = Arc::new(audited_exports(calls, 100));
    for run in 1..=runs {
        // The same exports, the same load, without the audit trail (metrics and alerts only).
        let c = start_collect(&[]);
        let plain = audited_throughput(&c, exports.clone(), 8).await;
        drop(c);
        let dir = std::env::temp_dir().join(format!(
            "mcp-otel-ingest-audit-{}-{run}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("audit.db");
        let c = start_collect(&["--audit", db.to_str().unwrap()]);
        let viewers = Viewers::open(&c).await;
        let audited = audited_throughput(&c, exports.clone(), 8).await;
        viewers.close("audited ingest", calls as f64 / audited.rate);
        drop(c);
        let rows: i64 = rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT count(*) FROM mcp_logs", [], |r| r.get(0))
            .unwrap();
        let verify = Command::new(env!("CARGO_BIN_EXE_mcp-otel"))
            .args(["audit", "--db", db.to_str().unwrap(), "verify"])
            .output()
            .unwrap();
        assert_eq!(
            rows as u64, calls,
            "the store holds exactly the acknowledged calls"
        );
        assert!(verify.status.success(), "verify: {verify:?}");
        println!(
            "run {run}: audited ingest: {:.0} calls/s acknowledged, collect {:.1} CPU-µs/call, \
             harness {:.1} ({calls} calls, 8 exporters, exports of 100, durable; {rows} rows \
             stored, verify: {}); same exports without the audit trail: {:.0} calls/s, collect \
             {:.1} CPU-µs/call, harness {:.1}",
            audited.rate,
            audited.collect_cpu_us,
            audited.harness_cpu_us,
            String::from_utf8_lossy(&verify.stdout)
                .lines()
                .next()
                .unwrap_or(""),
            plain.rate,
            plain.collect_cpu_us,
            plain.harness_cpu_us,
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    if audit_only {
        return;
    }

    let mut lat = alert_latency(rounds).await;
    lat.sort();
    println!(
        "span arrival → webhook POST over {rounds} alerts: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );
}
