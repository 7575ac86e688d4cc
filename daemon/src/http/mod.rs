//! The daemon's web server: a dashboard at `/`, a JSON API under `/api/v1/`, Prometheus
//! metrics at `/metrics` (see docs/api.md).
//!
//! Off unless the config has `http:`. It listens on TCP (`http.listen`), on a unix socket
//! (`http.socket`, group `submit_group`), or both. Reading needs no login from a loopback
//! address or over the socket; anything that changes state (cancel, drain, undrain) needs the
//! token (`Authorization: Bearer …`) or, over the socket, a caller the kernel names as root, the
//! service user or a member of the submit group (`SO_PEERCRED`). A request from any other
//! address needs the token even to read, and a `listen` address that is not loopback refuses
//! to start without a token.
//!
//! Everything shown is read from the files the daemon keeps already (the queue index, job
//! states and events, `gpus.json`, the outbox): the server never touches the scheduler. A
//! follower task (see `follow`) reads new job events once a second and turns them into counters,
//! server-sent events, the DCGM job-mapping files and the history the dashboard plots
//! (`history`, drawn as SVG by `charts`).
//!
//! What there is to watch of a job (`playback`): the finished video with range requests, and the
//! live preview of a running one, an HLS playlist of its finished clips remuxed into the job's
//! `preview/` folder (`preview`), reached without following symlinks (`safe_fs`).

mod api;
mod auth;
mod charts;
mod dashboard;
mod follow;
mod history;
pub mod metrics;
mod playback;
mod preview;
mod ranges;
mod safe_fs;
mod shared;

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::DaemonConfig;
use crate::control::ControlContext;
use crate::spool::Layout;
use shared::Shared;

/// Where the token is read from when `http.token_file` is not set and systemd passed no
/// credentials directory.
pub const DEFAULT_TOKEN_FILE: &str = "/etc/reelspool/credentials/http-token";
/// The token's name in `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=http-token:…`).
const TOKEN_CREDENTIAL: &str = "http-token";

/// Why the web server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("`http` has neither `listen` nor `socket`\n  = help: add `listen: \"127.0.0.1:7878\"` or `socket: /run/reelspool/http.sock`, or remove `http:`")]
    NothingToListenOn,
    #[error("`http.listen` is `{0}`, not an address with a port\n  = help: write e.g. \"127.0.0.1:7878\" or \"[::1]:7878\"")]
    BadListen(String),
    #[error("`http.listen` is {addr}, which other machines can reach, and no token is configured (looked for {looked})\n  = help: put a long random token in that file (or set `http.token_file`), or listen on 127.0.0.1")]
    NoToken { addr: SocketAddr, looked: String },
    #[error("cannot read the HTTP token {path}: {error}")]
    Token {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the HTTP token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error("cannot listen on {what}: {error}")]
    Bind { what: String, error: std::io::Error },
}

/// The web server's settings, checked and with its TCP port bound.
pub struct Prepared {
    tcp: Option<StdTcpListener>,
    socket: Option<(PathBuf, UnixListener)>,
    token: Option<String>,
}

/// Checks `http:` and binds the port and the socket. Called once the daemon holds its state
/// lock (a stale socket is replaced), from within the async runtime.
pub fn prepare(config: &DaemonConfig) -> Result<Option<Prepared>, HttpError> {
    let Some(http) = &config.http else {
        return Ok(None);
    };
    if http.listen.is_none() && http.socket.is_none() {
        return Err(HttpError::NothingToListenOn);
    }
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let (token, looked) = read_token(http.token_file.as_deref(), credentials.as_deref())?;
    let tcp = match &http.listen {
        None => None,
        Some(text) => {
            let addr: SocketAddr = text
                .parse()
                .map_err(|_| HttpError::BadListen(text.clone()))?;
            if !addr.ip().is_loopback() && token.is_none() {
                return Err(HttpError::NoToken { addr, looked });
            }
            let listener = StdTcpListener::bind(addr).map_err(|error| HttpError::Bind {
                what: addr.to_string(),
                error,
            })?;
            listener
                .set_nonblocking(true)
                .map_err(|error| HttpError::Bind {
                    what: addr.to_string(),
                    error,
                })?;
            Some(listener)
        }
    };
    let socket = match &http.socket {
        Some(path) => Some((path.clone(), bind_socket(path, &config.submit_group)?)),
        None => None,
    };
    Ok(Some(Prepared { tcp, socket, token }))
}

/// The token and the places looked at (for messages). An explicit `token_file` must be
/// readable; the default places may be absent.
fn read_token(
    explicit: Option<&Path>,
    credentials: Option<&Path>,
) -> Result<(Option<String>, String), HttpError> {
    let (path, required) = match (explicit, credentials) {
        (Some(path), _) => (path.to_path_buf(), true),
        (None, Some(dir)) => (dir.join(TOKEN_CREDENTIAL), false),
        (None, None) => (PathBuf::from(DEFAULT_TOKEN_FILE), false),
    };
    let looked = path.display().to_string();
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim();
            // The package installs the credential empty (systemd needs the file to exist):
            // empty there means no token; an explicit `token_file` must hold one.
            if token.is_empty() && !required {
                return Ok((None, looked));
            }
            if token.is_empty() {
                return Err(HttpError::EmptyToken(path));
            }
            Ok((Some(token.to_string()), looked))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && !required => {
            Ok((None, looked))
        }
        Err(error) => Err(HttpError::Token { path, error }),
    }
}

/// Starts the follower (when the web server or the DCGM mapping is configured) and the
/// listeners. The tasks end when `shutdown` turns true.
pub fn start(
    prepared: Option<Prepared>,
    config: Arc<DaemonConfig>,
    layout: Layout,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, HttpError> {
    if prepared.is_none() && config.dcgm_job_mapping_dir.is_none() {
        return Ok(Vec::new());
    }
    let (events, _) = broadcast::channel(1024);
    let token = prepared.as_ref().and_then(|p| p.token.clone());
    let config_state_dir = config.state_dir.clone();
    let shared = Arc::new(Shared {
        control: ControlContext {
            jobs_dir: layout.jobs.clone(),
            state_dir: config.state_dir.clone(),
            policy: crate::owner::Policy::new(&config.submit_group),
            executor: config.executor.clone(),
            intake: None,
        },
        config,
        layout,
        token,
        metrics: metrics::Metrics::new(),
        events,
        stopping: shutdown.clone(),
        history: history::History::load(
            &history::history_path(&config_state_dir),
            jobs::state::now_ms() / 1000,
        ),
        preview_lock: std::sync::Mutex::new(()),
    });
    let mut tasks = vec![tokio::spawn(follow::run(
        Arc::clone(&shared),
        shutdown.clone(),
    ))];
    let Some(prepared) = prepared else {
        return Ok(tasks);
    };
    if let Some(std_listener) = prepared.tcp {
        let addr = std_listener.local_addr().map_err(|error| HttpError::Bind {
            what: "the TCP port".into(),
            error,
        })?;
        let listener = TcpListener::from_std(std_listener).map_err(|error| HttpError::Bind {
            what: addr.to_string(),
            error,
        })?;
        let app = router(Arc::clone(&shared)).layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            auth::tcp_caller,
        ));
        let mut stop = shutdown.clone();
        info!(%addr, "web server listening");
        tasks.push(tokio::spawn(async move {
            let served = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stopping| *stopping).await;
            })
            .await;
            if let Err(err) = served {
                warn!(error = %err, "web server stopped");
            }
        }));
    }
    if let Some((path, listener)) = prepared.socket {
        let app = router(Arc::clone(&shared)).layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            auth::socket_caller,
        ));
        let mut stop = shutdown;
        info!(socket = %path.display(), "web server listening");
        tasks.push(tokio::spawn(async move {
            let served = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<auth::PeerCred>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stopping| *stopping).await;
            })
            .await;
            if let Err(err) = served {
                warn!(error = %err, "web server (socket) stopped");
            }
        }));
    }
    Ok(tasks)
}

/// Binds the unix socket (replacing a stale one: the caller holds the state lock), owned by
/// the submit group with mode 0660. A group that does not exist leaves it to the service alone.
fn bind_socket(path: &Path, group: &str) -> Result<UnixListener, HttpError> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |error| HttpError::Bind {
        what: path.display().to_string(),
        error,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(fail(err)),
    }
    let listener = UnixListener::bind(path).map_err(fail)?;
    let mode = match crate::owner::group_id(group) {
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(fail)?;
            0o660
        }
        None => {
            warn!(group, socket = %path.display(), "no such group: the web socket is open to the service user only");
            0o600
        }
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    Ok(listener)
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .merge(dashboard::routes())
        .merge(playback::routes())
        .merge(api::routes())
        .with_state(shared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_token_file_must_exist_and_hold_a_token() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("absent");
        assert!(matches!(
            read_token(Some(&missing), None),
            Err(HttpError::Token { .. })
        ));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").expect("write");
        assert!(matches!(
            read_token(Some(&empty), None),
            Err(HttpError::EmptyToken(_))
        ));
        let good = dir.path().join("good");
        std::fs::write(&good, "s3cret\n").expect("write");
        let (token, _) = read_token(Some(&good), None).expect("readable");
        assert_eq!(token.as_deref(), Some("s3cret"));
    }

    #[test]
    fn the_credentials_directory_is_optional_but_used() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (token, looked) = read_token(None, Some(dir.path())).expect("absent is fine");
        assert_eq!(token, None);
        assert!(looked.ends_with("http-token"), "{looked}");
        std::fs::write(dir.path().join("http-token"), "abc").expect("write");
        let (token, _) = read_token(None, Some(dir.path())).expect("readable");
        assert_eq!(token.as_deref(), Some("abc"));
        std::fs::write(dir.path().join("http-token"), "\n").expect("write");
        let (token, _) = read_token(None, Some(dir.path())).expect("empty is no token");
        assert_eq!(token, None);
    }
}
