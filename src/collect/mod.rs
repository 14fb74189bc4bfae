//! The collector side: OTLP in, tool calls out to metrics, alerts, the audit trail and the next
//! OTLP hop.

pub mod alerts;
pub mod decode;
pub mod metrics;
pub mod receive;
