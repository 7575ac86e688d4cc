use super::*;
use crate::spec::{
    CheckpointEvery, Codec, EngineKind, MemoryModeSetting, NoticeEvent, NumClip, Offload,
    PrecisionSetting, Size, WebhookFormat,
};
use crate::validate::MAX_PROMPT_CHARS;
use proptest::prelude::*;

mod files;
mod paths;
mod templates;
use std::fs;
use std::path::PathBuf;

/// A spool-like sandbox: an input root with an image and a speech track, an output root,
/// and a folder outside both.
struct Fixture {
    _dir: tempfile::TempDir,
    inputs: PathBuf,
    outputs: PathBuf,
    elsewhere: PathBuf,
    image: PathBuf,
    audio: PathBuf,
    roots: Roots,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = dir.path().canonicalize().expect("resolve temp dir");
    let inputs = base.join("in");
    let outputs = base.join("out");
    let elsewhere = base.join("elsewhere");
    for d in [&inputs, &outputs, &elsewhere] {
        fs::create_dir(d).expect("mkdir");
    }
    let image = inputs.join("anna.png");
    let audio = inputs.join("anna.wav");
    fs::write(&image, b"png").expect("write image");
    fs::write(&audio, b"wav").expect("write audio");
    let roots = Roots {
        inputs: vec![inputs.clone()],
        outputs: vec![outputs.clone()],
    };
    Fixture {
        _dir: dir,
        inputs,
        outputs,
        elsewhere,
        image,
        audio,
        roots,
    }
}

fn shipped_templates() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates")
}

/// A minimal valid job: six lines, so extra keys start on line 7.
fn base(fx: &Fixture) -> String {
    format!(
        "inputs:\n  image: {}\n  audio: {}\n  prompt: \"A presenter\"\noutput:\n  path: {}\n",
        fx.image.display(),
        fx.audio.display(),
        fx.outputs.join("v.mp4").display()
    )
}

fn parse(fx: &Fixture, text: &str) -> Result<JobSpec, JobsError> {
    let templates = shipped_templates();
    let ctx = ParseContext {
        templates_dir: Some(&templates),
        roots: &fx.roots,
    };
    parse_job("job.yaml", text, "job-from-stem", &ctx)
}

/// The diagnostics of a rejected job; fails the test if the job was accepted.
fn rejected(fx: &Fixture, text: &str) -> Vec<Diagnostic> {
    match parse(fx, text) {
        Ok(spec) => panic!("job must be rejected:\n{text}\naccepted as {spec:?}"),
        Err(err) => {
            assert!(!err.diagnostics().is_empty(), "{err}");
            err.diagnostics().to_vec()
        }
    }
}

fn only(diagnostics: &[Diagnostic]) -> &Diagnostic {
    assert_eq!(
        diagnostics.len(),
        1,
        "{}",
        crate::diag::render_all(diagnostics)
    );
    &diagnostics[0]
}

#[test]
fn accepts_design_example() {
    let fx = fixture();
    let text = format!(
        r#"name: interview-042            # optional; default: file stem
template: lowmem-24g           # optional preset from templates/jobs/, merged underneath
priority: 10                   # higher first; default 0
inputs:
  image: {image}
  audio: {audio}
  prompt: "A presenter in a modern studio, natural light"
render:
  size: 688*368                # also 688x368
  num_clip: auto               # auto = enough clips to cover the audio, or a number
  infer_frames: 32
  sample_steps: 4
  guide_scale: 0
  seed: 42
  online_decode: true          # default true
  offload: auto                # auto | true | false
engine:
  kind: native                 # native (Burn) | command (external program)
  model: builtin:tiny          # or a checkpoint directory
output:
  path: {out}
  codec: h264                  # h264 | hevc
  crf: 18
notify:
  email: [ops@example.com]
  webhook: [{{ url: "https://hooks.example.com/render", secret_env: HOOK_SECRET }}]
  on: [done, failed]
retry: {{ max_attempts: 3, max_evictions: 40 }}
"#,
        image = fx.image.display(),
        audio = fx.audio.display(),
        out = fx.outputs.join("interview-042.mp4").display(),
    );
    let spec = parse(&fx, &text).unwrap_or_else(|e| panic!("design example must pass:\n{e}"));
    assert_eq!(spec.name, "interview-042");
    assert_eq!(spec.template.as_deref(), Some("lowmem-24g"));
    assert_eq!(spec.priority, 10);
    assert_eq!(spec.inputs.image, fx.image);
    assert_eq!(spec.render.size, Size::new(688, 368));
    assert_eq!(spec.render.infer_frames, 32);
    assert_eq!(
        spec.render.sample_steps, 4,
        "the job's own value beats the template's 3"
    );
    assert_eq!(spec.engine.kind, EngineKind::Native);
    assert_eq!(spec.output.path, fx.outputs.join("interview-042.mp4"));
    assert_eq!(spec.notify.email, vec!["ops@example.com".to_string()]);
    assert_eq!(
        spec.notify.webhook[0].secret_env.as_deref(),
        Some("HOOK_SECRET")
    );
    assert_eq!(spec.notify.webhook[0].format, WebhookFormat::Json);
    assert_eq!(spec.notify.on, vec![NoticeEvent::Done, NoticeEvent::Failed]);
    assert_eq!(spec.retry.max_attempts, 3);
    assert_eq!(spec.retry.max_evictions, 40);
}

#[test]
fn fills_documented_defaults() {
    let fx = fixture();
    let spec = parse(&fx, &base(&fx)).unwrap_or_else(|e| panic!("minimal job must pass:\n{e}"));
    assert_eq!(spec.name, "job-from-stem");
    assert_eq!(spec.priority, 0);
    assert_eq!(spec.render.size, Size::new(720, 400));
    assert_eq!(spec.render.num_clip, NumClip::Auto);
    assert_eq!(spec.render.infer_frames, 48);
    assert_eq!(spec.render.sample_steps, 4);
    assert_eq!(spec.render.guide_scale, 0.0);
    assert_eq!(spec.render.seed, 42);
    assert!(spec.render.online_decode);
    assert_eq!(spec.render.offload, Offload::Auto);
    assert_eq!(spec.render.fps, 16);
    assert_eq!(spec.render.checkpoint_every, CheckpointEvery::Every(1));
    assert_eq!(spec.engine.kind, EngineKind::Native);
    assert_eq!(spec.engine.model, "builtin:tiny");
    assert_eq!(spec.engine.profile, None);
    assert_eq!(spec.output.codec, Codec::H264);
    assert_eq!(spec.output.crf, 18);
    assert_eq!(spec.notify.on, vec![NoticeEvent::Done, NoticeEvent::Failed]);
    assert!(spec.notify.email.is_empty() && spec.notify.webhook.is_empty());
    assert_eq!(spec.retry.max_attempts, 3);
    assert_eq!(spec.retry.max_evictions, 50);
}

#[test]
fn a_live_avatar_release_defaults_to_25_fps_and_a_stated_rate_stays() {
    let fx = fixture();
    let release = fx.elsewhere.join("release");
    let marker = release.join(release_layout::marker());
    fs::create_dir_all(marker.parent().expect("marker has a folder")).expect("mkdir");
    let engine = format!("engine:\n  kind: native\n  model: {}\n", release.display());
    let job = |render: &str| format!("{}{render}{engine}", base(&fx));
    let fps = |text: String| {
        parse(&fx, &text)
            .unwrap_or_else(|e| panic!("{text}\n{e}"))
            .render
            .fps
    };
    // No config.json yet: not a release, so the tiny model's 16.
    assert_eq!(fps(job("")), 16);
    fs::write(&marker, "{}").expect("config");
    assert_eq!(fps(job("")), crate::spec::LIVE_AVATAR_FPS);
    assert_eq!(fps(job("render:\n  fps: 16\n")), 16);
    assert_eq!(fps(base(&fx)), 16, "builtin:tiny keeps 16");
}

#[test]
fn rejects_unknown_key_with_line_number() {
    let fx = fixture();
    let text = format!("{}render:\n  infer_frame: 32\n", base(&fx));
    let diagnostics = rejected(&fx, &text);
    let d = only(&diagnostics);
    assert_eq!((d.line, d.column), (8, 3));
    assert_eq!(d.message, "unknown key `infer_frame` in `render`");
    let hint = d.hint.as_deref().unwrap_or_default();
    assert!(hint.starts_with("did you mean `infer_frames`?"), "{hint}");
    assert!(
        hint.contains("`sample_steps`"),
        "valid keys are listed: {hint}"
    );
}

#[test]
fn reports_every_unknown_key() {
    let fx = fixture();
    let text = format!("colour: red\n{}render:\n  sise: 64*64\n", base(&fx));
    let diagnostics = rejected(&fx, &text);
    let lines: Vec<usize> = diagnostics.iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![1, 9]);
}

#[test]
fn rejects_duplicate_key() {
    let fx = fixture();
    let text = format!("{}priority: 1\npriority: 2\n", base(&fx));
    let d = rejected(&fx, &text).remove(0);
    assert_eq!((d.line, d.column), (8, 1));
    assert!(
        d.message.contains("`priority` appears twice"),
        "{}",
        d.message
    );
}

#[test]
fn rejects_out_of_range_value_like_rustc() {
    let fx = fixture();
    let text = format!("{}render:\n  infer_frames: 300\n", base(&fx));
    let err = parse(&fx, &text).expect_err("300 frames is out of range");
    let expected = "error: infer_frames must be between 1 and 256, got 300
  --> job.yaml:8:17
   |
 8 |   infer_frames: 300
   |                 ^
   = help: 32 or 48 are the usual choices; use 32 to save GPU memory";
    assert_eq!(err.report(), expected);
}

#[test]
fn reads_checkpoint_every_and_points_at_a_bad_one() {
    let fx = fixture();
    let text = format!("{}render:\n  checkpoint_every: auto\n", base(&fx));
    let spec = parse(&fx, &text).unwrap_or_else(|e| panic!("auto must pass:\n{e}"));
    assert_eq!(spec.render.checkpoint_every, CheckpointEvery::Auto);
    let text = format!("{}render:\n  checkpoint_every: 3\n", base(&fx));
    let spec = parse(&fx, &text).unwrap_or_else(|e| panic!("3 must pass:\n{e}"));
    assert_eq!(spec.render.checkpoint_every, CheckpointEvery::Every(3));
    let text = format!("{}render:\n  checkpoint_every: often\n", base(&fx));
    let d = rejected(&fx, &text).remove(0);
    assert_eq!(d.line, 8, "{d:?}");
    assert!(d.message.contains("checkpoint_every"), "{}", d.message);
    let hint = d.hint.as_deref().unwrap_or_default();
    assert!(hint.contains("auto"), "{hint}");
    let text = format!("{}render:\n  checkpoint_every: 20000\n", base(&fx));
    let d = rejected(&fx, &text).remove(0);
    assert_eq!((d.line, d.column), (8, 21));
    assert!(d.message.contains("between 1 and 10000"), "{}", d.message);
}

#[test]
fn reads_memory_mode_and_precision_and_points_at_bad_ones() {
    let fx = fixture();
    let spec = parse(&fx, &base(&fx)).unwrap_or_else(|e| panic!("defaults must pass:\n{e}"));
    assert_eq!(spec.render.memory_mode, MemoryModeSetting::Auto);
    assert_eq!(spec.render.precision, PrecisionSetting::Auto);
    let text = format!(
        "{}render:\n  memory_mode: streamed\n  precision: fp8\n",
        base(&fx)
    );
    let spec = parse(&fx, &text).unwrap_or_else(|e| panic!("streamed fp8 must pass:\n{e}"));
    assert_eq!(spec.render.memory_mode, MemoryModeSetting::Streamed);
    assert_eq!(spec.render.precision, PrecisionSetting::Fp8);
    let text = format!("{}render:\n  memory_mode: offloaded\n", base(&fx));
    let d = rejected(&fx, &text).remove(0);
    assert_eq!((d.line, d.column), (8, 16), "{d:?}");
    let hint = d.hint.as_deref().unwrap_or_default();
    assert!(
        hint.contains("hybrid") && hint.contains("streamed"),
        "{hint}"
    );
    let text = format!("{}render:\n  precision: fp16\n", base(&fx));
    let d = rejected(&fx, &text).remove(0);
    assert_eq!((d.line, d.column), (8, 14), "{d:?}");
    let hint = d.hint.as_deref().unwrap_or_default();
    assert!(hint.contains("bf16") && hint.contains("fp8"), "{hint}");
}

#[test]
fn rejects_size_not_multiple_of_16() {
    let fx = fixture();
    let text = format!("{}render:\n  size: 700x400\n", base(&fx));
    let d = rejected(&fx, &text).remove(0);
    assert_eq!((d.line, d.column), (8, 9));
    assert!(d.message.contains("multiples of 16"), "{}", d.message);
}

#[test]
fn rejects_each_out_of_range_value_at_its_line() {
    let fx = fixture();
    let out = fx.outputs.join("v.mp4").display().to_string();
    let inputs_only: String = base(&fx)
        .lines()
        .take(4)
        .map(|l| format!("{l}\n"))
        .collect();
    let cases = [
        ("priority: 1001".to_string(), "priority"),
        ("render: {sample_steps: 0}".to_string(), "sample_steps"),
        ("render: {num_clip: 0}".to_string(), "num_clip"),
        ("render: {fps: 24}".to_string(), "fps"),
        (
            "render: {checkpoint_every: 0}".to_string(),
            "checkpoint_every",
        ),
        ("render: {guide_scale: 20.5}".to_string(), "guide_scale"),
        ("render: {guide_scale: .nan}".to_string(), "guide_scale"),
        ("render: {size: 32*32}".to_string(), "size"),
        ("retry: {max_attempts: 0}".to_string(), "max_attempts"),
        ("retry: {max_evictions: 0}".to_string(), "max_evictions"),
        ("notify: {progress_every: 0}".to_string(), "progress_every"),
        ("name: .hidden".to_string(), "name"),
        ("engine: {model: models/wan}".to_string(), "model"),
        ("engine: {profile: a/b}".to_string(), "profile"),
        (format!("output: {{path: {out}, crf: 52}}"), "crf"),
    ];
    for (extra, key) in cases {
        let head = if extra.starts_with("output") {
            inputs_only.clone()
        } else {
            base(&fx)
        };
        let text = format!("{head}{extra}\n");
        let d = rejected(&fx, &text).remove(0);
        assert!(d.message.contains(key), "{extra}: {}", d.message);
        let line = text.lines().position(|l| l == extra).map(|i| i + 1);
        assert_eq!(Some(d.line), line, "{extra}: {d}");
        assert!(d.hint.is_some(), "{extra}: every problem has a hint");
    }
}

#[test]
fn rejects_wrong_type_with_position_and_hint() {
    let fx = fixture();
    let text = format!("{}render:\n  infer_frames: many\n", base(&fx));
    let d = rejected(&fx, &text).remove(0);
    assert_eq!((d.line, d.column), (8, 17));
    assert!(
        d.message.contains("expected a whole number"),
        "{}",
        d.message
    );
    assert!(
        d.hint.as_deref().unwrap_or_default().contains("32 or 48"),
        "{d}"
    );
}

#[test]
fn rejects_bad_size_text_with_position() {
    let fx = fixture();
    let text = format!("{}render: {{size: huge}}\n", base(&fx));
    let d = rejected(&fx, &text).remove(0);
    assert_eq!((d.line, d.column), (7, 16));
    assert!(d.message.contains("`huge` is not a size"), "{}", d.message);
}

#[test]
fn rejects_missing_required_keys() {
    let fx = fixture();
    let text = format!(
        "inputs:\n  image: {}\n  prompt: hi\nrender: {{seed: 1}}\n",
        fx.image.display()
    );
    let diagnostics = rejected(&fx, &text);
    let messages: Vec<&str> = diagnostics.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        messages,
        vec![
            "missing required key `inputs.audio`",
            "missing required key `output.path`"
        ]
    );
    assert_eq!(diagnostics[0].line, 1, "points at the `inputs:` section");
}

#[test]
fn rejects_bad_email_and_webhook_at_their_lines() {
    let fx = fixture();
    let text = format!(
        "{}notify:\n  email:\n    - ops@example.com\n    - not-an-address\n  webhook:\n    - url: ftp://hooks.example.com/x\n      secret_env: my secret\n",
        base(&fx)
    );
    let diagnostics = rejected(&fx, &text);
    let lines: Vec<(usize, usize)> = diagnostics.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(lines, vec![(10, 7), (12, 12), (13, 19)]);
}

#[test]
fn rejects_empty_and_overlong_prompt() {
    let fx = fixture();
    let empty = base(&fx).replace("\"A presenter\"", "\"   \"");
    assert!(rejected(&fx, &empty)[0].message.contains("prompt is empty"));
    let long = base(&fx).replace("A presenter", &"a".repeat(MAX_PROMPT_CHARS + 1));
    assert!(rejected(&fx, &long)[0].message.contains("4001 characters"));
}

#[test]
fn rejects_file_stem_that_is_not_a_name() {
    let fx = fixture();
    let templates = shipped_templates();
    let ctx = ParseContext {
        templates_dir: Some(&templates),
        roots: &fx.roots,
    };
    let err = parse_job("my job.yaml", &base(&fx), "my job", &ctx).expect_err("space in name");
    assert!(err.report().contains("add `name:"), "{err}");
}

#[test]
fn resolved_job_parses_back_equal() {
    let fx = fixture();
    let text = format!(
        "template: lowmem-24g\n{}notify:\n  webhook: [{{url: \"https://h.example.com/x\", format: slack}}]\n  on: [started, progress, done]\n  progress_every: 5\n",
        base(&fx)
    );
    let spec = parse(&fx, &text).unwrap_or_else(|e| panic!("{e}"));
    let back: JobSpec = serde_yaml::from_str(&spec.to_yaml()).expect("resolved yaml parses");
    assert_eq!(back, spec);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_job_never_panics(text in any::<String>()) {
        let roots = Roots::default();
        let ctx = ParseContext { templates_dir: None, roots: &roots };
        let _ = parse_job("fuzz.yaml", &text, "fuzz", &ctx);
    }

    #[test]
    fn parse_job_never_panics_on_mangled_jobs(
        cut in 0usize..400,
        insert in "[ -~\n\t]{0,6}",
    ) {
        let text = "name: a\ntemplate: t\ninputs:\n  image: /x/a.png\n  audio: /x/a.wav\n  prompt: hi\nrender: {size: 64*64, num_clip: 3}\nnotify:\n  webhook:\n    - url: http://127.0.0.1/\noutput: {path: /o/v.mp4}\n";
        let at = text.char_indices().map(|(i, _)| i).nth(cut % text.len()).unwrap_or(0);
        let mangled = format!("{}{insert}{}", &text[..at], &text[at..]);
        let roots = Roots::default();
        let ctx = ParseContext { templates_dir: None, roots: &roots };
        if let Err(err) = parse_job("fuzz.yaml", &mangled, "fuzz", &ctx) {
            prop_assert!(!err.report().is_empty());
        }
    }
}

#[test]
fn command_engine_names_a_declared_engine_and_passes_its_model_as_written() {
    let fx = fixture();
    let text = format!(
        "{}engine:\n  kind: command\n  name: liveavatar-torch\n  model: Quark/LiveAvatar-14B\n",
        base(&fx)
    );
    let spec = parse(&fx, &text).expect("valid command-engine job");
    assert_eq!(spec.engine.kind, EngineKind::Command);
    assert_eq!(spec.engine.name.as_deref(), Some("liveavatar-torch"));
    assert_eq!(spec.engine.model, "Quark/LiveAvatar-14B");
}

#[test]
fn command_engine_without_a_name_is_rejected_at_its_kind() {
    let fx = fixture();
    let text = format!("{}engine:\n  kind: command\n", base(&fx));
    let diagnostics = rejected(&fx, &text);
    let d = only(&diagnostics);
    assert!(d.message.contains("needs `engine.name`"), "{}", d.message);
    assert_eq!(d.line, 8, "{}", d.message);
}

#[test]
fn engine_name_on_the_native_engine_is_rejected() {
    let fx = fixture();
    let text = format!("{}engine:\n  name: mine\n", base(&fx));
    let d = only(&rejected(&fx, &text)).clone();
    assert!(
        d.message.contains("only applies to `engine.kind: command`"),
        "{}",
        d.message
    );
}

#[test]
fn engine_name_that_could_be_a_path_is_rejected() {
    let fx = fixture();
    let text = format!(
        "{}engine:\n  kind: command\n  name: /usr/bin/python3\n",
        base(&fx)
    );
    let d = only(&rejected(&fx, &text)).clone();
    assert!(d.message.contains("engine name"), "{}", d.message);
}
