//! System settings provisioning writes outside the configuration: the site's NTP servers
//! (a timesyncd drop-in) and the time zone (`/etc/localtime`, `/etc/timezone`).
//!
//! On the read-only image `/etc/localtime` and `/etc/timezone` are symlinks into the data
//! partition (`/data/etc/...`): [`redirect`] sends those writes to the symlink's target.

use crate::fsutil::WriteError;
use std::path::{Path, PathBuf};

/// Where time zone files live, on the box and here.
pub const ZONEINFO: &str = "/usr/share/zoneinfo";

/// Why a time setting is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeSettingError {
    /// Not the form of an IANA time zone name.
    #[error("{0:?} is not a time zone name like America/Sao_Paulo")]
    ZoneName(String),
    /// A well-formed name with no file in [`ZONEINFO`].
    #[error("unknown time zone {zone:?} (no {})", .file.display())]
    UnknownZone {
        /// The name.
        zone: String,
        /// The file looked for.
        file: PathBuf,
    },
    /// An NTP server that is neither a host name nor an IP address.
    #[error("{0:?} is not a host name or IP address")]
    Host(String),
}

/// Checks an IANA time zone name and that its file exists in [`ZONEINFO`].
pub fn check_timezone(tz: &str) -> Result<(), TimeSettingError> {
    let valid = !tz.is_empty()
        && tz.len() <= 64
        && !tz.starts_with('/')
        && tz.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_+-".contains(c))
        });
    if !valid {
        return Err(TimeSettingError::ZoneName(tz.to_string()));
    }
    let path = Path::new(ZONEINFO).join(tz);
    if !path.is_file() {
        return Err(TimeSettingError::UnknownZone {
            zone: tz.to_string(),
            file: path,
        });
    }
    Ok(())
}

/// Checks an NTP server: a host name or an IP address.
pub fn check_host(host: &str) -> Result<(), TimeSettingError> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(TimeSettingError::Host(host.to_string()))
    }
}

/// The timesyncd drop-in naming the site's servers (see `systemd/duli-timesyncd.conf`).
pub fn timesyncd_dropin(servers: &[String]) -> String {
    format!(
        "# Written by `duli provision`: the site's NTP servers. DICOM, HL7 and the audit\n\
         # trail rely on a correct clock.\n\
         [Time]\n\
         NTP={}\n\
         FallbackNTP=0.debian.pool.ntp.org 1.debian.pool.ntp.org\n\
         RootDistanceMaxSec=5\n\
         PollIntervalMaxSec=1024\n",
        servers.join(" ")
    )
}

/// Where to write the system file `rel` (e.g. `etc/localtime`) under `system_root`: the
/// file itself, or, when it is a symlink that does not point into [`ZONEINFO`] (the image
/// ships `/etc/localtime -> /data/etc/localtime` on its read-only root), the symlink's
/// target under the same root. One level only: the target itself is then replaced.
pub fn redirect(system_root: &Path, rel: &str) -> PathBuf {
    let path = system_root.join(rel);
    let Ok(target) = std::fs::read_link(&path) else {
        return path;
    };
    if target.starts_with(ZONEINFO) {
        return path;
    }
    if target.is_absolute() {
        let inside = target.strip_prefix("/").unwrap_or(&target);
        system_root.join(inside)
    } else {
        path.parent().unwrap_or(system_root).join(target)
    }
}

/// Points `link` (`/etc/localtime`) at the zone file, replacing it atomically.
pub fn link_localtime(link: &Path, tz: &str) -> Result<(), WriteError> {
    let target = Path::new(ZONEINFO).join(tz);
    let err = |path: PathBuf| move |source| WriteError { path, source };
    let dir = link.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err(dir.to_path_buf()))?;
    let tmp = dir.join(format!(".localtime.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp).map_err(err(tmp.clone()))?;
    std::fs::rename(&tmp, link).map_err(err(link.to_path_buf()))?;
    crate::fsutil::sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_out_of_the_read_only_root_are_followed_once() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        // A plain file or a missing one: written in place.
        assert_eq!(redirect(r, "etc/timezone"), r.join("etc/timezone"));
        // A link into the zone database (a provisioned or ordinary system): replaced.
        std::os::unix::fs::symlink("/usr/share/zoneinfo/UTC", r.join("etc/localtime")).unwrap();
        assert_eq!(redirect(r, "etc/localtime"), r.join("etc/localtime"));
        // The image's links into the data partition: their targets, under the same root.
        std::fs::remove_file(r.join("etc/localtime")).unwrap();
        std::os::unix::fs::symlink("/data/etc/localtime", r.join("etc/localtime")).unwrap();
        std::os::unix::fs::symlink("../data/etc/timezone", r.join("etc/timezone")).unwrap();
        assert_eq!(redirect(r, "etc/localtime"), r.join("data/etc/localtime"));
        assert_eq!(
            redirect(r, "etc/timezone"),
            r.join("etc/../data/etc/timezone")
        );
        link_localtime(&redirect(r, "etc/localtime"), "UTC").unwrap();
        assert_eq!(
            std::fs::read_link(r.join("etc/localtime")).unwrap(),
            Path::new("/data/etc/localtime"),
            "the image's link is left alone"
        );
        assert_eq!(
            std::fs::read_link(r.join("data/etc/localtime")).unwrap(),
            Path::new(ZONEINFO).join("UTC")
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_timezone("../etc/passwd").is_err());
        assert!(check_timezone("Mars/Olympus").is_err());
        if Path::new(ZONEINFO).join("America/Sao_Paulo").is_file() {
            check_timezone("America/Sao_Paulo").unwrap();
        }
        check_host("ntp.hospital.local").unwrap();
        check_host("10.0.0.1").unwrap();
        assert!(check_host("bad host").is_err());
        assert!(timesyncd_dropin(&["a".into(), "b".into()]).contains("NTP=a b\n"));
    }
}
