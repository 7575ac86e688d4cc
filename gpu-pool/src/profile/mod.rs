//! Memory profiles: how much GPU memory, host memory and time a model needs for a job.
//!
//! A profile is a YAML file in `templates/profiles/`, named for the model
//! (`liveavatar-14b.yaml`). Its numbers come from measurements or reports, and its comments
//! say which; the schema is:
//!
//! ```yaml
//! description: free text
//! resident_gib: 64.8        # GPU memory that does not grow with the job (weights, buffers)
//! host_gib: 4               # host RAM the worker needs without offload
//! activation:               # GPU memory that grows with the job:
//!   intercept_gib: 0.0      #   intercept + slope × (width × height × frames / 1e6)
//!   gib_per_megapixel_frame: 1.019
//! safety_margin_gib: 1.0    # added to every GPU estimate
//! speed:
//!   reference_size: 704*384 # seconds per frame scale with pixels relative to this size
//!   secs_per_frame: 0.8     # without offload, at the reference size
//! offload:                  # optional: the model can keep its weights in host RAM
//!   resident_gib: 4.8       #   replaces resident_gib
//!   host_gib: 42            #   replaces host_gib
//!   slowdown: 4.0           #   secs_per_frame is multiplied by this
//! fallbacks:                # optional: what to suggest when a job fits no card
//!   frames: [32, 16]
//!   sizes: [688*368, 384*256]
//!   template: lowmem-24g
//! ```
//!
//! GiB are 2^30 bytes, the unit `nvidia-smi` and GPU vendors use. Observed peaks recorded by
//! [`ProfileSet::record_observed_peak`] raise a profile's estimates where it proved too low.

mod estimate;
mod observe;

pub use estimate::{
    estimate, estimate_modes, suggest_fit, Estimate, EstimateRequest, OffloadChoice,
};

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::PoolError;

/// A frame size, written `W*H` (as the Live Avatar scripts do) or `WxH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FrameSize {
    pub width: u32,
    pub height: u32,
}

impl FrameSize {
    /// Pixels per frame.
    pub fn pixels(self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

impl FromStr for FrameSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (w, h) = text
            .split_once(['*', 'x'])
            .ok_or_else(|| format!("`{text}` is not a size; write it as W*H, e.g. 704*384"))?;
        let parse = |part: &str| part.trim().parse::<u32>().ok().filter(|&n| n > 0);
        match (parse(w), parse(h)) {
            (Some(width), Some(height)) => Ok(FrameSize { width, height }),
            _ => Err(format!(
                "`{text}` is not a size; write it as W*H, e.g. 704*384"
            )),
        }
    }
}

impl TryFrom<String> for FrameSize {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<FrameSize> for String {
    fn from(size: FrameSize) -> String {
        size.to_string()
    }
}

impl fmt::Display for FrameSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}*{}", self.width, self.height)
    }
}

/// GPU memory that grows linearly with pixels × frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivationModel {
    /// Memory at zero pixels × frames.
    #[serde(default)]
    pub intercept_gib: f64,
    /// Memory per million pixel-frames (width × height × frames / 1e6).
    pub gib_per_megapixel_frame: f64,
}

/// How long a frame takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeedModel {
    /// The size `secs_per_frame` was measured at; other sizes scale with their pixel count.
    pub reference_size: FrameSize,
    /// Seconds per output frame without offload, at `reference_size`.
    pub secs_per_frame: f64,
}

/// The model's offload mode: weights in host RAM, streamed to the GPU as needed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffloadModel {
    /// GPU memory that does not grow with the job, in offload mode.
    pub resident_gib: f64,
    /// Host RAM the worker needs in offload mode.
    pub host_gib: f64,
    /// How many times slower a frame is with offload.
    pub slowdown: f64,
}

/// What to suggest when a job fits no card, tried in order: fewer frames, a smaller size, a
/// template.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fallbacks {
    /// Frame counts to suggest, tried from the largest below the job's.
    #[serde(default)]
    pub frames: Vec<u32>,
    /// Sizes to suggest, tried from the largest below the job's pixel count.
    #[serde(default)]
    pub sizes: Vec<FrameSize>,
    /// A job template (templates/jobs/) made for small cards.
    #[serde(default)]
    pub template: Option<String>,
}

/// Bytes added to a profile's estimates by observed peaks (see [`ProfileSet::record_observed_peak`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LearnedOffsets {
    /// Added to estimates without offload.
    pub no_offload_bytes: u64,
    /// Added to estimates with offload.
    pub offload_bytes: u64,
}

/// One model's memory and speed figures (one file of `templates/profiles/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryProfile {
    /// The file stem; set by [`load_profiles`], not written in the file.
    #[serde(skip)]
    pub name: String,
    /// Where the numbers come from.
    #[serde(default)]
    pub description: Option<String>,
    /// GPU memory without offload that does not grow with the job.
    pub resident_gib: f64,
    /// Host RAM without offload.
    #[serde(default)]
    pub host_gib: f64,
    /// GPU memory that grows with pixels × frames.
    pub activation: ActivationModel,
    /// Added to every GPU estimate, for what the linear model misses.
    pub safety_margin_gib: f64,
    /// Seconds per frame.
    pub speed: SpeedModel,
    /// The offload mode, when the model has one.
    #[serde(default)]
    pub offload: Option<OffloadModel>,
    /// Suggestions for jobs that fit no card.
    #[serde(default)]
    pub fallbacks: Fallbacks,
    /// Corrections learned from observed peaks.
    #[serde(skip)]
    pub learned: LearnedOffsets,
}

impl MemoryProfile {
    /// Parses one profile; `path` names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<MemoryProfile, PoolError> {
        let mut profile: MemoryProfile =
            serde_yaml::from_str(text).map_err(|err| parse_error(path, text, &err))?;
        profile.name = path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        profile
            .check()
            .map_err(|message| PoolError::ProfileInvalid {
                path: path.to_path_buf(),
                message,
            })?;
        Ok(profile)
    }

    /// Refuses numbers that would make estimates meaningless.
    fn check(&self) -> Result<(), String> {
        let mut sizes = vec![
            ("resident_gib", self.resident_gib),
            ("host_gib", self.host_gib),
            ("activation.intercept_gib", self.activation.intercept_gib),
            (
                "activation.gib_per_megapixel_frame",
                self.activation.gib_per_megapixel_frame,
            ),
            ("safety_margin_gib", self.safety_margin_gib),
        ];
        if let Some(offload) = &self.offload {
            sizes.push(("offload.resident_gib", offload.resident_gib));
            sizes.push(("offload.host_gib", offload.host_gib));
            if !(offload.slowdown.is_finite() && offload.slowdown >= 1.0) {
                return Err(format!(
                    "offload.slowdown must be at least 1 (offload is never faster), not {}",
                    offload.slowdown
                ));
            }
        }
        for (key, value) in sizes {
            if !(value.is_finite() && value >= 0.0) {
                return Err(format!("{key} must be a number of GiB ≥ 0, not {value}"));
            }
        }
        if !(self.speed.secs_per_frame.is_finite() && self.speed.secs_per_frame > 0.0) {
            return Err(format!(
                "speed.secs_per_frame must be positive, not {}",
                self.speed.secs_per_frame
            ));
        }
        if self.fallbacks.frames.contains(&0) {
            return Err("fallbacks.frames must not contain 0".to_string());
        }
        Ok(())
    }
}

/// Formats a serde_yaml error like a compiler error: file:line:col, the line, a caret.
fn parse_error(path: &Path, text: &str, err: &serde_yaml::Error) -> PoolError {
    let (line, column) = err
        .location()
        .map(|at| (at.line(), at.column()))
        .unwrap_or((1, 1));
    let source_line = text.lines().nth(line.saturating_sub(1)).unwrap_or("");
    let snippet = format!(
        "  | {source_line}\n  | {:>width$}",
        "^",
        width = column.max(1)
    );
    // serde_yaml appends " at line L column C"; the location is already in front.
    let message = err.to_string();
    let message = message
        .split(" at line ")
        .next()
        .unwrap_or(&message)
        .to_string();
    PoolError::ProfileParse {
        path: path.to_path_buf(),
        line,
        column,
        message,
        snippet,
    }
}

/// Every profile of a directory, with the corrections learned from observed peaks.
#[derive(Debug, Clone, Default)]
pub struct ProfileSet {
    profiles: BTreeMap<String, MemoryProfile>,
    observations: observe::Observations,
}

/// Loads every `*.yaml` and `*.yml` file of `dir` as a profile named after its file stem.
pub fn load_profiles(dir: &Path) -> Result<ProfileSet, PoolError> {
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| PoolError::Io {
            action,
            path,
            source,
        }
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("listing profile directory", dir))? {
        let path = entry.map_err(io("listing profile directory", dir))?.path();
        let is_yaml = path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml");
        if is_yaml {
            paths.push(path);
        }
    }
    paths.sort();
    let mut set = ProfileSet::default();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(io("reading profile", &path))?;
        let profile = MemoryProfile::parse(&path, &text)?;
        tracing::debug!(profile = %profile.name, path = %path.display(), "loaded memory profile");
        set.insert(profile);
    }
    Ok(set)
}

impl ProfileSet {
    /// Adds or replaces a profile (keyed by its name), applying known observations to it.
    pub fn insert(&mut self, mut profile: MemoryProfile) {
        profile.learned = self.observations.offsets_for(&profile);
        self.profiles.insert(profile.name.clone(), profile);
    }

    /// The profile called `name`.
    pub fn get(&self, name: &str) -> Result<&MemoryProfile, PoolError> {
        self.profiles
            .get(name)
            .ok_or_else(|| PoolError::UnknownProfile {
                name: name.to_string(),
                known: self.names().collect::<Vec<_>>().join(", "),
            })
    }

    /// Profile names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }

    /// Number of profiles.
    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    /// Whether the set holds no profile.
    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    /// [`estimate`] with the profile called `name`, learned corrections included.
    pub fn estimate(&self, name: &str, req: &EstimateRequest) -> Result<Estimate, PoolError> {
        Ok(estimate(self.get(name)?, req))
    }
}

#[cfg(test)]
mod tests;
