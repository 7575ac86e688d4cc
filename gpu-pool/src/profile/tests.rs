use std::path::{Path, PathBuf};

use super::*;
use crate::discover::GIB;

fn shipped_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/profiles")
}

fn shipped() -> ProfileSet {
    load_profiles(&shipped_dir()).expect("the shipped profiles load")
}

fn req(width: u32, height: u32, frames: u32, offload: OffloadChoice) -> EstimateRequest {
    EstimateRequest {
        width,
        height,
        frames,
        offload,
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB as f64
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write profile");
    path
}

const MINIMAL: &str = "resident_gib: 1\nactivation: { gib_per_megapixel_frame: 1 }\nsafety_margin_gib: 0\nspeed: { reference_size: 100*100, secs_per_frame: 1 }\n";

#[test]
fn shipped_profiles_are_named_after_their_files() {
    let names: Vec<String> = shipped().names().map(String::from).collect();
    assert_eq!(
        names,
        [
            "builtin-tiny",
            "example-engine",
            "liveavatar-14b",
            "liveavatar-14b-native"
        ]
    );
}

#[test]
fn liveavatar_at_704x384x48_without_offload_needs_an_80gb_card() {
    let set = shipped();
    let estimate = set
        .estimate("liveavatar-14b", &req(704, 384, 48, OffloadChoice::Off))
        .expect("known profile");
    // DESIGN.md §1: ~78 GB reported on one 80 GB card; the profile adds a 1 GiB margin.
    assert!(
        (gib(estimate.vram_bytes) - 79.0).abs() < 0.05,
        "{estimate:?}"
    );
    assert!(estimate.vram_bytes <= 80 * GIB && estimate.vram_bytes > 24 * GIB);
    assert!(!estimate.offload_used);
}

#[test]
fn liveavatar_with_offload_fits_24gb_and_is_four_times_slower() {
    let set = shipped();
    let plain = set
        .estimate("liveavatar-14b", &req(704, 384, 48, OffloadChoice::Off))
        .expect("known");
    let offload = set
        .estimate("liveavatar-14b", &req(704, 384, 48, OffloadChoice::On))
        .expect("known");
    assert!(offload.offload_used);
    assert!((gib(offload.vram_bytes) - 19.0).abs() < 0.05, "{offload:?}");
    assert!((gib(offload.host_bytes) - 42.0).abs() < 0.01);
    assert!((plain.secs_per_frame - 0.8).abs() < 1e-9);
    assert!((offload.secs_per_frame - 3.2).abs() < 1e-9);
}

#[test]
fn memory_grows_with_pixels_times_frames_by_the_fitted_slope() {
    let set = shipped();
    let at = |frames| {
        set.estimate("liveavatar-14b", &req(688, 368, frames, OffloadChoice::Off))
            .expect("known")
            .vram_bytes
    };
    let slope = (gib(at(48)) - gib(at(32))) / (688.0 * 368.0 * 16.0 / 1e6);
    assert!((slope - 1.0189).abs() < 0.001, "slope {slope}");
}

#[test]
fn auto_estimates_the_plain_mode() {
    let set = shipped();
    let auto = set
        .estimate("liveavatar-14b", &req(704, 384, 48, OffloadChoice::Auto))
        .expect("known");
    assert!(!auto.offload_used);
}

#[test]
fn offload_on_without_an_offload_mode_gives_the_plain_mode() {
    let set = shipped();
    let tiny = set
        .estimate("builtin-tiny", &req(256, 256, 8, OffloadChoice::On))
        .expect("known");
    assert!(!tiny.offload_used);
    assert!(tiny.vram_bytes < GIB);
}

#[test]
fn syntax_error_names_file_line_and_column() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        dir.path(),
        "bad.yaml",
        "resident_gib: 1\nactivation: [oops\n",
    );
    let err = load_profiles(dir.path()).expect_err("broken YAML");
    let PoolError::ProfileParse { path, line, .. } = &err else {
        panic!("expected a parse error, got {err}");
    };
    assert!(path.ends_with("bad.yaml"));
    assert!(*line >= 2, "line {line}");
    assert!(err.to_string().contains("bad.yaml:"), "{err}");
}

#[test]
fn unknown_key_is_reported_with_its_line_and_a_caret() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        dir.path(),
        "typo.yaml",
        &format!("{MINIMAL}safety_margn_gib: 1\n"),
    );
    let err = load_profiles(dir.path()).expect_err("unknown key");
    let text = err.to_string();
    assert!(text.contains("typo.yaml:5:1"), "{text}");
    assert!(text.contains("unknown field `safety_margn_gib`"), "{text}");
    assert!(text.contains("  | safety_margn_gib: 1\n  | ^"), "{text}");
}

#[test]
fn slowdown_below_one_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!("{MINIMAL}offload: {{ resident_gib: 1, host_gib: 1, slowdown: 0.5 }}\n");
    write(dir.path(), "fast.yaml", &text);
    let err = load_profiles(dir.path()).expect_err("offload cannot be faster");
    assert!(matches!(err, PoolError::ProfileInvalid { .. }), "{err}");
    assert!(err.to_string().contains("offload.slowdown"), "{err}");
}

#[test]
fn bad_size_string_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = MINIMAL.replace("100*100", "wide");
    write(dir.path(), "size.yaml", &text);
    let err = load_profiles(dir.path()).expect_err("not a size");
    assert!(err.to_string().contains("write it as W*H"), "{err}");
}

#[test]
fn missing_directory_names_the_path() {
    let err = load_profiles(Path::new("/nonexistent/profiles")).expect_err("no dir");
    assert!(err.to_string().contains("/nonexistent/profiles"), "{err}");
}

#[test]
fn files_that_are_not_yaml_are_ignored() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "a.yaml", MINIMAL);
    write(dir.path(), "notes.txt", "not a profile");
    assert_eq!(load_profiles(dir.path()).expect("loads").len(), 1);
}

#[test]
fn unknown_profile_lists_the_known_ones() {
    let err = shipped().get("wan-5b").expect_err("not shipped");
    assert!(
        err.to_string()
            .contains("builtin-tiny, example-engine, liveavatar-14b"),
        "{err}"
    );
}

#[test]
fn frame_size_accepts_star_and_x() {
    assert_eq!(
        "704*384".parse(),
        Ok(FrameSize {
            width: 704,
            height: 384
        })
    );
    assert_eq!(
        "704x384".parse(),
        Ok(FrameSize {
            width: 704,
            height: 384
        })
    );
    assert!("704*0".parse::<FrameSize>().is_err());
}

#[test]
fn observed_peak_above_the_estimate_raises_it_past_the_peak() {
    let mut set = shipped();
    let job = req(704, 384, 48, OffloadChoice::On);
    let before = set
        .estimate("liveavatar-14b", &job)
        .expect("known")
        .vram_bytes;
    let observed = before + 2 * GIB;
    assert!(set
        .record_observed_peak("liveavatar-14b", &job, observed)
        .expect("known"));
    let after = set
        .estimate("liveavatar-14b", &job)
        .expect("known")
        .vram_bytes;
    // The margin (1 GiB) is whole again above the observation.
    assert!(
        after >= observed + GIB,
        "after {after}, observed {observed}"
    );
    // Only the offload mode was observed; the plain mode keeps its figures.
    let plain = req(704, 384, 48, OffloadChoice::Off);
    let plain_estimate = set.estimate("liveavatar-14b", &plain).expect("known");
    assert!((gib(plain_estimate.vram_bytes) - 79.0).abs() < 0.05);
}

#[test]
fn observed_peak_below_the_model_changes_nothing() {
    let mut set = shipped();
    let job = req(704, 384, 48, OffloadChoice::Off);
    let before = set.estimate("liveavatar-14b", &job).expect("known");
    assert!(!set
        .record_observed_peak("liveavatar-14b", &job, 60 * GIB)
        .expect("known"));
    assert_eq!(set.estimate("liveavatar-14b", &job).expect("known"), before);
}

#[test]
fn observations_survive_save_and_load() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("observed.json");
    let job = req(688, 368, 32, OffloadChoice::On);
    let mut set = shipped();
    set.record_observed_peak("liveavatar-14b", &job, 23 * GIB)
        .expect("known");
    set.save_observations(&path).expect("save");
    let raised = set.estimate("liveavatar-14b", &job).expect("known");

    let mut fresh = shipped();
    let unraised = fresh.estimate("liveavatar-14b", &job).expect("known");
    fresh.load_observations(&path).expect("load");
    assert_eq!(
        fresh.estimate("liveavatar-14b", &job).expect("known"),
        raised
    );
    assert!(raised.vram_bytes > unraised.vram_bytes);
}

#[test]
fn missing_observation_file_means_no_corrections() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut set = shipped();
    set.load_observations(&dir.path().join("none.json"))
        .expect("first start");
    let job = req(704, 384, 48, OffloadChoice::Off);
    assert!(
        (gib(set
            .estimate("liveavatar-14b", &job)
            .expect("known")
            .vram_bytes)
            - 79.0)
            .abs()
            < 0.05
    );
}

#[test]
fn corrupt_observation_file_names_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(dir.path(), "observed.json", "[1, 2");
    let err = shipped().load_observations(&path).expect_err("corrupt");
    assert!(err.to_string().contains("observed.json"), "{err}");
}

#[test]
fn refusal_suggests_offload_first_when_it_fits() {
    let set = shipped();
    let profile = set.get("liveavatar-14b").expect("known");
    let text = estimate::suggest_fit(profile, &req(704, 384, 48, OffloadChoice::Off), 24 * GIB);
    assert!(text.contains("`offload: true`"), "{text}");
    assert!(text.contains("4× slower"), "{text}");
}

#[test]
fn refusal_suggests_fewer_frames_when_offload_is_not_enough() {
    let set = shipped();
    let profile = set.get("liveavatar-14b").expect("known");
    // 720*400×48 with offload: 4.78 + 1.0189 × 13.824 + 1 ≈ 19.9 GiB > 16 GiB;
    // at 32 frames: 4.78 + 1.0189 × 9.216 + 1 ≈ 15.2 GiB.
    let text = estimate::suggest_fit(profile, &req(720, 400, 48, OffloadChoice::Auto), 16 * GIB);
    assert!(
        text.starts_with("set `infer_frames: 32` with `offload: true`"),
        "{text}"
    );
}

#[test]
fn refusal_suggests_a_smaller_size_when_fewer_frames_are_not_enough() {
    let set = shipped();
    let profile = set.get("liveavatar-14b").expect("known");
    // 12 GiB: 32 frames at 704*384 need 14.4 GiB; 384*256×48 needs 10.6 GiB.
    let text = estimate::suggest_fit(profile, &req(704, 384, 48, OffloadChoice::Auto), 12 * GIB);
    assert!(text.starts_with("set `size: 384*256`"), "{text}");
}

#[test]
fn refusal_falls_back_to_the_template() {
    let set = shipped();
    let profile = set.get("liveavatar-14b").expect("known");
    let text = estimate::suggest_fit(profile, &req(704, 384, 48, OffloadChoice::Auto), 4 * GIB);
    assert!(text.contains("`template: lowmem-24g`"), "{text}");
}
