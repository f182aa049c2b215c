//! `[audit]`: forwarding of the audit trail to the site's audit record repository (ATNA)
//! as RFC 5424 syslog messages over TCP (RFC 6587 octet counting) or TLS (RFC 5425), and
//! how many records the trail keeps on the box.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[audit]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The audit record repository as `host:port` (`[v6 address]:port` for an IPv6
    /// literal); unset (the default) forwards nothing.
    pub syslog: Option<String>,
    /// Syslog over TLS (RFC 5425); `syslog_ca` is then required.
    pub syslog_tls: bool,
    /// Send plain TCP syslog (`syslog_tls = false`) to a host that is not a loopback
    /// address (`localhost`, 127.0.0.0/8, `::1`): audit messages name patients' studies and
    /// users, so this needs saying on purpose (a network the site trusts).
    pub syslog_allow_plain: bool,
    /// CA bundle (PEM) the repository's certificate must chain to.
    pub syslog_ca: Option<PathBuf>,
    /// Client certificate (PEM), when the repository asks for one.
    pub syslog_cert: Option<PathBuf>,
    /// The private key (PEM) of `syslog_cert`.
    pub syslog_key: Option<PathBuf>,
    /// Most records the trail keeps on the box: past it, the oldest records the repository
    /// acknowledged are removed (down to nine tenths of it); records not forwarded are
    /// never removed, and the trail raises its alarm from nine tenths on
    /// ([`crate::audit::budget`]).
    pub max_records: u64,
}

/// The default of `[audit] max_records`: a few hundred megabytes of records.
pub const DEFAULT_MAX_RECORDS: u64 = 1_000_000;
/// The least `[audit] max_records` accepted (a budget that small would shed the trail of
/// a busy day within hours).
pub const MIN_MAX_RECORDS: u64 = 10_000;

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            syslog: None,
            syslog_tls: true,
            syslog_allow_plain: false,
            syslog_ca: None,
            syslog_cert: None,
            syslog_key: None,
            max_records: DEFAULT_MAX_RECORDS,
        }
    }
}

/// Where the audit record repository listens: `audit.syslog` taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogTarget {
    /// Host name or address, without brackets (the TLS server name).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl std::fmt::Display for SyslogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Why `audit.syslog` is not a `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyslogTargetError {
    /// No `:port` at the end.
    #[error("must be host:port (e.g. \"audit.example.org:6514\"), got {0:?}")]
    NoPort(String),
    /// The host part is empty or has spaces.
    #[error("has no valid host: {0:?}")]
    Host(String),
    /// The port is not a number between 1 and 65535.
    #[error("port must be between 1 and 65535, got {0:?}")]
    Port(String),
}

impl SyslogTarget {
    /// Parses `host:port`, `[v6]:port`.
    pub fn parse(s: &str) -> Result<SyslogTarget, SyslogTargetError> {
        let s = s.trim();
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| SyslogTargetError::NoPort(s.to_string()))?;
        let host = match host.strip_prefix('[') {
            Some(inner) => inner
                .strip_suffix(']')
                .ok_or_else(|| SyslogTargetError::Host(s.to_string()))?,
            // An unbracketed IPv6 literal would be ambiguous with the port.
            None if host.contains(':') => return Err(SyslogTargetError::Host(s.to_string())),
            None => host,
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(SyslogTargetError::Host(s.to_string()));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| SyslogTargetError::Port(port.to_string()))?;
        Ok(SyslogTarget {
            host: host.to_string(),
            port,
        })
    }

    /// Whether the host is literally a loopback name or address: `localhost`,
    /// 127.0.0.0/8 or `::1`. Other names are not resolved: they may point anywhere later.
    pub fn is_loopback(&self) -> bool {
        super::delivery::is_loopback_host(&self.host)
    }
}

impl AuditConfig {
    /// The repository, when forwarding is on (`None` when `syslog` is unset).
    pub fn target(&self) -> Option<Result<SyslogTarget, SyslogTargetError>> {
        self.syslog.as_deref().map(SyslogTarget::parse)
    }

    /// Whether audit messages would travel in clear over the network without the site's
    /// explicit consent (`syslog_allow_plain`).
    pub fn plain_without_consent(&self) -> bool {
        !self.syslog_tls
            && !self.syslog_allow_plain
            && matches!(self.target(), Some(Ok(t)) if !t.is_loopback())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_names_v4_and_bracketed_v6() {
        let t = SyslogTarget::parse("audit.example.org:6514").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("audit.example.org", 6514));
        assert!(!t.is_loopback());
        let t = SyslogTarget::parse("[::1]:601").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 601));
        assert!(t.is_loopback());
        assert_eq!(t.to_string(), "[::1]:601");
        assert!(SyslogTarget::parse("127.0.0.2:514").unwrap().is_loopback());
        assert!(SyslogTarget::parse("LocalHost:514").unwrap().is_loopback());
        for bad in [
            "audit", ":514", "h:0", "h:x", "h:70000", "::1:514", "[::1:514", "a b:1",
        ] {
            assert!(SyslogTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_needs_consent_off_loopback_only() {
        let mut c = AuditConfig {
            syslog: Some("10.1.2.3:514".into()),
            syslog_tls: false,
            ..AuditConfig::default()
        };
        assert!(c.plain_without_consent());
        c.syslog_allow_plain = true;
        assert!(!c.plain_without_consent());
        c.syslog_allow_plain = false;
        c.syslog = Some("127.0.0.1:514".into());
        assert!(!c.plain_without_consent());
        c.syslog = None;
        assert!(!c.plain_without_consent());
    }
}
