//! The roles of console accounts.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A console user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads studies and results, gives feedback.
    Radiologist,
    /// Sees system status, queues and models; tests connectivity.
    Technician,
    /// Manages users and reads the audit trail.
    Admin,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Radiologist, Role::Technician, Role::Admin];

    /// The role's name as used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Radiologist => "radiologist",
            Role::Technician => "technician",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of [`Role::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (radiologist, technician or admin)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        match s {
            "radiologist" => Ok(Role::Radiologist),
            "technician" => Ok(Role::Technician),
            "admin" => Ok(Role::Admin),
            other => Err(UnknownRole(other.to_string())),
        }
    }
}
