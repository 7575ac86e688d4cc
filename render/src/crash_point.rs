//! A test hook that makes the worker SIGKILL itself at a named point of its clip loop.
//!
//! DESIGN.md §5 promises that a SIGKILL *at any moment* loses at most the clip in progress.
//! Killing a worker from outside lands wherever the scheduler of the host happens to be, which
//! mostly means "somewhere in the denoiser"; the narrow windows that matter most (segment
//! written but carry not, carry written but checkpoint not, old checkpoint moved aside but the
//! new one not yet written) are microseconds wide and would almost never be hit. This hook hits
//! them exactly, so the end-to-end tests can prove each one.
//!
//! It is off unless the environment variable [`CRASH_AT_ENV`] is set, which only the tests do:
//! `REELSPOOL_TEST_CRASH_AT=after_segment@3,mid_encode@5` kills the worker once after clip 3's
//! segment is durable and once halfway through encoding clip 5. Each point fires once per job:
//! before killing itself the worker leaves `work/crash-point-<name>@<clip>` behind, so the
//! attempt the daemon starts next runs past it. The daemon passes its environment on to its
//! workers, so setting the variable on a test daemon is enough.
//!
//! Points, in the order a clip reaches them: `after_denoise`, `mid_encode` (half the clip's
//! frames handed to the encoder), `after_segment`, `after_checkpoint` (carry handed to the
//! writer, before `clip_done` is sent); `before_assemble@<clips>` fires once every clip is done.
//! These run on the worker's main thread, which first waits for the checkpoint writer to finish
//! what it was given, so each kill leaves one exact state on disk.
//!
//! With [`CRASH_SIGNAL_ENV`] set to `SIGABRT` the worker dies of that signal
//! instead of SIGKILL (without a core file): a crash the job itself caused, which counts
//! against `retry.max_attempts`, where a SIGKILL from outside is an eviction.
//!
//! The checkpoint writer's own points run on its background thread, while the main thread
//! renders the next clips, so they land mid-render as a real crash would: `before_carry`,
//! `after_carry` (carry durable, checkpoint not yet), `mid_checkpoint` (previous checkpoint
//! moved aside, new one not written). They fire only at clips that are checkpointed
//! (`render.checkpoint_every`).
//!
//! The same points can hold the worker instead ([`PAUSE_AT_ENV`]): with
//! `REELSPOOL_TEST_PAUSE_AT=after_segment@0` the worker writes `work/paused-after_segment@0`
//! when it gets there and waits until a test creates `work/resume-after_segment@0`; this gives
//! the tests that change files under a running job an exact moment mid-render. A pause fires
//! once per job (the resume file stays).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The environment variable that arms the hook; see the module docs.
pub const CRASH_AT_ENV: &str = "REELSPOOL_TEST_CRASH_AT";

/// The environment variable that makes the worker wait at points; see the module docs.
pub const PAUSE_AT_ENV: &str = "REELSPOOL_TEST_PAUSE_AT";

/// How long a paused worker waits for its resume file before it goes on by itself.
const PAUSE_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// The environment variable that picks the signal of a crash point; see the module docs.
pub const CRASH_SIGNAL_ENV: &str = "REELSPOOL_TEST_CRASH_SIGNAL";

/// The signal a crash point sends its own process.
fn crash_signal() -> i32 {
    match std::env::var(CRASH_SIGNAL_ENV).as_deref() {
        Ok("SIGABRT") => libc::SIGABRT,
        _ => libc::SIGKILL,
    }
}

/// The armed points and where to record that one fired.
struct Armed {
    points: Vec<(String, u32)>,
    pauses: Vec<(String, u32)>,
    work_dir: PathBuf,
}

/// The points of the job being rendered; a warm worker re-arms them for each job it serves.
static ARMED: Mutex<Option<Armed>> = Mutex::new(None);

/// Reads [`CRASH_AT_ENV`]; call before the clip loop of every job so later points know the
/// job's work dir.
pub(crate) fn arm(work_dir: &Path) {
    static WARNED: OnceLock<()> = OnceLock::new();
    let pauses = std::env::var(PAUSE_AT_ENV)
        .map(|spec| parse(&spec))
        .unwrap_or_default();
    let armed = std::env::var(CRASH_AT_ENV).ok().and_then(|spec| {
        let points = parse(&spec);
        if points.is_empty() {
            WARNED.get_or_init(|| {
                tracing::warn!(value = %spec, "{CRASH_AT_ENV} names no point (want name@clip,...)")
            });
            return None;
        }
        tracing::warn!(value = %spec, "test crash points armed");
        Some(Armed {
            points,
            pauses: pauses.clone(),
            work_dir: work_dir.to_path_buf(),
        })
    });
    let armed = armed.or_else(|| {
        (!pauses.is_empty()).then(|| Armed {
            points: Vec::new(),
            pauses,
            work_dir: work_dir.to_path_buf(),
        })
    });
    *ARMED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = armed;
}

fn parse(spec: &str) -> Vec<(String, u32)> {
    spec.split(',')
        .filter_map(|item| {
            let (name, clip) = item.trim().split_once('@')?;
            Some((name.to_string(), clip.parse().ok()?))
        })
        .collect()
}

/// Whether `point@clip` is armed and has not fired yet for this job.
pub(crate) fn is_armed(point: &str, clip: u32) -> bool {
    let guard = ARMED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    guard.as_ref().is_some_and(|armed| {
        armed.points.iter().any(|(p, c)| p == point && *c == clip)
            && !armed
                .work_dir
                .join(format!("crash-point-{point}@{clip}"))
                .exists()
    })
}

/// Whether `point@clip` is armed and has not fired yet for this job; if so, marks it fired.
/// For points the caller acts out itself instead of a SIGKILL: `oom_<mode>@<clip>` makes a
/// release job running in `<mode>` (resident, hybrid, streamed) report an out-of-memory
/// failure as clip `<clip>` starts, as a card too small for the mode would.
pub(crate) fn fires(point: &str, clip: u32) -> bool {
    if !is_armed(point, clip) {
        return false;
    }
    let guard = ARMED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(armed) = guard.as_ref() else {
        return false;
    };
    let marker = armed.work_dir.join(format!("crash-point-{point}@{clip}"));
    if let Err(err) = std::fs::write(&marker, b"") {
        tracing::warn!(error = %err, "cannot record crash point; not acting it");
        return false;
    }
    tracing::warn!(point, clip, "test crash point reached");
    true
}

/// Waits for the resume file if `point@clip` is a pause point, then SIGKILLs this process if
/// `point@clip` is armed and has not fired yet for this job.
pub(crate) fn reached(point: &str, clip: u32) {
    pause(point, clip);
    let guard = ARMED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(armed) = guard.as_ref() else {
        return;
    };
    if !armed.points.iter().any(|(p, c)| p == point && *c == clip) {
        return;
    }
    let marker = armed.work_dir.join(format!("crash-point-{point}@{clip}"));
    if marker.exists() {
        return;
    }
    // A SIGKILL loses nothing the kernel already has, so a plain write is enough for the
    // marker to outlive this process.
    if let Err(err) = std::fs::write(&marker, b"") {
        tracing::warn!(error = %err, "cannot record crash point; not crashing");
        return;
    }
    let signal = crash_signal();
    tracing::warn!(point, clip, signal, "test crash point reached");
    // SAFETY: setrlimit with a limit we own (no core file for a staged crash), then kill() on
    // our own pid with SIGKILL, which cannot be caught, or abort(), which ends the process
    // by SIGABRT even if a handler was installed; neither returns.
    unsafe {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        if signal == libc::SIGABRT {
            // abort() restores the default action should anything have caught SIGABRT.
            libc::abort();
        }
        libc::kill(libc::getpid(), signal);
    }
}

/// Holds the worker at `point@clip` until the test's resume file appears (see the module docs).
fn pause(point: &str, clip: u32) {
    let work_dir = {
        let guard = ARMED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match guard.as_ref() {
            Some(armed) if armed.pauses.iter().any(|(p, c)| p == point && *c == clip) => {
                armed.work_dir.clone()
            }
            _ => return,
        }
    };
    let resume = work_dir.join(format!("resume-{point}@{clip}"));
    if resume.exists() {
        return;
    }
    if let Err(err) = std::fs::write(work_dir.join(format!("paused-{point}@{clip}")), b"") {
        tracing::warn!(error = %err, "cannot record pause point; not pausing");
        return;
    }
    tracing::warn!(
        point,
        clip,
        "test pause point reached: waiting for {}",
        resume.display()
    );
    let deadline = std::time::Instant::now() + PAUSE_LIMIT;
    while !resume.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_named_points_and_skips_malformed_items() {
        let points = parse("after_segment@3, mid_encode@5,bogus,after_carry@x");
        assert_eq!(
            points,
            vec![
                ("after_segment".to_string(), 3),
                ("mid_encode".to_string(), 5)
            ]
        );
    }
}
