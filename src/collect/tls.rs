//! TLS for collect's listeners (feature `tls`): one certificate and key, PEM, for the OTLP/gRPC,
//! OTLP/HTTP and metrics listeners.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

/// A TLS set-up that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub(crate) struct TlsError(pub String);

/// The certificate chain and key as PEM text (tonic takes PEM).
pub(crate) struct Pem {
    pub(crate) cert: Vec<u8>,
    pub(crate) key: Vec<u8>,
}

pub(crate) fn read_pem(cert: &Path, key: &Path) -> Result<Pem, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| TlsError(format!("cannot read {}: {e}", p.display())))
    };
    Ok(Pem {
        cert: read(cert)?,
        key: read(key)?,
    })
}

/// A rustls acceptor for the HTTP listeners.
pub(crate) fn acceptor(pem: &Pem) -> Result<TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem.cert)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError(format!("bad certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError("the certificate file holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&pem.key)
        .map_err(|e| TlsError(format!("bad private key PEM: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError(format!("certificate and key do not fit: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A listener that hands axum TLS streams. Handshakes run concurrently, off the accept loop,
/// at most `max_handshakes` at once (past that the listener stops accepting until one ends), each
/// within `handshake_timeout`: a client that connects and never sends its ClientHello holds one
/// of those places for that long, and delays no one else. A failed or slow handshake drops that
/// connection.
pub(crate) struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    max_handshakes: usize,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    pub(crate) fn new(
        tcp: TcpListener,
        acceptor: TlsAcceptor,
        handshake_timeout: Duration,
        max_handshakes: usize,
    ) -> Self {
        TlsListener {
            tcp,
            acceptor,
            handshake_timeout,
            max_handshakes: max_handshakes.max(1),
            handshakes: JoinSet::new(),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    /// Cancel-safe, as axum needs: a finished handshake waits in the set, a new connection is
    /// taken only once its handshake is in the set.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let room = self.handshakes.len() < self.max_handshakes;
            tokio::select! {
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(tls)) = done {
                        return tls;
                    }
                }
                (stream, addr) = axum::serve::Listener::accept(&mut self.tcp), if room => {
                    let handshake = self.acceptor.accept(stream);
                    let timeout = self.handshake_timeout;
                    self.handshakes.spawn(async move {
                        match tokio::time::timeout(timeout, handshake).await {
                            Ok(Ok(tls)) => Some((tls, addr)),
                            _ => None,
                        }
                    });
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
