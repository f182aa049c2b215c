//! C-MOVE and C-GET: the hierarchical unique keys of a retrieve identifier resolved to the
//! instances to send, from the store's index.

use super::charset;
use super::index::Kind;
use super::matching;
use super::query::{level_of, Level, Model, QueryError, MAX_KEY_LIST};
use crate::model::InstanceRecord;
use crate::store::Store;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use std::collections::HashSet;

/// Most instances one C-MOVE or C-GET may select: far above any study or patient this
/// appliance keeps, and what bounds the list a retrieve holds in memory (a few hundred
/// bytes per instance) whatever its identifier names.
pub const MAX_RETRIEVE_INSTANCES: usize = 50_000;

/// The values of a key of a retrieve identifier (UIDs, or the Patient ID), read as
/// [`parse`](super::query::parse) reads values when the identifier declares no character
/// set: each value once, in the order given, the list held to
/// [`MAX_KEY_LIST`](super::query::MAX_KEY_LIST) bytes as a C-FIND's lists are.
fn uid_list(obj: &InMemDicomObject, tag: Tag) -> Result<Vec<String>, QueryError> {
    let declared = charset::declared(obj).is_some();
    let Some(raw) = obj
        .element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok().map(|s| s.to_string()))
    else {
        return Ok(Vec::new());
    };
    if raw.len() > MAX_KEY_LIST {
        return Err(QueryError::ValueTooLong {
            tag,
            len: raw.len(),
            max: MAX_KEY_LIST,
        });
    }
    let raw = if declared {
        raw
    } else {
        charset::undeclared(raw)
    };
    let mut seen = HashSet::new();
    Ok(raw
        .split('\\')
        .map(|u| matching::clean(u).to_string())
        .filter(|u| !u.is_empty() && seen.insert(u.clone()))
        .collect())
}

/// The instances a retrieve selects, each once, refused as soon as they pass `max`.
struct Selection {
    max: usize,
    out: Vec<InstanceRecord>,
    seen: HashSet<String>,
}

impl Selection {
    fn new(max: usize) -> Selection {
        Selection {
            max,
            out: Vec::new(),
            seen: HashSet::new(),
        }
    }

    fn extend(
        &mut self,
        found: impl IntoIterator<Item = InstanceRecord>,
    ) -> Result<(), QueryError> {
        for i in found {
            if self.seen.insert(i.sop_instance_uid.clone()) {
                if self.out.len() == self.max {
                    return Err(QueryError::TooManyInstances { max: self.max });
                }
                self.out.push(i);
            }
        }
        Ok(())
    }
}

/// Resolves a C-MOVE/C-GET identifier (hierarchical unique keys) to the instances to send,
/// in study, series and instance order; refused past [`MAX_RETRIEVE_INSTANCES`].
pub fn select(
    store: &Store,
    obj: &InMemDicomObject,
    model: Model,
) -> Result<(Level, Vec<InstanceRecord>), QueryError> {
    select_at_most(store, obj, model, MAX_RETRIEVE_INSTANCES)
}

/// [`select`] with the bound on instances given.
fn select_at_most(
    store: &Store,
    obj: &InMemDicomObject,
    model: Model,
    max: usize,
) -> Result<(Level, Vec<InstanceRecord>), QueryError> {
    let level = level_of(obj, model)?;
    let studies = unique_keys(
        obj,
        tags::STUDY_INSTANCE_UID,
        "Study Instance UID (0020,000D)",
    )?;
    let mut sel = Selection::new(max);
    match level {
        Level::Patient => {
            let ids = unique_keys(obj, tags::PATIENT_ID, "Patient ID (0010,0020)")?;
            if ids.is_empty() {
                return Err(QueryError::MissingUniqueKey("Patient ID (0010,0020)"));
            }
            // A patient is a Patient ID within its issuer: the studies of the issuer the
            // identifier names, or, when it names none, those of the ID's one issuer here.
            let issuer = Some(crate::infer::dicom_image::text(
                obj,
                tags::ISSUER_OF_PATIENT_ID,
            ))
            .filter(|v| !v.is_empty());
            for id in ids {
                let mut by_issuer: std::collections::BTreeMap<String, Vec<String>> =
                    Default::default();
                for uid in store.query_exact(Kind::PatientId, &id, usize::MAX)? {
                    if let Some(study) = store.study(&uid)? {
                        by_issuer
                            .entry(study.issuer_of_patient_id)
                            .or_default()
                            .push(uid);
                    }
                }
                let uids = match &issuer {
                    Some(issuer) => by_issuer.remove(issuer).unwrap_or_default(),
                    None if by_issuer.len() > 1 => {
                        return Err(QueryError::AmbiguousPatient {
                            id,
                            issuers: by_issuer.len(),
                        })
                    }
                    None => by_issuer.into_values().flatten().collect(),
                };
                for uid in uids {
                    sel.extend(store.instances_of(&uid)?)?;
                }
            }
        }
        Level::Study => {
            if studies.is_empty() {
                return Err(QueryError::MissingUniqueKey(
                    "Study Instance UID (0020,000D)",
                ));
            }
            for uid in &studies {
                sel.extend(store.instances_of(uid)?)?;
            }
        }
        Level::Series => {
            let series: HashSet<String> = unique_keys(
                obj,
                tags::SERIES_INSTANCE_UID,
                "Series Instance UID (0020,000E)",
            )?
            .into_iter()
            .collect();
            if series.is_empty() {
                return Err(QueryError::MissingUniqueKey(
                    "Series Instance UID (0020,000E)",
                ));
            }
            // A hierarchical retrieve names the study of its series (PS3.4 C.4.2.2.1): the
            // series are looked for there, never across every study of the store.
            if studies.is_empty() {
                return Err(QueryError::MissingUniqueKey(
                    "Study Instance UID (0020,000D)",
                ));
            }
            for uid in &studies {
                sel.extend(
                    store
                        .instances_of(uid)?
                        .into_iter()
                        .filter(|i| series.contains(&i.series_instance_uid)),
                )?;
            }
        }
        Level::Image => {
            let sops = unique_keys(obj, tags::SOP_INSTANCE_UID, "SOP Instance UID (0008,0018)")?;
            if sops.is_empty() {
                return Err(QueryError::MissingUniqueKey("SOP Instance UID (0008,0018)"));
            }
            for sop in sops {
                // A result object its rejection note withdrew is no longer served.
                sel.extend(store.instance(&sop)?.filter(|i| !i.rejected))?;
            }
        }
    }
    Ok((level, sel.out))
}

/// The values of a retrieve's unique key `tag` (`name` in errors): refused when one holds
/// a wildcard (`*` or `?`), which a C-FIND may use and a C-MOVE or C-GET may not.
fn unique_keys(
    obj: &InMemDicomObject,
    tag: dicom_core::Tag,
    name: &'static str,
) -> Result<Vec<String>, QueryError> {
    let values = uid_list(obj, tag)?;
    if values.iter().any(|v| v.contains(['*', '?'])) {
        return Err(QueryError::WildcardInUniqueKey(name));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StudyRecord;
    use dicom_core::{DataElement, PrimitiveValue, VR};

    /// A PATIENT-level retrieve of a Patient ID two issuers gave here sends nothing until
    /// the identifier names the issuer; then only that patient's studies.
    #[test]
    fn a_patient_id_of_two_issuers_is_retrieved_only_with_its_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (uid, issuer) in [("1.6.1", "HOSP_A"), ("1.6.2", "HOSP_B")] {
            crate::qr::query::tests::study_of_issuer(&store, uid, "123", issuer);
        }
        let identifier = |issuer: Option<&str>| {
            let mut obj = InMemDicomObject::new_empty();
            obj.put(DataElement::new(
                tags::QUERY_RETRIEVE_LEVEL,
                VR::CS,
                PrimitiveValue::from("PATIENT"),
            ));
            obj.put(DataElement::new(
                tags::PATIENT_ID,
                VR::LO,
                PrimitiveValue::from("123"),
            ));
            if let Some(issuer) = issuer {
                obj.put(DataElement::new(
                    tags::ISSUER_OF_PATIENT_ID,
                    VR::LO,
                    PrimitiveValue::from(issuer),
                ));
            }
            obj
        };
        let err = select(&store, &identifier(None), Model::PatientRoot).unwrap_err();
        assert!(
            matches!(err, QueryError::AmbiguousPatient { issuers: 2, .. }),
            "{err}"
        );
        let (_, sent) = select(&store, &identifier(Some("HOSP_B")), Model::PatientRoot).unwrap();
        let sent: Vec<&str> = sent.iter().map(|i| i.sop_instance_uid.as_str()).collect();
        assert_eq!(sent, ["1.6.2.1"]);
    }

    /// A retrieve names its instances by value: a wildcard in any unique key is refused
    /// (A900 through `IdentifierInvalid`), a plain list of UIDs is resolved, and an unknown
    /// UID resolves to nothing.
    /// A result object its rejection note withdrew is not retrieved even when a peer names
    /// it by SOP Instance UID (IMAGE level, which reads the instance, not its study).
    #[test]
    fn a_rejected_object_named_by_its_uid_is_not_retrieved() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (sop, rejected) in [("1.2.4.1", true), ("1.2.4.2", false)] {
            let rec = InstanceRecord {
                sop_instance_uid: sop.into(),
                study_instance_uid: "1.2.4".into(),
                series_instance_uid: "1.2.4.9".into(),
                generated: true,
                rejected,
                ..Default::default()
            };
            store
                .commit_instance(&rec, &StudyRecord::default())
                .unwrap();
        }
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            tags::QUERY_RETRIEVE_LEVEL,
            VR::CS,
            PrimitiveValue::from("IMAGE"),
        ));
        for (tag, v) in [
            (tags::STUDY_INSTANCE_UID, "1.2.4"),
            (tags::SERIES_INSTANCE_UID, "1.2.4.9"),
            (tags::SOP_INSTANCE_UID, "1.2.4.1\\1.2.4.2"),
        ] {
            obj.put(DataElement::new(tag, VR::UI, PrimitiveValue::from(v)));
        }
        let (_, found) = select(&store, &obj, Model::StudyRoot).unwrap();
        let uids: Vec<&str> = found.iter().map(|i| i.sop_instance_uid.as_str()).collect();
        assert_eq!(uids, ["1.2.4.2"]);
    }

    #[test]
    fn retrieve_keys_with_wildcards_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rec = InstanceRecord {
            sop_instance_uid: "1.2.3.1".into(),
            study_instance_uid: "1.2.3".into(),
            series_instance_uid: "1.2.3.9".into(),
            ..Default::default()
        };
        store
            .commit_instance(&rec, &StudyRecord::default())
            .unwrap();
        let identifier = |level: &str, keys: &[(dicom_core::Tag, &str)]| {
            let mut obj = InMemDicomObject::new_empty();
            obj.put(DataElement::new(
                tags::QUERY_RETRIEVE_LEVEL,
                VR::CS,
                PrimitiveValue::from(level),
            ));
            for (tag, v) in keys {
                obj.put(DataElement::new(*tag, VR::UI, PrimitiveValue::from(*v)));
            }
            obj
        };
        for (model, level, tag, value) in [
            (Model::StudyRoot, "STUDY", tags::STUDY_INSTANCE_UID, "*"),
            (Model::StudyRoot, "STUDY", tags::STUDY_INSTANCE_UID, "1.2.*"),
            (Model::StudyRoot, "IMAGE", tags::SOP_INSTANCE_UID, "?"),
            (
                Model::StudyRoot,
                "SERIES",
                tags::SERIES_INSTANCE_UID,
                "1.2.3.?",
            ),
            (Model::PatientRoot, "PATIENT", tags::PATIENT_ID, "*"),
        ] {
            let err = select(&store, &identifier(level, &[(tag, value)]), model).unwrap_err();
            assert!(
                matches!(err, QueryError::WildcardInUniqueKey(_)),
                "{level} {value}: {err}"
            );
            let refused = crate::dimse::Refused::from(err);
            assert_eq!(refused.status(), crate::dimse::status::Status(0xA900));
        }
        let (_, found) = select(
            &store,
            &identifier("STUDY", &[(tags::STUDY_INSTANCE_UID, "1.2.3\\9.9")]),
            Model::StudyRoot,
        )
        .unwrap();
        assert_eq!(found.len(), 1);
    }

    /// A retrieve key that repeats one UID (a 60 KB list of the same study, as a peer that
    /// wants the daemon to load the study thousands of times sends) selects the study once;
    /// a list over 64 KiB is refused (A900) before the index is read; more instances than
    /// the bound are refused with A701, nothing selected.
    #[test]
    fn repeated_oversized_and_too_broad_retrieve_keys_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for sop in ["1.2.3.1", "1.2.3.2", "1.2.3.3"] {
            let rec = InstanceRecord {
                sop_instance_uid: sop.into(),
                study_instance_uid: "1.2.3".into(),
                series_instance_uid: "1.2.3.9".into(),
                ..Default::default()
            };
            let study = StudyRecord {
                study_instance_uid: "1.2.3".into(),
                patient_id: "P1".into(),
                ..Default::default()
            };
            store.commit_instance(&rec, &study).unwrap();
        }
        let identifier = |level: &str, tag: Tag, value: &str| {
            let mut obj = InMemDicomObject::new_empty();
            obj.put(DataElement::new(
                tags::QUERY_RETRIEVE_LEVEL,
                VR::CS,
                PrimitiveValue::from(level),
            ));
            obj.put(DataElement::new(tag, VR::UI, PrimitiveValue::from(value)));
            obj
        };
        let retrieve = |level: &str, tag: Tag, value: &str, model: Model, max: usize| {
            select_at_most(&store, &identifier(level, tag, value), model, max).map(|(_, f)| f)
        };
        let repeated = vec!["1.2.3"; 10_000].join("\\");
        assert!(repeated.len() < MAX_KEY_LIST);
        let found = retrieve(
            "STUDY",
            tags::STUDY_INSTANCE_UID,
            &repeated,
            Model::StudyRoot,
            MAX_RETRIEVE_INSTANCES,
        )
        .unwrap();
        assert_eq!(found.len(), 3, "each instance once");
        let ids = vec!["P1"; 20_000].join("\\");
        let found = retrieve(
            "PATIENT",
            tags::PATIENT_ID,
            &ids,
            Model::PatientRoot,
            MAX_RETRIEVE_INSTANCES,
        )
        .unwrap();
        assert_eq!(found.len(), 3);

        let oversized = vec!["1.2.3"; 12_000].join("\\");
        assert!(oversized.len() > MAX_KEY_LIST);
        let err = retrieve(
            "STUDY",
            tags::STUDY_INSTANCE_UID,
            &oversized,
            Model::StudyRoot,
            MAX_RETRIEVE_INSTANCES,
        )
        .unwrap_err();
        assert!(matches!(err, QueryError::ValueTooLong { .. }), "{err}");
        assert_eq!(
            crate::dimse::Refused::from(err).status(),
            crate::dimse::status::Status(0xA900)
        );

        // A series named without its study is not looked for across the store.
        let err = retrieve(
            "SERIES",
            tags::SERIES_INSTANCE_UID,
            "1.2.3.9",
            Model::StudyRoot,
            MAX_RETRIEVE_INSTANCES,
        )
        .unwrap_err();
        assert!(
            matches!(err, QueryError::MissingUniqueKey(k) if k.contains("0020,000D")),
            "{err}"
        );

        let err = retrieve(
            "STUDY",
            tags::STUDY_INSTANCE_UID,
            "1.2.3",
            Model::StudyRoot,
            2,
        )
        .unwrap_err();
        assert!(
            matches!(err, QueryError::TooManyInstances { max: 2 }),
            "{err}"
        );
        let refused = crate::dimse::Refused::from(err);
        assert_eq!(refused.status(), crate::dimse::status::Status(0xA701));
        assert!(crate::dimse::Cause::TooManyInstances
            .condition()
            .contains(&MAX_RETRIEVE_INSTANCES.to_string()));
    }
}
