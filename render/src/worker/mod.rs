//! The worker process: renders one job directory clip by clip.
//!
//! Order of work for clip *k* (DESIGN.md §5): denoise → decode → encode `work/clips/k.mkv`
//! (atomic); then, if *k* is a checkpoint clip (every `render.checkpoint_every` clips, and the
//! last), the carry is serialised into host memory and handed to a background thread
//! ([`cadence::CarryWriter`]) that writes `work/carry-k.safetensors` and `work/checkpoint.json`
//! while the next clips render. A SIGKILL at any point loses at most the clips since the newest
//! durable carry: on restart the checkpoint names the last clip whose carry is durable, and
//! rendering continues from that carry; segments already on disk for the clips rendered again
//! are kept when they come out byte-identical. Because every random draw is derived from the
//! job's seed and the clip index, the resumed video is identical to an uninterrupted one.
//!
//! The tests prove the "at any moment" part by making the worker SIGKILL itself at exact points
//! of this order ([`crash_point`], armed only by a test environment variable).
//!
//! Inputs are decoded before the model is loaded, so a corrupt image or audio file fails the job
//! before any GPU time is spent.
//!
//! # Layers, top to bottom (a file uses only those below it)
//! - `serve`: the process: [`run`] one job, or [`serve`] jobs as a warm worker; signals, the
//!   job lock, heartbeats.
//! - `job`: one job: the resolved job and its inputs, the renderer for its engine, the clip
//!   loop, then `assemble` (the video put together and moved into place).
//! - `inputs`: the job's files reached from their allowed roots without following symlinks,
//!   the owner's rights checked on the descriptors (`jobs::reach`).
//! - `clip_loop`: the one clip loop, for every kind of engine.
//! - `native` and `command`: the two kinds of engine behind the loop's seam, `renderer`.
//! - `checkpoints` (which clips are checkpointed, and how each write ended), `segments`
//!   (a clip's segment, and one rendered again), `plan` ([`ClipPlan`]), [`cadence`] (the
//!   interval and the background writer), [`crash_point`] (the test kill points), `report`
//!   (protocol lines and failures).

mod assemble;
pub mod cadence;
mod checkpoints;
mod clip_loop;
mod command;
mod encoder;
pub use crate::crash_point;
mod inputs;
mod job;
mod native;
mod plan;
mod renderer;
mod report;
mod segments;
mod serve;

pub use job::{carry_bytes, check_native_model};
pub use plan::ClipPlan;
pub use serve::{run, serve};
