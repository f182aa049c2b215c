//! Validation: every value checked, every problem reported at once, each naming its key.

use super::{
    Config, ConsoleConfig, DeviceConfig, DicomConfig, Hl7Config, InferenceConfig, MqttConfig,
    PacsConfig, PacsDestination, RetentionConfig,
};
use std::fmt;
use std::path::{Path, PathBuf};

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

impl Config {
    /// Checks every value; returns all problems, each naming its key.
    pub fn validate(&self) -> Result<(), Vec<KeyError>> {
        let mut errs = Vec::new();
        let mut bad = |key: &str, reason: String| {
            errs.push(KeyError {
                key: key.to_string(),
                reason,
            })
        };
        check_device(&self.device, &mut bad);
        check_dicom(&self.dicom, &mut bad);
        check_inference(&self.inference, &mut bad);
        let data_dir = &self.device.data_dir;
        // The runtime library is code the daemon loads: one the service could replace in
        // its own folder would outlive a restart.
        let runtime = crate::infer::openvino::library_path(&self.inference);
        if !data_dir.as_os_str().is_empty() && is_within(&runtime, data_dir) {
            bad(
                "inference.openvino_lib",
                format!(
                    "{} is inside device.data_dir, which the service itself writes: install \
                     the runtime where only root writes (/usr/lib/duli/openvino)",
                    runtime.display()
                ),
            );
        }
        if self.inference.model_pack.is_none()
            && !data_dir.as_os_str().is_empty()
            && is_within(&self.inference.model, data_dir)
        {
            // The service writes the data folder: a manifest there (thresholds, precision
            // gates, INT8 build) could be changed by it. A pack in service is unpacked
            // there too, but from the signed pack at every load.
            bad(
                "inference.model",
                format!(
                    "{} is inside device.data_dir, which the service itself writes: keep the \
                     model on the read-only system image, or install it as a signed model \
                     pack (inference.model_pack)",
                    self.inference.model.display()
                ),
            );
        }
        check_hl7(&self.hl7, &self.device.site_id, &mut bad);
        check_mqtt(&self.mqtt, &mut bad);
        check_pacs(&self.pacs, &mut bad);
        check_console(&self.console, &mut bad);
        check_console_port_is_its_own(self, &mut bad);
        check_firmware(&self.firmware, &mut bad);
        check_root_records(&self.firmware, data_dir, &mut bad);
        check_retention(&self.retention, &mut bad);
        check_audit(&self.audit, &mut bad);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

/// `[device]`: identifiers, the service account, the data folder.
fn check_device(c: &DeviceConfig, bad: &mut impl FnMut(&str, String)) {
    check_id(&c.site_id, "device.site_id", bad);
    check_id(&c.device_id, "device.device_id", bad);
    if c.service_user.is_empty()
        || c.service_user.len() > 32
        || !c
            .service_user
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'))
    {
        bad("device.service_user", "1 to 32 of A-Z a-z 0-9 _ - .".into());
    }
    if c.data_dir.as_os_str().is_empty() {
        bad("device.data_dir", "must not be empty".into());
    }
}

/// `[dicom]`: AE titles, ports, peers and their certificate bindings, limits, TLS files.
fn check_dicom(c: &DicomConfig, bad: &mut impl FnMut(&str, String)) {
    if let Err(r) = check_ae_title(&c.ae_title) {
        bad("dicom.ae_title", r.to_string());
    }
    if c.port == 0 {
        bad("dicom.port", "must be between 1 and 65535".into());
    }
    if let Err(r) = check_uid_root(&c.uid_root) {
        bad("dicom.uid_root", r.to_string());
    }
    check_allowed_peers(c, bad);
    if !c.plain && !c.tls {
        bad(
            "dicom.plain",
            "false needs dicom.tls = true (no DICOM port would be left)".into(),
        );
    }
    check_dicom_limits(c, bad);
    if c.tls {
        check_dicom_tls(c, bad);
    }
}

/// `dicom.allowed_peers`: AE titles, permissions, certificate bindings, and a list that
/// may be empty only on loopback (or when the site says so).
fn check_allowed_peers(c: &DicomConfig, bad: &mut impl FnMut(&str, String)) {
    for (i, peer) in c.allowed_peers.iter().enumerate() {
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
            } else if !c.tls {
                bad(
                    &key,
                    "needs dicom.tls = true (a certificate is only seen on the TLS port)".into(),
                );
            } else if c.ca.is_none() {
                bad(
                    &key,
                    "needs dicom.ca: without it no client certificate is asked for, so \
                     the binding could never match"
                        .into(),
                );
            }
        }
    }
    if c.open_to_any_peer() && !c.allow_any_peer {
        bad(
            "dicom.allowed_peers",
            format!(
                "must list the calling AE titles allowed when dicom.bind ({}) is not a \
                 loopback address: an empty list lets any host of the network store, query \
                 and retrieve every study; set dicom.allow_any_peer = true to accept that \
                 (a closed test network only)",
                c.bind
            ),
        );
    }
}

/// `[dicom]` limits: associations, PDU and instance sizes, timeouts, match counts.
fn check_dicom_limits(c: &DicomConfig, bad: &mut impl FnMut(&str, String)) {
    if c.max_associations == 0 || c.max_associations > MAX_ASSOCIATIONS {
        bad(
            "dicom.max_associations",
            format!(
                "must be between 1 and {MAX_ASSOCIATIONS}, got {}",
                c.max_associations
            ),
        );
    }
    if !(4096..=16 * 1024 * 1024).contains(&c.max_pdu) {
        bad(
            "dicom.max_pdu",
            format!("must be between 4096 and 16777216 bytes, got {}", c.max_pdu),
        );
    }
    if !(1..=65_536).contains(&c.max_instance_mb) {
        bad(
            "dicom.max_instance_mb",
            format!("must be between 1 and 65536 MiB, got {}", c.max_instance_mb),
        );
    }
    if c.quiet_period > 86_400 {
        bad(
            "dicom.quiet_period",
            "must be at most 86400 seconds".to_string(),
        );
    }
    if c.artim_timeout == 0 || c.artim_timeout > 600 {
        bad(
            "dicom.artim_timeout",
            "must be between 1 and 600 seconds".into(),
        );
    }
    if !(1..=MAX_PENDING_CONNECTIONS).contains(&c.max_pending_connections) {
        bad(
            "dicom.max_pending_connections",
            format!(
                "must be between 1 and {MAX_PENDING_CONNECTIONS}, got {}",
                c.max_pending_connections
            ),
        );
    }
    if c.max_associations_per_address == 0 {
        bad(
            "dicom.max_associations_per_address",
            "must be at least 1 (above dicom.max_associations it is that limit)".into(),
        );
    }
    if c.max_pending_per_address == 0 || c.max_pending_per_address > c.max_pending_connections {
        bad(
            "dicom.max_pending_per_address",
            format!(
                "must be between 1 and dicom.max_pending_connections ({}), got {}",
                c.max_pending_connections, c.max_pending_per_address
            ),
        );
    }
    if c.idle_timeout == 0 || c.idle_timeout > 86_400 {
        bad(
            "dicom.idle_timeout",
            "must be between 1 and 86400 seconds".into(),
        );
    }
    if !(1..=50_000).contains(&c.max_instances_per_study) {
        bad(
            "dicom.max_instances_per_study",
            format!(
                "must be between 1 and 50000, got {}",
                c.max_instances_per_study
            ),
        );
    }
    if !(1..=1_000_000).contains(&c.max_qr_requests_per_minute) {
        bad(
            "dicom.max_qr_requests_per_minute",
            format!(
                "must be between 1 and 1000000, got {}",
                c.max_qr_requests_per_minute
            ),
        );
    }
    if !(1..=1_000_000).contains(&c.max_find_matches) {
        bad(
            "dicom.max_find_matches",
            format!("must be between 1 and 1000000, got {}", c.max_find_matches),
        );
    }
}

/// `[dicom]` with `tls = true`: its own port, certificate and key, and the CA when client
/// certificates are required.
fn check_dicom_tls(c: &DicomConfig, bad: &mut impl FnMut(&str, String)) {
    if c.tls_port == 0 {
        bad("dicom.tls_port", "must be between 1 and 65535".into());
    }
    if c.tls_port == c.port {
        bad("dicom.tls_port", "must differ from dicom.port".into());
    }
    for (key, value) in [("dicom.cert", &c.cert), ("dicom.key", &c.key)] {
        match value {
            None => bad(key, "required when dicom.tls = true".into()),
            Some(p) => check_file(p, key, bad),
        }
    }
    match &c.ca {
        None if c.tls_require_client_cert => bad(
            "dicom.ca",
            "required when dicom.tls = true and client certificates are required".into(),
        ),
        Some(p) => check_file(p, "dicom.ca", bad),
        None => {}
    }
}

/// Whether `path` lies inside `dir`, as written or once both are resolved ([`resolved`]:
/// links and `..`, also where the path does not exist yet).
fn is_within(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir) || resolved(path).starts_with(resolved(dir))
}

/// `path` as the system resolves it: its longest existing part with links and `..`
/// resolved, then the rest (not there yet) with `..` and `.` applied as written.
fn resolved(path: &Path) -> PathBuf {
    use std::path::Component;
    let parts: Vec<Component<'_>> = path.components().collect();
    for existing in (1..=parts.len()).rev() {
        let Ok(mut out) = std::fs::canonicalize(parts[..existing].iter().collect::<PathBuf>())
        else {
            continue;
        };
        for part in &parts[existing..] {
            match part {
                Component::ParentDir => {
                    out.pop();
                }
                Component::Normal(name) => out.push(name),
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            }
        }
        return out;
    }
    path.to_path_buf()
}

/// `[inference]`: pixel budget, device, performance hint, precision.
fn check_inference(c: &InferenceConfig, bad: &mut impl FnMut(&str, String)) {
    if !(1..=4_000_000_000).contains(&c.max_pixels) {
        bad(
            "inference.max_pixels",
            format!("must be between 1 and 4000000000, got {}", c.max_pixels),
        );
    }
    if !["CPU", "GPU", "NPU", "AUTO"].contains(&c.device.as_str())
        && !c.device.starts_with("AUTO:")
        && !c.device.starts_with("GPU.")
    {
        bad(
            "inference.device",
            format!("must be CPU, GPU, NPU or AUTO, got {:?}", c.device),
        );
    }
    if !["LATENCY", "THROUGHPUT", "AUTO"].contains(&c.performance_hint.as_str()) {
        bad(
            "inference.performance_hint",
            format!(
                "must be LATENCY, THROUGHPUT or AUTO, got {:?}",
                c.performance_hint
            ),
        );
    }
    if let Err(e) = c
        .precision
        .parse::<crate::infer::precision::PrecisionSetting>()
    {
        bad("inference.precision", e.to_string());
    }
    if let Some(name) = &c.model_pack {
        if !crate::infer::pack::valid_name(name) {
            bad(
                "inference.model_pack",
                format!("{name:?} is not a pack name (letters, digits, '.', '_', '-'; not starting with '.')"),
            );
        }
    }
}

/// `[hl7]`: the RIS peer and the MSH namespace ids (`site_id` is MSH-4).
fn check_hl7(c: &Hl7Config, site_id: &str, bad: &mut impl FnMut(&str, String)) {
    if c.enabled {
        if c.host.trim().is_empty() {
            bad(
                "hl7.host",
                "must not be empty when hl7.enabled = true".into(),
            );
        }
        if c.port == 0 {
            bad("hl7.port", "must be between 1 and 65535".into());
        }
        if c.plain_without_consent() {
            bad(
                "hl7.tls",
                format!(
                    "false sends reports (patient data) in clear to {:?}, which is not a \
                     loopback address: set hl7.tls = true (with hl7.ca), or \
                     hl7.allow_plain = true to accept plain MLLP on a network the site trusts",
                    c.host
                ),
            );
        }
        if c.tls {
            check_client_tls(
                "hl7",
                c.ca.as_deref(),
                c.cert.as_deref(),
                c.key.as_deref(),
                bad,
            );
        }
    }
    if c.max_rejections == 0 {
        bad("hl7.max_rejections", "must be at least 1".into());
    }
    // MSH-4, -5 and -6 are HD namespace ids: at most 20 characters in HL7 v2.5.1.
    if c.enabled && site_id.chars().count() > HL7_NAMESPACE_ID_MAX {
        bad(
            "device.site_id",
            format!(
                "is the HL7 sending facility (MSH-4) while hl7.enabled = true: at most \
                 {HL7_NAMESPACE_ID_MAX} characters"
            ),
        );
    }
    for (key, value) in [
        ("hl7.receiving_application", &c.receiving_application),
        ("hl7.receiving_facility", &c.receiving_facility),
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
}

/// `[mqtt]`: the broker, its TLS files and the client id.
fn check_mqtt(c: &MqttConfig, bad: &mut impl FnMut(&str, String)) {
    if c.enabled {
        if c.host.trim().is_empty() {
            bad(
                "mqtt.host",
                "must not be empty when mqtt.enabled = true".into(),
            );
        }
        if c.port == 0 {
            bad("mqtt.port", "must be between 1 and 65535".into());
        }
        if c.plain_without_consent() {
            bad(
                "mqtt.tls",
                format!(
                    "false publishes to {:?}, which is not a loopback address, without \
                     authenticating the broker: set mqtt.tls = true (with mqtt.ca, mqtt.cert \
                     and mqtt.key), or mqtt.allow_plain = true on a network the site trusts",
                    c.host
                ),
            );
        }
        if c.tls {
            for (key, value) in [
                ("mqtt.ca", &c.ca),
                ("mqtt.cert", &c.cert),
                ("mqtt.key", &c.key),
            ] {
                match value {
                    None => bad(key, "required when mqtt.tls = true".into()),
                    Some(p) => check_file(p, key, bad),
                }
            }
        }
    }
    if let Some(id) = &c.client_id {
        if id.is_empty() || id.len() > 64 {
            bad("mqtt.client_id", "must be 1 to 64 characters".into());
        }
    }
}

/// `[[pacs.destinations]]`: unique names, AE titles, addresses, TLS.
fn check_pacs(c: &PacsConfig, bad: &mut impl FnMut(&str, String)) {
    let mut names = std::collections::HashSet::new();
    for (i, d) in c.destinations.iter().enumerate() {
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
        if !(1..=super::delivery::MAX_COMMITMENT_TIMEOUT_S).contains(&d.commitment_timeout_s) {
            bad(
                &format!("pacs.destinations[{i}].commitment_timeout_s"),
                format!(
                    "must be between 1 and {}",
                    super::delivery::MAX_COMMITMENT_TIMEOUT_S
                ),
            );
        }
        check_destination_tls(i, d, bad);
    }
}

/// `[console]`: port, sessions, limits, certificate files.
/// The console's port is none of the DICOM ports on an address both listen on (the start
/// would otherwise fail when the second bind finds the port taken).
fn check_console_port_is_its_own(c: &Config, bad: &mut impl FnMut(&str, String)) {
    let overlap = c.console.bind == c.dicom.bind
        || c.console.bind.is_unspecified()
        || c.dicom.bind.is_unspecified();
    let dicom_ports = [
        (c.dicom.plain, c.dicom.port, "dicom.port"),
        (c.dicom.tls, c.dicom.tls_port, "dicom.tls_port"),
    ];
    for (listening, port, key) in dicom_ports {
        if overlap && listening && port == c.console.port {
            bad("console.port", format!("must differ from {key} ({port})"));
        }
    }
}

fn check_console(c: &ConsoleConfig, bad: &mut impl FnMut(&str, String)) {
    if c.port == 0 {
        bad("console.port", "must be between 1 and 65535".into());
    }
    use super::console::{MAX_SESSION_IDLE_SECS, MAX_SESSION_MAX_SECS};
    if c.session_idle_secs == 0 || c.session_idle_secs > MAX_SESSION_IDLE_SECS {
        bad(
            "console.session_idle_secs",
            format!(
                "must be between 1 and {MAX_SESSION_IDLE_SECS} seconds (24 hours), got {}",
                c.session_idle_secs
            ),
        );
    }
    if c.session_max_secs > MAX_SESSION_MAX_SECS {
        bad(
            "console.session_max_secs",
            format!(
                "must be at most {MAX_SESSION_MAX_SECS} seconds (7 days), got {}",
                c.session_max_secs
            ),
        );
    } else if c.session_max_secs < c.session_idle_secs {
        bad(
            "console.session_max_secs",
            "must be at least console.session_idle_secs".into(),
        );
    }
    check_console_limits(c, bad);
    if c.cert.is_some() != c.key.is_some() {
        bad(
            "console.cert",
            "console.cert and console.key must be set together".into(),
        );
    }
    for (key, value) in [("console.cert", &c.cert), ("console.key", &c.key)] {
        if let Some(p) = value {
            check_file(p, key, bad);
        }
    }
}

/// `[retention]`.
fn check_retention(c: &RetentionConfig, bad: &mut impl FnMut(&str, String)) {
    if c.pixel_days > 36_500 {
        bad(
            "retention.pixel_days",
            "must be at most 36500 days".to_string(),
        );
    }
    if c.disk_reserve_mb > super::device::MAX_DISK_RESERVE_MB {
        bad(
            "retention.disk_reserve_mb",
            format!(
                "must be at most {} (16 TiB, in MB: a value in bytes would refuse every study)",
                super::device::MAX_DISK_RESERVE_MB
            ),
        );
    }
}

/// `[audit]`: the repository address, consent to plain TCP off loopback, the TLS files,
/// the trail's budget.
fn check_audit(c: &super::audit::AuditConfig, bad: &mut impl FnMut(&str, String)) {
    if c.max_records < super::audit::MIN_MAX_RECORDS {
        bad(
            "audit.max_records",
            format!(
                "must be at least {} (default {})",
                super::audit::MIN_MAX_RECORDS,
                super::audit::DEFAULT_MAX_RECORDS
            ),
        );
    }
    let files = [
        ("audit.syslog_ca", &c.syslog_ca),
        ("audit.syslog_cert", &c.syslog_cert),
        ("audit.syslog_key", &c.syslog_key),
    ];
    match c.target() {
        None => {
            for (key, value) in files {
                if value.is_some() {
                    bad(
                        key,
                        "is set but audit.syslog is not (nothing is forwarded)".into(),
                    );
                }
            }
            return;
        }
        Some(Err(e)) => bad("audit.syslog", e.to_string()),
        Some(Ok(_)) => {}
    }
    if c.plain_without_consent() {
        bad(
            "audit.syslog_tls",
            format!(
                "false sends audit messages (users, study UIDs) in clear to {:?}, which is \
                 not a loopback address: set audit.syslog_tls = true (with audit.syslog_ca), \
                 or audit.syslog_allow_plain = true to accept plain TCP on a network the site \
                 trusts",
                c.syslog.as_deref().unwrap_or_default()
            ),
        );
    }
    if !c.syslog_tls {
        for (key, value) in files {
            if value.is_some() {
                bad(key, "is set but audit.syslog_tls is false".into());
            }
        }
        return;
    }
    match &c.syslog_ca {
        Some(p) => check_file(p, "audit.syslog_ca", bad),
        None => bad(
            "audit.syslog_ca",
            "required when audit.syslog_tls = true".into(),
        ),
    }
    match (&c.syslog_cert, &c.syslog_key) {
        (Some(cert), Some(key)) => {
            check_file(cert, "audit.syslog_cert", bad);
            check_file(key, "audit.syslog_key", bad);
        }
        (Some(_), None) => bad("audit.syslog_key", "required with audit.syslog_cert".into()),
        (None, Some(_)) => bad("audit.syslog_cert", "required with audit.syslog_key".into()),
        (None, None) => {}
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
/// Most associations `dicom.max_associations` may allow.
pub const MAX_ASSOCIATIONS: usize = 1024;
/// Most connections still negotiating `dicom.max_pending_connections` may allow.
pub const MAX_PENDING_CONNECTIONS: usize = 16_384;
/// Descriptors for outbound connections (HL7, MQTT, PACS pushes, C-ECHO tests, control).
const OUTBOUND_DESCRIPTORS: usize = 64;
/// Descriptors for files, the runtime's and OpenVINO's own, and the decoder's pipes.
const FILE_DESCRIPTORS: usize = 512;

/// Descriptors the daemon can need at the largest values the configuration accepts: each
/// console connection, each negotiating DICOM connection, and per association its socket,
/// the instance file being written and a sub-association, plus outbound connections and
/// files (the table in systemd/README.md; the unit's `LimitNOFILE=` must cover it).
pub const fn descriptors_needed() -> usize {
    MAX_CONSOLE_CONNECTIONS
        + MAX_PENDING_CONNECTIONS
        + 3 * MAX_ASSOCIATIONS
        + OUTBOUND_DESCRIPTORS
        + FILE_DESCRIPTORS
}

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
    if let Some(id) = &fw.hardware_id {
        check_id(id, "firmware.hardware_id", bad);
    }

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
        ("firmware.model_pack_versions", &fw.model_pack_versions),
    ] {
        if path.as_os_str().is_empty() {
            bad(key, "must not be empty".into());
        }
    }
}

/// Root's records of the firmware trust, `firmware.model_pack_versions` (the floor that
/// refuses an older pack) and `firmware.endorsed_keys` (keys allowed to sign), must not
/// lie where the service user writes: in `device.data_dir` or `firmware.model_packs`,
/// compared once links and `..` are resolved ([`is_within`]), also when the record does
/// not exist yet.
fn check_root_records(
    fw: &duli_firmware::FirmwareConfig,
    data_dir: &Path,
    bad: &mut impl FnMut(&str, String),
) {
    for (key, record, why) in [
        (
            "firmware.model_pack_versions",
            &fw.model_pack_versions,
            "the service could lower the floor that refuses an older model pack",
        ),
        (
            "firmware.endorsed_keys",
            &fw.endorsed_keys,
            "the service could endorse a key of its own to sign bundles",
        ),
    ] {
        let inside = [
            ("device.data_dir", data_dir),
            ("firmware.model_packs", fw.model_packs.as_path()),
        ]
        .into_iter()
        .find(|(_, folder)| !folder.as_os_str().is_empty() && is_within(record, folder));
        if let Some((folder_key, folder)) = inside {
            bad(
                key,
                format!(
                    "{} is inside {folder_key} ({}), which the service user writes: {why}; \
                     keep it where only root writes (under /etc/duli)",
                    record.display(),
                    folder.display()
                ),
            );
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

/// A TLS client's files in `[section]` with `tls = true`: the CA bundle is required, the
/// client certificate and its key go together or not at all, and each file exists.
fn check_client_tls(
    section: &str,
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
    bad: &mut impl FnMut(&str, String),
) {
    let name = |k: &str| format!("{section}.{k}");
    match ca {
        Some(p) => check_file(p, &name("ca"), bad),
        None => bad(&name("ca"), format!("required when {section}.tls = true")),
    }
    match (cert, key) {
        (Some(c), Some(k)) => {
            check_file(c, &name("cert"), bad);
            check_file(k, &name("key"), bad);
        }
        (Some(_), None) => bad(&name("key"), format!("required with {section}.cert")),
        (None, Some(_)) => bad(&name("cert"), format!("required with {section}.key")),
        (None, None) => {}
    }
}

fn check_file(path: &Path, key: &str, bad: &mut impl FnMut(&str, String)) {
    if !path.is_file() {
        bad(key, format!("file {} does not exist", path.display()));
    }
}
