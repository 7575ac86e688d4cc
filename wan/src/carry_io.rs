//! [`Carry`] to and from bytes (a safetensors file), so a job can stop after any clip
//! and resume bit-exactly.
//!
//! Tensors are stored as little-endian f32 under `ring.<step>.<layer>.{k,v}`,
//! `sink.<layer>.{k,v}` and `motion`; the counters, the token grid and the sink RoPE
//! groups are in the header's metadata as JSON. Loading checks the format version,
//! that every tensor is present with the shape the counts imply, and the dtype.

use std::collections::HashMap;

use burn::prelude::*;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

use crate::causal_loop::{Carry, KvPair};
use crate::error::WanError;
use crate::rope::RopeGroup;

/// Written into the metadata; a file with another value is refused.
pub const CARRY_FORMAT: &str = "wan-carry-1";

fn err(message: impl Into<String>) -> WanError {
    WanError::Carry {
        message: message.into(),
    }
}

fn f32_bytes<B: Backend, const D: usize>(
    t: &Tensor<B, D>,
) -> Result<(Vec<usize>, Vec<u8>), WanError> {
    let data = t.clone().into_data().convert::<f32>();
    let shape = data.shape.to_vec();
    let values = data
        .to_vec::<f32>()
        .map_err(|e| err(format!("cannot read a tensor back from the device: {e:?}")))?;
    Ok((shape, values.iter().flat_map(|v| v.to_le_bytes()).collect()))
}

fn group_json(g: &RopeGroup) -> Value {
    json!({"frames": g.frames, "rows": g.rows, "cols": g.cols})
}

fn group_from(v: &Value) -> Result<RopeGroup, WanError> {
    let axis = |name: &str| -> Result<Vec<i64>, WanError> {
        v.get(name)
            .and_then(Value::as_array)
            .ok_or_else(|| err(format!("sink group without `{name}`")))?
            .iter()
            .map(|x| {
                x.as_i64()
                    .ok_or_else(|| err(format!("sink group `{name}`: not an integer")))
            })
            .collect()
    };
    Ok(RopeGroup {
        frames: axis("frames")?,
        rows: axis("rows")?,
        cols: axis("cols")?,
    })
}

impl<B: Backend> Carry<B> {
    /// The carry as one safetensors file. A carry holding a VAE decode cache is
    /// refused (that state is not serialisable yet).
    pub fn to_bytes(&self) -> Result<Vec<u8>, WanError> {
        if self.vae_decode.is_some() {
            return Err(err("the VAE decode cache cannot be saved yet"));
        }
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut push = |name: String, t: (Vec<usize>, Vec<u8>)| tensors.push((name, t.0, t.1));
        for (s, ring) in self.rings.iter().enumerate() {
            for (l, p) in ring.iter().enumerate() {
                push(format!("ring.{s}.{l}.k"), f32_bytes(&p.k)?);
                push(format!("ring.{s}.{l}.v"), f32_bytes(&p.v)?);
            }
        }
        for (l, p) in self.sink.iter().enumerate() {
            push(format!("sink.{l}.k"), f32_bytes(&p.k)?);
            push(format!("sink.{l}.v"), f32_bytes(&p.v)?);
        }
        push("motion".into(), f32_bytes(&self.motion)?);
        let views = tensors
            .iter()
            .map(|(n, shape, bytes)| {
                TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| err(format!("{n}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let layers = self.sink.len();
        let meta: HashMap<String, String> = [
            ("format", CARRY_FORMAT.to_string()),
            ("frames_done", self.frames_done.to_string()),
            ("clip", self.clip.to_string()),
            ("steps", self.rings.len().to_string()),
            ("layers", layers.to_string()),
            ("grid_hw", json!(self.grid_hw).to_string()),
            (
                "sink_groups",
                Value::Array(self.sink_groups.iter().map(group_json).collect()).to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        safetensors::serialize(views, Some(meta)).map_err(|e| err(e.to_string()))
    }

    /// A carry saved by [`Carry::to_bytes`], onto `device`.
    pub fn from_bytes(bytes: &[u8], device: &B::Device) -> Result<Self, WanError> {
        let (_, header) =
            SafeTensors::read_metadata(bytes).map_err(|e| err(format!("not a carry file: {e}")))?;
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| err(format!("not a carry file: {e}")))?;
        let meta = header
            .metadata()
            .clone()
            .ok_or_else(|| err("no metadata: not a carry file"))?;
        let get = |k: &str| {
            meta.get(k)
                .ok_or_else(|| err(format!("metadata `{k}` is missing")))
        };
        if get("format")? != CARRY_FORMAT {
            return Err(err(format!(
                "format `{}` is not {CARRY_FORMAT}",
                get("format")?
            )));
        }
        let num = |k: &str| -> Result<usize, WanError> {
            get(k)?
                .parse()
                .map_err(|e| err(format!("metadata `{k}`: {e}")))
        };
        let (steps, layers, frames_done) = (num("steps")?, num("layers")?, num("frames_done")?);
        let clip = num("clip")? as u64;
        let grid: Vec<usize> = serde_json::from_str(get("grid_hw")?)
            .map_err(|e| err(format!("metadata `grid_hw`: {e}")))?;
        let grid_hw: [usize; 2] = grid
            .try_into()
            .map_err(|_| err("metadata `grid_hw` must have two entries"))?;
        let groups: Value = serde_json::from_str(get("sink_groups")?)
            .map_err(|e| err(format!("metadata `sink_groups`: {e}")))?;
        let sink_groups = groups
            .as_array()
            .ok_or_else(|| err("metadata `sink_groups` is not a list"))?
            .iter()
            .map(group_from)
            .collect::<Result<Vec<_>, _>>()?;

        let load = |name: &str, rank: usize| -> Result<TensorData, WanError> {
            let view = st
                .tensor(name)
                .map_err(|_| err(format!("tensor `{name}` is missing")))?;
            if view.dtype() != Dtype::F32 || view.shape().len() != rank {
                return Err(err(format!(
                    "tensor `{name}`: expected f32 of rank {rank}, found {:?} {:?}",
                    view.dtype(),
                    view.shape()
                )));
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok(TensorData::new(values, view.shape().to_vec()))
        };
        let pair = |prefix: String| -> Result<KvPair<B>, WanError> {
            let k = load(&format!("{prefix}.k"), 4)?;
            let v = load(&format!("{prefix}.v"), 4)?;
            if k.shape != v.shape {
                return Err(err(format!("`{prefix}`: k and v shapes differ")));
            }
            Ok(KvPair {
                k: Tensor::from_data(k, device),
                v: Tensor::from_data(v, device),
            })
        };
        let rings = (0..steps)
            .map(|s| (0..layers).map(|l| pair(format!("ring.{s}.{l}"))).collect())
            .collect::<Result<Vec<Vec<_>>, _>>()?;
        let sink = (0..layers)
            .map(|l| pair(format!("sink.{l}")))
            .collect::<Result<Vec<_>, _>>()?;
        let ring_shape = rings.first().and_then(|r| r.first()).map(|p| p.k.dims());
        if rings
            .iter()
            .flatten()
            .any(|p| Some(p.k.dims()) != ring_shape)
        {
            return Err(err("the KV rings do not all have the same shape"));
        }
        let expected = st.names().len();
        if expected != 2 * layers * (steps + 1) + 1 {
            return Err(err(format!(
                "{expected} tensors, expected {} for {steps} steps and {layers} layers",
                2 * layers * (steps + 1) + 1
            )));
        }
        Ok(Self {
            rings,
            sink,
            sink_groups,
            frames_done,
            clip,
            motion: Tensor::from_data(load("motion", 5)?, device),
            grid_hw,
            vae_decode: None,
        })
    }
}
