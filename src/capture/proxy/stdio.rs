//! The stdio proxy: spawns the server, relays newline-delimited JSON-RPC both ways, and hands a
//! copy of every complete line to the observer.
//!
//! Each direction is one plain thread doing blocking reads and writes, like the minimal byte
//! relay it is measured against: no async runtime hop on the path. The bytes written are the
//! bytes read, in order. The exceptions are a `tools/call` that gets a `traceparent` spliced
//! into its `_meta` (unless injection is off), and the proxy's own before-state reads: these
//! go to the server with ids in the proxy's own id space (`"mcp-otel-proxy-N"`), and their
//! answers are taken out of the server's stream, so the client never sees either. So does the
//! proxy's own `tools/list`, sent once, after the first `tools/call` of a client that has not
//! listed the tools itself: the observer needs the tools' annotations to classify the calls.
//!
//! The server's stderr is inherited. The proxy ends when the server exits (after the client
//! closed stdin, which closes the server's stdin, or on its own) and reports its exit status.
//! A signal to the proxy (SIGTERM, SIGINT, SIGHUP: see [`Stopper`]) is passed on to the server;
//! the relay runs on for a short grace, then the calls still in flight are recorded as
//! [`PROXY_TERMINATED`](crate::record::error_code::PROXY_TERMINATED) and the proxy stops with 128 + the signal.

use super::ProxyError;
use super::before::{self, OWN_ID_PREFIX, OwnIds};
use super::config::{BeforeCapture, ProxyConfig};
use super::confirm::held::{self, HeldCalls, Step};
use super::confirm::{Gate, Verdict};
use super::envelope::EnvelopeScan;
use super::frame::{LineFramer, Piece, RawReason};
use super::inject::{CallPlan, first_tools_call, plan_call};
use super::observe::{
    Direction, Event, ObserverHandle, Prepared, PreparedCalls, ProxyStats, Scope, Unobserved,
};
use super::strict::{self, Unrecordable};
use crate::record::Confirmation;
use bytes::Bytes;
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lines longer than this are not observed whole (16 MiB): they are relayed as they arrive and
/// observed by their envelope ([`super::envelope`]).
pub(crate) const DEFAULT_MAX_LINE: usize = 16 * 1024 * 1024;
const READ_BUFFER: usize = 64 * 1024;

/// How the stdio proxy runs.
#[derive(Clone, Debug)]
pub(crate) struct StdioOptions {
    /// The server command and its arguments.
    pub(crate) command: Vec<OsString>,
    /// Splice the proxy span's `traceparent` into calls that carry none.
    pub(crate) inject: bool,
    pub(crate) tools: Arc<ProxyConfig>,
    /// Observation limit per line.
    pub(crate) max_line: usize,
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
    own: Mutex<HashMap<String, OwnRequest>>,
    own_active: AtomicUsize,
    own_ids: OwnIds,
    /// The confirmation gate, when the configuration gates any call.
    gate: Option<HeldCalls>,
    /// The client's side of the pipe: the server relay writes the server's lines, the gate its
    /// questions and refusals, a whole line at a time.
    client: Mutex<Sink<Box<dyn Write + Send>>>,
    /// The tools were listed (by the client, or by the proxy's own `tools/list`).
    listed: AtomicBool,
    /// The client line past the observation limit being relayed, if any.
    client_long: Mutex<ClientLong>,
}

/// Where the answer to one of the proxy's own requests goes.
enum OwnRequest {
    /// A before-state read, waiting on the client pump.
    Before(Sender<Vec<u8>>),
    /// The proxy's own `tools/list`: to the observer, and to whoever waits for it (the gate).
    ToolsList(Option<Sender<Vec<u8>>>),
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

    fn unobserved(&self, why: RawReason) {
        let why = match why {
            RawReason::Oversize => Unobserved::Oversize,
            RawReason::NotJson | RawReason::Unterminated => Unobserved::NotJson,
        };
        self.observer.send(Event::Unobserved { why });
    }

    /// Complete client lines → the server; after the first `tools/call` of a client that did
    /// not list the tools, the proxy's own `tools/list` follows (not waited for).
    fn client_lines(
        self: &Arc<Self>,
        lines: &[u8],
        at: Instant,
        server: &mut impl Write,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        if self.observer.strict() && !self.observer.has_room() && first_tools_call(lines).is_some()
        {
            return self.refuse_unrecordable(lines, at, server, out);
        }
        if self.listed.load(Ordering::Relaxed) {
            return self.gated_lines(lines, at, server, out);
        }
        let listing = memchr::memmem::find(lines, b"\"tools/list\"").is_some();
        let calling = first_tools_call(lines).is_some();
        if listing || calling {
            self.listed.store(true, Ordering::Relaxed);
        }
        self.gated_lines(lines, at, server, out)?;
        let gate_listed = self.gate.as_ref().is_some_and(|g| g.gate().has_listed());
        if calling && !listing && !gate_listed {
            self.list_tools(at, server)?;
        }
        Ok(())
    }

    /// Client lines through the confirmation gate when there is one: lines the gate takes
    /// (gated calls, answers to its questions) are handled one by one, the others forwarded in
    /// runs as usual.
    fn gated_lines(
        self: &Arc<Self>,
        lines: &[u8],
        at: Instant,
        server: &mut impl Write,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let Some(gate) = self.gate.as_ref().filter(|_| HeldCalls::concerns(lines)) else {
            return self.forward_client_lines(lines, at, server, out, None);
        };
        let mut run = 0; // lines from here on are not yet relayed
        let mut start = 0;
        while start < lines.len() {
            let end = memchr::memchr(b'\n', &lines[start..]).map_or(lines.len(), |i| start + i + 1);
            let line = &lines[start..end];
            let (mut step, mut asked) = gate.on_client_line(line, &self.own_ids);
            if let Step::ListFirst(meta) = step {
                // What came before goes first; this line stays in the run unless taken.
                if run < start {
                    self.forward_client_lines(&lines[run..start], at, server, out, None)?;
                }
                run = start;
                self.list_tools_for_gate(meta.as_ref(), server)?;
                let still = held::parse_call(line)
                    .is_some_and(|c| gate.gate().verdict(&c.tool) == Verdict::Unlisted);
                if still {
                    gate.gate().listing_failed();
                }
                (step, asked) = gate.on_client_line(line, &self.own_ids);
            }
            if !matches!(step, Step::Pass) {
                if run < start {
                    self.forward_client_lines(&lines[run..start], at, server, out, None)?;
                }
                run = end;
                self.gate_step(step, server, out)?;
                if let Some(own) = asked {
                    self.arm_timer(own);
                }
            }
            start = end;
        }
        if run < lines.len() {
            self.forward_client_lines(&lines[run..], at, server, out, None)?;
        }
        Ok(())
    }

    /// Carries out what the gate decided.
    fn gate_step(
        &self,
        step: Step,
        server: &mut impl Write,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        match step {
            Step::Pass | Step::Drop | Step::ListFirst(_) => Ok(()),
            Step::Ask(request) | Step::Reply(request) => {
                self.to_client(&request);
                Ok(())
            }
            Step::Forward { line, confirmation } => {
                self.forward_client_lines(&line, Instant::now(), server, out, Some(confirmation))
            }
            Step::Refuse {
                line,
                confirmation,
                response,
            } => {
                self.refuse(&line, confirmation, &response);
                Ok(())
            }
            Step::Withdraw {
                line,
                notice,
                confirmation,
                withdraw,
            } => {
                // The call, then its cancellation: the observer records it as cancelled.
                let at = Instant::now();
                let prepared = PreparedCalls::from_elem(held::prepared(&line, confirmation), 1);
                self.observe(Direction::ClientToServer, &line, at, prepared);
                self.observe(Direction::ClientToServer, &notice, at, PreparedCalls::new());
                self.to_client(&withdraw);
                Ok(())
            }
        }
    }

    /// Records `line` as a call the server never saw, and answers the client with `response`.
    fn refuse(&self, line: &[u8], confirmation: Confirmation, response: &[u8]) {
        let prepared = held::prepared(line, confirmation);
        let at = Instant::now();
        self.observe(
            Direction::ClientToServer,
            line,
            at,
            PreparedCalls::from_elem(prepared, 1),
        );
        self.observe(
            Direction::ServerToClient,
            response,
            at,
            PreparedCalls::new(),
        );
        self.to_client(response);
    }

    fn to_client(&self, bytes: &[u8]) {
        let mut client = self.client.lock().unwrap_or_else(|e| e.into_inner());
        let _ = client.write_all(bytes);
        let _ = client.flush();
    }

    /// Refuses the call held under `own` when no answer came in time.
    fn arm_timer(self: &Arc<Self>, own: String) {
        let relay = Arc::downgrade(self);
        let Some(timeout) = self.gate.as_ref().map(HeldCalls::timeout) else {
            return;
        };
        let key = own.clone();
        let spawned = std::thread::Builder::new()
            .name("mcp-otel-confirm".into())
            .spawn(move || {
                std::thread::sleep(timeout);
                if let Some(relay) = relay.upgrade()
                    && let Some(Step::Refuse {
                        line,
                        confirmation,
                        response,
                    }) = relay.gate.as_ref().and_then(|g| g.expire(&key))
                {
                    relay.refuse(&line, confirmation, &response);
                }
            });
        if spawned.is_err() {
            // No timer: refuse now rather than hold the call for ever.
            if let Some(Step::Refuse {
                line,
                confirmation,
                response,
            }) = self.gate.as_ref().and_then(|g| g.expire(&own))
            {
                self.refuse(&line, confirmation, &response);
            }
        }
    }

    /// Sends the proxy's own `tools/list`; its answer is taken out of the server's stream and
    /// handed to the observer.
    fn list_tools(&self, at: Instant, server: &mut impl Write) -> std::io::Result<()> {
        let (id, request) = before::tools_list_request(&self.own_ids);
        self.send_tools_list(id, &request, at, None, server)
    }

    /// The gate needs the tools' annotations before it can decide on a call: the proxy's own
    /// `tools/list` (like [`Self::list_tools`]), waited for at most
    /// [`TOOLS_LIST_WAIT`](super::observe::correlate::TOOLS_LIST_WAIT). The gate learns the
    /// answer on its way through [`Self::server_lines`].
    fn list_tools_for_gate(
        &self,
        meta: Option<&serde_json::Map<String, serde_json::Value>>,
        server: &mut impl Write,
    ) -> std::io::Result<()> {
        self.listed.store(true, Ordering::Relaxed);
        let (id, request) = before::tools_list_request_like(&self.own_ids, meta);
        let key = serde_json::to_string(&id).expect("a string serialises");
        let (tx, rx) = channel();
        self.send_tools_list(id, &request, Instant::now(), Some(tx), server)?;
        let answered = rx
            .recv_timeout(super::observe::correlate::TOOLS_LIST_WAIT)
            .is_ok();
        if !answered {
            self.take_own(&key);
        }
        Ok(())
    }

    fn send_tools_list(
        &self,
        id: String,
        request: &[u8],
        at: Instant,
        waiter: Option<Sender<Vec<u8>>>,
        server: &mut impl Write,
    ) -> std::io::Result<()> {
        let key = serde_json::to_string(&id).expect("a string serialises");
        self.own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, OwnRequest::ToolsList(waiter));
        self.own_active.fetch_add(1, Ordering::SeqCst);
        // Observed first, so that the observer knows a list is under way before any answer.
        self.observe(Direction::ClientToServer, request, at, PreparedCalls::new());
        server.write_all(request)?;
        server.flush()
    }

    /// Complete client lines → the server, with `tools/call`s prepared (and maybe rewritten).
    /// `out` is scratch space, kept by the caller so that rewriting does not allocate.
    /// `confirmation` is the gate's outcome for the (one) call in `lines`.
    fn forward_client_lines(
        &self,
        lines: &[u8],
        at: Instant,
        server: &mut impl Write,
        out: &mut Vec<u8>,
        confirmation: Option<Confirmation>,
    ) -> std::io::Result<()> {
        // Observation is queued before the bytes leave, so the observer never sees an answer
        // before its request.
        if let Some(c) = &confirmation
            && plan_call(lines, false).is_none()
        {
            // The gate's one call, in a spelling the scanner does not plan: relayed untouched.
            let prepared = PreparedCalls::from_elem(held::prepared(lines, c.clone()), 1);
            self.observe(Direction::ClientToServer, lines, at, prepared);
            return server.write_all(lines);
        }
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
                if plan.splice.is_some() || before.is_some() || confirmation.is_some() {
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
                        confirmation: confirmation.clone(),
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
            .insert(key.clone(), OwnRequest::Before(tx));
        self.own_active.fetch_add(1, Ordering::SeqCst);
        let sent = server.write_all(&read.request);
        let answer = match sent {
            Ok(()) => rx.recv_timeout(read.timeout()).ok(),
            Err(_) => None,
        };
        // The answer's taker counts it out; an unanswered read is counted out here.
        self.take_own(&key);
        sent?;
        let answer = answer.map_or(before::Answer::Silence, before::Answer::Reply);
        Ok(before::conclude(&read, answer, self.stats()))
    }

    /// Removes the proxy's own request `key` from those awaiting an answer (counting it out),
    /// and returns whoever was waiting for it.
    fn take_own(&self, key: &str) -> Option<OwnRequest> {
        let taken = self
            .own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        if taken.is_some() {
            self.own_active.fetch_sub(1, Ordering::SeqCst);
        }
        taken
    }

    /// If `line` answers one of the proxy's own requests, hands it over and returns true.
    fn take_own_answer(&self, line: &[u8], at: Instant) -> bool {
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
        match self.take_own(&key) {
            Some(OwnRequest::Before(tx)) => {
                let _ = tx.send(line.to_vec());
                true
            }
            Some(OwnRequest::ToolsList(waiter)) => {
                self.observe(Direction::ServerToClient, line, at, PreparedCalls::new());
                if let Some(waiter) = waiter {
                    let _ = waiter.send(line.to_vec());
                }
                true
            }
            None => false,
        }
    }

    /// Complete server lines → the client, minus answers to the proxy's own requests.
    fn server_lines(&self, lines: &[u8], at: Instant) -> std::io::Result<()> {
        if let Some(gate) = &self.gate
            && memchr::memmem::find(lines, b"\"tools\"").is_some()
        {
            lines
                .split_inclusive(|b| *b == b'\n')
                .for_each(|line| gate.gate().learn_tools(line));
        }
        let mut client = self.client.lock().unwrap_or_else(|e| e.into_inner());
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
                && self.take_own_answer(line, at);
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

/// The client line past the observation limit that is on its way, kept where the exit path
/// can reach it.
#[derive(Default)]
struct ClientLong {
    line: Option<LongLine>,
    /// The proxy has ended: later pieces are relayed unobserved.
    ended: bool,
}

/// A line past the observation limit, on its way through: scanned for its envelope as its
/// pieces are relayed, and observed by that envelope just before its last piece leaves.
#[derive(Default)]
struct LongLine {
    scan: EnvelopeScan,
    /// When its first piece came (a cut-off call starts there).
    started: Option<Instant>,
    /// `--strict`: the line is being dropped, and the client gets this refusal at its end.
    refused: Option<Unrecordable>,
}

/// What `--strict` and lines past the observation limit add to the relay.
impl Relay {
    /// `--strict` with no room to record a call: the lines with `tools/call` requests are
    /// answered with a refusal and not forwarded, the others go on as usual.
    fn refuse_unrecordable(
        self: &Arc<Self>,
        lines: &[u8],
        at: Instant,
        server: &mut impl Write,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        for line in lines.split_inclusive(|b| *b == b'\n') {
            let calls = first_tools_call(line).is_some();
            match calls.then(|| strict::refusal(line, Unrecordable::QueueFull)) {
                Some(Some(answer)) => {
                    ProxyStats::add(&self.stats().refused, 1);
                    self.to_client(&answer);
                }
                Some(None) => self.gated_lines(line, at, server, out)?,
                None => self.client_lines(line, at, server, out)?,
            }
        }
        Ok(())
    }

    /// One piece of a client line past the observation limit. In `--strict` mode the line is
    /// dropped, and its call refused, when its first piece does not say what it is (or the
    /// call cannot be queued). The scan lives in the relay, not in this thread, so that a
    /// proxy ending in the middle of the line still records it ([`Relay::cut_client_line`]).
    fn client_oversize(
        &self,
        bytes: &[u8],
        at: Instant,
        server: &mut impl Write,
    ) -> std::io::Result<()> {
        let mut long = self.client_long.lock().unwrap_or_else(|e| e.into_inner());
        if long.ended {
            // The proxy has ended: what is left goes to a server that is gone, unobserved.
            drop(long);
            return server.write_all(bytes);
        }
        let first = long.line.is_none();
        let line = long.line.get_or_insert_with(LongLine::default);
        line.started.get_or_insert(at);
        line.scan.push(bytes);
        if first && self.observer.strict() {
            let e = line.scan.envelope();
            line.refused = match () {
                _ if !e.settled() => Some(Unrecordable::Unreadable),
                _ if e.is_tools_call() && !self.observer.has_room() => {
                    Some(Unrecordable::QueueFull)
                }
                _ => None,
            };
        }
        if !bytes.ends_with(b"\n") {
            let refused = line.refused.is_some();
            // Not written under the lock: a server that stops reading must not keep the exit
            // path from the line.
            drop(long);
            return match refused {
                true => Ok(()),
                false => server.write_all(bytes),
            };
        }
        let line = long.line.take().expect("set above");
        // Concluded under the lock, so that it cannot come after the exit path's end.
        let relayed = self.conclude_long(line, at, false);
        drop(long);
        match relayed {
            true => server.write_all(bytes),
            false => Ok(()),
        }
    }

    /// The end of a long client line (`cut_off`: the proxy ended before its last byte came):
    /// its envelope goes to the observer, or its refusal to the client. Returns whether the
    /// line was relayed.
    fn conclude_long(&self, line: LongLine, at: Instant, cut_off: bool) -> bool {
        let LongLine {
            scan,
            started,
            refused,
        } = line;
        let at = match cut_off {
            true => started.unwrap_or(at),
            false => at,
        };
        let mut envelope = scan.envelope();
        envelope.cut_off = cut_off;
        match refused {
            Some(why) => {
                ProxyStats::add(&self.stats().refused, 1);
                if let (true, Some(id)) = (envelope.is_request(), &envelope.id) {
                    self.to_client(&strict::refusal_of_id(id, why));
                }
                false
            }
            None => {
                self.observer.send(Event::Oversize {
                    scope: self.scope.clone(),
                    dir: Direction::ClientToServer,
                    at,
                    envelope,
                });
                true
            }
        }
    }

    /// The proxy is ending: a long client line still on its way (the server exited, or a
    /// signal came, while its bytes were being relayed) is recorded by what its envelope shows
    /// so far, before the exit ends the calls in flight; later pieces are not observed.
    fn cut_client_line(&self) {
        let mut long = self.client_long.lock().unwrap_or_else(|e| e.into_inner());
        long.ended = true;
        if let Some(line) = long.line.take() {
            self.conclude_long(line, Instant::now(), true);
        }
    }

    /// One piece of a server line past the observation limit.
    fn server_oversize(&self, long: &mut Option<EnvelopeScan>, bytes: &[u8], at: Instant) {
        let scan = long.get_or_insert_with(EnvelopeScan::new);
        scan.push(bytes);
        if bytes.ends_with(b"\n") {
            let envelope = long.take().expect("set above").envelope();
            self.observer.send(Event::Oversize {
                scope: self.scope.clone(),
                dir: Direction::ServerToClient,
                at,
                envelope,
            });
        }
        self.to_client(bytes);
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

/// How long the relay keeps running after a signal was passed on to the server: answers to
/// calls in flight still reach the client and the record, and a server that exits at once is
/// reaped. Short, because the client that sent the signal kills the proxy soon after (the
/// official SDKs: 2 s after SIGTERM), and the export must fit in that time too.
pub(crate) const SIGNAL_GRACE: Duration = Duration::from_millis(500);

/// What the run loop waits for.
#[derive(Debug)]
enum Happening {
    /// The client closed the proxy's stdin (the server's stdin is closed with it).
    ClientClosed,
    /// The server closed its stdout: no more answers can come.
    ServerClosed,
    /// The proxy received this signal.
    Signal(i32),
}

/// Tells a running stdio proxy about the signals the process receives. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Stopper(Sender<Happening>);

impl Stopper {
    /// The proxy passes `signal` on to the server's process group, then stops after
    /// [`SIGNAL_GRACE`] (at once on a second signal), recording the calls still in flight
    /// with `error_code` [`PROXY_TERMINATED`](crate::record::error_code::PROXY_TERMINATED).
    pub(crate) fn signal(&self, signal: i32) {
        let _ = self.0.send(Happening::Signal(signal));
    }
}

/// The outside's handle on one [`run`]: where signals come in, and what to do when the client
/// closes stdin.
pub(crate) struct Control {
    tx: Sender<Happening>,
    rx: Receiver<Happening>,
    on_client_closed: Option<Box<dyn FnOnce() + Send>>,
}

impl Default for Control {
    fn default() -> Self {
        let (tx, rx) = channel();
        Control {
            tx,
            rx,
            on_client_closed: None,
        }
    }
}

impl Control {
    pub(crate) fn stopper(&self) -> Stopper {
        Stopper(self.tx.clone())
    }

    /// Runs `f` once the client has closed stdin, while the server may still be running: the
    /// moment to start exporting, since a client that quits next waits only briefly before it
    /// sends SIGTERM. Runs on the proxy's control thread: `f` must not block.
    pub(crate) fn on_client_closed(mut self, f: impl FnOnce() + Send + 'static) -> Self {
        self.on_client_closed = Some(Box::new(f));
        self
    }
}

/// How a stdio proxy run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The server exited (on its own, or after the client closed stdin).
    Exited(ExitStatus),
    /// The proxy got `signal` and passed it on; `server` is the server's status if it exited
    /// within the grace period.
    Signalled {
        signal: i32,
        server: Option<ExitStatus>,
    },
}

impl Outcome {
    /// The proxy's exit code: the server's, or 128 + the signal the proxy got (what a shell
    /// reports for a process the signal ended).
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Outcome::Exited(status) => exit_code(*status),
            Outcome::Signalled { signal, .. } => u8::try_from((128 + signal) & 0xff).unwrap_or(1),
        }
    }
}

fn thread_error(what: &str) -> impl FnOnce(std::io::Error) -> ProxyError + '_ {
    move |source| ProxyError::Io {
        what: format!("starting the {what} relay thread"),
        source,
    }
}

/// Spawns `options.command` in a process group of its own and relays between it and
/// (`client_in`, `client_out`) until the server exits, or until a signal reported through
/// `control` ends the run; returns how it ended.
///
/// The server gets signals from the proxy only (its own group keeps a terminal's Ctrl-C or a
/// client's group kill from reaching it twice): each signal the proxy gets is passed on to the
/// server's whole group, so a server started through `sh -c` or `npx` gets it too.
pub(crate) fn run(
    options: StdioOptions,
    observer: ObserverHandle,
    client_in: impl Read + Send + 'static,
    client_out: impl Write + Send + 'static,
    control: Control,
) -> Result<Outcome, ProxyError> {
    let (program, args) = options
        .command
        .split_first()
        .ok_or_else(|| ProxyError::Usage("no server command".into()))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child: Child = command.spawn().map_err(|source| ProxyError::Spawn {
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
        intercept: options.inject
            || options.tools.has_before_capture()
            || options.tools.has_confirmation(),
        tools: options.tools.clone(),
        own: Mutex::new(HashMap::new()),
        own_active: AtomicUsize::new(0),
        own_ids: OwnIds::default(),
        gate: Gate::new(options.tools.clone()).map(HeldCalls::new),
        client: Mutex::new(Sink {
            inner: Box::new(client_out),
            gone: false,
        }),
        listed: AtomicBool::new(false),
        client_long: Mutex::default(),
    });
    let max_line = options.max_line;
    let Control {
        tx,
        rx,
        mut on_client_closed,
    } = control;

    let c2s = relay.clone();
    let closed = tx.clone();
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
                    Piece::Raw(bytes, RawReason::Oversize) => {
                        c2s.client_oversize(bytes, at, &mut server)
                    }
                    Piece::Raw(bytes, why) => {
                        server.write_all(bytes)?;
                        if first {
                            c2s.unobserved(why);
                        }
                        Ok(())
                    }
                },
                |n| ProxyStats::add(&stats.bytes_from_client, n as u64),
            );
            // Dropping the pipe closes the server's stdin: the client has gone.
            drop(server);
            let _ = closed.send(Happening::ClientClosed);
        })
        .map_err(thread_error("client"))?;

    let s2c = relay.clone();
    let closed = tx.clone();
    std::thread::Builder::new()
        .name("mcp-otel-server-out".into())
        .spawn(move || {
            let stats = s2c.observer.stats().clone();
            let mut long = None;
            let _ = pump(
                server_out,
                max_line,
                |piece, at, first| match piece {
                    Piece::Lines(lines) => s2c.server_lines(lines, at),
                    Piece::Raw(bytes, RawReason::Oversize) => {
                        s2c.server_oversize(&mut long, bytes, at);
                        Ok(())
                    }
                    Piece::Raw(bytes, why) => {
                        s2c.to_client(bytes);
                        if first {
                            s2c.unobserved(why);
                        }
                        Ok(())
                    }
                },
                |n| ProxyStats::add(&stats.bytes_from_server, n as u64),
            );
            // No more answers can come: wake any before-state read still waiting.
            s2c.own.lock().unwrap_or_else(|e| e.into_inner()).clear();
            let _ = closed.send(Happening::ServerClosed);
        })
        .map_err(thread_error("server"))?;

    // The control loop: ends when the server has closed its output and exited, or when the
    // grace after a signal is over. It keeps a sender itself, so the channel stays open after
    // both relays have ended and every stopper is gone.
    let _open = tx;
    let mut server_closed = false;
    let mut client_closed = false;
    let mut signalled: Option<(i32, Instant)> = None;
    let mut status = None;
    loop {
        let now = Instant::now();
        if let Some((_, deadline)) = signalled
            && now >= deadline
        {
            break;
        }
        // Once the output is closed the server is about to exit: poll for its status (it is
        // not reaped elsewhere, so its pid stays valid for passing signals on until then).
        let wait = match (server_closed, signalled) {
            (true, _) => Some(Duration::from_millis(5)),
            (false, Some((_, deadline))) => Some(deadline - now),
            (false, None) => None,
        };
        let next = match wait {
            Some(d) => rx.recv_timeout(d).ok(),
            None => rx.recv().ok(),
        };
        match next {
            Some(Happening::ClientClosed) => {
                client_closed = true;
                // Before the early export below: calls held for a tools/list go with it.
                observer.send(Event::ClientClosed {
                    session: relay.scope.session.clone(),
                });
                if let Some(f) = on_client_closed.take() {
                    f();
                }
            }
            Some(Happening::ServerClosed) => server_closed = true,
            Some(Happening::Signal(sig)) => {
                pass_on(&child, sig);
                if signalled.is_some() {
                    break; // a second signal: stop now
                }
                signalled = Some((sig, Instant::now() + SIGNAL_GRACE));
            }
            None => {}
        }
        if server_closed {
            status = child.try_wait().map_err(|source| ProxyError::Io {
                what: "waiting for the server to exit".into(),
                source,
            })?;
            if status.is_some() {
                break;
            }
        }
    }
    // A call the server got part of is recorded, however far its bytes had come.
    relay.cut_client_line();
    // Calls still waiting for the user's answer end with the connection.
    if let Some(gate) = &relay.gate {
        for step in gate.drain() {
            if let Step::Refuse {
                line,
                confirmation,
                response,
            } = step
            {
                relay.refuse(&line, confirmation, &response);
            }
        }
    }
    let at = Instant::now();
    if let Some((signal, _)) = signalled {
        // Everything still open ends here, task-augmented calls included.
        observer.send(Event::Terminated { at });
        return Ok(Outcome::Signalled {
            signal,
            server: status,
        });
    }
    observer.send(Event::ServerExited { at, client_closed });
    Ok(Outcome::Exited(
        status.expect("the loop ends with a status or a signal"),
    ))
}

/// Passes `signal` on to the server's process group (its pid: [`run`] makes it the leader).
fn pass_on(child: &Child, signal: i32) {
    #[cfg(unix)]
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill takes plain integers. The pid is the unreaped child's, so it names our
        // server's group and no other process's.
        unsafe {
            libc::kill(-pid, signal);
        }
    }
    #[cfg(not(unix))]
    let _ = (child, signal);
}

/// The exit code a shell would report for `status` (128 + signal when killed).
pub(crate) fn exit_code(status: ExitStatus) -> u8 {
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
