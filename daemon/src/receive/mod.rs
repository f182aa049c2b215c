//! The receive stage: the DICOM SCP that modalities send to.
//!
//! - [`policy`]: what is offered (SOP classes, transfer syntaxes) built from the config.
//! - [`server`]: the listener, ARTIM timer, association cap and graceful shutdown.
//! - [`unassociated`]: the bounded table of connections still to associate.
//! - [`address_share`]: each address's share of the association slots.
//! - [`rejections`]: which refused associations reach the audit trail (once per window).
//! - [`association`]: one association's PDU loop, dispatching DIMSE messages to services.
//! - [`authorize`]: whether one DIMSE request may run (context, role, permission).
//! - [`echo`] and [`store`]: the Verification and Storage services; Query/Retrieve
//!   requests are handed to [`crate::qr`].
//! - [`commitment_report`]: a PACS's Storage Commitment report (N-EVENT-REPORT), handed to
//!   the result push that asked for it.

pub mod address_share;
pub mod association;
pub mod authorize;
pub mod commitment_report;
pub mod echo;
pub mod policy;
pub mod rejections;
pub mod server;
pub mod store;
pub mod unassociated;

use crate::assemble;
use crate::audit::Audit;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::ul::negotiate::Policy;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A check run before accepting an instance; `Some(reason)` refuses it with A700 (out of
/// resources), e.g. when the outbox is full.
pub type Admission = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Everything the SCP's tasks share: built from the configuration by [`Scp::new`] and
/// the admission checks added with [`Scp::with_admission`]; its fields are the receive
/// module's own.
pub struct Scp {
    /// Negotiation policy.
    pub(crate) policy: Policy,
    /// The store instances go to.
    pub(crate) store: Arc<Store>,
    /// Metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Where stored instances are reported for study assembly.
    pub(crate) events: mpsc::Sender<assemble::Event>,
    /// ARTIM timeout: a connection must associate within it.
    pub(crate) artim: Duration,
    /// Idle timeout of an open association.
    pub(crate) idle: Duration,
    /// Cap on concurrent associations.
    pub(crate) max_associations: usize,
    /// Associations open per client address, at most `dicom.max_associations_per_address`.
    pub(crate) per_address: address_share::AddressShare,
    /// Free bytes to keep on the data disk; below it C-STORE answers A700, and an instance
    /// still streaming in is aborted.
    pub(crate) disk_reserve: u64,
    /// Largest instance accepted (bytes of the Part 10 file); past it the association is
    /// aborted (`dicom.max_instance_mb`).
    pub(crate) max_instance: u64,
    /// At shutdown, how long open associations may run on before they are aborted.
    pub(crate) drain: Duration,
    /// Extra admission checks (outbox bound, …).
    pub(crate) admission: Vec<Admission>,
    /// The audit trail (queries and retrieves are recorded).
    pub(crate) audit: Arc<Audit>,
    /// Known AEs (`[[pacs.destinations]]`); those with `move = true` are C-MOVE destinations.
    pub(crate) move_destinations: Vec<crate::config::PacsDestination>,
    /// Largest image decoded for retrieval (`inference.max_pixels`).
    pub(crate) max_pixels: u64,
    /// Most C-FIND matches answered for one request (`dicom.max_find_matches`).
    pub(crate) max_find_matches: usize,
    /// Most instances one study may hold (`dicom.max_instances_per_study`).
    pub(crate) max_instances_per_study: u64,
    /// Connections still to associate, bounded in total and per address.
    pub(crate) unassociated: Arc<unassociated::Unassociated>,
    pub(crate) active: AtomicUsize,
    pub(crate) next_id: AtomicU64,
    /// Which refused associations are audited ([`rejections`]).
    pub(crate) rejections: rejections::Rejections,
    /// Queries and retrieves of the last minute, by client (an IPv4 address, an IPv6 /64:
    /// a host may rotate through its whole /64), whatever calling AE titles it uses: a
    /// title is the peer's to choose, so a budget per title would be a budget per guess
    /// (`dicom.max_qr_requests_per_minute`).
    pub(crate) qr_rate: crate::rate::Rate<crate::client_key::ClientKey>,
    /// The push's Storage Commitment transactions, answered by N-EVENT-REPORTs received here.
    pub(crate) commitments: Arc<crate::deliver::commitment::Commitments>,
}

/// The shared handles an SCP is built from.
#[derive(Debug, Clone)]
pub struct ScpParts {
    /// The store instances go to.
    pub store: Arc<Store>,
    /// The audit trail.
    pub audit: Arc<Audit>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Where stored instances are reported for study assembly.
    pub events: mpsc::Sender<assemble::Event>,
    /// Where Storage Commitment reports from a PACS go (the push waits for them).
    pub commitments: Arc<crate::deliver::commitment::Commitments>,
}

impl Scp {
    /// The SCP of `config`: its negotiation policy, timeouts, association and connection
    /// caps, instance size limit, disk reserve and C-MOVE destinations, with no admission
    /// check yet ([`Scp::with_admission`]).
    pub fn new(parts: ScpParts, config: &crate::config::Config) -> Scp {
        let ScpParts {
            store,
            audit,
            metrics,
            events,
            commitments,
        } = parts;
        let dicom = &config.dicom;
        Scp {
            policy: policy::policy(config),
            store,
            metrics,
            events,
            artim: Duration::from_secs(dicom.artim_timeout),
            idle: Duration::from_secs(dicom.idle_timeout),
            max_associations: dicom.max_associations,
            per_address: address_share::AddressShare::new(
                dicom
                    .max_associations_per_address
                    .min(dicom.max_associations),
            ),
            disk_reserve: config.retention.disk_reserve_bytes(),
            max_instance: dicom.max_instance_mb * 1024 * 1024,
            drain: crate::supervise::drain::ASSOCIATIONS,
            admission: Vec::new(),
            audit,
            move_destinations: config.pacs.destinations.clone(),
            max_pixels: config.inference.max_pixels,
            max_find_matches: config.dicom.max_find_matches,
            max_instances_per_study: config.dicom.max_instances_per_study,
            unassociated: unassociated::Unassociated::new(
                dicom.max_pending_connections,
                dicom.max_pending_per_address,
            ),
            active: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            rejections: rejections::Rejections::default(),
            commitments,
            qr_rate: crate::rate::Rate::new(
                config.dicom.max_qr_requests_per_minute,
                std::time::Duration::from_secs(60),
            ),
        }
    }

    /// Adds a check run before each instance is accepted (`Some(reason)` refuses it).
    pub fn with_admission(mut self, check: Admission) -> Scp {
        self.admission.push(check);
        self
    }
}
