use super::*;
use proptest::prelude::*;

fn example() -> JobSpec {
    JobSpec {
        name: "interview-042".to_string(),
        template: Some("lowmem-24g".to_string()),
        priority: 10,
        inputs: Inputs {
            image: PathBuf::from("/data/portraits/anna.png"),
            audio: PathBuf::from("/data/speech/anna.wav"),
            prompt: "A presenter in a modern studio".to_string(),
        },
        render: RenderSettings::default(),
        engine: EngineSpec::default(),
        output: OutputSpec {
            path: PathBuf::from("/data/out/interview-042.mp4"),
            codec: Codec::H264,
            crf: 18,
            overwrite: false,
        },
        notify: NotifySpec::default(),
        retry: RetryPolicy::default(),
    }
}

#[test]
fn fingerprint_is_sha256_hex() {
    let print = example().render_fingerprint();
    assert_eq!(print.len(), 64);
    assert!(print
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
}

#[test]
fn fingerprint_ignores_what_does_not_change_pixels() {
    let base = example();
    let mut other = base.clone();
    other.name = "renamed".to_string();
    other.template = None;
    other.priority = -5;
    other.render.online_decode = false;
    other.render.checkpoint_every = CheckpointEvery::Auto;
    other.engine.profile = Some("fast".to_string());
    other.output.path = PathBuf::from("/elsewhere/v.mp4");
    other.output.codec = Codec::Hevc;
    other.output.crf = 30;
    other.notify.email = vec!["ops@example.com".to_string()];
    other.retry.max_attempts = 9;
    assert_eq!(base.render_fingerprint(), other.render_fingerprint());
}

/// One edit of a spec, for the table below.
type Change = fn(&mut JobSpec);

#[test]
fn fingerprint_changes_with_every_pixel_setting() {
    let base = example();
    let changes: Vec<(&str, Change)> = vec![
        ("image", |s| s.inputs.image = PathBuf::from("/data/b.png")),
        ("audio", |s| s.inputs.audio = PathBuf::from("/data/b.wav")),
        ("prompt", |s| s.inputs.prompt.push('!')),
        ("size", |s| s.render.size = Size::new(384, 256)),
        ("num_clip", |s| s.render.num_clip = NumClip::Count(3)),
        ("infer_frames", |s| s.render.infer_frames = 32),
        ("sample_steps", |s| s.render.sample_steps = 3),
        ("guide_scale", |s| s.render.guide_scale = 1.5),
        ("seed", |s| s.render.seed = 43),
        ("offload", |s| s.render.offload = Offload::On),
        ("fps", |s| s.render.fps = 25),
        ("kind", |s| s.engine.kind = EngineKind::Command),
        ("model", |s| s.engine.model = "/models/wan".to_string()),
    ];
    for (what, change) in changes {
        let mut other = base.clone();
        change(&mut other);
        assert_ne!(
            base.render_fingerprint(),
            other.render_fingerprint(),
            "{what}"
        );
    }
}

#[test]
fn fingerprint_fields_do_not_run_together() {
    // Moving text from the image path to the audio path must change the digest.
    let mut a = example();
    a.inputs.image = PathBuf::from("/a/bc");
    a.inputs.audio = PathBuf::from("/d");
    let mut b = example();
    b.inputs.image = PathBuf::from("/a/b");
    b.inputs.audio = PathBuf::from("c/d");
    assert_ne!(a.render_fingerprint(), b.render_fingerprint());
}

#[test]
fn resolved_yaml_writes_sizes_and_enums_as_in_job_files() {
    let yaml = example().to_yaml();
    assert!(yaml.contains("size: 720*400"), "{yaml}");
    assert!(yaml.contains("num_clip: auto"), "{yaml}");
    assert!(yaml.contains("offload: auto"), "{yaml}");
    assert!(yaml.contains("codec: h264"), "{yaml}");
    assert!(yaml.contains("- done"), "{yaml}");
}

fn path() -> impl Strategy<Value = PathBuf> {
    "/[a-zA-Z0-9 _.:#'\"é-]{0,30}(/[a-zA-Z0-9 _.-]{1,12}){0,3}".prop_map(PathBuf::from)
}

fn render() -> impl Strategy<Value = RenderSettings> {
    (
        (any::<u32>(), any::<u32>()),
        prop_oneof![Just(NumClip::Auto), any::<u32>().prop_map(NumClip::Count)],
        any::<u32>(),
        any::<u32>(),
        prop::num::f32::NORMAL | prop::num::f32::SUBNORMAL | prop::num::f32::ZERO,
        any::<u64>(),
        any::<bool>(),
        prop_oneof![Just(Offload::Auto), Just(Offload::On), Just(Offload::Off)],
        any::<u32>(),
        prop_oneof![
            Just(CheckpointEvery::Auto),
            any::<u32>().prop_map(CheckpointEvery::Every)
        ],
    )
        .prop_map(
            |(
                (w, h),
                num_clip,
                infer_frames,
                sample_steps,
                guide_scale,
                seed,
                online_decode,
                offload,
                fps,
                checkpoint_every,
            )| {
                RenderSettings {
                    size: Size::new(w, h),
                    num_clip,
                    infer_frames,
                    sample_steps,
                    guide_scale,
                    seed,
                    online_decode,
                    offload,
                    fps,
                    checkpoint_every,
                    memory_mode: Default::default(),
                    precision: Default::default(),
                }
            },
        )
}

fn notify() -> impl Strategy<Value = NotifySpec> {
    let event = prop_oneof![
        Just(NoticeEvent::Started),
        Just(NoticeEvent::Progress),
        Just(NoticeEvent::Done),
        Just(NoticeEvent::Failed),
        Just(NoticeEvent::Cancelled),
    ];
    let hook = (
        any::<String>(),
        proptest::option::of("[A-Z_]{1,10}"),
        prop_oneof![Just(WebhookFormat::Json), Just(WebhookFormat::Slack)],
    )
        .prop_map(|(url, secret_env, format)| WebhookSpec {
            url,
            secret_env,
            format,
        });
    (
        prop::collection::vec(any::<String>(), 0..3),
        prop::collection::vec(hook, 0..3),
        prop::collection::vec(event, 0..5),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(|(email, webhook, on, progress_every)| NotifySpec {
            email,
            webhook,
            on,
            progress_every,
        })
}

fn job_spec() -> impl Strategy<Value = JobSpec> {
    (
        (
            "[A-Za-z0-9._-]{1,30}",
            proptest::option::of("[a-z0-9-]{1,12}"),
            any::<i32>(),
        ),
        (path(), path(), any::<String>()),
        render(),
        (
            prop_oneof![Just(EngineKind::Native), Just(EngineKind::Command)],
            any::<String>(),
            proptest::option::of(any::<String>()),
        ),
        (
            path(),
            prop_oneof![Just(Codec::H264), Just(Codec::Hevc)],
            any::<u8>(),
            any::<bool>(),
        ),
        notify(),
        any::<u32>(),
    )
        .prop_map(
            |(
                (name, template, priority),
                (image, audio, prompt),
                render,
                (kind, model, profile),
                (out, codec, crf, overwrite),
                notify,
                max_attempts,
            )| {
                JobSpec {
                    name,
                    template,
                    priority,
                    inputs: Inputs {
                        image,
                        audio,
                        prompt,
                    },
                    render,
                    engine: EngineSpec {
                        model_ref: ModelRef::resolve(kind, None, &model),
                        kind,
                        name: None,
                        model,
                        profile,
                    },
                    output: OutputSpec {
                        path: out,
                        codec,
                        crf,
                        overwrite,
                    },
                    notify,
                    retry: RetryPolicy {
                        max_attempts,
                        max_evictions: max_attempts.wrapping_add(17),
                    },
                }
            },
        )
}

proptest! {
    #[test]
    fn job_spec_yaml_round_trip(spec in job_spec()) {
        let yaml = spec.to_yaml();
        let back: JobSpec = serde_yaml::from_str(&yaml)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        prop_assert_eq!(back, spec);
    }
}

#[test]
fn a_job_yaml_from_before_model_ref_gets_its_model_resolved_when_read() {
    let mut spec = example();
    spec.engine = EngineSpec::new(
        EngineKind::Command,
        Some("numpy-example".to_string()),
        "/models/x".to_string(),
        None,
    );
    let yaml = spec.to_yaml();
    assert!(yaml.contains("model_ref:"), "{yaml}");
    let old: String = yaml
        .lines()
        .scan(false, |inside, line| {
            // Drop the `model_ref:` mapping, as an older reelspool wrote the file.
            if line.trim_start().starts_with("model_ref:") {
                *inside = true;
                return Some(None);
            }
            if *inside && line.starts_with("    ") {
                return Some(None);
            }
            *inside = false;
            Some(Some(format!("{line}\n")))
        })
        .flatten()
        .collect();
    assert!(!old.contains("model_ref"), "{old}");
    let back: JobSpec = serde_yaml::from_str(&old).expect("an older job.yaml still loads");
    assert_eq!(back, spec);
    assert_eq!(
        back.engine.model_ref,
        ModelRef::Command {
            engine: "numpy-example".to_string(),
            model: "/models/x".to_string()
        }
    );
}
