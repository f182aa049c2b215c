//! Prometheus metrics: counters, gauges and histograms kept in atomics, rendered in the
//! text exposition format by [`Metrics::render`]. Labelled families that come from the
//! store (studies by state, outbox entries) are rendered from snapshots passed in.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram with fixed bucket bounds (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// A histogram with the given upper bounds.
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, seconds: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if seconds <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let n = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {n}");
    }
}

const STORE_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const INFER_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Every metric the daemon keeps in memory.
#[derive(Debug)]
pub struct Metrics {
    /// Associations open now.
    pub associations_active: AtomicU64,
    /// Associations accepted since start.
    pub associations_total: AtomicU64,
    /// Associations rejected (A-ASSOCIATE-RJ) since start.
    pub associations_rejected_total: AtomicU64,
    /// Connections closed or aborted for protocol violations since start.
    pub protocol_errors_total: AtomicU64,
    /// Unassociated connections closed to make room for newer ones since start.
    pub connections_evicted_total: AtomicU64,
    /// DIMSE requests refused by the per-request check (context, role, permission).
    pub requests_refused_total: AtomicU64,
    /// Instances acknowledged with Success since start.
    pub instances_stored_total: AtomicU64,
    /// C-STORE requests answered with a failure status since start.
    pub instances_failed_total: AtomicU64,
    /// Data-set bytes received since start.
    pub bytes_received_total: AtomicU64,
    /// Storage Commitment reports received, by outcome ([`CommitmentOutcome`]).
    pub commitment_reports_total: [AtomicU64; 3],
    /// Time from the last fragment of an instance to its durable index entry.
    pub store_seconds: Histogram,
    /// Inference time per image.
    pub infer_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            associations_active: AtomicU64::new(0),
            associations_total: AtomicU64::new(0),
            associations_rejected_total: AtomicU64::new(0),
            protocol_errors_total: AtomicU64::new(0),
            connections_evicted_total: AtomicU64::new(0),
            requests_refused_total: AtomicU64::new(0),
            instances_stored_total: AtomicU64::new(0),
            instances_failed_total: AtomicU64::new(0),
            bytes_received_total: AtomicU64::new(0),
            commitment_reports_total: Default::default(),
            store_seconds: Histogram::new(STORE_BUCKETS),
            infer_seconds: Histogram::new(INFER_BUCKETS),
        }
    }
}

/// What became of a Storage Commitment report a PACS sent: the label of
/// `duli_commitment_reports_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitmentOutcome {
    /// It answered a transaction the push was waiting for.
    Answered = 0,
    /// No transaction of its UID was waited for: acknowledged and ignored.
    Ignored = 1,
    /// Refused (unreadable, another instance or event type, another AE's transaction).
    Refused = 2,
}

impl CommitmentOutcome {
    const ALL: [CommitmentOutcome; 3] = [
        CommitmentOutcome::Answered,
        CommitmentOutcome::Ignored,
        CommitmentOutcome::Refused,
    ];

    fn label(self) -> &'static str {
        match self {
            CommitmentOutcome::Answered => "answered",
            CommitmentOutcome::Ignored => "ignored",
            CommitmentOutcome::Refused => "refused",
        }
    }
}

impl Metrics {
    /// Counts one Storage Commitment report by what became of it.
    pub fn commitment_report(&self, outcome: CommitmentOutcome) {
        self.commitment_reports_total[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Values read from the store at scrape time.
#[derive(Debug, Default, Clone)]
pub struct StoreSnapshot {
    /// Instances in the index.
    pub instances: u64,
    /// Studies per state name.
    pub studies: Vec<(&'static str, u64)>,
    /// Outbox entries per (destination, state).
    pub outbox: Vec<(String, String, u64)>,
    /// Age in seconds of the oldest undelivered entry per destination.
    pub outbox_oldest: Vec<(String, f64)>,
    /// Audit records on the box and the trail's budget (0: none).
    pub audit: (u64, u64),
}

fn counter(out: &mut String, name: &str, kind: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
    );
}

impl Metrics {
    /// Renders every metric in the Prometheus text format.
    pub fn render(&self, snap: &StoreSnapshot) -> String {
        let mut out = String::with_capacity(4096);
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "duli_associations_active",
            "gauge",
            "DICOM associations open now.",
            l(&self.associations_active),
        );
        counter(
            &mut out,
            "duli_associations_total",
            "counter",
            "DICOM associations accepted.",
            l(&self.associations_total),
        );
        counter(
            &mut out,
            "duli_associations_rejected_total",
            "counter",
            "DICOM associations rejected.",
            l(&self.associations_rejected_total),
        );
        counter(
            &mut out,
            "duli_protocol_errors_total",
            "counter",
            "Connections aborted for protocol violations.",
            l(&self.protocol_errors_total),
        );
        counter(
            &mut out,
            "duli_connections_evicted_total",
            "counter",
            "Unassociated DICOM connections closed to make room for newer ones.",
            l(&self.connections_evicted_total),
        );
        counter(
            &mut out,
            "duli_requests_refused_total",
            "counter",
            "DIMSE requests refused: wrong context, role or permission.",
            l(&self.requests_refused_total),
        );
        counter(
            &mut out,
            "duli_instances_stored_total",
            "counter",
            "Instances stored and acknowledged with Success.",
            l(&self.instances_stored_total),
        );
        counter(
            &mut out,
            "duli_instances_failed_total",
            "counter",
            "C-STORE requests answered with a failure status.",
            l(&self.instances_failed_total),
        );
        counter(
            &mut out,
            "duli_store_instances",
            "gauge",
            "Instances in the index.",
            snap.instances,
        );
        counter(
            &mut out,
            "duli_bytes_received_total",
            "counter",
            "Data set bytes received over DICOM.",
            l(&self.bytes_received_total),
        );
        let _ = writeln!(
            out,
            "# HELP duli_commitment_reports_total Storage Commitment reports received from PACS, by outcome.\n# TYPE duli_commitment_reports_total counter"
        );
        for outcome in CommitmentOutcome::ALL {
            let _ = writeln!(
                out,
                "duli_commitment_reports_total{{outcome=\"{}\"}} {}",
                outcome.label(),
                l(&self.commitment_reports_total[outcome as usize])
            );
        }
        self.store_seconds.render(
            &mut out,
            "duli_store_seconds",
            "Last fragment received to durable index entry, per instance.",
        );
        self.infer_seconds
            .render(&mut out, "duli_infer_seconds", "Inference time per image.");
        let _ = writeln!(
            out,
            "# HELP duli_studies Studies by state.\n# TYPE duli_studies gauge"
        );
        for (state, n) in &snap.studies {
            let _ = writeln!(out, "duli_studies{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP duli_outbox_entries Outbox entries by destination and state.\n# TYPE duli_outbox_entries gauge");
        for (dest, state, n) in &snap.outbox {
            let _ = writeln!(
                out,
                "duli_outbox_entries{{dest=\"{dest}\",state=\"{state}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# HELP duli_outbox_oldest_seconds Age of the oldest undelivered entry.\n# TYPE duli_outbox_oldest_seconds gauge");
        for (dest, age) in &snap.outbox_oldest {
            let _ = writeln!(out, "duli_outbox_oldest_seconds{{dest=\"{dest}\"}} {age}");
        }
        let (held, max) = snap.audit;
        counter(
            &mut out,
            "duli_audit_records",
            "gauge",
            "Audit records on this box.",
            held,
        );
        if max > 0 {
            let _ = writeln!(
                out,
                "# HELP duli_audit_records_ratio Audit records on this box over [audit] max_records (alarm from 0.9).\n# TYPE duli_audit_records_ratio gauge\nduli_audit_records_ratio {}",
                held as f64 / max as f64
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_labels() {
        let m = Metrics::default();
        m.instances_stored_total.fetch_add(3, Ordering::Relaxed);
        m.store_seconds.observe(0.02);
        m.store_seconds.observe(3.0);
        let text = m.render(&StoreSnapshot {
            instances: 7,
            studies: vec![("receiving", 1), ("done", 2)],
            audit: (450, 500),
            ..Default::default()
        });
        assert!(text.contains("duli_audit_records 450\n"), "{text}");
        assert!(text.contains("duli_audit_records_ratio 0.9\n"), "{text}");
        assert!(text.contains("duli_instances_stored_total 3\n"));
        assert!(text.contains("duli_store_instances 7\n"));
        assert!(text.contains("duli_store_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(text.contains("duli_store_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("duli_store_seconds_count 2\n"));
        assert!(text.contains("duli_studies{state=\"done\"} 2\n"));
    }
}
