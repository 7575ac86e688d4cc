//! The final video's sound: the job's original audio, re-encoded to AAC and cut or padded
//! to the video's exact length.
//!
//! The original file is used rather than the model's 16 kHz copy, so the output keeps the
//! recording's full bandwidth. The audio is pulled as the video is written, so the MP4
//! muxer interleaves the two without buffering either whole.

use std::path::{Path, PathBuf};

use ffmpeg_next as ffmpeg;
use ffmpeg_next::format::{sample, Sample};
use ffmpeg_next::{codec, encoder, frame, ChannelLayout, Packet, Rational};

use super::audio_source::AudioSource;
use crate::RenderError;

/// The output sample rate: what players and editors expect of video sound.
pub(crate) const AAC_RATE_HZ: u32 = 48_000;

/// AAC bit rate per channel: transparent for speech, small next to the video.
const BITS_PER_SECOND_PER_CHANNEL: usize = 96_000;

/// An AAC stream being written into an output file.
pub(crate) struct AacTrack {
    source: AudioSource,
    audio_path: PathBuf,
    output_path: PathBuf,
    encoder: encoder::Audio,
    layout: ChannelLayout,
    channels: usize,
    frame_size: usize,
    /// Decoded, interleaved samples not yet encoded.
    pending: Vec<f32>,
    source_exhausted: bool,
    /// Samples per channel handed to the encoder so far; the next frame's timestamp.
    samples_encoded: u64,
    stream_index: usize,
    stream_time_base: Rational,
}

impl AacTrack {
    /// Opens `audio` and adds an AAC stream for it to `output` (before its header is written).
    pub(crate) fn add_to(
        output: &mut ffmpeg::format::context::Output,
        output_path: &Path,
        audio: &Path,
    ) -> Result<AacTrack, RenderError> {
        let source = AudioSource::open(audio, AAC_RATE_HZ, 2)?;
        let channels = usize::from(source.format().channels);
        let layout = ChannelLayout::default(channels as i32);
        let fail = |reason: String| RenderError::Write {
            path: output_path.to_path_buf(),
            reason,
        };
        let codec = encoder::find_by_name("aac").ok_or_else(|| RenderError::EncoderMissing {
            path: output_path.to_path_buf(),
            encoder: "aac",
        })?;
        let mut context = codec::Context::new_with_codec(codec)
            .encoder()
            .audio()
            .map_err(|e| fail(e.to_string()))?;
        context.set_rate(AAC_RATE_HZ as i32);
        context.set_channel_layout(layout);
        context.set_format(Sample::F32(sample::Type::Planar));
        context.set_bit_rate(BITS_PER_SECOND_PER_CHANNEL * channels);
        context.set_time_base(Rational::new(1, AAC_RATE_HZ as i32));
        context.set_flags(super::encoder_flags(output));
        let encoder = context
            .open_as(codec)
            .map_err(|e| fail(format!("cannot open the AAC encoder: {e}")))?;
        let frame_size = (encoder.frame_size() as usize).max(1);

        let mut stream = output.add_stream(codec).map_err(|e| fail(e.to_string()))?;
        stream.set_time_base(Rational::new(1, AAC_RATE_HZ as i32));
        stream.set_parameters(&encoder);
        let stream_index = stream.index();
        Ok(AacTrack {
            source,
            audio_path: audio.to_path_buf(),
            output_path: output_path.to_path_buf(),
            encoder,
            layout,
            channels,
            frame_size,
            pending: Vec::new(),
            source_exhausted: false,
            samples_encoded: 0,
            stream_index,
            stream_time_base: Rational::new(1, AAC_RATE_HZ as i32),
        })
    }

    /// Records the time base the muxer chose for the stream while writing its header.
    pub(crate) fn set_stream_time_base(&mut self, time_base: Rational) {
        self.stream_time_base = time_base;
    }

    /// Encodes whole frames until just short of `end_sample` (per channel, at 48 kHz).
    pub(crate) fn encode_until(
        &mut self,
        output: &mut ffmpeg::format::context::Output,
        end_sample: u64,
    ) -> Result<(), RenderError> {
        while self.samples_encoded + self.frame_size as u64 <= end_sample {
            self.encode_frame(output, self.frame_size)?;
        }
        Ok(())
    }

    /// Encodes the rest up to exactly `total_samples`, padding with silence if the
    /// recording is shorter and dropping whatever it has beyond, then drains the encoder.
    pub(crate) fn finish(
        &mut self,
        output: &mut ffmpeg::format::context::Output,
        total_samples: u64,
    ) -> Result<(), RenderError> {
        self.encode_until(output, total_samples)?;
        let rest = total_samples.saturating_sub(self.samples_encoded) as usize;
        if rest > 0 {
            self.encode_frame(output, rest)?;
        }
        self.encoder.send_eof().map_err(|e| self.write_error(e))?;
        self.write_ready_packets(output)
    }

    fn encode_frame(
        &mut self,
        output: &mut ffmpeg::format::context::Output,
        samples: usize,
    ) -> Result<(), RenderError> {
        let wanted = samples * self.channels;
        while self.pending.len() < wanted && !self.source_exhausted {
            if !self.source.read_chunk(&mut self.pending)? {
                self.source_exhausted = true;
            }
        }
        if self.pending.len() < wanted {
            self.pending.resize(wanted, 0.0);
        }
        let mut audio = frame::Audio::new(Sample::F32(sample::Type::Planar), samples, self.layout);
        audio.set_rate(AAC_RATE_HZ);
        audio.set_pts(Some(self.samples_encoded as i64));
        for channel in 0..self.channels {
            let plane = audio.plane_mut::<f32>(channel);
            for (i, sample) in plane.iter_mut().enumerate() {
                *sample = self.pending[i * self.channels + channel];
            }
        }
        self.pending.drain(..wanted);
        self.encoder
            .send_frame(&audio)
            .map_err(|e| self.write_error(e))?;
        self.samples_encoded += samples as u64;
        self.write_ready_packets(output)
    }

    fn write_ready_packets(
        &mut self,
        output: &mut ffmpeg::format::context::Output,
    ) -> Result<(), RenderError> {
        let mut packet = Packet::empty();
        loop {
            match super::receive_ready_packet(&mut self.encoder, &mut packet) {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) => return Err(self.write_error(e)),
            }
            packet.set_stream(self.stream_index);
            packet.rescale_ts(Rational::new(1, AAC_RATE_HZ as i32), self.stream_time_base);
            packet
                .write_interleaved(output)
                .map_err(|e| self.write_error(e))?;
        }
    }

    fn write_error(&self, error: ffmpeg::Error) -> RenderError {
        RenderError::Write {
            path: self.output_path.clone(),
            reason: format!("AAC from {}: {error}", self.audio_path.display()),
        }
    }
}
