//! 3-axis rotary position embedding as Wan S2V uses it.
//!
//! Each head's `head_dim / 2` rotation pairs are split between the frame, height and
//! width axes (`c - 2*(c/3)`, `c/3`, `c/3` pairs, e.g. 22/21/21 for head_dim 128). Pairs
//! are interleaved (`x[2j], x[2j+1]`), the `view_as_complex` layout. The angle tables
//! are computed on the host in f64, as the reference does in complex128, and only the
//! final cos/sin are rounded to f32 for the device (Cuda has no f64).

use burn::prelude::*;

/// RoPE base of every Wan model.
pub const THETA: f64 = 10000.0;

/// How the rotation pairs of one head are split over (frame, height, width).
pub fn axis_pairs(head_dim: usize) -> [usize; 3] {
    let c = head_dim / 2;
    [c - 2 * (c / 3), c / 3, c / 3]
}

/// Inverse frequencies of one axis with `pairs` rotation pairs, in f64, computed as
/// `1 / theta^(2j / (2*pairs))` (the reference's `rope_params`).
fn inv_freqs(pairs: usize) -> Vec<f64> {
    let dim = (2 * pairs) as f64;
    (0..pairs)
        .map(|j| 1.0 / THETA.powf((2 * j) as f64 / dim))
        .collect()
}

/// Integer sample positions the way the reference draws them:
/// `np.linspace(start, stop, n).astype(int)` (truncation toward zero).
pub fn linspace_int(start: i64, stop: i64, n: usize) -> Vec<i64> {
    if n == 0 {
        return Vec::new();
    }
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) as f64 / (n - 1) as f64;
    (0..n)
        .map(|i| {
            if i == n - 1 {
                stop
            } else {
                (i as f64 * step + start as f64) as i64
            }
        })
        .collect()
}

/// One group of tokens laid out as a (frames × height × width) grid, with the position
/// each grid line takes on its axis. A negative frame position rotates the other way
/// (the reference's conjugated frequencies for motion frames in the past).
#[derive(Debug, Clone, PartialEq)]
pub struct RopeGroup {
    pub frames: Vec<i64>,
    pub rows: Vec<i64>,
    pub cols: Vec<i64>,
}

impl RopeGroup {
    /// The reference's `(start, end, range)` triple of one grid-size entry
    /// (`rope_precompute` in wan22 `s2v_utils.py`): `end - start` grid lines per axis,
    /// sampled evenly over `range` positions from `start`.
    pub fn from_grid(start: [i64; 3], end: [i64; 3], range: [i64; 3]) -> Self {
        let [f_o, h_o, w_o] = start;
        let [f, h, w] = end;
        let [t_f, t_h, t_w] = range;
        let (seq_f, seq_h, seq_w) = ((f - f_o) as usize, (h - h_o) as usize, (w - w_o) as usize);
        let frames = if f_o >= 0 {
            linspace_int(f_o, t_f + f_o - 1, seq_f)
        } else {
            linspace_int(-f_o, -t_f - f_o + 1, seq_f)
                .into_iter()
                .map(|p| -p)
                .collect()
        };
        Self {
            frames,
            rows: linspace_int(h_o, t_h + h_o - 1, seq_h),
            cols: linspace_int(w_o, t_w + w_o - 1, seq_w),
        }
    }

    /// A plain grid at frame offset `first_frame`: positions `first_frame..+frames`,
    /// `0..rows`, `0..cols`.
    pub fn grid(first_frame: i64, frames: usize, rows: usize, cols: usize) -> Self {
        Self {
            frames: (0..frames as i64).map(|f| first_frame + f).collect(),
            rows: (0..rows as i64).collect(),
            cols: (0..cols as i64).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.frames.len() * self.rows.len() * self.cols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Per-token cos/sin tables, `[tokens, head_dim / 2]` each, computed in f64.
#[derive(Debug, Clone)]
pub struct RopeTable {
    pub tokens: usize,
    pub pairs: usize,
    pub cos: Vec<f64>,
    pub sin: Vec<f64>,
}

impl RopeTable {
    /// Tables for the token groups in order (tokens of a group ordered frame, row, col).
    pub fn new(head_dim: usize, groups: &[RopeGroup]) -> Self {
        let split = axis_pairs(head_dim);
        let freqs = [
            inv_freqs(split[0]),
            inv_freqs(split[1]),
            inv_freqs(split[2]),
        ];
        let pairs = head_dim / 2;
        let tokens: usize = groups.iter().map(RopeGroup::len).sum();
        let mut cos = Vec::with_capacity(tokens * pairs);
        let mut sin = Vec::with_capacity(tokens * pairs);
        for g in groups {
            for &f in &g.frames {
                for &h in &g.rows {
                    for &w in &g.cols {
                        for (axis, pos) in [f, h, w].into_iter().enumerate() {
                            // Same order of operations as the reference: the angle is
                            // |pos| * inv_freq, negated for conjugated (past) positions.
                            for &inv in &freqs[axis] {
                                let angle = (pos.unsigned_abs() as f64) * inv;
                                let angle = if pos < 0 { -angle } else { angle };
                                cos.push(angle.cos());
                                sin.push(angle.sin());
                            }
                        }
                    }
                }
            }
        }
        Self {
            tokens,
            pairs,
            cos,
            sin,
        }
    }

    /// Uploads the tables as f32 tensors of shape `[1, tokens, 1, pairs]`.
    pub fn to_device<B: Backend>(&self, device: &B::Device) -> RopeTensors<B> {
        let to = |v: &[f64]| {
            let data: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            Tensor::<B, 1>::from_data(TensorData::new(data, [self.tokens * self.pairs]), device)
                .reshape([1, self.tokens, 1, self.pairs])
        };
        RopeTensors {
            cos: to(&self.cos),
            sin: to(&self.sin),
        }
    }
}

/// Device copies of a [`RopeTable`].
#[derive(Debug, Clone)]
pub struct RopeTensors<B: Backend> {
    pub cos: Tensor<B, 4>,
    pub sin: Tensor<B, 4>,
}

impl<B: Backend> RopeTensors<B> {
    /// Rotates `x` of shape `[batch, tokens, heads, head_dim]` (interleaved pairs).
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, l, h, d] = x.dims();
        let pairs = d / 2;
        let x = x.reshape([b, l, h, pairs, 2]);
        let re = x.clone().narrow(4, 0, 1).reshape([b, l, h, pairs]);
        let im = x.narrow(4, 1, 1).reshape([b, l, h, pairs]);
        let out_re = re.clone() * self.cos.clone() - im.clone() * self.sin.clone();
        let out_im = re * self.sin.clone() + im * self.cos.clone();
        Tensor::stack::<5>(vec![out_re, out_im], 4).reshape([b, l, h, d])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_split_like_the_reference_for_real_and_tiny_heads() {
        assert_eq!(axis_pairs(128), [22, 21, 21]);
        assert_eq!(axis_pairs(16), [4, 2, 2]);
    }

    #[test]
    fn linspace_truncates_toward_zero_and_ends_on_stop() {
        assert_eq!(linspace_int(0, 3, 4), vec![0, 1, 2, 3]);
        assert_eq!(linspace_int(2, 3, 1), vec![2]);
        // 16 frames packed into 4: positions 0, 5, 10, 15.
        assert_eq!(linspace_int(0, 15, 4), vec![0, 5, 10, 15]);
        assert_eq!(linspace_int(0, 7, 3), vec![0, 3, 7]);
    }

    #[test]
    fn past_frames_rotate_backwards() {
        let g = RopeGroup::from_grid([-1, 0, 0], [0, 1, 1], [1, 1, 1]);
        assert_eq!(g.frames, vec![-1]);
        let t = RopeTable::new(16, &[g]);
        let fwd = RopeTable::new(16, &[RopeGroup::grid(1, 1, 1, 1)]);
        assert_eq!(t.cos, fwd.cos);
        assert_eq!(t.sin[0], -fwd.sin[0]);
    }
}
