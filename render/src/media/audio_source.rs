//! Decoding an audio file to interleaved f32 at a chosen rate, a chunk at a time.
//!
//! Both the model's input (16 kHz mono) and the final mux (48 kHz for AAC) start from the
//! same job audio, so the decode-and-resample loop lives here once. It streams: the final
//! mux of an hour-long job pulls audio as the video advances instead of holding it all.

use std::path::{Path, PathBuf};

use ffmpeg_next as ffmpeg;
use ffmpeg_next::ffi;
use ffmpeg_next::format::{sample, Sample};
use ffmpeg_next::software::resampling;
use ffmpeg_next::{codec, frame, media, ChannelLayout, Packet};

use crate::RenderError;

/// The sample layout an [`AudioSource`] delivers: packed f32, interleaved by channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PcmFormat {
    pub rate_hz: u32,
    pub channels: u16,
}

/// An open audio file, decoded and resampled on demand.
pub(crate) struct AudioSource {
    path: PathBuf,
    input: ffmpeg::format::context::Input,
    stream_index: usize,
    decoder: ffmpeg::decoder::Audio,
    output: PcmFormat,
    resampler: Option<Resampler>,
    decoded_frame: frame::Audio,
    /// Packets the decoder refused; tolerated one by one (a damaged frame in a long
    /// recording should not fail a job), fatal only if nothing decodes at all.
    rejected_packets: u64,
    first_error: Option<ffmpeg::Error>,
    delivered_samples: u64,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    Draining,
    Done,
}

impl AudioSource {
    /// Opens the best audio stream of `path`. `max_channels` caps the output channel count
    /// (1 downmixes to mono); the output keeps fewer channels when the source has fewer.
    pub(crate) fn open(path: &Path, rate_hz: u32, max_channels: u16) -> Result<Self, RenderError> {
        let fail = |reason: String| RenderError::AudioDecode {
            path: path.to_path_buf(),
            reason,
        };
        let input = super::open_audio_input(path)?;
        let stream =
            input
                .streams()
                .best(media::Type::Audio)
                .ok_or_else(|| RenderError::NoAudioStream {
                    path: path.to_path_buf(),
                })?;
        let stream_index = stream.index();
        let decoder = codec::Context::from_parameters(stream.parameters())
            .and_then(|c| c.decoder().audio())
            .map_err(|e| fail(e.to_string()))?;
        let source_channels = decoder.channels().max(1);
        Ok(AudioSource {
            path: path.to_path_buf(),
            input,
            stream_index,
            decoder,
            output: PcmFormat {
                rate_hz,
                channels: source_channels.min(max_channels.max(1)),
            },
            resampler: None,
            decoded_frame: frame::Audio::empty(),
            rejected_packets: 0,
            first_error: None,
            delivered_samples: 0,
            state: State::Reading,
        })
    }

    /// The layout of the samples [`AudioSource::read_chunk`] appends.
    pub(crate) fn format(&self) -> PcmFormat {
        self.output
    }

    /// Appends the next decoded samples (interleaved) to `out`. Returns `false` once the
    /// file is exhausted, and an error if it ends without a single decodable sample.
    pub(crate) fn read_chunk(&mut self, out: &mut Vec<f32>) -> Result<bool, RenderError> {
        let before = out.len();
        while out.len() == before {
            match self.state {
                State::Done => return self.finished(),
                State::Reading | State::Draining => self.step(out)?,
            }
        }
        self.delivered_samples += ((out.len() - before) / usize::from(self.output.channels)) as u64;
        Ok(true)
    }

    /// One unit of progress: a decoded frame out, a packet in, or the end-of-file drain.
    fn step(&mut self, out: &mut Vec<f32>) -> Result<(), RenderError> {
        if self.decoder.receive_frame(&mut self.decoded_frame).is_ok() {
            return self.resample_decoded(out);
        }
        if self.state == State::Draining {
            if let Some(resampler) = self.resampler.as_mut() {
                resampler
                    .flush(out)
                    .map_err(|e| decode_error(&self.path, e))?;
            }
            self.state = State::Done;
            return Ok(());
        }
        let mut packet = Packet::empty();
        match packet.read(&mut self.input) {
            Ok(()) if packet.stream() != self.stream_index => {}
            Ok(()) => {
                if let Err(e) = self.decoder.send_packet(&packet) {
                    self.note_rejected(e);
                }
            }
            Err(ffmpeg::Error::Eof) => {
                // Ignoring the result: a decoder that fails to drain has nothing more to give.
                let _ = self.decoder.send_eof();
                self.state = State::Draining;
            }
            Err(e) => return Err(decode_error(&self.path, e)),
        }
        Ok(())
    }

    fn note_rejected(&mut self, error: ffmpeg::Error) {
        self.rejected_packets += 1;
        if self.first_error.is_none() {
            tracing::warn!(path = %self.path.display(), %error, "skipping an undecodable audio packet");
            self.first_error = Some(error);
        }
    }

    fn resample_decoded(&mut self, out: &mut Vec<f32>) -> Result<(), RenderError> {
        let frame = &self.decoded_frame;
        let channels = frame.channels().max(1);
        let layout = match frame.channel_layout() {
            l if l.is_empty() || l.channels() != i32::from(channels) => {
                ChannelLayout::default(i32::from(channels))
            }
            l => l,
        };
        let input = (frame.format(), layout, frame.rate());
        // Streams may change rate or layout midway (concatenated recordings); the old
        // resampler's tail is flushed before a new one takes over.
        if self.resampler.as_ref().map(|r| r.input) != Some(input) {
            if let Some(mut old) = self.resampler.take() {
                old.flush(out).map_err(|e| decode_error(&self.path, e))?;
            }
            let fresh =
                Resampler::new(input, self.output).map_err(|e| decode_error(&self.path, e))?;
            self.resampler = Some(fresh);
        }
        let resampler = self
            .resampler
            .as_mut()
            .expect("a resampler was installed just above");
        resampler
            .convert(Some(&self.decoded_frame), out)
            .map_err(|e| decode_error(&self.path, e))?;
        Ok(())
    }

    fn finished(&self) -> Result<bool, RenderError> {
        if self.delivered_samples > 0 {
            if self.rejected_packets > 0 {
                tracing::warn!(path = %self.path.display(), packets = self.rejected_packets,
                    "some audio packets could not be decoded and were skipped");
            }
            return Ok(false);
        }
        Err(RenderError::AudioDecode {
            path: self.path.clone(),
            reason: match self.first_error {
                Some(e) => e.to_string(),
                None => "it contains no audio samples".to_string(),
            },
        })
    }
}

fn decode_error(path: &Path, error: ffmpeg::Error) -> RenderError {
    RenderError::AudioDecode {
        path: path.to_path_buf(),
        reason: error.to_string(),
    }
}

/// A libswresample context converting one input layout to packed f32.
///
/// Called through the C API with caller-owned buffers: the `ffmpeg-next` wrapper sizes its
/// output frame from the input frame, which is too small when upsampling (8 kHz in, 48 kHz
/// out), and would leave samples stuck inside the resampler.
struct Resampler {
    input: (Sample, ChannelLayout, u32),
    context: resampling::Context,
    channels: usize,
}

impl Resampler {
    fn new(input: (Sample, ChannelLayout, u32), output: PcmFormat) -> Result<Self, ffmpeg::Error> {
        let (format, layout, rate) = input;
        let context = resampling::Context::get(
            format,
            layout,
            rate,
            Sample::F32(sample::Type::Packed),
            ChannelLayout::default(i32::from(output.channels)),
            output.rate_hz,
        )?;
        Ok(Resampler {
            input,
            context,
            channels: usize::from(output.channels),
        })
    }

    /// Converts `frame` (or, with `None`, drains buffered samples) and appends to `out`.
    fn convert(
        &mut self,
        frame: Option<&frame::Audio>,
        out: &mut Vec<f32>,
    ) -> Result<usize, ffmpeg::Error> {
        let in_samples = frame.map_or(0, |f| f.samples());
        let in_samples = i32::try_from(in_samples).map_err(|_| ffmpeg::Error::InvalidData)?;
        // SAFETY: the context is live; this only computes an upper bound.
        let capacity = unsafe { ffi::swr_get_out_samples(self.context.as_mut_ptr(), in_samples) };
        if capacity < 0 {
            return Err(ffmpeg::Error::from(capacity));
        }
        let start = out.len();
        out.resize(start + capacity as usize * self.channels, 0.0);
        let mut out_ptr = out[start..].as_mut_ptr() as *mut u8;
        let in_ptr = match frame {
            // SAFETY: `extended_data` points at one plane pointer per channel (planar) or one
            // pointer (packed), each valid for `nb_samples`, as the decoder filled them.
            Some(f) => unsafe { (*f.as_ptr()).extended_data as *mut *const u8 },
            None => std::ptr::null_mut(),
        };
        // SAFETY: `out_ptr` has room for `capacity` packed samples of `channels` f32 each;
        // the input pointers are valid as above (or null, which drains).
        let got = unsafe {
            ffi::swr_convert(
                self.context.as_mut_ptr(),
                &mut out_ptr,
                capacity,
                in_ptr,
                in_samples,
            )
        };
        if got < 0 {
            out.truncate(start);
            return Err(ffmpeg::Error::from(got));
        }
        out.truncate(start + got as usize * self.channels);
        Ok(got as usize)
    }

    /// Drains every sample the resampler still holds into `out`.
    fn flush(&mut self, out: &mut Vec<f32>) -> Result<(), ffmpeg::Error> {
        while self.convert(None, out)? > 0 {}
        Ok(())
    }
}
