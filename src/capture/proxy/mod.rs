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
    /// The proxy cannot be set up as asked (missing or conflicting flags, an exporter that
    /// cannot be built); the message says why.
    #[error("{0}")]
    Usage(String),
    /// The server command could not be spawned.
    #[error("cannot start the server command `{command}`")]
    Spawn {
        /// The command, as given after `--`.
        command: String,
        /// Why spawning failed.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP proxy could not bind its listen address.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// The `--upstream` URL cannot be proxied to.
    #[error("`--upstream` {url:?} is not a usable http:// URL: {reason}")]
    Upstream {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A relay, thread or wait failed while the proxy ran.
    #[error("I/O error while {what}")]
    Io {
        /// What the proxy was doing (`waiting for the server to exit`, …).
        what: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The proxy's TOML configuration cannot be read or used.
    #[error(transparent)]
    Config(#[from] ConfigError),
}
