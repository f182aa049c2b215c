//! The outbox as the console shows it: entries grouped by destination with the
//! per-destination figures, and the technician's retry request.

use crate::deliver::outbox::{Destination, Entry, Outbox, OutboxError, RetrySelector};
use serde::Deserialize;
use serde_json::{json, Value};

/// Most entries listed per destination.
pub const MAX_PER_DESTINATION: usize = 500;

/// One entry without its payload; times relative to `now_ms` as well as absolute.
pub fn entry_json(e: &Entry, now_ms: i64) -> Value {
    json!({
        "id": e.id,
        "dest": e.dest.name(),
        "report_id": e.report_id,
        "kind": e.kind.as_str(),
        "state": e.state.as_str(),
        "attempts": e.attempts,
        "rejections": e.rejections,
        "next_attempt_at": e.next_attempt_at,
        "next_attempt_in_secs": ((e.next_attempt_at - now_ms).max(0) as f64 / 1000.0),
        "last_error": e.last_error,
        "created_at": e.created_at,
        "age_secs": ((now_ms - e.created_at).max(0) as f64 / 1000.0),
    })
}

/// `{"fill", "destinations": [{"dest", "stats", "entries", "more"}]}` with every
/// destination that has a worker or an entry.
pub fn overview(outbox: &Outbox, now_ms: i64) -> Result<Value, OutboxError> {
    let entries = outbox.list(None)?;
    let mut destinations = Vec::new();
    for stats in outbox.stats()? {
        let mine: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.dest.name() == stats.dest)
            .collect();
        destinations.push(json!({
            "dest": stats.dest,
            "stats": stats,
            "entries": mine.iter().take(MAX_PER_DESTINATION).map(|e| entry_json(e, now_ms)).collect::<Vec<_>>(),
            "more": mine.len().saturating_sub(MAX_PER_DESTINATION),
        }));
    }
    Ok(json!({"fill": outbox.fill(), "destinations": destinations}))
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
    pub fn selector(&self) -> Result<RetrySelector, String> {
        match (self.id, &self.destination, self.all) {
            (Some(id), None, false) => Ok(RetrySelector::Id(id)),
            (None, Some(d), false) => d.parse::<Destination>().map(RetrySelector::Destination),
            (None, None, true) => Ok(RetrySelector::All),
            _ => Err("give exactly one of \"id\", \"destination\" or \"all\": true".into()),
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

    fn body(v: Value) -> Result<RetrySelector, String> {
        serde_json::from_value::<RetryBody>(v)
            .map_err(|e| e.to_string())?
            .selector()
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
