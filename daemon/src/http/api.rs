//! `/api/v1/…` (JSON), `/metrics` and `/healthz`. Every error is `{"error": "…"}` with a
//! status that says whose fault it is.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::Stream;
use jobs::index::IndexEntry;
use jobs::state::{now_ms, Phase};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::auth::Access;
use super::shared::{ApiError, ApiResult, Shared};
use crate::placement::pool_files::{self, CardAction, CardRequest, PoolPaths, PoolSnapshot};

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/jobs", get(list_jobs))
        .route("/api/v1/jobs/{id}", get(one_job))
        .route("/api/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/api/v1/jobs/{id}/priority", post(priority_job))
        .route("/api/v1/batches", get(list_batches))
        .route("/api/v1/batches/{id}", get(one_batch))
        .route("/api/v1/batches/{id}/cancel", post(cancel_batch))
        .route("/api/v1/gpus", get(gpus))
        .route("/api/v1/history", get(history))
        .route("/api/v1/gpus/{uuid}/drain", post(drain))
        .route("/api/v1/gpus/{uuid}/undrain", post(undrain))
        .route("/api/v1/events", get(events))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such page or endpoint; see docs/api.md",
            )
        })
}

/// Runs blocking file work off the async threads.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(ApiError::internal)?
}

async fn metrics(State(shared): State<Arc<Shared>>) -> ApiResult<Response> {
    let text = blocking(move || {
        super::follow::refresh_scrape_gauges(&shared);
        Ok(shared.metrics.encode())
    })
    .await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub struct JobsQuery {
    /// Comma-separated phases.
    state: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

/// The most jobs one page lists.
const MAX_PAGE: usize = 1000;

/// Parses `queued,running`; an unknown name is the caller's error.
pub fn parse_states(text: Option<&str>) -> ApiResult<Vec<Phase>> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    text.split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            crate::jobview::parse_phase(part.trim())
                .map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, message))
        })
        .collect()
}

/// One job as lists show it.
pub fn summary(entry: &IndexEntry) -> Value {
    json!({
        "id": entry.id,
        "name": entry.name,
        "phase": entry.phase,
        "priority": entry.priority,
        "submitted_at_ms": entry.submitted_at_ms,
        "gpu": entry.gpu,
        "clips_done": entry.clips_done,
        "clips_total": entry.clips_total,
        "eta_secs": entry.eta_secs,
        "retry_at_ms": entry.retry_at_ms,
    })
}

/// Jobs in `phases` (all when empty), newest first, and how many there are in all.
pub fn select_jobs(
    shared: &Shared,
    phases: &[Phase],
    offset: usize,
    limit: usize,
) -> ApiResult<(usize, Vec<IndexEntry>)> {
    let jobs_dir = &shared.layout.jobs;
    let mut entries = if jobs_dir.is_dir() {
        crate::jobview::index_entries(jobs_dir)
            .map_err(|err| ApiError::internal(format!("{err:#}")))?
    } else {
        Vec::new()
    };
    entries.retain(|entry| phases.is_empty() || phases.contains(&entry.phase));
    entries.sort_by(|a, b| {
        b.submitted_at_ms
            .cmp(&a.submitted_at_ms)
            .then_with(|| b.id.cmp(&a.id))
    });
    let total = entries.len();
    let page = entries.into_iter().skip(offset).take(limit).collect();
    Ok((total, page))
}

async fn list_jobs(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<JobsQuery>,
) -> ApiResult<Json<Value>> {
    let phases = parse_states(query.state.as_deref())?;
    let offset = query.offset.unwrap_or(0);
    let limit = query.limit.unwrap_or(100).min(MAX_PAGE);
    blocking(move || {
        let (total, page) = select_jobs(&shared, &phases, offset, limit)?;
        Ok(Json(json!({
            "total": total,
            "offset": offset,
            "limit": limit,
            "jobs": page.iter().map(summary).collect::<Vec<_>>(),
        })))
    })
    .await
}

/// One job with its events and notices, as `uid` may see it (control-socket rules).
/// The control socket's answer to `request` from `uid`, as the socket's own rules give it; its
/// `error` becomes the API's.
fn ask_control(shared: &Shared, uid: u32, request: &str) -> ApiResult<Value> {
    let answer = crate::control::answer(&shared.control, uid, request);
    match answer.get("error").and_then(Value::as_str) {
        Some(error) => Err(ApiError::from_control(error.to_string())),
        None => Ok(answer),
    }
}

pub fn job_detail(shared: &Shared, uid: u32, id: &str) -> ApiResult<Value> {
    let request = json!({ "op": "status", "job": id }).to_string();
    let mut answer = ask_control(shared, uid, &request)?;
    // The job's own worker progress, for the page: clip k of n and when it started.
    if let Some(job) = answer.get_mut("job") {
        let age = job
            .get("submitted_at_ms")
            .and_then(Value::as_u64)
            .map(|at| now_ms().saturating_sub(at) / 1000);
        job["age_secs"] = json!(age);
    }
    Ok(answer)
}

/// The uid reads are answered as: the caller's on the socket, the service's on TCP.
pub fn reader(access: &Access) -> u32 {
    match access.caller {
        super::auth::Caller::Socket { uid } => uid,
        // SAFETY: geteuid cannot fail and touches no memory.
        _ => unsafe { libc::geteuid() },
    }
}

async fn one_job(
    State(shared): State<Arc<Shared>>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let uid = reader(&access);
    blocking(move || job_detail(&shared, uid, &id).map(Json)).await
}

async fn cancel_job(
    State(shared): State<Arc<Shared>>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let uid = access.actor()?;
    blocking(move || {
        let request = json!({ "op": "cancel", "job": id }).to_string();
        let answer = ask_control(shared.as_ref(), uid, &request)?;
        tracing::info!(job = %id, uid, "cancel requested over HTTP");
        Ok(Json(json!({
            "id": answer.get("id"),
            "phase": answer.get("phase"),
            "cancel_requested": true,
        })))
    })
    .await
}

/// Every batch with its counts (not its jobs), newest first.
pub fn batch_list(shared: &Shared) -> Vec<crate::batches::BatchView> {
    let mut views: Vec<crate::batches::BatchView> = crate::batches::list(&shared.layout.state_dir)
        .into_iter()
        .map(|record| crate::batches::BatchView::read(&shared.layout.jobs, record))
        .collect();
    views.reverse();
    views
}

async fn list_batches(State(shared): State<Arc<Shared>>) -> ApiResult<Json<Value>> {
    blocking(move || {
        let batches: Vec<Value> = batch_list(&shared)
            .into_iter()
            .map(|mut view| {
                view.members.clear();
                let mut value = serde_json::to_value(&view).unwrap_or_default();
                if let Some(map) = value.as_object_mut() {
                    map.remove("members");
                }
                value
            })
            .collect();
        Ok(Json(json!({ "batches": batches })))
    })
    .await
}

async fn one_batch(
    State(shared): State<Arc<Shared>>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let uid = reader(&access);
    blocking(move || {
        let request = json!({ "op": "batch", "batch": id }).to_string();
        let answer = ask_control(shared.as_ref(), uid, &request)?;
        Ok(Json(answer))
    })
    .await
}

async fn cancel_batch(
    State(shared): State<Arc<Shared>>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let uid = access.actor()?;
    blocking(move || {
        let request = json!({ "op": "cancel_batch", "batch": id }).to_string();
        let answer = ask_control(shared.as_ref(), uid, &request)?;
        tracing::info!(batch = %id, uid, "batch cancel requested over HTTP");
        Ok(Json(answer))
    })
    .await
}

/// The body of `POST /api/v1/jobs/{id}/priority`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriorityBody {
    priority: i64,
}

/// Reads the body by hand, so a malformed one gets a JSON 400 like every other error.
fn priority_body(body: &[u8]) -> ApiResult<i64> {
    serde_json::from_slice::<PriorityBody>(body)
        .map(|body| body.priority)
        .map_err(|err| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body must be JSON like {{\"priority\": 10}} (a whole number from -1000 to 1000): {err}"
                ),
            )
        })
}

async fn priority_job(
    State(shared): State<Arc<Shared>>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let uid = access.actor()?;
    let priority = priority_body(&body)?;
    blocking(move || {
        let request = json!({ "op": "priority", "job": id, "priority": priority }).to_string();
        let answer = ask_control(shared.as_ref(), uid, &request)?;
        tracing::info!(job = %id, uid, priority, "priority change requested over HTTP");
        Ok(Json(json!({
            "id": answer.get("id"),
            "phase": answer.get("phase"),
            "priority": answer.get("priority"),
            "requested_priority": answer.get("requested_priority"),
        })))
    })
    .await
}

/// The cards as the daemon last described them, with live memory where discovery gives it.
/// A CPU slot has no memory or utilisation of its own (its memory is a nominal figure for
/// placement): it carries the host's instead, under `host`.
pub fn card_list(shared: &Shared) -> ApiResult<Value> {
    let paths = PoolPaths::new(&shared.config.state_dir);
    let snapshot = PoolSnapshot::load(&paths.snapshot)
        .map_err(|err| ApiError::internal(format!("{err:#}")))?;
    let live = gpu_pool::discover(&shared.config.gpu_pool).unwrap_or_default();
    let host = shared.history.latest_host();
    let cards: Vec<Value> = snapshot
        .as_ref()
        .map(|snapshot| snapshot.cards.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|card| {
            let cpu = card.kind == gpu_pool::GpuKind::Cpu;
            let now = live.iter().find(|info| info.uuid == card.uuid && !cpu);
            let host = host.filter(|_| cpu).map(|host| {
                json!({
                    "memory_total_bytes": host.memory_total,
                    "memory_used_bytes": host.memory_used,
                    "cpu_busy_ratio": host.cpu_busy,
                })
            });
            json!({
                "uuid": card.uuid,
                "index": card.index,
                "name": card.name,
                "kind": card.kind,
                "memory_total_bytes": card.memory_total_bytes,
                "memory_used_bytes": now.map(|info| info.memory_total_bytes.saturating_sub(info.memory_free_bytes)),
                "utilization_ratio": now.and_then(|info| info.utilization_percent).map(|p| f64::from(p) / 100.0),
                "host": host,
                "healthy": card.healthy,
                "health_note": card.health_note,
                "drained": card.drained,
                "drain_reason": card.drain_reason,
                "job": card.job,
            })
        })
        .collect();
    Ok(json!({
        "updated_at_ms": snapshot.as_ref().map(|s| s.updated_at_ms),
        "cards": cards,
    }))
}

async fn gpus(State(shared): State<Arc<Shared>>) -> ApiResult<Json<Value>> {
    blocking(move || card_list(&shared).map(Json)).await
}

/// What the dashboard plots: the cards' last hour and the farm's last day.
async fn history(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(shared.history.to_json())
}

async fn drain(
    State(shared): State<Arc<Shared>>,
    Extension(access): Extension<Access>,
    Path(uuid): Path<String>,
) -> ApiResult<Json<Value>> {
    change_card(shared, access, uuid, CardAction::Drain).await
}

async fn undrain(
    State(shared): State<Arc<Shared>>,
    Extension(access): Extension<Access>,
    Path(uuid): Path<String>,
) -> ApiResult<Json<Value>> {
    change_card(shared, access, uuid, CardAction::Undrain).await
}

/// Leaves a drain or undrain request for the scheduler's next tick, as `reelspool gpus` does.
/// Only root and the service user (or the token) may: a card is everyone's.
async fn change_card(
    shared: Arc<Shared>,
    access: Access,
    uuid: String,
    action: CardAction,
) -> ApiResult<Json<Value>> {
    let uid = access.actor()?;
    let person = shared.control.policy.person(uid);
    if !shared.control.policy.is_privileged(&person) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("refused: {person} may not drain or undrain cards; only root and the service user may"),
        ));
    }
    blocking(move || {
        let paths = PoolPaths::new(&shared.config.state_dir);
        let known = PoolSnapshot::load(&paths.snapshot)
            .map_err(|err| ApiError::internal(format!("{err:#}")))?
            .is_some_and(|snapshot| snapshot.cards.iter().any(|card| card.uuid == uuid));
        if !known {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no card `{uuid}` in the pool; GET /api/v1/gpus lists them"),
            ));
        }
        let request = CardRequest {
            uuid: uuid.clone(),
            action,
            requested_at_ms: now_ms(),
        };
        pool_files::write_request(&paths.control, &request)
            .map_err(|err| ApiError::internal(format!("{err:#}")))?;
        Ok(Json(json!({ "uuid": uuid, "requested": request.action })))
    })
    .await
}

/// Server-sent events: one `job` event per new job event, as JSON.
async fn events(
    State(shared): State<Arc<Shared>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = shared.events.subscribe();
    let stopping = shared.stopping.clone();
    let stream = futures_util::stream::unfold(
        (receiver, stopping),
        |(mut receiver, mut stopping)| async move {
            loop {
                let next = tokio::select! {
                    _ = stopping.wait_for(|stopping| *stopping) => return None,
                    next = receiver.recv() => next,
                };
                match next {
                    Ok(text) => {
                        let event = Event::default().event("job").data(text);
                        return Some((Ok(event), (receiver, stopping)));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
