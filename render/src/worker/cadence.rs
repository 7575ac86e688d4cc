//! How often the carry is checkpointed (`render.checkpoint_every`), and the background thread
//! that writes it.
//!
//! Segments are durable after every clip; the carry only every *N* clips. Writing it is
//! checkpoint I/O the render does not need, so it happens on [`CarryWriter`]'s thread, from
//! bytes already in host memory, while the main thread renders the next clips. Only one write
//! is in flight: the next checkpoint clip first waits for the previous write.
//!
//! `auto` chooses *N* so that checkpoint I/O stays at or below [`IO_SHARE`] of render time:
//!
//! ```text
//! N = max(1, ceil(write_secs / (IO_SHARE * clip_secs)))
//! write_secs = carry_bytes / write_bytes_per_sec
//! ```
//!
//! `clip_secs` is the mean render time of the clips this attempt rendered; `write_bytes_per_sec`
//! is what this attempt's checkpoint writes achieved (serialising, writing and fsync, bytes over
//! seconds in all), or [`ASSUMED_WRITE_BYTES_PER_SEC`] before the first write finished. Both
//! are re-measured as the job goes, so *N* follows the machine.

use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use jobs::spec::CheckpointEvery;

use crate::checkpoint::{CarrySettings, CheckpointStore, SegmentRecord};
use crate::engine::ClipIndex;
use crate::RenderError;

/// The most of render time checkpoint I/O may take under `checkpoint_every: auto`.
pub const IO_SHARE: f64 = 0.02;
/// The write speed `auto` assumes before this attempt measured one: a slow local disk.
pub const ASSUMED_WRITE_BYTES_PER_SEC: f64 = 200e6;

/// Environment variable that sets [`carry_host_limit`] in bytes (for hosts whose memory is
/// promised elsewhere, and for tests).
pub const CARRY_HOST_LIMIT_ENV: &str = "REELSPOOL_CARRY_HOST_LIMIT";

/// The share of the host's available memory one worker's carry copy may take: a host runs a
/// worker per GPU, and their checkpoints can coincide.
pub const CARRY_HOST_SHARE: f64 = 0.25;

/// The biggest carry a checkpoint copies into host memory for the background writer:
/// [`CARRY_HOST_LIMIT_ENV`] when set, else [`CARRY_HOST_SHARE`] of `MemAvailable`. A bigger
/// carry (a Live Avatar carry at 704*384 is ~90 GB) is streamed into its file tensor by tensor
/// on the render thread instead, which costs render time but no host memory.
pub fn carry_host_limit() -> u64 {
    if let Some(bytes) = std::env::var(CARRY_HOST_LIMIT_ENV)
        .ok()
        .and_then(|value| value.trim().parse::<u64>().ok())
    {
        return bytes;
    }
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_available_bytes(&text));
    match available {
        Some(bytes) => (bytes as f64 * CARRY_HOST_SHARE) as u64,
        // Unknown: keep what fits anywhere in memory.
        None => 1 << 30,
    }
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))?;
    let mut words = line.split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// `auto`'s interval (see the module docs), at least 1.
pub fn auto_every(carry_bytes: u64, write_bytes_per_sec: f64, clip_secs: f64) -> u32 {
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !positive(clip_secs) || !positive(write_bytes_per_sec) {
        return 1;
    }
    let write_secs = carry_bytes as f64 / write_bytes_per_sec;
    let every = (write_secs / (IO_SHARE * clip_secs)).ceil();
    if every.is_nan() {
        return 1;
    }
    every.clamp(1.0, f64::from(u32::MAX)) as u32
}

/// The checkpoint interval of one attempt, with what `auto` has measured so far.
#[derive(Debug, Clone)]
pub struct Cadence {
    setting: CheckpointEvery,
    carry_bytes: u64,
    clip_secs_total: f64,
    clips: u32,
    written_bytes: u64,
    write_secs: f64,
}

impl Cadence {
    pub fn new(setting: CheckpointEvery, carry_bytes: u64) -> Cadence {
        Cadence {
            setting,
            carry_bytes,
            clip_secs_total: 0.0,
            clips: 0,
            written_bytes: 0,
            write_secs: 0.0,
        }
    }

    /// A clip took `secs` to render (denoise, decode, encode).
    pub fn clip_rendered(&mut self, secs: f64) {
        self.clip_secs_total += secs;
        self.clips += 1;
    }

    /// A checkpoint of `bytes` took `secs` (serialising, writing, fsync).
    pub fn carry_written(&mut self, bytes: u64, secs: f64) {
        self.written_bytes += bytes;
        self.write_secs += secs;
    }

    /// Measured write speed, if a write finished.
    pub fn write_bytes_per_sec(&self) -> Option<f64> {
        (self.write_secs > 0.0).then(|| self.written_bytes as f64 / self.write_secs)
    }

    /// Mean clip render time, if a clip was rendered.
    pub fn clip_secs(&self) -> Option<f64> {
        (self.clips > 0).then(|| self.clip_secs_total / f64::from(self.clips))
    }

    /// Clips between checkpoints now.
    pub fn every(&self) -> u32 {
        match self.setting {
            CheckpointEvery::Every(n) => n.max(1),
            CheckpointEvery::Auto => match self.clip_secs() {
                Some(clip_secs) => auto_every(
                    self.carry_bytes,
                    self.write_bytes_per_sec()
                        .unwrap_or(ASSUMED_WRITE_BYTES_PER_SEC),
                    clip_secs,
                ),
                None => 1,
            },
        }
    }

    /// A carry of `bytes` was serialised: a carry whose size was not known before the job
    /// (a command engine's, 0 until then) is sized by the biggest one seen.
    pub fn carry_seen(&mut self, bytes: u64) {
        self.carry_bytes = self.carry_bytes.max(bytes);
    }

    /// Bytes of one carry, as known before the job started (or seen since, see
    /// [`Cadence::carry_seen`]).
    pub fn carry_bytes(&self) -> u64 {
        self.carry_bytes
    }

    /// Whether `auto` decides (a fixed interval never changes).
    pub fn is_auto(&self) -> bool {
        self.setting == CheckpointEvery::Auto
    }
}

/// One carry to write.
pub struct WriteOrder {
    pub clip: ClipIndex,
    pub carry_bytes: Vec<u8>,
    pub segments: Vec<SegmentRecord>,
    /// The record of the checkpointed clip's own segment when it was still being encoded as
    /// the carry was handed over: the writer waits for it before writing anything, so a
    /// checkpoint never names a segment that is not durable.
    pub last_segment: Option<Receiver<SegmentRecord>>,
    /// Time the main thread spent serialising the carry, counted as checkpoint I/O.
    pub serialise_secs: f64,
}

/// How a write ended.
pub struct WriteOutcome {
    pub clip: ClipIndex,
    pub bytes: u64,
    pub secs: f64,
    pub result: Result<(), RenderError>,
}

/// The background thread writing carries; see the module docs.
pub struct CarryWriter {
    orders: Option<Sender<WriteOrder>>,
    outcomes: Receiver<WriteOutcome>,
    in_flight: Option<ClipIndex>,
    thread: Option<JoinHandle<()>>,
}

impl CarryWriter {
    pub fn spawn(
        store: CheckpointStore,
        fingerprint: String,
        carry_settings: Option<CarrySettings>,
    ) -> CarryWriter {
        let (orders_tx, orders_rx) = mpsc::channel::<WriteOrder>();
        let (outcomes_tx, outcomes_rx) = mpsc::channel::<WriteOutcome>();
        let thread = std::thread::Builder::new()
            .name("carry-writer".to_string())
            .spawn(move || {
                for mut order in orders_rx {
                    let bytes = order.carry_bytes.len() as u64;
                    let segment = match order.last_segment.take() {
                        Some(record) => record.recv().map(Some),
                        None => Ok(None),
                    };
                    let started = Instant::now();
                    let result = match segment {
                        Ok(segment) => {
                            order.segments.extend(segment);
                            store.save_prepared(
                                order.clip,
                                &order.carry_bytes,
                                &fingerprint,
                                carry_settings.as_ref(),
                                order.segments,
                            )
                        }
                        // The encode failed; the clip loop reports why.
                        Err(_) => Err(RenderError::OutOfOrder {
                            clip: order.clip,
                            detail: "its segment was not encoded".to_string(),
                        }),
                    };
                    drop(order.carry_bytes);
                    let outcome = WriteOutcome {
                        clip: order.clip,
                        bytes,
                        secs: started.elapsed().as_secs_f64() + order.serialise_secs,
                        result,
                    };
                    if outcomes_tx.send(outcome).is_err() {
                        break;
                    }
                }
            })
            .ok();
        CarryWriter {
            orders: Some(orders_tx),
            outcomes: outcomes_rx,
            in_flight: None,
            thread,
        }
    }

    /// The write in flight, if any.
    pub fn in_flight(&self) -> Option<ClipIndex> {
        self.in_flight
    }

    /// Hands `order` to the thread; first waits for the write before it and returns how that
    /// one ended.
    pub fn submit(&mut self, order: WriteOrder) -> Option<WriteOutcome> {
        let previous = self.wait();
        let clip = order.clip;
        let sent = self
            .orders
            .as_ref()
            .is_some_and(|orders| orders.send(order).is_ok());
        if sent {
            self.in_flight = Some(clip);
            previous
        } else {
            // The thread is gone (it could not start, or panicked): the write failed.
            Some(WriteOutcome {
                clip,
                bytes: 0,
                secs: 0.0,
                result: Err(RenderError::OutOfOrder {
                    clip,
                    detail: "the checkpoint writer thread is not running".to_string(),
                }),
            })
            .or(previous)
        }
    }

    /// Waits for the write in flight; `None` if there was none.
    pub fn wait(&mut self) -> Option<WriteOutcome> {
        let clip = self.in_flight.take()?;
        Some(self.outcomes.recv().unwrap_or_else(|_| WriteOutcome {
            clip,
            bytes: 0,
            secs: 0.0,
            result: Err(RenderError::OutOfOrder {
                clip,
                detail: "the checkpoint writer thread ended mid-write".to_string(),
            }),
        }))
    }

    /// The write in flight if it has finished, without waiting.
    pub fn poll(&mut self) -> Option<WriteOutcome> {
        self.in_flight?;
        match self.outcomes.recv_timeout(Duration::ZERO) {
            Ok(outcome) => {
                self.in_flight = None;
                Some(outcome)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => self.wait(),
        }
    }
}

impl Drop for CarryWriter {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it has written what it holds.
        self.orders = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_in_bytes_from_meminfo() {
        let text =
            "MemTotal:       24576000 kB\nMemFree:         1000 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(mem_available_bytes(text), Some(20_000_000 * 1024));
        assert_eq!(mem_available_bytes("MemTotal: 5 kB\n"), None);
        assert_eq!(mem_available_bytes("MemAvailable: many kB\n"), None);
        assert_eq!(mem_available_bytes("MemAvailable: 5 MB\n"), None);
    }

    #[test]
    fn auto_keeps_writes_within_two_percent_of_render_time() {
        // 1 GB at 1 GB/s is 1 s of I/O; 2 % of 10 s clips is 0.2 s: every 5 clips.
        assert_eq!(auto_every(1_000_000_000, 1e9, 10.0), 5);
        // A tiny carry on a fast disk: every clip.
        assert_eq!(auto_every(4_000, 1e9, 0.05), 1);
        for (bytes, speed, clip) in [(43_700_000_000u64, 1.5e9, 4.0), (10_000, 1e6, 0.5)] {
            let every = auto_every(bytes, speed, clip);
            let io = bytes as f64 / speed;
            assert!(io <= IO_SHARE * clip * f64::from(every) + 1e-9);
            assert!(every == 1 || io > IO_SHARE * clip * f64::from(every - 1));
        }
    }

    #[test]
    fn auto_never_goes_below_one_or_divides_by_zero() {
        assert_eq!(auto_every(0, 1e9, 1.0), 1);
        assert_eq!(auto_every(1_000, 0.0, 1.0), 1);
        assert_eq!(auto_every(1_000, 1e9, 0.0), 1);
        assert_eq!(auto_every(u64::MAX, 1e-300, 1e-300), u32::MAX);
    }

    #[test]
    fn auto_follows_measurements_and_a_fixed_interval_does_not() {
        let mut auto = Cadence::new(CheckpointEvery::Auto, 100_000_000);
        assert_eq!(auto.every(), 1, "nothing measured yet");
        auto.clip_rendered(1.0);
        // 0.1 GB at the assumed 0.2 GB/s: 0.5 s against 0.02 s: every 25 clips.
        assert_eq!(auto.every(), 25);
        auto.carry_written(100_000_000, 0.1);
        assert_eq!(auto.every(), 5);
        let mut fixed = Cadence::new(CheckpointEvery::Every(3), 100_000_000);
        fixed.clip_rendered(1.0);
        fixed.carry_written(100_000_000, 10.0);
        assert_eq!(fixed.every(), 3);
    }

    #[test]
    fn a_carry_of_unknown_size_is_sized_by_the_biggest_one_seen() {
        // A command engine's carry: 0 bytes known, so `auto` checkpoints every clip at first.
        let mut auto = Cadence::new(CheckpointEvery::Auto, 0);
        auto.clip_rendered(1.0);
        assert_eq!(auto.every(), 1);
        auto.carry_seen(100_000_000);
        assert_eq!(auto.carry_bytes(), 100_000_000);
        assert_eq!(
            auto.every(),
            25,
            "0.1 GB at the assumed 0.2 GB/s against 0.02 s"
        );
        auto.carry_seen(1_000);
        assert_eq!(
            auto.carry_bytes(),
            100_000_000,
            "a smaller carry lowers nothing"
        );
    }
}
