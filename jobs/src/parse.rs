//! Where a job file becomes a job: read, check, merge the template, fill defaults.
//!
//! The stages, in order, each stopping the file at its first failing stage:
//! 1. text: size, UTF-8, not empty ([`crate::text`]);
//! 2. structure: YAML syntax, one mapping, known keys only, no duplicates, no alias blow-up
//!    ([`crate::walk`]);
//! 3. types: serde turns the text into a [`JobFile`] (positions come from serde_yaml);
//! 4. values: ranges, names, addresses, and paths against the allowed roots
//!    ([`crate::validate`]), for the job and its template separately;
//! 5. resolution: template merged underneath, required keys present, defaults filled.
//!
//! Within stages 2 and 4 every problem found is reported, not just the first.

use crate::diag::{plain_yaml_message, Diagnostic};
use crate::error::{JobFileError, JobsError};
use crate::file::{JobFile, Key, JOB_KEYS, TEMPLATE_KEYS};
use crate::paths::{CanonicalRoots, Roots};
use crate::rules::check_name;
use crate::source::Source;
use crate::spec::{
    EngineKind, EngineSpec, Inputs, JobSpec, NotifySpec, OutputSpec, RenderSettings, RetryPolicy,
    WebhookSpec, DEFAULT_CODEC, DEFAULT_CRF,
};
use crate::template::read_template;
use crate::text::{check_text, decode_utf8, read_text_file, ReadFailure};
use crate::validate::{check_document, field_hint};
use crate::walk::check_structure;
use std::path::Path;

/// What parsing needs from the daemon's configuration.
#[derive(Debug, Clone, Copy)]
pub struct ParseContext<'a> {
    /// Where `template: NAME` finds `NAME.yaml` (the `templates/` folder or its `jobs/`);
    /// `None` refuses every job that names a template.
    pub templates_dir: Option<&'a Path>,
    /// Where inputs may be read and outputs written. No roots means nothing is allowed.
    pub roots: &'a Roots,
}

/// Reads and checks the job file at `path`. The job's default name is the file's stem.
pub fn load_job_file(path: &Path, ctx: &ParseContext) -> Result<JobSpec, JobFileError> {
    let shown = path.display().to_string();
    let text = read_text_file(path, &shown).map_err(|failure| match failure {
        ReadFailure::Io(source) => JobsError::ReadJobFile {
            path: path.to_path_buf(),
            source,
        },
        ReadFailure::Content(diagnostic) => JobsError::Invalid(vec![diagnostic]),
    })?;
    let default_name = path
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    parse_job(&shown, &text, &default_name, ctx)
}

/// Checks a job file already read into memory (the daemon reads claimed files itself, without
/// following symlinks); non-UTF-8 bytes are reported with their line and column.
pub fn parse_job_bytes(
    source_name: &str,
    bytes: &[u8],
    default_name: &str,
    ctx: &ParseContext,
) -> Result<JobSpec, JobFileError> {
    let text = decode_utf8(source_name, bytes.to_vec()).map_err(|d| JobsError::Invalid(vec![d]))?;
    parse_job(source_name, &text, default_name, ctx)
}

/// Checks job text; `source_name` is how the file is named in messages and `default_name` the
/// job name used when the file has no `name:`. Never panics, whatever the text.
pub fn parse_job(
    source_name: &str,
    text: &str,
    default_name: &str,
    ctx: &ParseContext,
) -> Result<JobSpec, JobFileError> {
    let job = Source {
        name: source_name,
        text,
    };
    check_text(source_name, text).map_err(|d| JobsError::Invalid(vec![d]))?;
    let roots = CanonicalRoots::new(ctx.roots);
    let merged = merged_document(&job, ctx, &roots).map_err(JobsError::Invalid)?;
    resolve(merged, default_name, &job).map_err(JobsError::Invalid)
}

/// Stages 2 to 4 for a job file and its template, merged: the job as written, checked, with
/// nothing resolved yet.
pub(crate) fn merged_document(
    job: &Source,
    ctx: &ParseContext,
    roots: &CanonicalRoots,
) -> Result<JobFile, Vec<Diagnostic>> {
    let mut doc = read_document(job, JOB_KEYS, "job file")?;
    let mut problems = check_document(&mut doc, job, roots);
    let mut template = None;
    if let Some(name) = doc.template.clone() {
        match read_template(&name, ctx.templates_dir, job) {
            Ok(found) => {
                let src = Source {
                    name: &found.shown,
                    text: &found.text,
                };
                match check_text(src.name, src.text)
                    .map_err(|d| vec![d])
                    .and_then(|()| read_document(&src, TEMPLATE_KEYS, "template"))
                {
                    Ok(mut template_doc) => {
                        problems.extend(check_document(&mut template_doc, &src, roots));
                        template = Some(template_doc);
                    }
                    Err(template_problems) => problems.extend(template_problems),
                }
            }
            Err(diagnostic) => problems.push(diagnostic),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(match template {
        Some(under) => doc.overlay(under),
        None => doc,
    })
}

/// Stages 2 and 3 for one file.
pub(crate) fn read_document(
    src: &Source,
    keys: &'static [Key],
    what: &str,
) -> Result<JobFile, Vec<Diagnostic>> {
    let problems = check_structure(src, keys, what);
    if !problems.is_empty() {
        return Err(problems);
    }
    serde_yaml::from_str::<JobFile>(src.text).map_err(|err| vec![type_error(src, &err)])
}

/// A serde error, with the hint for the key it names ("render.size: ..." → `render.size`).
fn type_error(src: &Source, err: &serde_yaml::Error) -> Diagnostic {
    let message = plain_yaml_message(err);
    let key = message
        .split_once(": ")
        .map(|(path, _)| path)
        .filter(|path| {
            path.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'))
        })
        .unwrap_or_default();
    let hint = field_hint(key).map(str::to_string);
    crate::diag::from_yaml_error(src.name, src.text, err, hint)
}

/// Stage 5: required keys, the default name, defaults for everything else.
pub(crate) fn resolve(
    doc: JobFile,
    default_name: &str,
    job: &Source,
) -> Result<JobSpec, Vec<Diagnostic>> {
    let mut problems = Vec::new();
    let name = match doc.name {
        Some(name) => name,
        None => {
            if let Err(why) = check_name(default_name) {
                problems.push(job.at(
                    None,
                    format!("the job has no `name:` and its file name `{default_name}` cannot be one: it {why}"),
                    Some("add `name: interview-042` (letters, digits, `.`, `_`, `-`), or rename the file".to_string()),
                ));
            }
            default_name.to_string()
        }
    };
    let inputs = doc.inputs.unwrap_or_default();
    let output = doc.output.unwrap_or_default();
    let mut require = |value: bool, path: &[&str], example: &str| {
        if !value {
            let (section, key) = (path[0], path[1]);
            problems.push(job.at_key(
                path,
                format!("missing required key `{section}.{key}`"),
                Some(format!("add `{key}: {example}` under `{section}:`")),
            ));
        }
    };
    require(
        inputs.image.is_some(),
        &["inputs", "image"],
        "/data/portraits/anna.png",
    );
    require(
        inputs.audio.is_some(),
        &["inputs", "audio"],
        "/data/speech/anna.wav",
    );
    require(
        inputs.prompt.is_some(),
        &["inputs", "prompt"],
        "\"A presenter in a studio\"",
    );
    require(
        output.path.is_some(),
        &["output", "path"],
        "/data/out/interview-042.mp4",
    );
    let (Some(image), Some(audio), Some(prompt), Some(output_path)) =
        (inputs.image, inputs.audio, inputs.prompt, output.path)
    else {
        return Err(problems);
    };
    if output_path == image || output_path == audio {
        problems.push(
            job.at_value(
                &["output", "path"],
                format!(
                    "output.path `{}` is one of the job's inputs",
                    output_path.display()
                ),
                Some(
                    "write the video to a new file; the inputs are read while it is written"
                        .to_string(),
                ),
            ),
        );
    }
    if let Some(engine) = &doc.engine {
        match (engine.kind, &engine.name) {
            (Some(EngineKind::Command), None) => problems.push(job.at_value(
                &["engine", "kind"],
                "`engine.kind: command` needs `engine.name`: the name of an engine the operator declared".to_string(),
                Some("add `name: <engine>` under `engine:`; the daemon config's `engines:` lists the names".to_string()),
            )),
            (kind, Some(name)) if kind != Some(EngineKind::Command) => problems.push(job.at_value(
                &["engine", "name"],
                format!("`engine.name: {name}` only applies to `engine.kind: command`"),
                Some("add `kind: command` under `engine:`, or remove `name:`".to_string()),
            )),
            _ => {}
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }

    let render = doc.render.unwrap_or_default();
    let d = RenderSettings::default();
    let engine = doc.engine.unwrap_or_default();
    let engine_default = EngineSpec::default();
    let engine_kind = engine.kind.unwrap_or(engine_default.kind);
    let engine_model = engine.model.unwrap_or_else(|| match engine_kind {
        EngineKind::Native => engine_default.model,
        EngineKind::Command => String::new(),
    });
    // Which model this is, decided here once and kept in the job.
    let engine = EngineSpec::new(
        engine_kind,
        engine.name,
        engine_model,
        engine.profile.or(engine_default.profile),
    );
    // Live Avatar is made for 25 frames per second; the tiny model keeps 16.
    let default_fps = if engine.model_ref.is_release() {
        crate::spec::LIVE_AVATAR_FPS
    } else {
        d.fps
    };
    let notify = doc.notify.unwrap_or_default();
    let notify_default = NotifySpec::default();
    Ok(JobSpec {
        name,
        template: doc.template,
        priority: doc.priority.unwrap_or(0),
        inputs: Inputs {
            image,
            audio,
            prompt,
        },
        render: RenderSettings {
            size: render.size.unwrap_or(d.size),
            num_clip: render.num_clip.unwrap_or(d.num_clip),
            infer_frames: render.infer_frames.unwrap_or(d.infer_frames),
            sample_steps: render.sample_steps.unwrap_or(d.sample_steps),
            guide_scale: render.guide_scale.unwrap_or(d.guide_scale),
            seed: render.seed.unwrap_or(d.seed),
            online_decode: render.online_decode.unwrap_or(d.online_decode),
            offload: render.offload.unwrap_or(d.offload),
            fps: render.fps.unwrap_or(default_fps),
            checkpoint_every: render.checkpoint_every.unwrap_or(d.checkpoint_every),
            memory_mode: render.memory_mode.unwrap_or(d.memory_mode),
            precision: render.precision.unwrap_or(d.precision),
        },
        engine,
        output: OutputSpec {
            path: output_path,
            codec: output.codec.unwrap_or(DEFAULT_CODEC),
            crf: output.crf.unwrap_or(DEFAULT_CRF),
            overwrite: output.overwrite.unwrap_or(false),
        },
        notify: NotifySpec {
            email: notify.email.unwrap_or(notify_default.email),
            webhook: match notify.webhook {
                Some(hooks) => hooks
                    .into_iter()
                    .map(|hook| WebhookSpec {
                        url: hook.url,
                        secret_env: hook.secret_env,
                        format: hook.format.unwrap_or_default(),
                    })
                    .collect(),
                None => notify_default.webhook,
            },
            on: notify.on.unwrap_or(notify_default.on),
            progress_every: notify.progress_every.or(notify_default.progress_every),
        },
        retry: RetryPolicy {
            max_attempts: doc
                .retry
                .as_ref()
                .and_then(|r| r.max_attempts)
                .unwrap_or(RetryPolicy::default().max_attempts),
            max_evictions: doc
                .retry
                .as_ref()
                .and_then(|r| r.max_evictions)
                .unwrap_or(RetryPolicy::default().max_evictions),
        },
    })
}

#[cfg(test)]
mod tests;
