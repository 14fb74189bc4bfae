//! `collect` against the decode floor (issue 13), in one run, alternating.
//!
//! The floor is `examples/otlp_floor.rs`: a minimal OTLP/gRPC receiver on tonic + prost that
//! fully decodes each `ExportTraceServiceRequest` into the opentelemetry-proto types, counts
//! the spans and acknowledges, which is what any Rust OTLP receiver must at least do. The other
//! receiver is `mcp-otel collect --audit none` (metrics and alerts on, forwarding off). Each runs
//! as its own process from the release build; a fresh one per run.
//!
//! Hypotheses (metrics and alerts on, audit off; ratios from the same run): `collect` spends at
//! most the floor's CPU per span (uncompressed and gzip), acknowledges at least 1.2 × the
//! floor's spans per second at 4 and at 16 streams, stays ≤ 20 MiB RSS after a run, and its
//! `/metrics` counts every span sent (`mcp_otel_spans_received_total` and the sum of
//! `mcp_tool_calls_total` both equal the acknowledged spans).
//!
//! The load generator is the same for both: `streams` HTTP/2 connections, each with one export
//! in flight, taking pre-encoded (and for gzip pre-compressed) gRPC frames in turn from one pool
//! of 256 exports of 512 spans with distinct ids (131,072 spans: more than `collect` remembers
//! for resend detection, so every span sent is a new call). No encoding happens while
//! measuring. The pool is built afresh (timestamps of now) before each pair of runs and both
//! receivers get the same bytes. Shapes: MCP-shaped spans as `mcp-otel`'s exporter sends them
//! (`shapes::mcp_span`), the same gzip-compressed, and the older harness shape
//! (`shapes::span`). Per run: acknowledged spans/s, the receiver's CPU-µs per span
//! (utime + stime of its `/proc/PID/stat`, before and after the measured window, all threads),
//! its RSS after the run (and the anonymous part of it). Then medians and [min–max] per
//! receiver and the ratios.
//!
//! `cargo bench --bench ingest_floor` (release build of the harness, `mcp-otel` and the floor).
//! `FLOOR_SECONDS` (default 4) per run, `FLOOR_RUNS` (default 3) alternating pairs per case;
//! `FLOOR_QUICK=1` (and `cargo test --bench ingest_floor`) is a smoke run of one short pair per
//! case; `FLOOR_CASES=mcp/4,gzip/16` runs only those cases (`mcp`, `gzip` or `harness`, then
//! the streams), e.g. to profile one receiver with `perf record -p`; `FLOOR_SMAPS=1` prints each
//! receiver's largest mappings after a run (where its RSS is); `FLOOR_COLLECT` names another
//! `mcp-otel` binary to run as `collect` (an A/B between two builds, under the same harness).
//! Loopback only; every loop is bounded.

mod shapes;
#[path = "../tests/support/mod.rs"]
mod support;

use bytes::Bytes;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use shapes::{BATCH, anon_mib, rss_mib};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::codegen::Service;
use tonic::transport::Channel;

/// Exports in the pool: 131,072 distinct spans, more than `collect` remembers for resends.
const POOL: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    Mcp,
    McpGzip,
    Harness,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Mcp => "MCP-shaped",
            Shape::McpGzip => "MCP-shaped, gzip",
            Shape::Harness => "harness shape",
        }
    }
    /// The name `FLOOR_CASES` uses.
    fn key(self) -> &'static str {
        match self {
            Shape::Mcp => "mcp",
            Shape::McpGzip => "gzip",
            Shape::Harness => "harness",
        }
    }
    fn gzip(self) -> bool {
        self == Shape::McpGzip
    }
}

/// The pre-built gRPC frames of one pool, and what they hold.
struct Pool {
    frames: Vec<Bytes>,
    gzip: bool,
    /// Encoded bytes per span (before compression), attributes per span.
    span_bytes: f64,
    attributes: f64,
    /// Compressed frame bytes / uncompressed.
    ratio: f64,
}

fn pool(shape: Shape) -> Pool {
    let requests: Vec<ExportTraceServiceRequest> = (0..POOL as u64)
        .map(|seed| match shape {
            Shape::Harness => shapes::mixed_batch(seed),
            Shape::Mcp | Shape::McpGzip => shapes::mcp_batch(seed),
        })
        .collect();
    let spans = || {
        requests
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
    };
    let n = spans().count() as f64;
    let span_bytes = spans().map(|s| s.encoded_len()).sum::<usize>() as f64 / n;
    let attributes = spans().map(|s| s.attributes.len()).sum::<usize>() as f64 / n;
    let (mut plain, mut sent) = (0usize, 0usize);
    let frames = requests
        .iter()
        .map(|r| {
            let body = r.encode_to_vec();
            plain += body.len();
            let body = if shape.gzip() {
                let mut z =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                z.write_all(&body).unwrap();
                z.finish().unwrap()
            } else {
                body
            };
            sent += body.len();
            let mut frame = Vec::with_capacity(5 + body.len());
            frame.push(u8::from(shape.gzip()));
            frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
            frame.extend_from_slice(&body);
            Bytes::from(frame)
        })
        .collect();
    Pool {
        frames,
        gzip: shape.gzip(),
        span_bytes,
        attributes,
        ratio: sent as f64 / plain as f64,
    }
}

/// One export, as an OTLP exporter sends it: the frame as it is (compressed or not); `Ok` when
/// the receiver acknowledged it whole (grpc-status 0, no rejected spans).
async fn export(ch: &mut Channel, frame: Bytes, gzip: bool) -> Result<(), String> {
    let mut req = http::Request::builder()
        .method("POST")
        .uri("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if gzip {
        req = req.header("grpc-encoding", "gzip");
    }
    let req = req
        .body(tonic::body::Body::new(http_body_util::Full::new(frame)))
        .unwrap();
    futures::future::poll_fn(|cx| ch.poll_ready(cx))
        .await
        .map_err(|e| e.to_string())?;
    let resp = ch.call(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?;
    let status = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .map(|v| v.to_str().unwrap_or("?").to_owned())
    };
    let code = body
        .trailers()
        .and_then(status)
        .or_else(|| status(&parts.headers))
        .unwrap_or_else(|| "none".to_owned());
    if code != "0" {
        return Err(format!("grpc-status {code}: {:?}", parts.headers));
    }
    let bytes = body.to_bytes();
    if bytes.len() >= 5 && bytes[0] == 0 {
        let resp = ExportTraceServiceResponse::decode(&bytes[5..]).map_err(|e| e.to_string())?;
        if let Some(p) = resp.partial_success.filter(|p| p.rejected_spans > 0) {
            return Err(format!(
                "{} spans rejected: {}",
                p.rejected_spans, p.error_message
            ));
        }
    }
    Ok(())
}

enum Receiver {
    Collect(support::CollectProcess),
    Floor(Child, SocketAddr),
}

impl Receiver {
    fn collect(bin: &std::ffi::OsStr) -> Self {
        Receiver::Collect(support::CollectProcess::start(bin, &["--audit", "none"]))
    }

    fn floor(bin: &std::path::Path) -> Self {
        let mut child = Command::new(bin)
            .arg("127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start otlp_floor");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("otlp_floor: OTLP/gRPC on ")
            .unwrap_or_else(|| panic!("otlp_floor said {line:?}"))
            .parse()
            .unwrap();
        Receiver::Floor(child, addr)
    }

    fn name(&self) -> &'static str {
        match self {
            Receiver::Collect(_) => "collect",
            Receiver::Floor(..) => "floor",
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Receiver::Collect(c) => c.child.id(),
            Receiver::Floor(c, _) => c.id(),
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Receiver::Collect(c) => c.grpc,
            Receiver::Floor(_, a) => *a,
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Receiver::Floor(c, _) = self {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `FLOOR_SMAPS=1`: a receiver's mappings that hold the most resident memory, to see where its
/// RSS after a run is (executable, heap arenas, the ledger's ring, stacks).
fn print_mappings(pid: u32) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut maps: Vec<(u64, u64, String)> = Vec::new(); // (rss kB, anon kB, mapping)
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some(k), Some(v)) if k == "Rss:" || k == "Anonymous:" => {
                let kb: u64 = v.parse().unwrap_or(0);
                if let Some(m) = maps.last_mut() {
                    if k == "Rss:" { m.0 = kb } else { m.1 = kb }
                }
            }
            (Some(k), _) if k.contains('-') && !k.ends_with(':') => {
                let name = line
                    .split_whitespace()
                    .skip(5)
                    .collect::<Vec<_>>()
                    .join(" ");
                maps.push((0, 0, format!("{k} {name}")));
            }
            _ => {}
        }
    }
    maps.sort_by_key(|m| std::cmp::Reverse(m.0));
    for (rss, anon, m) in maps.iter().take(12) {
        println!("    {rss:>7} kB rss {anon:>7} kB anon  {m}");
    }
}

/// utime + stime of a process, all its threads, in µs.
fn cpu_us(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks * 1e6 / hz
}

/// What one run measured.
#[derive(Clone, Debug)]
struct Run {
    rate: f64,
    cpu_per_span: f64,
    rss: f64,
    anon: f64,
}

/// One run against a fresh receiver: a warm-up export per stream, then `seconds` of load.
async fn run(rx: &Receiver, pool: &Pool, streams: usize, seconds: f64) -> Run {
    let mut channels = Vec::new();
    for _ in 0..streams {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", rx.addr()))
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap();
        channels.push(ch);
    }
    let frames = Arc::new(pool.frames.clone());
    let next = Arc::new(AtomicU64::new(0));
    let gzip = pool.gzip;
    // Warm-up: one export per stream, all at once.
    let warm: Vec<_> = channels
        .iter()
        .map(|ch| {
            let (mut ch, frames, next) = (ch.clone(), frames.clone(), next.clone());
            tokio::spawn(async move {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                export(&mut ch, frames[i % POOL].clone(), gzip).await
            })
        })
        .collect();
    for w in warm {
        w.await.unwrap().expect("warm-up export acknowledged");
    }
    let pid = rx.pid();
    let acked = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_us(pid);
    let started = Instant::now();
    let stop_at = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = channels
        .into_iter()
        .map(|mut ch| {
            let (frames, next, acked) = (frames.clone(), next.clone(), acked.clone());
            tokio::spawn(async move {
                while Instant::now() < stop_at {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    export(&mut ch, frames[i % POOL].clone(), gzip)
                        .await
                        .expect("export acknowledged");
                    acked.fetch_add(BATCH as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_us(pid) - cpu0;
    let rss = rss_mib(pid);
    let anon = anon_mib(pid);
    if std::env::var_os("FLOOR_SMAPS").is_some() {
        print_mappings(pid);
    }
    let acked = acked.load(Ordering::Relaxed);
    let total = acked + (streams * BATCH) as u64;
    if let Receiver::Collect(c) = rx {
        let text = support::scrape_metrics(c.metrics).await;
        let received = support::metric_sum(&text, "mcp_otel_spans_received_total", &[]);
        let calls = support::metric_sum(&text, "mcp_tool_calls_total", &[]);
        assert_eq!(
            (received as u64, calls as u64),
            (total, total),
            "collect's /metrics counts every span sent (received, calls)"
        );
        let firing = support::metric_sum(&text, "mcp_alerts_firing", &[]);
        assert!(firing > 0.0, "the loop and write alerts fire: {firing}");
    }
    Run {
        rate: acked as f64 / elapsed,
        cpu_per_span: cpu / acked as f64,
        rss,
        anon,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `median [min–max]`, with `digits` decimals.
fn summary(v: &[f64], digits: usize) -> (f64, String) {
    let mut v = v.to_vec();
    let m = median(&mut v);
    (
        m,
        format!(
            "{m:.digits$} [{:.digits$}–{:.digits$}]",
            v[0],
            v[v.len() - 1]
        ),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not, and gets a smoke run.
    let full =
        std::env::args().any(|a| a == "--bench") && std::env::var_os("FLOOR_QUICK").is_none();
    let env = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let seconds = env("FLOOR_SECONDS", if full { 4.0 } else { 0.5 });
    let runs = env("FLOOR_RUNS", if full { 3.0 } else { 1.0 }) as usize;
    // `cargo test` builds examples as test binaries only: the real one, same profile (`bench`
    // under `cargo bench`, which shares `target/release` with the `release` profile).
    // `FLOOR_BIN` names an already built floor instead.
    let bench = std::env::args().any(|a| a == "--bench");
    let floor_bin = std::env::var_os("FLOOR_BIN").map_or_else(
        || support::example_bin_as("otlp_floor", bench.then_some("bench")),
        std::path::PathBuf::from,
    );
    let collect_bin =
        std::env::var_os("FLOOR_COLLECT").unwrap_or_else(|| env!("CARGO_BIN_EXE_mcp-otel").into());
    let only = std::env::var("FLOOR_CASES").ok();
    let cases: Vec<(Shape, usize)> = [
        (Shape::Mcp, 4),
        (Shape::Mcp, 16),
        (Shape::McpGzip, 4),
        (Shape::McpGzip, 16),
        (Shape::Harness, 4),
        (Shape::Harness, 16),
    ]
    .into_iter()
    .filter(|(s, n)| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|c| c.trim() == format!("{}/{n}", s.key())))
    })
    .collect();
    println!(
        "ingest_floor: {runs} alternating pair(s) of {seconds} s per case, exports of {BATCH}, pool of {POOL} exports"
    );
    let mut results: Vec<(Shape, usize, Vec<Run>, Vec<Run>)> = cases
        .iter()
        .map(|&(s, n)| (s, n, Vec::new(), Vec::new()))
        .collect();
    for r in 0..runs {
        for (shape, streams, collect_runs, floor_runs) in results.iter_mut() {
            let p = pool(*shape);
            if r == 0 {
                println!(
                    "  {} : {:.0} B/span encoded, {:.1} attributes/span{}",
                    shape.name(),
                    p.span_bytes,
                    p.attributes,
                    if p.gzip {
                        format!(", gzip to {:.0} %", p.ratio * 100.0)
                    } else {
                        String::new()
                    }
                );
            }
            // Alternate which receiver goes first.
            for k in 0..2 {
                let rx = if (k + r) % 2 == 0 {
                    Receiver::collect(&collect_bin)
                } else {
                    Receiver::floor(&floor_bin)
                };
                tokio::time::sleep(Duration::from_millis(300)).await;
                let m = run(&rx, &p, *streams, seconds).await;
                println!(
                    "  run {r} {:<16} {:>2} streams {:<7}: {:>7.0} spans/s, {:.2} CPU-µs/span, RSS {:.1} MiB ({:.1} anonymous)",
                    shape.name(),
                    streams,
                    rx.name(),
                    m.rate,
                    m.cpu_per_span,
                    m.rss,
                    m.anon
                );
                match rx {
                    Receiver::Collect(_) => collect_runs.push(m),
                    Receiver::Floor(..) => floor_runs.push(m),
                }
            }
        }
    }
    println!(
        "\n| shape | streams | collect spans/s | floor spans/s | ratio | collect CPU-µs/span | floor CPU-µs/span | ratio | collect RSS MiB | floor RSS MiB | collect anon. MiB | floor anon. MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (shape, streams, c, f) in &results {
        let col = |runs: &[Run], g: fn(&Run) -> f64| runs.iter().map(g).collect::<Vec<f64>>();
        let (cr, crs) = summary(&col(c, |m| m.rate), 0);
        let (fr, frs) = summary(&col(f, |m| m.rate), 0);
        let (cc, ccs) = summary(&col(c, |m| m.cpu_per_span), 2);
        let (fc, fcs) = summary(&col(f, |m| m.cpu_per_span), 2);
        let (_, cms) = summary(&col(c, |m| m.rss), 1);
        let (_, fms) = summary(&col(f, |m| m.rss), 1);
        let (_, cas) = summary(&col(c, |m| m.anon), 1);
        let (_, fas) = summary(&col(f, |m| m.anon), 1);
        println!(
            "| {} | {streams} | {crs} | {frs} | **{:.2}** | {ccs} | {fcs} | **{:.2}** | {cms} | {fms} | {cas} | {fas} |",
            shape.name(),
            cr / fr,
            cc / fc
        );
    }
}
