//! Orthanc as the PACS of the tests: [`OrthancBuilder`] and the running [`Orthanc`].

use super::http::{http_get, http_request, HttpResponse};
use super::{free_ports, loopback, skip, temp_dir, which, Background, TestDir, READY_TIMEOUT};
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// Builder for an Orthanc PACS on loopback ephemeral ports, from a generated JSON
/// configuration in a temporary folder (no plugins, no HTTP authentication,
/// `RemoteAccessAllowed` false, `SyncStorageArea` true).
#[derive(Debug, Clone)]
pub struct OrthancBuilder {
    aet: String,
    modalities: serde_json::Map<String, serde_json::Value>,
    extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for OrthancBuilder {
    fn default() -> Self {
        OrthancBuilder {
            aet: "ORTHANC".into(),
            modalities: serde_json::Map::new(),
            extra: serde_json::Map::new(),
        }
    }
}

impl OrthancBuilder {
    /// Orthanc's own AE title (default `ORTHANC`).
    pub fn aet(mut self, aet: &str) -> Self {
        self.aet = aet.to_string();
        self
    }

    /// Adds a `DicomModalities` entry `name` → `[aet, host, port]` (a peer Orthanc
    /// may query, move to, or accept as a C-MOVE destination).
    pub fn modality(mut self, name: &str, aet: &str, host: &str, port: u16) -> Self {
        self.modalities
            .insert(name.to_string(), serde_json::json!([aet, host, port]));
        self
    }

    /// Sets any other configuration option (overrides the defaults).
    pub fn option(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extra.insert(key.to_string(), value);
        self
    }

    /// Starts Orthanc and waits until `/system` answers and the DICOM port accepts;
    /// `None` with a SKIP line when Orthanc is not installed. Panics with Orthanc's
    /// log when it does not start.
    pub fn start(self) -> Option<Orthanc> {
        let binary = which("Orthanc").or_else(|| which("orthanc"));
        let Some(binary) = binary else {
            skip("Orthanc is not installed (apt orthanc; run scripts/setup-test-env.sh)");
            return None;
        };
        let dir = temp_dir("orthanc");
        let ports = free_ports(2);
        let (dicom_port, http_port) = (ports[0], ports[1]);
        let mut config = serde_json::json!({
            "Name": "duli-test-orthanc",
            "StorageDirectory": dir.path().join("storage"),
            "IndexDirectory": dir.path().join("index"),
            "StorageCompression": false,
            "SyncStorageArea": true,
            "Plugins": [],
            "HttpServerEnabled": true,
            "HttpPort": http_port,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "SslEnabled": false,
            "HttpCompressionEnabled": false,
            "DicomServerEnabled": true,
            "DicomAet": self.aet,
            "DicomPort": dicom_port,
            "DicomCheckCalledAet": false,
            "DicomCheckModalityHost": false,
            "DicomAlwaysAllowEcho": true,
            "DicomAlwaysAllowStore": true,
            "DicomAlwaysAllowFind": true,
            "DicomAlwaysAllowMove": true,
            "DicomAlwaysAllowGet": true,
            "UnknownSopClassAccepted": true,
            "DicomModalities": self.modalities,
            "SaveJobs": false,
            "StableAge": 1,
            "DicomScpTimeout": 30,
            "ConcurrentJobs": 2,
        });
        let obj = config.as_object_mut().unwrap();
        for (k, v) in self.extra {
            obj.insert(k, v);
        }
        let config_path = dir.path().join("orthanc.json");
        fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let log = dir.path().join("orthanc.log");
        let mut cmd = Command::new(binary);
        cmd.arg("--no-jobs")
            .arg(&config_path)
            .current_dir(dir.path());
        let mut process = Background::spawn("Orthanc", &mut cmd, &log).expect("start Orthanc");
        let http = loopback(http_port);
        process
            .wait_for_port(http, READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        process
            .wait_for_port(loopback(dicom_port), READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        let deadline = Instant::now() + READY_TIMEOUT;
        while !matches!(http_get(http, "/system"), Ok(r) if r.status == 200) {
            assert!(
                Instant::now() < deadline,
                "Orthanc /system not ready; log:\n{}",
                process.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        Some(Orthanc {
            aet: config["DicomAet"].as_str().unwrap().to_string(),
            dicom_port,
            http_port,
            process,
            dir,
        })
    }
}

/// A running Orthanc (killed when dropped).
#[derive(Debug)]
pub struct Orthanc {
    /// Orthanc's AE title.
    pub aet: String,
    /// Its DICOM port.
    pub dicom_port: u16,
    /// Its REST API port.
    pub http_port: u16,
    /// The process (log, memory, kill).
    pub process: Background,
    dir: TestDir,
}

impl Orthanc {
    /// A builder with the defaults.
    pub fn builder() -> OrthancBuilder {
        OrthancBuilder::default()
    }

    /// Starts Orthanc on defaults (see [`OrthancBuilder::start`]).
    pub fn start() -> Option<Orthanc> {
        OrthancBuilder::default().start()
    }

    /// The REST API address.
    pub fn http_addr(&self) -> SocketAddr {
        loopback(self.http_port)
    }

    /// `GET path` on the REST API.
    pub fn get(&self, path: &str) -> io::Result<HttpResponse> {
        http_get(self.http_addr(), path)
    }

    /// `GET path` on the REST API, expecting 200 and a JSON body.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let r = self
            .get(path)
            .unwrap_or_else(|e| panic!("Orthanc GET {path}: {e}"));
        assert_eq!(r.status, 200, "Orthanc GET {path}: {}", r.text());
        r.json()
    }

    /// `POST path` with a JSON body, expecting 200 and a JSON answer.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let bytes = serde_json::to_vec(body).unwrap();
        let r = http_request(
            self.http_addr(),
            "POST",
            path,
            Some(("application/json", &bytes)),
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| panic!("Orthanc POST {path}: {e}"));
        assert_eq!(r.status, 200, "Orthanc POST {path}: {}", r.text());
        r.json()
    }

    /// `PUT path` with a JSON body, expecting 200 (e.g. `/modalities/{name}`, which adds a
    /// peer to a running Orthanc).
    pub fn put_json(&self, path: &str, body: &serde_json::Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        let r = http_request(
            self.http_addr(),
            "PUT",
            path,
            Some(("application/json", &bytes)),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("Orthanc PUT {path}: {e}"));
        assert_eq!(r.status, 200, "Orthanc PUT {path}: {}", r.text());
    }

    /// The Orthanc ids of all stored instances.
    pub fn instances(&self) -> Vec<String> {
        serde_json::from_value(self.get_json("/instances")).unwrap()
    }

    /// Orthanc's own temporary folder (config, storage, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
