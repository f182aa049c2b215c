//! UIDs of the result objects, derived from `dicom.uid_root`, the box (`device.device_id`)
//! and the report id under the site secret, so that building the objects of the same
//! report again (a resend, a restart) gives the same UIDs and never a duplicate, two boxes
//! of a site given the same study make their objects under different UIDs, and nobody
//! without the secret can predict them from the study UID (and store an object of their
//! own under them first). Objects made before the UIDs were keyed, or before they named
//! the box, keep theirs ([`ResultUids::earlier`]).

use crate::site_secret::SiteSecret;
use ring::digest::{digest, SHA256};

/// Pseudonym domain of the keyed seeds.
const UID_DOMAIN: &str = "result-uid";

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
    /// Series of the Parametric Map.
    pub pm_series: String,
    /// The Parametric Map (the heatmap as values a viewer overlays itself).
    pub pm_instance: String,
    /// Series of the rejection note withdrawing the report's objects from the patient
    /// they were made for ([`crate::results::rejection`]).
    pub ko_series: String,
    /// The rejection note (a Key Object Selection Document).
    pub ko_instance: String,
    /// Frame of reference of the Parametric Map when its source image has none (projection
    /// radiographs usually have none).
    pub frame_of_reference: String,
    /// Device Observer UID of this appliance ([`device_observer`]).
    pub device_observer: String,
    /// Seed of the tracking UIDs of the report's findings ([`ResultUids::tracking`]).
    tracking_seed: String,
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
    /// The UIDs of the report `report_id` under `root` (`dicom.uid_root`), keyed by the
    /// site secret, made by the box `device_id` of the site (`device_id` holds no `/`:
    /// the configuration allows letters, digits, `-`, `_` and `.`).
    pub fn new(root: &str, report_id: &str, key: &SiteSecret, device_id: &str) -> ResultUids {
        Self::keyed(
            root,
            key,
            device_id,
            &format!("box/{device_id}/{report_id}"),
        )
    }

    /// The UIDs of `seed`'s objects keyed by `key`, with the device observer of the box
    /// `device_id`.
    fn keyed(root: &str, key: &SiteSecret, device_id: &str, seed: &str) -> ResultUids {
        let mut uids = Self::from_seeds(root, |part| {
            key.pseudonym(UID_DOMAIN, &format!("{seed}/{part}"))
        });
        uids.device_observer = device_observer(root, key, device_id);
        // Tracking UIDs follow a finding of a study from one result version to the next
        // (TID 1501): keyed, but not by the report or the box.
        uids.tracking_seed = format!("{root}\n{}", key.pseudonym(UID_DOMAIN, "tracking"));
        uids
    }

    /// The UIDs earlier versions gave the report's objects, newest first: keyed by the site
    /// secret but not naming the box (two boxes of a site made the same ones), then unkeyed
    /// (anyone holding the study UID can compute them). Only to recognise objects already
    /// made.
    pub fn earlier(
        root: &str,
        report_id: &str,
        key: &SiteSecret,
        device_id: &str,
    ) -> [ResultUids; 2] {
        [
            Self::keyed(root, key, device_id, report_id),
            Self::from_seeds(root, |part| format!("{report_id}/{part}")),
        ]
    }

    fn from_seeds(root: &str, seed: impl Fn(&str) -> String) -> ResultUids {
        ResultUids {
            sr_series: derive(root, &seed("sr/series")),
            sr_instance: derive(root, &seed("sr/instance")),
            sc_series: derive(root, &seed("sc/series")),
            sc_instance: derive(root, &seed("sc/instance")),
            pm_series: derive(root, &seed("pm/series")),
            pm_instance: derive(root, &seed("pm/instance")),
            ko_series: derive(root, &seed("ko/series")),
            ko_instance: derive(root, &seed("ko/instance")),
            frame_of_reference: derive(root, &seed("pm/frame-of-reference")),
            device_observer: derive(root, "device-observer"),
            tracking_seed: format!("{root}\n{}", seed("tracking")),
        }
    }

    /// The Tracking Unique Identifier of the finding coded `code` of study `study_uid`
    /// (TID 1501): the same in every result version of the study, so a viewer follows
    /// one finding across them.
    pub fn tracking(&self, study_uid: &str, code: &str) -> String {
        let (root, seed) = self
            .tracking_seed
            .split_once('\n')
            .unwrap_or(("2.25.", &self.tracking_seed));
        derive(root, &format!("{seed}/{study_uid}/{code}"))
    }
}

/// The Device Observer UID of the appliance `device_id` (`device.device_id`) of a site
/// (TID 1004: it names the device, so two boxes of one site have two): one per box, site
/// secret and UID root, stable across reports and restarts.
pub fn device_observer(root: &str, key: &SiteSecret, device_id: &str) -> String {
    derive(
        root,
        &key.pseudonym(UID_DOMAIN, &format!("device-observer/{device_id}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_cannot_be_predicted_without_the_site_secret() {
        let rid = crate::result::report_id("1.2.826.0.1.3680043.8.498.7", 1);
        let (k1, k2) = (
            SiteSecret::from_bytes(&[1u8; 32]),
            SiteSecret::from_bytes(&[2u8; 32]),
        );
        let keyed = ResultUids::new("2.25.", &rid, &k1, "edge-01");
        assert_eq!(keyed, ResultUids::new("2.25.", &rid, &k1, "edge-01"));
        let other_site = ResultUids::new("2.25.", &rid, &k2, "edge-01");
        let [_, unkeyed] = ResultUids::earlier("2.25.", &rid, &k1, "edge-01");
        for (a, b) in [
            (&keyed.sr_instance, &other_site.sr_instance),
            (&keyed.sr_instance, &unkeyed.sr_instance),
            (&keyed.sc_instance, &unkeyed.sc_instance),
        ] {
            assert_ne!(a, b);
        }
    }

    #[test]
    fn uids_are_stable_distinct_and_valid() {
        let key = SiteSecret::from_bytes(&[7u8; 32]);
        for root in ["2.25.", "1.2.826.0.1.3680043.10.", "1.2.3."] {
            let a = ResultUids::new(root, "r-1", &key, "edge-01");
            assert_eq!(a, ResultUids::new(root, "r-1", &key, "edge-01"));
            let b = ResultUids::new(root, "r-2", &key, "edge-01");
            let all = [
                &a.sr_series,
                &a.sr_instance,
                &a.sc_series,
                &a.sc_instance,
                &b.sr_instance,
                &a.pm_series,
                &a.pm_instance,
                &a.ko_series,
                &a.ko_instance,
                &a.frame_of_reference,
                &a.tracking("1.2.3", "PNEUMONIA"),
                &a.tracking("1.2.3", "EFFUSION"),
                &device_observer(root, &key, "edge-01"),
                &device_observer(root, &key, "edge-02"),
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
            assert_eq!(set.len(), 14);
            // Another box of the site makes the same report's objects under other UIDs
            // (a PACS given both keeps both), and so did earlier versions; the finding's
            // tracking UID is the study's, whichever box follows it.
            let other_box = ResultUids::new(root, "r-1", &key, "edge-02");
            let [site_keyed, unkeyed] = ResultUids::earlier(root, "r-1", &key, "edge-01");
            for earlier in [&other_box, &site_keyed, &unkeyed] {
                for (x, y) in [
                    (&a.sr_instance, &earlier.sr_instance),
                    (&a.sr_series, &earlier.sr_series),
                    (&a.pm_instance, &earlier.pm_instance),
                    (&a.sc_instance, &earlier.sc_instance),
                    (&a.ko_instance, &earlier.ko_instance),
                    (&a.frame_of_reference, &earlier.frame_of_reference),
                ] {
                    assert_ne!(x, y);
                }
            }
            assert_eq!(
                a.tracking("1.2.3", "PNEUMONIA"),
                other_box.tracking("1.2.3", "PNEUMONIA")
            );
            assert_eq!(site_keyed.device_observer, a.device_observer);
            // A finding keeps its tracking UID from one result version to the next, and
            // another study's finding has another.
            assert_eq!(
                a.tracking("1.2.3", "PNEUMONIA"),
                b.tracking("1.2.3", "PNEUMONIA")
            );
            assert_ne!(
                a.tracking("1.2.3", "PNEUMONIA"),
                a.tracking("1.2.4", "PNEUMONIA")
            );
        }
    }
}
