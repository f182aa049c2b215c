//! The rustls client configuration of the outbound channels: the ring provider only, the
//! CA bundle the peer must chain to, and an optional client certificate.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Errors building a TLS client configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file cannot be read.
    #[error("{what} {path}: {source}")]
    Read {
        /// Which file (CA, certificate, key).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{what} {path}: {reason}")]
    Invalid {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No CA bundle was configured.
    #[error("TLS needs a CA bundle ({0}.ca)")]
    NoCa(&'static str),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_slice()).collect();
    let certs = certs.map_err(|e| TlsError::Invalid {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            what,
            path: path.to_path_buf(),
            reason: "no certificate in the file".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        what: "private key",
        path: path.to_path_buf(),
        source,
    })?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsError::Invalid {
            what: "private key",
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| TlsError::Invalid {
            what: "private key",
            path: path.to_path_buf(),
            reason: "no private key in the file".into(),
        })
}

/// Builds a client configuration (TLS 1.2 and 1.3, ring) trusting the CA bundle `ca`,
/// presenting `cert`/`key` when both are given. `section` names the config section in
/// errors (`hl7`, `mqtt`).
pub fn client_config(
    section: &'static str,
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let ca = ca.ok_or(TlsError::NoCa(section))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs("CA bundle", ca)? {
        roots.add(c).map_err(|e| TlsError::Invalid {
            what: "CA bundle",
            path: ca.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let config = match (cert, key) {
        (Some(cert), Some(key)) => {
            builder.with_client_auth_cert(read_certs("certificate", cert)?, read_key(key)?)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
