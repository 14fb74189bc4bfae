//! Raw HTTP/1.1 exchanges on loopback, for tests that check exactly what a server answers
//! (status, headers, body, when the first body byte came) without a client library between;
//! and rmcp Streamable HTTP servers on loopback to put behind the proxy or to post to.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves the rmcp handlers that `make` builds at `/mcp` on 127.0.0.1:0, without SSE keep-alives:
/// with sessions (`stateful`), or stateless 2026-07-28 style with JSON responses. Returns the
/// address; the server runs until the test's runtime ends.
#[cfg(feature = "rmcp")]
pub async fn serve_mcp<S, F>(make: F, stateful: bool) -> SocketAddr
where
    S: rmcp::ServerHandler + Send + 'static,
    F: Fn() -> Result<S, std::io::Error> + Send + Sync + Clone + 'static,
{
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
    use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
    use std::sync::Arc;
    let base = StreamableHttpServerConfig::default().with_sse_keep_alive(None);
    let router = if stateful {
        let svc = StreamableHttpService::new(make, Arc::new(LocalSessionManager::default()), base);
        axum::Router::new().nest_service("/mcp", svc)
    } else {
        let config = base
            .with_legacy_session_mode(false)
            .with_json_response(true);
        let svc =
            StreamableHttpService::new(make, Arc::new(NeverSessionManager::default()), config);
        axum::Router::new().nest_service("/mcp", svc)
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// A raw HTTP/1.1 exchange; returns (status, lowercased head, body, time to first body byte).
pub async fn raw_post(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String, Duration) {
    let mut req = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    sock.write_all(req.as_bytes()).await.unwrap();
    sock.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    let mut first_body = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(20), sock.read(&mut buf))
            .await
            .expect("response in time")
            .unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if first_body.is_none()
            && let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n")
            && raw.len() > i + 4
        {
            first_body = Some(started.elapsed());
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    (
        status,
        head.to_ascii_lowercase(),
        rest.to_owned(),
        first_body.unwrap_or_default(),
    )
}
