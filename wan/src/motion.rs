//! `FramePackMotioner` (`frame_packer`): the latest motion latents patchified at three
//! temporal/spatial scales, nearest frames finest: the last frame at (1,2,2), the two
//! before it at (2,4,4), the sixteen before those at (4,8,8).

use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::prelude::*;

use crate::rope::RopeGroup;

/// Latent frames per packing scale, nearest first (`zip_frame_buckets`).
pub const BUCKETS: [usize; 3] = [1, 2, 16];

/// The three patch projections; their input is always 16 latent channels (hard-coded
/// in the original, independent of `in_dim`).
#[derive(Module, Debug)]
pub struct FramePacker<B: Backend> {
    pub proj: Conv3d<B>,
    pub proj_2x: Conv3d<B>,
    pub proj_4x: Conv3d<B>,
}

fn tokens<B: Backend>(conv: &Conv3d<B>, x: Tensor<B, 5>) -> Tensor<B, 3> {
    let y = conv.forward(x);
    let [b, c, f, h, w] = y.dims();
    y.reshape([b, c, f * h * w]).swap_dims(1, 2)
}

impl<B: Backend> FramePacker<B> {
    pub fn new(dim: usize, device: &B::Device) -> Self {
        let conv = |k: [usize; 3]| Conv3dConfig::new([16, dim], k).with_stride(k).init(device);
        Self {
            proj: conv([1, 2, 2]),
            proj_2x: conv([2, 4, 4]),
            proj_4x: conv([4, 8, 8]),
        }
    }

    /// Packs motion latents `[1, 16, T, H, W]` (H, W divisible by 8) into tokens
    /// `[1, n, dim]` and their RoPE groups. Fewer than 19 frames are zero-padded in
    /// front (the original's "padd" mode); more keep only the last 19.
    pub fn forward(&self, motion: Tensor<B, 5>) -> (Tensor<B, 3>, Vec<RopeGroup>) {
        let [b, c, t, h, w] = motion.dims();
        let total: usize = BUCKETS.iter().sum();
        let kept = t.min(total);
        let mut latest = motion.narrow(2, t - kept, kept);
        if kept < total {
            let pad = Tensor::zeros([b, c, total - kept, h, w], &latest.device());
            latest = Tensor::cat(vec![pad, latest], 2);
        }
        let far = latest.clone().narrow(2, 0, BUCKETS[2]);
        let mid = latest.clone().narrow(2, BUCKETS[2], BUCKETS[1]);
        let near = latest.narrow(2, BUCKETS[2] + BUCKETS[1], BUCKETS[0]);
        let x = Tensor::cat(
            vec![
                tokens(&self.proj, near),
                tokens(&self.proj_2x, mid),
                tokens(&self.proj_4x, far),
            ],
            1,
        );
        (x, rope_groups(h, w))
    }
}

/// RoPE groups of the packed tokens, as the reference's grid sizes: each scale sits at
/// negative (past) frame positions and its coarse grid is spread over the fine grid's
/// positions.
pub fn rope_groups(lat_h: usize, lat_w: usize) -> Vec<RopeGroup> {
    let (h2, w2) = ((lat_h / 2) as i64, (lat_w / 2) as i64);
    let [b0, b1, b2] = BUCKETS.map(|b| b as i64);
    let start_near = -b0;
    let start_mid = -(b0 + b1);
    let start_far = -(b0 + b1 + b2);
    vec![
        RopeGroup::from_grid([start_near, 0, 0], [start_near + b0, h2, w2], [b0, h2, w2]),
        RopeGroup::from_grid(
            [start_mid, 0, 0],
            [start_mid + b1 / 2, (lat_h / 4) as i64, (lat_w / 4) as i64],
            [b1, h2, w2],
        ),
        RopeGroup::from_grid(
            [start_far, 0, 0],
            [start_far + b2 / 4, (lat_h / 8) as i64, (lat_w / 8) as i64],
            [b2, h2, w2],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_positions_follow_the_reference_grids() {
        let g = rope_groups(8, 8);
        assert_eq!(g[0].frames, vec![-1]);
        assert_eq!(g[1].frames, vec![-3]);
        assert_eq!(g[1].rows, vec![0, 3]);
        assert_eq!(g[2].frames, vec![-19, -14, -9, -4]);
        assert_eq!(g[2].rows, vec![0]);
        let g = rope_groups(48, 88);
        assert_eq!(g[2].frames.len(), 4);
        assert_eq!(
            g.iter().map(RopeGroup::len).sum::<usize>(),
            1056 + 264 + 264
        );
    }
}
