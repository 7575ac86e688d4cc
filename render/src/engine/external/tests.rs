//! The driver against tiny shell engines: each misbehaviour gives its own error.

use super::protocol::ErrorKind;
use super::*;

const HELLO: &str = r#"{"type":"hello","protocol":1}"#;

fn engine(script: &str, timeout_secs: u64) -> ResolvedEngine {
    ResolvedEngine {
        name: "shell-test".into(),
        declaration: EngineDeclaration {
            command: vec!["sh".into(), "-c".into(), script.into()],
            env: BTreeMap::new(),
            profile: None,
            working_dir: None,
            heartbeat_timeout_secs: timeout_secs,
            stop_grace_secs: 1,
        },
    }
}

fn start(script: &str, timeout_secs: u64) -> Result<CommandEngine, RenderError> {
    CommandEngine::start(&engine(script, timeout_secs), Path::new("/tmp"), &[])
}

fn clip_request() -> Request {
    Request::RenderClip {
        index: 0,
        frames: 4,
        carry_in: None,
        carry_out: "/tmp/none".into(),
        frames_path: "/tmp/none.rgb".into(),
    }
}

#[test]
fn heartbeats_and_progress_are_skipped_until_the_reply() {
    let script = format!(
        "echo '{HELLO}'; read line; echo '{{\"type\":\"heartbeat\"}}'; \
         echo '{{\"type\":\"progress\",\"step\":1,\"total\":4}}'; echo '{{\"type\":\"ok\",\"frames\":4}}'; read line"
    );
    let mut engine = start(&script, 5).expect("engine starts");
    assert_eq!(engine.render_clip(&clip_request()).expect("clip"), 4);
    engine.shutdown();
}

#[test]
fn a_line_that_is_not_a_message_fails_naming_the_engine() {
    let script = format!("echo '{HELLO}'; read line; echo 'Loading shards 50%'; exec sleep 30");
    let mut engine = start(&script, 5).expect("engine starts");
    let err = engine.render_clip(&clip_request()).unwrap_err();
    assert!(matches!(err, RenderError::Malformed { .. }), "{err}");
    assert!(
        err.to_string().contains("shell-test") && err.to_string().contains("Loading shards"),
        "{err}"
    );
}

#[test]
fn an_engine_that_exits_mid_clip_reports_its_status() {
    let script = format!("echo '{HELLO}'; read line; exit 7");
    let mut engine = start(&script, 5).expect("engine starts");
    let err = engine.render_clip(&clip_request()).unwrap_err();
    assert!(err.to_string().contains("exit status 7"), "{err}");
    assert!(err.may_be_transient());
}

#[test]
fn a_silent_engine_is_killed_after_the_heartbeat_timeout() {
    let script = format!("echo '{HELLO}'; read line; exec sleep 60");
    let mut engine = start(&script, 1).expect("engine starts");
    let err = engine.render_clip(&clip_request()).unwrap_err();
    assert!(matches!(err, RenderError::Silent { secs: 1, .. }), "{err}");
}

#[test]
fn a_reported_oom_keeps_its_kind() {
    let script = format!(
        "echo '{HELLO}'; read line; echo '{{\"type\":\"error\",\"kind\":\"oom\",\"message\":\"CUDA out of memory\"}}'; read line"
    );
    let mut engine = start(&script, 5).expect("engine starts");
    let err = engine.render_clip(&clip_request()).unwrap_err();
    assert_eq!(err.reported_kind(), Some(ErrorKind::Oom), "{err}");
}

#[test]
fn another_protocol_version_is_refused() {
    let err = start(r#"echo '{"type":"hello","protocol":99}'; exec sleep 5"#, 5)
        .err()
        .expect("version 99 must be refused");
    assert!(matches!(err, RenderError::Version { got: 99, .. }), "{err}");
}

#[test]
fn a_missing_program_is_a_spawn_error() {
    let resolved = ResolvedEngine {
        name: "ghost".into(),
        declaration: EngineDeclaration {
            command: vec!["/nonexistent/engine".into()],
            env: BTreeMap::new(),
            profile: None,
            working_dir: None,
            heartbeat_timeout_secs: 5,
            stop_grace_secs: 1,
        },
    };
    let err = CommandEngine::start(&resolved, Path::new("/tmp"), &[])
        .err()
        .expect("must fail");
    assert!(matches!(err, RenderError::Spawn { .. }), "{err}");
}

/// An engine that sleeps inside its clip is interrupted one stop grace (1 s here) after the
/// stop, SIGTERM to its process group ending the shell and its `sleep` alike, and its
/// progress reached the caller first.
#[test]
fn a_stop_inside_a_long_clip_ends_the_engine_after_its_grace() {
    let script = format!(
        "echo '{HELLO}'; read line; echo '{{\"type\":\"progress\",\"step\":1,\"total\":4,\"message\":\"denoising\"}}'; sleep 600; echo '{{\"type\":\"ok\",\"frames\":4}}'"
    );
    let mut engine = start(&script, 60).expect("engine starts");
    let stop = AtomicBool::new(false);
    let mut seen = Vec::new();
    let started = Instant::now();
    let answer = engine
        .render_clip_watched(&clip_request(), &stop, &mut |step, total, message| {
            seen.push((step, total, message));
            // The stop comes once the engine is inside its clip.
            stop.store(true, Ordering::Relaxed);
        })
        .expect("a stop is not an error");
    let took = started.elapsed();
    assert_eq!(answer, None);
    assert_eq!(
        seen,
        vec![(Some(1), Some(4), Some("denoising".to_string()))]
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "interrupted after {took:?}"
    );
    assert!(
        matches!(engine.child.try_wait(), Ok(Some(_))),
        "the engine is gone"
    );
}
