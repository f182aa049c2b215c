//! What a report owes to whom: turns a [`Report`] (and later its DICOM result objects, and
//! the radiologist's feedback) into the [`NewEntry`] list to commit, per the configuration.

use super::hl7::message::{oru_r01, oru_r01_withdrawal, Hl7Profile, MessageIds};
use super::mqtt::payload::{feedback_payload, report_payload, to_json};
use super::mqtt::topics::Topics;
use crate::config::{Config, ResultObject};
use crate::report::Feedback;
use crate::report::Report;
use crate::site_secret::SiteSecret;
use crate::store::outbox::{Destination, Kind, NewEntry, Payload};

/// The destinations in effect and what their messages need.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryPlan {
    /// Site id (MSH-4, topics, payloads).
    pub site_id: String,
    /// Device id (topics, payloads).
    pub device_id: String,
    /// HL7 header fields, when `[hl7] enabled`.
    pub hl7: Option<Hl7Profile>,
    /// `[mqtt] enabled`.
    pub mqtt: bool,
    /// The PACS destinations with `push = true`, with the result objects each receives.
    pub pacs_push: Vec<PushDestination>,
}

/// A PACS destination results are pushed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushDestination {
    /// Its name in `[[pacs.destinations]]`.
    pub name: String,
    /// The result objects it receives.
    pub objects: Vec<ResultObject>,
}

/// The result object an outbox entry kind pushes (none for messages).
pub fn result_object(kind: Kind) -> Option<ResultObject> {
    match kind {
        Kind::StructuredReport => Some(ResultObject::Sr),
        Kind::ParametricMap => Some(ResultObject::Pm),
        Kind::SecondaryCapture => Some(ResultObject::Sc),
        Kind::Report | Kind::Feedback | Kind::Withdrawal | Kind::RejectionNote => None,
    }
}

impl DeliveryPlan {
    /// The plan of a configuration.
    pub fn from_config(cfg: &Config) -> DeliveryPlan {
        DeliveryPlan {
            site_id: cfg.device.site_id.clone(),
            device_id: cfg.device.device_id.clone(),
            hl7: cfg.hl7.enabled.then(|| Hl7Profile {
                sending_facility: cfg.device.site_id.clone(),
                receiving_application: cfg.hl7.receiving_application.clone(),
                receiving_facility: cfg.hl7.receiving_facility.clone(),
                study_uid_in: cfg.hl7.study_uid_in,
            }),
            mqtt: cfg.mqtt.enabled,
            pacs_push: cfg
                .pacs
                .destinations
                .iter()
                .filter(|d| d.push)
                .map(|d| PushDestination {
                    name: d.name.clone(),
                    objects: d.result_objects.clone(),
                })
                .collect(),
        }
    }

    /// Every destination that needs a worker.
    pub fn destinations(&self) -> Vec<Destination> {
        let mut out = Vec::new();
        if self.hl7.is_some() {
            out.push(Destination::Hl7);
        }
        if self.mqtt {
            out.push(Destination::Mqtt);
        }
        out.extend(
            self.pacs_push
                .iter()
                .map(|d| Destination::Pacs(d.name.clone())),
        );
        out
    }

    /// The topics of this device.
    pub fn topics(&self) -> Topics {
        Topics::new(&self.site_id, &self.device_id)
    }

    /// The HL7 ORU^R01 and MQTT report entries of a report (commit them with the result).
    pub fn report_entries(&self, report: &Report, secret: &SiteSecret) -> Vec<NewEntry> {
        let mut out = Vec::new();
        if let Some(profile) = &self.hl7 {
            out.push(NewEntry {
                dest: Destination::Hl7,
                kind: Kind::Report,
                report_id: report.report_id.clone(),
                study_instance_uid: report.study.study_instance_uid.clone(),
                payload: Payload::Hl7 {
                    message: oru_r01(
                        report,
                        profile,
                        &MessageIds::of(report, secret, &self.device_id),
                    ),
                },
            });
        }
        if self.mqtt {
            let body = to_json(&report_payload(
                report,
                secret,
                &self.site_id,
                &self.device_id,
            ));
            out.push(NewEntry {
                dest: Destination::Mqtt,
                kind: Kind::Report,
                report_id: report.report_id.clone(),
                study_instance_uid: report.study.study_instance_uid.clone(),
                payload: Payload::Mqtt {
                    topic: self.topics().reports(),
                    body,
                    retain: false,
                },
            });
        }
        out
    }

    /// The HL7 entry withdrawing `report` (a result reported for the patient its study
    /// named then) from that patient: [`oru_r01_withdrawal`]. None without HL7: the cloud's
    /// reports carry no patient identity to withdraw from, and the next report carries
    /// the study's new pseudonym.
    pub fn withdrawal_entries(&self, report: &Report, secret: &SiteSecret) -> Vec<NewEntry> {
        let Some(profile) = &self.hl7 else {
            return Vec::new();
        };
        vec![NewEntry {
            dest: Destination::Hl7,
            kind: Kind::Withdrawal,
            report_id: report.report_id.clone(),
            study_instance_uid: report.study.study_instance_uid.clone(),
            payload: Payload::Hl7 {
                message: oru_r01_withdrawal(
                    report,
                    profile,
                    &MessageIds::withdrawal(report, secret, &self.device_id),
                ),
            },
        }]
    }

    /// The PACS push entries of the rejection note `sop_instance_uid` withdrawing result
    /// objects of the report `report_id` of the study `study_uid`: one per push destination
    /// that receives result objects (an archive ignores the references to objects it never
    /// got).
    pub fn rejection_entries(
        &self,
        report_id: &str,
        study_uid: &str,
        sop_instance_uid: &str,
    ) -> Vec<NewEntry> {
        self.pacs_push
            .iter()
            .filter(|d| !d.objects.is_empty())
            .map(|d| NewEntry {
                dest: Destination::Pacs(d.name.clone()),
                kind: Kind::RejectionNote,
                report_id: report_id.to_string(),
                study_instance_uid: study_uid.to_string(),
                payload: Payload::Dicom {
                    sop_instance_uids: vec![sop_instance_uid.to_string()],
                },
            })
            .collect()
    }

    /// The PACS push entries of stored result objects of `kind` (a result object kind:
    /// [`result_object`]) of the report `report_id` of the study `study_uid`, one per push
    /// destination that receives that kind.
    pub fn push_entries(
        &self,
        report_id: &str,
        study_uid: &str,
        kind: Kind,
        sop_instance_uids: &[String],
    ) -> Vec<NewEntry> {
        let wanted = result_object(kind);
        self.pacs_push
            .iter()
            .filter(|d| wanted.is_some_and(|o| d.objects.contains(&o)))
            .map(|d| NewEntry {
                dest: Destination::Pacs(d.name.clone()),
                kind,
                report_id: report_id.to_string(),
                study_instance_uid: study_uid.to_string(),
                payload: Payload::Dicom {
                    sop_instance_uids: sop_instance_uids.to_vec(),
                },
            })
            .collect()
    }

    /// The MQTT entry of a radiologist's feedback on the report `report_id`, given by a
    /// user of `reviewer_role` (none when MQTT is off).
    pub fn feedback_entries(
        &self,
        fb: &Feedback,
        report_id: &str,
        reviewer_role: &str,
        secret: &SiteSecret,
    ) -> Vec<NewEntry> {
        if !self.mqtt {
            return Vec::new();
        }
        vec![NewEntry {
            dest: Destination::Mqtt,
            kind: Kind::Feedback,
            report_id: report_id.to_string(),
            study_instance_uid: fb.study_uid.clone(),
            payload: Payload::Mqtt {
                topic: self.topics().feedback(),
                body: to_json(&feedback_payload(
                    fb,
                    report_id,
                    reviewer_role,
                    secret,
                    &self.site_id,
                    &self.device_id,
                )),
                retain: false,
            },
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PacsDestination;
    use crate::report::fixtures;

    #[test]
    fn plan_follows_the_configuration() {
        let mut cfg = Config::default();
        let secret = SiteSecret::from_bytes(&[3u8; 32]);
        let report = fixtures::report();
        assert!(DeliveryPlan::from_config(&cfg)
            .report_entries(&report, &secret)
            .is_empty());
        cfg.hl7.enabled = true;
        cfg.mqtt.enabled = true;
        cfg.device.site_id = "site-9".into();
        cfg.pacs.destinations = vec![
            PacsDestination {
                name: "main".into(),
                ae_title: "PACS".into(),
                host: "10.0.0.1".into(),
                port: 104,
                push: true,
                move_: true,
                tls: false,
                tls_ca: None,
                tls_cert: None,
                tls_key: None,
                result_objects: vec![ResultObject::Sr, ResultObject::Sc],
                max_rejections: 5,
                storage_commitment: false,
                commitment_timeout_s: 300,
            },
            PacsDestination {
                name: "viewer".into(),
                ae_title: "VIEW".into(),
                host: "10.0.0.2".into(),
                port: 104,
                push: false,
                move_: true,
                tls: false,
                tls_ca: None,
                tls_cert: None,
                tls_key: None,
                result_objects: vec![ResultObject::Sr, ResultObject::Sc],
                max_rejections: 5,
                storage_commitment: false,
                commitment_timeout_s: 300,
            },
        ];
        let plan = DeliveryPlan::from_config(&cfg);
        assert_eq!(
            plan.destinations(),
            vec![
                Destination::Hl7,
                Destination::Mqtt,
                Destination::Pacs("main".into())
            ]
        );
        let entries = plan.report_entries(&report, &secret);
        assert_eq!(entries.len(), 2);
        match &entries[0].payload {
            Payload::Hl7 { message } => assert!(message.starts_with("MSH|^~\\&|DULI|site-9|")),
            other => panic!("{other:?}"),
        }
        match &entries[1].payload {
            Payload::Mqtt {
                topic,
                body,
                retain,
            } => {
                assert_eq!(topic, "duli/site-9/duli-edge-01/reports");
                // The cloud sees the report id keyed, never the one HL7 carries.
                assert!(!body.contains("r-7f3a9c2e01"), "{body}");
                let keyed = secret.pseudonym("report", "r-7f3a9c2e01");
                assert!(
                    body.contains(&format!("\"report_id\":\"{keyed}\"")),
                    "{body}"
                );
                assert!(!retain);
            }
            other => panic!("{other:?}"),
        }
        let push = plan.push_entries("r1", "1.2.9", Kind::StructuredReport, &["1.2.3".into()]);
        assert_eq!(push.len(), 1);
        assert_eq!(push[0].dest, Destination::Pacs("main".into()));
        let fb = Feedback {
            study_uid: "1.2.3".into(),
            user: "rita".into(),
            agree: false,
            comment: "not on this film".into(),
            finding: Some("PNEUMONIA".into()),
            result_version: 1,
            at_ms: 0,
        };
        let fe = plan.feedback_entries(&fb, "r1", "radiologist", &secret);
        assert_eq!(fe[0].kind, Kind::Feedback);
    }

    /// MSH-10, ORC-3 and OBR-3 of the HL7 entry of `report`.
    fn hl7_ids(plan: &DeliveryPlan, report: &Report, secret: &SiteSecret) -> [String; 3] {
        let entries = plan.report_entries(report, secret);
        let Some(Payload::Hl7 { message }) = entries.first().map(|e| &e.payload) else {
            panic!("no HL7 entry in {entries:?}");
        };
        let field = |id: &str, n: usize| -> String {
            message
                .split('\r')
                .find(|s| s.starts_with(id))
                .and_then(|s| s.split('|').nth(n))
                .unwrap_or_default()
                .to_string()
        };
        [field("MSH", 9), field("ORC", 3), field("OBR", 3)]
    }

    fn hl7_plan() -> DeliveryPlan {
        let mut cfg = Config::default();
        cfg.hl7.enabled = true;
        DeliveryPlan::from_config(&cfg)
    }

    fn version(uid: &str, v: u32) -> Report {
        let mut r = fixtures::report();
        r.study.study_instance_uid = uid.into();
        r.version = v;
        r.report_id = crate::result::report_id(uid, v);
        r
    }

    /// A corrected result names the filler order the RIS filed the first one under, while
    /// each message keeps a control id of its own; both are keyed by the site secret.
    #[test]
    fn versions_of_a_study_share_the_filler_order_but_not_the_control_id() {
        let (plan, secret) = (hl7_plan(), SiteSecret::from_bytes(&[3u8; 32]));
        let uid = "1.2.826.0.1.3680043.8.498.77";
        let [msh1, orc1, obr1] = hl7_ids(&plan, &version(uid, 1), &secret);
        let [msh2, orc2, obr2] = hl7_ids(&plan, &version(uid, 2), &secret);
        assert_eq!(obr1, obr2);
        assert_eq!(orc1, obr1);
        assert_eq!(orc2, obr2);
        assert_ne!(msh1, msh2);
        // No unkeyed hash of the study UID: another secret gives other identifiers.
        let other = SiteSecret::from_bytes(&[4u8; 32]);
        let [msh_o, _, obr_o] = hl7_ids(&plan, &version(uid, 1), &other);
        assert_ne!(obr_o, obr1);
        assert_ne!(msh_o, msh1);
        for id in [&msh1, &obr1] {
            assert!(
                !id.contains(&crate::result::report_id(uid, 1)[..12]),
                "{id}"
            );
        }
        // Another study, another filler order.
        let [_, _, obr_b] = hl7_ids(&plan, &version("1.2.826.0.1.3680043.8.498.78", 1), &secret);
        assert_ne!(obr_b, obr1);
    }

    /// MSH-10 fits the 20 characters HL7 v2.5.1 gives it, and the filler order number the
    /// 22 of ORC-3/OBR-3, so a RIS that cuts them to those lengths echoes them whole.
    #[test]
    fn control_ids_and_filler_orders_fit_their_hl7_lengths() {
        let (plan, secret) = (hl7_plan(), SiteSecret::from_bytes(&[3u8; 32]));
        let mut seen = std::collections::HashSet::new();
        for i in 0..200u32 {
            let uid = format!("1.2.826.0.1.3680043.8.498.{i}");
            let [msh, _, obr] = hl7_ids(&plan, &version(&uid, 1 + i % 3), &secret);
            assert!((1..=20).contains(&msh.chars().count()), "{msh}");
            assert!(obr.chars().count() <= 22, "{obr}");
            assert!(seen.insert(msh));
        }
    }
}
