//! `mcp-otel collect` configuration: parse (TOML file, then flags and environment on top), then
//! validate (pure; every problem collected and named), then build.

use super::alerts::AlertConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `collect` needs. Field names are the TOML keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectConfig {
    /// OTLP/gRPC listen address (also serves the audit review API).
    pub grpc_listen: String,
    /// OTLP/HTTP listen address (`POST /v1/traces`, protobuf or JSON).
    pub http_listen: String,
    /// `/metrics`, `/healthz`, `/api/alerts`.
    pub metrics_listen: String,
    /// The next OTLP/gRPC hop (e.g. Jaeger), if any.
    pub forward: Option<String>,
    /// Alertmanager base URL or full `…/api/v2/alerts` URL, if any.
    pub alert_webhook: Option<String>,
    /// A bearer token every OTLP request must carry, if set.
    pub token: Option<String>,
    /// The Jaeger UI's base URL (`http://jaeger:16686`), if any: the console's call detail
    /// links to `<jaeger_url>/trace/<trace id>`.
    pub jaeger_url: Option<String>,
    /// At most this many distinct values per label per metric.
    pub max_label_values: usize,
    /// At most this many OTLP requests processed at once (per receiver).
    pub max_concurrent_requests: usize,
    /// Spans held for forwarding; when full the oldest are dropped and counted.
    pub forward_buffer_spans: usize,
    /// Spans per forwarded request.
    pub forward_batch_spans: usize,
    /// The audit trail's SQLite file, or a `postgres://…` URL (`none` disables it). Every
    /// export is acknowledged only after its calls are committed there.
    pub audit: Option<PathBuf>,
    /// With a PostgreSQL audit trail: this replica's chain id (unique per replica) [default:
    /// `<hostname>/<grpc_listen>`].
    pub audit_chain_id: Option<String>,
    /// With a PostgreSQL audit trail: the key that signs this replica's checkpoints [default:
    /// `mcp-audit-<chain id>.key` in the working directory].
    pub audit_key: Option<PathBuf>,
    /// Audit rows older than this are pruned (through a signed retention checkpoint).
    #[serde(with = "crate::duration::text")]
    pub retention: Duration,
    /// How long another instrumentation's record of a call waits for a record of ours of the
    /// same call before it is counted on its own (default 10s: twice the OTel batch delay).
    #[serde(with = "crate::duration::text")]
    pub hold_window: Duration,
    /// PEM certificate chain for TLS on every listener (build with `--features tls`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key matching `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Thresholds and windows of the alert rules (`[alerts.*]`).
    pub alerts: AlertConfig,
    /// Timeouts and bytes in flight on every listener (`[limits]`).
    pub limits: crate::serve::Limits,
}

impl Default for CollectConfig {
    fn default() -> Self {
        CollectConfig {
            grpc_listen: "127.0.0.1:4317".into(),
            http_listen: "127.0.0.1:4318".into(),
            metrics_listen: "127.0.0.1:9464".into(),
            forward: None,
            alert_webhook: None,
            token: None,
            jaeger_url: None,
            max_label_values: 1000,
            max_concurrent_requests: 64,
            forward_buffer_spans: 100_000,
            forward_batch_spans: 2048,
            audit: Some(PathBuf::from("mcp-audit.db")),
            audit_chain_id: None,
            audit_key: None,
            retention: Duration::from_secs(90 * 86400),
            hold_window: DEFAULT_HOLD_WINDOW,
            tls_cert: None,
            tls_key: None,
            alerts: AlertConfig::default(),
            limits: crate::serve::Limits::default(),
        }
    }
}

/// The default hold window: twice the OpenTelemetry SDKs' batch delay (5 s), so that the records
/// of one call from two processes exporting on their own schedules meet.
pub(crate) const DEFAULT_HOLD_WINDOW: Duration = Duration::from_secs(10);

/// A configuration that cannot be used; lists every problem.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {message}")]
    Read {
        /// The file's path.
        path: PathBuf,
        /// The I/O error's message.
        message: String,
    },
    /// The config file is not valid TOML for this configuration (unknown key, wrong type, …).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file's path.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// Values that cannot be used, every problem listed, each naming its field.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Checked listen addresses and URLs.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Validated {
    pub(crate) grpc_listen: SocketAddr,
    pub(crate) http_listen: SocketAddr,
    pub(crate) metrics_listen: SocketAddr,
    pub(crate) forward: Option<http::Uri>,
    pub(crate) alert_webhook: Option<String>,
}

fn check_url(field: &str, value: &str, errors: &mut Vec<String>) -> Option<http::Uri> {
    match value.parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => Some(u),
        _ => {
            errors.push(format!(
                "`{field}` must be an http:// or https:// URL, got {value:?}"
            ));
            None
        }
    }
}

impl CollectConfig {
    /// Reads a TOML file; keys not listed above are errors.
    pub(crate) fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.into(),
            message: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })
    }

    /// Every problem at once, each naming its field.
    pub(crate) fn validate(&self) -> Result<Validated, ConfigError> {
        let mut errors = Vec::new();
        let mut addr = |field: &str, value: &str| match value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(format!(
                    "`{field}` must be HOST:PORT with an IP host, got {value:?}"
                ));
                None
            }
        };
        let limits = self
            .limits
            .problems("limits", crate::collect::receive::MAX_MESSAGE_BYTES);
        let grpc = addr("grpc_listen", &self.grpc_listen);
        let http = addr("http_listen", &self.http_listen);
        let metrics = addr("metrics_listen", &self.metrics_listen);
        let forward = self
            .forward
            .as_deref()
            .and_then(|f| check_url("forward", f, &mut errors));
        let webhook = self.alert_webhook.as_deref().and_then(|w| {
            check_url("alert_webhook", w, &mut errors)?;
            let trimmed = w.trim_end_matches('/');
            Some(if trimmed.ends_with("/api/v2/alerts") {
                trimmed.to_owned()
            } else {
                format!("{trimmed}/api/v2/alerts")
            })
        });
        if let Some(j) = &self.jaeger_url
            && let Some(u) = check_url("jaeger_url", j, &mut errors)
            && (u.query().is_some() || j.contains('#'))
        {
            errors.push(format!(
                "`jaeger_url` must be the Jaeger UI's base URL without a query or fragment, got \
                 {j:?}"
            ));
        }
        errors.extend(limits);
        if let Some(t) = &self.token
            && (t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            errors.push(format!(
                "`token` must be at least 16 characters without spaces, got {} characters",
                t.len()
            ));
        }
        for (field, value) in [
            ("max_label_values", self.max_label_values),
            ("max_concurrent_requests", self.max_concurrent_requests),
            ("forward_buffer_spans", self.forward_buffer_spans),
            ("forward_batch_spans", self.forward_batch_spans),
        ] {
            if value == 0 {
                errors.push(format!("`{field}` must be at least 1, got 0"));
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => {}
            (Some(_), None) => errors.push("`tls_cert` is set but `tls_key` is not".to_owned()),
            (None, Some(_)) => errors.push("`tls_key` is set but `tls_cert` is not".to_owned()),
            (Some(c), Some(k)) => {
                if !cfg!(feature = "tls") {
                    errors.push(
                        "`tls_cert` needs a build with TLS: `cargo build --release --features tls`"
                            .to_owned(),
                    );
                }
                for (field, path) in [("tls_cert", c), ("tls_key", k)] {
                    if !path.is_file() {
                        errors.push(format!(
                            "`{field}` {} is not a readable file",
                            path.display()
                        ));
                    }
                }
            }
        }
        if self.retention < Duration::from_secs(3600) {
            errors.push(format!(
                "`retention` must be at least 1h, got {}s",
                self.retention.as_secs()
            ));
        }
        if self.hold_window > Duration::from_secs(3600) {
            errors.push(format!(
                "`hold_window` must be at most 1h, got {}s",
                self.hold_window.as_secs()
            ));
        }
        errors.extend(self.alerts.validate());
        if let (Some(g), Some(h), Some(m)) = (grpc, http, metrics) {
            for (a, b, x, y) in [
                ("grpc_listen", "http_listen", g, h),
                ("grpc_listen", "metrics_listen", g, m),
                ("http_listen", "metrics_listen", h, m),
            ] {
                if x == y && x.port() != 0 {
                    errors.push(format!("`{a}` and `{b}` are both {x}"));
                }
            }
        }
        match (errors.is_empty(), grpc, http, metrics) {
            (true, Some(grpc_listen), Some(http_listen), Some(metrics_listen)) => Ok(Validated {
                grpc_listen,
                http_listen,
                metrics_listen,
                forward,
                alert_webhook: webhook,
            }),
            _ => Err(ConfigError::Invalid(errors)),
        }
    }

    /// Loopback on free ports, no audit trail and a short hold window (500 ms: in-process
    /// exporters flush at once), for tests and the demo.
    pub fn ephemeral() -> Self {
        CollectConfig {
            grpc_listen: "127.0.0.1:0".into(),
            http_listen: "127.0.0.1:0".into(),
            metrics_listen: "127.0.0.1:0".into(),
            audit: None,
            hold_window: Duration::from_millis(500),
            ..CollectConfig::default()
        }
    }

    /// The audit trail's SQLite file, unless it is disabled (`audit = "none"` or absent) or in
    /// PostgreSQL.
    pub(crate) fn audit_path(&self) -> Option<&std::path::Path> {
        self.audit
            .as_deref()
            .filter(|p| p.as_os_str() != "none" && self.audit_postgres().is_none())
    }

    /// The audit trail's PostgreSQL URL, when `audit` is one.
    pub(crate) fn audit_postgres(&self) -> Option<&str> {
        self.audit
            .as_deref()
            .and_then(|p| p.to_str())
            .filter(|s| crate::audit::pg::is_postgres_url(s))
    }

    /// The PostgreSQL writer's options: this replica's chain and key.
    pub(crate) fn audit_postgres_options(&self) -> crate::audit::pg::PgOptions {
        let chain_id = self
            .audit_chain_id
            .clone()
            .unwrap_or_else(|| crate::audit::pg::writer::default_chain_id(&self.grpc_listen));
        let mut options = crate::audit::pg::PgOptions::new(chain_id);
        if let Some(key) = &self.audit_key {
            options.key_path.clone_from(key);
        }
        options
    }
}

/// Webhook delivery timing.
pub(crate) const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_named() {
        let mut c = CollectConfig {
            grpc_listen: "localhost".into(),
            forward: Some("jaeger:4317".into()),
            token: Some("short".into()),
            max_label_values: 0,
            ..CollectConfig::default()
        };
        c.alerts.error_rate.threshold = 1.5;
        let ConfigError::Invalid(errors) = c.validate().unwrap_err() else {
            panic!()
        };
        assert_eq!(errors.len(), 5, "{errors:#?}");
        assert!(errors[0].starts_with("`grpc_listen` must be HOST:PORT"));
        assert!(errors[1].starts_with("`forward` must be an http:// or https:// URL"));
        assert!(errors[2].starts_with("`token` must be at least 16 characters"));
        assert_eq!(errors[3], "`max_label_values` must be at least 1, got 0");
        assert_eq!(
            errors[4],
            "`alerts.error_rate.threshold` must be in (0, 1], got 1.5"
        );
    }

    #[test]
    fn the_jaeger_url_is_an_http_base_url() {
        let with = |u: &str| CollectConfig {
            jaeger_url: Some(u.into()),
            ..CollectConfig::default()
        };
        assert!(with("http://jaeger:16686").validate().is_ok());
        assert!(with("https://tracing.example/jaeger/").validate().is_ok());
        for bad in [
            "jaeger:16686",
            "ftp://jaeger/",
            "http://jaeger:16686/?x=1",
            "http://j/#a",
        ] {
            let ConfigError::Invalid(errors) = with(bad).validate().unwrap_err() else {
                panic!()
            };
            assert!(
                errors[0].starts_with("`jaeger_url` must be"),
                "{bad}: {errors:?}"
            );
        }
        let c: CollectConfig = toml::from_str("jaeger_url = \"http://j:16686\"").unwrap();
        assert_eq!(c.jaeger_url.as_deref(), Some("http://j:16686"));
    }

    #[test]
    fn the_hold_window_is_a_duration_of_at_most_an_hour() {
        let c: CollectConfig = toml::from_str("hold_window = \"2s\"").unwrap();
        assert_eq!(c.hold_window, Duration::from_secs(2));
        assert_eq!(CollectConfig::default().hold_window, DEFAULT_HOLD_WINDOW);
        let long = CollectConfig {
            hold_window: Duration::from_secs(7200),
            ..CollectConfig::default()
        };
        let ConfigError::Invalid(errors) = long.validate().unwrap_err() else {
            panic!()
        };
        assert_eq!(errors, ["`hold_window` must be at most 1h, got 7200s"]);
    }

    #[test]
    fn toml_files_parse_with_durations_and_reject_unknown_keys() {
        let text = r#"
            metrics_listen = "0.0.0.0:9464"
            alert_webhook = "http://alertmanager:9093"
            [alerts.tool_call_loop]
            threshold = 50
            window = "30s"
        "#;
        let c: CollectConfig = toml::from_str(text).unwrap();
        assert_eq!(c.alerts.tool_call_loop.threshold, 50);
        assert_eq!(c.alerts.tool_call_loop.window, Duration::from_secs(30));
        let v = c.validate().unwrap();
        assert_eq!(
            v.alert_webhook.as_deref(),
            Some("http://alertmanager:9093/api/v2/alerts")
        );
        let err = toml::from_str::<CollectConfig>("metrics_lisen = \"x\"").unwrap_err();
        assert!(err.to_string().contains("metrics_lisen"), "{err}");
    }
}
