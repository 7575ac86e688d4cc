//! Range and content checks on one job file or template, each reported at its own value.
//!
//! The checks run on each file before the template is merged, so a bad value is always
//! reported in the file that wrote it. A merged value is always one file's value, so nothing
//! is missed by checking before the merge. Everything that is wrong is reported, not just the
//! first problem: fixing a job file should take one round trip, not ten.

use crate::diag::Diagnostic;
use crate::file::{JobFile, NotifyFile};
use crate::paths::{check_input, check_output, CanonicalRoots};
use crate::rules::{check_name, check_webhook_url, is_env_name, is_mail_address};
use crate::source::Source;
use std::fmt::Display;

/// Longest prompt, in characters; the text encoder reads far less than this.
pub const MAX_PROMPT_CHARS: usize = 4000;
/// Longest `engine.model` of a command engine, in characters.
const MAX_COMMAND_MODEL_CHARS: usize = 4096;

/// The advice shown with a problem in `key` (a dotted path such as `render.size`).
pub(crate) fn field_hint(key: &str) -> Option<&'static str> {
    // List positions do not change the advice: `notify.on[2]` is about `notify.on`.
    let key: String = key
        .split('[')
        .map(|part| part.split_once(']').map_or(part, |(_, rest)| rest))
        .collect();
    Some(match key.as_str() {
        "inputs" | "render" | "engine" | "output" | "notify" | "retry" => {
            "a section holds `key: value` lines indented below it, e.g. `render:` then `  size: 704*384`"
        }
        "name" => "use letters, digits, `.`, `_` and `-`, e.g. interview-042",
        "template" => "a template is a file name from templates/jobs without `.yaml`, e.g. lowmem-24g",
        "priority" => "higher runs first; 0 is normal, use -1000 to 1000",
        "inputs.prompt" => "describe the scene and the speaker in a sentence or two",
        "render.size" => "write WIDTH*HEIGHT, both multiples of 16 from 64 to 4096; 704*384 needs an 80 GB card, 384*256 fits 24 GB",
        "render.num_clip" => "write `auto` to cover the whole audio, or a number of clips",
        "render.infer_frames" => "32 or 48 are the usual choices; use 32 to save GPU memory",
        "render.sample_steps" => "the distilled model is made for 4 steps; 3 to 5 are sensible",
        "render.guide_scale" => "0 is recommended for the distilled model",
        "render.seed" => "any whole number from 0 to 18446744073709551615",
        "render.online_decode" => "write true (memory stays flat) or false",
        "render.offload" => "write auto, true (fits smaller cards, about 4x slower) or false",
        "render.memory_mode" => "write auto (placement picks the fastest mode that fits), resident, hybrid or streamed (least GPU memory, more host memory)",
        "render.precision" => "write auto (bf16 where it fits, else fp8), bf16 or fp8 (half the weight memory)",
        "render.checkpoint_every" => "write auto (checkpoint I/O kept to 2 % of render time) or a number of clips from 1 (the default) to 10000",
        "render.fps" => "left out, it is 25 for a Live Avatar release and 16 for the tiny model; 25 and 30 suit broadcast and web delivery",
        "engine.kind" => "write native (the built-in engine) or command (an engine the operator declared in the daemon config)",
        "engine.name" => "the name of an engine under `engines:` in the daemon config; `reelspool check-config` lists them",
        "engine.model" => "write builtin:tiny for the demo model, or the absolute path of a checkpoint folder or Live Avatar release",
        "engine.profile" => "a profile name uses letters, digits, `.`, `_` and `-`",
        "output.codec" => "write h264 (plays everywhere) or hevc (smaller files)",
        "output.crf" => "lower is better quality and bigger files; 18 looks lossless, 23 is the x264 default",
        "output.overwrite" => "write true to let this job replace a file already at output.path, false (the default) to keep it",
        "notify.on" => "list any of: started, progress, done, failed, cancelled",
        "notify.progress_every" => "a number of clips between progress notices, 1 or more",
        "retry.max_attempts" => {
            "attempts in a row that make no new clip durable, the first included; 3 is the default"
        }
        "retry.max_evictions" => {
            "evictions in a row (the worker killed by someone else, or a daemon restart) that make no new clip durable; 50 is the default"
        }
        _ if key.starts_with("notify.email") => "write plain addresses such as ops@example.com",
        _ if key.starts_with("notify.webhook") => {
            "each webhook needs `url: https://...`; optional: `secret_env: VAR`, `format: json|slack`"
        }
        _ => return None,
    })
}

/// Collects problems for one file.
struct Checker<'a> {
    src: &'a Source<'a>,
    out: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn value(&mut self, path: &[&str], message: String) {
        let hint = field_hint(&path.join(".")).map(str::to_string);
        let diagnostic = self.src.at_value(path, message, hint);
        self.out.push(diagnostic);
    }

    fn value_with(&mut self, path: &[&str], message: String, hint: String) {
        let diagnostic = self.src.at_value(path, message, Some(hint));
        self.out.push(diagnostic);
    }

    fn range<T: PartialOrd + Display>(&mut self, path: &[&str], value: Option<T>, low: T, high: T) {
        let Some(value) = value else { return };
        if value < low || value > high {
            let key = path.last().copied().unwrap_or_default();
            self.value(
                path,
                format!("{key} must be between {low} and {high}, got {value}"),
            );
        }
    }
}

/// Checks every value `doc` sets and replaces its paths by their resolved form.
pub(crate) fn check_document(
    doc: &mut JobFile,
    src: &Source,
    roots: &CanonicalRoots,
) -> Vec<Diagnostic> {
    let mut c = Checker {
        src,
        out: Vec::new(),
    };
    if let Some(name) = &doc.name {
        if let Err(why) = check_name(name) {
            c.value(&["name"], format!("job name `{name}` {why}"));
        }
    }
    c.range(&["priority"], doc.priority, -1000, 1000);
    if let Some(inputs) = &mut doc.inputs {
        for (key, slot) in [("image", &mut inputs.image), ("audio", &mut inputs.audio)] {
            if let Some(path) = slot {
                match check_input(&format!("inputs.{key}"), path, &roots.inputs) {
                    Ok(real) => *path = real,
                    Err(problem) => c.value_with(&["inputs", key], problem.message, problem.hint),
                }
            }
        }
        if let Some(prompt) = &inputs.prompt {
            check_prompt(&mut c, prompt);
        }
    }
    if let Some(render) = &doc.render {
        if let Some(size) = render.size {
            let fits = |side: u32| (64..=4096).contains(&side) && side % 16 == 0;
            if !fits(size.width) || !fits(size.height) {
                c.value(
                    &["render", "size"],
                    format!("size sides must be multiples of 16 between 64 and 4096, got {size}"),
                );
            }
        }
        if let Some(crate::spec::NumClip::Count(n)) = render.num_clip {
            c.range(&["render", "num_clip"], Some(n), 1, 100_000);
        }
        c.range(&["render", "infer_frames"], render.infer_frames, 1, 256);
        c.range(&["render", "sample_steps"], render.sample_steps, 1, 50);
        if let Some(scale) = render.guide_scale {
            if !scale.is_finite() {
                c.value(
                    &["render", "guide_scale"],
                    format!("guide_scale must be a finite number, got {scale}"),
                );
            } else {
                c.range(&["render", "guide_scale"], Some(scale), 0.0, 20.0);
            }
        }
        if let Some(crate::spec::CheckpointEvery::Every(n)) = render.checkpoint_every {
            c.range(&["render", "checkpoint_every"], Some(n), 1, 10_000);
        }
        if let Some(fps) = render.fps {
            if ![16, 25, 30].contains(&fps) {
                c.value(
                    &["render", "fps"],
                    format!("fps must be 16, 25 or 30, got {fps}"),
                );
            }
        }
    }
    if let Some(engine) = &doc.engine {
        if let Some(model) = &engine.model {
            if engine.kind == Some(crate::spec::EngineKind::Command) {
                check_command_model(&mut c, model);
            } else {
                check_model(&mut c, model);
            }
        }
        if let Some(name) = &engine.name {
            if let Err(why) = check_name(name) {
                c.value(&["engine", "name"], format!("engine name `{name}` {why}"));
            }
        }
        if let Some(profile) = &engine.profile {
            if let Err(why) = check_name(profile) {
                c.value(
                    &["engine", "profile"],
                    format!("profile name `{profile}` {why}"),
                );
            }
        }
    }
    if let Some(output) = &mut doc.output {
        if let Some(path) = &mut output.path {
            match check_output("output.path", path, &roots.outputs) {
                Ok(real) => *path = real,
                Err(problem) => c.value_with(&["output", "path"], problem.message, problem.hint),
            }
        }
        c.range(&["output", "crf"], output.crf, 0, 51);
    }
    if let Some(notify) = &doc.notify {
        check_notify(&mut c, notify);
    }
    if let Some(retry) = &doc.retry {
        c.range(&["retry", "max_attempts"], retry.max_attempts, 1, 100);
        c.range(&["retry", "max_evictions"], retry.max_evictions, 1, 1000);
    }
    c.out
}

fn check_prompt(c: &mut Checker, prompt: &str) {
    let path = ["inputs", "prompt"];
    if prompt.trim().is_empty() {
        c.value(&path, "prompt is empty".to_string());
    } else if prompt.chars().count() > MAX_PROMPT_CHARS {
        c.value(
            &path,
            format!(
                "prompt is {} characters long, more than {MAX_PROMPT_CHARS}",
                prompt.chars().count()
            ),
        );
    } else if prompt.contains('\0') {
        c.value(&path, "prompt contains a NUL character".to_string());
    }
}

fn check_model(c: &mut Checker, model: &str) {
    let path = ["engine", "model"];
    if let Some(name) = model.strip_prefix(crate::spec::BUILTIN_PREFIX) {
        if let Err(why) = check_name(name) {
            c.value(&path, format!("built-in model name `{name}` {why}"));
        }
    } else if !model.starts_with('/') {
        c.value_with(
            &path,
            format!("model must be `builtin:<name>` or an absolute checkpoint path, got `{model}`"),
            "the file moves once accepted; write an absolute path (or builtin:tiny for the demo model)"
                .to_string(),
        );
    }
}

/// A command engine's model is passed to that engine as written: a directory or a model id.
fn check_command_model(c: &mut Checker, model: &str) {
    let path = ["engine", "model"];
    if model.chars().count() > MAX_COMMAND_MODEL_CHARS {
        c.value(
            &path,
            format!("model is longer than {MAX_COMMAND_MODEL_CHARS} characters"),
        );
    } else if let Some(bad) = model.chars().find(|ch| ch.is_control()) {
        c.value(
            &path,
            format!(
                "model contains the control character `{}`",
                bad.escape_debug()
            ),
        );
    }
}

fn check_notify(c: &mut Checker, notify: &NotifyFile) {
    for (index, address) in notify.email.iter().flatten().enumerate() {
        if !is_mail_address(address) {
            let slot = index.to_string();
            c.value(
                &["notify", "email", &slot],
                format!("`{address}` is not a mail address"),
            );
        }
    }
    for (index, hook) in notify.webhook.iter().flatten().enumerate() {
        let slot = index.to_string();
        if let Err(why) = check_webhook_url(&hook.url) {
            let hint = if why.contains("password") {
                "put the secret in an environment variable of the daemon and name it in `secret_env`".to_string()
            } else {
                "write the full URL, e.g. https://hooks.example.com/render".to_string()
            };
            c.value_with(
                &["notify", "webhook", &slot, "url"],
                format!("webhook url `{}` {why}", hook.url),
                hint,
            );
        }
        if let Some(var) = &hook.secret_env {
            if !is_env_name(var) {
                c.value_with(
                    &["notify", "webhook", &slot, "secret_env"],
                    format!("`{var}` is not an environment variable name"),
                    "secret_env names the daemon's variable holding the secret, e.g. HOOK_SECRET; never the secret itself"
                        .to_string(),
                );
            }
        }
    }
    if notify.progress_every == Some(0) {
        c.value(
            &["notify", "progress_every"],
            "progress_every must be 1 or more, got 0".to_string(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hint_ignores_list_positions() {
        assert_eq!(field_hint("notify.on[2]"), field_hint("notify.on"));
        assert!(field_hint("notify.on").is_some());
        assert_eq!(
            field_hint("notify.webhook[0].url"),
            field_hint("notify.webhook")
        );
    }

    #[test]
    fn unknown_key_has_no_hint() {
        assert_eq!(field_hint("render.colour"), None);
    }
}
