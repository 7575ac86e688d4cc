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

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
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

/// What every handler here needs: the shared state, the uid reads are answered as, and the
/// request's headers (for ranges).
struct Asker {
    shared: Arc<Shared>,
    uid: u32,
    headers: HeaderMap,
}

impl FromRequestParts<Arc<Shared>> for Asker {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<Shared>) -> Result<Asker, ApiError> {
        let access = parts
            .extensions
            .get::<Access>()
            .ok_or_else(|| ApiError::internal("the caller was not identified"))?;
        Ok(Asker {
            shared: Arc::clone(state),
            uid: reader(access),
            headers: parts.headers.clone(),
        })
    }
}

impl Asker {
    /// Serves the file `pick` finds for job `id`, as this caller may see the job.
    async fn job_file(
        self,
        id: String,
        content_type: &'static str,
        cache_control: &'static str,
        pick: impl FnOnce(&Shared, &Value, &Dir) -> Result<File, ApiError> + Send + 'static,
    ) -> Result<Response, ApiError> {
        blocking(move || {
            let (detail, job) = open_job(&self.shared, self.uid, &id)?;
            let file = pick(&self.shared, &detail, &job)?;
            serve_file(file, content_type, cache_control, &self.headers)
        })
        .await
    }
}

async fn video(asker: Asker, Path(id): Path<String>) -> Result<Response, ApiError> {
    asker
        .job_file(id, "video/mp4", "no-cache", |shared, detail, _| {
            open_video(shared, detail)
        })
        .await
}

async fn live_playlist(asker: Asker, Path(id): Path<String>) -> Result<Response, ApiError> {
    let text = blocking(move || {
        let (detail, job) = open_job(&asker.shared, asker.uid, &id)?;
        // The phase is read before the clips: a job that ended has all its clips by then.
        let ended = crate::jobview::parse_phase(phase(&detail)).is_ok_and(|p| p.is_terminal());
        let segments = locked(&asker.shared, || preview::update_segments(&job))?;
        Ok(preview::playlist(
            &segments,
            ended,
            preview::clip_secs(&job),
        ))
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

/// The clip number in `name` (`<k><extension>`), or a 404 for any other name.
fn clip_in(name: &str, extension: &str) -> Result<u32, ApiError> {
    preview::clip_number(name, extension).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no file `{name}` here: names are a clip number and `{extension}`, like `0{extension}`"),
        )
    })
}

async fn live_segment(
    asker: Asker,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let k = clip_in(&name, ".ts")?;
    asker
        .job_file(id, "video/mp2t", "no-cache", move |_, _, job| {
            preview::segment_file(job, k)
        })
        .await
}

async fn clip_thumbnail(
    asker: Asker,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let k = clip_in(&name, ".jpg")?;
    asker
        .job_file(id, "image/jpeg", "no-cache", move |shared, _, job| {
            locked(shared, || preview::clip_thumbnail(job, k))
        })
        .await
}

async fn poster(asker: Asker, Path(id): Path<String>) -> Result<Response, ApiError> {
    asker
        .job_file(id, "image/jpeg", "no-cache", |shared, detail, job| {
            let video = open_video(shared, detail).ok();
            locked(shared, || preview::poster(job, video))
        })
        .await
}

/// The newest clip thumbnail: the worker's own (`work/clips/<k>.jpg`, highest k) when it
/// wrote one, else one made here from the newest clip.
async fn thumbnail(asker: Asker, Path(id): Path<String>) -> Result<Response, ApiError> {
    asker
        .job_file(id, "image/jpeg", "no-store", |shared, _, job| {
            let clips = job
                .subdir("work")
                .and_then(|work| work.subdir("clips"))
                .map_err(|_| {
                    ApiError::new(StatusCode::NOT_FOUND, "no clip of this job is done yet")
                })?;
            let names = clips.names().unwrap_or_default();
            let newest = |extension: &str| {
                names
                    .iter()
                    .filter_map(|name| preview::clip_number(name, extension))
                    .max()
            };
            let from_worker =
                newest(".jpg").and_then(|k| clips.open_file(&format!("{k}.jpg")).ok());
            match (from_worker, newest(".mkv")) {
                (Some(file), _) => Ok(file),
                (None, Some(k)) => locked(shared, || preview::clip_thumbnail(job, k)),
                (None, None) => Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "no clip of this job has a thumbnail yet",
                )),
            }
        })
        .await
}
