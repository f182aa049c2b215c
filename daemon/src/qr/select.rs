//! C-MOVE and C-GET: the hierarchical unique keys of a retrieve identifier resolved to the
//! instances to send, from the store's index.

use super::charset;
use super::index::Kind;
use super::matching;
use super::query::{level_of, Level, Model, QueryError};
use crate::model::InstanceRecord;
use crate::store::Store;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use std::collections::HashSet;

/// The values of a key of a retrieve identifier (UIDs, or the Patient ID), read as
/// [`parse`] reads values when the identifier declares no character set.
fn uid_list(obj: &InMemDicomObject, tag: Tag) -> Vec<String> {
    let declared = charset::declared(obj).is_some();
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok().map(|s| s.to_string()))
        .map(|s| if declared { s } else { charset::undeclared(s) })
        .map(|s| {
            s.split('\\')
                .map(|u| matching::clean(u).to_string())
                .filter(|u| !u.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Resolves a C-MOVE/C-GET identifier (hierarchical unique keys) to the instances to send,
/// in study, series and instance order.
pub fn select(
    store: &Store,
    obj: &InMemDicomObject,
    model: Model,
) -> Result<(Level, Vec<InstanceRecord>), QueryError> {
    let level = level_of(obj, model)?;
    let studies = unique_keys(
        obj,
        tags::STUDY_INSTANCE_UID,
        "Study Instance UID (0020,000D)",
    )?;
    let mut out = Vec::new();
    match level {
        Level::Patient => {
            let ids = unique_keys(obj, tags::PATIENT_ID, "Patient ID (0010,0020)")?;
            if ids.is_empty() {
                return Err(QueryError::MissingUniqueKey("Patient ID (0010,0020)"));
            }
            for id in ids {
                for uid in store.query_exact(Kind::PatientId, &id)? {
                    out.extend(store.instances_of(&uid)?);
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
                out.extend(store.instances_of(uid)?);
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
            let scope: Vec<String> = if studies.is_empty() {
                store
                    .studies()?
                    .into_iter()
                    .map(|s| s.study_instance_uid)
                    .collect()
            } else {
                studies
            };
            for uid in &scope {
                out.extend(
                    store
                        .instances_of(uid)?
                        .into_iter()
                        .filter(|i| series.contains(&i.series_instance_uid)),
                );
            }
        }
        Level::Image => {
            let sops = unique_keys(obj, tags::SOP_INSTANCE_UID, "SOP Instance UID (0008,0018)")?;
            if sops.is_empty() {
                return Err(QueryError::MissingUniqueKey("SOP Instance UID (0008,0018)"));
            }
            for sop in sops {
                if let Some(i) = store.instance(&sop)? {
                    out.push(i);
                }
            }
        }
    }
    let mut seen = HashSet::new();
    out.retain(|i| seen.insert(i.sop_instance_uid.clone()));
    Ok((level, out))
}

/// The values of a retrieve's unique key `tag` (`name` in errors): refused when one holds
/// a wildcard (`*` or `?`), which a C-FIND may use and a C-MOVE or C-GET may not.
fn unique_keys(
    obj: &InMemDicomObject,
    tag: dicom_core::Tag,
    name: &'static str,
) -> Result<Vec<String>, QueryError> {
    let values = uid_list(obj, tag);
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

    /// A retrieve names its instances by value: a wildcard in any unique key is refused
    /// (A900 through `IdentifierInvalid`), a plain list of UIDs is resolved, and an unknown
    /// UID resolves to nothing.
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
}
