//! What every handler shares: the state it reads and the error it answers with.

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tokio::sync::{broadcast, watch};

use super::history::History;
use super::metrics::Metrics;
use crate::config::DaemonConfig;
use crate::control::ControlContext;
use crate::spool::Layout;

/// What every handler may read.
pub struct Shared {
    pub config: Arc<DaemonConfig>,
    pub layout: Layout,
    pub token: Option<String>,
    pub control: ControlContext,
    pub metrics: Metrics,
    /// New job events as JSON text, for `/api/v1/events`.
    pub events: broadcast::Sender<String>,
    /// Turns true when the daemon stops; open event streams end then.
    pub stopping: watch::Receiver<bool>,
    /// What the dashboard plots (see `history`).
    pub history: History,
    /// Held while preview files are made, so two requests never make the same one.
    pub preview_lock: Mutex<()>,
}

/// A refusal or failure, sent as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn internal(err: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
    }

    /// A message from the control-socket logic, with a status guessed from its wording.
    pub fn from_control(message: String) -> ApiError {
        let status = if message.starts_with("refused") {
            StatusCode::FORBIDDEN
        } else if message.starts_with("no job") || message.starts_with("no batch") {
            StatusCode::NOT_FOUND
        } else if message.contains("matches") || message.contains("cannot change") {
            StatusCode::CONFLICT
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
