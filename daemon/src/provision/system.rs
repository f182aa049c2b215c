//! System settings provisioning writes outside the configuration: the site's NTP servers
//! (a timesyncd drop-in) and the time zone (`/etc/localtime`, `/etc/timezone`).

use crate::fsutil::WriteError;
use std::path::{Path, PathBuf};

/// Where time zone files live, on the box and here.
pub const ZONEINFO: &str = "/usr/share/zoneinfo";

/// Checks an IANA time zone name and that its file exists in [`ZONEINFO`].
pub fn check_timezone(tz: &str) -> Result<(), String> {
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
        return Err(format!(
            "{tz:?} is not a time zone name like America/Sao_Paulo"
        ));
    }
    let path = Path::new(ZONEINFO).join(tz);
    if !path.is_file() {
        return Err(format!("unknown time zone {tz:?} (no {})", path.display()));
    }
    Ok(())
}

/// Checks an NTP server: a host name or an IP address.
pub fn check_host(host: &str) -> Result<(), String> {
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
        Err(format!("{host:?} is not a host name or IP address"))
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
