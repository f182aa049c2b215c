//! Mosquitto as the MQTT broker of the tests: [`MosquittoBuilder`] and the running
//! [`Mosquitto`].

use super::pki::TestPki;
use super::{free_ports, loopback, require_tool, temp_dir, Background, TestDir, READY_TIMEOUT};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Builder for a Mosquitto broker on loopback with a plain listener and,
/// optionally, a TLS listener.
#[derive(Debug, Clone, Default)]
pub struct MosquittoBuilder {
    tls: Option<(TestPki, bool)>,
    port: Option<u16>,
    tls_port: Option<u16>,
    persistence: Option<PathBuf>,
    extra: Vec<String>,
}

impl MosquittoBuilder {
    /// Listens on `port` (plain) instead of a free port: a broker restarted on the same
    /// port is the same broker to its clients.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Puts the TLS listener on `port` instead of a free port.
    pub fn tls_port(mut self, port: u16) -> Self {
        self.tls_port = Some(port);
        self
    }

    /// Keeps sessions and retained messages in `dir` (saved when the broker stops
    /// cleanly, see [`Mosquitto::stop`]; read again by a broker started on it).
    pub fn persistence_in(mut self, dir: &Path) -> Self {
        self.persistence = Some(dir.to_path_buf());
        self
    }

    /// Adds a TLS listener with `pki`'s server certificate; with `require_client_cert`
    /// clients must present a certificate signed by `pki`'s CA.
    pub fn tls(mut self, pki: &TestPki, require_client_cert: bool) -> Self {
        self.tls = Some((pki.clone(), require_client_cert));
        self
    }

    /// Appends a raw line to the generated `mosquitto.conf`.
    pub fn line(mut self, line: &str) -> Self {
        self.extra.push(line.to_string());
        self
    }

    /// Starts the broker and waits for its listeners; `None` with a SKIP line when
    /// Mosquitto is not installed. Panics with its log when it does not start.
    pub fn start(self) -> Option<Mosquitto> {
        let binary = require_tool("mosquitto")?;
        let dir = temp_dir("mosquitto");
        let ports = free_ports(2);
        let port = self.port.unwrap_or(ports[0]);
        let tls_port = self.tls_port.unwrap_or(ports[1]);
        let persistence = match &self.persistence {
            Some(dir) => format!(
                "persistence true\npersistence_location {}/\n",
                dir.display()
            ),
            None => "persistence false\n".to_string(),
        };
        let mut conf = format!(
            "# generated for a test\n\
             user root\n\
             {persistence}\
             log_dest stderr\n\
             log_type all\n\
             allow_anonymous true\n\
             listener {port} 127.0.0.1\n"
        );
        let tls_port = if let Some((pki, require)) = &self.tls {
            conf.push_str(&format!(
                "listener {tls_port} 127.0.0.1\n\
                 cafile {}\ncertfile {}\nkeyfile {}\n\
                 require_certificate {require}\n\
                 tls_version tlsv1.2\n",
                pki.ca_cert.display(),
                pki.server_cert.display(),
                pki.server_key.display(),
            ));
            Some(tls_port)
        } else {
            None
        };
        for line in &self.extra {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = dir.path().join("mosquitto.conf");
        fs::write(&conf_path, conf).unwrap();
        let log = dir.path().join("mosquitto.log");
        let mut cmd = Command::new(binary);
        cmd.arg("-c").arg(&conf_path);
        let mut process = Background::spawn("mosquitto", &mut cmd, &log).expect("start mosquitto");
        process
            .wait_for_port(loopback(port), READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        if let Some(tls_port) = tls_port {
            process
                .wait_for_port(loopback(tls_port), READY_TIMEOUT)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        Some(Mosquitto {
            port,
            tls_port,
            pki: self.tls.map(|(pki, _)| pki),
            process,
            dir,
        })
    }
}

/// A running Mosquitto broker (killed when dropped).
#[derive(Debug)]
pub struct Mosquitto {
    /// Plain MQTT port on 127.0.0.1.
    pub port: u16,
    /// TLS port on 127.0.0.1, when configured.
    pub tls_port: Option<u16>,
    /// The PKI of the TLS listener, when configured.
    pub pki: Option<TestPki>,
    /// The process (log, kill for outage tests).
    pub process: Background,
    dir: TestDir,
}

impl Mosquitto {
    /// A builder with the defaults (plain listener only).
    pub fn builder() -> MosquittoBuilder {
        MosquittoBuilder::default()
    }

    /// Starts a broker with only the plain listener.
    pub fn start() -> Option<Mosquitto> {
        MosquittoBuilder::default().start()
    }

    /// The broker's temporary folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the broker with SIGTERM, so that it saves its persistence, and waits for it
    /// (SIGKILL after 10 s).
    pub fn stop(mut self) {
        let _ = self
            .process
            .signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));
    }

    /// A `mosquitto_pub`/`mosquitto_sub` command already pointed at the plain
    /// listener (`-h 127.0.0.1 -p PORT`); `None` with a SKIP line when absent.
    pub fn client(&self, tool: &str) -> Option<Command> {
        let mut cmd = Command::new(require_tool(tool)?);
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        Some(cmd)
    }

    /// Like [`client`](Self::client) but on the TLS listener with the CA, and the
    /// client certificate when `with_client_cert`.
    pub fn tls_client(&self, tool: &str, with_client_cert: bool) -> Option<Command> {
        let pki = self.pki.as_ref().expect("broker started without TLS");
        let mut cmd = Command::new(require_tool(tool)?);
        cmd.args(["-h", "localhost", "-p", &self.tls_port.unwrap().to_string()])
            .arg("--cafile")
            .arg(&pki.ca_cert);
        if with_client_cert {
            cmd.arg("--cert")
                .arg(&pki.client_cert)
                .arg("--key")
                .arg(&pki.client_key);
        }
        Some(cmd)
    }
}
