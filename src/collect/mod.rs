//! The collector side: OTLP in, tool calls out (metrics, alerts, audit, forwarding build on it).

pub mod decode;
pub mod receive;
