//! The checkpoint side of the clip loop: which clips are checkpointed (the cadence), handing
//! the carry to the background writer or streaming it into its file, and what the writes
//! achieved, a full disk included.

use std::sync::mpsc::Receiver;
use std::time::Instant;

use tracing::{info, warn};

use super::cadence::{self, Cadence, CarryWriter, WriteOrder, WriteOutcome};
use super::crash_point;
use super::renderer::Renderer;
use super::report::{Failure, Reporter};
use jobs::spec::CheckpointEvery;

use crate::checkpoint::{CarrySettings, CarrySource, CheckpointStore, SegmentRecord};
use crate::engine::ClipIndex;
use crate::protocol::{CheckpointNote, FailureKind, WorkerMessage};

/// Checkpoints in a row that may fail for want of space before the worker stops: past this,
/// the job could not make its progress durable, so it waits for space instead (README
/// "Reliability").
const MAX_SKIPPED_CHECKPOINTS: u32 = 3;

/// The checkpoint side of the clip loop: when to checkpoint, the writer thread, and what the
/// writes achieved.
pub(super) struct Checkpoints {
    pub(super) writer: CarryWriter,
    pub(super) cadence: Cadence,
    /// The clip after the newest durable carry: where a crash now would resume.
    pub(super) durable_next: u32,
    /// The clip after the newest carry handed to the writer (or durable).
    pub(super) since: u32,
    /// Checkpoints in a row that failed for want of space.
    pub(super) skipped_in_row: u32,
    /// The interval `auto` last reported.
    pub(super) every_reported: Option<u32>,
    pub(super) reporter: Reporter,
    /// Set when the carry is too big to copy into host memory: each checkpoint then streams
    /// it from the engine into its file on this thread (see [`cadence::carry_host_limit`]).
    pub(super) direct: Option<DirectWrites>,
}

/// What a checkpoint written on the render thread needs (the writer thread holds the same).
pub(super) struct DirectWrites {
    pub(super) store: CheckpointStore,
    pub(super) fingerprint: String,
    pub(super) settings: Option<CarrySettings>,
}

impl Checkpoints {
    /// The checkpoint side of an attempt that starts at `next_clip`. A carry bigger than the
    /// host memory a checkpoint may take ([`cadence::carry_host_limit`]) is streamed from the
    /// renderer into its file; one of unknown size (`carry_bytes` `None`) is copied.
    pub(super) fn new(
        store: &CheckpointStore,
        fingerprint: &str,
        carry_settings: Option<&CarrySettings>,
        every: CheckpointEvery,
        carry_bytes: Option<u64>,
        next_clip: u32,
        reporter: Reporter,
    ) -> Checkpoints {
        let host_limit = cadence::carry_host_limit();
        let direct = carry_bytes
            .filter(|&bytes| bytes > host_limit)
            .map(|bytes| {
                info!(
                carry_bytes = bytes,
                host_limit,
                "the carry is bigger than the host memory a checkpoint may take: each checkpoint \
                 streams it from the engine into its file while rendering waits"
            );
                DirectWrites {
                    store: store.clone(),
                    fingerprint: fingerprint.to_string(),
                    settings: carry_settings.cloned(),
                }
            });
        Checkpoints {
            writer: CarryWriter::spawn(
                store.clone(),
                fingerprint.to_string(),
                carry_settings.cloned(),
            ),
            cadence: Cadence::new(every, carry_bytes.unwrap_or(0)),
            durable_next: next_clip,
            since: next_clip,
            skipped_in_row: 0,
            every_reported: None,
            reporter,
            direct,
        }
    }

    /// A test kill point on the main thread: the writer finishes first, so the state on disk
    /// at the kill is the one the point names (see [`crash_point`]).
    pub(super) fn kill_point(&mut self, point: &str, clip: u32) {
        if crash_point::is_armed(point, clip) {
            let _ = self.writer.wait();
        }
        crash_point::reached(point, clip);
    }

    /// Whether clip `index`, just rendered, is a checkpoint clip.
    pub(super) fn due(&mut self, index: u32, last: bool) -> bool {
        let every = self.cadence.every();
        // Reported the first time and when it moves by more than a quarter, not on every
        // wobble of the measurements.
        let moved = self.every_reported.is_none_or(|reported| {
            f64::from(every.abs_diff(reported)) > 0.25 * f64::from(reported)
        });
        if self.cadence.is_auto() && moved {
            let speed = match self.cadence.write_bytes_per_sec() {
                Some(speed) => format!("{:.1} MB/s measured", speed / 1e6),
                None => format!(
                    "{:.1} MB/s assumed",
                    cadence::ASSUMED_WRITE_BYTES_PER_SEC / 1e6
                ),
            };
            let detail = format!(
                "checkpoint every {every} clips: carry of {} bytes, clips take {:.3} s, writes at {speed}",
                self.cadence.carry_bytes(),
                self.cadence.clip_secs().unwrap_or(0.0),
            );
            info!(clip = index, every, "{detail}");
            self.reporter.send(&WorkerMessage::Checkpoint {
                note: CheckpointNote::Cadence,
                clip: index,
                detail,
            });
            self.every_reported = Some(every);
        }
        last || index + 1 >= self.since.saturating_add(every)
    }

    /// Serialises the renderer's carry (which continues into `index + 1`) and hands it to
    /// the writer, or streams it into its file when it is too big to copy. `segments` holds
    /// the records of clips `0..=index`, or of `0..index` with clip `index`'s to come from
    /// `last_segment` (the encoder thread) once its segment is durable.
    pub(super) fn checkpoint(
        &mut self,
        index: u32,
        renderer: &mut dyn Renderer,
        segments: &[SegmentRecord],
        last_segment: Option<Receiver<SegmentRecord>>,
    ) -> Result<(), Failure> {
        let upto = if last_segment.is_some() {
            index as usize
        } else {
            index as usize + 1
        };
        let Some(segments) = segments.get(..upto) else {
            return Err(Failure::new(
                FailureKind::Io,
                format!(
                    "checkpoint of clip {index}: {} segment records for {upto} clips",
                    segments.len()
                ),
            ));
        };
        let mut segments = segments.to_vec();
        if self.direct.is_some() {
            // One write at a time: the one in flight (none, unless the mode changed) first.
            if let Some(outcome) = self.writer.wait() {
                self.settle(outcome)?;
            }
        }
        if let Some(direct) = &self.direct {
            // Streamed on this thread: the segment must be durable first.
            if let Some(record) = last_segment {
                segments.push(record.recv().map_err(|_| {
                    Failure::new(
                        FailureKind::Io,
                        format!("checkpoint of clip {index}: its segment was not encoded"),
                    )
                })?);
            }
            let started = Instant::now();
            let expected = self.cadence.carry_bytes();
            let mut write = |file: &mut std::fs::File| renderer.write_carry(file);
            let result = direct.store.save_from(
                ClipIndex(index),
                CarrySource::Stream {
                    expected_bytes: expected,
                    write: &mut write,
                },
                &direct.fingerprint,
                direct.settings.as_ref(),
                segments,
            );
            self.since = index + 1;
            return self.settle(WriteOutcome {
                clip: ClipIndex(index),
                bytes: expected,
                secs: started.elapsed().as_secs_f64(),
                result,
            });
        }
        let started = Instant::now();
        let carry_bytes = renderer.carry_to_bytes()?;
        self.cadence.carry_seen(carry_bytes.len() as u64);
        let order = WriteOrder {
            clip: ClipIndex(index),
            carry_bytes,
            segments,
            last_segment,
            serialise_secs: started.elapsed().as_secs_f64(),
        };
        self.since = index + 1;
        if let Some(outcome) = self.writer.submit(order) {
            self.settle(outcome)?;
        }
        Ok(())
    }

    /// Takes in how a write ended. A full disk skips that checkpoint (the previous one stays,
    /// the next clip tries again) until [`MAX_SKIPPED_CHECKPOINTS`] in a row stop the job;
    /// any other failure fails the attempt, as a failed checkpoint always did.
    pub(super) fn settle(&mut self, outcome: WriteOutcome) -> Result<(), Failure> {
        let clip = outcome.clip.0;
        match outcome.result {
            Ok(()) => {
                self.durable_next = self.durable_next.max(clip + 1);
                self.skipped_in_row = 0;
                self.cadence.carry_written(outcome.bytes, outcome.secs);
                Ok(())
            }
            Err(err) if err.is_out_of_space() => {
                self.skipped_in_row += 1;
                // Try again with the next clip's carry.
                self.since = self.durable_next;
                let detail = format!(
                    "{err} ({} in a row; a crash now resumes at clip {})",
                    self.skipped_in_row, self.durable_next
                );
                warn!(clip, "{detail}");
                self.reporter.send(&WorkerMessage::Checkpoint {
                    note: CheckpointNote::Skipped,
                    clip,
                    detail,
                });
                if self.skipped_in_row >= MAX_SKIPPED_CHECKPOINTS {
                    let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
                    return Err(Failure::new(
                        FailureKind::Io,
                        format!(
                            "{enospc}: {} checkpoints in a row could not be written, so the job \
                             stops where its progress is durable (clip {}): {err}",
                            self.skipped_in_row, self.durable_next
                        ),
                    ));
                }
                Ok(())
            }
            Err(err) => Err(Failure::new(FailureKind::Io, err.to_string())),
        }
    }

    /// A stop before clip `index`: waits for the write in flight, then checkpoints the
    /// renderer's carry if it is newer than the newest durable one, so nothing rendered is lost.
    /// Returns the clip a resume starts at.
    pub(super) fn stop_at(
        &mut self,
        index: u32,
        renderer: &mut dyn Renderer,
        segments: &[SegmentRecord],
    ) -> Result<u32, Failure> {
        if let Some(outcome) = self.writer.wait() {
            self.settle(outcome)?;
        }
        if index > self.durable_next {
            self.checkpoint(index - 1, renderer, segments, None)?;
            if let Some(outcome) = self.writer.wait() {
                self.settle(outcome)?;
            }
        }
        Ok(self.durable_next)
    }
}
