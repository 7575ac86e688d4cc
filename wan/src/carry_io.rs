//! [`DitCarry`] to and from bytes (a safetensors file), so a job can stop after any clip
//! and resume bit-exactly.
//!
//! Tensors are stored little-endian in the backend's float dtype (f32 on the CPU, bf16 for a
//! release under `cuda`: the values exactly as they were, so a resume is exact and a bf16
//! carry takes half the bytes) under `ring.<step>.<layer>.{k,v}`,
//! `sink.<layer>.{k,v}`, `motion` and, when the carry holds the VAE decoder's streaming
//! cache, `vae.<slot>` for each slot holding frames; the counters, the token grid, the
//! sink RoPE groups, the kinds of the VAE cache slots and a digest of the tensor bytes are
//! in the header's metadata. Counters are written zero-padded to a fixed width and the
//! header is built here (not by the safetensors crate), so the file's size is a function
//! of the geometry alone ([`file_bytes`]): the same for every clip of a job and known
//! before it starts. Loading checks the format version, the digest (a damaged tensor byte
//! is refused), that every tensor is present with the shape the counts imply, and that the
//! dtype is the loading backend's (a carry of another dtype is refused, not converted).

use std::collections::{BTreeMap, HashMap};

use burn::prelude::*;
use burn::tensor::{DType, Element};
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

use crate::causal_loop::DitCarry;
use crate::error::WanError;
use crate::rope::RopeGroup;
use crate::streamed::{HostDitCarry, HostKv, HostKvLayer, KvLayer};
use crate::vae::{CacheSlot, DecodeCache};

/// Written into the metadata; a file with another value is refused.
pub const CARRY_FORMAT: &str = "wan-carry-2";

/// Digits of the zero-padded counters in the metadata.
pub const COUNTER_DIGITS: usize = 20;

fn err(message: impl Into<String>) -> WanError {
    WanError::Carry {
        message: message.into(),
    }
}

/// A counter as a fixed-width metadata value.
pub fn counter(v: u64) -> String {
    format!("{v:0width$}", width = COUNTER_DIGITS)
}

/// A stored tensor: on the device (either rank) or in host memory.
enum AnyTensor<'a, B: Backend> {
    R4(&'a Tensor<B, 4>),
    R5(&'a Tensor<B, 5>),
    Host(&'a TensorData),
}

impl<B: Backend> AnyTensor<'_, B> {
    fn dims(&self) -> Vec<usize> {
        match self {
            AnyTensor::R4(t) => t.dims().to_vec(),
            AnyTensor::R5(t) => t.dims().to_vec(),
            AnyTensor::Host(d) => d.shape.to_vec(),
        }
    }

    /// The tensor's bytes in the backend's float dtype, read back from the device (or taken
    /// from host memory as they are).
    fn raw_bytes(&self) -> Result<std::borrow::Cow<'_, [u8]>, WanError> {
        let want = float_dtype::<B>();
        let data = match self {
            AnyTensor::R4(t) => (*t).clone().into_data(),
            AnyTensor::R5(t) => (*t).clone().into_data(),
            AnyTensor::Host(d) => {
                if d.dtype != want {
                    return Err(err(format!(
                        "a host carry tensor holds {:?}, not the backend's {want:?}",
                        d.dtype
                    )));
                }
                return Ok(std::borrow::Cow::Borrowed(d.as_bytes()));
            }
        };
        if data.dtype != want {
            return Err(err(format!(
                "a carry tensor came back as {:?}, not the backend's {want:?}",
                data.dtype
            )));
        }
        Ok(std::borrow::Cow::Owned(data.into_bytes().to_vec()))
    }
}

/// The float dtype of backend `B`: the dtype its carry is stored in.
pub fn float_dtype<B: Backend>() -> DType {
    <B::FloatElem as Element>::dtype()
}

/// The safetensors name and the size in bytes of a float `dtype` a carry can be stored in.
fn stored_as(dtype: DType) -> Result<(&'static str, usize), WanError> {
    match dtype {
        DType::F64 => Ok(("F64", 8)),
        DType::F32 => Ok(("F32", 4)),
        DType::F16 => Ok(("F16", 2)),
        DType::BF16 => Ok(("BF16", 2)),
        other => Err(err(format!("a carry cannot be stored as {other:?}"))),
    }
}

fn safetensors_dtype(dtype: DType) -> Option<Dtype> {
    match dtype {
        DType::F64 => Some(Dtype::F64),
        DType::F32 => Some(Dtype::F32),
        DType::F16 => Some(Dtype::F16),
        DType::BF16 => Some(Dtype::BF16),
        _ => None,
    }
}

/// A streaming 64-bit digest of the tensor bytes (not cryptographic: it catches damage,
/// such as a flipped bit or a block of zeros, not tampering). It reads 4-byte words and
/// keeps a partial word until the next piece, so the data fed in pieces of any size gives
/// the digest of the whole (bytes left over at the very end are mixed in one by one).
#[derive(Debug, Clone)]
pub struct DataDigest {
    h: u64,
    len: u64,
    /// Bytes of a word not complete yet (at most 3).
    pending: Vec<u8>,
}

impl Default for DataDigest {
    fn default() -> Self {
        Self {
            h: 0x243F_6A88_85A3_08D3,
            len: 0,
            pending: Vec::new(),
        }
    }
}

const DIGEST_K: u64 = 0x9E37_79B9_7F4A_7C15;

impl DataDigest {
    /// Adds `bytes`, continuing the data fed so far.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if !self.pending.is_empty() {
            let take = (4 - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.pending.len() < 4 {
                return;
            }
            let word = std::mem::take(&mut self.pending);
            self.mix_word(&word);
        }
        let mut words = bytes.chunks_exact(4);
        for w in &mut words {
            self.mix_word(w);
        }
        self.pending.extend_from_slice(words.remainder());
    }

    fn mix_word(&mut self, w: &[u8]) {
        let v = u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        self.h = (self.h ^ v).wrapping_mul(DIGEST_K).rotate_left(29);
    }

    /// The digest as 16 hex digits.
    pub fn hex(&self) -> String {
        let mut h = self.h;
        for &b in &self.pending {
            h = (h ^ u64::from(b) ^ (1 << 40))
                .wrapping_mul(DIGEST_K)
                .rotate_left(29);
        }
        h ^= self.len;
        h = (h ^ (h >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        format!("{:016x}", h ^ (h >> 29))
    }
}

/// The safetensors header (8-byte length and JSON padded with spaces to a multiple of
/// 8) for `tensors` (all stored as `dtype`, in this order) and `metadata`.
pub fn header_bytes(
    metadata: &BTreeMap<String, String>,
    tensors: &[(String, Vec<usize>)],
    dtype: DType,
) -> Result<Vec<u8>, WanError> {
    let (name_of_dtype, size) = stored_as(dtype)?;
    let mut map = serde_json::Map::new();
    map.insert("__metadata__".into(), json!(metadata));
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let len = size * shape.iter().product::<usize>();
        map.insert(
            name.clone(),
            json!({"dtype": name_of_dtype, "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut text = Value::Object(map).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    Ok(out)
}

/// Size of a carry file with `tensors` stored as `dtype` and `metadata`: header plus data.
pub fn file_bytes(
    metadata: &BTreeMap<String, String>,
    tensors: &[(String, Vec<usize>)],
    dtype: DType,
) -> Result<u64, WanError> {
    let (_, size) = stored_as(dtype)?;
    let data: u64 = tensors
        .iter()
        .map(|(_, s)| size as u64 * s.iter().product::<usize>() as u64)
        .sum();
    Ok(header_bytes(metadata, tensors, dtype)?.len() as u64 + data)
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

/// Metadata value of the sink RoPE groups.
pub fn sink_groups_json(groups: &[RopeGroup]) -> String {
    Value::Array(groups.iter().map(group_json).collect()).to_string()
}

/// Metadata value of the VAE cache slot kinds: `E`mpty, `R`epeat, `F`rames, one a slot.
fn slot_kinds<B: Backend>(cache: &DecodeCache<B>) -> String {
    cache
        .slots()
        .iter()
        .map(|s| match s {
            CacheSlot::Empty => 'E',
            CacheSlot::Repeat => 'R',
            CacheSlot::Frames(_) => 'F',
        })
        .collect()
}

/// Metadata key of the VAE slot kinds (absent when the carry has no decode cache).
pub const VAE_SLOTS_KEY: &str = "vae_slots";
/// Metadata key of the data digest (16 hex digits).
pub const DIGEST_KEY: &str = "digest";

impl<B: Backend> DitCarry<B> {
    /// The carry as a file (see the module docs).
    pub fn to_bytes(&self) -> Result<Vec<u8>, WanError> {
        self.to_bytes_with(&BTreeMap::new())
    }

    /// The header metadata of this carry's file, with `extra` entries added.
    pub fn metadata(&self, extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        self.view().metadata(extra)
    }

    /// [`DitCarry::to_bytes`] with `extra` metadata entries (a job's identity).
    pub fn to_bytes_with(&self, extra: &BTreeMap<String, String>) -> Result<Vec<u8>, WanError> {
        self.view().to_bytes_with(extra)
    }

    /// The same tensors regrouped by layer, all on the device (no copy).
    fn view(&self) -> HostDitCarry<B> {
        HostDitCarry::from_carry_split(self.clone(), usize::MAX)
    }

    /// Writes the file to `w` one tensor at a time (the header first with a placeholder
    /// digest, then the tensors, then the header again with the digest). Returns the bytes
    /// written.
    pub fn write_to<W: std::io::Write + std::io::Seek>(
        &self,
        w: &mut W,
        extra: &BTreeMap<String, String>,
    ) -> Result<u64, WanError> {
        self.view().write_to(w, extra)
    }

    /// Loads a carry saved by [`DitCarry::to_bytes`] onto `device`.
    pub fn from_bytes(bytes: &[u8], device: &B::Device) -> Result<Self, WanError> {
        Self::from_bytes_with_meta(bytes, device).map(|(c, _)| c)
    }

    /// The metadata of a carry file (read from the header only).
    pub fn read_metadata(bytes: &[u8]) -> Result<HashMap<String, String>, WanError> {
        let (_, header) =
            SafeTensors::read_metadata(bytes).map_err(|e| err(format!("not a carry file: {e}")))?;
        header
            .metadata()
            .clone()
            .ok_or_else(|| err("no metadata: not a carry file"))
    }

    /// [`DitCarry::from_bytes`] and the file's metadata.
    pub fn from_bytes_with_meta(
        bytes: &[u8],
        device: &B::Device,
    ) -> Result<(Self, HashMap<String, String>), WanError> {
        let (carry, meta) = HostDitCarry::from_bytes_split(bytes, device, usize::MAX)?;
        Ok((carry.into_carry(device), meta))
    }
}

impl<B: Backend> HostDitCarry<B> {
    /// The header metadata of this carry's file (the same as the equal [`DitCarry`]'s), with
    /// `extra` entries added.
    pub fn metadata(&self, extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut meta: BTreeMap<String, String> = [
            ("format", CARRY_FORMAT.to_string()),
            ("frames_done", counter(self.frames_done as u64)),
            ("clip", counter(self.clip)),
            ("steps", self.steps().to_string()),
            ("layers", self.total_layers().to_string()),
            ("grid_hw", json!(self.grid_hw).to_string()),
            ("sink_groups", sink_groups_json(&self.sink_groups)),
            (DIGEST_KEY, DataDigest::default().hex()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(cache) = &self.vae_decode {
            meta.insert(VAE_SLOTS_KEY.into(), slot_kinds(cache));
        }
        for (k, v) in extra {
            meta.insert(k.clone(), v.clone());
        }
        meta
    }

    /// The carry as a file, from wherever its layers are (host layers are written from host
    /// memory; nothing goes through the device).
    pub fn to_bytes_with(&self, extra: &BTreeMap<String, String>) -> Result<Vec<u8>, WanError> {
        let mut out = std::io::Cursor::new(Vec::new());
        self.write_to(&mut out, extra)
            .map_err(|e| err(format!("cannot build the carry in memory: {e}")))?;
        Ok(out.into_inner())
    }

    fn layout(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        self.each_tensor(|name, t| {
            out.push((name, t.dims()));
            Ok(())
        })
        .ok();
        out
    }

    /// Every stored tensor with its name, in file order: rings by step then layer, sink
    /// slices by layer, motion latents, VAE cache slots holding frames.
    fn each_tensor(
        &self,
        mut f: impl FnMut(String, AnyTensor<'_, B>) -> Result<(), WanError>,
    ) -> Result<(), WanError> {
        let n = self.resident.len();
        for s in 0..self.steps() {
            for l in 0..self.total_layers() {
                let (k, v) = match l.checked_sub(n) {
                    None => {
                        let p = &self.resident[l].rings[s];
                        (AnyTensor::R4(&p.k), AnyTensor::R4(&p.v))
                    }
                    Some(i) => {
                        let p = &self.layers[i].rings[s];
                        (AnyTensor::Host(&p.k), AnyTensor::Host(&p.v))
                    }
                };
                f(format!("ring.{s}.{l}.k"), k)?;
                f(format!("ring.{s}.{l}.v"), v)?;
            }
        }
        for l in 0..self.total_layers() {
            let (k, v) = match l.checked_sub(n) {
                None => {
                    let p = &self.resident[l].sink;
                    (AnyTensor::R4(&p.k), AnyTensor::R4(&p.v))
                }
                Some(i) => {
                    let p = &self.layers[i].sink;
                    (AnyTensor::Host(&p.k), AnyTensor::Host(&p.v))
                }
            };
            f(format!("sink.{l}.k"), k)?;
            f(format!("sink.{l}.v"), v)?;
        }
        f("motion".into(), AnyTensor::R5(&self.motion))?;
        if let Some(cache) = &self.vae_decode {
            for (i, slot) in cache.slots().iter().enumerate() {
                if let CacheSlot::Frames(t) = slot {
                    f(format!("vae.{i}"), AnyTensor::R5(t))?;
                }
            }
        }
        Ok(())
    }

    /// Writes the file to `w` one tensor at a time (the header first with a placeholder
    /// digest, then the tensors, then the header again with the digest). Returns the bytes
    /// written.
    pub fn write_to<W: std::io::Write + std::io::Seek>(
        &self,
        w: &mut W,
        extra: &BTreeMap<String, String>,
    ) -> Result<u64, WanError> {
        let io = |source| WanError::Io {
            path: "<carry>".into(),
            source,
        };
        let mut meta = self.metadata(extra);
        let layout = self.layout();
        let dtype = float_dtype::<B>();
        let start = w.stream_position().map_err(io)?;
        let header = header_bytes(&meta, &layout, dtype)?;
        w.write_all(&header).map_err(io)?;
        let mut digest = DataDigest::default();
        let mut written = header.len() as u64;
        self.each_tensor(|_, t| {
            let bytes = t.raw_bytes()?;
            digest.update(&bytes);
            written += bytes.len() as u64;
            w.write_all(&bytes).map_err(io)
        })?;
        meta.insert(DIGEST_KEY.into(), digest.hex());
        let final_header = header_bytes(&meta, &layout, dtype)?;
        if final_header.len() != header.len() {
            return Err(err("the header changed length with the digest"));
        }
        w.seek(std::io::SeekFrom::Start(start)).map_err(io)?;
        w.write_all(&final_header).map_err(io)?;
        w.seek(std::io::SeekFrom::Start(start + written))
            .map_err(io)?;
        Ok(written)
    }

    /// Loads a carry file with the rings and sink of layers `0..resident_layers` onto
    /// `device` and those of the others into host memory (`usize::MAX`: all on the device);
    /// returns it with the file's metadata. The checks are [`DitCarry::from_bytes`]'s.
    pub fn from_bytes_split(
        bytes: &[u8],
        device: &B::Device,
        resident_layers: usize,
    ) -> Result<(Self, HashMap<String, String>), WanError> {
        let meta = DitCarry::<B>::read_metadata(bytes)?;
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| err(format!("not a carry file: {e}")))?;
        // Safetensors checked that the header length is inside the file.
        let head =
            8 + u64::from_le_bytes(bytes[..8].try_into().map_err(|_| err("too short"))?) as usize;
        let digest = meta
            .get(DIGEST_KEY)
            .ok_or_else(|| err(format!("metadata `{DIGEST_KEY}` is missing")))?;
        let mut d = DataDigest::default();
        d.update(&bytes[head..]);
        let found = d.hex();
        if *digest != found {
            return Err(err(format!(
                "damaged: the tensor bytes do not match the digest written with them ({digest}, found {found})"
            )));
        }
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

        let dtype = float_dtype::<B>();
        let want = safetensors_dtype(dtype)
            .ok_or_else(|| err(format!("a carry cannot be loaded as {dtype:?}")))?;
        let load = |name: &str, rank: usize| -> Result<TensorData, WanError> {
            let view = st
                .tensor(name)
                .map_err(|_| err(format!("tensor `{name}` is missing")))?;
            if view.dtype() != want || view.shape().len() != rank {
                return Err(err(format!(
                    "tensor `{name}`: expected {want:?} of rank {rank} (this engine computes in {dtype:?}), found {:?} {:?}",
                    view.dtype(),
                    view.shape()
                )));
            }
            Ok(TensorData::from_bytes_vec(
                view.data().to_vec(),
                view.shape().to_vec(),
                dtype,
            ))
        };
        let pair = |prefix: String| -> Result<HostKv, WanError> {
            let k = load(&format!("{prefix}.k"), 4)?;
            let v = load(&format!("{prefix}.v"), 4)?;
            if k.shape != v.shape {
                return Err(err(format!("`{prefix}`: k and v shapes differ")));
            }
            Ok(HostKv { k, v })
        };
        let mut ring_shape = None;
        let mut resident = Vec::new();
        let mut host_layers = Vec::new();
        for l in 0..layers {
            let rings = (0..steps)
                .map(|s| pair(format!("ring.{s}.{l}")))
                .collect::<Result<Vec<_>, _>>()?;
            for r in &rings {
                if *ring_shape.get_or_insert_with(|| r.k.shape.clone()) != r.k.shape {
                    return Err(err("the KV rings do not all have the same shape"));
                }
            }
            let layer = HostKvLayer {
                rings,
                sink: pair(format!("sink.{l}"))?,
            };
            if l < resident_layers {
                resident.push(KvLayer {
                    rings: layer.rings.iter().map(|r| r.to_device(device)).collect(),
                    sink: layer.sink.to_device(device),
                });
            } else {
                host_layers.push(layer);
            }
        }
        let vae_decode = match meta.get(VAE_SLOTS_KEY) {
            None => None,
            Some(kinds) => Some(DecodeCache::from_slots(
                kinds
                    .chars()
                    .enumerate()
                    .map(|(i, k)| match k {
                        'E' => Ok(CacheSlot::Empty),
                        'R' => Ok(CacheSlot::Repeat),
                        'F' => Ok(CacheSlot::Frames(Tensor::from_data(
                            load(&format!("vae.{i}"), 5)?,
                            device,
                        ))),
                        other => Err(err(format!(
                            "metadata `{VAE_SLOTS_KEY}`: unknown slot kind `{other}`"
                        ))),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            )),
        };
        let vae_tensors = meta
            .get(VAE_SLOTS_KEY)
            .map_or(0, |k| k.chars().filter(|&c| c == 'F').count());
        let expected = 2 * layers * (steps + 1) + 1 + vae_tensors;
        let found = st.names().len();
        if found != expected {
            return Err(err(format!(
                "{found} tensors, expected {expected} for {steps} steps, {layers} layers and {vae_tensors} VAE cache slots"
            )));
        }
        let carry = Self {
            resident,
            layers: host_layers,
            sink_groups,
            frames_done,
            clip,
            motion: Tensor::from_data(load("motion", 5)?, device),
            grid_hw,
            vae_decode,
        };
        Ok((carry, meta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causal_loop::KvPair;

    #[test]
    fn digest_of_pieces_equals_digest_of_the_whole_and_sees_one_bit() {
        let data: Vec<u8> = (0..4000u32)
            .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
            .collect();
        let mut whole = DataDigest::default();
        whole.update(&data);
        // Pieces of whole words, of 2-byte values (bf16) and of odd sizes, with and without
        // a partial word at the very end.
        for end in [data.len(), data.len() - 1, data.len() - 2] {
            let mut once = DataDigest::default();
            once.update(&data[..end]);
            for size in [12, 2, 7, 1] {
                let mut pieces = DataDigest::default();
                for chunk in data[..end].chunks(size) {
                    pieces.update(chunk);
                }
                assert_eq!(once.hex(), pieces.hex(), "pieces of {size}, {end} bytes");
            }
        }
        assert_eq!(whole.hex().len(), 16);
        let mut flipped = data.clone();
        flipped[1234] ^= 1;
        let mut other = DataDigest::default();
        other.update(&flipped);
        assert_ne!(whole.hex(), other.hex());
        let mut short = DataDigest::default();
        short.update(&data[..data.len() - 4]);
        assert_ne!(
            whole.hex(),
            short.hex(),
            "a missing word changes the digest"
        );
    }

    /// A carry of a backend whose float dtype is not f32 (f64: NdArray's other float, the
    /// same path as bf16 under `cuda`) is stored in that dtype, exactly as big as
    /// `file_bytes` says, comes back bit for bit, and is refused by an f32 backend.
    #[test]
    fn a_carry_is_stored_in_the_backends_dtype_and_refused_by_another() {
        use burn::backend::NdArray;
        type Wide = NdArray<f64>;
        let device = Default::default();
        let values = |n: usize, seed: f64| -> Vec<f64> {
            (0..n)
                .map(|i| (i as f64 * 0.37 + seed).sin() / 3.0)
                .collect()
        };
        let r4 = |shape: [usize; 4], seed: f64| {
            Tensor::<Wide, 4>::from_data(
                TensorData::new(values(shape.iter().product(), seed), shape),
                &device,
            )
        };
        let pair = |seed: f64| KvPair {
            k: r4([1, 6, 2, 3], seed),
            v: r4([1, 6, 2, 3], seed + 1.0),
        };
        let motion_shape = [1, 2, 3, 2, 2];
        let motion =
            Tensor::<Wide, 5>::from_data(TensorData::new(values(24, 9.0), motion_shape), &device);
        let slot = Tensor::<Wide, 5>::from_data(
            TensorData::new(values(2 * 2 * 4 * 4, 5.0), [1, 2, 2, 4, 4]),
            &device,
        );
        let carry = DitCarry::<Wide> {
            rings: vec![vec![pair(1.0), pair(2.0)]],
            sink: vec![pair(3.0), pair(4.0)],
            sink_groups: vec![RopeGroup::from_grid([30, 0, 0], [31, 2, 2], [1, 2, 2])],
            frames_done: 3,
            clip: 1,
            motion,
            grid_hw: [2, 2],
            vae_decode: Some(DecodeCache::from_slots(vec![
                CacheSlot::Empty,
                CacheSlot::Frames(slot),
                CacheSlot::Repeat,
            ])),
        };
        let bytes = carry.to_bytes().expect("saves");
        let expected = file_bytes(
            &carry.metadata(&BTreeMap::new()),
            &carry.view().layout(),
            DType::F64,
        )
        .expect("size");
        assert_eq!(bytes.len() as u64, expected);
        let st = SafeTensors::deserialize(&bytes).expect("a safetensors file");
        assert_eq!(st.tensor("motion").expect("motion").dtype(), Dtype::F64);

        let back = DitCarry::<Wide>::from_bytes(&bytes, &device).expect("loads");
        assert_eq!(back.to_bytes().expect("saves again"), bytes, "bit for bit");
        // With layer 1 in host memory (a hybrid or streamed carry) the file is the same, both
        // ways, and the layers come back where they are asked for.
        let none = BTreeMap::new();
        let split = HostDitCarry::from_carry_split(carry.clone(), 1);
        assert_eq!((split.resident.len(), split.layers.len()), (1, 1));
        assert_eq!(split.to_bytes_with(&none).expect("saves"), bytes);
        let (host, _) = HostDitCarry::<Wide>::from_bytes_split(&bytes, &device, 0).expect("loads");
        assert_eq!((host.resident.len(), host.layers.len()), (0, 2));
        assert_eq!(host.to_bytes_with(&none).expect("saves"), bytes);
        let mut moved = host;
        moved.set_resident_layers(2, &device);
        assert_eq!((moved.resident.len(), moved.layers.len()), (2, 0));
        assert_eq!(moved.to_bytes_with(&none).expect("saves"), bytes);
        let bits = |t: Tensor<Wide, 4>| t.into_data().to_vec::<f64>().expect("f64");
        assert_eq!(
            bits(back.rings[0][1].v.clone()),
            bits(carry.rings[0][1].v.clone())
        );

        let Err(err) = DitCarry::<NdArray<f32>>::from_bytes(&bytes, &device) else {
            panic!("an f32 engine must refuse an f64 carry");
        };
        let text = err.to_string();
        assert!(text.contains("F64") && text.contains("F32"), "{text}");
    }

    #[test]
    fn counters_have_a_fixed_width() {
        assert_eq!(counter(0).len(), COUNTER_DIGITS);
        assert_eq!(counter(u64::MAX).len(), COUNTER_DIGITS);
        assert_eq!(counter(42).parse::<u64>().ok(), Some(42));
    }
}
