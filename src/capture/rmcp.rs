//! The rmcp wrapper: one line around any rmcp `ServerHandler` traces every `tools/call`.
//!
//! ```no_run
//! # use mcp_otel::capture::{Instrumentation, rmcp::Traced};
//! # async fn run<H: rmcp::ServerHandler>(handler: H) -> Result<(), Box<dyn std::error::Error>> {
//! use rmcp::ServiceExt;
//! let inst = Instrumentation::from_env("my-server")?;
//! let running = Traced::new(handler, inst).with_user("alice").serve(rmcp::transport::stdio()).await?;
//! running.waiting().await?;
//! # Ok(()) }
//! ```
//!
//! rmcp has no middleware API, so [`Traced`] is a full `ServerHandler` that delegates every
//! method to the inner handler and intercepts `call_tool` (a test pins rmcp's method list, so a
//! new rmcp method cannot bypass the wrapper silently). The same wrapper serves stdio and
//! Streamable HTTP (`StreamableHttpService::new(move || Ok(Traced::new(..)), ..)`); over HTTP the
//! request's `http::request::Parts` are available to the user resolver.
//!
//! Inside a tool, [`record_write`](super::scope::record_write) reports the write's before/after
//! state; a server may instead (or also) return it in `result._meta["io.mcp-otel/audit"]`.
#![allow(deprecated)] // subscribe/unsubscribe are deprecated in rmcp but must still be delegated

use super::classify::{WriteEvidence, classify, resolve_write};
use super::library::{CallGuard, ErrorCode, Instrumentation};
use super::scope::{record_confirmation, with_report_slot};
use crate::record::Transport;
use crate::record::{Confirmation, ConfirmationOutcome, ConfirmationSource, Outcome};
use crate::semconv as sc;
use rmcp::model::*;
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use std::borrow::Cow;
use std::sync::Arc;

impl ErrorCode for McpError {
    fn error_code(&self) -> String {
        self.code.0.to_string()
    }
}

/// Who is calling: derived from the request (HTTP parts, `_meta`, client info).
pub type UserResolver = Arc<dyn Fn(&RequestContext<RoleServer>) -> Option<String> + Send + Sync>;

/// An rmcp `ServerHandler` whose tool calls are traced.
#[derive(Clone)]
pub struct Traced<H> {
    inner: H,
    inst: Instrumentation,
    user: UserResolver,
}

/// The client name rmcp fills in when it does not know the client (stateless HTTP).
fn real_client_name(ctx: &RequestContext<RoleServer>) -> Option<(String, String)> {
    let info = ctx.client_info()?;
    let placeholder = Implementation::default();
    (info.name != placeholder.name || info.version != placeholder.version)
        .then(|| (info.name.clone(), info.version.clone()))
}

impl<H> Traced<H> {
    /// Wraps `inner`. The user defaults to the client's `clientInfo.name`, else `unknown`.
    pub fn new(inner: H, inst: Instrumentation) -> Self {
        Traced {
            inner,
            inst,
            user: Arc::new(|_| None),
        }
    }

    /// Every call is made by `user` (a stdio server runs for one user).
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        let user = user.into();
        self.user = Arc::new(move |_| Some(user.clone()));
        self
    }

    /// The user comes from the HTTP request (e.g. a header set by an authenticating gateway, or
    /// the *name* of an API key looked up from its hash). Never return a raw key.
    pub fn with_user_from_parts(
        mut self,
        f: impl Fn(&http::request::Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.user = Arc::new(move |ctx| ctx.extensions.get::<http::request::Parts>().and_then(&f));
        self
    }

    /// Any rule over the whole request context.
    pub fn with_user_resolver(mut self, resolver: UserResolver) -> Self {
        self.user = resolver;
        self
    }

    /// The wrapped handler.
    pub fn inner(&self) -> &H {
        &self.inner
    }
}

impl<H: ServerHandler> Traced<H> {
    fn start(
        &self,
        request: &CallToolRequestParams,
        ctx: &RequestContext<RoleServer>,
    ) -> CallGuard {
        let client = real_client_name(ctx);
        let user = (self.user)(ctx)
            .or_else(|| client.as_ref().map(|(name, _)| name.clone()))
            .unwrap_or_else(|| "unknown".to_owned());
        let mut guard = self.inst.start_call(request.name.to_string(), user);
        guard.set_meta(Some(&ctx.meta.0.0));
        guard.set_request_id(ctx.id.to_string());
        if let Some(v) = ctx.protocol_version() {
            guard.set_protocol_version(v.as_str());
        }
        if let Some((name, version)) = client {
            guard.set_client(Some(name), Some(version));
        }
        let parts = ctx.extensions.get::<http::request::Parts>();
        guard.set_transport(if parts.is_some() {
            Transport::Http
        } else {
            Transport::Stdio
        });
        if let Some(sid) = parts
            .and_then(|p| p.headers.get("mcp-session-id"))
            .and_then(|v| v.to_str().ok())
        {
            guard.set_session_id(sid);
        }
        if let Some(args) = &request.arguments {
            guard.set_context(serde_json::Value::Object(args.clone()));
        }
        guard
    }
}

/// Writes `ServerHandler` methods that hand the call to `self.inner` unchanged, one entry a
/// method, so a wrapper states only which methods it forwards and writes out the ones it changes.
/// rmcp's method shapes: `request fn name(Params) -> T;` takes the request and its
/// `RequestContext` and returns a future of `Result<T, McpError>` (`request fn name() -> T;`
/// without a request); `notification fn name(Param);` (or `name()`) takes a
/// `NotificationContext` and returns a future of `()`; `async fn name(args) -> T;` is any other
/// future of `T`, and `fn name(args) -> T;` a plain method. [`Traced`] forwards every method but
/// `call_tool` with it, the demo's confirmation gate the few it does not change.
macro_rules! forward_to_inner {
    () => {};
    (request fn $name:ident() -> $out:ty; $($rest:tt)*) => {
        fn $name(
            &self,
            context: ::rmcp::service::RequestContext<::rmcp::RoleServer>,
        ) -> impl ::std::future::Future<Output = Result<$out, ::rmcp::ErrorData>>
               + ::rmcp::service::MaybeSendFuture
               + '_ {
            self.inner.$name(context)
        }
        $crate::capture::rmcp::forward_to_inner!($($rest)*);
    };
    (request fn $name:ident($request:ty) -> $out:ty; $($rest:tt)*) => {
        fn $name(
            &self,
            request: $request,
            context: ::rmcp::service::RequestContext<::rmcp::RoleServer>,
        ) -> impl ::std::future::Future<Output = Result<$out, ::rmcp::ErrorData>>
               + ::rmcp::service::MaybeSendFuture
               + '_ {
            self.inner.$name(request, context)
        }
        $crate::capture::rmcp::forward_to_inner!($($rest)*);
    };
    (notification fn $name:ident(); $($rest:tt)*) => {
        fn $name(
            &self,
            context: ::rmcp::service::NotificationContext<::rmcp::RoleServer>,
        ) -> impl ::std::future::Future<Output = ()> + ::rmcp::service::MaybeSendFuture + '_ {
            self.inner.$name(context)
        }
        $crate::capture::rmcp::forward_to_inner!($($rest)*);
    };
    (notification fn $name:ident($notification:ty); $($rest:tt)*) => {
        fn $name(
            &self,
            notification: $notification,
            context: ::rmcp::service::NotificationContext<::rmcp::RoleServer>,
        ) -> impl ::std::future::Future<Output = ()> + ::rmcp::service::MaybeSendFuture + '_ {
            self.inner.$name(notification, context)
        }
        $crate::capture::rmcp::forward_to_inner!($($rest)*);
    };
    (async fn $name:ident($($arg:ident: $ty:ty),*) -> $out:ty; $($rest:tt)*) => {
        fn $name(
            &self,
            $($arg: $ty),*
        ) -> impl ::std::future::Future<Output = $out> + ::rmcp::service::MaybeSendFuture + '_ {
            self.inner.$name($($arg),*)
        }
        $crate::capture::rmcp::forward_to_inner!($($rest)*);
    };
    (fn $name:ident($($arg:ident: $ty:ty),*) -> $out:ty; $($rest:tt)*) => {
        fn $name(&self, $($arg: $ty),*) -> $out {
            self.inner.$name($($arg),*)
        }
        $crate::capture::rmcp::forward_to_inner!($($rest)*);
    };
}
pub(crate) use forward_to_inner;

impl<H: ServerHandler> ServerHandler for Traced<H> {
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let mut guard = self.start(&request, &context);
        let tool = self.inner.get_tool(&request.name);
        let annotations = tool.as_ref().and_then(|t| t.annotations.as_ref());
        let read_only = annotations.and_then(|a| a.read_only_hint);
        guard.set_annotations(read_only, annotations.and_then(|a| a.destructive_hint));
        let name = request.name.clone();
        let arguments = request.arguments.clone().map(serde_json::Value::Object);
        let (result, reported, confirmation) =
            with_report_slot(self.inner.call_tool(request, context)).await;
        if let Ok(CallToolResponse::InputRequired(_)) = &result {
            // A 2026-07-28 round asking the client for input (e.g. [`confirm`]'s question):
            // the tool did not run; its retry with the answer is the call.
            guard.discard();
            return result;
        }
        // The result as JSON: the audit block, a generated id and the after state come from it.
        // A read (by its hint or its name, with no audit block and no report) needs none of
        // them, so the tool result is not copied on the read path.
        let result_json = match &result {
            Ok(CallToolResponse::Complete(r))
                if reported.is_some()
                    || r.meta
                        .as_ref()
                        .is_some_and(|m| m.0.contains_key(sc::META_AUDIT))
                    || classify(&name, None, None, read_only).is_some() =>
            {
                serde_json::to_value(r).ok()
            }
            _ => None,
        };
        let write = resolve_write(WriteEvidence {
            tool: &name,
            reported,
            result: result_json.as_ref(),
            rpc_error: result.as_ref().err().map(|e| i64::from(e.code.0)),
            read_only,
            arguments: arguments.as_ref(),
            ..Default::default()
        });
        // `None` (a read) drops a write part that held only the client's confirmation flag.
        guard.set_write(write.unwrap_or_default());
        if let Some(mut c) = confirmation {
            // The helper does not see the arguments; the wrapper binds the answer to them.
            c.arguments_digest = Some(crate::record::arguments_digest(arguments.as_ref()));
            guard.set_confirmation(c);
        }
        let outcome = match &result {
            Ok(CallToolResponse::Complete(r)) if r.is_error == Some(true) => Outcome::ToolError,
            Ok(_) => Outcome::Success,
            Err(e) => Outcome::Error(e.error_code()),
        };
        guard.finish(outcome);
        result
    }

    forward_to_inner! {
        request fn ping() -> ();
        request fn initialize(InitializeRequestParams) -> InitializeResult;
        fn negotiate_initialize(request: &InitializeRequestParams)
            -> Result<InitializeResult, McpError>;
        fn supported_protocol_versions() -> Cow<'static, [ProtocolVersion]>;
        request fn discover() -> DiscoverResult;
        request fn complete(CompleteRequestParams) -> CompleteResult;
        request fn set_level(SetLevelRequestParams) -> ();
        request fn get_prompt(GetPromptRequestParams) -> GetPromptResponse;
        request fn list_prompts(Option<PaginatedRequestParams>) -> ListPromptsResult;
        request fn list_resources(Option<PaginatedRequestParams>) -> ListResourcesResult;
        request fn list_resource_templates(Option<PaginatedRequestParams>)
            -> ListResourceTemplatesResult;
        request fn read_resource(ReadResourceRequestParams) -> ReadResourceResponse;
        fn accepted_subscription_filter(requested: &SubscriptionFilter)
            -> Option<SubscriptionFilter>;
        async fn listen(context: SubscriptionContext) -> Result<(), McpError>;
        request fn subscribe(SubscribeRequestParams) -> ();
        request fn unsubscribe(UnsubscribeRequestParams) -> ();
        request fn list_tools(Option<PaginatedRequestParams>) -> ListToolsResult;
        fn get_tool(name: &str) -> Option<Tool>;
        request fn on_custom_request(CustomRequest) -> CustomResult;
        notification fn on_cancelled(CancelledNotificationParam);
        notification fn on_progress(ProgressNotificationParam);
        notification fn on_initialized();
        notification fn on_roots_list_changed();
        notification fn on_custom_notification(CustomNotification);
        fn get_info() -> ServerConfig;
        request fn get_task(GetTaskParams) -> GetTaskResult;
        request fn update_task(UpdateTaskParams) -> ();
        request fn cancel_task(CancelTaskParams) -> ();
        request fn list_skills(Option<PaginatedRequestParams>) -> ListSkillsResult;
        request fn get_skill(GetSkillRequestParams) -> GetSkillResult;
        request fn read_resource_directory(ReadResourceDirectoryRequestParams)
            -> ReadResourceDirectoryResult;
    }
}

/// What [`confirm`] found.
#[derive(Debug)]
pub enum Confirm {
    /// The user answered, or could not be asked: go ahead only on
    /// [`ConfirmationOutcome::Accepted`].
    Answered(ConfirmationOutcome),
    /// A 2026-07-28 client is asked through the multi round-trip pattern: return this response
    /// from the tool. The client asks the user and calls the tool again with the answer, and
    /// `confirm` reads it then (nothing is recorded for this round: it is not a call).
    Ask(CallToolResponse),
}

impl Confirm {
    /// True only when the user approved.
    pub fn accepted(&self) -> bool {
        matches!(self, Confirm::Answered(ConfirmationOutcome::Accepted))
    }
}

/// Signs and spends the helper's 2026-07-28 request states: a key of this process's own, so a
/// retry is verified only by the process that asked (behind a load balancer, route a session's
/// retries to the same replica, or they are refused: closed).
fn state_book() -> &'static crate::capture::proxy::confirm::mrtr::StateBook {
    use crate::capture::proxy::confirm::mrtr::{StateBook, StateKey};
    static BOOK: std::sync::OnceLock<StateBook> = std::sync::OnceLock::new();
    BOOK.get_or_init(|| StateBook::new(StateKey::random()))
}

/// Asks the user, from inside a tool, whether the call `request` may go ahead, waiting at most
/// `timeout`, and records the outcome on the call (inside a [`Traced`] handler: span, JSON
/// line and audit row get the same confirmation fields as the proxy's gate).
///
/// - 2024-11-05 … 2025-11-25 sessions: one `elicitation/create` (form mode, a boolean
///   `confirm`) to the client; the answer is [`Confirm::Answered`].
/// - 2026-07-28 (which forbids server-to-client requests): the first call gives
///   [`Confirm::Ask`], an `InputRequiredResult` with the question under
///   `io.mcp-otel/confirm` and a signed, single-use `requestState` bound to the client, the
///   tool and the exact arguments, valid for `timeout`; the tool returns it. The client's retry
///   carries the answer, which this reads (a forged, replayed, expired or argument-swapped
///   state gives `Declined`, recorded without a source).
///
/// A client without the elicitation capability gives `UnsupportedClient`; an error from the
/// client gives `Cancelled`. An acceptance proves that the client answered, not that a human
/// read the question.
pub async fn confirm(
    context: &RequestContext<RoleServer>,
    request: &CallToolRequestParams,
    message: impl Into<String>,
    timeout: std::time::Duration,
) -> Confirm {
    use crate::capture::proxy::confirm::mrtr;
    let modern = context
        .protocol_version()
        .is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str());
    if !modern {
        return Confirm::Answered(ask_in_session(context, message.into(), timeout).await);
    }
    let arguments = request.arguments.clone().map(serde_json::Value::Object);
    let caller = real_client_name(context).map_or_else(|| "client".to_owned(), |(name, _)| name);
    let answer = request
        .input_responses
        .as_ref()
        .and_then(|r| r.get(mrtr::INPUT_KEY));
    if let Some(answer) = answer {
        let read = mrtr::redeem_answer(
            state_book(),
            request.request_state.as_deref(),
            &caller,
            &request.name,
            arguments.as_ref(),
            answer,
        );
        let (outcome, source, wait) = match read {
            Ok((verdict, claims)) => (
                verdict.outcome(),
                Some(ConfirmationSource::Elicitation),
                Some(claims.waited()),
            ),
            Err(_) => (ConfirmationOutcome::Declined, None, None),
        };
        record_confirmation(Confirmation {
            outcome,
            source,
            arguments_digest: None,
            wait_ms: wait.map(|d| d.as_secs_f64() * 1000.0),
        });
        return Confirm::Answered(outcome);
    }
    let can = context
        .client_capabilities()
        .and_then(|c| c.elicitation)
        .is_some_and(|e| e.form.is_some() || e.url.is_none());
    if !can {
        record_confirmation(Confirmation::new(
            ConfirmationOutcome::UnsupportedClient,
            None,
        ));
        return Confirm::Answered(ConfirmationOutcome::UnsupportedClient);
    }
    let asked = mrtr::input_required(
        state_book(),
        &caller,
        &request.name,
        arguments.as_ref(),
        timeout,
        None,
        &message.into(),
    );
    match serde_json::from_value::<InputRequiredResult>(asked) {
        Ok(result) => Confirm::Ask(CallToolResponse::InputRequired(result)),
        // Not expected (the shape is the spec's); fail closed.
        Err(_) => Confirm::Answered(ConfirmationOutcome::Cancelled),
    }
}

/// The 2024-11-05 … 2025-11-25 way: one `elicitation/create` to the client, awaited.
async fn ask_in_session(
    context: &RequestContext<RoleServer>,
    message: String,
    timeout: std::time::Duration,
) -> ConfirmationOutcome {
    let asked = std::time::Instant::now();
    let can = context
        .peer
        .supported_elicitation_modes()
        .contains(&rmcp::service::ElicitationMode::Form);
    let (outcome, source) = if !can {
        (ConfirmationOutcome::UnsupportedClient, None)
    } else {
        let schema = ElicitationSchema::builder()
            .required_bool(crate::capture::proxy::confirm::legacy::CONFIRM_FIELD)
            .build()
            .expect("one boolean property is a valid schema");
        let answer = context
            .peer
            .create_elicitation_with_timeout(
                ElicitRequestParams::FormElicitationParams {
                    meta: None,
                    message,
                    requested_schema: schema,
                },
                Some(timeout),
            )
            .await;
        let outcome = match answer {
            Ok(r) => {
                let value = serde_json::to_value(&r).unwrap_or_default();
                crate::capture::proxy::confirm::legacy::read(Some(&value), None).outcome()
            }
            Err(rmcp::ServiceError::Timeout { .. }) => ConfirmationOutcome::Timeout,
            Err(_) => ConfirmationOutcome::Cancelled,
        };
        (outcome, Some(ConfirmationSource::Elicitation))
    };
    record_confirmation(Confirmation {
        outcome,
        source,
        arguments_digest: None,
        wait_ms: source.map(|_| asked.elapsed().as_secs_f64() * 1000.0),
    });
    outcome
}
