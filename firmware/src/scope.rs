//! What a trusted key may sign: root keys sign anything; an endorsed key only the payload
//! kinds its endorsement's scopes name.

use serde::{Deserialize, Serialize};

use crate::manifest::PayloadKind;

/// One thing an endorsement lets a key sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Model packs (installed on the data partition).
    ModelPack,
    /// Root filesystems (installed into a boot slot: code that runs as root).
    Rootfs,
    /// Reserved for fleet-management statements; signs no bundle yet.
    Fleet,
}

impl Scope {
    /// The scope's name as endorsements spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ModelPack => "model-pack",
            Scope::Rootfs => "rootfs",
            Scope::Fleet => "fleet",
        }
    }

    /// The scope a bundle of `kind` needs.
    pub fn for_payload(kind: PayloadKind) -> Scope {
        match kind {
            PayloadKind::Rootfs => Scope::Rootfs,
            PayloadKind::ModelPack => Scope::ModelPack,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far a trusted key's authority reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authority {
    /// A root key: signs every kind of bundle and endorses other keys.
    Root,
    /// A key a root endorsed, for these scopes only.
    Endorsed(Vec<Scope>),
}

impl Authority {
    /// Whether a key with this authority may sign a bundle of `kind`.
    pub fn may_sign(&self, kind: PayloadKind) -> bool {
        match self {
            Authority::Root => true,
            Authority::Endorsed(scopes) => scopes.contains(&Scope::for_payload(kind)),
        }
    }
}

impl std::fmt::Display for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authority::Root => f.write_str("root key (every scope)"),
            Authority::Endorsed(scopes) => {
                let names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
                write!(f, "endorsed key ({})", names.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endorsed_keys_sign_only_their_scopes() {
        let packs = Authority::Endorsed(vec![Scope::ModelPack]);
        assert!(packs.may_sign(PayloadKind::ModelPack));
        assert!(!packs.may_sign(PayloadKind::Rootfs));
        let fleet = Authority::Endorsed(vec![Scope::Fleet]);
        assert!(!fleet.may_sign(PayloadKind::ModelPack) && !fleet.may_sign(PayloadKind::Rootfs));
        assert!(Authority::Root.may_sign(PayloadKind::Rootfs));
        assert_eq!(packs.to_string(), "endorsed key (model-pack)");
    }
}
