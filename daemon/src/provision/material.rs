//! Checks of the certificates and keys a technician brings: every certificate parses as
//! X.509, a private key parses and matches the public key of its certificate, a CA file
//! holds usable trust anchors. Messages name the provisioning key, never the key material.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

/// Why a certificate or key was refused; `key` is the provisioning key (`dicom.cert`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct MaterialError {
    /// The provisioning key naming the file.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

fn bad(key: &str, reason: impl Into<String>) -> MaterialError {
    MaterialError {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Parses the PEM certificates of `pem` and checks each is X.509 that the TLS stack
/// accepts. `key` names the file in messages.
pub fn certificates(key: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    let certs = crate::tls::certs_from_pem(pem).map_err(|e| match e {
        crate::tls::PemError::NoCertificate => bad(key, "holds no PEM certificate"),
        other => bad(key, format!("not a PEM certificate file: {other}")),
    })?;
    for (i, cert) in certs.iter().enumerate() {
        // webpki parses the certificate to make a trust anchor of it: a malformed one fails.
        let mut store = RootCertStore::empty();
        store
            .add(cert.clone())
            .map_err(|e| bad(key, format!("certificate {} is malformed: {e}", i + 1)))?;
    }
    Ok(certs)
}

/// Parses the PEM private key of `pem`.
pub fn private_key(key: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, MaterialError> {
    crate::tls::key_from_pem(pem).map_err(|e| match e {
        crate::tls::PemError::NoKey => bad(key, "holds no PEM private key"),
        other => bad(key, format!("not a PEM private key file: {other}")),
    })
}

/// Checks a certificate chain and its private key: both parse, the key is usable for TLS
/// and matches the first certificate.
pub fn certified_pair(
    cert_key: &str,
    cert_pem: &[u8],
    key_key: &str,
    key_pem: &[u8],
) -> Result<(), MaterialError> {
    let certs = certificates(cert_key, cert_pem)?;
    let key = private_key(key_key, key_pem)?;
    let provider = crate::tls::provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad(key_key, format!("private key is not usable: {e}")))?;
    match CertifiedKey::new(certs, signing).keys_match() {
        Ok(()) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err(bad(
            key_key,
            format!("does not match the certificate in {cert_key}"),
        )),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            log::warn!("{key_key}: cannot compare the key with {cert_key}; accepted");
            Ok(())
        }
        Err(e) => Err(bad(cert_key, format!("certificate is not usable: {e}"))),
    }
}

/// Checks a site secret file in a form the box uses: the [`SECRET_LEN`] random bytes the
/// daemon generates at its first start (copied from another box of the site), or one line
/// of 32 to 128 hex digits (`generate_site_secret` writes 64, as `openssl rand -hex 32`
/// does). Anything else (a text file, a short or a huge one) is refused.
///
/// Returns the secret as the box keeps it: the random bytes as they are, a hex line in
/// lower case with one `\n`, so that the same secret typed in upper case or saved with a
/// Windows line end keys the same pseudonyms on every box of the site (the daemon keys
/// its HMAC with the file's bytes).
///
/// [`SECRET_LEN`]: crate::site_secret::SECRET_LEN
pub fn site_secret(key: &str, bytes: &[u8]) -> Result<Vec<u8>, MaterialError> {
    if bytes.len() == crate::site_secret::SECRET_LEN {
        return Ok(bytes.to_vec());
    }
    let line = bytes
        .strip_suffix(b"\r\n")
        .or_else(|| bytes.strip_suffix(b"\n"))
        .unwrap_or(bytes);
    if (32..=128).contains(&line.len())
        && line.len() % 2 == 0
        && line.iter().all(u8::is_ascii_hexdigit)
    {
        let mut canonical = line.to_ascii_lowercase();
        canonical.push(b'\n');
        return Ok(canonical);
    }
    Err(bad(
        key,
        format!(
            "not a site secret: {} random bytes (as the daemon generates) or one line of 32 \
             to 128 hex digits (as generate_site_secret writes) is expected",
            crate::site_secret::SECRET_LEN
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (c.cert.pem(), c.key_pair.serialize_pem())
    }

    #[test]
    fn matching_pair_passes_and_mismatch_malformed_and_empty_are_named() {
        let (cert, key) = pair();
        let (_, other_key) = pair();
        certified_pair("x.cert", cert.as_bytes(), "x.key", key.as_bytes()).unwrap();
        let e =
            certified_pair("x.cert", cert.as_bytes(), "x.key", other_key.as_bytes()).unwrap_err();
        assert_eq!(e.key, "x.key");
        assert!(e.reason.contains("does not match"), "{e}");
        // A certificate whose body is damaged.
        let mut lines: Vec<String> = cert.lines().map(String::from).collect();
        lines[3] = "A".repeat(lines[3].len());
        let damaged = lines.join("\n");
        let e = certified_pair("x.cert", damaged.as_bytes(), "x.key", key.as_bytes()).unwrap_err();
        assert_eq!(e.key, "x.cert");
        let e = certificates("x.ca", b"hello").unwrap_err();
        assert!(e.reason.contains("no PEM certificate"), "{e}");
        let e = private_key("x.key", cert.as_bytes()).unwrap_err();
        assert!(e.reason.contains("no PEM private key"), "{e}");
        // Messages never carry the key material.
        assert!(!e.to_string().contains("PRIVATE KEY"));
    }

    #[test]
    fn site_secrets_are_the_daemons_bytes_or_a_hex_line() {
        assert_eq!(site_secret("s", &[0xff; 32]).unwrap(), [0xff; 32]);
        // One secret, however it was saved, is kept the same way.
        let canonical = format!("{}\n", "ab".repeat(32)).into_bytes();
        for saved in [
            format!("{}\n", "ab".repeat(32)),
            format!("{}\r\n", "AB".repeat(32)),
            "aB".repeat(32),
        ] {
            assert_eq!(
                site_secret("s", saved.as_bytes()).unwrap(),
                canonical,
                "{saved:?}"
            );
        }
        site_secret("s", "AB".repeat(16).as_bytes()).unwrap();
        for bad in [
            &b"root:$6$salt$hash:19000:0:99999:7:::\nbin:*:19000:0:99999:7:::\n"[..],
            b"not-a-secret-but-long-enough\n",
            &[0xff; 16],
            b"abcd",
            "ab".repeat(100).as_bytes(),
        ] {
            let e = site_secret("device.site_secret_file", bad).unwrap_err();
            assert_eq!(e.key, "device.site_secret_file");
            assert!(!e.reason.contains("root:"), "{e}");
        }
    }
}
