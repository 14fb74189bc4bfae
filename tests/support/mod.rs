//! The one test support module, shared by every file in `tests/` (`mod support;`) and by the
//! benches that need peers (`#[path = "../tests/support/mod.rs"]`): where the real peers are
//! (the official MCP Python SDK client `tests/peers/mcp_drive.py`, the independent OTLP/gRPC
//! receiver `tests/peers/otlp_receive.py`, the npm MCP servers, this crate's example binaries
//! built with the caller's own profile), bounded child processes, and the fixtures of the
//! proxy ([`proxy`]) and audit ([`audit`]) tests.
//!
//! The peers are installed by `bash scripts/setup-peers.sh`. The test command exports
//! `MCP_OTEL_PYTHON` (the venv's python) and `MCP_OTEL_PEERS` (the `tests/peers` folder); without
//! them the defaults under `CARGO_MANIFEST_DIR` are used. A missing peer fails the test with a
//! message naming the setup command: a test that cannot run its peer must never pass silently.
//!
//! Every child process runs on loopback and every wait is bounded: a hung peer fails the test
//! with what it printed so far instead of hanging the suite.

#![allow(dead_code)] // each test file uses its own subset of these helpers

pub mod audit;
pub mod http;
pub mod pg;
pub mod proxy;
pub mod spans;

use serde_json::Value;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const SETUP_HINT: &str = "run `bash scripts/setup-peers.sh` from the repository root";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `path`, which must be a file: else panics naming `what`, the variable `var` that chose it,
/// and the setup command.
fn existing(path: PathBuf, what: &str, var: &str) -> PathBuf {
    assert!(
        path.is_file(),
        "{what} {} does not exist ({var}={:?}): {SETUP_HINT}",
        path.display(),
        std::env::var_os(var),
    );
    path
}

/// The interpreter that `var` names, else `<manifest dir>/<default>`. Panics, naming `what`,
/// `var` and the setup command, when it does not exist.
fn interpreter(var: &str, default: &str, what: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join(default));
    existing(path, what, var)
}

/// The Python interpreter of the peers' venv (`MCP_OTEL_PYTHON`, else `.venv/bin/python`).
///
/// Panics, naming the setup command, when it does not exist.
pub fn python() -> PathBuf {
    interpreter(
        "MCP_OTEL_PYTHON",
        ".venv/bin/python",
        "the test peers' Python interpreter",
    )
}

/// The OpenLLMetry venv's interpreter (`MCP_OTEL_PYTHON_OPENLLMETRY`, else
/// `.venv-openllmetry/bin/python`). Panics, naming the setup command, when it is missing.
pub fn openllmetry_python() -> PathBuf {
    interpreter(
        "MCP_OTEL_PYTHON_OPENLLMETRY",
        ".venv-openllmetry/bin/python",
        "the OpenLLMetry peers' Python interpreter",
    )
}

/// The peers folder (`MCP_OTEL_PEERS`, else `tests/peers`).
pub fn peers_dir() -> PathBuf {
    std::env::var_os("MCP_OTEL_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("tests/peers"))
}

/// A script in the peers folder, e.g. `mcp_drive.py`: this checkout's own (scripts are source),
/// else the one in `MCP_OTEL_PEERS`. Panics clearly when it is missing.
pub fn peer_script(name: &str) -> PathBuf {
    let own = manifest_dir().join("tests/peers").join(name);
    let path = if own.is_file() {
        own
    } else {
        peers_dir().join(name)
    };
    existing(path, "the test peer", "MCP_OTEL_PEERS")
}

/// `node …/dist/index.js` of an npm MCP server (`server-memory`, `server-everything`).
pub fn npm_server(name: &str) -> Vec<String> {
    let js = peers_dir().join(format!(
        "node_modules/@modelcontextprotocol/{name}/dist/index.js"
    ));
    assert!(
        js.is_file(),
        "the npm test peer {name} is missing at {} (MCP_OTEL_PEERS={:?}): {SETUP_HINT}",
        js.display(),
        std::env::var_os("MCP_OTEL_PEERS"),
    );
    let mut cmd = vec!["node".to_owned(), js.display().to_string()];
    if name == "server-everything" {
        cmd.push("stdio".to_owned());
    }
    cmd
}

/// A fresh temporary folder, removed when the returned value is dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mcp-otel-test-")
        .tempdir()
        .expect("cannot create a temporary folder")
}

/// `target/<profile>` of the running test binary (which lives in `target/<profile>/deps`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's own path");
    let deps = exe.parent().expect("the test binary has a parent folder");
    assert_eq!(
        deps.file_name(),
        Some(OsStr::new("deps")),
        "expected the test binary {} to live in target/<profile>/deps",
        exe.display()
    );
    deps.parent()
        .expect("target/<profile> above deps/")
        .to_path_buf()
}

/// Builds the example `name` with the test binary's profile (once per test process) and returns
/// the path of its executable in `target/<profile>/examples/`.
pub fn example_bin(name: &str) -> PathBuf {
    example_bin_as(name, None)
}

/// [`example_bin`] with the cargo profile `profile` (`bench` for a harness that `cargo bench`
/// runs: building it as `release` would rebuild the crate in the folder the two share).
pub fn example_bin_as(name: &str, profile: Option<&str>) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let profile_dir = profile_dir();
    let dir_name = profile_dir
        .file_name()
        .and_then(OsStr::to_str)
        .expect("a UTF-8 profile folder name");
    // Cargo names the folder of the `dev` profile `debug`; every other profile by its name.
    let profile = profile.unwrap_or(if dir_name == "debug" { "dev" } else { dir_name });
    let target_dir = profile_dir
        .parent()
        .expect("target/ above target/<profile>");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--quiet")
        .args(["--example", name, "--profile", profile])
        .arg("--manifest-path")
        .arg(manifest_dir().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    let out = run_bounded(&mut cmd, Duration::from_secs(600));
    assert!(
        out.status.success(),
        "`cargo build --example {name} --profile {profile}` failed ({}):\n{}",
        out.status,
        out.stderr
    );
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "cargo built the example {name} but {} does not exist",
        path.display()
    );
    built.insert(name.to_owned(), path.clone());
    path
}

/// What a finished child process printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `cmd` to completion with piped output; kills it and panics with its output so far when
/// it runs longer than `timeout`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Finished {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let stdout = read_all_in_background(child.stdout.take().expect("piped stdout"));
    let stderr = read_all_in_background(child.stderr.take().expect("piped stderr"));
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a child process") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {timeout:?}\n--- stdout:\n{}\n--- stderr:\n{}",
                stdout.lock().unwrap(),
                stderr.lock().unwrap()
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    // The pipes close when the child exits, unless a grandchild inherited them: give the reader
    // threads a moment, then take what they have.
    let drained = Instant::now();
    while Arc::strong_count(&stdout) + Arc::strong_count(&stderr) > 2
        && drained.elapsed() < Duration::from_secs(5)
    {
        thread::sleep(Duration::from_millis(5));
    }
    let take = |buf: Arc<Mutex<String>>| std::mem::take(&mut *buf.lock().unwrap());
    Finished {
        status,
        stdout: take(stdout),
        stderr: take(stderr),
        elapsed: started.elapsed(),
    }
}

/// Runs `cmd` (no stdin, 30 s at most), which must refuse to start: asserts that it exits
/// non-zero and returns its stderr, where the reason is.
pub fn start_up_error(cmd: &mut Command) -> String {
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert!(!out.status.success(), "{cmd:?} started: {out:?}");
    out.stderr
}

/// Reads `source` to its end on a thread; the buffer's strong count drops back to one when done.
fn read_all_in_background(mut source: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let shared = Arc::clone(&buf);
    thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = source.read(&mut chunk) {
            if n == 0 {
                break;
            }
            shared
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    buf
}

/// `tests/peers/otlp_receive.py`, running: an independent OTLP/gRPC trace receiver on
/// `127.0.0.1:<port>`. Killed when dropped.
pub struct SpanReceiver {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl SpanReceiver {
    /// Starts the receiver; it exits by itself once `max_spans` spans arrived or after
    /// `timeout`. Waits (bounded) for its `LISTENING <port>` line.
    pub fn start(max_spans: usize, timeout: Duration) -> Self {
        let mut cmd = Command::new(python());
        cmd.arg(peer_script("otlp_receive.py"))
            .args(["--max-spans", &max_spans.to_string()])
            .args(["--timeout", &timeout.as_secs_f64().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start otlp_receive.py ({cmd:?}): {e}"));
        let stderr = read_all_in_background(child.stderr.take().expect("piped stderr"));
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "otlp_receive.py printed no `LISTENING <port>` line ({e:?}); stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        let port = first
            .strip_prefix("LISTENING ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!("otlp_receive.py's first line is not `LISTENING <port>`: {first:?}")
            });
        SpanReceiver {
            child,
            port,
            lines,
            stderr,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits up to `timeout` for at least `expected` spans, then reads on until the receiver
    /// exits (it prints every span of a batch, so more than `expected` can arrive) and returns
    /// every span line parsed. Panics, with the receiver's stderr, when fewer arrive in time.
    pub fn collect(&mut self, expected: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut spans = Vec::new();
        loop {
            // Once enough arrived, only wait a short while for the rest of the last batches.
            let limit = if spans.len() >= expected {
                (Instant::now() + Duration::from_secs(3)).min(deadline)
            } else {
                deadline
            };
            let left = limit.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let span: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                        panic!("otlp_receive.py printed a line that is not JSON ({e}): {line}")
                    });
                    spans.push(span);
                }
                // The receiver exited, or the deadline passed: the assertion below judges.
                Err(RecvTimeoutError::Disconnected | RecvTimeoutError::Timeout) => break,
            }
        }
        assert!(
            spans.len() >= expected,
            "expected {expected} span(s) within {timeout:?}, got {}: {:#?}\notlp_receive.py stderr:\n{}",
            spans.len(),
            spans.iter().map(|s| &s["name"]).collect::<Vec<_>>(),
            self.stderr.lock().unwrap()
        );
        spans
    }
}

impl Drop for SpanReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port on 127.0.0.1 where nothing listens (bound, then released): a dead collector.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// A scripted session of the official MCP Python SDK client (`tests/peers/mcp_drive.py`)
/// against a stdio server.
///
/// The server inherits the driver's environment, minus every inherited `OTEL_*` and `MCP_OTEL_*`
/// variable (so the developer's shell cannot change what a test observes), plus [`McpDrive::env`].
pub struct McpDrive {
    server: Vec<OsString>,
    client_name: Option<String>,
    env: Vec<(String, String)>,
    timeout: Duration,
}

impl McpDrive {
    /// A session with the server started as `server[0] server[1..]`.
    pub fn new<I, S>(server: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let server: Vec<OsString> = server.into_iter().map(|s| s.as_ref().into()).collect();
        assert!(!server.is_empty(), "McpDrive needs a server command");
        McpDrive {
            server,
            client_name: None,
            env: Vec::new(),
            timeout: Duration::from_secs(60),
        }
    }

    /// `clientInfo.name` sent in `initialize`.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = Some(name.into());
        self
    }

    /// A variable for the server's environment.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The longest the whole session may take (default 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs `script` (a JSON list of steps, see `tests/peers/README.md`) and returns one parsed
    /// line per step. Panics, with the driver's and the server's stderr, when the session fails.
    pub fn run(&self, script: &Value) -> Vec<Value> {
        let steps = script.as_array().expect("a script is a JSON list of steps");
        let dir = tempdir();
        let script_path = dir.path().join("script.json");
        std::fs::write(&script_path, script.to_string()).expect("write the driver's script");
        let mut cmd = Command::new(python());
        cmd.arg(peer_script("mcp_drive.py"))
            .arg("--script")
            .arg(&script_path)
            .args(["--timeout", &self.timeout.as_secs_f64().to_string()]);
        if let Some(name) = &self.client_name {
            cmd.args(["--client-name", name]);
        }
        cmd.arg("--").args(&self.server);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("OTEL_") || key.starts_with("MCP_OTEL_") {
                cmd.env_remove(key.as_ref());
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let out = run_bounded(&mut cmd, self.timeout + Duration::from_secs(10));
        assert!(
            out.status.success(),
            "mcp_drive.py failed ({}) against {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            out.status,
            self.server,
            out.stdout,
            out.stderr
        );
        let lines: Vec<Value> = out
            .stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("mcp_drive.py printed a non-JSON line ({e}): {l}"))
            })
            .collect();
        assert_eq!(
            lines.len(),
            steps.len(),
            "mcp_drive.py printed {} line(s) for {} step(s):\n{}\n--- stderr:\n{}",
            lines.len(),
            steps.len(),
            out.stdout,
            out.stderr
        );
        lines
    }
}

/// Reads a JSON-lines file, one value per non-empty line.
pub fn read_json_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| {
                panic!("{} has a line that is not JSON ({e}): {l}", path.display())
            })
        })
        .collect()
}

/// The text at `pointer` (a JSON pointer such as `/labels/alertname`) in each element of the
/// JSON array `list`, in order; panics when `list` is not an array or an element has no text there.
pub fn texts_at<'a>(list: &'a Value, pointer: &str) -> Vec<&'a str> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a JSON array: {list}"))
        .iter()
        .map(|v| {
            v.pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("no text at {pointer} in {v}"))
        })
        .collect()
}

/// An emitter exporting over OTLP/gRPC to `grpc` (a collect or receiver address), batching for
/// `delay` (a long delay means exports happen only on `flush`: one export per flush).
#[allow(dead_code)]
pub fn otlp_emitter(grpc: std::net::SocketAddr, delay: Duration) -> mcp_otel::emit::Emitter {
    use mcp_otel::emit::{BatchConfig, EmitConfig, Emitter, SpanTarget};
    Emitter::new(&EmitConfig {
        spans: SpanTarget::Otlp {
            endpoint: Some(format!("http://{grpc}")),
        },
        batch: Some(BatchConfig {
            scheduled_delay: delay,
            ..BatchConfig::default()
        }),
        ..EmitConfig::default()
    })
    .expect("an OTLP emitter")
}

pub use mcp_otel::collect::testing::export_request;

/// One OTLP/gRPC trace export of `spans` (see [`export_request`]) to the collector at `grpc`,
/// on a new connection: what the collector answered.
pub async fn export_spans(
    grpc: std::net::SocketAddr,
    spans: Vec<opentelemetry_proto::tonic::trace::v1::Span>,
) -> Result<(), tonic::Status> {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect to the collector");
    client.export(export_request(spans)).await.map(drop)
}

/// One exporter of a load harness: exports of `batch` spans (`span(n)` for call `n`) sent to
/// `client` back to back, each waiting for its acknowledgement, the call numbers taken from
/// `next` until `calls` are taken. An export that is not acknowledged panics.
pub async fn export_until(
    mut client: opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient<
        tonic::transport::Channel,
    >,
    next: Arc<std::sync::atomic::AtomicU64>,
    calls: u64,
    batch: u64,
    span: fn(u64) -> opentelemetry_proto::tonic::trace::v1::Span,
) {
    loop {
        let start = next.fetch_add(batch, std::sync::atomic::Ordering::Relaxed);
        if start >= calls {
            break;
        }
        let spans = (start..(start + batch).min(calls)).map(span).collect();
        client
            .export(export_request(spans))
            .await
            .expect("export acknowledged");
    }
}

/// An OTLP attribute `key` with the string value `v`.
pub fn string_kv(key: &str, v: &str) -> opentelemetry_proto::tonic::common::v1::KeyValue {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_owned())),
        }),
        ..Default::default()
    }
}

/// The sum of a metric's series (in Prometheus text `text`) whose lines contain every `filter`.
pub fn metric_sum(text: &str, metric: &str, filters: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `GET http://<addr>/metrics`: the Prometheus text of a collect.
pub async fn scrape_metrics(addr: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `mcp-otel collect` running as a process on loopback ports chosen by the system, with the
/// addresses read from its start-up line. Killed when dropped.
pub struct CollectProcess {
    pub child: Child,
    pub grpc: std::net::SocketAddr,
    pub http: std::net::SocketAddr,
    pub metrics: std::net::SocketAddr,
    /// Every line collect wrote to stderr so far.
    pub stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl CollectProcess {
    /// Starts `bin collect` (gRPC, HTTP and metrics on `127.0.0.1:0`) with `extra` arguments,
    /// and waits (up to 20 s) for its start-up line on stderr; stderr is drained from then on
    /// so the child never blocks on a full pipe.
    pub fn start<S: AsRef<OsStr>>(bin: impl AsRef<OsStr>, extra: &[S]) -> CollectProcess {
        Self::start_on(bin, "127.0.0.1:0", extra)
    }

    /// [`CollectProcess::start`] with OTLP/gRPC on `grpc` (e.g. where an exporter already
    /// points).
    pub fn start_on<S: AsRef<OsStr>>(
        bin: impl AsRef<OsStr>,
        grpc: &str,
        extra: &[S],
    ) -> CollectProcess {
        let mut child = Command::new(bin)
            .args([
                "collect",
                "--grpc-listen",
                grpc,
                "--http-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mcp-otel collect");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut collect = CollectProcess {
            child,
            grpc: ([0, 0, 0, 0], 0).into(),
            http: ([0, 0, 0, 0], 0).into(),
            metrics: ([0, 0, 0, 0], 0).into(),
            stderr: lines,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no start-up line from collect within 20 s: {seen:?}"));
            // "mcp-otel collect: OTLP/gRPC on A, OTLP/HTTP on B, metrics on http://C/metrics"
            if let Some(rest) = line.strip_prefix("mcp-otel collect: OTLP/gRPC on ") {
                collect.grpc = rest.split(',').next().unwrap().trim().parse().unwrap();
                // The address between `label` and `end` in the start-up line.
                let addr = |label: &str, end: char| -> std::net::SocketAddr {
                    rest.split(label)
                        .nth(1)
                        .and_then(|a| a.split(end).next())
                        .unwrap_or_else(|| panic!("no {label:?} address in {line:?}"))
                        .parse()
                        .unwrap()
                };
                collect.http = addr("OTLP/HTTP on ", ',');
                collect.metrics = addr("metrics on http://", '/');
                return collect;
            }
            seen.push(line);
        }
    }

    /// Waits up to `within` for the process to exit by itself.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "collect did not stop in {within:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for CollectProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One OTLP trace export as [`raw_trace_receiver`] got it: its ASCII gRPC metadata and the
/// request itself.
#[derive(Debug)]
pub struct RawExport {
    pub metadata: HashMap<String, String>,
    pub request: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
}

struct RawTraceService(tokio::sync::mpsc::UnboundedSender<RawExport>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for RawTraceService
{
    async fn export(
        &self,
        req: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        let metadata = req
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.to_string(), v.to_str().ok()?.to_owned()))
                }
                _ => None,
            })
            .collect();
        let _ = self.0.send(RawExport {
            metadata,
            request: req.into_inner(),
        });
        Ok(tonic::Response::new(Default::default()))
    }
}

/// An in-process OTLP/gRPC trace receiver on 127.0.0.1:0 (gzip accepted) that passes on every
/// export exactly as it arrived; returns its address and the exports.
pub async fn raw_trace_receiver() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<RawExport>,
) {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let svc = TraceServiceServer::new(RawTraceService(tx))
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    let incoming = futures::stream::unfold(listener, |l| async move {
        Some((l.accept().await.map(|(s, _)| s), l))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming),
    );
    (addr, rx)
}
