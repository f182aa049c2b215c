//! UIDs of the result objects, derived from `dicom.uid_root` and the report id, so that
//! building the objects of the same report again (a resend, a restart) gives the same UIDs
//! and never a duplicate.

use ring::digest::{digest, SHA256};

/// The series and instance UIDs of one report's result objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultUids {
    /// Series of the Structured Report.
    pub sr_series: String,
    /// The Structured Report.
    pub sr_instance: String,
    /// Series of the Secondary Capture.
    pub sc_series: String,
    /// The Secondary Capture.
    pub sc_instance: String,
}

/// Derives one UID under `root` from `seed` (at most 64 characters, no leading zeros).
pub fn derive(root: &str, seed: &str) -> String {
    let h = digest(&SHA256, seed.as_bytes());
    let b = h.as_ref();
    if root == "2.25." {
        // A UUID-derived UID: up to 39 digits.
        let mut v = [0u8; 16];
        v.copy_from_slice(&b[..16]);
        let n = u128::from_be_bytes(v) >> 2; // keep it clear of the 128-bit edge
        format!("2.25.{}", n.max(1))
    } else {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[..8]);
        let n = u64::from_be_bytes(v).max(1);
        let uid = format!("{root}{n}");
        uid.chars().take(64).collect()
    }
}

impl ResultUids {
    /// The UIDs of the report `report_id` under `root` (`dicom.uid_root`).
    pub fn new(root: &str, report_id: &str) -> ResultUids {
        ResultUids {
            sr_series: derive(root, &format!("{report_id}/sr/series")),
            sr_instance: derive(root, &format!("{report_id}/sr/instance")),
            sc_series: derive(root, &format!("{report_id}/sc/series")),
            sc_instance: derive(root, &format!("{report_id}/sc/instance")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_stable_distinct_and_valid() {
        for root in ["2.25.", "1.2.826.0.1.3680043.10.", "1.2.3."] {
            let a = ResultUids::new(root, "r-1");
            assert_eq!(a, ResultUids::new(root, "r-1"));
            let b = ResultUids::new(root, "r-2");
            let all = [
                &a.sr_series,
                &a.sr_instance,
                &a.sc_series,
                &a.sc_instance,
                &b.sr_instance,
            ];
            for u in all {
                assert!(u.len() <= 64 && u.starts_with(root), "{u}");
                assert!(
                    u.split('.')
                        .all(|c| !c.is_empty() && (c == "0" || !c.starts_with('0'))),
                    "{u}"
                );
            }
            let set: std::collections::HashSet<_> = all.iter().collect();
            assert_eq!(set.len(), 5);
        }
    }
}
