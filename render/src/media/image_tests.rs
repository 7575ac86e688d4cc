use std::path::{Path, PathBuf};

use super::*;
use crate::media::test_support::{assert_close, ffmpeg, write_ppm};

const RED: [u8; 3] = [255, 0, 0];
const GREEN: [u8; 3] = [0, 255, 0];
const BLUE: [u8; 3] = [0, 0, 255];
const WHITE: [u8; 3] = [255, 255, 255];

fn at(rgb: &[u8], width: u32, x: u32, y: u32) -> &[u8] {
    let i = ((y * width + x) * 3) as usize;
    &rgb[i..i + 3]
}

/// Vertical stripes, 100 pixels each: red, green, blue, white.
fn four_stripes(x: u32, _y: u32) -> [u8; 3] {
    [RED, GREEN, BLUE, WHITE][(x / 100) as usize]
}

/// Quadrants: red top left, green top right, blue bottom left, white bottom right.
fn quadrants(w: u32, h: u32) -> impl Fn(u32, u32) -> [u8; 3] {
    move |x, y| match (x < w / 2, y < h / 2) {
        (true, true) => RED,
        (false, true) => GREEN,
        (true, false) => BLUE,
        (false, false) => WHITE,
    }
}

/// Writes a PPM and converts it with the ffmpeg CLI into `name` (format from its extension).
fn make_image(
    dir: &Path,
    name: &str,
    w: u32,
    h: u32,
    pixel: impl Fn(u32, u32) -> [u8; 3],
    ffmpeg_args: &[&str],
) -> PathBuf {
    let ppm = dir.join(format!("{name}.ppm"));
    write_ppm(&ppm, w, h, pixel);
    let out = dir.join(name);
    let mut args = vec!["-i", ppm.to_str().unwrap()];
    args.extend_from_slice(ffmpeg_args);
    args.push(out.to_str().unwrap());
    ffmpeg(&args);
    out
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A big-endian EXIF APP1 segment holding one IFD entry: Orientation (0x0112) = `value`.
fn exif_orientation_segment(value: u16) -> Vec<u8> {
    let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // tag: Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // type: SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // count
    tiff.extend_from_slice(&value.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]); // value field padding
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut payload = b"Exif\x00\x00".to_vec();
    payload.extend_from_slice(&tiff);
    let mut segment = vec![0xff, 0xe1];
    segment.extend_from_slice(&(payload.len() as u16 + 2).to_be_bytes());
    segment.extend_from_slice(&payload);
    segment
}

#[test]
fn wide_png_is_cropped_to_its_centre_not_squashed() {
    let dir = tempfile::tempdir().unwrap();
    let png = make_image(dir.path(), "wide.png", 400, 100, four_stripes, &[]);
    // 2:1 target: the centre 200x100 of the source (green and blue) fills it.
    let rgb = load_reference_image(&png, 100, 50).unwrap();
    assert_eq!(rgb.len(), 100 * 50 * 3);
    assert_close(at(&rgb, 100, 0, 25), GREEN, 2, "left edge");
    assert_close(at(&rgb, 100, 25, 25), GREEN, 2, "left half");
    assert_close(at(&rgb, 100, 75, 25), BLUE, 2, "right half");
    assert_close(at(&rgb, 100, 99, 25), BLUE, 2, "right edge");
}

#[test]
fn tall_png_is_cropped_top_and_bottom() {
    let dir = tempfile::tempdir().unwrap();
    let png = make_image(
        dir.path(),
        "tall.png",
        100,
        400,
        |x, y| four_stripes(y, x),
        &[],
    );
    let rgb = load_reference_image(&png, 50, 100).unwrap();
    assert_close(at(&rgb, 50, 25, 0), GREEN, 2, "top edge");
    assert_close(at(&rgb, 50, 25, 25), GREEN, 2, "upper half");
    assert_close(at(&rgb, 50, 25, 75), BLUE, 2, "lower half");
    assert_close(at(&rgb, 50, 25, 99), BLUE, 2, "bottom edge");
}

#[test]
fn small_picture_is_scaled_up_to_cover_the_target() {
    let dir = tempfile::tempdir().unwrap();
    // 40x20 with a red left and blue right half, into a square 80x80: the centre 20x20
    // (half red, half blue) is scaled up four times.
    let png = make_image(
        dir.path(),
        "small.png",
        40,
        20,
        |x, _| if x < 20 { RED } else { BLUE },
        &[],
    );
    let rgb = load_reference_image(&png, 80, 80).unwrap();
    assert_eq!(rgb.len(), 80 * 80 * 3);
    assert_close(at(&rgb, 80, 5, 5), RED, 2, "top left");
    assert_close(at(&rgb, 80, 5, 75), RED, 2, "bottom left");
    assert_close(at(&rgb, 80, 75, 40), BLUE, 2, "right");
}

#[test]
fn jpeg_with_exif_orientation_6_is_turned_clockwise() {
    let dir = tempfile::tempdir().unwrap();
    let plain = make_image(
        dir.path(),
        "plain.jpg",
        64,
        32,
        quadrants(64, 32),
        &["-q:v", "2"],
    );
    let bytes = std::fs::read(&plain).unwrap();
    assert_eq!(&bytes[..2], [0xff, 0xd8], "ffmpeg wrote a JPEG");
    let mut tagged = bytes[..2].to_vec();
    tagged.extend_from_slice(&exif_orientation_segment(6));
    tagged.extend_from_slice(&bytes[2..]);
    let jpeg = dir.path().join("rotated.jpg");
    std::fs::write(&jpeg, tagged).unwrap();

    // Turned clockwise, the 64x32 picture is 32x64: what was the left column is now the top
    // row, so the quadrants read blue red / white green.
    let rgb = load_reference_image(&jpeg, 32, 64).unwrap();
    assert_close(at(&rgb, 32, 8, 16), BLUE, 40, "top left");
    assert_close(at(&rgb, 32, 24, 16), RED, 40, "top right");
    assert_close(at(&rgb, 32, 8, 48), WHITE, 40, "bottom left");
    assert_close(at(&rgb, 32, 24, 48), GREEN, 40, "bottom right");
}

#[test]
fn jpeg_without_exif_keeps_its_orientation() {
    let dir = tempfile::tempdir().unwrap();
    let jpeg = make_image(
        dir.path(),
        "plain.jpg",
        64,
        32,
        quadrants(64, 32),
        &["-q:v", "2"],
    );
    let rgb = load_reference_image(&jpeg, 64, 32).unwrap();
    assert_close(at(&rgb, 64, 16, 8), RED, 40, "top left");
    assert_close(at(&rgb, 64, 48, 8), GREEN, 40, "top right");
    assert_close(at(&rgb, 64, 16, 24), BLUE, 40, "bottom left");
    assert_close(at(&rgb, 64, 48, 24), WHITE, 40, "bottom right");
}

#[test]
fn grayscale_png_becomes_equal_rgb_channels() {
    let dir = tempfile::tempdir().unwrap();
    let png = make_image(
        dir.path(),
        "gray.png",
        32,
        16,
        |x, _| if x < 16 { [50; 3] } else { [200; 3] },
        &["-pix_fmt", "gray"],
    );
    let rgb = load_reference_image(&png, 32, 16).unwrap();
    assert_close(at(&rgb, 32, 4, 8), [50; 3], 1, "dark half");
    assert_close(at(&rgb, 32, 28, 8), [200; 3], 1, "light half");
}

#[test]
fn grayscale_jpeg_becomes_equal_rgb_channels() {
    let rgb = load_reference_image(&fixture("gray-halves.jpg"), 32, 16).unwrap();
    assert_close(at(&rgb, 32, 4, 8), [50; 3], 3, "dark half");
    assert_close(at(&rgb, 32, 28, 8), [200; 3], 3, "light half");
}

#[test]
fn cmyk_jpeg_is_converted_to_rgb() {
    let rgb = load_reference_image(&fixture("cmyk-quadrants.jpg"), 32, 32).unwrap();
    assert_close(at(&rgb, 32, 8, 8), RED, 12, "top left");
    assert_close(at(&rgb, 32, 24, 8), GREEN, 12, "top right");
    assert_close(at(&rgb, 32, 8, 24), BLUE, 12, "bottom left");
    assert_close(at(&rgb, 32, 24, 24), WHITE, 12, "bottom right");
}

#[test]
fn palette_png_is_expanded_to_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let png = make_image(
        dir.path(),
        "pal.png",
        32,
        32,
        quadrants(32, 32),
        &["-pix_fmt", "pal8"],
    );
    // ffmpeg's own conversion to a 256-colour palette may shift colours by a few levels.
    let rgb = load_reference_image(&png, 32, 32).unwrap();
    assert_close(at(&rgb, 32, 8, 8), RED, 8, "top left");
    assert_close(at(&rgb, 32, 24, 24), WHITE, 8, "bottom right");
}

#[test]
fn rgba_png_keeps_its_colours() {
    let dir = tempfile::tempdir().unwrap();
    let png = make_image(
        dir.path(),
        "rgba.png",
        32,
        32,
        quadrants(32, 32),
        &["-pix_fmt", "rgba"],
    );
    let rgb = load_reference_image(&png, 32, 32).unwrap();
    assert_close(at(&rgb, 32, 24, 8), GREEN, 2, "top right");
    assert_close(at(&rgb, 32, 8, 24), BLUE, 2, "bottom left");
}

#[test]
fn transparent_pixels_are_laid_over_white() {
    let dir = tempfile::tempdir().unwrap();
    // Left half: opaque red. Right half: fully transparent, hiding a blue colour value.
    // ffmpeg makes the alpha from a PPM of the mask with alphamerge.
    let colour = dir.path().join("colour.ppm");
    write_ppm(&colour, 32, 16, |x, _| if x < 16 { RED } else { BLUE });
    let mask = dir.path().join("mask.ppm");
    write_ppm(&mask, 32, 16, |x, _| if x < 16 { [255; 3] } else { [0; 3] });
    let png = dir.path().join("cutout.png");
    ffmpeg(&[
        "-i",
        colour.to_str().unwrap(),
        "-i",
        mask.to_str().unwrap(),
        "-filter_complex",
        "[1:v]format=gray[a];[0:v][a]alphamerge,format=rgba",
        png.to_str().unwrap(),
    ]);
    let rgb = load_reference_image(&png, 32, 16).unwrap();
    assert_close(at(&rgb, 32, 4, 8), RED, 2, "opaque half");
    assert_close(at(&rgb, 32, 28, 8), WHITE, 2, "transparent half");
}

#[test]
fn lossless_webp_decodes_to_its_colours() {
    let dir = tempfile::tempdir().unwrap();
    let webp = make_image(
        dir.path(),
        "q.webp",
        32,
        32,
        quadrants(32, 32),
        &["-c:v", "libwebp", "-lossless", "1"],
    );
    let rgb = load_reference_image(&webp, 32, 32).unwrap();
    assert_close(at(&rgb, 32, 8, 8), RED, 2, "top left");
    assert_close(at(&rgb, 32, 24, 8), GREEN, 2, "top right");
    assert_close(at(&rgb, 32, 8, 24), BLUE, 2, "bottom left");
    assert_close(at(&rgb, 32, 24, 24), WHITE, 2, "bottom right");
}

#[test]
fn corrupt_file_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("face.png");
    std::fs::write(&path, b"\x89PNG\r\n\x1a\n this is not really a png at all").unwrap();
    let err = load_reference_image(&path, 64, 64).unwrap_err();
    assert!(matches!(err, RenderError::ImageDecode { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains(path.to_str().unwrap()), "{message}");
    assert!(message.contains("convert it to PNG or JPEG"), "{message}");
}

#[test]
fn empty_file_is_an_error_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("face.jpg");
    std::fs::write(&path, b"").unwrap();
    let message = load_reference_image(&path, 64, 64).unwrap_err().to_string();
    assert!(message.contains("empty"), "{message}");
    assert!(message.contains(path.to_str().unwrap()), "{message}");
}

#[test]
fn missing_file_is_an_error_naming_the_file() {
    let path = Path::new("/nonexistent/reelspool/face.png");
    let message = load_reference_image(path, 64, 64).unwrap_err().to_string();
    assert!(
        message.contains("/nonexistent/reelspool/face.png"),
        "{message}"
    );
}

#[test]
fn zero_target_size_is_refused() {
    let err = load_reference_image(Path::new("/any.png"), 0, 64).unwrap_err();
    assert!(matches!(err, RenderError::ImageSize { .. }), "{err}");
}

#[test]
fn centre_crop_keeps_the_target_aspect_ratio() {
    assert_eq!(centre_crop(400, 100, 100, 50), (100, 0, 200, 100));
    assert_eq!(centre_crop(100, 400, 50, 100), (0, 100, 100, 200));
    assert_eq!(centre_crop(704, 384, 704, 384), (0, 0, 704, 384));
    assert_eq!(centre_crop(1920, 1080, 704, 384), (0, 16, 1920, 1047));
}

#[test]
fn a_truncated_png_is_refused_with_where_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let whole = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/portrait.png");
    let bytes = std::fs::read(&whole).unwrap();
    assert!(check_image(&whole).is_ok(), "the whole file passes");
    // Cut inside the image data, and cut just before IEND: both refused.
    for keep in [bytes.len() / 2, bytes.len() - 12] {
        let cut = dir.path().join(format!("cut-{keep}.png"));
        std::fs::write(&cut, &bytes[..keep]).unwrap();
        let err = check_image(&cut).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        assert!(err.contains(&format!("{keep}")), "{err}");
    }
}
