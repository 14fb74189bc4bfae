//! Observation: JSON-RPC messages seen by the relay → correlated requests and responses →
//! [`ToolCall`](crate::record::ToolCall)s handed to the [`Emitter`](crate::emit::Emitter).
//!
//! The observer runs on its own thread and is fed through a bounded lock-free queue that the
//! relay never waits on: [`ObserverHandle::send`] drops (and counts) an event when the queue is
//! full, so a slow log sink or a stuck exporter can only cost observations, never relaying.
//! Everything else (parsing, correlation, classification, emit) happens there, off the relay's
//! path.
//!
//! - [`event`]: what the relays tell the observer;
//! - [`message`]: each message's envelope, read in one pass;
//! - [`queue`]: the handle, the queue and the observer thread;
//! - [`correlate`]: the state machine that pairs requests with answers per scope and session,
//!   and finishes each `tools/call` into a record;
//! - [`stats`]: the counters the relays and the observer keep.

pub(crate) mod correlate;
pub(crate) mod event;
mod message;
pub(crate) mod queue;
pub(crate) mod stats;
#[cfg(test)]
mod tests;

pub use correlate::ObserverConfig;
pub(crate) use event::{Direction, Event, Prepared, PreparedCalls, Scope, Unobserved};
pub use queue::ObserverHandle;
pub use stats::ProxyStats;
