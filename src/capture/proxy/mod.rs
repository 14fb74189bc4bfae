//! The proxy: instruments any MCP server without code changes.
//!
//! `stdio` spawns the server and relays newline-delimited JSON-RPC; `http` reverse-proxies
//! Streamable HTTP. Both forward the bytes they read, unchanged and in order, and hand a copy to
//! `observe`, which correlates requests with responses on its own thread and turns each
//! `tools/call` into a [`ToolCall`](crate::record::ToolCall) for the emitter. `config` is the
//! per-tool TOML configuration, `keys` the API keys of the HTTP proxy, `inject` the one rewrite
//! (a `traceparent` in a forwarded call's `_meta`), `frame` the stdio line framing, `before`
//! the before-state reads (the transports only send and await), `sys` the OS knobs.

pub(crate) mod before;
pub(crate) mod config;
pub(crate) mod confirm;
pub(crate) mod envelope;
pub(crate) mod frame;
pub mod http;
pub mod inject;
pub mod keys;
pub(crate) mod observe;
#[cfg(test)]
mod scan_fuzz;
pub(crate) mod stdio;
pub(crate) mod strict;
pub(crate) mod sys;

pub use config::{ConfigError, ProxyConfig};
pub use observe::{ObserverConfig, ObserverHandle, ProxyStats};

/// Why the proxy could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot start the server command `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("`--upstream` {url:?} is not a usable http:// URL: {reason}")]
    Upstream { url: String, reason: String },
    #[error("I/O error while {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
}
