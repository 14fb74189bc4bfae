//! Attacks on `collect`'s receivers over loopback, each bounded in time: unauthenticated
//! connections holding large declared bodies, slow headers, slow bodies, idle connections, and
//! a low descriptor limit with every listener flooded. Memory (VmRSS) and CPU (utime + stime)
//! of the collect process are read from /proc.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mcp-otel");
const TOKEN: &str = "a-token-of-twenty-chars";

/// The limits the attacks run against (short, so the tests are quick).
const LIMITS: &str =
    "[limits]\nheader_timeout = \"1s\"\nbody_timeout = \"2s\"\nidle_timeout = \"2s\"\n";

struct Collect {
    child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
    metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Collect {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `collect` (through `sh`, with `ulimit -n` when given) with the short limits and the
/// token, and waits for its start-up line.
fn start(nofile: Option<u32>) -> Collect {
    start_with(LIMITS, nofile)
}

/// [`start`] with `limits` (TOML `[limits]`) instead of the short ones.
fn start_with(limits: &str, nofile: Option<u32>) -> Collect {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("collect.toml");
    std::fs::write(&config, limits).unwrap();
    let ulimit = nofile.map_or(String::new(), |n| format!("ulimit -n {n} || exit 9; "));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("{ulimit}exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(["collect", "--audit", "none", "--token", TOKEN, "--config"])
        .arg(&config)
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no start-up line");
        let line = lines.next().expect("collect exited").unwrap();
        // "mcp-otel collect: OTLP/gRPC on A, OTLP/HTTP on B, metrics on http://C/metrics"
        let Some(rest) = line.strip_prefix("mcp-otel collect: OTLP/gRPC on ") else {
            continue;
        };
        let addr = |s: &str| s.trim().trim_start_matches("http://").parse().unwrap();
        let mut parts = rest.split(',');
        let grpc = addr(parts.next().unwrap());
        let http = addr(
            parts
                .next()
                .unwrap()
                .trim()
                .trim_start_matches("OTLP/HTTP on "),
        );
        let metrics = addr(
            parts
                .next()
                .unwrap()
                .trim()
                .trim_start_matches("metrics on ")
                .trim_end_matches("/metrics"),
        );
        std::thread::spawn(move || for _ in lines {});
        return Collect {
            child,
            grpc,
            http,
            metrics,
            _dir: dir,
        };
    }
}

fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn rss_mib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:") / 1024
}

/// CPU time (user + system) the process used so far.
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = after_name
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis((f[11] + f[12]) * 1000 / hz.max(1))
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    s
}

/// `GET /healthz` answers `ok` within 2 s.
fn healthz(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200") && out.ends_with("ok\n")
}

/// Reads until the peer closes (or the read timeout): what it sent, and when it closed.
fn until_closed(s: &mut TcpStream) -> (String, Option<Instant>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&out).into(), Some(Instant::now())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&out).into(), Some(Instant::now()));
            }
            Err(_) => return (String::from_utf8_lossy(&out).into(), None),
        }
    }
}

/// On a thread: connects to `addr`, sends `head`, then `byte` every 200 ms (8 s at most) until
/// the peer closes; returns what the peer sent and how long after sending `head` it closed.
fn drip(
    addr: SocketAddr,
    head: Vec<u8>,
    byte: &'static [u8],
) -> std::thread::JoinHandle<(String, Option<Duration>)> {
    std::thread::spawn(move || {
        let mut s = connect(addr);
        s.write_all(&head).unwrap();
        let opened = Instant::now();
        let mut r = s.try_clone().unwrap();
        let reader = std::thread::spawn(move || until_closed(&mut r));
        while s.write_all(byte).is_ok() && opened.elapsed() < Duration::from_secs(8) {
            std::thread::sleep(Duration::from_millis(200));
        }
        let (answer, closed) = reader.join().unwrap();
        (answer, closed.map(|c| c - opened))
    })
}

/// 64 connections declare 64 MiB bodies without a token and send the first MiB: each is
/// answered 401 at once and closed, nothing is read, and the process's memory stays where it
/// was (before: the whole body was read first, 32 connections pinned 2 GB).
#[test]
fn unauthenticated_large_bodies_are_refused_unread() {
    let collect = start(None);
    let pid = collect.child.id();
    let before = rss_mib(pid);
    let started = Instant::now();
    let mut held: Vec<TcpStream> = (0..64)
        .map(|_| {
            let mut s = connect(collect.http);
            s.write_all(
                b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
                  Content-Length: 67108864\r\n\r\n",
            )
            .unwrap();
            let _ = s.write_all(&vec![0x0a; 1024 * 1024]);
            s
        })
        .collect();
    let peak = rss_mib(pid);
    for s in &mut held {
        let (answer, closed) = until_closed(s);
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer:?}");
        assert!(closed.is_some(), "the connection stays open");
    }
    let refused_in = started.elapsed();
    let after = rss_mib(pid);
    eprintln!(
        "64 unauthenticated 64 MiB bodies: refused in {refused_in:?}; VmRSS {before} MiB before, \
         {peak} MiB while sending, {after} MiB after"
    );
    assert!(refused_in < Duration::from_secs(10), "{refused_in:?}");
    assert!(
        peak.max(after) < before + 64,
        "{before} → {peak} → {after} MiB"
    );
    assert!(healthz(collect.metrics));
}

/// Slow headers, a slow body (with the token), a connection that sends nothing and a kept-alive
/// one that goes quiet are all closed once their timeout passed (1 s for a request head, also
/// the next one on a kept-alive HTTP/1.1 connection; 2 s for bodies and for an idle gRPC
/// connection), on OTLP/HTTP, `/metrics` and OTLP/gRPC alike.
#[test]
fn slow_and_idle_connections_are_closed_after_their_timeout() {
    let collect = start(None);
    let t0 = Instant::now();
    // Slow headers: a byte every 200 ms, for ever.
    let slow_head = drip(
        collect.http,
        b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n".to_vec(),
        b"X",
    );
    // A slow body: the token, 1000 bytes declared, a byte every 200 ms.
    let slow_body = drip(
        collect.http,
        format!(
            "POST /v1/traces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/x-protobuf\r\nContent-Length: 1000\r\n\r\n"
        )
        .into_bytes(),
        b"\x0a",
    );
    let silent = |addr| {
        std::thread::spawn(move || {
            let mut s = connect(addr);
            let opened = Instant::now();
            until_closed(&mut s).1.map(|c| c - opened)
        })
    };
    let silent_http = silent(collect.http);
    let silent_grpc = silent(collect.grpc);
    // Kept alive after one request, then quiet.
    let mut kept = connect(collect.metrics);
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    kept.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let answered = Instant::now();
    let kept_closed = until_closed(&mut kept).1.map(|c| c - answered);

    let head = slow_head
        .join()
        .unwrap()
        .1
        .expect("slow headers never closed");
    let (answer, body) = slow_body.join().unwrap();
    let body = body.expect("slow body never closed");
    let silent_http = silent_http
        .join()
        .unwrap()
        .expect("silent HTTP never closed");
    let silent_grpc = silent_grpc
        .join()
        .unwrap()
        .expect("silent gRPC never closed");
    let kept_closed = kept_closed.expect("idle keep-alive never closed");
    eprintln!(
        "closed after: slow headers {head:?}, slow body {body:?} ({}), silent HTTP \
         {silent_http:?}, silent gRPC {silent_grpc:?}, idle keep-alive {kept_closed:?}",
        answer.lines().next().unwrap_or("no answer")
    );
    let within = |d: Duration, limit: u64| {
        d >= Duration::from_millis(limit * 1000 - 100) && d < Duration::from_secs(limit + 2)
    };
    assert!(within(head, 1), "{head:?}");
    assert!(within(body, 2), "{body:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(within(silent_http, 1), "{silent_http:?}");
    assert!(within(silent_grpc, 2), "{silent_grpc:?}");
    // HTTP/1.1 waits for the next request head at most the header timeout (hyper's).
    assert!(within(kept_closed, 1), "{kept_closed:?}");
    assert!(t0.elapsed() < Duration::from_secs(15));
    assert!(healthz(collect.metrics));
}

/// Under `ulimit -n 64`, 150 connections on each listener: collect accepts only its share per
/// listener (the rest wait in the kernel's backlog), its CPU stays low, `/healthz` answers while
/// the receivers are flooded, and again once the flood on its own listener is released.
#[test]
fn a_descriptor_flood_leaves_healthz_answering_and_the_cpu_idle() {
    let collect = start(Some(64));
    let pid = collect.child.id();
    let flood = |addr: SocketAddr| -> Vec<TcpStream> {
        (0..150)
            .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok())
            .collect()
    };
    let receivers: Vec<TcpStream> = [collect.grpc, collect.http]
        .into_iter()
        .flat_map(flood)
        .collect();
    assert!(receivers.len() >= 200, "{} connected", receivers.len());
    assert!(
        healthz(collect.metrics),
        "/healthz while the receivers are flooded"
    );
    let ops = flood(collect.metrics);
    let (cpu0, t0) = (cpu(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu(pid) - cpu0;
    let share = used.as_secs_f64() / t0.elapsed().as_secs_f64();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    eprintln!(
        "ulimit -n 64, {} connections: collect holds {fds} descriptors, used {used:?} CPU in \
         {:?} ({:.1} %)",
        receivers.len() + ops.len(),
        t0.elapsed(),
        share * 100.0
    );
    assert!(share < 0.2, "CPU {:.1} %", share * 100.0);
    assert!(fds <= 64);
    drop(ops);
    let released = Instant::now();
    while !healthz(collect.metrics) {
        assert!(
            released.elapsed() < Duration::from_secs(10),
            "/healthz never came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("/healthz answered {:?} after release", released.elapsed());
    drop(receivers);
}

/// 12 authenticated connections each send a gzip bomb (80 KiB that inflate to 80 MiB of
/// zeros) at once, against a 65 MiB budget of body bytes in flight: the inflated bytes come out
/// of that budget, so the process's peak memory (VmHWM) grows by about one budget, whatever the
/// number of connections; each bomb is refused (413 past the 64 MiB message limit, or 503 when
/// the budget has no room for it now) and `/healthz` answers throughout. Before: each request inflated outside the budget, into a
/// buffer that doubled past the limit, as many at once as there are worker threads.
#[test]
fn gzip_bombs_inflate_within_the_body_budget() {
    let collect = start_with(
        "[limits]\nheader_timeout = \"5s\"\nbody_timeout = \"120s\"\nidle_timeout = \"120s\"\n\
         body_bytes_in_flight = 68157440\n",
        None,
    );
    let pid = collect.child.id();
    let bomb: Vec<u8> = {
        use flate2::{Compression, write::GzEncoder};
        let mut gz = GzEncoder::new(Vec::new(), Compression::best());
        let zeros = vec![0u8; 1024 * 1024];
        for _ in 0..80 {
            gz.write_all(&zeros).unwrap();
        }
        gz.finish().unwrap()
    };
    let before = status_field(pid, "VmHWM:") / 1024;
    let started = Instant::now();
    let senders: Vec<_> = (0..12)
        .map(|_| {
            let addr = collect.http;
            let bomb = bomb.clone();
            std::thread::spawn(move || send_gzip(addr, &bomb))
        })
        .collect();
    let mut healthy = true;
    while !senders.iter().all(|t| t.is_finished()) {
        healthy &= healthz(collect.metrics);
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "bombs still pending"
        );
    }
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for t in senders {
        let answer = t.join().unwrap();
        *statuses
            .entry(answer.chars().take(12).collect())
            .or_default() += 1;
    }
    // Past the message limit (413), or no room in the budget now (503, which OTLP retries).
    assert!(
        statuses
            .keys()
            .all(|s| s == "HTTP/1.1 413" || s == "HTTP/1.1 503"),
        "{statuses:?}"
    );

    let peak = status_field(pid, "VmHWM:") / 1024;
    eprintln!(
        "12 gzip bombs (80 KiB → 80 MiB) against a 65 MiB budget: answered in {:?} \
         ({statuses:?}); VmHWM {before} MiB before, {peak} MiB after",
        started.elapsed()
    );
    assert!(healthy, "/healthz stopped answering");
    assert!(peak < before + 64 + 32, "{before} → {peak} MiB");
    // Alone, a bomb gets the budget (its 80 KiB and the 64 MiB limit fit): inflated up to
    // the limit, then refused.
    let answer = send_gzip(collect.http, &bomb);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:.200}");
}

/// Posts `gzip` as an authenticated gzip-encoded export; returns the answer.
fn send_gzip(addr: SocketAddr, gzip: &[u8]) -> String {
    let mut s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/x-protobuf\r\nContent-Encoding: gzip\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        gzip.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(gzip).unwrap();
    until_closed(&mut s).0
}
