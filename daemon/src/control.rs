//! The daemon's control socket: how members who cannot read the state directory see and act
//! on jobs.
//!
//! Job directories are private to the service (mode 0700), so a member's `reelspool status`,
//! `logs` and `cancel` ask the daemon instead, over the unix socket `<spool_dir>/control.sock`.
//! The daemon learns who is asking from the kernel (`SO_PEERCRED`: the uid of the connecting
//! process, which a client cannot choose), never from anything the client says. It answers with
//! everyone's jobs by name and state, and with details, logs and cancellation only for the
//! asker's own jobs (root and the service user: every job).
//!
//! One request per connection: a JSON line in, a JSON line out (`{"error": ...}` on refusal).

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use jobs::access::Person;
use jobs::state::{self, JobDir, JobEvent, JobState, Phase};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::cancels::{self, Cancel};
use crate::config::ExecutorConfig;
use crate::owner::Policy;
use crate::priorities;

/// The socket's name in the spool directory.
pub const SOCKET_NAME: &str = "control.sock";
/// The longest request line read.
const MAX_REQUEST: u64 = 64 * 1024;
/// The most log bytes one answer carries; the client asks again from the new offset.
const LOG_CHUNK: u64 = 1 << 20;

pub fn socket_path(spool_dir: &Path) -> PathBuf {
    spool_dir.join(SOCKET_NAME)
}

/// What a client may ask.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Every job (or those in `phases`, at most `limit`, oldest first).
    List {
        #[serde(default)]
        phases: Vec<Phase>,
        #[serde(default)]
        limit: Option<usize>,
    },
    Status {
        job: String,
    },
    Logs {
        job: String,
        offset: u64,
    },
    Cancel {
        job: String,
    },
    /// A new priority for a queued or running job (checked against -1000..=1000 here, so an
    /// out-of-range number gets the range in its error rather than a parse failure).
    Priority {
        job: String,
        priority: i64,
    },
    /// Checks a job (or batch) file as intake would, for the asker, without filing it: the
    /// answer is `{"ok": summary}` or the rejection report as the error.
    Check {
        /// The file's name as the asker shows it.
        file: String,
        text: String,
    },
    /// A batch and its jobs (the asker's own in full, others by name and state).
    Batch {
        batch: String,
    },
    /// Cancels every unfinished job of a batch that the asker may cancel.
    #[serde(rename = "cancel_batch")]
    CancelBatch {
        batch: String,
    },
}

/// What the server needs.
pub struct ControlContext {
    pub jobs_dir: PathBuf,
    pub state_dir: PathBuf,
    pub policy: Policy,
    /// Where workers run (a cancel made without a daemon also cancels a job's Slurm job).
    pub executor: ExecutorConfig,
    /// The running intake, for `check`: a job file checked against this farm (its engines,
    /// profiles, cards and roots) without filing it. `None` where no intake runs.
    pub intake: Option<Arc<crate::intake::IntakeContext>>,
}

/// Binds the socket (replacing one left by an earlier daemon: the caller holds the state lock)
/// and opens it to everyone; the spool directory's own mode limits who can reach it, and every
/// request is checked against the asker's uid.
pub fn listen(spool_dir: &Path) -> Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(spool_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("cannot remove {}", path.display())),
    }
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("cannot open {} to members", path.display()))?;
    Ok(listener)
}

/// Closes job directories left open by an older reelspool (0755) to the service alone.
pub fn close_job_dirs(jobs_dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(jobs_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() && meta.permissions().mode() & 0o077 != 0 {
            let path = entry.path();
            if let Err(err) =
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            {
                warn!(dir = %path.display(), error = %err, "cannot close a job directory to others");
            }
        }
    }
}

/// Answers requests until shutdown.
pub async fn serve(
    listener: UnixListener,
    context: Arc<ControlContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(handle(stream, Arc::clone(&context)));
                }
                Err(err) => {
                    warn!(error = %err, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
        if *shutdown.borrow() {
            break;
        }
    }
    debug!("control socket closed");
}

async fn handle(stream: UnixStream, context: Arc<ControlContext>) {
    let uid = match stream.peer_cred() {
        Ok(cred) => cred.uid(),
        Err(err) => {
            warn!(error = %err, "cannot learn who is on the control socket");
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST));
    let read = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await;
    let reply = match read {
        Ok(Ok(_)) => {
            let context = Arc::clone(&context);
            tokio::task::spawn_blocking(move || answer(&context, uid, &line))
                .await
                .unwrap_or_else(|err| json!({ "error": format!("request failed: {err}") }))
        }
        Ok(Err(err)) => json!({ "error": format!("cannot read the request: {err}") }),
        Err(_) => json!({ "error": "no request within 10 s" }),
    };
    let mut bytes = reply.to_string().into_bytes();
    bytes.push(b'\n');
    if let Err(err) = write.write_all(&bytes).await {
        debug!(error = %err, "control client went away");
    }
}

/// The answer to one request line from `uid`.
pub fn answer(context: &ControlContext, uid: u32, line: &str) -> Value {
    let person = context.policy.person(uid);
    if let Err(refusal) = context.policy.may_submit(&person) {
        return json!({ "error": format!("refused: {refusal}") });
    }
    let request: Request = match serde_json::from_str(line.trim()) {
        Ok(request) => request,
        Err(err) => return json!({ "error": format!("malformed request: {err}") }),
    };
    match respond(context, &person, request) {
        Ok(value) => value,
        Err(err) => json!({ "error": format!("{err:#}") }),
    }
}

fn respond(context: &ControlContext, person: &Person, request: Request) -> Result<Value> {
    let jobs_dir = &context.jobs_dir;
    match request {
        Request::List { phases, limit } => {
            // From the queue index, like a local `status`: a member's list costs the same
            // with 100,000 jobs queued. Full details are read only for the asker's own jobs.
            let entries = if jobs_dir.is_dir() {
                crate::jobview::index_entries(jobs_dir)?
            } else {
                Vec::new()
            };
            let shown = entries
                .iter()
                .filter(|entry| phases.is_empty() || phases.contains(&entry.phase))
                .take(limit.unwrap_or(usize::MAX))
                .map(|entry| {
                    if context.policy.may_act_on(person, entry.owner.as_ref()) {
                        let job = JobDir::new(jobs_dir.join(entry.id.as_str()))
                            .load_state()
                            .unwrap_or_else(|_| entry.to_state());
                        serde_json::to_value(job)
                    } else {
                        Ok(name_and_state(&entry.to_state()))
                    }
                })
                .collect::<Result<Vec<Value>, _>>()?;
            Ok(json!({ "jobs": shown }))
        }
        Request::Status { job } => {
            let job = crate::jobview::find_job(jobs_dir, &job)?;
            let dir = JobDir::new(jobs_dir.join(job.id.to_string()));
            authorize(
                context,
                person,
                &job,
                "see the details of",
                dir.state_json(),
            )?;
            let events = dir.read_events().unwrap_or_default();
            let notices = crate::jobview::notice_statuses(&context.state_dir, &job.id.to_string());
            Ok(json!({ "job": job, "events": events, "notices": notices }))
        }
        Request::Logs { job, offset } => {
            let job = crate::jobview::find_job(jobs_dir, &job)?;
            let log = jobs_dir
                .join(job.id.to_string())
                .join(crate::worker_log::WORKER_LOG);
            authorize(context, person, &job, "read", log.clone())?;
            let (bytes, offset) = read_chunk(&log, offset)?;
            Ok(json!({
                "log": String::from_utf8_lossy(&bytes),
                "offset": offset,
                "phase": job.phase,
                "id": job.id,
            }))
        }
        Request::Cancel { job } => {
            let job = crate::jobview::find_job(jobs_dir, &job)?;
            let dir = JobDir::new(jobs_dir.join(job.id.to_string()));
            authorize(context, person, &job, "cancel", dir.root().to_path_buf())?;
            let done = cancels::cancel(&context.state_dir, &context.executor, &dir, &job)?;
            if done != Cancel::AlreadyEnded(job.phase) {
                info!(job = %job.id, by = %person, "cancel requested");
            }
            Ok(json!({ "id": job.id, "phase": job.phase }))
        }
        Request::Priority { job, priority } => {
            let wanted = priorities::check_range(priority)?;
            let job = crate::jobview::find_job(jobs_dir, &job)?;
            let dir = JobDir::new(jobs_dir.join(job.id.to_string()));
            authorize(
                context,
                person,
                &job,
                "change the priority of",
                dir.root().to_path_buf(),
            )?;
            priorities::change(&context.state_dir, &dir, &job, wanted, person.to_string())?;
            info!(job = %job.id, by = %person, from = job.priority, to = wanted, "priority change requested");
            Ok(json!({
                "id": job.id,
                "phase": job.phase,
                "priority": job.priority,
                "requested_priority": wanted,
            }))
        }
        Request::Check { file, text } => {
            let Some(intake) = &context.intake else {
                bail!("this server does not check job files; ask the daemon's control socket");
            };
            match crate::intake::check_only(intake, person, &file, text.as_bytes()) {
                Ok(summary) => Ok(json!({ "ok": summary })),
                Err(report) => Ok(json!({ "refused": report })),
            }
        }
        Request::Batch { batch } => {
            let record = crate::batches::find(&context.state_dir, &batch)?;
            let view = crate::batches::BatchView::read(jobs_dir, record);
            batch_value(context, person, view)
        }
        Request::CancelBatch { batch } => {
            let (record, requested) = cancel_batch(context, person, &batch)?;
            Ok(json!({ "batch": record.id, "cancel_requested": requested }))
        }
    }
}

/// A batch as `person` may see it: its counts, and each job in full or by name and state.
fn batch_value(
    context: &ControlContext,
    person: &Person,
    view: crate::batches::BatchView,
) -> Result<Value> {
    let members: Vec<Value> = view
        .members
        .iter()
        .map(|job| {
            if context.policy.may_act_on(person, job.owner.as_ref()) {
                serde_json::to_value(job)
            } else {
                Ok(name_and_state(job))
            }
        })
        .collect::<Result<_, _>>()?;
    let mut value = serde_json::to_value(&view)?;
    value["members"] = Value::Array(members);
    Ok(value)
}

/// Cancels the jobs of batch `wanted` that `person` may cancel, through the one cancel path;
/// returns the batch and how many cancels were filed. Refused when `person` may cancel none.
pub fn cancel_batch(
    context: &ControlContext,
    person: &Person,
    wanted: &str,
) -> Result<(crate::batches::BatchRecord, usize)> {
    let record = crate::batches::find(&context.state_dir, wanted)?;
    let mut requested = 0;
    let mut refused = 0;
    for id in &record.jobs {
        let dir = JobDir::new(context.jobs_dir.join(id.as_str()));
        let Ok(job) = dir.load_state() else { continue };
        if !context.policy.may_act_on(person, job.owner.as_ref()) {
            refused += 1;
            continue;
        }
        let done = cancels::cancel(&context.state_dir, &context.executor, &dir, &job)?;
        if done != Cancel::AlreadyEnded(job.phase) {
            requested += 1;
        }
    }
    if refused > 0 && refused == record.jobs.len() {
        bail!(
            "refused: {person} may not cancel batch {}: its jobs belong to someone else; \
             only their owner, root and the service user may",
            record.id
        );
    }
    info!(batch = %record.id, by = %person, requested, "batch cancel requested");
    Ok((record, requested))
}

/// What everyone may see of someone else's job: id, name, state, priority, age and owner,
/// and nothing else (a field added to `JobState` later stays private unless named here).
fn name_and_state(job: &JobState) -> Value {
    json!({
        "id": job.id,
        "name": job.name,
        "phase": job.phase,
        "priority": job.priority,
        "submitted_at_ms": job.submitted_at_ms,
        "owner": job.owner.as_ref().map(|owner| json!({ "uid": owner.uid, "name": owner.name })),
    })
}

fn authorize(
    context: &ControlContext,
    person: &Person,
    job: &JobState,
    action: &str,
    path: PathBuf,
) -> Result<()> {
    if context.policy.may_act_on(person, job.owner.as_ref()) {
        return Ok(());
    }
    let owner = job
        .owner
        .as_ref()
        .map_or_else(|| "nobody recorded".to_string(), Person::to_string);
    let target = if action == "read" {
        format!("{} of job {}", path.display(), job.id)
    } else {
        format!("job {} ({})", job.id, path.display())
    };
    bail!(
        "refused: {person} may not {action} {target}: the job belongs to {owner}; \
         only its owner, root and the service user may"
    )
}

fn read_chunk(log: &Path, offset: u64) -> Result<(Vec<u8>, u64)> {
    let mut file = match std::fs::File::open(log) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", log.display())),
    };
    let len = file.metadata()?.len();
    let start = if offset > len { 0 } else { offset };
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(LOG_CHUNK).read_to_end(&mut bytes)?;
    let end = start + bytes.len() as u64;
    Ok((bytes, end))
}

/// Whether this CLI must go through the daemon: it is neither root nor the owner of the jobs
/// directory (the service user), so job directories are closed to it.
pub fn must_ask_daemon(state_dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid cannot fail and touches no memory.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return false;
    }
    match std::fs::metadata(state_dir.join("jobs")) {
        Ok(meta) => meta.uid() != euid,
        Err(_) => false,
    }
}

/// Sends one request and returns the answer, or the daemon's refusal as the error.
pub fn ask(spool_dir: &Path, request: &Request) -> Result<Value> {
    let path = socket_path(spool_dir);
    let mut stream = StdUnixStream::connect(&path).with_context(|| {
        format!(
            "cannot reach the daemon at {} (job details of members are served by the running daemon)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    stream.flush()?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    let value: Value = serde_json::from_str(reply.trim())
        .with_context(|| format!("the daemon sent an unreadable answer on {}", path.display()))?;
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        bail!("{error}");
    }
    Ok(value)
}

/// `reelspool status [ID]` through the daemon.
pub fn status(
    spool_dir: &Path,
    id: Option<&str>,
    json: bool,
    filter: &crate::jobview::StatusFilter,
) -> Result<()> {
    let Some(wanted) = id else {
        let value = ask(
            spool_dir,
            &Request::List {
                phases: filter.phases.clone(),
                limit: filter.limit,
            },
        )?;
        let all: Vec<JobState> = serde_json::from_value(value["jobs"].clone())?;
        if json {
            println!("{}", serde_json::to_string_pretty(&all)?);
        } else {
            crate::jobview::print_table(&all);
        }
        return Ok(());
    };
    let value = ask(
        spool_dir,
        &Request::Status {
            job: wanted.to_string(),
        },
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let job: JobState = serde_json::from_value(value["job"].clone())?;
    let events: Vec<JobEvent> = serde_json::from_value(value["events"].clone())?;
    let notices: Vec<notices::DeliveryStatus> = serde_json::from_value(value["notices"].clone())?;
    crate::jobview::print_job_details(&job, &events);
    crate::jobview::print_notices(&notices);
    Ok(())
}

/// `reelspool logs ID [--follow]` through the daemon.
pub fn logs(spool_dir: &Path, wanted: &str, follow: bool, out: &mut impl Write) -> Result<()> {
    let mut offset = 0;
    loop {
        let value = ask(
            spool_dir,
            &Request::Logs {
                job: wanted.to_string(),
                offset,
            },
        )?;
        let text = value["log"].as_str().unwrap_or_default();
        out.write_all(text.as_bytes())?;
        out.flush()?;
        let new_offset = value["offset"].as_u64().unwrap_or(offset);
        let grew = new_offset > offset;
        offset = new_offset;
        if grew {
            continue;
        }
        let phase: state::Phase = serde_json::from_value(value["phase"].clone())?;
        if !follow || phase.is_terminal() {
            if follow {
                eprintln!("job {} {}", value["id"].as_str().unwrap_or(wanted), phase);
            } else if offset == 0 {
                eprintln!(
                    "job {} ({phase}) has no worker output yet",
                    value["id"].as_str().unwrap_or(wanted)
                );
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `reelspool cancel ID` through the daemon: the daemon checks the asker owns the job, then
/// this waits for the job to end like a local cancel does.
pub fn cancel(spool_dir: &Path, wanted: &str, wait_secs: u64) -> Result<()> {
    let value = ask(
        spool_dir,
        &Request::Cancel {
            job: wanted.to_string(),
        },
    )?;
    let id = value["id"].as_str().unwrap_or(wanted).to_string();
    let phase: state::Phase = serde_json::from_value(value["phase"].clone())?;
    if phase.is_terminal() {
        println!("job {id} is already {phase}");
        return Ok(());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(wait_secs);
    loop {
        let value = ask(spool_dir, &Request::Status { job: id.clone() })?;
        let phase: state::Phase = serde_json::from_value(value["job"]["phase"].clone())?;
        if phase.is_terminal() {
            println!("job {id} {phase}");
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            println!("cancel of job {id} requested; the daemon has not confirmed it yet");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `reelspool priority ID N` through the daemon: the daemon checks the asker owns the job and
/// leaves the request for the scheduler, then this waits until the job's state shows it.
pub fn priority(spool_dir: &Path, wanted: &str, priority: i64, wait_secs: u64) -> Result<()> {
    let value = ask(
        spool_dir,
        &Request::Priority {
            job: wanted.to_string(),
            priority,
        },
    )?;
    let id = value["id"].as_str().unwrap_or(wanted).to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(wait_secs);
    loop {
        let value = ask(spool_dir, &Request::Status { job: id.clone() })?;
        let job: JobState = serde_json::from_value(value["job"].clone())?;
        if i64::from(job.priority) == priority {
            println!("job {id} priority {priority}");
            return Ok(());
        }
        if job.phase.is_terminal() {
            println!(
                "job {id} {} before its priority changed (still {})",
                job.phase, job.priority
            );
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            println!(
                "priority {priority} for job {id} requested; the daemon has not applied it yet"
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobs::state::{JobId, Phase};

    fn job_of(owner: Person) -> JobState {
        let text = r#"{"id":"20261126-101500-000-0001","name":"portrait","phase":"running",
            "priority":3,"source_file":"ben.yaml","submitted_at_ms":5,
            "output":"/srv/renders/ben.mp4","error":"secret detail","gpu":"GPU-1"}"#;
        let mut job: JobState = serde_json::from_str(text).expect("state parses");
        job.owner = Some(owner);
        job
    }

    #[test]
    fn others_see_only_name_state_and_owner() {
        let ben = Person {
            uid: 1002,
            name: "ben".into(),
            gids: vec![1002, 77],
        };
        let shown = name_and_state(&job_of(ben));
        let back: JobState = serde_json::from_value(shown.clone()).expect("CLI can read it");
        assert_eq!(back.name, "portrait");
        assert_eq!(back.phase, Phase::Running);
        assert_eq!(
            back.id,
            "20261126-101500-000-0001".parse::<JobId>().expect("id")
        );
        assert_eq!(back.output, None);
        assert_eq!(back.error, None);
        assert_eq!(back.gpu, None);
        assert_eq!(back.source_file, "");
        let owner = back.owner.expect("owner shown");
        assert_eq!((owner.uid, owner.name.as_str()), (1002, "ben"));
        assert!(owner.gids.is_empty(), "{shown}");
    }

    #[test]
    fn an_asker_outside_the_group_is_refused_before_anything_is_read() {
        let context = ControlContext {
            jobs_dir: PathBuf::from("/nonexistent/jobs"),
            state_dir: PathBuf::from("/nonexistent"),
            policy: Policy::new("reelspool-no-such-group-y"),
            executor: ExecutorConfig::Local,
            intake: None,
        };
        let reply = answer(&context, 3_999_999_917, r#"{"op":"list"}"#);
        let error = reply["error"].as_str().expect("a refusal");
        assert!(error.contains("reelspool-no-such-group-y"), "{error}");
        assert!(error.contains("3999999917"), "{error}");
    }

    #[test]
    fn malformed_requests_get_an_error_not_a_crash() {
        let context = ControlContext {
            jobs_dir: PathBuf::from("/nonexistent/jobs"),
            state_dir: PathBuf::from("/nonexistent"),
            policy: Policy::new("root"),
            executor: ExecutorConfig::Local,
            intake: None,
        };
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        let reply = answer(&context, me, r#"{"op":"format-disk"}"#);
        assert!(
            reply["error"]
                .as_str()
                .is_some_and(|e| e.contains("malformed request")),
            "{reply}"
        );
    }
}
