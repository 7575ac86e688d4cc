//! Pixel-format conversion and resizing with libswscale, and packed RGB24 pictures.
//!
//! `ffmpeg-next`'s own scaler wrapper cannot say that a source is full-range YUV, so JPEGs
//! (decoded as the deprecated `yuvj*` formats) make swscale print a deprecation warning for
//! every image and, for decoders that tag range on the frame instead, would come out with
//! washed-out colours. This thin wrapper over the C API states the range explicitly. It is
//! also `Send`, so a [`super::ClipEncoder`] can live on an encoding thread.

use std::ptr::NonNull;

use ffmpeg_next as ffmpeg;
use ffmpeg_next::ffi;
use ffmpeg_next::format::Pixel;
use ffmpeg_next::frame;
use ffmpeg_next::software::scaling::Flags;

/// A picture as packed RGB24 rows without padding: `pixels.len() == width * height * 3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl RgbImage {
    pub(crate) fn row(&self, y: u32) -> &[u8] {
        let stride = self.width as usize * 3;
        &self.pixels[y as usize * stride..(y as usize + 1) * stride]
    }
}

/// One configured swscale context: fixed input and output size and format.
pub(crate) struct Scaler {
    ctx: NonNull<ffi::SwsContext>,
    src: Layout,
    dst: Layout,
}

/// The pixel format and size of one side of a conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub format: Pixel,
    pub width: u32,
    pub height: u32,
}

impl Layout {
    pub(crate) fn new(format: Pixel, width: u32, height: u32) -> Layout {
        Layout {
            format,
            width,
            height,
        }
    }
}

// SAFETY: an SwsContext has no thread affinity; it must only not be used from two threads at
// once, which `&mut self` on every use already guarantees.
unsafe impl Send for Scaler {}

impl Scaler {
    /// A scaler from the `src` picture layout to the `dst` one.
    ///
    /// `src_full_range` marks YUV input that uses 0..255 rather than 16..235 (JPEG); the
    /// `yuvj*` formats imply it. Output YUV is always limited range, as encoders expect.
    pub(crate) fn new(
        src: Layout,
        src_full_range: bool,
        dst: Layout,
        flags: Flags,
    ) -> Result<Scaler, ffmpeg::Error> {
        let (src_format, jpeg_range) = without_jpeg_alias(src.format);
        let dims =
            [src.width, src.height, dst.width, dst.height].map(|d| i32::try_from(d).unwrap_or(-1));
        if dims.iter().any(|&d| d <= 0) {
            return Err(ffmpeg::Error::InvalidData);
        }
        // SAFETY: plain C constructor; null filters and params select the defaults.
        let raw = unsafe {
            ffi::sws_getContext(
                dims[0],
                dims[1],
                src_format.into(),
                dims[2],
                dims[3],
                dst.format.into(),
                flags.bits(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null(),
            )
        };
        let ctx = NonNull::new(raw).ok_or(ffmpeg::Error::InvalidData)?;
        let scaler = Scaler { ctx, src, dst };
        if src_full_range || jpeg_range {
            scaler.set_source_full_range()?;
        }
        Ok(scaler)
    }

    fn set_source_full_range(&self) -> Result<(), ffmpeg::Error> {
        // SAFETY: the context is live; the coefficient tables are static data in libswscale.
        let result = unsafe {
            let table = ffi::sws_getCoefficients(ffi::SWS_CS_DEFAULT);
            ffi::sws_setColorspaceDetails(
                self.ctx.as_ptr(),
                table,
                1,
                table,
                0,
                0,
                1 << 16,
                1 << 16,
            )
        };
        // swscale returns -1 for RGB-to-RGB contexts, where range does not apply.
        match result {
            r if r >= 0 || r == -1 => Ok(()),
            r => Err(ffmpeg::Error::from(r)),
        }
    }

    /// Converts `src` into `dst`, allocating `dst` on first use.
    pub(crate) fn run(
        &mut self,
        src: &frame::Video,
        dst: &mut frame::Video,
    ) -> Result<(), ffmpeg::Error> {
        if (src.width(), src.height()) != (self.src.width, self.src.height) {
            return Err(ffmpeg::Error::InputChanged);
        }
        let Layout {
            format,
            width,
            height,
        } = self.dst;
        // SAFETY: `is_empty` and `alloc` only inspect and fill the frame this wrapper owns.
        unsafe {
            if dst.is_empty() {
                dst.alloc(format, width, height);
            }
        }
        if Layout::new(dst.format(), dst.width(), dst.height()) != self.dst {
            return Err(ffmpeg::Error::OutputChanged);
        }
        // SAFETY: both frames hold buffers of the sizes and formats this context was made for
        // (checked above), and their plane pointers and line sizes come from FFmpeg itself.
        let rows = unsafe {
            let src_ptr = src.as_ptr();
            let dst_ptr = dst.as_mut_ptr();
            ffi::sws_scale(
                self.ctx.as_ptr(),
                (*src_ptr).data.as_ptr() as *const *const u8,
                (*src_ptr).linesize.as_ptr(),
                0,
                self.src.height as i32,
                (*dst_ptr).data.as_ptr(),
                (*dst_ptr).linesize.as_ptr(),
            )
        };
        if rows < 0 {
            return Err(ffmpeg::Error::from(rows));
        }
        Ok(())
    }
}

impl Drop for Scaler {
    fn drop(&mut self) {
        // SAFETY: the context was created by sws_getContext and is freed exactly once.
        unsafe { ffi::sws_freeContext(self.ctx.as_ptr()) }
    }
}

/// Maps the deprecated full-range `yuvj*` formats to their plain twins plus a range flag.
fn without_jpeg_alias(format: Pixel) -> (Pixel, bool) {
    match format {
        Pixel::YUVJ420P => (Pixel::YUV420P, true),
        Pixel::YUVJ422P => (Pixel::YUV422P, true),
        Pixel::YUVJ444P => (Pixel::YUV444P, true),
        Pixel::YUVJ440P => (Pixel::YUV440P, true),
        Pixel::YUVJ411P => (Pixel::YUV411P, true),
        other => (other, false),
    }
}

/// Copies packed RGB24 rows into an RGB24 frame, whose rows may be padded.
pub(crate) fn fill_rgb_frame(frame: &mut frame::Video, pixels: &[u8]) {
    let row_bytes = frame.width() as usize * 3;
    let stride = frame.stride(0);
    let data = frame.data_mut(0);
    for (y, row) in pixels.chunks_exact(row_bytes).enumerate() {
        data[y * stride..y * stride + row_bytes].copy_from_slice(row);
    }
}

/// Reads an RGB24 frame back as packed rows.
pub(crate) fn rgb_image_from_frame(frame: &frame::Video) -> RgbImage {
    let (width, height) = (frame.width(), frame.height());
    let row_bytes = width as usize * 3;
    let stride = frame.stride(0);
    let data = frame.data(0);
    let mut pixels = Vec::with_capacity(row_bytes * height as usize);
    for y in 0..height as usize {
        pixels.extend_from_slice(&data[y * stride..y * stride + row_bytes]);
    }
    RgbImage {
        width,
        height,
        pixels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_range_yuv_black_and_white_map_to_rgb_extremes() {
        let mut yuv = frame::Video::new(Pixel::YUVJ444P, 2, 2);
        for (plane, value) in [(0, 0u8), (1, 128), (2, 128)] {
            yuv.data_mut(plane).fill(value);
        }
        let stride = yuv.stride(0);
        yuv.data_mut(0)[stride] = 255; // second row, first pixel: white
        let mut scaler = Scaler::new(
            Layout::new(Pixel::YUVJ444P, 2, 2),
            false,
            Layout::new(Pixel::RGB24, 2, 2),
            Flags::POINT,
        )
        .unwrap();
        let mut rgb = frame::Video::empty();
        scaler.run(&yuv, &mut rgb).unwrap();
        let image = rgb_image_from_frame(&rgb);
        assert_eq!(&image.row(0)[..3], &[0, 0, 0]);
        assert_eq!(&image.row(1)[..3], &[255, 255, 255]);
    }

    #[test]
    fn rgb_rows_survive_a_round_trip_through_a_padded_frame() {
        let pixels: Vec<u8> = (0..5 * 3 * 3).map(|i| i as u8).collect();
        let mut frame = frame::Video::new(Pixel::RGB24, 5, 3);
        assert!(frame.stride(0) >= 15);
        fill_rgb_frame(&mut frame, &pixels);
        assert_eq!(rgb_image_from_frame(&frame).pixels, pixels);
    }

    #[test]
    fn run_refuses_a_frame_of_another_size() {
        let mut scaler = Scaler::new(
            Layout::new(Pixel::RGB24, 4, 4),
            false,
            Layout::new(Pixel::YUV420P, 4, 4),
            Flags::BILINEAR,
        )
        .unwrap();
        let wrong = frame::Video::new(Pixel::RGB24, 8, 4);
        let mut out = frame::Video::empty();
        assert!(scaler.run(&wrong, &mut out).is_err());
    }
}
