//! Certificates for TLS tests: [`TestPki`], a throwaway CA with server and client
//! certificates made with the `openssl` CLI.

use super::{require_tool, run};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A throwaway PKI made with the `openssl` CLI: one CA, a server certificate for
/// `localhost`/127.0.0.1, and a client certificate; RSA 2048, PEM files.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// CA private key (PEM).
    pub ca_key: PathBuf,
    /// Server certificate (PEM), SAN localhost and 127.0.0.1.
    pub server_cert: PathBuf,
    /// Server private key (PKCS#8 PEM).
    pub server_key: PathBuf,
    /// Client certificate (PEM).
    pub client_cert: PathBuf,
    /// Client private key (PKCS#8 PEM).
    pub client_key: PathBuf,
}

impl TestPki {
    /// Generates the PKI into `dir` (file names prefixed with `name`); `None` with a
    /// SKIP line when `openssl` is absent.
    pub fn generate(dir: &Path, name: &str) -> Option<TestPki> {
        let openssl = require_tool("openssl")?;
        let f = |s: &str| dir.join(format!("{name}-{s}"));
        let pki = TestPki {
            ca_cert: f("ca.pem"),
            ca_key: f("ca.key"),
            server_cert: f("server.pem"),
            server_key: f("server.key"),
            client_cert: f("client.pem"),
            client_key: f("client.key"),
        };
        let openssl_run = |args: &[&str]| {
            let mut cmd = Command::new(&openssl);
            cmd.args(args);
            run(&mut cmd, Duration::from_secs(60)).assert_success("openssl");
        };
        let s = |p: &Path| p.to_str().unwrap().to_string();
        openssl_run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-keyout",
            &s(&pki.ca_key),
            "-out",
            &s(&pki.ca_cert),
            "-subj",
            &format!("/CN={name} test CA"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        let issue = |cn: &str, cert: &Path, key: &Path, ext: &str| {
            let csr = dir.join(format!("{name}-{cn}.csr"));
            let ext_file = dir.join(format!("{name}-{cn}.ext"));
            fs::write(&ext_file, ext).unwrap();
            openssl_run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &s(key),
                "-out",
                &s(&csr),
                "-subj",
                &format!("/CN={cn}"),
            ]);
            openssl_run(&[
                "x509",
                "-req",
                "-in",
                &s(&csr),
                "-CA",
                &s(&pki.ca_cert),
                "-CAkey",
                &s(&pki.ca_key),
                "-CAcreateserial",
                "-days",
                "30",
                "-out",
                &s(cert),
                "-extfile",
                &s(&ext_file),
            ]);
        };
        let common = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n";
        issue(
            "localhost",
            &pki.server_cert,
            &pki.server_key,
            &format!("{common}extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"),
        );
        issue(
            &format!("{name}-client"),
            &pki.client_cert,
            &pki.client_key,
            &format!("{common}extendedKeyUsage=clientAuth\n"),
        );
        Some(pki)
    }
}
