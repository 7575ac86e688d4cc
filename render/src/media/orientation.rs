//! EXIF orientation: phones store portraits sideways and set a tag saying how to turn them.
//!
//! Ignoring the tag would hand the model a face lying on its side. FFmpeg 5.1's JPEG decoder
//! copies the EXIF fields into the decoded frame's metadata (`Orientation`, as a
//! space-padded number) and also attaches a display matrix; the tag is the simpler of the two
//! and carries the mirrored cases too, so that is what is read here.

use ffmpeg_next::frame;

use super::scale::RgbImage;

/// The eight EXIF orientations, named by what must be done to show the picture upright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Orientation {
    /// 1: already upright.
    Upright,
    /// 2: mirrored left to right.
    MirrorHorizontal,
    /// 3: upside down.
    Rotate180,
    /// 4: mirrored top to bottom.
    MirrorVertical,
    /// 5: mirrored along the main diagonal.
    Transpose,
    /// 6: must be turned 90° clockwise.
    Rotate90Clockwise,
    /// 7: mirrored along the anti-diagonal.
    Transverse,
    /// 8: must be turned 90° counter-clockwise.
    Rotate90CounterClockwise,
}

impl Orientation {
    /// The orientation from an EXIF tag value; unknown values count as upright, as viewers do.
    pub(crate) fn from_exif(value: u16) -> Orientation {
        match value {
            2 => Orientation::MirrorHorizontal,
            3 => Orientation::Rotate180,
            4 => Orientation::MirrorVertical,
            5 => Orientation::Transpose,
            6 => Orientation::Rotate90Clockwise,
            7 => Orientation::Transverse,
            8 => Orientation::Rotate90CounterClockwise,
            _ => Orientation::Upright,
        }
    }

    /// The orientation the decoder found in the picture's EXIF data, if any.
    pub(crate) fn of_frame(frame: &frame::Video) -> Orientation {
        frame
            .metadata()
            .get("Orientation")
            .and_then(|v| v.trim().parse::<u16>().ok())
            .map_or(Orientation::Upright, Orientation::from_exif)
    }

    /// Turns `image` upright.
    pub(crate) fn apply(self, image: RgbImage) -> RgbImage {
        if self == Orientation::Upright {
            return image;
        }
        let (w, h) = (image.width as usize, image.height as usize);
        let swaps_axes = matches!(
            self,
            Orientation::Transpose
                | Orientation::Rotate90Clockwise
                | Orientation::Transverse
                | Orientation::Rotate90CounterClockwise
        );
        let (out_w, out_h) = if swaps_axes { (h, w) } else { (w, h) };
        let mut pixels = Vec::with_capacity(image.pixels.len());
        for y in 0..out_h {
            for x in 0..out_w {
                // The source pixel that lands at (x, y) of the upright picture.
                let (sx, sy) = match self {
                    Orientation::Upright => (x, y),
                    Orientation::MirrorHorizontal => (w - 1 - x, y),
                    Orientation::Rotate180 => (w - 1 - x, h - 1 - y),
                    Orientation::MirrorVertical => (x, h - 1 - y),
                    Orientation::Transpose => (y, x),
                    Orientation::Rotate90Clockwise => (y, h - 1 - x),
                    Orientation::Transverse => (w - 1 - y, h - 1 - x),
                    Orientation::Rotate90CounterClockwise => (w - 1 - y, x),
                };
                let at = (sy * w + sx) * 3;
                pixels.extend_from_slice(&image.pixels[at..at + 3]);
            }
        }
        RgbImage {
            width: out_w as u32,
            height: out_h as u32,
            pixels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3x2 picture whose pixels are numbered 1..=6 row by row (in the red channel):
    /// ```text
    /// 1 2 3
    /// 4 5 6
    /// ```
    fn numbered() -> RgbImage {
        RgbImage {
            width: 3,
            height: 2,
            pixels: (1..=6u8).flat_map(|n| [n, 0, 0]).collect(),
        }
    }

    fn reds(image: &RgbImage) -> Vec<u8> {
        image.pixels.chunks(3).map(|p| p[0]).collect()
    }

    #[test]
    fn rotate_90_clockwise_turns_rows_into_columns_from_the_right() {
        let out = Orientation::from_exif(6).apply(numbered());
        assert_eq!((out.width, out.height), (2, 3));
        assert_eq!(reds(&out), [4, 1, 5, 2, 6, 3]);
    }

    #[test]
    fn rotate_90_counter_clockwise_turns_rows_into_columns_from_the_left() {
        let out = Orientation::from_exif(8).apply(numbered());
        assert_eq!((out.width, out.height), (2, 3));
        assert_eq!(reds(&out), [3, 6, 2, 5, 1, 4]);
    }

    #[test]
    fn rotate_180_reverses_the_pixel_order() {
        let out = Orientation::from_exif(3).apply(numbered());
        assert_eq!(reds(&out), [6, 5, 4, 3, 2, 1]);
    }

    #[test]
    fn mirrors_flip_one_axis() {
        assert_eq!(
            reds(&Orientation::from_exif(2).apply(numbered())),
            [3, 2, 1, 6, 5, 4]
        );
        assert_eq!(
            reds(&Orientation::from_exif(4).apply(numbered())),
            [4, 5, 6, 1, 2, 3]
        );
    }

    #[test]
    fn transpose_and_transverse_mirror_along_the_diagonals() {
        assert_eq!(
            reds(&Orientation::from_exif(5).apply(numbered())),
            [1, 4, 2, 5, 3, 6]
        );
        assert_eq!(
            reds(&Orientation::from_exif(7).apply(numbered())),
            [6, 3, 5, 2, 4, 1]
        );
    }

    #[test]
    fn unknown_tag_values_leave_the_picture_alone() {
        assert_eq!(Orientation::from_exif(0), Orientation::Upright);
        assert_eq!(Orientation::from_exif(9).apply(numbered()), numbered());
    }
}
