//! `/api/v1/studies`: the worklist, one study with its instances, result, feedback and
//! delivery, and the display previews of its instances.

use super::results::{self, ResultView};
use super::{audit_now, source, Request, MAX_STUDIES};
use crate::audit::{Action, Event};
use crate::console::reply::{self, ApiError};
use crate::console::sessions::Session;
use crate::console::{feedback, preview, Console};
use crate::model::{InstanceRecord, StudyRecord, StudyState};
use crate::report::Feedback;
use crate::store::worklist::{ResultSummary, Row, TopFinding};
use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;

/// What the worklist and the study page show of a study: its patient and study
/// attributes, state, and its latest result's triage flag, top finding and notes.
#[derive(Debug, Serialize)]
pub struct StudySummary<'a> {
    /// Study Instance UID.
    pub study_uid: &'a str,
    /// Patient ID.
    pub patient_id: &'a str,
    /// Patient's name.
    pub patient_name: &'a str,
    /// Accession Number.
    pub accession: &'a str,
    /// Study Date (YYYYMMDD).
    pub study_date: &'a str,
    /// Study Description.
    pub description: &'a str,
    /// Modalities seen.
    pub modalities: &'a [String],
    /// First instance received (seconds since the epoch).
    pub received: i64,
    /// Last instance received (seconds since the epoch).
    pub last_received: i64,
    /// Pipeline state.
    pub state: StudyState,
    /// Why the study is in `error`.
    pub error: Option<&'a str>,
    /// Whether the latest result marks the study urgent (none without a result).
    pub triage: Option<bool>,
    /// The finding with the highest probability.
    pub top_finding: Option<&'a TopFinding>,
    /// Why the study was not analysed.
    pub not_applicable: Option<&'a str>,
    /// What comes with the findings.
    pub caveat: Option<&'a str>,
}

impl<'a> StudySummary<'a> {
    /// The summary of `study` with its latest result's `summary`.
    pub fn new(study: &'a StudyRecord, summary: Option<&'a ResultSummary>) -> StudySummary<'a> {
        StudySummary {
            study_uid: &study.study_instance_uid,
            patient_id: &study.patient_id,
            patient_name: &study.patient_name,
            accession: &study.accession_number,
            study_date: &study.study_date,
            description: &study.study_description,
            modalities: &study.modalities,
            received: study.first_received,
            last_received: study.last_received,
            state: study.state,
            error: study.error.as_deref(),
            triage: summary.map(|r| r.urgent),
            top_finding: summary.and_then(|r| r.top_finding.as_ref()),
            not_applicable: summary.and_then(|r| r.not_applicable.as_deref()),
            caveat: summary.and_then(|r| r.caveat.as_deref()),
        }
    }
}

/// One row of the worklist.
#[derive(Debug, Serialize)]
pub struct WorklistRow<'a> {
    /// The study.
    #[serde(flatten)]
    pub summary: StudySummary<'a>,
    /// Number of instances.
    pub instances: u64,
}

/// The worklist answer: how many studies match, and the first page of them.
#[derive(Debug, Serialize)]
struct Worklist<'a> {
    total: usize,
    studies: Vec<WorklistRow<'a>>,
}

/// The worklist query: `q` (case-insensitive substring of name, patient ID, accession,
/// study UID or description), `state`, `urgent=1`, `limit` (default 200, at most
/// [`MAX_STUDIES`]).
struct WorklistQuery {
    q: Option<String>,
    state: Option<String>,
    urgent_only: bool,
    limit: usize,
}

/// Most bytes of a worklist search: above any name, ID or accession number it can match
/// (as a C-FIND key's 256), and every search is written to the audit trail.
const MAX_SEARCH: usize = 256;

impl WorklistQuery {
    /// The query of `req`: a search over [`MAX_SEARCH`] bytes or a state that is not a
    /// study state is a bad request (each listing is remembered for its audit window, so
    /// free text there would grow that table at will).
    fn of(req: &Request) -> Result<WorklistQuery, ApiError> {
        let q = req
            .query
            .get("q")
            .map(|v| v.trim().to_lowercase())
            .filter(|v| !v.is_empty());
        if q.as_ref().is_some_and(|q| q.len() > MAX_SEARCH) {
            return Err(ApiError::BadRequest(format!(
                "a search holds at most {MAX_SEARCH} bytes"
            )));
        }
        let state = match req.query.get("state").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => match crate::model::StudyState::ALL.iter().find(|s| s.as_str() == v) {
                Some(s) => Some(s.as_str().to_string()),
                None => {
                    return Err(ApiError::BadRequest(
                        "state is not a study state (receiving, complete, queued, inferring, done, error)"
                            .into(),
                    ))
                }
            },
        };
        Ok(WorklistQuery {
            q,
            state,
            urgent_only: req
                .query
                .get("urgent")
                .is_some_and(|v| v == "1" || v == "true"),
            limit: req
                .query
                .get("limit")
                .and_then(|v| v.parse().ok())
                .unwrap_or(200usize)
                .min(MAX_STUDIES),
        })
    }

    /// The listing's filter as the audit trail names it (a search is recorded on its own).
    fn filter(&self) -> String {
        format!(
            "state {}, {}, limit {}",
            self.state.as_deref().unwrap_or("any"),
            if self.urgent_only {
                "urgent only"
            } else {
                "all priorities"
            },
            self.limit
        )
    }

    fn matches(&self, row: &Row) -> bool {
        let study = &row.study;
        if self
            .state
            .as_deref()
            .is_some_and(|state| study.state.as_str() != state)
        {
            return false;
        }
        if let Some(q) = &self.q {
            let hay = [
                &study.patient_name,
                &study.patient_id,
                &study.accession_number,
                &study.study_instance_uid,
                &study.study_description,
            ];
            if !hay.iter().any(|h| h.to_lowercase().contains(q.as_str())) {
                return false;
            }
        }
        !self.urgent_only || row.urgent()
    }
}

/// `GET /api/v1/studies`: urgent studies first, then the newest, from the store's
/// worklist index.
pub(super) async fn worklist(
    c: &Console,
    req: &Request,
    s: &Session,
) -> Result<Response, ApiError> {
    let query = WorklistQuery::of(req)?;
    let page = c
        .store
        .worklist_page(|row| query.matches(row), query.limit)?;
    let total = page.total;
    let answer = Worklist {
        total,
        studies: page
            .rows
            .iter()
            .map(|row| WorklistRow {
                summary: StudySummary::new(&row.study, row.result.as_ref()),
                instances: row.study.instances,
            })
            .collect(),
    };
    // A search is audited each time; a listing (names, IDs and accession numbers) once per
    // user, filter and window, as the page reloads it often: another state, the urgent
    // filter or another limit is a listing of its own.
    if let Some(q) = &query.q {
        audit_now(
            c,
            Event::new(&s.user, Action::Query, "worklist")
                .from(&source(req))
                .detail(format!("search {q:?}: {total} studies")),
        )
        .await?;
    } else {
        // Taken as audited only once the record is written.
        let record = audit_now(
            c,
            Event::new(&s.user, Action::Query, "worklist")
                .from(&source(req))
                .detail(format!(
                    "listed {} of {total} studies ({}); the same listing within {} min not recorded one by one",
                    answer.studies.len(),
                    query.filter(),
                    crate::console::access_log::WINDOW.as_secs() / 60
                )),
        );
        c.accesses
            .once(&s.user, &format!("worklist {}", query.filter()), record)
            .await?;
    }
    Ok(reply::json(StatusCode::OK, &answer))
}

/// One instance of the study page, with the URLs of its preview.
#[derive(Debug, Serialize)]
struct InstanceView<'a> {
    sop_instance_uid: &'a str,
    series_instance_uid: &'a str,
    sop_class_uid: &'a str,
    modality: &'a str,
    series_number: Option<i64>,
    instance_number: Option<i64>,
    view_position: &'a str,
    body_part: &'a str,
    rows: Option<u32>,
    columns: Option<u32>,
    pruned: bool,
    preview: String,
    preview_info: String,
}

impl<'a> InstanceView<'a> {
    fn new(study_uid: &str, i: &'a InstanceRecord) -> InstanceView<'a> {
        let base = format!(
            "/api/v1/studies/{study_uid}/instances/{}",
            i.sop_instance_uid
        );
        InstanceView {
            sop_instance_uid: &i.sop_instance_uid,
            series_instance_uid: &i.series_instance_uid,
            sop_class_uid: &i.sop_class_uid,
            modality: &i.modality,
            series_number: i.series_number,
            instance_number: i.instance_number,
            view_position: &i.view_position,
            body_part: &i.body_part,
            rows: i.rows,
            columns: i.columns,
            pruned: i.pruned,
            preview: format!("{base}/preview"),
            preview_info: format!("{base}/preview-info"),
        }
    }
}

/// The delivery state of one message of the study's report.
#[derive(Debug, Serialize)]
struct DeliveryView {
    destination: String,
    kind: &'static str,
    state: String,
    attempts: u32,
    last_error: Option<String>,
    /// The peer's words with the last refusal (this page's view is audited).
    peer_text: Option<String>,
}

/// Shown with every result.
const AI_NOTICE: &str = "AI-generated, preliminary: not a diagnosis";

/// What the study page shows of the study record, and nothing more: the birth date, sex,
/// physicians and the identity a report went out under stay on the box.
#[derive(Debug, Serialize)]
struct StudyHeader<'a> {
    patient_name: &'a str,
    patient_id: &'a str,
    accession_number: &'a str,
    study_description: &'a str,
    /// When its first instance arrived (seconds since the epoch).
    first_received: i64,
}

impl<'a> StudyHeader<'a> {
    fn of(study: &'a StudyRecord) -> StudyHeader<'a> {
        StudyHeader {
            patient_name: &study.patient_name,
            patient_id: &study.patient_id,
            accession_number: &study.accession_number,
            study_description: &study.study_description,
            first_received: study.first_received,
        }
    }
}

/// The study page.
#[derive(Debug, Serialize)]
pub struct StudyView<'a> {
    /// What the worklist shows of the study.
    #[serde(flatten)]
    summary: StudySummary<'a>,
    /// What the page shows of the study record.
    study: StudyHeader<'a>,
    /// Its instances.
    instances: Vec<InstanceView<'a>>,
    /// The latest result.
    result: Option<&'a ResultView>,
    /// URL of the heatmap, when its file exists.
    heatmap: Option<String>,
    /// Radiologists' feedback, oldest first: the latest [`feedback::MAX_SHOWN`].
    feedback: Vec<Feedback>,
    /// How many feedback records the study has in all.
    feedback_total: usize,
    /// Delivery of the result's report.
    delivery: Vec<DeliveryView>,
    /// The notice every result carries.
    ai_notice: &'static str,
}

/// The delivery of a result's report: the outbox's account of each message.
async fn delivery_of(
    c: &Console,
    result: Option<&ResultView>,
) -> Result<Vec<DeliveryView>, ApiError> {
    let Some(result) = result else {
        return Ok(Vec::new());
    };
    // Reads every pending entry's header: off the runtime's threads.
    let delivery = c.delivery.clone();
    let report_id = result.result.report_id.clone();
    Ok(
        tokio::task::spawn_blocking(move || delivery.status_of(&report_id))
            .await??
            .into_iter()
            .map(|s| DeliveryView {
                destination: s.dest.name(),
                kind: s.kind.as_str(),
                state: s.state,
                attempts: s.attempts,
                last_error: s.last_error,
                peer_text: s.peer_text,
            })
            .collect(),
    )
}

/// `GET /api/v1/studies/{uid}` (audited as a view of the patient's data).
pub(super) async fn study(
    c: &Console,
    req: &Request,
    s: &Session,
    uid: &str,
) -> Result<Response, ApiError> {
    let rec = c.store.study(uid)?.ok_or(ApiError::NotFound)?;
    let instances = c.store.instances_of(uid)?;
    let result = results::latest(c, uid)?;
    let summary = result.as_ref().map(|r| ResultSummary::of(&r.result));
    let heatmap = result
        .as_ref()
        .and_then(|r| r.heatmap_path.as_deref())
        .and_then(|p| results::data_path(&c.data_dir, p))
        .filter(|p| p.exists())
        .map(|_| format!("/api/v1/studies/{uid}/heatmap"));
    let (feedback, feedback_total) = feedback::of_study(&c.store, uid)?;
    let delivery = delivery_of(c, result.as_ref()).await?;
    audit_now(
        c,
        Event::new(&s.user, Action::View, uid)
            .from(&source(req))
            .detail(format!("study of patient {}", rec.patient_id)),
    )
    .await?;
    // The previews and heatmap the page loads next are covered by this record.
    c.accesses.note(&s.user, &viewed(uid));
    let view = StudyView {
        summary: StudySummary::new(&rec, summary.as_ref()),
        study: StudyHeader::of(&rec),
        instances: instances
            .iter()
            .map(|i| InstanceView::new(uid, i))
            .collect(),
        result: result.as_ref(),
        heatmap,
        feedback,
        feedback_total,
        delivery,
        ai_notice: AI_NOTICE,
    };
    Ok(reply::json(StatusCode::OK, &view))
}

/// `GET .../instances/{sop}/preview` (the PNG) and `.../preview-info` (its window and
/// size), rendered once per instance; 404 for an instance not in the study, 410 once its
/// pixel data is pruned (checked before the cache is read).
pub(super) async fn preview(
    c: &Console,
    req: &Request,
    s: &Session,
    (uid, sop): (&str, &str),
    info_only: bool,
) -> Result<Response, ApiError> {
    let inst = c
        .store
        .instance(sop)?
        .filter(|i| i.study_instance_uid == uid)
        .ok_or(ApiError::NotFound)?;
    audit_image_view(c, req, s, uid, &format!("preview of instance {sop}")).await?;
    let data_dir = c.data_dir.clone();
    let max_pixels = c.max_pixels;
    let user = s.user.clone();
    let (png, info) = tokio::task::spawn_blocking(move || {
        preview::get_or_render(&data_dir, &inst, max_pixels, &user)
    })
    .await??;
    if info_only {
        return Ok(reply::json(StatusCode::OK, &info));
    }
    let bytes = match tokio::fs::read(&png).await {
        Ok(bytes) => bytes,
        // Removed since it was found: its instance was pruned in between.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(preview::PreviewError::Pruned.into())
        }
        Err(e) => {
            log::error!("console: preview {}: {e}", png.display());
            return Err(e.into());
        }
    };
    // Never stored by the browser (`reply::secure` sets `no-store`): reading-room PCs are
    // shared, and the file is cached on the server already.
    Ok(reply::bytes(StatusCode::OK, "image/png", bytes))
}

/// What [`crate::console::access_log::AccessLog`] calls the view of a study's images.
pub(super) fn viewed(uid: &str) -> String {
    format!("study {uid}")
}

/// Audits a view of a study's images (`what`: a preview, the heatmap) unless the user
/// opened the study page or viewed its images within the window.
pub(super) async fn audit_image_view(
    c: &Console,
    req: &Request,
    s: &Session,
    uid: &str,
    what: &str,
) -> Result<(), ApiError> {
    // Taken as audited only once the record is written.
    let record = async {
        let patient = c
            .store
            .study(uid)?
            .map(|r| r.patient_id)
            .unwrap_or_default();
        audit_now(
            c,
            Event::new(&s.user, Action::View, uid)
                .from(&source(req))
                .detail(format!(
                    "{what} of patient {patient}; further views of this study's images within {} min not recorded one by one",
                    crate::console::access_log::WINDOW.as_secs() / 60
                )),
        )
        .await
    };
    c.accesses.once(&s.user, &viewed(uid), record).await?;
    Ok(())
}
