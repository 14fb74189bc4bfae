//! Alert delivery: a log line per change, and an Alertmanager v2 webhook
//! (`POST /api/v2/alerts`) with retry and backoff.
//!
//! [`Notifier::send`] never waits: notifications go into a bounded queue that one task drains;
//! when the queue is full the notification is dropped and counted. The webhook gets each alert
//! when it fires and when it resolves, and the firing set again every `resend` interval (as
//! Prometheus does), since Alertmanager resolves alerts it has not heard of for a while.
//! Notifications the webhook never accepts (refused with a 4xx, or still failing after the
//! last retry) are counted in the same counter as the ones a full queue drops.
//!
//! The client speaks `http://` and `https://` (rustls, with the webpki root certificates), so
//! the webhook can be an Alertmanager behind TLS.

use super::alerts::{Alert, AlertEvent};
use prometheus_client::metrics::counter::Counter;
use std::time::Duration;
use tokio::sync::mpsc;

/// Retry schedule of one webhook POST.
const BACKOFF: [Duration; 5] = [
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
];

/// The sending side. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Notifier {
    tx: Option<mpsc::Sender<Vec<Alert>>>,
    dropped: Counter,
}

impl Notifier {
    /// Starts the delivery task for `url` (an Alertmanager `…/api/v2/alerts`), or a notifier
    /// that only logs when `url` is `None`.
    pub(crate) fn start(url: Option<String>, generator_url: String, dropped: Counter) -> Self {
        let Some(url) = url else {
            return Notifier { tx: None, dropped };
        };
        let (tx, mut rx) = mpsc::channel::<Vec<Alert>>(1024);
        let undelivered = dropped.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(super::config::WEBHOOK_TIMEOUT)
                .build()
                .expect("an HTTP(S) client with default settings builds");
            while let Some(alerts) = rx.recv().await {
                let body: Vec<serde_json::Value> = alerts
                    .iter()
                    .map(|a| to_alertmanager(a, &generator_url))
                    .collect();
                if !post_with_retry(&client, &url, &body).await {
                    undelivered.inc_by(body.len() as u64);
                }
            }
        });
        Notifier {
            tx: Some(tx),
            dropped,
        }
    }

    /// Logs the events and queues them for the webhook; never waits.
    pub(crate) fn send(&self, events: Vec<AlertEvent>) {
        if events.is_empty() {
            return;
        }
        let mut alerts = Vec::with_capacity(events.len());
        for e in events {
            let (state, alert) = match e {
                AlertEvent::Fired(a) => ("firing", a),
                AlertEvent::Resolved(a) => ("resolved", a),
            };
            eprintln!(
                "{}",
                serde_json::json!({"alert": state, "labels": alert.labels, "summary": alert.summary,
                                   "value": alert.value})
            );
            alerts.push(alert);
        }
        self.resend(alerts);
    }

    /// Queues alerts for the webhook as they are (the periodic re-send of firing alerts).
    pub(crate) fn resend(&self, alerts: Vec<Alert>) {
        if alerts.is_empty() {
            return;
        }
        let n = alerts.len() as u64;
        if let Some(tx) = &self.tx
            && tx.try_send(alerts).is_err()
        {
            self.dropped.inc_by(n);
        }
    }
}

/// POSTs `body`, retrying per [`BACKOFF`]; `false` when the webhook never accepted it.
async fn post_with_retry(client: &reqwest::Client, url: &str, body: &[serde_json::Value]) -> bool {
    let payload = serde_json::to_vec(body).expect("alerts serialise");
    for (attempt, pause) in BACKOFF.iter().enumerate() {
        let result = client
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(payload.clone())
            .send()
            .await;
        match result {
            Ok(r) if r.status().is_success() => return true,
            // A 4xx other than 429 will not get better by retrying.
            Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                eprintln!(
                    "mcp-otel: alert webhook {url} refused the alerts: {}",
                    r.status()
                );
                return false;
            }
            Ok(r) => eprintln!(
                "mcp-otel: alert webhook {url}: {} (attempt {})",
                r.status(),
                attempt + 1
            ),
            Err(e) => eprintln!(
                "mcp-otel: alert webhook {url}: {e} (attempt {})",
                attempt + 1
            ),
        }
        tokio::time::sleep(*pause).await;
    }
    eprintln!(
        "mcp-otel: alert webhook {url}: giving up on {} alert(s)",
        body.len()
    );
    false
}

/// The Alertmanager v2 API form of an alert (`POST /api/v2/alerts` takes a list of these).
pub(crate) fn to_alertmanager(alert: &Alert, generator_url: &str) -> serde_json::Value {
    use chrono::SecondsFormat;
    let mut v = serde_json::json!({
        "labels": alert.labels,
        "annotations": {"summary": alert.summary},
        "startsAt": alert.starts_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "generatorURL": generator_url,
    });
    if let Some(end) = alert.ends_at {
        v["endsAt"] = end.to_rfc3339_opts(SecondsFormat::Millis, true).into();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn an_https_webhook_is_spoken_to_in_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let notifier = Notifier::start(
            Some(format!("https://127.0.0.1:{port}/api/v2/alerts")),
            "http://collect/api/alerts".into(),
            Counter::default(),
        );
        notifier.resend(vec![Alert {
            labels: [("alertname".to_owned(), "McpWriteSpike".to_owned())].into(),
            summary: "21 MCP write operations in 1m (threshold 20)".into(),
            value: 21.0,
            starts_at: chrono::Utc::now(),
            ends_at: None,
        }]);
        let (mut conn, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("the webhook connects within 10 s")
            .unwrap();
        let mut first = [0u8; 3];
        tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut first))
            .await
            .expect("the webhook writes within 10 s")
            .unwrap();
        // A TLS record of type handshake (22), version 3.x: a ClientHello, not plain HTTP.
        assert_eq!(first[0], 22, "not TLS: {first:?}");
        assert_eq!(first[1], 3, "not TLS: {first:?}");
    }
}
