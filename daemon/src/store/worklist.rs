//! The worklist index: every study with what the console's worklist shows of its latest
//! result ([`ResultSummary`]), in worklist order (urgent first, then the newest), so a
//! page of the worklist is served without reading every study and result.

use crate::model::StudyRecord;
use crate::result::StudyResult;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

/// The finding with the highest probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopFinding {
    /// Display name.
    pub label: String,
    /// Probability in [0, 1].
    pub probability: f32,
}

/// What the worklist shows of a study's latest result.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultSummary {
    /// Result version.
    pub version: u32,
    /// Any study-level finding is positive: the study is listed first.
    pub urgent: bool,
    /// The finding with the highest probability.
    pub top_finding: Option<TopFinding>,
    /// Why the study was not analysed, when it was not.
    pub not_applicable: Option<String>,
    /// What comes with the findings.
    pub caveat: Option<String>,
}

impl ResultSummary {
    /// The summary of `result`.
    pub fn of(result: &StudyResult) -> ResultSummary {
        ResultSummary {
            version: result.version,
            urgent: result.triage,
            top_finding: result
                .findings
                .iter()
                .max_by(|a, b| a.probability.total_cmp(&b.probability))
                .map(|f| TopFinding {
                    label: f.label.clone(),
                    probability: f.probability,
                }),
            not_applicable: result.not_applicable_reason(),
            caveat: result.caveat(),
        }
    }
}

/// One study of the worklist: its record and its latest result's summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The study record.
    pub study: StudyRecord,
    /// The latest result, when one is recorded.
    pub result: Option<ResultSummary>,
}

impl Row {
    /// Whether the latest result marks the study urgent.
    pub fn urgent(&self) -> bool {
        self.result.as_ref().is_some_and(|r| r.urgent)
    }

    /// Where the row sorts: urgent first, then the newest, then by Study Instance UID.
    fn order(&self) -> OrderKey {
        (
            Reverse(self.urgent()),
            Reverse(self.study.first_received),
            self.study.study_instance_uid.clone(),
        )
    }
}

type OrderKey = (Reverse<bool>, Reverse<i64>, String);

/// A page of the worklist: how many rows matched, and the first of them in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    /// Rows that matched.
    pub total: usize,
    /// The first `limit` of them, urgent first, then the newest.
    pub rows: Vec<Row>,
}

/// The worklist index: every study with its latest result's summary, kept in worklist
/// order, so a page is read without decoding every study and result. Derived data: it is
/// built from the study records and results the first time it is asked for, then kept
/// up to date by every commit that changes a study or records a result.
#[derive(Debug, Default)]
pub struct Index {
    rows: HashMap<String, Row>,
    order: BTreeSet<OrderKey>,
    /// How many rows are in each state, kept with the rows.
    states: std::collections::BTreeMap<crate::model::StudyState, u64>,
}

impl Index {
    /// Sets `row` (a new study or a changed one).
    pub fn put(&mut self, row: Row) {
        let uid = row.study.study_instance_uid.clone();
        if let Some(old) = self.rows.get(&uid) {
            self.order.remove(&old.order());
            if let Some(n) = self.states.get_mut(&old.study.state) {
                *n = n.saturating_sub(1);
            }
        }
        *self.states.entry(row.study.state).or_default() += 1;
        self.order.insert(row.order());
        self.rows.insert(uid, row);
    }

    /// A study record was written: its row keeps its result.
    pub fn put_study(&mut self, study: &StudyRecord) {
        let result = self
            .rows
            .get(&study.study_instance_uid)
            .and_then(|r| r.result.clone());
        self.put(Row {
            study: study.clone(),
            result,
        });
    }

    /// A result was recorded for `study_uid`: an older version never replaces a newer one.
    pub fn put_result(&mut self, study_uid: &str, summary: ResultSummary) {
        let Some(row) = self.rows.get(study_uid) else {
            return;
        };
        if row
            .result
            .as_ref()
            .is_some_and(|r| r.version > summary.version)
        {
            return;
        }
        let row = Row {
            study: row.study.clone(),
            result: Some(summary),
        };
        self.put(row);
    }

    /// Whether the study is indexed.
    pub fn contains(&self, study_uid: &str) -> bool {
        self.rows.contains_key(study_uid)
    }

    /// Number of studies in each state (every state listed, zero included).
    pub fn state_counts(&self) -> Vec<(crate::model::StudyState, u64)> {
        crate::model::StudyState::ALL
            .into_iter()
            .map(|s| (s, self.states.get(&s).copied().unwrap_or(0)))
            .collect()
    }

    /// Number of studies.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no study is indexed.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows `keep` accepts, in worklist order: their number, and the first `limit`.
    pub fn page(&self, keep: impl Fn(&Row) -> bool, limit: usize) -> Page {
        let mut page = Page::default();
        for (_, _, uid) in &self.order {
            let Some(row) = self.rows.get(uid) else {
                continue;
            };
            if keep(row) {
                if page.rows.len() < limit {
                    page.rows.push(row.clone());
                }
                page.total += 1;
            }
        }
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn study(uid: &str, received: i64) -> StudyRecord {
        StudyRecord {
            study_instance_uid: uid.into(),
            first_received: received,
            ..Default::default()
        }
    }

    fn summary(version: u32, urgent: bool) -> ResultSummary {
        ResultSummary {
            version,
            urgent,
            top_finding: None,
            not_applicable: None,
            caveat: None,
        }
    }

    fn uids(page: &Page) -> Vec<&str> {
        page.rows
            .iter()
            .map(|r| r.study.study_instance_uid.as_str())
            .collect()
    }

    #[test]
    fn urgent_studies_come_first_then_the_newest() {
        let mut index = Index::default();
        for (uid, t) in [("1", 10), ("2", 30), ("3", 20), ("4", 20)] {
            index.put_study(&study(uid, t));
        }
        index.put_result("1", summary(1, true));
        let page = index.page(|_| true, 10);
        assert_eq!((page.total, uids(&page)), (4, vec!["1", "2", "3", "4"]));
        // A changed study record keeps its result; a later version replaces it.
        index.put_study(&study("1", 10));
        index.put_result("1", summary(2, false));
        assert_eq!(uids(&index.page(|_| true, 10)), vec!["2", "3", "4", "1"]);
        // An older version does not come back.
        index.put_result("1", summary(1, true));
        assert_eq!(uids(&index.page(|_| true, 2)), vec!["2", "3"]);
        let urgent = index.page(Row::urgent, 10);
        assert_eq!((urgent.total, urgent.rows.len()), (0, 0));
        assert_eq!(index.len(), 4);
        // A result for a study not in the index is ignored.
        index.put_result("9", summary(1, true));
        assert_eq!(index.len(), 4);
    }

    /// The per-state counts (what `/metrics` serves) follow every change of a study's
    /// state, without reading the records again.
    #[test]
    fn state_counts_follow_each_study_change() {
        use crate::model::StudyState;
        let mut index = Index::default();
        let count = |index: &Index, state: StudyState| {
            index
                .state_counts()
                .into_iter()
                .find(|(s, _)| *s == state)
                .map(|(_, n)| n)
        };
        for uid in ["1", "2", "3"] {
            index.put_study(&study(uid, 1));
        }
        let first = study("1", 1).state;
        assert_eq!(count(&index, first), Some(3));
        let mut done = study("2", 1);
        done.state = StudyState::Done;
        index.put_study(&done);
        index.put_study(&done);
        assert_eq!(count(&index, StudyState::Done), Some(1));
        assert_eq!(count(&index, first), Some(2));
        assert_eq!(index.state_counts().iter().map(|(_, n)| n).sum::<u64>(), 3);
        assert_eq!(index.state_counts().len(), StudyState::ALL.len());
    }
}
