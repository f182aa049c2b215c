//! `/healthz`, `/metrics`, `/api/v1/system`, `/api/v1/models` and the C-ECHO test: the
//! box's own state, none of it patient data.

use super::audit::head;
use crate::audit::Head;
use crate::console::limits::Refused;
use crate::console::reply::{self, ApiError};
use crate::console::sessions::Session;
use crate::console::{echo, Console};
use crate::store::outbox::Fill;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use warp::http::StatusCode;
use warp::reply::Response;

/// How long the connectivity test waits for each peer.
const ECHO_LIMIT: std::time::Duration = std::time::Duration::from_secs(15);

/// The model manifest as JSON: parsed as JSON or TOML, else its first 4096 characters as
/// text, or the reason it cannot be read.
fn read_manifest(path: &std::path::Path) -> Value {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str::<Value>(&text)
            .ok()
            .or_else(|| {
                toml::from_str::<toml::Value>(&text)
                    .ok()
                    .and_then(|t| serde_json::to_value(t).ok())
            })
            .unwrap_or(Value::String(text.chars().take(4096).collect())),
        Err(e) => serde_json::json!({"error": e.to_string()}),
    }
}

/// One model of `GET /api/v1/models`.
#[derive(Serialize)]
struct ModelView {
    manifest_path: String,
    manifest: Value,
}

/// `GET /api/v1/models`: the configured manifest.
pub(super) fn models(c: &Console) -> Response {
    let model = ModelView {
        manifest_path: c.model.display().to_string(),
        manifest: read_manifest(&c.model),
    };
    reply::json(StatusCode::OK, &[model])
}

/// A supervised stage that is down or stale.
#[derive(Serialize)]
struct StageProblem {
    stage: String,
    problem: String,
}

/// The answer of `/healthz`.
#[derive(Serialize)]
struct Health {
    status: &'static str,
    inference: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    stages: Option<Vec<StageProblem>>,
}

/// `/healthz` (no login): `status` is `ok`, or `degraded` while studies cannot be analysed
/// (`inference`: `waiting for model`): 200 while every supervised stage runs and beats;
/// 503 with `stages` naming each one that is down or stale. Reasons (an error's text, a
/// path on the box) are not given here: the system page and the journal have them.
pub(super) fn health(c: &Console) -> Response {
    let model = c.model_status.get();
    let inference = model.summary().to_string();
    match c.stages.check(crate::supervise::STALE_AFTER) {
        Ok(()) => {
            let status = match model {
                crate::infer::ModelState::Waiting(_) => "degraded",
                _ => "ok",
            };
            let health = Health {
                status,
                inference,
                stages: None,
            };
            reply::json(StatusCode::OK, &health)
        }
        Err(problems) => {
            let stages = problems
                .iter()
                .map(|p| StageProblem {
                    stage: p.stage().to_string(),
                    problem: p.summary(),
                })
                .collect();
            let health = Health {
                status: "degraded",
                inference,
                stages: Some(stages),
            };
            reply::json(StatusCode::SERVICE_UNAVAILABLE, &health)
        }
    }
}

/// `/metrics`: Prometheus text. The outbox figures are counted off the runtime's threads,
/// once per change of the outbox however often they are asked for.
pub(super) async fn metrics(c: &Console) -> Result<Response, ApiError> {
    let delivery = c.delivery.clone();
    let stats = tokio::task::spawn_blocking(move || delivery.stats())
        .await?
        .unwrap_or_default();
    let snap = crate::web::snapshot(&c.store, &stats, c.audit.budget());
    Ok(reply::bytes(
        StatusCode::OK,
        "text/plain; version=0.0.4",
        c.metrics.render(&snap).into_bytes(),
    ))
}

#[derive(Serialize)]
struct Disk {
    data_dir: String,
    free_bytes: Option<u64>,
    total_bytes: Option<u64>,
}

#[derive(Serialize)]
struct StoreFigures {
    instances: u64,
    studies: BTreeMap<&'static str, u64>,
}

#[derive(Serialize)]
struct ModelState {
    manifest_path: String,
    state: String,
}

#[derive(Serialize)]
struct PeerView<'a> {
    name: &'a str,
    ae_title: &'a str,
    host: &'a str,
    port: u16,
}

/// The answer of `GET /api/v1/system`.
#[derive(Serialize)]
struct System<'a> {
    version: &'static str,
    site_id: &'a str,
    device_id: &'a str,
    uptime_secs: u64,
    disk: Disk,
    store: StoreFigures,
    outbox: Fill,
    model: ModelState,
    peers: Vec<PeerView<'a>>,
    audit_head: Option<Head>,
    /// The forwarding to the audit record repository; `null` when it is off.
    audit_forward: Option<crate::audit_forward::status::ForwardStatus>,
}

/// `GET /api/v1/system`: version, identity, disk, store and outbox figures, model state,
/// peers, the audit head and the state of its forwarding.
pub(super) fn system(c: &Console) -> Result<Response, ApiError> {
    let total = nix::sys::statvfs::statvfs(&c.data_dir)
        .ok()
        .map(|s| s.blocks() * s.fragment_size());
    let system = System {
        version: env!("CARGO_PKG_VERSION"),
        site_id: &c.site_id,
        device_id: &c.device_id,
        uptime_secs: c.started.elapsed().as_secs(),
        disk: Disk {
            data_dir: c.data_dir.display().to_string(),
            free_bytes: c.store.files().free_bytes().ok(),
            total_bytes: total,
        },
        store: StoreFigures {
            instances: c.store.instance_count(),
            studies: c
                .store
                .indexed_state_counts()?
                .into_iter()
                .map(|(s, n)| (s.as_str(), n))
                .collect(),
        },
        outbox: c.delivery.fill(),
        model: ModelState {
            manifest_path: c.model.display().to_string(),
            state: c.model_status.get().describe(),
        },
        peers: c
            .peers
            .iter()
            .map(|p| PeerView {
                name: &p.name,
                ae_title: &p.ae_title,
                host: &p.host,
                port: p.port,
            })
            .collect(),
        audit_head: head(c),
        audit_forward: super::audit::forward_status(c),
    };
    Ok(reply::json(StatusCode::OK, &system))
}

/// The answer of the C-ECHO test.
#[derive(Serialize)]
struct EchoResults {
    results: Vec<echo::EchoRow>,
}

/// `POST /api/v1/system/echo`: C-ECHO to this box's SCP and every PACS destination. Holds
/// one of the console's outbound slots, not a request permit, while it waits: one test
/// per user at a time (429 beyond), [`crate::console::limits::OUTBOUND_TOTAL`] in all (503
/// beyond), both with `Retry-After`.
pub(super) async fn echo(c: &Console, s: &Session) -> Result<Response, ApiError> {
    let _slot = c
        .limits
        .outbound
        .try_take(s.user.clone())
        .map_err(|e| match e {
            Refused::PerKey(_) => ApiError::TooMany(
                "a connectivity test of this user is still running; wait for its answer".into(),
            ),
            Refused::Total(_) => {
                ApiError::Busy("the console runs as many connectivity tests as it can".into())
            }
        })?;
    let results = echo::echo_all(&c.echo_peers, &c.ae_title, ECHO_LIMIT).await;
    Ok(reply::json(StatusCode::OK, &EchoResults { results }))
}
