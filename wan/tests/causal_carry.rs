//! The causal clip loop and its carry: resuming from a carry saved to bytes and loaded
//! back gives bit-identical results (resume depends on it), the carry is what makes
//! clip 2 differ from a fresh start, and broken carry files are refused.

mod common;

use burn::prelude::*;
use common::{bits, noise_on, same_carry_bytes as same_carry, B};
use safetensors::SafeTensors;
use wan::causal_loop::{
    carry_tensor_bytes, run_clip, CarryDims, CausalSettings, ClipInput, DitCarry,
};
use wan::WanS2v;

fn model<T: Backend>() -> WanS2v<T> {
    common::tiny_model_on::<T>()
}

fn clip_input<T: Backend>(m: &WanS2v<T>, clip: u64) -> ClipInput<T> {
    ClipInput {
        noise: noise_on::<T, 5>(100 + clip, [1, 16, 12, 8, 8]),
        cond: noise_on::<T, 5>(200 + clip, [1, 16, 12, 8, 8]) * 0.1,
        context: m.embed_text(noise_on::<T, 3>(7, [1, 7, 32])),
        audio: None,
    }
}

fn start<T: Backend>(m: &WanS2v<T>, s: &CausalSettings) -> DitCarry<T> {
    DitCarry::start(
        m,
        s,
        noise_on::<T, 5>(1, [1, 16, 1, 8, 8]),
        noise_on::<T, 5>(2, [1, 16, 19, 8, 8]),
        m.embed_text(noise_on::<T, 3>(7, [1, 7, 32])),
    )
}

fn resume_from_a_saved_carry_is_bit_identical<B: Backend>() {
    let m = model::<B>();
    let s = CausalSettings::live_avatar(42);
    let c0 = start(&m, &s);
    let (clip1, c1) = run_clip(&m, &s, c0.clone(), clip_input(&m, 1));
    let (clip2, c2) = run_clip(&m, &s, c1.clone(), clip_input(&m, 2));

    let saved = c1.to_bytes().expect("carry saves");
    let loaded = DitCarry::<B>::from_bytes(&saved, &Default::default()).expect("carry loads");
    assert!(
        same_carry(&loaded.to_bytes().expect("saves again"), &saved),
        "load/save round trip changed the carry"
    );
    let (clip2_resumed, c2_resumed) = run_clip(&m, &s, loaded, clip_input(&m, 2));
    assert!(
        bits(clip2.clone()) == bits(clip2_resumed),
        "clip 2 differs after a resume"
    );
    assert!(
        same_carry(
            &c2.to_bytes().expect("saves"),
            &c2_resumed.to_bytes().expect("saves")
        ),
        "the carry after clip 2 differs after a resume"
    );

    // The file holds exactly the tensors the size formula counts (f32 on this backend).
    let st = SafeTensors::deserialize(&saved).expect("carry file");
    let data: usize = st.tensors().iter().map(|(_, v)| v.data().len()).sum();
    let dims = CarryDims {
        tokens_per_frame: 16,
        frames_per_clip: 12,
        sink_tokens: 16 + 16 + 4 + 4,
        layers: 4,
        heads: 4,
        head_dim: 16,
        steps: 4,
        motion_elements: 16 * 19 * 8 * 8,
    };
    assert_eq!(data as u64, carry_tensor_bytes(&dims, 4));

    // The carry matters: clip 2's inputs from a fresh start give other latents.
    let (clip2_fresh, _) = run_clip(&m, &s, c0.clone(), clip_input(&m, 2));
    let diff: f32 = (clip2.clone() - clip2_fresh)
        .abs()
        .max()
        .into_scalar()
        .elem();
    assert!(diff > 1e-3, "clip 2 ignores the carry (max diff {diff})");

    // Counters and motion: 12 frames per clip, motion keeps the latest 19 latents
    // (7 of the initial ones, then clip 1's 12).
    assert_eq!((c1.frames_done, c1.clip), (12, 1));
    assert_eq!((c2.frames_done, c2.clip), (24, 2));
    assert!(bits(c1.motion.clone().narrow(2, 7, 12)) == bits(clip1.clone()));
    assert!(
        bits(c1.motion.clone().narrow(2, 0, 7))
            == bits(noise_on::<B, 5>(2, [1, 16, 19, 8, 8]).narrow(2, 12, 7))
    );
    // After a whole clip every ring slot of every step and layer has been written.
    for ring in &c1.rings {
        for p in ring {
            let per_token = p.k.clone().abs().sum_dim(3).sum_dim(2);
            let min: f32 = per_token.min().into_scalar().elem();
            assert!(min > 0.0, "a ring slot was never written");
        }
    }
    assert!(!clip1.is_nan().any().into_scalar().elem::<bool>());
}

#[test]
fn broken_carry_files_are_refused_with_the_reason() {
    let m = model::<B>();
    let s = CausalSettings {
        blocks_per_clip: 1,
        ..CausalSettings::live_avatar(1)
    };
    let c0 = start(&m, &s);
    let saved = c0.to_bytes().expect("carry saves");
    let dev = Default::default();

    let truncated = DitCarry::<B>::from_bytes(&saved[..saved.len() / 2], &dev);
    assert!(truncated.is_err(), "a truncated file loads");

    let other = DitCarry::<B>::from_bytes(b"not a carry at all", &dev);
    let msg = other.expect_err("garbage loads").to_string();
    assert!(msg.contains("not a carry file"), "{msg}");

    // A renamed tensor: the loader names the one it misses.
    let pos = saved
        .windows(10)
        .position(|w| w == b"ring.0.1.k")
        .expect("the header names ring.0.1.k");
    let mut renamed = saved.clone();
    renamed[pos..pos + 10].copy_from_slice(b"ring.9.1.k");
    let msg = DitCarry::<B>::from_bytes(&renamed, &dev)
        .expect_err("a renamed tensor loads")
        .to_string();
    assert!(msg.contains("ring.0.1.k"), "{msg}");
}

common::backend_tests!(resume_from_a_saved_carry_is_bit_identical,);
