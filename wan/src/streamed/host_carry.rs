//! The carry of the streamed and hybrid loops: [`HostDitCarry`] holds the same state as
//! [`DitCarry`], layer-major, with the rings and sink of the first layers on the device
//! ([`HostDitCarry::resident`], the hybrid mode's resident blocks) and those of the others in
//! host memory ([`HostDitCarry::layers`]).

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
    pub(crate) fn from_device<B: Backend>(p: KvPair<B>) -> Self {
        Self {
            k: p.k.into_data(),
            v: p.v.into_data(),
        }
    }

    pub(crate) fn to_device<B: Backend>(&self, device: &B::Device) -> KvPair<B> {
        KvPair {
            k: Tensor::from_data(super::staged::<B>(&self.k, device), device),
            v: Tensor::from_data(super::staged::<B>(&self.v, device), device),
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

impl HostKvLayer {
    fn from_device<B: Backend>(l: KvLayer<B>) -> Self {
        Self {
            rings: l.rings.into_iter().map(HostKv::from_device).collect(),
            sink: HostKv::from_device(l.sink),
        }
    }

    fn to_device<B: Backend>(&self, device: &B::Device) -> KvLayer<B> {
        KvLayer {
            rings: self.rings.iter().map(|r| r.to_device(device)).collect(),
            sink: self.sink.to_device(device),
        }
    }
}

/// One layer's state on the device: `rings[step]` and the sink slice.
#[derive(Debug, Clone)]
pub struct KvLayer<B: Backend> {
    pub rings: Vec<KvPair<B>>,
    pub sink: KvPair<B>,
}

/// [`DitCarry`] layer-major, with the rings and the sink of layers `0..resident.len()` on the
/// device and of the layers after them in host memory; the small parts (motion latents, VAE
/// decode cache) stay on the device. Converts to and from [`DitCarry`] without changing a bit,
/// and [`HostDitCarry::set_resident_layers`] moves layers between device and host, so a job can
/// resume in any mode and the carry file is the same.
#[derive(Debug, Clone)]
pub struct HostDitCarry<B: Backend> {
    /// Layers `0..n` on the device (the hybrid mode's resident blocks; empty when streaming).
    pub resident: Vec<KvLayer<B>>,
    /// Layers `n..` in host memory.
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
        Self::from_carry_split(carry, 0)
    }

    /// Keeps the first `resident_layers` layers of a carry on the device and moves the
    /// others to host memory. With `resident_layers` at least the carry's layer count nothing
    /// is copied (the tensors are only regrouped by layer).
    pub fn from_carry_split(carry: DitCarry<B>, resident_layers: usize) -> Self {
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
        let mut per_layer: Vec<Vec<KvPair<B>>> = (0..sink.len()).map(|_| Vec::new()).collect();
        for step in rings {
            for (layer, p) in step.into_iter().enumerate() {
                if let Some(l) = per_layer.get_mut(layer) {
                    l.push(p);
                }
            }
        }
        let mut resident = Vec::new();
        let mut layers = Vec::new();
        for (i, (rings, s)) in per_layer.into_iter().zip(sink).enumerate() {
            let layer = KvLayer { rings, sink: s };
            if i < resident_layers {
                resident.push(layer);
            } else {
                layers.push(HostKvLayer::from_device(layer));
            }
        }
        Self {
            resident,
            layers,
            sink_groups,
            frames_done,
            clip,
            motion,
            grid_hw,
            vae_decode,
        }
    }

    /// The same state as a resident [`DitCarry`] on `device` (host layers uploaded).
    pub fn into_carry(self, device: &B::Device) -> DitCarry<B> {
        let all: Vec<KvLayer<B>> = self
            .resident
            .into_iter()
            .chain(self.layers.iter().map(|l| l.to_device(device)))
            .collect();
        let steps = all.first().map_or(0, |l| l.rings.len());
        let mut rings: Vec<Vec<KvPair<B>>> = (0..steps).map(|_| Vec::new()).collect();
        let mut sink = Vec::with_capacity(all.len());
        for layer in all {
            for (s, r) in layer.rings.into_iter().enumerate() {
                rings[s].push(r);
            }
            sink.push(layer.sink);
        }
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

    /// Layers in all.
    pub fn total_layers(&self) -> usize {
        self.resident.len() + self.layers.len()
    }

    /// Layers whose rings and sink are on the device.
    pub fn resident_layers(&self) -> usize {
        self.resident.len()
    }

    /// Keeps layers `0..n` on `device` and the rest in host memory, moving layers either way
    /// as needed (one layer at a time). The values do not change.
    pub fn set_resident_layers(&mut self, n: usize, device: &B::Device) {
        let n = n.min(self.total_layers());
        while self.resident.len() > n {
            let layer = self
                .resident
                .pop()
                .expect("more resident layers than wanted, so at least one");
            self.layers.insert(0, HostKvLayer::from_device(layer));
        }
        while self.resident.len() < n {
            let host = self.layers.remove(0);
            self.resident.push(host.to_device(device));
        }
    }

    /// Bytes of the rings and sink slices held in host memory.
    pub fn host_bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| l.sink.bytes() + l.rings.iter().map(HostKv::bytes).sum::<u64>())
            .sum()
    }

    /// The state before the first clip, as [`DitCarry::start`] builds it, with the sink
    /// prefill run layer by layer: the resident blocks' layers on the device, the streamed
    /// ones uploaded in turn (their KV kept in host memory).
    pub fn start(
        model: &StreamedModel<B>,
        settings: &CausalSettings,
        ref_latent: Tensor<B, 5>,
        motion: Tensor<B, 5>,
        context: Tensor<B, 3>,
    ) -> Self {
        let resident_model = &model.resident;
        let device = ref_latent.device();
        let [_, h, w] = resident_model.grid(ref_latent.dims());
        let (x, segments, rope, sink_groups) = prefill_tokens(
            resident_model,
            ref_latent,
            motion.clone(),
            settings.rope_fp16,
        );
        let head_dim = resident_model.dim / resident_model.num_heads;
        let ring_shape = [
            1,
            settings.frames_per_clip() * h * w,
            resident_model.num_heads,
            head_dim,
        ];
        let dtype = x.dtype();
        let zeros = TensorData::full_dtype(ring_shape, 0.0, dtype);
        let empty = TensorData::full_dtype([1, 0, resident_model.num_heads, head_dim], 0.0, dtype);
        let steps = settings.schedule.steps();
        let mut layers: Vec<HostKvLayer> = (model.resident_blocks()..model.layers())
            .map(|_| HostKvLayer {
                rings: (0..steps)
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
            rings: vec![false; steps],
            sink: false,
        };
        let mut state = (x, Vec::with_capacity(model.resident_blocks()));
        stream_layers(
            model,
            &mut layers,
            &need,
            &mut state,
            |(x, resident)| {
                for block in &resident_model.blocks {
                    let (y, kept) =
                        prefill_layer(block, x.clone(), &segments, &rope, context.clone());
                    *x = y;
                    let ring = || Tensor::<B, 4>::zeros(ring_shape, &device);
                    resident.push(KvLayer {
                        rings: (0..steps)
                            .map(|_| KvPair {
                                k: ring(),
                                v: ring(),
                            })
                            .collect(),
                        sink: kept,
                    });
                }
            },
            |(x, _), _, dev, host| {
                let (y, kept) =
                    prefill_layer(&dev.block, x.clone(), &segments, &rope, context.clone());
                *x = y;
                host.sink = HostKv::from_device(kept);
                0
            },
        );
        Self {
            resident: state.1,
            layers,
            sink_groups,
            frames_done: 0,
            clip: 0,
            motion,
            grid_hw: [h, w],
            vae_decode: None,
        }
    }

    pub(crate) fn ring_tokens(&self) -> usize {
        self.resident
            .first()
            .and_then(|l| l.rings.first())
            .map(|r| r.k.dims()[1])
            .or_else(|| {
                self.layers
                    .first()
                    .and_then(|l| l.rings.first())
                    .and_then(|r| r.k.shape.get(1).copied())
            })
            .unwrap_or(0)
    }

    /// Steps (rings per layer).
    pub fn steps(&self) -> usize {
        self.resident
            .first()
            .map(|l| l.rings.len())
            .or_else(|| self.layers.first().map(|l| l.rings.len()))
            .unwrap_or(0)
    }
}
