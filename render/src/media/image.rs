//! The reference image: decoded, turned upright, and fitted to the render size.
//!
//! The model needs exactly `width`x`height` RGB pixels of an upright face. Portraits arrive
//! in every shape, so the picture is scaled to *cover* the target and the overflow cropped
//! evenly from both sides: the subject, usually centred, keeps its proportions and no black
//! bars are invented for the model to animate.

use std::path::Path;

use ffmpeg_next as ffmpeg;
use ffmpeg_next::format::Pixel;
use ffmpeg_next::software::scaling::Flags;
use ffmpeg_next::util::color::Range;
use ffmpeg_next::{codec, frame, media};

use super::orientation::Orientation;
use super::scale::{fill_rgb_frame, rgb_image_from_frame, Layout, RgbImage, Scaler};
use super::{ensure_init, ffmpeg_url};
use crate::RenderError;

/// Pictures above this many pixels are refused rather than decoded into gigabytes of RGB.
const MAX_SOURCE_PIXELS: u64 = 100_000_000;

/// Loads the picture at `path` as `width`x`height` packed RGB24 (`width * height * 3` bytes).
///
/// Reads whatever FFmpeg decodes (PNG, JPEG, WebP, BMP, ...), including grayscale, palette,
/// RGBA (laid over white) and CMYK JPEGs; applies the EXIF orientation; scales to cover the
/// target and centre-crops.
pub fn load_reference_image(path: &Path, width: u32, height: u32) -> Result<Vec<u8>, RenderError> {
    if width == 0 || height == 0 {
        return Err(RenderError::ImageSize {
            path: path.to_path_buf(),
            width,
            height,
        });
    }
    ensure_init()?;
    let fail = |reason: String| RenderError::ImageDecode {
        path: path.to_path_buf(),
        reason,
    };
    let picture = decode_first_picture(path)?;
    let pixels = u64::from(picture.width()) * u64::from(picture.height());
    if pixels > MAX_SOURCE_PIXELS {
        return Err(fail(format!(
            "it is {}x{} pixels, more than the {MAX_SOURCE_PIXELS} allowed; scale it down",
            picture.width(),
            picture.height()
        )));
    }
    let rgb = to_rgb(&picture).map_err(|e| {
        fail(format!(
            "cannot convert its {:?} pixels to RGB: {e}",
            picture.format()
        ))
    })?;
    let upright = Orientation::of_frame(&picture).apply(rgb);
    cover_and_crop(&upright, width, height)
        .map_err(|e| fail(format!("cannot scale it to {width}x{height}: {e}")))
}

/// What intake checks of a reference image before the job may wait in the queue: a PNG must
/// hold every chunk its headers announce up to `IEND` (a truncated upload is refused with the
/// byte where it ends), and the first picture must decode. Returns its width and height.
pub fn check_image(path: &Path) -> Result<(u32, u32), RenderError> {
    ensure_init()?;
    check_png_chunks(path)?;
    let picture = decode_first_picture(path)?;
    Ok((picture.width(), picture.height()))
}

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// Walks a PNG's chunks (length, type, data, CRC) to `IEND` without reading their data; a file
/// that is not a PNG passes (FFmpeg judges it).
fn check_png_chunks(path: &Path) -> Result<(), RenderError> {
    use std::io::{Read, Seek, SeekFrom};
    let fail = |reason: String| RenderError::ImageDecode {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let size = file.metadata().map_err(|e| fail(e.to_string()))?.len();
    let mut signature = [0u8; 8];
    if file.read_exact(&mut signature).is_err() || signature != PNG_SIGNATURE {
        return Ok(());
    }
    let mut at = 8u64;
    loop {
        let mut header = [0u8; 8];
        if file.read_exact(&mut header).is_err() {
            return Err(fail(format!(
                "the PNG is truncated: it ends at byte {size} before its IEND chunk; upload the whole file again"
            )));
        }
        let length = u64::from(u32::from_be_bytes([
            header[0], header[1], header[2], header[3],
        ]));
        let kind = String::from_utf8_lossy(&header[4..8]).into_owned();
        let end = at + 8 + length + 4;
        if end > size {
            return Err(fail(format!(
                "the PNG is truncated: its `{kind}` chunk at byte {at} needs {} bytes but the file ends at byte {size}; upload the whole file again",
                end - at
            )));
        }
        if kind == "IEND" {
            return Ok(());
        }
        at = end;
        file.seek(SeekFrom::Start(at))
            .map_err(|e| fail(e.to_string()))?;
    }
}

/// Decodes the first picture of the first video stream (an image file is a one-frame video
/// to FFmpeg).
fn decode_first_picture(path: &Path) -> Result<frame::Video, RenderError> {
    let fail = |reason: String| RenderError::ImageDecode {
        path: path.to_path_buf(),
        reason,
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() == 0 => return Err(fail("the file is empty".to_string())),
        Ok(_) => {}
        Err(e) => return Err(fail(e.to_string())),
    }
    let mut input = ffmpeg::format::input(&ffmpeg_url(path)?).map_err(|e| fail(e.to_string()))?;
    let stream = input
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| fail("it holds no picture".to_string()))?;
    let index = stream.index();
    let mut decoder = codec::Context::from_parameters(stream.parameters())
        .and_then(|c| c.decoder().video())
        .map_err(|e| fail(e.to_string()))?;

    let mut picture = frame::Video::empty();
    let mut last_error = None;
    for (stream, packet) in input.packets() {
        if stream.index() != index {
            continue;
        }
        if let Err(e) = decoder.send_packet(&packet) {
            last_error = Some(e);
            continue;
        }
        if decoder.receive_frame(&mut picture).is_ok() {
            return Ok(picture);
        }
    }
    // Decoders with a delay hold the picture until told the input has ended.
    if decoder.send_eof().is_ok() && decoder.receive_frame(&mut picture).is_ok() {
        return Ok(picture);
    }
    Err(fail(match last_error {
        Some(e) => e.to_string(),
        None => "no picture could be decoded from it".to_string(),
    }))
}

/// Converts a decoded picture of any pixel format to RGB24 at its own size.
///
/// Transparent pictures are laid over white, as image viewers show them: dropping the alpha
/// channel instead would reveal whatever colour the transparent pixels happen to hold
/// (often black), and the model would animate a portrait against it.
pub(super) fn to_rgb(picture: &frame::Video) -> Result<RgbImage, ffmpeg::Error> {
    let (w, h) = (picture.width(), picture.height());
    let has_alpha = picture.format().descriptor().is_some_and(|d| {
        // SAFETY: descriptors are static tables inside libavutil.
        let flags = unsafe { (*d.as_ptr()).flags };
        flags & ffmpeg::ffi::AV_PIX_FMT_FLAG_ALPHA as u64 != 0
    });
    let target = if has_alpha { Pixel::RGBA } else { Pixel::RGB24 };
    let mut scaler = Scaler::new(
        Layout::new(picture.format(), w, h),
        picture.color_range() == Range::JPEG,
        Layout::new(target, w, h),
        Flags::BICUBIC | Flags::ACCURATE_RND | Flags::FULL_CHR_H_INT,
    )?;
    let mut converted = frame::Video::empty();
    scaler.run(picture, &mut converted)?;
    if !has_alpha {
        return Ok(rgb_image_from_frame(&converted));
    }
    let stride = converted.stride(0);
    let data = converted.data(0);
    let mut pixels = Vec::with_capacity(w as usize * h as usize * 3);
    for y in 0..h as usize {
        for rgba in data[y * stride..y * stride + w as usize * 4].chunks_exact(4) {
            let alpha = u32::from(rgba[3]);
            for &channel in &rgba[..3] {
                let over_white = (u32::from(channel) * alpha + 255 * (255 - alpha) + 127) / 255;
                pixels.push(over_white as u8);
            }
        }
    }
    Ok(RgbImage {
        width: w,
        height: h,
        pixels,
    })
}

/// The region of a `src_w`x`src_h` picture that has the target's aspect ratio and is as
/// large as possible, centred: `(x, y, width, height)`.
fn centre_crop(src_w: u32, src_h: u32, width: u32, height: u32) -> (u32, u32, u32, u32) {
    let (sw, sh, w, h) = (
        u64::from(src_w),
        u64::from(src_h),
        u64::from(width),
        u64::from(height),
    );
    if sw * h > w * sh {
        // Wider than the target: keep the full height, trim the sides.
        let crop_w = ((sh * w + h / 2) / h).clamp(1, sw) as u32;
        ((src_w - crop_w) / 2, 0, crop_w, src_h)
    } else {
        // Taller (or the same shape): keep the full width, trim top and bottom.
        let crop_h = ((sw * h + w / 2) / w).clamp(1, sh) as u32;
        (0, (src_h - crop_h) / 2, src_w, crop_h)
    }
}

/// Scales `image` to cover `width`x`height` and crops the centre.
fn cover_and_crop(image: &RgbImage, width: u32, height: u32) -> Result<Vec<u8>, ffmpeg::Error> {
    let (x, y, crop_w, crop_h) = centre_crop(image.width, image.height, width, height);
    let mut cropped = Vec::with_capacity(crop_w as usize * crop_h as usize * 3);
    for row in y..y + crop_h {
        let start = x as usize * 3;
        cropped.extend_from_slice(&image.row(row)[start..start + crop_w as usize * 3]);
    }
    if (crop_w, crop_h) == (width, height) {
        return Ok(cropped);
    }
    let mut source = frame::Video::new(Pixel::RGB24, crop_w, crop_h);
    fill_rgb_frame(&mut source, &cropped);
    let mut scaler = Scaler::new(
        Layout::new(Pixel::RGB24, crop_w, crop_h),
        false,
        Layout::new(Pixel::RGB24, width, height),
        Flags::BICUBIC | Flags::ACCURATE_RND,
    )?;
    let mut scaled = frame::Video::empty();
    scaler.run(&source, &mut scaled)?;
    Ok(rgb_image_from_frame(&scaled).pixels)
}

#[cfg(test)]
#[path = "image_tests.rs"]
mod tests;
