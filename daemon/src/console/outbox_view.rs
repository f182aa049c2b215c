//! The outbox as the console shows it: entries grouped by destination with the
//! per-destination figures, and the technician's retry request.

use super::services::DeliveryQueue;
use crate::store::outbox::{
    DestStats, Destination, Entry, Fill, OutboxError, RetrySelector, SelectorError,
};
use serde::{Deserialize, Serialize};

/// Most entries listed per destination.
pub const MAX_PER_DESTINATION: usize = 500;

/// One entry without its payload; times relative to `now_ms` as well as absolute.
#[derive(Debug, Serialize)]
pub struct EntryView<'a> {
    /// Entry id.
    pub id: u64,
    /// Destination name.
    pub dest: String,
    /// Report the entry delivers.
    pub report_id: &'a str,
    /// Message kind.
    pub kind: &'static str,
    /// `queued`, `retrying`, `dead` or `delivered`.
    pub state: &'static str,
    /// Attempts made.
    pub attempts: u32,
    /// Rejections by the peer.
    pub rejections: u32,
    /// Next attempt, milliseconds since the epoch.
    pub next_attempt_at: i64,
    /// Seconds until the next attempt.
    pub next_attempt_in_secs: f64,
    /// The last failure (our words and the peer's code).
    pub last_error: Option<&'a str>,
    /// Whether the peer gave words of its own with the last refusal: they may name the
    /// patient, so they are not listed here but read one entry at a time, audited
    /// (`GET /api/v1/outbox/{id}/peer-text`).
    pub peer_text: bool,
    /// Creation time, milliseconds since the epoch.
    pub created_at: i64,
    /// Seconds since creation.
    pub age_secs: f64,
}

impl<'a> EntryView<'a> {
    /// The view of `e` at `now_ms`.
    pub fn new(e: &'a Entry, now_ms: i64) -> EntryView<'a> {
        EntryView {
            id: e.id,
            dest: e.dest.name(),
            report_id: &e.report_id,
            kind: e.kind.as_str(),
            state: e.state.as_str(),
            attempts: e.attempts,
            rejections: e.rejections,
            next_attempt_at: e.next_attempt_at,
            next_attempt_in_secs: (e.next_attempt_at - now_ms).max(0) as f64 / 1000.0,
            last_error: e.last_error.as_deref(),
            peer_text: e.peer_text.is_some(),
            created_at: e.created_at,
            age_secs: (now_ms - e.created_at).max(0) as f64 / 1000.0,
        }
    }
}

/// One destination: its figures and its first [`MAX_PER_DESTINATION`] entries.
#[derive(Debug, Serialize)]
pub struct DestinationView<'a> {
    /// Destination name.
    pub dest: String,
    /// Its figures.
    pub stats: DestStats,
    /// Its entries, at most [`MAX_PER_DESTINATION`].
    pub entries: Vec<EntryView<'a>>,
    /// Entries not listed.
    pub more: usize,
}

/// The outbox page: the fill level and every destination with a worker or an entry.
#[derive(Debug, Serialize)]
pub struct Overview<'a> {
    /// Fill level against the bounds.
    pub fill: Fill,
    /// Destinations.
    pub destinations: Vec<DestinationView<'a>>,
}

/// The overview of `entries` (the first [`MAX_PER_DESTINATION`] of each destination of
/// `delivery`) at `now_ms`.
pub fn overview<'a>(
    delivery: &dyn DeliveryQueue,
    entries: &'a [Entry],
    now_ms: i64,
) -> Result<Overview<'a>, OutboxError> {
    let mut destinations = Vec::new();
    for stats in delivery.stats()? {
        let mine: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.dest.name() == stats.dest)
            .collect();
        destinations.push(DestinationView {
            dest: stats.dest.clone(),
            entries: mine
                .iter()
                .take(MAX_PER_DESTINATION)
                .map(|e| EntryView::new(e, now_ms))
                .collect(),
            more: usize::try_from(stats.queued + stats.retrying + stats.dead)
                .unwrap_or(usize::MAX)
                .saturating_sub(mine.len().min(MAX_PER_DESTINATION)),
            stats,
        });
    }
    Ok(Overview {
        fill: delivery.fill(),
        destinations,
    })
}

/// Why a retry body selects nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryBodyError {
    /// None or several of `id`, `destination` and `all`.
    #[error("give exactly one of \"id\", \"destination\" or \"all\": true")]
    NotExactlyOne,
    /// The destination is unknown.
    #[error(transparent)]
    Destination(#[from] SelectorError),
}

/// Body of `POST /api/v1/outbox/retry`: exactly one of `id`, `destination`, `all: true`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBody {
    /// One entry.
    #[serde(default)]
    pub id: Option<u64>,
    /// Every dead or retrying entry of one destination (`hl7`, `mqtt`, `pacs:NAME`).
    #[serde(default)]
    pub destination: Option<String>,
    /// Every dead or retrying entry.
    #[serde(default)]
    pub all: bool,
}

impl RetryBody {
    /// The selector it asks for, or why it is not one.
    pub fn selector(&self) -> Result<RetrySelector, RetryBodyError> {
        match (self.id, &self.destination, self.all) {
            (Some(id), None, false) => Ok(RetrySelector::Id(id)),
            (None, Some(d), false) => Ok(RetrySelector::Destination(d.parse::<Destination>()?)),
            (None, None, true) => Ok(RetrySelector::All),
            _ => Err(RetryBodyError::NotExactlyOne),
        }
    }
}

/// How a selector reads in the audit trail.
pub fn describe(which: &RetrySelector) -> String {
    match which {
        RetrySelector::Id(id) => format!("entry {id}"),
        RetrySelector::Destination(d) => format!("destination {d}"),
        RetrySelector::All => "all destinations".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// The selector of a body, or whether it failed to parse (`Err(None)`) or to select.
    fn body(v: Value) -> Result<RetrySelector, Option<RetryBodyError>> {
        serde_json::from_value::<RetryBody>(v)
            .map_err(|_| None)?
            .selector()
            .map_err(Some)
    }

    #[test]
    fn retry_bodies_select_one_thing() {
        assert_eq!(body(json!({"id": 7})), Ok(RetrySelector::Id(7)));
        assert_eq!(
            body(json!({"destination": "pacs:main"})),
            Ok(RetrySelector::Destination(Destination::Pacs("main".into())))
        );
        assert_eq!(body(json!({"all": true})), Ok(RetrySelector::All));
        assert!(body(json!({})).is_err());
        assert!(body(json!({"id": 1, "all": true})).is_err());
        assert!(body(json!({"destination": "fax"})).is_err());
    }
}
