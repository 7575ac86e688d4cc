//! Learning from measured peaks: a profile that under-estimated a job is corrected.
//!
//! With one observation we cannot tell whether the intercept or the slope of the activation
//! model is off, so the whole curve of that mode is shifted up: the learned offset is the
//! largest amount by which any observation exceeded the model. Taking the maximum makes the
//! result independent of the order observations arrive in, so replaying the saved file after
//! a restart gives exactly the offsets the daemon had before.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::estimate::model_bytes;
use super::{EstimateRequest, LearnedOffsets, MemoryProfile, OffloadChoice, ProfileSet};
use crate::{atomic, PoolError};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ObservationKey {
    profile: String,
    width: u32,
    height: u32,
    frames: u32,
    offload_used: bool,
}

/// One line of the observations file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Observation {
    profile: String,
    width: u32,
    height: u32,
    frames: u32,
    offload_used: bool,
    peak_vram_bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObservationFile {
    version: u32,
    observations: Vec<Observation>,
}

const FILE_VERSION: u32 = 1;

/// The highest peak seen for each (profile, size, frames, mode).
#[derive(Debug, Clone, Default)]
pub(super) struct Observations {
    peaks: BTreeMap<ObservationKey, u64>,
}

impl Observations {
    /// The offsets that make every observation of `profile` fit under its estimate with the
    /// safety margin still whole.
    pub(super) fn offsets_for(&self, profile: &MemoryProfile) -> LearnedOffsets {
        let mut offsets = LearnedOffsets::default();
        for (key, &peak) in self.peaks.iter().filter(|(k, _)| k.profile == profile.name) {
            let offload = key.offload_used && profile.offload.is_some();
            let model = model_bytes(profile, key.width, key.height, key.frames, offload);
            let excess = peak.saturating_sub(model);
            let slot = if offload {
                &mut offsets.offload_bytes
            } else {
                &mut offsets.no_offload_bytes
            };
            *slot = (*slot).max(excess);
        }
        offsets
    }
}

impl ProfileSet {
    /// Records the peak GPU memory a job was measured at, and corrects the profile when the
    /// peak ate into the safety margin.
    ///
    /// `req.offload` says how the job ran: `On` for offload, `Off` or `Auto` for the plain mode
    /// (the same reading [`super::estimate`] gives `Auto`). After the call, the estimate for
    /// the same settings is at least `observed_vram_bytes` plus the safety margin. Returns
    /// whether the profile's estimates went up.
    pub fn record_observed_peak(
        &mut self,
        profile: &str,
        req: &EstimateRequest,
        observed_vram_bytes: u64,
    ) -> Result<bool, PoolError> {
        let known = self.get(profile)?;
        let key = ObservationKey {
            profile: profile.to_string(),
            width: req.width,
            height: req.height,
            frames: req.frames,
            offload_used: req.offload == OffloadChoice::On && known.offload.is_some(),
        };
        let peak = self.observations.peaks.entry(key).or_insert(0);
        *peak = (*peak).max(observed_vram_bytes);
        let Some(entry) = self.profiles.get_mut(profile) else {
            unreachable!("profile `{profile}` was found by get() just above");
        };
        let before = entry.learned;
        entry.learned = self.observations.offsets_for(entry);
        if entry.learned != before {
            tracing::info!(
                profile,
                observed_vram_bytes,
                no_offload_offset_bytes = entry.learned.no_offload_bytes,
                offload_offset_bytes = entry.learned.offload_bytes,
                "observed peak exceeded the memory model; estimates raised"
            );
        }
        Ok(entry.learned != before)
    }

    /// Writes every observation as JSON, atomically.
    pub fn save_observations(&self, path: &Path) -> Result<(), PoolError> {
        let file = ObservationFile {
            version: FILE_VERSION,
            observations: self
                .observations
                .peaks
                .iter()
                .map(|(key, &peak_vram_bytes)| Observation {
                    profile: key.profile.clone(),
                    width: key.width,
                    height: key.height,
                    frames: key.frames,
                    offload_used: key.offload_used,
                    peak_vram_bytes,
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|err| PoolError::StateFile {
            path: path.to_path_buf(),
            what: "observed peaks",
            message: err.to_string(),
        })?;
        atomic::write_file(path, &json)
    }

    /// Replaces the observations with those saved in `path` (none when the file does not
    /// exist yet) and recomputes every profile's corrections. Observations of profiles that
    /// are not loaded are kept, so saving again does not lose them.
    pub fn load_observations(&mut self, path: &Path) -> Result<(), PoolError> {
        let invalid = |message: String| PoolError::StateFile {
            path: path.to_path_buf(),
            what: "observed peaks",
            message,
        };
        let mut peaks = BTreeMap::new();
        if let Some(bytes) = atomic::read_optional(path)? {
            let file: ObservationFile =
                serde_json::from_slice(&bytes).map_err(|err| invalid(err.to_string()))?;
            if file.version != FILE_VERSION {
                return Err(invalid(format!(
                    "version {} (this build reads version {FILE_VERSION})",
                    file.version
                )));
            }
            for observation in file.observations {
                let key = ObservationKey {
                    profile: observation.profile,
                    width: observation.width,
                    height: observation.height,
                    frames: observation.frames,
                    offload_used: observation.offload_used,
                };
                let peak = peaks.entry(key).or_insert(0);
                *peak = observation.peak_vram_bytes.max(*peak);
            }
        }
        self.observations = Observations { peaks };
        for profile in self.profiles.values_mut() {
            profile.learned = self.observations.offsets_for(profile);
        }
        Ok(())
    }
}
