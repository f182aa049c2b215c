//! TLS for every listener and client: rustls with the ring provider restricted to the BCP
//! 195 suites (ECDHE with AEAD), TLS 1.2 and 1.3 only.
//!
//! - [`server_config`]: the DICOM TLS listener (client certificates checked against a CA,
//!   required unless configured otherwise) and the console (HTTP/1.1 by ALPN).
//! - [`client_config`]: every outbound connection (DICOM TLS to PACS, MLLP to the RIS,
//!   MQTT, the provisioning checks): the CA bundle the peer must chain to, and a client
//!   certificate when one is configured; [`connect`]: the client handshake over a TCP
//!   connection, the peer named as configured and held to a time limit.
//! - [`self_signed`]: the console's configured or generated certificate.

pub mod self_signed;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a client TLS handshake did not give a connection.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The host is neither an IP address nor a valid DNS name to verify the server by.
    #[error("{host:?} is not a valid TLS server name: {source}")]
    ServerName {
        /// The host as configured.
        host: String,
        /// rustls's reason.
        source: rustls::pki_types::InvalidDnsNameError,
    },
    /// The handshake did not finish within the limit.
    #[error("TLS handshake timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The handshake failed (certificate refused, protocol error, connection closed).
    #[error("TLS handshake failed: {0}")]
    Failed(std::io::Error),
}

/// The TLS client handshake over `tcp` with the server configured as `host` (an IP
/// address is verified as such, anything else as a DNS name), within `limit`.
pub async fn connect(
    config: Arc<ClientConfig>,
    host: &str,
    tcp: tokio::net::TcpStream,
    limit: std::time::Duration,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, HandshakeError> {
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|source| {
        HandshakeError::ServerName {
            host: host.to_string(),
            source,
        }
    })?;
    tokio::time::timeout(
        limit,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| HandshakeError::Timeout(limit))?
    .map_err(HandshakeError::Failed)
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file cannot be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which file (CA bundle, certificate, private key).
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
    /// No CA bundle was configured for a client.
    #[error("TLS needs a CA bundle ({0}.ca)")]
    NoCa(&'static str),
    /// A client certificate without its key, or a key without its certificate.
    #[error("{0}.cert and {0}.key must be set together")]
    UnpairedClientCert(&'static str),
    /// rustls refused the material.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// Generating a self-signed certificate failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing a generated certificate failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
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

/// TLS 1.3 and 1.2.
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A PEM file's bytes, and how to say what is wrong with it.
fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Invalid {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// What is wrong with PEM text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    /// Not PEM that can be read.
    #[error("not PEM: {0}")]
    Syntax(String),
    /// No certificate in it.
    #[error("no certificate in the file")]
    NoCertificate,
    /// No private key in it.
    #[error("no private key in the file")]
    NoKey,
}

/// Every certificate of PEM text, at least one: the one PEM reader of certificates
/// (files here, provisioning bundles in [`crate::provision`]).
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Syntax(e.to_string()))?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate);
    }
    Ok(certs)
}

/// The first private key of PEM text: the one PEM reader of keys.
pub fn key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, PemError> {
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| PemError::Syntax(e.to_string()))?
        .ok_or(PemError::NoKey)
}

/// Reads every certificate of a PEM file (`what` names it in errors).
pub fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(what, path)?;
    certs_from_pem(&pem).map_err(|e| invalid(what, path, e))
}

/// Reads the certificate chain of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    read_certs("certificate", path)
}

/// Reads the private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "private key";
    let pem = read_pem(what, path)?;
    key_from_pem(&pem).map_err(|e| invalid(what, path, e))
}

/// The roots of a CA bundle.
fn roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs("CA bundle", ca)? {
        roots.add(c).map_err(|e| invalid("CA bundle", ca, e))?;
    }
    Ok(roots)
}

/// What a listener serves with.
#[derive(Debug, Clone, Copy)]
pub struct ServerTls<'a> {
    /// PEM certificate chain.
    pub cert: &'a Path,
    /// PEM private key.
    pub key: &'a Path,
    /// With a CA bundle, clients present a certificate that chains to it.
    pub client_ca: Option<&'a Path>,
    /// With `client_ca`: whether the certificate is required (else optional).
    pub require_client_cert: bool,
    /// ALPN protocols offered (none for DICOM).
    pub alpn: &'a [&'a [u8]],
}

impl<'a> ServerTls<'a> {
    /// The console's listener: no client certificates, HTTP/1.1 by ALPN.
    pub fn console(cert: &'a Path, key: &'a Path) -> ServerTls<'a> {
        ServerTls {
            cert,
            key,
            client_ca: None,
            require_client_cert: false,
            alpn: &[b"http/1.1"],
        }
    }
}

/// Builds a server configuration.
pub fn server_config(s: &ServerTls<'_>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(VERSIONS)?;
    let builder = match s.client_ca {
        Some(ca) => {
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider);
            let v = if s.require_client_cert {
                v.build()
            } else {
                v.allow_unauthenticated().build()
            }
            .map_err(|e| invalid("CA bundle", ca, e))?;
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(load_certs(s.cert)?, load_key(s.key)?)?;
    config.alpn_protocols = s.alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Builds a client configuration trusting the CA bundle `ca`, presenting `cert`/`key`
/// when both are given; one of them without the other is an error, never a connection
/// without the client certificate. `section` names the configuration section in errors
/// (`hl7`, `mqtt`, ...).
pub fn client_config(
    section: &'static str,
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let ca = ca.ok_or(TlsError::NoCa(section))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_root_certificates(roots(ca)?);
    let config = match (cert, key) {
        (Some(cert), Some(key)) => {
            builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsError::UnpairedClientCert(section)),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn trusting_nothing() -> Arc<ClientConfig> {
        Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(VERSIONS)
                .unwrap()
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth(),
        )
    }

    /// A client certificate without its key (or a key alone) is refused, never dropped
    /// in favour of a connection without a client certificate.
    #[test]
    fn a_client_certificate_needs_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let pair = self_signed::cert_files(None, None, dir.path(), &["localhost".into()]).unwrap();
        let ca = Some(pair.cert.as_path());
        let (cert, key) = (Some(pair.cert.as_path()), Some(pair.key.as_path()));
        assert!(client_config("hl7", ca, cert, key).is_ok());
        assert!(client_config("hl7", ca, None, None).is_ok());
        for (cert, key) in [(cert, None), (None, key)] {
            match client_config("hl7", ca, cert, key) {
                Err(e @ TlsError::UnpairedClientCert("hl7")) => {
                    assert_eq!(e.to_string(), "hl7.cert and hl7.key must be set together")
                }
                other => panic!("{cert:?} {key:?}: {other:?}"),
            }
        }
    }

    /// A server that accepts and never answers holds the handshake to its limit; a host
    /// that is no name is refused before any byte is sent.
    #[tokio::test]
    async fn the_client_handshake_is_held_to_its_limit_and_to_a_valid_name() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(socket);
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let limit = Duration::from_millis(200);
        let started = std::time::Instant::now();
        let err = connect(trusting_nothing(), "127.0.0.1", tcp, limit)
            .await
            .unwrap_err();
        assert!(
            matches!(err, HandshakeError::Timeout(l) if l == limit),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(4));
        silent.abort();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let err = connect(trusting_nothing(), "not a host!", tcp, limit)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, HandshakeError::ServerName { host, .. } if host == "not a host!"),
            "{err}"
        );
    }
}
