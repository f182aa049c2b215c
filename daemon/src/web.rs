//! Store-side gauges for `/metrics` (served by the console's HTTPS listener, see
//! [`crate::console`]).

use crate::metrics::StoreSnapshot;
use crate::store::Store;

/// Reads the store-side gauges for a scrape.
pub fn snapshot(store: &Store) -> StoreSnapshot {
    StoreSnapshot {
        instances: store.instance_count(),
        studies: store
            .study_state_counts()
            .unwrap_or_default()
            .into_iter()
            .map(|(s, n)| (s.as_str(), n))
            .collect(),
        ..Default::default()
    }
}
