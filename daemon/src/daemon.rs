//! `duli run`: wires the stages together and owns the process lifecycle — start-up in
//! dependency order, sd_notify readiness, the watchdog started with the store as its
//! liveness probe (the watchdog itself lives in [`crate::supervise::watchdog`]), and on
//! SIGTERM/SIGINT a graceful stop (no new associations, in-flight ones finish up to a
//! deadline, store flushed).

use crate::assemble::StudyTracker;
use crate::config::Config;
use crate::console::{self, events};
use crate::listeners::{take_or_bind, IncarnationError, Prebound};
use crate::metrics::Metrics;
use crate::receive::{self, Scp};
use crate::store::Store;
use crate::supervise::drain;
use crate::supervise::{self, Backoff, Registry, Shutdown};
use crate::{control, notify};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Handles of a running daemon (used by `duli run` and `duli demo`).
pub struct Running {
    /// The store.
    pub store: Arc<Store>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The audit trail.
    pub audit: Arc<crate::audit::Audit>,
    /// The delivery stage (outbox, plan, site secret).
    pub delivery: crate::deliver::service::Delivery,
    /// The DICOM port actually bound.
    pub dicom_addr: SocketAddr,
    /// The console port actually bound (HTTPS).
    pub console_addr: SocketAddr,
    /// Live study events (the console's worklist follows them; any stage may publish).
    pub events: events::Bus,
    /// Whether the inference stage has its model (starting, ready, or waiting with why).
    pub model: crate::infer::ModelStatus,
    /// The stop signal, the supervised stages and the watchdog over them.
    shutdown: Shutdown,
}

impl Running {
    /// The supervised stages and their heartbeats (read by the watchdog and `/healthz`).
    pub fn stages(&self) -> &Arc<Registry> {
        self.shutdown.stages()
    }

    /// Starts the sd_notify watchdog: a ping every `interval` while the store answers a
    /// read and an index flush in time and every stage is alive.
    pub fn start_watchdog(&mut self, interval: Duration) {
        let store = self.store.clone();
        self.shutdown
            .start_watchdog(interval, move |budget| store.clone().answers_within(budget));
    }

    /// Stops everything gracefully and flushes the store.
    pub async fn stop(self) -> Result<()> {
        let Running {
            shutdown,
            delivery,
            store,
            ..
        } = self;
        shutdown.stop(None).await;
        delivery.stop().await;
        tokio::task::spawn_blocking(move || store.flush_blocking())
            .await
            .context("flush task")?
            .context("final flush of the store")?;
        Ok(())
    }
}

/// Starts every stage on `config` and returns once all listeners are bound.
pub async fn start(config: &Config) -> Result<Running> {
    start_with(config, Prebound::default()).await
}

/// [`start`] with listeners bound beforehand. The stages start in dependency order:
/// store and audit trail, audit forwarding, delivery, assembly, the DICOM listeners, live
/// events, the record stage and the console, retention, the control socket, inference.
pub async fn start_with(config: &Config, mut prebound: Prebound) -> Result<Running> {
    let (store, audit) = open_store(config).await?;
    let metrics = Arc::new(Metrics::default());
    // Every long-lived stage below runs supervised by `shutdown`, with a heartbeat in its
    // registry of stages.
    let mut shutdown = Shutdown::new();

    // Forwarding of the audit trail to the site's audit record repository ([audit] syslog).
    if let Some(task) = crate::audit_forward::start(config, &store, &audit, &shutdown)
        .context("audit forwarding ([audit])")?
    {
        shutdown.drain_on_stop(task, crate::audit_forward::DRAIN);
    }
    let delivery = crate::deliver::service::start(
        config,
        &store,
        &audit,
        &model_name(config),
        &metrics,
        &shutdown,
    )?;
    let assembly = start_assembly(config, &store, &shutdown);
    let uploads = assembly.events.downgrade();

    let outbox = delivery.outbox.clone();
    let scp = Scp::new(
        receive::ScpParts {
            store: store.clone(),
            audit: audit.clone(),
            metrics: metrics.clone(),
            events: assembly.events,
            commitments: delivery.commitments.clone(),
        },
        config,
    )
    .with_admission(Arc::new(move || {
        outbox
            .is_full()
            .then(|| "the delivery outbox is full".to_string())
    }));
    let scp = Arc::new(scp);
    warn_at_start(config);
    let dicom_addr = start_dicom(config, &mut prebound, &scp, &mut shutdown).await?;
    let events = start_events(&store, &mut shutdown);

    // The record stage: each result with its SR and outbox entries in one commit, each
    // heatmap with its SC, each feedback into the outbox.
    let recorder = Arc::new(
        crate::record::Recorder::new(
            store.clone(),
            Some(crate::record::Delivery {
                outbox: delivery.outbox.clone(),
                plan: delivery.plan.clone(),
                secret: delivery.secret.clone(),
                uid_root: config.dicom.uid_root.clone(),
                ae_title: config.dicom.ae_title.clone(),
                max_pixels: config.inference.max_pixels,
            }),
        )
        .with_audit(audit.clone()),
    );
    // Console: HTTPS with the API, the front end, /healthz and /metrics.
    let model_status = crate::infer::ModelStatus::default();
    let console_state = console::Console::new(
        config,
        console::Parts {
            store: store.clone(),
            audit: audit.clone(),
            metrics: metrics.clone(),
            events: events.clone(),
            delivery: delivery.outbox.clone(),
            feedback: recorder.clone(),
            stages: shutdown.stages().clone(),
            assembly: uploads,
            model_status: model_status.clone(),
        },
    )?;
    let console_addr = console::start(
        config,
        Arc::new(console_state),
        prebound.console.take(),
        &mut shutdown,
    )
    .await?;

    start_retention(config, &store, &audit, &mut shutdown);
    start_control(
        config,
        &store,
        &audit,
        &delivery,
        &model_status,
        &mut shutdown,
    )?;
    // The tracker ends when the SCP (holder of its event sender) is gone.
    let tracker = assembly.tracker;
    shutdown.on_stop(async move {
        drop(scp);
        let _ = tokio::time::timeout(drain::TRACKER, tracker).await;
    });
    let options = crate::infer::PipelineOptions {
        recorder: Some(recorder),
        status: model_status.clone(),
        ..Default::default()
    };
    start_inference(config, &store, assembly.completed, options, &mut shutdown);

    log::info!(
        "DICOM SCP {:?} listening on {dicom_addr}; console on https://{console_addr}/",
        config.dicom.ae_title
    );
    Ok(Running {
        store,
        metrics,
        audit,
        delivery,
        dicom_addr,
        console_addr,
        events,
        model: model_status,
        shutdown,
    })
}

/// Opens the store and the audit trail in it (off the runtime's threads).
async fn open_store(config: &Config) -> Result<(Arc<Store>, Arc<crate::audit::Audit>)> {
    let data_dir = config.device.data_dir.clone();
    let store = {
        let dir = data_dir.clone();
        // Opening may rebuild the index from the files (hours on a large store): systemd
        // is asked for more start-up time while the rebuild advances, so the unit's start
        // timeout does not cut it off (a cut-off rebuild is run again at the next open),
        // and an open that hangs is still cut off.
        let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let _extending = crate::notify::ExtendStart::while_advancing(
            std::time::Duration::from_secs(30),
            progress.clone(),
        );
        tokio::task::spawn_blocking(move || Store::open_observed(&dir, &progress))
            .await
            .context("store open task")?
            .with_context(|| format!("cannot open the store in {}", data_dir.display()))?
    };
    let store = Arc::new(store);
    log::info!(
        "store open at {}: {} instances",
        data_dir.display(),
        store.instance_count()
    );
    let audit = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || crate::audit::Audit::open(&store))
            .await
            .context("audit open task")?
            .context("cannot open the audit trail")?
    };
    audit.set_budget(config.audit.max_records);
    Ok((store, Arc::new(audit)))
}

/// The model's name as reports carry it: the name of the folder holding its manifest.
fn model_name(config: &Config) -> String {
    config
        .inference
        .model
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// The assembly stage as started: where stored instances are announced, where completed
/// studies come out, and the tracker's task.
struct Assembly {
    /// Stored instances and uploads are announced here.
    events: mpsc::Sender<crate::assemble::Event>,
    /// Completed studies (their Study Instance UIDs), for inference.
    completed: mpsc::Receiver<String>,
    /// The tracker (ends when every sender of `events` is gone).
    tracker: tokio::task::JoinHandle<()>,
}

/// Assembly: stored instances → completed studies, after `dicom.quiet_period`.
fn start_assembly(config: &Config, store: &Arc<Store>, shutdown: &Shutdown) -> Assembly {
    let (events_tx, events_rx) = mpsc::channel(1024);
    let (completed_tx, completed_rx) = mpsc::channel(256);
    let (store, events_rx) = (store.clone(), Arc::new(tokio::sync::Mutex::new(events_rx)));
    let quiet = Duration::from_secs(config.dicom.quiet_period);
    let tracker = shutdown.supervise("assemble", Backoff::default(), move |beat| {
        let tracker =
            StudyTracker::new(store.clone(), quiet, completed_tx.clone()).with_heartbeat(beat);
        let events_rx = events_rx.clone();
        async move { tracker.run_on(&mut *events_rx.lock().await).await }
    });
    Assembly {
        events: events_tx,
        completed: completed_rx,
        tracker,
    }
}

/// What the configuration allows that the log must say at start: a DICOM port open to any
/// peer, and firmware installs that will be refused (the imaging service keeps running).
fn warn_at_start(config: &Config) {
    if config.dicom.open_to_any_peer() {
        log::warn!(
            "DICOM on {} accepts any calling AE with every permission (dicom.allowed_peers is \
             empty, dicom.allow_any_peer = true): any host that reaches the port may store, \
             query and retrieve every study; for a closed test network only",
            config.dicom.bind
        );
    }
    // A configuration naming other hardware than the image was built for stops firmware
    // and model-pack installs, not the imaging service: said at start, not first at the
    // next install.
    if let Err(e) = config.firmware.device_hardware_id() {
        log::error!("firmware installs will be refused: {e}");
    }
}

/// The DICOM listeners: the plain port, unless `dicom.plain = false` leaves DICOM to the
/// TLS port alone, and the TLS port when `dicom.tls = true`. Returns the address peers
/// reach (the plain one when both are open).
async fn start_dicom(
    config: &Config,
    prebound: &mut Prebound,
    scp: &Arc<Scp>,
    shutdown: &mut Shutdown,
) -> Result<SocketAddr> {
    let mut plain_addr = None;
    if config.dicom.plain {
        let addr = SocketAddr::new(config.dicom.bind, config.dicom.port);
        let listener = take_or_bind(
            prebound.dicom.take(),
            addr,
            "DICOM (dicom.bind, dicom.port)",
        )
        .await?;
        plain_addr = Some(listener.local_addr()?);
        let listener = supervise::Listener::keep(listener)?;
        let task = supervise_receive("receive", shutdown, listener, None, scp.clone());
        shutdown.track(task);
    }
    let mut tls_addr = None;
    if config.dicom.tls {
        let (cert, key) = match (&config.dicom.cert, &config.dicom.key) {
            (Some(c), Some(k)) => (c, k),
            _ => anyhow::bail!("dicom.cert and dicom.key are required when dicom.tls = true"),
        };
        let tls = crate::tls::server_config(&crate::tls::ServerTls {
            cert,
            key,
            client_ca: config.dicom.ca.as_deref(),
            require_client_cert: config.dicom.tls_require_client_cert,
            alpn: &[],
        })
        .context("DICOM TLS (dicom.cert, dicom.key, dicom.ca)")?;
        let addr = SocketAddr::new(config.dicom.bind, config.dicom.tls_port);
        let listener = take_or_bind(
            prebound.dicom_tls.take(),
            addr,
            "DICOM TLS (dicom.bind, dicom.tls_port)",
        )
        .await?;
        log::info!("DICOM TLS listening on {}", listener.local_addr()?);
        tls_addr = Some(listener.local_addr()?);
        let listener = supervise::Listener::keep(listener)?;
        let acceptor = Some(tokio_rustls::TlsAcceptor::from(tls));
        let task = supervise_receive("receive tls", shutdown, listener, acceptor, scp.clone());
        shutdown.track(task);
    }
    let dicom_addr = plain_addr
        .or(tls_addr)
        .context("no DICOM listener: dicom.plain = false needs dicom.tls = true")?;
    if !config.dicom.plain {
        log::info!("plain DICOM is off (dicom.plain = false): DICOM TLS only");
    }
    Ok(dicom_addr)
}

/// Live study events, from the store's broadcast of committed changes.
fn start_events(store: &Arc<Store>, shutdown: &mut Shutdown) -> events::Bus {
    let events = events::Bus::new();
    let task = {
        let (store, bus, stop) = (store.clone(), events.clone(), shutdown.signal());
        shutdown.supervise("console-events", Backoff::default(), move |beat| {
            beat.pulse(events::watch_store(
                store.clone(),
                bus.clone(),
                stop.clone(),
            ))
        })
    };
    shutdown.track(task);
    events
}

/// Retention of pixel data: hourly, by age and by the disk reserve.
fn start_retention(
    config: &Config,
    store: &Arc<Store>,
    audit: &Arc<crate::audit::Audit>,
    shutdown: &mut Shutdown,
) {
    let (store, audit) = (store.clone(), audit.clone());
    let (days, reserve) = (
        config.retention.pixel_days,
        config.retention.disk_reserve_bytes(),
    );
    let task = shutdown.supervise("retention", Backoff::default(), move |beat| {
        beat.pulse(crate::retention::run(
            store.clone(),
            audit.clone(),
            days,
            reserve,
            Duration::from_secs(3600),
        ))
    });
    shutdown.abort_on_stop(task);
}

/// The local control socket for the CLI, in the data folder; removed at stop.
fn start_control(
    config: &Config,
    store: &Arc<Store>,
    audit: &Arc<crate::audit::Audit>,
    delivery: &crate::deliver::service::Delivery,
    model: &crate::infer::ModelStatus,
    shutdown: &mut Shutdown,
) -> Result<()> {
    let data_dir = config.device.data_dir.clone();
    let listener = control::bind(&data_dir)
        .with_context(|| format!("cannot create the control socket in {}", data_dir.display()))?;
    let task = {
        let (store, audit, outbox) = (store.clone(), audit.clone(), delivery.outbox.clone());
        let model = model.clone();
        let (dir, mut first) = (data_dir.clone(), Some(listener));
        shutdown.supervise("control", Backoff::default(), move |beat| {
            // a restart binds the socket again
            let listener = first.take().map_or_else(|| control::bind(&dir), Ok);
            let (store, audit, outbox) = (store.clone(), audit.clone(), outbox.clone());
            let model = model.clone();
            async move {
                let listener = listener.map_err(IncarnationError::of("control socket"))?;
                beat.pulse(control::serve(store, audit, outbox, model, listener))
                    .await;
                Ok::<(), IncarnationError>(())
            }
        })
    };
    shutdown.on_stop(async move {
        task.abort();
        let _ = std::fs::remove_file(control::socket_path(&data_dir));
    });
    Ok(())
}

/// Inference: completed studies → results, handed to the record stage (`options`); each
/// engine is made by a factory that first verifies and unpacks the model pack in service,
/// if any. The pipeline ends once assembly (its sender) has stopped.
fn start_inference(
    config: &Config,
    store: &Arc<Store>,
    completed: mpsc::Receiver<String>,
    options: crate::infer::PipelineOptions,
    shutdown: &mut Shutdown,
) {
    let inference_cfg = config.inference.clone();
    let pack_cfg = config.clone();
    let factory: crate::infer::service::EngineFactory = Arc::new(move || {
        // A model pack in service is verified and unpacked again before every engine.
        if let Some(name) = &pack_cfg.inference.model_pack {
            put_pack_in_service(&pack_cfg, name)
                .map_err(|e| crate::infer::engine::EngineError::Model(format!("{e:#}")))?;
        }
        crate::infer::Engine::new(&inference_cfg)
    });
    let (store, completed) = (store.clone(), Arc::new(tokio::sync::Mutex::new(completed)));
    let pipeline = shutdown.supervise("infer", Backoff::default(), move |beat| {
        let (store, factory, completed) = (store.clone(), factory.clone(), completed.clone());
        let options = crate::infer::PipelineOptions {
            beat,
            ..options.clone()
        };
        async move {
            let mut rx = completed.lock().await;
            crate::infer::run_pipeline_on(store, factory, &mut rx, options).await
        }
    });
    shutdown.drain_on_stop(pipeline, drain::INFERENCE);
}

/// Serves DICOM on `listener` as the stage `name` supervised by `shutdown`.
fn supervise_receive(
    name: &'static str,
    shutdown: &Shutdown,
    listener: supervise::Listener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    scp: Arc<Scp>,
) -> tokio::task::JoinHandle<()> {
    let stop = shutdown.signal();
    shutdown.supervise(name, Backoff::default(), move |beat| {
        let (listener, tls, scp, stop) = (
            listener.incarnation(),
            tls.clone(),
            scp.clone(),
            stop.clone(),
        );
        async move {
            let listener = listener.map_err(IncarnationError::of(name))?;
            beat.pulse(receive::server::serve(
                listener,
                tls,
                scp,
                stop,
                drain::LISTENERS,
            ))
            .await;
            Ok::<(), IncarnationError>(())
        }
    })
}

/// `duli run`: starts, notifies systemd, runs until SIGTERM/SIGINT, stops gracefully.
pub async fn run(config: Config) -> Result<()> {
    run_with(config, Prebound::default()).await
}

/// [`run`] with listeners bound beforehand (see [`crate::privileges`]).
pub async fn run_with(config: Config, prebound: Prebound) -> Result<()> {
    let mut running = start_with(&config, prebound).await?;
    notify::notify("READY=1");
    if let Some(interval) = notify::watchdog_interval() {
        running.start_watchdog(interval);
    }
    wait_for_signal().await?;
    log::info!("stopping: no new associations, finishing open ones");
    notify::notify("STOPPING=1");
    running.stop().await?;
    log::info!("stopped cleanly");
    Ok(())
}

/// Waits for SIGTERM or SIGINT.
pub async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM received"),
        _ = int.recv() => log::info!("SIGINT received"),
    }
    Ok(())
}

/// Verifies the installed model pack `name` with the device's keys and unpacks it where
/// `inference.model` points (see [`crate::infer::pack`]).
fn put_pack_in_service(config: &Config, name: &str) -> anyhow::Result<()> {
    let anchors = crate::firmware_cli::device_anchors(config)?;
    let running = crate::firmware_cli::running_version()?;
    crate::infer::pack::put_in_service(
        &config.firmware,
        &anchors,
        name,
        &config.device.data_dir,
        running,
    )?;
    Ok(())
}
