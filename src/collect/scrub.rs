//! What collect forwards is redacted like what it stores: every string a span carries
//! (resource and scope attributes, the span's name, attributes, events, links and status
//! message) goes through the same [`Redactor`] before the next hop (Jaeger, another collector)
//! sees it. Another instrumentation's span may carry a tool's arguments, a connection string
//! or an `Authorization` header; ours were redacted by the exporter, and redacting them again
//! changes nothing. Keys are kept; a value under a secret key becomes `[REDACTED]`.

use crate::redact::{REDACTED, Redactor};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};

/// Redacts every string of `req` in place.
pub(crate) fn redact_request(r: &Redactor, req: &mut ExportTraceServiceRequest) {
    for rs in &mut req.resource_spans {
        if let Some(res) = &mut rs.resource {
            attributes(r, &mut res.attributes);
        }
        for ss in &mut rs.scope_spans {
            if let Some(scope) = &mut ss.scope {
                attributes(r, &mut scope.attributes);
            }
            for span in &mut ss.spans {
                text(r, &mut span.name);
                attributes(r, &mut span.attributes);
                for e in &mut span.events {
                    text(r, &mut e.name);
                    attributes(r, &mut e.attributes);
                }
                for l in &mut span.links {
                    attributes(r, &mut l.attributes);
                }
                if let Some(st) = &mut span.status {
                    text(r, &mut st.message);
                }
            }
        }
    }
}

fn text(r: &Redactor, s: &mut String) {
    if let Some(new) = r.redact_attribute_text(s) {
        *s = new;
    }
}

fn attributes(r: &Redactor, kvs: &mut [KeyValue]) {
    for kv in kvs {
        if r.is_secret_key(&kv.key) {
            if kv.value.as_ref().is_some_and(|v| v.value.is_some()) {
                kv.value = Some(AnyValue {
                    value: Some(any_value::Value::StringValue(REDACTED.to_owned())),
                });
            }
        } else if let Some(v) = &mut kv.value {
            value(r, v);
        }
    }
}

fn value(r: &Redactor, v: &mut AnyValue) {
    match &mut v.value {
        Some(any_value::Value::StringValue(s)) => text(r, s),
        Some(any_value::Value::ArrayValue(a)) => a.values.iter_mut().for_each(|v| value(r, v)),
        Some(any_value::Value::KvlistValue(l)) => attributes(r, &mut l.values),
        _ => {}
    }
}
