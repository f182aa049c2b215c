//! Release versions: `MAJOR.MINOR.PATCH`, compared numerically.
//!
//! Bundles carry the version they install and the minimum version they may be installed
//! over; both are parsed strictly so that a malformed manifest never compares as "newer".

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A release version, ordered by major, then minor, then patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Incompatible changes.
    pub major: u32,
    /// Compatible additions.
    pub minor: u32,
    /// Fixes.
    pub patch: u32,
}

/// A string that is not `MAJOR.MINOR.PATCH` with decimal components.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid version {0:?}: expected MAJOR.MINOR.PATCH with decimal numbers")]
pub struct VersionError(pub String);

impl Version {
    /// Builds a version from its three components.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || VersionError(s.to_string());
        let mut parts = s.split('.');
        let mut next = || -> Result<u32, VersionError> {
            let part = parts.next().ok_or_else(bad)?;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            part.parse().map_err(|_| bad())
        };
        let version = Version::new(next()?, next()?, next()?);
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(version)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders_numerically() {
        let a: Version = "1.9.0".parse().unwrap();
        let b: Version = "1.10.0".parse().unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "1.10.0");
        assert_eq!("0.1.2".parse::<Version>().unwrap(), Version::new(0, 1, 2));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "", "1", "1.2", "1.2.3.4", "1.-2.3", "1.2.x", "1..3", " 1.2.3", "+1.2.3",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?} accepted");
        }
        assert!("99999999999.0.0".parse::<Version>().is_err());
    }
}
