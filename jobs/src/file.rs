//! The job file as written: every key optional, nothing resolved yet.
//!
//! Job files and templates share this shape. Keeping "what the file said" apart from the
//! resolved [`JobSpec`](crate::JobSpec) is what makes templates simple: a template is merged
//! underneath a job by taking, key by key, the job's value when it has one and the template's
//! otherwise ([`JobFile::overlay`]); only then are defaults filled in and required keys checked.
//!
//! The key lists ([`JOB_KEYS`], [`TEMPLATE_KEYS`]) describe the same shape for the structural
//! pass in [`crate::walk`], which reports unknown and duplicate keys with their exact position
//! before serde sees the file. A test keeps the lists and the structs in step.

use crate::spec::{
    CheckpointEvery, Codec, EngineKind, MemoryModeSetting, NoticeEvent, NumClip, Offload,
    PrecisionSetting, Size, WebhookFormat,
};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobFile {
    pub name: Option<String>,
    pub template: Option<String>,
    pub priority: Option<i32>,
    pub inputs: Option<InputsFile>,
    pub render: Option<RenderFile>,
    pub engine: Option<EngineFile>,
    pub output: Option<OutputFile>,
    pub notify: Option<NotifyFile>,
    pub retry: Option<RetryFile>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InputsFile {
    pub image: Option<PathBuf>,
    pub audio: Option<PathBuf>,
    pub prompt: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenderFile {
    pub size: Option<Size>,
    pub num_clip: Option<NumClip>,
    pub infer_frames: Option<u32>,
    pub sample_steps: Option<u32>,
    pub guide_scale: Option<f32>,
    pub seed: Option<u64>,
    pub online_decode: Option<bool>,
    pub offload: Option<Offload>,
    pub fps: Option<u32>,
    pub checkpoint_every: Option<CheckpointEvery>,
    pub memory_mode: Option<MemoryModeSetting>,
    pub precision: Option<PrecisionSetting>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EngineFile {
    pub kind: Option<EngineKind>,
    pub name: Option<String>,
    pub model: Option<String>,
    pub profile: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutputFile {
    pub path: Option<PathBuf>,
    pub codec: Option<Codec>,
    pub crf: Option<u8>,
    pub overwrite: Option<bool>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NotifyFile {
    pub email: Option<Vec<String>>,
    pub webhook: Option<Vec<WebhookFile>>,
    pub on: Option<Vec<NoticeEvent>>,
    pub progress_every: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookFile {
    pub url: String,
    pub secret_env: Option<String>,
    pub format: Option<WebhookFormat>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetryFile {
    pub max_attempts: Option<u32>,
    pub max_evictions: Option<u32>,
}

/// Merges two optional sections: both present → merged key by key, else whichever exists.
fn merge<T>(over: Option<T>, under: Option<T>, each: fn(T, T) -> T) -> Option<T> {
    match (over, under) {
        (Some(over), Some(under)) => Some(each(over, under)),
        (over, under) => over.or(under),
    }
}

impl JobFile {
    /// This file's keys win; `under` (a template) fills the keys this file leaves out.
    /// Lists are values like any other: a job's `email:` replaces the template's list.
    pub fn overlay(self, under: JobFile) -> JobFile {
        JobFile {
            name: self.name.or(under.name),
            template: self.template.or(under.template),
            priority: self.priority.or(under.priority),
            inputs: merge(self.inputs, under.inputs, |o, u| InputsFile {
                image: o.image.or(u.image),
                audio: o.audio.or(u.audio),
                prompt: o.prompt.or(u.prompt),
            }),
            render: merge(self.render, under.render, |o, u| RenderFile {
                size: o.size.or(u.size),
                num_clip: o.num_clip.or(u.num_clip),
                infer_frames: o.infer_frames.or(u.infer_frames),
                sample_steps: o.sample_steps.or(u.sample_steps),
                guide_scale: o.guide_scale.or(u.guide_scale),
                seed: o.seed.or(u.seed),
                online_decode: o.online_decode.or(u.online_decode),
                offload: o.offload.or(u.offload),
                fps: o.fps.or(u.fps),
                checkpoint_every: o.checkpoint_every.or(u.checkpoint_every),
                memory_mode: o.memory_mode.or(u.memory_mode),
                precision: o.precision.or(u.precision),
            }),
            engine: merge(self.engine, under.engine, |o, u| EngineFile {
                kind: o.kind.or(u.kind),
                name: o.name.or(u.name),
                model: o.model.or(u.model),
                profile: o.profile.or(u.profile),
            }),
            output: merge(self.output, under.output, |o, u| OutputFile {
                path: o.path.or(u.path),
                codec: o.codec.or(u.codec),
                crf: o.crf.or(u.crf),
                overwrite: o.overwrite.or(u.overwrite),
            }),
            notify: merge(self.notify, under.notify, |o, u| NotifyFile {
                email: o.email.or(u.email),
                webhook: o.webhook.or(u.webhook),
                on: o.on.or(u.on),
                progress_every: o.progress_every.or(u.progress_every),
            }),
            retry: merge(self.retry, under.retry, |o, u| RetryFile {
                max_attempts: o.max_attempts.or(u.max_attempts),
                max_evictions: o.max_evictions.or(u.max_evictions),
            }),
        }
    }
}

/// The shape of a YAML node, for the structural pass.
#[derive(Debug)]
pub(crate) enum Shape {
    /// A value checked later by its type (scalars, enums, plain lists).
    Leaf,
    /// A mapping with exactly these keys allowed.
    Map(&'static [Key]),
    /// A list whose every item has this shape.
    List(&'static Shape),
}

#[derive(Debug)]
pub(crate) struct Key {
    pub name: &'static str,
    pub shape: Shape,
}

const fn leaf(name: &'static str) -> Key {
    Key {
        name,
        shape: Shape::Leaf,
    }
}

const fn map(name: &'static str, keys: &'static [Key]) -> Key {
    Key {
        name,
        shape: Shape::Map(keys),
    }
}

const INPUTS_KEYS: &[Key] = &[leaf("image"), leaf("audio"), leaf("prompt")];
const RENDER_KEYS: &[Key] = &[
    leaf("size"),
    leaf("num_clip"),
    leaf("infer_frames"),
    leaf("sample_steps"),
    leaf("guide_scale"),
    leaf("seed"),
    leaf("online_decode"),
    leaf("offload"),
    leaf("fps"),
    leaf("checkpoint_every"),
    leaf("memory_mode"),
    leaf("precision"),
];
const ENGINE_KEYS: &[Key] = &[leaf("kind"), leaf("name"), leaf("model"), leaf("profile")];
const OUTPUT_KEYS: &[Key] = &[leaf("path"), leaf("codec"), leaf("crf"), leaf("overwrite")];
const WEBHOOK_KEYS: &[Key] = &[leaf("url"), leaf("secret_env"), leaf("format")];
const WEBHOOK_ITEM: Shape = Shape::Map(WEBHOOK_KEYS);
const NOTIFY_KEYS: &[Key] = &[
    leaf("email"),
    Key {
        name: "webhook",
        shape: Shape::List(&WEBHOOK_ITEM),
    },
    leaf("on"),
    leaf("progress_every"),
];
const RETRY_KEYS: &[Key] = &[leaf("max_attempts"), leaf("max_evictions")];

/// Every key a job file may have.
pub(crate) const JOB_KEYS: &[Key] = &[
    leaf("name"),
    leaf("template"),
    leaf("priority"),
    map("inputs", INPUTS_KEYS),
    map("render", RENDER_KEYS),
    map("engine", ENGINE_KEYS),
    map("output", OUTPUT_KEYS),
    map("notify", NOTIFY_KEYS),
    map("retry", RETRY_KEYS),
];

/// A template may set anything a job can, except which job it is and which template it uses
/// (templates do not chain: one level keeps "where did this value come from?" answerable).
pub(crate) const TEMPLATE_KEYS: &[Key] = &[
    leaf("priority"),
    map("inputs", INPUTS_KEYS),
    map("render", RENDER_KEYS),
    map("engine", ENGINE_KEYS),
    map("output", OUTPUT_KEYS),
    map("notify", NOTIFY_KEYS),
    map("retry", RETRY_KEYS),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a file that sets every key the key list allows, with a value of the right type,
    /// and checks serde accepts it: a key missing from the structs would fail here.
    fn every_key_yaml(keys: &[Key], indent: usize, out: &mut String) {
        for key in keys {
            let pad = " ".repeat(indent);
            match &key.shape {
                Shape::Leaf => {
                    out.push_str(&format!("{pad}{}: {}\n", key.name, sample(key.name)));
                }
                Shape::Map(inner) => {
                    out.push_str(&format!("{pad}{}:\n", key.name));
                    every_key_yaml(inner, indent + 2, out);
                }
                Shape::List(_) => {
                    out.push_str(&format!(
                        "{pad}{}:\n{pad}  - url: http://127.0.0.1/\n",
                        key.name
                    ));
                    out.push_str(&format!("{pad}    secret_env: S\n{pad}    format: slack\n"));
                }
            }
        }
    }

    fn sample(key: &str) -> &'static str {
        match key {
            "size" => "64*64",
            "num_clip" => "auto",
            "online_decode" | "overwrite" => "true",
            "offload" | "memory_mode" | "precision" => "auto",
            "kind" => "native",
            "codec" => "hevc",
            "email" => "[a@b.c]",
            "on" => "[done]",
            "image" | "audio" | "path" => "/x",
            "name" | "template" | "prompt" | "model" | "profile" => "text",
            _ => "1",
        }
    }

    #[test]
    fn key_list_matches_job_file_struct() {
        let mut yaml = String::new();
        every_key_yaml(JOB_KEYS, 0, &mut yaml);
        let parsed: Result<JobFile, _> = serde_yaml::from_str(&yaml);
        assert!(parsed.is_ok(), "{yaml}\n{parsed:?}");
    }

    #[test]
    fn overlay_prefers_job_values_and_keeps_template_ones() {
        let job: JobFile =
            serde_yaml::from_str("render: {infer_frames: 48}\nnotify: {email: [a@x.io]}\n")
                .expect("valid partial file");
        let template: JobFile = serde_yaml::from_str(
            "render: {infer_frames: 32, sample_steps: 3}\nnotify: {email: [t@x.io, u@x.io]}\n",
        )
        .expect("valid partial file");
        let merged = job.overlay(template);
        let render = merged.render.expect("both had render");
        assert_eq!(render.infer_frames, Some(48));
        assert_eq!(render.sample_steps, Some(3));
        let email = merged.notify.and_then(|n| n.email);
        assert_eq!(email, Some(vec!["a@x.io".to_string()]));
    }
}
