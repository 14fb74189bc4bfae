//! Load harness: what the stdio proxy adds to a `tools/call`, against the floor for any hop.
//!
//! Hypothesis: the proxy's relay path (blocking read, newline framing, a `memmem` for
//! `tools/call`, the traceparent splice, a queue push to the observer thread) costs about what
//! a plain byte copy costs, because parsing, correlation and export happen off that path. So
//! its added latency per call should be close to the minimal relay's: added p50 ≤ 1.3× and
//! added p99 ≤ 2× the relay's, measured in the same run against the same fast server.
//!
//! Three hops in front of the rmcp echo server (`examples/echo_server.rs`), interleaved call by
//! call so that drift on a shared machine hits all three alike:
//! - `direct`: the client talks to the server;
//! - `relay`: `examples/byte_relay.rs`, a process that only copies stdin/stdout both ways;
//! - `proxy`: `mcp-otel proxy --log /dev/null -- echo_server`, exporting spans over OTLP/gRPC to
//!   `mcp-otel collect` running as its own process, traceparent injection on.
//!
//! Then relay throughput (small messages pipelined through each hop to `cat`, which echoes
//! them) and the proxy's resident memory when idle.
//!
//! ```text
//! cargo build --release --examples && cargo bench --bench proxy_latency
//! taskset -c 0 cargo bench --bench proxy_latency     # everything on one core
//! ```
//! Under `cargo test` it runs a few calls per hop as a smoke test and prints no figures.
//! Variants: `BENCH_PROXY_ARGS="--no-inject"` (extra proxy flags), `BENCH_CLIENT_TRACEPARENT=1`
//! (the client sends its own `traceparent`, so the server gets the same bytes on every hop),
//! `OTEL_TRACES_EXPORTER=none` (no span export).

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

struct Session {
    name: &'static str,
    child: Child,
    /// `None` once closed: the hop then ends as it does when its client goes away.
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    line: String,
    next_id: u64,
    samples: Vec<f64>,
}

/// Starts `cmd[0] cmd[1..]` with `env`, stdin and stdout piped, stderr discarded.
fn spawn_piped(cmd: &[String], env: &[(&str, String)]) -> Child {
    let mut c = Command::new(&cmd[0]);
    c.args(&cmd[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", cmd[0]))
}

impl Session {
    fn start(name: &'static str, cmd: &[String], env: &[(&str, String)]) -> Session {
        let mut child = spawn_piped(cmd, env);
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut s = Session {
            name,
            child,
            stdin: Some(stdin),
            stdout,
            line: String::new(),
            next_id: 1,
            samples: Vec::new(),
        };
        s.send(r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#);
        s.recv();
        s.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        s
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open while calling");
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
    }

    fn recv(&mut self) {
        self.line.clear();
        let n = self.stdout.read_line(&mut self.line).unwrap();
        assert!(n > 0, "{}: the server closed its output", self.name);
    }

    /// One `tools/call echo`, timed from the write to the end of the answer line.
    fn call(&mut self) -> f64 {
        let id = self.next_id;
        self.next_id += 1;
        // BENCH_CLIENT_TRACEPARENT=1: the client sends its own trace context (an instrumented
        // client), so every hop forwards the same bytes and the proxy injects nothing.
        let meta = if std::env::var_os("BENCH_CLIENT_TRACEPARENT").is_some() {
            r#","_meta":{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#
        } else {
            ""
        };
        let msg = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"hello"}}{meta}}}}}"#
        );
        let started = Instant::now();
        self.send(&msg);
        self.recv();
        let us = started.elapsed().as_secs_f64() * 1e6;
        assert!(self.line.contains("hello"), "{}: {}", self.name, self.line);
        us
    }
}

impl Session {
    /// Closes the hop's stdin, as a client does when it leaves, and waits (up to 20 s) for it
    /// to exit: the proxy then exports what it recorded. Whether it exited by itself.
    fn close(&mut self) -> bool {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.close() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

struct Summary {
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
}

fn summary(samples: &[f64]) -> Summary {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    Summary {
        p50: percentile(&s, 0.50),
        p90: percentile(&s, 0.90),
        p99: percentile(&s, 0.99),
        mean: s.iter().sum::<f64>() / s.len() as f64,
    }
}

/// Pipelines `n` small messages through `cmd` (which ends in `cat`) and returns messages/s.
fn throughput(cmd: &[String], env: &[(&str, String)], n: usize) -> f64 {
    let mut child = spawn_piped(cmd, env);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let started = Instant::now();
    let writer = std::thread::spawn(move || {
        let mut batch = Vec::with_capacity(64 * 1024);
        for i in 0..n {
            // Alternate a tools/call (parsed, spliced by the proxy) and a notification.
            if i % 2 == 0 {
                writeln!(batch, "{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"message\":\"m\"}}}}}}").unwrap();
            } else {
                batch.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1,\"progress\":1}}\n");
            }
            if batch.len() > 32 * 1024 {
                stdin.write_all(&batch).unwrap();
                batch.clear();
            }
        }
        stdin.write_all(&batch).unwrap();
    });
    let mut lines = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    while lines < n {
        let k = stdout.read(&mut buf).unwrap();
        assert!(k > 0, "the hop closed early after {lines} lines");
        lines += buf[..k].iter().filter(|b| **b == b'\n').count();
    }
    let secs = started.elapsed().as_secs_f64();
    writer.join().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    n as f64 / secs
}

fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user + system, all threads) a process has used so far, in µs.
fn cpu_us(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz * 1e6)
}

/// `mcp-otel collect` on loopback ports, audit trail off.
struct Collector(support::CollectProcess);

impl Collector {
    fn start(bin: &str) -> Collector {
        Collector(support::CollectProcess::start(bin, &["--audit", "none"]))
    }

    /// `mcp_otel_spans_received_total` from its `/metrics`.
    fn spans_received(&self) -> Option<u64> {
        let mut sock = std::net::TcpStream::connect(self.0.metrics).ok()?;
        sock.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        sock.read_to_string(&mut text).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("mcp_otel_spans_received_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    // `cargo test` builds examples as test binaries only: the real ones, same profile.
    let echo = support::example_bin("echo_server").display().to_string();
    let relay = support::example_bin("byte_relay").display().to_string();
    let proxy = env!("CARGO_BIN_EXE_mcp-otel").to_owned();

    // The proxy exports to a real collector, `mcp-otel collect` in its own process (metrics
    // and alerts on, no audit trail), as it would in a deployment.
    let collector = Collector::start(&proxy);
    let proxy_env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{}", collector.0.grpc),
        ),
        ("OTEL_SERVICE_NAME", "bench-proxy".to_owned()),
    ];
    // Extra proxy flags for variants, e.g. BENCH_PROXY_ARGS=--no-inject.
    let extra: Vec<String> = std::env::var("BENCH_PROXY_ARGS")
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let proxy_cmd = |server: &str| {
        let mut cmd = vec![
            proxy.clone(),
            "proxy".into(),
            "--log".into(),
            "/dev/null".into(),
        ];
        cmd.extend(extra.iter().cloned());
        cmd.push("--".into());
        cmd.push(server.to_owned());
        cmd
    };

    let (rounds, per_round, warmup) = if bench { (40, 500, 2000) } else { (2, 5, 5) };
    let mut sessions = [
        Session::start("direct", std::slice::from_ref(&echo), &[]),
        Session::start("relay", &[relay.clone(), echo.clone()], &[]),
        Session::start("proxy", &proxy_cmd(&echo), &proxy_env),
    ];
    // Warm up interleaved too, so the three hops settle on the cores side by side.
    for _ in 0..warmup {
        for s in sessions.iter_mut() {
            s.call();
        }
    }
    let cpu_before: Vec<Option<f64>> = sessions.iter().map(|s| cpu_us(s.child.id())).collect();
    // Round robin call by call: a burst of noise from elsewhere on the machine hits the three
    // hops alike.
    for _ in 0..rounds * per_round {
        for s in sessions.iter_mut() {
            let us = s.call();
            s.samples.push(us);
        }
    }
    let cpu_per_call: Vec<Option<f64>> = sessions
        .iter()
        .zip(&cpu_before)
        .map(|(s, before)| Some((cpu_us(s.child.id())? - (*before)?) / s.samples.len() as f64))
        .collect();
    let proxy_pid = sessions[2].child.id();
    std::thread::sleep(Duration::from_millis(if bench { 3000 } else { 200 }));
    let idle_rss = rss_kib(proxy_pid, "VmRSS:");
    let peak_rss = rss_kib(proxy_pid, "VmHWM:");
    let anon_rss = rss_kib(proxy_pid, "RssAnon:");
    let stats: Vec<(&str, Summary)> = sessions
        .iter()
        .map(|s| (s.name, summary(&s.samples)))
        .collect();
    // Every call through the proxy is one span at the collector once the proxy has ended
    // (closing its stdin, as a client does), its last partial batch included.
    let mut proxy_calls = sessions[2].next_id - 1;
    drop(sessions);

    // A fresh proxy that has served a few calls and then sits idle.
    let fresh_rss = {
        let mut s = Session::start("proxy", &proxy_cmd(&echo), &proxy_env);
        for _ in 0..10 {
            s.call();
        }
        proxy_calls += 10;
        std::thread::sleep(Duration::from_millis(if bench { 1000 } else { 100 }));
        rss_kib(s.child.id(), "VmRSS:")
    };
    // Read before the throughput runs, whose unanswered calls (cat echoes each request back)
    // are recorded only when evicted or at the end.
    let spans = collector.spans_received();
    assert_eq!(
        spans,
        Some(proxy_calls),
        "spans the collector received against the calls made through the proxy"
    );

    let n = if bench { 200_000 } else { 1_000 };
    let cat = "cat".to_owned();
    let tp_direct = throughput(std::slice::from_ref(&cat), &[], n);
    let tp_relay = throughput(&[relay.clone(), cat.clone()], &[], n);
    let tp_proxy = throughput(&proxy_cmd(&cat), &proxy_env, n);

    if !bench {
        println!(
            "proxy_latency: smoke run ok (run `cargo bench --bench proxy_latency` for figures)"
        );
        return;
    }
    let samples = rounds * per_round;
    println!(
        "proxy_latency: {samples} tools/call per hop, {rounds} interleaved rounds; µs per call"
    );
    println!("hop      p50      p90      p99     mean");
    for (name, s) in &stats {
        println!(
            "{name:<6} {:>7.1}  {:>7.1}  {:>7.1}  {:>7.1}",
            s.p50, s.p90, s.p99, s.mean
        );
    }
    let d = &stats[0].1;
    let r = &stats[1].1;
    let p = &stats[2].1;
    let (relay50, relay99) = (r.p50 - d.p50, r.p99 - d.p99);
    let (proxy50, proxy99) = (p.p50 - d.p50, p.p99 - d.p99);
    println!("added by the relay: p50 {relay50:.1} µs, p99 {relay99:.1} µs");
    println!("added by the proxy: p50 {proxy50:.1} µs, p99 {proxy99:.1} µs");
    println!(
        "ratio proxy/relay: p50 {:.2} (target ≤ 1.3), p99 {:.2} (target ≤ 2)",
        proxy50 / relay50,
        proxy99 / relay99
    );
    let cpu = |i: usize| cpu_per_call[i].map_or("?".to_owned(), |v| format!("{v:.1}"));
    println!(
        "CPU per call (all threads of the hop's process): server alone {} µs, relay {} µs, \
         proxy {} µs (the proxy's includes parsing, observation and span export)",
        cpu(0),
        cpu(1),
        cpu(2)
    );
    println!(
        "throughput, {n} small messages pipelined to cat and back: direct {tp_direct:.0}/s, \
         relay {tp_relay:.0}/s, proxy {tp_proxy:.0}/s (target ≥ 50000)"
    );
    println!(
        "proxy RSS: idle after 10 calls {} KiB (target ≤ 15360); after the latency run: {} KiB \
         ({} KiB anonymous), peak {} KiB",
        fresh_rss.map_or("?".into(), |v| v.to_string()),
        idle_rss.map_or("?".into(), |v| v.to_string()),
        anon_rss.map_or("?".into(), |v| v.to_string()),
        peak_rss.map_or("?".into(), |v| v.to_string())
    );
    println!(
        "spans the collector received from the proxies: {} of {proxy_calls} calls",
        spans.map_or("?".into(), |v| v.to_string())
    );
}
