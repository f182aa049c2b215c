//! The C-FIND service logic, apart from the protocol: a decoded identifier
//! ([`super::identifier`]) read into a [`Query`], the matching entities found in the store's
//! index (never in the files), and the response identifiers built. The unique keys of a
//! C-MOVE/C-GET identifier are resolved in [`super::select`].

use super::charset;
use super::index::Kind;
use super::matching::{self, Matcher};
use crate::model::{InstanceRecord, StudyRecord};
use crate::store::{Store, StoreError};
use dicom_core::value::{DataSetSequence, Value};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use std::collections::{BTreeMap, HashSet};

/// The query/retrieve information model of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// Patient Root: PATIENT, STUDY, SERIES, IMAGE.
    PatientRoot,
    /// Study Root: STUDY, SERIES, IMAGE (patient attributes are study attributes).
    StudyRoot,
}

impl Model {
    /// The model of a Q/R SOP class UID (FIND, MOVE or GET), if it is one we serve.
    pub fn of_sop_class(uid: &str) -> Option<Model> {
        use crate::dimse::uids::*;
        match uid {
            PATIENT_ROOT_QR_FIND | PATIENT_ROOT_QR_MOVE | PATIENT_ROOT_QR_GET => {
                Some(Model::PatientRoot)
            }
            STUDY_ROOT_QR_FIND | STUDY_ROOT_QR_MOVE | STUDY_ROOT_QR_GET => Some(Model::StudyRoot),
            _ => None,
        }
    }
}

/// Query/Retrieve Level (0008,0052).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// PATIENT (Patient Root only).
    Patient,
    /// STUDY.
    Study,
    /// SERIES.
    Series,
    /// IMAGE.
    Image,
}

impl Level {
    /// The level's code string.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Patient => "PATIENT",
            Level::Study => "STUDY",
            Level::Series => "SERIES",
            Level::Image => "IMAGE",
        }
    }
}

/// Why an identifier cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The identifier does not decode in the presentation context's transfer syntax.
    #[error("identifier does not decode: {0}")]
    Decode(String),
    /// Query/Retrieve Level is absent.
    #[error("Query/Retrieve Level (0008,0052) is missing")]
    MissingLevel,
    /// Query/Retrieve Level has a value this model does not define.
    #[error("Query/Retrieve Level {0:?} is not defined in this information model")]
    BadLevel(String),
    /// A retrieve names no instances by their unique key.
    #[error("the identifier lacks the unique key {0} of its level")]
    MissingUniqueKey(&'static str),
    /// A retrieve's unique key holds a wildcard: keys are single values or UID lists
    /// (PS3.4 C.4.2.2.1), never patterns.
    #[error("the unique key {0} holds a wildcard; a retrieve names instances by value")]
    WildcardInUniqueKey(&'static str),
    /// A key's value is longer than any value it could match (a pattern that would make
    /// the matching slow, or a list beyond any retrieve's size).
    #[error("the value of key ({:04X},{:04X}) holds {len} bytes, over the {max} a key of its kind may have", .tag.0, .tag.1)]
    ValueTooLong {
        /// The key.
        tag: Tag,
        /// The value's length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The identifier names more keys than any query needs (each is answered back in every
    /// match).
    #[error("the identifier holds {count} keys, over the {MAX_KEYS} a query may name")]
    TooManyKeys {
        /// How many it holds (counted up to one past the bound).
        count: usize,
    },
    /// A PATIENT-level retrieve names a Patient ID that several issuers gave here (each a
    /// different patient) without saying which.
    #[error(
        "Patient ID {id:?} names patients of {issuers} issuers here; name its Issuer of \
         Patient ID (0010,0021), or retrieve by study"
    )]
    AmbiguousPatient {
        /// The Patient ID.
        id: String,
        /// How many issuers it has in the store.
        issuers: usize,
    },
    /// A retrieve selects more instances than one C-MOVE or C-GET may send.
    #[error("more than {max} instances selected; retrieve by study or series")]
    TooManyInstances {
        /// The bound ([`super::select::MAX_RETRIEVE_INSTANCES`]).
        max: usize,
    },
    /// The index failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Most bytes of a single key value or pattern: above any stored value's representation
/// (a Person Name's three groups of 64 characters), far below what would make matching
/// slow.
pub const MAX_KEY_VALUE: usize = 256;

/// Most keys of one identifier, besides the level and the character set: far above the
/// thirty or so attributes this SCP matches or returns, far below what would make every
/// answer (which says each key back) a megabyte.
pub const MAX_KEYS: usize = 512;

/// Most bytes of a key holding a list of values (`\`-separated UIDs of a retrieve, say).
pub const MAX_KEY_LIST: usize = 64 * 1024;

impl From<QueryError> for crate::dimse::Refused {
    fn from(e: QueryError) -> crate::dimse::Refused {
        use crate::dimse::Cause;
        let cause = match &e {
            QueryError::Decode(_) => Cause::IdentifierUndecodable,
            QueryError::Store(_) => Cause::IndexFailed,
            QueryError::MissingLevel
            | QueryError::BadLevel(_)
            | QueryError::MissingUniqueKey(_)
            | QueryError::WildcardInUniqueKey(_)
            | QueryError::ValueTooLong { .. }
            | QueryError::TooManyKeys { .. }
            | QueryError::AmbiguousPatient { .. } => Cause::IdentifierInvalid,
            QueryError::TooManyInstances { .. } => Cause::TooManyInstances,
        };
        crate::dimse::Refused::new(cause, e.to_string())
    }
}

/// One key of the identifier.
#[derive(Debug, Clone)]
pub struct QueryKey {
    /// The attribute.
    pub tag: Tag,
    /// Its representation (from the identifier, or the dictionary in implicit VR).
    pub vr: VR,
    /// How it matches.
    pub matcher: Matcher,
    /// The value as sent, values joined by `\`.
    pub raw: String,
}

/// A decoded C-FIND identifier.
#[derive(Debug, Clone)]
pub struct Query {
    /// Information model.
    pub model: Model,
    /// Query level.
    pub level: Level,
    /// The keys, in tag order, without Query/Retrieve Level and Specific Character Set.
    pub keys: Vec<QueryKey>,
    /// Specific Character Set (0008,0005) as the identifier declared it (`None`: absent).
    pub charset: Option<String>,
    /// Some value had non-ASCII bytes but the identifier declared no character set: such
    /// values were read as UTF-8 where valid, otherwise as ISO-IR 100 (Latin-1).
    pub undeclared_non_ascii: bool,
}

/// Most bytes of one query value written to the audit trail.
pub const AUDITED_VALUE: usize = 128;

/// Most bytes of a whole query's description in the audit trail (a query may carry many
/// keys; what a peer sends must not size each record it leaves).
pub const AUDITED_QUERY: usize = 1024;

impl Query {
    /// A short description for the log: the level and the tags of the matching
    /// (non-universal) keys, never their values (they identify patients).
    pub fn describe(&self) -> String {
        let mut out = format!("{} level", self.level.as_str());
        for k in self.matching_keys() {
            out.push_str(&format!(" ({:04X},{:04X})", k.tag.0, k.tag.1));
        }
        out
    }

    /// The description for the audit trail, where access to patient data is recorded: the
    /// level and each matching (non-universal) key with its value, each value held to
    /// [`AUDITED_VALUE`] bytes and the whole to [`AUDITED_QUERY`] (marked when cut).
    pub fn describe_with_values(&self) -> String {
        let mut out = format!("{} level", self.level.as_str());
        for k in self.matching_keys() {
            let value = crate::audit::cut(&k.raw, AUDITED_VALUE);
            out.push_str(&format!(" ({:04X},{:04X})={value}", k.tag.0, k.tag.1));
            if out.len() > AUDITED_QUERY {
                break;
            }
        }
        crate::audit::cut(&out, AUDITED_QUERY).into_owned()
    }

    fn matching_keys(&self) -> impl Iterator<Item = &QueryKey> {
        self.keys.iter().filter(|k| k.matcher != Matcher::Universal)
    }

    fn key(&self, tag: Tag) -> Option<&QueryKey> {
        self.keys.iter().find(|k| k.tag == tag)
    }
}

pub(super) fn level_of(obj: &InMemDicomObject, model: Model) -> Result<Level, QueryError> {
    let raw = obj
        .element_opt(tags::QUERY_RETRIEVE_LEVEL)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok().map(|s| matching::clean(&s).to_string()))
        .ok_or(QueryError::MissingLevel)?;
    match (raw.as_str(), model) {
        ("PATIENT", Model::PatientRoot) => Ok(Level::Patient),
        ("STUDY", _) => Ok(Level::Study),
        ("SERIES", _) => Ok(Level::Series),
        ("IMAGE", _) => Ok(Level::Image),
        // Said back in the refusal, the log and the audit trail: held to a CS value's size.
        _ => Err(QueryError::BadLevel(
            crate::audit::cut(&raw, 32).into_owned(),
        )),
    }
}

/// Reads a C-FIND identifier.
pub fn parse(obj: &InMemDicomObject, model: Model) -> Result<Query, QueryError> {
    let level = level_of(obj, model)?;
    let declared = charset::declared(obj);
    let mut undeclared_non_ascii = false;
    let mut keys = Vec::new();
    for e in obj.iter() {
        let tag = e.header().tag;
        if tag == tags::QUERY_RETRIEVE_LEVEL || tag == tags::SPECIFIC_CHARACTER_SET || tag.0 == 0 {
            continue;
        }
        if keys.len() == MAX_KEYS {
            return Err(QueryError::TooManyKeys {
                count: MAX_KEYS + 1,
            });
        }
        let vr = e.vr();
        let raw = match e.value() {
            Value::Primitive(_) => {
                crate::iso2022::text_of(declared.as_deref(), e).unwrap_or_default()
            }
            _ => String::new(),
        };
        let raw = if declared.is_none() && !raw.is_ascii() {
            undeclared_non_ascii = true;
            charset::undeclared(raw)
        } else {
            raw
        };
        let max = if raw.contains('\\') {
            MAX_KEY_LIST
        } else {
            MAX_KEY_VALUE
        };
        if raw.len() > max {
            return Err(QueryError::ValueTooLong {
                tag,
                len: raw.len(),
                max,
            });
        }
        let matcher = if vr == VR::SQ {
            // Sequence matching is not supported: such keys are returned, never matched.
            Matcher::Universal
        } else {
            matching::parse(vr, &raw)
        };
        keys.push(QueryKey {
            tag,
            vr,
            matcher,
            raw,
        });
    }
    Ok(Query {
        model,
        level,
        keys,
        charset: declared,
        undeclared_non_ascii,
    })
}

/// The level an attribute belongs to in `model`, for the attributes this SCP supports.
fn attribute_level(tag: Tag, model: Model) -> Option<Level> {
    let patient = match model {
        Model::PatientRoot => Level::Patient,
        Model::StudyRoot => Level::Study,
    };
    Some(match tag {
        tags::PATIENT_NAME
        | tags::PATIENT_ID
        | tags::ISSUER_OF_PATIENT_ID
        | tags::PATIENT_BIRTH_DATE
        | tags::PATIENT_SEX
        | tags::NUMBER_OF_PATIENT_RELATED_STUDIES
        | tags::NUMBER_OF_PATIENT_RELATED_SERIES
        | tags::NUMBER_OF_PATIENT_RELATED_INSTANCES => patient,
        tags::STUDY_DATE
        | tags::STUDY_TIME
        | tags::ACCESSION_NUMBER
        | tags::STUDY_ID
        | tags::STUDY_INSTANCE_UID
        | tags::REFERRING_PHYSICIAN_NAME
        | tags::STUDY_DESCRIPTION
        | tags::MODALITIES_IN_STUDY
        | tags::SOP_CLASSES_IN_STUDY
        | tags::NUMBER_OF_STUDY_RELATED_SERIES
        | tags::NUMBER_OF_STUDY_RELATED_INSTANCES => Level::Study,
        tags::MODALITY
        | tags::SERIES_NUMBER
        | tags::SERIES_INSTANCE_UID
        | tags::SERIES_DESCRIPTION
        | tags::BODY_PART_EXAMINED
        | tags::NUMBER_OF_SERIES_RELATED_INSTANCES => Level::Series,
        tags::INSTANCE_NUMBER
        | tags::SOP_INSTANCE_UID
        | tags::SOP_CLASS_UID
        | tags::VIEW_POSITION
        | tags::ROWS
        | tags::COLUMNS => Level::Image,
        _ => return None,
    })
}

/// Count attributes are return keys only: they are computed, never matched.
fn is_count(tag: Tag) -> bool {
    matches!(
        tag,
        tags::NUMBER_OF_PATIENT_RELATED_STUDIES
            | tags::NUMBER_OF_PATIENT_RELATED_SERIES
            | tags::NUMBER_OF_PATIENT_RELATED_INSTANCES
            | tags::NUMBER_OF_STUDY_RELATED_SERIES
            | tags::NUMBER_OF_STUDY_RELATED_INSTANCES
            | tags::NUMBER_OF_SERIES_RELATED_INSTANCES
            | tags::SOP_CLASSES_IN_STUDY
    )
}

/// Counts and lists computed from a study's instances. The patient's counts are known
/// only at PATIENT level (where the patient's studies are grouped): below it they are
/// answered empty, never as a count of zero.
#[derive(Debug, Clone, Default)]
struct Derived {
    patient_studies: Option<usize>,
    patient_series: Option<usize>,
    patient_instances: Option<usize>,
    study_series: usize,
    study_instances: usize,
    series_instances: usize,
    sop_classes: Vec<String>,
}

/// One matching entity at the query level.
struct Row<'a> {
    study: &'a StudyRecord,
    /// The instance representing the series (series level) or the instance (image level).
    instance: Option<&'a InstanceRecord>,
    derived: Derived,
}

fn one(s: &str) -> Vec<String> {
    if s.is_empty() {
        Vec::new()
    } else {
        vec![s.to_string()]
    }
}

fn num<T: ToString>(n: Option<T>) -> Vec<String> {
    n.map(|v| vec![v.to_string()]).unwrap_or_default()
}

impl Row<'_> {
    /// The attribute's values in this entity (empty when it has none).
    fn values(&self, tag: Tag) -> Vec<String> {
        let s = self.study;
        let i = self.instance;
        let d = &self.derived;
        match tag {
            tags::PATIENT_NAME => one(&s.patient_name),
            tags::PATIENT_ID => one(&s.patient_id),
            tags::ISSUER_OF_PATIENT_ID => one(&s.issuer_of_patient_id),
            tags::PATIENT_BIRTH_DATE => one(&s.patient_birth_date),
            tags::PATIENT_SEX => one(&s.patient_sex),
            tags::NUMBER_OF_PATIENT_RELATED_STUDIES => num(d.patient_studies),
            tags::NUMBER_OF_PATIENT_RELATED_SERIES => num(d.patient_series),
            tags::NUMBER_OF_PATIENT_RELATED_INSTANCES => num(d.patient_instances),
            tags::STUDY_DATE => one(&s.study_date),
            tags::STUDY_TIME => one(&s.study_time),
            tags::ACCESSION_NUMBER => one(&s.accession_number),
            tags::STUDY_ID => one(&s.study_id),
            tags::STUDY_INSTANCE_UID => one(&s.study_instance_uid),
            tags::REFERRING_PHYSICIAN_NAME => one(&s.referring_physician),
            tags::STUDY_DESCRIPTION => one(&s.study_description),
            tags::MODALITIES_IN_STUDY => s.modalities.clone(),
            tags::SOP_CLASSES_IN_STUDY => d.sop_classes.clone(),
            tags::NUMBER_OF_STUDY_RELATED_SERIES => num(Some(d.study_series)),
            tags::NUMBER_OF_STUDY_RELATED_INSTANCES => num(Some(d.study_instances)),
            tags::NUMBER_OF_SERIES_RELATED_INSTANCES => num(Some(d.series_instances)),
            _ => match i {
                None => Vec::new(),
                Some(i) => match tag {
                    tags::MODALITY => one(&i.modality),
                    tags::SERIES_NUMBER => num(i.series_number),
                    tags::SERIES_INSTANCE_UID => one(&i.series_instance_uid),
                    tags::SERIES_DESCRIPTION => one(&i.series_description),
                    tags::BODY_PART_EXAMINED => one(&i.body_part),
                    tags::INSTANCE_NUMBER => num(i.instance_number),
                    tags::SOP_INSTANCE_UID => one(&i.sop_instance_uid),
                    tags::SOP_CLASS_UID => one(&i.sop_class_uid),
                    tags::VIEW_POSITION => one(&i.view_position),
                    tags::ROWS => num(i.rows),
                    tags::COLUMNS => num(i.columns),
                    _ => Vec::new(),
                },
            },
        }
    }
}

/// What the caller does with each match: `false` stops the search.
pub type Emit<'a> = dyn FnMut(InMemDicomObject) -> bool + 'a;

/// Runs `query` over the index, calling `emit` with each response identifier, until done,
/// `emit` returns false or `cancel` is set. Returns the number of matches emitted.
pub fn run(
    store: &Store,
    query: &Query,
    retrieve_ae: &str,
    cancel: &super::Stop,
    emit: &mut Emit<'_>,
) -> Result<usize, QueryError> {
    let keys = Keys::of(query);
    let matches_study = |s: &StudyRecord| {
        let row = Row {
            study: s,
            instance: None,
            derived: Derived::default(),
        };
        keys.study
            .iter()
            .all(|k| matching::matches(&k.matcher, k.vr, &row.values(k.tag)))
    };
    // Narrowed by an indexed key: the few candidates, sorted here by the index's own order
    // key. Otherwise every study, read one at a time in that order from the index, so the
    // first response goes out at once and a cancel or the match limit stops the reading.
    // A cancel, an abort or a lost connection stops the reading between any two studies,
    // matching or not.
    let studies: Studies<'_> = match narrowed(store, query)? {
        Some(mut list) => {
            list.retain(|s| !cancel.is_set() && matches_study(s));
            list.sort_by_cached_key(super::index::order_key);
            Box::new(list.into_iter().map(Ok))
        }
        None => Box::new(
            store
                .studies_in_query_order()
                .take_while(|_| !cancel.is_set())
                .map(|r| r.map_err(QueryError::from))
                .filter(|r| r.as_ref().map_or(true, &matches_study)),
        ),
    };
    let mut out = Responses {
        query,
        retrieve_ae,
        emit,
        emitted: 0,
    };
    if query.level == Level::Patient {
        patients(store, studies, keys.need_instances, cancel, &mut out)?;
    } else {
        below_patients(store, studies, &keys, query.level, cancel, &mut out)?;
    }
    Ok(out.emitted)
}

/// The keys of a query that take part in matching, by the level they match at, and
/// whether the instances of each study must be read (for series and image rows, or for
/// counts and lists derived from them).
struct Keys<'q> {
    /// Patient- and study-level keys.
    study: Vec<&'q QueryKey>,
    /// Series-level keys.
    series: Vec<&'q QueryKey>,
    /// Image-level keys.
    image: Vec<&'q QueryKey>,
    /// The instances of each study are needed.
    need_instances: bool,
}

impl<'q> Keys<'q> {
    fn of(query: &'q Query) -> Keys<'q> {
        let (level, model) = (query.level, query.model);
        let level_of = |k: &QueryKey| attribute_level(k.tag, model);
        let active: Vec<&QueryKey> = query
            .keys
            .iter()
            .filter(|k| k.matcher != Matcher::Universal && !is_count(k.tag))
            .filter(|k| level_of(k).is_some_and(|l| l <= level))
            .collect();
        let keys_where = |at: &dyn Fn(Level) -> bool| -> Vec<&'q QueryKey> {
            active
                .iter()
                .copied()
                .filter(|k| level_of(k).is_some_and(at))
                .collect()
        };
        let requested = |tag: Tag| query.key(tag).is_some();
        Keys {
            study: keys_where(&|l| l <= Level::Study && l >= Level::Patient),
            series: keys_where(&|l| l == Level::Series),
            image: keys_where(&|l| l == Level::Image),
            need_instances: level >= Level::Series
                || requested(tags::NUMBER_OF_STUDY_RELATED_SERIES)
                || requested(tags::SOP_CLASSES_IN_STUDY)
                || requested(tags::NUMBER_OF_PATIENT_RELATED_SERIES),
        }
    }
}

/// Where matching rows go, as response identifiers, counted.
struct Responses<'a, 'e> {
    query: &'a Query,
    retrieve_ae: &'a str,
    emit: &'a mut Emit<'e>,
    emitted: usize,
}

impl Responses<'_, '_> {
    /// Emits `row`; `false` when the caller wants no more.
    fn send(&mut self, row: &Row) -> bool {
        self.emitted += 1;
        (self.emit)(response(self.query, row, self.retrieve_ae))
    }
}

/// The candidate studies of a query, in the index's order.
type Studies<'s> = Box<dyn Iterator<Item = Result<StudyRecord, QueryError>> + 's>;

/// PATIENT level: one row per patient, from its consecutive studies (they come ordered by
/// Patient ID), with the patient's counts.
fn patients(
    store: &Store,
    studies: Studies<'_>,
    need_instances: bool,
    cancel: &super::Stop,
    out: &mut Responses,
) -> Result<(), QueryError> {
    let mut studies = studies.peekable();
    while let Some(first) = studies.next() {
        if cancel.is_set() {
            break;
        }
        let first = first?;
        let id = first.patient_id.clone();
        let mut run = vec![first];
        // Studies without a Patient ID are no one patient: each is its own row.
        while let Some(Ok(next)) =
            studies.next_if(|r| !id.is_empty() && r.as_ref().is_ok_and(|s| s.patient_id == id))
        {
            run.push(next);
        }
        // A patient is a Patient ID within its issuer: the same ID from two issuers is two
        // patients, two rows (in the order each issuer first comes).
        let mut patients: Vec<Vec<StudyRecord>> = Vec::new();
        for study in run {
            match patients
                .iter_mut()
                .find(|p| p[0].issuer_of_patient_id == study.issuer_of_patient_id)
            {
                Some(patient) => patient.push(study),
                None => patients.push(vec![study]),
            }
        }
        for group in &patients {
            let (mut series, mut instances) = (0usize, 0usize);
            for s in group {
                instances += s.instances as usize;
                if need_instances {
                    series += series_of(&store.instances_of(&s.study_instance_uid)?).len();
                }
            }
            let derived = Derived {
                patient_studies: Some(group.len()),
                patient_series: Some(series),
                patient_instances: Some(instances),
                ..Default::default()
            };
            let row = Row {
                study: &group[0],
                instance: None,
                derived,
            };
            if !out.send(&row) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// STUDY, SERIES and IMAGE levels: each matching study, then its matching series, then
/// their matching instances, down to the query's level.
fn below_patients(
    store: &Store,
    studies: Studies<'_>,
    keys: &Keys,
    level: Level,
    cancel: &super::Stop,
    out: &mut Responses,
) -> Result<(), QueryError> {
    let all_match = |keys: &[&QueryKey], row: &Row| {
        keys.iter()
            .all(|k| matching::matches(&k.matcher, k.vr, &row.values(k.tag)))
    };
    for s in studies {
        if cancel.is_set() {
            break;
        }
        let s = &s?;
        let instances = if keys.need_instances {
            store.instances_of(&s.study_instance_uid)?
        } else {
            Vec::new()
        };
        let series = series_of(&instances);
        let mut sop_classes: Vec<String> = Vec::new();
        for i in &instances {
            if !sop_classes.contains(&i.sop_class_uid) {
                sop_classes.push(i.sop_class_uid.clone());
            }
        }
        let study_derived = Derived {
            study_series: series.len(),
            study_instances: s.instances as usize,
            sop_classes,
            ..Default::default()
        };
        if level == Level::Study {
            let row = Row {
                study: s,
                instance: None,
                derived: study_derived,
            };
            if !out.send(&row) {
                break;
            }
            continue;
        }
        for members in series.values() {
            let series_row = Row {
                study: s,
                instance: Some(members[0]),
                derived: Derived {
                    series_instances: members.len(),
                    ..study_derived.clone()
                },
            };
            if !all_match(&keys.series, &series_row) {
                continue;
            }
            if level == Level::Series {
                if cancel.is_set() || !out.send(&series_row) {
                    return Ok(());
                }
                continue;
            }
            for inst in members {
                let row = Row {
                    study: s,
                    instance: Some(inst),
                    derived: series_row.derived.clone(),
                };
                if !all_match(&keys.image, &row) {
                    continue;
                }
                if cancel.is_set() || !out.send(&row) {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Groups a study's instances by series, in series-number order.
fn series_of(instances: &[InstanceRecord]) -> BTreeMap<(i64, String), Vec<&InstanceRecord>> {
    let mut out: BTreeMap<(i64, String), Vec<&InstanceRecord>> = BTreeMap::new();
    let mut seen: BTreeMap<&str, (i64, String)> = BTreeMap::new();
    for i in instances {
        let key = seen
            .entry(i.series_instance_uid.as_str())
            .or_insert_with(|| {
                (
                    i.series_number.unwrap_or(i64::MAX),
                    i.series_instance_uid.clone(),
                )
            })
            .clone();
        out.entry(key).or_default().push(i);
    }
    out
}

/// Most studies an indexed key may narrow a query to and still be loaded at once.
const MAX_NARROWED: usize = 2_000;

/// The studies worth matching when an indexed key narrows the query to at most
/// [`MAX_NARROWED`]; `None` when none does (every study is a candidate, read in order).
fn narrowed(store: &Store, query: &Query) -> Result<Option<Vec<StudyRecord>>, QueryError> {
    // One more than may be loaded: an index scan stops there, and a key that reaches it
    // narrows nothing (its studies are read in order instead).
    const ENOUGH: usize = MAX_NARROWED + 1;
    let mut narrowed: Option<HashSet<String>> = None;
    let mut intersect = |set: Vec<String>| {
        let set: HashSet<String> = set.into_iter().collect();
        narrowed = Some(match narrowed.take() {
            None => set,
            Some(prev) => prev.intersection(&set).cloned().collect(),
        });
    };
    // Only keys that take part in matching at this level may narrow the search.
    let usable = query
        .keys
        .iter()
        .filter(|k| attribute_level(k.tag, query.model).is_some_and(|l| l <= query.level));
    for k in usable {
        let kind = match k.tag {
            tags::PATIENT_ID => Kind::PatientId,
            tags::ACCESSION_NUMBER => Kind::Accession,
            tags::STUDY_DATE => Kind::StudyDate,
            tags::PATIENT_NAME => Kind::PatientName,
            tags::STUDY_INSTANCE_UID => {
                match &k.matcher {
                    Matcher::Single(uid) => intersect(vec![uid.clone()]),
                    Matcher::List(uids) => intersect(uids.clone()),
                    _ => {}
                }
                continue;
            }
            _ => continue,
        };
        let candidates = match &k.matcher {
            Matcher::Single(v) => Some(store.query_exact(kind, v, ENOUGH)?),
            Matcher::List(vs) => {
                let mut all = Vec::new();
                for v in vs {
                    all.extend(store.query_exact(kind, v, ENOUGH)?);
                    if all.len() >= ENOUGH {
                        break;
                    }
                }
                Some(all)
            }
            Matcher::Wildcard(p) => {
                let prefix: String = p.iter().take_while(|c| **c != '*' && **c != '?').collect();
                if prefix.is_empty() {
                    None
                } else {
                    Some(store.query_prefixed(kind, &prefix, ENOUGH)?)
                }
            }
            Matcher::Range { lo, hi } if kind == Kind::StudyDate => {
                Some(store.query_range(kind, lo, hi, ENOUGH)?)
            }
            _ => None,
        };
        // A key whose scan reached ENOUGH stopped short of its studies: it narrows nothing
        // (intersecting its partial set would lose matches).
        if let Some(c) = candidates.filter(|c| c.len() < ENOUGH) {
            intersect(c);
        }
    }
    let Some(uids) = narrowed else {
        return Ok(None);
    };
    // A broad key (`StudyDate=-`, a one-letter name prefix) narrows little: its studies
    // are read one at a time in response order instead, where a cancel and the match
    // limit stop the reading, rather than all loaded and sorted before the first answer.
    if uids.len() > MAX_NARROWED {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(uids.len());
    for uid in uids {
        if let Some(s) = store.study(&uid)? {
            out.push(s);
        }
    }
    Ok(Some(out))
}

/// Instance Availability (0008,0056) of a match: `UNAVAILABLE` for an instance whose pixel
/// data retention removed (its record stays, a retrieve of it fails), `ONLINE` otherwise.
/// Above the image level a match stands for instances that may differ, and is `ONLINE`.
fn availability(level: Level, row: &Row) -> &'static str {
    match (level, row.instance) {
        (Level::Image, Some(i)) if i.pruned => "UNAVAILABLE",
        _ => "ONLINE",
    }
}

/// The response identifier for one match: every requested key (empty when the entity has
/// no value or the attribute is not supported), the level, and the character set that
/// carries the values ([`charset::for_response`]).
fn response(query: &Query, row: &Row, retrieve_ae: &str) -> InMemDicomObject {
    let mut obj = InMemDicomObject::new_empty();
    obj.put(DataElement::new(
        tags::QUERY_RETRIEVE_LEVEL,
        VR::CS,
        PrimitiveValue::from(query.level.as_str()),
    ));
    let mut texts: Vec<String> = Vec::new();
    let mut text_elements: Vec<(Tag, VR, Vec<String>)> = Vec::new();
    for k in &query.keys {
        if k.vr == VR::SQ {
            obj.put(DataElement::new(
                k.tag,
                VR::SQ,
                DataSetSequence::<InMemDicomObject>::empty(),
            ));
            continue;
        }
        let values: Vec<String> = match k.tag {
            tags::RETRIEVE_AE_TITLE => vec![retrieve_ae.to_string()],
            tags::INSTANCE_AVAILABILITY => vec![availability(query.level, row).to_string()],
            tag => match attribute_level(tag, query.model) {
                Some(l) if l <= query.level => row.values(tag),
                _ => Vec::new(),
            },
        };
        let value = if values.is_empty() {
            PrimitiveValue::Empty
        } else if k.vr == VR::US {
            PrimitiveValue::U16(
                values
                    .iter()
                    .map(|v| v.parse::<u16>().unwrap_or(0))
                    .collect(),
            )
        } else {
            texts.extend(values.iter().filter(|v| !v.is_ascii()).cloned());
            text_elements.push((k.tag, k.vr, values));
            continue;
        };
        obj.put(DataElement::new(k.tag, k.vr, value));
    }
    let cs = charset::for_response(query.charset.as_deref(), texts.iter().map(String::as_str));
    for (tag, vr, values) in text_elements {
        let values = values
            .into_iter()
            .map(|v| match cs.as_deref() {
                Some(cs) => charset::written(cs, &v, vr == VR::PN).unwrap_or(v),
                None => v,
            })
            .collect();
        obj.put(DataElement::new(tag, vr, PrimitiveValue::Strs(values)));
    }
    if let Some(cs) = cs {
        // As separate values: dicom-rs's writer then switches to the first one, as
        // `charset::written` expects.
        obj.put(DataElement::new(
            tags::SPECIFIC_CHARACTER_SET,
            VR::CS,
            PrimitiveValue::Strs(cs.split('\\').map(str::to_string).collect()),
        ));
    }
    obj
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};

    /// A store of studies given as (study UID, patient ID, study date, study time), one
    /// instance each.
    fn store_of(dir: &std::path::Path, studies: &[(&str, &str, &str, &str)]) -> Store {
        let store = Store::open(dir).unwrap();
        for (uid, pid, date, time) in studies {
            let inst = InstanceRecord {
                sop_instance_uid: format!("{uid}.1"),
                study_instance_uid: uid.to_string(),
                series_instance_uid: format!("{uid}.9"),
                ..Default::default()
            };
            let attrs = StudyRecord {
                patient_id: pid.to_string(),
                study_date: date.to_string(),
                study_time: time.to_string(),
                ..Default::default()
            };
            store.commit_instance(&inst, &attrs).unwrap();
        }
        store
    }

    /// The Study Instance UIDs (or Patient IDs at the patient level) `keys` finds at
    /// `level`, in response order; `stop_after` ends the search after that many.
    fn found(
        store: &Store,
        model: Model,
        level: &str,
        keys: &[(Tag, VR, &str)],
        stop_after: usize,
    ) -> Vec<String> {
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            tags::QUERY_RETRIEVE_LEVEL,
            VR::CS,
            PrimitiveValue::from(level),
        ));
        for (tag, vr, v) in keys {
            obj.put(DataElement::new(*tag, *vr, PrimitiveValue::from(*v)));
        }
        let query = parse(&obj, model).unwrap();
        let shown = if level == "PATIENT" {
            tags::PATIENT_ID
        } else {
            tags::STUDY_INSTANCE_UID
        };
        let mut out = Vec::new();
        let cancel = crate::qr::Stop::default();
        run(
            store,
            &query,
            "DULI",
            &cancel,
            &mut |r: InMemDicomObject| {
                out.push(
                    r.element(shown)
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .trim()
                        .to_string(),
                );
                out.len() < stop_after
            },
        )
        .unwrap();
        out
    }

    /// A study stored with an old ACR-NEMA date (`2024.06.15`) is found by its date, single
    /// or in a range, through the index as through matching.
    #[test]
    fn a_dotted_study_date_is_found_by_its_date() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_of(
            dir.path(),
            &[
                ("1.3.1", "P1", "2024.06.15", ""),
                ("1.3.2", "P2", "20230101", ""),
            ],
        );
        for date in ["20240615", "2024.06.15", "20240101-20241231", "20240615-"] {
            let keys = [
                (tags::STUDY_DATE, VR::DA, date),
                (tags::STUDY_INSTANCE_UID, VR::UI, ""),
            ];
            assert_eq!(
                found(&store, Model::StudyRoot, "STUDY", &keys, usize::MAX),
                ["1.3.1"],
                "{date}"
            );
        }
    }

    /// An instance whose pixel data retention removed is answered `UNAVAILABLE` at the
    /// image level (a retrieve of it would fail), the others `ONLINE`.
    #[test]
    fn pruned_instances_are_unavailable_at_the_image_level() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (sop, pruned) in [("1.6.1.1", true), ("1.6.1.2", false)] {
            let inst = InstanceRecord {
                sop_instance_uid: sop.into(),
                study_instance_uid: "1.6.1".into(),
                series_instance_uid: "1.6.1.9".into(),
                pruned,
                ..Default::default()
            };
            let attrs = StudyRecord {
                patient_id: "P6".into(),
                ..Default::default()
            };
            store.commit_instance(&inst, &attrs).unwrap();
        }
        let mut obj = InMemDicomObject::new_empty();
        for (tag, vr, v) in [
            (tags::QUERY_RETRIEVE_LEVEL, VR::CS, "IMAGE"),
            (tags::STUDY_INSTANCE_UID, VR::UI, "1.6.1"),
            (tags::SERIES_INSTANCE_UID, VR::UI, "1.6.1.9"),
            (tags::SOP_INSTANCE_UID, VR::UI, ""),
            (tags::INSTANCE_AVAILABILITY, VR::CS, ""),
        ] {
            obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
        }
        let query = parse(&obj, Model::StudyRoot).unwrap();
        let mut seen = Vec::new();
        let text = |r: &InMemDicomObject, tag| {
            r.element(tag).unwrap().to_str().unwrap().trim().to_string()
        };
        run(
            &store,
            &query,
            "DULI",
            &crate::qr::Stop::default(),
            &mut |r: InMemDicomObject| {
                seen.push((
                    text(&r, tags::SOP_INSTANCE_UID),
                    text(&r, tags::INSTANCE_AVAILABILITY),
                ));
                true
            },
        )
        .unwrap();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("1.6.1.1".to_string(), "UNAVAILABLE".to_string()),
                ("1.6.1.2".to_string(), "ONLINE".to_string())
            ]
        );
    }

    /// At the PATIENT level studies are grouped by Patient ID, but studies without one
    /// belong to no one patient: each is answered on its own, never summed together.
    #[test]
    fn studies_without_a_patient_id_are_not_one_patient() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_of(
            dir.path(),
            &[
                ("1.4.1", "", "20240101", ""),
                ("1.4.2", "", "20240102", ""),
                ("1.4.3", "P9", "20240103", ""),
                ("1.4.4", "P9", "20240104", ""),
            ],
        );
        let rows = found(
            &store,
            Model::PatientRoot,
            "PATIENT",
            &[(tags::PATIENT_ID, VR::LO, "")],
            usize::MAX,
        );
        assert_eq!(rows.len(), 3, "{rows:?}");
    }

    /// Stores one instance (`UID.1`) of study `uid` of patient `id` given by `issuer`.
    pub(crate) fn study_of_issuer(store: &Store, uid: &str, id: &str, issuer: &str) {
        let inst = InstanceRecord {
            sop_instance_uid: format!("{uid}.1"),
            study_instance_uid: uid.into(),
            series_instance_uid: format!("{uid}.9"),
            ..Default::default()
        };
        let attrs = StudyRecord {
            patient_id: id.into(),
            issuer_of_patient_id: issuer.into(),
            ..Default::default()
        };
        store.commit_instance(&inst, &attrs).unwrap();
    }

    /// One Patient ID from two issuers is two patients: two rows at the PATIENT level, and
    /// a query naming the issuer finds only its own patient's studies.
    #[test]
    fn a_patient_id_of_two_issuers_is_two_patients() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (uid, issuer) in [
            ("1.5.1", "HOSP_A"),
            ("1.5.2", "HOSP_B"),
            ("1.5.3", "HOSP_A"),
        ] {
            study_of_issuer(&store, uid, "123", issuer);
        }
        let patients = found(
            &store,
            Model::PatientRoot,
            "PATIENT",
            &[(tags::PATIENT_ID, VR::LO, "123")],
            usize::MAX,
        );
        assert_eq!(patients.len(), 2, "{patients:?}");
        let mut of_a = found(
            &store,
            Model::StudyRoot,
            "STUDY",
            &[
                (tags::PATIENT_ID, VR::LO, "123"),
                (tags::ISSUER_OF_PATIENT_ID, VR::LO, "HOSP_A"),
                (tags::STUDY_INSTANCE_UID, VR::UI, ""),
            ],
            usize::MAX,
        );
        of_a.sort();
        assert_eq!(of_a, ["1.5.1", "1.5.3"]);
    }

    /// `-` alone bounds nothing (universal); a key that narrows to more than
    /// `MAX_NARROWED` studies does not load them at once.
    #[test]
    fn broad_keys_do_not_narrow() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_of(dir.path(), &[("1.5.1", "P1", "20240101", "")]);
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            tags::QUERY_RETRIEVE_LEVEL,
            VR::CS,
            PrimitiveValue::from("STUDY"),
        ));
        obj.put(DataElement::new(
            tags::STUDY_DATE,
            VR::DA,
            PrimitiveValue::from("-"),
        ));
        let query = parse(&obj, Model::StudyRoot).unwrap();
        assert!(narrowed(&store, &query).unwrap().is_none());
        for i in 0..=MAX_NARROWED + 1 {
            let inst = InstanceRecord {
                sop_instance_uid: format!("2.{i}.1"),
                study_instance_uid: format!("2.{i}"),
                series_instance_uid: format!("2.{i}.9"),
                ..Default::default()
            };
            let attrs = StudyRecord {
                patient_id: format!("Q{i}"),
                study_date: "20250101".into(),
                ..Default::default()
            };
            store.commit_instance(&inst, &attrs).unwrap();
        }
        obj.put(DataElement::new(
            tags::STUDY_DATE,
            VR::DA,
            PrimitiveValue::from("20250101"),
        ));
        let query = parse(&obj, Model::StudyRoot).unwrap();
        assert!(narrowed(&store, &query).unwrap().is_none());
        assert_eq!(
            found(
                &store,
                Model::StudyRoot,
                "STUDY",
                &[
                    (tags::STUDY_DATE, VR::DA, "20250101"),
                    (tags::STUDY_INSTANCE_UID, VR::UI, "")
                ],
                usize::MAX
            )
            .len(),
            MAX_NARROWED + 2
        );
        // A narrow key beside the broad one still finds its study, though the broad key's
        // index scan stopped before reaching it ("2.999" sorts last): a partial set is
        // never intersected.
        assert_eq!(
            found(
                &store,
                Model::StudyRoot,
                "STUDY",
                &[
                    (tags::STUDY_DATE, VR::DA, "20250101"),
                    (tags::PATIENT_ID, VR::LO, "Q999"),
                    (tags::STUDY_INSTANCE_UID, VR::UI, "")
                ],
                usize::MAX
            ),
            ["2.999"]
        );
    }

    /// The patient's counts are answered where the patient's studies are grouped (PATIENT
    /// level) and left empty below it, never answered as zero.
    #[test]
    fn patient_counts_are_answered_at_patient_level_and_empty_below() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_of(
            dir.path(),
            &[("1.2.1", "A", "20240101", "1000"), ("1.2.2", "A", "", "")],
        );
        let counts = |level: &str, model: Model| {
            let mut obj = InMemDicomObject::new_empty();
            obj.put(DataElement::new(
                tags::QUERY_RETRIEVE_LEVEL,
                VR::CS,
                PrimitiveValue::from(level),
            ));
            obj.put(DataElement::new(
                tags::PATIENT_ID,
                VR::LO,
                PrimitiveValue::from("A"),
            ));
            obj.put(DataElement::new(
                tags::NUMBER_OF_PATIENT_RELATED_STUDIES,
                VR::IS,
                PrimitiveValue::Empty,
            ));
            let q = parse(&obj, model).unwrap();
            let mut out = Vec::new();
            run(&store, &q, "DULI", &crate::qr::Stop::default(), &mut |o| {
                out.push(
                    o.element(tags::NUMBER_OF_PATIENT_RELATED_STUDIES)
                        .ok()
                        .and_then(|e| e.to_str().ok().map(|s| s.trim().to_string()))
                        .unwrap_or_default(),
                );
                true
            })
            .unwrap();
            out
        };
        assert_eq!(counts("PATIENT", Model::PatientRoot), ["2"]);
        assert_eq!(counts("STUDY", Model::StudyRoot), ["", ""]);
    }

    /// An identifier of more keys than any query needs is refused before any matching (each
    /// answer says every key back); as many as the bound pass.
    #[test]
    fn identifiers_of_too_many_keys_are_refused() {
        let identifier = |n: u16| {
            let mut obj = InMemDicomObject::new_empty();
            obj.put(DataElement::new(
                tags::QUERY_RETRIEVE_LEVEL,
                VR::CS,
                PrimitiveValue::from("STUDY"),
            ));
            for i in 0..n {
                obj.put(DataElement::new(
                    Tag(0x0011, 0x1000 + i),
                    VR::LO,
                    PrimitiveValue::Empty,
                ));
            }
            parse(&obj, Model::StudyRoot)
        };
        assert_eq!(identifier(MAX_KEYS as u16).unwrap().keys.len(), MAX_KEYS);
        let err = identifier(MAX_KEYS as u16 + 1).unwrap_err();
        assert!(matches!(err, QueryError::TooManyKeys { .. }), "{err}");
        let refused = crate::dimse::Refused::from(err);
        assert_eq!(refused.status().0, 0xA900);
    }

    /// A key value longer than any it could match is refused before any matching (a
    /// pattern of a million stars, say); star runs collapse; a search whose stop flag is
    /// set (an abort, a lost connection) ends without a match. (The reading itself checks
    /// the flag between any two studies, matching or not; that is not observable here.)
    #[test]
    fn overlong_keys_are_refused_and_a_cancel_stops_a_search_that_matches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_of(
            dir.path(),
            &[("1.2.1", "A", "20240101", "1000"), ("1.2.2", "B", "", "")],
        );
        let query_of = |tag: Tag, vr: VR, v: &str| {
            let mut obj = InMemDicomObject::new_empty();
            obj.put(DataElement::new(
                tags::QUERY_RETRIEVE_LEVEL,
                VR::CS,
                PrimitiveValue::from("STUDY"),
            ));
            obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
            parse(&obj, Model::StudyRoot)
        };
        let stars = format!("{}Z", "*".repeat(1_000_000));
        let e = query_of(tags::PATIENT_NAME, VR::PN, &stars).unwrap_err();
        assert!(
            matches!(e, QueryError::ValueTooLong { len: 1_000_001, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("(0010,0010)"), "{e}");
        // A UID list of a retrieve may be long; a single value may not.
        let list = vec!["1.2.3.4.5.6.7.8.9"; 1000].join("\\");
        assert!(query_of(tags::STUDY_INSTANCE_UID, VR::UI, &list).is_ok());
        // Star runs collapse: the matcher holds one.
        let q = query_of(tags::PATIENT_NAME, VR::PN, "A***B").unwrap();
        assert_eq!(
            q.keys[0].matcher,
            matching::Matcher::Wildcard(vec!['A', '*', 'B'])
        );

        // Not narrowed (a description), and the search is stopped.
        let q = query_of(tags::STUDY_DESCRIPTION, VR::LO, "NOTHING*").unwrap();
        let cancel = crate::qr::Stop::default();
        cancel.stop();
        let mut emitted = 0;
        let n = run(&store, &q, "DULI", &cancel, &mut |_| {
            emitted += 1;
            true
        })
        .unwrap();
        assert_eq!((n, emitted), (0, 0));
    }

    /// A query that no indexed key narrows reads the studies in response order from the
    /// index, one at a time; it answers in the very order a narrowed query sorts its
    /// candidates into (Patient ID, date, time, UID), at every level, and a search that
    /// stops early has its first matches.
    #[test]
    fn universal_and_narrowed_queries_answer_in_the_same_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_of(
            dir.path(),
            &[
                ("1.2.7", "B", "20240102", "0900"),
                ("1.2.1", "A", "20240103", "1000"),
                ("1.2.2", "AB", "20240101", "1000"),
                ("1.2.3", "A", "20240101", "1000"),
                ("1.2.4", "A", "20240101", "09"),
                ("1.2.5", "", "20240105", ""),
                ("1.2.6", "A", "", ""),
            ],
        );
        let expected = [
            "1.2.5", "1.2.6", "1.2.4", "1.2.3", "1.2.1", "1.2.2", "1.2.7",
        ];
        let id = (tags::STUDY_INSTANCE_UID, VR::UI, "");
        let universal = found(&store, Model::StudyRoot, "STUDY", &[id], usize::MAX);
        assert_eq!(universal, expected);
        // Not an indexed key: still every study, read in order, filtered.
        let by_time = (tags::STUDY_TIME, VR::TM, "1000");
        assert_eq!(
            found(
                &store,
                Model::StudyRoot,
                "STUDY",
                &[id, by_time],
                usize::MAX
            ),
            ["1.2.3", "1.2.1", "1.2.2"]
        );
        // Narrowed by the date index (a range that holds every dated study).
        let dated = (tags::STUDY_DATE, VR::DA, "20000101-20991231");
        let narrowed = found(&store, Model::StudyRoot, "STUDY", &[id, dated], usize::MAX);
        let dated_only: Vec<&str> = expected.iter().copied().filter(|u| *u != "1.2.6").collect();
        assert_eq!(narrowed, dated_only);
        assert_eq!(
            found(&store, Model::StudyRoot, "STUDY", &[id], 2),
            ["1.2.5", "1.2.6"]
        );
        let pid = (tags::PATIENT_ID, VR::LO, "");
        assert_eq!(
            found(&store, Model::PatientRoot, "PATIENT", &[pid], usize::MAX),
            ["", "A", "AB", "B"]
        );
        assert_eq!(
            found(&store, Model::StudyRoot, "SERIES", &[id], usize::MAX),
            expected
        );
    }
}
