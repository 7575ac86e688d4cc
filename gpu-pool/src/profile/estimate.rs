//! Turning a profile and a job's settings into bytes and seconds.

use serde::{Deserialize, Serialize};

use super::{FrameSize, MemoryProfile};
use crate::discover::GIB;

/// What the job asked for about offload (the job file's `offload: auto | true | false`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffloadChoice {
    /// Offload only when no card of the pool fits the job without it (decided at placement).
    #[default]
    Auto,
    /// Always offload (when the model has an offload mode).
    On,
    /// Never offload.
    Off,
}

/// The settings of a job that decide its memory and speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EstimateRequest {
    pub width: u32,
    pub height: u32,
    /// Frames per clip (`infer_frames`): a clip's frames are denoised together, so memory
    /// grows with them; the number of clips does not matter with online decode.
    pub frames: u32,
    pub offload: OffloadChoice,
}

/// What a job is expected to need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Peak GPU memory, safety margin and learned corrections included.
    pub vram_bytes: u64,
    /// Host RAM the worker needs.
    pub host_bytes: u64,
    /// Whether the estimate is for the offload mode.
    pub offload_used: bool,
    /// Seconds per output frame.
    pub secs_per_frame: f64,
}

/// Estimates a job's needs.
///
/// `offload: on` gives the offload mode (or the plain mode when the model has none);
/// `off` and `auto` give the plain mode. Whether `auto` ends up offloading depends on the
/// cards, so that choice belongs to placement: build the job's queue entry from
/// [`estimate_modes`], which gives both.
pub fn estimate(profile: &MemoryProfile, req: &EstimateRequest) -> Estimate {
    let offload = req.offload == OffloadChoice::On && profile.offload.is_some();
    estimate_mode(profile, req.width, req.height, req.frames, offload)
}

/// The estimates of both modes: without offload, and with it where the model has one.
pub fn estimate_modes(
    profile: &MemoryProfile,
    width: u32,
    height: u32,
    frames: u32,
) -> (Estimate, Option<Estimate>) {
    let plain = estimate_mode(profile, width, height, frames, false);
    let offload = profile
        .offload
        .as_ref()
        .map(|_| estimate_mode(profile, width, height, frames, true));
    (plain, offload)
}

/// Million pixel-frames: the variable activations grow with.
pub(super) fn megapixel_frames(width: u32, height: u32, frames: u32) -> f64 {
    f64::from(width) * f64::from(height) * f64::from(frames) / 1e6
}

fn gib_to_bytes(gib: f64) -> u64 {
    (gib * GIB as f64).ceil() as u64
}

/// The linear model alone, without margin or learned corrections: what an observation is
/// compared against.
pub(super) fn model_bytes(
    profile: &MemoryProfile,
    width: u32,
    height: u32,
    frames: u32,
    offload: bool,
) -> u64 {
    let resident = match (&profile.offload, offload) {
        (Some(model), true) => model.resident_gib,
        _ => profile.resident_gib,
    };
    let activation = profile.activation.intercept_gib
        + profile.activation.gib_per_megapixel_frame * megapixel_frames(width, height, frames);
    gib_to_bytes(resident + activation)
}

fn estimate_mode(
    profile: &MemoryProfile,
    width: u32,
    height: u32,
    frames: u32,
    offload: bool,
) -> Estimate {
    let offload_model = profile.offload.as_ref().filter(|_| offload);
    let learned = if offload_model.is_some() {
        profile.learned.offload_bytes
    } else {
        profile.learned.no_offload_bytes
    };
    let vram_bytes = model_bytes(profile, width, height, frames, offload_model.is_some())
        .saturating_add(learned)
        .saturating_add(gib_to_bytes(profile.safety_margin_gib));
    let host_gib = offload_model.map_or(profile.host_gib, |model| model.host_gib);
    let pixel_ratio = (f64::from(width) * f64::from(height))
        / profile.speed.reference_size.pixels().max(1) as f64;
    let slowdown = offload_model.map_or(1.0, |model| model.slowdown);
    Estimate {
        vram_bytes,
        host_bytes: gib_to_bytes(host_gib),
        offload_used: offload_model.is_some(),
        secs_per_frame: profile.speed.secs_per_frame * pixel_ratio * slowdown,
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB as f64)
}

/// The smallest GPU estimate over the modes the job allows, when offload may be turned on.
fn smallest(profile: &MemoryProfile, width: u32, height: u32, frames: u32) -> Estimate {
    let (plain, offload) = estimate_modes(profile, width, height, frames);
    match offload {
        Some(offload) if offload.vram_bytes < plain.vram_bytes => offload,
        _ => plain,
    }
}

fn with_mode(estimate: &Estimate) -> String {
    let mode = if estimate.offload_used {
        " with `offload: true`"
    } else {
        ""
    };
    format!("{mode} (estimate {})", gib(estimate.vram_bytes))
}

/// A concrete change that makes a job fit a card of `largest_card_bytes`, for the refusal
/// message: turn on offload, then fewer frames per clip, then a smaller size (from the
/// profile's `fallbacks`), then the profile's low-memory template.
pub fn suggest_fit(
    profile: &MemoryProfile,
    req: &EstimateRequest,
    largest_card_bytes: u64,
) -> String {
    let fits = |e: &Estimate| e.vram_bytes <= largest_card_bytes;
    let (_, offload) = estimate_modes(profile, req.width, req.height, req.frames);
    if let Some(offload) = offload.filter(|e| req.offload == OffloadChoice::Off && fits(e)) {
        let slowdown = profile.offload.as_ref().map_or(1.0, |m| m.slowdown);
        return format!(
            "set `offload: true`: {} on the GPU and {} of host RAM, about {slowdown}× slower",
            gib(offload.vram_bytes),
            gib(offload.host_bytes)
        );
    }
    let mut frames: Vec<u32> = profile.fallbacks.frames.clone();
    frames.sort_unstable_by(|a, b| b.cmp(a));
    for f in frames.into_iter().filter(|&f| f < req.frames) {
        let estimate = smallest(profile, req.width, req.height, f);
        if fits(&estimate) {
            return format!("set `infer_frames: {f}`{}", with_mode(&estimate));
        }
    }
    let pixels = u64::from(req.width) * u64::from(req.height);
    let mut sizes: Vec<FrameSize> = profile.fallbacks.sizes.clone();
    sizes.sort_unstable_by_key(|size| std::cmp::Reverse(size.pixels()));
    for size in sizes.into_iter().filter(|s| s.pixels() < pixels) {
        let estimate = smallest(profile, size.width, size.height, req.frames);
        if fits(&estimate) {
            return format!("set `size: {size}`{}", with_mode(&estimate));
        }
    }
    match &profile.fallbacks.template {
        Some(template) => format!(
            "use `template: {template}`, made for small cards, or add a GPU with more than {}",
            gib(largest_card_bytes)
        ),
        None => format!(
            "no setting of `{}` known to this profile fits {}; add a larger GPU",
            profile.name,
            gib(largest_card_bytes)
        ),
    }
}
