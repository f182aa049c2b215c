//! Configuration: TOML with serde, built-in defaults for every value, environment overrides
//! (`DULI_SECTION__KEY`), path resolution and a `validate()` whose errors name the key.
//!
//! Loading order: built-in defaults ← the file (if any) ← environment. Relative paths in a file
//! resolve against the file's folder; defaults and environment values resolve against the
//! working directory.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "DULI_";

/// The whole daemon configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Identity of this box and where it keeps its data.
    pub device: DeviceConfig,
    /// The DICOM service (SCP) and its peers.
    pub dicom: DicomConfig,
    /// The inference engine and model.
    pub inference: InferenceConfig,
    /// HL7 v2 delivery to the RIS.
    pub hl7: Hl7Config,
    /// MQTT delivery to the cloud backend.
    pub mqtt: MqttConfig,
    /// PACS destinations for result push and C-MOVE.
    pub pacs: PacsConfig,
    /// The console/API listener (also serves `/metrics` and `/healthz`).
    pub console: ConsoleConfig,
    /// Retention of pixel data and the disk reserve.
    pub retention: RetentionConfig,
    /// Signed firmware updates: bootloader, A/B slots, hardware id, model packs.
    pub firmware: duli_firmware::FirmwareConfig,
    /// The file this configuration was read from, if any (its folder holds what
    /// provisioning left beside it, e.g. the pending first administrator).
    #[serde(skip)]
    pub origin: Option<PathBuf>,
}

/// `[device]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceConfig {
    /// Site identifier (hospital), used in MQTT topics and HL7 MSH-4.
    pub site_id: String,
    /// Device identifier, unique within the site.
    pub device_id: String,
    /// Folder holding the store, the received files and runtime state.
    pub data_dir: PathBuf,
    /// File holding the secret that keys the pseudonyms sent to the cloud
    /// (default: `<data_dir>/site_secret`, generated on first start).
    pub site_secret: Option<PathBuf>,
    /// The account `duli run` switches to when started as root (after binding its ports,
    /// before opening the store). Under systemd the unit's `User=` applies instead.
    pub service_user: String,
    /// Let `duli run` keep running as root when started as root (also `--allow-root`).
    pub allow_root: bool,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            site_id: "demo-site".into(),
            device_id: "duli-edge-01".into(),
            data_dir: PathBuf::from("duli-data"),
            site_secret: None,
            service_user: "duli".into(),
            allow_root: false,
        }
    }
}

/// A permission a DICOM peer may hold.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// C-ECHO (Verification).
    Echo,
    /// C-STORE of images.
    Store,
    /// C-FIND (query).
    Find,
    /// C-MOVE (retrieve to a third AE).
    Move,
    /// C-GET (retrieve on the same association).
    Get,
}

impl Permission {
    /// Every permission, the default for a listed peer.
    pub const ALL: [Permission; 5] = [
        Permission::Echo,
        Permission::Store,
        Permission::Find,
        Permission::Move,
        Permission::Get,
    ];

    /// The permission's name as written in `allowed_peers`.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Echo => "echo",
            Permission::Store => "store",
            Permission::Find => "find",
            Permission::Move => "move",
            Permission::Get => "get",
        }
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One entry of `[dicom] allowed_peers`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AllowedPeer {
    /// Calling AE title of the peer.
    pub ae_title: String,
    /// Optional source IP address the peer must connect from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// What the peer may do.
    #[serde(default = "all_permissions")]
    pub permissions: Vec<Permission>,
    /// SHA-256 of the peer's TLS client certificate (DER), 64 hex digits (colons and case
    /// ignored). When set, the entry matches only associations on the TLS port whose
    /// client certificate has this fingerprint: the AE title is bound to the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_sha256: Option<String>,
}

impl AllowedPeer {
    /// The certificate fingerprint as compared: lower-case hex without colons.
    pub fn cert_fingerprint(&self) -> Option<String> {
        self.cert_sha256.as_deref().map(normalise_fingerprint)
    }
}

/// A SHA-256 fingerprint as written (`AB:CD:…` or `abcd…`) in the form compared.
pub fn normalise_fingerprint(text: &str) -> String {
    text.trim()
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn all_permissions() -> Vec<Permission> {
    Permission::ALL.to_vec()
}

/// `[dicom]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DicomConfig {
    /// This appliance's AE title (called AE title peers must use).
    pub ae_title: String,
    /// Address to listen on.
    pub bind: IpAddr,
    /// Plain DICOM port.
    pub port: u16,
    /// UID root for generated UIDs (`2.25.` = UUID-derived).
    pub uid_root: String,
    /// Calling AE allow-list; empty accepts any calling AE with every permission.
    pub allowed_peers: Vec<AllowedPeer>,
    /// Maximum concurrent associations; over it A-ASSOCIATE-RJ (transient).
    pub max_associations: usize,
    /// Maximum concurrent associations from one address (its share of
    /// `max_associations`, which caps it); over it A-ASSOCIATE-RJ (transient).
    pub max_associations_per_address: usize,
    /// Maximum PDU length this SCP receives (bytes).
    pub max_pdu: u32,
    /// Largest instance accepted (MiB); a C-STORE that streams past it is aborted.
    pub max_instance_mb: u64,
    /// Seconds without a new instance after release before a study is complete
    /// (0 = complete at release).
    pub quiet_period: u64,
    /// Accept any storage SOP class, not only the radiography and result classes.
    pub accept_any_storage: bool,
    /// Seconds a new connection may take to send its A-ASSOCIATE-RQ (ARTIM).
    pub artim_timeout: u64,
    /// Connections held at most while they have not associated (TLS handshake,
    /// A-ASSOCIATE-RQ); over it the oldest of the busiest address is closed.
    pub max_pending_connections: usize,
    /// Connections held at most from one address while they have not associated; over it
    /// that address's oldest is closed.
    pub max_pending_per_address: usize,
    /// Seconds an association may stay silent before it is aborted.
    pub idle_timeout: u64,
    /// Serve plain (unencrypted) DICOM on `port`; `false` leaves only the TLS port.
    pub plain: bool,
    /// Serve DICOM TLS on `tls_port`.
    pub tls: bool,
    /// DICOM TLS port.
    pub tls_port: u16,
    /// CA bundle (PEM) that client certificates must chain to.
    pub ca: Option<PathBuf>,
    /// Server certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Server private key (PEM).
    pub key: Option<PathBuf>,
    /// Require a client certificate on DICOM TLS.
    pub tls_require_client_cert: bool,
}

impl Default for DicomConfig {
    fn default() -> Self {
        Self {
            ae_title: "DULI".into(),
            bind: IpAddr::from([127, 0, 0, 1]),
            port: 11112,
            uid_root: "2.25.".into(),
            allowed_peers: Vec::new(),
            max_associations: 32,
            max_associations_per_address: 16,
            max_pdu: 262_144,
            max_instance_mb: 2048,
            quiet_period: 5,
            accept_any_storage: false,
            artim_timeout: 30,
            max_pending_connections: 512,
            max_pending_per_address: 32,
            idle_timeout: 120,
            plain: true,
            tls: false,
            tls_port: 2762,
            ca: None,
            cert: None,
            key: None,
            tls_require_client_cert: true,
        }
    }
}

/// `[inference]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// Path of the model manifest (`model.toml`).
    pub model: PathBuf,
    /// OpenVINO device: CPU, GPU, NPU or AUTO.
    pub device: String,
    /// OpenVINO performance hint: LATENCY, THROUGHPUT, or AUTO (latency for an image
    /// alone, throughput with several infer requests when images wait).
    pub performance_hint: String,
    /// Inference precision: f32, bf16, int8, or auto (the fastest precision whose gate
    /// passed on this CPU). bf16 and int8 are used only with a passed gate for this
    /// CPU's feature (`duli evaluate --precision P --gate`), else f32 runs.
    pub precision: String,
    /// Path of `libopenvino_c.so*`; default: `DULI_OPENVINO_LIB` or `.cache/openvino/libs`.
    pub openvino_lib: Option<PathBuf>,
    /// Largest image analysed or previewed, as Rows × Columns × Frames × Samples per Pixel,
    /// checked before any decode; larger images are recorded as not analysable.
    pub max_pixels: u64,
}

/// Default of `inference.max_pixels`.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::from("models/pneumonia-xception/model.toml"),
            device: "CPU".into(),
            performance_hint: "LATENCY".into(),
            precision: "f32".into(),
            openvino_lib: None,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

/// `[hl7]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Hl7Config {
    /// Send ORU^R01 reports to the RIS.
    pub enabled: bool,
    /// RIS MLLP host.
    pub host: String,
    /// RIS MLLP port.
    pub port: u16,
    /// MLLP over TLS.
    pub tls: bool,
    /// CA bundle (PEM) the RIS certificate must chain to.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM), if the RIS asks for one.
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    pub key: Option<PathBuf>,
    /// MSH-5 receiving application.
    pub receiving_application: String,
    /// MSH-6 receiving facility.
    pub receiving_facility: String,
    /// Explicit refusals (AE/AR) before a message is dead-lettered.
    pub max_rejections: u32,
    /// Where the ORU carries the Study Instance UID: an OBX (standard) or a ZDS segment.
    pub study_uid_in: StudyUidIn,
}

/// Where an ORU^R01 carries the Study Instance UID (`hl7.study_uid_in`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StudyUidIn {
    /// An OBX of type ST coded `110180^Study Instance UID^DCM`, after the findings: valid
    /// in strict HL7 v2.5.1 parsers.
    #[default]
    Obx,
    /// A `ZDS` segment (IHE Radiology) at the end of the message, where strict parsers
    /// accept a Z segment, for RIS that look for it there.
    Zds,
}

impl Default for Hl7Config {
    fn default() -> Self {
        Self {
            enabled: false,
            host: "127.0.0.1".into(),
            port: 2575,
            tls: false,
            ca: None,
            cert: None,
            key: None,
            receiving_application: "RIS".into(),
            receiving_facility: "HOSPITAL".into(),
            max_rejections: 5,
            study_uid_in: StudyUidIn::Obx,
        }
    }
}

/// `[mqtt]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Publish reports, feedback, status and health to the cloud broker.
    pub enabled: bool,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS with a client certificate.
    pub tls: bool,
    /// Stable client id (persistent session); default `duli-<device_id>`.
    pub client_id: Option<String>,
    /// CA bundle (PEM) of the broker.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    pub key: Option<PathBuf>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            host: "127.0.0.1".into(),
            port: 8883,
            tls: true,
            client_id: None,
            ca: None,
            cert: None,
            key: None,
        }
    }
}

/// One `[[pacs.destinations]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PacsDestination {
    /// Human name of the destination.
    pub name: String,
    /// Its AE title.
    pub ae_title: String,
    /// Its host.
    pub host: String,
    /// Its DICOM port.
    pub port: u16,
    /// Push result objects there by C-STORE.
    #[serde(default)]
    pub push: bool,
    /// Allowed as a C-MOVE destination.
    #[serde(default, rename = "move")]
    pub move_: bool,
    /// Speak DICOM TLS to it (TLS 1.2 or 1.3, the SCP's profile).
    #[serde(default)]
    pub tls: bool,
    /// CA bundle (PEM) its certificate must chain to; required with `tls = true`.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Our client certificate chain (PEM), when it asks for one.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Which result objects a push sends there: `"sr"` (the TID 1500 Structured Report),
    /// `"pm"` (the heatmap as a Parametric Map), `"sc"` (the heatmap burned into a
    /// Secondary Capture). Default `["sr", "sc"]`.
    #[serde(default = "default_result_objects")]
    pub result_objects: Vec<ResultObject>,
    /// Explicit refusals of an entry (a failure status for one of its objects, or its SOP
    /// class not accepted in negotiation) before it is dead-lettered: kept, listed,
    /// re-queueable. Default 5. No connection or no answer is retried, never counted.
    #[serde(default = "default_max_rejections")]
    pub max_rejections: u32,
}

fn default_max_rejections() -> u32 {
    5
}

/// A kind of DICOM result object (`[[pacs.destinations]] result_objects`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ResultObject {
    /// The Comprehensive SR (TID 1500 Imaging Measurement Report).
    Sr,
    /// The heatmap as a Parametric Map.
    Pm,
    /// The heatmap burned into a Secondary Capture.
    Sc,
}

fn default_result_objects() -> Vec<ResultObject> {
    vec![ResultObject::Sr, ResultObject::Sc]
}

impl PacsDestination {
    /// Its outbound TLS settings (`None` for plain TCP).
    pub fn outbound_tls(&self) -> Option<crate::ul::client::OutboundTls> {
        if !self.tls {
            return None;
        }
        Some(crate::ul::client::OutboundTls {
            ca: self.tls_ca.clone().unwrap_or_default(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
        })
    }
}

/// `[pacs]`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PacsConfig {
    /// Known PACS/workstation AEs.
    pub destinations: Vec<PacsDestination>,
}

/// `[console]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Address of the console/API listener.
    pub bind: IpAddr,
    /// Port of the console/API listener.
    pub port: u16,
    /// Certificate chain (PEM); generated self-signed when absent.
    pub cert: Option<PathBuf>,
    /// Private key (PEM).
    pub key: Option<PathBuf>,
    /// A console session ends after this many seconds without a request.
    pub session_idle_secs: u64,
    /// A console session ends this many seconds after login, however active.
    pub session_max_secs: u64,
    /// Seconds a client has to send a request's headers, counted from its first byte
    /// (or from the end of the TLS handshake for the first request).
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may stay open with no request in flight (keep-alive).
    pub idle_timeout_secs: u64,
    /// Most console connections open at once; further ones are closed at accept.
    pub max_connections: usize,
    /// Most console connections open at once from one client address.
    pub max_connections_per_address: usize,
    /// Most requests served at once (idle connections hold none).
    pub max_requests: usize,
    /// Most live event streams (server-sent events) open at once.
    pub max_event_streams: usize,
    /// Most live event streams one user may hold open at once (all their sessions and
    /// tabs together), so one account cannot take every stream.
    pub max_event_streams_per_user: usize,
    /// Largest manual upload accepted (MB).
    pub max_upload_mb: u64,
    /// Most uploads received at once, all users together.
    pub max_uploads: usize,
    /// Most uploads one user may send at once.
    pub max_uploads_per_user: usize,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::from([127, 0, 0, 1]),
            port: 8443,
            cert: None,
            key: None,
            session_idle_secs: 30 * 60,
            session_max_secs: 12 * 3600,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_connections: 2048,
            max_connections_per_address: 64,
            max_requests: 64,
            max_event_streams: 256,
            max_event_streams_per_user: 16,
            max_upload_mb: 64,
            max_uploads: 4,
            max_uploads_per_user: 2,
        }
    }
}

/// `[retention]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Delete received pixel data after this many days (results are kept); 0 keeps forever.
    pub pixel_days: u32,
    /// Free space to keep on the data disk: below it C-STORE answers A700 and the
    /// oldest delivered pixel data is pruned first.
    pub disk_reserve_mb: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            pixel_days: 30,
            disk_reserve_mb: 1024,
        }
    }
}

/// One problem with one configuration key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    /// The key, as `section.key` (or `section.list[i].key`).
    pub key: String,
    /// Why the value is not acceptable.
    pub reason: String,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML (file or environment) does not parse or has the wrong shape.
    #[error("{origin}: {message}")]
    Parse {
        /// Where the text came from (file path or variable name).
        origin: String,
        /// The parser's message (names the key).
        message: String,
    },
    /// One or more values are invalid.
    #[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<KeyError>),
}

impl Config {
    /// Loads the configuration: defaults, then `path` (if given), then `DULI_*` variables
    /// from `env`, then resolves relative paths and validates.
    pub fn load<I>(path: Option<&Path>, env: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let mut table = toml::Table::new();
        let mut file_dir = None;
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            table = text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError::Parse {
                    origin: path.display().to_string(),
                    message: e.message().to_string() + &span_hint(&text, e.span()),
                })?;
            let dir = path.parent().unwrap_or(Path::new("."));
            file_dir = Some(if dir.as_os_str().is_empty() {
                cwd.clone()
            } else {
                cwd.join(dir)
            });
        }
        // Paths set in the file resolve against its folder; everything else (defaults and
        // environment) against the working directory.
        deserialize(table.clone(), path)?;
        let mut file_paths = keys_of(&table);
        let from_env = apply_env(&mut table, env)?;
        let set = keys_of(&table);
        file_paths.retain(|k| !from_env.contains(k));
        let mut config: Config = deserialize(table, path)?;
        if !set.iter().any(|k| k == "inference.model") {
            // Not configured: the default model wherever it is installed (see `locate`).
            config.inference.model = crate::locate::model_manifest().or_first();
        }
        config.resolve_paths(&cwd, file_dir.as_deref(), &file_paths);
        config.origin = path.map(|p| cwd.join(p));
        config.validate().map_err(ConfigError::Invalid)?;
        Ok(config)
    }

    fn resolve_paths(&mut self, cwd: &Path, file_dir: Option<&Path>, from_file: &[String]) {
        let base_for = |key: &str| -> PathBuf {
            match file_dir {
                Some(dir) if from_file.iter().any(|k| k == key) => dir.to_path_buf(),
                _ => cwd.to_path_buf(),
            }
        };
        let fix = |p: &mut PathBuf, key: &str| {
            if p.is_relative() {
                *p = base_for(key).join(&*p);
            }
        };
        let fix_opt = |p: &mut Option<PathBuf>, key: &str| {
            if let Some(p) = p {
                if p.is_relative() {
                    *p = base_for(key).join(&*p);
                }
            }
        };
        fix(&mut self.device.data_dir, "device.data_dir");
        fix_opt(&mut self.device.site_secret, "device.site_secret");
        fix_opt(&mut self.dicom.ca, "dicom.ca");
        fix_opt(&mut self.dicom.cert, "dicom.cert");
        fix_opt(&mut self.dicom.key, "dicom.key");
        fix(&mut self.inference.model, "inference.model");
        fix_opt(&mut self.inference.openvino_lib, "inference.openvino_lib");
        fix_opt(&mut self.hl7.ca, "hl7.ca");
        fix_opt(&mut self.hl7.cert, "hl7.cert");
        fix_opt(&mut self.hl7.key, "hl7.key");
        fix_opt(&mut self.mqtt.ca, "mqtt.ca");
        fix_opt(&mut self.mqtt.cert, "mqtt.cert");
        fix_opt(&mut self.mqtt.key, "mqtt.key");
        fix_opt(&mut self.console.cert, "console.cert");
        fix_opt(&mut self.console.key, "console.key");
        let fw = &mut self.firmware;
        for (p, key) in [
            (&mut fw.grubenv, "firmware.grubenv"),
            (&mut fw.uboot_config, "firmware.uboot_config"),
            (&mut fw.boot_env_file, "firmware.boot_env_file"),
            (&mut fw.slot_a, "firmware.slot_a"),
            (&mut fw.slot_b, "firmware.slot_b"),
            (&mut fw.cmdline, "firmware.cmdline"),
            (&mut fw.endorsed_keys, "firmware.endorsed_keys"),
            (&mut fw.staged_bundle, "firmware.staged_bundle"),
            (&mut fw.model_packs, "firmware.model_packs"),
        ] {
            fix(p, key);
        }
    }

    /// Checks every value; returns all problems, each naming its key.
    pub fn validate(&self) -> Result<(), Vec<KeyError>> {
        let mut errs = Vec::new();
        let mut bad = |key: &str, reason: String| {
            errs.push(KeyError {
                key: key.to_string(),
                reason,
            })
        };
        check_id(&self.device.site_id, "device.site_id", &mut bad);
        check_id(&self.device.device_id, "device.device_id", &mut bad);
        if self.device.service_user.is_empty()
            || self.device.service_user.len() > 32
            || !self
                .device
                .service_user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            bad("device.service_user", "1 to 32 of A-Z a-z 0-9 _ - .".into());
        }
        if self.device.data_dir.as_os_str().is_empty() {
            bad("device.data_dir", "must not be empty".into());
        }
        if let Err(r) = check_ae_title(&self.dicom.ae_title) {
            bad("dicom.ae_title", r.to_string());
        }
        if self.dicom.port == 0 {
            bad("dicom.port", "must be between 1 and 65535".into());
        }
        if let Err(r) = check_uid_root(&self.dicom.uid_root) {
            bad("dicom.uid_root", r.to_string());
        }
        for (i, peer) in self.dicom.allowed_peers.iter().enumerate() {
            if let Err(r) = check_ae_title(&peer.ae_title) {
                bad(&format!("dicom.allowed_peers[{i}].ae_title"), r.to_string());
            }
            if peer.permissions.is_empty() {
                bad(
                    &format!("dicom.allowed_peers[{i}].permissions"),
                    "must list at least one of echo, store, find, move, get".into(),
                );
            }
            if let Some(fp) = peer.cert_fingerprint() {
                let key = format!("dicom.allowed_peers[{i}].cert_sha256");
                if fp.len() != 64 || !fp.chars().all(|c| c.is_ascii_hexdigit()) {
                    bad(
                        &key,
                        "must be a SHA-256 fingerprint: 64 hex digits (colons allowed)".into(),
                    );
                } else if !self.dicom.tls {
                    bad(
                        &key,
                        "needs dicom.tls = true (a certificate is only seen on the TLS port)"
                            .into(),
                    );
                } else if self.dicom.ca.is_none() {
                    bad(
                        &key,
                        "needs dicom.ca: without it no client certificate is asked for, so \
                         the binding could never match"
                            .into(),
                    );
                }
            }
        }
        if !self.dicom.plain && !self.dicom.tls {
            bad(
                "dicom.plain",
                "false needs dicom.tls = true (no DICOM port would be left)".into(),
            );
        }
        if self.dicom.max_associations == 0 || self.dicom.max_associations > 1024 {
            bad(
                "dicom.max_associations",
                format!(
                    "must be between 1 and 1024, got {}",
                    self.dicom.max_associations
                ),
            );
        }
        if !(4096..=16 * 1024 * 1024).contains(&self.dicom.max_pdu) {
            bad(
                "dicom.max_pdu",
                format!(
                    "must be between 4096 and 16777216 bytes, got {}",
                    self.dicom.max_pdu
                ),
            );
        }
        if !(1..=65_536).contains(&self.dicom.max_instance_mb) {
            bad(
                "dicom.max_instance_mb",
                format!(
                    "must be between 1 and 65536 MiB, got {}",
                    self.dicom.max_instance_mb
                ),
            );
        }
        if !(1..=4_000_000_000).contains(&self.inference.max_pixels) {
            bad(
                "inference.max_pixels",
                format!(
                    "must be between 1 and 4000000000, got {}",
                    self.inference.max_pixels
                ),
            );
        }
        if self.dicom.quiet_period > 86_400 {
            bad(
                "dicom.quiet_period",
                "must be at most 86400 seconds".to_string(),
            );
        }
        if self.dicom.artim_timeout == 0 || self.dicom.artim_timeout > 600 {
            bad(
                "dicom.artim_timeout",
                "must be between 1 and 600 seconds".into(),
            );
        }
        if !(1..=16_384).contains(&self.dicom.max_pending_connections) {
            bad(
                "dicom.max_pending_connections",
                format!(
                    "must be between 1 and 16384, got {}",
                    self.dicom.max_pending_connections
                ),
            );
        }
        if self.dicom.max_associations_per_address == 0 {
            bad(
                "dicom.max_associations_per_address",
                "must be at least 1 (above dicom.max_associations it is that limit)".into(),
            );
        }
        if self.dicom.max_pending_per_address == 0
            || self.dicom.max_pending_per_address > self.dicom.max_pending_connections
        {
            bad(
                "dicom.max_pending_per_address",
                format!(
                    "must be between 1 and dicom.max_pending_connections ({}), got {}",
                    self.dicom.max_pending_connections, self.dicom.max_pending_per_address
                ),
            );
        }
        if self.dicom.idle_timeout == 0 || self.dicom.idle_timeout > 86_400 {
            bad(
                "dicom.idle_timeout",
                "must be between 1 and 86400 seconds".into(),
            );
        }
        if self.dicom.tls {
            if self.dicom.tls_port == 0 {
                bad("dicom.tls_port", "must be between 1 and 65535".into());
            }
            if self.dicom.tls_port == self.dicom.port {
                bad("dicom.tls_port", "must differ from dicom.port".into());
            }
            for (key, value) in [
                ("dicom.cert", &self.dicom.cert),
                ("dicom.key", &self.dicom.key),
            ] {
                match value {
                    None => bad(key, "required when dicom.tls = true".into()),
                    Some(p) => check_file(p, key, &mut bad),
                }
            }
            match &self.dicom.ca {
                None if self.dicom.tls_require_client_cert => bad(
                    "dicom.ca",
                    "required when dicom.tls = true and client certificates are required".into(),
                ),
                Some(p) => check_file(p, "dicom.ca", &mut bad),
                None => {}
            }
        }
        if !["CPU", "GPU", "NPU", "AUTO"].contains(&self.inference.device.as_str())
            && !self.inference.device.starts_with("AUTO:")
            && !self.inference.device.starts_with("GPU.")
        {
            bad(
                "inference.device",
                format!(
                    "must be CPU, GPU, NPU or AUTO, got {:?}",
                    self.inference.device
                ),
            );
        }
        if !["LATENCY", "THROUGHPUT", "AUTO"].contains(&self.inference.performance_hint.as_str()) {
            bad(
                "inference.performance_hint",
                format!(
                    "must be LATENCY, THROUGHPUT or AUTO, got {:?}",
                    self.inference.performance_hint
                ),
            );
        }
        if let Err(e) = self
            .inference
            .precision
            .parse::<crate::infer::precision::PrecisionSetting>()
        {
            bad("inference.precision", e.to_string());
        }
        if self.hl7.enabled {
            if self.hl7.host.trim().is_empty() {
                bad(
                    "hl7.host",
                    "must not be empty when hl7.enabled = true".into(),
                );
            }
            if self.hl7.port == 0 {
                bad("hl7.port", "must be between 1 and 65535".into());
            }
        }
        if self.hl7.max_rejections == 0 {
            bad("hl7.max_rejections", "must be at least 1".into());
        }
        // MSH-4, -5 and -6 are HD namespace ids: at most 20 characters in HL7 v2.5.1.
        if self.hl7.enabled && self.device.site_id.chars().count() > HL7_NAMESPACE_ID_MAX {
            bad(
                "device.site_id",
                format!(
                    "is the HL7 sending facility (MSH-4) while hl7.enabled = true: at most \
                     {HL7_NAMESPACE_ID_MAX} characters"
                ),
            );
        }
        for (key, value) in [
            ("hl7.receiving_application", &self.hl7.receiving_application),
            ("hl7.receiving_facility", &self.hl7.receiving_facility),
        ] {
            if value.chars().count() > HL7_NAMESPACE_ID_MAX {
                bad(
                    key,
                    format!("at most {HL7_NAMESPACE_ID_MAX} characters (an HL7 namespace id)"),
                );
            }
            if value.contains(['|', '^', '~', '\\', '&', '\r', '\n']) {
                bad(key, "must not contain HL7 delimiters (| ^ ~ \\ &)".into());
            }
        }
        if self.mqtt.enabled {
            if self.mqtt.host.trim().is_empty() {
                bad(
                    "mqtt.host",
                    "must not be empty when mqtt.enabled = true".into(),
                );
            }
            if self.mqtt.port == 0 {
                bad("mqtt.port", "must be between 1 and 65535".into());
            }
            if self.mqtt.tls {
                for (key, value) in [
                    ("mqtt.ca", &self.mqtt.ca),
                    ("mqtt.cert", &self.mqtt.cert),
                    ("mqtt.key", &self.mqtt.key),
                ] {
                    match value {
                        None => bad(key, "required when mqtt.tls = true".into()),
                        Some(p) => check_file(p, key, &mut bad),
                    }
                }
            }
        }
        if let Some(id) = &self.mqtt.client_id {
            if id.is_empty() || id.len() > 64 {
                bad("mqtt.client_id", "must be 1 to 64 characters".into());
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, d) in self.pacs.destinations.iter().enumerate() {
            if d.name.trim().is_empty() {
                bad(
                    &format!("pacs.destinations[{i}].name"),
                    "must not be empty".into(),
                );
            } else if !names.insert(d.name.clone()) {
                bad(
                    &format!("pacs.destinations[{i}].name"),
                    format!("duplicate destination name {:?}", d.name),
                );
            }
            if let Err(r) = check_ae_title(&d.ae_title) {
                bad(&format!("pacs.destinations[{i}].ae_title"), r.to_string());
            }
            if d.host.trim().is_empty() {
                bad(
                    &format!("pacs.destinations[{i}].host"),
                    "must not be empty".into(),
                );
            }
            if d.port == 0 {
                bad(
                    &format!("pacs.destinations[{i}].port"),
                    "must be between 1 and 65535".into(),
                );
            }
            if d.max_rejections == 0 {
                bad(
                    &format!("pacs.destinations[{i}].max_rejections"),
                    "must be at least 1".into(),
                );
            }
            check_destination_tls(i, d, &mut bad);
        }
        if self.console.port == 0 {
            bad("console.port", "must be between 1 and 65535".into());
        }
        if self.console.session_idle_secs == 0 {
            bad("console.session_idle_secs", "must be at least 1".into());
        }
        if self.console.session_max_secs < self.console.session_idle_secs {
            bad(
                "console.session_max_secs",
                "must be at least console.session_idle_secs".into(),
            );
        }
        check_console_limits(&self.console, &mut bad);
        if self.console.cert.is_some() != self.console.key.is_some() {
            bad(
                "console.cert",
                "console.cert and console.key must be set together".into(),
            );
        }
        for (key, value) in [
            ("console.cert", &self.console.cert),
            ("console.key", &self.console.key),
        ] {
            if let Some(p) = value {
                check_file(p, key, &mut bad);
            }
        }
        check_firmware(&self.firmware, &mut bad);
        if self.retention.pixel_days > 36_500 {
            bad(
                "retention.pixel_days",
                "must be at most 36500 days".to_string(),
            );
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    /// The effective configuration as TOML (for `check-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// The MQTT client id in effect.
    pub fn mqtt_client_id(&self) -> String {
        self.mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("duli-{}", self.device.device_id))
    }

    /// The site secret file in effect.
    pub fn site_secret_path(&self) -> PathBuf {
        self.device
            .site_secret
            .clone()
            .unwrap_or_else(|| self.device.data_dir.join("site_secret"))
    }
}

/// Names (`section.key`) of the keys present in a raw table.
fn keys_of(table: &toml::Table) -> Vec<String> {
    let mut keys = Vec::new();
    for (section, value) in table {
        if let Some(inner) = value.as_table() {
            for key in inner.keys() {
                keys.push(format!("{section}.{key}"));
            }
        }
    }
    keys
}

fn deserialize(table: toml::Table, path: Option<&Path>) -> Result<Config, ConfigError> {
    // serde_path_to_error names the key (e.g. `dicom.allowed_peers[0].permissions[0]`) of a
    // value with the wrong type or an unknown variant, whether it came from the file or
    // from the environment.
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let message = e.into_inner().message().to_string();
        ConfigError::Parse {
            origin: path
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "configuration".into()),
            message: if key.is_empty() || key == "." {
                message
            } else {
                format!("{key}: {message}")
            },
        }
    })
}

fn span_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

/// Applies `DULI_SECTION__KEY=value` variables to the raw TOML table and returns the keys
/// they set. Values are parsed as inline TOML (numbers, booleans, lists, tables); anything
/// that does not parse is a string.
fn apply_env<I>(table: &mut toml::Table, env: I) -> Result<Vec<String>, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
        .collect();
    vars.sort();
    let mut set = Vec::new();
    for (name, raw) in vars {
        let rest = &name[ENV_PREFIX.len()..];
        let Some((section, key)) = rest.split_once("__") else {
            continue;
        };
        let section = section.to_ascii_lowercase();
        let key = key.to_ascii_lowercase();
        let value = parse_env_value(&raw);
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(inner) = entry.as_table_mut() else {
            return Err(ConfigError::Parse {
                origin: name,
                message: format!("[{section}] is not a table"),
            });
        };
        set.push(format!("{section}.{key}"));
        inner.insert(key, value);
    }
    Ok(set)
}

fn parse_env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Why an AE title is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AeTitleError {
    /// It is empty or only spaces.
    #[error("must not be empty")]
    Empty,
    /// It is longer than 16 characters.
    #[error("at most 16 characters, got {} ({ae:?})", .ae.len())]
    TooLong {
        /// The AE title.
        ae: String,
    },
    /// It has a character outside printable ASCII, or a backslash.
    #[error("only printable ASCII without backslash is allowed ({ae:?})")]
    Characters {
        /// The AE title.
        ae: String,
    },
}

/// Checks an AE title: 1–16 characters of the default repertoire, no backslash or control
/// characters, not all spaces.
pub fn check_ae_title(ae: &str) -> Result<(), AeTitleError> {
    if ae.trim().is_empty() {
        return Err(AeTitleError::Empty);
    }
    if ae.len() > 16 {
        return Err(AeTitleError::TooLong { ae: ae.to_string() });
    }
    if ae
        .chars()
        .any(|c| !c.is_ascii() || c.is_ascii_control() || c == '\\')
    {
        return Err(AeTitleError::Characters { ae: ae.to_string() });
    }
    Ok(())
}

/// Why a UID root (`dicom.uid_root`) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum UidRootError {
    /// It does not end with a dot.
    #[error("must end with '.', got {0:?}")]
    NoFinalDot(String),
    /// A component is empty, not a number, or has a leading zero.
    #[error("must be dot-separated numbers without leading zeros, got {0:?}")]
    NotNumbers(String),
    /// It is longer than 24 characters (of this length).
    #[error(
        "at most 24 characters (leaves room for a 40-digit suffix in a 64-character UID), got {0}"
    )]
    TooLong(usize),
}

fn check_uid_root(root: &str) -> Result<(), UidRootError> {
    if !root.ends_with('.') {
        return Err(UidRootError::NoFinalDot(root.to_string()));
    }
    let body = &root[..root.len() - 1];
    if body.is_empty()
        || body.split('.').any(|c| {
            c.is_empty()
                || !c.chars().all(|d| d.is_ascii_digit())
                || (c.len() > 1 && c.starts_with('0'))
        })
    {
        return Err(UidRootError::NotNumbers(root.to_string()));
    }
    if root.len() > 24 {
        return Err(UidRootError::TooLong(root.len()));
    }
    Ok(())
}

/// Longest HL7 v2.5.1 namespace id (HD.1, IS): MSH-4, MSH-5 and MSH-6.
pub const HL7_NAMESPACE_ID_MAX: usize = 20;

fn check_id(value: &str, key: &str, bad: &mut impl FnMut(&str, String)) {
    if value.is_empty() || value.len() > 64 {
        bad(key, "must be 1 to 64 characters".into());
    } else if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        bad(
            key,
            format!("only letters, digits, '-', '_' and '.' are allowed (used in MQTT topics), got {value:?}"),
        );
    }
}

/// Most console connections `console.max_connections` may allow (the unit's
/// `LimitNOFILE=` is sized for this).
pub const MAX_CONSOLE_CONNECTIONS: usize = 4096;

fn check_console_limits(c: &ConsoleConfig, bad: &mut impl FnMut(&str, String)) {
    let mut range = |key: &str, value: u64, low: u64, high: u64| {
        if value < low || value > high {
            bad(
                &format!("console.{key}"),
                format!("must be between {low} and {high}, got {value}"),
            );
        }
    };
    range(
        "header_read_timeout_secs",
        c.header_read_timeout_secs,
        1,
        300,
    );
    range("idle_timeout_secs", c.idle_timeout_secs, 1, 3600);
    let conns = c.max_connections as u64;
    range("max_connections", conns, 1, MAX_CONSOLE_CONNECTIONS as u64);
    range(
        "max_connections_per_address",
        c.max_connections_per_address as u64,
        1,
        conns.max(1),
    );
    range("max_requests", c.max_requests as u64, 1, 4096);
    range(
        "max_event_streams",
        c.max_event_streams as u64,
        1,
        conns.max(1),
    );
    range(
        "max_event_streams_per_user",
        c.max_event_streams_per_user as u64,
        1,
        MAX_CONSOLE_CONNECTIONS as u64,
    );
    range("max_upload_mb", c.max_upload_mb, 1, 1024);
    range("max_uploads", c.max_uploads as u64, 1, 64);
    range(
        "max_uploads_per_user",
        c.max_uploads_per_user as u64,
        1,
        (c.max_uploads as u64).max(1),
    );
}

fn check_firmware(fw: &duli_firmware::FirmwareConfig, bad: &mut impl FnMut(&str, String)) {
    check_id(&fw.hardware_id, "firmware.hardware_id", bad);
    if fw.boot_attempts == 0 || fw.boot_attempts > 9 {
        bad(
            "firmware.boot_attempts",
            format!("must be between 1 and 9, got {}", fw.boot_attempts),
        );
    }
    if let Some(slot) = &fw.booted_slot {
        if slot != "A" && slot != "B" {
            bad(
                "firmware.booted_slot",
                format!("must be \"A\" or \"B\", got {slot:?}"),
            );
        }
    }
    if fw.slot_a == fw.slot_b {
        bad(
            "firmware.slot_b",
            "must differ from firmware.slot_a".to_string(),
        );
    }
    for (key, path) in [
        ("firmware.grubenv", &fw.grubenv),
        ("firmware.uboot_config", &fw.uboot_config),
        ("firmware.boot_env_file", &fw.boot_env_file),
        ("firmware.slot_a", &fw.slot_a),
        ("firmware.slot_b", &fw.slot_b),
        ("firmware.cmdline", &fw.cmdline),
        ("firmware.endorsed_keys", &fw.endorsed_keys),
        ("firmware.staged_bundle", &fw.staged_bundle),
        ("firmware.model_packs", &fw.model_packs),
    ] {
        if path.as_os_str().is_empty() {
            bad(key, "must not be empty".into());
        }
    }
}

/// `tls = true` needs a CA file; a client certificate and its key go together; TLS files
/// without `tls = true` are a mistake (the connection would be plain).
fn check_destination_tls(i: usize, d: &PacsDestination, bad: &mut impl FnMut(&str, String)) {
    let key = |k: &str| format!("pacs.destinations[{i}].{k}");
    if !d.tls {
        for (k, v) in [
            ("tls_ca", &d.tls_ca),
            ("tls_cert", &d.tls_cert),
            ("tls_key", &d.tls_key),
        ] {
            if v.is_some() {
                bad(&key(k), "is set but tls is false".into());
            }
        }
        return;
    }
    match &d.tls_ca {
        Some(p) => check_file(p, &key("tls_ca"), bad),
        None => bad(&key("tls_ca"), "is required with tls = true".into()),
    }
    match (&d.tls_cert, &d.tls_key) {
        (Some(c), Some(k)) => {
            check_file(c, &key("tls_cert"), bad);
            check_file(k, &key("tls_key"), bad);
        }
        (Some(_), None) => bad(&key("tls_key"), "is required with tls_cert".into()),
        (None, Some(_)) => bad(&key("tls_cert"), "is required with tls_key".into()),
        (None, None) => {}
    }
}

fn check_file(path: &Path, key: &str, bad: &mut impl FnMut(&str, String)) {
    if !path.is_file() {
        bad(key, format!("file {} does not exist", path.display()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("duli.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(
            Some(&path),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_are_valid_and_loopback() {
        let c = Config::load(None, Vec::new()).unwrap();
        assert_eq!(c.dicom.ae_title, "DULI");
        assert_eq!(c.dicom.port, 11112);
        assert!(c.dicom.bind.is_loopback());
        assert!(c.console.bind.is_loopback());
        assert_eq!(c.console.port, 8443);
        assert!(c.device.data_dir.is_absolute());
        assert!(c.device.data_dir.ends_with("duli-data"));
    }

    #[test]
    fn env_overrides_scalars_and_lists() {
        let c = load_str(
            "[dicom]\nport = 104\n",
            &[
                ("DULI_DICOM__PORT", "4242"),
                ("DULI_DICOM__QUIET_PERIOD", "0"),
                ("DULI_MQTT__TLS", "false"),
                ("DULI_DEVICE__SITE_ID", "hospital-a"),
                (
                    "DULI_DICOM__ALLOWED_PEERS",
                    r#"[{ae_title = "MOD1", permissions = ["echo", "store"]}]"#,
                ),
            ],
        )
        .unwrap();
        assert_eq!(c.dicom.port, 4242);
        assert_eq!(c.dicom.quiet_period, 0);
        assert!(!c.mqtt.tls);
        assert_eq!(c.device.site_id, "hospital-a");
        assert_eq!(c.dicom.allowed_peers[0].ae_title, "MOD1");
        assert_eq!(
            c.dicom.allowed_peers[0].permissions,
            vec![Permission::Echo, Permission::Store]
        );
    }

    #[test]
    fn plain_port_and_certificate_bindings_are_checked() {
        let err = |env: &[(&str, &str)]| match load_str("", env) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{env:?} accepted"),
        };
        // No port left at all.
        assert!(err(&[("DULI_DICOM__PLAIN", "false")]).contains("dicom.plain"));
        let fp = "AB:".repeat(31) + "AB";
        let peers = format!(r#"[{{ae_title = "MOD1", cert_sha256 = "{fp}"}}]"#);
        // A certificate binding needs the TLS port; a malformed fingerprint is named.
        assert!(err(&[("DULI_DICOM__ALLOWED_PEERS", &peers)]).contains("needs dicom.tls"));
        // HL7 namespace ids (MSH-4/5/6) are at most 20 characters.
        let long_site = err(&[
            ("DULI_HL7__ENABLED", "true"),
            ("DULI_HL7__HOST", "ris.example"),
            ("DULI_DEVICE__SITE_ID", "a-very-long-site-identifier"),
        ]);
        assert!(long_site.contains("MSH-4"), "{long_site}");
        let long_app = err(&[("DULI_HL7__RECEIVING_APPLICATION", "RIS-WITH-A-LONG-NAME-X")]);
        assert!(long_app.contains("hl7.receiving_application"), "{long_app}");
        // With the TLS port but no CA, no client certificate is asked for.
        let tls_without_ca = err(&[
            ("DULI_DICOM__ALLOWED_PEERS", &peers),
            ("DULI_DICOM__TLS", "true"),
            ("DULI_DICOM__TLS_REQUIRE_CLIENT_CERT", "false"),
        ]);
        assert!(
            tls_without_ca.contains("needs dicom.ca"),
            "{tls_without_ca}"
        );
        let short = r#"[{ae_title = "MOD1", cert_sha256 = "abcd"}]"#;
        assert!(err(&[("DULI_DICOM__ALLOWED_PEERS", short)])
            .contains("dicom.allowed_peers[0].cert_sha256"));
        let c = load_str("", &[]).unwrap();
        assert!(c.dicom.plain, "plain DICOM stays on by default");
        let p = AllowedPeer {
            ae_title: "MOD1".into(),
            address: None,
            permissions: all_permissions(),
            cert_sha256: Some(fp),
        };
        assert_eq!(p.cert_fingerprint().unwrap(), "ab".repeat(32));
    }

    #[test]
    fn relative_paths_in_file_resolve_against_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("duli.toml");
        std::fs::write(&path, "[device]\ndata_dir = \"store\"\n").unwrap();
        let c = Config::load(Some(&path), Vec::new()).unwrap();
        assert_eq!(c.device.data_dir, dir.path().join("store"));
        // the default model (not in the file) is wherever `locate` finds it
        assert_eq!(
            c.inference.model,
            crate::locate::model_manifest().or_first()
        );
        assert!(c.inference.model.is_absolute());
    }

    #[test]
    fn an_environment_path_resolves_against_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("duli.toml");
        std::fs::write(&path, "[device]\ndata_dir = \"store\"\n").unwrap();
        let env = vec![("DULI_DEVICE__DATA_DIR".to_string(), "elsewhere".to_string())];
        let c = Config::load(Some(&path), env).unwrap();
        assert_eq!(
            c.device.data_dir,
            std::env::current_dir().unwrap().join("elsewhere")
        );
    }

    #[test]
    fn console_limits_have_defaults_and_are_checked() {
        let c = load_str("", &[]).unwrap();
        assert_eq!(c.console.max_connections_per_address, 64);
        assert_eq!(c.console.header_read_timeout_secs, 10);
        assert_eq!(c.console.max_uploads_per_user, 2);
        let err = load_str(
            "[console]\nmax_connections = 10\nmax_connections_per_address = 11\n\
             header_read_timeout_secs = 0\nmax_uploads = 2\nmax_uploads_per_user = 3\n\
             max_upload_mb = 0\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        for key in [
            "console.max_connections_per_address",
            "console.header_read_timeout_secs",
            "console.max_uploads_per_user",
            "console.max_upload_mb",
        ] {
            assert!(err.contains(key), "{key} not in {err}");
        }
        let c = load_str(
            "[console]\nmax_connections_per_address = 4\nidle_timeout_secs = 5\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            (
                c.console.max_connections_per_address,
                c.console.idle_timeout_secs
            ),
            (4, 5)
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = load_str("[dicom]\nae_titel = \"X\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("ae_titel"), "{err}");
        let err = load_str("[dicomm]\n", &[]).unwrap_err();
        assert!(err.to_string().contains("dicomm"), "{err}");
    }

    #[test]
    fn every_error_names_its_key() {
        let err = load_str(
            "[dicom]\nae_title = \"THIS_TITLE_IS_TOO_LONG\"\nmax_associations = 0\nmax_instance_mb = 0\n[inference]\ndevice = \"TPU\"\nmax_pixels = 0\n",
            &[],
        )
        .unwrap_err();
        let text = err.to_string();
        for key in [
            "dicom.ae_title",
            "dicom.max_associations",
            "dicom.max_instance_mb",
            "inference.device",
            "inference.max_pixels",
        ] {
            assert!(text.contains(key), "{key} missing in {text}");
        }
    }

    #[test]
    fn pending_connection_bounds_are_validated() {
        let c = Config::load(None, Vec::new()).unwrap();
        assert_eq!(c.dicom.max_pending_connections, 512);
        assert_eq!(c.dicom.max_pending_per_address, 32);
        let c = load_str(
            "[dicom]\nmax_pending_connections = 64\nmax_pending_per_address = 64\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.dicom.max_pending_per_address, 64);
        for (text, key) in [
            (
                "max_pending_connections = 0",
                "dicom.max_pending_connections",
            ),
            (
                "max_pending_connections = 20000",
                "dicom.max_pending_connections",
            ),
            (
                "max_pending_per_address = 0",
                "dicom.max_pending_per_address",
            ),
            (
                "max_pending_per_address = 513",
                "dicom.max_pending_per_address",
            ),
        ] {
            let err = load_str(&format!("[dicom]\n{text}\n"), &[]).unwrap_err();
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn firmware_section_parses_and_its_errors_name_the_key() {
        let c = load_str(
            "[firmware]\nbootloader = \"file\"\nboot_env_file = \"fw/bootenv\"\nhardware_id = \"test-hw\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            c.firmware.bootloader,
            duli_firmware::config::Bootloader::File
        );
        assert!(c.firmware.boot_env_file.is_absolute());
        assert!(c.firmware.boot_env_file.ends_with("fw/bootenv"));
        assert_eq!(c.firmware.hardware_id, "test-hw");
        // Renders and reloads.
        assert!(c.to_toml().contains("[firmware]"));
        let err = load_str(
            "[firmware]\nboot_attempts = 0\nbooted_slot = \"C\"\nhardware_id = \"a b\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        for key in [
            "firmware.boot_attempts",
            "firmware.booted_slot",
            "firmware.hardware_id",
        ] {
            assert!(err.contains(key), "{key} missing in {err}");
        }
        let err = load_str("[firmware]\nslot_c = \"/dev/x\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("slot_c"), "{err}");
    }

    #[test]
    fn destination_tls_needs_a_ca_and_a_cert_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        let dest = |extra: &str| {
            format!(
                "[[pacs.destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\n\
                 host = \"pacs.example\"\nport = 2762\npush = true\n{extra}\n"
            )
        };
        let keys = |text: &str| -> Vec<String> {
            match load_str(text, &[]) {
                Ok(_) => Vec::new(),
                Err(ConfigError::Invalid(errors)) => errors.into_iter().map(|e| e.key).collect(),
                Err(e) => panic!("{e}"),
            }
        };
        let ok = dest(&format!(
            "tls = true\ntls_ca = {:?}",
            ca.display().to_string()
        ));
        assert_eq!(keys(&ok), Vec::<String>::new());
        let cfg = load_str(&ok, &[]).unwrap();
        let tls = cfg.pacs.destinations[0].outbound_tls().unwrap();
        assert_eq!(tls.ca, ca);
        assert_eq!(keys(&dest("tls = true")), ["pacs.destinations[0].tls_ca"]);
        assert_eq!(
            keys(&dest(&format!("tls_ca = {:?}", ca.display().to_string()))),
            ["pacs.destinations[0].tls_ca"]
        );
        let cert_only = format!(
            "tls = true\ntls_ca = {ca:?}\ntls_cert = {ca:?}",
            ca = ca.display().to_string()
        );
        assert_eq!(keys(&dest(&cert_only)), ["pacs.destinations[0].tls_key"]);
        assert_eq!(
            load_str(&dest(""), &[]).unwrap().pacs.destinations[0].outbound_tls(),
            None
        );
    }

    #[test]
    fn each_destination_counts_its_own_refusals() {
        let dest = |extra: &str| {
            format!(
                "[hl7]\nmax_rejections = 2\n[[pacs.destinations]]\nname = \"pacs\"\n\
                 ae_title = \"PACS\"\nhost = \"pacs.example\"\nport = 104\npush = true\n{extra}\n"
            )
        };
        let cfg = load_str(&dest(""), &[]).unwrap();
        assert_eq!(cfg.pacs.destinations[0].max_rejections, 5, "default");
        assert_eq!(cfg.hl7.max_rejections, 2, "not the PACS's");
        let cfg = load_str(&dest("max_rejections = 1"), &[]).unwrap();
        assert_eq!(cfg.pacs.destinations[0].max_rejections, 1);
        match load_str(&dest("max_rejections = 0"), &[]) {
            Err(ConfigError::Invalid(errors)) => assert_eq!(
                errors.into_iter().map(|e| e.key).collect::<Vec<_>>(),
                ["pacs.destinations[0].max_rejections"]
            ),
            other => panic!("max_rejections = 0 accepted: {other:?}"),
        }
    }
}
