//! `POST /api/v1/upload`: a manual upload (DICOM, or PNG/JPEG as Secondary Capture),
//! stored like a received instance and handed to study assembly; audited either way.

use super::{audit_now, source, Request};
use crate::audit::{Action, Event};
use crate::console::reply::{self, ApiError};
use crate::console::sessions::Session;
use crate::console::{upload, Console};
use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;

/// Answer of an upload.
#[derive(Serialize)]
struct Uploaded<'a> {
    study_uid: &'a str,
    sop_instance_uid: &'a str,
    sop_class_uid: &'a str,
    patient_id: &'a str,
    format: &'a str,
    study_url: String,
}

/// Stores one upload (201 with where it went).
pub(super) async fn upload(c: &Console, req: Request, s: &Session) -> Result<Response, ApiError> {
    let src = source(&req);
    let filename = req.query.get("name").cloned().unwrap_or_default();
    let size = req.body.len();
    let (store, root, name) = (c.store.clone(), c.uid_root.clone(), filename.clone());
    let max_pixels = c.max_pixels;
    let body = req.body;
    let stored = tokio::task::spawn_blocking(move || {
        let p = upload::prepare_one_at_a_time(&body, &name, &root, max_pixels)?;
        drop(body);
        let rec = crate::results::store_as(&store, &p.object, upload::UPLOAD_AE, false)?;
        Ok::<_, ApiError>((p.format, p.patient_id, rec))
    })
    .await?;
    let (format, patient_id, rec) = match stored {
        Ok(x) => x,
        Err(e) => {
            audit_now(
                c,
                Event::new(&s.user, Action::Import, "upload")
                    .from(&src)
                    .detail(format!("{filename:?} ({size} bytes) refused: {e}"))
                    .failed(),
            )
            .await?;
            return Err(e);
        }
    };
    let study = rec.study_instance_uid.clone();
    c.audit.append(
        Event::new(&s.user, Action::Import, &study)
            .from(&src)
            .detail(format!(
                "upload {filename:?} ({format}, {size} bytes) as patient {patient_id}"
            )),
    )?;
    c.store.flush().await?;
    if let Some(tx) = c.assembly.upgrade() {
        let _ = tx
            .send(crate::assemble::Event::Added {
                study: study.clone(),
            })
            .await;
    }
    let answer = Uploaded {
        study_uid: &study,
        sop_instance_uid: &rec.sop_instance_uid,
        sop_class_uid: &rec.sop_class_uid,
        patient_id: &patient_id,
        format,
        study_url: format!("#/study/{study}"),
    };
    Ok(reply::json(StatusCode::CREATED, &answer))
}
