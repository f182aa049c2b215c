//! DICOM TLS (PS3.15 Annex B, BCP 195): rustls with the ring provider, TLS 1.2 and 1.3 only,
//! AEAD cipher suites with forward secrecy, client certificate required unless configured
//! otherwise.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{path}: {what}")]
    Content {
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the material.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The ring crypto provider restricted to BCP 195 suites (ECDHE + AEAD).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as cs;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut &data[..]).collect();
    let certs = certs.map_err(|e| TlsError::Content {
        path: path.display().to_string(),
        what: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Content {
            path: path.display().to_string(),
            what: "no certificate found".into(),
        });
    }
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    rustls_pemfile::private_key(&mut &data[..])
        .map_err(|e| TlsError::Content {
            path: path.display().to_string(),
            what: e.to_string(),
        })?
        .ok_or_else(|| TlsError::Content {
            path: path.display().to_string(),
            what: "no private key found".into(),
        })
}

/// Builds a server configuration; with `client_ca`, clients must present a certificate
/// that chains to it (unless `require_client_cert` is false, then it is optional).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    require_client_cert: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs(ca)? {
                roots.add(c)?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if require_client_cert {
                v.build()
            } else {
                v.allow_unauthenticated().build()
            }
            .map_err(|e| TlsError::Content {
                path: ca.display().to_string(),
                what: e.to_string(),
            })?;
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(
        builder.with_single_cert(load_certs(cert)?, load_key(key)?)?,
    ))
}
