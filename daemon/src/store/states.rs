//! Study states: every change goes through the checked transition, which says what a
//! study is in when it is not in an expected state; and the count per state.

use super::records;
use super::{Change, Store, StoreError};
use crate::model::{StudyRecord, StudyState};

impl Store {
    /// Moves a study to state `to`, clearing its error reason, if it is in one of `from`;
    /// otherwise nothing changes and [`StoreError::Transition`] says what it is in. The
    /// new record is broadcast. Not durable until [`Store::flush`].
    pub fn transition(
        &self,
        study_uid: &str,
        from: &[StudyState],
        to: StudyState,
    ) -> Result<StudyRecord, StoreError> {
        self.checked_state_change(study_uid, from, to, None)
    }

    /// [`Store::transition`] to `error`, recording `reason`.
    pub fn transition_to_error(
        &self,
        study_uid: &str,
        from: &[StudyState],
        reason: &str,
    ) -> Result<StudyRecord, StoreError> {
        self.checked_state_change(study_uid, from, StudyState::Error, Some(reason.to_string()))
    }

    pub(super) fn checked_state_change(
        &self,
        study_uid: &str,
        from: &[StudyState],
        to: StudyState,
        error: Option<String>,
    ) -> Result<StudyRecord, StoreError> {
        let mut found = None;
        let rec = records::update_json(
            &self.studies,
            study_uid.as_bytes(),
            |s: &mut StudyRecord| {
                if from.contains(&s.state) {
                    found = None;
                    s.state = to;
                    s.error = error.clone();
                } else {
                    found = Some(s.state);
                }
            },
        )?;
        let Some(rec) = rec else {
            return Err(StoreError::UnknownStudy(study_uid.to_string()));
        };
        match found {
            None => {
                self.notify(Change::Study(Box::new(rec.clone())));
                Ok(rec)
            }
            Some(found) => Err(StoreError::Transition {
                uid: study_uid.to_string(),
                found: found.as_str(),
                expected: from
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("|"),
                to: to.as_str(),
            }),
        }
    }

    /// Changes a study record atomically with `f`, and broadcasts the result (tests that set
    /// a study's fields; the pipeline changes states through [`Store::transition`]).
    #[cfg(test)]
    pub(super) fn update_study(
        &self,
        study_uid: &str,
        f: impl FnMut(&mut StudyRecord),
    ) -> Result<Option<StudyRecord>, StoreError> {
        let rec = records::update_json(&self.studies, study_uid.as_bytes(), f)?;
        if let Some(r) = &rec {
            self.notify(Change::Study(Box::new(r.clone())));
        }
        Ok(rec)
    }

    /// Counts studies per state.
    pub fn study_state_counts(&self) -> Result<Vec<(StudyState, u64)>, StoreError> {
        let mut counts = std::collections::BTreeMap::new();
        for s in StudyState::ALL {
            counts.insert(s, 0u64);
        }
        for s in self.studies()? {
            *counts.entry(s.state).or_default() += 1;
        }
        Ok(counts.into_iter().collect())
    }

    /// Sets a study's state without the check of [`Store::transition`] (tests that need a
    /// study in a given state).
    #[cfg(test)]
    pub(crate) fn force_state(&self, study_uid: &str, state: StudyState) {
        self.update_study(study_uid, |s| s.state = state)
            .expect("study state")
            .expect("known study");
    }
}
