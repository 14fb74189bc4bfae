//! Where and how spans leave: the OTLP protocol (gRPC, HTTP/protobuf, HTTP/JSON) and endpoint,
//! resolved as the OpenTelemetry spec says (code > signal-specific env > generic env > default),
//! and the exporter built for them.
//!
//! Resolution happens here rather than inside opentelemetry-otlp so that the target is known
//! before the first export: a failed export names the protocol and the URL it went to, and the
//! defaults are the spec's (gRPC on 4317 unless a protocol is chosen; OTLP/HTTP on 4318 at
//! `/v1/traces`), whatever exporter features are compiled in.

use super::grpc::{GrpcExport, GrpcSettings};
use super::pipeline::{BatchExport, ConfigError, SdkExport};
use super::span::SpanOptions;
use crate::record::ToolCall;
use opentelemetry_otlp::{
    Compression, Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use std::fmt;

/// The generic protocol variable (`grpc`, `http/protobuf`, `http/json`).
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// The traces-only protocol variable; overrides [`OTEL_EXPORTER_OTLP_PROTOCOL`].
pub const OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
/// The generic endpoint variable: a base URL (for HTTP, `/v1/traces` is appended).
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The traces-only endpoint variable: the full URL, used as is; overrides
/// [`OTEL_EXPORTER_OTLP_ENDPOINT`].
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const COMPRESSION_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
];
/// The path OTLP/HTTP trace exports go to under a base endpoint.
pub const TRACES_PATH: &str = "v1/traces";

/// The OTLP wire protocol, as `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `grpc`: the project's default (collectors listen on 4317).
    #[default]
    Grpc,
    /// `http/protobuf` (collectors listen on 4318).
    HttpProtobuf,
    /// `http/json` (4318 too).
    HttpJson,
}

impl OtlpProtocol {
    /// The spec's name of the protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
            OtlpProtocol::HttpJson => "http/json",
        }
    }

    /// The spec's default endpoint for the protocol (for HTTP, the base: `/v1/traces` follows).
    pub fn default_endpoint(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "http://localhost:4317",
            OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson => "http://localhost:4318",
        }
    }

    fn is_http(self) -> bool {
        self != OtlpProtocol::Grpc
    }

    fn parse(field: &str, raw: &str) -> Result<Self, ConfigError> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "grpc" => Ok(OtlpProtocol::Grpc),
            "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
            "http/json" => Ok(OtlpProtocol::HttpJson),
            _ => Err(ConfigError {
                field: field.to_owned(),
                problem: "must be grpc, http/protobuf or http/json",
                value: raw.to_owned(),
            }),
        }
    }
}

impl fmt::Display for OtlpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A resolved export target: the protocol and the full URL spans are sent to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpTarget {
    /// The wire protocol spans are sent over.
    pub protocol: OtlpProtocol,
    /// For gRPC the collector's address; for HTTP the URL of the POST (`…/v1/traces`).
    pub endpoint: String,
}

impl fmt::Display for OtlpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OTLP {} to {}", self.protocol, self.endpoint)
    }
}

/// `base` + `/v1/traces`, with exactly one slash between them.
fn traces_url(base: &str) -> String {
    format!("{}/{TRACES_PATH}", base.trim_end_matches('/'))
}

/// True when `url` has no path beyond `/`.
fn has_no_path(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    match rest.find('/') {
        None => true,
        Some(i) => rest[i..].split(['?', '#']).next() == Some("/"),
    }
}

impl OtlpTarget {
    /// Resolves the target from what the code says (`protocol`, `endpoint`), then the
    /// environment read through `get`, then the defaults. Empty variables count as unset.
    ///
    /// Protocol: code > `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` > `OTEL_EXPORTER_OTLP_PROTOCOL` >
    /// `grpc`. Endpoint: code (for HTTP, a URL without a path gets `/v1/traces`) >
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as it is) > `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (for HTTP, `/v1/traces` is appended) > the protocol's default.
    pub fn resolve(
        protocol: Option<OtlpProtocol>,
        endpoint: Option<&str>,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let var = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let protocol = match protocol {
            Some(p) => p,
            None => match [
                OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
                OTEL_EXPORTER_OTLP_PROTOCOL,
            ]
            .into_iter()
            .find_map(|name| var(name).map(|v| (name, v)))
            {
                Some((name, v)) => OtlpProtocol::parse(name, &v)?,
                None => OtlpProtocol::Grpc,
            },
        };
        let http = protocol.is_http();
        let endpoint = if let Some(e) = endpoint.filter(|e| !e.is_empty()) {
            match http && has_no_path(e) {
                true => traces_url(e),
                false => e.to_owned(),
            }
        } else if let Some(e) = var(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) {
            e.trim().to_owned()
        } else if let Some(e) = var(OTEL_EXPORTER_OTLP_ENDPOINT) {
            match http {
                true => traces_url(e.trim()),
                false => e.trim().to_owned(),
            }
        } else {
            match http {
                true => traces_url(protocol.default_endpoint()),
                false => protocol.default_endpoint().to_owned(),
            }
        };
        Ok(OtlpTarget { protocol, endpoint })
    }

    /// [`OtlpTarget::resolve`] over the process environment.
    pub fn from_env(
        protocol: Option<OtlpProtocol>,
        endpoint: Option<&str>,
    ) -> Result<Self, ConfigError> {
        Self::resolve(protocol, endpoint, |k| std::env::var(k).ok())
    }

    /// A hint for a failed export when the port is the other protocol's well-known one.
    pub fn protocol_hint(&self) -> Option<&'static str> {
        let port = self
            .endpoint
            .split_once("://")
            .map_or(self.endpoint.as_str(), |(_, rest)| rest)
            .split(['/', '?', '#'])
            .next()?
            .rsplit_once(':')?
            .1;
        match (self.protocol.is_http(), port) {
            (false, "4318") => Some(
                "4318 is the OTLP/HTTP port: set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf, \
                 or use port 4317",
            ),
            (true, "4317") => Some(
                "4317 is the OTLP/gRPC port: set OTEL_EXPORTER_OTLP_PROTOCOL=grpc, or use port 4318",
            ),
            _ => None,
        }
    }
}

/// The exporter of the pipeline for `target`: our OTLP/gRPC client ([`super::grpc`]) for gRPC
/// to an `http://` endpoint, opentelemetry-otlp's ([`otlp_exporter`]) for every other target.
pub(crate) enum OtlpExport {
    /// gRPC to `http://`.
    Grpc(GrpcExport),
    /// Anything else.
    Sdk(SdkExport<opentelemetry_otlp::SpanExporter>),
}

impl BatchExport for OtlpExport {
    async fn export(&mut self, calls: &mut Vec<ToolCall>, options: &SpanOptions) -> OTelSdkResult {
        match self {
            OtlpExport::Grpc(e) => e.export(calls, options).await,
            OtlpExport::Sdk(e) => e.export(calls, options).await,
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        match self {
            OtlpExport::Grpc(e) => e.set_resource(resource),
            OtlpExport::Sdk(e) => e.set_resource(resource),
        }
    }

    fn shutdown(&mut self) {
        match self {
            OtlpExport::Grpc(e) => e.shutdown(),
            OtlpExport::Sdk(e) => e.shutdown(),
        }
    }
}

/// Builds the pipeline's exporter for `target` (see [`OtlpExport`]); must run inside a Tokio
/// runtime. The settings are the variables [`otlp_exporter`] reads, read the same way.
pub(crate) fn otlp_export(target: &OtlpTarget) -> Result<OtlpExport, String> {
    let settings = GrpcSettings::resolve(
        |k| std::env::var(k).ok(),
        compression_set(),
        is_loopback(&target.endpoint),
    );
    match GrpcExport::for_target(target, settings) {
        Some(grpc) => Ok(OtlpExport::Grpc(grpc)),
        None => otlp_exporter(target).map(|e| OtlpExport::Sdk(SdkExport(e))),
    }
}

/// True when an `OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION` variable is set (to anything): only
/// then does it decide; otherwise gzip is our default, except to a loopback endpoint.
fn compression_set() -> bool {
    COMPRESSION_VARS
        .iter()
        .any(|k| std::env::var_os(k).is_some())
}

/// Whether `endpoint` (a URL, or `host:port`) names this machine: `localhost` or a loopback
/// address. Exports there are not compressed unless a variable asks for it: there is no network
/// to save, and deflating each export cost the exporting process more than encoding it (the
/// proxy's export thread spent 42 % of its instructions in deflate; docs/benchmarks.md).
pub(crate) fn is_loopback(endpoint: &str) -> bool {
    let Ok(uri) = endpoint.parse::<http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Builds the span exporter for `target`; must run inside a Tokio runtime.
///
/// gzip unless `OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION` says otherwise or the endpoint is a
/// loopback address ([`is_loopback`]); headers and timeout from the standard variables.
pub fn otlp_exporter(target: &OtlpTarget) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let gzip = !compression_set() && !is_loopback(&target.endpoint);
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let built = match target.protocol {
        OtlpProtocol::Grpc => {
            let mut b = builder
                .with_tonic()
                .with_protocol(Protocol::Grpc)
                .with_endpoint(target.endpoint.clone());
            if gzip {
                b = b.with_compression(Compression::Gzip);
            }
            b.build()
        }
        OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson => {
            let protocol = match target.protocol {
                OtlpProtocol::HttpJson => Protocol::HttpJson,
                _ => Protocol::HttpBinary,
            };
            let mut b = builder
                .with_http()
                .with_protocol(protocol)
                .with_endpoint(target.endpoint.clone());
            if gzip {
                b = b.with_compression(Compression::Gzip);
            }
            b.build()
        }
    };
    built.map_err(|e| format!("{target}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn target(protocol: OtlpProtocol, endpoint: &str) -> OtlpTarget {
        OtlpTarget {
            protocol,
            endpoint: endpoint.to_owned(),
        }
    }

    #[test]
    fn loopback_endpoints_are_known_by_their_host() {
        for endpoint in [
            "http://localhost:4317",
            "http://LOCALHOST:4318/v1/traces",
            "localhost:4317",
            "http://127.0.0.1:4317",
            "http://127.8.9.10:4317",
            "http://[::1]:4317",
            "https://127.0.0.1:4317",
        ] {
            assert!(is_loopback(endpoint), "{endpoint}");
        }
        for endpoint in [
            "http://collector:4317",
            "http://10.0.0.7:4317",
            "http://[2001:db8::1]:4317",
            "http://localhost.example.com:4317",
            "http://127.0.0.1.example.com:4317",
            "",
            "http://bad host:4317",
        ] {
            assert!(!is_loopback(endpoint), "{endpoint}");
        }
    }

    #[test]
    fn defaults_are_the_spec_ports() {
        use OtlpProtocol::*;
        let none = env(&[]);
        assert_eq!(
            OtlpTarget::resolve(None, None, &none).unwrap(),
            target(Grpc, "http://localhost:4317")
        );
        let http = [(OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf")];
        assert_eq!(
            OtlpTarget::resolve(None, None, env(&http)).unwrap(),
            target(HttpProtobuf, "http://localhost:4318/v1/traces")
        );
        let json = [(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "HTTP/JSON")];
        assert_eq!(
            OtlpTarget::resolve(None, None, env(&json)).unwrap(),
            target(HttpJson, "http://localhost:4318/v1/traces")
        );
    }

    #[test]
    fn signal_specific_wins_over_generic_and_code_over_both() {
        use OtlpProtocol::*;
        let vars = [
            (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc"),
            (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "http/protobuf"),
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4318/"),
        ];
        assert_eq!(
            OtlpTarget::resolve(None, None, env(&vars)).unwrap(),
            target(HttpProtobuf, "http://collector:4318/v1/traces"),
            "the generic endpoint is a base for HTTP"
        );
        let vars = [
            (OTEL_EXPORTER_OTLP_PROTOCOL, "http/json"),
            (
                OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
                "http://collector:9999/custom",
            ),
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://ignored:4318"),
        ];
        assert_eq!(
            OtlpTarget::resolve(None, None, env(&vars)).unwrap(),
            target(HttpJson, "http://collector:9999/custom"),
            "the signal-specific endpoint is used as it is"
        );
        assert_eq!(
            OtlpTarget::resolve(Some(Grpc), Some("http://code:4317"), env(&vars)).unwrap(),
            target(Grpc, "http://code:4317")
        );
        assert_eq!(
            OtlpTarget::resolve(Some(HttpProtobuf), Some("http://code:4318"), env(&[])).unwrap(),
            target(HttpProtobuf, "http://code:4318/v1/traces"),
            "a code endpoint without a path gets the traces path"
        );
        let grpc_base = [(OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4317")];
        assert_eq!(
            OtlpTarget::resolve(None, None, env(&grpc_base)).unwrap(),
            target(Grpc, "http://collector:4317")
        );
        let empty = [
            (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, ""),
            (OTEL_EXPORTER_OTLP_ENDPOINT, " "),
        ];
        assert_eq!(
            OtlpTarget::resolve(None, None, env(&empty)).unwrap(),
            target(Grpc, "http://localhost:4317"),
            "empty values count as unset"
        );
    }

    #[test]
    fn an_unknown_protocol_is_named() {
        let vars = [(OTEL_EXPORTER_OTLP_PROTOCOL, "http")];
        let e = OtlpTarget::resolve(None, None, env(&vars)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`OTEL_EXPORTER_OTLP_PROTOCOL` must be grpc, http/protobuf or http/json, got \"http\""
        );
    }

    #[test]
    fn the_other_protocols_port_gets_a_hint() {
        use OtlpProtocol::*;
        assert!(
            target(Grpc, "http://localhost:4318")
                .protocol_hint()
                .unwrap()
                .contains("http/protobuf")
        );
        assert!(
            target(HttpJson, "http://127.0.0.1:4317/v1/traces")
                .protocol_hint()
                .unwrap()
                .contains("=grpc")
        );
        assert_eq!(target(Grpc, "http://localhost:4317").protocol_hint(), None);
        assert_eq!(
            target(HttpProtobuf, "http://h:4318/v1/traces").protocol_hint(),
            None
        );
    }
}
