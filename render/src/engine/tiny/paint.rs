//! The last, fixed stage of the tiny decoder: turn one frame's decoded fields into pixels by
//! moving and shading the reference portrait.
//!
//! Three things move: the whole head sways by the mean of the horizontal/vertical fields; the
//! jaw opens by the jaw field averaged around the mouth (everything below the lip seam slides
//! down, most at the middle of the mouth, and the gap that opens is filled with a darkened copy
//! of the lips: the mouth cavity); and the shading field brightens or darkens regions a little.
//! All of it runs on the host: it is a gather over pixels, cheap next to denoising, and keeps
//! the output bit-exact whatever backend produced the fields.

use super::vae::DecodedFields;
use crate::engine::architecture::DECODER_FIELDS;
use crate::engine::carry::TEMPORAL_DOWNSCALE;

/// Largest head sway, as a fraction of the frame size.
const SWAY_MAX_FRACTION: f32 = 0.012;
/// How far a fully open jaw drops the lower lip, as a fraction of the frame height.
const JAW_DROP_FRACTION: f32 = 0.028;
/// Brightness of the mouth cavity relative to the lips it is painted from.
const CAVITY_BRIGHTNESS: f32 = 0.28;
/// Largest brightness change from the shading field.
const SHADE_MAX: f32 = 0.04;
/// Jaw field values mapped to closed and fully open.
const JAW_CLOSED: f32 = 0.25;
const JAW_OPEN: f32 = 1.05;

/// Precomputed geometry for one output size and one reference image.
pub(crate) struct Painter {
    width: usize,
    height: usize,
    cells_x: usize,
    cells_y: usize,
    reference: Vec<f32>,
    /// Per latent cell: weight of its jaw value in the mouth average (sums to 1).
    mouth_cells: Vec<f32>,
    /// Row of the lip seam, in pixels: above it nothing drops.
    seam_px: f32,
    /// Per pixel column: share of the jaw drop (most at the middle of the mouth).
    drop_columns: Vec<f32>,
    /// Per pixel column: share of the drop that opens as cavity (zero past the mouth corners).
    cavity_columns: Vec<f32>,
    /// Per pixel row: 1 from the seam to the chin, fading to 0 down the neck.
    drop_rows: Vec<f32>,
}

fn smoothstep(edge0: f32, edge1: f32, x: f32) -> f32 {
    let t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

fn gaussian(x: f32, centre: f32, radius: f32) -> f32 {
    (-0.5 * ((x - centre) / radius).powi(2)).exp()
}

impl Painter {
    /// `mouth` is `[centre x, centre y, radius x, radius y]` as fractions of the frame.
    pub(crate) fn new(
        reference_rgb: &[u8],
        width: usize,
        height: usize,
        cell_px: usize,
        mouth: [f32; 4],
    ) -> Self {
        let [cx, cy, rx, ry] = mouth;
        let (cells_x, cells_y) = (width / cell_px, height / cell_px);
        let mut mouth_cells: Vec<f32> = (0..cells_y)
            .flat_map(|y| (0..cells_x).map(move |x| (x, y)))
            .map(|(x, y)| {
                let u = (x as f32 + 0.5) / cells_x as f32;
                let v = (y as f32 + 0.5) / cells_y as f32;
                gaussian(u, cx, 2.0 * rx) * gaussian(v, cy, 3.0 * ry)
            })
            .collect();
        let total: f32 = mouth_cells.iter().sum();
        mouth_cells
            .iter_mut()
            .for_each(|w| *w /= total.max(f32::MIN_POSITIVE));
        let column = |x: usize| (x as f32 + 0.5) / width as f32;
        let row = |y: usize| (y as f32 + 0.5) / height as f32;
        Painter {
            width,
            height,
            cells_x,
            cells_y,
            reference: reference_rgb.iter().map(|&b| f32::from(b)).collect(),
            mouth_cells,
            seam_px: cy * height as f32,
            drop_columns: (0..width)
                .map(|x| gaussian(column(x), cx, 1.5 * rx))
                .collect(),
            cavity_columns: (0..width)
                .map(|x| {
                    (1.0 - ((column(x) - cx) / (0.75 * rx)).powi(2))
                        .max(0.0)
                        .sqrt()
                })
                .collect(),
            drop_rows: (0..height)
                .map(|y| 1.0 - smoothstep(cy + 3.0 * ry, cy + 5.5 * ry, row(y)))
                .collect(),
        }
    }

    /// Paints every output frame of a clip from its decoded fields.
    pub(crate) fn paint_clip(&self, decoded: &DecodedFields, latent_frames: usize) -> Vec<Vec<u8>> {
        let cells = self.cells_x * self.cells_y;
        let per_latent = TEMPORAL_DOWNSCALE as usize;
        let field_frame = |j: usize| {
            &decoded.fields[j * cells * DECODER_FIELDS..(j + 1) * cells * DECODER_FIELDS]
        };
        let mut frames = Vec::with_capacity(latent_frames * per_latent);
        let mut blended = vec![0.0f32; cells * DECODER_FIELDS];
        for j in 0..latent_frames {
            let (from, to) = (field_frame(j), field_frame(j + 1));
            for sub in 0..per_latent {
                // Fields of latent frame j describe its last output frame; frames in between
                // blend from the previous latent frame, like a causal temporal upsampler.
                let w = (sub + 1) as f32 / per_latent as f32;
                for ((b, &f), &t) in blended.iter_mut().zip(from).zip(to) {
                    *b = f + (t - f) * w;
                }
                let jaw_base = j * cells * per_latent;
                let jaw: f32 = (0..cells)
                    .map(|n| decoded.jaw[jaw_base + n * per_latent + sub] * self.mouth_cells[n])
                    .sum();
                frames.push(self.paint_frame(&blended, jaw));
            }
        }
        frames
    }

    fn paint_frame(&self, fields: &[f32], jaw_field: f32) -> Vec<u8> {
        let (w, h) = (self.width, self.height);
        let cells = (self.cells_x * self.cells_y) as f32;
        let mean = |k: usize| fields.iter().skip(k).step_by(DECODER_FIELDS).sum::<f32>() / cells;
        let sway_x = mean(0).tanh() * SWAY_MAX_FRACTION * w as f32;
        let sway_y = mean(1).tanh() * SWAY_MAX_FRACTION * h as f32;
        let drop_px = smoothstep(JAW_CLOSED, JAW_OPEN, jaw_field) * JAW_DROP_FRACTION * h as f32;
        let seam = self.seam_px + sway_y;
        let mut out = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            let shade_row = self.shade_row(fields, y);
            let top = y as f32;
            for (x, shade) in shade_row.into_iter().enumerate() {
                let src_x = x as f32 - sway_x;
                let drop = if top + 0.5 < seam {
                    0.0
                } else {
                    drop_px * self.drop_columns[x] * self.drop_rows[y]
                };
                let mut rgb = self.sample(src_x, top - sway_y - drop);
                // Share of this pixel covered by the opening [seam, seam + cavity).
                let cavity = drop_px * self.cavity_columns[x];
                let covered = ((top + 1.0).min(seam + cavity) - top.max(seam)).clamp(0.0, 1.0);
                if covered > 0.0 {
                    let lips = self.sample(src_x, self.seam_px);
                    for (c, l) in rgb.iter_mut().zip(lips) {
                        *c += (l * CAVITY_BRIGHTNESS - *c) * covered;
                    }
                }
                let gain = 1.0 + shade;
                out.extend(
                    rgb.iter()
                        .map(|&c| (c * gain).round().clamp(0.0, 255.0) as u8),
                );
            }
        }
        out
    }

    /// The shading field of one pixel row, bilinearly upsampled from cell centres.
    fn shade_row(&self, fields: &[f32], y: usize) -> Vec<f32> {
        let (cx, cy) = (self.cells_x, self.cells_y);
        let fy =
            ((y as f32 + 0.5) / self.height as f32 * cy as f32 - 0.5).clamp(0.0, (cy - 1) as f32);
        let (y0, ty) = (fy.floor() as usize, fy.fract());
        let y1 = (y0 + 1).min(cy - 1);
        let shade = |row: usize, col: usize| (fields[(row * cx + col) * DECODER_FIELDS + 2]).tanh();
        let column: Vec<f32> = (0..cx)
            .map(|col| shade(y0, col) * (1.0 - ty) + shade(y1, col) * ty)
            .collect();
        (0..self.width)
            .map(|x| {
                let fx = ((x as f32 + 0.5) / self.width as f32 * cx as f32 - 0.5)
                    .clamp(0.0, (cx - 1) as f32);
                let (x0, tx) = (fx.floor() as usize, fx.fract());
                let x1 = (x0 + 1).min(cx - 1);
                SHADE_MAX * (column[x0] * (1.0 - tx) + column[x1] * tx)
            })
            .collect()
    }

    /// Bilinear sample of the reference, clamped to its edges.
    fn sample(&self, x: f32, y: f32) -> [f32; 3] {
        let x = x.clamp(0.0, (self.width - 1) as f32);
        let y = y.clamp(0.0, (self.height - 1) as f32);
        let (x0, y0) = (x.floor() as usize, y.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(self.width - 1), (y0 + 1).min(self.height - 1));
        let (tx, ty) = (x - x0 as f32, y - y0 as f32);
        let at = |xx: usize, yy: usize, c: usize| self.reference[(yy * self.width + xx) * 3 + c];
        let mut rgb = [0.0; 3];
        for (c, v) in rgb.iter_mut().enumerate() {
            let top = at(x0, y0, c) * (1.0 - tx) + at(x1, y0, c) * tx;
            let bottom = at(x0, y1, c) * (1.0 - tx) + at(x1, y1, c) * tx;
            *v = top * (1.0 - ty) + bottom * ty;
        }
        rgb
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_support::portrait;

    const MOUTH: [f32; 4] = [0.5, 0.625, 0.11, 0.045];

    fn still_fields(cells: usize, latent_frames: usize, jaw: f32) -> DecodedFields {
        DecodedFields {
            fields: vec![0.0; (latent_frames + 1) * cells * DECODER_FIELDS],
            jaw: vec![jaw; latent_frames * cells * TEMPORAL_DOWNSCALE as usize],
        }
    }

    #[test]
    fn closed_jaw_and_still_fields_reproduce_the_reference() {
        let reference = portrait(64, 48);
        let painter = Painter::new(&reference, 64, 48, 16, MOUTH);
        let frames = painter.paint_clip(&still_fields(12, 1, 0.0), 1);
        assert_eq!(frames.len(), 4);
        assert!(frames.iter().all(|f| *f == reference));
    }

    #[test]
    fn open_jaw_changes_the_mouth_region_but_not_the_top_of_the_frame() {
        let reference = portrait(128, 128);
        let painter = Painter::new(&reference, 128, 128, 16, MOUTH);
        let frame = &painter.paint_clip(&still_fields(64, 1, 1.0), 1)[0];
        let row_bytes = 128 * 3;
        let mouth_row = (0.64 * 128.0) as usize;
        assert_eq!(frame[..20 * row_bytes], reference[..20 * row_bytes]);
        let changed = (0..row_bytes)
            .filter(|&i| frame[mouth_row * row_bytes + i] != reference[mouth_row * row_bytes + i])
            .count();
        assert!(
            changed > 30,
            "only {changed} bytes changed in the mouth row"
        );
    }
}
