//! TLS on collect's listeners (feature `tls`): a certificate made by the `openssl` command line,
//! OTLP/gRPC over TLS from tonic, and the HTTP listeners over TLS; plain-text clients are refused.
#![cfg(feature = "tls")]

use mcp_otel::collect::{CollectConfig, start};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use std::process::Command;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

fn openssl(args: &[&str], dir: &std::path::Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command line (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA (`ca.pem`) and a certificate it signed for `localhost` and 127.0.0.1.
fn certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "1",
        "-subj",
        "/CN=mcp-otel test CA",
    ];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(&ca, dir);
    let mut csr = vec![
        "req",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
    ];
    csr.extend(ec);
    openssl(&csr, dir);
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        &[
            "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        ]
        .into_iter()
        .chain([
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
            "-out",
            "cert.pem",
        ])
        .collect::<Vec<_>>(),
        dir,
    );
    (dir.join("cert.pem"), dir.join("key.pem"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_speaks_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let config = CollectConfig {
        tls_cert: Some(cert.clone()),
        tls_key: Some(key),
        ..CollectConfig::ephemeral()
    };
    let c = start(&config, None).await.unwrap();
    let pem = std::fs::read(dir.path().join("ca.pem")).unwrap();

    // OTLP/gRPC over TLS.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&pem))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(format!("https://{}", c.grpc_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    TraceServiceClient::new(channel)
        .export(ExportTraceServiceRequest::default())
        .await
        .unwrap();

    // A plain-text gRPC client gets nowhere.
    let plain = TraceServiceClient::connect(format!("http://{}", c.grpc_addr)).await;
    let refused = match plain {
        Err(_) => true,
        Ok(mut cl) => cl
            .export(ExportTraceServiceRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "plain text must not be served");

    // The metrics listener over TLS.
    let response = healthz_over_tls(&pem, c.metrics_addr).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok\n"), "{response}");
    c.shutdown().await;
}

/// Clients that open a TCP connection to a TLS listener and never send their ClientHello do
/// not stop another client from being served: handshakes run beside the accept loop, each
/// within the header timeout (10 s). Before, the listener waited out each silent client's
/// handshake in turn before it accepted the next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_do_not_stall_the_tls_listener() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let config = CollectConfig {
        tls_cert: Some(cert),
        tls_key: Some(key),
        ..CollectConfig::ephemeral()
    };
    let c = start(&config, None).await.unwrap();
    let pem = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(
            tokio::net::TcpStream::connect(c.metrics_addr)
                .await
                .unwrap(),
        );
    }
    // Let the listener take them all before the real client comes.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let healthz = healthz_over_tls(&pem, c.metrics_addr);
    // Well under one handshake timeout, let alone eight.
    let response = tokio::time::timeout(std::time::Duration::from_secs(5), healthz)
        .await
        .expect("served while 8 clients hold their handshakes");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    drop(silent);
    c.shutdown().await;
}

/// `GET /healthz` over TLS, trusting the CA in `pem`: the whole response.
async fn healthz_over_tls(pem: &[u8], addr: std::net::SocketAddr) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.ok();
    response
}
