//! A real `mcp-otel collect` process whose audit files are made immutable under it
//! (`chattr +i`, which needs CAP_LINUX_IMMUTABLE: root, as in CI), and exports over the size
//! limit.
//!
//! Before: an immutable `-shm` killed collect with SIGBUS (SQLite writes the WAL index through a
//! shared mapping); an immutable `-wal` answered INTERNAL, which OTLP exporters do not retry, so
//! the call was lost, and nothing was logged. A 70 MiB export got tonic's OUT_OF_RANGE, which
//! the OTLP specification lists as retryable: the SDK resent it for its whole timeout.
//! Now: UNAVAILABLE (retryable) with one clear log line per episode, collect keeps serving,
//! and the export that was refused succeeds once the file is fixed; an oversize export is
//! INVALID_ARGUMENT over gRPC and 413 over HTTP, neither retried by the SDKs.

mod support;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{CollectProcess, export_request, string_kv};

fn start(db: &Path) -> CollectProcess {
    CollectProcess::start(
        env!("CARGO_BIN_EXE_mcp-otel"),
        &[OsStr::new("--audit"), db.as_os_str()],
    )
}

fn log(c: &CollectProcess) -> String {
    c.stderr.lock().unwrap().join("\n")
}

fn alive(c: &mut CollectProcess) -> bool {
    c.child.try_wait().unwrap().is_none()
}

/// Clears the attribute again whatever happens, so the temporary directory can be removed.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: PathBuf) -> Immutable {
        let out = Command::new("chattr")
            .arg("+i")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test makes a file immutable and needs CAP_LINUX_IMMUTABLE (root) on a file \
             system with attributes: chattr +i {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Immutable(path)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// One delete of ours, `n` distinct.
fn delete_span(n: u8, pad: usize) -> Span {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut attributes = vec![
        string_kv("mcp.method.name", "tools/call"),
        string_kv("gen_ai.tool.name", "delete_task"),
        string_kv("mcp_otel.status", "success"),
        string_kv("mcp_otel.operation_type", "delete"),
        string_kv("enduser.id", "alice"),
    ];
    if pad > 0 {
        attributes.push(string_kv("pad", &"x".repeat(pad)));
    }
    Span {
        name: "tools/call delete_task".into(),
        kind: 2,
        trace_id: vec![n; 16],
        span_id: vec![n; 8],
        start_time_unix_nano: now,
        end_time_unix_nano: now + 1_000_000,
        attributes,
        ..Default::default()
    }
}

async fn export(addr: SocketAddr, span: Span) -> Result<(), tonic::Status> {
    let mut client = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_encoding_message_size(256 << 20);
    client.export(export_request(vec![span])).await.map(|_| ())
}

fn wal_files(db: &Path) -> (PathBuf, PathBuf) {
    let with = |s: &str| PathBuf::from(format!("{}{s}", db.display()));
    (with("-wal"), with("-shm"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immutable_wal_or_shm_is_a_retryable_refusal_not_a_crash() {
    let dir = support::tempdir();
    let db = dir.path().join("audit.db");
    let mut c = start(&db);
    export(c.grpc, delete_span(1, 0)).await.unwrap();
    let (wal, shm) = wal_files(&db);
    assert!(wal.exists() && shm.exists(), "WAL mode");
    // Another process reading and closing the store while collect writes: the file check must
    // not drop SQLite's POSIX locks (a first version opened the files to read their flags, and
    // closing a descriptor drops every lock the process holds on the file: the reader then took
    // itself for the last connection, truncated the -shm, and collect died of SIGBUS).
    for n in 10..16u8 {
        let _ = support::audit::column(&db, "SELECT user FROM mcp_logs");
        export(c.grpc, delete_span(n, 0)).await.unwrap();
        assert!(alive(&mut c), "{}", log(&c));
    }

    for (n, file) in [(2u8, shm), (3u8, wal)] {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let guard = Immutable::set(file);
        // Past the writer's background WAL checkpoint (every 500 ms), which also writes to it.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let refused = export(c.grpc, delete_span(n, 0)).await.unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::Unavailable,
            "{name}: retryable, so the exporter keeps the call: {refused:?}"
        );
        assert!(refused.message().contains("immutable"), "{refused:?}");
        assert!(
            alive(&mut c),
            "{name}: collect is still running\n{}",
            log(&c)
        );
        let (status, _) = get(format!("http://{}/healthz", c.metrics)).await;
        assert_eq!(status, 200);
        let text = log(&c);
        assert_eq!(
            text.matches(&format!("{name} is immutable")).count(),
            1,
            "one clear line per episode:\n{text}"
        );
        // A second refusal says nothing new.
        assert!(export(c.grpc, delete_span(n, 0)).await.is_err());
        assert_eq!(log(&c).matches("is immutable").count(), n as usize - 1);
        drop(guard);
        // The exporter's retry goes through.
        export(c.grpc, delete_span(n, 0)).await.unwrap();
        assert!(log(&c).contains("writable again"), "{}", log(&c));
    }
    let rows = support::audit::column(&db, "SELECT hex(span_id) FROM mcp_logs");
    assert_eq!(
        rows.len(),
        9,
        "the six written beside a reader, and each refused call once, after the fix: {rows:?}"
    );
    drop(c);
    let report = mcp_otel::audit::verify::verify_path(&db, &Default::default()).unwrap();
    assert!(report.is_intact(), "{}", report.summary());
}

async fn get(url: String) -> (u16, String) {
    let r = reqwest::get(&url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_export_gets_an_answer_the_sdks_do_not_retry() {
    let dir = support::tempdir();
    let c = start(&dir.path().join("audit.db"));
    let over = 65 << 20; // past the 64 MiB limit
    let refused = export(c.grpc, delete_span(1, over)).await.unwrap_err();
    // The OTLP specification's retryable gRPC codes: CANCELLED, DEADLINE_EXCEEDED, ABORTED,
    // OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS (RESOURCE_EXHAUSTED only with RetryInfo).
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("too large"), "{refused:?}");
    // OTLP/HTTP: 413, outside 429/502/503/504, the only statuses an SDK retries.
    let body = prost::Message::encode_to_vec(&export_request(vec![delete_span(2, over)]));
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", c.http))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // Within the limit, all is well.
    export(c.grpc, delete_span(3, 1 << 20)).await.unwrap();
}
