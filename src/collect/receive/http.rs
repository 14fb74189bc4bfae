//! OTLP/HTTP: `POST /v1/traces`, protobuf or JSON, optionally gzip, behind the bearer token.

use super::{MAX_MESSAGE_BYTES, authorized};
use crate::collect::ingest::{Collector, IngestError};
use crate::serve::{BodyBudget, BodyError};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::sync::Arc;
use std::time::Duration;

/// The OTLP/HTTP router of `collector`: bodies are read only after the token was checked,
/// against `budget`, within `body_timeout`.
pub(crate) fn router(
    collector: Arc<Collector>,
    token: Option<Arc<str>>,
    budget: BodyBudget,
    body_timeout: Duration,
) -> Router {
    Router::new()
        .route("/v1/traces", post(http_traces))
        .with_state(HttpState {
            collector,
            token,
            budget,
            body_timeout,
        })
}

#[derive(Clone)]
struct HttpState {
    collector: Arc<Collector>,
    token: Option<Arc<str>>,
    budget: BodyBudget,
    body_timeout: Duration,
}

fn http_error(status: StatusCode, message: String) -> Response {
    let body = serde_json::json!({"code": status.as_u16(), "message": message});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn body_error(e: BodyError) -> Response {
    let status = match e {
        BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        BodyError::TooSlow(_) => StatusCode::REQUEST_TIMEOUT,
        BodyError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        BodyError::Read(_) | BodyError::Decode(_) => StatusCode::BAD_REQUEST,
    };
    http_error(status, e.to_string())
}

/// `POST /v1/traces`: OTLP/HTTP, protobuf or JSON, optionally gzip.
async fn http_traces(State(st): State<HttpState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // Before a byte of the body is read.
    if !authorized(st.token.as_deref(), auth) {
        return http_error(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required".into(),
        );
    }
    let declared = crate::serve::declared_length(&headers);
    let held = match st
        .budget
        .read(body, declared, MAX_MESSAGE_BYTES, st.body_timeout)
        .await
    {
        Ok(held) => held,
        Err(e) => return body_error(e),
    };
    // The decompressed bytes come out of the same budget, so a gzip bomb on many connections
    // holds no more than it; the compressed ones stay held until it is done.
    let inflated;
    let body = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        Some("gzip") => {
            match st
                .budget
                .gunzip(&held.bytes, MAX_MESSAGE_BYTES, st.body_timeout)
                .await
            {
                Ok(out) => {
                    inflated = out;
                    inflated.bytes.clone()
                }
                Err(e) => return body_error(e),
            }
        }
        None | Some("identity") => held.bytes.clone(),
        Some(other) => {
            return http_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported Content-Encoding {other:?} (use gzip or none)"),
            );
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let json = content_type.starts_with("application/json");
    let req = if json {
        serde_json::from_slice::<ExportTraceServiceRequest>(&body)
            .map_err(|e| format!("invalid OTLP JSON: {e}"))
    } else if content_type.starts_with("application/x-protobuf") {
        ExportTraceServiceRequest::decode(&body[..])
            .map_err(|e| format!("invalid OTLP protobuf: {e}"))
    } else {
        return http_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type must be application/x-protobuf or application/json, got {content_type:?}"
            ),
        );
    };
    let req = match req {
        Ok(r) => r,
        Err(m) => return http_error(StatusCode::BAD_REQUEST, m),
    };
    match st.collector.ingest(req).await {
        Ok(resp) if json => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&resp).unwrap_or_else(|_| "{}".into()),
        )
            .into_response(),
        Ok(resp) => (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            resp.encode_to_vec(),
        )
            .into_response(),
        Err(e @ IngestError::Store(_)) | Err(e @ IngestError::ShuttingDown) => {
            // 503 is retryable for OTLP/HTTP exporters.
            http_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}
