//! The clip loop: one for every kind of engine, which sits behind [`Renderer`].
//!
//! Order of work for clip *k* (DESIGN.md §5): render (denoise; decode too with online decode,
//! or a command engine's frames) → wait for clip *k − 1*'s segment → hand clip *k*'s frames
//! to the encoder thread ([`super::encoder`]), which encodes `work/clips/k.mkv` (atomic)
//! while clip *k + 1* renders, and sends `clip_done` the moment the segment is durable (its
//! `secs`: the main thread's time for the clip up to the hand-over) → if *k* is a checkpoint
//! clip (every `render.checkpoint_every` clips, and the last), the carry is serialised into
//! host memory and handed to the background writer ([`super::cadence::CarryWriter`]), which
//! waits for clip *k*'s segment, then writes `work/carry-k.safetensors` and
//! `work/checkpoint.json`. So the worker is at most one clip behind the engine, segments and
//! checkpoints become durable in clip order, and a checkpoint never names a segment that is
//! not durable. A stop (SIGTERM, a `stop` command) between clips waits for the segment in
//! flight and checkpoints the carry first, so nothing rendered is lost.
//!
//! A resumed attempt starts at the clip after the newest durable carry; segments already on
//! disk for the clips it renders again are kept when they come out byte-identical
//! ([`super::segments::write_segment_again`]).
//!
//! The test kill points ([`crash_point`]) settle the encoder and the writer first when they
//! are armed, so each leaves the one state on disk it names, as in a loop without overlap.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use jobs::spec::{CheckpointEvery, NumClip};
use tracing::{info, warn};

use super::checkpoints::Checkpoints;
use super::crash_point;
use super::encoder::{EncodeOrder, SegmentEncoder};
use super::plan::ClipPlan;
use super::renderer::{ClipOutput, Renderer};
use super::report::{Failure, Reporter};
use super::segments::{latents_path, segment_path, write_segment};
use crate::checkpoint::{CarryFile, CarrySettings, CheckpointStore, ResumePoint, SegmentRecord};
use crate::engine::{ClipIndex, ClipLatents};
use crate::media;
use crate::protocol::{CheckpointNote, FailureKind, WorkerMessage};

/// What the clip loop needs to know about the job.
pub(super) struct ClipJob {
    pub(super) work: PathBuf,
    /// The plan from the audio's duration; an engine that counts frames itself refines it.
    pub(super) plan: ClipPlan,
    pub(super) num_clip: NumClip,
    /// Ties checkpoints to the job (`JobSpec::render_fingerprint` and the inputs' bytes).
    pub(super) fingerprint: String,
    /// The settings checkpoints record the carry was written for, when the engine's carry
    /// depends on them in a way the checkpoint can name (the native engines').
    pub(super) carry_settings: Option<CarrySettings>,
    pub(super) checkpoint_every: CheckpointEvery,
    pub(super) online_decode: bool,
    pub(super) encode: media::EncodeSettings,
}

/// How the loop ended without failing.
pub(super) enum Ended {
    /// Every clip of `plan` is encoded and checkpointed: the video can be assembled.
    Rendered(ClipPlan),
    /// Stopped on request; the next attempt starts at `next_clip`.
    Stopped { next_clip: u32 },
}

/// Renders every clip of `job` not yet checkpointed with `renderer`.
pub(super) fn render_clips(
    job: &ClipJob,
    renderer: &mut dyn Renderer,
    reporter: &Reporter,
    stop: &AtomicBool,
) -> Result<Ended, Failure> {
    crash_point::arm(&job.work);
    let store = CheckpointStore::new(job.work.clone());
    let start = resume(&store, job, renderer)?;
    let next_clip = start.next_clip;
    // The engine knows best how long the video is and what its first clip holds.
    let plan = match renderer.audio_video_frames() {
        Some(audio_frames) => ClipPlan::with_first_clip_shortfall(
            job.num_clip,
            renderer.frames_per_clip(),
            renderer.first_clip_shortfall(),
            audio_frames,
        ),
        None => job.plan,
    };
    let online_decode = job.online_decode || renderer.decodes_online();
    let segments = if next_clip > 0 {
        store
            .current_segments()
            .map_err(Failure::of(FailureKind::Io))?
    } else {
        Vec::new()
    };
    info!(clips = plan.clips, next_clip, checkpoint_every = %job.checkpoint_every, "rendering");
    reporter.send(&WorkerMessage::Started {
        clips_total: plan.clips,
        next_clip,
        fresh_reason: start.fresh_reason,
        device: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
        offload: std::env::var("REELSPOOL_OFFLOAD").is_ok_and(|value| value == "1"),
        pid: Some(std::process::id()),
        model_loaded: renderer.model_loaded(),
    });
    if let Some(detail) = start.fell_back {
        reporter.send(&WorkerMessage::Checkpoint {
            note: CheckpointNote::Fallback,
            clip: next_clip.saturating_sub(1),
            detail,
        });
    }

    let mut kept_latents = if online_decode {
        Vec::new()
    } else {
        reload_latents(&job.work, next_clip)?
    };
    let checkpoints = Checkpoints::new(
        &store,
        &job.fingerprint,
        job.carry_settings.as_ref(),
        job.checkpoint_every,
        renderer.carry_bytes(),
        next_clip,
        reporter.clone(),
    );
    let mut done = Finishing {
        encoder: SegmentEncoder::spawn(
            store.clone(),
            job.work.clone(),
            job.encode.clone(),
            reporter.clone(),
        ),
        checkpoints,
        segments,
    };
    if next_clip < plan.clips {
        renderer.begin()?;
    }
    for index in next_clip..plan.clips {
        if stop.load(Ordering::Relaxed) {
            let next_clip = done.stop_before(index, renderer)?;
            renderer.finish();
            return Ok(Ended::Stopped { next_clip });
        }
        if let Some(outcome) = done.checkpoints.writer.poll() {
            done.checkpoints.settle(outcome)?;
        }
        let started = Instant::now();
        let output = renderer.render_clip(index)?;
        if matches!(output, ClipOutput::Abandoned) {
            let next_clip = done.stop_before(index, renderer)?;
            renderer.finish();
            info!(clip = index, next_clip, "stopped inside a clip");
            return Ok(Ended::Stopped { next_clip });
        }
        let frames = match output {
            ClipOutput::Abandoned => unreachable!("an abandoned clip returned above"),
            ClipOutput::Frames(frames) => Some(frames),
            ClipOutput::Latents(latents) if online_decode => Some(renderer.decode(&latents)?),
            ClipOutput::Latents(latents) => {
                keep_latents(&job.work, index, &latents)?;
                kept_latents.push((index, latents));
                None
            }
        };
        let engine_secs = started.elapsed().as_secs_f64();
        done.kill_point("after_denoise", index)?;
        // The clip before this one was encoded while this one rendered: it is durable, and
        // reported, before this one's frames go to the encoder.
        done.settle()?;
        let last = index + 1 == plan.clips;
        let due = done.checkpoints.due(index, last);
        // A clip kept as latents is durable already: it is reported below, once its
        // checkpoint is handed over; an encoded clip's `clip_done` leaves from the encoder.
        let kept_as_latents = frames.is_none();
        let last_segment = match frames {
            Some(frames) => {
                // `mid_encode` fires inside the encoder: settle the writer first, as
                // `kill_point` does for the other points, and wait for the encode below, so
                // the kill lands with nothing else in flight.
                let mid_encode = crash_point::is_armed("mid_encode", index);
                if mid_encode {
                    if let Some(outcome) = done.checkpoints.writer.wait() {
                        done.checkpoints.settle(outcome)?;
                    }
                }
                let (record_to, record) = if due {
                    let (to, from) = mpsc::channel();
                    (Some(to), Some(from))
                } else {
                    (None, None)
                };
                // A kill point after the encode ends the worker before the clip's report.
                let killed_after = ["after_segment", "after_checkpoint"]
                    .iter()
                    .any(|point| crash_point::is_armed(point, index));
                let report = (!killed_after).then(|| WorkerMessage::ClipDone {
                    index,
                    frames: plan.frames_in_clip(index),
                    secs: started.elapsed().as_secs_f64(),
                    engine_secs: Some(engine_secs),
                });
                done.encoder.submit(EncodeOrder {
                    index,
                    frames,
                    keep: plan.frames_in_clip(index),
                    record_to,
                    report,
                })?;
                if mid_encode {
                    done.settle()?;
                }
                done.kill_point("after_segment", index)?;
                record
            }
            None => {
                let record = store
                    .segment_record(ClipIndex(index), &latents_path(&job.work, index))
                    .map_err(Failure::of(FailureKind::Io))?;
                done.push(record);
                None
            }
        };
        if due {
            done.checkpoints
                .checkpoint(index, renderer, &done.segments, last_segment)?;
        }
        done.kill_point("after_checkpoint", index)?;
        let secs = started.elapsed().as_secs_f64();
        done.checkpoints.cadence.clip_rendered(secs);
        if kept_as_latents {
            reporter.send(&WorkerMessage::ClipDone {
                index,
                frames: plan.frames_in_clip(index),
                secs,
                engine_secs: Some(engine_secs),
            });
        }
    }
    // The last clip's segment and checkpoint: assembling needs no carry, but a crash from
    // here on should not render anything again.
    done.settle()?;
    if let Some(outcome) = done.checkpoints.writer.wait() {
        done.checkpoints.settle(outcome)?;
    }
    drop(done);
    for (index, latents) in kept_latents {
        // Decoding a long job's latents can take far longer than the daemon waits after
        // SIGTERM; stop between clips, and the next start decodes them all again.
        if stop.load(Ordering::Relaxed) {
            renderer.finish();
            return Ok(Ended::Stopped {
                next_clip: plan.clips,
            });
        }
        let frames = renderer.decode(&latents)?;
        write_segment(
            index,
            &segment_path(&job.work, index),
            &job.encode,
            &frames,
            plan.frames_in_clip(index),
        )?;
        crash_point::reached("after_segment", index);
    }
    renderer.finish();
    Ok(Ended::Rendered(plan))
}

/// What happens to a clip after the engine is done with it: the encoder thread, the
/// checkpoints and the records of the durable segments.
struct Finishing {
    encoder: SegmentEncoder,
    checkpoints: Checkpoints,
    /// Records of clips `0..` whose segments (or latents) are durable, in order.
    segments: Vec<SegmentRecord>,
}

impl Finishing {
    /// Takes in a durable clip's record; a clip rendered again replaces what it had.
    fn push(&mut self, record: SegmentRecord) {
        self.segments.truncate(record.clip as usize);
        self.segments.push(record);
    }

    /// Waits for the clip being encoded, if any: then it is durable (and reported, by the
    /// encoder thread), and its record is taken in.
    fn settle(&mut self) -> Result<(), Failure> {
        if let Some(encoded) = self.encoder.wait() {
            let record = encoded.result?;
            debug_assert_eq!(record.clip, encoded.index, "records follow clips");
            self.push(record);
        }
        Ok(())
    }

    /// A stop before clip `index` (between clips, or inside it): the clip being encoded
    /// becomes durable, then the carry is checkpointed; returns the clip a resume starts at.
    fn stop_before(&mut self, index: u32, renderer: &mut dyn Renderer) -> Result<u32, Failure> {
        self.settle()?;
        self.checkpoints.stop_at(index, renderer, &self.segments)
    }

    /// A test kill point on the main thread: the encoder and the writer finish first, so
    /// the state on disk at the kill is the one the point names (see [`crash_point`]).
    fn kill_point(&mut self, point: &str, clip: u32) -> Result<(), Failure> {
        if crash_point::is_armed(point, clip) {
            self.settle()?;
        }
        self.checkpoints.kill_point(point, clip);
        Ok(())
    }
}

/// Where an attempt starts.
struct Start {
    next_clip: u32,
    /// Why an existing checkpoint was not used.
    fresh_reason: Option<String>,
    /// Why the newest checkpoint was passed over for the previous one.
    fell_back: Option<String>,
}

/// Picks up the newest usable checkpoint, or starts the renderer fresh.
fn resume(
    store: &CheckpointStore,
    job: &ClipJob,
    renderer: &mut dyn Renderer,
) -> Result<Start, Failure> {
    let point = store
        .resume_carry::<CarryFile>(&job.fingerprint, job.carry_settings.as_ref())
        .map_err(Failure::of(FailureKind::Io))?;
    let (last_clip, carry, fell_back) = match point {
        ResumePoint::Fresh { reason } => {
            renderer.start_fresh()?;
            return Ok(Start {
                next_clip: 0,
                fresh_reason: reason,
                fell_back: None,
            });
        }
        ResumePoint::After {
            last_clip,
            carry,
            fell_back,
        } => (last_clip.0, carry, fell_back),
    };
    let Some(refused) = renderer.resume(&carry.bytes, last_clip + 1)? else {
        return Ok(Start {
            next_clip: last_clip + 1,
            fresh_reason: None,
            fell_back,
        });
    };
    // The checkpoint's own records agree with the job but the engine's do not: retrying
    // would refuse it again, so the job starts over and says why.
    warn!(reason = %refused, "the engine refused the stored carry; starting over");
    store.start_over().map_err(Failure::of(FailureKind::Io))?;
    renderer.start_fresh()?;
    Ok(Start {
        next_clip: 0,
        fresh_reason: Some(format!(
            "checkpoint after clip {last_clip} refused by the engine: {refused}; starting from clip 0"
        )),
        fell_back: None,
    })
}

/// Without online decode (the original's behaviour) latents pile up in memory and are decoded
/// at the end. They also go to disk, so that a crash still costs one clip, not the job.
fn keep_latents(work: &Path, index: u32, latents: &ClipLatents) -> Result<(), Failure> {
    let path = latents_path(work, index);
    let bytes = latents
        .to_safetensors_bytes()
        .map_err(Failure::of(FailureKind::Engine))?;
    atomic_write::write_atomic(&path, &bytes).map_err(|err| {
        Failure::new(
            FailureKind::Io,
            format!("cannot write {}: {err}", path.display()),
        )
    })
}

/// The latents of clips `0..next_clip`, kept on disk by an earlier attempt.
fn reload_latents(work: &Path, next_clip: u32) -> Result<Vec<(u32, ClipLatents)>, Failure> {
    (0..next_clip)
        .map(|index| {
            let path = latents_path(work, index);
            std::fs::read(&path)
                .map_err(|err| err.to_string())
                .and_then(|bytes| {
                    ClipLatents::from_safetensors_bytes(&bytes).map_err(|err| err.to_string())
                })
                .map(|latents| (index, latents))
                .map_err(|err| {
                    Failure::new(
                        FailureKind::Io,
                        format!("cannot reload {}: {err}", path.display()),
                    )
                })
        })
        .collect()
}
