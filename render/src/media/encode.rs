//! Encoding one clip's frames into a Matroska segment as they come out of the decoder.
//!
//! With online decode the engine hands over a clip's frames and frees them; encoding them
//! straight away keeps memory flat however long the job is. Each clip becomes its own
//! segment (`work/clips/k.mkv`) so a finished clip is durable on its own, and the final mux
//! concatenates segments without re-encoding. Matroska is used for segments because it is
//! written front to back and needs no finishing pass, unlike MP4.

use std::path::{Path, PathBuf};

use ffmpeg_next as ffmpeg;
use ffmpeg_next::codec::threading;
use ffmpeg_next::format::Pixel;
use ffmpeg_next::software::scaling::Flags;
use ffmpeg_next::util::color;
use ffmpeg_next::{codec, encoder, frame, Dictionary, Packet, Rational};

use super::atomic::PartialFile;
use super::scale::{fill_rgb_frame, Layout, Scaler};
use super::{ensure_init, ffmpeg_url};
use crate::RenderError;

/// The x264/x265 speed preset used unless a job says otherwise. `veryfast` encodes 704x384
/// far faster than real time on one core (see the `encode_bench` example) while costing
/// little size over slower presets at the CRFs jobs use.
pub const DEFAULT_PRESET: &str = "veryfast";

/// The video codec of segments and of the final MP4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    /// H.264 through libx264: plays everywhere.
    H264,
    /// HEVC through libx265: about half the size, slower to encode.
    Hevc,
}

impl VideoCodec {
    fn encoder_name(self) -> &'static str {
        match self {
            VideoCodec::H264 => "libx264",
            VideoCodec::Hevc => "libx265",
        }
    }
}

impl From<jobs::spec::Codec> for VideoCodec {
    fn from(codec: jobs::spec::Codec) -> VideoCodec {
        match codec {
            jobs::spec::Codec::H264 => VideoCodec::H264,
            jobs::spec::Codec::Hevc => VideoCodec::Hevc,
        }
    }
}

/// How a clip is encoded. Every segment of a job must use the same settings, or the final
/// mux refuses to join them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeSettings {
    /// Frame width in pixels; even, as 4:2:0 chroma needs.
    pub width: u32,
    /// Frame height in pixels; even.
    pub height: u32,
    /// Constant frame rate, frames per second.
    pub fps: u32,
    pub codec: VideoCodec,
    /// Constant rate factor, 0..=51: lower is better quality and larger files.
    pub crf: u8,
    /// Encoder speed preset (`ultrafast` .. `placebo`).
    pub preset: String,
    /// Encoder threads. Fixed rather than automatic, because the bytes an encoder produces
    /// depend on its thread count, and a resumed job must reproduce them exactly. 0 counts
    /// as 1.
    pub threads: usize,
}

impl EncodeSettings {
    /// Settings with the default preset and a single encoder thread.
    pub fn new(width: u32, height: u32, fps: u32, codec: VideoCodec, crf: u8) -> EncodeSettings {
        EncodeSettings {
            width,
            height,
            fps,
            codec,
            crf,
            preset: DEFAULT_PRESET.to_string(),
            threads: 1,
        }
    }

    fn check(&self, path: &Path) -> Result<(), RenderError> {
        let fail = |reason: String| {
            Err(RenderError::EncodeSettings {
                path: path.to_path_buf(),
                reason,
            })
        };
        let (w, h) = (self.width, self.height);
        if w == 0 || h == 0 || w % 2 == 1 || h % 2 == 1 || w > 16_384 || h > 16_384 {
            return fail(format!(
                "{w}x{h} is not a valid frame size: width and height must be even and between 2 and 16384; fix render.size"
            ));
        }
        if self.fps == 0 || self.fps > 1_000 {
            return fail(format!("{} fps is outside 1..=1000", self.fps));
        }
        if self.crf > 51 {
            return fail(format!(
                "crf {} is outside 0..=51; fix output.crf",
                self.crf
            ));
        }
        if self.preset.is_empty() || !self.preset.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return fail(format!("{:?} is not an encoder preset name", self.preset));
        }
        Ok(())
    }

    fn encoder_options(&self) -> Dictionary<'static> {
        let threads = self.threads.max(1);
        let mut options = Dictionary::new();
        options.set("preset", &self.preset);
        options.set("crf", &self.crf.to_string());
        if self.codec == VideoCodec::H264 {
            if let Some(asm) = x264_cpu_flags() {
                options.set("x264-params", &format!("asm={asm}"));
            }
        }
        if self.codec == VideoCodec::Hevc {
            // x265 ignores libavcodec's thread count and sizes its own pool from the machine;
            // pin it, and keep its informational banner off stderr.
            options.set(
                "x265-params",
                &format!("pools={threads}:frame-threads={threads}:log-level=error"),
            );
        }
        options
    }
}

/// The CPU instruction sets x264 may use: everything this CPU has, except AVX-512.
///
/// x264 164 (Debian 12) produces different bytes for the same frames when its AVX-512
/// routines are enabled, depending on what earlier encoders in the same process left in
/// freed memory: a worker that resumes a job would then encode its clips differently from
/// one that ran uninterrupted. Measured here: with AVX-512, 1 in 4 repeated encodes in one
/// process match; without it, all do. The AVX2 paths are nearly as fast. The list is built
/// from what the CPU reports, since naming an instruction set the CPU lacks would crash.
/// `None` off x86-64, where x264's own detection is used.
fn x264_cpu_flags() -> Option<String> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut flags = vec!["MMX2", "SSE", "SSE2", "SSE2Fast"];
        if std::arch::is_x86_feature_detected!("ssse3") {
            flags.push("SSSE3");
        }
        if std::arch::is_x86_feature_detected!("sse4.2") {
            flags.push("SSE4.2");
        }
        let avx = std::arch::is_x86_feature_detected!("avx");
        if avx {
            flags.push("AVX");
            if std::arch::is_x86_feature_detected!("fma") {
                flags.push("FMA3");
            }
            if std::arch::is_x86_feature_detected!("lzcnt")
                && std::arch::is_x86_feature_detected!("bmi1")
                && std::arch::is_x86_feature_detected!("bmi2")
            {
                flags.push("BMI2");
                // x264's "AVX2" level also implies FMA3, LZCNT, BMI1 and BMI2.
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    flags.push("AVX2");
                }
            }
        }
        Some(flags.join(","))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// What a finished segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub frames: u64,
    pub bytes: u64,
}

/// An open segment: push RGB frames, then [`ClipEncoder::finish`] to make it appear.
///
/// Dropping an encoder without finishing removes the partial file: the segment never
/// existed, and the clip will be rendered again.
pub struct ClipEncoder {
    // Field order is drop order: FFmpeg's handles close before the partial file is removed.
    output: ffmpeg::format::context::Output,
    encoder: encoder::Video,
    scaler: Scaler,
    rgb: frame::Video,
    settings: EncodeSettings,
    encoder_time_base: Rational,
    stream_time_base: Rational,
    frames_pushed: u64,
    packets_written: u64,
    partial: PartialFile,
    target: PathBuf,
}

impl ClipEncoder {
    /// Starts a segment that will appear at `path` (Matroska, whatever the extension) when
    /// finished.
    pub fn create(path: &Path, settings: &EncodeSettings) -> Result<ClipEncoder, RenderError> {
        ensure_init()?;
        settings.check(path)?;
        let fail = |reason: String| RenderError::Write {
            path: path.to_path_buf(),
            reason,
        };
        let partial = PartialFile::beside(path)?;
        let mut output =
            ffmpeg::format::output_as(&ffmpeg_url(&partial.partial_path())?, "matroska")
                .map_err(|e| fail(e.to_string()))?;

        let name = settings.codec.encoder_name();
        let codec = encoder::find_by_name(name).ok_or_else(|| RenderError::EncoderMissing {
            path: path.to_path_buf(),
            encoder: name,
        })?;
        let encoder_time_base = Rational::new(1, settings.fps as i32);
        let mut video = codec::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(|e| fail(e.to_string()))?;
        video.set_width(settings.width);
        video.set_height(settings.height);
        video.set_format(Pixel::YUV420P);
        video.set_time_base(encoder_time_base);
        video.set_frame_rate(Some(Rational::new(settings.fps as i32, 1)));
        // swscale converts with BT.601 coefficients into limited range; say so in the stream.
        video.set_colorspace(color::Space::BT470BG);
        video.set_color_range(color::Range::MPEG);
        video.set_threading(threading::Config {
            kind: threading::Type::Frame,
            count: settings.threads.max(1),
            ..Default::default()
        });
        video.set_flags(super::encoder_flags(&output));
        let encoder = video
            .open_as_with(codec, settings.encoder_options())
            .map_err(|e| RenderError::EncodeSettings {
                path: path.to_path_buf(),
                reason: format!(
                    "{name} refused preset {:?} / crf {}: {e}",
                    settings.preset, settings.crf
                ),
            })?;

        let mut stream = output.add_stream(codec).map_err(|e| fail(e.to_string()))?;
        stream.set_time_base(encoder_time_base);
        stream.set_avg_frame_rate(Rational::new(settings.fps as i32, 1));
        stream.set_parameters(&encoder);
        let mut header_options = Dictionary::new();
        // Bit-exact muxing leaves out the random segment UID, the date and version strings,
        // so identical frames give identical files.
        header_options.set("fflags", "+bitexact");
        output
            .write_header_with(header_options)
            .map_err(|e| fail(e.to_string()))?;
        let stream_time_base = output
            .stream(0)
            .map(|s| s.time_base())
            .ok_or_else(|| fail("the muxer lost its only stream".to_string()))?;

        let (w, h) = (settings.width, settings.height);
        let scaler = Scaler::new(
            Layout::new(Pixel::RGB24, w, h),
            false,
            Layout::new(Pixel::YUV420P, w, h),
            Flags::BILINEAR,
        )
        .map_err(|e| fail(format!("cannot set up RGB to YUV conversion: {e}")))?;
        Ok(ClipEncoder {
            output,
            encoder,
            scaler,
            rgb: frame::Video::new(Pixel::RGB24, w, h),
            settings: settings.clone(),
            encoder_time_base,
            stream_time_base,
            frames_pushed: 0,
            packets_written: 0,
            partial,
            target: path.to_path_buf(),
        })
    }

    /// Encodes one frame: packed RGB24, `width * height * 3` bytes, in display order.
    pub fn push_frame(&mut self, rgb: &[u8]) -> Result<(), RenderError> {
        let expected = self.settings.width as usize * self.settings.height as usize * 3;
        if rgb.len() != expected {
            return Err(RenderError::FrameSize {
                path: self.target.clone(),
                index: self.frames_pushed,
                expected,
                got: rgb.len(),
            });
        }
        fill_rgb_frame(&mut self.rgb, rgb);
        // A fresh YUV frame each time: the encoder may keep a reference to the last one.
        let mut yuv = frame::Video::empty();
        self.scaler
            .run(&self.rgb, &mut yuv)
            .map_err(|e| self.write_error(e))?;
        yuv.set_pts(Some(self.frames_pushed as i64));
        self.encoder
            .send_frame(&yuv)
            .map_err(|e| self.write_error(e))?;
        self.frames_pushed += 1;
        self.write_ready_packets()
    }

    /// Flushes the encoder, closes the file and renames it into place.
    pub fn finish(mut self) -> Result<SegmentInfo, RenderError> {
        if self.frames_pushed == 0 {
            return Err(RenderError::EncodeSettings {
                path: self.target.clone(),
                reason: "no frames were pushed; a segment needs at least one".to_string(),
            });
        }
        self.encoder.send_eof().map_err(|e| self.write_error(e))?;
        self.write_ready_packets()?;
        self.output
            .write_trailer()
            .map_err(|e| self.write_error(e))?;
        if self.packets_written != self.frames_pushed {
            return Err(RenderError::Write {
                path: self.target.clone(),
                reason: format!(
                    "the encoder returned {} packets for {} frames",
                    self.packets_written, self.frames_pushed
                ),
            });
        }
        let ClipEncoder {
            output,
            encoder,
            partial,
            frames_pushed,
            ..
        } = self;
        drop(encoder);
        drop(output);
        let bytes = partial.commit()?;
        Ok(SegmentInfo {
            frames: frames_pushed,
            bytes,
        })
    }

    /// Moves every packet the encoder has ready into the file.
    fn write_ready_packets(&mut self) -> Result<(), RenderError> {
        let mut packet = Packet::empty();
        loop {
            match super::receive_ready_packet(&mut self.encoder, &mut packet) {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) => return Err(self.write_error(e)),
            }
            packet.set_stream(0);
            packet.set_duration(1);
            packet.rescale_ts(self.encoder_time_base, self.stream_time_base);
            packet
                .write_interleaved(&mut self.output)
                .map_err(|e| self.write_error(e))?;
            self.packets_written += 1;
        }
    }

    fn write_error(&self, error: ffmpeg::Error) -> RenderError {
        RenderError::Write {
            path: self.target.clone(),
            reason: error.to_string(),
        }
    }
}

#[cfg(test)]
#[path = "encode_tests.rs"]
mod tests;
