//! Audio feature resampling and bucketing against wan22's `s2v/audio_encoder.py`.

mod common;

use common::Fixture;
use wan::audio_features::{bucket_per_video_frame, interpolate_to_30fps, AudioStates};

fn close(a: &[f32], e: &[f32], what: &str) {
    assert_eq!(a.len(), e.len(), "{what}: lengths differ");
    for (i, (x, y)) in a.iter().zip(e).enumerate() {
        assert!(
            (x - y).abs() <= 1e-6 + 1e-5 * y.abs(),
            "{what}: [{i}] {x} vs {y}"
        );
    }
}

#[test]
fn interpolation_to_30fps_and_video_frame_buckets_match() {
    let fx = Fixture::open("audio_features_io.safetensors");
    let (shape, values) = fx.raw("states");
    let states = AudioStates {
        layers: shape[0],
        frames: shape[1],
        dim: shape[2],
        values,
    };
    let at30 = interpolate_to_30fps(&states);
    let (shape30, expected30) = fx.raw("at30");
    assert_eq!(at30.frames, shape30[1]);
    close(&at30.values, &expected30, "50 -> 30 fps");

    let (bucket, batches) = bucket_per_video_frame(&at30, 25.0, 48);
    let (shape_b, expected_b) = fx.raw("bucket");
    assert_eq!(batches as f32, fx.raw("batches").1[0]);
    assert_eq!(bucket.len(), shape_b.iter().product::<usize>());
    assert!(
        expected_b[expected_b.len() - 8..].iter().all(|v| *v == 0.0),
        "the fixture covers frames past the audio"
    );
    close(&bucket, &expected_b, "bucketed per video frame");
}
