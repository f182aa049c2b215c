//! The radiologists' LAN web console and its JSON API, over HTTPS only.
//!
//! - TLS: [`crate::tls`] (the certificate, configured or self-signed on first start, in
//!   [`crate::tls::self_signed`]).
//! - [`server`]: the listener — warp filters through hyper over tokio-rustls.
//! - [`limits`]: connection caps (total, per address), request, event stream, upload and
//!   C-ECHO test limits.
//! - [`timeouts`]: header-read and idle timeouts of each connection.
//! - [`roles`]: the roles and the one route → role table every request passes.
//! - [`sessions`]: session cookies, idle and absolute lifetimes, CSRF tokens.
//! - [`login_throttle`]: failed logins and wrong setup codes slowed down per account and
//!   address, per address and per account.
//! - [`throttle_log`]: throttled logins counted, audited once per window.
//! - [`access_log`]: previews, heatmaps, worklist listings and refused requests audited
//!   once per user, object and window.
//! - accounts (users, roles, password hashes) live in [`crate::accounts`], shared with
//!   the command line.
//! - [`api`]: the router and one handler module per resource (worklist and studies,
//!   results, feedback, users, audit, outbox, system, uploads, live events).
//! - [`services`]: what the console needs of delivery and of the feedback hand-off, as
//!   traits.
//! - [`reply`]: the one error → status mapping and the security headers.
//! - [`preview`]: 16-bit display previews rendered once per instance.
//! - [`preview_sweep`]: cached previews of pruned or unknown instances removed.
//! - [`feedback`]: radiologist feedback records and the hook to delivery.
//! - [`events`]: live study events for the worklist (server-sent events).
//! - [`upload`]: manual uploads (DICOM, or PNG/JPEG as Secondary Capture), never patient data.
//! - [`echo`]: C-ECHO to every configured DICOM peer for the system page.
//! - [`outbox_view`]: the outbox by destination, and technicians' retry requests.
//! - [`atna`]: audit export as RFC 5424 syslog lines with DICOM audit messages.
//! - [`assets`]: the embedded front end (`web-console/`).
//! - [`setup`]: first-time setup of the first administrator with a one-time code.
//!
//! `/healthz` and `/metrics` are served on the same HTTPS listener without a session, so
//! health checks and Prometheus need no account; neither reveals patient data.

pub mod access_log;
pub mod api;
pub mod assets;
pub mod atna;
pub mod echo;
pub mod events;
pub mod feedback;
pub mod handshakes;
pub mod limits;
pub mod login_throttle;
pub mod outbox_view;
pub mod preview;
pub mod preview_sweep;
pub mod reply;
pub mod roles;
pub mod server;
pub mod services;
pub mod sessions;
pub mod setup;
pub mod throttle_log;
pub mod timeouts;
pub mod upload;

use crate::audit::Audit;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Everything the handlers read and change.
#[derive(Debug)]
pub struct Console {
    /// The store.
    pub store: Arc<Store>,
    /// The audit trail.
    pub audit: Arc<Audit>,
    /// In-memory metrics.
    pub metrics: Arc<Metrics>,
    /// Live study events.
    pub events: events::Bus,
    /// The delivery outbox (gauges in /metrics, delivery status, retries).
    pub delivery: Arc<dyn services::DeliveryQueue>,
    /// Delivery of feedback to the cloud.
    pub feedback: Arc<dyn services::FeedbackSink>,
    /// The daemon's supervised stages: `/healthz` answers 503 naming any that is down.
    pub stages: Arc<crate::supervise::Registry>,
    /// Accounts.
    pub users: crate::accounts::Users,
    /// Sessions and the login throttle.
    pub sessions: sessions::Sessions,
    /// Accesses and refusals audited lately (once per user, object and window).
    pub accesses: access_log::AccessLog,
    /// The last verification of the audit trail's chain: one runs at a time, and an
    /// unchanged trail is answered from it for a while.
    pub verified: tokio::sync::Mutex<Option<api::Verified>>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Site id (for the system page).
    pub site_id: String,
    /// Device id (audit source id, system page).
    pub device_id: String,
    /// Model manifest path.
    pub model: PathBuf,
    /// Whether the inference stage has its model (`/healthz`, system page).
    pub model_status: crate::infer::ModelStatus,
    /// Configured DICOM peers (system page).
    pub peers: Vec<crate::config::PacsDestination>,
    /// The peers of the C-ECHO test: this box's SCP and the PACS destinations.
    pub echo_peers: Vec<crate::scu::Peer>,
    /// This box's AE title (calling AE of the C-ECHO test).
    pub ae_title: String,
    /// `dicom.uid_root`, for the UIDs of uploads.
    pub uid_root: String,
    /// Study assembly, told about uploads so they complete like received studies; weak,
    /// so the console never keeps the assembly stage alive at shutdown.
    pub assembly: tokio::sync::mpsc::WeakSender<crate::assemble::Event>,
    /// When the daemon started.
    pub started: Instant,
    /// First-time setup (open while no admin account exists).
    pub setup: setup::Setup,
    /// Largest image a preview decodes (`inference.max_pixels`).
    pub max_pixels: u64,
    /// Connection, request, event stream and upload limits.
    pub limits: limits::Limits,
}

/// The handles the daemon gives the console: shared state and the stages it talks to.
#[derive(Debug)]
pub struct Parts {
    /// The store.
    pub store: Arc<Store>,
    /// The audit trail.
    pub audit: Arc<Audit>,
    /// In-memory metrics.
    pub metrics: Arc<Metrics>,
    /// Live study events.
    pub events: events::Bus,
    /// The delivery outbox.
    pub delivery: Arc<dyn services::DeliveryQueue>,
    /// Where feedback goes after it is stored.
    pub feedback: Arc<dyn services::FeedbackSink>,
    /// The supervised stages (`/healthz`).
    pub stages: Arc<crate::supervise::Registry>,
    /// Study assembly, told about uploads.
    pub assembly: tokio::sync::mpsc::WeakSender<crate::assemble::Event>,
    /// Whether the inference stage has its model.
    pub model_status: crate::infer::ModelStatus,
}

impl Console {
    /// Builds the console state from the configuration and the daemon's handles.
    pub fn new(config: &Config, parts: Parts) -> Result<Console> {
        let Parts {
            store,
            audit,
            metrics,
            events,
            delivery,
            feedback,
            stages,
            assembly,
            model_status,
        } = parts;
        let users = crate::accounts::Users::open(&store).context("open the users tree")?;
        let sessions = sessions::Sessions::open(
            &store,
            Duration::from_secs(config.console.session_idle_secs),
            Duration::from_secs(config.console.session_max_secs),
        )
        .context("open the sessions tree")?;
        let config_dir = config.origin.as_deref().and_then(std::path::Path::parent);
        let setup = setup::Setup::prepare(&store, &users, &audit, config_dir)
            .context("first-time setup")?;
        Ok(Console {
            data_dir: store.root().to_path_buf(),
            store,
            audit,
            metrics,
            events,
            delivery,
            feedback,
            stages,
            users,
            sessions,
            accesses: access_log::AccessLog::default(),
            verified: tokio::sync::Mutex::new(None),
            site_id: config.device.site_id.clone(),
            device_id: config.device.device_id.clone(),
            model: config.inference.model.clone(),
            model_status,
            peers: config.pacs.destinations.clone(),
            echo_peers: crate::scu::configured_peers(config),
            ae_title: config.dicom.ae_title.clone(),
            uid_root: config.dicom.uid_root.clone(),
            assembly,
            started: Instant::now(),
            setup,
            max_pixels: config.inference.max_pixels,
            limits: limits::Limits::new(&config.console),
        })
    }
}

/// This machine's host name, when the kernel tells it.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// Host names and addresses a generated certificate is made for.
fn certificate_names(config: &Config) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if let Some(h) = hostname() {
        names.push(h);
    }
    let bind = config.console.bind;
    if !bind.is_unspecified() && !bind.is_loopback() {
        names.push(bind.to_string());
    }
    names.dedup();
    names
}

/// Binds the console listener (or takes `prebound`) and starts serving as the stage
/// `console`, with the stage `console-audit` that writes the throttled-login summaries and
/// the stage `console-previews` that removes cached previews of pruned instances
/// ([`preview_sweep::run`]), all supervised and waited for by `shutdown`; returns the
/// bound address.
pub async fn start(
    config: &Config,
    console: Arc<Console>,
    prebound: Option<std::net::TcpListener>,
    shutdown: &mut crate::supervise::Shutdown,
) -> Result<SocketAddr> {
    let files = crate::tls::self_signed::cert_files(
        config.console.cert.as_deref(),
        config.console.key.as_deref(),
        &config.device.data_dir,
        &certificate_names(config),
    )
    .context("console certificate (console.cert, console.key)")?;
    let tls = crate::tls::server_config(&crate::tls::ServerTls::console(&files.cert, &files.key))
        .context("console TLS (console.cert, console.key)")?;
    let fingerprint =
        crate::tls::self_signed::fingerprint(&files.cert).context("console certificate")?;
    let addr = SocketAddr::new(config.console.bind, config.console.port);
    let listener =
        crate::listeners::take_or_bind(prebound, addr, "the console (console.bind, console.port)")
            .await?;
    let bound = listener.local_addr()?;
    log::info!(
        "console on https://{bound}/ ; certificate {} SHA-256 {fingerprint}{}",
        files.cert.display(),
        if files.generated {
            " (self-signed)"
        } else {
            ""
        }
    );
    let audit_task = {
        let (console, stop) = (console.clone(), shutdown.signal());
        shutdown.supervise(
            "console-audit",
            crate::supervise::Backoff::default(),
            move |beat| beat.pulse(audit_throttled_logins(console.clone(), stop.clone())),
        )
    };
    shutdown.track(audit_task);
    let sweep_task = {
        let (store, dir, stop) = (
            console.store.clone(),
            console.data_dir.clone(),
            shutdown.signal(),
        );
        shutdown.supervise(
            "console-previews",
            crate::supervise::Backoff::default(),
            move |beat| beat.pulse(preview_sweep::run(store.clone(), dir.clone(), stop.clone())),
        )
    };
    shutdown.track(sweep_task);
    let store = console.store.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = store.prepare_worklist() {
            log::error!("console: the worklist index: {e}");
        }
    });
    let listener = crate::supervise::Listener::keep(listener)?;
    let stop = shutdown.signal();
    let task = shutdown.supervise(
        "console",
        crate::supervise::Backoff::default(),
        move |beat| {
            let (listener, tls, console, stop) = (
                listener.incarnation(),
                tls.clone(),
                console.clone(),
                stop.clone(),
            );
            async move {
                let listener =
                    listener.map_err(crate::listeners::IncarnationError::of("console listener"))?;
                beat.pulse(server::serve(listener, tls, console, stop))
                    .await;
                Ok::<(), crate::listeners::IncarnationError>(())
            }
        },
    );
    shutdown.track(task);
    Ok(bound)
}

/// Writes the summary record of each window of throttled logins (and of the open one at
/// shutdown).
async fn audit_throttled_logins(console: Arc<Console>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.wait_for(|s| *s) => true,
        };
        if let Some(s) = console.sessions.throttled.take(stopping) {
            let event = crate::audit::Event::new("-", crate::audit::Action::LoginFailed, "login")
                .detail(s.detail())
                .failed();
            if let Err(e) = console.audit.append(event) {
                log::error!("console: audit the throttled logins: {e}");
            }
        }
        if stopping {
            return;
        }
    }
}
