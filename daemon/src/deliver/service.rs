//! Starts delivery in the daemon: the site secret, the outbox, one worker per configured
//! destination (HL7, MQTT, each PACS with `push = true`), and the periodic health message
//! that also anchors the audit trail's head off the box.

use super::export_audit::ExportAudit;
use super::hl7::client::{Hl7Channel, Hl7Target};
use super::mqtt::client::{MqttChannel, MqttSettings};
use super::mqtt::payload::{health_payload, to_json, Health};
use super::pacs::PacsChannel;
use super::plan::DeliveryPlan;
use super::worker::{self, WorkerOptions};
use super::Channel;
use crate::audit::Audit;
use crate::config::Config;
use crate::site_secret::SiteSecret;
use crate::store::outbox::{Destination, Outbox, OutboxLimits};
use crate::store::Store;
use crate::supervise::{self, Backoff, Shutdown};
use anyhow::{Context, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the health message is refreshed.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(60);

/// A running delivery stage.
pub struct Delivery {
    /// The outbox (shared with the result commit and the receive side's admission check).
    pub outbox: Arc<Outbox>,
    /// What each report owes.
    pub plan: DeliveryPlan,
    /// The key of the pseudonyms.
    pub secret: Arc<SiteSecret>,
    /// The Storage Commitment transactions of the PACS push, whose reports the SCP hands in.
    pub commitments: Arc<super::commitment::Commitments>,
    shutdown: supervise::Shutdown,
}

impl Delivery {
    /// Stops the workers (the MQTT one publishes `offline`) and waits for them.
    pub async fn stop(self) {
        self.shutdown.stop(Some(supervise::drain::DELIVERY)).await;
    }
}

/// Opens the outbox and starts the workers of `config`, each supervised (restarted when
/// it ends unexpectedly) with a heartbeat among the stages of `daemon`; delivery has a
/// stop signal of its own ([`Delivery::stop`]). A destination whose TLS files do not load
/// is logged and not started; the others and the rest of the daemon run. `metrics` counts
/// the Storage Commitment reports the push takes.
pub fn start(
    config: &Config,
    store: &Arc<Store>,
    audit: &Arc<Audit>,
    model: &str,
    metrics: &Arc<crate::metrics::Metrics>,
    daemon: &Shutdown,
) -> Result<Delivery> {
    let secret = SiteSecret::load_or_generate(&config.site_secret_path()).with_context(|| {
        format!(
            "site secret {} (device.site_secret)",
            config.site_secret_path().display()
        )
    })?;
    let secret = Arc::new(secret);
    let outbox = Arc::new(
        store
            .outbox(OutboxLimits::default())
            .context("cannot open the outbox")?,
    );
    let plan = DeliveryPlan::from_config(config);
    let commitments = super::commitment::Commitments::counted(metrics.clone());
    dead_letter_unserved(&outbox, &plan, config);
    let mut shutdown = daemon.sharing_stages();
    // HL7 and each PACS destination count explicit refusals towards dead-lettering, each
    // against its own limit.
    let refusals = |max_rejections| WorkerOptions {
        max_rejections,
        ..Default::default()
    };
    for dest in plan.destinations() {
        match &dest {
            Destination::Hl7 => {
                let target = match Hl7Target::from_config(&config.hl7) {
                    Ok(t) => t,
                    Err(e) => {
                        not_started(&dest, "[hl7]", &e);
                        continue;
                    }
                };
                let options = refusals(config.hl7.max_rejections);
                let ris = format!("RIS {}:{}", target.host, target.port);
                let receiver = format!("hl7:{}:{}", target.host, target.port);
                let exports = Some(ExportAudit::new(audit.clone(), ris).to(&receiver));
                let task = spawn_worker(&shutdown, &outbox, dest, options, exports, move || {
                    Hl7Channel::new(target.clone())
                });
                shutdown.track(task);
            }
            Destination::Mqtt => {
                let settings = match MqttSettings::from_config(config) {
                    Ok(s) => s,
                    Err(e) => {
                        not_started(&dest, "[mqtt]", &e);
                        continue;
                    }
                };
                let parts = Parts {
                    config,
                    store,
                    audit,
                    outbox: &outbox,
                };
                start_mqtt(&mut shutdown, parts, &secret, model, dest, settings);
            }
            Destination::Pacs(name) => {
                let Some(d) = config
                    .pacs
                    .destinations
                    .iter()
                    .find(|d| &d.name == name)
                    .cloned()
                else {
                    continue;
                };
                let (store, ae) = (store.clone(), config.dicom.ae_title.clone());
                let commitments = commitments.clone();
                let options = refusals(d.max_rejections);
                let pacs = format!(
                    "PACS {} (AE {} at {}:{})",
                    d.name, d.ae_title, d.host, d.port
                );
                let receiver = format!("ae:{}", d.ae_title.trim());
                let exports = Some(ExportAudit::new(audit.clone(), pacs).to(&receiver));
                let task = spawn_worker(&shutdown, &outbox, dest, options, exports, move || {
                    PacsChannel::new(store.clone(), &d, &ae, &commitments)
                });
                shutdown.track(task);
            }
        }
    }
    start_audit_head(&mut shutdown, audit);
    Ok(Delivery {
        outbox,
        plan,
        secret,
        commitments,
        shutdown,
    })
}

/// What the MQTT worker and its health message read.
struct Parts<'a> {
    config: &'a Config,
    store: &'a Arc<Store>,
    audit: &'a Arc<Audit>,
    outbox: &'a Arc<Outbox>,
}

/// The MQTT worker and the health message it publishes (refreshed every
/// [`HEALTH_INTERVAL`] by its own supervised task).
fn start_mqtt(
    shutdown: &mut Shutdown,
    parts: Parts,
    secret: &Arc<SiteSecret>,
    model: &str,
    dest: Destination,
    settings: MqttSettings,
) {
    let key = secret.clone();
    let (health_tx, health_rx) = watch::channel(String::new());
    let health_tx = Arc::new(health_tx);
    let (config, store, audit, model) = (
        parts.config.clone(),
        parts.store.clone(),
        parts.audit.clone(),
        model.to_string(),
    );
    let (health_outbox, stop) = (parts.outbox.clone(), shutdown.signal());
    let handle = shutdown.supervise("delivery health", Backoff::default(), move |beat| {
        beat.pulse(health_loop(
            config.clone(),
            store.clone(),
            audit.clone(),
            health_outbox.clone(),
            model.clone(),
            health_tx.clone(),
            stop.clone(),
        ))
    });
    shutdown.track(handle);
    let task = spawn_worker(
        shutdown,
        parts.outbox,
        dest,
        WorkerOptions::default(),
        None,
        move || MqttChannel::new(settings.clone(), key.clone()).with_health(health_rx.clone()),
    );
    shutdown.track(task);
}

/// The audit trail's head written to the log every hour, so it is anchored off the trail
/// even without MQTT.
fn start_audit_head(shutdown: &mut Shutdown, audit: &Arc<Audit>) {
    let audit_log = audit.clone();
    let stop = shutdown.signal();
    let task = shutdown.supervise("audit head", Backoff::default(), move |beat| {
        let (audit_log, mut stop) = (audit_log.clone(), stop.clone());
        beat.pulse(async move {
            loop {
                if let Some((seq, hash)) = audit_log.head() {
                    log::info!("audit trail head: record {seq}, hash {hash}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                    _ = stop.changed() => return,
                }
            }
        })
    });
    shutdown.track(task);
}

/// Why entries of a PACS destination no longer served are dead-lettered.
pub const NO_LONGER_CONFIGURED: &str = "destination no longer configured";

/// Dead-letters the pending entries of every PACS destination that has entries but no
/// worker under `plan` (removed from `[[pacs.destinations]]`, or no longer `push = true`):
/// nothing would ever send them. Logged once per destination; they stay listed and can be
/// re-queued (`duli outbox retry pacs:NAME`) once the destination is back.
fn dead_letter_unserved(outbox: &Outbox, plan: &DeliveryPlan, config: &Config) {
    let served = plan.destinations();
    let unserved: std::collections::BTreeSet<Destination> = match outbox.pending_destinations() {
        Ok(dests) => dests.into_iter().filter(|d| !served.contains(d)).collect(),
        Err(e) => {
            log::error!("outbox: cannot look for entries of removed destinations: {e}");
            return;
        }
    };
    for dest in unserved {
        let reason = match &dest {
            Destination::Pacs(name) if config.pacs.destinations.iter().any(|d| &d.name == name) => {
                format!("{NO_LONGER_CONFIGURED} for push (push = false)")
            }
            Destination::Pacs(_) => NO_LONGER_CONFIGURED.to_string(),
            Destination::Hl7 => format!("{NO_LONGER_CONFIGURED} ([hl7] enabled = false)"),
            Destination::Mqtt => format!("{NO_LONGER_CONFIGURED} ([mqtt] enabled = false)"),
        };
        match outbox.dead_letter_all(&dest, &reason) {
            Ok(n) => log::warn!(
                "{dest}: {n} pending entries dead-lettered: {reason}; `duli outbox retry {dest}` \
                 re-queues them once it is configured again"
            ),
            Err(e) => log::error!("{dest}: cannot dead-letter its entries: {e}"),
        }
    }
}

/// Logs that the worker of `dest` cannot start because the TLS files of `section` do not
/// load. The rest of the daemon (receiving, analysis, the other destinations) runs on; the
/// destination's entries wait in the outbox until the files are fixed and the daemon
/// restarted.
fn not_started(dest: &Destination, section: &str, e: &crate::tls::TlsError) {
    log::error!(
        "{dest}: not started, {section} TLS settings do not load: {e}; its messages wait in \
         the outbox"
    );
}

/// Starts the worker of `dest`, supervised by `shutdown`, recording its exports of
/// patient data with `exports`; `channel` makes the channel of each incarnation (a
/// restarted worker starts on a fresh connection).
fn spawn_worker<C: Channel>(
    shutdown: &Shutdown,
    outbox: &Arc<Outbox>,
    dest: Destination,
    options: WorkerOptions,
    exports: Option<ExportAudit>,
    mut channel: impl FnMut() -> C + Send + 'static,
) -> JoinHandle<()> {
    let name = format!("deliver {dest}");
    let (outbox, stop) = (outbox.clone(), shutdown.signal());
    let handle = shutdown.supervise(&name, Backoff::default(), move |beat| {
        let ends = worker::Ends {
            shutdown: stop.clone(),
            beat,
        };
        worker::run_beating(
            outbox.clone(),
            dest.clone(),
            channel(),
            options,
            exports.clone(),
            ends,
        )
    });
    log::info!("{name} started");
    handle
}

/// The outbox's figures, counted off the runtime's threads (empty when they cannot be read).
async fn stats_of(outbox: &Arc<Outbox>) -> Vec<crate::store::outbox::DestStats> {
    let outbox = outbox.clone();
    tokio::task::spawn_blocking(move || outbox.stats())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
}

async fn health_loop(
    config: Config,
    store: Arc<Store>,
    audit: Arc<Audit>,
    outbox: Arc<Outbox>,
    model: String,
    out: Arc<watch::Sender<String>>,
    mut stop: watch::Receiver<bool>,
) {
    let started = Instant::now();
    loop {
        let studies = store
            .study_state_counts()
            .unwrap_or_default()
            .into_iter()
            .map(|(s, n)| (s.as_str().to_string(), n))
            .collect();
        let (free, total) = disk(&store);
        let h = Health {
            software_version: env!("CARGO_PKG_VERSION").to_string(),
            model: model.clone(),
            uptime_seconds: started.elapsed().as_secs(),
            disk_free_bytes: free,
            disk_total_bytes: total,
            studies,
            outbox: stats_of(&outbox).await,
            outbox_fill: Some(outbox.fill()),
            audit_head: audit.head(),
        };
        let payload = health_payload(
            &h,
            &config.device.site_id,
            &config.device.device_id,
            crate::clock::now_secs(),
        );
        let _ = out.send(to_json(&payload));
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            _ = stop.changed() => return,
        }
    }
}

fn disk(store: &Store) -> (u64, u64) {
    match nix::sys::statvfs::statvfs(store.root()) {
        #[allow(clippy::unnecessary_cast)]
        Ok(st) => (
            st.blocks_available() as u64 * st.fragment_size() as u64,
            st.blocks() as u64 * st.fragment_size() as u64,
        ),
        Err(_) => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PacsDestination;
    use crate::store::outbox::{EntryState, Kind, NewEntry, Payload};

    fn destination(name: &str, push: bool) -> PacsDestination {
        PacsDestination {
            name: name.into(),
            ae_title: "PACS".into(),
            host: "10.0.0.1".into(),
            port: 104,
            push,
            move_: true,
            tls: false,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            result_objects: vec![crate::config::ResultObject::Sr],
            max_rejections: 5,
            storage_commitment: false,
            commitment_timeout_s: 300,
        }
    }

    fn entry(dest: &str, report: &str) -> NewEntry {
        NewEntry {
            dest: Destination::Pacs(dest.into()),
            kind: Kind::StructuredReport,
            report_id: report.into(),
            study_instance_uid: "1.2.840.99.1".into(),
            payload: Payload::Dicom {
                sop_instance_uids: vec!["1.2.3".into()],
            },
        }
    }

    /// Entries of a destination that no worker serves any more (a PACS removed or no
    /// longer pushed to, HL7 or MQTT disabled) are dead-lettered at start with the reason,
    /// instead of waiting for good and counting towards the outbox bound; those of a
    /// served destination stay pending.
    #[test]
    fn entries_of_a_removed_destination_are_dead_lettered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let outbox = store.outbox(OutboxLimits::default()).unwrap();
        let hl7 = NewEntry {
            dest: Destination::Hl7,
            kind: Kind::Report,
            report_id: "r1".into(),
            study_instance_uid: "1.2.840.99.1".into(),
            payload: Payload::Hl7 {
                message: "MSH|^~\\&|".into(),
            },
        };
        outbox
            .enqueue(&[
                entry("old", "r1"),
                entry("main", "r1"),
                entry("old", "r2"),
                entry("paused", "r2"),
                hl7,
            ])
            .unwrap();
        let mut config = Config::default();
        config.pacs.destinations = vec![destination("main", true), destination("paused", false)];
        let plan = DeliveryPlan::from_config(&config);
        dead_letter_unserved(&outbox, &plan, &config);

        let of = |name: &str| outbox.list(Some(&Destination::Pacs(name.into()))).unwrap();
        for e in of("old") {
            assert_eq!(e.state, EntryState::Dead, "{e:?}");
            assert_eq!(e.last_error.as_deref(), Some(NO_LONGER_CONFIGURED));
        }
        assert_eq!(of("old").len(), 2);
        let paused = of("paused");
        assert_eq!(paused[0].state, EntryState::Dead);
        assert!(paused[0]
            .last_error
            .as_deref()
            .is_some_and(|r| r.starts_with(NO_LONGER_CONFIGURED)));
        assert_eq!(of("main")[0].state, EntryState::Queued);
        let hl7 = outbox.list(Some(&Destination::Hl7)).unwrap();
        assert_eq!(hl7[0].state, EntryState::Dead, "HL7 is not enabled");
        assert!(hl7[0]
            .last_error
            .as_deref()
            .is_some_and(|r| r.contains("[hl7] enabled = false")));
        assert!(outbox
            .head(&Destination::Pacs("old".into()))
            .unwrap()
            .is_none());
        // A second start changes nothing more; a technician can re-queue them.
        dead_letter_unserved(&outbox, &plan, &config);
        assert_eq!(
            outbox
                .retry(&crate::store::outbox::RetrySelector::Destination(
                    Destination::Pacs("old".into())
                ))
                .unwrap(),
            2
        );
    }
}
