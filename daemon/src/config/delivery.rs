//! Where results go: `[hl7]` (the RIS over MLLP), `[mqtt]` (the cloud backend) and
//! `[[pacs.destinations]]` (PACS push and C-MOVE targets).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
    /// Send plain MLLP (`tls = false`) to a RIS host that is not a loopback address
    /// (`localhost`, 127.0.0.0/8, `::1`): reports carry patient data, so this needs saying
    /// on purpose (a network the site trusts); validation refuses it otherwise.
    pub allow_plain: bool,
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

impl Hl7Config {
    /// Whether `host` is literally a loopback name or address: `localhost`, 127.0.0.0/8 or
    /// `::1` (with or without brackets). Other names are not resolved: they may point
    /// anywhere later.
    pub fn host_is_loopback(&self) -> bool {
        is_loopback_host(&self.host)
    }

    /// Whether reports would travel in clear over the network without the site's explicit
    /// consent (`allow_plain`).
    pub fn plain_without_consent(&self) -> bool {
        self.enabled && !self.tls && !self.allow_plain && !self.host_is_loopback()
    }
}

/// Whether `host` is literally a loopback name or address: `localhost`, 127.0.0.0/8 or
/// `::1` (with or without brackets). Other names are not resolved: they may point anywhere
/// later.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Default for Hl7Config {
    fn default() -> Self {
        Self {
            enabled: false,
            host: "127.0.0.1".into(),
            port: 2575,
            tls: false,
            allow_plain: false,
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
    /// Publish without TLS (`tls = false`) to a broker host that is not a loopback address:
    /// the broker is then not authenticated, so this needs saying on purpose (a network
    /// the site trusts); validation refuses it otherwise.
    pub allow_plain: bool,
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
            allow_plain: false,
            client_id: None,
            ca: None,
            cert: None,
            key: None,
        }
    }
}

impl MqttConfig {
    /// Whether messages would go in clear to a broker that is not on this box without the
    /// site's explicit consent (`allow_plain`).
    pub fn plain_without_consent(&self) -> bool {
        self.enabled && !self.tls && !self.allow_plain && !is_loopback_host(&self.host)
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
    /// Ask the PACS to commit to keeping each pushed object (Storage Commitment Push
    /// Model, IHE RAD-10): an entry counts as delivered only once the PACS reported every
    /// object committed. The PACS must accept N-ACTION requests from our AE title and send
    /// its N-EVENT-REPORT to our SCP, which accepts it from this AE title (an
    /// `allowed_peers` entry for it needs the `commitment` permission). Default false.
    #[serde(default)]
    pub storage_commitment: bool,
    /// Seconds to wait for the PACS's commitment report before the objects are sent and
    /// asked about again (1 to 86400). Default 300.
    #[serde(default = "default_commitment_timeout")]
    pub commitment_timeout_s: u64,
}

fn default_max_rejections() -> u32 {
    5
}

fn default_commitment_timeout() -> u64 {
    300
}

/// Longest `commitment_timeout_s`: a day.
pub const MAX_COMMITMENT_TIMEOUT_S: u64 = 86_400;

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
