//! `[dicom]`: the DICOM service (SCP), its TLS port and the peers allowed to use it, each
//! with its permissions and, over TLS, the certificate its AE title is bound to.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::PathBuf;

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
    /// N-EVENT-REPORT of Storage Commitment: a PACS answering whether it keeps the result
    /// objects pushed to it (taken only from the AE title the request went to).
    Commitment,
}

impl Permission {
    /// Every permission, the default for a listed peer.
    pub const ALL: [Permission; 6] = [
        Permission::Echo,
        Permission::Store,
        Permission::Find,
        Permission::Move,
        Permission::Get,
        Permission::Commitment,
    ];

    /// The permission's name as written in `allowed_peers`.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Echo => "echo",
            Permission::Store => "store",
            Permission::Find => "find",
            Permission::Move => "move",
            Permission::Get => "get",
            Permission::Commitment => "commitment",
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
    /// What the peer may do; when not written, what a modality needs (echo and store):
    /// query and retrieve, which read every study, are given only when listed.
    #[serde(default = "modality_permissions")]
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

/// The permissions of an allowed peer whose entry lists none: a modality's.
pub(super) fn modality_permissions() -> Vec<Permission> {
    vec![Permission::Echo, Permission::Store]
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
    /// Calling AE allow-list; empty accepts any calling AE with every permission, which
    /// validation allows on a non-loopback `bind` only with `allow_any_peer`.
    pub allowed_peers: Vec<AllowedPeer>,
    /// Accept any calling AE on a non-loopback `bind` with an empty `allowed_peers`: every
    /// host that reaches the port may store, query and retrieve. For a closed test network
    /// only; the daemon logs a warning at start when it is in effect.
    pub allow_any_peer: bool,
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
    /// Most C-FIND matches answered for one request; past it the query ends with
    /// A700 (Refused: Out of Resources) and an Error Comment asking to narrow it.
    pub max_find_matches: usize,
    /// Most C-FIND, C-MOVE and C-GET requests one client (an IPv4 address, an IPv6 /64),
    /// under whatever calling AE titles, may send in a minute; past it a request is
    /// refused with A700 and not run (each is audited).
    pub max_qr_requests_per_minute: u32,
    /// Most instances one study may hold: a new instance past it is refused (A700), so
    /// no study grows what one retrieve, query or analysis reads of it without bound.
    pub max_instances_per_study: u64,
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

impl DicomConfig {
    /// Whether the DICOM ports (plain and TLS, both on `bind`) are reachable only from
    /// this host: a loopback address, IPv4-mapped ones included.
    pub fn binds_loopback(&self) -> bool {
        self.bind.to_canonical().is_loopback()
    }

    /// Whether any calling AE of the network gets every permission: an empty
    /// `allowed_peers` on a non-loopback `bind` (allowed only with `allow_any_peer`).
    pub fn open_to_any_peer(&self) -> bool {
        self.allowed_peers.is_empty() && !self.binds_loopback()
    }
}

impl Default for DicomConfig {
    fn default() -> Self {
        Self {
            ae_title: "DULI".into(),
            bind: IpAddr::from([127, 0, 0, 1]),
            port: 11112,
            uid_root: "2.25.".into(),
            allowed_peers: Vec::new(),
            allow_any_peer: false,
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
            max_find_matches: 10_000,
            max_qr_requests_per_minute: 300,
            max_instances_per_study: 10_000,
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
