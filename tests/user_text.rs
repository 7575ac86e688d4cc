//! End to end: user text never reaches an operator's terminal, a log or a notice with its
//! control characters live. Job file names, job names, prompts and output paths carrying ESC
//! sequences, CR/LF, NUL, DEL, C1 controls and Unicode bidi controls go through every place
//! that prints them: the `.error` file, `reelspool status` (table and details), `reelspool
//! logs`, the daemon's log, the mail the real SMTP server receives and the webhook bodies.

mod common;
#[path = "loopback/mod.rs"]
mod loopback;
#[path = "render/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::Duration;

use common::{wait_for, Farm};

const WAIT: Duration = Duration::from_secs(60);

/// In file names (no NUL, no `/`): a colour change, a window-title sequence ending in BEL, CR,
/// LF, DEL, a C1 CSI, and the bidi controls RLO, LRI and RLM.
const EVIL: &str = "\u{1b}[31m\u{1b}]0;pwned\u{7}\r\n\u{7f}\u{9b}2J\u{202e}\u{2066}\u{200f}";

/// Characters that must never come out raw. Line feeds are allowed where a text has lines;
/// the callers say so.
fn raw_controls(text: &str, lines_allowed: bool) -> Vec<char> {
    text.chars()
        .filter(|&c| !(lines_allowed && c == '\n'))
        .filter(|&c| {
            (c.is_control() && c != '\t')
                || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

fn assert_clean(what: &str, text: &str, lines_allowed: bool) {
    let raw = raw_controls(text, lines_allowed);
    assert!(raw.is_empty(), "{what} holds raw {raw:?}:\n{text:?}");
    // And the text still says that something was there.
    assert!(
        text.contains("\\x1b") || text.contains("\\u{202e}"),
        "{what} shows the escapes:\n{text}"
    );
}

#[test]
fn control_and_bidi_characters_are_escaped_everywhere_user_text_is_printed() {
    let smtp = loopback::start_smtp();
    let json_hook = loopback::start_http();
    let slack_hook = loopback::start_http();
    let farm = Farm::new(&format!(
        "{}{}",
        support::POOL,
        loopback::notices_config(smtp.port)
    ));
    let _daemon = farm.start_daemon();

    // 1. A rejected file: its name, the invalid job name it quotes, and a prompt line.
    let bad_file = format!("bad{EVIL}.yaml");
    let bad_text = farm
        .job_yaml("placeholder", "")
        .replace("name: placeholder", "name: \"x\\e[2Jy\\r\\nz\\u202E\"")
        .replace("prompt: \"a test\"", "prompt: \"\\e]0;t\\a \\0 \\u2066\"");
    farm.drop_job(&bad_file, &bad_text);
    let error = wait_for("the bad file's .error", WAIT, || farm.rejection(&bad_file));
    assert_clean(".error file", &error, true);
    // `reelspool validate` prints the same diagnostics on the operator's terminal.
    let outside = farm.root.path().join(&bad_file);
    std::fs::write(&outside, &bad_text).expect("write a copy to validate");
    let validate = farm.cli(&["validate", outside.to_str().expect("UTF-8 path")]);
    assert_eq!(validate.status.code(), Some(1), "{validate:?}");
    assert_clean(
        "validate",
        &String::from_utf8(validate.stderr).expect("utf-8"),
        true,
    );

    // 2. An accepted job: file name, prompt and output path all carry the controls.
    let good_file = format!("good{EVIL}.yaml");
    let out_name = "video\u{1b}[1m\u{202e}4pm.exe\u{7f}\u{85}.mp4";
    let output = farm.out.join(out_name);
    let good_text = format!(
        "{}notify:\n  on: [done]\n  email: [ops@example.com]\n  webhook:\n    - {{ url: \"http://127.0.0.1:{}/json\" }}\n    - {{ url: \"http://127.0.0.1:{}/slack\", format: slack }}\n",
        farm.job_yaml("evil-ok", "  num_clip: 2\n")
            .replace("prompt: \"a test\"", "prompt: \"\\e[2J\\r\\n\\x7f \\u202E a talk\"")
            .replace(
                &format!("{}/evil-ok.mp4", farm.out.display()),
                &format!("\"{}/video\\e[1m\\u202E4pm.exe\\x7f\\x85.mp4\"", farm.out.display())
            ),
        json_hook.port,
        slack_hook.port
    );
    farm.drop_job(&good_file, &good_text);
    let state = support::wait_finished(&farm, &good_file);
    assert_eq!(state["phase"], "done", "{state}");
    assert_eq!(
        state["output"],
        output.display().to_string(),
        "the real path, raw, in JSON"
    );
    let id = state["id"].as_str().expect("id").to_string();

    // Mail, as the real SMTP server parsed it.
    let mail = smtp.messages.recv_timeout(WAIT).expect("the done mail");
    let subject = mail["headers"]["subject"].as_str().expect("subject");
    assert!(
        raw_controls(subject, false).is_empty(),
        "subject: {subject:?}"
    );
    for part in mail["parts"].as_array().expect("parts") {
        let text = part["text"].as_str().expect("part text");
        assert_clean(&format!("mail part {}", part["type"]), text, true);
    }

    // Webhooks: the JSON payload stays valid JSON with the exact path; the Slack text,
    // shown to people, is escaped.
    let json_body = json_hook.requests.recv_timeout(WAIT).expect("JSON webhook");
    let payload: serde_json::Value = serde_json::from_slice(&json_body.body).expect("valid JSON");
    assert_eq!(payload["output"], output.display().to_string());
    let slack_body = slack_hook
        .requests
        .recv_timeout(WAIT)
        .expect("Slack webhook");
    let slack: serde_json::Value = serde_json::from_slice(&slack_body.body).expect("valid JSON");
    assert_clean("slack text", slack["text"].as_str().expect("text"), true);

    // The command line.
    for args in [
        vec!["status"],
        vec!["status", id.as_str()],
        vec!["logs", id.as_str()],
    ] {
        let run = farm.cli(&args);
        assert!(run.status.success(), "{args:?}: {run:?}");
        let stdout = String::from_utf8(run.stdout).expect("utf-8");
        let stderr = String::from_utf8(run.stderr).expect("utf-8");
        assert!(
            raw_controls(&stdout, true).is_empty(),
            "{args:?} stdout: {stdout:?}"
        );
        assert!(
            raw_controls(&stderr, true).is_empty(),
            "{args:?} stderr: {stderr:?}"
        );
        if args.len() == 2 && args[0] == "status" {
            assert_clean("status ID", &stdout, true);
        }
    }

    // The daemon's own log, which names the files it took and rejected.
    let log = farm.daemon_logs();
    assert!(log.contains("job file rejected"), "{log}");
    assert_clean("daemon log", &log, true);
}
