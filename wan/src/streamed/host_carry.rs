//! The carry of the streamed loop in host memory: [`HostDitCarry`] holds the same state as
//! [`DitCarry`], with the rings and the sink as host data, layer-major.

use burn::prelude::*;

use super::{stream_layers, Need};
use crate::causal_loop::{prefill_layer, prefill_tokens, CausalSettings, DitCarry, KvPair};
use crate::rope::RopeGroup;
use crate::vae::DecodeCache;

use super::StreamedModel;

/// Keys and values of one layer in host memory, `[1, tokens, heads, head_dim]`.
#[derive(Debug, Clone)]
pub struct HostKv {
    pub k: TensorData,
    pub v: TensorData,
}

impl HostKv {
    pub(super) fn from_device<B: Backend>(p: KvPair<B>) -> Self {
        Self {
            k: p.k.into_data(),
            v: p.v.into_data(),
        }
    }

    pub(super) fn to_device<B: Backend>(&self, device: &B::Device) -> KvPair<B> {
        KvPair {
            k: Tensor::from_data(self.k.clone(), device),
            v: Tensor::from_data(self.v.clone(), device),
        }
    }

    pub(super) fn bytes(&self) -> u64 {
        (self.k.bytes.len() + self.v.bytes.len()) as u64
    }
}

/// One layer's state in host memory: `rings[step]` and the sink slice.
#[derive(Debug, Clone)]
pub struct HostKvLayer {
    pub rings: Vec<HostKv>,
    pub sink: HostKv,
}

/// [`DitCarry`] with the rings and the sink in host memory, layer-major
/// (`layers[layer].rings[step]`); the small parts stay on the device. Converts to and
/// from [`DitCarry`] without changing a bit, so a job can resume in either mode and the
/// carry file is the same.
#[derive(Debug, Clone)]
pub struct HostDitCarry<B: Backend> {
    pub layers: Vec<HostKvLayer>,
    pub sink_groups: Vec<RopeGroup>,
    pub frames_done: usize,
    pub clip: u64,
    pub motion: Tensor<B, 5>,
    pub grid_hw: [usize; 2],
    pub vae_decode: Option<DecodeCache<B>>,
}

impl<B: Backend> HostDitCarry<B> {
    /// Moves a carry's rings and sink to host memory (tensor by tensor).
    pub fn from_carry(carry: DitCarry<B>) -> Self {
        let DitCarry {
            rings,
            sink,
            sink_groups,
            frames_done,
            clip,
            motion,
            grid_hw,
            vae_decode,
        } = carry;
        let mut per_layer: Vec<Vec<HostKv>> = (0..sink.len()).map(|_| Vec::new()).collect();
        for step in rings {
            for (layer, p) in step.into_iter().enumerate() {
                if let Some(l) = per_layer.get_mut(layer) {
                    l.push(HostKv::from_device(p));
                }
            }
        }
        let layers = per_layer
            .into_iter()
            .zip(sink)
            .map(|(rings, s)| HostKvLayer {
                rings,
                sink: HostKv::from_device(s),
            })
            .collect();
        Self {
            layers,
            sink_groups,
            frames_done,
            clip,
            motion,
            grid_hw,
            vae_decode,
        }
    }

    /// The same state as a resident [`DitCarry`] on `device`.
    pub fn into_carry(self, device: &B::Device) -> DitCarry<B> {
        let steps = self.layers.first().map_or(0, |l| l.rings.len());
        let rings = (0..steps)
            .map(|s| {
                self.layers
                    .iter()
                    .map(|l| l.rings[s].to_device(device))
                    .collect()
            })
            .collect();
        let sink = self
            .layers
            .iter()
            .map(|l| l.sink.to_device(device))
            .collect();
        DitCarry {
            rings,
            sink,
            sink_groups: self.sink_groups,
            frames_done: self.frames_done,
            clip: self.clip,
            motion: self.motion,
            grid_hw: self.grid_hw,
            vae_decode: self.vae_decode,
        }
    }

    /// The state before the first clip, as [`DitCarry::start`] builds it, with the sink
    /// prefill streamed layer by layer.
    pub fn start(
        model: &StreamedModel<B>,
        settings: &CausalSettings,
        ref_latent: Tensor<B, 5>,
        motion: Tensor<B, 5>,
        context: Tensor<B, 3>,
    ) -> Self {
        let resident = &model.resident;
        let [_, h, w] = resident.grid(ref_latent.dims());
        let (mut x, segments, rope, sink_groups) =
            prefill_tokens(resident, ref_latent, motion.clone(), settings.rope_fp16);
        let head_dim = resident.dim / resident.num_heads;
        let ring_shape = [
            1,
            settings.frames_per_clip() * h * w,
            resident.num_heads,
            head_dim,
        ];
        let dtype = x.dtype();
        let zeros = TensorData::full_dtype(ring_shape, 0.0, dtype);
        let empty = TensorData::full_dtype([1, 0, resident.num_heads, head_dim], 0.0, dtype);
        let mut layers: Vec<HostKvLayer> = (0..model.layers())
            .map(|_| HostKvLayer {
                rings: (0..settings.schedule.steps())
                    .map(|_| HostKv {
                        k: zeros.clone(),
                        v: zeros.clone(),
                    })
                    .collect(),
                sink: HostKv {
                    k: empty.clone(),
                    v: empty.clone(),
                },
            })
            .collect();
        let need = Need {
            rings: vec![false; settings.schedule.steps()],
            sink: false,
        };
        stream_layers(model, &mut layers, &need, |_, dev, host| {
            let (y, kept) = prefill_layer(&dev.block, x.clone(), &segments, &rope, context.clone());
            x = y;
            host.sink = HostKv::from_device(kept);
            0
        });
        Self {
            layers,
            sink_groups,
            frames_done: 0,
            clip: 0,
            motion,
            grid_hw: [h, w],
            vae_decode: None,
        }
    }

    pub(super) fn ring_tokens(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.rings.first())
            .and_then(|r| r.k.shape.get(1).copied())
            .unwrap_or(0)
    }
}
