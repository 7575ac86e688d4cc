use std::path::Path;

use burn::backend::NdArray;

use super::*;
use crate::engine::test_support::{conditioning, small_settings, speech};
use crate::engine::weights::{CONFIG_FILE, WEIGHTS_FILE};

type Cpu = NdArray<f32>;

fn engine(settings: &EngineSettings, cache: &Path) -> TinyEngine<Cpu> {
    TinyEngine::<Cpu>::load(settings, conditioning(settings), cache, &Default::default())
        .expect("engine loads")
}

/// Renders and decodes clips `0..clips` from the initial carry.
fn render(engine: &mut TinyEngine<Cpu>, clips: u32) -> (Vec<Frames>, EngineCarry) {
    let mut carry = EngineCarry::initial(&engine.settings);
    let mut frames = Vec::new();
    for clip in 0..clips {
        let (latents, next) = engine
            .render_clip(ClipIndex(clip), &carry)
            .expect("renders");
        frames.push(engine.decode(&latents).expect("decodes"));
        carry = next;
    }
    (frames, carry)
}

#[test]
fn same_inputs_give_bit_identical_frames_in_separate_engines() {
    let cache = tempfile::tempdir().expect("temp dir");
    let settings = small_settings(11);
    let (a, _) = render(&mut engine(&settings, cache.path()), 2);
    let (b, _) = render(&mut engine(&settings, cache.path()), 2);
    assert_eq!(a, b);
}

#[test]
fn different_seed_gives_different_frames() {
    let cache = tempfile::tempdir().expect("temp dir");
    let (a, _) = render(&mut engine(&small_settings(11), cache.path()), 1);
    let (b, _) = render(&mut engine(&small_settings(12), cache.path()), 1);
    assert_ne!(a, b);
}

#[test]
fn decode_yields_infer_frames_frames_of_the_output_size() {
    let cache = tempfile::tempdir().expect("temp dir");
    let settings = small_settings(1);
    let (frames, _) = render(&mut engine(&settings, cache.path()), 1);
    assert_eq!(frames[0].rgb.len(), settings.infer_frames as usize);
    assert_eq!(
        (frames[0].width, frames[0].height),
        (settings.width, settings.height)
    );
    assert!(frames[0]
        .rgb
        .iter()
        .all(|f| f.len() == (settings.width * settings.height * 3) as usize));
}

#[test]
fn resuming_from_a_saved_carry_renders_the_same_next_clip_as_an_uninterrupted_run() {
    let cache = tempfile::tempdir().expect("temp dir");
    let settings = small_settings(21);
    let (uninterrupted, _) = render(&mut engine(&settings, cache.path()), 3);

    let (_, carry) = render(&mut engine(&settings, cache.path()), 2);
    let saved = carry.to_safetensors_bytes().expect("serialises");
    // A new process: new engine, carry read back from bytes.
    let mut resumed = engine(&settings, cache.path());
    let carry = EngineCarry::from_safetensors_bytes(&saved).expect("parses");
    let (latents, _) = resumed.render_clip(ClipIndex(2), &carry).expect("renders");
    assert_eq!(resumed.decode(&latents).expect("decodes"), uninterrupted[2]);
}

#[test]
fn decoding_later_gives_the_same_frames_as_decoding_at_once() {
    let cache = tempfile::tempdir().expect("temp dir");
    let settings = small_settings(4);
    let mut online = engine(&settings, cache.path());
    let (decoded_at_once, _) = render(&mut online, 2);
    let mut offline = engine(&settings, cache.path());
    let first = offline
        .render_clip(ClipIndex(0), &EngineCarry::initial(&settings))
        .expect("renders");
    let second = offline
        .render_clip(ClipIndex(1), &first.1)
        .expect("renders");
    assert_eq!(
        offline.decode(&second.0).expect("decodes"),
        decoded_at_once[1]
    );
    assert_eq!(
        offline.decode(&first.0).expect("decodes"),
        decoded_at_once[0]
    );
}

#[test]
fn checkpoint_directory_loads_like_the_builtin_model() {
    let cache = tempfile::tempdir().expect("temp dir");
    let settings = small_settings(8);
    let (builtin, _) = render(&mut engine(&settings, cache.path()), 1);
    // Copy the generated files elsewhere and name that directory as the model.
    let dir = tempfile::tempdir().expect("temp dir");
    for file in [CONFIG_FILE, WEIGHTS_FILE] {
        std::fs::copy(
            cache.path().join("builtin-tiny").join(file),
            dir.path().join(file),
        )
        .expect("copy");
    }
    let mut from_dir = settings.clone();
    from_dir.model = jobs::spec::ModelRef::Checkpoint {
        dir: dir.path().to_path_buf(),
    };
    let other_cache = tempfile::tempdir().expect("temp dir");
    let (loaded, _) = render(&mut engine(&from_dir, other_cache.path()), 1);
    assert_eq!(loaded, builtin);
}

#[test]
fn bad_model_path_is_a_clear_error() {
    let cache = tempfile::tempdir().expect("temp dir");
    let mut settings = small_settings(1);
    settings.model = jobs::spec::ModelRef::Checkpoint {
        dir: "/no/such/checkpoint".into(),
    };
    let err = TinyEngine::<Cpu>::load(
        &settings,
        conditioning(&settings),
        cache.path(),
        &Default::default(),
    )
    .err()
    .expect("load fails");
    assert!(matches!(err, RenderError::ModelNotFound { .. }), "{err}");
}

#[test]
fn reference_of_the_wrong_size_is_rejected() {
    let cache = tempfile::tempdir().expect("temp dir");
    let settings = small_settings(1);
    let mut cond = conditioning(&settings);
    cond.reference_rgb.truncate(100);
    let err = TinyEngine::<Cpu>::load(&settings, cond, cache.path(), &Default::default())
        .err()
        .expect("fails");
    assert!(matches!(err, RenderError::BadConditioning { .. }), "{err}");
}

#[test]
fn rendering_a_clip_the_carry_does_not_lead_to_is_refused() {
    let cache = tempfile::tempdir().expect("temp dir");
    let settings = small_settings(1);
    let mut engine = engine(&settings, cache.path());
    let err = engine
        .render_clip(ClipIndex(3), &EngineCarry::initial(&settings))
        .expect_err("refused");
    assert!(matches!(err, RenderError::CarryMismatch { .. }), "{err}");
}

#[test]
fn carry_from_a_job_of_another_size_is_refused() {
    let cache = tempfile::tempdir().expect("temp dir");
    let settings = small_settings(1);
    let mut other = settings.clone();
    other.width = 128;
    let err = engine(&settings, cache.path())
        .render_clip(ClipIndex(0), &EngineCarry::initial(&other))
        .expect_err("refused");
    assert!(matches!(err, RenderError::CarryMismatch { .. }), "{err}");
}

#[test]
fn guidance_changes_the_output() {
    let cache = tempfile::tempdir().expect("temp dir");
    let settings = small_settings(3);
    let mut guided = settings.clone();
    guided.guide_scale = 3.0;
    let (plain, _) = render(&mut engine(&settings, cache.path()), 1);
    let (with_guidance, _) = render(&mut engine(&guided, cache.path()), 1);
    assert_ne!(plain, with_guidance);
}

/// Mean absolute difference from the reference, over the mouth region of a frame.
fn mouth_motion(frame: &[u8], reference: &[u8], width: usize, height: usize) -> f64 {
    let (x0, x1) = (width * 3 / 8, width * 5 / 8);
    let (y0, y1) = (height * 55 / 100, height * 80 / 100);
    let mut total = 0u64;
    for y in y0..y1 {
        for x in x0..x1 {
            for c in 0..3 {
                let i = (y * width + x) * 3 + c;
                total += u64::from(frame[i].abs_diff(reference[i]));
            }
        }
    }
    total as f64 / ((y1 - y0) * (x1 - x0) * 3) as f64
}

#[test]
fn mouth_moves_more_while_speaking_than_in_silence() {
    let cache = tempfile::tempdir().expect("temp dir");
    let mut settings = small_settings(5);
    (settings.width, settings.height, settings.infer_frames) = (128, 128, 16);
    // 0.64 s of speech (clip 0), then silence (clip 1).
    let mut cond = conditioning(&settings);
    cond.audio_16k_mono = speech(0.64);
    cond.audio_16k_mono.resize(16_000 * 2, 0.0);
    let reference = cond.reference_rgb.clone();
    let mut engine =
        TinyEngine::<Cpu>::load(&settings, cond, cache.path(), &Default::default()).expect("loads");
    let (clips, _) = render(&mut engine, 2);
    let motion = |clip: &Frames| {
        clip.rgb
            .iter()
            .map(|f| mouth_motion(f, &reference, 128, 128))
            .fold(0.0, f64::max)
    };
    let (speaking, silent) = (motion(&clips[0]), motion(&clips[1]));
    assert!(
        speaking > 2.0 * silent + 1.0,
        "speaking {speaking:.2} vs silent {silent:.2}"
    );
}
