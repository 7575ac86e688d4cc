//! `FramePackMotioner` (`frame_packer`): motion latents patchified at three
//! temporal/spatial scales. Parameter tree only in this session.

use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::prelude::*;

/// The three patch projections; their input is always 16 latent channels (hard-coded
/// in the original, independent of `in_dim`).
#[derive(Module, Debug)]
pub struct FramePacker<B: Backend> {
    pub proj: Conv3d<B>,
    pub proj_2x: Conv3d<B>,
    pub proj_4x: Conv3d<B>,
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
}
