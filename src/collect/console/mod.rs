//! The console: web pages served by `collect` on its metrics listener (`/`), built from the
//! assets in `assets/` compiled into the binary (the project's own HTML, CSS and JavaScript, no
//! third-party code, no network), over JSON APIs under `/api/console/`.
//!
//! - [`feed`]: the tap on ingestion (live calls, the recent window, the alert history);
//! - [`overview`]: the key metrics for a range, in SQL over the audit trail or from the window;
//! - `live`: live calls over server-sent events;
//! - [`call`]: one stored call with every field and the other calls of its trace;
//! - [`review`]: the daily write review (`audit review`) for a day, as JSON and CSV;
//! - [`audit`]: `audit verify`'s last result and full-text search over contexts and states;
//! - [`auth`]: the token prompt and its session cookie;
//! - `store`: the audit trail they read, the SQLite file or the PostgreSQL store of every
//!   replica.
//!
//! Every response carries a content security policy that allows only the console's own files
//! (no inline script, no framing), and the pages put data in the document as text, never as
//! markup.

pub mod audit;
pub mod auth;
pub mod call;
pub mod feed;
pub(crate) mod live;
pub mod overview;
pub mod review;
pub(crate) mod store;

use super::ingest::Collector;
use auth::Gate;
use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use store::Trail;
use tokio_util::sync::CancellationToken;

const INDEX_HTML: &str = include_str!("assets/index.html");
const LOGIN_HTML: &str = include_str!("assets/login.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const ICON_SVG: &str = include_str!("assets/icon.svg");

/// The pages; each is the same document, which draws the page its path names.
pub(crate) const PAGES: &[&str] = &["/", "/live", "/alerts", "/review", "/call", "/audit"];

/// What the console reads from.
pub(crate) struct Console {
    collector: Arc<Collector>,
    audit: Option<Arc<Trail>>,
    gate: Gate,
    stop: CancellationToken,
    secure_cookie: bool,
    verifier: Arc<audit::Verifier>,
    /// The Jaeger UI's base URL, without a trailing `/`.
    jaeger: Option<String>,
}

impl Console {
    /// The console of `collector`, reading the audit trail `audit` when there is one,
    /// behind `token` when given; `tls` marks the session cookie `Secure`; call detail links to
    /// the Jaeger UI at `jaeger` (a validated base URL) when given.
    pub(crate) fn new(
        collector: Arc<Collector>,
        audit: Option<Trail>,
        token: Option<&str>,
        tls: bool,
        jaeger: Option<&str>,
        stop: CancellationToken,
    ) -> Arc<Console> {
        Arc::new(Console {
            collector,
            audit: audit.map(Arc::new),
            gate: Gate::new(token),
            stop,
            secure_cookie: tls,
            verifier: Arc::default(),
            jaeger: jaeger.map(|u| u.trim_end_matches('/').to_owned()),
        })
    }

    /// Where the Jaeger UI shows `trace_id`, when a Jaeger URL is configured.
    fn jaeger_link(&self, trace_id: &str) -> Option<String> {
        let base = self.jaeger.as_deref()?;
        let id = crate::hex::decode::<16>(trace_id, crate::hex::Case::Lower)?;
        Some(format!("{base}/trace/{}", crate::hex::encode(&id)))
    }
}

/// The console's routes: the pages, their assets, the token prompt and the APIs.
pub(crate) fn router(console: Arc<Console>) -> Router {
    let api = Router::new()
        .route("/api/console/status", get(status))
        .route("/api/console/overview", get(overview_api))
        .route("/api/console/live", get(live_api))
        .route("/api/console/alerts", get(alerts_api))
        .route("/api/console/call", get(call_api))
        .route("/api/console/review", get(review_api))
        .route("/api/console/review.csv", get(review_csv))
        .route("/api/console/review.json", get(review_download))
        .route("/api/console/audit", get(audit_api))
        .route("/api/console/search", get(search_api))
        .route_layer(middleware::from_fn_with_state(
            console.clone(),
            require_auth,
        ));
    let mut pages = Router::new();
    for p in PAGES {
        pages = pages.route(p, get(page));
    }
    pages
        .route(
            "/console/app.js",
            get(|| asset(APP_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/console/app.css",
            get(|| asset(APP_CSS, "text/css; charset=utf-8")),
        )
        .route(
            "/console/icon.svg",
            get(|| asset(ICON_SVG, "image/svg+xml")),
        )
        .route("/console/login", post(login))
        .route("/console/logout", post(logout))
        .merge(api)
        .layer(middleware::map_response(security_headers))
        .with_state(console)
}

/// The headers every console response carries.
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
             frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn login_page(failed: bool) -> String {
    let note = if failed {
        "<p class=\"error\" role=\"alert\">That is not the collector's token.</p>"
    } else {
        ""
    };
    LOGIN_HTML.replace("<!--note-->", note)
}

/// The token prompt while wrong guesses have it locked for `wait`.
fn login_locked_page(wait: std::time::Duration) -> String {
    LOGIN_HTML.replace(
        "<!--note-->",
        &format!(
            "<p class=\"error\" role=\"alert\">Too many wrong tokens: the prompt takes no \
             token for {} s.</p>",
            wait.as_secs().max(1)
        ),
    )
}

/// A page, or the token prompt when the browser has not shown the token yet.
async fn page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if c.gate.allows(&headers) {
        html(StatusCode::OK, INDEX_HTML.to_owned())
    } else {
        html(StatusCode::OK, login_page(false))
    }
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(c): State<Arc<Console>>, form: axum::Form<LoginForm>) -> Response {
    if let Some(wait) = c.gate.login_locked(std::time::Instant::now()) {
        // Not even checked: a guesser learns nothing while the prompt is locked.
        let mut r = html(StatusCode::TOO_MANY_REQUESTS, login_locked_page(wait));
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    if !c.gate.required() || c.gate.token_matches(form.token.trim()) {
        let cookie = c.gate.open_session(c.secure_cookie);
        let mut r = Redirect::to("/").into_response();
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        return r;
    }
    c.gate.login_failed(std::time::Instant::now());
    // A wrong guess costs the guesser time, not the collector.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    html(StatusCode::UNAUTHORIZED, login_page(true))
}

async fn logout(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    c.gate.close_sessions(&headers);
    let mut r = Redirect::to("/").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("mcp_otel_console=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    r
}

async fn require_auth(State(c): State<Arc<Console>>, req: Request, next: Next) -> Response {
    if c.gate.allows(req.headers()) {
        next.run(req).await
    } else {
        api_error(
            StatusCode::UNAUTHORIZED,
            "the console needs the collector's token: a session from the token prompt, or \
             `Authorization: Bearer <token>`",
        )
    }
}

fn api_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

async fn status(State(c): State<Arc<Console>>) -> Response {
    axum::Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "audit": c.audit.is_some(),
        "store": c.audit.as_ref().map(|t| t.kind()),
        "token_required": c.gate.required(),
        "jaeger_url": c.jaeger,
        "held_calls": c.collector.held_calls(),
    }))
    .into_response()
}

#[derive(Deserialize)]
struct RangeQuery {
    range: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

fn parse_range(q: &RangeQuery, now: DateTime<Utc>) -> Result<overview::Range, String> {
    let time = |field: &str, s: &str| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| format!("`{field}` must be an RFC 3339 time, got {s:?}: {e}"))
    };
    match (&q.from, &q.to, &q.range) {
        (Some(from), to, _) => {
            let to = to.as_deref().map_or(Ok(now), |t| time("to", t))?;
            overview::Range::new(time("from", from)?, to)
        }
        (None, Some(_), _) => Err("`to` needs `from`".to_owned()),
        (None, None, range) => overview::Range::last(range.as_deref().unwrap_or("24h"), now),
    }
}

async fn overview_api(State(c): State<Arc<Console>>, Query(q): Query<RangeQuery>) -> Response {
    let range = match parse_range(&q, Utc::now()) {
        Ok(r) => r,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, &e),
    };
    if c.audit.is_none() {
        let recent = c.collector.console.recent().unwrap_or_default();
        return axum::Json(overview::from_recent(&recent, range)).into_response();
    }
    let Some(trail) = &c.audit else {
        return needs_audit();
    };
    answer(trail.overview(range).await)
}

async fn live_api(
    State(c): State<Arc<Console>>,
    Query(filter): Query<live::LiveFilter>,
) -> Response {
    live::stream(&c.collector.console, filter, c.stop.clone()).into_response()
}

async fn alerts_api(State(c): State<Arc<Console>>) -> Response {
    axum::Json(json!({
        "firing": c.collector.active_alerts(),
        "history": c.collector.console.alert_history(),
        "history_limit": feed::ALERT_HISTORY,
    }))
    .into_response()
}

/// Runs the write review for `q`.
async fn run_review(
    c: &Console,
    q: review::ReviewQuery,
) -> Result<crate::audit::review::Review, Response> {
    let filter = q
        .filter(Utc::now())
        .map_err(|e| api_error(StatusCode::BAD_REQUEST, &e))?;
    let trail = c.audit.as_ref().ok_or_else(needs_audit)?;
    trail
        .review(filter)
        .await
        .map_err(|(status, e)| api_error(status, &e))
}

/// The answer of a page that needs the audit trail when there is none.
fn needs_audit() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({
            "error": "this page needs the audit trail, and this collector runs without one \
                      (--audit none)",
            "needs_audit": true,
        })),
    )
        .into_response()
}

async fn review_api(
    State(c): State<Arc<Console>>,
    Query(q): Query<review::ReviewQuery>,
) -> Response {
    match run_review(&c, q).await {
        Ok(r) => (
            [(header::CONTENT_TYPE, "application/json")],
            r.json_listing(review::PAGE_WRITES),
        )
            .into_response(),
        Err(e) => e,
    }
}

/// The review as a file to save: named for the window's start day.
fn attachment(
    r: &crate::audit::review::Review,
    ext: &str,
    content_type: &'static str,
    body: String,
) -> Response {
    let name = format!(
        "mcp-write-review-{}.{ext}",
        r.since.get(..10).unwrap_or("window")
    );
    (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

async fn review_csv(
    State(c): State<Arc<Console>>,
    Query(q): Query<review::ReviewQuery>,
) -> Response {
    match run_review(&c, q).await {
        Ok(r) => attachment(&r, "csv", "text/csv; charset=utf-8", review::csv(&r)),
        Err(e) => e,
    }
}

async fn review_download(
    State(c): State<Arc<Console>>,
    Query(q): Query<review::ReviewQuery>,
) -> Response {
    match run_review(&c, q).await {
        Ok(r) => attachment(&r, "json", "application/json", r.to_json().to_string()),
        Err(e) => e,
    }
}

async fn call_api(State(c): State<Arc<Console>>, Query(q): Query<call::CallQuery>) -> Response {
    let Some(trail) = &c.audit else {
        return needs_audit();
    };
    match trail.call(q).await {
        Ok(Some(mut v)) => {
            let link = v["call"]["trace_id"]
                .as_str()
                .and_then(|t| c.jaeger_link(t));
            v["jaeger_url"] = link.into();
            axum::Json(v).into_response()
        }
        Ok(None) => api_error(StatusCode::NOT_FOUND, "the audit trail has no such call"),
        Err((status, e)) => api_error(status, &e),
    }
}

/// Whether the audit page asks for a new verify run.
#[derive(Debug, Default, Deserialize)]
struct AuditQuery {
    #[serde(default)]
    fresh: bool,
}

/// The last verify result (a run starts in the background when there is none, or on
/// `?fresh=true`).
async fn audit_api(State(c): State<Arc<Console>>, Query(q): Query<AuditQuery>) -> Response {
    let Some(trail) = &c.audit else {
        return needs_audit();
    };
    axum::Json(c.verifier.status(trail, q.fresh)).into_response()
}

async fn search_api(
    State(c): State<Arc<Console>>,
    Query(q): Query<audit::SearchQuery>,
) -> Response {
    let Some(trail) = &c.audit else {
        return needs_audit();
    };
    answer(trail.search(q).await)
}

/// A JSON answer, or the error response.
fn answer<T: serde::Serialize>(r: Result<T, store::Failure>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err((status, e)) => api_error(status, &e),
    }
}
