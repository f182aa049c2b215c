//! `duli run`: wires the stages together and owns the process lifecycle — start-up in
//! dependency order, sd_notify readiness and watchdog, and on SIGTERM/SIGINT a graceful
//! stop (no new associations, in-flight ones finish up to a deadline, store flushed).

use crate::assemble::StudyTracker;
use crate::config::Config;
use crate::console::{self, events};
use crate::metrics::Metrics;
use crate::receive::{self, Scp};
use crate::store::Store;
use crate::supervise::{self, Backoff, Registry};
use crate::{control, notify};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How long in-flight associations may take to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Handles of a running daemon (used by `duli run` and `duli demo`).
pub struct Running {
    /// The store.
    pub store: Arc<Store>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The audit trail.
    pub audit: Arc<crate::audit::Audit>,
    /// The delivery stage (outbox, plan, site secret).
    pub delivery: Option<crate::deliver::service::Delivery>,
    /// The DICOM port actually bound.
    pub dicom_addr: SocketAddr,
    /// The console port actually bound (HTTPS).
    pub console_addr: SocketAddr,
    /// Live study events (the console's worklist follows them; any stage may publish).
    pub events: events::Bus,
    /// The supervised stages and their heartbeats (read by the watchdog).
    pub stages: Arc<Registry>,
    shutdown: supervise::Shutdown,
}

impl Running {
    /// Stops everything gracefully and flushes the store.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.stop(None).await;
        if let Some(d) = self.delivery.take() {
            d.stop().await;
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.flush_blocking())
            .await
            .context("flush task")?
            .context("final flush of the store")?;
        Ok(())
    }
}

/// Listeners bound before the daemon starts (as root, before switching to the service
/// user, see [`crate::privileges`]); the rest are bound by [`start_with`] itself.
#[derive(Debug, Default)]
pub struct Prebound {
    /// The plain DICOM listener (`dicom.bind`, `dicom.port`).
    pub dicom: Option<std::net::TcpListener>,
    /// The DICOM TLS listener (`dicom.tls_port`), when `dicom.tls`.
    pub dicom_tls: Option<std::net::TcpListener>,
    /// The console listener (`console.bind`, `console.port`).
    pub console: Option<std::net::TcpListener>,
}

/// A listener bound earlier, or a new one on `addr`; `what` names the keys in errors.
pub async fn take_or_bind(
    prebound: Option<std::net::TcpListener>,
    addr: SocketAddr,
    what: &str,
) -> Result<tokio::net::TcpListener> {
    let bound = match prebound {
        Some(l) => l
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(l)),
        None => tokio::net::TcpListener::bind(addr).await,
    };
    bound.with_context(|| format!("cannot listen for {what} on {addr}"))
}

/// Starts every stage on `config` and returns once all listeners are bound.
pub async fn start(config: &Config) -> Result<Running> {
    start_with(config, Prebound::default()).await
}

/// [`start`] with listeners bound beforehand.
pub async fn start_with(config: &Config, mut prebound: Prebound) -> Result<Running> {
    let data_dir = config.device.data_dir.clone();
    let store = {
        let dir = data_dir.clone();
        tokio::task::spawn_blocking(move || Store::open(&dir))
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
    let audit = Arc::new(audit);
    let metrics = Arc::new(Metrics::default());
    let mut shutdown = supervise::Shutdown::new();
    let shutdown_rx = shutdown.signal();
    // Every long-lived stage below runs supervised, with a heartbeat in `stages`.
    let stages = Registry::new();

    // Delivery: outbox and workers.
    let model_name = config
        .inference
        .model
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let delivery = crate::deliver::service::start(config, &store, &audit, &model_name, &stages)?;

    // Assembly: stored instances -> completed studies.
    let (events_tx, events_rx) = mpsc::channel(1024);
    let (completed_tx, completed_rx) = mpsc::channel(256);
    let tracker_task = {
        let (store, events_rx) = (store.clone(), Arc::new(tokio::sync::Mutex::new(events_rx)));
        let quiet = Duration::from_secs(config.dicom.quiet_period);
        supervise::spawn(
            "assemble",
            &stages,
            shutdown_rx.clone(),
            Backoff::default(),
            move |beat| {
                let tracker = StudyTracker::new(store.clone(), quiet, completed_tx.clone())
                    .with_heartbeat(beat);
                let events_rx = events_rx.clone();
                async move { tracker.run_on(&mut *events_rx.lock().await).await }
            },
        )
    };
    let uploads_tx = events_tx.downgrade();

    // DICOM listeners.
    let outbox = delivery.outbox.clone();
    let scp = Scp::new(
        receive::ScpParts {
            store: store.clone(),
            audit: audit.clone(),
            metrics: metrics.clone(),
            events: events_tx,
        },
        config,
    )
    .with_admission(Arc::new(move || {
        outbox
            .is_full()
            .then(|| "the delivery outbox is full".to_string())
    }));
    let scp = Arc::new(scp);
    // The plain port, unless `dicom.plain = false` leaves DICOM to the TLS port alone.
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
        shutdown.track(supervise_receive(
            "receive",
            &stages,
            supervise::Listener::keep(listener)?,
            None,
            scp.clone(),
            shutdown_rx.clone(),
        ));
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
        shutdown.track(supervise_receive(
            "receive tls",
            &stages,
            supervise::Listener::keep(listener)?,
            Some(tokio_rustls::TlsAcceptor::from(tls)),
            scp.clone(),
            shutdown_rx.clone(),
        ));
    }

    let dicom_addr = plain_addr
        .or(tls_addr)
        .context("no DICOM listener: dicom.plain = false needs dicom.tls = true")?;
    if !config.dicom.plain {
        log::info!("plain DICOM is off (dicom.plain = false): DICOM TLS only");
    }

    // Live study events, from the store's broadcast of committed changes.
    let events = events::Bus::new();
    let stop_events = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let events_thread = events::watch_store(&store, events.clone(), stop_events.clone())
        .context("start the console event watcher")?;
    shutdown.on_stop(async move {
        stop_events.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = tokio::task::spawn_blocking(move || events_thread.join()).await;
    });

    // Console: HTTPS with the API, the front end, /healthz and /metrics.
    // The record stage: each result with its SR and outbox entries in one commit, each
    // heatmap with its SC, each feedback into the outbox.
    let recorder = Arc::new(crate::record::Recorder::new(
        store.clone(),
        Some(crate::record::Delivery {
            outbox: delivery.outbox.clone(),
            plan: delivery.plan.clone(),
            secret: delivery.secret.clone(),
            uid_root: config.dicom.uid_root.clone(),
        }),
    ));
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
            stages: stages.clone(),
            assembly: uploads_tx,
            model_status: model_status.clone(),
        },
    )?;
    let console_state = Arc::new(console_state);
    let (console_addr, console_task) = console::start(
        config,
        console_state,
        prebound.console.take(),
        shutdown_rx.clone(),
        &stages,
    )
    .await?;
    shutdown.track(console_task);

    // Retention of pixel data.
    let retention = {
        let store = store.clone();
        let (days, reserve) = (
            config.retention.pixel_days,
            config.retention.disk_reserve_mb * 1024 * 1024,
        );
        supervise::spawn(
            "retention",
            &stages,
            shutdown_rx.clone(),
            Backoff::default(),
            move |beat| {
                beat.pulse(crate::retention::run(
                    store.clone(),
                    days,
                    reserve,
                    Duration::from_secs(3600),
                ))
            },
        )
    };
    shutdown.abort_on_stop(retention);

    // Local control socket for the CLI.
    let control_listener = control::bind(&data_dir)
        .with_context(|| format!("cannot create the control socket in {}", data_dir.display()))?;
    let control_task = {
        let (store, audit, outbox) = (store.clone(), audit.clone(), delivery.outbox.clone());
        let (dir, mut first) = (data_dir.clone(), Some(control_listener));
        supervise::spawn(
            "control",
            &stages,
            shutdown_rx.clone(),
            Backoff::default(),
            move |beat| {
                // a restart binds the socket again
                let listener = first.take().map_or_else(|| control::bind(&dir), Ok);
                let (store, audit, outbox) = (store.clone(), audit.clone(), outbox.clone());
                async move {
                    let listener = listener.map_err(|e| format!("control socket: {e}"))?;
                    beat.pulse(control::serve(store, audit, Some(outbox), listener))
                        .await;
                    Ok::<(), String>(())
                }
            },
        )
    };
    shutdown.on_stop(async move {
        control_task.abort();
        let _ = std::fs::remove_file(control::socket_path(&data_dir));
    });

    // The tracker ends when the SCP (holder of its event sender) is gone.
    shutdown.on_stop(async move {
        drop(scp);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(5), tracker_task).await;
    });

    // Inference: completed studies -> results, handed to the record stage; each result
    // brings its SR and outbox entries in the same transaction, and its heatmap SC later.
    let options = crate::infer::PipelineOptions {
        recorder: Some(recorder),
        status: model_status,
        ..Default::default()
    };
    let inference_cfg = config.inference.clone();
    let factory: crate::infer::service::EngineFactory =
        Arc::new(move || crate::infer::Engine::new(&inference_cfg));
    let pipeline = {
        let (store, completed_rx) = (
            store.clone(),
            Arc::new(tokio::sync::Mutex::new(completed_rx)),
        );
        supervise::spawn(
            "infer",
            &stages,
            shutdown_rx.clone(),
            Backoff::default(),
            move |beat| {
                let (store, factory, completed_rx) =
                    (store.clone(), factory.clone(), completed_rx.clone());
                let options = crate::infer::PipelineOptions {
                    beat,
                    ..options.clone()
                };
                async move {
                    let mut rx = completed_rx.lock().await;
                    crate::infer::run_pipeline_on(store, factory, &mut rx, options).await
                }
            },
        )
    };
    // The pipeline ends once assembly (its sender) has stopped.
    shutdown.drain_on_stop(pipeline, SHUTDOWN_GRACE + Duration::from_secs(10));

    log::info!(
        "DICOM SCP {:?} listening on {dicom_addr}; console on https://{console_addr}/",
        config.dicom.ae_title
    );
    Ok(Running {
        store,
        metrics,
        audit,
        delivery: Some(delivery),
        dicom_addr,
        console_addr,
        events,
        stages,
        shutdown,
    })
}

/// Serves DICOM on `listener` as the supervised stage `name`.
fn supervise_receive(
    name: &'static str,
    stages: &Arc<Registry>,
    listener: supervise::Listener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    scp: Arc<Scp>,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let stop = shutdown.clone();
    supervise::spawn(name, stages, shutdown, Backoff::default(), move |beat| {
        let (listener, tls, scp, stop) = (
            listener.incarnation(),
            tls.clone(),
            scp.clone(),
            stop.clone(),
        );
        async move {
            let listener = listener.map_err(|e| format!("{name} listener: {e}"))?;
            beat.pulse(receive::server::serve(
                listener,
                tls,
                scp,
                stop,
                SHUTDOWN_GRACE,
            ))
            .await;
            Ok::<(), String>(())
        }
    })
}

/// `duli run`: starts, notifies systemd, runs until SIGTERM/SIGINT, stops gracefully.
pub async fn run(config: Config) -> Result<()> {
    run_with(config, Prebound::default()).await
}

/// [`run`] with listeners bound beforehand (see [`crate::privileges`]).
pub async fn run_with(config: Config, prebound: Prebound) -> Result<()> {
    let running = start_with(&config, prebound).await?;
    notify::notify("READY=1");
    if let Some(interval) = notify::watchdog_interval() {
        let (store, stages) = (running.store.clone(), running.stages.clone());
        tokio::spawn(async move {
            let mut withheld: Option<String> = None;
            loop {
                // Fed by real work, not a bare timer: the store must answer a read and
                // complete an index flush in time, on a runtime responsive enough to run
                // this task, and every stage must be running and beating. Otherwise
                // systemd restarts the daemon.
                let verdict = match alive(&store, interval).await {
                    Ok(()) => stages.check(supervise::STALE_AFTER).map_err(|problems| {
                        problems
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    }),
                    Err(why) => Err(why),
                };
                match verdict {
                    Ok(()) => {
                        notify::notify("WATCHDOG=1");
                        if withheld.take().is_some() {
                            log::info!("watchdog fed again: every stage is alive");
                        }
                    }
                    Err(why) => {
                        if withheld.as_deref() != Some(why.as_str()) {
                            log::error!("watchdog withheld: {why}");
                        }
                        withheld = Some(why);
                    }
                }
                tokio::time::sleep(interval).await;
            }
        });
    }
    wait_for_signal().await?;
    log::info!("stopping: no new associations, finishing open ones");
    notify::notify("STOPPING=1");
    running.stop().await?;
    log::info!("stopped cleanly");
    Ok(())
}

/// The liveness check behind each watchdog ping.
async fn alive(store: &Arc<Store>, budget: Duration) -> Result<(), String> {
    let s = store.clone();
    let read = tokio::task::spawn_blocking(move || s.study_state_counts().map(|_| ()));
    match tokio::time::timeout(budget, read).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(format!("store read failed: {e}")),
        Ok(Err(e)) => return Err(format!("store read task: {e}")),
        Err(_) => return Err(format!("store read took longer than {budget:?}")),
    }
    match tokio::time::timeout(budget, store.flush()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("index flush failed: {e}")),
        Err(_) => Err(format!("index flush took longer than {budget:?}")),
    }
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
