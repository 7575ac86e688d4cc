//! What there is to watch of a job: the finished video (with range requests, so players
//! seek), the live preview while it runs (`live.m3u8`, an HLS event playlist of the finished
//! clips, and its segments `live/<k>.ts`), a thumbnail per clip (`clips/<k>.jpg`), the newest
//! thumbnail (`thumbnail.jpg`) and the poster of the finished video (`poster.jpg`).
//!
//! Every one of them is a read about one job: it goes through `job_detail`, so the control
//! socket's rules decide who may see it, exactly as for the job's page. Files come only from
//! the job's folder (reached through `safe_fs`, never through a symlink, only under names
//! this server makes) and, for the video, from under the configured output roots.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::Value;

use super::api::{blocking, job_detail, reader};
use super::auth::Access;
use super::preview;
use super::ranges::serve_file;
use super::safe_fs::{self, Dir};
use super::shared::{ApiError, Shared};

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/jobs/{id}/video", get(video))
        .route("/jobs/{id}/thumbnail.jpg", get(thumbnail))
        .route("/jobs/{id}/poster.jpg", get(poster))
        .route("/jobs/{id}/live.m3u8", get(live_playlist))
        .route("/jobs/{id}/live/{name}", get(live_segment))
        .route("/jobs/{id}/clips/{name}", get(clip_thumbnail))
}

/// The job as `uid` may see it (the control socket's rules), and its folder.
fn open_job(shared: &Shared, uid: u32, id: &str) -> Result<(Value, Dir), ApiError> {
    let detail = job_detail(shared, uid, id)?;
    let real_id = detail["job"]["id"]
        .as_str()
        .ok_or_else(|| ApiError::internal("the job has no id"))?;
    let dir = safe_fs::job_dir(&shared.layout.jobs, real_id).map_err(|err| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("the job's folder cannot be opened: {err}"),
        )
    })?;
    Ok((detail, dir))
}

fn phase(detail: &Value) -> &str {
    detail["job"]["phase"].as_str().unwrap_or("")
}

/// The finished video, opened only when it lies under one of the configured output roots.
fn open_video(shared: &Shared, detail: &Value) -> Result<File, ApiError> {
    let Some(output) = detail["job"]["output"].as_str() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "the job has no video (yet)",
        ));
    };
    if phase(detail) != "done" {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "the job is not done"));
    }
    let path = std::fs::canonicalize(output)
        .map_err(|err| ApiError::new(StatusCode::NOT_FOUND, format!("the video is gone: {err}")))?;
    let allowed = shared
        .config
        .allowed_roots
        .outputs
        .iter()
        .filter_map(|root| std::fs::canonicalize(root).ok())
        .any(|root| path.starts_with(root));
    if !allowed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the video is outside the configured output roots",
        ));
    }
    // The path is canonical: a symlink now would have been put there since.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|err| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("cannot read the video: {err}"),
            )
        })?;
    let is_file = file.metadata().map(|m| m.is_file()).unwrap_or(false);
    if !is_file {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "the video is not a regular file",
        ));
    }
    Ok(file)
}

/// Runs `work` with the preview lock held: one request at a time makes preview files.
fn locked<T>(shared: &Shared, work: impl FnOnce() -> T) -> T {
    let _guard = shared
        .preview_lock
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    work()
}

async fn video(
    State(shared): State<Arc<Shared>>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let uid = reader(&access);
    blocking(move || {
        let detail = job_detail(&shared, uid, &id)?;
        let file = open_video(&shared, &detail)?;
        serve_file(file, "video/mp4", "no-cache", &headers)
    })
    .await
}

async fn live_playlist(
    State(shared): State<Arc<Shared>>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let uid = reader(&access);
    let text = blocking(move || {
        let (detail, job) = open_job(&shared, uid, &id)?;
        // The phase is read before the clips: a job that ended has all its clips by then.
        let ended = crate::jobview::parse_phase(phase(&detail)).is_ok_and(|p| p.is_terminal());
        let segments = locked(&shared, || preview::update_segments(&job))?;
        Ok(preview::playlist(&segments, ended))
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/vnd.apple.mpegurl"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response())
}

fn unknown_name(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no file `{name}` here: names are a clip number and an extension, like `0.ts`"),
    )
}

async fn live_segment(
    State(shared): State<Arc<Shared>>,
    Extension(access): Extension<Access>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let uid = reader(&access);
    let k = preview::clip_number(&name, ".ts").ok_or_else(|| unknown_name(&name))?;
    blocking(move || {
        let (_, job) = open_job(&shared, uid, &id)?;
        let file = preview::segment_file(&job, k)?;
        serve_file(file, "video/mp2t", "no-cache", &headers)
    })
    .await
}

async fn clip_thumbnail(
    State(shared): State<Arc<Shared>>,
    Extension(access): Extension<Access>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let uid = reader(&access);
    let k = preview::clip_number(&name, ".jpg").ok_or_else(|| unknown_name(&name))?;
    blocking(move || {
        let (_, job) = open_job(&shared, uid, &id)?;
        let file = locked(&shared, || preview::clip_thumbnail(&job, k))?;
        serve_file(file, "image/jpeg", "no-cache", &headers)
    })
    .await
}

async fn poster(
    State(shared): State<Arc<Shared>>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let uid = reader(&access);
    blocking(move || {
        let (detail, job) = open_job(&shared, uid, &id)?;
        let video = open_video(&shared, &detail).ok();
        let file = locked(&shared, || preview::poster(&job, video))?;
        serve_file(file, "image/jpeg", "no-cache", &headers)
    })
    .await
}

/// The newest clip thumbnail: the worker's own (`work/clips/<k>.jpg`, highest k) when it
/// wrote one, else one made here from the newest clip.
async fn thumbnail(
    State(shared): State<Arc<Shared>>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let uid = reader(&access);
    blocking(move || {
        let (_, job) = open_job(&shared, uid, &id)?;
        let clips = job
            .subdir("work")
            .and_then(|work| work.subdir("clips"))
            .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "no clip of this job is done yet"))?;
        let names = clips.names().unwrap_or_default();
        let newest = |extension: &str| {
            names
                .iter()
                .filter_map(|name| preview::clip_number(name, extension))
                .max()
        };
        let from_worker = newest(".jpg").and_then(|k| clips.open_file(&format!("{k}.jpg")).ok());
        let file = match (from_worker, newest(".mkv")) {
            (Some(file), _) => file,
            (None, Some(k)) => locked(&shared, || preview::clip_thumbnail(&job, k))?,
            (None, None) => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "no clip of this job has a thumbnail yet",
                ))
            }
        };
        serve_file(file, "image/jpeg", "no-store", &headers)
    })
    .await
}
