//! Model sizes. Field names follow the keyword arguments of the reference
//! `WanModel_S2V.__init__` so a config can be compared with the original by eye.

/// The shape-defining settings of the speech-to-video DiT (`WanModel_S2V`).
///
/// Settings that do not change any parameter shape in the released checkpoint
/// (`zero_timestep`, `add_last_motion`, `framepack_drop_mode`, ...) are fixed to the
/// values of the 14B release and are not fields here.
#[derive(Debug, Clone, PartialEq)]
pub struct S2vConfig {
    /// Hidden width of every block.
    pub dim: usize,
    /// Inner width of the block feed-forward network.
    pub ffn_dim: usize,
    /// Attention heads; `dim / num_heads` must be even (RoPE pairs).
    pub num_heads: usize,
    /// Number of DiT blocks.
    pub num_layers: usize,
    /// Latent channels in and out.
    pub in_dim: usize,
    pub out_dim: usize,
    /// Patch size in (frames, height, width).
    pub patch_size: [usize; 3],
    /// Width of the text encoder output and the number of text rows the DiT pads to.
    pub text_dim: usize,
    pub text_len: usize,
    /// Width of the sinusoidal timestep embedding.
    pub freq_dim: usize,
    /// Epsilon of the block layer norms and of the qk RMS norms.
    pub eps: f64,
    /// Width of the audio features (wav2vec2 hidden size).
    pub audio_dim: usize,
    /// Number of audio hidden states mixed by the audio encoder (wav2vec2 layers + 1).
    pub audio_layers: usize,
    /// Audio tokens per latent frame, before the learned padding token.
    pub num_audio_token: usize,
    /// Blocks after which an audio injector runs.
    pub audio_inject_layers: Vec<usize>,
    /// Channels of the pose condition encoder (`cond_encoder`).
    pub cond_dim: usize,
}

impl S2vConfig {
    /// Wan2.2-S2V-14B as released (wan22 `wan/configs/wan_s2v_14B.py`).
    pub fn s2v_14b() -> Self {
        Self {
            dim: 5120,
            ffn_dim: 13824,
            num_heads: 40,
            num_layers: 40,
            in_dim: 16,
            out_dim: 16,
            patch_size: [1, 2, 2],
            text_dim: 4096,
            text_len: 512,
            freq_dim: 256,
            eps: 1e-6,
            audio_dim: 1024,
            audio_layers: 25,
            num_audio_token: 4,
            audio_inject_layers: vec![0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39],
            cond_dim: 16,
        }
    }

    /// The tiny configuration the parity fixtures are generated at
    /// (`tools/wan_fixtures/gen_fixtures.py` builds the reference with the same values).
    pub fn tiny() -> Self {
        Self {
            dim: 64,
            ffn_dim: 128,
            num_heads: 4,
            num_layers: 4,
            in_dim: 16,
            out_dim: 16,
            patch_size: [1, 2, 2],
            text_dim: 32,
            text_len: 16,
            freq_dim: 32,
            eps: 1e-6,
            audio_dim: 32,
            audio_layers: 25,
            num_audio_token: 4,
            audio_inject_layers: vec![0, 2, 3],
            cond_dim: 16,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.dim / self.num_heads
    }
}
