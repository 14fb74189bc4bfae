//! Where the PostgreSQL store is: a libpq-style URL, parsed by tokio-postgres, and TLS through
//! rustls (ring). `sslmode` is tokio-postgres' (`disable`, `prefer`, the default, or
//! `require`); `sslrootcert=FILE` (PEM) replaces the built-in web PKI roots, for a server
//! certificate signed by a private CA. The password never appears in messages.

use super::super::error::AuditError;
use std::sync::Arc;
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

/// True when `s` names a PostgreSQL store rather than a SQLite file.
pub(crate) fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// A parsed PostgreSQL URL and the TLS set-up to reach it.
#[derive(Clone)]
pub(crate) struct PgTarget {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    shown: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl PgTarget {
    /// Parses `url`; `field` names the flag it came from in errors.
    pub(crate) fn parse(url: &str, field: &'static str) -> Result<Self, AuditError> {
        let shown = without_password(url);
        let (url, rootcert) = take_param(url, "sslrootcert");
        let config: tokio_postgres::Config = url.parse().map_err(|e| AuditError::Invalid {
            field,
            reason: format!("{shown} is not a PostgreSQL URL: {e}"),
        })?;
        let tls = client_tls(rootcert.as_deref()).map_err(|reason| AuditError::Invalid {
            field,
            reason: format!("{shown}: {reason}"),
        })?;
        Ok(PgTarget {
            config,
            tls: MakeRustlsConnect::new(tls),
            shown,
        })
    }

    /// The URL without its password, for messages.
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    /// Connects; the connection is driven by a task on the current runtime until the client
    /// is dropped.
    pub(crate) async fn connect(&self) -> Result<Client, AuditError> {
        let (client, connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(|e| self.error("connecting", e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// An error from `context`, classified: retryable unless the server refused the statement
    /// itself (a constraint, a permission, a syntax error).
    pub(crate) fn error(&self, context: &'static str, e: tokio_postgres::Error) -> AuditError {
        AuditError::Postgres {
            target: self.shown.clone(),
            context,
            retryable: is_retryable(&e),
            source: Arc::new(e),
        }
    }

    /// A store that cannot be used as it is.
    pub(crate) fn unusable(&self, reason: impl Into<String>) -> AuditError {
        AuditError::PostgresStore {
            target: self.shown.clone(),
            reason: reason.into(),
            retryable: false,
        }
    }

    /// A store that cannot be used now, but may be later.
    pub(crate) fn busy(&self, reason: impl Into<String>) -> AuditError {
        AuditError::PostgresStore {
            target: self.shown.clone(),
            reason: reason.into(),
            retryable: true,
        }
    }
}

/// Connection failures, a server shutting down or starting, serialization failures, deadlocks,
/// lock time-outs and exhausted resources can pass; anything the server refused on its merits
/// will be refused again.
fn is_retryable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // No SQLSTATE: the socket, TLS or the protocol failed, not the statement.
        None => true,
        Some(code) => {
            let class = &code.code()[..2];
            matches!(class, "08" | "40" | "53" | "55" | "57" | "58")
        }
    }
}

/// rustls with ring: the web PKI roots, or only the CA certificates of `rootcert`.
fn client_tls(rootcert: Option<&str>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match rootcert {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            if certs.is_empty() {
                return Err(format!("sslrootcert {path}: no certificate in it"));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            }
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// `url` without the query parameter `name`, and its value.
fn take_param(url: &str, name: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut value = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.split_once('=') {
            Some((k, v)) if k == name => {
                value = Some(v.to_owned());
                false
            }
            _ => true,
        })
        .collect();
    let url = match kept.is_empty() {
        true => base.to_owned(),
        false => format!("{base}?{}", kept.join("&")),
    };
    (url, value)
}

/// `postgres://user:secret@host/db` → `postgres://user@host/db`; a `password=` parameter goes
/// too.
fn without_password(url: &str) -> String {
    let (url, _) = take_param(url, "password");
    let Some((scheme, rest)) = url.split_once("://") else {
        return url;
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => url.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_never_shown() {
        assert_eq!(
            without_password("postgres://collect:s3cret@db:5432/audit?sslmode=require"),
            "postgres://collect@db:5432/audit?sslmode=require"
        );
        assert_eq!(
            without_password("postgresql://db/audit?user=a&password=s3cret"),
            "postgresql://db/audit?user=a"
        );
        let e = PgTarget::parse(
            "postgres://a:s3cret@db/x?sslrootcert=/nonexistent",
            "--audit",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("sslrootcert /nonexistent") && !e.contains("s3cret"),
            "{e}"
        );
    }

    #[test]
    fn sslrootcert_is_taken_out_of_what_tokio_postgres_parses() {
        let (url, cert) = take_param(
            "postgres://db/x?sslmode=require&sslrootcert=/ca.pem",
            "sslrootcert",
        );
        assert_eq!(url, "postgres://db/x?sslmode=require");
        assert_eq!(cert.as_deref(), Some("/ca.pem"));
        assert!(is_postgres_url("postgresql://h/d") && !is_postgres_url("mcp-audit.db"));
    }
}
