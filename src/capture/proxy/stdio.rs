//! The stdio proxy: spawns the server, relays newline-delimited JSON-RPC both ways, and hands a
//! copy of every complete line to the observer.
//!
//! Each direction is one plain thread doing blocking reads and writes, like the minimal byte
//! relay it is measured against: no async runtime hop on the path. The bytes written are the
//! bytes read, in order. The exceptions are a `tools/call` that gets a `traceparent` spliced
//! into its `_meta` (unless injection is off), and the proxy's own before-state reads: these
//! go to the server with ids in the proxy's own id space (`"mcp-otel-proxy-N"`), and their
//! answers are taken out of the server's stream, so the client never sees either.
//!
//! The server's stderr is inherited. The proxy ends when the server exits (after the client
//! closed stdin, which closes the server's stdin, or on its own) and reports its exit status.

use super::ProxyError;
use super::before::{self, OWN_ID_PREFIX, OwnIds};
use super::config::{BeforeCapture, ProxyConfig};
use super::frame::{LineFramer, Piece, RawReason};
use super::inject::{CallPlan, first_tools_call, plan_call};
use super::observe::{
    Direction, Event, ObserverHandle, Prepared, PreparedCalls, ProxyStats, Scope, Unobserved,
};
use bytes::Bytes;
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Lines longer than this are relayed without being observed (16 MiB).
pub const DEFAULT_MAX_LINE: usize = 16 * 1024 * 1024;
const READ_BUFFER: usize = 64 * 1024;

/// How the stdio proxy runs.
#[derive(Clone, Debug)]
pub struct StdioOptions {
    /// The server command and its arguments.
    pub command: Vec<OsString>,
    /// Splice the proxy span's `traceparent` into calls that carry none.
    pub inject: bool,
    pub tools: Arc<ProxyConfig>,
    /// Observation limit per line.
    pub max_line: usize,
}

/// State shared by the two relay threads.
struct Relay {
    observer: ObserverHandle,
    scope: Arc<Scope>,
    inject: bool,
    tools: Arc<ProxyConfig>,
    /// Parse `tools/call` lines on the way in (injection or before-state capture is on).
    intercept: bool,
    /// The proxy's own requests awaiting the server's answer, by id JSON text.
    own: Mutex<HashMap<String, Sender<Vec<u8>>>>,
    own_active: AtomicUsize,
    own_ids: OwnIds,
}

/// Scratch space the client pump keeps between rewrites.
const SCRATCH_KEEP: usize = 1 << 20;

impl Relay {
    fn stats(&self) -> &ProxyStats {
        self.observer.stats()
    }

    fn observe(&self, dir: Direction, bytes: &[u8], at: Instant, prepared: PreparedCalls) {
        self.observer.send(Event::Messages {
            scope: self.scope.clone(),
            dir,
            bytes: Bytes::copy_from_slice(bytes),
            at,
            prepared,
        });
    }

    fn unobserved(&self, dir: Direction, len: usize, why: RawReason) {
        let why = match why {
            RawReason::Oversize => Unobserved::Oversize,
            RawReason::NotJson | RawReason::Unterminated => Unobserved::NotJson,
        };
        self.observer.send(Event::Unobserved { dir, len, why });
    }

    /// Complete client lines → the server, with `tools/call`s prepared (and maybe rewritten).
    /// `out` is scratch space, kept by the caller so that rewriting does not allocate.
    fn client_lines(
        &self,
        lines: &[u8],
        at: Instant,
        server: &mut impl Write,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        // Observation is queued before the bytes leave, so the observer never sees an answer
        // before its request.
        let first_mention = match self.intercept {
            true => first_tools_call(lines),
            false => None,
        };
        let Some(first_mention) = first_mention else {
            self.observe(Direction::ClientToServer, lines, at, PreparedCalls::new());
            return server.write_all(lines);
        };
        let mut prepared = PreparedCalls::new();
        out.clear();
        let mut copied = 0; // input up to here is in `out` (or already written)
        let mut observed = 0; // input up to here is queued for the observer
        let mut start = 0;
        while start < lines.len() {
            let end = memchr::memchr(b'\n', &lines[start..]).map_or(lines.len(), |i| start + i + 1);
            let line = &lines[start..end];
            // Lines before the first mention cannot be calls; the one holding it is checked.
            let mentions =
                end > first_mention && (start <= first_mention || first_tools_call(line).is_some());
            if mentions && let Some(plan) = plan_call(line, self.inject) {
                let before = self.tools.tool(&plan.tool).and_then(|t| t.before.as_ref());
                if plan.splice.is_some() || before.is_some() {
                    out.extend_from_slice(&lines[copied..start]);
                    copied = end;
                    let before = match before {
                        Some(b) => {
                            // The read must reach the server before the write it precedes, and
                            // what the client sent before this line goes first.
                            let earlier = std::mem::take(&mut prepared);
                            self.observe(
                                Direction::ClientToServer,
                                &lines[observed..start],
                                at,
                                earlier,
                            );
                            observed = start;
                            server.write_all(out)?;
                            out.clear();
                            Some(self.capture_before(b, &plan, server)?)
                        }
                        None => None,
                    };
                    match &plan.splice {
                        Some(splice) => {
                            splice.write(line, out);
                            ProxyStats::add(&self.stats().injected, 1);
                        }
                        None => out.extend_from_slice(line),
                    }
                    prepared.push(Prepared {
                        id: plan.id,
                        ids: plan.ids,
                        before,
                    });
                }
            }
            start = end;
        }
        if observed < lines.len() {
            self.observe(Direction::ClientToServer, &lines[observed..], at, prepared);
        }
        if out.is_empty() {
            return server.write_all(&lines[copied..]);
        }
        out.extend_from_slice(&lines[copied..]);
        let written = server.write_all(out);
        // Keep small scratch space; give back what a huge rewritten line took.
        if out.capacity() > SCRATCH_KEEP {
            *out = Vec::new();
        }
        written
    }

    /// Sends the configured read call for `plan` and waits for its answer.
    fn capture_before(
        &self,
        capture: &BeforeCapture,
        plan: &CallPlan<'_>,
        server: &mut impl Write,
    ) -> std::io::Result<Result<serde_json::Value, String>> {
        let read = match before::prepare(capture, plan, &self.own_ids, self.stats()) {
            Ok(read) => read,
            Err(e) => return Ok(Err(e)),
        };
        let key = serde_json::to_string(&read.id).expect("a string serialises");
        let (tx, rx) = channel();
        self.own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), tx);
        self.own_active.fetch_add(1, Ordering::SeqCst);
        let sent = server.write_all(&read.request);
        let answer = match sent {
            Ok(()) => rx.recv_timeout(read.timeout()).ok(),
            Err(_) => None,
        };
        self.own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        self.own_active.fetch_sub(1, Ordering::SeqCst);
        sent?;
        let answer = answer.map_or(before::Answer::NoAnswer, before::Answer::Reply);
        Ok(before::conclude(&read, answer, self.stats()))
    }

    /// If `line` answers one of the proxy's own requests, hands it over and returns true.
    fn take_own_answer(&self, line: &[u8]) -> bool {
        #[derive(serde::Deserialize)]
        struct Id<'a> {
            #[serde(borrow)]
            id: Option<&'a serde_json::value::RawValue>,
        }
        let Some(id) = serde_json::from_slice::<Id>(line).ok().and_then(|i| i.id) else {
            return false;
        };
        let Ok(id) = serde_json::from_str::<String>(id.get()) else {
            return false;
        };
        let key = serde_json::to_string(&id).expect("a string serialises");
        match self
            .own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key)
        {
            Some(tx) => {
                let _ = tx.send(line.to_vec());
                true
            }
            None => false,
        }
    }

    /// Complete server lines → the client, minus answers to the proxy's own requests.
    fn server_lines(
        &self,
        lines: &[u8],
        at: Instant,
        client: &mut impl Write,
    ) -> std::io::Result<()> {
        if self.own_active.load(Ordering::SeqCst) == 0
            || memchr::memmem::find(lines, OWN_ID_PREFIX.as_bytes()).is_none()
        {
            // Queued before the bytes leave, like the client side: a server request is seen
            // before the client's answer to it.
            self.observe(Direction::ServerToClient, lines, at, PreparedCalls::new());
            client.write_all(lines)?;
            return client.flush();
        }
        let mut kept = Vec::with_capacity(lines.len());
        for line in lines.split_inclusive(|b| *b == b'\n') {
            let own = memchr::memmem::find(line, OWN_ID_PREFIX.as_bytes()).is_some()
                && self.take_own_answer(line);
            if !own {
                kept.extend_from_slice(line);
            }
        }
        if !kept.is_empty() {
            self.observe(Direction::ServerToClient, &kept, at, PreparedCalls::new());
            client.write_all(&kept)?;
            client.flush()?;
        }
        Ok(())
    }
}

/// Writes that fail once (the peer is gone) are dropped from then on, so the other side can
/// still be drained to its end.
struct Sink<W> {
    inner: W,
    gone: bool,
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.gone {
            return Ok(buf.len());
        }
        match self.inner.write_all(buf) {
            Ok(()) => Ok(buf.len()),
            Err(_) => {
                self.gone = true;
                Ok(buf.len())
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.gone && self.inner.flush().is_err() {
            self.gone = true;
        }
        Ok(())
    }
}

fn pump(
    mut input: impl Read,
    max_line: usize,
    mut on_piece: impl FnMut(Piece<'_>, Instant, bool) -> std::io::Result<()>,
    on_bytes: impl Fn(usize),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut framer = LineFramer::new(max_line);
    // Only the first raw piece of a line is reported, so a long line counts once.
    let mut in_raw_line = false;
    let mut on_piece = move |piece: Piece<'_>, at: Instant| match piece {
        Piece::Raw(bytes, why) => {
            let first = !in_raw_line;
            in_raw_line = !bytes.ends_with(b"\n");
            on_piece(Piece::Raw(bytes, why), at, first)
        }
        lines => {
            in_raw_line = false;
            on_piece(lines, at, false)
        }
    };
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let at = Instant::now();
        on_bytes(n);
        framer.push(&buf[..n], |p| on_piece(p, at))?;
    }
    let at = Instant::now();
    framer.finish(|p| on_piece(p, at))
}

/// Spawns `options.command` and relays between it and (`client_in`, `client_out`) until the
/// server exits; returns its exit status.
pub fn run(
    options: StdioOptions,
    observer: ObserverHandle,
    client_in: impl Read + Send + 'static,
    client_out: impl Write,
) -> Result<ExitStatus, ProxyError> {
    let (program, args) = options
        .command
        .split_first()
        .ok_or_else(|| ProxyError::Usage("no server command after `--`".into()))?;
    let mut child: Child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| ProxyError::Spawn {
            command: program.to_string_lossy().into_owned(),
            source,
        })?;
    let server_in: ChildStdin = child.stdin.take().expect("stdin is piped");
    let server_out = child.stdout.take().expect("stdout is piped");
    let relay = Arc::new(Relay {
        observer: observer.clone(),
        scope: Arc::new(Scope {
            session: Arc::from("stdio"),
            ..Scope::default()
        }),
        inject: options.inject,
        intercept: options.inject || options.tools.has_before_capture(),
        tools: options.tools.clone(),
        own: Mutex::new(HashMap::new()),
        own_active: AtomicUsize::new(0),
        own_ids: OwnIds::default(),
    });
    let max_line = options.max_line;

    let c2s = relay.clone();
    std::thread::Builder::new()
        .name("mcp-otel-client-in".into())
        .spawn(move || {
            let mut server = Sink {
                inner: server_in,
                gone: false,
            };
            let stats = c2s.observer.stats().clone();
            let mut scratch = Vec::new();
            let _ = pump(
                client_in,
                max_line,
                |piece, at, first| match piece {
                    Piece::Lines(lines) => c2s.client_lines(lines, at, &mut server, &mut scratch),
                    Piece::Raw(bytes, why) => {
                        server.write_all(bytes)?;
                        if first {
                            c2s.unobserved(Direction::ClientToServer, bytes.len(), why);
                        }
                        Ok(())
                    }
                },
                |n| ProxyStats::add(&stats.bytes_from_client, n as u64),
            );
            // Dropping the pipe closes the server's stdin: the client has gone.
        })
        .map_err(|source| ProxyError::Io {
            what: "starting the client relay thread".into(),
            source,
        })?;

    let mut client = Sink {
        inner: client_out,
        gone: false,
    };
    let stats = observer.stats().clone();
    let _ = pump(
        server_out,
        max_line,
        |piece, at, first| match piece {
            Piece::Lines(lines) => relay.server_lines(lines, at, &mut client),
            Piece::Raw(bytes, why) => {
                client.write_all(bytes)?;
                client.flush()?;
                if first {
                    relay.unobserved(Direction::ServerToClient, bytes.len(), why);
                }
                Ok(())
            }
        },
        |n| ProxyStats::add(&stats.bytes_from_server, n as u64),
    );
    // No more answers can come: wake any before-state read still waiting.
    relay.own.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let status = child.wait().map_err(|source| ProxyError::Io {
        what: "waiting for the server to exit".into(),
        source,
    })?;
    observer.send(Event::ServerExited { at: Instant::now() });
    Ok(status)
}

/// The exit code a shell would report for `status` (128 + signal when killed).
pub fn exit_code(status: ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        return u8::try_from(code & 0xff).unwrap_or(1);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return u8::try_from((128 + sig) & 0xff).unwrap_or(1);
        }
    }
    1
}
