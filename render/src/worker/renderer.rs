//! The seam between the clip loop and the engines.
//!
//! [`Renderer`] is what the clip loop (`clip_loop.rs`) asks of a job's engine, whatever kind
//! it is: start fresh or from a stored carry, render a clip, hand over the carry's bytes for a
//! checkpoint. Two kinds implement it: the native engines, a Burn model in this process
//! (`native.rs`), and command engines, a program the operator declared, driven over its
//! protocol (`command.rs`). Everything else about a clip (the cadence of checkpoints, the
//! background writer, the events, segments written atomically and compared when rendered
//! again, stops, the test kill points) is the loop's and written once.
//!
//! The carry stays inside the renderer: the loop never holds one, it only asks for the bytes
//! of the current one ([`Renderer::carry_to_bytes`], [`Renderer::write_carry`]) on
//! checkpoint clips, and hands stored bytes back on resume ([`Renderer::resume`]).

use super::report::Failure;
use crate::engine::ClipLatents;

/// What rendering one clip gave.
pub(super) enum ClipOutput {
    /// Decoded frames, RGB24, in display order.
    Frames(Vec<Vec<u8>>),
    /// Latents still to decode with [`Renderer::decode`]: at once with online decode, else
    /// at the end of the job.
    Latents(ClipLatents),
    /// The job was stopped inside the clip and the engine gave up on it (a command engine
    /// past its stop grace): nothing of the clip exists, and the job stops before it.
    Abandoned,
}

/// One job's engine, as the clip loop drives it.
pub(super) trait Renderer {
    /// Whether a model was loaded for this job (`false`: a warm worker kept it); `None` when
    /// the engine does not say (a command engine's program loads its own).
    fn model_loaded(&self) -> Option<bool>;

    /// Output frames per clip.
    fn frames_per_clip(&self) -> u32;

    /// Frames clip 0 has fewer than the others (Live Avatar's causal VAE: 3).
    fn first_clip_shortfall(&self) -> u32 {
        0
    }

    /// Video frames the speech lasts by the engine's own count, when it has one; the video
    /// is cut there.
    fn audio_video_frames(&self) -> Option<u64> {
        None
    }

    /// Whether every clip comes out decoded whatever `render.online_decode` says (the engine
    /// decodes as it renders, or hands over frames).
    fn decodes_online(&self) -> bool;

    /// Bytes of one checkpointed carry when known before the job starts (the native
    /// engines'); `None` for a carry that is whatever the engine leaves.
    fn carry_bytes(&self) -> Option<u64>;

    /// Starts the job at clip 0.
    fn start_fresh(&mut self) -> Result<(), Failure>;

    /// Continues the job at `next_clip` from the bytes of a stored carry. `Ok(Some(reason))`
    /// when the engine refuses the carry although the checkpoint's own records agree with
    /// the job (other weights at the same path, another carry format): the job then starts
    /// over, since a retry would refuse it again.
    fn resume(&mut self, carry: &[u8], next_clip: u32) -> Result<Option<String>, Failure>;

    /// Called once before the first clip this attempt renders: a command engine starts its
    /// program here, so an attempt with nothing left to render starts none.
    fn begin(&mut self) -> Result<(), Failure> {
        Ok(())
    }

    /// Renders clip `index` from the current carry; the carry then continues into
    /// `index + 1`.
    fn render_clip(&mut self, index: u32) -> Result<ClipOutput, Failure>;

    /// Decodes the latents of a [`ClipOutput::Latents`] into frames.
    fn decode(&mut self, latents: &ClipLatents) -> Result<Vec<Vec<u8>>, Failure>;

    /// The current carry as the bytes a checkpoint stores (and [`Renderer::resume`] reads).
    fn carry_to_bytes(&mut self) -> Result<Vec<u8>, Failure>;

    /// The bytes of [`Renderer::carry_to_bytes`] written into `out` without holding them all
    /// in host memory (for carries of tens of GB); returns how many were written.
    fn write_carry(&mut self, out: &mut std::fs::File) -> std::io::Result<u64> {
        use std::io::Write;
        let bytes = self
            .carry_to_bytes()
            .map_err(|failure| std::io::Error::other(failure.message))?;
        out.write_all(&bytes)?;
        Ok(bytes.len() as u64)
    }

    /// The job stops or its clips are done: let go of what the engine holds that outlives
    /// the job otherwise (a command engine's program).
    fn finish(&mut self) {}
}
