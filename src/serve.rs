//! Serving connections with bounds no client can push past, authenticated or not: the
//! listeners of `collect` (OTLP/gRPC, OTLP/HTTP, `/metrics`) and the HTTP proxy.
//!
//! - **Connections**: at most a share of the process's file-descriptor limit per listener
//!   (`connection_cap`); past it the listener stops accepting (the kernel's backlog holds the
//!   rest), so one receiver cannot take the descriptors `/healthz` needs. An accept error (out
//!   of descriptors) backs off, doubling from 10 ms to 1 s, instead of spinning.
//! - **Time**: a connection that has not sent a whole request head within `header_timeout` of
//!   opening (or of its previous request) is closed; one with no request in flight and no
//!   byte either way for `idle_timeout` is closed; a body must arrive within `body_timeout`
//!   (`read_body`). HTTP/2 connections are pinged, and closed when the pings go unanswered.
//! - **Memory**: request bodies are read against one budget of bytes in flight shared by every
//!   connection of the process (`BodyBudget`), after the request was authenticated.

use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

/// The bounds of every listener. TOML `[limits]` in `collect`'s configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// A request head must arrive whole within this (slow headers).
    #[serde(with = "crate::duration::text")]
    pub(crate) header_timeout: Duration,
    /// A request body must arrive whole within this (slow bodies).
    #[serde(with = "crate::duration::text")]
    pub(crate) body_timeout: Duration,
    /// A connection with no request in flight and no traffic for this long is closed.
    #[serde(with = "crate::duration::text")]
    pub(crate) idle_timeout: Duration,
    /// Request body bytes held at once, across all connections.
    pub(crate) body_bytes_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(120),
            body_bytes_in_flight: 256 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// Every problem, each naming its field under `prefix`.
    pub(crate) fn problems(&self, prefix: &str, largest_body: usize) -> Vec<String> {
        let mut out = Vec::new();
        for (name, d) in [
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                out.push(format!("`{prefix}.{name}` must be more than 0"));
            }
        }
        if self.body_bytes_in_flight < largest_body || self.body_bytes_in_flight > u32::MAX as usize
        {
            out.push(format!(
                "`{prefix}.body_bytes_in_flight` must be in [{largest_body}, {}] (the largest \
                 request must fit), got {}",
                u32::MAX,
                self.body_bytes_in_flight
            ));
        }
        out
    }
}

/// Descriptors kept free for everything but client connections (files, the store, outgoing
/// connections).
const RESERVED_FDS: u64 = 32;

/// Connections one of `listeners` listeners keeps open at most: an equal share of the
/// descriptors the process may still open, less a reserve.
pub(crate) fn connection_cap(listeners: usize) -> usize {
    let limit = nofile_limit();
    let open = std::fs::read_dir("/proc/self/fd").map_or(16, |d| d.count() as u64);
    let free = limit.saturating_sub(open + RESERVED_FDS);
    usize::try_from(free / listeners.max(1) as u64)
        .unwrap_or(usize::MAX)
        .max(4)
}

fn nofile_limit() -> u64 {
    #[cfg(unix)]
    {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
            return rl.rlim_cur;
        }
    }
    1024
}

/// What a connection is doing, for its deadlines.
#[derive(Debug)]
pub(crate) struct Activity {
    opened: Instant,
    /// Milliseconds after `opened` of the last byte either way.
    last: AtomicU64,
    /// Milliseconds after `opened` (plus one; 0 for none) of the first byte of a request head
    /// still being read.
    head_started: AtomicU64,
    /// Requests in flight (their responses not yet sent whole).
    active: AtomicUsize,
    /// Requests seen so far.
    started: AtomicU64,
    /// Request heads are tracked (HTTP served here); else only idleness counts.
    tracks_requests: bool,
}

impl Activity {
    fn ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last.store(self.ms(), Ordering::Relaxed);
    }

    /// Bytes came in: between requests, that starts a request head.
    fn received(&self) {
        let now = self.ms();
        self.last.store(now, Ordering::Relaxed);
        if self.tracks_requests && self.active.load(Ordering::Relaxed) == 0 {
            let _ = self.head_started.compare_exchange(
                0,
                now + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Marks a request in flight (its head is in) until the guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// When the connection is to be closed, as things stand.
    fn deadline(&self, t: &Timeouts) -> Instant {
        let last = self.opened + Duration::from_millis(self.last.load(Ordering::Relaxed));
        if self.active.load(Ordering::Relaxed) > 0 {
            // Looked at again then: the request may have ended.
            return Instant::now() + t.idle;
        }
        if self.tracks_requests {
            let head = self.head_started.load(Ordering::Relaxed);
            if head > 0 {
                // A request head is being read: it must be in within the header timeout.
                return self.opened + Duration::from_millis(head - 1) + t.header;
            }
            if self.started.load(Ordering::Relaxed) == 0 {
                // A new connection must send its first request promptly.
                return self.opened + t.header;
            }
        }
        last + t.idle
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy, Debug)]
struct Timeouts {
    header: Duration,
    idle: Duration,
}

/// A connection under its deadlines: reads fail with `TimedOut` once a deadline passed, which
/// makes the server drop (and so close) the connection. It holds its listener's slot.
pub(crate) struct Guarded<IO> {
    io: IO,
    activity: Arc<Activity>,
    timeouts: Timeouts,
    timer: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl<IO> Guarded<IO> {
    fn new(io: IO, limits: &Limits, tracks_requests: bool, slot: OwnedSemaphorePermit) -> Self {
        let opened = Instant::now();
        let timeouts = Timeouts {
            header: limits.header_timeout,
            idle: limits.idle_timeout,
        };
        Guarded {
            io,
            activity: Arc::new(Activity {
                opened,
                last: AtomicU64::new(0),
                head_started: AtomicU64::new(0),
                active: AtomicUsize::new(0),
                started: AtomicU64::new(0),
                tracks_requests,
            }),
            timer: Box::pin(tokio::time::sleep_until(opened + timeouts.header)),
            timeouts,
            _slot: slot,
        }
    }

    pub(crate) fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// `Err` once the connection is past its deadline; else arms the timer for it.
    fn check(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        loop {
            let deadline = self.activity.deadline(&self.timeouts);
            if deadline <= Instant::now() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connection closed: too slow or idle",
                ));
            }
            if self.timer.deadline() != deadline {
                self.timer.as_mut().reset(deadline);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.activity.received();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.check(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r
            && *n > 0
        {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Guarded<tokio::net::TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Accepts with a slot from `slots` (waiting while none is free), backing off on errors.
async fn accept<L: axum::serve::Listener>(
    listener: &mut L,
    slots: &Arc<Semaphore>,
) -> (L::Io, L::Addr, OwnedSemaphorePermit) {
    let slot = slots
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    // axum's listeners sleep a second on an accept error (out of descriptors) themselves.
    let (io, addr) = listener.accept().await;
    (io, addr, slot)
}

/// Accepted TCP connections, guarded, as tonic's `serve_with_incoming` wants them: at most
/// `cap` open, each closed after `limits.idle_timeout` without traffic. An accept error waits
/// before the next try, doubling up to a second, instead of spinning.
pub(crate) fn incoming(
    listener: tokio::net::TcpListener,
    limits: Limits,
    cap: usize,
) -> impl futures::Stream<Item = std::io::Result<Guarded<tokio::net::TcpStream>>> {
    let slots = Arc::new(Semaphore::new(cap));
    futures::stream::unfold((listener, Duration::ZERO), move |(l, mut backoff)| {
        let slots = slots.clone();
        let limits = limits.clone();
        async move {
            let slot = slots.acquire_owned().await.expect("never closed");
            loop {
                match l.accept().await {
                    Ok((s, _)) => {
                        let _ = s.set_nodelay(true);
                        let guarded = Guarded::new(s, &limits, false, slot);
                        return Some((Ok(guarded), (l, Duration::ZERO)));
                    }
                    Err(e) if is_connection_error(&e) => continue,
                    Err(_) => {
                        backoff =
                            (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                        tokio::time::sleep(backoff).await;
                    }
                }
            }
        }
    })
}

/// Errors about one connection (it was reset before we took it): the next accept is fine.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// How often HTTP/2 connections are pinged, and how long an answer may take.
pub(crate) const H2_KEEPALIVE: (Duration, Duration) =
    (Duration::from_secs(30), Duration::from_secs(10));

/// Serves `router` on `listener` under `limits`, at most `cap` connections at once, until
/// `stop` (connections still open then finish what they are doing, up to a few seconds, on
/// their own).
pub(crate) async fn serve_http<L>(
    mut listener: L,
    router: axum::Router,
    limits: Limits,
    cap: usize,
    stop: CancellationToken,
) where
    L: axum::serve::Listener,
    L::Addr: Clone + Send + Sync + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let slots = Arc::new(Semaphore::new(cap));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE.0)
        .keep_alive_timeout(H2_KEEPALIVE.1);
    let builder = Arc::new(builder);
    loop {
        let (io, addr, slot) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = accept(&mut listener, &slots) => accepted,
        };
        let guarded = Guarded::new(io, &limits, true, slot);
        let activity = guarded.activity().clone();
        let router = router.clone();
        let builder = builder.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: http::Request<_>| {
                let in_flight = activity.begin();
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(addr.clone()));
                let call =
                    tower::ServiceExt::oneshot(router.clone(), req.map(axum::body::Body::new));
                async move {
                    let resp = call.await?;
                    // The request stays in flight until its response body is sent whole.
                    Ok::<_, std::convert::Infallible>(resp.map(|body| {
                        axum::body::Body::new(body.map_frame(move |f| {
                            let _ = &in_flight;
                            f
                        }))
                    }))
                }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(guarded), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        });
    }
}

/// One budget of request-body bytes in flight, shared by every connection of the process.
#[derive(Clone, Debug)]
pub(crate) struct BodyBudget(Arc<Semaphore>);

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("request body not received within {0:?}")]
    TooSlow(Duration),
    #[error("too many request bytes in flight; retry later")]
    Busy,
    #[error("reading the request body: {0}")]
    Read(String),
    /// The body's encoding could not be undone (bad gzip).
    #[error("{0}")]
    Decode(String),
}

/// A body that was read, with its share of the budget (given back when dropped).
#[derive(Debug)]
pub(crate) struct HeldBody {
    pub(crate) bytes: bytes::Bytes,
    _permit: OwnedSemaphorePermit,
}

impl BodyBudget {
    pub(crate) fn new(bytes: usize) -> Self {
        BodyBudget(Arc::new(Semaphore::new(bytes.min(u32::MAX as usize))))
    }

    /// Reads `body` (at most `limit` bytes) within `timeout`, taking its bytes from the budget
    /// first: a declared length up front (a body declared too large is refused unread), else as
    /// the chunks come. Waiting for the budget counts against the timeout.
    pub(crate) async fn read(
        &self,
        body: axum::body::Body,
        declared: Option<u64>,
        limit: usize,
        timeout: Duration,
    ) -> Result<HeldBody, BodyError> {
        if declared.is_some_and(|n| n > limit as u64) {
            linger(body, timeout);
            return Err(BodyError::TooLarge { limit });
        }
        match self.read_up_to(body, declared, limit, timeout).await? {
            Head::Whole(held) => Ok(held),
            Head::Longer(held, rest) => {
                drop(held);
                linger(rest, timeout);
                Err(BodyError::TooLarge { limit })
            }
        }
    }

    /// Reads `body` within `timeout` until it ends or passes `limit` bytes (then what was read
    /// and the rest of the body come back), taking what it holds from the budget like
    /// [`BodyBudget::read`]; a declared length takes at most `limit` up front.
    pub(crate) async fn read_up_to(
        &self,
        body: axum::body::Body,
        declared: Option<u64>,
        limit: usize,
        timeout: Duration,
    ) -> Result<Head, BodyError> {
        let read = async {
            let mut permit: Option<OwnedSemaphorePermit> = None;
            if let Some(n) = declared.filter(|n| *n > 0) {
                permit = Some(self.take(n.min(limit as u64) as usize).await?);
            }
            let mut held = permit.as_ref().map_or(0, |p| p.num_permits());
            let mut buf = bytes::BytesMut::with_capacity(held.min(limit));
            let mut body = body;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let need = (buf.len() + data.len()).saturating_sub(held);
                if need > 0 {
                    self.grow(&mut permit, need).await?;
                    held += need;
                }
                buf.extend_from_slice(&data);
                if buf.len() > limit {
                    let held = HeldBody {
                        bytes: buf.freeze(),
                        _permit: self.settle(permit).await?,
                    };
                    return Ok(Head::Longer(held, body));
                }
            }
            Ok(Head::Whole(HeldBody {
                bytes: buf.freeze(),
                _permit: self.settle(permit).await?,
            }))
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| BodyError::TooSlow(timeout))?
    }

    /// Decompresses the gzip body `compressed` (at most `limit` bytes out) within `timeout`,
    /// taking the decompressed bytes from the budget as they come out: a small gzip bomb holds
    /// no more memory than the budget has, however many connections send one at once. When the
    /// budget has no room for the next piece the body is refused as [`BodyError::Busy`]
    /// (retryable) rather than held half-inflated.
    pub(crate) async fn gunzip(
        &self,
        compressed: &[u8],
        limit: usize,
        timeout: Duration,
    ) -> Result<HeldBody, BodyError> {
        use std::io::Read;
        const CHUNK: usize = 256 * 1024;
        let inflate = async {
            let mut decoder = flate2::read::GzDecoder::new(compressed);
            let mut permit: Option<OwnedSemaphorePermit> = None;
            // Bytes taken from the budget: the buffer's capacity, which never passes `limit`.
            let mut held = 0;
            let mut out: Vec<u8> = Vec::new();
            loop {
                let len = out.len();
                let room = limit - len;
                if room == 0 {
                    let mut probe = [0u8; 1];
                    match read_full(&mut decoder, &mut probe) {
                        Ok(0) => break,
                        Ok(_) => return Err(BodyError::TooLarge { limit }),
                        Err(e) => return Err(BodyError::Decode(format!("bad gzip body: {e}"))),
                    }
                }
                let want = CHUNK.min(room);
                if len + want > held {
                    let capacity = (held * 2).max(len + want).min(limit);
                    // Not waited for while holding part of the budget: bodies inflating side
                    // by side would wait on each other for ever.
                    let more = self
                        .0
                        .clone()
                        .try_acquire_many_owned((capacity - held) as u32)
                        .map_err(|_| BodyError::Busy)?;
                    match &mut permit {
                        Some(p) => p.merge(more),
                        None => permit = Some(more),
                    }
                    out.reserve_exact(capacity - len);
                    held = capacity;
                }
                out.resize(len + want, 0);
                let n = read_full(&mut decoder, &mut out[len..])
                    .map_err(|e| BodyError::Decode(format!("bad gzip body: {e}")))?;
                out.truncate(len + n);
                if n < want {
                    break;
                }
                // Give the other connections a turn between chunks.
                tokio::task::yield_now().await;
            }
            Ok(HeldBody {
                bytes: bytes::Bytes::from(out),
                _permit: self.settle(permit).await?,
            })
        };
        fn read_full(r: &mut impl Read, mut buf: &mut [u8]) -> std::io::Result<usize> {
            let mut n = 0;
            while !buf.is_empty() {
                match r.read(buf)? {
                    0 => break,
                    k => {
                        n += k;
                        buf = &mut buf[k..];
                    }
                }
            }
            Ok(n)
        }
        tokio::time::timeout(timeout, inflate)
            .await
            .map_err(|_| BodyError::TooSlow(timeout))?
    }

    async fn take(&self, n: usize) -> Result<OwnedSemaphorePermit, BodyError> {
        self.0
            .clone()
            .acquire_many_owned(u32::try_from(n).map_err(|_| BodyError::Busy)?)
            .await
            .map_err(|_| BodyError::Busy)
    }

    /// Adds `n` bytes to `permit`.
    async fn grow(
        &self,
        permit: &mut Option<OwnedSemaphorePermit>,
        n: usize,
    ) -> Result<(), BodyError> {
        let more = self.take(n).await?;
        match permit {
            Some(p) => p.merge(more),
            None => *permit = Some(more),
        }
        Ok(())
    }

    async fn settle(
        &self,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<OwnedSemaphorePermit, BodyError> {
        match permit {
            Some(p) => Ok(p),
            None => self.take(0).await,
        }
    }
}

/// What [`BodyBudget::read_up_to`] read.
#[derive(Debug)]
pub(crate) enum Head {
    /// The whole body.
    Whole(HeldBody),
    /// More than the limit: the bytes read so far, and the rest of the body.
    Longer(HeldBody, axum::body::Body),
}

/// The most bytes of a refused body read (and thrown away) after its refusal.
pub(crate) const LINGER_BYTES: u64 = 128 << 20;

/// Reads what is left of a refused body and throws it away, off the handler, for up to
/// `timeout` and [`LINGER_BYTES`], holding one chunk at a time: a client still sending gets to
/// read its answer (a 413 it will not retry) instead of a connection reset it would retry.
/// Like nginx's lingering close.
pub(crate) fn linger(body: axum::body::Body, timeout: Duration) {
    tokio::spawn(async move {
        let mut body = body;
        let mut seen = 0u64;
        let _ = tokio::time::timeout(timeout, async {
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    seen += data.len() as u64;
                    if seen > LINGER_BYTES {
                        break;
                    }
                }
            }
        })
        .await;
    });
}

/// The `Content-Length` a request declares.
pub(crate) fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
