//! Study results as the console shows them: the recorded [`StudyResult`] with what every
//! page states beside it (why the study was not analysed, the caveat of its findings, the
//! first heatmap), and `GET /api/v1/studies/{uid}/heatmap`.

use crate::console::reply::{self, ApiError};
use crate::console::Console;
use crate::result::{HeatmapState, StudyResult};
use serde::Serialize;
use std::path::{Component, Path, PathBuf};
use warp::http::StatusCode;
use warp::reply::Response;

/// The latest result of a study, as the API answers it: every field of the recorded
/// result, plus `heatmap_path` (the first analysed image's heatmap, when one is done),
/// `not_applicable` (why the study was not analysed) and `caveat` (what comes with its
/// findings).
#[derive(Debug, Serialize)]
pub struct ResultView {
    /// The recorded result.
    #[serde(flatten)]
    pub result: StudyResult,
    /// The first finished heatmap, relative to the data directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heatmap_path: Option<String>,
    /// Outside the model's intended use: why (said on every page).
    pub not_applicable: Option<String>,
    /// What a reader must know about the findings.
    pub caveat: Option<String>,
}

impl From<StudyResult> for ResultView {
    fn from(result: StudyResult) -> ResultView {
        let heatmap_path = result.images.iter().find_map(|i| match &i.heatmap {
            HeatmapState::Done { path, .. } => Some(path.clone()),
            _ => None,
        });
        ResultView {
            not_applicable: result.not_applicable_reason(),
            caveat: result.caveat(),
            heatmap_path,
            result,
        }
    }
}

/// The latest recorded result of a study.
pub(super) fn latest(c: &Console, uid: &str) -> Result<Option<ResultView>, ApiError> {
    Ok(crate::store::results::latest_result(&c.store, uid)?.map(ResultView::from))
}

/// A path under the data directory, when `rel` is relative and never leaves it.
pub(super) fn data_path(data_dir: &Path, rel: &str) -> Option<PathBuf> {
    let rel = Path::new(rel);
    if rel.is_absolute() || rel.components().any(|p| !matches!(p, Component::Normal(_))) {
        return None;
    }
    Some(data_dir.join(rel))
}

/// `GET /api/v1/studies/{uid}/heatmap`: the PNG of the first finished heatmap.
pub(super) async fn heatmap(
    c: &Console,
    req: &super::Request,
    s: &crate::console::sessions::Session,
    uid: &str,
) -> Result<Response, ApiError> {
    let result = latest(c, uid)?.ok_or(ApiError::NotFound)?;
    let path = result
        .heatmap_path
        .as_deref()
        .and_then(|p| data_path(&c.data_dir, p))
        .ok_or(ApiError::NotFound)?;
    super::studies::audit_image_view(c, req, s, uid, "heatmap").await?;
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|_| ApiError::NotFound)?;
    Ok(reply::bytes(StatusCode::OK, "image/png", bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_paths_stay_inside_the_data_directory() {
        let root = Path::new("/data");
        assert_eq!(
            data_path(root, "heatmaps/a.png"),
            Some(PathBuf::from("/data/heatmaps/a.png"))
        );
        assert_eq!(data_path(root, "../etc/passwd"), None);
        assert_eq!(data_path(root, "/etc/passwd"), None);
    }
}
