//! The segment encoder thread: clip *k*'s frames are encoded into its segment, made durable
//! and hashed here while the main thread renders clip *k + 1*.
//!
//! At most one clip is in flight: the clip loop waits for clip *k*'s segment before it hands
//! over clip *k + 1*'s frames, so the worker is never more than one clip behind the engine
//! and never holds more than two clips of frames. Segments become durable in clip order
//! because there is one thread, and each clip's `clip_done` goes out from here the moment
//! its segment is durable, even while the engine is still busy with the next clip. A checkpoint of clip *k* needs clip *k*'s segment record: the
//! loop passes the writer a [`SegmentRecord`] receiver ([`EncodeOrder::record_to`]), so the
//! checkpoint is written as soon as the segment is durable, not when the main thread next
//! looks.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Instant;

use super::report::{Failure, Reporter};
use super::segments::{segment_path, write_segment, write_segment_again};
use crate::checkpoint::{CheckpointStore, SegmentRecord};
use crate::engine::ClipIndex;
use crate::media;
use crate::protocol::{FailureKind, WorkerMessage};

/// One clip to encode.
pub(super) struct EncodeOrder {
    pub(super) index: u32,
    /// RGB24 frames in display order; the first `keep` go into the segment.
    pub(super) frames: Vec<Vec<u8>>,
    pub(super) keep: u32,
    /// Where the segment's record goes too, for a checkpoint of this clip that waits on it.
    pub(super) record_to: Option<Sender<SegmentRecord>>,
    /// The clip's `clip_done`, sent as soon as its segment is durable (`None`: not sent,
    /// for a test kill point that ends the worker before the report).
    pub(super) report: Option<WorkerMessage>,
}

/// How an encode ended.
pub(super) struct Encoded {
    pub(super) index: u32,
    pub(super) result: Result<SegmentRecord, Failure>,
}

/// The encoder thread and the one clip it may hold.
pub(super) struct SegmentEncoder {
    orders: Option<Sender<EncodeOrder>>,
    done: Receiver<Encoded>,
    in_flight: Option<u32>,
    thread: Option<JoinHandle<()>>,
}

impl SegmentEncoder {
    pub(super) fn spawn(
        store: CheckpointStore,
        work: PathBuf,
        settings: media::EncodeSettings,
        reporter: Reporter,
    ) -> SegmentEncoder {
        let (orders_tx, orders_rx) = mpsc::channel::<EncodeOrder>();
        let (done_tx, done_rx) = mpsc::channel::<Encoded>();
        let thread = std::thread::Builder::new()
            .name("segment-encoder".to_string())
            .spawn(move || {
                for order in orders_rx {
                    let started = Instant::now();
                    let index = order.index;
                    let result = encode(&store, &work, &settings, &reporter, &order);
                    tracing::debug!(
                        clip = index,
                        secs = started.elapsed().as_secs_f64(),
                        "segment encoded"
                    );
                    if let (Ok(_), Some(report)) = (&result, &order.report) {
                        reporter.send(report);
                    }
                    if let (Ok(record), Some(to)) = (&result, order.record_to) {
                        // The writer may have given up on this checkpoint (a full disk):
                        // nothing waits then.
                        let _ = to.send(record.clone());
                    }
                    if done_tx.send(Encoded { index, result }).is_err() {
                        break;
                    }
                }
            })
            .ok();
        SegmentEncoder {
            orders: Some(orders_tx),
            done: done_rx,
            in_flight: None,
            thread,
        }
    }

    /// Hands `order` to the thread. The caller has waited for the clip before it
    /// ([`SegmentEncoder::wait`]); a thread that is gone fails the clip.
    pub(super) fn submit(&mut self, order: EncodeOrder) -> Result<(), Failure> {
        debug_assert!(self.in_flight.is_none(), "one clip in flight at most");
        let index = order.index;
        let sent = self
            .orders
            .as_ref()
            .is_some_and(|orders| orders.send(order).is_ok());
        if !sent {
            return Err(Failure::new(
                FailureKind::Io,
                format!("cannot encode clip {index}: the segment encoder thread is not running"),
            ));
        }
        self.in_flight = Some(index);
        Ok(())
    }

    /// Waits for the clip in flight; `None` if there was none.
    pub(super) fn wait(&mut self) -> Option<Encoded> {
        let index = self.in_flight.take()?;
        Some(self.done.recv().unwrap_or_else(|_| Encoded {
            index,
            result: Err(Failure::new(
                FailureKind::Io,
                format!("cannot encode clip {index}: the segment encoder thread ended mid-clip"),
            )),
        }))
    }
}

impl Drop for SegmentEncoder {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it has encoded what it holds.
        self.orders = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Encodes one clip into its segment (beside an existing one, kept when the bytes come out
/// the same, for a clip rendered again after a resume) and records it.
fn encode(
    store: &CheckpointStore,
    work: &std::path::Path,
    settings: &media::EncodeSettings,
    reporter: &Reporter,
    order: &EncodeOrder,
) -> Result<SegmentRecord, Failure> {
    let segment = segment_path(work, order.index);
    if segment.exists() {
        write_segment_again(
            order.index,
            &segment,
            settings,
            &order.frames,
            order.keep,
            reporter,
        )?;
    } else {
        write_segment(order.index, &segment, settings, &order.frames, order.keep)?;
    }
    store
        .segment_record(ClipIndex(order.index), &segment)
        .map_err(Failure::of(FailureKind::Io))
}
