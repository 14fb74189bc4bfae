//! Raw HTTP/1.1 exchanges on loopback, for tests that check exactly what a server answers
//! (status, headers, body, when the first body byte came) without a client library between.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
