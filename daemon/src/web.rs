//! The console listener (`[console] bind`/`port`): `/healthz` and `/metrics` (Prometheus)
//! now; the console and its API join it behind TLS.

use crate::metrics::{Metrics, StoreSnapshot};
use crate::store::Store;
use std::sync::Arc;
use warp::Filter;

/// What the handlers read.
#[derive(Clone)]
pub struct WebState {
    /// The store (for gauges read at scrape time).
    pub store: Arc<Store>,
    /// In-memory metrics.
    pub metrics: Arc<Metrics>,
    /// The audit trail.
    pub audit: Arc<crate::audit::Audit>,
    /// The outbox, for its gauges.
    pub outbox: Option<Arc<crate::deliver::outbox::Outbox>>,
}

/// Reads the store-side gauges for a scrape.
pub fn snapshot(store: &Store, outbox: Option<&crate::deliver::outbox::Outbox>) -> StoreSnapshot {
    let stats = outbox.and_then(|o| o.stats().ok()).unwrap_or_default();
    StoreSnapshot {
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
            .study_state_counts()
            .unwrap_or_default()
            .into_iter()
            .map(|(s, n)| (s.as_str(), n))
            .collect(),
    }
}

/// The routes of the listener.
pub fn routes(
    state: WebState,
) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
    let health = warp::path("healthz")
        .and(warp::path::end())
        .map(|| warp::reply::with_header(r#"{"status":"ok"}"#, "content-type", "application/json"));
    let metrics = warp::path("metrics").and(warp::path::end()).map(move || {
        let snap = snapshot(&state.store, state.outbox.as_deref());
        warp::reply::with_header(
            state.metrics.render(&snap),
            "content-type",
            "text/plain; version=0.0.4",
        )
    });
    warp::get().and(health.or(metrics))
}

/// Serves the routes on an already bound listener until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: WebState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    warp::serve(routes(state))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}
