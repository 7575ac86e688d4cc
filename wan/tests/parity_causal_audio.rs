//! The causal clip loop with audio injection against `tools/wan_fixtures/causal_ref.py`:
//! each block encodes its own 12 video frames of audio features (73 copies of the
//! first prefixed, the last 3 latent frames kept) and wan22's own
//! `after_transformer_block` runs the injectors after blocks 0, 2 and 3. The non-audio
//! inputs (reference, motion, text, noise, pose) are those of `causal_tiny_io`.

mod common;

use burn::prelude::*;
use common::{assert_close, fixture_path, rel_l2, Fixture};
use wan::causal::sink_rope_offset;
use wan::causal_loop::{
    block_audio, forward_block, run_clip, BlockAudio, CausalSettings, ClipInput, DitCarry,
};
use wan::loader::load_s2v_file;
use wan::{S2vConfig, WanS2v};

const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-4;

struct Setup<B: Backend> {
    inputs: Fixture<B>,
    audio: Fixture<B>,
    m: WanS2v<B>,
    s: CausalSettings,
    context: Tensor<B, 3>,
}

fn setup<B: Backend>() -> Setup<B> {
    let inputs = Fixture::<B>::read("causal_tiny_io.safetensors");
    let audio = Fixture::<B>::read("causal_audio_tiny_io.safetensors");
    let m = WanS2v::<B>::new(&S2vConfig::tiny(), &Default::default());
    let m = load_s2v_file(m, &fixture_path("s2v_tiny_weights.safetensors"))
        .expect("tiny reference weights load")
        .0;
    let (_, seed) = inputs.raw("in.job_seed");
    let s = CausalSettings::live_avatar(seed[0] as u64);
    let context = m.embed_text(inputs.tensor::<2>("in.context").unsqueeze::<3>());
    Setup {
        inputs,
        audio,
        m,
        s,
        context,
    }
}

impl<B: Backend> Setup<B> {
    fn start(&self) -> DitCarry<B> {
        DitCarry::start(
            &self.m,
            &self.s,
            self.inputs.tensor::<4>("in.ref").unsqueeze::<5>(),
            self.inputs.tensor::<4>("in.motion").unsqueeze::<5>(),
            self.context.clone(),
        )
    }

    fn input(&self, clip: usize) -> ClipInput<B> {
        ClipInput {
            noise: self
                .inputs
                .tensor::<4>(&format!("in.noise.{clip}"))
                .unsqueeze(),
            cond: self
                .inputs
                .tensor::<4>(&format!("in.cond.{clip}"))
                .unsqueeze(),
            context: self.context.clone(),
            audio: None,
        }
    }

    /// Clip `clip`'s inputs with its audio features.
    fn input_with_audio(&self, clip: usize) -> ClipInput<B> {
        ClipInput {
            audio: Some(self.features(clip)),
            ..self.input(clip)
        }
    }

    fn features(&self, clip: usize) -> Tensor<B, 4> {
        self.audio.tensor(&format!("in.audio.{clip}"))
    }
}

fn block_forwards_with_audio_match<B: Backend>() {
    let st = setup::<B>();
    let mut carry = st.start();
    // Clip 0, blocks 0 and 1 at step 0 (block 1 reads block 0's keys from ring 0, and
    // encodes video frames 12..24 of the clip's audio, not 0..12).
    let input = st.input(0);
    let features = st.features(0);
    for b in 0..2usize {
        let t = vec![f64::from(st.s.schedule.timesteps[0]); 3];
        let audio = block_audio(&st.m, &st.s, &features, b);
        let call = |carry: &mut DitCarry<B>, audio: &BlockAudio<B>| {
            forward_block(
                &st.m,
                carry,
                0,
                input.noise.clone().narrow(2, 3 * b, 3),
                input.cond.clone().narrow(2, 3 * b, 3),
                &t,
                st.context.clone(),
                3 * b,
                sink_rope_offset(st.s.seed, 0, b as u64),
                true,
                Some(audio),
            )
        };
        let e: Tensor<B, 4> = st.audio.tensor(&format!("clip0.block{b}.step0.velocity"));
        if b == 1 {
            // Block 0's window in block 1's place is visibly wrong: the test sees the
            // windowing, not only the injectors.
            let other = block_audio(&st.m, &st.s, &features, 0);
            let wrong = call(&mut carry.clone(), &other);
            let r = rel_l2(wrong, e.clone().unsqueeze());
            assert!(r > 1e-3, "block 1 with block 0's audio: relative L2 {r:e}");
        }
        let v = call(&mut carry, &audio);
        assert_close(
            v,
            e.unsqueeze(),
            ATOL,
            RTOL,
            &format!("clip 0 block {b} step 0 with audio"),
        );
    }
}

fn two_clips_with_audio_match<B: Backend>() {
    let st = setup::<B>();
    let c0 = st.start();
    let (clip0, c1) = run_clip(&st.m, &st.s, c0.clone(), st.input_with_audio(0));
    let (clip1, _) = run_clip(&st.m, &st.s, c1, st.input_with_audio(1));
    for (c, got) in [(0, clip0.clone()), (1, clip1)] {
        let e: Tensor<B, 4> = st.audio.tensor(&format!("clip{c}.latents"));
        let r = rel_l2(got, e.unsqueeze());
        eprintln!("clip {c} latents with audio: relative L2 {r:e}");
        assert!(r <= 1e-4, "clip {c} with audio: relative L2 {r:e}");
    }
    // The audio moves the clip far more than the tolerance: a loop that skipped the
    // injectors would fail above. Without audio the loop is still the old one.
    let (silent, _) = run_clip(&st.m, &st.s, c0, st.input(0));
    let moved = rel_l2(clip0, silent.clone());
    eprintln!("clip 0 with vs without audio: relative L2 {moved:e}");
    assert!(moved > 1e-2, "audio barely changed the clip: {moved:e}");
    let e: Tensor<B, 4> = st.inputs.tensor("clip0.latents");
    assert!(rel_l2(silent, e.unsqueeze()) <= 1e-4);
}

common::backend_tests!(block_forwards_with_audio_match, two_clips_with_audio_match,);
