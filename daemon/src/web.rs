//! Store-side gauges for `/metrics` (served by the console's HTTPS listener, see
//! [`crate::console`]).

use crate::metrics::StoreSnapshot;
use crate::store::Store;

/// Reads the store-side gauges for a scrape (`audit`: the trail's fill).
pub fn snapshot(
    store: &Store,
    stats: &[crate::store::outbox::DestStats],
    audit: crate::audit::budget::BudgetState,
) -> StoreSnapshot {
    StoreSnapshot {
        audit: (audit.held, audit.max_records),
        outbox: stats
            .iter()
            .flat_map(|d| {
                [
                    (d.dest.clone(), "queued".to_string(), d.queued),
                    (d.dest.clone(), "retrying".to_string(), d.retrying),
                    (d.dest.clone(), "dead".to_string(), d.dead),
                    (d.dest.clone(), "delivered".to_string(), d.delivered_total),
                ]
            })
            .collect(),
        outbox_oldest: stats
            .iter()
            .map(|d| (d.dest.clone(), d.oldest_seconds))
            .collect(),
        instances: store.instance_count(),
        studies: store
            .indexed_state_counts()
            .unwrap_or_default()
            .into_iter()
            .map(|(s, n)| (s.as_str(), n))
            .collect(),
    }
}
