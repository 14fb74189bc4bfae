//! The library API: instrument tool calls from any Rust MCP server.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mcp_otel::capture::{Instrumentation, Outcome};
//! use mcp_otel::record::{OperationType, WriteOp};
//! let inst = Instrumentation::from_env("tasks-server")?;
//! let mut call = inst.start_call("update_task", "alice");
//! call.set_write(WriteOp::new(OperationType::Update).resource_id("t1"));
//! // … do the work …
//! call.finish(Outcome::Success);
//! # Ok(()) }
//! ```
//!
//! A [`CallGuard`] that is dropped without `finish` records the call as an error with code
//! `unfinished` (a panic or a cancelled future must not vanish from the trail).

use super::context::{ids_from_meta, user_confirmation};
use crate::emit::{EmitConfig, EmitError, Emitter, ExportCounts, LogTarget, SpanTarget};
use crate::record::{Confirmation, Outcome, ToolCall, Transport, WriteOp, error_code};
use crate::semconv as sc;
use serde_json::{Map, Value};
use std::future::Future;
use std::time::{Duration, Instant};

/// Something that knows how it ended, so [`Instrumentation::instrument`] can record it.
pub trait Observed {
    /// How the call ended: success, a tool error, a protocol error with its code, or a timeout.
    fn outcome(&self) -> Outcome;
}

/// An error that has an error code for the record.
pub trait ErrorCode {
    /// The code recorded as `error_code` (a JSON-RPC code like `-32602`, an HTTP status, or a short
    /// word).
    fn error_code(&self) -> String;
}

impl<T, E: ErrorCode> Observed for Result<T, E> {
    fn outcome(&self) -> Outcome {
        match self {
            Ok(_) => Outcome::Success,
            Err(e) => Outcome::Error(e.error_code()),
        }
    }
}

/// Records tool calls; build it once and clone it freely.
#[derive(Clone, Debug)]
pub struct Instrumentation {
    emitter: Emitter,
}

impl Instrumentation {
    /// Records calls through `emitter` (see [`Emitter::new`] for spans and JSON lines).
    pub fn new(emitter: Emitter) -> Self {
        Instrumentation { emitter }
    }

    /// Spans over OTLP/gRPC configured by the standard `OTEL_*` variables, JSON lines to stderr
    /// (stdout belongs to the stdio transport), `service.name` defaulting to `service_name`.
    pub fn from_env(service_name: &str) -> Result<Self, EmitError> {
        let config = EmitConfig {
            spans: SpanTarget::Otlp { endpoint: None },
            log: LogTarget::Stderr,
            default_service_name: Some(service_name.to_owned()),
            ..EmitConfig::default()
        };
        Ok(Self::new(Emitter::new(&config)?))
    }

    /// The emitter calls are recorded through (its export counts, its redactor).
    pub fn emitter(&self) -> &Emitter {
        &self.emitter
    }

    /// Starts timing a call of `tool` by `user` (a key name or user id, never a raw key).
    pub fn start_call(&self, tool: impl Into<String>, user: impl Into<String>) -> CallGuard {
        CallGuard {
            call: Some(ToolCall::new(tool, user)),
            started: Instant::now(),
            emitter: self.emitter.clone(),
            client_flag: None,
        }
    }

    /// Runs `fut`, recording the call with the outcome its output reports.
    pub async fn instrument<F>(&self, guard: CallGuard, fut: F) -> F::Output
    where
        F: Future,
        F::Output: Observed,
    {
        let out = fut.await;
        guard.finish(out.outcome());
        out
    }

    /// Export counters; `dropped` counts spans lost to a full queue.
    pub fn stats(&self) -> ExportCounts {
        self.emitter.stats()
    }

    /// Exports everything recorded so far, waiting at most `timeout`.
    pub async fn flush(&self, timeout: Duration) -> bool {
        self.emitter.flush(timeout).await
    }
}

/// A call in progress. Finish it with [`CallGuard::finish`].
#[derive(Debug)]
pub struct CallGuard {
    call: Option<ToolCall>,
    started: Instant,
    emitter: Emitter,
    /// The client's own confirmation flag from `_meta`, when it sent one.
    client_flag: Option<bool>,
}

impl CallGuard {
    fn call(&mut self) -> &mut ToolCall {
        self.call
            .as_mut()
            .expect("a guard holds its call until it finishes")
    }

    /// The record so far, for fields this API has no setter for.
    pub fn record_mut(&mut self) -> &mut ToolCall {
        self.call()
    }

    /// The call's arguments (redacted before they leave the process).
    pub fn set_context(&mut self, arguments: Value) -> &mut Self {
        self.call().context = Some(arguments);
        self
    }

    /// Applies the request's `params._meta`: the `traceparent` parent and the client's
    /// `io.mcp-otel/user_confirmation` flag (kept for a write set later).
    pub fn set_meta(&mut self, meta: Option<&Map<String, Value>>) -> &mut Self {
        self.client_flag = user_confirmation(meta);
        let call = self.call();
        call.ids = ids_from_meta(meta);
        if let Some(confirmed) = user_confirmation(meta) {
            call.write
                .get_or_insert_with(WriteOp::default)
                .user_confirmation = Some(confirmed);
        }
        if let Some(v) = meta.and_then(|m| m.get(sc::META_PROTOCOL_VERSION)) {
            call.mcp.protocol_version = v.as_str().map(str::to_owned);
        }
        self
    }

    /// The write this call did. A confirmation already taken from `_meta` is kept unless the
    /// write states its own.
    pub fn set_write(&mut self, write: WriteOp) -> &mut Self {
        let call = self.call();
        let confirmation = call.write.as_ref().and_then(|w| w.user_confirmation);
        let mut write = write;
        if write.user_confirmation.is_none() {
            write.user_confirmation = confirmation;
        }
        call.write = Some(write);
        self
    }

    /// What the user answered before the call went ahead: `user_confirmation` of the write
    /// follows it (true only for an acceptance).
    pub fn set_confirmation(&mut self, confirmation: Confirmation) -> &mut Self {
        let call = self.call();
        let client_flag = call.write.as_ref().and_then(|w| w.user_confirmation);
        crate::capture::proxy::confirm::settle(call, Some(confirmation), client_flag, false);
        self
    }

    /// Sets the JSON-RPC request id (`jsonrpc.request.id`), as text.
    pub fn set_request_id(&mut self, id: impl Into<String>) -> &mut Self {
        self.call().mcp.request_id = Some(id.into());
        self
    }

    /// Sets the `Mcp-Session-Id` (`mcp.session.id`); only peers before 2026-07-28 have one.
    pub fn set_session_id(&mut self, id: impl Into<String>) -> &mut Self {
        self.call().mcp.session_id = Some(id.into());
        self
    }

    /// Sets the negotiated MCP protocol version (`mcp.protocol.version`).
    pub fn set_protocol_version(&mut self, version: impl Into<String>) -> &mut Self {
        self.call().mcp.protocol_version = Some(version.into());
        self
    }

    /// Sets the client's `clientInfo` name and version from `initialize` (`None` clears them).
    pub fn set_client(&mut self, name: Option<String>, version: Option<String>) -> &mut Self {
        let mcp = &mut self.call().mcp;
        mcp.client_name = name;
        mcp.client_version = version;
        self
    }

    /// Sets how the request reached the server (`network.transport`).
    pub fn set_transport(&mut self, transport: Transport) -> &mut Self {
        self.call().mcp.transport = Some(transport);
        self
    }

    /// The tool's annotations as the server announces them.
    pub fn set_annotations(&mut self, read_only: Option<bool>, destructive: Option<bool>) {
        let call = self.call();
        call.read_only_hint = read_only;
        call.destructive_hint = destructive;
    }

    /// The tool result (exported only with `record_result` on).
    pub fn set_result(&mut self, result: Value) -> &mut Self {
        self.call().result = Some(result);
        self
    }

    /// Drops the call without recording it: what was started was not a call (a 2026-07-28
    /// `input_required` round).
    pub fn discard(mut self) {
        self.call = None;
    }

    /// Ends the call: sets status, error code and duration, and emits it.
    pub fn finish(mut self, outcome: Outcome) {
        self.complete(outcome);
    }

    fn complete(&mut self, outcome: Outcome) {
        let Some(mut call) = self.call.take() else {
            return;
        };
        call.finish(outcome, self.started.elapsed());
        // A write part holding only a confirmation flag is no write: reads stay reads.
        if call
            .write
            .as_ref()
            .is_some_and(|w| w.operation_type.is_none())
        {
            call.write = None;
        }
        if call.confirmation.is_none() {
            // A confirmation stated by the client's flag or the tool's audit block says so.
            crate::capture::proxy::confirm::settle(&mut call, None, self.client_flag, false);
        }
        self.emitter.emit(call);
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.call.is_some() {
            self.complete(Outcome::Error(error_code::UNFINISHED.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emit::log::MemoryLog;
    use crate::record::OperationType;
    use serde_json::json;

    fn instrumentation() -> (Instrumentation, MemoryLog) {
        let lines = MemoryLog::default();
        let emitter =
            Emitter::with_log_writer(&EmitConfig::default(), None, Box::new(lines.clone()));
        (Instrumentation::new(emitter), lines)
    }

    #[test]
    fn dropped_guard_is_an_error_and_confirmation_comes_from_meta() {
        let (inst, lines) = instrumentation();
        drop(inst.start_call("get_task", "alice"));
        let mut g = inst.start_call("delete_task", "bob");
        let meta = json!({"io.mcp-otel/user_confirmation": false, "api_key": "x"});
        g.set_meta(meta.as_object());
        g.set_context(json!({"id": "t1", "api_key": "sk-123"}));
        g.set_write(WriteOp::new(OperationType::Delete).resource_id("t1"));
        g.finish(Outcome::ToolError);
        let out = lines.json();
        assert_eq!(out[0]["status"], "error");
        assert_eq!(out[0]["error_code"], "unfinished");
        assert_eq!(out[1]["operation_type"], "delete");
        assert_eq!(out[1]["user_confirmation"], false);
        assert_eq!(out[1]["error_code"], "tool_error");
        assert_eq!(out[1]["api_key"], "[REDACTED]");
    }

    #[test]
    fn confirmation_without_a_write_stays_a_read() {
        let (inst, lines) = instrumentation();
        let mut g = inst.start_call("list_tasks", "alice");
        g.set_meta(json!({"io.mcp-otel/user_confirmation": true}).as_object());
        g.finish(Outcome::Success);
        assert!(lines.json()[0].get("operation_type").is_none());
    }

    struct Code(i32);
    impl ErrorCode for Code {
        fn error_code(&self) -> String {
            self.0.to_string()
        }
    }

    #[tokio::test]
    async fn instrument_records_the_result() {
        let (inst, lines) = instrumentation();
        let g = inst.start_call("get_task", "alice");
        let r: Result<(), Code> = inst
            .instrument(g, async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Err(Code(-32602))
            })
            .await;
        assert!(r.is_err());
        let out = lines.json();
        assert_eq!(out[0]["error_code"], "-32602");
        assert!(out[0]["duration_ms"].as_f64().unwrap() >= 20.0);
    }
}
