//! Command engines: a model program the operator declared in the daemon config (`engines:`),
//! driven by the worker over JSON lines on its stdin/stdout (docs/engine-protocol.md).
//!
//! The worker keeps everything the program does not do: the clip plan, encoding, checkpoints
//! (the engine's carry is an opaque directory, packed by [`carry_dir`]), the final mux. This
//! module only starts the program, speaks the protocol, and turns every way it can misbehave
//! (exit, silence past the heartbeat timeout, a line that is not a message, the wrong number
//! of frames) into an [`RenderError`] that names the engine.
//!
//! A job never names a program: intake resolves the job's `engine.name` against the daemon
//! config and writes the declaration into the job directory ([`RESOLVED_ENGINE_FILE`]), where
//! only the daemon writes. The worker reads it from there.

pub mod carry_dir;
pub mod protocol;

use crate::RenderError;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use carry_dir::CommandCarry;
use protocol::{Reply, Request, PROTOCOL_VERSION};

/// The resolved engine declaration in a job directory.
pub const RESOLVED_ENGINE_FILE: &str = "engine.json";
/// Default for [`EngineDeclaration::stop_grace_secs`].
pub const DEFAULT_STOP_GRACE_SECS: u64 = 10;
/// Default for [`EngineDeclaration::heartbeat_timeout_secs`].
pub const DEFAULT_HEARTBEAT_TIMEOUT_SECS: u64 = 120;
/// How long an engine may take to exit after `shutdown` before it gets SIGTERM, then SIGKILL.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often a clip's wait looks at the stop flag.
const POLL: Duration = Duration::from_millis(100);
/// Longest line an engine may send.
const MAX_LINE_BYTES: usize = 1 << 20;

fn default_heartbeat_timeout_secs() -> u64 {
    DEFAULT_HEARTBEAT_TIMEOUT_SECS
}

/// One entry of the daemon config's `engines:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineDeclaration {
    /// Program and arguments; the program is looked up in `PATH` unless it has a `/`.
    pub command: Vec<String>,
    /// Extra environment for the engine process.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The memory profile placement plans the engine's jobs with (templates/profiles/).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The engine's working directory (default: the job's engine scratch directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<PathBuf>,
    /// The engine must send some line (a heartbeat, progress, a reply) at least this often.
    #[serde(default = "default_heartbeat_timeout_secs")]
    pub heartbeat_timeout_secs: u64,
    /// When a job is stopped (cancel, daemon stop) inside a clip: how long the engine may take
    /// to finish the clip before its process group gets SIGTERM, and after that SIGKILL.
    #[serde(default = "default_stop_grace_secs")]
    pub stop_grace_secs: u64,
}

fn default_stop_grace_secs() -> u64 {
    DEFAULT_STOP_GRACE_SECS
}

impl EngineDeclaration {
    /// What is wrong with the declaration, for the config check.
    pub fn problem(&self) -> Option<String> {
        match self.command.first() {
            None => Some("`command` is empty; give the program and its arguments".into()),
            Some(program) if program.is_empty() => Some("the program name is empty".into()),
            _ if self.heartbeat_timeout_secs == 0 => {
                Some("`heartbeat_timeout_secs` must be at least 1".into())
            }
            _ => self
                .working_dir
                .as_ref()
                .filter(|dir| !dir.is_absolute())
                .map(|dir| format!("working_dir {} must be absolute", dir.display())),
        }
    }
}

/// What intake writes into a job directory for a command-engine job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolvedEngine {
    pub name: String,
    pub declaration: EngineDeclaration,
}

impl ResolvedEngine {
    /// Reads [`RESOLVED_ENGINE_FILE`] from a job directory.
    pub fn load(job_dir: &Path) -> Result<ResolvedEngine, String> {
        let path = job_dir.join(RESOLVED_ENGINE_FILE);
        let bytes =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{} is damaged: {e}", path.display()))
    }
}

enum Line {
    Text(String),
    TooLong,
}

/// A running engine process.
pub struct CommandEngine {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Line>,
    timeout: Duration,
    stop_grace: Duration,
    /// The engine's `hello`.
    pub capabilities: Vec<String>,
}

impl CommandEngine {
    /// Starts the engine and waits for its `hello`. Its stderr goes where the worker's goes
    /// (the job's worker log); it dies with the worker, even when the worker is SIGKILLed.
    pub fn start(
        resolved: &ResolvedEngine,
        default_dir: &Path,
        extra_env: &[(String, String)],
    ) -> Result<CommandEngine, RenderError> {
        let declaration = &resolved.declaration;
        let name = resolved.name.clone();
        let Some((program, args)) = declaration.command.split_first() else {
            return Err(RenderError::Spawn {
                engine: name,
                program: String::new(),
                source: std::io::Error::other("the declaration's command is empty"),
            });
        };
        let mut command = Command::new(program);
        command
            .args(args)
            .current_dir(declaration.working_dir.as_deref().unwrap_or(default_dir))
            .envs(&declaration.env)
            .envs(extra_env.iter().map(|(k, v)| (k, v)))
            .env("REELSPOOL_ENGINE_NAME", &name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: runs in the child between fork and exec and only calls setpgid and prctl,
        // which are async-signal-safe. The engine leads a process group of its own, so a stop
        // inside a clip can signal it and whatever it started ([`CommandEngine::interrupt`]),
        // and it gets SIGKILL when the worker dies, however it dies.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|source| RenderError::Spawn {
            engine: name.clone(),
            program: program.clone(),
            source,
        })?;
        tracing::info!(engine = %name, pid = child.id(), "engine started");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = stdout {
            std::thread::spawn(move || read_lines(stdout, tx));
        }
        let mut engine = CommandEngine {
            name,
            child,
            stdin,
            lines,
            timeout: Duration::from_secs(declaration.heartbeat_timeout_secs.max(1)),
            stop_grace: Duration::from_secs(declaration.stop_grace_secs),
            capabilities: Vec::new(),
        };
        match engine.next_reply("hello")? {
            Reply::Hello {
                protocol,
                capabilities,
                ..
            } => {
                if protocol != PROTOCOL_VERSION {
                    engine.kill();
                    return Err(RenderError::Version {
                        engine: engine.name.clone(),
                        got: protocol,
                    });
                }
                engine.capabilities = capabilities;
                Ok(engine)
            }
            other => Err(engine.unexpected("hello", &other)),
        }
    }

    /// The engine's name from the daemon config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long the engine may stay silent before it is killed.
    pub fn heartbeat_timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `load` and waits for its `ok`.
    pub fn load(&mut self, request: &Request) -> Result<(), RenderError> {
        self.send(request)?;
        match self.final_reply("load")? {
            Reply::Ok { .. } => Ok(()),
            other => Err(self.unexpected("load", &other)),
        }
    }

    /// Sends `render_clip` and waits for its `ok`; returns the frame count the engine claims.
    /// Heartbeat and progress lines on the way only reset the timeout.
    pub fn render_clip(&mut self, request: &Request) -> Result<u32, RenderError> {
        let Request::RenderClip { index, .. } = request else {
            panic!("render_clip called with a {} request", request.name());
        };
        let during = format!("render_clip {index}");
        self.send(request)?;
        match self.final_reply(&during)? {
            Reply::Ok { frames: Some(n) } => Ok(n),
            Reply::Ok { frames: None } => Err(RenderError::Malformed {
                engine: self.name.clone(),
                during,
                line: "{\"type\":\"ok\"}".into(),
                detail: "the reply to render_clip must say how many frames it wrote".into(),
            }),
            other => Err(self.unexpected(&during, &other)),
        }
    }

    /// [`CommandEngine::render_clip`] that can be stopped: each `progress` line goes to
    /// `progress`, and once `stop` is set the engine has its stop grace to answer; after that
    /// its process group gets SIGTERM, and SIGKILL one more grace later. `Ok(None)`: stopped,
    /// the clip is abandoned and the engine is gone.
    pub fn render_clip_watched(
        &mut self,
        request: &Request,
        stop: &AtomicBool,
        progress: &mut dyn FnMut(Option<u64>, Option<u64>, Option<String>),
    ) -> Result<Option<u32>, RenderError> {
        let Request::RenderClip { index, .. } = request else {
            panic!(
                "render_clip_watched called with a {} request",
                request.name()
            );
        };
        let during = format!("render_clip {index}");
        self.send(request)?;
        let mut stop_seen: Option<Instant> = None;
        let mut last_line = Instant::now();
        loop {
            if stop_seen.is_none() && stop.load(Ordering::Relaxed) {
                tracing::info!(engine = %self.name, grace = ?self.stop_grace, "stop inside a clip; waiting for the engine");
                stop_seen = Some(Instant::now());
            }
            if let Some(seen) = stop_seen {
                if seen.elapsed() >= self.stop_grace {
                    self.interrupt();
                    return Ok(None);
                }
            }
            let line = match self.lines.recv_timeout(POLL) {
                Err(RecvTimeoutError::Timeout) if last_line.elapsed() < self.timeout => continue,
                Err(RecvTimeoutError::Timeout) => {
                    self.kill();
                    return Err(RenderError::Silent {
                        engine: self.name.clone(),
                        during,
                        secs: self.timeout.as_secs(),
                    });
                }
                other => other,
            };
            last_line = Instant::now();
            let reply = self.reply_from(line, &during)?;
            match reply {
                Reply::Heartbeat => {}
                Reply::Progress {
                    step,
                    total,
                    message,
                } => progress(step, total, message),
                Reply::Error { kind, message } => {
                    return Err(RenderError::Reported {
                        engine: self.name.clone(),
                        during,
                        kind,
                        message,
                    })
                }
                Reply::Ok { frames: Some(n) } => return Ok(Some(n)),
                Reply::Ok { frames: None } => {
                    return Err(RenderError::Malformed {
                        engine: self.name.clone(),
                        during,
                        line: "{\"type\":\"ok\"}".into(),
                        detail: "the reply to render_clip must say how many frames it wrote".into(),
                    })
                }
                other => return Err(self.unexpected(&during, &other)),
            }
        }
    }

    /// Ends the engine's process group: SIGTERM, then SIGKILL after the stop grace.
    fn interrupt(&mut self) {
        let group = self.child.id() as i32;
        tracing::warn!(engine = %self.name, grace = ?self.stop_grace, "engine still inside its clip after the stop grace; sending SIGTERM to its process group");
        // SAFETY: killpg() on the group our unreaped child leads (setpgid in `start`).
        unsafe {
            libc::killpg(group, libc::SIGTERM);
        }
        if self.wait_for_exit(self.stop_grace).is_none() {
            tracing::warn!(engine = %self.name, "engine ignored SIGTERM; sending SIGKILL to its process group");
            // SAFETY: as above; the group id stays ours until the child is reaped.
            unsafe {
                libc::killpg(group, libc::SIGKILL);
            }
            let _ = self.child.wait();
        }
        self.stdin = None;
    }

    /// Asks the engine to exit, then makes sure it does (SIGTERM, then SIGKILL).
    pub fn shutdown(mut self) {
        let _ = self.send(&Request::Shutdown);
        self.stdin = None; // EOF on its stdin as well
        if self.wait_for_exit(SHUTDOWN_GRACE).is_none() {
            tracing::warn!(engine = %self.name, "engine ignored shutdown; sending SIGTERM");
            // SAFETY: kill() with the pid of a child we have not reaped yet.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
            }
            if self.wait_for_exit(SHUTDOWN_GRACE).is_none() {
                self.kill();
            }
        }
    }

    fn wait_for_exit(&mut self, grace: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return None,
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn send(&mut self, request: &Request) -> Result<(), RenderError> {
        let line = request.to_line();
        let result = match self.stdin.as_mut() {
            Some(stdin) => stdin
                .write_all(line.as_bytes())
                .and_then(|()| stdin.flush()),
            None => Err(std::io::Error::other("stdin is closed")),
        };
        result.map_err(|source| {
            // A broken pipe usually means the engine died: report that if it did.
            match self.wait_for_exit(Duration::from_millis(500)) {
                Some(status) => self.exited(request.name(), status),
                None => RenderError::Pipe {
                    engine: self.name.clone(),
                    source,
                },
            }
        })
    }

    /// The next reply that is not a heartbeat or progress line.
    fn final_reply(&mut self, during: &str) -> Result<Reply, RenderError> {
        loop {
            match self.next_reply(during)? {
                Reply::Heartbeat => {}
                Reply::Progress {
                    step,
                    total,
                    message,
                } => {
                    tracing::debug!(engine = %self.name, during, ?step, ?total, ?message, "engine progress")
                }
                Reply::Error { kind, message } => {
                    return Err(RenderError::Reported {
                        engine: self.name.clone(),
                        during: during.to_string(),
                        kind,
                        message,
                    })
                }
                reply => return Ok(reply),
            }
        }
    }

    fn next_reply(&mut self, during: &str) -> Result<Reply, RenderError> {
        let line = self.lines.recv_timeout(self.timeout);
        self.reply_from(line, during)
    }

    /// What a received line (or the lack of one) means.
    fn reply_from(
        &mut self,
        line: Result<Line, RecvTimeoutError>,
        during: &str,
    ) -> Result<Reply, RenderError> {
        match line {
            Ok(Line::Text(line)) => Reply::from_line(&line).map_err(|detail| {
                self.kill();
                RenderError::Malformed {
                    engine: self.name.clone(),
                    during: during.to_string(),
                    line: line.chars().take(200).collect(),
                    detail,
                }
            }),
            Ok(Line::TooLong) => {
                self.kill();
                Err(RenderError::Malformed {
                    engine: self.name.clone(),
                    during: during.to_string(),
                    line: String::new(),
                    detail: format!("a line longer than {MAX_LINE_BYTES} bytes"),
                })
            }
            Err(RecvTimeoutError::Timeout) => {
                self.kill();
                Err(RenderError::Silent {
                    engine: self.name.clone(),
                    during: during.to_string(),
                    secs: self.timeout.as_secs(),
                })
            }
            Err(RecvTimeoutError::Disconnected) => {
                // stdout closed: the engine is exiting or gone.
                let status = match self.wait_for_exit(Duration::from_secs(5)) {
                    Some(status) => status,
                    None => {
                        self.kill();
                        return Err(RenderError::Exited {
                            engine: self.name.clone(),
                            during: during.to_string(),
                            status: "closed its stdout".into(),
                        });
                    }
                };
                Err(self.exited(during, status))
            }
        }
    }

    fn exited(&self, during: &str, status: ExitStatus) -> RenderError {
        use std::os::unix::process::ExitStatusExt;
        let status = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            _ => status.to_string(),
        };
        RenderError::Exited {
            engine: self.name.clone(),
            during: during.to_string(),
            status,
        }
    }

    fn unexpected(&mut self, during: &str, reply: &Reply) -> RenderError {
        self.kill();
        RenderError::Malformed {
            engine: self.name.clone(),
            during: during.to_string(),
            line: serde_json::to_string(reply).unwrap_or_default(),
            detail: "this reply does not answer the request".into(),
        }
    }
}

impl Drop for CommandEngine {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

fn read_lines(stdout: std::process::ChildStdout, tx: mpsc::Sender<Line>) {
    let mut reader = BufReader::new(stdout);
    loop {
        let mut buffer = Vec::new();
        let read = Read::by_ref(&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buffer);
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) if buffer.len() > MAX_LINE_BYTES => {
                let _ = tx.send(Line::TooLong);
                return;
            }
            Ok(_) => {
                let text = String::from_utf8_lossy(&buffer).into_owned();
                if text.trim().is_empty() {
                    continue;
                }
                if tx.send(Line::Text(text)).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
