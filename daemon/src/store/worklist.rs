//! What the console's worklist shows of each study's latest result ([`ResultSummary`]).

use crate::result::StudyResult;
use serde::Serialize;

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
